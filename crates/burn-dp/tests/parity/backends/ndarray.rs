//! The parity suite on NdArray.

/// The backend under the engine and the oracle.
pub type Inner = burn::backend::NdArray<f32>;
/// The tied model's forward runs on an empty batch (see `oracle.rs`).
pub const RUNS_EMPTY_BATCH: bool = true;

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
