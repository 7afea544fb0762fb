//! LoRA adapters on their own: saved to and loaded from a safetensors file in PEFT's format
//! (`adapter_model.safetensors`), so a few megabytes carry a fine-tuning of a large model.
//!
//! Tensor names are PEFT's: `base_model.model.<layer path>.lora_A.weight` `[r, in]` and
//! `….lora_B.weight` `[out, r]` (torch `Linear` layout); the metadata holds `r`, `lora_alpha`
//! and `target_modules`.

use std::collections::{BTreeSet, HashMap};
use std::path::Path;

use burn::module::Module;
use burn::prelude::*;

use super::{is_adapter_param, LoraConfig};
use crate::error::ImportError;
use crate::load::{Layout, LoadOptions, NameRules, RawTensor, TensorSource};
use crate::st::SafetensorsFile;

/// The prefix PEFT puts before the model's own parameter names.
const PEFT_PREFIX: &str = "base_model.model.";

/// PEFT's name of the adapter parameter `name` (`….q_proj.lora_a.weight` →
/// `base_model.model.….q_proj.lora_A.weight`).
pub fn peft_name(name: &str) -> String {
    let name = name
        .replace(".lora_a.weight", ".lora_A.weight")
        .replace(".lora_b.weight", ".lora_B.weight");
    format!("{PEFT_PREFIX}{name}")
}

/// Saves every adapter of `model` (parameters named `….lora_a.weight` / `….lora_b.weight`) to
/// `path` in PEFT's layout, with `config`'s rank, α and targets as metadata; returns how many
/// tensors were written. A model without adapters is an [`ImportError::Config`].
pub fn save_adapters<B: Backend, M: Module<B>>(
    model: &M,
    config: &LoraConfig,
    path: impl AsRef<Path>,
) -> Result<usize, ImportError> {
    let path = path.as_ref();
    let tensors: Vec<(String, RawTensor)> =
        crate::load::param_values::<B, M>(model, is_adapter_param)
            .into_iter()
            .map(|(name, t)| {
                // burn `Linear` `[in, out]` -> torch `[out, in]`.
                let (rows, cols) = (t.shape[0], t.shape[1]);
                let mut data = vec![0.0; t.data.len()];
                for r in 0..rows {
                    for c in 0..cols {
                        data[c * rows + r] = t.data[r * cols + c];
                    }
                }
                (peft_name(&name), RawTensor::new(vec![cols, rows], data))
            })
            .collect();
    if tensors.is_empty() {
        return Err(ImportError::Config(
            "the model has no LoRA adapter to save: add adapters first (`with_lora`)".into(),
        ));
    }
    let metadata = HashMap::from([
        ("format".to_string(), "pt".to_string()),
        ("r".to_string(), config.rank.to_string()),
        ("lora_alpha".to_string(), config.alpha.to_string()),
        ("target_modules".to_string(), config.targets.join(",")),
    ]);
    crate::st::write_f32(tensors, metadata, path)
}

/// Loads the adapters of `model` (built with the same [`LoraConfig`], e.g. by
/// [`Llama::with_lora`](crate::Llama::with_lora)) from a file written by [`save_adapters`] or
/// by PEFT; the base weights are left as they are.
///
/// Typed errors: an adapter the model has and the file lacks ([`ImportError::MissingWeight`]),
/// one of another rank or width ([`ImportError::ShapeMismatch`]), an adapter in the file that
/// the model has no place for, or a file whose `r` / `lora_alpha` metadata differ from
/// `config` ([`ImportError::Config`]).
pub fn load_adapters<B: Backend, M: Module<B>>(
    model: M,
    config: &LoraConfig,
    path: impl AsRef<Path>,
) -> Result<M, ImportError> {
    let file = SafetensorsFile::open(path.as_ref())?;
    let meta = file.metadata()?;
    let mismatch = |key: &str, ours: f64| {
        meta.get(key)
            .and_then(|v| v.parse::<f64>().ok())
            .is_some_and(|theirs| theirs != ours)
    };
    if mismatch("r", config.rank as f64) || mismatch("lora_alpha", config.alpha) {
        return Err(ImportError::Config(format!(
            "the adapter file {} was trained with r = {}, lora_alpha = {}; the LoRA \
             configuration says r = {}, alpha = {}: build the adapters with the file's values",
            path.as_ref().display(),
            meta.get("r").map_or("?", String::as_str),
            meta.get("lora_alpha").map_or("?", String::as_str),
            config.rank,
            config.alpha
        )));
    }
    let in_file: BTreeSet<String> = file
        .names()
        .into_iter()
        .filter(|n| n.ends_with(".lora_A.weight") || n.ends_with(".lora_B.weight"))
        .collect();
    let mut source = Recording {
        file,
        fetched: BTreeSet::new(),
    };
    let model =
        crate::load::load_params(model, &mut source, &AdapterRules, LoadOptions::default())?;
    if let Some(extra) = in_file.difference(&source.fetched).next() {
        return Err(ImportError::Config(format!(
            "the adapter file holds `{extra}`, but the model has no adapter there: add \
             adapters to the same layers as the file's `target_modules`"
        )));
    }
    Ok(model)
}

/// A safetensors file that remembers which tensors were read.
struct Recording {
    file: SafetensorsFile,
    fetched: BTreeSet<String>,
}

impl TensorSource for Recording {
    fn fetch(&mut self, name: &str) -> Result<Option<RawTensor>, ImportError> {
        let t = self.file.read_f32(name)?;
        if t.is_some() {
            self.fetched.insert(name.to_string());
        }
        Ok(t)
    }
}

/// Adapters only, under PEFT's names (or the model's own), torch layout.
struct AdapterRules;

impl NameRules for AdapterRules {
    fn layout(&self, _name: &str, _is_linear: bool) -> Layout {
        Layout::Transposed
    }
    fn aliases(&self, name: &str) -> Vec<String> {
        vec![peft_name(name), name.to_string()]
    }
    fn skip(&self, name: &str) -> bool {
        !is_adapter_param(name)
    }
}
