//! Device memory in use and reserved, as the backend's allocator reports it: cubecl's memory
//! statistics (`ComputeClient::memory_usage`) on CUDA, ROCm and wgpu (feature `cubecl-noise`, on
//! with `cuda` and `wgpu`), nothing on Flex and NdArray, whose tensors are ordinary host memory
//! (read the process's resident set instead).
//!
//! `bench train` prints it after the timed steps (`device_bytes_in_use`,
//! `device_bytes_reserved`). cubecl keeps the pages it allocated in its pools, so the reserved
//! bytes after a step bound the step's peak in use from above (as long as the pools were not
//! cleaned up, `Backend::memory_cleanup`); the bytes in use after a step are what outlives it
//! (parameters, optimizer state, anything held across steps).

use burn::backend::NdArray;
use burn::tensor::backend::Backend;
use burn_ndarray::{
    FloatNdArrayElement, IntNdArrayElement, NdArrayTensor, QuantElement, SharedArray,
};

/// Memory of one device, from its allocator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceMemoryUsage {
    /// Bytes of the live allocations (without padding).
    pub bytes_in_use: u64,
    /// Bytes the allocator holds on the device: in use, padding, and free pages kept for reuse.
    pub bytes_reserved: u64,
    /// Live allocations.
    pub allocations: u64,
}

/// A backend whose device allocator can be asked for its memory use.
pub trait DeviceMemory: Backend {
    /// The memory the allocator of `device` holds now; `None` where the backend has no device
    /// allocator to ask (Flex, NdArray) or the query failed. Queued work is not waited for: call it
    /// after `Backend::sync` for the memory of finished work.
    fn memory_usage(device: &Self::Device) -> Option<DeviceMemoryUsage>;
}

/// NdArray's tensors live in host memory: no device allocator.
impl<E: FloatNdArrayElement, I: IntNdArrayElement, Q: QuantElement> DeviceMemory
    for NdArray<E, I, Q>
where
    NdArrayTensor: From<SharedArray<E>>,
    NdArrayTensor: From<SharedArray<I>>,
{
    fn memory_usage(_device: &Self::Device) -> Option<DeviceMemoryUsage> {
        None
    }
}

/// Flex's tensors live in host memory: no device allocator.
impl DeviceMemory for burn_flex::Flex {
    fn memory_usage(_device: &Self::Device) -> Option<DeviceMemoryUsage> {
        None
    }
}

#[cfg(feature = "cubecl-noise")]
mod cube {
    use burn_cubecl::{BoolElement, CubeBackend, CubeRuntime, FloatElement, IntElement};
    use burn_fusion::{Fusion, FusionBackend};

    use super::{DeviceMemory, DeviceMemoryUsage};

    /// cubecl's statistics of the device's compute client.
    impl<R, F, I, BT> DeviceMemory for CubeBackend<R, F, I, BT>
    where
        R: CubeRuntime,
        F: FloatElement,
        I: IntElement,
        BT: BoolElement,
    {
        fn memory_usage(device: &Self::Device) -> Option<DeviceMemoryUsage> {
            let usage = R::client(device).memory_usage().ok()?;
            Some(DeviceMemoryUsage {
                bytes_in_use: usage.bytes_in_use,
                bytes_reserved: usage.bytes_reserved,
                allocations: usage.number_allocs,
            })
        }
    }

    /// Fusion allocates through the backend it fuses for (same device).
    impl<B: FusionBackend + DeviceMemory> DeviceMemory for Fusion<B> {
        fn memory_usage(device: &Self::Device) -> Option<DeviceMemoryUsage> {
            B::memory_usage(device)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ndarray_has_no_device_allocator() {
        assert_eq!(NdArray::<f32>::memory_usage(&Default::default()), None);
    }

    #[test]
    fn flex_has_no_device_allocator() {
        assert_eq!(burn_flex::Flex::memory_usage(&Default::default()), None);
    }
}
