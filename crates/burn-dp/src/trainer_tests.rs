//! Tests of `PrivateTrainer` and of the DP step object it drives (`DpOptimizer`): the loop equals
//! the hand-written one, errors keep the model, the budget, resumes, out-of-order use, host
//! traffic, and issue 23's bit-for-bit regression.

use burn::backend::NdArray;
use burn::module::Module;
use burn::nn::{Linear, LinearConfig};
use burn::optim::adaptor::OptimizerAdaptor;
use burn::optim::SgdConfig;
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};

use crate::*;

type Dp = DpAutodiff<NdArray<f32>>;

#[derive(Module, Debug)]
struct Net<B: Backend> {
    fc: Linear<B>,
}

const N: usize = 40;

fn data(indices: &[usize]) -> Tensor<Dp, 2> {
    let x: Vec<f32> = indices
        .iter()
        .flat_map(|&i| (0..4).map(move |j| ((i * 4 + j) as f32 * 0.61).sin()))
        .collect();
    Tensor::from_data(TensorData::new(x, [indices.len(), 4]), &Default::default())
}

fn losses(model: &Net<Dp>, indices: &[usize]) -> Tensor<Dp, 1> {
    let b = indices.len();
    model
        .fc
        .forward(batch(data(indices)))
        .powf_scalar(2.0)
        .reshape([b])
}

fn privacy(target: Option<f64>) -> PrivacyState {
    match target {
        None => PrivacyState::with_noise_multiplier(1.0, 0.25, 1e-5, AccountantKind::Rdp),
        Some(eps) => PrivacyState::for_target_epsilon(
            eps,
            1e-5,
            Schedule {
                sample_rate: 0.25,
                steps: 3,
            },
            AccountantKind::Rdp,
        ),
    }
    .unwrap()
}

type Sgd = OptimizerAdaptor<burn::optim::Sgd<PerSample<NdArray<f32>>>, Net<Dp>, Dp>;

fn trainer(target: Option<f64>, seed: u64) -> PrivateTrainer<Net<Dp>, Sgd, NdArray<f32>> {
    let model = Net {
        fc: LinearConfig::new(4, 1).init(&Default::default()),
    };
    PrivateTrainer::new(
        model,
        SgdConfig::new().init(),
        PrivateSetup {
            per_sample: PerSampleConfig::new(ClippingFn::Automatic { gamma: 0.01 }),
            privacy: privacy(target),
            dataset_size: N,
            physical_batch_size: 3,
            noise: NoiseSource::FixedSeedForExperiments(seed),
        },
    )
    .unwrap()
}

fn weights(m: &Net<Dp>) -> Vec<f32> {
    m.fc.weight.val().into_data().to_vec::<f32>().unwrap()
}

/// The trainer is the hand-written loop (sampler at q, physical batches, mask, backward,
/// step or step_empty) with the same seed, to the last bit.
#[test]
fn trainer_equals_the_written_out_loop() {
    let mut t = trainer(None, 11);
    let start = t.model().clone();
    for _ in 0..4 {
        t.step(0.1, losses).unwrap();
    }
    let noise = NoiseSource::FixedSeedForExperiments(11);
    let sampler = PoissonSampler::new(N, 0.25, 3, noise).unwrap();
    let mut optim = DpOptimizer::new(
        SgdConfig::new().init::<Dp, Net<Dp>>(),
        PerSampleConfig::new(ClippingFn::Automatic { gamma: 0.01 }),
        privacy(None),
        sampler,
        noise,
    )
    .unwrap();
    let mut model = start;
    for _ in 0..4 {
        let logical = optim.draw().unwrap();
        if logical.is_empty() {
            model = optim.step_empty(0.1, model).unwrap();
            continue;
        }
        for p in logical.physical() {
            let _open = p.open();
            optim
                .backward(&model, losses(&model, &p.indices), &p)
                .unwrap();
        }
        model = optim.step(0.1, model).unwrap();
    }
    assert_eq!(weights(t.model()), weights(&model));
    assert_eq!(t.steps(), 4);
    assert_eq!(t.epsilon().unwrap(), optim.epsilon().unwrap());
}

/// Issue 23: the step object refuses out-of-order use with a typed error (a second draw, a
/// physical batch without a draw or past the last, a step before every physical batch), and
/// a refused step leaves the logical batch open until it is stepped on or abandoned.
#[test]
fn the_step_refuses_out_of_order_use() {
    use crate::optim::SingleProcess;
    let noise = NoiseSource::FixedSeedForExperiments(4);
    let mut optim = DpOptimizer::new(
        SgdConfig::new().init::<Dp, Net<Dp>>(),
        PerSampleConfig::new(ClippingFn::Automatic { gamma: 0.01 }),
        privacy(None),
        PoissonSampler::new(N, 0.25, 3, noise).unwrap(),
        noise,
    )
    .unwrap();
    let model = trainer(None, 4).into_model();
    let forward = |m: &Net<Dp>, idx: &[usize]| Ok::<_, DpError>(losses(m, idx));
    let batch = PhysicalBatch::unpadded(vec![0, 1, 2]);
    let err = optim
        .clip_and_accumulate(&model, &batch, forward)
        .unwrap_err();
    assert!(
        matches!(err, DpError::StepOutOfOrder { step: 0, .. }),
        "{err}"
    );
    let logical = optim.draw().unwrap();
    let physical = logical.physical();
    assert!(physical.len() >= 2, "{logical:?}");
    assert_eq!(optim.open_step(), Some(0));
    let err = optim.draw().unwrap_err();
    assert_eq!(err, DpError::LogicalBatchOpen { step: 0 });
    optim
        .clip_and_accumulate(&model, &physical[0], forward)
        .unwrap();
    let err = optim
        .finish(0.1, model.clone(), &mut SingleProcess)
        .unwrap_err();
    assert!(
        matches!(err, DpError::StepOutOfOrder { step: 0, .. }),
        "{err}"
    );
    assert!(optim.checkpoint_state().is_err(), "saved mid-batch");
    assert_eq!((optim.privacy().steps(), optim.open_step()), (0, Some(0)));
    for p in &physical[1..] {
        optim.clip_and_accumulate(&model, p, forward).unwrap();
    }
    let err = optim
        .clip_and_accumulate(&model, &physical[0], forward)
        .unwrap_err();
    assert!(
        matches!(err, DpError::StepOutOfOrder { step: 0, .. }),
        "{err}"
    );
    // The refused batch was dropped: nothing to step on, a new draw is allowed.
    assert!(!optim.is_open());
    optim.draw().unwrap();
    optim.abandon();
    let logical = optim.draw().unwrap();
    for p in &logical.physical() {
        optim.clip_and_accumulate(&model, p, forward).unwrap();
    }
    optim.finish(0.1, model, &mut SingleProcess).unwrap();
    let report = optim.last_step_report().unwrap().unwrap();
    assert_eq!(report.samples, logical.indices.len());
    assert_eq!(report.privacy.steps, 1);
    assert_eq!(report.privacy.epsilon, optim.epsilon().unwrap());
}

/// A forward that returns the wrong number of losses is a typed error; the model is unchanged
/// and nothing of the failed step is kept (the next step works).
#[test]
fn a_failed_step_keeps_the_model_and_no_partial_batch() {
    let mut t = trainer(None, 5);
    let before = weights(t.model());
    let err = t
        .step(0.1, |m, idx| {
            let l = losses(m, idx);
            Tensor::cat(vec![l.clone(), l], 0)
        })
        .unwrap_err();
    assert!(matches!(err, DpError::LossShape { .. }), "{err}");
    assert_eq!(weights(t.model()), before);
    assert_eq!(t.steps(), 0);
    t.step(0.1, losses).unwrap();
    assert_eq!(t.steps(), 1);
}

/// The budget is checked before any data is read: the step past the target is refused, the
/// closure is never called, and the model stays as it was.
#[test]
fn budget_is_refused_before_reading_data() {
    let mut t = trainer(Some(4.0), 3);
    let mut taken = 0;
    loop {
        match t.step(0.1, losses) {
            Ok(_) => taken += 1,
            Err(DpError::BudgetExceeded { .. }) => break,
            Err(e) => panic!("{e}"),
        }
        assert!(taken < 100, "the budget was never enforced");
    }
    assert!(taken >= 3);
    let before = weights(t.model());
    let mut called = false;
    let err = t.step(0.1, |m, idx| {
        called = true;
        losses(m, idx)
    });
    assert!(matches!(err, Err(DpError::BudgetExceeded { .. })));
    assert!(!called);
    assert_eq!(weights(t.model()), before);
}

/// Issue 22.7: privacy spent stays spent. A trainer that has trained refuses a checkpoint (ε
/// would go back to the checkpoint's), and is left as it was; a fresh one resumes.
#[test]
fn resuming_a_trainer_that_has_trained_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut t = trainer(None, 3);
    for _ in 0..2 {
        t.step(0.1, losses).unwrap();
    }
    t.save_checkpoint(dir.path()).unwrap();
    let at_two = t.epsilon().unwrap().epsilon;
    for _ in 0..3 {
        t.step(0.1, losses).unwrap();
    }
    let (eps, w) = (t.epsilon().unwrap().epsilon, weights(t.model()));
    let err = t.resume(dir.path()).unwrap_err();
    assert!(
        matches!(err, DpError::ResumeAfterTraining { steps: 5, .. }),
        "{err}"
    );
    assert_eq!(t.epsilon().unwrap().epsilon, eps);
    assert_eq!(weights(t.model()), w);
    t.step(0.1, losses).unwrap();
    // A trainer built anew continues from step 2.
    let mut fresh = trainer(None, 3);
    fresh.resume(dir.path()).unwrap();
    assert_eq!(fresh.epsilon().unwrap().epsilon, at_two);
}

/// Issue 22.7: an OS-seeded run's checkpoint does not continue under a fixed seed (the noise
/// would be public to the seed holder from there on).
#[test]
fn an_os_seeded_checkpoint_is_refused_by_a_fixed_seed_trainer() {
    let dir = tempfile::tempdir().unwrap();
    let model = Net {
        fc: LinearConfig::new(4, 1).init(&Default::default()),
    };
    let setup = |noise| PrivateSetup {
        per_sample: PerSampleConfig::new(ClippingFn::Automatic { gamma: 0.01 }),
        privacy: privacy(None),
        dataset_size: N,
        physical_batch_size: 3,
        noise,
    };
    let mut os: PrivateTrainer<_, Sgd, NdArray<f32>> =
        PrivateTrainer::new(model, SgdConfig::new().init(), setup(NoiseSource::Os)).unwrap();
    os.step(0.1, losses).unwrap();
    os.save_checkpoint(dir.path()).unwrap();
    let mut fixed = trainer(None, 9);
    let before = weights(fixed.model());
    let err = fixed.resume(dir.path()).unwrap_err();
    assert!(matches!(err, DpError::OsSeededCheckpoint { .. }), "{err}");
    assert_eq!(fixed.steps(), 0);
    assert_eq!(fixed.epsilon().unwrap().epsilon, 0.0);
    // Nothing changed: the model, and the sampler and noise stream continue as in a trainer
    // that was never asked to resume.
    assert_eq!(weights(fixed.model()), before);
    let mut untouched = trainer(None, 9);
    for _ in 0..3 {
        let (a, b) = (
            fixed.step(0.1, losses).unwrap(),
            untouched.step(0.1, losses).unwrap(),
        );
        assert_eq!(a, b);
    }
    assert_eq!(
        fixed.optimizer().next_noise_step(),
        untouched.optimizer().next_noise_step()
    );
}

#[derive(Module, Debug)]
struct Wide<B: Backend> {
    up: Linear<B>,
    down: Linear<B>,
}

/// Sum and sum of squares (in f64) of every parameter of `m`: a checksum of the model.
fn checksum<M: Module<Dp>>(m: &M) -> (f64, f64) {
    struct Sums(f64, f64);
    impl burn::module::ModuleVisitor<Dp> for Sums {
        fn visit_float<const D: usize>(&mut self, param: &burn::module::Param<Tensor<Dp, D>>) {
            for v in param.val().into_data().to_vec::<f32>().unwrap() {
                self.0 += f64::from(v);
                self.1 += f64::from(v) * f64::from(v);
            }
        }
    }
    let mut sums = Sums(0.0, 0.0);
    m.visit(&mut sums);
    (sums.0, sums.1)
}

/// Issue 23's regression: a fixed-seed run of 6 steps of a 4 → 8 → 1 network (physical
/// batches of 3, Abadi clipping), straight and through a checkpoint after
/// step 2, gives the model and ε recorded before the DP step was redesigned, bit for bit.
#[test]
fn fixed_seed_run_is_bit_for_bit_the_recorded_one() {
    type Sgd2 = OptimizerAdaptor<burn::optim::Sgd<PerSample<NdArray<f32>>>, Wide<Dp>, Dp>;
    let dev = Default::default();
    let forward = |m: &Wide<Dp>, idx: &[usize]| {
        let h = burn::tensor::activation::relu(m.up.forward(batch(data(idx))));
        m.down.forward(h).powf_scalar(2.0).reshape([idx.len()])
    };
    // Fixed weights (no backend RNG): w_ij = sin(salt + 0.37·k) / 2.
    let linear = |d_in: usize, d_out: usize, salt: f32| {
        let values = |n: usize, at: f32| -> Vec<f32> {
            (0..n).map(|k| (at + 0.37 * k as f32).sin() * 0.5).collect()
        };
        let mut fc: Linear<Dp> = LinearConfig::new(d_in, d_out).init(&dev);
        fc.weight = burn::module::Param::from_tensor(Tensor::from_data(
            TensorData::new(values(d_in * d_out, salt), [d_in, d_out]),
            &dev,
        ));
        fc.bias = Some(burn::module::Param::from_tensor(Tensor::from_data(
            TensorData::new(values(d_out, salt + 1.0), [d_out]),
            &dev,
        )));
        fc
    };
    let make = || -> PrivateTrainer<Wide<Dp>, Sgd2, NdArray<f32>> {
        let model = Wide {
            up: linear(4, 8, 0.3),
            down: linear(8, 1, 1.1),
        };
        PrivateTrainer::new(
            model,
            SgdConfig::new().init(),
            PrivateSetup {
                per_sample: PerSampleConfig::new(ClippingFn::Abadi { max_norm: 0.5 }),
                privacy: PrivacyState::with_noise_multiplier(0.8, 0.1, 1e-5, AccountantKind::Rdp)
                    .unwrap(),
                dataset_size: N,
                physical_batch_size: 3,
                noise: NoiseSource::FixedSeedForExperiments(2023),
            },
        )
        .unwrap()
    };
    let mut straight = make();
    let start = checksum(straight.model());
    let mut drawn = Vec::new();
    for _ in 0..6 {
        drawn.push(straight.step(0.1, forward).unwrap().samples);
    }
    let (sum, squares) = checksum(straight.model());
    let eps = straight.epsilon().unwrap().epsilon;
    assert_eq!(straight.steps(), 6);
    println!("drawn {drawn:?} sum {sum:e} squares {squares:e} eps {eps:e}");
    // Recorded from the code before issue 23's redesign (commit e471ff4).
    assert_eq!(start, (3.914271416142583e0, 6.3546217012451125e0));
    assert_eq!(drawn, [8, 6, 5, 3, 3, 2]);
    assert_eq!(
        (sum, squares, eps),
        (
            3.2832184955477715e0,
            6.094404758724843e0,
            4.776319846178567e0
        )
    );

    let dir = tempfile::tempdir().unwrap();
    let mut first = make();
    for _ in 0..2 {
        first.step(0.1, forward).unwrap();
    }
    first.save_checkpoint(dir.path()).unwrap();
    let mut resumed = make();
    resumed.resume(dir.path()).unwrap();
    for _ in 0..4 {
        resumed.step(0.1, forward).unwrap();
    }
    assert_eq!(checksum(resumed.model()), (sum, squares));
    assert_eq!(resumed.epsilon().unwrap().epsilon, eps);
}

/// Host↔device bytes of one DP step (after a first, uncounted one) of a 16 → `hidden` → 1
/// network, and its parameter count.
fn bytes_of_one_step(hidden: usize) -> (crate::backend::transfer::TransferBytes, usize) {
    let dev = Default::default();
    let model = Wide {
        up: LinearConfig::new(16, hidden).init(&dev),
        down: LinearConfig::new(hidden, 1).init(&dev),
    };
    let params = model.num_params();
    let mut t = PrivateTrainer::new(
        model,
        SgdConfig::new().init(),
        PrivateSetup {
            per_sample: PerSampleConfig::new(ClippingFn::Automatic { gamma: 0.01 }),
            privacy: PrivacyState::with_noise_multiplier(1.0, 1.0, 1e-5, AccountantKind::Rdp)
                .unwrap(),
            dataset_size: 4,
            physical_batch_size: 4,
            noise: NoiseSource::FixedSeedForExperiments(1),
        },
    )
    .unwrap();
    let forward = |m: &Wide<Dp>, idx: &[usize]| {
        let x: Vec<f32> = idx
            .iter()
            .flat_map(|&i| (0..16).map(move |j| ((i * 16 + j) as f32).cos()))
            .collect();
        let x = Tensor::<Dp, 2>::from_data(TensorData::new(x, [idx.len(), 16]), &dev);
        let h = burn::tensor::activation::relu(m.up.forward(batch(x)));
        m.down.forward(h).reshape([idx.len()])
    };
    t.step(0.1, forward).unwrap();
    crate::backend::transfer::reset();
    t.step(0.1, forward).unwrap();
    (crate::backend::transfer::read(), params)
}

/// Issue 10.3: a DP step moves the data, per-sample norms and a few scalars between host and
/// device, never anything proportional to the parameter count (noise is drawn on the device).
/// Counts are process-global: this relies on the tests running on one thread.
#[test]
fn a_dp_step_moves_no_bytes_per_parameter() {
    let (small, p_small) = bytes_of_one_step(64_000);
    let (big, p_big) = bytes_of_one_step(640_000);
    assert!(
        p_small < 2_000_000 && p_big >= 10_000_000,
        "{p_small} {p_big}"
    );
    assert_eq!(
        small, big,
        "host↔device bytes grew with the parameter count ({p_small} → {p_big} parameters)"
    );
    assert!(big.total() < 4096, "{big:?}");
}

/// The counters see the library's own host paths: noise drawn on the host and uploaded (what
/// a backend without a noise kernel does, and what every step did before device noise) is
/// counted, 4 bytes per parameter, so the test above would catch it.
#[test]
fn host_drawn_noise_is_counted() {
    let key = crate::noise::NoiseKey::from_fixed_seed(3);
    crate::backend::transfer::reset();
    let draw = crate::noise::NoiseDraw {
        key,
        step: 0,
        first_block: 0,
        n: 1000,
        std: 1.0,
    };
    let _: burn::tensor::ops::FloatTensor<NdArray<f32>> =
        crate::backend::transfer::upload_inner::<NdArray<f32>>(
            burn::tensor::TensorData::new(draw.host_values(), [draw.n]),
            &Default::default(),
        );
    assert_eq!(crate::backend::transfer::read().to_device, 4000);
}
