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
use super::elementwise::broadcast_shape;
use super::{bytes_of, expect_f32, expect_same_gpu, grid, split_grid};
use crate::autograd::BackwardOp;
use crate::error::{Error, Result};
use crate::gpu::{Access, Kernel, Shader};
use crate::tensor::{numel, DType, Tensor};

const R: Access = Access::Read;
const RW: Access = Access::ReadWrite;
/// A, SA, B, SB, bias, C, and A and B again as vec4s (the 128x128 tile's VEC4 form).
const BINDINGS: &[Access] = &[R, R, R, R, R, RW, R, R];
const K_TILE128: Kernel = Kernel::new(Shader::Matmul, "gemm_tile128", BINDINGS, &Params::LAYOUT);
const K_TILE64: Kernel = Kernel::new(Shader::Matmul, "gemm_tile64", BINDINGS, &Params::LAYOUT);
const K_REF: Kernel = Kernel::new(Shader::Matmul, "gemm_ref", BINDINGS, &Params::LAYOUT);
const K_SPLITK_REDUCE: Kernel = Kernel::new(Shader::Matmul, "gemm_splitk_reduce", BINDINGS, &Params::LAYOUT);
/// Every kernel of this file (for the interface test, `tests/gpu/kernels.rs`).
pub(crate) const KERNELS: &[Kernel] = &[K_TILE128, K_TILE64, K_REF, K_SPLITK_REDUCE];

/// Most broadcast batch dims a matmul takes (after dropping dims of size 1).
pub const MAX_BATCH_DIMS: usize = 8;

/// The override constants of `shaders/matmul.wgsl`: the product's form is fixed per
/// pipeline, so its kernels carry no runtime branch on it (checked against the module by
/// `tests/gpu/kernels.rs`).
pub const MATMUL_OVERRIDES: [&str; 7] = ["TRANS_A", "TRANS_B", "SCALE_A", "SCALE_B", "BIAS", "RELU", "VEC4"];

/// A product's form: transposes, which scales, bias, ReLU. Each form is its own pipeline.
#[derive(Clone, Copy, Debug)]
struct Form {
    ta: bool,
    tb: bool,
    sa: bool,
    sb: bool,
    bias: bool,
    relu: bool,
}

impl Form {
    /// The pipeline constants, in [`MATMUL_OVERRIDES`] order (all but `VEC4`, which only
    /// [`launch_vec4`] sets).
    fn constants(self) -> [(&'static str, f64); 6] {
        let v = [self.ta, self.tb, self.sa, self.sb, self.bias, self.relu];
        std::array::from_fn(|i| (MATMUL_OVERRIDES[i], v[i] as u32 as f64))
    }
}

/// Below this many 128x128 output tiles the 64x64 kernel is used: with fewer tiles than
/// streaming multiprocessors on a large GPU (132 on the H100) the big tile leaves most of
/// the machine idle, and the small tile gives 4x as many workgroups.
const TILE128_MIN_TILES: usize = 132;

/// Split-K factors the tuner may try (on the 64x64 tile, batch 1 only).
pub const MATMUL_SPLITS: [u32; 2] = [4, 16];
/// K-slice depth of the 64x64 tile (`BK2` in `shaders/matmul.wgsl`): split-K cuts K in
/// whole slices.
const TILE64_BK: usize = 16;
/// Most bytes of split-K partials (a variant needing more is not a candidate).
const SPLIT_MAX_PARTIAL_BYTES: usize = 256 << 20;

crate::gpu::gpu_params! {
    struct Params as "Params" {
        m: u32,
        n: u32,
        k: u32,
        batch: u32,
        _p0: u32,
        _p1: u32,
        _p2: u32,
        nbd: u32,
        z0: u32,
        x0: u32,
        y0: u32,
        k_chunk: u32,
        bshape: [u32; MAX_BATCH_DIMS],
        bsa: [u32; MAX_BATCH_DIMS],
        bsb: [u32; MAX_BATCH_DIMS],
    }
}

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

/// Which kernel runs a matmul. [`matmul_ex`] always uses `Auto` (the tuner's choice, or the
/// size rule with tuning off); the others are for tests and benchmarks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MatmulKernel {
    /// The tuned choice for this shape bucket (tuning it now if it is new).
    Auto,
    /// 64x64 tiles, 4x4 outputs per thread.
    Tile64,
    /// 128x128 tiles, 8x8 outputs per thread.
    Tile128,
    /// 128x128 tiles with unguarded vec4 global loads on the interior tiles, the guarded
    /// form on the edge strips (unscaled operands with 16-byte rows and K a multiple of 8).
    Tile128Vec4,
    /// 64x64 tiles with K cut into this many splits (batch 1 only; see [`MATMUL_SPLITS`]).
    SplitK(u32),
    /// One thread per output, no tiling (slow; the cross-check).
    Reference,
}

impl MatmulKernel {
    /// Every variant the tuner may pick, in the order it tries them.
    pub const TUNED: [MatmulKernel; 5] = [
        MatmulKernel::Tile128,
        MatmulKernel::Tile128Vec4,
        MatmulKernel::Tile64,
        MatmulKernel::SplitK(MATMUL_SPLITS[0]),
        MatmulKernel::SplitK(MATMUL_SPLITS[1]),
    ];

    /// The name the tuning cache and the benchmark rows use.
    pub fn name(self) -> &'static str {
        match self {
            MatmulKernel::Auto => "auto",
            MatmulKernel::Tile64 => "tile64",
            MatmulKernel::Tile128 => "tile128",
            MatmulKernel::Tile128Vec4 => "tile128v4",
            MatmulKernel::SplitK(4) => "splitk4",
            MatmulKernel::SplitK(16) => "splitk16",
            MatmulKernel::SplitK(_) => "splitk",
            MatmulKernel::Reference => "reference",
        }
    }

    /// The tuned variant of this name.
    pub fn from_name(name: &str) -> Option<MatmulKernel> {
        MatmulKernel::TUNED.into_iter().find(|k| k.name() == name)
    }
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

/// Run the GEMM described by `p` (no autograd). `sa`/`sb` have their operand's shape;
/// `relu` applies max(., 0) in the epilogue, after the bias.
#[allow(clippy::too_many_arguments)]
fn launch(
    p: &Plan,
    a: &Tensor,
    sa: Option<&Tensor>,
    b: &Tensor,
    sb: Option<&Tensor>,
    bias: Option<&Tensor>,
    relu: bool,
    kernel: MatmulKernel,
) -> Result<Tensor> {
    let gpu = a.gpu();
    if p.k == 0 {
        // empty inner product: zeros (+ bias, ReLU)
        let _ng = crate::autograd::no_grad();
        let z = Tensor::zeros(gpu, &p.out_shape)?;
        let z = match bias {
            Some(bias) => super::elementwise::add(&z, bias)?,
            None => z,
        };
        return if relu { super::elementwise::relu(&z) } else { Ok(z) };
    }
    let c = Tensor::empty(gpu, &p.out_shape, DType::F32)?;
    if c.numel() == 0 {
        return Ok(c);
    }
    let form = Form { ta: p.ta, tb: p.tb, sa: sa.is_some(), sb: sb.is_some(), bias: bias.is_some(), relu };
    let consts = form.constants();
    let mut params = Params {
        m: p.m as u32,
        n: p.n as u32,
        k: p.k as u32,
        batch: p.batch as u32,
        _p0: 0,
        _p1: 0,
        _p2: 0,
        nbd: p.nbd as u32,
        z0: 0,
        x0: 0,
        y0: 0,
        k_chunk: 0,
        bshape: p.bshape,
        bsa: p.bsa,
        bsb: p.bsb,
    };
    // Absent optional operands bind a buffer that is already bound read-only; the kernel
    // never reads them (the form's constants).
    // Bindings 7 and 8 (A and B as vec4s) are read only by the VEC4 form, which binds A and
    // B there; every other launch binds a 16-byte placeholder (a vec4 array binding must
    // hold one vec4, and A or B may be a single float).
    let placeholder = Tensor::empty(gpu, &[4], DType::F32)?;
    let mut buffers = [
        a.buffer(),
        sa.unwrap_or(a).buffer(),
        b.buffer(),
        sb.unwrap_or(b).buffer(),
        bias.unwrap_or(a).buffer(),
        c.buffer(),
        placeholder.buffer(),
        placeholder.buffer(),
    ];
    let kernel = match kernel {
        MatmulKernel::Auto => choose(p, a, sa, b, sb, bias, relu)?,
        k => k,
    };
    let (k, tile) = match kernel {
        MatmulKernel::Reference => {
            gpu.dispatch(&K_REF, &consts, bytes_of(&params), &buffers, grid(gpu, p.batch * p.m * p.n, 64))?;
            return Ok(c);
        }
        MatmulKernel::SplitK(splits) => {
            launch_split(p, form, params, buffers, &c, splits as usize)?;
            return Ok(c);
        }
        MatmulKernel::Tile128Vec4 => {
            if !vec4_applies(p, &form, &[a, b]) {
                return Err(Error::Other(format!("matmul: the vec4 form needs unscaled, 16-byte aligned operands with K a multiple of 8 ({} x {} x {})", p.m, p.n, p.k)));
            }
            [buffers[6], buffers[7]] = [a.buffer(), b.buffer()];
            launch_vec4(gpu, p, form, params, &buffers)?;
            return Ok(c);
        }
        MatmulKernel::Tile128 => (&K_TILE128, 128),
        _ => (&K_TILE64, 64),
    };
    // (column tiles, row tiles, batch), split at the per-dimension workgroup limit
    for (first, groups) in split_grid(gpu, [p.n.div_ceil(tile), p.m.div_ceil(tile), p.batch]) {
        [params.x0, params.y0, params.z0] = first;
        gpu.dispatch(k, &consts, bytes_of(&params), &buffers, groups)?;
    }
    Ok(c)
}

/// The size rule used with tuning off: the 64x64 tile until the 128x128 one has enough
/// tiles to fill a large GPU.
fn heuristic(p: &Plan) -> MatmulKernel {
    let tiles = p.m.div_ceil(128) * p.n.div_ceil(128) * p.batch;
    if tiles >= TILE128_MIN_TILES {
        MatmulKernel::Tile128
    } else {
        MatmulKernel::Tile64
    }
}

/// The variants that can run `p`: both tiles always; the VEC4 form where it applies and
/// there is an interior tile; split-K for one matrix whose K holds at least two slices per
/// split and whose partials fit [`SPLIT_MAX_PARTIAL_BYTES`].
fn candidates(p: &Plan, form: &Form, operands: &[&Tensor]) -> Vec<MatmulKernel> {
    MatmulKernel::TUNED
        .into_iter()
        .filter(|k| match *k {
            // worth a launch only with interior tiles
            MatmulKernel::Tile128Vec4 => p.m >= 128 && p.n >= 128 && vec4_applies(p, form, operands),
            MatmulKernel::SplitK(s) => {
                let (chunk, used) = split_shape(p.k, s as usize);
                p.batch == 1 && chunk >= 2 && used == s as usize && used * p.m * p.n * 4 <= SPLIT_MAX_PARTIAL_BYTES
            }
            _ => true,
        })
        .collect()
}

/// The tuning bucket of `p`: transposes, scales, bias, and the power-of-two class of each
/// size (a bucket's variants are timed on its first problem).
fn bucket(p: &Plan, sa: bool, sb: bool, bias: bool, relu: bool) -> String {
    use super::tune::size_class as c;
    let flag = |on: bool, ch: char| if on { ch } else { '-' };
    let f: String = [flag(p.ta, 'A'), flag(p.tb, 'B'), flag(sa || sb, 's'), flag(bias, 'b'), flag(relu, 'r')].iter().collect();
    format!("{f} batch{} m{} n{} k{}", c(p.batch), c(p.m), c(p.n), c(p.k))
}

/// The variant that runs `p`: the tuned choice of its bucket (timing the candidates now,
/// on seeded random operands of the same shapes, if the bucket is new), or [`heuristic`]
/// with tuning off or only one candidate.
fn choose(p: &Plan, a: &Tensor, sa: Option<&Tensor>, b: &Tensor, sb: Option<&Tensor>, bias: Option<&Tensor>, relu: bool) -> Result<MatmulKernel> {
    let gpu = a.gpu();
    let form = Form { ta: p.ta, tb: p.tb, sa: sa.is_some(), sb: sb.is_some(), bias: bias.is_some(), relu };
    let cands = candidates(p, &form, &[a, b]);
    // the probe's reference is one thread per output: under a test cap on workgroups per
    // dimension a large product cannot launch it (on a real adapter the cap is 65,535^3)
    let reference_fits = (p.batch * p.m * p.n).div_ceil(64) as u64 <= (gpu.max_workgroups_per_dim() as u64).pow(3);
    if gpu.tune_mode() == crate::gpu::TuneMode::Off || cands.len() < 2 || !reference_fits {
        return Ok(heuristic(p));
    }
    let bucket = bucket(p, sa.is_some(), sb.is_some(), bias.is_some(), relu);
    let known = || gpu.tune_lookup("matmul", &bucket).and_then(|e| MatmulKernel::from_name(&e.variant));
    // a bucket's problems differ in K: split-K may not apply to this one
    let applicable = |k: MatmulKernel| if cands.contains(&k) { k } else { heuristic(p) };
    if let Some(k) = known() {
        return Ok(applicable(k));
    }
    // one tuning at a time per device: a bucket two threads meet at once is tuned once, so
    // every product of a process runs the same variant
    let _one = gpu.tuning_guard();
    if let Some(k) = known() {
        return Ok(applicable(k));
    }
    if let Some(e) = gpu.tune_lookup("matmul", &bucket) {
        eprintln!("warning: tuning cache: matmul {bucket}: unknown variant `{}`; tuning again", e.variant);
    }
    let tuned = (|| {
        let _ng = crate::autograd::no_grad();
        let seed = 0x7475_6e65; // "tune"
        let rnd = |t: &Tensor, i: u64| super::random::randn(gpu, t.shape(), seed, i << 40);
        let (ra, rb) = (rnd(a, 0)?, rnd(b, 1)?);
        let rsa = sa.map(|s| rnd(s, 2)).transpose()?;
        let rsb = sb.map(|s| rnd(s, 3)).transpose()?;
        let rbias = bias.map(|s| rnd(s, 4)).transpose()?;
        let run = |k: MatmulKernel| launch(p, &ra, rsa.as_ref(), &rb, rsb.as_ref(), rbias.as_ref(), relu, k);
        let reference = run(MatmulKernel::Reference)?;
        let list: Vec<super::tune::Candidate> = cands.iter().map(|&k| (k.name(), Box::new(move || run(k)) as Box<dyn Fn() -> Result<Tensor>>)).collect();
        let problem = format!("{} x {} x {} (batch {})", p.m, p.n, p.k, p.batch);
        super::tune::tune(gpu, "matmul", &bucket, problem, &list, &reference)
    })();
    match tuned {
        Ok(name) => Ok(MatmulKernel::from_name(&name).filter(|k| cands.contains(k)).unwrap_or_else(|| heuristic(p))),
        // the tuning operands did not fit beside the run's tensors: run untuned, tune later
        Err(Error::OutOfMemory { .. }) => {
            eprintln!("warning: tuning matmul {bucket}: no memory for the tuning operands; the size rule picks this time");
            Ok(heuristic(p))
        }
        Err(e) => Err(e),
    }
}

/// Whether the 128x128 tile's VEC4 form can run `p`: unscaled operands, K a multiple of
/// the 8-deep slice, every operand row (and so every batch matrix) a multiple of 4 floats
/// along its contiguous dim, bindings on 16 bytes.
fn vec4_applies(p: &Plan, form: &Form, operands: &[&Tensor]) -> bool {
    let rows_a = if p.ta { p.m } else { p.k };
    let rows_b = if p.tb { p.k } else { p.n };
    !form.sa && !form.sb && p.k % 8 == 0 && rows_a % 4 == 0 && rows_b % 4 == 0 && operands.iter().all(|t| t.buffer().offset() % 16 == 0)
}

/// The 128x128 tile with the VEC4 form over the interior tiles (inside M and N) and the
/// guarded form over the right column strip and the bottom row strip.
fn launch_vec4(gpu: &crate::gpu::Gpu, p: &Plan, form: Form, mut params: Params, buffers: &[&crate::gpu::BufferRange; 8]) -> Result<()> {
    let (tiles_x, tiles_y) = (p.n.div_ceil(128), p.m.div_ceil(128));
    let (full_x, full_y) = (p.n / 128, p.m / 128);
    let guarded: Vec<(&str, f64)> = form.constants().to_vec();
    let mut vector = guarded.clone();
    vector.push((MATMUL_OVERRIDES[6], 1.0));
    // (constants, first column tile, first row tile, columns, rows) of each region
    let regions = [
        (&vector, 0, 0, full_x, full_y),
        (&guarded, full_x, 0, tiles_x - full_x, tiles_y), // right strip, every row
        (&guarded, 0, full_y, full_x, tiles_y - full_y),  // bottom strip, left of it
    ];
    for (consts, x, y, w, h) in regions {
        if w == 0 || h == 0 {
            continue;
        }
        for (first, groups) in split_grid(gpu, [w, h, p.batch]) {
            params.x0 = x as u32 + first[0];
            params.y0 = y as u32 + first[1];
            params.z0 = first[2];
            gpu.dispatch(&K_TILE128, consts, bytes_of(&params), buffers, groups)?;
        }
    }
    Ok(())
}

/// (K-slices per split, splits actually used) for `splits` requested: every split non-empty.
fn split_shape(k: usize, splits: usize) -> (usize, usize) {
    let slices = k.div_ceil(TILE64_BK);
    let chunk = slices.div_ceil(splits.max(1));
    (chunk, slices.div_ceil(chunk))
}

/// Split-K on the 64x64 tile: partial products of K-ranges into `[splits, M, N]`, then the
/// fixed-order reduction (+ bias) into `c`.
fn launch_split(p: &Plan, form: Form, mut params: Params, buffers: [&crate::gpu::BufferRange; 8], c: &Tensor, splits: usize) -> Result<()> {
    let gpu = c.gpu();
    if p.batch != 1 {
        return Err(Error::Other(format!("matmul: split-K runs batch 1 only, this product has {} matrices", p.batch)));
    }
    let (chunk, used) = split_shape(p.k, splits);
    let part = Tensor::empty(gpu, &[used, p.m, p.n], DType::F32)?;
    params.k_chunk = chunk as u32;
    // the partials take no epilogue: the reduction adds the bias once, then the ReLU
    let partial = Form { bias: false, relu: false, ..form }.constants();
    let mut pb = buffers;
    pb[5] = part.buffer();
    for (first, groups) in split_grid(gpu, [p.n.div_ceil(64), p.m.div_ceil(64), used]) {
        [params.x0, params.y0, params.z0] = first;
        gpu.dispatch(&K_TILE64, &partial, bytes_of(&params), &pb, groups)?;
    }
    let reduce = Params { batch: used as u32, k_chunk: 0, ..params };
    let reduce_consts = [("BIAS", form.bias as u32 as f64), ("RELU", form.relu as u32 as f64)];
    let pr = part.buffer();
    let rb = [pr, pr, pr, pr, buffers[4], c.buffer(), pr, pr];
    gpu.dispatch(&K_SPLITK_REDUCE, &reduce_consts, bytes_of(&reduce), &rb, grid(gpu, p.m * p.n, 64))
}

/// Plan + launch without autograd: op(A ⊙ sa) · op(B ⊙ sb).
fn gemm(a: &Tensor, ta: bool, sa: Option<&Tensor>, b: &Tensor, tb: bool, sb: Option<&Tensor>) -> Result<Tensor> {
    let p = plan("matmul", a.shape(), ta, b.shape(), tb)?;
    launch(&p, a, sa, b, sb, None, false, MatmulKernel::Auto)
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
    let y = launch(&p, a, None, b, opts.b_scale, None, false, MatmulKernel::Auto)?;
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
    launch(&p, a, None, b, opts.b_scale, bias, relu, kernel)
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
                masked = super::elementwise::relu_backward_from_output(y, g)?;
                &masked
            }
            None => g,
        };
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
    let y = launch(&p, x, None, w, w_scale, bias, relu, MatmulKernel::Auto)?.detach().reshape(&out_shape)?;
    let mut inputs = vec![x, w];
    inputs.extend(bias);
    let y_saved = relu.then(|| y.detach());
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
