//! ViT (HF `ViTForImageClassification`, transformers 5 module names).

use burn::module::{Module, Param};
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{Dropout, DropoutConfig, LayerNorm, LayerNormConfig, Linear, LinearConfig};
use burn::prelude::*;
use serde::{Deserialize, Serialize};

use crate::act::Activation;
use crate::error::ImportError;
use crate::load::{LoadOptions, NameRules, TensorSource, TorchParam};
use crate::loss::cross_entropy_per_sample;
use crate::onnx::{OnnxFile, OnnxWeights};
use crate::pretrained::{ImageBatch, ModelConfig, PretrainedModel};

/// ViT hyper-parameters (HF names).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ViTConfig {
    /// Width.
    pub hidden_size: usize,
    /// Number of encoder layers.
    pub num_hidden_layers: usize,
    /// Number of heads.
    pub num_attention_heads: usize,
    /// MLP width.
    pub intermediate_size: usize,
    /// MLP activation.
    pub hidden_act: Activation,
    /// LayerNorm epsilon.
    pub layer_norm_eps: f64,
    /// Image side.
    pub image_size: usize,
    /// Patch side.
    pub patch_size: usize,
    /// Input channels.
    pub num_channels: usize,
    /// Bias on q, k, v.
    pub qkv_bias: bool,
    /// Classes of the classifier head.
    pub num_labels: usize,
    /// Dropout probability (default 0).
    pub dropout: f64,
}

impl ViTConfig {
    fn preset(
        d: usize,
        layers: usize,
        heads: usize,
        mlp: usize,
        patch: usize,
        labels: usize,
    ) -> Self {
        Self {
            hidden_size: d,
            num_hidden_layers: layers,
            num_attention_heads: heads,
            intermediate_size: mlp,
            hidden_act: Activation::Gelu,
            layer_norm_eps: 1e-12,
            image_size: 224,
            patch_size: patch,
            num_channels: 3,
            qkv_bias: true,
            num_labels: labels,
            dropout: 0.0,
        }
    }
    /// ViT-B/16 (`google/vit-base-patch16-224`).
    pub fn base_patch16(num_labels: usize) -> Self {
        Self::preset(768, 12, 12, 3072, 16, num_labels)
    }
    /// ViT-B/32.
    pub fn base_patch32(num_labels: usize) -> Self {
        Self::preset(768, 12, 12, 3072, 32, num_labels)
    }
    /// ViT-L/16.
    pub fn large_patch16(num_labels: usize) -> Self {
        Self::preset(1024, 24, 16, 4096, 16, num_labels)
    }
    /// ViT-L/32.
    pub fn large_patch32(num_labels: usize) -> Self {
        Self::preset(1024, 24, 16, 4096, 32, num_labels)
    }
    /// A custom configuration.
    #[allow(clippy::too_many_arguments)]
    pub fn custom(
        hidden_size: usize,
        num_hidden_layers: usize,
        num_attention_heads: usize,
        intermediate_size: usize,
        image_size: usize,
        patch_size: usize,
        num_labels: usize,
    ) -> Self {
        Self {
            image_size,
            ..Self::preset(
                hidden_size,
                num_hidden_layers,
                num_attention_heads,
                intermediate_size,
                patch_size,
                num_labels,
            )
        }
    }

    /// Read a HF `config.json` (`ViTConfig`); the label count comes from `num_labels` or
    /// `id2label`. Absent optional keys take HF's defaults (`gelu`, epsilon 1e-12, 3 channels,
    /// q/k/v biases); the dropout is the larger of `hidden_dropout_prob` and
    /// `attention_probs_dropout_prob`.
    pub fn from_hf_json(json: &str) -> Result<Self, ImportError> {
        let hf: HfViTConfig = serde_json::from_str(json)
            .map_err(|e| ImportError::Config(format!("ViT config: {e}")))?;
        let num_labels = match (hf.num_labels, hf.id2label) {
            (Some(n), _) => n,
            (None, Some(labels)) => labels.len(),
            (None, None) => {
                return Err(ImportError::Config(
                    "ViT config has neither `num_labels` nor `id2label`".into(),
                ))
            }
        };
        let dropout = [hf.hidden_dropout_prob, hf.attention_probs_dropout_prob]
            .into_iter()
            .flatten()
            .fold(0.0, f64::max);
        let cfg = Self {
            hidden_size: hf.hidden_size,
            num_hidden_layers: hf.num_hidden_layers,
            num_attention_heads: hf.num_attention_heads,
            intermediate_size: hf.intermediate_size,
            hidden_act: match hf.hidden_act {
                Some(s) => Activation::from_hf(&s)?,
                None => Activation::Gelu,
            },
            layer_norm_eps: hf.layer_norm_eps.unwrap_or(1e-12),
            image_size: hf.image_size,
            patch_size: hf.patch_size,
            num_channels: hf.num_channels.unwrap_or(3),
            qkv_bias: hf.qkv_bias.unwrap_or(true),
            num_labels,
            dropout,
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// Number of patches.
    pub fn num_patches(&self) -> usize {
        (self.image_size / self.patch_size).pow(2)
    }

    /// A model with freshly initialised (lazily allocated) weights.
    pub fn init<B: Backend>(&self, device: &B::Device) -> ViTForImageClassification<B> {
        let d = self.hidden_size;
        let ln = || {
            LayerNormConfig::new(d)
                .with_epsilon(self.layer_norm_eps)
                .init(device)
        };
        let dropout = || DropoutConfig::new(self.dropout).init();
        let layers = (0..self.num_hidden_layers)
            .map(|_| ViTLayer {
                layernorm_before: ln(),
                attention: ViTAttention {
                    q_proj: LinearConfig::new(d, d)
                        .with_bias(self.qkv_bias)
                        .init(device),
                    k_proj: LinearConfig::new(d, d)
                        .with_bias(self.qkv_bias)
                        .init(device),
                    v_proj: LinearConfig::new(d, d)
                        .with_bias(self.qkv_bias)
                        .init(device),
                    o_proj: LinearConfig::new(d, d).init(device),
                    dropout: dropout(),
                    num_heads: self.num_attention_heads,
                },
                layernorm_after: ln(),
                mlp: ViTMlp {
                    fc1: LinearConfig::new(d, self.intermediate_size).init(device),
                    fc2: LinearConfig::new(self.intermediate_size, d).init(device),
                    activation: self.hidden_act,
                    dropout: dropout(),
                },
            })
            .collect();
        let std = burn::nn::Initializer::Normal {
            mean: 0.0,
            std: 0.02,
        };
        ViTForImageClassification {
            vit: ViTModel {
                embeddings: ViTEmbeddings {
                    cls_token: std.init([1, 1, d], device),
                    position_embeddings: std.init([1, self.num_patches() + 1, d], device),
                    patch_embeddings: ViTPatchEmbeddings {
                        projection: Conv2dConfig::new(
                            [self.num_channels, d],
                            [self.patch_size, self.patch_size],
                        )
                        .with_stride([self.patch_size, self.patch_size])
                        .init(device),
                    },
                    dropout: dropout(),
                },
                layers,
                layernorm: ln(),
            },
            classifier: LinearConfig::new(d, self.num_labels).init(device),
        }
    }
}

/// The keys of a HF `ViTConfig` this crate reads (others are ignored; `null` is absent).
#[derive(Deserialize)]
struct HfViTConfig {
    hidden_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    intermediate_size: usize,
    image_size: usize,
    patch_size: usize,
    #[serde(default)]
    num_channels: Option<usize>,
    #[serde(default)]
    hidden_act: Option<String>,
    #[serde(default)]
    layer_norm_eps: Option<f64>,
    #[serde(default)]
    qkv_bias: Option<bool>,
    #[serde(default)]
    num_labels: Option<usize>,
    #[serde(default)]
    id2label: Option<std::collections::BTreeMap<String, serde::de::IgnoredAny>>,
    #[serde(default)]
    hidden_dropout_prob: Option<f64>,
    #[serde(default)]
    attention_probs_dropout_prob: Option<f64>,
}

impl ModelConfig for ViTConfig {
    fn validate(&self) -> Result<(), ImportError> {
        if self.num_attention_heads == 0
            || !self.hidden_size.is_multiple_of(self.num_attention_heads)
        {
            return Err(ImportError::Config(format!(
                "hidden_size {} is not divisible by {} heads",
                self.hidden_size, self.num_attention_heads
            )));
        }
        if self.patch_size == 0 || !self.image_size.is_multiple_of(self.patch_size) {
            return Err(ImportError::Config(format!(
                "image_size {} is not a multiple of patch_size {}",
                self.image_size, self.patch_size
            )));
        }
        if self.num_labels == 0 || self.num_channels == 0 || self.intermediate_size == 0 {
            return Err(ImportError::Config(format!(
                "num_labels {}, num_channels {} and intermediate_size {} must be positive",
                self.num_labels, self.num_channels, self.intermediate_size
            )));
        }
        if !(0.0..1.0).contains(&self.dropout) || self.layer_norm_eps.is_nan() {
            return Err(ImportError::Config(format!(
                "dropout {} must be in [0, 1) and layer_norm_eps {} a number",
                self.dropout, self.layer_norm_eps
            )));
        }
        Ok(())
    }
}

/// Patch embedding (`vit.embeddings.patch_embeddings`).
#[derive(Module, Debug)]
pub struct ViTPatchEmbeddings<B: Backend> {
    /// Conv with kernel = stride = patch.
    pub projection: Conv2d<B>,
}

/// Embeddings (`vit.embeddings`): raw `Param`s for the class token and position embeddings.
#[derive(Module, Debug)]
pub struct ViTEmbeddings<B: Backend> {
    /// Class token [1, 1, d], expanded to [B, 1, d] and concatenated in front of the patches.
    pub cls_token: Param<Tensor<B, 3>>,
    /// Position embeddings [1, N + 1, d], added by broadcasting.
    pub position_embeddings: Param<Tensor<B, 3>>,
    /// Patch projection.
    pub patch_embeddings: ViTPatchEmbeddings<B>,
    /// Dropout.
    pub dropout: Dropout,
}

impl<B: Backend> ViTEmbeddings<B> {
    /// Images [B, C, H, W] -> tokens [B, N + 1, d].
    pub fn forward(&self, images: Tensor<B, 4>) -> Tensor<B, 3> {
        let x = self.patch_embeddings.projection.forward(images);
        let [b, d, h, w] = x.dims();
        let x = x.reshape([b, d, h * w]).swap_dims(1, 2);
        let cls = self.cls_token.val().expand([b, 1, d]);
        let x = Tensor::cat(vec![cls, x], 1) + self.position_embeddings.val();
        self.dropout.forward(x)
    }
}

/// Self-attention (`vit.layers.N.attention`).
#[derive(Module, Debug)]
pub struct ViTAttention<B: Backend> {
    /// Query.
    pub q_proj: Linear<B>,
    /// Key.
    pub k_proj: Linear<B>,
    /// Value.
    pub v_proj: Linear<B>,
    /// Output.
    pub o_proj: Linear<B>,
    /// Dropout on attention probabilities.
    pub dropout: Dropout,
    /// Number of heads.
    pub num_heads: usize,
}

impl<B: Backend> ViTAttention<B> {
    /// [B, T, d] -> [B, T, d].
    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let q = self.q_proj.forward(x.clone());
        let k = self.k_proj.forward(x.clone());
        let v = self.v_proj.forward(x);
        self.o_proj.forward(crate::block::attention(
            q,
            k,
            v,
            self.num_heads,
            false,
            &self.dropout,
        ))
    }
}

/// MLP (`vit.layers.N.mlp`).
#[derive(Module, Debug)]
pub struct ViTMlp<B: Backend> {
    /// Up projection.
    pub fc1: Linear<B>,
    /// Down projection.
    pub fc2: Linear<B>,
    /// Activation.
    pub activation: Activation,
    /// Dropout.
    pub dropout: Dropout,
}

/// Encoder layer (`vit.layers.N`), pre-norm.
#[derive(Module, Debug)]
pub struct ViTLayer<B: Backend> {
    /// Norm before attention.
    pub layernorm_before: LayerNorm<B>,
    /// Attention.
    pub attention: ViTAttention<B>,
    /// Norm before the MLP.
    pub layernorm_after: LayerNorm<B>,
    /// MLP.
    pub mlp: ViTMlp<B>,
}

impl<B: Backend> ViTLayer<B> {
    /// [B, T, d] -> [B, T, d].
    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let a = self
            .attention
            .forward(self.layernorm_before.forward(x.clone()));
        let x = x + self.mlp.dropout.forward(a);
        let m = &self.mlp;
        let normed = self.layernorm_after.forward(x.clone());
        crate::block::mlp_residual(x, normed, &m.fc1, &m.activation, &m.fc2, &m.dropout)
    }
}

/// The ViT body (`vit`).
#[derive(Module, Debug)]
pub struct ViTModel<B: Backend> {
    /// Embeddings.
    pub embeddings: ViTEmbeddings<B>,
    /// Encoder layers.
    pub layers: Vec<ViTLayer<B>>,
    /// Final LayerNorm.
    pub layernorm: LayerNorm<B>,
}

/// HF `ViTForImageClassification` (no pooler; classifier on the class token).
#[derive(Module, Debug)]
pub struct ViTForImageClassification<B: Backend> {
    /// The body.
    pub vit: ViTModel<B>,
    /// Classifier.
    pub classifier: Linear<B>,
}

impl<B: Backend> ViTForImageClassification<B> {
    /// Images [B, C, H, W] -> logits [B, labels].
    pub fn forward(&self, images: Tensor<B, 4>) -> Tensor<B, 2> {
        let mut x = self.vit.embeddings.forward(images);
        for layer in &self.vit.layers {
            x = layer.forward(x);
        }
        let x = self.vit.layernorm.forward(x);
        let [b, _, d] = x.dims();
        let cls = x.slice([0..b, 0..1, 0..d]).reshape([b, d]);
        self.classifier.forward(cls)
    }
}

pub(crate) struct ViTRules;

/// transformers 4 name of a transformers 5 ViT parameter name.
pub(crate) fn vit_legacy_name(name: &str) -> Option<String> {
    let rest = name.strip_prefix("vit.layers.")?;
    let (idx, tail) = rest.split_once('.')?;
    let tail = match tail {
        t if t.starts_with("attention.q_proj.") => {
            t.replacen("attention.q_proj", "attention.attention.query", 1)
        }
        t if t.starts_with("attention.k_proj.") => {
            t.replacen("attention.k_proj", "attention.attention.key", 1)
        }
        t if t.starts_with("attention.v_proj.") => {
            t.replacen("attention.v_proj", "attention.attention.value", 1)
        }
        t if t.starts_with("attention.o_proj.") => {
            t.replacen("attention.o_proj", "attention.output.dense", 1)
        }
        t if t.starts_with("mlp.fc1.") => t.replacen("mlp.fc1", "intermediate.dense", 1),
        t if t.starts_with("mlp.fc2.") => t.replacen("mlp.fc2", "output.dense", 1),
        t => t.to_string(),
    };
    Some(format!("vit.encoder.layer.{idx}.{tail}"))
}

impl NameRules for ViTRules {
    fn aliases(&self, name: &str) -> Vec<String> {
        let mut v = vec![name.to_string()];
        if let Some(old) = vit_legacy_name(name) {
            v.push(old);
        }
        v
    }
}

/// HF weights: a safetensors state dict with transformers 5 names or the transformers 4 names
/// (`vit.encoder.layer.N.attention.attention.query`, ...), or an ONNX export of
/// `ViTForImageClassification` (weights located through the graph).
impl<B: Backend> PretrainedModel<B> for ViTForImageClassification<B> {
    type Config = ViTConfig;
    type Batch = ImageBatch<B>;

    fn from_source<S: TensorSource>(
        config: &ViTConfig,
        source: &mut S,
        device: &B::Device,
        options: LoadOptions,
    ) -> Result<Self, ImportError> {
        config.validate()?;
        crate::load::load_params(config.init(device), source, &ViTRules, options)
    }

    fn onnx_weights(config: &ViTConfig, file: OnnxFile) -> Result<OnnxWeights, ImportError> {
        onnx_weights(config, file)
    }

    fn torch_params(&self) -> Vec<TorchParam> {
        crate::load::torch_params_with::<B, _, _>(self, &ViTRules)
    }

    /// Cross-entropy of each image's logits.
    fn loss_per_sample(&self, batch: impl Into<ImageBatch<B>>) -> Tensor<B, 1> {
        let ImageBatch { images, targets } = batch.into();
        cross_entropy_per_sample(self.forward(images), targets)
    }
}

/// Locate the ViT weights of `config` in an ONNX graph.
pub fn onnx_weights(config: &ViTConfig, file: OnnxFile) -> Result<OnnxWeights, ImportError> {
    use crate::onnx::{count_err, Assign, Slots};
    config.validate()?;
    let s = Slots::of(&file)?;
    let l = config.num_hidden_layers;
    let mut a = Assign::of_model(&config.init::<burn::backend::NdArray>(&Default::default()));
    if s.conv.len() != 1 {
        return Err(count_err(
            &file,
            "Conv nodes (patch projection)",
            1,
            s.conv.len(),
        ));
    }
    let (node, w, b) = &s.conv[0];
    let p = "vit.embeddings.patch_embeddings.projection";
    a.set(&format!("{p}.weight"), w, false)?;
    a.set_opt(&format!("{p}.bias"), b, node)?;
    for (op, name) in [
        ("Expand", "vit.embeddings.cls_token"),
        ("Add", "vit.embeddings.position_embeddings"),
    ] {
        let found: Vec<_> = s.raw.iter().filter(|(_, o, _)| o == op).collect();
        if found.len() != 1 {
            return Err(count_err(
                &file,
                &format!("{op} nodes with a rank-3 constant ({name})"),
                1,
                found.len(),
            ));
        }
        a.set(name, &found[0].2, false)?;
    }
    if s.ln.len() != 2 * l + 1 {
        return Err(count_err(
            &file,
            "LayerNormalization nodes",
            2 * l + 1,
            s.ln.len(),
        ));
    }
    if s.linear.len() != 6 * l + 1 {
        return Err(count_err(
            &file,
            "linear (Gemm/MatMul) nodes",
            6 * l + 1,
            s.linear.len(),
        ));
    }
    let set_ln = |a: &mut Assign, name: &str, k: usize| -> Result<(), ImportError> {
        let (node, scale, bias) = &s.ln[k];
        a.set(&format!("{name}.weight"), scale, false)?;
        a.set_opt(&format!("{name}.bias"), bias, node)
    };
    let set_lin = |a: &mut Assign, name: &str, k: usize, bias: bool| -> Result<(), ImportError> {
        let (node, w, b) = &s.linear[k];
        // torch Linear stores [out, in]; the graph uses [in, out].
        a.set(&format!("{name}.weight"), w, true)?;
        if bias {
            a.set_opt(&format!("{name}.bias"), b, node)?;
        }
        Ok(())
    };
    for i in 0..l {
        let p = format!("vit.layers.{i}");
        set_ln(&mut a, &format!("{p}.layernorm_before"), 2 * i)?;
        set_ln(&mut a, &format!("{p}.layernorm_after"), 2 * i + 1)?;
        for (k, m) in [
            "attention.q_proj",
            "attention.k_proj",
            "attention.v_proj",
            "attention.o_proj",
            "mlp.fc1",
            "mlp.fc2",
        ]
        .iter()
        .enumerate()
        {
            let bias = k == 3 || k >= 4 || config.qkv_bias;
            set_lin(&mut a, &format!("{p}.{m}"), 6 * i + k, bias)?;
        }
    }
    set_ln(&mut a, "vit.layernorm", 2 * l)?;
    set_lin(&mut a, "classifier", 6 * l, true)?;
    Ok(a.finish(file))
}
