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

/// Available host memory in bytes (Linux `MemAvailable`); None where unknown.
pub fn host_available_bytes() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb.saturating_mul(1024))
}

/// An error naming `field` when `bytes` of host memory (for `what`) exceed what the host has
/// available; nothing is checked where that is unknown.
pub fn check_host_fits(bytes: u64, what: &str, field: &str) -> Result<()> {
    match host_available_bytes() {
        Some(avail) if bytes > avail => Err(Error::config(
            field,
            format!("{what} would take {:.1} GB of host memory, more than the {:.1} GB available", bytes as f64 / 1e9, avail as f64 / 1e9),
        )),
        _ => Ok(()),
    }
}

/// Most bytes of a text file the program reads whole (a config or a sweep file).
pub const MAX_TEXT_FILE: u64 = 16 << 20;

/// A regular file's bytes, if it holds at most `max` of them: a device (`/dev/zero`), a
/// pipe or a file far larger than its kind ever is is an error naming it, before it is read.
pub fn read_regular(path: &std::path::Path, max: u64) -> Result<Vec<u8>> {
    let meta = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
    if !meta.is_file() {
        return Err(Error::data(path.display().to_string(), "not a regular file"));
    }
    if meta.len() > max {
        return Err(Error::data(path.display().to_string(), format!("{} bytes; a file of this kind holds at most {max}", meta.len())));
    }
    std::fs::read(path).map_err(|e| Error::io(path, e))
}

/// A text file of at most [`MAX_TEXT_FILE`] bytes, read no further than that: a pipe
/// (`--config <(...)`) works, a device that never ends (`/dev/zero`) is an error naming it.
pub fn read_text(path: &std::path::Path) -> Result<String> {
    use std::io::Read;
    let f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut bytes = Vec::new();
    f.take(MAX_TEXT_FILE + 1).read_to_end(&mut bytes).map_err(|e| Error::io(path, e))?;
    if bytes.len() as u64 > MAX_TEXT_FILE {
        return Err(Error::data(path.display().to_string(), format!("more than {MAX_TEXT_FILE} bytes; a config or sweep file is far smaller")));
    }
    String::from_utf8(bytes).map_err(|e| Error::data(path.display().to_string(), format!("not UTF-8 text: {e}")))
}

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

