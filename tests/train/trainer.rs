//! The training pipeline end to end on tiny synthetic data: every method trains and logs,
//! checkpoints resume exactly after a kill mid-run, config errors name their fields, and
//! AUG's adaptive assignment gives the weak modality learners.
use crate::common;
use common::resume::{log_lines, resume_through_the_cli_is_exact, tmp};
use common::*;
use equimodal::config;
use equimodal::methods::{AugConfig, AugRule};
use equimodal::methods::Aug;
use equimodal::train::{self, TrainOptions};
use std::path::Path;

fn tiny(extra: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = [
        "data.n_train=160",
        "data.n_test=64",
        "model.encoder=mlp",
        "model.hidden=[32]",
        "method.aug.hidden=32",
        "train.batch_size=32",
        "train.workers=1",
        "train.epochs=3",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    v.extend(extra.iter().map(|s| s.to_string()));
    v
}


fn run(sets: &[String], dir: &Path) -> equimodal::train::RunSummary {
    let (cfg, text) = config::load(None, sets).unwrap();
    let mut o = TrainOptions::new(dir);
    o.progress = false;
    train::train(&gpu(), &cfg, &text, &o).unwrap()
}

#[test]
fn every_method_trains_logs_and_checkpoints() {
    for (name, extra) in [
        ("joint", vec!["method.name=joint"]),
        ("joint_sum", vec!["method.name=joint", "method.fusion=sum"]),
        ("joint_film", vec!["method.name=joint", "method.fusion=film"]),
        ("joint_gated", vec!["method.name=joint", "method.fusion=gated", "train.optimizer=adam", "train.lr=0.001"]),
        ("unimodal", vec!["method.name=unimodal", "method.modality=visual"]),
        ("ogm", vec!["method.name=ogm"]),
        ("ogm_ge", vec!["method.name=ogm_ge", "train.schedule=cosine"]),
        ("aug", vec!["method.name=aug", "method.aug.check_every=1"]),
        ("aug_paper", vec!["method.name=aug", "method.aug.form=paper", "method.aug.rule=paper", "train.schedule=step", "train.step_size=1"]),
        ("pmr", vec!["method.name=pmr", "method.fusion=sum"]),
        ("pmr_film", vec!["method.name=pmr", "method.fusion=film", "method.pmr.coefficient=ratio", "method.pmr.mu=0.01", "method.pmr.entropy_epochs=1"]),
        ("mmpareto", vec!["method.name=mmpareto"]),
        ("mmpareto_gated", vec!["method.name=mmpareto", "method.fusion=gated", "train.optimizer=adam", "train.lr=0.001"]),
        // AGM's hooked backward works for any fusion; G-Blending needs validation data
        ("agm_film", vec!["method.name=agm", "method.fusion=film"]),
        ("g_blending", vec!["method.name=g_blending", "method.g_blending.super_epoch=2", "data.n_val=64"]),
        ("aim", vec!["method.name=aim"]),
    ] {
        let dir = tmp(name);
        let s = run(&tiny(&extra), &dir);
        assert_eq!(s.epochs_run, 3, "{name}");
        let lines = log_lines(&dir);
        assert_eq!(lines.len(), 3, "{name}: one log line per epoch");
        let method = extra[0].strip_prefix("method.name=").unwrap();
        for (e, l) in lines.iter().enumerate() {
            assert_eq!(l["epoch"], e, "{name}");
            assert_eq!(l["method"], method, "{name}: the method's name in its log");
            assert!(l["train"]["loss"].as_f64().unwrap().is_finite(), "{name}: {l}");
            let acc = l["test"]["acc"].as_f64().unwrap();
            assert!((0.0..=1.0).contains(&acc), "{name}: {l}");
        }
        let last = lines.last().unwrap();
        if name != "unimodal" {
            assert!(last["imbalance"]["ratio"].as_f64().unwrap() >= 1.0, "{name}: {last}");
            for m in ["audio", "visual"] {
                assert!(last["test"]["per_modality"][m]["acc"].is_number(), "{name}: {last}");
            }
        }
        if name.starts_with("aug") {
            assert!(last["aug"]["learners"]["audio"].as_u64().unwrap() >= 1, "{name}: {last}");
            assert!(last["aug"]["gap"].is_number(), "{name}: {last}");
        }
        assert!(dir.join("checkpoints/last.safetensors").exists(), "{name}");
        assert!(dir.join("config.toml").exists());
        // evaluating the checkpoint reproduces the final test accuracy
        let (ev, _) = train::eval_checkpoint(&gpu(), &dir, &[]).unwrap();
        assert_eq!(ev.test.fused.acc, s.test.fused.acc, "{name}: eval of the checkpoint");
        let _ = std::fs::remove_dir_all(&dir);
    }
}

#[test]
fn training_learns_the_default_task() {
    // the default synthetic task is learnable well above chance (10 classes) in a few epochs
    let dir = tmp("learn");
    let s = run(&tiny(&["data.n_train=600", "data.n_test=200", "train.epochs=6", "method.name=joint", "model.hidden=[64]"]), &dir);
    assert!(s.test.fused.acc > 0.5, "fused test accuracy {}", s.test.fused.acc);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn resume_after_a_kill_aug_mlp_sgd() {
    // learners join at every check, so a resume must rebuild them before loading weights
    let sets = tiny(&["method.name=aug", "method.aug.check_every=1", "train.epochs=6", "data.n_train=480"]);
    resume_through_the_cli_is_exact("aug", &sets, 6);
}

#[test]
fn resume_after_a_kill_ogm_ge_cnn_adam_cosine() {
    // batch-norm running statistics, Adam's moments, a cosine schedule and GE's noise stream
    let sets = tiny(&[
        "method.name=ogm_ge",
        "model.encoder=small_cnn",
        "model.width=4",
        "model.depth=2",
        "train.optimizer=adam",
        "train.lr=0.003",
        "train.schedule=cosine",
        "train.epochs=6",
        "data.n_train=480",
    ]);
    resume_through_the_cli_is_exact("ogm_ge", &sets, 6);
}

#[test]
fn resume_after_a_kill_aim_cnn() {
    // prototypes, per-depth strengths, PAM scores in the optimizer and the masks built from them
    let sets = tiny(&[
        "method.name=aim",
        "model.encoder=small_cnn",
        "model.width=4",
        "model.depth=2",
        "method.aim.prototype_steps=5",
        "train.schedule=step",
        "train.step_size=2",
        "train.epochs=5",
        "data.n_train=480",
    ]);
    resume_through_the_cli_is_exact("aim", &sets, 5);
}

#[test]
fn config_errors_name_the_field_and_allowed_values() {
    let err = |sets: &[&str]| config::load(None, &sets.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap_err().to_string();
    let e = err(&["train.lr=-1"]);
    assert!(e.contains("train.lr"), "{e}");
    let e = err(&["method.name=magic"]);
    assert!(e.contains("method.name") && e.contains("joint") && e.contains("aug"), "{e}");
    let e = err(&["train.bogus=1"]);
    assert!(e.contains("bogus"), "{e}");
    let e = err(&["method.name=unimodal"]);
    assert!(e.contains("method.modality"), "{e}");
    let e = err(&["data.kind=nosuch"]);
    assert!(e.contains("data") && e.contains("nosuch"), "{e}");
    let e = err(&["no_equals_sign"]);
    assert!(e.contains("key=value"), "{e}");
    let e = err(&["method.aug.lambda=-0.5"]);
    assert!(e.contains("method.aug.lambda"), "{e}");
    // a missing config file names the file
    let e = config::load(Some(Path::new("/nonexistent/run.toml")), &[]).unwrap_err().to_string();
    assert!(e.contains("/nonexistent/run.toml"), "{e}");
}

#[test]
fn film_with_three_modalities_is_a_config_error() {
    let sets = tiny(&[
        "method.name=joint",
        "method.fusion=film",
        "data.modalities=[{name=\"a\",shape=[1,8,8],signal=0.5},{name=\"b\",shape=[1,8,8],signal=0.5},{name=\"c\",shape=[1,8,8],signal=0.5}]",
    ]);
    let (cfg, text) = config::load(None, &sets).unwrap();
    let mut o = TrainOptions::new(tmp("film3"));
    o.progress = false;
    let e = train::train(&gpu(), &cfg, &text, &o).unwrap_err().to_string();
    assert!(e.contains("method.fusion") && e.contains("3"), "{e}");
}

#[test]
fn aug_assignment_rules() {
    let mut c = AugConfig::default();
    // code rule: ratio s_a / s_v against 1 ± τ; the weaker modality gets the learner
    assert_eq!(Aug::decide(&c, &[0.3, 0.8]), vec![0]);
    assert_eq!(Aug::decide(&c, &[0.8, 0.3]), vec![1]);
    assert!(Aug::decide(&c, &[0.5, 0.5]).is_empty());
    assert!(Aug::decide(&c, &[0.501, 0.5]).is_empty(), "within 1 ± 0.01");
    // paper rule: s_a − σ s_v against ±τ
    c.rule = AugRule::Paper;
    c.sigma = 1.0;
    c.tau = 0.05;
    assert_eq!(Aug::decide(&c, &[0.6, 0.5]), vec![1]);
    assert_eq!(Aug::decide(&c, &[0.4, 0.5]), vec![0]);
    assert!(Aug::decide(&c, &[0.52, 0.5]).is_empty());
    // where the two rules disagree: τ is absolute in the paper rule (0.06 − 0.05 is within
    // 0.05; the ratio 1.2 is not within 1 ± 0.05), and σ weighs the other score (0.6 − 2·0.5
    // favours visual; the ratio favours audio)
    assert!(Aug::decide(&c, &[0.06, 0.05]).is_empty());
    c.sigma = 2.0;
    assert_eq!(Aug::decide(&c, &[0.6, 0.5]), vec![0]);
    // σ multiplies the other score: 0.6 − 2·0.2 = 0.2 > τ (0.6 − 2 + 0.2 would be below −τ)
    assert_eq!(Aug::decide(&c, &[0.6, 0.2]), vec![1]);
    // the bounds themselves are inside the band (no learner): differences and ratios of
    // exactly ±τ (0.25, exact in binary)
    for (rule, inside) in [(AugRule::Paper, [[0.75, 0.5], [0.25, 0.5]]), (AugRule::Code, [[1.25, 1.0], [0.75, 1.0]])] {
        let c = AugConfig { rule, sigma: 1.0, tau: 0.25, ..AugConfig::default() };
        for s in inside {
            assert!(Aug::decide(&c, &s).is_empty(), "{rule:?} {s:?}");
        }
    }
    // several modalities: ratio_m = s_m / Σ_others below the threshold
    c.rule = AugRule::Multi;
    c.multi_threshold = 0.4;
    assert_eq!(Aug::decide(&c, &[0.2, 0.8, 0.7]), vec![0]);
    assert_eq!(Aug::decide(&c, &[0.1, 0.1, 0.9]), vec![0, 1]);
    // a ratio of exactly the threshold is not below it: 1 / (1 + 1) = 0.5
    let even = AugConfig { rule: AugRule::Multi, multi_threshold: 0.5, ..AugConfig::default() };
    assert!(Aug::decide(&even, &[1.0, 1.0, 1.0]).is_empty());
    // the multi rule also decides for two modalities: 0.3 / 0.7 = 0.43 is above 0.4, where the
    // code rule would add a learner to modality 0
    assert!(Aug::decide(&c, &[0.3, 0.7]).is_empty());
    // and the two-modality rules fall back to it for three: 0.05 / 1.0 is below 0.4, where the
    // code rule on the first two scores (a ratio of 1) would add none
    for rule in [AugRule::Code, AugRule::Paper] {
        c.rule = rule;
        assert_eq!(Aug::decide(&c, &[0.5, 0.5, 0.05]), vec![2], "{rule:?}");
    }
}

#[test]
fn aug_gives_the_weak_modality_learners() {
    // default synthetic data: audio is the weak modality
    let dir = tmp("aug-weak");
    run(&tiny(&["method.name=aug", "method.aug.check_every=1", "train.epochs=4", "data.n_train=800"]), &dir);
    let mut lines = log_lines(&dir);
    let last = lines.pop().unwrap();
    let a = last["aug"]["learners"]["audio"].as_u64().unwrap();
    let v = last["aug"]["learners"]["visual"].as_u64().unwrap();
    assert!(a > v, "learners audio {a} visual {v}: {last}");
    // a check every epoch, except after the last one (its learner could not be trained)
    assert!(lines.iter().all(|l| !l["aug"]["check"].is_null()), "{lines:?}");
    assert!(last["aug"]["check"].is_null(), "no check after the final epoch: {last}");
    // each line counts the learners trained in its epoch: the previous epoch's count plus the
    // learners its check added after its evaluation
    let prev = lines.last().unwrap();
    for m in ["audio", "visual"] {
        let added = prev["aug"]["check"]["decision"].as_str().unwrap().split(',').filter(|d| *d == format!("add:{m}")).count() as u64;
        assert_eq!(last["aug"]["learners"][m].as_u64().unwrap(), prev["aug"]["learners"][m].as_u64().unwrap() + added, "{m}: {prev} -> {last}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn labels_out_of_range_and_nan_losses_are_typed_errors() {
    // a learning rate that blows up gives a NonFinite error naming the epoch, never a panic
    let dir = tmp("nan");
    let (cfg, text) = config::load(None, &tiny(&["method.name=joint", "train.lr=1e30", "train.momentum=0"])).unwrap();
    let mut o = TrainOptions::new(&dir);
    o.progress = false;
    let e = train::train(&gpu(), &cfg, &text, &o).unwrap_err().to_string();
    assert!(e.contains("non-finite") || e.contains("NaN") || e.contains("inf"), "{e}");
    let _ = std::fs::remove_dir_all(&dir);
    let g = gpu();
    let e = equimodal::ops::labels(&g, &[0, 3, 12], 10).unwrap_err().to_string();
    assert!(e.contains("12"), "{e}");
}

#[test]
fn every_preset_parses_and_validates() {
    let dir = repo_root().join("configs");
    let mut n = 0;
    for e in std::fs::read_dir(&dir).unwrap() {
        let p = e.unwrap().path();
        if p.extension().and_then(|x| x.to_str()) == Some("toml") {
            let (cfg, text) = config::load(Some(&p), &[]).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            // every preset says which initialisation it uses (the default would hide it)
            let table: toml::Table = text.parse().unwrap();
            assert!(table["model"].get("init").is_some(), "{}: no model.init", p.display());
            let _ = cfg;
            n += 1;
        }
    }
    assert!(n >= 15, "presets in {}", dir.display());
}

/// The README's configuration reference (the TOML block under "Configuration") is a config
/// the binary accepts, every key of it, and it shows every section the config has: a key
/// renamed or a section added without the README following fails here.
#[test]
fn the_readme_configuration_reference_is_a_valid_config_of_every_section() {
    let readme = std::fs::read_to_string(repo_root().join("README.md")).unwrap();
    let start = readme.find("### Configuration").expect("a Configuration section");
    let block = &readme[start..];
    let block = &block[block.find("```toml\n").expect("its TOML block") + 8..];
    let block = &block[..block.find("```").unwrap()];
    let table: toml::Table = block.parse().unwrap_or_else(|e| panic!("the README's TOML block: {e}"));
    config::from_table(&table).unwrap_or_else(|e| panic!("the README's configuration reference: {e}"));
    let methods = table["method"].as_table().unwrap();
    for section in ["ogm", "aug", "aim", "pmr", "mmpareto", "agm", "g_blending", "mla", "inforeg", "relearn", "reconboost", "greedy"] {
        assert!(methods.contains_key(section), "the README's configuration reference lacks [method.{section}]");
    }
    for (part, keys) in [("train", &["probe", "precision", "grad_clip"][..]), ("model", &["modalities", "init", "recompute"][..])] {
        for k in keys {
            assert!(table[part].get(*k).is_some(), "the README's configuration reference lacks {part}.{k}");
        }
    }
}

#[test]
fn aug_evaluates_the_trained_ensemble_before_a_check_adds_a_learner() {
    // The check after epoch 0 adds a learner to the weak modality. The test accuracy logged
    // for epoch 0 must be that of the ensemble trained in epoch 0, not of the one with the new,
    // untrained learner. Run B is run A with a cap of one learner: its check adds nothing, so
    // its model after epoch 0 is A's pre-check ensemble, bit for bit (training is
    // deterministic).
    let base = tiny(&["method.name=aug", "method.aug.check_every=100", "method.aug.tau=0.0", "train.epochs=3"]);
    let one_epoch = |extra: &[&str], name: &str| {
        let mut sets = base.clone();
        sets.extend(extra.iter().map(|s| s.to_string()));
        let dir = tmp(name);
        let (cfg, text) = config::load(None, &sets).unwrap();
        let mut o = TrainOptions::new(&dir);
        o.progress = false;
        o.stop_after = Some(1);
        train::train(&gpu(), &cfg, &text, &o).unwrap();
        let line = log_lines(&dir).remove(0);
        (dir, line)
    };
    let (dir_a, a) = one_epoch(&[], "aug-order-add");
    let (dir_b, b) = one_epoch(&["method.aug.max_learners=1"], "aug-order-cap");
    let decision = a["aug"]["check"]["decision"].as_str().unwrap();
    assert!(decision.starts_with("add:"), "run A's check must add a learner: {a}");
    assert!(b["aug"]["check"]["decision"].as_str().unwrap().starts_with("cap:"), "{b}");
    assert_eq!(a["train"]["loss"], b["train"]["loss"], "the two runs must train identically");
    assert_eq!(a["test"], b["test"], "epoch 0's test metrics must be those of the pre-check ensemble");
    assert_eq!(a["aug"]["learners"], b["aug"]["learners"], "the log counts the learners that were evaluated");
    // the learner did join after the evaluation: A's checkpoint holds it, and with its random
    // logits in the sum the test loss is no longer the logged one
    let (ev_a, _) = train::eval_checkpoint(&gpu(), &dir_a, &[]).unwrap();
    let (ev_b, _) = train::eval_checkpoint(&gpu(), &dir_b, &[]).unwrap();
    assert_eq!(ev_b.test.fused.loss, b["test"]["loss"].as_f64().unwrap(), "the capped checkpoint is the evaluated model");
    assert_ne!(ev_a.test.fused.loss, a["test"]["loss"].as_f64().unwrap(), "run A's checkpoint must hold the new learner");
    let _ = std::fs::remove_dir_all(&dir_a);
    let _ = std::fs::remove_dir_all(&dir_b);
}

/// `train.precision = "mixed"` on the synthetic preset (joint training, seed 0, 8 epochs):
/// within a few points of the f32 run's test accuracy (f16 operands move the trajectory,
/// not what is learned), both far above chance (50 %); and a mixed AUG run killed mid-way
/// resumes to the uninterrupted run's log and final checkpoint exactly (the weights and the
/// optimizer state stay f32, the f16 copies are made again each step).
#[test]
fn mixed_precision_trains_like_f32_and_resumes_exactly() {
    let acc = |precision: &str| {
        let sets: Vec<String> = ["method.name=joint", "train.epochs=8", "train.workers=1", &format!("train.precision={precision}")].iter().map(|s| s.to_string()).collect();
        run(&sets, &tmp(&format!("precision-{precision}"))).test.fused.acc
    };
    let (f32_acc, mixed_acc) = (acc("f32"), acc("mixed"));
    assert!(f32_acc > 0.75 && mixed_acc > 0.75, "f32 {f32_acc}, mixed {mixed_acc}");
    assert!((mixed_acc - f32_acc).abs() <= 0.05, "mixed {mixed_acc} vs f32 {f32_acc}");
    resume_through_the_cli_is_exact("mixed", &tiny(&["train.precision=mixed", "method.aug.check_every=1", "train.epochs=5"]), 5);
    // an unknown precision names the field
    let e = config::load(None, &["train.precision=f8".to_string()]).unwrap_err();
    assert!(e.to_string().contains("precision"), "{e}");
}

/// Under `mixed`, each epoch's log line carries the loss scale: its value, the steps and the
/// skipped ones (the scale doubling every `train.loss_scale_interval` good steps, capped at
/// 2^24); `loss_scale = "off"` and f32 log none. Inputs beyond f16's range make every step's
/// gradients NaN: each step is skipped and the run ends with an error saying so (the
/// weights never saw a NaN).
#[test]
fn mixed_precision_logs_the_loss_scale_and_skips_overflowing_steps() {
    let dir = tmp("loss-scale");
    // 160 samples in batches of 32: 5 steps an epoch
    run(&tiny(&["method.name=joint", "train.epochs=2", "train.precision=mixed", "train.loss_scale_interval=2"]), &dir);
    let lines = log_lines(&dir);
    for (epoch, line) in lines.iter().enumerate() {
        let ls = &line["loss_scale"];
        assert_eq!((ls["steps"].as_u64(), ls["skipped_steps"].as_u64()), (Some(5), Some(0)), "epoch {epoch}: {line}");
        let good = 5 * (epoch as i32 + 1);
        assert_eq!(ls["scale"].as_f64(), Some(65536.0 * 2f64.powi(good / 2).min(256.0)), "epoch {epoch}: {line}");
    }
    let csv = std::fs::read_to_string(dir.join("metrics.csv")).unwrap();
    assert!(csv.lines().next().unwrap().contains("loss_scale.skipped_steps"), "the CSV carries the counts: {csv}");
    for sets in [vec!["train.precision=mixed", "train.loss_scale=off"], vec!["train.precision=f32"]] {
        let mut all = vec!["method.name=joint", "train.epochs=1"];
        all.extend(sets.iter().copied());
        run(&tiny(&all), &dir.join("b"));
        assert!(log_lines(&dir.join("b"))[0].get("loss_scale").is_none(), "{sets:?}");
        let _ = std::fs::remove_dir_all(dir.join("b"));
    }
    // inputs of 1e6: cast to f16 they are inf
    let huge = |scale: &str| {
        let sets = tiny(&["method.name=joint", "train.epochs=1", "train.precision=mixed", "data.noise=[1e6, 1e6]", &format!("train.loss_scale={scale}")]);
        let (cfg, text) = config::load(None, &sets).unwrap();
        let mut o = TrainOptions::new(dir.join(scale));
        o.progress = false;
        train::train(&gpu(), &cfg, &text, &o).unwrap_err().to_string()
    };
    // (with loss_scale = "off" the same run ends "well": the NaN gradients reach the first
    // layer's weights, the ReLUs turn the NaN activations into zeros, and it finishes at
    // chance with a finite loss, which is what the check is for)
    let e = huge("dynamic");
    assert!(e.contains("every one of the 5 steps of epoch 1") && e.contains("skipped") && e.contains("train.precision"), "{e}");
    for (set, field) in [("train.loss_scale=static", "loss_scale"), ("train.loss_scale_interval=0", "train.loss_scale_interval")] {
        let e = config::load(None, &[set.to_string()]).unwrap_err().to_string();
        assert!(e.contains(field), "{set}: {e}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
