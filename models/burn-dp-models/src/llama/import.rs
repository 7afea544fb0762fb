//! Loading HF `LlamaForCausalLM` / `Qwen2ForCausalLM` state dicts and ONNX exports, and the
//! per-sample loss.

use burn::prelude::*;

use super::config::LlamaConfig;
use super::model::Llama;
use crate::error::ImportError;
use crate::load::{Layout, LoadOptions, NameRules, TensorSource, TorchParam};
use crate::onnx::{OnnxFile, OnnxWeights};
use crate::pretrained::{ModelConfig, PretrainedModel, TokenBatch};

/// Torch names and layouts of a Llama model.
pub(crate) struct LlamaRules;

impl NameRules for LlamaRules {
    fn layout(&self, name: &str, is_linear: bool) -> Layout {
        // Every projection (a `LoraLinear`, whose base weight is no burn `Linear`), the untied
        // head and the adapters are torch `Linear`s, stored `[out, in]`.
        if is_linear || name.ends_with("_proj.weight") {
            Layout::Transposed
        } else {
            Layout::Same
        }
    }
    fn aliases(&self, name: &str) -> Vec<String> {
        let mut v = vec![name.to_string()];
        if let Some(rest) = name.strip_prefix("model.") {
            // A bare `LlamaModel` state dict has no `model.` prefix.
            v.push(rest.to_string());
        }
        v
    }
}

/// HF weights: a `LlamaForCausalLM` / `Qwen2ForCausalLM` state dict (or a bare `LlamaModel`
/// one, without the `model.` prefix); a tied head is stored once, as `model.embed_tokens.weight`;
/// or an ONNX export of the language model (weights located through the graph).
impl<B: Backend> PretrainedModel<B> for Llama<B> {
    type Config = LlamaConfig;
    type Batch = TokenBatch<B>;

    /// Load from any source of torch-named tensors. Adapters (a model built with
    /// [`Llama::with_lora`]) are not in a base checkpoint: load the base, then add adapters,
    /// then [`crate::lora::adapters::load_adapters`]. A tied configuration refuses a checkpoint
    /// whose `lm_head.weight` differs from its token embedding (an untied model: load it with
    /// `with_tied_head(false)`).
    fn from_source<S: TensorSource>(
        config: &LlamaConfig,
        source: &mut S,
        device: &B::Device,
        options: LoadOptions,
    ) -> Result<Self, ImportError> {
        config.validate()?;
        if config.tie_word_embeddings {
            crate::load::check_tied_head(
                source,
                &["model.embed_tokens.weight", "embed_tokens.weight"],
                "LlamaConfig",
            )?;
        }
        crate::load::load_params(config.init(device), source, &LlamaRules, options)
    }

    /// Locate the weights in an export of `LlamaForCausalLM` / `Qwen2ForCausalLM` by
    /// `torch.onnx.export(..., dynamo=True)` (opset 18; weights inside the file). The weights
    /// are found by the graph's structure (one embedding `Gather`, `2L + 1` RMSNorm scales,
    /// `7L + 1` linear nodes, each projection reading the norm it should), not by name: the
    /// exporter stores the projections transposed under generated names and a tied head once,
    /// as `lm_head.weight`. A graph of another shape (another model, layer count, head tying or
    /// bias setting than `config`) is a typed [`ImportError::OnnxLayout`] naming the node and
    /// what was expected; another width or head count an [`ImportError::ShapeMismatch`] naming
    /// the weight.
    fn onnx_weights(config: &LlamaConfig, file: OnnxFile) -> Result<OnnxWeights, ImportError> {
        super::onnx::onnx_weights(config, file)
    }

    fn torch_params(&self) -> Vec<TorchParam> {
        crate::load::torch_params_with::<B, _, _>(self, &LlamaRules)
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
