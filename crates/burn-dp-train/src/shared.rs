//! The state one private Learner run shares between its data loader, its train step and its
//! optimizer: the [`DpOptimizer`] (which owns the sampler, the privacy state and the open logical
//! batch) and why the session stopped, if it did.
//!
//! The modules depend one way: `session` (the public handle) builds the `loader` and the
//! `optimizer`; both reach the state only through this module.
//!
//! ```text
//! loader: draw ──▶ DpOptimizer::draw           (budget checked first; a second draw before the
//!                                               step: StepSkipped)
//! train step   ──▶ DpStep::clip_and_accumulate  for each physical batch (Link::collect)
//! optimizer    ──▶ DpOptimizer::finish          noise, account, scale, inner step
//! ```
//!
//! Anything out of order (a second draw before the step, gradients that did not come from
//! `PrivateBatch::train`, a step without a processed batch, any DP error) stops the session:
//! the error is kept, the Learner is interrupted, and every later draw and step is refused.

use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use burn::module::AutodiffModule;
use burn::optim::{GradientsParams, Optimizer};
use burn::tensor::backend::Backend;
use burn_dp::SingleProcess;
use burn_dp::{DpAutodiff, DpError, DpOptimizer, DpStep, LogicalBatch, NoiseBackend, PrivacySpent};
use burn_train::Interrupter;

use crate::error::DpTrainError;

/// Why the session stopped.
pub(crate) enum End {
    Budget(DpError),
    Failed(DpTrainError),
}

pub(crate) struct State<O, B: Backend> {
    pub(crate) dp: DpOptimizer<O, B>,
    /// Logical batches drawn by this session (a checkpoint is restored only before the first).
    pub(crate) draws: u64,
    /// The privacy report cell of the logical batch `PrivateBatch::train` collected, waiting for
    /// its DP step (`None`: no batch collected since the last step).
    collected: Option<Arc<OnceLock<PrivacySpent>>>,
    pub(crate) end: Option<End>,
}

pub(crate) struct Shared<O, B: Backend> {
    pub(crate) state: Mutex<State<O, B>>,
    pub(crate) interrupter: Interrupter,
    pub(crate) dataset_size: usize,
}

impl<O, B: Backend> Shared<O, B> {
    pub(crate) fn new(dp: DpOptimizer<O, B>, dataset_size: usize) -> Self {
        Shared {
            state: Mutex::new(State {
                dp,
                draws: 0,
                collected: None,
                end: None,
            }),
            interrupter: Interrupter::new(),
            dataset_size,
        }
    }

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

/// What a collect closure does with the session's DP step: clip and accumulate every physical
/// batch of the drawn logical batch.
pub(crate) type Collect<'a, B> = dyn FnMut(&mut DpStep<B>) -> Result<(), DpTrainError> + 'a;

/// What the data loader and the train step need of a session, without its optimizer type.
pub(crate) trait Link<B: Backend>: Send + Sync {
    /// The next logical batch and its DP step index, or `None` when the session is stopped or
    /// the budget refuses one more step (checked before the sampler draws).
    fn draw(&self) -> Option<(u64, LogicalBatch)>;
    /// Clips and accumulates logical batch `step` with `collect` (under the session's lock);
    /// returns the cell the step's privacy report is written to.
    fn collect(
        &self,
        step: u64,
        collect: &mut Collect<'_, B>,
    ) -> Result<Arc<OnceLock<PrivacySpent>>, DpTrainError>;
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
        match state.dp.draw() {
            Ok(logical) => {
                state.draws += 1;
                let step = state.dp.privacy().steps();
                Some((step, logical))
            }
            Err(DpError::LogicalBatchOpen { step }) => {
                self.stop(&mut state, End::Failed(DpTrainError::StepSkipped { step }));
                None
            }
            Err(e @ DpError::BudgetExceeded { .. }) => {
                self.stop(&mut state, End::Budget(e));
                None
            }
            Err(e) => {
                self.stop(&mut state, End::Failed(e.into()));
                None
            }
        }
    }

    fn collect(
        &self,
        step: u64,
        collect: &mut Collect<'_, B>,
    ) -> Result<Arc<OnceLock<PrivacySpent>>, DpTrainError> {
        let mut state = self.lock()?;
        if state.end.is_some() {
            return Err(DpTrainError::NoLogicalBatch);
        }
        let open = state.dp.open_step();
        if open != Some(step) || state.collected.is_some() {
            return Err(DpTrainError::OutOfOrder {
                expected: open.unwrap_or_else(|| state.dp.privacy().steps()),
                found: step,
            });
        }
        collect(&mut state.dp)?;
        let report = Arc::new(OnceLock::new());
        state.collected = Some(report.clone());
        Ok(report)
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
        let Some(report) = state.collected.take() else {
            self.stop(&mut state, End::Failed(DpTrainError::NoLogicalBatch));
            return model;
        };
        // The DP step consumes the model; a clone (shared tensors) stays for an error.
        match state.dp.finish(lr, model.clone(), &mut SingleProcess) {
            Ok(next) => {
                match state.dp.privacy_spent() {
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
