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
//! [`NoiseBackend`] is sealed: burn-dp implements it (through the crate-private [`DrawNoise`])
//! for Flex, NdArray and the cubecl backends, whose draws its tests compare with the host stream.
//!
//! # Poisson sampling
//!
//! [`SecureRng`] is `rand_chacha`'s ChaCha20 with a saveable word position; the sampler draws its
//! Bernoulli decisions from it on the host (one per example, not per parameter).

use burn::tensor::backend::Backend;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;
use serde::{Deserialize, Serialize};

use crate::error::DpError;

pub(crate) mod chacha;
#[cfg(feature = "cubecl-noise")]
mod cube;
mod draw;

pub(crate) use draw::{DrawNoise, NoiseDraw, NoiseKey};

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

    /// Whether the key comes from a fixed seed (not private against the seed holder).
    pub fn is_fixed_seed(&self) -> bool {
        matches!(self.source, NoiseSource::FixedSeedForExperiments(_))
    }

    /// The key (secret; see [`NoiseKey::words`]).
    #[cfg(test)]
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

/// A backend that draws the DP noise stream where its tensors live: Flex and NdArray on the
/// host (multi-threaded, moved into the tensor without a copy), and burn's cubecl backends (CUDA,
/// wgpu, with or without fusion; feature `cubecl-noise`) with one kernel on the device.
///
/// Sealed: burn-dp implements it for the backends whose draws it tests against the host stream,
/// so no other implementation can produce a different (or a reused) noise stream.
pub trait NoiseBackend: Backend + DrawNoise {}

impl<B: DrawNoise> NoiseBackend for B {}
