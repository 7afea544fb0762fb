//! ResNet hyper-parameters.

use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::pool::{AdaptiveAvgPool2dConfig, MaxPool2dConfig};
use burn::nn::{GroupNormConfig, LinearConfig, PaddingConfig2d};
use burn::prelude::*;
use serde::{Deserialize, Serialize};

use super::modules::{BasicBlock, Block, Bottleneck, FrozenBatchNorm, NormLayer, ResNet};
use crate::error::ImportError;
use crate::pretrained::ModelConfig;

/// Which normalisation the ResNet uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Norm {
    /// BatchNorm with frozen (eval) statistics; gamma/beta trainable, running stats constant.
    FrozenBatchNorm,
    /// GroupNorm with `groups` groups (the DP-trainable replacement of BatchNorm).
    GroupNorm {
        /// Number of groups.
        groups: usize,
    },
    /// BatchNorm folded into the preceding convolution's weight and (new) bias.
    Folded,
}

/// Residual block type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum BlockKind {
    /// Two 3x3 convolutions (ResNet-18/34), expansion 1.
    #[serde(alias = "basic", alias = "BasicBlock")]
    Basic,
    /// 1x1, 3x3, 1x1 convolutions (ResNet-50/101/152), expansion 4.
    #[serde(alias = "bottleneck")]
    Bottleneck,
}

impl BlockKind {
    /// Channel expansion of the block.
    pub fn expansion(&self) -> usize {
        match self {
            Self::Basic => 1,
            Self::Bottleneck => 4,
        }
    }
}

/// ResNet hyper-parameters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResNetConfig {
    /// Block type.
    pub block: BlockKind,
    /// Blocks per stage.
    pub layers: Vec<usize>,
    /// Planes per stage (the stem has `widths[0]` channels, as torchvision's 64).
    pub widths: Vec<usize>,
    /// Output classes.
    pub num_classes: usize,
    /// Input channels.
    pub in_channels: usize,
    /// Normalisation.
    pub norm: Norm,
}

/// The JSON form read by [`ResNetConfig::from_json`]: torchvision's architecture, without the
/// normalisation (chosen with [`ResNetConfig::with_norm`]). Other keys are ignored.
#[derive(Deserialize)]
struct TorchvisionJson {
    block: BlockKind,
    layers: Vec<usize>,
    widths: Vec<usize>,
    num_classes: usize,
    #[serde(default = "three_channels")]
    in_channels: usize,
}

fn three_channels() -> usize {
    3
}

impl ResNetConfig {
    /// Custom ResNet.
    pub fn new(
        block: BlockKind,
        layers: Vec<usize>,
        widths: Vec<usize>,
        num_classes: usize,
    ) -> Self {
        Self {
            block,
            layers,
            widths,
            num_classes,
            in_channels: 3,
            norm: Norm::FrozenBatchNorm,
        }
    }
    fn standard(block: BlockKind, layers: [usize; 4], num_classes: usize) -> Self {
        Self::new(block, layers.to_vec(), vec![64, 128, 256, 512], num_classes)
    }
    /// ResNet-18.
    pub fn resnet18(num_classes: usize) -> Self {
        Self::standard(BlockKind::Basic, [2, 2, 2, 2], num_classes)
    }
    /// ResNet-34.
    pub fn resnet34(num_classes: usize) -> Self {
        Self::standard(BlockKind::Basic, [3, 4, 6, 3], num_classes)
    }
    /// ResNet-50.
    pub fn resnet50(num_classes: usize) -> Self {
        Self::standard(BlockKind::Bottleneck, [3, 4, 6, 3], num_classes)
    }
    /// ResNet-101.
    pub fn resnet101(num_classes: usize) -> Self {
        Self::standard(BlockKind::Bottleneck, [3, 4, 23, 3], num_classes)
    }
    /// ResNet-152.
    pub fn resnet152(num_classes: usize) -> Self {
        Self::standard(BlockKind::Bottleneck, [3, 8, 36, 3], num_classes)
    }
    /// Select the normalisation.
    pub fn with_norm(mut self, norm: Norm) -> Self {
        self.norm = norm;
        self
    }

    /// Read the fixture / JSON form `{"block": "basic"|"bottleneck", "layers": [..],
    /// "widths": [..], "num_classes": N}` (optionally `"in_channels"`, default 3; other keys are
    /// ignored). The normalisation is [`Norm::FrozenBatchNorm`]; choose another with
    /// [`ResNetConfig::with_norm`].
    pub fn from_json(json: &str) -> Result<Self, ImportError> {
        let j: TorchvisionJson = serde_json::from_str(json)
            .map_err(|e| ImportError::Config(format!("ResNet config: {e}")))?;
        let cfg = Self {
            in_channels: j.in_channels,
            ..Self::new(j.block, j.layers, j.widths, j.num_classes)
        };
        cfg.validate()?;
        Ok(cfg)
    }

    pub(crate) fn norm_layer<B: Backend>(
        &self,
        channels: usize,
        device: &B::Device,
    ) -> Option<NormLayer<B>> {
        match self.norm {
            Norm::FrozenBatchNorm => {
                Some(NormLayer::Frozen(FrozenBatchNorm::new(channels, device)))
            }
            Norm::GroupNorm { groups } => Some(NormLayer::Group(
                GroupNormConfig::new(groups, channels).init(device),
            )),
            Norm::Folded => None,
        }
    }

    fn conv<B: Backend>(
        &self,
        cin: usize,
        cout: usize,
        k: usize,
        stride: usize,
        device: &B::Device,
    ) -> Conv2d<B> {
        let p = k / 2;
        Conv2dConfig::new([cin, cout], [k, k])
            .with_stride([stride, stride])
            .with_padding(PaddingConfig2d::Explicit(p, p, p, p))
            .with_bias(self.norm == Norm::Folded)
            .init(device)
    }

    /// A model with freshly initialised (lazily allocated) weights; BatchNorm statistics are
    /// mean 0 / variance 1.
    pub fn init<B: Backend>(&self, device: &B::Device) -> ResNet<B> {
        let stem = self.widths[0];
        let e = self.block.expansion();
        let mut inplanes = stem;
        let mut stages: Vec<Vec<Block<B>>> = Vec::new();
        for (s, (&n, &planes)) in self.layers.iter().zip(&self.widths).enumerate() {
            let stride = if s == 0 { 1 } else { 2 };
            let mut blocks = Vec::new();
            for i in 0..n {
                let st = if i == 0 { stride } else { 1 };
                let downsample = (i == 0 && (st != 1 || inplanes != planes * e)).then(|| {
                    (
                        self.conv(inplanes, planes * e, 1, st, device),
                        self.norm_layer(planes * e, device),
                    )
                });
                let block = match self.block {
                    BlockKind::Basic => Block::Basic(BasicBlock {
                        conv1: self.conv(inplanes, planes, 3, st, device),
                        bn1: self.norm_layer(planes, device),
                        conv2: self.conv(planes, planes, 3, 1, device),
                        bn2: self.norm_layer(planes, device),
                        downsample,
                    }),
                    BlockKind::Bottleneck => Block::Bottleneck(Bottleneck {
                        conv1: self.conv(inplanes, planes, 1, 1, device),
                        bn1: self.norm_layer(planes, device),
                        conv2: self.conv(planes, planes, 3, st, device),
                        bn2: self.norm_layer(planes, device),
                        conv3: self.conv(planes, planes * e, 1, 1, device),
                        bn3: self.norm_layer(planes * e, device),
                        downsample,
                    }),
                };
                blocks.push(block);
                inplanes = planes * e;
            }
            stages.push(blocks);
        }
        let mut stages = stages.into_iter();
        ResNet {
            conv1: Conv2dConfig::new([self.in_channels, stem], [7, 7])
                .with_stride([2, 2])
                .with_padding(PaddingConfig2d::Explicit(3, 3, 3, 3))
                .with_bias(self.norm == Norm::Folded)
                .init(device),
            bn1: self.norm_layer(stem, device),
            maxpool: MaxPool2dConfig::new([3, 3])
                .with_strides([2, 2])
                .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
                .init(),
            layer1: stages.next().unwrap_or_default(),
            layer2: stages.next().unwrap_or_default(),
            layer3: stages.next().unwrap_or_default(),
            layer4: stages.next().unwrap_or_default(),
            extra_layers: stages.collect(),
            avgpool: AdaptiveAvgPool2dConfig::new([1, 1]).init(),
            fc: LinearConfig::new(inplanes, self.num_classes).init(device),
        }
    }

    /// torch names of the convolutions, in execution order (stem, then per block conv1, conv2,
    /// [conv3], [downsample.0]).
    pub fn conv_names(&self) -> Vec<String> {
        let mut names = vec!["conv1".to_string()];
        let e = self.block.expansion();
        let mut inplanes = self.widths.first().copied().unwrap_or(0);
        for (s, (&n, &planes)) in self.layers.iter().zip(&self.widths).enumerate() {
            for i in 0..n {
                let st = if i == 0 && s > 0 { 2 } else { 1 };
                let p = format!("layer{}.{}", s + 1, i);
                let k = match self.block {
                    BlockKind::Basic => 2,
                    BlockKind::Bottleneck => 3,
                };
                for c in 1..=k {
                    names.push(format!("{p}.conv{c}"));
                }
                if i == 0 && (st != 1 || inplanes != planes * e) {
                    names.push(format!("{p}.downsample.0"));
                }
                inplanes = planes * e;
            }
        }
        names
    }
}

impl ModelConfig for ResNetConfig {
    fn validate(&self) -> Result<(), ImportError> {
        if self.layers.is_empty() || self.layers.len() != self.widths.len() {
            return Err(ImportError::Config(format!(
                "ResNet layers {:?} and widths {:?} must be non-empty and of equal length",
                self.layers, self.widths
            )));
        }
        if self.widths.contains(&0) || self.num_classes == 0 || self.in_channels == 0 {
            return Err(ImportError::Config(format!(
                "ResNet widths {:?}, {} classes and {} input channels must be positive",
                self.widths, self.num_classes, self.in_channels
            )));
        }
        if let Norm::GroupNorm { groups } = self.norm {
            let e = self.block.expansion();
            for &w in &self.widths {
                if groups == 0 || !w.is_multiple_of(groups) || !(w * e).is_multiple_of(groups) {
                    return Err(ImportError::Config(format!(
                        "GroupNorm groups {groups} does not divide width {w}"
                    )));
                }
            }
        }
        Ok(())
    }
}
