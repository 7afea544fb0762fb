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

pub(crate) mod intercept;
pub mod layout;
mod ops;
pub(crate) mod pass;
pub mod primitive;
pub mod transfer;

use core::marker::PhantomData;
use std::cell::Cell;

use burn_backend::backend::{Backend, BackendTypes, ExecutionError};
use burn_backend::DType;
use burn_backend::DTypeUsageSet;

pub(crate) use ops::HOOKED_OPS;
pub use pass::{read_without_privacy, BatchId};
pub use primitive::{Deferred, PsBool, PsInt, PsQuant, PsTensor, Tag, Tagged};

/// Backend decorator computing per-sample gradients inside burn's autodiff.
///
/// Use it as `Autodiff<PerSample<B>>`; it forwards every op to `B` and changes only what
/// parameter gradients become inside a per-sample backward scope.
#[derive(Clone, Copy, Debug, Default)]
pub struct PerSample<B> {
    _b: PhantomData<B>,
}

impl<B: Backend> BackendTypes for PerSample<B> {
    type Device = B::Device;

    type FloatTensorPrimitive = PsTensor<B>;
    type FloatElem = B::FloatElem;

    type IntTensorPrimitive = PsInt<B>;
    type IntElem = B::IntElem;

    type BoolTensorPrimitive = PsBool<B>;
    type BoolElem = B::BoolElem;

    type QuantizedTensorPrimitive = PsQuant<B>;
}

impl<B: Backend> Backend for PerSample<B> {
    fn name(device: &Self::Device) -> String {
        format!("per-sample<{}>", B::name(device))
    }

    fn seed(device: &Self::Device, seed: u64) {
        B::seed(device, seed)
    }

    fn sync(device: &Self::Device) -> Result<(), ExecutionError> {
        B::sync(device)
    }

    fn memory_persistent_allocations<
        Output: Send,
        Input: Send,
        Func: Fn(Input) -> Output + Send,
    >(
        device: &Self::Device,
        input: Input,
        func: Func,
    ) -> Output {
        B::memory_persistent_allocations(device, input, func)
    }

    fn memory_cleanup(device: &Self::Device) {
        B::memory_cleanup(device)
    }

    fn staging<'a, Iter>(data: Iter, device: &Self::Device)
    where
        Iter: Iterator<Item = &'a mut burn_backend::TensorData>,
    {
        B::staging(data, device);
    }

    fn supports_dtype(device: &Self::Device, dtype: DType) -> bool {
        B::supports_dtype(device, dtype)
    }

    fn dtype_usage(device: &Self::Device, dtype: DType) -> DTypeUsageSet {
        B::dtype_usage(device, dtype)
    }

    fn device_count(type_id: u16) -> usize {
        B::device_count(type_id)
    }
}

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
