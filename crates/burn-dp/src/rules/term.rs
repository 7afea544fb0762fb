//! The two traits a per-sample rule implements: [`PerSampleRule`] (what to cache when autodiff
//! calls a backend op to build a parameter gradient) and [`PerSampleTerm`] (what a cached term
//! can compute: per-sample squared norms, per-sample gradients, clipped sums, cross terms).

use core::any::Any;
use core::fmt::Debug;
use std::sync::Arc;

use burn::tensor::Tensor;
use burn_backend::tensor::{BoolTensor, FloatTensor, IntTensor};
use burn_backend::{Backend, TensorMetadata};

use crate::backend::{Deferred, Tag};

/// A cached term shared between the copies of a deferred gradient.
pub type TermRef<B> = Arc<dyn PerSampleTerm<B>>;

/// The cost of a term's two ways to a per-sample norm, in multiply-adds per sample (only their
/// ratio matters): the ghost norm (Gram matrices of the cached factors) or instantiating the
/// per-sample gradients.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct NormCost {
    /// Cost of the ghost norm; `None` when the term has no ghost form.
    pub ghost: Option<f64>,
    /// Cost of instantiating the per-sample gradients.
    pub instantiate: f64,
}

impl NormCost {
    /// A term with no ghost norm: instantiation only.
    pub fn instantiate_only(numel: usize) -> Self {
        NormCost {
            ghost: None,
            instantiate: numel as f64,
        }
    }

    /// fastDP's cost model for a `p × q` gradient over `t` positions: ghost `2t²`, instantiation
    /// `p·q` (Bu et al. 2023, "Differentially private optimization on large model at small
    /// cost", §3.3: ghost norm when `2T² ≤ pq`).
    pub fn gram(t: usize, p: usize, q: usize) -> Self {
        NormCost {
            ghost: Some(2.0 * (t as f64) * (t as f64)),
            instantiate: (p as f64) * (q as f64),
        }
    }
}

/// One contribution to a parameter's per-sample gradient, cached by a rule during the backward
/// pass. The per-sample gradient of a parameter is the sum of its terms (one per use of the
/// parameter: tied weights have several).
///
/// Every method works on the inner backend `B`, after the backward pass; none may sum over
/// samples except [`PerSampleTerm::weighted_sum`].
///
/// # Shapes
/// With `B` samples and a parameter of `n` elements: [`PerSampleTerm::instantiate`] is `[B, ...]`
/// with `n` elements per sample in the parameter's row-major layout; norms and clipping factors
/// are `[B]`; [`PerSampleTerm::weighted_sum`] has `n` elements in the parameter's layout.
pub trait PerSampleTerm<B: Backend>: Debug + Send + Sync + 'static {
    /// Number of samples `B` the term holds.
    fn samples(&self) -> usize;

    /// The cost of the ghost norm and of instantiation, for [`crate::NormMode::Auto`].
    fn norm_cost(&self) -> NormCost;

    /// Squared per-sample norms `[B]` without instantiating (ghost norm); `None` when the term has
    /// no ghost form (then the engine instantiates).
    fn ghost_sq_norm(&self) -> Option<Tensor<B, 1>> {
        None
    }

    /// Per-sample gradients `[B, ...]` (`n` elements per sample, the parameter's layout).
    fn instantiate(&self) -> FloatTensor<B>;

    /// `Σ_i c_i G_i` for clipping factors `c` `[B]` (book-keeping: one weighted product, no
    /// per-sample gradient materialised), `n` elements in the parameter's layout, any shape.
    fn weighted_sum(&self, c: &Tensor<B, 1>) -> FloatTensor<B> {
        crate::rules::batched::weighted_sum::<B>(self.instantiate(), c.clone())
    }

    /// Per-sample inner products `⟨G_i, H_i⟩` `[B]` with `other`, another term of the same
    /// parameter (tied weights), without instantiating; `None` when unknown (then the engine
    /// instantiates the sum).
    fn cross_inner(&self, _other: &dyn PerSampleTerm<B>) -> Option<Tensor<B, 1>> {
        None
    }

    /// The term with the samples marked in `drop` `[B]` contributing exactly 0: every cached
    /// per-sample tensor has those rows replaced by zeros (use [`crate::rules::zero_rows`]).
    fn zero_samples(&self, drop: &BoolTensor<B>) -> TermRef<B>;

    /// The term of `f(G_i)` for a linear map `f` applied elementwise (negation, scaling by a
    /// scalar) when the term can apply it to one of its factors; `None` to let the caller
    /// instantiate and apply `f` to the per-sample gradients.
    fn map_linear(&self, _f: &dyn Fn(FloatTensor<B>) -> FloatTensor<B>) -> Option<TermRef<B>> {
        None
    }

    /// The term of `G_iᵀ` for a 2-D parameter gradient (a transposed use of a weight), when the
    /// term can swap its factors; `None` to instantiate instead.
    fn transposed(&self) -> Option<TermRef<B>> {
        None
    }

    /// The term as [`Any`], for [`PerSampleTerm::cross_inner`] between terms of one type.
    fn as_any(&self) -> &dyn Any;
}

/// One argument of an intercepted backend op, borrowed for the rule.
#[derive(Debug)]
pub enum OpArg<'a, B: Backend> {
    /// A float tensor of the inner backend and its batch tag.
    Float(&'a FloatTensor<B>, Tag),
    /// An int tensor (token ids) and its batch tag.
    Int(&'a IntTensor<B>, Tag),
    /// Any other argument (`ConvOptions<2>`, a dimension `usize`, ...): read it with
    /// [`OpCall::value`].
    Value(&'a (dyn Any + Send + Sync)),
}

/// A call of a backend op inside the per-sample backward scope, offered to the rules: the op's
/// name (as in burn-backend's traits) and its arguments by name (as burn-backend names them).
#[derive(Debug)]
pub struct OpCall<'a, B: Backend> {
    op: &'static str,
    args: Vec<(&'static str, OpArg<'a, B>)>,
}

impl<'a, B: Backend> OpCall<'a, B> {
    /// A call of `op` with named arguments (made by the generated backend hooks).
    pub fn new(op: &'static str, args: Vec<(&'static str, OpArg<'a, B>)>) -> Self {
        OpCall { op, args }
    }

    /// The backend op's name, e.g. `"conv2d_weight_backward"`.
    pub fn op(&self) -> &'static str {
        self.op
    }

    fn arg(&self, name: &str) -> Option<&OpArg<'a, B>> {
        self.args.iter().find(|(n, _)| *n == name).map(|(_, a)| a)
    }

    /// The float tensor argument `name`.
    ///
    /// # Shapes
    /// As the backend op receives it (e.g. `x` `[B, C_in, ...]` of a convolution).
    pub fn float(&self, name: &str) -> Option<&'a FloatTensor<B>> {
        match self.arg(name)? {
            OpArg::Float(t, _) => Some(t),
            _ => None,
        }
    }

    /// The int tensor argument `name`.
    ///
    /// # Shapes
    /// As the backend op receives it (e.g. `indices` `[B, T]` of an embedding).
    pub fn int(&self, name: &str) -> Option<&'a IntTensor<B>> {
        match self.arg(name)? {
            OpArg::Int(t, _) => Some(t),
            _ => None,
        }
    }

    /// The non-tensor argument `name` as a `T` (`None` if absent or of another type).
    pub fn value<T: 'static>(&self, name: &str) -> Option<&'a T> {
        match self.arg(name)? {
            OpArg::Value(v) => (*v as &dyn Any).downcast_ref::<T>(),
            _ => None,
        }
    }

    /// The batch tag of tensor argument `name`.
    pub fn tag(&self, name: &str) -> Option<Tag> {
        match self.arg(name)? {
            OpArg::Float(_, t) | OpArg::Int(_, t) => Some(*t),
            OpArg::Value(_) => None,
        }
    }

    /// The taint a rule records for a term built from the tensor arguments `names`: nothing
    /// ([`Tag::Independent`]) when their joined tag is clean, otherwise that tag (the engine
    /// rejects the parameter, naming the op that mixed samples).
    pub fn taint(&self, names: &[&str]) -> Tag {
        let tag = names
            .iter()
            .filter_map(|n| self.tag(n))
            .fold(Tag::Independent, Tag::join);
        if tag.is_clean() {
            Tag::Independent
        } else {
            tag
        }
    }
}

/// A per-sample rule: when autodiff calls the backend op [`PerSampleRule::op`] inside the
/// per-sample backward scope and [`PerSampleRule::matches`] accepts the call, the rule caches
/// what it needs as [`PerSampleTerm`]s instead of letting the op sum over the batch.
///
/// Built-in rules are listed in [`crate::rules::RULES`]; a crate adds its own with
/// [`crate::rules::register_rule`]. A call no rule accepts is forwarded to the inner backend and
/// its batch-summed result is rejected by the engine for a trainable parameter (fail closed).
pub trait PerSampleRule<B: Backend>: Send + Sync + 'static {
    /// The backend op intercepted, as named in burn-backend's traits (one of
    /// [`crate::rules::hooked_ops`]).
    fn op(&self) -> &'static str;

    /// Whether this rule handles `call` (the predicate: ranks, options, tags). Return `false` for
    /// anything the rule does not compute exactly.
    fn matches(&self, _call: &OpCall<'_, B>) -> bool {
        true
    }

    /// The deferred gradient that replaces the op's result: the batch-summed shape autodiff
    /// expects (the parameter's), and the terms. `None` declines the call (as if
    /// [`PerSampleRule::matches`] had returned `false`).
    fn cache(&self, call: &OpCall<'_, B>) -> Option<Deferred<B>>;
}

/// `t` `[B, ...]` seen as a [`Tensor`] of rank `D` (no copy).
pub fn float_tensor<B: Backend, const D: usize>(t: FloatTensor<B>) -> Tensor<B, D> {
    Tensor::from_primitive(burn::tensor::TensorPrimitive::Float(t))
}

/// The primitive of a float [`Tensor`] (no copy).
pub fn float_primitive<B: Backend, const D: usize>(t: Tensor<B, D>) -> FloatTensor<B> {
    t.into_primitive().tensor()
}

/// Number of samples of a per-sample tensor `[B, ...]`.
pub fn samples_of<B: Backend>(t: &FloatTensor<B>) -> usize {
    t.shape().as_slice().first().copied().unwrap_or(0)
}
