//! Benchmark: PRV ε for 10⁴ and 10⁵ steps (q = 0.01, σ = 1.0, δ = 1e-5), side by side with the
//! Python packages `prv-accountant` (Microsoft, the paper's code) and `dp-accounting` (Google,
//! PLD) when `python3` can import them; skipped with a message otherwise.
//!
//! `cargo run --release -p burn-dp-accountant --example bench_prv [STEPS...]`
//!
//! Prints one JSON object per line: our time (best of `REPEATS`, and the first run), each Python
//! package's time (one run, timed inside Python, imports excluded), `speedup` = Python time / our
//! best time, and our ε (upper bound) and estimate minus theirs. `prv-accountant` reports the
//! same upper bound; `dp-accounting`'s PLD reports a point value, comparable to our estimate.

use std::process::Command;
use std::time::Instant;

use burn_dp_accountant::{epsilon, AccountantKind, History, HistoryEntry};

const Q: f64 = 0.01;
const SIGMA: f64 = 1.0;
const DELTA: f64 = 1e-5;
const REPEATS: usize = 3;

/// Times both Python packages for one step count; prints one JSON line per package.
const PYTHON: &str = r#"
import json, sys, time
q, sigma, delta, steps = float(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
try:
    from prv_accountant import PRVAccountant, PoissonSubsampledGaussianMechanism
    t = time.perf_counter()
    acc = PRVAccountant(prvs=[PoissonSubsampledGaussianMechanism(noise_multiplier=sigma, sampling_probability=q)],
                        max_self_compositions=[steps], eps_error=0.01, delta_error=delta / 1000)
    lo, est, up = acc.compute_epsilon(delta=delta, num_self_compositions=[steps])
    print(json.dumps({"impl": "prv-accountant", "seconds": time.perf_counter() - t, "epsilon": up, "estimate": est}))
except ImportError as e:
    print(json.dumps({"impl": "prv-accountant", "skipped": "not importable: %s" % e}))
try:
    import dp_accounting
    from dp_accounting.pld import pld_privacy_accountant
    t = time.perf_counter()
    acc = pld_privacy_accountant.PLDAccountant()
    acc.compose(dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(sigma)), steps)
    eps = acc.get_epsilon(delta)
    print(json.dumps({"impl": "dp-accounting", "seconds": time.perf_counter() - t, "epsilon": eps}))
except ImportError as e:
    print(json.dumps({"impl": "dp-accounting", "skipped": "not importable: %s" % e}))
"#;

fn main() {
    let steps_list: Vec<u64> = {
        let args: Vec<u64> = std::env::args()
            .skip(1)
            .filter_map(|a| a.parse().ok())
            .collect();
        if args.is_empty() {
            vec![10_000, 100_000]
        } else {
            args
        }
    };
    for steps in steps_list {
        let entry = HistoryEntry::new(SIGMA, Q, steps).expect("valid parameters");
        let history = History::from_entries([entry]).expect("valid history");
        let mut best = f64::INFINITY;
        let mut first = None;
        let mut result = None;
        for _ in 0..REPEATS {
            let start = Instant::now();
            let eps = epsilon(AccountantKind::Prv, &history, DELTA).expect("PRV epsilon");
            let seconds = start.elapsed().as_secs_f64();
            best = best.min(seconds);
            first.get_or_insert(seconds);
            result = Some(eps);
        }
        let Some(ours) = result else { continue };
        println!(
            "{}",
            serde_json::json!({
                "impl": "burn-dp-accountant", "steps": steps, "sample_rate": Q,
                "noise_multiplier": SIGMA, "delta": DELTA, "seconds": best, "first_seconds": first,
                "epsilon": ours.epsilon, "estimate": ours.estimate,
            })
        );
        let output = Command::new("python3")
            .args(["-c", PYTHON])
            .args([
                Q.to_string(),
                SIGMA.to_string(),
                DELTA.to_string(),
                steps.to_string(),
            ])
            .output();
        let output = match output {
            Ok(o) if o.status.success() => o,
            Ok(o) => {
                let reason = String::from_utf8_lossy(&o.stderr)
                    .lines()
                    .last()
                    .unwrap_or("")
                    .to_string();
                println!(
                    "{}",
                    serde_json::json!({"impl": "python", "steps": steps, "skipped": reason})
                );
                continue;
            }
            Err(e) => {
                let reason = format!("python3 not runnable: {e}");
                println!(
                    "{}",
                    serde_json::json!({"impl": "python", "steps": steps, "skipped": reason})
                );
                continue;
            }
        };
        for line in String::from_utf8_lossy(&output.stdout).lines() {
            let Ok(mut v) = serde_json::from_str::<serde_json::Value>(line) else {
                continue;
            };
            v["steps"] = steps.into();
            if let Some(seconds) = v["seconds"].as_f64() {
                v["speedup"] = (seconds / best).into();
                if let Some(eps) = v["epsilon"].as_f64() {
                    // Ours minus theirs: against our upper bound and our point estimate.
                    v["epsilon_difference"] = (ours.epsilon - eps).into();
                    let theirs = v["estimate"].as_f64().unwrap_or(eps);
                    v["estimate_difference"] = (ours.estimate - theirs).into();
                }
            }
            println!("{v}");
        }
    }
}
