//! What the lines mean together: the data-parallel line of a group of peers, and the ratios
//! between modes and against the PyTorch anchors.

use serde_json::{json, Value};

use super::*;

/// Assumed host↔device bandwidth of a GPU (PCIe 5.0 x16 with pageable host memory), bytes/s:
/// only for the prediction of [`peers_line`].
pub const ASSUMED_PCIE_BYTES_PER_S: f64 = 25e9;
/// Assumed NVLink bandwidth between the GPUs of one machine (H100/H200 NVLink 4), bytes/s.
pub const ASSUMED_NVLINK_BYTES_PER_S: f64 = 450e9;

/// The scaling of one configuration: the 1-process line `one` and the peers' lines (rank order),
/// measured in the same run. Throughput of K peers = K·B / (rank 0's mean step time); scaling
/// efficiency = throughput_K / (K × throughput_1). With the GPU prediction of the all-reduce's cost.
pub fn peers_line(one: &Value, peers: &[Value]) -> Value {
    let k = peers.len().max(1) as f64;
    let p0 = peers.first().cloned().unwrap_or(Value::Null);
    if let Some(e) = peers.iter().find_map(|p| p["error"].as_str()) {
        return json!({"bench": "train-peers", "model": one["model"], "mode": one["mode"],
            "batch": one["batch"], "peers": peers.len(), "error": e});
    }
    let one_tput = one["samples_per_s"].as_f64();
    let k_tput = p0["global_samples_per_s"].as_f64();
    let step_ms = p0["step_ms"].as_f64();
    let by_peer: Vec<f64> = peers
        .iter()
        .filter_map(|p| p["allreduce_ms"].as_f64())
        .collect();
    let ar_min = by_peer.iter().copied().reduce(f64::min);
    // What the all-reduce moves: the clipped sums of the trainable parameters (+ hash slots).
    let params = p0["trainable_params"].as_f64().unwrap_or(0.0);
    let bytes = 4.0 * params;
    // What each peer's all-reduce moved per second (the buffer over the time of the fastest
    // peer, which waited least for the others: closest to the transfer alone).
    let bytes_per_s = ar_min.filter(|&t| t > 0.0).map(|t| bytes / (t / 1e3));
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    json!({
        "bench": "train-peers", "backend": one["backend"], "model": one["model"],
        "mode": one["mode"], "batch_per_peer": one["batch"], "peers": peers.len(),
        "transport": p0["transport"],
        "samples_per_s_1_peer": one_tput,
        "samples_per_s_n_peers": k_tput,
        "speedup": k_tput.zip(one_tput).map(|(a, b)| a / b),
        "scaling_efficiency": k_tput.zip(one_tput).map(|(a, b)| a / (k * b)),
        "step_ms_1_peer": one["step_ms"], "step_ms_n_peers": step_ms,
        "allreduce_ms_per_step": p0["allreduce_ms"],
        "allreduce_ms_per_step_by_peer": by_peer,
        "allreduce_ms_per_step_min_over_peers": ar_min,
        "allreduce_share_of_step": ar_min.zip(step_ms).map(|(a, s)| a / s),
        "allreduce_bytes_per_peer": bytes,
        "allreduce_bytes_per_s_measured": bytes_per_s,
        "cpu_cores": cores,
        "note": format!(
            "throughput_N = N × throughput_1 needs N times the compute: the 1-peer run already \
             uses the {cores} cores of this machine and the N peers share them, so on a CPU the \
             efficiency measures core sharing more than the transport (on 2 cores, 2 peers can \
             at best reach 2× when each peer gets one core)"),
        "gpu_prediction": {
            "transport": "MpiGroup and TcpGroup copy the clipped sums of all 4·P bytes \
                          device→host before the all-reduce and host→device after it: predicted \
                          cost per step = 4 bytes × params / bandwidth for each copy",
            "device_host_copies_ms": 2.0 * bytes / ASSUMED_PCIE_BYTES_PER_S * 1e3,
            "assumed_pcie_bytes_per_s": ASSUMED_PCIE_BYTES_PER_S,
            "allreduce_ms_as_measured_here": ar_min,
            "nccl_ring_ms": 2.0 * (k - 1.0) / k * bytes / ASSUMED_NVLINK_BYTES_PER_S * 1e3,
            "assumed_nvlink_bytes_per_s": ASSUMED_NVLINK_BYTES_PER_S,
            "nccl": "an NCCL all-reduce on the device (no host copy, burn-dp-distributed's \
                     NcclGroup, feature nccl) would cost about nccl_ring_ms; the bench's peers \
                     all-reduce through the host (see the book's chapter Data-parallel training)",
        },
    })
}

/// The ratios of issue 10 points 4 and 5, per (model, batch), from `train` lines (and, for device
/// memory, lines with `peak_device_mib` such as `tools/gpu-check.sh` writes).
///
/// Targets: DP full ÷ non-DP full ≥ 0.90 (throughput); DP bias-only ÷ non-DP full ≥ 1.3; device
/// memory peak of DP full ÷ non-DP full ≤ 1.15; on CUDA at the anchor shapes, non-DP full ≥ 0.8×
/// plain PyTorch (TF32) and DP full ≥ 1.5× fastDP book-keeping.
pub fn ratios(results: &[Value]) -> Vec<Value> {
    // Lines of one backend only are paired (a run may hold Flex and NdArray lines).
    let get = |backend: &Value, model: &str, b: u64, mode: &str, key: &str| -> Option<f64> {
        results
            .iter()
            .filter(|r| r["peers"].as_u64().unwrap_or(1) == 1 && r["backend"] == *backend)
            .filter(|r| r["model"] == model && r["batch"] == b && r["mode"] == mode)
            .find_map(|r| r[key].as_f64())
    };
    let mut seen: Vec<(Value, String, u64)> = Vec::new();
    let mut out = Vec::new();
    for r in results {
        let (Some(model), Some(b)) = (r["model"].as_str(), r["batch"].as_u64()) else {
            continue;
        };
        let backend = &r["backend"];
        if r["samples_per_s"].is_null()
            || r["bench"] == "anchor"
            || r["peers"].as_u64().unwrap_or(1) != 1
            || seen
                .iter()
                .any(|(k, m, x)| k == backend && m == model && *x == b)
        {
            continue;
        }
        seen.push((backend.clone(), model.to_string(), b));
        let get = |mode: &str, key: &str| get(backend, model, b, mode, key);
        let ratio = |num: &str, den: &str, key: &str| Some(get(num, key)? / get(den, key)?);
        let tput = "samples_per_s";
        let mut line = json!({
            "bench": "train-ratios", "backend": r["backend"], "model": model, "batch": b,
            "dp_full_over_plain_full": ratio("dp-full", "plain-full", tput),
            "dp_full_over_plain_full_target": 0.90,
            "dp_bitfit_over_plain_full": ratio("dp-bitfit", "plain-full", tput),
            "dp_bitfit_over_plain_full_target": 1.3,
            "peak_device_mem_dp_full_over_plain_full":
                ratio("dp-full", "plain-full", "peak_device_mib"),
            "peak_device_mem_dp_full_over_plain_full_target": 1.15,
            "peak_rss_dp_full_over_plain_full": ratio("dp-full", "plain-full", "peak_rss_gib"),
            "peak_rss_dp_full_over_plain_full_target": 1.15,
            "peak_rss_dp_bitfit_over_dp_full": ratio("dp-bitfit", "dp-full", "peak_rss_gib"),
            "dp_lora_over_plain_lora": ratio("dp-lora", "plain-lora", tput),
            "dp_lora_over_plain_lora_target": 0.8,
            "dp_lora_over_dp_full": ratio("dp-lora", "dp-full", tput),
            "peak_rss_dp_lora_over_dp_full": ratio("dp-lora", "dp-full", "peak_rss_gib"),
            "start_to_first_step_s_max": results.iter()
                .filter(|x| x["model"] == model && x["batch"] == b)
                .filter_map(|x| x["start_to_first_step_s"].as_f64())
                .reduce(f64::max),
        });
        let anchor = PYTORCH_H200
            .iter()
            .find(|(m, ab, _, _)| m.to_string() == model && *ab as u64 == b);
        let at_anchor_shape = r["seq"]
            .as_u64()
            .is_none_or(|s| s == 128 || !model.starts_with("gpt2"))
            && r["image"]
                .as_u64()
                .is_none_or(|s| s == 224 || model.starts_with("gpt2"));
        if let (Some((_, _, torch, fastdp)), true, "cuda") =
            (anchor, at_anchor_shape, r["backend"].as_str().unwrap_or(""))
        {
            line["plain_full_over_pytorch_tf32"] =
                json!(get("plain-full", tput).map(|s| s / torch));
            line["plain_full_over_pytorch_tf32_target"] = json!(0.8);
            line["dp_full_over_fastdp_bookkeeping"] =
                json!(get("dp-full", tput).map(|s| s / fastdp));
            line["dp_full_over_fastdp_bookkeeping_target"] = json!(1.5);
        }
        out.push(line);
    }
    out
}
