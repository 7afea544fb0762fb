//! The examples' plots as SVG documents, drawn with `plotters` (its SVG backend alone: no system
//! fonts or libraries; text is written as SVG `<text>` and sized by plotters' built-in estimate).
//!
//! - [`curve_svg`]: one training curve (held-out loss, ε spent) against the step;
//! - [`sweep_svg`]: a results sweep as small multiples, one panel per private method, the metric
//!   against the target ε (log scale), one line per clipping, with the non-private and
//!   public-only references drawn in every panel.

use plotters::prelude::*;

use crate::{Curve, Error, SweepRow};

const FONT: &str = "sans-serif";
/// Abadi thresholds in the order they first appear (automatic clipping is drawn in black).
const PALETTE: [RGBColor; 6] = [
    RGBColor(0x1f, 0x77, 0xb4),
    RGBColor(0xff, 0x7f, 0x0e),
    RGBColor(0x2c, 0xa0, 0x2c),
    RGBColor(0x94, 0x67, 0xbd),
    RGBColor(0x8c, 0x56, 0x4b),
    RGBColor(0xe3, 0x77, 0xc2),
];
const NON_PRIVATE: RGBColor = RGBColor(0xd6, 0x27, 0x28);
const PUBLIC_ONLY: RGBColor = RGBColor(0x7f, 0x7f, 0x7f);

/// Turns plotters' drawing errors (which borrow the backend) into the examples' error.
fn drawing<E: std::fmt::Debug>(e: E) -> Error {
    format!("cannot draw the plot: {e:?}").into()
}

/// The range `[lo, hi]` of `values` with 5 % room on both sides (never empty).
fn padded(values: impl Iterator<Item = f64>) -> (f64, f64) {
    let (lo, hi) = values
        .filter(|v| v.is_finite())
        .fold((f64::MAX, f64::MIN), |(a, b), v| (a.min(v), b.max(v)));
    if lo > hi {
        return (0.0, 1.0);
    }
    let pad = ((hi - lo) * 0.05).max(1e-3 * hi.abs().max(1.0));
    (lo - pad, hi + pad)
}

/// A tick label with as many decimals as the axis' span needs.
fn tick(v: f64, span: f64) -> String {
    let decimals = (1.0 - span.log10().floor()).clamp(0.0, 4.0) as usize;
    format!("{v:.decimals$}")
}

/// A line chart of `curve` (x: `x_label`, y: `y_label`) as a standalone SVG document.
pub fn curve_svg(
    curve: &Curve,
    title: &str,
    x_label: &str,
    y_label: &str,
) -> Result<String, Error> {
    let mut s = String::new();
    {
        let root = SVGBackend::with_string(&mut s, (640, 400)).into_drawing_area();
        root.fill(&WHITE).map_err(drawing)?;
        let (x0, x1) = padded(curve.points.iter().map(|p| p.0));
        let (y0, y1) = padded(curve.points.iter().map(|p| p.1));
        let mut chart = ChartBuilder::on(&root)
            .caption(title, (FONT, 16))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d(x0..x1, y0..y1)
            .map_err(drawing)?;
        chart
            .configure_mesh()
            .x_desc(x_label)
            .y_desc(y_label)
            .x_label_formatter(&|v| tick(*v, x1 - x0))
            .y_label_formatter(&|v| tick(*v, y1 - y0))
            .draw()
            .map_err(drawing)?;
        chart
            .draw_series(LineSeries::new(
                curve.points.iter().copied(),
                PALETTE[0].stroke_width(2),
            ))
            .map_err(drawing)?;
        root.present().map_err(drawing)?;
    }
    Ok(s)
}

/// A sweep's private rows grouped for drawing: for each method (in order of appearance), for
/// each clipping, the `(target ε, metric)` points in ε order.
type Panels = Vec<(String, Vec<(String, Vec<(f64, f64)>)>)>;

fn panels(rows: &[SweepRow]) -> Panels {
    let mut panels: Panels = Vec::new();
    for r in rows {
        let Some(eps) = r.target_epsilon else {
            continue;
        };
        let at = match panels.iter().position(|(m, _)| *m == r.method) {
            Some(i) => i,
            None => {
                panels.push((r.method.clone(), Vec::new()));
                panels.len() - 1
            }
        };
        let lines = &mut panels[at].1;
        match lines.iter_mut().find(|(c, _)| *c == r.clipping) {
            Some((_, pts)) => pts.push((eps, r.metric)),
            None => lines.push((r.clipping.clone(), vec![(eps, r.metric)])),
        }
    }
    for (_, lines) in &mut panels {
        for (_, pts) in lines.iter_mut() {
            pts.sort_by(|a, b| a.0.total_cmp(&b.0));
        }
    }
    panels
}

/// The colour and width of a clipping's line: automatic clipping black and thick, each Abadi
/// threshold its own colour (by order of first appearance among the rows).
fn clipping_style(clipping: &str, clippings: &[String]) -> ShapeStyle {
    if clipping == "automatic" {
        return BLACK.stroke_width(3);
    }
    let i = clippings.iter().position(|c| c == clipping).unwrap_or(0);
    PALETTE[i % PALETTE.len()].stroke_width(2)
}

/// The sweep as an SVG document: one panel per private method (DP full, DP-BiTFiT, DP last
/// layer), the metric against the target ε on a log scale, one line per clipping (automatic in
/// black, each Abadi threshold in a colour), and the rows without privacy (non-private
/// fine-tuning in red, the public pre-trained model alone in grey) as dashed lines in every panel;
/// the same y range in every panel and one legend below them.
pub fn sweep_svg(rows: &[SweepRow], title: &str, metric_name: &str) -> Result<String, Error> {
    // The x axis is logarithmic: a target ε must be positive and finite (an edited table may not
    // hold one).
    if let Some(r) = rows.iter().find(|r| {
        r.target_epsilon
            .is_some_and(|e| !(e.is_finite() && e > 0.0))
    }) {
        return Err(format!(
            "cannot plot the row `{} {}`: its target ε {:?} is not a positive number",
            r.method, r.clipping, r.target_epsilon
        )
        .into());
    }
    let panels = panels(rows);
    let references: Vec<(&str, f64, RGBColor)> = rows
        .iter()
        .filter(|r| r.target_epsilon.is_none())
        .map(|r| {
            let colour = if r.method.starts_with("public") {
                PUBLIC_ONLY
            } else {
                NON_PRIVATE
            };
            (r.method.as_str(), r.metric, colour)
        })
        .collect();
    let mut clippings: Vec<String> = Vec::new();
    for (_, lines) in &panels {
        for (c, _) in lines {
            if c != "automatic" && !clippings.contains(c) {
                clippings.push(c.clone());
            }
        }
    }
    let eps: Vec<f64> = panels
        .iter()
        .flat_map(|(_, l)| l.iter().flat_map(|(_, p)| p.iter().map(|q| q.0)))
        .collect();
    let (e0, e1) = eps
        .iter()
        .fold((f64::MAX, f64::MIN), |(a, b), &e| (a.min(e), b.max(e)));
    let (e0, e1) = if e0 > e1 { (1.0, 8.0) } else { (e0, e1) };
    let (x0, x1) = (e0 / 1.3, e1 * 1.3);
    let mut keys = eps.clone();
    keys.sort_by(|a, b| a.total_cmp(b));
    keys.dedup();
    let (y0, y1) = padded(rows.iter().map(|r| r.metric));

    let n = panels.len().max(1);
    let width = 80 + 260 * n as u32;
    let mut s = String::new();
    {
        let root = SVGBackend::with_string(&mut s, (width, 440)).into_drawing_area();
        root.fill(&WHITE).map_err(drawing)?;
        let root = root.titled(title, (FONT, 17)).map_err(drawing)?;
        let (body, legend_area) = root.split_vertically(360);
        let areas = body.split_evenly((1, n));
        for (i, (area, (method, lines))) in areas.iter().zip(&panels).enumerate() {
            let mut chart = ChartBuilder::on(area)
                .caption(method, (FONT, 14))
                .margin(6)
                .x_label_area_size(36)
                .y_label_area_size(if i == 0 { 64 } else { 44 })
                .build_cartesian_2d((x0..x1).log_scale().with_key_points(keys.clone()), y0..y1)
                .map_err(drawing)?;
            chart
                .configure_mesh()
                .light_line_style(TRANSPARENT)
                .x_desc("target ε (log scale)")
                .y_desc(if i == 0 { metric_name } else { "" })
                .x_label_formatter(&|v| format!("{v}"))
                .y_label_formatter(&|v| tick(*v, y1 - y0))
                .draw()
                .map_err(drawing)?;
            for &(_, value, colour) in &references {
                chart
                    .draw_series(DashedLineSeries::new(
                        [(x0, value), (x1, value)],
                        6,
                        4,
                        colour.stroke_width(2),
                    ))
                    .map_err(drawing)?;
            }
            // Automatic clipping last, on top of an Abadi line it may coincide with.
            let mut lines: Vec<_> = lines.iter().collect();
            lines.sort_by_key(|(c, _)| c == "automatic");
            for (clipping, pts) in lines {
                let style = clipping_style(clipping, &clippings);
                chart
                    .draw_series(LineSeries::new(pts.iter().copied(), style))
                    .map_err(drawing)?;
                chart
                    .draw_series(pts.iter().map(|&p| Circle::new(p, 3, style.color.filled())))
                    .map_err(drawing)?;
            }
        }
        let mut entries: Vec<(String, ShapeStyle, bool)> = Vec::new();
        if panels
            .iter()
            .any(|(_, l)| l.iter().any(|(c, _)| c == "automatic"))
        {
            entries.push((
                "automatic clipping".into(),
                clipping_style("automatic", &clippings),
                false,
            ));
        }
        for c in &clippings {
            entries.push((c.clone(), clipping_style(c, &clippings), false));
        }
        for &(name, _, colour) in &references {
            entries.push((name.to_string(), colour.stroke_width(2), true));
        }
        let per_row = ((width as usize - 60) / 200).max(1);
        for (k, (name, style, dashed)) in entries.iter().enumerate() {
            let x = 70 + 200 * (k % per_row) as i32;
            let y = 20 + 22 * (k / per_row) as i32;
            let line: Vec<(i32, i32)> = if *dashed {
                vec![(x, y), (x + 10, y)]
            } else {
                vec![(x, y), (x + 26, y)]
            };
            legend_area
                .draw(&PathElement::new(line, *style))
                .map_err(drawing)?;
            if *dashed {
                legend_area
                    .draw(&PathElement::new(vec![(x + 16, y), (x + 26, y)], *style))
                    .map_err(drawing)?;
            }
            legend_area
                .draw(&Text::new(
                    name.clone(),
                    (x + 32, y - 6),
                    (FONT, 12).into_font(),
                ))
                .map_err(drawing)?;
        }
        root.present().map_err(drawing)?;
    }
    Ok(s)
}
