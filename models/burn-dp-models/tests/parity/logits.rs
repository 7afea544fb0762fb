//! Logits and per-sample losses of the fixture models against the PyTorch references, for
//! weights loaded from safetensors and from every ONNX export; parameter names.

use burn::prelude::*;
use burn_dp_models::{
    Gpt2, Gpt2Config, ImportError, LoadOptions, Norm, PretrainedModel, ResNet, ResNetConfig,
    ViTConfig, ViTForImageClassification,
};

use crate::support::{fixture, rel_err, Reference, B, TOL};

pub(crate) fn check<const D: usize>(
    what: &str,
    logits: Tensor<B, D>,
    loss: Tensor<B, 1>,
    r: &Reference,
) {
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
    let o = LoadOptions::default();
    let models = [
        (
            "gpt2-tiny safetensors",
            Gpt2::<B>::from_safetensors(&cfg, fixture("gpt2-tiny.weights.safetensors"), &dev, o),
        ),
        (
            "gpt2-tiny dynamo onnx",
            Gpt2::<B>::from_onnx(&cfg, fixture("gpt2-tiny.dynamo.onnx"), &dev, o),
        ),
    ];
    for (what, m) in models {
        let m = m.unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_eq!(
            m.lm_head.is_none(),
            cfg.tie_word_embeddings,
            "{what}: head tying"
        );
        let logits = m.forward(ids.clone(), None);
        let loss = m.loss_per_sample(ids.clone());
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
    let e = rel_err(
        m.forward(ids.clone(), Some(pos.clone())),
        r.float::<3>("logits"),
    );
    assert!(e < TOL, "{e}");
    let e = rel_err(
        m.loss_per_sample((ids, pos)),
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
    type Vit = ViTForImageClassification<B>;
    let models = [
        (
            "vit-tiny safetensors",
            Vit::from_safetensors(&cfg, fixture("vit-tiny.weights.safetensors"), &dev, o),
        ),
        (
            "vit-tiny dynamo onnx",
            Vit::from_onnx(&cfg, fixture("vit-tiny.dynamo.onnx"), &dev, o),
        ),
        (
            "vit-tiny legacy onnx",
            Vit::from_onnx(&cfg, fixture("vit-tiny.legacy.onnx"), &dev, o),
        ),
    ];
    for (what, m) in models {
        let m = m.unwrap_or_else(|e| panic!("{what}: {e}"));
        let logits = m.forward(x.clone());
        let loss = m.loss_per_sample((x.clone(), y.clone()));
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
        let loss = m.loss_per_sample((x.clone(), y.clone()));
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

/// The torch names (`param_names`) of the burn parameters of a model loaded from `st`.
fn loaded_names<M: PretrainedModel<B>>(config: &M::Config, st: &std::path::Path) -> Vec<String> {
    let m = M::from_safetensors(config, st, &Default::default(), LoadOptions::default()).unwrap();
    burn_dp_models::param_names::<B, M>(&m)
        .into_iter()
        .map(|(_, name)| name)
        .collect()
}

#[test]
fn param_names_match_reference_params() {
    // The torch names reported for the burn params are exactly the `params` of the reference
    // metadata, for the safetensors-loaded models.
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
        let names = match model {
            "gpt2-tiny" => {
                loaded_names::<Gpt2<B>>(&Gpt2Config::from_hf_json(&r.config).unwrap(), &st)
            }
            "vit-tiny" => loaded_names::<ViTForImageClassification<B>>(
                &ViTConfig::from_hf_json(&r.config).unwrap(),
                &st,
            ),
            _ => loaded_names::<ResNet<B>>(&ResNetConfig::from_json(&r.config).unwrap(), &st),
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
