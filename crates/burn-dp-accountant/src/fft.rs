//! A small radix-2 FFT for real sequences of power-of-two length, used by the PRV accountant to
//! compose discretised privacy random variables (Gopi et al. 2021, Sec. 5).

use std::f64::consts::PI;
use std::ops::{Add, Div, Mul, Sub};

/// A complex number in double precision.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Complex {
    /// Real part.
    pub re: f64,
    /// Imaginary part.
    pub im: f64,
}

impl Complex {
    /// `re + i im`.
    pub const fn new(re: f64, im: f64) -> Self {
        Self { re, im }
    }

    /// Complex conjugate.
    pub fn conj(self) -> Self {
        Self::new(self.re, -self.im)
    }

    /// `|z|²`.
    pub fn norm_sqr(self) -> f64 {
        self.re * self.re + self.im * self.im
    }

    /// `z^n` by binary exponentiation.
    pub fn powu(self, n: u64) -> Self {
        let (mut base, mut exp, mut acc) = (self, n, Self::new(1.0, 0.0));
        while exp > 0 {
            if exp & 1 == 1 {
                acc = acc * base;
            }
            exp >>= 1;
            if exp > 0 {
                base = base * base;
            }
        }
        acc
    }
}

impl Add for Complex {
    type Output = Self;
    fn add(self, o: Self) -> Self {
        Self::new(self.re + o.re, self.im + o.im)
    }
}

impl Sub for Complex {
    type Output = Self;
    fn sub(self, o: Self) -> Self {
        Self::new(self.re - o.re, self.im - o.im)
    }
}

impl Mul for Complex {
    type Output = Self;
    fn mul(self, o: Self) -> Self {
        Self::new(
            self.re * o.re - self.im * o.im,
            self.re * o.im + self.im * o.re,
        )
    }
}

impl Div for Complex {
    type Output = Self;
    fn div(self, o: Self) -> Self {
        let d = o.norm_sqr();
        Self::new(
            (self.re * o.re + self.im * o.im) / d,
            (self.im * o.re - self.re * o.im) / d,
        )
    }
}

impl Mul<f64> for Complex {
    type Output = Self;
    fn mul(self, s: f64) -> Self {
        Self::new(self.re * s, self.im * s)
    }
}

/// Complex exponential `exp(i θ)`.
fn cis(theta: f64) -> Complex {
    let (s, c) = theta.sin_cos();
    Complex::new(c, s)
}

/// Blocks up to this many points are transformed level by level (they fit in cache); larger
/// ones get two levels per pass (radix 4) and are split recursively into quarters, so only a
/// few passes touch main memory.
const CACHE_BLOCK: usize = 1 << 13;

/// Blocks from this many points up are split across two threads.
const PARALLEL_BLOCK: usize = 1 << 17;

/// Per-level twiddle tables for a complex FFT of length `m`: level `h` (half the butterfly
/// span, `h = 1, 2, 4, …, m/2`) holds `exp(-2πi j / (2h))`, `j < h`, at offset `h - 1`.
fn level_twiddles(m: usize) -> Vec<Complex> {
    let mut tw = vec![Complex::default(); m.saturating_sub(1)];
    if m < 2 {
        return tw;
    }
    let top = m / 2;
    // Top level as coarse × fine products (two table look-ups, ~1 ulp) instead of m/2 sin_cos.
    let fine_len = 1usize << (top.trailing_zeros().div_ceil(2));
    let step = -2.0 * PI / m as f64;
    let fine: Vec<Complex> = (0..fine_len).map(|b| cis(step * b as f64)).collect();
    for (a, chunk) in tw[top - 1..].chunks_mut(fine_len).enumerate() {
        let coarse = cis(step * (a * fine_len) as f64);
        for (t, f) in chunk.iter_mut().zip(&fine) {
            *t = coarse * *f;
        }
    }
    // Level h/2 is every other entry of level h.
    let mut h = top;
    while h > 1 {
        let (lower, upper) = tw.split_at_mut(h - 1);
        for (j, t) in lower[h / 2 - 1..].iter_mut().enumerate() {
            *t = upper[2 * j];
        }
        h /= 2;
    }
    tw
}

/// The twiddles of level `h`.
fn level(tw: &[Complex], h: usize) -> &[Complex] {
    &tw[h - 1..2 * h - 1]
}

/// Gentleman–Sande butterflies: `(a, b) → (a + b, (a - b) w)`.
fn dif_butterflies(lo: &mut [Complex], hi: &mut [Complex], w: &[Complex]) {
    for ((a, b), w) in lo.iter_mut().zip(hi.iter_mut()).zip(w) {
        let (x, y) = (*a, *b);
        *a = x + y;
        *b = (x - y) * *w;
    }
}

/// Cooley–Tukey butterflies with conjugate twiddles: `(a, b) → (a + b w̄, a - b w̄)`.
fn dit_inverse_butterflies(lo: &mut [Complex], hi: &mut [Complex], w: &[Complex]) {
    for ((a, b), w) in lo.iter_mut().zip(hi.iter_mut()).zip(w) {
        let t = *b * w.conj();
        *b = *a - t;
        *a = *a + t;
    }
}

/// Two Gentleman–Sande levels (`h` and `h/2`) fused over a block of `2h` points, in one pass:
/// quarters `(a, b, c, d)` at `j, j + h/2, j + h, j + 3h/2`, with `w1 = ω_h^j`, `w2 = ω_h^{2j}` and
/// `ω_h^{j + h/2} = -i ω_h^j`.
fn dif_radix4(
    q0: &mut [Complex],
    q1: &mut [Complex],
    q2: &mut [Complex],
    q3: &mut [Complex],
    w1: &[Complex],
    w2: &[Complex],
) {
    for (((((a, b), c), d), w1), w2) in q0
        .iter_mut()
        .zip(q1.iter_mut())
        .zip(q2.iter_mut())
        .zip(q3.iter_mut())
        .zip(w1)
        .zip(w2)
    {
        let (x0, x1, x2, x3) = (*a, *b, *c, *d);
        let (s02, s13, d02) = (x0 + x2, x1 + x3, x0 - x2);
        let d13 = x1 - x3;
        let d13 = Complex::new(d13.im, -d13.re); // -i (x1 - x3)
        *a = s02 + s13;
        *b = (s02 - s13) * *w2;
        *c = (d02 + d13) * *w1;
        *d = (d02 - d13) * (*w1 * *w2);
    }
}

/// The inverse of [`dif_radix4`]'s levels, in decimation-in-time order with conjugate twiddles.
fn dit_inverse_radix4(
    q0: &mut [Complex],
    q1: &mut [Complex],
    q2: &mut [Complex],
    q3: &mut [Complex],
    w1: &[Complex],
    w2: &[Complex],
) {
    for (((((a, b), c), d), w1), w2) in q0
        .iter_mut()
        .zip(q1.iter_mut())
        .zip(q2.iter_mut())
        .zip(q3.iter_mut())
        .zip(w1)
        .zip(w2)
    {
        let (u1, u2) = (w1.conj(), w2.conj());
        let (t1, t3) = (*b * u2, *d * u2);
        let (p, q, r, s) = (*a + t1, *a - t1, *c + t3, *c - t3);
        let r = r * u1;
        let s = s * u1;
        let s = Complex::new(-s.im, s.re); // i u1 (c - d u2)
        *a = p + r;
        *c = p - r;
        *b = q + s;
        *d = q - s;
    }
}

/// A fused radix-4 kernel over the four quarters of a block, with twiddles `w1`, `w2`.
type Radix4Kernel =
    fn(&mut [Complex], &mut [Complex], &mut [Complex], &mut [Complex], &[Complex], &[Complex]);

/// Applies a fused radix-4 kernel to a block of `n = 2h` points, split across two threads when
/// the block is large.
fn radix4_pass(data: &mut [Complex], tw: &[Complex], f: Radix4Kernel) {
    let h = data.len() / 2;
    let quarter = h / 2;
    let (w1, w2) = (&level(tw, h)[..quarter], level(tw, quarter));
    let (lo, hi) = data.split_at_mut(h);
    let (q0, q1) = lo.split_at_mut(quarter);
    let (q2, q3) = hi.split_at_mut(quarter);
    if quarter >= PARALLEL_BLOCK {
        let mid = quarter / 2;
        let (q0a, q0b) = q0.split_at_mut(mid);
        let (q1a, q1b) = q1.split_at_mut(mid);
        let (q2a, q2b) = q2.split_at_mut(mid);
        let (q3a, q3b) = q3.split_at_mut(mid);
        let (w1a, w1b) = w1.split_at(mid);
        let (w2a, w2b) = w2.split_at(mid);
        std::thread::scope(|s| {
            s.spawn(|| f(q0a, q1a, q2a, q3a, w1a, w2a));
            f(q0b, q1b, q2b, q3b, w1b, w2b);
        });
    } else {
        f(q0, q1, q2, q3, w1, w2);
    }
}

/// Runs `f` on each of the `parts` equal parts of `data`, two threads when large.
fn on_parts(data: &mut [Complex], parts: usize, tw: &[Complex], f: fn(&mut [Complex], &[Complex])) {
    let len = data.len() / parts;
    if len >= PARALLEL_BLOCK {
        let (a, b) = data.split_at_mut(data.len() / 2);
        std::thread::scope(|s| {
            s.spawn(|| a.chunks_exact_mut(len).for_each(|c| f(c, tw)));
            b.chunks_exact_mut(len).for_each(|c| f(c, tw));
        });
    } else {
        data.chunks_exact_mut(len).for_each(|c| f(c, tw));
    }
}

/// Forward DFT (decimation in frequency): natural-order input, bit-reversed output.
fn dif(data: &mut [Complex], tw: &[Complex]) {
    let n = data.len();
    if n <= CACHE_BLOCK {
        let mut h = n / 2;
        while h >= 1 {
            for chunk in data.chunks_exact_mut(2 * h) {
                let (lo, hi) = chunk.split_at_mut(h);
                dif_butterflies(lo, hi, level(tw, h));
            }
            h /= 2;
        }
        return;
    }
    // Two levels in one pass over memory, then the four quarters independently.
    radix4_pass(data, tw, dif_radix4);
    on_parts(data, 4, tw, dif);
}

/// [`dif`] of a block whose entries from `nonzero` on are zero: while the zeros fill the upper
/// half, a level's butterflies reduce to `hi[j] = lo[j] w^j` on the first `nonzero` entries
/// (FFT output pruning for zero-padded input), which saves the first passes over memory.
fn dif_padded(data: &mut [Complex], tw: &[Complex], nonzero: usize) {
    let n = data.len();
    if n <= CACHE_BLOCK || nonzero > n / 2 {
        dif(data, tw);
        return;
    }
    let h = n / 2;
    let (lo, hi) = data.split_at_mut(h);
    for ((a, b), w) in lo[..nonzero]
        .iter()
        .zip(&mut hi[..nonzero])
        .zip(level(tw, h))
    {
        *b = *a * *w;
    }
    if h >= PARALLEL_BLOCK {
        std::thread::scope(|s| {
            s.spawn(|| dif_padded(lo, tw, nonzero));
            dif_padded(hi, tw, nonzero);
        });
    } else {
        dif_padded(lo, tw, nonzero);
        dif_padded(hi, tw, nonzero);
    }
}

/// Unnormalised inverse DFT (decimation in time): bit-reversed input, natural-order output.
fn dit_inverse(data: &mut [Complex], tw: &[Complex]) {
    let n = data.len();
    if n <= CACHE_BLOCK {
        let mut h = 1;
        while h < n {
            for chunk in data.chunks_exact_mut(2 * h) {
                let (lo, hi) = chunk.split_at_mut(h);
                dit_inverse_butterflies(lo, hi, level(tw, h));
            }
            h *= 2;
        }
        return;
    }
    on_parts(data, 4, tw, dit_inverse);
    radix4_pass(data, tw, dit_inverse_radix4);
}

/// Visits the frequency pairs `(k, m - k)` of a length-`m` spectrum stored in bit-reversed
/// order, calling `f(p, q, w)` with their positions `p`, `q` and `w = exp(-2πi k / 2m)`.
///
/// In bit-reversed order the partner of position `p ∈ [2^j, 2^{j+1})` is `3·2^j - 1 - p`, and the
/// twiddles of block `j` are `U_{j-1}[r] ω̄_j` (`r < 2^{j-1}`) where
/// `U_j = [U_{j-1} ω̄_j, U_{j-1} ω_j]`, `U_0 = [-i]`, `ω_j = exp(-2πi / 2^{j+2})`: built block by
/// block with one multiplication per entry, all accesses sequential.
fn for_each_pair(m: usize, mut f: impl FnMut(usize, usize, Complex)) {
    let mut u = Vec::with_capacity(m / 2);
    u.push(Complex::new(0.0, -1.0));
    let mut j = 1;
    while (1usize << j) < m {
        let omega = cis(-2.0 * PI / (1u64 << (j + 2)) as f64);
        let start = 1usize << j;
        let half = start / 2;
        for (r, ur) in u.iter().enumerate() {
            f(start + r, 2 * start - 1 - r, *ur * omega.conj());
        }
        // U_j = [U_{j-1} ω̄, U_{j-1} ω].
        u.extend_from_within(..);
        let (lo, hi) = u.split_at_mut(half);
        lo.iter_mut().for_each(|v| *v = *v * omega.conj());
        hi.iter_mut().for_each(|v| *v = *v * omega);
        j += 1;
    }
}

/// A real-input FFT plan for power-of-two lengths `n ≥ 4`, for convolution: spectra are kept in
/// bit-reversed order (which pointwise products do not care about), so neither direction needs
/// a permutation pass.
pub struct RealFft {
    n: usize,
    tw: Vec<Complex>,
}

/// DFT of a real sequence of length `n`: the `n/2` coefficients `X[0..n/2]` in bit-reversed
/// order of the index, and `X[n/2]` separately (the others are conjugates).
#[derive(Debug, Clone, PartialEq)]
pub struct Spectrum {
    /// `bins[p] = X[bitrev(p)]`, `p < n/2`.
    pub bins: Vec<Complex>,
    /// `X[n/2]`.
    pub nyquist: Complex,
}

impl Spectrum {
    /// Applies `f` to every coefficient.
    pub fn map(&mut self, f: impl Fn(Complex) -> Complex) {
        self.bins.iter_mut().for_each(|c| *c = f(*c));
        self.nyquist = f(self.nyquist);
    }

    /// Pointwise product with another spectrum of the same length.
    pub fn mul_assign(&mut self, other: &Spectrum) {
        self.bins
            .iter_mut()
            .zip(&other.bins)
            .for_each(|(a, b)| *a = *a * *b);
        self.nyquist = self.nyquist * other.nyquist;
    }

    /// The coefficients `X[0..=n/2]` in natural order (for inspection and tests).
    pub fn to_natural(&self) -> Vec<Complex> {
        let m = self.bins.len();
        let bits = m.trailing_zeros();
        let mut out = vec![Complex::default(); m + 1];
        for (p, c) in self.bins.iter().enumerate() {
            out[if m > 1 {
                p.reverse_bits() >> (usize::BITS - bits)
            } else {
                0
            }] = *c;
        }
        out[m] = self.nyquist;
        out
    }
}

impl RealFft {
    /// A plan for length `n` (a power of two, at least 4).
    pub fn new(n: usize) -> Self {
        assert!(
            n >= 4 && n.is_power_of_two(),
            "RealFft needs a power-of-two length >= 4"
        );
        Self {
            n,
            tw: level_twiddles(n / 2),
        }
    }

    /// `X[k] = Σ_j x[j] exp(-2πi jk/n)` of `x` zero-padded to the plan's length `n` (a short
    /// input is cheaper): packs `x` as `n/2` complex numbers, transforms them, and untangles the
    /// even/odd halves `X[k] = E[k] + exp(-2πi k/n) O[k]`.
    pub fn forward(&self, x: &[f64]) -> Spectrum {
        assert!(x.len() <= self.n, "input longer than the plan");
        let m = self.n / 2;
        let mut z = vec![Complex::default(); m];
        for (zj, p) in z.iter_mut().zip(x.chunks(2)) {
            *zj = Complex::new(p[0], p.get(1).copied().unwrap_or(0.0));
        }
        dif_padded(&mut z, &self.tw, x.len().div_ceil(2));
        let z0 = z[0];
        let nyquist = Complex::new(z0.re - z0.im, 0.0);
        z[0] = Complex::new(z0.re + z0.im, 0.0);
        z[1] = z[1].conj(); // k = m/2
        for_each_pair(m, |p, q, w| {
            let (zk, zq) = (z[p], z[q]);
            let even = (zk + zq.conj()) * 0.5;
            let d = zk - zq.conj();
            let odd = Complex::new(d.im * 0.5, -d.re * 0.5); // d / 2i
            let wo = w * odd;
            z[p] = even + wo;
            z[q] = (even - wo).conj();
        });
        Spectrum { bins: z, nyquist }
    }

    /// Inverse of [`Self::forward`] (normalised by `1/n`).
    pub fn inverse(&self, spectrum: Spectrum) -> Vec<f64> {
        let m = self.n / 2;
        assert_eq!(
            spectrum.bins.len(),
            m,
            "spectrum length must match the plan"
        );
        let Spectrum {
            bins: mut z,
            nyquist,
        } = spectrum;
        let (x0, xm) = (z[0], nyquist);
        let (even, odd) = ((x0 + xm.conj()) * 0.5, (x0 - xm.conj()) * 0.5);
        z[0] = even + Complex::new(-odd.im, odd.re);
        z[1] = z[1].conj();
        for_each_pair(m, |p, q, w| {
            let (xk, xq) = (z[p], z[q]);
            let even = (xk + xq.conj()) * 0.5;
            let odd = (xk - xq.conj()) * w.conj() * 0.5;
            let i_odd = Complex::new(-odd.im, odd.re);
            z[p] = even + i_odd;
            z[q] = (even - i_odd).conj();
        });
        dit_inverse(&mut z, &self.tw);
        let scale = 1.0 / m as f64;
        let mut out = Vec::with_capacity(self.n);
        for v in z {
            out.push(v.re * scale);
            out.push(v.im * scale);
        }
        out
    }
}

/// Length of the small FFTs used for the frequencies `0..=k_max` of a length-`n` sequence.
pub fn band_fft_len(k_max: usize) -> usize {
    (2 * k_max + 2).next_power_of_two().max(16)
}

/// Offsets `b` handled together by [`dft_low`] (so that each row segment read is a run of
/// consecutive memory), for buffers of `small` points: at most 32, and
/// buffers of at most 512 KiB in all (to stay in cache).
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
pub fn dft_low(x: &[f64], n: usize, k_max: usize) -> Vec<Complex> {
    let small = band_fft_len(k_max);
    assert!(
        n.is_power_of_two() && small <= n && x.len() <= n,
        "bad band-limited DFT size"
    );
    let period = n / small;
    let group = band_group(small, period);
    let tw = level_twiddles(small);
    let rows = x.len().div_ceil(period).min(small);
    let bits = small.trailing_zeros();
    let rev = |k: usize| k.reverse_bits() >> (usize::BITS - bits);
    let mut out = vec![Complex::default(); k_max + 1];
    let mut bufs = vec![Complex::default(); small * group.div_ceil(2)];
    for b0 in (0..period).step_by(group) {
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
        for (pair, buf) in bufs.chunks_exact_mut(small).enumerate() {
            let b = b0 + 2 * pair;
            if b >= period {
                break;
            }
            dif_padded(buf, &tw, rows);
            let step = cis(-2.0 * PI * b as f64 / n as f64);
            let step1 = cis(-2.0 * PI * (b + 1) as f64 / n as f64);
            let (mut ph, mut ph1) = (Complex::new(1.0, 0.0), Complex::new(1.0, 0.0));
            for (k, acc) in out.iter_mut().enumerate() {
                let (z, zc) = (buf[rev(k)], buf[rev((small - k) % small)].conj());
                // F_b = (Z[k] + conj Z[-k]) / 2, F_{b+1} = (Z[k] - conj Z[-k]) / 2i.
                let fb = (z + zc) * 0.5;
                let d = z - zc;
                let fb1 = Complex::new(d.im * 0.5, -d.re * 0.5);
                *acc = *acc + fb * ph + fb1 * ph1;
                ph = ph * step;
                ph1 = ph1 * step1;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn real_fft_matches_naive_dft_and_inverts() {
        // Sizes below and above CACHE_BLOCK (the recursive path).
        for n in [4usize, 8, 64, 4 * CACHE_BLOCK, 32 * CACHE_BLOCK] {
            let x: Vec<f64> = (0..n)
                .map(|i| ((i * 7 + 3) % 11) as f64 - 4.5 + 0.01 * i as f64)
                .collect();
            let plan = RealFft::new(n);
            let spec = plan.forward(&x);
            let scale = x.iter().map(|v| v.abs()).sum::<f64>();
            let natural = spec.to_natural();
            // Naive DFT at a spread of frequencies (all of them for small n).
            for k in (0..=n / 2)
                .step_by((n / 64).max(1))
                .chain([1, n / 2 - 1, n / 2])
            {
                let want = x
                    .iter()
                    .enumerate()
                    .fold(Complex::default(), |acc, (j, &v)| {
                        acc + cis(-2.0 * PI * ((j * k) % n) as f64 / n as f64) * v
                    });
                assert!(
                    (natural[k] - want).norm_sqr().sqrt() < 1e-13 * scale,
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
            for (u, v) in a.bins.iter().zip(&b.bins) {
                assert!((*u - *v).norm_sqr().sqrt() < 1e-12 * scale, "n={n}");
            }
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
        let full = plan.forward(&x).to_natural();
        let k_max = 120;
        let low = dft_low(&x, n, k_max);
        for k in 0..=k_max {
            assert!((low[k] - full[k]).norm_sqr().sqrt() < 1e-11, "k={k}");
        }
    }

    #[test]
    fn powu_matches_repeated_multiplication() {
        let z = Complex::new(0.6, -0.7);
        let mut want = Complex::new(1.0, 0.0);
        for _ in 0..13 {
            want = want * z;
        }
        assert!((z.powu(13) - want).norm_sqr() < 1e-28);
    }
}
