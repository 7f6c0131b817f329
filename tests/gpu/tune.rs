//! The kernel tuner (`gpu::tune`, `ops::tune`): it picks a variant that is correct and was
//! timed fastest, remembers it in its cache file across contexts, and never trusts a cache
//! that is corrupt, stale or names a variant that no longer exists.
use crate::common::*;
use equimodal::ops::{self, MatmulKernel};
use equimodal::{Gpu, Tensor, TuneMode, TuneStore};
use std::path::{Path, PathBuf};

fn context(mode: TuneMode, file: &Path) -> Gpu {
    let mut o = test_options();
    o.tune = mode;
    o.tune_cache = TuneStore::File(file.to_path_buf());
    Gpu::new(o).unwrap()
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("equimodal-tune-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir.join("cache").join("tune.json")
}

/// 30 x 200 · 200 x 20: K = 200 is 13 slices, so split-K 4 is a candidate beside both tiles.
const M: usize = 30;
const K: usize = 200;
const N: usize = 20;
const BUCKET: &str = "matmul/---- batch1 m32 n32 k256";

/// One product on `g`, checked against the CPU.
fn product_is_right(g: &Gpu) {
    let mut rng = Rng::new(7);
    let a = round_f32(&rng.normals(M * K));
    let b = round_f32(&rng.normals(K * N));
    let c = ops::matmul(&upload(g, &a, &[M, K]), &upload(g, &b, &[K, N])).unwrap().to_vec().unwrap();
    let mut want = vec![0.0; M * N];
    for i in 0..M {
        for j in 0..N {
            want[i * N + j] = (0..K).map(|l| a[i * K + l] * b[l * N + j]).sum();
        }
    }
    assert_close("tuned matmul", &c, &want, 1e-5, 1e-6 * K as f64);
}

fn edit(file: &Path, f: impl FnOnce(&mut serde_json::Value)) {
    let mut v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(file).unwrap()).unwrap();
    f(&mut v);
    std::fs::write(file, v.to_string()).unwrap();
}

fn tuned_variant(g: &Gpu) -> Option<String> {
    g.tune_table().get(BUCKET).map(|e| e.variant.clone())
}

#[test]
fn tuning_picks_the_fastest_correct_variant_and_the_cache_file_remembers_it() {
    let file = scratch("remember");
    let g = context(TuneMode::Full, &file);
    assert_eq!(g.tune_cache_path().as_deref(), Some(file.as_path()));
    assert!(g.tune_table().is_empty());
    product_is_right(&g);
    let table = g.tune_table();
    let e = &table[BUCKET];
    let names: Vec<&str> = e.us.keys().map(|s| s.as_str()).collect();
    assert_eq!(names, ["splitk4", "tile128", "tile128k16", "tile64"], "the candidates of {BUCKET}");
    let fastest = e.us.iter().filter_map(|(k, v)| v.map(|v| (k, v))).min_by(|a, b| a.1.total_cmp(&b.1)).unwrap().0;
    assert_eq!(&e.variant, fastest, "{e:?}");
    assert!(MatmulKernel::from_name(&e.variant).is_some());
    assert_eq!(e.problem, "30 x 20 x 200 (batch 1)");
    // a second context on the same file starts with the choice and does not time again
    let g2 = context(TuneMode::Quick, &file);
    assert_eq!(g2.tune_table().get(BUCKET), Some(e));
    product_is_right(&g2);
    assert_eq!(g2.tune_table().get(BUCKET), Some(e));
}

/// A product with more than one band of 128-row tiles (and vec4-aligned operands) has the
/// grouped tile order among its candidates, in both forms; the small one above has not
/// (there the order is the same as row by row, and timing it twice would waste the budget).
/// K-slices of 16 are candidates only where K is longer than one slice of 8 (the device
/// here has the 32 KiB they need), with the VEC4 form where K is a multiple of 16.
#[test]
fn the_grouped_order_and_deep_slices_are_candidates_only_where_they_change_something() {
    let candidates = |k: usize, seed: u64| {
        let file = scratch(&format!("grouped_k{k}"));
        let g = context(TuneMode::Full, &file);
        let (m, n) = (128 * ops::MATMUL_GROUP_M as usize + 8, 136);
        let mut rng = Rng::new(seed);
        let a = round_f32(&rng.normals(m * k));
        let b = round_f32(&rng.normals(k * n));
        let c = ops::matmul(&upload(&g, &a, &[m, k]), &upload(&g, &b, &[k, n])).unwrap().to_vec().unwrap();
        let want: Vec<f64> = (0..m * n).map(|i| (0..k).map(|l| a[i / n * k + l] * b[l * n + i % n]).sum()).collect();
        assert_close(&format!("K = {k}: tuned product"), &c, &want, 1e-5, 1e-6 * k as f64);
        let table = g.tune_table();
        let e = table.iter().find(|(b, _)| b.starts_with("matmul/")).unwrap().1;
        e.us.keys().cloned().collect::<Vec<String>>()
    };
    assert_eq!(candidates(8, 8), ["tile128", "tile128g8", "tile128v4", "tile128v4g8", "tile64"], "K = 8: one slice either way");
    let deep = ["tile128", "tile128g8", "tile128k16", "tile128k16g8", "tile128v4", "tile128v4g8", "tile64"];
    assert_eq!(candidates(24, 9), deep, "K = 24: no VEC4 form at slices of 16");
    let all = ["tile128", "tile128g8", "tile128k16", "tile128k16g8", "tile128v4", "tile128v4g8", "tile128v4k16", "tile128v4k16g8", "tile64"];
    assert_eq!(candidates(32, 10), all, "K = 32: every form of both tiles");
}

#[test]
fn a_corrupt_or_stale_cache_is_ignored_and_then_replaced() {
    let file = scratch("corrupt");
    std::fs::create_dir_all(file.parent().unwrap()).unwrap();
    std::fs::write(&file, "{ not json").unwrap();
    let g = context(TuneMode::Quick, &file);
    assert!(g.tune_table().is_empty());
    product_is_right(&g);
    let good = tuned_variant(&g).expect("tuned");
    assert_eq!(tuned_variant(&context(TuneMode::Quick, &file)), Some(good.clone()), "the file was rewritten whole");
    // written with other kernel sources: stale, so not one entry of it is used
    edit(&file, |v| v["sources"] = "0000000000000000".into());
    assert!(context(TuneMode::Quick, &file).tune_table().is_empty());
    // the same for another engine version
    product_is_right(&g); // rewrites the file with this build's sources
    edit(&file, |v| v["engine"] = "equimodal 0.0.1".into());
    assert!(context(TuneMode::Quick, &file).tune_table().is_empty());
}

#[test]
fn a_variant_the_family_no_longer_offers_is_tuned_again() {
    let file = scratch("unknown");
    product_is_right(&context(TuneMode::Quick, &file));
    edit(&file, |v| {
        for (_, dev) in v["devices"].as_object_mut().unwrap() {
            dev[BUCKET]["variant"] = "tile256".into();
        }
    });
    let g = context(TuneMode::Quick, &file);
    assert_eq!(tuned_variant(&g).as_deref(), Some("tile256"));
    product_is_right(&g);
    let v = tuned_variant(&g).unwrap();
    assert!(MatmulKernel::from_name(&v).is_some(), "re-tuned to {v}");
}

#[test]
fn tuning_off_reads_and_writes_nothing() {
    let file = scratch("off");
    let g = context(TuneMode::Off, &file);
    assert_eq!(g.tune_cache_path(), None);
    product_is_right(&g);
    assert!(g.tune_table().is_empty());
    assert!(!file.exists());
    // and in memory only: tuned, but no file
    let mut o = test_options();
    o.tune_cache = TuneStore::Memory;
    let g = Gpu::new(o).unwrap();
    product_is_right(&g);
    assert!(tuned_variant(&g).is_some());
    assert!(!file.exists());
}

#[test]
fn the_tuning_mode_names_its_variable_when_unknown() {
    assert_eq!(TuneMode::parse("EQUIMODAL_TUNE", " Full ").unwrap(), TuneMode::Full);
    assert_eq!(TuneMode::parse("EQUIMODAL_TUNE", "off").unwrap(), TuneMode::Off);
    let e = TuneMode::parse("EQUIMODAL_TUNE", "fast").unwrap_err().to_string();
    assert!(e.contains("EQUIMODAL_TUNE") && e.contains("off, quick, full"), "{e}");
    // an unwritable cache path is a warning: the product still runs and the choice holds
    let file = PathBuf::from("/proc/equimodal-no-such-dir/tune.json");
    let g = context(TuneMode::Quick, &file);
    product_is_right(&g);
    assert!(tuned_variant(&g).is_some());
}

#[test]
fn a_variant_that_fails_the_probe_is_never_chosen() {
    let mut o = test_options();
    o.tune_cache = TuneStore::Memory;
    // a run's behaviour: step around the wrong variants (the suite's strict mode is below)
    o.strict_probe = false;
    let g = Gpu::new(o).unwrap();
    let reference = Tensor::from_slice(&g, &[1.0, -2.0, 3.0], &[3]).unwrap();
    let zeros: ops::tune::Candidate = ("zeros", Box::new(|| Tensor::zeros(&g, &[3])));
    let nan: ops::tune::Candidate = ("nan", Box::new(|| Tensor::from_slice(&g, &[1.0, f32::NAN, 3.0], &[3])));
    let right: ops::tune::Candidate = ("right", Box::new(|| Tensor::from_slice(&g, &[1.0, -2.0, 3.00001], &[3])));
    let pick = ops::tune::tune(&g, "test", "probe", "3 values".into(), &[zeros, nan, right], &reference).unwrap();
    assert_eq!(pick, "right");
    let e = &g.tune_table()["test/probe"];
    assert_eq!((e.us["zeros"], e.us["nan"]), (None, None));
    assert!(e.us["right"].is_some());
    // no correct candidate: an error naming the family and bucket, not a pick
    let zeros: ops::tune::Candidate = ("zeros", Box::new(|| Tensor::zeros(&g, &[3])));
    let err = ops::tune::tune(&g, "test", "none", "3 values".into(), &[zeros], &reference).unwrap_err().to_string();
    assert!(err.contains("test none") && err.contains("no variant passed"), "{err}");
    // the test suite's strict mode: a wrong variant is an error naming it, even beside a
    // right one
    let mut o = test_options();
    o.tune_cache = TuneStore::Memory;
    let strict = Gpu::new(o).unwrap();
    let zeros: ops::tune::Candidate = ("zeros", Box::new(|| Tensor::zeros(&strict, &[3])));
    let right: ops::tune::Candidate = ("right", Box::new(|| Tensor::from_slice(&strict, &[1.0, -2.0, 3.0], &[3])));
    let reference = Tensor::from_slice(&strict, &[1.0, -2.0, 3.0], &[3]).unwrap();
    let err = ops::tune::tune(&strict, "test", "strict", "3 values".into(), &[zeros, right], &reference).unwrap_err().to_string();
    assert!(err.contains("test strict") && err.contains("zeros"), "{err}");
}

/// Tuning operands that do not fit beside the run's tensors are no error: the product runs
/// on the size rule's variant, right, and the bucket is tuned at a later product.
#[test]
fn no_memory_for_the_tuning_operands_runs_the_product_untuned() {
    let mut o = test_options();
    o.tune_cache = TuneStore::Memory;
    let g = Gpu::new(o).unwrap();
    let (m, k, n) = (2000, 200, 20); // A is 1.6 MB: its tuning copy needs a segment of its own
    let mut rng = Rng::new(8);
    let a = round_f32(&rng.normals(m * k));
    let b = round_f32(&rng.normals(k * n));
    let (at, bt) = (upload(&g, &a, &[m, k]), upload(&g, &b, &[k, n]));
    g.trim_memory();
    g.set_memory_limit(Some(g.memory().reserved + (1 << 20)));
    let c = ops::matmul(&at, &bt).unwrap().to_vec().unwrap();
    g.set_memory_limit(None);
    let want: Vec<f64> = (0..m * n).map(|i| (0..k).map(|l| a[(i / n) * k + l] * b[l * n + i % n]).sum()).collect();
    assert_close("untuned matmul", &c, &want, 1e-5, 1e-6 * k as f64);
    assert!(g.tune_table().is_empty(), "{:?}", g.tune_table());
    // with room again, the next product of the bucket tunes it
    ops::matmul(&at, &bt).unwrap();
    assert_eq!(g.tune_table().len(), 1);
}

/// `equimodal tune` runs a configuration's passes, prints the table and fills the cache;
/// `--list` prints what the cache holds; with tuning off it refuses, naming the variable.
#[test]
fn the_tune_command_fills_the_cache_and_lists_it() {
    let file = scratch("cli");
    let run = |args: &[&str], off: bool| {
        let mut c = equimodal_bin();
        c.env("EQUIMODAL_TUNE_CACHE", &file).args(args);
        if off {
            c.env("EQUIMODAL_TUNE", "off");
        }
        let out = c.output().unwrap();
        (out.status.success(), String::from_utf8_lossy(&out.stdout).to_string(), String::from_utf8_lossy(&out.stderr).to_string())
    };
    let (ok, table, err) = run(&["tune", "--quick", "--set", "train.epochs=1", "--set", "data.n_train=100", "--set", "train.batch_size=32"], false);
    assert!(ok, "{err}");
    assert!(table.contains("mode Quick") && table.contains(&file.display().to_string()), "{table}");
    let rows: Vec<&str> = table.lines().filter(|l| l.starts_with("matmul/")).collect();
    assert!(rows.len() >= 4, "{table}");
    // the last batch (100 = 3 x 32 + 4) has its own buckets beside the full batch's
    assert!(table.contains("(batch 1)") && rows.iter().any(|r| r.contains(" 4 x ")), "{table}");
    let (ok, listed, err) = run(&["tune", "--list"], false);
    assert!(ok, "{err}");
    let listed_rows: Vec<&str> = listed.lines().filter(|l| l.starts_with("matmul/")).collect();
    assert_eq!(listed_rows, rows);
    let (ok, _, err) = run(&["tune", "--quick"], true);
    assert!(!ok && err.contains("EQUIMODAL_TUNE"), "{err}");
    // a corrupt cache file is ignored with a warning naming it, never trusted
    let saved = std::fs::read(&file).unwrap();
    std::fs::write(&file, "{ not json").unwrap();
    let (ok, listed, err) = run(&["tune", "--list"], false);
    assert!(ok && err.contains("warning: tuning cache") && err.contains(&file.display().to_string()) && err.contains("ignoring it"), "{err}");
    assert!(!listed.lines().any(|l| l.starts_with("matmul/")), "{listed}");
    std::fs::write(&file, saved).unwrap();
    // a mixed-precision configuration tunes the f16 buckets its products use
    let (ok, mixed, err) = run(&["tune", "--quick", "--set", "train.epochs=1", "--set", "data.n_train=100", "--set", "train.batch_size=32", "--set", "train.precision=mixed"], false);
    assert!(ok, "{err}");
    assert!(mixed.lines().any(|l| l.starts_with("matmul/") && l.contains("half=AB")), "{mixed}");
}

/// Two contexts on one cache file stand for two processes of a sweep: a bucket the first
/// tuned is adopted by the second from the file, without timing; and when both time the
/// same bucket, the choice written first wins for both, so runs sharing the file run the
/// same variant (split-K and the tiles differ in the last bits).
#[test]
fn runs_sharing_a_cache_file_run_the_same_variant() {
    let file = scratch("shared");
    let (a, b) = (context(TuneMode::Quick, &file), context(TuneMode::Quick, &file));
    product_is_right(&a);
    assert!(b.tune_table().is_empty());
    product_is_right(&b);
    assert_eq!(b.tune_table().get(BUCKET), a.tune_table().get(BUCKET), "adopted from the file, not timed again");
    // both time one bucket: the first to write wins
    let reference = Tensor::from_slice(&a, &[1.0, 2.0], &[2]).unwrap();
    assert_eq!(ops::tune::tune(&a, "test", "race", "2 values".into(), &[constant("right", &a)], &reference).unwrap(), "right");
    let reference_b = Tensor::from_slice(&b, &[1.0, 2.0], &[2]).unwrap();
    let kept = ops::tune::tune(&b, "test", "race", "2 values".into(), &[constant("other", &b), constant("right", &b)], &reference_b).unwrap();
    assert_eq!(kept, "right", "the second context keeps the first one's choice");
    assert_eq!(b.tune_table()["test/race"], a.tune_table()["test/race"]);
}

/// A candidate that returns (1, 2).
fn constant<'a>(name: &'static str, g: &'a Gpu) -> ops::tune::Candidate<'a> {
    (name, Box::new(move || Tensor::from_slice(g, &[1.0, 2.0], &[2])))
}

/// The three GEMMs of a convolution are tuned apart (each its own bucket, every tile a
/// candidate, the 128x64 tile the probe's reference), the file remembers the tiles, and the
/// results are those of the chosen tile.
#[test]
fn convolutions_are_tuned_per_gemm_and_the_cache_file_remembers_the_tiles() {
    use equimodal::gpu::ConvTile;
    let file = scratch("conv");
    let p = ops::Conv2dParams { stride: (1, 1), padding: (1, 1), dilation: (1, 1) };
    let mut rng = Rng::new(5);
    // 8 output channels of a one-channel 20 x 19 image, batch 4
    let (x, w, gy) = (round_f32(&rng.normals(4 * 20 * 19)), round_f32(&rng.normals(8 * 9)), round_f32(&rng.normals(4 * 8 * 20 * 19)));
    let run = |g: &Gpu, tile: Option<ConvTile>| -> [Vec<f32>; 3] {
        let xt = upload(g, &x, &[4, 1, 20, 19]).requires_grad();
        let wt = upload(g, &w, &[8, 1, 3, 3]).requires_grad();
        let y = ops::conv2d_on_tile(&xt, &wt, None, p, None, tile).unwrap();
        let mut grads = equimodal::Gradients::new();
        y.backward_with(upload(g, &gy, y.shape()), &mut grads).unwrap();
        [y.to_vec().unwrap(), grads.get(&xt).unwrap().to_vec().unwrap(), grads.get(&wt).unwrap().to_vec().unwrap()]
    };
    let g = context(TuneMode::Quick, &file);
    let tuned = run(&g, None);
    let table = g.tune_table();
    let mut chosen = Vec::new();
    // (M, N) of each GEMM: pixels x output channels, pixels x input channels, C*KH*KW x O
    for (gemm, m, n) in [("fwd", 4 * 20 * 19, 8), ("dx", 4 * 20 * 19, 1), ("dw", 9, 8)] {
        let (key, e) = table.iter().find(|(k, _)| k.starts_with(&format!("conv/{gemm} "))).unwrap_or_else(|| panic!("no conv/{gemm} bucket in {table:?}"));
        let tile = ConvTile::from_name(&e.variant).unwrap_or_else(|| panic!("{key}: {}", e.variant));
        let names: Vec<&str> = e.us.keys().map(|s| s.as_str()).collect();
        let mut timed: Vec<&str> = ops::tiles_to_time(m, n).iter().map(|t| t.name()).collect();
        timed.sort();
        assert_eq!(names, timed, "{key}: the tiles within twice the least estimated work are timed");
        assert!(timed.len() >= 2 && timed.iter().any(|t| t.starts_with('g')), "{key}: {timed:?}");
        assert!(e.us.values().all(|v| v.is_some()), "{key}: every tile passes the probe: {e:?}");
        chosen.push(tile);
    }
    // the forward and dX of every tile add in the same order: the tuned results are the
    // chosen tiles' bit for bit; dW (split-K per tile) too when its tile is forced
    assert_eq!(tuned[0], run(&g, Some(chosen[0]))[0]);
    assert_eq!(tuned[1], run(&g, Some(chosen[1]))[1]);
    assert_eq!(tuned[2], run(&g, Some(chosen[2]))[2]);
    // a second context on the same file starts with the choices and times nothing
    let g2 = context(TuneMode::Quick, &file);
    assert_eq!(g2.tune_table(), table);
    assert_eq!(run(&g2, None), tuned);
    assert_eq!(g2.tune_table(), table);
}

/// `equimodal tune` meets the products that appear only later in a run: AUG's stacked
/// learners at the most learners a run can reach (5 here: N = 5 × 32), and AIM's damped
/// auxiliary blocks (the weight-scaled convolution buckets), besides the first step's.
#[test]
fn pretuning_reaches_the_later_learners_and_the_damped_blocks() {
    let tuned = |name: &str, sets: &[&str]| {
        let g = context(TuneMode::Quick, &scratch(name));
        let mut all: Vec<String> = ["data.n_train=40", "data.n_test=16", "train.batch_size=16", "train.workers=1"].iter().map(|s| s.to_string()).collect();
        all.extend(sets.iter().map(|s| s.to_string()));
        let (cfg, _) = equimodal::config::load(None, &all).unwrap();
        equimodal::train::pretune(&g, &cfg).unwrap()
    };
    let aug = tuned("aug", &["method.name=aug", "method.aug.hidden=32", "method.aug.check_every=1", "train.epochs=5"]);
    assert!(aug.values().any(|e| e.problem.contains(" x 160 x ")), "no bucket of five stacked learners: {:?}", aug.values().map(|e| &e.problem).collect::<Vec<_>>());
    let aim = tuned("aim", &["method.name=aim", "model.encoder=small_cnn", "model.width=4"]);
    assert!(aim.keys().any(|k| k.starts_with("conv/fwd") && k.ends_with(" scaled")), "no damped convolution: {:?}", aim.keys().collect::<Vec<_>>());
    assert!(aim.keys().any(|k| k.starts_with("conv/fwd") && !k.ends_with(" scaled")), "{:?}", aim.keys().collect::<Vec<_>>());
}
