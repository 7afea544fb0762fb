//! Rule for `burn::nn::Linear` (weight and bias), inputs `[B, d]` or `[B, ..., d]`.
//!
//! Weight: autodiff calls `linear_weight_backward(x, g)`; the rule caches `Outer(x, g)` with
//! `x` as `[B, T, d_in]` and `g` as `[B, T, d_out]` (`G_i = x_iᵀ g_i`, shape `[d_in, d_out]`).
//! Bias: `linear_bias_backward(g)`; the per-sample gradient is `Σ_t g_it`, instantiated (`Batched`).

use burn_backend::tensor::FloatTensor;
use burn_backend::{Backend, Shape, TensorMetadata};

use super::outer::as_btn;
use crate::backend::{Deferred, Factor, Tag, Term};

/// The deferred weight gradient of `linear(x, W)`.
pub(crate) fn weight<B: Backend>(x: FloatTensor<B>, g: FloatTensor<B>, taint: Tag) -> Deferred<B> {
    let d_in = x.shape()[x.shape().num_dims() - 1];
    let d_out = g.shape()[g.shape().num_dims() - 1];
    let (dtype, device) = (g.dtype(), B::float_device(&g));
    Deferred {
        shape: Shape::new([d_in, d_out]),
        dtype,
        device,
        terms: vec![Term::Outer {
            left: Factor::Dense(as_btn::<B>(x)),
            right: Factor::Dense(as_btn::<B>(g)),
        }],
        taint,
    }
}

/// The deferred bias gradient of `linear(x, W, b)`.
pub(crate) fn bias<B: Backend>(g: FloatTensor<B>, taint: Tag) -> Deferred<B> {
    let (dtype, device) = (g.dtype(), B::float_device(&g));
    let g = as_btn::<B>(g);
    let [b, _, d_out] = g.shape().dims();
    let per_sample = B::float_reshape(B::float_sum_dim(g, 1), Shape::new([b, d_out]));
    Deferred {
        shape: Shape::new([d_out]),
        dtype,
        device,
        terms: vec![Term::Batched(per_sample)],
        taint,
    }
}
