//! torchvision ResNet (BasicBlock / Bottleneck) with torchvision module names.
//!
//! - [`config`]: the hyper-parameters ([`ResNetConfig`], read from JSON with serde).
//! - [`modules`]: the burn modules ([`ResNet`], its blocks and normalisation layers).
//! - [`import`]: loading torchvision weights from safetensors and ONNX (BatchNorm folding).

mod config;
mod import;
mod modules;

pub use config::{BlockKind, Norm, ResNetConfig};
pub use import::fold_batchnorm;
pub use modules::{BasicBlock, Block, Bottleneck, FrozenBatchNorm, NormLayer, ResNet};

/// BatchNorm epsilon of torchvision.
pub const BN_EPS: f64 = 1e-5;
