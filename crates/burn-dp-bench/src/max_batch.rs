//! `bench train --max-batch-gib CAP`: the largest physical batch of each model and mode that
//! trains under a memory cap, by bisection over short runs, each its own process (this binary
//! with `train --single MODEL:B:MODE --steps 1 --warmup 0`). This process polls the child's
//! resident set and kills it once it passes the cap, so a probe never takes more than the cap
//! (plus one polling interval of growth) from the machine.
//!
//! A batch fits when its run ends without error and its peak resident set (`VmHWM`, which it
//! reports itself) is at most the cap. The search doubles the batch from 1 until one does not
//! fit (or `--max-batch-limit` is reached), then bisects between the last two: it assumes that
//! memory grows with the batch.

use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::{json, Value};

use crate::train::{BackendKind, Config, Mode, Model, Single};

/// How often the child's resident set is read.
const POLL: Duration = Duration::from_millis(20);

/// The largest `b` in `1..=limit` with `fits(b)` (0 if none), doubling then bisecting; `fits`
/// must be monotone (true up to some batch, false above it).
pub fn largest_fitting(limit: usize, mut fits: impl FnMut(usize) -> bool) -> usize {
    let (mut lo, mut hi) = (0, limit + 1);
    let mut b = 1;
    while b <= limit {
        if fits(b) {
            lo = b;
            b = (2 * b).min(if b == limit { limit + 1 } else { limit });
        } else {
            hi = b;
            break;
        }
    }
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        if fits(mid) {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    lo
}

/// The resident set of process `pid` in bytes (`VmRSS` of `/proc/PID/status`), if readable.
fn rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// One probe: runs `args` (a `train --single` command line) under the cap and returns its
/// record: `fits`, the peak resident set (the child's own report, or what was polled when it
/// was killed) and why it did not fit.
fn probe(exe: &std::path::Path, args: &[String], batch: usize, cap_gib: f64) -> Value {
    let cap = (cap_gib * (1u64 << 30) as f64) as u64;
    let mut child = match Command::new(exe)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
    {
        Ok(c) => c,
        Err(e) => return json!({"batch": batch, "fits": false, "why": e.to_string()}),
    };
    let mut polled_peak = 0u64;
    let killed = loop {
        if let Ok(Some(_)) = child.try_wait() {
            break false;
        }
        let rss = rss_bytes(child.id()).unwrap_or(0);
        polled_peak = polled_peak.max(rss);
        if rss > cap {
            let _ = child.kill();
            break true;
        }
        std::thread::sleep(POLL);
    };
    let out = child.wait_with_output();
    let gib = |b: u64| b as f64 / (1u64 << 30) as f64;
    if killed {
        return json!({"batch": batch, "fits": false, "peak_rss_gib": gib(polled_peak),
            "why": "killed above the cap"});
    }
    let line = out
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.lines().last().map(str::to_string))
        .and_then(|l| serde_json::from_str::<Value>(&l).ok())
        .unwrap_or(Value::Null);
    let peak = line["peak_rss_gib"].as_f64();
    let why = if let Some(e) = line["error"].as_str() {
        Some(e.to_string())
    } else if line.is_null() {
        Some("no result line (crashed)".to_string())
    } else if peak.is_some_and(|p| p > cap_gib) {
        Some("peak resident set above the cap".to_string())
    } else {
        None
    };
    json!({"batch": batch, "fits": why.is_none(), "peak_rss_gib": peak.or(Some(gib(polled_peak))),
        "why": why})
}

/// For every model of `models` and mode of `modes`: the largest batch under `cap_gib`, one
/// `train-max-batch` line each (with every probe), then per model the ratios of the largest
/// batches (DP-BiTFiT ÷ DP full, DP full ÷ plain full).
pub fn run(
    models: &[Model],
    modes: &[Mode],
    cfg: &Config,
    backend: BackendKind,
    cap_gib: f64,
    limit: usize,
) -> Result<(), String> {
    let exe = std::env::current_exe().map_err(|e| format!("cannot find this executable: {e}"))?;
    for &model in models {
        let mut found: Vec<(Mode, usize)> = Vec::new();
        for &mode in modes {
            eprintln!("bench: largest batch of {model} {mode} on {backend} under {cap_gib} GiB");
            let mut probes = Vec::new();
            let best = largest_fitting(limit, |batch| {
                let single = Single { model, batch, mode };
                let args: Vec<String> = [
                    "train".to_string(),
                    "--single".into(),
                    single.to_string(),
                    "--backend".into(),
                    backend.to_string(),
                    "--seq".into(),
                    cfg.seq.to_string(),
                    "--image".into(),
                    cfg.image.to_string(),
                    "--lora-rank".into(),
                    cfg.lora_rank.to_string(),
                    "--steps".into(),
                    "1".into(),
                    "--warmup".into(),
                    "0".into(),
                ]
                .into();
                let p = probe(&exe, &args, batch, cap_gib);
                eprintln!("bench:   batch {batch}: {p}");
                let fits = p["fits"].as_bool().unwrap_or(false);
                probes.push(p);
                fits
            });
            found.push((mode, best));
            println!(
                "{}",
                json!({"bench": "train-max-batch", "backend": backend.to_string(),
                    "model": model.to_string(), "mode": mode.to_string(), "seq": cfg.seq,
                    "image": cfg.image, "cap_gib": cap_gib, "limit": limit,
                    "max_batch": best, "probes": probes})
            );
        }
        let of = |m: Mode| found.iter().find(|(x, _)| *x == m).map(|(_, b)| *b as f64);
        let ratio = |a: Mode, b: Mode| of(a).zip(of(b)).map(|(a, b)| a / b);
        println!(
            "{}",
            json!({"bench": "train-max-batch-ratios", "backend": backend.to_string(),
                "model": model.to_string(), "cap_gib": cap_gib,
                "dp_bitfit_over_dp_full": ratio(Mode::DpBitfit, Mode::DpFull),
                "dp_full_over_plain_full": ratio(Mode::DpFull, Mode::PlainFull)})
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bisection_finds_the_largest_fitting_batch() {
        for limit in [1, 2, 7, 64, 100] {
            for largest in 0..=limit + 3 {
                let mut calls = 0;
                let got = largest_fitting(limit, |b| {
                    calls += 1;
                    assert!((1..=limit).contains(&b), "probe {b} outside 1..={limit}");
                    b <= largest
                });
                assert_eq!(got, largest.min(limit), "limit {limit}, largest {largest}");
                assert!(calls <= 2 * (usize::BITS - limit.leading_zeros()) as usize + 1);
            }
        }
    }
}
