//! The backend-generic unit tests (`tests.rs`, `noise_tests.rs`, `adversarial_tests/`) on NdArray.

/// The inner backend of the tests: they run on `DpAutodiff<Inner>`.
type Inner = burn::backend::NdArray<f32>;

#[path = "../adversarial_tests/mod.rs"]
mod adversarial_tests;
#[path = "../noise_tests.rs"]
pub(crate) mod noise_tests;
#[path = "../tests.rs"]
mod tests;
