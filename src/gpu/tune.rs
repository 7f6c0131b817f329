//! The kernel tuner's policy and memory: which variant of a kernel family runs a given
//! problem on this device, and the cache file that remembers it between runs.
//!
//! A kernel family (`ops::matmul`, ...) offers a few variants (tile shapes, split-K) and a
//! shape bucket for each problem. On the first problem of a new bucket the family times its
//! candidates with [`GpuTimer`](super::GpuTimer), keeps the fastest one that passes a
//! correctness probe and reports it here ([`Gpu::tune_record`]). This file only decides
//! *whether* to tune ([`TuneMode`]), how long to time ([`TuneMode::reps`]) and *what is
//! remembered*: an in-memory table per device, persisted as JSON (one file for every device
//! of the machine, entries keyed by the adapter's name, backend and driver).
//!
//! The file is a cache, never an authority: one written by another engine version or with
//! other kernel sources is stale and ignored, an unreadable one is ignored, and either way
//! with a warning; a variant name the family no longer offers is re-tuned. Writes go to a
//! temporary file renamed over the old one, merged with what other processes (a parallel
//! sweep, a Slurm array) wrote meanwhile, so the file is never half-written.
use super::{Gpu, Shader};
use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Format of the cache file; bump when its layout changes.
const FORMAT: u32 = 1;

/// When the engine times a family's variants (`EQUIMODAL_TUNE`, [`GpuOptions::tune`]).
///
/// [`GpuOptions::tune`]: super::GpuOptions::tune
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TuneMode {
    /// Never time: each family's built-in size heuristic picks, as if there were no tuner
    /// (bitwise the same kernels on every machine). Cached choices are not read either.
    Off,
    /// Time each candidate a few times at the first problem of a bucket (the default).
    Quick,
    /// Time each candidate more often (steadier choices; what `equimodal tune` uses).
    Full,
}

impl TuneMode {
    /// `off`, `quick` or `full` (case-insensitive); anything else is an error naming `field`.
    pub fn parse(field: &str, text: &str) -> Result<TuneMode> {
        match text.trim().to_ascii_lowercase().as_str() {
            "off" | "0" | "false" => Ok(TuneMode::Off),
            "quick" | "on" | "1" | "true" => Ok(TuneMode::Quick),
            "full" => Ok(TuneMode::Full),
            other => Err(Error::config(field, format!("unknown tuning mode `{other}`; allowed: off, quick, full"))),
        }
    }

    /// Timed launches per candidate (after one untimed warm-up, which also runs the probe).
    pub fn reps(self) -> u32 {
        match self {
            TuneMode::Off => 0,
            TuneMode::Quick => 3,
            TuneMode::Full => 10,
        }
    }

    /// Most time one bucket's tuning may spend timing (candidates whose first launch already
    /// exceeds it are timed once); bounds the pause at a new shape.
    pub fn budget_ns(self) -> f64 {
        match self {
            TuneMode::Off => 0.0,
            TuneMode::Quick => 0.2e9,
            TuneMode::Full => 2.0e9,
        }
    }
}

/// Where tuned choices are kept ([`GpuOptions::tune_cache`]).
///
/// [`GpuOptions::tune_cache`]: super::GpuOptions::tune_cache
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub enum TuneStore {
    /// `EQUIMODAL_TUNE_CACHE`, else `$XDG_CACHE_HOME/equimodal/tune.json`, else
    /// `$HOME/.cache/equimodal/tune.json`; in memory only when none of those is set.
    #[default]
    Default,
    /// This file (an embedding program's own).
    File(PathBuf),
    /// This process only: nothing is read or written.
    Memory,
}

impl TuneStore {
    /// The file this store reads and writes, if any.
    pub fn path(&self) -> Option<PathBuf> {
        match self {
            TuneStore::File(p) => Some(p.clone()),
            TuneStore::Memory => None,
            TuneStore::Default => {
                let var = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty()).map(PathBuf::from);
                if let Some(p) = var("EQUIMODAL_TUNE_CACHE") {
                    return Some(p);
                }
                let dir = var("XDG_CACHE_HOME").or_else(|| var("HOME").map(|h| h.join(".cache")))?;
                Some(dir.join("equimodal").join("tune.json"))
            }
        }
    }
}

/// One tuned bucket: the variant chosen and what each candidate measured.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TuneEntry {
    /// The chosen variant's name.
    pub variant: String,
    /// Median microseconds per candidate; `None` for a candidate that failed the probe.
    pub us: BTreeMap<String, Option<f64>>,
    /// The problem that was timed (the bucket's first), for the table.
    pub problem: String,
}

/// The cache file: per device fingerprint, per `family/bucket` key, the entry.
#[derive(Debug, Default, Serialize, Deserialize)]
struct CacheFile {
    format: u32,
    engine: String,
    /// Hash of every kernel source: a choice timed on other kernels is stale.
    sources: String,
    devices: BTreeMap<String, BTreeMap<String, TuneEntry>>,
}

/// The per-device tuner state held by the GPU context.
pub(crate) struct Tuner {
    mode: TuneMode,
    path: Option<PathBuf>,
    device: String,
    entries: BTreeMap<String, TuneEntry>,
}

/// An exclusive lock on `<cache>.lock` beside the cache file, held until dropped; `None`
/// where the lock cannot be taken (the write is still atomic, only the first-writer rule
/// may then race).
fn lock_file(path: &Path) -> Option<std::fs::File> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).ok()?;
    }
    let f = std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(path.with_extension("json.lock")).ok()?;
    f.lock().ok()?;
    Some(f)
}

/// FNV-1a over every kernel source: changes whenever any WGSL file does.
fn sources_hash() -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for s in Shader::ALL {
        for b in s.source().unwrap_or("").bytes() {
            h = (h ^ b as u64).wrapping_mul(0x0100_0000_01b3);
        }
    }
    format!("{h:016x}")
}

fn engine() -> String {
    format!("equimodal {}", env!("CARGO_PKG_VERSION"))
}

/// Read a cache file; `Ok(None)` when there is none. Stale or unreadable files are errors
/// (the caller warns and ignores them).
fn read_file(path: &Path) -> std::result::Result<Option<CacheFile>, String> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("cannot read it ({e})")),
    };
    let file: CacheFile = serde_json::from_str(&text).map_err(|e| format!("it is not a tuning cache ({e})"))?;
    if file.format != FORMAT || file.engine != engine() || file.sources != sources_hash() {
        return Err(format!(
            "it is stale (written by {} with kernel sources {}, format {}; this is {} with {}, format {FORMAT})",
            file.engine,
            file.sources,
            file.format,
            engine(),
            sources_hash()
        ));
    }
    Ok(Some(file))
}

impl Tuner {
    pub(crate) fn new(mode: TuneMode, store: &TuneStore, info: &wgpu::AdapterInfo) -> Tuner {
        let device = format!("{} | {:?} | {} {} | {:04x}:{:04x}", info.name, info.backend, info.driver, info.driver_info, info.vendor, info.device);
        let path = if mode == TuneMode::Off { None } else { store.path() };
        let mut t = Tuner { mode, path, device, entries: BTreeMap::new() };
        if let Some(p) = &t.path {
            match read_file(p) {
                Ok(Some(mut f)) => t.entries = f.devices.remove(&t.device).unwrap_or_default(),
                Ok(None) => {}
                Err(why) => eprintln!("warning: tuning cache {}: {why}; ignoring it (it is rewritten as kernels are tuned)", p.display()),
            }
        }
        t
    }

    /// Take this device's entries from the file that this process does not have yet (an
    /// unreadable or stale file adds nothing; the warning was given at start).
    fn adopt_from_file(&mut self) {
        let Some(path) = &self.path else { return };
        if let Ok(Some(mut f)) = read_file(path) {
            for (k, v) in f.devices.remove(&self.device).unwrap_or_default() {
                self.entries.entry(k).or_insert(v);
            }
        }
    }

    /// Merge this device's entries into the file (re-read first: another process may have
    /// written since) and replace it atomically.
    fn save(&self) -> std::result::Result<(), String> {
        let Some(path) = &self.path else { return Ok(()) };
        let mut file = read_file(path).ok().flatten().unwrap_or_else(|| CacheFile { format: FORMAT, engine: engine(), sources: sources_hash(), ..Default::default() });
        let mine = file.devices.entry(self.device.clone()).or_default();
        for (k, v) in &self.entries {
            mine.insert(k.clone(), v.clone());
        }
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {} ({e})", dir.display()))?;
        }
        let tmp = path.with_extension(format!("json.{}.tmp", std::process::id()));
        let text = serde_json::to_string_pretty(&file).map_err(|e| e.to_string())?;
        std::fs::write(&tmp, text).map_err(|e| format!("cannot write {} ({e})", tmp.display()))?;
        std::fs::rename(&tmp, path).map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            format!("cannot replace it ({e})")
        })
    }
}

impl Gpu {
    /// The tuning mode this context runs with.
    pub fn tune_mode(&self) -> TuneMode {
        self.tuner().mode
    }

    /// The cache file tuned choices are kept in (`None`: this process only, or tuning off).
    pub fn tune_cache_path(&self) -> Option<PathBuf> {
        self.tuner().path.clone()
    }

    /// The tuned choice for `family/bucket`, if one is known (always `None` with tuning off).
    /// A bucket this process has not seen is looked up in the cache file again first: another
    /// process (a run of the same sweep) may have tuned it since this one started.
    pub(crate) fn tune_lookup(&self, family: &str, bucket: &str) -> Option<TuneEntry> {
        let mut t = self.tuner();
        if t.mode == TuneMode::Off {
            return None;
        }
        let key = format!("{family}/{bucket}");
        if !t.entries.contains_key(&key) {
            t.adopt_from_file();
        }
        t.entries.get(&key).cloned()
    }

    /// Remember a tuned choice and write the cache file; returns the choice in force. The
    /// first valid choice written for a bucket wins: if another process wrote one of the
    /// `valid` variants while this one was timing, that one is adopted, so every run sharing
    /// the file runs the same variant (the file is locked from that check to the write); an
    /// entry naming anything else is replaced. A file that cannot be written is a warning,
    /// not an error: the choice still holds for this process.
    pub(crate) fn tune_record(&self, family: &str, bucket: &str, entry: TuneEntry, valid: &[&str]) -> TuneEntry {
        let mut t = self.tuner();
        let key = format!("{family}/{bucket}");
        let _lock = t.path.as_deref().and_then(lock_file);
        t.adopt_from_file();
        if let Some(theirs) = t.entries.get(&key).filter(|e| valid.contains(&e.variant.as_str())) {
            return theirs.clone();
        }
        t.entries.insert(key, entry.clone());
        if let Err(why) = t.save() {
            let p = t.path.as_deref().map(|p| p.display().to_string()).unwrap_or_default();
            eprintln!("warning: tuning cache {p}: {why}; the choice holds for this process only");
        }
        entry
    }

    /// Every choice known for this device (`family/bucket` -> entry), loaded or tuned.
    pub fn tune_table(&self) -> BTreeMap<String, TuneEntry> {
        self.tuner().entries.clone()
    }

    /// Held while a family tunes a bucket (look up again after taking it: another thread
    /// may have tuned the bucket meanwhile). Tuning launches only fixed variants, so a
    /// holder never needs it twice.
    pub(crate) fn tuning_guard(&self) -> std::sync::MutexGuard<'_, ()> {
        self.0.tuning.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn tuner(&self) -> std::sync::MutexGuard<'_, Tuner> {
        self.0.tuner.lock().unwrap_or_else(|e| e.into_inner())
    }
}
