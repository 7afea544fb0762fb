//! `bench train`: training throughput (examples/s) and peak memory for the anchor shapes, in four
//! modes — non-DP full, non-DP bias-only, DP full (book-keeping, automatic clipping), DP bias-only —
//! one JSON line per configuration. Each configuration runs in its own process (the binary
//! re-executes itself with `--single`) so peak-memory figures and kernel caches do not mix.
//!
//! Anchor shapes (the shapes of the PyTorch reference measurements, [`PYTORCH_H200`]): GPT-2 small
//! B=32 and B=96, medium B=16, large B=8 (sequence 128, untied head), ViT-B/16 B=32, ResNet-50 with
//! GroupNorm B=32 at 224². `--batch`, `--seq` and
//! `--image` override them (for CPU runs, which cannot afford the anchor sizes).
//!
//! Every line also carries the time to the first step (`start_to_first_step_s`: from the process's
//! `main` to the end of its first step, kernel compilation and autotuning included on CUDA;
//! `first_step_s`: that step alone), the host↔device bytes and device → host reads of a timed
//! step (`to_device_bytes_per_step`, `to_host_bytes_per_step`, `host_reads_per_step`) and, on
//! cubecl backends, the device allocator's memory after the steps (`device_bytes_in_use`,
//! `device_bytes_reserved`; [`burn_dp::DeviceMemory`]). With `--profile`, as many steps again run after
//! the timed ones, cut into the phases of [`burn_dp::profile`] with the device synchronised
//! around each (`phases_ms`, per step; `unphased_ms` is the rest of the step), so the throughput
//! figures stay free of the profile's synchronisations.

use std::cell::RefCell;
use std::fmt;
use std::rc::Rc;
use std::str::FromStr;
use std::sync::OnceLock;
use std::time::Instant;

use burn::module::AutodiffModule;
use burn::optim::{AdamWConfig, GradientsParams, Optimizer, SgdConfig};
use burn::tensor::backend::Backend;
use burn::tensor::{Distribution, Int, Tensor};
use burn_dp::backend::transfer::TransferBytes;
use burn_dp::profile::{self, Phase, Profile};
use burn_dp::{
    batch, freeze, AccountantKind, ClippingFn, DpAutodiff, FreezePolicy, NoiseBackend, NoiseSource,
    PerSampleConfig, PrivacyState, PrivateSetup, PrivateTrainer,
};
use burn_dp_distributed::{
    launch_peers, AllReduce, AnyGroup, AnyTrainer, DistributedError, DistributedTrainer, Launched,
    PeerArgs, PeerOutput,
};
use burn_dp_models::{
    adapters_policy, Gpt2Config, LlamaConfig, LoraConfig, Norm, PretrainedModel, ProjectionBias,
    ResNetConfig, ViTConfig,
};
use clap::ValueEnum;
use serde_json::{json, Value};

/// When `main` started (set first thing in `main`; the origin of `start_to_first_step_s`).
pub static PROCESS_START: OnceLock<Instant> = OnceLock::new();

/// `--backend`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BackendKind {
    /// The CPU with burn's Flex (SIMD, multi-threaded): the default CPU backend.
    Flex,
    /// The CPU with burn's NdArray (deprecated in burn 0.22, kept while burn 0.21 has it).
    Ndarray,
    /// CUDA (needs the bench built with `--features cuda`).
    Cuda,
}

/// A benchmarked model (`--models`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Model {
    /// GPT-2 small (124 M + untied head), sequence `--seq`.
    #[value(name = "gpt2-small")]
    Gpt2Small,
    /// GPT-2 medium (355 M + untied head).
    #[value(name = "gpt2-medium")]
    Gpt2Medium,
    /// GPT-2 large (774 M + untied head).
    #[value(name = "gpt2-large")]
    Gpt2Large,
    /// ViT-B/16, 1000 classes, images `--image`².
    #[value(name = "vit-b16")]
    VitB16,
    /// ResNet-50 with GroupNorm (32 groups), 1000 classes, images `--image`².
    #[value(name = "resnet50-gn")]
    Resnet50Gn,
    /// A tiny Llama-family decoder (4 layers, width 128, 4 / 2 heads, q/k/v biases, tied head,
    /// vocabulary 512; the book's Llama chapter): quick on a CPU.
    #[value(name = "llama-tiny")]
    LlamaTiny,
    /// SmolLM2-135M (Llama: GQA 9 / 3 heads, tied head), sequence `--seq`.
    #[value(name = "smollm2-135m")]
    Smollm2_135m,
    /// Qwen2.5-0.5B (Llama-family with q/k/v biases, GQA 14 / 2, tied head).
    #[value(name = "qwen2.5-0.5b")]
    Qwen2_5_0_5b,
    /// TinyLlama-1.1B (GQA 32 / 4, untied head).
    #[value(name = "tinyllama-1.1b")]
    Tinyllama1_1b,
}

impl Model {
    /// The Llama-family configuration of a Llama model (`None` for the others).
    pub fn llama(self) -> Option<LlamaConfig> {
        match self {
            Model::LlamaTiny => Some(
                LlamaConfig::custom(512, 128, 344, 4, 4, 2)
                    .with_bias(ProjectionBias::Qkv)
                    .with_tied_head(true),
            ),
            Model::Smollm2_135m => Some(LlamaConfig::smollm2_135m()),
            Model::Qwen2_5_0_5b => Some(LlamaConfig::qwen2_5_0_5b()),
            Model::Tinyllama1_1b => Some(LlamaConfig::tinyllama_1_1b()),
            _ => None,
        }
    }

    /// Whether the model reads token ids (`--seq`) rather than images (`--image`).
    fn reads_tokens(self) -> bool {
        matches!(
            self,
            Model::Gpt2Small | Model::Gpt2Medium | Model::Gpt2Large
        ) || self.llama().is_some()
    }

    /// The vocabulary of a token model (its random token ids are drawn below it).
    fn vocab(self) -> usize {
        self.llama().map_or(50257, |c| c.vocab_size)
    }
}

/// A training mode (`--modes`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Mode {
    /// Ordinary training, every parameter.
    #[value(name = "plain-full")]
    PlainFull,
    /// Ordinary training, biases only.
    #[value(name = "plain-bitfit")]
    PlainBitfit,
    /// DP training (book-keeping, automatic clipping), every parameter.
    #[value(name = "dp-full")]
    DpFull,
    /// DP-BiTFiT: DP training of the biases only.
    #[value(name = "dp-bitfit")]
    DpBitfit,
    /// Ordinary LoRA: adapters of rank `--lora-rank` (α = 2·rank) on the attention's q and v
    /// projections train, the base weights are frozen (Llama-family models only).
    #[value(name = "plain-lora")]
    PlainLora,
    /// DP-LoRA: the same adapters trained with DP (one backward pass; their per-sample norms
    /// through the linear rule).
    #[value(name = "dp-lora")]
    DpLora,
}

/// The layers that get a LoRA adapter in the `*-lora` modes (what PEFT's Llama default targets).
pub const LORA_TARGETS: [&str; 2] = ["q_proj", "v_proj"];

/// The name clap parses, also used in the JSON lines.
fn value_name<T: ValueEnum>(v: &T) -> String {
    v.to_possible_value()
        .map(|p| p.get_name().to_string())
        .unwrap_or_default()
}

impl fmt::Display for Model {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&value_name(self))
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&value_name(self))
    }
}

impl fmt::Display for BackendKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&value_name(self))
    }
}

impl Mode {
    fn is_dp(self) -> bool {
        matches!(self, Mode::DpFull | Mode::DpBitfit | Mode::DpLora)
    }

    /// Whether the mode trains LoRA adapters (the model gets them first).
    fn is_lora(self) -> bool {
        matches!(self, Mode::PlainLora | Mode::DpLora)
    }

    fn freeze_policy(self) -> FreezePolicy {
        match self {
            Mode::PlainBitfit | Mode::DpBitfit => FreezePolicy::BiasOnly,
            Mode::PlainFull | Mode::DpFull => FreezePolicy::None,
            Mode::PlainLora | Mode::DpLora => adapters_policy(false),
        }
    }
}

/// The anchor configurations, in priority order.
pub const ANCHORS: [(Model, usize); 6] = [
    (Model::Gpt2Small, 32),
    (Model::Gpt2Small, 96),
    (Model::Gpt2Medium, 16),
    (Model::Gpt2Large, 8),
    (Model::VitB16, 32),
    (Model::Resnet50Gn, 32),
];

/// The Llama-family shapes (`--models llama-tiny,smollm2-135m,...`; not in the default sweep,
/// which is the GPU anchors'), at the batch sizes of `tools/gpu-check.sh`.
pub const LLAMA_SHAPES: [(Model, usize); 4] = [
    (Model::LlamaTiny, 16),
    (Model::Smollm2_135m, 16),
    (Model::Qwen2_5_0_5b, 8),
    (Model::Tinyllama1_1b, 4),
];

/// PyTorch on the same GPU model, examples/s at the anchor shapes: `(model, batch, plain PyTorch
/// full with TF32, fastDP book-keeping full)`. Measured on one NVIDIA H200 with torch 2.11, fp32 with
/// TF32 matmuls allowed, AdamW for GPT-2 and ViT, SGD for ResNet, random weights and data, 3 warm-up
/// and 10 timed steps (fastDP: book-keeping "MixOpt", automatic clipping).
const PYTORCH_H200: [(Model, usize, f64, f64); 6] = [
    (Model::Gpt2Small, 32, 865.23, 470.46),
    (Model::Gpt2Small, 96, 1018.87, 573.52),
    (Model::Gpt2Medium, 16, 327.8, 115.7),
    (Model::Gpt2Large, 8, 102.88, 45.46),
    (Model::VitB16, 32, 970.77, 360.86),
    (Model::Resnet50Gn, 32, 1714.39, 450.31),
];

/// `--single MODEL:BATCH:MODE`: one configuration, run in this process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Single {
    /// The model.
    pub model: Model,
    /// The physical batch size.
    pub batch: usize,
    /// The mode.
    pub mode: Mode,
}

/// Why a `--single` value does not parse.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SingleParseError {
    /// Not three `:`-separated fields.
    #[error("expected MODEL:BATCH:MODE (e.g. gpt2-small:32:dp-full), got `{0}`")]
    Shape(String),
    /// An unknown model name.
    #[error(
        "unknown model `{0}` (one of: gpt2-small, gpt2-medium, gpt2-large, vit-b16, resnet50-gn, \
         llama-tiny, smollm2-135m, qwen2.5-0.5b, tinyllama-1.1b)"
    )]
    Model(String),
    /// A batch size that is not a positive integer.
    #[error("batch size `{0}` is not a positive integer")]
    Batch(String),
    /// An unknown mode name.
    #[error(
        "unknown mode `{0}` (one of: plain-full, plain-bitfit, dp-full, dp-bitfit, plain-lora, \
         dp-lora)"
    )]
    Mode(String),
}

impl FromStr for Single {
    type Err = SingleParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let [model, batch, mode] = s.split(':').collect::<Vec<_>>()[..] else {
            return Err(SingleParseError::Shape(s.to_string()));
        };
        Ok(Single {
            model: Model::from_str(model, false)
                .map_err(|_| SingleParseError::Model(model.to_string()))?,
            batch: batch
                .parse()
                .ok()
                .filter(|&b: &usize| b > 0)
                .ok_or_else(|| SingleParseError::Batch(batch.to_string()))?,
            mode: Mode::from_str(mode, false)
                .map_err(|_| SingleParseError::Mode(mode.to_string()))?,
        })
    }
}

impl fmt::Display for Single {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.model, self.batch, self.mode)
    }
}

/// One benchmark configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Model, batch and mode.
    pub single: Single,
    /// GPT-2 sequence length.
    pub seq: usize,
    /// Image side for ViT and ResNet.
    pub image: usize,
    /// Rank of the adapters of the `*-lora` modes (α = 2·rank).
    pub lora_rank: usize,
    /// Timed steps.
    pub steps: usize,
    /// Untimed steps before them.
    pub warmup: usize,
    /// Cut the timed steps into phases (`burn_dp::profile`).
    pub profile: bool,
    /// Run as one peer of a data-parallel group (`--peers N` starts them), else one process.
    pub peer: Option<PeerConfig>,
}

/// This process's place in a data-parallel benchmark group.
#[derive(Debug, Clone)]
pub struct PeerConfig {
    /// Its rank, `0..world` (MPI's, or `--rank`).
    pub rank: u32,
    /// Number of peers.
    pub world: u32,
    /// The peer flags it joins the group with.
    pub args: PeerArgs,
}

/// Seed of the model initialisation of peers: every replica must start identical (the trainer
/// compares their parameter hashes at the first step).
const PEER_INIT_SEED: u64 = 20_251_201;

/// The all-reduce time of each step of a peer (seconds), shared with its [`TimedGroup`].
type AllReduceTimes = Rc<RefCell<Vec<f64>>>;

/// A group (MPI or TCP) that records the wall time of each all-reduce (waiting for the slowest
/// peer included), one entry per step.
struct TimedGroup {
    inner: AnyGroup,
    times: AllReduceTimes,
}

impl<B: burn::tensor::backend::Backend> AllReduce<B> for TimedGroup {
    fn rank(&self) -> u32 {
        AllReduce::<B>::rank(&self.inner)
    }

    fn world(&self) -> u32 {
        AllReduce::<B>::world(&self.inner)
    }

    fn all_reduce_sum(
        &mut self,
        tensor: Tensor<B, 1>,
        step: u64,
    ) -> Result<Tensor<B, 1>, DistributedError> {
        let t = Instant::now();
        let out = self.inner.all_reduce_sum(tensor, step);
        self.times.borrow_mut().push(t.elapsed().as_secs_f64());
        out
    }
}

/// The DP trainer of a configuration, one process or one peer of a group: q = 1 over a data set
/// of one physical batch per peer, so every step trains on the whole fixed-shape batch
/// (throughput at a fixed B, as the anchors measure) on every peer, through the
/// `PrivateTrainer` loop the examples use (or `DistributedTrainer`, its data-parallel form).
/// Returns the trainer and, for a peer, its all-reduce times.
#[allow(clippy::type_complexity)]
fn dp_trainer<M, O, B>(
    cfg: &Config,
    model: M,
    optim: O,
) -> Result<(AnyTrainer<M, O, B, TimedGroup>, Option<AllReduceTimes>), String>
where
    B: NoiseBackend,
    M: AutodiffModule<DpAutodiff<B>>,
    O: burn::optim::Optimizer<M, DpAutodiff<B>>,
{
    let err = |e: burn_dp::DpError| e.to_string();
    let b = cfg.single.batch;
    let setup = |dataset_size| -> Result<PrivateSetup, String> {
        Ok(PrivateSetup {
            per_sample: PerSampleConfig::new(ClippingFn::Automatic { gamma: 0.01 }),
            privacy: PrivacyState::with_noise_multiplier(1.0, 1.0, 1e-5, AccountantKind::Rdp)
                .map_err(err)?,
            dataset_size,
            physical_batch_size: b,
            noise: NoiseSource::FixedSeedForExperiments(0),
        })
    };
    match &cfg.peer {
        None => Ok((
            AnyTrainer::Single(PrivateTrainer::new(model, optim, setup(b)?).map_err(err)?),
            None,
        )),
        Some(p) => {
            let times = Rc::new(RefCell::new(Vec::new()));
            let inner = p
                .args
                .join()
                .map_err(|e| e.to_string())?
                .ok_or("a peer of a data-parallel run found no group")?;
            let (rank, world) = (AllReduce::<B>::rank(&inner), AllReduce::<B>::world(&inner));
            if (rank, world) != (p.rank, p.world) {
                return Err(format!(
                    "the group is rank {rank} of {world}, the launcher announced {} of {}",
                    p.rank, p.world
                ));
            }
            let group = TimedGroup {
                inner,
                times: times.clone(),
            };
            // The replicas are compared at the first step only: the hash reads every
            // parameter (a device-to-host copy on a GPU), which is not what is measured.
            let trainer = DistributedTrainer::new(
                model,
                optim,
                setup(b * p.world as usize)?,
                group,
                u64::MAX,
            )
            .map_err(|e| e.to_string())?;
            Ok((AnyTrainer::Peer(trainer), Some(times)))
        }
    }
}

/// Host↔device bytes moved so far in this process through burn-dp's backend (the DP modes run
/// on it; the plain modes run on burn's own autodiff, whose transfers are not counted: `None`).
fn transfer_bytes(cfg: &Config) -> Option<TransferBytes> {
    cfg.single
        .mode
        .is_dp()
        .then(burn_dp::backend::transfer::read)
}

fn peak_rss_gib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / (1024.0 * 1024.0))
}

/// Inputs of one step.
enum Input<B: Backend> {
    Tokens(Tensor<B, 2, Int>),
    Images(Tensor<B, 4>, Tensor<B, 1, Int>),
}

fn input<B: Backend>(cfg: &Config, vocab: usize, device: &B::Device) -> Input<B> {
    let b = cfg.single.batch;
    match cfg.single.model {
        model if model.reads_tokens() => {
            let ids = Tensor::<B, 2>::random(
                [b, cfg.seq],
                Distribution::Uniform(0.0, vocab as f64 - 1.0),
                device,
            )
            .int();
            Input::Tokens(ids)
        }
        _ => {
            let x = Tensor::<B, 4>::random(
                [b, 3, cfg.image, cfg.image],
                Distribution::Normal(0.0, 1.0),
                device,
            );
            let y = Tensor::<B, 2>::random([b, 1], Distribution::Uniform(0.0, 9.0), device)
                .int()
                .reshape([b]);
            Input::Images(x, y)
        }
    }
}

/// What the step loop measured.
struct Measured {
    /// Wall time of each timed (unprofiled) step, in seconds.
    times: Vec<f64>,
    /// The first step alone (seconds), and when it ended.
    first_step: f64,
    first_step_end: Instant,
    /// Set up (model init, optimizer) done.
    setup_end: Instant,
    /// With `--profile`: phases summed over the profiled steps, and their wall times.
    profile: Option<(Profile, Vec<f64>)>,
    /// Host↔device bytes over the timed steps, if counted.
    bytes: Option<TransferBytes>,
    /// A peer's all-reduce time in each timed step (seconds).
    allreduce: Option<Vec<f64>>,
}

/// Runs the steps of one configuration (`step` runs one, the device synchronised at its end):
/// `warmup` untimed steps, `steps` timed ones and, with `--profile`, `steps` more cut into phases
/// (so the throughput does not include the profile's synchronisations).
fn measure(
    cfg: &Config,
    setup_end: Instant,
    mut step: impl FnMut() -> Result<(), String>,
) -> Result<Measured, String> {
    let mut timed = |n: usize, times: &mut Vec<f64>| -> Result<(), String> {
        for _ in 0..n {
            let t = Instant::now();
            step()?;
            times.push(t.elapsed().as_secs_f64());
        }
        Ok(())
    };
    let mut warm = Vec::new();
    timed(cfg.warmup, &mut warm)?;
    let bytes_before = transfer_bytes(cfg);
    let mut times = Vec::new();
    timed(cfg.steps, &mut times)?;
    let bytes_after = transfer_bytes(cfg);
    // The first step is the first warm-up step, or the first timed one without warm-up.
    let first_step = warm.first().or(times.first()).copied().unwrap_or(0.0);
    let first_step_end = setup_end + std::time::Duration::from_secs_f64(first_step);
    // ANCHOR: profile
    let profile = if cfg.profile {
        let mut profiled = Vec::new();
        // This thread records from here to `disable`: each step's forward pass (wrapped in
        // `profile::timed(Phase::Forward, ..)`) and the library's phases.
        profile::enable();
        let run = timed(cfg.steps, &mut profiled);
        let phases = profile::disable(); // time and calls per `Phase`
        run?;
        Some((phases, profiled))
    } else {
        None
    };
    // ANCHOR_END: profile
    let bytes = match (bytes_before, bytes_after) {
        (Some(a), Some(b)) => Some(b.since(&a)),
        _ => None,
    };
    Ok(Measured {
        times,
        first_step,
        first_step_end,
        setup_end,
        profile,
        bytes,
        allreduce: None,
    })
}

/// Runs one configuration on backend `Inner` and returns its JSON line.
pub fn run_one<Inner: burn_dp::NoiseBackend + burn_dp::DeviceMemory>(
    cfg: &Config,
    backend: BackendKind,
) -> Result<Value, String> {
    let device: Inner::Device = Default::default();
    let policy = cfg.single.mode.freeze_policy();
    let err = |e: burn_dp::DpError| e.to_string();
    let sync = |d: &Inner::Device| Inner::sync(d).map_err(|e| format!("{e:?}"));
    let vocab = cfg.single.model.vocab();
    if cfg.single.mode.is_lora() && cfg.single.model.llama().is_none() {
        return Err(format!(
            "{} trains LoRA adapters, which the bench puts on Llama-family models only \
             (llama-tiny, smollm2-135m, qwen2.5-0.5b, tinyllama-1.1b), not on {}",
            cfg.single.mode, cfg.single.model
        ));
    }
    let lora = LoraConfig::new(cfg.lora_rank, 2.0 * cfg.lora_rank as f64, &LORA_TARGETS);
    macro_rules! bench_model {
        ($init:expr, $losses:expr, $optim:expr, $lr:expr) => {{
            if cfg.single.mode.is_dp() {
                type B<I> = DpAutodiff<I>;
                if cfg.peer.is_some() {
                    <B<Inner> as Backend>::seed(&device, PEER_INIT_SEED);
                }
                let (model, report) = freeze($init(&device)?, &policy).map_err(err)?;
                let (mut trainer, allreduce) = dp_trainer(cfg, model, $optim)?;
                let inp = input::<B<Inner>>(cfg, vocab, &device);
                sync(&device)?;
                let mut measured = measure(cfg, Instant::now(), || {
                    trainer
                        .step($lr, |m, _all_rows| {
                            // The images are marked as this step's batch inside the step (a
                            // tensor marked in an earlier step is refused as mixing batches).
                            let inp = match &inp {
                                Input::Images(x, y) => Input::Images(batch(x.clone()), y.clone()),
                                Input::Tokens(t) => Input::Tokens(t.clone()),
                            };
                            profile::timed::<Inner, _>(Phase::Forward, &device, || $losses(m, &inp))
                        })
                        .map_err(|e| e.to_string())?;
                    sync(&device)
                })?;
                measured.allreduce = allreduce.map(|t| {
                    let t = t.borrow();
                    t.iter().skip(cfg.warmup).take(cfg.steps).copied().collect()
                });
                (measured, report)
            } else {
                type B<I> = burn::backend::Autodiff<I>;
                let (model, report) = freeze($init(&device)?, &policy).map_err(err)?;
                let mut optim = $optim;
                let inp = input::<B<Inner>>(cfg, vocab, &device);
                sync(&device)?;
                let mut model = Some(model);
                let measured = measure(cfg, Instant::now(), || {
                    let m = model.take().ok_or("the model was lost in a failed step")?;
                    let loss = profile::timed::<Inner, _>(Phase::Forward, &device, || {
                        $losses(&m, &inp).mean()
                    });
                    let grads = profile::timed::<Inner, _>(Phase::Backward, &device, || {
                        GradientsParams::from_grads(loss.backward(), &m)
                    });
                    model = Some(profile::timed::<Inner, _>(
                        Phase::OptimizerStep,
                        &device,
                        || optim.step($lr, m, grads),
                    ));
                    sync(&device)
                })?;
                (measured, report)
            }
        }};
    }
    let gpt2 = |model: Model| -> Gpt2Config {
        let c = match model {
            Model::Gpt2Medium => Gpt2Config::medium(),
            Model::Gpt2Large => Gpt2Config::large(),
            _ => Gpt2Config::small(),
        };
        c.with_tied_head(false)
    };
    let (m, report) = match cfg.single.model {
        model @ (Model::Gpt2Small | Model::Gpt2Medium | Model::Gpt2Large) => {
            let c = gpt2(model);
            bench_model!(
                |d| Ok::<_, String>(c.init(d)),
                |m: &burn_dp_models::Gpt2<_>, inp: &Input<_>| match inp {
                    Input::Tokens(ids) => m.loss_per_sample(ids.clone()),
                    Input::Images(..) => unreachable!("GPT-2 gets tokens"),
                },
                AdamWConfig::new().init(),
                1e-4
            )
        }
        Model::VitB16 => {
            let mut c = ViTConfig::base_patch16(1000);
            c.image_size = cfg.image;
            bench_model!(
                |d| Ok::<_, String>(c.init(d)),
                |m: &burn_dp_models::ViTForImageClassification<_>, inp: &Input<_>| match inp {
                    Input::Images(x, y) => m.loss_per_sample((x.clone(), y.clone())),
                    Input::Tokens(_) => unreachable!("ViT gets images"),
                },
                AdamWConfig::new().init(),
                1e-4
            )
        }
        model @ (Model::LlamaTiny
        | Model::Smollm2_135m
        | Model::Qwen2_5_0_5b
        | Model::Tinyllama1_1b) => {
            let c = model
                .llama()
                .ok_or("a Llama-family model has its configuration")?;
            let lora_mode = cfg.single.mode.is_lora();
            bench_model!(
                |d| {
                    let m = c.init(d);
                    if lora_mode {
                        m.with_lora(&lora, d).map_err(|e| e.to_string())
                    } else {
                        Ok(m)
                    }
                },
                |m: &burn_dp_models::Llama<_>, inp: &Input<_>| match inp {
                    Input::Tokens(ids) => m.loss_per_sample(ids.clone()),
                    Input::Images(..) => unreachable!("a Llama model gets tokens"),
                },
                AdamWConfig::new().init(),
                1e-4
            )
        }
        Model::Resnet50Gn => {
            let c = ResNetConfig::resnet50(1000).with_norm(Norm::GroupNorm { groups: 32 });
            bench_model!(
                |d| Ok::<_, String>(c.init(d)),
                |m: &burn_dp_models::ResNet<_>, inp: &Input<_>| match inp {
                    Input::Images(x, y) => m.loss_per_sample((x.clone(), y.clone())),
                    Input::Tokens(_) => unreachable!("ResNet gets images"),
                },
                SgdConfig::new().init(),
                0.1
            )
        }
    };
    // The device allocator after the steps (cubecl backends; `null` on Flex and NdArray).
    let memory = Inner::memory_usage(&device);
    let steps = m.times.len().max(1) as f64;
    let mean = m.times.iter().sum::<f64>() / steps;
    let start = *PROCESS_START.get_or_init(Instant::now);
    let mut line = json!({
        "bench": "train", "backend": backend.to_string(), "model": cfg.single.model.to_string(),
        "mode": cfg.single.mode.to_string(), "batch": cfg.single.batch, "seq": cfg.seq,
        "image": cfg.image, "steps": m.times.len(), "warmup": cfg.warmup, "step_ms": mean * 1e3,
        "samples_per_s": cfg.single.batch as f64 / mean, "peak_rss_gib": peak_rss_gib(),
        "trainable_params": report.trainable, "total_params": report.total,
        "setup_s": m.setup_end.duration_since(start).as_secs_f64(),
        "first_step_s": m.first_step,
        "start_to_first_step_s": m.first_step_end.duration_since(start).as_secs_f64(),
    });
    // Bytes are counted over the unprofiled timed steps (`null` while not counted).
    line["to_device_bytes_per_step"] = json!(m.bytes.map(|b| b.to_device as f64 / steps));
    line["to_host_bytes_per_step"] = json!(m.bytes.map(|b| b.to_host as f64 / steps));
    // Device → host reads (each a synchronisation of an asynchronous device).
    line["host_reads_per_step"] = json!(m.bytes.map(|b| b.host_reads as f64 / steps));
    line["device_bytes_in_use"] = json!(memory.map(|u| u.bytes_in_use));
    line["device_bytes_reserved"] = json!(memory.map(|u| u.bytes_reserved));
    if let Some(peer) = &cfg.peer {
        let allreduce = m.allreduce.clone().unwrap_or_default();
        let ar = allreduce.iter().sum::<f64>() / allreduce.len().max(1) as f64;
        line["peers"] = json!(peer.world);
        line["peer_rank"] = json!(peer.rank);
        line["transport"] = json!(if burn_dp_distributed::launched_by_mpi() {
            "mpi"
        } else {
            "tcp"
        });
        line["allreduce_ms"] = json!(ar * 1e3);
        line["global_samples_per_s"] =
            json!((cfg.single.batch * peer.world as usize) as f64 / mean);
    }
    if let Some((p, profiled)) = &m.profile {
        let n = profiled.len().max(1) as f64;
        let step_ms = profiled.iter().sum::<f64>() * 1e3 / n;
        let mut phases = serde_json::Map::new();
        for (phase, time, _) in p.iter() {
            phases.insert(phase.name().into(), json!(time.as_secs_f64() * 1e3 / n));
        }
        line["profiled_steps"] = json!(profiled.len());
        line["profiled_step_ms"] = json!(step_ms);
        line["phases_ms"] = Value::Object(phases);
        line["unphased_ms"] = json!(step_ms - p.total().as_secs_f64() * 1e3 / n);
        if p.sync_errors > 0 {
            line["sync_errors"] = json!(p.sync_errors);
        }
    }
    Ok(line)
}

/// Runs one configuration in this process and prints its JSON line (an `"error"` line on failure).
pub fn run_single(cfg: &Config, backend: BackendKind) -> Result<(), String> {
    let out = match backend {
        BackendKind::Flex => run_one::<burn_dp::Flex>(cfg, backend),
        BackendKind::Ndarray => run_one::<burn::backend::NdArray<f32>>(cfg, backend),
        #[cfg(feature = "cuda")]
        BackendKind::Cuda => run_one::<burn_dp::Cuda>(cfg, backend),
        #[cfg(not(feature = "cuda"))]
        BackendKind::Cuda => Err(
            "backend `cuda` is not available in this build: rebuild with `--features cuda`".into(),
        ),
    };
    match out {
        Ok(v) => {
            println!("{v}");
            Ok(())
        }
        Err(e) => {
            println!(
                "{}",
                json!({"bench": "train", "backend": backend.to_string(),
                    "model": cfg.single.model.to_string(), "mode": cfg.single.mode.to_string(),
                    "batch": cfg.single.batch, "error": e})
            );
            Err(e)
        }
    }
}

/// The configurations of a sweep: the shapes of `models` (the GPU anchors when empty; the Llama
/// shapes when named) in priority order,
/// with `batch` overriding the anchor batch sizes (then one configuration per model).
pub fn sweep(models: &[Model], modes: &[Mode], batch: Option<usize>) -> Vec<Single> {
    let mut out: Vec<Single> = Vec::new();
    let named = ANCHORS.iter().chain(LLAMA_SHAPES.iter()).copied();
    for (model, anchor_batch) in named {
        let wanted = if models.is_empty() {
            ANCHORS.iter().any(|(m, _)| *m == model)
        } else {
            models.contains(&model)
        };
        if !wanted {
            continue;
        }
        let batch = batch.unwrap_or(anchor_batch);
        // LoRA modes on models without adapters are left out (a `--single` asks and is told why).
        for &mode in modes
            .iter()
            .filter(|m| !m.is_lora() || model.llama().is_some())
        {
            let s = Single { model, batch, mode };
            if !out.contains(&s) {
                out.push(s);
            }
        }
    }
    out
}

/// Runs every configuration in its own process (this binary with `--single`) and prints each JSON
/// line as it arrives, then the ratios. With `peers > 1`, every DP configuration then runs again
/// as `peers` processes of one data-parallel group ([`peers_line`]).
pub fn run_sweep(
    configs: &[Single],
    cfg: &Config,
    backend: BackendKind,
    child_args: &[String],
    peers: u32,
) -> Result<(), String> {
    let exe = std::env::current_exe().map_err(|e| format!("cannot find this executable: {e}"))?;
    let mut results = Vec::new();
    let single_args = |single: &Single| -> Vec<String> {
        let mut args: Vec<String> = [
            "train",
            "--single",
            &single.to_string(),
            "--backend",
            &backend.to_string(),
            "--seq",
            &cfg.seq.to_string(),
            "--image",
            &cfg.image.to_string(),
            "--lora-rank",
            &cfg.lora_rank.to_string(),
            "--steps",
            &cfg.steps.to_string(),
            "--warmup",
            &cfg.warmup.to_string(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        if cfg.profile {
            args.push("--profile".into());
        }
        args.extend(child_args.iter().cloned());
        args
    };
    let error_line = |single: &Single, e: String| {
        json!({"bench": "train", "backend": backend.to_string(),
            "model": single.model.to_string(), "mode": single.mode.to_string(),
            "batch": single.batch, "error": e})
    };
    for single in configs {
        eprintln!("bench: running {single} on {backend} in its own process");
        let out = std::process::Command::new(&exe)
            .args(single_args(single))
            .output()
            .map_err(|e| format!("cannot run a configuration: {e}"))?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        let value = stdout
            .lines()
            .last()
            .and_then(|l| serde_json::from_str::<Value>(l).ok())
            .unwrap_or_else(|| {
                let stderr = String::from_utf8_lossy(&out.stderr);
                error_line(
                    single,
                    format!(
                        "exit {:?}: {}",
                        out.status.code(),
                        stderr.lines().last().unwrap_or("")
                    ),
                )
            });
        println!("{value}");
        if peers > 1 && single.mode.is_dp() {
            eprintln!("bench: running {single} on {backend} as {peers} peer processes");
            let line = match run_peers(&exe, &single_args(single), peers) {
                Ok(lines) => {
                    for l in &lines {
                        println!("{l}");
                    }
                    peers_line(&value, &lines)
                }
                Err(e) => error_line(single, format!("{peers} peers: {e}")),
            };
            println!("{line}");
        }
        results.push(value);
    }
    for line in ratios(&results) {
        println!("{line}");
    }
    Ok(())
}

/// Runs one configuration as `peers` processes of one group on this machine (`mpirun -np N`
/// with the feature `mpi`, else TCP peers; `burn_dp_distributed::launch_peers`) and returns each
/// peer's JSON line, by rank.
fn run_peers(exe: &std::path::Path, args: &[String], peers: u32) -> Result<Vec<Value>, String> {
    let exits = launch_peers(exe, peers, args, 0, PeerOutput::Capture)
        .and_then(Launched::wait)
        .map_err(|e| e.to_string())?;
    // Under mpirun the ranks' lines arrive on mpirun's output, in any order.
    let mut lines: Vec<Value> = exits
        .iter()
        .flat_map(|x| x.stdout.lines())
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["bench"] == "train")
        .collect();
    if let Some(e) = lines.iter().find(|v| v.get("error").is_some()) {
        return Ok(vec![e.clone()]);
    }
    lines.sort_by_key(|v| v["peer_rank"].as_u64());
    if lines.len() != peers as usize {
        return Err(format!("{} of {peers} peers wrote a result", lines.len()));
    }
    Ok(lines)
}

/// Assumed host↔device bandwidth of a GPU (PCIe 5.0 x16 with pageable host memory), bytes/s:
/// only for the prediction of [`peers_line`].
pub const ASSUMED_PCIE_BYTES_PER_S: f64 = 25e9;
/// Assumed NVLink bandwidth between the GPUs of one machine (H100/H200 NVLink 4), bytes/s.
pub const ASSUMED_NVLINK_BYTES_PER_S: f64 = 450e9;

/// The scaling of one configuration: the 1-process line `one` and the peers' lines (rank order),
/// measured in the same run. Throughput of K peers = K·B / (rank 0's mean step time); scaling
/// efficiency = throughput_K / (K × throughput_1). With the GPU prediction of the all-reduce's cost.
pub fn peers_line(one: &Value, peers: &[Value]) -> Value {
    let k = peers.len().max(1) as f64;
    let p0 = peers.first().cloned().unwrap_or(Value::Null);
    if let Some(e) = peers.iter().find_map(|p| p["error"].as_str()) {
        return json!({"bench": "train-peers", "model": one["model"], "mode": one["mode"],
            "batch": one["batch"], "peers": peers.len(), "error": e});
    }
    let one_tput = one["samples_per_s"].as_f64();
    let k_tput = p0["global_samples_per_s"].as_f64();
    let step_ms = p0["step_ms"].as_f64();
    let by_peer: Vec<f64> = peers
        .iter()
        .filter_map(|p| p["allreduce_ms"].as_f64())
        .collect();
    let ar_min = by_peer.iter().copied().reduce(f64::min);
    // What the all-reduce moves: the clipped sums of the trainable parameters (+ hash slots).
    let params = p0["trainable_params"].as_f64().unwrap_or(0.0);
    let bytes = 4.0 * params;
    // What each peer's all-reduce moved per second (the buffer over the time of the fastest
    // peer, which waited least for the others: closest to the transfer alone).
    let bytes_per_s = ar_min.filter(|&t| t > 0.0).map(|t| bytes / (t / 1e3));
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    json!({
        "bench": "train-peers", "backend": one["backend"], "model": one["model"],
        "mode": one["mode"], "batch_per_peer": one["batch"], "peers": peers.len(),
        "transport": p0["transport"],
        "samples_per_s_1_peer": one_tput,
        "samples_per_s_n_peers": k_tput,
        "speedup": k_tput.zip(one_tput).map(|(a, b)| a / b),
        "scaling_efficiency": k_tput.zip(one_tput).map(|(a, b)| a / (k * b)),
        "step_ms_1_peer": one["step_ms"], "step_ms_n_peers": step_ms,
        "allreduce_ms_per_step": p0["allreduce_ms"],
        "allreduce_ms_per_step_by_peer": by_peer,
        "allreduce_ms_per_step_min_over_peers": ar_min,
        "allreduce_share_of_step": ar_min.zip(step_ms).map(|(a, s)| a / s),
        "allreduce_bytes_per_peer": bytes,
        "allreduce_bytes_per_s_measured": bytes_per_s,
        "cpu_cores": cores,
        "note": format!(
            "throughput_N = N × throughput_1 needs N times the compute: the 1-peer run already \
             uses the {cores} cores of this machine and the N peers share them, so on a CPU the \
             efficiency measures core sharing more than the transport (on 2 cores, 2 peers can \
             at best reach 2× when each peer gets one core)"),
        "gpu_prediction": {
            "transport": "MpiGroup and TcpGroup copy the clipped sums of all 4·P bytes \
                          device→host before the all-reduce and host→device after it: predicted \
                          cost per step = 4 bytes × params / bandwidth for each copy",
            "device_host_copies_ms": 2.0 * bytes / ASSUMED_PCIE_BYTES_PER_S * 1e3,
            "assumed_pcie_bytes_per_s": ASSUMED_PCIE_BYTES_PER_S,
            "allreduce_ms_as_measured_here": ar_min,
            "nccl_ring_ms": 2.0 * (k - 1.0) / k * bytes / ASSUMED_NVLINK_BYTES_PER_S * 1e3,
            "assumed_nvlink_bytes_per_s": ASSUMED_NVLINK_BYTES_PER_S,
            "nccl": "an NCCL all-reduce on the device (no host copy, burn-dp-distributed's \
                     NcclGroup, feature nccl) would cost about nccl_ring_ms; the bench's peers \
                     all-reduce through the host (see the book's chapter Data-parallel training)",
        },
    })
}

/// The ratios of issue 10 points 4 and 5, per (model, batch), from `train` lines (and, for device
/// memory, lines with `peak_device_mib` such as `tools/gpu-check.sh` writes).
///
/// Targets: DP full ÷ non-DP full ≥ 0.90 (throughput); DP bias-only ÷ non-DP full ≥ 1.3; device
/// memory peak of DP full ÷ non-DP full ≤ 1.15; on CUDA at the anchor shapes, non-DP full ≥ 0.8×
/// plain PyTorch (TF32) and DP full ≥ 1.5× fastDP book-keeping.
pub fn ratios(results: &[Value]) -> Vec<Value> {
    // Lines of one backend only are paired (a run may hold Flex and NdArray lines).
    let get = |backend: &Value, model: &str, b: u64, mode: &str, key: &str| -> Option<f64> {
        results
            .iter()
            .filter(|r| r["peers"].as_u64().unwrap_or(1) == 1 && r["backend"] == *backend)
            .filter(|r| r["model"] == model && r["batch"] == b && r["mode"] == mode)
            .find_map(|r| r[key].as_f64())
    };
    let mut seen: Vec<(Value, String, u64)> = Vec::new();
    let mut out = Vec::new();
    for r in results {
        let (Some(model), Some(b)) = (r["model"].as_str(), r["batch"].as_u64()) else {
            continue;
        };
        let backend = &r["backend"];
        if r["samples_per_s"].is_null()
            || r["bench"] == "anchor"
            || r["peers"].as_u64().unwrap_or(1) != 1
            || seen
                .iter()
                .any(|(k, m, x)| k == backend && m == model && *x == b)
        {
            continue;
        }
        seen.push((backend.clone(), model.to_string(), b));
        let get = |mode: &str, key: &str| get(backend, model, b, mode, key);
        let ratio = |num: &str, den: &str, key: &str| Some(get(num, key)? / get(den, key)?);
        let tput = "samples_per_s";
        let mut line = json!({
            "bench": "train-ratios", "backend": r["backend"], "model": model, "batch": b,
            "dp_full_over_plain_full": ratio("dp-full", "plain-full", tput),
            "dp_full_over_plain_full_target": 0.90,
            "dp_bitfit_over_plain_full": ratio("dp-bitfit", "plain-full", tput),
            "dp_bitfit_over_plain_full_target": 1.3,
            "peak_device_mem_dp_full_over_plain_full":
                ratio("dp-full", "plain-full", "peak_device_mib"),
            "peak_device_mem_dp_full_over_plain_full_target": 1.15,
            "peak_rss_dp_full_over_plain_full": ratio("dp-full", "plain-full", "peak_rss_gib"),
            "peak_rss_dp_full_over_plain_full_target": 1.15,
            "peak_rss_dp_bitfit_over_dp_full": ratio("dp-bitfit", "dp-full", "peak_rss_gib"),
            "dp_lora_over_plain_lora": ratio("dp-lora", "plain-lora", tput),
            "dp_lora_over_plain_lora_target": 0.8,
            "dp_lora_over_dp_full": ratio("dp-lora", "dp-full", tput),
            "peak_rss_dp_lora_over_dp_full": ratio("dp-lora", "dp-full", "peak_rss_gib"),
            "start_to_first_step_s_max": results.iter()
                .filter(|x| x["model"] == model && x["batch"] == b)
                .filter_map(|x| x["start_to_first_step_s"].as_f64())
                .reduce(f64::max),
        });
        let anchor = PYTORCH_H200
            .iter()
            .find(|(m, ab, _, _)| m.to_string() == model && *ab as u64 == b);
        let at_anchor_shape = r["seq"]
            .as_u64()
            .is_none_or(|s| s == 128 || !model.starts_with("gpt2"))
            && r["image"]
                .as_u64()
                .is_none_or(|s| s == 224 || model.starts_with("gpt2"));
        if let (Some((_, _, torch, fastdp)), true, "cuda") =
            (anchor, at_anchor_shape, r["backend"].as_str().unwrap_or(""))
        {
            line["plain_full_over_pytorch_tf32"] =
                json!(get("plain-full", tput).map(|s| s / torch));
            line["plain_full_over_pytorch_tf32_target"] = json!(0.8);
            line["dp_full_over_fastdp_bookkeeping"] =
                json!(get("dp-full", tput).map(|s| s / fastdp));
            line["dp_full_over_fastdp_bookkeeping_target"] = json!(1.5);
        }
        out.push(line);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_parses_and_prints_back() {
        let s: Single = "gpt2-small:32:dp-full".parse().unwrap();
        assert_eq!(
            s,
            Single {
                model: Model::Gpt2Small,
                batch: 32,
                mode: Mode::DpFull
            }
        );
        assert_eq!(s.to_string(), "gpt2-small:32:dp-full");
        for (m, _) in ANCHORS {
            let s = Single {
                model: m,
                batch: 4,
                mode: Mode::PlainBitfit,
            };
            assert_eq!(s.to_string().parse::<Single>(), Ok(s));
        }
    }

    #[test]
    fn malformed_single_is_a_typed_error() {
        let e = |s: &str| s.parse::<Single>().unwrap_err();
        assert_eq!(
            e("gpt2-small:32"),
            SingleParseError::Shape("gpt2-small:32".into())
        );
        assert_eq!(e("gpt3:32:dp-full"), SingleParseError::Model("gpt3".into()));
        assert_eq!(
            e("gpt2-small:x:dp-full"),
            SingleParseError::Batch("x".into())
        );
        assert_eq!(
            e("gpt2-small:0:dp-full"),
            SingleParseError::Batch("0".into())
        );
        assert_eq!(e("gpt2-small:2:dp"), SingleParseError::Mode("dp".into()));
    }

    #[test]
    fn sweep_keeps_priority_order_and_drops_duplicates() {
        let all = sweep(&[], &[Mode::DpFull], None);
        assert_eq!(all.len(), ANCHORS.len());
        assert_eq!((all[0].model, all[0].batch), (Model::Gpt2Small, 32));
        let small = sweep(
            &[Model::Gpt2Small],
            &[Mode::PlainFull, Mode::DpFull],
            Some(2),
        );
        assert_eq!(
            small.len(),
            2,
            "B overridden: both GPT-2 small anchors are one configuration"
        );
    }

    #[test]
    fn llama_shapes_and_lora_modes_sweep_only_where_they_apply() {
        // The default sweep is the GPU anchors'; named Llama models join it, and the LoRA modes
        // run on Llama-family models only.
        let default = sweep(&[], &[Mode::DpFull, Mode::DpLora], None);
        assert!(default.iter().all(|s| s.mode == Mode::DpFull));
        assert!(default.iter().all(|s| s.model.llama().is_none()));
        let named = sweep(
            &[Model::Gpt2Small, Model::Smollm2_135m],
            &[Mode::PlainLora, Mode::DpLora],
            Some(4),
        );
        let got: Vec<String> = named.iter().map(|s| s.to_string()).collect();
        assert_eq!(got, ["smollm2-135m:4:plain-lora", "smollm2-135m:4:dp-lora"]);
        assert_eq!(
            "qwen2.5-0.5b:8:dp-lora".parse::<Single>().unwrap().model,
            Model::Qwen2_5_0_5b
        );
        // Published parameter counts (the models crate tests them; the bench reports them).
        assert_eq!(
            Model::Tinyllama1_1b.llama().unwrap().num_params(),
            1_100_048_384
        );
    }

    #[test]
    fn ratios_pair_modes_of_one_shape() {
        let line = |mode: &str, sps: f64, mib: f64| {
            json!({"bench": "train", "backend": "cuda", "model": "gpt2-small", "batch": 32,
                "seq": 128, "mode": mode, "samples_per_s": sps, "peak_device_mib": mib})
        };
        let r = ratios(&[
            line("plain-full", 400.0, 1000.0),
            line("dp-full", 300.0, 1100.0),
            line("dp-bitfit", 600.0, 900.0),
        ]);
        assert_eq!(r.len(), 1);
        assert_eq!(r[0]["dp_full_over_plain_full"], 0.75);
        assert_eq!(r[0]["dp_bitfit_over_plain_full"], 1.5);
        assert_eq!(r[0]["peak_device_mem_dp_full_over_plain_full"], 1.1);
        assert_eq!(r[0]["dp_full_over_fastdp_bookkeeping"], 300.0 / 470.46);
        // The lines of data-parallel peers are not single-process measurements.
        let mut peer = line("plain-full", 1.0, 1.0);
        peer["peers"] = json!(2);
        let r2 = ratios(&[
            peer,
            line("plain-full", 400.0, 1000.0),
            line("dp-full", 300.0, 1.0),
        ]);
        assert_eq!(r2[0]["dp_full_over_plain_full"], 0.75);
    }

    #[test]
    fn peers_line_compares_one_and_k_peers_of_one_run() {
        let one = json!({"bench": "train", "backend": "ndarray", "model": "resnet50-gn",
            "mode": "dp-full", "batch": 2, "samples_per_s": 10.0, "step_ms": 200.0});
        let peer = |rank: u32, ar: f64| {
            json!({"bench": "train", "model": "resnet50-gn", "mode": "dp-full", "batch": 2,
                "peers": 2, "peer_rank": rank, "step_ms": 250.0, "global_samples_per_s": 16.0,
                "allreduce_ms": ar, "trainable_params": 1000})
        };
        let l = peers_line(&one, &[peer(0, 30.0), peer(1, 10.0)]);
        assert_eq!(l["bench"], "train-peers");
        assert_eq!(l["speedup"], 1.6);
        assert_eq!(l["scaling_efficiency"], 0.8);
        assert_eq!(l["allreduce_ms_per_step"], 30.0);
        assert_eq!(l["allreduce_ms_per_step_min_over_peers"], 10.0);
        assert_eq!(l["allreduce_bytes_per_peer"], 4000.0);
        assert!(
            l["gpu_prediction"]["device_host_copies_ms"]
                .as_f64()
                .unwrap()
                > 0.0
        );
        let mut failed = peer(1, 0.0);
        failed["error"] = json!("peer 1: timeout");
        assert!(peers_line(&one, &[peer(0, 1.0), failed])["error"].is_string());
    }
}
