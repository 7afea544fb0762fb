//! The private training loop: the [`DpOptimizer`]'s draw → clip and accumulate → finish, plus
//! the model.
//!
//! A program supplies only "the per-sample losses of these examples"; the loop does the rest, so
//! no program can forget the mask on padded rows, divide by the wrong batch size, or sample at a
//! rate the accountant does not know:
//!
//! ```text
//! each step:  draw a logical batch (Poisson, rate q)        (the budget is checked first)
//!             for each fixed-shape physical batch:
//!                 losses = your closure(model, indices)    [P] per-sample losses
//!                 clip and accumulate  losses · mask       (padding rows contribute zero)
//!             finish: add noise → account → reduce → scale by q·N → inner step
//! ```
//!
//! The sampling rate q comes from the [`PrivacyState`](crate::PrivacyState) alone: the sampler draws at that rate and
//! the optimizer divides by the expected batch size `q·N`, so the three cannot disagree.

use std::path::Path;

use burn::module::AutodiffModule;
use burn::optim::Optimizer;
use burn::record::{FullPrecisionSettings, NamedMpkFileRecorder, Recorder};
use burn::tensor::backend::Backend;
use burn::tensor::Tensor;
use burn_dp_accountant::Epsilon;

use crate::engine::DpAutodiff;
use crate::error::DpError;
use crate::noise::NoiseBackend;
use crate::optim::{DpOptimizer, FlatAllReduce, NoiseShare, Reducer, SingleProcess, StepReport};
use crate::sampling::PoissonSampler;
use crate::setup::PrivateSetup;
use crate::state::{check_parameters, ModuleSnapshot};

/// DP training of one model: the model and the [`DpOptimizer`] (which owns the inner optimizer,
/// the Poisson sampler and the privacy state).
///
/// The model stays inside the trainer so that an error (a refused budget, a forward that mixes
/// samples) never loses it: [`PrivateTrainer::model`] still holds the last good model, and no
/// partial logical batch is kept.
pub struct PrivateTrainer<M, O, B: Backend> {
    model: M,
    optim: DpOptimizer<O, B>,
    steps: u64,
}

impl<M, O, B> PrivateTrainer<M, O, B>
where
    B: NoiseBackend,
    M: AutodiffModule<DpAutodiff<B>>,
    O: Optimizer<M, DpAutodiff<B>>,
{
    /// A trainer for `model` over the private data set that `setup` describes: batches drawn by
    /// Poisson sampling at `setup.privacy.sample_rate` and cut into physical batches of
    /// `setup.physical_batch_size` rows.
    pub fn new(model: M, inner: O, setup: PrivateSetup) -> Result<Self, DpError> {
        let sampler = setup.sampler()?;
        Self::with_sampler(model, inner, setup, sampler)
    }

    /// The trainer of peer `rank` of `world` in a data-parallel run: it draws its batches from
    /// the peer's shard ([`PrivateSetup::peer_sampler`]) and divides every step by the global
    /// `q·N`. Step it with [`PrivateTrainer::step_all_reduced`].
    pub fn for_peer(
        model: M,
        inner: O,
        setup: PrivateSetup,
        rank: u32,
        world: u32,
    ) -> Result<Self, DpError> {
        let sampler = setup.peer_sampler(rank, world)?;
        Self::with_sampler(model, inner, setup, sampler)
    }

    fn with_sampler(
        model: M,
        inner: O,
        setup: PrivateSetup,
        sampler: PoissonSampler,
    ) -> Result<Self, DpError> {
        let optim = setup.optimizer(inner, sampler)?;
        if model.devices().is_empty() {
            return Err(DpError::InvalidConfig("the model has no parameters".into()));
        }
        Ok(PrivateTrainer {
            model,
            optim,
            steps: 0,
        })
    }

    /// One DP step with learning rate `lr`. `losses(model, indices)` returns the per-sample losses
    /// `[P]` of the examples `indices` (`P` = the physical batch size; padding rows repeat an index
    /// and are masked out by the trainer, so compute them like any other row).
    ///
    /// A refused step ([`DpError::BudgetExceeded`]) is refused before any data is read. On any
    /// error the model is unchanged and nothing of the step is kept.
    ///
    /// # Shapes
    /// `losses` returns `[P]`, one loss per row of `indices`.
    pub fn step<F>(&mut self, lr: f64, losses: F) -> Result<StepReport, DpError>
    where
        F: FnMut(&M, &[usize]) -> Tensor<DpAutodiff<B>, 1>,
    {
        self.step_reduced(lr, losses, &mut SingleProcess)
    }

    /// One step of a data-parallel run on this peer's shard: like [`PrivateTrainer::step`], but
    /// the clipped sums of the local batch (an empty one too) and this peer's `share` of the noise
    /// go through `all_reduce` before the update (see [`DpOptimizer::step_all_reduced`]).
    ///
    /// # Shapes
    /// `losses` returns `[P]`; `all_reduce` takes and returns the flat `[Σ_k numel_k]`.
    pub fn step_all_reduced<F, R, E>(
        &mut self,
        lr: f64,
        losses: F,
        share: NoiseShare,
        all_reduce: R,
    ) -> Result<StepReport, E>
    where
        F: FnMut(&M, &[usize]) -> Tensor<DpAutodiff<B>, 1>,
        R: FnOnce(Tensor<B, 1>) -> Result<Tensor<B, 1>, E>,
        E: From<DpError>,
    {
        self.step_reduced(lr, losses, &mut FlatAllReduce::new(share, all_reduce))
    }

    /// The DP step with any [`Reducer`]: [`DpOptimizer::draw`] → for each physical batch,
    /// [`DpOptimizer::clip_and_accumulate`] of the per-sample losses → [`DpOptimizer::finish`]
    /// (noise of the reducer's share, account, reduce, scale, inner step).
    /// [`PrivateTrainer::step`] is this with [`SingleProcess`].
    ///
    /// # Shapes
    /// `losses` returns `[P]`, one loss per row of `indices`.
    pub fn step_reduced<F, R>(
        &mut self,
        lr: f64,
        mut losses: F,
        reducer: &mut R,
    ) -> Result<StepReport, R::Error>
    where
        F: FnMut(&M, &[usize]) -> Tensor<DpAutodiff<B>, 1>,
        R: Reducer<B>,
    {
        // The model must not already hold batch data (trained outside a DP step on this
        // backend): refused before the budget is touched, naming the parameter.
        check_parameters(&self.model, true)?;
        let logical = self.optim.draw()?;
        // A refused forward may already have written into state shared with the model
        // (BatchNorm's running statistics): it is put back.
        let snapshot = ModuleSnapshot::take(&self.model);
        let mut step = || -> Result<M, R::Error> {
            for batch in &logical.physical() {
                self.optim
                    .clip_and_accumulate(&self.model, batch, |m, idx| {
                        Ok::<_, DpError>(losses(m, idx))
                    })?;
            }
            self.optim.finish(lr, self.model.clone(), reducer)
        };
        match step() {
            Ok(model) => self.model = model,
            Err(e) => {
                self.optim.abandon();
                snapshot.restore(&self.model);
                return Err(e);
            }
        }
        self.steps += 1;
        Ok(self
            .optim
            .last_step_report()?
            .ok_or_else(|| DpError::InvalidConfig("the DP step left no report".into()))?)
    }

    /// The model as trained so far.
    pub fn model(&self) -> &M {
        &self.model
    }

    /// The trained model.
    pub fn into_model(self) -> M {
        self.model
    }

    /// ε spent so far at the run's δ.
    pub fn epsilon(&self) -> Result<Epsilon, DpError> {
        self.optim.epsilon()
    }

    /// The DP step object (σ, q, δ, clipping, the sampler).
    pub fn optimizer(&self) -> &DpOptimizer<O, B> {
        &self.optim
    }

    /// Steps taken by this trainer (since it was built or resumed).
    pub fn steps(&self) -> u64 {
        self.steps
    }

    /// Saves the model (`model.mpk`) and what the DP step owns (the inner optimizer, the DP state
    /// and the sampler: see [`DpOptimizer::save_checkpoint`]) in `dir`.
    pub fn save_checkpoint(&self, dir: &Path) -> Result<(), DpError> {
        self.optim.save_checkpoint::<M>(dir)?;
        NamedMpkFileRecorder::<FullPrecisionSettings>::new()
            .record(self.model.clone().into_record(), dir.join("model"))
            .map_err(|e| DpError::Checkpoint(e.to_string()))
    }

    /// Resumes from a checkpoint written by [`PrivateTrainer::save_checkpoint`]: the model, the
    /// optimizer, the privacy history (so ε continues) and the sampler.
    ///
    /// Only a trainer that has not trained can resume (`DpError::ResumeAfterTraining`):
    /// loading into one that has would replace the privacy it spent by the checkpoint's. On any
    /// error the trainer is unchanged.
    pub fn resume(&mut self, dir: &Path) -> Result<(), DpError> {
        let device = self.model.devices().first().cloned().unwrap_or_default();
        // Every file is read before anything changes; the DP step's load is all-or-nothing.
        let record = NamedMpkFileRecorder::<FullPrecisionSettings>::new()
            .load(dir.join("model"), &device)
            .map_err(|e| DpError::Checkpoint(e.to_string()))?;
        self.optim.load_checkpoint::<M>(dir, &device)?;
        self.model = self.model.clone().load_record(record);
        Ok(())
    }
}
