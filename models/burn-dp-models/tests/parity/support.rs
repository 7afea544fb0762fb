//! Fixture paths, the reference files and relative errors (`burn_dp::testing`'s).

use std::collections::BTreeSet;
use std::path::PathBuf;

use burn::backend::NdArray;
use burn::prelude::*;
use burn::tensor::TensorData;
use burn_dp::testing::{relative_error, to_vec};
use burn_dp_models::{LoadOptions, Norm, PretrainedModel, ResNet, ResNetConfig, SafetensorsFile};

/// The backend of the forward checks.
pub type B = NdArray<f32>;

/// Relative tolerance of the fixtures README for float32 logits, losses, norms and sums.
pub const TOL: f64 = 1e-4;

/// The fixture folder: `$BURN_DP_FIXTURES`, else the crate's `tests/fixtures`.
pub fn dir() -> PathBuf {
    match std::env::var_os("BURN_DP_FIXTURES") {
        Some(d) => PathBuf::from(d),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures"),
    }
}

/// The path of fixture `name`; panics when it is missing.
///
/// A `BURN_DP_FIXTURES` folder without `name` (a copy of the shared fixture set made before the
/// file existed: the Llama-family fixtures) falls back to the crate's copy, with a note on
/// stderr, as burn-dp's parity tests do.
pub fn fixture(name: &str) -> PathBuf {
    let p = dir().join(name);
    if p.is_file() {
        return p;
    }
    let copy = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name);
    assert!(copy.is_file(), "missing fixture {}", p.display());
    eprintln!(
        "fixture {name} is not in {}: using the crate's copy",
        dir().display()
    );
    copy
}

/// A `<model>.reference.safetensors` file and its `config` metadata.
pub struct Reference {
    pub file: SafetensorsFile,
    pub config: String,
}

impl Reference {
    pub fn open(model: &str) -> Self {
        let file = SafetensorsFile::open(fixture(&format!("{model}.reference.safetensors")))
            .expect("reference file");
        let config = file
            .metadata()
            .expect("metadata")
            .get("config")
            .cloned()
            .expect("reference metadata lacks `config`");
        Self { file, config }
    }
    pub fn float<const D: usize>(&self, name: &str) -> Tensor<B, D> {
        let t = self
            .file
            .read_f32(name)
            .expect("read")
            .unwrap_or_else(|| panic!("no `{name}`"));
        Tensor::from_data(TensorData::new(t.data, t.shape), &Default::default())
    }
    pub fn int<const D: usize>(&self, name: &str) -> Tensor<B, D, Int> {
        let (shape, data) = self
            .file
            .read_i64(name)
            .expect("read")
            .unwrap_or_else(|| panic!("no `{name}`"));
        Tensor::from_data(TensorData::new(data, shape), &Default::default())
    }
    pub fn meta_f64(&self, key: &str) -> f64 {
        self.file.metadata().expect("metadata")[key]
            .parse()
            .unwrap_or_else(|e| panic!("metadata `{key}`: {e}"))
    }
    pub fn raw(&self, name: &str) -> Vec<f32> {
        self.file
            .read_f32(name)
            .expect("read")
            .unwrap_or_else(|| panic!("no `{name}`"))
            .data
    }
    /// Torch names `n` of the tensors `<prefix>n`.
    pub fn names_with_prefix(&self, prefix: &str) -> BTreeSet<String> {
        self.file
            .names()
            .into_iter()
            .filter_map(|n| n.strip_prefix(prefix).map(str::to_string))
            .collect()
    }
}

/// A fixture ResNet loaded from its PyTorch state dict with frozen BatchNorm (the torch
/// parametrisation of the per-sample references).
pub fn load_resnet<BK: Backend>(model: &str, r: &Reference) -> ResNet<BK> {
    let cfg = ResNetConfig::from_json(&r.config)
        .expect("config")
        .with_norm(Norm::FrozenBatchNorm);
    ResNet::<BK>::from_safetensors(
        &cfg,
        fixture(&format!("{model}.weights.safetensors")),
        &Default::default(),
        LoadOptions::default(),
    )
    .unwrap()
}

/// max |a - b| / max |b| (relative error in the infinity norm) of two tensors of one shape.
pub fn rel_err<const D: usize>(a: Tensor<B, D>, b: Tensor<B, D>) -> f64 {
    assert_eq!(a.dims(), b.dims(), "shape mismatch");
    relative_error(&to_vec(a), &to_vec(b))
}

/// The largest magnitude of `v`.
pub fn max_abs(v: &[f32]) -> f64 {
    v.iter().map(|y| (*y as f64).abs()).fold(0.0, f64::max)
}
