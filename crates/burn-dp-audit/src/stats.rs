//! The statistics of an audit: Clopper–Pearson intervals, the (ε, δ) bound from a (TPR, FPR)
//! pair, Gaussian-DP μ from a point of the trade-off curve, and the one-run bound of Steinke,
//! Nasr and Jagielski (2023). Quantiles come from `statrs` (regularised incomplete beta and its
//! inverse, binomial and normal distributions).

use statrs::distribution::{Beta, Binomial, ContinuousCDF, Discrete, DiscreteCDF, Normal};

use burn_dp::DpError;

/// A two-sided confidence interval `[lower, upper]` for a proportion.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Interval {
    /// Lower end.
    pub lower: f64,
    /// Upper end.
    pub upper: f64,
}

fn check_confidence(confidence: f64) -> Result<(), DpError> {
    if confidence > 0.0 && confidence < 1.0 {
        Ok(())
    } else {
        Err(DpError::InvalidConfig(format!(
            "confidence must be in (0, 1), got {confidence}"
        )))
    }
}

fn check_delta(delta: f64) -> Result<(), DpError> {
    if (0.0..1.0).contains(&delta) {
        Ok(())
    } else {
        Err(DpError::InvalidConfig(format!(
            "delta must be in [0, 1), got {delta}"
        )))
    }
}

/// The exact (Clopper–Pearson 1934) two-sided interval at level `confidence` for a proportion
/// observed as `successes` out of `trials`:
/// `lower = B⁻¹(α/2; k, n−k+1)`, `upper = B⁻¹(1−α/2; k+1, n−k)` with `α = 1 − confidence` and
/// `B⁻¹` the beta quantile (`lower = 0` when `k = 0`, `upper = 1` when `k = n`).
///
/// Each end alone holds with probability at least `1 − α/2`, so a statement using one lower and
/// one upper end of two such intervals holds with probability at least `confidence`.
pub fn clopper_pearson(successes: u64, trials: u64, confidence: f64) -> Result<Interval, DpError> {
    check_confidence(confidence)?;
    if trials == 0 || successes > trials {
        return Err(DpError::InvalidConfig(format!(
            "Clopper–Pearson needs 0 <= successes <= trials and trials > 0, got {successes}/{trials}"
        )));
    }
    let alpha = 1.0 - confidence;
    let (k, n) = (successes as f64, trials as f64);
    let beta = |a: f64, b: f64| {
        Beta::new(a, b).map_err(|e| DpError::InvalidConfig(format!("beta({a}, {b}): {e}")))
    };
    let lower = if successes == 0 {
        0.0
    } else {
        beta(k, n - k + 1.0)?.inverse_cdf(alpha / 2.0)
    };
    let upper = if successes == trials {
        1.0
    } else {
        beta(k + 1.0, n - k)?.inverse_cdf(1.0 - alpha / 2.0)
    };
    Ok(Interval { lower, upper })
}

/// The ε an (ε, δ)-DP mechanism must at least have for an event seen with probability at least
/// `p_with_lower` in one world and at most `p_without_upper` in the other: DP requires
/// `P₁(E) ≤ e^ε P₀(E) + δ`, so `ε ≥ ln((P₁(E) − δ) / P₀(E))` (Kairouz et al. 2015, Thm. 2.1;
/// as used by Jagielski et al. 2020, §4 and Nasr et al. 2023, eq. 1). Zero when the ratio says
/// nothing.
pub fn epsilon_from_rates(p_with_lower: f64, p_without_upper: f64, delta: f64) -> f64 {
    let num = p_with_lower - delta;
    if num <= 0.0 || p_without_upper <= 0.0 {
        if num > 0.0 {
            return f64::INFINITY;
        }
        return 0.0;
    }
    (num / p_without_upper).ln().max(0.0)
}

fn standard_normal() -> Normal {
    Normal::standard()
}

/// The Gaussian-DP μ that a test with type-I error at most `alpha_upper` and type-II error at
/// most `beta_upper` rules out: a μ-GDP mechanism has trade-off `β ≥ Φ(Φ⁻¹(1−α) − μ)` (Dong,
/// Roth and Su 2022, eq. 2.3), so `μ ≥ Φ⁻¹(1−α) − Φ⁻¹(β)` (Nasr et al. 2023, §5.2). Zero when the
/// point is on the trivial side.
pub fn gdp_mu_from_errors(alpha_upper: f64, beta_upper: f64) -> f64 {
    let n = standard_normal();
    let a = alpha_upper.clamp(0.0, 1.0);
    let b = beta_upper.clamp(0.0, 1.0);
    if a >= 1.0 || b >= 1.0 {
        return 0.0;
    }
    if a <= 0.0 || b <= 0.0 {
        return f64::INFINITY;
    }
    (n.inverse_cdf(1.0 - a) - n.inverse_cdf(b)).max(0.0)
}

/// δ(ε) of a μ-GDP mechanism: `Φ(−ε/μ + μ/2) − e^ε Φ(−ε/μ − μ/2)` (Dong, Roth and Su 2022,
/// Corollary 2.13).
pub fn gdp_delta(mu: f64, epsilon: f64) -> f64 {
    if mu <= 0.0 {
        return 0.0;
    }
    let n = standard_normal();
    let a = n.cdf(-epsilon / mu + mu / 2.0);
    // e^ε Φ(x) computed in logs: Φ(x) underflows before e^ε overflows.
    let x = -epsilon / mu - mu / 2.0;
    let log_phi = n.cdf(x).ln();
    let b = if log_phi.is_finite() {
        (epsilon + log_phi).exp()
    } else {
        0.0
    };
    (a - b).max(0.0)
}

/// The smallest ε with `δ(ε) ≤ delta` for a μ-GDP mechanism ([`gdp_delta`] is decreasing in ε):
/// bisection to 1e-10.
pub fn gdp_epsilon(mu: f64, delta: f64) -> Result<f64, DpError> {
    check_delta(delta)?;
    if mu.is_nan() || mu < 0.0 {
        return Err(DpError::InvalidConfig(format!("mu must be >= 0, got {mu}")));
    }
    if mu == 0.0 || gdp_delta(mu, 0.0) <= delta {
        return Ok(0.0);
    }
    if mu.is_infinite() {
        return Ok(f64::INFINITY);
    }
    let (mut lo, mut hi) = (0.0, 1.0);
    while gdp_delta(mu, hi) > delta {
        hi *= 2.0;
        if hi > 1e6 {
            return Ok(f64::INFINITY);
        }
    }
    while hi - lo > 1e-10 * hi.max(1.0) {
        let mid = 0.5 * (lo + hi);
        if gdp_delta(mu, mid) > delta {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    Ok(hi)
}

/// The p-value of `correct` or more correct guesses out of `guesses` when `canaries` canaries
/// were each included independently with probability ½ and the mechanism is (ε, δ)-DP: the
/// bound of Steinke, Nasr and Jagielski (2023), "Privacy auditing with one (1) training run",
/// Theorem 5.2, in the form of their Algorithm 2 (appendix):
/// `β + 2 m δ α`, with `β = P[Bin(r, q) ≥ v]`, `q = e^ε / (1 + e^ε)` and
/// `α = max_{1 ≤ i ≤ v} P[v > Bin(r, q) ≥ v − i] / i`.
pub fn one_run_p_value(
    canaries: u64,
    guesses: u64,
    correct: u64,
    epsilon: f64,
    delta: f64,
) -> Result<f64, DpError> {
    check_delta(delta)?;
    if correct > guesses || guesses > canaries || epsilon.is_nan() || epsilon < 0.0 {
        return Err(DpError::InvalidConfig(format!(
            "one-run bound needs 0 <= correct <= guesses <= canaries and epsilon >= 0, got \
             {correct} <= {guesses} <= {canaries}, epsilon {epsilon}"
        )));
    }
    if guesses == 0 {
        return Ok(1.0);
    }
    let q = 1.0 / (1.0 + (-epsilon).exp());
    let bin = Binomial::new(q, guesses)
        .map_err(|e| DpError::InvalidConfig(format!("binomial({q}, {guesses}): {e}")))?;
    // P[Bin ≥ v] = 1 − P[Bin ≤ v − 1]
    let beta = if correct == 0 {
        1.0
    } else {
        bin.sf(correct - 1)
    };
    let (mut alpha, mut sum) = (0.0f64, 0.0f64);
    for i in 1..=correct {
        sum += bin.pmf(correct - i);
        if sum > i as f64 * alpha {
            alpha = sum / i as f64;
        }
    }
    Ok((beta + alpha * delta * 2.0 * canaries as f64).min(1.0))
}

/// The largest ε that `correct` out of `guesses` (from `canaries` canaries) refutes at
/// `confidence`: the ε where [`one_run_p_value`] reaches `1 − confidence` (Steinke et al. 2023,
/// Algorithm 2: the p-value grows with ε; bisection, 40 halvings after bracketing).
pub fn one_run_epsilon_lower_bound(
    canaries: u64,
    guesses: u64,
    correct: u64,
    delta: f64,
    confidence: f64,
) -> Result<f64, DpError> {
    check_confidence(confidence)?;
    let p = 1.0 - confidence;
    let pv = |e: f64| one_run_p_value(canaries, guesses, correct, e, delta);
    if pv(0.0)? >= p {
        return Ok(0.0);
    }
    let (mut lo, mut hi) = (0.0, 1.0);
    while pv(hi)? < p {
        lo = hi;
        hi += 1.0;
        if hi > 1e3 {
            return Ok(f64::INFINITY);
        }
    }
    for _ in 0..40 {
        let mid = 0.5 * (lo + hi);
        if pv(mid)? < p {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    Ok(lo)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(what: &str, got: f64, want: f64, tol: f64) {
        assert!(
            (got - want).abs() <= tol * want.abs().max(1e-300),
            "{what}: got {got}, want {want}"
        );
    }

    /// References: scipy 1.17.1, `scipy.stats.beta.ppf(0.025, k, n-k+1)` and
    /// `scipy.stats.beta.ppf(0.975, k+1, n-k)`, computed with python3 for this test.
    #[test]
    fn clopper_pearson_matches_scipy() {
        for &(k, n, lo, hi) in CP_REFERENCE {
            let i = clopper_pearson(k, n, 0.95).unwrap();
            // statrs inverts the regularised incomplete beta to ~1e-8 relative.
            close(&format!("lower {k}/{n}"), i.lower, lo, 1e-7);
            close(&format!("upper {k}/{n}"), i.upper, hi, 1e-7);
        }
        let i = clopper_pearson(0, 10, 0.95).unwrap();
        assert_eq!(i.lower, 0.0);
        assert!(clopper_pearson(11, 10, 0.95).is_err());
        assert!(clopper_pearson(1, 10, 1.0).is_err());
    }

    /// References: the authors' Python (Steinke et al. 2023, Algorithm 2: `p_value_DP_audit`,
    /// `get_eps_audit(m, r, v, delta, p=0.05)` with its 30 halvings raised to 60), run with
    /// scipy 1.17.1 (`stats.binom.sf`, `stats.binom.pmf`).
    #[test]
    fn one_run_bound_matches_reference() {
        for &(m, r, v, delta, eps) in ONE_RUN_REFERENCE {
            let got = one_run_epsilon_lower_bound(m, r, v, delta, 0.95).unwrap();
            close(&format!("m={m} r={r} v={v}"), got, eps, 1e-6);
        }
        for &(m, r, v, eps, delta, p) in ONE_RUN_P_REFERENCE {
            let got = one_run_p_value(m, r, v, eps, delta).unwrap();
            close(&format!("p m={m} r={r} v={v} eps={eps}"), got, p, 1e-8);
        }
        assert!(one_run_p_value(10, 11, 1, 1.0, 0.0).is_err());
    }

    /// References: scipy 1.17.1, `norm.cdf(-e/mu + mu/2) - exp(e) * norm.cdf(-e/mu - mu/2) = 1e-5`
    /// solved for e with `scipy.optimize.brentq(..., xtol=1e-14)`.
    #[test]
    fn gdp_conversion_matches_reference() {
        for &(mu, eps) in GDP_REFERENCE {
            close(
                &format!("mu {mu}"),
                gdp_epsilon(mu, 1e-5).unwrap(),
                eps,
                1e-6,
            );
        }
        assert_eq!(gdp_epsilon(0.0, 1e-5).unwrap(), 0.0);
        // Point on G_mu: alpha = 0.1, beta = Phi(Phi^-1(0.9) - 1) -> mu = 1.
        let b = Normal::standard().cdf(Normal::standard().inverse_cdf(0.9) - 1.0);
        close("mu from errors", gdp_mu_from_errors(0.1, b), 1.0, 1e-9);
        assert_eq!(epsilon_from_rates(0.5, 0.05, 0.0), (10.0f64).ln());
        assert_eq!(epsilon_from_rates(1e-6, 0.05, 1e-5), 0.0);
    }

    // ANCHOR: reference_values
    // (k, n, lower, upper): scipy.stats.beta.ppf at 0.025 / 0.975.
    const CP_REFERENCE: &[(u64, u64, f64, f64)] = &[
        (1, 10, 0.0025285785444617848, 0.4450161170281954),
        (5, 10, 0.18708602844739855, 0.8129139715526015),
        (37, 1000, 0.02618270884373734, 0.05064112305992485),
        (4980, 5000, 0.9938290523444677, 0.9975550361884891),
        (3, 20000, 3.093467444528525e-05, 0.00043830045339363695),
        (500, 1000, 0.46854917297179194, 0.531450827028208),
    ];
    // (m, r, v, delta, epsilon lower bound at 95 %).
    const ONE_RUN_REFERENCE: &[(u64, u64, u64, f64, f64)] = &[
        (1000, 100, 90, 1e-05, 1.6261434806957262),
        (1000, 200, 150, 1e-05, 0.8199729121699937),
        (10000, 1000, 700, 1e-05, 0.7292532390257122),
        (100, 20, 20, 0.0, 1.8227156065028978),
        (1000, 100, 55, 1e-05, 0.0),
        (5000, 500, 480, 1e-05, 2.7830207076873434),
    ];
    // (m, r, v, epsilon, delta, p-value).
    const ONE_RUN_P_REFERENCE: &[(u64, u64, u64, f64, f64, f64)] = &[
        (1000, 100, 90, 1.0, 1e-05, 0.0008412885614385305),
        (1000, 100, 90, 2.0, 1e-05, 0.3449868367938024),
        (10000, 1000, 700, 0.5, 1e-05, 0.0018660565715199332),
        (100, 20, 20, 3.0, 0.0, 0.37842134627078083),
    ];
    // (mu, epsilon at delta = 1e-5).
    const GDP_REFERENCE: &[(f64, f64)] = &[
        (0.268, 0.9997905633672722),
        (0.5, 1.9930914044151173),
        (1.0, 4.377178095681225),
        (2.0, 9.997256146434298),
        (4.0, 24.38161088311367),
    ];
    // ANCHOR_END: reference_values
}
