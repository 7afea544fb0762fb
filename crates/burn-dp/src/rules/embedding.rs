//! Rule for `burn::nn::Embedding`: autodiff calls `embedding_backward(weight, g, ids)`; the rule
//! caches `Outer(one-hot(ids), g)`, so `G_i[v] = Σ_{t: ids_it = v} g_it` — repeated ids within a
//! sample accumulate. Ghost norms compare ids instead of building a `[B, T, vocab]` one-hot.

use burn_backend::tensor::{FloatTensor, IntTensor};
use burn_backend::{Backend, Shape, TensorMetadata};

use super::outer::as_btn;
use crate::backend::{Deferred, Factor, Tag, Term};

/// The deferred gradient of `embedding(weight, ids)`.
pub(crate) fn weight<B: Backend>(
    weight: &FloatTensor<B>,
    g: FloatTensor<B>,
    ids: IntTensor<B>,
    taint: Tag,
) -> Deferred<B> {
    let shape = weight.shape();
    let (dtype, device) = (g.dtype(), B::float_device(&g));
    let g = as_btn::<B>(g);
    let [b, t, _] = g.shape().dims();
    let ids = B::int_reshape(ids, Shape::new([b, t]));
    Deferred {
        shape: shape.clone(),
        dtype,
        device,
        terms: vec![Term::Outer {
            left: Factor::OneHot { ids, n: shape[0] },
            right: Factor::Dense(g),
        }],
        taint,
    }
}
