//! Parity of the burn ports with the PyTorch reference logits and per-sample losses, for weights
//! loaded from safetensors and from every ONNX export of the fixture models.
//!
//! Fixtures are read from `$BURN_DP_FIXTURES` when set, else from the crate's `tests/fixtures`.
//! A missing fixture is a failure.

use std::path::PathBuf;

use burn::backend::NdArray;
use burn::prelude::*;
use burn::tensor::TensorData;
use burn_dp_models::{
    Gpt2, Gpt2Config, ImportError, LoadOptions, Norm, ResNet, ResNetConfig, SafetensorsFile,
    ViTConfig, ViTForImageClassification,
};

type B = NdArray<f32>;

/// Relative tolerance of the fixtures README for float32 logits and losses.
const TOL: f64 = 1e-4;

fn dir() -> PathBuf {
    match std::env::var_os("BURN_DP_FIXTURES") {
        Some(d) => PathBuf::from(d),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures"),
    }
}

fn fixture(name: &str) -> PathBuf {
    let p = dir().join(name);
    assert!(p.is_file(), "missing fixture {}", p.display());
    p
}

struct Reference {
    file: SafetensorsFile,
    config: String,
}

impl Reference {
    fn open(model: &str) -> Self {
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
    fn float<const D: usize>(&self, name: &str) -> Tensor<B, D> {
        let t = self
            .file
            .read_f32(name)
            .expect("read")
            .unwrap_or_else(|| panic!("no `{name}`"));
        Tensor::from_data(TensorData::new(t.data, t.shape), &Default::default())
    }
    fn int<const D: usize>(&self, name: &str) -> Tensor<B, D, Int> {
        let (shape, data) = self
            .file
            .read_i64(name)
            .expect("read")
            .unwrap_or_else(|| panic!("no `{name}`"));
        Tensor::from_data(TensorData::new(data, shape), &Default::default())
    }
}

/// max |a - b| / max |b| (relative error in the infinity norm).
fn rel_err<const D: usize>(a: Tensor<B, D>, b: Tensor<B, D>) -> f64 {
    assert_eq!(a.dims(), b.dims(), "shape mismatch");
    let diff: f64 = (a - b.clone()).abs().max().into_scalar().into();
    let scale: f64 = b.abs().max().into_scalar().into();
    diff / scale.max(1e-30)
}

fn check<const D: usize>(what: &str, logits: Tensor<B, D>, loss: Tensor<B, 1>, r: &Reference) {
    let el = rel_err(logits, r.float::<D>("logits"));
    let ep = rel_err(loss, r.float::<1>("loss_per_sample"));
    println!("{what:<48} logits rel err {el:.3e}   loss rel err {ep:.3e}");
    assert!(el < TOL, "{what}: logits relative error {el:e} >= {TOL:e}");
    assert!(ep < TOL, "{what}: loss relative error {ep:e} >= {TOL:e}");
}

#[test]
fn gpt2_tiny_parity() {
    let r = Reference::open("gpt2-tiny");
    let cfg = Gpt2Config::from_hf_json(&r.config).expect("config");
    let dev = Default::default();
    let ids = r.int::<2>("input");
    let models = [
        (
            "gpt2-tiny safetensors",
            Gpt2::<B>::from_safetensors(
                &cfg,
                fixture("gpt2-tiny.weights.safetensors"),
                &dev,
                LoadOptions::default(),
            ),
        ),
        (
            "gpt2-tiny dynamo onnx",
            Gpt2::<B>::from_onnx(
                &cfg,
                fixture("gpt2-tiny.dynamo.onnx"),
                &dev,
                LoadOptions::default(),
            ),
        ),
    ];
    for (what, m) in models {
        let m = m.unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_eq!(m.lm_head.is_none(), cfg.tie_word_embeddings, "{what}: head tying");
        let logits = m.forward(ids.clone(), None);
        let loss = burn_dp_models::lm_loss_per_sample(logits.clone(), ids.clone());
        check(what, logits, loss, &r);
    }
}

#[test]
fn gpt2_tiny_explicit_positions_match_default() {
    let r = Reference::open("gpt2-tiny");
    let cfg = Gpt2Config::from_hf_json(&r.config).expect("config");
    let dev = Default::default();
    let m = Gpt2::<B>::from_safetensors(
        &cfg,
        fixture("gpt2-tiny.weights.safetensors"),
        &dev,
        LoadOptions::default(),
    )
    .unwrap();
    let ids = r.int::<2>("input");
    let [b, t] = ids.dims();
    let pos = Tensor::<B, 1, Int>::arange(0..t as i64, &dev)
        .reshape([1, t])
        .repeat_dim(0, b);
    let e = rel_err(m.forward(ids.clone(), Some(pos)), r.float::<3>("logits"));
    assert!(e < TOL, "{e}");
    // Per-sample loss through the model method.
    let e = rel_err(
        m.loss_per_sample(ids, None),
        r.float::<1>("loss_per_sample"),
    );
    assert!(e < TOL, "{e}");
}

#[test]
fn vit_tiny_parity() {
    let r = Reference::open("vit-tiny");
    let cfg = ViTConfig::from_hf_json(&r.config).expect("config");
    let dev = Default::default();
    let x = r.float::<4>("input");
    let y = r.int::<1>("target");
    let o = LoadOptions::default();
    let models = [
        (
            "vit-tiny safetensors",
            ViTForImageClassification::<B>::from_safetensors(
                &cfg,
                fixture("vit-tiny.weights.safetensors"),
                &dev,
                o,
            ),
        ),
        (
            "vit-tiny dynamo onnx",
            ViTForImageClassification::<B>::from_onnx(
                &cfg,
                fixture("vit-tiny.dynamo.onnx"),
                &dev,
                o,
            ),
        ),
        (
            "vit-tiny legacy onnx",
            ViTForImageClassification::<B>::from_onnx(
                &cfg,
                fixture("vit-tiny.legacy.onnx"),
                &dev,
                o,
            ),
        ),
    ];
    for (what, m) in models {
        let m = m.unwrap_or_else(|e| panic!("{what}: {e}"));
        let logits = m.forward(x.clone());
        let loss = m.loss_per_sample(x.clone(), y.clone());
        check(what, logits, loss, &r);
    }
}

fn resnet_parity(model: &str) {
    let r = Reference::open(model);
    let cfg = ResNetConfig::from_json(&r.config).expect("config");
    let dev = Default::default();
    let x = r.float::<4>("input");
    let y = r.int::<1>("target");
    let o = LoadOptions::default();
    let st = fixture(&format!("{model}.weights.safetensors"));
    let frozen = cfg.clone().with_norm(Norm::FrozenBatchNorm);
    let folded = cfg.clone().with_norm(Norm::Folded);
    let models = [
        (
            format!("{model} safetensors FrozenBatchNorm"),
            ResNet::<B>::from_safetensors(&frozen, &st, &dev, o),
        ),
        (
            format!("{model} safetensors Folded"),
            ResNet::<B>::from_safetensors(&folded, &st, &dev, o),
        ),
        (
            format!("{model} dynamo onnx Folded"),
            ResNet::<B>::from_onnx(&folded, fixture(&format!("{model}.dynamo.onnx")), &dev, o),
        ),
        (
            format!("{model} legacy onnx Folded"),
            ResNet::<B>::from_onnx(&folded, fixture(&format!("{model}.legacy.onnx")), &dev, o),
        ),
    ];
    for (what, m) in models {
        let m = m.unwrap_or_else(|e| panic!("{what}: {e}"));
        let logits = m.forward(x.clone());
        let loss = m.loss_per_sample(x.clone(), y.clone());
        check(&what, logits, loss, &r);
    }
    // A folded export cannot give a BatchNorm model: typed error, no panic.
    let err = ResNet::<B>::from_onnx(&frozen, fixture(&format!("{model}.dynamo.onnx")), &dev, o)
        .unwrap_err();
    assert!(matches!(err, ImportError::OnnxLayout { .. }), "{err}");
}

#[test]
fn resnet_basic_small_parity() {
    resnet_parity("resnet-basic-small");
}

#[test]
fn resnet_bottleneck_small_parity() {
    resnet_parity("resnet-bottleneck-small");
}

#[test]
fn param_names_match_reference_params() {
    // The torch names reported for the burn params are exactly the `params` of the reference
    // metadata (with shapes in torch layout), for the safetensors-loaded models.
    let dev = Default::default();
    let o = LoadOptions::default();
    for model in [
        "gpt2-tiny",
        "vit-tiny",
        "resnet-basic-small",
        "resnet-bottleneck-small",
    ] {
        let r = Reference::open(model);
        let params: serde_json::Map<String, serde_json::Value> =
            serde_json::from_str(&r.file.metadata().unwrap()["params"]).unwrap();
        let st = fixture(&format!("{model}.weights.safetensors"));
        let names: Vec<String> = match model {
            "gpt2-tiny" => {
                let m = Gpt2::<B>::from_safetensors(
                    &Gpt2Config::from_hf_json(&r.config).unwrap(),
                    &st,
                    &dev,
                    o,
                )
                .unwrap();
                burn_dp_models::param_names::<B, _>(&m)
                    .into_iter()
                    .map(|x| x.1)
                    .collect()
            }
            "vit-tiny" => {
                let m = ViTForImageClassification::<B>::from_safetensors(
                    &ViTConfig::from_hf_json(&r.config).unwrap(),
                    &st,
                    &dev,
                    o,
                )
                .unwrap();
                burn_dp_models::param_names::<B, _>(&m)
                    .into_iter()
                    .map(|x| x.1)
                    .collect()
            }
            _ => {
                let m = ResNet::<B>::from_safetensors(
                    &ResNetConfig::from_json(&r.config).unwrap(),
                    &st,
                    &dev,
                    o,
                )
                .unwrap();
                burn_dp_models::param_names::<B, _>(&m)
                    .into_iter()
                    .map(|x| x.1)
                    .collect()
            }
        };
        let mut a = names.clone();
        a.sort();
        let mut b: Vec<String> = params.keys().cloned().collect();
        b.sort();
        assert_eq!(a, b, "{model}");
        // every reference auto_clip_sum entry has a burn param
        for n in &names {
            assert!(
                r.file.contains(&format!("auto_clip_sum.{n}")),
                "{model}: no auto_clip_sum.{n}"
            );
        }
    }
}
