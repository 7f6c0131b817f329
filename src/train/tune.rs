//! `equimodal tune`: tune the kernels a configuration runs before a run needs them, and the
//! table of what the tuner chose on this device.
//!
//! Tuning happens on its own at the first product of each shape bucket; pre-tuning moves
//! that pause out of the first epoch and lets a cluster job tune once for all the runs of a
//! sweep (they share the cache file). It runs the configured method's real training step
//! on a full batch and on the epoch's last, partial batch, and the evaluation forward on a
//! full and the last, partial evaluation batch, so every product of those passes meets the
//! tuner; then the same passes again from each state the method names for the shapes that
//! appear only later in a run (`Method::pretune_states`: AUG with more learners, AIM with
//! damped auxiliary blocks). A method's observation pass runs on one batch.
use super::{build_optimizer, register_new_params, upload_batch};
use crate::config::Config;
use crate::data::{self, loader::assemble_batch, Dataset, Split};
use crate::error::{Error, Result};
use crate::gpu::{Gpu, TuneEntry, TuneMode};
use crate::methods;
use rand::SeedableRng;
use std::collections::BTreeMap;

/// Run the passes of `cfg` that a training epoch and its evaluation run (on the first
/// samples of each split), so the tuner meets every product they launch. Returns the
/// device's tuning table afterwards.
pub fn pretune(gpu: &Gpu, cfg: &Config) -> Result<BTreeMap<String, TuneEntry>> {
    if gpu.tune_mode() == TuneMode::Off {
        return Err(Error::config("EQUIMODAL_TUNE", "tuning is off; `equimodal tune` needs it on (quick or full)"));
    }
    // the products a mixed-precision run launches take f16 operands: tune those buckets
    let _precision = crate::autograd::autocast(cfg.train.precision == crate::config::Precision::Mixed);
    let ds: Box<dyn Dataset> = data::build(&cfg.data)?;
    let specs = ds.modalities().to_vec();
    let classes = ds.num_classes();
    super::estimate::check_model_fits(gpu.limits(), cfg, &specs, classes)?;
    let mut rng = rand::rngs::StdRng::seed_from_u64(cfg.seed);
    let mut method = methods::build(gpu, &cfg.method_setup(), &specs, classes, &mut rng)?;
    let mut opt = build_optimizer(cfg, method.trainable())?;
    let batch = |split: Split, n: usize| -> Result<methods::DeviceBatch> {
        let idx: Vec<usize> = (0..n).collect();
        upload_batch(gpu, &assemble_batch(ds.as_ref(), split, &idx, false, cfg.seed, 0)?, classes)
    };
    // training: a full batch, and the partial last one when the split leaves one;
    // evaluation: at least 64 per batch (see `Run::evaluate`), and its partial last batch
    let train_sizes = sizes(ds.len(Split::Train), cfg.train.batch_size.max(1));
    let split = if ds.len(Split::Test) > 0 { Split::Test } else { Split::Train };
    let eval_sizes = sizes(ds.len(split), cfg.train.batch_size.max(64));
    method.begin_epoch(0)?;
    if method.observe_fraction(0).is_some() {
        if let Some(&n) = train_sizes.first() {
            method.observe(&batch(Split::Train, n)?, 0)?;
        }
    }
    let states = method.pretune_states();
    for state in std::iter::once(None).chain(states.iter().map(Some)) {
        if let Some(state) = state {
            method.restore(state, opt.as_mut())?;
            register_new_params(method.as_ref(), opt.as_mut());
        }
        for &n in &train_sizes {
            method.train_step(&batch(Split::Train, n)?, opt.as_mut(), 0)?;
        }
        let _ng = crate::autograd::no_grad();
        for &n in &eval_sizes {
            method.predict(&batch(split, n)?.inputs)?;
        }
        gpu.synchronize()?;
    }
    Ok(gpu.tune_table())
}

/// The batch sizes a pass over `len` samples in batches of `bs` launches: a full batch (or
/// all of them, if fewer) and the partial last one where there is one.
fn sizes(len: usize, bs: usize) -> Vec<usize> {
    let mut v = vec![bs.min(len)];
    if len > bs && !len.is_multiple_of(bs) {
        v.push(len % bs);
    }
    v.retain(|&n| n > 0);
    v
}

/// The tuning table as text: one row per bucket with the chosen variant and every
/// candidate's median time (µs; "failed" for one that failed the correctness probe).
pub fn format_tune_table(gpu: &Gpu, table: &BTreeMap<String, TuneEntry>) -> String {
    let mut s = format!(
        "tuned kernels on {} ({:?}), mode {:?}, cache {}\n",
        gpu.info().name,
        gpu.info().backend,
        gpu.tune_mode(),
        gpu.tune_cache_path().map_or("none (this process only)".to_string(), |p| p.display().to_string())
    );
    s += &format!("{:<40} {:<28} {:<10} candidates (median µs)\n", "family/bucket", "timed on", "chosen");
    for (key, e) in table {
        let times: Vec<String> =
            e.us.iter().map(|(k, v)| format!("{k} {}", v.map_or("failed".to_string(), |v| format!("{v:.1}")))).collect();
        s += &format!("{key:<40} {:<28} {:<10} {}\n", e.problem, e.variant, times.join(", "));
    }
    if table.is_empty() {
        s += "(nothing tuned yet)\n";
    }
    s
}
