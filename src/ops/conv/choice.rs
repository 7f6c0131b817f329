//! Which tile runs a convolution GEMM: the tuned choice of its shape bucket (timed now if the
//! bucket is new; `ops::tune`, `gpu::tune`), or the size rule [`tile_for`] with tuning off.
use super::{forward, grad_input, grad_weight, ConvKernel, Geom};
use crate::ops::elementwise::AbsMax;
use crate::error::{Error, Result};
use crate::gpu::{ConvTile, Gpu, TuneMode};
use crate::tensor::{DType, Tensor};

/// Cost of staging one operand value relative to one multiply-add, in the size rule: each
/// K-slice a tile stages BM + BN values for BM·BN multiply-adds.
const STAGE_COST: f64 = 8.0;

/// A tile is timed by the tuner only if its estimated work is within this factor of the
/// least of any tile's: one computing more than twice what the best does, padding included,
/// is not worth compiling and timing (a layer of 8 channels on a 128-channel tile).
const TIME_WITHIN: f64 = 2.0;

/// Estimated work of tile `t` on a GEMM with `m` x `n` outputs: every output the tile
/// computes, padding included, at 1 + STAGE_COST·(1/BM + 1/BN) each. Wide tiles stage less
/// per output, narrow ones waste less on padding.
fn work(t: ConvTile, m: usize, n: usize) -> f64 {
    let (bm, bn) = (t.rows(), t.cols());
    (m.next_multiple_of(bm) * n.next_multiple_of(bn)) as f64 * (1.0 + STAGE_COST * (1.0 / bm as f64 + 1.0 / bn as f64))
}

/// The size rule (tuning off): the tile of [`ConvTile::RULE`] of least estimated work
/// ([`work`]) for a GEMM with `m` x `n` outputs; the widest of equals. A layer with 8 output
/// channels on the 128 x 64 tile would compute 8 times its outputs.
pub fn tile_for(m: usize, n: usize) -> ConvTile {
    ConvTile::RULE.into_iter().fold(ConvTile::T128x64, |best, t| if work(t, m, n) < work(best, m, n) { t } else { best })
}

/// The tiles the tuner times for a GEMM with `m` x `n` outputs: every tile whose estimated
/// work is within [`TIME_WITHIN`] of the least, in [`ConvTile::ALL`]'s order.
pub fn tiles_to_time(m: usize, n: usize) -> Vec<ConvTile> {
    let least = ConvTile::ALL.into_iter().map(|t| work(t, m, n)).fold(f64::INFINITY, f64::min);
    ConvTile::ALL.into_iter().filter(|&t| work(t, m, n) <= TIME_WITHIN * least).collect()
}

/// The three GEMMs of a convolution.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Gemm {
    /// y from x and w: M = N·HO·WO, N = O, K = C·KH·KW
    Fwd,
    /// dx from dy and w: M = a stride phase's pixels, N = C, K = O·taps
    Dx,
    /// dw from x and dy: M = C·KH·KW, N = O, K = N·HO·WO
    Dw,
}

/// The tuning bucket: the GEMM, the power-of-two class of its M, N and K, the number of
/// stride phases (dX runs one grid slice per phase), which operands are f16 (` half=x`,
/// `=w`, `=xw`; absent for f32), and ` scaled` where the weights are (other kernels, and
/// no cooperative-matrix forward).
fn bucket(g: &Geom, which: Gemm, m: usize, n: usize) -> String {
    use crate::ops::tune::size_class as c;
    let (name, k) = match which {
        Gemm::Fwd => ("fwd", g.kernel_len()),
        Gemm::Dx => ("dx", g.o * g.kh * g.kw),
        Gemm::Dw => ("dw", g.n * g.ho * g.wo),
    };
    let half = match (g.half_x, g.half_w) {
        (false, false) => "",
        (true, false) => " half=x",
        (false, true) => " half=w",
        (true, true) => " half=xw",
    };
    let scaled = if g.scaled { " scaled" } else { "" };
    format!("{name} m{} n{} k{} phases{}{half}{scaled}", c(m), c(n), c(k), g.p.stride.0 * g.p.stride.1)
}

/// The kernel GEMM `which` of `g` runs on: the tuned choice of its bucket (timing the tiles
/// of [`tiles_to_time`] now, guarded and, where the GEMM has interior workgroups, in their
/// interior form, on seeded random operands of the same shapes, if the bucket is new; where the
/// operands other than dy are f16 and the weights unscaled, on an adapter with cooperative
/// matrices, the cooperative-matrix kernel too), or [`tile_for`] with tuning off. The probe's reference is
/// the 128 x 64 tile (the forward and dX of every tile add in the same order and agree bit for
/// bit; dW's split-K differs in the last bits, the tensor cores' sums in their order).
pub(super) fn choose(g: &Geom, which: Gemm, m: usize, n: usize, gpu: &Gpu) -> Result<ConvKernel> {
    let rule = ConvKernel::Tile(tile_for(m, n));
    // the tuning operands are drawn in one launch each: under a test's cap on workgroups
    // per dimension a large one cannot be (a real adapter's cap is 65,535^3)
    let largest = (g.n * g.c * g.h * g.w).max(g.n * g.o * g.ho * g.wo).max(g.o * g.kernel_len());
    if gpu.tune_mode() == TuneMode::Off || !crate::ops::random::launchable(gpu, largest) {
        return Ok(rule);
    }
    let bucket = bucket(g, which, m, n);
    // tensor cores only: their emulation is a test vehicle, not a candidate
    let coop = g.coop_applies(which) && gpu.capabilities().cooperative_matrix;
    let known = || gpu.tune_lookup("conv", &bucket).and_then(|e| ConvKernel::from_name(&e.variant)).filter(|&k| coop || k != ConvKernel::Coop);
    if let Some(t) = known() {
        return Ok(t);
    }
    // one tuning at a time per device (see ops::matmul's choice)
    let _one = gpu.tuning_guard();
    if let Some(t) = known() {
        return Ok(t);
    }
    if let Some(e) = gpu.tune_lookup("conv", &bucket) {
        eprintln!("warning: tuning cache: conv {bucket}: unknown variant `{}`; tuning again", e.variant);
    }
    let tuned = (|| {
        let _ng = crate::autograd::no_grad();
        let seed = 0x636f_6e76; // "conv"
        let rnd = |shape: &[usize], i: u64, half: bool| {
            let r = crate::ops::random::randn(gpu, shape, seed, i << 40)?;
            crate::ops::cast(&r, if half { DType::F16 } else { DType::F32 })
        };
        let w = rnd(&[g.o, g.c, g.kh, g.kw], 0, g.half_w)?;
        let x = if which == Gemm::Dx { None } else { Some(rnd(&[g.n, g.c, g.h, g.w], 1, g.half_x)?) };
        // dy is f32; where the cooperative-matrix kernel is a candidate it holds f16 values
        // (which its per-tensor power-of-two scale keeps exact), so that its probe sees the
        // GEMM and not the f16 staging of dy, a precision mixed training chose
        let dy = if which == Gemm::Fwd { None } else { Some(crate::ops::cast(&rnd(&[g.n, g.o, g.ho, g.wo], 2, coop)?, DType::F32)?) };
        let run = |k: ConvKernel| -> Result<Tensor> {
            let on = Geom { kernel: Some(k), ..*g };
            let (x, dy) = (x.as_ref(), dy.as_ref());
            match which {
                Gemm::Fwd => forward(&on, x.expect("x"), &w, None, None, &Default::default()),
                Gemm::Dx => grad_input(&on, &AbsMax::new(dy.expect("dy")), &w, None),
                Gemm::Dw => grad_weight(&on, x.expect("x"), &AbsMax::new(dy.expect("dy")), None),
            }
        };
        let reference = run(ConvKernel::Tile(ConvTile::T128x64))?;
        // each tile guarded, and in its interior form where this GEMM has interior workgroups
        let tiles = tiles_to_time(m, n);
        let interior = tiles.iter().map(|&t| ConvKernel::Interior(t)).filter(|&k| g.interior(which, k, m, n, None).iter().all(|&d| d > 0));
        let kernels = tiles.iter().map(|&t| ConvKernel::Tile(t)).chain(interior).chain(coop.then_some(ConvKernel::Coop));
        let list: Vec<crate::ops::tune::Candidate> = kernels.map(|k| (k.name(), Box::new(move || run(k)) as Box<dyn Fn() -> Result<Tensor>>)).collect();
        let problem = format!("[{}, {}, {}, {}] * [{}, {}, {}, {}] stride {:?}: M {m}, N {n}", g.n, g.c, g.h, g.w, g.o, g.c, g.kh, g.kw, g.p.stride);
        crate::ops::tune::tune(gpu, "conv", &bucket, problem, &list, &reference)
    })();
    match tuned {
        Ok(name) => Ok(ConvKernel::from_name(&name).unwrap_or(rule)),
        // the tuning operands did not fit beside the run's tensors: run untuned, tune later
        Err(Error::OutOfMemory { .. }) => {
            eprintln!("warning: tuning conv {bucket}: no memory for the tuning operands; the size rule picks this time");
            Ok(rule)
        }
        Err(e) => Err(e),
    }
}
