//! The decorator itself: `PerSample<B>`'s types and its `Backend` implementation (everything
//! forwarded to `B`; the ops are in `ops/`).

use core::marker::PhantomData;

use burn_backend::backend::{Backend, BackendTypes, ExecutionError};
use burn_backend::DType;
use burn_backend::DTypeUsageSet;

use super::primitive::{PsBool, PsInt, PsQuant, PsTensor};

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
