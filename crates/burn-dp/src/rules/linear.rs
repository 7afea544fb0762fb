//! Rule for `burn::nn::Linear` (weight and bias), inputs `[B, d]` or `[B, ..., d]`.
//!
//! Weight: autodiff calls `linear_weight_backward(x, output_grad)`; the rule caches
//! `OuterTerm(x, g)` with `x` as `[B, T, d_in]` and `g` as `[B, T, d_out]`
//! (`G_i = x_iᵀ g_i`, shape `[d_in, d_out]`).
//! Bias: `linear_bias_backward(output_grad)`; the per-sample gradient `Σ_t g_it` is instantiated
//! (`BatchedTerm`).

use burn_backend::{Backend, Shape, TensorMetadata};

use super::batched::BatchedTerm;
use super::outer::{as_btn, Factor, OuterTerm};
use super::term::{OpCall, PerSampleRule};
use crate::backend::Deferred;

/// The rule for `linear_weight_backward(x, output_grad)`.
#[derive(Debug, Clone, Copy)]
pub struct LinearWeight;

impl<B: Backend> PerSampleRule<B> for LinearWeight {
    fn op(&self) -> &'static str {
        "linear_weight_backward"
    }

    fn cache(&self, call: &OpCall<'_, B>) -> Option<Deferred<B>> {
        let (x, g) = (call.float("x")?.clone(), call.float("output_grad")?.clone());
        let d_in = x.shape()[x.shape().num_dims() - 1];
        let d_out = g.shape()[g.shape().num_dims() - 1];
        let term = OuterTerm::new_ref(
            Factor::Dense(as_btn::<B>(x)),
            Factor::Dense(as_btn::<B>(g.clone())),
        );
        Some(Deferred::from_term(
            Shape::new([d_in, d_out]),
            &g,
            term,
            call.taint(&["x", "output_grad"]),
        ))
    }
}

/// The rule for `linear_bias_backward(output_grad)`.
#[derive(Debug, Clone, Copy)]
pub struct LinearBias;

impl<B: Backend> PerSampleRule<B> for LinearBias {
    fn op(&self) -> &'static str {
        "linear_bias_backward"
    }

    fn cache(&self, call: &OpCall<'_, B>) -> Option<Deferred<B>> {
        let g = call.float("output_grad")?;
        let g3 = as_btn::<B>(g.clone());
        let [b, _, d_out] = g3.shape().dims();
        let per_sample = B::float_reshape(B::float_sum_dim(g3, 1), Shape::new([b, d_out]));
        Some(Deferred::from_term(
            Shape::new([d_out]),
            g,
            BatchedTerm::new_ref(per_sample),
            call.taint(&["output_grad"]),
        ))
    }
}
