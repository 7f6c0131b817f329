//! Shape ops that move data: concat, split, narrow, permute, transpose, index_select0.
//! All results are materialised (contiguous). f32 and u32 tensors are supported (the
//! kernels move 32-bit words); gradients flow for f32.
//!
//! Backward rules: concat -> narrow of the gradient per input; narrow (and so split) ->
//! pad the gradient into zeros; permute -> inverse permute; index_select0 -> atomic-free
//! scatter-add. `split` returns one `narrow` per piece (the engine's nodes have one output),
//! so its backward pads each piece's gradient and the autograd adds them.
use super::{bytes_of, expect_same_gpu, grid};
use crate::autograd::BackwardOp;
use crate::error::{Error, Result};
use crate::gpu::{Access, Kernel, Shader};
use crate::tensor::{DType, Tensor};

const R: Access = Access::Read;
const RW: Access = Access::ReadWrite;
const K_SLAB: Kernel = Kernel::new(Shader::Shape, "slab_copy", &[R, RW], &Params::LAYOUT);
const K_SLAB4: Kernel = Kernel::new(Shader::Shape, "slab_copy4", &[R, RW], &Params::LAYOUT);
const K_PERMUTE: Kernel = Kernel::new(Shader::Shape, "permute", &[R, RW], &Params::LAYOUT);
const K_TRANSPOSE: Kernel = Kernel::new(Shader::Shape, "transpose2d", &[R, RW], &Params::LAYOUT);
const K_GATHER: Kernel = Kernel::new(Shader::Shape, "gather_rows", &[R, R, RW], &Params::LAYOUT);
const K_SCATTER: Kernel = Kernel::new(Shader::Shape, "scatter_add_rows", &[R, R, RW], &Params::LAYOUT);
/// Every kernel of this file (for the interface test, `tests/gpu/kernels.rs`).
pub(crate) const KERNELS: &[Kernel] = &[K_SLAB, K_SLAB4, K_PERMUTE, K_TRANSPOSE, K_GATHER, K_SCATTER];

/// Most dims permute handles.
pub const MAX_PERMUTE_DIMS: usize = 8;

crate::gpu::gpu_params! {
    #[derive(Default)]
    struct Params as "Params" {
        n: u32,
        ndim: u32,
        a: u32,
        b: u32,
        c: u32,
        d: u32,
        e: u32,
        f: u32,
        shape: [u32; 8],
        strides: [u32; 8],
    }
}

fn expect_words(op: &'static str, ts: &[&Tensor]) -> Result<()> {
    for t in ts {
        if t.dtype() == DType::F16 {
            return Err(Error::DType { op, msg: format!("supports f32 and u32 tensors, got f16 (shape {:?})", t.shape()) });
        }
        if t.numel() > u32::MAX as usize / 2 {
            return Err(Error::shape(op, format!("shape {:?} is too large for 32-bit indexing", t.shape())));
        }
    }
    Ok(())
}

/// Resolve a possibly negative axis.
fn norm_axis(op: &'static str, shape: &[usize], axis: isize) -> Result<usize> {
    let nd = shape.len() as isize;
    let a = if axis < 0 { axis + nd } else { axis };
    if a < 0 || a >= nd {
        return Err(Error::shape(op, format!("axis {axis} out of range for shape {shape:?}")));
    }
    Ok(a as usize)
}

/// Copy `len` planes of `src` viewed as [outer, src_total, inner] starting at plane
/// `src_start` into `dst` viewed as [outer, dst_total, inner] at plane `dst_start`.
#[allow(clippy::too_many_arguments)]
fn slab_copy(
    src: &Tensor,
    dst: &Tensor,
    outer: usize,
    inner: usize,
    len: usize,
    src_total: usize,
    src_start: usize,
    dst_total: usize,
    dst_start: usize,
) -> Result<()> {
    let gpu = src.gpu();
    let chunk = len * inner;
    if outer == 0 || chunk == 0 {
        return Ok(());
    }
    if outer == 1 || (src_total == len && dst_total == len) {
        // one contiguous range on both sides: a plain buffer copy
        let (so, dof) = (src_start * inner * 4, dst_start * inner * 4);
        let bytes = if outer == 1 { chunk * 4 } else { outer * chunk * 4 };
        return gpu.copy(src.buffer(), so as u64, dst.buffer(), dof as u64, bytes as u64);
    }
    let (src_row, src_off, dst_row, dst_off) = (src_total * inner, src_start * inner, dst_total * inner, dst_start * inner);
    let v4 = [chunk, src_row, src_off, dst_row, dst_off].iter().all(|v| v % 4 == 0);
    let q = if v4 { 4 } else { 1 };
    let n = outer * chunk / q;
    let p = Params {
        n: n as u32,
        a: (chunk / q) as u32,
        b: (src_row / q) as u32,
        c: (src_off / q) as u32,
        d: (dst_row / q) as u32,
        e: (dst_off / q) as u32,
        ..Default::default()
    };
    let k = if v4 { &K_SLAB4 } else { &K_SLAB };
    gpu.dispatch(k, &[], bytes_of(&p), &[src.buffer(), dst.buffer()], grid(gpu, n, 256))
}

// ---- narrow / split ------------------------------------------------------------------------

fn raw_narrow(x: &Tensor, axis: usize, start: usize, len: usize) -> Result<Tensor> {
    let s = x.shape();
    let mut out = s.to_vec();
    out[axis] = len;
    let y = Tensor::empty(x.gpu(), &out, x.dtype())?;
    let outer: usize = s[..axis].iter().product();
    let inner: usize = s[axis + 1..].iter().product();
    slab_copy(x, &y, outer, inner, len, s[axis], start, len, 0)?;
    Ok(y)
}

/// Zeros of `shape` with `g` copied into planes start..start+len of `axis`.
fn pad_into_zeros(g: &Tensor, shape: &[usize], axis: usize, start: usize) -> Result<Tensor> {
    let dx = Tensor::zeros(g.gpu(), shape)?;
    let outer: usize = shape[..axis].iter().product();
    let inner: usize = shape[axis + 1..].iter().product();
    let len = g.shape()[axis];
    slab_copy(g, &dx, outer, inner, len, len, 0, shape[axis], start)?;
    Ok(dx)
}

struct NarrowBack {
    axis: usize,
    start: usize,
}
impl BackwardOp for NarrowBack {
    fn name(&self) -> &'static str {
        "narrow"
    }
    fn backward(&self, g: &Tensor, inputs: &[Tensor]) -> Result<Vec<Option<Tensor>>> {
        Ok(vec![Some(pad_into_zeros(g, inputs[0].shape(), self.axis, self.start)?)])
    }
}

/// Planes `start..start+len` of `axis` (negative axes count from the end), copied.
pub fn narrow(x: &Tensor, axis: isize, start: usize, len: usize) -> Result<Tensor> {
    expect_words("narrow", &[x])?;
    let ax = norm_axis("narrow", x.shape(), axis)?;
    let dim = x.shape()[ax];
    if start.checked_add(len).is_none_or(|end| end > dim) {
        return Err(Error::shape(
            "narrow",
            format!("range {start}..{} is outside axis {axis} of size {dim} (shape {:?})", start.saturating_add(len), x.shape()),
        ));
    }
    let y = raw_narrow(x, ax, start, len)?;
    Ok(y.with_grad_fn(&[x], || Box::new(NarrowBack { axis: ax, start })))
}

/// Split `axis` into consecutive pieces of the given sizes (they must add up to the axis).
pub fn split(x: &Tensor, sizes: &[usize], axis: isize) -> Result<Vec<Tensor>> {
    let ax = norm_axis("split", x.shape(), axis)?;
    let total: usize = sizes.iter().sum();
    if total != x.shape()[ax] {
        return Err(Error::shape(
            "split",
            format!("sizes {sizes:?} add up to {total}, but axis {axis} of shape {:?} has {}", x.shape(), x.shape()[ax]),
        ));
    }
    let mut start = 0;
    let mut out = Vec::with_capacity(sizes.len());
    for &len in sizes {
        out.push(narrow(x, ax as isize, start, len)?);
        start += len;
    }
    Ok(out)
}

// ---- concat -------------------------------------------------------------------------------

struct ConcatBack {
    axis: usize,
    sizes: Vec<usize>,
}
impl BackwardOp for ConcatBack {
    fn name(&self) -> &'static str {
        "concat"
    }
    fn backward(&self, g: &Tensor, inputs: &[Tensor]) -> Result<Vec<Option<Tensor>>> {
        let mut start = 0;
        let mut out = Vec::with_capacity(inputs.len());
        for (inp, &len) in inputs.iter().zip(&self.sizes) {
            out.push(if inp.is_tracked() { Some(raw_narrow(g, self.axis, start, len)?) } else { None });
            start += len;
        }
        Ok(out)
    }
}

/// Join tensors along `axis`; all other dims (and the dtype) must agree.
pub fn concat(xs: &[&Tensor], axis: isize) -> Result<Tensor> {
    let Some(first) = xs.first() else {
        return Err(Error::shape("concat", "needs at least one tensor"));
    };
    expect_words("concat", xs)?;
    expect_same_gpu("concat", xs)?;
    let ax = norm_axis("concat", first.shape(), axis)?;
    let shapes: Vec<&[usize]> = xs.iter().map(|t| t.shape()).collect();
    for t in xs {
        let ok = t.dims() == first.dims()
            && t.dtype() == first.dtype()
            && t.shape().iter().zip(first.shape()).enumerate().all(|(i, (a, b))| i == ax || a == b);
        if !ok {
            return Err(Error::shape(
                "concat",
                format!("shapes {shapes:?} (dtypes {:?}) do not agree outside axis {axis}", xs.iter().map(|t| t.dtype()).collect::<Vec<_>>()),
            ));
        }
    }
    let sizes: Vec<usize> = xs.iter().map(|t| t.shape()[ax]).collect();
    let total: usize = sizes.iter().sum();
    let mut out_shape = first.shape().to_vec();
    out_shape[ax] = total;
    if out_shape.iter().product::<usize>() > u32::MAX as usize / 2 {
        return Err(Error::shape("concat", format!("result {out_shape:?} is too large for 32-bit indexing")));
    }
    let y = Tensor::empty(first.gpu(), &out_shape, first.dtype())?;
    let outer: usize = out_shape[..ax].iter().product();
    let inner: usize = out_shape[ax + 1..].iter().product();
    let mut start = 0;
    for (t, &len) in xs.iter().zip(&sizes) {
        slab_copy(t, &y, outer, inner, len, len, 0, total, start)?;
        start += len;
    }
    Ok(y.with_grad_fn(xs, || Box::new(ConcatBack { axis: ax, sizes })))
}

// ---- permute / transpose ----------------------------------------------------------------------

/// Drop size-1 dims and merge runs of input dims that stay adjacent and in order in the
/// output. Returns (collapsed input shape, collapsed perm). A plain copy collapses to one
/// dim; a batched matrix transpose to [B, R, C] with perm [0, 2, 1] (or [R, C] / [1, 0]).
fn collapse(shape: &[usize], perm: &[usize]) -> (Vec<usize>, Vec<usize>) {
    // output-order list of kept input dims
    let kept: Vec<usize> = perm.iter().copied().filter(|&d| shape[d] != 1).collect();
    // groups of consecutive input dims, in output order
    let mut groups: Vec<Vec<usize>> = Vec::new();
    for d in kept {
        match groups.last_mut() {
            Some(gr) if *gr.last().unwrap_or(&usize::MAX) + 1 == d => gr.push(d),
            _ => groups.push(vec![d]),
        }
    }
    // input order of the groups
    let mut by_input: Vec<usize> = (0..groups.len()).collect();
    by_input.sort_by_key(|&g| groups[g][0]);
    let in_shape: Vec<usize> = by_input.iter().map(|&g| groups[g].iter().map(|&d| shape[d]).product()).collect();
    // perm over collapsed dims: output position j takes collapsed input dim rank(groups[j])
    let mut rank = vec![0; groups.len()];
    for (r, &g) in by_input.iter().enumerate() {
        rank[g] = r;
    }
    (in_shape, rank)
}

/// Materialised permute without autograd.
fn raw_permute(x: &Tensor, perm: &[usize]) -> Result<Tensor> {
    let gpu = x.gpu();
    let out_shape: Vec<usize> = perm.iter().map(|&d| x.shape()[d]).collect();
    let y = Tensor::empty(gpu, &out_shape, x.dtype())?;
    let n = x.numel();
    if n == 0 {
        return Ok(y);
    }
    let (cs, cp) = collapse(x.shape(), perm);
    if cp.len() <= 1 {
        gpu.copy(x.buffer(), 0, y.buffer(), 0, x.byte_len())?;
        return Ok(y);
    }
    // batched 2-D transpose: tiled kernel (coalesced reads and writes)
    let maxg = gpu.max_workgroups_per_dim() as usize;
    let bt = match (cs.as_slice(), cp.as_slice()) {
        ([r, c], [1, 0]) => Some((1, *r, *c)),
        ([b, r, c], [0, 2, 1]) => Some((*b, *r, *c)),
        _ => None,
    };
    if let Some((b, r, c)) = bt {
        let (gx, gy) = (c.div_ceil(32), r.div_ceil(32));
        if gx <= maxg && gy <= maxg && b <= maxg {
            let p = Params { n: n as u32, a: r as u32, b: c as u32, ..Default::default() };
            return gpu.dispatch(&K_TRANSPOSE, &[], bytes_of(&p), &[x.buffer(), y.buffer()], [gx as u32, gy as u32, b as u32]).map(|_| y);
        }
    }
    // general case over the collapsed dims (fewer dims: fewer divisions per element)
    let mut in_strides = vec![0usize; cs.len()];
    let mut s = 1;
    for d in (0..cs.len()).rev() {
        in_strides[d] = s;
        s *= cs[d];
    }
    let mut p = Params { n: n as u32, ndim: cp.len() as u32, ..Default::default() };
    for (j, &d) in cp.iter().enumerate() {
        p.shape[j] = cs[d] as u32;
        p.strides[j] = in_strides[d] as u32;
    }
    gpu.dispatch(&K_PERMUTE, &[], bytes_of(&p), &[x.buffer(), y.buffer()], grid(gpu, n, 256))?;
    Ok(y)
}

struct PermuteBack {
    inverse: Vec<usize>,
}
impl BackwardOp for PermuteBack {
    fn name(&self) -> &'static str {
        "permute"
    }
    fn backward(&self, g: &Tensor, _inputs: &[Tensor]) -> Result<Vec<Option<Tensor>>> {
        Ok(vec![Some(raw_permute(g, &self.inverse)?)])
    }
}

/// Reorder dims: output dim j is input dim `perm[j]`. Materialised copy, up to 8 dims.
pub fn permute(x: &Tensor, perm: &[usize]) -> Result<Tensor> {
    expect_words("permute", &[x])?;
    let nd = x.dims();
    let mut seen = vec![false; nd];
    let valid = perm.len() == nd && perm.iter().all(|&d| d < nd && !std::mem::replace(&mut seen[d], true));
    if !valid {
        return Err(Error::shape("permute", format!("{perm:?} is not a permutation of the dims of shape {:?}", x.shape())));
    }
    if nd > MAX_PERMUTE_DIMS {
        return Err(Error::shape("permute", format!("at most {MAX_PERMUTE_DIMS} dims, got shape {:?}", x.shape())));
    }
    let y = raw_permute(x, perm)?;
    let mut inverse = vec![0; nd];
    for (j, &d) in perm.iter().enumerate() {
        inverse[d] = j;
    }
    Ok(y.with_grad_fn(&[x], || Box::new(PermuteBack { inverse })))
}

/// Swap two dims (negative axes count from the end), materialised.
pub fn transpose(x: &Tensor, d0: isize, d1: isize) -> Result<Tensor> {
    let a = norm_axis("transpose", x.shape(), d0)?;
    let b = norm_axis("transpose", x.shape(), d1)?;
    let mut perm: Vec<usize> = (0..x.dims()).collect();
    perm.swap(a, b);
    permute(x, &perm)
}

// ---- index_select0 ------------------------------------------------------------------------------

struct IndexSelectBack {
    ids: Tensor,
}
impl BackwardOp for IndexSelectBack {
    fn name(&self) -> &'static str {
        "index_select0"
    }
    fn backward(&self, g: &Tensor, inputs: &[Tensor]) -> Result<Vec<Option<Tensor>>> {
        let gpu = g.gpu();
        let shape = inputs[0].shape();
        let dx = Tensor::empty(gpu, shape, DType::F32)?;
        let n = dx.numel();
        if n > 0 {
            let inner: usize = shape[1..].iter().product();
            let p = Params { n: n as u32, a: inner as u32, b: shape[0] as u32, c: self.ids.numel() as u32, ..Default::default() };
            gpu.dispatch(&K_SCATTER, &[], bytes_of(&p), &[g.buffer(), self.ids.buffer(), dx.buffer()], grid(gpu, n, 256))?;
        }
        Ok(vec![Some(dx)])
    }
}

/// Rows of `x` along axis 0 picked by `ids` (u32 `[n]`, repeats allowed): shape
/// `[n, x.shape[1..]]`. An id >= `x.shape[0]` yields a NaN row (no out-of-bounds read). The
/// backward scatter-adds the gradient rows into the picked rows.
pub fn index_select0(x: &Tensor, ids: &Tensor) -> Result<Tensor> {
    expect_words("index_select0", &[x])?;
    expect_same_gpu("index_select0", &[x, ids])?;
    if ids.dtype() != DType::U32 || ids.dims() != 1 {
        return Err(Error::shape(
            "index_select0",
            format!("ids must be a u32 vector [n], got {:?} of shape {:?} (x is {:?})", ids.dtype(), ids.shape(), x.shape()),
        ));
    }
    if x.dims() == 0 {
        return Err(Error::shape("index_select0", format!("x needs at least one dim, got shape {:?}", x.shape())));
    }
    let gpu = x.gpu();
    let mut out_shape = x.shape().to_vec();
    out_shape[0] = ids.numel();
    let inner: usize = x.shape()[1..].iter().product();
    if ids.numel() * inner > u32::MAX as usize / 2 {
        return Err(Error::shape("index_select0", format!("result {out_shape:?} is too large for 32-bit indexing")));
    }
    let y = Tensor::empty(gpu, &out_shape, x.dtype())?;
    let n = y.numel();
    if n > 0 {
        let p = Params { n: n as u32, a: inner as u32, b: x.shape()[0] as u32, c: ids.numel() as u32, ..Default::default() };
        gpu.dispatch(&K_GATHER, &[], bytes_of(&p), &[x.buffer(), ids.buffer(), y.buffer()], grid(gpu, n, 256))?;
    }
    let saved = ids.detach();
    Ok(y.with_grad_fn(&[x], || Box::new(IndexSelectBack { ids: saved })))
}
