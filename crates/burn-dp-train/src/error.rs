//! Errors of DP training driven by burn-train's `Learner`.

use burn_dp::DpError;
use thiserror::Error;

/// Why a private training session refused to go on. Once one is raised the session is stopped:
/// every later draw and step is refused, and the Learner is interrupted.
#[derive(Debug, Error, Clone, PartialEq)]
pub enum DpTrainError {
    /// An error of the DP machinery (clipping, a forward that mixes samples, accounting, a
    /// checkpoint that does not match, ...).
    #[error(transparent)]
    Dp(#[from] DpError),
    /// The Learner asked for the next logical batch before it stepped on the previous one.
    #[error("the Learner did not take the DP step of logical batch {step} before asking for the next one: do not set `grads_accumulation` (each Learner item is one whole Poisson logical batch; its physical batches are accumulated inside `PrivateBatch::train`)")]
    StepSkipped {
        /// The logical batch (DP step index) that was never stepped on.
        step: u64,
    },
    /// The optimizer was handed gradients that `PrivateBatch::train` did not produce.
    #[error("the optimizer was handed ordinary gradients for {params} parameters: they are neither clipped nor noised, so they are refused; the TrainStep must return the output of `PrivateBatch::train` unchanged")]
    UnexpectedGradients {
        /// Parameters in the refused gradients.
        params: usize,
    },
    /// The optimizer was asked to step with no logical batch processed by
    /// `PrivateBatch::train`.
    #[error("optimizer step without a processed logical batch: the TrainStep must pass its `PrivateBatch` to `PrivateBatch::train` (and the data loader must be the session's)")]
    NoLogicalBatch,
    /// A logical batch was processed twice or out of order.
    #[error("logical batch {found} was processed out of order (the session expected {expected})")]
    OutOfOrder {
        /// The logical batch the session expected.
        expected: u64,
        /// The one it got.
        found: u64,
    },
    /// Several devices (burn-train's multi-device or DDP strategies).
    #[error("multi-device training is not supported: the logical batch, its noise and its accounting live on one device (use the Learner's single-device strategy)")]
    MultiDevice,
    /// The data set does not have the size the sampler draws from.
    #[error("the data set has {found} examples but the sampler draws from {expected} (the dataset size of the session)")]
    DatasetSize {
        /// The session's dataset size N.
        expected: usize,
        /// The data set's length.
        found: usize,
    },
    /// An example the sampler drew is not in the data set (it shrank after the check).
    #[error("example {index} is missing from the data set")]
    MissingExample {
        /// Index of the example.
        index: usize,
    },
    /// An invalid setting of the data loader.
    #[error("invalid configuration: {0}")]
    InvalidConfig(String),
    /// A checkpoint record of the optimizer holds no usable DP state.
    #[error("checkpoint: {0}")]
    Checkpoint(String),
    /// A thread panicked while it held the session's state; nothing more can be trusted.
    #[error(
        "the private training session's state is unavailable: a thread panicked while it held it"
    )]
    StatePoisoned,
}
