//! What the burn-dp examples share: command-line value types, clipping and noise-source setup,
//! training curves written as SVG, the metrics file, progress bars.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use burn_dp::{
    AccountantKind, ClippingFn, FreezePolicy, NoiseSource, PerSampleConfig, PrivacyState, Schedule,
};
use clap::ValueEnum;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressState, ProgressStyle};

/// Error type of the examples: a message for the user.
pub type Error = Box<dyn std::error::Error + Send + Sync>;

/// `--clipping`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ClippingKind {
    /// Automatic clipping (Bu et al. 2023): `g / (‖g‖ + 0.01)`, no threshold to tune.
    Automatic,
    /// Abadi et al. 2016: `g · min(1, C / ‖g‖)` with `C = --max-norm`.
    Abadi,
}

/// `--freeze`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum FreezeKind {
    /// Full fine-tuning: every parameter trains.
    None,
    /// DP-BiTFiT: only bias terms train.
    Bias,
    /// Only the output head trains.
    Head,
}

/// `--backend`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BackendKind {
    /// The CPU (burn's NdArray).
    Ndarray,
    /// CUDA (needs the example built with `--features cuda`).
    Cuda,
}

/// The error for `--backend cuda` in a build without the `cuda` feature.
pub fn cuda_missing(example: &str) -> Error {
    format!(
        "--backend cuda needs CUDA support compiled in: rebuild with \
         `cargo run --release -p {example} --features cuda -- ...`"
    )
    .into()
}

/// The flags both examples share (`#[command(flatten)]` into each example's `Args`).
#[derive(clap::Args, Debug, Clone)]
pub struct PrivateTrainingArgs {
    /// Target ε: the noise multiplier is calibrated so the whole schedule spends at most this.
    #[arg(long, default_value_t = 3.0)]
    pub target_epsilon: f64,
    /// δ.
    #[arg(long, default_value_t = 1e-5)]
    pub delta: f64,
    /// Learning rate (AdamW).
    #[arg(long, default_value_t = 5e-3)]
    pub lr: f64,
    /// Per-sample clipping.
    #[arg(long, value_enum, default_value_t = ClippingKind::Automatic)]
    pub clipping: ClippingKind,
    /// Clipping threshold C of `--clipping abadi`.
    #[arg(long, default_value_t = 1.0)]
    pub max_norm: f64,
    /// Which parameters train: all, biases only (DP-BiTFiT), or the last layers (the classifier
    /// head; for GPT-2 the last block, the final LayerNorm and an untied head).
    #[arg(long, value_enum, default_value_t = FreezeKind::None)]
    pub freeze: FreezeKind,
    /// Backend.
    #[arg(long, value_enum, default_value_t = BackendKind::Ndarray)]
    pub backend: BackendKind,
    /// Fixed seed for noise and sampling (experiments only: not private against whoever knows
    /// it). Default: the operating system's randomness.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Stop after this many steps (smoke runs); ε is reported for the steps taken.
    #[arg(long)]
    pub max_steps: Option<u64>,
    /// No progress bars.
    #[arg(long)]
    pub quiet: bool,
}

impl PrivateTrainingArgs {
    /// The schedule (`epochs` expected passes over `n` examples in logical batches of
    /// `batch_size`) and the privacy state with σ calibrated for `--target-epsilon` at `--delta`
    /// (RDP, an upper bound), budget enforced.
    pub fn privacy(
        &self,
        n: usize,
        batch_size: u64,
        epochs: u64,
    ) -> Result<(Schedule, PrivacyState), burn_dp::DpError> {
        let schedule = Schedule::from_epochs(n as u64, batch_size.min(n as u64), epochs)?;
        let privacy = PrivacyState::for_target_epsilon(
            self.target_epsilon,
            self.delta,
            schedule,
            AccountantKind::Rdp,
        )?;
        Ok((schedule, privacy))
    }
}

// ANCHOR: clipping
/// The clipping configuration of `--clipping` / `--max-norm` (flat style: one norm per sample).
pub fn clipping(kind: ClippingKind, max_norm: f64) -> PerSampleConfig {
    match kind {
        ClippingKind::Automatic => PerSampleConfig::new(ClippingFn::Automatic { gamma: 0.01 }),
        ClippingKind::Abadi => PerSampleConfig::new(ClippingFn::Abadi { max_norm }),
    }
}
// ANCHOR_END: clipping

/// The freezing policy of `--freeze`, given the module path(s) of the model's head.
pub fn freeze_policy(kind: FreezeKind, head: &[&str]) -> FreezePolicy {
    match kind {
        FreezeKind::None => FreezePolicy::None,
        FreezeKind::Bias => FreezePolicy::BiasOnly,
        FreezeKind::Head => FreezePolicy::Prefixes(head.iter().map(|s| s.to_string()).collect()),
    }
}

// ANCHOR: noise_source
/// `--seed`: a fixed seed makes a run reproducible but gives no privacy against anyone who
/// knows the seed, so it is announced; the default is the operating system's randomness.
pub fn noise_source(seed: Option<u64>) -> NoiseSource {
    match seed {
        Some(seed) => {
            eprintln!(
                "note: --seed {seed}: noise and sampling use NoiseSource::FixedSeedForExperiments \
                 (reproducible, NOT private against anyone who knows the seed)"
            );
            NoiseSource::FixedSeedForExperiments(seed)
        }
        None => NoiseSource::Os,
    }
}
// ANCHOR_END: noise_source

/// What the progress bar shows until the first step ends. On CUDA the first step compiles and
/// autotunes every kernel the model needs (55–140 s measured per process on an H200 with burn
/// 0.21), which would otherwise look like a hang; see the book's CUDA chapter for what shortens it.
pub const FIRST_STEP_NOTICE: &str =
    "(on CUDA the first step compiles and autotunes kernels: 1-2 min; later ones are fast)";

/// A progress bar on stderr (hidden when `quiet`). Until the first `inc` it shows
/// [`FIRST_STEP_NOTICE`], and it redraws every second so the elapsed time keeps moving.
pub fn progress(len: u64, label: &str, quiet: bool) -> ProgressBar {
    let bar = ProgressBar::new(len);
    if quiet {
        bar.set_draw_target(ProgressDrawTarget::hidden());
    }
    let template = format!("{label} {{bar:40}} {{pos}}/{{len}} {{elapsed}} {{msg}}{{first_step}}");
    let style = ProgressStyle::with_template(&template)
        .expect("progress template")
        .with_key(
            "first_step",
            |state: &ProgressState, w: &mut dyn std::fmt::Write| {
                if state.pos() == 0 {
                    let _ = w.write_str(FIRST_STEP_NOTICE);
                }
            },
        );
    bar.set_style(style);
    bar.enable_steady_tick(Duration::from_secs(1));
    bar
}

/// Prints a line on stderr before the first training step on CUDA, where that step compiles and
/// autotunes kernels for one to two minutes (for logs, where the progress bar is not drawn).
pub fn announce_first_step(backend: BackendKind, quiet: bool) {
    if backend == BackendKind::Cuda && !quiet {
        eprintln!("{FIRST_STEP_NOTICE}");
    }
}

/// One training curve: `(step, value)` points.
#[derive(Debug, Clone, Default)]
pub struct Curve {
    /// The points, in step order.
    pub points: Vec<(f64, f64)>,
}

impl Curve {
    /// Append a point.
    pub fn push(&mut self, step: u64, value: f64) {
        if value.is_finite() {
            self.points.push((step as f64, value));
        }
    }

    /// The points as a JSON array of `[step, value]`.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::Value::Array(
            self.points
                .iter()
                .map(|(x, y)| serde_json::json!([x, y]))
                .collect(),
        )
    }
}

fn ticks(lo: f64, hi: f64) -> Vec<f64> {
    (0..=4).map(|i| lo + (hi - lo) * i as f64 / 4.0).collect()
}

fn label(v: f64) -> String {
    if v.abs() >= 100.0 || v == v.trunc() {
        format!("{v:.0}")
    } else if v.abs() >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

/// A line chart of `curve` as a standalone SVG document (hand-written polyline with axes).
pub fn svg(curve: &Curve, title: &str, x_label: &str, y_label: &str) -> String {
    let (w, h, left, right, top, bottom) = (640.0, 400.0, 70.0, 20.0, 40.0, 50.0);
    let pw = w - left - right;
    let ph = h - top - bottom;
    let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for &(x, y) in &curve.points {
        x0 = x0.min(x);
        x1 = x1.max(x);
        y0 = y0.min(y);
        y1 = y1.max(y);
    }
    if curve.points.is_empty() {
        (x0, x1, y0, y1) = (0.0, 1.0, 0.0, 1.0);
    }
    if x1 <= x0 {
        x1 = x0 + 1.0;
    }
    if y1 <= y0 {
        y1 = y0 + 1.0;
        y0 -= 1.0;
    }
    let sx = |x: f64| left + (x - x0) / (x1 - x0) * pw;
    let sy = |y: f64| top + ph - (y - y0) / (y1 - y0) * ph;
    let mut s = String::new();
    let _ = write!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="sans-serif" font-size="12">
<rect width="{w}" height="{h}" fill="white"/>
<text x="{}" y="22" text-anchor="middle" font-size="15">{}</text>
<line x1="{left}" y1="{}" x2="{}" y2="{}" stroke="black"/>
<line x1="{left}" y1="{top}" x2="{left}" y2="{}" stroke="black"/>
"#,
        w / 2.0,
        escape(title),
        top + ph,
        left + pw,
        top + ph,
        top + ph
    );
    for t in ticks(x0, x1) {
        let _ = writeln!(
            s,
            r#"<line x1="{x:.1}" y1="{y:.1}" x2="{x:.1}" y2="{y2:.1}" stroke="black"/><text x="{x:.1}" y="{ty:.1}" text-anchor="middle">{}</text>"#,
            label(t),
            x = sx(t),
            y = top + ph,
            y2 = top + ph + 5.0,
            ty = top + ph + 18.0
        );
    }
    for t in ticks(y0, y1) {
        let _ = writeln!(
            s,
            r##"<line x1="{x1:.1}" y1="{y:.1}" x2="{x2:.1}" y2="{y:.1}" stroke="#ddd"/><text x="{tx:.1}" y="{ty:.1}" text-anchor="end">{}</text>"##,
            label(t),
            x1 = left,
            x2 = left + pw,
            y = sy(t),
            tx = left - 6.0,
            ty = sy(t) + 4.0
        );
    }
    let _ = writeln!(
        s,
        r#"<text x="{}" y="{}" text-anchor="middle">{}</text>"#,
        left + pw / 2.0,
        h - 12.0,
        escape(x_label)
    );
    let _ = writeln!(
        s,
        r#"<text x="16" y="{}" text-anchor="middle" transform="rotate(-90 16 {})">{}</text>"#,
        top + ph / 2.0,
        top + ph / 2.0,
        escape(y_label)
    );
    let pts: Vec<String> = curve
        .points
        .iter()
        .map(|&(x, y)| format!("{:.1},{:.1}", sx(x), sy(y)))
        .collect();
    let _ = writeln!(
        s,
        r##"<polyline fill="none" stroke="#1f77b4" stroke-width="2" points="{}"/>"##,
        pts.join(" ")
    );
    s.push_str("</svg>\n");
    s
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// Where a run's results went.
#[derive(Debug, Clone)]
pub struct Outputs {
    /// `metrics.json`.
    pub metrics: PathBuf,
    /// `loss.svg`: the model's loss on held-out data.
    pub loss_svg: PathBuf,
    /// `epsilon.svg`.
    pub epsilon_svg: PathBuf,
}

/// Write `metrics.json` (with the curves added under `"curves"`), `loss.svg` and `epsilon.svg`
/// to `out`, and print where they went.
///
/// Everything written must be public or computed from the noised model alone: `held_out_loss` is
/// the loss of the model on held-out evaluation data, never the loss of a private training batch
/// (with a Poisson batch of one example that would be one person's exact loss).
pub fn write_outputs(
    out: &Path,
    mut metrics: serde_json::Value,
    held_out_loss: &Curve,
    epsilon: &Curve,
) -> Result<Outputs, Error> {
    std::fs::create_dir_all(out).map_err(|e| format!("cannot create {}: {e}", out.display()))?;
    metrics["curves"] = serde_json::json!({
        "held_out_loss": held_out_loss.to_json(),
        "epsilon": epsilon.to_json(),
    });
    let outputs = Outputs {
        metrics: out.join("metrics.json"),
        loss_svg: out.join("loss.svg"),
        epsilon_svg: out.join("epsilon.svg"),
    };
    std::fs::write(&outputs.metrics, serde_json::to_string_pretty(&metrics)?)?;
    std::fs::write(
        &outputs.loss_svg,
        svg(
            held_out_loss,
            "Loss of the model on held-out data (not training data)",
            "step",
            "loss",
        ),
    )?;
    std::fs::write(
        &outputs.epsilon_svg,
        svg(epsilon, "Privacy spent", "step", "ε"),
    )?;
    eprintln!("metrics:      {}", outputs.metrics.display());
    eprintln!("loss curve:   {}", outputs.loss_svg.display());
    eprintln!("epsilon curve: {}", outputs.epsilon_svg.display());
    Ok(outputs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn svg_has_polyline() {
        let mut c = Curve::default();
        c.push(0, 2.0);
        c.push(10, 1.0);
        c.push(11, f64::NAN);
        let s = svg(&c, "a < b", "step", "loss");
        assert!(s.starts_with("<svg") && s.contains("<polyline") && s.contains("a &lt; b"));
        assert_eq!(c.points.len(), 2);
    }
}
