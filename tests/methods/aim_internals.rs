//! AIM's internal state against host computations: the places docs/testing.md's AIM audit
//! found no test could fail at. Each section says what it pins and how.
use crate::common;
use common::cpu_nn::{self, get, Named, T};
use common::*;
use equimodal::config::{self, Config};
use equimodal::data::{self, HostBatch, Loader, LoaderConfig, Split};
use equimodal::methods::{self, DeviceBatch, Method};
use equimodal::optim::{Optimizer, StateTensor};
use equimodal::train;
use equimodal::{Gradients, Tensor};
use rand::SeedableRng;
use std::collections::HashMap;
use std::sync::Arc;

/// f32's unit roundoff: the tolerances below count roundings in units of it.
const U: f64 = 1.0 / (1u64 << 24) as f64;

/// MLP encoders (two depths of 32), 64 training samples in two batches of 32, no DAP steps.
const MLP: &[&str] = &[
    "method.name=aim", "data.n_train=64", "data.n_test=32", "model.encoder=mlp", "model.hidden=[32,32]",
    "train.batch_size=32", "train.workers=1", "train.weight_decay=0", "method.aim.prototype_steps=0",
];

fn load(base: &[&str], extra: &[&str]) -> (Config, String) {
    let list: Vec<String> = base.iter().chain(extra).map(|s| s.to_string()).collect();
    config::load(None, &list).unwrap()
}

/// The method `c` builds with seed 0 and the first two training batches (device and host).
fn method_and_batches(c: &Config) -> (Box<dyn Method>, Vec<(DeviceBatch, HostBatch)>) {
    let ds: Arc<dyn data::Dataset> = Arc::from(data::build(&c.data).unwrap());
    let mut rng = rand::rngs::StdRng::seed_from_u64(0);
    let m = methods::build(&gpu(), &c.method_setup(), ds.modalities(), ds.num_classes(), &mut rng).unwrap();
    let mut lc = LoaderConfig::eval(32);
    lc.workers = 1;
    let batches = Loader::new(ds.clone(), Split::Train, lc)
        .unwrap()
        .take(2)
        .map(|hb| {
            let hb = hb.unwrap();
            (train::upload_batch(&gpu(), &hb, ds.num_classes()).unwrap(), hb)
        })
        .collect();
    (m, batches)
}

/// The `aim` section of an epoch's statistics.
fn aim_section(s: &methods::EpochStats) -> serde_json::Value {
    s.extra.iter().find(|(k, _)| k == "aim").unwrap().1.clone()
}

fn f64s(v: &serde_json::Value) -> Vec<f64> {
    v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect()
}

// ---- 1. the per-depth score EMA -------------------------------------------------------------

#[test]
fn aim_depth_scores_are_an_ema_over_two_different_batches() {
    // learning rate 0: the weights (and prototypes: no DAP steps) stay, so each batch has one
    // per-depth score v. An epoch of batch 1 alone logs v1 (the EMA starts from the epoch's
    // first batch), one of batch 2 alone v2, and one of batch 1 then batch 2 the EMA
    // m·v1 + (1 − m)·v2 with m = score_momentum
    let (c, _) = load(MLP, &["method.aim.score_momentum=0.7"]);
    let (mut m, b) = method_and_batches(&c);
    let mut opt = train::build_optimizer(&c, m.trainable()).unwrap();
    opt.set_lr(0.0);
    let mut epoch = |batches: &[usize], e: usize| -> Vec<f64> {
        for &i in batches {
            m.train_step(&b[i].0, opt.as_mut(), e).unwrap();
        }
        let a = aim_section(&m.end_epoch(e, opt.as_mut()).unwrap());
        [f64s(&a["scores"]["audio"]), f64s(&a["scores"]["visual"])].concat()
    };
    let (v1, v2, ema) = (epoch(&[0], 0), epoch(&[1], 1), epoch(&[0, 1], 2));
    // the lerp kernel computes s·a + t·b in f32 with s = m and t = 1 − m as f32: at most three
    // roundings of non-negative terms
    let (s, t) = (0.7f32 as f64, (1.0f32 - 0.7f32) as f64);
    for d in 0..ema.len() {
        let want = s * v1[d] + t * v2[d];
        let tol = 3.0 * U * want;
        assert!((ema[d] - want).abs() <= tol, "score {d}: EMA {} vs m·v1 + (1 − m)·v2 = {want} (v1 {}, v2 {})", ema[d], v1[d], v2[d]);
        // the batches differ enough that the momentum's side (t·v1 + s·v2) would fail
        assert!((s - t) * (v1[d] - v2[d]).abs() > 100.0 * tol, "score {d}: batches too alike ({} vs {})", v1[d], v2[d]);
    }
}

// ---- 2. the PAM scores and `pam_momentum` -------------------------------------------------------

/// The run's optimizer, keeping for each step every parameter's value before the step and the
/// gradient the step applies, by name.
struct Spy {
    inner: Box<dyn Optimizer>,
    steps: Vec<HashMap<String, (Vec<f32>, Vec<f32>)>>,
}

impl Optimizer for Spy {
    fn step(&mut self, grads: &Gradients) -> equimodal::Result<()> {
        let mut seen = HashMap::new();
        for p in self.inner.params() {
            if let Some(g) = grads.get(&p.tensor) {
                seen.insert(p.name.clone(), (p.tensor.to_vec()?, g.to_vec()?));
            }
        }
        self.steps.push(seen);
        self.inner.step(grads)
    }
    equimodal::delegate_to_inner!();
    fn state_tensors(&self) -> equimodal::Result<Vec<StateTensor>> {
        self.inner.state_tensors()
    }
    fn load_state_tensors(&mut self, state: &[StateTensor]) -> equimodal::Result<()> {
        self.inner.load_state_tensors(state)
    }
}

#[test]
fn aim_pam_scores_are_an_ema_of_g_theta_with_pam_momentum() {
    // two SGD steps on two different batches (the weights move in between): every conv/linear
    // weight of both encoders scores u = m·(m·0 + (1 − m)|g1 ⊙ θ1|) + (1 − m)|g2 ⊙ θ2| with
    // m = pam_momentum (0.6, neither the default 0.9 nor score_momentum), θ before each step
    let (c, _) = load(MLP, &["method.aim.pam_momentum=0.6", "train.lr=0.05"]);
    let (mut m, b) = method_and_batches(&c);
    let mut spy = Spy { inner: train::build_optimizer(&c, m.trainable()).unwrap(), steps: Vec::new() };
    m.train_step(&b[0].0, &mut spy, 0).unwrap();
    m.train_step(&b[1].0, &mut spy, 0).unwrap();
    let layers = ["enc.audio.fc0.weight", "enc.audio.fc1.weight", "enc.visual.fc0.weight", "enc.visual.fc1.weight"];
    let (mo, one_minus) = (0.6f32 as f64, (1.0f32 - 0.6f32) as f64);
    for name in layers {
        let got = spy.scores(name).unwrap_or_else(|| panic!("{name} has no PAM score")).to_vec().unwrap();
        let term = |step: usize, i: usize| {
            let (theta, g) = &spy.steps[step][name];
            (g[i] as f64 * theta[i] as f64).abs()
        };
        let want: Vec<f64> = (0..got.len()).map(|i| mo * one_minus * term(0, i) + one_minus * term(1, i)).collect();
        // non-negative terms, each rounded at most four times per step (product, two scalings, sum)
        for (i, (&g, &w)) in got.iter().zip(&want).enumerate() {
            assert!((g as f64 - w).abs() <= 8.0 * U * w, "{name}[{i}]: score {g} vs {w}");
        }
        // a momentum of 0.9 (the default, and score_momentum's) would give another value
        let other: f64 = (0..got.len()).map(|i| 0.9 * 0.1 * term(0, i) + 0.1 * term(1, i)).sum();
        assert!((other - want.iter().sum::<f64>()).abs() > 0.1 * other, "{name}: momentum barely matters here");
    }
    // biases and the head are not scored
    for p in m.params() {
        if !layers.contains(&p.name.as_str()) {
            assert!(spy.scores(&p.name).is_none(), "{} is scored", p.name);
        }
    }
}

// ---- 3. strengths per depth, mask polarity, the scaled conv under training-mode batch norm ----

/// Small CNNs (two conv → BN → ReLU → pool blocks, widths 2 and 4) on 8×8 inputs, concat fusion.
const CNN: &[&str] = &[
    "method.name=aim", "method.fusion=concat", "data.n_train=64", "data.n_test=32",
    "data.modalities=[{name=\"audio\",shape=[1,8,8],signal=0.2,style=\"bands\"},{name=\"visual\",shape=[1,8,8],signal=0.8,style=\"blobs\"}]",
    "model.encoder=small_cnn", "model.width=2", "model.depth=2", "train.batch_size=32", "train.workers=1",
    "train.weight_decay=0", "method.aim.prototype_steps=2",
];

/// The conv weights of `CNN`, in the order of `Aim`'s layers.
const CNN_LAYERS: [&str; 4] = ["enc.audio.block0.conv.weight", "enc.audio.block1.conv.weight", "enc.visual.block0.conv.weight", "enc.visual.block1.conv.weight"];

/// Every parameter and buffer of `m` on the host, by name.
fn host_state(m: &dyn Method) -> Named {
    let mut named: Vec<(String, Tensor)> = m.params().into_iter().map(|p| (p.name, p.tensor)).collect();
    named.extend(m.buffers());
    named.into_iter().map(|(n, t)| (n, T::new(t.shape(), t.to_vec().unwrap().into_iter().map(f64::from).collect()))).collect()
}

fn host_input(hb: &HostBatch, i: usize) -> T {
    T::new(&hb.inputs[i].shape, hb.inputs[i].data.iter().map(|&v| v as f64).collect())
}

/// Per-channel mean and biased variance of `y` [N, C, H, W].
fn batch_stats(y: &T) -> (T, T) {
    let (n, c, hw) = (y.dim(0), y.dim(1), y.dim(2) * y.dim(3));
    let mut mean = T::zeros(&[c]);
    let mut var = T::zeros(&[c]);
    for ch in 0..c {
        let vals: Vec<f64> = (0..n).flat_map(|i| y.data[(i * c + ch) * hw..(i * c + ch + 1) * hw].iter().copied()).collect();
        let m = vals.iter().sum::<f64>() / vals.len() as f64;
        mean.data[ch] = m;
        var.data[ch] = vals.iter().map(|v| (v - m).powi(2)).sum::<f64>() / vals.len() as f64;
    }
    (mean, var)
}

/// Which statistics the host CNN's batch norms normalise with.
enum HostBn<'a> {
    /// the batch's own
    Batch,
    /// (mean, variance) by batch-norm layer name
    Given(&'a HashMap<String, (T, T)>),
}

/// `nn::SmallCnn` `name`'s blocks `blocks` on the host (conv3×3 pad 1 → batch norm → ReLU →
/// 2×2 max pool while the map is at least 2×2), each conv weight multiplied elementwise by
/// `scales[weight name]` where given. Returns the last block's output and the batch statistics
/// of every batch norm.
fn host_cnn(p: &Named, name: &str, x: &T, blocks: std::ops::Range<usize>, scales: &HashMap<String, Vec<f64>>, bn: &HostBn) -> (T, HashMap<String, (T, T)>) {
    let mut h = x.clone();
    let mut seen = HashMap::new();
    for i in blocks {
        let (wname, bname) = (format!("{name}.block{i}.conv.weight"), format!("{name}.block{i}.bn"));
        let mut w = get(p, &wname).clone();
        if let Some(s) = scales.get(&wname) {
            w.data.iter_mut().zip(s).for_each(|(v, s)| *v *= s);
        }
        let y = cpu_nn::conv2d(&h, &w, 1, 1);
        let own = batch_stats(&y);
        let (mut mean, mut var) = match bn {
            HostBn::Batch => own.clone(),
            HostBn::Given(g) => g[&bname].clone(),
        };
        // eval-mode batch norm normalises with the (mean, var) it is given
        let w = get(p, &format!("{bname}.weight"));
        let b = get(p, &format!("{bname}.bias"));
        h = cpu_nn::relu(&cpu_nn::batch_norm(&y, w, b, &mut mean, &mut var, false, 0.0, 1e-5));
        if h.dim(2) >= 2 && h.dim(3) >= 2 {
            h = cpu_nn::max_pool2d(&h, 2, 2, 0);
        }
        seen.insert(bname, own);
    }
    (h, seen)
}

/// Mean cross-entropy of `logits` [N, K].
fn host_ce(logits: &T, labels: &[u32]) -> f64 {
    let k = logits.dim(1);
    let rows = logits.data.chunks(k);
    rows.zip(labels).map(|(r, &y)| {
        let mx = r.iter().cloned().fold(f64::MIN, f64::max);
        mx + r.iter().map(|v| (v - mx).exp()).sum::<f64>().ln() - r[y as usize]
    }).sum::<f64>() / labels.len() as f64
}

/// The concat head on [audio, visual] features.
fn host_concat_head(p: &Named, a: &T, v: &T) -> T {
    let n = a.dim(0);
    let data = (0..n).flat_map(|i| a.data[i * a.dim(1)..(i + 1) * a.dim(1)].iter().chain(&v.data[i * v.dim(1)..(i + 1) * v.dim(1)]).copied()).collect();
    let x = T::new(&[n, a.dim(1) + v.dim(1)], data);
    cpu_nn::linear(&x, get(p, "fusion.fc_out.weight"), Some(get(p, "fusion.fc_out.bias")))
}

/// The mask M of `ops::select_lowest` on the host: the round(ρn) lowest (score, index).
fn host_mask(scores: &[f32], rho: f32) -> Vec<bool> {
    let mut idx: Vec<usize> = (0..scores.len()).collect();
    idx.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]).then(a.cmp(&b)));
    let mut m = vec![false; scores.len()];
    for &i in &idx[..equimodal::ops::selected_count(scores.len(), rho)] {
        m[i] = true;
    }
    m
}

/// AIM's damping of one weight: 1 − s·(1 − M), as f32 computes 1 − s.
fn host_scale(mask: &[bool], s: f32) -> Vec<f64> {
    mask.iter().map(|&kept| if kept { 1.0 } else { (1.0f32 - s) as f64 }).collect()
}

/// What one step's main and auxiliary CE must be: the main forward (batch statistics), then
/// the dominant encoder `dom` with its conv weights scaled by `scales` and batch norm as
/// `aux_bn` says (the running statistics after the main forward's update for "running").
/// Also the running statistics after the step (updated once, by the main forward).
fn host_losses(p: &Named, hb: &HostBatch, dom: usize, scales: &HashMap<String, Vec<f64>>, aux_bn: &str) -> (f64, f64, Named) {
    let names = ["enc.audio", "enc.visual"];
    let none = HashMap::new();
    let mut feats = Vec::new();
    let mut main_stats = Vec::new();
    for (i, n) in names.iter().enumerate() {
        let (h, st) = host_cnn(p, n, &host_input(hb, i), 0..2, &none, &HostBn::Batch);
        feats.push(cpu_nn::global_avg_pool(&h));
        main_stats.push(st);
    }
    let main = host_ce(&host_concat_head(p, &feats[0], &feats[1]), &hb.labels);
    // the running statistics after the main forward (momentum 0.1, unbiased variance)
    let count = (hb.labels.len() * 64) as f64; // N·H·W of the first block (8×8)
    let mut running = HashMap::new();
    let mut bufs = Named::new();
    for stats in &main_stats {
        for (bname, (mean, var)) in stats {
            let hw = if bname.contains("block0") { count } else { count / 4.0 };
            let rm = get(p, &format!("{bname}.running_mean")).data.iter().zip(&mean.data).map(|(r, m)| 0.9 * r + 0.1 * m).collect();
            let rv = get(p, &format!("{bname}.running_var")).data.iter().zip(&var.data).map(|(r, v)| 0.9 * r + 0.1 * v * hw / (hw - 1.0)).collect();
            let (rm, rv) = (T::new(&mean.shape, rm), T::new(&var.shape, rv));
            bufs.insert(format!("{bname}.running_mean"), rm.clone());
            bufs.insert(format!("{bname}.running_var"), rv.clone());
            running.insert(bname.clone(), (rm, rv));
        }
    }
    let bn = match aux_bn {
        "own" => HostBn::Batch,
        "main" => HostBn::Given(&main_stats[dom]),
        "running" => HostBn::Given(&running),
        other => panic!("aux_bn {other}"),
    };
    let (h, _) = host_cnn(p, names[dom], &host_input(hb, dom), 0..2, scales, &bn);
    let mut aux_feats = feats.clone();
    aux_feats[dom] = cpu_nn::global_avg_pool(&h);
    let aux = host_ce(&host_concat_head(p, &aux_feats[0], &aux_feats[1]), &hb.labels);
    (main, aux, bufs)
}

/// Host scales of the dominant encoder's layers from `scores` by layer name, strengths per depth.
fn dominant_scales(scores: &HashMap<String, Vec<f32>>, dom: &str, strengths: &[f32], rho: f32) -> HashMap<String, Vec<f64>> {
    (0..strengths.len())
        .map(|d| {
            let name = format!("enc.{dom}.block{d}.conv.weight");
            let s = host_scale(&host_mask(&scores[&name], rho), strengths[d]);
            (name, s)
        })
        .collect()
}

/// CE tolerance: the forward is a few f32 dot products of ≤ 18 terms and batch-norm sums over
/// ≤ 2048 values (tree-reduced: ~11 roundings), each relative to values of order 1, giving
/// logits good to ~100 u; the mean CE moves by at most the largest logit error. 200 u.
const CE_TOL: f64 = 200.0 * U;

#[test]
fn aim_damps_each_depth_by_its_strength_and_keeps_the_low_score_elements() {
    // the visual encoder dominant with strengths 0.3 at depth 0 and 0.8 at depth 1, and PAM
    // scores written into the optimizer: the first step rebuilds the masks from them (as after
    // a resume). Its auxiliary CE must be the host's: every conv weight of depth d scaled by
    // 1 − s_d·(1 − M), M = 1 on the round(ρn) lowest scores, through batch norm in training
    // mode with the statistics `aux_bn` names; the running statistics updated once
    for mode in ["own", "main", "running"] {
        let (c, _) = load(CNN, &[&format!("method.aim.aux_bn=\"{mode}\""), "method.aim.rho=0.4"]);
        let (mut m, b) = method_and_batches(&c);
        let mut opt = train::build_optimizer(&c, m.trainable()).unwrap();
        let mut rng = Rng::new(17);
        opt.enable_scores(&CNN_LAYERS, 0.9).unwrap();
        let mut scores = HashMap::new();
        for name in CNN_LAYERS {
            let t = opt.scores(name).unwrap();
            let v: Vec<f32> = (0..t.numel()).map(|_| rng.uniform() as f32).collect();
            t.write(&v).unwrap();
            scores.insert(name.to_string(), v);
        }
        let strengths = [0.3f32, 0.8];
        let state = serde_json::json!({"proto_ready": false, "dominant": 1, "weak": 0, "strength": strengths, "ratio": [1.2, 1.5]});
        m.restore(&state, opt.as_mut()).unwrap();
        let p = host_state(m.as_ref());
        m.train_step(&b[0].0, opt.as_mut(), 1).unwrap();
        let a = aim_section(&m.end_epoch(1, opt.as_mut()).unwrap());
        let (got_main, got_aux) = (a["main_loss"].as_f64().unwrap(), a["aux_loss"].as_f64().unwrap());

        let aux_of = |st: &[f32], flip: bool| {
            let mut sc = dominant_scales(&scores, "visual", st, 0.4);
            if flip {
                // the other polarity: the high-score elements kept, the low-score ones damped
                let flipped: HashMap<String, Vec<f64>> = sc.keys().map(|n| {
                    let d = if n.contains("block0") { 0 } else { 1 };
                    (n.clone(), host_scale(&host_mask(&scores[n], 0.4).iter().map(|k| !k).collect::<Vec<_>>(), st[d]))
                }).collect();
                sc = flipped;
            }
            host_losses(&p, &b[0].1, 1, &sc, mode)
        };
        let (main, aux, bufs) = aux_of(&strengths, false);
        assert!((got_main - main).abs() <= CE_TOL * main, "{mode}: main CE {got_main} vs host {main}");
        assert!((got_aux - aux).abs() <= CE_TOL * aux, "{mode}: auxiliary CE {got_aux} vs host {aux}");
        // the test tells the mistakes apart: the strengths of the other depths, the other
        // polarity, or no damping at all move the CE by far more than the tolerance
        for (what, other) in [("swapped depths", aux_of(&[0.8, 0.3], false).1), ("flipped polarity", aux_of(&strengths, true).1), ("undamped", main)] {
            assert!((other - aux).abs() > 10.0 * CE_TOL * aux, "{mode}: {what} gives {other}, too close to {aux}");
        }
        // the auxiliary forward (and DAP, in eval mode) leave the running statistics as the
        // main forward's single update left them
        let after = host_state(m.as_ref());
        for (name, want) in &bufs {
            assert_close(&format!("{mode}: {name}"), &to_f32(&after[name].data), &want.data, 1e-5, 1e-6);
        }
    }
}

// ---- 4. masks after a resume ---------------------------------------------------------------

#[test]
fn aim_masks_after_a_resume_are_the_host_selection_of_the_restored_scores() {
    // one epoch trained and checkpointed by the trainer; a fresh model resumed from that file
    // as the trainer resumes (method state, tensors, optimizer state). Its first step rebuilds
    // the masks from the restored PAM scores: its auxiliary CE must be the host's with masks
    // selected on the host from the checkpoint's `score.*` tensors and the restored strengths
    let (c, text) = load(CNN, &["method.aim.beta=5.0", "train.epochs=1", "train.lr=0.05"]);
    let dir = std::env::temp_dir().join(format!("equimodal-aim-resume-masks-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let mut o = train::TrainOptions::new(&dir);
    o.progress = false;
    train::train(&gpu(), &c, &text, &o).unwrap();
    let path = dir.join("checkpoints/last.safetensors");
    let ck = train::checkpoint::load(&path).unwrap();
    let state = ck.meta["method_state"].clone();

    let (mut m, b) = method_and_batches(&c);
    let mut opt = train::build_optimizer(&c, m.trainable()).unwrap();
    m.restore(&state, opt.as_mut()).unwrap();
    let mut named: Vec<(String, Tensor)> = m.params().into_iter().map(|p| (p.name, p.tensor)).collect();
    named.extend(m.buffers());
    train::checkpoint::restore_tensors(&path, &ck.model, &named).unwrap();
    opt.load_state_tensors(&ck.optim).unwrap();
    let _ = std::fs::remove_dir_all(&dir);

    let dom = state["dominant"].as_u64().expect("a dominant modality after one epoch") as usize;
    let strengths: Vec<f32> = f64s(&state["strength"]).into_iter().map(|v| v as f32).collect();
    assert!(strengths.iter().any(|&s| s > 0.05), "nothing damped after one epoch: {state}");
    let scores: HashMap<String, Vec<f32>> = ck.optim.iter().filter_map(|(n, _, v)| Some((n.strip_prefix("score.")?.to_string(), v.clone()))).collect();
    assert_eq!(scores.len(), 4, "a PAM score per conv weight in the checkpoint: {:?}", scores.keys());
    let names = ["audio", "visual"];
    let p = host_state(m.as_ref());
    m.train_step(&b[0].0, opt.as_mut(), 1).unwrap();
    let a = aim_section(&m.end_epoch(1, opt.as_mut()).unwrap());
    // the presets' and the default's batch norm of the auxiliary forward
    assert_eq!(c.method.aim.aux_bn, equimodal::methods::aim::AuxBn::Running);
    let (_, aux, _) = host_losses(&p, &b[0].1, dom, &dominant_scales(&scores, names[dom], &strengths, 0.5), "running");
    let got = a["aux_loss"].as_f64().unwrap();
    assert!((got - aux).abs() <= CE_TOL * aux, "auxiliary CE after the resume {got} vs host {aux}");
    // masks from any other scores (e.g. zeros: the first elements by index) give another CE
    let zeros: HashMap<String, Vec<f32>> = scores.iter().map(|(n, v)| (n.clone(), vec![0.0; v.len()])).collect();
    let (_, other, _) = host_losses(&p, &b[0].1, dom, &dominant_scales(&zeros, names[dom], &strengths, 0.5), "running");
    assert!((other - aux).abs() > 10.0 * CE_TOL * aux, "masks of zero scores give {other}, too close to {aux}");
}

// ---- 5. DAP keeps batch norm frozen ------------------------------------------------------------

#[test]
fn dap_keeps_batch_norm_frozen_on_a_cnn() {
    // a small CNN whose batch norms have non-trivial running statistics and affine weights:
    // DAP's CE is the host's with batch norm in eval mode (running statistics, not the K
    // prototypes' batch statistics), and fitting leaves every parameter and running statistic
    // bit for bit as it was
    use equimodal::nn::{Encoder, Fusion, FusionKind, Module, SmallCnn};
    let g = gpu();
    let mut srng = rand::rngs::StdRng::seed_from_u64(23);
    let net = SmallCnn::new(&g, "enc", 1, 2, 3, &mut srng).unwrap();
    let k = 4;
    let fusion = Fusion::new(&g, "fusion", FusionKind::Concat, &[net.out_dim(), 3], k, 8, &mut srng).unwrap();
    let mut rng = Rng::new(29);
    for (name, t) in net.buffers() {
        let v: Vec<f64> = if name.ends_with("running_var") { rng.uniforms(t.numel(), 0.3, 2.0) } else { rng.normals(t.numel()) };
        t.write(&to_f32(&v)).unwrap();
    }
    for p in net.params().into_iter().filter(|p| p.name.contains(".bn.")) {
        let v = if p.name.ends_with("weight") { rng.uniforms(p.tensor.numel(), 0.5, 1.5) } else { rng.normals(p.tensor.numel()) };
        p.tensor.write(&to_f32(&v)).unwrap();
    }
    let labels = equimodal::ops::labels(&g, &(0..k as u32).collect::<Vec<_>>(), k).unwrap();
    // every parameter and running statistic DAP must leave alone
    let frozen = || -> Vec<(String, Vec<f32>)> {
        let mut v: Vec<(String, Vec<f32>)> = net.params().into_iter().map(|p| (p.name, p.tensor.to_vec().unwrap())).collect();
        v.extend(net.buffers().into_iter().map(|(n, t)| (n, t.to_vec().unwrap())));
        v.extend(fusion.params().into_iter().map(|p| (p.name, p.tensor.to_vec().unwrap())));
        v
    };
    let before = frozen();
    let host = |t: &Tensor| T::new(t.shape(), t.to_vec().unwrap().into_iter().map(f64::from).collect());
    let mut named: Named = net.params().into_iter().chain(fusion.params()).map(|p| (p.name, host(&p.tensor))).collect();
    named.extend(net.buffers().into_iter().map(|(n, t)| (n, host(&t))));
    let running: HashMap<String, (T, T)> = (0..3)
        .map(|i| format!("enc.block{i}.bn"))
        .map(|b| (b.clone(), (named[&format!("{b}.running_mean")].clone(), named[&format!("{b}.running_var")].clone())))
        .collect();
    // the concat head's view of modality 0: its weight columns and half the bias
    let w = get(&named, "fusion.fc_out.weight");
    let d0 = net.out_dim();
    let w0 = T::new(&[k, d0], (0..k).flat_map(|r| w.data[r * w.dim(1)..r * w.dim(1) + d0].to_vec()).collect());
    let half = get(&named, "fusion.fc_out.bias").map(|v| v / 2.0);
    let classes: Vec<u32> = (0..k as u32).collect();
    // the CE of the rest of the network after `depth` (batch norm as `bn` says) and the view
    let host_dap_ce = |x: &T, depth: usize, bn: &HostBn| {
        let (h, _) = host_cnn(&named, "enc", x, depth + 1..3, &HashMap::new(), bn);
        host_ce(&cpu_nn::linear(&cpu_nn::global_avg_pool(&h), &w0, Some(&half)), &classes)
    };
    // depth d's sample shape on 8×8 inputs: [2, 4, 4], then [4, 2, 2]
    for (depth, shape) in [(0usize, [2usize, 4, 4]), (1, [4, 2, 2])] {
        let n = k * shape.iter().product::<usize>();
        let pv = round_f32(&rng.normals(n));
        let protos = upload(&g, &pv, &[&[k][..], &shape[..]].concat()).requires_grad();
        let ce = equimodal::methods::aim::fit_prototypes(&net, &fusion, 0, depth, &protos, &labels, 0, 0.05).unwrap() as f64;
        let x = T::new(protos.shape(), pv.clone());
        let want = host_dap_ce(&x, depth, &HostBn::Given(&running));
        assert!((ce - want).abs() <= CE_TOL * want, "depth {depth}: DAP CE {ce} vs host (eval-mode batch norm) {want}");
        // the prototypes' own batch statistics would give another CE
        let other = host_dap_ce(&x, depth, &HostBn::Batch);
        assert!((other - want).abs() > 10.0 * CE_TOL * want, "depth {depth}: batch statistics give {other}, too close to {want}");
        let after = equimodal::methods::aim::fit_prototypes(&net, &fusion, 0, depth, &protos, &labels, 3, 0.05).unwrap();
        assert!(after.is_finite() && protos.to_vec().unwrap() != to_f32(&pv), "depth {depth}: the prototypes did not move");
        assert!(before == frozen(), "depth {depth}: DAP changed a parameter or a running statistic");
    }
}

// ---- 6. the prototypes' RMS scaling ------------------------------------------------------------

#[test]
fn aim_prototypes_start_scaled_to_the_rms_of_the_first_batch() {
    // the same model (same seed: the same random draws z) started on batch 1 or on batch 2,
    // with no DAP steps: prototypes z·(rms + 1e-6), rms that of the first batch's depth-d
    // features (eval mode). Elementwise, P₁ / P₂ = (rms₁ + 1e-6) / (rms₂ + 1e-6), with the
    // rms computed on the host from the same features
    use equimodal::nn::{Ctx, Encoder, MlpEncoder};
    let (c, _) = load(MLP, &[]);
    let start = |batch: usize| -> HashMap<String, Vec<f32>> {
        let (mut m, b) = method_and_batches(&c);
        let mut opt = train::build_optimizer(&c, m.trainable()).unwrap();
        m.train_step(&b[batch].0, opt.as_mut(), 0).unwrap();
        m.buffers().into_iter().filter(|(n, _)| n.starts_with("aim.proto.")).map(|(n, t)| (n, t.to_vec().unwrap())).collect()
    };
    let (p1, p2) = (start(0), start(1));
    // the model's weights before its first step (a fresh build: seed 0)
    let (fresh, b) = method_and_batches(&c);
    let _ng = equimodal::autograd::no_grad();
    for (mi, name) in ["audio", "visual"].iter().enumerate() {
        // an encoder of the same shape holding those weights, for the features the step saw
        let enc = MlpEncoder::new(&gpu(), &format!("enc.{name}"), 256, &[32, 32], &mut rand::rngs::StdRng::seed_from_u64(99)).unwrap();
        for p in equimodal::nn::Module::params(&enc) {
            let src = fresh.params().into_iter().find(|q| q.name == p.name).unwrap();
            p.tensor.write(&src.tensor.to_vec().unwrap()).unwrap();
        }
        let rms = |batch: usize| -> Vec<f64> {
            let (_, outs) = enc.forward_depths(&b[batch].0.inputs[mi], &Ctx::eval()).unwrap();
            outs.iter().map(|h| {
                let v = h.to_vec().unwrap();
                (v.iter().map(|&x| (x as f64).powi(2)).sum::<f64>() / v.len() as f64).sqrt()
            }).collect()
        };
        let (r1, r2) = (rms(0), rms(1));
        for d in 0..2 {
            let key = format!("aim.proto.{name}.{d}");
            let want = (r1[d] + 1e-6) / (r2[d] + 1e-6);
            // each prototype is rounded once (z·c) and each c about 14 times (a mean of 1024
            // squares reduced as a tree, its square root, the 1e-6): 32 u on the ratio
            let tol = 32.0 * U * want;
            assert!((want - 1.0).abs() > 100.0 * tol, "{key}: the two batches' rms are too alike ({} vs {})", r1[d], r2[d]);
            for (i, (&a, &bv)) in p1[&key].iter().zip(&p2[&key]).enumerate() {
                if bv != 0.0 {
                    let ratio = a as f64 / bv as f64;
                    assert!((ratio - want).abs() <= tol, "{key}[{i}]: P1/P2 = {ratio}, rms ratio {want}");
                }
            }
        }
    }
}
