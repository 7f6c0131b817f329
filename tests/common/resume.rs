//! Exact resume through the CLI: a run killed after its first checkpoint and resumed with
//! `--resume` must reproduce the uninterrupted run (shared by tests/train/trainer.rs and
//! tests/methods/baselines.rs).
use std::path::{Path, PathBuf};

/// A fresh temporary folder name for this test process.
pub fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("equimodal-test-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

/// The run's `metrics.jsonl`, one value per line.
pub fn log_lines(dir: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(dir.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// `equimodal train --quiet --out DIR --set ...` (plus `extra` flags) as a child process.
pub fn cli(sets: &[String], dir: &Path, extra: &[&str]) -> std::process::Command {
    let mut c = super::equimodal_bin();
    c.args(["train", "--quiet", "--out"]).arg(dir).args(extra);
    for s in sets {
        c.args(["--set", s]);
    }
    c.stdout(std::process::Stdio::null()).stderr(std::process::Stdio::piped());
    c
}

/// A log line without the fields that measure the process rather than the computation
/// (timings, memory high-water marks): they differ between any two runs.
pub fn untimed(line: &serde_json::Value) -> serde_json::Value {
    let mut l = line.clone();
    if let Some(t) = l["train"].as_object_mut() {
        t.remove("seconds");
        t.remove("data_wait_share");
    }
    // memory high-water marks measure the process (what its pool had cached before the
    // epoch), not the computation: a resumed process starts with an empty pool
    if let Some(o) = l.as_object_mut() {
        o.remove("memory");
    }
    l
}

/// Run `sets` uninterrupted through the CLI; run it again, kill it (SIGKILL) once its first
/// checkpoint exists, and resume it with `--resume`. The resumed run must keep the log lines
/// of the epochs its checkpoint holds byte for byte, run only the remaining epochs, and end
/// with the uninterrupted run's log (up to timings) and its final checkpoint, byte for byte.
pub fn resume_through_the_cli_is_exact(name: &str, sets: &[String], epochs: usize) {
    resume_through_the_cli_is_exact_killed_after(name, sets, epochs, 0)
}

/// As [`resume_through_the_cli_is_exact`], killing the run only once `logged` epochs are in
/// its log (so that its checkpoint holds at least `logged − 1` epochs: state that only
/// matters from a later epoch on, e.g. PMR's prototype momentum, is then exercised).
pub fn resume_through_the_cli_is_exact_killed_after(name: &str, sets: &[String], epochs: usize, logged: usize) {
    let ref_dir = tmp(&format!("resume-ref-{name}"));
    let out = cli(sets, &ref_dir, &[]).output().unwrap();
    assert!(out.status.success(), "{name}: {}", String::from_utf8_lossy(&out.stderr));
    let ref_lines = log_lines(&ref_dir);
    assert_eq!(ref_lines.len(), epochs);

    let dir = tmp(&format!("resume-kill-{name}"));
    let mut child = cli(sets, &dir, &[]).stderr(std::process::Stdio::null()).spawn().unwrap();
    let ckpt = dir.join("checkpoints/last.safetensors");
    let t0 = std::time::Instant::now();
    let logged_lines = || std::fs::read_to_string(dir.join("metrics.jsonl")).map(|t| t.lines().count()).unwrap_or(0);
    while !ckpt.exists() || logged_lines() < logged {
        assert!(t0.elapsed().as_secs() < 300, "{name}: no checkpoint written");
        if let Ok(Some(st)) = child.try_wait() {
            panic!("{name}: training exited before it could be killed: {st}");
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    child.kill().unwrap();
    let _ = child.wait();
    let before = std::fs::read_to_string(dir.join("metrics.jsonl")).unwrap();
    assert!(before.lines().count() < epochs, "{name}: the run finished before the kill; make it longer");

    let out = cli(sets, &dir, &["--resume"]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{name}: {err}");
    // "resuming from ... after epoch K" (1-based): the checkpoint holds epochs 1..=K
    let k: usize = err
        .split("after epoch ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{name}: the resumed run did not say where it resumed: {err}"));
    assert!(k >= 1 && k >= logged.saturating_sub(1) && k < epochs, "{name}: resumed after epoch {k}");
    let after = std::fs::read_to_string(dir.join("metrics.jsonl")).unwrap();
    let kept: Vec<&str> = before.lines().take(k).collect();
    assert_eq!(after.lines().take(k).collect::<Vec<_>>(), kept, "{name}: lines of the checkpointed epochs were rewritten");
    let ran = err.lines().filter(|l| l.trim_start().starts_with("epoch ")).count();
    assert_eq!(ran, epochs - k, "{name}: the resumed run must train only epochs {}..={epochs}: {err}", k + 1);
    let lines = log_lines(&dir);
    assert_eq!(lines.len(), epochs, "{name}: every epoch logged once");
    for (a, b) in lines.iter().zip(&ref_lines) {
        assert_eq!(untimed(a), untimed(b), "{name}: epoch {} differs from the uninterrupted run", a["epoch"]);
    }
    let final_bytes = |d: &Path| std::fs::read(d.join("checkpoints/last.safetensors")).unwrap();
    assert!(final_bytes(&dir) == final_bytes(&ref_dir), "{name}: the final checkpoints differ");
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_dir_all(&ref_dir);
}

