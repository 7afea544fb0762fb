//! The plumbing of a noise draw: the stream's key, one draw's parameters and the backend hook
//! that materialises it. Private to the crate: a user picks a [`NoiseSource`](super::NoiseSource)
//! and a backend that is a [`NoiseBackend`](super::NoiseBackend); the key never leaves the
//! process, and only the backends burn-dp has checked draw the stream.

use burn::tensor::backend::Backend;
use burn::tensor::ops::FloatTensor;
use burn::tensor::TensorData;
use burn_ndarray::{
    FloatNdArrayElement, IntNdArrayElement, NdArray, NdArrayTensor, QuantElement, SharedArray,
};
use rand::rngs::OsRng;
use rand::{RngCore, SeedableRng, TryRngCore};
use rand_chacha::ChaCha20Rng;

use super::chacha;
use crate::error::DpError;

/// The 256-bit ChaCha20 key of the noise stream. Whoever holds it can reproduce every noise draw,
/// so it never leaves the process for an OS-seeded run (no `Debug` output, no serialisation).
#[derive(Clone, PartialEq, Eq)]
pub struct NoiseKey([u32; 8]);

impl std::fmt::Debug for NoiseKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("NoiseKey(<secret>)")
    }
}

/// The `rand_chacha` stream from which a fixed seed's noise key is derived (the sampler uses
/// stream 1 of the same seed, the old noise generator used stream 0).
const FIXED_SEED_KEY_STREAM: u64 = 2;

impl NoiseKey {
    /// 32 bytes from the operating system's generator.
    pub fn from_os() -> Result<Self, DpError> {
        let mut bytes = [0u8; 32];
        OsRng
            .try_fill_bytes(&mut bytes)
            .map_err(|e| DpError::Randomness(e.to_string()))?;
        Ok(Self::from_bytes(bytes))
    }

    /// The key of a fixed seed: REPRODUCIBLE EXPERIMENTS ONLY (anyone with the seed has the key).
    /// The first 32 bytes of `rand_chacha`'s ChaCha20 seeded by `seed_from_u64(seed)`, stream 2.
    pub fn from_fixed_seed(seed: u64) -> Self {
        let mut rng = ChaCha20Rng::seed_from_u64(seed);
        rng.set_stream(FIXED_SEED_KEY_STREAM);
        let mut bytes = [0u8; 32];
        rng.fill_bytes(&mut bytes);
        Self::from_bytes(bytes)
    }

    /// A key from 32 bytes, read as eight little-endian words (RFC 8439 §2.3).
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        NoiseKey(std::array::from_fn(|i| {
            u32::from_le_bytes(bytes[4 * i..4 * i + 4].try_into().expect("4 bytes"))
        }))
    }

    /// The key words, for a [`NoiseBackend`] implementation. Secret: never log or store them
    /// for an OS-seeded run.
    pub fn words(&self) -> &[u32; 8] {
        &self.0
    }
}

/// One draw of the noise stream: `n` values of `std · z`, where `z` are the standard normals of
/// the global elements `10·first_block .. 10·first_block + n` of noise step `step` under `key`
/// (see [`chacha`]).
#[derive(Clone, Debug)]
pub struct NoiseDraw {
    /// The stream's key.
    pub key: NoiseKey,
    /// The DP step (the ChaCha20 nonce).
    pub step: u64,
    /// The first ChaCha20 block (10 normals per block).
    pub first_block: u64,
    /// Values to draw.
    pub n: usize,
    /// Their standard deviation.
    pub std: f32,
}

impl NoiseDraw {
    /// The draw on the host (multi-threaded).
    pub fn host_values(&self) -> Vec<f32> {
        chacha::gaussian_vec(
            self.key.words(),
            self.step,
            self.first_block,
            self.n,
            self.std,
        )
    }
}

/// How a backend draws the DP noise stream ([`chacha`]'s layout) where its tensors live: the
/// sealed supertrait of [`NoiseBackend`](super::NoiseBackend), implemented in this crate only.
pub trait DrawNoise: Backend {
    /// The values of `draw` on `device`. Implementations must produce the same ChaCha20 words as
    /// [`chacha::chacha20_block`] and the same Box–Muller transform as [`chacha::box_muller`].
    ///
    /// # Shapes
    /// Returns `[draw.n]`, f32.
    fn gaussian_noise(draw: &NoiseDraw, device: &Self::Device) -> FloatTensor<Self>;
}

/// NdArray: the host path, multi-threaded, moved into the tensor without a copy.
impl<E: FloatNdArrayElement, I: IntNdArrayElement, Q: QuantElement> DrawNoise for NdArray<E, I, Q>
where
    NdArrayTensor: From<SharedArray<E>>,
    NdArrayTensor: From<SharedArray<I>>,
{
    fn gaussian_noise(draw: &NoiseDraw, _device: &Self::Device) -> FloatTensor<Self> {
        let array: SharedArray<f32> =
            ndarray::ArcArray::from_shape_vec(ndarray::IxDyn(&[draw.n]), draw.host_values())
                .expect("a vector of n values has shape [n]");
        NdArrayTensor::from(array)
    }
}

/// Flex: the host path, multi-threaded, moved into the tensor without a copy (`TensorData::new`
/// takes the vector's allocation).
impl DrawNoise for burn_flex::Flex {
    fn gaussian_noise(draw: &NoiseDraw, _device: &Self::Device) -> FloatTensor<Self> {
        burn_flex::FlexTensor::from_data(TensorData::new(draw.host_values(), [draw.n]))
    }
}

/// burn-cuda's `Cuda` (`Fusion<CubeBackend<CudaRuntime, ..>>` with its default `fusion` feature)
/// draws its noise with the kernel: checked at compile time.
#[cfg(feature = "cuda")]
#[allow(dead_code)]
fn cuda_draws_noise_on_the_device() {
    fn noise_backend<B: super::NoiseBackend>() {}
    noise_backend::<burn_cuda::Cuda>();
    noise_backend::<burn_cuda::Cuda<f32, i32>>();
}
