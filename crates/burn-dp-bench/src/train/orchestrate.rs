//! Sweeps: one process per configuration (the binary re-executes itself), peers launched for
//! data-parallel runs.

use burn_dp_distributed::{launch_peers, Launched, PeerOutput};
use serde_json::{json, Value};

use super::*;

/// Runs one configuration in this process and prints its JSON line (an `"error"` line on failure).
pub fn run_single(cfg: &Config, backend: BackendKind) -> Result<(), String> {
    let out = match backend {
        BackendKind::Flex => run_one::<burn_dp::Flex>(cfg, backend),
        BackendKind::Ndarray => run_one::<burn::backend::NdArray<f32>>(cfg, backend),
        #[cfg(feature = "cuda")]
        BackendKind::Cuda => run_one::<burn_dp::Cuda>(cfg, backend),
        #[cfg(not(feature = "cuda"))]
        BackendKind::Cuda => Err(
            "backend `cuda` is not available in this build: rebuild with `--features cuda`".into(),
        ),
    };
    match out {
        Ok(v) => {
            println!("{v}");
            Ok(())
        }
        Err(e) => {
            println!(
                "{}",
                json!({"bench": "train", "backend": backend.to_string(),
                    "model": cfg.single.model.to_string(), "mode": cfg.single.mode.to_string(),
                    "batch": cfg.single.batch, "error": e})
            );
            Err(e)
        }
    }
}

/// The configurations of a sweep: the shapes of `models` (the GPU anchors when empty; the Llama
/// shapes when named) in priority order,
/// with `batch` overriding the anchor batch sizes (then one configuration per model).
pub fn sweep(models: &[Model], modes: &[Mode], batch: Option<usize>) -> Vec<Single> {
    let mut out: Vec<Single> = Vec::new();
    let named = ANCHORS.iter().chain(LLAMA_SHAPES.iter()).copied();
    for (model, anchor_batch) in named {
        let wanted = if models.is_empty() {
            ANCHORS.iter().any(|(m, _)| *m == model)
        } else {
            models.contains(&model)
        };
        if !wanted {
            continue;
        }
        let batch = batch.unwrap_or(anchor_batch);
        // LoRA modes on models without adapters are left out (a `--single` asks and is told why).
        for &mode in modes
            .iter()
            .filter(|m| !m.is_lora() || model.llama().is_some())
        {
            let s = Single { model, batch, mode };
            if !out.contains(&s) {
                out.push(s);
            }
        }
    }
    out
}

/// Runs every configuration in its own process (this binary with `--single`) and prints each JSON
/// line as it arrives, then the ratios. With `peers > 1`, every DP configuration then runs again
/// as `peers` processes of one data-parallel group ([`peers_line`]).
pub fn run_sweep(
    configs: &[Single],
    cfg: &Config,
    backend: BackendKind,
    child_args: &[String],
    peers: u32,
) -> Result<(), String> {
    let exe = std::env::current_exe().map_err(|e| format!("cannot find this executable: {e}"))?;
    let mut results = Vec::new();
    let single_args = |single: &Single| -> Vec<String> {
        let mut args: Vec<String> = [
            "train",
            "--single",
            &single.to_string(),
            "--backend",
            &backend.to_string(),
            "--seq",
            &cfg.seq.to_string(),
            "--image",
            &cfg.image.to_string(),
            "--lora-rank",
            &cfg.lora_rank.to_string(),
            "--steps",
            &cfg.steps.to_string(),
            "--warmup",
            &cfg.warmup.to_string(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        if cfg.profile {
            args.push("--profile".into());
        }
        args.extend(child_args.iter().cloned());
        args
    };
    let error_line = |single: &Single, e: String| {
        json!({"bench": "train", "backend": backend.to_string(),
            "model": single.model.to_string(), "mode": single.mode.to_string(),
            "batch": single.batch, "error": e})
    };
    for single in configs {
        eprintln!("bench: running {single} on {backend} in its own process");
        let out = std::process::Command::new(&exe)
            .args(single_args(single))
            .output()
            .map_err(|e| format!("cannot run a configuration: {e}"))?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        let value = stdout
            .lines()
            .last()
            .and_then(|l| serde_json::from_str::<Value>(l).ok())
            .unwrap_or_else(|| {
                let stderr = String::from_utf8_lossy(&out.stderr);
                error_line(
                    single,
                    format!(
                        "exit {:?}: {}",
                        out.status.code(),
                        stderr.lines().last().unwrap_or("")
                    ),
                )
            });
        println!("{value}");
        if peers > 1 && single.mode.is_dp() {
            eprintln!("bench: running {single} on {backend} as {peers} peer processes");
            let line = match run_peers(&exe, &single_args(single), peers) {
                Ok(lines) => {
                    for l in &lines {
                        println!("{l}");
                    }
                    peers_line(&value, &lines)
                }
                Err(e) => error_line(single, format!("{peers} peers: {e}")),
            };
            println!("{line}");
        }
        results.push(value);
    }
    for line in ratios(&results) {
        println!("{line}");
    }
    Ok(())
}

/// Runs one configuration as `peers` processes of one group on this machine (`mpirun -np N`
/// with the feature `mpi`, else TCP peers; `burn_dp_distributed::launch_peers`) and returns each
/// peer's JSON line, by rank.
pub(crate) fn run_peers(
    exe: &std::path::Path,
    args: &[String],
    peers: u32,
) -> Result<Vec<Value>, String> {
    let exits = launch_peers(exe, peers, args, 0, PeerOutput::Capture)
        .and_then(Launched::wait)
        .map_err(|e| e.to_string())?;
    // Under mpirun the ranks' lines arrive on mpirun's output, in any order.
    let mut lines: Vec<Value> = exits
        .iter()
        .flat_map(|x| x.stdout.lines())
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["bench"] == "train")
        .collect();
    if let Some(e) = lines.iter().find(|v| v.get("error").is_some()) {
        return Ok(vec![e.clone()]);
    }
    lines.sort_by_key(|v| v["peer_rank"].as_u64());
    if lines.len() != peers as usize {
        return Err(format!("{} of {peers} peers wrote a result", lines.len()));
    }
    Ok(lines)
}
