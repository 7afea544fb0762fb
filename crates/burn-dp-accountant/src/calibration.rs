//! Noise calibration (σ for a target ε) and the (dataset size, batch size, epochs) → (q, steps)
//! schedule helper.

use serde::{Deserialize, Serialize};

use crate::error::{AccountantError, Result};
use crate::history::{validate_delta, validate_sample_rate, HistoryEntry};
use crate::{Accountant, Epsilon, PrivacyAccountant};

/// Sampling rate and number of steps of a training run.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Schedule {
    /// Poisson sampling rate q ∈ (0, 1].
    pub sample_rate: f64,
    /// Number of steps ≥ 1.
    pub steps: u64,
}

impl Schedule {
    /// A validated schedule.
    pub fn new(sample_rate: f64, steps: u64) -> Result<Self> {
        validate_sample_rate(sample_rate)?;
        if steps == 0 {
            return Err(AccountantError::ZeroSteps);
        }
        Ok(Self { sample_rate, steps })
    }

    /// `q = batch_size / dataset_size` and `steps = ⌈epochs · dataset_size / batch_size⌉`
    /// (i.e. `⌈epochs / q⌉`, computed exactly in integers). Opacus's `get_noise_multiplier`
    /// truncates `epochs / q` instead, which is one step fewer when the batch size does not
    /// divide the dataset size; rounding up never under-counts the privacy spent, and it is the
    /// convention of the reference fixtures (42061 examples, batch 1024, 10 epochs → 411 steps).
    ///
    /// Sizes are `usize` like `PrivateSetup::dataset_size` and `Vec::len`.
    pub fn from_epochs(dataset_size: usize, batch_size: usize, epochs: u64) -> Result<Self> {
        if dataset_size == 0 || batch_size == 0 || batch_size > dataset_size {
            return Err(AccountantError::InvalidSchedule(format!(
                "need 1 <= batch size <= dataset size, got batch size {batch_size} and dataset \
                 size {dataset_size}"
            )));
        }
        if epochs == 0 {
            return Err(AccountantError::InvalidSchedule(
                "epochs must be at least 1".into(),
            ));
        }
        let examples = u128::from(epochs) * dataset_size as u128;
        let steps = u64::try_from(examples.div_ceil(batch_size as u128))
            .map_err(|_| AccountantError::InvalidSchedule("too many steps".into()))?;
        Self::new(batch_size as f64 / dataset_size as f64, steps)
    }
}

/// Options of the σ search, defaults as Opacus's `get_noise_multiplier`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct CalibrationOptions {
    /// Stop once the achieved ε is within this distance below the target (default 0.01).
    pub epsilon_tolerance: f64,
    /// Give up (target unreachable) beyond this σ (default 1e6).
    pub max_noise_multiplier: f64,
}

impl Default for CalibrationOptions {
    fn default() -> Self {
        Self {
            epsilon_tolerance: 0.01,
            max_noise_multiplier: 1e6,
        }
    }
}

/// The result of a calibration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Calibration {
    /// The noise multiplier σ found.
    pub noise_multiplier: f64,
    /// The ε it achieves (always ≤ the target).
    pub epsilon: Epsilon,
}

/// Finds σ such that running `schedule` with noise multiplier σ after the accountant's existing
/// history gives ε ≤ `target_epsilon` at `delta`, within `epsilon_tolerance` of the target
/// (a fresh accountant calibrates a whole run, as Opacus's `get_noise_multiplier`).
///
/// Same search as Opacus: double σ from 20 until ε ≤ target, then bisect on σ, always returning
/// the upper end of the bracket, so the returned σ achieves ε ≤ target.
///
/// Only accountants whose ε is an upper bound calibrate ([`AccountantKind::is_upper_bound`]):
/// GDP is refused with [`AccountantError::NotAnUpperBound`], because its CLT approximation can
/// under-report ε by several times (q = 0.001, 100 steps, target ε = 1 at δ = 1e-5: GDP would
/// choose σ ≈ 0.39, where RDP bounds ε by ≈ 7.0 and PRV estimates ≈ 5.4).
///
/// [`AccountantKind::is_upper_bound`]: crate::AccountantKind::is_upper_bound
pub fn calibrate_noise_multiplier(
    accountant: &PrivacyAccountant,
    target_epsilon: f64,
    delta: f64,
    schedule: Schedule,
    options: &CalibrationOptions,
) -> Result<Calibration> {
    if !accountant.kind().is_upper_bound() {
        return Err(AccountantError::NotAnUpperBound {
            accountant: accountant.kind(),
            purpose: "noise calibration",
        });
    }
    if !(target_epsilon.is_finite() && target_epsilon > 0.0) {
        return Err(AccountantError::InvalidTargetEpsilon(target_epsilon));
    }
    validate_delta(delta)?;
    let schedule = Schedule::new(schedule.sample_rate, schedule.steps)?;
    if !(options.epsilon_tolerance > 0.0 && options.max_noise_multiplier > 0.0) {
        return Err(AccountantError::InvalidOption(
            "epsilon_tolerance and max_noise_multiplier must be > 0".into(),
        ));
    }
    let epsilon_at = |sigma: f64| -> Result<Epsilon> {
        let mut trial = accountant.clone();
        trial.history_mut().push(HistoryEntry::new(
            sigma,
            schedule.sample_rate,
            schedule.steps,
        )?)?;
        trial.epsilon(delta)
    };
    let (mut sigma_low, mut sigma_high) = (0.0, 10.0);
    let mut eps_high;
    loop {
        sigma_high *= 2.0;
        eps_high = epsilon_at(sigma_high)?;
        if sigma_high > options.max_noise_multiplier {
            return Err(AccountantError::UnreachableTarget {
                target: target_epsilon,
                max_noise_multiplier: sigma_high,
                achieved: eps_high.epsilon,
            });
        }
        if eps_high.epsilon <= target_epsilon {
            break;
        }
    }
    // Bisection; the iteration cap only matters if ε(σ) is flat near the target.
    for _ in 0..200 {
        if target_epsilon - eps_high.epsilon <= options.epsilon_tolerance {
            break;
        }
        let sigma = 0.5 * (sigma_low + sigma_high);
        let eps = epsilon_at(sigma)?;
        if eps.epsilon < target_epsilon {
            sigma_high = sigma;
            eps_high = eps;
        } else {
            sigma_low = sigma;
        }
    }
    Ok(Calibration {
        noise_multiplier: sigma_high,
        epsilon: eps_high,
    })
}
