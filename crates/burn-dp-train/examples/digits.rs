//! DP-SGD on the bundled UCI digits (1,797 8×8 images; 1,437 train / 360 test) with burn-train's
//! `Learner`: the usual `SupervisedTraining` loop, validation accuracy and loss, checkpoints, and
//! ε and σ on the dashboard, at ε = 3, δ = 1e-5.
//!
//! ```sh
//! cargo run --release -p burn-dp-train --example digits                   # CLI renderer
//! cargo run --release -p burn-dp-train --example digits --features tui    # terminal dashboard
//! ```

use std::path::PathBuf;

use burn::data::dataloader::batcher::Batcher;
use burn::data::dataloader::DataLoaderBuilder;
use burn::data::dataset::InMemDataset;
use burn::module::Module;
use burn::nn::loss::CrossEntropyLossConfig;
use burn::nn::{Linear, LinearConfig};
use burn::optim::adaptor::OptimizerAdaptor;
use burn::optim::{Sgd, SgdConfig};
use burn::record::{FullPrecisionSettings, NamedMpkFileRecorder};
use burn::tensor::activation::{log_softmax, relu};
use burn::tensor::backend::Backend;
use burn::tensor::{ElementConversion, Int, Tensor, TensorData};
use burn_dp::{
    AccountantKind, ClippingFn, DpAutodiff, NoiseSource, PerSample, PerSampleConfig, PrivacyState,
    PrivateSetup, Schedule,
};
use burn_dp_example_data::{Digits, DigitsError};
use burn_dp_train::{PrivateBatch, PrivateStepOutput, PrivateTraining, SessionStatus};
use burn_train::metric::{AccuracyMetric, LossMetric};
use burn_train::{
    ClassificationOutput, InferenceStep, Learner, SupervisedTraining, TrainOutput, TrainStep,
};
use clap::Parser;

type Inner = burn_dp::Flex;
type Dp = DpAutodiff<Inner>;

/// DP training of an MLP on the bundled digits with burn-train's Learner.
#[derive(Parser, Debug)]
struct Args {
    /// Target ε (σ is calibrated so the whole run spends at most this).
    #[arg(long, default_value_t = 3.0)]
    target_epsilon: f64,
    /// δ of the (ε, δ) guarantee.
    #[arg(long, default_value_t = 1e-5)]
    delta: f64,
    /// Epochs (passes of expected size over the training set).
    #[arg(long, default_value_t = 40)]
    epochs: usize,
    /// Expected logical batch size q·N.
    #[arg(long, default_value_t = 128)]
    batch_size: usize,
    /// Rows per forward pass (memory only; the privacy comes from q and σ).
    #[arg(long, default_value_t = 128)]
    physical_batch_size: usize,
    /// Learning rate.
    #[arg(long, default_value_t = 2.0)]
    lr: f64,
    /// Fixed noise seed: reproducible experiments only, no privacy against the seed holder.
    #[arg(long)]
    seed: Option<u64>,
    /// Where the Learner writes its logs and checkpoints.
    #[arg(long, default_value = "target/digits-learner")]
    artifacts: PathBuf,
}

/// One digit: 64 pixels in [0, 1] and its label.
#[derive(Debug, Clone)]
struct Digit {
    pixels: Vec<f32>,
    label: i64,
}

/// The train and test splits (a fixed permutation, the quickstart's split).
fn digits() -> Result<(Vec<Digit>, Vec<Digit>), DigitsError> {
    let digits = Digits::bundled()?;
    let (train, test) = digits.train_test_split();
    let digit = |i: usize| Digit {
        pixels: digits.scaled(i).collect(),
        label: digits.label(i) as i64,
    };
    Ok((
        train.into_iter().map(digit).collect(),
        test.into_iter().map(digit).collect(),
    ))
}

/// A batch of digits.
#[derive(Debug, Clone)]
struct DigitsBatch<B: Backend> {
    /// `[B, 64]`.
    images: Tensor<B, 2>,
    /// `[B]`.
    targets: Tensor<B, 1, Int>,
}

#[derive(Clone)]
struct DigitsBatcher;

impl<B: Backend> Batcher<B, Digit, DigitsBatch<B>> for DigitsBatcher {
    fn batch(&self, items: Vec<Digit>, device: &B::Device) -> DigitsBatch<B> {
        let b = items.len();
        let x: Vec<f32> = items.iter().flat_map(|d| d.pixels.clone()).collect();
        let y: Vec<i64> = items.iter().map(|d| d.label).collect();
        DigitsBatch {
            images: Tensor::from_data(TensorData::new(x, [b, 64]), device),
            targets: Tensor::from_data(TensorData::new(y, [b]), device),
        }
    }
}

#[derive(Module, Debug)]
struct Mlp<B: Backend> {
    hidden: Linear<B>,
    out: Linear<B>,
}

impl<B: Backend> Mlp<B> {
    fn new(device: &B::Device) -> Self {
        Mlp {
            hidden: LinearConfig::new(64, 64).init(device),
            out: LinearConfig::new(64, 10).init(device),
        }
    }

    /// Logits `[B, 10]` of images `[B, 64]`.
    fn forward(&self, images: Tensor<B, 2>) -> Tensor<B, 2> {
        self.out.forward(relu(self.hidden.forward(images)))
    }

    /// Cross-entropy per sample `[B]`.
    fn losses(&self, images: Tensor<B, 2>, targets: Tensor<B, 1, Int>) -> Tensor<B, 1> {
        let b = targets.dims()[0];
        log_softmax(self.forward(images), 1)
            .gather(1, targets.reshape([b, 1]))
            .reshape([b])
            .neg()
    }
}

// ANCHOR: train_step
/// The private train step: per-sample losses of each physical batch; `train` masks the padding
/// rows, clips, accumulates, and leaves the noise and the step to the Learner's optimizer.
impl TrainStep for Mlp<Dp> {
    type Input = PrivateBatch<Inner, DigitsBatch<Dp>>;
    type Output = PrivateStepOutput;

    fn step(&self, batch: Self::Input) -> TrainOutput<PrivateStepOutput> {
        batch.train(self, |model, digits| {
            // Float inputs are marked as the batch; labels need no mark.
            model.losses(burn_dp::batch(digits.images), digits.targets)
        })
    }
}

/// Validation on the held-out split, with the usual burn-train metrics.
impl InferenceStep for Mlp<PerSample<Inner>> {
    type Input = DigitsBatch<PerSample<Inner>>;
    type Output = ClassificationOutput<PerSample<Inner>>;

    fn step(&self, batch: Self::Input) -> Self::Output {
        let output = self.forward(batch.images);
        let loss = CrossEntropyLossConfig::new()
            .init(&output.device())
            .forward(output.clone(), batch.targets.clone());
        ClassificationOutput::new(loss, output, batch.targets)
    }
}
// ANCHOR_END: train_step

type InnerSgd = OptimizerAdaptor<Sgd<PerSample<Inner>>, Mlp<Dp>, Dp>;

fn run(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    let (train, test) = digits()?;
    let device = Default::default();
    let n = train.len();
    // ANCHOR: session
    // The privacy settings: q = expected batch / N, σ calibrated for the whole schedule.
    let sample_rate = args.batch_size as f64 / n as f64;
    let steps_per_epoch = (1.0 / sample_rate).ceil() as usize;
    let schedule = Schedule::new(sample_rate, (args.epochs * steps_per_epoch) as u64)?;
    let privacy = PrivacyState::for_target_epsilon(
        args.target_epsilon,
        args.delta,
        schedule,
        AccountantKind::Rdp,
    )?;
    let noise = match args.seed {
        Some(seed) => NoiseSource::FixedSeedForExperiments(seed),
        None => NoiseSource::Os,
    };
    // One session: the DP optimizer (around SGD), the Poisson sampler, the accountant.
    let session: PrivateTraining<InnerSgd, Inner> = PrivateTraining::new(
        SgdConfig::new().init(),
        PrivateSetup {
            per_sample: PerSampleConfig::new(ClippingFn::Automatic { gamma: 0.01 }),
            privacy,
            dataset_size: n,
            physical_batch_size: args.physical_batch_size,
            noise,
        },
    )?;
    // The training loader draws Poisson logical batches; validation is an ordinary loader.
    let train_loader = session.data_loader(
        InMemDataset::new(train),
        DigitsBatcher,
        steps_per_epoch,
        &device,
    )?;
    let valid_loader = DataLoaderBuilder::new(DigitsBatcher)
        .batch_size(256)
        .build(InMemDataset::new(test));
    let training = SupervisedTraining::new(&args.artifacts, train_loader, valid_loader)
        .num_epochs(args.epochs)
        .metric_valid_numeric(AccuracyMetric::new())
        .metric_valid_numeric(LossMetric::new())
        .with_file_checkpointer(NamedMpkFileRecorder::<FullPrecisionSettings>::new())
        .summary();
    // ε and σ metrics, and the interrupter that stops training at the budget.
    let training = session.register(training);
    let learner = Learner::new(Mlp::<Dp>::new(&device), session.optimizer(), args.lr);
    let result = training.launch(learner);
    // ANCHOR_END: session
    // ANCHOR: status
    // Why training ended: all epochs, the budget, or a refused step (an error).
    match session.status()? {
        SessionStatus::Running => {}
        SessionStatus::BudgetExhausted { next_epsilon, .. } => {
            eprintln!("stopped at the privacy budget (one more step: ε = {next_epsilon:.3})")
        }
    }
    let epsilon = session.epsilon()?.epsilon;
    // ANCHOR_END: status
    let (x, y) = {
        let batch: DigitsBatch<PerSample<Inner>> = DigitsBatcher.batch(digits()?.1, &device);
        (batch.images, batch.targets)
    };
    let total = y.dims()[0];
    let predicted = result.model.forward(x).argmax(1).reshape([total]);
    let correct = predicted.equal(y).int().sum().into_scalar().elem::<i64>();
    let result = serde_json::json!({
        "epsilon": epsilon,
        "delta": args.delta,
        "steps": session.steps()?,
        "accuracy": correct as f64 / total as f64,
    });
    println!("{result}");
    Ok(())
}

fn main() {
    if let Err(e) = run(Args::parse()) {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}
