//! The `PerSample<B>` backend decorator.
//!
//! `PerSample<B>` is used *inside* burn's autodiff: `Autodiff<PerSample<B>>` (alias
//! [`DpAutodiff`](crate::DpAutodiff)). Autodiff computes every parameter gradient by calling ops
//! of its inner backend (`linear_weight_backward(x, g)`, `conv2d_weight_backward`,
//! `embedding_backward`, and `float_sum_dim(·, 0)` for parameters broadcast over the batch).
//! Inside a per-sample backward scope (see [`crate::engine`]) those calls are offered to the
//! rules ([`crate::rules`]) and return a deferred per-sample gradient ([`PsTensor::Deferred`])
//! that caches what the rule needs (activations and output gradients) instead of summing over the
//! batch. Everything else is forwarded to `B` (`ops/`, generated, one file per op trait, with a
//! hook for every op a rule may intercept) with a batch [`Tag`] that records whether per-sample
//! structure is intact; the ops written by hand are listed in `intercept.rs`.

pub(crate) mod decorator;
pub(crate) mod intercept;
pub mod layout;
mod ops;
pub(crate) mod pass;
mod primitive;
pub mod transfer;

use std::cell::Cell;

pub(crate) use decorator::PerSample;
pub(crate) use ops::HOOKED_OPS;
pub(crate) use pass::BatchId;
pub use primitive::{Deferred, PsBool, PsInt, PsQuant, PsTensor, Tag, Tagged};

thread_local! {
    static IN_SCOPE: Cell<bool> = const { Cell::new(false) };
    static RULE_CALLS: Cell<usize> = const { Cell::new(0) };
}

/// Counts a rule invocation (a term cached) in the current backward pass.
pub(crate) fn count_rule_call() {
    RULE_CALLS.with(|c| c.set(c.get() + 1));
}

/// Rule invocations (cached terms) in this thread's last per-sample backward pass.
pub fn rule_calls_in_last_pass() -> usize {
    RULE_CALLS.with(|c| c.get())
}

/// Whether the current thread is running a per-sample backward pass.
pub(crate) fn in_scope() -> bool {
    IN_SCOPE.with(|s| s.get())
}

/// Runs `f` (a `backward()` call: burn runs it synchronously on this thread) with the rules on.
pub(crate) fn with_scope<R>(f: impl FnOnce() -> R) -> R {
    struct Reset(bool);
    impl Drop for Reset {
        fn drop(&mut self) {
            IN_SCOPE.with(|s| s.set(self.0));
        }
    }
    let _reset = Reset(IN_SCOPE.with(|s| s.replace(true)));
    RULE_CALLS.with(|c| c.set(0));
    f()
}
