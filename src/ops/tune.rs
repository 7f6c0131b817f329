//! Timing a kernel family's variants on this device (the policy and the cache file are
//! `gpu::tune`). A family hands [`tune`] its candidates as closures that run one launch on
//! operands the family made for tuning (seeded random data of the problem's shapes, never
//! the caller's tensors: the probe then means something even where real data is all zeros,
//! and the timing does not depend on it), plus the output of its reference kernel on the
//! same operands.
//!
//! Each candidate runs once untimed (compiling its pipeline, warming caches) and that
//! output is the correctness probe: it must be finite and within `1e-4 · max|reference|`
//! of the reference everywhere (a wrong tile or a missed edge is off by the size of the
//! values themselves; a different summation order by ~1e-6 of them). Then the candidates
//! are timed in turns, `mode.reps()` rounds or until the mode's budget is spent, and the
//! fastest median wins.
use crate::error::{Error, Result};
use crate::gpu::{Gpu, GpuTimer, TuneEntry};
use crate::tensor::Tensor;
use std::collections::BTreeMap;

/// Relative tolerance of the correctness probe (of the reference's largest magnitude).
pub const PROBE_RTOL: f32 = 1e-4;

/// A candidate: its name (what the cache stores) and one launch on the tuning operands.
pub type Candidate<'a> = (&'static str, Box<dyn Fn() -> Result<Tensor> + 'a>);

/// Largest |candidate - reference| over the reference's largest magnitude; `None` when the
/// candidate has a non-finite value or the wrong length.
fn probe_error(out: &[f32], reference: &[f32]) -> Option<f32> {
    if out.len() != reference.len() || out.iter().any(|v| !v.is_finite()) {
        return None;
    }
    let scale = reference.iter().fold(0f32, |m, v| m.max(v.abs())).max(f32::MIN_POSITIVE);
    Some(out.iter().zip(reference).fold(0f32, |m, (o, r)| m.max((o - r).abs())) / scale)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// Time `candidates` (after probing each against `reference`), record the fastest correct
/// one for `family/bucket` in the device's tuning table and return the name of the variant
/// in force (another process's earlier choice for the bucket wins over this one). An error when
/// none passes the probe (a kernel bug the test suite must catch, never a silent pick).
/// Public for the tests, which hand it a deliberately wrong candidate.
#[doc(hidden)]
pub fn tune(gpu: &Gpu, family: &str, bucket: &str, problem: String, candidates: &[Candidate], reference: &Tensor) -> Result<String> {
    let mode = gpu.tune_mode();
    let reference = reference.to_vec()?;
    let mut passed = Vec::new();
    let mut us: BTreeMap<String, Option<f64>> = BTreeMap::new();
    let mut probe_report = Vec::new();
    for (i, (name, run)) in candidates.iter().enumerate() {
        let out = run()?.to_vec()?;
        match probe_error(&out, &reference) {
            Some(e) if e <= PROBE_RTOL => passed.push(i),
            e => {
                probe_report.push(format!("{name}: {}", e.map_or("non-finite output".to_string(), |e| format!("error {e:.2e} of the largest value"))));
                us.insert(name.to_string(), None);
            }
        }
    }
    if !probe_report.is_empty() {
        if gpu.strict_probe() {
            return Err(Error::Other(format!("tuning {family} {bucket} ({problem}): variants failed the correctness probe: {}", probe_report.join("; "))));
        }
        eprintln!("warning: tuning {family} {bucket}: variants failed the correctness probe and are never used here: {}", probe_report.join("; "));
    }
    if passed.is_empty() {
        return Err(Error::Other(format!("tuning {family} {bucket} ({problem}): no variant passed the correctness probe")));
    }
    let mut times: Vec<Vec<f64>> = vec![Vec::new(); candidates.len()];
    let mut timer = GpuTimer::new(gpu, 2);
    let mut spent = 0.0;
    for _round in 0..mode.reps().max(1) {
        for &i in &passed {
            timer.mark(gpu)?;
            drop(candidates[i].1()?);
            timer.mark(gpu)?;
            let ns = timer.intervals_ns(gpu)?.first().copied().unwrap_or(0.0);
            spent += ns;
            times[i].push(ns);
        }
        if spent > mode.budget_ns() {
            break;
        }
    }
    let best = passed.iter().copied().min_by(|&a, &b| median(times[a].clone()).total_cmp(&median(times[b].clone()))).unwrap_or(passed[0]);
    for &i in &passed {
        us.insert(candidates[i].0.to_string(), Some(median(times[i].clone()) / 1e3));
    }
    let name = candidates[best].0;
    // the choice in force: ours, or one another process sharing the cache file wrote first
    let valid: Vec<&str> = candidates.iter().map(|c| c.0).collect();
    Ok(gpu.tune_record(family, bucket, TuneEntry { variant: name.to_string(), us, problem }, &valid).variant)
}

thread_local! {
    // Tests only (`prefer_coop`): run the cooperative-matrix kernels wherever they apply on
    // this thread (the forward, the gradients), emulated where the adapter has no tensor
    // cores.
    static PREFER_COOP: std::cell::Cell<(bool, bool)> = const { std::cell::Cell::new((false, false)) };
}

/// Guard returned by [`prefer_coop`]; the previous mode returns when it drops.
#[doc(hidden)]
pub struct PreferCoopGuard((bool, bool));

impl Drop for PreferCoopGuard {
    fn drop(&mut self) {
        PREFER_COOP.with(|c| c.set(self.0));
    }
}

/// While the guard lives, the forward products (with `forward`: the convolutions' forward
/// GEMMs, attention's forward, matmuls of two f16 operands) and the gradient products (with
/// `gradients`: the convolutions' gradient GEMMs, matmuls with an f32 operand) on this
/// thread that the cooperative-matrix kernels can run (f16 operands, no weight scale; tensor
/// cores or their emulation) run on them instead of the tuner's choice. For tests that run
/// whole networks on them where no adapter has tensor cores (lavapipe): the emulation is
/// never chosen otherwise.
#[doc(hidden)]
pub fn prefer_coop(forward: bool, gradients: bool) -> PreferCoopGuard {
    PreferCoopGuard(PREFER_COOP.with(|c| c.replace((forward, gradients))))
}

/// The (forward, gradients) of the [`prefer_coop`] guard in force on this thread.
pub(crate) fn coop_preferred() -> (bool, bool) {
    PREFER_COOP.with(|c| c.get())
}

/// Power-of-two size class of one dimension for shape buckets (0 stays 0).
pub(crate) fn size_class(n: usize) -> usize {
    if n == 0 {
        return 0;
    }
    n.checked_next_power_of_two().unwrap_or(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_probe_rejects_wrong_and_non_finite_outputs() {
        let r = [1.0, -2.0, 4.0];
        assert_eq!(probe_error(&[1.0, -2.0, 4.0], &r), Some(0.0));
        assert!(probe_error(&[1.0, -2.0, 4.0001], &r).unwrap() <= PROBE_RTOL);
        assert!(probe_error(&[1.0, -2.0, 0.0], &r).unwrap() > PROBE_RTOL);
        assert_eq!(probe_error(&[1.0, f32::NAN, 4.0], &r), None);
        assert_eq!(probe_error(&[1.0, 4.0], &r), None);
        assert_eq!(size_class(0), 0);
        assert_eq!(size_class(129), 256);
        assert_eq!(size_class(128), 128);
    }
}
