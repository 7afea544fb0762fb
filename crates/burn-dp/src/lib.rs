//! # burn-dp
//!
//! Differentially private training for [burn](https://burn.dev): per-sample gradients from one
//! backward pass (book-keeping with ghost norms or instantiation per layer), automatic and Abadi
//! clipping, flat, per-layer and group styles.
//!
//! Swap `Autodiff<B>` for [`DpAutodiff<B>`], mark the float inputs with [`batch`], compute one
//! loss per sample, and call [`clipped_backward`] instead of `loss.backward()`.
//!
//! See `ARCHITECTURE.md` at the repository root for how it works.

pub mod backend;
pub mod clip;
pub mod engine;
pub mod error;
pub mod rules;

pub use backend::PerSample;
pub use clip::{Clipping, ClippingFn, ClippingStyle, ParamGroup, ParamSelector};
pub use engine::{batch, batch_inner, clipped_backward, per_sample_gradients, lift, lower, ClippedGradients, DpAutodiff, PerSampleConfig};
pub use error::DpError;
pub use rules::NormMode;
