//! The field's unimodal metrics charted: a run's `charts/probe.svg` from its `probe.json`,
//! `compare`'s probe table (Markdown, CSV, LaTeX) and its `compare_probe` bar chart, each
//! checked against figures computed here from the runs' `probe.json` files; sweeps without
//! `probe.json` get no probe table; a trained run with `train.probe = true` charts the
//! figures it wrote and logs them to TensorBoard, and its `metrics.jsonl` is the one the
//! same run writes without the probe; `eval --probe --out` writes and charts a checkpoint's;
//! a crowded chart labels the means alone and keeps the settings' names apart.
use equimodal::report::{render_report_with, ReportOptions};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("equimodal-probe-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn cli(args: &[&str]) -> std::process::Output {
    crate::common::equimodal_bin().args(args).output().unwrap()
}

/// The text of every `<text>` element of an SVG, trimmed.
fn svg_texts(svg: &str) -> Vec<String> {
    svg.split("<text").skip(1).filter_map(|t| Some(t.split_once('>')?.1.split("</text>").next()?.trim().to_string())).collect()
}

/// (x, height) of every filled `<rect>` of colour `fill` (`#RRGGBB`), in file order.
fn svg_rects_in_order(svg: &str, fill: &str) -> Vec<(f64, f64)> {
    let attr = |r: &str, k: &str| -> f64 { r.split(&format!(" {k}=\"")).nth(1).unwrap().split('"').next().unwrap().parse().unwrap() };
    svg.split("<rect").skip(1).filter(|r| r.contains(&format!("fill=\"{fill}\""))).map(|r| (attr(r, "x"), attr(r, "height"))).collect()
}

/// The same, left to right.
fn svg_rects(svg: &str, fill: &str) -> Vec<(f64, f64)> {
    let mut v = svg_rects_in_order(svg, fill);
    v.sort_by(|a, b| a.0.total_cmp(&b.0));
    v
}

/// The palette's first two colours: the first and second series of a bar panel.
const FIRST: &str = "#1F77B4";
const SECOND: &str = "#FF7F0E";

/// Bar heights in pixels are proportional to the values (rounded to whole pixels).
fn assert_proportional(heights: &[(f64, f64)], values: &[f64]) {
    assert_eq!(heights.len(), values.len(), "{heights:?} for {values:?}");
    let (h0, v0) = (heights[0].1, values[0]);
    for (h, v) in heights.iter().zip(values) {
        assert!((h.1 - h0 * v.abs() / v0.abs()).abs() <= 1.5, "bar {h:?} for {v}, the first {h0} for {v0}");
    }
}

fn one_run(dir: &Path, seed: u64, method: &str, probe: Option<&Value>) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("config.toml"), format!("seed = {seed}\n[method]\nname = \"{method}\"\n")).unwrap();
    let lines: Vec<String> = (0..2)
        .map(|e| json!({"epoch": e, "method": method, "test": {"acc": 0.6 + 0.01 * seed as f64, "macro_f1": 0.5, "per_modality": {"audio": {"acc": 0.4}}}, "imbalance": {"ratio": 1.5}}).to_string())
        .collect();
    std::fs::write(dir.join("metrics.jsonl"), lines.join("\n") + "\n").unwrap();
    if let Some(p) = probe {
        std::fs::write(dir.join("probe.json"), format!("{p}\n")).unwrap();
    }
}

/// A probe.json of two modalities with seeded, distinct figures.
fn probe_json(probe: (f64, f64), shapley: (f64, f64)) -> Value {
    json!({
        "modalities": ["visual", "audio"],
        "probe": {"audio": {"acc": probe.0, "macro_f1": 0.3}, "visual": {"acc": probe.1, "macro_f1": 0.4}},
        "shapley": {"audio": shapley.0, "visual": shapley.1},
        "accuracy": 0.5 + shapley.0 + shapley.1,
        "accuracy_without_inputs": 0.5
    })
}

#[test]
fn a_run_with_probe_json_gets_a_probe_chart_of_its_figures() {
    let dir = tmp("run-chart");
    let run = dir.join("run");
    let rec = probe_json((0.4125, 0.655), (-0.0333, 0.25));
    one_run(&run, 0, "joint", Some(&rec));
    let out = run.join("charts");
    let opts = ReportOptions { png: false, ..Default::default() };
    let r = render_report_with(&run, &out, &opts).unwrap();
    assert!(r.files.contains(&out.join("probe.svg")), "{:?}", r.files);
    let svg = std::fs::read_to_string(out.join("probe.svg")).unwrap();
    let texts = svg_texts(&svg);
    // the modalities in the file's order, each bar labelled with its value in %
    let at = |t: &str| texts.iter().position(|x| x == t).unwrap_or_else(|| panic!("no text {t:?} in {texts:?}"));
    assert!(at("visual") < at("audio"), "dataset order: {texts:?}");
    for (m, v) in [("audio", 0.4125), ("visual", 0.655)] {
        at(&format!("{:.1}", 100.0 * rec["probe"][m]["acc"].as_f64().unwrap()));
        assert_eq!(rec["probe"][m]["acc"].as_f64().unwrap(), v);
    }
    for m in ["audio", "visual"] {
        at(&format!("{:.1}", 100.0 * rec["shapley"][m].as_f64().unwrap()));
    }
    at(&format!("fused test acc {:.1}", 100.0 * rec["accuracy"].as_f64().unwrap()));
    // probe bars (first colour) visual then audio; Shapley bars (second) likewise
    assert_proportional(&svg_rects(&svg, FIRST), &[0.655, 0.4125]);
    assert_proportional(&svg_rects(&svg, SECOND), &[0.25, -0.0333]);
    // a file from before `modalities` and `accuracy` existed: name order, no reference line
    let old = json!({"probe": {"visual": {"acc": 0.7, "macro_f1": 0.1}, "audio": {"acc": 0.3, "macro_f1": 0.1}}, "shapley": {"audio": 0.1, "visual": 0.2}, "accuracy_without_inputs": 0.2});
    std::fs::write(run.join("probe.json"), old.to_string()).unwrap();
    render_report_with(&run, &out, &opts).unwrap();
    let svg = std::fs::read_to_string(out.join("probe.svg")).unwrap();
    let texts = svg_texts(&svg);
    let pos = |t: &str| texts.iter().position(|x| x == t).unwrap();
    assert!(pos("audio") < pos("visual") && !texts.iter().any(|t| t.starts_with("fused test acc")), "{texts:?}");
    assert_proportional(&svg_rects(&svg, FIRST), &[0.3, 0.7]);
    // a broken probe.json costs its chart, with a warning naming the file, not the others
    std::fs::remove_file(out.join("probe.svg")).unwrap();
    std::fs::write(run.join("probe.json"), r#"{"probe": {"audio": {"acc": "high"}}}"#).unwrap();
    let r = render_report_with(&run, &out, &opts).unwrap();
    assert!(!out.join("probe.svg").exists() && r.files.contains(&out.join("accuracy.svg")), "{:?}", r.files);
    assert!(r.warnings.iter().any(|w| w.contains("probe.json") && w.contains("probe.audio.acc")), "{:?}", r.warnings);
    // and a run without one has no probe chart and no warning about it
    std::fs::remove_file(run.join("probe.json")).unwrap();
    let r = render_report_with(&run, &out, &opts).unwrap();
    assert!(!out.join("probe.svg").exists() && !r.warnings.iter().any(|w| w.contains("probe")), "{r:?}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Mean and sample standard deviation.
fn mean_std(xs: &[f64]) -> (f64, f64) {
    let n = xs.len() as f64;
    let m = xs.iter().sum::<f64>() / n;
    (m, (xs.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (n - 1.0)).sqrt())
}

/// One CSV row of compare.csv: (n, mean, std) of a setting's metric.
fn csv_row(csv: &str, setting: &str, metric: &str) -> Option<(usize, f64, f64)> {
    let l = csv.lines().find(|l| l.starts_with(&format!("{setting},{metric},")))?;
    let f: Vec<&str> = l.split(',').collect();
    Some((f[2].parse().unwrap(), f[3].parse().unwrap(), f[4].parse().unwrap()))
}

#[test]
fn compare_tables_and_charts_the_probe_over_seeds() {
    let dir = tmp("compare");
    // three seeds of joint and of aug with distinct figures; one more aug seed without probe.json
    let figures = |method: &str, s: u64| {
        let k = s as f64 + if method == "aug" { 3.0 } else { 0.0 };
        ((0.3 + 0.07 * k * k % 0.4, 0.6 - 0.03 * k), (0.05 * k - 0.1, 0.2 + 0.013 * k * k))
    };
    for method in ["joint", "aug"] {
        for s in 0..3 {
            let (p, sh) = figures(method, s);
            one_run(&dir.join(format!("{method}{s}")), s, method, Some(&probe_json(p, sh)));
        }
    }
    one_run(&dir.join("aug3"), 3, "aug", None);
    let out = cli(&["compare", &dir.display().to_string()]);
    assert!(out.status.success(), "{out:?}");
    let md = std::fs::read_to_string(dir.join("compare.md")).unwrap();
    let csv = std::fs::read_to_string(dir.join("compare.csv")).unwrap();
    let tex = std::fs::read_to_string(dir.join("compare.tex")).unwrap();
    let svg = std::fs::read_to_string(dir.join("compare_probe.svg")).unwrap();
    let texts = svg_texts(&svg);
    assert!(md.contains("| setting | runs | probe.visual | probe.audio | shapley.visual | shapley.audio |"), "{md}");
    assert!(tex.contains("setting & runs & probe.visual & probe.audio & shapley.visual & shapley.audio"), "{tex}");
    let mut bars: Vec<(&str, &str, &str, f64)> = Vec::new();
    for method in ["joint", "aug"] {
        // the figures as the test reads them back from the runs' files
        let recs: Vec<Value> = (0..3).map(|s| serde_json::from_str(&std::fs::read_to_string(dir.join(format!("{method}{s}/probe.json"))).unwrap()).unwrap()).collect();
        let mut cells = Vec::new();
        for (kind, key) in [("probe", "probe"), ("shapley", "shapley")] {
            for m in ["visual", "audio"] {
                let xs: Vec<f64> = recs.iter().map(|r| if kind == "probe" { r[key][m]["acc"].as_f64().unwrap() } else { r[key][m].as_f64().unwrap() }).collect();
                let (mean, std) = mean_std(&xs);
                let (n, cm, cs) = csv_row(&csv, method, &format!("{kind}.{m}")).unwrap_or_else(|| panic!("no {method} {kind}.{m} row: {csv}"));
                assert_eq!(n, 3, "the aug run without probe.json is not counted");
                assert!((cm - mean).abs() < 1e-12 && (cs - std).abs() < 1e-12, "{method} {kind}.{m}: csv {cm} ± {cs}, computed {mean} ± {std}");
                cells.push(format!("{:.1} ± {:.1}", 100.0 * mean, 100.0 * std));
                let label = format!("{:.1} ± {:.1}", 100.0 * mean, 100.0 * std);
                assert!(texts.contains(&label), "chart lacks {label}: {texts:?}");
                bars.push((method, kind, m, 100.0 * mean));
            }
        }
        let row = md.lines().find(|l| l.starts_with(&format!("| {method} | 3 | {}", cells[0]))).unwrap_or_else(|| panic!("{md}"));
        for c in &cells {
            assert!(row.contains(c), "{row} lacks {c}");
        }
        let tex_row = tex.lines().find(|l| l.starts_with(&format!("{method} & 3 & ${}", cells[0].replace(" ± ", " \\pm ")))).unwrap_or_else(|| panic!("{tex}"));
        assert_eq!(tex_row.matches("\\pm").count(), 4, "{tex_row}");
    }
    // the main table still counts every seed, and the probe rows say what they are of
    assert!(md.contains("| aug | 4 |"), "{md}");
    assert!(csv.lines().filter(|l| l.contains(",probe.") || l.contains(",shapley.")).all(|l| l.ends_with("final model (probe.json)")), "{csv}");
    // bars of the first colour (visual, the file's first modality): the probe panel's, then
    // the Shapley panel's, each with the settings in the table's order (aug first: the runs
    // are read sorted); heights proportional to the means
    let expect = |kind: &str| -> Vec<f64> { ["aug", "joint"].iter().map(|s| bars.iter().find(|b| b.0 == *s && b.1 == kind && b.2 == "visual").unwrap().3).collect() };
    let in_file: Vec<(f64, f64)> = svg_rects_in_order(&svg, FIRST);
    assert_eq!(in_file.len(), 4, "{in_file:?}");
    assert_proportional(&in_file[..2], &expect("probe"));
    assert_proportional(&in_file[2..], &expect("shapley"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_sweep_without_probe_json_has_no_probe_table_or_chart() {
    let dir = tmp("no-probe");
    for s in 0..2 {
        one_run(&dir.join(format!("joint{s}")), s, "joint", None);
    }
    let out = cli(&["compare", &dir.display().to_string()]);
    assert!(out.status.success(), "{out:?}");
    let md = std::fs::read_to_string(dir.join("compare.md")).unwrap();
    let csv = std::fs::read_to_string(dir.join("compare.csv")).unwrap();
    let tex = std::fs::read_to_string(dir.join("compare.tex")).unwrap();
    assert!(!md.contains("probe") && !md.contains("Unimodal") && md.matches("| setting |").count() == 1, "{md}");
    assert!(!csv.contains("probe") && !csv.contains("shapley") && csv.lines().count() == 1 + 4, "{csv}");
    assert_eq!(tex.matches("\\begin{tabular}").count(), 1, "{tex}");
    assert!(!dir.join("compare_probe.svg").exists() && dir.join("compare_accuracy.svg").exists());
    // a malformed probe.json is an error naming the file and the field
    std::fs::write(dir.join("joint1/probe.json"), r#"{"probe": {}, "shapley": {"audio": "x"}, "accuracy_without_inputs": 0}"#).unwrap();
    let out = cli(&["compare", &dir.display().to_string()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("joint1/probe.json") && err.contains("shapley.audio"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// `metrics.jsonl` without the figures that measure the process rather than the
/// computation: wall clock, and memory high-water marks (the first run of a process tunes
/// its kernels, allocating operands the later runs do not).
fn without_timings(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| {
            let mut v: Value = serde_json::from_str(l).unwrap();
            let t = v["train"].as_object_mut().unwrap();
            t.remove("seconds");
            t.remove("data_wait_share");
            v.as_object_mut().unwrap().remove("memory");
            v
        })
        .collect()
}

#[test]
fn training_with_the_probe_charts_and_logs_it_and_leaves_the_metrics_alone() {
    let dir = tmp("train");
    let train = |name: &str, probe: bool| {
        let run = dir.join(name);
        let probe = format!("train.probe={probe}");
        let args = ["train", "--quiet", "--out", &run.display().to_string(), "--set", "train.epochs=2", "--set", "data.n_train=96", "--set", "data.n_test=64", "--set", "model.hidden=[16]", "--set", "train.workers=1", "--set", &probe];
        let out = cli(&args);
        assert!(out.status.success(), "{out:?}");
        run
    };
    let (plain, probed) = (train("plain", false), train("probed", true));
    // the probe runs after training: the log is the one of the same run without it
    assert_eq!(without_timings(&plain.join("metrics.jsonl")), without_timings(&probed.join("metrics.jsonl")));
    assert!(!plain.join("probe.json").exists() && !plain.join("charts/probe.svg").exists());
    let rec: Value = serde_json::from_str(&std::fs::read_to_string(probed.join("probe.json")).unwrap()).unwrap();
    let last: Value = serde_json::from_str(std::fs::read_to_string(probed.join("metrics.jsonl")).unwrap().lines().last().unwrap()).unwrap();
    assert_eq!(rec["modalities"], json!(["audio", "visual"]), "{rec}");
    assert_eq!(rec["accuracy"].as_f64(), last["test"]["acc"].as_f64(), "v(all) is the fused test accuracy");
    // the chart shows the file's figures
    let texts = svg_texts(&std::fs::read_to_string(probed.join("charts/probe.svg")).unwrap());
    for m in ["audio", "visual"] {
        for v in [rec["probe"][m]["acc"].as_f64().unwrap(), rec["shapley"][m].as_f64().unwrap()] {
            let label = format!("{:.1}", 100.0 * v);
            assert!(texts.contains(&label), "{label} not in {texts:?}");
        }
    }
    // and TensorBoard has them at the last epoch's step, after the epochs' scalars
    let events = equimodal::train::logs::read_tensorboard(&probed.join(equimodal::train::logs::TB_FILE)).unwrap();
    for m in ["audio", "visual"] {
        for (tag, v) in [(format!("probe/{m}/acc"), rec["probe"][m]["acc"].as_f64().unwrap()), (format!("shapley/{m}"), rec["shapley"][m].as_f64().unwrap())] {
            let e = events.iter().find(|e| e.1 == tag).unwrap_or_else(|| panic!("no {tag}"));
            assert_eq!((e.0, e.2), (2, v as f32), "{tag}");
        }
    }
    let plain_events = equimodal::train::logs::read_tensorboard(&plain.join(equimodal::train::logs::TB_FILE)).unwrap();
    assert!(!plain_events.iter().any(|e| e.1.starts_with("probe/") || e.1.starts_with("shapley/")));
    // metrics.csv keeps one row per epoch
    assert_eq!(std::fs::read_to_string(probed.join("metrics.csv")).unwrap().lines().count(), 3);
    // eval --probe --out: the checkpoint's figures as probe.json and their chart
    let ev = dir.join("eval");
    let out = cli(&["eval", "--checkpoint", &plain.display().to_string(), "--probe", "--out", &ev.display().to_string()]);
    assert!(out.status.success(), "{out:?}");
    let rec: Value = serde_json::from_str(&std::fs::read_to_string(ev.join("probe.json")).unwrap()).unwrap();
    let printed = String::from_utf8_lossy(&out.stdout);
    let texts = svg_texts(&std::fs::read_to_string(ev.join("charts/probe.svg")).unwrap());
    for m in ["audio", "visual"] {
        let (acc, phi) = (rec["probe"][m]["acc"].as_f64().unwrap(), rec["shapley"][m].as_f64().unwrap());
        assert!(printed.contains(&format!("acc {:>6.2}%", 100.0 * acc)) && printed.contains(&format!("{:>+7.2} points", 100.0 * phi)), "{printed} vs {rec}");
        for v in [acc, phi] {
            assert!(texts.contains(&format!("{:.1}", 100.0 * v)), "{v} not in {texts:?}");
        }
    }
    assert!(!cli(&["eval", "--checkpoint", &plain.display().to_string(), "--out", &ev.display().to_string()]).status.success(), "--out needs --probe");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn crowded_bar_charts_label_the_means_alone() {
    // eight settings (joint at eight learning rates), two seeds each: sixteen bars a panel,
    // too narrow for "mean ± std" but not for the mean
    let dir = tmp("crowded");
    let lrs = [0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2];
    for (i, lr) in lrs.iter().enumerate() {
        for s in 0..2u64 {
            let run = dir.join(format!("lr{i}-s{s}"));
            let k = (i * 2 + s as usize) as f64;
            one_run(&run, s, "joint", Some(&probe_json((0.3 + 0.01 * k, 0.6 - 0.005 * k), (0.1 + 0.002 * k, 0.2))));
            std::fs::write(run.join("config.toml"), format!("seed = {s}\n[method]\nname = \"joint\"\n[train]\nlr = {lr}\n")).unwrap();
        }
    }
    let out = cli(&["compare", &dir.display().to_string()]);
    assert!(out.status.success(), "{out:?}");
    let texts = svg_texts(&std::fs::read_to_string(dir.join("compare_probe.svg")).unwrap());
    // no "mean ± std" label (the title's "± 1 std" is not one)
    assert!(!texts.iter().any(|t| t.split(" ± ").count() == 2 && t.split(" ± ").all(|x| x.parse::<f64>().is_ok())), "{texts:?}");
    // the names, too long for their share of the width, keep what tells them apart
    // (the setting `joint train.lr=0.001` cut at its start)
    for lr in lrs {
        let full = format!("train.lr={lr}");
        let shown = texts.iter().filter(|t| t.strip_prefix('…').is_some_and(|tail| full.ends_with(tail) && tail.ends_with(&lr.to_string()))).count();
        assert_eq!(shown, 2, "{full} once a panel: {texts:?}");
    }
    // the mean of each setting's audio probe: seeds k = 2i and 2i + 1
    for i in 0..lrs.len() {
        let k = (2 * i) as f64 + 0.5;
        let label = format!("{:.1}", 100.0 * (0.3 + 0.01 * k));
        assert!(texts.contains(&label), "{label} not in {texts:?}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
