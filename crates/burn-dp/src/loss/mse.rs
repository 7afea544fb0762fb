//! Per-sample mean squared error.

use burn::tensor::backend::Backend;
use burn::tensor::Tensor;

use super::LossError;

/// Mean squared error per sample: `lossᵢ = mean over sample i's elements of (ŷ − y)²`. Its mean
/// over the batch is burn's `MseLoss` with `Reduction::Mean`.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct PerSampleMse;

impl PerSampleMse {
    /// The loss (it has no settings).
    pub fn new() -> Self {
        PerSampleMse
    }

    /// Per-sample losses.
    ///
    /// # Shapes
    /// `predictions`, `targets`: the same shape `[B, …]`; returns `[B]`.
    pub fn forward<B: Backend, const D: usize>(
        &self,
        predictions: Tensor<B, D>,
        targets: Tensor<B, D>,
    ) -> Result<Tensor<B, 1>, LossError> {
        let (p, t) = (predictions.dims(), targets.dims());
        if p != t {
            return Err(LossError::Shape {
                loss: "PerSampleMse",
                what: format!("predictions {p:?} but targets {t:?}"),
                hint: "pass targets of the predictions' shape, batch first",
            });
        }
        let b = p[0];
        let squared = (predictions - targets).square();
        if D == 1 {
            return Ok(squared.reshape([b]));
        }
        // Keep dimension 0 (the batch) and average over the rest, a sample at a time.
        Ok(squared.reshape([b as i64, -1]).mean_dim(1).reshape([b]))
    }
}
