//! 2-D convolution (PyTorch semantics, zero padding) as implicit GEMM on the GPU.
//!
//! Forward, input gradient and weight gradient are each one tiled GEMM kernel whose tile
//! loaders gather from the NCHW tensors on the fly (no im2col buffer, no host-side layout
//! copies); see `shaders/conv.wgsl` for the tiling. Each GEMM runs on a workgroup tile
//! ([`ConvTile`]): the wide 128 x 64 one, or a narrower one for few channels or a small
//! weight gradient, or under mixed precision on cooperative matrices ([`ConvKernel::Coop`],
//! `shaders/conv_coop.wgsl`), timed on the device per shape bucket (`choice`). Weight gradients reduce over
//! N*HO*WO with split-K across workgroups and a second, deterministic reduction pass (no
//! float atomics).
mod choice;
mod fused;
mod kernels;

pub use choice::{tile_for, tiles_to_time};
pub use kernels::ConvKernel;
pub(crate) use kernels::KERNELS;
use kernels::{coop_on, kernels, CoopKernels};
pub use fused::{conv2d_after_bn_relu, conv2d_after_bn_relu_ex, conv2d_bn_partials, conv2d_forward_on, conv2d_bn_partials_on_tile, conv2d_inference, conv2d_inference_on_tile, BnRelu, ConvEpilogue};
use choice::Gemm;
use super::{bytes_of, expect_f32, expect_same_gpu, grid, split_grid};
use super::elementwise::AbsMax;
use crate::autograd::BackwardOp;
use crate::error::{Error, Result};
use crate::gpu::{ConvTile, Kernel};
use crate::tensor::{DType, Tensor};

/// Depth (K) of one K-slice of every conv GEMM (`BK` in `shaders/conv.wgsl`).
pub const CONV_TILE_K: usize = 16;
/// Split-K of the weight gradient: aim for at least this many threads in flight (1024
/// workgroups of the wide tile)...
const DW_TARGET_THREADS: usize = 1024 * 256;
/// ...but give every split at least this many K-slices of work.
const DW_MIN_SLICES_PER_SPLIT: usize = 8;
/// Cap on the split-K partial buffer.
const DW_MAX_PARTIAL_BYTES: usize = 256 << 20;

#[derive(Clone, Copy, Debug)]
/// Stride, padding and dilation of a 2-D convolution, each (height, width). `Default`: stride 1, no
/// padding, dilation 1.
pub struct Conv2dParams {
    /// Step between output positions, >= 1.
    pub stride: (usize, usize),
    /// Zeros added on each side of the input.
    pub padding: (usize, usize),
    /// Spacing between kernel taps, >= 1 (1 = dense).
    pub dilation: (usize, usize),
}

impl Default for Conv2dParams {
    fn default() -> Self {
        Conv2dParams { stride: (1, 1), padding: (0, 0), dilation: (1, 1) }
    }
}

/// Output size (HO, WO) of a convolution of an `h` x `w` image with a `kh` x `kw` kernel
/// (PyTorch's formula; 0 when the dilated kernel does not fit the padded image).
pub fn conv2d_output_size(h: usize, w: usize, kh: usize, kw: usize, p: &Conv2dParams) -> (usize, usize) {
    let one = |size: usize, k: usize, s: usize, pad: usize, d: usize| -> usize {
        let ext = d.max(1) * (k.max(1) - 1) + 1;
        let padded = size + 2 * pad;
        if k == 0 || padded < ext {
            0
        } else {
            (padded - ext) / s.max(1) + 1
        }
    };
    (
        one(h, kh, p.stride.0, p.padding.0, p.dilation.0),
        one(w, kw, p.stride.1, p.padding.1, p.dilation.1),
    )
}

crate::gpu::gpu_params! {
    struct Params as "Params" {
        n: u32,
        c: u32,
        h: u32,
        w: u32,
        o: u32,
        kh: u32,
        kw: u32,
        ho: u32,
        wo: u32,
        sh: u32,
        sw: u32,
        ph: u32,
        pw: u32,
        dh: u32,
        dw: u32,
        m: u32,
        k: u32,
        chunk: u32,
        splits: u32,
        direct: u32,
        flags: u32,
        x0: u32,
        y0: u32,
        z0: u32,
    }
}

/// Validated geometry of one convolution.
#[derive(Clone, Copy, Debug)]
struct Geom {
    n: usize,
    c: usize,
    h: usize,
    w: usize,
    o: usize,
    kh: usize,
    kw: usize,
    ho: usize,
    wo: usize,
    p: Conv2dParams,
    /// the kernel every GEMM of this convolution runs on (tests, benchmarks, tuning); None:
    /// each GEMM's own (`choice`)
    kernel: Option<ConvKernel>,
    /// x (w) is f16 (mixed precision's operands; widened as loaded)
    half_x: bool,
    half_w: bool,
    /// the forward rounds y to f16 values (`HALF_Y`), for a y stored f16 ([`half_output`])
    round_y: bool,
    /// the weights are scaled (`w_scale`: AIM's masks), which the cooperative-matrix kernels
    /// do not do
    scaled: bool,
}

impl Geom {
    fn params(&self) -> Params {
        let u = |v: usize| v as u32;
        Params {
            n: u(self.n),
            c: u(self.c),
            h: u(self.h),
            w: u(self.w),
            o: u(self.o),
            kh: u(self.kh),
            kw: u(self.kw),
            ho: u(self.ho),
            wo: u(self.wo),
            sh: u(self.p.stride.0),
            sw: u(self.p.stride.1),
            ph: u(self.p.padding.0),
            pw: u(self.p.padding.1),
            dh: u(self.p.dilation.0),
            dw: u(self.p.dilation.1),
            m: 0,
            k: 0,
            chunk: 0,
            splits: 0,
            direct: 0,
            flags: 0,
            x0: 0,
            y0: 0,
            z0: 0,
        }
    }
    fn kernel_len(&self) -> usize {
        self.c * self.kh * self.kw
    }
    /// The pipeline constants of the operands' and the output's precision (`HALF_X`,
    /// `HALF_W`, `HALF_Y`), and of the interior form (`INTERIOR`).
    fn constants(&self, interior: bool) -> [(&'static str, f64); 4] {
        let f = |b: bool| b as u32 as f64;
        [("HALF_X", f(self.half_x)), ("HALF_W", f(self.half_w)), ("HALF_Y", f(self.round_y)), ("INTERIOR", f(interior))]
    }
    /// The workgroups (along the grid's x and y: M and N tiles) that run `kernel`'s interior
    /// form in GEMM `which` with `m` x `n` outputs: those inside M and N where every K-slice
    /// is whole (dX at stride 1 only: one phase), none for a guarded tile or cooperative
    /// matrices. `w` is the forward's weight, which the interior form reads as vec4s (its
    /// binding must start on 16 bytes).
    fn interior(&self, which: Gemm, kernel: ConvKernel, m: usize, n: usize, w: Option<&Tensor>) -> [usize; 2] {
        let ConvKernel::Interior(t) = kernel else { return [0, 0] };
        let k = match which {
            Gemm::Fwd => self.kernel_len(),
            Gemm::Dx if self.p.stride == (1, 1) => self.o * self.kh * self.kw,
            Gemm::Dx => return [0, 0],
            Gemm::Dw => self.n * self.ho * self.wo,
        };
        let aligned = w.is_none_or(|w| w.buffer().offset() % 16 == 0);
        if !k.is_multiple_of(t.k_slice() as usize) || !aligned {
            return [0, 0];
        }
        [m / t.rows(), n / t.cols()]
    }
}

fn check(x: &Tensor, w: &Tensor, bias: Option<&Tensor>, p: &Conv2dParams, w_scale: Option<&Tensor>) -> Result<Geom> {
    const OP: &str = "conv2d";
    let mut all: Vec<&Tensor> = vec![x, w];
    all.extend(bias);
    all.extend(w_scale);
    // x and w f32 or f16 (mixed precision), the rest f32
    for t in [x, w] {
        if !matches!(t.dtype(), DType::F32 | DType::F16) {
            return Err(Error::DType { op: OP, msg: format!("x and w must be f32 or f16, got {:?} (shape {:?})", t.dtype(), t.shape()) });
        }
    }
    expect_f32(OP, &all[2..])?;
    expect_same_gpu(OP, &all)?;
    if x.dims() != 4 {
        return Err(Error::shape(OP, format!("input must be [N, C, H, W], got {:?}", x.shape())));
    }
    if w.dims() != 4 {
        return Err(Error::shape(OP, format!("weight must be [O, C, KH, KW], got {:?}", w.shape())));
    }
    let (n, c, h, wd) = (x.dim(0), x.dim(1), x.dim(2), x.dim(3));
    let (o, wc, kh, kw) = (w.dim(0), w.dim(1), w.dim(2), w.dim(3));
    if x.numel() == 0 || w.numel() == 0 {
        return Err(Error::shape(OP, format!("empty input {:?} or weight {:?}", x.shape(), w.shape())));
    }
    if wc != c {
        return Err(Error::shape(
            OP,
            format!("input {:?} has {c} channels but weight {:?} expects {wc}", x.shape(), w.shape()),
        ));
    }
    if p.stride.0 == 0 || p.stride.1 == 0 || p.dilation.0 == 0 || p.dilation.1 == 0 {
        return Err(Error::shape(OP, format!("stride {:?} and dilation {:?} must be >= 1", p.stride, p.dilation)));
    }
    if let Some(b) = bias {
        if b.shape() != [o] {
            return Err(Error::shape(OP, format!("bias {:?} must be [{o}] for weight {:?}", b.shape(), w.shape())));
        }
    }
    if let Some(s) = w_scale {
        if s.shape() != w.shape() {
            return Err(Error::shape(OP, format!("w_scale {:?} must match weight {:?}", s.shape(), w.shape())));
        }
    }
    let (ho, wo) = conv2d_output_size(h, wd, kh, kw, p);
    if ho == 0 || wo == 0 {
        return Err(Error::shape(
            OP,
            format!(
                "kernel {:?} (dilation {:?}) is larger than the padded input {:?} (padding {:?})",
                [kh, kw],
                p.dilation,
                [h + 2 * p.padding.0, wd + 2 * p.padding.1],
                p.padding
            ),
        ));
    }
    // Kernels index with 32-bit integers (coordinates as i32).
    let lim = i32::MAX as usize / 4;
    let big = [n * c * h * wd, n * o * ho * wo, o * c * kh * kw, h + 2 * p.padding.0, wd + 2 * p.padding.1];
    if big.iter().any(|&v| v > lim) || p.dilation.0 * kh > lim || p.dilation.1 * kw > lim {
        return Err(Error::shape(OP, format!("input {:?} / weight {:?} too large for 32-bit indexing", x.shape(), w.shape())));
    }
    let (half_x, half_w) = (x.dtype() == DType::F16, w.dtype() == DType::F16);
    Ok(Geom { n, c, h, w: wd, o, kh, kw, ho, wo, p: *p, kernel: None, half_x, half_w, round_y: false, scaled: w_scale.is_some() })
}

impl Geom {
    /// The kernel GEMM `which` (`m` x `n` outputs) runs on: the forced one, else (under
    /// [`prefer_coop`](crate::ops::prefer_coop)) the cooperative-matrix kernel where it applies, else the choice for
    /// its shape on this device (`choice`).
    fn kernel(&self, which: Gemm, m: usize, n: usize, gpu: &crate::Gpu) -> Result<ConvKernel> {
        match self.kernel {
            Some(k) => Ok(k),
            None if self.coop_preferred(which) && coop_on(gpu).is_some() => Ok(ConvKernel::Coop),
            None => choice::choose(self, which, m, n, gpu),
        }
    }
    /// Whether [`prefer_coop`](crate::ops::prefer_coop) puts GEMM `which` on the cooperative-matrix kernel.
    fn coop_preferred(&self, which: Gemm) -> bool {
        let (forward, gradients) = crate::ops::tune::coop_preferred();
        (if which == Gemm::Fwd { forward } else { gradients }) && self.coop_applies(which)
    }
    /// Whether the cooperative-matrix kernel computes GEMM `which`: its operands other than dy
    /// f16 (the forward's x and w, dX's w, dW's x), no weight scale.
    fn coop_applies(&self, which: Gemm) -> bool {
        let half = match which {
            Gemm::Fwd => self.half_x && self.half_w,
            Gemm::Dx => self.half_w,
            Gemm::Dw => self.half_x,
        };
        half && !self.scaled
    }
    /// The cooperative-matrix kernels for GEMM `which`, or the error naming what they need.
    fn coop(&self, which: Gemm, gpu: &crate::Gpu) -> Result<&'static CoopKernels> {
        match coop_on(gpu) {
            Some(k) if self.coop_applies(which) => Ok(k),
            _ => Err(Error::Other(format!(
                "conv2d: the cooperative-matrix {which:?} needs f16 operands (x and w forward, w for dX, x for dW), no weight scale, and an adapter with cooperative matrices (or shader f16, emulated)"
            ))),
        }
    }
}

/// Launch a tiled conv kernel over `groups` workgroups, the first `interior` along x and y
/// in its interior form ([`Geom::interior`]) and the rest, the right and bottom strips,
/// guarded; each region split at the per-dimension limit (the kernels add the launch's
/// first workgroup, `x0, y0, z0`, to their workgroup id).
fn launch(k: &Kernel, g: &Geom, pr: &mut Params, buffers: &[&crate::gpu::BufferRange], groups: [usize; 3], interior: [usize; 2], gpu: &crate::Gpu) -> Result<()> {
    let [ix, iy] = interior;
    // (interior form, first x, first y, width, height)
    let regions = [(true, 0, 0, ix, iy), (false, ix, 0, groups[0] - ix, groups[1]), (false, 0, iy, ix, groups[1] - iy)];
    for (form, x, y, wide, high) in regions {
        if wide == 0 || high == 0 {
            continue;
        }
        for (first, n) in split_grid(gpu, [wide, high, groups[2]]) {
            [pr.x0, pr.y0, pr.z0] = [x as u32 + first[0], y as u32 + first[1], first[2]];
            gpu.dispatch(k, &g.constants(form), bytes_of(pr), buffers, n)?;
        }
    }
    Ok(())
}

/// The forward GEMM, its epilogue applying `bias` then `epi` (checked by the caller).
fn forward(g: &Geom, x: &Tensor, w: &Tensor, bias: Option<&Tensor>, scale: Option<&Tensor>, epi: &ConvEpilogue) -> Result<Tensor> {
    Ok(forward_ex(g, x, w, bias, scale, epi, false)?.0)
}

/// [`forward`], and with `partials` batch norm's partial statistics of y from the epilogue:
/// `[2, O, row tiles]` (the mean and M2 of each channel over each row tile's pixels, the
/// tile's row count beside it). Partials only with a plain epilogue (the bias alone).
fn forward_ex(g: &Geom, x: &Tensor, w: &Tensor, bias: Option<&Tensor>, scale: Option<&Tensor>, epi: &ConvEpilogue, partials: bool) -> Result<(Tensor, Option<(Tensor, usize)>)> {
    let gpu = x.gpu();
    let plain = epi.batch_norm.is_none() && epi.residual.is_none() && !epi.relu;
    if partials && !plain {
        return Err(Error::Other("conv2d: batch-norm partial statistics of y need an epilogue of the bias alone".into()));
    }
    // an output rounded to f16 is stored as f16 by the kernel itself where H*W is even (each
    // f16 word then has one writer; conv_params.wgsl), else as f32 for the caller's cast
    let half_y = g.round_y && (g.ho * g.wo).is_multiple_of(2);
    let y = Tensor::empty(gpu, &[g.n, g.o, g.ho, g.wo], if half_y { DType::F16 } else { DType::F32 })?;
    let mut pr = g.params();
    let m = g.n * g.ho * g.wo;
    pr.m = m as u32;
    pr.k = g.kernel_len() as u32;
    let t = g.kernel(Gemm::Fwd, m, g.o, gpu)?;
    let part = if partials { Some(Tensor::empty(gpu, &[2, g.o, m.div_ceil(t.rows())], DType::F32)?) } else { None };
    let bit = |on: bool, b: u32| if on { b } else { 0 };
    pr.flags = bit(bias.is_some(), 2) | bit(epi.batch_norm.is_some(), 4) | bit(epi.residual.is_some(), 8) | bit(epi.relu, 16) | bit(partials, 32) | bit(half_y, 64);
    // absent optional operands bind an already-bound buffer (never read or written)
    let b_buf = bias.unwrap_or(w).buffer();
    let s_buf = scale.unwrap_or(w).buffer();
    let [bn_stats, bn_w, bn_b] = epi.batch_norm.map_or([w; 3], |(s, gw, gb)| [s, gw, gb]).map(|t| t.buffer());
    let res = epi.residual.unwrap_or(w).buffer();
    let part_buf = part.as_ref().unwrap_or(w).buffer();
    // y is bound three times, as f32, as f16 words and as vec4s: the kernel writes the view
    // of its dtype (and, f32, the vec4s where its tile stores 4 pixels at once)
    // w is bound again as vec4s for the interior form (which never reads a weight of under
    // 16 bytes: its K would not be a whole number of slices)
    let (y4, w4) = (vec4_binding(&y)?, vec4_binding(w)?);
    let buffers = [x.buffer(), w.buffer(), b_buf, s_buf, y.buffer(), bn_stats, bn_w, bn_b, res, part_buf, x.buffer(), w.buffer(), y.buffer(), y4.buffer(), w4.buffer()];
    let groups = [m.div_ceil(t.rows()), g.o.div_ceil(t.cols()), 1];
    match t {
        ConvKernel::Tile(tile) | ConvKernel::Interior(tile) => {
            let k = if scale.is_some() { &kernels(tile).fwd_scaled } else { &kernels(tile).fwd };
            launch(k, g, &mut pr, &buffers, groups, g.interior(Gemm::Fwd, t, m, g.o, Some(w)), gpu)?;
        }
        ConvKernel::Coop => {
            let k = g.coop(Gemm::Fwd, gpu)?;
            // the module declares HALF_Y alone (its operands are always f16)
            let constants = [("HALF_Y", g.round_y as u32 as f64)];
            for (first, n) in split_grid(gpu, groups) {
                [pr.x0, pr.y0, pr.z0] = first;
                gpu.dispatch(&k.fwd, &constants, bytes_of(&pr), &buffers, n)?;
            }
        }
    }
    Ok((y, part.map(|p| (p, t.rows()))))
}

/// dX = transposed convolution of dY with (w * scale), one grid z per stride phase.
fn grad_input(g: &Geom, dy_in: &AbsMax, w: &Tensor, scale: Option<&Tensor>) -> Result<Tensor> {
    let dy = dy_in.tensor();
    let gpu = dy.gpu();
    let dx = Tensor::empty(gpu, &[g.n, g.c, g.h, g.w], DType::F32)?;
    let mut pr = g.params();
    let (sh, sw) = g.p.stride;
    // largest phase image: ceil(H / sh) x ceil(W / sw)
    let mp = g.n * g.h.div_ceil(sh) * g.w.div_ceil(sw);
    let s_buf = scale.unwrap_or(w).buffer();
    let t = g.kernel(Gemm::Dx, mp, g.c, gpu)?;
    let groups = [mp.div_ceil(t.rows()), g.c.div_ceil(t.cols()), sh * sw];
    match t {
        ConvKernel::Tile(tile) | ConvKernel::Interior(tile) => {
            let k = if scale.is_some() { &kernels(tile).dx_scaled } else { &kernels(tile).dx };
            let interior = g.interior(Gemm::Dx, t, mp, g.c, None);
            let dx4 = vec4_binding(&dx)?;
            launch(k, g, &mut pr, &[dy.buffer(), w.buffer(), s_buf, dx.buffer(), w.buffer(), dx4.buffer()], groups, interior, gpu)?;
        }
        ConvKernel::Coop => {
            let k = g.coop(Gemm::Dx, gpu)?;
            let amax = dy_in.bits()?; // dy's per-tensor scale, shared by dX and dW
            launch_coop(&k.dx, &mut pr, &[dy.buffer(), w.buffer(), amax.buffer(), dx.buffer()], groups, gpu)?;
        }
    }
    Ok(dx)
}

/// `t` for a binding the kernel reads or writes as vec4s, which must hold one: a tensor of
/// under 16 bytes binds a placeholder instead (no kernel takes its vec4 path for one: each
/// needs a multiple of 4 values, at least 4).
fn vec4_binding(t: &Tensor) -> Result<Tensor> {
    if t.buffer().size() >= 16 {
        Ok(t.clone())
    } else {
        Tensor::empty(t.gpu(), &[4], DType::F32)
    }
}

/// Launch a cooperative-matrix gradient kernel over `groups` workgroups, split at the
/// per-dimension limit (its module declares `HALF_Y` alone).
fn launch_coop(k: &Kernel, pr: &mut Params, buffers: &[&crate::gpu::BufferRange], groups: [usize; 3], gpu: &crate::Gpu) -> Result<()> {
    for (first, n) in split_grid(gpu, groups) {
        [pr.x0, pr.y0, pr.z0] = first;
        gpu.dispatch(k, &[("HALF_Y", 0.0)], bytes_of(pr), buffers, n)?;
    }
    Ok(())
}

/// Number of split-K slices for the weight gradient of `g` on tile `t` (deterministic in
/// the shape).
fn dw_splits(g: &Geom, t: ConvKernel) -> (usize, usize) {
    let kred = g.n * g.ho * g.wo;
    let slices = kred.div_ceil(CONV_TILE_K);
    let threads = t.tile().map_or(128, |t| t.workgroup_size());
    let tiles = g.kernel_len().div_ceil(t.rows()) * g.o.div_ceil(t.cols());
    let per_split_bytes = g.o * g.kernel_len() * 4;
    let mut splits = (DW_TARGET_THREADS / (tiles * threads as usize).max(1))
        .min(slices / DW_MIN_SLICES_PER_SPLIT)
        .min(DW_MAX_PARTIAL_BYTES / per_split_bytes.max(1))
        .clamp(1, 65535);
    let chunk_slices = slices.div_ceil(splits);
    splits = slices.div_ceil(chunk_slices);
    (splits, chunk_slices * CONV_TILE_K)
}

/// dW = (sum over n, ho, wo of dY x im2col(x)) * scale (scale applied when given).
fn grad_weight(g: &Geom, x: &Tensor, dy_in: &AbsMax, scale: Option<&Tensor>) -> Result<Tensor> {
    let dy = dy_in.tensor();
    let gpu = x.gpu();
    let dw = Tensor::empty(gpu, &[g.o, g.c, g.kh, g.kw], DType::F32)?;
    let kl = g.kernel_len();
    let t = g.kernel(Gemm::Dw, kl, g.o, gpu)?;
    let (splits, chunk) = dw_splits(g, t);
    let mut pr = g.params();
    pr.m = kl as u32;
    pr.k = (g.n * g.ho * g.wo) as u32;
    pr.chunk = chunk as u32;
    pr.splits = splits as u32;
    pr.direct = (splits == 1) as u32;
    pr.flags = scale.is_some() as u32;
    let groups = [kl.div_ceil(t.rows()), g.o.div_ceil(t.cols()), splits];
    let part = if splits == 1 { None } else { Some(Tensor::empty(gpu, &[splits, g.o * kl], DType::F32)?) };
    let out = part.as_ref().unwrap_or(&dw).buffer();
    match t {
        ConvKernel::Tile(tile) | ConvKernel::Interior(tile) => {
            let s_buf = scale.unwrap_or(x).buffer();
            let k = if scale.is_some() { &kernels(tile).dw_scaled } else { &kernels(tile).dw };
            let interior = g.interior(Gemm::Dw, t, kl, g.o, None);
            let out4 = vec4_binding(part.as_ref().unwrap_or(&dw))?;
            launch(k, g, &mut pr, &[x.buffer(), dy.buffer(), s_buf, out, x.buffer(), out4.buffer()], groups, interior, gpu)?;
        }
        ConvKernel::Coop => {
            let k = g.coop(Gemm::Dw, gpu)?;
            let amax = dy_in.bits()?; // dy's per-tensor scale, shared by dX and dW
            launch_coop(&k.dw, &mut pr, &[x.buffer(), dy.buffer(), amax.buffer(), out], groups, gpu)?;
        }
    }
    if let Some(part) = &part {
        // the split-K partials' sum in a fixed order (any instantiation's reduction kernel)
        let s_buf = scale.unwrap_or(part).buffer();
        gpu.dispatch(&kernels(ConvTile::T128x64).dw_reduce, &[], bytes_of(&pr), &[part.buffer(), s_buf, dw.buffer()], grid(gpu, g.o * kl, 256))?;
    }
    Ok(dw)
}

fn grad_bias(g: &Geom, dy: &Tensor) -> Result<Tensor> {
    let gpu = dy.gpu();
    let db = Tensor::empty(gpu, &[g.o], DType::F32)?;
    // one workgroup per channel, no GEMM tile: any instantiation's
    gpu.dispatch(&kernels(ConvTile::T128x64).dbias, &[], bytes_of(&g.params()), &[dy.buffer(), db.buffer()], grid(gpu, g.o, 1))?;
    Ok(db)
}

struct Conv2dBack {
    g: Geom,
    x: Tensor,
    w: Tensor,
    scale: Option<Tensor>,
    has_bias: bool,
}

impl BackwardOp for Conv2dBack {
    fn name(&self) -> &'static str {
        "conv2d"
    }
    fn backward(&self, dy: &Tensor, inputs: &[Tensor]) -> Result<Vec<Option<Tensor>>> {
        let g = &self.g;
        if dy.shape() != [g.n, g.o, g.ho, g.wo] || dy.dtype() != DType::F32 {
            return Err(Error::shape(
                "conv2d backward",
                format!("gradient {:?} {:?} for output [{}, {}, {}, {}]", dy.shape(), dy.dtype(), g.n, g.o, g.ho, g.wo),
            ));
        }
        let dy_in = AbsMax::new(dy);
        let mut out = Vec::with_capacity(inputs.len());
        out.push(if inputs[0].is_tracked() { Some(grad_input(g, &dy_in, &self.w, self.scale.as_ref())?) } else { None });
        let scale_idx = 2 + self.has_bias as usize;
        let scale_tracked = self.scale.is_some() && inputs.get(scale_idx).is_some_and(|t| t.is_tracked());
        let mut dscale = None;
        if inputs[1].is_tracked() || scale_tracked {
            if scale_tracked {
                // d/dscale = dW_raw * w; d/dw = dW_raw * scale
                let raw = grad_weight(g, &self.x, &dy_in, None)?;
                let s = self.scale.as_ref().expect("scale present");
                let w = super::elementwise::cast(&self.w, DType::F32)?; // f16 under mixed precision
                dscale = Some(super::elementwise::mul(&raw, &w)?);
                out.push(if inputs[1].is_tracked() { Some(super::elementwise::mul(&raw, s)?) } else { None });
            } else {
                out.push(Some(grad_weight(g, &self.x, &dy_in, self.scale.as_ref())?));
            }
        } else {
            out.push(None);
        }
        if self.has_bias {
            out.push(if inputs[2].is_tracked() { Some(grad_bias(g, dy)?) } else { None });
        }
        if self.scale.is_some() {
            out.push(dscale);
        }
        Ok(out)
    }
}

/// x `[N, C, H, W]`, w `[O, C, KH, KW]`, bias `[O]`; y `[N, O, HO, WO]` (PyTorch semantics, zero padding).
/// w_scale: optional element-wise scale of w's shape applied inside the kernel when loading weights
/// (AIM's per-parameter masks); the weight gradient is masked/scaled the same way; no cost when None.
pub fn conv2d(x: &Tensor, w: &Tensor, bias: Option<&Tensor>, p: Conv2dParams, w_scale: Option<&Tensor>) -> Result<Tensor> {
    conv2d_on_tile(x, w, bias, p, w_scale, None)
}

/// [`conv2d`] with every GEMM of the forward and backward on tile `tile` (None: each on
/// [`tile_for`] its shape). For the tests and benchmarks of each tile.
#[doc(hidden)]
pub fn conv2d_on_tile(x: &Tensor, w: &Tensor, bias: Option<&Tensor>, p: Conv2dParams, w_scale: Option<&Tensor>, tile: Option<ConvTile>) -> Result<Tensor> {
    Ok(conv2d_recorded(x, w, bias, p, w_scale, tile.map(ConvKernel::Tile), false)?.0)
}

/// [`conv2d`] with every GEMM of the forward and backward on `kernel`. For the tests of the
/// cooperative-matrix kernels.
#[doc(hidden)]
pub fn conv2d_on_kernel(x: &Tensor, w: &Tensor, bias: Option<&Tensor>, p: Conv2dParams, w_scale: Option<&Tensor>, kernel: ConvKernel) -> Result<Tensor> {
    Ok(conv2d_recorded(x, w, bias, p, w_scale, Some(kernel), false)?.0)
}

/// The workgroups (M tiles, N tiles) that run `kernel`'s interior form in the forward, dX and
/// dW of this convolution ([`ConvKernel::Interior`]; zeros for other kernels). For the tests
/// of the interior form, which would otherwise pass on a launch that never used it.
#[doc(hidden)]
pub fn conv2d_interior_workgroups(x: &Tensor, w: &Tensor, p: Conv2dParams, kernel: ConvKernel) -> Result<[[usize; 2]; 3]> {
    let g = check(x, w, None, &p, None)?;
    let mp = g.n * g.h.div_ceil(p.stride.0) * g.w.div_ceil(p.stride.1);
    Ok([
        g.interior(Gemm::Fwd, kernel, g.n * g.ho * g.wo, g.o, Some(w)),
        g.interior(Gemm::Dx, kernel, mp, g.c, None),
        g.interior(Gemm::Dw, kernel, g.kernel_len(), g.o, None),
    ])
}

/// Whether a convolution's output that goes to a batch norm with batch statistics (`partials`)
/// is stored f16: under mixed precision ([`crate::autograd::autocast`]), where it is the
/// largest tensor a training step keeps for its backward. The forward then rounds y to f16
/// values before the partial statistics (`HALF_Y`) and stores them as f16 where H*W is even
/// ([`forward_ex`]); a cast stores them where it is odd.
fn half_output(partials: bool) -> bool {
    partials && crate::autograd::autocast_enabled()
}

/// The convolution as an autograd op, with batch norm's partial statistics of y when
/// `partials` ([`forward_ex`]); y is f16 where [`half_output`].
fn conv2d_recorded(x: &Tensor, w: &Tensor, bias: Option<&Tensor>, p: Conv2dParams, w_scale: Option<&Tensor>, kernel: Option<ConvKernel>, partials: bool) -> Result<(Tensor, Option<(Tensor, usize)>)> {
    let mut g = check(x, w, bias, &p, w_scale)?;
    g.kernel = kernel;
    let half = half_output(partials);
    let (y, part) = forward_ex(&Geom { round_y: half, ..g }, x, w, bias, w_scale, &ConvEpilogue::default(), partials)?;
    let mut inputs: Vec<&Tensor> = vec![x, w];
    inputs.extend(bias);
    inputs.extend(w_scale);
    let y = y.with_grad_fn(&inputs, || {
        Box::new(Conv2dBack { g, x: x.detach(), w: w.detach(), scale: w_scale.map(|s| s.detach()), has_bias: bias.is_some() })
    });
    Ok((if half { super::elementwise::cast(&y, DType::F16)? } else { y }, part))
}
