//! Outer-product gradients `G_i = Σ_t left_itᵀ right_it` (Linear, Embedding and their transposes).
//!
//! Ghost norm (Goodfellow 2015; Li et al. 2022, "Large language models can be strong
//! differentially private learners", eq. 4; Bu et al. 2023, "Differentially private optimization
//! on large model at small cost", §3):
//! `‖G_i‖²_F = Σ_{t,s} (a_it·a_is)(g_it·g_is)`, and for the sum of two terms the cross term
//! `⟨A1ᵀG1, A2ᵀG2⟩ = Σ_{t,s} (a1_t·a2_s)(g1_t·g2_s)`. A one-hot factor (embedding ids) enters
//! the Gram products as an id comparison or a gather: the `[B, T, vocab]` one-hot is never built.

use burn::tensor::{Int, Tensor};
use burn_backend::tensor::IndexingUpdateOp;
use burn_backend::{Backend, TensorMetadata};

use super::{prim, tensor};
use crate::backend::{Factor, Term};

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
pub(crate) fn gram<B: Backend>(f1: &Factor<B>, f2: &Factor<B>) -> Tensor<B, 3> {
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

/// Ghost norms `[B]` of one outer term: `Σ_{t,s} (a_t·a_s)(g_t·g_s)`.
pub(crate) fn ghost_sq_norm<B: Backend>(left: &Factor<B>, right: &Factor<B>) -> Tensor<B, 1> {
    sum_bts(gram(left, left) * gram(right, right))
}

/// Squared per-sample norms `[B]` of a sum of outer terms, cross terms included (tied weights).
pub(crate) fn sq_norm_sum<B: Backend>(terms: &[Term<B>]) -> Tensor<B, 1> {
    let pairs: Vec<(&Factor<B>, &Factor<B>)> = terms
        .iter()
        .filter_map(|t| match t {
            Term::Outer { left, right } => Some((left, right)),
            _ => None,
        })
        .collect();
    let mut total: Option<Tensor<B, 1>> = None;
    for (k, (lk, rk)) in pairs.iter().enumerate() {
        for (l, (ll, rl)) in pairs.iter().enumerate().skip(k) {
            let mut v = sum_bts(gram(lk, ll) * gram(rk, rl));
            if l != k {
                v = v.mul_scalar(2.0);
            }
            total = Some(match total {
                Some(t) => t + v,
                None => v,
            });
        }
    }
    total.expect("at least one outer term")
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
pub(crate) fn instantiate<B: Backend>(
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
pub(crate) fn weighted_sum<B: Backend>(
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

/// Reshapes an activation `[B, ..., n]` to `[B, T, n]`.
pub(crate) fn as_btn<B: Backend>(
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
