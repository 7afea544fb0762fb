//! Poisson sampling (each example joins a logical batch with probability q, independently), as the
//! privacy accountants assume, cut into fixed-shape physical batches with a mask.

use std::ops::Range;

use serde::{Deserialize, Serialize};

use crate::error::DpError;
use crate::noise::{NoiseSource, RngState, SecureRng};

/// Draws logical batches by Poisson sampling.
#[derive(Debug, Clone)]
pub struct PoissonSampler {
    dataset_size: usize,
    shard: Range<usize>,
    sample_rate: f64,
    physical_batch_size: usize,
    rng: SecureRng,
}

/// Saved state of a sampler (the generator position only for fixed seeds).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SamplerState {
    /// Generator position, `None` for an OS-seeded sampler.
    pub rng: Option<RngState>,
}

/// One logical batch: the examples of one DP step.
#[derive(Debug, Clone, PartialEq)]
pub struct LogicalBatch {
    /// Indices of the examples drawn (possibly none).
    pub indices: Vec<usize>,
    physical_batch_size: usize,
}

/// A fixed-shape slice of a logical batch. Rows past the end repeat the slice's first example and
/// have mask 0: [`DpOptimizer::backward`](crate::DpOptimizer::backward) takes the physical batch
/// and multiplies the per-sample losses by the mask itself, so padding rows contribute exactly
/// zero and no accumulate path exists without the mask.
#[derive(Debug, Clone, PartialEq)]
pub struct PhysicalBatch {
    /// `physical_batch_size` example indices.
    pub indices: Vec<usize>,
    /// 1 for real rows, 0 for padding.
    pub mask: Vec<f32>,
}

/// A physical batch open for its forward pass ([`PhysicalBatch::open`]); it closes when its
/// backward pass ends, or when dropped.
///
/// While it is open, every host tensor uploaded with its number of rows in dimension 0 (labels,
/// one-hot encodings, masks, an input you forgot to mark) is taken to be the batch, and its rows
/// get this batch's identity, so that rows of another batch (a kept activation) cannot meet them.
/// Reading batch data back to the host while it is open refuses the pass (`DpError::HostRead`).
#[derive(Debug)]
pub struct OpenBatch {
    id: crate::backend::BatchId,
}

impl Drop for OpenBatch {
    fn drop(&mut self) {
        if crate::backend::pass::open_batch().is_some_and(|open| open.id == self.id) {
            crate::backend::pass::close();
        }
    }
}

impl PhysicalBatch {
    /// A physical batch of these indices, all real (no padding).
    pub fn unpadded(indices: Vec<usize>) -> Self {
        let mask = vec![1.0; indices.len()];
        PhysicalBatch { indices, mask }
    }

    /// Opens this batch on the current thread, before its forward pass (the training loops do
    /// this for you): see [`OpenBatch`]. Any batch open before is closed.
    pub fn open(&self) -> OpenBatch {
        OpenBatch {
            id: crate::backend::pass::open(self.indices.len()).id,
        }
    }
}

impl PoissonSampler {
    /// A sampler over `dataset_size` examples with rate `q`, in physical batches of fixed size.
    pub fn new(
        dataset_size: usize,
        sample_rate: f64,
        physical_batch_size: usize,
        source: NoiseSource,
    ) -> Result<Self, DpError> {
        if dataset_size == 0 || physical_batch_size == 0 {
            return Err(DpError::InvalidConfig(
                "dataset size and physical batch size must be positive".into(),
            ));
        }
        if !(sample_rate > 0.0 && sample_rate <= 1.0) {
            return Err(DpError::InvalidConfig(format!(
                "sample rate must be in (0, 1], got {sample_rate}"
            )));
        }
        // Stream 1: independent of the noise generator (stream 0) even with the same seed.
        Ok(PoissonSampler {
            dataset_size,
            shard: 0..dataset_size,
            sample_rate,
            physical_batch_size,
            rng: SecureRng::new(source, 1),
        })
    }

    /// A sampler for one peer of a data-parallel run: it draws only the examples of `shard` (a
    /// range of global indices) and returns global indices, each example with probability q
    /// independently, while its expected batch size stays the global `q·N` (`N` =
    /// `dataset_size`), the divisor of every peer's DP step. The shards of the peers must be
    /// disjoint and cover `0..N`: then the union of their draws is one Poisson sample of the whole
    /// data set at rate q, which is what the accountant assumes.
    ///
    /// `shard_index` separates the peers' generators: shard 0 draws the stream of
    /// [`PoissonSampler::new`]; with a fixed seed every shard gets its own stream, so peers
    /// sharing a seed still draw independently.
    pub fn for_shard(
        dataset_size: usize,
        shard: Range<usize>,
        shard_index: u32,
        sample_rate: f64,
        physical_batch_size: usize,
        source: NoiseSource,
    ) -> Result<Self, DpError> {
        if shard.start > shard.end || shard.end > dataset_size {
            return Err(DpError::InvalidConfig(format!(
                "shard {shard:?} is not a range of the {dataset_size} examples"
            )));
        }
        let mut sampler = Self::new(dataset_size, sample_rate, physical_batch_size, source)?;
        sampler.rng = SecureRng::new(source, 1 + ((shard_index as u64) << 32));
        sampler.shard = shard;
        Ok(sampler)
    }

    /// The global indices this sampler draws from (`0..N` unless built by
    /// [`PoissonSampler::for_shard`]).
    pub fn shard(&self) -> Range<usize> {
        self.shard.clone()
    }

    /// Expected logical batch size `q·N` (what the DP step divides by).
    pub fn expected_batch_size(&self) -> f64 {
        self.sample_rate * self.dataset_size as f64
    }

    /// Whether the sampler draws from a fixed seed (its batches are public to the seed holder).
    pub fn is_fixed_seed(&self) -> bool {
        self.rng.is_fixed_seed()
    }

    /// The sampling rate q.
    pub fn sample_rate(&self) -> f64 {
        self.sample_rate
    }

    /// The dataset size N.
    pub fn dataset_size(&self) -> usize {
        self.dataset_size
    }

    /// Refuses a sampler whose q is not the privacy accounting's `sample_rate` (relative
    /// difference above 1e-12): ε is computed for that q, so batches drawn at another rate would
    /// make it wrong.
    pub fn check_sample_rate(&self, sample_rate: f64) -> Result<(), DpError> {
        if !same_rate(self.sample_rate, sample_rate) {
            return Err(DpError::SamplingMismatch {
                what: "the sampler's sample rate",
                sample_rate,
                expected: sample_rate,
                found: self.sample_rate,
            });
        }
        Ok(())
    }

    /// Draws the next logical batch.
    pub fn next_batch(&mut self) -> LogicalBatch {
        let indices = self
            .shard
            .clone()
            .filter(|_| self.rng.bernoulli(self.sample_rate))
            .collect();
        LogicalBatch {
            indices,
            physical_batch_size: self.physical_batch_size,
        }
    }

    /// State to save in a checkpoint.
    pub fn state(&self) -> SamplerState {
        SamplerState {
            rng: self.rng.state(),
        }
    }

    /// Restores a saved state (an OS-seeded sampler is reseeded from the OS).
    pub fn restore(&mut self, state: &SamplerState) {
        if let Some(s) = state.rng {
            self.rng = SecureRng::restore(s);
        }
    }
}

/// Whether two rates (or expected batch sizes) are equal up to a relative 1e-12 (rounding of
/// the same value computed two ways).
pub(crate) fn same_rate(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-12 * a.abs().max(b.abs())
}

impl LogicalBatch {
    /// Whether no example was drawn (the DP step still adds noise: see `DpOptimizer::step_empty`).
    pub fn is_empty(&self) -> bool {
        self.indices.is_empty()
    }

    /// The physical batches, each exactly `physical_batch_size` rows.
    pub fn physical(&self) -> Vec<PhysicalBatch> {
        self.indices
            .chunks(self.physical_batch_size)
            .map(|chunk| {
                let mut indices = chunk.to_vec();
                let mut mask = vec![1.0; chunk.len()];
                // Padding repeats an example already in this slice (never one that was not
                // drawn), and its mask is 0.
                indices.resize(self.physical_batch_size, chunk[0]);
                mask.resize(self.physical_batch_size, 0.0);
                PhysicalBatch { indices, mask }
            })
            .collect()
    }
}
