//! The flags every example shares: privacy, clipping, freezing, backend, run control.

use burn_dp::{
    AccountantKind, ClippingFn, FreezePolicy, NoiseSource, PerSampleConfig, PrivacyState, Schedule,
};
use clap::ValueEnum;

use crate::*;

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
    /// adapters first: `burn_dp_models::adapters_policy`).
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
        FreezeKind::Lora => burn_dp_models::adapters_policy(false),
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
