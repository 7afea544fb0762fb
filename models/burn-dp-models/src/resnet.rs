//! torchvision ResNet (BasicBlock / Bottleneck) with torchvision module names.

use burn::module::{Module, Param};
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::pool::{AdaptiveAvgPool2d, AdaptiveAvgPool2dConfig, MaxPool2d, MaxPool2dConfig};
use burn::nn::{GroupNorm, GroupNormConfig, Linear, LinearConfig, PaddingConfig2d};
use burn::prelude::*;
use burn::tensor::activation::relu;
use burn::tensor::TensorData;
use serde::{Deserialize, Serialize};

use crate::error::ImportError;
use crate::load::{fetch_buffer, LoadOptions, NameRules, RawTensor, TensorSource};

/// BatchNorm epsilon of torchvision.
pub const BN_EPS: f64 = 1e-5;

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
    Basic,
    /// 1x1, 3x3, 1x1 convolutions (ResNet-50/101/152), expansion 4.
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
    /// "widths": [..], "num_classes": N}`.
    pub fn from_json(json: &str) -> Result<Self, ImportError> {
        let v: serde_json::Value =
            serde_json::from_str(json).map_err(|e| ImportError::Config(e.to_string()))?;
        let block = match v.get("block").and_then(|b| b.as_str()) {
            Some("basic") | Some("BasicBlock") => BlockKind::Basic,
            Some("bottleneck") | Some("Bottleneck") => BlockKind::Bottleneck,
            other => {
                return Err(ImportError::Config(format!(
                    "unknown ResNet block {other:?}"
                )))
            }
        };
        let list = |k: &str| -> Result<Vec<usize>, ImportError> {
            v.get(k)
                .and_then(|x| x.as_array())
                .map(|a| {
                    a.iter()
                        .filter_map(|x| x.as_u64().map(|x| x as usize))
                        .collect()
                })
                .ok_or_else(|| ImportError::Config(format!("ResNet config lacks `{k}`")))
        };
        let num_classes = v
            .get("num_classes")
            .and_then(|x| x.as_u64())
            .ok_or_else(|| ImportError::Config("ResNet config lacks `num_classes`".into()))?
            as usize;
        let cfg = Self::new(block, list("layers")?, list("widths")?, num_classes);
        cfg.validate()?;
        Ok(cfg)
    }

    /// Check the configuration.
    pub fn validate(&self) -> Result<(), ImportError> {
        if self.layers.is_empty() || self.layers.len() != self.widths.len() {
            return Err(ImportError::Config(format!(
                "ResNet layers {:?} and widths {:?} must be non-empty and of equal length",
                self.layers, self.widths
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

    fn norm_layer<B: Backend>(&self, channels: usize, device: &B::Device) -> Option<NormLayer<B>> {
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
}

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

    /// [B, C, H, W] -> [B, C, H, W].
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

/// The normalisation layer after a convolution (absent with [`Norm::Folded`]).
#[derive(Module, Debug)]
pub enum NormLayer<B: Backend> {
    /// Frozen BatchNorm.
    Frozen(FrozenBatchNorm<B>),
    /// GroupNorm.
    Group(GroupNorm<B>),
}

impl<B: Backend> NormLayer<B> {
    /// Apply the normalisation.
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
    /// [B, Cin, H, W] -> [B, Cout, H', W'].
    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let (out, downsample) = match self {
            Self::Basic(b) => {
                let y = relu(norm(&b.bn1, b.conv1.forward(x.clone())));
                (norm(&b.bn2, b.conv2.forward(y)), &b.downsample)
            }
            Self::Bottleneck(b) => {
                let y = relu(norm(&b.bn1, b.conv1.forward(x.clone())));
                let y = relu(norm(&b.bn2, b.conv2.forward(y)));
                (norm(&b.bn3, b.conv3.forward(y)), &b.downsample)
            }
        };
        let identity = match downsample {
            Some((conv, n)) => norm(n, conv.forward(x)),
            None => x,
        };
        relu(out + identity)
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
    /// Images [B, C, H, W] -> logits [B, classes].
    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 2> {
        let mut x = relu(norm(&self.bn1, self.conv1.forward(x)));
        x = self.maxpool.forward(x);
        for stage in [&self.layer1, &self.layer2, &self.layer3, &self.layer4]
            .into_iter()
            .chain(self.extra_layers.iter())
        {
            for block in stage {
                x = block.forward(x);
            }
        }
        let x = self.avgpool.forward(x);
        let [b, c, _, _] = x.dims();
        self.fc.forward(x.reshape([b, c]))
    }

    /// Per-sample cross-entropy [B].
    pub fn loss_per_sample(
        &self,
        images: Tensor<B, 4>,
        targets: Tensor<B, 1, Int>,
    ) -> Tensor<B, 1> {
        crate::loss::cross_entropy_per_sample(self.forward(images), targets)
    }

    /// Load torchvision weights from a safetensors state dict (BatchNorm running statistics
    /// included). With [`Norm::Folded`], BatchNorm is folded into the convolutions while loading;
    /// with [`Norm::GroupNorm`] the BatchNorm affine parameters are loaded as GroupNorm's.
    pub fn from_safetensors(
        config: &ResNetConfig,
        path: impl AsRef<std::path::Path>,
        device: &B::Device,
        options: LoadOptions,
    ) -> Result<Self, ImportError> {
        let mut file = crate::st::SafetensorsFile::open(path)?;
        Self::from_source(config, &mut file, device, options)
    }

    /// Load from any source holding the torchvision state dict (unfolded BatchNorm), or, for
    /// [`Norm::Folded`], either the unfolded state dict or already folded conv weights/biases.
    pub fn from_source<S: TensorSource>(
        config: &ResNetConfig,
        source: &mut S,
        device: &B::Device,
        options: LoadOptions,
    ) -> Result<Self, ImportError> {
        config.validate()?;
        let model = config.init(device);
        if config.norm == Norm::Folded {
            let mut folding = FoldingSource { inner: source };
            crate::load::load_params(model, &mut folding, &ResNetRules, options)
        } else {
            let mut model = crate::load::load_params(model, source, &ResNetRules, options)?;
            model.load_buffers(source, device)?;
            Ok(model)
        }
    }

    /// Every (torch name, norm layer) pair of the model.
    fn norms_mut(&mut self) -> Vec<(String, &mut NormLayer<B>)> {
        let mut out = Vec::new();
        if let Some(n) = self.bn1.as_mut() {
            out.push(("bn1".to_string(), n));
        }
        let stages = [
            &mut self.layer1,
            &mut self.layer2,
            &mut self.layer3,
            &mut self.layer4,
        ]
        .into_iter()
        .chain(self.extra_layers.iter_mut());
        for (s, stage) in stages.enumerate() {
            for (i, block) in stage.iter_mut().enumerate() {
                let p = format!("layer{}.{}", s + 1, i);
                let (norms, ds): (Vec<&mut Option<NormLayer<B>>>, _) = match block {
                    Block::Basic(b) => (vec![&mut b.bn1, &mut b.bn2], &mut b.downsample),
                    Block::Bottleneck(b) => {
                        (vec![&mut b.bn1, &mut b.bn2, &mut b.bn3], &mut b.downsample)
                    }
                };
                for (k, n) in norms.into_iter().enumerate() {
                    if let Some(n) = n.as_mut() {
                        out.push((format!("{p}.bn{}", k + 1), n));
                    }
                }
                if let Some((_, Some(n))) = ds.as_mut() {
                    out.push((format!("{p}.downsample.1"), n));
                }
            }
        }
        out
    }

    /// Load the BatchNorm running statistics (`<bn>.running_mean`, `<bn>.running_var`).
    pub fn load_buffers<S: TensorSource>(
        &mut self,
        source: &mut S,
        device: &B::Device,
    ) -> Result<(), ImportError> {
        for (name, layer) in self.norms_mut() {
            if let NormLayer::Frozen(bn) = layer {
                let c = bn.running_mean.dims()[0];
                let m = fetch_buffer(source, &format!("{name}.running_mean"), &[c])?;
                let v = fetch_buffer(source, &format!("{name}.running_var"), &[c])?;
                bn.running_mean = Tensor::from_data(TensorData::new(m.data, [c]), device);
                bn.running_var = Tensor::from_data(TensorData::new(v.data, [c]), device);
            }
        }
        Ok(())
    }
}

impl<B: Backend> ResNet<B> {
    /// Every float parameter with its torch name and layout (how the torch tensor of the
    /// state dict relates to the burn parameter), in visiting order.
    pub fn torch_params(&self) -> Vec<crate::TorchParam> {
        crate::load::torch_params_with::<B, _, _>(self, &ResNetRules)
    }
}

pub(crate) struct ResNetRules;
impl NameRules for ResNetRules {}

/// torch name of the BatchNorm following the convolution `conv` (torchvision structure).
pub(crate) fn bn_of_conv(conv: &str) -> Option<String> {
    if conv == "conv1" {
        return Some("bn1".into());
    }
    if let Some(p) = conv.strip_suffix("downsample.0") {
        return Some(format!("{p}downsample.1"));
    }
    for k in 1..=3 {
        if let Some(p) = conv.strip_suffix(&format!("conv{k}")) {
            return Some(format!("{p}bn{k}"));
        }
    }
    None
}

/// Fold BatchNorm statistics into a conv weight [O, ...] and bias: returns (weight, bias).
pub fn fold_batchnorm(
    weight: &RawTensor,
    conv_bias: Option<&[f32]>,
    gamma: &[f32],
    beta: &[f32],
    mean: &[f32],
    var: &[f32],
    eps: f64,
) -> (RawTensor, Vec<f32>) {
    let o = weight.shape[0];
    let per = weight.data.len() / o.max(1);
    let mut w = weight.clone();
    let mut bias = vec![0.0f32; o];
    for c in 0..o {
        let scale = (gamma[c] as f64) / ((var[c] as f64) + eps).sqrt();
        for x in &mut w.data[c * per..(c + 1) * per] {
            *x = (*x as f64 * scale) as f32;
        }
        let b0 = conv_bias.map(|b| b[c] as f64).unwrap_or(0.0);
        bias[c] = ((b0 - mean[c] as f64) * scale + beta[c] as f64) as f32;
    }
    (w, bias)
}

/// Presents an unfolded torchvision state dict as folded conv weights and biases (or passes
/// already folded ones through).
struct FoldingSource<'a, S: TensorSource> {
    inner: &'a mut S,
}

impl<'a, S: TensorSource> FoldingSource<'a, S> {
    fn folded(&mut self, conv: &str) -> Result<Option<(RawTensor, Vec<f32>)>, ImportError> {
        let Some(bn) = bn_of_conv(conv) else {
            return Ok(None);
        };
        let Some(weight) = self.inner.fetch(&format!("{conv}.weight"))? else {
            return Ok(None);
        };
        let o = weight.shape.first().copied().unwrap_or(0);
        let mut get = |suffix: &str| -> Result<Vec<f32>, ImportError> {
            Ok(fetch_buffer(self.inner, &format!("{bn}.{suffix}"), &[o])?.data)
        };
        let (g, b, m, v) = (
            get("weight")?,
            get("bias")?,
            get("running_mean")?,
            get("running_var")?,
        );
        Ok(Some(fold_batchnorm(&weight, None, &g, &b, &m, &v, BN_EPS)))
    }
}

impl<'a, S: TensorSource> TensorSource for FoldingSource<'a, S> {
    fn fetch(&mut self, name: &str) -> Result<Option<RawTensor>, ImportError> {
        // Already folded (a conv with its own bias in the source): pass through.
        if let Some(conv) = name.strip_suffix(".bias") {
            if bn_of_conv(conv).is_some() {
                if let Some(t) = self.inner.fetch(name)? {
                    return Ok(Some(t));
                }
                return Ok(self
                    .folded(conv)?
                    .map(|(_, b)| RawTensor::new(vec![b.len()], b)));
            }
        }
        if let Some(conv) = name.strip_suffix(".weight") {
            if bn_of_conv(conv).is_some() {
                let bn = bn_of_conv(conv).unwrap_or_default();
                // Unfolded state dict: the BatchNorm statistics are present.
                let mean = self.inner.fetch(&format!("{bn}.running_mean"))?;
                if mean.is_some() {
                    return Ok(self.folded(conv)?.map(|(w, _)| w));
                }
            }
        }
        self.inner.fetch(name)
    }
}

impl ResNetConfig {
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

impl<B: Backend> ResNet<B> {
    /// Load from an ONNX export of a torchvision ResNet. Exports in eval mode fold BatchNorm into
    /// the convolutions: such a file loads only with [`Norm::Folded`] (anything else is an
    /// [`ImportError::OnnxLayout`]); an export that kept `BatchNormalization` nodes loads with
    /// any [`Norm`].
    pub fn from_onnx(
        config: &ResNetConfig,
        path: impl AsRef<std::path::Path>,
        device: &B::Device,
        options: LoadOptions,
    ) -> Result<Self, ImportError> {
        config.validate()?;
        let mut weights = onnx_weights(config, crate::onnx::OnnxFile::open(path)?)?;
        Self::from_source(config, &mut weights, device, options)
    }
}

/// Locate the ResNet weights of `config` in an ONNX graph (torchvision names; folded convs get
/// a `<conv>.bias`).
pub fn onnx_weights(
    config: &ResNetConfig,
    file: crate::onnx::OnnxFile,
) -> Result<crate::onnx::OnnxWeights, ImportError> {
    use crate::onnx::{count_err, Assign, Slots};
    config.validate()?;
    let s = Slots::of(&file)?;
    let convs = config.conv_names();
    let mut expected: Vec<String> = Vec::new();
    for c in &convs {
        expected.push(format!("{c}.weight"));
        if let Some(bn) = bn_of_conv(c) {
            for k in ["weight", "bias", "running_mean", "running_var"] {
                expected.push(format!("{bn}.{k}"));
            }
        }
    }
    expected.push("fc.weight".into());
    expected.push("fc.bias".into());
    let mut a = Assign::new(expected);
    if s.conv.len() != convs.len() {
        return Err(count_err(&file, "Conv nodes", convs.len(), s.conv.len()));
    }
    let folded = s.bn.is_empty();
    if folded && config.norm != Norm::Folded {
        return Err(ImportError::OnnxLayout {
            node: s.conv[0].0.clone(),
            message: format!(
                "the exporter folded BatchNorm into the convolutions of {}; load it with \
                 Norm::Folded (or use the safetensors state dict)",
                file.path().display()
            ),
        });
    }
    if !folded && s.bn.len() != convs.len() {
        return Err(count_err(
            &file,
            "BatchNormalization nodes",
            convs.len(),
            s.bn.len(),
        ));
    }
    for (k, name) in convs.iter().enumerate() {
        let (node, w, b) = &s.conv[k];
        a.set(&format!("{name}.weight"), w, false)?;
        if folded {
            a.set_opt(&format!("{name}.bias"), b, node)?;
        } else {
            let bn = bn_of_conv(name).unwrap_or_default();
            let (_, params) = &s.bn[k];
            for (p, c) in ["weight", "bias", "running_mean", "running_var"]
                .iter()
                .zip(params)
            {
                a.set(&format!("{bn}.{p}"), c, false)?;
            }
        }
    }
    if s.linear.len() != 1 {
        return Err(count_err(
            &file,
            "linear (Gemm/MatMul) nodes",
            1,
            s.linear.len(),
        ));
    }
    let (node, w, b) = &s.linear[0];
    a.set("fc.weight", w, true)?;
    a.set_opt("fc.bias", b, node)?;
    Ok(a.finish(file))
}
