//! The ResNet modules, with torchvision's field names.

use burn::module::{Module, Param};
use burn::nn::conv::Conv2d;
use burn::nn::pool::{AdaptiveAvgPool2d, MaxPool2d};
use burn::nn::{GroupNorm, Linear};
use burn::prelude::*;
use burn::tensor::activation::relu;

use super::BN_EPS;

/// BatchNorm in eval mode with frozen statistics:
/// `y = (x - running_mean) / sqrt(running_var + eps) * weight + bias`.
///
/// `weight` and `bias` are trainable parameters entering by broadcasting ([1, C, 1, 1]) element-wise
/// multiplication / addition; the running statistics are constants (not parameters).
#[derive(Module, Debug)]
pub struct FrozenBatchNorm<B: Backend> {
    /// gamma [C].
    pub weight: Param<Tensor<B, 1>>,
    /// beta [C].
    pub bias: Param<Tensor<B, 1>>,
    /// Running mean [C] (constant).
    pub running_mean: Tensor<B, 1>,
    /// Running variance [C] (constant).
    pub running_var: Tensor<B, 1>,
    /// Epsilon.
    pub eps: f64,
}

impl<B: Backend> FrozenBatchNorm<B> {
    /// gamma = 1, beta = 0, mean 0, var 1.
    pub fn new(channels: usize, device: &B::Device) -> Self {
        Self {
            weight: Param::from_tensor(Tensor::ones([channels], device)),
            bias: Param::from_tensor(Tensor::zeros([channels], device)),
            running_mean: Tensor::zeros([channels], device),
            running_var: Tensor::ones([channels], device),
            eps: BN_EPS,
        }
    }

    /// Normalise with the frozen statistics.
    ///
    /// # Shapes
    /// - x `[B, C, H, W]` -> `[B, C, H, W]`
    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let c = self.running_mean.dims()[0];
        let mean = self.running_mean.clone().reshape([1, c, 1, 1]);
        let inv_std = self
            .running_var
            .clone()
            .add_scalar(self.eps)
            .sqrt()
            .recip()
            .reshape([1, c, 1, 1]);
        let xhat = (x - mean) * inv_std;
        xhat * self.weight.val().reshape([1, c, 1, 1]) + self.bias.val().reshape([1, c, 1, 1])
    }
}

/// The normalisation layer after a convolution (absent with [`super::Norm::Folded`]).
#[derive(Module, Debug)]
pub enum NormLayer<B: Backend> {
    /// Frozen BatchNorm.
    Frozen(FrozenBatchNorm<B>),
    /// GroupNorm.
    Group(GroupNorm<B>),
}

impl<B: Backend> NormLayer<B> {
    /// Apply the normalisation.
    ///
    /// # Shapes
    /// - x `[B, C, H, W]` -> `[B, C, H, W]`
    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        match self {
            Self::Frozen(bn) => bn.forward(x),
            Self::Group(gn) => gn.forward(x),
        }
    }
}

fn norm<B: Backend>(n: &Option<NormLayer<B>>, x: Tensor<B, 4>) -> Tensor<B, 4> {
    match n {
        Some(n) => n.forward(x),
        None => x,
    }
}

/// Basic block (`layerS.I`).
#[derive(Module, Debug)]
pub struct BasicBlock<B: Backend> {
    /// 3x3 conv (stride).
    pub conv1: Conv2d<B>,
    /// Norm.
    pub bn1: Option<NormLayer<B>>,
    /// 3x3 conv.
    pub conv2: Conv2d<B>,
    /// Norm.
    pub bn2: Option<NormLayer<B>>,
    /// Projection shortcut (`downsample.0` conv, `downsample.1` norm).
    pub downsample: Option<(Conv2d<B>, Option<NormLayer<B>>)>,
}

/// Bottleneck block (`layerS.I`, torchvision v1.5: stride on the 3x3 conv).
#[derive(Module, Debug)]
pub struct Bottleneck<B: Backend> {
    /// 1x1 conv.
    pub conv1: Conv2d<B>,
    /// Norm.
    pub bn1: Option<NormLayer<B>>,
    /// 3x3 conv (stride).
    pub conv2: Conv2d<B>,
    /// Norm.
    pub bn2: Option<NormLayer<B>>,
    /// 1x1 conv (expansion).
    pub conv3: Conv2d<B>,
    /// Norm.
    pub bn3: Option<NormLayer<B>>,
    /// Projection shortcut (`downsample.0` conv, `downsample.1` norm).
    pub downsample: Option<(Conv2d<B>, Option<NormLayer<B>>)>,
}

/// A residual block.
#[derive(Module, Debug)]
#[allow(clippy::large_enum_variant)]
pub enum Block<B: Backend> {
    /// Basic block.
    Basic(BasicBlock<B>),
    /// Bottleneck block.
    Bottleneck(Bottleneck<B>),
}

impl<B: Backend> Block<B> {
    /// Apply the block.
    ///
    /// # Shapes
    /// - x `[B, Cin, H, W]` -> `[B, Cout, H', W']`
    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        self.forward_with_relu(x, &mut relu)
    }

    /// [`Block::forward`] with each ReLU replaced by `activation`, called on the
    /// pre-activations in execution order (see [`ResNet::forward_with_relu`]).
    pub fn forward_with_relu(
        &self,
        x: Tensor<B, 4>,
        activation: &mut impl FnMut(Tensor<B, 4>) -> Tensor<B, 4>,
    ) -> Tensor<B, 4> {
        let (out, downsample) = match self {
            Self::Basic(b) => {
                let y = activation(norm(&b.bn1, b.conv1.forward(x.clone())));
                (norm(&b.bn2, b.conv2.forward(y)), &b.downsample)
            }
            Self::Bottleneck(b) => {
                let y = activation(norm(&b.bn1, b.conv1.forward(x.clone())));
                let y = activation(norm(&b.bn2, b.conv2.forward(y)));
                (norm(&b.bn3, b.conv3.forward(y)), &b.downsample)
            }
        };
        let identity = match downsample {
            Some((conv, n)) => norm(n, conv.forward(x)),
            None => x,
        };
        activation(out + identity)
    }
}

/// torchvision ResNet.
#[derive(Module, Debug)]
pub struct ResNet<B: Backend> {
    /// Stem 7x7 conv, stride 2.
    pub conv1: Conv2d<B>,
    /// Stem norm.
    pub bn1: Option<NormLayer<B>>,
    /// 3x3 max pool, stride 2.
    pub maxpool: MaxPool2d,
    /// Stage 1.
    pub layer1: Vec<Block<B>>,
    /// Stage 2.
    pub layer2: Vec<Block<B>>,
    /// Stage 3.
    pub layer3: Vec<Block<B>>,
    /// Stage 4.
    pub layer4: Vec<Block<B>>,
    /// Stages beyond four (custom depths), named `layer5`, ... in torch.
    pub extra_layers: Vec<Vec<Block<B>>>,
    /// Global average pool.
    pub avgpool: AdaptiveAvgPool2d,
    /// Classifier.
    pub fc: Linear<B>,
}

impl<B: Backend> ResNet<B> {
    /// Classify images.
    ///
    /// # Shapes
    /// - x `[B, C, H, W]` -> logits `[B, classes]`
    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 2> {
        self.forward_with_relu(x, &mut relu)
    }

    /// [`ResNet::forward`] with every ReLU replaced by `activation`, which is called on each
    /// pre-activation in execution order (the stem, then per block its inner ReLUs and the one
    /// after the residual sum). With `relu` it is `forward`; other closures inspect or perturb
    /// activations, e.g. to follow another implementation's side of a ReLU whose input is
    /// within rounding of zero.
    ///
    /// # Shapes
    /// - x `[B, C, H, W]` -> logits `[B, classes]`; `activation` maps `[B, C', H', W']` to the
    ///   same shape
    pub fn forward_with_relu(
        &self,
        x: Tensor<B, 4>,
        activation: &mut impl FnMut(Tensor<B, 4>) -> Tensor<B, 4>,
    ) -> Tensor<B, 2> {
        let mut x = activation(norm(&self.bn1, self.conv1.forward(x)));
        x = self.maxpool.forward(x);
        for stage in self.stages() {
            for block in stage {
                x = block.forward_with_relu(x, activation);
            }
        }
        let x = self.avgpool.forward(x);
        let [b, c, _, _] = x.dims();
        self.fc.forward(x.reshape([b, c]))
    }

    /// The stages in order (`layer1` .. `layer4`, then the extra ones).
    pub fn stages(&self) -> impl Iterator<Item = &Vec<Block<B>>> {
        [&self.layer1, &self.layer2, &self.layer3, &self.layer4]
            .into_iter()
            .chain(self.extra_layers.iter())
    }
}
