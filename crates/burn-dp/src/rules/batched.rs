//! The generic `[B, ...]` algebra: a per-sample gradient held instantiated ([`BatchedTerm`]), and
//! the rule for parameters broadcast over the batch ([`SumOverBatch`]): `LayerNorm`, `GroupNorm`
//! and `RmsNorm` gamma / beta (burn decomposes these layers into elementwise ops) and raw `Param`s
//! such as a ViT's class token and position embeddings.
//!
//! Autodiff reduces a broadcast gradient to the parameter's shape with `float_sum_dim`, batch
//! dimension first. Inside the per-sample scope that first sum is not taken: the gradient is kept
//! as a [`BatchedTerm`] `[B, 1, ...]`, and the following reductions, reshapes and elementwise
//! scalings by batch-independent tensors act on the trailing dimensions ([`map_batched`], used by
//! `backend/intercept.rs`).

use core::any::Any;
use std::sync::Arc;

use burn::tensor::Tensor;
use burn_backend::tensor::{BoolTensor, FloatTensor};
use burn_backend::{Backend, Shape, TensorMetadata};

use super::term::{NormCost, OpCall, PerSampleRule, PerSampleTerm, TermRef};
use super::{batched_shape, flat, zero_rows};
use crate::backend::Deferred;

/// Per-sample gradients already instantiated.
///
/// # Shapes
/// `[B, ...]`, the parameter's elements per sample in its layout.
#[derive(Debug, Clone)]
pub struct BatchedTerm<B: Backend>(pub FloatTensor<B>);

impl<B: Backend> BatchedTerm<B> {
    /// The term of per-sample gradients `per_sample` `[B, ...]`, shared.
    pub fn new_ref(per_sample: FloatTensor<B>) -> TermRef<B> {
        Arc::new(BatchedTerm(per_sample))
    }
}

impl<B: Backend> PerSampleTerm<B> for BatchedTerm<B> {
    fn samples(&self) -> usize {
        self.0.shape()[0]
    }

    fn norm_cost(&self) -> NormCost {
        NormCost::instantiate_only(self.0.shape().num_elements())
    }

    fn instantiate(&self) -> FloatTensor<B> {
        self.0.clone()
    }

    fn weighted_sum(&self, c: &Tensor<B, 1>) -> FloatTensor<B> {
        weighted_sum::<B>(self.0.clone(), c.clone())
    }

    fn zero_samples(&self, drop: &BoolTensor<B>) -> TermRef<B> {
        Self::new_ref(zero_rows::<B>(self.0.clone(), drop))
    }

    fn map_linear(&self, f: &dyn Fn(FloatTensor<B>) -> FloatTensor<B>) -> Option<TermRef<B>> {
        Some(Self::new_ref(f(self.0.clone())))
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

/// The rule for `float_sum_dim(grad, 0)` of a dense gradient inside the backward scope: the
/// gradient of a parameter broadcast over the batch, kept as its per-sample form.
#[derive(Debug, Clone, Copy)]
pub struct SumOverBatch;

impl<B: Backend> PerSampleRule<B> for SumOverBatch {
    fn op(&self) -> &'static str {
        "float_sum_dim"
    }

    fn matches(&self, call: &OpCall<'_, B>) -> bool {
        call.value::<usize>("dim") == Some(&0) && call.float("tensor").is_some()
    }

    fn cache(&self, call: &OpCall<'_, B>) -> Option<Deferred<B>> {
        Some(sum_over_batch::<B>(
            call.float("tensor")?.clone(),
            call.taint(&["tensor"]),
        ))
    }
}

/// The deferred gradient for `sum_dim(grad, 0)` of a `[B, ...]` gradient.
///
/// # Shapes
/// `grad`: `[B, ...]`; the deferred gradient reports `[1, ...]` (what the sum would have).
pub(crate) fn sum_over_batch<B: Backend>(
    grad: FloatTensor<B>,
    taint: crate::backend::Tag,
) -> Deferred<B> {
    let shape = grad.shape();
    let b = shape[0];
    let mut reported = shape.clone();
    reported.as_mut_slice()[0] = 1;
    let per_sample = B::float_reshape(grad.clone(), batched_shape(b, &reported));
    Deferred::from_term(reported, &grad, BatchedTerm::new_ref(per_sample), taint)
}

/// Squared norms `[B]` of per-sample gradients `[B, ...]`.
pub fn sq_norm<B: Backend>(per_sample: FloatTensor<B>) -> Tensor<B, 1> {
    let t = flat::<B>(per_sample);
    let b = t.dims()[0];
    t.square().sum_dim(1).reshape([b])
}

/// `Σ_i c_i G_i` of per-sample gradients `[B, ...]`, flattened to `[1, n]`.
pub fn weighted_sum<B: Backend>(per_sample: FloatTensor<B>, c: Tensor<B, 1>) -> FloatTensor<B> {
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
        terms: vec![BatchedTerm::new_ref(per_sample)],
        ..d
    }
}
