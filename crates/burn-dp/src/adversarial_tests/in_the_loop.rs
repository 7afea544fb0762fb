//! Round 2 (issue 22): ordinary-looking training code that voided the guarantee without an error,
//! run through the training loop ([`PrivateTrainer`]) as users write it: data beside the marked
//! batch, host round trips, rows of another batch, state written by a refused step. Each pattern
//! must be a typed error that leaves the model as it was; each look-alike must train.
//!
//! The loop draws every example (q = 1) of N = 4 into one physical batch of P = 4 rows, so the
//! closure sees the same rows each step.

use std::cell::RefCell;

use burn::module::{Module, RunningState};
use burn::nn::{BatchNorm, BatchNormConfig, Linear, LinearConfig};
use burn::optim::adaptor::OptimizerAdaptor;
use burn::optim::{GradientsParams, Optimizer, SgdConfig};
use burn::tensor::activation::log_softmax;
use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};

use super::{float_data, int_data, per_row, Dp, Inner, Net};
use crate::*;

const P: usize = 4;

type Sgd<M> = OptimizerAdaptor<burn::optim::Sgd<PerSample<Inner>>, M, Dp>;

fn trainer<M: burn::module::AutodiffModule<Dp>>(model: M) -> PrivateTrainer<M, Sgd<M>, Inner> {
    PrivateTrainer::new(
        model,
        SgdConfig::new().init(),
        PrivateSetup {
            per_sample: PerSampleConfig::new(ClippingFn::AUTOMATIC),
            privacy: PrivacyState::with_noise_multiplier(1.0, 1.0, 1e-5, AccountantKind::Rdp)
                .unwrap(),
            dataset_size: P,
            physical_batch_size: P,
            noise: NoiseSource::FixedSeedForExperiments(7),
        },
    )
    .unwrap()
}

fn net() -> Net<Dp> {
    super::net()
}

/// The rows `indices` of the data set, uploaded inside the step as a user's closure does.
fn inputs(indices: &[usize]) -> Tensor<Dp, 2> {
    let data: Vec<f32> = indices
        .iter()
        .flat_map(|&i| (0..4).map(move |j| ((i * 4 + j) as f32 * 0.37).sin()))
        .collect();
    float_data(data, [indices.len(), 4])
}

fn labels(indices: &[usize]) -> Tensor<Dp, 1, Int> {
    int_data(
        indices.iter().map(|&i| (i % 3) as i64).collect(),
        [indices.len()],
    )
}

/// A one-hot encoding of the labels, made on the host as `from_data` (`[P, 3]`).
fn one_hot(indices: &[usize]) -> Tensor<Dp, 2> {
    let data: Vec<f32> = indices
        .iter()
        .flat_map(|&i| (0..3).map(move |c| if c == i % 3 { 1.0 } else { 0.0 }))
        .collect();
    float_data(data, [indices.len(), 3])
}

fn weights(m: &Net<Dp>) -> Vec<f32> {
    m.fc.weight.val().into_data().to_vec::<f32>().unwrap()
}

#[track_caller]
fn assert_refused<M: burn::module::AutodiffModule<Dp>>(
    t: &mut PrivateTrainer<M, Sgd<M>, Inner>,
    r: Result<StepReport, DpError>,
) -> DpError {
    let err = r.expect_err("the step must be refused");
    assert_eq!(t.steps(), 0, "a refused step is not taken");
    err
}

// ---------------------------------------------------------------- 22.1 data beside the batch

#[test]
fn class_weights_from_the_batchs_one_hot_labels_are_refused() {
    let mut t = trainer(net());
    let before = weights(t.model());
    let r = t.step(0.1, |m, idx| {
        let y = one_hot(idx);
        let counts = y.clone().transpose().sum_dim(1).reshape([1, 3]); // class counts [1, 3]
        let log_p = log_softmax(m.fc.forward(mark_batch(inputs(idx))), 1);
        (log_p * y / counts).sum_dim(1).reshape([idx.len()]).neg()
    });
    let err = assert_refused(&mut t, r);
    assert!(matches!(err, DpError::LossMixesSamples { .. }), "{err}");
    assert_eq!(weights(t.model()), before);
}

#[test]
fn class_counts_of_int_labels_are_refused() {
    let mut t = trainer(net());
    let r = t.step(0.1, |m, idx| {
        let y = labels(idx);
        let count_of_one = y.equal_elem(1).int().sum().float(); // over the batch's labels
        per_row(m.fc.forward(mark_batch(inputs(idx)))) / count_of_one
    });
    let err = assert_refused(&mut t, r);
    assert!(matches!(err, DpError::LossMixesSamples { .. }), "{err}");
}

#[test]
fn a_batch_mean_of_an_unmarked_input_is_refused() {
    let mut t = trainer(net());
    let r = t.step(0.1, |m, idx| {
        let x = inputs(idx); // never marked
        per_row(m.fc.forward(x.clone() - x.mean_dim(0)))
    });
    assert!(matches!(
        assert_refused(&mut t, r),
        DpError::LossMixesSamples { .. }
    ));
}

#[test]
fn a_covariance_of_an_unmarked_input_is_refused() {
    let mut t = trainer(net());
    let r = t.step(0.1, |m, idx| {
        let x = inputs(idx);
        let cov = x.clone().transpose().matmul(x.clone()); // [4, 4], sums over the batch
        per_row(m.fc.forward(mark_batch(x).matmul(cov)))
    });
    assert!(matches!(
        assert_refused(&mut t, r),
        DpError::LossMixesSamples { .. }
    ));
}

#[test]
fn one_hot_labels_used_row_by_row_and_a_public_matrix_train() {
    // A public projection and a public row made before the step (loaded weights, constants).
    let dev = Default::default();
    let public = float_data((0..16).map(|i| (i as f32 * 0.1).cos()).collect(), [4, 4]);
    let row = float_data(vec![1.0, 0.5, -0.5, 2.0], [1, 4]);
    let mut t = trainer(net());
    for _ in 0..2 {
        t.step(0.1, |m, idx| {
            let x = mark_batch(inputs(idx)).matmul(public.clone()) * row.clone();
            let log_p = log_softmax(m.fc.forward(x), 1);
            // Per-row weights from the host and a mask of ones, both with the batch's rows.
            let w = float_data(vec![1.0; idx.len()], [idx.len(), 1]);
            (log_p * one_hot(idx) * w)
                .sum_dim(1)
                .reshape([idx.len()])
                .neg()
        })
        .unwrap();
    }
    let _ = Tensor::<Dp, 1>::zeros([1], &dev);
    assert_eq!(t.steps(), 2);
}

// ---------------------------------------------------------------- 22.2 marking after mixing

#[test]
fn marking_a_batch_normalised_with_its_own_mean_is_refused() {
    // Outside the loop too: the raw engine, the input made before any batch is open.
    let m = net();
    let x = inputs(&[0, 1, 2, 3]);
    let normalised = mark_batch(x.clone() - x.mean_dim(0));
    let err = super::train(&m, per_row(m.fc.forward(normalised))).unwrap_err();
    assert!(matches!(err, DpError::LossMixesSamples { .. }), "{err}");
    // ... and in the loop.
    let mut t = trainer(net());
    let r = t.step(0.1, |m, idx| {
        let x = inputs(idx);
        per_row(m.fc.forward(mark_batch(x.clone() - x.mean_dim(0))))
    });
    assert!(matches!(
        assert_refused(&mut t, r),
        DpError::LossMixesSamples { .. }
    ));
}

#[test]
fn marking_with_a_public_statistic_trains() {
    // Statistics of public data (another number of rows) may normalise the batch.
    let public = float_data((0..24).map(|i| (i as f32 * 0.3).sin()).collect(), [6, 4]);
    let (mean, scale) = (public.clone().mean_dim(0), public.var(0).sqrt() + 1e-3);
    let mut t = trainer(net());
    t.step(0.1, |m, idx| {
        let x = mark_batch((inputs(idx) - mean.clone()) / scale.clone());
        per_row(m.fc.forward(x))
    })
    .unwrap();
}

// ---------------------------------------------------------------- 22.3 the loop's own mask

#[test]
fn the_loops_mask_does_not_mark_an_unmarked_loss() {
    // Host data of the batch's rows made before the step, never marked: its loss is not per
    // sample to the engine, and the loop's mask must not make it look so.
    let x = inputs(&[0, 1, 2, 3]);
    let mut t = trainer(net());
    let r = t.step(0.1, |m, _idx| per_row(m.fc.forward(x.clone())));
    assert!(matches!(assert_refused(&mut t, r), DpError::UnmarkedBatch));
}

#[test]
fn clipped_sums_without_the_mask_cannot_be_accumulated() {
    let m = net();
    let noise = NoiseSource::FixedSeedForExperiments(1);
    let sampler = PoissonSampler::new(4, 1.0, 4, noise).unwrap();
    let privacy = PrivacyState::with_noise_multiplier(1.0, 1.0, 1e-5, AccountantKind::Rdp).unwrap();
    let config = PerSampleConfig::new(ClippingFn::AUTOMATIC);
    let mut optim = DpOptimizer::new(
        SgdConfig::new().init::<Dp, Net<Dp>>(),
        config.clone(),
        privacy,
        sampler,
        noise,
    )
    .unwrap();
    let clipped = clipped_backward(&config, &m, per_row(m.fc.forward(super::x(4)))).unwrap();
    assert_eq!(
        optim.accumulate(clipped).unwrap_err(),
        DpError::UnmaskedBatch
    );
}

// ---------------------------------------------------------------- 22.4 host round trips

#[test]
fn a_batch_mean_computed_on_the_host_and_fed_back_is_refused() {
    let mut t = trainer(net());
    let r = t.step(0.1, |m, idx| {
        let x = mark_batch(inputs(idx));
        let mean: f32 = x.clone().mean().into_scalar();
        per_row(m.fc.forward(x - mean))
    });
    assert!(matches!(
        assert_refused(&mut t, r),
        DpError::HostRead { .. }
    ));
}

#[test]
fn a_host_maximum_of_the_batch_is_refused() {
    let mut t = trainer(net());
    let r = t.step(0.1, |m, idx| {
        let x = mark_batch(inputs(idx));
        let max: f32 = x.clone().abs().max().into_scalar();
        per_row(m.fc.forward(x / max))
    });
    assert!(matches!(
        assert_refused(&mut t, r),
        DpError::HostRead { .. }
    ));
}

#[test]
fn reading_the_batch_to_the_host_and_uploading_it_again_is_refused() {
    let mut t = trainer(net());
    let r = t.step(0.1, |m, idx| {
        let h = m.fc.forward(mark_batch(inputs(idx)));
        let data = h.clone().mean_dim(0).into_data(); // a batch statistic, via the host
        let stat = Tensor::<Dp, 2>::from_data(data, &Default::default());
        per_row(h - stat)
    });
    assert!(matches!(
        assert_refused(&mut t, r),
        DpError::HostRead { .. }
    ));
}

#[test]
fn diagnostics_read_without_privacy_and_parameter_reads_train() {
    let mut t = trainer(net());
    let mut seen = 0.0;
    t.step(0.1, |m, idx| {
        let losses = per_row(m.fc.forward(mark_batch(inputs(idx))));
        // NOT PRIVATE, never fed back: a progress figure.
        seen = read_without_privacy(|| losses.clone().mean().into_scalar());
        // A parameter is no batch data.
        let _w: Vec<f32> = m.fc.weight.val().into_data().to_vec().unwrap();
        losses
    })
    .unwrap();
    assert!(seen.is_finite());
}

// ---------------------------------------------------------------- 22.5 batch identity

#[test]
fn an_activation_kept_from_an_earlier_step_is_refused() {
    let kept: RefCell<Option<Tensor<Dp, 2>>> = RefCell::new(None);
    let mut t = trainer(net());
    t.step(0.1, |m, idx| {
        let h = m.fc.forward(mark_batch(inputs(idx)));
        *kept.borrow_mut() = Some(h.clone().detach());
        per_row(h)
    })
    .unwrap();
    let r = t.step(0.1, |m, idx| {
        let h = m.fc.forward(mark_batch(inputs(idx)));
        per_row(h + kept.borrow().clone().unwrap())
    });
    let err = r.unwrap_err();
    assert!(
        matches!(&err, DpError::LossMixesSamples { op } if op.contains("different physical batches")),
        "{err}"
    );
    assert_eq!(t.steps(), 1);
}

#[test]
fn a_batch_of_one_prototype_broadcast_to_the_batch_is_refused() {
    let mut t = trainer(net());
    let r = t.step(0.1, |m, idx| {
        let prototype = m.fc.forward(mark_batch(inputs(&idx[..1]))); // [1, 3]
        let h = m.fc.forward(mark_batch(inputs(idx)));
        per_row(h - prototype)
    });
    assert!(matches!(
        assert_refused(&mut t, r),
        DpError::LossMixesSamples { .. }
    ));
}

#[test]
fn losses_of_another_batch_are_refused() {
    let kept: RefCell<Option<Tensor<Dp, 1>>> = RefCell::new(None);
    let mut t = trainer(net());
    t.step(0.1, |m, idx| {
        let l = per_row(m.fc.forward(mark_batch(inputs(idx))));
        *kept.borrow_mut() = Some(l.clone());
        l
    })
    .unwrap();
    let r = t.step(0.1, |_m, _idx| kept.borrow().clone().unwrap());
    assert!(r.is_err(), "losses of step 1 were accepted for step 2");
    assert_eq!(t.steps(), 1);
}

// ---------------------------------------------------------------- 22.6 state of a refused step

#[derive(Module, Debug)]
struct BnNet<B: Backend> {
    fc: Linear<B>,
    bn: BatchNorm<B>,
}

#[test]
fn a_refused_batch_norm_step_leaves_its_running_mean_as_it_was() {
    let dev = Default::default();
    let model = BnNet::<Dp> {
        fc: LinearConfig::new(4, 3).init(&dev),
        bn: BatchNormConfig::new(3).init(&dev),
    };
    let caller = model.clone(); // shares the running state with the trainer's copy
    let before = caller.bn.running_mean.value().into_data();
    let mut t = trainer(model);
    let err = t
        .step(0.1, |m, idx| {
            per_row(m.bn.forward(m.fc.forward(mark_batch(inputs(idx)))))
        })
        .unwrap_err();
    // The cause, with the fix.
    let msg = err.to_string();
    assert!(
        msg.contains("LayerNorm") && msg.contains("GroupNorm"),
        "{msg}"
    );
    assert_eq!(caller.bn.running_mean.value().into_data(), before);
    assert_eq!(t.model().bn.running_mean.value().into_data(), before);
    let saved = caller.into_record();
    assert_eq!(saved.bn.running_mean.val().into_data(), before);
}

#[derive(Module, Debug)]
struct Tracker<B: Backend> {
    fc: Linear<B>,
    seen: RunningState<Tensor<B, 1>>,
}

#[test]
fn a_buffer_written_from_host_values_during_the_step_is_refused_and_restored() {
    let dev = Default::default();
    let model = Tracker::<Dp> {
        fc: LinearConfig::new(4, 3).init(&dev),
        seen: RunningState::new(Tensor::zeros([3], &dev)),
    };
    let caller = model.clone();
    let mut t = trainer(model);
    let err = t
        .step(0.1, |m, idx| {
            let h = m.fc.forward(mark_batch(inputs(idx)));
            // A statistic taken through the host (where no tag follows it) into a buffer.
            let stat = read_without_privacy(|| h.clone().mean_dim(0).into_data());
            let values: Vec<f32> = stat.to_vec().unwrap();
            m.seen
                .update(Tensor::from_data(TensorData::new(values, [3]), &dev));
            per_row(h)
        })
        .unwrap_err();
    assert!(
        matches!(&err, DpError::StateFromBatch { param, .. } if param == "seen"),
        "{err}"
    );
    assert_eq!(
        caller.seen.value().into_data().to_vec::<f32>().unwrap(),
        vec![0.0; 3]
    );
}

// ---------------------------------------------------------------- 27.1 public, then private

#[test]
fn public_training_on_this_backend_is_named_and_can_be_declared() {
    let mut m = net();
    let mut adam = SgdConfig::new().init::<Dp, Net<Dp>>();
    for _ in 0..2 {
        // Ordinary, non-private training on (public) data on the same backend.
        let x = mark_batch(inputs(&[0, 1, 2, 3]));
        let loss = per_row(m.fc.forward(x)).mean();
        let grads = GradientsParams::from_grads(loss.backward(), &m);
        m = adam.step(0.1, m, grads);
    }
    let mut t = trainer(m.clone());
    let err = t
        .step(0.1, |m, idx| per_row(m.fc.forward(mark_batch(inputs(idx)))))
        .unwrap_err();
    match &err {
        DpError::ParameterFromBatch { param, .. } => assert!(param.starts_with("fc."), "{param}"),
        other => panic!("expected ParameterFromBatch, got {other}"),
    }
    assert!(err.to_string().contains("declare_public"), "{err}");
    // The user says the data was public; private fine-tuning then runs.
    let mut t = trainer(declare_public(m));
    t.step(0.1, |m, idx| per_row(m.fc.forward(mark_batch(inputs(idx)))))
        .unwrap();
}

// ---------------------------------------------------------------- 27.2 errors name the cause

#[test]
fn a_batch_mean_broadcast_back_names_the_mean_not_a_parameter() {
    let mut t = trainer(net());
    let err = t
        .step(0.1, |m, idx| {
            let l = per_row(m.fc.forward(mark_batch(inputs(idx))));
            l.mean().expand([idx.len()])
        })
        .unwrap_err();
    match &err {
        DpError::LossMixesSamples { op } => assert!(op.contains("mean"), "{op}"),
        other => panic!("expected LossMixesSamples, got {other}"),
    }
    assert!(err.to_string().contains("per-sample"), "{err}");
}
