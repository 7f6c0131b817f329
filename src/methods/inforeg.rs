//! InfoReg, Information Acquisition Regulation (Huang et al., CVPR 2025), following the
//! official `main.py` (GeWu-Lab/InfoReg_CVPR2025, `train_epoch`); docs/methods/inforeg.md.
//!
//! The joint model (encoders + fusion head) is trained on CE(fused) + Σ_m CE(view_m), the
//! views being the fusion head's unimodal views. Per epoch, the trace of each modality's
//! (diagonal, empirical) Fisher information is accumulated: Σ over steps and over its encoder's
//! weight matrices of mean(g²). Before each epoch the relative growth of the information-
//! sufficient modality's trace, k = (T̄ₑ − T̄ₑ₋₁) / T̄ₑ over moving means of the last `window`
//! epochs, decides whether training is in the prime learning window (k > threshold). Inside
//! it, the modality with the highest confidence score s_m = Σ_n softmax(view_m)_{y_n} is
//! regulated by a proximal term towards its parameters at the start of the epoch:
//! g ← g + β_m·(θ − θ₀), β_m = c_m·exp(tanh(s_m − max_{j≠m} s_j)).
//!
//! Everything per step stays on the GPU (scores, β, the traces); the traces are read back once
//! per epoch and the window is decided on the host before the next epoch.
use super::{stats_from_sums, view_stats, Accum, DeviceBatch, EpochStats, Joint, Method, Prediction};
use super::config::MethodSetup;
use crate::data::ModalitySpec;
use crate::error::{Error, Result};
use crate::gpu::Gpu;
use crate::nn::Ctx;
use crate::ops;
use crate::optim::{Optimizer, Param};
use crate::tensor::Tensor;
use rand::rngs::StdRng;

// ---- configuration (`[method.inforeg]`) ----

/// InfoReg (Huang et al., CVPR 2025); see docs/methods/inforeg.md. Defaults are the official
/// code's (CREMA-D, where audio is the information-sufficient modality).
#[derive(Clone, Debug, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct InforegConfig {
    /// The information-sufficient modality: its trace decides the prime learning window and
    /// it gets `beta_sufficient` (the official code hard-wires audio).
    pub sufficient: String,
    /// c_m of the sufficient modality (`beta = 0.95 * exp(gap)`, main.py l. 468).
    pub beta_sufficient: f32,
    /// c_m of every other modality (`beta2 = 0.1 * exp(gap)`, l. 476).
    pub beta_other: f32,
    /// The window is open while k > threshold (`k > 0.05`, l. 465).
    pub threshold: f64,
    /// Epochs in the moving mean of the trace (`audio_trace_list[-10:]`, l. 240).
    pub window: usize,
}

impl Default for InforegConfig {
    fn default() -> Self {
        InforegConfig { sufficient: "audio".into(), beta_sufficient: 0.95, beta_other: 0.1, threshold: 0.05, window: 10 }
    }
}

impl InforegConfig {
    /// Check every value; errors name the field (`method.inforeg.<field>`).
    pub fn validate(&self) -> Result<()> {
        let f = |n: &str| format!("method.inforeg.{n}");
        for (name, v) in [("beta_sufficient", self.beta_sufficient), ("beta_other", self.beta_other)] {
            if !(v.is_finite() && v >= 0.0) {
                return Err(Error::config(f(name), format!("must be >= 0, got {v}")));
            }
        }
        if !self.threshold.is_finite() {
            return Err(Error::config(f("threshold"), format!("must be finite, got {}", self.threshold)));
        }
        if self.window == 0 {
            return Err(Error::config(f("window"), "must be at least 1"));
        }
        Ok(())
    }
}

/// The window statistic k before the epoch that follows `traces` (one trace per finished
/// epoch), as the official code computes it: the trace history is preceded by `window` zeros
/// (`audio_trace_list = [0]*10`), k = (mean of the last `window` − mean of the `window` before
/// the last one) / mean of the last `window`; 1 before the first epoch. A zero mean (no
/// gradient at all; a division by zero in the official code) gives 0: the window is closed.
pub fn window_k(traces: &[f64], window: usize) -> f64 {
    if traces.is_empty() {
        return 1.0;
    }
    let mut padded = vec![0.0; window];
    padded.extend_from_slice(traces);
    let n = padded.len();
    let w = window as f64;
    let tr1: f64 = padded[n - window..].iter().sum::<f64>() / w;
    let tr2: f64 = padded[n - window - 1..n - 1].iter().sum::<f64>() / w;
    if tr1 == 0.0 {
        return 0.0;
    }
    (tr1 - tr2) / tr1
}

/// The regulation strengths β `[M]` of one step from the confidence scores `s` `[M]` and the
/// per-modality factors `c`: β_m = c_m·exp(tanh(s_m − max_{j≠m} s_j)) for the modality whose
/// score is strictly the highest, 0 for the others (and for all on a tie, the official
/// `else: beta = beta2 = 0`). No gradient.
pub fn betas(scores: &Tensor, c: &[f32]) -> Result<Tensor> {
    let m = scores.numel();
    if m < 2 || c.len() != m {
        return Err(Error::shape("inforeg.betas", format!("{m} scores and {} factors (needs at least 2 of each, as many)", c.len())));
    }
    let _ng = crate::autograd::no_grad();
    let mut out = Vec::with_capacity(m);
    for i in 0..m {
        let others: Vec<Tensor> = (0..m).filter(|&j| j != i).map(|j| ops::narrow(scores, 0, j, 1)).collect::<Result<_>>()?;
        let refs: Vec<&Tensor> = others.iter().collect();
        let best_other = ops::max(&ops::concat(&refs, 0)?, &[0], true)?;
        let gap = ops::sub(&ops::narrow(scores, 0, i, 1)?, &best_other)?;
        // strictly ahead: 1 − [best_other − s_i ≥ 0]
        let ahead = ops::affine(&ops::ge_scalar(&ops::neg(&gap)?, 0.0)?, -1.0, 1.0)?;
        out.push(ops::scale(&ops::mul(&ahead, &ops::exp(&ops::tanh(&gap)?)?)?, c[i])?);
    }
    let refs: Vec<&Tensor> = out.iter().collect();
    ops::concat(&refs, 0)
}

/// Whether a parameter counts for the information trace: the weights of convolution and
/// linear layers (the official `isinstance(module, (nn.Conv2d, nn.Linear))`, `module.weight`),
/// i.e. weights of two or more dimensions; norm parameters and biases do not.
pub fn traced(p: &Param) -> bool {
    p.name.ends_with(".weight") && p.tensor.dims() >= 2
}

/// InfoReg: joint training with unimodal losses; inside the prime learning window the most
/// confident modality is pulled towards its parameters at the start of the epoch.
pub struct InfoReg {
    joint: Joint,
    cfg: InforegConfig,
    names: Vec<String>,
    /// index of the information-sufficient modality
    sufficient: usize,
    /// c_m per modality
    factors: Vec<f32>,
    /// per finished epoch, each modality's trace (checkpointed as method state)
    traces: Vec<Vec<f64>>,
    /// this epoch: window open, and k of each modality (for the log)
    open: bool,
    k: Vec<f64>,
    /// encoder parameters at the start of the epoch (θ₀), per modality; only while open
    anchor: Vec<Vec<Tensor>>,
    acc: Accum,
    steps: usize,
    m: usize,
}

impl InfoReg {
    /// Build the model for these modalities and `classes` outputs from `cfg`, drawing the initial
    /// weights from `rng`; errors name a bad config field.
    pub fn new(gpu: &Gpu, cfg: &MethodSetup, specs: &[ModalitySpec], classes: usize, rng: &mut StdRng) -> Result<InfoReg> {
        let joint = Joint::new(gpu, cfg, specs, classes, rng)?;
        let ic = cfg.method.inforeg.clone();
        let names: Vec<String> = specs.iter().map(|s| s.name.clone()).collect();
        let sufficient = names.iter().position(|n| *n == ic.sufficient).ok_or_else(|| {
            Error::config("method.inforeg.sufficient", format!("no modality {:?}; the data has {names:?}", ic.sufficient))
        })?;
        let m = specs.len();
        let factors = (0..m).map(|i| if i == sufficient { ic.beta_sufficient } else { ic.beta_other }).collect();
        Ok(InfoReg {
            joint,
            cfg: ic,
            names,
            sufficient,
            factors,
            traces: Vec::new(),
            open: false,
            k: vec![0.0; m],
            anchor: Vec::new(),
            // loss, view CE × M, view score × M, trace × M, β × M
            acc: Accum::new(1 + 4 * m),
            steps: 0,
            m,
        })
    }

    /// Each modality's trace history, one value per finished epoch.
    fn history(&self, i: usize) -> Vec<f64> {
        self.traces.iter().map(|t| t[i]).collect()
    }

    /// Whether this epoch's steps regulate (decided in `begin_epoch`).
    pub fn window_open(&self) -> bool {
        self.open
    }

    /// Add β_m·(θ − θ₀) to the gradients of modality m's encoder parameters and return the
    /// step's traces `[M]` (Σ over traced weights of mean(g²), after the regulation, as the
    /// official code accumulates them).
    fn regulate(&self, grads: &mut crate::Gradients, beta: Option<&Tensor>, gpu: &Gpu) -> Result<Tensor> {
        let _ng = crate::autograd::no_grad();
        let mut traces = Vec::with_capacity(self.m);
        for i in 0..self.m {
            let params = self.joint.encoder_params(i);
            let b_i = beta.map(|b| ops::narrow(b, 0, i, 1)).transpose()?;
            let mut tr = Tensor::zeros(gpu, &[1])?;
            for (j, p) in params.iter().enumerate() {
                let Some(g) = grads.get(&p.tensor).cloned() else { continue };
                let g = match &b_i {
                    Some(b) => {
                        let pull = ops::mul(&ops::sub(&p.tensor.detach(), &self.anchor[i][j])?, b)?;
                        let g2 = ops::add(&g, &pull)?;
                        grads.insert(&p.tensor, g2.clone());
                        g2
                    }
                    None => g,
                };
                if traced(p) {
                    tr = ops::add(&tr, &ops::mean_all(&ops::square(&g)?)?)?;
                }
            }
            traces.push(tr);
        }
        let refs: Vec<&Tensor> = traces.iter().collect();
        ops::concat(&refs, 0)
    }
}

impl Method for InfoReg {
    fn name(&self) -> &'static str {
        "inforeg"
    }
    fn params(&self) -> Vec<Param> {
        self.joint.params()
    }
    fn buffers(&self) -> Vec<(String, Tensor)> {
        self.joint.buffers()
    }
    fn begin_epoch(&mut self, _epoch: usize) -> Result<()> {
        self.k = (0..self.m).map(|i| window_k(&self.history(i), self.cfg.window)).collect();
        self.open = self.k[self.sufficient] > self.cfg.threshold;
        // θ₀: the parameters the epoch starts from (`global_model = cp.deepcopy(model)`)
        self.anchor = if self.open {
            (0..self.m).map(|i| self.joint.encoder_params(i).iter().map(|p| p.tensor.deep_copy()).collect::<Result<Vec<_>>>()).collect::<Result<_>>()?
        } else {
            Vec::new()
        };
        Ok(())
    }
    fn train_step(&mut self, batch: &DeviceBatch, opt: &mut dyn Optimizer, _epoch: usize) -> Result<()> {
        if batch.inputs.len() != self.m {
            return Err(Error::shape("model", format!("{} modalities in the batch, the model has {}", batch.inputs.len(), self.m)));
        }
        let gpu = batch.labels.gpu().clone();
        let ctx = Ctx::train();
        let j = &self.joint;
        let feats = super::encode_all(&j.encoders, &batch.inputs, &ctx)?;
        let fused = j.fusion.forward(&feats, &ctx)?;
        let views = (0..self.m).map(|i| j.fusion.unimodal(i, &feats[i], &ctx)).collect::<Result<Vec<_>>>()?;
        let target = ops::Target::Hard(&batch.labels);
        let mut loss = ops::cross_entropy(&fused, target, None)?;
        for v in &views {
            loss = ops::add(&loss, &ops::cross_entropy(v, ops::Target::Hard(&batch.labels), None)?)?;
        }
        let mut grads = loss.backward()?;
        let vs = view_stats(&views, &batch.labels)?;
        let scores = ops::narrow(&vs, 0, self.m, self.m)?;
        let beta = if self.open { Some(betas(&scores, &self.factors)?) } else { None };
        let traces = self.regulate(&mut grads, beta.as_ref(), &gpu)?;
        opt.step(&grads)?;
        let _ng = crate::autograd::no_grad();
        let beta = match beta {
            Some(b) => b,
            None => Tensor::zeros(&gpu, &[self.m])?,
        };
        let total = ops::scale(&loss.detach(), batch.n as f32)?.reshape(&[1])?;
        self.acc.record(&[&total, &vs, &traces, &beta], batch.n)?;
        self.steps += 1;
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
        let steps = self.steps.max(1) as f64;
        self.steps = 0;
        let sums = self.acc.take()?;
        let m = self.m;
        let mut st = stats_from_sums(&sums, m, samples);
        let base = 1 + 2 * m;
        self.traces.push(sums[base..base + m].to_vec());
        let per = |vals: &[f64]| super::per_modality_json(&self.names, vals);
        let beta: Vec<f64> = sums[base + m..base + 2 * m].iter().map(|v| v / steps).collect();
        st.extra.push((
            "inforeg".into(),
            serde_json::json!({
                "window_open": self.open,
                "k": per(&self.k),
                "trace": per(&sums[base..base + m]),
                "beta": per(&beta),
            }),
        ));
        Ok(st)
    }
    fn state(&self) -> serde_json::Value {
        serde_json::json!({ "traces": self.traces })
    }
    fn restore(&mut self, state: &serde_json::Value, _opt: &mut dyn Optimizer) -> Result<()> {
        let Some(list) = state.get("traces") else { return Ok(()) };
        let traces: Vec<Vec<f64>> = serde_json::from_value(list.clone()).map_err(|e| Error::config("checkpoint method_state.traces", e.to_string()))?;
        if let Some(bad) = traces.iter().find(|t| t.len() != self.m) {
            return Err(Error::config("checkpoint method_state.traces", format!("{} traces per epoch, the model has {} modalities", bad.len(), self.m)));
        }
        self.traces = traces;
        Ok(())
    }
}
