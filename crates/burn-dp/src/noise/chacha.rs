//! The host path of the noise generator: the ChaCha20 block function (RFC 8439 §2.3) and the
//! Box–Muller transform, laid out so that every normal is a pure function of
//! `(key, step, global element index)`.
//!
//! # Stream layout
//!
//! The 16-word ChaCha20 input is `constants (4) | key (8) | counter (2) | nonce (2)`, the original
//! ChaCha layout with a 64-bit block counter and a 64-bit nonce (Bernstein 2008); its block
//! function is word for word RFC 8439's, which only reads words 12..15 as a 32-bit counter and a
//! 96-bit nonce instead. burn-dp puts
//!
//! - the **block index** `b` (64 bits) in words 12 (low) and 13 (high),
//! - the **noise step** `s` (64 bits, one per logical DP step) in words 14 (low) and 15 (high).
//!
//! Block `b` of step `s` yields [`NORMALS_PER_BLOCK`] = 10 normals, for the global elements
//! `10·b .. 10·b + 10`. Each pair of normals uses three words `(w_a, w_b, w_θ)`:
//!
//! ```text
//! u1 = ((w_a >> 8) + (w_b + 0.5)·2⁻³²) · 2⁻²⁴      ∈ [2⁻⁵⁷, 1]   (56 random bits, never 0)
//! θ  = 2π · ((w_θ >> 8) − 2²³) · 2⁻²⁴                 ∈ [−π, π)
//! z₀ = √(−2 ln u1) · cos θ,   z₁ = √(−2 ln u1) · sin θ
//! ```
//!
//! the Box–Muller transform (G. E. P. Box and M. E. Muller, "A Note on the Generation of Random
//! Normal Deviates", Ann. Math. Statist. 29(2):610–611, 1958), exact for exact uniforms. Word 15
//! of each block output is unused. Everything is computed in f32.
//!
//! # Tails
//!
//! `u1` is never 0 (so `ln u1` is finite) and never above 1 (so `−2 ln u1 ≥ 0` and the square root
//! is real; `u1` rounds to exactly 1 with probability ≈ 2⁻²⁵, giving `z = 0`). Its smallest value
//! 2⁻⁵⁷ bounds every normal by `√(114 ln 2) ≈ 8.89` standard deviations, where an exact Gaussian
//! exceeds that with probability ≈ 6·10⁻¹⁹. The truncated mass matters for DP only through the
//! band of width `Δ/σ` at the edge of the support (a shifted output the other distribution cannot
//! produce): about `φ(8.89)·√d·Δ/σ ≈ 4·10⁻¹⁴` per step for GPT-2's d = 1.6·10⁸ coordinates,
//! negligible beside any δ in use. A 32-bit `u1` (as most GPU generators use) would bound the
//! normals at 6.66σ and cost ≈ 10⁻⁶ per step at that size, which is why two words go into `u1`.
//! Floating-point rounding of the output (Mironov 2012) is not addressed here, as in every
//! mainstream DP library.
//!
//! # Implementations
//!
//! [`chacha20_block`] is the reference definition (checked against RFC 8439's vectors); the
//! cubecl kernel (`noise::cube`) is written from it word for word. The host path takes the same
//! keystream from `rand_chacha` (SIMD, about twice as fast here; a test checks its words against
//! [`chacha20_block`], including the carry into the high counter word) and splits long draws
//! over threads on whole blocks, so its output does not depend on the number of threads.

use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha20Rng;

#[cfg(test)]
/// "expand 32-byte k", the ChaCha constants (RFC 8439 §2.3).
pub const CHACHA_CONSTANTS: [u32; 4] = [0x6170_7865, 0x3320_646e, 0x7962_2d32, 0x6b20_6574];

/// Normals produced by one ChaCha20 block (5 Box–Muller pairs from 15 of its 16 words).
pub const NORMALS_PER_BLOCK: usize = 10;

/// 2⁻³² (exact in f32).
pub(crate) const TWO_POW_M32: f32 = 2.328_306_4e-10;
/// 2⁻²⁴ (exact in f32).
pub(crate) const TWO_POW_M24: f32 = 5.960_464_5e-8;
/// 2^23: subtracted from a 24-bit angle word to centre the angle on zero.
pub(crate) const TWO_POW_23: f32 = 8_388_608.0;
/// 2π · 2⁻²⁴, rounded once to f32 (the same constant on host and device).
pub(crate) const TWO_PI_TWO_POW_M24: f32 = std::f32::consts::TAU * TWO_POW_M24;

#[cfg(test)]
#[inline(always)]
fn quarter_round(x: &mut [u32; 16], a: usize, b: usize, c: usize, d: usize) {
    x[a] = x[a].wrapping_add(x[b]);
    x[d] = (x[d] ^ x[a]).rotate_left(16);
    x[c] = x[c].wrapping_add(x[d]);
    x[b] = (x[b] ^ x[c]).rotate_left(12);
    x[a] = x[a].wrapping_add(x[b]);
    x[d] = (x[d] ^ x[a]).rotate_left(8);
    x[c] = x[c].wrapping_add(x[d]);
    x[b] = (x[b] ^ x[c]).rotate_left(7);
}

#[cfg(test)]
/// The ChaCha20 block function (RFC 8439 §2.3): 20 rounds over
/// `constants | key | words12_15`, plus the input. `words12_15` is RFC 8439's
/// `counter | nonce` (or burn-dp's `block lo | block hi | step lo | step hi`).
pub fn chacha20_block(key: &[u32; 8], words12_15: [u32; 4]) -> [u32; 16] {
    let mut input = [0u32; 16];
    input[..4].copy_from_slice(&CHACHA_CONSTANTS);
    input[4..12].copy_from_slice(key);
    input[12..].copy_from_slice(&words12_15);
    let mut x = input;
    for _ in 0..10 {
        quarter_round(&mut x, 0, 4, 8, 12);
        quarter_round(&mut x, 1, 5, 9, 13);
        quarter_round(&mut x, 2, 6, 10, 14);
        quarter_round(&mut x, 3, 7, 11, 15);
        quarter_round(&mut x, 0, 5, 10, 15);
        quarter_round(&mut x, 1, 6, 11, 12);
        quarter_round(&mut x, 2, 7, 8, 13);
        quarter_round(&mut x, 3, 4, 9, 14);
    }
    for (o, i) in x.iter_mut().zip(input) {
        *o = o.wrapping_add(i);
    }
    x
}

#[cfg(test)]
/// The block function's input words 12..15 for block `block` of noise step `step`.
pub fn counter_words(step: u64, block: u64) -> [u32; 4] {
    [
        block as u32,
        (block >> 32) as u32,
        step as u32,
        (step >> 32) as u32,
    ]
}

/// The first uniform of a Box–Muller pair, in `[2⁻⁵⁷, 1]` (see the module docs).
#[inline(always)]
pub fn u1_from_words(w_a: u32, w_b: u32) -> f32 {
    ((w_a >> 8) as f32 + (w_b as f32 + 0.5) * TWO_POW_M32) * TWO_POW_M24
}

/// One Box–Muller pair `(z₀, z₁)` of standard normals from three words.
#[inline(always)]
pub fn box_muller(w_a: u32, w_b: u32, w_theta: u32) -> (f32, f32) {
    let u1 = u1_from_words(w_a, w_b);
    let r = (-2.0 * u1.ln()).sqrt();
    // The angle is centred, θ ∈ [−π, π): the range where GPU sin/cos are specified (WGSL/Vulkan
    // give their accuracy there only). `w >> 8` and `2^23` are exact in f32.
    let theta = ((w_theta >> 8) as f32 - TWO_POW_23) * TWO_PI_TWO_POW_M24;
    let (s, c) = theta.sin_cos();
    (r * c, r * s)
}

/// The [`NORMALS_PER_BLOCK`] standard normals of one block's output words.
#[inline(always)]
pub fn normals_of_block(words: &[u32; 16]) -> [f32; NORMALS_PER_BLOCK] {
    let mut out = [0f32; NORMALS_PER_BLOCK];
    for p in 0..NORMALS_PER_BLOCK / 2 {
        let (z0, z1) = box_muller(words[3 * p], words[3 * p + 1], words[3 * p + 2]);
        out[2 * p] = z0;
        out[2 * p + 1] = z1;
    }
    out
}

/// Blocks needed for `n` elements (a parameter's span in the stream).
pub fn blocks_for(n: usize) -> u64 {
    n.div_ceil(NORMALS_PER_BLOCK) as u64
}

/// Blocks drawn from `rand_chacha` at a time.
const BLOCKS_PER_FILL: usize = 4;

/// Fills `out` with `std ·` the normals of elements `10·first_block ..` of `step`, on the
/// calling thread. The keystream comes from `rand_chacha` (SIMD; its 64-bit counter and 64-bit
/// stream are this module's block index and step, a test checks every word against
/// [`chacha20_block`]), the transform from [`normals_of_block`].
pub fn fill_gaussian_single_thread(
    key: &[u32; 8],
    step: u64,
    first_block: u64,
    std: f32,
    out: &mut [f32],
) {
    let mut seed = [0u8; 32];
    for (i, w) in key.iter().enumerate() {
        seed[4 * i..4 * i + 4].copy_from_slice(&w.to_le_bytes());
    }
    let mut rng = ChaCha20Rng::from_seed(seed);
    rng.set_stream(step);
    rng.set_word_pos(first_block as u128 * 16);
    let mut bytes = [0u8; 64 * BLOCKS_PER_FILL];
    for dst in out.chunks_mut(NORMALS_PER_BLOCK * BLOCKS_PER_FILL) {
        let blocks = dst.len().div_ceil(NORMALS_PER_BLOCK);
        rng.fill_bytes(&mut bytes[..64 * blocks]);
        for (b, block_dst) in dst.chunks_mut(NORMALS_PER_BLOCK).enumerate() {
            let words: [u32; 16] = std::array::from_fn(|w| {
                let at = 64 * b + 4 * w;
                u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"))
            });
            for (o, z) in block_dst.iter_mut().zip(normals_of_block(&words)) {
                *o = z * std;
            }
        }
    }
}

/// Below this many elements the host path stays on one thread (spawning costs more).
const PARALLEL_THRESHOLD: usize = 1 << 16;

/// [`fill_gaussian_single_thread`] split over `threads` scoped threads, each on whole blocks.
/// The result does not depend on the number of threads.
pub fn fill_gaussian(
    key: &[u32; 8],
    step: u64,
    first_block: u64,
    std: f32,
    out: &mut [f32],
    threads: usize,
) {
    let threads = threads.max(1);
    if threads == 1 || out.len() < PARALLEL_THRESHOLD {
        return fill_gaussian_single_thread(key, step, first_block, std, out);
    }
    // Whole blocks per thread, so each thread's first element starts a block.
    let unit = NORMALS_PER_BLOCK * BLOCKS_PER_FILL;
    let per_thread = out.len().div_ceil(threads).div_ceil(unit) * unit;
    std::thread::scope(|scope| {
        for (t, dst) in out.chunks_mut(per_thread).enumerate() {
            let first = first_block.wrapping_add((t * per_thread / NORMALS_PER_BLOCK) as u64);
            scope.spawn(move || fill_gaussian_single_thread(key, step, first, std, dst));
        }
    });
}

/// Threads the host path uses: the machine's available parallelism.
pub fn host_threads() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

/// `n` values of `std · N(0, 1)` for elements `10·first_block ..` of `step`, multi-threaded.
pub fn gaussian_vec(key: &[u32; 8], step: u64, first_block: u64, n: usize, std: f32) -> Vec<f32> {
    let mut out = vec![0f32; n];
    fill_gaussian(key, step, first_block, std, &mut out, host_threads());
    out
}
