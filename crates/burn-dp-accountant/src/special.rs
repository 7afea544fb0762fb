//! Special functions needed by the accountants, written for full double precision:
//! `erfc`, the scaled `erfcx`, `log_erfc`, `log_ndtr`, log-space addition, and Gauss–Legendre
//! quadrature nodes.
//!
//! The error function uses the rational Chebyshev approximations of
//! W. J. Cody, "Rational Chebyshev approximations for the error function",
//! Math. Comp. 23 (1969), pp. 631–637 (the coefficients of his `CALERF` routine, which reach
//! about 1e-16 relative accuracy on the three intervals `[0, 0.46875]`, `(0.46875, 4]`, `(4, ∞)`).

// The coefficients keep all the digits Cody published.
#![allow(clippy::excessive_precision)]

use std::f64::consts::{LN_2, SQRT_2};

/// `1 / sqrt(pi)`.
const FRAC_1_SQRT_PI: f64 = 0.564_189_583_547_756_3;

/// Cody (1969), erf on `|x| <= 0.46875`: numerator coefficients.
const A: [f64; 5] = [
    3.161_123_743_870_565_6E0,
    1.138_641_541_510_501_6E2,
    3.774_852_376_853_020_2E2,
    3.209_377_589_138_469_5E3,
    1.857_777_061_846_031_5E-1,
];
/// Cody (1969), erf on `|x| <= 0.46875`: denominator coefficients.
const B: [f64; 4] = [
    2.360_129_095_234_412_1E1,
    2.440_246_379_344_441_7E2,
    1.282_616_526_077_372_3E3,
    2.844_236_833_439_170_6E3,
];
/// Cody (1969), erfcx on `(0.46875, 4]`: numerator coefficients.
const C: [f64; 9] = [
    5.641_884_969_886_701E-1,
    8.883_149_794_388_376E0,
    6.611_919_063_714_163E1,
    2.986_351_381_974_001_3E2,
    8.819_522_212_417_691E2,
    1.712_047_612_634_070_6E3,
    2.051_078_377_826_071_5E3,
    1.230_339_354_797_997_2E3,
    2.153_115_354_744_038_5E-8,
];
/// Cody (1969), erfcx on `(0.46875, 4]`: denominator coefficients.
const D: [f64; 8] = [
    1.574_492_611_070_983_5E1,
    1.176_939_508_913_125E2,
    5.371_811_018_620_099E2,
    1.621_389_574_566_690_2E3,
    3.290_799_235_733_459_7E3,
    4.362_619_090_143_247E3,
    3.439_367_674_143_721_6E3,
    1.230_339_354_803_749_4E3,
];
/// Cody (1969), erfcx on `(4, ∞)` (in `1/x²`): numerator coefficients.
const P: [f64; 6] = [
    3.053_266_349_612_323_4E-1,
    3.603_448_999_498_044_4E-1,
    1.257_817_261_112_292_5E-1,
    1.608_378_514_874_227_7E-2,
    6.587_491_615_298_378E-4,
    1.631_538_713_730_209_8E-2,
];
/// Cody (1969), erfcx on `(4, ∞)` (in `1/x²`): denominator coefficients.
const Q: [f64; 5] = [
    2.568_520_192_289_822_4E0,
    1.872_952_849_923_460_5E0,
    5.279_051_029_514_284E-1,
    6.051_834_131_244_132E-2,
    2.335_204_976_268_691_8E-3,
];

/// erf(y) for `0 <= y <= 0.46875` (Cody 1969, first interval).
fn erf_small(y: f64) -> f64 {
    let ysq = y * y;
    let mut num = A[4] * ysq;
    let mut den = ysq;
    for i in 0..3 {
        num = (num + A[i]) * ysq;
        den = (den + B[i]) * ysq;
    }
    y * (num + A[3]) / (den + B[3])
}

/// Scaled complementary error function `exp(y²) erfc(y)` for `y > 0.46875`
/// (Cody 1969, second and third intervals).
fn erfcx_large(y: f64) -> f64 {
    if y <= 4.0 {
        let mut num = C[8] * y;
        let mut den = y;
        for i in 0..7 {
            num = (num + C[i]) * y;
            den = (den + D[i]) * y;
        }
        (num + C[7]) / (den + D[7])
    } else if y >= 6.71e7 {
        FRAC_1_SQRT_PI / y
    } else {
        let ysq = 1.0 / (y * y);
        let mut num = P[5] * ysq;
        let mut den = ysq;
        for i in 0..4 {
            num = (num + P[i]) * ysq;
            den = (den + Q[i]) * ysq;
        }
        (FRAC_1_SQRT_PI - ysq * (num + P[4]) / (den + Q[4])) / y
    }
}

/// `-y²` split as `(-hi², -del)` with `hi = trunc(16 y) / 16` so that `exp(-y²)` is evaluated
/// without the cancellation of forming `y²` in floating point (Cody 1969, `CALERF`).
fn neg_square_parts(y: f64) -> (f64, f64) {
    let hi = (y * 16.0).trunc() / 16.0;
    let del = (y - hi) * (y + hi);
    (-hi * hi, -del)
}

/// `exp(-y²)` to full relative precision: Veltkamp's split `y = hi + lo` (`hi` with 26
/// significant bits, so `hi²` is exact) gives `y² = hi² + d`, `d = lo (2 hi + lo)` tiny, and
/// `exp(-y²) = exp(-hi²) (1 - d + d²/2 - d³/6)`: one exponential.
pub fn exp_neg_square(y: f64) -> f64 {
    const SPLIT: f64 = 134_217_729.0; // 2^27 + 1
    let y = y.abs();
    if y.is_nan() {
        return f64::NAN;
    }
    if y >= 1e150 {
        return 0.0;
    }
    let c = SPLIT * y;
    let hi = c - (c - y);
    let lo = y - hi;
    let d = lo * (2.0 * hi + lo);
    (-(hi * hi)).exp() * (1.0 - d * (1.0 - d * (0.5 - d / 6.0)))
}

/// Scaled complementary error function `erfcx(x) = exp(x²) erfc(x)` for `x ≥ 0` (Cody 1969);
/// `NaN` for negative `x` (not needed here, and it overflows quickly there).
pub fn erfcx(x: f64) -> f64 {
    if x < 0.0 || x.is_nan() {
        f64::NAN
    } else if x <= 0.46875 {
        (x * x).exp() * (1.0 - erf_small(x))
    } else {
        erfcx_large(x)
    }
}

/// Complementary error function `erfc(x) = 1 - erf(x)`, relative accuracy about 1e-16
/// (Cody 1969). Underflows to 0 for `x > 26.55`; use [`log_erfc`] there.
pub fn erfc(x: f64) -> f64 {
    if x.is_nan() {
        return f64::NAN;
    }
    let y = x.abs();
    let r = if y <= 0.46875 {
        1.0 - erf_small(y) * x.signum()
    } else if y >= 26.6 {
        0.0
    } else {
        exp_neg_square(y) * erfcx_large(y)
    };
    if x < -0.46875 {
        2.0 - r
    } else {
        r
    }
}

/// Natural logarithm of `erfc(x)`, accurate also where `erfc(x)` underflows
/// (`log erfc(x) = -x² + log erfcx(x)` for `x > 0.46875`). This is the quantity Opacus computes
/// as `log(2) + log_ndtr(-x √2)` in its fractional-order RDP series.
pub fn log_erfc(x: f64) -> f64 {
    if x <= 0.46875 {
        erfc(x).ln()
    } else {
        let (a, b) = neg_square_parts(x);
        a + b + erfcx_large(x).ln()
    }
}

/// Logarithm of the standard normal CDF, `log Φ(x) = log(erfc(-x / √2) / 2)`.
pub fn log_ndtr(x: f64) -> f64 {
    log_erfc(-x / SQRT_2) - LN_2
}

/// Standard normal CDF `Φ(x) = erfc(-x / √2) / 2`.
pub fn ndtr(x: f64) -> f64 {
    0.5 * erfc(-x / SQRT_2)
}

/// `log(exp(a) + exp(b))` without overflow.
pub fn log_add(a: f64, b: f64) -> f64 {
    let (lo, hi) = if a < b { (a, b) } else { (b, a) };
    if lo == f64::NEG_INFINITY {
        return hi;
    }
    (lo - hi).exp().ln_1p() + hi
}

/// `log(exp(a) - exp(b))` for `a >= b`; `NaN` when `a < b` (the difference would be negative).
pub fn log_sub(a: f64, b: f64) -> f64 {
    if a < b {
        return f64::NAN;
    }
    if b == f64::NEG_INFINITY {
        return a;
    }
    if a == b {
        return f64::NEG_INFINITY;
    }
    let d = (a - b).exp_m1();
    if d.is_infinite() {
        a
    } else {
        d.ln() + b
    }
}

/// Nodes and weights of the `n`-point Gauss–Legendre rule on `[-1, 1]`, computed by Newton's
/// method on the Legendre polynomial `P_n` (Golub & Welsch give the same nodes; here the classical
/// three-term recurrence `(k+1) P_{k+1} = (2k+1) x P_k - k P_{k-1}` is used).
pub fn gauss_legendre(n: usize) -> Vec<(f64, f64)> {
    let mut rule = Vec::with_capacity(n);
    for i in 0..n {
        // Initial guess (Tricomi): cos(pi (i + 3/4) / (n + 1/2)).
        let mut x = (std::f64::consts::PI * (i as f64 + 0.75) / (n as f64 + 0.5)).cos();
        let mut dp = 1.0;
        for _ in 0..100 {
            let (mut p0, mut p1) = (1.0, x);
            for k in 1..n {
                let kf = k as f64;
                let p2 = ((2.0 * kf + 1.0) * x * p1 - kf * p0) / (kf + 1.0);
                p0 = p1;
                p1 = p2;
            }
            // p1 = P_n(x), p0 = P_{n-1}(x).
            dp = n as f64 * (x * p1 - p0) / (x * x - 1.0);
            let dx = p1 / dp;
            x -= dx;
            if dx.abs() < 1e-16 {
                break;
            }
        }
        rule.push((x, 2.0 / ((1.0 - x * x) * dp * dp)));
    }
    rule
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rel(a: f64, b: f64) -> f64 {
        ((a - b) / b).abs()
    }

    #[test]
    fn erfc_matches_reference_values() {
        // Reference values from the definition (high-precision tables, e.g. DLMF / mpmath).
        let cases = [
            (0.0, 1.0),
            (0.1, 0.887_537_083_981_715_1),
            (0.5, 0.479_500_122_186_953_5),
            (1.0, 0.157_299_207_050_285_13),
            (2.0, 0.004_677_734_981_047_266),
            (3.0, 2.209_049_699_858_544e-5),
            (5.0, 1.537_459_794_428_034_8e-12),
            (10.0, 2.088_487_583_762_545e-45),
            (-1.0, 1.842_700_792_949_715),
        ];
        for (x, want) in cases {
            assert!(
                rel(erfc(x), want) < 1e-14,
                "erfc({x}) = {} != {want}",
                erfc(x)
            );
        }
    }

    #[test]
    fn log_erfc_continues_past_underflow() {
        // Reference: scipy, log(2) + log_ndtr(-x sqrt(2)).
        for (x, want) in [
            (5.0, -27.200_889_545_537_446),
            (30.0, -903.974_117_110_644_2),
            (100.0, -10_005.177_585_122_668),
        ] {
            assert!(
                rel(log_erfc(x), want) < 1e-14,
                "log_erfc({x}) = {}",
                log_erfc(x)
            );
        }
        assert!(rel(log_erfc(-2.0), erfc(-2.0).ln()) < 1e-14);
    }

    #[test]
    fn gauss_legendre_integrates_polynomials_exactly() {
        let rule = gauss_legendre(8);
        let s: f64 = rule.iter().map(|(x, w)| w * x.powi(14)).sum();
        assert!((s - 2.0 / 15.0).abs() < 1e-14);
    }

    #[test]
    fn erfcx_is_scaled_erfc() {
        for x in [0.0, 0.3, 0.46875, 0.5, 2.0, 4.0, 4.5, 10.0, 26.0] {
            let want = erfc(x) * (x * x).exp();
            assert!(rel(erfcx(x), want) < 1e-13, "erfcx({x})");
        }
        // Against Cody's splitting of y² (exact hi², exp of the small remainder).
        for y in [0.0, 0.3, 1.7, 3.3, 7.123_456_789, 20.5, 26.0] {
            let hi = (y * 16.0f64).trunc() / 16.0;
            let want = (-hi * hi).exp() * (-(y - hi) * (y + hi)).exp();
            assert!(rel(exp_neg_square(y), want) < 4e-16, "{y}");
        }
    }

    #[test]
    fn log_space_arithmetic() {
        assert!((log_add(2f64.ln(), 3f64.ln()) - 5f64.ln()).abs() < 1e-15);
        assert!((log_sub(5f64.ln(), 3f64.ln()) - 2f64.ln()).abs() < 1e-15);
        assert!(log_sub(1.0, 2.0).is_nan());
    }
}
