//! The GDP accountant — an APPROXIMATION, not a guarantee.
//!
//! Bu, Dong, Long & Su (2020), "Deep Learning with Gaussian Differential Privacy" (Harvard Data
//! Science Review), Sec. 3, apply the central limit theorem for composition of Dong, Roth & Su
//! (2022), "Gaussian Differential Privacy" (JRSS-B), Sec. 3, to Poisson subsampling: `T` steps
//! of the Poisson-subsampled Gaussian mechanism are asymptotically `μ`-GDP with
//! `μ = q √(T (e^{1/σ²} - 1))`. Heterogeneous histories compose as
//! `μ² = Σ_k T_k q_k² (e^{1/σ_k²} - 1)` (μ-GDP composes in quadrature, Dong et al., Cor. 3.3).
//! This is Opacus's `GDPAccountant` (Poisson mode). It can UNDER-estimate ε (see the fixture rows
//! with small q·T), so use RDP or PRV for guarantees: noise calibration refuses GDP
//! ([`crate::AccountantError::NotAnUpperBound`]), and burn-dp's budget enforcement too.

use crate::error::{AccountantError, Result};
use crate::history::{validate_delta, History};
use crate::special::{log_ndtr, ndtr};

/// The CLT parameter `μ` of a history (see module docs).
pub fn gdp_mu(history: &History) -> Result<f64> {
    history.validate()?;
    let mu2: f64 = history
        .entries()
        .iter()
        .map(|e| {
            let s2 = e.noise_multiplier * e.noise_multiplier;
            e.steps as f64 * e.sample_rate * e.sample_rate * (1.0 / s2).exp_m1()
        })
        .sum();
    Ok(mu2.sqrt())
}

/// δ(ε) of a μ-GDP mechanism: `Φ(-ε/μ + μ/2) - e^ε Φ(-ε/μ - μ/2)`
/// (Dong, Roth & Su 2022, Corollary 2.13); the second term is formed in log space.
pub fn gdp_delta(mu: f64, epsilon: f64) -> f64 {
    ndtr(-epsilon / mu + mu / 2.0) - (epsilon + log_ndtr(-epsilon / mu - mu / 2.0)).exp()
}

/// ε at `delta` of a μ-GDP mechanism: the root of [`gdp_delta`]` = δ` (δ(ε) is decreasing), by
/// bracketing and bisection to machine precision.
pub fn gdp_epsilon_from_mu(mu: f64, delta: f64) -> Result<f64> {
    validate_delta(delta)?;
    if !(mu.is_finite() && mu >= 0.0) {
        return Err(AccountantError::Numerical(format!(
            "GDP parameter mu = {mu} is not finite"
        )));
    }
    if mu == 0.0 || gdp_delta(mu, 0.0) <= delta {
        return Ok(0.0);
    }
    let (mut lo, mut hi) = (0.0, 1.0);
    while gdp_delta(mu, hi) > delta {
        lo = hi;
        hi *= 2.0;
        if hi > 1e12 {
            return Err(AccountantError::Numerical(
                "GDP epsilon exceeds 1e12".into(),
            ));
        }
    }
    for _ in 0..200 {
        let mid = 0.5 * (lo + hi);
        if mid <= lo || mid >= hi {
            break;
        }
        if gdp_delta(mu, mid) > delta {
            lo = mid
        } else {
            hi = mid
        }
    }
    Ok(hi)
}

/// ε at `delta` of a history under the GDP (CLT) approximation. An empty history has ε = 0.
pub fn gdp_epsilon(history: &History, delta: f64) -> Result<f64> {
    validate_delta(delta)?;
    gdp_epsilon_from_mu(gdp_mu(history)?, delta)
}
