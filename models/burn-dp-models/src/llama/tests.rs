//! Unit tests of the Llama-family models and the LoRA adapters (in the lib's one test binary).

use std::collections::HashMap;

use burn::backend::NdArray;
use burn::prelude::*;

use crate::llama::{LlamaAttention, LlamaModel};
use crate::lora::adapters::{load_adapters, peft_name, save_adapters};
use crate::*;

type B = NdArray<f32>;

fn dev() -> burn::backend::ndarray::NdArrayDevice {
    Default::default()
}

/// GQA (4 query heads, 2 KV heads), q/k/v biases, tied head.
fn tiny() -> LlamaConfig {
    LlamaConfig::custom(40, 32, 48, 2, 4, 2)
        .with_bias(ProjectionBias::Qkv)
        .with_tied_head(true)
}

fn ids(b: usize, t: usize) -> Tensor<B, 2, Int> {
    let v: Vec<i64> = (0..b * t).map(|i| (i * 7 % 40) as i64).collect();
    Tensor::from_data(TensorData::new(v, [b, t]), &dev())
}

fn max_diff<const D: usize>(a: Tensor<B, D>, b: Tensor<B, D>) -> f32 {
    (a - b).abs().max().into_scalar()
}

#[test]
fn published_parameter_counts() {
    // Counted from the lazy parameter shapes (nothing is allocated) and analytically.
    let published = [
        (LlamaConfig::smollm2_135m(), 134_515_008),
        (LlamaConfig::qwen2_5_0_5b(), 494_032_768),
        (LlamaConfig::tinyllama_1_1b(), 1_100_048_384),
    ];
    for (cfg, n) in published {
        assert_eq!(cfg.num_params(), n, "{cfg:?}");
        assert_eq!(count_params::<B, _>(&cfg.init::<B>(&dev())), n, "{cfg:?}");
    }
    let t = tiny().with_tied_head(false);
    assert_eq!(count_params::<B, _>(&t.init::<B>(&dev())), t.num_params());
}

#[test]
fn shapes_causality_and_positions() {
    let m = tiny().init::<B>(&dev());
    let x = ids(3, 5);
    let logits = m.forward(x.clone(), None);
    assert_eq!(logits.dims(), [3, 5, 40]);
    // Changing the last token leaves earlier positions unchanged (causal).
    let mut v: Vec<i64> = x.to_data().to_vec().unwrap();
    v[4] = 39;
    let y = Tensor::<B, 2, Int>::from_data(TensorData::new(v, [3, 5]), &dev());
    let other = m.forward(y, None);
    let early = |l: Tensor<B, 3>| l.slice([0..1, 0..4, 0..40]);
    assert!(max_diff(early(logits.clone()), early(other.clone())) < 1e-6);
    assert!(
        max_diff(
            logits.clone().slice([0..1, 4..5, 0..40]),
            other.slice([0..1, 4..5, 0..40])
        ) > 1e-4
    );
    // Explicit positions 0..T equal the default; shifted positions change the logits.
    let pos = |off: i64| {
        let v: Vec<i64> = (0..3).flat_map(|_| (0..5).map(move |p| p + off)).collect();
        Tensor::<B, 2, Int>::from_data(TensorData::new(v, [3, 5]), &dev())
    };
    assert!(max_diff(logits.clone(), m.forward(x.clone(), Some(pos(0)))) < 1e-6);
    // Rotary attention depends on relative positions only: shifting every position changes
    // nothing, a gap between positions does (from the gap on).
    assert!(max_diff(logits.clone(), m.forward(x.clone(), Some(pos(3)))) < 1e-4);
    let gap = Tensor::<B, 2, Int>::from_data([[0, 1, 2, 9, 10]; 3], &dev());
    let gapped = m.forward(x, Some(gap));
    let (head, tail) = (
        |l: Tensor<B, 3>| l.slice([0..3, 0..3, 0..40]),
        |l: Tensor<B, 3>| l.slice([0..3, 3..5, 0..40]),
    );
    assert!(max_diff(head(logits.clone()), head(gapped.clone())) < 1e-6);
    assert!(max_diff(tail(logits), tail(gapped)) > 1e-4);
}

#[test]
fn torch_names_and_layouts() {
    let m = tiny().init::<B>(&dev());
    let params = m.torch_params();
    let names: Vec<&str> = params.iter().map(|p| p.name.as_str()).collect();
    for n in [
        "model.embed_tokens.weight",
        "model.layers.0.input_layernorm.weight",
        "model.layers.0.self_attn.q_proj.weight",
        "model.layers.0.self_attn.q_proj.bias",
        "model.layers.0.self_attn.k_proj.bias",
        "model.layers.1.self_attn.o_proj.weight",
        "model.layers.1.post_attention_layernorm.weight",
        "model.layers.1.mlp.gate_proj.weight",
        "model.layers.1.mlp.down_proj.weight",
        "model.norm.weight",
    ] {
        assert!(names.contains(&n), "{n} missing from {names:?}");
    }
    assert!(!names
        .iter()
        .any(|n| n.contains("o_proj.bias") || n.starts_with("lm_head")));
    let k = params
        .iter()
        .find(|p| p.name == "model.layers.0.self_attn.k_proj.weight");
    let k = k.expect("k_proj");
    assert_eq!(k.burn_shape, vec![32, 16]);
    assert_eq!(
        k.torch_shape(),
        vec![16, 32],
        "torch Linear layout [out, in]"
    );
    let untied = tiny()
        .with_tied_head(false)
        .init::<B>(&dev())
        .torch_params();
    let head = untied
        .iter()
        .find(|p| p.name == "lm_head.weight")
        .expect("head");
    assert_eq!(head.layout, Layout::Transposed);
}

fn state_dict(m: &Llama<B>) -> HashMap<String, RawTensor> {
    let params = m.torch_params();
    crate::load::param_values::<B, _>(m, |_| true)
        .into_iter()
        .map(|(name, t)| {
            let p = params.iter().find(|p| p.name == name).expect("param");
            (
                name,
                RawTensor::new(p.torch_shape(), p.burn_to_torch(&t.data)),
            )
        })
        .collect()
}

#[test]
fn loads_a_state_dict_with_typed_errors() {
    let cfg = tiny();
    let m = cfg.init::<B>(&dev());
    let mut sd = state_dict(&m);
    let loaded = Llama::<B>::from_source(&cfg, &mut sd, &dev(), LoadOptions::default()).unwrap();
    let x = ids(2, 4);
    assert!(max_diff(m.forward(x.clone(), None), loaded.forward(x, None)) < 1e-6);
    // A bare `LlamaModel` state dict (no `model.` prefix) loads too.
    let mut bare: HashMap<String, RawTensor> = sd
        .iter()
        .map(|(k, v)| (k.trim_start_matches("model.").to_string(), v.clone()))
        .collect();
    assert!(Llama::<B>::from_source(&cfg, &mut bare, &dev(), LoadOptions::default()).is_ok());

    let mut missing = sd.clone();
    missing.remove("model.layers.1.self_attn.v_proj.bias");
    let e = Llama::<B>::from_source(&cfg, &mut missing, &dev(), LoadOptions::default());
    assert!(
        matches!(e, Err(ImportError::MissingWeight { ref name, .. }) if name == "model.layers.1.self_attn.v_proj.bias"),
        "{e:?}"
    );
    let mut wrong = sd.clone();
    // burn's [in, out] stored as is: the torch layout is [out, in].
    wrong.insert(
        "model.layers.0.mlp.up_proj.weight".into(),
        RawTensor::new(vec![32, 48], vec![0.0; 32 * 48]),
    );
    let e = Llama::<B>::from_source(&cfg, &mut wrong, &dev(), LoadOptions::default());
    assert!(
        matches!(e, Err(ImportError::ShapeMismatch { ref expected, .. }) if expected == &vec![48, 32]),
        "{e:?}"
    );
    let mut untied = sd;
    untied.insert(
        "lm_head.weight".into(),
        RawTensor::new(vec![40, 32], vec![0.5; 40 * 32]),
    );
    let e = Llama::<B>::from_source(&cfg, &mut untied, &dev(), LoadOptions::default());
    assert!(matches!(e, Err(ImportError::Config(_))), "{e:?}");
}

#[test]
fn configs_validate_and_read_hf_json() {
    let bad = [
        LlamaConfig::custom(40, 32, 48, 2, 4, 3),
        LlamaConfig {
            head_dim: 7,
            ..tiny()
        },
        LlamaConfig {
            rope_theta: f64::NAN,
            ..tiny()
        },
    ];
    for cfg in bad {
        assert!(
            matches!(cfg.validate(), Err(ImportError::Config(_))),
            "{cfg:?}"
        );
        let e = Llama::<B>::from_source(&cfg, &mut HashMap::new(), &dev(), LoadOptions::default());
        assert!(matches!(e, Err(ImportError::Config(_))));
    }
    let qwen = r#"{"model_type": "qwen2", "vocab_size": 151936, "hidden_size": 896,
        "intermediate_size": 4864, "num_hidden_layers": 24, "num_attention_heads": 14,
        "num_key_value_heads": 2, "rms_norm_eps": 1e-06, "rope_theta": 1000000.0,
        "tie_word_embeddings": true, "use_sliding_window": false, "hidden_act": "silu",
        "max_position_embeddings": 32768}"#;
    assert_eq!(
        LlamaConfig::from_hf_json(qwen).unwrap(),
        LlamaConfig::qwen2_5_0_5b()
    );
    // transformers 5 keeps the rotary base in `rope_parameters`.
    let smol = r#"{"model_type": "llama", "vocab_size": 49152, "hidden_size": 576,
        "intermediate_size": 1536, "num_hidden_layers": 30, "num_attention_heads": 9,
        "num_key_value_heads": 3, "rms_norm_eps": 1e-05, "tie_word_embeddings": true,
        "rope_parameters": {"rope_type": "default", "rope_theta": 100000.0},
        "max_position_embeddings": 8192, "attention_bias": false, "mlp_bias": false}"#;
    assert_eq!(
        LlamaConfig::from_hf_json(smol).unwrap(),
        LlamaConfig::smollm2_135m()
    );
    for bad in [
        r#""rope_scaling": {"rope_type": "llama3", "factor": 8.0}"#,
        r#""use_sliding_window": true"#,
        r#""model_type": "mistral""#,
        r#""hidden_act": "tanh""#,
    ] {
        let json = format!(
            r#"{{"vocab_size": 10, "hidden_size": 8, "intermediate_size": 8,
            "num_hidden_layers": 1, "num_attention_heads": 2, {bad}}}"#
        );
        assert!(
            matches!(
                LlamaConfig::from_hf_json(&json),
                Err(ImportError::Config(_))
            ),
            "{bad}"
        );
    }
}

/// A model with adapters on q and v whose `B` is not zero (as after training).
fn adapted(lora: &LoraConfig) -> Llama<B> {
    let m = tiny().init::<B>(&dev()).with_lora(lora, &dev()).unwrap();
    let perturb = |l: LoraLinear<B>| {
        let lora_b = l.lora_b.map(|b| {
            let w = b.weight.map(|w| {
                let dims = w.dims();
                Tensor::random(dims, burn::tensor::Distribution::Normal(0.0, 0.3), &dev())
            });
            burn::nn::Linear { weight: w, ..b }
        });
        LoraLinear { lora_b, ..l }
    };
    let layers = m
        .model
        .layers
        .into_iter()
        .map(|mut layer| {
            let a = layer.self_attn;
            layer.self_attn = LlamaAttention {
                q_proj: perturb(a.q_proj),
                v_proj: perturb(a.v_proj),
                ..a
            };
            layer
        })
        .collect();
    Llama {
        model: LlamaModel { layers, ..m.model },
        ..m
    }
}

#[test]
fn lora_adapters_add_merge_save_and_load() {
    let base = tiny().init::<B>(&dev());
    let x = ids(2, 6);
    let before = base.forward(x.clone(), None);
    let lora = LoraConfig::new(4, 8.0, &["q_proj", "v_proj"]);
    // A fresh adapter (B = 0) leaves the model unchanged; 2 layers x 2 targets x (A, B).
    let fresh = base.with_lora(&lora, &dev()).unwrap();
    assert!(max_diff(before.clone(), fresh.forward(x.clone(), None)) < 1e-6);
    let names: Vec<String> = fresh
        .torch_params()
        .into_iter()
        .map(|p| p.name)
        .filter(|n| is_adapter_param(n))
        .collect();
    assert_eq!(names.len(), 8);
    assert!(names.contains(&"model.layers.1.self_attn.v_proj.lora_b.weight".to_string()));
    // Errors: a target matching nothing, adapting twice, a bad configuration.
    let e = fresh
        .clone()
        .with_lora(&LoraConfig::new(4, 8.0, &["qkv"]), &dev());
    assert!(matches!(e, Err(LoraError::NoMatch { .. })), "{e:?}");
    let e = fresh.clone().with_lora(&lora, &dev());
    assert!(matches!(e, Err(LoraError::AlreadyAdapted { .. })), "{e:?}");
    let e = tiny()
        .init::<B>(&dev())
        .with_lora(&LoraConfig::new(0, 8.0, &["q_proj"]), &dev());
    assert!(matches!(e, Err(LoraError::Config(_))), "{e:?}");
    // One layer only, by full path.
    let one = tiny()
        .init::<B>(&dev())
        .with_lora(
            &LoraConfig::new(2, 2.0, &["model.layers.1.self_attn.q_proj"]),
            &dev(),
        )
        .unwrap();
    assert!(!one.model.layers[0].self_attn.q_proj.has_adapter());
    assert_eq!(one.model.layers[1].self_attn.q_proj.rank(), Some(2));

    // A trained adapter changes the output; merging keeps it and removes the adapters.
    let m = adapted(&lora);
    let with = m.forward(x.clone(), None);
    assert!(max_diff(before, with.clone()) > 1e-3);
    let merged = m.clone().merge_adapters();
    assert!(merged
        .torch_params()
        .iter()
        .all(|p| !is_adapter_param(&p.name)));
    assert!(max_diff(with.clone(), merged.forward(x.clone(), None)) < 1e-5);

    // Saved on their own (PEFT names and layout), loaded into fresh adapters.
    let dir = std::env::temp_dir().join(format!("burn-dp-lora-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    // The merged model exported as an HF state dict (tied head stored once) loads back.
    let export = dir.join("model.safetensors");
    let n = crate::st::save_state_dict::<B, _>(&merged, &export).unwrap();
    assert_eq!(n, merged.torch_params().len());
    let file = SafetensorsFile::open(&export).unwrap();
    assert!(file.contains("model.embed_tokens.weight") && !file.contains("lm_head.weight"));
    let reloaded =
        Llama::<B>::from_safetensors(&tiny(), &export, &dev(), LoadOptions::default()).unwrap();
    assert!(max_diff(with.clone(), reloaded.forward(x.clone(), None)) < 1e-5);

    let path = dir.join("adapter_model.safetensors");
    assert_eq!(save_adapters::<B, _>(&m, &lora, &path).unwrap(), 8);
    let file = SafetensorsFile::open(&path).unwrap();
    let a = file
        .read_f32(&peft_name("model.layers.0.self_attn.q_proj.lora_a.weight"))
        .unwrap()
        .expect("PEFT name");
    assert_eq!(a.shape, vec![4, 32], "lora_A is [r, in]");
    assert_eq!(file.metadata().unwrap()["r"], "4");
    let reloaded =
        load_adapters::<B, _>(base_of(&m).with_lora(&lora, &dev()).unwrap(), &lora, &path).unwrap();
    assert!(max_diff(with, reloaded.forward(x, None)) < 1e-6);
    // Typed errors: another rank, another alpha, adapters the model lacks.
    let r8 = LoraConfig::new(8, 8.0, &["q_proj", "v_proj"]);
    let e = load_adapters::<B, _>(base_of(&m).with_lora(&r8, &dev()).unwrap(), &r8, &path);
    assert!(matches!(e, Err(ImportError::Config(_))), "{e:?}");
    let e = load_adapters::<B, _>(
        base_of(&m).with_lora(&lora, &dev()).unwrap(),
        &LoraConfig::new(4, 16.0, &["q_proj", "v_proj"]),
        &path,
    );
    assert!(matches!(e, Err(ImportError::Config(_))), "{e:?}");
    let q_only = LoraConfig::new(4, 8.0, &["q_proj"]);
    let e = load_adapters::<B, _>(
        base_of(&m).with_lora(&q_only, &dev()).unwrap(),
        &q_only,
        &path,
    );
    assert!(matches!(e, Err(ImportError::Config(_))), "{e:?}");
    let qkv = LoraConfig::new(4, 8.0, &["q_proj", "k_proj", "v_proj"]);
    let e = load_adapters::<B, _>(base_of(&m).with_lora(&qkv, &dev()).unwrap(), &qkv, &path);
    assert!(matches!(e, Err(ImportError::MissingWeight { .. })), "{e:?}");
    std::fs::remove_dir_all(&dir).ok();
}

/// The base model of an adapted one (its adapters dropped, not merged).
fn base_of(m: &Llama<B>) -> Llama<B> {
    let mut m = m.clone();
    for layer in &mut m.model.layers {
        for l in [&mut layer.self_attn.q_proj, &mut layer.self_attn.v_proj] {
            l.lora_a = None;
            l.lora_b = None;
        }
    }
    m
}

/// `llama-tiny.dynamo.onnx` with its graph edited by `edit`, written to `dir/name`.
fn edited_export(
    dir: &std::path::Path,
    name: &str,
    edit: impl FnOnce(&mut onnx_ir::GraphProto),
) -> std::path::PathBuf {
    use protobuf::Message;
    let bytes = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/llama-tiny.dynamo.onnx"
    ))
    .unwrap();
    let mut model = onnx_ir::ModelProto::parse_from_bytes(&bytes).unwrap();
    edit(model.graph.mut_or_insert_default());
    let path = dir.join(name);
    std::fs::write(&path, model.write_to_bytes().unwrap()).unwrap();
    path
}

#[test]
fn onnx_locator_follows_the_graph_not_the_order() {
    let dir = std::env::temp_dir().join(format!("burn-dp-llama-onnx-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = LlamaConfig::custom(256, 64, 128, 2, 4, 2).with_tied_head(true);
    let load = |p: &std::path::Path| Llama::<B>::from_onnx(&cfg, p, &dev(), LoadOptions::default());
    let values = |m: &Llama<B>| crate::load::param_values::<B, _>(m, |_| true);
    let fixture = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/llama-tiny.dynamo.onnx"
    );
    let original = values(&load(std::path::Path::new(fixture)).unwrap());

    // Layer 0's up projection moved before its gate projection: the down projection, which
    // reads `act(gate) · up`, tells them apart.
    let swapped = edited_export(&dir, "swapped.onnx", |g| {
        let up = g
            .node
            .iter()
            .position(|n| n.name == "node_linear_5")
            .unwrap();
        let gate = g
            .node
            .iter()
            .position(|n| n.name == "node_linear_4")
            .unwrap();
        let node = g.node.remove(up);
        g.node.insert(gate, node);
    });
    let m = load(&swapped).unwrap();
    for ((name, a), (_, b)) in original.iter().zip(&values(&m)) {
        assert!(a.shape == b.shape && a.data == b.data, "{name}");
    }

    // Layer 0's query projection reading the residual stream instead of the input norm.
    let rewired = edited_export(&dir, "rewired.onnx", |g| {
        let q = g.node.iter_mut().find(|n| n.name == "node_linear").unwrap();
        q.input[0] = "embedding".into();
    });
    match load(&rewired) {
        Err(ImportError::OnnxLayout { node, message }) => {
            assert_eq!(node, "node_linear");
            assert!(
                message.contains("model.layers.0.self_attn.q_proj")
                    && message.contains("node_mul_4"),
                "{message}"
            );
        }
        other => panic!("expected OnnxLayout, got {:?}", other.err()),
    }
    std::fs::remove_dir_all(&dir).ok();
}
