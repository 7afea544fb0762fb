//! The private training session: the DP optimizer, the Poisson sampler and the privacy state,
//! shared by the Learner's data loader ([`PrivateTraining::data_loader`]), its optimizer
//! ([`PrivateTraining::optimizer`]) and the train step ([`crate::PrivateBatch::train`]).
//!
//! The session is a small state machine that pairs every draw with exactly one DP step:
//!
//! ```text
//! Idle ──draw (budget checked first)──▶ Drawn(t) ──PrivateBatch::train──▶ Collecting(t)
//!   ▲                                                                         │ physical batches
//!   └──────── optimizer: noise, scale, inner step, account ◀── Ready(t) ◀─────┘ all accumulated
//! ```
//!
//! Anything else (a second draw before the step, gradients that did not come from
//! `PrivateBatch::train`, a step without a processed batch, any DP error) stops the session:
//! the error is kept ([`PrivateTraining::status`]), the Learner is interrupted, and every later
//! draw and step is refused.

use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use burn::data::dataloader::batcher::Batcher;
use burn::data::dataset::Dataset;
use burn::module::AutodiffModule;
use burn::optim::{GradientsParams, Optimizer};
use burn::tensor::backend::Backend;
use burn::tensor::Device;
use burn_dp::{
    ClippedGradients, DpAutodiff, DpError, DpOptimizer, LogicalBatch, NoiseBackend,
    PerSampleConfig, PoissonSampler, PrivacyState, PrivateSetup,
};
use burn_train::metric::ItemLazy;
use burn_train::{
    Interrupter, LearningComponentsTypes, SupervisedTraining, TrainStep, TrainingBackend,
};

use crate::error::DpTrainError;
use crate::loader::{PoissonDataLoader, PrivateTrainLoader};
use crate::metric::{EpsilonMetric, NoiseMultiplierMetric, PrivacySpent, PrivateStepOutput};
use crate::optimizer::LearnerDpOptimizer;

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

/// Where the session is in the pairing of draws and steps.
pub(crate) enum Phase {
    Idle,
    Drawn {
        step: u64,
    },
    Collecting {
        step: u64,
    },
    Ready {
        step: u64,
        empty: bool,
        report: Arc<OnceLock<PrivacySpent>>,
    },
}

/// Why the session stopped.
enum End {
    Budget(DpError),
    Failed(DpTrainError),
}

pub(crate) struct State<O, B: Backend> {
    pub(crate) dp: DpOptimizer<O, B>,
    pub(crate) sampler: PoissonSampler,
    pub(crate) phase: Phase,
    /// Logical batches drawn by this session (a checkpoint is restored only before the first).
    pub(crate) draws: u64,
    end: Option<End>,
}

pub(crate) struct Shared<O, B: Backend> {
    pub(crate) state: Mutex<State<O, B>>,
    interrupter: Interrupter,
    dataset_size: usize,
}

/// DP training with burn-train's `Learner`: the [`DpOptimizer`], the [`PoissonSampler`] and the
/// [`PrivacyState`] of one run, shared by the Learner's data loader, optimizer and train step.
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
        let dp = setup.optimizer(inner, &sampler)?;
        Ok(PrivateTraining {
            shared: Arc::new(Shared {
                state: Mutex::new(State {
                    dp,
                    sampler,
                    phase: Phase::Idle,
                    draws: 0,
                    end: None,
                }),
                interrupter: Interrupter::new(),
                dataset_size,
            }),
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
    pub fn epsilon(&self) -> Result<f64, DpTrainError> {
        Ok(self.shared.lock()?.dp.epsilon()?.epsilon)
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

impl<O, B: Backend> Shared<O, B> {
    pub(crate) fn lock(&self) -> Result<MutexGuard<'_, State<O, B>>, DpTrainError> {
        self.state.lock().map_err(|_| DpTrainError::StatePoisoned)
    }

    /// Stops the session for `end` (the first reason is kept) and interrupts the Learner.
    fn stop(&self, state: &mut State<O, B>, end: End) {
        if state.end.is_none() {
            let message = match &end {
                End::Budget(e) => format!("burn-dp: {e}"),
                End::Failed(e) => format!("burn-dp: training stopped: {e}"),
            };
            log::warn!("{message}");
            state.end = Some(end);
            self.interrupter.stop(Some(&message));
        }
    }

    /// Stops the session on `err`; without the state (a poisoned lock) the Learner is still
    /// interrupted.
    pub(crate) fn fail_with(&self, err: DpTrainError) {
        match self.lock() {
            Ok(mut state) => self.stop(&mut state, End::Failed(err)),
            Err(_) => self.interrupter.stop(Some(
                "burn-dp: training stopped: the session state is poisoned",
            )),
        }
    }
}

/// What the data loader and the train step need of a session, without its optimizer type.
pub(crate) trait Link<B: Backend>: Send + Sync {
    /// The next logical batch and its DP step index, or `None` when the session is stopped or
    /// the budget refuses one more step (checked before the sampler draws).
    fn draw(&self) -> Option<(u64, LogicalBatch)>;
    /// Starts collecting logical batch `step`; returns the clipping settings.
    fn begin(&self, step: u64) -> Result<PerSampleConfig, DpTrainError>;
    /// Adds the clipped sums of one physical batch of logical batch `step`.
    fn accumulate(&self, step: u64, clipped: ClippedGradients<B>) -> Result<(), DpTrainError>;
    /// Logical batch `step` is complete; the optimizer may step. Returns the cell the step's
    /// privacy report is written to.
    fn finish(&self, step: u64, empty: bool) -> Result<Arc<OnceLock<PrivacySpent>>, DpTrainError>;
    /// Stops the session on `err`.
    fn fail(&self, err: DpTrainError);
    /// The dataset size N the sampler draws from.
    fn dataset_size(&self) -> usize;
}

impl<O: Send, B: NoiseBackend> Link<B> for Shared<O, B> {
    fn draw(&self) -> Option<(u64, LogicalBatch)> {
        let mut state = match self.lock() {
            Ok(state) => state,
            Err(e) => {
                self.fail_with(e);
                return None;
            }
        };
        if state.end.is_some() {
            return None;
        }
        if let Phase::Ready { step, .. } | Phase::Drawn { step } | Phase::Collecting { step } =
            state.phase
        {
            self.stop(&mut state, End::Failed(DpTrainError::StepSkipped { step }));
            return None;
        }
        match state.dp.privacy().check_next_step() {
            Ok(()) => {}
            Err(e @ DpError::BudgetExceeded { .. }) => {
                self.stop(&mut state, End::Budget(e));
                return None;
            }
            Err(e) => {
                self.stop(&mut state, End::Failed(e.into()));
                return None;
            }
        }
        let step = state.dp.privacy().steps();
        let logical = state.sampler.next_batch();
        state.draws += 1;
        state.phase = Phase::Drawn { step };
        Some((step, logical))
    }

    fn begin(&self, step: u64) -> Result<PerSampleConfig, DpTrainError> {
        let mut state = self.lock()?;
        if state.end.is_some() {
            return Err(DpTrainError::NoLogicalBatch);
        }
        match state.phase {
            Phase::Drawn { step: drawn } if drawn == step => {
                state.phase = Phase::Collecting { step };
                Ok(state.dp.per_sample_config().clone())
            }
            Phase::Drawn { step: drawn }
            | Phase::Collecting { step: drawn }
            | Phase::Ready { step: drawn, .. } => Err(DpTrainError::OutOfOrder {
                expected: drawn,
                found: step,
            }),
            Phase::Idle => Err(DpTrainError::OutOfOrder {
                expected: state.dp.privacy().steps(),
                found: step,
            }),
        }
    }

    fn accumulate(&self, step: u64, clipped: ClippedGradients<B>) -> Result<(), DpTrainError> {
        let mut state = self.lock()?;
        match state.phase {
            Phase::Collecting { step: s } if s == step && state.end.is_none() => {
                Ok(state.dp.accumulate(clipped)?)
            }
            _ => Err(DpTrainError::OutOfOrder {
                expected: state.dp.privacy().steps(),
                found: step,
            }),
        }
    }

    fn finish(&self, step: u64, empty: bool) -> Result<Arc<OnceLock<PrivacySpent>>, DpTrainError> {
        let mut state = self.lock()?;
        match state.phase {
            Phase::Collecting { step: s } if s == step && state.end.is_none() => {
                let report = Arc::new(OnceLock::new());
                state.phase = Phase::Ready {
                    step,
                    empty,
                    report: report.clone(),
                };
                Ok(report)
            }
            _ => Err(DpTrainError::OutOfOrder {
                expected: state.dp.privacy().steps(),
                found: step,
            }),
        }
    }

    fn fail(&self, err: DpTrainError) {
        self.fail_with(err)
    }

    fn dataset_size(&self) -> usize {
        self.dataset_size
    }
}

impl<O, B: NoiseBackend> Shared<O, B> {
    /// The Learner's optimizer step: the DP step of the logical batch `PrivateBatch::train`
    /// collected, or no change at all (the session stopped, with the reason kept).
    pub(crate) fn step<M>(&self, lr: f64, model: M, grads: GradientsParams) -> M
    where
        M: AutodiffModule<DpAutodiff<B>>,
        O: Optimizer<M, DpAutodiff<B>>,
    {
        let mut state = match self.lock() {
            Ok(state) => state,
            Err(e) => {
                self.fail_with(e);
                return model;
            }
        };
        if state.end.is_some() {
            return model;
        }
        if !grads.is_empty() {
            let err = DpTrainError::UnexpectedGradients {
                params: grads.len(),
            };
            self.stop(&mut state, End::Failed(err));
            return model;
        }
        let (step, empty, report) = match &state.phase {
            Phase::Ready {
                step,
                empty,
                report,
            } => (*step, *empty, report.clone()),
            _ => {
                self.stop(&mut state, End::Failed(DpTrainError::NoLogicalBatch));
                return model;
            }
        };
        let accounted = state.dp.privacy().steps();
        if step != accounted {
            let err = DpTrainError::OutOfOrder {
                expected: accounted,
                found: step,
            };
            self.stop(&mut state, End::Failed(err));
            return model;
        }
        // The DP step consumes the model; a clone (shared tensors) stays for an error.
        let stepped = if empty {
            state.dp.step_empty(lr, model.clone())
        } else {
            state.dp.step(lr, model.clone())
        };
        match stepped {
            Ok(next) => {
                state.phase = Phase::Idle;
                let privacy = state.dp.privacy();
                let spent = state.dp.epsilon().map(|eps| PrivacySpent {
                    epsilon: eps.epsilon,
                    delta: privacy.delta,
                    noise_multiplier: privacy.noise_multiplier,
                    steps: privacy.steps(),
                });
                match spent {
                    Ok(spent) => {
                        let _ = report.set(spent);
                    }
                    // The step is taken and accounted; ε could not be computed, so no further
                    // step is taken either.
                    Err(e) => self.stop(&mut state, End::Failed(e.into())),
                }
                next
            }
            Err(e @ DpError::BudgetExceeded { .. }) => {
                self.stop(&mut state, End::Budget(e));
                model
            }
            Err(e) => {
                self.stop(&mut state, End::Failed(e.into()));
                model
            }
        }
    }

    /// Refuses multi-device steps (their gradients come from several logical batches).
    pub(crate) fn refuse_multi_device<M>(&self, model: M) -> M {
        self.fail_with(DpTrainError::MultiDevice);
        model
    }
}
