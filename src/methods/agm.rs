//! AGM, adaptive gradient modulation (Li et al., ICCV 2023), following the official
//! `run/CREMAD_main.py` and `model/CREMAD_net.py` (lihong2303/AGM_ICCV2023);
//! docs/methods/agm.md.
//!
//! The model is the joint one, trained on the fused CE. Every step also computes each
//! modality's Shapley-style output φ_m (the fused logits with the other modalities' inputs
//! replaced by zeros, combined with Shapley weights, v(∅) = 0), its mono-modal score
//! s_m = mean_n −log(max(softmax(φ_m)_y, 1e-8)), and from the scores the coefficient
//!   r_m = exp(M/(M−1)·(s̄ − s_m)),  η_m = exp(M/(M−1)·(T̄ − T_m)),
//!   k_m = exp(α·min(η_m − r_m, cap))
//! where T is the running mean of s over every step so far. Inside the modulation window the
//! loss is taken on Σ_m φ_m (= the fused logits) and the gradient reaching φ_m is multiplied
//! by k_m, as the official backward hooks do: the subset logits v(S) are computed with
//! gradient and each receives its share of the scaled gradients ([`subset_seeds`]), so every
//! parameter (encoders and fusion head, any fusion) is modulated through the outputs it
//! produces. Then, when a fusion-head weight gradient leaves [−clip, clip], all gradients
//! are clipped to a global norm of `clip`.
//!
//! Everything stays on the GPU: the subset logits, scores, coefficients, the running mean
//! (a checkpointed buffer) and the clipping decision are tensors; `end_epoch` reads back once.
use super::{encode_all, stats_from_sums, view_stats, Accum, DeviceBatch, EpochStats, Joint, Method, Prediction};
use crate::autograd::Gradients;
use super::config::MethodSetup;
use crate::data::ModalitySpec;
use crate::error::{Error, Result};
use crate::gpu::Gpu;
use crate::nn::{Ctx, Module};
use crate::ops;
use crate::optim::{Optimizer, Param};
use crate::tensor::Tensor;
use rand::rngs::StdRng;
use serde::Deserialize;

/// Most modalities: every step evaluates the fusion head on all 2^M input subsets.
pub const MAX_MODALITIES: usize = 8;

/// Floor of the true-class probability in the score (the official `1e-8` guard).
pub const PROB_FLOOR: f32 = 1e-8;

/// `[method.agm]`; the defaults are the official code's (`utils/config.py`,
/// `run/CREMAD_main.py`).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AgmConfig {
    /// Modulation strength α (`--alpha`, 1.0; the README's AV-MNIST run uses 2.5).
    pub alpha: f32,
    /// Modulation acts for epochs in [start_epoch, end_epoch], counted from 0. The official
    /// window `--modulation_starts 0 --modulation_ends 20` over epochs counted from 1 covers
    /// its first 20 epochs: 0..=19 here.
    pub start_epoch: usize,
    /// Last modulated epoch, inclusive.
    pub end_epoch: usize,
    /// Upper bound of η − r inside the exponential (`min(..., 10)` in CREMAD_main.py).
    pub cap: f32,
    /// Clip all gradients to this global norm when a fusion-head weight gradient leaves
    /// [−clip, clip] (the official 1.0); 0 turns it off.
    pub clip: f32,
}

impl Default for AgmConfig {
    fn default() -> Self {
        AgmConfig { alpha: 1.0, start_epoch: 0, end_epoch: 19, cap: 10.0, clip: 1.0 }
    }
}

impl AgmConfig {
    /// Check every value; errors name the field (`method.agm.<field>`).
    pub fn validate(&self) -> Result<()> {
        let f = |n: &str| format!("method.agm.{n}");
        for (n, v) in [("alpha", self.alpha), ("clip", self.clip)] {
            if !(v.is_finite() && v >= 0.0) {
                return Err(Error::config(f(n), format!("must be >= 0, got {v}")));
            }
        }
        if !self.cap.is_finite() {
            return Err(Error::config(f("cap"), format!("must be finite, got {}", self.cap)));
        }
        if self.start_epoch > self.end_epoch {
            return Err(Error::config(f("start_epoch"), format!("must be <= method.agm.end_epoch ({}), got {}", self.end_epoch, self.start_epoch)));
        }
        Ok(())
    }
}

/// Shapley weight |S|!·(M − |S| − 1)!/M! of a coalition of `size` others.
pub fn shapley_weight(size: usize, m: usize) -> f64 {
    let fact = |n: usize| (1..=n).map(|x| x as f64).product::<f64>();
    fact(size) * fact(m - size - 1) / fact(m)
}

/// Each modality's Shapley output `[N, K]` from the logits of every input subset
/// (`values[s]`: bit i of s set = modality i present; `values[0]` is ignored, v(∅) = 0 as in
/// the official `Modality_Audio` / `Modality_Visual`).
pub fn shapley_outputs(values: &[Tensor], m: usize) -> Result<Vec<Tensor>> {
    if values.len() != 1 << m || m < 2 {
        return Err(Error::shape("agm.shapley_outputs", format!("{} subset logits for {m} modalities, expected {}", values.len(), 1usize << m)));
    }
    (0..m)
        .map(|p| {
            let mut acc: Option<Tensor> = None;
            for s in (0..1usize << m).filter(|s| s >> p & 1 == 0) {
                let w = shapley_weight(s.count_ones() as usize, m) as f32;
                let with = &values[s | 1 << p];
                let term = if s == 0 { ops::scale(with, w)? } else { ops::lerp(with, &values[s], w, -w)? };
                acc = Some(match acc {
                    Some(a) => ops::add(&a, &term)?,
                    None => term,
                });
            }
            Ok(acc.expect("at least one coalition"))
        })
        .collect()
}

/// Mono-modal scores `[M]`: s_m = mean_n −log(max(softmax(φ_m)_{y_n}, 1e-8)).
pub fn scores(outputs: &[Tensor], labels: &Tensor) -> Result<Tensor> {
    let parts = outputs
        .iter()
        .map(|o| {
            let p = ops::clamp(&ops::true_class_prob(o, labels)?, PROB_FLOOR, f32::MAX)?;
            ops::neg(&ops::mean_all(&ops::log(&p)?)?)
        })
        .collect::<Result<Vec<_>>>()?;
    let refs: Vec<&Tensor> = parts.iter().collect();
    ops::concat(&refs, 0)
}

/// exp(M/(M−1)·(mean(x) − x)) for `x` `[M]`: the official ratio of each modality (for two,
/// r_a = exp(s_v − s_a)).
fn relative(x: &Tensor) -> Result<Tensor> {
    let m = x.numel();
    let c = m as f32 / (m - 1) as f32;
    let mean = ops::mean_all(x)?;
    ops::exp(&ops::scale(&ops::sub(&mean, x)?, c)?)
}

/// The coefficients k `[M]` from this step's scores and the running mean of earlier ones:
/// k_m = exp(α·min(η_m − r_m, cap)).
pub fn coefficients(scores: &Tensor, running: &Tensor, alpha: f32, cap: f32) -> Result<Tensor> {
    let d = ops::sub(&relative(running)?, &relative(scores)?)?;
    ops::exp(&ops::scale(&ops::clamp(&d, f32::MIN, cap)?, alpha)?)
}

/// The seed matrix `[2^M, M]` (row s: subset s, bit i = modality i present): the gradient
/// g reaching φ_m as k_m·g reaches v(S) as Σ_m A\[S\]\[m\]·k_m·g, with A\[S\]\[m\] = w(|S| − 1) for
/// m ∈ S and −w(|S|) otherwise (w = [`shapley_weight`]); row 0 (v(∅) = 0) is unused. With
/// every k_m = 1 the full set gets 1 and every other subset 0: joint training's gradient.
pub fn subset_seeds(m: usize) -> Vec<f64> {
    let mut a = vec![0.0; (1 << m) * m];
    for s in 1..1usize << m {
        let size = s.count_ones() as usize;
        for i in 0..m {
            a[s * m + i] = if s >> i & 1 == 1 { shapley_weight(size - 1, m) } else { -shapley_weight(size, m) };
        }
    }
    a
}

fn identity(k: usize) -> Vec<f32> {
    let mut eye = vec![0.0f32; k * k];
    for i in 0..k {
        eye[i * k + i] = 1.0;
    }
    eye
}

/// AGM: joint training in which the gradient reaching each modality's Shapley-style output
/// is scaled by its score-based coefficient k_m.
pub struct Agm {
    joint: Joint,
    cfg: AgmConfig,
    names: Vec<String>,
    /// running mean T of the scores over all steps so far, `[M]` (a checkpointed buffer)
    running: Tensor,
    /// the coefficients of the last modulated step, `[M]` (ones before the first; a
    /// checkpointed buffer): after `end_epoch` the official hooks keep scaling by them
    frozen: Tensor,
    /// steps taken over the whole run (the official `iteration − 1`)
    steps: u64,
    acc: Accum,
    m: usize,
}

impl Agm {
    /// Build the model for these modalities and `classes` outputs from `cfg`, drawing the initial
    /// weights from `rng`; errors name a bad config field. At most `MAX_MODALITIES`
    /// modalities (every subset is evaluated each step).
    pub fn new(gpu: &Gpu, cfg: &MethodSetup, specs: &[ModalitySpec], classes: usize, rng: &mut StdRng) -> Result<Agm> {
        let m = specs.len();
        if m > MAX_MODALITIES {
            return Err(Error::config("data.modalities", format!("AGM evaluates all 2^M input subsets every step; at most {MAX_MODALITIES} modalities, the data has {m}")));
        }
        let joint = Joint::new(gpu, cfg, specs, classes, rng)?;
        Ok(Agm {
            joint,
            cfg: cfg.method.agm.clone(),
            names: specs.iter().map(|s| s.name.clone()).collect(),
            running: Tensor::zeros(gpu, &[m])?,
            frozen: Tensor::from_slice(gpu, &vec![1.0; m], &[m])?,
            steps: 0,
            acc: Accum::new(1 + 2 * m + 2 * m),
            m,
        })
    }

    fn active(&self, epoch: usize) -> bool {
        self.cfg.start_epoch <= epoch && epoch <= self.cfg.end_epoch
    }

    /// After the window the official hooks stay registered with the last step's scales
    /// (`update_scale` is only called inside it, `CREMAD_main.py` l. 159–166), so the
    /// backward stays modulated by [`Agm::frozen`].
    fn after(&self, epoch: usize) -> bool {
        epoch > self.cfg.end_epoch
    }

    /// Fused logits of every input subset (bit i: modality i present, absent ones' inputs
    /// zeroed; `[0]` is unused), the proper subsets in eval mode as the official padded
    /// forwards, the full set the training forward's `fused`. With `grad` the subsets keep
    /// their graphs (the official computes them with gradient).
    fn subset_logits(&self, inputs: &[Tensor], fused: &Tensor, grad: bool) -> Result<Vec<Tensor>> {
        let gpu = fused.gpu().clone();
        let _ng = (!grad).then(crate::autograd::no_grad);
        let zeros = inputs.iter().map(|x| Tensor::zeros(x.gpu(), x.shape())).collect::<Result<Vec<_>>>()?;
        let full = (1usize << self.m) - 1;
        (0..=full)
            .map(|s| match s {
                0 => Tensor::zeros(&gpu, fused.shape()),
                _ if s == full => Ok(fused.clone()),
                _ => {
                    let x: Vec<Tensor> = (0..self.m).map(|i| if s >> i & 1 == 1 { inputs[i].clone() } else { zeros[i].clone() }).collect();
                    self.joint.fusion.forward(&encode_all(&self.joint.encoders, &x, &Ctx::eval())?, &Ctx::eval())
                }
            })
            .collect()
    }

    /// The official backward: the gradient g = ∂CE/∂logits reaches each φ_m scaled by k_m
    /// (`hooka`/`hookv`), so each subset's logits v(S) receive c_S·g with
    /// c = [`subset_seeds`]·k; `values` are [`Agm::subset_logits`] with graphs.
    fn modulated_backward(&self, values: &[Tensor], fused: &Tensor, labels: &Tensor, k: &Tensor) -> Result<Gradients> {
        let gpu = labels.gpu().clone();
        let (n, classes) = (fused.dim(0), fused.dim(1));
        let g = {
            let _ng = crate::autograd::no_grad();
            let eye = Tensor::from_slice(&gpu, &identity(classes), &[classes, classes])?;
            let diff = ops::sub(&ops::softmax(&fused.detach())?, &ops::embedding(labels, &eye)?)?;
            ops::scale(&diff, 1.0 / n as f32)?
        };
        let seeds = {
            let _ng = crate::autograd::no_grad();
            let a = subset_seeds(self.m);
            let a = Tensor::from_slice(&gpu, &a.iter().map(|v| *v as f32).collect::<Vec<_>>(), &[1 << self.m, self.m])?;
            ops::matmul(&a, &k.reshape(&[self.m, 1])?)?.reshape(&[1 << self.m])?
        };
        let mut grads = Gradients::new();
        for (s, v) in values.iter().enumerate().skip(1) {
            let seed = {
                let _ng = crate::autograd::no_grad();
                ops::mul(&g, &ops::narrow(&seeds, 0, s, 1)?)?
            };
            v.backward_with(seed, &mut grads)?;
        }
        Ok(grads)
    }

    /// The official conditional clipping: when max |g| over the fusion head's weights
    /// exceeds `clip`, every gradient is clipped to global norm `clip` (decided on the GPU).
    fn clip(&self, grads: Gradients) -> Result<Gradients> {
        let c = self.cfg.clip;
        if c == 0.0 {
            return Ok(grads);
        }
        let params = self.params();
        let mut peak: Option<Tensor> = None;
        for p in self.joint.fusion.params().iter().filter(|p| p.tensor.dims() == 2) {
            let Some(g) = grads.get(&p.tensor) else { continue };
            let a = ops::max(&ops::abs(g)?.reshape(&[g.numel()])?, &[0], false)?.reshape(&[1])?;
            peak = Some(match peak {
                Some(x) => ops::maximum(&x, &a)?,
                None => a,
            });
        }
        let Some(peak) = peak else { return Ok(grads) };
        // 1 where peak > clip (the official strict `grad_max > 1 or grad_min < -1`)
        let over = ops::affine(&ops::ge_scalar(&ops::sub(&ops::full(peak.gpu(), &[1], c)?, &peak)?, 0.0)?, -1.0, 1.0)?;
        let clipped = crate::optim::clip_grad_norm(&params, &grads, c)?;
        let mut out = grads;
        for p in &params {
            let (Some(g), Some(cg)) = (out.get(&p.tensor).cloned(), clipped.get(&p.tensor)) else { continue };
            out.insert(&p.tensor, ops::add(&g, &ops::mul(&ops::sub(cg, &g)?, &over)?)?);
        }
        Ok(out)
    }
}

impl Method for Agm {
    fn name(&self) -> &'static str {
        "agm"
    }
    fn params(&self) -> Vec<Param> {
        self.joint.params()
    }
    fn buffers(&self) -> Vec<(String, Tensor)> {
        let mut v = self.joint.buffers();
        v.push(("agm.running_score".into(), self.running.clone()));
        v.push(("agm.frozen_coef".into(), self.frozen.clone()));
        v
    }
    fn train_step(&mut self, batch: &DeviceBatch, opt: &mut dyn Optimizer, epoch: usize) -> Result<()> {
        let ctx = Ctx::train();
        let feats = encode_all(&self.joint.encoders, &batch.inputs, &ctx)?;
        let fused = self.joint.fusion.forward(&feats, &ctx)?;
        let loss = ops::cross_entropy(&fused, ops::Target::Hard(&batch.labels), None)?;
        let gpu = batch.labels.gpu().clone();
        let active = self.active(epoch);
        let modulated = active || self.after(epoch);
        let values = self.subset_logits(&batch.inputs, &fused, modulated)?;
        let (s, k) = {
            let _ng = crate::autograd::no_grad();
            let detached: Vec<Tensor> = values.iter().map(Tensor::detach).collect();
            let s = scores(&shapley_outputs(&detached, self.m)?, &batch.labels)?;
            (s.clone(), coefficients(&s, &self.running, self.cfg.alpha, self.cfg.cap)?)
        };
        // before the window the scales are the hooks' initial 1: joint training's gradient
        let applied = match (active, modulated) {
            (true, _) => k,
            (false, true) => self.frozen.clone(),
            (false, false) => ops::full(&gpu, &[self.m], 1.0)?,
        };
        let grads = if modulated { self.modulated_backward(&values, &fused, &batch.labels, &applied)? } else { loss.backward()? };
        drop(values);
        let _ng = crate::autograd::no_grad();
        // T ← T·(i − 1)/i + s/i with i the official 1-based iteration
        let i = (self.steps + 1) as f64;
        self.running.assign(&ops::lerp(&self.running, &s, ((i - 1.0) / i) as f32, (1.0 / i) as f32)?)?;
        self.steps += 1;
        if active {
            self.frozen.assign(&applied)?;
        }
        let grads = self.clip(grads)?;
        opt.step(&grads)?;
        let views = (0..self.m).map(|i| self.joint.fusion.unimodal(i, &feats[i].detach(), &ctx)).collect::<Result<Vec<_>>>()?;
        let n = batch.n as f32;
        let parts = [ops::scale(&loss.detach(), n)?.reshape(&[1])?, view_stats(&views, &batch.labels)?, ops::scale(&s, n)?, ops::scale(&applied, n)?];
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
        let running = self.running.to_vec()?;
        let m = self.m;
        let mut st = stats_from_sums(&sums, m, samples);
        let n = samples.max(1) as f64;
        let per = |vals: &dyn Fn(usize) -> f64| -> serde_json::Value {
            let mut o = serde_json::Map::new();
            for (i, name) in self.names.iter().enumerate() {
                o.insert(name.clone(), serde_json::json!(vals(i)));
            }
            serde_json::Value::Object(o)
        };
        let base = 1 + 2 * m;
        st.extra.push((
            "agm".into(),
            serde_json::json!({
                "active": self.active(epoch),
                "score": per(&|i| sums[base + i] / n),
                "coef": per(&|i| sums[base + m + i] / n),
                "running_score": per(&|i| running[i] as f64),
            }),
        ));
        Ok(st)
    }
    fn state(&self) -> serde_json::Value {
        super::counter_state("steps", self.steps)
    }
    fn restore(&mut self, state: &serde_json::Value, _opt: &mut dyn Optimizer) -> Result<()> {
        super::restore_counter(state, "steps", &mut self.steps);
        Ok(())
    }
}
