//! ReconBoost (Hua et al., ICML 2024); see docs/methods/reconboost.md. Alternating boosting:
//! stage s trains modality s mod M's learner (its encoder and the head shared by all
//! learners) against the ensemble of the others with the boosting loss and its
//! reconcilement term, then corrects the whole ensemble with cross-entropy.
use super::config::MethodSetup;
use super::{build_encoders, encode_all, view_stats, Accum, DeviceBatch, EpochStats, Method, Prediction};
use crate::data::ModalitySpec;
use crate::error::{Error, Result};
use crate::gpu::Gpu;
use crate::nn::{Ctx, Encoder, Linear, Module};
use crate::ops;
use crate::optim::{Optimizer, Param};
use crate::tensor::Tensor;
use rand::rngs::StdRng;

/// `[method.reconboost]`; defaults are the official `train.py` arguments.
#[derive(Clone, Debug, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReconboostConfig {
    /// Epochs of a stage's boosting phase (`--epochs_per_stage 4`).
    pub epochs_per_stage: usize,
    /// Epochs of a stage's ensemble correction phase (`--correct_epoch 4`).
    pub correct_epochs: usize,
    /// Weight of the learner's own cross-entropy term (`--weight1 5.0`).
    pub weight1: f32,
    /// Weight of the reconcilement term (`--weight2 1.0`).
    pub weight2: f32,
    /// Weight of the GA (global adjustment) MSE term (`--alpha 0.5`); the official code
    /// detaches both of its inputs, so it adds a constant and no gradient (logged only).
    pub alpha: f32,
    /// Initial value of the learnable ensemble scale (`--boost_rate 1.0`).
    pub boost_rate: f32,
    /// Hidden width of the shared head Linear(D, h) → ReLU → Linear(h, K) (official `Head`: 256).
    pub head_hidden: usize,
}

impl Default for ReconboostConfig {
    fn default() -> Self {
        ReconboostConfig { epochs_per_stage: 4, correct_epochs: 4, weight1: 5.0, weight2: 1.0, alpha: 0.5, boost_rate: 1.0, head_hidden: 256 }
    }
}

impl ReconboostConfig {
    /// Range checks; errors name the `method.reconboost.*` field.
    pub fn validate(&self) -> Result<()> {
        let f = |n: &str| format!("method.reconboost.{n}");
        for (name, v) in [("epochs_per_stage", self.epochs_per_stage), ("head_hidden", self.head_hidden)] {
            if v == 0 {
                return Err(Error::config(f(name), "must be >= 1"));
            }
        }
        if self.head_hidden > crate::limits::MAX_WIDTH {
            return Err(Error::config(f("head_hidden"), format!("must be at most {}, got {}", crate::limits::MAX_WIDTH, self.head_hidden)));
        }
        for (name, v) in [("weight1", self.weight1), ("weight2", self.weight2), ("alpha", self.alpha)] {
            if !(v.is_finite() && v >= 0.0) {
                return Err(Error::config(f(name), format!("must be >= 0, got {v}")));
            }
        }
        if !self.boost_rate.is_finite() {
            return Err(Error::config(f("boost_rate"), format!("must be finite, got {}", self.boost_rate)));
        }
        Ok(())
    }

    /// Where `epoch` falls: (stage, modality trained in the stage, boosting phase?). A stage
    /// is `epochs_per_stage` boosting epochs then `correct_epochs` correction epochs; stage s
    /// boosts modality s mod M (the official `schedule_model`, fixed mode).
    pub fn phase(&self, epoch: usize, modalities: usize) -> (usize, usize, bool) {
        let len = self.epochs_per_stage + self.correct_epochs;
        let stage = epoch / len;
        (stage, stage % modalities.max(1), epoch % len < self.epochs_per_stage)
    }

    /// Modalities in the ensemble during `epoch`: those boosted in an earlier stage, plus
    /// the current one once its boosting phase is over (the official `net_ensemble.add`).
    pub fn in_ensemble(&self, epoch: usize, modalities: usize) -> Vec<bool> {
        let (stage, cur, boosting) = self.phase(epoch, modalities);
        // modality m is first boosted in stage m
        (0..modalities).map(|m| stage > m || (m == cur && !boosting)).collect()
    }
}

/// The boosting loss of one batch (the official phase-1 objective, `train.py`):
/// mean_n [ −w1/K · log p(y_n) + w2/K · q(y_n) · log p(y_n) ], with p = softmax(learner
/// logits) and q = softmax(ensemble logits of the other modalities), detached; `None` for the
/// ensemble (stage 0: the official constant c0, a [N, 1] tensor whose softmax is 1) gives q = 1.
pub fn boosting_loss(learner: &Tensor, ensemble: Option<&Tensor>, labels: &Tensor, w1: f32, w2: f32) -> Result<Tensor> {
    let k = learner.dim(1) as f32;
    let q = {
        let _ng = crate::autograd::no_grad();
        match ensemble {
            Some(e) => ops::true_class_prob(&e.detach(), labels)?,
            None => ops::add_scalar(&Tensor::zeros(labels.gpu(), &[labels.numel()])?, 1.0)?,
        }
    };
    // = mean_n w_n · CE_n with the row weight w_n = (w1 − w2·q_n) / K (no gradient)
    let w = ops::affine(&q, -w2 / k, w1 / k)?;
    ops::cross_entropy(learner, ops::Target::Hard(labels), Some(&w))
}

/// ReconBoost: one learner per modality on a shared two-layer head, boosted in turn
/// (docs/methods/reconboost.md).
pub struct ReconBoost {
    encoders: Vec<Box<dyn Encoder>>,
    fc1: Linear,
    fc2: Linear,
    boost_rate: Param,
    cfg: ReconboostConfig,
    names: Vec<String>,
    acc: Accum,
    m: usize,
}

impl ReconBoost {
    /// Encoders for `specs`, the shared head and the boost rate β, from `cfg`'s model and
    /// `[method.reconboost]` (every encoder must give the same feature width).
    pub fn new(gpu: &Gpu, cfg: &MethodSetup, specs: &[ModalitySpec], classes: usize, rng: &mut StdRng) -> Result<ReconBoost> {
        let encoders = build_encoders(gpu, cfg, specs, rng)?;
        let d = super::shared_width("ReconBoost", specs, &encoders)?;
        let rc = cfg.method.reconboost.clone();
        let m = specs.len();
        Ok(ReconBoost {
            fc1: Linear::new(gpu, "reconboost.head.fc1", d, rc.head_hidden, true, rng)?,
            fc2: Linear::new(gpu, "reconboost.head.fc2", rc.head_hidden, classes, true, rng)?,
            boost_rate: crate::nn::param(gpu, "reconboost.boost_rate".into(), &[rc.boost_rate], &[1])?,
            encoders,
            cfg: rc,
            names: specs.iter().map(|s| s.name.clone()).collect(),
            acc: Accum::new(2 + 2 * m),
            m,
        })
    }

    /// A learner's logits: the shared head on its encoder's features.
    fn head(&self, feats: &Tensor, ctx: &Ctx) -> Result<Tensor> {
        self.fc2.forward(&self.fc1.forward_relu(feats, ctx)?, ctx)
    }

    /// boost_rate · Σ of the learners' logits where `mask` holds (None if none).
    fn ensemble(&self, logits: &[Tensor], mask: &[bool]) -> Result<Option<Tensor>> {
        let mut sum: Option<Tensor> = None;
        for (l, _) in logits.iter().zip(mask).filter(|(_, &b)| b) {
            sum = Some(match sum {
                Some(s) => ops::add(&s, l)?,
                None => l.clone(),
            });
        }
        sum.map(|s| ops::mul(&s, &self.boost_rate.tensor)).transpose()
    }

    /// Record a step's [objective, GA value, view CE × M, view score × M] sums.
    fn record(&mut self, loss: &Tensor, ga: Option<&Tensor>, views: &[Tensor], batch: &DeviceBatch) -> Result<()> {
        let _ng = crate::autograd::no_grad();
        let n = batch.n as f32;
        let ga = match ga {
            Some(g) => ops::scale(&g.detach(), n)?.reshape(&[1])?,
            None => Tensor::zeros(batch.labels.gpu(), &[1])?,
        };
        let vs = view_stats(views, &batch.labels)?;
        let parts = [ops::scale(&loss.detach(), n)?.reshape(&[1])?, ga, vs];
        self.acc.record(&parts.iter().collect::<Vec<_>>(), batch.n)?;
        Ok(())
    }
}

impl Method for ReconBoost {
    fn name(&self) -> &'static str {
        "reconboost"
    }
    fn params(&self) -> Vec<Param> {
        let mut v: Vec<Param> = self.encoders.iter().flat_map(|e| e.params()).collect();
        v.extend(self.fc1.params());
        v.extend(self.fc2.params());
        v.push(self.boost_rate.clone());
        v
    }
    fn buffers(&self) -> Vec<(String, Tensor)> {
        self.encoders.iter().flat_map(|e| e.buffers()).collect()
    }
    fn train_step(&mut self, batch: &DeviceBatch, opt: &mut dyn Optimizer, epoch: usize) -> Result<()> {
        let ctx = Ctx::train();
        let (stage, cur, boosting) = self.cfg.phase(epoch, self.m);
        let (loss, ga, views) = if boosting {
            // only the boosted learner records a graph
            let feats = self
                .encoders
                .iter()
                .zip(&batch.inputs)
                .enumerate()
                .map(|(i, (e, x))| {
                    let _ng = (i != cur).then(crate::autograd::no_grad);
                    e.forward(x, &ctx)
                })
                .collect::<Result<Vec<_>>>()?;
            // the other learners in train mode without gradient (the official
            // net_ensemble.forward under no_grad after to_train)
            let (others, mut views) = {
                let _ng = crate::autograd::no_grad();
                let v = feats.iter().map(|f| self.head(&f.detach(), &ctx)).collect::<Result<Vec<_>>>()?;
                let mut mask = self.cfg.in_ensemble(epoch, self.m);
                mask[cur] = false;
                (self.ensemble(&v, &mask)?, v)
            };
            let learner = self.head(&feats[cur], &ctx)?;
            let loss = boosting_loss(&learner, others.as_ref(), &batch.labels, self.cfg.weight1, self.cfg.weight2)?;
            // GA: MSE of the two detached softmaxes (no gradient, as the official code)
            let ga = if stage > 0 {
                let _ng = crate::autograd::no_grad();
                let prev = (cur + self.m - 1) % self.m;
                let d = ops::sub(&ops::softmax(&learner.detach())?, &ops::softmax(&views[prev])?)?;
                Some(ops::scale(&ops::mean_all(&ops::square(&d)?)?, self.cfg.alpha)?)
            } else {
                None
            };
            views[cur] = learner.detach();
            let grads = loss.backward()?;
            opt.step(&grads)?;
            (loss, ga, views)
        } else {
            let feats = encode_all(&self.encoders, &batch.inputs, &ctx)?;
            let v = feats.iter().map(|f| self.head(f, &ctx)).collect::<Result<Vec<_>>>()?;
            let mask = self.cfg.in_ensemble(epoch, self.m);
            let out = self.ensemble(&v, &mask)?.ok_or_else(|| Error::config("method.reconboost", "the ensemble is empty"))?;
            let loss = ops::cross_entropy(&out, ops::Target::Hard(&batch.labels), None)?;
            let grads = loss.backward()?;
            opt.step(&grads)?;
            (loss, None, v.iter().map(|t| t.detach()).collect())
        };
        let loss = match &ga {
            Some(g) => ops::add(&loss.detach().reshape(&[1])?, &g.reshape(&[1])?)?,
            None => loss.detach(),
        };
        self.record(&loss, ga.as_ref(), &views, batch)
    }
    fn predict(&self, inputs: &[Tensor]) -> Result<Prediction> {
        let _ng = crate::autograd::no_grad();
        let ctx = Ctx::eval();
        let feats = encode_all(&self.encoders, inputs, &ctx)?;
        let v = feats.iter().map(|f| self.head(f, &ctx)).collect::<Result<Vec<_>>>()?;
        // every learner (the official ensemble holds only those boosted so far; it is only
        // evaluated after a stage, when for M modalities from stage M − 1 on it holds all)
        let all = vec![true; self.m];
        let fused = self.ensemble(&v, &all)?.ok_or_else(|| Error::shape("reconboost", "no modality"))?;
        Ok(Prediction { fused, per_modality: v.into_iter().map(Some).collect() })
    }
    fn features(&self, inputs: &[Tensor]) -> Result<Vec<Option<Tensor>>> {
        super::eval_features(&self.encoders, inputs)
    }
    fn end_epoch(&mut self, epoch: usize, _opt: &mut dyn Optimizer) -> Result<EpochStats> {
        let samples = self.acc.samples;
        let sums = self.acc.take()?;
        let n = samples.max(1) as f64;
        let m = self.m;
        let mut st = EpochStats {
            loss: sums[0] / n,
            modality_loss: sums[2..2 + m].iter().map(|v| v / n).collect(),
            scores: sums[2 + m..2 + 2 * m].to_vec(),
            samples,
            extra: Vec::new(),
        };
        let (stage, cur, boosting) = self.cfg.phase(epoch, m);
        st.extra.push((
            "reconboost".into(),
            serde_json::json!({
                "stage": stage,
                "modality": self.names[cur],
                "phase": if boosting { "boost" } else { "correct" },
                "ga": sums[1] / n,
            }),
        ));
        Ok(st)
    }
}
