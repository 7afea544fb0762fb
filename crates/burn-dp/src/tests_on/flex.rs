//! The backend-generic unit tests (`tests.rs`, `noise_tests.rs`, `adversarial_tests/`) on Flex.

/// The inner backend of the tests: they run on `DpAutodiff<Inner>`.
type Inner = crate::Flex;

#[path = "../adversarial_tests/mod.rs"]
mod adversarial_tests;
#[path = "../noise_tests.rs"]
mod noise_tests;
#[path = "../tests.rs"]
mod tests;
