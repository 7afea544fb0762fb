//! Rule for `burn::nn::Conv1d` and `Conv2d` (stride, padding, dilation, groups).
//!
//! Weight: autodiff calls `conv{1,2}d_weight_backward(x, w, g)`; the rule caches
//! `ConvTerm(x, w, g)`.
//! With `U = unfold(x)` `[B, groups, K, L]` (K = C_in/groups·k, L output positions) and `G`
//! `[B, groups, C_out/groups, L]`, the per-sample gradient of group `j` is `G_j U_jᵀ`
//! (Opacus' unfold rule); its ghost norm is `Σ_j Σ_{l,m} (U_jᵀU_j)_{lm} (G_jᵀG_j)_{lm}`
//! (Bu et al. 2022, "Scalable and efficient training of large convolutional neural networks with
//! differential privacy", §3.2). The clipped sum reweights `g` by `c_i` and calls the backend's own
//! `conv_weight_backward` once: exact for every stride, padding, dilation and group count.
//! Bias (also Conv3d's): `conv{1,2,3}d_bias_backward(x, b, g)`; the per-sample gradient
//! `Σ_l g_il` is instantiated.

use core::any::Any;
use std::sync::Arc;

use burn::tensor::module::unfold4d;
use burn::tensor::Tensor;
use burn_backend::ops::{ConvOptions, UnfoldOptions};
use burn_backend::tensor::{BoolTensor, FloatTensor};
use burn_backend::{Backend, Shape, TensorMetadata};

use super::batched::BatchedTerm;
use super::term::{NormCost, OpCall, PerSampleRule, PerSampleTerm, TermRef};
use super::{prim, tensor, zero_rows};
use crate::backend::Deferred;

/// Which convolution a [`ConvTerm`] came from, with its options as given.
#[derive(Clone, Debug)]
pub enum ConvKind {
    /// `conv1d`.
    D1(ConvOptions<1>),
    /// `conv2d`.
    D2(ConvOptions<2>),
}

impl ConvKind {
    fn groups(&self) -> usize {
        match self {
            ConvKind::D1(o) => o.groups,
            ConvKind::D2(o) => o.groups,
        }
    }
}

/// The weight gradient of a 1-D or 2-D convolution: input, upstream gradient, and the weight
/// (for its shape).
///
/// # Shapes
/// `x`: `[B, C_in, ...]`; `weight`: `[C_out, C_in / groups, k...]`; `grad`: `[B, C_out, ...]`.
#[derive(Clone, Debug)]
pub struct ConvTerm<B: Backend> {
    /// Layer input `[B, C_in, ...]`.
    pub x: FloatTensor<B>,
    /// Weight `[C_out, C_in / groups, k...]`.
    pub weight: FloatTensor<B>,
    /// Upstream gradient `[B, C_out, ...]`.
    pub grad: FloatTensor<B>,
    /// Convolution and options.
    pub kind: ConvKind,
}

impl<B: Backend> PerSampleTerm<B> for ConvTerm<B> {
    fn samples(&self) -> usize {
        self.x.shape()[0]
    }

    /// `L` output positions, `K = C_in/groups · kernel`, `C_out/groups` per group: a Gram cost.
    fn norm_cost(&self) -> NormCost {
        let (ws, gs) = (self.weight.shape(), self.grad.shape());
        let l: usize = gs.as_slice()[2..].iter().product();
        let k: usize = ws.as_slice()[1..].iter().product();
        NormCost::gram(l, ws[0] / self.kind.groups(), k)
    }

    fn ghost_sq_norm(&self) -> Option<Tensor<B, 1>> {
        Some(ghost_sq_norm::<B>(
            &self.x,
            &self.weight,
            &self.grad,
            &self.kind,
        ))
    }

    fn instantiate(&self) -> FloatTensor<B> {
        instantiate::<B>(&self.x, &self.weight, &self.grad, &self.kind)
    }

    fn weighted_sum(&self, c: &Tensor<B, 1>) -> FloatTensor<B> {
        weighted_sum::<B>(&self.x, &self.weight, &self.grad, &self.kind, c.clone())
    }

    fn zero_samples(&self, drop: &BoolTensor<B>) -> TermRef<B> {
        Arc::new(ConvTerm {
            x: zero_rows::<B>(self.x.clone(), drop),
            weight: self.weight.clone(),
            grad: zero_rows::<B>(self.grad.clone(), drop),
            kind: self.kind.clone(),
        })
    }

    fn map_linear(&self, f: &dyn Fn(FloatTensor<B>) -> FloatTensor<B>) -> Option<TermRef<B>> {
        Some(Arc::new(ConvTerm {
            grad: f(self.grad.clone()),
            ..self.clone()
        }))
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

fn conv_weight<B: Backend>(call: &OpCall<'_, B>, kind: ConvKind) -> Option<Deferred<B>> {
    let (x, weight, grad) = (
        call.float("x")?.clone(),
        call.float("weight")?.clone(),
        call.float("output_grad")?,
    );
    let shape = weight.shape();
    let term = Arc::new(ConvTerm {
        x,
        weight,
        grad: grad.clone(),
        kind,
    });
    Some(Deferred::from_term(
        shape,
        grad,
        term,
        call.taint(&["x", "weight", "output_grad"]),
    ))
}

/// The rule for `conv1d_weight_backward(x, weight, output_grad, options)`.
#[derive(Debug, Clone, Copy)]
pub struct Conv1dWeight;

impl<B: Backend> PerSampleRule<B> for Conv1dWeight {
    fn op(&self) -> &'static str {
        "conv1d_weight_backward"
    }

    fn cache(&self, call: &OpCall<'_, B>) -> Option<Deferred<B>> {
        let options = call.value::<ConvOptions<1>>("options")?.clone();
        conv_weight(call, ConvKind::D1(options))
    }
}

/// The rule for `conv2d_weight_backward(x, weight, output_grad, options)`.
#[derive(Debug, Clone, Copy)]
pub struct Conv2dWeight;

impl<B: Backend> PerSampleRule<B> for Conv2dWeight {
    fn op(&self) -> &'static str {
        "conv2d_weight_backward"
    }

    fn cache(&self, call: &OpCall<'_, B>) -> Option<Deferred<B>> {
        let options = call.value::<ConvOptions<2>>("options")?.clone();
        conv_weight(call, ConvKind::D2(options))
    }
}

/// The rule for `conv{1,2,3}d_bias_backward(x, bias, output_grad)` (the op named in the field):
/// the per-sample gradient `Σ_l g_il` over output positions, instantiated.
#[derive(Debug, Clone, Copy)]
pub struct ConvBias(pub &'static str);

impl<B: Backend> PerSampleRule<B> for ConvBias {
    fn op(&self) -> &'static str {
        self.0
    }

    fn cache(&self, call: &OpCall<'_, B>) -> Option<Deferred<B>> {
        let grad = call.float("output_grad")?;
        Some(Deferred::from_term(
            Shape::new([grad.shape()[1]]),
            grad,
            BatchedTerm::new_ref(bias_per_sample::<B>(grad.clone())),
            call.taint(&["output_grad", "bias"]),
        ))
    }
}

/// Per-sample bias gradients `[B, C_out]` of a convolution: `Σ` over output positions.
///
/// # Shapes
/// `grad`: `[B, C_out, ...]`; result `[B, C_out]`.
pub fn bias_per_sample<B: Backend>(grad: FloatTensor<B>) -> FloatTensor<B> {
    let shape = grad.shape();
    let (b, c) = (shape[0], shape[1]);
    let g = B::float_reshape(
        grad,
        Shape::new([b, c, shape.num_elements().checked_div(b * c).unwrap_or(0)]),
    );
    B::float_reshape(B::float_sum_dim(g, 2), Shape::new([b, c]))
}

/// `(U [B, g, K, L], G [B, g, C_out/g, L])` of a convolution term, 1-D seen as 2-D with height 1.
fn unfolded<B: Backend>(
    x: &FloatTensor<B>,
    weight: &FloatTensor<B>,
    grad: &FloatTensor<B>,
    kind: &ConvKind,
) -> (Tensor<B, 4>, Tensor<B, 4>) {
    let ws = weight.shape();
    let (x4, g4, kernel, opts): (Tensor<B, 4>, Tensor<B, 4>, [usize; 2], ConvOptions<2>) =
        match kind {
            ConvKind::D1(o) => {
                let x = tensor::<B, 3>(x.clone());
                let g = tensor::<B, 3>(grad.clone());
                let [b, c, l] = x.dims();
                let [_, co, lo] = g.dims();
                (
                    x.reshape([b, c, 1, l]),
                    g.reshape([b, co, 1, lo]),
                    [1, ws[2]],
                    ConvOptions::new(
                        [1, o.stride[0]],
                        [0, o.padding[0]],
                        [1, o.dilation[0]],
                        o.groups,
                    ),
                )
            }
            ConvKind::D2(o) => (
                tensor::<B, 4>(x.clone()),
                tensor::<B, 4>(grad.clone()),
                [ws[2], ws[3]],
                o.clone(),
            ),
        };
    let groups = opts.groups;
    let [b, c_out, ho, wo] = g4.dims();
    let l = ho * wo;
    let u = unfold4d(
        x4,
        kernel,
        UnfoldOptions::new(opts.stride, opts.padding, opts.dilation),
    );
    let k = u.dims()[1] / groups;
    (
        u.reshape([b, groups, k, l]),
        g4.reshape([b, groups, c_out / groups, l]),
    )
}

/// Per-sample gradients `[B, C_out, C_in/groups, k...]` (flattened per sample).
fn instantiate<B: Backend>(
    x: &FloatTensor<B>,
    weight: &FloatTensor<B>,
    grad: &FloatTensor<B>,
    kind: &ConvKind,
) -> FloatTensor<B> {
    let (u, g) = unfolded::<B>(x, weight, grad, kind);
    let b = u.dims()[0];
    prim(g.matmul(u.swap_dims(2, 3)).reshape([b as i64, -1]))
}

/// Ghost norms `[B]`: `Σ_j Σ_{l,m} (U_jᵀU_j)_{lm} (G_jᵀG_j)_{lm}`.
fn ghost_sq_norm<B: Backend>(
    x: &FloatTensor<B>,
    weight: &FloatTensor<B>,
    grad: &FloatTensor<B>,
    kind: &ConvKind,
) -> Tensor<B, 1> {
    let (u, g) = unfolded::<B>(x, weight, grad, kind);
    let b = u.dims()[0];
    let uu = u.clone().swap_dims(2, 3).matmul(u);
    let gg = g.clone().swap_dims(2, 3).matmul(g);
    super::cancellation::guarded_sum((uu * gg).reshape([b as i64, -1]))
}

/// `Σ_i c_i G_i` in the weight's shape: one call of the backend's weight backward with the
/// upstream gradient reweighted per sample.
fn weighted_sum<B: Backend>(
    x: &FloatTensor<B>,
    weight: &FloatTensor<B>,
    grad: &FloatTensor<B>,
    kind: &ConvKind,
    c: Tensor<B, 1>,
) -> FloatTensor<B> {
    let b = c.dims()[0];
    match kind {
        ConvKind::D1(o) if o.groups > 1 => {
            // burn-backend 0.21's grouped `conv1d_weight_backward` panics when the stride leaves
            // input positions unused (its conv2d twin trims the kernel, tracel-ai/burn#1891):
            // the same product as a conv2d of height 1.
            let g = tensor::<B, 3>(grad.clone()) * c.reshape([b, 1, 1]);
            let [n, c_out, l_out] = g.dims();
            let g = g.reshape([n, c_out, 1, l_out]);
            let x = tensor::<B, 3>(x.clone()).unsqueeze_dim::<4>(2);
            let w = tensor::<B, 3>(weight.clone());
            let [o_out, c_per_group, k] = w.dims();
            let w = w.reshape([o_out, c_per_group, 1, k]);
            let options = ConvOptions::new(
                [1, o.stride[0]],
                [0, o.padding[0]],
                [1, o.dilation[0]],
                o.groups,
            );
            let sum = B::conv2d_weight_backward(prim(x), prim(w), prim(g), options);
            prim(tensor::<B, 4>(sum).reshape([o_out, c_per_group, k]))
        }
        ConvKind::D1(o) => {
            let g = tensor::<B, 3>(grad.clone()) * c.reshape([b, 1, 1]);
            B::conv1d_weight_backward(x.clone(), weight.clone(), prim(g), o.clone())
        }
        ConvKind::D2(o) => {
            let g = tensor::<B, 4>(grad.clone()) * c.reshape([b, 1, 1, 1]);
            B::conv2d_weight_backward(x.clone(), weight.clone(), prim(g), o.clone())
        }
    }
}
