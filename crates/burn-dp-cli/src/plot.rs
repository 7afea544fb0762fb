//! The audit's SVG, drawn with `plotters` (SVG backend only): the score histograms of both worlds
//! (left) and the ROC curve with the region the claimed ε allows and the measured bound (right).

use burn_dp_audit::{roc_curve, Scores};
use plotters::prelude::*;

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

const FONT: &str = "sans-serif";
const WITHOUT: RGBColor = RGBColor(0x1f, 0x77, 0xb4);
const WITH: RGBColor = RGBColor(0xd6, 0x27, 0x28);
const CLAIMED: RGBColor = RGBColor(0x2c, 0xa0, 0x2c);
const BOUND: RGBColor = RGBColor(0xff, 0x7f, 0x0e);
const GREY: RGBColor = RGBColor(0x99, 0x99, 0x99);

/// The largest TPR an (ε, δ)-DP mechanism allows at a given FPR:
/// `min(e^ε·FPR + δ, 1 − e^{−ε}(1 − δ − FPR))` (Kairouz et al. 2015, Thm. 2.1).
fn dp_region(eps: f64, delta: f64, fpr: f64) -> f64 {
    (eps.exp() * fpr + delta)
        .min(1.0 - (-eps).exp() * (1.0 - delta - fpr))
        .clamp(0.0, 1.0)
}

/// Plotters' drawing errors as a message.
fn drawing<E: std::fmt::Debug>(e: E) -> String {
    format!("cannot draw the audit plot: {e:?}")
}

/// A legend entry's line, 20 pixels long from `(x, y)`.
fn legend_line(style: ShapeStyle) -> impl Fn((i32, i32)) -> PathElement<(i32, i32)> {
    move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], style)
}

/// The SVG document.
pub fn audit_svg(scores: &Scores, marks: &Marks, title: &str) -> Result<String, String> {
    let mut s = String::new();
    {
        let root = SVGBackend::with_string(&mut s, (900, 430)).into_drawing_area();
        root.fill(&WHITE).map_err(drawing)?;
        let root = root.titled(title, (FONT, 15)).map_err(drawing)?;
        let (left, right) = root.split_horizontally(450);
        histograms(&left, scores, marks)?;
        roc(&right, scores, marks)?;
        root.present().map_err(drawing)?;
    }
    Ok(s)
}

type Area<'a> = DrawingArea<SVGBackend<'a>, plotters::coord::Shift>;

/// Densities of both worlds' scores over the 0.1 %–99.9 % quantile range (so that a few outliers
/// do not squash the plot), as step lines, with the bound's threshold dashed.
fn histograms(area: &Area, scores: &Scores, marks: &Marks) -> Result<(), String> {
    let mut sorted: Vec<f64> = scores.without.iter().chain(&scores.with).copied().collect();
    sorted.sort_by(f64::total_cmp);
    let (lo, hi) = if sorted.is_empty() {
        (0.0, 1.0)
    } else {
        let q = |p: f64| sorted[((sorted.len() - 1) as f64 * p) as usize];
        let (lo, hi) = (q(0.001), q(0.999));
        if hi > lo {
            (lo, hi)
        } else {
            (lo - 1.0, lo + 1.0)
        }
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
    let top = d0.iter().chain(&d1).copied().fold(0.0, f64::max).max(1e-12) * 1.15;
    let steps = |d: &[f64]| -> Vec<(f64, f64)> {
        let mut pts = vec![(lo, 0.0)];
        for (i, v) in d.iter().enumerate() {
            let a = lo + i as f64 * width;
            pts.push((a, *v));
            pts.push((a + width, *v));
        }
        pts.push((hi, 0.0));
        pts
    };
    let mut chart = ChartBuilder::on(area)
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(50)
        .build_cartesian_2d(lo..hi, 0.0..top)
        .map_err(drawing)?;
    chart
        .configure_mesh()
        .light_line_style(TRANSPARENT)
        .x_desc("score")
        .y_desc("density")
        .draw()
        .map_err(drawing)?;
    for (d, colour, label) in [
        (
            &d0,
            WITHOUT,
            format!("without canary (n = {})", scores.without.len()),
        ),
        (
            &d1,
            WITH,
            format!("with canary (n = {})", scores.with.len()),
        ),
    ] {
        let style = colour.stroke_width(2);
        chart
            .draw_series(LineSeries::new(steps(d), style))
            .map_err(drawing)?
            .label(label)
            .legend(legend_line(style));
    }
    if let Some(t) = marks.threshold.filter(|t| (lo..=hi).contains(t)) {
        chart
            .draw_series(DashedLineSeries::new(
                [(t, 0.0), (t, top)],
                4,
                3,
                RGBColor(0x44, 0x44, 0x44).into(),
            ))
            .map_err(drawing)?
            .label("threshold of the bound's test")
            .legend(legend_line(RGBColor(0x44, 0x44, 0x44).into()));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(GREY)
        .draw()
        .map_err(drawing)
}

/// The observer's ROC curve against the largest TPR the claimed ε allows (and the measured bound).
fn roc(area: &Area, scores: &Scores, marks: &Marks) -> Result<(), String> {
    let mut chart = ChartBuilder::on(area)
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(50)
        .build_cartesian_2d(0.0..1.0, 0.0..1.0)
        .map_err(drawing)?;
    chart
        .configure_mesh()
        .light_line_style(TRANSPARENT)
        .x_desc("false positive rate")
        .y_desc("true positive rate")
        .draw()
        .map_err(drawing)?;
    let grid: Vec<f64> = (0..=200).map(|i| i as f64 / 200.0).collect();
    let region = |eps: f64| -> Vec<(f64, f64)> {
        grid.iter()
            .map(|&f| (f, dp_region(eps, marks.delta, f)))
            .collect()
    };
    chart
        .draw_series(DashedLineSeries::new(
            [(0.0, 0.0), (1.0, 1.0)],
            2,
            2,
            GREY.into(),
        ))
        .map_err(drawing)?;
    let claimed = CLAIMED.stroke_width(2);
    chart
        .draw_series(DashedLineSeries::new(
            region(marks.claimed_epsilon),
            6,
            3,
            claimed,
        ))
        .map_err(drawing)?
        .label(format!(
            "allowed by claimed ε = {:.3}",
            marks.claimed_epsilon
        ))
        .legend(legend_line(claimed));
    if marks.bound_epsilon.is_finite() {
        let bound = BOUND.stroke_width(2);
        chart
            .draw_series(DashedLineSeries::new(
                region(marks.bound_epsilon),
                2,
                3,
                bound,
            ))
            .map_err(drawing)?
            .label(format!("measured bound ε ≥ {:.3}", marks.bound_epsilon))
            .legend(legend_line(bound));
    }
    let observed = WITH.stroke_width(2);
    chart
        .draw_series(LineSeries::new(roc_curve(scores, 400), observed))
        .map_err(drawing)?
        .label("ROC of the observer (all scores)")
        .legend(legend_line(observed));
    if let Some(p) = marks.point {
        chart
            .draw_series([Circle::new(p, 4, BOUND.filled())])
            .map_err(drawing)?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.85))
        .border_style(GREY)
        .draw()
        .map_err(drawing)
}
