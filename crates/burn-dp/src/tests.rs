//! Unit tests of the DP machinery around the engine (the oracle-parity tests of the engine are in
//! `tests/parity/`).

use burn::module::{AutodiffModule, Module, Param};
use burn::nn::{Linear, LinearConfig};
use burn::optim::SgdConfig;
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};

use crate::*;

use super::Inner;
type Dp = DpAutodiff<Inner>;

#[derive(Module, Debug)]
struct Net<B: Backend> {
    fc1: Linear<B>,
    fc2: Linear<B>,
}

fn net() -> Net<Dp> {
    let dev = Default::default();
    let mut n = Net {
        fc1: LinearConfig::new(4, 8).init(&dev),
        fc2: LinearConfig::new(8, 3).init(&dev),
    };
    // deterministic weights
    let w = |r: usize, c: usize, s: f32| {
        Param::from_tensor(Tensor::<Dp, 2>::from_data(
            TensorData::new(
                (0..r * c)
                    .map(|i| ((i as f32) * s).sin() * 0.5)
                    .collect::<Vec<_>>(),
                [r, c],
            ),
            &dev,
        ))
    };
    n.fc1.weight = w(4, 8, 0.37);
    n.fc2.weight = w(8, 3, 0.91);
    let b = |n: usize, s: f32| {
        Some(Param::from_tensor(Tensor::<Dp, 1>::from_data(
            TensorData::new(
                (0..n)
                    .map(|i| ((i as f32) * s).cos() * 0.1)
                    .collect::<Vec<_>>(),
                [n],
            ),
            &dev,
        )))
    };
    n.fc1.bias = b(8, 0.5);
    n.fc2.bias = b(3, 1.3);
    n
}

fn inputs(rows: &[usize]) -> (Tensor<Dp, 2>, Vec<usize>) {
    let data: Vec<f32> = rows
        .iter()
        .flat_map(|&r| (0..4).map(move |j| ((r * 4 + j) as f32 * 0.73).cos()))
        .collect();
    (
        Tensor::from_data(TensorData::new(data, [rows.len(), 4]), &Default::default()),
        rows.iter().map(|r| r % 3).collect(),
    )
}

fn losses(model: &Net<Dp>, rows: &[usize], mask: Option<&[f32]>) -> Tensor<Dp, 1> {
    let (x, y) = inputs(rows);
    let logits = model
        .fc2
        .forward(burn::tensor::activation::relu(model.fc1.forward(batch(x))));
    let b = rows.len();
    let y = Tensor::<Dp, 1, burn::tensor::Int>::from_data(
        TensorData::new(y.iter().map(|v| *v as i64).collect::<Vec<_>>(), [b]),
        &Default::default(),
    );
    let l = burn::tensor::activation::log_softmax(logits, 1)
        .gather(1, y.reshape([b, 1]))
        .reshape([b])
        .neg();
    match mask {
        Some(m) => {
            l * Tensor::<Dp, 1>::from_data(TensorData::new(m.to_vec(), [b]), &Default::default())
        }
        None => l,
    }
}

/// A sampler at q = 0.01 over 400 examples: expected logical batch 4.
fn sampler(seed: u64) -> PoissonSampler {
    PoissonSampler::new(400, 0.01, 4, NoiseSource::FixedSeedForExperiments(seed)).unwrap()
}

fn opt(sigma: f64, seed: u64) -> DpOptimizer<impl burn::optim::Optimizer<Net<Dp>, Dp>, Inner> {
    let privacy =
        PrivacyState::with_noise_multiplier(sigma, 0.01, 1e-5, AccountantKind::Rdp).unwrap();
    DpOptimizer::new(
        SgdConfig::new().init::<Dp, Net<Dp>>(),
        PerSampleConfig::new(ClippingFn::AUTOMATIC),
        privacy,
        sampler(seed),
        NoiseSource::FixedSeedForExperiments(seed),
    )
    .unwrap()
}

/// What `PrivateTrainer::save_checkpoint` does, for a hand-written loop: the step object's files
/// and the model's.
pub(crate) fn save_with_model<O, M>(
    o: &DpOptimizer<O, Inner>,
    dir: &std::path::Path,
    m: &M,
) -> Result<(), DpError>
where
    M: AutodiffModule<Dp>,
    O: burn::optim::Optimizer<M, Dp>,
{
    use burn::record::{FullPrecisionSettings, NamedMpkFileRecorder, Recorder};
    o.save_checkpoint::<M>(dir)?;
    NamedMpkFileRecorder::<FullPrecisionSettings>::new()
        .record(m.clone().into_record(), dir.join("model"))
        .map_err(|e| DpError::Checkpoint(e.to_string()))
}

/// What `PrivateTrainer::resume` does, for a hand-written loop: the step object's load (adopting
/// a fixed seed if asked), then the model's.
pub(crate) fn load_with_model<O, M>(
    mut o: DpOptimizer<O, Inner>,
    dir: &std::path::Path,
    m: M,
    adopt_fixed_seed: bool,
) -> Result<(DpOptimizer<O, Inner>, M), DpError>
where
    M: AutodiffModule<Dp>,
    O: burn::optim::Optimizer<M, Dp>,
{
    use burn::record::{FullPrecisionSettings, NamedMpkFileRecorder, Recorder};
    let device = Default::default();
    if adopt_fixed_seed {
        o.load_checkpoint_adopting_fixed_seed::<M>(dir, &device)?;
    } else {
        o.load_checkpoint::<M>(dir, &device)?;
    }
    let record = NamedMpkFileRecorder::<FullPrecisionSettings>::new()
        .load(dir.join("model"), &device)
        .map_err(|e| DpError::Checkpoint(e.to_string()))?;
    Ok((o, m.load_record(record)))
}

fn flat_params(m: &Net<Dp>) -> Vec<f32> {
    let v = m.valid();
    [
        v.fc1.weight.val().into_data(),
        v.fc1.bias.unwrap().val().into_data(),
        v.fc2.weight.val().into_data(),
        v.fc2.bias.unwrap().val().into_data(),
    ]
    .into_iter()
    .flat_map(|d| d.convert::<f32>().to_vec::<f32>().unwrap())
    .collect()
}

fn sum_of(o: &DpOptimizer<impl Clone, Inner>, m: &Net<Dp>) -> Vec<f32> {
    [
        m.fc1.weight.id,
        m.fc1.bias.as_ref().unwrap().id,
        m.fc2.weight.id,
        m.fc2.bias.as_ref().unwrap().id,
    ]
    .iter()
    .flat_map(|id| {
        o.accumulated_sum(id)
            .unwrap()
            .into_data()
            .convert::<f32>()
            .to_vec::<f32>()
            .unwrap()
    })
    .collect()
}

fn close(a: &[f32], b: &[f32], tol: f32) {
    assert_eq!(a.len(), b.len());
    for (x, y) in a.iter().zip(b) {
        assert!((x - y).abs() <= tol * (1.0 + y.abs()), "{x} vs {y}");
    }
}

// The noise tests (generator, per-parameter update noise, checkpoints' generator state) are in
// `noise_tests.rs`.

#[test]
fn accumulation_equals_one_big_batch_and_masked_rows_are_zero() {
    let model = net();
    let mut big = opt(1.0, 1);
    big.backward_unpadded(&model, losses(&model, &[0, 1, 2, 3, 4, 5], None))
        .unwrap();
    let mut parts = opt(1.0, 1);
    parts
        .backward_unpadded(&model, losses(&model, &[0, 1, 2], None))
        .unwrap();
    parts
        .backward_unpadded(&model, losses(&model, &[3, 4, 5], None))
        .unwrap();
    close(&sum_of(&parts, &model), &sum_of(&big, &model), 1e-5);

    let mut masked = opt(1.0, 1);
    // The optimizer masks the padding rows itself.
    for (rows, mask) in [
        (vec![0, 1, 2, 7, 9], vec![1.0, 1.0, 1.0, 0.0, 0.0]),
        (vec![3, 4, 5, 8], vec![1.0, 1.0, 1.0, 0.0]),
    ] {
        let batch = PhysicalBatch {
            indices: rows.clone(),
            mask,
        };
        let _open = batch.open();
        masked
            .backward(&model, losses(&model, &rows, None), &batch)
            .unwrap();
    }
    close(&sum_of(&masked, &model), &sum_of(&big, &model), 1e-5);
}

#[test]
fn resume_gives_the_same_parameters_and_epsilon() {
    let dir = tempfile::tempdir().unwrap();
    let batches: [&[usize]; 4] = [&[0, 1, 2], &[3, 4], &[5, 6, 7], &[8]];
    let mut o = opt(1.1, 5);
    let mut m = net();
    for rows in batches {
        o.backward_unpadded(&m, losses(&m, rows, None)).unwrap();
        m = o.step(0.1, m).unwrap();
    }
    let straight = flat_params(&m);
    let eps_straight = o.epsilon().unwrap().epsilon;

    let mut o = opt(1.1, 5);
    let mut m = net();
    for rows in &batches[..2] {
        o.backward_unpadded(&m, losses(&m, rows, None)).unwrap();
        m = o.step(0.1, m).unwrap();
    }
    save_with_model(&o, dir.path(), &m).unwrap();
    let at_save = flat_params(&m);
    let (o2, m2) = load_with_model(opt(1.1, 999), dir.path(), net(), false).unwrap();
    close(&flat_params(&m2), &at_save, 0.0);
    assert_eq!(
        crate::engine::trainable::<Inner, _>(&m2).len(),
        4,
        "loaded parameters stay trainable"
    );
    drop(o2);
    // A fresh process: new model, new optimizer (different seed: the checkpoint's stream wins).
    let (mut o, mut m) = load_with_model(opt(1.1, 999), dir.path(), net(), false).unwrap();
    for rows in &batches[2..] {
        o.backward_unpadded(&m, losses(&m, rows, None)).unwrap();
        m = o.step(0.1, m).unwrap();
    }
    close(&flat_params(&m), &straight, 1e-6);
    assert_eq!(o.epsilon().unwrap().epsilon, eps_straight);
    assert_eq!(o.privacy().steps(), 4);
}

#[test]
fn bitfit_counts_and_frozen_training() {
    let (model, report) = freeze(net(), &FreezePolicy::BiasOnly).unwrap();
    assert_eq!(
        report,
        FreezeReport {
            trainable: 8 + 3,
            total: 4 * 8 + 8 + 8 * 3 + 3,
            trainable_tensors: 2
        }
    );
    let mut o = opt(1.0, 2);
    o.backward_unpadded(&model, losses(&model, &[0, 1], None))
        .unwrap();
    let before = model.fc1.weight.val().into_data();
    let model = o.step(0.5, model).unwrap();
    assert_eq!(
        model.fc1.weight.val().into_data(),
        before,
        "frozen weights do not move"
    );
    let (_, head) = freeze(net(), &FreezePolicy::Prefixes(vec!["fc2".into()])).unwrap();
    assert_eq!(head.trainable, 8 * 3 + 3);
    assert!(freeze(
        net(),
        &FreezePolicy::Select(ParamSelector::PathPrefix("nope".into()))
    )
    .is_err());
}

#[test]
fn misuse_is_a_typed_error() {
    let model = net();
    let mut o = opt(1.0, 3);
    assert!(matches!(
        o.step(0.1, model.clone()),
        Err(DpError::NoGradients)
    ));

    // Gradients of a bias-only model stepped into the full model.
    let (frozen, _) = freeze(model.clone(), &FreezePolicy::BiasOnly).unwrap();
    o.backward_unpadded(&frozen, losses(&frozen, &[0, 1], None))
        .unwrap();
    assert!(matches!(
        o.step(0.1, model.clone()),
        Err(DpError::ParamMismatch(_))
    ));
    // Nothing was lost: the same gradients step the right model.
    assert!(o.step(0.1, frozen).is_ok());

    // Budget: a target that one step exceeds.
    let schedule = Schedule::new(0.5, 2).unwrap();
    let privacy =
        PrivacyState::for_target_epsilon(1.0, 1e-5, schedule, AccountantKind::Rdp).unwrap();
    let sigma = privacy.noise_multiplier;
    let mut o = DpOptimizer::new(
        SgdConfig::new().init::<Dp, Net<Dp>>(),
        PerSampleConfig::new(ClippingFn::AUTOMATIC),
        privacy,
        PoissonSampler::new(8, 0.5, 4, NoiseSource::Os).unwrap(),
        NoiseSource::Os,
    )
    .unwrap();
    let mut m = model;
    for _ in 0..2 {
        o.backward_unpadded(&m, losses(&m, &[0], None)).unwrap();
        m = o.step(0.1, m).unwrap();
    }
    assert!(o.epsilon().unwrap().epsilon <= 1.0 && sigma > 0.0);
    o.backward_unpadded(&m, losses(&m, &[0], None)).unwrap();
    assert!(matches!(
        o.step(0.1, m.clone()),
        Err(DpError::BudgetExceeded { .. })
    ));
    assert!(matches!(
        PrivacyState::with_noise_multiplier(0.0, 0.01, 1e-5, AccountantKind::Rdp),
        Err(DpError::Accounting(_))
    ));
    assert!(matches!(
        PrivacyState::with_noise_multiplier(1.0, 1.5, 1e-5, AccountantKind::Rdp),
        Err(DpError::Accounting(_))
    ));
}

#[test]
fn empty_poisson_batches_still_add_noise_and_count() {
    let mut sampler =
        PoissonSampler::new(50, 0.02, 4, NoiseSource::FixedSeedForExperiments(1)).unwrap();
    let mut sizes = Vec::new();
    for _ in 0..400 {
        let b = sampler.next_batch();
        sizes.push(b.indices.len());
    }
    let mean = sizes.iter().sum::<usize>() as f64 / sizes.len() as f64;
    assert!((mean - 1.0).abs() < 0.25, "mean logical batch {mean}");
    assert!(sizes.contains(&0));

    let model = net();
    let mut o = opt(1.0, 4);
    let before = flat_params(&model);
    let model = o.step_empty(1.0, model).unwrap();
    assert_ne!(
        flat_params(&model),
        before,
        "an empty batch still releases noise"
    );
    assert_eq!(o.privacy().steps(), 1);
}

/// Losses of [`net`] on explicit inputs `x` `[B, 4]` (row-major) with labels `y`, plus `offset`
/// (a batch-independent constant added to each sample's loss, e.g. a NaN for one sample).
fn losses_of(model: &Net<Dp>, x: Vec<f32>, y: &[usize], offset: Option<Vec<f32>>) -> Tensor<Dp, 1> {
    let b = y.len();
    let dev = Default::default();
    let x = Tensor::<Dp, 2>::from_data(TensorData::new(x, [b, 4]), &dev);
    let logits = model
        .fc2
        .forward(burn::tensor::activation::relu(model.fc1.forward(batch(x))));
    let y = Tensor::<Dp, 1, burn::tensor::Int>::from_data(
        TensorData::new(y.iter().map(|v| *v as i64).collect::<Vec<_>>(), [b]),
        &dev,
    );
    let l = burn::tensor::activation::log_softmax(logits, 1)
        .gather(1, y.reshape([b, 1]))
        .reshape([b])
        .neg();
    match offset {
        Some(o) => l + Tensor::<Dp, 1>::from_data(TensorData::new(o, [b]), &dev),
        None => l,
    }
}

fn values(t: Tensor<Inner, 1>) -> Vec<f32> {
    t.into_data().convert::<f32>().to_vec::<f32>().unwrap()
}

/// The clipped sums of `g`, in the order of `ids`.
fn sums_in_order(g: &ClippedGradients<Inner>, ids: &[burn::module::ParamId]) -> Vec<f32> {
    ids.iter()
        .flat_map(|id| values(g.sums[id].clone()))
        .collect()
}

fn param_ids(m: &Net<Dp>) -> Vec<burn::module::ParamId> {
    vec![
        m.fc1.weight.id,
        m.fc1.bias.as_ref().unwrap().id,
        m.fc2.weight.id,
        m.fc2.bias.as_ref().unwrap().id,
    ]
}

#[test]
fn non_finite_samples_contribute_exactly_zero() {
    // Issue 11, item 9: a sample with a NaN / infinite input (so a non-finite gradient) or a
    // non-finite loss is clipped to zero: the sums equal those of the batch without it.
    let model = net();
    let row =
        |r: usize| -> Vec<f32> { (0..4).map(|j| ((r * 4 + j) as f32 * 0.73).cos()).collect() };
    let good = [row(0), row(2)].concat();
    let ids = param_ids(&model);
    let configs = [
        PerSampleConfig::new(ClippingFn::AUTOMATIC).with_norm_mode(NormMode::Ghost),
        PerSampleConfig::new(ClippingFn::AUTOMATIC).with_norm_mode(NormMode::Instantiate),
        PerSampleConfig::new(ClippingFn::Abadi { max_norm: 0.5 }).with_norm_mode(NormMode::Ghost),
        PerSampleConfig::new(ClippingFn::Abadi { max_norm: 0.5 })
            .with_norm_mode(NormMode::Instantiate)
            .with_style(ClippingStyle::PerLayer),
    ];
    for config in &configs {
        let reference = clipped_backward(
            config,
            &model,
            losses_of(&model, good.clone(), &[0, 2], None),
        )
        .unwrap();
        assert!(reference.non_finite().unwrap().is_empty());
        let want = sums_in_order(&reference, &ids);
        let bad_rows: [(Vec<f32>, Option<Vec<f32>>); 4] = [
            (vec![f32::NAN, 0.1, 0.2, 0.3], None),
            (vec![f32::INFINITY, 0.1, 0.2, 0.3], None),
            (vec![0.1, f32::NEG_INFINITY, 0.2, f32::INFINITY], None),
            // A finite gradient but a NaN loss.
            (row(1), Some(vec![0.0, f32::NAN, 0.0])),
        ];
        for (bad, offset) in bad_rows {
            let x = [row(0), bad.clone(), row(2)].concat();
            let g =
                clipped_backward(config, &model, losses_of(&model, x, &[0, 1, 2], offset)).unwrap();
            assert_eq!(g.non_finite().unwrap(), vec![1], "{config:?} {bad:?}");
            let got = sums_in_order(&g, &ids);
            assert!(
                got.iter().all(|v| v.is_finite()),
                "{config:?} {bad:?}: {got:?}"
            );
            close(&got, &want, 1e-6);
            assert_eq!(g.sensitivity, reference.sensitivity);
        }
    }

    // Counted in BatchStats, and the accumulated sum stays finite.
    let mut o = opt(1.0, 1);
    let x = [row(0), vec![f32::NAN; 4], row(2)].concat();
    let stats = o
        .backward_unpadded(&model, losses_of(&model, x, &[0, 1, 2], None))
        .unwrap();
    let read = stats.read().unwrap();
    assert_eq!((read.rows, read.non_finite.clone()), (3, vec![1]));
    assert!(read.norms[1].is_nan() && read.norms[0].is_finite());
    assert!(sum_of(&o, &model).iter().all(|v| v.is_finite()));
    let stats = o
        .backward_unpadded(&model, losses(&model, &[0, 1], None))
        .unwrap();
    assert!(stats.read().unwrap().non_finite.is_empty());
    let model = o.step(0.1, model).unwrap();
    assert!(flat_params(&model).iter().all(|v| v.is_finite()));
    let step = o.last_step_stats().unwrap().unwrap();
    assert_eq!(
        (step.rows, step.physical_batches, step.non_finite),
        (5, 2, 1)
    );
    assert!(step.norm_sum.is_finite() && step.norm_max > 0.0, "{step:?}");
}

#[derive(Module, Debug)]
struct Positions<B: Backend> {
    fc: Linear<B>,
}

#[test]
fn ghost_norms_of_nearly_cancelling_positions_stay_finite() {
    // Issue 11, item 9: positions whose gradients almost cancel (x_1 = x_2, upstream gradients
    // 1 and -(1 + e)) have a tiny per-sample gradient -e x 1ᵀ, but the ghost norm sums four f32
    // Gram products of size |x|² q each, which can come out negative: sqrt gave NaN and every
    // parameter became NaN. Property test over random inputs (seeded).
    use rand::{Rng, SeedableRng};
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(11);
    let dev = Default::default();
    let model = Positions::<Dp> {
        fc: LinearConfig::new(3, 5).with_bias(false).init(&dev),
    };
    let config = PerSampleConfig::new(ClippingFn::AUTOMATIC).with_norm_mode(NormMode::Ghost);
    let mut tiny = 0;
    for case in 0..64 {
        let b = rng.random_range(1..=4usize);
        let scale = 10f32.powf(rng.random_range(-2.0..2.0));
        let e = 10f32.powf(rng.random_range(-7.0..-3.0));
        let mut x = Vec::with_capacity(b * 2 * 3);
        for _ in 0..b {
            let row: Vec<f32> = (0..3)
                .map(|_| scale * rng.random_range(-1.0..1.0f32))
                .collect();
            x.extend_from_slice(&row);
            x.extend_from_slice(&row);
        }
        let x = Tensor::<Dp, 3>::from_data(TensorData::new(x, [b, 2, 3]), &dev);
        let w = Tensor::<Dp, 3>::from_data(TensorData::new(vec![1.0, -(1.0 + e)], [1, 2, 1]), &dev);
        let losses = (model.fc.forward(batch(x)) * w)
            .sum_dim(2)
            .sum_dim(1)
            .reshape([b]);
        let g = clipped_backward(&config, &model, losses).unwrap();
        let norms = values(g.norms.clone());
        assert!(
            norms.iter().all(|n| n.is_finite() && *n >= 0.0),
            "case {case}: {norms:?}"
        );
        assert!(
            g.non_finite().unwrap().is_empty(),
            "case {case}: a finite gradient is not excluded"
        );
        let sum = values(g.sums[&model.fc.weight.id].clone());
        assert!(sum.iter().all(|v| v.is_finite()), "case {case}: {sum:?}");
        tiny += norms.iter().filter(|n| **n == 0.0).count();
    }
    // Cancelled ghost sums (which rounded to zero or below before the guard) fall back to an
    // upper bound of the norm: no sample's norm is taken to be 0, so none is clipped by 1/γ.
    assert_eq!(tiny, 0);
}

#[test]
fn gdp_can_neither_calibrate_nor_enforce_a_budget() {
    use crate::accounting::AccountantError;
    fn refused<T>(r: Result<T, DpError>) -> bool {
        matches!(
            r,
            Err(DpError::Accounting(AccountantError::NotAnUpperBound {
                accountant: AccountantKind::Gdp,
                ..
            }))
        )
    }
    // Issue 11, item 7: GDP would calibrate sigma 0.39 here, where RDP bounds epsilon by 7.
    let schedule = Schedule::new(0.001, 100).unwrap();
    assert!(refused(PrivacyState::for_target_epsilon(
        1.0,
        1e-5,
        schedule,
        AccountantKind::Gdp
    )));
    assert!(PrivacyState::for_target_epsilon(1.0, 1e-5, schedule, AccountantKind::Rdp).is_ok());

    // A GDP state with a target (built by hand, or from an old checkpoint) cannot enforce it.
    let model = net();
    let mut privacy =
        PrivacyState::with_noise_multiplier(1.0, 0.01, 1e-5, AccountantKind::Gdp).unwrap();
    privacy.target_epsilon = Some(10.0);
    let build = |privacy: PrivacyState| {
        DpOptimizer::new(
            SgdConfig::new().init::<Dp, Net<Dp>>(),
            PerSampleConfig::new(ClippingFn::AUTOMATIC),
            privacy,
            sampler(1),
            NoiseSource::FixedSeedForExperiments(1),
        )
        .unwrap()
    };
    let mut o = build(privacy.clone());
    o.backward_unpadded(&model, losses(&model, &[0, 1], None))
        .unwrap();
    let before = sum_of(&o, &model);
    assert!(refused(o.step(0.1, model.clone())));
    // Nothing lost: the accumulated sums are still there, and no step was recorded.
    close(&sum_of(&o, &model), &before, 0.0);
    assert_eq!(o.privacy().steps(), 0);

    // Without a target GDP only reports (an estimate) and training proceeds.
    let mut o = build(privacy.clone().allow_exceeding_budget());
    o.backward_unpadded(&model, losses(&model, &[0, 1], None))
        .unwrap();
    o.step(0.1, model.clone()).unwrap();
    privacy.target_epsilon = None;
    let mut o = build(privacy);
    o.backward_unpadded(&model, losses(&model, &[0, 1], None))
        .unwrap();
    o.step(0.1, model).unwrap();
    assert_eq!(o.epsilon().unwrap().accountant, AccountantKind::Gdp);
}

#[test]
fn privacy_sampler_and_scaling_share_one_sample_rate() {
    // Issue 11, item 10: q comes from one place. The optimizer takes the sampler, refuses one
    // whose q differs from the accounted q, and divides by the sampler's q·N.
    let privacy =
        PrivacyState::with_noise_multiplier(1e-9, 0.01, 1e-5, AccountantKind::Rdp).unwrap();
    let build = |privacy: &PrivacyState, sampler: PoissonSampler| {
        DpOptimizer::new(
            SgdConfig::new().init::<Dp, Net<Dp>>(),
            PerSampleConfig::new(ClippingFn::AUTOMATIC),
            privacy.clone(),
            sampler,
            NoiseSource::FixedSeedForExperiments(1),
        )
    };
    let seeded = |n, q| PoissonSampler::new(n, q, 4, NoiseSource::FixedSeedForExperiments(1));
    match build(&privacy, seeded(400, 0.02).unwrap()) {
        Err(DpError::SamplingMismatch {
            sample_rate, found, ..
        }) => assert_eq!((sample_rate, found), (0.01, 0.02)),
        Err(e) => panic!("wrong error {e}"),
        Ok(_) => panic!("a sampler at q = 0.02 was accepted for accounting at q = 0.01"),
    }

    // The update is -lr · sum / (q·N) (sigma ~ 0): q·N = 4, then 8.
    let model = net();
    for n in [400, 800] {
        let mut o = build(&privacy, seeded(n, 0.01).unwrap()).unwrap();
        o.backward_unpadded(&model, losses(&model, &[0, 1, 2], None))
            .unwrap();
        let sum = sum_of(&o, &model);
        let before = flat_params(&model);
        let after = flat_params(&o.step(1.0, model.clone()).unwrap());
        let want: Vec<f32> = before
            .iter()
            .zip(&sum)
            .map(|(p, s)| p - s / (0.01 * n as f32))
            .collect();
        close(&after, &want, 1e-5);
    }

    // Checkpoints: a checkpoint at another rate is refused.
    let dir = tempfile::tempdir().unwrap();
    let o = build(&privacy, seeded(400, 0.01).unwrap()).unwrap();
    o.save_checkpoint::<Net<Dp>>(dir.path()).unwrap();
    let other_q =
        PrivacyState::with_noise_multiplier(1e-9, 0.02, 1e-5, AccountantKind::Rdp).unwrap();
    let device = Default::default();
    let loaded = build(&other_q, seeded(400, 0.02).unwrap())
        .unwrap()
        .load_checkpoint::<Net<Dp>>(dir.path(), &device);
    assert!(
        matches!(loaded, Err(DpError::SamplingMismatch { what, .. }) if what.contains("sample rate"))
    );
    let loaded = build(&privacy, seeded(800, 0.01).unwrap())
        .unwrap()
        .load_checkpoint::<Net<Dp>>(dir.path(), &device);
    assert!(
        matches!(loaded, Err(DpError::SamplingMismatch { what, .. }) if what.contains("batch size"))
    );
    assert!(build(&privacy, seeded(400, 0.01).unwrap())
        .unwrap()
        .load_checkpoint::<Net<Dp>>(dir.path(), &device)
        .is_ok());
}

#[test]
fn physical_batches_partition_the_logical_batch() {
    // Every drawn example is in exactly one physical batch, in order, with mask 1; padding rows
    // come last, repeat index 0 and have mask 0; every physical batch has the fixed size.
    let mut sampler =
        PoissonSampler::new(50, 0.3, 4, NoiseSource::FixedSeedForExperiments(2)).unwrap();
    let (mut padded, mut several) = (false, false);
    for _ in 0..50 {
        let logical = sampler.next_batch();
        assert!(logical.indices.windows(2).all(|w| w[0] < w[1]));
        assert!(logical.indices.iter().all(|&i| i < 50));
        let physical = logical.physical();
        assert_eq!(physical.len(), logical.indices.len().div_ceil(4));
        let mut real = Vec::new();
        for p in &physical {
            assert_eq!((p.indices.len(), p.mask.len()), (4, 4));
            let ones = p.mask.iter().take_while(|m| **m == 1.0).count();
            assert!(p.mask[ones..].iter().all(|m| *m == 0.0), "{:?}", p.mask);
            // Padding repeats the slice's first example, never one that was not drawn.
            assert!(
                p.indices[ones..].iter().all(|&i| i == p.indices[0]),
                "{:?}",
                p.indices
            );
            padded |= ones < 4;
            real.extend_from_slice(&p.indices[..ones]);
        }
        assert_eq!(real, logical.indices);
        several |= physical.len() > 1;
    }
    assert!(padded && several);
}

#[test]
fn resumed_sampler_continues_exactly() {
    let seeded =
        |seed| PoissonSampler::new(100, 0.1, 8, NoiseSource::FixedSeedForExperiments(seed));
    let draw = |s: &mut PoissonSampler| -> Vec<Vec<usize>> {
        (0..6).map(|_| s.next_batch().indices).collect()
    };
    let mut a = seeded(7).unwrap();
    let start = draw(&mut a);
    let json = serde_json::to_string(&a.state()).unwrap();
    let continued = draw(&mut a);
    assert_ne!(start, continued);
    // A sampler with another seed, restored, continues where `a` was saved.
    let mut b = seeded(999).unwrap();
    b.restore(&serde_json::from_str(&json).unwrap());
    assert_eq!(draw(&mut b), continued);

    // Through an optimizer checkpoint as well: the step object's own sampler.
    let dir = tempfile::tempdir().unwrap();
    let logical = |o: &mut DpOptimizer<_, Inner>| -> Vec<Vec<usize>> {
        (0..6)
            .map(|_| {
                let b = o.draw().unwrap().indices;
                o.abandon();
                b
            })
            .collect()
    };
    let mut o = opt(1.0, 3);
    logical(&mut o);
    o.save_checkpoint::<Net<Dp>>(dir.path()).unwrap();
    let continued = logical(&mut o);
    let mut fresh = opt(1.0, 42);
    fresh
        .load_checkpoint::<Net<Dp>>(dir.path(), &Default::default())
        .unwrap();
    assert_eq!(logical(&mut fresh), continued);

    // An OS-seeded sampler has no state to write.
    assert!(PoissonSampler::new(100, 0.1, 8, NoiseSource::Os)
        .unwrap()
        .state()
        .rng
        .is_none());
}

#[test]
fn step_empty_uses_the_sensitivity_of_clipped_backward() {
    // The noise of an empty logical batch is scaled by engine::sensitivity over the trainable
    // parameters; it must be what clipped_backward reports for the same clipping.
    let groups = ClippingStyle::Groups(vec![
        ParamGroup {
            name: "first".into(),
            selector: ParamSelector::PathPrefix("fc1".into()),
            clipping: ClippingFn::Abadi { max_norm: 1.0 },
        },
        ParamGroup {
            name: "second".into(),
            selector: ParamSelector::PathPrefix("fc2".into()),
            clipping: ClippingFn::Abadi { max_norm: 3.0 },
        },
        ParamGroup {
            name: "unused".into(),
            selector: ParamSelector::PathPrefix("nothing".into()),
            clipping: ClippingFn::AUTOMATIC,
        },
    ]);
    let cases = [
        (
            PerSampleConfig::new(ClippingFn::AUTOMATIC),
            FreezePolicy::None,
            1.0,
        ),
        (
            PerSampleConfig::new(ClippingFn::Abadi { max_norm: 2.5 }),
            FreezePolicy::None,
            2.5,
        ),
        (
            PerSampleConfig::new(ClippingFn::Abadi { max_norm: 1.5 })
                .with_style(ClippingStyle::PerLayer),
            FreezePolicy::None,
            1.5 * 2f64.sqrt(),
        ),
        (
            PerSampleConfig::new(ClippingFn::Abadi { max_norm: 1.5 })
                .with_style(ClippingStyle::PerLayer),
            FreezePolicy::Prefixes(vec!["fc2".into()]),
            1.5,
        ),
        (
            PerSampleConfig::new(ClippingFn::AUTOMATIC).with_style(groups.clone()),
            FreezePolicy::None,
            (1.0f64 + 9.0 + 1.0).sqrt(),
        ),
        (
            PerSampleConfig::new(ClippingFn::AUTOMATIC).with_style(groups),
            FreezePolicy::BiasOnly,
            (1.0f64 + 9.0 + 1.0).sqrt(),
        ),
    ];
    for (config, policy, want) in cases {
        let (model, _) = freeze(net(), &policy).unwrap();
        let from_backward = clipped_backward(&config, &model, losses(&model, &[0, 1, 2], None))
            .unwrap()
            .sensitivity;
        let params = crate::engine::trainable::<Inner, _>(&model);
        let ids: Vec<_> = params.iter().map(|p| (p.id, p.path.as_str())).collect();
        let for_empty = crate::engine::sensitivity(&config.clipping, &ids).unwrap();
        assert_eq!(from_backward, for_empty, "{config:?} {policy:?}");
        assert!(
            (for_empty - want).abs() < 1e-12,
            "{config:?}: {for_empty} vs {want}"
        );
    }
}

#[derive(Module, Debug)]
struct ConvNet<B: Backend> {
    conv: burn::nn::conv::Conv1d<B>,
    norm: burn::nn::LayerNorm<B>,
}

#[test]
fn non_finite_samples_are_excluded_from_conv_and_broadcast_terms() {
    // The convolution term caches x and the upstream gradient, LayerNorm a [B, ...] term: both
    // must drop a non-finite sample's rows exactly, in either norm mode.
    let dev = Default::default();
    let model = ConvNet::<Dp> {
        conv: burn::nn::conv::Conv1dConfig::new(2, 3, 2).init(&dev),
        norm: burn::nn::LayerNormConfig::new(4).init(&dev),
    };
    let row = |r: usize| -> Vec<f32> {
        (0..10)
            .map(|j| ((r * 10 + j) as f32 * 0.41).sin())
            .collect()
    };
    let losses = |x: Vec<f32>| {
        let b = x.len() / 10;
        let x = Tensor::<Dp, 3>::from_data(TensorData::new(x, [b, 2, 5]), &dev);
        let y = model.norm.forward(model.conv.forward(batch(x)));
        (y.clone() * y).sum_dim(2).sum_dim(1).reshape([b])
    };
    let ids = [
        model.conv.weight.id,
        model.conv.bias.as_ref().unwrap().id,
        model.norm.gamma.id,
        model.norm.beta.as_ref().unwrap().id,
    ];
    for mode in [NormMode::Ghost, NormMode::Instantiate] {
        let config = PerSampleConfig::new(ClippingFn::AUTOMATIC).with_norm_mode(mode);
        let want = clipped_backward(&config, &model, losses([row(0), row(2)].concat())).unwrap();
        let mut bad = row(1);
        bad[3] = f32::NAN;
        let got =
            clipped_backward(&config, &model, losses([row(0), bad, row(2)].concat())).unwrap();
        assert_eq!(got.non_finite().unwrap(), vec![1]);
        let got = sums_in_order(&got, &ids);
        assert!(got.iter().all(|v| v.is_finite()), "{mode:?}: {got:?}");
        close(&got, &sums_in_order(&want, &ids), 1e-6);
    }
}

/// burn-backend 0.21's grouped `conv1d_weight_backward` panics when the stride leaves input
/// positions unused; the conv rule's clipped sum goes through conv2d instead. The clipped sum
/// equals `Σ_i c_i g_i` of the instantiated per-sample gradients (which use unfold).
#[test]
fn grouped_strided_conv1d_clipped_sum_does_not_panic() {
    use burn::nn::conv::{Conv1d, Conv1dConfig};
    let dev = Default::default();
    // Length 12, kernel 3, stride 2: (12 − 3) mod 2 = 1 input position unused; groups 2.
    let conv: Conv1d<Dp> = Conv1dConfig::new(4, 6, 3)
        .with_stride(2)
        .with_groups(2)
        .init(&dev);
    let (b, len) = (3, 12);
    let x = Tensor::<Dp, 3>::from_data(
        TensorData::new(
            (0..b * 4 * len)
                .map(|i| ((i as f32) * 0.37).sin())
                .collect(),
            [b, 4, len],
        ),
        &dev,
    );
    let losses = || {
        let y = conv.forward(batch(x.clone()));
        let w = y.clone().sin().detach();
        (y * w).sum_dim(2).sum_dim(1).reshape([b])
    };
    let config = PerSampleConfig::new(ClippingFn::Abadi { max_norm: 0.5 });
    let clipped = clipped_backward(&config, &conv, losses()).unwrap();
    let per_sample = per_sample_gradients(&conv, losses()).unwrap();
    let norms: Vec<f32> = clipped.norms.clone().into_data().to_vec().unwrap();
    for (id, name, g) in per_sample {
        let g: Vec<f32> = g.into_data().to_vec().unwrap();
        let numel = g.len() / b;
        let want: Vec<f32> = (0..numel)
            .map(|j| {
                (0..b)
                    .map(|i| g[i * numel + j] * (0.5 / (norms[i] + 1e-6)).min(1.0))
                    .sum()
            })
            .collect();
        let got: Vec<f32> = clipped.sums[&id].clone().into_data().to_vec().unwrap();
        for (k, (a, w)) in got.iter().zip(&want).enumerate() {
            assert!(
                (a - w).abs() <= 1e-4 * w.abs().max(1e-2),
                "{name}[{k}]: {a} vs {w}"
            );
        }
    }
}

/// Device → host reads of one logical batch of `k` physical batches (2 rows each; the second
/// row of the last one a NaN input) and its DP step, then of reading the step's statistics.
fn host_reads_of_a_logical_batch(k: usize) -> (u64, u64, StepStats) {
    let model = net();
    let mut o = opt(1.0, 3);
    // A first step, uncounted (lazy initialisation).
    o.backward_unpadded(&model, losses(&model, &[0, 1], None))
        .unwrap();
    let model = o.step(0.1, model).unwrap();
    crate::backend::transfer::reset();
    for i in 0..k {
        let l = if i + 1 == k {
            // Row 2i as `inputs` builds it, then a row of NaNs.
            let x: Vec<f32> = (0..4).map(|j| ((8 * i + j) as f32 * 0.73).cos()).collect();
            losses_of(&model, [x, vec![f32::NAN; 4]].concat(), &[0, 1], None)
        } else {
            losses(&model, &[2 * i, 2 * i + 1], None)
        };
        o.backward_unpadded(&model, l).unwrap();
    }
    let model = o.step(0.1, model).unwrap();
    let stepping = crate::backend::transfer::read().host_reads;
    let stats = o.last_step_stats().unwrap().unwrap();
    let reading = crate::backend::transfer::read().host_reads - stepping;
    assert!(flat_params(&model).iter().all(|v| v.is_finite()));
    (stepping, reading, stats)
}

/// Issue 10.4: a logical batch makes no device → host read (a synchronisation on a GPU) per
/// physical batch: the per-sample norms and the non-finite mask stay on the device, the dropped
/// sample is masked there, and the logical batch's statistics are read once, when asked for.
/// (Before: 2 reads per physical batch, the norms for `BatchStats` and the non-finite mask.)
/// Counts are process-global: this relies on the tests running on one thread.
#[test]
fn a_logical_batch_reads_the_device_at_most_once() {
    for k in [1, 2, 5] {
        let (stepping, reading, stats) = host_reads_of_a_logical_batch(k);
        assert_eq!(stepping, 0, "{k} physical batches");
        assert_eq!(reading, 1, "{k} physical batches");
        assert_eq!(
            (stats.rows, stats.physical_batches, stats.non_finite),
            (2 * k, k, 1),
            "{stats:?}"
        );
        assert_eq!(stats.clipped, None, "automatic clipping clips no sample");
        assert!(
            stats.norm_sum > 0.0 && stats.norm_sum.is_finite(),
            "{stats:?}"
        );
        assert!(
            stats.norm_max > 0.0 && stats.norm_max <= stats.norm_sum,
            "{stats:?}"
        );
    }
}

/// The step statistics agree with the per-batch norms read on the host: norm sum and maximum
/// over finite samples, and the Abadi clipped count (norm + 1e-6 > C); an empty Poisson batch
/// reads nothing and reports zeros.
#[test]
fn step_stats_match_the_per_batch_norms() {
    let model = net();
    let privacy =
        PrivacyState::with_noise_multiplier(1.0, 0.01, 1e-5, AccountantKind::Rdp).unwrap();
    let mut o = DpOptimizer::new(
        SgdConfig::new().init::<Dp, Net<Dp>>(),
        PerSampleConfig::new(ClippingFn::Abadi { max_norm: 1.2 }),
        privacy,
        sampler(4),
        NoiseSource::FixedSeedForExperiments(4),
    )
    .unwrap();
    assert_eq!(o.last_step_stats().unwrap(), None);
    let mut norms = Vec::new();
    for rows in [[0usize, 1, 2], [3, 4, 5]] {
        let stats = o
            .backward_unpadded(&model, losses(&model, &rows, None))
            .unwrap();
        norms.extend(stats.read().unwrap().norms);
    }
    let model = o.step(0.1, model).unwrap();
    let got = o.last_step_stats().unwrap().unwrap();
    let sum: f64 = norms.iter().map(|&n| f64::from(n)).sum();
    let max = norms.iter().fold(0f32, |m, &n| m.max(n));
    let clipped = norms.iter().filter(|&&n| n + 1e-6 > 1.2).count();
    assert!(
        clipped > 0 && clipped < 6,
        "the threshold splits the samples: {norms:?}"
    );
    assert_eq!((got.rows, got.physical_batches, got.non_finite), (6, 2, 0));
    assert_eq!(got.clipped, Some(clipped));
    assert!((got.norm_sum - sum).abs() <= 1e-5 * sum, "{got:?} {sum}");
    assert_eq!(got.norm_max, f64::from(max));

    let _model = o.step_empty(0.1, model).unwrap();
    crate::backend::transfer::reset();
    let empty = o.last_step_stats().unwrap().unwrap();
    assert_eq!(crate::backend::transfer::read().host_reads, 0);
    assert_eq!(
        empty,
        StepStats {
            rows: 0,
            physical_batches: 0,
            non_finite: 0,
            clipped: None,
            norm_sum: 0.0,
            norm_max: 0.0
        }
    );
}

/// A forward and clipped backward of an empty batch, `[0, d]` and `[0, T, d]` through linear
/// layers: no gradient, no error, on every backend (burn-flex 0.21's gemm dies on an empty
/// batched product; the engine's `matmul_or_zeros` never calls it with one).
#[test]
fn an_empty_batch_runs_forward_and_clipped_backward() {
    let config = PerSampleConfig::new(ClippingFn::AUTOMATIC);
    let model = net();
    let g = clipped_backward(&config, &model, losses(&model, &[], None)).unwrap();
    assert_eq!(g.norms.dims(), [0]);
    assert!(values(g.sums[&model.fc1.weight.id].clone())
        .iter()
        .all(|v| *v == 0.0));

    let dev = Default::default();
    let x = Tensor::<Dp, 3>::from_data(TensorData::new(Vec::<f32>::new(), [0, 5, 4]), &dev);
    let losses = model
        .fc2
        .forward(burn::tensor::activation::relu(model.fc1.forward(batch(x))))
        .sum_dim(2)
        .sum_dim(1)
        .reshape([0]);
    let g = clipped_backward(&config, &model, losses).unwrap();
    assert_eq!(g.norms.dims(), [0]);
    assert!(values(g.sums[&model.fc2.weight.id].clone())
        .iter()
        .all(|v| *v == 0.0));
}
