//! Pooling over x [N, C, H, W]: max pooling (PyTorch semantics, argmax routing in the
//! backward), adaptive average pooling and global average pooling.
use super::{bytes_of, expect_f32, grid};
use crate::autograd::BackwardOp;
use crate::error::{Error, Result};
use crate::gpu::{Access, Kernel, Shader};
use crate::tensor::{DType, Tensor};

const R: Access = Access::Read;
const RW: Access = Access::ReadWrite;
const K_MP_FWD: Kernel = Kernel::new(Shader::Pool, "max_pool_fwd", &[R, RW, RW], &Params::LAYOUT);
const K_MP_BWD: Kernel = Kernel::new(Shader::Pool, "max_pool_bwd", &[R, R, RW], &Params::LAYOUT);
const K_AD_FWD: Kernel = Kernel::new(Shader::Pool, "adaptive_fwd", &[R, RW], &Params::LAYOUT);
const K_AD_BWD: Kernel = Kernel::new(Shader::Pool, "adaptive_bwd", &[R, RW], &Params::LAYOUT);
/// Every kernel of this file (for the interface test, `tests/gpu/kernels.rs`).
pub(crate) const KERNELS: &[Kernel] = &[K_MP_FWD, K_MP_BWD, K_AD_FWD, K_AD_BWD];

crate::gpu::gpu_params! {
    struct Params as "Params" {
        nc: u32,
        h: u32,
        w: u32,
        oh: u32,
        ow: u32,
        kh: u32,
        kw: u32,
        sh: u32,
        sw: u32,
        ph: u32,
        pw: u32,
        _p: u32,
    }
}

fn dims4(op: &'static str, x: &Tensor) -> Result<(usize, usize, usize, usize)> {
    expect_f32(op, &[x])?;
    match *x.shape() {
        [n, c, h, w] if n * c * h * w > 0 => Ok((n, c, h, w)),
        _ => Err(Error::shape(op, format!("expects a non-empty [N, C, H, W] input, got {:?}", x.shape()))),
    }
}

fn u(v: usize) -> u32 {
    v as u32
}

/// 2-D max pooling with PyTorch semantics (`ceil_mode=false`, `dilation=1`): padding counts
/// as -inf, output size `(H + 2p - k) / s + 1`. The forward stores the argmax of every
/// window (first maximum in row-major window order on ties) as u32; the backward routes
/// each output gradient to its argmax.
pub fn max_pool2d(x: &Tensor, kernel: (usize, usize), stride: (usize, usize), padding: (usize, usize)) -> Result<Tensor> {
    let (n, c, h, w) = dims4("max_pool2d", x)?;
    let (kh, kw) = kernel;
    let (sh, sw) = stride;
    let (ph, pw) = padding;
    if kh == 0 || kw == 0 || sh == 0 || sw == 0 {
        return Err(Error::shape("max_pool2d", format!("kernel {kernel:?} and stride {stride:?} must be positive (input {:?})", x.shape())));
    }
    if ph > kh / 2 || pw > kw / 2 {
        return Err(Error::shape("max_pool2d", format!("padding {padding:?} must be at most half the kernel {kernel:?}")));
    }
    if h + 2 * ph < kh || w + 2 * pw < kw {
        return Err(Error::shape(
            "max_pool2d",
            format!("kernel {kernel:?} larger than the padded input {:?} (padding {padding:?})", x.shape()),
        ));
    }
    let oh = (h + 2 * ph - kh) / sh + 1;
    let ow = (w + 2 * pw - kw) / sw + 1;
    let gpu = x.gpu();
    let p = Params { nc: u(n * c), h: u(h), w: u(w), oh: u(oh), ow: u(ow), kh: u(kh), kw: u(kw), sh: u(sh), sw: u(sw), ph: u(ph), pw: u(pw), _p: 0 };
    let y = Tensor::empty(gpu, &[n, c, oh, ow], DType::F32)?;
    let arg = Tensor::empty(gpu, &[n, c, oh, ow], DType::U32)?;
    gpu.dispatch(&K_MP_FWD, &[], bytes_of(&p), &[x.buffer(), y.buffer(), arg.buffer()], grid(gpu, y.numel(), 256))?;
    Ok(y.with_grad_fn(&[x], || Box::new(MaxPoolBack { p, arg })))
}

struct MaxPoolBack {
    p: Params,
    arg: Tensor,
}

impl BackwardOp for MaxPoolBack {
    fn name(&self) -> &'static str {
        "max_pool2d"
    }
    fn backward(&self, g: &Tensor, inputs: &[Tensor]) -> Result<Vec<Option<Tensor>>> {
        if !inputs[0].is_tracked() {
            return Ok(vec![None]);
        }
        let gpu = g.gpu();
        let dx = Tensor::empty(gpu, inputs[0].shape(), DType::F32)?;
        gpu.dispatch(&K_MP_BWD, &[], bytes_of(&self.p), &[g.buffer(), self.arg.buffer(), dx.buffer()], grid(gpu, dx.numel(), 256))?;
        Ok(vec![Some(dx)])
    }
}

/// Adaptive average pooling to `out = (OH, OW)` with PyTorch's windows: output i averages
/// rows `floor(i*H/OH) .. ceil((i+1)*H/OH)` (same for columns).
pub fn adaptive_avg_pool2d(x: &Tensor, out: (usize, usize)) -> Result<Tensor> {
    let (n, c, h, w) = dims4("adaptive_avg_pool2d", x)?;
    let (oh, ow) = out;
    if oh == 0 || ow == 0 {
        return Err(Error::shape("adaptive_avg_pool2d", format!("output size {out:?} must be positive (input {:?})", x.shape())));
    }
    let gpu = x.gpu();
    let p = Params { nc: u(n * c), h: u(h), w: u(w), oh: u(oh), ow: u(ow), kh: 0, kw: 0, sh: 0, sw: 0, ph: 0, pw: 0, _p: 0 };
    let y = Tensor::empty(gpu, &[n, c, oh, ow], DType::F32)?;
    gpu.dispatch(&K_AD_FWD, &[], bytes_of(&p), &[x.buffer(), y.buffer()], grid(gpu, y.numel(), 256))?;
    Ok(y.with_grad_fn(&[x], || Box::new(AdaptiveBack { p })))
}

struct AdaptiveBack {
    p: Params,
}

impl BackwardOp for AdaptiveBack {
    fn name(&self) -> &'static str {
        "adaptive_avg_pool2d"
    }
    fn backward(&self, g: &Tensor, inputs: &[Tensor]) -> Result<Vec<Option<Tensor>>> {
        if !inputs[0].is_tracked() {
            return Ok(vec![None]);
        }
        let gpu = g.gpu();
        let dx = Tensor::empty(gpu, inputs[0].shape(), DType::F32)?;
        gpu.dispatch(&K_AD_BWD, &[], bytes_of(&self.p), &[g.buffer(), dx.buffer()], grid(gpu, dx.numel(), 256))?;
        Ok(vec![Some(dx)])
    }
}

/// Mean over H and W: [N, C, H, W] -> [N, C]. Uses the reduction kernels (one workgroup per
/// plane for large planes), so it is fast for the big-plane / few-channel case too.
pub fn global_avg_pool(x: &Tensor) -> Result<Tensor> {
    dims4("global_avg_pool", x)?;
    super::reduce::mean(x, &[2, 3], false)
}
