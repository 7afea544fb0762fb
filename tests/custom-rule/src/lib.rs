//! A per-sample rule written outside burn-dp: `ConvTranspose1d` (weight and bias), which burn-dp
//! has no built-in rule for. burn's autodiff builds its parameter gradients with the backend ops
//! `conv_transpose1d_weight_backward` and `conv_transpose1d_bias_backward`; both are hooked ops
//! ([`burn_dp::rules::hooked_ops`]), so a crate can register rules for them with
//! [`burn_dp::rules::register_rule`] without touching burn-dp. The book's chapter "Writing a rule
//! for your layer" includes this file.

// ANCHOR: imports
use std::any::Any;
use std::sync::Arc;

use burn::tensor::Tensor;
use burn_backend::ops::ConvTransposeOptions;
use burn_backend::tensor::{BoolTensor, FloatTensor};
use burn_backend::{Backend, Shape, TensorMetadata};
use burn_dp::backend::Deferred;
use burn_dp::rules::batched::BatchedTerm;
use burn_dp::rules::conv::bias_per_sample;
use burn_dp::rules::{
    float_primitive, float_tensor, register_rule, zero_rows, NormCost, OpCall, PerSampleRule,
    PerSampleTerm, RuleId, TermRef,
};
use burn_dp::DpError;
// ANCHOR_END: imports

// ANCHOR: term
/// What the weight rule caches: the layer input, the weight (for its shape), the upstream
/// gradient and the options.
///
/// # Shapes
/// `x`: `[B, C_in, L]`; `weight`: `[C_in, C_out / groups, k]`; `grad`: `[B, C_out, L_out]`.
#[derive(Clone, Debug)]
pub struct ConvTranspose1dTerm<B: Backend> {
    x: FloatTensor<B>,
    weight: FloatTensor<B>,
    grad: FloatTensor<B>,
    options: ConvTransposeOptions<1>,
}

impl<B: Backend> PerSampleTerm<B> for ConvTranspose1dTerm<B> {
    fn samples(&self) -> usize {
        self.x.shape()[0]
    }

    /// No ghost norm: the per-sample gradients are instantiated.
    fn norm_cost(&self) -> NormCost {
        NormCost::instantiate_only(self.weight.shape().num_elements())
    }

    /// `[B, C_in, C_out / groups, k]`: one weight backward with the samples as groups. Sample `b`'s
    /// input channels `b·C_in..` pair only with its own output channels `b·C_out..`, so a
    /// transposed convolution with `B·groups` groups over `[1, B·C_in, L]` gives every sample's
    /// weight gradient at once.
    fn instantiate(&self) -> FloatTensor<B> {
        let [b, c_in, l] = self.x.shape().dims();
        let [_, c_out, l_out] = self.grad.shape().dims();
        let [_, cog, k] = self.weight.shape().dims();
        let x = B::float_reshape(self.x.clone(), Shape::new([1, b * c_in, l]));
        let g = B::float_reshape(self.grad.clone(), Shape::new([1, b * c_out, l_out]));
        let shape = Shape::new([b * c_in, cog, k]);
        let weight = B::float_zeros(shape, &B::float_device(&self.x), self.x.dtype().into());
        let mut options = self.options.clone();
        options.groups *= b;
        let per_sample = B::conv_transpose1d_weight_backward(x, weight, g, options);
        B::float_reshape(per_sample, Shape::new([b, c_in, cog, k]))
    }

    /// `Σ_i c_i G_i`: the upstream gradient reweighted per sample, one weight backward.
    fn weighted_sum(&self, c: &Tensor<B, 1>) -> FloatTensor<B> {
        let b = c.dims()[0];
        let g = float_tensor::<B, 3>(self.grad.clone()) * c.clone().reshape([b, 1, 1]);
        B::conv_transpose1d_weight_backward(
            self.x.clone(),
            self.weight.clone(),
            float_primitive(g),
            self.options.clone(),
        )
    }

    fn zero_samples(&self, drop: &BoolTensor<B>) -> TermRef<B> {
        Arc::new(ConvTranspose1dTerm {
            x: zero_rows::<B>(self.x.clone(), drop),
            grad: zero_rows::<B>(self.grad.clone(), drop),
            ..self.clone()
        })
    }

    fn map_linear(&self, f: &dyn Fn(FloatTensor<B>) -> FloatTensor<B>) -> Option<TermRef<B>> {
        Some(Arc::new(ConvTranspose1dTerm {
            grad: f(self.grad.clone()),
            ..self.clone()
        }))
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}
// ANCHOR_END: term

// ANCHOR: rule
/// The rule for `conv_transpose1d_weight_backward(x, weight, output_grad, options)`.
#[derive(Debug, Clone, Copy)]
pub struct ConvTranspose1dWeight;

impl<B: Backend> PerSampleRule<B> for ConvTranspose1dWeight {
    fn op(&self) -> &'static str {
        "conv_transpose1d_weight_backward"
    }

    /// Only what the term computes exactly: rank-3 input and upstream gradient with the same
    /// number of samples. Anything else is left to fail closed.
    fn matches(&self, call: &OpCall<'_, B>) -> bool {
        match (call.float("x"), call.float("output_grad")) {
            (Some(x), Some(g)) => {
                let (xs, gs) = (x.shape(), g.shape());
                xs.num_dims() == 3 && gs.num_dims() == 3 && xs[0] == gs[0]
            }
            _ => false,
        }
    }

    fn cache(&self, call: &OpCall<'_, B>) -> Option<Deferred<B>> {
        let grad = call.float("output_grad")?;
        let term: ConvTranspose1dTerm<B> = ConvTranspose1dTerm {
            x: call.float("x")?.clone(),
            weight: call.float("weight")?.clone(),
            grad: grad.clone(),
            options: call.value::<ConvTransposeOptions<1>>("options")?.clone(),
        };
        let shape = term.weight.shape();
        // The taint records a batch tag that says samples were mixed before this op.
        let taint = call.taint(&["x", "weight", "output_grad"]);
        Some(Deferred::from_term(shape, grad, Arc::new(term), taint))
    }
}

/// The rule for `conv_transpose1d_bias_backward(x, bias, output_grad)`: `Σ_l g_il` per sample,
/// instantiated.
#[derive(Debug, Clone, Copy)]
pub struct ConvTranspose1dBias;

impl<B: Backend> PerSampleRule<B> for ConvTranspose1dBias {
    fn op(&self) -> &'static str {
        "conv_transpose1d_bias_backward"
    }

    fn cache(&self, call: &OpCall<'_, B>) -> Option<Deferred<B>> {
        let grad = call.float("output_grad")?;
        let per_sample = BatchedTerm::new_ref(bias_per_sample::<B>(grad.clone()));
        let shape = Shape::new([grad.shape()[1]]);
        let taint = call.taint(&["bias", "output_grad"]);
        Some(Deferred::from_term(shape, grad, per_sample, taint))
    }
}
// ANCHOR_END: rule

// ANCHOR: register
/// Registers both rules for the inner backend `B` (the `B` of `DpAutodiff<B>`); returns their ids
/// for [`burn_dp::rules::unregister_rule`].
pub fn register<B: Backend>() -> Result<[RuleId; 2], DpError> {
    Ok([
        register_rule::<B>(Arc::new(ConvTranspose1dWeight))?,
        register_rule::<B>(Arc::new(ConvTranspose1dBias))?,
    ])
}
// ANCHOR_END: register
