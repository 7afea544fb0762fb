//! # burn-dp-audit
//!
//! Empirical privacy audits of [burn-dp](burn_dp): a statistical **lower bound** on ε measured
//! from the real pipeline. The `burn-dp audit` command (crate `burn-dp-cli`) runs them.
//!
//! An accountant proves an upper bound on ε *if* the implementation does what the accountant
//! assumes. An audit checks that from the outside: it runs the pipeline (engine, clipping, DP
//! optimizer, Poisson sampler, noise) with and without a canary and measures how well an
//! observer can tell the two apart. A correct pipeline gives a lower bound ≤ the claimed ε; a
//! broken one (too little noise, a gradient not clipped, a sample counted twice) can give more.
//! A lower bound is evidence, never a proof of privacy.
//!
//! * White box, many runs ([`GradientCanaryConfig`], [`collect_scores`], [`analyse_scores`]):
//!   gradient canaries, the observer sees every update (Nasr et al. 2023, "Tight auditing of
//!   differentially private machine learning"; Jagielski et al. 2020, "Auditing differentially
//!   private machine learning: how private is private SGD?"). The ε bound uses Clopper–Pearson
//!   intervals; the Gaussian-DP μ bound is tighter for the Gaussian mechanism.
//! * One run ([`one_run_bound`], [`BlackBoxConfig`]): Steinke, Nasr and Jagielski 2023, "Privacy
//!   auditing with one (1) training run", with gradient canaries (white box) or input canaries
//!   scored by their loss (black box).
//!
//! Everything runs on the calling thread (burn-autodiff 0.21, tracel-ai/burn#5573): run several
//! processes to audit in parallel.
#![warn(missing_docs)]

mod canary;
mod one_run;
mod scores;
mod stats;

use burn_dp_accountant::Epsilon;
use serde::{Deserialize, Serialize};

pub use canary::{
    collect_scores, CanaryRun, GradientCanaryConfig, LinearProbe, AUDIT_LR, BACKGROUND_DIM,
    CANARY_SCALE,
};
pub use one_run::{one_run_bound, BlackBoxConfig, BlackBoxOutcome, OneRunBound, SmallClassifier};
pub use scores::{
    analyse_scores, roc_curve, EvaluatedTest, ScoreAnalysis, Scores, Side, Test, TradeOff, World,
};
pub use stats::{
    clopper_pearson, epsilon_from_rates, gdp_delta, gdp_epsilon, gdp_mu_from_errors,
    one_run_epsilon_lower_bound, one_run_p_value, Interval,
};

use burn_dp::{DpError, NoiseBackend};

/// The outcome of a white-box audit.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WhiteBoxReport {
    /// What the accountant claims for one run.
    pub claimed: Epsilon,
    /// Runs of the pipeline.
    pub runs: usize,
    /// The bounds.
    pub analysis: ScoreAnalysis,
    /// μ of the Gaussian mechanism the pipeline should be, `√steps / σ` (q = 1 only).
    pub gdp_mu_expected: Option<f64>,
}

impl WhiteBoxReport {
    /// The report for `scores` collected from `runs` runs of `config`.
    pub fn from_scores(
        config: &GradientCanaryConfig,
        runs: usize,
        scores: &Scores,
        confidence: f64,
    ) -> Result<Self, DpError> {
        Ok(WhiteBoxReport {
            claimed: config.claimed_epsilon()?,
            runs,
            analysis: analyse_scores(scores, config.delta, confidence, config.trade_off())?,
            gdp_mu_expected: (config.sample_rate >= 1.0)
                .then(|| (config.steps as f64).sqrt() / config.noise_multiplier),
        })
    }
}

/// The white-box audit in one call: `runs` runs of `config` on the calling thread, then the
/// statistics at `confidence` (e.g. 0.95).
pub fn white_box_audit<B: NoiseBackend>(
    config: &GradientCanaryConfig,
    runs: usize,
    confidence: f64,
    device: &B::Device,
    progress: impl FnMut(usize),
) -> Result<(WhiteBoxReport, Scores), DpError> {
    let scores = collect_scores::<B>(config, runs, device, progress)?;
    Ok((
        WhiteBoxReport::from_scores(config, runs, &scores, confidence)?,
        scores,
    ))
}

#[cfg(test)]
mod tests;
