//! Counter-based random numbers on the GPU (Philox-4x32-10, see shaders/random.wgsl for
//! the exact definition): every value is a pure function of (seed, offset, element index),
//! so the same (seed, offset) gives the same numbers on every device, and different
//! offsets give independent streams. Use the offset as a per-call stream number (e.g. a
//! counter the training loop increments for each random op).
use super::{bytes_of, expect_f32, grid};
use crate::autograd::BackwardOp;
use crate::error::{Error, Result};
use crate::gpu::{Access, Gpu, Kernel, Shader};
use crate::tensor::{numel, DType, Tensor};

const K_UNIFORM: Kernel = Kernel::new(Shader::Random, "rand_uniform", &[Access::ReadWrite], &Params::LAYOUT);
const K_NORMAL: Kernel = Kernel::new(Shader::Random, "rand_normal", &[Access::ReadWrite], &Params::LAYOUT);
const K_DROPOUT: Kernel =
    Kernel::new(Shader::Random, "dropout", &[Access::Read, Access::ReadWrite], &Params::LAYOUT);
/// Every kernel of this file (for the interface test, `tests/gpu/kernels.rs`).
pub(crate) const KERNELS: &[Kernel] = &[K_UNIFORM, K_NORMAL, K_DROPOUT];

crate::gpu::gpu_params! {
    struct Params as "Params" {
        n: u32,
        seed_lo: u32,
        seed_hi: u32,
        off_lo: u32,
        off_hi: u32,
        _p: u32,
        prob: f32,
        scale: f32,
    }
}

impl Params {
    fn new(n: usize, seed: u64, offset: u64, prob: f32, scale: f32) -> Params {
        Params {
            n: n as u32,
            seed_lo: seed as u32,
            seed_hi: (seed >> 32) as u32,
            off_lo: offset as u32,
            off_hi: (offset >> 32) as u32,
            _p: 0,
            prob,
            scale,
        }
    }
}

/// Philox-4x32-10 on the host: the reference the GPU kernels follow bit for bit.
/// Element `e` of a call with (seed, offset) is word `e % 4` of
/// `philox4x32_10([e / 4, 0, offset as u32, (offset >> 32) as u32], [seed as u32, (seed >> 32) as u32])`.
pub fn philox4x32_10(counter: [u32; 4], key: [u32; 2]) -> [u32; 4] {
    const M0: u64 = 0xD251_1F53;
    const M1: u64 = 0xCD9E_8D57;
    let (mut c, mut k) = (counter, key);
    for r in 0..10 {
        if r > 0 {
            k = [k[0].wrapping_add(0x9E37_79B9), k[1].wrapping_add(0xBB67_AE85)];
        }
        let a = M0 * c[0] as u64;
        let b = M1 * c[2] as u64;
        c = [((b >> 32) as u32) ^ c[1] ^ k[0], b as u32, ((a >> 32) as u32) ^ c[3] ^ k[1], a as u32];
    }
    c
}

/// Workgroups of one launch drawing `n` numbers (4 per thread, 256 threads per workgroup).
fn groups(n: usize) -> usize {
    n.div_ceil(4).div_ceil(256)
}

/// Whether `n` numbers can be drawn in one launch on `gpu` (always on a real adapter, whose
/// limit is 65,535 workgroups per dimension; not always under a test's cap).
pub(crate) fn launchable(gpu: &Gpu, n: usize) -> bool {
    groups(n) as u64 <= (gpu.max_workgroups_per_dim() as u64).pow(3)
}

fn launch(gpu: &Gpu, k: &Kernel, shape: &[usize], seed: u64, offset: u64) -> Result<Tensor> {
    let n = numel(shape);
    if n > u32::MAX as usize - 3 {
        return Err(Error::shape("random", format!("shape {shape:?} has too many elements")));
    }
    let y = Tensor::empty(gpu, shape, DType::F32)?;
    let p = Params::new(n, seed, offset, 0.0, 1.0);
    gpu.dispatch(k, &[], bytes_of(&p), &[y.buffer()], grid(gpu, groups(n), 1))?;
    Ok(y)
}

/// Uniform samples in [0, 1) (24-bit resolution). Not tracked.
pub fn rand_uniform(gpu: &Gpu, shape: &[usize], seed: u64, offset: u64) -> Result<Tensor> {
    launch(gpu, &K_UNIFORM, shape, seed, offset)
}

/// Standard normal samples (Box-Muller on Philox words). Not tracked.
pub fn randn(gpu: &Gpu, shape: &[usize], seed: u64, offset: u64) -> Result<Tensor> {
    launch(gpu, &K_NORMAL, shape, seed, offset)
}

fn dropout_raw(x: &Tensor, p: f32, seed: u64, offset: u64) -> Result<Tensor> {
    let gpu = x.gpu();
    let n = x.numel();
    let y = Tensor::empty(gpu, x.shape(), DType::F32)?;
    // p == 1 drops everything (scale unused: select picks 0 for every element)
    let scale = if p < 1.0 { 1.0 / (1.0 - p) } else { 0.0 };
    let prm = Params::new(n, seed, offset, p, scale);
    gpu.dispatch(&K_DROPOUT, &[], bytes_of(&prm), &[x.buffer(), y.buffer()], grid(gpu, groups(n), 1))?;
    Ok(y)
}

/// Inverted dropout. Training: element e is zeroed when `uniform(seed, offset, e) < p`
/// (probability p) and the kept ones are scaled by 1/(1-p); the backward regenerates the
/// same mask from (seed, offset) instead of storing it. Eval: identity (returns `x`).
pub fn dropout(x: &Tensor, p: f32, seed: u64, offset: u64, training: bool) -> Result<Tensor> {
    expect_f32("dropout", &[x])?;
    if !(0.0..=1.0).contains(&p) {
        return Err(Error::shape("dropout", format!("probability {p} outside [0, 1] (input {:?})", x.shape())));
    }
    if !training || p == 0.0 {
        return Ok(x.clone());
    }
    if x.numel() > u32::MAX as usize - 3 {
        return Err(Error::shape("dropout", format!("shape {:?} has too many elements", x.shape())));
    }
    let y = dropout_raw(x, p, seed, offset)?;
    Ok(y.with_grad_fn(&[x], || Box::new(DropoutBack { p, seed, offset })))
}

struct DropoutBack {
    p: f32,
    seed: u64,
    offset: u64,
}

impl BackwardOp for DropoutBack {
    fn name(&self) -> &'static str {
        "dropout"
    }
    fn backward(&self, g: &Tensor, inputs: &[Tensor]) -> Result<Vec<Option<Tensor>>> {
        if !inputs[0].is_tracked() {
            return Ok(vec![None]);
        }
        Ok(vec![Some(dropout_raw(g, self.p, self.seed, self.offset)?)])
    }
}
