//! What a DP step did: the public [`StepReport`] (with the [`PrivacySpent`] after it), and the
//! private statistics of a logical batch ([`StepStats`]) and of one physical batch
//! ([`BatchStats`], read to [`BatchStatsValues`]).
//!
//! `samples` always means the examples drawn into a logical batch; the rows of the physical
//! batches (padding rows included) are `rows`.

use burn::tensor::backend::Backend;
use burn::tensor::{Bool, DType, Tensor};
use burn_dp_accountant::Epsilon;

use crate::clip::ClippingFn;
use crate::engine::ClippedGradients;
use crate::error::DpError;

/// What one DP step did, as [`crate::PrivateTrainer::step`] and
/// [`DpStep::last_step_report`](super::DpStep::last_step_report) report it.
#[derive(Debug, Clone, PartialEq)]
pub struct StepReport {
    /// Examples drawn into the logical batch (Poisson: random, possibly zero; padding rows are
    /// not examples). Not private: do not publish per-step values of it beside the model without
    /// accounting for it.
    pub samples: usize,
    /// Physical batches the logical batch was cut into.
    pub physical_batches: usize,
    /// The privacy spent after the step.
    pub privacy: PrivacySpent,
}

/// The privacy spent after a DP step: public (it is what the run's guarantee says), so it is
/// what burn-dp-train's ε and σ metrics show.
#[derive(Debug, Clone, PartialEq)]
pub struct PrivacySpent {
    /// DP steps accounted so far, this one (and a resumed checkpoint's) included.
    pub steps: u64,
    /// ε spent so far at the run's δ: an upper bound from the RDP and PRV accountants, an
    /// approximation (neither bound) from GDP ([`Epsilon::is_estimate`]).
    pub epsilon: Epsilon,
    /// The noise multiplier σ of the step (noise std = σ · the clipping sensitivity).
    pub noise_multiplier: f64,
}

/// What one physical batch contributed, kept on the device: reading it is up to the caller
/// ([`BatchStats::read`], one device → host read), so a training loop that does not look makes
/// no host read per physical batch.
///
/// PRIVATE: the norms are computed from one example each, without noise; use them for debugging
/// on data you may see, never publish or log them beside the model.
#[derive(Clone)]
pub struct BatchStats<B: Backend> {
    /// Rows of the physical batch, padding rows included.
    pub rows: usize,
    norms: Tensor<B, 1>,
    non_finite_mask: Tensor<B, 1, Bool>,
}

impl<B: Backend> core::fmt::Debug for BatchStats<B> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        // Printing must not read the device.
        f.debug_struct("BatchStats")
            .field("rows", &self.rows)
            .finish_non_exhaustive()
    }
}

impl<B: Backend> BatchStats<B> {
    /// The statistics of one physical batch's clipped gradients (device tensors, no read).
    pub(super) fn of(clipped: &ClippedGradients<B>) -> Self {
        BatchStats {
            rows: clipped.batch_size,
            norms: clipped.norms.clone(),
            non_finite_mask: clipped.non_finite_mask.clone(),
        }
    }

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
        let b = self.rows;
        if b == 0 {
            return Ok(BatchStatsValues {
                rows: 0,
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
            rows: b,
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
    /// Rows of the physical batch, padding rows included.
    pub rows: usize,
    /// Per-sample gradient norms (flat, before clipping; NaN or ±∞ for a non-finite sample).
    /// PRIVATE, as [`BatchStats`] says.
    pub norms: Vec<f32>,
    /// Samples whose loss or gradient norm was not finite (NaN or ±∞), in batch order: each
    /// contributed exactly zero to the clipped sum (see [`clipped_backward`](crate::clipped_backward)).
    pub non_finite: Vec<usize>,
}

/// Statistics of one logical batch (all its physical batches), read by
/// [`DpStep::last_step_stats`](super::DpStep::last_step_stats).
///
/// PRIVATE: computed from the examples without noise (the largest norm is one example's); for
/// debugging on data you may see, never to publish beside the model.
#[derive(Debug, Clone, PartialEq)]
pub struct StepStats {
    /// Rows of the physical batches, padding rows included (0 for an empty Poisson batch).
    pub rows: usize,
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
pub(super) struct DeviceStepStats<B: Backend> {
    rows: usize,
    physical_batches: usize,
    counts_clipping: bool,
    /// f32 `[non-finite samples, clipped samples, Σ finite norms, max finite norm]`.
    values: Option<(Tensor<B, 1>, Tensor<B, 1>)>,
}

impl<B: Backend> DeviceStepStats<B> {
    pub(super) fn empty() -> Self {
        DeviceStepStats {
            rows: 0,
            physical_batches: 0,
            counts_clipping: false,
            values: None,
        }
    }

    /// Adds one physical batch (device ops only).
    pub(super) fn add(&mut self, clipped: &ClippedGradients<B>) {
        self.rows += clipped.batch_size;
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
    pub(super) fn read(&self) -> Result<StepStats, DpError> {
        let mut stats = StepStats {
            rows: self.rows,
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
