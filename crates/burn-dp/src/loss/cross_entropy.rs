//! Per-sample cross entropy of a classifier.

use burn::config::Config;
use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor};

use super::{check_smoothing, smoothed_nll, LossError};

/// Settings of [`PerSampleCrossEntropy`], a builder like burn's `CrossEntropyLossConfig`:
/// `PerSampleCrossEntropyConfig::new().with_smoothing(Some(0.1)).init()?`.
#[derive(Config, Debug)]
pub struct PerSampleCrossEntropyConfig {
    /// Label smoothing α ∈ [0, 1]: the target is `(1 − α) onehot(y) + α / C`. `None`: none.
    pub smoothing: Option<f32>,
    /// A target value whose sample gets loss 0 and no gradient (PyTorch's `ignore_index`, e.g.
    /// -100, or a padding class). `None`: every target counts.
    pub ignore_index: Option<i64>,
}

impl PerSampleCrossEntropyConfig {
    /// The loss, after checking the settings.
    pub fn init(&self) -> Result<PerSampleCrossEntropy, LossError> {
        Ok(PerSampleCrossEntropy {
            smoothing: check_smoothing("PerSampleCrossEntropy", self.smoothing)?,
            ignore_index: self.ignore_index,
        })
    }
}

/// Cross entropy of logits against class ids, one value per sample: `lossᵢ = −log softmax(xᵢ)[yᵢ]`
/// (with label smoothing, the cross entropy against the smoothed target). Its sum over the batch
/// is `B ×` burn's `CrossEntropyLoss` (which averages).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PerSampleCrossEntropy {
    smoothing: f32,
    ignore_index: Option<i64>,
}

impl PerSampleCrossEntropy {
    /// Per-sample losses. A sample whose target is the ignore index gets 0 (and no gradient).
    ///
    /// # Shapes
    /// `logits`: `[B, C]` (unnormalised); `targets`: `[B]`, values in `0..C` (or the ignore
    /// index); returns `[B]`.
    pub fn forward<B: Backend>(
        &self,
        logits: Tensor<B, 2>,
        targets: Tensor<B, 1, Int>,
    ) -> Result<Tensor<B, 1>, LossError> {
        let [b, c] = logits.dims();
        let [bt] = targets.dims();
        if b != bt {
            return Err(LossError::Shape {
                loss: "PerSampleCrossEntropy",
                what: format!("logits [B, C] = [{b}, {c}] but targets [B] = [{bt}]"),
                hint: "pass one target class id per row of the logits",
            });
        }
        let ignored = self.ignore_index.map(|i| targets.clone().equal_elem(i));
        // An ignored target may be out of 0..C (PyTorch's -100): gather class 0 instead.
        let targets = match &ignored {
            Some(mask) => targets.mask_fill(mask.clone(), 0),
            None => targets,
        };
        let nll = smoothed_nll(logits, targets.reshape([b, 1]), self.smoothing).reshape([b]);
        Ok(match ignored {
            Some(mask) => nll.mask_fill(mask, 0.0),
            None => nll,
        })
    }
}
