//! # burn-dp
//!
//! Differentially private training for [burn](https://burn.dev): per-sample gradients from one
//! backward pass (book-keeping with ghost norms or instantiation per layer), automatic and Abadi
//! clipping with flat, per-layer and group styles, DP optimizers with Gaussian noise from ChaCha20,
//! Poisson sampling, accounting (RDP, PRV, GDP) and checkpoints.
//!
//! Swap `Autodiff<B>` for [`DpAutodiff<B>`], mark float inputs with [`batch`], compute one loss per
//! sample, and let a [`DpOptimizer`] run the backward pass and the step.
//!
//! See `ARCHITECTURE.md` at the repository root for how it works.

#![warn(missing_docs)]

pub mod audit;
pub mod backend;
pub mod clip;
pub mod engine;
pub mod error;
pub mod freeze;
pub mod memory;
pub mod noise;
pub mod optim;
pub mod privacy;
pub mod profile;
pub mod rules;
pub mod sampling;
pub mod setup;
pub mod trainer;

pub use backend::PerSample;
/// Privacy accounting (the `burn-dp-accountant` crate).
pub use burn_dp_accountant as accounting;
pub use burn_dp_accountant::{AccountantKind, Epsilon, Schedule};
pub use clip::{Clipping, ClippingFn, ClippingStyle, ParamGroup, ParamSelector};
pub use engine::{
    batch, batch_inner, clipped_backward, lower, mark_batch, per_sample_gradients,
    wrap_independent, ClippedGradients, DpAutodiff, PerSampleConfig,
};
pub use error::DpError;
pub use freeze::{freeze, FreezePolicy, FreezeReport};
pub use memory::{DeviceMemory, DeviceMemoryUsage};
pub use noise::{NoiseBackend, NoiseSource};
pub use optim::{
    BatchStats, BatchStatsValues, DpCheckpointState, DpOptimizer, NoiseShare, StepStats,
};
pub use privacy::{BudgetPolicy, PrivacyState};
pub use rules::NormMode;
pub use sampling::{LogicalBatch, PhysicalBatch, PoissonSampler};
pub use setup::{shard_range, PrivateSetup};
pub use trainer::{PrivateTrainer, StepReport};

/// burn's fast CPU backend (SIMD, gemm, multi-threaded), the default CPU backend of the
/// examples and the bench: train with `DpAutodiff<Flex>`.
pub use burn_flex::Flex;

/// The CUDA backend (feature `cuda`): train with `DpAutodiff<Cuda>`.
#[cfg(feature = "cuda")]
pub use burn_cuda::Cuda;

#[cfg(test)]
mod adversarial_tests;
#[cfg(all(test, feature = "cubecl-noise"))]
mod cube_tests;
// The unit tests of `tests.rs` and `noise_tests.rs` run once on each CPU backend: one body, the
// backend the wrapper's `Inner`.
#[cfg(test)]
#[path = "tests_on/flex.rs"]
mod tests_on_flex;
#[cfg(test)]
#[path = "tests_on/ndarray.rs"]
mod tests_on_ndarray;
