//! Typed errors of the importers.

use std::path::PathBuf;

/// Everything that can go wrong while importing weights from a file.
///
/// Every variant names the tensor / node / file involved; the importers never panic on a bad file.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    /// The file could not be opened or read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The safetensors header or data is malformed.
    #[error("invalid safetensors file {path}: {message}")]
    Safetensors {
        /// The file.
        path: PathBuf,
        /// What the safetensors crate said.
        message: String,
    },
    /// The ONNX protobuf could not be decoded.
    #[error("invalid ONNX file {path}: {message}")]
    OnnxDecode {
        /// The file.
        path: PathBuf,
        /// What the protobuf decoder said.
        message: String,
    },
    /// The ONNX graph has a structure the importer does not understand.
    #[error("unsupported ONNX layout at {node}: {message}")]
    OnnxLayout {
        /// The node (or initializer) where it went wrong.
        node: String,
        /// What was expected.
        message: String,
    },
    /// A weight the model needs is not in the file (under any known name).
    #[error("missing weight `{name}` (looked for: {tried})")]
    MissingWeight {
        /// The torch name of the weight.
        name: String,
        /// The names / graph patterns looked up.
        tried: String,
    },
    /// A weight has another shape than the model expects.
    #[error("weight `{name}` has shape {found:?}, expected {expected:?}")]
    ShapeMismatch {
        /// The torch name of the weight.
        name: String,
        /// Shape the model expects (torch layout).
        expected: Vec<usize>,
        /// Shape found in the file.
        found: Vec<usize>,
    },
    /// A weight is stored with an element type that cannot be converted to f32.
    #[error("weight `{name}` has unsupported element type {dtype}")]
    UnsupportedDtype {
        /// The tensor name.
        name: String,
        /// The element type found.
        dtype: String,
    },
    /// The weights are stored outside the ONNX file (external data), which is not supported.
    #[error("tensor `{name}` uses ONNX external data, which is not supported")]
    ExternalData {
        /// The initializer name.
        name: String,
    },
    /// A model configuration (e.g. read from metadata) is invalid.
    #[error("invalid configuration: {0}")]
    Config(String),
}
