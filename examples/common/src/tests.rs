//! Tests of the shared example code.

use super::*;

#[test]
fn svg_has_polyline() {
    let mut c = Curve::default();
    c.push(0, 2.0);
    c.push(10, 1.0);
    c.push(11, f64::NAN);
    let s = curve_svg(&c, "a < b", "step", "loss").unwrap();
    assert!(s.starts_with("<svg") && s.contains("<polyline") && s.contains("a &lt; b"));
    assert_eq!(c.points.len(), 2);
}

/// `--freeze bias` without `--lr` takes the example's bias-only default; `--lr` always wins.
#[test]
fn bias_only_fine_tuning_has_its_own_default_learning_rate() {
    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        train: PrivateTrainingArgs,
    }
    let defaults = DefaultLearningRates {
        full: 5e-3,
        bias_only: 1e-1,
        lora: 2e-2,
    };
    let lr = |args: &[&str]| {
        let cli =
            <Cli as clap::Parser>::parse_from(std::iter::once("x").chain(args.iter().copied()));
        cli.train.learning_rate(defaults)
    };
    assert_eq!(lr(&[]), 5e-3);
    assert_eq!(lr(&["--freeze", "head"]), 5e-3);
    assert_eq!(lr(&["--freeze", "bias"]), 1e-1);
    assert_eq!(lr(&["--freeze", "bias", "--lr", "2e-2"]), 2e-2);
    assert_eq!(lr(&["--freeze", "lora"]), 2e-2);
}

fn row(method: &str, clipping: &str, target: Option<f64>, metric: f64) -> SweepRow {
    SweepRow {
        method: method.into(),
        clipping: clipping.into(),
        target_epsilon: target,
        epsilon: target.map(|t| t - 0.004),
        metric,
        trainable: 106,
        steps: 382,
        seconds: 57.4,
    }
}

/// `--sweep-replot` reads back what the sweep wrote: the table survives a round trip, and the
/// plot has one panel per private method with a line per clipping and the two references.
#[test]
fn sweep_table_round_trips_and_plots_in_panels() {
    let mut rows = vec![
        row("public pre-training only", "-", None, 0.9276),
        row("non-private full", "-", None, 0.967),
    ];
    for eps in [1.0, 3.0, 8.0] {
        for method in ["DP full", "DP-BiTFiT", "DP last layer"] {
            for clipping in ["automatic", "Abadi C=0.1", "Abadi C=10"] {
                rows.push(row(method, clipping, Some(eps), 0.93 + eps / 1000.0));
            }
        }
    }
    let table = format!("Produced by `x`.\n\n{}", sweep_markdown(&rows, "BLEU"));
    let (parsed, metric) = parse_sweep_markdown(&table).unwrap();
    assert_eq!(metric, "BLEU");
    assert_eq!(
        sweep_markdown(&parsed, &metric),
        sweep_markdown(&rows, "BLEU")
    );
    assert_eq!(parsed[0].target_epsilon, None);
    assert_eq!(parsed[2].target_epsilon, Some(1.0));
    let svg = sweep_svg(&parsed, "a & b", &metric).unwrap();
    for text in [
        "DP full",
        "DP-BiTFiT",
        "DP last layer",
        "Abadi C=10",
        "non-private full",
    ] {
        assert!(svg.contains(text), "{text}");
    }
    assert!(svg.contains("a &amp; b"));
    // 3 panels × 3 clippings, each a polyline.
    assert!(svg.matches("<polyline").count() >= 9);
    let broken = table.replace("| 382 |", "| many |");
    let e = parse_sweep_markdown(&broken).unwrap_err().to_string();
    assert!(e.contains("cannot read the sweep row"), "{e}");
    assert!(parse_sweep_markdown("no table").is_err());
    let mut zero = parsed.clone();
    zero[2].target_epsilon = Some(0.0);
    let e = sweep_svg(&zero, "t", &metric).unwrap_err().to_string();
    assert!(e.contains("not a positive number"), "{e}");
}
