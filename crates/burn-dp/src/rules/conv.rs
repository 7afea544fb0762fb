//! Rule for `burn::nn::Conv1d` and `Conv2d` (stride, padding, dilation, groups).
//!
//! Weight: autodiff calls `conv{1,2}d_weight_backward(x, w, g)`; the rule caches `Conv(x, w, g)`.
//! With `U = unfold(x)` `[B, groups, K, L]` (K = C_in/groups·k, L output positions) and `G`
//! `[B, groups, C_out/groups, L]`, the per-sample gradient of group `j` is `G_j U_jᵀ`
//! (Opacus' unfold rule); its ghost norm is `Σ_j Σ_{l,m} (U_jᵀU_j)_{lm} (G_jᵀG_j)_{lm}`
//! (Bu et al. 2022, "Scalable and efficient training of large convolutional neural networks with
//! differential privacy", §3.2). The clipped sum reweights `g` by `c_i` and calls the backend's own
//! `conv_weight_backward` once: exact for every stride, padding, dilation and group count.
//! Bias: `conv{1,2}d_bias_backward(x, b, g)`; the per-sample gradient `Σ_l g_il` is instantiated.

use burn::tensor::module::unfold4d;
use burn::tensor::Tensor;
use burn_backend::ops::{ConvOptions, UnfoldOptions};
use burn_backend::tensor::FloatTensor;
use burn_backend::{Backend, Shape, TensorMetadata};

use super::{prim, tensor, NormMode};
use crate::backend::primitive::ConvKind;
use crate::backend::{Deferred, Tag, Term};

/// The deferred weight gradient of a convolution.
pub(crate) fn weight<B: Backend>(
    x: FloatTensor<B>,
    weight: FloatTensor<B>,
    grad: FloatTensor<B>,
    kind: ConvKind,
    taint: Tag,
) -> Deferred<B> {
    Deferred {
        shape: weight.shape(),
        dtype: grad.dtype(),
        device: B::float_device(&grad),
        terms: vec![Term::Conv {
            x,
            weight,
            grad,
            kind,
        }],
        taint,
    }
}

/// The deferred bias gradient of a convolution: `Σ` over positions, per sample.
pub(crate) fn bias<B: Backend>(grad: FloatTensor<B>, taint: Tag) -> Deferred<B> {
    let shape = grad.shape();
    let (b, c) = (shape[0], shape[1]);
    let (dtype, device) = (grad.dtype(), B::float_device(&grad));
    let g = B::float_reshape(
        grad,
        Shape::new([b, c, shape.num_elements().checked_div(b * c).unwrap_or(0)]),
    );
    let per_sample = B::float_reshape(B::float_sum_dim(g, 2), Shape::new([b, c]));
    Deferred {
        shape: Shape::new([c]),
        dtype,
        device,
        terms: vec![Term::Batched(per_sample)],
        taint,
    }
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
pub(crate) fn instantiate<B: Backend>(
    x: &FloatTensor<B>,
    weight: &FloatTensor<B>,
    grad: &FloatTensor<B>,
    kind: &ConvKind,
) -> FloatTensor<B> {
    let (u, g) = unfolded::<B>(x, weight, grad, kind);
    let b = u.dims()[0];
    prim(g.matmul(u.swap_dims(2, 3)).reshape([b as i64, -1]))
}

/// Ghost norms `[B]` when `mode` (or the cost model) picks them; `None`: instantiate instead.
pub(crate) fn ghost_sq_norm<B: Backend>(
    x: &FloatTensor<B>,
    weight: &FloatTensor<B>,
    grad: &FloatTensor<B>,
    kind: &ConvKind,
    mode: NormMode,
) -> Option<Tensor<B, 1>> {
    // Decide from shapes alone: L output positions, K = C_in/groups · kernel, C_out/groups.
    let (ws, gs) = (weight.shape(), grad.shape());
    let l: usize = gs.as_slice()[2..].iter().product();
    let k: usize = ws.as_slice()[1..].iter().product();
    let groups = match kind {
        ConvKind::D1(o) => o.groups,
        ConvKind::D2(o) => o.groups,
    };
    if !mode.ghost(l, ws[0] / groups, k) {
        return None;
    }
    let (u, g) = unfolded::<B>(x, weight, grad, kind);
    let b = u.dims()[0];
    let uu = u.clone().swap_dims(2, 3).matmul(u);
    let gg = g.clone().swap_dims(2, 3).matmul(g);
    Some((uu * gg).reshape([b as i64, -1]).sum_dim(1).reshape([b]))
}

/// `Σ_i c_i G_i` in the weight's shape: one call of the backend's weight backward with the
/// upstream gradient reweighted per sample.
pub(crate) fn weighted_sum<B: Backend>(
    x: &FloatTensor<B>,
    weight: &FloatTensor<B>,
    grad: &FloatTensor<B>,
    kind: &ConvKind,
    c: Tensor<B, 1>,
) -> FloatTensor<B> {
    let b = c.dims()[0];
    match kind {
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
