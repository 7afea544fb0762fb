//! Draw, then clip and accumulate: the first half of a DP step, up to the noise.
//!
//! [`DpStep::clip_and_accumulate`] is the one copy of the physical-batch loop body (open
//! the batch, the per-sample losses, their shape, the padding mask, clipping, accumulation),
//! used by [`crate::PrivateTrainer`] and by burn-dp-train's Learner data loader.

use burn::module::{AutodiffModule, ParamId};
use burn::optim::Optimizer;
use burn::tensor::backend::Backend;
use burn::tensor::Tensor;

use super::{Accumulated, BatchStats, DeviceStepStats, DpOptimizer, DpStep, Drawn};
use super::{FlatAllReduce, NoiseShare, SingleProcess, StepReport, StepStats};
use crate::engine::{clipped_backward_masked, ClippedGradients, DpAutodiff};
use crate::error::DpError;
use crate::noise::NoiseBackend;
use crate::sampling::{LogicalBatch, PhysicalBatch};

impl<B: Backend> DpStep<B> {
    /// Opens the next logical batch: checks that one more step fits the budget (refused before
    /// the sampler draws: [`DpError::BudgetExceeded`]), then draws a Poisson batch at rate q.
    /// Clip and accumulate each of its [`LogicalBatch::physical`] batches
    /// ([`DpStep::clip_and_accumulate`]), then take the step ([`DpOptimizer::finish`]); an
    /// empty batch goes straight to the (noise-only) step.
    ///
    /// Refused while a logical batch is open ([`DpError::LogicalBatchOpen`]: its noise would
    /// cover two batches) or clipped sums are accumulated outside one
    /// ([`DpError::StepOutOfOrder`]).
    pub fn draw(&mut self) -> Result<LogicalBatch, DpError> {
        if let Some(drawn) = &self.drawn {
            return Err(DpError::LogicalBatchOpen { step: drawn.step });
        }
        if self.accumulated.is_some() {
            return Err(self.out_of_order("draw with clipped sums accumulated: step on them first"));
        }
        self.privacy.check_next_step()?;
        let batch = self.sampler.next_batch();
        self.drawn = Some(Drawn {
            step: self.privacy.steps(),
            samples: batch.indices.len(),
            physical_batches: batch.physical().len(),
            accumulated: 0,
        });
        Ok(batch)
    }

    /// The DP step index of the open logical batch (`None` between steps).
    pub fn open_step(&self) -> Option<u64> {
        self.drawn.map(|d| d.step)
    }

    /// Whether a logical batch is open: drawn, or with clipped sums accumulated, and not stepped
    /// on yet.
    pub fn is_open(&self) -> bool {
        self.drawn.is_some() || self.accumulated.is_some()
    }

    /// One physical batch of the drawn logical batch: opens `batch` (its host data is recognised
    /// as the batch, its rows get the batch's identity), asks `losses(model, indices)` for the
    /// per-sample losses `[P]` of its rows (padding rows repeat an index: compute them like any
    /// other row), checks their shape, multiplies them by the padding mask (padding rows
    /// contribute exactly zero), clips per sample and adds `Σ_i c_i g_i` to the logical batch.
    ///
    /// Nothing is read back to the host: the returned [`BatchStats`] and the logical batch's
    /// statistics ([`DpStep::last_step_stats`]) stay on the device until asked for.
    ///
    /// On any error (from `losses` too) the logical batch is dropped ([`DpStep::abandon`]):
    /// a partial batch is never stepped on. Refused without a drawn batch, or past its last
    /// physical batch ([`DpError::StepOutOfOrder`]).
    ///
    /// # Shapes
    /// `losses` returns `[P]`, one loss per row of `batch` (`P = batch.indices.len()`).
    pub fn clip_and_accumulate<M, F, E>(
        &mut self,
        model: &M,
        batch: &PhysicalBatch,
        losses: F,
    ) -> Result<BatchStats<B>, E>
    where
        M: AutodiffModule<DpAutodiff<B>>,
        F: FnOnce(&M, &[usize]) -> Result<Tensor<DpAutodiff<B>, 1>, E>,
        E: From<DpError>,
    {
        let result = self.clip_and_accumulate_open(model, batch, losses);
        if result.is_err() {
            self.abandon();
        }
        result
    }

    fn clip_and_accumulate_open<M, F, E>(
        &mut self,
        model: &M,
        batch: &PhysicalBatch,
        losses: F,
    ) -> Result<BatchStats<B>, E>
    where
        M: AutodiffModule<DpAutodiff<B>>,
        F: FnOnce(&M, &[usize]) -> Result<Tensor<DpAutodiff<B>, 1>, E>,
        E: From<DpError>,
    {
        match &self.drawn {
            None => {
                return Err(self
                    .out_of_order("a physical batch without a drawn logical batch")
                    .into())
            }
            Some(d) if d.accumulated >= d.physical_batches => {
                return Err(self
                    .out_of_order("more physical batches than the logical batch has")
                    .into())
            }
            Some(_) => {}
        }
        // Opened before the forward (and before the caller builds the batch's data).
        let _open = batch.open();
        let per_sample = losses(model, &batch.indices)?;
        Ok(self.backward(model, per_sample, batch)?)
    }

    /// Drops the open logical batch: its draw and its clipped sums (after an error in one of its
    /// physical batches: a partial batch must never be stepped on). Nothing is accounted; the
    /// next [`DpStep::draw`] draws a new batch.
    pub fn abandon(&mut self) {
        self.drawn = None;
        self.accumulated = None;
    }

    /// Clip and accumulate per-sample losses already computed (the lower-level half of
    /// [`DpStep::clip_and_accumulate`], for loops of their own): runs the per-sample
    /// backward pass on `losses`, multiplied by `batch`'s padding mask here (padding rows
    /// contribute exactly zero), and adds `Σ_i c_i g_i` to the logical batch. Open the batch
    /// ([`PhysicalBatch::open`]) before its forward pass.
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
        let stats = BatchStats::of(&clipped);
        self.accumulate(clipped)?;
        Ok(stats)
    }

    /// Adds clipped sums computed elsewhere (consumed: they cannot be added twice), and their
    /// statistics, on the device. With a drawn logical batch, each call is one of its physical
    /// batches ([`DpError::StepOutOfOrder`] past the last).
    pub fn accumulate(&mut self, clipped: ClippedGradients<B>) -> Result<(), DpError> {
        if !clipped.is_masked() {
            return Err(DpError::UnmaskedBatch);
        }
        if self
            .drawn
            .is_some_and(|d| d.accumulated >= d.physical_batches)
        {
            return Err(self.out_of_order("more physical batches than the logical batch has"));
        }
        match &mut self.accumulated {
            None => {
                let mut stats = DeviceStepStats::empty();
                stats.add(&clipped);
                self.accumulated = Some(Accumulated {
                    sums: clipped.sums,
                    sensitivity: clipped.sensitivity,
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
            }
        }
        if let Some(drawn) = &mut self.drawn {
            drawn.accumulated += 1;
        }
        Ok(())
    }

    /// The accumulated (clipped, not yet noised) sum for a parameter, flattened.
    pub fn accumulated_sum(&self, id: &ParamId) -> Option<Tensor<B, 1>> {
        self.accumulated
            .as_ref()
            .and_then(|a| a.sums.get(id).cloned())
    }

    /// The statistics of the last logical batch a DP step was taken on (`None` before the first
    /// step): rows, non-finite and clipped counts, norm sum and maximum. They were accumulated
    /// on the device; this reads them in one device → host read (none after an empty batch).
    /// PRIVATE, as [`StepStats`] says.
    pub fn last_step_stats(&self) -> Result<Option<StepStats>, DpError> {
        self.last_step
            .as_ref()
            .map(|last| last.stats.read())
            .transpose()
    }

    /// What the last DP step did: the examples drawn, the physical batches and the privacy spent
    /// after it (`None` before the first step, and after a step on a batch not drawn by
    /// [`DpStep::draw`]). No device read.
    pub fn last_step_report(&self) -> Result<Option<StepReport>, DpError> {
        match self.last_step.as_ref().and_then(|last| last.drawn) {
            None => Ok(None),
            Some((samples, physical_batches)) => Ok(Some(StepReport {
                samples,
                physical_batches,
                privacy: self.privacy_spent()?,
            })),
        }
    }

    pub(super) fn out_of_order(&self, what: &'static str) -> DpError {
        DpError::StepOutOfOrder {
            step: self.drawn.map_or(self.privacy.steps(), |d| d.step),
            what,
        }
    }
}

impl<O, B: NoiseBackend> DpOptimizer<O, B> {
    /// [`DpOptimizer::finish`] for one process on the accumulated logical batch
    /// ([`DpError::NoGradients`] without one).
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

    /// [`DpOptimizer::finish`] for one process on an empty logical batch (Poisson sampling can
    /// draw none): the update is noise only, and the step is accounted like any other.
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

    /// [`DpOptimizer::finish`] for one peer of a data-parallel run with the flat buffer
    /// `[Σ_k numel_k]` of every trainable parameter's noised part, in the model's visiting
    /// order, summed over the peers by `all_reduce` (a [`FlatAllReduce`]).
    ///
    /// # Shapes
    /// `all_reduce` takes and returns `[Σ_k numel_k]`.
    pub fn step_all_reduced<M, F, E>(
        &mut self,
        lr: f64,
        model: M,
        share: NoiseShare,
        all_reduce: F,
    ) -> Result<M, E>
    where
        M: AutodiffModule<DpAutodiff<B>>,
        O: Optimizer<M, DpAutodiff<B>>,
        F: FnOnce(Tensor<B, 1>) -> Result<Tensor<B, 1>, E>,
        E: From<DpError>,
    {
        self.finish(lr, model, &mut FlatAllReduce::new(share, all_reduce))
    }
}

#[cfg(test)]
impl<B: Backend> DpStep<B> {
    /// [`DpStep::backward`] on a batch whose rows are all real (tests).
    pub(crate) fn backward_unpadded<M: AutodiffModule<DpAutodiff<B>>>(
        &mut self,
        model: &M,
        losses: Tensor<DpAutodiff<B>, 1>,
    ) -> Result<BatchStats<B>, DpError> {
        let rows = losses.dims()[0];
        self.backward(model, losses, &PhysicalBatch::unpadded((0..rows).collect()))
    }
}
