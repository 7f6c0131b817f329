//! Embedding lookup (with a deterministic, atomic-free backward) and patchify.
use super::{bytes_of, expect_f32, grid};
use crate::autograd::BackwardOp;
use crate::error::{Error, Result};
use crate::gpu::{Access, Kernel, Shader};
use crate::tensor::{DType, Tensor};

const R: Access = Access::Read;
const RW: Access = Access::ReadWrite;
const K_EMB_FWD: Kernel = Kernel::new(Shader::Embed, "embed_fwd", &[R, R, RW], &EmbParams::LAYOUT);
const K_EMB_BWD: Kernel = Kernel::new(Shader::Embed, "embed_bwd", &[R, R, RW], &EmbParams::LAYOUT);
const K_PATCH_FWD: Kernel = Kernel::new(Shader::Embed, "patchify_fwd", &[R, RW], &PatchParams::LAYOUT);
const K_PATCH_BWD: Kernel = Kernel::new(Shader::Embed, "patchify_bwd", &[R, RW], &PatchParams::LAYOUT);
/// Every kernel of this file (for the interface test, `tests/gpu/kernels.rs`).
pub(crate) const KERNELS: &[Kernel] = &[K_EMB_FWD, K_EMB_BWD, K_PATCH_FWD, K_PATCH_BWD];

/// Columns per workgroup in the embedding backward (WG in embed.wgsl).
const EMB_COLS: usize = 256;

crate::gpu::gpu_params! {
    struct EmbParams as "EmbParams" {
        n: u32,
        v: u32,
        d: u32,
        dchunks: u32,
    }
}

crate::gpu::gpu_params! {
    struct PatchParams as "PatchParams" {
        n: u32,
        c: u32,
        h: u32,
        w: u32,
        ph: u32,
        pw: u32,
        gh: u32,
        gw: u32,
    }
}

/// Rows of `table` [V, D] picked by `ids` (u32, any shape): output [..ids.shape, D].
/// Ids are not checked against V on the host (that would need a readback): an id >= V
/// yields a zero row and contributes no gradient. The backward sums the output gradient
/// into the table rows deterministically (ascending id position), without float atomics.
pub fn embedding(ids: &Tensor, table: &Tensor) -> Result<Tensor> {
    if ids.dtype() != DType::U32 {
        return Err(Error::DType { op: "embedding", msg: format!("ids must be u32, got {:?} (shape {:?})", ids.dtype(), ids.shape()) });
    }
    expect_f32("embedding", &[table])?;
    let (v, d) = match *table.shape() {
        [v, d] if v > 0 && d > 0 => (v, d),
        _ => return Err(Error::shape("embedding", format!("table must be a non-empty [V, D], got {:?} (ids {:?})", table.shape(), ids.shape()))),
    };
    let n = ids.numel();
    let mut shape = ids.shape().to_vec();
    shape.push(d);
    let gpu = table.gpu();
    let p = EmbParams { n: n as u32, v: v as u32, d: d as u32, dchunks: d.div_ceil(EMB_COLS) as u32 };
    let y = Tensor::empty(gpu, &shape, DType::F32)?;
    gpu.dispatch(&K_EMB_FWD, &[], bytes_of(&p), &[ids.buffer(), table.buffer(), y.buffer()], grid(gpu, n * d, 256))?;
    let ids = ids.detach();
    Ok(y.with_grad_fn(&[table], || Box::new(EmbeddingBack { p, ids })))
}

struct EmbeddingBack {
    p: EmbParams,
    ids: Tensor,
}

impl BackwardOp for EmbeddingBack {
    fn name(&self) -> &'static str {
        "embedding"
    }
    fn backward(&self, g: &Tensor, inputs: &[Tensor]) -> Result<Vec<Option<Tensor>>> {
        if !inputs[0].is_tracked() {
            return Ok(vec![None]);
        }
        let gpu = g.gpu();
        let dt = Tensor::empty(gpu, inputs[0].shape(), DType::F32)?;
        let items = self.p.v as usize * self.p.dchunks as usize;
        gpu.dispatch(&K_EMB_BWD, &[], bytes_of(&self.p), &[self.ids.buffer(), g.buffer(), dt.buffer()], grid(gpu, items, 1))?;
        Ok(vec![Some(dt)])
    }
}

/// Non-overlapping patches: [N, C, H, W] -> [N, L, C*ph*pw], L = (H/ph)*(W/pw), patches in
/// row-major order, each patch flattened channel-major then (py, px) — the layout of a
/// Conv2d with kernel = stride = patch, flattened. H and W must be divisible by the patch.
pub fn patchify(x: &Tensor, patch: (usize, usize)) -> Result<Tensor> {
    expect_f32("patchify", &[x])?;
    let (n, c, h, w) = match *x.shape() {
        [n, c, h, w] => (n, c, h, w),
        _ => return Err(Error::shape("patchify", format!("expects [N, C, H, W], got {:?}", x.shape()))),
    };
    let (ph, pw) = patch;
    if ph == 0 || pw == 0 || h % ph != 0 || w % pw != 0 {
        return Err(Error::shape("patchify", format!("input {:?} is not divisible into {patch:?} patches", x.shape())));
    }
    let (gh, gw) = (h / ph, w / pw);
    let p = PatchParams {
        n: n as u32,
        c: c as u32,
        h: h as u32,
        w: w as u32,
        ph: ph as u32,
        pw: pw as u32,
        gh: gh as u32,
        gw: gw as u32,
    };
    let gpu = x.gpu();
    let y = Tensor::empty(gpu, &[n, gh * gw, c * ph * pw], DType::F32)?;
    gpu.dispatch(&K_PATCH_FWD, &[], bytes_of(&p), &[x.buffer(), y.buffer()], grid(gpu, y.numel(), 256))?;
    Ok(y.with_grad_fn(&[x], || Box::new(PatchifyBack { p })))
}

struct PatchifyBack {
    p: PatchParams,
}

impl BackwardOp for PatchifyBack {
    fn name(&self) -> &'static str {
        "patchify"
    }
    fn backward(&self, g: &Tensor, inputs: &[Tensor]) -> Result<Vec<Option<Tensor>>> {
        if !inputs[0].is_tracked() {
            return Ok(vec![None]);
        }
        let gpu = g.gpu();
        let dx = Tensor::empty(gpu, inputs[0].shape(), DType::F32)?;
        gpu.dispatch(&K_PATCH_BWD, &[], bytes_of(&self.p), &[g.buffer(), dx.buffer()], grid(gpu, dx.numel(), 256))?;
        Ok(vec![Some(dx)])
    }
}
