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
    #[error("parameter `{param}`: its gradient mixes samples of the batch: op `{op}` is the first that combined rows of the batch. {hint}", hint = crate::error::mixing_hint(op))]
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
    #[error("the loss must be one value per sample, shape [B], got shape {shape:?}: a batch mean (burn's CrossEntropyLoss or MseLoss, `.mean()`) or a [B, 1] column is not per sample; use burn_dp::PerSampleCrossEntropy, PerSampleMse or PerSampleLmLoss, or reduce only over dimensions >= 1 and reshape to [B]")]
    LossShape {
        /// Shape that was given.
        shape: Vec<usize>,
    },
    /// The per-sample losses were not computed from a marked batch.
    #[error("the per-sample losses do not come from a marked batch: pass float model inputs through burn_dp::batch(..) (token ids entering an Embedding are marked automatically)")]
    UnmarkedBatch,
    /// The per-sample losses depend on several samples.
    #[error("the per-sample losses mix samples: op `{op}` is the first that combined rows of the batch. {hint}", hint = crate::error::mixing_hint(op))]
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
    /// Batch data was read to the host while its DP pass was open (`into_data`, `into_scalar`,
    /// printing a tensor): whatever is computed from it on the host and uploaded again is outside
    /// every check, so the pass is refused.
    #[error("batch data was read to the host during its DP pass (op `{op}`): a value computed on the host from the batch (a mean to subtract, a maximum to divide by) and fed back escapes per-sample clipping. Compute it on the device, per sample (e.g. `x.mean_dim(1)` per row, not the batch's mean), or, for a diagnostic you accept as NOT private and never feed back, read it inside burn_dp::read_without_privacy(|| ...)")]
    HostRead {
        /// The read.
        op: String,
    },
    /// A trainable parameter's value was computed from batch data outside a DP step (an ordinary
    /// `backward()` and optimizer step on `DpAutodiff`), so the model already holds data that was
    /// never clipped or noised.
    #[error("parameter `{param}` was updated outside a DP step on this backend (its value comes from batch data through op `{op}`), so it may hold data that was never clipped or noised. If that training used only public data, say so with `let model = burn_dp::declare_public(model);` before private training (or pre-train on `Autodiff<B>` and load the weights); if it used private data, train it inside PrivateTrainer from the start")]
    ParameterFromBatch {
        /// Module path of the parameter.
        param: String,
        /// The op its value came from.
        op: String,
    },
    /// Clipped sums computed without a physical batch's padding mask were offered to a DP step.
    #[error("clipped sums without the padding mask cannot be accumulated: padding rows repeat a real example and would add it again. Use DpOptimizer::backward(model, losses, &physical_batch) or burn_dp::clipped_backward_masked, which apply the mask")]
    UnmaskedBatch,
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
    /// The DP step's calls came out of order: it runs `draw` → `clip_and_accumulate` for every
    /// physical batch of the drawn logical batch → `finish`, once per logical batch.
    #[error("the DP step of logical batch {step} is out of order: {what}")]
    StepOutOfOrder {
        /// The logical batch (DP step index) the step object is at.
        step: u64,
        /// What was asked out of turn.
        what: &'static str,
    },
    /// A logical batch was drawn while the previous one had not been stepped on (its noise would
    /// cover two batches).
    #[error("logical batch {step} was drawn but not stepped on before the next draw: each logical batch gets exactly one DP step")]
    LogicalBatchOpen {
        /// The logical batch (DP step index) still open.
        step: u64,
    },
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
    /// A checkpoint was loaded into an optimizer that has already taken DP steps: its privacy
    /// history would be replaced by the checkpoint's, and ε would go down.
    #[error("checkpoint {path}: this optimizer has already taken {steps} DP step(s); loading would replace the privacy it spent by the checkpoint's (epsilon would go down and the budget could be spent again). Resume into a freshly built trainer or optimizer")]
    ResumeAfterTraining {
        /// The checkpoint directory.
        path: String,
        /// DP steps this optimizer has recorded.
        steps: u64,
    },
    /// An OS-seeded checkpoint was loaded into an optimizer or sampler seeded from a fixed seed.
    #[error("checkpoint {path}: the {what} of that run was seeded from the operating system, but this one draws from a fixed seed, so its randomness would be public to anyone with the seed from here on; build it with NoiseSource::Os to resume a private run")]
    OsSeededCheckpoint {
        /// The checkpoint directory.
        path: String,
        /// Which generator: the noise generator or the sampler.
        what: String,
    },
    /// The operating system's randomness failed, or a noise stream is used up.
    #[error("randomness: {0}")]
    Randomness(String),
    /// A [`Reducer`](crate::Reducer) broke its contract (it returned parts of other lengths, or
    /// a flat all-reduce was used twice); the step is accounted, the model is unchanged. A
    /// transport's own failures are the reducer's typed [`Reducer::Error`](crate::Reducer::Error).
    #[error("the reduction of the clipped sums broke its contract: {0}")]
    AllReduce(String),
}

/// What usually causes a first mixing `op`, and what to write instead (part of the messages of
/// [`DpError::LossMixesSamples`] and [`DpError::MixedSamples`]).
pub(crate) fn mixing_hint(op: &str) -> &'static str {
    let has = |k: &str| op.contains(k);
    if has("different physical batches") {
        "A tensor computed from an earlier batch or step (a kept activation, a cached prototype) met this batch's rows: compute it from this batch's own sample, or from public data made outside the step."
    } else if has("different sizes") || has("not the open batch") || has("rows differ") {
        "A batch tensor met one with another number of rows (a batch-of-one prototype broadcast to the batch, a second batch marked in the same pass): every marked tensor must have the physical batch's rows in dimension 0."
    } else if has("swap_dims") || has("permute") || has("transpose") {
        "A layout op moved the batch dimension 0 (BatchNorm in training mode does `swap_dims(0, 1)` to normalise over the batch): keep samples in dimension 0; use LayerNorm, GroupNorm or RmsNorm instead of BatchNorm."
    } else if has("reshape") || has("expand") {
        "A reshape or expand changed dimension 0 (`[B, T, d]` to `[B*T, d]`, `losses.mean().expand([b])`): keep the batch in dimension 0 and return one loss per sample, e.g. `token_losses.sum_dim(1)` rather than a flattened mean; burn_dp::PerSampleCrossEntropy, PerSampleMse and PerSampleLmLoss are per-sample losses."
    } else if has("mean") || has("sum") || has("max") || has("min") || has("prod") || has("var") {
        "A reduction over the batch (`x.mean_dim(0)`, `losses.mean()`, BatchNorm statistics, class counts from the batch's labels): compute every statistic per sample (`x.mean_dim(1)`) or from public data, and return `[B]` per-sample losses without averaging them over the batch (burn_dp::PerSampleCrossEntropy, PerSampleMse, PerSampleLmLoss)."
    } else if has("matmul") || has("linear") || has("conv") || has("embedding") {
        "Batch data was used as a shared operand (a weight, or the right-hand side of a rank-2 matmul such as `xᵀx` or attention across the batch): multiply per sample, with the batch in dimension 0 of both operands."
    } else if has("gather")
        || has("select")
        || has("scatter")
        || has("slice")
        || has("cat")
        || has("flip")
        || has("roll")
        || has("sort")
        || has("cumsum")
    {
        "An indexing, concatenation or ordering op worked along the batch dimension 0 (a permutation, a slice or sort of rows, a running sum): work along other dimensions, row by row."
    } else if has("mark_batch") {
        "mark_batch was given a tensor whose rows were already combined (normalised with the batch's mean, say): mark the raw input, then compute per sample."
    } else {
        "An op combined rows of dimension 0 (the samples): keep every computation row by row, per sample."
    }
}
