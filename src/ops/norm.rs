//! Normalisation: batch norm (training with batch statistics and in-place running-stat
//! update, eval with running statistics) and layer norm over the last dimension. All
//! statistics and parameter-gradient reductions run on the GPU; nothing is read back.
use super::{bytes_of, expect_f32, grid};
use crate::autograd::BackwardOp;
use crate::error::{Error, Result};
use crate::gpu::{Access, Gpu, Kernel, Shader};
use crate::tensor::{DType, Tensor};

const R: Access = Access::Read;
const RW: Access = Access::ReadWrite;
const K_BN_STATS: Kernel = Kernel::new(Shader::Norm, "bn_stats", &[R, RW], &BnParams::LAYOUT);
const K_BN_STATS_MERGE: Kernel = Kernel::new(Shader::Norm, "bn_stats_merge", &[R, RW, RW, RW], &BnParams::LAYOUT);
const K_BN_EVAL: Kernel = Kernel::new(Shader::Norm, "bn_eval_stats", &[R, R, RW], &BnParams::LAYOUT);
const K_BN_APPLY: Kernel = Kernel::new(Shader::Norm, "bn_apply", &[R, R, R, R, RW, R], &BnParams::LAYOUT);
const K_BN_BWD_RED: Kernel = Kernel::new(Shader::Norm, "bn_bwd_reduce", &[R, R, R, RW], &BnParams::LAYOUT);
const K_BN_BWD_MERGE: Kernel = Kernel::new(Shader::Norm, "bn_bwd_merge", &[R, RW], &BnParams::LAYOUT);
const K_BN_BWD_DX: Kernel = Kernel::new(Shader::Norm, "bn_bwd_dx", &[R, R, R, R, R, RW], &BnParams::LAYOUT);
const K_BN_BWD_DX_IN_PLACE: Kernel = Kernel::new(Shader::Norm, "bn_bwd_dx_in_place", &[R, R, R, R, R, RW], &BnParams::LAYOUT);
const K_LN_FWD: Kernel = Kernel::new(Shader::Norm, "ln_fwd", &[R, R, R, RW, RW], &LnParams::LAYOUT);
const K_LN_BWD_DX: Kernel = Kernel::new(Shader::Norm, "ln_bwd_dx", &[R, R, R, R, RW], &LnParams::LAYOUT);
const K_LN_BWD_DW: Kernel = Kernel::new(Shader::Norm, "ln_bwd_dw", &[R, R, R, RW], &LnParams::LAYOUT);
/// Every kernel of this file (for the interface test, `tests/gpu/kernels.rs`).
pub(crate) const KERNELS: &[Kernel] = &[K_BN_STATS, K_BN_STATS_MERGE, K_BN_EVAL, K_BN_APPLY, K_BN_BWD_RED, K_BN_BWD_MERGE, K_BN_BWD_DX, K_BN_BWD_DX_IN_PLACE, K_LN_FWD, K_LN_BWD_DX, K_LN_BWD_DW];

/// Rows per partial sum in the layer-norm weight/bias gradient (LN_CHUNK in norm.wgsl).
const LN_CHUNK: usize = 32;

/// Batch-norm reductions (`bn_stats`, `bn_bwd_reduce`) split each channel's m values into
/// chunks, one workgroup per (chunk, channel), merged per channel by a second small kernel.
/// Aim for about this many workgroups (~2 waves on a 132-SM H100 holding 8 resident
/// 256-thread workgroups per SM, 1,056 at a time; C = 64: 32 chunks per channel) ...
const BN_TARGET_GROUPS: usize = 2048;
/// ... with at least this many values per chunk (16 per thread: 4 batches of 4 loads) ...
const BN_MIN_CHUNK: usize = 4096;
/// ... and at most this many chunks per channel (`bn_bwd_merge` gives one thread to each
/// chunk of a 256-thread workgroup; this also bounds the scratch buffer to 2 * 256 * C floats;
/// `bn_stats_merge` takes any number, for [`BatchNormPartials`]).
const BN_MAX_CHUNKS: usize = 256;

/// (chunks, values per chunk) for the batch-norm reductions of C channels of m values each.
/// Every chunk is non-empty: the last holds m - (chunks - 1) * cs >= 1 values.
fn bn_chunks(m: usize, c: usize) -> (usize, usize) {
    let want = BN_TARGET_GROUPS.div_ceil(c.max(1)).min(BN_MAX_CHUNKS).min(m.div_ceil(BN_MIN_CHUNK)).max(1);
    let cs = m.div_ceil(want).max(1);
    (m.div_ceil(cs).max(1), cs)
}

crate::gpu::gpu_params! {
    struct BnParams as "BnParams" {
        n: u32,
        c: u32,
        hw: u32,
        m: u32,
        eps: f32,
        momentum: f32,
        unbias: f32,
        training: u32,
        /// chunks per channel of the batch-norm reductions (see `bn_chunks`)
        chunks: u32,
        /// values per chunk
        cs: u32,
        _p: [u32; 2],
    }
}

crate::gpu::gpu_params! {
    struct LnParams as "LnParams" {
        rows: u32,
        d: u32,
        chunks: u32,
        _p: u32,
        eps: f32,
        _q: [f32; 3],
    }
}

/// Running statistics of a batch-norm layer. `batch_norm` in training mode updates
/// `running_mean` / `running_var` in place on the GPU (PyTorch's rule:
/// `r = (1 - momentum) * r + momentum * batch_stat`, with the unbiased batch variance).
pub struct BatchNormState {
    /// Per-channel running mean, f32 `[C]`.
    pub running_mean: Tensor,
    /// Per-channel running (unbiased) variance, f32 `[C]`.
    pub running_var: Tensor,
    /// Weight of the batch statistic in the running update.
    pub momentum: f32,
    /// Added to the variance before the square root.
    pub eps: f32,
}

impl BatchNormState {
    /// Fresh state for `c` channels: mean 0, variance 1 (PyTorch's defaults are
    /// momentum 0.1, eps 1e-5).
    pub fn new(gpu: &Gpu, c: usize, momentum: f32, eps: f32) -> Result<BatchNormState> {
        Ok(BatchNormState { running_mean: Tensor::zeros(gpu, &[c])?, running_var: super::full(gpu, &[c], 1.0)?, momentum, eps })
    }
}

/// Batch normalisation of x `[N, C, H, W]` (or `[N, C]`) with per-channel weight / bias `[C]`.
/// `training = true`: normalise with the batch statistics (biased variance) and update the
/// running statistics in place; `false`: normalise with the running statistics. Gradients
/// flow to x, weight and bias in both modes.
pub fn batch_norm(x: &Tensor, weight: &Tensor, bias: &Tensor, state: &BatchNormState, training: bool) -> Result<Tensor> {
    Ok(batch_norm_with_stats(x, weight, bias, state, training)?.0)
}

/// [`batch_norm`] that also returns the statistics it normalised with, `[2, C]`: the
/// per-channel mean and 1/sqrt(var + eps) (the batch's in training, the running ones in
/// eval), for [`batch_norm_given`] to reuse in another forward of the same step.
pub fn batch_norm_with_stats(x: &Tensor, weight: &Tensor, bias: &Tensor, state: &BatchNormState, training: bool) -> Result<(Tensor, Tensor)> {
    // every shape and dtype checked before the running statistics change
    expect_bn_input("batch_norm", x)?;
    expect_f32("batch_norm", &[weight, bias])?;
    bn_geometry("batch_norm", x, &[("weight", weight), ("bias", bias)])?;
    let stats = batch_norm_stats(x, state, training)?;
    Ok((batch_norm_apply(x, weight, bias, &stats, training)?, stats))
}

/// (N, C, H·W) of a batch-norm input `[N, C, H, W]` or `[N, C]`, every `[C]` tensor of
/// `per_channel` checked against it; a typed error naming `op` otherwise.
fn bn_geometry(op: &'static str, x: &Tensor, per_channel: &[(&str, &Tensor)]) -> Result<(usize, usize, usize)> {
    let (n, c, hw) = match *x.shape() {
        [n, c] => (n, c, 1),
        [n, c, h, w] => (n, c, h * w),
        _ => return Err(Error::shape(op, format!("expects x [N, C, H, W] or [N, C], got {:?}", x.shape()))),
    };
    for (what, t) in per_channel {
        if t.shape() != [c] {
            return Err(Error::shape(op, format!("{what} has shape {:?}, expected [{c}] for x {:?}", t.shape(), x.shape())));
        }
    }
    if n * hw == 0 || c == 0 {
        return Err(Error::shape(op, format!("empty input {:?}", x.shape())));
    }
    Ok((n, c, hw))
}

/// Batch norm's input x may be f16 (mixed precision stores a convolution's output so
/// between it and its batch norm); every other operand is f32. Errors name `op`.
fn expect_bn_input(op: &'static str, x: &Tensor) -> Result<()> {
    if !matches!(x.dtype(), DType::F32 | DType::F16) {
        return Err(Error::DType { op, msg: format!("x must be f32 or f16, got {:?} (shape {:?})", x.dtype(), x.shape()) });
    }
    Ok(())
}

/// The `HALF_X` override of the kernels that read batch norm's input x (norm.wgsl).
fn half_x(x: &Tensor) -> [(&'static str, f64); 1] {
    [("HALF_X", (x.dtype() == DType::F16) as u32 as f64)]
}

/// The statistics batch norm of x normalises with, `[2, C]` (mean, 1/sqrt(var + eps)), without
/// normalising: `training = true`: the batch's (biased variance), with the running statistics
/// updated in place; `false`: the running ones (a copy, so later in-place updates of the
/// running statistics cannot change a backward that uses it). No gradient flows through it;
/// [`batch_norm_apply`] with `batch_stats = training` is the normalisation that goes with it.
pub fn batch_norm_stats(x: &Tensor, state: &BatchNormState, training: bool) -> Result<Tensor> {
    expect_bn_input("batch_norm", x)?;
    expect_f32("batch_norm", &[&state.running_mean, &state.running_var])?;
    let (n, c, hw) = bn_geometry("batch_norm", x, &[("running_mean", &state.running_mean), ("running_var", &state.running_var)])?;
    let m = n * hw;
    if training && m < 2 {
        return Err(Error::shape(
            "batch_norm",
            format!("training needs more than one value per channel, got x {:?}", x.shape()),
        ));
    }
    let gpu = x.gpu();
    let (chunks, cs) = bn_chunks(m, c);
    let p = stats_params((n, c, hw), state, training, (chunks, cs));
    let stats = Tensor::empty(gpu, &[2, c], DType::F32)?;
    if training {
        // per-(chunk, channel) mean and M2, then merged per channel into stats and the
        // running statistics
        let part = Tensor::empty(gpu, &[2, c, chunks], DType::F32)?;
        gpu.dispatch(&K_BN_STATS, &half_x(x), bytes_of(&p), &[x.buffer(), part.buffer()], grid(gpu, chunks * c, 1))?;
        merge_stats(&p, &part, state, &stats)?;
    } else {
        eval_stats(&p, state, &stats)?;
    }
    Ok(stats)
}

/// The running statistics as batch norm normalises with them in eval, `[2, C]` (mean,
/// 1/sqrt(running_var + eps)): [`batch_norm_stats`] with `training = false`, without an input.
pub fn batch_norm_running_stats(state: &BatchNormState) -> Result<Tensor> {
    expect_f32("batch_norm", &[&state.running_mean, &state.running_var])?;
    let c = state.running_mean.numel();
    if state.running_mean.shape() != [c] || state.running_var.shape() != [c] || c == 0 {
        return Err(Error::shape("batch_norm", format!("running statistics of shapes {:?} and {:?}", state.running_mean.shape(), state.running_var.shape())));
    }
    // the eval kernel reads c and eps only
    let p = BnParams { n: 1, c: c as u32, hw: 1, m: 1, eps: state.eps, momentum: 0.0, unbias: 1.0, training: 0, chunks: 1, cs: 1, _p: [0; 2] };
    let stats = Tensor::empty(state.running_mean.gpu(), &[2, c], DType::F32)?;
    eval_stats(&p, state, &stats)?;
    Ok(stats)
}

/// Batch norm's partial statistics of an activation, computed where it was produced (a
/// convolution's epilogue: [`conv2d_bn_partials`](crate::ops::conv2d_bn_partials)) so that
/// the statistics need no pass of their own over it: `[2, C, chunks]`, the mean and M2 of
/// each channel over each chunk of `rows` consecutive values in (n, h, w) order, the layout
/// of `bn_stats`' chunks. [`batch_norm_stats_from_partials`] completes them.
pub struct BatchNormPartials {
    pub(crate) part: Tensor,
    /// values per chunk (the last chunk may hold fewer)
    pub(crate) rows: usize,
    /// values per channel (N·H·W of the activation)
    pub(crate) values: usize,
}

/// [`batch_norm_stats`] in training (x's batch statistics, the running ones updated in
/// place) from `partials` of x instead of a pass over x: the same merge, within f32
/// rounding of it (the chunks differ). Errors: partials of another shape than x's.
pub fn batch_norm_stats_from_partials(x: &Tensor, partials: &BatchNormPartials, state: &BatchNormState) -> Result<Tensor> {
    expect_bn_input("batch_norm", x)?;
    expect_f32("batch_norm", &[&partials.part, &state.running_mean, &state.running_var])?;
    let (n, c, hw) = bn_geometry("batch_norm", x, &[("running_mean", &state.running_mean), ("running_var", &state.running_var)])?;
    let m = n * hw;
    let chunks = m.div_ceil(partials.rows.max(1));
    if partials.rows == 0 || partials.values != m || partials.part.shape() != [2, c, chunks] {
        let (got, rows, values) = (partials.part.shape(), partials.rows, partials.values);
        return Err(Error::shape("batch_norm", format!("partial statistics {got:?} of {values} values per channel in chunks of {rows} do not cover x {:?} ({c} channels of {m} values)", x.shape())));
    }
    if m < 2 {
        return Err(Error::shape("batch_norm", format!("training needs more than one value per channel, got x {:?}", x.shape())));
    }
    let p = stats_params((n, c, hw), state, true, (chunks, partials.rows));
    let stats = Tensor::empty(x.gpu(), &[2, c], DType::F32)?;
    merge_stats(&p, &partials.part, state, &stats)?;
    Ok(stats)
}

/// The statistics kernels' parameters for x of (N, C, H·W) `geometry` in (chunks, values
/// per chunk) `chunking`.
fn stats_params(geometry: (usize, usize, usize), state: &BatchNormState, training: bool, chunking: (usize, usize)) -> BnParams {
    let (n, c, hw) = geometry;
    let m = n * hw;
    BnParams {
        n: n as u32,
        c: c as u32,
        hw: hw as u32,
        m: m as u32,
        eps: state.eps,
        momentum: state.momentum,
        unbias: if m > 1 { m as f32 / (m - 1) as f32 } else { 1.0 },
        training: training as u32,
        chunks: chunking.0 as u32,
        cs: chunking.1 as u32,
        _p: [0; 2],
    }
}

/// Per channel, Chan's merge of the chunks' (mean, M2) in `part` into `stats` (mean,
/// 1/sqrt(var + eps)), and the running statistics' update.
fn merge_stats(p: &BnParams, part: &Tensor, state: &BatchNormState, stats: &Tensor) -> Result<()> {
    let gpu = stats.gpu();
    gpu.dispatch(
        &K_BN_STATS_MERGE,
        &[],
        bytes_of(p),
        &[part.buffer(), stats.buffer(), state.running_mean.buffer(), state.running_var.buffer()],
        grid(gpu, p.c as usize, 1),
    )
}

fn eval_stats(p: &BnParams, state: &BatchNormState, stats: &Tensor) -> Result<()> {
    let gpu = stats.gpu();
    gpu.dispatch(
        &K_BN_EVAL,
        &[],
        bytes_of(p),
        &[state.running_mean.buffer(), state.running_var.buffer(), stats.buffer()],
        grid(gpu, p.c as usize, 256),
    )
}

/// Batch normalisation with fixed statistics `stats` `[2, C]` (mean, 1/sqrt(var + eps)), as
/// returned by [`batch_norm_with_stats`]: `y = (x - mean) * invstd * weight + bias`. The
/// statistics are constants (no gradient reaches them), as the running ones are in eval
/// mode; gradients flow to x, weight and bias.
pub fn batch_norm_given(x: &Tensor, weight: &Tensor, bias: &Tensor, stats: &Tensor) -> Result<Tensor> {
    batch_norm_apply(x, weight, bias, stats, false)
}

/// `y = (x - mean) * invstd * weight + bias` with `stats` `[2, C]` (mean, invstd). x may be
/// f16 (a convolution's output under mixed precision); y and every gradient are f32.
/// `batch_stats`: the statistics are x's own batch statistics ([`batch_norm_stats`] in
/// training), so x's gradient includes their dependence on x; otherwise they are constants
/// ([`batch_norm_given`]).
pub fn batch_norm_apply(x: &Tensor, weight: &Tensor, bias: &Tensor, stats: &Tensor, batch_stats: bool) -> Result<Tensor> {
    batch_norm_act(x, weight, bias, stats, batch_stats, BnAct::NONE)
}

/// What [`batch_norm_act`] does after normalising: add a residual, apply ReLU, and the dtype
/// it stores the result in.
#[derive(Clone, Copy)]
pub struct BnAct<'a> {
    /// Added after batch norm (f32, x's shape): a residual block's shortcut.
    pub residual: Option<&'a Tensor>,
    /// ReLU after the sum.
    pub relu: bool,
    /// F32, or F16 for an output that only feeds GEMMs under mixed precision (their operand
    /// dtype: no f32 copy and no cast).
    pub out: DType,
}

impl BnAct<'_> {
    /// Batch norm alone, f32 output.
    pub const NONE: BnAct<'static> = BnAct { residual: None, relu: false, out: DType::F32 };
}

/// `relu(batch_norm_apply(x, ...) + residual)` (each part as `act` asks) in one kernel: the
/// same values, bit for bit, as the three ops in turn, without their two intermediate
/// tensors; stored f16 when `act.out` is F16 (rounded to nearest, as a cast would). The
/// backward keeps what a ReLU keeps ([`relu_output_kept`](super::elementwise::relu_output_kept):
/// an f16 output itself, which the GEMM after it keeps anyway) and passes the masked gradient
/// to the residual and through batch norm.
pub fn batch_norm_act(x: &Tensor, weight: &Tensor, bias: &Tensor, stats: &Tensor, batch_stats: bool, act: BnAct) -> Result<Tensor> {
    let back = batch_norm_rule(x, weight, bias, stats, batch_stats)?;
    if !matches!(act.out, DType::F32 | DType::F16) {
        return Err(Error::DType { op: "batch_norm", msg: format!("output dtype must be f32 or f16, got {:?}", act.out) });
    }
    if let Some(r) = act.residual {
        expect_f32("batch_norm residual", &[r])?;
        if r.shape() != x.shape() {
            return Err(Error::shape("batch_norm", format!("residual has shape {:?}, expected x's {:?}", r.shape(), x.shape())));
        }
    }
    let gpu = x.gpu();
    let half_y = act.out == DType::F16;
    let y = Tensor::empty(gpu, x.shape(), act.out)?;
    let threads = if half_y { x.numel().div_ceil(2) } else { x.numel() };
    let overrides = [half_x(x)[0], ("RESIDUAL", act.residual.is_some() as u32 as f64), ("RELU", act.relu as u32 as f64), ("HALF_Y", half_y as u32 as f64)];
    let r = act.residual.unwrap_or(x);
    gpu.dispatch(
        &K_BN_APPLY,
        &overrides,
        bytes_of(&back.p),
        &[x.buffer(), stats.buffer(), weight.buffer(), bias.buffer(), y.buffer(), r.buffer()],
        grid(gpu, threads, 256),
    )?;
    let mut inputs = vec![x, weight, bias];
    inputs.extend(act.residual);
    let kept = if act.relu { Some(super::elementwise::relu_output_kept(&y, crate::autograd::records(&inputs))?) } else { None };
    let residual = act.residual.is_some();
    Ok(y.with_grad_fn(&inputs, || Box::new(BnActBack { bn: back, relu_kept: kept, residual })))
}

/// The backward of [`batch_norm_act`]: inputs x, weight, bias (and the residual).
struct BnActBack {
    bn: BatchNormBack,
    /// What the ReLU kept of the output, if there is one
    relu_kept: Option<Tensor>,
    residual: bool,
}

impl BackwardOp for BnActBack {
    fn name(&self) -> &'static str {
        "batch_norm"
    }
    fn backward(&self, g: &Tensor, inputs: &[Tensor]) -> Result<Vec<Option<Tensor>>> {
        // an f16 output's gradient arrives f16 from a cast after it; the kernels read f32
        // g is ours alone when it is the widened copy, or when the autodiff's handle is the only
        // one (it is dropped after this rule)
        let widened;
        let (g, ours) = if g.dtype() == DType::F16 {
            widened = super::elementwise::cast(g, DType::F32)?;
            (&widened, true)
        } else {
            (g, super::elementwise::held_alone(g) && g.dtype() == DType::F32)
        };
        let g = match &self.relu_kept {
            // in g's own storage where it can be: the masked gradient is what lives on
            // (the residual's gradient and batch norm's input), g itself not
            Some(k) => super::elementwise::relu_backward_in_place(k, g)?,
            None => g.clone(),
        };
        // the masked gradient is ours too (g's storage, or a new tensor); without a residual
        // nothing reads it after batch norm's backward, which may then write dx over it
        let reuse = !self.residual && (ours || self.relu_kept.is_some());
        let mut grads = self.bn.backward_over(&g, &inputs[..3], reuse)?;
        if self.residual {
            grads.push(inputs[3].is_tracked().then_some(g));
        }
        Ok(grads)
    }
}

/// The backward rule of [`batch_norm_apply`] (inputs x, weight, bias), checked; for ops that
/// normalise inside a fused forward (`conv2d_after_bn_relu`).
pub(crate) fn batch_norm_rule(x: &Tensor, weight: &Tensor, bias: &Tensor, stats: &Tensor, batch_stats: bool) -> Result<BatchNormBack> {
    expect_bn_input("batch_norm", x)?;
    expect_f32("batch_norm", &[weight, bias, stats])?;
    let (n, c, hw) = bn_geometry("batch_norm", x, &[("weight", weight), ("bias", bias)])?;
    if stats.shape() != [2, c] {
        return Err(Error::shape("batch_norm", format!("stats has shape {:?}, expected [2, {c}] for x {:?}", stats.shape(), x.shape())));
    }
    let m = n * hw;
    let (chunks, cs) = bn_chunks(m, c);
    // eps is already inside invstd; `training` tells the backward whether the statistics
    // depend on x
    let p = BnParams { n: n as u32, c: c as u32, hw: hw as u32, m: m as u32, eps: 0.0, momentum: 0.0, unbias: 1.0, training: batch_stats as u32, chunks: chunks as u32, cs: cs as u32, _p: [0; 2] };
    Ok(BatchNormBack { p, x: x.detach(), w: weight.detach(), stats: stats.detach() })
}

pub(crate) struct BatchNormBack {
    p: BnParams,
    x: Tensor,
    w: Tensor,
    stats: Tensor,
}

impl BatchNormBack {
    /// (x, weight, stats) as saved for the backward.
    pub(crate) fn saved(&self) -> (&Tensor, &Tensor, &Tensor) {
        (&self.x, &self.w, &self.stats)
    }

    /// The gradients of (x, weight, bias) from the output's gradient `g` (f32). With
    /// `over_g`, dx is written over g's storage (the caller says nothing reads g afterwards:
    /// one activation-sized gradient fewer at this moment of the backward); the same bits
    /// either way.
    pub(crate) fn backward_over(&self, g: &Tensor, inputs: &[Tensor], over_g: bool) -> Result<Vec<Option<Tensor>>> {
        let gpu = g.gpu();
        let c = self.p.c as usize;
        let (tx, tw, tb) = (inputs[0].is_tracked(), inputs[1].is_tracked(), inputs[2].is_tracked());
        // sums = [sum g*xhat (dweight), sum g (dbias)] per channel
        let need_sums = tw || tb || (tx && self.p.training != 0);
        let sums = Tensor::empty(gpu, &[2, c], DType::F32)?;
        if need_sums {
            // per-(chunk, channel) partial sums, then summed per channel
            let chunks = self.p.chunks as usize;
            let part = Tensor::empty(gpu, &[2, c, chunks], DType::F32)?;
            gpu.dispatch(
                &K_BN_BWD_RED,
                &half_x(&self.x),
                bytes_of(&self.p),
                &[self.x.buffer(), g.buffer(), self.stats.buffer(), part.buffer()],
                grid(gpu, chunks * c, 1),
            )?;
            gpu.dispatch(&K_BN_BWD_MERGE, &[], bytes_of(&self.p), &[part.buffer(), sums.buffer()], grid(gpu, c, 1))?;
        }
        let dx = if tx {
            let over = over_g && g.dtype() == DType::F32 && g.shape() == self.x.shape();
            let (k, dx) = if over { (&K_BN_BWD_DX_IN_PLACE, g.clone()) } else { (&K_BN_BWD_DX, Tensor::empty(gpu, self.x.shape(), DType::F32)?) };
            // in place, binding 2 (g) is not read and holds x as a placeholder: a buffer bound
            // read-only and read-write in one launch would be a usage conflict
            let g_in = if over { self.x.buffer() } else { g.buffer() };
            let n = dx.numel();
            gpu.dispatch(k, &half_x(&self.x), bytes_of(&self.p), &[self.x.buffer(), g_in, self.stats.buffer(), self.w.buffer(), sums.buffer(), dx.buffer()], grid(gpu, n, 256))?;
            Some(dx)
        } else {
            None
        };
        let part = |k: usize| -> Result<Tensor> {
            let t = Tensor::empty(gpu, &[c], DType::F32)?;
            gpu.copy(sums.buffer(), (k * c * 4) as u64, t.buffer(), 0, (c * 4) as u64)?;
            Ok(t)
        };
        let dw = if tw { Some(part(0)?) } else { None };
        let db = if tb { Some(part(1)?) } else { None };
        Ok(vec![dx, dw, db])
    }
}

impl BackwardOp for BatchNormBack {
    fn name(&self) -> &'static str {
        "batch_norm"
    }
    fn backward(&self, g: &Tensor, inputs: &[Tensor]) -> Result<Vec<Option<Tensor>>> {
        self.backward_over(g, inputs, super::elementwise::held_alone(g))
    }
}

/// Layer normalisation over the last dimension D of x `[..., D]` with weight / bias `[D]`:
/// `y = (x - mean) / sqrt(var + eps) * weight + bias` (biased variance, as PyTorch).
pub fn layer_norm(x: &Tensor, weight: &Tensor, bias: &Tensor, eps: f32) -> Result<Tensor> {
    expect_f32("layer_norm", &[x, weight, bias])?;
    let d = match x.shape().last() {
        Some(&d) if d > 0 && x.numel() > 0 => d,
        _ => return Err(Error::shape("layer_norm", format!("expects a non-empty x [..., D], got {:?}", x.shape()))),
    };
    for (what, t) in [("weight", weight), ("bias", bias)] {
        if t.shape() != [d] {
            return Err(Error::shape("layer_norm", format!("{what} has shape {:?}, expected [{d}] for x {:?}", t.shape(), x.shape())));
        }
    }
    let rows = x.numel() / d;
    let gpu = x.gpu();
    let chunks = rows.div_ceil(LN_CHUNK);
    let p = LnParams { rows: rows as u32, d: d as u32, chunks: chunks as u32, _p: 0, eps, _q: [0.0; 3] };
    let y = Tensor::empty(gpu, x.shape(), DType::F32)?;
    let stats = Tensor::empty(gpu, &[2, rows], DType::F32)?;
    gpu.dispatch(
        &K_LN_FWD,
        &[],
        bytes_of(&p),
        &[x.buffer(), weight.buffer(), bias.buffer(), y.buffer(), stats.buffer()],
        grid(gpu, rows, 1),
    )?;
    let (xs, ws) = (x.detach(), weight.detach());
    Ok(y.with_grad_fn(&[x, weight, bias], || Box::new(LayerNormBack { p, x: xs, w: ws, stats })))
}

struct LayerNormBack {
    p: LnParams,
    x: Tensor,
    w: Tensor,
    stats: Tensor,
}

impl BackwardOp for LayerNormBack {
    fn name(&self) -> &'static str {
        "layer_norm"
    }
    fn backward(&self, g: &Tensor, inputs: &[Tensor]) -> Result<Vec<Option<Tensor>>> {
        let gpu = g.gpu();
        let (rows, d, chunks) = (self.p.rows as usize, self.p.d as usize, self.p.chunks as usize);
        let (tx, tw, tb) = (inputs[0].is_tracked(), inputs[1].is_tracked(), inputs[2].is_tracked());
        let dx = if tx {
            let dx = Tensor::empty(gpu, self.x.shape(), DType::F32)?;
            gpu.dispatch(
                &K_LN_BWD_DX,
                &[],
                bytes_of(&self.p),
                &[self.x.buffer(), g.buffer(), self.w.buffer(), self.stats.buffer(), dx.buffer()],
                grid(gpu, rows, 1),
            )?;
            Some(dx)
        } else {
            None
        };
        let (mut dw, mut db) = (None, None);
        if tw || tb {
            // partial sums per chunk of rows, then the chunks summed by the reduction kernel
            let part = Tensor::empty(gpu, &[2, chunks, d], DType::F32)?;
            gpu.dispatch(
                &K_LN_BWD_DW,
                &[],
                bytes_of(&self.p),
                &[self.x.buffer(), g.buffer(), self.stats.buffer(), part.buffer()],
                grid(gpu, chunks * d, 256),
            )?;
            let sums = super::reduce::sum(&part, &[1], false)?; // [2, d]
            let take = |k: usize| -> Result<Tensor> {
                let t = Tensor::empty(gpu, &[d], DType::F32)?;
                gpu.copy(sums.buffer(), (k * d * 4) as u64, t.buffer(), 0, (d * 4) as u64)?;
                Ok(t)
            };
            if tw {
                dw = Some(take(0)?);
            }
            if tb {
                db = Some(take(1)?);
            }
        }
        Ok(vec![dx, dw, db])
    }
}
