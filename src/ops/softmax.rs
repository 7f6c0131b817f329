//! Softmax family along the last axis: softmax, log-softmax, fused cross-entropy (hard or
//! soft targets, optional row weights), true-class probability, argmax, label validation.
//!
//! Cross-entropy design: ONE kernel computes, per row, the log-sum-exp, the loss and the
//! gradient row `w_i (softmax * sum(t) - t)`; the batch mean is a second tiny kernel. The
//! gradient is stored UNSCALED in the forward (only when the logits are tracked) rather
//! than recomputed in the backward: the forward already holds softmax in registers, so the
//! gradient costs one extra write of N*K floats, while recomputing would read the logits
//! (and soft targets) twice more and redo the row reductions. Class counts are small
//! (6 to 1000), so the extra memory is negligible, and the backward becomes one in-place
//! scale by the upstream gradient (read from the GPU: no host readback), reusing the stored
//! buffer as dx.
use super::{bytes_of, expect_f32, expect_same_gpu, grid};
use crate::autograd::BackwardOp;
use crate::error::{Error, Result};
use crate::gpu::{Access, Gpu, Kernel, Shader};
use crate::tensor::{DType, Tensor};

const R: Access = Access::Read;
const RW: Access = Access::ReadWrite;
const K_FWD: Kernel = Kernel::new(Shader::Softmax, "softmax_fwd", &[R, RW], &Params::LAYOUT);
const K_BWD: Kernel = Kernel::new(Shader::Softmax, "softmax_bwd", &[R, R, RW], &Params::LAYOUT);
const K_CE: Kernel = Kernel::new(Shader::Softmax, "cross_entropy", &[R, R, R, RW, RW, RW], &Params::LAYOUT);
const K_CE_MEAN: Kernel = Kernel::new(Shader::Softmax, "ce_mean", &[R, RW], &Params::LAYOUT);
const K_CE_BWD: Kernel = Kernel::new(Shader::Softmax, "ce_bwd", &[R, RW], &Params::LAYOUT);
const K_TRUE_PROB: Kernel = Kernel::new(Shader::Softmax, "true_prob", &[R, R, RW], &Params::LAYOUT);
const K_ARGMAX: Kernel = Kernel::new(Shader::Softmax, "argmax", &[R, RW], &Params::LAYOUT);
/// Every kernel of this file (for the interface test, `tests/gpu/kernels.rs`).
pub(crate) const KERNELS: &[Kernel] = &[K_FWD, K_BWD, K_CE, K_CE_MEAN, K_CE_BWD, K_TRUE_PROB, K_ARGMAX];

const WG: usize = 256;

crate::gpu::gpu_params! {
    struct Params as "Params" {
        rows: u32,
        cols: u32,
        seg: u32,
        mode: u32,
        inv_n: f32,
        flags: u32,
        _p: [u32; 2],
    }
}

/// Threads per row: the next power of two of the row length, at most one workgroup.
fn seg_for(cols: usize) -> usize {
    cols.max(1).next_power_of_two().min(WG)
}

/// Parameters of a row kernel and the rows each workgroup handles.
fn row_params(rows: usize, cols: usize, mode: u32) -> (Params, usize) {
    let seg = seg_for(cols);
    let p = Params { rows: rows as u32, cols: cols as u32, seg: seg as u32, mode, inv_n: 0.0, flags: 0, _p: [0; 2] };
    (p, WG / seg)
}

/// (rows, cols) of `x` seen as [rows, last dim].
fn rows_cols(op: &'static str, x: &Tensor) -> Result<(usize, usize)> {
    if x.dims() == 0 {
        return Err(Error::shape(op, format!("needs at least one dimension, got shape {:?}", x.shape())));
    }
    let cols = x.shape()[x.dims() - 1];
    let rows = if cols == 0 { 0 } else { x.numel() / cols };
    if rows > u32::MAX as usize / 2 || x.numel() > u32::MAX as usize / 2 {
        return Err(Error::shape(op, format!("shape {:?} is too large for 32-bit indexing", x.shape())));
    }
    Ok((rows, cols))
}

// ---- softmax / log-softmax ------------------------------------------------------------------

fn launch_softmax(x: &Tensor, log: bool) -> Result<Tensor> {
    let op = if log { "log_softmax" } else { "softmax" };
    expect_f32(op, &[x])?;
    let (rows, cols) = rows_cols(op, x)?;
    let gpu = x.gpu();
    let y = Tensor::empty(gpu, x.shape(), DType::F32)?;
    if rows == 0 {
        return Ok(y);
    }
    let (p, per) = row_params(rows, cols, log as u32);
    gpu.dispatch(&K_FWD, &[], bytes_of(&p), &[x.buffer(), y.buffer()], grid(gpu, rows, per))?;
    Ok(y)
}

struct SoftmaxBack {
    log: bool,
    y: Tensor,
}

impl BackwardOp for SoftmaxBack {
    fn name(&self) -> &'static str {
        if self.log {
            "log_softmax"
        } else {
            "softmax"
        }
    }
    fn backward(&self, g: &Tensor, _inputs: &[Tensor]) -> Result<Vec<Option<Tensor>>> {
        let gpu = g.gpu();
        let (rows, cols) = rows_cols(self.name(), &self.y)?;
        let dx = Tensor::empty(gpu, self.y.shape(), DType::F32)?;
        if rows > 0 {
            let (p, per) = row_params(rows, cols, self.log as u32);
            gpu.dispatch(&K_BWD, &[], bytes_of(&p), &[self.y.buffer(), g.buffer(), dx.buffer()], grid(gpu, rows, per))?;
        }
        Ok(vec![Some(dx)])
    }
}

/// Softmax along the last axis (max-subtracted, stable for any logit range).
pub fn softmax(x: &Tensor) -> Result<Tensor> {
    let y = launch_softmax(x, false)?;
    let saved = y.detach();
    Ok(y.with_grad_fn(&[x], || Box::new(SoftmaxBack { log: false, y: saved })))
}

/// Log-softmax along the last axis: x - max - log(sum(exp(x - max))).
pub fn log_softmax(x: &Tensor) -> Result<Tensor> {
    let y = launch_softmax(x, true)?;
    let saved = y.detach();
    Ok(y.with_grad_fn(&[x], || Box::new(SoftmaxBack { log: true, y: saved })))
}

// ---- labels ------------------------------------------------------------------------------------

/// Validated class labels: every value must be `< num_classes`, else `Error::Data` naming
/// the first bad index and value. Returns a u32 tensor of shape `[N]`.
pub fn labels(gpu: &Gpu, data: &[u32], num_classes: usize) -> Result<Tensor> {
    if num_classes == 0 {
        return Err(Error::data("labels", "num_classes is 0: there must be at least one class"));
    }
    if let Some((i, &v)) = data.iter().enumerate().find(|(_, &v)| v as usize >= num_classes) {
        return Err(Error::data(
            "labels",
            format!("label at index {i} is {v}, out of range for {num_classes} classes (valid: 0..={})", num_classes - 1),
        ));
    }
    Tensor::from_u32(gpu, data, &[data.len()])
}

// ---- cross-entropy --------------------------------------------------------------------------

/// Target of a cross-entropy: class indices or per-class probabilities.
#[derive(Clone, Copy, Debug)]
pub enum Target<'a> {
    /// u32 labels `[N]`; values must be < K (see [`labels`]). An out-of-range label inside the
    /// kernel gives a NaN loss (and NaN gradient row), never an out-of-bounds read.
    Hard(&'a Tensor),
    /// f32 targets [N, K] (usually rows summing to 1; any non-negative weights work:
    /// the loss is -sum_k t_k log softmax_k exactly).
    Soft(&'a Tensor),
}

fn check_ce(op: &'static str, logits: &Tensor, target: Target, w: Option<&Tensor>) -> Result<(usize, usize)> {
    expect_f32(op, &[logits])?;
    if logits.dims() != 2 {
        return Err(Error::shape(op, format!("logits must be [N, K], got shape {:?}", logits.shape())));
    }
    let (n, k) = (logits.dim(0), logits.dim(1));
    if k == 0 {
        return Err(Error::shape(op, format!("logits {:?} have no classes", logits.shape())));
    }
    if logits.numel() > u32::MAX as usize / 2 {
        return Err(Error::shape(op, format!("logits {:?} are too large for 32-bit indexing", logits.shape())));
    }
    match target {
        Target::Hard(t) => {
            expect_same_gpu(op, &[logits, t])?;
            if t.dtype() != DType::U32 {
                return Err(Error::DType { op, msg: format!("hard labels must be u32, got {:?} (shape {:?})", t.dtype(), t.shape()) });
            }
            if t.shape() != [n] {
                return Err(Error::shape(op, format!("labels {:?} do not match logits {:?} (want [{n}])", t.shape(), logits.shape())));
            }
        }
        Target::Soft(t) => {
            expect_same_gpu(op, &[logits, t])?;
            expect_f32(op, &[t])?;
            if t.shape() != logits.shape() {
                return Err(Error::shape(op, format!("soft targets {:?} do not match logits {:?}", t.shape(), logits.shape())));
            }
        }
    }
    if let Some(w) = w {
        expect_same_gpu(op, &[logits, w])?;
        expect_f32(op, &[w])?;
        if w.shape() != [n] {
            return Err(Error::shape(op, format!("row weights {:?} do not match logits {:?} (want [{n}])", w.shape(), logits.shape())));
        }
    }
    Ok((n, k))
}

/// Outputs of the fused kernel.
struct CeOut {
    /// weighted per-row losses [N]
    loss: Tensor,
    /// unweighted per-row losses [N]
    raw: Tensor,
    /// unscaled gradient rows w_i (softmax * sum t - t) [N, K], when the logits are tracked
    grad: Option<Tensor>,
}

fn launch_ce(op: &'static str, logits: &Tensor, target: Target, w: Option<&Tensor>) -> Result<(CeOut, usize, usize)> {
    let (n, k) = check_ce(op, logits, target, w)?;
    let gpu = logits.gpu();
    let loss = Tensor::empty(gpu, &[n], DType::F32)?;
    let raw = Tensor::empty(gpu, &[n], DType::F32)?;
    let want_grad = crate::autograd::grad_enabled() && logits.is_tracked();
    let grad = if want_grad { Some(Tensor::empty(gpu, &[n, k], DType::F32)?) } else { None };
    if n > 0 {
        // Unused bindings get stand-ins: the logits (read-only) for absent weights, a
        // one-word scratch tensor for the gradient when it is not written.
        let scratch;
        let grad_buf = match &grad {
            Some(g) => g.buffer(),
            None => {
                scratch = Tensor::empty(gpu, &[1], DType::F32)?;
                scratch.buffer()
            }
        };
        let (t_buf, soft) = match target {
            Target::Hard(t) => (t.buffer(), false),
            Target::Soft(t) => (t.buffer(), true),
        };
        let w_buf = w.map(|w| w.buffer()).unwrap_or(logits.buffer());
        let (mut p, per) = row_params(n, k, 0);
        p.flags = soft as u32 | (w.is_some() as u32) << 1 | (want_grad as u32) << 2;
        gpu.dispatch(
            &K_CE,
            &[],
            bytes_of(&p),
            &[logits.buffer(), t_buf, w_buf, loss.buffer(), raw.buffer(), grad_buf],
            grid(gpu, n, per),
        )?;
    }
    Ok((CeOut { loss, raw, grad }, n, k))
}

struct CrossEntropyBack {
    /// true: output is the batch mean [1]; false: per-row losses [N]
    mean: bool,
    n: usize,
    k: usize,
    grad: Option<Tensor>,
    raw: Tensor,
    logits: Tensor,
    weights: Option<Tensor>,
    /// input 1 is a soft target (differentiable) rather than u32 labels
    soft: bool,
}

impl CrossEntropyBack {
    /// Per-row factor of the upstream gradient: g (rows) or g / N (mean), shape [N] or [1].
    fn row_scale(&self, g: &Tensor) -> Result<Tensor> {
        if self.mean {
            super::elementwise::scale(g, 1.0 / self.n as f32)
        } else {
            Ok(g.clone())
        }
    }
}

impl BackwardOp for CrossEntropyBack {
    fn name(&self) -> &'static str {
        "cross_entropy"
    }
    fn backward(&self, g: &Tensor, inputs: &[Tensor]) -> Result<Vec<Option<Tensor>>> {
        use super::elementwise::{mul, neg};
        let gpu = g.gpu();
        let mut out: Vec<Option<Tensor>> = Vec::with_capacity(inputs.len());
        // logits: scale the stored gradient rows in place (this node runs once; the buffer
        // becomes dx)
        let dlogits = match (&self.grad, inputs[0].is_tracked()) {
            (Some(gr), true) => {
                let p = Params {
                    rows: self.n as u32,
                    cols: self.k as u32,
                    seg: 1,
                    mode: if self.mean { 0 } else { 1 },
                    inv_n: 1.0 / self.n.max(1) as f32,
                    flags: 0,
                    _p: [0; 2],
                };
                gpu.dispatch(&K_CE_BWD, &[], bytes_of(&p), &[g.buffer(), gr.buffer()], grid(gpu, self.n * self.k, WG))?;
                Some(gr.clone())
            }
            _ => None,
        };
        out.push(dlogits);
        let mut next = 1;
        if self.soft {
            // d loss_i / d t_ik = -w_i log softmax_ik
            let dt = if inputs[next].is_tracked() {
                let mut s = neg(&self.row_scale(g)?)?;
                if let Some(w) = &self.weights {
                    s = mul(&s, w)?;
                }
                let s = s.reshape(&[s.numel(), 1])?;
                Some(mul(&log_softmax(&self.logits)?, &s)?)
            } else {
                None
            };
            out.push(dt);
            next += 1;
        } else {
            out.push(None); // u32 labels carry no gradient
            next += 1;
        }
        if self.weights.is_some() {
            // d loss_i / d w_i = raw_i
            let dw = if inputs[next].is_tracked() { Some(mul(&self.raw, &self.row_scale(g)?)?) } else { None };
            out.push(dw);
        }
        Ok(out)
    }
}

fn ce_inputs<'a>(logits: &'a Tensor, target: Target<'a>, w: Option<&'a Tensor>) -> Vec<&'a Tensor> {
    let mut v = vec![logits];
    v.push(match target {
        Target::Hard(t) | Target::Soft(t) => t,
    });
    if let Some(w) = w {
        v.push(w);
    }
    v
}

#[allow(clippy::too_many_arguments)]
fn ce_node(
    mean: bool,
    n: usize,
    k: usize,
    grad: Option<Tensor>,
    raw: Tensor,
    logits: &Tensor,
    target: Target,
    w: Option<&Tensor>,
) -> Box<dyn BackwardOp> {
    Box::new(CrossEntropyBack {
        mean,
        n,
        k,
        grad,
        raw,
        logits: logits.detach(),
        weights: w.map(|w| w.detach()),
        soft: matches!(target, Target::Soft(_)),
    })
}

/// Mean over the N rows of `-sum_k t_k log softmax(logits)_k` (logits [N, K]), each row's
/// loss multiplied by its weight when `row_weights` `[N]` is given (the mean still divides by
/// N). Shape `[1]`. Differentiable in the logits, soft targets and row weights.
pub fn cross_entropy(logits: &Tensor, target: Target, row_weights: Option<&Tensor>) -> Result<Tensor> {
    let (out, n, k) = launch_ce("cross_entropy", logits, target, row_weights)?;
    let gpu = logits.gpu();
    let y = Tensor::empty(gpu, &[1], DType::F32)?;
    if n == 0 {
        // mean of nothing: NaN, as in PyTorch
        super::elementwise::fill(&y, f32::NAN)?;
    } else {
        let p = Params { rows: n as u32, cols: 1, seg: WG as u32, mode: 0, inv_n: 1.0 / n as f32, flags: 0, _p: [0; 2] };
        gpu.dispatch(&K_CE_MEAN, &[], bytes_of(&p), &[out.loss.buffer(), y.buffer()], [1, 1, 1])?;
    }
    let CeOut { loss, raw, grad } = out;
    drop(loss);
    let inputs = ce_inputs(logits, target, row_weights);
    Ok(y.with_grad_fn(&inputs, || ce_node(true, n, k, grad, raw, logits, target, row_weights)))
}

/// Per-row losses `[N]` (no reduction), same semantics as [`cross_entropy`].
pub fn cross_entropy_rows(logits: &Tensor, target: Target, row_weights: Option<&Tensor>) -> Result<Tensor> {
    let (out, n, k) = launch_ce("cross_entropy_rows", logits, target, row_weights)?;
    let CeOut { loss, raw, grad } = out;
    let inputs = ce_inputs(logits, target, row_weights);
    Ok(loss.with_grad_fn(&inputs, || ce_node(false, n, k, grad, raw, logits, target, row_weights)))
}

// ---- true-class probability, argmax --------------------------------------------------------------

/// Per-row probability of the true class, `softmax(logits)[i, y_i]`, shape `[N]` (no gradient).
/// A label >= K gives NaN for that row.
pub fn true_class_prob(logits: &Tensor, labels: &Tensor) -> Result<Tensor> {
    let (n, k) = check_ce("true_class_prob", logits, Target::Hard(labels), None)?;
    let gpu = logits.gpu();
    let y = Tensor::empty(gpu, &[n], DType::F32)?;
    if n > 0 {
        let (p, per) = row_params(n, k, 0);
        gpu.dispatch(&K_TRUE_PROB, &[], bytes_of(&p), &[logits.buffer(), labels.buffer(), y.buffer()], grid(gpu, n, per))?;
    }
    Ok(y)
}

/// Index of the largest element along the last axis (first one on ties), u32 `[rows]`
/// (rows = numel / last dim). No gradient.
pub fn argmax(x: &Tensor) -> Result<Tensor> {
    expect_f32("argmax", &[x])?;
    let (rows, cols) = rows_cols("argmax", x)?;
    if cols == 0 {
        return Err(Error::shape("argmax", format!("last dimension of {:?} is empty", x.shape())));
    }
    let gpu = x.gpu();
    let y = Tensor::empty(gpu, &[rows], DType::U32)?;
    if rows > 0 {
        let (p, per) = row_params(rows, cols, 0);
        gpu.dispatch(&K_ARGMAX, &[], bytes_of(&p), &[x.buffer(), y.buffer()], grid(gpu, rows, per))?;
    }
    Ok(y)
}
