//! Host↔device transfer counters of the [`PerSample`](super::PerSample) backend.
//!
//! Every op of `PerSample<B>` that moves tensor data between the host and the device records its
//! byte count here: `float_from_data`, `int_from_data`, `bool_from_data` and `q_from_data` (host →
//! device), and `float_into_data`, `int_into_data`, `bool_into_data` and `q_into_data` (device →
//! host, counted when the returned future resolves). Each device → host read is also counted as
//! one read ([`TransferBytes::host_reads`]): on an asynchronous device (CUDA, wgpu) a read waits
//! for every queued kernel, so it is a synchronisation of the device. The counters are
//! process-global atomics, shared by every thread and device; read them around the code you
//! measure:
//!
//! ```
//! use burn_dp::backend::transfer;
//! transfer::reset();
//! // ... a DP step ...
//! let moved = transfer::read();
//! assert_eq!(moved.to_device + moved.to_host, moved.total());
//! assert_eq!(moved.host_reads, 0);
//! ```
//!
//! The library's own reads and writes on the inner backend `B` (the statistics of
//! `BatchStats` and `StepStats` when asked for, noise drawn on the host for a backend without a
//! kernel) go
//! through [`download_inner`] and [`upload_inner`], so they are counted too. Copies between devices
//! (`*_to_device`) and the inner backend's own staging are not counted.

use core::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};

use burn_backend::{ExecutionError, TensorData};

static TO_DEVICE: AtomicU64 = AtomicU64::new(0);
static TO_HOST: AtomicU64 = AtomicU64::new(0);
static HOST_READS: AtomicU64 = AtomicU64::new(0);

/// Bytes of tensor data moved between the host and the device since the last [`reset`], and the
/// number of device → host reads.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TransferBytes {
    /// Bytes uploaded by `*_from_data` (host → device).
    pub to_device: u64,
    /// Bytes downloaded by `*_into_data` (device → host).
    pub to_host: u64,
    /// Device → host reads (`*_into_data` calls and the library's own reads), whatever their
    /// size: each one waits for the device, a synchronisation on an asynchronous backend.
    pub host_reads: u64,
}

impl TransferBytes {
    /// Both directions together, in bytes.
    pub fn total(&self) -> u64 {
        self.to_device + self.to_host
    }

    /// What was counted between `earlier` and `self` (two [`read`]s, `earlier` first; a
    /// [`reset`] in between gives zeros rather than wrapping).
    pub fn since(&self, earlier: &TransferBytes) -> TransferBytes {
        TransferBytes {
            to_device: self.to_device.saturating_sub(earlier.to_device),
            to_host: self.to_host.saturating_sub(earlier.to_host),
            host_reads: self.host_reads.saturating_sub(earlier.host_reads),
        }
    }
}

/// Sets every counter to zero.
pub fn reset() {
    TO_DEVICE.store(0, Ordering::SeqCst);
    TO_HOST.store(0, Ordering::SeqCst);
    HOST_READS.store(0, Ordering::SeqCst);
}

/// The counters now.
pub fn read() -> TransferBytes {
    TransferBytes {
        to_device: TO_DEVICE.load(Ordering::SeqCst),
        to_host: TO_HOST.load(Ordering::SeqCst),
        host_reads: HOST_READS.load(Ordering::SeqCst),
    }
}

fn record_download(data: &TensorData) {
    TO_HOST.fetch_add(data.as_bytes().len() as u64, Ordering::SeqCst);
    HOST_READS.fetch_add(1, Ordering::SeqCst);
}

/// Records an upload of `data` (called by the `*_from_data` ops).
pub(crate) fn uploaded(data: &TensorData) {
    TO_DEVICE.fetch_add(data.as_bytes().len() as u64, Ordering::SeqCst);
}

/// Records the download `read` resolves to (wraps the `*_into_data` ops' futures).
// An `async fn` would not state the `Send` bound the backend traits require of the future.
#[allow(clippy::manual_async_fn)]
pub(crate) fn downloaded(
    read: impl Future<Output = Result<TensorData, ExecutionError>> + Send,
) -> impl Future<Output = Result<TensorData, ExecutionError>> + Send {
    async move {
        let data = read.await?;
        record_download(&data);
        Ok(data)
    }
}

/// Reads a tensor of the inner backend to the host, counted (the library's own reads).
pub(crate) fn download_inner<B: burn::tensor::backend::Backend, const D: usize, K>(
    tensor: burn::tensor::Tensor<B, D, K>,
) -> TensorData
where
    K: burn::tensor::BasicOps<B>,
{
    let data = tensor.into_data();
    record_download(&data);
    data
}

#[cfg(test)]
/// Uploads host data to the inner backend, counted (the library's own writes).
pub(crate) fn upload_inner<B: burn_backend::Backend>(
    data: TensorData,
    device: &B::Device,
) -> burn_backend::tensor::FloatTensor<B> {
    TO_DEVICE.fetch_add(data.as_bytes().len() as u64, Ordering::SeqCst);
    B::float_from_data(data, device)
}

#[cfg(test)]
mod tests {
    use burn::backend::NdArray;
    use burn::tensor::{Bool, Int, Tensor, TensorData};

    use crate::PerSample;

    type B = PerSample<NdArray<f32>>;

    #[test]
    fn every_upload_and_download_is_counted_in_bytes() {
        let dev = Default::default();
        super::reset();
        let x = Tensor::<B, 2>::from_data(TensorData::new(vec![1.0f32; 6], [2, 3]), &dev);
        let ids = Tensor::<B, 1, Int>::from_data(TensorData::new(vec![1i64, 2, 3, 4], [4]), &dev);
        let mask = Tensor::<B, 1, Bool>::from_data(TensorData::new(vec![true; 5], [5]), &dev);
        // f32 [2, 3] = 24 bytes; i64 [4] = 32 bytes (NdArray's int element); bool [5] = 5 bytes.
        assert_eq!(super::read().to_device, 24 + 32 + 5);
        assert_eq!(super::read().to_host, 0);

        let _ = x.clone().into_data();
        let _ = ids.into_data();
        let _ = mask.into_data();
        let moved = super::read();
        assert_eq!(moved.to_host, 24 + 32 + 5);
        assert_eq!(moved.host_reads, 3, "one read per into_data");
        // Ops on the device move nothing.
        let _ = (x.clone() * 2.0).sum_dim(1);
        assert_eq!(super::read(), moved);
        assert_eq!(moved.total(), 2 * (24 + 32 + 5));

        let later = super::read();
        assert_eq!(later.since(&moved), super::TransferBytes::default());
        super::reset();
        assert_eq!(super::read(), super::TransferBytes::default());
    }
}
