//! Per-sample gradient rules: what each parametric op caches during backward, and how a cached
//! term gives per-sample norms (ghost norm or instantiation) and clipped sums (book-keeping).
//!
//! # The rule table
//!
//! [`RULES`] is the one explicit list. Each rule intercepts one op that burn's autodiff calls on
//! its inner backend to build a parameter gradient, and caches a [`Term`]:
//!
//! | layer / parameter | intercepted op | term | file |
//! |---|---|---|---|
//! | `Linear` weight (2-D and `[B, T, d]` inputs) | `linear_weight_backward` | `Outer(x, g)` | `linear.rs` |
//! | `Linear` bias | `linear_bias_backward` | `Batched` | `linear.rs` |
//! | `Conv1d` / `Conv2d` weight (stride, padding, dilation, groups) | `conv{1,2}d_weight_backward` | `Conv` | `conv.rs` |
//! | `Conv1d` / `Conv2d` bias | `conv{1,2}d_bias_backward` | `Batched` | `conv.rs` |
//! | `Embedding` weight | `embedding_backward` | `Outer(one-hot ids, g)` | `embedding.rs` |
//! | `LayerNorm`, `GroupNorm`, `RmsNorm` gamma / beta, raw `Param`s broadcast over the batch | `float_sum_dim(·, 0)` | `Batched` | `broadcast.rs` |
//!
//! Tied parameters: autodiff adds the gradients of every use with `float_add`; the terms are
//! kept side by side and the norm of their sum includes the cross terms (`outer.rs`).

pub mod broadcast;
pub mod conv;
pub mod embedding;
pub mod linear;
pub mod outer;

use burn::tensor::{Tensor, TensorPrimitive};
use burn_backend::tensor::{BoolTensor, FloatTensor};
use burn_backend::{Backend, Scalar, Shape, TensorMetadata};

use crate::backend::{Deferred, Factor, Term};

/// One row of the rule table.
#[derive(Debug, Clone, Copy)]
pub struct Rule {
    /// The burn layer or parameter kind.
    pub layer: &'static str,
    /// The inner-backend op the rule intercepts.
    pub op: &'static str,
    /// What it caches.
    pub term: &'static str,
}

/// Every per-sample rule. A trainable parameter whose gradient is not built by one of these is an
/// error ([`crate::DpError::NoPerSampleRule`]).
pub const RULES: &[Rule] = &[
    Rule {
        layer: "Linear.weight",
        op: "linear_weight_backward",
        term: "Outer(x, g)",
    },
    Rule {
        layer: "Linear.bias",
        op: "linear_bias_backward",
        term: "Batched",
    },
    Rule {
        layer: "Conv1d.weight",
        op: "conv1d_weight_backward",
        term: "Conv",
    },
    Rule {
        layer: "Conv1d.bias",
        op: "conv1d_bias_backward",
        term: "Batched",
    },
    Rule {
        layer: "Conv2d.weight",
        op: "conv2d_weight_backward",
        term: "Conv",
    },
    Rule {
        layer: "Conv2d.bias",
        op: "conv2d_bias_backward",
        term: "Batched",
    },
    Rule {
        layer: "Embedding.weight",
        op: "embedding_backward",
        term: "Outer(one-hot, g)",
    },
    Rule {
        layer: "LayerNorm.gamma/beta",
        op: "float_sum_dim(0)",
        term: "Batched",
    },
    Rule {
        layer: "GroupNorm.gamma/beta",
        op: "float_sum_dim(0)",
        term: "Batched",
    },
    Rule {
        layer: "RmsNorm.gamma",
        op: "float_sum_dim(0)",
        term: "Batched",
    },
    Rule {
        layer: "Param broadcast over the batch",
        op: "float_sum_dim(0)",
        term: "Batched",
    },
];

/// How per-sample norms are computed for layers that offer a choice.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub enum NormMode {
    /// Per layer, whichever is cheaper (fastDP's rule: ghost norm when `2T² ≤ p·q`).
    #[default]
    Auto,
    /// Always the ghost norm (Gram matrices of activations and output gradients).
    Ghost,
    /// Always instantiate the per-sample gradients.
    Instantiate,
}

impl NormMode {
    /// Whether to use the ghost norm for a term with `t` positions and a `p × q` gradient.
    pub(crate) fn ghost(self, t: usize, p: usize, q: usize) -> bool {
        match self {
            NormMode::Ghost => true,
            NormMode::Instantiate => false,
            NormMode::Auto => 2 * t * t <= p * q,
        }
    }
}

pub(crate) fn tensor<B: Backend, const D: usize>(t: FloatTensor<B>) -> Tensor<B, D> {
    Tensor::from_primitive(TensorPrimitive::Float(t))
}

pub(crate) fn prim<B: Backend, const D: usize>(t: Tensor<B, D>) -> FloatTensor<B> {
    t.into_primitive().tensor()
}

/// `[B, ...shape]` with `shape` prefixed by the batch size.
pub(crate) fn batched_shape(b: usize, shape: &Shape) -> Shape {
    let mut dims = vec![b];
    dims.extend_from_slice(shape.as_slice());
    Shape::from(dims)
}

/// Flattens a per-sample tensor `[B, ...]` to `[B, n]`.
pub fn flat<B: Backend>(t: FloatTensor<B>) -> Tensor<B, 2> {
    let shape = t.shape();
    let b = shape[0];
    let n = shape
        .num_elements()
        .checked_div(b)
        .unwrap_or_else(|| shape.as_slice()[1..].iter().product());
    tensor::<B, 2>(B::float_reshape(t, Shape::new([b, n])))
}

/// A term's per-sample gradients, `[B, ...shape]`.
pub(crate) fn instantiate_term<B: Backend>(term: &Term<B>, shape: &Shape) -> FloatTensor<B> {
    let b = term.samples();
    let t = match term {
        Term::Outer { left, right } => outer::instantiate::<B>(left, right),
        Term::Conv {
            x,
            weight,
            grad,
            kind,
        } => conv::instantiate::<B>(x, weight, grad, kind),
        Term::Batched(t) => t.clone(),
    };
    B::float_reshape(t, batched_shape(b, shape))
}

/// Per-sample gradients of a deferred gradient, `[B, ...shape]`.
pub fn instantiate<B: Backend>(d: &Deferred<B>) -> FloatTensor<B> {
    let mut out: Option<FloatTensor<B>> = None;
    for term in &d.terms {
        let t = instantiate_term(term, &d.shape);
        out = Some(match out {
            Some(o) => B::float_add(o, t),
            None => t,
        });
    }
    out.expect("a deferred gradient has at least one term")
}

/// Squared per-sample norms `[B]` of a deferred gradient, and the per-sample gradients when the
/// norm instantiated them (then the clipped sum reuses them instead of a second weighted product:
/// fastDP's mixed ghost/instantiation book-keeping).
pub(crate) struct SqNorms<B: Backend> {
    /// `‖G_i‖²`, `[B]`.
    pub sq: Tensor<B, 1>,
    /// `[B, ...shape]` when instantiated.
    pub instantiated: Option<FloatTensor<B>>,
}

fn from_instantiated<B: Backend>(inst: FloatTensor<B>) -> SqNorms<B> {
    SqNorms {
        sq: broadcast::sq_norm::<B>(inst.clone()),
        instantiated: Some(inst),
    }
}

/// Squared per-sample norms of a deferred gradient: ghost norm or instantiation per `mode`,
/// negative values clamped to 0.
///
/// A ghost norm `Σ_{t,s} (a_t·a_s)(g_t·g_s)` is a squared norm, but in f32 the Gram products of
/// nearly cancelling positions can sum to a slightly negative number, whose square root is NaN.
/// The clamp is a select on `sq < 0`, so a NaN (a non-finite gradient) stays NaN and the engine
/// can exclude that sample.
pub(crate) fn sq_norms<B: Backend>(d: &Deferred<B>, mode: NormMode) -> SqNorms<B> {
    let SqNorms { sq, instantiated } = sq_norms_unclamped(d, mode);
    SqNorms {
        sq: sq.clone().mask_fill(sq.lower_elem(0.0), 0.0),
        instantiated,
    }
}

fn sq_norms_unclamped<B: Backend>(d: &Deferred<B>, mode: NormMode) -> SqNorms<B> {
    if let [term] = d.terms.as_slice() {
        return match term {
            Term::Outer { left, right }
                if mode.ghost(left.positions(), left.width(), right.width()) =>
            {
                SqNorms {
                    sq: outer::ghost_sq_norm::<B>(left, right),
                    instantiated: None,
                }
            }
            Term::Outer { left, right } => from_instantiated(outer::instantiate::<B>(left, right)),
            Term::Conv {
                x,
                weight,
                grad,
                kind,
            } => match conv::ghost_sq_norm::<B>(x, weight, grad, kind, mode) {
                Some(sq) => SqNorms {
                    sq,
                    instantiated: None,
                },
                None => from_instantiated(conv::instantiate::<B>(x, weight, grad, kind)),
            },
            Term::Batched(t) => SqNorms {
                sq: broadcast::sq_norm::<B>(t.clone()),
                instantiated: None,
            },
        };
    }
    let all_outer = d.terms.iter().all(|t| matches!(t, Term::Outer { .. }));
    if all_outer && d.shape.num_dims() == 2 {
        let t_total: usize = d
            .terms
            .iter()
            .map(|t| match t {
                Term::Outer { left, .. } => left.positions(),
                _ => 0,
            })
            .sum();
        if mode.ghost(t_total, d.shape[0], d.shape[1]) {
            return SqNorms {
                sq: outer::sq_norm_sum::<B>(&d.terms),
                instantiated: None,
            };
        }
    }
    from_instantiated(instantiate(d))
}

/// `t` `[B, ...]` with the rows of the samples marked in `drop` `[B]` replaced by exactly 0.
///
/// A select (`mask_fill`), not a product: `NaN · 0` is NaN, so multiplying a non-finite row by a
/// zero clipping factor would still poison every weighted sum it enters.
pub(crate) fn zero_rows<B: Backend>(t: FloatTensor<B>, drop: &BoolTensor<B>) -> FloatTensor<B> {
    let shape = t.shape();
    let mut mask_shape = vec![1; shape.num_dims()];
    mask_shape[0] = shape[0];
    let mask = B::bool_expand(
        B::bool_reshape(drop.clone(), Shape::from(mask_shape)),
        shape,
    );
    B::float_mask_fill(t, mask, Scalar::Float(0.0))
}

/// The deferred gradient with the samples marked in `drop` `[B]` removed: every cached per-sample
/// tensor (dense outer factors, convolution inputs and upstream gradients, instantiated rows) has
/// their rows set to exactly 0, so each of them contributes exactly 0 to every clipped sum.
/// One-hot factors are token ids, finite by construction, and stay as they are.
pub(crate) fn zero_samples<B: Backend>(d: &Deferred<B>, drop: &BoolTensor<B>) -> Deferred<B> {
    let factor = |f: &Factor<B>| match f {
        Factor::Dense(t) => Factor::Dense(zero_rows::<B>(t.clone(), drop)),
        one_hot @ Factor::OneHot { .. } => one_hot.clone(),
    };
    let terms = d
        .terms
        .iter()
        .map(|term| match term {
            Term::Outer { left, right } => Term::Outer {
                left: factor(left),
                right: factor(right),
            },
            Term::Conv {
                x,
                weight,
                grad,
                kind,
            } => Term::Conv {
                x: zero_rows::<B>(x.clone(), drop),
                weight: weight.clone(),
                grad: zero_rows::<B>(grad.clone(), drop),
                kind: kind.clone(),
            },
            Term::Batched(t) => Term::Batched(zero_rows::<B>(t.clone(), drop)),
        })
        .collect();
    Deferred {
        shape: d.shape.clone(),
        dtype: d.dtype,
        device: d.device.clone(),
        terms,
        taint: d.taint,
    }
}

/// `Σ_i c_i G_i` from already instantiated per-sample gradients, or by [`weighted_sum`].
pub(crate) fn clipped_sum<B: Backend>(
    d: &Deferred<B>,
    c: &Tensor<B, 1>,
    instantiated: Option<FloatTensor<B>>,
) -> FloatTensor<B> {
    match instantiated {
        Some(inst) => B::float_reshape(
            broadcast::weighted_sum::<B>(inst, c.clone()),
            d.shape.clone(),
        ),
        None => weighted_sum(d, c),
    }
}

/// `Σ_i c_i G_i`: the per-sample gradients weighted by `c` `[B]` and summed, in the gradient's
/// shape (book-keeping: one weighted product per term, no per-sample gradient materialised).
pub(crate) fn weighted_sum<B: Backend>(d: &Deferred<B>, c: &Tensor<B, 1>) -> FloatTensor<B> {
    let mut out: Option<FloatTensor<B>> = None;
    for term in &d.terms {
        let t = match term {
            Term::Outer { left, right } => outer::weighted_sum::<B>(left, right, c.clone()),
            Term::Conv {
                x,
                weight,
                grad,
                kind,
            } => conv::weighted_sum::<B>(x, weight, grad, kind, c.clone()),
            Term::Batched(t) => broadcast::weighted_sum::<B>(t.clone(), c.clone()),
        };
        let t = B::float_reshape(t, d.shape.clone());
        out = Some(match out {
            Some(o) => B::float_add(o, t),
            None => t,
        });
    }
    out.expect("a deferred gradient has at least one term")
}

/// The ordinary (batch-summed) gradient.
pub(crate) fn batch_sum<B: Backend>(d: Deferred<B>) -> FloatTensor<B> {
    let b = d.terms.first().map(|t| t.samples()).unwrap_or(0);
    let ones = Tensor::<B, 1>::ones([b], &d.device);
    weighted_sum(&d, &ones)
}
