//! Run configuration (TOML). Every section rejects unknown fields, and every error names the
//! field path and the allowed values. `--set key=value` overrides apply before validation.
use crate::data::DatasetConfig;
use crate::error::{Error, Result};
use crate::methods::{MethodConfig, MethodName, MethodSetup, ModelConfig};
use serde::Deserialize;
use std::path::Path;

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
/// A run file: the seed and the `[data]`, `[model]`, `[method]` and `[train]` sections. Every field
/// has a default, so an empty file is a valid (synthetic) run.
pub struct Config {
    /// Seed for initialisation, shuffling and augmentation.
    pub seed: u64,
    /// `[data]`: the dataset and its options.
    pub data: DatasetConfig,
    /// `[model]`: encoders and fusion width.
    pub model: ModelConfig,
    /// `[method]`: which method trains, its fusion and its settings.
    pub method: MethodConfig,
    /// `[train]`: epochs, batches, optimizer, schedule, evaluation.
    pub train: TrainConfig,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            seed: 0,
            data: DatasetConfig::Synthetic(Default::default()),
            model: ModelConfig::default(),
            method: MethodConfig::default(),
            train: TrainConfig::default(),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
/// `train.optimizer`.
pub enum OptimizerKind {
    /// SGD with `momentum`, `nesterov`, `weight_decay` (L2) (`sgd`).
    Sgd,
    /// Adam with `beta1`, `beta2`, `weight_decay` as an L2 penalty (`adam`).
    Adam,
    /// AdamW: Adam with decoupled weight decay (`adamw`).
    Adamw,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
/// `train.schedule`: the learning rate per epoch after the warm-up ([`crate::optim::LrSchedule`]).
pub enum ScheduleKind {
    /// `lr` throughout (`constant`).
    Constant,
    /// Multiply by `gamma` every `step_size` epochs (`step`).
    Step,
    /// Cosine annealing from `lr` to `min_lr` over the run (`cosine`).
    Cosine,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
/// `train.precision`: the operands of the layers' GEMMs.
pub enum Precision {
    /// f32 throughout (`f32`, the default).
    #[default]
    F32,
    /// f16 operands for the linear, convolution and attention products; f32 arithmetic,
    /// outputs, gradients, weights and optimizer state (`mixed`; [`crate::autograd::autocast`]).
    Mixed,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
/// `train.loss_scale`: loss scaling under `precision = "mixed"` (no effect in f32).
pub enum LossScaleMode {
    /// A dynamic scale that skips steps with inf or NaN gradients (`dynamic`, the default;
    /// [`crate::optim::GradScaler`]).
    #[default]
    Dynamic,
    /// No scale and no check: a non-finite gradient reaches the weights (`off`).
    Off,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
/// The `[train]` section. Defaults: 15 epochs, batch 64, SGD lr 0.01 with momentum 0.9 and weight
/// decay 1e-4, constant schedule.
pub struct TrainConfig {
    /// Epochs to train, 1..=1,000,000.
    pub epochs: usize,
    /// Training batch size, >= 1.
    pub batch_size: usize,
    /// Which optimizer (`sgd` by default).
    pub optimizer: OptimizerKind,
    /// Base learning rate, > 0.
    pub lr: f32,
    /// SGD momentum, in [0, 1).
    pub momentum: f32,
    /// SGD Nesterov momentum.
    pub nesterov: bool,
    /// Weight decay, >= 0: an L2 penalty for `sgd` and `adam`, decoupled for `adamw`.
    pub weight_decay: f32,
    /// Adam's first-moment decay, in [0, 1).
    pub beta1: f32,
    /// Adam's second-moment decay, in [0, 1).
    pub beta2: f32,
    /// Learning-rate schedule after the warm-up (`constant` by default).
    pub schedule: ScheduleKind,
    /// step schedule: decay every `step_size` epochs by `gamma`
    pub step_size: usize,
    /// Step schedule: decay factor, > 0.
    pub gamma: f32,
    /// cosine schedule: final learning rate
    pub min_lr: f32,
    /// Epochs of linear warm-up before the schedule (fewer than `epochs`); see
    /// [`crate::optim::Scheduler::warmup_epochs`].
    pub warmup_epochs: usize,
    /// Evaluate every N epochs (and at the last).
    pub eval_every: usize,
    /// Data loading threads.
    pub workers: usize,
    /// Keep the newest checkpoint after each epoch (and the best one on validation).
    pub checkpoint: bool,
    /// Drop the last incomplete training batch.
    pub drop_last: bool,
    /// Clip the global L2 norm of the gradients of each optimizer step to this value.
    pub grad_clip: Option<f32>,
    /// After the last epoch, fit a linear probe on each modality's frozen encoder features
    /// (`train::probe`) and report its test accuracy in `summary.txt` and `probe.json`.
    pub probe: bool,
    /// `f32` (default) or `mixed`: see [`Precision`].
    pub precision: Precision,
    /// Under `mixed`: `dynamic` (default) or `off`; see [`LossScaleMode`].
    pub loss_scale: LossScaleMode,
    /// Good steps in a row after which the dynamic loss scale doubles (PyTorch's 2000), >= 1.
    pub loss_scale_interval: u32,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            epochs: 15,
            batch_size: 64,
            optimizer: OptimizerKind::Sgd,
            lr: 1e-2,
            momentum: 0.9,
            nesterov: false,
            weight_decay: 1e-4,
            beta1: 0.9,
            beta2: 0.999,
            schedule: ScheduleKind::Constant,
            step_size: 70,
            gamma: 0.1,
            min_lr: 0.0,
            warmup_epochs: 0,
            eval_every: 1,
            workers: 2,
            checkpoint: true,
            drop_last: false,
            grad_clip: None,
            probe: false,
            precision: Precision::F32,
            loss_scale: LossScaleMode::Dynamic,
            loss_scale_interval: 2000,
        }
    }
}

/// Parse `value` of a `--set` as TOML (number, bool, array, quoted string), else a bare string.
fn parse_value(v: &str) -> toml::Value {
    let doc = format!("x = {v}");
    match doc.parse::<toml::Table>() {
        Ok(mut t) => t.remove("x").unwrap_or_else(|| toml::Value::String(v.to_string())),
        Err(_) => toml::Value::String(v.to_string()),
    }
}

/// Apply `key.path=value` overrides to a TOML table.
pub fn apply_overrides(table: &mut toml::Table, sets: &[String]) -> Result<()> {
    for s in sets {
        let (k, v) = s
            .split_once('=')
            .ok_or_else(|| Error::config(s.clone(), "--set expects key=value, e.g. --set train.lr=0.01"))?;
        let parts: Vec<&str> = k.trim().split('.').collect();
        if parts.iter().any(|p| p.is_empty()) {
            return Err(Error::config(k, "empty component in key path"));
        }
        let mut cur = &mut *table;
        for p in &parts[..parts.len() - 1] {
            let e = cur.entry(p.to_string()).or_insert_with(|| toml::Value::Table(toml::Table::new()));
            cur = match e {
                toml::Value::Table(t) => t,
                _ => return Err(Error::config(k, format!("`{p}` is a value, not a section"))),
            };
        }
        cur.insert(parts[parts.len() - 1].to_string(), parse_value(v.trim()));
    }
    Ok(())
}

/// Deserialize a table, with errors naming the field path.
pub fn from_table(table: &toml::Table) -> Result<Config> {
    let value = toml::Value::Table(table.clone());
    let cfg: Config = serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        // inside `[data]` (a tagged enum) serde's path ends at `data`: ask the dataset's own
        // parser, which names the field
        if path == "data" {
            if let Some(Err(precise)) = table.get("data").map(|d| DatasetConfig::from_toml_value(d.clone())) {
                return precise;
            }
        }
        Error::config(if path == "." { "(top level)".into() } else { path }, e.inner().to_string())
    })?;
    cfg.validate()?;
    Ok(cfg)
}

/// A `[data]` table without `kind` amends the default dataset (synthetic): `--set
/// data.n_train=...` on the default configuration, or on a run whose stored config has no
/// `[data]` table (`eval --set data.*`).
pub fn default_data_kind(table: &mut toml::Table) {
    if let Some(toml::Value::Table(d)) = table.get_mut("data") {
        d.entry("kind").or_insert_with(|| toml::Value::String("synthetic".into()));
    }
}

/// Load a config file (or the defaults when `path` is None) and apply overrides. Returns the
/// config and the merged TOML text (saved in the run directory).
pub fn load(path: Option<&Path>, sets: &[String]) -> Result<(Config, String)> {
    let mut table = match path {
        Some(p) => {
            let text = crate::limits::read_text(p)?;
            text.parse::<toml::Table>().map_err(|e| Error::config(p.display().to_string(), format!("invalid TOML: {e}")))?
        }
        None => toml::Table::new(),
    };
    apply_overrides(&mut table, sets)?;
    default_data_kind(&mut table);
    let cfg = from_table(&table)?;
    for w in unused_options(&table, &cfg) {
        eprintln!("warning: {w}");
    }
    let text = toml::to_string(&table).map_err(|e| Error::Other(e.to_string()))?;
    Ok((cfg, text))
}

impl Config {
    /// Every section's checks: the training settings here, the method's and the model's in
    /// `methods` (each names its fields in its errors).
    pub fn validate(&self) -> Result<()> {
        self.train.validate()?;
        self.method.validate()?;
        self.model.validate()
    }

    /// What the method is built from (methods never see the rest of the configuration).
    pub fn method_setup(&self) -> MethodSetup {
        MethodSetup { seed: self.seed, model: self.model.clone(), method: self.method.clone(), epochs: self.train.epochs }
    }
}

/// `value` must be finite and inside `ok` (a description for the message).
fn check_f32(field: &str, v: f32, ok: bool, want: &str) -> Result<()> {
    if v.is_finite() && ok {
        Ok(())
    } else {
        Err(Error::config(field, format!("must be {want}, got {v}")))
    }
}

impl TrainConfig {
    /// Ranges and combinations of the `[train]` settings; each error names its `train.*` field.
    pub fn validate(&self) -> Result<()> {
        let t = self;
        if t.epochs == 0 {
            return Err(Error::config("train.epochs", "must be at least 1"));
        }
        if t.batch_size == 0 {
            return Err(Error::config("train.batch_size", "must be at least 1"));
        }
        if !(t.lr.is_finite() && t.lr > 0.0) {
            return Err(Error::config("train.lr", format!("must be a positive number, got {}", t.lr)));
        }
        if !(0.0..1.0).contains(&t.momentum) {
            return Err(Error::config("train.momentum", format!("must be in [0, 1), got {}", t.momentum)));
        }
        if t.weight_decay < 0.0 || !t.weight_decay.is_finite() {
            return Err(Error::config("train.weight_decay", "must be >= 0"));
        }
        if !(0.0..1.0).contains(&t.beta1) || !(0.0..1.0).contains(&t.beta2) {
            return Err(Error::config("train.beta1/beta2", "must be in [0, 1)"));
        }
        if t.schedule == ScheduleKind::Step && t.step_size == 0 {
            return Err(Error::config("train.step_size", "must be at least 1 for the step schedule"));
        }
        if let Some(c) = t.grad_clip {
            if !(c.is_finite() && c > 0.0) {
                return Err(Error::config("train.grad_clip", format!("must be a positive number (or absent), got {c}")));
            }
        }
        if t.eval_every == 0 {
            return Err(Error::config("train.eval_every", "must be at least 1"));
        }
        if t.loss_scale_interval == 0 {
            return Err(Error::config("train.loss_scale_interval", "must be at least 1"));
        }
        t.validate_ranges()
    }

    /// Typo guards and orderings (NaN/inf, signs, warmup before the end).
    fn validate_ranges(&self) -> Result<()> {
        let t = self;
        // values this large are never meant and would run for ages or spawn threads without bound
        for (f, v, max) in [("train.epochs", t.epochs, crate::limits::MAX_EPOCHS), ("train.workers", t.workers, 256)] {
            if v > max {
                return Err(Error::config(f, format!("must be at most {max}, got {v}")));
            }
        }
        check_f32("train.gamma", t.gamma, t.gamma > 0.0, "a positive number")?;
        check_f32("train.min_lr", t.min_lr, t.min_lr >= 0.0 && t.min_lr <= t.lr, &format!("in [0, train.lr = {}]", t.lr))?;
        if t.warmup_epochs >= t.epochs {
            return Err(Error::config("train.warmup_epochs", format!("must be less than train.epochs ({}), got {}", t.epochs, t.warmup_epochs)));
        }
        Ok(())
    }
}

/// Options set in `table` that the chosen method, optimizer or schedule never reads. They
/// are warnings, not errors: presets share sections across methods.
pub fn unused_options(table: &toml::Table, cfg: &Config) -> Vec<String> {
    let has = |path: &[&str]| {
        let mut cur = table;
        for (i, p) in path.iter().enumerate() {
            match cur.get(*p) {
                Some(toml::Value::Table(t)) if i + 1 < path.len() => cur = t,
                Some(_) if i + 1 == path.len() => return true,
                _ => return false,
            }
        }
        false
    };
    let name = cfg.method.name;
    let t = &cfg.train;
    let mut unused = Vec::new();
    let mut note = |cond: bool, path: &[&str], why: String| {
        if cond && has(path) {
            unused.push(format!("{} is ignored: {why}", path.join(".")));
        }
    };
    let method = format!("method.name is {}", name.as_str());
    note(name != MethodName::Aug, &["method", "aug"], method.clone());
    note(name != MethodName::Aim, &["method", "aim"], method.clone());
    note(name != MethodName::Agm, &["method", "agm"], method.clone());
    note(name != MethodName::GBlending, &["method", "g_blending"], method.clone());
    note(!matches!(name, MethodName::Ogm | MethodName::OgmGe), &["method", "ogm"], method.clone());
    note(name != MethodName::Unimodal, &["method", "modality"], method);
    let sgd = t.optimizer == OptimizerKind::Sgd;
    for k in ["momentum", "nesterov"] {
        note(!sgd, &["train", k], "it applies to train.optimizer = \"sgd\"".into());
    }
    for k in ["beta1", "beta2"] {
        note(sgd, &["train", k], "it applies to adam and adamw".into());
    }
    for k in ["step_size", "gamma"] {
        note(t.schedule != ScheduleKind::Step, &["train", k], "it applies to train.schedule = \"step\"".into());
    }
    note(t.schedule != ScheduleKind::Cosine, &["train", "min_lr"], "it applies to train.schedule = \"cosine\"".into());
    unused.extend(cfg.method.never_acts(cfg.train.epochs));
    unused
}

/// Whether setting `key = value` in `table` leaves the parsed config unchanged.
pub fn sets_default(table: &toml::Table, key: &str, value: &str) -> bool {
    let parse = |t: &toml::Table| from_table(t).ok().map(|c| format!("{c:?}"));
    let mut with = table.clone();
    let set = format!("{key}={value}");
    if apply_overrides(&mut with, &[set]).is_err() {
        return false;
    }
    matches!((parse(table), parse(&with)), (Some(x), Some(y)) if x == y)
}

/// A TOML value's leaves as (`a.b.c`, value) pairs.
pub fn flatten(prefix: &str, v: &toml::Value, out: &mut Vec<(String, String)>) {
    match v {
        toml::Value::Table(t) => {
            for (k, v) in t {
                let key = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
                flatten(&key, v, out);
            }
        }
        other => out.push((prefix.to_string(), other.to_string())),
    }
}
