//! Token-level language-model loss, averaged per sample.

use burn::config::Config;
use burn::tensor::backend::Backend;
use burn::tensor::{Bool, Int, Tensor};

use super::{check_smoothing, smoothed_nll, LossError};

/// Settings of [`PerSampleLmLoss`]: `PerSampleLmLossConfig::new().with_ignore_index(Some(pad))`.
#[derive(Config, Debug)]
pub struct PerSampleLmLossConfig {
    /// Label smoothing α ∈ [0, 1] per token (see `PerSampleCrossEntropyConfig`). `None`: none.
    pub smoothing: Option<f32>,
    /// A target token id that is not counted (padding, PyTorch's -100). `None`: every token
    /// counts unless the mask says otherwise.
    pub ignore_index: Option<i64>,
}

impl PerSampleLmLossConfig {
    /// The loss, after checking the settings.
    pub fn init(&self) -> Result<PerSampleLmLoss, LossError> {
        Ok(PerSampleLmLoss {
            smoothing: check_smoothing("PerSampleLmLoss", self.smoothing)?,
            ignore_index: self.ignore_index,
        })
    }
}

/// Token cross entropy averaged over each sample's own counted tokens:
/// `lossᵢ = Σ_t mᵢₜ nllᵢₜ / max(1, Σ_t mᵢₜ)`, where `mᵢₜ` is 1 for a counted token (the mask is
/// true and the target is not the ignore index). Each sample is divided by **its own** token
/// count, never by the batch's: a batch-wide count mixes samples and is refused by the engine
/// (`DpError::LossUsesUnmarkedBatch`). A sample with no counted token has loss 0.
///
/// The targets are aligned with the logits: for next-token prediction pass the logits of
/// positions `0..T−1` and the ids of positions `1..T`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PerSampleLmLoss {
    smoothing: f32,
    ignore_index: Option<i64>,
}

impl PerSampleLmLoss {
    /// Per-sample losses. `mask` (optional) is true for the tokens that count (a bool host
    /// tensor needs no `mark_batch`).
    ///
    /// # Shapes
    /// `logits`: `[B, T, V]`; `targets`: `[B, T]`, values in `0..V` (or the ignore index);
    /// `mask`: `[B, T]`; returns `[B]`.
    pub fn forward<B: Backend>(
        &self,
        logits: Tensor<B, 3>,
        targets: Tensor<B, 2, Int>,
        mask: Option<Tensor<B, 2, Bool>>,
    ) -> Result<Tensor<B, 1>, LossError> {
        let [b, t, v] = logits.dims();
        let shape_error = |what: String| LossError::Shape {
            loss: "PerSampleLmLoss",
            what,
            hint: "pass targets and mask [B, T] aligned with the logits [B, T, V] (for next-token \
                   prediction: logits of positions 0..T-1, ids of positions 1..T)",
        };
        if targets.dims() != [b, t] {
            return Err(shape_error(format!(
                "logits [B, T, V] = [{b}, {t}, {v}] but targets {:?}",
                targets.dims()
            )));
        }
        if let Some(m) = &mask {
            if m.dims() != [b, t] {
                return Err(shape_error(format!(
                    "logits [B, T, V] = [{b}, {t}, {v}] but mask {:?}",
                    m.dims()
                )));
            }
        }
        let ignored = self.ignore_index.map(|i| targets.clone().equal_elem(i));
        let counted = match (mask, &ignored) {
            (Some(m), Some(ign)) => Some(m.bool_and(ign.clone().bool_not())),
            (Some(m), None) => Some(m),
            (None, Some(ign)) => Some(ign.clone().bool_not()),
            (None, None) => None,
        };
        // An ignored target may be out of 0..V (PyTorch's -100): gather token 0 instead.
        let targets = match ignored {
            Some(ign) => targets.mask_fill(ign, 0),
            None => targets,
        };
        let nll = smoothed_nll(logits, targets.reshape([b, t, 1]), self.smoothing).reshape([b, t]);
        Ok(match counted {
            None => nll.mean_dim(1).reshape([b]),
            Some(counted) => {
                let count = counted.clone().int().sum_dim(1).float().clamp_min(1.0);
                let total = nll.mask_fill(counted.bool_not(), 0.0).sum_dim(1);
                (total / count).reshape([b])
            }
        })
    }
}
