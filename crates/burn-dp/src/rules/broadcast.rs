//! Rule for parameters broadcast over the batch: `LayerNorm`, `GroupNorm` and `RmsNorm` gamma /
//! beta (burn decomposes these layers into elementwise ops) and raw `Param`s such as a ViT's class
//! token and position embeddings.
//!
//! Autodiff reduces a broadcast gradient to the parameter's shape with `float_sum_dim`, batch
//! dimension first. Inside the per-sample scope that first sum is not taken: the gradient is kept
//! as `Batched` `[B, 1, ...]`, and the following reductions, reshapes and elementwise scalings by
//! batch-independent tensors act on the trailing dimensions (see `intercept.rs`).

use burn::tensor::Tensor;
use burn_backend::tensor::FloatTensor;
use burn_backend::{Backend, Shape, TensorMetadata};

use super::{batched_shape, flat};
use crate::backend::{Deferred, Tag, Term};

/// The deferred gradient for `sum_dim(grad, 0)` of a `[B, ...]` gradient.
pub(crate) fn sum_over_batch<B: Backend>(grad: FloatTensor<B>, taint: Tag) -> Deferred<B> {
    let shape = grad.shape();
    let b = shape[0];
    let mut reported = shape.clone();
    reported.as_mut_slice()[0] = 1;
    let (dtype, device) = (grad.dtype(), B::float_device(&grad));
    let per_sample = B::float_reshape(grad, batched_shape(b, &reported));
    Deferred {
        shape: reported,
        dtype,
        device,
        terms: vec![Term::Batched(per_sample)],
        taint,
    }
}

/// Squared norms `[B]` of per-sample gradients `[B, ...]`.
pub(crate) fn sq_norm<B: Backend>(per_sample: FloatTensor<B>) -> Tensor<B, 1> {
    let t = flat::<B>(per_sample);
    let b = t.dims()[0];
    t.square().sum_dim(1).reshape([b])
}

/// `Σ_i c_i G_i` of per-sample gradients `[B, ...]`, flattened to `[1, n]`.
pub(crate) fn weighted_sum<B: Backend>(
    per_sample: FloatTensor<B>,
    c: Tensor<B, 1>,
) -> FloatTensor<B> {
    let t = flat::<B>(per_sample);
    let b = t.dims()[0];
    super::prim((t * c.reshape([b, 1])).sum_dim(0))
}

/// Applies `f` to a deferred gradient's per-sample form `[B, ...shape]` and keeps the result
/// deferred, with the new batch-summed shape.
pub(crate) fn map_batched<B: Backend>(
    d: Deferred<B>,
    f: impl FnOnce(FloatTensor<B>) -> FloatTensor<B>,
) -> Deferred<B> {
    let per_sample = f(super::instantiate(&d));
    let dims = per_sample.shape();
    let shape = Shape::from(dims.as_slice()[1..].to_vec());
    Deferred {
        shape,
        terms: vec![Term::Batched(per_sample)],
        ..d
    }
}
