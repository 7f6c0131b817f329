//! Diagnosing & Re-learning (Wei, Li, Hu; ECCV 2024); see docs/methods/relearn.md.
//! Joint training, and every `reinit_epoch` epochs (at most `reinit_num` times) each encoder
//! is pulled back toward its initial parameters, θ ← w·θ₀ + (1 − w)·θ, with
//! w = tanh(λ·|purity_train − purity_val|): the gap between how well k-means clusters of the
//! modality's features match the labels on the training split and on the validation split
//! (a modality that has memorised its training data is re-initialised more).
use super::config::MethodSetup;
use super::joint::Joint;
use super::{encode_all, DeviceBatch, EpochStats, Method, Prediction};
use crate::data::{derive_seed, ModalitySpec};
use crate::error::{Error, Result};
use crate::gpu::Gpu;
use crate::nn::Ctx;
use crate::ops;
use crate::optim::{Optimizer, Param};
use crate::tensor::Tensor;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// `[method.relearn]`; defaults are the official `code/ours.py` / `code/script/ours.sh`.
#[derive(Clone, Debug, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RelearnConfig {
    /// λ in w = tanh(λ·gap) (`--move_lambda 3`).
    pub move_lambda: f64,
    /// The diagnosis runs after epochs k·reinit_epoch, k ≥ 1 (`--reinit_epoch 20`).
    pub reinit_epoch: usize,
    /// At most this many re-initialisations (`--reinit_num 3`).
    pub reinit_num: usize,
    /// k-means restarts, the best inertia kept (sklearn's `n_init`, 10 before sklearn 1.4).
    pub kmeans_inits: usize,
    /// Lloyd iterations per restart at most (sklearn's `max_iter`, 300).
    pub kmeans_iters: usize,
}

impl Default for RelearnConfig {
    fn default() -> Self {
        RelearnConfig { move_lambda: 3.0, reinit_epoch: 20, reinit_num: 3, kmeans_inits: 10, kmeans_iters: 300 }
    }
}

impl RelearnConfig {
    /// Range checks; errors name the `method.relearn.*` field.
    pub fn validate(&self) -> Result<()> {
        let f = |n: &str| format!("method.relearn.{n}");
        if !(self.move_lambda.is_finite() && self.move_lambda >= 0.0) {
            return Err(Error::config(f("move_lambda"), format!("must be >= 0, got {}", self.move_lambda)));
        }
        for (name, v) in [("reinit_epoch", self.reinit_epoch), ("kmeans_inits", self.kmeans_inits), ("kmeans_iters", self.kmeans_iters)] {
            if v == 0 {
                return Err(Error::config(f(name), "must be >= 1"));
            }
        }
        // host work per diagnosis grows with their product: bounds against typos
        for (name, v, max) in [("kmeans_inits", self.kmeans_inits, 1_000), ("kmeans_iters", self.kmeans_iters, 100_000)] {
            if v > max {
                return Err(Error::config(f(name), format!("must be at most {max}, got {v}")));
            }
        }
        Ok(())
    }

    /// Whether the diagnosis and re-initialisation happen at the start of `epoch`: after
    /// epoch e = epoch − 1 when e > 0, e % reinit_epoch == 0 and e / reinit_epoch ≤ reinit_num
    /// (the official `if epoch % reinit_epoch == 0 and epoch > 0`, counted by `flag_reinit`).
    pub fn reinit_before(&self, epoch: usize) -> bool {
        let Some(e) = epoch.checked_sub(1) else { return false };
        e > 0 && e % self.reinit_epoch == 0 && e / self.reinit_epoch <= self.reinit_num
    }
}

/// Per column of a row-major `[n, d]` matrix: min-max scaling to [−1, 1] (sklearn's
/// `MinMaxScaler(feature_range=(-1, 1))`; a constant column maps to −1, as there).
pub fn min_max_scale(x: &mut [f64], n: usize, d: usize) {
    for j in 0..d {
        let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
        for i in 0..n {
            lo = lo.min(x[i * d + j]);
            hi = hi.max(x[i * d + j]);
        }
        let range = if hi - lo == 0.0 { 1.0 } else { hi - lo };
        for i in 0..n {
            x[i * d + j] = (x[i * d + j] - lo) * 2.0 / range - 1.0;
        }
    }
}

fn sq_dist(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(u, v)| (u - v) * (u - v)).sum()
}

/// k-means++ seeding: the first centre uniformly, each next one with probability
/// proportional to the squared distance to the nearest centre chosen so far.
fn kmeans_pp(x: &[f64], n: usize, d: usize, k: usize, rng: &mut StdRng) -> Vec<f64> {
    let mut c = Vec::with_capacity(k * d);
    let first = rng.random_range(0..n);
    c.extend_from_slice(&x[first * d..(first + 1) * d]);
    let mut near: Vec<f64> = (0..n).map(|i| sq_dist(&x[i * d..(i + 1) * d], &c[..d])).collect();
    for j in 1..k {
        let total: f64 = near.iter().sum();
        let pick = if total > 0.0 {
            let mut r = rng.random::<f64>() * total;
            let mut p = n - 1;
            for (i, w) in near.iter().enumerate() {
                if r < *w {
                    p = i;
                    break;
                }
                r -= w;
            }
            p
        } else {
            rng.random_range(0..n)
        };
        c.extend_from_slice(&x[pick * d..(pick + 1) * d]);
        for (i, v) in near.iter_mut().enumerate() {
            *v = v.min(sq_dist(&x[i * d..(i + 1) * d], &c[j * d..(j + 1) * d]));
        }
    }
    c
}

/// Lloyd iterations from `c`; returns (assignment, inertia). Stops when the centres move by
/// at most `tol` in total squared distance; an empty cluster keeps its centre.
fn lloyd(x: &[f64], n: usize, d: usize, k: usize, mut c: Vec<f64>, iters: usize, tol: f64) -> (Vec<usize>, f64) {
    let mut assign = vec![0usize; n];
    for _ in 0..iters {
        for i in 0..n {
            let xi = &x[i * d..(i + 1) * d];
            assign[i] = (0..k).min_by(|&a, &b| sq_dist(xi, &c[a * d..(a + 1) * d]).total_cmp(&sq_dist(xi, &c[b * d..(b + 1) * d]))).unwrap_or(0);
        }
        let mut sums = vec![0.0; k * d];
        let mut counts = vec![0usize; k];
        for i in 0..n {
            counts[assign[i]] += 1;
            for j in 0..d {
                sums[assign[i] * d + j] += x[i * d + j];
            }
        }
        let mut shift = 0.0;
        for a in 0..k {
            if counts[a] == 0 {
                continue;
            }
            for j in 0..d {
                let v = sums[a * d + j] / counts[a] as f64;
                shift += (v - c[a * d + j]).powi(2);
                c[a * d + j] = v;
            }
        }
        if shift <= tol {
            break;
        }
    }
    // the final assignment against the final centres
    let mut inertia = 0.0;
    for i in 0..n {
        let xi = &x[i * d..(i + 1) * d];
        let (best, dist) = (0..k).map(|a| (a, sq_dist(xi, &c[a * d..(a + 1) * d]))).min_by(|p, q| p.1.total_cmp(&q.1)).unwrap_or((0, 0.0));
        assign[i] = best;
        inertia += dist;
    }
    (assign, inertia)
}

/// k-means of the rows of `x` `[n, d]` into `k` clusters: `inits` k-means++ restarts of at
/// most `iters` Lloyd iterations, the lowest inertia kept. The tolerance is sklearn's:
/// 1e-4 × the mean per-column variance.
pub fn kmeans(x: &[f64], n: usize, d: usize, k: usize, inits: usize, iters: usize, rng: &mut StdRng) -> Vec<usize> {
    let mut var = 0.0;
    for j in 0..d {
        let mean = (0..n).map(|i| x[i * d + j]).sum::<f64>() / n as f64;
        var += (0..n).map(|i| (x[i * d + j] - mean).powi(2)).sum::<f64>() / n as f64;
    }
    let tol = 1e-4 * var / d.max(1) as f64;
    let mut best: Option<(Vec<usize>, f64)> = None;
    for _ in 0..inits {
        let c = kmeans_pp(x, n, d, k, rng);
        let (a, inertia) = lloyd(x, n, d, k, c, iters, tol);
        if best.as_ref().map_or(true, |b| inertia < b.1) {
            best = Some((a, inertia));
        }
    }
    best.map(|b| b.0).unwrap_or_default()
}

/// Purity of a clustering: the share of samples whose label is the most frequent label of
/// their cluster (the official `purity_score`).
pub fn purity(labels: &[u32], assign: &[usize], k: usize) -> f64 {
    let classes = labels.iter().map(|&l| l as usize + 1).max().unwrap_or(0);
    let mut counts = vec![0usize; k * classes];
    for (&l, &a) in labels.iter().zip(assign) {
        counts[a * classes + l as usize] += 1;
    }
    let hit: usize = (0..k).map(|a| counts[a * classes..(a + 1) * classes].iter().copied().max().unwrap_or(0)).sum();
    hit as f64 / labels.len().max(1) as f64
}

/// Purity of k-means (k = `classes`) on min-max-scaled features `[n, d]` (f32 as read back).
pub fn cluster_purity(feats: &[f32], labels: &[u32], d: usize, classes: usize, cfg: &RelearnConfig, rng: &mut StdRng) -> f64 {
    let n = labels.len();
    let mut x: Vec<f64> = feats.iter().map(|&v| v as f64).collect();
    min_max_scale(&mut x, n, d);
    let assign = kmeans(&x, n, d, classes, cfg.kmeans_inits, cfg.kmeans_iters, rng);
    purity(labels, &assign, classes)
}

/// The k-means stream of one diagnosis: one per (run seed, epoch, modality, split 0 = train /
/// 1 = val), so a resumed run clusters exactly as the uninterrupted one.
pub fn kmeans_rng(seed: u64, epoch: usize, modality: usize, split: u64) -> StdRng {
    StdRng::seed_from_u64(derive_seed(&[seed, 0x5245_4c45_4152_4e00, epoch as u64, modality as u64, split]))
}

/// The re-initialisation strength from the two purities: tanh(λ·|train − val|).
pub fn strength(train_purity: f64, val_purity: f64, move_lambda: f64) -> f64 {
    (move_lambda * (train_purity - val_purity).abs()).tanh()
}

/// θ ← w·θ₀ + (1 − w)·θ for every parameter (in place, not recorded).
pub fn soft_reinit(params: &[Param], init: &[Tensor], w: f64) -> Result<()> {
    let _ng = crate::autograd::no_grad();
    for (p, p0) in params.iter().zip(init) {
        let new = ops::lerp(p0, &p.tensor.detach(), w as f32, (1.0 - w) as f32)?;
        p.tensor.assign(&new)?;
    }
    Ok(())
}

/// One modality's diagnosis: the purities and the strength applied.
#[derive(Clone, Debug)]
pub struct Diagnosis {
    /// k-means cluster purity of the modality's features on the training split, in [0, 1].
    pub train_purity: f64,
    /// The same on the validation split.
    pub val_purity: f64,
    /// The re-initialisation strength w = tanh(λ·|train − val|) that was applied.
    pub weight: f64,
}

/// Features and labels of one split's observation pass, kept on the GPU until it ends.
#[derive(Default)]
struct Pass {
    feats: Vec<Vec<Tensor>>,
    labels: Vec<Tensor>,
}

impl Pass {
    fn push(&mut self, encoders_out: Vec<Tensor>, labels: &Tensor) {
        self.feats.resize_with(encoders_out.len(), Vec::new);
        for (v, f) in self.feats.iter_mut().zip(encoders_out) {
            v.push(f.detach());
        }
        self.labels.push(labels.detach());
    }
    /// One readback per modality and one of the labels.
    fn take(&mut self) -> Result<(Vec<Vec<f32>>, Vec<u32>)> {
        let feats = std::mem::take(&mut self.feats)
            .iter()
            .map(|v| ops::concat(&v.iter().collect::<Vec<_>>(), 0)?.to_vec())
            .collect::<Result<Vec<_>>>()?;
        let mut labels = Vec::new();
        for l in std::mem::take(&mut self.labels) {
            labels.extend(l.to_vec_u32()?);
        }
        Ok((feats, labels))
    }
}

/// Diagnosing & Re-learning: joint training whose encoders are pulled back toward their
/// initial parameters by their diagnosed learning state (docs/methods/relearn.md).
pub struct Relearn {
    joint: Joint,
    cfg: RelearnConfig,
    names: Vec<String>,
    seed: u64,
    classes: usize,
    /// θ₀ of each modality's encoder parameters (checkpointed: a resumed run pulls toward the
    /// same start)
    init: Vec<Vec<Tensor>>,
    passes: [Pass; 2],
    last: Option<Vec<Diagnosis>>,
}

impl Relearn {
    /// The joint model of `cfg` with `[method.relearn]`, remembering each encoder's initial
    /// parameters θ₀.
    pub fn new(gpu: &Gpu, cfg: &MethodSetup, specs: &[ModalitySpec], classes: usize, rng: &mut StdRng) -> Result<Relearn> {
        let joint = Joint::new(gpu, cfg, specs, classes, rng)?;
        let init = (0..specs.len())
            .map(|m| joint.encoder_params(m).iter().map(|p| Tensor::zeros(gpu, p.tensor.shape())).collect::<Result<Vec<_>>>())
            .collect::<Result<Vec<_>>>()?;
        Ok(Relearn {
            joint,
            cfg: cfg.method.relearn.clone(),
            names: specs.iter().map(|s| s.name.clone()).collect(),
            seed: cfg.seed,
            classes,
            init,
            passes: Default::default(),
            last: None,
        })
    }

    /// Diagnose every modality from the two passes' features (read back once each).
    fn diagnose(&mut self, epoch: usize) -> Result<Vec<Diagnosis>> {
        let (tf, tl) = self.passes[0].take()?;
        let (vf, vl) = self.passes[1].take()?;
        if vl.len() < self.classes || tl.len() < self.classes {
            return Err(Error::config(
                "data",
                format!("relearn clusters into {} classes: the passes have {} training and {} validation samples", self.classes, tl.len(), vl.len()),
            ));
        }
        let mut out = Vec::new();
        for m in 0..self.names.len() {
            let d = self.joint.encoders[m].out_dim();
            let train_purity = cluster_purity(&tf[m], &tl, d, self.classes, &self.cfg, &mut kmeans_rng(self.seed, epoch, m, 0));
            let val_purity = cluster_purity(&vf[m], &vl, d, self.classes, &self.cfg, &mut kmeans_rng(self.seed, epoch, m, 1));
            out.push(Diagnosis { train_purity, val_purity, weight: strength(train_purity, val_purity, self.cfg.move_lambda) });
        }
        Ok(out)
    }

    /// Pull modality `m`'s encoder toward its initial parameters with strength `w`.
    pub fn reinit_modality(&self, m: usize, w: f64) -> Result<()> {
        soft_reinit(&self.joint.encoder_params(m), &self.init[m], w)
    }

    /// The diagnosis applied at the start of this epoch, if any (logged by `end_epoch`).
    pub fn last_diagnosis(&self) -> Option<&[Diagnosis]> {
        self.last.as_deref()
    }

    /// The initial parameters of modality `m`'s encoder (captured at the start of epoch 0).
    pub fn initial(&self, m: usize) -> &[Tensor] {
        &self.init[m]
    }
}

impl Method for Relearn {
    fn name(&self) -> &'static str {
        "relearn"
    }
    fn params(&self) -> Vec<Param> {
        self.joint.params()
    }
    fn buffers(&self) -> Vec<(String, Tensor)> {
        let mut v = self.joint.buffers();
        for m in 0..self.names.len() {
            for (p, t) in self.joint.encoder_params(m).iter().zip(&self.init[m]) {
                v.push((format!("relearn.init.{}", p.name), t.clone()));
            }
        }
        v
    }
    fn begin_epoch(&mut self, epoch: usize) -> Result<()> {
        // θ₀ after `model.init` (applied once the method is built); a resumed run (which
        // never begins epoch 0) has it from the checkpoint
        if epoch == 0 {
            for m in 0..self.names.len() {
                for (p, t) in self.joint.encoder_params(m).iter().zip(&self.init[m]) {
                    t.assign(&p.tensor)?;
                }
            }
        }
        Ok(())
    }
    fn observe_fraction(&self, epoch: usize) -> Option<f64> {
        self.cfg.reinit_before(epoch).then_some(1.0)
    }
    fn observe_val_split(&self, epoch: usize) -> bool {
        self.cfg.reinit_before(epoch)
    }
    fn observe_augmented(&self, _epoch: usize) -> bool {
        // the official get_feature reads AVDataset_CD(mode='my_train'): the eval transform
        // (code/ours.py l. 354, code/dataset/av_dataset.py l. 85–109)
        false
    }
    fn observe(&mut self, batch: &DeviceBatch, _epoch: usize) -> Result<()> {
        let _ng = crate::autograd::no_grad();
        // the official get_feature runs the model in eval mode
        let feats = encode_all(&self.joint.encoders, &batch.inputs, &Ctx::eval())?;
        self.passes[0].push(feats, &batch.labels);
        Ok(())
    }
    fn observe_val(&mut self, batch: &DeviceBatch, _epoch: usize) -> Result<()> {
        let _ng = crate::autograd::no_grad();
        let feats = encode_all(&self.joint.encoders, &batch.inputs, &Ctx::eval())?;
        self.passes[1].push(feats, &batch.labels);
        Ok(())
    }
    fn end_observe(&mut self, epoch: usize) -> Result<()> {
        if !self.cfg.reinit_before(epoch) {
            self.passes = Default::default();
            return Ok(());
        }
        let diag = self.diagnose(epoch)?;
        for (m, dg) in diag.iter().enumerate() {
            self.reinit_modality(m, dg.weight)?;
        }
        self.last = Some(diag);
        Ok(())
    }
    fn train_step(&mut self, batch: &DeviceBatch, opt: &mut dyn Optimizer, epoch: usize) -> Result<()> {
        self.joint.train_step(batch, opt, epoch)
    }
    fn predict(&self, inputs: &[Tensor]) -> Result<Prediction> {
        self.joint.predict(inputs)
    }
    fn features(&self, inputs: &[Tensor]) -> Result<Vec<Option<Tensor>>> {
        self.joint.features(inputs)
    }
    fn end_epoch(&mut self, epoch: usize, opt: &mut dyn Optimizer) -> Result<EpochStats> {
        let mut st = self.joint.end_epoch(epoch, opt)?;
        let per = |f: &dyn Fn(&Diagnosis) -> f64, d: &[Diagnosis]| -> serde_json::Value {
            self.names.iter().zip(d).map(|(n, x)| (n.clone(), serde_json::json!(f(x)))).collect::<serde_json::Map<_, _>>().into()
        };
        let line = match self.last.take() {
            Some(d) => serde_json::json!({
                "reinit": true,
                "train_purity": per(&|x| x.train_purity, &d),
                "val_purity": per(&|x| x.val_purity, &d),
                "weight": per(&|x| x.weight, &d),
            }),
            None => serde_json::json!({ "reinit": false }),
        };
        st.extra.push(("relearn".into(), line));
        Ok(st)
    }
}
