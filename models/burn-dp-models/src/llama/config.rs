//! Llama-family hyper-parameters (HF `LlamaConfig` / `Qwen2Config` names) and the published
//! presets.

use serde::{Deserialize, Serialize};

use crate::act::Activation;
use crate::error::ImportError;
use crate::pretrained::ModelConfig;

/// Which attention projections carry a bias.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ProjectionBias {
    /// No bias anywhere (Llama, SmolLM2, TinyLlama).
    None,
    /// Biases on the q, k and v projections, none on the output projection (Qwen2 / Qwen2.5).
    Qkv,
    /// Biases on q, k, v and o (a Llama config with `attention_bias: true`).
    All,
}

impl ProjectionBias {
    /// Whether the q, k and v projections have a bias.
    pub fn qkv(self) -> bool {
        !matches!(self, Self::None)
    }
    /// Whether the output projection has a bias.
    pub fn output(self) -> bool {
        matches!(self, Self::All)
    }
}

/// Hyper-parameters of a Llama-family decoder (RMSNorm, rotary positions, grouped-query
/// attention, SwiGLU MLP), with the names of HF `LlamaConfig`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LlamaConfig {
    /// Vocabulary size.
    pub vocab_size: usize,
    /// Model width `d`.
    pub hidden_size: usize,
    /// Width of the SwiGLU MLP.
    pub intermediate_size: usize,
    /// Number of decoder layers.
    pub num_hidden_layers: usize,
    /// Number of query heads.
    pub num_attention_heads: usize,
    /// Number of key/value heads (grouped-query attention when fewer than the query heads; it
    /// must divide them).
    pub num_key_value_heads: usize,
    /// Width of one head (HF default `hidden_size / num_attention_heads`).
    pub head_dim: usize,
    /// Longest sequence the model was trained on (not a parameter shape: rotary positions
    /// need no table; longer inputs are refused by nothing but the model's quality).
    pub max_position_embeddings: usize,
    /// RMSNorm epsilon.
    pub rms_norm_eps: f64,
    /// Rotary base θ (Su et al. 2021, RoFormer, eq. 15: `θ_i = base^(-2i/head_dim)`).
    pub rope_theta: f64,
    /// Output head tied to the token embedding.
    pub tie_word_embeddings: bool,
    /// Biases of the attention projections.
    pub bias: ProjectionBias,
    /// Biases on the MLP projections (HF `mlp_bias`).
    pub mlp_bias: bool,
    /// Activation of the MLP gate (`silu` in every published model).
    pub hidden_act: Activation,
}

impl LlamaConfig {
    /// A custom configuration: `head_dim = hidden_size / num_attention_heads`, RMSNorm epsilon
    /// 1e-5, rotary base 10 000, SiLU, no biases, untied head.
    pub fn custom(
        vocab_size: usize,
        hidden_size: usize,
        intermediate_size: usize,
        num_hidden_layers: usize,
        num_attention_heads: usize,
        num_key_value_heads: usize,
    ) -> Self {
        Self {
            vocab_size,
            hidden_size,
            intermediate_size,
            num_hidden_layers,
            num_attention_heads,
            num_key_value_heads,
            head_dim: hidden_size / num_attention_heads.max(1),
            max_position_embeddings: 2048,
            rms_norm_eps: 1e-5,
            rope_theta: 10_000.0,
            tie_word_embeddings: false,
            bias: ProjectionBias::None,
            mlp_bias: false,
            hidden_act: Activation::Silu,
        }
    }

    /// SmolLM2-135M (HuggingFaceTB): 30 layers, width 576, 9 heads / 3 KV heads, tied head;
    /// 134 515 008 parameters.
    pub fn smollm2_135m() -> Self {
        Self {
            max_position_embeddings: 8192,
            rope_theta: 100_000.0,
            tie_word_embeddings: true,
            ..Self::custom(49_152, 576, 1536, 30, 9, 3)
        }
    }

    /// Qwen2.5-0.5B: 24 layers, width 896, 14 heads / 2 KV heads, q/k/v biases, tied head;
    /// 494 032 768 parameters.
    pub fn qwen2_5_0_5b() -> Self {
        Self {
            max_position_embeddings: 32_768,
            rms_norm_eps: 1e-6,
            rope_theta: 1_000_000.0,
            tie_word_embeddings: true,
            bias: ProjectionBias::Qkv,
            ..Self::custom(151_936, 896, 4864, 24, 14, 2)
        }
    }

    /// TinyLlama-1.1B: 22 layers, width 2048, 32 heads / 4 KV heads, untied head;
    /// 1 100 048 384 parameters.
    pub fn tinyllama_1_1b() -> Self {
        Self {
            max_position_embeddings: 2048,
            ..Self::custom(32_000, 2048, 5632, 22, 32, 4)
        }
    }

    /// Tie (or untie) the output head.
    pub fn with_tied_head(mut self, tied: bool) -> Self {
        self.tie_word_embeddings = tied;
        self
    }

    /// Set the attention projection biases.
    pub fn with_bias(mut self, bias: ProjectionBias) -> Self {
        self.bias = bias;
        self
    }

    /// Query heads per key/value head.
    pub fn group_size(&self) -> usize {
        self.num_attention_heads / self.num_key_value_heads.max(1)
    }

    /// Number of parameters, counted from the shapes (nothing is built).
    pub fn num_params(&self) -> usize {
        let d = self.hidden_size;
        let (q, kv) = (
            self.num_attention_heads * self.head_dim,
            self.num_key_value_heads * self.head_dim,
        );
        let b = |on: bool, n: usize| if on { n } else { 0 };
        let attn =
            d * q + 2 * d * kv + q * d + b(self.bias.qkv(), q + 2 * kv) + b(self.bias.output(), d);
        let i = self.intermediate_size;
        let mlp = 3 * d * i + b(self.mlp_bias, 2 * i + d);
        let layer = attn + mlp + 2 * d;
        let embed = self.vocab_size * d;
        embed + self.num_hidden_layers * layer + d + b(!self.tie_word_embeddings, embed)
    }

    /// Read a HF `config.json` of a `LlamaForCausalLM` or `Qwen2ForCausalLM` (by its
    /// `model_type`, `llama` when absent). Absent optional keys take HF's defaults; a rotary
    /// scaling other than the default (`rope_scaling` / `rope_parameters` of type `llama3`,
    /// `yarn`, ...) and Qwen2's sliding window are refused with [`ImportError::Config`].
    pub fn from_hf_json(json: &str) -> Result<Self, ImportError> {
        let hf: HfLlamaConfig = serde_json::from_str(json)
            .map_err(|e| ImportError::Config(format!("Llama config: {e}")))?;
        let qwen2 = match hf.model_type.as_deref() {
            None | Some("llama") => false,
            Some("qwen2") => true,
            Some(other) => {
                return Err(ImportError::Config(format!(
                    "model_type `{other}` is not a Llama-family model this crate reads \
                     (write `llama` or `qwen2`)"
                )))
            }
        };
        if hf.use_sliding_window == Some(true) {
            return Err(ImportError::Config(
                "Qwen2 sliding-window attention is not supported: set `use_sliding_window` to \
                 false"
                    .into(),
            ));
        }
        let mut rope_theta = hf.rope_theta;
        for scaling in [&hf.rope_scaling, &hf.rope_parameters]
            .into_iter()
            .flatten()
        {
            let kind = scaling
                .get("rope_type")
                .or_else(|| scaling.get("type"))
                .and_then(|v| v.as_str())
                .unwrap_or("default");
            if kind != "default" {
                return Err(ImportError::Config(format!(
                    "rotary scaling `{kind}` is not supported (only the default rotary \
                     embedding)"
                )));
            }
            if let Some(t) = scaling.get("rope_theta").and_then(|v| v.as_f64()) {
                rope_theta = Some(t);
            }
        }
        let heads = hf.num_attention_heads;
        let bias = match (qwen2, hf.attention_bias) {
            (true, _) => ProjectionBias::Qkv,
            (false, Some(true)) => ProjectionBias::All,
            (false, _) => ProjectionBias::None,
        };
        let cfg = Self {
            vocab_size: hf.vocab_size,
            hidden_size: hf.hidden_size,
            intermediate_size: hf.intermediate_size,
            num_hidden_layers: hf.num_hidden_layers,
            num_attention_heads: heads,
            num_key_value_heads: hf.num_key_value_heads.unwrap_or(heads),
            head_dim: hf.head_dim.unwrap_or(hf.hidden_size / heads.max(1)),
            max_position_embeddings: hf.max_position_embeddings.unwrap_or(2048),
            rms_norm_eps: hf.rms_norm_eps.unwrap_or(1e-6),
            rope_theta: rope_theta.unwrap_or(10_000.0),
            tie_word_embeddings: hf.tie_word_embeddings.unwrap_or(false),
            bias,
            mlp_bias: hf.mlp_bias.unwrap_or(false),
            hidden_act: match hf.hidden_act {
                Some(s) => Activation::from_hf(&s)?,
                None => Activation::Silu,
            },
        };
        cfg.validate()?;
        Ok(cfg)
    }
}

/// The keys of a HF `LlamaConfig` / `Qwen2Config` this crate reads (others are ignored).
#[derive(Deserialize)]
struct HfLlamaConfig {
    #[serde(default)]
    model_type: Option<String>,
    vocab_size: usize,
    hidden_size: usize,
    intermediate_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    #[serde(default)]
    num_key_value_heads: Option<usize>,
    #[serde(default)]
    head_dim: Option<usize>,
    #[serde(default)]
    max_position_embeddings: Option<usize>,
    #[serde(default)]
    rms_norm_eps: Option<f64>,
    #[serde(default)]
    rope_theta: Option<f64>,
    #[serde(default)]
    rope_scaling: Option<serde_json::Map<String, serde_json::Value>>,
    #[serde(default)]
    rope_parameters: Option<serde_json::Map<String, serde_json::Value>>,
    #[serde(default)]
    tie_word_embeddings: Option<bool>,
    #[serde(default)]
    attention_bias: Option<bool>,
    #[serde(default)]
    mlp_bias: Option<bool>,
    #[serde(default)]
    hidden_act: Option<String>,
    #[serde(default)]
    use_sliding_window: Option<bool>,
}

impl ModelConfig for LlamaConfig {
    fn validate(&self) -> Result<(), ImportError> {
        let positive = [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_attention_heads", self.num_attention_heads),
            ("num_key_value_heads", self.num_key_value_heads),
            ("head_dim", self.head_dim),
        ];
        if let Some((name, _)) = positive.iter().find(|(_, v)| *v == 0) {
            return Err(ImportError::Config(format!("{name} must be positive")));
        }
        if !self
            .num_attention_heads
            .is_multiple_of(self.num_key_value_heads)
        {
            return Err(ImportError::Config(format!(
                "num_key_value_heads {} must divide num_attention_heads {} (grouped-query \
                 attention shares each key/value head among a whole group of query heads)",
                self.num_key_value_heads, self.num_attention_heads
            )));
        }
        if !self.head_dim.is_multiple_of(2) {
            return Err(ImportError::Config(format!(
                "head_dim {} must be even (rotary embeddings rotate pairs of dimensions)",
                self.head_dim
            )));
        }
        let eps_ok = self.rms_norm_eps.is_finite() && self.rms_norm_eps > 0.0;
        let theta_ok = self.rope_theta.is_finite() && self.rope_theta > 1.0;
        if !eps_ok || !theta_ok {
            return Err(ImportError::Config(format!(
                "rms_norm_eps {} must be positive and rope_theta {} a finite number above 1",
                self.rms_norm_eps, self.rope_theta
            )));
        }
        Ok(())
    }
}
