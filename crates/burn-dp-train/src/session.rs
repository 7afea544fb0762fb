//! The private training session: the handle on one run's [`burn_dp::DpOptimizer`] (which owns the
//! Poisson sampler and the privacy state), shared by the Learner's data loader
//! ([`PrivateTraining::data_loader`]), its optimizer ([`PrivateTraining::optimizer`]) and the
//! train step ([`crate::PrivateBatch::train`]).
//!
//! The DP step object pairs every draw with exactly one DP step:
//!
//! ```text
//! loader: draw (budget checked first) ──▶ PrivateBatch::train: clip and accumulate each
//!   ▲                                      physical batch
//!   └──────── optimizer: noise, account, scale, inner step ◀─┘
//! ```
//!
//! Anything else (a second draw before the step, gradients that did not come from
//! `PrivateBatch::train`, a step without a processed batch, any DP error) stops the session:
//! the error is kept ([`PrivateTraining::status`]), the Learner is interrupted, and every later
//! draw and step is refused.

use std::sync::Arc;

use burn::data::dataloader::batcher::Batcher;
use burn::data::dataset::Dataset;
use burn::tensor::Device;
use burn_dp::{DpAutodiff, DpError, Epsilon, NoiseBackend, PrivacyState, PrivateSetup};
use burn_train::metric::ItemLazy;
use burn_train::{
    Interrupter, LearningComponentsTypes, SupervisedTraining, TrainStep, TrainingBackend,
};

use crate::error::DpTrainError;
use crate::loader::{PoissonDataLoader, PrivateTrainLoader};
use crate::metric::{EpsilonMetric, NoiseMultiplierMetric, PrivateStepOutput};
use crate::optimizer::LearnerDpOptimizer;
use crate::shared::{End, Link, Shared};

/// How a session stands once the Learner returns (see [`PrivateTraining::status`]).
#[derive(Debug, Clone, PartialEq)]
pub enum SessionStatus {
    /// No refusal: every logical batch drawn was stepped on.
    Running,
    /// The privacy budget stopped training: one more step would have spent `next_epsilon` >
    /// `target` (at `delta`). The model holds every step taken before the refusal.
    BudgetExhausted {
        /// ε after the refused step.
        next_epsilon: f64,
        /// The target ε.
        target: f64,
        /// δ.
        delta: f64,
    },
}

/// DP training with burn-train's `Learner`: the [`burn_dp::DpOptimizer`] of one run (with its
/// [`burn_dp::PoissonSampler`] and [`PrivacyState`]), shared by the Learner's data loader,
/// optimizer and train step.
///
/// Build it with the same arguments as [`burn_dp::PrivateTrainer`] (minus the model), then hand
/// the Learner [`PrivateTraining::data_loader`] as its training data loader,
/// [`PrivateTraining::optimizer`] as its optimizer, and register the session on the
/// `SupervisedTraining` with [`PrivateTraining::register`] (ε and σ metrics, the interrupter that
/// stops training at the budget). The model's `TrainStep` takes a [`crate::PrivateBatch`] and
/// returns [`crate::PrivateBatch::train`]'s output.
///
/// Cloning gives another handle to the same session.
pub struct PrivateTraining<O, B: NoiseBackend> {
    pub(crate) shared: Arc<Shared<O, B>>,
}

impl<O, B: NoiseBackend> Clone for PrivateTraining<O, B> {
    fn clone(&self) -> Self {
        PrivateTraining {
            shared: self.shared.clone(),
        }
    }
}

impl<O, B> PrivateTraining<O, B>
where
    O: Send + 'static,
    B: NoiseBackend,
{
    /// A session over the private data set that `setup` describes: batches drawn by Poisson
    /// sampling at `setup.privacy.sample_rate` and cut into physical batches of
    /// `setup.physical_batch_size` rows. `inner` is the optimizer the DP step hands the noised
    /// gradient to (burn's SGD, Adam, ...).
    ///
    /// The sampler and the optimizer are built from `setup` exactly as
    /// [`burn_dp::PrivateTrainer::new`] builds them, so a Learner run and a `PrivateTrainer` run
    /// with the same fixed seed draw the same batches and the same noise.
    pub fn new(inner: O, setup: PrivateSetup) -> Result<Self, DpTrainError> {
        let dataset_size = setup.dataset_size;
        let sampler = setup.sampler()?;
        let dp = setup.optimizer(inner, sampler)?;
        Ok(PrivateTraining {
            shared: Arc::new(Shared::new(dp, dataset_size)),
        })
    }

    /// The Learner's training data loader: one item per Poisson logical batch (a
    /// [`crate::PrivateBatch`] of the batch type `T` that `batcher` builds from `dataset`'s items),
    /// `steps_per_epoch` per epoch (see [`PrivateTraining::expected_steps_per_epoch`]), tensors
    /// on `device`. `dataset` must hold the session's `dataset_size` examples.
    pub fn data_loader<I, T>(
        &self,
        dataset: impl Dataset<I> + 'static,
        batcher: impl Batcher<DpAutodiff<B>, I, T> + 'static,
        steps_per_epoch: usize,
        device: &Device<DpAutodiff<B>>,
    ) -> Result<PrivateTrainLoader<B, T>, DpTrainError>
    where
        I: Send + Sync + 'static,
        T: Send + 'static,
    {
        let link: Arc<dyn Link<B>> = self.shared.clone();
        let loader = PoissonDataLoader::new(
            link,
            Arc::new(dataset),
            Arc::new(batcher),
            steps_per_epoch,
            device.clone(),
        )?;
        Ok(Arc::new(loader))
    }

    /// The expected number of logical batches in one pass over the data, `⌈1/q⌉` (Poisson
    /// batches have `q·N` examples on average).
    pub fn expected_steps_per_epoch(&self) -> Result<usize, DpTrainError> {
        let q = self.shared.lock()?.dp.privacy().sample_rate;
        Ok((1.0 / q).ceil() as usize)
    }

    /// The optimizer to give the Learner (`Learner::new(model, session.optimizer(), lr)`): every
    /// update it makes is a DP step of this session; gradients from anywhere else are refused.
    pub fn optimizer(&self) -> LearnerDpOptimizer<O, B> {
        LearnerDpOptimizer {
            shared: self.shared.clone(),
        }
    }

    /// The handle that stops the Learner when the budget is spent or a DP error occurs. Pass it
    /// to `SupervisedTraining::with_interrupter` (done by [`PrivateTraining::register`]).
    pub fn interrupter(&self) -> Interrupter {
        self.shared.interrupter.clone()
    }

    /// Registers the session on a `SupervisedTraining`: its interrupter (the budget stop) and
    /// the ε and σ training metrics ([`EpsilonMetric`], [`NoiseMultiplierMetric`]).
    pub fn register<LC>(&self, training: SupervisedTraining<LC>) -> SupervisedTraining<LC>
    where
        LC: LearningComponentsTypes<Backend = DpAutodiff<B>>,
        LC::TrainingModel: TrainStep<Output = PrivateStepOutput>,
        <PrivateStepOutput as ItemLazy>::ItemSync: 'static,
        TrainingBackend<LC>: burn::tensor::backend::AutodiffBackend,
    {
        training
            .with_interrupter(self.interrupter())
            .metric_train_numeric(EpsilonMetric::new())
            .metric_train_numeric(NoiseMultiplierMetric::new())
    }

    /// ε spent so far at the run's δ.
    pub fn epsilon(&self) -> Result<Epsilon, DpTrainError> {
        Ok(self.shared.lock()?.dp.epsilon()?)
    }

    /// The privacy state (σ, q, δ, target, accountant history).
    pub fn privacy(&self) -> Result<PrivacyState, DpTrainError> {
        Ok(self.shared.lock()?.dp.privacy().clone())
    }

    /// DP steps accounted so far (restored checkpoints included).
    pub fn steps(&self) -> Result<u64, DpTrainError> {
        Ok(self.shared.lock()?.dp.privacy().steps())
    }

    /// How the session stands: [`SessionStatus::Running`], [`SessionStatus::BudgetExhausted`],
    /// or the error that stopped it.
    pub fn status(&self) -> Result<SessionStatus, DpTrainError> {
        let state = self.shared.lock()?;
        match &state.end {
            None => Ok(SessionStatus::Running),
            Some(End::Budget(DpError::BudgetExceeded {
                next,
                target,
                delta,
            })) => Ok(SessionStatus::BudgetExhausted {
                next_epsilon: *next,
                target: *target,
                delta: *delta,
            }),
            Some(End::Budget(e)) => Err(e.clone().into()),
            Some(End::Failed(e)) => Err(e.clone()),
        }
    }
}
