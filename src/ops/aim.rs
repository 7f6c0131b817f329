//! AIM kernels (`shaders/aim.wgsl`): per-layer selection of the lowest-scored fraction ρ of
//! weight elements as packed bit masks (an exact GPU radix select, ties broken by index so
//! the density is exactly round(ρ·n)/n), auxiliary-block scales `1 − s·(1 − M)` from those
//! masks, and prototype-classification scores (DAP).
use super::{bytes_of, expect_f32, expect_same_gpu, grid};
use crate::error::{Error, Result};
use crate::gpu::{Access, Kernel, Shader};
use crate::tensor::{DType, Tensor};

const R: Access = Access::Read;
const RW: Access = Access::ReadWrite;
const K_INIT: Kernel = Kernel::new(Shader::Aim, "select_init", &[RW], &Params::LAYOUT);
const K_HIST: Kernel = Kernel::new(Shader::Aim, "select_hist", &[R, RW], &Params::LAYOUT);
const K_SCAN: Kernel = Kernel::new(Shader::Aim, "select_scan", &[RW], &Params::LAYOUT);
const K_MASK: Kernel = Kernel::new(Shader::Aim, "select_mask", &[R, RW, RW], &Params::LAYOUT);
const K_SCALE: Kernel = Kernel::new(Shader::Aim, "mask_scale", &[R, RW], &Params::LAYOUT);
/// Every kernel of this file (for the interface test, `tests/gpu/kernels.rs`).
pub(crate) const KERNELS: &[Kernel] = &[K_INIT, K_HIST, K_SCAN, K_MASK, K_SCALE];

/// u32 words of per-layer selection state (see the shader's header).
const STRIDE: usize = 264;
const COUNT: usize = 260;
/// Elements per workgroup of the histogram and mask kernels.
const HIST_PER_GROUP: usize = 256 * 16;
const MASK_PER_GROUP: usize = 256 * 8;
/// Per-sample feature size above which prototype dots split the reduction.
const SPLIT_MIN: usize = 4096;

crate::gpu::gpu_params! {
    struct Params as "Params" {
        n: u32,
        base: u32,
        shift: u32,
        word: u32,
        k: u32,
        s: f32,
        _p0: u32,
        _p1: u32,
    }
}

impl Params {
    fn new(n: usize, base: usize) -> Params {
        Params { n: n as u32, base: base as u32, shift: 0, word: 0, k: 0, s: 0.0, _p0: 0, _p1: 0 }
    }
}

/// Result of [`select_lowest`]: one packed bit mask per layer (u32 `[ceil(n/32)]`, bit i of
/// word i/32 set where element i is among the lowest), and the selection state holding each
/// layer's count of selected elements (read with [`Selection::counts`]).
pub struct Selection {
    pub masks: Vec<Tensor>,
    /// element count of each layer
    pub sizes: Vec<usize>,
    state: Tensor,
}

impl Selection {
    /// Number of selected elements per layer, as a u32 `[layers]` tensor (no readback).
    pub fn counts(&self) -> Result<Tensor> {
        let gpu = self.state.gpu();
        let out = Tensor::empty(gpu, &[self.masks.len().max(1)], DType::U32)?;
        for l in 0..self.masks.len() {
            gpu.copy(self.state.buffer(), ((l * STRIDE + COUNT) * 4) as u64, out.buffer(), (l * 4) as u64, 4)?;
        }
        Ok(out)
    }
    /// Fraction of selected elements per layer (reads back).
    pub fn densities(&self) -> Result<Vec<f64>> {
        if self.masks.is_empty() {
            return Ok(Vec::new());
        }
        let c = self.counts()?.to_vec_u32()?;
        Ok(self.sizes.iter().zip(&c).map(|(&n, &c)| c as f64 / n.max(1) as f64).collect())
    }
}

/// The number of elements [`select_lowest`] marks in a layer of `n`: round(ρ·n).
pub fn selected_count(n: usize, rho: f32) -> usize {
    ((rho as f64 * n as f64).round() as usize).min(n)
}

/// For every layer's score tensor, mark the `round(ρ·n)` elements with the lowest scores
/// (ties broken by element index, so the count is exact). Runs entirely on the GPU: a radix
/// select over (score bits, index) keys, 8 bits per pass, then one mask pass per layer.
pub fn select_lowest(scores: &[&Tensor], rho: f32) -> Result<Selection> {
    const OP: &str = "select_lowest";
    if !(0.0..=1.0).contains(&rho) {
        return Err(Error::Other(format!("{OP}: rho must be in [0, 1], got {rho}")));
    }
    expect_f32(OP, scores)?;
    expect_same_gpu(OP, scores)?;
    let Some(first) = scores.first() else {
        return Err(Error::shape(OP, "no score tensors".to_string()));
    };
    let gpu = first.gpu();
    for s in scores {
        if s.numel() == 0 || s.numel() > u32::MAX as usize / 2 {
            return Err(Error::shape(OP, format!("score tensor of shape {:?}: needs 1..2^31 elements", s.shape())));
        }
    }
    let state = Tensor::zeros_dtype(gpu, &[scores.len() * STRIDE], DType::U32)?;
    let mut masks = Vec::with_capacity(scores.len());
    let mut sizes = Vec::with_capacity(scores.len());
    for (l, s) in scores.iter().enumerate() {
        let n = s.numel();
        let base = l * STRIDE;
        let k = selected_count(n, rho);
        let mut p = Params::new(n, base);
        p.k = k as u32;
        gpu.dispatch(&K_INIT, &[], bytes_of(&p), &[state.buffer()], [1, 1, 1])?;
        if k > 0 && k < n {
            // value digits (most significant first), then as many index digits as n needs
            let idx_bits = (usize::BITS - (n - 1).leading_zeros()) as usize;
            let mut passes: Vec<(u32, u32)> = (0..4).rev().map(|d| (0u32, 8 * d as u32)).collect();
            passes.extend((0..idx_bits.div_ceil(8)).rev().map(|d| (1u32, 8 * d as u32)));
            let groups = grid(gpu, n, HIST_PER_GROUP);
            for (word, shift) in passes {
                let mut q = p;
                q.word = word;
                q.shift = shift;
                gpu.dispatch(&K_HIST, &[], bytes_of(&q), &[s.buffer(), state.buffer()], groups)?;
                gpu.dispatch(&K_SCAN, &[], bytes_of(&q), &[state.buffer()], [1, 1, 1])?;
            }
        }
        let words = n.div_ceil(32);
        let mask = Tensor::empty(gpu, &[words], DType::U32)?;
        gpu.dispatch(&K_MASK, &[], bytes_of(&p), &[s.buffer(), state.buffer(), mask.buffer()], grid(gpu, n, MASK_PER_GROUP))?;
        masks.push(mask);
        sizes.push(n);
    }
    Ok(Selection { masks, sizes, state })
}

/// Auxiliary-block weight scale of `shape` from a packed mask: `1 − s·(1 − M)` (so s = 1
/// gives the mask itself as 0/1 values, s = 0 all ones). No gradient.
pub fn mask_scale(mask: &Tensor, shape: &[usize], s: f32) -> Result<Tensor> {
    const OP: &str = "mask_scale";
    let n: usize = shape.iter().product();
    if mask.dtype() != DType::U32 {
        return Err(Error::DType { op: OP, msg: format!("mask must be u32, got {:?}", mask.dtype()) });
    }
    if mask.numel() != n.div_ceil(32) {
        return Err(Error::shape(OP, format!("mask of {} words cannot cover shape {shape:?} ({} words needed)", mask.numel(), n.div_ceil(32))));
    }
    if !s.is_finite() {
        return Err(Error::Other(format!("{OP}: strength must be finite, got {s}")));
    }
    let gpu = mask.gpu();
    let out = Tensor::empty(gpu, shape, DType::F32)?;
    let mut p = Params::new(n, 0);
    p.s = s;
    gpu.dispatch(&K_SCALE, &[], bytes_of(&p), &[mask.buffer(), out.buffer()], grid(gpu, n, 256))?;
    Ok(out)
}

/// Prototype-classification logits of features `h` `[N, ...]` against prototypes `p`
/// `[K, ...]` (same per-sample shape): `−‖h_n − P_k‖² / (T·dim)` up to a per-row constant,
/// i.e. `(2·h·Pᵀ − ‖P_k‖²) / (T·dim)`; the dropped `‖h_n‖²` does not change any softmax.
/// Distances come from one matmul. No gradient.
pub fn proto_logits(h: &Tensor, p: &Tensor, temperature: f32) -> Result<Tensor> {
    const OP: &str = "proto_logits";
    expect_f32(OP, &[h, p])?;
    expect_same_gpu(OP, &[h, p])?;
    if h.dims() < 2 || p.dims() != h.dims() || h.shape()[1..] != p.shape()[1..] {
        return Err(Error::shape(OP, format!("features {:?} and prototypes {:?} need the same per-sample shape", h.shape(), p.shape())));
    }
    if !(temperature.is_finite() && temperature > 0.0) {
        return Err(Error::Other(format!("{OP}: temperature must be > 0, got {temperature}")));
    }
    let _ng = crate::autograd::no_grad();
    let (n, k) = (h.dim(0), p.dim(0));
    let dim = h.numel() / n.max(1);
    let hf = h.detach().reshape(&[n, dim])?;
    let pf = p.detach().reshape(&[k, dim])?;
    let tb = super::MatmulOpts { trans_b: true, ..Default::default() };
    let lead = h.dim(1);
    let dots = if dim > SPLIT_MIN && lead > 1 && h.dims() > 2 {
        // Long feature maps (e.g. a ResNet stem's C·H·W) with few rows and K columns would give
        // one output tile looping over the whole dim: split the reduction over the leading
        // per-sample axis (channels / tokens) as a batched GEMM, then sum the partial dots.
        let c = dim / lead;
        let hb = super::permute(&hf.reshape(&[n, lead, c])?, &[1, 0, 2])?;
        let pb = super::permute(&pf.reshape(&[k, lead, c])?, &[1, 0, 2])?;
        super::sum(&super::matmul_ex(&hb, &pb, tb)?, &[0], false)?
    } else {
        super::matmul_ex(&hf, &pf, tb)?
    };
    let pn = super::sum(&super::square(&pf)?, &[1], false)?.reshape(&[1, k])?;
    let c = 1.0 / (temperature * dim as f32);
    // s·a + t·b with broadcasting: 2c·dots − c·‖P‖²
    super::lerp(&dots, &pn, 2.0 * c, -c)
}

/// Per-sample probability of the true class under prototype classification, `[N]`
/// (softmax of [`proto_logits`] at the label). No gradient.
pub fn proto_scores(h: &Tensor, p: &Tensor, labels: &Tensor, temperature: f32) -> Result<Tensor> {
    let logits = proto_logits(h, p, temperature)?;
    super::true_class_prob(&logits, labels)
}
