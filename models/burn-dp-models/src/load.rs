//! Generic, streaming weight loading: torch-named tensors are loaded one by one into the
//! parameters of an (uninitialised, lazily allocated) burn module.

use std::collections::HashMap;

use burn::module::{Module, Param, ParamId};
use burn::prelude::*;
use burn::tensor::TensorData;

use burn_dp::{map_params, visit_params, ModulePath, ParamMapper, ParamVisitor};

use crate::error::ImportError;

/// A tensor in torch layout, converted to f32.
#[derive(Debug, Clone)]
pub struct RawTensor {
    /// Shape, torch layout.
    pub shape: Vec<usize>,
    /// Row-major data.
    pub data: Vec<f32>,
}

impl RawTensor {
    /// New tensor; `data.len()` must be the product of `shape`.
    pub fn new(shape: Vec<usize>, data: Vec<f32>) -> Self {
        Self { shape, data }
    }

    /// Number of elements implied by the shape.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

/// Something that hands out torch-named tensors (a safetensors file, an ONNX graph, ...).
pub trait TensorSource {
    /// The tensor stored under exactly `name`, or `None` if there is none.
    fn fetch(&mut self, name: &str) -> Result<Option<RawTensor>, ImportError>;
}

impl TensorSource for HashMap<String, RawTensor> {
    fn fetch(&mut self, name: &str) -> Result<Option<RawTensor>, ImportError> {
        Ok(self.get(name).cloned())
    }
}

/// How the torch tensor relates to the burn parameter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// Same shape and layout.
    Same,
    /// torch stores the transpose of the burn 2-D parameter (torch `Linear` [out, in] vs burn
    /// `Linear` [in, out]).
    Transposed,
}

/// Options of the loaders.
#[derive(Debug, Clone, Copy, Default)]
pub struct LoadOptions {
    /// Show an indicatif progress bar on stderr while loading.
    pub progress: bool,
}

impl LoadOptions {
    /// Loading with a progress bar.
    pub fn with_progress() -> Self {
        Self { progress: true }
    }
}

/// The torch name of the parameter at `path`: its field names without enum variant names (they
/// are no torch names), with burn's LayerNorm / GroupNorm `gamma` / `beta` called `weight` /
/// `bias`.
fn torch_name(path: &ModulePath) -> String {
    let parts: Vec<&str> = path
        .fields()
        .iter()
        .filter(|(_, container)| !container.starts_with("Enum:"))
        .map(|(n, _)| n.as_str())
        .collect();
    let name = parts.join(".");
    if let Some(stem) = name.strip_suffix(".gamma") {
        format!("{stem}.weight")
    } else if let Some(stem) = name.strip_suffix(".beta") {
        format!("{stem}.bias")
    } else {
        name
    }
}

/// Whether the parameter at `path` is the weight of a burn `Linear` (stored transposed to torch).
fn is_linear_weight(path: &ModulePath) -> bool {
    path.container() == Some("Struct:Linear") && path.name() == Some("weight")
}

struct NameCollector {
    out: Vec<(ParamId, String, Vec<usize>, bool)>,
}

impl<B: Backend> ParamVisitor<B> for NameCollector {
    fn visit<const D: usize>(&mut self, path: &ModulePath, param: &Param<Tensor<B, D>>) {
        let linear = is_linear_weight(path);
        self.out.push((
            param.id,
            torch_name(path),
            param.lazy_shape().iter().copied().collect::<Vec<usize>>(),
            linear,
        ));
    }
}

/// Every float parameter of `module` as (param id, torch name, burn shape, is a `Linear` weight),
/// in visiting order. Does not allocate lazily initialised parameters.
pub(crate) fn collect_params<B: Backend, M: Module<B>>(
    module: &M,
) -> Vec<(ParamId, String, Vec<usize>, bool)> {
    let mut c = NameCollector { out: Vec::new() };
    visit_params(module, &mut c);
    c.out
}

/// Map burn parameter ids to torch / HF names (`transformer.h.0.attn.c_attn.weight`,
/// `layer2.0.downsample.1.bias`, `vit.embeddings.cls_token`, ...).
///
/// Works for every model of this crate: module fields are named as in torch, enum variants are
/// skipped and burn's `gamma`/`beta` (LayerNorm, GroupNorm) are reported as `weight`/`bias`.
/// With a tied GPT-2 head the shared weight appears once, as `transformer.wte.weight`.
pub fn param_names<B: Backend, M: Module<B>>(module: &M) -> Vec<(ParamId, String)> {
    collect_params::<B, M>(module)
        .into_iter()
        .map(|(id, name, _, _)| (id, name))
        .collect()
}

/// Number of parameters computed from the (possibly lazy) shapes, without allocating anything.
pub fn count_params<B: Backend, M: Module<B>>(module: &M) -> usize {
    collect_params::<B, M>(module)
        .iter()
        .map(|(_, _, s, _)| s.iter().product::<usize>())
        .sum()
}

/// A float parameter with its torch name and how the torch tensor relates to the burn one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TorchParam {
    /// burn parameter id.
    pub id: ParamId,
    /// torch / HF name (`transformer.h.0.attn.c_attn.weight`, `fc.weight`, ...).
    pub name: String,
    /// burn shape.
    pub burn_shape: Vec<usize>,
    /// Layout of the torch tensor relative to the burn parameter.
    pub layout: Layout,
}

impl TorchParam {
    /// Shape of the torch tensor.
    pub fn torch_shape(&self) -> Vec<usize> {
        match self.layout {
            Layout::Same => self.burn_shape.clone(),
            Layout::Transposed => self.burn_shape.iter().rev().copied().collect(),
        }
    }

    /// A row-major tensor in burn layout, rearranged into torch layout (rows of `data` of
    /// `numel` elements each are converted independently, so `[B, numel]` per-sample gradients
    /// work too).
    pub fn burn_to_torch(&self, data: &[f32]) -> Vec<f32> {
        match self.layout {
            Layout::Same => data.to_vec(),
            Layout::Transposed => {
                let (rows, cols) = (self.burn_shape[0], self.burn_shape[1]);
                let numel = rows * cols;
                let mut out = vec![0.0; data.len()];
                for (src, dst) in data.chunks(numel.max(1)).zip(out.chunks_mut(numel.max(1))) {
                    for r in 0..rows {
                        for c in 0..cols {
                            dst[c * rows + r] = src[r * cols + c];
                        }
                    }
                }
                out
            }
        }
    }
}

struct ValueCollector<F: Fn(&str) -> bool> {
    keep: F,
    out: Vec<(String, RawTensor)>,
}

impl<B: Backend, F: Fn(&str) -> bool> ParamVisitor<B> for ValueCollector<F> {
    fn visit<const D: usize>(&mut self, path: &ModulePath, param: &Param<Tensor<B, D>>) {
        let name = torch_name(path);
        if !(self.keep)(&name) {
            return;
        }
        let data = param.val().into_data().convert::<f32>();
        let shape = data.shape.as_slice().to_vec();
        let values = data.into_vec::<f32>().unwrap_or_default();
        self.out.push((name, RawTensor::new(shape, values)));
    }
}

/// The values of every float parameter of `module` whose torch name satisfies `keep`, in burn
/// layout, in visiting order.
pub(crate) fn param_values<B: Backend, M: Module<B>>(
    module: &M,
    keep: impl Fn(&str) -> bool,
) -> Vec<(String, RawTensor)> {
    let mut c = ValueCollector {
        keep,
        out: Vec::new(),
    };
    visit_params(module, &mut c);
    c.out
}

/// Every float parameter of `module` with its torch name and layout under the model's rules.
pub(crate) fn torch_params_with<B: Backend, M: Module<B>, R: NameRules>(
    module: &M,
    rules: &R,
) -> Vec<TorchParam> {
    collect_params::<B, M>(module)
        .into_iter()
        .map(|(id, name, burn_shape, is_linear)| TorchParam {
            id,
            layout: rules.layout(&name, is_linear),
            name,
            burn_shape,
        })
        .collect()
}

/// The per-model rules a loader needs.
pub(crate) trait NameRules {
    /// Torch layout of parameter `name` (`is_linear` when it is the weight of a burn `Linear`).
    fn layout(&self, name: &str, is_linear: bool) -> Layout {
        if is_linear && name.ends_with(".weight") {
            Layout::Transposed
        } else {
            Layout::Same
        }
    }
    /// Names to look the tensor up under, in order.
    fn aliases(&self, name: &str) -> Vec<String> {
        vec![name.to_string()]
    }
    /// Parameters the loader leaves as they are (a partial load, such as adapters only).
    fn skip(&self, _name: &str) -> bool {
        false
    }
}

struct Loader<'a, S: TensorSource, R: NameRules> {
    source: &'a mut S,
    rules: &'a R,
    error: Option<ImportError>,
    bar: Option<indicatif::ProgressBar>,
}

impl<'a, S: TensorSource, R: NameRules> Loader<'a, S, R> {
    fn load<B: Backend, const D: usize>(
        &mut self,
        name: &str,
        layout: Layout,
        expected_burn: &[usize],
        device: &B::Device,
    ) -> Result<Tensor<B, D>, ImportError> {
        let expected_torch: Vec<usize> = match layout {
            Layout::Same => expected_burn.to_vec(),
            Layout::Transposed => expected_burn.iter().rev().copied().collect(),
        };
        let aliases = self.rules.aliases(name);
        let mut found = None;
        for alias in &aliases {
            if let Some(t) = self.source.fetch(alias)? {
                found = Some(t);
                break;
            }
        }
        let raw = found.ok_or_else(|| ImportError::MissingWeight {
            name: name.to_string(),
            tried: aliases.join(", "),
        })?;
        if raw.shape != expected_torch || raw.data.len() != raw.numel() {
            return Err(ImportError::ShapeMismatch {
                name: name.to_string(),
                expected: expected_torch,
                found: raw.shape,
            });
        }
        let tensor = Tensor::<B, D>::from_data(TensorData::new(raw.data, raw.shape), device);
        Ok(match layout {
            Layout::Same => tensor,
            Layout::Transposed => tensor.transpose(),
        })
    }
}

impl<'a, B: Backend, S: TensorSource, R: NameRules> ParamMapper<B> for Loader<'a, S, R> {
    fn map<const D: usize>(
        &mut self,
        path: &ModulePath,
        param: Param<Tensor<B, D>>,
    ) -> Param<Tensor<B, D>> {
        if self.error.is_some() {
            return param;
        }
        let name = torch_name(path);
        if self.rules.skip(&name) {
            return param;
        }
        let is_linear = is_linear_weight(path);
        let layout = self.rules.layout(&name, is_linear);
        let shape = param.lazy_shape().iter().copied().collect::<Vec<usize>>();
        let device = param.lazy_device();
        if let Some(bar) = &self.bar {
            bar.set_message(name.clone());
        }
        match self.load::<B, D>(&name, layout, &shape, &device) {
            Ok(tensor) => {
                if let Some(bar) = &self.bar {
                    bar.inc(1);
                }
                let id = param.id;
                // Replaces the (never allocated) lazy initialisation by the loaded tensor.
                param.transform_for_load(tensor, id)
            }
            Err(e) => {
                self.error = Some(e);
                param
            }
        }
    }
}

/// Load every float parameter of `module` from `source`, tensor by tensor.
pub(crate) fn load_params<B: Backend, M: Module<B>, S: TensorSource, R: NameRules>(
    module: M,
    source: &mut S,
    rules: &R,
    options: LoadOptions,
) -> Result<M, ImportError> {
    let bar = if options.progress {
        let n = collect_params::<B, M>(&module).len() as u64;
        let bar = indicatif::ProgressBar::new(n);
        if let Ok(style) = indicatif::ProgressStyle::with_template(
            "{spinner} loading [{bar:40}] {pos}/{len} {wide_msg}",
        ) {
            bar.set_style(style.progress_chars("=> "));
        }
        Some(bar)
    } else {
        None
    };
    let mut loader = Loader {
        source,
        rules,
        error: None,
        bar,
    };
    let module = map_params(module, &mut loader);
    if let Some(bar) = &loader.bar {
        bar.finish_and_clear();
    }
    match loader.error {
        Some(e) => Err(e),
        None => Ok(module),
    }
}

/// Fetch a non-parameter tensor (a buffer such as BatchNorm running statistics) with a shape
/// check.
pub(crate) fn fetch_buffer<S: TensorSource>(
    source: &mut S,
    name: &str,
    expected: &[usize],
) -> Result<RawTensor, ImportError> {
    let raw = source
        .fetch(name)?
        .ok_or_else(|| ImportError::MissingWeight {
            name: name.to_string(),
            tried: name.to_string(),
        })?;
    if raw.shape != expected || raw.data.len() != raw.numel() {
        return Err(ImportError::ShapeMismatch {
            name: name.to_string(),
            expected: expected.to_vec(),
            found: raw.shape,
        });
    }
    Ok(raw)
}

/// A tied head needs the source's `lm_head.weight`, where it has one, to be the token embedding
/// (the first of `tables` the source has); anything else is an untied checkpoint, refused with the
/// fix for `config` (GPT-2's and Llama's imports).
pub(crate) fn check_tied_head<S: TensorSource>(
    source: &mut S,
    tables: &[&str],
    config: &str,
) -> Result<(), ImportError> {
    let Some(head) = source.fetch("lm_head.weight")? else {
        return Ok(());
    };
    for name in tables {
        if let Some(table) = source.fetch(name)? {
            if table.shape != head.shape || table.data != head.data {
                return Err(ImportError::Config(format!(
                    "the configuration ties the output head to the token embedding, but the \
                     checkpoint's `lm_head.weight` differs from its `{name}` (an untied \
                     model): load it with `{config}::with_tied_head(false)`"
                )));
            }
            return Ok(());
        }
    }
    Ok(())
}
