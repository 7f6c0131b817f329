//! Drawing figures with plotters and writing them as PNG and SVG files.
//!
//! Text is drawn only with `Text` elements and axis labels (no `caption`, no plotters
//! legend): those are the paths that do not measure text, so the SVG backend, which writes
//! text natively, works without any font.

use std::path::Path;

use plotters::coord::types::RangedCoordf64;
use plotters::coord::Shift;
use plotters::drawing::DrawingAreaErrorKind;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use super::chart::{Bar, Dash, Figure, LegendItem, Panel, FUSED, REF, TRAIN};
use super::font::{ensure_font, FONT};
use super::log::Pts;
use super::{Report, ReportOptions};
use crate::error::{Error, Result};

/// Writes each figure as `<stem>.png` (when asked for and a font is found, else a warning)
/// and `<stem>.svg` into `out`, listing the files in `report`.
pub(super) fn write_figures(figs: &[Figure], out: &Path, opts: &ReportOptions, report: &mut Report) -> Result<()> {
    let png = opts.png
        && match ensure_font() {
            Ok(_) => true,
            Err(why) => {
                report.warnings.push(format!("PNG charts skipped: {why}; the SVG charts were written"));
                false
            }
        };
    for fig in figs {
        if png {
            let path = out.join(format!("{}.png", fig.stem));
            write_png(fig, opts.size, &path)?;
            report.files.push(path);
        }
        if opts.svg {
            let path = out.join(format!("{}.svg", fig.stem));
            write_svg(fig, opts.size, &path)?;
            report.files.push(path);
        }
    }
    Ok(())
}

fn draw_error(path: &Path, e: impl std::fmt::Display) -> Error {
    Error::data(path.display().to_string(), format!("drawing the chart failed: {e}"))
}

fn write_svg(fig: &Figure, size: (u32, u32), path: &Path) -> Result<()> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, size).into_drawing_area();
        draw_figure(&root, fig).map_err(|e| draw_error(path, e))?;
        root.present().map_err(|e| draw_error(path, e))?;
    }
    std::fs::write(path, svg).map_err(|e| Error::io(path, e))
}

fn write_png(fig: &Figure, (w, h): (u32, u32), path: &Path) -> Result<()> {
    use image::ImageEncoder;
    let mut rgb = vec![255u8; w as usize * h as usize * 3];
    {
        let root = BitMapBackend::with_buffer(&mut rgb, (w, h)).into_drawing_area();
        draw_figure(&root, fig).map_err(|e| draw_error(path, e))?;
        root.present().map_err(|e| draw_error(path, e))?;
    }
    let mut bytes = Vec::new();
    image::codecs::png::PngEncoder::new(&mut bytes)
        .write_image(&rgb, w, h, image::ExtendedColorType::Rgb8)
        .map_err(|e| Error::data(path.display().to_string(), format!("PNG encoding failed: {e}")))?;
    std::fs::write(path, bytes).map_err(|e| Error::io(path, e))
}

type DrawResult<DB> = std::result::Result<(), DrawingAreaErrorKind<<DB as DrawingBackend>::ErrorType>>;

fn text_style(size: u32, color: RGBColor) -> TextStyle<'static> {
    (FONT, size as f64).into_font().color(&color)
}

fn draw_figure<DB: DrawingBackend>(root: &DrawingArea<DB, Shift>, fig: &Figure) -> DrawResult<DB> {
    root.fill(&WHITE)?;
    let (w, _) = root.dim_in_pixel();
    let (head, body) = root.split_vertically(46);
    let title = truncate(&fig.title, (w as usize).saturating_sub(40) * 10 / 135);
    head.draw(&Text::new(
        title,
        (w as i32 / 2, 12),
        text_style(24, FUSED).pos(Pos::new(HPos::Center, VPos::Top)),
    ))?;
    // One legend width for all panels, so that stacked plots share their x extent.
    let lw = fig.panels.iter().map(|p| legend_width(&p.legend(), w)).max().unwrap_or(0);
    let rows = body.split_evenly((fig.panels.len().max(1), 1));
    for (panel, row) in fig.panels.iter().zip(&rows) {
        draw_panel(row, panel, lw)?;
    }
    Ok(())
}

const LEGEND_FONT: u32 = 16;

/// Legend column width: about 0.56 em per character plus the line sample.
fn legend_width(items: &[LegendItem], total: u32) -> u32 {
    let chars = items.iter().map(|i| i.label.chars().count()).max().unwrap_or(0) as u32;
    (chars * LEGEND_FONT * 56 / 100 + 62).clamp(150, 340).min(total / 3)
}

fn truncate(s: &str, max_chars: usize) -> String {
    if s.chars().count() <= max_chars {
        s.to_string()
    } else {
        let mut t: String = s.chars().take(max_chars.saturating_sub(1)).collect();
        t.push('…');
        t
    }
}

const PLOT_TOP: u32 = 10;

fn draw_panel<DB: DrawingBackend>(area: &DrawingArea<DB, Shift>, p: &Panel, lw: u32) -> DrawResult<DB> {
    let (w, _) = area.dim_in_pixel();
    let legend = p.legend();
    let (plot, legend_area) = area.split_horizontally(w - lw);
    let (plot, legend_top) = draw_panel_title(plot, p)?;

    // a bar panel: categories at x = 0, 1, …, named under the axis
    let bars = !p.categories.is_empty();
    let (x0, x1) = if bars { (-0.5, p.categories.len() as f64 - 0.5) } else { x_range(p) };
    let (y0, y1) = y_range(p);
    let mut chart = ChartBuilder::on(&plot)
        .margin_top(PLOT_TOP)
        .margin_right(20)
        .margin_left(8)
        .margin_bottom(6)
        .x_label_area_size(if bars { 30 } else { 50 })
        .y_label_area_size(80)
        .build_cartesian_2d(x0..x1, y0..y1)?;
    if bars {
        draw_bar_mesh(&mut chart, &plot, p, (x0, x1), (y0, y1))?;
        draw_refs_and_bands(&mut chart, p, (x0, x1))?;
        draw_bars(&mut chart, p)?;
        draw_bar_labels(&mut chart, p)?;
    } else {
        draw_mesh(&mut chart, p, (x0, x1), (y0, y1))?;
        draw_refs_and_bands(&mut chart, p, (x0, x1))?;
        draw_lines(&mut chart, p)?;
    }
    draw_legend(&legend_area, &legend, legend_top)
}

/// A bar panel's grid (no vertical lines), its y labels, the categories' names under the
/// axis and the zero line the bars rise from.
fn draw_bar_mesh<DB: DrawingBackend>(
    chart: &mut Chart<'_, DB>,
    plot: &DrawingArea<DB, Shift>,
    p: &Panel,
    (x0, x1): (f64, f64),
    (y0, y1): (f64, f64),
) -> DrawResult<DB> {
    let prec = label_precision(y1 - y0);
    chart
        .configure_mesh()
        .disable_x_mesh()
        .y_desc(p.y_desc.as_str())
        .x_labels(0)
        .y_labels(8)
        .y_label_formatter(&|v: &f64| format!("{v:.prec$}"))
        .label_style(text_style(15, FUSED))
        .axis_desc_style(text_style(17, FUSED))
        .bold_line_style(RGBColor(222, 222, 222))
        .light_line_style(RGBColor(244, 244, 244))
        .draw()?;
    // The names in the plot area's pixels (the mesh's own labels sit at the axis' round
    // numbers, not at the categories), each in its share of the width (0.56 em a character).
    let (w, _) = plot.dim_in_pixel();
    let n = p.categories.len();
    let max_chars = (w as usize / n.max(1)).saturating_sub(8) * 10 / (15 * 56 / 10);
    let (bx, by) = plot.get_base_pixel();
    for (c, name) in category_names(&p.categories, max_chars).into_iter().enumerate() {
        let (x, y) = chart.backend_coord(&(c as f64, y0));
        let style = text_style(15, FUSED).pos(Pos::new(HPos::Center, VPos::Top));
        plot.draw(&Text::new(name, (x - bx, y - by + 8), style))?;
    }
    chart.draw_series(std::iter::once(PathElement::new(vec![(x0, 0.0), (x1, 0.0)], FUSED.stroke_width(1))))?;
    Ok(())
}

/// Category names of at most `max_chars` characters: as they are when they fit, else cut at
/// their start: settings labels begin with what they share (the method) and end with the
/// values in which they differ (`joint train.lr=0.01` shows as `…lr=0.01`).
fn category_names(names: &[String], max_chars: usize) -> Vec<String> {
    names
        .iter()
        .map(|s| {
            let n = s.chars().count();
            if n <= max_chars {
                s.clone()
            } else {
                std::iter::once('…').chain(s.chars().skip(n + 1 - max_chars.max(1))).collect()
            }
        })
        .collect()
}

/// Each bar from zero, and its error bar (with caps) where it has one.
fn draw_bars<DB: DrawingBackend>(chart: &mut Chart<'_, DB>, p: &Panel) -> DrawResult<DB> {
    for b in &p.bars {
        let (l, r) = (b.x - b.width / 2.0, b.x + b.width / 2.0);
        chart.draw_series(std::iter::once(Rectangle::new([(l, 0.0), (r, b.value)], b.color.filled())))?;
        let e = b.err.unwrap_or(0.0).abs();
        if e > 0.0 {
            let (lo, hi, cap) = (b.value - e, b.value + e, b.width / 4.0);
            let style = FUSED.stroke_width(2);
            chart.draw_series(std::iter::once(PathElement::new(vec![(b.x, lo), (b.x, hi)], style)))?;
            for y in [lo, hi] {
                chart.draw_series(std::iter::once(PathElement::new(vec![(b.x - cap, y), (b.x + cap, y)], style)))?;
            }
        }
    }
    Ok(())
}

const BAR_LABEL_FONT: u32 = 13;

/// Every bar's value over it (under one that falls), clear of its error bar, drawn after
/// all bars so that no neighbour covers a label: `value ± err` where that fits the bar's
/// share of the width for every bar of the panel, else the value alone, else no labels.
fn draw_bar_labels<DB: DrawingBackend>(chart: &mut Chart<'_, DB>, p: &Panel) -> DrawResult<DB> {
    // a bar's share of the width: the bar and its gap (bars take 0.9 of their slot)
    let fits = |b: &Bar, with_err: bool| {
        let px = |x: f64| chart.backend_coord(&(x, 0.0)).0 as f64;
        let slot = (px(b.x + b.width / 2.0) - px(b.x - b.width / 2.0)) / 0.9;
        bar_label(b, with_err).chars().count() as f64 * BAR_LABEL_FONT as f64 * 0.56 <= slot
    };
    let with_err = p.bars.iter().all(|b| fits(b, true));
    if !with_err && !p.bars.iter().all(|b| fits(b, false)) {
        return Ok(());
    }
    for b in &p.bars {
        let e = b.err.unwrap_or(0.0).abs();
        let (y, v, dy) = if b.value >= 0.0 { (b.value + e, VPos::Bottom, -4) } else { (b.value - e, VPos::Top, 4) };
        let style = text_style(BAR_LABEL_FONT, FUSED).pos(Pos::new(HPos::Center, v));
        chart.draw_series(std::iter::once(EmptyElement::at((b.x, y)) + Text::new(bar_label(b, with_err), (0, dy), style)))?;
    }
    Ok(())
}

/// A bar's value with one decimal, and `± err` when asked for and it has an error bar.
fn bar_label(b: &Bar, with_err: bool) -> String {
    match b.err.filter(|_| with_err) {
        Some(e) => format!("{:.1} ± {:.1}", b.value, e),
        None => format!("{:.1}", b.value),
    }
}

/// The panel's own title, if it has one, above its plot; returns the plot's area and the
/// legend's top margin (level with the plot's top).
fn draw_panel_title<DB: DrawingBackend>(
    plot: DrawingArea<DB, Shift>,
    p: &Panel,
) -> std::result::Result<(DrawingArea<DB, Shift>, u32), DrawingAreaErrorKind<DB::ErrorType>> {
    Ok(match &p.title {
        Some(t) => {
            let (head, rest) = plot.split_vertically(26);
            let (pw, _) = head.dim_in_pixel();
            head.draw(&Text::new(
                t.clone(),
                (pw as i32 / 2 + 40, 4),
                text_style(18, FUSED).pos(Pos::new(HPos::Center, VPos::Top)),
            ))?;
            (rest, 26 + PLOT_TOP)
        }
        None => (plot, PLOT_TOP),
    })
}

type Chart<'a, DB> = ChartContext<'a, DB, Cartesian2d<RangedCoordf64, RangedCoordf64>>;

/// Grid, tick labels and axis descriptions.
fn draw_mesh<DB: DrawingBackend>(chart: &mut Chart<'_, DB>, p: &Panel, (x0, x1): (f64, f64), (y0, y1): (f64, f64)) -> DrawResult<DB> {
    let prec = label_precision(y1 - y0);
    let integer_y = p.integer_y;
    let y_fmt = move |v: &f64| {
        if integer_y {
            integer_label(*v)
        } else {
            format!("{v:.prec$}")
        }
    };
    let x_fmt = |v: &f64| integer_label(*v);
    // Small integer spans (few epochs, depth indices): one tick per integer.
    let x_span = (x1 - x0).round() as usize;
    let x_labels = if x_span <= 12 { x_span + 1 } else { 12 };
    chart
        .configure_mesh()
        .x_desc(p.x_desc.as_str())
        .y_desc(p.y_desc.as_str())
        .x_labels(x_labels)
        .y_labels(8)
        .x_label_formatter(&x_fmt)
        .y_label_formatter(&y_fmt)
        .label_style(text_style(15, FUSED))
        .axis_desc_style(text_style(17, FUSED))
        .bold_line_style(RGBColor(222, 222, 222))
        .light_line_style(RGBColor(244, 244, 244))
        .draw()
}

/// The horizontal reference lines across the x range, then the shaded bands (under the
/// curves, which are drawn after).
fn draw_refs_and_bands<DB: DrawingBackend>(chart: &mut Chart<'_, DB>, p: &Panel, (x0, x1): (f64, f64)) -> DrawResult<DB> {
    for (y, _) in &p.refs {
        chart.draw_series(DashedLineSeries::new(vec![(x0, *y), (x1, *y)], 10, 6, REF.stroke_width(2)))?;
    }
    for (color, pts) in &p.bands {
        // the band's outline: the high side forwards, the low side back
        let poly: Vec<(f64, f64)> = pts.iter().map(|q| (q.0, q.2)).chain(pts.iter().rev().map(|q| (q.0, q.1))).collect();
        if poly.len() >= 4 {
            chart.draw_series(std::iter::once(Polygon::new(poly, color.mix(0.18).filled())))?;
        }
    }
    Ok(())
}

/// The curves, a gap in the values breaking each into segments, with point markers where
/// [`Panel::markers`] asks for them.
fn draw_lines<DB: DrawingBackend>(chart: &mut Chart<'_, DB>, p: &Panel) -> DrawResult<DB> {
    let markers = p.markers();
    for line in &p.lines {
        // Wide strokes through hundreds of points come out jagged; thin them on long runs.
        let width = if markers { line.width } else { line.width.min(2) };
        let style = line.color.stroke_width(width);
        for seg in segments(&line.pts) {
            let path = if line.step { step_path(&seg) } else { seg.clone() };
            if path.len() > 1 {
                match line.dash {
                    Dash::Solid => {
                        chart.draw_series(LineSeries::new(path, style))?;
                    }
                    Dash::Dashed => {
                        chart.draw_series(DashedLineSeries::new(path, 10, 6, style))?;
                    }
                    Dash::Dotted => {
                        chart.draw_series(DashedLineSeries::new(path, 3, 5, style))?;
                    }
                }
            }
            // Markers for short runs, and always for isolated points (single epoch, or a
            // value between two gaps), which would otherwise be invisible.
            if markers || seg.len() == 1 {
                let r = 2 + line.width;
                chart.draw_series(seg.iter().map(|&q| Circle::new(q, r, line.color.filled())))?;
            }
        }
    }
    Ok(())
}

fn draw_legend<DB: DrawingBackend>(area: &DrawingArea<DB, Shift>, items: &[LegendItem], top: u32) -> DrawResult<DB> {
    if items.is_empty() {
        return Ok(());
    }
    let (w, h) = area.dim_in_pixel();
    let avail = h.saturating_sub(top + 8).max(1);
    let row = (avail / items.len() as u32).clamp(12, 24);
    let font = (row.saturating_sub(7)).clamp(10, LEGEND_FONT);
    let max_chars = (w.saturating_sub(52) * 10 / (font * 56 / 10).max(1)) as usize;
    let fits = (avail / row) as usize;
    let shown = if items.len() > fits { fits.saturating_sub(1) } else { items.len() };
    let (sx0, sx1) = (6i32, 38i32);
    for (k, it) in items.iter().take(shown).enumerate() {
        let y = (top + row / 2 + k as u32 * row) as i32;
        let style = it.color.stroke_width(it.width);
        match it.dash {
            Dash::Solid => area.draw(&PathElement::new(vec![(sx0, y), (sx1, y)], style))?,
            Dash::Dashed | Dash::Dotted => {
                let (on, off) = if it.dash == Dash::Dashed { (8, 5) } else { (3, 4) };
                let mut x = sx0;
                while x < sx1 {
                    area.draw(&PathElement::new(vec![(x, y), ((x + on).min(sx1), y)], style))?;
                    x += on + off;
                }
            }
        }
        if it.marker {
            area.draw(&Circle::new(((sx0 + sx1) / 2, y), 2 + it.width, it.color.filled()))?;
        }
        area.draw(&Text::new(
            truncate(&it.label, max_chars),
            (sx1 + 8, y),
            text_style(font, FUSED).pos(Pos::new(HPos::Left, VPos::Center)),
        ))?;
    }
    if shown < items.len() {
        let y = (top + row / 2 + shown as u32 * row) as i32;
        area.draw(&Text::new(
            format!("… {} more", items.len() - shown),
            (sx0, y),
            text_style(font, TRAIN).pos(Pos::new(HPos::Left, VPos::Center)),
        ))?;
    }
    Ok(())
}

fn integer_label(v: f64) -> String {
    if (v - v.round()).abs() < 1e-6 {
        format!("{}", v.round() as i64)
    } else {
        String::new()
    }
}

/// Decimals for axis labels: enough for the tick step (about span / 8).
fn label_precision(span: f64) -> usize {
    if !(span > 0.0 && span.is_finite()) {
        return 2;
    }
    (-(span / 8.0).log10()).ceil().clamp(0.0, 8.0) as usize
}

fn x_range(p: &Panel) -> (f64, f64) {
    let xs = p.lines.iter().flat_map(|l| l.pts.iter().map(|q| q.0)).filter(|x| x.is_finite());
    let (lo, hi) = xs.fold((f64::MAX, f64::MIN), |(a, b), x| (a.min(x), b.max(x)));
    if lo > hi || !(hi - lo).is_finite() {
        (0.0, 1.0)
    } else if hi - lo < 1e-9 {
        (lo - 1.0, hi + 1.0)
    } else {
        let pad = (hi - lo) * 0.02;
        (lo - pad, hi + pad)
    }
}

fn y_range(p: &Panel) -> (f64, f64) {
    // bars rise from zero, and their error bars count
    let bars = p.bars.iter().flat_map(|b| {
        let e = b.err.unwrap_or(0.0).abs();
        [0.0, b.value - e, b.value + e]
    });
    let ys = p
        .lines
        .iter()
        .flat_map(|l| l.pts.iter().filter_map(|q| q.1))
        .chain(bars)
        .chain(p.refs.iter().map(|r| r.0))
        .chain(p.bands.iter().flat_map(|b| b.1.iter().flat_map(|q| [q.1, q.2])))
        .filter(|y| y.is_finite());
    let (lo, hi) = ys.fold((f64::MAX, f64::MIN), |(a, b), y| (a.min(y), b.max(y)));
    // no finite value, or a span beyond f64 (the axis' tick search would never end)
    if lo > hi || !(hi - lo).is_finite() {
        (0.0, 1.0)
    } else if hi - lo < 1e-12 * lo.abs().max(1.0) {
        let pad = if lo == 0.0 { 1.0 } else { lo.abs() * 0.1 };
        (lo - pad, hi + pad)
    } else {
        if p.bars.is_empty() {
            let pad = (hi - lo) * 0.07;
            (lo - pad, hi + pad)
        } else {
            // room for the value labels above and below the bars; none under a zero base
            let pad = (hi - lo) * 0.12;
            (if lo == 0.0 { 0.0 } else { lo - pad }, if hi == 0.0 { 0.0 } else { hi + pad })
        }
    }
}

/// Runs of consecutive finite values; a missing value splits the curve.
fn segments(pts: &Pts) -> Vec<Vec<(f64, f64)>> {
    let mut out: Vec<Vec<(f64, f64)>> = Vec::new();
    let mut cur: Vec<(f64, f64)> = Vec::new();
    for &(x, y) in pts {
        match y {
            Some(y) if x.is_finite() => cur.push((x, y)),
            _ => {
                if !cur.is_empty() {
                    out.push(std::mem::take(&mut cur));
                }
            }
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// A staircase through the points: each value holds until the next x.
fn step_path(seg: &[(f64, f64)]) -> Vec<(f64, f64)> {
    let mut out = Vec::with_capacity(seg.len() * 2);
    for (i, &(x, y)) in seg.iter().enumerate() {
        out.push((x, y));
        if let Some(&(nx, _)) = seg.get(i + 1) {
            out.push((nx, y));
        }
    }
    out
}
