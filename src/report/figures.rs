//! Which charts are made from which runs: the per-run charts, the AIM charts, the
//! comparison of several runs and the seed bands of several settings.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::Value;

use super::chart::{depth_color, modality_color, Bar, Dash, Figure, LegendItem, Line, Panel, FUSED, PALETTE, TEST, TRAIN};
use super::log::{at, has_data, num, run_name, Pts, RunLog};
use super::{BarPanel, METRICS_FILE};
use crate::error::{Error, Result};
use crate::train::probe::ProbeRecord;

/// Keeps the figure if it has something to show, else records why it was left out.
fn keep(figs: &mut Vec<Figure>, warnings: &mut Vec<String>, mut fig: Figure) {
    fig.panels.retain(Panel::has_data);
    if fig.panels.is_empty() {
        warnings.push(format!("{}: nothing to plot (no values logged), chart skipped", fig.stem));
    } else {
        figs.push(fig);
    }
}

/// The charts of one run: loss, accuracy, imbalance, and AUG's and AIM's where the log has
/// their sections; a chart with nothing to show is left out with a warning.
pub(super) fn report_figures(log: &RunLog, warnings: &mut Vec<String>) -> Vec<Figure> {
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
    let depths = aim_depths(log);
    keep(figs, warnings, aim_depth_scores_figure(log, depths));

    let p = per_depth_panel(log, depths, "strength", "strength s_d");
    keep(
        figs,
        warnings,
        Figure { stem: "aim_strength".into(), title: log.title("AIM: modulation strength per depth"), panels: vec![p] },
    );

    let mut p = per_depth_panel(log, depths, "ratio", "r_d = S[dom][d] / S[weak][d]");
    p.refs.push((1.0, "1.0 = balanced".into()));
    keep(
        figs,
        warnings,
        Figure { stem: "aim_ratio".into(), title: log.title("AIM: imbalance ratio per depth"), panels: vec![p] },
    );

    keep(figs, warnings, aim_mask_density_figure(log));
}

/// Number of depths the AIM section describes: the most any record declares or fills, in
/// `depths`, a modality's scores, `ratio` or `strength` (capped at 256).
fn aim_depths(log: &RunLog) -> usize {
    let mods = &log.modalities;
    let arr_len = |v: Option<&Value>| v.and_then(Value::as_array).map_or(0, Vec::len);
    log.records
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
        .min(256)
}

/// Element `d` of the array at `path`, per epoch.
fn per_depth(log: &RunLog, path: &[&str], d: usize) -> Pts {
    log.series(|r| at(r, path).and_then(Value::as_array).and_then(|a| a.get(d)).and_then(num))
}

fn depth_name(d: usize) -> String {
    format!("depth {d}")
}

/// One line per depth of the array `aim.<key>` over epochs.
fn per_depth_panel(log: &RunLog, depths: usize, key: &str, y_desc: &str) -> Panel {
    let mut p = Panel::new("epoch", y_desc);
    for d in 0..depths {
        p.push(Line::new(depth_name(d), depth_color(d, depths), per_depth(log, &["aim", key], d)));
    }
    p
}

/// Scores per depth: the last epoch that has them, and their course over epochs.
fn aim_depth_scores_figure(log: &RunLog, depths: usize) -> Figure {
    Figure {
        stem: "aim_depth_scores".into(),
        title: log.title("AIM: per-depth scores"),
        panels: vec![last_scores_panel(log, depths), score_course_panel(log, depths)],
    }
}

/// Score against depth, one line per modality, at the last epoch that logged scores.
fn last_scores_panel(log: &RunLog, depths: usize) -> Panel {
    let mods = &log.modalities;
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
    final_panel
}

/// Score over epochs, one line per (modality, depth): colour = depth, dash = modality, so
/// the legend lists depths and modalities instead of every pair.
fn score_course_panel(log: &RunLog, depths: usize) -> Panel {
    let mods = &log.modalities;
    let mut course = Panel::new("epoch", "score S[m][d]").titled("Score per depth over epochs");
    let dashes = [Dash::Solid, Dash::Dashed, Dash::Dotted];
    for (i, m) in mods.iter().enumerate() {
        for d in 0..depths {
            course.push(
                Line::unlabelled(depth_color(d, depths), per_depth(log, &["aim", "scores", m], d))
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
    course
}

/// Mask density: spread over layers per epoch.
fn aim_mask_density_figure(log: &RunLog) -> Figure {
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
    Figure {
        stem: "aim_mask_density".into(),
        title: log.title(&format!("AIM: mask density ({layers} layers)")),
        panels: vec![p],
    }
}

/// Per-layer mask density of the last epoch that logged it, as a text table.
pub(super) fn mask_density_summary(log: &RunLog) -> Option<String> {
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

/// An epoch as written in titles: whole numbers without a decimal point.
fn fmt_num(x: f64) -> String {
    if x.fract() == 0.0 && x.abs() < 1e15 {
        format!("{}", x as i64)
    } else {
        format!("{x}")
    }
}

/// The comparison chart: each run's fused test accuracy, or its validation accuracy where
/// it has no test accuracy (with a warning); a run with neither is left out (warning).
/// `out` names the place in the error when no run has either.
pub(super) fn comparison_figure(runs: &[&Path], out: &Path, warnings: &mut Vec<String>) -> Result<Figure> {
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
            warnings.push(format!(
                "comparison: {} has no test accuracy; its validation accuracy is shown",
                log.path.display()
            ));
            panel.push(Line::new(format!("{label} [val]"), color, val).dash(dash));
        } else {
            warnings.push(format!(
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
    Ok(Figure {
        stem: "comparison_accuracy".into(),
        title: "Fused test accuracy: method comparison".into(),
        panels: vec![panel],
    })
}

/// Per setting (label, its runs' directories): the mean over seeds of the fused test
/// accuracy and of the imbalance ratio per epoch, each with a band of ± one standard
/// deviation; a chart no run has values for is left out (warning).
pub(super) fn seed_band_figures(groups: &[(String, Vec<PathBuf>)], warnings: &mut Vec<String>) -> Result<Vec<Figure>> {
    let logs = groups
        .iter()
        .map(|(_, dirs)| dirs.iter().map(|d| RunLog::load(&d.join(METRICS_FILE))).collect::<Result<Vec<_>>>())
        .collect::<Result<Vec<_>>>()?;
    let mut figs = Vec::new();
    for (stem, title, path) in [
        ("compare_accuracy", "Fused test accuracy: mean and ± 1 std over seeds", &["test", "acc"][..]),
        ("compare_imbalance", "Imbalance ratio of confidence scores: mean and ± 1 std over seeds", &["imbalance", "ratio"][..]),
    ] {
        let mut panel = Panel::new("epoch", if stem == "compare_accuracy" { "fused accuracy" } else { "max / min modality score" });
        for (i, ((label, dirs), logs)) in groups.iter().zip(&logs).enumerate() {
            let color = PALETTE[i % PALETTE.len()];
            let stats = mean_sd_per_epoch(logs, path);
            panel.bands.push((color, stats.iter().map(|&(x, m, sd)| (x, m - sd, m + sd)).collect()));
            panel.push(Line::new(format!("{label} ({} seeds)", dirs.len()), color, stats.iter().map(|&(x, m, _)| (x, Some(m))).collect()));
        }
        if panel.has_data() {
            figs.push(Figure { stem: stem.into(), title: title.into(), panels: vec![panel] });
        } else {
            warnings.push(format!("{stem}: no run logged {}", path.join(".")));
        }
    }
    Ok(figs)
}

/// Per epoch (rounded) that any of the runs logged `path` for: (epoch, mean, sample
/// standard deviation, 0 for a single run) of the finite values.
fn mean_sd_per_epoch(logs: &[RunLog], path: &[&str]) -> Vec<(f64, f64, f64)> {
    let mut by_epoch: BTreeMap<i64, Vec<f64>> = BTreeMap::new();
    for log in logs {
        for (x, y) in log.field(path) {
            if let Some(y) = y.filter(|y| y.is_finite()) {
                by_epoch.entry(x.round() as i64).or_default().push(y);
            }
        }
    }
    by_epoch
        .iter()
        .map(|(x, ys)| {
            let n = ys.len() as f64;
            let m = ys.iter().sum::<f64>() / n;
            let sd = if ys.len() > 1 { (ys.iter().map(|y| (y - m).powi(2)).sum::<f64>() / (n - 1.0)).sqrt() } else { 0.0 };
            (*x as f64, m, sd)
        })
        .collect()
}

/// Share of a category's width that its group of bars takes (the rest separates groups).
const BAR_GROUP: f64 = 0.8;

/// A bar panel: category `c` at x = c, series `s` its `s`-th bar there (colour: the
/// palette's `s`-th), with its error bar where given; one legend swatch per series. A
/// missing or non-finite value leaves its bar out.
pub(super) fn bar_panel(spec: &BarPanel) -> Panel {
    let mut p = Panel::new("", &spec.y_desc);
    p.title = spec.title.clone();
    p.categories = spec.categories.clone();
    p.refs = spec.refs.clone();
    let k = spec.series.len().max(1) as f64;
    let width = BAR_GROUP / k;
    for (s, (label, values)) in spec.series.iter().enumerate() {
        let color = PALETTE[s % PALETTE.len()];
        for (c, v) in values.iter().enumerate().take(spec.categories.len()) {
            if let Some((value, err)) = v.filter(|v| v.0.is_finite()) {
                let x = c as f64 - BAR_GROUP / 2.0 + (s as f64 + 0.5) * width;
                let err = err.filter(|e| e.is_finite());
                p.bars.push(Bar { x, width: 0.9 * width, value, err, color });
            }
        }
        // a wide solid stroke: the legend's swatch of a bar
        p.extra_legend.push(LegendItem { label: label.clone(), color, dash: Dash::Solid, width: 10, marker: false });
    }
    p
}

/// A run's unimodal metrics from its `probe.json`: per modality its linear-probe test
/// accuracy and its Shapley contribution (both in %), the fused test accuracy as a
/// reference line.
pub(super) fn probe_figure(rec: &ProbeRecord, title: String) -> Figure {
    let mods = rec.modality_order();
    let probe = mods.iter().map(|m| rec.probe.get(m).map(|s| (100.0 * s.acc, None))).collect();
    let shapley = mods.iter().map(|m| rec.shapley.get(m).map(|v| (100.0 * v, None))).collect();
    let refs = rec.accuracy.map(|a| (100.0 * a, format!("fused test acc {:.1}", 100.0 * a))).into_iter().collect();
    let spec = BarPanel {
        title: None,
        y_desc: "% (accuracy; contribution in points)".into(),
        categories: mods,
        series: vec![("linear probe: test acc".into(), probe), ("Shapley contribution".into(), shapley)],
        refs,
    };
    Figure { stem: super::PROBE_CHART.into(), title, panels: vec![bar_panel(&spec)] }
}
