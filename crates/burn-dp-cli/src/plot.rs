//! The audit's SVG, written by hand: the score histograms of both worlds (left) and the ROC curve
//! with the region the claimed ε allows and the measured bound (right).

use std::fmt::Write;

use burn_dp::audit::{roc_curve, Scores};

/// What to mark on the plot.
pub struct Marks {
    /// The accountant's ε.
    pub claimed_epsilon: f64,
    /// The measured lower bound.
    pub bound_epsilon: f64,
    /// δ.
    pub delta: f64,
    /// The conservative corner `(FPR, TPR)` of the test the bound comes from, in the ROC's
    /// coordinates (the test `score ≥ t ⇒ in`), if any.
    pub point: Option<(f64, f64)>,
    /// The threshold of that test, if any.
    pub threshold: Option<f64>,
}

const W: f64 = 900.0;
const H: f64 = 430.0;
const PANEL: f64 = 340.0;
const TOP: f64 = 40.0;

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// The largest TPR an (ε, δ)-DP mechanism allows at a given FPR:
/// `min(e^ε·FPR + δ, 1 − e^{−ε}(1 − δ − FPR))` (Kairouz et al. 2015, Thm. 2.1).
fn dp_region(eps: f64, delta: f64, fpr: f64) -> f64 {
    (eps.exp() * fpr + delta)
        .min(1.0 - (-eps).exp() * (1.0 - delta - fpr))
        .clamp(0.0, 1.0)
}

fn polyline(points: &[(f64, f64)], colour: &str, dash: &str) -> String {
    let pts: Vec<String> = points
        .iter()
        .map(|(x, y)| format!("{x:.2},{y:.2}"))
        .collect();
    format!(
        r#"<polyline fill="none" stroke="{colour}" stroke-width="1.5" {dash} points="{}"/>"#,
        pts.join(" ")
    ) + "\n"
}

/// The SVG document.
pub fn audit_svg(scores: &Scores, marks: &Marks, title: &str) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="{W}" height="{H}" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="{}" y="20" text-anchor="middle" font-size="14">{}</text>"#,
        W / 2.0,
        escape(title)
    );
    histograms(&mut s, scores, marks, 50.0);
    roc(&mut s, scores, marks, 500.0);
    s.push_str("</svg>\n");
    s
}

fn frame(s: &mut String, x0: f64, x_label: &str, y_label: &str) {
    let _ = writeln!(
        s,
        r#"<rect x="{x0}" y="{TOP}" width="{PANEL}" height="{PANEL}" fill="none" stroke="black"/>"#
    );
    let _ = writeln!(
        s,
        r#"<text x="{}" y="{}" text-anchor="middle">{}</text>"#,
        x0 + PANEL / 2.0,
        TOP + PANEL + 18.0,
        escape(x_label)
    );
    let _ = writeln!(
        s,
        r#"<text x="{}" y="{}" text-anchor="middle" transform="rotate(-90 {} {})">{}</text>"#,
        x0 - 12.0,
        TOP + PANEL / 2.0,
        x0 - 12.0,
        TOP + PANEL / 2.0,
        escape(y_label)
    );
}

fn histograms(s: &mut String, scores: &Scores, marks: &Marks, x0: f64) {
    frame(s, x0, "score", "density");
    let all: Vec<f64> = scores.without.iter().chain(&scores.with).copied().collect();
    if all.is_empty() {
        return;
    }
    // Range: the 0.1 % and 99.9 % quantiles, so that a few outliers do not squash the plot.
    let mut sorted = all.clone();
    sorted.sort_by(f64::total_cmp);
    let q = |p: f64| sorted[((sorted.len() - 1) as f64 * p) as usize];
    let (lo, hi) = (q(0.001), q(0.999));
    let (lo, hi) = if hi > lo {
        (lo, hi)
    } else {
        (lo - 1.0, lo + 1.0)
    };
    let bins = 60;
    let width = (hi - lo) / bins as f64;
    let density = |v: &[f64]| -> Vec<f64> {
        let mut h = vec![0.0; bins];
        for x in v {
            let b = ((x - lo) / width).floor();
            if b >= 0.0 && (b as usize) < bins {
                h[b as usize] += 1.0;
            }
        }
        let n = v.len().max(1) as f64;
        h.iter().map(|c| c / (n * width)).collect()
    };
    let (d0, d1) = (density(&scores.without), density(&scores.with));
    let top = d0.iter().chain(&d1).copied().fold(0.0, f64::max).max(1e-12);
    let px = |x: f64| x0 + (x - lo) / (hi - lo) * PANEL;
    let py = |d: f64| TOP + PANEL - d / top * (PANEL - 10.0);
    let steps = |d: &[f64]| -> Vec<(f64, f64)> {
        let mut pts = vec![(px(lo), py(0.0))];
        for (i, v) in d.iter().enumerate() {
            let a = lo + i as f64 * width;
            pts.push((px(a), py(*v)));
            pts.push((px(a + width), py(*v)));
        }
        pts.push((px(hi), py(0.0)));
        pts
    };
    s.push_str(&polyline(&steps(&d0), "#1f77b4", ""));
    s.push_str(&polyline(&steps(&d1), "#d62728", ""));
    if let Some(t) = marks.threshold.filter(|t| *t >= lo && *t <= hi) {
        let _ = writeln!(
            s,
            r##"<line x1="{x:.2}" y1="{TOP}" x2="{x:.2}" y2="{}" stroke="#444" stroke-dasharray="4 3"/>"##,
            TOP + PANEL,
            x = px(t)
        );
    }
    for (i, (label, colour)) in [
        (
            format!("without canary (n = {})", scores.without.len()),
            "#1f77b4",
        ),
        (
            format!("with canary (n = {})", scores.with.len()),
            "#d62728",
        ),
    ]
    .iter()
    .enumerate()
    {
        let y = TOP + 16.0 + 16.0 * i as f64;
        let _ = writeln!(
            s,
            r#"<text x="{}" y="{y}" fill="{colour}">{}</text>"#,
            x0 + 8.0,
            escape(label)
        );
    }
    let _ = writeln!(
        s,
        r#"<text x="{}" y="{}" text-anchor="start">{lo:.3}</text><text x="{}" y="{}" text-anchor="end">{hi:.3}</text>"#,
        x0,
        TOP + PANEL + 32.0,
        x0 + PANEL,
        TOP + PANEL + 32.0
    );
}

fn roc(s: &mut String, scores: &Scores, marks: &Marks, x0: f64) {
    frame(s, x0, "false positive rate", "true positive rate");
    let px = |x: f64| x0 + x * PANEL;
    let py = |y: f64| TOP + PANEL - y * PANEL;
    let grid: Vec<f64> = (0..=200).map(|i| i as f64 / 200.0).collect();
    let region = |eps: f64| -> Vec<(f64, f64)> {
        grid.iter()
            .map(|&f| (px(f), py(dp_region(eps, marks.delta, f))))
            .collect()
    };
    s.push_str(&polyline(
        &[(px(0.0), py(0.0)), (px(1.0), py(1.0))],
        "#999",
        r#"stroke-dasharray="2 2""#,
    ));
    s.push_str(&polyline(
        &region(marks.claimed_epsilon),
        "#2ca02c",
        r#"stroke-dasharray="6 3""#,
    ));
    if marks.bound_epsilon.is_finite() {
        s.push_str(&polyline(
            &region(marks.bound_epsilon),
            "#ff7f0e",
            r#"stroke-dasharray="2 3""#,
        ));
    }
    let curve: Vec<(f64, f64)> = roc_curve(scores, 400)
        .into_iter()
        .map(|(f, t)| (px(f), py(t)))
        .collect();
    s.push_str(&polyline(&curve, "#d62728", ""));
    if let Some((f, t)) = marks.point {
        let _ = writeln!(
            s,
            r##"<circle cx="{:.2}" cy="{:.2}" r="4" fill="#ff7f0e" stroke="black"/>"##,
            px(f),
            py(t)
        );
    }
    let legend = [
        ("ROC of the observer (all scores)".to_string(), "#d62728"),
        (
            format!("allowed by claimed ε = {:.3}", marks.claimed_epsilon),
            "#2ca02c",
        ),
        (
            format!("measured bound ε ≥ {:.3}", marks.bound_epsilon),
            "#ff7f0e",
        ),
    ];
    for (i, (label, colour)) in legend.iter().enumerate() {
        let y = TOP + PANEL - 50.0 + 16.0 * i as f64;
        let _ = writeln!(
            s,
            r#"<text x="{}" y="{y}" fill="{colour}" text-anchor="end">{}</text>"#,
            x0 + PANEL - 8.0,
            escape(label)
        );
    }
}
