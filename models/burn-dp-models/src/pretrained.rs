//! One interface for every model of the crate: its configuration, how its pretrained weights
//! load (safetensors, ONNX, any [`TensorSource`]) and its per-sample loss.

use std::path::Path;

use burn::module::Module;
use burn::prelude::*;

use crate::error::ImportError;
use crate::load::{LoadOptions, TensorSource, TorchParam};
use crate::onnx::{OnnxFile, OnnxWeights};
use crate::st::SafetensorsFile;

/// A model configuration that can be checked before anything is built from it.
pub trait ModelConfig {
    /// A typed [`ImportError::Config`] when the hyper-parameters are inconsistent (e.g. a width
    /// not divisible by the number of heads); every loader calls it first.
    fn validate(&self) -> Result<(), ImportError>;
}

/// A model whose weights load from PyTorch / HF checkpoints, with its per-sample loss.
///
/// Every loader validates the configuration first, then streams the weights tensor by tensor:
/// a weight the model needs and the source lacks is an [`ImportError::MissingWeight`], one of
/// another shape an [`ImportError::ShapeMismatch`], both naming the torch weight. Nothing
/// panics on a bad file or configuration.
///
/// With the trait in scope: `Gpt2::<B>::from_safetensors(&Gpt2Config::small(), path, &device,
/// LoadOptions::default())?`, then `model.loss_per_sample(ids)` for token ids `[B, T]`, or
/// `resnet.loss_per_sample((images, targets))`.
pub trait PretrainedModel<B: Backend>: Module<B> + Sized {
    /// The hyper-parameters.
    type Config: ModelConfig;
    /// What one per-sample loss evaluation reads ([`ImageBatch`] or [`TokenBatch`]).
    type Batch;

    /// Load from any source of torch-named tensors (validating `config` first).
    fn from_source<S: TensorSource>(
        config: &Self::Config,
        source: &mut S,
        device: &B::Device,
        options: LoadOptions,
    ) -> Result<Self, ImportError>;

    /// Locate the weights of `config` in an ONNX graph, under their torch names.
    fn onnx_weights(config: &Self::Config, file: OnnxFile) -> Result<OnnxWeights, ImportError>;

    /// Every float parameter with its torch name and layout (how the torch tensor of the state
    /// dict relates to the burn parameter), in visiting order.
    fn torch_params(&self) -> Vec<TorchParam>;

    /// The loss of every sample of the batch, `[B]` (the batch loss is their sum).
    ///
    /// # Shapes
    /// - images `[B, C, H, W]` and targets `[B]`, or token ids `[B, T]` (and position ids
    ///   `[B, T]`) -> `[B]`
    fn loss_per_sample(&self, batch: impl Into<Self::Batch>) -> Tensor<B, 1>;

    /// Load a safetensors state dict (torch / HF names), memory-mapped and streamed tensor by
    /// tensor.
    fn from_safetensors(
        config: &Self::Config,
        path: impl AsRef<Path>,
        device: &B::Device,
        options: LoadOptions,
    ) -> Result<Self, ImportError> {
        config.validate()?;
        let mut file = SafetensorsFile::open(path)?;
        Self::from_source(config, &mut file, device, options)
    }

    /// Load the weights of an ONNX export (located through the graph; see
    /// [`PretrainedModel::onnx_weights`]).
    fn from_onnx(
        config: &Self::Config,
        path: impl AsRef<Path>,
        device: &B::Device,
        options: LoadOptions,
    ) -> Result<Self, ImportError> {
        config.validate()?;
        let mut weights = Self::onnx_weights(config, OnnxFile::open(path)?)?;
        Self::from_source(config, &mut weights, device, options)
    }
}

/// Images with their class labels: the batch of the image classifiers.
#[derive(Debug, Clone)]
pub struct ImageBatch<B: Backend> {
    /// Images `[B, C, H, W]`.
    pub images: Tensor<B, 4>,
    /// Class indices `[B]`.
    pub targets: Tensor<B, 1, Int>,
}

impl<B: Backend> From<(Tensor<B, 4>, Tensor<B, 1, Int>)> for ImageBatch<B> {
    fn from((images, targets): (Tensor<B, 4>, Tensor<B, 1, Int>)) -> Self {
        Self { images, targets }
    }
}

/// Token ids, with position ids when they are not `0..T` for every sample: the batch of the
/// language models.
#[derive(Debug, Clone)]
pub struct TokenBatch<B: Backend> {
    /// Token ids `[B, T]`.
    pub input_ids: Tensor<B, 2, Int>,
    /// Position ids `[B, T]`; `None` is `0..T` for every sample.
    pub position_ids: Option<Tensor<B, 2, Int>>,
}

impl<B: Backend> From<Tensor<B, 2, Int>> for TokenBatch<B> {
    fn from(input_ids: Tensor<B, 2, Int>) -> Self {
        Self {
            input_ids,
            position_ids: None,
        }
    }
}

impl<B: Backend> From<(Tensor<B, 2, Int>, Tensor<B, 2, Int>)> for TokenBatch<B> {
    fn from((input_ids, position_ids): (Tensor<B, 2, Int>, Tensor<B, 2, Int>)) -> Self {
        Self {
            input_ids,
            position_ids: Some(position_ids),
        }
    }
}
