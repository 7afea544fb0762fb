//! GPT-2 (HF `GPT2LMHeadModel`) with HF module names.

use burn::module::Module;
use burn::nn::{
    Dropout, DropoutConfig, Embedding, EmbeddingConfig, LayerNorm, LayerNormConfig, Linear,
    LinearConfig,
};
use burn::prelude::*;
use serde::{Deserialize, Serialize};

use crate::act::Activation;
use crate::error::ImportError;
use crate::load::{Layout, LoadOptions, NameRules, TensorSource, TorchParam};
use crate::onnx::{OnnxFile, OnnxWeights};
use crate::pretrained::{ModelConfig, PretrainedModel, TokenBatch};

/// GPT-2 hyper-parameters (HF names).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Gpt2Config {
    /// Vocabulary size.
    pub vocab_size: usize,
    /// Maximum sequence length (rows of `wpe`).
    pub n_positions: usize,
    /// Model width.
    pub n_embd: usize,
    /// Number of blocks.
    pub n_layer: usize,
    /// Number of attention heads.
    pub n_head: usize,
    /// MLP width (default `4 * n_embd`).
    pub n_inner: Option<usize>,
    /// LayerNorm epsilon.
    pub layer_norm_epsilon: f64,
    /// MLP activation (`gelu_new` in GPT-2).
    pub activation: Activation,
    /// Output head tied to the token embedding (as in HF); `false` adds an own `lm_head`.
    pub tie_word_embeddings: bool,
    /// Dropout probability (residual, embedding and attention), default 0.
    pub dropout: f64,
}

impl Gpt2Config {
    fn preset(n_embd: usize, n_layer: usize, n_head: usize) -> Self {
        Self {
            vocab_size: 50257,
            n_positions: 1024,
            n_embd,
            n_layer,
            n_head,
            n_inner: None,
            layer_norm_epsilon: 1e-5,
            activation: Activation::GeluTanh,
            tie_word_embeddings: true,
            dropout: 0.0,
        }
    }
    /// GPT-2 small (124M).
    pub fn small() -> Self {
        Self::preset(768, 12, 12)
    }
    /// GPT-2 medium (355M).
    pub fn medium() -> Self {
        Self::preset(1024, 24, 16)
    }
    /// GPT-2 large (774M).
    pub fn large() -> Self {
        Self::preset(1280, 36, 20)
    }
    /// GPT-2 xl (1.5B).
    pub fn xl() -> Self {
        Self::preset(1600, 48, 25)
    }
    /// A custom configuration (GPT-2 defaults for the rest).
    pub fn custom(
        vocab_size: usize,
        n_positions: usize,
        n_embd: usize,
        n_layer: usize,
        n_head: usize,
    ) -> Self {
        Self {
            vocab_size,
            n_positions,
            ..Self::preset(n_embd, n_layer, n_head)
        }
    }
    /// Untie (or tie) the output head.
    pub fn with_tied_head(mut self, tied: bool) -> Self {
        self.tie_word_embeddings = tied;
        self
    }
    /// Set the dropout probability.
    pub fn with_dropout(mut self, p: f64) -> Self {
        self.dropout = p;
        self
    }

    /// Read a HF `config.json` (`GPT2Config`) string. Absent optional keys take HF's defaults
    /// (`gelu_new`, epsilon 1e-5, tied head); the dropout is the largest of `resid_pdrop`,
    /// `embd_pdrop` and `attn_pdrop`.
    pub fn from_hf_json(json: &str) -> Result<Self, ImportError> {
        let hf: HfGpt2Config = serde_json::from_str(json)
            .map_err(|e| ImportError::Config(format!("GPT-2 config: {e}")))?;
        let dropout = [hf.resid_pdrop, hf.embd_pdrop, hf.attn_pdrop]
            .into_iter()
            .flatten()
            .fold(0.0, f64::max);
        let cfg = Self {
            vocab_size: hf.vocab_size,
            n_positions: hf.n_positions,
            n_embd: hf.n_embd,
            n_layer: hf.n_layer,
            n_head: hf.n_head,
            n_inner: hf.n_inner,
            layer_norm_epsilon: hf.layer_norm_epsilon.unwrap_or(1e-5),
            activation: match hf.activation_function {
                Some(s) => Activation::from_hf(&s)?,
                None => Activation::GeluTanh,
            },
            tie_word_embeddings: hf.tie_word_embeddings.unwrap_or(true),
            dropout,
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// MLP width.
    pub fn inner(&self) -> usize {
        self.n_inner.unwrap_or(4 * self.n_embd)
    }

    /// A model with freshly initialised (lazily allocated) weights.
    pub fn init<B: Backend>(&self, device: &B::Device) -> Gpt2<B> {
        let d = self.n_embd;
        let linear = |i: usize, o: usize| LinearConfig::new(i, o).init(device);
        let ln = || {
            LayerNormConfig::new(d)
                .with_epsilon(self.layer_norm_epsilon)
                .init(device)
        };
        let dropout = || DropoutConfig::new(self.dropout).init();
        let h = (0..self.n_layer)
            .map(|_| Gpt2Block {
                ln_1: ln(),
                attn: Gpt2Attention {
                    c_attn: linear(d, 3 * d),
                    c_proj: linear(d, d),
                    attn_dropout: dropout(),
                    resid_dropout: dropout(),
                    n_head: self.n_head,
                },
                ln_2: ln(),
                mlp: Gpt2Mlp {
                    c_fc: linear(d, self.inner()),
                    c_proj: linear(self.inner(), d),
                    dropout: dropout(),
                    activation: self.activation,
                },
            })
            .collect();
        Gpt2 {
            transformer: Gpt2Transformer {
                wte: EmbeddingConfig::new(self.vocab_size, d).init(device),
                wpe: EmbeddingConfig::new(self.n_positions, d).init(device),
                drop: dropout(),
                h,
                ln_f: ln(),
            },
            lm_head: if self.tie_word_embeddings {
                None
            } else {
                Some(
                    LinearConfig::new(d, self.vocab_size)
                        .with_bias(false)
                        .init(device),
                )
            },
        }
    }
}

/// The keys of a HF `GPT2Config` this crate reads (others are ignored; `null` is absent).
#[derive(Deserialize)]
struct HfGpt2Config {
    vocab_size: usize,
    n_positions: usize,
    n_embd: usize,
    n_layer: usize,
    n_head: usize,
    #[serde(default)]
    n_inner: Option<usize>,
    #[serde(default)]
    layer_norm_epsilon: Option<f64>,
    #[serde(default)]
    activation_function: Option<String>,
    #[serde(default)]
    tie_word_embeddings: Option<bool>,
    #[serde(default)]
    resid_pdrop: Option<f64>,
    #[serde(default)]
    embd_pdrop: Option<f64>,
    #[serde(default)]
    attn_pdrop: Option<f64>,
}

impl ModelConfig for Gpt2Config {
    fn validate(&self) -> Result<(), ImportError> {
        if self.n_head == 0 || !self.n_embd.is_multiple_of(self.n_head) {
            return Err(ImportError::Config(format!(
                "n_embd {} is not divisible by n_head {}",
                self.n_embd, self.n_head
            )));
        }
        if self.vocab_size == 0 || self.n_positions == 0 || self.n_inner == Some(0) {
            return Err(ImportError::Config(format!(
                "vocab_size {}, n_positions {} and n_inner {:?} must be positive",
                self.vocab_size, self.n_positions, self.n_inner
            )));
        }
        if !(0.0..1.0).contains(&self.dropout) || self.layer_norm_epsilon.is_nan() {
            return Err(ImportError::Config(format!(
                "dropout {} must be in [0, 1) and layer_norm_epsilon {} a number",
                self.dropout, self.layer_norm_epsilon
            )));
        }
        Ok(())
    }
}

/// Self-attention (`transformer.h.N.attn`): fused `c_attn` (q|k|v) and `c_proj`.
#[derive(Module, Debug)]
pub struct Gpt2Attention<B: Backend> {
    /// q, k, v projection, burn `Linear` [d, 3d] (= HF `Conv1D` layout).
    pub c_attn: Linear<B>,
    /// Output projection.
    pub c_proj: Linear<B>,
    /// Dropout on attention probabilities.
    pub attn_dropout: Dropout,
    /// Dropout on the output.
    pub resid_dropout: Dropout,
    /// Number of heads.
    pub n_head: usize,
}

impl<B: Backend> Gpt2Attention<B> {
    /// [B, T, d] -> [B, T, d], causal.
    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let [b, t, d] = x.dims();
        let qkv = self.c_attn.forward(x);
        let part = |i: usize| qkv.clone().slice([0..b, 0..t, i * d..(i + 1) * d]);
        let out = crate::block::attention(
            part(0),
            part(1),
            part(2),
            self.n_head,
            true,
            &self.attn_dropout,
        );
        self.resid_dropout.forward(self.c_proj.forward(out))
    }
}

/// MLP (`transformer.h.N.mlp`).
#[derive(Module, Debug)]
pub struct Gpt2Mlp<B: Backend> {
    /// Up projection.
    pub c_fc: Linear<B>,
    /// Down projection.
    pub c_proj: Linear<B>,
    /// Dropout on the output.
    pub dropout: Dropout,
    /// Activation.
    pub activation: Activation,
}

/// One transformer block (`transformer.h.N`).
#[derive(Module, Debug)]
pub struct Gpt2Block<B: Backend> {
    /// Pre-attention LayerNorm.
    pub ln_1: LayerNorm<B>,
    /// Attention.
    pub attn: Gpt2Attention<B>,
    /// Pre-MLP LayerNorm.
    pub ln_2: LayerNorm<B>,
    /// MLP.
    pub mlp: Gpt2Mlp<B>,
}

impl<B: Backend> Gpt2Block<B> {
    /// [B, T, d] -> [B, T, d].
    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let x = x.clone() + self.attn.forward(self.ln_1.forward(x));
        let m = &self.mlp;
        let normed = self.ln_2.forward(x.clone());
        crate::block::mlp_residual(x, normed, &m.c_fc, &m.activation, &m.c_proj, &m.dropout)
    }
}

/// The transformer body (`transformer`).
#[derive(Module, Debug)]
pub struct Gpt2Transformer<B: Backend> {
    /// Token embedding [V, d].
    pub wte: Embedding<B>,
    /// Position embedding [n_positions, d].
    pub wpe: Embedding<B>,
    /// Embedding dropout.
    pub drop: Dropout,
    /// Blocks.
    pub h: Vec<Gpt2Block<B>>,
    /// Final LayerNorm.
    pub ln_f: LayerNorm<B>,
}

/// GPT-2 language model (HF `GPT2LMHeadModel`).
#[derive(Module, Debug)]
pub struct Gpt2<B: Backend> {
    /// The body.
    pub transformer: Gpt2Transformer<B>,
    /// Untied output head (burn layout [d, V]); `None` = tied to `transformer.wte`.
    pub lm_head: Option<Linear<B>>,
}

impl<B: Backend> Gpt2<B> {
    /// Final hidden states [B, T, d]. `position_ids` [B, T] default to `0..T` for every sample.
    pub fn hidden(
        &self,
        input_ids: Tensor<B, 2, Int>,
        position_ids: Option<Tensor<B, 2, Int>>,
    ) -> Tensor<B, 3> {
        let [b, t] = input_ids.dims();
        let device = input_ids.device();
        let position_ids = position_ids.unwrap_or_else(|| {
            Tensor::<B, 1, Int>::arange(0..t as i64, &device)
                .reshape([1, t])
                .repeat_dim(0, b)
        });
        let tr = &self.transformer;
        let mut x = tr.wte.forward(input_ids) + tr.wpe.forward(position_ids);
        x = tr.drop.forward(x);
        for block in &tr.h {
            x = block.forward(x);
        }
        tr.ln_f.forward(x)
    }

    /// Logits [B, T, V] for token ids [B, T] and optional per-sample position ids [B, T].
    pub fn forward(
        &self,
        input_ids: Tensor<B, 2, Int>,
        position_ids: Option<Tensor<B, 2, Int>>,
    ) -> Tensor<B, 3> {
        let h = self.hidden(input_ids, position_ids);
        match &self.lm_head {
            Some(head) => head.forward(h),
            None => {
                // Tied head through the linear module op (not a plain matmul), so per-sample
                // gradient hooks see it.
                let wte_weight = self.transformer.wte.weight.val();
                burn::tensor::module::linear(h, wte_weight.transpose(), None)
            }
        }
    }
}

pub(crate) struct Gpt2Rules;

impl NameRules for Gpt2Rules {
    fn layout(&self, name: &str, is_linear: bool) -> Layout {
        // HF GPT-2 uses Conv1D ([in, out], burn's layout) everywhere but the (untied) lm_head,
        // a torch Linear ([out, in]).
        if is_linear && name == "lm_head.weight" {
            Layout::Transposed
        } else {
            Layout::Same
        }
    }
    fn aliases(&self, name: &str) -> Vec<String> {
        let mut v = vec![name.to_string()];
        if let Some(rest) = name.strip_prefix("transformer.") {
            // Original OpenAI/HF checkpoints (`gpt2` on the hub) have no `transformer.` prefix.
            v.push(rest.to_string());
        }
        if name == "transformer.wte.weight" {
            // Tied head stored under the head's name.
            v.push("lm_head.weight".to_string());
        }
        v
    }
}

/// HF weights: a `GPT2LMHeadModel` / `GPT2Model` state dict, with or without the
/// `transformer.` prefix, the tied head stored as `transformer.wte.weight` or `lm_head.weight`;
/// or an ONNX export of `GPT2LMHeadModel` (weights located through the graph).
impl<B: Backend> PretrainedModel<B> for Gpt2<B> {
    type Config = Gpt2Config;
    type Batch = TokenBatch<B>;

    /// Load from any source of torch-named tensors. A tied configuration refuses a checkpoint
    /// whose `lm_head.weight` differs from its token embedding (an untied model: load it with
    /// `with_tied_head(false)`) rather than silently dropping the head.
    fn from_source<S: TensorSource>(
        config: &Gpt2Config,
        source: &mut S,
        device: &B::Device,
        options: LoadOptions,
    ) -> Result<Self, ImportError> {
        config.validate()?;
        if config.tie_word_embeddings {
            crate::load::check_tied_head(
                source,
                &["transformer.wte.weight", "wte.weight"],
                "Gpt2Config",
            )?;
        }
        crate::load::load_params(config.init(device), source, &Gpt2Rules, options)
    }

    fn onnx_weights(config: &Gpt2Config, file: OnnxFile) -> Result<OnnxWeights, ImportError> {
        onnx_weights(config, file)
    }

    fn torch_params(&self) -> Vec<TorchParam> {
        crate::load::torch_params_with::<B, _, _>(self, &Gpt2Rules)
    }

    /// Mean next-token cross-entropy over the T-1 predicted positions of each sample.
    fn loss_per_sample(&self, batch: impl Into<TokenBatch<B>>) -> Tensor<B, 1> {
        let TokenBatch {
            input_ids,
            position_ids,
        } = batch.into();
        let logits = self.forward(input_ids.clone(), position_ids);
        crate::loss::lm_loss_per_sample(logits, input_ids)
    }
}

/// Locate the GPT-2 weights of `config` in an ONNX graph.
pub fn onnx_weights(config: &Gpt2Config, file: OnnxFile) -> Result<OnnxWeights, ImportError> {
    use crate::onnx::{count_err, Assign, Slots};
    config.validate()?;
    let s = Slots::of(&file)?;
    let l = config.n_layer;
    let mut a = Assign::of_model(&config.init::<burn::backend::NdArray>(&Default::default()));
    if s.emb.len() != 2 {
        return Err(count_err(
            &file,
            "embedding Gather nodes (wte, wpe)",
            2,
            s.emb.len(),
        ));
    }
    a.set("transformer.wte.weight", &s.emb[0].1, false)?;
    a.set("transformer.wpe.weight", &s.emb[1].1, false)?;
    if s.ln.len() != 2 * l + 1 {
        return Err(count_err(
            &file,
            "LayerNormalization nodes",
            2 * l + 1,
            s.ln.len(),
        ));
    }
    let n_lin = 4 * l + usize::from(!config.tie_word_embeddings);
    // A tied head shows up as one more MatMul with the (transposed) embedding table.
    if s.linear.len() != n_lin && !(config.tie_word_embeddings && s.linear.len() == n_lin + 1) {
        return Err(count_err(
            &file,
            "linear (Gemm/MatMul) nodes",
            n_lin,
            s.linear.len(),
        ));
    }
    let set_ln = |a: &mut Assign, name: &str, k: usize| -> Result<(), ImportError> {
        let (node, scale, bias) = &s.ln[k];
        a.set(&format!("{name}.weight"), scale, false)?;
        a.set_opt(&format!("{name}.bias"), bias, node)
    };
    for i in 0..l {
        set_ln(&mut a, &format!("transformer.h.{i}.ln_1"), 2 * i)?;
        set_ln(&mut a, &format!("transformer.h.{i}.ln_2"), 2 * i + 1)?;
        for (k, m) in ["attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"]
            .iter()
            .enumerate()
        {
            let (node, w, b) = &s.linear[4 * i + k];
            let name = format!("transformer.h.{i}.{m}");
            // HF Conv1D stores [in, out], which is how the graph uses it.
            a.set(&format!("{name}.weight"), w, false)?;
            a.set_opt(&format!("{name}.bias"), b, node)?;
        }
    }
    set_ln(&mut a, "transformer.ln_f", 2 * l)?;
    if !config.tie_word_embeddings {
        // torch Linear stores [V, d]; the graph uses [d, V].
        a.set("lm_head.weight", &s.linear[4 * l].1, true)?;
    }
    Ok(a.finish(file))
}
