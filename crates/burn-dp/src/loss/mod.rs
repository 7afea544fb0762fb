//! Per-sample losses: one value per sample `[B]`, the form every DP step needs.
//!
//! burn's losses (`CrossEntropyLoss`, `MseLoss`) average over the batch, which mixes samples and
//! is refused by the engine. These keep the batch at dimension 0 and reduce only over each
//! sample's own elements, so that the sum of the per-sample losses is the batch sum of burn's
//! (`B ×` burn's batch mean when every sample has the same number of elements):
//!
//! | loss | input | targets | per-sample value |
//! |---|---|---|---|
//! | [`PerSampleCrossEntropy`] | logits `[B, C]` | class ids `[B]` | `−log p(yᵢ)`, optional label smoothing and ignore index |
//! | [`PerSampleMse`] | predictions `[B, …]` | `[B, …]` | mean of `(ŷ − y)²` over sample i's elements |
//! | [`PerSampleLmLoss`] | logits `[B, T, V]` | token ids `[B, T]` (+ mask `[B, T]`) | mean token cross entropy over sample i's own counted tokens |
//!
//! Each works on any backend; on `DpAutodiff<B>` the result goes straight to
//! `PrivateTrainer::step`. Bad shapes are a [`LossError`], never a panic.

mod cross_entropy;
mod lm;
mod mse;
#[cfg(test)]
mod tests;

pub use cross_entropy::{PerSampleCrossEntropy, PerSampleCrossEntropyConfig};
pub use lm::{PerSampleLmLoss, PerSampleLmLossConfig};
pub use mse::PerSampleMse;

use burn::tensor::activation::log_softmax;
use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor};
use thiserror::Error;

use crate::error::DpError;

/// Invalid input to a per-sample loss.
#[derive(Debug, Error, Clone, PartialEq)]
pub enum LossError {
    /// Two inputs of a loss disagree on a dimension.
    #[error("{loss}: {what}; {hint}")]
    Shape {
        /// The loss (e.g. `PerSampleCrossEntropy`).
        loss: &'static str,
        /// The shapes that disagree.
        what: String,
        /// What to pass instead.
        hint: &'static str,
    },
    /// Label smoothing outside `[0, 1]`.
    #[error("{loss}: label smoothing must be in [0, 1], got {smoothing}; use e.g. 0.1, or leave it unset for none")]
    Smoothing {
        /// The loss.
        loss: &'static str,
        /// The value given.
        smoothing: f32,
    },
}

impl From<LossError> for DpError {
    fn from(e: LossError) -> Self {
        DpError::InvalidConfig(e.to_string())
    }
}

/// Checks a label-smoothing factor.
fn check_smoothing(loss: &'static str, smoothing: Option<f32>) -> Result<f32, LossError> {
    match smoothing {
        None => Ok(0.0),
        Some(a) if (0.0..=1.0).contains(&a) => Ok(a),
        Some(a) => Err(LossError::Smoothing { loss, smoothing: a }),
    }
}

/// Token-level negative log-likelihood along the last dimension, with label smoothing `alpha`:
/// `−(1 − α) log p(y) − (α / C) Σ_c log p(c)`, the cross entropy against the smoothed target
/// distribution `(1 − α) onehot(y) + α / C` (Szegedy et al. 2016, "Rethinking the Inception
/// Architecture", §7; the form of burn's and PyTorch's `label_smoothing`).
///
/// # Shapes
/// `logits`: `[…, C]`; `targets`: `[…, 1]` with values in `0..C`; returns `[…, 1]`.
fn smoothed_nll<B: Backend, const D: usize>(
    logits: Tensor<B, D>,
    targets: Tensor<B, D, Int>,
    alpha: f32,
) -> Tensor<B, D> {
    let classes = logits.dims()[D - 1];
    let logp = log_softmax(logits, D - 1);
    let picked = logp.clone().gather(D - 1, targets).neg();
    if alpha == 0.0 {
        return picked;
    }
    let uniform = logp.sum_dim(D - 1).neg() / classes as f64;
    picked * (1.0 - alpha as f64) + uniform * alpha as f64
}
