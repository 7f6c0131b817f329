//! Batched matrix multiply with transposes, broadcast batch dims and element-wise operand
//! scales (AIM's per-parameter weight masks), plus the PyTorch-layout linear layer.
//!
//! One kernel family (`shaders/matmul.wgsl`): a tiled, register-blocked GEMM in two tile
//! sizes (128x128 with 8x8 outputs per thread for large problems, 64x64 with 4x4 otherwise)
//! and a one-thread-per-output reference entry that only the tests use. Transposes and
//! scales are handled inside the kernel's loads, so the backward pass never materialises a
//! transposed or masked copy.
use super::elementwise::broadcast_shape;
use super::{bytes_of, expect_f32, expect_same_gpu, grid, split_grid};
use crate::autograd::BackwardOp;
use crate::error::{Error, Result};
use crate::gpu::{Access, Kernel, Shader};
use crate::tensor::{numel, DType, Tensor};

const R: Access = Access::Read;
const RW: Access = Access::ReadWrite;
/// A, SA, B, SB, bias, C.
const BINDINGS: &[Access] = &[R, R, R, R, R, RW];
const K_TILE128: Kernel = Kernel::new(Shader::Matmul, "gemm_tile128", BINDINGS, &Params::LAYOUT);
const K_TILE64: Kernel = Kernel::new(Shader::Matmul, "gemm_tile64", BINDINGS, &Params::LAYOUT);
const K_REF: Kernel = Kernel::new(Shader::Matmul, "gemm_ref", BINDINGS, &Params::LAYOUT);
/// Every kernel of this file (for the interface test, `tests/gpu/kernels.rs`).
pub(crate) const KERNELS: &[Kernel] = &[K_TILE128, K_TILE64, K_REF];

/// Most broadcast batch dims a matmul takes (after dropping dims of size 1).
pub const MAX_BATCH_DIMS: usize = 8;

const HAS_SA: u32 = 1;
const HAS_SB: u32 = 2;
const HAS_BIAS: u32 = 4;

/// Below this many 128x128 output tiles the 64x64 kernel is used: with fewer tiles than
/// streaming multiprocessors on a large GPU (132 on the H100) the big tile leaves most of
/// the machine idle, and the small tile gives 4x as many workgroups.
const TILE128_MIN_TILES: usize = 132;

crate::gpu::gpu_params! {
    struct Params as "Params" {
        m: u32,
        n: u32,
        k: u32,
        batch: u32,
        trans_a: u32,
        trans_b: u32,
        flags: u32,
        nbd: u32,
        z0: u32,
        x0: u32,
        y0: u32,
        _p: u32,
        bshape: [u32; MAX_BATCH_DIMS],
        bsa: [u32; MAX_BATCH_DIMS],
        bsb: [u32; MAX_BATCH_DIMS],
    }
}

/// Options of [`matmul_ex`]. `Default`: no transposes, no scale.
#[derive(Clone, Copy, Debug, Default)]
pub struct MatmulOpts<'a> {
    pub trans_a: bool,
    pub trans_b: bool,
    pub b_scale: Option<&'a Tensor>,
}

/// Which kernel runs a matmul. Only for tests and benchmarks: [`matmul_ex`] always picks
/// by size (`Auto`).
#[doc(hidden)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MatmulKernel {
    Auto,
    Tile64,
    Tile128,
    Reference,
}

/// Launch geometry of one GEMM, derived from the operand shapes.
struct Plan {
    m: usize,
    n: usize,
    k: usize,
    /// Output matrices (1 when the batch was folded into M).
    batch: usize,
    ta: bool,
    tb: bool,
    nbd: usize,
    bshape: [u32; MAX_BATCH_DIMS],
    bsa: [u32; MAX_BATCH_DIMS],
    bsb: [u32; MAX_BATCH_DIMS],
    out_shape: Vec<usize>,
}

fn tr(t: bool) -> &'static str {
    if t {
        " (transposed)"
    } else {
        ""
    }
}

/// Shapes -> geometry. A: [..., M, K] ([..., K, M] if `ta`), B: [..., K, N] ([..., N, K]
/// if `tb`), batch dims broadcast numpy-style.
fn plan(op: &'static str, a: &[usize], ta: bool, b: &[usize], tb: bool) -> Result<Plan> {
    if a.len() < 2 || b.len() < 2 {
        return Err(Error::shape(op, format!("operands must be at least 2-D, got A {a:?} and B {b:?}")));
    }
    let (ar, ac) = (a[a.len() - 2], a[a.len() - 1]);
    let (br, bc) = (b[b.len() - 2], b[b.len() - 1]);
    let (m, k) = if ta { (ac, ar) } else { (ar, ac) };
    let (k2, n) = if tb { (bc, br) } else { (br, bc) };
    if k != k2 {
        return Err(Error::shape(
            op,
            format!("inner dimensions differ: A {a:?}{} has K = {k}, B {b:?}{} has K = {k2}", tr(ta), tr(tb)),
        ));
    }
    let (ab, bb) = (&a[..a.len() - 2], &b[..b.len() - 2]);
    let out_batch = broadcast_shape(op, ab, bb)
        .map_err(|_| Error::shape(op, format!("batch dims of A {a:?} and B {b:?} do not broadcast")))?;
    let mut out_shape = out_batch.clone();
    out_shape.extend([m, n]);
    for (what, s) in [("A", a), ("B", b), ("output", &out_shape[..])] {
        if numel(s) > u32::MAX as usize {
            return Err(Error::shape(op, format!("{what} {s:?} has more than 2^32 elements")));
        }
    }
    let batch = numel(&out_batch);
    let mut p = Plan {
        m,
        n,
        k,
        batch,
        ta,
        tb,
        nbd: 0,
        bshape: [0; MAX_BATCH_DIMS],
        bsa: [0; MAX_BATCH_DIMS],
        bsb: [0; MAX_BATCH_DIMS],
        out_shape,
    };
    if numel(bb) == 1 && !ta {
        // B shared by every batch and A's rows contiguous: [batch*M, K] x [K, N] is one GEMM
        // with batch-many times more rows, far better than a batched launch.
        p.m = batch * m;
        p.batch = 1;
        return Ok(p);
    }
    // Per output batch dim (right-aligned): its size and each operand's element stride.
    let nd = out_batch.len();
    let strides = |s: &[usize], mat: usize| -> Vec<usize> {
        let mut st = vec![0; nd];
        let off = nd - s.len();
        let mut run = mat;
        for i in (0..s.len()).rev() {
            st[i + off] = if s[i] == 1 { 0 } else { run };
            run *= s[i];
        }
        st
    };
    let (sa, sb) = (strides(ab, m * k), strides(bb, k * n));
    let dims: Vec<usize> = (0..nd).filter(|&i| out_batch[i] != 1).collect();
    if dims.len() > MAX_BATCH_DIMS {
        return Err(Error::shape(op, format!("at most {MAX_BATCH_DIMS} batch dims, got A {a:?} and B {b:?}")));
    }
    p.nbd = dims.len();
    for (j, &i) in dims.iter().enumerate() {
        p.bshape[j] = out_batch[i] as u32;
        p.bsa[j] = sa[i] as u32;
        p.bsb[j] = sb[i] as u32;
    }
    Ok(p)
}

/// Run the GEMM described by `p` (no autograd). `sa`/`sb` have their operand's shape.
fn launch(
    p: &Plan,
    a: &Tensor,
    sa: Option<&Tensor>,
    b: &Tensor,
    sb: Option<&Tensor>,
    bias: Option<&Tensor>,
    kernel: MatmulKernel,
) -> Result<Tensor> {
    let gpu = a.gpu();
    if p.k == 0 {
        // empty inner product: zeros (+ bias)
        let _ng = crate::autograd::no_grad();
        let z = Tensor::zeros(gpu, &p.out_shape)?;
        return match bias {
            Some(bias) => super::elementwise::add(&z, bias),
            None => Ok(z),
        };
    }
    let c = Tensor::empty(gpu, &p.out_shape, DType::F32)?;
    if c.numel() == 0 {
        return Ok(c);
    }
    let flags = sa.map_or(0, |_| HAS_SA) | sb.map_or(0, |_| HAS_SB) | bias.map_or(0, |_| HAS_BIAS);
    let mut params = Params {
        m: p.m as u32,
        n: p.n as u32,
        k: p.k as u32,
        batch: p.batch as u32,
        trans_a: p.ta as u32,
        trans_b: p.tb as u32,
        flags,
        nbd: p.nbd as u32,
        z0: 0,
        x0: 0,
        y0: 0,
        _p: 0,
        bshape: p.bshape,
        bsa: p.bsa,
        bsb: p.bsb,
    };
    // Absent optional operands bind a buffer that is already bound read-only; the kernel
    // never reads them (flags).
    let buffers = [
        a.buffer(),
        sa.unwrap_or(a).buffer(),
        b.buffer(),
        sb.unwrap_or(b).buffer(),
        bias.unwrap_or(a).buffer(),
        c.buffer(),
    ];
    let kernel = match kernel {
        MatmulKernel::Auto => {
            let tiles = p.m.div_ceil(128) * p.n.div_ceil(128) * p.batch;
            if tiles >= TILE128_MIN_TILES {
                MatmulKernel::Tile128
            } else {
                MatmulKernel::Tile64
            }
        }
        k => k,
    };
    let (k, tile) = match kernel {
        MatmulKernel::Reference => {
            gpu.dispatch(&K_REF, &[], bytes_of(&params), &buffers, grid(gpu, p.batch * p.m * p.n, 64))?;
            return Ok(c);
        }
        MatmulKernel::Tile128 => (&K_TILE128, 128),
        _ => (&K_TILE64, 64),
    };
    // (column tiles, row tiles, batch), split at the per-dimension workgroup limit
    for (first, groups) in split_grid(gpu, [p.n.div_ceil(tile), p.m.div_ceil(tile), p.batch]) {
        [params.x0, params.y0, params.z0] = first;
        gpu.dispatch(k, &[], bytes_of(&params), &buffers, groups)?;
    }
    Ok(c)
}

/// Plan + launch without autograd: op(A ⊙ sa) · op(B ⊙ sb).
fn gemm(a: &Tensor, ta: bool, sa: Option<&Tensor>, b: &Tensor, tb: bool, sb: Option<&Tensor>) -> Result<Tensor> {
    let p = plan("matmul", a.shape(), ta, b.shape(), tb)?;
    launch(&p, a, sa, b, sb, None, MatmulKernel::Auto)
}

/// Gradient of a broadcast operand: sum over the batch dims it was broadcast along.
fn reduce_to(g: Tensor, shape: &[usize]) -> Result<Tensor> {
    if g.shape() == shape {
        Ok(g)
    } else if g.numel() == numel(shape) {
        g.reshape(shape)
    } else {
        super::reduce::sum_to_shape(&g, shape)
    }
}

fn check_operands(op: &'static str, a: &Tensor, b: &Tensor, b_scale: Option<&Tensor>, bname: &str) -> Result<()> {
    expect_f32(op, &[a, b])?;
    expect_same_gpu(op, &[a, b])?;
    if let Some(s) = b_scale {
        expect_f32(op, &[s])?;
        expect_same_gpu(op, &[a, s])?;
        if s.shape() != b.shape() {
            return Err(Error::shape(
                op,
                format!("scale {:?} must have the shape of {bname} {:?}", s.shape(), b.shape()),
            ));
        }
    }
    Ok(())
}

struct MatmulBack {
    /// Saved only when B needs a gradient.
    a: Option<Tensor>,
    /// Saved only when A needs a gradient.
    b: Option<Tensor>,
    scale: Option<Tensor>,
    ta: bool,
    tb: bool,
}

impl BackwardOp for MatmulBack {
    fn name(&self) -> &'static str {
        "matmul"
    }
    fn backward(&self, g: &Tensor, inputs: &[Tensor]) -> Result<Vec<Option<Tensor>>> {
        let (ta, tb) = (self.ta, self.tb);
        let s = self.scale.as_ref();
        let ga = match (&self.b, inputs[0].is_tracked()) {
            (Some(b), true) => {
                // dA = dC · op(B')ᵀ, or for a stored-transposed A: op(B') · dCᵀ.
                let full = if ta { gemm(b, tb, s, g, true, None)? } else { gemm(g, false, None, b, !tb, s)? };
                Some(reduce_to(full, inputs[0].shape())?)
            }
            _ => None,
        };
        let gb = match (&self.a, inputs[1].is_tracked()) {
            (Some(a), true) => {
                let bshape = inputs[1].shape();
                let shared = numel(&bshape[..bshape.len() - 2]) == 1;
                let full = if shared && !ta && a.dims() > 2 {
                    // B shared by every batch: fold the batch into the reduction dim,
                    // [K, B·M] x [B·M, N] is one GEMM instead of a batched GEMM + sum.
                    let kk = a.dim(a.dims() - 1);
                    let af = a.reshape(&[a.numel() / kk.max(1), kk])?;
                    let nn = g.dim(g.dims() - 1);
                    let gf = g.reshape(&[g.numel() / nn.max(1), nn])?;
                    if tb {
                        gemm(&gf, true, None, &af, false, None)?
                    } else {
                        gemm(&af, true, None, &gf, false, None)?
                    }
                } else if tb {
                    // dB' = (op(A)ᵀ · dC)ᵀ = dCᵀ · op(A)
                    gemm(g, true, None, a, ta, None)?
                } else {
                    // dB' = op(A)ᵀ · dC
                    gemm(a, !ta, None, g, false, None)?
                };
                let db = reduce_to(full, bshape)?;
                // dB = dB' ⊙ scale: masked entries get exactly zero gradient.
                Some(match s {
                    Some(s) => super::elementwise::mul(&db, s)?,
                    None => db,
                })
            }
            _ => None,
        };
        Ok(vec![ga, gb])
    }
}

/// C = op(A) · op(B'), where op transposes the last two dims when asked and B' = B ⊙ b_scale
/// (element-wise scale of B's own shape, applied inside the kernel when loading B).
/// A: [..., M, K] (or [..., K, M] with trans_a); B: [..., K, N] (or [..., N, K] with trans_b).
/// Batch dims broadcast numpy-style (in particular B may be 2-D and shared by every batch of A).
///
/// Gradients flow to A and B (dB = dB' ⊙ b_scale, so masked entries get zero); the scale is
/// a constant. Errors: non-f32 operands, a scale of the wrong shape, inner dims that differ
/// (the message names both shapes), batch dims that do not broadcast.
pub fn matmul_ex(a: &Tensor, b: &Tensor, opts: MatmulOpts) -> Result<Tensor> {
    check_operands("matmul", a, b, opts.b_scale, "B")?;
    let (ta, tb) = (opts.trans_a, opts.trans_b);
    let p = plan("matmul", a.shape(), ta, b.shape(), tb)?;
    let y = launch(&p, a, None, b, opts.b_scale, None, MatmulKernel::Auto)?;
    Ok(y.with_grad_fn(&[a, b], || {
        Box::new(MatmulBack {
            a: b.is_tracked().then(|| a.detach()),
            b: a.is_tracked().then(|| b.detach()),
            scale: opts.b_scale.map(|s| s.detach()),
            ta,
            tb,
        })
    }))
}

/// C = A · B with numpy batch broadcasting (no transposes).
pub fn matmul(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    matmul_ex(a, b, MatmulOpts::default())
}

/// Forward of [`matmul_ex`] on a chosen kernel, no autograd. For tests (cross-checking the
/// tiled kernels against the one-thread-per-output reference) and benchmarks.
#[doc(hidden)]
pub fn matmul_with_kernel(a: &Tensor, b: &Tensor, opts: MatmulOpts, kernel: MatmulKernel) -> Result<Tensor> {
    check_operands("matmul", a, b, opts.b_scale, "B")?;
    let p = plan("matmul", a.shape(), opts.trans_a, b.shape(), opts.trans_b)?;
    launch(&p, a, None, b, opts.b_scale, None, kernel)
}

struct LinearBack {
    /// Saved only when w needs a gradient.
    x: Option<Tensor>,
    /// Saved only when x needs a gradient.
    w: Option<Tensor>,
    scale: Option<Tensor>,
    rows: usize,
    in_f: usize,
    out_f: usize,
}

impl BackwardOp for LinearBack {
    fn name(&self) -> &'static str {
        "linear"
    }
    fn backward(&self, g: &Tensor, inputs: &[Tensor]) -> Result<Vec<Option<Tensor>>> {
        let gf = g.reshape(&[self.rows, self.out_f])?;
        let s = self.scale.as_ref();
        let dx = match (&self.w, inputs[0].is_tracked()) {
            // dx = dy · (w ⊙ s)
            (Some(w), true) => Some(gemm(&gf, false, None, w, false, s)?.reshape(inputs[0].shape())?),
            _ => None,
        };
        let dw = match (&self.x, inputs[1].is_tracked()) {
            (Some(x), true) => {
                // dw = (dyᵀ · x) ⊙ s, the batch folded into the reduction dim
                let xf = x.reshape(&[self.rows, self.in_f])?;
                let dw = gemm(&gf, true, None, &xf, false, None)?;
                Some(match s {
                    Some(s) => super::elementwise::mul(&dw, s)?,
                    None => dw,
                })
            }
            _ => None,
        };
        let mut out = vec![dx, dw];
        if inputs.len() == 3 {
            out.push(if inputs[2].is_tracked() { Some(super::reduce::sum(&gf, &[0], false)?) } else { None });
        }
        Ok(out)
    }
}

/// PyTorch-layout linear layer: x `[..., in]`, w `[out, in]`, bias `[out]`; y = x · (w ⊙ w_scale)ᵀ + bias.
///
/// One GEMM with the bias added in its epilogue; the weight is read transposed in place and
/// the scale (a mask) applied while loading it. Gradients: x, w (dw ⊙ w_scale) and bias
/// (sum over all leading dims); w_scale is a constant.
pub fn linear(x: &Tensor, w: &Tensor, bias: Option<&Tensor>, w_scale: Option<&Tensor>) -> Result<Tensor> {
    check_operands("linear", x, w, w_scale, "w")?;
    if w.dims() != 2 || x.dims() == 0 {
        return Err(Error::shape("linear", format!("needs x [..., in] and w [out, in], got x {:?} and w {:?}", x.shape(), w.shape())));
    }
    let (out_f, in_f) = (w.dim(0), w.dim(1));
    if x.dim(x.dims() - 1) != in_f {
        return Err(Error::shape(
            "linear",
            format!("x {:?} has {} input features, w {:?} expects {in_f}", x.shape(), x.dim(x.dims() - 1), w.shape()),
        ));
    }
    if let Some(bias) = bias {
        expect_f32("linear", &[bias])?;
        expect_same_gpu("linear", &[x, bias])?;
        if bias.shape() != [out_f] {
            return Err(Error::shape("linear", format!("bias {:?} must be [{out_f}] for w {:?}", bias.shape(), w.shape())));
        }
    }
    let rows = numel(&x.shape()[..x.dims() - 1]);
    let p = plan("linear", &[rows, in_f], false, w.shape(), true)?;
    let mut out_shape = x.shape()[..x.dims() - 1].to_vec();
    out_shape.push(out_f);
    let y = launch(&p, x, None, w, w_scale, bias, MatmulKernel::Auto)?.detach().reshape(&out_shape)?;
    let mut inputs = vec![x, w];
    inputs.extend(bias);
    Ok(y.with_grad_fn(&inputs, || {
        Box::new(LinearBack {
            x: w.is_tracked().then(|| x.detach()),
            w: x.is_tracked().then(|| w.detach()),
            scale: w_scale.map(|s| s.detach()),
            rows,
            in_f,
            out_f,
        })
    }))
}
