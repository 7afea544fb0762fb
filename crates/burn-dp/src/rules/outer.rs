//! Outer-product gradients `G_i = Σ_t left_itᵀ right_it` (Linear, Embedding and their transposes).
//!
//! Ghost norm (Goodfellow 2015; Li et al. 2022, "Large language models can be strong
//! differentially private learners", eq. 4; Bu et al. 2023, "Differentially private optimization
//! on large model at small cost", §3):
//! `‖G_i‖²_F = Σ_{t,s} (a_it·a_is)(g_it·g_is)`, and for the sum of two terms the cross term
//! `⟨A1ᵀG1, A2ᵀG2⟩ = Σ_{t,s} (a1_t·a2_s)(g1_t·g2_s)`. A one-hot factor (embedding ids) enters
//! the Gram products as an id comparison or a gather: the `[B, T, vocab]` one-hot is never built.

use core::any::Any;
use std::sync::Arc;

use burn::tensor::{Int, Tensor};
use burn_backend::tensor::{BoolTensor, FloatTensor, IndexingUpdateOp, IntTensor};
use burn_backend::{Backend, TensorMetadata};

use super::term::{NormCost, PerSampleTerm, TermRef};
use super::{prim, tensor, zero_rows};

/// One side of an outer-product gradient term: `[B, T, n]` dense, or one-hot ids `[B, T]` over `n`
/// classes (an embedding), never materialised.
#[derive(Clone, Debug)]
pub enum Factor<B: Backend> {
    /// Dense factor `[B, T, n]`.
    Dense(FloatTensor<B>),
    /// One-hot factor given by ids `[B, T]` over `n` classes.
    OneHot {
        /// Token ids `[B, T]`.
        ids: IntTensor<B>,
        /// Number of classes (embedding rows).
        n: usize,
    },
}

impl<B: Backend> Factor<B> {
    /// Number of samples `B`.
    pub fn samples(&self) -> usize {
        match self {
            Factor::Dense(t) => t.shape()[0],
            Factor::OneHot { ids, .. } => ids.shape()[0],
        }
    }
    /// Width `n` of the factor.
    pub fn width(&self) -> usize {
        match self {
            Factor::Dense(t) => t.shape()[2],
            Factor::OneHot { n, .. } => *n,
        }
    }
    /// Positions `T` per sample.
    pub fn positions(&self) -> usize {
        match self {
            Factor::Dense(t) => t.shape()[1],
            Factor::OneHot { ids, .. } => ids.shape()[1],
        }
    }

    fn zero_samples(&self, drop: &BoolTensor<B>) -> Self {
        match self {
            Factor::Dense(t) => Factor::Dense(zero_rows::<B>(t.clone(), drop)),
            // Token ids are finite by construction.
            one_hot @ Factor::OneHot { .. } => one_hot.clone(),
        }
    }
}

/// `G_i = Σ_t left_itᵀ right_it`, a `[p, q]` matrix per sample (Linear, Embedding, and their
/// transposes).
///
/// # Shapes
/// `left`: `[B, T, p]` (or one-hot ids `[B, T]` over `p`), `right`: `[B, T, q]` (or one-hot).
#[derive(Clone, Debug)]
pub struct OuterTerm<B: Backend> {
    /// `[B, T, p]` (or one-hot).
    pub left: Factor<B>,
    /// `[B, T, q]` (or one-hot).
    pub right: Factor<B>,
}

impl<B: Backend> OuterTerm<B> {
    /// The term `Σ_t left_tᵀ right_t`, shared.
    pub fn new_ref(left: Factor<B>, right: Factor<B>) -> TermRef<B> {
        Arc::new(OuterTerm { left, right })
    }
}

impl<B: Backend> PerSampleTerm<B> for OuterTerm<B> {
    fn samples(&self) -> usize {
        self.left.samples()
    }

    fn norm_cost(&self) -> NormCost {
        NormCost::gram(self.left.positions(), self.left.width(), self.right.width())
    }

    fn ghost_sq_norm(&self) -> Option<Tensor<B, 1>> {
        Some(ghost_sq_norm::<B>(&self.left, &self.right))
    }

    fn instantiate(&self) -> FloatTensor<B> {
        instantiate::<B>(&self.left, &self.right)
    }

    fn weighted_sum(&self, c: &Tensor<B, 1>) -> FloatTensor<B> {
        weighted_sum::<B>(&self.left, &self.right, c.clone())
    }

    /// `⟨A1ᵀG1, A2ᵀG2⟩ = Σ_{t,s} (a1_t·a2_s)(g1_t·g2_s)` with another outer term.
    fn cross_inner(&self, other: &dyn PerSampleTerm<B>) -> Option<Tensor<B, 1>> {
        let o = other.as_any().downcast_ref::<OuterTerm<B>>()?;
        Some(sum_bts(
            gram(&self.left, &o.left) * gram(&self.right, &o.right),
        ))
    }

    fn zero_samples(&self, drop: &BoolTensor<B>) -> TermRef<B> {
        Self::new_ref(self.left.zero_samples(drop), self.right.zero_samples(drop))
    }

    fn map_linear(&self, f: &dyn Fn(FloatTensor<B>) -> FloatTensor<B>) -> Option<TermRef<B>> {
        match (&self.left, &self.right) {
            (Factor::Dense(a), right) => {
                Some(Self::new_ref(Factor::Dense(f(a.clone())), right.clone()))
            }
            (left, Factor::Dense(g)) => {
                Some(Self::new_ref(left.clone(), Factor::Dense(f(g.clone()))))
            }
            _ => None,
        }
    }

    fn transposed(&self) -> Option<TermRef<B>> {
        Some(Self::new_ref(self.right.clone(), self.left.clone()))
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

fn ids_tensor<B: Backend>(ids: &burn_backend::tensor::IntTensor<B>) -> Tensor<B, 2, Int> {
    Tensor::from_primitive(ids.clone())
}

fn dense<B: Backend>(f: &Factor<B>) -> Tensor<B, 3> {
    match f {
        Factor::Dense(t) => tensor::<B, 3>(t.clone()),
        Factor::OneHot { ids, n } => {
            let ids = ids_tensor::<B>(ids);
            let [b, t] = ids.dims();
            let classes = Tensor::<B, 1, Int>::arange(0..*n as i64, &ids.device())
                .reshape([1, 1, *n])
                .expand([b, t, *n]);
            ids.reshape([b, t, 1])
                .expand([b, t, *n])
                .equal(classes)
                .float()
        }
    }
}

/// `out[b, t, s] = dense[b, s, ids[b, t]]`: the Gram product of a one-hot factor with a dense one.
fn pick<B: Backend>(
    ids: &burn_backend::tensor::IntTensor<B>,
    other: &Tensor<B, 3>,
) -> Tensor<B, 3> {
    let ids = ids_tensor::<B>(ids);
    let [b, t1] = ids.dims();
    let [_, t2, _] = other.dims();
    let idx = ids.reshape([b, t1, 1]).expand([b, t1, t2]);
    other.clone().swap_dims(1, 2).gather(1, idx)
}

/// Gram matrices `[B, T1, T2]`: `out[b, t, s] = ⟨f1[b, t], f2[b, s]⟩`.
fn gram<B: Backend>(f1: &Factor<B>, f2: &Factor<B>) -> Tensor<B, 3> {
    match (f1, f2) {
        (Factor::Dense(a), Factor::Dense(b)) => {
            tensor::<B, 3>(a.clone()).matmul(tensor::<B, 3>(b.clone()).swap_dims(1, 2))
        }
        (Factor::OneHot { ids, .. }, Factor::Dense(b)) => pick(ids, &tensor::<B, 3>(b.clone())),
        (Factor::Dense(a), Factor::OneHot { ids, .. }) => {
            pick(ids, &tensor::<B, 3>(a.clone())).swap_dims(1, 2)
        }
        (Factor::OneHot { ids: i1, .. }, Factor::OneHot { ids: i2, .. }) => {
            let (i1, i2) = (ids_tensor::<B>(i1), ids_tensor::<B>(i2));
            let [b, t1] = i1.dims();
            let [_, t2] = i2.dims();
            i1.reshape([b, t1, 1])
                .expand([b, t1, t2])
                .equal(i2.reshape([b, 1, t2]).expand([b, t1, t2]))
                .float()
        }
    }
}

fn sum_bts<B: Backend>(t: Tensor<B, 3>) -> Tensor<B, 1> {
    let [b, _, _] = t.dims();
    t.reshape([b as i64, -1]).sum_dim(1).reshape([b])
}

/// Ghost norms `[B]` of one outer term: `Σ_{t,s} (a_t·a_s)(g_t·g_s)`, guarded against
/// cancellation ([`super::cancellation::guarded_sum`]).
fn ghost_sq_norm<B: Backend>(left: &Factor<B>, right: &Factor<B>) -> Tensor<B, 1> {
    let products = gram(left, left) * gram(right, right);
    let [b, _, _] = products.dims();
    super::cancellation::guarded_sum(products.reshape([b as i64, -1]))
}

/// Scatters rows `values` `[B, T, q]` into `[B, n, q]` at `ids` `[B, T]`, per sample.
fn scatter_per_sample<B: Backend>(
    ids: &burn_backend::tensor::IntTensor<B>,
    n: usize,
    values: Tensor<B, 3>,
) -> Tensor<B, 3> {
    let ids = ids_tensor::<B>(ids);
    let [b, t] = ids.dims();
    let [_, _, q] = values.dims();
    let device = values.device();
    let offsets = Tensor::<B, 1, Int>::arange(0..b as i64, &device)
        .mul_scalar(n as i64)
        .reshape([b, 1]);
    let idx = (ids + offsets).reshape([b * t]);
    Tensor::<B, 2>::zeros([b * n, q], &device)
        .select_assign(0, idx, values.reshape([b * t, q]), IndexingUpdateOp::Add)
        .reshape([b, n, q])
}

/// Per-sample gradients `[B, p, q]` of one outer term.
fn instantiate<B: Backend>(
    left: &Factor<B>,
    right: &Factor<B>,
) -> burn_backend::tensor::FloatTensor<B> {
    let out = match (left, right) {
        // One position: an outer product, by broadcasting (cheaper than a batched matmul).
        (Factor::Dense(a), Factor::Dense(g)) if left.positions() == 1 => {
            tensor::<B, 3>(a.clone()).swap_dims(1, 2) * tensor::<B, 3>(g.clone())
        }
        (Factor::Dense(a), Factor::Dense(g)) => tensor::<B, 3>(a.clone())
            .swap_dims(1, 2)
            .matmul(tensor::<B, 3>(g.clone())),
        (Factor::OneHot { ids, n }, Factor::Dense(g)) => {
            scatter_per_sample(ids, *n, tensor::<B, 3>(g.clone()))
        }
        (Factor::Dense(a), Factor::OneHot { ids, n }) => {
            scatter_per_sample(ids, *n, tensor::<B, 3>(a.clone())).swap_dims(1, 2)
        }
        (l @ Factor::OneHot { .. }, r @ Factor::OneHot { .. }) => {
            return instantiate(&Factor::Dense(prim(dense(l))), r);
        }
    };
    prim(out)
}

/// `Σ_i c_i G_i` `[p, q]` for one outer term (one weighted product).
fn weighted_sum<B: Backend>(
    left: &Factor<B>,
    right: &Factor<B>,
    c: Tensor<B, 1>,
) -> burn_backend::tensor::FloatTensor<B> {
    let b = left.samples();
    let c = c.reshape([b, 1, 1]);
    let out = match (left, right) {
        (Factor::Dense(a), Factor::Dense(g)) => {
            let a = tensor::<B, 3>(a.clone()) * c;
            let g = tensor::<B, 3>(g.clone());
            let [_, t, p] = a.dims();
            let q = g.dims()[2];
            a.reshape([b * t, p])
                .transpose()
                .matmul(g.reshape([b * t, q]))
        }
        (Factor::OneHot { ids, n }, Factor::Dense(g)) => {
            scatter_sum(ids, *n, tensor::<B, 3>(g.clone()) * c)
        }
        (Factor::Dense(a), Factor::OneHot { ids, n }) => {
            scatter_sum(ids, *n, tensor::<B, 3>(a.clone()) * c).transpose()
        }
        (l @ Factor::OneHot { .. }, r @ Factor::OneHot { .. }) => {
            return weighted_sum(&Factor::Dense(prim(dense(l))), r, c.reshape([b]));
        }
    };
    prim(out)
}

/// Scatter-adds `values` `[B, T, q]` into `[n, q]` at `ids` `[B, T]`.
fn scatter_sum<B: Backend>(
    ids: &burn_backend::tensor::IntTensor<B>,
    n: usize,
    values: Tensor<B, 3>,
) -> Tensor<B, 2> {
    let ids = ids_tensor::<B>(ids);
    let [b, t] = ids.dims();
    let [_, _, q] = values.dims();
    let device = values.device();
    Tensor::<B, 2>::zeros([n, q], &device).select_assign(
        0,
        ids.reshape([b * t]),
        values.reshape([b * t, q]),
        IndexingUpdateOp::Add,
    )
}

/// Reshapes an activation `[B, ..., n]` to `[B, T, n]` (`T`: the product of the middle
/// dimensions, 1 for `[B, n]`).
pub fn as_btn<B: Backend>(
    t: burn_backend::tensor::FloatTensor<B>,
) -> burn_backend::tensor::FloatTensor<B> {
    let shape = t.shape();
    let dims = shape.as_slice();
    let b = dims[0];
    let n = dims[dims.len() - 1];
    let t_len: usize = if dims.len() >= 2 {
        dims[1..dims.len() - 1].iter().product()
    } else {
        1
    };
    B::float_reshape(t, burn_backend::Shape::new([b, t_len, n]))
}
