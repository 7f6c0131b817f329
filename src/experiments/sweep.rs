//! Sweep files: a base configuration plus a grid of overrides, expanded into named runs.
//!
//! ```toml
//! name = "synthetic_methods"          # default: the file's stem
//! base = "../configs/synthetic_joint.toml"   # relative to this file; optional
//! out = "runs/sweeps/synthetic_methods"      # default runs/sweeps/<name>
//! parallel = 2                        # runs at once on one device (default 2)
//! [set]                               # overrides of every run
//! "train.epochs" = 15
//! [grid]                              # one run per combination
//! config = ["../configs/synthetic_aug.toml", "../configs/synthetic_aim.toml"]
//! seed = [0, 1, 2]
//! [compare]
//! select = "best_val"                 # best_val | last | last_k (default best_val when
//! k = 5                               # every run has a validation split, else last)
//! pair_by = "data.test_speakers"      # optional: a grid key that pairs runs like the seed
//! [slurm]
//! partition = "gpu"
//! time = "01:00:00"
//! gpus_per_task = 1
//! ```
//! Every expanded run is validated (each override path and value, through the config
//! loader) before any run starts.
use crate::config;
use crate::error::{Error, Result};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The grid key that picks a whole config file rather than overriding one value.
pub const CONFIG_KEY: &str = "config";

#[derive(Clone, Debug, Default, PartialEq)]
/// The `[slurm]` section of a sweep file: the `#SBATCH` options of
/// [`crate::experiments::run::sbatch_script`].
pub struct SlurmOptions {
    /// `--partition`.
    pub partition: Option<String>,
    /// `--time`, in Slurm's format (e.g. 01:30:00 or 1-00:00:00).
    pub time: Option<String>,
    /// GPUs per array task (`--gres=gpu:N`, left out when 0); 1 when a `[slurm]` section omits it.
    pub gpus_per_task: usize,
    /// `--cpus-per-task`.
    pub cpus_per_task: Option<usize>,
    /// `--mem`.
    pub mem: Option<String>,
    /// array tasks running at once (`--array=0-N%max`)
    pub max_parallel: Option<usize>,
    /// further `#SBATCH` options, verbatim (e.g. "--account=lab")
    pub extra: Vec<String>,
}

/// How `compare` picks each run's figure.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Selection {
    /// the epoch with the best validation accuracy (the first of ties)
    BestVal,
    /// the last evaluated epoch
    Last,
    /// the mean over the last k evaluated epochs
    LastK(usize),
}

impl Selection {
    /// Parse the `[compare]` names `best_val`, `last`, `last_k` (with `k >= 1`); errors name
    /// `field`.
    pub fn parse(name: &str, k: usize, field: &str) -> Result<Selection> {
        match name {
            "best_val" => Ok(Selection::BestVal),
            "last" => Ok(Selection::Last),
            "last_k" if k >= 1 => Ok(Selection::LastK(k)),
            "last_k" => Err(Error::config(field, "last_k needs k >= 1")),
            other => Err(Error::config(field, format!("unknown selection `{other}`; allowed: best_val, last, last_k"))),
        }
    }
    /// The rule in words, for the report.
    pub fn describe(&self) -> String {
        match self {
            Selection::BestVal => "the epoch with the best validation accuracy".into(),
            Selection::Last => "the last epoch".into(),
            Selection::LastK(k) => format!("the mean of the last {k} evaluated epochs"),
        }
    }
}

#[derive(Clone, Debug)]
/// A loaded sweep file (see the module docs for its format).
pub struct Sweep {
    /// the sweep file, absolute
    pub file: PathBuf,
    /// The sweep's name (default: the file's stem); also the Slurm job name.
    pub name: String,
    /// Base configuration every run starts from, resolved against the sweep file's folder.
    pub base: Option<PathBuf>,
    /// Output folder, one subfolder per run (default `runs/sweeps/<name>`; `--out` overrides).
    pub out: PathBuf,
    /// Runs at once on one device (default 2).
    pub parallel: usize,
    /// `[set]`: overrides applied to every run, by dotted key.
    pub set: Vec<(String, toml::Value)>,
    /// `[grid]`: dotted key and its values; one run per combination.
    pub grid: Vec<(String, Vec<toml::Value>)>,
    /// None: best_val when every run has a validation split, else last
    pub select: Option<Selection>,
    /// `[compare] pair_by`: a grid key whose values pair runs as seeds do (cross-validation
    /// folds, e.g. `data.test_speakers`), see `compare::compare_by`.
    pub pair_by: Option<String>,
    /// `[slurm]`: options of the job-array script.
    pub slurm: SlurmOptions,
}

/// One expanded run.
#[derive(Clone, Debug, PartialEq)]
pub struct RunSpec {
    /// Position in the expansion (the Slurm array task index).
    pub index: usize,
    /// Folder name, built from the run's grid values.
    pub name: String,
    /// The config file the grid's `config` key picked, else the sweep's `base`.
    pub config: Option<PathBuf>,
    /// `key=value` overrides, values in TOML syntax
    pub sets: Vec<String>,
}

fn field(file: &Path, f: &str) -> String {
    format!("{}: {f}", file.display())
}

fn take_str(t: &toml::Table, key: &str, file: &Path) -> Result<Option<String>> {
    match t.get(key) {
        None => Ok(None),
        Some(toml::Value::String(s)) => Ok(Some(s.clone())),
        Some(v) => Err(Error::config(field(file, key), format!("expected a string, got {v}"))),
    }
}

fn take_usize(t: &toml::Table, key: &str, file: &Path, what: &str) -> Result<Option<usize>> {
    match t.get(key) {
        None => Ok(None),
        Some(toml::Value::Integer(i)) if *i >= 0 => Ok(Some(*i as usize)),
        Some(v) => Err(Error::config(field(file, what), format!("expected a non-negative integer, got {v}"))),
    }
}

fn check_keys(t: &toml::Table, allowed: &[&str], file: &Path, section: &str) -> Result<()> {
    for k in t.keys() {
        if !allowed.contains(&k.as_str()) {
            let name = if section.is_empty() { k.clone() } else { format!("{section}.{k}") };
            return Err(Error::config(field(file, &name), format!("unknown field; allowed: {}", allowed.join(", "))));
        }
    }
    Ok(())
}

fn table<'a>(t: &'a toml::Table, key: &str, file: &Path) -> Result<Option<&'a toml::Table>> {
    match t.get(key) {
        None => Ok(None),
        Some(toml::Value::Table(s)) => Ok(Some(s)),
        Some(v) => Err(Error::config(field(file, key), format!("expected a table, got {v}"))),
    }
}

impl Sweep {
    /// Read and check a sweep file (relative paths inside it are relative to its folder;
    /// `out` is relative to the working directory). `out` overrides the file's.
    pub fn load(path: &Path, out: Option<&Path>) -> Result<Sweep> {
        let text = crate::limits::read_text(path)?;
        let file = std::path::absolute(path).map_err(|e| Error::io(path, e))?;
        let t: toml::Table = text.parse().map_err(|e| Error::config(path.display().to_string(), format!("invalid TOML: {e}")))?;
        check_keys(&t, &["name", "base", "out", "parallel", "set", "grid", "compare", "slurm"], &file, "")?;
        let dir = file.parent().unwrap_or(Path::new(".")).to_path_buf();
        let name = take_str(&t, "name", &file)?.unwrap_or_else(|| file.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "sweep".into()));
        if name.is_empty() || name.contains(['/', '\\']) || name.chars().all(|c| c == '.') {
            return Err(Error::config(field(&file, "name"), format!("`{name}` cannot name a folder")));
        }
        let base = take_str(&t, "base", &file)?.map(|b| dir.join(b));
        let out = match out {
            Some(o) => o.to_path_buf(),
            None => take_str(&t, "out", &file)?.map(PathBuf::from).unwrap_or_else(|| PathBuf::from("runs/sweeps").join(&name)),
        };
        // `a/../b` names b: resolved here, before the folder is checked and claimed (checking
        // `a/../b` while `a` does not exist yet would not see what b holds)
        let out = lexical(&std::path::absolute(&out).map_err(|e| Error::io(&out, e))?);
        // 2: measured 1.6x the throughput of 1 for small runs on a 2-core CPU (README)
        let parallel = take_usize(&t, "parallel", &file, "parallel")?.unwrap_or(2);
        if parallel == 0 {
            return Err(Error::config(field(&file, "parallel"), "must be at least 1"));
        }
        let set = table(&t, "set", &file)?.map(|s| s.iter().map(|(k, v)| (k.clone(), v.clone())).collect()).unwrap_or_default();
        let grid = Self::read_grid(table(&t, "grid", &file)?, &file, &dir)?;
        let (select, pair_by) = match table(&t, "compare", &file)? {
            None => (None, None),
            Some(c) => {
                check_keys(c, &["select", "k", "pair_by"], &file, "compare")?;
                let k = take_usize(c, "k", &file, "compare.k")?.unwrap_or(5);
                let select = match take_str(c, "select", &file)? {
                    Some(s) => Some(Selection::parse(&s, k, &field(&file, "compare.select"))?),
                    None => None,
                };
                let pair_by = take_str(c, "pair_by", &file)?;
                if let Some(key) = &pair_by {
                    if !grid.iter().any(|(k, _)| k == key) {
                        return Err(Error::config(field(&file, "compare.pair_by"), format!("`{key}` is not a [grid] key; runs can only be paired by a value the grid varies")));
                    }
                }
                (select, pair_by)
            }
        };
        let slurm = match table(&t, "slurm", &file)? {
            None => SlurmOptions::default(),
            Some(s) => Self::read_slurm(s, &file)?,
        };
        Ok(Sweep { file, name, base, out, parallel, set, grid, select, pair_by, slurm })
    }

    fn read_grid(g: Option<&toml::Table>, file: &Path, dir: &Path) -> Result<Vec<(String, Vec<toml::Value>)>> {
        let Some(g) = g else {
            return Err(Error::config(field(file, "grid"), "missing: a sweep needs at least one grid key, e.g. seed = [0, 1, 2]"));
        };
        if g.is_empty() {
            return Err(Error::config(field(file, "grid"), "empty: a sweep needs at least one grid key, e.g. seed = [0, 1, 2]"));
        }
        let mut out = Vec::new();
        let mut runs = 1usize;
        for (k, v) in g {
            let f = format!("grid.{k}");
            let toml::Value::Array(vals) = v else {
                return Err(Error::config(field(file, &f), format!("expected a list of values, got {v}")));
            };
            if vals.is_empty() {
                return Err(Error::config(field(file, &f), "empty list: the grid would have no runs"));
            }
            // counted before anything is expanded: a grid is a product
            runs = runs.saturating_mul(vals.len());
            if runs > MAX_RUNS {
                return Err(Error::config(field(file, "grid"), format!("more than {MAX_RUNS} runs (the product of the value counts up to `{k}`); split the sweep")));
            }
            let mut seen = BTreeSet::new();
            for x in vals {
                if !seen.insert(x.to_string()) {
                    return Err(Error::config(field(file, &f), format!("{x} appears twice (two runs would have the same name)")));
                }
            }
            let vals = if k == CONFIG_KEY {
                vals.iter()
                    .map(|x| match x {
                        toml::Value::String(s) => Ok(toml::Value::String(dir.join(s).display().to_string())),
                        _ => Err(Error::config(field(file, &f), format!("config files are strings, got {x}"))),
                    })
                    .collect::<Result<Vec<_>>>()?
            } else {
                vals.clone()
            };
            out.push((k.clone(), vals));
        }
        Ok(out)
    }

    fn read_slurm(s: &toml::Table, file: &Path) -> Result<SlurmOptions> {
        check_keys(s, &["partition", "time", "gpus_per_task", "cpus_per_task", "mem", "max_parallel", "extra"], file, "slurm")?;
        let extra = match s.get("extra") {
            None => Vec::new(),
            Some(toml::Value::Array(a)) => a
                .iter()
                .map(|x| x.as_str().map(str::to_string).ok_or_else(|| Error::config(field(file, "slurm.extra"), format!("expected strings, got {x}"))))
                .collect::<Result<_>>()?,
            Some(v) => return Err(Error::config(field(file, "slurm.extra"), format!("expected a list of strings, got {v}"))),
        };
        let time = take_str(s, "time", file)?;
        if let Some(t) = &time {
            if !t.chars().all(|c| c.is_ascii_digit() || c == ':' || c == '-') {
                return Err(Error::config(field(file, "slurm.time"), format!("`{t}` is not a Slurm time (e.g. 01:30:00 or 1-00:00:00)")));
            }
        }
        Ok(SlurmOptions {
            partition: take_str(s, "partition", file)?,
            time,
            gpus_per_task: take_usize(s, "gpus_per_task", file, "slurm.gpus_per_task")?.unwrap_or(1),
            cpus_per_task: take_usize(s, "cpus_per_task", file, "slurm.cpus_per_task")?,
            mem: take_str(s, "mem", file)?,
            max_parallel: take_usize(s, "max_parallel", file, "slurm.max_parallel")?,
            extra,
        })
    }

    /// Every combination of the grid, in a stable order (grid keys sorted by name, values in
    /// the order written), each named by its grid values, each validated by the config loader.
    pub fn expand(&self) -> Result<Vec<RunSpec>> {
        let short = short_names(&self.grid);
        let mut runs = Vec::new();
        let mut combo = vec![0usize; self.grid.len()];
        loop {
            let mut config = self.base.clone();
            let mut sets: Vec<String> = self.set.iter().map(|(k, v)| format!("{k}={v}")).collect();
            let mut parts = Vec::new();
            for (i, (k, vals)) in self.grid.iter().enumerate() {
                let v = &vals[combo[i]];
                if k == CONFIG_KEY {
                    let p = PathBuf::from(v.as_str().unwrap_or_default());
                    parts.push(p.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default());
                    config = Some(p);
                } else {
                    sets.push(format!("{k}={v}"));
                    // the method's name stands alone ("aug"), numbers follow their key
                    // ("seed3", "lr0.02"), words after a dash ("aux_bn-own")
                    let sep = if v.is_str() { "-" } else { "" };
                    parts.push(if k == "method.name" { value_label(v) } else { format!("{}{sep}{}", short[i], value_label(v)) });
                }
            }
            let name = sanitize(&parts.join("_"));
            runs.push(RunSpec { index: runs.len(), name, config, sets });
            // odometer over the grid, last key fastest
            let mut i = self.grid.len();
            loop {
                if i == 0 {
                    return self.validate(runs);
                }
                i -= 1;
                combo[i] += 1;
                if combo[i] < self.grid[i].1.len() {
                    break;
                }
                combo[i] = 0;
            }
        }
    }

    fn validate(&self, runs: Vec<RunSpec>) -> Result<Vec<RunSpec>> {
        let mut names = BTreeMap::new();
        for r in &runs {
            if r.name.is_empty() || r.name.chars().all(|c| c == '.') {
                return Err(Error::config(field(&self.file, "grid"), format!("run {} would be named `{}`, which names no folder of its own; rename its grid value (a config file's stem, say)", r.index, r.name)));
            }
            if let Some(prev) = names.insert(r.name.clone(), r.index) {
                return Err(Error::config(
                    field(&self.file, "grid"),
                    format!("runs {prev} and {} are both named `{}`; make the grid values distinguishable", r.index, r.name),
                ));
            }
            config::load(r.config.as_deref(), &r.sets).map_err(|e| Error::config(field(&self.file, &format!("run `{}`", r.name)), e.to_string()))?;
        }
        Ok(runs)
    }
}

/// The last path component of each grid key, or the whole key where two keys share it.
fn short_names(grid: &[(String, Vec<toml::Value>)]) -> Vec<String> {
    let last = |k: &str| k.rsplit('.').next().unwrap_or(k).to_string();
    grid.iter()
        .map(|(k, _)| {
            let l = last(k);
            if grid.iter().filter(|(o, _)| last(o) == l).count() > 1 {
                k.clone()
            } else {
                l
            }
        })
        .collect()
}

/// A value as it appears in a run name: strings without quotes, lists joined by '-'.
fn value_label(v: &toml::Value) -> String {
    match v {
        toml::Value::String(s) => s.clone(),
        toml::Value::Array(a) => a.iter().map(value_label).collect::<Vec<_>>().join("-"),
        // shortest round-trip form: 0.01, 1e30 (TOML's own would spell out 31 digits)
        toml::Value::Float(f) => format!("{f:?}"),
        other => other.to_string(),
    }
}

/// Most runs one sweep expands to (a grid is a product of its value lists).
pub const MAX_RUNS: usize = 10_000;

/// `p` with `.` dropped and `..` folded into its parent, without touching the file system.
fn lexical(p: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            std::path::Component::CurDir => {}
            std::path::Component::ParentDir => {
                if !out.pop() {
                    out.push(c);
                }
            }
            c => out.push(c),
        }
    }
    out
}

/// Only characters that are safe in a folder name on every system.
fn sanitize(s: &str) -> String {
    s.chars().map(|c| if c.is_ascii_alphanumeric() || "._-".contains(c) { c } else { '-' }).collect()
}
