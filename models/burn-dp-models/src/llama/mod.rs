//! Llama-family decoders (HF `LlamaForCausalLM`, `Qwen2ForCausalLM`): RMSNorm, rotary
//! positions, grouped-query attention, SwiGLU MLP, optional tied embeddings; every linear layer
//! may carry a LoRA adapter ([`crate::lora`]).
//!
//! Configurations for the published SmolLM2-135M, Qwen2.5-0.5B and TinyLlama-1.1B shapes
//! ([`LlamaConfig::smollm2_135m`], …), import of HF safetensors state dicts and of ONNX exports
//! (`torch.onnx.export(..., dynamo=True)`) through [`PretrainedModel`](crate::PretrainedModel),
//! and the per-sample language-model loss.

mod config;
mod import;
mod model;
mod modules;
mod onnx;

pub use config::{LlamaConfig, ProjectionBias};
pub use model::{Llama, LlamaModel, LLAMA_LINEARS};
pub use modules::{LlamaAttention, LlamaDecoderLayer, LlamaMlp, Rotary};

#[cfg(test)]
mod tests;
