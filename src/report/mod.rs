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
//! - `probe` when the run has a `probe.json` (`train.probe = true`): per modality, bars of
//!   its linear-probe test accuracy and its Shapley contribution to the fused test accuracy
//!   (in %), the fused test accuracy as a reference line; each bar is labelled with its
//!   value.
//!
//! `compare` adds `compare_accuracy` and `compare_imbalance` (seed bands) and, when its runs
//! have `probe.json`, `compare_probe`: per setting, bars per modality of the probe accuracy
//! and of the Shapley contribution, mean with ± one standard deviation over seeds.
//!
//! PNG text needs a TrueType font: `EQUIMODAL_FONT` (a `.ttf` path, or `none` to turn PNG
//! output off), then common system locations. Without one only the SVGs are written and
//! a warning is recorded in `charts/warnings.txt` (listed among the returned files).
//!
//! # Code
//! `log` reads a metric log into series; `figures` decides which charts are made from which
//! runs, out of the primitives in `chart` (figures, panels, lines, colours); `draw` puts
//! them on a canvas and writes the PNG and SVG files; `font` finds the font for PNG text.

mod chart;
mod draw;
mod figures;
mod font;
mod log;

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::train::probe::{ProbeRecord, PROBE_FILE};
use draw::write_figures;
use figures::{bar_panel, comparison_figure, mask_density_summary, probe_figure, report_figures, seed_band_figures};
use log::RunLog;

/// Name of the metric log inside a run directory.
pub const METRICS_FILE: &str = "metrics.jsonl";
/// Sub-directory of a run directory that receives the charts (the run folder's layout is
/// the trainer's).
pub use crate::train::rundir::CHARTS_DIR;
/// Written next to the charts when something was skipped.
pub const WARNINGS_FILE: &str = "warnings.txt";
/// Environment variable naming the TrueType font used for PNG text (`none`: no PNGs).
pub const FONT_ENV: &str = "EQUIMODAL_FONT";
/// Default chart size in pixels.
pub const DEFAULT_SIZE: (u32, u32) = (1000, 600);
/// File stem of a run's probe chart (`charts/probe.{png,svg}`).
pub const PROBE_CHART: &str = "probe";
/// File stem of `compare`'s grouped bar chart of the probe (`compare_probe.{png,svg}`).
pub const COMPARE_PROBE_CHART: &str = "compare_probe";

/// One bar of a [`BarPanel`] series: its height and the half-width of its error bar (None:
/// no error bar); None for the whole value: no bar there.
pub type BarValue = Option<(f64, Option<f64>)>;

/// One panel of a grouped bar chart: per category on the x axis, one bar per series, each
/// labelled with its value (one decimal, and `± err` where it has an error bar).
#[derive(Debug, Clone, Default)]
pub struct BarPanel {
    /// Title above the panel.
    pub title: Option<String>,
    /// The y axis' description (units).
    pub y_desc: String,
    /// The x axis' categories, left to right.
    pub categories: Vec<String>,
    /// Legend label and, per category, its bar.
    pub series: Vec<(String, Vec<BarValue>)>,
    /// Horizontal reference lines: value and legend label.
    pub refs: Vec<(f64, String)>,
}

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
    /// Files written, in order.
    pub files: Vec<PathBuf>,
    /// What was skipped or substituted and why, one line each (a chart with no data, a run
    /// without test accuracy, PNG output unavailable).
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
    let mut figures = report_figures(&log, &mut report.warnings);
    create_dir(out_dir)?;
    let probe_path = run_dir.join(PROBE_FILE);
    if probe_path.is_file() {
        // a broken probe.json costs its chart, not the run's other charts
        match ProbeRecord::read(&probe_path) {
            Ok(rec) => figures.push(probe_figure(&rec, log.title("Unimodal metrics (test)"))),
            Err(e) => report.warnings.push(format!("{PROBE_CHART}: chart skipped: {e}")),
        }
    }
    write_figures(&figures, out_dir, opts, &mut report)?;
    if let Some(text) = mask_density_summary(&log) {
        let path = out_dir.join("aim_mask_density.txt");
        std::fs::write(&path, text).map_err(|e| Error::io(&path, e))?;
        report.files.push(path);
    }
    Ok(report)
}

/// A probe record charted alone as `out/probe.{png,svg}` under `title` (`equimodal eval
/// --probe --out`: a checkpoint's probe has no metric log beside it); warnings are returned.
pub fn render_probe_with(rec: &ProbeRecord, title: &str, out: &Path, opts: &ReportOptions) -> Result<Report> {
    let mut report = Report::default();
    create_dir(out)?;
    write_figures(&[probe_figure(rec, title.to_string())], out, opts, &mut report)?;
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
    let fig = comparison_figure(runs, out, &mut report.warnings)?;
    create_dir(out)?;
    write_figures(&[fig], out, opts, &mut report)?;
    Ok(report)
}

/// Per setting (label, its runs' directories): the mean over seeds of the fused test
/// accuracy and of the imbalance ratio per epoch, with a band of ± one standard deviation,
/// in `out/compare_accuracy.{png,svg}` and `out/compare_imbalance.{png,svg}`.
pub fn render_seed_bands(groups: &[(String, Vec<PathBuf>)], out: &Path) -> Result<Vec<PathBuf>> {
    render_compare(groups, &[], out)
}

/// `compare`'s charts: the seed bands of [`render_seed_bands`] and, when `probe` has
/// panels, the grouped bar chart `out/compare_probe.{png,svg}` (panels stacked top to
/// bottom). One warnings file for all of them.
pub fn render_compare(groups: &[(String, Vec<PathBuf>)], probe: &[BarPanel], out: &Path) -> Result<Vec<PathBuf>> {
    let mut report = Report::default();
    let mut figs = seed_band_figures(groups, &mut report.warnings)?;
    if !probe.is_empty() {
        figs.push(chart::Figure {
            stem: COMPARE_PROBE_CHART.into(),
            title: "Unimodal metrics of the final models: mean and ± 1 std over seeds".into(),
            panels: probe.iter().map(bar_panel).collect(),
        });
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
            eprintln!("warning: report: {w}");
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
