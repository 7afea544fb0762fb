//! Tests of `bench train`.

use serde_json::json;

use super::*;

#[test]
fn single_parses_and_prints_back() {
    let s: Single = "gpt2-small:32:dp-full".parse().unwrap();
    assert_eq!(
        s,
        Single {
            model: Model::Gpt2Small,
            batch: 32,
            mode: Mode::DpFull
        }
    );
    assert_eq!(s.to_string(), "gpt2-small:32:dp-full");
    for (m, _) in ANCHORS {
        let s = Single {
            model: m,
            batch: 4,
            mode: Mode::PlainBitfit,
        };
        assert_eq!(s.to_string().parse::<Single>(), Ok(s));
    }
}

#[test]
fn malformed_single_is_a_typed_error() {
    let e = |s: &str| s.parse::<Single>().unwrap_err();
    assert_eq!(
        e("gpt2-small:32"),
        SingleParseError::Shape("gpt2-small:32".into())
    );
    assert_eq!(e("gpt3:32:dp-full"), SingleParseError::Model("gpt3".into()));
    assert_eq!(
        e("gpt2-small:x:dp-full"),
        SingleParseError::Batch("x".into())
    );
    assert_eq!(
        e("gpt2-small:0:dp-full"),
        SingleParseError::Batch("0".into())
    );
    assert_eq!(e("gpt2-small:2:dp"), SingleParseError::Mode("dp".into()));
}

#[test]
fn sweep_keeps_priority_order_and_drops_duplicates() {
    let all = sweep(&[], &[Mode::DpFull], None);
    assert_eq!(all.len(), ANCHORS.len());
    assert_eq!((all[0].model, all[0].batch), (Model::Gpt2Small, 32));
    let small = sweep(
        &[Model::Gpt2Small],
        &[Mode::PlainFull, Mode::DpFull],
        Some(2),
    );
    assert_eq!(
        small.len(),
        2,
        "B overridden: both GPT-2 small anchors are one configuration"
    );
}

#[test]
fn llama_shapes_and_lora_modes_sweep_only_where_they_apply() {
    // The default sweep is the GPU anchors'; named Llama models join it, and the LoRA modes
    // run on Llama-family models only.
    let default = sweep(&[], &[Mode::DpFull, Mode::DpLora], None);
    assert!(default.iter().all(|s| s.mode == Mode::DpFull));
    assert!(default.iter().all(|s| s.model.llama().is_none()));
    let named = sweep(
        &[Model::Gpt2Small, Model::Smollm2_135m],
        &[Mode::PlainLora, Mode::DpLora],
        Some(4),
    );
    let got: Vec<String> = named.iter().map(|s| s.to_string()).collect();
    assert_eq!(got, ["smollm2-135m:4:plain-lora", "smollm2-135m:4:dp-lora"]);
    assert_eq!(
        "qwen2.5-0.5b:8:dp-lora".parse::<Single>().unwrap().model,
        Model::Qwen2_5_0_5b
    );
    // Published parameter counts (the models crate tests them; the bench reports them).
    assert_eq!(
        Model::Tinyllama1_1b.llama().unwrap().num_params(),
        1_100_048_384
    );
}

#[test]
fn ratios_pair_modes_of_one_shape() {
    let line = |mode: &str, sps: f64, mib: f64| {
        json!({"bench": "train", "backend": "cuda", "model": "gpt2-small", "batch": 32,
            "seq": 128, "mode": mode, "samples_per_s": sps, "peak_device_mib": mib})
    };
    let r = ratios(&[
        line("plain-full", 400.0, 1000.0),
        line("dp-full", 300.0, 1100.0),
        line("dp-bitfit", 600.0, 900.0),
    ]);
    assert_eq!(r.len(), 1);
    assert_eq!(r[0]["dp_full_over_plain_full"], 0.75);
    assert_eq!(r[0]["dp_bitfit_over_plain_full"], 1.5);
    assert_eq!(r[0]["peak_device_mem_dp_full_over_plain_full"], 1.1);
    assert_eq!(r[0]["dp_full_over_fastdp_bookkeeping"], 300.0 / 470.46);
    // The lines of data-parallel peers are not single-process measurements.
    let mut peer = line("plain-full", 1.0, 1.0);
    peer["peers"] = json!(2);
    let r2 = ratios(&[
        peer,
        line("plain-full", 400.0, 1000.0),
        line("dp-full", 300.0, 1.0),
    ]);
    assert_eq!(r2[0]["dp_full_over_plain_full"], 0.75);
}

#[test]
fn peers_line_compares_one_and_k_peers_of_one_run() {
    let one = json!({"bench": "train", "backend": "ndarray", "model": "resnet50-gn",
        "mode": "dp-full", "batch": 2, "samples_per_s": 10.0, "step_ms": 200.0});
    let peer = |rank: u32, ar: f64| {
        json!({"bench": "train", "model": "resnet50-gn", "mode": "dp-full", "batch": 2,
            "peers": 2, "peer_rank": rank, "step_ms": 250.0, "global_samples_per_s": 16.0,
            "allreduce_ms": ar, "trainable_params": 1000})
    };
    let l = peers_line(&one, &[peer(0, 30.0), peer(1, 10.0)]);
    assert_eq!(l["bench"], "train-peers");
    assert_eq!(l["speedup"], 1.6);
    assert_eq!(l["scaling_efficiency"], 0.8);
    assert_eq!(l["allreduce_ms_per_step"], 30.0);
    assert_eq!(l["allreduce_ms_per_step_min_over_peers"], 10.0);
    assert_eq!(l["allreduce_bytes_per_peer"], 4000.0);
    assert!(
        l["gpu_prediction"]["device_host_copies_ms"]
            .as_f64()
            .unwrap()
            > 0.0
    );
    let mut failed = peer(1, 0.0);
    failed["error"] = json!("peer 1: timeout");
    assert!(peers_line(&one, &[peer(0, 1.0), failed])["error"].is_string());
}
