//! Loading torchvision ResNet weights: safetensors state dicts (BatchNorm running statistics
//! included, optionally folded into the convolutions) and ONNX exports.

use burn::prelude::*;
use burn::tensor::TensorData;

use super::config::{Norm, ResNetConfig};
use super::modules::{Block, NormLayer, ResNet};
use super::BN_EPS;
use crate::error::ImportError;
use crate::load::{fetch_buffer, LoadOptions, NameRules, RawTensor, TensorSource, TorchParam};
use crate::loss::cross_entropy_per_sample;
use crate::onnx::{OnnxFile, OnnxWeights};
use crate::pretrained::{ImageBatch, ModelConfig, PretrainedModel};

/// torchvision weights. [`PretrainedModel::from_safetensors`] reads a state dict with the
/// BatchNorm running statistics; with [`Norm::Folded`] BatchNorm is folded into the
/// convolutions while loading, with [`Norm::GroupNorm`] the BatchNorm affine parameters are
/// loaded as GroupNorm's. [`PretrainedModel::from_onnx`]: exports in eval mode fold BatchNorm
/// into the convolutions, so such a file loads only with [`Norm::Folded`] (anything else is an
/// [`ImportError::OnnxLayout`]); an export that kept `BatchNormalization` nodes loads with any
/// [`Norm`].
impl<B: Backend> PretrainedModel<B> for ResNet<B> {
    type Config = ResNetConfig;
    type Batch = ImageBatch<B>;

    /// Load from any source holding the torchvision state dict (unfolded BatchNorm), or, for
    /// [`Norm::Folded`], either the unfolded state dict or already folded conv weights/biases.
    fn from_source<S: TensorSource>(
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

    fn onnx_weights(config: &ResNetConfig, file: OnnxFile) -> Result<OnnxWeights, ImportError> {
        onnx_weights(config, file)
    }

    fn torch_params(&self) -> Vec<TorchParam> {
        crate::load::torch_params_with::<B, _, _>(self, &ResNetRules)
    }

    /// Cross-entropy of each image's logits.
    fn loss_per_sample(&self, batch: impl Into<ImageBatch<B>>) -> Tensor<B, 1> {
        let ImageBatch { images, targets } = batch.into();
        cross_entropy_per_sample(self.forward(images), targets)
    }
}

impl<B: Backend> ResNet<B> {
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

/// Locate the ResNet weights of `config` in an ONNX graph (torchvision names; folded convs get
/// a `<conv>.bias`).
pub fn onnx_weights(config: &ResNetConfig, file: OnnxFile) -> Result<OnnxWeights, ImportError> {
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
