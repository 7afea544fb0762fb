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
    /// A rule was registered for a backend op that has no rule hook
    /// ([`crate::rules::hooked_ops`]).
    #[error("no per-sample rule can intercept backend op `{op}`: rules hook only the ops listed by burn_dp::rules::hooked_ops()")]
    NoRuleHook {
        /// The op the rule named.
        op: String,
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
    #[error("the loss must be one value per sample, shape [B], got shape {shape:?}: a batch mean (burn's CrossEntropyLoss or MseLoss, `.mean()`) or a [B, 1] column is not per sample; use burn_dp::loss (PerSampleCrossEntropy, PerSampleMse, PerSampleLmLoss), or reduce only over dimensions >= 1 and reshape to [B]")]
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
    /// The per-sample losses depend on unmarked host data with the batch's rows (a mask, labels),
    /// combined across the rows of dimension 0.
    #[error("the per-sample losses combine the {rows} rows of unmarked host data across the batch (op `{op}`), e.g. a token mean divided by `mask.sum()` over the whole batch: sample i's loss may use only row i. Write the loss per sample: `(token_losses * mask).sum_dim(1) / mask.sum_dim(1)` gives each sample the mean over its own tokens (or divide by a fixed public constant such as the maximum length); host tensors with one row per sample must be used row by row")]
    LossUsesUnmarkedBatch {
        /// The first op that combined the rows.
        op: String,
        /// Rows of the host tensor (the batch size).
        rows: usize,
    },
    /// A tensor of the model (a buffer or parameter) was computed from the batch in the forward.
    #[error("module state `{param}` was computed from the batch (op `{op}`), e.g. BatchNorm's running mean and variance in training mode: it would be published without noise, for any batch size including one; use GroupNorm or LayerNorm, or a module that keeps no batch statistics")]
    StateFromBatch {
        /// Module path of the tensor.
        param: String,
        /// The op that mixed the batch into it.
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
    /// The sampling rate the privacy state accounts for and the sampling that draws the batches
    /// disagree (the sampler's q, the expected batch size `q·N` the update is divided by, or a
    /// checkpoint's): the reported ε would not describe the run.
    #[error("sampling mismatch: {what} is {found}, but the privacy state's sample rate q = {sample_rate} implies {expected}; build the PrivacyState, the PoissonSampler and the DpOptimizer from one q (DpOptimizer::new takes the sampler)")]
    SamplingMismatch {
        /// Which value disagrees (e.g. "the sampler's sample rate").
        what: &'static str,
        /// The privacy state's q.
        sample_rate: f64,
        /// The value q implies.
        expected: f64,
        /// The value found.
        found: f64,
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
    /// The all-reduce of a data-parallel step failed (see
    /// [`DpOptimizer::step_all_reduced`](crate::DpOptimizer::step_all_reduced)); the step is
    /// accounted, the model is unchanged.
    #[error("all-reduce of the clipped sums failed: {0}")]
    AllReduce(String),
}
