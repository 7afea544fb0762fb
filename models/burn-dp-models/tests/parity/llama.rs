//! The Llama-family port and its LoRA adapters against transformers' `LlamaForCausalLM` /
//! `Qwen2ForCausalLM` (references written by `tools/fixtures/llama.py`, float64 in PyTorch).
//!
//! - `llama-tiny`: GQA (4 query / 2 KV heads), tied head, no biases, and a sequence length equal
//!   to the batch size (6 × 6): the rotary table has as many rows as the batch and must not be
//!   taken for batch data. Its `lora.*` references: a plain LoRA (r = 4, α = 8) on `q_proj` and
//!   `v_proj`, only the adapters trainable.
//! - `qwen2-tiny`: one KV head for four query heads, q/k/v biases (DP-BiTFiT too), untied head.
//!
//! Logits and per-sample losses within 1e-4; per-sample gradient norms and automatic / Abadi
//! clipped sums within 1e-4 in every norm mode; the adapters' per-sample gradients also against
//! a batch-of-one loop. Both models also load from their `torch.onnx.export(..., dynamo=True)`
//! exports (`M.dynamo.onnx`): the same parameters as from safetensors, bit for bit, and a graph
//! of another model or configuration is a typed error.

use burn::module::{ModuleVisitor, Param, ParamId};
use burn::optim::GradientsParams;
use burn::prelude::*;
use burn_dp::PerSample;
use burn_dp_models::adapters::load_adapters;
use burn_dp_models::Slot;
use burn_dp_models::{
    adapters_policy, ImportError, Llama, LlamaConfig, LoadOptions, LoraConfig, OnnxFile,
    PretrainedModel, ProjectionBias,
};

use crate::per_sample::{dp_parity, dp_parity_settings, Dp, ALL_MODES};
use crate::support::{fixture, rel_err, Reference, B, TOL};
use burn_dp::testing::{relative_error, to_vec};

fn load<BK: Backend>(model: &str, r: &Reference) -> Llama<BK> {
    let cfg = LlamaConfig::from_hf_json(&r.config).expect("config");
    Llama::<BK>::from_safetensors(
        &cfg,
        fixture(&format!("{model}.weights.safetensors")),
        &Default::default(),
        LoadOptions::default(),
    )
    .unwrap_or_else(|e| panic!("{model}: {e}"))
}

/// The LoRA settings of the reference's `lora` metadata.
fn lora_config(r: &Reference) -> LoraConfig {
    let v: serde_json::Value =
        serde_json::from_str(&r.file.metadata().expect("metadata")["lora"]).expect("lora json");
    let targets: Vec<&str> = v["targets"]
        .as_array()
        .expect("targets")
        .iter()
        .filter_map(|t| t.as_str())
        .collect();
    LoraConfig::new(
        v["r"].as_u64().expect("r") as usize,
        v["alpha"].as_f64().expect("alpha"),
        &targets,
    )
}

/// The base model with the reference's adapters loaded from `<model>.lora.safetensors`.
fn load_adapted<BK: Backend>(model: &str, r: &Reference) -> Llama<BK> {
    let lora = lora_config(r);
    let m = load::<BK>(model, r)
        .with_lora(&lora, &Default::default())
        .expect("adapters");
    load_adapters::<BK, _>(m, &lora, fixture(&format!("{model}.lora.safetensors")))
        .expect("adapter file")
}

fn check_logits(what: &str, m: &Llama<B>, r: &Reference, prefix: &str) {
    let ids = r.int::<2>("input");
    let el = rel_err(
        m.forward(ids.clone(), None),
        r.float::<3>(&format!("{prefix}logits")),
    );
    let ep = rel_err(
        m.loss_per_sample(ids),
        r.float::<1>(&format!("{prefix}loss_per_sample")),
    );
    println!("{what:<36} logits rel err {el:.3e}   loss rel err {ep:.3e}");
    assert!(el < TOL, "{what}: logits relative error {el:e}");
    assert!(ep < TOL, "{what}: loss relative error {ep:e}");
}

#[test]
fn llama_family_logits_and_names() {
    for model in ["llama-tiny", "qwen2-tiny"] {
        let r = Reference::open(model);
        let m = load::<B>(model, &r);
        check_logits(model, &m, &r, "");
        let params: serde_json::Map<String, serde_json::Value> =
            serde_json::from_str(&r.file.metadata().unwrap()["params"]).unwrap();
        let mut ours: Vec<String> = m.torch_params().into_iter().map(|p| p.name).collect();
        ours.sort();
        let theirs: Vec<String> = params.keys().cloned().collect();
        assert_eq!(ours, theirs, "{model}: parameter names");
    }
    let r = Reference::open("llama-tiny");
    let adapted = load_adapted::<B>("llama-tiny", &r);
    check_logits("llama-tiny + LoRA", &adapted, &r, "lora.");
    let merged = adapted.merge_adapters();
    check_logits("llama-tiny + LoRA, merged", &merged, &r, "lora.");
}

fn token_losses(r: &Reference) -> impl Fn(&Llama<Dp>) -> Tensor<Dp, 1> {
    let ids = r.int::<2>("input").into_data();
    move |m: &Llama<Dp>| {
        // Token ids need no batch mark: the embedding lookup marks its output.
        m.loss_per_sample(Tensor::<Dp, 2, Int>::from_data(
            ids.clone(),
            &Default::default(),
        ))
    }
}

#[test]
fn llama_tiny_per_sample_gradients() {
    let r = Reference::open("llama-tiny");
    assert_eq!(
        r.int::<2>("input").dims(),
        [6, 6],
        "T equal to the batch size"
    );
    let m = load::<Dp>("llama-tiny", &r);
    let params = m.torch_params();
    dp_parity("llama-tiny", m, &params, ALL_MODES, token_losses(&r));
}

#[test]
fn qwen2_tiny_per_sample_gradients() {
    let r = Reference::open("qwen2-tiny");
    let m = load::<Dp>("qwen2-tiny", &r);
    let params = m.torch_params();
    dp_parity("qwen2-tiny", m, &params, ALL_MODES, token_losses(&r));
}

#[test]
fn llama_tiny_lora_per_sample_gradients() {
    let r = Reference::open("llama-tiny");
    let (m, _) = burn_dp::freeze(
        load_adapted::<Dp>("llama-tiny", &r),
        &adapters_policy(false),
    )
    .unwrap();
    let params = m.torch_params();
    let c = r.meta_f64("lora_abadi_c");
    let settings = [("lora", "lora.", m.clone(), c)];
    dp_parity_settings(
        "llama-tiny",
        &settings,
        &params,
        ALL_MODES,
        token_losses(&r),
    );

    // The same per-sample gradients against a batch-of-one loop (ordinary backward passes).
    let losses = token_losses(&r);
    let per_sample = burn_dp::per_sample_gradients(&m, losses(&m)).expect("per-sample");
    assert_eq!(per_sample.len(), 8, "2 layers x (q, v) x (A, B)");
    let ids = r.int::<2>("input").into_data();
    let [b, t] = [ids.shape[0], ids.shape[1]];
    let all: Vec<i64> = ids.to_vec().expect("ids");
    let mut worst = 0.0f64;
    for i in 0..b {
        let one = TensorData::new(all[i * t..(i + 1) * t].to_vec(), [1, t]);
        let loss = m.loss_per_sample(Tensor::<Dp, 2, Int>::from_data(one, &Default::default()));
        let grads = GradientsParams::from_grads(loss.sum().backward(), &m);
        for (id, path, g) in &per_sample {
            let expected = grad_of(&grads, *id).unwrap_or_else(|| panic!("no gradient for {path}"));
            let row = g.clone().narrow(0, i, 1).reshape([expected.len() as i32]);
            let e = relative_error(&to_vec(row), &expected);
            worst = worst.max(e);
            assert!(
                e < TOL,
                "sample {i} {path}: rel err {e:.3e} against batch of one"
            );
        }
    }
    println!(
        "llama-tiny LoRA per-sample gradients vs batch-of-one loop: worst rel err {worst:.2e}"
    );
}

/// A 2-D parameter gradient from a batch-of-one backward, flattened.
fn grad_of(grads: &GradientsParams, id: ParamId) -> Option<Vec<f32>> {
    let g = grads.get::<PerSample<B>, 2>(id)?;
    let numel = g.shape().num_elements();
    Some(g.reshape([numel]).into_data().to_vec().expect("f32"))
}

/// The values of every float parameter, in visiting order.
struct Values(Vec<Vec<f32>>);

impl<BK: Backend> ModuleVisitor<BK> for Values {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<BK, D>>) {
        let data = param.val().into_data().convert::<f32>();
        self.0.push(data.to_vec().expect("f32"));
    }
}

fn values(m: &Llama<B>) -> Vec<Vec<f32>> {
    let mut v = Values(Vec::new());
    m.visit(&mut v);
    v.0
}

fn from_onnx(model: &str, cfg: &LlamaConfig) -> Result<Llama<B>, ImportError> {
    Llama::<B>::from_onnx(
        cfg,
        fixture(&format!("{model}.dynamo.onnx")),
        &Default::default(),
        LoadOptions::default(),
    )
}

#[test]
fn llama_family_onnx_import() {
    for model in ["llama-tiny", "qwen2-tiny"] {
        let r = Reference::open(model);
        let cfg = LlamaConfig::from_hf_json(&r.config).expect("config");
        let what = format!("{model} dynamo onnx");
        let m = from_onnx(model, &cfg).unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_eq!(
            m.lm_head.is_none(),
            cfg.tie_word_embeddings,
            "{what}: tying"
        );
        let st = load::<B>(model, &r);
        let names = st.torch_params();
        let (expected, found) = (values(&st), values(&m));
        assert_eq!(expected.len(), names.len(), "{what}: parameter count");
        assert_eq!(found.len(), names.len(), "{what}: parameter count");
        for ((p, e), f) in names.iter().zip(&expected).zip(&found) {
            // The exporter stores the same float32 values (transposed): bit for bit.
            assert!(
                e == f,
                "{what}: `{}` differs from the safetensors import",
                p.name
            );
        }
        check_logits(&what, &m, &r, "");
        // One RMSNorm slot per norm (2 per layer and the final one), found by structure.
        let file = OnnxFile::open(fixture(&format!("{model}.dynamo.onnx"))).expect("onnx");
        let n = rms_slots(&file);
        assert_eq!(n, 2 * cfg.num_hidden_layers + 1, "{what}: RMSNorm slots");
    }
    // GPT-2's LayerNorms are no RMSNorms.
    let gpt2 = OnnxFile::open(fixture("gpt2-tiny.dynamo.onnx")).expect("onnx");
    assert_eq!(rms_slots(&gpt2), 0, "gpt2-tiny: RMSNorm slots");
}

fn rms_slots(file: &OnnxFile) -> usize {
    let slots = file.slots().expect("slots");
    slots
        .iter()
        .filter(|s| matches!(s, Slot::RmsNorm { .. }))
        .count()
}

/// The message of an [`ImportError::OnnxLayout`]; panics on another variant.
fn layout_message(what: &str, r: Result<Llama<B>, ImportError>) -> String {
    match r {
        Err(ImportError::OnnxLayout { node, message }) => {
            println!("{what}: at {node}: {message}");
            message
        }
        Err(e) => panic!("{what}: expected OnnxLayout, got {e:?}"),
        Ok(_) => panic!("{what}: loaded"),
    }
}

#[test]
fn llama_onnx_import_refuses_other_graphs() {
    let llama = LlamaConfig::from_hf_json(&Reference::open("llama-tiny").config).expect("config");
    let qwen2 = LlamaConfig::from_hf_json(&Reference::open("qwen2-tiny").config).expect("config");

    // GPT-2's export: two embedding tables (wte, wpe), LayerNorms, no RMSNorm.
    let gpt2 = Llama::<B>::from_onnx(
        &llama,
        fixture("gpt2-tiny.dynamo.onnx"),
        &Default::default(),
        LoadOptions::default(),
    );
    let m = layout_message("gpt2 as llama", gpt2);
    assert!(m.contains("expected 1 embedding Gather node"), "{m}");

    // Another layer count.
    let three = LlamaConfig {
        num_hidden_layers: 3,
        ..llama.clone()
    };
    let m = layout_message("3 layers", from_onnx("llama-tiny", &three));
    assert!(
        m.contains("expected 7 RMSNorm scales") && m.contains("found 5"),
        "{m}"
    );

    // Another width: the shapes are the loader's to check, naming the weight.
    let narrow = LlamaConfig {
        hidden_size: 32,
        head_dim: 8,
        ..llama.clone()
    };
    match from_onnx("llama-tiny", &narrow) {
        Err(ImportError::ShapeMismatch {
            name,
            expected,
            found,
        }) => {
            assert_eq!(name, "model.embed_tokens.weight");
            assert_eq!((expected, found), (vec![256, 32], vec![256, 64]));
        }
        other => panic!("narrow: expected ShapeMismatch, got {:?}", other.err()),
    }

    // Head tying and biases other than the export's.
    let m = layout_message(
        "tied export, untied config",
        from_onnx("llama-tiny", &llama.clone().with_tied_head(false)),
    );
    assert!(
        m.contains("tied head") && m.contains("lm_head.weight"),
        "{m}"
    );
    let m = layout_message(
        "untied export, tied config",
        from_onnx("qwen2-tiny", &qwen2.clone().with_tied_head(true)),
    );
    assert!(m.contains("untied head"), "{m}");
    let m = layout_message(
        "biases in the graph, none in the config",
        from_onnx("qwen2-tiny", &qwen2.with_bias(ProjectionBias::None)),
    );
    assert!(
        m.contains("model.layers.0.self_attn.q_proj` has a bias")
            && m.contains("model.layers.0.self_attn.q_proj.bias"),
        "{m}"
    );
    match from_onnx("llama-tiny", &llama.with_bias(ProjectionBias::Qkv)) {
        Err(ImportError::MissingWeight { name, .. }) => {
            assert_eq!(name, "model.layers.0.self_attn.q_proj.bias")
        }
        other => panic!("no biases in the graph: got {:?}", other.err()),
    }
}
