//! Per-sample losses, each returning a [B] tensor (the batch loss is their sum).

use burn::prelude::*;
use burn::tensor::activation::log_softmax;

/// Classification cross-entropy per sample: logits [B, C], integer targets [B] -> [B].
pub fn cross_entropy_per_sample<B: Backend>(
    logits: Tensor<B, 2>,
    targets: Tensor<B, 1, Int>,
) -> Tensor<B, 1> {
    let [b, _] = logits.dims();
    let logp = log_softmax(logits, 1);
    logp.gather(1, targets.reshape([b, 1])).reshape([b]).neg()
}

/// Language-model loss per sample: mean next-token cross-entropy over the T-1 predicted
/// positions. `logits` [B, T, V] from `input_ids` [B, T] -> [B].
pub fn lm_loss_per_sample<B: Backend>(
    logits: Tensor<B, 3>,
    input_ids: Tensor<B, 2, Int>,
) -> Tensor<B, 1> {
    let [b, t, v] = logits.dims();
    let pred = logits.slice([0..b, 0..t - 1, 0..v]);
    let targets = input_ids.slice([0..b, 1..t]).reshape([b, t - 1, 1]);
    let logp = log_softmax(pred, 2);
    logp.gather(2, targets)
        .reshape([b, t - 1])
        .mean_dim(1)
        .reshape([b])
        .neg()
}
