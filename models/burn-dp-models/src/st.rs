//! Memory-mapped safetensors files as a [`TensorSource`].

use std::fs::File;
use std::path::{Path, PathBuf};

use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};

use crate::error::ImportError;
use crate::load::{RawTensor, TensorSource};
use crate::pretrained::PretrainedModel;

/// An integer tensor: (shape, values).
pub type IntTensor = (Vec<usize>, Vec<i64>);

/// A safetensors file, memory-mapped: tensors are converted to f32 one at a time, when asked
/// for, so loading needs no more memory than the model plus one tensor.
pub struct SafetensorsFile {
    path: PathBuf,
    mmap: memmap2::Mmap,
    names: std::collections::HashSet<String>,
}

impl std::fmt::Debug for SafetensorsFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SafetensorsFile")
            .field("path", &self.path)
            .field("tensors", &self.names.len())
            .finish()
    }
}

/// Memory-maps `path` read-only (a typed `ImportError::Io` naming the file on failure).
pub(crate) fn map_file(path: &Path) -> Result<memmap2::Mmap, ImportError> {
    let io = |source| ImportError::Io {
        path: path.to_path_buf(),
        source,
    };
    let file = File::open(path).map_err(io)?;
    // SAFETY: the map is read-only; the file must not be truncated by another process while we
    // read it (the usual caveat of memory-mapped model files).
    unsafe { memmap2::Mmap::map(&file) }.map_err(io)
}

impl SafetensorsFile {
    /// Open and memory-map `path`, validating its header.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, ImportError> {
        let path = path.as_ref().to_path_buf();
        let mmap = map_file(&path)?;
        let st = SafeTensors::deserialize(&mmap).map_err(|e| ImportError::Safetensors {
            path: path.clone(),
            message: e.to_string(),
        })?;
        let names = st.names().into_iter().cloned().collect();
        Ok(Self { path, mmap, names })
    }

    /// The `__metadata__` map of the header (empty if none).
    pub fn metadata(&self) -> Result<std::collections::HashMap<String, String>, ImportError> {
        let (_, meta) =
            SafeTensors::read_metadata(&self.mmap).map_err(|e| ImportError::Safetensors {
                path: self.path.clone(),
                message: e.to_string(),
            })?;
        Ok(meta.metadata().clone().unwrap_or_default())
    }

    /// Names of all tensors in the file.
    pub fn names(&self) -> Vec<String> {
        let mut v: Vec<String> = self.names.iter().cloned().collect();
        v.sort();
        v
    }

    /// Whether the file holds a tensor `name`.
    pub fn contains(&self, name: &str) -> bool {
        self.names.contains(name)
    }

    /// Read tensor `name` as f32 (converting from f16, bf16, f64).
    pub fn read_f32(&self, name: &str) -> Result<Option<RawTensor>, ImportError> {
        if !self.names.contains(name) {
            return Ok(None);
        }
        let st = self.parse()?;
        let view = st.tensor(name).map_err(|e| ImportError::Safetensors {
            path: self.path.clone(),
            message: e.to_string(),
        })?;
        Ok(Some(view_to_f32(name, &view)?))
    }

    /// Read an integer tensor `name` (i64 / i32 / u8 ...) as i64.
    pub fn read_i64(&self, name: &str) -> Result<Option<IntTensor>, ImportError> {
        if !self.names.contains(name) {
            return Ok(None);
        }
        let st = self.parse()?;
        let view = st.tensor(name).map_err(|e| ImportError::Safetensors {
            path: self.path.clone(),
            message: e.to_string(),
        })?;
        let b = view.data();
        let data: Vec<i64> = match view.dtype() {
            Dtype::I64 => b
                .chunks_exact(8)
                .map(|c| i64::from_le_bytes(c.try_into().unwrap_or([0; 8])))
                .collect(),
            Dtype::I32 => b
                .chunks_exact(4)
                .map(|c| i32::from_le_bytes(c.try_into().unwrap_or([0; 4])) as i64)
                .collect(),
            Dtype::U8 => b.iter().map(|&x| x as i64).collect(),
            other => {
                return Err(ImportError::UnsupportedDtype {
                    name: name.to_string(),
                    dtype: format!("{other:?}"),
                })
            }
        };
        Ok(Some((view.shape().to_vec(), data)))
    }

    fn parse(&self) -> Result<SafeTensors<'_>, ImportError> {
        SafeTensors::deserialize(&self.mmap).map_err(|e| ImportError::Safetensors {
            path: self.path.clone(),
            message: e.to_string(),
        })
    }
}

fn view_to_f32(name: &str, view: &TensorView<'_>) -> Result<RawTensor, ImportError> {
    let b = view.data();
    let data: Vec<f32> = match view.dtype() {
        Dtype::F32 => b
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        Dtype::F64 => b
            .chunks_exact(8)
            .map(|c| f64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]) as f32)
            .collect(),
        Dtype::F16 => b
            .chunks_exact(2)
            .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        Dtype::BF16 => b
            .chunks_exact(2)
            .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        other => {
            return Err(ImportError::UnsupportedDtype {
                name: name.to_string(),
                dtype: format!("{other:?}"),
            })
        }
    };
    Ok(RawTensor::new(view.shape().to_vec(), data))
}

impl TensorSource for SafetensorsFile {
    fn fetch(&mut self, name: &str) -> Result<Option<RawTensor>, ImportError> {
        self.read_f32(name)
    }
}

/// Writes f32 tensors (`name`, torch-layout tensor) and `metadata` to a safetensors file.
pub(crate) fn write_f32(
    tensors: Vec<(String, RawTensor)>,
    metadata: std::collections::HashMap<String, String>,
    path: &Path,
) -> Result<usize, ImportError> {
    let bytes: Vec<(String, Vec<usize>, Vec<u8>)> = tensors
        .into_iter()
        .map(|(n, t)| {
            let b = t.data.iter().flat_map(|v| v.to_le_bytes()).collect();
            (n, t.shape, b)
        })
        .collect();
    let safetensors_err = |message: String| ImportError::Safetensors {
        path: path.to_path_buf(),
        message,
    };
    let views = bytes
        .iter()
        .map(|(n, s, b)| TensorView::new(Dtype::F32, s.clone(), b).map(|v| (n.clone(), v)))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| safetensors_err(e.to_string()))?;
    safetensors::serialize_to_file(views, &Some(metadata), path)
        .map_err(|e| safetensors_err(e.to_string()))?;
    Ok(bytes.len())
}

/// Saves the parameters of `model` as a PyTorch / HF state dict (torch names and layouts, f32),
/// e.g. a Llama with its LoRA adapters merged, for transformers to load; returns how many
/// tensors were written. A tied head is stored once, under the embedding's name.
pub fn save_state_dict<B: burn::prelude::Backend, M: PretrainedModel<B>>(
    model: &M,
    path: impl AsRef<Path>,
) -> Result<usize, ImportError> {
    let params = model.torch_params();
    let tensors = crate::load::param_values::<B, M>(model, |_| true)
        .into_iter()
        .zip(&params)
        .map(|((name, t), p)| {
            debug_assert_eq!(name, p.name, "one visiting order");
            (
                name,
                RawTensor::new(p.torch_shape(), p.burn_to_torch(&t.data)),
            )
        })
        .collect();
    let metadata = [("format".to_string(), "pt".to_string())].into();
    write_f32(tensors, metadata, path.as_ref())
}
