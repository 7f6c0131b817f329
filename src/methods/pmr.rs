//! PMR, Prototypical Modal Rebalance (Fan et al., CVPR 2023), following the official
//! `main_Prototype_grad.py` (fanyunfeng-bit/Modal-Imbalance-PMR); docs/methods/pmr.md.
//!
//! The joint model (encoders + fusion head) is trained with the fused CE plus, for the
//! modalities that learn slower, a prototypical CE: each modality m keeps one prototype per
//! class c^m_k (the class mean of its encoder features over a tenth of the training batches,
//! recomputed before every epoch and smoothed with a momentum), classifies a sample by
//! softmax(−‖z^m − c^m_k‖) and the CE of that classifier pulls the slow modality's features
//! towards their class prototype. Which modality is slow comes from the prototype scores
//! s_m = Σ_n softmax(−d(z^m_n, c^m))_{y_n} of the batch. Optionally (μ > 0) the entropy of the
//! dominant modality's prototype classifier is maximised during the first epochs.
//!
//! Everything stays on the GPU: prototypes, class sums, scores and coefficients are tensors;
//! the epoch's statistics are read back once in `end_epoch`.
use super::{encode_all, stats_from_sums, view_stats, Accum, DeviceBatch, EpochStats, Joint, Method, Prediction};
use super::config::MethodSetup;
use crate::data::ModalitySpec;
use crate::error::{Error, Result};
use crate::gpu::Gpu;
use crate::nn::Ctx;
use crate::ops;
use crate::optim::{Optimizer, Param};
use crate::tensor::Tensor;
use rand::rngs::StdRng;

// ---- configuration (`[method.pmr]`) ----

/// How PMR weights the prototypical CE of a slower modality (docs/methods/pmr.md).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PmrCoefficient {
    /// α for every modality whose prototype score is below the best one, 0 otherwise (the
    /// official `main_Prototype_grad.py`).
    Code,
    /// α·clip(s_max/s_m − 1, 0, 1): grows with the imbalance (the paper's ratio-dependent form,
    /// as re-implemented in GeWu-Lab/BalanceBenchmark).
    Ratio,
}

/// PMR (Fan et al., CVPR 2023); see docs/methods/pmr.md. Defaults are the official code's.
#[derive(Clone, Debug, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PmrConfig {
    /// Weight of the prototypical CE of the slower modality (`--alpha`, 1.0).
    pub alpha: f32,
    /// Prototypes are recomputed at the start of every epoch as
    /// (1 − momentum)·new + momentum·old (`--momentum_coef`, 0.2).
    pub momentum: f32,
    /// Share of the training batches the prototypes are averaged over (the official code stops
    /// after `len(loader) // 10` batches: 0.1).
    pub proto_fraction: f64,
    /// The rebalancing terms act for epochs in [start_epoch, end_epoch]
    /// (`--modulation_starts` 0, `--modulation_ends` 100).
    pub start_epoch: usize,
    /// Last epoch of the rebalancing terms, inclusive.
    pub end_epoch: usize,
    /// How the prototypical CE of a slower modality is weighted.
    pub coefficient: PmrCoefficient,
    /// Weight μ of the prototype entropy regularisation of the dominant modality (0: off, as
    /// the official code, which has none).
    pub mu: f32,
    /// The entropy term acts for epochs in [start_epoch, start_epoch + entropy_epochs).
    pub entropy_epochs: usize,
}

impl Default for PmrConfig {
    fn default() -> Self {
        PmrConfig {
            alpha: 1.0,
            momentum: 0.2,
            proto_fraction: 0.1,
            start_epoch: 0,
            end_epoch: 100,
            coefficient: PmrCoefficient::Code,
            mu: 0.0,
            entropy_epochs: 0,
        }
    }
}

impl PmrConfig {
    /// Check every value; errors name the field (`method.pmr.<field>`).
    pub fn validate(&self) -> Result<()> {
        let f = |n: &str| format!("method.pmr.{n}");
        if !(self.alpha.is_finite() && self.alpha >= 0.0) {
            return Err(Error::config(f("alpha"), format!("must be >= 0, got {}", self.alpha)));
        }
        if !(self.momentum.is_finite() && (0.0..1.0).contains(&self.momentum)) {
            return Err(Error::config(f("momentum"), format!("must be in [0, 1), got {}", self.momentum)));
        }
        if !(self.proto_fraction.is_finite() && self.proto_fraction > 0.0 && self.proto_fraction <= 1.0) {
            return Err(Error::config(f("proto_fraction"), format!("must be in (0, 1], got {}", self.proto_fraction)));
        }
        if self.start_epoch > self.end_epoch {
            return Err(Error::config(f("start_epoch"), format!("must be <= method.pmr.end_epoch ({}), got {}", self.end_epoch, self.start_epoch)));
        }
        if !(self.mu.is_finite() && self.mu >= 0.0) {
            return Err(Error::config(f("mu"), format!("must be >= 0, got {}", self.mu)));
        }
        Ok(())
    }
}

/// Added to squared distances before the square root, so that a feature equal to its
/// prototype has a finite gradient (the official code gets NaN there).
pub const DIST_EPS: f32 = 1e-12;

/// Euclidean distances `[N, K]` between features `[N, D]` and prototypes `[K, D]`:
/// sqrt(Σ_d (z_nd − c_kd)² + DIST_EPS), differentiable in both.
pub fn distances(feats: &Tensor, protos: &Tensor) -> Result<Tensor> {
    if feats.dims() != 2 || protos.dims() != 2 || feats.dim(1) != protos.dim(1) {
        return Err(Error::shape("pmr.distances", format!("features {:?} and prototypes {:?} must be [N, D] and [K, D]", feats.shape(), protos.shape())));
    }
    let (n, k, d) = (feats.dim(0), protos.dim(0), feats.dim(1));
    let diff = ops::sub(&feats.reshape(&[n, 1, d])?, &protos.reshape(&[1, k, d])?)?;
    let sq = ops::sum(&ops::square(&diff)?, &[2], false)?;
    ops::sqrt(&ops::add_scalar(&sq, DIST_EPS)?)
}

/// The per-modality factors of one step from the prototype scores `s` `[M]` (no gradient):
/// `(coef, weight, dominant)`, each `[M]`. `weight` is the imbalance factor without α
/// (Code: 1 where s_m < max s, else 0; Ratio: clip(max s / s_m − 1, 0, 1)), `coef = α·weight`
/// multiplies the prototypical CE, `dominant` is 1 where s_m = max s.
pub fn coefficients(scores: &Tensor, alpha: f32, kind: PmrCoefficient) -> Result<(Tensor, Tensor, Tensor)> {
    let _ng = crate::autograd::no_grad();
    let smax = ops::max(scores, &[0], true)?; // [1]
    let dominant = ops::ge_scalar(&ops::sub(scores, &smax)?, 0.0)?;
    let weight = match kind {
        PmrCoefficient::Code => ops::affine(&dominant, -1.0, 1.0)?,
        PmrCoefficient::Ratio => {
            // s_m = 0 gives +inf, clipped to 1
            let r = ops::div(&smax, scores)?;
            ops::clamp(&ops::add_scalar(&r, -1.0)?, 0.0, 1.0)?
        }
    };
    Ok((ops::scale(&weight, alpha)?, weight, dominant))
}

/// The terms of one PMR step.
pub struct PmrTerms {
    /// the objective (with gradient)
    pub loss: Tensor,
    /// prototypical CE of each modality (batch mean), `[M]`, detached
    pub proto_ce: Tensor,
    /// prototype scores s_m (batch sums of the true-class probability), `[M]`
    pub scores: Tensor,
    /// coefficients applied to the prototypical CE, `[M]` (zero outside the active epochs)
    pub coef: Tensor,
    /// the entropy term's value μ·(Σ weight)·H_dominant that was subtracted, `[1]`
    pub entropy: Tensor,
}

/// PMR's objective for a batch: CE(fused) + Σ_m coef_m·CE(−d(z^m, c^m), y)
/// − \[entropy\] μ·(Σ_m weight_m)·Σ_m dominant_m·H_m, with H_m = Σ_n entropy of
/// softmax(−d(z^m_n, c^m)). With `active = false` the loss is the fused CE alone (the
/// other terms are still computed for logging).
pub fn pmr_terms(fused: &Tensor, feats: &[Tensor], protos: &[Tensor], labels: &Tensor, cfg: &PmrConfig, active: bool, entropy: bool) -> Result<PmrTerms> {
    let gpu = labels.gpu().clone();
    let ce = ops::cross_entropy(fused, ops::Target::Hard(labels), None)?;
    let mut sims = Vec::new();
    let mut pces = Vec::new();
    let mut scores = Vec::new();
    for (f, p) in feats.iter().zip(protos) {
        let sim = ops::neg(&distances(f, p)?)?;
        pces.push(ops::cross_entropy(&sim, ops::Target::Hard(labels), None)?);
        let _ng = crate::autograd::no_grad();
        scores.push(ops::sum_all(&ops::true_class_prob(&sim.detach(), labels)?)?.reshape(&[1])?);
        drop(_ng);
        sims.push(sim);
    }
    let (s, pce_d) = {
        let _ng = crate::autograd::no_grad();
        let sr: Vec<&Tensor> = scores.iter().collect();
        let pd: Vec<Tensor> = pces.iter().map(|t| t.detach().reshape(&[1])).collect::<Result<_>>()?;
        let pr: Vec<&Tensor> = pd.iter().collect();
        (ops::concat(&sr, 0)?, ops::concat(&pr, 0)?)
    };
    let (coef, weight, dominant) = coefficients(&s, cfg.alpha, cfg.coefficient)?;
    let m = feats.len();
    if !active {
        return Ok(PmrTerms {
            loss: ce,
            proto_ce: pce_d,
            scores: s,
            coef: Tensor::zeros(&gpu, &[m])?,
            entropy: Tensor::zeros(&gpu, &[1])?,
        });
    }
    let mut loss = ce.reshape(&[1])?;
    for (i, pce) in pces.iter().enumerate() {
        let c = ops::narrow(&coef, 0, i, 1)?;
        loss = ops::add(&loss, &ops::mul(&pce.reshape(&[1])?, &c)?)?;
    }
    let mut ent_value = Tensor::zeros(&gpu, &[1])?;
    if entropy && cfg.mu > 0.0 {
        let wsum = ops::scale(&ops::sum_all(&weight)?.reshape(&[1])?, cfg.mu)?;
        let mut h_dom: Option<Tensor> = None;
        for (i, sim) in sims.iter().enumerate() {
            let p = ops::softmax(sim)?;
            let lp = ops::log_softmax(sim)?;
            let h = ops::neg(&ops::sum_all(&ops::mul(&p, &lp)?)?)?.reshape(&[1])?;
            let term = ops::mul(&h, &ops::narrow(&dominant, 0, i, 1)?)?;
            h_dom = Some(match h_dom {
                Some(a) => ops::add(&a, &term)?,
                None => term,
            });
        }
        let ent = ops::mul(&h_dom.expect("at least one modality"), &wsum)?;
        loss = ops::sub(&loss, &ent)?;
        ent_value = ent.detach();
    }
    Ok(PmrTerms { loss: loss.reshape(&[1])?, proto_ce: pce_d, scores: s, coef, entropy: ent_value })
}

/// New prototypes `[K, D]` from class sums `[K, D]` and counts `[K]`: the class means,
/// a class absent from the pass keeping `prev`; then, with `ema`,
/// (1 − momentum)·mean + momentum·prev.
pub fn update_prototypes(sums: &Tensor, counts: &Tensor, prev: &Tensor, momentum: f32, ema: bool) -> Result<Tensor> {
    let _ng = crate::autograd::no_grad();
    let k = counts.numel();
    let c = counts.reshape(&[k, 1])?;
    let mean = ops::div(sums, &ops::maximum(&c, &crate::ops::full(sums.gpu(), &[1], 1.0)?)?)?;
    let has = ops::ge_scalar(&c, 0.5)?;
    let kept = ops::add(&ops::mul(&has, &mean)?, &ops::mul(&ops::affine(&has, -1.0, 1.0)?, prev)?)?;
    if ema {
        ops::lerp(&kept, prev, 1.0 - momentum, momentum)
    } else {
        Ok(kept)
    }
}

/// PMR: joint training plus prototypical cross-entropy for the slower modalities.
pub struct Pmr {
    joint: Joint,
    cfg: PmrConfig,
    names: Vec<String>,
    /// one [K, D_m] buffer per modality (checkpointed)
    protos: Vec<Tensor>,
    sums: Vec<Option<Tensor>>,
    counts: Option<Tensor>,
    eye: Tensor,
    acc: Accum,
    m: usize,
}

impl Pmr {
    /// Build the model for these modalities and `classes` outputs from `cfg`, drawing the initial
    /// weights from `rng`; errors name a bad config field.
    pub fn new(gpu: &Gpu, cfg: &MethodSetup, specs: &[ModalitySpec], classes: usize, rng: &mut StdRng) -> Result<Pmr> {
        let joint = Joint::new(gpu, cfg, specs, classes, rng)?;
        let m = specs.len();
        let protos = joint.encoders.iter().map(|e| Tensor::zeros(gpu, &[classes, e.out_dim()])).collect::<Result<Vec<_>>>()?;
        let mut eye = vec![0.0f32; classes * classes];
        for i in 0..classes {
            eye[i * classes + i] = 1.0;
        }
        Ok(Pmr {
            joint,
            cfg: cfg.method.pmr.clone(),
            names: specs.iter().map(|s| s.name.clone()).collect(),
            protos,
            sums: vec![None; m],
            counts: None,
            eye: Tensor::from_slice(gpu, &eye, &[classes, classes])?,
            acc: Accum::new(1 + 2 * m + 3 * m + 1),
            m,
        })
    }

    fn active(&self, epoch: usize) -> bool {
        self.cfg.start_epoch <= epoch && epoch <= self.cfg.end_epoch
    }
}

impl Method for Pmr {
    fn name(&self) -> &'static str {
        "pmr"
    }
    fn params(&self) -> Vec<Param> {
        self.joint.params()
    }
    fn buffers(&self) -> Vec<(String, Tensor)> {
        let mut v = self.joint.buffers();
        for (n, p) in self.names.iter().zip(&self.protos) {
            v.push((format!("pmr.proto.{n}"), p.clone()));
        }
        v
    }
    fn observe_fraction(&self, _epoch: usize) -> Option<f64> {
        Some(self.cfg.proto_fraction)
    }
    fn observe(&mut self, batch: &DeviceBatch, _epoch: usize) -> Result<()> {
        let _ng = crate::autograd::no_grad();
        // the official calculate_prototype runs the model in eval mode
        let feats = encode_all(&self.joint.encoders, &batch.inputs, &Ctx::eval())?;
        let onehot = ops::embedding(&batch.labels, &self.eye)?; // [N, K]
        let ta = ops::MatmulOpts { trans_a: true, ..Default::default() };
        for (i, f) in feats.iter().enumerate() {
            let s = ops::matmul_ex(&onehot, f, ta)?; // [K, D]
            self.sums[i] = Some(match self.sums[i].take() {
                Some(a) => ops::add(&a, &s)?,
                None => s,
            });
        }
        let c = ops::sum(&onehot, &[0], false)?;
        self.counts = Some(match self.counts.take() {
            Some(a) => ops::add(&a, &c)?,
            None => c,
        });
        Ok(())
    }
    fn end_observe(&mut self, epoch: usize) -> Result<()> {
        let Some(counts) = self.counts.take() else { return Ok(()) };
        // official: the first computation (before epoch 0) and the one after epoch 0 are both
        // called with epoch 0 and skip the momentum; from the one before epoch 2 on it applies
        let ema = epoch >= 2;
        for i in 0..self.m {
            let Some(sums) = self.sums[i].take() else { continue };
            let new = update_prototypes(&sums, &counts, &self.protos[i], self.cfg.momentum, ema)?;
            self.protos[i].assign(&new)?;
        }
        Ok(())
    }
    fn train_step(&mut self, batch: &DeviceBatch, opt: &mut dyn Optimizer, epoch: usize) -> Result<()> {
        let ctx = Ctx::train();
        let feats = encode_all(&self.joint.encoders, &batch.inputs, &ctx)?;
        let fused = self.joint.fusion.forward(&feats, &ctx)?;
        let active = self.active(epoch);
        let entropy = epoch < self.cfg.start_epoch + self.cfg.entropy_epochs;
        let t = pmr_terms(&fused, &feats, &self.protos, &batch.labels, &self.cfg, active, entropy)?;
        let grads = t.loss.backward()?;
        opt.step(&grads)?;
        let _ng = crate::autograd::no_grad();
        let views = (0..self.m).map(|i| self.joint.fusion.unimodal(i, &feats[i].detach(), &ctx)).collect::<Result<Vec<_>>>()?;
        let vs = view_stats(&views, &batch.labels)?;
        let n = batch.n as f32;
        let parts = [
            ops::scale(&t.loss.detach(), n)?.reshape(&[1])?,
            vs,
            ops::scale(&t.proto_ce, n)?,
            ops::scale(&t.coef, n)?,
            t.scores.clone(),
            ops::scale(&t.entropy, n)?,
        ];
        let refs: Vec<&Tensor> = parts.iter().collect();
        self.acc.record(&refs, batch.n)?;
        Ok(())
    }
    fn predict(&self, inputs: &[Tensor]) -> Result<Prediction> {
        self.joint.predict(inputs)
    }
    fn features(&self, inputs: &[Tensor]) -> Result<Vec<Option<Tensor>>> {
        self.joint.features(inputs)
    }
    fn end_epoch(&mut self, epoch: usize, _opt: &mut dyn Optimizer) -> Result<EpochStats> {
        let samples = self.acc.samples;
        let sums = self.acc.take()?;
        let m = self.m;
        let mut st = stats_from_sums(&sums, m, samples);
        let n = samples.max(1) as f64;
        let per = |off: usize, div: f64| -> serde_json::Value {
            let mut o = serde_json::Map::new();
            for (i, name) in self.names.iter().enumerate() {
                o.insert(name.clone(), serde_json::json!(sums[off + i] / div));
            }
            serde_json::Value::Object(o)
        };
        let base = 1 + 2 * m;
        st.extra.push((
            "pmr".into(),
            serde_json::json!({
                "active": self.active(epoch),
                "proto_loss": per(base, n),
                "coef": per(base + m, n),
                "proto_score": per(base + 2 * m, n),
                "entropy_term": sums[base + 3 * m] / n,
            }),
        ));
        Ok(st)
    }
}

impl Pmr {
    /// The current prototypes, one `[K, D_m]` tensor per modality.
    pub fn prototypes(&self) -> &[Tensor] {
        &self.protos
    }
    /// The encoder features the prototypes are built from (eval mode, no gradient).
    pub fn features(&self, inputs: &[Tensor]) -> Result<Vec<Tensor>> {
        let _ng = crate::autograd::no_grad();
        encode_all(&self.joint.encoders, inputs, &Ctx::eval())
    }
}
