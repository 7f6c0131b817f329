//! AIM's internal state against host computations: the places docs/testing.md's AIM audit
//! found no test could fail at. Each section says what it pins and how.
use crate::common;
use common::*;
use equimodal::config::{self, Config};
use equimodal::data::{self, HostBatch, Loader, LoaderConfig, Split};
use equimodal::methods::{self, DeviceBatch, Method};
use equimodal::optim::{Optimizer, Param, StateTensor};
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
    fn add_params(&mut self, params: &[Param]) {
        self.inner.add_params(params)
    }
    fn params(&self) -> &[Param] {
        self.inner.params()
    }
    fn lr(&self) -> f32 {
        self.inner.lr()
    }
    fn set_lr(&mut self, lr: f32) {
        self.inner.set_lr(lr)
    }
    fn state_tensors(&self) -> equimodal::Result<Vec<StateTensor>> {
        self.inner.state_tensors()
    }
    fn load_state_tensors(&mut self, state: &[StateTensor]) -> equimodal::Result<()> {
        self.inner.load_state_tensors(state)
    }
    fn enable_scores(&mut self, names: &[&str], momentum: f32) -> equimodal::Result<()> {
        self.inner.enable_scores(names, momentum)
    }
    fn scores(&self, name: &str) -> Option<&Tensor> {
        self.inner.scores(name)
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
