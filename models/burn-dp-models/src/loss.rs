//! Per-sample losses, each returning a [B] tensor (the batch loss is their sum): the models'
//! shorthands for burn-dp's per-sample losses (`burn_dp::PerSampleCrossEntropy`,
//! `PerSampleLmLoss`, `PerSampleMse`), which also offer label smoothing, an ignore index and
//! masked token losses, with typed errors for bad shapes.

use burn::prelude::*;
use burn_dp::{PerSampleCrossEntropy, PerSampleLmLoss};

/// Classification cross-entropy per sample: logits [B, C], integer targets [B] -> [B]
/// (`burn_dp::PerSampleCrossEntropy` without smoothing or ignore index).
///
/// # Shapes
/// `logits`: `[B, C]`; `targets`: `[B]`; returns `[B]`.
///
/// # Panics
/// If `logits` and `targets` have different batch sizes (the models' heads cannot produce that;
/// call `PerSampleCrossEntropy::forward` for a typed error).
pub fn cross_entropy_per_sample<B: Backend>(
    logits: Tensor<B, 2>,
    targets: Tensor<B, 1, Int>,
) -> Tensor<B, 1> {
    PerSampleCrossEntropy::default()
        .forward(logits, targets)
        .unwrap_or_else(|e| panic!("{e}"))
}

/// Language-model loss per sample: mean next-token cross-entropy over the T-1 predicted
/// positions (`burn_dp::PerSampleLmLoss` on the shifted logits and ids).
///
/// # Shapes
/// `logits`: `[B, T, V]` from `input_ids`: `[B, T]`; returns `[B]`.
pub fn lm_loss_per_sample<B: Backend>(
    logits: Tensor<B, 3>,
    input_ids: Tensor<B, 2, Int>,
) -> Tensor<B, 1> {
    let [b, t, v] = logits.dims();
    let pred = logits.slice([0..b, 0..t - 1, 0..v]);
    let targets = input_ids.slice([0..b, 1..t]);
    PerSampleLmLoss::default()
        .forward(pred, targets, None)
        .unwrap_or_else(|e| panic!("{e}"))
}
