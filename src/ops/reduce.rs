//! Reductions (sum, mean, max, min) over any set of axes.
use super::{bytes_of, expect_f32, grid};
use crate::autograd::BackwardOp;
use crate::error::{Error, Result};
use crate::gpu::{Access, Kernel, Shader};
use crate::tensor::{DType, Tensor};

const K_TREE: Kernel = Kernel::new(Shader::Reduce, "reduce_tree", &[Access::Read, Access::ReadWrite], &Params::LAYOUT);
const K_LOOP: Kernel = Kernel::new(Shader::Reduce, "reduce_loop", &[Access::Read, Access::ReadWrite], &Params::LAYOUT);
const K_LOOP4: Kernel = Kernel::new(Shader::Reduce, "reduce_loop_vec4", &[Access::Read, Access::ReadWrite], &Params::LAYOUT);
/// Every kernel of this file (for the interface test, `tests/gpu/kernels.rs`).
pub(crate) const KERNELS: &[Kernel] = &[K_TREE, K_LOOP, K_LOOP4];

crate::gpu::gpu_params! {
    struct Params as "Params" {
        outer: u32,
        r: u32,
        inner: u32,
        /// Rows (values of k) per chunk; >= r when the reduction is not split.
        chunk: u32,
        /// ceil(r / chunk): the partials per output of this launch.
        nchunk: u32,
        /// Divisor of a mean: the length of the whole reduced axis (a split's last pass too).
        count: u32,
        _pad0: u32,
        _pad1: u32,
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
/// A reduction, by its code in `shaders/reduce.wgsl`.
pub enum ReduceOp {
    /// Sum.
    Sum = 0,
    /// Arithmetic mean.
    Mean = 1,
    /// Maximum; the gradient is split evenly among the elements equal to it.
    Max = 2,
    /// Minimum; the gradient is split evenly among the elements equal to it.
    Min = 3,
}

impl ReduceOp {
    /// Every op: the codes `shaders/reduce.wgsl` names `REDUCE_<NAME>` (checked by
    /// `tests/gpu/kernels.rs`).
    pub const ALL: [ReduceOp; 4] = [ReduceOp::Sum, ReduceOp::Mean, ReduceOp::Max, ReduceOp::Min];
}

/// Below this many threads in flight a launch cannot fill a large GPU (an H100 holds about
/// 270K resident threads): such reductions over a long axis are split into chunks.
const FILL_THREADS: usize = 1 << 16;
/// Threads a split `reduce_loop` launch aims at (outputs x chunks). On an H100 (Vulkan), x
/// 4096x16384 summed over axis 0 (16 chunks of 256 rows) took 0.34 ms; with 128K threads
/// 0.58 ms, with 512K 0.36 ms, unsplit 4.30 ms.
const TARGET_THREADS: usize = 1 << 18;
/// Rows each `reduce_loop` thread still reduces at least, once split.
const MIN_ROWS_LOOP: usize = 16;
/// Workgroups a split `reduce_tree` launch aims at (256 threads each: the same 256K threads).
const TARGET_GROUPS: usize = TARGET_THREADS / 256;
/// Elements each `reduce_tree` workgroup still reduces at least, once split (16 per thread).
const MIN_ROWS_TREE: usize = 16 * 256;

/// Chunks to split a reduced axis of length `r` into, for `units` workers (threads or
/// workgroups of `threads_per_unit`) per chunk: 1 (no split) when the launch fills the GPU
/// already, else about `target / units`, capped so that each chunk keeps `min_rows` rows.
/// Returns (chunk, nchunk) with nchunk = ceil(r / chunk): no chunk is empty. Depends on the
/// shape alone, so results are the same on every device.
fn split_plan(units: usize, threads_per_unit: usize, r: usize, target: usize, min_rows: usize) -> (usize, usize) {
    if units * threads_per_unit >= FILL_THREADS {
        return (r.max(1), 1);
    }
    let want = target.div_ceil(units.max(1)).min(r / min_rows);
    if want < 2 {
        return (r.max(1), 1);
    }
    let chunk = r.div_ceil(want);
    (chunk, r.div_ceil(chunk))
}

/// Reduce `x` viewed as [outer, r, inner] over r (no autograd).
fn launch(x: &Tensor, outer: usize, r: usize, inner: usize, op: ReduceOp) -> Result<Tensor> {
    launch_pass(x, outer, r, inner, op, r)
}

/// One reduction over r, split in chunks when too few outputs would run on too long an axis:
/// partials [outer, nchunk, inner] (sums for a mean), then the partials reduced over nchunk
/// (recursively, so very long axes take a few passes). A mean divides by `count` once, in the
/// last pass.
fn launch_pass(x: &Tensor, outer: usize, r: usize, inner: usize, op: ReduceOp, count: usize) -> Result<Tensor> {
    let gpu = x.gpu();
    let n = outer * inner;
    // Long contiguous rows: a workgroup per output (and chunk); otherwise a thread per output
    // (and chunk), reading neighbouring columns.
    let tree = inner == 1 && r >= 64;
    let (chunk, nchunk) = if tree {
        split_plan(n, 256, r, TARGET_GROUPS, MIN_ROWS_TREE)
    } else if r >= 64 {
        split_plan(n, 1, r, TARGET_THREADS, MIN_ROWS_LOOP)
    } else {
        (r.max(1), 1)
    };
    let pass_op = if nchunk > 1 && op == ReduceOp::Mean { ReduceOp::Sum } else { op };
    let y = Tensor::empty(gpu, &[outer * nchunk * inner], DType::F32)?;
    let p = Params {
        outer: outer as u32,
        r: r as u32,
        inner: inner as u32,
        chunk: chunk as u32,
        nchunk: nchunk as u32,
        count: count as u32,
        _pad0: 0,
        _pad1: 0,
    };
    let m = outer * nchunk * inner;
    let consts = [("OP", pass_op as u32 as f64)];
    let buffers = [x.buffer(), y.buffer()];
    if tree {
        gpu.dispatch(&K_TREE, &consts, bytes_of(&p), &buffers, grid(gpu, m, 1))?;
    } else if inner.is_multiple_of(4) && buffers.iter().all(|b| b.offset() % 16 == 0) {
        // four neighbouring columns per thread, as vec4s (the same bits as the scalar form)
        gpu.dispatch(&K_LOOP4, &consts, bytes_of(&p), &buffers, grid(gpu, m / 4, 256))?;
    } else {
        gpu.dispatch(&K_LOOP, &consts, bytes_of(&p), &buffers, grid(gpu, m, 256))?;
    }
    if nchunk > 1 {
        launch_pass(&y, outer, nchunk, inner, op, count)
    } else {
        Ok(y)
    }
}

fn normalize_axes(op: &'static str, shape: &[usize], axes: &[isize]) -> Result<Vec<usize>> {
    let nd = shape.len() as isize;
    let mut out = Vec::new();
    for &a in axes {
        let ax = if a < 0 { a + nd } else { a };
        if ax < 0 || ax >= nd {
            return Err(Error::shape(op, format!("axis {a} out of range for shape {shape:?}")));
        }
        if !out.contains(&(ax as usize)) {
            out.push(ax as usize);
        }
    }
    out.sort_unstable();
    Ok(out)
}

/// Reduction without autograd; returns the keepdim shape.
fn reduce_raw(x: &Tensor, axes: &[usize], op: ReduceOp) -> Result<Tensor> {
    let mut shape = x.shape().to_vec();
    let mut cur = x.clone();
    // runs of consecutive axes, last run first (so earlier axis indices stay valid)
    let mut runs: Vec<(usize, usize)> = Vec::new();
    for &a in axes {
        match runs.last_mut() {
            Some((_, end)) if *end == a => *end = a + 1,
            _ => runs.push((a, a + 1)),
        }
    }
    for (i, &(s, e)) in runs.iter().enumerate().rev() {
        let outer: usize = shape[..s].iter().product();
        let r: usize = shape[s..e].iter().product();
        let inner: usize = shape[e..].iter().product();
        // mean over several runs: sum each run, scale once at the end
        let run_op = if op == ReduceOp::Mean && runs.len() > 1 { ReduceOp::Sum } else { op };
        cur = launch(&cur, outer, r, inner, run_op)?;
        for d in shape[s..e].iter_mut() {
            *d = 1;
        }
        let _ = i;
    }
    if op == ReduceOp::Mean && runs.len() > 1 {
        let count: usize = axes.iter().map(|&a| x.shape()[a]).product();
        cur = super::elementwise::scale(&cur, 1.0 / count as f32)?;
    }
    cur.reshape(&shape)
}

struct ReduceBack {
    op: ReduceOp,
    axes: Vec<usize>,
    keep_shape: Vec<usize>,
    x: Option<Tensor>,
    y: Option<Tensor>,
}

impl BackwardOp for ReduceBack {
    fn name(&self) -> &'static str {
        "reduce"
    }
    fn backward(&self, g: &Tensor, inputs: &[Tensor]) -> Result<Vec<Option<Tensor>>> {
        let in_shape = inputs[0].shape();
        let g = g.reshape(&self.keep_shape)?;
        let dx = match self.op {
            ReduceOp::Sum => super::elementwise::expand(&g, in_shape)?,
            ReduceOp::Mean => {
                let count: usize = self.axes.iter().map(|&a| in_shape[a]).product();
                super::elementwise::expand(&super::elementwise::scale(&g, 1.0 / count as f32)?, in_shape)?
            }
            ReduceOp::Max | ReduceOp::Min => {
                // split the gradient evenly among the elements equal to the extremum
                let (x, y) = (self.x.as_ref().expect("saved"), self.y.as_ref().expect("saved"));
                let mask = super::elementwise::binary(x, y, super::elementwise::Binary::Eq, 0.0, 0.0)?;
                let count = reduce_raw(&mask, &self.axes, ReduceOp::Sum)?;
                let share = super::elementwise::div(&g, &count)?;
                super::elementwise::mul(&mask, &share)?
            }
        };
        Ok(vec![Some(dx)])
    }
}

/// Reduce over `axes` (negative counts from the end). `keepdim` keeps reduced axes as 1.
pub fn reduce(x: &Tensor, axes: &[isize], op: ReduceOp, keepdim: bool) -> Result<Tensor> {
    expect_f32("reduce", &[x])?;
    let axes = normalize_axes("reduce", x.shape(), axes)?;
    let y = if axes.is_empty() { x.detach() } else { reduce_raw(x, &axes, op)? };
    let keep_shape = y.shape().to_vec();
    let out_shape: Vec<usize> = if keepdim {
        keep_shape.clone()
    } else {
        x.shape().iter().enumerate().filter(|(i, _)| !axes.contains(i)).map(|(_, &d)| d).collect()
    };
    let y = y.reshape(&out_shape)?.detach();
    let saved = matches!(op, ReduceOp::Max | ReduceOp::Min);
    let (sx, sy) = if saved { (Some(x.detach()), Some(y.reshape(&keep_shape)?)) } else { (None, None) };
    Ok(y.with_grad_fn(&[x], || Box::new(ReduceBack { op, axes, keep_shape, x: sx, y: sy })))
}

/// Sum over `axes` (see [`reduce`]).
pub fn sum(x: &Tensor, axes: &[isize], keepdim: bool) -> Result<Tensor> {
    reduce(x, axes, ReduceOp::Sum, keepdim)
}
/// Mean over `axes`.
pub fn mean(x: &Tensor, axes: &[isize], keepdim: bool) -> Result<Tensor> {
    reduce(x, axes, ReduceOp::Mean, keepdim)
}
/// Maximum over `axes`; ties share the gradient evenly.
pub fn max(x: &Tensor, axes: &[isize], keepdim: bool) -> Result<Tensor> {
    reduce(x, axes, ReduceOp::Max, keepdim)
}
/// Minimum over `axes`; ties share the gradient evenly.
pub fn min(x: &Tensor, axes: &[isize], keepdim: bool) -> Result<Tensor> {
    reduce(x, axes, ReduceOp::Min, keepdim)
}
/// Sum of all elements, shape `[1]`.
pub fn sum_all(x: &Tensor) -> Result<Tensor> {
    let all: Vec<isize> = (0..x.dims() as isize).collect();
    sum(x, &all, false)?.reshape(&[1])
}
/// Mean of all elements, shape `[1]`.
pub fn mean_all(x: &Tensor) -> Result<Tensor> {
    let all: Vec<isize> = (0..x.dims() as isize).collect();
    mean(x, &all, false)?.reshape(&[1])
}

/// Sum a broadcast result back to `shape` (the backward of broadcasting).
pub fn sum_to_shape(x: &Tensor, shape: &[usize]) -> Result<Tensor> {
    if x.shape() == shape {
        return Ok(x.clone());
    }
    let xs = x.shape();
    if shape.len() > xs.len() {
        return Err(Error::shape("sum_to_shape", format!("{xs:?} cannot reduce to {shape:?}")));
    }
    let lead = xs.len() - shape.len();
    let mut axes: Vec<isize> = (0..lead as isize).collect();
    for (i, &d) in shape.iter().enumerate() {
        if d == 1 && xs[lead + i] != 1 {
            axes.push((lead + i) as isize);
        } else if d != xs[lead + i] {
            return Err(Error::shape("sum_to_shape", format!("{xs:?} cannot reduce to {shape:?}")));
        }
    }
    sum(x, &axes, true)?.reshape(&[&[1usize][..0], shape].concat())
}
