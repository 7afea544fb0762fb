//! Transformer pieces shared by GPT-2 and ViT (their modules keep their own HF field names).

use burn::nn::{Dropout, Linear};
use burn::prelude::*;
use burn::tensor::activation::softmax;

use crate::act::Activation;

/// Multi-head scaled dot-product attention over projected `q`, `k`, `v` `[B, T, d]`; heads are split
/// and merged on the trailing dims only (the batch stays dimension 0).
pub(crate) fn attention<B: Backend>(
    q: Tensor<B, 3>,
    k: Tensor<B, 3>,
    v: Tensor<B, 3>,
    heads: usize,
    causal: bool,
    dropout: &Dropout,
) -> Tensor<B, 3> {
    let [b, t, d] = q.dims();
    let dh = d / heads;
    let split = |y: Tensor<B, 3>| y.reshape([b, t, heads, dh]).swap_dims(1, 2);
    let (q, k, v) = (split(q), split(k), split(v));
    let mut scores = q.matmul(k.swap_dims(2, 3)).div_scalar((dh as f64).sqrt());
    if causal {
        let mask = Tensor::<B, 2, Bool>::tril_mask([t, t], 0, &scores.device()).unsqueeze::<4>();
        scores = scores.mask_fill(mask, f32::MIN);
    }
    let probs = dropout.forward(softmax(scores, 3));
    probs.matmul(v).swap_dims(1, 2).reshape([b, t, d])
}

/// `x + dropout(down(act(up(norm_x))))`: the MLP half of a pre-norm block.
pub(crate) fn mlp_residual<B: Backend>(
    x: Tensor<B, 3>,
    normed: Tensor<B, 3>,
    up: &Linear<B>,
    act: &Activation,
    down: &Linear<B>,
    dropout: &Dropout,
) -> Tensor<B, 3> {
    x + dropout.forward(down.forward(act.forward(up.forward(normed))))
}
