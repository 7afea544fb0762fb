//! Errors of the per-sample engine and the DP machinery.

use thiserror::Error;

/// Everything that can go wrong on a privacy path; nothing here is ever silently skipped.
#[derive(Debug, Error, Clone, PartialEq)]
pub enum DpError {
    /// A trainable parameter's gradient was not built by a per-sample rule.
    #[error("parameter `{param}` has no per-sample gradient: {reason} (see burn_dp::rules::RULES for supported layers, or freeze it)")]
    NoPerSampleRule {
        /// Module path of the parameter.
        param: String,
        /// What happened to its gradient.
        reason: String,
    },
    /// A trainable parameter's gradient depends on several samples at once.
    #[error("parameter `{param}`: its gradient mixes samples of the batch (op `{op}` reduces, reorders or reshapes the batch dimension 0, e.g. BatchNorm in training mode); per-sample gradients would be wrong")]
    MixedSamples {
        /// Module path of the parameter.
        param: String,
        /// The first op that mixed samples.
        op: String,
    },
    /// A rule saw a different number of samples than the loss has (a batch dimension merged
    /// into another, e.g. `[B·T, d]`).
    #[error("parameter `{param}`: its rule saw {found} samples but the loss has {expected}; the batch dimension must stay dimension 0 (no reshape to [B*T, d])")]
    BatchMismatch {
        /// Module path of the parameter.
        param: String,
        /// Samples the loss has.
        expected: usize,
        /// Samples the rule saw.
        found: usize,
    },
    /// The loss handed to the engine is not one value per sample.
    #[error("the loss must be a vector of per-sample losses [B], got shape {shape:?}")]
    LossShape {
        /// Shape that was given.
        shape: Vec<usize>,
    },
    /// The per-sample losses were not computed from a marked batch.
    #[error("the per-sample losses do not come from a marked batch: pass float model inputs through burn_dp::batch(..) (token ids entering an Embedding are marked automatically)")]
    UnmarkedBatch,
    /// The per-sample losses depend on several samples.
    #[error("the per-sample losses mix samples (op `{op}` reduces, reorders or reshapes the batch dimension 0)")]
    LossMixesSamples {
        /// The first op that mixed samples.
        op: String,
    },
    /// A clipping or grouping setting is invalid.
    #[error("invalid clipping configuration: {0}")]
    InvalidClipping(String),
    /// A parameter selector names nothing, or a parameter is in no group.
    #[error("parameter selection: {0}")]
    Selection(String),
    /// An invalid DP setting (sample rate, batch size, ...).
    #[error("invalid configuration: {0}")]
    InvalidConfig(String),
    /// `step` was called with no clipped gradients accumulated since the last step.
    #[error("no per-sample gradients were accumulated since the last step: call DpOptimizer::backward first (or step_empty for an empty Poisson batch)")]
    NoGradients,
    /// The accumulated gradients do not match the model's trainable parameters.
    #[error("gradients do not match the model: {0}")]
    ParamMismatch(String),
    /// The accumulated gradients were clipped with different sensitivities.
    #[error("physical batches of one logical batch were clipped with different sensitivities ({0} and {1})")]
    SensitivityMismatch(f64, f64),
    /// The next step would spend more than the privacy budget.
    #[error("privacy budget exhausted: the next step would reach epsilon {next:.4} > target {target} (at delta {delta}); stop training or opt out with allow_exceeding_budget()")]
    BudgetExceeded {
        /// ε after the step.
        next: f64,
        /// The target ε.
        target: f64,
        /// δ.
        delta: f64,
    },
    /// An accounting error (invalid σ, q, δ, unreachable target, ...).
    #[error("privacy accounting: {0}")]
    Accounting(#[from] burn_dp_accountant::AccountantError),
    /// Saving or loading a checkpoint failed.
    #[error("checkpoint: {0}")]
    Checkpoint(String),
    /// An optimizer (or sampler) seeded from the OS was asked to continue a fixed-seed run.
    #[error("checkpoint {path}: the {what} comes from a fixed seed, so continuing it would make this run's randomness known to anyone with the seed; build the optimizer with NoiseSource::FixedSeedForExperiments or call load_checkpoint_adopting_fixed_seed to continue it knowingly")]
    FixedSeedCheckpoint {
        /// The checkpoint directory.
        path: String,
        /// Which generator: the noise generator or the sampler.
        what: String,
    },
    /// The operating system's randomness failed, or a noise stream is used up.
    #[error("randomness: {0}")]
    Randomness(String),
}
