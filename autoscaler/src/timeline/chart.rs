//! Timelines as an SVG chart: stacked panels on one time axis.
//!
//! 1. offered load (shaded) and the load each timeline served (lines);
//! 2. replicas (solid), the last decision (dashed), ready pods (thin), and
//!    panic mode shaded in the timeline's colour;
//! 3. p95 latency on a log scale;
//! 4. one lane per timeline marking the seconds that broke the objective.

use std::path::Path;

use plotters::coord::Shift;
use plotters::coord::types::RangedCoordf64;
use plotters::prelude::*;

use super::{Row, Timeline, downsample};

/// Points drawn per series at most; longer timelines are folded first.
const MAX_POINTS: usize = 1500;
const WIDTH: u32 = 1200;
const FONT: &str = "sans-serif";

const PALETTE: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
];

type Area<'a> = DrawingArea<SVGBackend<'a>, Shift>;

fn color(i: usize) -> RGBColor {
    PALETTE[i % PALETTE.len()]
}

fn err(e: impl std::fmt::Display) -> String {
    format!("drawing the chart: {e}")
}

/// Extras for [`render_chart_with`].
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct ChartOptions {
    /// The latency objective, drawn as a dashed line on the p95 panel.
    pub slo_ms: Option<f64>,
}

/// Draws `timelines` as an SVG at `path` (see the module docs for the
/// panels). Timelines longer than 1,500 rows are folded into buckets first.
pub fn render_chart(path: &Path, title: &str, timelines: &[Timeline]) -> Result<(), String> {
    render_chart_with(path, title, timelines, ChartOptions::default())
}

/// [`render_chart`] with extras such as the latency objective.
pub fn render_chart_with(
    path: &Path,
    title: &str,
    timelines: &[Timeline],
    options: ChartOptions,
) -> Result<(), String> {
    let (t0, t1) = span(timelines).ok_or("nothing to draw: every timeline is empty")?;
    let step = ((t1 - t0) / MAX_POINTS as f64).ceil().max(1.0);
    // The x axis counts seconds, minutes, hours or days, so its ticks fall
    // on round times.
    let unit = unit_for(t1 - t0);
    let series: Vec<(&str, Vec<Row>)> = timelines
        .iter()
        .map(|tl| {
            let mut rows = downsample(&tl.rows, step);
            rows.iter_mut().for_each(|r| r.t /= unit);
            (tl.label.as_str(), rows)
        })
        .collect();
    let x = t0 / unit..(t1.max(t0 + 1.0)) / unit;
    let lanes = 40 + 26 * series.len() as u32;
    let height = 50 + 230 + 280 + 230 + lanes;
    let root = SVGBackend::new(path, (WIDTH, height)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let root = root.titled(title, (FONT, 20)).map_err(err)?;
    let (load, rest) = root.split_vertically(230);
    let (replicas, rest) = rest.split_vertically(280);
    let (latency, violations) = rest.split_vertically(230);
    let to_clock = label_for(t1 - t0);
    let label_t = move |x: &f64| to_clock(&(x * unit));
    draw_load(&load, &series, x.clone(), &label_t)?;
    draw_replicas(&replicas, &series, x.clone(), &label_t)?;
    draw_latency(&latency, &series, x.clone(), &label_t, options.slo_ms)?;
    draw_violations(&violations, &series, x, &label_t)?;
    root.present().map_err(err)
}

fn span(timelines: &[Timeline]) -> Option<(f64, f64)> {
    let rows = timelines.iter().flat_map(|t| &t.rows);
    let lo = rows.clone().map(|r| r.t).reduce(f64::min)?;
    let hi = rows.map(|r| r.t).reduce(f64::max)?;
    Some((lo, hi + 1.0))
}

/// Seconds per x-axis unit: seconds up to 10 min (a live demo), minutes up
/// to 3 h, hours up to 3 days, else days.
fn unit_for(span: f64) -> f64 {
    if span <= SHORT_SPAN {
        1.0
    } else if span <= 3.0 * 3600.0 {
        60.0
    } else if span <= 3.0 * 86_400.0 {
        3600.0
    } else {
        86_400.0
    }
}

/// Spans up to this many seconds are labelled in seconds.
const SHORT_SPAN: f64 = 600.0;

/// Elapsed time as `m:ss` for spans up to 10 min, `h:mm`, or `Nd hh:mm`
/// for spans over two days.
fn label_for(span: f64) -> impl Fn(&f64) -> String {
    move |t: &f64| {
        let s = t.max(0.0) as u64;
        let (d, h, m) = (s / 86_400, s % 86_400 / 3600, s % 3600 / 60);
        if span <= SHORT_SPAN {
            format!("{}:{:02}", s / 60, s % 60)
        } else if span > 2.0 * 86_400.0 {
            format!("{d}d {h:02}:{m:02}")
        } else {
            format!("{}:{m:02}", d * 24 + h)
        }
    }
}

fn max_of(series: &[(&str, Vec<Row>)], f: impl Fn(&Row) -> f64) -> f64 {
    series
        .iter()
        .flat_map(|(_, rows)| rows.iter().map(&f))
        .fold(0.0, f64::max)
}

/// Runs of consecutive rows where `f` holds, as `[start, end)` in seconds.
fn runs(rows: &[Row], f: impl Fn(&Row) -> bool) -> Vec<(f64, f64)> {
    let width = match rows {
        [a, b, ..] => b.t - a.t,
        _ => 1.0,
    };
    let mut out: Vec<(f64, f64)> = Vec::new();
    for r in rows.iter().filter(|r| f(r)) {
        match out.last_mut() {
            Some((_, end)) if (r.t - *end).abs() < width * 0.5 => *end = r.t + width,
            _ => out.push((r.t, r.t + width)),
        }
    }
    out
}

fn legend_line(c: RGBColor) -> impl Fn((i32, i32)) -> PathElement<(i32, i32)> {
    move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], c.stroke_width(2))
}

fn draw_legend<'a, 'b: 'a, CT>(
    chart: &mut ChartContext<'a, SVGBackend<'b>, CT>,
) -> Result<(), String>
where
    CT: plotters::coord::CoordTranslate,
{
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK.mix(0.3))
        .label_font((FONT, 12))
        .draw()
        .map_err(err)
}

type LinearChart<'a, 'b> =
    ChartContext<'a, SVGBackend<'b>, Cartesian2d<RangedCoordf64, RangedCoordf64>>;

/// A panel with a linear y axis from 0 to `top`, its caption and mesh drawn.
fn linear_panel<'a, 'b>(
    area: &'a Area<'b>,
    caption: &str,
    x: std::ops::Range<f64>,
    top: f64,
    y_desc: &str,
    label_t: &dyn Fn(&f64) -> String,
) -> Result<LinearChart<'a, 'b>, String> {
    let mut chart = ChartBuilder::on(area)
        .margin(8)
        .caption(caption, (FONT, 15))
        .x_label_area_size(24)
        .y_label_area_size(64)
        .build_cartesian_2d(x, 0.0..top)
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_label_formatter(label_t)
        .y_desc(y_desc)
        .y_label_formatter(&|v| format!("{v:.0}"))
        .light_line_style(BLACK.mix(0.05))
        .draw()
        .map_err(err)?;
    Ok(chart)
}

fn draw_load(
    area: &Area<'_>,
    series: &[(&str, Vec<Row>)],
    x: std::ops::Range<f64>,
    label_t: &dyn Fn(&f64) -> String,
) -> Result<(), String> {
    let top = max_of(series, |r| r.offered_rps.max(r.served_rps)).max(1.0) * 1.1;
    let mut chart = linear_panel(area, "load", x, top, "requests/s", label_t)?;
    let grey = RGBColor(120, 120, 120);
    if let Some((_, rows)) = series.first() {
        chart
            .draw_series(
                AreaSeries::new(
                    rows.iter().map(|r| (r.t, r.offered_rps)),
                    0.0,
                    grey.mix(0.2),
                )
                .border_style(grey.mix(0.6)),
            )
            .map_err(err)?
            .label("offered")
            .legend(move |(x, y)| {
                Rectangle::new([(x, y - 5), (x + 18, y + 5)], grey.mix(0.3).filled())
            });
    }
    for (i, (label, rows)) in series.iter().enumerate() {
        chart
            .draw_series(LineSeries::new(
                rows.iter().map(|r| (r.t, r.served_rps)),
                color(i).stroke_width(1),
            ))
            .map_err(err)?
            .label(format!("served: {label}"))
            .legend(legend_line(color(i)));
    }
    draw_legend(&mut chart)
}

fn draw_replicas(
    area: &Area<'_>,
    series: &[(&str, Vec<Row>)],
    x: std::ops::Range<f64>,
    label_t: &dyn Fn(&f64) -> String,
) -> Result<(), String> {
    let top = (max_of(series, |r| f64::from(r.replicas.max(r.desired))) * 1.1).max(2.0);
    let mut chart = linear_panel(
        area,
        "replicas (solid), decision (dashed), ready (thin); panic mode shaded",
        x,
        top,
        "pods",
        label_t,
    )?;
    for (i, (_, rows)) in series.iter().enumerate() {
        let c = color(i);
        chart
            .draw_series(
                runs(rows, |r| r.panic)
                    .into_iter()
                    .map(|(a, b)| Rectangle::new([(a, 0.0), (b, top)], c.mix(0.12).filled())),
            )
            .map_err(err)?;
    }
    for (i, (label, rows)) in series.iter().enumerate() {
        let c = color(i);
        chart
            .draw_series(LineSeries::new(
                rows.iter().map(|r| (r.t, f64::from(r.ready))),
                c.mix(0.5).stroke_width(1),
            ))
            .map_err(err)?;
        chart
            .draw_series(DashedLineSeries::new(
                rows.iter().map(|r| (r.t, f64::from(r.desired))),
                6,
                4,
                c.stroke_width(1),
            ))
            .map_err(err)?;
        chart
            .draw_series(LineSeries::new(
                rows.iter().map(|r| (r.t, f64::from(r.replicas))),
                c.stroke_width(2),
            ))
            .map_err(err)?
            .label(*label)
            .legend(legend_line(c));
    }
    draw_legend(&mut chart)
}

fn draw_latency(
    area: &Area<'_>,
    series: &[(&str, Vec<Row>)],
    x: std::ops::Range<f64>,
    label_t: &dyn Fn(&f64) -> String,
    slo_ms: Option<f64>,
) -> Result<(), String> {
    let values = || {
        series
            .iter()
            .flat_map(|(_, rows)| rows.iter().filter_map(|r| r.p95_ms))
            .chain(slo_ms)
    };
    let lo = values().fold(f64::INFINITY, f64::min);
    let hi = values().fold(0.0, f64::max);
    let (lo, hi) = if lo.is_finite() {
        ((lo * 0.8).max(0.1), (hi * 1.5).max(lo * 2.0))
    } else {
        (1.0, 1000.0)
    };
    let mut chart = ChartBuilder::on(area)
        .margin(8)
        .caption("p95 latency (log scale)", (FONT, 15))
        .x_label_area_size(24)
        .y_label_area_size(64)
        .build_cartesian_2d(x, (lo..hi).log_scale())
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_label_formatter(label_t)
        .y_desc("ms")
        .y_labels(6)
        .y_label_formatter(&|v| format!("{v:.0}"))
        .light_line_style(BLACK.mix(0.05))
        .draw()
        .map_err(err)?;
    if let Some(slo) = slo_ms {
        let (x0, x1) = (chart.x_range().start, chart.x_range().end);
        chart
            .draw_series(DashedLineSeries::new(
                [(x0, slo), (x1, slo)],
                8,
                5,
                RED.mix(0.8).stroke_width(1),
            ))
            .map_err(err)?
            .label(format!("SLO {slo:.0} ms"))
            .legend(|(x, y)| {
                PathElement::new(vec![(x, y), (x + 18, y)], RED.mix(0.8).stroke_width(1))
            });
    }
    for (i, (label, rows)) in series.iter().enumerate() {
        let c = color(i);
        // A row without requests has no p95: break the line there.
        let mut pieces: Vec<Vec<(f64, f64)>> = vec![Vec::new()];
        for r in rows {
            match r.p95_ms {
                Some(v) => pieces.last_mut().into_iter().for_each(|p| p.push((r.t, v))),
                None if pieces.last().is_some_and(|p| !p.is_empty()) => pieces.push(Vec::new()),
                None => {}
            }
        }
        for (n, piece) in pieces.into_iter().enumerate() {
            let drawn = chart
                .draw_series(LineSeries::new(piece, c.stroke_width(1)))
                .map_err(err)?;
            if n == 0 {
                drawn.label(*label).legend(legend_line(c));
            }
        }
    }
    draw_legend(&mut chart)
}

fn draw_violations(
    area: &Area<'_>,
    series: &[(&str, Vec<Row>)],
    x: std::ops::Range<f64>,
    label_t: &dyn Fn(&f64) -> String,
) -> Result<(), String> {
    let n = series.len() as f64;
    let x0 = x.start;
    let mut chart = ChartBuilder::on(area)
        .margin(8)
        .caption(
            "objective broken (latency over the SLO or failed requests)",
            (FONT, 15),
        )
        .x_label_area_size(24)
        .y_label_area_size(64)
        .build_cartesian_2d(x, 0.0..n)
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_label_formatter(label_t)
        .y_labels(0)
        .disable_y_mesh()
        .light_line_style(BLACK.mix(0.05))
        .draw()
        .map_err(err)?;
    for (i, (label, rows)) in series.iter().enumerate() {
        let lane = n - 1.0 - i as f64;
        chart
            .draw_series(runs(rows, |r| r.violation).into_iter().map(|(a, b)| {
                Rectangle::new([(a, lane + 0.15), (b, lane + 0.85)], RED.mix(0.7).filled())
            }))
            .map_err(err)?;
        chart
            .draw_series(std::iter::once(Text::new(
                label.to_string(),
                (x0, lane + 0.75),
                (FONT, 12).into_font().color(&color(i)),
            )))
            .map_err(err)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_merge_consecutive_rows() {
        let rows: Vec<Row> = (0..10)
            .map(|t| Row {
                t: f64::from(t),
                panic: (2..5).contains(&t) || t == 7,
                ..Row::default()
            })
            .collect();
        assert_eq!(runs(&rows, |r| r.panic), vec![(2.0, 5.0), (7.0, 8.0)]);
    }

    #[test]
    fn time_labels() {
        assert_eq!(label_for(7200.0)(&3660.0), "1:01");
        assert_eq!(label_for(135.0)(&75.0), "1:15", "a two-minute demo in m:ss");
        assert_eq!(unit_for(135.0), 1.0);
        assert_eq!(unit_for(7200.0), 60.0);
        assert_eq!(label_for(14.0 * 86_400.0)(&(86_400.0 + 7200.0)), "1d 02:00");
    }
}
