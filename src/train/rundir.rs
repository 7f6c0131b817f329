//! Run-folder ownership: one folder holds one run.
//!
//! - A lock file (`.lock`: the owner's pid and process start time) keeps a second trainer
//!   out. A lock whose process is gone (or whose pid now belongs to a different process,
//!   told apart by its start time) is stale and taken over with a note.
//! - Starting over a folder that already holds a run needs `--resume` or `--force`;
//!   `--force` names what it removes.
//! - `--resume` needs a checkpoint, and a stored config equal to the new one except for
//!   `train.epochs` (`--allow-config-change` overrides; the trainer logs the change).
//! - Temporary files of writes a killed process left behind are removed once the lock is held.
use super::checkpoint;
use crate::error::{Error, Result};
use std::io::Write;
use std::path::{Path, PathBuf};

/// Name of the lock file in the run folder.
pub const LOCK_FILE: &str = ".lock";
/// Files that mark a folder as holding a run, all of which `--force` replaces (the folders
/// below count too, when not empty). Logs a caller writes before starting the trainer (a
/// sweep's `train.log`) do not.
const RUN_FILES: [&str; 5] = ["metrics.jsonl", "metrics.csv", "config.toml", "summary.txt", super::probe::PROBE_FILE];
const CHECKPOINT_DIR: &str = "checkpoints";
/// Sub-directory of a run directory that receives the charts (`report` writes them).
pub const CHARTS_DIR: &str = "charts";
/// Folders a run writes: its checkpoints, its charts and its TensorBoard events.
const RUN_DIRS: [&str; 3] = [CHECKPOINT_DIR, CHARTS_DIR, super::logs::TB_DIR];

/// How the caller wants to treat an existing run in the folder.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Claim {
    /// Continue the run in the folder (`--resume`).
    pub resume: bool,
    /// Replace the run in the folder (`--force`).
    pub force: bool,
}

/// Held while training; removes the lock file when dropped.
#[derive(Debug)]
pub struct RunLock {
    path: PathBuf,
    token: String,
    /// With `--force`: the old run's files, removed by [`RunLock::replace_old_run`].
    old_run: Vec<PathBuf>,
}

impl RunLock {
    /// Remove the run `--force` replaces. Called once the new run has been built, so a
    /// config or data error leaves the old run intact.
    pub fn replace_old_run(&mut self) -> Result<()> {
        if self.old_run.is_empty() {
            return Ok(());
        }
        eprintln!(
            "--force: replacing the run in {}: removing {}",
            self.path.parent().unwrap_or(Path::new(".")).display(),
            names(&self.old_run)
        );
        for p in std::mem::take(&mut self.old_run) {
            let r = if p.is_dir() { std::fs::remove_dir_all(&p) } else { std::fs::remove_file(&p) };
            r.map_err(|e| Error::io(&p, e))?;
        }
        Ok(())
    }
}

impl Drop for RunLock {
    fn drop(&mut self) {
        // only our own lock: a --force'd takeover by someone else must survive
        if std::fs::read_to_string(&self.path).is_ok_and(|t| t == self.token) {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Take the folder for one run: create it, lock it, clear stale temporaries, and check
/// that what is in it may be reused as `claim` asks. With `force`, the old run's files are
/// noted for [`RunLock::replace_old_run`].
pub fn claim(dir: &Path, claim: Claim) -> Result<RunLock> {
    if dir.exists() && !dir.is_dir() {
        return Err(Error::config("--out", format!("{} exists and is not a folder", dir.display())));
    }
    if claim.resume && !dir.is_dir() {
        return Err(Error::io(dir, std::io::Error::new(std::io::ErrorKind::NotFound, "--resume: no such run folder")));
    }
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    // leftovers of dead writers first: on a full disk they are what keeps the lock from
    // being written; with the lock held, any remaining temporary file is stale too
    clean_temps(dir, pid_alive)?;
    let mut lock = acquire_lock(dir)?;
    clean_temps(dir, |_| false)?;
    let existing = existing_run_files(dir);
    if claim.resume {
        let last = dir.join(CHECKPOINT_DIR).join("last.safetensors");
        if last.exists() && !last.is_file() {
            return Err(Error::data(last.display().to_string(), "--resume: not a checkpoint file (a damaged run folder); remove it, or replace the run with --force"));
        }
        if !last.is_file() {
            return Err(Error::data(
                last.display().to_string(),
                "--resume: no checkpoint to resume from (run without --resume to start a new run here)",
            ));
        }
    } else if !existing.is_empty() {
        if !claim.force {
            return Err(Error::config(
                "--out",
                format!(
                    "{} already holds a run ({}); pass --resume to continue it, --force to replace it, or choose another --out",
                    dir.display(),
                    names(&existing)
                ),
            ));
        }
        lock.old_run = existing;
    }
    Ok(lock)
}

fn names(paths: &[PathBuf]) -> String {
    paths.iter().filter_map(|p| p.file_name()).map(|n| n.to_string_lossy().into_owned()).collect::<Vec<_>>().join(", ")
}

/// What a run left in `dir` (the files and the non-empty folders that mark a run), for a
/// caller that restarts a run killed before its first checkpoint (a sweep) to clear first.
pub fn run_outputs(dir: &Path) -> Vec<PathBuf> {
    existing_run_files(dir)
}

fn existing_run_files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = RUN_FILES.iter().map(|f| dir.join(f)).filter(|p| p.exists()).collect();
    for d in RUN_DIRS {
        let d = dir.join(d);
        if std::fs::read_dir(&d).is_ok_and(|mut e| e.next().is_some()) {
            v.push(d);
        }
    }
    v
}

/// Whether a process with this pid runs (Linux: /proc; elsewhere assumed, to stay safe).
fn pid_alive(pid: u32) -> bool {
    !Path::new("/proc/self").exists() || Path::new(&format!("/proc/{pid}")).exists()
}

fn clean_temps(dir: &Path, keep: impl Fn(u32) -> bool + Copy) -> Result<()> {
    for d in [dir.to_path_buf(), dir.join(CHECKPOINT_DIR)] {
        let (files, bytes) = checkpoint::remove_stale_temps(&d, keep)?;
        if !files.is_empty() {
            eprintln!(
                "removed {} stale temporary file(s) ({:.1} MB) left by an interrupted write in {}",
                files.len(),
                bytes as f64 / 1e6,
                d.display()
            );
        }
    }
    Ok(())
}

/// This process's lock token: pid and start time (pids are reused; the pair is not).
fn own_token() -> String {
    let pid = std::process::id();
    format!("pid {pid} start {}\n", process_start(pid).unwrap_or_default())
}

/// Start time of a process (Linux: field 22 of /proc/<pid>/stat, in clock ticks since boot).
/// None where /proc is missing (then a lock is only stale if its pid's folder is gone).
fn process_start(pid: u32) -> Option<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // the command name (field 2) may contain spaces and parentheses: skip past its last ')'
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19).map(str::to_string)
}

/// Whether the process that wrote `token` still runs. Unknown formats count as alive: a
/// lock we cannot read is never silently taken over.
fn holder_alive(token: &str) -> bool {
    let mut it = token.split_whitespace();
    let (Some("pid"), Some(pid), Some("start")) = (it.next(), it.next().and_then(|p| p.parse::<u32>().ok()), it.next()) else {
        return true;
    };
    let start = it.next().unwrap_or("");
    if !Path::new("/proc/self").exists() {
        return true;
    }
    match process_start(pid) {
        None => false,
        Some(s) => start.is_empty() || s == start,
    }
}

fn acquire_lock(dir: &Path) -> Result<RunLock> {
    let path = dir.join(LOCK_FILE);
    let token = own_token();
    for _ in 0..2 {
        match std::fs::OpenOptions::new().write(true).create_new(true).open(&path) {
            Ok(mut f) => {
                f.write_all(token.as_bytes()).and_then(|()| f.sync_all()).map_err(|e| Error::io(&path, e))?;
                return Ok(RunLock { path, token, old_run: Vec::new() });
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => take_over_if_stale(&path)?,
            Err(e) => return Err(Error::io(&path, e)),
        }
    }
    Err(Error::data(path.display().to_string(), "could not take the lock (another trainer took it first)"))
}

/// Remove a stale lock (its process is gone); error when its owner still runs.
fn take_over_if_stale(path: &Path) -> Result<()> {
    let held = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(Error::io(path, e)),
    };
    if holder_alive(&held) {
        return Err(Error::data(
            path.display().to_string(),
            format!(
                "the run folder is in use by another trainer ({}); wait for it to finish, or use another --out (if no trainer runs, delete this lock file)",
                held.trim()
            ),
        ));
    }
    // rename first, so two processes seeing the same stale lock cannot both delete a new one
    let aside = path.with_extension(format!("stale-{}", std::process::id()));
    match std::fs::rename(path, &aside) {
        Ok(()) => {
            let _ = std::fs::remove_file(&aside);
            eprintln!("taking over the stale lock {} ({}: no longer running)", path.display(), held.trim());
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io(path, e)),
    }
}

/// Check that a checkpoint may be resumed with `cfg`: the stored config must match
/// (except `train.epochs`) unless `allow_change`. Returns the note the trainer records in
/// the next log line when the config did change.
pub fn check_resume(
    file: &Path,
    meta: &serde_json::Value,
    cfg: &crate::config::Config,
    cfg_text: &str,
    allow_change: bool,
) -> Result<Option<serde_json::Value>> {
    let f = file.display().to_string();
    let stored = meta.get("config").and_then(|c| c.as_str()).ok_or_else(|| Error::data(&f, "metadata has no config"))?;
    let changes = config_changes(stored, cfg_text).map_err(|e| Error::data(&f, e))?;
    checkpoint_epoch(file, meta, cfg)?;
    if changes.is_empty() {
        return Ok(None);
    }
    if !allow_change {
        return Err(Error::config(
            "--resume",
            format!(
                "the config differs from the one {f} was trained with: {}; resume with the same config, or pass --allow-config-change to continue anyway",
                changes.join("; ")
            ),
        ));
    }
    eprintln!("--allow-config-change: resuming with a changed config: {}", changes.join("; "));
    Ok(Some(serde_json::json!({"from": f, "config_changes": changes})))
}

/// The last completed epoch stored in a checkpoint, checked against the config: a run can
/// be extended (more epochs), but a checkpoint past the configured end is an error rather
/// than a resume that silently runs nothing.
pub fn checkpoint_epoch(file: &Path, meta: &serde_json::Value, cfg: &crate::config::Config) -> Result<usize> {
    let f = file.display().to_string();
    let epoch = meta.get("epoch").and_then(|e| e.as_u64()).ok_or_else(|| Error::data(&f, "metadata has no epoch"))?;
    let epochs = cfg.train.epochs as u64;
    if epoch >= epochs {
        return Err(Error::data(
            &f,
            format!(
                "the checkpoint is after epoch {}, but train.epochs is {epochs}; raise train.epochs to continue the run",
                epoch.saturating_add(1)
            ),
        ));
    }
    Ok(epoch as usize)
}

/// The config fields that differ between a checkpoint's stored config and the new one,
/// ignoring `train.epochs` (extending a run is what resume is for). Values are shown as
/// `field: old -> new`. A field set on one side only counts when its value differs from
/// the default (the stored text holds only what the user set).
pub fn config_changes(stored: &str, new: &str) -> std::result::Result<Vec<String>, String> {
    let a: toml::Table = stored.parse().map_err(|e| format!("stored config: {e}"))?;
    let b: toml::Table = new.parse().map_err(|e| format!("new config: {e}"))?;
    let (mut fa, mut fb) = (Vec::new(), Vec::new());
    crate::config::flatten("", &toml::Value::Table(a.clone()), &mut fa);
    crate::config::flatten("", &toml::Value::Table(b.clone()), &mut fb);
    let ma: std::collections::BTreeMap<_, _> = fa.into_iter().collect();
    let mb: std::collections::BTreeMap<_, _> = fb.into_iter().collect();
    let keys: std::collections::BTreeSet<&String> = ma.keys().chain(mb.keys()).collect();
    let show = |v: Option<&String>| v.cloned().unwrap_or_else(|| "(default)".into());
    Ok(keys
        .into_iter()
        .filter(|k| k.as_str() != "train.epochs" && ma.get(*k) != mb.get(*k))
        .filter(|k| match (ma.get(*k), mb.get(*k)) {
            (None, Some(v)) => !crate::config::sets_default(&a, k, v),
            (Some(v), None) => !crate::config::sets_default(&b, k, v),
            _ => true,
        })
        .map(|k| format!("{k}: {} -> {}", show(ma.get(k)), show(mb.get(k))))
        .collect())
}

