//! What a run leaves behind: progress bars, training curves, the metrics file.

use std::path::{Path, PathBuf};
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressState, ProgressStyle};

use crate::*;

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
    let outputs = Outputs::at(out);
    std::fs::write(&outputs.metrics, serde_json::to_string_pretty(&metrics)?)?;
    std::fs::write(
        &outputs.loss_svg,
        curve_svg(
            held_out_loss,
            "Loss of the model on held-out data (not training data)",
            "step",
            "loss",
        )?,
    )?;
    std::fs::write(
        &outputs.epsilon_svg,
        curve_svg(epsilon, "Privacy spent", "step", "ε")?,
    )?;
    eprintln!("metrics:      {}", outputs.metrics.display());
    eprintln!("loss curve:   {}", outputs.loss_svg.display());
    eprintln!("epsilon curve: {}", outputs.epsilon_svg.display());
    Ok(outputs)
}

impl Outputs {
    /// Where [`write_outputs`] writes into `out` (also what a peer other than rank 0 reports:
    /// rank 0 writes them).
    pub fn at(out: &Path) -> Self {
        Outputs {
            metrics: out.join("metrics.json"),
            loss_svg: out.join("loss.svg"),
            epsilon_svg: out.join("epsilon.svg"),
        }
    }
}
