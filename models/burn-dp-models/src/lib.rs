//! GPT-2, ResNet, ViT and Llama-family decoders written with ordinary burn modules, with weight
//! import from safetensors (HF / torchvision names) and from ONNX files exported by PyTorch, and
//! LoRA adapters.
//!
//! Every model keeps the batch dimension at dim 0 of every activation and lets parameters enter
//! the computation only through burn `nn` modules (or raw `Param`s combined element-wise with
//! the activations), as the per-sample gradient engine of `burn-dp` requires.

#![warn(missing_docs)]

pub mod act;
mod block;
pub mod error;
pub mod gpt2;
pub mod llama;
pub mod load;
pub mod lora;
pub mod loss;
pub mod onnx;
pub mod pretrained;
pub mod resnet;
pub mod st;
pub mod vit;

pub use act::Activation;
pub use error::ImportError;
pub use gpt2::{Gpt2, Gpt2Config};
pub use llama::{Llama, LlamaConfig, ProjectionBias};
pub use load::{
    count_params, param_names, Layout, LoadOptions, RawTensor, TensorSource, TorchParam,
};
pub use lora::{adapters_policy, is_adapter_param, LoraConfig, LoraError, LoraLinear};
pub use loss::{cross_entropy_per_sample, lm_loss_per_sample};
pub use onnx::{OnnxFile, OnnxWeights};
pub use pretrained::{ImageBatch, ModelConfig, PretrainedModel, TokenBatch};
pub use resnet::{BlockKind, Norm, ResNet, ResNetConfig};
pub use st::{save_state_dict, SafetensorsFile};
pub use vit::{ViTConfig, ViTForImageClassification};

#[cfg(test)]
mod tests;
