//! DP training / fine-tuning of an image classifier (ResNet or ViT from `burn-dp-models`) with
//! burn-dp: full fine-tuning or DP-BiTFiT (`--freeze bias`), on a folder of images or, by default,
//! the bundled UCI digits. `run` is the whole example; `main.rs` only parses the arguments.

use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::module::AutodiffModule;
use burn::module::Module;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::pool::{AdaptiveAvgPool2d, AdaptiveAvgPool2dConfig};
use burn::nn::{GroupNorm, GroupNormConfig, Linear, LinearConfig, PaddingConfig2d};
use burn::tensor::activation::relu;
use burn::tensor::backend::Backend;
use burn::tensor::{ElementConversion, Int, Tensor, TensorData};
use burn_dp::{batch, freeze, DpAutodiff, PerSample};
use burn_dp_example_data::Digits;
use burn_dp_examples_common::{self as common, BackendKind, Error};
use burn_dp_models::{
    cross_entropy_per_sample, BlockKind, LoadOptions, Norm, PretrainedModel, ResNet, ResNetConfig,
    ViTConfig, ViTForImageClassification,
};
use clap::{Parser, ValueEnum};

/// The default learning rates (AdamW) of the fine-tuning, the best private settings of the sweep.
pub const DEFAULT_LR: common::DefaultLearningRates = common::DefaultLearningRates {
    full: 2e-3,
    bias_only: 1e-2,
    // Unused: no model of this example has LoRA adapters (`--freeze lora` is refused).
    lora: 2e-3,
};

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
    #[arg(long, value_enum, default_value_t = Arch::Cnn)]
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
    /// Epochs of private fine-tuning (expected passes over the private training set; sets the
    /// number of steps).
    #[arg(long, default_value_t = 20)]
    pub epochs: u64,
    /// Expected logical batch size (Poisson sampling rate = batch size / private examples).
    #[arg(long, default_value_t = 64)]
    pub batch_size: u64,
    /// Share of the training split that is public (used, without privacy, for pre-training
    /// only); the rest is the private training set. Which images are public is a fixed
    /// function of their index, never of their content.
    #[arg(long, default_value_t = 0.15)]
    pub public_fraction: f64,
    /// Epochs of non-private pre-training on the public part (0: train from scratch).
    #[arg(long, default_value_t = 40)]
    pub pretrain_epochs: u64,
    /// Learning rate of the non-private pre-training (AdamW, batches of 32).
    #[arg(long, default_value_t = 3e-3)]
    pub pretrain_lr: f64,
    /// The pre-trained weights (safetensors): read when the file exists, else written after
    /// pre-training on the public part. Default: a file named after the model and the
    /// pre-training settings under `target/examples/image-classification/pretrained/`.
    #[arg(long)]
    pub pretrained: Option<PathBuf>,
    /// Fine-tune WITHOUT privacy (plain AdamW on the private part: the baseline of a sweep).
    #[arg(long)]
    pub non_private: bool,
    /// The results sweep (`--sweep` and its grid).
    #[command(flatten)]
    pub results: common::SweepArgs,
    /// Data-parallel fine-tuning (`--peers`/`--devices`, or MPI's rank and world under `mpirun`).
    #[command(flatten)]
    pub distributed: common::DistributedArgs,
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
    /// A small CNN: two 3×3 convolutions (16, 32 channels) with GroupNorm, pooled to 4×4, and
    /// a linear head (10k parameters; the default, 8×8 images).
    Cnn,
    /// A two-stage ResNet (widths 16, 32; GroupNorm). Per-sample convolution gradients are
    /// slow on the CPU (seconds per step): prefer `tiny-vit` there.
    TinyResnet,
    /// torchvision ResNet-18.
    Resnet18,
    /// torchvision ResNet-34.
    Resnet34,
    /// torchvision ResNet-50.
    Resnet50,
    /// A two-layer ViT (width 64, patch 4).
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
    /// Test accuracy of the public pre-trained model before fine-tuning (`None`: none).
    pub pretrained_accuracy: Option<f64>,
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

// ImageNet statistics (what torchvision / HF checkpoints expect).
const MEAN: [f32; 3] = [0.485, 0.456, 0.406];
const STD: [f32; 3] = [0.229, 0.224, 0.225];

/// The bundled digits as RGB images of side `size` (nearest-neighbour upsampling of 8×8).
pub fn digits(size: usize) -> Result<(Images, Vec<String>), Error> {
    let digits = Digits::bundled()?;
    let n = digits.len();
    let side = Digits::SIDE;
    let labels = (0..n).map(|i| digits.label(i) as i64).collect();
    let mut pixels = Vec::with_capacity(n * 3 * size * size);
    for i in 0..n {
        let px = digits.pixels(i);
        for c in 0..3 {
            for y in 0..size {
                for x in 0..size {
                    let v = px[(y * side / size) * side + x * side / size] as f32
                        / Digits::MAX_PIXEL as f32;
                    pixels.push((v - MEAN[c]) / STD[c]);
                }
            }
        }
    }
    Ok((
        Images {
            size,
            pixels,
            labels,
        },
        (0..Digits::CLASSES).map(|d| d.to_string()).collect(),
    ))
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

/// The public / private / test split of a data set: 20 % test (as [`split`]), and of the
/// training split a fixed share `public_fraction` public (pre-training only), the rest private.
/// Membership is a fixed function of the image's index, never of its content.
pub fn splits(data: &Images, public_fraction: f64) -> (Images, Images, Images) {
    let (train, test) = split(data);
    let n = train.len();
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by_key(|i| (*i as u64 ^ 0x5DEE_CE66).wrapping_mul(0xD6E8_FEB8_6659_FD93) >> 8);
    let public = ((n as f64 * public_fraction.clamp(0.0, 1.0)).round() as usize).min(n);
    let (mut pubi, mut privi) = (order[..public].to_vec(), order[public..].to_vec());
    pubi.sort_unstable();
    privi.sort_unstable();
    (train.subset(&pubi), train.subset(&privi), test)
}

/// The default model: a small CNN with GroupNorm (DP-compatible, unlike BatchNorm).
///
/// # Shapes
/// - images `[B, 3, H, W]` -> logits `[B, classes]`
#[derive(Module, Debug)]
pub struct SmallCnn<B: Backend> {
    conv1: Conv2d<B>,
    norm1: GroupNorm<B>,
    conv2: Conv2d<B>,
    norm2: GroupNorm<B>,
    pool: AdaptiveAvgPool2d,
    fc: Linear<B>,
}

impl<B: Backend> SmallCnn<B> {
    /// A fresh model for `classes` classes.
    pub fn new(classes: usize, dev: &B::Device) -> Self {
        Self {
            conv1: Conv2dConfig::new([3, 16], [3, 3])
                .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
                .init(dev),
            norm1: GroupNormConfig::new(4, 16).init(dev),
            conv2: Conv2dConfig::new([16, 32], [3, 3])
                .with_stride([2, 2])
                .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
                .init(dev),
            norm2: GroupNormConfig::new(4, 32).init(dev),
            pool: AdaptiveAvgPool2dConfig::new([4, 4]).init(),
            fc: LinearConfig::new(32 * 16, classes).init(dev),
        }
    }
}

/// An image classifier the loop can train: the small CNN, ResNet and ViT.
pub trait Classifier<B: Backend> {
    /// Logits `[B, classes]`.
    fn logits(&self, images: Tensor<B, 4>) -> Tensor<B, 2>;
}

impl<B: Backend> Classifier<B> for SmallCnn<B> {
    fn logits(&self, images: Tensor<B, 4>) -> Tensor<B, 2> {
        let x = relu(self.norm1.forward(self.conv1.forward(images)));
        let x = relu(self.norm2.forward(self.conv2.forward(x)));
        let x = self.pool.forward(x);
        let [b, c, h, w] = x.dims();
        self.fc.forward(x.reshape([b, c * h * w]))
    }
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
/// Run the example on the backend of `--backend`: the same generic code for Flex, NdArray and CUDA.
pub fn run(args: Args) -> Result<Summary, Error> {
    match args.train.backend {
        BackendKind::Flex => run_on::<burn_dp::Flex>(&args, Default::default()),
        BackendKind::Ndarray => run_on::<burn::backend::NdArray<f32>>(&args, Default::default()),
        #[cfg(feature = "cuda")]
        BackendKind::Cuda => run_on::<burn_dp::Cuda>(&args, Default::default()),
        #[cfg(not(feature = "cuda"))]
        BackendKind::Cuda => Err(common::cuda_missing("burn-dp-image-classification")),
    }
}
// ANCHOR_END: backend

/// Seed of the weight initialisation before pre-training (public: the pre-trained weights are a
/// function of the public part and this seed only).
pub const PRETRAIN_SEED: u64 = 20_240_601;

/// Where the pre-trained weights of `args` are cached: `--pretrained`, or a file named after
/// the model and the pre-training settings.
pub fn pretrained_path(args: &Args, size: usize) -> PathBuf {
    args.pretrained.clone().unwrap_or_else(|| {
        PathBuf::from("target/examples/image-classification/pretrained").join(format!(
            "{:?}-{}px-public{:.3}-e{}-lr{}.safetensors",
            args.model, size, args.public_fraction, args.pretrain_epochs, args.pretrain_lr
        ))
    })
}

/// What the public pre-training did.
#[derive(Debug, Clone)]
pub struct Pretraining {
    /// The weights file (read or written), `None` when there was no pre-training.
    pub path: Option<PathBuf>,
    /// Whether the file was written by this run (else read).
    pub trained_now: bool,
}

/// The model to fine-tune: `--init` weights as they are; else the public pre-trained weights
/// (read from the cache, or pre-trained without privacy on the public part, saved, and read
/// back); else `build()` from scratch (`--pretrain-epochs 0` or no public part).
fn prepare<I, M>(
    args: &Args,
    size: usize,
    public: &Images,
    build: impl Fn() -> Result<M, Error>,
    dev: &I::Device,
) -> Result<(M, Pretraining), Error>
where
    I: burn_dp::NoiseBackend,
    M: AutodiffModule<DpAutodiff<I>> + Classifier<DpAutodiff<I>>,
{
    let none = Pretraining {
        path: None,
        trained_now: false,
    };
    if args.init.is_some() || args.pretrain_epochs == 0 || public.len() == 0 {
        return Ok((build()?, none));
    }
    let path = pretrained_path(args, size);
    // ANCHOR: pretrain
    // Non-private pre-training on the public part only (a plain burn loop, shared by both
    // examples); the weights are saved as safetensors and reused by later runs.
    let (model, trained_now) = common::pretrain_public(
        &path,
        common::PublicPretraining {
            epochs: args.pretrain_epochs,
            lr: args.pretrain_lr,
            seed: PRETRAIN_SEED,
        },
        public.len(),
        args.train.quiet,
        build,
        dev,
        |model: &M, idx| {
            let (x, y) = public.tensors::<DpAutodiff<I>>(idx, dev);
            cross_entropy_per_sample(model.logits(x), y)
        },
    )?;
    // ANCHOR_END: pretrain
    Ok((
        model,
        Pretraining {
            path: Some(path),
            trained_now,
        },
    ))
}

fn run_on<I: burn_dp::NoiseBackend>(args: &Args, dev: I::Device) -> Result<Summary, Error> {
    args.distributed.check(false, args.non_private)?;
    if args.train.freeze == common::FreezeKind::Lora {
        return Err(
            "--freeze lora needs a model with LoRA adapters, and no model of \
                    image-classification has them: use --freeze none, bias or head (LoRA: \
                    table-to-text with --model llama-tiny)"
                .into(),
        );
    }
    let start = Instant::now();
    let size = args.image_size.unwrap_or(match args.model {
        Arch::Cnn => 8,
        Arch::TinyResnet | Arch::TinyVit => 16,
        _ => 224,
    });
    let (data, class_names) = match &args.data {
        Some(dir) => image_folder(dir, size)?,
        None => digits(size)?,
    };
    let classes = class_names.len();
    let (public, private, mut test) = splits(&data, args.public_fraction);
    if let Some(m) = args.max_eval {
        test = test.subset(&(0..m.min(test.len())).collect::<Vec<_>>());
    }
    eprintln!(
        "data: {} ({} classes), {} public (pre-training) / {} private (DP fine-tuning) / {} test images of {size}×{size}",
        args.data
            .as_ref()
            .map_or("bundled digits".into(), |d| d.display().to_string()),
        classes,
        public.len(),
        private.len(),
        test.len()
    );
    type B<I> = DpAutodiff<I>;
    let ctx = Context {
        args,
        public: &public,
        train: &private,
        test: &test,
        class_names: &class_names,
        size,
        start,
    };
    match args.model {
        Arch::Cnn => {
            let build = || Ok(SmallCnn::<B<I>>::new(classes, &dev));
            let (model, pre) = prepare::<I, _>(args, size, &public, build, &dev)?;
            train_eval::<I, _>(&ctx, model, pre, "fc", dev)
        }
        Arch::TinyVit | Arch::VitB16 => {
            let build = || vit::<B<I>>(args, classes, size, &dev);
            let (model, pre) = prepare::<I, _>(args, size, &public, build, &dev)?;
            train_eval::<I, _>(&ctx, model, pre, "classifier", dev)
        }
        _ => {
            let build = || resnet::<B<I>>(args, classes, &dev);
            let (model, pre) = prepare::<I, _>(args, size, &public, build, &dev)?;
            train_eval::<I, _>(&ctx, model, pre, "fc", dev)
        }
    }
}

struct Context<'a> {
    args: &'a Args,
    public: &'a Images,
    train: &'a Images,
    test: &'a Images,
    class_names: &'a [String],
    size: usize,
    start: Instant,
}

fn train_eval<I, M>(
    ctx: &Context<'_>,
    model: M,
    pre: Pretraining,
    head: &str,
    dev: I::Device,
) -> Result<Summary, Error>
where
    I: burn_dp::NoiseBackend,
    M: AutodiffModule<DpAutodiff<I>> + Classifier<DpAutodiff<I>>,
    M::InnerModule: Classifier<PerSample<I>>,
{
    type B<I> = DpAutodiff<I>;
    let (args, train, test) = (ctx.args, ctx.train, ctx.test);
    let n = train.len();
    let pretrained_accuracy = pre
        .path
        .as_ref()
        .map(|_| accuracy(&model.valid(), test, args.physical_batch_size, &dev));
    if let Some(a) = pretrained_accuracy {
        eprintln!("test accuracy of the public pre-trained model: {a:.4}");
    }
    let curve_images = test.subset(&(0..test.len().min(CURVE_HELD_OUT)).collect::<Vec<_>>());
    // DP-BiTFiT (`--freeze bias`) trains only the biases; frozen parameters cost nothing.
    let (model, report) = freeze(model, &common::freeze_policy(args.train.freeze, &[head]))?;
    let tuned = common::fine_tune(
        common::FineTuning {
            train: &args.train,
            non_private: args.non_private,
            distributed: &args.distributed,
            dataset_size: n,
            batch_size: args.batch_size,
            epochs: args.epochs,
            physical_batch_size: args.physical_batch_size,
            lr: args.train.learning_rate(DEFAULT_LR),
            trainable: report,
        },
        model,
        // Per-sample losses of the examples `indices`, the images marked as the batch.
        |model: &M, indices| {
            let (x, y) = train.tensors::<B<I>>(indices, &dev);
            cross_entropy_per_sample(model.logits(batch(x)), y)
        },
        // The published curve: the noised model's loss on held-out images, never the loss of a
        // private batch.
        |model: &M| {
            held_out_loss(
                &model.valid(),
                &curve_images,
                args.physical_batch_size,
                &dev,
            )
        },
    )?;
    let common::FineTuned {
        steps,
        planned_steps: planned,
        sample_rate: q,
        noise_multiplier: sigma,
        epsilon,
        loss_curve,
        epsilon_curve: eps_curve,
        ..
    } = tuned;
    let model = tuned.model.valid();
    let accuracy = accuracy(&model, test, args.physical_batch_size, &dev);
    let seconds = ctx.start.elapsed().as_secs_f64();
    let metrics = serde_json::json!({
        "example": "image-classification",
        "model": format!("{:?}", args.model), "image_size": ctx.size, "classes": ctx.class_names,
        "freeze": format!("{:?}", args.train.freeze), "clipping": format!("{:?}", args.train.clipping),
        "max_norm": (args.train.clipping == common::ClippingKind::Abadi).then_some(args.train.max_norm),
        "lr": args.train.learning_rate(DEFAULT_LR), "private": !args.non_private,
        "trainable_parameters": report.trainable, "total_parameters": report.total,
        "public_examples": ctx.public.len(), "pretrained": pre.path.as_ref().map(|p| p.display().to_string()),
        "pretrained_accuracy": pretrained_accuracy,
        "train_examples": n, "test_examples": test.len(),
        "steps": steps, "planned_steps": planned, "sample_rate": q,
        "noise_multiplier": sigma, "epsilon": epsilon, "delta": args.train.delta, "target_epsilon": args.train.target_epsilon,
        "fixed_seed": args.train.seed, "accuracy": accuracy, "seconds": seconds,
    });
    // Rank 0 of a data-parallel run writes the results (the replicas are identical).
    let outputs = if args.distributed.is_leader() {
        common::write_outputs(&args.out, metrics.clone(), &loss_curve, &eps_curve)?
    } else {
        common::Outputs::at(&args.out)
    };
    Ok(Summary {
        epsilon,
        accuracy,
        steps,
        noise_multiplier: sigma,
        seconds,
        outputs,
        metrics,
        pretrained_accuracy,
    })
}

impl common::Example for Args {
    const SWEEP_TITLE: &'static str = "Test accuracy on the private test split (digits)";
    const METRIC: &'static str = "accuracy";

    fn shared_flags(&mut self) -> common::SharedFlags<'_> {
        common::SharedFlags {
            train: &mut self.train,
            non_private: &mut self.non_private,
            results: &mut self.results,
            distributed: &mut self.distributed,
            out: &mut self.out,
        }
    }

    fn run_once(self) -> Result<common::RunReport, Error> {
        let s = run(self)?;
        Ok(common::RunReport {
            outcome: common::SweepOutcome {
                epsilon: s.epsilon,
                metric: s.accuracy,
                pretrained_metric: s.pretrained_accuracy,
                trainable: s.metrics["trainable_parameters"].as_u64().unwrap_or(0),
                steps: s.steps,
                seconds: s.seconds,
            },
            line: s.metrics,
        })
    }
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
