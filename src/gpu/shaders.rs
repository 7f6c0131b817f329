//! Every WGSL module the engine compiles, named by a typed key. [`Shader::source`] is the
//! one place a key meets its text, so one name can never map to two sources; the kernel
//! cache keys modules and pipelines by [`Shader`].
//!
//! Each module is `shaders/common.wgsl` (helpers every kernel family shares: the
//! one-thread-per-element workgroup size and the folded-grid index) followed by the
//! family's own file, with the family's parameter fragment in between where it has one
//! (`matmul_params.wgsl`, `conv_params.wgsl`, `attention_params.wgsl`; the tensor-core modules
//! also take `coop_tile.wgsl` and their accumulators; matmul and the convolution's `g` tiles
//! the f32 GEMM core, `gemm_core.wgsl`). Two families are instantiated several times: the `const` block between
//! `@variant-begin` and `@variant-end` is replaced per instantiation, in
//! `shaders/attention.wgsl` by the tile sizes of [`AttentionTiles`] per padded head dim (the
//! file itself is the 128 instantiation), in `shaders/conv.wgsl` by the workgroup tile of a
//! [`ConvTile`] and that tile's core fragments (the file's block is the 128 x 64 one).
use crate::error::{Error, Result};
use std::sync::OnceLock;

/// Files of `shaders/` that are fragments of modules rather than modules: `common.wgsl`
/// (every module starts with it), `matmul_params.wgsl` (the matmul modules' parameter block
/// and batch decomposition), `conv_params.wgsl` (the convolution modules' parameter block
/// and the forward's epilogue) and `attention_params.wgsl` (the attention modules' parameters,
/// mask and row statistics), `coop_tile.wgsl` (the tensor-core modules' tile) and its two
/// accumulators, `coop_mma.wgsl` (cooperative matrices) and `coop_mma_emulated.wgsl`, and the
/// convolution tiles' cores: `conv_strided.wgsl` (the convolution's own), `gemm_core.wgsl` (the
/// shared f32 GEMM core) and `conv_core.wgsl` (the convolution's GEMMs on it).
pub const FRAGMENTS: [&str; 10] =
    ["common", "matmul_params", "conv_params", "attention_params", "coop_tile", "coop_mma", "coop_mma_emulated", "conv_strided", "gemm_core", "conv_core"];

/// How a tensor-core module multiplies: on cooperative matrices, or in plain f32 arithmetic
/// with the same staging, indexing and epilogue (for adapters with shader f16 but no
/// cooperative matrices: slow, never offered to the tuner, there so that the tensor-core
/// kernels run, and are tested, on lavapipe).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Coop {
    /// `coop_mma.wgsl`: cooperative matrices.
    Hardware,
    /// `coop_mma_emulated.wgsl`: f32 arithmetic.
    Emulated,
}

impl Coop {
    /// The form a device runs: cooperative matrices where it has them (with f16 and
    /// subgroups of 32), else the emulation where it has shader f16, else none.
    pub fn on(caps: &crate::gpu::Capabilities) -> Option<Coop> {
        if caps.cooperative_matrix {
            Some(Coop::Hardware)
        } else if caps.f16 {
            Some(Coop::Emulated)
        } else {
            None
        }
    }
}

/// Threads per workgroup of the one-thread-per-element kernels (`WG` in
/// `shaders/common.wgsl`; the interface test checks that the two agree).
pub const WG: u32 = 256;

const COMMON: &str = include_str!("../../shaders/common.wgsl");

macro_rules! with_common {
    ($file:literal) => {
        concat!(include_str!("../../shaders/common.wgsl"), include_str!(concat!("../../shaders/", $file)))
    };
}

/// Padded head dim of an attention instantiation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum HeadDim {
    /// Head dim up to 32.
    D32,
    /// Head dim 33 to 64.
    D64,
    /// Head dim 65 to 128.
    D128,
}

/// A WGSL module: one kernel family (`shaders/<name>.wgsl`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Shader {
    /// `aim.wgsl`: AIM/PAM's selection of the lowest-scored elements (GPU radix select) and the
    /// auxiliary blocks' weight scales.
    Aim,
    /// `attention.wgsl`, instantiated per padded head dim.
    Attention(HeadDim),
    /// `attention_coop.wgsl`: attention's forward on cooperative matrices (tensor cores) for
    /// f16 q, k and v, or its emulation; compiled only where the adapter has them.
    AttentionCoop(Coop),
    /// `boost.wgsl`: AUG's fused residual-boosting loss and its gradient.
    Boost,
    /// `canary.wgsl`: checks pool slack in the canary test mode.
    Canary,
    /// `copy.wgsl`: word copies between two ranges of one segment (where a buffer-to-buffer
    /// copy is not allowed).
    Copy,
    /// `conv.wgsl`: 2-D convolution as implicit GEMM, and its gradients, instantiated per
    /// workgroup tile.
    Conv(ConvTile),
    /// `conv_coop.wgsl`: the convolution's forward on cooperative matrices (tensor cores) for
    /// f16 x and w, or its emulation; compiled only where the adapter has them (`enable`
    /// directives in front).
    ConvCoop(Coop),
    /// `elementwise.wgsl`: unary maps, broadcasting binary ops, their backward rules, f32/f16
    /// casts.
    Elementwise,
    /// `embed.wgsl`: embedding lookup, patchify, and their gradients.
    Embed,
    /// `matmul.wgsl`: batched, tiled matrix products (optional transposes, scales, bias).
    Matmul,
    /// `matmul_coop.wgsl`: the product of f16 matrices on cooperative matrices (tensor
    /// cores), or its emulation; compiled only where the adapter has them (`enable`
    /// directives in front).
    MatmulCoop(Coop),
    /// `norm.wgsl`: batch and layer normalisation, and their gradients.
    Norm,
    /// `optim.wgsl`: fused SGD and Adam updates (and the AIM/PAM optimisation-state score).
    Optim,
    /// `pool.wgsl`: max pooling and adaptive average pooling, and their gradients.
    Pool,
    /// `random.wgsl`: counter-based random numbers (Philox): uniform, normal, dropout.
    Random,
    /// `reduce.wgsl`: reductions over the middle axis of `[outer, r, inner]`.
    Reduce,
    /// `shape.wgsl`: slab copies (concat, split, narrow), permute, transpose, row gather and its
    /// scatter-add.
    Shape,
    /// `softmax.wgsl`: row-wise softmax, log-softmax, fused cross-entropy, true-class probability,
    /// argmax.
    Softmax,
}

impl Shader {
    /// Every module, every attention instantiation included.
    pub const ALL: [Shader; 31] = [
        Shader::Aim,
        Shader::Attention(HeadDim::D32),
        Shader::Attention(HeadDim::D64),
        Shader::Attention(HeadDim::D128),
        Shader::AttentionCoop(Coop::Hardware),
        Shader::AttentionCoop(Coop::Emulated),
        Shader::Boost,
        Shader::Canary,
        Shader::Copy,
        Shader::Conv(ConvTile::T128x64),
        Shader::Conv(ConvTile::T128x32),
        Shader::Conv(ConvTile::T128x16),
        Shader::Conv(ConvTile::T32x16),
        Shader::Conv(ConvTile::G128x128),
        Shader::Conv(ConvTile::G128x64),
        Shader::Conv(ConvTile::G128x32),
        Shader::Conv(ConvTile::G64x16),
        Shader::ConvCoop(Coop::Hardware),
        Shader::ConvCoop(Coop::Emulated),
        Shader::Elementwise,
        Shader::Embed,
        Shader::Matmul,
        Shader::MatmulCoop(Coop::Hardware),
        Shader::MatmulCoop(Coop::Emulated),
        Shader::Norm,
        Shader::Optim,
        Shader::Pool,
        Shader::Random,
        Shader::Reduce,
        Shader::Shape,
        Shader::Softmax,
    ];

    /// The module's label (its file name without extension; attention with its head dim).
    pub fn name(self) -> &'static str {
        match self {
            Shader::Aim => "aim",
            Shader::Attention(HeadDim::D32) => "attention_d32",
            Shader::Attention(HeadDim::D64) => "attention_d64",
            Shader::Attention(HeadDim::D128) => "attention_d128",
            Shader::AttentionCoop(Coop::Hardware) => "attention_coop",
            Shader::AttentionCoop(Coop::Emulated) => "attention_coop_emulated",
            Shader::Boost => "boost",
            Shader::Canary => "canary",
            Shader::Conv(t) => t.module_name(),
            Shader::ConvCoop(Coop::Hardware) => "conv_coop",
            Shader::ConvCoop(Coop::Emulated) => "conv_coop_emulated",
            Shader::Copy => "copy",
            Shader::Elementwise => "elementwise",
            Shader::Embed => "embed",
            Shader::Matmul => "matmul",
            Shader::MatmulCoop(Coop::Hardware) => "matmul_coop",
            Shader::MatmulCoop(Coop::Emulated) => "matmul_coop_emulated",
            Shader::Norm => "norm",
            Shader::Optim => "optim",
            Shader::Pool => "pool",
            Shader::Random => "random",
            Shader::Reduce => "reduce",
            Shader::Shape => "shape",
            Shader::Softmax => "softmax",
        }
    }

    /// The WGSL text compiled for this module (common helpers included).
    pub fn source(self) -> Result<&'static str> {
        Ok(match self {
            Shader::Aim => with_common!("aim.wgsl"),
            Shader::Attention(d) => return attention_source(d),
            Shader::Boost => with_common!("boost.wgsl"),
            Shader::Canary => with_common!("canary.wgsl"),
            Shader::Conv(t) => return conv_source(t),
            Shader::AttentionCoop(_) | Shader::ConvCoop(_) | Shader::MatmulCoop(_) => coop_source(self),
            Shader::Copy => with_common!("copy.wgsl"),
            Shader::Elementwise => with_common!("elementwise.wgsl"),
            Shader::Embed => with_common!("embed.wgsl"),
            Shader::Matmul => matmul_source(),
            Shader::Norm => with_common!("norm.wgsl"),
            Shader::Optim => with_common!("optim.wgsl"),
            Shader::Pool => with_common!("pool.wgsl"),
            Shader::Random => with_common!("random.wgsl"),
            Shader::Reduce => with_common!("reduce.wgsl"),
            Shader::Shape => with_common!("shape.wgsl"),
            Shader::Softmax => with_common!("softmax.wgsl"),
        })
    }
}

/// A tensor-core module: the `enable` directives (which must open the module, before
/// common.wgsl's declarations), common.wgsl, the accumulators of its form, the module's
/// parameter fragment, the shared tile, and the module's own file.
fn coop_source(s: Shader) -> &'static str {
    // six fixed texts, each built once ('static for the kernel cache)
    static SOURCES: [OnceLock<String>; 6] = [const { OnceLock::new() }; 6];
    let (family, c, params, body) = match s {
        Shader::ConvCoop(c) => (0, c, include_str!("../../shaders/conv_params.wgsl"), include_str!("../../shaders/conv_coop.wgsl")),
        Shader::MatmulCoop(c) => (1, c, include_str!("../../shaders/matmul_params.wgsl"), include_str!("../../shaders/matmul_coop.wgsl")),
        Shader::AttentionCoop(c) => (2, c, include_str!("../../shaders/attention_params.wgsl"), include_str!("../../shaders/attention_coop.wgsl")),
        _ => unreachable!("not a tensor-core module: {s:?}"),
    };
    let (enable, mma) = match c {
        Coop::Hardware => ("enable f16;\nenable wgpu_cooperative_matrix;\n", include_str!("../../shaders/coop_mma.wgsl")),
        Coop::Emulated => ("enable f16;\n", include_str!("../../shaders/coop_mma_emulated.wgsl")),
    };
    let tile = include_str!("../../shaders/coop_tile.wgsl");
    SOURCES[2 * family + (c == Coop::Emulated) as usize].get_or_init(|| format!("{enable}{COMMON}{mma}{params}{tile}{body}"))
}

/// Tile sizes of one attention instantiation (the WGSL `@variant` block). Chosen so every
/// entry point needs at most ~29 KiB of workgroup memory (fits the common 32 KiB limit).
#[derive(Clone, Copy, Debug)]
pub struct AttentionTiles {
    /// Which instantiation these tiles belong to.
    pub head_dim: HeadDim,
    /// The padded head dim as a number (32, 64 or 128).
    pub dh: u32,
    /// Forward pass: query rows per workgroup.
    pub f_bq: u32,
    /// Forward pass: keys per tile.
    pub f_bk: u32,
    /// dq pass: query rows per workgroup.
    pub q_bq: u32,
    /// dq pass: keys per tile.
    pub q_bk: u32,
    /// dk/dv pass: keys per workgroup.
    pub kv_bk: u32,
    /// dk/dv pass: query rows per tile.
    pub kv_bq: u32,
}

/// The instantiations, smallest head dim first.
pub const ATTENTION_TILES: [AttentionTiles; 3] = [
    AttentionTiles { head_dim: HeadDim::D32, dh: 32, f_bq: 32, f_bk: 64, q_bq: 32, q_bk: 32, kv_bk: 32, kv_bq: 32 },
    AttentionTiles { head_dim: HeadDim::D64, dh: 64, f_bq: 32, f_bk: 32, q_bq: 32, q_bk: 32, kv_bk: 32, kv_bq: 16 },
    AttentionTiles { head_dim: HeadDim::D128, dh: 128, f_bq: 32, f_bk: 16, q_bq: 16, q_bk: 16, kv_bk: 16, kv_bq: 8 },
];

impl AttentionTiles {
    /// The smallest instantiation whose padded head dim holds `dh`.
    pub fn for_head_dim(dh: usize) -> Option<AttentionTiles> {
        ATTENTION_TILES.iter().find(|t| dh <= t.dh as usize).copied()
    }

    /// The module of this instantiation.
    pub fn shader(&self) -> Shader {
        Shader::Attention(self.head_dim)
    }

    /// The const block substituted into the template.
    pub fn header(&self) -> String {
        format!(
            "const DH: u32 = {}u;\nconst F_BQ: u32 = {}u;\nconst F_BK: u32 = {}u;\nconst Q_BQ: u32 = {}u;\n\
             const Q_BK: u32 = {}u;\nconst KV_BK: u32 = {}u;\nconst KV_BQ: u32 = {}u;\n",
            self.dh, self.f_bq, self.f_bk, self.q_bq, self.q_bk, self.kv_bk, self.kv_bq
        )
    }

    /// Workgroup memory (bytes) of each tiled entry point: fwd, dq, dkv.
    pub fn workgroup_bytes(&self) -> [u32; 3] {
        let ds = self.dh + 1;
        let fwd = self.f_bq * ds + self.f_bk * ds + self.f_bq * (self.f_bk + 1);
        let dq = 2 * self.q_bq * ds + self.q_bk * ds + self.q_bq * (self.q_bk + 1);
        let dkv = 2 * self.kv_bk * ds + 2 * self.kv_bq * ds + 2 * self.kv_bk * (self.kv_bq + 1) + 2 * self.kv_bq;
        [fwd * 4, dq * 4, dkv * 4]
    }
}

/// Workgroup tile of a convolution GEMM: one instantiation of `shaders/conv.wgsl`, on one of
/// two cores ([`TileShape`]). The wide tiles suit large problems; the narrower ones GEMMs with
/// few output (or input) channels, or the weight gradient of a layer with a small C·KH·KW,
/// where a wide tile would mostly compute padding (`ops::conv` chooses per GEMM). Names are
/// M x N: pixels (dW: C·KH·KW) by channels.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ConvTile {
    /// 128 x 64, the convolution's own core: 256 threads (32 x 8), 4 x 8 outputs each.
    T128x64,
    /// 128 x 32: 256 threads (32 x 8), 4 x 4 outputs each.
    T128x32,
    /// 128 x 16: 128 threads (32 x 4), 4 x 4 outputs each.
    T128x16,
    /// 32 x 16: 32 threads (8 x 4), 4 x 4 outputs each.
    T32x16,
    /// 128 x 128 on the shared GEMM core: 256 threads, 8 x 8 outputs each, K-slices of 8.
    G128x128,
    /// 128 x 64 on the shared core: 256 threads, 8 pixels x 4 channels each.
    G128x64,
    /// 128 x 32 on the shared core: 128 threads, 8 x 4 each.
    G128x32,
    /// 64 x 16 on the shared core: 64 threads, 4 x 4 each.
    G64x16,
}

/// How a [`ConvTile`] multiplies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TileShape {
    /// `conv_strided.wgsl`: TX x TY threads, each 4 rows TX apart and TN columns TY apart.
    Strided {
        /// threads along M
        tx: u32,
        /// threads along N
        ty: u32,
        /// outputs per thread along N
        tn: u32,
    },
    /// `gemm_core.wgsl` through `conv_core.wgsl`: the core's rows are the GEMM's N, its
    /// columns the GEMM's M.
    Core {
        /// M (pixels) per tile: the core's columns
        m: u32,
        /// N (channels) per tile: the core's rows
        n: u32,
        /// groups of 4 consecutive M per thread
        gm: u32,
        /// groups of 4 consecutive N per thread
        gn: u32,
        /// K-slice depth
        bk: u32,
    },
}

impl ConvTile {
    /// Every instantiation: the convolution's own tiles widest first, then the core's.
    pub const ALL: [ConvTile; 8] = [
        ConvTile::T128x64,
        ConvTile::T128x32,
        ConvTile::T128x16,
        ConvTile::T32x16,
        ConvTile::G128x128,
        ConvTile::G128x64,
        ConvTile::G128x32,
        ConvTile::G64x16,
    ];

    /// The tiles of the size rule (`ops::tile_for`, tuning off): the convolution's own, measured
    /// on GPUs. The shared core's tiles are offered to the tuner, which times them on the
    /// device, until a GPU run shows where they belong in the rule.
    pub const RULE: [ConvTile; 4] = [ConvTile::T128x64, ConvTile::T128x32, ConvTile::T128x16, ConvTile::T32x16];

    /// How this tile multiplies, and its sizes.
    pub const fn shape(self) -> TileShape {
        use TileShape::{Core, Strided};
        match self {
            ConvTile::T128x64 => Strided { tx: 32, ty: 8, tn: 8 },
            ConvTile::T128x32 => Strided { tx: 32, ty: 8, tn: 4 },
            ConvTile::T128x16 => Strided { tx: 32, ty: 4, tn: 4 },
            ConvTile::T32x16 => Strided { tx: 8, ty: 4, tn: 4 },
            ConvTile::G128x128 => Core { m: 128, n: 128, gm: 2, gn: 2, bk: 8 },
            ConvTile::G128x64 => Core { m: 128, n: 64, gm: 2, gn: 1, bk: 16 },
            ConvTile::G128x32 => Core { m: 128, n: 32, gm: 2, gn: 1, bk: 16 },
            ConvTile::G64x16 => Core { m: 64, n: 16, gm: 1, gn: 1, bk: 16 },
        }
    }

    /// Threads per workgroup.
    pub const fn workgroup_size(self) -> u32 {
        match self.shape() {
            TileShape::Strided { tx, ty, .. } => tx * ty,
            TileShape::Core { m, n, gm, gn, .. } => (m / (4 * gm)) * (n / (4 * gn)),
        }
    }

    /// K-slice depth.
    pub const fn k_slice(self) -> u32 {
        match self.shape() {
            TileShape::Strided { .. } => 16,
            TileShape::Core { bk, .. } => bk,
        }
    }

    /// Rows (M) of the tile.
    pub const fn rows(self) -> usize {
        (match self.shape() {
            TileShape::Strided { tx, .. } => 4 * tx,
            TileShape::Core { m, .. } => m,
        }) as usize
    }

    /// Columns (N) of the tile.
    pub const fn cols(self) -> usize {
        (match self.shape() {
            TileShape::Strided { ty, tn, .. } => ty * tn,
            TileShape::Core { n, .. } => n,
        }) as usize
    }

    /// The tile as `ROWSxCOLS`, `g` in front for the shared core's (benchmark rows, the
    /// tuning cache).
    pub fn name(self) -> &'static str {
        match self {
            ConvTile::T128x64 => "128x64",
            ConvTile::T128x32 => "128x32",
            ConvTile::T128x16 => "128x16",
            ConvTile::T32x16 => "32x16",
            ConvTile::G128x128 => "g128x128",
            ConvTile::G128x64 => "g128x64",
            ConvTile::G128x32 => "g128x32",
            ConvTile::G64x16 => "g64x16",
        }
    }

    /// The name of the tile's interior form (`ops::ConvKernel::Interior`): its name and `i`.
    pub fn interior_name(self) -> &'static str {
        match self {
            ConvTile::T128x64 => "128x64i",
            ConvTile::T128x32 => "128x32i",
            ConvTile::T128x16 => "128x16i",
            ConvTile::T32x16 => "32x16i",
            ConvTile::G128x128 => "g128x128i",
            ConvTile::G128x64 => "g128x64i",
            ConvTile::G128x32 => "g128x32i",
            ConvTile::G64x16 => "g64x16i",
        }
    }

    /// The tile named `name` ([`ConvTile::name`]).
    pub fn from_name(name: &str) -> Option<ConvTile> {
        ConvTile::ALL.into_iter().find(|t| t.name() == name)
    }

    fn module_name(self) -> &'static str {
        match self {
            ConvTile::T128x64 => "conv_128x64",
            ConvTile::T128x32 => "conv_128x32",
            ConvTile::T128x16 => "conv_128x16",
            ConvTile::T32x16 => "conv_32x16",
            ConvTile::G128x128 => "conv_g128x128",
            ConvTile::G128x64 => "conv_g128x64",
            ConvTile::G128x32 => "conv_g128x32",
            ConvTile::G64x16 => "conv_g64x16",
        }
    }

    /// The const block substituted into the template.
    pub fn header(self) -> String {
        match self.shape() {
            TileShape::Strided { tx, ty, tn } => format!("const TX: u32 = {tx}u;\nconst TY: u32 = {ty}u;\nconst TN: u32 = {tn}u;\n"),
            TileShape::Core { m, n, gm, gn, bk } => format!(
                "const CORE_ROWS: u32 = {n}u;\nconst CORE_COLS: u32 = {m}u;\nconst CORE_GR: u32 = {gn}u;\nconst CORE_GC: u32 = {gm}u;\nconst CORE_BK: u32 = {bk}u;\n"
            ),
        }
    }

    /// The tile's fragments, after the const block: its core and the interface conv.wgsl
    /// uses.
    fn fragments(self) -> &'static str {
        match self.shape() {
            TileShape::Strided { .. } => include_str!("../../shaders/conv_strided.wgsl"),
            TileShape::Core { .. } => concat!(include_str!("../../shaders/gemm_core.wgsl"), include_str!("../../shaders/conv_core.wgsl")),
        }
    }

    /// Workgroup memory (bytes) of the tile's GEMMs: both buffers of both tiles and the three
    /// K decode tables.
    pub const fn workgroup_bytes(self) -> u32 {
        let (m, n, bk) = (self.rows() as u32, self.cols() as u32, self.k_slice());
        let tiles = match self.shape() {
            TileShape::Strided { .. } => 2 * bk * (m + 1 + n + 1) * 4,
            TileShape::Core { .. } => 2 * bk * (m + n) * 4,
        };
        tiles + 3 * bk * 16
    }

    /// Whether the kernels' staging works out for this tile (`shaders/conv.wgsl`): NT threads a
    /// multiple of BM (a whole number of K rows per pass of the M-fast loaders) and of the
    /// K-slice, each thread staging a whole number of values of either tile, a thread for every
    /// column (the batch-norm statistics reduce a column per thread), at most 256 threads and
    /// 32 KiB of workgroup memory. The convolution's own core also needs TY a multiple of 4
    /// and a slab of TY columns within the A buffers (TY·BM <= 2·16·(BM + 1): the f16 store
    /// of y); the shared one rows of vec4s it can swizzle and room for the statistics
    /// epilogue's scratch (BN·LANES <= 2·BK·BM).
    pub fn is_consistent(self) -> bool {
        let (nt, bm, bn, bk) = (self.workgroup_size(), self.rows() as u32, self.cols() as u32, self.k_slice());
        let staging = nt % bm == 0 && bk % (nt / bm) == 0 && nt % bk == 0 && (bk * bn) % nt == 0 && (bk * bm) % nt == 0;
        let common = staging && nt >= bn && nt <= 256 && self.workgroup_bytes() <= 32 * 1024;
        let swizzles = |v: u32| v % 8 == 0 || v.is_power_of_two();
        common
            && match self.shape() {
                TileShape::Strided { tx, ty, tn } => ty % 4 == 0 && tx >= tn && ty * bm <= 32 * (bm + 1),
                TileShape::Core { m, n, gm, gn, .. } => {
                    m % (4 * gm) == 0 && n % (4 * gn) == 0 && swizzles(m / 4) && swizzles(n / 4) && n * (m / (4 * gm)) <= 2 * bk * m
                }
            }
    }
}

/// `template` with its `@variant-begin` / `@variant-end` block replaced by `header`, after
/// the common helpers.
fn instantiate(template: &str, file: &str, header: &str) -> std::result::Result<String, String> {
    let (begin, end) = ("// @variant-begin", "// @variant-end");
    match (template.find(begin), template.find(end)) {
        (Some(a), Some(b)) if a < b => Ok(format!("{COMMON}{}{}\n{}{}", &template[..a], begin, header, &template[b..])),
        _ => Err(format!("shaders/{file} lacks its @variant-begin/@variant-end block")),
    }
}

/// WGSL of an attention instantiation (built once; `'static` for the kernel cache).
fn attention_source(d: HeadDim) -> Result<&'static str> {
    static SOURCES: [OnceLock<std::result::Result<String, String>>; 3] = [OnceLock::new(), OnceLock::new(), OnceLock::new()];
    let i = ATTENTION_TILES.iter().position(|t| t.head_dim == d).unwrap_or(0);
    let template = concat!(include_str!("../../shaders/attention_params.wgsl"), include_str!("../../shaders/attention.wgsl"));
    let src = SOURCES[i].get_or_init(|| instantiate(template, "attention.wgsl", &ATTENTION_TILES[i].header()));
    src.as_deref().map_err(|e| Error::Other(e.clone()))
}

/// WGSL of the matmul module: the file, then the shared GEMM core twice, as itself (the
/// 128 x 128 tile) and renamed `c64_` / `C64_` (the 64 x 64 tile); each tile's constants are
/// in matmul.wgsl. The core comes after the file because its workgroup arrays are sized by
/// the file's override `CORE_BK`, and naga 30 translates overrides only in declaration order.
fn matmul_source() -> &'static str {
    static SOURCE: OnceLock<String> = OnceLock::new();
    SOURCE.get_or_init(|| {
        let core = include_str!("../../shaders/gemm_core.wgsl");
        let core64 = core.replace("core_", "c64_").replace("CORE_", "C64_");
        format!("{}{}{core}{core64}", with_common!("matmul_params.wgsl"), include_str!("../../shaders/matmul.wgsl"))
    })
}

/// WGSL of a convolution instantiation (built once; `'static` for the kernel cache).
fn conv_source(t: ConvTile) -> Result<&'static str> {
    static SOURCES: [OnceLock<std::result::Result<String, String>>; ConvTile::ALL.len()] = [const { OnceLock::new() }; ConvTile::ALL.len()];
    let i = ConvTile::ALL.iter().position(|&x| x == t).unwrap_or(0);
    let template = concat!(include_str!("../../shaders/conv_params.wgsl"), include_str!("../../shaders/conv.wgsl"));
    let src = SOURCES[i].get_or_init(|| instantiate(template, "conv.wgsl", &format!("{}{}", t.header(), t.fragments())));
    src.as_deref().map_err(|e| Error::Other(e.clone()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The template's own block must be the DH = 128 instantiation, and every substituted
    /// source must keep the same structure.
    #[test]
    fn attention_template_is_the_128_instantiation() {
        let template = include_str!("../../shaders/attention.wgsl");
        let a = template.find("// @variant-begin").unwrap();
        let b = template.find("// @variant-end").unwrap();
        let block: String = template[a..b]
            .lines()
            .filter(|l| l.starts_with("const "))
            .map(|l| l.split("//").next().unwrap().trim().to_string() + "\n")
            .collect();
        assert_eq!(block, ATTENTION_TILES[2].header());
        for t in ATTENTION_TILES {
            let s = t.shader().source().unwrap();
            assert!(s.starts_with(COMMON));
            assert!(s.contains(&format!("const DH: u32 = {}u;", t.dh)));
            assert!(t.workgroup_bytes().iter().all(|&b| b <= 32 * 1024), "{t:?}");
        }
    }

    /// The conv template's own block must be the 128 x 64 instantiation, and every tile must
    /// satisfy the staging constraints the kernels rely on.
    #[test]
    fn conv_template_is_the_128x64_instantiation() {
        let template = include_str!("../../shaders/conv.wgsl");
        let a = template.find("// @variant-begin").unwrap();
        let b = template.find("// @variant-end").unwrap();
        let block: String = template[a..b]
            .lines()
            .filter(|l| l.starts_with("const "))
            .map(|l| l.split("//").next().unwrap().trim().to_string() + "\n")
            .collect();
        assert_eq!(block, ConvTile::T128x64.header());
        for t in ConvTile::ALL {
            assert!(t.is_consistent(), "{t:?}");
            assert_eq!(ConvTile::from_name(t.name()), Some(t));
            let core = if matches!(t.shape(), TileShape::Core { .. }) { "g" } else { "" };
            assert_eq!(t.name(), format!("{core}{}x{}", t.rows(), t.cols()));
            let s = Shader::Conv(t).source().unwrap();
            assert!(s.starts_with(COMMON));
            assert!(s.contains(&t.header()));
        }
    }
}
