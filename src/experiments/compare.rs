//! `compare`: runs grouped into settings (same configuration but for the seed), one figure per
//! run chosen by a stated selection rule, mean ± std and a 95 % interval over seeds, and
//! paired differences between settings over their shared seeds. Markdown, CSV and LaTeX.
//! Runs trained with `train.probe = true` add a second table: each modality's linear-probe
//! accuracy and Shapley contribution (from `probe.json`, of the final model), mean ± std
//! over seeds, and a grouped bar chart of them.
use super::stats::{paired, summarize, Paired, Summary};
use super::sweep::Selection;
use crate::error::{Error, Result};
use crate::report::BarPanel;
use crate::train::probe::{ProbeRecord, PROBE_FILE};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// One run as `compare` sees it.
#[derive(Clone, Debug)]
pub struct RunRecord {
    /// The run's folder.
    pub dir: PathBuf,
    /// The run's seed (from its configuration).
    pub seed: i64,
    /// the run's configuration as written, without its seed and loader threads
    pub table: toml::Table,
    /// the effective configuration (defaults filled in) without them: runs with equal
    /// settings are seeds of one setting, whether or not they spell out a default
    pub setting: String,
    /// The method's name.
    pub method: String,
    /// The lines of `metrics.jsonl`, one per epoch.
    pub lines: Vec<Value>,
    /// The run's `probe.json`, when it has one (`train.probe = true`).
    pub probe: Option<ProbeRecord>,
}

/// The figures of one run under a selection rule.
#[derive(Clone, Debug, Default)]
pub struct Picked {
    /// Fused test accuracy.
    pub fused: f64,
    /// Test macro-F1.
    pub macro_f1: f64,
    /// Test accuracy of each modality's unimodal view, by modality name.
    pub per_modality: BTreeMap<String, f64>,
    /// The imbalance ratio logged for the chosen epochs.
    pub imbalance: f64,
    /// Linear-probe test accuracy by modality, from `probe.json` (the final model, whatever
    /// the selection rule); empty without one.
    pub probe: BTreeMap<String, f64>,
    /// Shapley contribution to the fused test accuracy by modality, from `probe.json`.
    pub shapley: BTreeMap<String, f64>,
}

/// A setting: its label, its runs' seeds and picked figures.
#[derive(Clone, Debug)]
pub struct Group {
    /// Its method and, where several settings share the method, the configuration values in
    /// which they differ.
    pub label: String,
    /// (unit, figures) of each run: the unit is the seed, or with a pairing key
    /// ([`compare_by`]) the index of the run's (key value, seed) among all runs'.
    pub runs: Vec<(i64, Picked)>,
    /// The runs' folders (in the order they were read; `runs` is sorted by seed).
    pub dirs: Vec<PathBuf>,
}

/// Everything `compare` reports: the selection rule, the settings with their runs' figures, and the
/// modalities seen in any run.
pub struct Comparison {
    /// How each run's figures were picked.
    pub select: Selection,
    /// One group per setting.
    pub groups: Vec<Group>,
    /// Every modality name with a per-modality accuracy in some run (the table's columns).
    pub modalities: Vec<String>,
    /// Every modality named in some run's `probe.json`, in the order the files give them
    /// (the probe table's columns); empty when no run has one, and then there is no table.
    pub probe_modalities: Vec<String>,
    /// The configuration path runs are paired by besides the seed ([`compare_by`]), if any.
    pub pair_by: Option<String>,
}

/// A run directory: `config.toml` and a complete `metrics.jsonl` (every line valid JSON).
pub fn read_run(dir: &Path) -> Result<RunRecord> {
    let cfg_path = dir.join("config.toml");
    let text = std::fs::read_to_string(&cfg_path).map_err(|e| Error::io(&cfg_path, e))?;
    let table: toml::Table = text.parse().map_err(|e| Error::data(cfg_path.display().to_string(), format!("invalid TOML: {e}")))?;
    let mut table: toml::Table = table;
    let seed = crate::config::from_table(&table).map_err(|e| Error::data(cfg_path.display().to_string(), e.to_string()))?.seed;
    table.remove("seed");
    // how many loader threads ran the run does not change what it computes
    if let Some(toml::Value::Table(t)) = table.get_mut("train") {
        t.remove("workers");
    }
    let cfg = crate::config::from_table(&table).map_err(|e| Error::data(cfg_path.display().to_string(), e.to_string()))?;
    let setting = format!("{cfg:?}");
    let log = dir.join("metrics.jsonl");
    let text = std::fs::read_to_string(&log).map_err(|e| Error::io(&log, e))?;
    let lines = text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            let v: Value = serde_json::from_str(l).map_err(|e| Error::data(log.display().to_string(), format!("line {}: {e}", i + 1)))?;
            check_shares(&v).map_err(|what| Error::data(log.display().to_string(), format!("line {}: {what} is not a share in [0, 1]", i + 1)))?;
            Ok(v)
        })
        .collect::<Result<Vec<Value>>>()?;
    if lines.is_empty() {
        return Err(Error::data(log.display().to_string(), "no epochs logged"));
    }
    let probe_path = dir.join(PROBE_FILE);
    let probe = if probe_path.is_file() { Some(ProbeRecord::read(&probe_path)?) } else { None };
    Ok(RunRecord { dir: dir.to_path_buf(), seed: seed as i64, table, setting, method: cfg.method.name.as_str().to_string(), lines, probe })
}

/// The run directories under the arguments: each argument is a run (it has `metrics.jsonl`)
/// or a folder of runs (a sweep's output); sorted, duplicates removed.
pub fn find_runs(args: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let mut dirs = Vec::new();
    for a in args {
        if a.join("metrics.jsonl").is_file() {
            dirs.push(a.clone());
            continue;
        }
        let rd = std::fs::read_dir(a).map_err(|e| Error::io(a, e))?;
        let mut found = 0;
        for e in rd {
            let p = e.map_err(|e| Error::io(a, e))?.path();
            if p.join("metrics.jsonl").is_file() {
                dirs.push(p);
                found += 1;
            }
        }
        if found == 0 {
            return Err(Error::data(a.display().to_string(), "neither a run directory (metrics.jsonl) nor a folder of runs"));
        }
    }
    dirs.sort();
    dirs.dedup();
    Ok(dirs)
}

/// Accuracies and macro-F1 of a log line (test and validation, fused and per modality) lie
/// in [0, 1]; `Err` names the first that does not (a damaged or hand-edited log).
fn check_shares(line: &Value) -> std::result::Result<(), String> {
    for split in ["test", "val"] {
        let Some(s) = line.get(split) else { continue };
        let per = s.get("per_modality").and_then(|p| p.as_object()).into_iter().flatten().map(|(m, v)| (format!("{split}.per_modality.{m}."), v));
        for (prefix, t) in std::iter::once((format!("{split}."), s)).chain(per) {
            for k in ["acc", "macro_f1"] {
                if let Some(x) = t.get(k).and_then(|x| x.as_f64()) {
                    if !(0.0..=1.0).contains(&x) {
                        return Err(format!("{prefix}{k} = {x}"));
                    }
                }
            }
        }
    }
    Ok(())
}

fn num(v: &Value, path: &[&str]) -> Option<f64> {
    let mut cur = v;
    for p in path {
        cur = cur.get(*p)?;
    }
    cur.as_f64()
}

/// The figures of `run` under `select`.
pub fn pick(run: &RunRecord, select: Selection) -> Result<Picked> {
    let evaluated: Vec<&Value> = run.lines.iter().filter(|l| num(l, &["test", "acc"]).is_some()).collect();
    if evaluated.is_empty() {
        return Err(Error::data(run.dir.display().to_string(), "no epoch with test metrics"));
    }
    let chosen: Vec<&Value> = match select {
        Selection::Last => vec![*evaluated.last().unwrap_or(&evaluated[0])],
        Selection::LastK(k) if evaluated.len() < k => {
            let n = evaluated.len();
            return Err(Error::data(run.dir.display().to_string(), format!("last_k with k = {k}, but the run has {n} evaluated epochs (choose k <= {n})")));
        }
        Selection::LastK(k) => evaluated[evaluated.len() - k..].to_vec(),
        Selection::BestVal => {
            // the first epoch of the highest validation accuracy, among those that have one
            // (an epoch whose accuracy was NaN logs null)
            let mut best: Option<(&Value, f64)> = None;
            for l in &evaluated {
                let Some(v) = num(l, &["val", "acc"]) else { continue };
                if best.is_none_or(|(_, b)| v > b) {
                    best = Some((l, v));
                }
            }
            let best = best.ok_or_else(|| Error::data(run.dir.display().to_string(), "best_val selection, but no evaluated epoch of the run has a validation accuracy"))?;
            vec![best.0]
        }
    };
    // the mean over every chosen epoch, NaN where one lacks the figure (a mean over some of
    // them would be another statistic than the one the report names)
    let mean = |f: &dyn Fn(&Value) -> Option<f64>| {
        let xs: Option<Vec<f64>> = chosen.iter().map(|l| f(l)).collect();
        xs.map_or(f64::NAN, |xs| xs.iter().sum::<f64>() / xs.len() as f64)
    };
    let mut per = BTreeMap::new();
    for l in &chosen {
        for m in l.get("test").and_then(|t| t.get("per_modality")).and_then(|p| p.as_object()).into_iter().flat_map(|pm| pm.keys()) {
            if !per.contains_key(m) {
                per.insert(m.clone(), mean(&|l| num(l, &["test", "per_modality", m, "acc"])));
            }
        }
    }
    Ok(Picked {
        fused: mean(&|l| num(l, &["test", "acc"])),
        macro_f1: mean(&|l| num(l, &["test", "macro_f1"])),
        per_modality: per,
        imbalance: mean(&|l| num(l, &["imbalance", "ratio"])),
        probe: run.probe.iter().flat_map(|r| r.probe.iter().map(|(m, s)| (m.clone(), s.acc))).collect(),
        shapley: run.probe.iter().flat_map(|r| r.shapley.clone()).collect(),
    })
}

/// Group runs by setting and pick each run's figures. `select` None: best_val when every run
/// has a validation accuracy, else last.
pub fn compare(runs: &[RunRecord], select: Option<Selection>) -> Result<Comparison> {
    compare_by(runs, select, None)
}

/// [`compare`], with runs paired over `pair_by` (a configuration path such as
/// `data.test_speakers`) as well as the seed: runs that differ only in its value are one
/// setting, and two settings are compared on the (value, seed) units they share. This is
/// cross-validation: each held-out speaker (fold) is a unit, as a seed is.
pub fn compare_by(runs: &[RunRecord], select: Option<Selection>, pair_by: Option<&str>) -> Result<Comparison> {
    if runs.is_empty() {
        return Err(Error::config("runs", "nothing to compare"));
    }
    let select = select.unwrap_or_else(|| {
        let all_val = runs.iter().all(|r| r.lines.iter().any(|l| num(l, &["val", "acc"]).is_some()));
        if all_val { Selection::BestVal } else { Selection::Last }
    });
    let keyed = units(runs, pair_by)?;
    let mut by_setting: Vec<(&str, Vec<(i64, &RunRecord)>)> = Vec::new();
    for (r, (setting, unit)) in runs.iter().zip(&keyed) {
        match by_setting.iter_mut().find(|(s, _)| *s == setting.as_str()) {
            Some((_, v)) => v.push((*unit, r)),
            None => by_setting.push((setting, vec![(*unit, r)])),
        }
    }
    let labels = labels(&by_setting.iter().map(|(_, v)| v[0].1).collect::<Vec<_>>(), pair_by);
    let mut groups = Vec::new();
    for ((_, rs), label) in by_setting.iter().zip(labels) {
        let mut seen = std::collections::BTreeSet::new();
        let mut g = Group { label, runs: Vec::new(), dirs: Vec::new() };
        for (unit, r) in rs {
            if !seen.insert(*unit) {
                let what = pair_by.map_or(String::new(), |k| format!(" and `{k}`"));
                return Err(Error::data(r.dir.display().to_string(), format!("a second run of setting `{}` with seed {}{what}", g.label, r.seed)));
            }
            g.runs.push((*unit, pick(r, select)?));
            g.dirs.push(r.dir.clone());
        }
        g.runs.sort_by_key(|r| r.0);
        groups.push(g);
    }
    let modalities: Vec<String> = groups
        .iter()
        .flat_map(|g| g.runs.iter().flat_map(|r| r.1.per_modality.keys().cloned()))
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    let mut probe_modalities: Vec<String> = Vec::new();
    for m in runs.iter().filter_map(|r| r.probe.as_ref()).flat_map(|p| p.modality_order()) {
        if !probe_modalities.contains(&m) {
            probe_modalities.push(m);
        }
    }
    Ok(Comparison { select, groups, modalities, probe_modalities, pair_by: pair_by.map(str::to_string) })
}

impl Comparison {
    /// The title of the run-count columns: `seeds`, or `runs` when runs are paired by a key
    /// as well.
    pub fn count_title(&self) -> &'static str {
        if self.pair_by.is_none() { "seeds" } else { "runs" }
    }
    /// What a setting's runs are replicates over (Markdown): `seeds`, or `` `KEY` × seeds ``.
    pub fn unit(&self) -> String {
        self.pair_by.as_ref().map_or("seeds".to_string(), |k| format!("`{k}` × seeds"))
    }
}

/// Each run's setting and pairing unit: its setting string and seed, or with `pair_by` the
/// setting without that value and the index of its (value, seed) among all runs'. A run
/// whose configuration does not spell the key out is an error naming the run and the key.
fn units(runs: &[RunRecord], pair_by: Option<&str>) -> Result<Vec<(String, i64)>> {
    let Some(key) = pair_by else {
        return Ok(runs.iter().map(|r| (r.setting.clone(), r.seed)).collect());
    };
    if key == "seed" {
        return Err(Error::config("--pair-by", "runs are always paired by their seed; --pair-by names a second key to pair by as well (a cross-validation fold such as data.test_speakers)"));
    }
    let mut keyed = Vec::new();
    for r in runs {
        let mut table = r.table.clone();
        let value = take_path(&mut table, key)
            .ok_or_else(|| Error::data(r.dir.join("config.toml").display().to_string(), format!("no `{key}` to pair the runs by")))?;
        let cfg = crate::config::from_table(&table).map_err(|e| Error::data(r.dir.display().to_string(), e.to_string()))?;
        keyed.push((format!("{cfg:?}"), (value.to_string(), r.seed)));
    }
    let ids: BTreeMap<(String, i64), i64> =
        keyed.iter().map(|(_, u)| u.clone()).collect::<std::collections::BTreeSet<_>>().into_iter().zip(0..).collect();
    Ok(keyed.into_iter().map(|(s, u)| (s, ids[&u])).collect())
}

/// Remove the value at a dotted path (`data.test_speakers`) from a configuration table.
fn take_path(table: &mut toml::Table, path: &str) -> Option<toml::Value> {
    match path.split_once('.') {
        None => table.remove(path),
        Some((head, rest)) => match table.get_mut(head) {
            Some(toml::Value::Table(t)) => take_path(t, rest),
            _ => None,
        },
    }
}

/// A label per setting (given by one of its runs): its method, and where several settings
/// share a method, the configuration values in which they differ (a value spelled out on
/// one side and left to its default on the other is no difference).
fn labels(settings: &[&RunRecord], pair_by: Option<&str>) -> Vec<String> {
    let flat = |r: &RunRecord| {
        let mut v = Vec::new();
        crate::config::flatten("", &toml::Value::Table(r.table.clone()), &mut v);
        v.into_iter().collect::<BTreeMap<String, String>>()
    };
    let flats: Vec<BTreeMap<String, String>> = settings.iter().map(|r| flat(r)).collect();
    settings
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let same: Vec<usize> = (0..settings.len()).filter(|&j| settings[j].method == r.method).collect();
            let keys: std::collections::BTreeSet<&String> = same.iter().flat_map(|&j| flats[j].keys()).collect();
            let mut parts = vec![r.method.clone()];
            for k in keys.into_iter().filter(|k| Some(k.as_str()) != pair_by) {
                let differs = same.iter().any(|&j| match (flats[i].get(k), flats[j].get(k)) {
                    (Some(a), Some(b)) => a != b,
                    (None, Some(b)) => !crate::config::sets_default(&settings[i].table, k, b),
                    (Some(a), None) => !crate::config::sets_default(&settings[j].table, k, a),
                    (None, None) => false,
                });
                if differs {
                    parts.push(format!("{k}={}", flats[i].get(k).map(|v| v.trim_matches('"').to_string()).unwrap_or_else(|| "(default)".into())));
                }
            }
            parts.join(" ")
        })
        .collect()
}

impl Group {
    /// (seed, value) of `f` for each run, without runs whose value is not finite.
    pub fn metric(&self, f: impl Fn(&Picked) -> f64) -> Vec<(i64, f64)> {
        self.runs.iter().map(|(s, p)| (*s, f(p))).filter(|(_, v)| v.is_finite()).collect()
    }
    /// Mean, std and 95 % interval of `f` over the runs (non-finite values left out).
    pub fn summary(&self, f: impl Fn(&Picked) -> f64) -> Summary {
        summarize(&self.metric(f).into_iter().map(|x| x.1).collect::<Vec<_>>())
    }
}

/// The paired comparison of group a against b on fused accuracy over their shared seeds.
pub fn pair(a: &Group, b: &Group) -> Paired {
    let (ma, mb): (BTreeMap<i64, f64>, BTreeMap<i64, f64>) = (a.metric(|p| p.fused).into_iter().collect(), b.metric(|p| p.fused).into_iter().collect());
    let shared: Vec<i64> = ma.keys().filter(|s| mb.contains_key(s)).copied().collect();
    paired(&shared.iter().map(|s| ma[s]).collect::<Vec<_>>(), &shared.iter().map(|s| mb[s]).collect::<Vec<_>>())
}

/// A column of the tables: title, accessor, shown as a percentage.
pub type Column = (String, Box<dyn Fn(&Picked) -> f64>, bool);

/// The metrics of the tables.
pub fn columns(c: &Comparison) -> Vec<Column> {
    let mut cols: Vec<Column> = vec![("fused".into(), Box::new(|p: &Picked| p.fused), true)];
    for m in &c.modalities {
        let m2 = m.clone();
        cols.push((m.clone(), Box::new(move |p: &Picked| p.per_modality.get(&m2).copied().unwrap_or(f64::NAN)), true));
    }
    cols.push(("macro-F1".into(), Box::new(|p: &Picked| p.macro_f1), false));
    cols.push(("imbalance".into(), Box::new(|p: &Picked| p.imbalance), false));
    cols
}

/// The probe table's metrics: each modality's linear-probe accuracy (`probe.<m>`), then its
/// Shapley contribution (`shapley.<m>`); none when no run has `probe.json`.
pub fn probe_columns(c: &Comparison) -> Vec<Column> {
    let mut cols: Vec<Column> = Vec::new();
    for m in &c.probe_modalities {
        let m2 = m.clone();
        cols.push((format!("probe.{m}"), Box::new(move |p: &Picked| p.probe.get(&m2).copied().unwrap_or(f64::NAN)), true));
    }
    for m in &c.probe_modalities {
        let m2 = m.clone();
        cols.push((format!("shapley.{m}"), Box::new(move |p: &Picked| p.shapley.get(&m2).copied().unwrap_or(f64::NAN)), true));
    }
    cols
}

/// What the probe table's figures are, for the three formats.
const PROBE_SOURCE: &str = "final model (probe.json)";

/// Runs of the group that have `probe.json`.
fn probe_runs(g: &Group) -> usize {
    g.runs.iter().filter(|r| !r.1.probe.is_empty() || !r.1.shapley.is_empty()).count()
}

fn fmt(s: &Summary, pct: bool) -> String {
    let k = if pct { 100.0 } else { 1.0 };
    let d = if pct { 1 } else { 3 };
    if s.n == 0 {
        "–".into()
    } else if s.n == 1 {
        format!("{:.d$}", k * s.mean)
    } else {
        format!("{:.d$} ± {:.d$} [{:.d$}, {:.d$}]", k * s.mean, k * s.std, k * (s.mean - s.ci95), k * (s.mean + s.ci95))
    }
}

fn p_fmt(p: f64) -> String {
    if p.is_nan() {
        "–".into()
    } else if p < 0.001 {
        "<0.001".into()
    } else {
        format!("{p:.3}")
    }
}

/// The Markdown report: the selection rule, the settings table, the paired table.
pub fn markdown(c: &Comparison) -> String {
    let cols = columns(c);
    let mut s = format!(
        "Figures per run: {}. Cells: mean ± std [95 % CI of the mean] over {}; accuracies in %.\n\n",
        c.select.describe(),
        c.unit()
    );
    s.push_str(&markdown_table(c, &cols, c.count_title(), |g| g.runs.len()));
    let probe = probe_columns(c);
    if !probe.is_empty() {
        s.push_str(&format!(
            "\nUnimodal metrics of each run's {PROBE_SOURCE}: `probe.<m>` the linear-probe test accuracy of modality m's frozen encoder (%), `shapley.<m>` its Shapley contribution to the fused test accuracy (points); mean ± std [95 % CI of the mean] over the runs that have it:\n\n"
        ));
        s.push_str(&markdown_table(c, &probe, "runs", probe_runs));
    }
    if c.groups.len() > 1 {
        s.push_str(&format!("\nPaired differences in fused accuracy over shared {} (A − B, points; SE: standard error; p: two-sided):\n\n", c.unit()));
        s.push_str(&format!("| A | B | {} | A − B | SE | t | p (t) | p (Wilcoxon) | A wins / ties / B wins |\n|---|---|---|---|---|---|---|---|---|\n", c.count_title()));
        for (i, a) in c.groups.iter().enumerate() {
            for b in &c.groups[i + 1..] {
                let p = pair(a, b);
                if p.n == 0 {
                    continue;
                }
                s.push_str(&format!(
                    "| {} | {} | {} | {:+.2} | {} | {} | {} | {} | {} / {} / {} |\n",
                    a.label,
                    b.label,
                    p.n,
                    100.0 * p.mean,
                    if p.se.is_nan() { "–".to_string() } else { format!("{:.2}", 100.0 * p.se) },
                    if p.t.is_nan() { "–".to_string() } else { format!("{:.2}", p.t) },
                    p_fmt(p.p_t),
                    p_fmt(p.p_wilcoxon),
                    p.wins,
                    p.ties,
                    p.losses
                ));
            }
        }
    }
    s
}

/// A Markdown table: one row per setting, its run count (`count`) and a cell per column.
fn markdown_table(c: &Comparison, cols: &[Column], count_title: &str, count: impl Fn(&Group) -> usize) -> String {
    let mut s = format!("| setting | {count_title} |");
    for (t, _, _) in cols {
        s.push_str(&format!(" {t} |"));
    }
    s.push_str("\n|---|---|");
    s.push_str(&"---|".repeat(cols.len()));
    s.push('\n');
    for g in &c.groups {
        s.push_str(&format!("| {} | {} |", g.label, count(g)));
        for (_, f, pct) in cols {
            s.push_str(&format!(" {} |", fmt(&g.summary(f), *pct)));
        }
        s.push('\n');
    }
    s
}

/// One CSV row per (setting, metric): n, mean, std, CI bounds; then the paired rows.
pub fn csv(c: &Comparison) -> (String, String) {
    let mut s = String::from("setting,metric,n,mean,std,ci95_low,ci95_high,selection\n");
    let select = c.select.describe();
    for g in &c.groups {
        let tables = [(columns(c), select.as_str()), (probe_columns(c), PROBE_SOURCE)];
        for (cols, source) in &tables {
            for (t, f, _) in cols {
                let m = g.summary(f);
                s.push_str(&format!(
                    "{},{},{},{},{},{},{},{}\n",
                    crate::csv::field(&g.label),
                    crate::csv::field(t),
                    m.n,
                    m.mean,
                    m.std,
                    m.mean - m.ci95,
                    m.mean + m.ci95,
                    crate::csv::field(source)
                ));
            }
        }
    }
    let mut p = String::from("a,b,n,mean_diff,se,t,p_t,p_wilcoxon,a_wins,ties,b_wins\n");
    for (i, a) in c.groups.iter().enumerate() {
        for b in &c.groups[i + 1..] {
            let r = pair(a, b);
            p.push_str(&format!(
                "{},{},{},{},{},{},{},{},{},{},{}\n",
                crate::csv::field(&a.label),
                crate::csv::field(&b.label),
                r.n,
                r.mean,
                r.se,
                r.t,
                r.p_t,
                r.p_wilcoxon,
                r.wins,
                r.ties,
                r.losses
            ));
        }
    }
    (s, p)
}

fn tex_escape(s: &str) -> String {
    s.chars()
        .map(|c| match c {
            '_' | '%' | '&' | '#' | '$' | '{' | '}' => format!("\\{c}"),
            '~' => "\\textasciitilde{}".into(),
            '^' => "\\textasciicircum{}".into(),
            '\\' => "\\textbackslash{}".into(),
            c => c.to_string(),
        })
        .collect()
}

/// The settings table as a LaTeX `tabular` (booktabs rules), mean ± std; then, when runs
/// have `probe.json`, the probe table as a second `tabular`.
pub fn latex(c: &Comparison) -> String {
    let mut s = latex_table(c, &columns(c), &format!("figures per run: {}; mean $\\pm$ std over {}", c.select.describe(), c.pair_by.as_ref().map_or("seeds".to_string(), |k| format!("{} $\\times$ seeds", tex_escape(k)))), c.count_title(), |g| g.runs.len());
    let probe = probe_columns(c);
    if !probe.is_empty() {
        s.push('\n');
        s.push_str(&latex_table(c, &probe, &format!("unimodal metrics of the {PROBE_SOURCE}, in %; mean $\\pm$ std over the runs that have them"), "runs", probe_runs));
    }
    s
}

/// One LaTeX `tabular`: a row per setting, its run count (`count`) and a cell per column.
fn latex_table(c: &Comparison, cols: &[Column], what: &str, count_title: &str, count: impl Fn(&Group) -> usize) -> String {
    let mut s = format!("% {what}\n\\begin{{tabular}}{{l r {}}}\n\\toprule\n", "r ".repeat(cols.len()));
    s.push_str(&format!("setting & {count_title}"));
    for (t, _, _) in cols {
        s.push_str(&format!(" & {}", tex_escape(t)));
    }
    s.push_str(" \\\\\n\\midrule\n");
    for g in &c.groups {
        s.push_str(&format!("{} & {}", tex_escape(&g.label), count(g)));
        for (_, f, pct) in cols {
            let m = g.summary(f);
            let k = if *pct { 100.0 } else { 1.0 };
            let d = if *pct { 1 } else { 3 };
            if m.n >= 2 {
                s.push_str(&format!(" & ${:.d$} \\pm {:.d$}$", k * m.mean, k * m.std));
            } else if m.n == 1 {
                s.push_str(&format!(" & ${:.d$}$", k * m.mean));
            } else {
                s.push_str(" & --");
            }
        }
        s.push_str(" \\\\\n");
    }
    s.push_str("\\bottomrule\n\\end{tabular}\n");
    s
}

/// The grouped bar chart of the probe table: per setting, a bar per modality (mean, ± one
/// std over seeds) of the probe accuracy, then of the Shapley contribution; no panels
/// when no run has `probe.json`.
pub fn probe_panels(c: &Comparison) -> Vec<BarPanel> {
    if c.probe_modalities.is_empty() {
        return Vec::new();
    }
    let panel = |title: &str, y_desc: &str, f: fn(&Picked) -> &BTreeMap<String, f64>| BarPanel {
        title: Some(title.into()),
        y_desc: y_desc.into(),
        categories: c.groups.iter().map(|g| g.label.clone()).collect(),
        series: c
            .probe_modalities
            .iter()
            .map(|m| {
                let bars = c.groups.iter().map(|g| {
                    let s = g.summary(|p| f(p).get(m).copied().unwrap_or(f64::NAN));
                    (s.n > 0).then(|| (100.0 * s.mean, s.std.is_finite().then_some(100.0 * s.std)))
                });
                (m.clone(), bars.collect())
            })
            .collect(),
        refs: Vec::new(),
    };
    vec![
        panel("Linear-probe test accuracy per modality", "accuracy (%)", |p| &p.probe),
        panel("Shapley contribution to the fused test accuracy", "points", |p| &p.shapley),
    ]
}

/// Write compare.md, compare.csv, compare_pairs.csv, compare.tex and the charts (seed bands;
/// the probe's bars when runs have `probe.json`) into `out`; returns the Markdown.
pub fn write_all(c: &Comparison, out: &Path) -> Result<(String, Vec<PathBuf>)> {
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    let md = markdown(c);
    let (groups_csv, pairs_csv) = csv(c);
    let mut files = Vec::new();
    for (name, text) in [("compare.md", md.as_str()), ("compare.csv", groups_csv.as_str()), ("compare_pairs.csv", pairs_csv.as_str()), ("compare.tex", latex(c).as_str())] {
        let p = out.join(name);
        std::fs::write(&p, text).map_err(|e| Error::io(&p, e))?;
        files.push(p);
    }
    let bands: Vec<(String, Vec<PathBuf>)> = c.groups.iter().map(|g| (g.label.clone(), g.dirs.clone())).collect();
    files.extend(crate::report::render_compare(&bands, &probe_panels(c), out)?);
    Ok((md, files))
}
