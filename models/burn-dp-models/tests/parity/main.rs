//! Parity of the burn ports with the PyTorch references of the fixture models: one test binary
//! with a module per topic.
//!
//! - [`logits`]: logits and per-sample losses for weights loaded from safetensors and from every
//!   ONNX export; parameter names.
//! - [`per_sample`]: per-sample gradient norms and clipped sums with `burn-dp`.
//! - [`llama`]: the Llama-family port (GQA, tied head, q/k/v biases, T equal to the batch size)
//!   and its LoRA adapters: logits, per-sample gradients, adapters against a batch-of-one loop.
//! - [`relu_kinks`]: ReLU inputs within rounding of zero, where the ResNet per-sample tests
//!   follow the reference's side.
//!
//! Fixtures are read from `$BURN_DP_FIXTURES` when set, else from the crate's `tests/fixtures`;
//! every test passes on any fixture set with the same file names. A missing fixture is a
//! failure.

mod llama;
mod logits;
mod per_sample;
mod relu_kinks;
mod support;
