//! G-Blending, gradient blending (Wang, Tran, Feiszli, CVPR 2020: "What makes training
//! multi-modal classification networks hard?"), following the re-implementation in
//! GeWu-Lab/BalanceBenchmark (`balancemm/trainer/GBlending_trainer.py`; the authors released
//! no code); docs/methods/g_blending.md.
//!
//! The joint model is trained on a blend of losses: w_out·CE(fused) + Σ_m w_m·CE(view_m), the
//! views being the fusion head's unimodal views. Every `super_epoch` epochs (from epoch 0)
//! the weights are re-estimated: for each modality m (its inputs alone, the others zeroed)
//! and for the full input, a copy of the current model is trained for `super_epoch` epochs
//! with a fresh optimizer on the fused CE of that input; from the copy's mean training loss
//! during its first and last epoch and its mean validation loss after them,
//!   G = L_val(last) − L_val(first),  O = (L_val − L_train)(last) − (L_val − L_train)(first),
//!   w ∝ |G| / O²,
//! normalised to sum 1. The estimation reads back one loss per pass (never inside a step);
//! the weights are host numbers for `super_epoch` epochs, uploaded once, and method state.
use super::{encode_all, stats_from_sums, view_stats, Accum, DeviceBatch, EpochData, EpochStats, Joint, Method, Prediction};
use super::config::MethodSetup;
use crate::data::ModalitySpec;
use crate::error::{Error, Result};
use crate::gpu::Gpu;
use crate::nn::Ctx;
use crate::ops;
use crate::optim::{Optimizer, Param};
use crate::tensor::Tensor;
use rand::rngs::StdRng;
use rand::SeedableRng;
use serde::Deserialize;

/// `[method.g_blending]`; the defaults are BalanceBenchmark's (`configs/trainer_config.yaml`).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GBlendingConfig {
    /// Epochs between re-estimations, and the epochs each estimation trains its copies for
    /// (`super_epoch: 10`). `train.epochs` gives the paper's offline G-Blend (one estimate).
    pub super_epoch: usize,
}

impl Default for GBlendingConfig {
    fn default() -> Self {
        GBlendingConfig { super_epoch: 10 }
    }
}

impl GBlendingConfig {
    /// Check every value; errors name the field (`method.g_blending.<field>`).
    pub fn validate(&self) -> Result<()> {
        if self.super_epoch < 2 {
            return Err(Error::config("method.g_blending.super_epoch", format!("must be at least 2 (the estimate compares a copy's first and last epoch), got {}", self.super_epoch)));
        }
        if self.super_epoch > crate::limits::MAX_EPOCHS {
            return Err(Error::config("method.g_blending.super_epoch", format!("must be at most {}, got {}", crate::limits::MAX_EPOCHS, self.super_epoch)));
        }
        Ok(())
    }
}

/// Mean losses of one estimation run: training loss during the copy's first and last epoch,
/// validation loss after each.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub struct RunLosses {
    /// Mean training loss in the first epoch.
    pub train_first: f64,
    /// Validation loss after the first epoch.
    pub val_first: f64,
    /// Mean training loss in the last epoch.
    pub train_last: f64,
    /// Validation loss after the last epoch.
    pub val_last: f64,
}

/// The blending weights from each run's losses: w_k = |G_k| / O_k², normalised. `None` when
/// the estimate is degenerate (an O_k of 0, a non-finite loss, or every G_k 0).
pub fn blend_weights(runs: &[RunLosses]) -> Option<Vec<f64>> {
    let raw: Vec<f64> = runs
        .iter()
        .map(|r| {
            let g = r.val_last - r.val_first;
            let o = (r.val_last - r.train_last) - (r.val_first - r.train_first);
            g.abs() / (o * o)
        })
        .collect();
    let sum: f64 = raw.iter().sum();
    (sum.is_finite() && sum > 0.0).then(|| raw.iter().map(|w| w / sum).collect())
}

/// G-Blending: joint training on the fused and unimodal losses, blended with weights
/// w ∝ |G| / O² re-estimated every `super_epoch` epochs.
pub struct GBlending {
    joint: Joint,
    /// the model each estimation run trains, a copy of `joint` at its start
    shadow: Joint,
    cfg: GBlendingConfig,
    names: Vec<String>,
    /// [w_0 .. w_{M−1}, w_fused] (method state)
    weights: Vec<f64>,
    weights_dev: Tensor,
    /// what the last estimation measured, logged with the epoch it ran before
    estimate: Option<serde_json::Value>,
    acc: Accum,
    m: usize,
}

impl GBlending {
    /// Build the model for these modalities and `classes` outputs from `cfg`, drawing the initial
    /// weights from `rng`; errors name a bad config field.
    pub fn new(gpu: &Gpu, cfg: &MethodSetup, specs: &[ModalitySpec], classes: usize, rng: &mut StdRng) -> Result<GBlending> {
        let joint = Joint::new(gpu, cfg, specs, classes, rng)?;
        // its own generator: the main model's initialisation stays joint training's; the
        // copy's values are overwritten before every use
        let shadow = Joint::new(gpu, cfg, specs, classes, &mut StdRng::seed_from_u64(cfg.seed))?;
        let m = specs.len();
        let weights = vec![1.0 / (m + 1) as f64; m + 1];
        Ok(GBlending {
            weights_dev: upload(gpu, &weights)?,
            joint,
            shadow,
            cfg: cfg.method.g_blending.clone(),
            names: specs.iter().map(|s| s.name.clone()).collect(),
            weights,
            estimate: None,
            acc: Accum::new(1 + 2 * m),
            m,
        })
    }

    /// Copy the model (parameters and running statistics) into the shadow.
    fn copy_to_shadow(&self) -> Result<()> {
        for (d, s) in self.shadow.params().iter().zip(self.joint.params()) {
            d.tensor.assign(&s.tensor)?;
        }
        for ((_, d), (_, s)) in self.shadow.buffers().iter().zip(self.joint.buffers()) {
            d.assign(&s)?;
        }
        Ok(())
    }

    /// One estimation run: input `run` (a modality alone, or all for `run == M`).
    fn estimate_run(&mut self, run: usize, epoch: usize, data: &mut dyn EpochData) -> Result<RunLosses> {
        self.copy_to_shadow()?;
        let mut opt = data.optimizer(self.shadow.params())?;
        let s = self.cfg.super_epoch;
        let mut out = RunLosses { train_first: 0.0, val_first: 0.0, train_last: 0.0, val_last: 0.0 };
        for sub in 0..s {
            let pass = ((epoch * (self.m + 1) + run) * s + sub) as u64;
            let (shadow, m) = (&self.shadow, self.m);
            let mut acc = Accum::new(1);
            data.train_pass(pass, &mut |b| {
                let inputs = masked(&b.inputs, run, m)?;
                let ctx = Ctx::train();
                let fused = shadow.fusion.forward(&encode_all(&shadow.encoders, &inputs, &ctx)?, &ctx)?;
                let loss = ops::cross_entropy(&fused, ops::Target::Hard(&b.labels), None)?;
                opt.step(&loss.backward()?)?;
                acc.add(&ops::scale(&loss.detach(), b.n as f32)?)?;
                acc.samples += b.n;
                Ok(())
            })?;
            if sub == 0 || sub + 1 == s {
                let n = acc.samples.max(1) as f64;
                let train = acc.take()?[0] / n;
                let val = self.val_loss(run, data)?;
                if sub == 0 {
                    (out.train_first, out.val_first) = (train, val);
                } else {
                    (out.train_last, out.val_last) = (train, val);
                }
            }
        }
        Ok(out)
    }

    /// The shadow's mean fused CE on the validation split with input `run` (eval mode).
    fn val_loss(&self, run: usize, data: &mut dyn EpochData) -> Result<f64> {
        let mut acc = Accum::new(1);
        let (shadow, m) = (&self.shadow, self.m);
        data.val_pass(&mut |b| {
            let _ng = crate::autograd::no_grad();
            let inputs = masked(&b.inputs, run, m)?;
            let fused = shadow.fusion.forward(&encode_all(&shadow.encoders, &inputs, &Ctx::eval())?, &Ctx::eval())?;
            acc.add(&ops::scale(&ops::cross_entropy(&fused, ops::Target::Hard(&b.labels), None)?, b.n as f32)?)?;
            acc.samples += b.n;
            Ok(())
        })?;
        let n = acc.samples.max(1) as f64;
        Ok(acc.take()?[0] / n)
    }

    fn label(&self, k: usize) -> String {
        self.names.get(k).cloned().unwrap_or_else(|| "fused".into())
    }

    fn named(&self, v: &[f64]) -> serde_json::Value {
        serde_json::Value::Object((0..v.len()).map(|k| (self.label(k), serde_json::json!(v[k]))).collect())
    }
}

fn upload(gpu: &Gpu, w: &[f64]) -> Result<Tensor> {
    Tensor::from_slice(gpu, &w.iter().map(|v| *v as f32).collect::<Vec<_>>(), &[w.len()])
}

/// The inputs with every modality but `keep` replaced by zeros (`keep >= M`: all kept).
fn masked(inputs: &[Tensor], keep: usize, m: usize) -> Result<Vec<Tensor>> {
    inputs
        .iter()
        .enumerate()
        .map(|(i, x)| if keep >= m || i == keep { Ok(x.clone()) } else { Tensor::zeros(x.gpu(), x.shape()) })
        .collect()
}

impl Method for GBlending {
    fn name(&self) -> &'static str {
        "g_blending"
    }
    fn params(&self) -> Vec<Param> {
        self.joint.params()
    }
    fn buffers(&self) -> Vec<(String, Tensor)> {
        self.joint.buffers()
    }
    fn before_epoch(&mut self, epoch: usize, data: &mut dyn EpochData) -> Result<()> {
        if epoch % self.cfg.super_epoch != 0 {
            return Ok(());
        }
        let runs = (0..=self.m).map(|r| self.estimate_run(r, epoch, data)).collect::<Result<Vec<_>>>()?;
        let new = blend_weights(&runs);
        if let Some(w) = &new {
            self.weights = w.clone();
            self.weights_dev.assign(&upload(self.weights_dev.gpu(), w)?)?;
        }
        let per: serde_json::Map<String, serde_json::Value> = runs.iter().enumerate().map(|(k, r)| (self.label(k), serde_json::json!(r))).collect();
        self.estimate = Some(serde_json::json!({ "runs": per, "degenerate": new.is_none() }));
        Ok(())
    }
    fn train_step(&mut self, batch: &DeviceBatch, opt: &mut dyn Optimizer, _epoch: usize) -> Result<()> {
        let ctx = Ctx::train();
        let feats = encode_all(&self.joint.encoders, &batch.inputs, &ctx)?;
        let fused = self.joint.fusion.forward(&feats, &ctx)?;
        let views = (0..self.m).map(|i| self.joint.fusion.unimodal(i, &feats[i], &ctx)).collect::<Result<Vec<_>>>()?;
        let ces = views.iter().chain(std::iter::once(&fused)).map(|l| ops::cross_entropy(l, ops::Target::Hard(&batch.labels), None)?.reshape(&[1])).collect::<Result<Vec<_>>>()?;
        let refs: Vec<&Tensor> = ces.iter().collect();
        let loss = ops::sum_all(&ops::mul(&ops::concat(&refs, 0)?, &self.weights_dev)?)?;
        opt.step(&loss.backward()?)?;
        let _ng = crate::autograd::no_grad();
        let detached: Vec<Tensor> = views.iter().map(Tensor::detach).collect();
        let total = ops::scale(&loss.detach(), batch.n as f32)?;
        self.acc.record(&[&total, &view_stats(&detached, &batch.labels)?], batch.n)?;
        Ok(())
    }
    fn predict(&self, inputs: &[Tensor]) -> Result<Prediction> {
        self.joint.predict(inputs)
    }
    fn features(&self, inputs: &[Tensor]) -> Result<Vec<Option<Tensor>>> {
        self.joint.features(inputs)
    }
    fn end_epoch(&mut self, _epoch: usize, _opt: &mut dyn Optimizer) -> Result<EpochStats> {
        let samples = self.acc.samples;
        let sums = self.acc.take()?;
        let mut st = stats_from_sums(&sums, self.m, samples);
        let mut log = serde_json::json!({ "weights": self.named(&self.weights) });
        if let Some(e) = self.estimate.take() {
            log["estimate"] = e;
        }
        st.extra.push(("g_blending".into(), log));
        Ok(st)
    }
    fn state(&self) -> serde_json::Value {
        serde_json::json!({ "weights": self.weights })
    }
    fn restore(&mut self, state: &serde_json::Value, _opt: &mut dyn Optimizer) -> Result<()> {
        let Some(w) = state.get("weights").and_then(|v| v.as_array()) else { return Ok(()) };
        let w: Vec<f64> = w.iter().filter_map(|v| v.as_f64()).collect();
        if w.len() != self.m + 1 {
            return Err(Error::data("checkpoint", format!("g_blending state has {} weights, the model needs {}", w.len(), self.m + 1)));
        }
        self.weights_dev.assign(&upload(self.weights_dev.gpu(), &w)?)?;
        self.weights = w;
        Ok(())
    }
}
