//! Weight import from ONNX files exported by PyTorch (dynamo exporter, opset 18, and the legacy
//! TorchScript exporter, opset 17).
//!
//! Weights are located through the graph, not only by name: exporters transpose weights and
//! store them under generated names (`val_29`, `onnx::MatMul_293`), share constants (GPT-2's
//! tied embedding appears once, as `lm_head.weight`) and fold BatchNorm into the preceding Conv
//! (`<conv>.weight_bias`, `onnx::Conv_194`). The importer walks the nodes in order and collects
//! the operations that carry weights (Conv, Gemm, MatMul (+ bias Add), LayerNormalization,
//! RMSNorm (decomposed into `Mul(scale, x · Reciprocal(Sqrt(…)))`, or `RMSNormalization`),
//! Gather on a constant table, BatchNormalization, Expand/Add of a raw constant), then assigns
//! them to the torch parameter names of the model in execution order, checking that weights
//! which kept their torch name sit where expected. Shapes are checked by the loader.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use onnx_ir::TensorProto;
use protobuf::Message;

use crate::error::ImportError;
use crate::load::{RawTensor, TensorSource};

mod graph;
mod slots;

pub use slots::Slot;
pub(crate) use slots::{count_err, Slots};

/// A constant of the graph, possibly seen through `Transpose(perm=[1,0])` / `Identity` nodes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConstRef {
    /// Initializer (or Constant node output) name.
    pub name: String,
    /// Whether the value used by the graph is the 2-D transpose of the stored tensor.
    pub transposed: bool,
}

impl ConstRef {
    fn t(mut self) -> Self {
        self.transposed = !self.transposed;
        self
    }
}

#[derive(Debug, Clone)]
struct Node {
    name: String,
    op: String,
    inputs: Vec<String>,
    outputs: Vec<String>,
    ints: HashMap<String, i64>,
    floats: HashMap<String, f32>,
    int_lists: HashMap<String, Vec<i64>>,
}

/// A parsed ONNX file (memory-mapped; initializers are not copied).
pub struct OnnxFile {
    path: PathBuf,
    tensors: HashMap<String, TensorProto>,
    nodes: Vec<Node>,
    producers: HashMap<String, usize>,
    consumers: HashMap<String, Vec<usize>>,
    by_name: HashMap<String, usize>,
}

impl std::fmt::Debug for OnnxFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OnnxFile")
            .field("path", &self.path)
            .field("nodes", &self.nodes.len())
            .field("constants", &self.tensors.len())
            .finish()
    }
}

fn layout_err(node: impl Into<String>, message: impl Into<String>) -> ImportError {
    ImportError::OnnxLayout {
        node: node.into(),
        message: message.into(),
    }
}

const FLOAT: i32 = 1;
const FLOAT16: i32 = 10;
const DOUBLE: i32 = 11;
const BFLOAT16: i32 = 16;

impl OnnxFile {
    /// Memory-map and decode `path`.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, ImportError> {
        let path = path.as_ref().to_path_buf();
        let mmap = crate::st::map_file(&path)?;
        let bytes = bytes::Bytes::from_owner(mmap);
        let model = onnx_ir::ModelProto::parse_from_tokio_bytes(&bytes).map_err(|e| {
            ImportError::OnnxDecode {
                path: path.clone(),
                message: e.to_string(),
            }
        })?;
        Self::from_model(path, model)
    }

    fn from_model(path: PathBuf, model: onnx_ir::ModelProto) -> Result<Self, ImportError> {
        let graph = model
            .graph
            .into_option()
            .ok_or_else(|| ImportError::OnnxDecode {
                path: path.clone(),
                message: "the model has no graph".into(),
            })?;
        let mut tensors = HashMap::new();
        for t in graph.initializer {
            tensors.insert(t.name.clone(), t);
        }
        let mut nodes = Vec::new();
        for (i, n) in graph.node.into_iter().enumerate() {
            let mut node = Node {
                name: if n.name.is_empty() {
                    format!("{}#{i}", n.op_type)
                } else {
                    n.name.clone()
                },
                op: n.op_type.clone(),
                inputs: n.input.clone(),
                outputs: n.output.clone(),
                ints: HashMap::new(),
                floats: HashMap::new(),
                int_lists: HashMap::new(),
            };
            for a in n.attribute {
                node.ints.insert(a.name.clone(), a.i);
                node.floats.insert(a.name.clone(), a.f);
                if !a.ints.is_empty() {
                    node.int_lists.insert(a.name.clone(), a.ints.clone());
                }
                if n.op_type == "Constant" && a.name == "value" {
                    if let (Some(t), Some(out)) = (a.t.into_option(), n.output.first()) {
                        tensors.insert(out.clone(), t);
                    }
                }
            }
            nodes.push(node);
        }
        let mut producers = HashMap::new();
        let mut consumers: HashMap<String, Vec<usize>> = HashMap::new();
        let mut by_name = HashMap::new();
        for (i, n) in nodes.iter().enumerate() {
            by_name.insert(n.name.clone(), i);
            for o in &n.outputs {
                producers.insert(o.clone(), i);
            }
            for inp in &n.inputs {
                consumers.entry(inp.clone()).or_default().push(i);
            }
        }
        Ok(Self {
            path,
            tensors,
            nodes,
            producers,
            consumers,
            by_name,
        })
    }

    /// The file this was read from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Resolve a node input to a graph constant, looking through Identity and 2-D Transpose.
    pub fn resolve(&self, value: &str) -> Option<ConstRef> {
        let mut value = value.to_string();
        let mut transposed = false;
        for _ in 0..16 {
            if value.is_empty() {
                return None;
            }
            if self.tensors.contains_key(&value) {
                return Some(ConstRef {
                    name: value,
                    transposed,
                });
            }
            let node = &self.nodes[*self.producers.get(&value)?];
            match node.op.as_str() {
                "Identity" => value = node.inputs.first()?.clone(),
                "Transpose" => {
                    let perm = node.int_lists.get("perm").cloned().unwrap_or(vec![1, 0]);
                    if perm != [1, 0] {
                        return None;
                    }
                    transposed = !transposed;
                    value = node.inputs.first()?.clone();
                }
                _ => return None,
            }
        }
        None
    }

    fn proto(&self, c: &ConstRef) -> Result<&TensorProto, ImportError> {
        self.tensors
            .get(&c.name)
            .ok_or_else(|| layout_err(&c.name, "constant disappeared"))
    }

    /// Shape of a constant as the graph uses it.
    pub fn shape(&self, c: &ConstRef) -> Result<Vec<usize>, ImportError> {
        let t = self.proto(c)?;
        let mut dims: Vec<usize> = t.dims.iter().map(|&d| d.max(0) as usize).collect();
        if c.transposed {
            if dims.len() != 2 {
                return Err(layout_err(&c.name, "transpose of a tensor that is not 2-D"));
            }
            dims.reverse();
        }
        Ok(dims)
    }

    fn is_float(&self, c: &ConstRef) -> bool {
        self.tensors
            .get(&c.name)
            .map(|t| matches!(t.data_type, FLOAT | FLOAT16 | DOUBLE | BFLOAT16))
            .unwrap_or(false)
    }

    /// Read a constant as f32, in the layout the graph uses.
    pub fn read(&self, c: &ConstRef) -> Result<RawTensor, ImportError> {
        let t = self.proto(c)?;
        if t.data_location.value() == 1 {
            return Err(ImportError::ExternalData {
                name: c.name.clone(),
            });
        }
        let stored: Vec<usize> = t.dims.iter().map(|&d| d.max(0) as usize).collect();
        let n: usize = stored.iter().product();
        let raw: &[u8] = &t.raw_data;
        let data: Vec<f32> = match t.data_type {
            FLOAT if !raw.is_empty() => raw
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
            FLOAT => t.float_data.clone(),
            DOUBLE if !raw.is_empty() => raw
                .chunks_exact(8)
                .map(|b| {
                    f64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]) as f32
                })
                .collect(),
            DOUBLE => t.double_data.iter().map(|&x| x as f32).collect(),
            FLOAT16 if !raw.is_empty() => raw
                .chunks_exact(2)
                .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            FLOAT16 => t
                .int32_data
                .iter()
                .map(|&x| half::f16::from_bits(x as u16).to_f32())
                .collect(),
            BFLOAT16 if !raw.is_empty() => raw
                .chunks_exact(2)
                .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            BFLOAT16 => t
                .int32_data
                .iter()
                .map(|&x| half::bf16::from_bits(x as u16).to_f32())
                .collect(),
            other => {
                return Err(ImportError::UnsupportedDtype {
                    name: c.name.clone(),
                    dtype: format!("ONNX data type {other}"),
                })
            }
        };
        if data.len() != n {
            return Err(layout_err(
                &c.name,
                format!("holds {} values for shape {stored:?}", data.len()),
            ));
        }
        if !c.transposed {
            return Ok(RawTensor::new(stored, data));
        }
        if stored.len() != 2 {
            return Err(layout_err(&c.name, "transpose of a tensor that is not 2-D"));
        }
        let (r, k) = (stored[0], stored[1]);
        let mut out = vec![0.0f32; n];
        for i in 0..r {
            for j in 0..k {
                out[j * r + i] = data[i * k + j];
            }
        }
        Ok(RawTensor::new(vec![k, r], out))
    }
}

/// Torch-named weights located in an ONNX graph; tensors are read (and converted) on demand.
#[derive(Debug)]
pub struct OnnxWeights {
    file: OnnxFile,
    /// torch name -> (constant, whether torch stores the transpose of the graph's view).
    map: HashMap<String, (ConstRef, bool)>,
}

impl OnnxWeights {
    /// The torch names found.
    pub fn names(&self) -> Vec<String> {
        let mut v: Vec<String> = self.map.keys().cloned().collect();
        v.sort();
        v
    }

    /// Whether the weight `name` was found.
    pub fn contains(&self, name: &str) -> bool {
        self.map.contains_key(name)
    }
}

impl TensorSource for OnnxWeights {
    fn fetch(&mut self, name: &str) -> Result<Option<RawTensor>, ImportError> {
        match self.map.get(name) {
            None => Ok(None),
            Some((c, t)) => {
                let c = if *t { c.clone().t() } else { c.clone() };
                self.file.read(&c).map(Some)
            }
        }
    }
}

/// Builds the torch-name map while checking exporter-kept names.
pub(crate) struct Assign {
    expected: HashSet<String>,
    map: HashMap<String, (ConstRef, bool)>,
}

impl Assign {
    pub(crate) fn new(expected: impl IntoIterator<Item = String>) -> Self {
        Self {
            expected: expected.into_iter().collect(),
            map: HashMap::new(),
        }
    }

    /// Expecting the torch names of every parameter of `model` (built with lazily initialised
    /// parameters: nothing is allocated).
    pub(crate) fn of_model<M: burn::module::Module<burn::backend::NdArray>>(model: &M) -> Self {
        Self::new(
            crate::load::param_names::<burn::backend::NdArray, _>(model)
                .into_iter()
                .map(|(_, n)| n),
        )
    }

    /// Assign constant `c` (seen by the graph as is; `transpose` if torch stores its transpose)
    /// to torch name `name`.
    pub(crate) fn set(
        &mut self,
        name: &str,
        c: &ConstRef,
        transpose: bool,
    ) -> Result<(), ImportError> {
        if c.name != name && self.expected.contains(&c.name) {
            return Err(layout_err(
                &c.name,
                format!(
                    "the graph uses weight `{}` where `{name}` was expected",
                    c.name
                ),
            ));
        }
        self.map.insert(name.to_string(), (c.clone(), transpose));
        Ok(())
    }

    pub(crate) fn set_opt(
        &mut self,
        name: &str,
        c: &Option<ConstRef>,
        node: &str,
    ) -> Result<(), ImportError> {
        match c {
            Some(c) => self.set(name, c, false),
            None => Err(ImportError::MissingWeight {
                name: name.to_string(),
                tried: format!("bias input of ONNX node {node}"),
            }),
        }
    }

    pub(crate) fn finish(self, file: OnnxFile) -> OnnxWeights {
        OnnxWeights {
            file,
            map: self.map,
        }
    }
}
