//! Per-sample gradient rules: what each parametric op caches during backward, and how a cached
//! term gives per-sample norms (ghost norm or instantiation) and clipped sums (book-keeping).
//!
//! A rule is an implementation of [`PerSampleRule`] (which backend op it intercepts, a predicate
//! on the call, what it caches) and of [`PerSampleTerm`] for what it caches. The built-in rules are
//! one file each, listed in the table [`RULES`] (`table.rs`), from which the backend hooks
//! (`tools/gen_backend.py` reads the table's ops), the dispatch and the documentation are made.
//! Rules from other crates are added with [`register_rule`] for one of the hooked ops
//! ([`hooked_ops`]). A call no rule accepts is forwarded to the inner backend; its batch-summed
//! result is rejected for a trainable parameter (fail closed).
//!
//! Tied parameters: autodiff adds the gradients of every use with `float_add`; the terms are
//! kept side by side and the norm of their sum includes the cross terms
//! ([`PerSampleTerm::cross_inner`]).

pub mod batched;
pub mod cancellation;
pub mod conv;
pub mod conv3d;
pub mod embedding;
pub mod linear;
pub mod outer;
mod registry;
mod table;
mod term;

use burn::tensor::Tensor;
use burn_backend::tensor::{BoolTensor, FloatTensor};
use burn_backend::{Backend, Scalar, Shape, TensorMetadata};

use crate::backend::Deferred;

pub(crate) use registry::dispatch;
pub use registry::{hooked_ops, register_rule, unregister_rule, RuleId};
pub use table::{Rule, RULES};
pub use term::{
    float_primitive, float_tensor, samples_of, NormCost, OpArg, OpCall, PerSampleRule,
    PerSampleTerm, TermRef,
};

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
    /// Whether to use the ghost norm for a term of this cost (never without a ghost form).
    pub fn use_ghost(self, cost: NormCost) -> bool {
        match (self, cost.ghost) {
            (_, None) | (NormMode::Instantiate, _) => false,
            (NormMode::Ghost, Some(_)) => true,
            (NormMode::Auto, Some(g)) => g <= cost.instantiate,
        }
    }
}

pub(crate) fn tensor<B: Backend, const D: usize>(t: FloatTensor<B>) -> Tensor<B, D> {
    float_tensor(t)
}

pub(crate) fn prim<B: Backend, const D: usize>(t: Tensor<B, D>) -> FloatTensor<B> {
    float_primitive(t)
}

/// `[B, ...shape]` with `shape` prefixed by the batch size.
pub fn batched_shape(b: usize, shape: &Shape) -> Shape {
    let mut dims = vec![b];
    dims.extend_from_slice(shape.as_slice());
    Shape::from(dims)
}

/// Flattens a per-sample tensor `[B, ...]` to `[B, n]`.
///
/// # Shapes
/// `t`: `[B, ...]`; result: `[B, n]` with `n` the elements per sample.
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
pub(crate) fn instantiate_term<B: Backend>(
    term: &dyn PerSampleTerm<B>,
    shape: &Shape,
) -> FloatTensor<B> {
    B::float_reshape(term.instantiate(), batched_shape(term.samples(), shape))
}

/// Per-sample gradients of a deferred gradient.
///
/// # Shapes
/// Result: `[B, ...d.shape]`.
pub fn instantiate<B: Backend>(d: &Deferred<B>) -> FloatTensor<B> {
    let mut out: Option<FloatTensor<B>> = None;
    for term in &d.terms {
        let t = instantiate_term(term.as_ref(), &d.shape);
        out = Some(match out {
            Some(o) => B::float_add(o, t),
            None => t,
        });
    }
    out.unwrap_or_else(|| B::float_zeros(batched_shape(0, &d.shape), &d.device, d.dtype.into()))
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
        sq: batched::sq_norm::<B>(inst.clone()),
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

/// The cost of the ghost norm of a sum of terms (the Gram products of every pair): for Gram
/// costs `2T_k²`, `2(Σ_k T_k)²`; instantiation costs the same as for one term.
fn sum_cost<B: Backend>(terms: &[TermRef<B>]) -> NormCost {
    let mut positions = 0.0;
    let mut ghost = true;
    let mut instantiate: f64 = 0.0;
    for t in terms {
        let c = t.norm_cost();
        instantiate = instantiate.max(c.instantiate);
        match c.ghost {
            Some(g) => positions += (g / 2.0).sqrt(),
            None => ghost = false,
        }
    }
    NormCost {
        ghost: ghost.then_some(2.0 * positions * positions),
        instantiate,
    }
}

/// `Σ_k ‖G_k‖² + 2 Σ_{k<l} ⟨G_k, G_l⟩` per sample from ghost norms and cross terms, or `None` when
/// a term has no ghost form or a pair no cross term.
///
/// Cross terms of tied weights can cancel the squared norms: where the total is small against the
/// Cauchy–Schwarz bound `(Σ_k ‖G_k‖)²`, the bound is used ([`cancellation::guarded_total`]).
fn ghost_sum<B: Backend>(terms: &[TermRef<B>]) -> Option<Tensor<B, 1>> {
    let mut total: Option<Tensor<B, 1>> = None;
    let mut own = Vec::with_capacity(terms.len());
    for (k, tk) in terms.iter().enumerate() {
        let sq = tk.ghost_sq_norm()?;
        own.push(sq.clone());
        let mut v = sq;
        for tl in &terms[k + 1..] {
            v = v + tk.cross_inner(tl.as_ref())?.mul_scalar(2.0);
        }
        total = Some(match total {
            Some(t) => t + v,
            None => v,
        });
    }
    match (total, own.len()) {
        (Some(total), n) if n > 1 => Some(cancellation::guarded_total(total, &own)),
        (total, _) => total,
    }
}

fn sq_norms_unclamped<B: Backend>(d: &Deferred<B>, mode: NormMode) -> SqNorms<B> {
    if mode.use_ghost(sum_cost(&d.terms)) {
        if let Some(sq) = ghost_sum(&d.terms) {
            return SqNorms {
                sq,
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
///
/// # Shapes
/// `t`: `[B, ...]`; `drop`: `[B]`; result: as `t`.
pub fn zero_rows<B: Backend>(t: FloatTensor<B>, drop: &BoolTensor<B>) -> FloatTensor<B> {
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
/// tensor of every term has their rows set to exactly 0 ([`PerSampleTerm::zero_samples`]), so
/// each of them contributes exactly 0 to every clipped sum.
pub(crate) fn zero_samples<B: Backend>(d: &Deferred<B>, drop: &BoolTensor<B>) -> Deferred<B> {
    Deferred {
        shape: d.shape.clone(),
        dtype: d.dtype,
        device: d.device.clone(),
        terms: d.terms.iter().map(|t| t.zero_samples(drop)).collect(),
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
        Some(inst) => {
            B::float_reshape(batched::weighted_sum::<B>(inst, c.clone()), d.shape.clone())
        }
        None => weighted_sum(d, c),
    }
}

/// `Σ_i c_i G_i`: the per-sample gradients weighted by `c` `[B]` and summed, in the gradient's
/// shape (book-keeping: one weighted product per term, no per-sample gradient materialised).
pub(crate) fn weighted_sum<B: Backend>(d: &Deferred<B>, c: &Tensor<B, 1>) -> FloatTensor<B> {
    let mut out: Option<FloatTensor<B>> = None;
    for term in &d.terms {
        let t = B::float_reshape(term.weighted_sum(c), d.shape.clone());
        out = Some(match out {
            Some(o) => B::float_add(o, t),
            None => t,
        });
    }
    out.unwrap_or_else(|| B::float_zeros(d.shape.clone(), &d.device, d.dtype.into()))
}

/// The ordinary (batch-summed) gradient.
pub(crate) fn batch_sum<B: Backend>(d: Deferred<B>) -> FloatTensor<B> {
    let ones = Tensor::<B, 1>::ones([d.samples()], &d.device);
    weighted_sum(&d, &ones)
}
