//! Rule for `burn::nn::conv::Conv3d` weights (stride, padding, dilation, groups); its bias uses
//! [`super::conv::ConvBias`].
//!
//! Weight: autodiff calls `conv3d_weight_backward(x, w, g, options)`; the rule caches
//! [`Conv3dTerm`]. Per-sample gradients come from one grouped convolution per weight group, with
//! the samples as groups: the weight gradient `dW[o, c, k] = Σ_q x[c, q·s + k·d − p] g[o, q]`
//! of sample `b` is a convolution of `x_b` (channels as batch) with `g_b` as kernel, stride and
//! dilation swapped (the correlation form of the weight gradient, as burn-backend computes it for
//! one batch). burn 0.21 has no 3-D unfold, so there is no ghost norm: the norm instantiates.
//! The clipped sum reweights `g` by `c_i` and calls the backend's `conv3d_weight_backward` once.

use core::any::Any;
use std::sync::Arc;

use burn::tensor::module::conv3d;
use burn::tensor::Tensor;
use burn_backend::ops::ConvOptions;
use burn_backend::tensor::{BoolTensor, FloatTensor};
use burn_backend::{Backend, TensorMetadata};

use super::term::{NormCost, OpCall, PerSampleRule, PerSampleTerm, TermRef};
use super::{prim, tensor, zero_rows};
use crate::backend::Deferred;

/// The weight gradient of a 3-D convolution.
///
/// # Shapes
/// `x`: `[B, C_in, D, H, W]`; `weight`: `[C_out, C_in / groups, k_d, k_h, k_w]`;
/// `grad`: `[B, C_out, D_out, H_out, W_out]`.
#[derive(Clone, Debug)]
pub struct Conv3dTerm<B: Backend> {
    /// Layer input.
    pub x: FloatTensor<B>,
    /// Weight (for its shape).
    pub weight: FloatTensor<B>,
    /// Upstream gradient.
    pub grad: FloatTensor<B>,
    /// Convolution options.
    pub options: ConvOptions<3>,
}

impl<B: Backend> PerSampleTerm<B> for Conv3dTerm<B> {
    fn samples(&self) -> usize {
        self.x.shape()[0]
    }

    fn norm_cost(&self) -> NormCost {
        NormCost::instantiate_only(self.weight.shape().num_elements())
    }

    /// `[B, C_out, C_in / groups, k_d, k_h, k_w]`.
    fn instantiate(&self) -> FloatTensor<B> {
        prim(per_sample::<B>(
            tensor::<B, 5>(self.x.clone()),
            tensor::<B, 5>(self.grad.clone()),
            self.weight.shape().dims(),
            &self.options,
        ))
    }

    fn weighted_sum(&self, c: &Tensor<B, 1>) -> FloatTensor<B> {
        let b = c.dims()[0];
        let g = tensor::<B, 5>(self.grad.clone()) * c.clone().reshape([b, 1, 1, 1, 1]);
        B::conv3d_weight_backward(
            self.x.clone(),
            self.weight.clone(),
            prim(g),
            self.options.clone(),
        )
    }

    fn zero_samples(&self, drop: &BoolTensor<B>) -> TermRef<B> {
        Arc::new(Conv3dTerm {
            x: zero_rows::<B>(self.x.clone(), drop),
            grad: zero_rows::<B>(self.grad.clone(), drop),
            ..self.clone()
        })
    }

    fn map_linear(&self, f: &dyn Fn(FloatTensor<B>) -> FloatTensor<B>) -> Option<TermRef<B>> {
        Some(Arc::new(Conv3dTerm {
            grad: f(self.grad.clone()),
            ..self.clone()
        }))
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

/// Per-sample weight gradients `[B, C_out, C_in/groups, k_d, k_h, k_w]`: for each weight group,
/// one convolution of the input (channels as batch, samples as channels) with the upstream
/// gradient as a kernel, grouped by sample.
fn per_sample<B: Backend>(
    x: Tensor<B, 5>,
    g: Tensor<B, 5>,
    [c_out, cig, k1, k2, k3]: [usize; 5],
    options: &ConvOptions<3>,
) -> Tensor<B, 6> {
    let [b, _, _, _, _] = x.dims();
    let [_, _, o1, o2, o3] = g.dims();
    let groups = options.groups;
    let cog = c_out / groups;
    let swapped = ConvOptions::new(options.dilation, options.padding, options.stride, b);
    let parts: Vec<Tensor<B, 6>> = (0..groups)
        .map(|j| {
            let xj = x.clone().narrow(1, j * cig, cig).swap_dims(0, 1);
            let gj = g
                .clone()
                .narrow(1, j * cog, cog)
                .reshape([b * cog, 1, o1, o2, o3]);
            conv3d(xj, gj, None, swapped.clone())
                .slice([0..cig, 0..b * cog, 0..k1, 0..k2, 0..k3])
                .reshape([cig, b, cog, k1, k2, k3])
                .permute([1, 2, 0, 3, 4, 5])
        })
        .collect();
    Tensor::cat(parts, 1)
}

/// The rule for `conv3d_weight_backward(x, weight, output_grad, options)`.
#[derive(Debug, Clone, Copy)]
pub struct Conv3dWeight;

impl<B: Backend> PerSampleRule<B> for Conv3dWeight {
    fn op(&self) -> &'static str {
        "conv3d_weight_backward"
    }

    fn matches(&self, call: &OpCall<'_, B>) -> bool {
        let rank5 = |n: &str| call.float(n).is_some_and(|t| t.shape().num_dims() == 5);
        rank5("x") && rank5("weight") && rank5("output_grad")
    }

    fn cache(&self, call: &OpCall<'_, B>) -> Option<Deferred<B>> {
        let grad = call.float("output_grad")?;
        let term: Conv3dTerm<B> = Conv3dTerm {
            x: call.float("x")?.clone(),
            weight: call.float("weight")?.clone(),
            grad: grad.clone(),
            options: call.value::<ConvOptions<3>>("options")?.clone(),
        };
        let shape = term.weight.shape();
        Some(Deferred::from_term(
            shape,
            grad,
            Arc::new(term),
            call.taint(&["x", "weight", "output_grad"]),
        ))
    }
}
