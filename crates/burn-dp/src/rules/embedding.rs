//! Rule for `burn::nn::Embedding`: autodiff calls `embedding_backward(weights, output_grad,
//! indices)`; the rule caches `OuterTerm(one-hot(ids), g)`, so `G_i[v] = Σ_{t: ids_it = v} g_it`
//! — repeated ids within a sample accumulate. Ghost norms compare ids instead of building a
//! `[B, T, vocab]` one-hot.

use burn_backend::{Backend, Shape, TensorMetadata};

use super::outer::{as_btn, Factor, OuterTerm};
use super::term::{OpCall, PerSampleRule};
use crate::backend::Deferred;

/// The rule for `embedding_backward(weights, output_grad, indices)`.
#[derive(Debug, Clone, Copy)]
pub struct EmbeddingWeight;

impl<B: Backend> PerSampleRule<B> for EmbeddingWeight {
    fn op(&self) -> &'static str {
        "embedding_backward"
    }

    fn cache(&self, call: &OpCall<'_, B>) -> Option<Deferred<B>> {
        let shape = call.float("weights")?.shape();
        let g = call.float("output_grad")?;
        let g3 = as_btn::<B>(g.clone());
        let [b, t, _] = g3.shape().dims();
        let ids = B::int_reshape(call.int("indices")?.clone(), Shape::new([b, t]));
        let term = OuterTerm::new_ref(Factor::OneHot { ids, n: shape[0] }, Factor::Dense(g3));
        Some(Deferred::from_term(
            shape,
            g,
            term,
            call.taint(&["output_grad", "weights", "indices"]),
        ))
    }
}
