//! Fused multi-head attention (FlashAttention-style forward and backward).
//!
//! `o = softmax(q kᵀ · scale + mask) v` without ever materialising the L×S score matrix in
//! device memory: the forward streams key/value tiles through workgroup memory with an
//! online softmax and saves only the per-row logsumexp; the backward recomputes the
//! probabilities from q, k and that logsumexp. Kernels: `shaders/attention.wgsl`, and for
//! f16 q, k and v the forward's and the backward's products on tensor cores
//! (`shaders/attention_coop.wgsl`, where the tuner finds them faster).
//!
//! Head dims: the shader is instantiated for padded head dims 32, 64 and 128 (the `const`
//! block between `@variant-begin` and `@variant-end` is substituted; the file itself is the
//! 128 instantiation). A head dim Dh runs on the smallest instantiation with DH >= Dh, the
//! extra columns being zero. Dh > 128 is a typed error.
//!
//! Backward without float atomics: a small pre-pass computes D_i = rowsum(dO ⊙ O); one
//! pass parallel over key blocks computes dK and dV (looping over query tiles), one pass
//! parallel over query blocks computes dQ (looping over key tiles). Each pass recomputes
//! the score tiles (the usual FlashAttention-2 trade: 2.5× the forward's matmul work, no
//! L×S memory).
use super::{bytes_of, expect_f32, expect_same_gpu, grid};
use crate::autograd::BackwardOp;
use crate::error::{Error, Result};
use crate::gpu::{Access, AttentionTiles, Coop, Gpu, Kernel, Shader, TuneMode, ATTENTION_TILES};
use crate::tensor::{DType, Tensor};

const R: Access = Access::Read;
const RW: Access = Access::ReadWrite;

/// Largest head dim the kernels support.
pub const ATTENTION_MAX_HEAD_DIM: usize = 128;

/// The entry points (name, storage bindings), each instantiated per head dim. The forward and
/// gradient passes end with q, k and v again at bindings 9-11 (as f16 words where they are
/// f16; the forward's 7-8 and dQ's 8 are unused slots in front of them).
type Entry = (&'static str, &'static [Access]);
const FWD: Entry = ("attn_fwd", &[R, R, R, R, RW, RW, R, R, R, R, R]);
const BWD_DELTA: Entry = ("attn_bwd_delta", &[R, R, R, RW]);
const BWD_DQ: Entry = ("attn_bwd_dq", &[R, R, R, R, R, R, RW, R, R, R, R]);
const BWD_DKV: Entry = ("attn_bwd_dkv", &[R, R, R, R, R, R, RW, RW, R, R, R]);

/// The forward on cooperative matrices (`attention_coop.wgsl`): q, k, v as f16, the mask, o,
/// lse; on tensor cores and emulated.
const FWD_COOP: Entry = ("attn_fwd_coop", &[R, R, R, R, RW, RW]);
/// The gradient passes on cooperative matrices: q, k, v (f16), the mask, dO, ld, then dq, or
/// dk and dv.
const BWD_DQ_COOP: Entry = ("attn_bwd_dq_coop", &[R, R, R, R, R, R, RW]);
const BWD_DKV_COOP: Entry = ("attn_bwd_dkv_coop", &[R, R, R, R, R, R, RW, RW]);
/// A cooperative-matrix entry on tensor cores ([0]) and emulated ([1]).
const fn coop_pair((entry, bindings): Entry) -> [Kernel; 2] {
    [
        Kernel::new(Shader::AttentionCoop(Coop::Hardware), entry, bindings, &Params::LAYOUT),
        Kernel::new(Shader::AttentionCoop(Coop::Emulated), entry, bindings, &Params::LAYOUT),
    ]
}
const K_FWD_COOP: [Kernel; 2] = coop_pair(FWD_COOP);
const K_BWD_DQ_COOP: [Kernel; 2] = coop_pair(BWD_DQ_COOP);
const K_BWD_DKV_COOP: [Kernel; 2] = coop_pair(BWD_DKV_COOP);
/// Query rows (and keys per tile, and output columns) of the cooperative-matrix forward's
/// workgroup: coop_tile.wgsl's 64 x 64 tile.
const COOP_TILE: usize = 64;
/// Its workgroup memory: coop_tile.wgsl's As, Bs (f16) and Cs (f32), and 128 floats of its own.
const COOP_WORKGROUP_BYTES: u32 = 2 * (2560 + 2304) + 4 * (4352 + 128);

/// The kernels attention runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttentionKernel {
    /// `attention.wgsl`'s tiles (f32 arithmetic; every precision).
    Tile,
    /// The products on cooperative matrices (f16 q, k and v only): the forward's two, the
    /// backward's five.
    Coop,
}

impl AttentionKernel {
    /// The name in the tuning cache.
    pub fn name(self) -> &'static str {
        match self {
            AttentionKernel::Tile => "tile",
            AttentionKernel::Coop => "coop",
        }
    }
}

/// The pipeline constant of q, k and v's precision.
fn half_constant(half: bool) -> [(&'static str, f64); 1] {
    [("HALF", half as u32 as f64)]
}

fn kernel_of(t: &AttentionTiles, (entry, bindings): Entry) -> Kernel {
    Kernel::new(t.shader(), entry, bindings, &Params::LAYOUT)
}

/// Every attention kernel of every instantiation (for the interface test).
pub(crate) fn kernels() -> Vec<Kernel> {
    ATTENTION_TILES
        .iter()
        .flat_map(|t| [FWD, BWD_DELTA, BWD_DQ, BWD_DKV].map(|e| kernel_of(t, e)))
        .chain(K_FWD_COOP)
        .chain(K_BWD_DQ_COOP)
        .chain(K_BWD_DKV_COOP)
        .collect()
}

crate::gpu::gpu_params! {
    struct Params as "Params" {
        bh: u32,
        heads: u32,
        l: u32,
        s: u32,
        dh: u32,
        has_mask: u32,
        nblk: u32,
        scale: f32,
    }
}

fn check_u32(what: &str, n: usize) -> Result<u32> {
    u32::try_from(n).map_err(|_| Error::shape("attention", format!("{what} = {n} exceeds u32 indexing")))
}

fn check_workgroup_memory(gpu: &Gpu, v: &AttentionTiles) -> Result<()> {
    let have = gpu.limits().max_compute_workgroup_storage_size;
    let need = v.workgroup_bytes().into_iter().max().unwrap_or(0);
    if need > have {
        return Err(Error::Other(format!(
            "attention: head dim <= {} kernels need {need} bytes of workgroup memory, the device allows {have}",
            v.dh
        )));
    }
    Ok(())
}

/// Validated dimensions of an attention call.
#[derive(Clone, Copy, Debug)]
struct Dims {
    b: usize,
    h: usize,
    l: usize,
    s: usize,
    dh: usize,
}

fn check_shapes(q: &Tensor, k: &Tensor, v: &Tensor, mask: Option<&Tensor>) -> Result<Dims> {
    let (qs, ks, vs) = (q.shape(), k.shape(), v.shape());
    if qs.len() != 4 || ks.len() != 4 || vs.len() != 4 {
        return Err(Error::shape(
            "attention",
            format!("q, k, v must be [B, H, L|S, Dh]; got q {qs:?}, k {ks:?}, v {vs:?}"),
        ));
    }
    if ks != vs {
        return Err(Error::shape("attention", format!("k {ks:?} and v {vs:?} must have the same shape")));
    }
    if qs[0] != ks[0] || qs[1] != ks[1] {
        return Err(Error::shape("attention", format!("batch/heads of q {qs:?} and k {ks:?} differ")));
    }
    if qs[3] != ks[3] {
        return Err(Error::shape(
            "attention",
            format!("head dim Dh of q {qs:?} ({}) and k {ks:?} ({}) differ", qs[3], ks[3]),
        ));
    }
    let d = Dims { b: qs[0], h: qs[1], l: qs[2], s: ks[2], dh: qs[3] };
    if d.dh == 0 || d.dh > ATTENTION_MAX_HEAD_DIM {
        return Err(Error::shape(
            "attention",
            format!("head dim Dh = {} of q {qs:?} is outside the supported 1..={ATTENTION_MAX_HEAD_DIM}", d.dh),
        ));
    }
    if let Some(m) = mask {
        if m.shape() != [d.b, d.s] {
            return Err(Error::shape(
                "attention",
                format!("key_padding_mask {:?} must be [B, S] = [{}, {}] (k {ks:?})", m.shape(), d.b, d.s),
            ));
        }
    }
    for (what, n) in [("B*H*L*Dh", d.b * d.h * d.l * d.dh), ("B*H*S*Dh", d.b * d.h * d.s * d.dh)] {
        check_u32(what, 2 * n)?;
    }
    Ok(d)
}

/// Multi-head attention with an optional key-padding mask, fused (no L×S scores in memory).
///
/// q [B, H, L, Dh], k [B, H, S, Dh], v [B, H, S, Dh] -> o [B, H, L, Dh];
/// o = softmax(q kᵀ · scale + mask) v, where key_padding_mask [B, S] (f32: 1.0 = padded key,
/// ignored; 0.0 = attend; values > 0.5 count as padded).
/// A row whose keys are all padded outputs zeros (and zero gradients), never NaN.
/// Dh must be 1..=128 ([`ATTENTION_MAX_HEAD_DIM`]). Gradients flow to q, k and v (not to the mask).
/// q, k and v are all f32, or all f16 (mixed precision: widened as they are loaded; the
/// output, the statistics and the gradients are f32).
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor, key_padding_mask: Option<&Tensor>, scale: f32) -> Result<Tensor> {
    attention_on(q, k, v, key_padding_mask, scale, None)
}

/// [`attention`] with its forward on `kernel` (benchmarks: each kernel's own row). The
/// cooperative-matrix kernel takes f16 q, k and v, and runs on tensor cores or their
/// emulation; elsewhere it is an error.
#[doc(hidden)]
pub fn attention_on_kernel(q: &Tensor, k: &Tensor, v: &Tensor, key_padding_mask: Option<&Tensor>, scale: f32, kernel: AttentionKernel) -> Result<Tensor> {
    attention_on(q, k, v, key_padding_mask, scale, Some(kernel))
}

fn attention_on(q: &Tensor, k: &Tensor, v: &Tensor, key_padding_mask: Option<&Tensor>, scale: f32, kernel: Option<AttentionKernel>) -> Result<Tensor> {
    let mut all = vec![q, k, v];
    all.extend(key_padding_mask);
    let half = q.dtype() == DType::F16;
    if half && (k.dtype() != DType::F16 || v.dtype() != DType::F16) {
        return Err(Error::DType { op: "attention", msg: format!("q is f16: k and v must be too, got {:?} and {:?}", k.dtype(), v.dtype()) });
    }
    expect_f32("attention", if half { &all[3..] } else { &all[..] })?;
    expect_same_gpu("attention", &all)?;
    let d = check_shapes(q, k, v, key_padding_mask)?;
    let var = AttentionTiles::for_head_dim(d.dh).expect("head dim checked");
    let gpu = q.gpu();
    check_workgroup_memory(gpu, &var)?;

    let (fwd, bwd) = match kernel {
        Some(k) => (k, k),
        None if half => kernels_for(gpu, &d, scale)?,
        None => (AttentionKernel::Tile, AttentionKernel::Tile),
    };
    let (o, lse) = forward(gpu, fwd, q, k, v, key_padding_mask, &d, scale)?;
    let saved = AttentionBack {
        q: q.detach(),
        k: k.detach(),
        v: v.detach(),
        mask: key_padding_mask.map(|m| m.detach()),
        o: o.detach(),
        lse,
        scale,
        dims: d,
        kernel: bwd,
    };
    Ok(o.with_grad_fn(&[q, k, v], || Box::new(saved)))
}

/// o and lse of attention's forward on `kernel`.
#[allow(clippy::too_many_arguments)]
fn forward(gpu: &Gpu, kernel: AttentionKernel, q: &Tensor, k: &Tensor, v: &Tensor, mask: Option<&Tensor>, d: &Dims, scale: f32) -> Result<(Tensor, Tensor)> {
    let o = Tensor::empty(gpu, &[d.b, d.h, d.l, d.dh], DType::F32)?;
    let lse = Tensor::empty(gpu, &[d.b, d.h, d.l], DType::F32)?;
    let bh = d.b * d.h;
    let var = AttentionTiles::for_head_dim(d.dh).expect("head dim checked");
    let rows = if kernel == AttentionKernel::Coop { COOP_TILE } else { var.f_bq as usize };
    let nblk = d.l.div_ceil(rows);
    let p = Params {
        bh: check_u32("B*H", bh)?,
        heads: d.h as u32,
        l: d.l as u32,
        s: d.s as u32,
        dh: d.dh as u32,
        has_mask: mask.is_some() as u32,
        nblk: nblk as u32,
        scale,
    };
    if bh * d.l == 0 {
        return Ok((o, lse));
    }
    let mask_buf = mask.map(|m| m.buffer()).unwrap_or(q.buffer());
    let (qb, kb, vb) = (q.buffer(), k.buffer(), v.buffer());
    match kernel {
        AttentionKernel::Tile => {
            let half = q.dtype() == DType::F16;
            let buffers = [qb, kb, vb, mask_buf, o.buffer(), lse.buffer(), qb, qb, qb, kb, vb];
            gpu.dispatch(&kernel_of(&var, FWD), &half_constant(half), bytes_of(&p), &buffers, grid(gpu, bh * nblk, 1))?;
        }
        AttentionKernel::Coop => {
            let k = &K_FWD_COOP[coop_form(gpu, q)?];
            let groups = bh * nblk * d.dh.div_ceil(COOP_TILE);
            gpu.dispatch(k, &[], bytes_of(&p), &[qb, kb, vb, mask_buf, o.buffer(), lse.buffer()], grid(gpu, groups, 1))?;
        }
    }
    Ok((o, lse))
}

/// Which form of the cooperative-matrix kernels runs here (the index into a `coop_pair`), or
/// why none does: they take f16 q (and k and v), shader f16 (tensor cores or their emulation)
/// and their workgroup memory.
fn coop_form(gpu: &Gpu, q: &Tensor) -> Result<usize> {
    let form = Coop::on(&gpu.capabilities()).ok_or_else(|| Error::Other("attention: the cooperative-matrix kernels need shader f16 (tensor cores, or their emulation)".into()))?;
    if q.dtype() != DType::F16 {
        return Err(Error::DType { op: "attention", msg: "the cooperative-matrix kernels take f16 q, k and v".into() });
    }
    let have = gpu.limits().max_compute_workgroup_storage_size;
    if have < COOP_WORKGROUP_BYTES {
        return Err(Error::Other(format!("attention: the cooperative-matrix kernels need {COOP_WORKGROUP_BYTES} bytes of workgroup memory, the device allows {have}")));
    }
    Ok((form == Coop::Emulated) as usize)
}

/// The kernels the forward and the backward of f16 q, k and v run on: under
/// [`prefer_coop`](crate::ops::prefer_coop), the cooperative-matrix ones as it says (tensor
/// cores or their emulation); else the tuned choice of the shape bucket for both, where the
/// adapter has tensor cores (timing the forward on both kernels now, on seeded random operands
/// of the same shapes, if the bucket is new; the backward's products are the forward's kind,
/// more of them), else the tiles.
fn kernels_for(gpu: &Gpu, d: &Dims, scale: f32) -> Result<(AttentionKernel, AttentionKernel)> {
    let (forward, gradients) = crate::ops::tune::coop_preferred();
    let coop_runs = Coop::on(&gpu.capabilities()).is_some() && gpu.limits().max_compute_workgroup_storage_size >= COOP_WORKGROUP_BYTES;
    if (forward || gradients) && coop_runs {
        let pick = |on: bool| if on { AttentionKernel::Coop } else { AttentionKernel::Tile };
        return Ok((pick(forward), pick(gradients)));
    }
    let k = tuned_kernel(gpu, d, scale)?;
    Ok((k, k))
}

/// The tuned kernel of the shape bucket (see [`kernels_for`]).
fn tuned_kernel(gpu: &Gpu, d: &Dims, scale: f32) -> Result<AttentionKernel> {
    // tensor cores only (their emulation is a test vehicle, not a candidate); the tuning
    // operands are drawn in one launch each (see ops::conv's choice)
    let largest = d.b * d.h * d.l.max(d.s) * d.dh;
    let roomy = gpu.limits().max_compute_workgroup_storage_size >= COOP_WORKGROUP_BYTES;
    if !gpu.capabilities().cooperative_matrix || !roomy || gpu.tune_mode() == TuneMode::Off || !crate::ops::random::launchable(gpu, largest) {
        return Ok(AttentionKernel::Tile);
    }
    let c = crate::ops::tune::size_class;
    let bucket = format!("bh{} l{} s{} dh{}", c(d.b * d.h), c(d.l), c(d.s), c(d.dh));
    let from_name = |n: &str| [AttentionKernel::Tile, AttentionKernel::Coop].into_iter().find(|k| k.name() == n);
    let known = || gpu.tune_lookup("attention", &bucket).and_then(|e| from_name(&e.variant));
    if let Some(k) = known() {
        return Ok(k);
    }
    let _one = gpu.tuning_guard();
    if let Some(k) = known() {
        return Ok(k);
    }
    let tuned = (|| {
        let _ng = crate::autograd::no_grad();
        let seed = 0x6174_746e; // "attn"
        let rnd = |len: usize, i: u64| crate::ops::cast(&crate::ops::random::randn(gpu, &[d.b, d.h, len, d.dh], seed, i << 40)?, DType::F16);
        let (q, k, v) = (rnd(d.l, 0)?, rnd(d.s, 1)?, rnd(d.s, 2)?);
        let run = |kernel| forward(gpu, kernel, &q, &k, &v, None, d, scale).map(|(o, _)| o);
        let reference = run(AttentionKernel::Tile)?;
        let list: Vec<crate::ops::tune::Candidate> = [AttentionKernel::Tile, AttentionKernel::Coop]
            .into_iter()
            .map(|k| (k.name(), Box::new(move || run(k)) as Box<dyn Fn() -> Result<Tensor>>))
            .collect();
        let problem = format!("q [{}, {}, {}, {}], k and v [{}, {}, {}, {}]", d.b, d.h, d.l, d.dh, d.b, d.h, d.s, d.dh);
        crate::ops::tune::tune(gpu, "attention", &bucket, problem, &list, &reference)
    })();
    match tuned {
        Ok(name) => Ok(from_name(&name).unwrap_or(AttentionKernel::Tile)),
        Err(Error::OutOfMemory { .. }) => {
            eprintln!("warning: tuning attention {bucket}: no memory for the tuning operands; the tiles run this time");
            Ok(AttentionKernel::Tile)
        }
        Err(e) => Err(e),
    }
}

struct AttentionBack {
    q: Tensor,
    k: Tensor,
    v: Tensor,
    mask: Option<Tensor>,
    o: Tensor,
    lse: Tensor,
    scale: f32,
    dims: Dims,
    /// The kernels of the gradient passes.
    kernel: AttentionKernel,
}

impl BackwardOp for AttentionBack {
    fn name(&self) -> &'static str {
        "attention"
    }

    fn backward(&self, grad: &Tensor, inputs: &[Tensor]) -> Result<Vec<Option<Tensor>>> {
        let d = self.dims;
        if grad.shape() != self.o.shape() {
            return Err(Error::shape(
                "attention backward",
                format!("gradient {:?} does not match the output {:?}", grad.shape(), self.o.shape()),
            ));
        }
        expect_f32("attention backward", &[grad])?;
        let var = AttentionTiles::for_head_dim(d.dh).expect("head dim checked");
        let base = Params {
            bh: (d.b * d.h) as u32,
            heads: d.h as u32,
            l: d.l as u32,
            s: d.s as u32,
            dh: d.dh as u32,
            has_mask: self.mask.is_some() as u32,
            nblk: 0,
            scale: self.scale,
        };
        let ld = self.lse_and_delta(grad, &var, &base)?;
        let dq = if inputs[0].is_tracked() { Some(self.grad_q(grad, &ld, &var, base)?) } else { None };
        let (mut dk, mut dv) = (None, None);
        if inputs[1].is_tracked() || inputs[2].is_tracked() {
            let (gk, gv) = self.grad_kv(grad, &ld, &var, base)?;
            dk = inputs[1].is_tracked().then_some(gk);
            dv = inputs[2].is_tracked().then_some(gv);
        }
        Ok(vec![dq, dk, dv])
    }
}

impl AttentionBack {
    /// The mask binding (the query buffer stands in when there is no mask; unread then).
    fn half(&self) -> [(&'static str, f64); 1] {
        half_constant(self.q.dtype() == DType::F16)
    }

    fn mask_buffer(&self) -> &crate::gpu::BufferRange {
        self.mask.as_ref().map(|m| m.buffer()).unwrap_or(self.q.buffer())
    }

    /// The pre-pass: each row's logsumexp and D_i = rowsum(dO ⊙ O), interleaved as [BH*L, 2].
    fn lse_and_delta(&self, grad: &Tensor, var: &AttentionTiles, base: &Params) -> Result<Tensor> {
        let (gpu, d) = (self.q.gpu(), self.dims);
        let rows = d.b * d.h * d.l;
        let ld = Tensor::empty(gpu, &[rows.max(1), 2], DType::F32)?;
        if rows > 0 {
            let bufs = [self.o.buffer(), grad.buffer(), self.lse.buffer(), ld.buffer()];
            gpu.dispatch(&kernel_of(var, BWD_DELTA), &[], bytes_of(base), &bufs, grid(gpu, rows, 256))?;
        }
        Ok(ld)
    }

    /// dQ: one workgroup per block of query rows, looping over key tiles.
    fn grad_q(&self, grad: &Tensor, ld: &Tensor, var: &AttentionTiles, mut p: Params) -> Result<Tensor> {
        let (gpu, d) = (self.q.gpu(), self.dims);
        let g = Tensor::empty(gpu, &[d.b, d.h, d.l, d.dh], DType::F32)?;
        if d.b * d.h * d.l == 0 {
            return Ok(g);
        }
        let (qb, kb, vb) = (self.q.buffer(), self.k.buffer(), self.v.buffer());
        let front = [qb, kb, vb, self.mask_buffer(), grad.buffer(), ld.buffer(), g.buffer()];
        if self.kernel == AttentionKernel::Coop {
            let nblk = d.l.div_ceil(COOP_TILE);
            p.nblk = nblk as u32;
            let groups = d.b * d.h * nblk * d.dh.div_ceil(COOP_TILE);
            gpu.dispatch(&K_BWD_DQ_COOP[coop_form(gpu, &self.q)?], &[], bytes_of(&p), &front, grid(gpu, groups, 1))?;
            return Ok(g);
        }
        let nblk = d.l.div_ceil(var.q_bq as usize);
        p.nblk = nblk as u32;
        // binding 8 (dv in the dkv pass) is unused here: q stands in
        let bufs = [&front[..], &[qb, qb, kb, vb][..]].concat();
        gpu.dispatch(&kernel_of(var, BWD_DQ), &self.half(), bytes_of(&p), &bufs, grid(gpu, d.b * d.h * nblk, 1))?;
        Ok(g)
    }

    /// dK and dV: one workgroup per block of keys, looping over query tiles.
    fn grad_kv(&self, grad: &Tensor, ld: &Tensor, var: &AttentionTiles, mut p: Params) -> Result<(Tensor, Tensor)> {
        let (gpu, d) = (self.q.gpu(), self.dims);
        let gk = Tensor::empty(gpu, &[d.b, d.h, d.s, d.dh], DType::F32)?;
        let gv = Tensor::empty(gpu, &[d.b, d.h, d.s, d.dh], DType::F32)?;
        if d.b * d.h * d.s == 0 {
            return Ok((gk, gv));
        }
        let (qb, kb, vb) = (self.q.buffer(), self.k.buffer(), self.v.buffer());
        let front = [qb, kb, vb, self.mask_buffer(), grad.buffer(), ld.buffer(), gk.buffer(), gv.buffer()];
        if self.kernel == AttentionKernel::Coop {
            let nblk = d.s.div_ceil(COOP_TILE);
            p.nblk = nblk as u32;
            let groups = d.b * d.h * nblk * d.dh.div_ceil(COOP_TILE);
            gpu.dispatch(&K_BWD_DKV_COOP[coop_form(gpu, &self.q)?], &[], bytes_of(&p), &front, grid(gpu, groups, 1))?;
            return Ok((gk, gv));
        }
        let nblk = d.s.div_ceil(var.kv_bk as usize);
        p.nblk = nblk as u32;
        let bufs = [&front[..], &[qb, kb, vb][..]].concat();
        gpu.dispatch(&kernel_of(var, BWD_DKV), &self.half(), bytes_of(&p), &bufs, grid(gpu, d.b * d.h * nblk, 1))?;
        Ok((gk, gv))
    }
}

