//! DP training / fine-tuning of an image classifier (ResNet or ViT from `burn-dp-models`) with
//! burn-dp: full fine-tuning or DP-BiTFiT (`--freeze bias`), on a folder of images or, by default,
//! the bundled UCI digits. `run` is the whole example; `main.rs` only parses the arguments.

use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::module::AutodiffModule;
use burn::nn::LinearConfig;
use burn::optim::AdamWConfig;
use burn::tensor::backend::Backend;
use burn::tensor::{ElementConversion, Int, Tensor, TensorData};
use burn_dp::{batch, freeze, DpAutodiff, PerSample, PrivateTrainer};
use burn_dp_examples_common::{self as common, BackendKind, Curve, Error};
use burn_dp_models::{
    cross_entropy_per_sample, BlockKind, LoadOptions, Norm, PretrainedModel, ResNet, ResNetConfig,
    ViTConfig, ViTForImageClassification,
};
use clap::{Parser, ValueEnum};

/// Command-line arguments.
#[derive(Parser, Debug, Clone)]
#[command(
    name = "image-classification",
    about = "DP training of a ResNet / ViT image classifier with burn-dp"
)]
pub struct Args {
    /// Privacy, clipping, freezing, backend and run-control flags shared by the examples.
    #[command(flatten)]
    pub train: common::PrivateTrainingArgs,
    /// Folder of images with one subfolder per class (png / jpeg); default: the bundled digits.
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Architecture.
    #[arg(long, value_enum, default_value_t = Arch::TinyVit)]
    pub model: Arch,
    /// Pretrained weights to start from: `.onnx` (PyTorch export) or `.safetensors`
    /// (torchvision ResNet / HF ViT). The classifier head is replaced for the data's classes.
    #[arg(long)]
    pub init: Option<PathBuf>,
    /// Classes of the head stored in `--init` (replaced by a fresh head for the data's classes).
    #[arg(long, default_value_t = 1000)]
    pub init_classes: usize,
    /// ResNet normalisation; `auto`: GroupNorm from scratch, folded BatchNorm for ONNX exports,
    /// frozen BatchNorm statistics for safetensors.
    #[arg(long, value_enum, default_value_t = NormKind::Auto)]
    pub norm: NormKind,
    /// Image side in pixels (default: 16 for the tiny models, 224 for the standard ones).
    #[arg(long)]
    pub image_size: Option<usize>,
    /// Epochs (expected passes over the training set; sets the number of steps).
    #[arg(long, default_value_t = 20)]
    pub epochs: u64,
    /// Expected logical batch size (Poisson sampling rate = batch size / training examples).
    #[arg(long, default_value_t = 64)]
    pub batch_size: u64,
    /// Samples per forward/backward pass (memory); logical batches are cut into these.
    #[arg(long, default_value_t = 64)]
    pub physical_batch_size: usize,
    /// Output folder for metrics.json, loss.svg, epsilon.svg.
    #[arg(long, default_value = "target/examples/image-classification")]
    pub out: PathBuf,
    /// Evaluate on at most this many test images.
    #[arg(long)]
    pub max_eval: Option<usize>,
}

/// `--model`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Arch {
    /// A two-stage ResNet (widths 16, 32; GroupNorm). Per-sample convolution gradients are
    /// slow on the CPU (seconds per step): prefer `tiny-vit` there.
    TinyResnet,
    /// torchvision ResNet-18.
    Resnet18,
    /// torchvision ResNet-34.
    Resnet34,
    /// torchvision ResNet-50.
    Resnet50,
    /// A two-layer ViT (width 64, patch 4), for the CPU (the default).
    TinyVit,
    /// ViT-B/16 (`google/vit-base-patch16-224`).
    VitB16,
}

/// `--norm`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum NormKind {
    /// See `--norm`.
    Auto,
    /// GroupNorm (the DP-trainable replacement of BatchNorm).
    Group,
    /// BatchNorm with frozen statistics (its affine parameters train).
    FrozenBn,
    /// BatchNorm folded into the convolutions (what ONNX exports contain).
    Folded,
}

/// What a run measured.
#[derive(Debug, Clone)]
pub struct Summary {
    /// ε spent (RDP accountant) at `--delta`.
    pub epsilon: f64,
    /// Test accuracy.
    pub accuracy: f64,
    /// Steps taken.
    pub steps: u64,
    /// Noise multiplier σ.
    pub noise_multiplier: f64,
    /// Wall-clock seconds.
    pub seconds: f64,
    /// The metrics file and the curves.
    pub outputs: common::Outputs,
    /// Everything in `metrics.json` but the curves.
    pub metrics: serde_json::Value,
}

/// Images `[N, 3, S, S]` (normalised, flattened) and labels.
#[derive(Debug, Clone)]
pub struct Images {
    /// Side.
    pub size: usize,
    /// `N·3·S·S` values.
    pub pixels: Vec<f32>,
    /// Labels `0..classes`.
    pub labels: Vec<i64>,
}

impl Images {
    fn len(&self) -> usize {
        self.labels.len()
    }

    fn subset(&self, idx: &[usize]) -> Images {
        let p = 3 * self.size * self.size;
        Images {
            size: self.size,
            pixels: idx
                .iter()
                .flat_map(|&i| self.pixels[i * p..(i + 1) * p].iter().copied())
                .collect(),
            labels: idx.iter().map(|&i| self.labels[i]).collect(),
        }
    }

    fn tensors<B: Backend>(
        &self,
        idx: &[usize],
        dev: &B::Device,
    ) -> (Tensor<B, 4>, Tensor<B, 1, Int>) {
        let sub = self.subset(idx);
        let s = self.size;
        (
            Tensor::from_data(TensorData::new(sub.pixels, [idx.len(), 3, s, s]), dev),
            Tensor::from_data(TensorData::new(sub.labels, [idx.len()]), dev),
        )
    }
}

const DIGITS: &[u8] = include_bytes!("../../data/digits.bin");
// ImageNet statistics (what torchvision / HF checkpoints expect).
const MEAN: [f32; 3] = [0.485, 0.456, 0.406];
const STD: [f32; 3] = [0.229, 0.224, 0.225];

/// The bundled digits as RGB images of side `size` (nearest-neighbour upsampling of 8×8).
pub fn digits(size: usize) -> (Images, Vec<String>) {
    assert_eq!(&DIGITS[..8], b"DIGITS01", "bundled data");
    let n = u32::from_le_bytes(DIGITS[8..12].try_into().expect("4 bytes")) as usize;
    let px = &DIGITS[12..12 + n * 64];
    let labels = DIGITS[12 + n * 64..12 + n * 65]
        .iter()
        .map(|&l| l as i64)
        .collect();
    let mut pixels = Vec::with_capacity(n * 3 * size * size);
    for i in 0..n {
        for c in 0..3 {
            for y in 0..size {
                for x in 0..size {
                    let v = px[i * 64 + (y * 8 / size) * 8 + x * 8 / size] as f32 / 16.0;
                    pixels.push((v - MEAN[c]) / STD[c]);
                }
            }
        }
    }
    (
        Images {
            size,
            pixels,
            labels,
        },
        (0..10).map(|d| d.to_string()).collect(),
    )
}

/// A folder with one subfolder per class of png / jpeg images, resized to `size`.
pub fn image_folder(dir: &Path, size: usize) -> Result<(Images, Vec<String>), Error> {
    let mut classes: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| format!("cannot read {}: {e}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_dir())
        .collect();
    classes.sort();
    if classes.len() < 2 {
        return Err(format!("{} needs at least two class subfolders", dir.display()).into());
    }
    let mut images = Images {
        size,
        pixels: Vec::new(),
        labels: Vec::new(),
    };
    for (label, class) in classes.iter().enumerate() {
        let mut files: Vec<PathBuf> = std::fs::read_dir(class)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                let ext = p
                    .extension()
                    .and_then(|e| e.to_str())
                    .unwrap_or("")
                    .to_ascii_lowercase();
                matches!(ext.as_str(), "png" | "jpg" | "jpeg")
            })
            .collect();
        files.sort();
        for f in files {
            let img = image::open(&f)
                .map_err(|e| format!("{}: {e}", f.display()))?
                .to_rgb8();
            let img = image::imageops::resize(
                &img,
                size as u32,
                size as u32,
                image::imageops::FilterType::Triangle,
            );
            for c in 0..3 {
                for y in 0..size {
                    for x in 0..size {
                        let v = img.get_pixel(x as u32, y as u32)[c] as f32 / 255.0;
                        images.pixels.push((v - MEAN[c]) / STD[c]);
                    }
                }
            }
            images.labels.push(label as i64);
        }
    }
    let names = classes
        .iter()
        .map(|c| {
            c.file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    Ok((images, names))
}

/// A fixed train / test split (20 % test) by multiplicative hashing, the same on every machine.
pub fn split(data: &Images) -> (Images, Images) {
    let n = data.len();
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by_key(|i| (*i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 16);
    let test = n / 5;
    (data.subset(&order[test..]), data.subset(&order[..test]))
}

/// An image classifier the loop can train: ResNet and ViT.
pub trait Classifier<B: Backend> {
    /// Logits `[B, classes]`.
    fn logits(&self, images: Tensor<B, 4>) -> Tensor<B, 2>;
}

impl<B: Backend> Classifier<B> for ResNet<B> {
    fn logits(&self, images: Tensor<B, 4>) -> Tensor<B, 2> {
        self.forward(images)
    }
}

impl<B: Backend> Classifier<B> for ViTForImageClassification<B> {
    fn logits(&self, images: Tensor<B, 4>) -> Tensor<B, 2> {
        self.forward(images)
    }
}

fn is_onnx(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| e.eq_ignore_ascii_case("onnx"))
}

/// Build (or load) the ResNet of `args` for `classes` classes.
fn resnet<B: Backend>(args: &Args, classes: usize, dev: &B::Device) -> Result<ResNet<B>, Error> {
    let norm = match (args.norm, &args.init) {
        (NormKind::Group, _) | (NormKind::Auto, None) => Norm::GroupNorm {
            groups: if args.model == Arch::TinyResnet {
                4
            } else {
                32
            },
        },
        (NormKind::FrozenBn, _) => Norm::FrozenBatchNorm,
        (NormKind::Folded, _) => Norm::Folded,
        (NormKind::Auto, Some(p)) if is_onnx(p) => Norm::Folded,
        (NormKind::Auto, Some(_)) => Norm::FrozenBatchNorm,
    };
    let config = |c| {
        match args.model {
            Arch::Resnet18 => ResNetConfig::resnet18(c),
            Arch::Resnet34 => ResNetConfig::resnet34(c),
            Arch::Resnet50 => ResNetConfig::resnet50(c),
            _ => ResNetConfig::new(BlockKind::Basic, vec![1, 1], vec![16, 32], c),
        }
        .with_norm(norm)
    };
    let Some(init) = &args.init else {
        return Ok(config(classes).init(dev));
    };
    // ANCHOR: import_resnet
    let cfg = config(args.init_classes);
    let mut model = if is_onnx(init) {
        ResNet::<B>::from_onnx(&cfg, init, dev, LoadOptions::with_progress())?
    } else {
        ResNet::<B>::from_safetensors(&cfg, init, dev, LoadOptions::with_progress())?
    };
    // A fresh classifier head for this data set's classes.
    let features = model.fc.weight.dims()[0];
    model.fc = LinearConfig::new(features, classes).init(dev);
    // ANCHOR_END: import_resnet
    Ok(model)
}

/// Build (or load) the ViT of `args` for `classes` classes and images of side `size`.
fn vit<B: Backend>(
    args: &Args,
    classes: usize,
    size: usize,
    dev: &B::Device,
) -> Result<ViTForImageClassification<B>, Error> {
    let config = |c| match args.model {
        Arch::VitB16 => ViTConfig::base_patch16(c),
        _ => ViTConfig::custom(64, 2, 4, 128, size, 4, c),
    };
    let Some(init) = &args.init else {
        return Ok(config(classes).init(dev));
    };
    // ANCHOR: import_vit
    let cfg = config(args.init_classes);
    let mut model = if is_onnx(init) {
        ViTForImageClassification::<B>::from_onnx(&cfg, init, dev, LoadOptions::with_progress())?
    } else {
        ViTForImageClassification::<B>::from_safetensors(
            &cfg,
            init,
            dev,
            LoadOptions::with_progress(),
        )?
    };
    model.classifier = LinearConfig::new(cfg.hidden_size, classes).init(dev);
    // ANCHOR_END: import_vit
    Ok(model)
}

// ANCHOR: backend
/// Run the example on the backend of `--backend`: the same generic code for NdArray and CUDA.
pub fn run(args: Args) -> Result<Summary, Error> {
    match args.train.backend {
        BackendKind::Ndarray => run_on::<burn::backend::NdArray<f32>>(&args, Default::default()),
        #[cfg(feature = "cuda")]
        BackendKind::Cuda => run_on::<burn_dp::Cuda>(&args, Default::default()),
        #[cfg(not(feature = "cuda"))]
        BackendKind::Cuda => Err(common::cuda_missing("burn-dp-image-classification")),
    }
}
// ANCHOR_END: backend

fn run_on<I: burn_dp::NoiseBackend>(args: &Args, dev: I::Device) -> Result<Summary, Error> {
    let start = Instant::now();
    let tiny = matches!(args.model, Arch::TinyResnet | Arch::TinyVit);
    let size = args.image_size.unwrap_or(if tiny { 16 } else { 224 });
    let (data, class_names) = match &args.data {
        Some(dir) => image_folder(dir, size)?,
        None => digits(size),
    };
    let classes = class_names.len();
    let (train, mut test) = split(&data);
    if let Some(m) = args.max_eval {
        test = test.subset(&(0..m.min(test.len())).collect::<Vec<_>>());
    }
    eprintln!(
        "data: {} ({} classes), {} train / {} test images of {size}×{size}",
        args.data
            .as_ref()
            .map_or("bundled digits".into(), |d| d.display().to_string()),
        classes,
        train.len(),
        test.len()
    );
    type B<I> = DpAutodiff<I>;
    match args.model {
        Arch::TinyVit | Arch::VitB16 => {
            let model = vit::<B<I>>(args, classes, size, &dev)?;
            train_eval::<I, _>(
                args,
                model,
                &train,
                &test,
                ("classifier", &class_names),
                dev,
                start,
            )
        }
        _ => {
            let model = resnet::<B<I>>(args, classes, &dev)?;
            train_eval::<I, _>(args, model, &train, &test, ("fc", &class_names), dev, start)
        }
    }
}

fn train_eval<I, M>(
    args: &Args,
    model: M,
    train: &Images,
    test: &Images,
    (head, class_names): (&str, &[String]),
    dev: I::Device,
    start: Instant,
) -> Result<Summary, Error>
where
    I: burn_dp::NoiseBackend,
    M: AutodiffModule<DpAutodiff<I>> + Classifier<DpAutodiff<I>>,
    M::InnerModule: Classifier<PerSample<I>>,
{
    type B<I> = DpAutodiff<I>;
    let noise = common::noise_source(args.train.seed);
    let n = train.len();
    // ANCHOR: setup
    // DP-BiTFiT (`--freeze bias`) trains only the biases; frozen parameters cost nothing.
    let (model, report) = freeze(model, &common::freeze_policy(args.train.freeze, &[head]))?;
    let (schedule, privacy) = args.train.privacy(n, args.batch_size, args.epochs)?;
    let sigma = privacy.noise_multiplier;
    let clipping = common::clipping(args.train.clipping, args.train.max_norm);
    // The trainer owns the model, the DP optimizer and the Poisson sampler (at the privacy
    // state's q); physical batches only bound memory.
    let mut trainer = PrivateTrainer::new(
        model,
        AdamWConfig::new().init::<B<I>, M>(),
        clipping,
        privacy,
        n,
        args.physical_batch_size,
        noise,
    )?;
    // ANCHOR_END: setup
    eprintln!(
        "training {} of {} parameters ({} tensors); σ = {sigma:.4} for ε = {} at δ = {} over {} steps (q = {:.4})",
        report.trainable, report.total, report.trainable_tensors, args.train.target_epsilon, args.train.delta, schedule.steps, schedule.sample_rate
    );
    let steps = args
        .train
        .max_steps
        .map_or(schedule.steps, |m| m.min(schedule.steps));
    let curve_images = test.subset(&(0..test.len().min(CURVE_HELD_OUT)).collect::<Vec<_>>());
    let bar = common::progress(steps, "DP training", args.train.quiet);
    let (mut loss_curve, mut eps_curve) = (Curve::default(), Curve::default());
    let every = (steps / 50).max(1);
    for step in 1..=steps {
        // ANCHOR: step
        // Per-sample losses of the drawn examples; padding rows are masked by the trainer.
        trainer.step(args.train.lr, |model, indices| {
            let (x, y) = train.tensors::<B<I>>(indices, &dev);
            cross_entropy_per_sample(model.logits(batch(x)), y)
        })?;
        // ANCHOR_END: step
        if step % every == 0 || step == steps {
            eps_curve.push(step, trainer.epsilon()?.epsilon);
            // The published curve: the noised model's loss on held-out images, never the loss
            // of a private batch.
            let loss = held_out_loss(
                &trainer.model().valid(),
                &curve_images,
                args.physical_batch_size,
                &dev,
            );
            loss_curve.push(step, loss);
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    let epsilon = trainer.epsilon()?.epsilon;
    let accuracy = accuracy(
        &trainer.model().valid(),
        test,
        args.physical_batch_size,
        &dev,
    );
    let seconds = start.elapsed().as_secs_f64();
    let metrics = serde_json::json!({
        "example": "image-classification",
        "model": format!("{:?}", args.model), "classes": class_names,
        "freeze": format!("{:?}", args.train.freeze), "clipping": format!("{:?}", args.train.clipping),
        "trainable_parameters": report.trainable, "total_parameters": report.total,
        "train_examples": n, "test_examples": test.len(),
        "steps": steps, "planned_steps": schedule.steps, "sample_rate": schedule.sample_rate,
        "noise_multiplier": sigma, "epsilon": epsilon, "delta": args.train.delta, "target_epsilon": args.train.target_epsilon,
        "fixed_seed": args.train.seed, "accuracy": accuracy, "seconds": seconds,
    });
    let outputs = common::write_outputs(&args.out, metrics.clone(), &loss_curve, &eps_curve)?;
    Ok(Summary {
        epsilon,
        accuracy,
        steps,
        noise_multiplier: sigma,
        seconds,
        outputs,
        metrics,
    })
}

/// Held-out images whose loss is published as the training curve.
pub const CURVE_HELD_OUT: usize = 64;

/// Mean cross-entropy of `model` on `images` (held-out: public evaluation data), in chunks.
fn held_out_loss<I: Backend, M: Classifier<PerSample<I>>>(
    model: &M,
    images: &Images,
    chunk: usize,
    dev: &I::Device,
) -> f64 {
    let n = images.len();
    if n == 0 {
        return f64::NAN;
    }
    let mut total = 0.0;
    for start in (0..n).step_by(chunk.max(1)) {
        let idx: Vec<usize> = (start..(start + chunk.max(1)).min(n)).collect();
        let (x, y) = images.tensors::<PerSample<I>>(&idx, dev);
        total += cross_entropy_per_sample(model.logits(x), y)
            .sum()
            .into_scalar()
            .elem::<f64>();
    }
    total / n as f64
}

fn accuracy<I: Backend, M: Classifier<PerSample<I>>>(
    model: &M,
    test: &Images,
    chunk: usize,
    dev: &I::Device,
) -> f64 {
    if test.len() == 0 {
        return f64::NAN;
    }
    let mut correct = 0i64;
    let idx: Vec<usize> = (0..test.len()).collect();
    for part in idx.chunks(chunk.max(1)) {
        let (x, y) = test.tensors::<PerSample<I>>(part, dev);
        let pred = model.logits(x).argmax(1).reshape([part.len()]);
        correct += pred.equal(y).int().sum().into_scalar().elem::<i64>();
    }
    correct as f64 / test.len() as f64
}
