//! The Learner's optimizer: a handle on the session whose every update is a DP step.

use std::sync::{Arc, PoisonError};

use burn::module::AutodiffModule;
use burn::optim::{GradientsParams, MultiGradientsParams, Optimizer};
use burn_dp::{DpAutodiff, DpCheckpointState, NoiseBackend};
use serde::{Deserialize, Serialize};

use crate::error::DpTrainError;
use crate::shared::{Shared, State};

/// The optimizer to give burn-train's `Learner` ([`crate::PrivateTraining::optimizer`]).
///
/// `step` ignores nothing and trusts nothing it is handed: the update is the session's DP step
/// (the clipped sums `PrivateBatch::train` accumulated, plus Gaussian noise drawn once for the
/// logical batch, divided by the expected batch size, then the inner optimizer's step, then the
/// accountant). Gradients passed in by the Learner must be empty, as `PrivateBatch::train`
/// returns them: ordinary gradients (unclipped, unnoised) are refused and stop the session, and
/// so does a step without a processed logical batch.
///
/// Its record (what the Learner's checkpointer saves as `optim-N`) is the inner optimizer's
/// record and the session's DP state ([`DpCheckpointState`] as JSON: σ, q, δ, target ε, the
/// accountant history, the noise stream's position for a fixed seed, the sampler's state), so
/// resuming the Learner from a checkpoint continues ε, the noise stream and the sampler. A
/// record is restored only into a session that has not drawn yet (burn-train restores before
/// training); a refused restore stops the session.
pub struct LearnerDpOptimizer<O, B: NoiseBackend> {
    pub(crate) shared: Arc<Shared<O, B>>,
}

impl<O, B: NoiseBackend> Clone for LearnerDpOptimizer<O, B> {
    fn clone(&self) -> Self {
        LearnerDpOptimizer {
            shared: self.shared.clone(),
        }
    }
}

/// The DP half of the optimizer record: the state, or why there was none to save (a stopped
/// session with clipped sums pending). Loading the latter stops the resumed session.
#[derive(Debug, Serialize, Deserialize)]
enum RecordedDpState {
    State(Box<DpCheckpointState>),
    Unavailable(String),
}

/// Where a restored DP state came from, for errors.
const ORIGIN: &str = "the Learner's optimizer checkpoint";

impl<M, O, B> Optimizer<M, DpAutodiff<B>> for LearnerDpOptimizer<O, B>
where
    B: NoiseBackend,
    M: AutodiffModule<DpAutodiff<B>>,
    O: Optimizer<M, DpAutodiff<B>>,
{
    /// The inner optimizer's record and the DP state as JSON.
    type Record = (O::Record, String);

    fn step(&mut self, lr: f64, module: M, grads: GradientsParams) -> M {
        self.shared.step(lr, module, grads)
    }

    fn step_multi(&mut self, _lr: f64, module: M, _grads: MultiGradientsParams) -> M {
        self.shared.refuse_multi_device(module)
    }

    fn to_record(&self) -> Self::Record {
        // A poisoned lock still yields the inner record; the DP state is then marked unusable.
        let (state, poisoned) = match self.shared.state_for_record() {
            Ok(state) => (state, false),
            Err(poison) => (poison.into_inner(), true),
        };
        let dp = if poisoned {
            RecordedDpState::Unavailable(DpTrainError::StatePoisoned.to_string())
        } else {
            match state.dp.checkpoint_state() {
                Ok(s) => RecordedDpState::State(Box::new(s)),
                Err(e) => RecordedDpState::Unavailable(e.to_string()),
            }
        };
        let json = serde_json::to_string(&dp).unwrap_or_else(|e| {
            serde_json::to_string(&RecordedDpState::Unavailable(e.to_string())).unwrap_or_default()
        });
        (state.dp.inner().to_record(), json)
    }

    fn load_record(self, record: Self::Record) -> Self {
        if let Err(e) = self.restore(record) {
            self.shared.fail_with(e);
        }
        self
    }
}

impl<O, B: NoiseBackend> LearnerDpOptimizer<O, B> {
    /// Restores a record written by `to_record`: the DP state first (validated as
    /// `DpOptimizer::load_checkpoint` validates one), then the inner optimizer's.
    fn restore<M>(&self, (inner, json): (O::Record, String)) -> Result<(), DpTrainError>
    where
        M: AutodiffModule<DpAutodiff<B>>,
        O: Optimizer<M, DpAutodiff<B>>,
    {
        let recorded: RecordedDpState = serde_json::from_str(&json)
            .map_err(|e| DpTrainError::Checkpoint(format!("{ORIGIN}: {e}")))?;
        let dp_state = match recorded {
            RecordedDpState::State(s) => *s,
            RecordedDpState::Unavailable(why) => {
                return Err(DpTrainError::Checkpoint(format!(
                    "{ORIGIN} holds no DP state ({why})"
                )))
            }
        };
        let mut guard = self.shared.lock()?;
        let state = &mut *guard;
        // Rolling a running session back would drop steps it has released from the accountant.
        if state.draws > 0 {
            return Err(DpTrainError::Checkpoint(format!(
                "{ORIGIN} can only be restored before the session draws its first batch (it has \
                 drawn {})",
                state.draws
            )));
        }
        state.dp.restore_checkpoint_state(dp_state, false, ORIGIN)?;
        let restored = state.dp.inner().clone().load_record(inner);
        state.dp.set_inner(restored);
        Ok(())
    }
}

impl<O, B: NoiseBackend> Shared<O, B> {
    /// The state for `to_record`, which cannot fail: a poisoned lock is handed back too.
    #[allow(clippy::type_complexity)]
    fn state_for_record(
        &self,
    ) -> Result<
        std::sync::MutexGuard<'_, State<O, B>>,
        PoisonError<std::sync::MutexGuard<'_, State<O, B>>>,
    > {
        self.state.lock()
    }
}
