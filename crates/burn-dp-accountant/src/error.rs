//! The error type of every fallible function in this crate.

use thiserror::Error;

use crate::AccountantKind;

/// Why an accounting request was rejected or could not be computed.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum AccountantError {
    /// The noise multiplier σ must be finite and strictly positive.
    #[error("noise multiplier must be a finite number > 0, got {0}")]
    InvalidNoiseMultiplier(f64),
    /// The Poisson sampling rate q must lie in (0, 1].
    #[error("sample rate must be in (0, 1], got {0}")]
    InvalidSampleRate(f64),
    /// δ must lie in the open interval (0, 1).
    #[error("delta must be in (0, 1), got {0}")]
    InvalidDelta(f64),
    /// A history entry (or a calibration request) must cover at least one step.
    #[error("number of steps must be at least 1, got 0")]
    ZeroSteps,
    /// The target ε of a calibration must be finite and strictly positive.
    #[error("target epsilon must be a finite number > 0, got {0}")]
    InvalidTargetEpsilon(f64),
    /// No noise multiplier up to the search limit reaches the target ε.
    #[error(
        "target epsilon {target} is unreachable: even noise multiplier {max_noise_multiplier} \
         gives epsilon {achieved}"
    )]
    UnreachableTarget {
        /// The requested ε.
        target: f64,
        /// The largest noise multiplier tried.
        max_noise_multiplier: f64,
        /// The ε that noise multiplier achieves.
        achieved: f64,
    },
    /// Dataset size, batch size and epochs must describe at least one step with
    /// `1 <= batch_size <= dataset_size`.
    #[error("invalid schedule: {0}")]
    InvalidSchedule(String),
    /// An accountant option (RDP orders, PRV `eps_error` / `delta_error`, calibration
    /// tolerance) is out of range.
    #[error("invalid accountant option: {0}")]
    InvalidOption(String),
    /// An accountant that gives an approximation of ε, not an upper bound (GDP), was asked for
    /// something that needs a guarantee: calibrating σ for a target ε, or enforcing a budget.
    /// An approximation that under-reports would make the run spend more than the target.
    #[error(
        "the {accountant} accountant approximates epsilon and can under-report it, so it cannot \
         be used for {purpose}; use the rdp or prv accountant (both give upper bounds)"
    )]
    NotAnUpperBound {
        /// The accountant that was refused.
        accountant: AccountantKind,
        /// What it was refused for (e.g. "noise calibration", "budget enforcement").
        purpose: &'static str,
    },
    /// The computation was well-posed but floating point cannot deliver a trustworthy answer
    /// (e.g. a PRV domain that would not fit in memory, or δ so small that rounding dominates).
    #[error("numerical failure: {0}")]
    Numerical(String),
}

/// Shorthand for results of this crate.
pub type Result<T, E = AccountantError> = std::result::Result<T, E>;
