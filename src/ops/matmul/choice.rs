//! Which variant runs a product: the tuned choice of its shape bucket (timed now if the
//! bucket is new; `ops::tune`, `gpu::tune`), or a size rule with tuning off.
use super::launch::{coop_applies, launch, split_shape, tile128_workgroup_bytes, vec4_applies, Form, MatmulKernel, MATMUL_GROUP_M, SPLIT_MAX_PARTIAL_BYTES, TILE128_DEEP_BK};
use super::Plan;
use crate::error::{Error, Result};
use crate::tensor::Tensor;

/// Below this many 128x128 output tiles the 64x64 kernel is used: with fewer tiles than
/// streaming multiprocessors on a large GPU (132 on the H100) the big tile leaves most of
/// the machine idle, and the small tile gives 4x as many workgroups.
const TILE128_MIN_TILES: usize = 132;

/// The size rule used with tuning off: the 64x64 tile until the 128x128 one has enough
/// tiles to fill a large GPU.
pub(super) fn heuristic(p: &Plan) -> MatmulKernel {
    let tiles = p.m.div_ceil(128) * p.n.div_ceil(128) * p.batch;
    if tiles >= TILE128_MIN_TILES {
        MatmulKernel::TILE128
    } else {
        MatmulKernel::Tile64
    }
}

/// The variants that can run `p` on a device with `workgroup_bytes` of workgroup memory:
/// the 64x64 and plain 128x128 tiles always; the VEC4 form where it applies and there is an
/// interior tile; the grouped tile order where it changes the order; K-slices of 16 where K
/// is longer than one slice of 8 and the device has the memory; split-K for one matrix
/// whose K holds at least two slices per split and whose partials fit
/// [`SPLIT_MAX_PARTIAL_BYTES`]; cooperative matrices for f16 operands where the device has
/// them (`coop`).
fn candidates(p: &Plan, form: &Form, operands: &[&Tensor], workgroup_bytes: usize, coop: bool) -> Vec<MatmulKernel> {
    MatmulKernel::TUNED
        .into_iter()
        .filter(|k| match *k {
            MatmulKernel::Tile128(t) => {
                // worth a launch only with interior tiles
                let vec4 = !t.vec4 || (p.m >= 128 && p.n >= 128 && vec4_applies(p, form, operands, t.bk()));
                // the grouped order differs from row by row only beyond one band of rows
                let grouped = !t.grouped || grouping_differs(p);
                vec4 && grouped && (!t.k16 || deep_slices_pay(p.k, workgroup_bytes))
            }
            MatmulKernel::Coop => coop && coop_applies(form),
            MatmulKernel::SplitK(s) => {
                let (chunk, used) = split_shape(p.k, s as usize);
                p.batch == 1 && chunk >= 2 && used == s as usize && used * p.m * p.n * 4 <= SPLIT_MAX_PARTIAL_BYTES
            }
            _ => true,
        })
        .collect()
}

/// Whether K-slices of 16 are worth timing for an inner dimension `k` on a device with
/// `workgroup_bytes` of workgroup memory: K longer than one slice of 8 (else both depths
/// run one slice), and room for the deeper tiles.
fn deep_slices_pay(k: usize, workgroup_bytes: usize) -> bool {
    k > 8 && tile128_workgroup_bytes(TILE128_DEEP_BK) <= workgroup_bytes
}

/// Whether the grouped tile order visits `p`'s 128x128 tiles in another order than row by
/// row: more than one column tile and more than one band of row tiles.
fn grouping_differs(p: &Plan) -> bool {
    p.n > 128 && p.m.div_ceil(128) > MATMUL_GROUP_M as usize
}

/// The tuning bucket of `p`: transposes, scales, bias, and the power-of-two class of each
/// size (a bucket's variants are timed on its first problem), and which operands are f16
/// (` half=A`, `=B`, `=AB`; absent for f32). A fused ReLU is not part of it: `linear_relu`
/// then runs the variant `linear` runs, and gives its bits exactly.
fn bucket(p: &Plan, form: &Form) -> String {
    use crate::ops::tune::size_class as c;
    let flag = |on: bool, ch: char| if on { ch } else { '-' };
    let f: String = [flag(p.ta, 'A'), flag(p.tb, 'B'), flag(form.sa || form.sb, 's'), flag(form.bias, 'b')].iter().collect();
    let half = match (form.half_a, form.half_b) {
        (false, false) => "",
        (true, false) => " half=A",
        (false, true) => " half=B",
        (true, true) => " half=AB",
    };
    format!("{f} batch{} m{} n{} k{}{half}", c(p.batch), c(p.m), c(p.n), c(p.k))
}

/// The variant that runs `p`: the tuned choice of its bucket (timing the candidates now,
/// on seeded random operands of the same shapes, if the bucket is new), or [`heuristic`]
/// with tuning off or only one candidate.
pub(super) fn choose(p: &Plan, a: &Tensor, sa: Option<&Tensor>, b: &Tensor, sb: Option<&Tensor>, bias: Option<&Tensor>, relu: bool) -> Result<MatmulKernel> {
    let gpu = a.gpu();
    let form = Form::of(p, a, sa.is_some(), b, sb.is_some(), bias.is_some(), relu);
    // the test guard (`ops::prefer_coop`): an f16 x f16 product is a forward one, one with an
    // f32 operand a gradient's
    let (forward, gradients) = crate::ops::tune::coop_preferred();
    let preferred = if form.half_a && form.half_b { forward } else { gradients };
    if preferred && coop_applies(&form) && crate::gpu::Coop::on(&gpu.capabilities()).is_some() {
        return Ok(MatmulKernel::Coop);
    }
    let cands = candidates(p, &form, &[a, b], gpu.limits().max_compute_workgroup_storage_size as usize, gpu.capabilities().cooperative_matrix);
    // the probe's reference is one thread per output: under a test cap on workgroups per
    // dimension a large product cannot launch it (on a real adapter the cap is 65,535^3)
    let reference_fits = (p.batch * p.m * p.n).div_ceil(64) as u64 <= (gpu.max_workgroups_per_dim() as u64).pow(3);
    if gpu.tune_mode() == crate::gpu::TuneMode::Off || cands.len() < 2 || !reference_fits {
        return Ok(heuristic(p));
    }
    let bucket = bucket(p, &form);
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
        // operands of the run's shapes and dtypes (f16 ones rounded from f32 draws)
        let rnd = |t: &Tensor, i: u64| crate::ops::random::randn(gpu, t.shape(), seed, i << 40).and_then(|r| crate::ops::cast(&r, t.dtype()));
        // where the cooperative-matrix kernel is a candidate, an f32 operand (a gradient)
        // holds f16 values, which its per-tensor power-of-two scale keeps exact: its probe
        // then sees the product, not the f16 staging mixed precision chose
        let f16_valued = |t: Tensor| if cands.contains(&MatmulKernel::Coop) { crate::ops::cast(&crate::ops::cast(&t, crate::DType::F16)?, t.dtype()) } else { Ok(t) };
        let (ra, rb) = (f16_valued(rnd(a, 0)?)?, f16_valued(rnd(b, 1)?)?);
        let rsa = sa.map(|s| rnd(s, 2)).transpose()?;
        let rsb = sb.map(|s| rnd(s, 3)).transpose()?;
        let rbias = bias.map(|s| rnd(s, 4)).transpose()?;
        let run = |k: MatmulKernel| launch(p, &ra, rsa.as_ref(), &rb, rsb.as_ref(), rbias.as_ref(), relu, k, None);
        let reference = run(MatmulKernel::Reference)?;
        let list: Vec<crate::ops::tune::Candidate> = cands.iter().map(|&k| (k.name(), Box::new(move || run(k)) as Box<dyn Fn() -> Result<Tensor>>)).collect();
        let problem = format!("{} x {} x {} (batch {})", p.m, p.n, p.k, p.batch);
        crate::ops::tune::tune(gpu, "matmul", &bucket, problem, &list, &reference)
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

#[cfg(test)]
mod tests {
    use super::deep_slices_pay;

    /// Slices of 16 need 32 KiB of workgroup memory: a device with the 16 KiB every
    /// Vulkan device has (wgpu's default limit) never times them; lavapipe (32 KiB) and
    /// large GPUs (48 KiB and more) do, once K is longer than one slice of 8.
    #[test]
    fn deep_slices_are_timed_only_where_they_fit_and_differ() {
        assert!(!deep_slices_pay(1024, 16 << 10));
        assert!(!deep_slices_pay(1024, (32 << 10) - 4));
        assert!(deep_slices_pay(1024, 32 << 10));
        assert!(deep_slices_pay(9, 48 << 10));
        assert!(!deep_slices_pay(8, 48 << 10));
    }
}
