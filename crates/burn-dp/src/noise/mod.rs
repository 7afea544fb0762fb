//! Randomness on the privacy path: the Gaussian noise of every DP step, and the generator of
//! Poisson sampling.
//!
//! # The noise generator
//!
//! The noise is a **counter-based** ChaCha20 stream ([`chacha`]): a 256-bit [`NoiseKey`] (from the
//! operating system by default, from a fixed seed only with
//! [`NoiseSource::FixedSeedForExperiments`]) and the ChaCha20 block function, whose input counter
//! is made of the DP step and the block index, give every element's normal as a pure function of
//! `(key, step, global element index)`. Nothing else is state: a generator's position is one
//! integer (the next step), the stream can be cut anywhere and computed in any order, and the
//! same algorithm runs
//!
//! - on the host for Flex and NdArray, multi-threaded over whole blocks
//!   ([`chacha::fill_gaussian`]), and
//! - as one cubecl kernel on cubecl backends (feature `cubecl-noise`, on by `cuda`), so a CUDA
//!   step draws its noise on the device, with no host work and no host↔device transfer
//!   proportional to the number of parameters.
//!
//! Uniforms become normals by the Box–Muller transform in f32, with 56 random bits in the radius
//! uniform so the tails reach 8.89σ (see [`chacha`] for the layout and the tail bound). A fixed
//! key gives the same words on host and device; the normals agree to a few ulps (the
//! transcendental functions `ln`, `sin`, `cos` of each platform differ in the last bits).
//!
//! In a DP step the optimizer draws step `s` (its counter, incremented once per logical step
//! before anything is drawn, so no `(key, step)` is ever used twice) and gives parameter `k`, in
//! the model's visiting order, the blocks after those of parameters `0..k`
//! (`Σ_j ⌈numel_j / 10⌉`): parameters never share a block.
//!
//! The backends implement [`NoiseBackend`]; another backend can implement it with
//! [`gaussian_noise_via_host`] (which uploads the host stream).
//!
//! # Poisson sampling
//!
//! [`SecureRng`] is `rand_chacha`'s ChaCha20 with a saveable word position; the sampler draws its
//! Bernoulli decisions from it on the host (one per example, not per parameter).

use burn::tensor::backend::Backend;
use burn::tensor::ops::FloatTensor;
use burn::tensor::{DType, TensorData};
use burn_ndarray::{
    FloatNdArrayElement, IntNdArrayElement, NdArray, NdArrayTensor, QuantElement, SharedArray,
};
use rand::rngs::OsRng;
use rand::{Rng, RngCore, SeedableRng, TryRngCore};
use rand_chacha::ChaCha20Rng;
use serde::{Deserialize, Serialize};

use crate::error::DpError;

pub mod chacha;
#[cfg(feature = "cubecl-noise")]
pub mod cube;

/// Where the privacy randomness comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoiseSource {
    /// ChaCha20 seeded from the operating system (the default; its state is never saved).
    Os,
    /// ChaCha20 from a fixed seed: REPRODUCIBLE EXPERIMENTS ONLY. Anyone with the seed can
    /// reproduce the noise, so a fixed seed gives no privacy against someone who knows it.
    FixedSeedForExperiments(u64),
}

/// A cryptographically secure generator (ChaCha20) with a saveable position.
#[derive(Debug, Clone)]
pub struct SecureRng {
    rng: ChaCha20Rng,
    source: NoiseSource,
}

/// The saved position of a fixed-seed generator (an OS-seeded one is reseeded on resume).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RngState {
    /// The fixed seed.
    pub seed: u64,
    /// ChaCha20 stream.
    pub stream: u64,
    /// ChaCha20 word position.
    pub word_pos: u128,
}

impl SecureRng {
    /// A generator for `source`; `stream` separates independent uses (noise, sampling).
    pub fn new(source: NoiseSource, stream: u64) -> Self {
        let mut rng = match source {
            NoiseSource::Os => ChaCha20Rng::from_os_rng(),
            NoiseSource::FixedSeedForExperiments(seed) => ChaCha20Rng::seed_from_u64(seed),
        };
        rng.set_stream(stream);
        SecureRng { rng, source }
    }

    /// Whether this generator is seeded for experiments (not private against the seed holder).
    pub fn is_fixed_seed(&self) -> bool {
        matches!(self.source, NoiseSource::FixedSeedForExperiments(_))
    }

    /// The position to save, for a fixed-seed generator only.
    pub fn state(&self) -> Option<RngState> {
        match self.source {
            NoiseSource::FixedSeedForExperiments(seed) => Some(RngState {
                seed,
                stream: self.rng.get_stream(),
                word_pos: self.rng.get_word_pos(),
            }),
            NoiseSource::Os => None,
        }
    }

    /// Restores a saved fixed-seed position.
    pub fn restore(state: RngState) -> Self {
        let mut rng = ChaCha20Rng::seed_from_u64(state.seed);
        rng.set_stream(state.stream);
        rng.set_word_pos(state.word_pos);
        SecureRng {
            rng,
            source: NoiseSource::FixedSeedForExperiments(state.seed),
        }
    }

    /// A Bernoulli(p) draw.
    pub fn bernoulli(&mut self, p: f64) -> bool {
        self.rng.random::<f64>() < p
    }
}

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

/// The generator of the DP optimizer's noise: a key and the next step of the counter-based stream.
#[derive(Debug, Clone)]
pub struct NoiseGenerator {
    key: NoiseKey,
    source: NoiseSource,
    next_step: u64,
}

/// The noise generator's entry in a checkpoint. An OS-seeded generator writes only that it was
/// one (its key never leaves the process); a fixed-seed one writes its seed and position.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "source", rename_all = "snake_case")]
pub enum NoiseCheckpoint {
    /// OS randomness: a resumed run draws a fresh key.
    Os,
    /// A fixed seed (experiments only) and the next noise step to draw.
    FixedSeedForExperiments {
        /// The seed.
        seed: u64,
        /// The next step of the stream.
        next_step: u64,
    },
}

impl NoiseGenerator {
    /// A generator for `source` at step 0.
    pub fn new(source: NoiseSource) -> Result<Self, DpError> {
        let key = match source {
            NoiseSource::Os => NoiseKey::from_os()?,
            NoiseSource::FixedSeedForExperiments(seed) => NoiseKey::from_fixed_seed(seed),
        };
        Ok(NoiseGenerator {
            key,
            source,
            next_step: 0,
        })
    }

    /// Where the key came from.
    pub fn source(&self) -> NoiseSource {
        self.source
    }

    /// Whether the key comes from a fixed seed (not private against the seed holder).
    pub fn is_fixed_seed(&self) -> bool {
        matches!(self.source, NoiseSource::FixedSeedForExperiments(_))
    }

    /// The key (secret; see [`NoiseKey::words`]).
    pub fn key(&self) -> &NoiseKey {
        &self.key
    }

    /// The next step to be drawn.
    pub fn next_step(&self) -> u64 {
        self.next_step
    }

    /// Reserves the next step of the stream and returns it: every later draw uses another step,
    /// so no `(key, step)` pair is used twice even if the caller fails after drawing.
    pub fn begin_step(&mut self) -> Result<u64, DpError> {
        let step = self.next_step;
        self.next_step = step.checked_add(1).ok_or_else(|| {
            DpError::Randomness("the noise stream's 2^64 steps are used up".into())
        })?;
        Ok(step)
    }

    /// What a checkpoint stores.
    pub fn checkpoint(&self) -> NoiseCheckpoint {
        match self.source {
            NoiseSource::Os => NoiseCheckpoint::Os,
            NoiseSource::FixedSeedForExperiments(seed) => {
                NoiseCheckpoint::FixedSeedForExperiments {
                    seed,
                    next_step: self.next_step,
                }
            }
        }
    }

    /// The fixed-seed generator a checkpoint saved, at its saved position.
    pub fn restore_fixed_seed(seed: u64, next_step: u64) -> Self {
        NoiseGenerator {
            key: NoiseKey::from_fixed_seed(seed),
            source: NoiseSource::FixedSeedForExperiments(seed),
            next_step,
        }
    }

    /// `n` values of `std · N(0, 1)` of `step` from block `first_block` on, on `B`'s device.
    ///
    /// # Shapes
    /// Returns `[n]`, f32.
    pub fn gaussian<B: NoiseBackend>(
        &self,
        step: u64,
        first_block: u64,
        n: usize,
        std: f32,
        device: &B::Device,
    ) -> burn::tensor::Tensor<B, 1> {
        let draw = NoiseDraw {
            key: self.key.clone(),
            step,
            first_block,
            n,
            std,
        };
        burn::tensor::Tensor::from_primitive(burn::tensor::TensorPrimitive::Float(
            B::gaussian_noise(&draw, device),
        ))
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

/// A backend that can draw the DP noise stream ([`chacha`]'s layout) where its tensors live.
pub trait NoiseBackend: Backend {
    /// The values of `draw` on `device`. Implementations must produce the same ChaCha20 words as
    /// [`chacha::chacha20_block`] and the same Box–Muller transform as [`chacha::box_muller`].
    ///
    /// # Shapes
    /// Returns `[draw.n]`, f32.
    fn gaussian_noise(draw: &NoiseDraw, device: &Self::Device) -> FloatTensor<Self>;
}

/// The noise drawn on the host (multi-threaded) and uploaded with `from_data`: for backends that
/// have no kernel of their own. It moves `4·n` bytes to the device.
///
/// # Shapes
/// Returns `[n]`, f32.
pub fn gaussian_noise_via_host<B: Backend>(draw: &NoiseDraw, device: &B::Device) -> FloatTensor<B> {
    crate::backend::transfer::upload_inner::<B>(
        TensorData::new(draw.host_values(), [draw.n]).convert_dtype(DType::F32),
        device,
    )
}

/// NdArray: the host path, multi-threaded, moved into the tensor without a copy.
impl<E: FloatNdArrayElement, I: IntNdArrayElement, Q: QuantElement> NoiseBackend
    for NdArray<E, I, Q>
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
impl NoiseBackend for burn_flex::Flex {
    fn gaussian_noise(draw: &NoiseDraw, _device: &Self::Device) -> FloatTensor<Self> {
        burn_flex::FlexTensor::from_data(TensorData::new(draw.host_values(), [draw.n]))
    }
}

/// burn-cuda's `Cuda` (`Fusion<CubeBackend<CudaRuntime, ..>>` with its default `fusion` feature)
/// draws its noise with the kernel: checked at compile time.
#[cfg(feature = "cuda")]
#[allow(dead_code)]
fn cuda_draws_noise_on_the_device() {
    fn noise_backend<B: NoiseBackend>() {}
    noise_backend::<burn_cuda::Cuda>();
    noise_backend::<burn_cuda::Cuda<f32, i32>>();
}
