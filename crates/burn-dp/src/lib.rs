//! # burn-dp
//!
//! Differentially private training for [burn](https://burn.dev): per-sample gradients from one
//! backward pass (book-keeping with ghost norms or instantiation per layer), automatic and Abadi
//! clipping with flat, per-layer and group styles, DP optimizers with Gaussian noise from ChaCha20,
//! Poisson sampling, accounting (RDP, PRV, GDP) and checkpoints.
//!
//! Swap `Autodiff<B>` for [`DpAutodiff<B>`], mark float inputs with [`mark_batch`], compute one
//! loss per sample ([`PerSampleCrossEntropy`], [`PerSampleLmLoss`], [`PerSampleMse`] or your
//! own), and let a [`PrivateTrainer`] run the loop: [`PrivateTrainer::step`] draws a Poisson batch, asks for its per-sample losses, clips, adds
//! noise, steps and accounts. [`PrivateSetup`] holds the settings (clipping, [`PrivacyState`] with
//! σ calibrated to a target ε, data set size, physical batch size, [`NoiseSource`]);
//! [`into_plain_model`] moves the trained model to the plain backend `B`. The lower-level pieces
//! ([`PoissonSampler`], [`DpOptimizer`], [`clipped_backward`]) stay public for other loops.
//!
//! See `ARCHITECTURE.md` at the repository root for how it works.

#![warn(missing_docs)]

pub mod backend;
mod clip;
mod engine;
mod error;
mod freeze;
mod loss;
mod memory;
mod noise;
mod optim;
mod paths;
mod plain;
mod privacy;
pub mod profile;
pub mod rules;
mod sampling;
mod setup;
mod state;
pub mod testing;
mod trainer;

pub use backend::decorator::PerSample;
pub use backend::pass::{read_without_privacy, BatchId};
/// Privacy accounting (the `burn-dp-accountant` crate).
pub use burn_dp_accountant as accounting;
pub use burn_dp_accountant::{AccountantKind, Epsilon, Schedule};
pub use clip::{Clipping, ClippingFn, ClippingStyle, ParamGroup, ParamSelector};
pub use engine::{
    batch, clipped_backward, clipped_backward_masked, mark_batch, per_sample_gradients,
    wrap_independent_unchecked, ClippedGradients, DpAutodiff, PerSampleConfig,
};
pub use error::DpError;
pub use freeze::{freeze, FreezePolicy, FreezeReport};
pub use loss::{
    LossError, PerSampleCrossEntropy, PerSampleCrossEntropyConfig, PerSampleLmLoss,
    PerSampleLmLossConfig, PerSampleMse,
};
pub use memory::{DeviceMemory, DeviceMemoryUsage};
pub use noise::{NoiseBackend, NoiseCheckpoint, NoiseSource, RngState};
pub use optim::{
    BatchStats, BatchStatsValues, DpCheckpointState, DpOptimizer, DpStep, FlatAllReduce,
    NoiseShare, PrivacySpent, Reducer, SingleProcess, StepReport, StepStats,
};
pub use paths::{map_params, visit_params, ModulePath, ParamMapper, ParamVisitor};
pub use plain::into_plain_model;
pub use privacy::{BudgetPolicy, PrivacyState};
pub use rules::NormMode;
pub use sampling::{LogicalBatch, OpenBatch, PhysicalBatch, PoissonSampler, SamplerState};
pub use setup::{shard_range, PrivateSetup};
pub use state::{declare_public, ModuleSnapshot};
pub use trainer::PrivateTrainer;

/// burn's fast CPU backend (SIMD, gemm, multi-threaded), the default CPU backend of the
/// examples and the bench: train with `DpAutodiff<Flex>`.
pub use burn_flex::Flex;

/// The CUDA backend (feature `cuda`): train with `DpAutodiff<Cuda>`.
#[cfg(feature = "cuda")]
pub use burn_cuda::Cuda;

#[cfg(all(test, feature = "cubecl-noise"))]
mod cube_tests;
// The unit tests of `tests.rs`, `noise_tests.rs` and `adversarial_tests/` run once on each CPU backend: one body, the
// backend the wrapper's `Inner`.
#[cfg(test)]
#[allow(clippy::duplicate_mod)] // the same test files, once per backend
#[path = "tests_on/flex.rs"]
mod tests_on_flex;
#[cfg(test)]
#[allow(clippy::duplicate_mod)]
#[path = "tests_on/ndarray.rs"]
mod tests_on_ndarray;
#[cfg(test)]
mod trainer_tests;
