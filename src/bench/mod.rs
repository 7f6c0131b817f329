//! Kernel microbenchmarks: GPU-timestamped, median of repeated runs after warm-up, inputs
//! rotated between sets so they do not sit in cache, random data. Reports GFLOP/s or GB/s
//! and the percentage of the device's ceiling. Used by `cargo bench --bench kernels` and
//! `equimodal bench`. It sits at the top of the layer map, beside the CLI: the end-to-end
//! cases time whole training steps (methods, optimizers, the trainer's builders), and
//! nothing in the library imports it.
use crate::error::Result;
use crate::gpu::{Gpu, GpuTimer};
use crate::ops;
use crate::tensor::Tensor;

mod cases;
mod e2e;

pub use cases::{extra_cases, resnet18_conv_shapes, ConvShape};
pub use e2e::{e2e_cases, e2e_cases_sized, format_e2e_table, run_e2e, E2eCase, E2eOptions, E2eRow, E2eSize, E2eStep};

/// What to run and against which ceilings.
#[derive(Clone, Debug)]
pub struct BenchOptions {
    /// Small sizes (software rasterisers, CI smoke runs).
    pub quick: bool,
    /// Only cases whose name contains this.
    pub filter: Option<String>,
    /// Memory ceiling in GB/s; default: the known figure for the adapter, else the measured
    /// device-to-device copy of this run.
    pub peak_gbs: Option<f64>,
    /// Arithmetic ceiling in GFLOP/s (f32); default: the known figure for the adapter.
    pub peak_gflops: Option<f64>,
    /// Timed runs per case (the row reports their median).
    pub reps: usize,
    /// Untimed runs per case before the timed ones.
    pub warmup: usize,
}

impl Default for BenchOptions {
    fn default() -> Self {
        BenchOptions { quick: false, filter: None, peak_gbs: None, peak_gflops: None, reps: 10, warmup: 3 }
    }
}

/// One result row.
#[derive(Clone, Debug, serde::Serialize)]
pub struct BenchRow {
    /// Case name.
    pub name: String,
    /// The sizes.
    pub shape: String,
    /// Median GPU time of one run, ms (timestamps, or the host clock without them).
    pub median_ms: f64,
    /// Achieved GFLOP/s, for cases that count FLOPs.
    pub gflops: Option<f64>,
    /// Achieved GB/s, for cases that count bytes.
    pub gbs: Option<f64>,
    /// Percent of the ceiling (memory for bandwidth-bound rows, arithmetic for GEMM-like rows).
    pub pct: Option<f64>,
}

/// Ceilings measured for known adapters (see docs/performance.md): (copy GB/s, f32 GFLOP/s).
pub fn known_ceilings(adapter_name: &str) -> Option<(f64, f64)> {
    let n = adapter_name.to_lowercase();
    if n.contains("h100") {
        Some((2950.0, 51200.0))
    } else if n.contains("h200") {
        Some((4300.0, 51200.0))
    } else {
        None
    }
}

/// One run of a benchmark case; the argument is the run index (cases rotate input sets by it).
pub type Runner = Box<dyn FnMut(usize) -> Result<()>>;

/// A benchmark case: builds its inputs, then runs once per call with input set `i % sets`.
pub struct Case {
    /// Case name, matched by `--filter`.
    pub name: String,
    /// The sizes, for the report.
    pub shape: String,
    /// Floating-point operations of one run (0: not reported).
    pub flops: f64,
    /// Bytes of one run's minimal memory traffic (0: not reported).
    pub bytes: f64,
    /// Record gradients while timing (forward+backward cases); otherwise runs under no_grad.
    pub grad: bool,
    /// Whether the device can run it (a matmul variant needing cooperative matrices or more
    /// workgroup memory than the device has is skipped with a note, not an error).
    pub runs_on: Box<dyn Fn(&Gpu) -> bool>,
    /// Builds the inputs outside the timed region and returns the run function.
    pub setup: Box<dyn Fn(&Gpu) -> Result<Runner>>,
}

fn rand_tensor(gpu: &Gpu, shape: &[usize], seed: u64) -> Result<Tensor> {
    // cheap host-side pseudo-random fill, different per seed
    let n: usize = shape.iter().product();
    let mut s = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    let data: Vec<f32> = (0..n)
        .map(|_| {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect();
    Tensor::from_slice(gpu, &data, shape)
}

/// Input sets so that every run reads data that is not in cache from the previous one.
fn sets_for(bytes: f64) -> usize {
    // 3 sets, or more while a set is under ~64 MiB (well above any GPU's L2)
    ((192.0 * 1024.0 * 1024.0 / bytes.max(1.0)).ceil() as usize).clamp(3, 8)
}

/// The built-in cases. Sizes are large (≥ 64 MiB for memory-bound kernels) unless `quick`.
pub fn cases(quick: bool) -> Vec<Case> {
    let mut v = Vec::new();
    let n_elem: usize = if quick { 1 << 20 } else { 1 << 26 }; // 4 MiB or 256 MiB of f32
    // device-to-device copy (copy engine): the memory ceiling
    v.push(Case {
        name: "copy_buffer".into(),
        shape: format!("{n_elem}"),
        flops: 0.0,
        bytes: 8.0 * n_elem as f64,
        grad: false,
        runs_on: Box::new(|_| true),
        setup: Box::new(move |gpu| {
            let k = sets_for(8.0 * n_elem as f64);
            let xs: Vec<Tensor> = (0..k).map(|i| rand_tensor(gpu, &[n_elem], i as u64)).collect::<Result<_>>()?;
            let y = Tensor::empty(gpu, &[n_elem], crate::DType::F32)?;
            let gpu = gpu.clone();
            Ok(Box::new(move |i| gpu.copy(xs[i % k].buffer(), 0, y.buffer(), 0, y.byte_len())))
        }),
    });
    for (name, op) in [("relu", ops::Unary::Relu), ("gelu", ops::Unary::Gelu), ("exp", ops::Unary::Exp)] {
        v.push(Case {
            name: format!("unary_{name}"),
            shape: format!("{n_elem}"),
            flops: 0.0,
            bytes: 8.0 * n_elem as f64,
            grad: false,
            runs_on: Box::new(|_| true),
            setup: Box::new(move |gpu| {
                let k = sets_for(8.0 * n_elem as f64);
                let xs: Vec<Tensor> = (0..k).map(|i| rand_tensor(gpu, &[n_elem], i as u64)).collect::<Result<_>>()?;
                Ok(Box::new(move |i| ops::unary(&xs[i % k], op, 0.0, 0.0).map(|_| ())))
            }),
        });
    }
    v.push(Case {
        name: "binary_add".into(),
        shape: format!("{n_elem}"),
        flops: n_elem as f64,
        bytes: 12.0 * n_elem as f64,
        grad: false,
        runs_on: Box::new(|_| true),
        setup: Box::new(move |gpu| {
            let k = sets_for(12.0 * n_elem as f64);
            let xs: Vec<Tensor> = (0..k).map(|i| rand_tensor(gpu, &[n_elem], i as u64)).collect::<Result<_>>()?;
            let ys: Vec<Tensor> = (0..k).map(|i| rand_tensor(gpu, &[n_elem], 100 + i as u64)).collect::<Result<_>>()?;
            Ok(Box::new(move |i| ops::add(&xs[i % k], &ys[i % k]).map(|_| ())))
        }),
    });
    let rows = 4096;
    let cols = n_elem / rows;
    v.push(Case {
        name: "binary_add_bcast_row".into(),
        shape: format!("{rows}x{cols} + {cols}"),
        flops: n_elem as f64,
        bytes: 8.0 * n_elem as f64,
        grad: false,
        runs_on: Box::new(|_| true),
        setup: Box::new(move |gpu| {
            let k = sets_for(8.0 * n_elem as f64);
            let xs: Vec<Tensor> = (0..k).map(|i| rand_tensor(gpu, &[rows, cols], i as u64)).collect::<Result<_>>()?;
            let b = rand_tensor(gpu, &[cols], 7)?;
            Ok(Box::new(move |i| ops::add(&xs[i % k], &b).map(|_| ())))
        }),
    });
    for (label, shape, axis) in [("rows", [rows, cols], 1isize), ("cols", [rows, cols], 0isize)] {
        v.push(Case {
            name: format!("reduce_sum_{label}"),
            shape: format!("{}x{} over axis {axis}", shape[0], shape[1]),
            flops: n_elem as f64,
            bytes: 4.0 * n_elem as f64,
            grad: false,
            runs_on: Box::new(|_| true),
            setup: Box::new(move |gpu| {
                let k = sets_for(4.0 * n_elem as f64);
                let xs: Vec<Tensor> = (0..k).map(|i| rand_tensor(gpu, &shape, i as u64)).collect::<Result<_>>()?;
                Ok(Box::new(move |i| ops::sum(&xs[i % k], &[axis], false).map(|_| ())))
            }),
        });
    }
    v
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() {
        return f64::NAN;
    }
    let m = v.len() / 2;
    if v.len() % 2 == 1 {
        v[m]
    } else {
        0.5 * (v[m - 1] + v[m])
    }
}

/// Time one case: warm-up, then `reps` runs each between two timestamps.
pub fn time_case(gpu: &Gpu, case: &Case, opts: &BenchOptions) -> Result<f64> {
    let _ng = (!case.grad).then(|| crate::autograd::no_grad());
    let mut run = (case.setup)(gpu)?;
    for i in 0..opts.warmup {
        run(i)?;
    }
    gpu.synchronize()?;
    let mut timer = GpuTimer::new(gpu, (opts.reps + 1) as u32);
    timer.mark(gpu)?;
    for i in 0..opts.reps {
        run(i + opts.warmup)?;
        timer.mark(gpu)?;
    }
    let ns = timer.intervals_ns(gpu)?;
    Ok(median(ns) / 1e6)
}

/// A `--filter` that selects nothing is an error listing the names it was matched against
/// (an empty table with exit code 0 reads as success).
pub fn check_filter<'a>(filter: Option<&str>, names: impl Iterator<Item = &'a str>, what: &str) -> Result<()> {
    let Some(f) = filter else { return Ok(()) };
    let names: Vec<&str> = names.collect();
    if names.iter().any(|n| n.contains(f)) {
        return Ok(());
    }
    Err(crate::error::Error::config("--filter", format!("no {what} name contains `{f}`; the names are: {}", names.join(", "))))
}

/// Run every case (filtered), returning rows with rates and ceilings filled in.
pub fn run(gpu: &Gpu, opts: &BenchOptions, extra: Vec<Case>) -> Result<Vec<BenchRow>> {
    let known = known_ceilings(&gpu.info().name);
    let mut all = cases(opts.quick);
    all.extend(extra);
    check_filter(opts.filter.as_deref(), all.iter().map(|c| c.name.as_str()), "kernel")?;
    let mut rows = Vec::new();
    let mut copy_gbs = None;
    for case in all {
        if let Some(f) = &opts.filter {
            if !case.name.contains(f.as_str()) && case.name != "copy_buffer" {
                continue;
            }
        }
        if !(case.runs_on)(gpu) {
            eprintln!("note: {} does not run on this device (no cooperative matrices, or not enough workgroup memory); skipped", case.name);
            continue;
        }
        let ms = time_case(gpu, &case, opts)?;
        let gbs = (case.bytes > 0.0).then(|| case.bytes / (ms * 1e-3) / 1e9);
        let gflops = (case.flops > 0.0).then(|| case.flops / (ms * 1e-3) / 1e9);
        if case.name == "copy_buffer" {
            copy_gbs = gbs;
        }
        let peak_gbs = opts.peak_gbs.or(known.map(|k| k.0)).or(copy_gbs);
        let peak_gflops = opts.peak_gflops.or(known.map(|k| k.1));
        // GEMM-like rows (more than ~10 flops per byte) are judged on arithmetic
        let compute_bound = case.flops > 10.0 * case.bytes;
        let pct = if compute_bound {
            gflops.zip(peak_gflops).map(|(g, p)| 100.0 * g / p)
        } else {
            gbs.zip(peak_gbs).map(|(g, p)| 100.0 * g / p)
        };
        rows.push(BenchRow { name: case.name, shape: case.shape, median_ms: ms, gflops, gbs, pct });
    }
    Ok(rows)
}

/// A fixed-width table.
pub fn format_table(gpu: &Gpu, rows: &[BenchRow], timer_is_gpu: bool) -> String {
    let mut s = format!(
        "device: {} ({:?}); times: {}, median\n",
        gpu.info().name,
        gpu.info().backend,
        if timer_is_gpu { "GPU timestamps" } else { "wall clock (no timestamp queries)" }
    );
    s.push_str(&format!("{:<30} {:<40} {:>10} {:>10} {:>10} {:>8}\n", "kernel", "shape", "ms", "GFLOP/s", "GB/s", "% ceil"));
    for r in rows {
        let f = |x: Option<f64>| x.map(|v| format!("{v:.1}")).unwrap_or_else(|| "-".into());
        s.push_str(&format!(
            "{:<30} {:<40} {:>10.4} {:>10} {:>10} {:>8}\n",
            r.name,
            r.shape,
            r.median_ms,
            f(r.gflops),
            f(r.gbs),
            f(r.pct)
        ));
    }
    s
}

