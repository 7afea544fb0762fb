//! burn-dp ÷ the PyTorch anchors measured in the same run on the same machine: `bench train`
//! lines paired with the `"bench": "anchor"` lines of `tools/cpu_anchors.py` (plain PyTorch,
//! Opacus ghost clipping, fastDP book-keeping MixOpt and BiTFiT) of the same model, batch and
//! shape. `tools/cpu-anchors.sh` writes both into one file and runs `bench ratios` on it.

use serde_json::{json, Value};

/// `(burn-dp mode, anchor mode, ratio name, target)`: throughput ratios, examples/s of burn-dp ÷
/// examples/s of the anchor; the targets of issue 24 (`None`: reported, no target).
const PAIRS: [(&str, &str, &str, Option<f64>); 5] = [
    ("plain-full", "plain-full", "plain_full_over_pytorch", None),
    (
        "plain-bitfit",
        "plain-bitfit",
        "plain_bitfit_over_pytorch",
        None,
    ),
    (
        "dp-full",
        "fastdp-mixopt-full",
        "dp_full_over_fastdp_mixopt",
        Some(1.0),
    ),
    (
        "dp-full",
        "opacus-ghost-full",
        "dp_full_over_opacus_ghost",
        Some(1.2),
    ),
    (
        "dp-bitfit",
        "fastdp-bitfit",
        "dp_bitfit_over_fastdp_bitfit",
        Some(0.8),
    ),
];

/// Whether two lines measured the same shape: model and batch, and the sequence (GPT-2) or the
/// image side (ViT, ResNet).
fn same_shape(a: &Value, b: &Value) -> bool {
    let model = a["model"].as_str().unwrap_or("");
    let shape_key = if model.starts_with("gpt2") {
        "seq"
    } else {
        "image"
    };
    a["model"] == b["model"] && a["batch"] == b["batch"] && a[shape_key] == b[shape_key]
}

/// One `anchor-ratios` line per burn-dp backend and shape that has anchors: burn-dp ÷ each anchor
/// (examples/s; above 1 burn-dp is faster) and peak RSS of DP full ÷ fastDP MixOpt's.
pub fn ratios(results: &[Value]) -> Vec<Value> {
    let ok = |r: &&Value| r["samples_per_s"].is_f64() && r["error"].is_null();
    let anchors: Vec<&Value> = results
        .iter()
        .filter(|r| r["bench"] == "anchor")
        .filter(ok)
        .collect();
    let ours: Vec<&Value> = results
        .iter()
        .filter(|r| r["bench"] == "train" && r["peers"].as_u64().unwrap_or(1) == 1)
        .filter(ok)
        .collect();
    let mut out = Vec::new();
    let mut seen: Vec<&Value> = Vec::new();
    for r in &ours {
        if seen
            .iter()
            .any(|s| s["backend"] == r["backend"] && same_shape(s, r))
        {
            continue;
        }
        seen.push(r);
        let here: Vec<&&Value> = anchors.iter().filter(|a| same_shape(a, r)).collect();
        if here.is_empty() {
            continue;
        }
        let of = |lines: &[&&Value], mode: &str, key: &str| {
            lines
                .iter()
                .find(|l| l["mode"] == mode)
                .and_then(|l| l[key].as_f64())
        };
        let mine: Vec<&&Value> = ours
            .iter()
            .filter(|o| o["backend"] == r["backend"] && same_shape(o, r))
            .collect();
        let mut line = json!({
            "bench": "anchor-ratios", "backend": r["backend"], "model": r["model"],
            "batch": r["batch"], "seq": r["seq"], "image": r["image"],
            "anchor_threads": here[0]["threads"],
        });
        for (ours_mode, anchor_mode, name, target) in PAIRS {
            let ratio = of(&mine, ours_mode, "samples_per_s")
                .zip(of(&here, anchor_mode, "samples_per_s"))
                .map(|(a, b)| a / b);
            line[name] = json!(ratio);
            if let Some(t) = target {
                line[format!("{name}_target")] = json!(t);
            }
        }
        line["peak_rss_dp_full_over_fastdp_mixopt"] = json!(of(&mine, "dp-full", "peak_rss_gib")
            .zip(of(&here, "fastdp-mixopt-full", "peak_rss_gib"))
            .map(|(a, b)| a / b));
        out.push(line);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_modes_of_one_shape_and_backend() {
        let train = |backend: &str, mode: &str, sps: f64| {
            json!({"bench": "train", "backend": backend, "model": "gpt2-small", "batch": 4,
                "seq": 32, "image": 224, "mode": mode, "samples_per_s": sps, "peak_rss_gib": 3.0})
        };
        let anchor = |mode: &str, sps: f64| {
            json!({"bench": "anchor", "model": "gpt2-small", "batch": 4, "seq": 32, "image": 32,
                "mode": mode, "samples_per_s": sps, "threads": 2, "peak_rss_gib": 2.0})
        };
        let mut other_seq = anchor("fastdp-mixopt-full", 100.0);
        other_seq["seq"] = json!(64);
        let mut failed = anchor("opacus-ghost-full", 9.0);
        failed["error"] = json!("exit 1");
        let r = ratios(&[
            train("flex", "dp-full", 2.0),
            train("flex", "dp-bitfit", 4.0),
            train("ndarray", "dp-full", 0.5),
            other_seq,
            failed,
            anchor("fastdp-mixopt-full", 1.0),
            anchor("fastdp-bitfit", 8.0),
        ]);
        assert_eq!(r.len(), 2, "one line per backend");
        assert_eq!(r[0]["backend"], "flex");
        assert_eq!(r[0]["dp_full_over_fastdp_mixopt"], 2.0);
        assert_eq!(r[0]["dp_full_over_fastdp_mixopt_target"], 1.0);
        assert_eq!(r[0]["dp_bitfit_over_fastdp_bitfit"], 0.5);
        assert!(r[0]["dp_full_over_opacus_ghost"].is_null(), "failed anchor");
        assert_eq!(r[0]["peak_rss_dp_full_over_fastdp_mixopt"], 1.5);
        assert_eq!(r[1]["dp_full_over_fastdp_mixopt"], 0.5);
        assert!(ratios(&[train("flex", "dp-full", 1.0)]).is_empty());
    }
}
