//! The parity suite on Flex.

/// The backend under the engine and the oracle.
pub type Inner = burn_dp::Flex;
/// burn-flex 0.21 cannot run the empty batch: `linear` of a `[0, T, d]` input (its batched
/// gemm) dies with SIGSEGV, on plain `Autodiff<Flex>` as under burn-dp. The empty-batch cases
/// run on NdArray only.
pub const RUNS_EMPTY_BATCH: bool = false;

#[path = "../clipping_styles.rs"]
mod clipping_styles;
#[path = "../conv3d.rs"]
mod conv3d;
#[path = "../fail_closed.rs"]
mod fail_closed;
#[path = "../frozen.rs"]
mod frozen;
#[path = "../layers.rs"]
mod layers;
#[path = "../modules.rs"]
mod modules;
#[path = "../oracle.rs"]
mod oracle;
#[path = "../support.rs"]
mod support;
