//! Running a sweep: each run is a `train` child process of this same binary (a failing run
//! cannot take the others down, and several processes share one GPU), at most `parallel` at
//! once, finished runs skipped, interrupted ones resumed; or one array task of a Slurm job.
use super::sweep::{RunSpec, SlurmOptions, Sweep};
use crate::error::{Error, Result};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};

/// The file that marks a folder as a sweep's output (which sweep it belongs to).
pub const MARKER: &str = "sweep.json";

/// How one run ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// finished earlier (its `summary.txt` exists): not run again
    Skipped,
    /// ran to its end (exit status 0)
    Finished,
    /// exit status and the tail of its log
    Failed(String),
}

/// Options the parent passes on to every child (`--adapter`, `--backend`).
#[derive(Clone, Debug, Default)]
pub struct ChildArgs(pub Vec<String>);

/// Claim `sweep.out` for this sweep: create it with a marker, or check that its marker names
/// this sweep. A folder that holds something else, or another sweep's runs, is an error.
pub fn claim(sweep: &Sweep) -> Result<()> {
    let out = &sweep.out;
    let marker = out.join(MARKER);
    let want = serde_json::json!({"sweep": sweep.name, "file": sweep.file.display().to_string()});
    if marker.exists() {
        let text = std::fs::read_to_string(&marker).map_err(|e| Error::io(&marker, e))?;
        let have: serde_json::Value = serde_json::from_str(&text).map_err(|e| Error::data(marker.display().to_string(), e.to_string()))?;
        if have["sweep"] != want["sweep"] {
            return Err(Error::config(
                "out",
                format!("{} belongs to sweep `{}` ({}), not `{}`; choose another --out", out.display(), have["sweep"].as_str().unwrap_or("?"), have["file"].as_str().unwrap_or("?"), sweep.name),
            ));
        }
        return Ok(());
    }
    if out.is_dir() && std::fs::read_dir(out).map_err(|e| Error::io(out, e))?.next().is_some() {
        return Err(Error::config("out", format!("{} exists and is not a sweep's folder (no {MARKER}); choose another --out", out.display())));
    }
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    std::fs::write(&marker, format!("{want}\n")).map_err(|e| Error::io(&marker, e))
}

/// The run's output folder: `<sweep.out>/<run.name>`.
pub fn run_dir(sweep: &Sweep, run: &RunSpec) -> PathBuf {
    sweep.out.join(&run.name)
}

/// Run one run to its end (or skip it when it finished before). The child's output goes to
/// `RUN_DIR/train.log`.
pub fn run_one(sweep: &Sweep, run: &RunSpec, child: &ChildArgs) -> Result<Outcome> {
    let dir = run_dir(sweep, run);
    if finished_as_specified(sweep, run)? {
        return Ok(Outcome::Skipped);
    }
    let resume = dir.join("checkpoints/last.safetensors").exists();
    if !resume && dir.exists() {
        // killed before its first checkpoint: nothing to keep but partial logs (everything a
        // run writes, so the restart does not find "a run" there)
        for p in crate::train::rundir::run_outputs(&dir) {
            let _ = if p.is_dir() { std::fs::remove_dir_all(&p) } else { std::fs::remove_file(&p) };
        }
    }
    std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
    let log_path = dir.join("train.log");
    let log = std::fs::OpenOptions::new().create(true).append(true).open(&log_path).map_err(|e| Error::io(&log_path, e))?;
    let exe = std::env::current_exe().map_err(|e| Error::Other(format!("cannot find this program's path to start runs: {e}")))?;
    let mut cmd = Command::new(exe);
    cmd.args(&child.0).args(["train", "--quiet", "--out"]).arg(&dir);
    if let Some(c) = &run.config {
        cmd.arg("--config").arg(c);
    }
    for s in &run.sets {
        cmd.arg("--set").arg(s);
    }
    if resume {
        cmd.arg("--resume");
    }
    let err_log = log.try_clone().map_err(|e| Error::io(&log_path, e))?;
    let status = cmd.stdin(Stdio::null()).stdout(log).stderr(err_log).status().map_err(|e| Error::Other(format!("run `{}`: cannot start: {e}", run.name)))?;
    if status.success() {
        return Ok(Outcome::Finished);
    }
    let text = std::fs::read_to_string(&log_path).unwrap_or_default();
    let tail: Vec<&str> = text.lines().rev().take(3).collect();
    Ok(Outcome::Failed(format!("{status}: {}", tail.into_iter().rev().collect::<Vec<_>>().join(" | "))))
}

/// Whether `run` finished before (its `summary.txt` exists) with the configuration the sweep
/// now gives it. A run that finished with another one (the sweep file changed since) is an
/// error: skipping it would report the old run under the new setting.
pub fn finished_as_specified(sweep: &Sweep, run: &RunSpec) -> Result<bool> {
    let dir = run_dir(sweep, run);
    if !dir.join("summary.txt").exists() {
        return Ok(false);
    }
    let stored_path = dir.join("config.toml");
    let stored: toml::Table = std::fs::read_to_string(&stored_path)
        .map_err(|e| Error::io(&stored_path, e))?
        .parse()
        .map_err(|e| Error::data(stored_path.display().to_string(), format!("invalid TOML: {e}")))?;
    let (_, text) = crate::config::load(run.config.as_deref(), &run.sets)?;
    let now: toml::Table = text.parse().map_err(|e| Error::Other(format!("run `{}`: its configuration does not parse back: {e}", run.name)))?;
    if stored != now {
        return Err(Error::config(
            "grid",
            format!("run `{}` finished with another configuration than the sweep gives it now ({}); delete that run folder to run it again, or choose another --out", run.name, stored_path.display()),
        ));
    }
    Ok(true)
}

/// Run every run, `sweep.parallel` at once, with a progress bar over the whole sweep.
/// Returns each run's outcome; a failed run does not stop the others. A finished run whose
/// configuration the sweep has changed since stops the sweep before any run starts.
pub fn run_all(sweep: &Sweep, runs: &[RunSpec], child: &ChildArgs, progress: bool) -> Result<Vec<(String, Outcome)>> {
    claim(sweep)?;
    for r in runs {
        finished_as_specified(sweep, r)?;
    }
    let pb = if progress { indicatif::ProgressBar::new(runs.len() as u64) } else { indicatif::ProgressBar::hidden() };
    pb.set_style(
        indicatif::ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} runs  {msg}  eta {eta}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    pb.set_prefix(sweep.name.clone());
    let queue = Arc::new(Mutex::new(runs.iter().cloned().collect::<std::collections::VecDeque<_>>()));
    let results = Arc::new(Mutex::new(Vec::new()));
    let running = Arc::new(Mutex::new(std::collections::BTreeSet::new()));
    std::thread::scope(|s| {
        for _ in 0..sweep.parallel.min(runs.len()).max(1) {
            let (queue, results, running, pb) = (queue.clone(), results.clone(), running.clone(), pb.clone());
            s.spawn(move || {
                while let Some(run) = queue.lock().ok().and_then(|mut q| q.pop_front()) {
                    let show = |r: &std::collections::BTreeSet<String>| r.iter().cloned().collect::<Vec<_>>().join(", ");
                    if let Ok(mut r) = running.lock() {
                        r.insert(run.name.clone());
                        pb.set_message(show(&r));
                    }
                    let outcome = run_one(sweep, &run, child).unwrap_or_else(|e| Outcome::Failed(e.to_string()));
                    if let Outcome::Failed(why) = &outcome {
                        pb.println(format!("run {} failed: {why}", run.name));
                    }
                    if let Ok(mut r) = running.lock() {
                        r.remove(&run.name);
                        pb.set_message(show(&r));
                    }
                    pb.inc(1);
                    if let Ok(mut res) = results.lock() {
                        res.push((run.index, run.name.clone(), outcome));
                    }
                }
            });
        }
    });
    pb.finish_and_clear();
    let mut res = Arc::try_unwrap(results).map_err(|_| Error::Other("sweep threads still hold results".into()))?.into_inner().map_err(|_| Error::Other("sweep result lock poisoned".into()))?;
    res.sort_by_key(|r| r.0);
    Ok(res.into_iter().map(|(_, n, o)| (n, o)).collect())
}

/// A Slurm batch script that runs the sweep as a job array, one run per array task.
pub fn sbatch_script(sweep: &Sweep, runs: usize, child: &ChildArgs) -> Result<String> {
    let exe = std::env::current_exe().map_err(|e| Error::Other(format!("cannot find this program's path: {e}")))?;
    let out = std::path::absolute(&sweep.out).map_err(|e| Error::io(&sweep.out, e))?;
    let SlurmOptions { partition, time, gpus_per_task, cpus_per_task, mem, max_parallel, extra } = &sweep.slurm;
    let mut s = String::from("#!/bin/bash\n");
    s.push_str(&format!("# equimodal sweep `{}`: {runs} runs, one per array task\n", sweep.name));
    s.push_str(&format!("#SBATCH --job-name={}\n", sweep.name));
    let throttle = max_parallel.map(|m| format!("%{m}")).unwrap_or_default();
    s.push_str(&format!("#SBATCH --array=0-{}{throttle}\n", runs.saturating_sub(1)));
    s.push_str(&format!("#SBATCH --output={}/slurm-%A_%a.out\n", out.display()));
    if let Some(p) = partition {
        s.push_str(&format!("#SBATCH --partition={p}\n"));
    }
    if let Some(t) = time {
        s.push_str(&format!("#SBATCH --time={t}\n"));
    }
    if *gpus_per_task > 0 {
        s.push_str(&format!("#SBATCH --gres=gpu:{gpus_per_task}\n"));
    }
    if let Some(c) = cpus_per_task {
        s.push_str(&format!("#SBATCH --cpus-per-task={c}\n"));
    }
    if let Some(m) = mem {
        s.push_str(&format!("#SBATCH --mem={m}\n"));
    }
    for e in extra {
        s.push_str(&format!("#SBATCH {e}\n"));
    }
    let quote = |p: &Path| format!("'{}'", p.display().to_string().replace('\'', "'\\''"));
    let child_args: String = child.0.iter().map(|a| format!(" '{}'", a.replace('\'', "'\\''"))).collect();
    s.push_str(&format!(
        "exec {}{child_args} sweep {} --out {} --task \"$SLURM_ARRAY_TASK_ID\"\n",
        quote(&exe),
        quote(&sweep.file),
        quote(&out)
    ));
    Ok(s)
}

/// Write the batch script into the sweep's folder (claimed first); with `submit`, hand it to
/// `sbatch` and return its answer.
pub fn write_slurm(sweep: &Sweep, runs: usize, child: &ChildArgs, submit: bool) -> Result<(PathBuf, Option<String>)> {
    claim(sweep)?;
    let path = sweep.out.join("sweep.sbatch");
    std::fs::write(&path, sbatch_script(sweep, runs, child)?).map_err(|e| Error::io(&path, e))?;
    if !submit {
        return Ok((path, None));
    }
    let out = Command::new("sbatch").arg(&path).output().map_err(|e| Error::Other(format!("cannot run sbatch (is Slurm installed and on PATH?): {e}")))?;
    if !out.status.success() {
        return Err(Error::Other(format!("sbatch {} failed: {}", path.display(), String::from_utf8_lossy(&out.stderr).trim())));
    }
    Ok((path, Some(String::from_utf8_lossy(&out.stdout).trim().to_string())))
}
