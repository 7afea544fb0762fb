//! Oracle-parity tests against `accounting.json` (Opacus 1.6 and Google dp_accounting numbers,
//! produced outside this project; see the fixtures README, section "Accounting").
//!
//! The fixture folder is `$BURN_DP_FIXTURES` when set, else this crate's `tests/fixtures`.
//! A missing or unreadable fixture fails the tests (it is never skipped).

use std::path::PathBuf;

use burn_dp_accountant::{
    epsilon, noise_multiplier, AccountantKind, History, HistoryEntry, Schedule,
};
use serde_json::Value;

/// One `epsilon` row of the fixture.
struct EpsilonRow {
    sample_rate: f64,
    noise_multiplier: f64,
    steps: u64,
    delta: f64,
    opacus_rdp: Option<f64>,
    google_rdp: Option<f64>,
    google_pld: Option<f64>,
    opacus_prv: Option<f64>,
    opacus_gdp: Option<f64>,
}

impl EpsilonRow {
    fn history(&self) -> History {
        History::from_entries([HistoryEntry::new(
            self.noise_multiplier,
            self.sample_rate,
            self.steps,
        )
        .expect("fixture row has valid parameters")])
        .expect("valid history")
    }

    fn label(&self) -> String {
        format!(
            "q={} sigma={} steps={} delta={}",
            self.sample_rate, self.noise_multiplier, self.steps, self.delta
        )
    }
}

fn fixture_path() -> PathBuf {
    let dir = std::env::var_os("BURN_DP_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures"));
    dir.join("accounting.json")
}

fn load() -> Value {
    let path = fixture_path();
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("fixture {} is missing or unreadable: {e}", path.display()));
    // Python's json module writes non-finite floats as bare `Infinity` / `NaN`, which is not JSON;
    // they only occur where the oracle failed, so read them as missing values.
    let text = text
        .replace("-Infinity", "null")
        .replace("Infinity", "null")
        .replace("NaN", "null");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()))
}

fn num(row: &Value, key: &str) -> Option<f64> {
    row.get(key)
        .and_then(Value::as_f64)
        .filter(|v| v.is_finite())
}

fn req(row: &Value, key: &str) -> f64 {
    num(row, key).unwrap_or_else(|| panic!("fixture row lacks {key}: {row}"))
}

fn epsilon_rows() -> Vec<EpsilonRow> {
    let doc = load();
    let rows = doc["epsilon"]
        .as_array()
        .expect("fixture has an `epsilon` array");
    assert!(!rows.is_empty(), "fixture has no epsilon rows");
    rows.iter()
        .map(|r| EpsilonRow {
            sample_rate: req(r, "sample_rate"),
            noise_multiplier: req(r, "noise_multiplier"),
            steps: r["steps"].as_u64().expect("integer steps"),
            delta: req(r, "delta"),
            opacus_rdp: num(r, "opacus_rdp"),
            google_rdp: num(r, "google_rdp"),
            google_pld: num(r, "google_pld"),
            opacus_prv: num(r, "opacus_prv"),
            opacus_gdp: num(r, "opacus_gdp"),
        })
        .collect()
}

fn rel(a: f64, b: f64) -> f64 {
    ((a - b) / b).abs()
}

#[test]
fn rdp_matches_opacus_and_google() {
    let mut checked = 0;
    for row in epsilon_rows() {
        let (Some(opacus), Some(google)) = (row.opacus_rdp, row.google_rdp) else {
            continue;
        };
        let ours = epsilon(AccountantKind::Rdp, &row.history(), row.delta)
            .unwrap()
            .epsilon;
        if rel(opacus, google) <= 0.01 {
            assert!(
                rel(ours, opacus) <= 0.005,
                "{}: ours {ours} vs opacus {opacus}",
                row.label()
            );
        } else {
            // The two oracles disagree (different orders): stay within their range, widened 0.5%.
            let (lo, hi) = (opacus.min(google), opacus.max(google));
            assert!(
                ours >= lo * 0.995 && ours <= hi * 1.005,
                "{}: ours {ours} outside [{lo}, {hi}]",
                row.label()
            );
        }
        // Same orders and formulas as Opacus: in fact agree to floating point.
        assert!(
            rel(ours, opacus) < 1e-6,
            "{}: ours {ours} vs opacus {opacus}",
            row.label()
        );
        checked += 1;
    }
    assert!(checked > 0);
}

#[test]
fn prv_matches_google_pld_within_its_bounds() {
    let mut checked = 0;
    for row in epsilon_rows() {
        let Some(pld) = row.google_pld else { continue };
        // Out of scope: ε > 100 is meaningless as a privacy guarantee, and there the PRV domain
        // (and FFT) grows with ε (Opacus itself returns inf for the largest row).
        if pld > 100.0 {
            continue;
        }
        let eps = epsilon(AccountantKind::Prv, &row.history(), row.delta).unwrap();
        let bounds = eps.bounds.expect("PRV reports bounds");
        let tol = (0.01 * pld).max(0.011);
        assert!(
            (eps.epsilon - pld).abs() <= tol,
            "{}: ours {} vs google_pld {pld}",
            row.label(),
            eps.epsilon
        );
        assert!(
            bounds.lower <= pld && pld <= bounds.upper,
            "{}: google_pld {pld} outside [{}, {}]",
            row.label(),
            bounds.lower,
            bounds.upper
        );
        if let Some(opacus) = row.opacus_prv {
            // Opacus reports the upper bound too; same algorithm, same mesh.
            assert!(
                (eps.epsilon - opacus).abs() <= 0.002_f64.max(0.001 * opacus),
                "{}: ours {} vs opacus_prv {opacus}",
                row.label(),
                eps.epsilon
            );
        }
        checked += 1;
    }
    assert!(checked > 0);
}

#[test]
fn gdp_matches_opacus() {
    let mut checked = 0;
    for row in epsilon_rows() {
        let Some(opacus) = row.opacus_gdp else {
            continue;
        };
        let ours = epsilon(AccountantKind::Gdp, &row.history(), row.delta)
            .unwrap()
            .epsilon;
        assert!(
            rel(ours, opacus) < 1e-4,
            "{}: ours {ours} vs opacus {opacus}",
            row.label()
        );
        checked += 1;
    }
    assert!(checked > 0);
}

#[test]
fn calibration_matches_opacus_get_noise_multiplier() {
    let doc = load();
    let rows = doc["calibration"]
        .as_array()
        .expect("fixture has a `calibration` array");
    assert!(!rows.is_empty(), "fixture has no calibration rows");
    for row in rows {
        let (q, steps) = (
            req(row, "sample_rate"),
            row["steps"].as_u64().expect("integer steps"),
        );
        let (target, delta) = (req(row, "target_epsilon"), req(row, "delta"));
        let want = req(row, "opacus_rdp_noise_multiplier");
        // The schedule helper reproduces the fixture's (q, steps) from its dataset description.
        if let (Some(n), Some(b), Some(e)) = (
            row["dataset_size"].as_u64().map(|n| n as usize),
            row["batch_size"].as_u64().map(|b| b as usize),
            row["epochs"].as_u64(),
        ) {
            let s = Schedule::from_epochs(n, b, e).unwrap();
            assert!(
                rel(s.sample_rate, q) < 1e-12 && s.steps == steps,
                "schedule {s:?} vs {row}"
            );
        }
        let cal = noise_multiplier(
            AccountantKind::Rdp,
            target,
            delta,
            Schedule::new(q, steps).unwrap(),
        )
        .unwrap();
        let sigma = cal.noise_multiplier;
        assert!(
            rel(sigma, want) <= 0.01,
            "{row}: sigma {sigma} vs opacus {want}"
        );
        assert!(
            cal.epsilon.epsilon <= target,
            "{row}: achieved {} > target",
            cal.epsilon.epsilon
        );
        // Re-check independently of the calibration's own bookkeeping.
        let history = History::from_entries([HistoryEntry::new(sigma, q, steps).unwrap()]).unwrap();
        assert!(
            epsilon(AccountantKind::Rdp, &history, delta)
                .unwrap()
                .epsilon
                <= target
        );
    }
}
