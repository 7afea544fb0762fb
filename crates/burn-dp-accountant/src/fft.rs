//! The discrete Fourier transforms of the PRV accountant's composition (Gopi et al. 2021,
//! Sec. 5.2), on `realfft` (real input, full length) and `rustfft` (the small transforms of the
//! band-limited DFT).

use std::f64::consts::PI;
use std::sync::Arc;

use realfft::{ComplexToReal, RealFftPlanner, RealToComplex};
use rustfft::{Fft, FftPlanner};

/// A complex number in double precision.
pub(crate) type Complex = rustfft::num_complex::Complex64;

/// `z^n` by binary exponentiation (`n` up to `u64`, the step counts of a history).
pub(crate) fn powu(z: Complex, n: u64) -> Complex {
    let (mut base, mut exp, mut acc) = (z, n, Complex::new(1.0, 0.0));
    while exp > 0 {
        if exp & 1 == 1 {
            acc *= base;
        }
        exp >>= 1;
        if exp > 0 {
            base *= base;
        }
    }
    acc
}

/// Complex exponential `exp(i θ)`.
fn cis(theta: f64) -> Complex {
    let (s, c) = theta.sin_cos();
    Complex::new(c, s)
}

/// A real-input FFT plan for an even length `n`.
pub(crate) struct RealFft {
    n: usize,
    forward: Arc<dyn RealToComplex<f64>>,
    inverse: Arc<dyn ComplexToReal<f64>>,
}

impl RealFft {
    /// A plan for length `n` (even, at least 2; the accountant uses powers of two).
    pub(crate) fn new(n: usize) -> Self {
        assert!(
            n >= 2 && n.is_multiple_of(2),
            "RealFft needs an even length >= 2"
        );
        let mut planner = RealFftPlanner::<f64>::new();
        Self {
            n,
            forward: planner.plan_fft_forward(n),
            inverse: planner.plan_fft_inverse(n),
        }
    }

    /// `X[k] = Σ_j x[j] exp(-2πi jk/n)`, `k = 0..=n/2`, of `x` zero-padded to the plan's length.
    pub(crate) fn forward(&self, x: &[f64]) -> Vec<Complex> {
        assert!(x.len() <= self.n, "input longer than the plan");
        let mut input = vec![0.0; self.n];
        input[..x.len()].copy_from_slice(x);
        let mut spectrum = self.forward.make_output_vec();
        self.forward
            .process(&mut input, &mut spectrum)
            .expect("buffer lengths come from the plan");
        spectrum
    }

    /// The inverse of [`Self::forward`] (normalised by `1/n`) of the coefficients `X[0..=n/2]`
    /// of a real sequence; the imaginary parts of `X[0]` and `X[n/2]`, zero for a real sequence
    /// up to rounding, are ignored.
    pub(crate) fn inverse(&self, mut spectrum: Vec<Complex>) -> Vec<f64> {
        assert_eq!(
            spectrum.len(),
            self.n / 2 + 1,
            "spectrum length must match the plan"
        );
        spectrum[0].im = 0.0;
        spectrum[self.n / 2].im = 0.0;
        let mut out = self.inverse.make_output_vec();
        self.inverse
            .process(&mut spectrum, &mut out)
            .expect("buffer lengths come from the plan; edge imaginary parts are zero");
        let scale = 1.0 / self.n as f64;
        out.iter_mut().for_each(|v| *v *= scale);
        out
    }
}

/// Length of the small FFTs used for the frequencies `0..=k_max` of a length-`n` sequence.
pub(crate) fn band_fft_len(k_max: usize) -> usize {
    (2 * k_max + 2).next_power_of_two().max(16)
}

/// Offsets `b` handled together by [`dft_low`] (so that each row segment read is a run of
/// consecutive memory), for buffers of `small` points: at most 32, and buffers of at most
/// 512 KiB in all (to stay in cache).
fn band_group(small: usize, period: usize) -> usize {
    (2 * ((512 << 10) / (16 * small)).max(1))
        .clamp(2, 32)
        .min(period)
}

/// The low frequencies `X[0..=k_max]` of the DFT of `x` zero-padded to length `n` (a power of
/// two, with [`band_fft_len`]`(k_max) ≤ n`): writing `j = aP + b` with `P = n / n'`,
/// `X[k] = Σ_b e^{-2πi bk/n} F_b[k mod n']` where `F_b` is the length-`n'` DFT of
/// `a ↦ x[aP + b]` (two offsets per complex FFT, as `x` is real). Costs `P` small in-cache FFTs
/// instead of one FFT of length `n`.
pub(crate) fn dft_low(x: &[f64], n: usize, k_max: usize) -> Vec<Complex> {
    let small = band_fft_len(k_max);
    assert!(
        n.is_power_of_two() && small <= n && x.len() <= n,
        "bad band-limited DFT size"
    );
    let period = n / small;
    let group = band_group(small, period);
    let fft: Arc<dyn Fft<f64>> = FftPlanner::new().plan_fft_forward(small);
    let mut scratch = vec![Complex::default(); fft.get_inplace_scratch_len()];
    let rows = x.len().div_ceil(period).min(small);
    let mut out = vec![Complex::default(); k_max + 1];
    let mut bufs = vec![Complex::default(); small * group.div_ceil(2)];
    for b0 in (0..period).step_by(group) {
        // Buffers whose offsets lie past the period (a last, partial group) stay zero.
        let used = (period - b0).min(group).div_ceil(2);
        let bufs = &mut bufs[..used * small];
        bufs.fill(Complex::default());
        // Gather rows a: x[aP + b0 .. aP + b0 + group], pairs of offsets into one buffer.
        for a in 0..rows {
            let start = a * period + b0;
            let row = &x[start.min(x.len())..(start + group).min(x.len())];
            for (i, &v) in row.iter().enumerate() {
                let c = &mut bufs[(i / 2) * small + a];
                if i % 2 == 0 {
                    c.re = v
                } else {
                    c.im = v
                }
            }
        }
        // One call transforms every buffer (rustfft processes consecutive chunks of `small`).
        fft.process_with_scratch(bufs, &mut scratch);
        for (pair, buf) in bufs.chunks_exact(small).enumerate() {
            let b = b0 + 2 * pair;
            let step = cis(-2.0 * PI * b as f64 / n as f64);
            let step1 = cis(-2.0 * PI * (b + 1) as f64 / n as f64);
            let (mut ph, mut ph1) = (Complex::new(1.0, 0.0), Complex::new(1.0, 0.0));
            for (k, acc) in out.iter_mut().enumerate() {
                let (z, zc) = (buf[k], buf[(small - k) % small].conj());
                // F_b = (Z[k] + conj Z[-k]) / 2, F_{b+1} = (Z[k] - conj Z[-k]) / 2i.
                let fb = (z + zc) * 0.5;
                let d = z - zc;
                let fb1 = Complex::new(d.im * 0.5, -d.re * 0.5);
                *acc += fb * ph + fb1 * ph1;
                ph *= step;
                ph1 *= step1;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The naive DFT of `x` at frequency `k`.
    fn naive(x: &[f64], k: usize) -> Complex {
        let n = x.len();
        x.iter()
            .enumerate()
            .fold(Complex::default(), |acc, (j, &v)| {
                acc + cis(-2.0 * PI * ((j * k) % n) as f64 / n as f64) * v
            })
    }

    #[test]
    fn real_fft_matches_naive_dft_and_inverts() {
        for n in [4usize, 8, 64, 1 << 15, 1 << 18] {
            let x: Vec<f64> = (0..n)
                .map(|i| ((i * 7 + 3) % 11) as f64 - 4.5 + 0.01 * i as f64)
                .collect();
            let plan = RealFft::new(n);
            let spec = plan.forward(&x);
            assert_eq!(spec.len(), n / 2 + 1);
            let scale = x.iter().map(|v| v.abs()).sum::<f64>();
            for k in (0..=n / 2)
                .step_by((n / 64).max(1))
                .chain([1, n / 2 - 1, n / 2])
            {
                assert!(
                    (spec[k] - naive(&x, k)).norm() < 1e-13 * scale,
                    "n={n} k={k}"
                );
            }
            let max_abs = x.iter().fold(0.0f64, |m, v| m.max(v.abs()));
            for (a, b) in plan.inverse(spec).iter().zip(&x) {
                assert!((a - b).abs() < 1e-13 * max_abs, "n={n}");
            }
            // A short input is zero-padded.
            let short = &x[..n / 8 + 3];
            let mut padded = short.to_vec();
            padded.resize(n, 0.0);
            let (a, b) = (plan.forward(short), plan.forward(&padded));
            assert_eq!(a, b, "n={n}");
        }
    }

    #[test]
    fn low_frequency_dft_matches_the_full_fft() {
        let n = 1 << 14;
        let plan = RealFft::new(n);
        // A smooth bump stored from index 0 (short input, zero-padded).
        let x: Vec<f64> = (0..3000)
            .map(|i| (-((i as f64 - 1500.0) / 200.0).powi(2)).exp())
            .collect();
        let full = plan.forward(&x);
        let k_max = 120;
        let low = dft_low(&x, n, k_max);
        for k in 0..=k_max {
            assert!((low[k] - full[k]).norm() < 1e-11, "k={k}");
        }
        // A wider band: fewer, longer small transforms.
        let k_max = 1000;
        let low = dft_low(&x, n, k_max);
        for k in 0..=k_max {
            assert!((low[k] - full[k]).norm() < 1e-11, "k={k}");
        }
    }

    #[test]
    fn powu_matches_repeated_multiplication() {
        let z = Complex::new(0.6, -0.7);
        let mut want = Complex::new(1.0, 0.0);
        for _ in 0..13 {
            want *= z;
        }
        assert!((powu(z, 13) - want).norm_sqr() < 1e-28);
        assert_eq!(powu(z, 0), Complex::new(1.0, 0.0));
    }
}
