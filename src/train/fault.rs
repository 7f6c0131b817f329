//! Fault injection for the reliability tests: `EQUIMODAL_FAULT=<kind>:<path substring>`
//! makes every atomic write whose target path contains the substring stop half-way:
//!
//! - `enospc`: the write fails as on a full disk (the error path runs as in production);
//! - `kill`: the process exits at once (code 137, no destructors, no cleanup), as if it
//!   were killed mid-checkpoint; the half-written temporary file and the lock stay behind.
//!
//! Unset (the normal case) it costs one environment lookup per file written.
use std::path::Path;

/// The environment variable that selects a fault, `<kind>:<path substring>`.
pub const FAULT_ENV: &str = "EQUIMODAL_FAULT";

/// A fault injected into an atomic write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// `enospc`: the write fails as on a full disk.
    NoSpace,
    /// `kill`: the process exits with code 137 mid-write.
    Kill,
}

impl Fault {
    /// The fault configured for a write to `target`, if any.
    pub fn for_write(target: &Path) -> Option<Fault> {
        let spec = std::env::var(FAULT_ENV).ok()?;
        let (kind, pattern) = spec.split_once(':')?;
        if pattern.is_empty() || !target.to_string_lossy().contains(pattern) {
            return None;
        }
        match kind {
            "enospc" => Some(Fault::NoSpace),
            "kill" => Some(Fault::Kill),
            _ => None,
        }
    }

    /// Act out the fault: the I/O error to return, or no return at all.
    pub fn trigger(self) -> std::io::Error {
        match self {
            Fault::NoSpace => std::io::Error::new(std::io::ErrorKind::StorageFull, "No space left on device (injected by EQUIMODAL_FAULT)"),
            Fault::Kill => std::process::exit(137),
        }
    }
}
