//! Sweeps and comparisons: expansion, validation and naming of sweep files; running a sweep
//! through the CLI (parallel runs, a failing run that does not stop the others, skipping
//! finished runs, resuming interrupted ones, folders that belong to another sweep); Slurm job
//! arrays (the script always; a real one-node Slurm when `EQUIMODAL_SLURM=1`, which `.ci/run`
//! sets after starting one); `compare`'s numbers on hand-made runs; the CSV and TensorBoard
//! logs of a run.
use crate::common::repo_root;
use equimodal::experiments::{self as ex, Selection, Sweep};
use std::path::{Path, PathBuf};

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("equimodal-exp-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn preset(name: &str) -> String {
    repo_root().join("configs").join(name).display().to_string()
}

/// A tiny sweep file in `dir`: fixed sizes small enough for a CPU, plus `extra` TOML.
fn sweep_file(dir: &Path, name: &str, extra: &str) -> PathBuf {
    let text = format!(
        "name = \"{name}\"\nbase = \"{}\"\nout = \"{}\"\n{extra}\n",
        preset("synthetic_joint.toml"),
        dir.join("out").display()
    );
    let p = dir.join(format!("{name}.toml"));
    std::fs::write(&p, text).unwrap();
    p
}

const TINY_SET: &str = "[set]\n\"train.epochs\" = 2\n\"data.n_train\" = 96\n\"data.n_test\" = 64\n\"model.hidden\" = [16]\n\"train.workers\" = 1\n\"train.batch_size\" = 32\n";

fn cli(args: &[&str]) -> std::process::Output {
    crate::common::equimodal_bin().args(args).output().unwrap()
}

#[test]
fn sweep_files_expand_into_named_validated_runs() {
    let dir = tmp("expand");
    let f = sweep_file(&dir, "grid", &format!("{TINY_SET}[grid]\n\"method.name\" = [\"joint\", \"aug\"]\nseed = [0, 1, 2]\n\"train.lr\" = [0.01, 0.02]\n"));
    let sw = Sweep::load(&f, None).unwrap();
    let runs = sw.expand().unwrap();
    assert_eq!(runs.len(), 12);
    // grid keys in name order (method.name, seed, train.lr), the last fastest
    let names: Vec<&str> = runs.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(&names[..3], &["joint_seed0_lr0.01", "joint_seed0_lr0.02", "joint_seed1_lr0.01"]);
    assert_eq!(names[11], "aug_seed2_lr0.02");
    assert!(runs[1].sets.contains(&"train.lr=0.02".to_string()) && runs[1].sets.contains(&"method.name=\"joint\"".to_string()), "{:?}", runs[1].sets);
    assert_eq!(runs[0].config.as_deref(), Some(Path::new(&preset("synthetic_joint.toml"))));
    assert_eq!(sw.select, None);
    // preset files as a grid key, relative to the sweep file
    std::fs::copy(preset("synthetic_aug.toml"), dir.join("aug.toml")).unwrap();
    let f = sweep_file(&dir, "presets", "[grid]\nconfig = [\"aug.toml\"]\nseed = [3]\n[compare]\nselect = \"last_k\"\nk = 3\n");
    let sw = Sweep::load(&f, None).unwrap();
    let runs = sw.expand().unwrap();
    assert_eq!((runs.len(), runs[0].name.as_str()), (1, "aug_seed3"));
    assert_eq!(runs[0].config.as_deref(), Some(dir.join("aug.toml").as_path()));
    assert_eq!(sw.select, Some(Selection::LastK(3)));
    let _ = std::fs::remove_dir_all(&dir);
}

/// The committed sweep files (the README's tables, the GPU protocols) expand into runs whose
/// configurations are all valid, as `sweep --dry-run` checks: a preset or a field renamed
/// under them is caught here, not on the GPU machine.
#[test]
fn every_committed_sweep_file_expands_into_valid_runs() {
    let dir = repo_root().join("sweeps");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).filter(|p| p.extension().is_some_and(|e| e == "toml")).collect();
    files.sort();
    assert!(files.len() >= 10, "{} sweep files under {}", files.len(), dir.display());
    let out = tmp("committed");
    for f in &files {
        let sw = Sweep::load(f, Some(&out)).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        let runs = sw.expand().unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        assert!(!runs.is_empty(), "{}: no runs", f.display());
    }
    let _ = std::fs::remove_dir_all(&out);
}

#[test]
fn bad_sweep_files_are_errors_naming_the_field_before_anything_runs() {
    let dir = tmp("bad");
    let err = |name: &str, body: &str| {
        let f = sweep_file(&dir, name, body);
        let e = Sweep::load(&f, None).and_then(|s| s.expand()).unwrap_err().to_string();
        assert!(!dir.join("out").exists(), "{name}: nothing may be created before the runs are checked");
        e
    };
    let e = err("unknown_path", "[grid]\n\"train.bogus\" = [1, 2]\n");
    assert!(e.contains("bogus") && e.contains("run `bogus1`"), "{e}");
    let e = err("bad_value", "[grid]\n\"train.lr\" = [0.01, -1.0]\n");
    assert!(e.contains("train.lr") && e.contains("lr-1.0"), "{e}");
    let e = err("no_grid", "seed = 1\n");
    assert!(e.contains("seed") && e.contains("unknown field"), "{e}");
    let e = err("missing_grid", "parallel = 2\n");
    assert!(e.contains("grid") && e.contains("missing"), "{e}");
    let e = err("empty_grid", "[grid]\n");
    assert!(e.contains("grid") && e.contains("empty"), "{e}");
    let e = err("empty_list", "[grid]\nseed = []\n");
    assert!(e.contains("grid.seed") && e.contains("empty"), "{e}");
    let e = err("duplicate", "[grid]\nseed = [1, 2, 1]\n");
    assert!(e.contains("grid.seed") && e.contains("twice"), "{e}");
    // values that differ only in characters a folder name cannot hold would share a folder
    let e = err("same_names", "[grid]\n\"method.modality\" = [\"a b\", \"a/b\"]\n");
    assert!(e.contains("both named `modality-a-b`"), "{e}");
    let e = err("bad_select", "[grid]\nseed = [1]\n[compare]\nselect = \"median\"\n");
    assert!(e.contains("compare.select") && e.contains("best_val"), "{e}");
    let e = err("bad_pair_by", "[grid]\nseed = [1]\n[compare]\npair_by = \"data.test_speakers\"\n");
    assert!(e.contains("compare.pair_by") && e.contains("not a [grid] key"), "{e}");
    let e = err("bad_parallel", "parallel = 0\n[grid]\nseed = [1]\n");
    assert!(e.contains("parallel"), "{e}");
    let e = err("bad_time", "[grid]\nseed = [1]\n[slurm]\ntime = \"an hour\"\n");
    assert!(e.contains("slurm.time"), "{e}");
    let e = Sweep::load(&dir.join("nonexistent.toml"), None).unwrap_err().to_string();
    assert!(e.contains("nonexistent.toml"), "{e}");
    // names that name no folder of their own: the sweep's, or a run's from a config's stem
    std::fs::write(dir.join("dots.toml"), "name = \"..\"\n[grid]\nseed = [1]\n").unwrap();
    let e = Sweep::load(&dir.join("dots.toml"), None).unwrap_err().to_string();
    assert!(e.contains("name") && e.contains("cannot name a folder"), "{e}");
    std::fs::write(dir.join("..toml"), "seed = 0\n").unwrap();
    let e = err("dot_run", "[grid]\nconfig = [\"..toml\"]\n");
    assert!(e.contains("grid") && e.contains("named `.`"), "{e}");
    // a grid is a product: counted before anything is expanded (12 keys of 10 values would
    // be 10^12 runs)
    let keys: String = (0..12).map(|i| format!("\"method.aug.k{i}\" = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]\n")).collect();
    let e = err("huge", &format!("[grid]\n{keys}"));
    assert!(e.contains("grid") && e.contains("more than 10000 runs"), "{e}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_sweep_runs_in_parallel_reports_failures_skips_finished_runs_and_resumes() {
    let dir = tmp("run");
    // lr 1e30 without momentum diverges: that run fails, the others must finish
    let f = sweep_file(&dir, "runs", &format!("parallel = 2\n{TINY_SET}\"train.momentum\" = 0.0\n[grid]\nseed = [0, 1]\n\"train.lr\" = [0.01, 1e30]\n"));
    let fs = f.display().to_string();
    let out = cli(&["sweep", &fs, "--quiet"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a failed run makes the sweep fail: {stdout}");
    assert!(stderr.contains("2 of 4 runs failed") && stderr.contains("seed0_lr1e30"), "{stderr}");
    let o = dir.join("out");
    for ok in ["seed0_lr0.01", "seed1_lr0.01"] {
        assert!(o.join(ok).join("summary.txt").exists(), "{ok} finished: {stdout}");
    }
    assert!(std::fs::read_to_string(o.join("seed0_lr1e30/train.log")).unwrap().contains("non-finite"));
    // two at once, never more: each run from its config.toml (written as its training
    // starts) to the last write of its train.log (as its process ends)
    let mtime = |p: std::path::PathBuf| std::fs::metadata(&p).and_then(|m| m.modified()).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    let spans: Vec<_> = ["seed0_lr0.01", "seed0_lr1e30", "seed1_lr0.01", "seed1_lr1e30"].iter().map(|r| (mtime(o.join(r).join("config.toml")), mtime(o.join(r).join("train.log")))).collect();
    let at_once = spans.iter().map(|(start, _)| spans.iter().filter(|(s, e)| s <= start && start < e).count()).max().unwrap();
    assert_eq!(at_once, 2, "runs in flight at once with parallel = 2: {spans:?}");
    // the comparison of the finished runs is written at the end
    let md = std::fs::read_to_string(o.join("compare.md")).unwrap();
    assert!(md.contains("| joint | 2 |"), "{md}");
    // run again: finished runs are skipped; a run whose summary is gone is resumed from its
    // checkpoint (here after its last epoch: nothing to train, only the summary to write)
    std::fs::remove_file(o.join("seed1_lr0.01/summary.txt")).unwrap();
    let out = cli(&["sweep", &fs, "--quiet"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("1 finished before"), "{stdout}");
    assert!(o.join("seed1_lr0.01/summary.txt").exists());
    assert!(std::fs::read_to_string(o.join("seed1_lr0.01/train.log")).unwrap().contains("resuming from"));
    // one run by index, as a Slurm array task does
    let out = cli(&["sweep", &fs, "--task", "0"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("Skipped"), "{out:?}");
    let out = cli(&["sweep", &fs, "--task", "9"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("--task") && !out.status.success());
    // a run killed before its first checkpoint left logs, TensorBoard events and charts:
    // it starts over (those mark "a run" to the trainer, which would refuse the folder)
    let partial = o.join("seed1_lr0.01");
    std::fs::remove_file(partial.join("summary.txt")).unwrap();
    std::fs::remove_dir_all(partial.join("checkpoints")).unwrap();
    assert!(partial.join("tb").is_dir() && partial.join("charts").is_dir());
    let out = cli(&["sweep", &fs, "--quiet"]);
    assert!(partial.join("summary.txt").exists(), "{}", String::from_utf8_lossy(&out.stderr));
    // another sweep may not write into this one's folder, nor into a folder that is not a sweep's
    let other = sweep_file(&dir, "other", "[grid]\nseed = [5]\n");
    let out = cli(&["sweep", &other.display().to_string(), "--out", &o.display().to_string(), "--quiet"]);
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && e.contains("belongs to sweep `runs`"), "{e}");
    std::fs::create_dir_all(dir.join("mine")).unwrap();
    std::fs::write(dir.join("mine/notes.txt"), "keep").unwrap();
    let out = cli(&["sweep", &other.display().to_string(), "--out", &dir.join("mine").display().to_string(), "--quiet"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a sweep's folder"));
    // ... nor when the path reaches it through a folder that does not exist yet
    let around = dir.join("nonexistent/../mine").display().to_string();
    let out = cli(&["sweep", &other.display().to_string(), "--out", &around, "--quiet"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a sweep's folder"), "{out:?}");
    assert!(!dir.join("mine").join("sweep.json").exists() && !dir.join("nonexistent").exists());
    assert_eq!(std::fs::read_to_string(dir.join("mine/notes.txt")).unwrap(), "keep");
    // a finished run whose settings the sweep file has changed since is not skipped as if
    // it were the new setting: an error naming it, before anything runs
    let changed = std::fs::read_to_string(&f).unwrap().replace("\"model.hidden\" = [16]", "\"model.hidden\" = [24]");
    std::fs::write(&f, changed).unwrap();
    let out = cli(&["sweep", &fs, "--quiet"]);
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && e.contains("seed0_lr0.01") && e.contains("another configuration"), "{e}");
    assert!(std::fs::read_to_string(o.join("seed0_lr0.01/config.toml")).unwrap().contains("16"), "the finished run is left as it was");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn slurm_job_array_script() {
    let dir = tmp("slurm-script");
    let f = sweep_file(&dir, "arr", "[grid]\nseed = [0, 1, 2]\n[slurm]\npartition = \"gpu\"\ntime = \"01:30:00\"\ngpus_per_task = 1\ncpus_per_task = 4\nmem = \"16G\"\nmax_parallel = 2\nextra = [\"--account=lab\"]\n");
    let out = cli(&["sweep", &f.display().to_string(), "--slurm"]);
    assert!(out.status.success(), "{out:?}");
    let s = std::fs::read_to_string(dir.join("out/sweep.sbatch")).unwrap();
    for want in ["#SBATCH --array=0-2%2", "#SBATCH --partition=gpu", "#SBATCH --time=01:30:00", "#SBATCH --gres=gpu:1", "#SBATCH --cpus-per-task=4", "#SBATCH --mem=16G", "#SBATCH --account=lab", "--task \"$SLURM_ARRAY_TASK_ID\""] {
        assert!(s.contains(want), "missing `{want}` in\n{s}");
    }
    assert!(s.contains(&f.display().to_string()));
    let _ = std::fs::remove_dir_all(&dir);
}

/// A real Slurm (one node on localhost, started by `scripts/slurm_local.sh`): a 4-task array
/// of tiny runs, then `compare`.
#[test]
fn slurm_job_array_runs_a_sweep() {
    if std::env::var("EQUIMODAL_SLURM").as_deref() != Ok("1") {
        eprintln!("skipped: set EQUIMODAL_SLURM=1 with a running Slurm (scripts/slurm_local.sh start; .ci/run does this)");
        return;
    }
    let dir = tmp("slurm-real");
    let f = sweep_file(&dir, "array", &format!("{TINY_SET}[grid]\nseed = [0, 1]\n\"method.name\" = [\"joint\", \"ogm_ge\"]\n[slurm]\ngpus_per_task = 0\ntime = \"00:10:00\"\n"));
    let out = cli(&["sweep", &f.display().to_string(), "--slurm", "--submit"]);
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "{stdout} {}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("Submitted batch job"), "{stdout}");
    let o = dir.join("out");
    let runs = ["joint_seed0", "joint_seed1", "ogm_ge_seed0", "ogm_ge_seed1"];
    let t0 = std::time::Instant::now();
    while !runs.iter().all(|r| o.join(r).join("summary.txt").exists()) {
        assert!(t0.elapsed().as_secs() < 600, "the array did not finish: {:?}", std::fs::read_dir(&o).unwrap().map(|e| e.unwrap().file_name()).collect::<Vec<_>>());
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
    let out = cli(&["compare", &o.display().to_string()]);
    let md = String::from_utf8_lossy(&out.stdout);
    assert!(md.contains("| joint | 2 |") && md.contains("| ogm_ge | 2 |"), "{md}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A hand-made run directory: seed, method, and per-epoch (val acc, test acc, audio acc).
fn fake_run(dir: &Path, seed: u64, method: &str, epochs: &[(f64, f64, f64)]) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("config.toml"), format!("seed = {seed}\n[method]\nname = \"{method}\"\n")).unwrap();
    let lines: Vec<String> = epochs
        .iter()
        .enumerate()
        .map(|(e, (v, t, a))| {
            serde_json::json!({"epoch": e, "val": {"acc": v}, "test": {"acc": t, "macro_f1": t / 2.0, "per_modality": {"audio": {"acc": a}}}, "imbalance": {"ratio": 1.0 + e as f64}}).to_string()
        })
        .collect();
    std::fs::write(dir.join("metrics.jsonl"), lines.join("\n") + "\n").unwrap();
}

#[test]
fn compare_statistics_on_hand_made_runs() {
    let dir = tmp("compare");
    // joint: test acc at the best-val epoch 0.5, 0.6, 0.7; aug: 0.4, 0.5, 0.8
    for (s, (j, a)) in [(0.5, 0.4), (0.6, 0.5), (0.7, 0.8)].iter().enumerate() {
        fake_run(&dir.join(format!("joint{s}")), s as u64, "joint", &[(0.9, *j, 0.3), (0.1, 0.0, 0.0)]);
        fake_run(&dir.join(format!("aug{s}")), s as u64, "aug", &[(0.2, 0.0, 0.0), (0.8, *a, 0.5)]);
    }
    let runs: Vec<_> = ex::find_runs(std::slice::from_ref(&dir)).unwrap().iter().map(|d| ex::read_run(d).unwrap()).collect();
    assert_eq!(runs.len(), 6);
    let c = ex::compare(&runs, None).unwrap();
    assert_eq!(c.select, Selection::BestVal, "every run has validation accuracy");
    let g = |name: &str| c.groups.iter().find(|g| g.label == name).unwrap();
    let j = g("joint").summary(|p| p.fused);
    assert!((j.mean - 0.6).abs() < 1e-12 && (j.std - 0.1).abs() < 1e-12);
    // 95 % CI half-width: t(0.975, 2) = 4.302653 times 0.1 / sqrt(3)
    assert!((j.ci95 - 4.302_653 * 0.1 / 3f64.sqrt()).abs() < 1e-6, "{j:?}");
    let p = ex::compare::pair(g("joint"), g("aug"));
    // differences 0.1, 0.1, -0.1: mean 1/30, SE 0.0666667, t 0.5
    assert_eq!((p.n, p.wins, p.losses), (3, 2, 1));
    assert!((p.mean - 1.0 / 30.0).abs() < 1e-12 && (p.t - 0.5).abs() < 1e-9, "{p:?}");
    // last epoch instead: joint scores 0 everywhere
    let last = ex::compare(&runs, Some(Selection::Last)).unwrap();
    assert_eq!(last.groups.iter().find(|g| g.label == "joint").unwrap().summary(|p| p.fused).mean, 0.0);
    // mean of the last two epochs, and the per-modality and imbalance columns
    let k2 = ex::compare(&runs, Some(Selection::LastK(2))).unwrap();
    let aug = k2.groups.iter().find(|g| g.label == "aug").unwrap();
    assert!((aug.summary(|p| p.fused).mean - (0.4 + 0.5 + 0.8) / 6.0).abs() < 1e-12);
    assert!((aug.summary(|p| p.imbalance).mean - 1.5).abs() < 1e-12);
    assert!((aug.summary(|p| p.per_modality["audio"]).mean - 0.25).abs() < 1e-12);
    // written as Markdown, CSV and LaTeX through the CLI
    let out = cli(&["compare", &dir.display().to_string(), "--select", "best_val"]);
    assert!(out.status.success(), "{out:?}");
    let md = String::from_utf8_lossy(&out.stdout);
    assert!(md.contains("| joint | 3 | 60.0 ± 10.0 [35.2, 84.8]"), "{md}");
    assert!(md.contains("| aug | joint | 3 | -3.33 | 6.67 | -0.50 |"), "{md}");
    let csv = std::fs::read_to_string(dir.join("compare.csv")).unwrap();
    assert!(csv.lines().any(|l| l.starts_with("joint,fused,3,0.6")), "{csv}");
    assert!(std::fs::read_to_string(dir.join("compare.tex")).unwrap().contains("joint & 3 & $60.0 \\pm 10.0$"));
    // a second run of one setting with the same seed is an error naming it
    fake_run(&dir.join("joint0-again"), 0, "joint", &[(0.9, 0.5, 0.3)]);
    let runs: Vec<_> = ex::find_runs(std::slice::from_ref(&dir)).unwrap().iter().map(|d| ex::read_run(d).unwrap()).collect();
    let e = ex::compare(&runs, None).err().unwrap().to_string();
    assert!(e.contains("seed 0") && e.contains("joint0"), "{e}");
    // bad input names the file
    std::fs::write(dir.join("joint0-again/metrics.jsonl"), "{not json\n").unwrap();
    let e = ex::read_run(&dir.join("joint0-again")).err().unwrap().to_string();
    assert!(e.contains("metrics.jsonl") && e.contains("line 1"), "{e}");
    let e = ex::find_runs(&[dir.join("nothing-here")]).err().unwrap().to_string();
    assert!(e.contains("nothing-here"), "{e}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn selection_rules_never_average_over_what_a_run_lacks() {
    let dir = tmp("compare-select");
    let run = |name: &str, lines: &[serde_json::Value]| {
        let d = dir.join(name);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("config.toml"), "seed = 0\n[method]\nname = \"joint\"\n").unwrap();
        std::fs::write(d.join("metrics.jsonl"), lines.iter().map(|l| l.to_string() + "\n").collect::<String>()).unwrap();
        ex::read_run(&d).unwrap()
    };
    let ep = |e: usize, val: serde_json::Value, acc: f64, extra: serde_json::Value| {
        let mut test = serde_json::json!({"acc": acc, "macro_f1": acc / 2.0, "per_modality": {"audio": {"acc": 0.1}}});
        for (k, v) in extra.as_object().unwrap() {
            test[k] = v.clone();
        }
        serde_json::json!({"epoch": e, "val": {"acc": val}, "test": test})
    };
    let null = serde_json::Value::Null;
    // an epoch whose validation accuracy was NaN (logged null) is passed over, not an error
    let r = run("nullval", &[ep(0, 0.5.into(), 0.4, serde_json::json!({})), ep(1, null.clone(), 0.9, serde_json::json!({})), ep(2, 0.6.into(), 0.7, serde_json::json!({}))]);
    assert_eq!(ex::compare::pick(&r, Selection::BestVal).unwrap().fused, 0.7);
    let none = run("noval", &[ep(0, null.clone(), 0.4, serde_json::json!({}))]);
    let e = ex::compare::pick(&none, Selection::BestVal).unwrap_err().to_string();
    assert!(e.contains("noval") && e.contains("validation"), "{e}");
    // last_k over fewer evaluated epochs than k is an error naming the run and both counts
    let e = ex::compare::pick(&r, Selection::LastK(5)).unwrap_err().to_string();
    assert!(e.contains("nullval") && e.contains("k = 5") && e.contains("3 evaluated"), "{e}");
    // a figure one of the k epochs lacks is missing, not the mean of the others; a modality
    // first logged in a later epoch is reported (and missing where an epoch lacks it)
    let gap = run("gap", &[
        ep(0, 0.1.into(), 0.2, serde_json::json!({})),
        ep(1, 0.1.into(), 0.4, serde_json::json!({"macro_f1": null, "per_modality": {"audio": {"acc": 0.3}, "image": {"acc": 0.6}}})),
    ]);
    let p = ex::compare::pick(&gap, Selection::LastK(2)).unwrap();
    assert!((p.fused - 0.3).abs() < 1e-12 && p.macro_f1.is_nan(), "{p:?}");
    assert!((p.per_modality["audio"] - 0.2).abs() < 1e-12 && p.per_modality["image"].is_nan(), "{p:?}");
    // an accuracy outside [0, 1] (a damaged or edited log: 1e308 once hung the charts) is an
    // error naming the file, the line and the field
    for (bad, field) in [(serde_json::json!({"acc": 1e308}), "test.acc"), (serde_json::json!({"acc": 0.5, "per_modality": {"audio": {"acc": -5.0}}}), "test.per_modality.audio.acc")] {
        let d = dir.join("bad");
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("config.toml"), "seed = 0\n[method]\nname = \"joint\"\n").unwrap();
        std::fs::write(d.join("metrics.jsonl"), format!("{}\n{}\n", ep(0, 0.5.into(), 0.4, serde_json::json!({})), serde_json::json!({"epoch": 1, "test": bad}))).unwrap();
        let e = ex::read_run(&d).unwrap_err().to_string();
        assert!(e.contains("metrics.jsonl") && e.contains("line 2") && e.contains(field), "{e}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// A hand-made AV-MNIST run holding out `speaker`, whose last epoch's test accuracy is `acc`.
fn fold_run(dir: &Path, seed: u64, method: &str, speaker: Option<&str>, acc: f64) {
    std::fs::create_dir_all(dir).unwrap();
    let held = speaker.map_or(String::new(), |s| format!("split = \"speaker\"\ntest_speakers = [\"{s}\"]\n"));
    std::fs::write(dir.join("config.toml"), format!("seed = {seed}\n[data]\nkind = \"avmnist\"\n{held}[method]\nname = \"{method}\"\n")).unwrap();
    let line = serde_json::json!({"epoch": 0, "test": {"acc": acc, "macro_f1": acc, "per_modality": {}}, "imbalance": {"ratio": 1.0}});
    std::fs::write(dir.join("metrics.jsonl"), format!("{line}\n")).unwrap();
}

#[test]
fn compare_pairs_cross_validation_folds_like_seeds() {
    let dir = tmp("folds");
    // joint and aug, each speaker held out in turn, seeds 0 and 1: aug - joint per unit is
    // +0.02, +0.04, -0.01, +0.03 (mean +0.02)
    let acc = [("george", 0, 0.50, 0.52), ("george", 1, 0.60, 0.64), ("lucas", 0, 0.70, 0.69), ("lucas", 1, 0.40, 0.43)];
    for (sp, seed, j, a) in acc {
        fold_run(&dir.join(format!("joint-{sp}-{seed}")), seed, "joint", Some(sp), j);
        fold_run(&dir.join(format!("aug-{sp}-{seed}")), seed, "aug", Some(sp), a);
    }
    let runs: Vec<_> = ex::find_runs(std::slice::from_ref(&dir)).unwrap().iter().map(|d| ex::read_run(d).unwrap()).collect();
    // without the key every fold is a setting of its own, labelled by its speaker
    let c = ex::compare(&runs, None).unwrap();
    assert_eq!(c.groups.len(), 4);
    assert!(c.groups.iter().all(|g| g.label.contains("data.test_speakers=")), "{:?}", c.groups.iter().map(|g| &g.label).collect::<Vec<_>>());
    // with it: one setting per method, four units each, paired over all four
    let c = ex::compare::compare_by(&runs, None, Some("data.test_speakers")).unwrap();
    let labels: Vec<&str> = c.groups.iter().map(|g| g.label.as_str()).collect();
    assert_eq!(labels.len(), 2, "{labels:?}");
    assert!(labels.contains(&"joint") && labels.contains(&"aug"), "{labels:?}");
    let g = |name: &str| c.groups.iter().find(|g| g.label == name).unwrap();
    assert_eq!(g("aug").runs.len(), 4);
    let p = ex::compare::pair(g("aug"), g("joint"));
    assert_eq!(p.n, 4);
    assert!((p.mean - 0.02).abs() < 1e-12, "mean difference: {}", p.mean);
    assert_eq!((p.wins, p.ties, p.losses), (3, 0, 1));
    let md = ex::compare::markdown(&c);
    assert!(md.contains("over `data.test_speakers` × seeds") && md.contains("| A | B | runs |"), "{md}");
    // a run that does not name the key cannot be paired by it
    fold_run(&dir.join("joint-take-0"), 0, "joint", None, 0.5);
    let runs: Vec<_> = ex::find_runs(std::slice::from_ref(&dir)).unwrap().iter().map(|d| ex::read_run(d).unwrap()).collect();
    let e = ex::compare::compare_by(&runs, None, Some("data.test_speakers")).err().unwrap().to_string();
    assert!(e.contains("joint-take-0") && e.contains("data.test_speakers"), "{e}");
    // the seed is always a pairing key; naming it says so rather than that runs lack it
    let e = ex::compare::compare_by(&runs, None, Some("seed")).err().unwrap().to_string();
    assert!(e.contains("--pair-by") && e.contains("always paired by their seed"), "{e}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_run_writes_csv_and_tensorboard_logs() {
    let dir = tmp("logs");
    let run = dir.join("run");
    let out = cli(&["train", "--quiet", "--out", &run.display().to_string(), "--set", "train.epochs=2", "--set", "data.n_train=96", "--set", "data.n_test=64", "--set", "method.name=joint", "--set", "train.workers=1"]);
    assert!(out.status.success(), "{out:?}");
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let csv = std::fs::read_to_string(run.join("metrics.csv")).unwrap();
    let rows: Vec<Vec<&str>> = csv.lines().map(|l| l.split(',').collect()).collect();
    assert_eq!(rows.len(), 3, "header and one row per epoch");
    let col = rows[0].iter().position(|c| *c == "test.acc").unwrap();
    for (e, l) in lines.iter().enumerate() {
        assert_eq!(rows[e + 1][0], e.to_string());
        assert_eq!(rows[e + 1][col].parse::<f64>().unwrap(), l["test"]["acc"].as_f64().unwrap());
    }
    let events = equimodal::train::logs::read_tensorboard(&run.join(equimodal::train::logs::TB_FILE)).unwrap();
    for (e, l) in lines.iter().enumerate() {
        let v = events.iter().find(|(s, t, _)| *s == e as i64 + 1 && t == "test/acc").unwrap_or_else(|| panic!("no test/acc at step {}", e + 1));
        assert_eq!(v.2, l["test"]["acc"].as_f64().unwrap() as f32);
    }
    let _ = std::fs::remove_dir_all(&dir);
}
