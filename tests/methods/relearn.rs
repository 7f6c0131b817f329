//! Diagnosing & Re-learning (issue 14): the official schedule, the learning-state estimate
//! (min-max scaling, k-means, purity, tanh strength) against hand-computed values and an f64
//! check of the clustering, the soft re-initialisation against an f64 reference, the
//! diagnosis inside the method, end-to-end training, exact resume, three modalities and
//! config errors.
use crate::baselines::{sets, tmp, train_log};
use crate::common;
use common::resume::resume_through_the_cli_is_exact_killed_after;
use common::*;
use equimodal::config::{self, Config};
use equimodal::data::{self, Loader, LoaderConfig, Split};
use equimodal::methods::relearn::{self, Relearn, RelearnConfig};
use equimodal::methods::Method;
use equimodal::train::{self, TrainOptions};
use rand::SeedableRng;
use std::sync::Arc;

fn tiny(extra: &[&str]) -> Vec<String> {
    let mut v = sets(&[
        "method.name=relearn",
        "data.n_train=160",
        "data.n_val=64",
        "data.n_test=64",
        "model.encoder=mlp",
        "model.hidden=[32]",
        "train.batch_size=32",
        "train.workers=1",
        "train.epochs=3",
    ]);
    v.extend(sets(extra));
    v
}

#[test]
fn relearn_schedule_is_the_official_one() {
    // ours.py: after epoch e when e % reinit_epoch == 0 and e > 0, at most reinit_num times;
    // we apply it at the start of epoch e + 1 (after epoch e's evaluation, as there)
    let at = |c: &RelearnConfig| -> Vec<usize> { (0..100).filter(|&t| c.reinit_before(t)).collect() };
    assert_eq!(at(&RelearnConfig::default()), vec![21, 41, 61]);
    assert_eq!(at(&RelearnConfig { reinit_epoch: 1, reinit_num: 2, ..Default::default() }), vec![2, 3]);
    assert_eq!(at(&RelearnConfig { reinit_epoch: 30, reinit_num: 9, ..Default::default() }), vec![31, 61, 91]);
    assert!(at(&RelearnConfig { reinit_num: 0, ..Default::default() }).is_empty());
}

#[test]
fn relearn_learning_state_estimate_matches_hand_values() {
    // sklearn MinMaxScaler((-1, 1)): per column; a constant column maps to -1
    let mut x = vec![0.0, 5.0, 2.0, 5.0, 4.0, 5.0];
    relearn::min_max_scale(&mut x, 3, 2);
    assert_eq!(x, vec![-1.0, -1.0, 0.0, -1.0, 1.0, -1.0]);
    // purity: cluster 0 holds labels {0, 0, 1} (2 hits), 1 holds {1, 1} (2), 2 holds {2} (1)
    assert_eq!(relearn::purity(&[0, 0, 1, 1, 1, 2], &[0, 0, 0, 1, 1, 2], 3), 5.0 / 6.0);
    // a cluster with a tie counts its majority once; an empty cluster counts nothing
    assert_eq!(relearn::purity(&[0, 1, 2, 2], &[0, 0, 1, 1], 3), 3.0 / 4.0);
    // tanh(λ·|gap|), symmetric in the gap
    assert!((relearn::strength(0.9, 0.6, 3.0) - 0.716_297_870_199_024_5).abs() < 1e-12);
    assert!((relearn::strength(0.6, 0.9, 3.0) - 0.716_297_870_199_024_5).abs() < 1e-12);
    assert_eq!(relearn::strength(0.7, 0.7, 3.0), 0.0);
    assert_eq!(relearn::strength(1.0, 0.0, 0.0), 0.0);
}

#[test]
fn relearn_kmeans_finds_separated_clusters_and_a_lloyd_fixed_point() {
    // three well-separated blobs: k-means recovers them, so purity against the blob labels is 1
    // and against labels that mix two blobs it is exactly the majority share
    let mut r = Rng::new(7);
    let (n, d, k) = (60, 3, 3);
    let centres = [[0.0, 0.0, 0.0], [10.0, 0.0, 0.0], [0.0, 10.0, 5.0]];
    let mut x = Vec::new();
    let mut blob = Vec::new();
    for i in 0..n {
        let c = i % k;
        for j in 0..d {
            x.push(centres[c][j] + 0.1 * r.normal());
        }
        blob.push(c as u32);
    }
    let feats: Vec<f32> = x.iter().map(|&v| v as f32).collect();
    let cfg = RelearnConfig::default();
    let p = relearn::cluster_purity(&feats, &blob, d, k, &cfg, &mut relearn::kmeans_rng(0, 1, 0, 0));
    assert_eq!(p, 1.0);
    // relabel: blob 2's first 8 samples carry label 0 → blob 2 keeps majority 2 (12 of 20)
    let mut mixed = blob.clone();
    let mut moved = 0;
    for (i, l) in mixed.iter_mut().enumerate() {
        if i % k == 2 && moved < 8 {
            *l = 0;
            moved += 1;
        }
    }
    let p = relearn::cluster_purity(&feats, &mixed, d, k, &cfg, &mut relearn::kmeans_rng(0, 1, 0, 0));
    assert_eq!(p, 52.0 / 60.0);

    // random data: the returned clustering is a Lloyd fixed point (every point is nearest to
    // its own cluster's mean), checked in f64 independently of the implementation
    let (n, d, k) = (80, 4, 5);
    let mut x = r.normals(n * d);
    relearn::min_max_scale(&mut x, n, d);
    for (lo, hi) in (0..d).map(|j| (0..n).map(|i| x[i * d + j]).fold((f64::MAX, f64::MIN), |(a, b), v| (a.min(v), b.max(v)))) {
        assert!((lo + 1.0).abs() < 1e-12 && (hi - 1.0).abs() < 1e-12, "{lo} {hi}");
    }
    let a = relearn::kmeans(&x, n, d, k, 3, 300, &mut relearn::kmeans_rng(1, 2, 3, 1));
    let mut mean = vec![0.0; k * d];
    let mut cnt = vec![0.0; k];
    for i in 0..n {
        cnt[a[i]] += 1.0;
        for j in 0..d {
            mean[a[i] * d + j] += x[i * d + j];
        }
    }
    for c in 0..k {
        assert!(cnt[c] > 0.0, "cluster {c} empty: {a:?}");
        for j in 0..d {
            mean[c * d + j] /= cnt[c];
        }
    }
    let dist = |i: usize, c: usize| -> f64 { (0..d).map(|j| (x[i * d + j] - mean[c * d + j]).powi(2)).sum() };
    for i in 0..n {
        for c in 0..k {
            assert!(dist(i, a[i]) <= dist(i, c) + 1e-9, "point {i}: cluster {} at {}, {c} at {}", a[i], dist(i, a[i]), dist(i, c));
        }
    }
}

fn build(extra: &[&str]) -> (Relearn, Config, Arc<dyn data::Dataset>) {
    let c: Config = config::load(None, &tiny(extra)).unwrap().0;
    let ds: Arc<dyn data::Dataset> = Arc::from(data::build(&c.data).unwrap());
    let mut rng = rand::rngs::StdRng::seed_from_u64(0);
    let m = Relearn::new(&gpu(), &c.method_setup(), ds.modalities(), ds.num_classes(), &mut rng).unwrap();
    (m, c, ds)
}

fn host(m: &Relearn) -> Vec<(String, Vec<f64>)> {
    m.params().iter().map(|p| (p.name.clone(), p.tensor.to_vec().unwrap().iter().map(|&v| v as f64).collect())).collect()
}

#[test]
fn relearn_soft_reinit_pulls_each_encoder_toward_its_initial_parameters() {
    let (mut m, _, _) = build(&[]);
    m.begin_epoch(0).unwrap();
    let theta0 = host(&m);
    // the captured θ₀ are the parameters at the start of epoch 0, and are checkpointed
    for mi in 0..2 {
        let enc: Vec<_> = theta0.iter().filter(|(n, _)| n.starts_with(["enc.audio.", "enc.visual."][mi])).collect();
        assert_eq!(enc.len(), m.initial(mi).len());
        for ((_, want), got) in enc.iter().zip(m.initial(mi)) {
            assert_close("theta0", &got.to_vec().unwrap(), want, 0.0, 0.0);
        }
    }
    let bufs: Vec<String> = m.buffers().into_iter().map(|b| b.0).collect();
    assert!(bufs.iter().any(|b| b.starts_with("relearn.init.enc.audio.")) && bufs.iter().any(|b| b.starts_with("relearn.init.enc.visual.")), "{bufs:?}");
    // move every parameter somewhere else (as training would)
    let mut r = Rng::new(3);
    for p in m.params() {
        p.tensor.write(&to_f32(&r.normals(p.tensor.numel()))).unwrap();
    }
    let theta = host(&m);
    let w = 0.3;
    m.reinit_modality(0, w).unwrap();
    let after = host(&m);
    for (((name, t0), (_, t)), (_, got)) in theta0.iter().zip(&theta).zip(&after) {
        let got32: Vec<f32> = got.iter().map(|&v| v as f32).collect();
        if name.starts_with("enc.audio.") {
            let want: Vec<f64> = t0.iter().zip(t).map(|(a, b)| w * a + (1.0 - w) * b).collect();
            assert_close(name, &got32, &want, 1e-6, 1e-6);
        } else {
            // the other encoder and the fusion head are untouched
            assert_close(name, &got32, t, 0.0, 0.0);
        }
    }
    // w = 1 is a full re-initialisation, w = 0 none
    m.reinit_modality(1, 1.0).unwrap();
    m.reinit_modality(0, 0.0).unwrap();
    for (((name, t0), (_, prev)), (_, got)) in theta0.iter().zip(&after).zip(&host(&m)) {
        let got32: Vec<f32> = got.iter().map(|&v| v as f32).collect();
        let want = if name.starts_with("enc.visual.") { t0 } else { prev };
        assert_close(name, &got32, want, 0.0, 0.0);
    }
}

#[test]
fn relearn_diagnoses_from_both_splits_features_and_applies_the_strength() {
    let (mut m, c, ds) = build(&["method.relearn.reinit_epoch=1", "method.relearn.move_lambda=5"]);
    let g = gpu();
    let classes = ds.num_classes();
    m.begin_epoch(0).unwrap();
    // move the parameters away from θ₀ so the re-initialisation is visible
    let mut r = Rng::new(5);
    for p in m.params() {
        let v: Vec<f64> = p.tensor.to_vec().unwrap().iter().map(|&x| x as f64 + 0.05 * r.normal()).collect();
        p.tensor.write(&to_f32(&v)).unwrap();
    }
    let epoch = 2;
    assert!(m.observe_fraction(epoch) == Some(1.0) && m.observe_val_split(epoch) && !m.observe_val_split(1));
    let batches = |split: Split| -> Vec<_> {
        let mut lc = LoaderConfig::eval(32);
        lc.workers = 1;
        Loader::new(ds.clone(), split, lc).unwrap().map(|b| train::upload_batch(&g, &b.unwrap(), classes).unwrap()).collect()
    };
    let (tb, vb) = (batches(Split::Train), batches(Split::Val));
    // the expected purities from the eval-mode features, clustered with the method's streams
    let expect = |bs: &[equimodal::methods::DeviceBatch], mi: usize, split: u64| -> f64 {
        let mut f = Vec::new();
        let mut y = Vec::new();
        let mut d = 0;
        for b in bs {
            let t = m.features(&b.inputs).unwrap()[mi].clone().unwrap();
            d = t.dim(1);
            f.extend(t.to_vec().unwrap());
            y.extend(b.labels.to_vec_u32().unwrap());
        }
        relearn::cluster_purity(&f, &y, d, classes, &c.method.relearn, &mut relearn::kmeans_rng(c.seed, epoch, mi, split))
    };
    let want: Vec<(f64, f64)> = (0..2).map(|mi| (expect(&tb, mi, 0), expect(&vb, mi, 1))).collect();
    let before = host(&m);
    let theta0: Vec<Vec<f64>> = (0..2).flat_map(|mi| m.initial(mi).iter().map(|t| t.to_vec().unwrap().iter().map(|&v| v as f64).collect()).collect::<Vec<_>>()).collect();
    for b in &tb {
        m.observe(b, epoch).unwrap();
    }
    for b in &vb {
        m.observe_val(b, epoch).unwrap();
    }
    m.end_observe(epoch).unwrap();
    let diag = m.last_diagnosis().unwrap().to_vec();
    for (mi, (d, (tp, vp))) in diag.iter().zip(&want).enumerate() {
        assert_eq!((d.train_purity, d.val_purity), (*tp, *vp), "modality {mi}");
        assert!((d.weight - (5.0 * (tp - vp).abs()).tanh()).abs() < 1e-12, "{d:?}");
    }
    // every encoder parameter moved by exactly its modality's strength: θ ← w·θ₀ + (1 − w)·θ
    let after = host(&m);
    let mut k = 0;
    for ((name, b), (_, a)) in before.iter().zip(&after) {
        let a32: Vec<f32> = a.iter().map(|&v| v as f32).collect();
        let mi = if name.starts_with("enc.audio.") { 0 } else if name.starts_with("enc.visual.") { 1 } else { 2 };
        if mi == 2 {
            assert_close(name, &a32, b, 0.0, 0.0);
            continue;
        }
        let w = diag[mi].weight;
        let want: Vec<f64> = theta0[k].iter().zip(b).map(|(t0, t)| w * t0 + (1.0 - w) * t).collect();
        assert_close(name, &a32, &want, 1e-6, 1e-6);
        k += 1;
    }
    // an epoch without a diagnosis changes nothing
    m.end_observe(1).unwrap();
    assert_eq!(host(&m), after);
}

#[test]
fn relearn_diagnosis_reads_the_training_split_without_augmentation() {
    // the official get_feature reads the training split through the eval transform
    // (mode='my_train'); PMR's official prototype batches come from the augmented training
    // loader
    let (m, c, ds) = build(&[]);
    let lc = train::observation_loader(&c, &m, 2);
    assert!(!lc.augment && lc.shuffle, "{lc:?}");
    let p: Config = config::load(None, &tiny(&["method.name=pmr"])).unwrap().0;
    let mut rng = rand::rngs::StdRng::seed_from_u64(0);
    let pmr = equimodal::methods::build(&gpu(), &p.method_setup(), ds.modalities(), ds.num_classes(), &mut rng).unwrap();
    assert!(train::observation_loader(&p, pmr.as_ref(), 2).augment);
}

#[test]
fn relearn_trains_on_synthetic_data() {
    let lines = train_log(
        &tiny(&["train.epochs=4", "data.n_train=480", "data.n_test=200", "method.relearn.reinit_epoch=1", "method.relearn.reinit_num=2"]),
        &tmp("e2e"),
    );
    assert_eq!(lines.len(), 4);
    let last = lines.last().unwrap();
    let acc = last["test"]["acc"].as_f64().unwrap();
    assert!(acc > 0.5, "test accuracy {acc}: {last}");
    let re: Vec<bool> = lines.iter().map(|l| l["relearn"]["reinit"].as_bool().unwrap()).collect();
    assert_eq!(re, vec![false, false, true, true]);
    for l in &lines[2..] {
        for m in ["audio", "visual"] {
            let (tp, vp, w) = (l["relearn"]["train_purity"][m].as_f64().unwrap(), l["relearn"]["val_purity"][m].as_f64().unwrap(), l["relearn"]["weight"][m].as_f64().unwrap());
            assert!(tp > 0.0 && tp <= 1.0 && vp > 0.0 && vp <= 1.0, "{l}");
            assert!((w - (3.0 * (tp - vp).abs()).tanh()).abs() < 1e-12, "{l}");
        }
    }
}

#[test]
fn relearn_handles_three_modalities() {
    let three = "data.modalities=[{name=\"a\",shape=[1,8,8],signal=0.1},{name=\"b\",shape=[1,8,8],signal=0.6},{name=\"c\",shape=[1,8,8],signal=0.3}]";
    let lines = train_log(&tiny(&[three, "method.relearn.reinit_epoch=1", "method.relearn.reinit_num=1"]), &tmp("three"));
    let l = &lines[2];
    assert_eq!(l["relearn"]["reinit"], true, "{l}");
    assert_eq!(l["relearn"]["weight"].as_object().unwrap().len(), 3, "{l}");
    for m in ["a", "b", "c"] {
        assert!(l["test"]["per_modality"][m]["acc"].as_f64().is_some(), "{l}");
    }
}

#[test]
fn resume_after_a_kill_relearn_cnn() {
    // θ₀ is checkpointed state; the run is killed once two epochs are logged, so the
    // re-initialisations before epochs 2, 3 and 4 happen in the resumed process
    let sets = tiny(&[
        "method.relearn.reinit_epoch=1",
        "method.relearn.reinit_num=3",
        "model.encoder=small_cnn",
        "model.width=4",
        "model.depth=2",
        "train.epochs=5",
    ]);
    resume_through_the_cli_is_exact_killed_after("relearn", &sets, 5, 2);
}

#[test]
fn relearn_config_errors_name_the_field() {
    let err = |s: &[&str]| config::load(None, &sets(s)).unwrap_err().to_string();
    for (set, field) in [
        ("method.relearn.move_lambda=-1", "method.relearn.move_lambda"),
        ("method.relearn.reinit_epoch=0", "method.relearn.reinit_epoch"),
        ("method.relearn.kmeans_inits=0", "method.relearn.kmeans_inits"),
        ("method.relearn.kmeans_iters=0", "method.relearn.kmeans_iters"),
        ("method.relearn.bogus=1", "bogus"),
    ] {
        let e = err(&["method.name=relearn", set]);
        assert!(e.contains(field), "{set}: {e}");
    }
    // the defaults are the official code's
    let c = config::load(None, &sets(&["method.name=relearn"])).unwrap().0;
    let r = &c.method.relearn;
    assert_eq!((r.move_lambda, r.reinit_epoch, r.reinit_num, r.kmeans_inits, r.kmeans_iters), (3.0, 20, 3, 10, 300));
    // a schedule that never acts within train.epochs is reported (the first diagnosis
    // follows epoch 20, so it needs epoch 21 to exist)
    let w = c.method.never_acts(21);
    assert!(w.iter().any(|w| w.contains("method.relearn.reinit_epoch = 20 never acts")), "{w:?}");
    assert!(c.method.never_acts(22).is_empty(), "{:?}", c.method.never_acts(22));
    // without a validation split the run does not start, and says what to set
    let list: Vec<String> = tiny(&["method.relearn.reinit_epoch=1"]).into_iter().filter(|s| !s.starts_with("data.n_val")).collect();
    let (cfg, text) = config::load(None, &list).unwrap();
    let dir = tmp("noval");
    let mut o = TrainOptions::new(&dir);
    o.progress = false;
    let e = train::train(&gpu(), &cfg, &text, &o).unwrap_err().to_string();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(e.contains("validation split") && e.contains("data.n_val"), "{e}");
}
