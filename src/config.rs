//! Run configuration (TOML). Every section rejects unknown fields, and every error names the
//! field path and the allowed values. `--set key=value` overrides apply before validation.
use crate::data::DatasetConfig;
use crate::error::{Error, Result};
use crate::nn::FusionKind;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::Path;

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Seed for initialisation, shuffling and augmentation.
    pub seed: u64,
    pub data: DatasetConfig,
    pub model: ModelConfig,
    pub method: MethodConfig,
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
pub enum EncoderKind {
    SmallCnn,
    Resnet18,
    Transformer,
    Mlp,
}

/// Encoder settings; `modalities.<name>` overrides any of them for one modality.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModelConfig {
    pub encoder: EncoderKind,
    /// small_cnn: first block's width (doubles per block); resnet18: base width (64 standard).
    pub width: usize,
    /// small_cnn: number of blocks.
    pub depth: usize,
    /// mlp: hidden widths.
    pub hidden: Vec<usize>,
    /// transformer
    pub layers: usize,
    pub heads: usize,
    pub mlp_ratio: usize,
    pub patch: [usize; 2],
    /// Inner width of gated fusion (FiLM's is the second modality's feature width).
    pub fusion_hidden: usize,
    /// Initialisation of conv and linear layers: `official` (the AUG code's) or `torch`.
    pub init: crate::nn::Init,
    pub modalities: BTreeMap<String, ModelOverride>,
}

impl Default for ModelConfig {
    fn default() -> Self {
        ModelConfig {
            encoder: EncoderKind::Mlp,
            width: 8,
            depth: 2,
            hidden: vec![128, 64],
            layers: 2,
            heads: 4,
            mlp_ratio: 2,
            patch: [4, 4],
            fusion_hidden: 64,
            init: crate::nn::Init::Official,
            modalities: BTreeMap::new(),
        }
    }
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelOverride {
    pub encoder: Option<EncoderKind>,
    pub width: Option<usize>,
    pub depth: Option<usize>,
    pub hidden: Option<Vec<usize>>,
    pub layers: Option<usize>,
    pub heads: Option<usize>,
    pub mlp_ratio: Option<usize>,
    pub patch: Option<[usize; 2]>,
}

impl ModelConfig {
    /// The settings for one modality (overrides applied).
    pub fn for_modality(&self, name: &str) -> ModelConfig {
        let mut m = self.clone();
        if let Some(o) = self.modalities.get(name) {
            if let Some(v) = o.encoder {
                m.encoder = v;
            }
            if let Some(v) = o.width {
                m.width = v;
            }
            if let Some(v) = o.depth {
                m.depth = v;
            }
            if let Some(v) = &o.hidden {
                m.hidden = v.clone();
            }
            if let Some(v) = o.layers {
                m.layers = v;
            }
            if let Some(v) = o.heads {
                m.heads = v;
            }
            if let Some(v) = o.mlp_ratio {
                m.mlp_ratio = v;
            }
            if let Some(v) = o.patch {
                m.patch = v;
            }
        }
        m
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MethodName {
    Unimodal,
    Joint,
    Ogm,
    OgmGe,
    Aug,
    Aim,
    Pmr,
    Mmpareto,
    Agm,
    GBlending,
}

impl MethodName {
    pub fn as_str(self) -> &'static str {
        match self {
            MethodName::Unimodal => "unimodal",
            MethodName::Joint => "joint",
            MethodName::Ogm => "ogm",
            MethodName::OgmGe => "ogm_ge",
            MethodName::Aug => "aug",
            MethodName::Aim => "aim",
            MethodName::Pmr => "pmr",
            MethodName::Mmpareto => "mmpareto",
            MethodName::Agm => "agm",
            MethodName::GBlending => "g_blending",
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MethodConfig {
    pub name: MethodName,
    pub fusion: FusionKind,
    /// unimodal: which modality to train (by name).
    pub modality: Option<String>,
    pub ogm: OgmConfig,
    pub aug: AugConfig,
    pub aim: AimConfig,
    pub pmr: PmrConfig,
    pub mmpareto: MmparetoConfig,
    pub agm: crate::methods::agm::AgmConfig,
    pub g_blending: crate::methods::g_blending::GBlendingConfig,
}

impl Default for MethodConfig {
    fn default() -> Self {
        MethodConfig {
            name: MethodName::Aug,
            fusion: FusionKind::Concat,
            modality: None,
            ogm: OgmConfig::default(),
            aug: AugConfig::default(),
            aim: AimConfig::default(),
            pmr: PmrConfig::default(),
            mmpareto: MmparetoConfig::default(),
            agm: Default::default(),
            g_blending: Default::default(),
        }
    }
}

/// How PMR weights the prototypical CE of a slower modality (docs/methods/pmr.md).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PmrCoefficient {
    /// α for every modality whose prototype score is below the best one, 0 otherwise (the
    /// official `main_Prototype_grad.py`).
    Code,
    /// α·clip(s_max/s_m − 1, 0, 1): grows with the imbalance (the paper's ratio-dependent form,
    /// as re-implemented in GeWu-Lab/BalanceBenchmark).
    Ratio,
}

/// PMR (Fan et al., CVPR 2023); see docs/methods/pmr.md. Defaults are the official code's.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PmrConfig {
    /// Weight of the prototypical CE of the slower modality (`--alpha`, 1.0).
    pub alpha: f32,
    /// Prototypes are recomputed at the start of every epoch as
    /// (1 − momentum)·new + momentum·old (`--momentum_coef`, 0.2).
    pub momentum: f32,
    /// Share of the training batches the prototypes are averaged over (the official code stops
    /// after `len(loader) // 10` batches: 0.1).
    pub proto_fraction: f64,
    /// The rebalancing terms act for epochs in [start_epoch, end_epoch]
    /// (`--modulation_starts` 0, `--modulation_ends` 100).
    pub start_epoch: usize,
    pub end_epoch: usize,
    pub coefficient: PmrCoefficient,
    /// Weight μ of the prototype entropy regularisation of the dominant modality (0: off, as
    /// the official code, which has none).
    pub mu: f32,
    /// The entropy term acts for epochs in [start_epoch, start_epoch + entropy_epochs).
    pub entropy_epochs: usize,
}

impl Default for PmrConfig {
    fn default() -> Self {
        PmrConfig {
            alpha: 1.0,
            momentum: 0.2,
            proto_fraction: 0.1,
            start_epoch: 0,
            end_epoch: 100,
            coefficient: PmrCoefficient::Code,
            mu: 0.0,
            entropy_epochs: 0,
        }
    }
}

impl PmrConfig {
    pub fn validate(&self) -> Result<()> {
        let f = |n: &str| format!("method.pmr.{n}");
        if !(self.alpha.is_finite() && self.alpha >= 0.0) {
            return Err(Error::config(f("alpha"), format!("must be >= 0, got {}", self.alpha)));
        }
        if !(self.momentum.is_finite() && (0.0..1.0).contains(&self.momentum)) {
            return Err(Error::config(f("momentum"), format!("must be in [0, 1), got {}", self.momentum)));
        }
        if !(self.proto_fraction.is_finite() && self.proto_fraction > 0.0 && self.proto_fraction <= 1.0) {
            return Err(Error::config(f("proto_fraction"), format!("must be in (0, 1], got {}", self.proto_fraction)));
        }
        if self.start_epoch > self.end_epoch {
            return Err(Error::config(f("start_epoch"), format!("must be <= method.pmr.end_epoch ({}), got {}", self.end_epoch, self.start_epoch)));
        }
        if !(self.mu.is_finite() && self.mu >= 0.0) {
            return Err(Error::config(f("mu"), format!("must be >= 0, got {}", self.mu)));
        }
        Ok(())
    }
}

/// MMPareto (Wei & Hu, ICML 2024); see docs/methods/mmpareto.md. Defaults are the official
/// code's.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MmparetoConfig {
    /// Final scale of the combined encoder gradient (`gamma = 1.5`, hard-coded in MMPareto.py).
    pub gamma: f32,
}

impl Default for MmparetoConfig {
    fn default() -> Self {
        MmparetoConfig { gamma: 1.5 }
    }
}

impl MmparetoConfig {
    pub fn validate(&self) -> Result<()> {
        if !(self.gamma.is_finite() && self.gamma > 0.0) {
            return Err(Error::config("method.mmpareto.gamma", format!("must be > 0, got {}", self.gamma)));
        }
        Ok(())
    }
}

/// AIM (adaptive intra-network modulation); see docs/aim.md, whose design values are the
/// defaults (except where it says a measurement chose otherwise).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AimConfig {
    /// DAP: refresh the prototypes every N epochs (warm-started).
    pub prototype_every: usize,
    /// DAP: Adam steps per refresh.
    pub prototype_steps: usize,
    /// DAP: Adam learning rate of the prototypes.
    pub prototype_lr: f32,
    /// Prototype classification temperature T in exp(−‖h − P‖² / (T·dim)).
    pub temperature: f32,
    /// EMA momentum of the per-depth scores within an epoch.
    pub score_momentum: f32,
    /// DAM: s_d = clamp(tanh(β·(r_d − 1)), 0, s_max).
    pub beta: f32,
    pub s_max: f32,
    /// PAM: fraction of each layer's elements marked under-optimized.
    pub rho: f32,
    /// PAM: EMA momentum of the optimization-state score |g ⊙ θ|.
    pub pam_momentum: f32,
    /// PAM: refresh the masks every N epochs.
    pub mask_every: usize,
    /// Weight of the auxiliary-block loss.
    pub gamma: f32,
    /// Also give the weak modality an auxiliary block at depths where it leads (paper v3).
    pub v3: bool,
    /// The auxiliary loss also trains the fusion head (the spec's plain sum of losses). With
    /// `false` the head is frozen inside the auxiliary term: it trains the encoders only, so
    /// the head is not taught to expect a damped dominant modality that test time never shows.
    pub aux_trains_head: bool,
    /// Which statistics the auxiliary forward's batch norm uses (docs/aim.md#batch-norm).
    pub aux_bn: AuxBn,
}

/// Batch-norm statistics of AIM's auxiliary forward.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AuxBn {
    /// The main forward's batch statistics of the same step, as constants: the damping of the
    /// weights reaches the auxiliary block's output instead of being normalised away.
    Main,
    /// The running statistics (eval-mode normalisation), as constants.
    Running,
    /// The auxiliary forward's own batch statistics (normalises most of the per-channel
    /// damping away; the behaviour before this option existed).
    Own,
}

impl Default for AimConfig {
    fn default() -> Self {
        AimConfig {
            prototype_every: 1,
            prototype_steps: 50,
            prototype_lr: 0.05,
            temperature: 1.0,
            score_momentum: 0.9,
            beta: 1.0,
            s_max: 0.9,
            rho: 0.5,
            pam_momentum: 0.9,
            mask_every: 1,
            gamma: 1.0,
            v3: false,
            aux_trains_head: true,
            // measured: docs/aim.md#batch-norm-of-the-auxiliary-block
            aux_bn: AuxBn::Own,
        }
    }
}

impl AimConfig {
    pub fn validate(&self) -> Result<()> {
        let f = |n: &str| format!("method.aim.{n}");
        if self.prototype_every == 0 {
            return Err(Error::config(f("prototype_every"), "must be at least 1"));
        }
        if self.mask_every == 0 {
            return Err(Error::config(f("mask_every"), "must be at least 1"));
        }
        if !(self.prototype_lr.is_finite() && self.prototype_lr > 0.0) {
            return Err(Error::config(f("prototype_lr"), format!("must be > 0, got {}", self.prototype_lr)));
        }
        if !(self.temperature.is_finite() && self.temperature > 0.0) {
            return Err(Error::config(f("temperature"), format!("must be > 0, got {}", self.temperature)));
        }
        for (n, v) in [("score_momentum", self.score_momentum), ("pam_momentum", self.pam_momentum)] {
            if !(0.0..1.0).contains(&v) {
                return Err(Error::config(f(n), format!("must be in [0, 1), got {v}")));
            }
        }
        if !(self.beta.is_finite() && self.beta >= 0.0) {
            return Err(Error::config(f("beta"), format!("must be >= 0, got {}", self.beta)));
        }
        if !(0.0..=1.0).contains(&self.s_max) {
            return Err(Error::config(f("s_max"), format!("must be in [0, 1], got {}", self.s_max)));
        }
        if !(0.0..=1.0).contains(&self.rho) {
            return Err(Error::config(f("rho"), format!("must be in [0, 1], got {}", self.rho)));
        }
        if !(self.gamma.is_finite() && self.gamma >= 0.0) {
            return Err(Error::config(f("gamma"), format!("must be >= 0, got {}", self.gamma)));
        }
        Ok(())
    }
}

/// Adaptive classifier assignment rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AugRule {
    /// s^a − σ·s^v against ±τ (the paper)
    Paper,
    /// s^a / s^v against 1 ± τ (the official code)
    Code,
    /// any number of modalities: ratio_m = s^m / Σ_{others} s, add where below `multi_threshold`
    Multi,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AugConfig {
    /// weight of the residual term (paper searched 0.1..1.0)
    pub lambda: f32,
    pub form: crate::ops::BoostForm,
    /// Check every N epochs; 0 = epochs / 10 (the official code).
    pub check_every: usize,
    /// Also check after the first epoch (the official code does).
    pub check_after_first: bool,
    pub rule: AugRule,
    pub sigma: f32,
    pub tau: f32,
    pub multi_threshold: f32,
    /// Optional cap on learners per modality.
    pub max_learners: Option<usize>,
    /// New learners join the optimizer with fresh state; false reproduces the official code
    /// (they stay frozen random projections).
    pub train_new_learners: bool,
    /// Test-time fusion weights per modality (default 0.4 / 0.6 for two, uniform otherwise).
    pub fusion_weights: Option<Vec<f32>>,
    /// Learner width (Linear(D→hidden) + ReLU before the shared head).
    pub hidden: usize,
}

impl Default for AugConfig {
    fn default() -> Self {
        AugConfig {
            lambda: 0.5,
            form: crate::ops::BoostForm::Code,
            check_every: 0,
            check_after_first: true,
            rule: AugRule::Code,
            sigma: 1.0,
            tau: 0.01,
            multi_threshold: 0.4,
            max_learners: None,
            train_new_learners: true,
            fusion_weights: None,
            hidden: 256,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OgmFormula {
    /// 1 − tanh(α·relu(ρ)) (the official code)
    Code,
    /// 1 − tanh(α·relu(ρ − 1)) (the paper)
    Paper,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OgmConfig {
    pub alpha: f32,
    /// Modulation is applied for epochs in [start_epoch, end_epoch].
    pub start_epoch: usize,
    pub end_epoch: usize,
    pub formula: OgmFormula,
    pub modulate: OgmScope,
}

impl Default for OgmConfig {
    fn default() -> Self {
        OgmConfig { alpha: 0.8, start_epoch: 0, end_epoch: 50, formula: OgmFormula::Code, modulate: OgmScope::All }
    }
}

/// Which encoder gradients OGM modulates.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OgmScope {
    /// Every parameter of the encoder (works for any encoder, MLPs included).
    All,
    /// Only 4-D (convolution) weights, as the official code (`len(parms.grad.size()) == 4`):
    /// batch-norm parameters and linear layers keep their plain gradients.
    ConvWeights,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OptimizerKind {
    Sgd,
    Adam,
    Adamw,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ScheduleKind {
    Constant,
    Step,
    Cosine,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainConfig {
    pub epochs: usize,
    pub batch_size: usize,
    pub optimizer: OptimizerKind,
    pub lr: f32,
    pub momentum: f32,
    pub nesterov: bool,
    pub weight_decay: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub schedule: ScheduleKind,
    /// step schedule: decay every `step_size` epochs by `gamma`
    pub step_size: usize,
    pub gamma: f32,
    /// cosine schedule: final learning rate
    pub min_lr: f32,
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
        Error::config(if path == "." { "(top level)".into() } else { path }, e.inner().to_string())
    })?;
    cfg.validate()?;
    Ok(cfg)
}

/// Load a config file (or the defaults when `path` is None) and apply overrides. Returns the
/// config and the merged TOML text (saved in the run directory).
pub fn load(path: Option<&Path>, sets: &[String]) -> Result<(Config, String)> {
    let mut table = match path {
        Some(p) => {
            let text = std::fs::read_to_string(p).map_err(|e| Error::io(p, e))?;
            text.parse::<toml::Table>().map_err(|e| Error::config(p.display().to_string(), format!("invalid TOML: {e}")))?
        }
        None => toml::Table::new(),
    };
    apply_overrides(&mut table, sets)?;
    // A [data] table without `kind` amends the default dataset (synthetic).
    if let Some(toml::Value::Table(d)) = table.get_mut("data") {
        d.entry("kind").or_insert_with(|| toml::Value::String("synthetic".into()));
    }
    let cfg = from_table(&table)?;
    for w in unused_options(&table, &cfg) {
        eprintln!("warning: {w}");
    }
    let text = toml::to_string(&table).map_err(|e| Error::Other(e.to_string()))?;
    Ok((cfg, text))
}

impl Config {
    pub fn validate(&self) -> Result<()> {
        let t = &self.train;
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
        if self.method.name == MethodName::Unimodal && self.method.modality.is_none() {
            return Err(Error::config("method.modality", "the unimodal method needs the modality to train (e.g. \"audio\")"));
        }
        let a = &self.method.aug;
        if !a.lambda.is_finite() || a.lambda < 0.0 {
            return Err(Error::config("method.aug.lambda", format!("must be >= 0, got {}", a.lambda)));
        }
        if a.hidden == 0 {
            return Err(Error::config("method.aug.hidden", "must be at least 1"));
        }
        if a.max_learners == Some(0) {
            return Err(Error::config("method.aug.max_learners", "must be at least 1 (or absent for no cap)"));
        }
        self.method.aim.validate()?;
        self.method.pmr.validate()?;
        self.method.mmpareto.validate()?;
        self.method.agm.validate()?;
        self.method.g_blending.validate()?;
        if !(self.method.ogm.alpha.is_finite() && self.method.ogm.alpha >= 0.0) {
            return Err(Error::config("method.ogm.alpha", "must be >= 0"));
        }
        let m = &self.model;
        for (name, o) in std::iter::once(("(all)", None)).chain(m.modalities.iter().map(|(k, v)| (k.as_str(), Some(v)))) {
            let mc = match o {
                Some(_) => m.for_modality(name),
                None => m.clone(),
            };
            let field = |f: &str| if o.is_some() { format!("model.modalities.{name}.{f}") } else { format!("model.{f}") };
            if mc.width == 0 {
                return Err(Error::config(field("width"), "must be at least 1"));
            }
            if mc.encoder == EncoderKind::SmallCnn && mc.depth == 0 {
                return Err(Error::config(field("depth"), "must be at least 1"));
            }
            if mc.encoder == EncoderKind::Transformer && (mc.heads == 0 || mc.width % mc.heads != 0) {
                return Err(Error::config(field("heads"), format!("width {} must be a multiple of heads {}", mc.width, mc.heads)));
            }
        }
        self.validate_values()
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

impl Config {
    /// Value checks added with the reliability work (NaN/inf, signs, orderings, widths);
    /// kept apart from `validate` so each section's rules read in one place.
    fn validate_values(&self) -> Result<()> {
        let t = &self.train;
        // typo guards: values this large are never meant and would run for ages or spawn
        // threads without bound
        for (f, v, max) in [("train.epochs", t.epochs, 1_000_000), ("train.workers", t.workers, 256), ("method.aim.prototype_steps", self.method.aim.prototype_steps, 1_000_000)] {
            if v > max {
                return Err(Error::config(f, format!("must be at most {max}, got {v}")));
            }
        }
        check_f32("train.gamma", t.gamma, t.gamma > 0.0, "a positive number")?;
        check_f32("train.min_lr", t.min_lr, t.min_lr >= 0.0 && t.min_lr <= t.lr, &format!("in [0, train.lr = {}]", t.lr))?;
        if t.warmup_epochs >= t.epochs {
            return Err(Error::config("train.warmup_epochs", format!("must be less than train.epochs ({}), got {}", t.epochs, t.warmup_epochs)));
        }
        let a = &self.method.aug;
        check_f32("method.aug.tau", a.tau, a.tau >= 0.0, ">= 0")?;
        check_f32("method.aug.sigma", a.sigma, a.sigma > 0.0, "> 0")?;
        check_f32("method.aug.multi_threshold", a.multi_threshold, a.multi_threshold > 0.0, "> 0")?;
        if let Some(w) = &a.fusion_weights {
            if let Some(v) = w.iter().find(|v| !(v.is_finite() && **v >= 0.0)) {
                return Err(Error::config("method.aug.fusion_weights", format!("values must be finite and >= 0, got {v}")));
            }
            if w.iter().sum::<f32>() <= 0.0 {
                return Err(Error::config("method.aug.fusion_weights", "at least one weight must be > 0"));
            }
        }
        if a.hidden > crate::limits::MAX_WIDTH {
            return Err(Error::config("method.aug.hidden", format!("must be at most {}, got {}", crate::limits::MAX_WIDTH, a.hidden)));
        }
        let o = &self.method.ogm;
        if o.start_epoch > o.end_epoch {
            return Err(Error::config("method.ogm.start_epoch", format!("must be <= method.ogm.end_epoch ({}), got {}", o.end_epoch, o.start_epoch)));
        }
        self.validate_model_sizes()
    }

    /// Every layer width >= 1 (a zero width trains a constant model) and at most
    /// [`crate::limits::MAX_WIDTH`].
    fn validate_model_sizes(&self) -> Result<()> {
        let m = &self.model;
        let max = crate::limits::MAX_WIDTH;
        let in_range = |v: usize| (1..=max).contains(&v);
        for (name, o) in std::iter::once(("", None)).chain(m.modalities.iter().map(|(k, v)| (k.as_str(), Some(v)))) {
            let mc = if o.is_some() { m.for_modality(name) } else { m.clone() };
            let field = |f: &str| if o.is_some() { format!("model.modalities.{name}.{f}") } else { format!("model.{f}") };
            if mc.encoder == EncoderKind::Mlp && mc.hidden.is_empty() {
                return Err(Error::config(field("hidden"), "needs at least one hidden width"));
            }
            if let Some(h) = mc.hidden.iter().find(|h| !in_range(**h)) {
                return Err(Error::config(field("hidden"), format!("widths must be in 1..={max}, got {h}")));
            }
            for (f, v) in [("width", mc.width), ("mlp_ratio", mc.mlp_ratio), ("patch", mc.patch[0]), ("patch", mc.patch[1])] {
                if !in_range(v) {
                    return Err(Error::config(field(f), format!("must be in 1..={max}, got {v}")));
                }
            }
            if mc.encoder == EncoderKind::Transformer && mc.layers == 0 {
                return Err(Error::config(field("layers"), "must be at least 1"));
            }
            if mc.depth > 16 {
                return Err(Error::config(field("depth"), format!("must be at most 16 (the width doubles per block), got {}", mc.depth)));
            }
        }
        if !in_range(m.fusion_hidden) {
            return Err(Error::config("model.fusion_hidden", format!("must be in 1..={max}, got {}", m.fusion_hidden)));
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
    unused.extend(never_acts(cfg));
    unused
}

/// Settings of the chosen method that can never take effect within `train.epochs`.
fn never_acts(cfg: &Config) -> Vec<String> {
    let e = cfg.train.epochs;
    let m = &cfg.method;
    let mut v = Vec::new();
    // AUG checks after epochs k·check_every (and the first, with check_after_first), never
    // after the last one
    let aug_checks = m.aug.check_every == 0 || m.aug.check_every < e || (m.aug.check_after_first && e >= 2);
    if m.name == MethodName::Aug && !aug_checks {
        v.push(format!("method.aug.check_every = {} never acts: no check falls before the last of train.epochs = {e}", m.aug.check_every));
    }
    if matches!(m.name, MethodName::Ogm | MethodName::OgmGe) && m.ogm.start_epoch >= e {
        v.push(format!("method.ogm.start_epoch = {} never acts: train.epochs is {e} (epochs count from 0)", m.ogm.start_epoch));
    }
    if m.name == MethodName::Pmr && m.pmr.start_epoch >= e {
        v.push(format!("method.pmr.start_epoch = {} never acts: train.epochs is {e} (epochs count from 0)", m.pmr.start_epoch));
    }
    if m.name == MethodName::Agm && m.agm.start_epoch >= e {
        v.push(format!("method.agm.start_epoch = {} never acts: train.epochs is {e} (epochs count from 0)", m.agm.start_epoch));
    }
    v
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
