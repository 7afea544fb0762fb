//! The decoder (`LlamaModel`) and the language model (`LlamaForCausalLM`), with LoRA adapters.

use burn::module::Module;
use burn::nn::{Embedding, EmbeddingConfig, Linear, LinearConfig, RmsNorm, RmsNormConfig};
use burn::prelude::*;

use super::config::LlamaConfig;
use super::modules::{LlamaAttention, LlamaDecoderLayer, LlamaMlp, Rotary};
use crate::lora::{LoraConfig, LoraError, LoraLinear};

/// The names the adaptable layers of a Llama model end with.
pub const LLAMA_LINEARS: [&str; 7] = [
    "q_proj",
    "k_proj",
    "v_proj",
    "o_proj",
    "gate_proj",
    "up_proj",
    "down_proj",
];

impl LlamaConfig {
    /// A model with freshly initialised (lazily allocated) weights.
    pub fn init<B: Backend>(&self, device: &B::Device) -> Llama<B> {
        let d = self.hidden_size;
        let (q, kv) = (
            self.num_attention_heads * self.head_dim,
            self.num_key_value_heads * self.head_dim,
        );
        let linear = |i: usize, o: usize, bias: bool| LoraLinear::new(i, o, bias, device);
        let norm = || {
            RmsNormConfig::new(d)
                .with_epsilon(self.rms_norm_eps)
                .init(device)
        };
        let (qkv_bias, o_bias, mlp_bias) = (self.bias.qkv(), self.bias.output(), self.mlp_bias);
        let i = self.intermediate_size;
        let layers = (0..self.num_hidden_layers)
            .map(|_| LlamaDecoderLayer {
                input_layernorm: norm(),
                self_attn: LlamaAttention {
                    q_proj: linear(d, q, qkv_bias),
                    k_proj: linear(d, kv, qkv_bias),
                    v_proj: linear(d, kv, qkv_bias),
                    o_proj: linear(q, d, o_bias),
                    num_heads: self.num_attention_heads,
                    num_kv_heads: self.num_key_value_heads,
                    head_dim: self.head_dim,
                },
                post_attention_layernorm: norm(),
                mlp: LlamaMlp {
                    gate_proj: linear(d, i, mlp_bias),
                    up_proj: linear(d, i, mlp_bias),
                    down_proj: linear(i, d, mlp_bias),
                    act: self.hidden_act,
                },
            })
            .collect();
        Llama {
            model: LlamaModel {
                embed_tokens: EmbeddingConfig::new(self.vocab_size, d).init(device),
                layers,
                norm: norm(),
                head_dim: self.head_dim,
                rope_theta: self.rope_theta,
            },
            lm_head: (!self.tie_word_embeddings).then(|| {
                LinearConfig::new(d, self.vocab_size)
                    .with_bias(false)
                    .init(device)
            }),
        }
    }
}

/// The decoder body (`model`): token embedding, layers, final RMSNorm.
#[derive(Module, Debug)]
pub struct LlamaModel<B: Backend> {
    /// Token embedding `[V, d]`.
    pub embed_tokens: Embedding<B>,
    /// Decoder layers.
    pub layers: Vec<LlamaDecoderLayer<B>>,
    /// Final RMSNorm.
    pub norm: RmsNorm<B>,
    /// Width of one attention head.
    pub head_dim: usize,
    /// Rotary base θ.
    pub rope_theta: f64,
}

/// A Llama-family language model (HF `LlamaForCausalLM`, `Qwen2ForCausalLM`).
#[derive(Module, Debug)]
pub struct Llama<B: Backend> {
    /// The decoder.
    pub model: LlamaModel<B>,
    /// Untied output head (burn layout `[d, V]`); `None` = tied to `model.embed_tokens`.
    pub lm_head: Option<Linear<B>>,
}

impl<B: Backend> Llama<B> {
    /// Final hidden states.
    ///
    /// # Shapes
    /// - `input_ids`: `[B, T]`, `position_ids`: `[B, T]` (default `0..T` for every sample)
    /// - returns `[B, T, d]`
    pub fn hidden(
        &self,
        input_ids: Tensor<B, 2, Int>,
        position_ids: Option<Tensor<B, 2, Int>>,
    ) -> Tensor<B, 3> {
        let [_, t] = input_ids.dims();
        let device = input_ids.device();
        let m = &self.model;
        let rotary = Rotary::new(m.head_dim, m.rope_theta, t, position_ids, &device);
        let mut x = m.embed_tokens.forward(input_ids);
        for layer in &m.layers {
            x = layer.forward(x, &rotary);
        }
        m.norm.forward(x)
    }

    /// Logits.
    ///
    /// # Shapes
    /// - `input_ids`: `[B, T]`, `position_ids`: `[B, T]` (default `0..T`)
    /// - returns `[B, T, V]`
    pub fn forward(
        &self,
        input_ids: Tensor<B, 2, Int>,
        position_ids: Option<Tensor<B, 2, Int>>,
    ) -> Tensor<B, 3> {
        let h = self.hidden(input_ids, position_ids);
        match &self.lm_head {
            Some(head) => head.forward(h),
            // Tied head through the linear module op (not a plain matmul), so per-sample
            // gradient rules see it.
            None => burn::tensor::module::linear(
                h,
                self.model.embed_tokens.weight.val().transpose(),
                None,
            ),
        }
    }

    /// Applies `f` to every linear layer with its module path
    /// (`model.layers.0.self_attn.q_proj`, …).
    fn map_linears(self, mut f: impl FnMut(&str, LoraLinear<B>) -> LoraLinear<B>) -> Self {
        let Self { model, lm_head } = self;
        let layers = model
            .layers
            .into_iter()
            .enumerate()
            .map(|(i, layer)| layer.map_linears(&format!("model.layers.{i}"), &mut f))
            .collect();
        Self {
            model: LlamaModel { layers, ..model },
            lm_head,
        }
    }

    /// The model with a fresh LoRA adapter on every linear layer `config` targets (see
    /// [`LoraConfig::targets`]; the layers are [`LLAMA_LINEARS`]). Base weights are untouched
    /// (freeze them for DP-LoRA); a fresh adapter does not change the output (`B = 0`).
    pub fn with_lora(self, config: &LoraConfig, device: &B::Device) -> Result<Self, LoraError> {
        config.validate()?;
        let mut paths = Vec::new();
        self.visit_linears(|path, _| paths.push(path.to_string()));
        for target in &config.targets {
            if !paths
                .iter()
                .any(|p| LoraConfig::new(1, 1.0, &[target]).matches(p))
            {
                return Err(LoraError::NoMatch {
                    target: target.clone(),
                    available: LLAMA_LINEARS.join(", "),
                });
            }
        }
        let mut adapted = Vec::new();
        self.visit_linears(|path, l| {
            if config.matches(path) && l.has_adapter() {
                adapted.push(path.to_string());
            }
        });
        if let Some(path) = adapted.into_iter().next() {
            return Err(LoraError::AlreadyAdapted { path });
        }
        Ok(self.map_linears(|path, l| {
            if config.matches(path) {
                l.with_adapter(config.rank, config.alpha, device)
            } else {
                l
            }
        }))
    }

    /// The model with every adapter merged into its base weight and removed (for export: an
    /// ordinary Llama that loads anywhere).
    pub fn merge_adapters(self) -> Self {
        self.map_linears(|_, l| l.merged())
    }

    /// Visits every linear layer with its module path.
    pub fn visit_linears(&self, mut f: impl FnMut(&str, &LoraLinear<B>)) {
        for (i, layer) in self.model.layers.iter().enumerate() {
            let (a, m) = (&layer.self_attn, &layer.mlp);
            let linears = [
                ("self_attn.q_proj", &a.q_proj),
                ("self_attn.k_proj", &a.k_proj),
                ("self_attn.v_proj", &a.v_proj),
                ("self_attn.o_proj", &a.o_proj),
                ("mlp.gate_proj", &m.gate_proj),
                ("mlp.up_proj", &m.up_proj),
                ("mlp.down_proj", &m.down_proj),
            ];
            for (name, l) in linears {
                f(&format!("model.layers.{i}.{name}"), l);
            }
        }
    }
}
