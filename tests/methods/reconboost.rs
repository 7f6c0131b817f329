//! ReconBoost (issue 14): the official alternation schedule and ensemble membership, the
//! boosting loss with its reconcilement term and its gradient against an f64 reference, which
//! parameters each phase trains, end-to-end training, exact resume, three modalities and
//! config errors.
use crate::baselines::{sets, tmp, train_log};
use crate::common;
use common::resume::resume_through_the_cli_is_exact_killed_after;
use common::*;
use equimodal::config::{self, Config};
use equimodal::data::{self, Loader, LoaderConfig, Split};
use equimodal::methods::reconboost::{self, ReconBoost, ReconboostConfig};
use equimodal::methods::Method;
use equimodal::optim::{Sgd, SgdConfig};
use equimodal::train;
use equimodal::Tensor;
use rand::SeedableRng;
use std::sync::Arc;

fn tiny(extra: &[&str]) -> Vec<String> {
    let mut v = sets(&[
        "method.name=reconboost",
        "method.reconboost.epochs_per_stage=1",
        "method.reconboost.correct_epochs=1",
        "method.reconboost.head_hidden=16",
        "data.n_train=160",
        "data.n_test=64",
        "model.encoder=mlp",
        "model.hidden=[32]",
        "train.batch_size=32",
        "train.workers=1",
        "train.epochs=4",
    ]);
    v.extend(sets(extra));
    v
}

#[test]
fn reconboost_alternation_schedule_is_the_official_one() {
    // train.py: stage s boosts modality s mod M for epochs_per_stage epochs, then corrects the
    // ensemble for correct_epoch epochs; a learner joins the ensemble after its boosting phase
    let c = ReconboostConfig::default();
    let got: Vec<(usize, usize, bool)> = [0, 3, 4, 7, 8, 12, 16, 25].iter().map(|&e| c.phase(e, 2)).collect();
    assert_eq!(got, vec![(0, 0, true), (0, 0, true), (0, 0, false), (0, 0, false), (1, 1, true), (1, 1, false), (2, 0, true), (3, 1, true)]);
    let ens: Vec<Vec<bool>> = [0, 4, 8, 12, 16].iter().map(|&e| c.in_ensemble(e, 2)).collect();
    assert_eq!(ens, vec![vec![false, false], vec![true, false], vec![true, false], vec![true, true], vec![true, true]]);
    let c3 = ReconboostConfig { epochs_per_stage: 1, correct_epochs: 1, ..Default::default() };
    let got: Vec<(usize, usize, bool)> = (0..7).map(|e| c3.phase(e, 3)).collect();
    assert_eq!(got, vec![(0, 0, true), (0, 0, false), (1, 1, true), (1, 1, false), (2, 2, true), (2, 2, false), (3, 0, true)]);
    let ens: Vec<Vec<bool>> = [2, 3, 4, 6].iter().map(|&e| c3.in_ensemble(e, 3)).collect();
    assert_eq!(ens, vec![vec![true, false, false], vec![true, true, false], vec![true, true, false], vec![true, true, true]]);
    // no correction phase: every epoch boosts
    let c0 = ReconboostConfig { epochs_per_stage: 2, correct_epochs: 0, ..Default::default() };
    assert_eq!((0..4).map(|e| c0.phase(e, 2)).collect::<Vec<_>>(), vec![(0, 0, true), (0, 0, true), (1, 1, true), (1, 1, true)]);
}

fn softmax_row(r: &[f64]) -> Vec<f64> {
    let mx = r.iter().cloned().fold(f64::MIN, f64::max);
    let e: Vec<f64> = r.iter().map(|v| (v - mx).exp()).collect();
    let s: f64 = e.iter().sum();
    e.iter().map(|v| v / s).collect()
}

/// f64 reference of train.py l. 339–340 (mean over the batch): value and d/d learner logits.
fn ref_boost(z: &[f64], ens: Option<&[f64]>, y: &[u32], k: usize, w1: f64, w2: f64) -> (f64, Vec<f64>) {
    let n = y.len();
    let (mut loss, mut grad) = (0.0, vec![0.0; n * k]);
    for i in 0..n {
        let p = softmax_row(&z[i * k..(i + 1) * k]);
        let q = ens.map_or(vec![1.0; k], |e| softmax_row(&e[i * k..(i + 1) * k]));
        // Σ_k of −w1·t_k·log p_k + w2·t_k·q_k·log p_k, divided by K (mean over classes)
        let mut row = 0.0;
        for c in 0..k {
            let t = if c == y[i] as usize { 1.0 } else { 0.0 };
            row += (-w1 * t + w2 * t * q[c]) * p[c].ln();
        }
        loss += row / k as f64 / n as f64;
        let coef = (-w1 + w2 * q[y[i] as usize]) / k as f64 / n as f64;
        for c in 0..k {
            let t = if c == y[i] as usize { 1.0 } else { 0.0 };
            grad[i * k + c] = coef * (t - p[c]);
        }
    }
    (loss, grad)
}

#[test]
fn reconboost_boosting_loss_and_its_gradient_match_the_f64_reference() {
    let g = gpu();
    let mut r = Rng::new(11);
    let (n, k) = (9, 5);
    let y: Vec<u32> = (0..n).map(|_| r.below(k) as u32).collect();
    let z = r.normals(n * k);
    let e: Vec<f64> = r.normals(n * k).iter().map(|v| 2.0 * v).collect();
    let labels = Tensor::from_u32(&g, &y, &[n]).unwrap();
    for (ens, w1, w2) in [(Some(&e), 5.0, 1.0), (None, 5.0, 1.0), (Some(&e), 1.0, 3.0), (Some(&e), 0.0, 1.0)] {
        let zt = upload(&g, &z, &[n, k]).requires_grad();
        let et = ens.map(|e| upload(&g, e, &[n, k]).requires_grad());
        let loss = reconboost::boosting_loss(&zt, et.as_ref(), &labels, w1 as f32, w2 as f32).unwrap();
        let (want, want_g) = ref_boost(&z, ens.map(|v| v.as_slice()), &y, k, w1, w2);
        let what = format!("ensemble={} w1={w1} w2={w2}", ens.is_some());
        assert_close(&format!("{what}: loss"), &loss.to_vec().unwrap(), &[want], 1e-5, 1e-6);
        let grads = loss.backward().unwrap();
        assert_close(&format!("{what}: gradient"), &grads.get(&zt).expect("the learner gets a gradient").to_vec().unwrap(), &want_g, 1e-4, 1e-6);
        // the ensemble is a fixed target (detached in the official code)
        if let Some(et) = &et {
            assert!(grads.get(et).is_none(), "{what}: the ensemble got a gradient");
        }
    }
    // with no ensemble (stage 0) the loss is (w1 − w2)/K times the cross-entropy
    let zt = upload(&g, &z, &[n, k]);
    let l0 = reconboost::boosting_loss(&zt, None, &labels, 5.0, 1.0).unwrap().to_vec().unwrap()[0] as f64;
    let ce: f64 = (0..n).map(|i| -softmax_row(&z[i * k..(i + 1) * k])[y[i] as usize].ln()).sum::<f64>() / n as f64;
    assert!((l0 - 4.0 / k as f64 * ce).abs() < 1e-5, "{l0} vs {}", 4.0 / k as f64 * ce);
}

fn snapshot(m: &ReconBoost) -> Vec<(String, Vec<f32>)> {
    m.params().iter().map(|p| (p.name.clone(), p.tensor.to_vec().unwrap())).collect()
}

#[test]
fn reconboost_boosting_trains_one_learner_and_correction_the_whole_ensemble() {
    let c: Config = config::load(None, &tiny(&[])).unwrap().0;
    let ds: Arc<dyn data::Dataset> = Arc::from(data::build(&c.data).unwrap());
    let g = gpu();
    let classes = ds.num_classes();
    let mut rng = rand::rngs::StdRng::seed_from_u64(0);
    let mut m = ReconBoost::new(&g, &c.method_setup(), ds.modalities(), classes, &mut rng).unwrap();
    let mut opt = Sgd::new(&m.params(), SgdConfig { lr: 0.1, ..Default::default() }).unwrap();
    let mut lc = LoaderConfig::eval(32);
    lc.workers = 1;
    let b = train::upload_batch(&g, &Loader::new(ds.clone(), Split::Train, lc).unwrap().next().unwrap().unwrap(), classes).unwrap();
    // epoch 2 (stage 1, boosting visual): the visual encoder and the head move, audio and the
    // boost rate do not
    for (epoch, moves) in [(2, ["enc.visual.", "reconboost.head."].as_slice()), (0, &["enc.audio.", "reconboost.head."]), (3, &["enc.audio.", "enc.visual.", "reconboost.head.", "reconboost.boost_rate"])] {
        let before = snapshot(&m);
        m.train_step(&b, &mut opt, epoch).unwrap();
        for ((name, a), (_, b)) in before.iter().zip(&snapshot(&m)) {
            let moved = a != b;
            assert_eq!(moved, moves.iter().any(|p| name.starts_with(p)), "epoch {epoch}: {name} moved = {moved}");
        }
        let st = m.end_epoch(epoch, &mut opt).unwrap();
        assert!(st.loss.is_finite(), "{st:?}");
    }
}

#[test]
fn reconboost_trains_on_synthetic_data() {
    // half of each stage trains one learner only: a larger step than the other methods' tests
    let lines = train_log(&tiny(&["train.epochs=8", "train.lr=0.05", "data.n_train=480", "data.n_test=200"]), &tmp("reconboost-e2e"));
    assert_eq!(lines.len(), 8);
    let last = lines.last().unwrap();
    let acc = last["test"]["acc"].as_f64().unwrap();
    assert!(acc > 0.5, "test accuracy {acc}: {last}");
    let phases: Vec<(u64, String, String)> = lines
        .iter()
        .map(|l| (l["reconboost"]["stage"].as_u64().unwrap(), l["reconboost"]["modality"].as_str().unwrap().to_string(), l["reconboost"]["phase"].as_str().unwrap().to_string()))
        .collect();
    let want: Vec<(u64, String, String)> = [(0, "audio", "boost"), (0, "audio", "correct"), (1, "visual", "boost"), (1, "visual", "correct"), (2, "audio", "boost"), (2, "audio", "correct"), (3, "visual", "boost"), (3, "visual", "correct")]
        .iter()
        .map(|(s, m, p)| (*s, m.to_string(), p.to_string()))
        .collect();
    assert_eq!(phases, want);
    // the GA term exists from stage 1 on, and only in boosting phases
    assert_eq!(lines[0]["reconboost"]["ga"].as_f64().unwrap(), 0.0);
    assert!(lines[2]["reconboost"]["ga"].as_f64().unwrap() > 0.0, "{}", lines[2]);
    assert_eq!(lines[3]["reconboost"]["ga"].as_f64().unwrap(), 0.0);
}

#[test]
fn reconboost_handles_three_modalities() {
    let three = "data.modalities=[{name=\"a\",shape=[1,8,8],signal=0.1},{name=\"b\",shape=[1,8,8],signal=0.6},{name=\"c\",shape=[1,8,8],signal=0.3}]";
    let lines = train_log(&tiny(&[three, "train.epochs=6"]), &tmp("reconboost-three"));
    let mods: Vec<&str> = lines.iter().map(|l| l["reconboost"]["modality"].as_str().unwrap()).collect();
    assert_eq!(mods, vec!["a", "a", "b", "b", "c", "c"]);
    for m in ["a", "b", "c"] {
        assert!(lines[5]["test"]["per_modality"][m]["acc"].as_f64().is_some(), "{}", lines[5]);
    }
    assert!(lines[5]["train"]["loss"].as_f64().unwrap().is_finite());
}

#[test]
fn resume_after_a_kill_reconboost_cnn() {
    let sets = tiny(&["model.encoder=small_cnn", "model.width=4", "model.depth=2", "train.epochs=5", "train.momentum=0.9"]);
    resume_through_the_cli_is_exact_killed_after("reconboost", &sets, 5, 2);
}

#[test]
fn reconboost_config_errors_name_the_field() {
    let err = |s: &[&str]| config::load(None, &sets(s)).unwrap_err().to_string();
    for (set, field) in [
        ("method.reconboost.epochs_per_stage=0", "method.reconboost.epochs_per_stage"),
        ("method.reconboost.weight1=-1", "method.reconboost.weight1"),
        ("method.reconboost.weight2=-1", "method.reconboost.weight2"),
        ("method.reconboost.alpha=-1", "method.reconboost.alpha"),
        ("method.reconboost.head_hidden=0", "method.reconboost.head_hidden"),
        ("method.reconboost.bogus=1", "bogus"),
    ] {
        let e = err(&["method.name=reconboost", set]);
        assert!(e.contains(field), "{set}: {e}");
    }
    let c = config::load(None, &sets(&["method.name=reconboost"])).unwrap().0;
    let r = &c.method.reconboost;
    assert_eq!((r.epochs_per_stage, r.correct_epochs, r.weight1, r.weight2, r.alpha, r.boost_rate, r.head_hidden), (4, 4, 5.0, 1.0, 0.5, 1.0, 256));
    // one head for all learners: encoders of different widths are refused, naming the modality
    let (cfg, _) = config::load(None, &tiny(&["model.modalities.visual.hidden=[24]"])).unwrap();
    let ds: Arc<dyn data::Dataset> = Arc::from(data::build(&cfg.data).unwrap());
    let mut rng = rand::rngs::StdRng::seed_from_u64(0);
    let e = ReconBoost::new(&gpu(), &cfg.method_setup(), ds.modalities(), ds.num_classes(), &mut rng).err().expect("different widths").to_string();
    assert!(e.contains("model.modalities.visual"), "{e}");
}
