//! The kernels a convolution runs on: the tiles of `shaders/conv.wgsl` (f32 arithmetic, f16
//! operands widened as loaded), and the cooperative-matrix kernels of
//! `shaders/conv_coop.wgsl` (tensor cores, or their f32 emulation where the adapter has only
//! shader f16), with their bindings; [`ConvKernel`] names the choice of one GEMM.
use super::Params;
use crate::gpu::{Access, ConvTile, Coop, Kernel, Shader};

const R: Access = Access::Read;
const RW: Access = Access::ReadWrite;
/// The entry points of one tile's instantiation (the split-K reduction and the bias
/// gradient do not depend on the tile, but each instantiation has them).
#[derive(Clone, Copy)]
pub(super) struct Tiled {
    pub(super) fwd: Kernel,
    pub(super) fwd_scaled: Kernel,
    pub(super) dx: Kernel,
    pub(super) dx_scaled: Kernel,
    pub(super) dw: Kernel,
    pub(super) dw_scaled: Kernel,
    pub(super) dw_reduce: Kernel,
    pub(super) dbias: Kernel,
}

/// The forward's: x, w, bias, w_scale, y, then the epilogue's batch-norm statistics, weight
/// and bias and the residual ([`ConvEpilogue`]), and batch norm's partial statistics of y
/// ([`conv2d_bn_partials`]), then x and w again as packed f16 words (f16 operands), y
/// as f16 words (an f16 output), y as vec4s (the vec4 store of `store_y4`), and w as vec4s
/// (the interior form's loads).
pub(super) const FWD_BINDINGS: &[Access] = &[R, R, R, R, RW, R, R, R, R, RW, R, R, RW, RW, R];
/// dX's: dy, w, w_scale, dx, w again as f16 words and dx again as vec4s; dW's: x, dy,
/// w_scale, the partials (or dW), x again as f16 words and the partials again as vec4s (the
/// vec4 stores of the `g` tiles).
const GRAD_BINDINGS: &[Access] = &[R, R, R, RW, R, RW];

const fn tiled(t: ConvTile) -> Tiled {
    let s = Shader::Conv(t);
    Tiled {
        fwd: Kernel::new(s, "conv_fwd", FWD_BINDINGS, &Params::LAYOUT),
        fwd_scaled: Kernel::new(s, "conv_fwd_scaled", FWD_BINDINGS, &Params::LAYOUT),
        dx: Kernel::new(s, "conv_dx", GRAD_BINDINGS, &Params::LAYOUT),
        dx_scaled: Kernel::new(s, "conv_dx_scaled", GRAD_BINDINGS, &Params::LAYOUT),
        dw: Kernel::new(s, "conv_dw", GRAD_BINDINGS, &Params::LAYOUT),
        dw_scaled: Kernel::new(s, "conv_dw_scaled", GRAD_BINDINGS, &Params::LAYOUT),
        dw_reduce: Kernel::new(s, "conv_dw_reduce", &[R, R, RW], &Params::LAYOUT),
        dbias: Kernel::new(s, "conv_dbias", &[R, RW], &Params::LAYOUT),
    }
}

/// The kernels on cooperative matrices (`shaders/conv_coop.wgsl`), in one form.
#[derive(Clone, Copy)]
pub(super) struct CoopKernels {
    /// the forward's bindings
    pub(super) fwd: Kernel,
    /// dy, w (f16), max |dy|, dx
    pub(super) dx: Kernel,
    /// x (f16), dy, max |dy|, the partials (or dW)
    pub(super) dw: Kernel,
}

const fn coop_kernels(c: Coop) -> CoopKernels {
    let s = Shader::ConvCoop(c);
    CoopKernels {
        fwd: Kernel::new(s, "conv_fwd_coop", FWD_BINDINGS, &Params::LAYOUT),
        dx: Kernel::new(s, "conv_dx_coop", &[R, R, R, RW], &Params::LAYOUT),
        dw: Kernel::new(s, "conv_dw_coop", &[R, R, R, RW], &Params::LAYOUT),
    }
}

/// On tensor cores, and emulated (`gpu::Coop`).
const COOP: [CoopKernels; 2] = [coop_kernels(Coop::Hardware), coop_kernels(Coop::Emulated)];

/// The cooperative-matrix kernels `gpu` runs (tensor cores, or their emulation), if any.
pub(super) fn coop_on(gpu: &crate::Gpu) -> Option<&'static CoopKernels> {
    Coop::on(&gpu.capabilities()).map(|c| &COOP[(c == Coop::Emulated) as usize])
}

/// The kernel a convolution GEMM runs on: a workgroup tile of the f32-arithmetic kernels, or
/// cooperative matrices (tensor cores: 64 x 64 tiles, on an adapter that has them; for the
/// forward f16 x and w, for dX f16 w, for dW f16 x, without a weight scale; dy enters them
/// as f16 after a per-tensor power-of-two scale).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConvKernel {
    /// `shaders/conv.wgsl` on this tile, guarded everywhere.
    Tile(ConvTile),
    /// The same tile with its interior form (`INTERIOR` in `shaders/conv.wgsl`) on the
    /// workgroups inside M and N, where the GEMM's K-slices are all whole: no range tests,
    /// and the forward's f32 weights loaded as vec4s; the guarded form on the edge tiles.
    /// dX has an interior only at stride 1 (one phase). The same bits as [`ConvKernel::Tile`].
    Interior(ConvTile),
    /// `shaders/conv_coop.wgsl`.
    Coop,
}

impl ConvKernel {
    /// The `shaders/conv.wgsl` tile this kernel runs on (None: cooperative matrices).
    pub fn tile(self) -> Option<ConvTile> {
        match self {
            ConvKernel::Tile(t) | ConvKernel::Interior(t) => Some(t),
            ConvKernel::Coop => None,
        }
    }
    /// Output rows (pixels) per workgroup: the row tiles of batch norm's partial statistics.
    pub fn rows(self) -> usize {
        self.tile().map_or(64, |t| t.rows())
    }
    /// Output columns (channels) per workgroup.
    pub fn cols(self) -> usize {
        self.tile().map_or(64, |t| t.cols())
    }
    /// The name the tuner records and the benchmark rows use: the tile's, with `i` for its
    /// interior form, or `coop`.
    pub fn name(self) -> &'static str {
        match self {
            ConvKernel::Tile(t) => t.name(),
            ConvKernel::Interior(t) => t.interior_name(),
            ConvKernel::Coop => "coop",
        }
    }
    /// The kernel named `name` ([`ConvKernel::name`]).
    pub fn from_name(name: &str) -> Option<ConvKernel> {
        if name == "coop" {
            return Some(ConvKernel::Coop);
        }
        let interior = ConvTile::ALL.into_iter().find(|t| t.interior_name() == name).map(ConvKernel::Interior);
        interior.or_else(|| ConvTile::from_name(name).map(ConvKernel::Tile))
    }
    /// Every kernel of the f32-arithmetic tiles: each tile guarded, then each with its
    /// interior form (what the tests and the benchmark rows run).
    pub fn tiled() -> impl Iterator<Item = ConvKernel> {
        ConvTile::ALL.into_iter().map(ConvKernel::Tile).chain(ConvTile::ALL.into_iter().map(ConvKernel::Interior))
    }
}

/// Per tile, in [`ConvTile::ALL`]'s order.
const TILED: [Tiled; ConvTile::ALL.len()] = {
    let mut out = [tiled(ConvTile::T128x64); ConvTile::ALL.len()];
    let mut i = 0;
    while i < out.len() {
        out[i] = tiled(ConvTile::ALL[i]);
        i += 1;
    }
    out
};

pub(super) fn kernels(t: ConvTile) -> &'static Tiled {
    &TILED[t as usize]
}

/// Entry points per tile instantiation ([`Tiled`]).
const PER_TILE: usize = 8;
const ALL_KERNELS: usize = PER_TILE * TILED.len() + 3 * COOP.len();

const fn all_kernels() -> [Kernel; ALL_KERNELS] {
    let mut out = [COOP[0].fwd; ALL_KERNELS];
    let first = PER_TILE * TILED.len();
    let mut c = 0;
    while c < 2 {
        let k = COOP[c];
        out[first + 3 * c] = k.fwd;
        out[first + 1 + 3 * c] = k.dx;
        out[first + 2 + 3 * c] = k.dw;
        c += 1;
    }
    let mut i = 0;
    while i < TILED.len() {
        let t = TILED[i];
        let k = [t.fwd, t.fwd_scaled, t.dx, t.dx_scaled, t.dw, t.dw_scaled, t.dw_reduce, t.dbias];
        let mut j = 0;
        while j < k.len() {
            out[PER_TILE * i + j] = k[j];
            j += 1;
        }
        i += 1;
    }
    out
}

/// Every kernel of this file, every tile's and the cooperative-matrix ones (for the
/// interface test, `tests/gpu/kernels.rs`).
pub(crate) const KERNELS: &[Kernel] = &all_kernels();
