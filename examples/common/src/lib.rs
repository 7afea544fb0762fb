//! What the burn-dp examples share: command-line value types, clipping and noise-source setup,
//! training curves written as SVG, the metrics file, progress bars.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use burn_dp::{
    AccountantKind, ClippingFn, FreezePolicy, NoiseSource, ParamSelector, PerSampleConfig,
    PrivacyState, Schedule,
};
use clap::ValueEnum;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressState, ProgressStyle};

mod plot;
pub use plot::{curve_svg, sweep_svg};

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
    /// DP-LoRA: only the LoRA adapters train (a model with LoRA support; the example adds the
    /// adapters, whose parameter names end with `burn_dp_models::lora::ADAPTER_SUFFIXES`).
    Lora,
}

/// `--backend`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BackendKind {
    /// The CPU with burn's Flex (SIMD, multi-threaded): the default, the fastest on a CPU.
    Flex,
    /// The CPU with burn's NdArray (deprecated in burn 0.22, kept while burn 0.21 has it).
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
    /// Learning rate (AdamW) of the fine-tuning; default: the example's best private setting for
    /// what trains (image-classification 2e-3, with `--freeze bias` 1e-2; table-to-text 5e-3,
    /// with `--freeze bias` 1e-1, with `--freeze lora` its `DEFAULT_LR.lora`).
    #[arg(long)]
    pub lr: Option<f64>,
    /// Per-sample clipping.
    #[arg(long, value_enum, default_value_t = ClippingKind::Automatic)]
    pub clipping: ClippingKind,
    /// Clipping threshold C of `--clipping abadi`.
    #[arg(long, default_value_t = 1.0)]
    pub max_norm: f64,
    /// Which parameters train: all, biases only (DP-BiTFiT), the last layers (the classifier
    /// head; for GPT-2 the last block, the final LayerNorm and an untied head), or LoRA adapters
    /// (models with LoRA support: table-to-text's `--model llama-tiny`).
    #[arg(long, value_enum, default_value_t = FreezeKind::None)]
    pub freeze: FreezeKind,
    /// Backend: `flex` for a CPU, `cuda` for an NVIDIA GPU.
    #[arg(long, value_enum, default_value_t = BackendKind::Flex)]
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

/// An example's default learning rates (`--lr` unset).
#[derive(Debug, Clone, Copy)]
pub struct DefaultLearningRates {
    /// Full fine-tuning and the last layers.
    pub full: f64,
    /// Bias-only fine-tuning (DP-BiTFiT), which takes larger steps: its few coordinates move the
    /// model less per unit of step (measured in each example's sweep; Bu et al. 2022 likewise
    /// raise the learning rate for DP-BiTFiT).
    pub bias_only: f64,
    /// LoRA adapters only (`--freeze lora`), which start at zero (`B = 0`) and take larger steps
    /// than full fine-tuning.
    pub lora: f64,
}

impl PrivateTrainingArgs {
    /// The fine-tuning's learning rate: `--lr`, else the example's default for `--freeze`.
    pub fn learning_rate(&self, defaults: DefaultLearningRates) -> f64 {
        self.lr.unwrap_or(match self.freeze {
            FreezeKind::Bias => defaults.bias_only,
            FreezeKind::Lora => defaults.lora,
            FreezeKind::None | FreezeKind::Head => defaults.full,
        })
    }

    /// The schedule (`epochs` expected passes over `n` examples in logical batches of
    /// `batch_size`) and the privacy state with σ calibrated for `--target-epsilon` at `--delta`
    /// (RDP, an upper bound), budget enforced.
    pub fn privacy(
        &self,
        n: usize,
        batch_size: u64,
        epochs: u64,
    ) -> Result<(Schedule, PrivacyState), burn_dp::DpError> {
        let schedule = Schedule::from_epochs(n, batch_size.min(n as u64) as usize, epochs)?;
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

/// The freezing policy of `--freeze`, given the module path(s) of the model's head (`--freeze
/// lora` selects the LoRA adapters, which the model must have by then).
pub fn freeze_policy(kind: FreezeKind, head: &[&str]) -> FreezePolicy {
    match kind {
        FreezeKind::None => FreezePolicy::None,
        FreezeKind::Bias => FreezePolicy::BiasOnly,
        FreezeKind::Head => FreezePolicy::Prefixes(head.iter().map(|s| s.to_string()).collect()),
        FreezeKind::Lora => FreezePolicy::Select(ParamSelector::AnyOf(
            burn_dp_models::lora::ADAPTER_SUFFIXES
                .iter()
                .map(|s| ParamSelector::PathSuffix(s.to_string()))
                .collect(),
        )),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn svg_has_polyline() {
        let mut c = Curve::default();
        c.push(0, 2.0);
        c.push(10, 1.0);
        c.push(11, f64::NAN);
        let s = curve_svg(&c, "a < b", "step", "loss").unwrap();
        assert!(s.starts_with("<svg") && s.contains("<polyline") && s.contains("a &lt; b"));
        assert_eq!(c.points.len(), 2);
    }

    /// `--freeze bias` without `--lr` takes the example's bias-only default; `--lr` always wins.
    #[test]
    fn bias_only_fine_tuning_has_its_own_default_learning_rate() {
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            train: PrivateTrainingArgs,
        }
        let defaults = DefaultLearningRates {
            full: 5e-3,
            bias_only: 1e-1,
            lora: 2e-2,
        };
        let lr = |args: &[&str]| {
            let cli =
                <Cli as clap::Parser>::parse_from(std::iter::once("x").chain(args.iter().copied()));
            cli.train.learning_rate(defaults)
        };
        assert_eq!(lr(&[]), 5e-3);
        assert_eq!(lr(&["--freeze", "head"]), 5e-3);
        assert_eq!(lr(&["--freeze", "bias"]), 1e-1);
        assert_eq!(lr(&["--freeze", "bias", "--lr", "2e-2"]), 2e-2);
        assert_eq!(lr(&["--freeze", "lora"]), 2e-2);
    }

    fn row(method: &str, clipping: &str, target: Option<f64>, metric: f64) -> SweepRow {
        SweepRow {
            method: method.into(),
            clipping: clipping.into(),
            target_epsilon: target,
            epsilon: target.map(|t| t - 0.004),
            metric,
            trainable: 106,
            steps: 382,
            seconds: 57.4,
        }
    }

    /// `--sweep-replot` reads back what the sweep wrote: the table survives a round trip, and the
    /// plot has one panel per private method with a line per clipping and the two references.
    #[test]
    fn sweep_table_round_trips_and_plots_in_panels() {
        let mut rows = vec![
            row("public pre-training only", "-", None, 0.9276),
            row("non-private full", "-", None, 0.967),
        ];
        for eps in [1.0, 3.0, 8.0] {
            for method in ["DP full", "DP-BiTFiT", "DP last layer"] {
                for clipping in ["automatic", "Abadi C=0.1", "Abadi C=10"] {
                    rows.push(row(method, clipping, Some(eps), 0.93 + eps / 1000.0));
                }
            }
        }
        let table = format!("Produced by `x`.\n\n{}", sweep_markdown(&rows, "BLEU"));
        let (parsed, metric) = parse_sweep_markdown(&table).unwrap();
        assert_eq!(metric, "BLEU");
        assert_eq!(
            sweep_markdown(&parsed, &metric),
            sweep_markdown(&rows, "BLEU")
        );
        assert_eq!(parsed[0].target_epsilon, None);
        assert_eq!(parsed[2].target_epsilon, Some(1.0));
        let svg = sweep_svg(&parsed, "a & b", &metric).unwrap();
        for text in [
            "DP full",
            "DP-BiTFiT",
            "DP last layer",
            "Abadi C=10",
            "non-private full",
        ] {
            assert!(svg.contains(text), "{text}");
        }
        assert!(svg.contains("a &amp; b"));
        // 3 panels × 3 clippings, each a polyline.
        assert!(svg.matches("<polyline").count() >= 9);
        let broken = table.replace("| 382 |", "| many |");
        let e = parse_sweep_markdown(&broken).unwrap_err().to_string();
        assert!(e.contains("cannot read the sweep row"), "{e}");
        assert!(parse_sweep_markdown("no table").is_err());
        let mut zero = parsed.clone();
        zero[2].target_epsilon = Some(0.0);
        let e = sweep_svg(&zero, "t", &metric).unwrap_err().to_string();
        assert!(e.contains("not a positive number"), "{e}");
    }
}

// ---------------------------------------------------------------------------------------------
// Non-private training (public pre-training; the non-private baseline of a sweep)
// ---------------------------------------------------------------------------------------------

/// Settings of [`train_non_private`].
#[derive(Debug, Clone, Copy)]
pub struct PlainTraining {
    /// Passes over the data.
    pub epochs: u64,
    /// Examples per step.
    pub batch_size: usize,
    /// Learning rate (AdamW).
    pub lr: f64,
    /// Seed of the shuffling order (the data this loop reads is public, or the run is a
    /// non-private baseline: no privacy is claimed for it).
    pub seed: u64,
}

/// The one non-private training loop of the examples (public pre-training, and the non-private
/// baseline of `--sweep`): plain minibatch AdamW on the mean of `losses(model, indices)` over
/// `n` examples, `epochs` passes in an order shuffled from `settings.seed`. No clipping, no
/// noise: **never call it on private data in a run that claims privacy.**
pub fn train_non_private<B, M, F>(
    mut model: M,
    n: usize,
    settings: PlainTraining,
    label: &str,
    quiet: bool,
    losses: F,
) -> M
where
    B: burn::tensor::backend::AutodiffBackend,
    M: burn::module::AutodiffModule<B>,
    F: Fn(&M, &[usize]) -> burn::tensor::Tensor<B, 1>,
{
    use burn::optim::{AdamWConfig, GradientsParams, Optimizer};
    let batch = settings.batch_size.max(1);
    let mut optim = AdamWConfig::new().init::<B, M>();
    let steps = settings.epochs * n.div_ceil(batch) as u64;
    let bar = progress(steps, label, quiet);
    let mut order: Vec<usize> = (0..n).collect();
    let mut state = settings.seed ^ 0x9E37_79B9_7F4A_7C15;
    for _ in 0..settings.epochs {
        // Fisher–Yates with a xorshift64* stream: the same order on every machine.
        for i in (1..order.len()).rev() {
            state ^= state >> 12;
            state ^= state << 25;
            state ^= state >> 27;
            let r = state.wrapping_mul(0x2545_F491_4F6C_DD1D);
            order.swap(i, (r % (i as u64 + 1)) as usize);
        }
        for chunk in order.chunks(batch) {
            let loss = losses(&model, chunk).mean();
            let grads = GradientsParams::from_grads(loss.backward(), &model);
            model = optim.step(settings.lr, model, grads);
            bar.inc(1);
        }
    }
    bar.finish_and_clear();
    model
}

// ---------------------------------------------------------------------------------------------
// Weights as safetensors (the cache of pre-trained weights)
// ---------------------------------------------------------------------------------------------

struct CollectParams {
    path: Vec<String>,
    tensors: Vec<(String, Vec<usize>, Vec<f32>)>,
}

impl<B: burn::tensor::backend::Backend> burn::module::ModuleVisitor<B> for CollectParams {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.path.push(name.to_string());
    }
    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.pop();
    }
    fn visit_float<const D: usize>(
        &mut self,
        param: &burn::module::Param<burn::tensor::Tensor<B, D>>,
    ) {
        let t = param.val();
        let shape = t.dims().to_vec();
        let data = t
            .into_data()
            .convert::<f32>()
            .into_vec::<f32>()
            .unwrap_or_default();
        self.tensors.push((self.path.join("."), shape, data));
    }
}

/// Every float parameter of `module` under its module path (`conv1.weight`, `fc.bias`, …),
/// in visiting order, as `(name, shape, values)`.
pub fn named_params<B: burn::tensor::backend::Backend, M: burn::module::Module<B>>(
    module: &M,
) -> Vec<(String, Vec<usize>, Vec<f32>)> {
    let mut c = CollectParams {
        path: Vec::new(),
        tensors: Vec::new(),
    };
    module.visit(&mut c);
    c.tensors
}

/// Save every float parameter of `module` to a safetensors file (f32, names = module paths;
/// written to a temporary file then renamed, so a cache is never half-written).
pub fn save_safetensors<B: burn::tensor::backend::Backend, M: burn::module::Module<B>>(
    module: &M,
    path: &Path,
) -> Result<(), Error> {
    let params = named_params::<B, M>(module);
    let bytes: Vec<(String, Vec<usize>, Vec<u8>)> = params
        .into_iter()
        .map(|(n, s, d)| (n, s, d.iter().flat_map(|v| v.to_le_bytes()).collect()))
        .collect();
    let views = bytes
        .iter()
        .map(|(n, s, b)| {
            safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), b)
                .map(|v| (n.clone(), v))
        })
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("safetensors: {e}"))?;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    }
    let tmp = path.with_extension(format!("{}.part", std::process::id()));
    safetensors::serialize_to_file(views, &None, &tmp)
        .map_err(|e| format!("cannot write {}: {e}", tmp.display()))?;
    std::fs::rename(&tmp, path).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    Ok(())
}

struct LoadParams<'a, B: burn::tensor::backend::Backend> {
    path: Vec<String>,
    file: &'a safetensors::SafeTensors<'a>,
    device: B::Device,
    errors: Vec<String>,
}

impl<B: burn::tensor::backend::Backend> burn::module::ModuleMapper<B> for LoadParams<'_, B> {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.path.push(name.to_string());
    }
    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.pop();
    }
    fn map_float<const D: usize>(
        &mut self,
        param: burn::module::Param<burn::tensor::Tensor<B, D>>,
    ) -> burn::module::Param<burn::tensor::Tensor<B, D>> {
        let name = self.path.join(".");
        let shape = param.val().dims().to_vec();
        let view = match self.file.tensor(&name) {
            Ok(v) => v,
            Err(_) => {
                self.errors.push(format!("missing weight `{name}`"));
                return param;
            }
        };
        if view.dtype() != safetensors::Dtype::F32 || view.shape() != shape.as_slice() {
            self.errors.push(format!(
                "weight `{name}`: {:?} {:?} in the file, f32 {shape:?} in the model",
                view.dtype(),
                view.shape()
            ));
            return param;
        }
        let values: Vec<f32> = view
            .data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        let device = self.device.clone();
        param.map(|old| {
            let require_grad = old.is_require_grad();
            let t = burn::tensor::Tensor::<B, D>::from_data(
                burn::tensor::TensorData::new(values, shape),
                &device,
            );
            if require_grad {
                t.require_grad()
            } else {
                t
            }
        })
    }
}

/// Load the float parameters of `module` from a safetensors file written by
/// [`save_safetensors`] for the same architecture: a missing weight or another shape is an
/// error naming it.
pub fn load_safetensors<B: burn::tensor::backend::Backend, M: burn::module::Module<B>>(
    module: M,
    path: &Path,
    device: &B::Device,
) -> Result<M, Error> {
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let file = safetensors::SafeTensors::deserialize(&bytes)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let mut loader = LoadParams::<B> {
        path: Vec::new(),
        file: &file,
        device: device.clone(),
        errors: Vec::new(),
    };
    let module = module.map(&mut loader);
    if !loader.errors.is_empty() {
        return Err(format!("{}: {}", path.display(), loader.errors.join("; ")).into());
    }
    Ok(module)
}

// ---------------------------------------------------------------------------------------------
// Sweeps: one row per configuration, a Markdown table and an SVG plot
// ---------------------------------------------------------------------------------------------

/// One configuration of a sweep and what it reached.
#[derive(Debug, Clone)]
pub struct SweepRow {
    /// `public only`, `non-private`, `DP full`, `DP-BiTFiT`, `DP last layers`.
    pub method: String,
    /// `automatic`, `Abadi C=1`, or `-`.
    pub clipping: String,
    /// Target ε (`None`: no privacy).
    pub target_epsilon: Option<f64>,
    /// ε spent.
    pub epsilon: Option<f64>,
    /// Accuracy or BLEU.
    pub metric: f64,
    /// Trainable parameters.
    pub trainable: u64,
    /// Steps.
    pub steps: u64,
    /// Wall-clock seconds.
    pub seconds: f64,
}

/// The sweep as a Markdown table (`metric_name`: `accuracy` or `BLEU`).
pub fn sweep_markdown(rows: &[SweepRow], metric_name: &str) -> String {
    let mut s = format!(
        "| method | clipping | target ε | ε spent | {metric_name} | trainable | steps | seconds |\n\
         |---|---|---|---|---|---|---|---|\n"
    );
    let opt = |v: Option<f64>| v.map_or("∞".to_string(), |v| format!("{v:.2}"));
    for r in rows {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {:.3} | {} | {} | {:.0} |",
            r.method,
            r.clipping,
            opt(r.target_epsilon),
            opt(r.epsilon),
            r.metric,
            r.trainable,
            r.steps,
            r.seconds
        );
    }
    s
}

/// One configuration of a results sweep, for the example to run as an ordinary run.
#[derive(Clone, Debug)]
pub struct SweepConfig {
    /// A folder-safe name (`runs/<name>` under the sweep's output folder).
    pub name: String,
    /// Fine-tune without privacy (the baseline); the privacy fields below are then unused.
    pub non_private: bool,
    /// Target ε of a private run (unused by the non-private one).
    pub target_epsilon: f64,
    /// What trains.
    pub freeze: FreezeKind,
    /// The clipping function.
    pub clipping: ClippingKind,
    /// Abadi's threshold C (unused by automatic clipping).
    pub max_norm: f64,
    /// A learning rate for this configuration, or the example's default.
    pub lr: Option<f64>,
}

impl SweepConfig {
    /// Applies the configuration to the shared training flags (quiet: the sweep prints rows).
    pub fn apply(&self, train: &mut PrivateTrainingArgs) {
        train.quiet = true;
        train.freeze = self.freeze;
        if !self.non_private {
            train.target_epsilon = self.target_epsilon;
            train.clipping = self.clipping;
            train.max_norm = self.max_norm;
        }
        if self.lr.is_some() {
            train.lr = self.lr;
        }
    }
}

/// What one run of a sweep reports.
#[derive(Clone, Debug)]
pub struct SweepOutcome {
    /// ε spent (ignored for the non-private run).
    pub epsilon: f64,
    /// Test accuracy or BLEU.
    pub metric: f64,
    /// The metric of the public pre-trained model alone, where the run measured it.
    pub pretrained_metric: Option<f64>,
    /// Trainable parameters.
    pub trainable: u64,
    /// Optimizer steps taken.
    pub steps: u64,
    /// Wall time in seconds.
    pub seconds: f64,
}

/// The results sweep's flags, shared by the examples (`#[command(flatten)]`).
#[derive(clap::Args, Clone, Debug)]
pub struct SweepArgs {
    /// Run the results sweep (public only, non-private, DP full / DP-BiTFiT / DP last layers at
    /// each `--sweep-epsilons`, automatic clipping and Abadi at each `--sweep-max-norms`) and
    /// write `results.md` and `results.svg` to `--out`.
    #[arg(long)]
    pub sweep: bool,
    /// Target ε of the sweep.
    #[arg(long = "sweep-epsilons", value_delimiter = ',', default_values_t = [1.0, 3.0, 8.0])]
    pub epsilons: Vec<f64>,
    /// The target ε at which the sweep also runs Abadi clipping (default: every
    /// `--sweep-epsilons`).
    #[arg(long = "sweep-abadi-epsilons", value_delimiter = ',')]
    pub abadi_epsilons: Option<Vec<f64>>,
    /// Abadi clipping thresholds of the sweep (each at every freezing; empty: none).
    #[arg(long = "sweep-max-norms", value_delimiter = ',', default_values_t = [0.1, 1.0, 10.0])]
    pub max_norms: Vec<f64>,
    /// Learning rate of DP-BiTFiT in the sweep (default: the example's default for
    /// `--freeze bias`).
    #[arg(long = "sweep-bitfit-lr")]
    pub bitfit_lr: Option<f64>,
    /// Redraw `results.svg` from the `results.md` in `--out` (after merging or editing sweeps)
    /// instead of running anything.
    #[arg(long = "sweep-replot", conflicts_with = "sweep")]
    pub replot: bool,
}

/// A results sweep: non-private fine-tuning (and the public pre-trained model alone), then DP
/// full, DP-BiTFiT and DP last layers at each target ε, with automatic clipping and Abadi
/// clipping at each threshold. `run` runs one configuration as an ordinary run of the example.
/// `results.md` and `results.svg` are written to `out` after every configuration, so an
/// interrupted sweep keeps its rows.
pub fn run_sweep(
    grid: &SweepArgs,
    out: &Path,
    title: &str,
    metric_name: &str,
    mut run: impl FnMut(&SweepConfig) -> Result<SweepOutcome, Error>,
) -> Result<Vec<SweepRow>, Error> {
    let command = std::env::args()
        .map(|a| if a.contains(' ') { format!("'{a}'") } else { a })
        .collect::<Vec<_>>()
        .join(" ");
    let mut rows = Vec::new();
    let record = |rows: &mut Vec<SweepRow>, row: SweepRow| -> Result<(), Error> {
        rows.push(row);
        write_sweep(out, rows, &command, title, metric_name)?;
        eprintln!("{}", sweep_markdown(&rows[rows.len() - 1..], metric_name));
        Ok(())
    };
    let plain = SweepConfig {
        name: "non-private".into(),
        non_private: true,
        target_epsilon: f64::INFINITY,
        freeze: FreezeKind::None,
        clipping: ClippingKind::Automatic,
        max_norm: 0.0,
        lr: None,
    };
    let s = run(&plain)?;
    if let Some(metric) = s.pretrained_metric {
        let row = SweepRow {
            method: "public pre-training only".into(),
            clipping: "-".into(),
            target_epsilon: None,
            epsilon: Some(0.0),
            metric,
            trainable: 0,
            steps: 0,
            seconds: 0.0,
        };
        record(&mut rows, row)?;
    }
    let row = |method: &str, clipping: String, c: &SweepConfig, s: &SweepOutcome| SweepRow {
        method: method.into(),
        clipping,
        target_epsilon: (!c.non_private).then_some(c.target_epsilon),
        epsilon: (!c.non_private).then_some(s.epsilon),
        metric: s.metric,
        trainable: s.trainable,
        steps: s.steps,
        seconds: s.seconds,
    };
    record(&mut rows, row("non-private full", "-".into(), &plain, &s))?;
    let mut clippings = vec![(ClippingKind::Automatic, 0.0)];
    clippings.extend(grid.max_norms.iter().map(|&c| (ClippingKind::Abadi, c)));
    for &eps in &grid.epsilons {
        for (freeze, method) in [
            (FreezeKind::None, "DP full"),
            (FreezeKind::Bias, "DP-BiTFiT"),
            (FreezeKind::Head, "DP last layer"),
        ] {
            for &(clipping, max_norm) in &clippings {
                let abadi_here = grid
                    .abadi_epsilons
                    .as_ref()
                    .is_none_or(|at| at.contains(&eps));
                if clipping == ClippingKind::Abadi && !abadi_here {
                    continue;
                }
                let label = match clipping {
                    ClippingKind::Automatic => "automatic".to_string(),
                    ClippingKind::Abadi => format!("Abadi C={max_norm}"),
                };
                let config = SweepConfig {
                    name: format!("{method}-{label}-eps{eps}").replace([' ', '='], "_"),
                    non_private: false,
                    target_epsilon: eps,
                    freeze,
                    clipping,
                    max_norm,
                    lr: grid.bitfit_lr.filter(|_| freeze == FreezeKind::Bias),
                };
                let s = run(&config)?;
                record(&mut rows, row(method, label, &config, &s))?;
            }
        }
    }
    Ok(rows)
}

/// Reads a table written by [`sweep_markdown`] (inside `results.md`) back into rows; lines that
/// are not table rows are skipped. The metric's name comes from the header.
pub fn parse_sweep_markdown(text: &str) -> Result<(Vec<SweepRow>, String), Error> {
    let mut lines = text.lines().skip_while(|l| !l.starts_with("| method |"));
    let header = lines
        .next()
        .ok_or("no sweep table (a line starting with `| method |`)")?;
    let metric_name = header
        .split('|')
        .map(str::trim)
        .nth(5)
        .ok_or_else(|| format!("sweep table header without a metric column: {header}"))?
        .to_string();
    let epsilon = |cell: &str| -> Result<Option<f64>, Error> {
        match cell {
            "∞" => Ok(None),
            v => Ok(Some(v.parse()?)),
        }
    };
    let mut rows = Vec::new();
    for line in lines.filter(|l| l.starts_with("| ")) {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        let [_, method, clipping, target, spent, metric, trainable, steps, seconds, _] = cells[..]
        else {
            return Err(format!("a sweep row has not 8 columns: {line}").into());
        };
        let row = (|| -> Result<SweepRow, Error> {
            Ok(SweepRow {
                method: method.into(),
                clipping: clipping.into(),
                target_epsilon: epsilon(target)?,
                epsilon: epsilon(spent)?,
                metric: metric.parse()?,
                trainable: trainable.parse()?,
                steps: steps.parse()?,
                seconds: seconds.parse()?,
            })
        })()
        .map_err(|e| format!("cannot read the sweep row `{line}`: {e}"))?;
        rows.push(row);
    }
    Ok((rows, metric_name))
}

/// `--sweep-replot`: redraws `out/results.svg` from `out/results.md`.
pub fn replot_sweep(out: &Path, title: &str) -> Result<PathBuf, Error> {
    let md = out.join("results.md");
    let text =
        std::fs::read_to_string(&md).map_err(|e| format!("cannot read {}: {e}", md.display()))?;
    let (rows, metric_name) = parse_sweep_markdown(&text)?;
    let svg_path = out.join("results.svg");
    std::fs::write(&svg_path, sweep_svg(&rows, title, &metric_name)?)?;
    eprintln!("sweep plot:   {}", svg_path.display());
    Ok(svg_path)
}

// ---------------------------------------------------------------------------------------------
// The examples' shared `main`
// ---------------------------------------------------------------------------------------------

/// The flags of an example that the shared [`example_main`] and [`sweep`] read and set.
pub struct SharedFlags<'a> {
    /// The private-training flags.
    pub train: &'a mut PrivateTrainingArgs,
    /// `--non-private`.
    pub non_private: &'a mut bool,
    /// The results sweep's flags.
    pub results: &'a mut SweepArgs,
    /// The data-parallel flags.
    pub distributed: &'a mut DistributedArgs,
    /// `--out`.
    pub out: &'a mut PathBuf,
}

/// What one ordinary run of an example reports.
#[derive(Clone, Debug)]
pub struct RunReport {
    /// The numbers a sweep row needs.
    pub outcome: SweepOutcome,
    /// The final JSON line (`epsilon`, `delta`, the metric, …).
    pub line: serde_json::Value,
}

/// An example binary, as the shared [`example_main`] and [`sweep`] drive it.
pub trait Example: clap::Parser + Clone {
    /// The title of the results plot.
    const SWEEP_TITLE: &'static str;
    /// The metric's name in the results table (`accuracy`, `BLEU`).
    const METRIC: &'static str;
    /// The shared flags, to read and set.
    fn shared_flags(&mut self) -> SharedFlags<'_>;
    /// One ordinary run with these arguments.
    fn run_once(self) -> Result<RunReport, Error>;
}

/// `--sweep` of an example: every configuration of [`run_sweep`] is one ordinary run of it (quiet,
/// its files under `out/runs/<name>`); writes `results.md` and `results.svg` to `--out`.
pub fn sweep<E: Example>(args: &E) -> Result<Vec<SweepRow>, Error> {
    let mut base = args.clone();
    let flags = base.shared_flags();
    let (grid, out) = (flags.results.clone(), flags.out.clone());
    run_sweep(&grid, &out, E::SWEEP_TITLE, E::METRIC, |config| {
        let mut a = args.clone();
        let flags = a.shared_flags();
        flags.results.sweep = false;
        *flags.out = out.join("runs").join(&config.name);
        *flags.non_private = config.non_private;
        config.apply(flags.train);
        Ok(a.run_once()?.outcome)
    })
}

/// The `main` of an example binary: parses the flags, then runs the sweep (`--sweep`), redraws
/// its plot (`--sweep-replot`) or makes one run; rank 0 of a data-parallel run alone prints the
/// final JSON line. Errors go to stderr with exit code 1.
pub fn example_main<E: Example>() -> std::process::ExitCode {
    let mut args = E::parse();
    let flags = args.shared_flags();
    let (sweeping, replot, out) = (flags.results.sweep, flags.results.replot, flags.out.clone());
    let leader = flags.distributed.is_leader();
    let result = flags
        .distributed
        .check(sweeping || replot, *flags.non_private)
        .and_then(|()| flags.distributed.run_mpirun())
        .and_then(|launched| {
            if launched.is_some() {
                // mpirun ran the job; its rank 0 printed the results.
                Ok(None)
            } else if replot {
                replot_sweep(&out, E::SWEEP_TITLE).map(|_| None)
            } else if sweeping {
                sweep(&args).map(|rows| Some(serde_json::json!({ "sweep_rows": rows.len() })))
            } else {
                args.run_once().map(|r| leader.then_some(r.line))
            }
        });
    match result {
        Ok(line) => {
            if let Some(line) = line {
                println!("{line}");
            }
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Write `results.md` (the table, with the command that produced it) and `results.svg` to `out`.
pub fn write_sweep(
    out: &Path,
    rows: &[SweepRow],
    command: &str,
    title: &str,
    metric_name: &str,
) -> Result<(PathBuf, PathBuf), Error> {
    std::fs::create_dir_all(out).map_err(|e| format!("cannot create {}: {e}", out.display()))?;
    let md = out.join("results.md");
    let svg_path = out.join("results.svg");
    std::fs::write(
        &md,
        format!(
            "Produced by `{command}`.\n\n{}",
            sweep_markdown(rows, metric_name)
        ),
    )?;
    std::fs::write(&svg_path, sweep_svg(rows, title, metric_name)?)?;
    eprintln!("sweep table:  {}", md.display());
    eprintln!("sweep plot:   {}", svg_path.display());
    Ok((md, svg_path))
}

// ---------------------------------------------------------------------------------------------
// Data-parallel fine-tuning (the peer flags of every program: `--peers`, or MPI's rank and world)
// ---------------------------------------------------------------------------------------------

/// The data-parallel flags both examples share (`#[command(flatten)]`): burn-dp-distributed's
/// [`PeerArgs`](burn_dp_distributed::PeerArgs), the flags of the bench and `burn-dp-peer` too.
/// `--peers N` (alias `--devices`) starts N peers on this machine (`mpirun -np N` when built
/// with the feature `mpi`, else a TCP group on 127.0.0.1); under `mpirun`/`srun` rank and world
/// come from MPI. With neither, the run is the ordinary one-process run.
#[derive(clap::Args, Debug, Clone)]
pub struct DistributedArgs {
    /// The peer flags.
    #[command(flatten)]
    pub peers: burn_dp_distributed::PeerArgs,
}

impl DistributedArgs {
    /// Whether the fine-tuning runs over more than one peer.
    pub fn is_data_parallel(&self) -> bool {
        self.peers.is_data_parallel()
    }

    /// Whether this process writes the results (rank 0, or a one-process run).
    pub fn is_leader(&self) -> bool {
        self.peers.is_leader()
    }

    /// Refuses what data-parallel runs do not support: `--sweep` (its runs would each start
    /// peers of the whole sweep) and `--non-private` (the baseline is one process); and peer
    /// flags that do not go together.
    pub fn check(&self, sweep: bool, non_private: bool) -> Result<(), Error> {
        self.peers.role()?;
        if self.is_data_parallel() && (sweep || non_private) {
            return Err(
                "--peers / MPI run the private fine-tuning of one run: not with --sweep or \
                 --non-private"
                    .into(),
            );
        }
        Ok(())
    }

    /// With `--peers N` in a build with the feature `mpi`: runs `mpirun -np N` of this
    /// executable with the same arguments but `--peers` (every rank of the job; rank 0 prints
    /// the results) and returns its exit status; otherwise `None` (the TCP peers are started by
    /// [`DpTrainer::new`]).
    pub fn run_mpirun(&self) -> Result<Option<()>, Error> {
        use burn_dp_distributed::{launch_peers, Launched, PeerOutput, PeerRole};
        let PeerRole::Launcher { peers } = self.peers.role()? else {
            return Ok(None);
        };
        if !burn_dp_distributed::peer::USES_MPI {
            return Ok(None);
        }
        let exe = std::env::current_exe()
            .map_err(|e| format!("cannot find this executable to start peers: {e}"))?;
        let args = burn_dp_distributed::PeerArgs::peer_args(std::env::args().skip(1));
        eprintln!("data-parallel: mpirun -np {peers} {}", exe.display());
        match launch_peers(&exe, peers, &args, 0, PeerOutput::Inherit)? {
            Launched::Mpirun(p) | Launched::Tcp { peers: p, .. } => p.wait()?,
        };
        Ok(Some(()))
    }
}

/// The private fine-tuning of an example: a [`burn_dp::PrivateTrainer`] in one process or a
/// [`burn_dp_distributed::DistributedTrainer`] peer ([`burn_dp_distributed::AnyTrainer`]); with
/// `--devices N`, rank 0 also owns the processes of ranks 1..N it started.
pub struct DpTrainer<M, O, B: burn_dp::NoiseBackend> {
    /// The trainer: `step`, `epsilon` and `model` are the same in both forms.
    pub trainer: burn_dp_distributed::AnyTrainer<M, O, B, burn_dp_distributed::AnyGroup>,
    /// The TCP peer processes this one started (`--peers` without MPI), waited for at the end.
    launched: Option<burn_dp_distributed::LocalPeers>,
}

/// Compare the replicas' parameter hashes every this many steps (and at the first).
pub const REPLICA_CHECK_EVERY: u64 = 10;

impl<M, O, B> DpTrainer<M, O, B>
where
    B: burn_dp::NoiseBackend,
    M: burn::module::AutodiffModule<burn_dp::DpAutodiff<B>>,
    O: burn::optim::Optimizer<M, burn_dp::DpAutodiff<B>>,
{
    /// The trainer of `dist` for `setup`: [`burn_dp::PrivateTrainer::new`] itself in a
    /// one-process run (the same run bit for bit); else this process's peer of a data-parallel
    /// group over the same `setup.dataset_size` examples at the same q (every peer reports the
    /// same ε). Under MPI the group is the MPI job. With `--peers N` over TCP (a build without
    /// the feature `mpi`) this process is rank 0 and first starts ranks 1..N: this executable
    /// with the same arguments, `--peers` replaced by `--rank r --world N --root
    /// 127.0.0.1:PORT`, `--quiet`, their standard output discarded.
    pub fn new(
        dist: &DistributedArgs,
        model: M,
        inner: O,
        setup: burn_dp::PrivateSetup,
    ) -> Result<Self, Error> {
        use burn_dp_distributed::{
            launch_peers, AnyGroup, AnyTrainer, DistributedTrainer, Launched, PeerArgs, PeerOutput,
            PeerRole, TcpGroup,
        };
        if !dist.is_data_parallel() {
            let trainer = burn_dp::PrivateTrainer::new(model, inner, setup)?;
            return Ok(DpTrainer {
                trainer: AnyTrainer::Single(trainer),
                launched: None,
            });
        }
        let (group, launched) = match dist.peers.role()? {
            PeerRole::Launcher { peers: world } => {
                let exe = std::env::current_exe()
                    .map_err(|e| format!("cannot find this executable to start peers: {e}"))?;
                let args = std::env::args_os()
                    .skip(1)
                    .map(|a| {
                        a.into_string().map_err(|a| {
                            format!(
                                "--peers passes every argument to its peers: {a:?} is not UTF-8"
                            )
                        })
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                let mut own = PeerArgs::peer_args(args);
                if !own.iter().any(|a| a == "--quiet") {
                    own.push("--quiet".into());
                }
                let Launched::Tcp { peers, root } =
                    launch_peers(&exe, world, &own, 1, PeerOutput::DiscardStdout)?
                else {
                    return Err(
                        "mpirun is started before the run (DistributedArgs::run_mpirun)".into(),
                    );
                };
                eprintln!("data-parallel: started peers 1..{world} of {world} on {root}");
                let group = TcpGroup::join(0, world, &root, dist.peers.timeout()?)?;
                (AnyGroup::Tcp(group), Some(peers))
            }
            _ => match dist.peers.join()? {
                Some(group) => (group, None),
                None => {
                    let trainer = burn_dp::PrivateTrainer::new(model, inner, setup)?;
                    return Ok(DpTrainer {
                        trainer: AnyTrainer::Single(trainer),
                        launched: None,
                    });
                }
            },
        };
        let trainer = DistributedTrainer::new(model, inner, setup, group, REPLICA_CHECK_EVERY)?;
        Ok(DpTrainer {
            trainer: AnyTrainer::Peer(trainer),
            launched,
        })
    }

    /// One DP step (of the group): as [`burn_dp::PrivateTrainer::step`].
    ///
    /// # Shapes
    /// `losses` returns `[P]`, one loss per row of `indices`.
    pub fn step<F>(&mut self, lr: f64, losses: F) -> Result<burn_dp::StepReport, Error>
    where
        F: FnMut(&M, &[usize]) -> burn::tensor::Tensor<burn_dp::DpAutodiff<B>, 1>,
    {
        Ok(self.trainer.step(lr, losses)?)
    }

    /// ε spent so far (the global q on every peer).
    pub fn epsilon(&self) -> Result<burn_dp::Epsilon, burn_dp::DpError> {
        self.trainer.epsilon()
    }

    /// The model (this peer's replica, identical on every peer).
    pub fn model(&self) -> &M {
        self.trainer.model()
    }

    /// The trained model, after the peers this process started have ended (an error names
    /// those that failed).
    pub fn into_model(self) -> Result<M, Error> {
        use burn_dp_distributed::AnyTrainer;
        match self.trainer {
            AnyTrainer::Single(t) => Ok(t.into_model()),
            AnyTrainer::Peer(t) => {
                // The group (rank 0 is the star's centre) stays open until the peers have ended.
                let (model, _group) = t.into_parts();
                if let Some(peers) = self.launched {
                    peers.wait()?;
                }
                Ok(model)
            }
        }
    }
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
