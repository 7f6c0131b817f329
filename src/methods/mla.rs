//! MLA, Multimodal Learning with Alternating unimodal adaptation (Zhang et al., CVPR 2024),
//! following the official `main.py` and `utils/utils.py` (Cecile-hi/Multimodal-Learning-with-
//! Alternating-Unimodal-Adaptation, `--gs_flag`); docs/methods/mla.md.
//!
//! One encoder per modality and one linear head shared by all of them. Each step trains the
//! modalities in turn: modality m's encoder and the head take an optimizer step on
//! CE(head(f_m), y) alone. Before each such step (except the very first of the run) the
//! head's weight gradient is modified so that it interferes less with what the head learned
//! from earlier modalities: a projection matrix P `[D, D]` (identity at the start) is updated
//! with the batch mean r of the features, k = P·rᵀ, P ← P − (k·kᵀ) ⊘ (α + k·r) (elementwise,
//! as the official code), P ← P / ‖P‖_F with α = 0.1^(1 + b/B) (batch b of B), and the
//! gradient becomes G·Pᵀ. At test time the heads' logits are fused with weights from their
//! entropies, w_m = softmax_m(−H_m).
//!
//! Every step's work stays on the GPU (P, the features' mean, the projection); the statistics
//! are read back once per epoch.
use super::{build_encoders, stats_from_sums, Accum, DeviceBatch, EpochStats, Method, Prediction};
use super::config::MethodSetup;
use crate::data::ModalitySpec;
use crate::error::{Error, Result};
use crate::gpu::Gpu;
use crate::nn::{Ctx, Encoder, Linear, Module};
use crate::ops;
use crate::optim::{Optimizer, Param};
use crate::tensor::Tensor;
use rand::rngs::StdRng;

// ---- configuration (`[method.mla]`) ----

/// How the head's weight gradient is modified (docs/methods/mla.md).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MlaProjection {
    /// G ← G·Pᵀ (the official `GSPlugin.before_update`, utils.py l. 41).
    Replace,
    /// G ← G + G·Pᵀ (GeWu-Lab/BalanceBenchmark's `MLA_trainer.py` l. 53).
    Add,
    /// No modification: what the official code runs since commit 11ae1ee, whose parameter
    /// name test (`n == "module.weight"`) never matches the head's `weight`.
    Off,
}

/// The denominator of the projection update (docs/methods/mla.md).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MlaDenominator {
    /// α + k·r, the `[D, D]` outer product, dividing elementwise (the official
    /// `torch.mm(k, r)`, utils.py l. 36; BalanceBenchmark l. 48).
    Outer,
    /// α + r·k = α + r·P·rᵀ, one number: the recursive-least-squares update of orthogonal
    /// weight modification, which keeps P symmetric positive semi-definite.
    Scalar,
}

/// How the test-time fusion weighs the modalities' logits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MlaFusion {
    /// One weight per modality and evaluation batch from the entropy of the logits softmaxed
    /// over the batch axis (the official `calculate_entropy`, `F.softmax(output, dim=0)`).
    EntropyBatch,
    /// One weight per sample and modality from the entropy of its class distribution
    /// (BalanceBenchmark's `dim=1`, and the official code's commented-out alternative).
    EntropySample,
    /// Fixed weights `method.mla.weights` (the official run without `--dynamic`).
    Fixed,
}

/// MLA (Zhang et al., CVPR 2024); see docs/methods/mla.md. Defaults are the official code's.
#[derive(Clone, Debug, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MlaConfig {
    /// How the head's weight gradient is projected.
    pub projection: MlaProjection,
    /// Denominator of the projection update.
    pub denominator: MlaDenominator,
    /// How the modalities' logits are fused at test time.
    pub test_fusion: MlaFusion,
    /// Fixed fusion weights, one per modality in data order (empty: equal weights; the
    /// official two-modality run uses 0.55 / 0.45 for audio / visual).
    pub weights: Vec<f32>,
}

impl Default for MlaConfig {
    fn default() -> Self {
        MlaConfig { projection: MlaProjection::Replace, denominator: MlaDenominator::Outer, test_fusion: MlaFusion::EntropyBatch, weights: Vec::new() }
    }
}

impl MlaConfig {
    /// Check every value; errors name the field (`method.mla.<field>`).
    pub fn validate(&self) -> Result<()> {
        if let Some(w) = self.weights.iter().find(|w| !(w.is_finite() && **w >= 0.0)) {
            return Err(Error::config("method.mla.weights", format!("must be finite and >= 0, got {w}")));
        }
        if !self.weights.is_empty() && self.weights.iter().sum::<f32>() <= 0.0 {
            return Err(Error::config("method.mla.weights", "must not all be 0"));
        }
        Ok(())
    }
}

/// α of the projection update at batch `b` of `batches`: 0.1^(1 + b/batches) (the official
/// `lamda = batch_index / len_dataloader + 1; alpha = 1.0 * 0.1 ** lamda`). With `batches`
/// unknown (0) the fraction is 0.
pub fn alpha(b: usize, batches: usize) -> f32 {
    let frac = if batches == 0 { 0.0 } else { b as f64 / batches as f64 };
    0.1f64.powf(frac + 1.0) as f32
}

/// The projection update from P `[D, D]` and features `[N, D]` (no gradient): r = mean_n f_n
/// `[1, D]`, k = P·rᵀ `[D, 1]`, P' = P − (k·kᵀ) ⊘ (α + k·r) (Outer: the outer products divided
/// elementwise, the official `torch.mm(k, r)`) or P − k·kᵀ / (α + r·k) (Scalar), returned
/// normalised by its Frobenius norm.
pub fn update_projection(p: &Tensor, feats: &Tensor, alpha: f32, den: MlaDenominator) -> Result<Tensor> {
    let d = p.dim(0);
    if p.shape() != [d, d] || feats.dims() != 2 || feats.dim(1) != d {
        return Err(Error::shape("mla.update_projection", format!("P {:?} must be [D, D] and the features {:?} [N, D]", p.shape(), feats.shape())));
    }
    let _ng = crate::autograd::no_grad();
    let r = ops::mean(&feats.detach(), &[0], true)?; // [1, D]
    let k = ops::linear(p, &r, None, None)?; // P·rᵀ: [D, 1]
    let kk = ops::linear(&k, &k, None, None)?; // k·kᵀ: [D, D]
    let kr = match den {
        MlaDenominator::Outer => ops::matmul(&k, &r)?,  // [D, D]
        MlaDenominator::Scalar => ops::matmul(&r, &k)?, // [1, 1]
    };
    let next = ops::sub(p, &ops::div(&kk, &ops::add_scalar(&kr, alpha)?)?)?;
    let norm = ops::sqrt(&ops::sum_all(&ops::square(&next)?)?)?;
    ops::div(&next, &norm)
}

/// The head's weight gradient G `[K, D]` under `rule` with P `[D, D]` (no gradient).
pub fn project(g: &Tensor, p: &Tensor, rule: MlaProjection) -> Result<Tensor> {
    let _ng = crate::autograd::no_grad();
    match rule {
        MlaProjection::Replace => ops::linear(g, p, None, None),
        MlaProjection::Add => ops::add(g, &ops::linear(g, p, None, None)?),
        MlaProjection::Off => Ok(g.clone()),
    }
}

/// Entropy of softmax along the last axis of `x`, summed over the other axis: `[R, C]` →
/// per row `[R]` (with `rows`), or the sum over everything `[1]`.
fn entropy(x: &Tensor, rows: bool) -> Result<Tensor> {
    let plogp = ops::mul(&ops::softmax(x)?, &ops::log_softmax(x)?)?;
    if rows {
        ops::neg(&ops::sum(&plogp, &[1], false)?)
    } else {
        ops::neg(&ops::sum_all(&plogp)?)
    }
}

/// The fused test-time logits from each modality's logits `[N, K]` (no gradient):
/// Σ_m w_m·logits_m with w = softmax over modalities of −H (entropy rules) or `weights`
/// (normalised to sum 1; empty: equal).
pub fn fuse(logits: &[Tensor], rule: MlaFusion, weights: &[f32]) -> Result<Tensor> {
    let m = logits.len();
    let first = logits.first().ok_or_else(|| Error::shape("mla.fuse", "no modality"))?;
    if logits.iter().any(|l| l.shape() != first.shape() || l.dims() != 2) {
        return Err(Error::shape("mla.fuse", "every modality's logits must be [N, K] of one shape"));
    }
    let _ng = crate::autograd::no_grad();
    let n = first.dim(0);
    // w: [1, M] (one weight per modality) or [N, M] (per sample)
    let w = match rule {
        MlaFusion::Fixed => {
            let raw: Vec<f32> = if weights.is_empty() { vec![1.0; m] } else { weights.to_vec() };
            if raw.len() != m {
                return Err(Error::config("method.mla.weights", format!("{} weights for {m} modalities", raw.len())));
            }
            let s: f32 = raw.iter().sum();
            Tensor::from_slice(first.gpu(), &raw.iter().map(|v| v / s).collect::<Vec<_>>(), &[1, m])?
        }
        MlaFusion::EntropyBatch => {
            let h: Vec<Tensor> = logits.iter().map(|l| entropy(&ops::transpose(l, 0, 1)?, false)).collect::<Result<_>>()?;
            let refs: Vec<&Tensor> = h.iter().collect();
            ops::softmax(&ops::neg(&ops::concat(&refs, 0)?.reshape(&[1, m])?)?)?
        }
        MlaFusion::EntropySample => {
            let h: Vec<Tensor> = logits.iter().map(|l| entropy(l, true)?.reshape(&[n, 1])).collect::<Result<_>>()?;
            let refs: Vec<&Tensor> = h.iter().collect();
            ops::softmax(&ops::neg(&ops::concat(&refs, 1)?)?)?
        }
    };
    let mut out: Option<Tensor> = None;
    for (i, l) in logits.iter().enumerate() {
        let term = ops::mul(l, &ops::narrow(&w, 1, i, 1)?)?;
        out = Some(match out {
            Some(o) => ops::add(&o, &term)?,
            None => term,
        });
    }
    Ok(out.expect("at least one modality"))
}

/// MLA: one encoder per modality and one shared linear head, the modalities trained in turn
/// with the head's weight gradient projected.
pub struct Mla {
    encoders: Vec<Box<dyn Encoder>>,
    head: Linear,
    cfg: MlaConfig,
    names: Vec<String>,
    /// P `[D, D]` (checkpointed)
    proj: Tensor,
    /// unimodal updates so far in the run (the official `exp_count`; checkpointed)
    updates: u64,
    /// batches of the current epoch ([`Method::set_epoch_batches`]) and the step within it
    batches: usize,
    batch: usize,
    acc: Accum,
    steps: usize,
    m: usize,
}

impl Mla {
    /// Build the model for these modalities and `classes` outputs from `cfg`, drawing the initial
    /// weights from `rng`; errors name a bad config field. Every encoder must output
    /// the same width (the head is shared).
    pub fn new(gpu: &Gpu, cfg: &MethodSetup, specs: &[ModalitySpec], classes: usize, rng: &mut StdRng) -> Result<Mla> {
        let encoders = build_encoders(gpu, cfg, specs, rng)?;
        let d = super::shared_width("MLA", specs, &encoders)?;
        let head = Linear::new(gpu, "head", d, classes, true, rng)?;
        let mut eye = vec![0.0f32; d * d];
        for i in 0..d {
            eye[i * d + i] = 1.0;
        }
        let m = specs.len();
        let mc = cfg.method.mla.clone();
        if mc.test_fusion == MlaFusion::Fixed && !mc.weights.is_empty() && mc.weights.len() != m {
            return Err(Error::config("method.mla.weights", format!("{} weights for {m} modalities", mc.weights.len())));
        }
        Ok(Mla {
            encoders,
            head,
            cfg: mc,
            names: specs.iter().map(|s| s.name.clone()).collect(),
            proj: Tensor::from_slice(gpu, &eye, &[d, d])?,
            updates: 0,
            batches: 0,
            batch: 0,
            // loss, CE × M, score × M, ‖G'‖/‖G‖ × M
            acc: Accum::new(1 + 3 * m),
            steps: 0,
            m,
        })
    }

    /// The projection matrix P.
    pub fn projection(&self) -> &Tensor {
        &self.proj
    }

    /// One unimodal update of modality `i`: returns [CE·n, Σ true-class prob, ‖G'‖/‖G‖].
    fn update(&mut self, i: usize, batch: &DeviceBatch, opt: &mut dyn Optimizer) -> Result<[Tensor; 3]> {
        let ctx = Ctx::train();
        let f = self.encoders[i].forward(&batch.inputs[i], &ctx)?;
        let logits = self.head.forward(&f, &ctx)?;
        let loss = ops::cross_entropy(&logits, ops::Target::Hard(&batch.labels), None)?;
        let mut grads = loss.backward()?;
        let _ng = crate::autograd::no_grad();
        let gpu = batch.labels.gpu();
        let mut ratio = crate::ops::full(gpu, &[1], 1.0)?;
        if self.updates != 0 && self.cfg.projection != MlaProjection::Off {
            self.proj = update_projection(&self.proj, &f, alpha(self.batch, self.batches), self.cfg.denominator)?;
            let w = &self.head.weight.tensor;
            if let Some(g) = grads.get(w).cloned() {
                let g2 = project(&g, &self.proj, self.cfg.projection)?;
                let norm = |t: &Tensor| -> Result<Tensor> { ops::sqrt(&ops::sum_all(&ops::square(t)?)?) };
                ratio = ops::div(&norm(&g2)?, &ops::maximum(&norm(&g)?, &crate::ops::full(gpu, &[1], 1e-30)?)?)?;
                grads.insert(w, g2);
            }
        }
        opt.step(&grads)?;
        self.updates += 1;
        let n = batch.n as f32;
        let ce = ops::scale(&loss.detach(), n)?.reshape(&[1])?;
        let score = ops::sum_all(&ops::true_class_prob(&logits.detach(), &batch.labels)?)?;
        Ok([ce, score, ratio])
    }
}

impl Method for Mla {
    fn name(&self) -> &'static str {
        "mla"
    }
    fn params(&self) -> Vec<Param> {
        let mut v: Vec<Param> = self.encoders.iter().flat_map(|e| e.params()).collect();
        v.extend(self.head.params());
        v
    }
    fn buffers(&self) -> Vec<(String, Tensor)> {
        let mut v: Vec<(String, Tensor)> = self.encoders.iter().flat_map(|e| e.buffers()).collect();
        v.push(("mla.projection".into(), self.proj.clone()));
        v
    }
    fn begin_epoch(&mut self, _epoch: usize) -> Result<()> {
        self.batch = 0;
        Ok(())
    }
    fn set_epoch_batches(&mut self, batches: usize) {
        self.batches = batches;
    }
    fn train_step(&mut self, batch: &DeviceBatch, opt: &mut dyn Optimizer, _epoch: usize) -> Result<()> {
        if batch.inputs.len() != self.m {
            return Err(Error::shape("model", format!("{} modalities in the batch, the model has {}", batch.inputs.len(), self.m)));
        }
        let mut cols: [Vec<Tensor>; 3] = Default::default();
        for i in 0..self.m {
            for (c, t) in cols.iter_mut().zip(self.update(i, batch, opt)?) {
                c.push(t);
            }
        }
        self.batch += 1;
        let _ng = crate::autograd::no_grad();
        let ces: Vec<&Tensor> = cols[0].iter().collect();
        let ce = ops::concat(&ces, 0)?;
        let loss = ops::scale(&ops::sum_all(&ce)?, 1.0 / self.m as f32)?;
        let mut parts = vec![loss, ce];
        for c in &cols[1..] {
            let r: Vec<&Tensor> = c.iter().collect();
            parts.push(ops::concat(&r, 0)?);
        }
        let refs: Vec<&Tensor> = parts.iter().collect();
        self.acc.record(&refs, batch.n)?;
        self.steps += 1;
        Ok(())
    }
    fn features(&self, inputs: &[Tensor]) -> Result<Vec<Option<Tensor>>> {
        super::eval_features(&self.encoders, inputs)
    }
    fn predict(&self, inputs: &[Tensor]) -> Result<Prediction> {
        let _ng = crate::autograd::no_grad();
        let ctx = Ctx::eval();
        let feats = super::encode_all(&self.encoders, inputs, &ctx)?;
        let logits = feats.iter().map(|f| self.head.forward(f, &ctx)).collect::<Result<Vec<_>>>()?;
        let fused = fuse(&logits, self.cfg.test_fusion, &self.cfg.weights)?;
        Ok(Prediction { fused, per_modality: logits.into_iter().map(Some).collect() })
    }
    fn end_epoch(&mut self, _epoch: usize, _opt: &mut dyn Optimizer) -> Result<EpochStats> {
        let samples = self.acc.samples;
        let steps = self.steps.max(1) as f64;
        self.steps = 0;
        let sums = self.acc.take()?;
        let m = self.m;
        let mut st = stats_from_sums(&sums, m, samples);
        let base = 1 + 2 * m;
        let ratio: Vec<f64> = sums[base..base + m].iter().map(|v| v / steps).collect();
        let ratio = super::per_modality_json(&self.names, &ratio);
        st.extra.push(("mla".into(), serde_json::json!({ "updates": self.updates, "head_grad_ratio": ratio })));
        Ok(st)
    }
    fn state(&self) -> serde_json::Value {
        serde_json::json!({ "updates": self.updates })
    }
    fn restore(&mut self, state: &serde_json::Value, _opt: &mut dyn Optimizer) -> Result<()> {
        if let Some(u) = state.get("updates") {
            self.updates = u.as_u64().ok_or_else(|| Error::config("checkpoint method_state.updates", format!("must be a count, got {u}")))?;
        }
        Ok(())
    }
}
