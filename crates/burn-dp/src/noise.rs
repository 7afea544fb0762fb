//! Randomness on the privacy path: Gaussian noise and Poisson sampling draw from ChaCha20.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;
use rand_distr::StandardNormal;
use serde::{Deserialize, Serialize};

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

    /// `n` draws of N(0, std²), in f32.
    pub fn gaussian(&mut self, n: usize, std: f64) -> Vec<f32> {
        (0..n)
            .map(|_| (self.rng.sample::<f64, _>(StandardNormal) * std) as f32)
            .collect()
    }

    /// A Bernoulli(p) draw.
    pub fn bernoulli(&mut self, p: f64) -> bool {
        self.rng.random::<f64>() < p
    }
}
