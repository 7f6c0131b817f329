//! Element-wise ops: unary maps, broadcasting binary ops, casts.
use super::{bytes_of, expect_f32, expect_same_gpu, grid};
use crate::autograd::BackwardOp;
use crate::error::{Error, Result};
use crate::gpu::{Access, Kernel, Shader};
use crate::tensor::{DType, Tensor};

const R: Access = Access::Read;
const RW: Access = Access::ReadWrite;
const K_UNARY: Kernel = Kernel::new(Shader::Elementwise, "unary", &[R, RW], &Params::LAYOUT);
const K_EXPAND: Kernel = Kernel::new(Shader::Elementwise, "expand", &[R, RW], &Params::LAYOUT);
const K_FILL: Kernel = Kernel::new(Shader::Elementwise, "fill", &[RW], &Params::LAYOUT);
const K_BINARY: Kernel = Kernel::new(Shader::Elementwise, "binary", &[R, R, RW], &Params::LAYOUT);
const K_UNARY_BW: Kernel = Kernel::new(Shader::Elementwise, "unary_backward", &[R, R, RW], &Params::LAYOUT);
const K_TO_F16: Kernel = Kernel::new(Shader::Elementwise, "to_f16", &[R, RW], &Params::LAYOUT);
const K_ADD_INTO: Kernel = Kernel::new(Shader::Elementwise, "add_into", &[R, RW], &Params::LAYOUT);
const K_FROM_F16: Kernel = Kernel::new(Shader::Elementwise, "from_f16", &[R, RW], &Params::LAYOUT);
const K_UNARY4: Kernel = Kernel::new(Shader::Elementwise, "unary_vec4", &[R, RW], &Params::LAYOUT);
const K_BINARY4: Kernel = Kernel::new(Shader::Elementwise, "binary_vec4", &[R, R, RW], &Params::LAYOUT);
const K_BINARY_BCAST4: Kernel = Kernel::new(Shader::Elementwise, "binary_bcast_vec4", &[R, R, RW], &Params::LAYOUT);
const K_UNARY_BW4: Kernel = Kernel::new(Shader::Elementwise, "unary_backward_vec4", &[R, R, RW], &Params::LAYOUT);
const K_ADD_INTO4: Kernel = Kernel::new(Shader::Elementwise, "add_into_vec4", &[R, RW], &Params::LAYOUT);
const K_FILL4: Kernel = Kernel::new(Shader::Elementwise, "fill_vec4", &[RW], &Params::LAYOUT);
const K_RELU_MASK: Kernel = Kernel::new(Shader::Elementwise, "relu_mask", &[R, RW], &Params::LAYOUT);
const K_RELU_BW_MASK: Kernel = Kernel::new(Shader::Elementwise, "relu_backward_mask", &[R, R, RW], &Params::LAYOUT);
const K_RELU_BW_HALF: Kernel = Kernel::new(Shader::Elementwise, "relu_backward_half", &[R, R, RW], &Params::LAYOUT);
const K_RELU_MASK_INTO: Kernel = Kernel::new(Shader::Elementwise, "relu_mask_into", &[R, RW], &Params::LAYOUT);
const K_ABS_MAX_BITS: Kernel = Kernel::new(Shader::Elementwise, "abs_max_bits", &[R, RW], &Params::LAYOUT);
/// Every kernel of this file (for the interface test, `tests/gpu/kernels.rs`).
pub(crate) const KERNELS: &[Kernel] = &[
    K_UNARY, K_EXPAND, K_FILL, K_BINARY, K_UNARY_BW, K_TO_F16, K_FROM_F16, K_ADD_INTO, K_UNARY4, K_BINARY4, K_BINARY_BCAST4, K_UNARY_BW4, K_ADD_INTO4, K_FILL4,
    K_RELU_MASK, K_RELU_BW_MASK, K_RELU_BW_HALF, K_RELU_MASK_INTO, K_ABS_MAX_BITS,
];

/// vec4s per workgroup of the vec4 forms: 256 threads x `VEC` (4) each
/// (`shaders/elementwise.wgsl`).
const VEC4_PER_GROUP: usize = 256 * 4;

/// Run a map on `tensors` (inputs then output, all of `p.n` elements, contiguous): the vec4
/// form when the length is a multiple of 4 and every binding starts on 16 bytes, else the
/// scalar form. `op` is the pipeline's `OP` constant.
fn dispatch_map(scalar: &Kernel, vector: &Kernel, op: u32, p: &Params, tensors: &[&Tensor]) -> Result<()> {
    let gpu = tensors[0].gpu();
    let n = p.n as usize;
    let consts = [("OP", op as f64)];
    let buffers: Vec<&crate::gpu::BufferRange> = tensors.iter().map(|t| t.buffer()).collect();
    if n.is_multiple_of(4) && buffers.iter().all(|b| b.offset() % 16 == 0) {
        gpu.dispatch(vector, &consts, bytes_of(p), &buffers, grid(gpu, n / 4, VEC4_PER_GROUP))
    } else {
        gpu.dispatch(scalar, &consts, bytes_of(p), &buffers, grid(gpu, n, 256))
    }
}

/// Most dims a broadcasting op takes (the kernel's parameter block holds this many shape and stride
/// entries).
pub const MAX_DIMS: usize = 8;

crate::gpu::gpu_params! {
    struct Params as "Params" {
        n: u32,
        _op: u32,
        ndim: u32,
        bcast: u32,
        a: f32,
        b: f32,
        _p: [u32; 2],
        shape: [u32; MAX_DIMS],
        sa: [u32; MAX_DIMS],
        sb: [u32; MAX_DIMS],
    }
}

impl Params {
    fn new(n: usize, a: f32, b: f32) -> Self {
        Params { n: n as u32, _op: 0, ndim: 0, bcast: 0, a, b, _p: [0; 2], shape: [0; MAX_DIMS], sa: [0; MAX_DIMS], sb: [0; MAX_DIMS] }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
/// A unary map, by its code in `shaders/elementwise.wgsl`. Gradients follow the formula's
/// derivative, with the conventions noted per variant.
pub enum Unary {
    /// -x.
    Neg = 1,
    /// e^x.
    Exp = 2,
    /// ln x, for x > 0.
    Log = 3,
    /// √x.
    Sqrt = 4,
    /// max(x, 0); gradient 0 at 0.
    Relu = 5,
    /// GELU, tanh approximation.
    Gelu = 6,
    /// 1 / (1 + e^-x).
    Sigmoid = 7,
    /// tanh x.
    Tanh = 8,
    /// |x|; gradient sign(x) (0 at 0).
    Abs = 9,
    /// x².
    Square = 10,
    /// a·x + b.
    Affine = 11,
    /// 1 / x.
    Recip = 13,
    /// x^a, for x > 0.
    Pow = 14,
    /// x clamped to [a, b]; the gradient passes where a <= x <= b.
    Clamp = 15,
    /// -1, 0 or 1; gradient 0.
    Sign = 16,
}

impl Unary {
    /// Every op: the codes `shaders/elementwise.wgsl` names `UNARY_<NAME>` (the interface
    /// test, `tests/gpu/kernels.rs`, checks each name and value).
    pub const ALL: [Unary; 15] = [
        Unary::Neg,
        Unary::Exp,
        Unary::Log,
        Unary::Sqrt,
        Unary::Relu,
        Unary::Gelu,
        Unary::Sigmoid,
        Unary::Tanh,
        Unary::Abs,
        Unary::Square,
        Unary::Affine,
        Unary::Recip,
        Unary::Pow,
        Unary::Clamp,
        Unary::Sign,
    ];

    /// Whether the backward rule reads the output (true) or the input (false).
    /// Backward from the output instead of the input. For ReLU this is a memory choice: in
    /// conv -> BN -> ReLU the output is what the next conv saves anyway, so the BN output
    /// (ReLU's input) is freed after the forward instead of living until the backward.
    fn grad_from_output(self) -> bool {
        matches!(self, Unary::Exp | Unary::Sqrt | Unary::Relu | Unary::Sigmoid | Unary::Tanh)
    }
}

fn launch_unary(x: &Tensor, op: u32, a: f32, b: f32) -> Result<Tensor> {
    expect_f32("unary", &[x])?;
    let gpu = x.gpu();
    let y = Tensor::empty(gpu, x.shape(), DType::F32)?;
    let n = x.numel();
    if n > 0 {
        dispatch_map(&K_UNARY, &K_UNARY4, op, &Params::new(n, a, b), &[x, &y])?;
    }
    Ok(y)
}

struct UnaryBack {
    op: Unary,
    a: f32,
    b: f32,
    saved: Tensor,
}

impl BackwardOp for UnaryBack {
    fn name(&self) -> &'static str {
        "unary"
    }
    fn backward(&self, g: &Tensor, _inputs: &[Tensor]) -> Result<Vec<Option<Tensor>>> {
        let dx = match self.op {
            Unary::Neg => neg(g)?,
            Unary::Affine => scale(g, self.a)?,
            Unary::Clamp => {
                // pass the gradient where a <= x <= b
                let lo = ge_scalar(&self.saved, self.a)?;
                let hi = ge_scalar(&neg(&self.saved)?, -self.b)?;
                mul(&mul(g, &lo)?, &hi)?
            }
            Unary::Sign => Tensor::zeros(g.gpu(), g.shape())?,
            Unary::Relu => relu_backward_in_place(&self.saved, g)?,
            op => {
                let gpu = g.gpu();
                let dx = Tensor::empty(gpu, g.shape(), DType::F32)?;
                let n = g.numel();
                if n > 0 {
                    dispatch_map(&K_UNARY_BW, &K_UNARY_BW4, op as u32, &Params::new(n, self.a, self.b), &[&self.saved, g, &dx])?;
                }
                dx
            }
        };
        Ok(vec![Some(dx)])
    }
}

/// `g ⊙ (y > 0)`: ReLU's backward from what it kept of its output ([`relu_output_kept`]:
/// the output `y` itself, f32 or f16, or its bit mask), no autograd. For ops that fuse a ReLU into their
/// own kernel ([`linear_relu`](super::linear_relu)).
pub(crate) fn relu_backward_from_output(y: &Tensor, g: &Tensor) -> Result<Tensor> {
    let dx = Tensor::empty(g.gpu(), g.shape(), DType::F32)?;
    let n = g.numel();
    if n == 0 {
        return Ok(dx);
    }
    if matches!(y.dtype(), DType::U32 | DType::F16) {
        let gpu = g.gpu();
        let k = if y.dtype() == DType::U32 { &K_RELU_BW_MASK } else { &K_RELU_BW_HALF };
        gpu.dispatch(k, &[], bytes_of(&Params::new(n, 0.0, 0.0)), &[y.buffer(), g.buffer(), dx.buffer()], grid(gpu, n, 256))?;
    } else {
        dispatch_map(&K_UNARY_BW, &K_UNARY_BW4, Unary::Relu as u32, &Params::new(n, 0.0, 0.0), &[y, g, &dx])?;
    }
    Ok(dx)
}

/// Whether `t` is the only handle to its tensor and to its storage, and no graph node: then
/// nothing else can see a write into it. A backward rule given the autodiff's gradient this
/// way may overwrite it (the autodiff drops its handle after the rule returns).
pub(crate) fn held_alone(t: &Tensor) -> bool {
    std::sync::Arc::strong_count(&t.0) == 1 && std::sync::Arc::strong_count(t.storage()) == 1 && t.node().is_none()
}

/// [`relu_backward_from_output`] written into `g`'s own storage when nothing else can see it
/// (the caller's handle, which the autodiff drops after this node's backward, is the only one
/// to the tensor and its storage, no graph node, f32), else a new tensor; bit for bit the
/// same values either way. Every ReLU's backward (alone, fused into a linear layer or batch
/// norm, or rebuilt before a convolution) masks this way, so the masked gradient does not
/// live beside the one it masks.
pub(crate) fn relu_backward_in_place(y: &Tensor, g: &Tensor) -> Result<Tensor> {
    if !(held_alone(g) && g.dtype() == DType::F32) {
        return relu_backward_from_output(y, g);
    }
    let kept = match y.dtype() {
        DType::F32 => 0,
        DType::U32 => 1,
        _ => 2,
    };
    let n = g.numel();
    if n > 0 {
        let gpu = g.gpu();
        gpu.dispatch(&K_RELU_MASK_INTO, &[("KEPT", kept as f64)], bytes_of(&Params::new(n, 0.0, 0.0)), &[y.buffer(), g.buffer()], grid(gpu, n, 256))?;
    }
    Ok(g.clone())
}

/// What a ReLU keeps of its output `y` to mask the gradient, when `recording` (its output
/// will have a backward; otherwise nothing is computed and `y` is returned): the output
/// itself, or under mixed precision ([`crate::autograd::autocast`]) its bit mask, u32
/// `[ceil(n / 32)]` with bit i of word i / 32 set where y > 0: 1/32 of the bytes, and the
/// same gradient bit for bit. (The f32 output then lives only until the layers after it have
/// used it; a GEMM after it keeps its own f16 copy.) In f32 the output is kept itself, since
/// the layer after a ReLU usually keeps the same tensor anyway.
pub(crate) fn relu_output_kept(y: &Tensor, recording: bool) -> Result<Tensor> {
    if !(recording && crate::autograd::autocast_enabled() && y.dtype() == DType::F32) {
        return Ok(y.detach());
    }
    let gpu = y.gpu();
    let n = y.numel();
    let words = n.div_ceil(32);
    let bits = Tensor::empty(gpu, &[words], DType::U32)?;
    if n > 0 {
        gpu.dispatch(&K_RELU_MASK, &[], bytes_of(&Params::new(n, 0.0, 0.0)), &[y.buffer(), bits.buffer()], grid(gpu, words, 256))?;
    }
    Ok(bits)
}

/// y = f(x) for one of the [`Unary`] maps; `a`, `b` are its scalar operands.
pub fn unary(x: &Tensor, op: Unary, a: f32, b: f32) -> Result<Tensor> {
    let y = launch_unary(x, op as u32, a, b)?;
    let saved = match op {
        Unary::Relu => relu_output_kept(&y, crate::autograd::records(&[x]))?,
        op if op.grad_from_output() => y.detach(),
        _ => x.detach(),
    };
    Ok(y.with_grad_fn(&[x], || Box::new(UnaryBack { op, a, b, saved })))
}

/// -x.
pub fn neg(x: &Tensor) -> Result<Tensor> {
    unary(x, Unary::Neg, 0.0, 0.0)
}
/// e^x.
pub fn exp(x: &Tensor) -> Result<Tensor> {
    unary(x, Unary::Exp, 0.0, 0.0)
}
/// ln x.
pub fn log(x: &Tensor) -> Result<Tensor> {
    unary(x, Unary::Log, 0.0, 0.0)
}
/// √x.
pub fn sqrt(x: &Tensor) -> Result<Tensor> {
    unary(x, Unary::Sqrt, 0.0, 0.0)
}
/// max(x, 0).
pub fn relu(x: &Tensor) -> Result<Tensor> {
    unary(x, Unary::Relu, 0.0, 0.0)
}
/// GELU, tanh approximation.
pub fn gelu(x: &Tensor) -> Result<Tensor> {
    unary(x, Unary::Gelu, 0.0, 0.0)
}
/// 1 / (1 + e^-x).
pub fn sigmoid(x: &Tensor) -> Result<Tensor> {
    unary(x, Unary::Sigmoid, 0.0, 0.0)
}
/// tanh x.
pub fn tanh(x: &Tensor) -> Result<Tensor> {
    unary(x, Unary::Tanh, 0.0, 0.0)
}
/// |x|.
pub fn abs(x: &Tensor) -> Result<Tensor> {
    unary(x, Unary::Abs, 0.0, 0.0)
}
/// x².
pub fn square(x: &Tensor) -> Result<Tensor> {
    unary(x, Unary::Square, 0.0, 0.0)
}
/// 1 / x.
pub fn recip(x: &Tensor) -> Result<Tensor> {
    unary(x, Unary::Recip, 0.0, 0.0)
}
/// x^e for x > 0.
pub fn pow_scalar(x: &Tensor, e: f32) -> Result<Tensor> {
    unary(x, Unary::Pow, e, 0.0)
}
/// x clamped to [lo, hi]; the gradient passes where lo <= x <= hi.
pub fn clamp(x: &Tensor, lo: f32, hi: f32) -> Result<Tensor> {
    unary(x, Unary::Clamp, lo, hi)
}
/// -1, 0 or 1 (gradient 0).
pub fn sign(x: &Tensor) -> Result<Tensor> {
    unary(x, Unary::Sign, 0.0, 0.0)
}
/// s * x + b.
pub fn affine(x: &Tensor, s: f32, b: f32) -> Result<Tensor> {
    unary(x, Unary::Affine, s, b)
}
/// s * x.
pub fn scale(x: &Tensor, s: f32) -> Result<Tensor> {
    affine(x, s, 0.0)
}
/// x + b.
pub fn add_scalar(x: &Tensor, b: f32) -> Result<Tensor> {
    affine(x, 1.0, b)
}
/// 1.0 where x >= s, else 0.0 (not differentiable).
pub fn ge_scalar(x: &Tensor, s: f32) -> Result<Tensor> {
    let _ng = crate::autograd::no_grad();
    let st = full(x.gpu(), &[1], s)?;
    binary(x, &st, Binary::Ge, 0.0, 0.0)
}

/// A new f32 tensor of `shape` with every element `value` (a fill kernel; a zero fill is
/// a buffer clear).
pub fn full(gpu: &crate::gpu::Gpu, shape: &[usize], value: f32) -> Result<Tensor> {
    if value == 0.0 {
        return Tensor::zeros(gpu, shape);
    }
    let t = Tensor::empty(gpu, shape, DType::F32)?;
    fill(&t, value)?;
    Ok(t)
}

/// Fill a tensor in place (not recorded).
pub fn fill(t: &Tensor, value: f32) -> Result<()> {
    expect_f32("fill", &[t])?;
    let n = t.numel();
    if n == 0 {
        return Ok(());
    }
    dispatch_map(&K_FILL, &K_FILL4, 0, &Params::new(n, value, 0.0), &[t])
}

/// `acc + x`, written into `acc`'s own storage when nothing else can see it (this handle is
/// the only one to the tensor and to its storage, no graph node, same shape, f32), else a
/// new tensor. Gradient accumulation uses it so a sum of gradients holds one buffer, not
/// two; the result is bit-identical either way (f32 addition commutes exactly).
pub fn add_into(acc: Tensor, x: &Tensor) -> Result<Tensor> {
    let same = acc.shape() == x.shape() && acc.dtype() == DType::F32 && x.dtype() == DType::F32;
    if !(held_alone(&acc) && same && acc.gpu().same_device(x.gpu())) {
        return add(&acc, x);
    }
    let n = acc.numel();
    if n > 0 {
        dispatch_map(&K_ADD_INTO, &K_ADD_INTO4, 0, &Params::new(n, 0.0, 0.0), &[x, &acc])?;
    }
    Ok(acc)
}

// ---- binary ------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
/// A broadcasting binary op, by its code in `shaders/elementwise.wgsl`.
pub enum Binary {
    /// a + b.
    Add = 0,
    /// a - b.
    Sub = 1,
    /// a * b.
    Mul = 2,
    /// a / b.
    Div = 3,
    /// max(a, b); the gradient goes to `a` on ties.
    Max = 4,
    /// min(a, b); the gradient goes to `a` on ties.
    Min = 5,
    /// s*a + t*b
    Lerp = 6,
    /// 1.0 where a == b, else 0.0 (no gradient).
    Eq = 7,
    /// 1.0 where a >= b, else 0.0 (no gradient).
    Ge = 8,
}

impl Binary {
    /// Every op: the codes `shaders/elementwise.wgsl` names `BINARY_<NAME>` (checked by
    /// `tests/gpu/kernels.rs`).
    pub const ALL: [Binary; 9] =
        [Binary::Add, Binary::Sub, Binary::Mul, Binary::Div, Binary::Max, Binary::Min, Binary::Lerp, Binary::Eq, Binary::Ge];
}

/// Numpy broadcasting of two shapes.
pub fn broadcast_shape(op: &'static str, a: &[usize], b: &[usize]) -> Result<Vec<usize>> {
    let n = a.len().max(b.len());
    let mut out = vec![0; n];
    for i in 0..n {
        let da = if i + a.len() >= n { a[i + a.len() - n] } else { 1 };
        let db = if i + b.len() >= n { b[i + b.len() - n] } else { 1 };
        out[i] = if da == db || db == 1 {
            da
        } else if da == 1 {
            db
        } else {
            return Err(Error::shape(op, format!("shapes {a:?} and {b:?} do not broadcast (dim {i}: {da} vs {db})")));
        };
    }
    Ok(out)
}

/// Element strides of `shape` read as a broadcast operand of `out` (0 on broadcast dims).
fn bcast_strides(shape: &[usize], out: &[usize]) -> [u32; MAX_DIMS] {
    let mut s = [0u32; MAX_DIMS];
    let off = out.len() - shape.len();
    let mut stride = 1usize;
    for i in (0..shape.len()).rev() {
        s[i + off] = if shape[i] == 1 { 0 } else { stride as u32 };
        stride *= shape[i];
    }
    s
}

fn launch_binary(a: &Tensor, b: &Tensor, op: Binary, s: f32, t: f32) -> Result<Tensor> {
    expect_f32("binary", &[a, b])?;
    expect_same_gpu("binary", &[a, b])?;
    let out = broadcast_shape("binary", a.shape(), b.shape())?;
    if out.len() > MAX_DIMS {
        return Err(Error::shape("binary", format!("at most {MAX_DIMS} dims, got {out:?}")));
    }
    let gpu = a.gpu();
    let y = Tensor::empty(gpu, &out, DType::F32)?;
    let n = y.numel();
    let mut p = Params::new(n, s, t);
    if n == 0 {
        return Ok(y);
    }
    if a.shape() == out.as_slice() && b.shape() == out.as_slice() {
        dispatch_map(&K_BINARY, &K_BINARY4, op as u32, &p, &[a, b, &y])?;
        return Ok(y);
    }
    {
        p.bcast = 1;
        p.ndim = out.len() as u32;
        for (i, &d) in out.iter().enumerate() {
            p.shape[i] = d as u32;
        }
        p.sa = bcast_strides(a.shape(), &out);
        p.sb = bcast_strides(b.shape(), &out);
    }
    let consts = [("OP", op as u32 as f64)];
    let buffers = [a.buffer(), b.buffer(), y.buffer()];
    // four outputs along the last dim share the broadcast index: the vec4 form decodes it once
    if out.last().is_some_and(|d| d % 4 == 0) && y.buffer().offset() % 16 == 0 {
        gpu.dispatch(&K_BINARY_BCAST4, &consts, bytes_of(&p), &buffers, grid(gpu, n / 4, VEC4_PER_GROUP))?;
    } else {
        gpu.dispatch(&K_BINARY, &consts, bytes_of(&p), &buffers, grid(gpu, n, 256))?;
    }
    Ok(y)
}

struct BinaryBack {
    op: Binary,
    s: f32,
    t: f32,
    /// the operands, each only where the backward reads it ([`BinaryBack::keeps`])
    a: Option<Tensor>,
    b: Option<Tensor>,
}

impl BinaryBack {
    /// Which operands (a, b) the backward of `op` reads, given which ones need a gradient
    /// (`ta`, `tb`): a sum or a blend reads neither, so a residual connection keeps nothing
    /// alive; a product reads each factor for the other's gradient.
    fn keeps(op: Binary, ta: bool, tb: bool) -> (bool, bool) {
        match op {
            Binary::Add | Binary::Sub | Binary::Lerp | Binary::Eq | Binary::Ge => (false, false),
            Binary::Mul => (tb, ta),
            Binary::Div => (tb, ta || tb),
            Binary::Max | Binary::Min => (true, true),
        }
    }
}

impl BackwardOp for BinaryBack {
    fn name(&self) -> &'static str {
        "binary"
    }
    fn backward(&self, g: &Tensor, inputs: &[Tensor]) -> Result<Vec<Option<Tensor>>> {
        let (ta, tb) = (inputs[0].is_tracked(), inputs[1].is_tracked());
        let (a, b) = (|| operand(&self.a), || operand(&self.b));
        let (ga, gb) = match self.op {
            Binary::Add => (ta.then(|| g.clone()), tb.then(|| g.clone())),
            Binary::Sub => (ta.then(|| g.clone()), if tb { Some(neg(g)?) } else { None }),
            Binary::Mul => (if ta { Some(mul(g, b()?)?) } else { None }, if tb { Some(mul(g, a()?)?) } else { None }),
            Binary::Div => {
                let ga = if ta { Some(div(g, b()?)?) } else { None };
                // d(a/b)/db = -a/b^2
                let gb = if tb { Some(neg(&div(&mul(g, a()?)?, &square(b()?)?)?)?) } else { None };
                (ga, gb)
            }
            Binary::Max | Binary::Min => {
                // the gradient goes to the operand that was selected (a on ties)
                let (a, b) = (a()?, b()?);
                let pick_a = if self.op == Binary::Max {
                    binary(a, b, Binary::Ge, 0.0, 0.0)?
                } else {
                    binary(b, a, Binary::Ge, 0.0, 0.0)?
                };
                let ga = if ta { Some(mul(g, &pick_a)?) } else { None };
                let gb = if tb { Some(mul(g, &affine(&pick_a, -1.0, 1.0)?)?) } else { None };
                (ga, gb)
            }
            Binary::Lerp => (if ta { Some(scale(g, self.s)?) } else { None }, if tb { Some(scale(g, self.t)?) } else { None }),
            Binary::Eq | Binary::Ge => (None, None),
        };
        let ga = match ga {
            Some(x) => Some(super::reduce::sum_to_shape(&x, inputs[0].shape())?),
            None => None,
        };
        let gb = match gb {
            Some(x) => Some(super::reduce::sum_to_shape(&x, inputs[1].shape())?),
            None => None,
        };
        Ok(vec![ga, gb])
    }
}

/// An operand [`BinaryBack`] saved; an error if it was not (a bug in [`BinaryBack::keeps`]).
fn operand(t: &Option<Tensor>) -> Result<&Tensor> {
    t.as_ref().ok_or_else(|| Error::Autograd("binary: an operand its backward reads was not saved".into()))
}

/// y = a (op) b with numpy broadcasting.
pub fn binary(a: &Tensor, b: &Tensor, op: Binary, s: f32, t: f32) -> Result<Tensor> {
    let y = launch_binary(a, b, op, s, t)?;
    if matches!(op, Binary::Eq | Binary::Ge) {
        return Ok(y);
    }
    Ok(y.with_grad_fn(&[a, b], || {
        let (keep_a, keep_b) = BinaryBack::keeps(op, a.is_tracked(), b.is_tracked());
        Box::new(BinaryBack { op, s, t, a: keep_a.then(|| a.detach()), b: keep_b.then(|| b.detach()) })
    }))
}

/// a + b, broadcasting.
pub fn add(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    binary(a, b, Binary::Add, 0.0, 0.0)
}
/// a - b, broadcasting.
pub fn sub(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    binary(a, b, Binary::Sub, 0.0, 0.0)
}
/// a * b, broadcasting.
pub fn mul(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    binary(a, b, Binary::Mul, 0.0, 0.0)
}
/// a / b, broadcasting.
pub fn div(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    binary(a, b, Binary::Div, 0.0, 0.0)
}
/// Element-wise max(a, b), broadcasting; the gradient goes to `a` on ties.
pub fn maximum(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    binary(a, b, Binary::Max, 0.0, 0.0)
}
/// Element-wise min(a, b), broadcasting; the gradient goes to `a` on ties.
pub fn minimum(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    binary(a, b, Binary::Min, 0.0, 0.0)
}
/// s*a + t*b.
pub fn lerp(a: &Tensor, b: &Tensor, s: f32, t: f32) -> Result<Tensor> {
    binary(a, b, Binary::Lerp, s, t)
}

// ---- expand -------------------------------------------------------------------------------

struct ExpandBack;
impl BackwardOp for ExpandBack {
    fn name(&self) -> &'static str {
        "expand"
    }
    fn backward(&self, g: &Tensor, inputs: &[Tensor]) -> Result<Vec<Option<Tensor>>> {
        Ok(vec![Some(super::reduce::sum_to_shape(g, inputs[0].shape())?)])
    }
}

/// Broadcast `x` to `shape` (numpy rules), materialised.
pub fn expand(x: &Tensor, shape: &[usize]) -> Result<Tensor> {
    expect_f32("expand", &[x])?;
    let out = broadcast_shape("expand", x.shape(), shape)?;
    if out != shape {
        return Err(Error::shape("expand", format!("{:?} does not broadcast to {:?}", x.shape(), shape)));
    }
    if x.shape() == shape {
        return Ok(x.clone());
    }
    if out.len() > MAX_DIMS {
        return Err(Error::shape("expand", format!("at most {MAX_DIMS} dims, got {out:?}")));
    }
    let gpu = x.gpu();
    let y = Tensor::empty(gpu, shape, DType::F32)?;
    let n = y.numel();
    let mut p = Params::new(n, 0.0, 0.0);
    p.ndim = out.len() as u32;
    for (i, &d) in out.iter().enumerate() {
        p.shape[i] = d as u32;
    }
    p.sa = bcast_strides(x.shape(), &out);
    gpu.dispatch(&K_EXPAND, &[], bytes_of(&p), &[x.buffer(), y.buffer()], grid(gpu, n, 256))?;
    Ok(y.with_grad_fn(&[x], || Box::new(ExpandBack)))
}

// ---- casts ---------------------------------------------------------------------------------

struct CastBack;
impl BackwardOp for CastBack {
    fn name(&self) -> &'static str {
        "cast"
    }
    fn backward(&self, g: &Tensor, inputs: &[Tensor]) -> Result<Vec<Option<Tensor>>> {
        Ok(vec![Some(cast(g, inputs[0].dtype())?)])
    }
}

/// max |x| over an f32 tensor, as the bits of an f32 in a one-word tensor (no autograd):
/// the per-tensor scale of an f32 operand that a tensor-core kernel stages as f16 (an atomic
/// max of bit patterns: the same result in any order; a NaN anywhere gives a NaN). Public
/// for its test.
#[doc(hidden)]
pub fn abs_max_bits(x: &Tensor) -> Result<Tensor> {
    let out = Tensor::zeros(x.gpu(), &[1])?;
    abs_max_bits_into(x, &out)?;
    Ok(out)
}

/// [`abs_max_bits`] folded into `acc` (a one-word tensor): afterwards it holds the bits of
/// the larger of its old value and max |x|. The loss scale's check for inf and NaN
/// gradients (bits `0x7f80_0000` and above) over every gradient of a step.
pub(crate) fn abs_max_bits_into(x: &Tensor, acc: &Tensor) -> Result<()> {
    expect_f32("abs_max_bits", &[x])?;
    if acc.numel() != 1 || acc.dtype() != DType::F32 {
        return Err(Error::shape("abs_max_bits", format!("the accumulator must be one f32 word, got {:?} {:?}", acc.shape(), acc.dtype())));
    }
    let gpu = x.gpu();
    let n = x.numel();
    // a grid-stride loop: at most 1024 workgroups of 256
    gpu.dispatch(&K_ABS_MAX_BITS, &[], bytes_of(&Params::new(n, 0.0, 0.0)), &[x.buffer(), acc.buffer()], grid(gpu, n.clamp(1, 1024 * 256), 256))
}

/// A tensor's max |value| as f32 bits ([`abs_max_bits`]), computed at most once however many
/// kernels ask: the per-tensor scale of an f32 gradient that several tensor-core GEMMs stage
/// as f16 (a convolution's dX and dW, a linear layer's or a matmul's two operand gradients
/// all read dy).
pub(crate) struct AbsMax<'a> {
    t: &'a Tensor,
    bits: std::cell::OnceCell<Tensor>,
}

impl<'a> AbsMax<'a> {
    pub(crate) fn new(t: &'a Tensor) -> AbsMax<'a> {
        AbsMax { t, bits: std::cell::OnceCell::new() }
    }
    /// The tensor itself.
    pub(crate) fn tensor(&self) -> &'a Tensor {
        self.t
    }
    /// Whether `t` holds the same values: a view of the same storage (a reshape, a
    /// transposed read) with as many of them.
    pub(crate) fn covers(&self, t: &Tensor) -> bool {
        std::sync::Arc::ptr_eq(self.t.storage(), t.storage()) && self.t.numel() == t.numel() && self.t.dtype() == t.dtype()
    }
    /// max |t| as f32 bits, the first call computing it.
    pub(crate) fn bits(&self) -> Result<&Tensor> {
        if let Some(b) = self.bits.get() {
            return Ok(b);
        }
        let b = abs_max_bits(self.t)?;
        Ok(self.bits.get_or_init(|| b))
    }
}

/// Convert between f32 and f16 storage.
pub fn cast(x: &Tensor, to: DType) -> Result<Tensor> {
    let gpu = x.gpu();
    let n = x.numel();
    let y = match (x.dtype(), to) {
        (a, b) if a == b => return Ok(x.clone()),
        (DType::F32, DType::F16) => {
            let y = Tensor::empty(gpu, x.shape(), DType::F16)?;
            gpu.dispatch(&K_TO_F16, &[], bytes_of(&Params::new(n, 0.0, 0.0)), &[x.buffer(), y.buffer()], grid(gpu, n.div_ceil(2), 256))?;
            y
        }
        (DType::F16, DType::F32) => {
            let y = Tensor::empty(gpu, x.shape(), DType::F32)?;
            gpu.dispatch(&K_FROM_F16, &[], bytes_of(&Params::new(n, 0.0, 0.0)), &[x.buffer(), y.buffer()], grid(gpu, n, 256))?;
            y
        }
        (a, b) => return Err(Error::DType { op: "cast", msg: format!("no cast from {a:?} to {b:?}") }),
    };
    Ok(y.with_grad_fn(&[x], || Box::new(CastBack)))
}
