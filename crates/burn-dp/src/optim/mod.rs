//! DP optimizers: any burn `Optimizer` wrapped with per-sample clipping, Gaussian noise, scaling,
//! gradient accumulation to a logical batch, privacy accounting and checkpoints.
//!
//! One logical step (Abadi et al. 2016, Algorithm 1; Bu et al. 2023 for automatic clipping):
//!
//! ```text
//! for each physical batch:  S += Σ_i c_i g_i                (clip and accumulate; backward)
//! once per logical batch:   S += N(0, σ² R² I)              (add noise; every trainable param)
//!                           g  = S / E[|logical batch|]      (scale)
//!                           θ  = inner.step(lr, θ, g)        (inner step)
//! ```

use std::collections::HashMap;
use std::path::Path;

use burn::module::{AutodiffModule, ParamId};
use burn::optim::Optimizer;
use burn::record::{FullPrecisionSettings, NamedMpkFileRecorder, Recorder};
use burn::tensor::backend::Backend;
use burn::tensor::{Bool, DType, Tensor};
use burn_dp_accountant::{Accountant, Epsilon};
use serde::{Deserialize, Serialize};

use crate::clip::ClippingFn;
use crate::engine::{clipped_backward_masked, ClippedGradients, DpAutodiff, PerSampleConfig};
use crate::error::DpError;
use crate::noise::chacha::NORMALS_PER_BLOCK;
use crate::noise::{NoiseBackend, NoiseCheckpoint, NoiseGenerator, NoiseSource};
use crate::privacy::PrivacyState;
use crate::sampling::{same_rate, PhysicalBatch, PoissonSampler, SamplerState};

mod finish;
pub use finish::{FlatAllReduce, Reducer, SingleProcess};

/// Clipped sums accumulated over the physical batches of one logical batch.
struct Accumulated<B: Backend> {
    sums: HashMap<ParamId, Tensor<B, 1>>,
    sensitivity: f64,
    samples: usize,
    stats: DeviceStepStats<B>,
}

/// What one physical batch contributed, kept on the device: reading it is up to the caller
/// ([`BatchStats::read`], one device → host read), so a training loop that does not look makes
/// no host read per physical batch.
///
/// PRIVATE: the norms are computed from one example each, without noise; use them for debugging
/// on data you may see, never publish or log them beside the model.
#[derive(Clone)]
pub struct BatchStats<B: Backend> {
    /// Samples in the physical batch (masked rows included).
    pub samples: usize,
    norms: Tensor<B, 1>,
    non_finite_mask: Tensor<B, 1, Bool>,
}

impl<B: Backend> core::fmt::Debug for BatchStats<B> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        // Printing must not read the device.
        f.debug_struct("BatchStats")
            .field("samples", &self.samples)
            .finish_non_exhaustive()
    }
}

impl<B: Backend> BatchStats<B> {
    /// Per-sample gradient norms (flat, before clipping), on the device.
    ///
    /// # Shapes
    /// `[B]`.
    pub fn norms(&self) -> Tensor<B, 1> {
        self.norms.clone()
    }

    /// `true` for the samples whose loss or gradient norm was not finite, on the device.
    ///
    /// # Shapes
    /// `[B]`.
    pub fn non_finite_mask(&self) -> Tensor<B, 1, Bool> {
        self.non_finite_mask.clone()
    }

    /// Reads the norms and the non-finite samples to the host in one device → host read (none
    /// for an empty batch).
    pub fn read(&self) -> Result<BatchStatsValues, DpError> {
        let b = self.samples;
        if b == 0 {
            return Ok(BatchStatsValues {
                samples: 0,
                norms: Vec::new(),
                non_finite: Vec::new(),
            });
        }
        let both = Tensor::cat(
            vec![
                self.norms.clone().cast(DType::F32),
                self.non_finite_mask.clone().float().cast(DType::F32),
            ],
            0,
        );
        let values = read_f32(both, "the batch statistics")?;
        let (norms, mask) = values.split_at(b);
        Ok(BatchStatsValues {
            samples: b,
            norms: norms.to_vec(),
            non_finite: mask
                .iter()
                .enumerate()
                .filter(|(_, &bad)| bad != 0.0)
                .map(|(i, _)| i)
                .collect(),
        })
    }
}

/// [`BatchStats`] read to the host.
#[derive(Debug, Clone, PartialEq)]
pub struct BatchStatsValues {
    /// Samples in the physical batch (masked rows included).
    pub samples: usize,
    /// Per-sample gradient norms (flat, before clipping; NaN or ±∞ for a non-finite sample).
    /// PRIVATE, as [`BatchStats`] says.
    pub norms: Vec<f32>,
    /// Samples whose loss or gradient norm was not finite (NaN or ±∞), in batch order: each
    /// contributed exactly zero to the clipped sum (see [`clipped_backward`]).
    pub non_finite: Vec<usize>,
}

/// Statistics of one logical batch (all its physical batches), read by
/// [`DpOptimizer::last_step_stats`].
///
/// PRIVATE: computed from the examples without noise (the largest norm is one example's); for
/// debugging on data you may see, never to publish beside the model.
#[derive(Debug, Clone, PartialEq)]
pub struct StepStats {
    /// Rows of the physical batches, padding rows included (0 for an empty Poisson batch).
    pub samples: usize,
    /// Physical batches accumulated.
    pub physical_batches: usize,
    /// Samples with a non-finite loss or gradient norm, dropped (they contributed exactly zero).
    pub non_finite: usize,
    /// Samples with norm + 10⁻⁶ above the threshold `C` of some group that uses
    /// [`ClippingFn::Abadi`](crate::ClippingFn::Abadi) clipping (their factor `c_i < 1`);
    /// `None` when no group does (automatic clipping scales every sample).
    pub clipped: Option<usize>,
    /// Sum of the per-sample gradient norms (flat, before clipping) over the finite samples;
    /// padding rows count with norm 0. Summed in f32 on the device.
    pub norm_sum: f64,
    /// The largest finite per-sample gradient norm (0 for an empty batch).
    pub norm_max: f64,
}

/// [`StepStats`] while the logical batch is accumulated: device tensors, added per physical
/// batch without reading anything back.
#[derive(Clone)]
struct DeviceStepStats<B: Backend> {
    samples: usize,
    physical_batches: usize,
    counts_clipping: bool,
    /// f32 `[non-finite samples, clipped samples, Σ finite norms, max finite norm]`.
    values: Option<(Tensor<B, 1>, Tensor<B, 1>)>,
}

impl<B: Backend> DeviceStepStats<B> {
    fn empty() -> Self {
        DeviceStepStats {
            samples: 0,
            physical_batches: 0,
            counts_clipping: false,
            values: None,
        }
    }

    /// Adds one physical batch (device ops only).
    fn add(&mut self, clipped: &ClippedGradients<B>) {
        self.samples += clipped.batch_size;
        self.physical_batches += 1;
        let abadi: Vec<_> = clipped
            .groups
            .iter()
            .filter(|(_, _, f)| matches!(f, ClippingFn::Abadi { .. }))
            .collect();
        self.counts_clipping |= !abadi.is_empty();
        if clipped.batch_size == 0 {
            return;
        }
        let bad = clipped.non_finite_mask.clone();
        let count = |mask: Tensor<B, 1, Bool>| mask.float().cast(DType::F32).sum();
        let clipped_samples = abadi
            .iter()
            .map(|(_, norms, f)| f.factors(norms.clone()).lower_elem(1.0))
            .reduce(|a, b| a.bool_or(b))
            .map(|any| count(any.bool_and(bad.clone().bool_not())))
            .unwrap_or_else(|| Tensor::zeros([1], (&bad.device(), DType::F32)));
        let finite = clipped
            .norms
            .clone()
            .cast(DType::F32)
            .mask_fill(bad.clone(), 0.0);
        let sums = Tensor::cat(vec![count(bad), clipped_samples, finite.clone().sum()], 0);
        let max = finite.max();
        self.values = Some(match self.values.take() {
            None => (sums, max),
            Some((s, m)) => (s + sums, m.max_pair(max)),
        });
    }

    /// Reads the statistics: one device → host read (none for an empty logical batch).
    fn read(&self) -> Result<StepStats, DpError> {
        let mut stats = StepStats {
            samples: self.samples,
            physical_batches: self.physical_batches,
            non_finite: 0,
            clipped: self.counts_clipping.then_some(0),
            norm_sum: 0.0,
            norm_max: 0.0,
        };
        if let Some((sums, max)) = &self.values {
            let v = read_f32(
                Tensor::cat(vec![sums.clone(), max.clone()], 0),
                "the step statistics",
            )?;
            // Counts are sums of ones in f32: exact below 2²⁴ samples per logical batch.
            stats.non_finite = v[0] as usize;
            stats.clipped = self.counts_clipping.then_some(v[1] as usize);
            stats.norm_sum = f64::from(v[2]);
            stats.norm_max = f64::from(v[3]);
        }
        Ok(stats)
    }
}

/// Reads a small f32 tensor to the host (one counted device → host read).
fn read_f32<B: Backend>(t: Tensor<B, 1>, what: &str) -> Result<Vec<f32>, DpError> {
    crate::backend::transfer::download_inner(t)
        .convert::<f32>()
        .to_vec::<f32>()
        .map_err(|e| DpError::InvalidConfig(format!("reading {what}: {e:?}")))
}

/// A DP optimizer around `inner` (e.g. burn's `Sgd`, `Adam`, `AdamW` adaptors).
pub struct DpOptimizer<O, B: Backend> {
    inner: O,
    per_sample: PerSampleConfig,
    privacy: PrivacyState,
    expected_batch_size: f64,
    noise: NoiseGenerator,
    accumulated: Option<Accumulated<B>>,
    /// The statistics of the last logical batch stepped on, still on the device.
    last_step: Option<DeviceStepStats<B>>,
}

/// DP state saved beside burn's model and optimizer records.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DpCheckpointState {
    /// σ, q, δ, accountant history, budget.
    pub privacy: PrivacyState,
    /// Expected logical batch size.
    pub expected_batch_size: f64,
    /// The noise generator: `Os` (its key is never written) or a fixed seed and its position.
    pub noise: NoiseCheckpoint,
    /// Sampler state, when a sampler was saved.
    pub sampler: Option<SamplerState>,
}

impl<O, B: Backend> DpOptimizer<O, B> {
    /// Wraps `inner` for batches drawn by `sampler`.
    ///
    /// The sampling rate has one source: the sampler's q must be the q `privacy` accounts for
    /// ([`DpError::SamplingMismatch`] otherwise), and the noisy sum is divided by the sampler's
    /// expected logical batch size `q·N` ([`PoissonSampler::expected_batch_size`]).
    pub fn new(
        inner: O,
        per_sample: PerSampleConfig,
        privacy: PrivacyState,
        sampler: &PoissonSampler,
        noise: NoiseSource,
    ) -> Result<Self, DpError> {
        per_sample.clipping.validate()?;
        sampler.check_sample_rate(privacy.sample_rate)?;
        let expected_batch_size = sampler.expected_batch_size();
        Ok(DpOptimizer {
            inner,
            per_sample,
            privacy,
            expected_batch_size,
            noise: NoiseGenerator::new(noise)?,
            accumulated: None,
            last_step: None,
        })
    }

    /// The privacy state (σ, q, δ, history).
    pub fn privacy(&self) -> &PrivacyState {
        &self.privacy
    }

    /// ε spent so far at the run's δ.
    pub fn epsilon(&self) -> Result<Epsilon, DpError> {
        self.privacy.epsilon()
    }

    /// The per-sample settings: clipping function and style, norm mode.
    pub fn per_sample_config(&self) -> &PerSampleConfig {
        &self.per_sample
    }

    /// Whether the noise comes from a fixed seed (not private against the seed holder).
    pub fn is_fixed_seed(&self) -> bool {
        self.noise.is_fixed_seed()
    }

    /// The noise step the next DP step will draw (the noise stream's position).
    pub fn next_noise_step(&self) -> u64 {
        self.noise.next_step()
    }

    /// The wrapped optimizer (for its record, when checkpoints are written by other means than
    /// [`DpOptimizer::save_checkpoint`], e.g. burn-train's `Learner` through `burn-dp-train`).
    pub fn inner(&self) -> &O {
        &self.inner
    }

    /// Replaces the wrapped optimizer (to restore its state from a record). σ, q, δ, the
    /// accountant, the noise stream and any accumulated clipped sums are unchanged.
    pub fn set_inner(&mut self, inner: O) {
        self.inner = inner;
    }

    /// Clip and accumulate one physical batch: runs the per-sample backward pass on `losses`,
    /// multiplied by `batch`'s padding mask here (padding rows contribute exactly zero), and adds
    /// `Σ_i c_i g_i` to the logical batch. Open the batch ([`PhysicalBatch::open`]) before its
    /// forward pass, as [`crate::PrivateTrainer`] does.
    ///
    /// Nothing is read back to the host: the returned [`BatchStats`] and the logical batch's
    /// statistics ([`DpOptimizer::last_step_stats`]) stay on the device until asked for.
    ///
    /// # Shapes
    /// `losses`: `[P]` per-sample losses of the rows of `batch`.
    pub fn backward<M: AutodiffModule<DpAutodiff<B>>>(
        &mut self,
        model: &M,
        losses: Tensor<DpAutodiff<B>, 1>,
        batch: &PhysicalBatch,
    ) -> Result<BatchStats<B>, DpError> {
        let clipped = clipped_backward_masked(&self.per_sample, model, losses, batch)?;
        let stats = BatchStats {
            samples: clipped.batch_size,
            norms: clipped.norms.clone(),
            non_finite_mask: clipped.non_finite_mask.clone(),
        };
        self.accumulate(clipped)?;
        Ok(stats)
    }

    /// Adds clipped sums computed elsewhere (consumed: they cannot be added twice), and their
    /// statistics, on the device.
    pub fn accumulate(&mut self, clipped: ClippedGradients<B>) -> Result<(), DpError> {
        if !clipped.is_masked() {
            return Err(DpError::UnmaskedBatch);
        }
        match &mut self.accumulated {
            None => {
                let mut stats = DeviceStepStats::empty();
                stats.add(&clipped);
                self.accumulated = Some(Accumulated {
                    sums: clipped.sums,
                    sensitivity: clipped.sensitivity,
                    samples: clipped.batch_size,
                    stats,
                });
            }
            Some(acc) => {
                if (acc.sensitivity - clipped.sensitivity).abs() > 1e-12 * acc.sensitivity.max(1.0)
                {
                    return Err(DpError::SensitivityMismatch(
                        acc.sensitivity,
                        clipped.sensitivity,
                    ));
                }
                if acc.sums.len() != clipped.sums.len()
                    || clipped.sums.keys().any(|k| !acc.sums.contains_key(k))
                {
                    return Err(DpError::ParamMismatch(
                        "physical batches of one logical batch train different parameters".into(),
                    ));
                }
                acc.stats.add(&clipped);
                for (id, sum) in clipped.sums {
                    let prev = acc.sums.remove(&id).expect("checked above");
                    acc.sums.insert(id, prev + sum);
                }
                acc.samples += clipped.batch_size;
            }
        }
        Ok(())
    }

    /// The statistics of the last logical batch a DP step was taken on (`None` before the first
    /// step): samples, non-finite and clipped counts, norm sum and maximum. They were accumulated
    /// on the device; this reads them in one device → host read (none after an empty batch).
    /// PRIVATE, as [`StepStats`] says.
    pub fn last_step_stats(&self) -> Result<Option<StepStats>, DpError> {
        self.last_step
            .as_ref()
            .map(DeviceStepStats::read)
            .transpose()
    }

    /// Drops the clipped sums of an unfinished logical batch (after an error in one of its
    /// physical batches: a partial batch must never be stepped on).
    pub(crate) fn discard_accumulated(&mut self) {
        self.accumulated = None;
    }

    /// The accumulated (clipped, not yet noised) sum for a parameter, flattened.
    pub fn accumulated_sum(&self, id: &ParamId) -> Option<Tensor<B, 1>> {
        self.accumulated
            .as_ref()
            .and_then(|a| a.sums.get(id).cloned())
    }
}

#[cfg(test)]
impl<O, B: Backend> DpOptimizer<O, B> {
    /// [`DpOptimizer::backward`] on a batch whose rows are all real (tests).
    pub(crate) fn backward_unpadded<M: AutodiffModule<DpAutodiff<B>>>(
        &mut self,
        model: &M,
        losses: Tensor<DpAutodiff<B>, 1>,
    ) -> Result<BatchStats<B>, DpError> {
        let rows = losses.dims()[0];
        self.backward(model, losses, &PhysicalBatch::unpadded((0..rows).collect()))
    }
}

impl<O, B: Backend> DpOptimizer<O, B> {
    /// Refuses a sampler that does not draw at this optimizer's rate: its q must be the privacy
    /// state's, and its `q·N` the expected batch size the update is divided by.
    fn check_sampler(&self, sampler: &PoissonSampler) -> Result<(), DpError> {
        sampler.check_sample_rate(self.privacy.sample_rate)?;
        if !same_rate(sampler.expected_batch_size(), self.expected_batch_size) {
            return Err(DpError::SamplingMismatch {
                what: "the sampler's expected batch size q·N",
                sample_rate: self.privacy.sample_rate,
                expected: self.expected_batch_size,
                found: sampler.expected_batch_size(),
            });
        }
        Ok(())
    }

    /// A checkpoint must describe the same sampling as this optimizer (built from its sampler):
    /// the same q and the same expected batch size; and the sampler to restore must match too.
    fn check_checkpoint_sampling(
        &self,
        state: &DpCheckpointState,
        sampler: Option<&PoissonSampler>,
    ) -> Result<(), DpError> {
        let q = self.privacy.sample_rate;
        if !same_rate(state.privacy.sample_rate, q) {
            return Err(DpError::SamplingMismatch {
                what: "the checkpoint's sample rate",
                sample_rate: q,
                expected: q,
                found: state.privacy.sample_rate,
            });
        }
        if !same_rate(state.expected_batch_size, self.expected_batch_size) {
            return Err(DpError::SamplingMismatch {
                what: "the checkpoint's expected batch size",
                sample_rate: q,
                expected: self.expected_batch_size,
                found: state.expected_batch_size,
            });
        }
        match sampler {
            Some(sampler) => self.check_sampler(sampler),
            None => Ok(()),
        }
    }
}

/// Which part of the noise one peer of a data-parallel step adds (see
/// [`DpOptimizer::step_all_reduced`]): every trainable parameter is cut into `shards` contiguous
/// slices of elements, aligned to the noise stream's blocks ([`NoiseShare::elements`]), and the
/// peer whose index is `shard` noises slice `shard` of every parameter. Over all `shards` peers
/// every element gets its noise exactly once, and each peer draws about `1/shards` of it whatever
/// the parameters' sizes (one huge embedding does not land on one peer). The values are those a
/// single process draws for the same key and step (an element keeps its place in the stream), so
/// a fixed-seed run on `K` peers adds the same noise as on one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NoiseShare {
    /// This peer's index, `0..shards`.
    pub shard: usize,
    /// Number of peers that share the noise.
    pub shards: usize,
}

impl NoiseShare {
    /// All the noise on this process (a single process, or "noise on peer 0" with
    /// [`NoiseShare::none`] on the others).
    pub fn all() -> Self {
        NoiseShare {
            shard: 0,
            shards: 1,
        }
    }

    /// The elements of a parameter of `numel` elements that this share noises: the boundaries
    /// `b_j = min(numel, ⌈j·numel / shards⌉ rounded up to a multiple of the stream's block)`,
    /// `b_0 = 0`, `b_shards = numel`, give slice `b_shard .. b_shard+1`; the slices of all shards
    /// are disjoint and cover `0..numel`, and each starts on a block boundary, so it can be drawn
    /// on its own at the single-process values.
    pub fn elements(&self, numel: usize) -> std::ops::Range<usize> {
        let shards = self.shards.max(1);
        let bound = |j: usize| {
            let even = (j as u128 * numel as u128).div_ceil(shards as u128) as usize;
            (even.div_ceil(NORMALS_PER_BLOCK) * NORMALS_PER_BLOCK).min(numel)
        };
        bound(self.shard.min(shards))..bound((self.shard + 1).min(shards))
    }

    fn validate(&self) -> Result<(), DpError> {
        if self.shards == 0 || self.shard >= self.shards {
            return Err(DpError::InvalidConfig(format!(
                "noise share {} of {} does not exist",
                self.shard, self.shards
            )));
        }
        Ok(())
    }
}

impl<O, B: NoiseBackend> DpOptimizer<O, B> {
    /// One DP step on the accumulated logical batch: add noise, scale, inner step, account.
    pub fn step<M>(&mut self, lr: f64, model: M) -> Result<M, DpError>
    where
        M: AutodiffModule<DpAutodiff<B>>,
        O: Optimizer<M, DpAutodiff<B>>,
    {
        if self.accumulated.is_none() {
            return Err(DpError::NoGradients);
        }
        self.finish(lr, model, &mut SingleProcess)
    }

    /// The DP step for an empty logical batch (Poisson sampling can draw none): the update is
    /// noise only, and the step is accounted like any other.
    pub fn step_empty<M>(&mut self, lr: f64, model: M) -> Result<M, DpError>
    where
        M: AutodiffModule<DpAutodiff<B>>,
        O: Optimizer<M, DpAutodiff<B>>,
    {
        if self.accumulated.is_some() {
            return Err(DpError::InvalidConfig(
                "step_empty called with accumulated gradients; call step".into(),
            ));
        }
        self.finish(lr, model, &mut SingleProcess)
    }

    /// The DP step of one peer of a data-parallel run (see [`DpOptimizer::finish`]) with the
    /// flat buffer `[Σ_k numel_k]` of every trainable parameter's noised part, in the model's
    /// visiting order, summed over the peers by `all_reduce` (a [`FlatAllReduce`]).
    ///
    /// # Shapes
    /// `all_reduce` takes and returns `[Σ_k numel_k]`.
    pub fn step_all_reduced<M, F>(
        &mut self,
        lr: f64,
        model: M,
        share: NoiseShare,
        all_reduce: F,
    ) -> Result<M, DpError>
    where
        M: AutodiffModule<DpAutodiff<B>>,
        O: Optimizer<M, DpAutodiff<B>>,
        F: FnOnce(Tensor<B, 1>) -> Result<Tensor<B, 1>, DpError>,
    {
        self.finish(lr, model, &mut FlatAllReduce::new(share, all_reduce))
    }

    /// Saves the model and optimizer (burn records, `model.mpk`, `optimizer.mpk`) and the DP state
    /// (`dp_state.json`) in `dir`. Must be called between logical steps.
    pub fn save_checkpoint<M>(
        &self,
        dir: &Path,
        model: &M,
        sampler: Option<&PoissonSampler>,
    ) -> Result<(), DpError>
    where
        M: AutodiffModule<DpAutodiff<B>>,
        O: Optimizer<M, DpAutodiff<B>>,
    {
        let state = self.checkpoint_state(sampler)?;
        let io = |e: std::io::Error| DpError::Checkpoint(e.to_string());
        std::fs::create_dir_all(dir).map_err(io)?;
        let recorder = NamedMpkFileRecorder::<FullPrecisionSettings>::new();
        let rec = |e: burn::record::RecorderError| DpError::Checkpoint(e.to_string());
        recorder
            .record(model.clone().into_record(), dir.join("model"))
            .map_err(rec)?;
        recorder
            .record(self.inner.to_record(), dir.join("optimizer"))
            .map_err(rec)?;
        let json =
            serde_json::to_string_pretty(&state).map_err(|e| DpError::Checkpoint(e.to_string()))?;
        std::fs::write(dir.join("dp_state.json"), json).map_err(io)
    }

    /// Restores a checkpoint written by [`DpOptimizer::save_checkpoint`] into `model`, this
    /// optimizer and `sampler`. An OS-seeded run gets fresh OS randomness (its state is never
    /// saved); a fixed-seed run continues its streams exactly.
    ///
    /// Refused with a typed error, before anything is loaded: a checkpoint whose σ, q, δ,
    /// target ε, accountant or expected batch size differ from this optimizer's, or are invalid
    /// (a corrupt or edited file); and a fixed-seed checkpoint loaded into an optimizer or sampler
    /// seeded from the OS ([`DpError::FixedSeedCheckpoint`]; see
    /// [`DpOptimizer::load_checkpoint_adopting_fixed_seed`]); an OS-seeded checkpoint loaded into
    /// a fixed-seed optimizer or sampler ([`DpError::OsSeededCheckpoint`]); and any checkpoint
    /// loaded into an optimizer that has already taken a DP step ([`DpError::ResumeAfterTraining`]:
    /// privacy spent stays spent). Clipped sums accumulated before the load belong to the old model
    /// and are dropped. The budget policy stays this optimizer's.
    pub fn load_checkpoint<M>(
        self,
        dir: &Path,
        model: M,
        sampler: Option<&mut PoissonSampler>,
    ) -> Result<(Self, M), DpError>
    where
        M: AutodiffModule<DpAutodiff<B>>,
        O: Optimizer<M, DpAutodiff<B>>,
    {
        self.load_checkpoint_with(dir, model, sampler, false)
    }

    /// [`DpOptimizer::load_checkpoint`] that also continues a fixed-seed checkpoint's noise and
    /// sampling streams when this optimizer (or the sampler) is seeded from the OS. The rest of
    /// the run is then as public as the seed: for reproducing an experiment, never for private
    /// training.
    pub fn load_checkpoint_adopting_fixed_seed<M>(
        self,
        dir: &Path,
        model: M,
        sampler: Option<&mut PoissonSampler>,
    ) -> Result<(Self, M), DpError>
    where
        M: AutodiffModule<DpAutodiff<B>>,
        O: Optimizer<M, DpAutodiff<B>>,
    {
        self.load_checkpoint_with(dir, model, sampler, true)
    }

    fn load_checkpoint_with<M>(
        mut self,
        dir: &Path,
        model: M,
        sampler: Option<&mut PoissonSampler>,
        adopt_fixed_seed: bool,
    ) -> Result<(Self, M), DpError>
    where
        M: AutodiffModule<DpAutodiff<B>>,
        O: Optimizer<M, DpAutodiff<B>>,
    {
        let model = self.load_checkpoint_into(dir, model, sampler, adopt_fixed_seed)?;
        Ok((self, model))
    }

    /// [`DpOptimizer::load_checkpoint`] in place: on any error this optimizer and `sampler` are
    /// unchanged (every check runs, and every file is read, before anything changes).
    pub(crate) fn load_checkpoint_into<M>(
        &mut self,
        dir: &Path,
        model: M,
        sampler: Option<&mut PoissonSampler>,
        adopt_fixed_seed: bool,
    ) -> Result<M, DpError>
    where
        M: AutodiffModule<DpAutodiff<B>>,
        O: Optimizer<M, DpAutodiff<B>>,
    {
        let path = dir.join("dp_state.json");
        let json = std::fs::read_to_string(&path)
            .map_err(|e| DpError::Checkpoint(format!("{}: {e}", path.display())))?;
        let state: DpCheckpointState = serde_json::from_str(&json)
            .map_err(|e| DpError::Checkpoint(format!("{}: {e}", path.display())))?;
        let origin = dir.display().to_string();
        let noise =
            self.validate_checkpoint_state(&state, sampler.as_deref(), adopt_fixed_seed, &origin)?;
        let recorder = NamedMpkFileRecorder::<FullPrecisionSettings>::new();
        let rec = |e: burn::record::RecorderError| DpError::Checkpoint(e.to_string());
        let device = model.devices().first().cloned().unwrap_or_default();
        let model_record = recorder.load(dir.join("model"), &device).map_err(rec)?;
        let optim_record = recorder.load(dir.join("optimizer"), &device).map_err(rec)?;
        let model = model.load_record(model_record);
        self.inner = self.inner.clone().load_record(optim_record);
        self.apply_checkpoint_state(state, noise, sampler);
        Ok(model)
    }

    /// The DP state [`DpOptimizer::save_checkpoint`] writes to `dp_state.json`: σ, q, δ, target
    /// ε, the accountant history, the noise stream (its position for a fixed seed; an OS key is
    /// never written) and the sampler's state. For checkpoints written by other means (burn-train's
    /// `Learner` through `burn-dp-train`). Refused while clipped sums are accumulated (a state is
    /// taken between logical steps only) and with a sampler that does not draw at this rate.
    pub fn checkpoint_state(
        &self,
        sampler: Option<&PoissonSampler>,
    ) -> Result<DpCheckpointState, DpError> {
        if self.accumulated.is_some() {
            return Err(DpError::Checkpoint(
                "gradients are accumulated: save after step()".into(),
            ));
        }
        if let Some(sampler) = sampler {
            self.check_sampler(sampler)?;
        }
        Ok(DpCheckpointState {
            privacy: self.privacy.clone(),
            expected_batch_size: self.expected_batch_size,
            noise: self.noise.checkpoint(),
            sampler: sampler.map(PoissonSampler::state),
        })
    }

    /// Restores a state taken by [`DpOptimizer::checkpoint_state`] into this optimizer and
    /// `sampler`, validated exactly as [`DpOptimizer::load_checkpoint`] validates `dp_state.json`
    /// (`origin` names where the state came from in errors; `adopt_fixed_seed` as
    /// [`DpOptimizer::load_checkpoint_adopting_fixed_seed`]). On error nothing changes. The inner
    /// optimizer's state is restored separately ([`DpOptimizer::set_inner`]).
    pub fn restore_checkpoint_state(
        &mut self,
        state: DpCheckpointState,
        sampler: Option<&mut PoissonSampler>,
        adopt_fixed_seed: bool,
        origin: &str,
    ) -> Result<(), DpError> {
        let noise =
            self.validate_checkpoint_state(&state, sampler.as_deref(), adopt_fixed_seed, origin)?;
        self.apply_checkpoint_state(state, noise, sampler);
        Ok(())
    }

    /// Every check of a loaded state, before anything changes; returns the fixed-seed noise
    /// generator to continue, if the checkpoint has one.
    fn validate_checkpoint_state(
        &self,
        state: &DpCheckpointState,
        sampler: Option<&PoissonSampler>,
        adopt_fixed_seed: bool,
        origin: &str,
    ) -> Result<Option<NoiseGenerator>, DpError> {
        // Privacy spent stays spent: loading into an optimizer that has stepped would replace
        // its history by the checkpoint's (ε going down, the budget spent again).
        if self.privacy.steps() > 0 {
            return Err(DpError::ResumeAfterTraining {
                path: origin.to_string(),
                steps: self.privacy.steps(),
            });
        }
        // The sampling first: a checkpoint at another q is the more specific error.
        self.check_checkpoint_sampling(state, sampler)?;
        self.check_loaded_state(state)?;
        let refuse = |what: &str| DpError::FixedSeedCheckpoint {
            path: origin.to_string(),
            what: what.to_string(),
        };
        let os_into_fixed = |what: &str| DpError::OsSeededCheckpoint {
            path: origin.to_string(),
            what: what.to_string(),
        };
        let noise = match state.noise {
            // An OS-seeded run continued with a fixed seed would draw public noise from here on
            // (from the seed's step 0, values already used by others).
            NoiseCheckpoint::Os if self.noise.is_fixed_seed() => {
                return Err(os_into_fixed("noise generator"))
            }
            NoiseCheckpoint::Os => None,
            NoiseCheckpoint::FixedSeedForExperiments { seed, next_step } => {
                if !self.noise.is_fixed_seed() && !adopt_fixed_seed {
                    return Err(refuse("noise generator"));
                }
                Some(NoiseGenerator::restore_fixed_seed(seed, next_step))
            }
        };
        if let (Some(sampler), Some(s)) = (sampler, state.sampler.as_ref()) {
            if s.rng.is_some() && !sampler.is_fixed_seed() && !adopt_fixed_seed {
                return Err(refuse("sampler"));
            }
            if s.rng.is_none() && sampler.is_fixed_seed() {
                return Err(os_into_fixed("sampler"));
            }
        }
        Ok(noise)
    }

    /// Installs a validated state (see [`Self::validate_checkpoint_state`]).
    fn apply_checkpoint_state(
        &mut self,
        state: DpCheckpointState,
        noise: Option<NoiseGenerator>,
        sampler: Option<&mut PoissonSampler>,
    ) {
        let budget = self.privacy.budget;
        self.privacy = state.privacy;
        self.privacy.budget = budget;
        self.expected_batch_size = state.expected_batch_size;
        // An OS-seeded checkpoint leaves this optimizer's own generator (a fresh OS key, or the
        // fixed seed it was built with) in place.
        if let Some(noise) = noise {
            self.noise = noise;
        }
        self.accumulated = None;
        if let (Some(sampler), Some(s)) = (sampler, state.sampler.as_ref()) {
            sampler.restore(s);
        }
    }

    /// A loaded DP state must be valid and describe the run this optimizer was configured for.
    fn check_loaded_state(&self, state: &DpCheckpointState) -> Result<(), DpError> {
        use burn_dp_accountant::history::{
            validate_delta, validate_noise_multiplier, validate_sample_rate,
        };
        let invalid = |what: &str, e: burn_dp_accountant::AccountantError| {
            DpError::Checkpoint(format!("invalid {what} in the checkpoint: {e}"))
        };
        let saved = &state.privacy;
        validate_noise_multiplier(saved.noise_multiplier).map_err(|e| invalid("σ", e))?;
        validate_sample_rate(saved.sample_rate).map_err(|e| invalid("q", e))?;
        validate_delta(saved.delta).map_err(|e| invalid("δ", e))?;
        saved
            .accountant
            .history()
            .validate()
            .map_err(|e| invalid("accountant history", e))?;
        if let Some(t) = saved.target_epsilon {
            if !(t.is_finite() && t > 0.0) {
                return Err(DpError::Checkpoint(format!(
                    "invalid target ε {t} in the checkpoint"
                )));
            }
        }
        let ebs = state.expected_batch_size;
        if !(ebs.is_finite() && ebs > 0.0) {
            return Err(DpError::Checkpoint(format!(
                "invalid expected batch size {ebs} in the checkpoint"
            )));
        }
        let ours = &self.privacy;
        let differs = |what: &str, configured: String, loaded: String| {
            DpError::Checkpoint(format!(
                "{what}: this optimizer has {configured}, the checkpoint {loaded}; build the \
                 optimizer with the checkpoint's settings"
            ))
        };
        if saved.noise_multiplier != ours.noise_multiplier {
            let (c, l) = (ours.noise_multiplier, saved.noise_multiplier);
            return Err(differs("noise multiplier σ", c.to_string(), l.to_string()));
        }
        if saved.sample_rate != ours.sample_rate {
            let (c, l) = (ours.sample_rate, saved.sample_rate);
            return Err(differs("sample rate q", c.to_string(), l.to_string()));
        }
        if saved.delta != ours.delta {
            return Err(differs(
                "δ",
                ours.delta.to_string(),
                saved.delta.to_string(),
            ));
        }
        if saved.target_epsilon != ours.target_epsilon {
            let (c, l) = (ours.target_epsilon, saved.target_epsilon);
            return Err(differs("target ε", format!("{c:?}"), format!("{l:?}")));
        }
        if saved.accountant.kind() != ours.accountant.kind() {
            let (c, l) = (ours.accountant.kind(), saved.accountant.kind());
            return Err(differs("accountant", format!("{c:?}"), format!("{l:?}")));
        }
        if (ebs - self.expected_batch_size).abs() > 1e-9 * self.expected_batch_size {
            let c = self.expected_batch_size;
            return Err(differs(
                "expected batch size",
                c.to_string(),
                ebs.to_string(),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use burn::backend::NdArray;
    use burn::module::Module;
    use burn::nn::{Linear, LinearConfig};
    use burn::optim::SgdConfig;
    use burn_dp_accountant::AccountantKind;

    use super::*;
    use crate::clip::ClippingFn;

    type Dp = DpAutodiff<NdArray<f32>>;

    #[derive(Module, Debug)]
    struct Net<B: Backend> {
        fc: Linear<B>,
    }

    /// The slices of every share are disjoint, cover the parameter, start on a block boundary
    /// and are balanced (no share holds more than one block over its `1/K` of the elements).
    #[test]
    fn noise_shares_partition_every_parameter_evenly() {
        for numel in [0usize, 1, 9, 10, 11, 57, 1000, 100_003] {
            for shards in 1..=7 {
                let mut next = 0;
                for shard in 0..shards {
                    let r = NoiseShare { shard, shards }.elements(numel);
                    assert_eq!(r.start, next, "numel {numel}, {shard} of {shards}");
                    assert!(r.start.is_multiple_of(NORMALS_PER_BLOCK) || r.start == numel);
                    assert!(r.len() <= numel / shards + 2 * NORMALS_PER_BLOCK);
                    next = r.end;
                }
                assert_eq!(next, numel);
            }
        }
    }

    /// The noise `K` shares add (each on an empty local batch) sums to the single-process noise
    /// of the same step, bit for bit: each element is drawn once, at its place in the stream.
    #[test]
    fn shares_add_the_single_process_noise_exactly_once() {
        let device = Default::default();
        let model = Net::<Dp> {
            fc: LinearConfig::new(19, 3).init(&device),
        };
        let buffer = |share: NoiseShare| {
            let noise = NoiseSource::FixedSeedForExperiments(23);
            let sampler = PoissonSampler::new(100, 0.1, 4, noise).unwrap();
            let privacy =
                PrivacyState::with_noise_multiplier(1.3, 0.1, 1e-5, AccountantKind::Rdp).unwrap();
            let mut optim = DpOptimizer::new(
                SgdConfig::new().init::<Dp, Net<Dp>>(),
                PerSampleConfig::new(ClippingFn::Automatic { gamma: 0.01 }),
                privacy,
                &sampler,
                noise,
            )
            .unwrap();
            let mut seen = None;
            optim
                .step_all_reduced(0.1, model.clone(), share, |flat| {
                    seen = Some(flat.to_data().to_vec::<f32>().unwrap());
                    Ok(flat)
                })
                .unwrap();
            seen.unwrap()
        };
        let whole = buffer(NoiseShare::all());
        assert_eq!(whole.len(), 60);
        assert!(whole.iter().all(|v| *v != 0.0));
        for shards in [2, 3, 7] {
            let mut sum = vec![0f32; whole.len()];
            for shard in 0..shards {
                let part = buffer(NoiseShare { shard, shards });
                for (s, p) in sum.iter_mut().zip(&part) {
                    assert!(*s == 0.0 || *p == 0.0, "an element was noised twice");
                    *s += p;
                }
            }
            assert_eq!(sum, whole, "{shards} shares");
        }
    }
}
