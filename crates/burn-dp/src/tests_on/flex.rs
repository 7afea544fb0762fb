//! The backend-generic unit tests (`tests.rs`, `noise_tests.rs`) on Flex.

/// The inner backend of the tests: they run on `DpAutodiff<Inner>`.
type Inner = crate::Flex;

#[path = "../noise_tests.rs"]
mod noise_tests;
#[path = "../tests.rs"]
mod tests;
