//! From the scores of the two worlds (canary absent, canary present) to ε and μ lower bounds.
//!
//! The threshold is chosen on one half of the trials and the bound computed on the other half
//! (the even-numbered trials of each world choose, the odd-numbered ones evaluate), so the
//! confidence holds without a correction for the search over thresholds (the split of Nasr et
//! al. 2023, §5; Jagielski et al. 2020 choose on the same data, which overstates the confidence).

use serde::{Deserialize, Serialize};

use crate::stats::{self, clopper_pearson, Interval};
use burn_dp::DpError;

/// Scores of canary observations: higher should mean "the canary was in".
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Scores {
    /// Observations made without the canary (world 0).
    pub without: Vec<f64>,
    /// Observations made with the canary (world 1).
    pub with: Vec<f64>,
}

impl Scores {
    /// Appends another set of observations.
    pub fn extend(&mut self, other: Scores) {
        self.without.extend(other.without);
        self.with.extend(other.with);
    }

    /// Number of observations in both worlds.
    pub fn len(&self) -> usize {
        self.without.len() + self.with.len()
    }

    /// Whether there is none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Which side of the threshold the observer calls "in".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Side {
    /// The event is `score ≥ threshold`.
    AtOrAbove,
    /// The event is `score < threshold`.
    Below,
}

/// Which world the event is more likely in (the numerator of the likelihood ratio).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum World {
    /// The canary was included.
    WithCanary,
    /// The canary was not included.
    WithoutCanary,
}

/// One test: an event `{score ≥ t}` or `{score < t}` and the world it points to.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Test {
    /// The threshold t.
    pub threshold: f64,
    /// Which side of t is the event.
    pub side: Side,
    /// The world the event points to.
    pub points_to: World,
}

/// A test evaluated on held-out trials, with Clopper–Pearson intervals for the probability of its
/// event in each world and the bounds they imply.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct EvaluatedTest {
    /// The test (chosen on the other half of the trials).
    pub test: Test,
    /// P(event) in the world it points to (the "TPR").
    pub hit_rate: Interval,
    /// P(event) in the other world (the "FPR").
    pub false_rate: Interval,
    /// `ln((hit_rate.lower − δ) / false_rate.upper)`, or 0.
    pub epsilon_lower_bound: f64,
    /// `Φ⁻¹(1 − false_rate.upper) − Φ⁻¹(1 − hit_rate.lower)`, or 0.
    pub gdp_mu_lower_bound: f64,
}

/// What is known of the audited mechanism's trade-off curve, which decides whether the Gaussian-DP
/// μ bound converts into an ε lower bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TradeOff {
    /// Gaussian (one or more Gaussian steps without subsampling, q = 1): the μ bound gives an ε
    /// lower bound.
    Gaussian,
    /// Not known to be Gaussian (Poisson subsampling, q < 1): only the distribution-free
    /// (Clopper–Pearson) ε bound holds.
    Unknown,
}

/// The outcome of an audit's statistics.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScoreAnalysis {
    /// δ of the bounds.
    pub delta: f64,
    /// Confidence of each bound (e.g. 0.95).
    pub confidence: f64,
    /// Observations per world used to choose the tests.
    pub tuning: (usize, usize),
    /// Observations per world used to evaluate them.
    pub evaluation: (usize, usize),
    /// The test with the best ε bound on the tuning half, evaluated on the other half: the
    /// distribution-free ε lower bound (Clopper–Pearson).
    pub clopper_pearson: EvaluatedTest,
    /// The test with the best μ bound on the tuning half, evaluated on the other half.
    pub gdp: EvaluatedTest,
    /// The ε at δ of a mechanism with trade-off curve `G_μ` for `μ = gdp.gdp_mu_lower_bound`:
    /// a lower bound on ε only where the mechanism's trade-off curve has the Gaussian shape (the
    /// Gaussian mechanism and its compositions without subsampling, q = 1; Nasr et al. 2023,
    /// §5.2), so `None` unless the analysis was told so ([`TradeOff::Gaussian`]).
    pub epsilon_lower_bound_gdp: Option<f64>,
    /// μ estimated from the means and pooled standard deviation of all scores,
    /// `(mean₁ − mean₀) / s` (a point estimate, not a bound).
    pub gdp_mu_estimate: f64,
}

/// Counts of `score ≥ t` in a sorted slice.
fn at_or_above(sorted: &[f64], t: f64) -> u64 {
    (sorted.len() - sorted.partition_point(|&s| s < t)) as u64
}

fn evaluate(
    test: Test,
    without: &[f64],
    with: &[f64],
    delta: f64,
    confidence: f64,
) -> Result<EvaluatedTest, DpError> {
    let count = |sorted: &[f64]| {
        let above = at_or_above(sorted, test.threshold);
        match test.side {
            Side::AtOrAbove => above,
            Side::Below => sorted.len() as u64 - above,
        }
    };
    let (hit_world, other_world) = match test.points_to {
        World::WithCanary => (with, without),
        World::WithoutCanary => (without, with),
    };
    let hit_rate = clopper_pearson(count(hit_world), hit_world.len() as u64, confidence)?;
    let false_rate = clopper_pearson(count(other_world), other_world.len() as u64, confidence)?;
    Ok(EvaluatedTest {
        test,
        hit_rate,
        false_rate,
        epsilon_lower_bound: stats::epsilon_from_rates(hit_rate.lower, false_rate.upper, delta),
        gdp_mu_lower_bound: stats::gdp_mu_from_errors(false_rate.upper, 1.0 - hit_rate.lower),
    })
}

/// Candidate thresholds: scores of the tuning set at geometrically spaced ranks from both ends
/// (fine in the tails, where the best ε tests are) and evenly spaced ranks in between.
fn candidate_thresholds(sorted_all: &[f64]) -> Vec<f64> {
    let n = sorted_all.len();
    let mut ranks = Vec::new();
    let mut r = 1.0f64;
    while (r as usize) < n {
        ranks.push(r as usize);
        ranks.push(n - r as usize);
        r = (r * 1.05).max(r + 1.0);
    }
    for i in 1..200 {
        ranks.push(i * n / 200);
    }
    ranks.sort_unstable();
    ranks.dedup();
    let mut t: Vec<f64> = ranks
        .into_iter()
        .filter(|&i| i < n)
        .map(|i| sorted_all[i])
        .collect();
    t.dedup();
    t
}

fn sorted(v: impl Iterator<Item = f64>) -> Vec<f64> {
    let mut v: Vec<f64> = v.collect();
    v.sort_by(f64::total_cmp);
    v
}

/// Bounds on ε and μ from the scores of both worlds, at `delta`, each holding with probability at
/// least `confidence` (the two bounds are separate statements).
///
/// Errors when a world has fewer than 4 observations, a score is not finite, or δ / confidence
/// are out of range.
pub fn analyse_scores(
    scores: &Scores,
    delta: f64,
    confidence: f64,
    trade_off: TradeOff,
) -> Result<ScoreAnalysis, DpError> {
    if scores.without.len() < 4 || scores.with.len() < 4 {
        return Err(DpError::InvalidConfig(format!(
            "an audit needs at least 4 observations per world, got {} without and {} with the canary",
            scores.without.len(),
            scores.with.len()
        )));
    }
    if let Some(s) = scores
        .without
        .iter()
        .chain(&scores.with)
        .find(|s| !s.is_finite())
    {
        return Err(DpError::InvalidConfig(format!(
            "a score is not finite: {s}"
        )));
    }
    if !(0.0..1.0).contains(&delta) {
        return Err(DpError::InvalidConfig(format!(
            "delta must be in [0, 1), got {delta}"
        )));
    }
    let half = |v: &[f64], parity: usize| sorted(v.iter().skip(parity).step_by(2).copied());
    let (tune0, tune1) = (half(&scores.without, 0), half(&scores.with, 0));
    let (eval0, eval1) = (half(&scores.without, 1), half(&scores.with, 1));
    let all_tuning = sorted(tune0.iter().chain(&tune1).copied());
    // Tests are ranked on the tuning half by their bound at a stricter confidence: thin tails,
    // where the tuning half is luckiest, are penalised (the winner's curse of a search over
    // hundreds of thresholds made one threshold in ~10 fall apart on the evaluation half). This
    // only chooses the test; the reported bounds use `confidence` on the other half.
    let selection_confidence = 1.0 - (1.0 - confidence) / 20.0;

    let mut best_eps: Option<EvaluatedTest> = None;
    let mut best_mu: Option<EvaluatedTest> = None;
    for threshold in candidate_thresholds(&all_tuning) {
        for side in [Side::AtOrAbove, Side::Below] {
            for points_to in [World::WithCanary, World::WithoutCanary] {
                let test = Test {
                    threshold,
                    side,
                    points_to,
                };
                let e = evaluate(test, &tune0, &tune1, delta, selection_confidence)?;
                if best_eps.is_none_or(|b| e.epsilon_lower_bound > b.epsilon_lower_bound) {
                    best_eps = Some(e);
                }
                if best_mu.is_none_or(|b| e.gdp_mu_lower_bound > b.gdp_mu_lower_bound) {
                    best_mu = Some(e);
                }
            }
        }
    }
    let (best_eps, best_mu) = (
        best_eps.expect("at least one threshold"),
        best_mu.expect("at least one threshold"),
    );
    let clopper_pearson = evaluate(best_eps.test, &eval0, &eval1, delta, confidence)?;
    let gdp = evaluate(best_mu.test, &eval0, &eval1, delta, confidence)?;
    let epsilon_lower_bound_gdp = match trade_off {
        TradeOff::Gaussian => Some(stats::gdp_epsilon(gdp.gdp_mu_lower_bound, delta)?),
        TradeOff::Unknown => None,
    };

    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    let (m0, m1) = (mean(&scores.without), mean(&scores.with));
    let ss = |v: &[f64], m: f64| v.iter().map(|x| (x - m).powi(2)).sum::<f64>();
    let dof = (scores.without.len() + scores.with.len() - 2) as f64;
    let s = ((ss(&scores.without, m0) + ss(&scores.with, m1)) / dof).sqrt();
    let gdp_mu_estimate = if s > 0.0 {
        (m1 - m0) / s
    } else {
        f64::INFINITY
    };

    Ok(ScoreAnalysis {
        delta,
        confidence,
        tuning: (tune0.len(), tune1.len()),
        evaluation: (eval0.len(), eval1.len()),
        clopper_pearson,
        gdp,
        epsilon_lower_bound_gdp,
        gdp_mu_estimate,
    })
}

/// The empirical ROC curve `(FPR, TPR)` of the test `score ≥ t` at up to `points` thresholds, from
/// (0, 0) to (1, 1).
pub fn roc_curve(scores: &Scores, points: usize) -> Vec<(f64, f64)> {
    let s0 = sorted(scores.without.iter().copied());
    let s1 = sorted(scores.with.iter().copied());
    if s0.is_empty() || s1.is_empty() {
        return Vec::new();
    }
    let all = sorted(s0.iter().chain(&s1).copied());
    let mut out = vec![(0.0, 0.0)];
    let step = (all.len() / points.max(2)).max(1);
    for i in (0..all.len()).rev().step_by(step) {
        let t = all[i];
        out.push((
            at_or_above(&s0, t) as f64 / s0.len() as f64,
            at_or_above(&s1, t) as f64 / s1.len() as f64,
        ));
    }
    out.push((1.0, 1.0));
    out
}
