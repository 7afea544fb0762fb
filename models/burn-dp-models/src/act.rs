//! Activation functions selectable by configuration.

use burn::module::{
    AutodiffModule, Content, Devices, EmptyRecord, Module, ModuleDisplay, ModuleDisplayDefault,
    ModuleMapper, ModuleVisitor,
};
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use serde::{Deserialize, Serialize};

use crate::error::ImportError;

/// Element-wise activation (no parameters).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Activation {
    /// Exact GELU, `x * Phi(x)` (HF `gelu`).
    Gelu,
    /// Tanh approximation of GELU (HF `gelu_new`, `gelu_pytorch_tanh`; GPT-2).
    GeluTanh,
    /// ReLU.
    Relu,
    /// SiLU (swish), `x * sigmoid(x)` (HF `silu`; the gate of Llama's SwiGLU MLP).
    Silu,
}

impl Activation {
    /// From a HF `hidden_act` / `activation_function` string.
    pub fn from_hf(s: &str) -> Result<Self, ImportError> {
        match s {
            "gelu" => Ok(Self::Gelu),
            "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast" => Ok(Self::GeluTanh),
            "relu" => Ok(Self::Relu),
            "silu" | "swish" => Ok(Self::Silu),
            other => Err(ImportError::Config(format!(
                "unsupported activation `{other}`"
            ))),
        }
    }

    /// Apply the activation.
    pub fn forward<B: Backend, const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        match self {
            // Composed from `erf` rather than `activation::gelu`: burn 0.21's default
            // `gelu_backward` (used by NdArray) is the derivative of the tanh approximation,
            // which is off by up to ~2e-4 relative to the exact GELU the forward computes (and
            // torch differentiates). Autodiff of `erf` is exact.
            Self::Gelu => {
                let cdf = x
                    .clone()
                    .div_scalar(std::f64::consts::SQRT_2)
                    .erf()
                    .add_scalar(1.0)
                    .mul_scalar(0.5);
                x * cdf
            }
            Self::GeluTanh => {
                let c = (2.0 / std::f64::consts::PI).sqrt();
                let inner =
                    (x.clone() + x.clone().powi_scalar(3).mul_scalar(0.044715)).mul_scalar(c);
                x.mul_scalar(0.5) * (inner.tanh() + 1.0)
            }
            Self::Relu => burn::tensor::activation::relu(x),
            Self::Silu => burn::tensor::activation::silu(x),
        }
    }
}

impl std::fmt::Display for Activation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{self:?}")
    }
}

impl<B: Backend> Module<B> for Activation {
    type Record = EmptyRecord;
    fn visit<V: ModuleVisitor<B>>(&self, _visitor: &mut V) {}
    fn map<M: ModuleMapper<B>>(self, _mapper: &mut M) -> Self {
        self
    }
    fn load_record(self, _record: Self::Record) -> Self {
        self
    }
    fn into_record(self) -> Self::Record {
        EmptyRecord::new()
    }
    fn to_device(self, _: &B::Device) -> Self {
        self
    }
    fn fork(self, _: &B::Device) -> Self {
        self
    }
    fn collect_devices(&self, devices: Devices<B>) -> Devices<B> {
        devices
    }
}

impl<B: AutodiffBackend> AutodiffModule<B> for Activation {
    type InnerModule = Activation;
    fn valid(&self) -> Self::InnerModule {
        *self
    }
    fn from_inner(module: Self::InnerModule) -> Self {
        module
    }
}

impl ModuleDisplayDefault for Activation {
    fn content(&self, content: Content) -> Option<Content> {
        content.add_formatted(&self.to_string()).optional()
    }
}

impl ModuleDisplay for Activation {}
