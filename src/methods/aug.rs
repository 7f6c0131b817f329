//! AUG (Jiang et al., NeurIPS 2025): sustained boosting with adaptive classifier assignment
//! (docs/methods/aug.md: the official code, line by line, and where we depart).
//! Each modality m has learners f_t = head(relu(W_t u + b_t)) sharing one head across all
//! learners of all modalities; its logits are F^m = Σ_t f_t. Every batch updates the
//! modalities one after another (the head is updated in each), each with the fused boosting
//! loss kernel (`ops::boost_loss`). Every `check_every` epochs (and after the first) the
//! confidence scores decide which modality gets a new learner.
use super::{build_encoders, DeviceBatch, EpochStats, Method, Prediction};
use super::config::MethodSetup;
use crate::data::{derive_seed, ModalitySpec};
use crate::error::{Error, Result};
use crate::gpu::Gpu;
use crate::nn::{Ctx, Encoder, Linear, Module};
use crate::ops;
use crate::optim::{Optimizer, Param};
use crate::tensor::Tensor;
use rand::rngs::StdRng;
use rand::SeedableRng;
use serde_json::json;

/// Tag of the random stream new learners are initialised from (see `Aug::add_learner`).
const LEARNER_STREAM: u64 = 0xA06_1EA2;

// ---- configuration (`[method.aug]`) ----

/// Adaptive classifier assignment rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AugRule {
    /// s^a − σ·s^v against ±τ (the paper)
    Paper,
    /// s^a / s^v against 1 ± τ (the official code)
    Code,
    /// any number of modalities: ratio_m = s^m / Σ_{others} s, add where below `multi_threshold`
    Multi,
}

/// `[method.aug]`; the defaults are the official code's, except `train_new_learners` (see
/// docs/methods/aug.md).
#[derive(Clone, Debug, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AugConfig {
    /// weight of the residual term (paper searched 0.1..1.0)
    pub lambda: f32,
    /// Which boosting loss the learners are trained with.
    #[serde(deserialize_with = "super::config::by_name::deserialize")]
    pub form: crate::ops::BoostForm,
    /// Check every N epochs; 0 = epochs / 10 (the official code).
    pub check_every: usize,
    /// Also check after the first epoch (the official code does).
    pub check_after_first: bool,
    /// Rule that decides when a modality gets a new learner.
    pub rule: AugRule,
    /// σ of the `paper` rule (weight of the other modality's score).
    pub sigma: f32,
    /// Threshold τ: ±τ for `paper`, 1 ± τ for `code`.
    pub tau: f32,
    /// `multi` rule: a modality whose score ratio is below this gets a learner.
    pub multi_threshold: f32,
    /// Optional cap on learners per modality.
    pub max_learners: Option<usize>,
    /// New learners join the optimizer with fresh state; false reproduces the official code
    /// (they stay frozen random projections).
    pub train_new_learners: bool,
    /// Test-time fusion weights per modality (default 0.4 / 0.6 for two, uniform otherwise).
    pub fusion_weights: Option<Vec<f32>>,
    /// Learner width (Linear(D→hidden) + ReLU before the shared head).
    pub hidden: usize,
}

impl Default for AugConfig {
    fn default() -> Self {
        AugConfig {
            lambda: 0.5,
            form: crate::ops::BoostForm::Code,
            check_every: 0,
            check_after_first: true,
            rule: AugRule::Code,
            sigma: 1.0,
            tau: 0.01,
            multi_threshold: 0.4,
            max_learners: None,
            train_new_learners: true,
            fusion_weights: None,
            hidden: 256,
        }
    }
}


impl AugConfig {
    /// Check every value; errors name the field (`method.aug.<field>`).
    pub fn validate(&self) -> Result<()> {
        let f = |n: &str| format!("method.aug.{n}");
        if !self.lambda.is_finite() || self.lambda < 0.0 {
            return Err(Error::config(f("lambda"), format!("must be >= 0, got {}", self.lambda)));
        }
        if self.hidden == 0 {
            return Err(Error::config(f("hidden"), "must be at least 1"));
        }
        if self.max_learners == Some(0) {
            return Err(Error::config(f("max_learners"), "must be at least 1 (or absent for no cap)"));
        }
        for (n, v, ok, want) in [
            ("tau", self.tau, self.tau >= 0.0, ">= 0"),
            ("sigma", self.sigma, self.sigma > 0.0, "> 0"),
            ("multi_threshold", self.multi_threshold, self.multi_threshold > 0.0, "> 0"),
        ] {
            if !(v.is_finite() && ok) {
                return Err(Error::config(f(n), format!("must be {want}, got {v}")));
            }
        }
        if let Some(w) = &self.fusion_weights {
            if let Some(v) = w.iter().find(|v| !(v.is_finite() && **v >= 0.0)) {
                return Err(Error::config(f("fusion_weights"), format!("values must be finite and >= 0, got {v}")));
            }
            if w.iter().sum::<f32>() <= 0.0 {
                return Err(Error::config(f("fusion_weights"), "at least one weight must be > 0"));
            }
        }
        if self.hidden > crate::limits::MAX_WIDTH {
            return Err(Error::config(f("hidden"), format!("must be at most {}, got {}", crate::limits::MAX_WIDTH, self.hidden)));
        }
        Ok(())
    }
}

/// AUG: per-modality boosted learners over the encoders sharing one head, learners added
/// by the assignment rule.
pub struct Aug {
    encoders: Vec<Box<dyn Encoder>>,
    learners: Vec<Vec<Linear>>,
    head: Linear,
    names: Vec<String>,
    cfg: AugConfig,
    alphas: Vec<f32>,
    gpu: Gpu,
    seed: u64,
    /// per modality: [loss·N sum, confidence sum] on the GPU
    acc: Vec<Option<Tensor>>,
    samples: usize,
    epochs: usize,
    /// modalities that get a learner once this epoch has been evaluated (the official code
    /// evaluates before it adds the layer)
    pending: Vec<usize>,
}

impl Aug {
    /// Build the model for these modalities and `classes` outputs from `cfg`, drawing the initial
    /// weights from `rng`; errors name a bad config field.
    pub fn new(gpu: &Gpu, cfg: &MethodSetup, specs: &[ModalitySpec], classes: usize, rng: &mut StdRng) -> Result<Aug> {
        let a = cfg.method.aug.clone();
        let m = specs.len();
        let encoders = build_encoders(gpu, cfg, specs, rng)?;
        let alphas = match &a.fusion_weights {
            Some(w) => {
                if w.len() != m {
                    return Err(Error::config("method.aug.fusion_weights", format!("needs {m} weights (one per modality), got {}", w.len())));
                }
                let s: f32 = w.iter().sum();
                if !(s > 0.0) || w.iter().any(|v| *v < 0.0) {
                    return Err(Error::config("method.aug.fusion_weights", "weights must be >= 0 with a positive sum"));
                }
                w.iter().map(|v| v / s).collect()
            }
            None if m == 2 => vec![0.4, 0.6],
            None => vec![1.0 / m as f32; m],
        };
        let head = Linear::new(gpu, "aug.head", a.hidden, classes, true, rng)?;
        let mut learners = Vec::new();
        for (i, e) in encoders.iter().enumerate() {
            learners.push(vec![Self::make_learner(gpu, &specs[i].name, 0, e.out_dim(), a.hidden, rng)?]);
        }
        Ok(Aug {
            encoders,
            learners,
            head,
            names: specs.iter().map(|s| s.name.clone()).collect(),
            alphas,
            gpu: gpu.clone(),
            seed: cfg.seed,
            cfg: a,
            acc: vec![None; m],
            samples: 0,
            epochs: cfg.epochs,
            pending: Vec::new(),
        })
    }

    /// A learner: Linear(D→hidden), xavier-normal with zero bias whatever `model.init` says.
    /// The AUG code and the PyTorch reference script (`nn.init.xavier_normal_`, `zeros_` on
    /// each new layer) both initialise learners so, the latter its encoders with PyTorch's
    /// defaults.
    fn make_learner(gpu: &Gpu, modality: &str, t: usize, d: usize, hidden: usize, rng: &mut StdRng) -> Result<Linear> {
        // Linear::new is already xavier-normal with zero bias
        Linear::new(gpu, &format!("aug.learner.{modality}.{t}"), d, hidden, true, rng)
    }

    /// Stacked learner logits [N, T, K]: all learners in one matmul (its ReLU in the
    /// epilogue), then the shared head.
    fn stacked_logits(&self, m: usize, u: &Tensor, ctx: &Ctx) -> Result<Tensor> {
        let ls = &self.learners[m];
        let n = u.dim(0);
        let h = if ls.len() == 1 {
            ls[0].forward_relu(u, ctx)?
        } else {
            let ws: Vec<&Tensor> = ls.iter().map(|l| &l.weight.tensor).collect();
            let bs: Vec<&Tensor> = ls.iter().map(|l| &l.bias.as_ref().expect("learner bias").tensor).collect();
            ops::linear_relu(u, &ops::concat(&ws, 0)?, Some(&ops::concat(&bs, 0)?), None)?
        };
        let h = h.reshape(&[n, ls.len(), self.cfg.hidden])?;
        self.head.forward(&h, ctx)
    }

    /// F^m = Σ_t f_t.
    fn modality_logits(&self, m: usize, u: &Tensor, ctx: &Ctx) -> Result<Tensor> {
        ops::sum(&self.stacked_logits(m, u, ctx)?, &[1], false)
    }

    fn add_learner(&mut self, m: usize, opt: &mut dyn Optimizer, register: bool) -> Result<()> {
        let t = self.learners[m].len();
        let d = self.encoders[m].out_dim();
        // each learner's initialisation depends only on (seed, modality, index), so a resumed
        // run adds exactly the learners an uninterrupted one would; hashed, not xor-ed, so no
        // two (seed, modality, index) share a stream (xor let seed 2^40 at modality 1 equal
        // seed 0 at modality 0)
        let mut rng = StdRng::seed_from_u64(derive_seed(&[self.seed, LEARNER_STREAM, m as u64, t as u64]));
        let l = Self::make_learner(&self.gpu, &self.names[m], t, d, self.cfg.hidden, &mut rng)?;
        if register {
            opt.add_params(&l.params());
        }
        self.learners[m].push(l);
        Ok(())
    }

    /// The most learners a modality can have in this run: one per check after the first,
    /// within `max_learners`.
    fn most_learners(&self) -> usize {
        1 + (0..self.epochs).filter(|&e| self.check_now(e)).count().min(self.cfg.max_learners.map_or(usize::MAX, |c| c.saturating_sub(1)))
    }

    /// The assignment rule: which modalities get a new learner, given mean confidence scores.
    pub fn decide(cfg: &AugConfig, scores: &[f64]) -> Vec<usize> {
        let m = scores.len();
        if m == 2 && cfg.rule != AugRule::Multi {
            let (sa, sv) = (scores[0], scores[1]);
            let weak = match cfg.rule {
                AugRule::Paper => {
                    let d = sa - cfg.sigma as f64 * sv;
                    if d > cfg.tau as f64 {
                        Some(1)
                    } else if d < -(cfg.tau as f64) {
                        Some(0)
                    } else {
                        None
                    }
                }
                _ => {
                    let r = sa / sv.max(1e-12);
                    if r > 1.0 + cfg.tau as f64 {
                        Some(1)
                    } else if r < 1.0 - cfg.tau as f64 {
                        Some(0)
                    } else {
                        None
                    }
                }
            };
            return weak.into_iter().collect();
        }
        let total: f64 = scores.iter().sum();
        (0..m).filter(|&i| scores[i] / (total - scores[i]).max(1e-12) < cfg.multi_threshold as f64).collect()
    }

    /// Whether the assignment check runs at the end of `epoch`. Never after the final epoch:
    /// a learner added then could never be trained, yet the final checkpoint (and `eval` of
    /// it) would sum its random logits.
    fn check_now(&self, epoch: usize) -> bool {
        if epoch + 1 >= self.epochs {
            return false;
        }
        let every = if self.cfg.check_every == 0 { (self.epochs / 10).max(1) } else { self.cfg.check_every };
        (epoch + 1) % every == 0 || (epoch == 0 && self.cfg.check_after_first)
    }
}

impl Method for Aug {
    fn name(&self) -> &'static str {
        "aug"
    }
    fn params(&self) -> Vec<Param> {
        let mut v: Vec<Param> = self.encoders.iter().flat_map(|e| e.params()).collect();
        for ls in &self.learners {
            for l in ls {
                v.extend(l.params());
            }
        }
        v.extend(self.head.params());
        v
    }
    /// The encoders and the head: the learners keep their own initialisation (`make_learner`).
    fn model_init_params(&self) -> Vec<Param> {
        let mut v: Vec<Param> = self.encoders.iter().flat_map(|e| e.params()).collect();
        v.extend(self.head.params());
        v
    }
    fn trainable(&self) -> Vec<Param> {
        let mut v: Vec<Param> = self.encoders.iter().flat_map(|e| e.params()).collect();
        for ls in &self.learners {
            // learners added later stay frozen in the official code's behaviour
            let keep = if self.cfg.train_new_learners { ls.len() } else { 1 };
            for l in &ls[..keep] {
                v.extend(l.params());
            }
        }
        v.extend(self.head.params());
        v
    }
    fn buffers(&self) -> Vec<(String, Tensor)> {
        self.encoders.iter().flat_map(|e| e.buffers()).collect()
    }
    fn train_step(&mut self, batch: &DeviceBatch, opt: &mut dyn Optimizer, _epoch: usize) -> Result<()> {
        let ctx = Ctx::train();
        for m in 0..self.encoders.len() {
            let u = self.encoders[m].forward(&batch.inputs[m], &ctx)?;
            let logits = self.stacked_logits(m, &u, &ctx)?;
            let (loss, conf) = ops::boost_loss(&logits, &batch.labels, self.cfg.lambda, self.cfg.form)?;
            let grads = loss.backward()?;
            opt.step(&grads)?;
            let _ng = crate::autograd::no_grad();
            let step = ops::concat(&[&ops::scale(&loss.detach(), batch.n as f32)?, &ops::sum_all(&conf)?], 0)?;
            self.acc[m] = Some(match &self.acc[m] {
                Some(a) => ops::add(a, &step)?,
                None => step.deep_copy()?,
            });
        }
        self.samples += batch.n;
        Ok(())
    }
    fn features(&self, inputs: &[Tensor]) -> Result<Vec<Option<Tensor>>> {
        super::eval_features(&self.encoders, inputs)
    }
    fn predict(&self, inputs: &[Tensor]) -> Result<Prediction> {
        let _ng = crate::autograd::no_grad();
        let ctx = Ctx::eval();
        let mut per = Vec::new();
        let mut fused: Option<Tensor> = None;
        for m in 0..self.encoders.len() {
            let u = self.encoders[m].forward(&inputs[m], &ctx)?;
            let f = self.modality_logits(m, &u, &ctx)?;
            let w = ops::scale(&f, self.alphas[m])?;
            fused = Some(match fused {
                Some(a) => ops::add(&a, &w)?,
                None => w,
            });
            per.push(Some(f));
        }
        Ok(Prediction { fused: fused.expect("at least one modality"), per_modality: per })
    }
    fn end_epoch(&mut self, epoch: usize, _opt: &mut dyn Optimizer) -> Result<EpochStats> {
        let m = self.encoders.len();
        let n = self.samples.max(1) as f64;
        let mut losses = Vec::new();
        let mut scores = Vec::new();
        for a in self.acc.iter_mut() {
            let v = match a.take() {
                Some(t) => t.to_vec()?,
                None => vec![0.0, 0.0],
            };
            losses.push(v[0] as f64 / n);
            scores.push(v[1] as f64);
        }
        let samples = self.samples;
        self.samples = 0;
        let mean_scores: Vec<f64> = scores.iter().map(|s| s / n).collect();
        // gap function: training loss of the strong modality minus the weak one's
        let strong = (0..m).max_by(|&a, &b| mean_scores[a].total_cmp(&mean_scores[b])).unwrap_or(0);
        let weak = (0..m).min_by(|&a, &b| mean_scores[a].total_cmp(&mean_scores[b])).unwrap_or(0);
        let gap = losses[strong] - losses[weak];
        let mut check = serde_json::Value::Null;
        if self.check_now(epoch) {
            let mut decision = Vec::new();
            for i in Self::decide(&self.cfg, &mean_scores) {
                if self.cfg.max_learners.is_some_and(|cap| self.learners[i].len() >= cap) {
                    decision.push(format!("cap:{}", self.names[i]));
                    continue;
                }
                self.pending.push(i);
                decision.push(format!("add:{}", self.names[i]));
            }
            let sc: serde_json::Map<String, serde_json::Value> = self.names.iter().zip(&mean_scores).map(|(k, v)| (k.clone(), json!(v))).collect();
            check = json!({"scores": sc, "decision": if decision.is_empty() { "none".to_string() } else { decision.join(",") }});
        }
        // the learner counts of the ensemble that was trained (and is evaluated) this epoch
        let learners: serde_json::Map<String, serde_json::Value> =
            self.names.iter().zip(&self.learners).map(|(k, v)| (k.clone(), json!(v.len()))).collect();
        let total_loss: f64 = losses.iter().sum();
        Ok(EpochStats {
            loss: total_loss,
            modality_loss: losses,
            scores,
            samples,
            extra: vec![("aug".into(), json!({"learners": learners, "gap": gap, "check": check}))],
        })
    }
    fn after_eval(&mut self, _epoch: usize, opt: &mut dyn Optimizer) -> Result<()> {
        for i in std::mem::take(&mut self.pending) {
            self.add_learner(i, opt, self.cfg.train_new_learners)?;
        }
        Ok(())
    }
    fn state(&self) -> serde_json::Value {
        json!({"learners": self.learners.iter().map(|l| l.len()).collect::<Vec<_>>()})
    }
    /// Each power of two of learners below the most a run can reach, and that most: the
    /// stacked learners' product at every size class it can take.
    fn pretune_states(&self) -> Vec<serde_json::Value> {
        let most = self.most_learners();
        let mut counts: Vec<usize> = (1..usize::BITS).map(|k| 1usize << k).take_while(|&t| t < most).collect();
        if most > 1 {
            counts.push(most);
        }
        counts.into_iter().map(|t| json!({"learners": vec![t; self.learners.len()]})).collect()
    }
    fn restore(&mut self, state: &serde_json::Value, opt: &mut dyn Optimizer) -> Result<()> {
        let Some(counts) = state.get("learners").and_then(|v| v.as_array()) else { return Ok(()) };
        // at most one learner per check (and the cap): a larger count is a damaged checkpoint,
        // not a reason to allocate without bound
        let most = self.most_learners();
        for (m, c) in counts.iter().enumerate().take(self.learners.len()) {
            let want = c.as_u64().filter(|&n| n as usize <= most).ok_or_else(|| Error::config("checkpoint method_state.learners", format!("{c} learners for `{}`: at most {most} in a run of {} epochs (one per check)", self.names[m], self.epochs)))? as usize;
            for _ in self.learners[m].len()..want {
                self.add_learner(m, opt, self.cfg.train_new_learners)?;
            }
        }
        Ok(())
    }
}
