//! MMPareto (Wei & Hu, ICML 2024), following the official `code/MMPareto.py`
//! (GeWu-Lab/MMPareto_ICML2024, `train_epoch`); docs/methods/mmpareto.md.
//!
//! The model is the joint one (encoders + fusion head) plus one linear unimodal head per
//! modality. Losses: the multimodal CE and each modality's unimodal CE. The heads take the
//! plain gradient of the summed loss. Each encoder m (one parameter group) sees two gradients,
//! g_mm from the multimodal loss and g_m from its own unimodal loss. Over the whole encoder:
//! if cos(g_mm, g_m) > 0 the weights are (½, ½); otherwise the two-task min-norm (MGDA)
//! weights (k, 1 − k) of MinNormSolver. Then per parameter tensor t:
//!   new_t = 2k·g_mm,t + 2(1 − k)·g_m,t,
//!   grad_t = γ·max(1, ‖g_mm,t + g_m,t‖ / ‖new_t‖)·new_t
//! (the official magnitude rescaling: never smaller than the summed-loss gradient, times γ).
//! All of it runs on the GPU: the dot products, the weights and the scales are tensors.
use super::{build_encoders, stats_from_sums, Accum, DeviceBatch, EpochStats, Method, Prediction};
use crate::autograd::Gradients;
use super::config::MethodSetup;
use crate::data::ModalitySpec;
use crate::error::{Error, Result};
use crate::gpu::Gpu;
use crate::nn::{Ctx, Encoder, Fusion, Linear, Module};
use crate::ops;
use crate::optim::{Optimizer, Param};
use crate::tensor::Tensor;
use rand::rngs::StdRng;

// ---- configuration (`[method.mmpareto]`) ----

/// MMPareto (Wei & Hu, ICML 2024); see docs/methods/mmpareto.md. Defaults are the official
/// code's.
#[derive(Clone, Debug, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MmparetoConfig {
    /// Final scale of the combined encoder gradient (`gamma = 1.5`, hard-coded in MMPareto.py).
    pub gamma: f32,
}

impl Default for MmparetoConfig {
    fn default() -> Self {
        MmparetoConfig { gamma: 1.5 }
    }
}

impl MmparetoConfig {
    /// Check every value; errors name the field (`method.mmpareto.<field>`).
    pub fn validate(&self) -> Result<()> {
        if !(self.gamma.is_finite() && self.gamma > 0.0) {
            return Err(Error::config("method.mmpareto.gamma", format!("must be > 0, got {}", self.gamma)));
        }
        Ok(())
    }
}

/// The combined gradient of one parameter group.
pub struct Combined {
    /// one gradient per tensor, in the input order
    pub grads: Vec<Tensor>,
    /// `[3]`: cos(g_mm, g_uni), the weight k of the multimodal gradient, 1 if the two
    /// conflicted (cos ≤ 0, min-norm weights) else 0
    pub info: Tensor,
}

fn dot_all(a: &[Tensor], b: &[Tensor]) -> Result<Tensor> {
    let mut acc: Option<Tensor> = None;
    for (x, y) in a.iter().zip(b) {
        let d = ops::sum_all(&ops::mul(x, y)?)?.reshape(&[1])?;
        acc = Some(match acc {
            Some(s) => ops::add(&s, &d)?,
            None => d,
        });
    }
    acc.ok_or_else(|| Error::Other("mmpareto: a parameter group without tensors".into()))
}

/// MMPareto's gradient for one parameter group from the multimodal gradients `g_mm` and the
/// unimodal gradients `g_uni` (same tensors, same order). No gradient is recorded.
pub fn combine(g_mm: &[Tensor], g_uni: &[Tensor], gamma: f32) -> Result<Combined> {
    if g_mm.len() != g_uni.len() || g_mm.iter().zip(g_uni).any(|(a, b)| a.shape() != b.shape()) {
        return Err(Error::shape("mmpareto.combine", "the two gradient lists must hold tensors of the same shapes"));
    }
    let gpu = g_mm.first().ok_or_else(|| Error::Other("mmpareto: empty parameter group".into()))?.gpu().clone();
    let _ng = crate::autograd::no_grad();
    let a = dot_all(g_mm, g_mm)?; // v1v1
    let b = dot_all(g_mm, g_uni)?; // v1v2
    let c = dot_all(g_uni, g_uni)?; // v2v2
    // cos > 0 ⟺ v1v2 > 0 (zero norms give cos 0: conflict branch, as torch's cosine_similarity)
    let conflict = ops::ge_scalar(&ops::neg(&b)?, 0.0)?;
    // MinNormSolver._min_norm_element_from2
    let case1 = ops::ge_scalar(&ops::sub(&b, &a)?, 0.0)?; // v1v2 >= v1v1: 0.999
    let not1 = ops::affine(&case1, -1.0, 1.0)?;
    let case2 = ops::mul(&not1, &ops::ge_scalar(&ops::sub(&b, &c)?, 0.0)?)?; // v1v2 >= v2v2: 0.001
    let interior_mask = ops::affine(&ops::add(&case1, &case2)?, -1.0, 1.0)?;
    let den = ops::sub(&ops::add(&a, &c)?, &ops::scale(&b, 2.0)?)?;
    let den = ops::maximum(&den, &crate::ops::full(&gpu, &[1], 1e-30)?)?;
    // interior solution (v2v2 − v1v2)/(v1v1 + v2v2 − 2·v1v2) lies in (0, 1); the clamp only
    // keeps the masked-out branches finite
    let interior = ops::clamp(&ops::div(&ops::sub(&c, &b)?, &den)?, 0.0, 1.0)?;
    let mgda = ops::add(&ops::add(&ops::scale(&case1, 0.999)?, &ops::scale(&case2, 0.001)?)?, &ops::mul(&interior_mask, &interior)?)?;
    // k = conflict ? mgda : 0.5
    let k = ops::add(&ops::mul(&conflict, &mgda)?, &ops::scale(&ops::affine(&conflict, -1.0, 1.0)?, 0.5)?)?;
    let k2 = ops::scale(&k, 2.0)?; // 2k
    let u2 = ops::affine(&k, -2.0, 2.0)?; // 2(1 − k)
    let tiny = crate::ops::full(&gpu, &[1], 1e-30)?;
    let mut grads = Vec::with_capacity(g_mm.len());
    for (gm, gu) in g_mm.iter().zip(g_uni) {
        let new = ops::add(&ops::mul(gm, &k2)?, &ops::mul(gu, &u2)?)?;
        let three = ops::add(gm, gu)?;
        let nn = ops::sqrt(&ops::sum_all(&ops::square(&new)?)?)?.reshape(&[1])?;
        let tn = ops::sqrt(&ops::sum_all(&ops::square(&three)?)?)?.reshape(&[1])?;
        // max(1, ‖three‖/‖new‖); a zero `new` stays zero (the official code gives NaN there)
        let s = ops::clamp(&ops::div(&tn, &ops::maximum(&nn, &tiny)?)?, 1.0, 1e30)?;
        grads.push(ops::mul(&new, &ops::scale(&s, gamma)?)?);
    }
    let denom = ops::maximum(&ops::sqrt(&ops::mul(&a, &c)?)?, &crate::ops::full(&gpu, &[1], 1e-8)?)?;
    let cos = ops::div(&b, &denom)?;
    let info = ops::concat(&[&cos, &k, &conflict], 0)?;
    Ok(Combined { grads, info })
}

/// MMPareto: the joint model plus unimodal heads; each encoder takes the MGDA-weighted,
/// rescaled combination of its multimodal and unimodal gradients.
pub struct MmPareto {
    encoders: Vec<Box<dyn Encoder>>,
    fusion: Fusion,
    heads: Vec<Linear>,
    names: Vec<String>,
    gamma: f32,
    acc: Accum,
    acc_steps: usize,
    m: usize,
}

impl MmPareto {
    /// Build the model for these modalities and `classes` outputs from `cfg`, drawing the initial
    /// weights from `rng`; errors name a bad config field.
    pub fn new(gpu: &Gpu, cfg: &MethodSetup, specs: &[ModalitySpec], classes: usize, rng: &mut StdRng) -> Result<MmPareto> {
        let encoders = build_encoders(gpu, cfg, specs, rng)?;
        let dims: Vec<usize> = encoders.iter().map(|e| e.out_dim()).collect();
        let fusion = Fusion::new(gpu, "fusion", cfg.method.fusion, &dims, classes, cfg.model.fusion_hidden, rng)?;
        let heads = specs
            .iter()
            .zip(&dims)
            .map(|(s, &d)| Linear::new(gpu, &format!("uni_head.{}", s.name), d, classes, true, rng))
            .collect::<Result<Vec<_>>>()?;
        let m = specs.len();
        Ok(MmPareto {
            encoders,
            fusion,
            heads,
            names: specs.iter().map(|s| s.name.clone()).collect(),
            gamma: cfg.method.mmpareto.gamma,
            acc: Accum::new(1 + 2 * m + 3 * m),
            acc_steps: 0,
            m,
        })
    }

    /// Replaces the multimodal gradients of encoder `i`'s parameters in `grads` by their
    /// MMPareto combination with the unimodal ones (`g_uni`; a parameter missing from one
    /// side counts as zero there); returns the combination's `[cos, k, conflict]` (zeros
    /// when the encoder has no gradient). Called under `no_grad`.
    fn pareto_grads(&self, i: usize, grads: &mut Gradients, g_uni: &Gradients, gpu: &Gpu) -> Result<Tensor> {
        let enc = self.encoders[i].params();
        let mut a = Vec::with_capacity(enc.len());
        let mut b = Vec::with_capacity(enc.len());
        let mut used = Vec::with_capacity(enc.len());
        for p in &enc {
            let gm = grads.get(&p.tensor).cloned();
            let gu = g_uni.get(&p.tensor).cloned();
            match (gm, gu) {
                (None, None) => continue,
                (gm, gu) => {
                    let z = || Tensor::zeros(gpu, p.tensor.shape());
                    a.push(match gm {
                        Some(g) => g,
                        None => z()?,
                    });
                    b.push(match gu {
                        Some(g) => g,
                        None => z()?,
                    });
                    used.push(p.tensor.clone());
                }
            }
        }
        if used.is_empty() {
            return Tensor::zeros(gpu, &[3]);
        }
        let comb = combine(&a, &b, self.gamma)?;
        for (t, g) in used.iter().zip(comb.grads) {
            grads.insert(t, g);
        }
        Ok(comb.info)
    }

    /// The step's statistics, kept on the GPU: the summed losses, the unimodal views and
    /// per modality the combination's cos, k and conflict.
    fn record_step(&mut self, batch: &DeviceBatch, loss_mm: &Tensor, uni_losses: &[Tensor], uni_logits: &[Tensor], infos: &[Tensor]) -> Result<()> {
        let _ng = crate::autograd::no_grad();
        let n = batch.n as f32;
        let mut total = loss_mm.detach().reshape(&[1])?;
        for l in uni_losses {
            total = ops::add(&total, &l.reshape(&[1])?)?;
        }
        let vs = super::view_stats(uni_logits, &batch.labels)?;
        let mut parts = vec![ops::scale(&total, n)?, vs];
        // per modality: cos, k, conflict (counts per step)
        for j in 0..3 {
            let col: Vec<Tensor> = infos.iter().map(|t| ops::narrow(t, 0, j, 1)).collect::<Result<_>>()?;
            let r: Vec<&Tensor> = col.iter().collect();
            parts.push(ops::concat(&r, 0)?);
        }
        let refs: Vec<&Tensor> = parts.iter().collect();
        self.acc.record(&refs, batch.n)?;
        self.acc_steps += 1;
        Ok(())
    }
}

impl Method for MmPareto {
    fn name(&self) -> &'static str {
        "mmpareto"
    }
    fn params(&self) -> Vec<Param> {
        let mut v: Vec<Param> = self.encoders.iter().flat_map(|e| e.params()).collect();
        v.extend(self.fusion.params());
        for h in &self.heads {
            v.extend(h.params());
        }
        v
    }
    fn buffers(&self) -> Vec<(String, Tensor)> {
        self.encoders.iter().flat_map(|e| e.buffers()).collect()
    }
    fn train_step(&mut self, batch: &DeviceBatch, opt: &mut dyn Optimizer, _epoch: usize) -> Result<()> {
        if batch.inputs.len() != self.m {
            return Err(Error::shape("model", format!("{} modalities in the batch, the model has {}", batch.inputs.len(), self.m)));
        }
        let gpu = batch.labels.gpu().clone();
        // multimodal loss: one forward that updates the batch-norm running statistics
        let ctx = Ctx::train();
        let feats: Vec<Tensor> = self.encoders.iter().zip(&batch.inputs).map(|(e, x)| e.forward(x, &ctx)).collect::<Result<_>>()?;
        let fused = self.fusion.forward(&feats, &ctx)?;
        let loss_mm = ops::cross_entropy(&fused, ops::Target::Hard(&batch.labels), None)?;
        let mut grads = loss_mm.backward()?;
        // unimodal losses: the autograd frees a graph after its backward, so each encoder runs
        // again, in training mode on the batch's own statistics without touching the running
        // ones (the same features as the first forward)
        let ctx2 = Ctx { training: true, update_stats: false, ..Default::default() };
        let mut uni_losses = Vec::with_capacity(self.m);
        let mut uni_logits = Vec::with_capacity(self.m);
        let mut infos = Vec::with_capacity(self.m);
        for i in 0..self.m {
            let f = self.encoders[i].forward(&batch.inputs[i], &ctx2)?;
            let logits = self.heads[i].forward(&f, &ctx2)?;
            let l = ops::cross_entropy(&logits, ops::Target::Hard(&batch.labels), None)?;
            let g_uni = l.backward()?;
            let _ng = crate::autograd::no_grad();
            infos.push(self.pareto_grads(i, &mut grads, &g_uni, &gpu)?);
            for p in self.heads[i].params() {
                if let Some(g) = g_uni.get(&p.tensor) {
                    grads.insert(&p.tensor, g.clone());
                }
            }
            uni_losses.push(l.detach());
            uni_logits.push(logits.detach());
        }
        opt.step(&grads)?;
        drop::<Gradients>(grads);
        self.record_step(batch, &loss_mm, &uni_losses, &uni_logits, &infos)
    }
    fn features(&self, inputs: &[Tensor]) -> Result<Vec<Option<Tensor>>> {
        super::eval_features(&self.encoders, inputs)
    }
    fn predict(&self, inputs: &[Tensor]) -> Result<Prediction> {
        let _ng = crate::autograd::no_grad();
        let ctx = Ctx::eval();
        let feats = super::encode_all(&self.encoders, inputs, &ctx)?;
        let fused = self.fusion.forward(&feats, &ctx)?;
        let per_modality = (0..self.m).map(|i| self.heads[i].forward(&feats[i], &ctx).map(Some)).collect::<Result<_>>()?;
        Ok(Prediction { fused, per_modality })
    }
    fn end_epoch(&mut self, _epoch: usize, _opt: &mut dyn Optimizer) -> Result<EpochStats> {
        let samples = self.acc.samples;
        let steps = self.acc_steps.max(1) as f64;
        self.acc_steps = 0;
        let sums = self.acc.take()?;
        let m = self.m;
        let mut st = stats_from_sums(&sums, m, samples);
        let base = 1 + 2 * m;
        let per = |off: usize| -> serde_json::Value {
            let mut o = serde_json::Map::new();
            for (i, name) in self.names.iter().enumerate() {
                o.insert(name.clone(), serde_json::json!(sums[off + i] / steps));
            }
            serde_json::Value::Object(o)
        };
        st.extra.push(("mmpareto".into(), serde_json::json!({ "cos": per(base), "k_multimodal": per(base + m), "conflict_share": per(base + 2 * m) })));
        Ok(st)
    }
}
