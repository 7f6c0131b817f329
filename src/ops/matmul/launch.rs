//! The matmul kernels and their launches: the parameter block, the product's form as
//! override constants, the variants ([`MatmulKernel`]) and how each is dispatched (the
//! tiles over their grid, the VEC4 form over interior tiles plus edge strips, split-K with
//! its reduction). Which variant runs a product is `choice.rs`'s business.
use super::Plan;
use super::MAX_BATCH_DIMS;
use crate::error::{Error, Result};
use crate::gpu::{Access, BufferRange, Coop, Gpu, Kernel, Shader};
use crate::ops::elementwise::AbsMax;
use crate::ops::{bytes_of, grid, split_grid};
use crate::tensor::{DType, Tensor};

const R: Access = Access::Read;
const RW: Access = Access::ReadWrite;
/// A, SA, B, SB, bias, C, A and B again as vec4s (the 128x128 tile's VEC4 form), and as
/// packed f16 words (f16 operands), and C again as vec4s (the VEC4 form's vector stores).
const BINDINGS: &[Access] = &[R, R, R, R, R, RW, R, R, R, R, RW];
const K_TILE128: Kernel = Kernel::new(Shader::Matmul, "gemm_tile128", BINDINGS, &Params::LAYOUT);
const K_TILE64: Kernel = Kernel::new(Shader::Matmul, "gemm_tile64", BINDINGS, &Params::LAYOUT);
const K_REF: Kernel = Kernel::new(Shader::Matmul, "gemm_ref", BINDINGS, &Params::LAYOUT);
const K_SPLITK_REDUCE: Kernel = Kernel::new(Shader::Matmul, "gemm_splitk_reduce", BINDINGS, &Params::LAYOUT);
/// The cooperative-matrix kernel, on tensor cores and emulated: A (as f16 and as f32), B
/// (likewise), bias, C, the f32 operand's max |value| bits.
const COOP_BINDINGS: &[Access] = &[R, R, R, R, R, RW, R];
const K_COOP: [Kernel; 2] = [
    Kernel::new(Shader::MatmulCoop(Coop::Hardware), "gemm_coop", COOP_BINDINGS, &Params::LAYOUT),
    Kernel::new(Shader::MatmulCoop(Coop::Emulated), "gemm_coop", COOP_BINDINGS, &Params::LAYOUT),
];
/// Every kernel of this file (for the interface test, `tests/gpu/kernels.rs`).
pub(crate) const KERNELS: &[Kernel] = &[K_TILE128, K_TILE64, K_REF, K_SPLITK_REDUCE, K_COOP[0], K_COOP[1]];

/// The override constants of `shaders/matmul.wgsl`: the product's form is fixed per
/// pipeline, so its kernels carry no runtime branch on it (checked against the module by
/// `tests/gpu/kernels.rs`).
pub const MATMUL_OVERRIDES: [&str; 12] = ["TRANS_A", "TRANS_B", "SCALE_A", "SCALE_B", "BIAS", "RELU", "VEC4", "GROUP_M", "CORE_BK", "HALF_A", "HALF_B", "STORE4"];

/// A product's form: transposes, which scales, bias, ReLU, which operands are f16. Each
/// form is its own pipeline.
#[derive(Clone, Copy, Debug)]
pub(super) struct Form {
    pub(super) ta: bool,
    pub(super) tb: bool,
    pub(super) sa: bool,
    pub(super) sb: bool,
    pub(super) bias: bool,
    pub(super) relu: bool,
    pub(super) half_a: bool,
    pub(super) half_b: bool,
}

impl Form {
    /// The form of `p` with these operands and epilogue.
    pub(super) fn of(p: &Plan, a: &Tensor, sa: bool, b: &Tensor, sb: bool, bias: bool, relu: bool) -> Form {
        let half = |t: &Tensor| t.dtype() == DType::F16;
        Form { ta: p.ta, tb: p.tb, sa, sb, bias, relu, half_a: half(a), half_b: half(b) }
    }

    /// The pipeline constants of the form (the 128x128 tile's own aside: `VEC4`, which only
    /// [`launch_vec4`] sets, and those of [`Tile128::constants`]).
    fn constants(self) -> Vec<(&'static str, f64)> {
        let flags = [(0, self.ta), (1, self.tb), (2, self.sa), (3, self.sb), (4, self.bias), (5, self.relu), (9, self.half_a), (10, self.half_b)];
        flags.iter().map(|&(i, on)| (MATMUL_OVERRIDES[i], on as u32 as f64)).collect()
    }
}

/// Tile rows per band of the grouped tile order (`GROUP_M` in `shaders/matmul.wgsl`). At
/// N = 4096 (32 column tiles), a wave of 132 resident 128x128 workgroups (one per SM of an
/// H100, say) reads 5 row tiles of A and all 32 column tiles of B row by row, 37 operand
/// tiles; in bands of 8 rows it reads 8 and 17, 25.
pub const MATMUL_GROUP_M: u32 = 8;
/// K-slice depth of the 128x128 tile's `k16` variants (`CORE_BK` in `shaders/matmul.wgsl`; 8
/// otherwise).
pub const TILE128_DEEP_BK: usize = 16;
/// Workgroup memory of the 128x128 tile at K-slices of `bk`: two buffers of `bk` rows of
/// 128 floats for each operand (16 KiB at 8, 32 KiB at 16).
pub(super) const fn tile128_workgroup_bytes(bk: usize) -> usize {
    2 * 2 * bk * 128 * 4
}
/// Split-K factors the tuner may try (on the 64x64 tile, batch 1 only).
pub const MATMUL_SPLITS: [u32; 2] = [4, 16];
/// K-slice depth of the 64x64 tile (`BK2` in `shaders/matmul.wgsl`): split-K cuts K in
/// whole slices.
const TILE64_BK: usize = 16;
/// Most bytes of split-K partials (a variant needing more is not a candidate).
pub(super) const SPLIT_MAX_PARTIAL_BYTES: usize = 256 << 20;

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

/// Which kernel runs a matmul. [`matmul_ex`] always uses `Auto` (the tuner's choice, or the
/// size rule with tuning off); the others are for tests and benchmarks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MatmulKernel {
    /// The tuned choice for this shape bucket (tuning it now if it is new).
    Auto,
    /// 64x64 tiles, 4x4 outputs per thread.
    Tile64,
    /// 128x128 tiles, 8x8 outputs per thread, in one of its compile-time forms.
    Tile128(Tile128),
    /// 64x64 tiles with K cut into this many splits (batch 1 only; see [`MATMUL_SPLITS`]).
    SplitK(u32),
    /// Cooperative matrices (tensor cores), 64x64 tiles, for f16 A and B (or one of them
    /// f32, scaled per tensor into f16) without scales,
    /// where the device has them ([`Capabilities::cooperative_matrix`](crate::gpu::Capabilities)).
    Coop,
    /// One thread per output, no tiling (slow; the cross-check).
    Reference,
}

/// The 128x128 tile's variants: each option is an override constant of its pipeline, and
/// none changes a tile's arithmetic or its order, so all of them give the same bits.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Tile128 {
    /// Unguarded vec4 global loads on the interior tiles, the guarded form on the edge
    /// strips (unscaled operands with 16-byte rows and K a multiple of the K-slice).
    pub vec4: bool,
    /// K-slices of [`TILE128_DEEP_BK`] instead of 8 (32 KiB of workgroup memory).
    pub k16: bool,
    /// Tiles visited in bands of [`MATMUL_GROUP_M`] tile rows (operands kept in L2).
    pub grouped: bool,
}

impl Tile128 {
    /// The plain form: guarded loads, K-slices of 8, row by row.
    pub const PLAIN: Tile128 = Tile128 { vec4: false, k16: false, grouped: false };

    /// Its K-slice depth.
    pub fn bk(self) -> usize {
        if self.k16 {
            TILE128_DEEP_BK
        } else {
            8
        }
    }

    /// Its pipeline constants beside the product's form (`VEC4` aside: the launch sets it
    /// on the interior tiles only).
    fn constants(self) -> impl Iterator<Item = (&'static str, f64)> {
        let group = self.grouped.then_some((MATMUL_OVERRIDES[7], MATMUL_GROUP_M as f64));
        let depth = self.k16.then_some((MATMUL_OVERRIDES[8], TILE128_DEEP_BK as f64));
        group.into_iter().chain(depth)
    }
}

/// The 128x128 tile's form for the [`MatmulKernel::TUNED`] table.
const fn t128(vec4: bool, k16: bool, grouped: bool) -> MatmulKernel {
    MatmulKernel::Tile128(Tile128 { vec4, k16, grouped })
}

impl MatmulKernel {
    /// The plain 128x128 tile ([`Tile128::PLAIN`]).
    pub const TILE128: MatmulKernel = MatmulKernel::Tile128(Tile128::PLAIN);

    /// Every variant the tuner may pick, in the order it tries them.
    pub const TUNED: [MatmulKernel; 12] = [
        t128(false, false, false),
        t128(true, false, false),
        t128(false, false, true),
        t128(true, false, true),
        t128(false, true, false),
        t128(true, true, false),
        t128(false, true, true),
        t128(true, true, true),
        MatmulKernel::Tile64,
        MatmulKernel::SplitK(MATMUL_SPLITS[0]),
        MatmulKernel::SplitK(MATMUL_SPLITS[1]),
        MatmulKernel::Coop,
    ];

    /// The name the tuning cache and the benchmark rows use: `tile128`, then `v4`, `k16`
    /// and `g8` for the options that are on.
    pub fn name(self) -> &'static str {
        match self {
            MatmulKernel::Auto => "auto",
            MatmulKernel::Tile64 => "tile64",
            MatmulKernel::Tile128(t) => match (t.vec4, t.k16, t.grouped) {
                (false, false, false) => "tile128",
                (true, false, false) => "tile128v4",
                (false, false, true) => "tile128g8",
                (true, false, true) => "tile128v4g8",
                (false, true, false) => "tile128k16",
                (true, true, false) => "tile128v4k16",
                (false, true, true) => "tile128k16g8",
                (true, true, true) => "tile128v4k16g8",
            },
            MatmulKernel::SplitK(4) => "splitk4",
            MatmulKernel::SplitK(16) => "splitk16",
            MatmulKernel::SplitK(_) => "splitk",
            MatmulKernel::Coop => "coop",
            MatmulKernel::Reference => "reference",
        }
    }

    /// The tuned variant of this name.
    pub fn from_name(name: &str) -> Option<MatmulKernel> {
        MatmulKernel::TUNED.into_iter().find(|k| k.name() == name)
    }

    /// Whether `gpu` can run this variant: the workgroup memory it declares (the 128x128
    /// tile's slices of 16 need 32 KiB) and, for [`MatmulKernel::Coop`], cooperative matrices
    /// or, emulated, shader f16 ([`Coop::on`]).
    pub fn runs_on(self, gpu: &Gpu) -> bool {
        match self {
            MatmulKernel::Tile128(t) => tile128_workgroup_bytes(t.bk()) <= gpu.limits().max_compute_workgroup_storage_size as usize,
            MatmulKernel::Coop => Coop::on(&gpu.capabilities()).is_some(),
            _ => true,
        }
    }
}

/// Run the GEMM described by `p` (no autograd). `sa`/`sb` have their operand's shape;
/// `relu` applies max(., 0) in the epilogue, after the bias. `dy`: a gradient one operand
/// may be (a view of), whose max |value| (the tensor-core kernel's scale for it) the caller
/// shares between its products.
#[allow(clippy::too_many_arguments)]
pub(super) fn launch(
    p: &Plan,
    a: &Tensor,
    sa: Option<&Tensor>,
    b: &Tensor,
    sb: Option<&Tensor>,
    bias: Option<&Tensor>,
    relu: bool,
    kernel: MatmulKernel,
    dy: Option<&AbsMax>,
) -> Result<Tensor> {
    let gpu = a.gpu();
    if p.k == 0 {
        return empty_product(gpu, p, bias, relu);
    }
    let c = Tensor::empty(gpu, &p.out_shape, DType::F32)?;
    if c.numel() == 0 {
        return Ok(c);
    }
    let form = Form::of(p, a, sa.is_some(), b, sb.is_some(), bias.is_some(), relu);
    let consts = form.constants();
    let params = Params::of(p);
    // Absent optional operands bind a buffer that is already bound read-only; the kernel
    // never reads them (the form's constants).
    // Bindings 7 and 8 (A and B as vec4s) are read only by the VEC4 form, which binds A and
    // B there; every other launch binds a 16-byte placeholder (a vec4 array binding must
    // hold one vec4, and A or B may be a single float).
    // Bindings 9 and 10 (f16 words) likewise hold A and B where they are f16, and binding 11
    // (C as vec4s) holds C in the VEC4 form.
    let placeholder = Tensor::empty(gpu, &[4], DType::F32)?;
    let half_a = if a.dtype() == DType::F16 { a } else { &placeholder };
    let half_b = if b.dtype() == DType::F16 { b } else { &placeholder };
    let mut buffers = [
        a.buffer(),
        sa.unwrap_or(a).buffer(),
        b.buffer(),
        sb.unwrap_or(b).buffer(),
        bias.unwrap_or(a).buffer(),
        c.buffer(),
        placeholder.buffer(),
        placeholder.buffer(),
        half_a.buffer(),
        half_b.buffer(),
        placeholder.buffer(),
    ];
    let kernel = match kernel {
        MatmulKernel::Auto => super::choice::choose(p, a, sa, b, sb, bias, relu)?,
        k => k,
    };
    let tile128 = match kernel {
        MatmulKernel::Tile128(t) => t,
        _ => Tile128::PLAIN,
    };
    let consts = consts.into_iter().chain(tile128.constants()).collect::<Vec<_>>();
    if !kernel.runs_on(gpu) {
        let have = gpu.limits().max_compute_workgroup_storage_size;
        return Err(Error::Other(format!("matmul: {} does not run on this device (cooperative matrices, or workgroup memory beyond its {have} bytes)", kernel.name())));
    }
    match kernel {
        MatmulKernel::Reference => gpu.dispatch(&K_REF, &consts, bytes_of(&params), &buffers, grid(gpu, p.batch * p.m * p.n, 64))?,
        MatmulKernel::SplitK(splits) => launch_split(p, form, params, buffers, &c, splits as usize)?,
        MatmulKernel::Coop => launch_coop(p, &form, params, &buffers, a, b, dy)?,
        MatmulKernel::Tile128(t) if t.vec4 => {
            if !vec4_applies(p, &form, &[a, b], t.bk()) {
                let bk = t.bk();
                return Err(Error::Other(format!("matmul: the vec4 form needs unscaled f32, 16-byte aligned operands with K a multiple of {bk} ({} x {} x {})", p.m, p.n, p.k)));
            }
            [buffers[6], buffers[7], buffers[10]] = [a.buffer(), b.buffer(), c.buffer()];
            launch_vec4(gpu, p, &consts, params, &buffers)?;
        }
        MatmulKernel::Tile128(_) => launch_tiles(gpu, &K_TILE128, 128, p, &consts, params, &buffers)?,
        _ => launch_tiles(gpu, &K_TILE64, 64, p, &consts, params, &buffers)?,
    }
    Ok(c)
}

impl Params {
    /// The parameter block of `p`, before the launch sets its grid offsets and split.
    fn of(p: &Plan) -> Params {
        Params {
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
        }
    }
}

/// A tile of `tile` x `tile` outputs per workgroup over (column tiles, row tiles, batch),
/// the grid split at the per-dimension workgroup limit.
fn launch_tiles(gpu: &Gpu, k: &Kernel, tile: usize, p: &Plan, consts: &[(&str, f64)], mut params: Params, buffers: &[&BufferRange; 11]) -> Result<()> {
    for (first, groups) in split_grid(gpu, [p.n.div_ceil(tile), p.m.div_ceil(tile), p.batch]) {
        [params.x0, params.y0, params.z0] = first;
        gpu.dispatch(k, consts, bytes_of(&params), buffers, groups)?;
    }
    Ok(())
}

/// The zeros (+ bias, ReLU) of a product over an empty inner dimension.
fn empty_product(gpu: &Gpu, p: &Plan, bias: Option<&Tensor>, relu: bool) -> Result<Tensor> {
    let _ng = crate::autograd::no_grad();
    let z = Tensor::zeros(gpu, &p.out_shape)?;
    let z = match bias {
        Some(bias) => crate::ops::elementwise::add(&z, bias)?,
        None => z,
    };
    if relu {
        crate::ops::elementwise::relu(&z)
    } else {
        Ok(z)
    }
}

/// The cooperative-matrix kernel over its 64x64 tiles (`buffers` as [`launch`] binds them).
fn launch_coop(p: &Plan, form: &Form, mut params: Params, buffers: &[&BufferRange; 11], a: &Tensor, b: &Tensor, dy: Option<&AbsMax>) -> Result<()> {
    let gpu = a.gpu();
    if !coop_applies(form) {
        return Err(Error::Other("matmul: the cooperative-matrix kernel needs f16 A and B, or one of them f32, without scales".into()));
    }
    let f32_a = a.dtype() == DType::F32;
    let f32_b = b.dtype() == DType::F32;
    let consts = [("TRANS_A", p.ta), ("TRANS_B", p.tb), ("BIAS", form.bias), ("RELU", form.relu), ("F32_A", f32_a), ("F32_B", f32_b)].map(|(k, v)| (k, v as u32 as f64));
    // the f32 operand's per-tensor scale for its f16 staging (coop_tile.wgsl)
    // (from `dy` where the f32 operand is its tensor: a backward's two products share it)
    let amax_of = |t: &Tensor| match dy {
        Some(d) if d.covers(t) => d.bits().cloned(),
        _ => crate::ops::elementwise::abs_max_bits(t),
    };
    let amax = match (f32_a, f32_b) {
        (true, _) => Some(amax_of(a)?),
        (_, true) => Some(amax_of(b)?),
        _ => None,
    };
    let amax_buf = amax.as_ref().map_or(buffers[5], |t| t.buffer());
    let cb = [buffers[0], buffers[0], buffers[2], buffers[2], buffers[4], buffers[5], amax_buf];
    // runs_on held: tensor cores, or their emulation
    let k = &K_COOP[(Coop::on(&gpu.capabilities()) == Some(Coop::Emulated)) as usize];
    for (first, groups) in split_grid(gpu, [p.n.div_ceil(64), p.m.div_ceil(64), p.batch]) {
        [params.x0, params.y0, params.z0] = first;
        gpu.dispatch(k, &consts, bytes_of(&params), &cb, groups)?;
    }
    Ok(())
}

/// Whether the cooperative-matrix kernel can run a product of this form: f16 A and B, or one
/// of them f32 (staged as f16 after a per-tensor scale: a gradient in a linear layer's
/// backward), no scales (bias and ReLU are its epilogue's).
pub(super) fn coop_applies(form: &Form) -> bool {
    (form.half_a || form.half_b) && !form.sa && !form.sb
}

/// Whether the 128x128 tile's VEC4 form at K-slices of `bk` can run `p`: unscaled f32
/// operands, K a multiple of the slice, every operand row (and so every batch matrix) a
/// multiple of 4 floats along its contiguous dim, bindings on 16 bytes.
pub(super) fn vec4_applies(p: &Plan, form: &Form, operands: &[&Tensor], bk: usize) -> bool {
    let rows_a = if p.ta { p.m } else { p.k };
    let rows_b = if p.tb { p.k } else { p.n };
    !form.sa && !form.sb && !form.half_a && !form.half_b && p.k % bk == 0 && rows_a % 4 == 0 && rows_b % 4 == 0 && operands.iter().all(|t| t.buffer().offset() % 16 == 0)
}

/// The 128x128 tile with the VEC4 form over the interior tiles (inside M and N) and the
/// guarded form over the right column strip and the bottom row strip; `guarded` are the
/// pipeline constants of the guarded form.
fn launch_vec4(gpu: &Gpu, p: &Plan, guarded: &[(&str, f64)], mut params: Params, buffers: &[&BufferRange; 11]) -> Result<()> {
    let (tiles_x, tiles_y) = (p.n.div_ceil(128), p.m.div_ceil(128));
    let (full_x, full_y) = (p.n / 128, p.m / 128);
    let mut vector = guarded.to_vec();
    vector.push((MATMUL_OVERRIDES[6], 1.0));
    // vector stores where every row of C starts on 16 bytes
    let store4 = p.n % 4 == 0 && buffers[5].offset() % 16 == 0;
    vector.push((MATMUL_OVERRIDES[11], store4 as u32 as f64));
    // (constants, first column tile, first row tile, columns, rows) of each region
    let regions = [
        (&vector[..], 0, 0, full_x, full_y),
        (guarded, full_x, 0, tiles_x - full_x, tiles_y), // right strip, every row
        (guarded, 0, full_y, full_x, tiles_y - full_y),  // bottom strip, left of it
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
pub(super) fn split_shape(k: usize, splits: usize) -> (usize, usize) {
    let slices = k.div_ceil(TILE64_BK);
    let chunk = slices.div_ceil(splits.max(1));
    (chunk, slices.div_ceil(chunk))
}

/// Split-K on the 64x64 tile: partial products of K-ranges into `[splits, M, N]`, then the
/// fixed-order reduction (+ bias) into `c`.
fn launch_split(p: &Plan, form: Form, mut params: Params, buffers: [&BufferRange; 11], c: &Tensor, splits: usize) -> Result<()> {
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
    let rb = [pr, pr, pr, pr, buffers[4], c.buffer(), pr, pr, pr, pr, buffers[10]];
    gpu.dispatch(&K_SPLITK_REDUCE, &reduce_consts, bytes_of(&reduce), &rb, grid(gpu, p.m * p.n, 64))
}
