//! Size limits checked before anything is allocated.
//!
//! Shapes, class counts, layer widths and sample rates come from user files and configs;
//! an unchecked product can wrap to a small number (then an index panics) or ask the host
//! for terabytes (then the allocator aborts the process, with no message). Every size is
//! multiplied with checked arithmetic here. (The model's memory estimate, which needs the
//! whole configuration, is `train::estimate`.) Like `error`, this module sits below every
//! layer.
use crate::error::{Error, Result};

/// Most classes a dataset may have (configured or inferred from the largest label).
pub const MAX_CLASSES: usize = 1_000_000;
/// Widest layer a config may ask for (a guard against typos like 100000000; memory is
/// checked separately by `train::estimate::check_model_fits`).
pub const MAX_WIDTH: usize = 1 << 20;
/// Most layers or blocks a model config may ask for (an MLP's hidden list, a transformer's
/// layers, a small CNN's depth): beyond it a config is a typo that would loop for ages.
pub const MAX_DEPTH: usize = 1024;
/// Most epochs anything may run (`train.epochs`, an estimate's `super_epoch`).
pub const MAX_EPOCHS: usize = 1_000_000;
/// Highest WAV sample rate accepted (the resampler's filter table grows with the ratio).
pub const MAX_SAMPLE_RATE: u32 = 768_000;

/// Product of `dims` without overflow; the error names `what` and the dims.
pub fn checked_numel(dims: &[usize], what: &str) -> Result<usize> {
    dims.iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| Error::shape("size check", format!("{what}: {dims:?} holds more than {} values", usize::MAX)))
}

pub(crate) fn mul(a: u64, b: u64, what: &str) -> Result<u64> {
    a.checked_mul(b).ok_or_else(|| Error::shape("size check", format!("{what}: {a} x {b} overflows")))
}

/// The class count a dataset implies: `configured` when > 0, else largest label + 1 (at
/// least 2). `source` names the file the labels came from, for the error.
pub fn class_count(configured: usize, max_label: i64, label_index: usize, source: &str) -> Result<usize> {
    if configured > 0 {
        if configured > MAX_CLASSES {
            return Err(Error::config("data.num_classes", format!("{configured} classes is more than the limit of {MAX_CLASSES}")));
        }
        return Ok(configured);
    }
    if max_label >= MAX_CLASSES as i64 {
        return Err(Error::data(
            source,
            format!("label {max_label} at index {label_index} implies {} classes, more than the limit of {MAX_CLASSES}; fix the label or set data.num_classes", max_label.saturating_add(1)),
        ));
    }
    Ok((max_label + 1).max(2) as usize)
}

