//! Training-run report: turns a run's `metrics.jsonl` into charts (PNG and SVG).
//!
//! # Log format
//! One JSON object per line, one line per epoch. Every key is optional and unknown keys
//! are ignored, so older and newer logs both render. Values that are missing, `null`,
//! `NaN` or infinite (`NaN`/`Infinity` literals as written by Python are accepted too)
//! leave a gap in the curve. Keys read:
//!
//! ```text
//! epoch, method, modalities
//! train.{loss, acc, per_modality_loss.<m>}
//! val.{loss, acc, per_modality.<m>.acc}       test.{loss, acc, per_modality.<m>.acc}
//! imbalance.{ratio, scores.<m>}
//! aug.{learners.<m>, gap}
//! aim.{depths, scores.<m>[d], ratio[d], strength[d], mask_density.<layer>}
//! ```
//!
//! # Charts (written to `<run_dir>/charts/`, each as `.png` and `.svg`)
//! - `loss`: fused and per-modality training loss, val/test loss.
//! - `accuracy`: fused and per-modality test accuracy (val dashed, train dotted).
//! - `imbalance`: imbalance ratio (reference line at 1) and per-modality confidence scores.
//! - `aug_learners`, `aug_gap` when the log has an `aug` section.
//! - `aim_depth_scores`, `aim_strength`, `aim_ratio`, `aim_mask_density` (plus the text
//!   summary `aim_mask_density.txt`) when the log has an `aim` section.
//!
//! PNG text needs a TrueType font: `EQUIMODAL_FONT` (a `.ttf` path, or `none` to turn PNG
//! output off), then common system locations. Without one only the SVGs are written and
//! a warning is recorded in `charts/warnings.txt` (listed among the returned files).

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use plotters::coord::Shift;
use plotters::drawing::DrawingAreaErrorKind;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use serde_json::Value;

use crate::error::{Error, Result};

/// Name of the metric log inside a run directory.
pub const METRICS_FILE: &str = "metrics.jsonl";
/// Sub-directory of a run directory that receives the charts.
pub const CHARTS_DIR: &str = "charts";
/// Written next to the charts when something was skipped.
pub const WARNINGS_FILE: &str = "warnings.txt";
/// Environment variable naming the TrueType font used for PNG text (`none`: no PNGs).
pub const FONT_ENV: &str = "EQUIMODAL_FONT";
/// Default chart size in pixels.
pub const DEFAULT_SIZE: (u32, u32) = (1000, 600);

/// What to render.
#[derive(Debug, Clone)]
pub struct ReportOptions {
    /// Chart size in pixels (both formats).
    pub size: (u32, u32),
    /// Write PNGs (needs a font; skipped with a warning if none is found).
    pub png: bool,
    /// Write SVGs.
    pub svg: bool,
}

impl Default for ReportOptions {
    fn default() -> Self {
        ReportOptions { size: DEFAULT_SIZE, png: true, svg: true }
    }
}

/// Files written and things skipped.
#[derive(Debug, Clone, Default)]
pub struct Report {
    pub files: Vec<PathBuf>,
    pub warnings: Vec<String>,
}

/// Reads `run_dir/metrics.jsonl`, writes the charts into `run_dir/charts/` and returns the
/// written files. Warnings (skipped charts, no font for PNGs) go to
/// `charts/warnings.txt`, which is then part of the returned list.
pub fn render_report(run_dir: &Path) -> Result<Vec<PathBuf>> {
    let out = run_dir.join(CHARTS_DIR);
    let report = render_report_with(run_dir, &out, &ReportOptions::default())?;
    finish(report, &out)
}

/// Like [`render_report`], with the output directory and options chosen by the caller;
/// warnings are returned instead of written.
pub fn render_report_with(run_dir: &Path, out_dir: &Path, opts: &ReportOptions) -> Result<Report> {
    let log = RunLog::load(&run_dir.join(METRICS_FILE))?;
    let mut report = Report::default();
    let figures = report_figures(&log, &mut report.warnings);
    create_dir(out_dir)?;
    write_figures(&figures, out_dir, opts, &mut report)?;
    if let Some(text) = mask_density_summary(&log) {
        let path = out_dir.join("aim_mask_density.txt");
        std::fs::write(&path, text).map_err(|e| Error::io(&path, e))?;
        report.files.push(path);
    }
    Ok(report)
}

/// Overlays the fused test accuracy of several runs (legend: run directory name and
/// method) in `out/comparison_accuracy.{png,svg}`. A run without test accuracy falls back
/// to its validation accuracy (with a warning); a run with neither is skipped (warning).
pub fn render_comparison(runs: &[&Path], out: &Path) -> Result<Vec<PathBuf>> {
    let report = render_comparison_with(runs, out, &ReportOptions::default())?;
    finish(report, out)
}

/// [`render_comparison`] with options; warnings are returned instead of written.
pub fn render_comparison_with(runs: &[&Path], out: &Path, opts: &ReportOptions) -> Result<Report> {
    if runs.is_empty() {
        return Err(Error::config("runs", "render_comparison needs at least one run directory"));
    }
    let mut report = Report::default();
    let mut panel = Panel::new("epoch", "fused accuracy");
    for (i, dir) in runs.iter().enumerate() {
        let log = RunLog::load(&dir.join(METRICS_FILE))?;
        let name = run_name(dir);
        let label = match &log.method {
            Some(m) => format!("{name} ({m})"),
            None => name.clone(),
        };
        let color = PALETTE[i % PALETTE.len()];
        let dash = [Dash::Solid, Dash::Dashed, Dash::Dotted][(i / PALETTE.len()) % 3];
        let test = log.field(&["test", "acc"]);
        if has_data(&test) {
            panel.push(Line::new(label, color, test).dash(dash));
            continue;
        }
        let val = log.field(&["val", "acc"]);
        if has_data(&val) {
            report.warnings.push(format!(
                "comparison: {} has no test accuracy; its validation accuracy is shown",
                log.path.display()
            ));
            panel.push(Line::new(format!("{label} [val]"), color, val).dash(dash));
        } else {
            report.warnings.push(format!(
                "comparison: {} has neither test nor validation accuracy; run left out",
                log.path.display()
            ));
        }
    }
    if panel.lines.is_empty() {
        return Err(Error::data(
            out.display().to_string(),
            "comparison: none of the runs logged test or validation accuracy",
        ));
    }
    let fig = Figure {
        stem: "comparison_accuracy".into(),
        title: "Fused test accuracy: method comparison".into(),
        panels: vec![panel],
    };
    create_dir(out)?;
    write_figures(&[fig], out, opts, &mut report)?;
    Ok(report)
}

/// Per setting (label, its runs' directories): the mean over seeds of the fused test
/// accuracy and of the imbalance ratio per epoch, with a band of ± one standard deviation,
/// in `out/compare_accuracy.{png,svg}` and `out/compare_imbalance.{png,svg}`.
pub fn render_seed_bands(groups: &[(String, Vec<PathBuf>)], out: &Path) -> Result<Vec<PathBuf>> {
    let mut report = Report::default();
    let mut figs = Vec::new();
    for (stem, title, path) in [
        ("compare_accuracy", "Fused test accuracy: mean and ± 1 std over seeds", &["test", "acc"][..]),
        ("compare_imbalance", "Imbalance ratio of confidence scores: mean and ± 1 std over seeds", &["imbalance", "ratio"][..]),
    ] {
        let mut panel = Panel::new("epoch", if stem == "compare_accuracy" { "fused accuracy" } else { "max / min modality score" });
        for (i, (label, dirs)) in groups.iter().enumerate() {
            let logs = dirs.iter().map(|d| RunLog::load(&d.join(METRICS_FILE))).collect::<Result<Vec<_>>>()?;
            let mut by_epoch: BTreeMap<i64, Vec<f64>> = BTreeMap::new();
            for log in &logs {
                for (x, y) in log.field(path) {
                    if let Some(y) = y.filter(|y| y.is_finite()) {
                        by_epoch.entry(x.round() as i64).or_default().push(y);
                    }
                }
            }
            let color = PALETTE[i % PALETTE.len()];
            let stats: Vec<(f64, f64, f64)> = by_epoch
                .iter()
                .map(|(x, ys)| {
                    let n = ys.len() as f64;
                    let m = ys.iter().sum::<f64>() / n;
                    let sd = if ys.len() > 1 { (ys.iter().map(|y| (y - m).powi(2)).sum::<f64>() / (n - 1.0)).sqrt() } else { 0.0 };
                    (*x as f64, m, sd)
                })
                .collect();
            panel.bands.push((color, stats.iter().map(|&(x, m, sd)| (x, m - sd, m + sd)).collect()));
            panel.push(Line::new(format!("{label} ({} seeds)", dirs.len()), color, stats.iter().map(|&(x, m, _)| (x, Some(m))).collect()));
        }
        if panel.has_data() {
            figs.push(Figure { stem: stem.into(), title: title.into(), panels: vec![panel] });
        } else {
            report.warnings.push(format!("{stem}: no run logged {}", path.join(".")));
        }
    }
    create_dir(out)?;
    write_figures(&figs, out, &ReportOptions::default(), &mut report)?;
    finish(report, out)
}

fn finish(mut report: Report, out: &Path) -> Result<Vec<PathBuf>> {
    let path = out.join(WARNINGS_FILE);
    if report.warnings.is_empty() {
        // A warnings file left by an earlier render would now be stale.
        let _ = std::fs::remove_file(&path);
    } else {
        for w in &report.warnings {
            tracing::warn!("report: {w}");
        }
        let mut text = report.warnings.join("\n");
        text.push('\n');
        std::fs::write(&path, text).map_err(|e| Error::io(&path, e))?;
        report.files.push(path);
    }
    Ok(report.files)
}

fn create_dir(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))
}

fn run_name(dir: &Path) -> String {
    // `canonicalize` turns "." or "runs/x/" into a name; fall back to the text given.
    let named = |p: &Path| p.file_name().map(|n| n.to_string_lossy().into_owned());
    named(dir)
        .or_else(|| dir.canonicalize().ok().and_then(|p| named(&p)))
        .unwrap_or_else(|| dir.display().to_string())
}

// ---------------------------------------------------------------------------------------
// Reading the log

struct RunLog {
    path: PathBuf,
    /// One record per epoch, sorted by epoch.
    records: Vec<Value>,
    /// The x value (epoch) of each record.
    xs: Vec<f64>,
    modalities: Vec<String>,
    method: Option<String>,
}

impl RunLog {
    fn load(path: &Path) -> Result<RunLog> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let where_ = || path.display().to_string();
        let mut rows: Vec<(f64, Value)> = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let line_no = i + 1;
            let line = line.trim();
            if line.is_empty() {
                continue;
            }
            let value: Value = serde_json::from_str(&non_finite_to_null(line)).map_err(|e| {
                let msg = e.to_string();
                let msg = msg.split(" at line ").next().unwrap_or(&msg).to_string();
                Error::data(where_(), format!("line {line_no}, column {}: invalid JSON: {msg}", e.column()))
            })?;
            if !value.is_object() {
                return Err(Error::data(
                    where_(),
                    format!("line {line_no}: expected one JSON object per line, found {}", kind(&value)),
                ));
            }
            // A record without a usable epoch follows the previous one.
            let x = value
                .get("epoch")
                .and_then(num)
                .unwrap_or_else(|| rows.last().map_or(0.0, |r| r.0 + 1.0));
            rows.push((x, value));
        }
        if rows.is_empty() {
            return Err(Error::data(where_(), "no metric records: the file is empty"));
        }
        // Epoch order; when an epoch repeats (a resumed run) the later record wins.
        rows.sort_by(|a, b| a.0.total_cmp(&b.0));
        let mut xs: Vec<f64> = Vec::with_capacity(rows.len());
        let mut records: Vec<Value> = Vec::with_capacity(rows.len());
        for (x, v) in rows {
            if xs.last() == Some(&x) {
                *records.last_mut().unwrap() = v;
            } else {
                xs.push(x);
                records.push(v);
            }
        }
        let modalities = collect_modalities(&records);
        let method = records.iter().rev().find_map(|r| r.get("method")?.as_str().map(str::to_string));
        Ok(RunLog { path: path.to_path_buf(), records, xs, modalities, method })
    }

    fn series(&self, f: impl Fn(&Value) -> Option<f64>) -> Pts {
        self.xs.iter().zip(&self.records).map(|(x, r)| (*x, f(r))).collect()
    }

    fn field(&self, path: &[&str]) -> Pts {
        self.series(|r| at(r, path).and_then(num))
    }

    fn has_section(&self, key: &str) -> bool {
        self.records.iter().any(|r| r.get(key).is_some_and(Value::is_object))
    }

    fn title(&self, what: &str) -> String {
        let dir = self.path.parent().map(run_name).unwrap_or_default();
        match (&self.method, dir.is_empty()) {
            (Some(m), false) => format!("{what} - {dir} ({m})"),
            (Some(m), true) => format!("{what} ({m})"),
            (None, false) => format!("{what} - {dir}"),
            (None, true) => what.to_string(),
        }
    }
}

type Pts = Vec<(f64, Option<f64>)>;

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Replaces the non-standard literals `NaN`, `Infinity`, `-Infinity` (outside strings)
/// by `null`, so logs written by Python's `json` module parse; they are gaps anyway.
fn non_finite_to_null(line: &str) -> Cow<'_, str> {
    if !line.contains("NaN") && !line.contains("Infinity") {
        return Cow::Borrowed(line);
    }
    const TOKENS: [&str; 5] = ["-Infinity", "+Infinity", "Infinity", "-NaN", "NaN"];
    let b = line.as_bytes();
    let mut out: Vec<u8> = Vec::with_capacity(b.len());
    let (mut in_str, mut escaped, mut i) = (false, false, 0);
    'outer: while i < b.len() {
        let c = b[i];
        if in_str {
            if escaped {
                escaped = false;
            } else if c == b'\\' {
                escaped = true;
            } else if c == b'"' {
                in_str = false;
            }
        } else if c == b'"' {
            in_str = true;
        } else {
            for t in TOKENS {
                if b[i..].starts_with(t.as_bytes()) {
                    out.extend_from_slice(b"null");
                    i += t.len();
                    continue 'outer;
                }
            }
        }
        out.push(c);
        i += 1;
    }
    // Only ASCII tokens were replaced, so the bytes are still UTF-8.
    Cow::Owned(String::from_utf8(out).unwrap_or_else(|_| line.to_string()))
}

fn at<'a>(v: &'a Value, path: &[&str]) -> Option<&'a Value> {
    path.iter().try_fold(v, |v, k| v.get(k))
}

/// A finite number (numbers written as strings are accepted); anything else is a gap.
fn num(v: &Value) -> Option<f64> {
    let x = match v {
        Value::Number(n) => n.as_f64()?,
        Value::String(s) => s.trim().parse::<f64>().ok()?,
        _ => return None,
    };
    x.is_finite().then_some(x)
}

fn has_data(pts: &Pts) -> bool {
    pts.iter().any(|p| p.1.is_some())
}

fn collect_modalities(records: &[Value]) -> Vec<String> {
    let mut mods: Vec<String> = Vec::new();
    let mut add = |m: &str| {
        if !mods.iter().any(|x| x == m) {
            mods.push(m.to_string());
        }
    };
    for r in records {
        if let Some(Value::Array(a)) = r.get("modalities") {
            a.iter().filter_map(Value::as_str).for_each(&mut add);
        }
    }
    const KEYED: [&[&str]; 7] = [
        &["train", "per_modality_loss"],
        &["test", "per_modality"],
        &["val", "per_modality"],
        &["imbalance", "scores"],
        &["aug", "learners"],
        &["aim", "scores"],
        &["train", "per_modality"],
    ];
    for r in records {
        for path in KEYED {
            if let Some(Value::Object(o)) = at(r, path) {
                o.keys().for_each(|k| add(k));
            }
        }
    }
    mods
}

// ---------------------------------------------------------------------------------------
// What to draw

const FUSED: RGBColor = RGBColor(30, 30, 30);
const TEST: RGBColor = RGBColor(214, 39, 40);
const TRAIN: RGBColor = RGBColor(140, 140, 140);
const REF: RGBColor = RGBColor(150, 150, 150);
/// Modality / run colours (Tableau-like, without the red and black used for fused curves).
const PALETTE: [RGBColor; 9] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
    RGBColor(127, 127, 127),
];

fn modality_color(i: usize) -> RGBColor {
    PALETTE[i % PALETTE.len()]
}

/// Ordered colours for depths (viridis, dark purple to green; the pale yellow end is left
/// out because it vanishes on white).
fn depth_color(d: usize, n: usize) -> RGBColor {
    const STOPS: [(f64, f64, f64); 5] =
        [(68., 1., 84.), (59., 82., 139.), (33., 145., 140.), (53., 183., 121.), (143., 215., 68.)];
    let t = if n <= 1 { 0.0 } else { d as f64 / (n - 1) as f64 } * (STOPS.len() - 1) as f64;
    let i = (t.floor() as usize).min(STOPS.len() - 2);
    let f = t - i as f64;
    let (a, b) = (STOPS[i], STOPS[i + 1]);
    let mix = |x: f64, y: f64| (x + (y - x) * f).round() as u8;
    RGBColor(mix(a.0, b.0), mix(a.1, b.1), mix(a.2, b.2))
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Dash {
    Solid,
    Dashed,
    Dotted,
}

struct Line {
    label: Option<String>,
    color: RGBColor,
    dash: Dash,
    width: u32,
    step: bool,
    pts: Pts,
}

impl Line {
    fn new(label: impl Into<String>, color: RGBColor, pts: Pts) -> Line {
        Line { label: Some(label.into()), color, dash: Dash::Solid, width: 2, step: false, pts }
    }
    fn unlabelled(color: RGBColor, pts: Pts) -> Line {
        Line { label: None, ..Line::new("", color, pts) }
    }
    fn dash(mut self, dash: Dash) -> Line {
        self.dash = dash;
        self
    }
    fn width(mut self, width: u32) -> Line {
        self.width = width;
        self
    }
    fn step(mut self) -> Line {
        self.step = true;
        self
    }
}

#[derive(Clone)]
struct LegendItem {
    label: String,
    color: RGBColor,
    dash: Dash,
    width: u32,
    /// Draw a point marker on the sample (the curves carry markers too).
    marker: bool,
}

struct Panel {
    title: Option<String>,
    x_desc: String,
    y_desc: String,
    lines: Vec<Line>,
    /// Horizontal reference lines: value and legend label.
    refs: Vec<(f64, String)>,
    /// Legend entries not tied to one line (e.g. colour = depth, dash = modality).
    extra_legend: Vec<LegendItem>,
    integer_y: bool,
    /// Shaded bands drawn under the lines: colour and (x, low, high) points.
    bands: Vec<(RGBColor, Vec<(f64, f64, f64)>)>,
}

impl Panel {
    fn new(x_desc: &str, y_desc: &str) -> Panel {
        Panel {
            title: None,
            x_desc: x_desc.into(),
            y_desc: y_desc.into(),
            lines: Vec::new(),
            refs: Vec::new(),
            extra_legend: Vec::new(),
            integer_y: false,
            bands: Vec::new(),
        }
    }
    fn titled(mut self, title: impl Into<String>) -> Panel {
        self.title = Some(title.into());
        self
    }
    /// Adds the line if it has at least one value.
    fn push(&mut self, line: Line) {
        if has_data(&line.pts) {
            self.lines.push(line);
        }
    }
    fn has_data(&self) -> bool {
        !self.lines.is_empty()
    }
    /// Whether curves get point markers: short runs only, else they clutter.
    fn markers(&self) -> bool {
        let points = |l: &Line| l.pts.iter().filter(|q| q.1.is_some()).count();
        self.lines.iter().map(points).max().unwrap_or(0) <= 30
    }
    fn legend(&self) -> Vec<LegendItem> {
        let marker = self.markers();
        let mut items: Vec<LegendItem> = self
            .lines
            .iter()
            .filter_map(|l| {
                let label = l.label.clone()?;
                Some(LegendItem { label, color: l.color, dash: l.dash, width: l.width, marker })
            })
            .collect();
        items.extend(self.extra_legend.iter().cloned());
        items.extend(self.refs.iter().map(|(_, label)| LegendItem {
            label: label.clone(),
            color: REF,
            dash: Dash::Dashed,
            width: 2,
            marker: false,
        }));
        items
    }
}

struct Figure {
    stem: String,
    title: String,
    /// Stacked top to bottom.
    panels: Vec<Panel>,
}

/// Keeps the figure if it has something to show, else records why it was left out.
fn keep(figs: &mut Vec<Figure>, warnings: &mut Vec<String>, mut fig: Figure) {
    fig.panels.retain(Panel::has_data);
    if fig.panels.is_empty() {
        warnings.push(format!("{}: nothing to plot (no values logged), chart skipped", fig.stem));
    } else {
        figs.push(fig);
    }
}

fn report_figures(log: &RunLog, warnings: &mut Vec<String>) -> Vec<Figure> {
    let mut figs = Vec::new();
    let mods = &log.modalities;

    // 1. Loss.
    let mut p = Panel::new("epoch", "loss");
    p.push(Line::new("train loss (fused)", FUSED, log.field(&["train", "loss"])).width(3));
    for (i, m) in mods.iter().enumerate() {
        let pts = log.field(&["train", "per_modality_loss", m]);
        p.push(Line::new(format!("train loss: {m}"), modality_color(i), pts));
    }
    p.push(Line::new("val loss (fused)", TEST, log.field(&["val", "loss"])).dash(Dash::Dashed));
    p.push(Line::new("test loss (fused)", TEST, log.field(&["test", "loss"])));
    keep(&mut figs, warnings, Figure { stem: "loss".into(), title: log.title("Loss"), panels: vec![p] });

    // 2. Accuracy.
    let mut p = Panel::new("epoch", "accuracy");
    p.push(Line::new("test acc (fused)", FUSED, log.field(&["test", "acc"])).width(3));
    for (i, m) in mods.iter().enumerate() {
        let pts = log.field(&["test", "per_modality", m, "acc"]);
        p.push(Line::new(format!("test acc: {m}"), modality_color(i), pts));
    }
    p.push(Line::new("val acc (fused)", FUSED, log.field(&["val", "acc"])).dash(Dash::Dashed));
    for (i, m) in mods.iter().enumerate() {
        let pts = log.field(&["val", "per_modality", m, "acc"]);
        p.push(Line::new(format!("val acc: {m}"), modality_color(i), pts).dash(Dash::Dashed));
    }
    p.push(Line::new("train acc (fused)", TRAIN, log.field(&["train", "acc"])).dash(Dash::Dotted));
    keep(&mut figs, warnings, Figure { stem: "accuracy".into(), title: log.title("Accuracy"), panels: vec![p] });

    // 3. Imbalance.
    let mut ratio = Panel::new("epoch", "ratio").titled("Imbalance ratio (dominant / weak)");
    ratio.push(Line::new("imbalance ratio", FUSED, log.field(&["imbalance", "ratio"])).width(3));
    ratio.refs.push((1.0, "1.0 = balanced".into()));
    let mut scores = Panel::new("epoch", "score").titled("Per-modality confidence score");
    for (i, m) in mods.iter().enumerate() {
        scores.push(Line::new(m.clone(), modality_color(i), log.field(&["imbalance", "scores", m])));
    }
    keep(
        &mut figs,
        warnings,
        Figure { stem: "imbalance".into(), title: log.title("Modality imbalance"), panels: vec![ratio, scores] },
    );

    // 4. AUG.
    if log.has_section("aug") {
        let mut p = Panel::new("epoch", "learners");
        p.integer_y = true;
        for (i, m) in mods.iter().enumerate() {
            p.push(Line::new(m.clone(), modality_color(i), log.field(&["aug", "learners", m])).step());
        }
        keep(
            &mut figs,
            warnings,
            Figure { stem: "aug_learners".into(), title: log.title("AUG: learners per modality"), panels: vec![p] },
        );
        let mut p = Panel::new("epoch", "G");
        p.push(Line::new("G = L_strong - L_weak", FUSED, log.field(&["aug", "gap"])).width(3));
        p.refs.push((0.0, "G = 0".into()));
        keep(&mut figs, warnings, Figure { stem: "aug_gap".into(), title: log.title("AUG: gap G"), panels: vec![p] });
    }

    // 5. AIM.
    if log.has_section("aim") {
        aim_figures(log, &mut figs, warnings);
    }
    figs
}

fn aim_figures(log: &RunLog, figs: &mut Vec<Figure>, warnings: &mut Vec<String>) {
    let mods = &log.modalities;
    let arr_len = |v: Option<&Value>| v.and_then(Value::as_array).map_or(0, Vec::len);
    let depths = log
        .records
        .iter()
        .map(|r| {
            let declared = at(r, &["aim", "depths"]).and_then(num).map_or(0, |d| d.max(0.0) as usize);
            let scored = mods.iter().map(|m| arr_len(at(r, &["aim", "scores", m]))).max().unwrap_or(0);
            declared
                .max(scored)
                .max(arr_len(at(r, &["aim", "ratio"])))
                .max(arr_len(at(r, &["aim", "strength"])))
        })
        .max()
        .unwrap_or(0)
        .min(256);
    let per_depth = |path: &[&str], d: usize| {
        log.series(|r| at(r, path).and_then(Value::as_array).and_then(|a| a.get(d)).and_then(num))
    };
    let depth_name = |d: usize| format!("depth {d}");

    // Scores per depth: the last epoch that has them, and their course over epochs.
    let last = log.records.iter().zip(&log.xs).rev().find(|(r, _)| {
        mods.iter().any(|m| at(r, &["aim", "scores", m]).is_some_and(Value::is_array))
    });
    let mut final_panel = Panel::new("depth", "score S[m][d]");
    if let Some((rec, x)) = last {
        final_panel.title = Some(format!("Score per depth at epoch {}", fmt_num(*x)));
        for (i, m) in mods.iter().enumerate() {
            let pts: Pts = (0..depths)
                .map(|d| {
                    let v = at(rec, &["aim", "scores", m]).and_then(Value::as_array).and_then(|a| a.get(d));
                    (d as f64, v.and_then(num))
                })
                .collect();
            final_panel.push(Line::new(m.clone(), modality_color(i), pts).width(3));
        }
    }
    let mut course = Panel::new("epoch", "score S[m][d]").titled("Score per depth over epochs");
    let dashes = [Dash::Solid, Dash::Dashed, Dash::Dotted];
    for (i, m) in mods.iter().enumerate() {
        for d in 0..depths {
            course.push(
                Line::unlabelled(depth_color(d, depths), per_depth(&["aim", "scores", m], d))
                    .dash(dashes[i % dashes.len()]),
            );
        }
    }
    if course.has_data() {
        for d in 0..depths {
            course.extra_legend.push(LegendItem {
                label: depth_name(d),
                color: depth_color(d, depths),
                dash: Dash::Solid,
                width: 3,
                marker: false,
            });
        }
        for (i, m) in mods.iter().enumerate() {
            course.extra_legend.push(LegendItem {
                label: m.clone(),
                color: FUSED,
                dash: dashes[i % dashes.len()],
                width: 2,
                marker: false,
            });
        }
    }
    keep(
        figs,
        warnings,
        Figure {
            stem: "aim_depth_scores".into(),
            title: log.title("AIM: per-depth scores"),
            panels: vec![final_panel, course],
        },
    );

    let mut p = Panel::new("epoch", "strength s_d");
    for d in 0..depths {
        p.push(Line::new(depth_name(d), depth_color(d, depths), per_depth(&["aim", "strength"], d)));
    }
    keep(
        figs,
        warnings,
        Figure { stem: "aim_strength".into(), title: log.title("AIM: modulation strength per depth"), panels: vec![p] },
    );

    let mut p = Panel::new("epoch", "r_d = S[dom][d] / S[weak][d]");
    for d in 0..depths {
        p.push(Line::new(depth_name(d), depth_color(d, depths), per_depth(&["aim", "ratio"], d)));
    }
    p.refs.push((1.0, "1.0 = balanced".into()));
    keep(
        figs,
        warnings,
        Figure { stem: "aim_ratio".into(), title: log.title("AIM: imbalance ratio per depth"), panels: vec![p] },
    );

    // Mask density: spread over layers per epoch.
    let stats = |f: fn(&[f64]) -> f64| {
        log.series(|r| {
            let o = at(r, &["aim", "mask_density"])?.as_object()?;
            let v: Vec<f64> = o.values().filter_map(num).collect();
            (!v.is_empty()).then(|| f(&v))
        })
    };
    let layers = log
        .records
        .iter()
        .filter_map(|r| at(r, &["aim", "mask_density"])?.as_object().map(|o| o.len()))
        .max()
        .unwrap_or(0);
    let mut p = Panel::new("epoch", "mask density");
    p.push(Line::new("mean over layers", FUSED, stats(|v| v.iter().sum::<f64>() / v.len() as f64)).width(3));
    p.push(Line::new("max", PALETTE[0], stats(|v| v.iter().copied().fold(f64::MIN, f64::max))).dash(Dash::Dashed));
    p.push(Line::new("min", PALETTE[1], stats(|v| v.iter().copied().fold(f64::MAX, f64::min))).dash(Dash::Dashed));
    keep(
        figs,
        warnings,
        Figure {
            stem: "aim_mask_density".into(),
            title: log.title(&format!("AIM: mask density ({layers} layers)")),
            panels: vec![p],
        },
    );
}

/// Per-layer mask density of the last epoch that logged it, as a text table.
fn mask_density_summary(log: &RunLog) -> Option<String> {
    let (rec, x) = log
        .records
        .iter()
        .zip(&log.xs)
        .rev()
        .find_map(|(r, x)| Some((at(r, &["aim", "mask_density"])?.as_object()?, x)))?;
    let rows: BTreeMap<&str, Option<f64>> = rec.iter().map(|(k, v)| (k.as_str(), num(v))).collect();
    if rows.is_empty() {
        return None;
    }
    let width = rows.keys().map(|k| k.chars().count()).max().unwrap_or(5).max(5);
    let mut s = format!(
        "AIM mask density (fraction of elements marked under-optimized) at epoch {}\n{:<width$}  density\n",
        fmt_num(*x),
        "layer"
    );
    for (k, v) in &rows {
        let v = v.map_or_else(|| "n/a".to_string(), |v| format!("{v:.4}"));
        s.push_str(&format!("{k:<width$}  {v}\n"));
    }
    let vals: Vec<f64> = rows.values().flatten().copied().collect();
    if !vals.is_empty() {
        let mean = vals.iter().sum::<f64>() / vals.len() as f64;
        let min = vals.iter().copied().fold(f64::MAX, f64::min);
        let max = vals.iter().copied().fold(f64::MIN, f64::max);
        s.push_str(&format!(
            "\n{} layers: mean {mean:.4}, min {min:.4}, max {max:.4}\n",
            rows.len()
        ));
    }
    Some(s)
}

fn fmt_num(x: f64) -> String {
    if x.fract() == 0.0 && x.abs() < 1e15 {
        format!("{}", x as i64)
    } else {
        format!("{x}")
    }
}

// ---------------------------------------------------------------------------------------
// Writing files

fn write_figures(figs: &[Figure], out: &Path, opts: &ReportOptions, report: &mut Report) -> Result<()> {
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

// ---------------------------------------------------------------------------------------
// Drawing. Text is drawn only with `Text` elements and axis labels (no `caption`, no
// plotters legend): those are the paths that do not measure text, so the SVG backend,
// which writes text natively, works without any font.

type DrawResult<DB> = std::result::Result<(), DrawingAreaErrorKind<<DB as DrawingBackend>::ErrorType>>;

const FONT: &str = "sans-serif";

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
    let (plot, legend_top) = match &p.title {
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
    };

    let (x0, x1) = x_range(p);
    let (y0, y1) = y_range(p);
    let mut chart = ChartBuilder::on(&plot)
        .margin_top(PLOT_TOP)
        .margin_right(20)
        .margin_left(8)
        .margin_bottom(6)
        .x_label_area_size(50)
        .y_label_area_size(80)
        .build_cartesian_2d(x0..x1, y0..y1)?;

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
        .draw()?;

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
    draw_legend(&legend_area, &legend, legend_top)
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
    if lo > hi {
        (0.0, 1.0)
    } else if hi - lo < 1e-9 {
        (lo - 1.0, hi + 1.0)
    } else {
        let pad = (hi - lo) * 0.02;
        (lo - pad, hi + pad)
    }
}

fn y_range(p: &Panel) -> (f64, f64) {
    let ys = p
        .lines
        .iter()
        .flat_map(|l| l.pts.iter().filter_map(|q| q.1))
        .chain(p.refs.iter().map(|r| r.0))
        .chain(p.bands.iter().flat_map(|b| b.1.iter().flat_map(|q| [q.1, q.2])).filter(|y| y.is_finite()));
    let (lo, hi) = ys.fold((f64::MAX, f64::MIN), |(a, b), y| (a.min(y), b.max(y)));
    if lo > hi {
        (0.0, 1.0)
    } else if hi - lo < 1e-12 * lo.abs().max(1.0) {
        let pad = if lo == 0.0 { 1.0 } else { lo.abs() * 0.1 };
        (lo - pad, hi + pad)
    } else {
        let pad = (hi - lo) * 0.07;
        (lo - pad, hi + pad)
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

// ---------------------------------------------------------------------------------------
// Font for PNG text

static FONT_FOUND: OnceLock<std::result::Result<PathBuf, String>> = OnceLock::new();

/// Finds a TrueType font and registers it with plotters once per process.
fn ensure_font() -> std::result::Result<PathBuf, String> {
    FONT_FOUND.get_or_init(find_and_register_font).clone()
}

const COMMON_FONTS: [&str; 9] = [
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu-sans-fonts/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
    "/Library/Fonts/Arial.ttf",
    "/System/Library/Fonts/Supplemental/Arial.ttf",
    r"C:\Windows\Fonts\arial.ttf",
    r"C:\Windows\Fonts\segoeui.ttf",
];

fn find_and_register_font() -> std::result::Result<PathBuf, String> {
    let mut rejected: Vec<String> = Vec::new();
    if let Some(v) = std::env::var_os(FONT_ENV) {
        if v.eq_ignore_ascii_case("none") {
            return Err(format!("{FONT_ENV}=none turns PNG output off"));
        }
        let p = PathBuf::from(v);
        match register_font_file(&p) {
            Ok(()) => return Ok(p),
            Err(e) => rejected.push(format!("{FONT_ENV}={}: {e}", p.display())),
        }
    }
    let scanned = ["/usr/share/fonts", "/usr/local/share/fonts"].into_iter().filter_map(|d| first_ttf(Path::new(d)));
    for p in COMMON_FONTS.iter().map(PathBuf::from).filter(|p| p.is_file()).chain(scanned) {
        match register_font_file(&p) {
            Ok(()) => return Ok(p),
            Err(e) => rejected.push(format!("{}: {e}", p.display())),
        }
    }
    let mut msg = format!("no usable TrueType font found (set {FONT_ENV} to a .ttf file)");
    if !rejected.is_empty() {
        msg.push_str(&format!("; rejected: {}", rejected.join("; ")));
    }
    Err(msg)
}

fn register_font_file(path: &Path) -> std::result::Result<(), String> {
    let bytes = std::fs::read(path).map_err(|e| e.to_string())?;
    // plotters keeps fonts for the life of the process; this happens at most a few times.
    let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
    plotters::style::register_font(FONT, FontStyle::Normal, bytes)
        .map_err(|_| "not a TrueType/OpenType font plotters can read".to_string())
}

/// First `*.ttf` under `root` (sorted walk), preferring regular faces.
fn first_ttf(root: &Path) -> Option<PathBuf> {
    let mut stack = vec![(root.to_path_buf(), 0u32)];
    let mut found: Vec<PathBuf> = Vec::new();
    while let Some((dir, depth)) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&dir) else { continue };
        let mut entries: Vec<PathBuf> = rd.filter_map(|e| e.ok().map(|e| e.path())).collect();
        entries.sort();
        for p in entries.into_iter().rev() {
            if p.is_dir() {
                if depth < 8 {
                    stack.push((p, depth + 1));
                }
            } else if p.extension().is_some_and(|e| e.eq_ignore_ascii_case("ttf")) {
                found.push(p);
            }
        }
        if found.len() > 10_000 {
            break;
        }
    }
    found.sort();
    let plain = |p: &&PathBuf| {
        let n = p.file_name().map(|n| n.to_string_lossy().to_lowercase()).unwrap_or_default();
        !["bold", "italic", "oblique", "mono", "light", "thin", "condensed", "black"].iter().any(|s| n.contains(s))
    };
    found.iter().find(plain).or(found.first()).cloned()
}
