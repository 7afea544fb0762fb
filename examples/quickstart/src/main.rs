//! Quickstart: differentially private training of a small classifier on the bundled UCI digits
//! (1,797 8×8 images; 1,437 train / 360 test), on the CPU, at ε = 3, δ = 1e-5.
//!
//! `cargo run --release` (from the repository root) runs it and prints one JSON line:
//! `{"epsilon": …, "delta": …, "accuracy": …, "non_private_accuracy": …, "seconds": …}`.
//! `cargo run --release -- --seed N` fixes the weights' initialisation, the sampling and the
//! noise: a reproducible experiment, not private against whoever knows N.

use std::time::Instant;

use burn::backend::Autodiff;
use burn::module::{AutodiffModule, Module};
use burn::nn::{Linear, LinearConfig};
use burn::optim::{GradientsParams, Optimizer, SgdConfig};
use burn::tensor::activation::{log_softmax, relu};
use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};
use burn_dp::{
    mark_batch, AccountantKind, ClippingFn, DpAutodiff, NoiseSource, PerSample, PerSampleConfig,
    PrivacyState, PrivateSetup, PrivateTrainer, Schedule,
};
use burn_dp_example_data::{Digits as BundledDigits, DigitsError};
use indicatif::{ProgressBar, ProgressStyle};

/// burn's fast CPU backend (`burn::backend::NdArray<f32>` works too, slower).
type Inner = burn_dp::Flex;

const TARGET_EPSILON: f64 = 3.0;
const DELTA: f64 = 1e-5;
const EXPECTED_BATCH: usize = 128;
const EPOCHS: u64 = 40;
const LR: f64 = 2.0;

/// The digits: pixels scaled to [0, 1], labels 0..9, split 1,437 / 360 by a fixed permutation.
struct Digits {
    train: (Vec<f32>, Vec<i64>),
    test: (Vec<f32>, Vec<i64>),
}

fn load() -> Result<Digits, DigitsError> {
    let digits = BundledDigits::bundled()?;
    let (train, test) = digits.train_test_split();
    let take = |idx: &[usize]| {
        let x = idx.iter().flat_map(|&i| digits.scaled(i)).collect();
        let y = idx.iter().map(|&i| digits.label(i) as i64).collect();
        (x, y)
    };
    Ok(Digits {
        train: take(&train),
        test: take(&test),
    })
}

#[derive(Module, Debug)]
struct Classifier<B: Backend> {
    hidden: Linear<B>,
    out: Linear<B>,
}

impl<B: Backend> Classifier<B> {
    fn new(device: &B::Device) -> Self {
        Classifier {
            hidden: LinearConfig::new(64, 64).init(device),
            out: LinearConfig::new(64, 10).init(device),
        }
    }

    fn forward(&self, x: Tensor<B, 2>) -> Tensor<B, 2> {
        self.out.forward(relu(self.hidden.forward(x)))
    }

    /// Cross-entropy per sample `[B]`.
    fn losses(&self, x: Tensor<B, 2>, y: Tensor<B, 1, Int>) -> Tensor<B, 1> {
        let b = y.dims()[0];
        log_softmax(self.forward(x), 1)
            .gather(1, y.reshape([b, 1]))
            .reshape([b])
            .neg()
    }
}

fn tensors<B: Backend>(
    data: &(Vec<f32>, Vec<i64>),
    idx: &[usize],
    dev: &B::Device,
) -> (Tensor<B, 2>, Tensor<B, 1, Int>) {
    let x: Vec<f32> = idx
        .iter()
        .flat_map(|&i| data.0[i * 64..(i + 1) * 64].iter().copied())
        .collect();
    let y: Vec<i64> = idx.iter().map(|&i| data.1[i]).collect();
    (
        Tensor::from_data(TensorData::new(x, [idx.len(), 64]), dev),
        Tensor::from_data(TensorData::new(y, [idx.len()]), dev),
    )
}

fn accuracy<B: Backend>(model: &Classifier<B>, data: &(Vec<f32>, Vec<i64>)) -> f64 {
    let idx: Vec<usize> = (0..data.1.len()).collect();
    let (x, y) = tensors::<B>(data, &idx, &Default::default());
    let pred = model.forward(x).argmax(1).reshape([idx.len()]);
    pred.equal(y).int().sum().into_scalar().elem::<i64>() as f64 / idx.len() as f64
}

use burn::tensor::ElementConversion;

// ANCHOR: dp_training
/// DP-SGD with automatic clipping, Poisson sampling and σ calibrated to the target ε.
fn train_private(
    data: &Digits,
    noise: NoiseSource,
    bar: &ProgressBar,
) -> Result<(Classifier<PerSample<Inner>>, f64), burn_dp::DpError> {
    type B = DpAutodiff<Inner>;
    let device = Default::default();
    let n = data.train.1.len();
    let schedule = Schedule::from_epochs(n, EXPECTED_BATCH, EPOCHS)?;
    let privacy =
        PrivacyState::for_target_epsilon(TARGET_EPSILON, DELTA, schedule, AccountantKind::Rdp)?;
    let mut trainer = PrivateTrainer::new(
        Classifier::<B>::new(&device),
        SgdConfig::new().init(),
        PrivateSetup {
            per_sample: PerSampleConfig::new(ClippingFn::Automatic { gamma: 0.01 }),
            privacy,
            dataset_size: n,
            physical_batch_size: EXPECTED_BATCH, // rows per forward: memory, not privacy
            noise, // NoiseSource::Os; a fixed seed only for reproducible experiments
        },
    )?;
    bar.set_length(schedule.steps);
    for _ in 0..schedule.steps {
        // The per-sample losses of the drawn examples; the trainer masks padding rows, clips,
        // accumulates, adds noise, steps and accounts.
        trainer.step(LR, |model, indices| {
            let (x, y) = tensors::<B>(&data.train, indices, &device);
            model.losses(mark_batch(x), y)
        })?;
        bar.inc(1);
    }
    let epsilon = trainer.epsilon()?.epsilon;
    Ok((trainer.into_model().valid(), epsilon))
}
// ANCHOR_END: dp_training

/// The same model trained without privacy (for scale).
fn train_plain(data: &Digits) -> Classifier<Inner> {
    type B = Autodiff<Inner>;
    let device = Default::default();
    let mut model = Classifier::<B>::new(&device);
    let mut optim = SgdConfig::new().init::<B, Classifier<B>>();
    let n = data.train.1.len();
    for epoch in 0..EPOCHS as usize {
        for start in (0..n).step_by(EXPECTED_BATCH) {
            let idx: Vec<usize> = (start..(start + EXPECTED_BATCH).min(n))
                .map(|i| (i * 7 + epoch * 131) % n)
                .collect();
            let (x, y) = tensors::<B>(&data.train, &idx, &device);
            let loss = model.losses(x, y).mean();
            let grads = GradientsParams::from_grads(loss.backward(), &model);
            model = optim.step(0.5, model, grads);
        }
    }
    model.valid()
}

/// `--seed N`: the noise source and the seed of the weights' initialisation.
fn noise_from_args() -> Result<(NoiseSource, Option<u64>), String> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.as_slice() {
        [] => Ok((NoiseSource::Os, None)),
        [flag, n] if flag == "--seed" => {
            let seed = n
                .parse()
                .map_err(|_| format!("--seed takes an integer, got `{n}`"))?;
            eprintln!("fixed seed {seed}: a reproducible experiment, not private against whoever knows the seed");
            Ok((NoiseSource::FixedSeedForExperiments(seed), Some(seed)))
        }
        _ => Err(format!(
            "usage: quickstart [--seed N] (got {})",
            args.join(" ")
        )),
    }
}

fn main() {
    let start = Instant::now();
    let (noise, seed) = match noise_from_args() {
        Ok(n) => n,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(2);
        }
    };
    if let Some(seed) = seed {
        <Inner as Backend>::seed(&Default::default(), seed);
    }
    let data = match load() {
        Ok(data) => data,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
    };
    let bar = ProgressBar::new(0).with_style(
        ProgressStyle::with_template("DP-SGD {bar:40} {pos}/{len} steps {elapsed}")
            .expect("template"),
    );
    let (model, epsilon) = match train_private(&data, noise, &bar) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
    };
    bar.finish();
    let accuracy = accuracy(&model, &data.test);
    let non_private_accuracy = accuracy_plain(&train_plain(&data), &data);
    let result = serde_json::json!({
        "epsilon": epsilon, "delta": DELTA, "accuracy": accuracy,
        "non_private_accuracy": non_private_accuracy, "seconds": start.elapsed().as_secs_f64(),
    });
    let out = std::path::Path::new("target").join("quickstart.json");
    if std::fs::create_dir_all("target")
        .and_then(|_| std::fs::write(&out, result.to_string()))
        .is_ok()
    {
        eprintln!("results written to {}", out.display());
    }
    println!("{result}");
}

fn accuracy_plain(model: &Classifier<Inner>, data: &Digits) -> f64 {
    accuracy(model, &data.test)
}
