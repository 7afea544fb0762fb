//! Rényi DP of the Poisson-subsampled Gaussian mechanism and its conversion to (ε, δ)-DP.
//!
//! Implements Mironov, Talwar & Zhang (2019), "Rényi Differential Privacy of the Sampled
//! Gaussian Mechanism" (arXiv:1908.10530), Section 3.3, exactly as Opacus's `_compute_rdp`
//! (and TF Privacy / dp_accounting) do, and the RDP → (ε, δ) conversion of Balle et al. (2020),
//! "Hypothesis testing interpretations and Rényi differential privacy", Theorem 21.

use crate::error::{AccountantError, Result};
use crate::history::{validate_delta, validate_noise_multiplier, validate_sample_rate, History};
use crate::special::{log_add, log_erfc, log_sub};

/// Opacus's default RDP orders: `[1 + x / 10 for x in 1..100] + [12, 13, ..., 63]`.
pub fn default_orders() -> Vec<f64> {
    (1..100)
        .map(|x| 1.0 + f64::from(x) / 10.0)
        .chain((12..64).map(f64::from))
        .collect()
}

/// `log A_α` for integer α (Mironov et al. 2019, Sec. 3.3, the binomial expansion
/// `A_α = Σ_{i=0}^{α} C(α, i) (1-q)^{α-i} q^i exp((i² - i) / (2σ²))`), summed in log space.
fn log_a_int(q: f64, sigma: f64, alpha: u64) -> f64 {
    let (log_q, log_1mq) = (q.ln(), (-q).ln_1p());
    let two_s2 = 2.0 * sigma * sigma;
    let mut log_a = f64::NEG_INFINITY;
    let mut log_binom = 0.0; // log C(alpha, 0)
    for i in 0..=alpha {
        let fi = i as f64;
        let s = log_binom + fi * log_q + (alpha - i) as f64 * log_1mq + (fi * fi - fi) / two_s2;
        log_a = log_add(log_a, s);
        log_binom += ((alpha - i) as f64).ln() - (fi + 1.0).ln();
    }
    log_a
}

/// `log A_α` for fractional α (Mironov et al. 2019, Sec. 3.3): the two half-line integrals
/// around `z0 = σ² log(1/q - 1) + 1/2` expanded as series of generalised binomial terms
/// weighted by `erfc((i - z0) / (√2 σ)) / 2` and `erfc((z0 - j) / (√2 σ)) / 2`, `j = α - i`,
/// summed until both terms fall below `exp(-30)` (Opacus's `_compute_log_a_frac`).
fn log_a_frac(q: f64, sigma: f64, alpha: f64) -> f64 {
    let (log_q, log_1mq) = (q.ln(), (-q).ln_1p());
    let two_s2 = 2.0 * sigma * sigma;
    let sqrt2_sigma = std::f64::consts::SQRT_2 * sigma;
    let z0 = sigma * sigma * (1.0 / q - 1.0).ln() + 0.5;
    let (mut log_a0, mut log_a1) = (f64::NEG_INFINITY, f64::NEG_INFINITY);
    // log |C(alpha, i)| and the sign of C(alpha, i), updated by C(α, i+1) = C(α, i)(α - i)/(i + 1).
    let (mut log_coef, mut positive) = (0.0f64, true);
    for i in 0..100_000u32 {
        let fi = f64::from(i);
        let j = alpha - fi;
        let log_t0 = log_coef + fi * log_q + j * log_1mq;
        let log_t1 = log_coef + j * log_q + fi * log_1mq;
        let log_e0 = 0.5f64.ln() + log_erfc((fi - z0) / sqrt2_sigma);
        let log_e1 = 0.5f64.ln() + log_erfc((z0 - j) / sqrt2_sigma);
        let log_s0 = log_t0 + (fi * fi - fi) / two_s2 + log_e0;
        let log_s1 = log_t1 + (j * j - j) / two_s2 + log_e1;
        if positive {
            log_a0 = log_add(log_a0, log_s0);
            log_a1 = log_add(log_a1, log_s1);
        } else {
            log_a0 = log_sub(log_a0, log_s0);
            log_a1 = log_sub(log_a1, log_s1);
        }
        if log_s0.max(log_s1) < -30.0 {
            break;
        }
        let factor = alpha - fi;
        positive ^= factor < 0.0;
        log_coef += factor.abs().ln() - (fi + 1.0).ln();
    }
    log_add(log_a0, log_a1)
}

/// RDP ε(α) of ONE step of the Poisson-subsampled Gaussian mechanism with sampling rate `q` and
/// noise multiplier `sigma`, at order `alpha > 1`: `log(A_α) / (α - 1)`
/// (Mironov et al. 2019, Sec. 3.3; for `q = 1` the Gaussian mechanism's `α / (2σ²)`,
/// Mironov 2017, "Rényi Differential Privacy", Gaussian mechanism). Inputs are validated.
pub fn rdp_one_step(q: f64, sigma: f64, alpha: f64) -> Result<f64> {
    validate_sample_rate(q)?;
    validate_noise_multiplier(sigma)?;
    validate_order(alpha)?;
    Ok(rdp_one_step_unchecked(q, sigma, alpha))
}

fn rdp_one_step_unchecked(q: f64, sigma: f64, alpha: f64) -> f64 {
    if q == 1.0 {
        return alpha / (2.0 * sigma * sigma);
    }
    if alpha.is_infinite() {
        return f64::INFINITY;
    }
    let log_a = if alpha.fract() == 0.0 && alpha < u64::MAX as f64 {
        log_a_int(q, sigma, alpha as u64)
    } else {
        log_a_frac(q, sigma, alpha)
    };
    // A NaN here means the alternating series cancelled below zero: no usable bound.
    if log_a.is_nan() {
        f64::INFINITY
    } else {
        log_a / (alpha - 1.0)
    }
}

fn validate_order(alpha: f64) -> Result<()> {
    if alpha > 1.0 {
        Ok(())
    } else {
        Err(AccountantError::InvalidOption(format!(
            "RDP orders must be > 1, got {alpha}"
        )))
    }
}

/// Total RDP at each of `orders` of a history: RDP composes additively, so this is
/// `Σ_entries steps · rdp_one_step(q, σ, α)` (Mironov 2017, Prop. 1).
pub fn compute_rdp(history: &History, orders: &[f64]) -> Result<Vec<f64>> {
    history.validate()?;
    orders.iter().try_for_each(|&a| validate_order(a))?;
    Ok(orders
        .iter()
        .map(|&alpha| {
            history
                .entries()
                .iter()
                .map(|e| {
                    e.steps as f64
                        * rdp_one_step_unchecked(e.sample_rate, e.noise_multiplier, alpha)
                })
                .sum()
        })
        .collect())
}

/// Converts RDP values to ε at `delta` by Balle et al. (2020), Theorem 21:
/// `ε = min_α [ rdp(α) - (log δ + log α) / (α - 1) + log((α - 1) / α) ]`.
/// Returns `(ε, optimal α)`; ε is `+∞` when every order is infinite or NaN.
pub fn rdp_to_epsilon(orders: &[f64], rdp: &[f64], delta: f64) -> Result<(f64, f64)> {
    validate_delta(delta)?;
    if orders.len() != rdp.len() || orders.is_empty() {
        return Err(AccountantError::InvalidOption(format!(
            "need as many RDP values as orders (got {} and {})",
            rdp.len(),
            orders.len()
        )));
    }
    orders.iter().try_for_each(|&a| validate_order(a))?;
    let log_delta = delta.ln();
    let mut best = (f64::INFINITY, f64::NAN);
    for (&alpha, &r) in orders.iter().zip(rdp) {
        let eps = r - (log_delta + alpha.ln()) / (alpha - 1.0) + ((alpha - 1.0) / alpha).ln();
        if eps < best.0 {
            best = (eps, alpha);
        }
    }
    Ok((best.0.max(0.0), best.1))
}

/// ε at `delta` of a history under the RDP accountant with the given orders
/// (composition by [`compute_rdp`], conversion by [`rdp_to_epsilon`]). Returns `(ε, optimal α)`;
/// an empty history has ε = 0.
pub fn rdp_epsilon(history: &History, orders: &[f64], delta: f64) -> Result<(f64, f64)> {
    validate_delta(delta)?;
    if history.is_empty() {
        return Ok((0.0, f64::NAN));
    }
    let rdp = compute_rdp(history, orders)?;
    rdp_to_epsilon(orders, &rdp, delta)
}
