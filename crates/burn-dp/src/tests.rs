//! Unit tests of the DP machinery around the engine (the oracle-parity tests of the engine are in
//! `tests/fixtures.rs`).

use burn::backend::NdArray;
use burn::module::{AutodiffModule, Module, Param};
use burn::nn::{Linear, LinearConfig};
use burn::optim::SgdConfig;
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};

use crate::*;

type Inner = NdArray<f32>;
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

fn opt(
    sigma: f64,
    seed: u64,
) -> DpOptimizer<impl burn::optim::Optimizer<Net<Dp>, Dp> + Clone, Inner> {
    let privacy =
        PrivacyState::with_noise_multiplier(sigma, 0.01, 1e-5, AccountantKind::Rdp).unwrap();
    DpOptimizer::new(
        SgdConfig::new().init::<Dp, Net<Dp>>(),
        PerSampleConfig::new(ClippingFn::AUTOMATIC),
        privacy,
        4.0,
        NoiseSource::FixedSeedForExperiments(seed),
    )
    .unwrap()
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
    big.backward(&model, losses(&model, &[0, 1, 2, 3, 4, 5], None))
        .unwrap();
    let mut parts = opt(1.0, 1);
    parts
        .backward(&model, losses(&model, &[0, 1, 2], None))
        .unwrap();
    parts
        .backward(&model, losses(&model, &[3, 4, 5], None))
        .unwrap();
    close(&sum_of(&parts, &model), &sum_of(&big, &model), 1e-5);

    let mut masked = opt(1.0, 1);
    masked
        .backward(
            &model,
            losses(&model, &[0, 1, 2, 7, 9], Some(&[1.0, 1.0, 1.0, 0.0, 0.0])),
        )
        .unwrap();
    masked
        .backward(
            &model,
            losses(&model, &[3, 4, 5, 8], Some(&[1.0, 1.0, 1.0, 0.0])),
        )
        .unwrap();
    close(&sum_of(&masked, &model), &sum_of(&big, &model), 1e-5);
}

#[test]
fn resume_gives_the_same_parameters_and_epsilon() {
    let dir = tempfile::tempdir().unwrap();
    let batches: [&[usize]; 4] = [&[0, 1, 2], &[3, 4], &[5, 6, 7], &[8]];
    let mut o = opt(1.1, 5);
    let mut m = net();
    for rows in batches {
        o.backward(&m, losses(&m, rows, None)).unwrap();
        m = o.step(0.1, m).unwrap();
    }
    let straight = flat_params(&m);
    let eps_straight = o.epsilon().unwrap().epsilon;

    let mut o = opt(1.1, 5);
    let mut m = net();
    for rows in &batches[..2] {
        o.backward(&m, losses(&m, rows, None)).unwrap();
        m = o.step(0.1, m).unwrap();
    }
    o.save_checkpoint(dir.path(), &m, None).unwrap();
    let at_save = flat_params(&m);
    let (o2, m2) = opt(1.1, 999)
        .load_checkpoint(dir.path(), net(), None)
        .unwrap();
    close(&flat_params(&m2), &at_save, 0.0);
    assert_eq!(
        crate::engine::trainable::<Inner, _>(&m2).len(),
        4,
        "loaded parameters stay trainable"
    );
    drop(o2);
    // A fresh process: new model, new optimizer (different seed: the checkpoint's stream wins).
    let (mut o, mut m) = opt(1.1, 999)
        .load_checkpoint(dir.path(), net(), None)
        .unwrap();
    for rows in &batches[2..] {
        o.backward(&m, losses(&m, rows, None)).unwrap();
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
    o.backward(&model, losses(&model, &[0, 1], None)).unwrap();
    let before = model.fc1.weight.val().into_data();
    let model = o.step(0.5, model).unwrap();
    assert_eq!(
        model.fc1.weight.val().into_data(),
        before,
        "frozen weights do not move"
    );
    let (_, head) = freeze(net(), &FreezePolicy::LastLayers(vec!["fc2".into()])).unwrap();
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
    o.backward(&frozen, losses(&frozen, &[0, 1], None)).unwrap();
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
        4.0,
        NoiseSource::Os,
    )
    .unwrap();
    let mut m = model;
    for _ in 0..2 {
        o.backward(&m, losses(&m, &[0], None)).unwrap();
        m = o.step(0.1, m).unwrap();
    }
    assert!(o.epsilon().unwrap().epsilon <= 1.0 && sigma > 0.0);
    o.backward(&m, losses(&m, &[0], None)).unwrap();
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
        for p in b.physical() {
            assert_eq!(p.indices.len(), 4);
            assert_eq!(
                p.mask.iter().filter(|m| **m == 1.0).count(),
                p.indices.len() - p.mask.iter().filter(|m| **m == 0.0).count()
            );
        }
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
