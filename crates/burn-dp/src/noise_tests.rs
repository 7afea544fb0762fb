//! Tests of the noise generator (known answers, statistics), of the DP optimizer's noise, and of
//! the noise and sampler state in checkpoints.

use burn::module::{AutodiffModule, Module};
use burn::nn::{Linear, LinearConfig};
use burn::optim::SgdConfig;
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha20Rng;

use crate::noise::chacha::{
    box_muller, chacha20_block, counter_words, fill_gaussian, fill_gaussian_single_thread,
    gaussian_vec, normals_of_block, NORMALS_PER_BLOCK,
};
use crate::noise::{NoiseDraw, NoiseGenerator, NoiseKey};
use crate::*;

use super::Inner;
type Dp = DpAutodiff<Inner>;

/// RFC 8439's test key 00 01 02 ... 1f as words.
fn rfc_key() -> [u32; 8] {
    *NoiseKey::from_bytes(std::array::from_fn(|i| i as u8)).words()
}

fn le_bytes(words: &[u32]) -> Vec<u8> {
    words.iter().flat_map(|w| w.to_le_bytes()).collect()
}

#[test]
fn chacha20_block_matches_rfc8439_section_2_3_2() {
    // Block count 1, nonce 00:00:00:09:00:00:00:4a:00:00:00:00.
    let out = chacha20_block(&rfc_key(), [1, 0x0900_0000, 0x4a00_0000, 0]);
    let expected = [
        0xe4e7f110, 0x15593bd1, 0x1fdd0f50, 0xc47120a3, 0xc7f4d1c7, 0x0368c033, 0x9aaa2204,
        0x4e6cd4c3, 0x466482d2, 0x09aa9f07, 0x05d7c214, 0xa2028bd9, 0xd19c12b5, 0xb94e16de,
        0xe883d0cb, 0x4e3c50a2,
    ];
    assert_eq!(out, expected);
}

#[test]
fn chacha20_keystream_matches_rfc8439_section_2_4_2() {
    // The "sunscreen" example: counter 1, nonce 00:00:00:00:00:00:00:4a:00:00:00:00.
    let plaintext = b"Ladies and Gentlemen of the class of '99: If I could offer you only one \
tip for the future, sunscreen would be it.";
    let expected = "6e2e359a2568f98041ba0728dd0d6981e97e7aec1d4360c20a27afccfd9fae0b\
f91b65c5524733ab8f593dabcd62b3571639d624e65152ab8f530c359f0861d8\
07ca0dbf500d6a6156a38e088a22b65e52bc514d16ccf806818ce91ab7793736\
5af90bbf74a35be6b40b8eedf2785e42874d";
    let keystream: Vec<u8> = (1..=2u32)
        .flat_map(|counter| le_bytes(&chacha20_block(&rfc_key(), [counter, 0, 0x4a00_0000, 0])))
        .collect();
    let ciphertext: String = plaintext
        .iter()
        .zip(&keystream)
        .map(|(p, k)| format!("{:02x}", p ^ k))
        .collect();
    assert_eq!(ciphertext, expected);
}

#[test]
fn blocks_agree_with_rand_chacha_including_the_counter_carry() {
    // rand_chacha (an independent implementation) uses the same 64-bit counter | 64-bit stream
    // layout: its stream is our noise step and its word position is 16 × our block index.
    let key = NoiseKey::from_fixed_seed(7);
    let bytes: [u8; 32] = le_bytes(key.words()).try_into().unwrap();
    for (step, block) in [
        (0u64, 0u64),
        (5, 3),
        (u64::MAX - 1, (1 << 32) - 1),
        (9, 1 << 32),
    ] {
        let mut rng = ChaCha20Rng::from_seed(bytes);
        rng.set_stream(step);
        rng.set_word_pos(block as u128 * 16);
        let theirs: Vec<u32> = (0..32).map(|_| rng.next_u32()).collect();
        let ours: Vec<u32> = [block, block + 1]
            .iter()
            .flat_map(|b| chacha20_block(key.words(), counter_words(step, *b)))
            .collect();
        assert_eq!(ours, theirs, "step {step} block {block}");
    }
}

#[test]
fn host_paths_equal_the_reference_definition() {
    let key = NoiseKey::from_fixed_seed(1);
    let k = key.words();
    let std = 1.7f32;
    // Across the 2^32 block boundary, with a length that is not a multiple of anything.
    for first in [0u64, (1 << 32) - 5] {
        let n = 203;
        let mut out = vec![0f32; n];
        fill_gaussian_single_thread(k, 42, first, std, &mut out);
        for (e, v) in out.iter().enumerate() {
            let block = first + (e / NORMALS_PER_BLOCK) as u64;
            let z = normals_of_block(&chacha20_block(k, counter_words(42, block)));
            assert_eq!(*v, z[e % NORMALS_PER_BLOCK] * std, "element {e}");
        }
    }
    let n = 300_007;
    let mut one = vec![0f32; n];
    fill_gaussian(k, 3, 11, std, &mut one, 1);
    for threads in [2, 3, 8] {
        let mut many = vec![0f32; n];
        fill_gaussian(k, 3, 11, std, &mut many, threads);
        assert!(one == many, "{threads} threads");
    }
}

#[test]
fn each_normal_is_a_function_of_key_step_and_element_only() {
    let key = NoiseKey::from_fixed_seed(2);
    let whole = gaussian_vec(key.words(), 9, 0, 100, 1.0);
    // A parameter starting at block 3 gets elements 30.. of the same step.
    assert_eq!(gaussian_vec(key.words(), 9, 3, 70, 1.0), whole[30..]);
    assert_ne!(gaussian_vec(key.words(), 10, 0, 100, 1.0), whole);
    let other = NoiseKey::from_fixed_seed(3);
    assert_ne!(gaussian_vec(other.words(), 9, 0, 100, 1.0), whole);
    assert_eq!(NoiseKey::from_fixed_seed(2), key);
    let (a, b) = (NoiseKey::from_os().unwrap(), NoiseKey::from_os().unwrap());
    assert_ne!(a, b, "two OS keys");
    assert_eq!(format!("{a:?}"), "NoiseKey(<secret>)");
}

#[test]
fn box_muller_edges_are_finite_and_bounded() {
    // u1's smallest value 2^-57 gives the largest radius √(114 ln 2) ≈ 8.886.
    // The angle word 2^31 is θ = 0 (the angle is centred: θ ∈ [−π, π)), and 0 is θ = −π.
    let (z0, z1) = box_muller(0, 0, 1 << 31);
    let r_max = (114.0f64 * std::f64::consts::LN_2).sqrt() as f32;
    assert!((z0 - r_max).abs() < 1e-5 && z1 == 0.0, "{z0} {z1}");
    let (z0, z1) = box_muller(0, 0, 0);
    assert!((z0 + r_max).abs() < 1e-5 && z1.abs() < 1e-5, "{z0} {z1}");
    // u1 rounds to 1: radius 0, not NaN.
    let (z0, z1) = box_muller(u32::MAX, u32::MAX, u32::MAX);
    assert!(z0 == 0.0 && z1 == 0.0, "{z0} {z1}");
    for w in [0, 1, 255, 256, 1 << 31, u32::MAX - 1, u32::MAX] {
        for v in [0, 1, u32::MAX] {
            let (a, b) = box_muller(w, v, w ^ v);
            assert!(a.abs() <= r_max && b.abs() <= r_max);
        }
    }
}

/// Mean, variance, and the fraction beyond `t` of `z`.
pub(crate) fn moments(z: &[f32]) -> (f64, f64) {
    let n = z.len() as f64;
    let mean = z.iter().map(|v| *v as f64).sum::<f64>() / n;
    let var = z.iter().map(|v| (*v as f64 - mean).powi(2)).sum::<f64>() / n;
    (mean, var)
}

pub(crate) fn beyond(z: &[f32], t: f32) -> f64 {
    z.iter().filter(|v| v.abs() > t).count() as f64 / z.len() as f64
}

/// Pearson correlation of paired samples.
fn corr(x: impl Iterator<Item = (f64, f64)> + Clone) -> f64 {
    let n = x.clone().count() as f64;
    let (mx, my) = x
        .clone()
        .fold((0.0, 0.0), |(a, b), (u, v)| (a + u / n, b + v / n));
    let (mut sxy, mut sxx, mut syy) = (0.0, 0.0, 0.0);
    for (u, v) in x {
        sxy += (u - mx) * (v - my);
        sxx += (u - mx).powi(2);
        syy += (v - my).powi(2);
    }
    sxy / (sxx * syy).sqrt()
}

/// |x − expected| within `k` standard errors of a Binomial(n, p) fraction.
pub(crate) fn fraction_close(x: f64, p: f64, n: usize, k: f64) -> bool {
    (x - p).abs() <= k * (p * (1.0 - p) / n as f64).sqrt()
}

#[test]
fn normals_have_gaussian_moments_tails_and_quantiles() {
    // 10^6 draws. Every bound below is 5 standard errors: a sound generator fails one with
    // probability < 10^-5, while a broken one misses by far more (a zero or reused draw, a
    // uniform, a generator truncated at 3.5σ, a variance off by 2 %).
    let n = 1_000_000;
    let z = gaussian_vec(NoiseKey::from_fixed_seed(11).words(), 0, 0, n, 1.0);
    let (mean, var) = moments(&z);
    let se = 1.0 / (n as f64).sqrt();
    assert!(mean.abs() < 5.0 * se, "mean {mean}");
    assert!((var - 1.0).abs() < 5.0 * 2f64.sqrt() * se, "variance {var}");
    // Two-sided tail masses of N(0, 1).
    let p3 = 2.699_796e-3;
    let p4 = 6.334_248e-5;
    assert!(
        fraction_close(beyond(&z, 3.0), p3, n, 5.0),
        "beyond 3σ {}",
        beyond(&z, 3.0)
    );
    assert!(
        fraction_close(beyond(&z, 4.0), p4, n, 5.0),
        "beyond 4σ {}",
        beyond(&z, 4.0)
    );
    // The CDF at a few points.
    for (t, cdf) in [
        (-2.0, 0.022_750_13),
        (-1.0, 0.158_655_25),
        (0.0, 0.5),
        (1.5, 0.933_192_8),
    ] {
        let f = z.iter().filter(|v| **v <= t).count() as f64 / n as f64;
        assert!(fraction_close(f, cdf, n, 5.0), "P(z <= {t}) = {f}");
    }
    assert!(z.iter().all(|v| v.is_finite() && v.abs() < 8.9));
}

#[test]
fn normals_are_uncorrelated_across_elements_and_steps() {
    let n = 400_000;
    let key = NoiseKey::from_fixed_seed(12);
    let a = gaussian_vec(key.words(), 5, 0, n, 1.0);
    let b = gaussian_vec(key.words(), 6, 0, n, 1.0);
    let bound = 5.0 / (n as f64 / 2.0).sqrt();
    let f = |v: &f32| *v as f64;
    // Neighbouring elements: the two halves of a Box–Muller pair, and pairs across pairs.
    let pair = || a.chunks(2).map(|c| (f(&c[0]), f(&c[1])));
    let across = || {
        a[1..]
            .chunks(2)
            .filter(|c| c.len() == 2)
            .map(|c| (f(&c[0]), f(&c[1])))
    };
    // Consecutive steps, same elements.
    let steps = || a.iter().zip(&b).map(|(x, y)| (f(x), f(y)));
    for (name, rho) in [
        ("pair", corr(pair())),
        ("across pairs", corr(across())),
        ("steps", corr(steps())),
        // Dependence beyond linear: the squares (a Box–Muller pair shares its radius).
        ("pair²", corr(pair().map(|(x, y)| (x * x, y * y)))),
        ("steps²", corr(steps().map(|(x, y)| (x * x, y * y)))),
    ] {
        assert!(rho.abs() < bound, "{name}: correlation {rho}");
    }
    // The same statistic flags a stream that reuses a step (a broken counter).
    let reused = gaussian_vec(key.words(), 5, 0, n, 1.0);
    assert!(corr(a.iter().zip(&reused).map(|(x, y)| (f(x), f(y)))) > 0.99);
}

// ---------------------------------------------------------------------------------------------
// The DP optimizer's noise

#[derive(Module, Debug)]
pub(crate) struct Net<B: Backend> {
    pub(crate) fc1: Linear<B>,
    pub(crate) fc2: Linear<B>,
}

fn net() -> Net<Dp> {
    let dev = Default::default();
    Net {
        fc1: LinearConfig::new(4, 8).init(&dev),
        fc2: LinearConfig::new(8, 3).init(&dev),
    }
}

/// Parameters per tensor: fc1.weight, fc1.bias, fc2.weight, fc2.bias.
pub(crate) fn params<B: burn::tensor::backend::AutodiffBackend>(m: &Net<B>) -> Vec<Vec<f32>> {
    let v = m.valid();
    [
        v.fc1.weight.val().into_data(),
        v.fc1.bias.unwrap().val().into_data(),
        v.fc2.weight.val().into_data(),
        v.fc2.bias.unwrap().val().into_data(),
    ]
    .into_iter()
    .map(|d| d.convert::<f32>().to_vec::<f32>().unwrap())
    .collect()
}

const EXPECTED_BATCH: f64 = 4.0;

fn optimizer(
    sigma: f64,
    source: NoiseSource,
    style: ClippingStyle,
) -> DpOptimizer<impl burn::optim::Optimizer<Net<Dp>, Dp>, Inner> {
    optimizer_sampling(sigma, source, source, style)
}

/// [`optimizer`] whose sampler is seeded from `sampling`.
fn optimizer_sampling(
    sigma: f64,
    source: NoiseSource,
    sampling: NoiseSource,
    style: ClippingStyle,
) -> DpOptimizer<impl burn::optim::Optimizer<Net<Dp>, Dp>, Inner> {
    let privacy =
        PrivacyState::with_noise_multiplier(sigma, 0.01, 1e-5, AccountantKind::Rdp).unwrap();
    DpOptimizer::new(
        SgdConfig::new().init::<Dp, Net<Dp>>(),
        PerSampleConfig::new(ClippingFn::AUTOMATIC).with_style(style),
        privacy,
        // q·N = 0.01 · 400 = EXPECTED_BATCH
        PoissonSampler::new(400, 0.01, 4, sampling).unwrap(),
        source,
    )
    .unwrap()
}

use super::tests::{load_with_model, save_with_model};

/// Per-sample losses of `rows` multiplied by zero: every clipped sum is exactly zero.
fn zero_losses(model: &Net<Dp>, rows: usize) -> Tensor<Dp, 1> {
    let dev = Default::default();
    let x = Tensor::<Dp, 2>::from_data(
        TensorData::new(
            (0..rows * 4).map(|i| (i as f32 * 0.37).sin()).collect(),
            [rows, 4],
        ),
        &dev,
    );
    let out = model.fc2.forward(model.fc1.forward(batch(x)));
    out.sum_dim(1).reshape([rows]) * 0.0
}

/// Runs `steps` steps (`step_empty`, or `step` after a zero-loss backward) and returns, per
/// tensor, per step, the update `θ_t − θ_{t+1}` (lr 1, plain SGD: noise / E[B]).
fn updates(
    o: &mut DpOptimizer<impl burn::optim::Optimizer<Net<Dp>, Dp>, Inner>,
    mut model: Net<Dp>,
    steps: usize,
    empty: bool,
) -> (Vec<Vec<Vec<f32>>>, Net<Dp>) {
    let mut out = vec![Vec::new(); 4];
    for _ in 0..steps {
        let before = params(&model);
        model = if empty {
            o.step_empty(1.0, model).unwrap()
        } else {
            o.backward_unpadded(&model, zero_losses(&model, 2)).unwrap();
            o.step(1.0, model).unwrap()
        };
        for (t, (b, a)) in before.iter().zip(params(&model)).enumerate() {
            out[t].push(b.iter().zip(&a).map(|(x, y)| x - y).collect());
        }
    }
    (out, model)
}

/// The root mean square of values (the noise has mean 0).
fn rms(v: impl Iterator<Item = f32>) -> (f64, usize) {
    let (s, n) = v.fold((0.0, 0), |(s, n), x| (s + (x as f64).powi(2), n + 1));
    ((s / n as f64).sqrt(), n)
}

#[test]
fn update_noise_has_std_sigma_r_over_batch_for_every_parameter() {
    // σ = 2, R = 1 (automatic clipping), E[B] = 4: each update coordinate is N(0, 0.5²).
    // 800 steps of 67 parameters. The RMS of m draws has relative standard error 1/√(2m);
    // bounds are 5 standard errors: per tensor (1.3 % for 32 weights, 4.6 % for 3 biases) and
    // per parameter (12.5 %). A parameter or layer without noise, or at another scale, fails.
    let steps = 800;
    let mut o = optimizer(
        2.0,
        NoiseSource::FixedSeedForExperiments(21),
        ClippingStyle::Flat,
    );
    let (u, _) = updates(&mut o, net(), steps, true);
    let expected = 2.0 / EXPECTED_BATCH;
    for (t, tensor) in u.iter().enumerate() {
        let (s, m) = rms(tensor.iter().flatten().copied());
        let tol = 5.0 / (2.0 * m as f64).sqrt();
        assert!(
            (s / expected - 1.0).abs() < tol,
            "tensor {t}: std {s} (tolerance {tol})"
        );
        for e in 0..tensor[0].len() {
            let (s, m) = rms(tensor.iter().map(|step| step[e]));
            let tol = 5.0 / (2.0 * m as f64).sqrt();
            assert!(
                (s / expected - 1.0).abs() < tol,
                "tensor {t} element {e}: std {s}"
            );
        }
    }
    // Independence: neighbouring parameters (within and across tensors, in visiting order) and
    // consecutive steps. 5 standard errors of a correlation of m pairs: 5/√m.
    let flat: Vec<Vec<f64>> = (0..steps)
        .map(|s| {
            u.iter()
                .flat_map(|t| t[s].iter().map(|v| *v as f64))
                .collect()
        })
        .collect();
    let neighbours = || flat.iter().flat_map(|p| p.windows(2).map(|w| (w[0], w[1])));
    let rho = corr(neighbours());
    let bound = 5.0 / ((steps * 66) as f64).sqrt();
    assert!(rho.abs() < bound, "neighbouring parameters: {rho}");
    let consecutive = || {
        flat.windows(2)
            .flat_map(|w| w[0].iter().copied().zip(w[1].iter().copied()))
    };
    let rho = corr(consecutive());
    let bound = 5.0 / (((steps - 1) * 67) as f64).sqrt();
    assert!(rho.abs() < bound, "consecutive steps: {rho}");
    // The first weight of each layer: different parameters, so independent too.
    let layers = || flat.iter().map(|p| (p[0], p[40]));
    assert!(corr(layers()).abs() < 5.0 / (steps as f64).sqrt());
}

#[test]
fn step_and_step_empty_add_noise_of_the_same_scale() {
    // Per-layer clipping: R = √2 (two layers, automatic clipping). `step` takes R from
    // clipped_backward, `step_empty` from the clipping settings; both must give σR/E[B].
    // 150 steps × 67 parameters: 5 standard errors of the RMS is 3.5 %.
    let sigma = 1.5;
    let expected = sigma * 2f64.sqrt() / EXPECTED_BATCH;
    for empty in [true, false] {
        let mut o = optimizer(sigma, NoiseSource::Os, ClippingStyle::PerLayer);
        let (u, _) = updates(&mut o, net(), 150, empty);
        let (s, m) = rms(u.iter().flatten().flatten().copied());
        let tol = 5.0 / (2.0 * m as f64).sqrt();
        assert!(
            (s / expected - 1.0).abs() < tol,
            "empty {empty}: std {s}, expected {expected}"
        );
        assert_eq!(o.privacy().steps(), 150);
        assert_eq!(o.next_noise_step(), 150);
    }
}

#[test]
fn fixed_seed_resume_draws_identical_noise() {
    let dir = tempfile::tempdir().unwrap();
    let source = NoiseSource::FixedSeedForExperiments(31);
    let mut o = optimizer(1.0, source, ClippingStyle::Flat);
    let (_, m) = updates(&mut o, net(), 3, true);
    save_with_model(&o, dir.path(), &m).unwrap();
    let (straight, _) = updates(&mut o, m, 3, true);

    // Another process: another seed and a fresh model; the checkpoint's stream wins.
    let other = NoiseSource::FixedSeedForExperiments(32);
    let (mut o, m) = load_with_model(
        optimizer(1.0, other, ClippingStyle::Flat),
        dir.path(),
        net(),
        false,
    )
    .unwrap();
    assert_eq!(o.next_noise_step(), 3);
    let (resumed, _) = updates(&mut o, m, 3, true);
    assert!(resumed == straight, "resumed noise differs");
    assert_eq!(o.privacy().steps(), 6);
}

fn read_state(dir: &std::path::Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(dir.join("dp_state.json")).unwrap()).unwrap()
}

#[test]
fn os_seeded_runs_write_no_generator_state_and_resume_with_a_fresh_key() {
    let dir = tempfile::tempdir().unwrap();
    let mut o = optimizer(1.0, NoiseSource::Os, ClippingStyle::Flat);
    let (_, m) = updates(&mut o, net(), 2, true);
    save_with_model(&o, dir.path(), &m).unwrap();
    let state = read_state(dir.path());
    assert_eq!(state["noise"], serde_json::json!({ "source": "os" }));
    assert_eq!(state["sampler"], serde_json::json!({ "rng": null }));
    let keys: Vec<&str> = state
        .as_object()
        .unwrap()
        .keys()
        .map(|k| k.as_str())
        .collect();
    assert_eq!(keys.len(), 4, "{keys:?}");

    // Two resumptions of the same OS checkpoint draw different noise (each a fresh OS key).
    let resume = || {
        let os = optimizer(1.0, NoiseSource::Os, ClippingStyle::Flat);
        let (mut o, m) = load_with_model(os, dir.path(), net(), false).unwrap();
        assert!(!o.is_fixed_seed());
        updates(&mut o, m, 1, true).0
    };
    assert!(resume() != resume());
}

#[test]
fn an_os_seeded_optimizer_refuses_a_fixed_seed_checkpoint_unless_asked() {
    let dir = tempfile::tempdir().unwrap();
    let mut o = optimizer(
        1.0,
        NoiseSource::FixedSeedForExperiments(41),
        ClippingStyle::Flat,
    );
    o.draw().unwrap();
    o.abandon();
    let (_, m) = updates(&mut o, net(), 2, true);
    save_with_model(&o, dir.path(), &m).unwrap();
    let (straight, _) = updates(&mut o, m, 1, true);
    let next_draw = o.draw().unwrap();

    let os = || optimizer(1.0, NoiseSource::Os, ClippingStyle::Flat);
    match load_with_model(os(), dir.path(), net(), false) {
        Err(DpError::FixedSeedCheckpoint { what, .. }) => assert_eq!(what, "noise generator"),
        other => panic!("expected FixedSeedCheckpoint, got {:?}", other.err()),
    }
    // A fixed-seed optimizer with an OS-seeded sampler: the sampler is refused.
    let fixed = optimizer_sampling(
        1.0,
        NoiseSource::FixedSeedForExperiments(1),
        NoiseSource::Os,
        ClippingStyle::Flat,
    );
    match load_with_model(fixed, dir.path(), net(), false) {
        Err(DpError::FixedSeedCheckpoint { what, .. }) => assert_eq!(what, "sampler"),
        other => panic!("expected FixedSeedCheckpoint, got {:?}", other.err()),
    }
    // Asked explicitly: the fixed-seed streams continue exactly.
    let (mut o, m) = load_with_model(os(), dir.path(), net(), true).unwrap();
    assert!(o.is_fixed_seed() && o.sampler().is_fixed_seed());
    assert!(updates(&mut o, m, 1, true).0 == straight);
    assert_eq!(o.draw().unwrap(), next_draw);
}

#[test]
fn a_resumed_sampler_continues_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let source = NoiseSource::FixedSeedForExperiments(8);
    let mut o = optimizer(1.0, source, ClippingStyle::Flat);
    let draw = |o: &mut DpOptimizer<_, Inner>| {
        let b = o.draw().unwrap();
        o.abandon();
        b
    };
    for _ in 0..5 {
        draw(&mut o);
    }
    save_with_model(&o, dir.path(), &net()).unwrap();
    let straight: Vec<_> = (0..5).map(|_| draw(&mut o)).collect();
    let other = NoiseSource::FixedSeedForExperiments(9);
    let (mut resumed, _) = load_with_model(
        optimizer(1.0, other, ClippingStyle::Flat),
        dir.path(),
        net(),
        false,
    )
    .unwrap();
    let again: Vec<_> = (0..5).map(|_| draw(&mut resumed)).collect();
    assert_eq!(again, straight);
}

#[test]
fn loaded_privacy_state_is_validated() {
    let dir = tempfile::tempdir().unwrap();
    let source = NoiseSource::FixedSeedForExperiments(51);
    let mut o = optimizer(1.0, source, ClippingStyle::Flat);
    let (_, m) = updates(&mut o, net(), 2, true);
    save_with_model(&o, dir.path(), &m).unwrap();
    let good = read_state(dir.path());
    let load_edited = |edit: &dyn Fn(&mut serde_json::Value)| {
        let mut state = good.clone();
        edit(&mut state);
        std::fs::write(dir.path().join("dp_state.json"), state.to_string()).unwrap();
        load_with_model(
            optimizer(1.0, source, ClippingStyle::Flat),
            dir.path(),
            net(),
            false,
        )
        .map(|_| ())
    };
    assert_eq!(load_edited(&|_| {}), Ok(()));
    type Edit<'a> = (&'a str, &'a dyn Fn(&mut serde_json::Value));
    let edits: [Edit; 8] = [
        ("negative σ", &|s| {
            s["privacy"]["noise_multiplier"] = (-1.0).into()
        }),
        ("another σ", &|s| {
            s["privacy"]["noise_multiplier"] = 0.5.into()
        }),
        ("q > 1", &|s| s["privacy"]["sample_rate"] = 2.0.into()),
        ("another q", &|s| s["privacy"]["sample_rate"] = 0.02.into()),
        ("δ = 0", &|s| s["privacy"]["delta"] = 0.0.into()),
        ("history with zero steps", &|s| {
            s["privacy"]["accountant"]["history"][0]["steps"] = 0.into()
        }),
        ("no noise entry", &|s| {
            s.as_object_mut().unwrap().remove("noise");
        }),
        ("expected batch 0", &|s| {
            s["expected_batch_size"] = 0.0.into()
        }),
    ];
    for (name, edit) in edits {
        match load_edited(edit) {
            Err(DpError::Checkpoint(msg)) => assert!(!msg.is_empty()),
            // Another q or q·N is refused as a sampling mismatch, checked first.
            Err(DpError::SamplingMismatch { .. })
                if name.contains('q') || name.contains("expected batch") => {}
            other => panic!("{name}: expected a checkpoint error, got {other:?}"),
        }
    }
}

#[test]
fn loading_drops_a_stale_accumulation() {
    let dir = tempfile::tempdir().unwrap();
    let source = NoiseSource::FixedSeedForExperiments(61);
    let o = optimizer(1.0, source, ClippingStyle::Flat);
    let model = net();
    save_with_model(&o, dir.path(), &model).unwrap();
    let mut o = optimizer(1.0, source, ClippingStyle::Flat);
    o.backward_unpadded(&model, zero_losses(&model, 2)).unwrap();
    assert!(o.accumulated_sum(&model.fc1.weight.id).is_some());
    let (mut o, model) = load_with_model(o, dir.path(), model, false).unwrap();
    assert!(o.accumulated_sum(&model.fc1.weight.id).is_none());
    assert!(matches!(o.step(1.0, model), Err(DpError::NoGradients)));
}

#[test]
fn noise_backend_equals_the_host_stream() {
    let g = NoiseGenerator::new(NoiseSource::FixedSeedForExperiments(71)).unwrap();
    let draw = NoiseDraw {
        key: g.key().clone(),
        step: 4,
        first_block: 2,
        n: 1000,
        std: 0.3,
    };
    let t = <Inner as crate::noise::DrawNoise>::gaussian_noise(&draw, &Default::default());
    let t = Tensor::<Inner, 1>::from_primitive(burn::tensor::TensorPrimitive::Float(t));
    assert_eq!(t.dims(), [1000]);
    let v = t.into_data().to_vec::<f32>().unwrap();
    assert_eq!(v, gaussian_vec(g.key().words(), 4, 2, 1000, 0.3));
}
