//! What `bench train` measures: backends, models, modes, shapes, one configuration.

use std::fmt;
use std::str::FromStr;

use burn_dp::FreezePolicy;
use burn_dp_distributed::PeerArgs;
use burn_dp_models::{adapters_policy, LlamaConfig, ProjectionBias};
use clap::ValueEnum;

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
    pub(crate) fn reads_tokens(self) -> bool {
        matches!(
            self,
            Model::Gpt2Small | Model::Gpt2Medium | Model::Gpt2Large
        ) || self.llama().is_some()
    }

    /// The vocabulary of a token model (its random token ids are drawn below it).
    pub(crate) fn vocab(self) -> usize {
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
pub(crate) fn value_name<T: ValueEnum>(v: &T) -> String {
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
    pub(crate) fn is_dp(self) -> bool {
        matches!(self, Mode::DpFull | Mode::DpBitfit | Mode::DpLora)
    }

    /// Whether the mode trains LoRA adapters (the model gets them first).
    pub(crate) fn is_lora(self) -> bool {
        matches!(self, Mode::PlainLora | Mode::DpLora)
    }

    pub(crate) fn freeze_policy(self) -> FreezePolicy {
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
pub(crate) const PYTORCH_H200: [(Model, usize, f64, f64); 6] = [
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
pub(crate) const PEER_INIT_SEED: u64 = 20_251_201;
