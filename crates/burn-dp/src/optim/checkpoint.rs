//! Checkpoints of what the DP step owns: the privacy state (σ, q, δ, target ε, the accountant's
//! history), the noise stream's position, the sampler's state and the inner optimizer's record.
//! The model is its owner's to save ([`crate::PrivateTrainer::save_checkpoint`], burn-train's
//! checkpointer through burn-dp-train).
//!
//! ```text
//! dir/optimizer.mpk   the inner optimizer's record (burn, full precision)
//! dir/dp_state.json   DpCheckpointState (an OS-seeded generator's key is never written)
//! ```
//!
//! A load checks everything and reads every file before it changes anything: a refused resume
//! leaves the step object as it was.

use std::path::Path;

use burn::module::AutodiffModule;
use burn::optim::Optimizer;
use burn::record::{FullPrecisionSettings, NamedMpkFileRecorder, Recorder};
use burn::tensor::backend::Backend;
use burn_dp_accountant::Accountant;
use serde::{Deserialize, Serialize};

use super::{DpOptimizer, DpStep};
use crate::engine::DpAutodiff;
use crate::error::DpError;
use crate::noise::{NoiseCheckpoint, NoiseGenerator};
use crate::privacy::PrivacyState;
use crate::sampling::{same_rate, SamplerState};

/// The DP state saved beside the inner optimizer's record (`dp_state.json`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DpCheckpointState {
    /// σ, q, δ, accountant history, budget.
    pub privacy: PrivacyState,
    /// Expected logical batch size.
    pub expected_batch_size: f64,
    /// The noise generator: `Os` (its key is never written) or a fixed seed and its position.
    pub noise: NoiseCheckpoint,
    /// The sampler's state (`None` only in checkpoints written without one).
    pub sampler: Option<SamplerState>,
}

/// Where a step object's checkpoint files go in `dir`.
fn files(dir: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
    (dir.join("optimizer"), dir.join("dp_state.json"))
}

impl<O, B: Backend> DpOptimizer<O, B> {
    /// Saves what this step object owns in `dir`: the inner optimizer's record
    /// (`optimizer.mpk`) and the DP state (`dp_state.json`: see
    /// [`DpStep::checkpoint_state`]). The model is saved by its owner
    /// ([`crate::PrivateTrainer::save_checkpoint`] saves both). Refused while a logical batch is
    /// open (between `draw` and `finish`).
    pub fn save_checkpoint<M>(&self, dir: &Path) -> Result<(), DpError>
    where
        M: AutodiffModule<DpAutodiff<B>>,
        O: Optimizer<M, DpAutodiff<B>>,
    {
        let state = self.checkpoint_state()?;
        let io = |e: std::io::Error| DpError::Checkpoint(e.to_string());
        std::fs::create_dir_all(dir).map_err(io)?;
        let (optimizer, dp_state) = files(dir);
        NamedMpkFileRecorder::<FullPrecisionSettings>::new()
            .record(self.inner.to_record(), optimizer)
            .map_err(|e| DpError::Checkpoint(e.to_string()))?;
        let json =
            serde_json::to_string_pretty(&state).map_err(|e| DpError::Checkpoint(e.to_string()))?;
        std::fs::write(dp_state, json).map_err(io)
    }

    /// Restores a checkpoint written by [`DpOptimizer::save_checkpoint`] into this step object:
    /// the inner optimizer's state (its tensors on `device`), the privacy history (so ε
    /// continues), the noise stream and the sampler. An OS-seeded run gets fresh OS randomness
    /// (its state is never saved); a fixed-seed run continues its streams exactly.
    ///
    /// Refused with a typed error, before anything changes: a checkpoint whose σ, q, δ, target ε,
    /// accountant or expected batch size differ from this optimizer's, or are invalid (a corrupt
    /// or edited file); a fixed-seed checkpoint loaded into an optimizer or sampler seeded from
    /// the OS ([`DpError::FixedSeedCheckpoint`]; see
    /// [`DpOptimizer::load_checkpoint_adopting_fixed_seed`]); an OS-seeded checkpoint loaded into
    /// a fixed-seed optimizer or sampler ([`DpError::OsSeededCheckpoint`]); and any checkpoint
    /// loaded into an optimizer that has already taken a DP step ([`DpError::ResumeAfterTraining`]:
    /// privacy spent stays spent). A logical batch open before the load belongs to the old model
    /// and is dropped. The budget policy stays this optimizer's.
    pub fn load_checkpoint<M>(&mut self, dir: &Path, device: &B::Device) -> Result<(), DpError>
    where
        M: AutodiffModule<DpAutodiff<B>>,
        O: Optimizer<M, DpAutodiff<B>>,
    {
        self.load_checkpoint_with::<M>(dir, device, false)
    }

    /// [`DpOptimizer::load_checkpoint`] that also continues a fixed-seed checkpoint's noise and
    /// sampling streams when this optimizer (or its sampler) is seeded from the OS. The rest of
    /// the run is then as public as the seed: for reproducing an experiment, never for private
    /// training.
    pub fn load_checkpoint_adopting_fixed_seed<M>(
        &mut self,
        dir: &Path,
        device: &B::Device,
    ) -> Result<(), DpError>
    where
        M: AutodiffModule<DpAutodiff<B>>,
        O: Optimizer<M, DpAutodiff<B>>,
    {
        self.load_checkpoint_with::<M>(dir, device, true)
    }

    fn load_checkpoint_with<M>(
        &mut self,
        dir: &Path,
        device: &B::Device,
        adopt_fixed_seed: bool,
    ) -> Result<(), DpError>
    where
        M: AutodiffModule<DpAutodiff<B>>,
        O: Optimizer<M, DpAutodiff<B>>,
    {
        let (optimizer, dp_state) = files(dir);
        let json = std::fs::read_to_string(&dp_state)
            .map_err(|e| DpError::Checkpoint(format!("{}: {e}", dp_state.display())))?;
        let state: DpCheckpointState = serde_json::from_str(&json)
            .map_err(|e| DpError::Checkpoint(format!("{}: {e}", dp_state.display())))?;
        let origin = dir.display().to_string();
        let noise = self.validate_checkpoint_state(&state, adopt_fixed_seed, &origin)?;
        let record = NamedMpkFileRecorder::<FullPrecisionSettings>::new()
            .load(optimizer, device)
            .map_err(|e| DpError::Checkpoint(e.to_string()))?;
        self.inner = self.inner.clone().load_record(record);
        self.apply_checkpoint_state(state, noise);
        Ok(())
    }
}

impl<B: Backend> DpStep<B> {
    /// The DP state [`DpOptimizer::save_checkpoint`] writes to `dp_state.json`: σ, q, δ, target
    /// ε, the accountant history, the noise stream (its position for a fixed seed; an OS key is
    /// never written) and the sampler's state. For checkpoints written by other means (burn-train's
    /// `Learner` through `burn-dp-train`). Refused while a logical batch is open (a state is taken
    /// between logical steps only).
    pub fn checkpoint_state(&self) -> Result<DpCheckpointState, DpError> {
        if self.is_open() {
            return Err(DpError::Checkpoint(
                "a logical batch is open: save after its DP step (finish)".into(),
            ));
        }
        Ok(DpCheckpointState {
            privacy: self.privacy.clone(),
            expected_batch_size: self.expected_batch_size,
            noise: self.noise.checkpoint(),
            sampler: Some(self.sampler.state()),
        })
    }

    /// Restores a state taken by [`DpStep::checkpoint_state`] into this optimizer and its
    /// sampler, validated exactly as [`DpOptimizer::load_checkpoint`] validates `dp_state.json`
    /// (`origin` names where the state came from in errors; `adopt_fixed_seed` as
    /// [`DpOptimizer::load_checkpoint_adopting_fixed_seed`]). On error nothing changes. The inner
    /// optimizer's state is restored separately ([`DpOptimizer::set_inner`]).
    pub fn restore_checkpoint_state(
        &mut self,
        state: DpCheckpointState,
        adopt_fixed_seed: bool,
        origin: &str,
    ) -> Result<(), DpError> {
        let noise = self.validate_checkpoint_state(&state, adopt_fixed_seed, origin)?;
        self.apply_checkpoint_state(state, noise);
        Ok(())
    }

    /// Every check of a loaded state, before anything changes; returns the fixed-seed noise
    /// generator to continue, if the checkpoint has one.
    fn validate_checkpoint_state(
        &self,
        state: &DpCheckpointState,
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
        self.check_checkpoint_sampling(state)?;
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
        if let Some(s) = state.sampler.as_ref() {
            if s.rng.is_some() && !self.sampler.is_fixed_seed() && !adopt_fixed_seed {
                return Err(refuse("sampler"));
            }
            if s.rng.is_none() && self.sampler.is_fixed_seed() {
                return Err(os_into_fixed("sampler"));
            }
        }
        Ok(noise)
    }

    /// Installs a validated state (see [`Self::validate_checkpoint_state`]).
    fn apply_checkpoint_state(&mut self, state: DpCheckpointState, noise: Option<NoiseGenerator>) {
        let budget = self.privacy.budget;
        self.privacy = state.privacy;
        self.privacy.budget = budget;
        self.expected_batch_size = state.expected_batch_size;
        // An OS-seeded checkpoint leaves this optimizer's own generator (a fresh OS key, or the
        // fixed seed it was built with) in place.
        if let Some(noise) = noise {
            self.noise = noise;
        }
        self.abandon();
        if let Some(s) = state.sampler.as_ref() {
            self.sampler.restore(s);
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

    /// A checkpoint must describe the same sampling as this optimizer (built from its sampler):
    /// the same q and the same expected batch size.
    fn check_checkpoint_sampling(&self, state: &DpCheckpointState) -> Result<(), DpError> {
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
        Ok(())
    }
}
