//! GPT-2, ResNet, ViT and Llama-family decoders written with ordinary burn modules, with weight
//! import from safetensors (HF / torchvision names) and from ONNX files exported by PyTorch, and
//! LoRA adapters.
//!
//! Every model keeps the batch dimension at dim 0 of every activation and lets parameters enter
//! the computation only through burn `nn` modules (or raw `Param`s combined element-wise with
//! the activations), as the per-sample gradient engine of `burn-dp` requires.

#![warn(missing_docs)]

mod act;
mod block;
mod error;
mod gpt2;
mod llama;
mod load;
mod lora;
mod loss;
mod onnx;
mod pretrained;
mod resnet;
mod st;
mod vit;

pub use act::Activation;
pub use error::ImportError;
pub use gpt2::{Gpt2, Gpt2Attention, Gpt2Block, Gpt2Config, Gpt2Mlp, Gpt2Transformer};
pub use llama::{
    Llama, LlamaAttention, LlamaConfig, LlamaDecoderLayer, LlamaMlp, LlamaModel, ProjectionBias,
    Rotary, LLAMA_LINEARS,
};
pub use load::{
    count_params, param_names, Layout, LoadOptions, RawTensor, TensorSource, TorchParam,
};
/// Saving, loading and merging LoRA adapters on their own (PEFT's layout).
pub use lora::adapters;
pub use lora::{
    adapters_policy, is_adapter_param, LoraConfig, LoraError, LoraLinear, ADAPTER_SUFFIXES,
};
pub use loss::{cross_entropy_per_sample, lm_loss_per_sample};
pub use onnx::{ConstRef, OnnxFile, OnnxWeights, Slot};
pub use pretrained::{ImageBatch, ModelConfig, PretrainedModel, TokenBatch};
pub use resnet::{
    fold_batchnorm, BasicBlock, Block, BlockKind, Bottleneck, FrozenBatchNorm, Norm, NormLayer,
    ResNet, ResNetConfig,
};
pub use st::{save_state_dict, IntTensor, SafetensorsFile};
pub use vit::{
    ViTAttention, ViTConfig, ViTEmbeddings, ViTForImageClassification, ViTLayer, ViTMlp, ViTModel,
    ViTPatchEmbeddings,
};

#[cfg(test)]
mod tests;
