//! The settings every private training run shares, whichever loop drives it: the run's own loop
//! ([`PrivateTrainer`](crate::PrivateTrainer)), burn-train's `Learner` (`burn-dp-train`) or the
//! peers of a data-parallel run (`burn-dp-distributed`). Each of them builds its Poisson sampler and
//! its [`DpOptimizer`] here, so they cannot disagree on q, on the divisor `q·N` or on the seed.

use std::ops::Range;

use burn::tensor::backend::Backend;

use crate::engine::PerSampleConfig;
use crate::error::DpError;
use crate::noise::NoiseSource;
use crate::optim::DpOptimizer;
use crate::privacy::PrivacyState;
use crate::sampling::PoissonSampler;

/// How one private run clips, what it may spend, what it samples from and where its randomness
/// comes from. Every field is required: there is no default for a privacy setting.
///
/// ```text
/// PrivateSetup ──sampler()────────────→ PoissonSampler   (rate privacy.sample_rate over N rows)
///              ──peer_sampler(r, K)───→ PoissonSampler   (the same rate over peer r's shard)
///              ──optimizer(inner, s)──→ DpOptimizer      (owns s; divides by s.expected_batch_size())
/// ```
#[derive(Debug, Clone)]
pub struct PrivateSetup {
    /// Clipping and the per-sample mode (ghost norms or instantiation).
    pub per_sample: PerSampleConfig,
    /// σ, q, δ, the target ε and the accountant.
    pub privacy: PrivacyState,
    /// Rows in the private data set (`N`; public, as in Opacus: q·N is the expected batch).
    pub dataset_size: usize,
    /// Rows per physical batch: the memory knob, it does not change the guarantee.
    pub physical_batch_size: usize,
    /// Seeds the noise and the sampler ([`NoiseSource::Os`] unless the run is an experiment that
    /// need not be private against whoever knows the seed).
    pub noise: NoiseSource,
}

impl PrivateSetup {
    /// The Poisson sampler over the whole data set, at `privacy.sample_rate`.
    pub fn sampler(&self) -> Result<PoissonSampler, DpError> {
        PoissonSampler::new(
            self.dataset_size,
            self.privacy.sample_rate,
            self.physical_batch_size,
            self.noise,
        )
    }

    /// The sampler of peer `rank` of `world` in a data-parallel run: Poisson at the global rate
    /// over the peer's [`shard_range`], with the global expected batch size, so that the union of
    /// the peers' draws is one Poisson sample of the whole data set
    /// ([`PoissonSampler::for_shard`]).
    pub fn peer_sampler(&self, rank: u32, world: u32) -> Result<PoissonSampler, DpError> {
        if world == 0 || rank >= world {
            return Err(DpError::InvalidConfig(format!(
                "peer {rank} of a group of {world}: the rank must be below the group size"
            )));
        }
        PoissonSampler::for_shard(
            self.dataset_size,
            shard_range(self.dataset_size, rank, world),
            rank,
            self.privacy.sample_rate,
            self.physical_batch_size,
            self.noise,
        )
    }

    /// The DP step object around `inner` that draws its batches with `sampler` (its q must be
    /// `privacy.sample_rate`; the step divides by its expected batch size).
    pub fn optimizer<O, B: Backend>(
        self,
        inner: O,
        sampler: PoissonSampler,
    ) -> Result<DpOptimizer<O, B>, DpError> {
        DpOptimizer::new(inner, self.per_sample, self.privacy, sampler, self.noise)
    }
}

/// The global indices of peer `rank`'s shard when `dataset_size` examples are split into `world`
/// contiguous, disjoint shards that cover `0..dataset_size` (sizes differ by at most one).
pub fn shard_range(dataset_size: usize, rank: u32, world: u32) -> Range<usize> {
    let (r, k) = (rank as usize, world.max(1) as usize);
    (r * dataset_size / k)..((r + 1) * dataset_size / k)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_are_disjoint_and_cover_the_data_set() {
        for n in [0usize, 1, 7, 100, 101] {
            for k in 1..=5u32 {
                let mut next = 0;
                for r in 0..k {
                    let s = shard_range(n, r, k);
                    assert_eq!(s.start, next);
                    assert!(s.len() + 1 >= n / k as usize);
                    next = s.end;
                }
                assert_eq!(next, n);
            }
        }
    }
}
