//! Oracle-parity tests of the per-sample engine: one test binary with a module per topic (every
//! extra test binary costs a link of burn on two cores), the whole suite once per CPU backend
//! (`backends/flex.rs`, `backends/ndarray.rs`: one body, the backend a type alias `Inner`; test
//! names start with the backend, e.g. `flex::layers::`).
//!
//! - [`any_model`]: the book's "Making any burn model private" program, trained and checked.
//! - [`layers`]: every rule against PyTorch's per-sample gradients in `layers.safetensors`.
//! - [`oracle`]: property tests (`proptest`) against a batch-of-one oracle computed with plain
//!   `Autodiff<Inner>`, on random shapes, seeds, batch sizes, bias on and off, in every norm
//!   mode; tied parameters and the empty batch.
//! - [`conv3d`]: Conv3d against PyTorch (`layers-conv3d.safetensors`) and a batch-of-one oracle.
//! - [`frozen`]: frozen parameters get no rule call and no gradient.
//! - [`clipping_styles`]: per-layer and group clipping, and their configuration errors.
//! - [`modules`]: burn-nn's modules (RNNs, attention, transformer blocks, pooling, encodings,
//!   norms, dropout) against the oracle, or refused: the book's "What is supported" table.
//! - [`fail_closed`]: the typed errors for models whose gradients mix samples.
//! - [`readme`]: the crate README's example, compiled and run (its Rust block is verbatim there).
//! - [`public_then_private`]: public pre-training on `DpAutodiff`, then DP-BiTFiT and DP full.
//! - [`support`]: fixture reading, the engine runner, the oracle and the comparisons.
//!
//! Fixtures are read from `$BURN_DP_FIXTURES` when set, else from the crate's `tests/fixtures`;
//! a missing fixture is a failure. The property tests draw from a fixed proptest seed (see
//! [`support::proptest_config`]); set `PROPTEST_RNG_SEED` to explore others.
//!
//! To add a topic, write `tests/parity/<topic>.rs` (`use super::support::*;`, its `#[test]`s),
//! add `#[path = "../<topic>.rs"] mod <topic>;` to both files of `backends/` and a line above.
//! [`any_model`], [`readme`] and [`public_then_private`] are whole programs on the default CPU
//! backend (Flex), once.
#![allow(clippy::type_complexity)] // (name, values) tables of the fixtures

#[allow(clippy::duplicate_mod)] // the same topic files, once per backend
#[path = "backends/flex.rs"]
mod flex;
#[allow(clippy::duplicate_mod)]
#[path = "backends/ndarray.rs"]
mod ndarray;

mod any_model;
mod public_then_private;
mod readme;
