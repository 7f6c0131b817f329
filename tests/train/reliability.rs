//! Hostile inputs and faults, through the command line as a user meets them: every case
//! asserts the exit code, that nothing panicked, and that the message names the file or
//! field at fault. Covers run-folder ownership (reuse, --force, the lock, stale locks),
//! resume checks (changed config, missing or corrupt checkpoint, edited epoch), the
//! kill-during-checkpoint loop, a full disk (a real tmpfs when this runs as root, else
//! skipped with a reason; the `EQUIMODAL_FAULT` injection always runs), size checks and
//! config validation.
use crate::common;
use equimodal::data::HostTensor;
use equimodal::train::{checkpoint, rundir};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

const TINY: [&str; 7] = [
    "data.n_train=64",
    "data.n_test=32",
    "model.hidden=[16]",
    "train.batch_size=32",
    "train.workers=1",
    "method.name=joint",
    "train.epochs=1",
];

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("equimodal-rel-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn bin() -> Command {
    let mut c = crate::common::equimodal_bin();
    c.env_remove("EQUIMODAL_FAULT").stdin(Stdio::null());
    c
}

/// `train --quiet --out DIR` with the tiny sets, then `extra` (later --set wins).
fn train_cmd(dir: &Path, extra: &[&str]) -> Command {
    let mut c = bin();
    c.args(["train", "--quiet", "--out"]).arg(dir);
    for s in TINY {
        c.args(["--set", s]);
    }
    c.args(extra);
    c
}

struct Run {
    code: Option<i32>,
    out: String,
    err: String,
}

fn run(mut c: Command) -> Run {
    let o: Output = c.output().expect("spawn equimodal");
    let r = Run { code: o.status.code(), out: String::from_utf8_lossy(&o.stdout).into(), err: String::from_utf8_lossy(&o.stderr).into() };
    assert!(!r.err.contains("panicked") && r.code != Some(101), "panic: {}", r.err);
    r
}

/// Exit code 1 with an `error:` line containing every one of `names`.
fn fails_naming(r: &Run, names: &[&str]) -> String {
    assert_eq!(r.code, Some(1), "expected exit code 1; stdout {} stderr {}", r.out, r.err);
    let line = r.err.lines().find(|l| l.starts_with("error:")).unwrap_or_else(|| panic!("no error line in {}", r.err)).to_string();
    for n in names {
        assert!(line.contains(n), "error does not name `{n}`: {line}");
    }
    line
}

fn succeeds(r: &Run) {
    assert_eq!(r.code, Some(0), "stdout {} stderr {}", r.out, r.err);
}

fn log_epochs(dir: &Path) -> Vec<u64> {
    std::fs::read_to_string(dir.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["epoch"].as_u64().unwrap())
        .collect()
}

fn temps_in(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .map(|d| d.filter_map(|e| e.ok()).map(|e| e.path()).filter(|p| p.to_string_lossy().contains(".tmp-")).collect())
        .unwrap_or_default()
}

fn last(dir: &Path) -> PathBuf {
    dir.join("checkpoints/last.safetensors")
}

// ------------------------------------------------------------------ run folder ownership

#[test]
fn reusing_a_run_folder_needs_resume_or_force() {
    let dir = tmp("reuse");
    succeeds(&run(train_cmd(&dir, &[])));
    let metrics = std::fs::read(dir.join("metrics.jsonl")).unwrap();
    let ckpt = std::fs::read(last(&dir)).unwrap();
    let r = run(train_cmd(&dir, &["--set", "train.lr=0.05"]));
    fails_naming(&r, &["--out", &dir.display().to_string(), "--resume", "--force"]);
    assert_eq!(std::fs::read(dir.join("metrics.jsonl")).unwrap(), metrics, "the refused run touched metrics.jsonl");
    assert_eq!(std::fs::read(last(&dir)).unwrap(), ckpt, "the refused run touched the checkpoint");
    // --force with a broken config leaves the old run alone
    fails_naming(&run(train_cmd(&dir, &["--force", "--set", "data.n_test=0"])), &["test split"]);
    assert_eq!(std::fs::read(dir.join("metrics.jsonl")).unwrap(), metrics, "a failed --force removed the old run");
    // --force says what it replaces, then starts over
    let r = run(train_cmd(&dir, &["--force", "--set", "train.lr=0.05"]));
    succeeds(&r);
    assert!(r.err.contains("--force") && r.err.contains("metrics.jsonl") && r.err.contains("checkpoints"), "{}", r.err);
    assert_eq!(log_epochs(&dir), vec![0]);
    assert!(!dir.join(rundir::LOCK_FILE).exists(), "the lock is released at exit");
    // everything a run writes goes with --force: a probe the old run had would otherwise be
    // reported (by `compare`) as the new run's
    std::fs::write(dir.join("probe.json"), "{}").unwrap();
    std::fs::write(dir.join("charts/old_chart.svg"), "<svg/>").unwrap();
    let r = run(train_cmd(&dir, &["--force"]));
    succeeds(&r);
    assert!(r.err.contains("probe.json") && r.err.contains("charts") && r.err.contains("tb"), "{}", r.err);
    assert!(!dir.join("probe.json").exists() && !dir.join("charts/old_chart.svg").exists());
    // `eval --probe --out` does not overwrite a probe.json already there without --force
    std::fs::write(dir.join("probe.json"), "{}").unwrap();
    let mut c = bin();
    c.args(["eval", "--checkpoint"]).arg(&dir).args(["--probe", "--out"]).arg(&dir);
    fails_naming(&run(c), &["probe.json", "--force"]);
    assert_eq!(std::fs::read_to_string(dir.join("probe.json")).unwrap(), "{}");
    // nor does it evaluate an empty test split (it printed "NaN%" and succeeded)
    let mut c = bin();
    c.args(["eval", "--checkpoint"]).arg(&dir).args(["--set", "data.n_test=0"]);
    fails_naming(&run(c), &["data", "test split"]);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_second_trainer_on_the_same_folder_is_locked_out() {
    let dir = tmp("lock");
    let mut first = train_cmd(&dir, &["--set", "train.epochs=100000"]).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    let lock = dir.join(rundir::LOCK_FILE);
    while !lock.exists() {
        if let Ok(Some(st)) = first.try_wait() {
            panic!("the first trainer exited early: {st}");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let before = std::fs::read_to_string(dir.join("metrics.jsonl")).unwrap_or_default();
    let r = run(train_cmd(&dir, &["--resume"]));
    let second = run(train_cmd(&dir, &["--force"]));
    first.kill().unwrap();
    let _ = first.wait();
    fails_naming(&r, &[".lock", "in use", &format!("pid {}", first.id())]);
    fails_naming(&second, &[".lock", "in use"]);
    let after = std::fs::read_to_string(dir.join("metrics.jsonl")).unwrap_or_default();
    assert!(after.starts_with(&before), "the refused trainers changed the first one's log");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn an_out_path_that_is_a_file_is_an_error() {
    let dir = tmp("out-file");
    std::fs::write(&dir, "not a folder").unwrap();
    fails_naming(&run(train_cmd(&dir, &[])), &["--out", &dir.display().to_string(), "not a folder"]);
    assert_eq!(std::fs::read_to_string(&dir).unwrap(), "not a folder");
    let _ = std::fs::remove_file(&dir);
}

#[test]
fn a_stale_lock_is_taken_over() {
    let dir = tmp("stale-lock");
    std::fs::create_dir_all(&dir).unwrap();
    // the pid of a process that has exited (and been reaped)
    let mut gone = Command::new("true").spawn().unwrap();
    let pid = gone.id();
    gone.wait().unwrap();
    std::fs::write(dir.join(rundir::LOCK_FILE), format!("pid {pid} start 1\n")).unwrap();
    let r = run(train_cmd(&dir, &[]));
    succeeds(&r);
    assert!(r.err.contains("stale lock") && r.err.contains(&format!("pid {pid}")), "{}", r.err);
    // a lock naming this (live) test process is not stale
    let token = format!("pid {} start {}\n", std::process::id(), own_start());
    std::fs::write(dir.join(rundir::LOCK_FILE), token).unwrap();
    fails_naming(&run(train_cmd(&dir, &["--resume"])), &[".lock", "in use"]);
    let _ = std::fs::remove_dir_all(&dir);
}

fn own_start() -> String {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    stat.rfind(')').and_then(|i| stat[i + 1..].split_whitespace().nth(19).map(String::from)).unwrap_or_default()
}

// ------------------------------------------------------------------ resume checks

#[test]
fn resume_refuses_a_changed_config_naming_the_fields() {
    let dir = tmp("resume-cfg");
    succeeds(&run(train_cmd(&dir, &[])));
    let r = run(train_cmd(
        &dir,
        &["--resume", "--set", "train.epochs=2", "--set", "train.lr=0.05", "--set", "seed=7", "--set", "train.optimizer=adam"],
    ));
    fails_naming(&r, &["--resume", "train.lr", "seed", "train.optimizer", "last.safetensors", "--allow-config-change"]);
    assert_eq!(log_epochs(&dir), vec![0], "a refused resume leaves the log alone");
    // the epoch count alone may change; setting a value to its default is no change
    succeeds(&run(train_cmd(&dir, &["--resume", "--set", "train.epochs=2", "--set", "train.weight_decay=1e-4"])));
    assert_eq!(log_epochs(&dir), vec![0, 1]);
    // the override is recorded in the log line of the first resumed epoch
    let r = run(train_cmd(&dir, &["--resume", "--allow-config-change", "--set", "train.epochs=3", "--set", "train.lr=0.05"]));
    succeeds(&r);
    assert!(r.err.contains("train.lr"), "{}", r.err);
    let text = std::fs::read_to_string(dir.join("metrics.jsonl")).unwrap();
    let line: serde_json::Value = serde_json::from_str(text.lines().nth(2).unwrap()).unwrap();
    assert!(line["resume"]["config_changes"][0].as_str().unwrap().contains("train.lr"), "{line}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn config_changes_ignore_epochs_and_defaults() {
    let a = "[train]\nepochs = 3\n";
    assert!(rundir::config_changes(a, "[train]\nepochs = 9\n").unwrap().is_empty());
    assert!(rundir::config_changes(a, "[train]\nepochs = 3\nlr = 0.01\n").unwrap().is_empty(), "0.01 is the default lr");
    let c = rundir::config_changes(a, "[train]\nepochs = 3\nlr = 0.5\n").unwrap();
    assert_eq!(c, vec!["train.lr: (default) -> 0.5".to_string()]);
}

/// A run of the default configuration stores no `[data]` table: `eval --set data.*` on it
/// amends the default dataset as `train --set data.*` does (it failed: `data.kind` missing),
/// and a resume of the finished run reports the epochs the model has, not those it ran now.
#[test]
fn eval_overrides_data_of_a_default_run_and_a_finished_resume_counts_its_epochs() {
    let dir = tmp("default-data");
    let mut c = bin();
    c.args(["train", "--quiet", "--out"]).arg(&dir).args(["--set", "train.epochs=2", "--set", "model.hidden=[16]", "--set", "method.name=joint"]);
    succeeds(&run(c));
    assert!(!std::fs::read_to_string(dir.join("config.toml")).unwrap().contains("[data]"));
    let mut c = bin();
    c.args(["eval", "--checkpoint"]).arg(&dir).args(["--set", "data.n_test=100"]);
    succeeds(&run(c));
    let mut c = bin();
    c.args(["train", "--quiet", "--resume", "--out"]).arg(&dir).args(["--set", "train.epochs=2", "--set", "model.hidden=[16]", "--set", "method.name=joint"]);
    let r = run(c);
    succeeds(&r);
    assert!(r.out.contains("test results after 2 epochs"), "{}", r.out);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn resume_without_a_checkpoint_is_an_error() {
    let dir = tmp("resume-none");
    fails_naming(&run(train_cmd(&dir, &["--resume"])), &[&dir.display().to_string(), "no such run folder"]);
    assert!(!dir.exists(), "a refused --resume created the folder");
    std::fs::create_dir_all(&dir).unwrap();
    fails_naming(&run(train_cmd(&dir, &["--resume"])), &["last.safetensors", "--resume"]);
    succeeds(&run(train_cmd(&dir, &["--set", "train.checkpoint=false"])));
    fails_naming(&run(train_cmd(&dir, &["--resume", "--set", "train.checkpoint=false"])), &["last.safetensors"]);
    // a checkpoint path that is not a file: the error says what to do about it
    std::fs::create_dir_all(last(&dir)).unwrap();
    fails_naming(&run(train_cmd(&dir, &["--resume"])), &["last.safetensors", "not a checkpoint file", "--force"]);
    let _ = std::fs::remove_dir_all(&dir);
    // a config that never ends is read no further than a config can be long; a checkpoint
    // that is a device, not a file, is refused before it is read
    let mut c = bin();
    c.args(["train", "--quiet", "--config", "/dev/zero", "--out"]).arg(&dir);
    fails_naming(&run(c), &["/dev/zero", "more than 16777216 bytes"]);
    let mut c = bin();
    c.args(["eval", "--checkpoint", "/dev/zero"]);
    fails_naming(&run(c), &["/dev/zero", "not a regular file"]);
}

#[test]
fn a_corrupt_checkpoint_is_refused_naming_the_file() {
    let dir = tmp("corrupt");
    succeeds(&run(train_cmd(&dir, &[])));
    let good = std::fs::read(last(&dir)).unwrap();
    // a flipped bit in the tensor data (the end of the file)
    let mut bad = good.clone();
    let n = bad.len();
    bad[n - 3] ^= 0x10;
    std::fs::write(last(&dir), &bad).unwrap();
    let f = last(&dir).display().to_string();
    fails_naming(&run(train_cmd(&dir, &["--resume", "--set", "train.epochs=2"])), &[&f, "checksum"]);
    let mut eval = bin();
    eval.args(["eval", "--checkpoint"]).arg(last(&dir));
    fails_naming(&run(eval), &[&f, "checksum"]);
    // an edited epoch counter (the header rewritten consistently, so only the checksum knows)
    std::fs::write(last(&dir), edit_header(&good, "\\\"epoch\\\":0", "\\\"epoch\\\":1000000")).unwrap();
    fails_naming(&run(train_cmd(&dir, &["--resume", "--set", "train.epochs=2"])), &[&f, "checksum"]);
    std::fs::write(last(&dir), &good).unwrap();
    succeeds(&run(train_cmd(&dir, &["--resume", "--set", "train.epochs=2"])));
    let _ = std::fs::remove_dir_all(&dir);
}

/// Replace `from` by `to` in a safetensors header, fixing the length prefix.
fn edit_header(file: &[u8], from: &str, to: &str) -> Vec<u8> {
    let len = u64::from_le_bytes(file[..8].try_into().unwrap()) as usize;
    let header = std::str::from_utf8(&file[8..8 + len]).unwrap();
    assert!(header.contains(from), "{header}");
    let mut new = header.replacen(from, to, 1);
    while !(8 + new.len()).is_multiple_of(8) {
        new.push(' ');
    }
    let mut out = (new.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(new.as_bytes());
    out.extend_from_slice(&file[8 + len..]);
    out
}

#[test]
fn a_checkpoint_past_the_configured_epochs_is_an_error() {
    let (cfg, _) = equimodal::config::load(None, &["train.epochs=3".to_string()]).unwrap();
    let meta = serde_json::json!({"epoch": 1_000_000});
    let e = rundir::checkpoint_epoch(Path::new("run/checkpoints/last.safetensors"), &meta, &cfg).unwrap_err().to_string();
    assert!(e.contains("last.safetensors") && e.contains("train.epochs") && e.contains("1000001"), "{e}");
    assert_eq!(rundir::checkpoint_epoch(Path::new("x"), &serde_json::json!({"epoch": 2}), &cfg).unwrap(), 2);
}

#[test]
fn a_damaged_metrics_log_is_an_error_on_resume() {
    let dir = tmp("metrics");
    succeeds(&run(train_cmd(&dir, &[])));
    let log = dir.join("metrics.jsonl");
    let good = std::fs::read_to_string(&log).unwrap();
    // an unfinished last line (a kill mid-append) is dropped with a warning
    std::fs::write(&log, format!("{good}{{\"epoch\": 1, \"tra")).unwrap();
    let r = run(train_cmd(&dir, &["--resume", "--set", "train.epochs=2"]));
    succeeds(&r);
    assert!(r.err.contains("unfinished last line"), "{}", r.err);
    assert_eq!(log_epochs(&dir), vec![0, 1]);
    // garbage in the middle is an error naming the file and line
    let text = std::fs::read_to_string(&log).unwrap();
    std::fs::write(&log, format!("not json\n{text}")).unwrap();
    fails_naming(&run(train_cmd(&dir, &["--resume", "--set", "train.epochs=3"])), &["metrics.jsonl", "line 1"]);
    // an unreadable log (a directory in its place) is an error too, never skipped
    std::fs::remove_file(&log).unwrap();
    std::fs::create_dir(&log).unwrap();
    fails_naming(&run(train_cmd(&dir, &["--resume", "--set", "train.epochs=3"])), &["metrics.jsonl"]);
    // a log that lost the checkpoint's epochs (deleted, emptied) is an error: resuming would
    // rebuild metrics.csv and the TensorBoard events from what is left
    std::fs::remove_dir(&log).unwrap();
    let csv = std::fs::read(dir.join("metrics.csv")).unwrap();
    fails_naming(&run(train_cmd(&dir, &["--resume", "--set", "train.epochs=3"])), &["metrics.jsonl", "of the 2 epochs"]);
    std::fs::write(&log, "").unwrap();
    fails_naming(&run(train_cmd(&dir, &["--resume", "--set", "train.epochs=3"])), &["metrics.jsonl", "0 of the 2 epochs"]);
    assert_eq!(std::fs::read(dir.join("metrics.csv")).unwrap(), csv, "the CSV history is left as it was");
    let _ = std::fs::remove_dir_all(&dir);
}

// ------------------------------------------------------------------ kills and full disks

#[test]
fn killed_during_checkpoint_writes_resume_and_leave_no_temp_files() {
    let dir = tmp("kill-ckpt");
    succeeds(&run(train_cmd(&dir, &[])));
    let ckdir = dir.join("checkpoints");
    // each attempt dies half-way through writing the next checkpoint (exit 137, no cleanup)
    for i in 1..=4 {
        let epochs = format!("train.epochs={}", i + 1);
        let mut c = train_cmd(&dir, &["--resume", "--set", &epochs]);
        c.env("EQUIMODAL_FAULT", "kill:last.safetensors");
        let r = run(c);
        assert_eq!(r.code, Some(137), "attempt {i}: {}", r.err);
        if i > 1 {
            assert!(r.err.contains("stale temporary file"), "attempt {i}: the previous temp file was not cleaned: {}", r.err);
        }
        let temps = temps_in(&ckdir);
        assert_eq!(temps.len(), 1, "attempt {i}: exactly the one temp file of this kill");
        // the write stopped half-way (the checkpoints differ only in a few metadata digits)
        let (half, full) = (std::fs::metadata(&temps[0]).unwrap().len(), std::fs::metadata(last(&dir)).unwrap().len());
        assert!(half.abs_diff(full / 2) < full / 100, "attempt {i}: temp file of {half} bytes, checkpoint of {full}");
        assert!(dir.join(rundir::LOCK_FILE).exists(), "a killed trainer leaves its lock");
        // the previous checkpoint is intact (the write was atomic)
        let ck = checkpoint::load(&last(&dir)).unwrap();
        assert_eq!(ck.meta["epoch"], 0);
    }
    let r = run(train_cmd(&dir, &["--resume", "--set", "train.epochs=3"]));
    succeeds(&r);
    assert!(r.err.contains("stale lock"), "{}", r.err);
    assert!(temps_in(&ckdir).is_empty() && temps_in(&dir).is_empty(), "temp files left: {:?}", temps_in(&ckdir));
    assert_eq!(log_epochs(&dir), vec![0, 1, 2], "every epoch logged once");
    assert_eq!(checkpoint::load(&last(&dir)).unwrap().meta["epoch"], 2);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn killed_at_random_moments_the_run_still_completes_once() {
    let dir = tmp("kill-random");
    succeeds(&run(train_cmd(&dir, &["--set", "data.n_train=256"])));
    let sets = ["--resume", "--set", "train.epochs=6", "--set", "data.n_train=256"];
    let mut rng = common::Rng::new(11);
    for _ in 0..5 {
        let mut child = train_cmd(&dir, &sets).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(300 + rng.below(2500) as u64));
        let _ = child.kill();
        let _ = child.wait();
    }
    succeeds(&run(train_cmd(&dir, &sets)));
    assert_eq!(log_epochs(&dir), vec![0, 1, 2, 3, 4, 5], "every epoch logged exactly once");
    assert!(temps_in(&dir.join("checkpoints")).is_empty());
    assert_eq!(checkpoint::load(&last(&dir)).unwrap().meta["epoch"], 5);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_failed_checkpoint_write_names_the_file_and_leaves_no_temp_file() {
    // the injection path: always runs, needs no privileges
    let dir = tmp("enospc");
    let mut c = train_cmd(&dir, &[]);
    c.env("EQUIMODAL_FAULT", "enospc:last.safetensors");
    let line = fails_naming(&run(c), &["last.safetensors", "No space left"]);
    assert!(line.contains(&dir.display().to_string()), "{line}");
    assert!(temps_in(&dir.join("checkpoints")).is_empty(), "temp file left after a failed write");
    assert!(!dir.join(rundir::LOCK_FILE).exists(), "the lock is released after an error");
    // the failed run cannot be resumed (no checkpoint) and says so
    fails_naming(&run(train_cmd(&dir, &["--resume"])), &["last.safetensors"]);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Mount a tmpfs of `size` at `at`; None (with the reason printed) where that is not allowed.
fn mount_tmpfs(at: &Path, size: &str) -> Option<()> {
    std::fs::create_dir_all(at).ok()?;
    match Command::new("mount").args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"]).arg(at).output() {
        Ok(o) if o.status.success() => Some(()),
        Ok(o) => {
            eprintln!(
                "skipping the tmpfs part: mount failed ({}); the EQUIMODAL_FAULT injection test covers the error path",
                String::from_utf8_lossy(&o.stderr).trim()
            );
            None
        }
        Err(e) => {
            eprintln!("skipping the tmpfs part: cannot run mount ({e})");
            None
        }
    }
}

struct Unmount(PathBuf);
impl Drop for Unmount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn a_full_disk_fails_cleanly_and_stale_temp_files_do_not_block_resume() {
    let mnt = tmp("tmpfs");
    if mount_tmpfs(&mnt, "1m").is_none() {
        return;
    }
    let _guard = Unmount(mnt.clone());
    let dir = mnt.join("run");
    succeeds(&run(train_cmd(&dir, &[])));
    // a killed writer's leftover fills the disk
    let filler = dir.join("checkpoints").join(format!(".last.safetensors.tmp-{}", 999_999));
    let free = fill(&filler);
    assert!(free < 4096, "the disk is not full: {free} bytes left");
    let r = run(train_cmd(&dir, &["--resume", "--set", "train.epochs=2"]));
    succeeds(&r);
    assert!(r.err.contains("stale temporary file"), "{}", r.err);
    assert!(!filler.exists());
    // a checkpoint bigger than the disk: a clean error naming the file, no temp file left
    let r = run(train_cmd(&dir, &["--force", "--set", "model.hidden=[2048]"]));
    fails_naming(&r, &["last.safetensors", "No space left"]);
    assert!(temps_in(&dir.join("checkpoints")).is_empty(), "temp file left on the full disk");
}

/// Write zeros to `path` until the filesystem is full; returns the bytes still free.
fn fill(path: &Path) -> u64 {
    use std::io::Write;
    let mut f = std::fs::File::create(path).unwrap();
    let chunk = vec![0u8; 4096];
    while f.write_all(&chunk).is_ok() {}
    let _ = f.write_all(&[0u8; 1]);
    while f.write_all(&[0u8; 1]).is_ok() {}
    let _ = f.sync_all();
    let st = Command::new("df").args(["-B1", "--output=avail"]).arg(path.parent().unwrap()).output().unwrap();
    String::from_utf8_lossy(&st.stdout).lines().nth(1).and_then(|l| l.trim().parse().ok()).unwrap_or(0)
}

// ------------------------------------------------------------------ hostile configs

#[test]
fn hostile_config_values_are_errors_naming_the_field() {
    let dir = tmp("hostile");
    let cases: &[(&str, &[&str])] = &[
        (
            "data.modalities=[{name=\"a\",shape=[4294967296,4294967296]},{name=\"b\",shape=[4]}]",
            &["data.modalities[0].shape", "4294967296"],
        ),
        ("model.hidden=[0]", &["model.hidden", "got 0"]),
        ("model.hidden=[100000000]", &["model.hidden", "100000000"]),
        // a 2^16 x 2^20 layer (256 GB): beyond every device's largest buffer or the host
        ("model.hidden=[1048576]", &["model", "needs", "GB"]),
        ("model.hidden=[]", &["model.hidden"]),
        // recomputation is resnet18's; this run's encoders are MLPs
        ("model.recompute=true", &["model.recompute", "resnet18"]),
        ("train.gamma=nan", &["train.gamma", "NaN"]),
        ("train.min_lr=-1", &["train.min_lr"]),
        ("train.lr=nan", &["train.lr"]),
        ("train.momentum=nan", &["train.momentum"]),
        ("train.warmup_epochs=5", &["train.warmup_epochs"]),
        ("method.aug.tau=nan", &["method.aug.tau"]),
        ("method.aug.sigma=-1", &["method.aug.sigma"]),
        ("method.aug.fusion_weights=[0.5,inf]", &["method.aug.fusion_weights"]),
        ("method.ogm.start_epoch=9", &["method.ogm.start_epoch"]),
        ("method.aim.rho=nan", &["method.aim.rho"]),
        ("data.n_test=0", &["data", "test split"]),
        ("data.num_classes=1000000000", &["data.num_classes"]),
        ("data.n_train=100000000000", &["data.n_train", "100000000000"]),
        // with the [4096, 4096] modality below: 100 class patterns of 2^24 values each
        ("data.num_classes=100", &["data.modalities[0].shape", "100 classes"]),
        ("train.workers=100000", &["train.workers"]),
        ("train.epochs=1000000000000000", &["train.epochs"]),
        ("train.batch_size=1000000000000", &["train.batch_size", "input batch"]),
        // counts that would loop or allocate for ages before anything else could fail
        ("model.layers=1000000000", &["model.layers", "at most 1024"]),
        ("method.reconboost.head_hidden=100000000000", &["method.reconboost.head_hidden"]),
        ("method.g_blending.super_epoch=1000000000000", &["method.g_blending.super_epoch"]),
        ("method.relearn.kmeans_inits=1000000000000", &["method.relearn.kmeans_inits"]),
        // a wrong type inside [data] names its field, not just `data`
        ("data.n_train=\"abc\"", &["data.n_train", "invalid type"]),
    ];
    let wide = "data.modalities=[{name=\"a\",shape=[65536]},{name=\"b\",shape=[4]}]";
    for (set, names) in cases {
        let big = "data.modalities=[{name=\"a\",shape=[4096,4096]},{name=\"b\",shape=[4]}]";
        let shape = match *set {
            "model.hidden=[1048576]" => wide,
            "data.num_classes=100" => big,
            _ => "seed=0",
        };
        let extra = ["--set", "method.ogm.end_epoch=3", "--set", shape, "--set", set];
        let r = run(train_cmd(&dir, &extra));
        fails_naming(&r, names);
        let _ = std::fs::remove_dir_all(&dir);
    }
    // an MLP of 2,000 hidden layers is a typo, refused before it is estimated or built
    let deep = format!("model.hidden=[{}]", vec!["1"; 2000].join(","));
    fails_naming(&run(train_cmd(&dir, &["--set", &deep])), &["model.hidden", "at most 1024"]);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn options_that_do_not_apply_warn() {
    let dir = tmp("unused");
    let r = run(train_cmd(&dir, &["--set", "method.aug.lambda=0.3", "--set", "train.beta1=0.8"]));
    succeeds(&r);
    assert!(r.err.contains("warning: method.aug is ignored") && r.err.contains("warning: train.beta1 is ignored"), "{}", r.err);
    let _ = std::fs::remove_dir_all(&dir);
    // settings that can never act within the run's epochs
    let r = run(train_cmd(&dir, &["--set", "method.name=ogm_ge", "--set", "train.epochs=2", "--set", "method.ogm.start_epoch=2"]));
    succeeds(&r);
    assert!(r.err.contains("warning: method.ogm.start_epoch = 2 never acts"), "{}", r.err);
    let _ = std::fs::remove_dir_all(&dir);
    let r = run(train_cmd(
        &dir,
        &["--set", "method.name=aug", "--set", "method.aug.check_every=5", "--set", "method.aug.check_after_first=false"],
    ));
    succeeds(&r);
    assert!(r.err.contains("warning: method.aug.check_every = 5 never acts"), "{}", r.err);
    let _ = std::fs::remove_dir_all(&dir);
    let r = run(train_cmd(&dir, &["--set", "method.name=mla", "--set", "method.mla.weights=[1.0]"]));
    succeeds(&r);
    assert!(r.err.contains("warning: method.mla.weights never acts"), "{}", r.err);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn unknown_backends_adapters_and_filters_are_errors() {
    let mut c = bin();
    c.args(["--backend", "banana", "devices"]);
    fails_naming(&run(c), &["--backend", "banana", "vulkan"]);
    let mut c = bin();
    c.env("EQUIMODAL_BACKEND", "banana").args(["bench", "--quick"]);
    fails_naming(&run(c), &["EQUIMODAL_BACKEND", "banana"]);
    for junk in ["abc", "0"] {
        let mut c = bin();
        c.env("EQUIMODAL_MAX_WORKGROUPS_PER_DIM", junk).args(["bench", "--quick"]);
        fails_naming(&run(c), &["EQUIMODAL_MAX_WORKGROUPS_PER_DIM", junk]);
    }
    // bench counts have ceilings: one query set holds the timestamps, and the steps and the
    // batch size host allocations made before anything runs
    for (flag, v) in [("--reps", "5000"), ("--steps", "100000000000"), ("--batch", "1000000000000")] {
        let mut c = bin();
        c.args(["bench", "--e2e", "--quick", flag, v]);
        fails_naming(&run(c), &[flag, "at most"]);
    }
    // the adapter error lists what `devices` lists
    let devices = run({
        let mut c = bin();
        c.arg("devices");
        c
    });
    succeeds(&devices);
    let first = devices.out.lines().next().unwrap_or("").split(" (").next().unwrap_or("").to_string();
    let mut c = bin();
    c.env_remove("EQUIMODAL_ADAPTER").env_remove("WGPU_ADAPTER_NAME").args(["--adapter", "no-such-adapter", "bench", "--quick"]);
    let line = fails_naming(&run(c), &["no-such-adapter", "available"]);
    assert!(line.contains(&first), "the available list lacks `{first}` that devices lists: {line}");
    // a backend without that adapter still names where it is
    let mut c = bin();
    c.env_remove("EQUIMODAL_ADAPTER").args(["--backend", "dx12", "--adapter", "no-such-adapter", "bench", "--quick"]);
    let line = fails_naming(&run(c), &["no-such-adapter", "DX12", "every backend"]);
    assert!(line.contains(&first), "{line}");
    // a name from that list selects it
    let mut c = bin();
    let want = first.split_whitespace().next().unwrap_or("").to_lowercase();
    c.env_remove("EQUIMODAL_ADAPTER").env_remove("WGPU_ADAPTER_NAME").args(["--adapter", &want, "devices"]);
    let r = run(c);
    assert!(r.out.contains(&format!("selected: {first}")), "{}", r.out);
    let mut c = bin();
    c.args(["bench", "--quick", "--filter", "nothing-matches-this"]);
    fails_naming(&run(c), &["--filter", "nothing-matches-this", "matmul"]);
    for (flag, v) in [("--reps", "0"), ("--steps", "0"), ("--batch", "0"), ("--peak-gbs", "NaN"), ("--peak-gflops", "-1")] {
        let mut c = bin();
        c.args(["bench", "--quick", &format!("{flag}={v}")]);
        fails_naming(&run(c), &[flag]);
    }
    let mut c = bin();
    c.args(["bench", "--e2e", "--quick", "--filter", "nothing-matches-this"]);
    fails_naming(&run(c), &["--filter", "nothing-matches-this"]);
}

// ------------------------------------------------------------------ hostile data files

#[test]
fn a_huge_label_names_the_label_and_file_instead_of_allocating() {
    let dir = tmp("labels");
    std::fs::create_dir_all(&dir).unwrap();
    let t = HostTensor::new(vec![4, 3], vec![0.5; 12]).unwrap();
    let train = dir.join("train.safetensors");
    equimodal::data::write_tensors_split(&train, &[("a", &t), ("b", &t)], &[0, 1, 1_000_000_000, 2]).unwrap();
    equimodal::data::write_tensors_split(dir.join("test.safetensors"), &[("a", &t), ("b", &t)], &[0, 1, 0, 1]).unwrap();
    let out = dir.join("run");
    let mut c = bin();
    c.args(["train", "--quiet", "--out"]).arg(&out);
    for s in ["data.kind=tensors", &format!("data.root={:?}", dir.display().to_string()), "train.epochs=1", "train.workers=1"] {
        c.args(["--set", s]);
    }
    fails_naming(&run(c), &["train.safetensors", "label 1000000000", "index 2", "data.num_classes"]);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn hostile_audio_and_image_headers_are_data_errors() {
    let dir = tmp("headers");
    std::fs::create_dir_all(&dir).unwrap();
    // a WAV header claiming 2 GHz
    let wav = dir.join("fast.wav");
    equimodal::data::wav::write_wav_i16(&wav, 2_000_000_000, &[0.1; 64]).unwrap();
    let e = equimodal::data::wav::read_wav_mono(&wav).unwrap_err().to_string();
    assert!(e.contains("fast.wav") && e.contains("2000000000"), "{e}");
    // an IDX image file of 3 images of 0x0 pixels
    let img = dir.join("images-idx3-ubyte");
    let mut b = vec![0, 0, 8, 3];
    for d in [3u32, 0, 0] {
        b.extend(d.to_be_bytes());
    }
    std::fs::write(&img, b).unwrap();
    let lab = dir.join("labels-idx1-ubyte");
    let mut b = vec![0, 0, 8, 1];
    b.extend(3u32.to_be_bytes());
    b.extend([1u8, 2, 3]);
    std::fs::write(&lab, b).unwrap();
    let e = equimodal::data::idx::read_mnist(&img, &lab).err().expect("0x0 images accepted").to_string();
    assert!(e.contains("images-idx3-ubyte") && e.contains("0x0"), "{e}");
    let e = equimodal::data::pca::Pca::fit(&[], 3, 0, 0.9).err().expect("PCA of 0-dim rows").to_string();
    assert!(e.contains("Pca::fit"), "{e}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_memory_estimate_refuses_models_beyond_the_host() {
    use equimodal::data::ModalitySpec;
    let (cfg, _) = equimodal::config::load(None, &["model.hidden=[1048576, 1048576]".to_string()]).unwrap();
    let specs = vec![ModalitySpec::new("a", vec![8]), ModalitySpec::new("b", vec![8])];
    let mut limits = common::gpu().limits().clone();
    limits.max_buffer_size = u64::MAX;
    limits.max_storage_buffer_binding_size = u64::MAX;
    // 2 x 2^40 parameters: beyond any host, refused before anything is allocated
    let e = equimodal::train::estimate::check_model_fits(&limits, &cfg, &specs, 10).unwrap_err().to_string();
    assert!(e.contains("model") && e.contains("available"), "{e}");
    let est = equimodal::train::estimate::estimate(&cfg, &specs, 10).unwrap();
    assert!(est.params > 2 * (1u64 << 40), "{est:?}");
    // a batch whose first convolution output is larger than the device's largest buffer:
    // refused before the first step, naming the tensor and train.batch_size
    let sets: Vec<String> = ["model.encoder=small_cnn", "model.width=64", "train.batch_size=4096"].map(String::from).to_vec();
    let (cfg, _) = equimodal::config::load(None, &sets).unwrap();
    let specs = vec![ModalitySpec::new("a", vec![1, 16, 16]), ModalitySpec::new("b", vec![1, 16, 16])];
    let mut limits = common::gpu().limits().clone();
    limits.max_storage_buffer_binding_size = 128 << 20; // lavapipe's; 4096 x 64 x 16 x 16 floats are 256 MiB
    let e = equimodal::train::estimate::check_model_fits(&limits, &cfg, &specs, 10).unwrap_err().to_string();
    assert!(e.contains("train.batch_size") && e.contains("block 0 conv output [4096, 64, 16, 16]"), "{e}");
    let (cfg, _) = equimodal::config::load(None, &[&sets[..2], &["train.batch_size=1024".to_string()]].concat()).unwrap();
    equimodal::train::estimate::check_model_fits(&limits, &cfg, &specs, 10).unwrap();
    // under mixed precision that output may be stored f16 (128 MiB): not refused
    let (cfg, _) = equimodal::config::load(None, &[&sets[..], &["train.precision=\"mixed\"".to_string()]].concat()).unwrap();
    equimodal::train::estimate::check_model_fits(&limits, &cfg, &specs, 10).unwrap();
    assert!(equimodal::limits::checked_numel(&[1 << 33, 1 << 33], "x").is_err());
    assert!(equimodal::limits::class_count(0, 1_000_000_000, 5, "f.safetensors").unwrap_err().to_string().contains("f.safetensors"));
}

#[test]
fn a_nan_loss_names_the_epoch_and_lr_and_only_an_existing_checkpoint() {
    let dir = tmp("nan");
    let r = run(train_cmd(&dir, &["--set", "train.lr=1e30", "--set", "train.momentum=0"]));
    let line = fails_naming(&r, &["epoch 1", "lr 1"]);
    assert!(line.contains("no checkpoint was written") && !line.contains("last.safetensors"), "{line}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn device_allocation_failures_name_the_tensor() {
    let g = common::gpu();
    // more than the device's largest binding: a typed error naming the shape
    let e = equimodal::Tensor::zeros(&g, &[1 << 20, 1 << 20]).unwrap_err().to_string();
    assert!(e.contains("[1048576, 1048576]"), "{e}");
    // a product that wraps around: an error, not a small buffer
    let e = equimodal::Tensor::zeros(&g, &[1 << 40, 1 << 40]).unwrap_err().to_string();
    assert!(e.contains("1099511627776"), "{e}");
    let e = equimodal::Error::DeviceLost("map failed".into()).during("reading back a tensor of shape [3]").to_string();
    assert!(e.contains("reading back a tensor of shape [3]") && e.contains("map failed"), "{e}");
}

/// Memory that runs out mid-run (AUG grows a learner per check, so each epoch needs more;
/// `EQUIMODAL_MEMORY_LIMIT` stands in for a smaller device) ends the run with a typed
/// error naming the tensor, no panic, and the last checkpoint intact: `--resume` on a
/// device with room finishes with the uninterrupted run's checkpoint, byte for byte.
#[test]
fn out_of_memory_mid_run_keeps_the_last_checkpoint_and_resume_finishes_it() {
    use crate::common::resume::{cli, log_lines, tmp, untimed};
    let sets: Vec<String> = [
        "method.name=aug",
        "train.epochs=4",
        "method.aug.check_every=1",
        "data.n_train=256",
        "data.n_test=64",
        "model.hidden=[64, 32]",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    // the size rule everywhere: a run that tunes a bucket allocates the tuning operands, and
    // whether it does depends on what the parallel tests' runs wrote to the shared cache
    // first, so the peaks (and the limit between them) would differ from run to run
    let cli = |dir: &std::path::Path, extra: &[&str]| {
        let mut c = cli(&sets, dir, extra);
        c.env("EQUIMODAL_TUNE", "off");
        c
    };
    let full = tmp("oom-full");
    assert!(cli(&full, &[]).status().unwrap().success());
    let lines = log_lines(&full);
    let peak = |e: usize| lines[e]["memory"]["peak_allocated_mib"].as_f64().unwrap() * (1u64 << 20) as f64;
    assert!(peak(2) > peak(1) * 1.1, "the learners must make epoch 3 need more memory: {} vs {}", peak(2), peak(1));
    let limit = ((peak(1) + peak(2)) / 2.0) as u64;

    let dir = tmp("oom-limited");
    let out = cli(&dir, &[]).env("EQUIMODAL_MEMORY_LIMIT", limit.to_string()).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    assert!(err.contains("out of GPU memory") && err.contains("allocating a tensor of shape"), "{err}");
    let kept = log_lines(&dir);
    assert!(!kept.is_empty() && kept.len() < 4, "the run must stop mid-way: {} epochs logged\n{err}", kept.len());
    for (a, b) in kept.iter().zip(&lines) {
        assert_eq!(untimed(a), untimed(b));
    }
    assert!(dir.join("checkpoints/last.safetensors").exists());

    let resumed = cli(&dir, &["--resume"]).output().unwrap();
    assert!(resumed.status.success(), "{}", String::from_utf8_lossy(&resumed.stderr));
    let a = std::fs::read(full.join("checkpoints/last.safetensors")).unwrap();
    let b = std::fs::read(dir.join("checkpoints/last.safetensors")).unwrap();
    assert!(a == b, "the resumed run's final checkpoint differs from the uninterrupted run's");
    let _ = std::fs::remove_dir_all(&full);
    let _ = std::fs::remove_dir_all(&dir);
}
