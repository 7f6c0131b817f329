//! Batched matrix multiply with transposes, broadcast batch dims and element-wise operand
//! scales (AIM's per-parameter weight masks), plus the PyTorch-layout linear layer.
//!
//! One kernel family (`shaders/matmul.wgsl`): a tiled, register-blocked GEMM in two tile
//! sizes (128x128 with 8x8 outputs per thread, 64x64 with 4x4), split-K on the 64x64 tile
//! (partials summed by a second, deterministic pass), and a one-thread-per-output reference
//! entry (the tests' cross-check and the tuner's probe). Transposes and scales are handled
//! inside the kernel's loads, so the backward pass never materialises a transposed or
//! masked copy.
//!
//! Which variant runs a product is the tuner's choice (`ops::tune`, `gpu::tune`): per shape
//! bucket it times the applicable variants once on this device and remembers the fastest
//! correct one. With tuning off, a size rule picks between the two tiles (no split-K).
//!
//! Files: this one holds the API, the shape planning and the autograd rules; `launch.rs`
//! the kernels and how each variant is dispatched; `choice.rs` which variant runs.
mod choice;
mod launch;

use super::elementwise::{broadcast_shape, AbsMax};
use super::{expect_f32, expect_same_gpu};
use crate::autograd::BackwardOp;
use crate::error::{Error, Result};
use crate::tensor::{numel, DType, Tensor};
use launch::launch;
pub(crate) use launch::KERNELS;
pub use launch::{MatmulKernel, Tile128, MATMUL_GROUP_M, MATMUL_OVERRIDES, MATMUL_SPLITS, TILE128_DEEP_BK};

/// Most broadcast batch dims a matmul takes (after dropping dims of size 1).
pub const MAX_BATCH_DIMS: usize = 8;

/// Options of [`matmul_ex`]. `Default`: no transposes, no scale.
#[derive(Clone, Copy, Debug, Default)]
pub struct MatmulOpts<'a> {
    /// Transpose A's last two dims (in the load indexing; no copy).
    pub trans_a: bool,
    /// Transpose B's last two dims.
    pub trans_b: bool,
    /// Element-wise scale of B's own shape applied when loading B (AIM's masks); a constant for the
    /// gradient.
    pub b_scale: Option<&'a Tensor>,
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

/// Plan + launch without autograd: op(A ⊙ sa) · op(B ⊙ sb), a backward's product: `dy` is
/// the output gradient, which one operand may be a view of (its max |value| is then shared
/// by the backward's products on tensor cores).
fn gemm(a: &Tensor, ta: bool, sa: Option<&Tensor>, b: &Tensor, tb: bool, sb: Option<&Tensor>, dy: &AbsMax) -> Result<Tensor> {
    let p = plan("matmul", a.shape(), ta, b.shape(), tb)?;
    launch(&p, a, sa, b, sb, None, false, MatmulKernel::Auto, Some(dy))
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

/// The operands of a product: f32, or f16 (mixed precision: widened as they are loaded, the
/// products and the result f32); a scale f32 of its operand's shape.
fn check_operands(op: &'static str, a: &Tensor, b: &Tensor, b_scale: Option<&Tensor>, bname: &str) -> Result<()> {
    for t in [a, b] {
        if !matches!(t.dtype(), DType::F32 | DType::F16) {
            return Err(Error::DType { op, msg: format!("operands must be f32 or f16, got {:?} (shape {:?})", t.dtype(), t.shape()) });
        }
    }
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
        let dy = &AbsMax::new(g);
        let ga = match (&self.b, inputs[0].is_tracked()) {
            (Some(b), true) => {
                // dA = dC · op(B')ᵀ, or for a stored-transposed A: op(B') · dCᵀ.
                let full = if ta { gemm(b, tb, s, g, true, None, dy)? } else { gemm(g, false, None, b, !tb, s, dy)? };
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
                        gemm(&gf, true, None, &af, false, None, dy)?
                    } else {
                        gemm(&af, true, None, &gf, false, None, dy)?
                    }
                } else if tb {
                    // dB' = (op(A)ᵀ · dC)ᵀ = dCᵀ · op(A)
                    gemm(g, true, None, a, ta, None, dy)?
                } else {
                    // dB' = op(A)ᵀ · dC
                    gemm(a, !ta, None, g, false, None, dy)?
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
    let y = launch(&p, a, None, b, opts.b_scale, None, false, MatmulKernel::Auto, None)?;
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
    matmul_bias_with_kernel(a, b, opts, None, false, kernel)
}

/// [`matmul_with_kernel`] plus the linear layer's epilogue: a bias `[N]` added to every row,
/// then ReLU if `relu`.
#[doc(hidden)]
pub fn matmul_bias_with_kernel(a: &Tensor, b: &Tensor, opts: MatmulOpts, bias: Option<&Tensor>, relu: bool, kernel: MatmulKernel) -> Result<Tensor> {
    check_operands("matmul", a, b, opts.b_scale, "B")?;
    let p = plan("matmul", a.shape(), opts.trans_a, b.shape(), opts.trans_b)?;
    if let Some(bias) = bias {
        expect_f32("matmul", &[bias])?;
        if bias.shape() != [p.n] {
            return Err(Error::shape("matmul", format!("bias {:?} must be [{}]", bias.shape(), p.n)));
        }
    }
    launch(&p, a, None, b, opts.b_scale, bias, relu, kernel, None)
}

struct LinearBack {
    /// Saved only when w needs a gradient.
    x: Option<Tensor>,
    /// Saved only when x needs a gradient.
    w: Option<Tensor>,
    scale: Option<Tensor>,
    /// [`linear_relu`]: its output, which masks the incoming gradient.
    relu_out: Option<Tensor>,
    rows: usize,
    in_f: usize,
    out_f: usize,
}

impl BackwardOp for LinearBack {
    fn name(&self) -> &'static str {
        if self.relu_out.is_some() {
            "linear_relu"
        } else {
            "linear"
        }
    }
    fn backward(&self, g: &Tensor, inputs: &[Tensor]) -> Result<Vec<Option<Tensor>>> {
        let masked;
        let g = match &self.relu_out {
            Some(y) => {
                masked = super::elementwise::relu_backward_in_place(y, g)?;
                &masked
            }
            None => g,
        };
        let gf = g.reshape(&[self.rows, self.out_f])?;
        let s = self.scale.as_ref();
        // dy's max |value|, once for both products on tensor cores
        let dy = &AbsMax::new(&gf);
        let dx = match (&self.w, inputs[0].is_tracked()) {
            // dx = dy · (w ⊙ s)
            (Some(w), true) => Some(gemm(&gf, false, None, w, false, s, dy)?.reshape(inputs[0].shape())?),
            _ => None,
        };
        let dw = match (&self.x, inputs[1].is_tracked()) {
            (Some(x), true) => {
                // dw = (dyᵀ · x) ⊙ s, the batch folded into the reduction dim
                let xf = x.reshape(&[self.rows, self.in_f])?;
                let dw = gemm(&gf, true, None, &xf, false, None, dy)?;
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
    linear_impl("linear", x, w, bias, w_scale, false)
}

/// `relu(linear(x, w, bias, w_scale))` in one GEMM: the ReLU is applied in the epilogue, so
/// the pre-activation never reaches memory and no separate pass reads it. Bit-identical to
/// the two ops. The backward masks the gradient with the output (y > 0 exactly where the
/// pre-activation is), then runs the linear layer's.
pub fn linear_relu(x: &Tensor, w: &Tensor, bias: Option<&Tensor>, w_scale: Option<&Tensor>) -> Result<Tensor> {
    linear_impl("linear_relu", x, w, bias, w_scale, true)
}

fn linear_impl(op: &'static str, x: &Tensor, w: &Tensor, bias: Option<&Tensor>, w_scale: Option<&Tensor>, relu: bool) -> Result<Tensor> {
    check_operands(op, x, w, w_scale, "w")?;
    if w.dims() != 2 || x.dims() == 0 {
        return Err(Error::shape(op, format!("needs x [..., in] and w [out, in], got x {:?} and w {:?}", x.shape(), w.shape())));
    }
    let (out_f, in_f) = (w.dim(0), w.dim(1));
    if x.dim(x.dims() - 1) != in_f {
        return Err(Error::shape(
            op,
            format!("x {:?} has {} input features, w {:?} expects {in_f}", x.shape(), x.dim(x.dims() - 1), w.shape()),
        ));
    }
    if let Some(bias) = bias {
        expect_f32(op, &[bias])?;
        expect_same_gpu(op, &[x, bias])?;
        if bias.shape() != [out_f] {
            return Err(Error::shape(op, format!("bias {:?} must be [{out_f}] for w {:?}", bias.shape(), w.shape())));
        }
    }
    let rows = numel(&x.shape()[..x.dims() - 1]);
    let p = plan(op, &[rows, in_f], false, w.shape(), true)?;
    let mut out_shape = x.shape()[..x.dims() - 1].to_vec();
    out_shape.push(out_f);
    let y = launch(&p, x, None, w, w_scale, bias, relu, MatmulKernel::Auto, None)?.detach().reshape(&out_shape)?;
    let mut inputs = vec![x, w];
    inputs.extend(bias);
    let y_saved = if relu { Some(super::elementwise::relu_output_kept(&y, crate::autograd::records(&inputs))?) } else { None };
    Ok(y.with_grad_fn(&inputs, || {
        Box::new(LinearBack {
            x: w.is_tracked().then(|| x.detach()),
            w: x.is_tracked().then(|| w.detach()),
            scale: w_scale.map(|s| s.detach()),
            relu_out: y_saved,
            rows,
            in_f,
            out_f,
        })
    }))
}
