//! `equimodal tune`: tune the kernels a configuration runs before a run needs them, and the
//! table of what the tuner chose on this device.
//!
//! Tuning happens on its own at the first product of each shape bucket; pre-tuning moves
//! that pause out of the first epoch and lets a cluster job tune once for all the runs of a
//! sweep (they share the cache file). It runs the configured method's real training step
//! on a full batch and on the epoch's last, partial batch, and the evaluation forward at
//! its batch size, so every product of those passes meets the tuner. Shapes that appear
//! only later in a run (AUG's learners added at check epochs, a method's later phase) are
//! tuned when they appear.
use super::{build_optimizer, upload_batch};
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
    let n_train = ds.len(Split::Train);
    let bs = cfg.train.batch_size.max(1);
    // a full batch, and the partial last one when the split leaves one
    let mut sizes = vec![bs.min(n_train)];
    if n_train > bs && !n_train.is_multiple_of(bs) {
        sizes.push(n_train % bs);
    }
    for n in sizes.into_iter().filter(|&n| n > 0) {
        let idx: Vec<usize> = (0..n).collect();
        let b = upload_batch(gpu, &assemble_batch(ds.as_ref(), Split::Train, &idx, false, cfg.seed, 0)?, classes)?;
        method.train_step(&b, opt.as_mut(), 0)?;
    }
    // evaluation runs at least 64 per batch (see `Run::evaluate`)
    let split = if ds.len(Split::Test) > 0 { Split::Test } else { Split::Train };
    let n = (cfg.train.batch_size.max(64)).min(ds.len(split));
    if n > 0 {
        let idx: Vec<usize> = (0..n).collect();
        let b = upload_batch(gpu, &assemble_batch(ds.as_ref(), split, &idx, false, cfg.seed, 0)?, classes)?;
        let _ng = crate::autograd::no_grad();
        method.predict(&b.inputs)?;
    }
    gpu.synchronize()?;
    Ok(gpu.tune_table())
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
