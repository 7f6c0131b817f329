//! The trainer: epochs over a dataset with one method, evaluation on validation and test,
//! metrics for the fused model and every modality's own view, a JSON-lines log, atomic
//! checkpoints with resume, best-model selection on validation, and charts at the end.
pub mod checkpoint;
pub mod estimate;
pub mod fault;
pub mod logs;
pub mod metrics;
pub mod probe;
pub mod shapley;
pub mod rundir;
pub mod tune;
pub use tune::{format_tune_table, pretune};

use crate::config::{Config, OptimizerKind, ScheduleKind};
use crate::data::{self, Dataset, HostBatch, Loader, LoaderConfig, ModalitySpec, Split};
use crate::error::{Error, Result};
use crate::gpu::Gpu;
use crate::methods::{self, DeviceBatch, EpochStats, Method};
use crate::ops;
use crate::optim::{Adam, AdamConfig, LrSchedule, Optimizer, Param, Scheduler, Sgd, SgdConfig};
use crate::tensor::Tensor;
use metrics::Metrics;
use rand::SeedableRng;
use serde_json::{json, Value};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How [`train`] runs: where, and what to do with an existing run there.
#[derive(Clone, Debug)]
pub struct TrainOptions {
    /// Run folder: config, metrics, checkpoints, summary.
    pub run_dir: PathBuf,
    /// Continue from `run_dir/checkpoints/last.safetensors` (an error when it is missing).
    pub resume: bool,
    /// Replace a run already in `run_dir` (without it, reusing a run folder is an error).
    pub force: bool,
    /// Resume although the stored config differs (the differences are logged).
    pub allow_config_change: bool,
    /// Progress bars (hidden automatically when stderr is not a terminal).
    pub progress: bool,
    /// Steps the host may run ahead of the GPU.
    pub max_in_flight: usize,
    /// Stop after this many epochs of this invocation (tests of resume).
    pub stop_after: Option<usize>,
}

impl TrainOptions {
    /// Defaults: a new run in `run_dir`, progress bars on, 2 steps in flight.
    pub fn new(run_dir: impl Into<PathBuf>) -> Self {
        TrainOptions {
            run_dir: run_dir.into(),
            resume: false,
            force: false,
            allow_config_change: false,
            progress: true,
            max_in_flight: 2,
            stop_after: None,
        }
    }
}

/// Metrics of one evaluation pass.
#[derive(Clone, Debug, Default)]
pub struct EvalReport {
    /// Metrics of the fused prediction.
    pub fused: Metrics,
    /// Metrics of each modality's own logits, in dataset order (None where the method has no
    /// view of that modality).
    pub per_modality: Vec<Option<Metrics>>,
    /// Samples evaluated.
    pub samples: usize,
}

impl EvalReport {
    fn to_json(&self, names: &[String]) -> Value {
        let mut per = serde_json::Map::new();
        for (n, m) in names.iter().zip(&self.per_modality) {
            if let Some(m) = m {
                per.insert(n.clone(), json!({"acc": m.acc, "macro_f1": m.macro_f1, "map": m.map, "loss": m.loss}));
            }
        }
        json!({"loss": self.fused.loss, "acc": self.fused.acc, "macro_f1": self.fused.macro_f1, "map": self.fused.map, "per_modality": per})
    }
}

/// What a finished run reports.
#[derive(Clone, Debug)]
pub struct RunSummary {
    /// Modality names, in dataset order.
    pub modalities: Vec<String>,
    /// Test metrics of the final model.
    pub test: EvalReport,
    /// The epoch selected on validation (saved as `checkpoints/best.safetensors`) and its
    /// validation accuracy; None without a validation split.
    pub best_val: Option<(usize, f64)>,
    /// Epochs the model has trained, a resumed run's earlier ones included (for
    /// `eval_checkpoint`: the checkpoint's epoch count).
    pub epochs_run: usize,
    /// The run folder.
    pub run_dir: PathBuf,
}

impl RunSummary {
    /// A short human-readable table.
    pub fn table(&self) -> String {
        let mut s = String::new();
        s.push_str(&format!("{:<12} {:>8} {:>9} {:>8}\n", "view", "acc", "macro-F1", "mAP"));
        let row = |name: &str, m: &Metrics| format!("{:<12} {:>7.2}% {:>9.4} {:>8.4}\n", name, 100.0 * m.acc, m.macro_f1, m.map);
        s.push_str(&row("fused", &self.test.fused));
        for (n, m) in self.modalities.iter().zip(&self.test.per_modality) {
            match m {
                Some(m) => s.push_str(&row(n, m)),
                None => s.push_str(&format!("{:<12} {:>8}\n", n, "-")),
            }
        }
        if let Some((e, acc)) = self.best_val {
            s.push_str(&format!("(best on validation: epoch {}, {:.2}%: checkpoints/best.safetensors)\n", e + 1, 100.0 * acc));
        }
        s
    }
}

/// The optimizer `cfg.train` selects over `params`, wrapped in gradient-norm clipping when
/// `train.grad_clip` is set; errors name a bad optimizer setting.
pub fn build_optimizer(cfg: &Config, params: Vec<Param>) -> Result<Box<dyn Optimizer>> {
    let t = &cfg.train;
    let opt: Box<dyn Optimizer> = match t.optimizer {
        OptimizerKind::Sgd => Box::new(Sgd::new(
            &params,
            SgdConfig { lr: t.lr, momentum: t.momentum, dampening: 0.0, weight_decay: t.weight_decay, nesterov: t.nesterov },
        )?),
        OptimizerKind::Adam | OptimizerKind::Adamw => Box::new(Adam::new(
            &params,
            AdamConfig {
                lr: t.lr,
                beta1: t.beta1,
                beta2: t.beta2,
                eps: 1e-8,
                weight_decay: t.weight_decay,
                decoupled: t.optimizer == OptimizerKind::Adamw,
                amsgrad: false,
            },
        )?),
    };
    Ok(match t.grad_clip {
        Some(c) => Box::new(crate::optim::ClipGradNorm::new(opt, c)?),
        None => opt,
    })
}

/// Give `opt` the trainable parameters of `method` it does not know yet (those a restore
/// created, such as AUG's learners).
pub(crate) fn register_new_params(method: &dyn Method, opt: &mut dyn Optimizer) {
    let known: std::collections::HashSet<String> = opt.params().iter().map(|p| p.name.clone()).collect();
    let new: Vec<Param> = method.trainable().into_iter().filter(|p| !known.contains(&p.name)).collect();
    if !new.is_empty() {
        opt.add_params(&new);
    }
}

/// `opt` inside the dynamic loss scale (`optim::GradScaler`) where `cfg.train` asks for it:
/// `precision = "mixed"` with `loss_scale = "dynamic"`; else `opt` itself.
pub fn with_loss_scaling(gpu: &Gpu, cfg: &Config, opt: Box<dyn Optimizer>) -> Result<Box<dyn Optimizer>> {
    let t = &cfg.train;
    if t.precision == crate::config::Precision::Mixed && t.loss_scale == crate::config::LossScaleMode::Dynamic {
        Ok(Box::new(crate::optim::GradScaler::new(gpu, opt, t.loss_scale_interval)?))
    } else {
        Ok(opt)
    }
}

/// The learning-rate schedule `cfg.train` selects (with its warm-up).
pub fn build_scheduler(cfg: &Config) -> Scheduler {
    let t = &cfg.train;
    let schedule = match t.schedule {
        ScheduleKind::Constant => LrSchedule::Constant,
        ScheduleKind::Step => LrSchedule::Step { step_size: t.step_size, gamma: t.gamma },
        ScheduleKind::Cosine => LrSchedule::Cosine { total: t.epochs, min_lr: t.min_lr },
    };
    Scheduler::new(t.lr, schedule, t.warmup_epochs)
}

/// Upload a host batch (labels validated against the class count).
pub fn upload_batch(gpu: &Gpu, b: &HostBatch, classes: usize) -> Result<DeviceBatch> {
    let inputs = b.inputs.iter().map(|t| Tensor::from_slice(gpu, &t.data, &t.shape)).collect::<Result<Vec<_>>>()?;
    let labels = ops::labels(gpu, &b.labels, classes)?;
    Ok(DeviceBatch { inputs, labels, n: b.labels.len() })
}

/// Evaluate a method on one split (in order, no augmentation).
pub fn evaluate(gpu: &Gpu, method: &dyn Method, ds: &Arc<dyn Dataset>, split: Split, batch_size: usize, workers: usize) -> Result<EvalReport> {
    let k = ds.num_classes();
    let m = ds.modalities().len();
    let mut lc = LoaderConfig::eval(batch_size);
    lc.workers = workers;
    let loader = Loader::new(ds.clone(), split, lc)?;
    let mut fused = Vec::new();
    let mut per: Vec<Option<Vec<f32>>> = vec![Some(Vec::new()); m];
    let mut labels = Vec::new();
    for b in loader {
        let b = b?;
        let db = upload_batch(gpu, &b, k)?;
        let p = method.predict(&db.inputs)?;
        fused.extend(p.fused.to_vec()?);
        for (i, v) in p.per_modality.iter().enumerate() {
            match (v, &mut per[i]) {
                (Some(t), Some(acc)) => acc.extend(t.to_vec()?),
                _ => per[i] = None,
            }
        }
        labels.extend(b.labels);
    }
    if fused.iter().any(|v| !v.is_finite()) {
        return Err(Error::NonFinite(format!("{} logits contain NaN or Inf", split.as_str())));
    }
    Ok(EvalReport {
        fused: metrics::evaluate_logits(&fused, &labels, k),
        per_modality: per.iter().map(|p| p.as_ref().map(|v| metrics::evaluate_logits(v, &labels, k))).collect(),
        samples: labels.len(),
    })
}

fn progress_bar(show: bool, len: usize, prefix: String) -> indicatif::ProgressBar {
    if !show {
        return indicatif::ProgressBar::hidden();
    }
    let pb = indicatif::ProgressBar::new(len as u64);
    pb.set_style(
        indicatif::ProgressStyle::with_template("{prefix:>12} [{bar:30}] {pos}/{len} batches  {msg}  eta {eta}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    pb.set_prefix(prefix);
    pb
}

fn named_state(method: &dyn Method) -> Vec<(String, Tensor)> {
    let mut v: Vec<(String, Tensor)> = method.params().into_iter().map(|p| (p.name, p.tensor)).collect();
    v.extend(method.buffers());
    v
}

fn append_log(path: &Path, line: &Value) -> Result<()> {
    let mut f = std::fs::OpenOptions::new().create(true).append(true).open(path).map_err(|e| Error::io(path, e))?;
    writeln!(f, "{line}").map_err(|e| Error::io(path, e))?;
    f.sync_data().map_err(|e| Error::io(path, e))
}

/// Keep only log lines of epochs up to `last` (after a resume); `None` starts an empty log.
/// A line that does not parse is an error naming the file and line, except a final line
/// without its newline: that is an append a kill interrupted, dropped with a warning. A log
/// missing one of the epochs up to `last` is an error (it was lost or cut, not interrupted).
fn truncate_log(path: &Path, last: Option<usize>) -> Result<()> {
    let Some(last) = last else { return checkpoint::write_atomic(path, b"") };
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(Error::io(path, e)),
    };
    let complete = text.ends_with('\n');
    let lines: Vec<&str> = text.lines().collect();
    let mut kept = Vec::new();
    let mut logged = std::collections::BTreeSet::new();
    for (i, l) in lines.iter().enumerate() {
        let epoch = match serde_json::from_str::<Value>(l) {
            Ok(v) => v.get("epoch").and_then(|e| e.as_u64()),
            Err(_) if i + 1 == lines.len() && !complete => {
                eprintln!("warning: {}: dropping the unfinished last line {} (an interrupted write)", path.display(), i + 1);
                continue;
            }
            Err(e) => return Err(Error::data(path.display().to_string(), format!("line {}: not JSON ({e})", i + 1))),
        };
        let epoch = epoch.ok_or_else(|| Error::data(path.display().to_string(), format!("line {}: no `epoch` field", i + 1)))?;
        if epoch as usize <= last {
            kept.push(*l);
            logged.insert(epoch as usize);
        }
    }
    // every epoch is logged before its checkpoint is written: a missing line is a lost log,
    // and resuming would rebuild metrics.csv and the TensorBoard events from what is left
    if logged.len() != last + 1 {
        return Err(Error::data(
            path.display().to_string(),
            format!("holds {} of the {} epochs the checkpoint has run: the log lost lines; restore it, or start over with --force", logged.len(), last + 1),
        ));
    }
    let mut out = kept.join("\n");
    if !out.is_empty() {
        out.push('\n');
    }
    checkpoint::write_atomic(path, out.as_bytes())
}

/// An error restoring a method's or an optimizer's state names the checkpoint it came from
/// (a damaged `method_state` reads as a wrong config field otherwise); device errors pass.
fn from_checkpoint(path: &Path, e: Error) -> Error {
    match e {
        Error::Config { .. } | Error::Data { .. } | Error::Shape { .. } | Error::Other(_) => Error::data(path.display().to_string(), format!("checkpoint state: {e}")),
        other => other,
    }
}

/// Every line of `metrics.jsonl` (an unreadable line is an error naming it).
fn read_log(path: &Path) -> Result<Vec<Value>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io(path, e)),
    };
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| serde_json::from_str(l).map_err(|e| Error::data(path.display().to_string(), format!("line {}: {e}", i + 1))))
        .collect()
}

/// Bring `metrics.csv` and the TensorBoard events in line with `metrics.jsonl`: `appended`
/// is the line just added to it; None means the log was rewritten (a new run or a resume).
fn sync_logs(dir: &Path, log_path: &Path, appended: Option<&Value>) -> Result<()> {
    let lines = read_log(log_path)?;
    logs::write_csv(&dir.join("metrics.csv"), &lines)?;
    match appended {
        Some(l) => logs::append_tensorboard(dir, l),
        None => logs::write_tensorboard(dir, &lines),
    }
}

/// The error for a non-finite training loss: names the epoch and learning rate, and the
/// checkpoint to resume from only when one exists.
fn nan_loss_error(loss: f64, epoch: usize, method: &str, lr: f32, last: &Path) -> Error {
    let resume = if last.is_file() {
        format!("the last good checkpoint is {} (continue with --resume after lowering train.lr and passing --allow-config-change)", last.display())
    } else {
        "no checkpoint was written before it".to_string()
    };
    Error::NonFinite(format!("training loss is {loss} in epoch {} (method {method}, lr {lr}); {resume}; {DIVERGED}", epoch + 1))
}

/// What to try when training diverges: the rate, and the settings that scale it or the loss.
const DIVERGED: &str = "try a lower train.lr, or smaller values of what scales the rate or the loss (train.gamma of a step schedule, the method's loss weights or strengths)";

fn finite_or_null(v: f64) -> Value {
    if v.is_finite() {
        json!(v)
    } else {
        Value::Null
    }
}

/// Training needs samples to train on and to test on (an empty test split would report
/// NaN% accuracy after a full run).
fn check_splits(ds: &dyn Dataset) -> Result<()> {
    for split in [Split::Train, Split::Test] {
        if ds.len(split) == 0 {
            return Err(Error::config("data", format!("the {split} split of the {} dataset is empty", ds.name())));
        }
    }
    Ok(())
}

/// Seed offset of the observation pass's shuffle ([`Method::observe_fraction`]).
const OBSERVE_SEED: u64 = 0x5052_4f54_4f00;

/// The loader of `method`'s observation pass of `epoch`: a shuffle of its own over the
/// training split, augmented as training is where the method asks for it
/// ([`Method::observe_augmented`]).
pub fn observation_loader(cfg: &Config, method: &dyn Method, epoch: usize) -> LoaderConfig {
    let mut lc = LoaderConfig::train(cfg.train.batch_size, cfg.seed ^ OBSERVE_SEED, epoch as u64);
    lc.augment = method.observe_augmented(epoch);
    lc.workers = cfg.train.workers;
    lc
}

/// Seed offset of the shuffles of [`methods::EpochData::train_pass`].
const SIDE_SEED: u64 = 0x5349_4445_0000;

/// The trainer's side of [`methods::EpochData`].
struct SideData<'a> {
    gpu: &'a Gpu,
    cfg: &'a Config,
    ds: &'a Arc<dyn Dataset>,
    classes: usize,
    max_in_flight: usize,
}

impl SideData<'_> {
    fn pass(&self, loader: Loader, f: &mut dyn FnMut(&DeviceBatch) -> Result<()>) -> Result<()> {
        for b in loader {
            f(&upload_batch(self.gpu, &b?, self.classes)?)?;
            self.gpu.step_boundary(self.max_in_flight)?;
        }
        Ok(())
    }
}

impl methods::EpochData for SideData<'_> {
    fn train_pass(&mut self, pass: u64, f: &mut dyn FnMut(&DeviceBatch) -> Result<()>) -> Result<()> {
        let mut lc = LoaderConfig::train(self.cfg.train.batch_size, self.cfg.seed ^ SIDE_SEED, pass);
        lc.workers = self.cfg.train.workers;
        self.pass(Loader::new(self.ds.clone(), Split::Train, lc)?, f)
    }
    fn val_pass(&mut self, f: &mut dyn FnMut(&DeviceBatch) -> Result<()>) -> Result<()> {
        if self.ds.len(Split::Val) == 0 {
            return Err(Error::config("data", format!(
                "the {} dataset has no validation split, which this method estimates on; hold some training samples out (synthetic: data.n_val; avmnist, cremad: data.val_fraction)",
                self.ds.name()
            )));
        }
        let mut lc = LoaderConfig::eval(self.cfg.train.batch_size.max(64));
        lc.workers = self.cfg.train.workers;
        self.pass(Loader::new(self.ds.clone(), Split::Val, lc)?, f)
    }
    fn optimizer(&self, params: Vec<Param>) -> Result<Box<dyn Optimizer>> {
        build_optimizer(self.cfg, params)
    }
}

/// Train with `cfg`; everything goes into `opts.run_dir`.
pub fn train(gpu: &Gpu, cfg: &Config, cfg_text: &str, opts: &TrainOptions) -> Result<RunSummary> {
    let mixed = cfg.train.precision == crate::config::Precision::Mixed;
    let _precision = crate::autograd::autocast(mixed);
    if mixed && !gpu.capabilities().cooperative_matrix {
        eprintln!("note: mixed precision on {}: no cooperative matrices, so f16 operands with f32 arithmetic", gpu.info().name);
    }
    let dir = &opts.run_dir;
    let mut lock = rundir::claim(dir, rundir::Claim { resume: opts.resume, force: opts.force })?;
    let ds: Arc<dyn Dataset> = Arc::from(data::build(&cfg.data)?);
    let specs: Vec<ModalitySpec> = ds.modalities().to_vec();
    let run = Run::new(gpu, cfg, cfg_text, opts, ds);
    check_splits(run.ds.as_ref())?;
    estimate::check_model_fits(gpu.limits(), cfg, &specs, run.classes)?;

    let mut rng = rand::rngs::StdRng::seed_from_u64(cfg.seed);
    let mut method = methods::build(gpu, &cfg.method_setup(), &specs, run.classes, &mut rng)?;
    if run.ds.len(Split::Val) == 0 && (0..cfg.train.epochs).any(|e| method.observe_val_split(e)) {
        return Err(Error::config(
            "data",
            format!("method {} observes a validation split and the {} dataset has none (set data.n_val or data.val_fraction)", method.name(), run.ds.name()),
        ));
    }
    let mut opt = with_loss_scaling(gpu, cfg, build_optimizer(cfg, method.trainable())?)?;
    let sched = build_scheduler(cfg);
    lock.replace_old_run()?;

    let mut progress = Progress::default();
    let start_epoch = if opts.resume {
        run.resume(method.as_mut(), opt.as_mut(), &mut progress)?
    } else {
        truncate_log(&run.log_path, None)?;
        sync_logs(dir, &run.log_path, None)?;
        0
    };
    std::fs::write(dir.join("config.toml"), cfg_text).map_err(|e| Error::io(dir.join("config.toml"), e))?;
    progress.first_epoch = start_epoch;

    for epoch in start_epoch..cfg.train.epochs {
        if opts.stop_after.is_some_and(|s| progress.epochs_run >= s) {
            break;
        }
        run.epoch(epoch, &sched, method.as_mut(), opt.as_mut(), &mut progress)?;
    }
    if progress.epochs_run == 0 && start_epoch >= cfg.train.epochs {
        progress.last_test = run.evaluate(method.as_ref(), Split::Test)?;
    }
    run.finish(method.as_ref(), progress)
}

/// What every epoch of a training run reads: the device, the settings, the data and where
/// the run's files go.
struct Run<'a> {
    gpu: &'a Gpu,
    cfg: &'a Config,
    cfg_text: &'a str,
    opts: &'a TrainOptions,
    ds: Arc<dyn Dataset>,
    names: Vec<String>,
    classes: usize,
    has_val: bool,
    n_train: usize,
    last_path: PathBuf,
    best_path: PathBuf,
    log_path: PathBuf,
}

/// What the epochs of a run carry from one to the next.
#[derive(Default)]
struct Progress {
    /// Epoch and validation accuracy of the best epoch so far.
    best: Option<(usize, f64)>,
    /// What a resumed run changed, logged once with its first epoch.
    resume_note: Option<Value>,
    last_test: EvalReport,
    /// Epochs this invocation trained ...
    epochs_run: usize,
    /// ... from this one (the checkpoint's next epoch on a resume, else 0).
    first_epoch: usize,
}

impl<'a> Run<'a> {
    fn new(gpu: &'a Gpu, cfg: &'a Config, cfg_text: &'a str, opts: &'a TrainOptions, ds: Arc<dyn Dataset>) -> Self {
        let dir = &opts.run_dir;
        let ckpt_dir = dir.join("checkpoints");
        Run {
            gpu,
            cfg,
            cfg_text,
            opts,
            names: ds.modalities().iter().map(|s| s.name.clone()).collect(),
            classes: ds.num_classes(),
            has_val: ds.len(Split::Val) > 0,
            n_train: ds.len(Split::Train),
            ds,
            last_path: ckpt_dir.join("last.safetensors"),
            best_path: ckpt_dir.join("best.safetensors"),
            log_path: dir.join("metrics.jsonl"),
        }
    }

    /// Restores the method, the optimizer and `progress` (best epoch, resume note) from the
    /// last checkpoint and cuts the logs back to its epoch; returns the first epoch to run.
    fn resume(&self, method: &mut dyn Method, opt: &mut dyn Optimizer, progress: &mut Progress) -> Result<usize> {
        let (cfg, last_path) = (self.cfg, &self.last_path);
        let ck = checkpoint::load(last_path)?;
        let meta = &ck.meta;
        progress.resume_note = rundir::check_resume(last_path, meta, cfg, self.cfg_text, self.opts.allow_config_change)?;
        method.restore(meta.get("method_state").unwrap_or(&Value::Null), opt).map_err(|e| from_checkpoint(last_path, e))?;
        register_new_params(method, opt);
        checkpoint::restore_tensors(last_path, &ck.model, &named_state(method))?;
        opt.load_state_tensors(&ck.optim).map_err(|e| from_checkpoint(last_path, e))?;
        let epoch = rundir::checkpoint_epoch(last_path, meta, cfg)?;
        progress.best = meta.get("best").and_then(|b| Some((b.get("epoch")?.as_u64()? as usize, b.get("score")?.as_f64()?)));
        truncate_log(&self.log_path, Some(epoch))?;
        sync_logs(&self.opts.run_dir, &self.log_path, None)?;
        eprintln!("resuming from {} after epoch {}", last_path.display(), epoch + 1);
        Ok(epoch + 1)
    }

    /// One epoch: the method's observation pass if it has one, the training pass, the
    /// evaluation (every `eval_every` epochs and the last), the log record, the checkpoints.
    fn epoch(&self, epoch: usize, sched: &Scheduler, method: &mut dyn Method, opt: &mut dyn Optimizer, progress: &mut Progress) -> Result<()> {
        let (gpu, cfg) = (self.gpu, self.cfg);
        let t0 = Instant::now();
        // Phase ends give wholly free segments back to the driver: the last evaluation (and
        // below, the work before the epoch, such as AIM's prototype fitting) ran on shapes
        // the training steps do not use, so their free blocks would only sit beside them.
        gpu.trim_memory();
        gpu.reset_peak_memory();
        let lr = sched.lr_at(epoch);
        opt.set_lr(lr);
        method.begin_epoch(epoch)?;
        let mut side = SideData { gpu, cfg, ds: &self.ds, classes: self.classes, max_in_flight: self.opts.max_in_flight };
        method.before_epoch(epoch, &mut side).map_err(|e| e.during(format_args!("the work before epoch {} ({})", epoch + 1, method.name())))?;
        if let Some(share) = method.observe_fraction(epoch) {
            self.observation_pass(method, epoch, share)?;
        }
        gpu.trim_memory();
        let (stats, wait) = self.training_pass(method, opt, epoch, t0)?;
        let train_secs = t0.elapsed().as_secs_f64();
        let wait_share = wait.as_secs_f64() / train_secs.max(1e-9);
        let scaling = opt.grad_scaler().map(|s| (s.take_counts(), s.scale()));
        if let Some((c, s)) = scaling.filter(|(c, _)| c.steps > 0 && c.skipped == c.steps) {
            return Err(Error::NonFinite(format!(
                "every one of the {} steps of epoch {} (method {}) had an inf or NaN gradient and was skipped (loss scale now {s}), so the model makes no progress: an activation beyond f16's range (try train.precision = \"f32\") or a diverged model ({DIVERGED})",
                c.steps,
                epoch + 1,
                method.name()
            )));
        }
        // a skipped step's loss is in the epoch's mean, its gradients are not in the weights
        let skipped_some = scaling.is_some_and(|(c, _)| c.skipped > 0);
        if !stats.loss.is_finite() && !skipped_some {
            return Err(nan_loss_error(stats.loss, epoch, method.name(), lr, &self.last_path));
        }

        let do_eval = (epoch + 1) % cfg.train.eval_every == 0 || epoch + 1 == cfg.train.epochs;
        let mut line = self.epoch_record(epoch, lr, method.name(), &stats, wait_share, train_secs);
        if let Some((c, s)) = scaling {
            line["loss_scale"] = json!({"scale": s, "steps": c.steps, "skipped_steps": c.skipped});
        }
        if let Some(note) = progress.resume_note.take() {
            line["resume"] = note;
        }
        let mut val_acc = None;
        if do_eval {
            val_acc = self.evaluate_epoch(method, &mut line, &mut progress.last_test).map_err(|e| match e {
                Error::NonFinite(m) => Error::NonFinite(format!("{m} after epoch {} (method {}): the model diverged; {DIVERGED}", epoch + 1, method.name())),
                other => other,
            })?;
            self.print_epoch(epoch, &stats, &progress.last_test, val_acc, train_secs, wait_share);
        }
        append_log(&self.log_path, &line)?;
        sync_logs(&self.opts.run_dir, &self.log_path, Some(&line))?;

        if let Some(v) = val_acc {
            if progress.best.is_none_or(|(_, s)| v > s) {
                progress.best = Some((epoch, v));
            }
        }
        self.save_checkpoints(epoch, method, opt, progress.best, val_acc)?;
        progress.epochs_run += 1;
        Ok(())
    }

    /// A pass of its own shuffle over a share of the training data, for methods that look
    /// at the data before training on it (the official PMR code draws its prototype batches
    /// from a fresh iteration of the shuffled training loader).
    fn observation_pass(&self, method: &mut dyn Method, epoch: usize, share: f64) -> Result<()> {
        let (gpu, cfg) = (self.gpu, self.cfg);
        let loader = Loader::new(self.ds.clone(), Split::Train, observation_loader(cfg, method, epoch))?;
        let take = ((loader.num_batches() as f64 * share).floor() as usize).clamp(1, loader.num_batches().max(1));
        for b in loader.take(take) {
            let db = upload_batch(gpu, &b?, self.classes)?;
            method.observe(&db, epoch).map_err(|e| e.during(format_args!("observation pass of epoch {} ({})", epoch + 1, method.name())))?;
            gpu.step_boundary(self.opts.max_in_flight)?;
        }
        if method.observe_val_split(epoch) {
            self.validation_observation_pass(method, epoch)?;
        }
        method.end_observe(epoch)
    }

    /// The whole validation split, in order, for methods that compare what they see there
    /// with the training split (Re-learning's diagnosis).
    fn validation_observation_pass(&self, method: &mut dyn Method, epoch: usize) -> Result<()> {
        let (gpu, cfg) = (self.gpu, self.cfg);
        let mut lc = LoaderConfig::eval(cfg.train.batch_size);
        lc.workers = cfg.train.workers;
        for b in Loader::new(self.ds.clone(), Split::Val, lc)? {
            let db = upload_batch(gpu, &b?, self.classes)?;
            method.observe_val(&db, epoch).map_err(|e| e.during(format_args!("validation observation pass of epoch {} ({})", epoch + 1, method.name())))?;
            gpu.step_boundary(self.opts.max_in_flight)?;
        }
        Ok(())
    }

    /// The training steps over the shuffled training split and the method's end of epoch;
    /// returns its statistics and the time spent waiting for data.
    fn training_pass(&self, method: &mut dyn Method, opt: &mut dyn Optimizer, epoch: usize, t0: Instant) -> Result<(EpochStats, Duration)> {
        let (gpu, cfg) = (self.gpu, self.cfg);
        let bs = cfg.train.batch_size;
        let mut lc = LoaderConfig::train(bs, cfg.seed, epoch as u64);
        lc.workers = cfg.train.workers;
        lc.drop_last = cfg.train.drop_last && self.n_train > bs;
        let loader = Loader::new(self.ds.clone(), Split::Train, lc)?;
        method.set_epoch_batches(loader.num_batches());
        let pb = progress_bar(self.opts.progress, loader.num_batches(), format!("epoch {}/{}", epoch + 1, cfg.train.epochs));
        // the backward passes of the steps (and only theirs) are scaled by the optimizer's loss scale
        let _scaled = opt.grad_scaler().map(|s| crate::autograd::loss_scaling(s.loss_scale()));
        let mut loader = loader;
        let mut seen = 0usize;
        for b in loader.by_ref() {
            let b = b?;
            let db = upload_batch(gpu, &b, self.classes)?;
            method.train_step(&db, opt, epoch).map_err(|e| e.during(format_args!("training step of epoch {} ({})", epoch + 1, method.name())))?;
            gpu.step_boundary(self.opts.max_in_flight)?;
            seen += b.labels.len();
            pb.inc(1);
            let el = t0.elapsed().as_secs_f64().max(1e-9);
            pb.set_message(format!("{:.0} samples/s", seen as f64 / el));
        }
        let stats = method.end_epoch(epoch, opt)?;
        pb.finish_and_clear();
        Ok((stats, loader.wait_time()))
    }

    /// The epoch's log record without its evaluation: learning rate, training losses,
    /// imbalance of the modality scores, the method's own statistics, memory high-water marks.
    fn epoch_record(&self, epoch: usize, lr: f32, method: &str, stats: &EpochStats, wait_share: f64, train_secs: f64) -> Value {
        let names = &self.names;
        let mut line = json!({
            "epoch": epoch,
            "lr": lr,
            "method": method,
            "modalities": names,
        });
        let mut per_loss = serde_json::Map::new();
        for (n, l) in names.iter().zip(&stats.modality_loss) {
            per_loss.insert(n.clone(), finite_or_null(*l));
        }
        line["train"] = json!({"loss": stats.loss, "per_modality_loss": per_loss, "data_wait_share": wait_share, "seconds": train_secs, "samples": stats.samples});
        let scores: Vec<f64> = stats.scores.iter().map(|s| s / stats.samples.max(1) as f64).collect();
        let finite: Vec<f64> = scores.iter().copied().filter(|v| v.is_finite()).collect();
        if finite.len() >= 2 {
            let mx = finite.iter().cloned().fold(f64::MIN, f64::max);
            let mn = finite.iter().cloned().fold(f64::MAX, f64::min);
            let mut sc = serde_json::Map::new();
            for (n, s) in names.iter().zip(&scores) {
                sc.insert(n.clone(), finite_or_null(*s));
            }
            line["imbalance"] = json!({"scores": sc, "ratio": mx / mn.max(1e-12)});
        }
        for (k, v) in &stats.extra {
            line[k.as_str()] = v.clone();
        }
        // this epoch's training high-water marks (PyTorch's max_memory_allocated / _reserved)
        let mem = self.gpu.memory();
        line["memory"] = json!({"peak_allocated_mib": mem.peak_allocated as f64 / 1048576.0, "peak_reserved_mib": mem.peak_reserved as f64 / 1048576.0});
        line
    }

    fn evaluate(&self, method: &dyn Method, split: Split) -> Result<EvalReport> {
        evaluate(self.gpu, method, &self.ds, split, self.cfg.train.batch_size.max(64), self.cfg.train.workers)
    }

    /// Validation (when the data has a validation split) and test of the epoch's model,
    /// added to the record; returns the validation accuracy.
    fn evaluate_epoch(&self, method: &dyn Method, line: &mut Value, last_test: &mut EvalReport) -> Result<Option<f64>> {
        let mut val_acc = None;
        if self.has_val {
            let v = self.evaluate(method, Split::Val)?;
            val_acc = Some(v.fused.acc);
            line["val"] = v.to_json(&self.names);
        }
        *last_test = self.evaluate(method, Split::Test)?;
        line["test"] = last_test.to_json(&self.names);
        Ok(val_acc)
    }

    /// The epoch's line on stderr.
    fn print_epoch(&self, epoch: usize, stats: &EpochStats, test: &EvalReport, val_acc: Option<f64>, train_secs: f64, wait_share: f64) {
        let mut msg = format!(
            "epoch {:>3}/{}  loss {:.4}  test acc {:.2}%",
            epoch + 1,
            self.cfg.train.epochs,
            stats.loss,
            100.0 * test.fused.acc
        );
        for (n, m) in self.names.iter().zip(&test.per_modality) {
            if let Some(m) = m {
                msg.push_str(&format!("  {n} {:.2}%", 100.0 * m.acc));
            }
        }
        if let Some(v) = val_acc {
            msg.push_str(&format!("  (val {:.2}%)", 100.0 * v));
        }
        msg.push_str(&format!("  [{train_secs:.1}s, data wait {:.0}%]", 100.0 * wait_share));
        eprintln!("{msg}");
    }

    /// `best` when this epoch's validation accuracy is the best so far, then the method's
    /// `after_eval`, then `last` (model and optimizer state, to resume from).
    fn save_checkpoints(&self, epoch: usize, method: &mut dyn Method, opt: &mut dyn Optimizer, best: Option<(usize, f64)>, val_acc: Option<f64>) -> Result<()> {
        let cfg = self.cfg;
        let meta = |method: &dyn Method| {
            json!({
                "epoch": epoch,
                "method": method.name(),
                "method_state": method.state(),
                "best": best.map(|(e, s)| json!({"epoch": e, "score": s})),
                "config": self.cfg_text,
            })
        };
        // the best checkpoint is the model that was evaluated, before `after_eval` changes it
        if cfg.train.checkpoint && val_acc.is_some() && best.is_some_and(|(e, _)| e == epoch) {
            let model = checkpoint::download(&named_state(method))?;
            checkpoint::save(&self.best_path, &model, &[], &meta(method))?;
        }
        // model changes decided at the end of the epoch join only now, after it was evaluated
        method.after_eval(epoch, opt)?;
        if cfg.train.checkpoint {
            let model = checkpoint::download(&named_state(method))?;
            let optim = opt.state_tensors()?;
            checkpoint::save(&self.last_path, &model, &optim, &meta(method))?;
        }
        Ok(())
    }

    /// The run's summary, the linear probe when asked for, and `summary.txt`.
    fn finish(self, method: &dyn Method, progress: Progress) -> Result<RunSummary> {
        let dir = &self.opts.run_dir;
        let best_val = progress.best.filter(|_| self.has_val);
        let epochs_run = progress.first_epoch + progress.epochs_run;
        let summary = RunSummary { modalities: self.names, test: progress.last_test, best_val, epochs_run, run_dir: dir.clone() };
        let mut table = summary.table();
        if self.cfg.train.probe {
            table.push_str(&write_probe(self.gpu, method, &self.ds, &summary.modalities, self.cfg.train.batch_size.max(64), dir, &self.log_path)?);
        }
        let summary_path = dir.join("summary.txt");
        if let Err(e) = checkpoint::write_atomic(&summary_path, table.as_bytes()) {
            eprintln!("warning: {e}");
        }
        Ok(summary)
    }
}

/// Evaluate a saved checkpoint (a `.safetensors` file or a run directory, which uses
/// `checkpoints/best.safetensors` when present, else `last`) on its dataset's test split (and
/// validation when present).
pub fn eval_checkpoint(gpu: &Gpu, path: &Path, sets: &[String]) -> Result<(RunSummary, Option<EvalReport>)> {
    let Restored { file, cfg, ds, method, epoch } = restore_checkpoint(gpu, path, sets)?;
    if ds.len(Split::Test) == 0 {
        return Err(Error::config("data", format!("the test split of the {} dataset is empty: nothing to evaluate", ds.name())));
    }
    let _precision = crate::autograd::autocast(cfg.train.precision == crate::config::Precision::Mixed);
    let specs = ds.modalities().to_vec();
    let bs = cfg.train.batch_size.max(64);
    let test = evaluate(gpu, method.as_ref(), &ds, Split::Test, bs, cfg.train.workers)?;
    let val = if ds.len(Split::Val) > 0 { Some(evaluate(gpu, method.as_ref(), &ds, Split::Val, bs, cfg.train.workers)?) } else { None };
    Ok((
        RunSummary {
            modalities: specs.iter().map(|s| s.name.clone()).collect(),
            test,
            best_val: None,
            epochs_run: epoch + 1,
            run_dir: file.parent().and_then(|p| p.parent()).unwrap_or(Path::new(".")).to_path_buf(),
        },
        val,
    ))
}

/// The linear probe of the trained encoders and the modalities' Shapley contributions into
/// `dir/probe.json` and, as scalars `probe/<m>/acc`, `probe/<m>/macro_f1` and
/// `shapley/<m>` at the step of the last logged epoch, into the TensorBoard events (not
/// into `metrics.jsonl` and `metrics.csv`: those hold one record per epoch, which resume
/// and `compare` rely on); returns their table rows.
fn write_probe(gpu: &Gpu, method: &dyn Method, ds: &Arc<dyn Dataset>, names: &[String], batch: usize, dir: &Path, log_path: &Path) -> Result<String> {
    let res = probe::linear_probe(gpu, method, ds, batch, &probe::ProbeConfig::default())?;
    let mut rows = String::from("linear probe of the frozen encoders (test):\n");
    for (n, m) in names.iter().zip(&res) {
        if let Some(m) = m {
            rows.push_str(&format!("{:<12} {:>7.2}% {:>9.4}\n", n, 100.0 * m.acc, m.macro_f1));
        }
    }
    // and each modality's Shapley contribution to the fused accuracy
    let v = shapley::subset_accuracies(gpu, method, ds, batch)?;
    let record = probe::ProbeRecord::new(names, &res, &v);
    rows.push_str("Shapley contribution to fused test accuracy (absent modalities' inputs zeroed):\n");
    for n in names {
        rows.push_str(&format!("{:<12} {:>+7.2} points\n", n, 100.0 * record.shapley[n]));
    }
    record.write(&dir.join(probe::PROBE_FILE))?;
    let last_epoch = read_log(log_path)?.iter().rev().find_map(|l| l.get("epoch")?.as_i64()).unwrap_or(-1);
    logs::append_tensorboard(dir, &json!({"epoch": last_epoch, "probe": record.probe, "shapley": record.shapley}))?;
    Ok(rows)
}

/// A checkpoint's model, rebuilt from its stored config (with `sets` applied) on its data.
struct Restored {
    file: PathBuf,
    cfg: Config,
    ds: Arc<dyn Dataset>,
    method: Box<dyn Method>,
    /// the checkpoint's epoch (0-based)
    epoch: usize,
}

/// Load `path` (a checkpoint, or a run directory: its best checkpoint, else its last).
fn restore_checkpoint(gpu: &Gpu, path: &Path, sets: &[String]) -> Result<Restored> {
    let file = if path.is_dir() {
        let best = path.join("checkpoints/best.safetensors");
        if best.exists() {
            best
        } else {
            path.join("checkpoints/last.safetensors")
        }
    } else {
        path.to_path_buf()
    };
    let ck = checkpoint::load(&file)?;
    let text = ck
        .meta
        .get("config")
        .and_then(|c| c.as_str())
        .ok_or_else(|| Error::data(file.display().to_string(), "metadata has no config"))?;
    let mut table: toml::Table = text.parse().map_err(|e| Error::data(file.display().to_string(), format!("stored config: {e}")))?;
    crate::config::apply_overrides(&mut table, sets)?;
    crate::config::default_data_kind(&mut table);
    let cfg = crate::config::from_table(&table)?;
    let ds: Arc<dyn Dataset> = Arc::from(data::build(&cfg.data)?);
    let specs: Vec<ModalitySpec> = ds.modalities().to_vec();
    estimate::check_model_fits(gpu.limits(), &cfg, &specs, ds.num_classes())?;
    let mut rng = rand::rngs::StdRng::seed_from_u64(cfg.seed);
    let mut method = methods::build(gpu, &cfg.method_setup(), &specs, ds.num_classes(), &mut rng)?;
    let mut opt = build_optimizer(&cfg, method.trainable())?;
    method.restore(ck.meta.get("method_state").unwrap_or(&Value::Null), opt.as_mut()).map_err(|e| from_checkpoint(&file, e))?;
    checkpoint::restore_tensors(&file, &ck.model, &named_state(method.as_ref()))?;
    let epoch = ck.meta.get("epoch").and_then(|e| e.as_u64()).unwrap_or(0) as usize;
    Ok(Restored { file, cfg, ds, method, epoch })
}

/// The linear probe (`probe::linear_probe`) of a checkpoint's encoders: each modality's
/// test accuracy of a logistic regression fit on its frozen features.
pub fn probe_checkpoint(gpu: &Gpu, path: &Path, sets: &[String], probe: &probe::ProbeConfig) -> Result<UnimodalMetrics> {
    let Restored { cfg, ds, method, .. } = restore_checkpoint(gpu, path, sets)?;
    let batch = cfg.train.batch_size.max(64);
    let v = shapley::subset_accuracies(gpu, method.as_ref(), &ds, batch)?;
    Ok(UnimodalMetrics {
        modalities: ds.modalities().iter().map(|s| s.name.clone()).collect(),
        probe: probe::linear_probe(gpu, method.as_ref(), &ds, batch, probe)?,
        shapley: shapley::shapley(&v, ds.modalities().len()),
        subsets: v,
    })
}

/// A checkpoint's linear-probe accuracies and Shapley contributions, per modality.
pub struct UnimodalMetrics {
    /// Modality names, in dataset order.
    pub modalities: Vec<String>,
    /// Linear-probe test metrics per modality (None where the method has no encoder for it).
    pub probe: Vec<Option<Metrics>>,
    /// share of the fused test accuracy, as a fraction
    pub shapley: Vec<f64>,
    /// Fused test accuracy v(S) of every subset S of the modalities (bit i: modality i
    /// present), from which `shapley` is computed.
    pub subsets: Vec<f64>,
}

impl UnimodalMetrics {
    /// The same figures as `probe.json` holds them.
    pub fn record(&self) -> probe::ProbeRecord {
        probe::ProbeRecord::new(&self.modalities, &self.probe, &self.subsets)
    }
}
