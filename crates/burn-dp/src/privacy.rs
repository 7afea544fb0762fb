//! The privacy state of a training run: σ, q, δ, the accountant's history and the budget.

use burn_dp_accountant::{
    calibrate_noise_multiplier, Accountant, AccountantError, AccountantKind, CalibrationOptions,
    Epsilon, PrivacyAccountant, Schedule,
};
use serde::{Deserialize, Serialize};

use crate::error::DpError;

/// What happens when the next step would exceed the target ε.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum BudgetPolicy {
    /// The step is refused with [`DpError::BudgetExceeded`] (the default whenever a target is set).
    Enforce,
    /// Training may go past the target (the user opted out); ε is still reported.
    AllowExceeding,
}

/// σ, q, δ, the accountant and its history: everything ε depends on. Serialisable for
/// checkpoints.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PrivacyState {
    /// Noise multiplier σ (noise std = σ · sensitivity).
    pub noise_multiplier: f64,
    /// Poisson sampling rate q.
    pub sample_rate: f64,
    /// δ of the reported (ε, δ).
    pub delta: f64,
    /// The target ε, if any.
    pub target_epsilon: Option<f64>,
    /// Budget policy for the target.
    pub budget: BudgetPolicy,
    /// The accountant and its history.
    pub accountant: PrivacyAccountant,
}

impl PrivacyState {
    /// A run with a given noise multiplier (no target ε). All three values are required.
    pub fn with_noise_multiplier(
        noise_multiplier: f64,
        sample_rate: f64,
        delta: f64,
        accountant: AccountantKind,
    ) -> Result<Self, DpError> {
        burn_dp_accountant::history::validate_noise_multiplier(noise_multiplier)?;
        burn_dp_accountant::history::validate_sample_rate(sample_rate)?;
        burn_dp_accountant::history::validate_delta(delta)?;
        Ok(PrivacyState {
            noise_multiplier,
            sample_rate,
            delta,
            target_epsilon: None,
            budget: BudgetPolicy::Enforce,
            accountant: PrivacyAccountant::new(accountant),
        })
    }

    /// A run that must end at ε ≤ `target_epsilon`: σ is calibrated for `schedule` before training
    /// (bisection; the σ returned achieves ε ≤ target) and the budget is enforced.
    ///
    /// The accountant must give upper bounds (RDP or PRV): GDP, an approximation that can
    /// under-report ε several-fold, is refused with
    /// [`AccountantError::NotAnUpperBound`](burn_dp_accountant::AccountantError::NotAnUpperBound).
    pub fn for_target_epsilon(
        target_epsilon: f64,
        delta: f64,
        schedule: Schedule,
        accountant: AccountantKind,
    ) -> Result<Self, DpError> {
        let acc = PrivacyAccountant::new(accountant);
        let cal = calibrate_noise_multiplier(
            &acc,
            target_epsilon,
            delta,
            schedule,
            &CalibrationOptions::default(),
        )?;
        Ok(PrivacyState {
            noise_multiplier: cal.noise_multiplier,
            sample_rate: schedule.sample_rate,
            delta,
            target_epsilon: Some(target_epsilon),
            budget: BudgetPolicy::Enforce,
            accountant: acc,
        })
    }

    /// Lets training continue past the target ε.
    pub fn allow_exceeding_budget(mut self) -> Self {
        self.budget = BudgetPolicy::AllowExceeding;
        self
    }

    /// ε spent so far.
    pub fn epsilon(&self) -> Result<Epsilon, DpError> {
        Ok(self.accountant.epsilon(self.delta)?)
    }

    /// Steps recorded.
    pub fn steps(&self) -> u64 {
        self.accountant.history().total_steps()
    }

    /// Refuses the next step if it would exceed an enforced budget
    /// ([`DpError::BudgetExceeded`]). Enforcing needs an upper bound on ε: with GDP (an
    /// approximation) an enforced target is refused outright. Public so that a loop outside this
    /// crate (`burn-dp-train`'s data loader) can refuse before it draws a batch; the DP step
    /// checks again.
    pub fn check_next_step(&self) -> Result<(), DpError> {
        let (Some(target), BudgetPolicy::Enforce) = (self.target_epsilon, self.budget) else {
            return Ok(());
        };
        let kind = self.accountant.kind();
        if !kind.is_upper_bound() {
            return Err(AccountantError::NotAnUpperBound {
                accountant: kind,
                purpose: "budget enforcement",
            }
            .into());
        }
        let mut next = self.accountant.clone();
        next.step(self.noise_multiplier, self.sample_rate, 1)?;
        let eps = next.epsilon(self.delta)?.epsilon;
        if eps > target {
            return Err(DpError::BudgetExceeded {
                next: eps,
                target,
                delta: self.delta,
            });
        }
        Ok(())
    }

    /// Records one step.
    pub(crate) fn record_step(&mut self) -> Result<(), DpError> {
        Ok(self
            .accountant
            .step(self.noise_multiplier, self.sample_rate, 1)?)
    }
}
