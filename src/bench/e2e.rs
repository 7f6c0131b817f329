//! End-to-end benchmarks of the CREMA-D AUG model (performance.md's workload): two ResNet18
//! encoders from scratch (audio 1×257×188, visual 3×224×224), Linear(512→256)+ReLU per
//! modality, a shared head 256→6, SGD momentum 0.9, weight decay 1e-4, batch 64.
//!
//! Every step is timed by wall clock with the queue drained at both ends (the GPU is idle
//! when the clock starts and when it stops), median over ≥ 20 steps after warm-up, as
//! PyTorch's timing reference (docs/gpu.md) times its steps. Memory is the
//! pool's footprint after the steps (`in_use + cached`: every segment the pool holds, which
//! after a case's steps is its high-water mark), what the device holds; and the allocated and
//! reserved peaks as PyTorch reports them.
use crate::config::Config;
use crate::methods::{EncoderKind, MethodName};
use crate::data::ModalitySpec;
use crate::error::Result;
use crate::gpu::Gpu;
use crate::methods::{Aug, DeviceBatch, Method};
use crate::nn::{Ctx, Encoder, Linear, Module, ResNet18};
use crate::ops;
use crate::optim::{Optimizer, Param};
use crate::tensor::Tensor;
use rand::rngs::StdRng;
use rand::SeedableRng;
use std::time::Instant;

/// One timed step; the argument is the step index (for rotating batches).
pub type E2eStep = Box<dyn FnMut(usize) -> Result<()>>;

/// An end-to-end case: builds its model, optimizer and batches, then runs one step per call.
pub struct E2eCase {
    /// Case name, matched by `--filter`.
    pub name: String,
    /// The sizes, for the report.
    pub shape: String,
    /// Builds everything outside the timed region and returns the step function.
    pub setup: Box<dyn Fn(&Gpu) -> Result<E2eStep>>,
}

#[derive(Clone, Debug)]
/// Options of [`run_e2e`]. `Default`: every case, 20 timed steps after 3 warm-up steps.
pub struct E2eOptions {
    /// Only cases whose name contains this (one that matches nothing is an error).
    pub filter: Option<String>,
    /// Timed steps (performance.md asks for ≥ 20).
    pub steps: usize,
    /// Untimed steps before the timed ones (pipelines compiled, pool warmed).
    pub warmup: usize,
}

impl Default for E2eOptions {
    fn default() -> Self {
        E2eOptions { filter: None, steps: 20, warmup: 3 }
    }
}

impl E2eOptions {
    /// Defaults: 20 timed steps after 3 warm-up steps; quick (software rasteriser smoke
    /// runs, not figures): 5 after 1. `steps` overrides the count.
    pub fn new(quick: bool, filter: Option<String>, steps: Option<usize>) -> E2eOptions {
        let (d, warmup) = if quick { (5, 1) } else { (20, 3) };
        E2eOptions { filter, steps: steps.unwrap_or(d).max(1), warmup }
    }
}

/// One result row.
#[derive(Clone, Debug, serde::Serialize)]
pub struct E2eRow {
    /// Case name.
    pub name: String,
    /// The sizes.
    pub shape: String,
    /// Timed steps.
    pub steps: usize,
    /// Median wall time of a step, from a drained queue to a drained queue, ms.
    pub median_ms: f64,
    /// Fastest step, ms.
    pub min_ms: f64,
    /// Slowest step, ms.
    pub max_ms: f64,
    /// Median host time to record a step (until the step function returns; the GPU may
    /// already run earlier parts of it when the engine flushes mid-step).
    pub record_ms: f64,
    /// Queue submissions per timed step.
    pub submits_per_step: f64,
    /// Kernel launches per timed step.
    pub dispatches_per_step: f64,
    /// Buffer pool footprint after the steps (in use + cached), MiB.
    pub pool_mib: f64,
    /// Of which held by live tensors after the last step (parameters, optimizer state,
    /// batches), MiB.
    pub in_use_mib: f64,
    /// High-water mark over the case (setup, warm-up and timed steps) of the bytes live
    /// tensors asked for, MiB (as PyTorch's `max_memory_allocated`).
    pub peak_allocated_mib: f64,
    /// High-water mark over the case of the bytes held from the driver, MiB (as PyTorch's
    /// `max_memory_reserved`).
    pub peak_reserved_mib: f64,
}

/// Sizes of the end-to-end model.
#[derive(Clone, Debug, PartialEq)]
pub struct E2eSize {
    /// Samples per step.
    pub batch: usize,
    /// ResNet base width (64 in ResNet18)
    pub base: usize,
    /// audio input [C, H, W]
    pub audio: Vec<usize>,
    /// visual input [C, H, W]
    pub visual: Vec<usize>,
}

impl E2eSize {
    /// The CREMA-D model at batch 64 (1×257×188 audio, 3×224×224 frames, base 64), or with
    /// `quick` a tiny one (base 8, batch 4, 1×33×24 / 3×32×32).
    pub fn new(quick: bool) -> E2eSize {
        if quick {
            E2eSize { batch: 4, base: 8, audio: vec![1, 33, 24], visual: vec![3, 32, 32] }
        } else {
            E2eSize { batch: 64, base: 64, audio: vec![1, 257, 188], visual: vec![3, 224, 224] }
        }
    }
    /// The same model at another batch size (e.g. to fit a device's buffer limits).
    pub fn with_batch(mut self, batch: usize) -> E2eSize {
        self.batch = batch.max(1);
        self
    }
}

fn model_dims(z: &E2eSize) -> (usize, usize, Vec<usize>, Vec<usize>) {
    (z.batch, z.base, z.audio.clone(), z.visual.clone())
}

fn specs(quick: &E2eSize) -> Vec<ModalitySpec> {
    let (_, _, a, v) = model_dims(quick);
    vec![ModalitySpec::new("audio", a), ModalitySpec::new("visual", v)]
}

/// The AUG configuration of the CREMA-D model: ResNet18 encoders, learners of width 256,
/// SGD momentum 0.9, weight decay 1e-4 (lr as in the PyTorch reference).
fn aug_config(quick: &E2eSize) -> Config {
    let (batch, base, _, _) = model_dims(quick);
    let mut cfg = Config::default();
    cfg.model.encoder = EncoderKind::Resnet18;
    cfg.model.width = base;
    cfg.method.name = MethodName::Aug;
    cfg.method.aug.hidden = 256;
    cfg.train.batch_size = batch;
    cfg.train.lr = 1e-3;
    cfg.train.momentum = 0.9;
    cfg.train.weight_decay = 1e-4;
    cfg
}

const CLASSES: usize = 6;

/// Two random batches on the device (steps alternate between them).
fn batches(gpu: &Gpu, quick: &E2eSize) -> Result<Vec<DeviceBatch>> {
    let (n, _, a, v) = model_dims(quick);
    (0..2u64)
        .map(|i| {
            let mut sa = vec![n];
            sa.extend(&a);
            let mut sv = vec![n];
            sv.extend(&v);
            let lab: Vec<u32> = (0..n).map(|j| ((j as u64 * 5 + i) % CLASSES as u64) as u32).collect();
            Ok(DeviceBatch {
                inputs: vec![ops::randn(gpu, &sa, 0xE2E0 + i, 0)?, ops::randn(gpu, &sv, 0xE2E0 + i, 1 << 32)?],
                labels: ops::labels(gpu, &lab, CLASSES)?,
                n,
            })
        })
        .collect()
}

/// The same model assembled from modules, for the steps that the AUG method does not have
/// (PyTorch reference's `joint` and `audio_only`): logits_m = fc(relu(emb_m(enc_m(x_m)))).
struct AvModel {
    enc: [ResNet18; 2],
    emb: [Linear; 2],
    fc: Linear,
}

impl AvModel {
    fn new(gpu: &Gpu, quick: &E2eSize) -> Result<AvModel> {
        let (_, base, a, v) = model_dims(quick);
        let mut rng = StdRng::seed_from_u64(7);
        Ok(AvModel {
            enc: [ResNet18::new(gpu, "enc.audio", a[0], base, &mut rng)?, ResNet18::new(gpu, "enc.visual", v[0], base, &mut rng)?],
            emb: [Linear::new(gpu, "emb.audio", 8 * base, 256, true, &mut rng)?, Linear::new(gpu, "emb.visual", 8 * base, 256, true, &mut rng)?],
            fc: Linear::new(gpu, "fc", 256, CLASSES, true, &mut rng)?,
        })
    }
    fn params(&self) -> Vec<Param> {
        let mut v: Vec<Param> = self.enc.iter().flat_map(|e| e.params()).collect();
        for l in &self.emb {
            v.extend(l.params());
        }
        v.extend(self.fc.params());
        v
    }
    fn logits(&self, m: usize, x: &Tensor, ctx: &Ctx) -> Result<Tensor> {
        let u = self.enc[m].forward(x, ctx)?;
        self.fc.forward(&ops::relu(&self.emb[m].forward(&u, ctx)?)?, ctx)
    }
}

fn shape_label(quick: &E2eSize, visual: bool) -> String {
    let (n, base, a, v) = model_dims(quick);
    let d = |s: &[usize]| s.iter().map(|x| x.to_string()).collect::<Vec<_>>().join("x");
    if visual {
        format!("b{n} a{} v{} base{base}", d(&a), d(&v))
    } else {
        format!("b{n} a{} base{base}", d(&a))
    }
}

/// The end-to-end group: AUG step (audio step + visual step, `methods::Aug`; also with
/// `model.recompute`), joint step
/// (one backward through both encoders, logits summed before the cross-entropy), eval
/// forward (`Aug::predict`) and one audio ResNet18 step. `quick`: ResNet base width 8 at
/// batch 4 on 1×33×24 / 3×32×32 (seconds on a software rasteriser).
pub fn e2e_cases(quick: bool) -> Vec<E2eCase> {
    e2e_cases_sized(&E2eSize::new(quick))
}

/// [`e2e_cases`] for a model of the given size.
pub fn e2e_cases_sized(size: &E2eSize) -> Vec<E2eCase> {
    let shape = shape_label(size, true);
    let mut v = Vec::new();
    // aug_step_recompute: the same step with model.recompute (its memory and time beside
    // aug_step's are the switch's measured cost); aug_step_mixed: with train.precision =
    // "mixed" (f16 operands for the GEMMs, under the autocast guard while it runs);
    // eval_forward_mixed: the evaluation forward under it (against PyTorch's bf16 autocast)
    let rows = [
        ("aug_step", true, false, false),
        ("aug_step_recompute", true, true, false),
        ("aug_step_mixed", true, false, true),
        ("eval_forward", false, false, false),
        ("eval_forward_mixed", false, false, true),
    ];
    for (name, train, recompute, mixed) in rows {
        let quick = size.clone();
        v.push(E2eCase {
            name: name.into(),
            shape: shape.clone(),
            setup: Box::new(move |gpu| {
                let quick = &quick;
                let mut cfg = aug_config(quick);
                cfg.model.recompute = recompute;
                if mixed {
                    cfg.train.precision = crate::config::Precision::Mixed;
                }
                let mut rng = StdRng::seed_from_u64(cfg.seed);
                let mut method = Aug::new(gpu, &cfg.method_setup(), &specs(quick), CLASSES, &mut rng)?;
                // a mixed step is timed as the trainer runs it: with the loss scale's check
                let mut opt = crate::train::with_loss_scaling(gpu, &cfg, crate::train::build_optimizer(&cfg, method.trainable())?)?;
                let bs = batches(gpu, quick)?;
                Ok(Box::new(move |i| {
                    let b = &bs[i % bs.len()];
                    let _precision = crate::autograd::autocast(mixed);
                    if train {
                        let _scaled = opt.grad_scaler().map(|s| crate::autograd::loss_scaling(s.loss_scale()));
                        method.train_step(b, opt.as_mut(), 0)
                    } else {
                        method.predict(&b.inputs).map(|_| ())
                    }
                }))
            }),
        });
    }
    for (name, joint) in [("joint_step", true), ("audio_resnet18_step", false)] {
        let quick = size.clone();
        v.push(E2eCase {
            name: name.into(),
            shape: shape_label(&quick, joint),
            setup: Box::new(move |gpu| {
                let quick = &quick;
                let cfg = aug_config(quick);
                let model = AvModel::new(gpu, quick)?;
                let mut opt: Box<dyn Optimizer> = crate::train::build_optimizer(&cfg, model.params())?;
                let bs = batches(gpu, quick)?;
                Ok(Box::new(move |i| {
                    let b = &bs[i % bs.len()];
                    let ctx = Ctx::train();
                    let logits = if joint {
                        ops::add(&model.logits(0, &b.inputs[0], &ctx)?, &model.logits(1, &b.inputs[1], &ctx)?)?
                    } else {
                        model.logits(0, &b.inputs[0], &ctx)?
                    };
                    let loss = ops::cross_entropy(&logits, ops::Target::Hard(&b.labels), None)?;
                    let grads = loss.backward()?;
                    opt.step(&grads)
                }))
            }),
        });
    }
    v
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => 0.5 * (v[n / 2 - 1] + v[n / 2]),
    }
}

const MIB: f64 = 1024.0 * 1024.0;

/// Run the (filtered) cases: warm-up steps, then `steps` steps each timed between two
/// drains of the queue. The pool is trimmed before every case so its footprint is the case's own.
pub fn run_e2e(gpu: &Gpu, opts: &E2eOptions, cases: Vec<E2eCase>) -> Result<Vec<E2eRow>> {
    crate::bench::check_filter(opts.filter.as_deref(), cases.iter().map(|c| c.name.as_str()), "end-to-end case")?;
    let mut rows = Vec::new();
    for case in cases {
        if let Some(f) = &opts.filter {
            if !case.name.contains(f.as_str()) {
                continue;
            }
        }
        gpu.synchronize()?;
        gpu.trim_memory();
        gpu.reset_peak_memory();
        let mut step = (case.setup)(gpu)?;
        for i in 0..opts.warmup {
            step(i)?;
        }
        let steps = opts.steps.max(1);
        let (mut wall, mut rec) = (Vec::with_capacity(steps), Vec::with_capacity(steps));
        gpu.synchronize()?;
        let (s0, d0) = gpu.counters();
        for i in 0..steps {
            gpu.synchronize()?;
            let t0 = Instant::now();
            step(opts.warmup + i)?;
            rec.push(t0.elapsed().as_secs_f64() * 1e3);
            gpu.synchronize()?;
            wall.push(t0.elapsed().as_secs_f64() * 1e3);
        }
        let (s1, d1) = gpu.counters();
        let mem = gpu.memory();
        if std::env::var("EQUIMODAL_POOL_REPORT").is_ok_and(|v| v == "1") {
            eprintln!("{}: in use {:.1} MiB, cached {:.1} MiB; largest free blocks:", case.name, mem.in_use as f64 / MIB, mem.cached as f64 / MIB);
            for (size, n) in gpu.memory_cached_by_size().into_iter().take(25) {
                eprintln!("  {:>10.2} MiB x {n:>3} = {:>8.1} MiB", size as f64 / MIB, (size * n as u64) as f64 / MIB);
            }
        }
        let min = wall.iter().cloned().fold(f64::INFINITY, f64::min);
        let max = wall.iter().cloned().fold(0.0, f64::max);
        rows.push(E2eRow {
            name: case.name,
            shape: case.shape,
            steps,
            median_ms: median(wall),
            min_ms: min,
            max_ms: max,
            record_ms: median(rec),
            // the drain at the end of each step is a submit of its own only when work is left
            submits_per_step: (s1 - s0) as f64 / steps as f64,
            dispatches_per_step: (d1 - d0) as f64 / steps as f64,
            pool_mib: (mem.in_use + mem.cached) as f64 / MIB,
            in_use_mib: mem.in_use as f64 / MIB,
            peak_allocated_mib: mem.peak_allocated as f64 / MIB,
            peak_reserved_mib: mem.peak_reserved as f64 / MIB,
        });
        drop(step);
        gpu.synchronize()?;
        gpu.trim_memory();
    }
    Ok(rows)
}

/// A fixed-width table of the end-to-end rows.
pub fn format_e2e_table(gpu: &Gpu, rows: &[E2eRow]) -> String {
    let steps = rows.first().map(|r| r.steps).unwrap_or(0);
    let mut s = format!(
        "device: {} ({:?}); end-to-end steps, wall clock with the queue drained at both ends, median of {steps}\n",
        gpu.info().name,
        gpu.info().backend
    );
    s.push_str(&format!(
        "{:<22} {:<36} {:>10} {:>10} {:>10} {:>10} {:>9} {:>11} {:>10} {:>12} {:>12}\n",
        "case", "shape", "ms", "min ms", "max ms", "record ms", "submits", "dispatches", "pool MiB", "alloc peak", "reserv peak"
    ));
    for r in rows {
        s.push_str(&format!(
            "{:<22} {:<36} {:>10.2} {:>10.2} {:>10.2} {:>10.2} {:>9.1} {:>11.0} {:>10.1} {:>12.1} {:>12.1}\n",
            r.name, r.shape, r.median_ms, r.min_ms, r.max_ms, r.record_ms, r.submits_per_step, r.dispatches_per_step, r.pool_mib, r.peak_allocated_mib, r.peak_reserved_mib
        ));
    }
    s
}
