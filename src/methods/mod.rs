//! Training methods behind one trait: unimodal, joint training (sum / concat / FiLM / gated
//! fusion), OGM and OGM-GE, AUG, AIM, PMR, MMPareto, AGM and G-Blending. Each method owns its model; the trainer owns the data, the
//! fusion), OGM and OGM-GE, AUG, AIM, PMR, MMPareto, MLA and InfoReg. Each method owns its model; the trainer owns the data, the
//! fusion), OGM and OGM-GE, AUG, AIM, PMR, MMPareto,
//! Diagnosing & Re-learning, ReconBoost and Greedy. Each method owns its model; the trainer owns the data, the
//! optimizer, evaluation and logging.
pub mod agm;
pub mod aim;
mod aug;
pub mod config;
pub mod g_blending;
pub mod greedy;
pub mod inforeg;
mod joint;
pub mod mla;
pub mod mmpareto;
pub mod model;
mod ogm_ge;
pub mod pmr;
pub mod reconboost;
pub mod relearn;
mod unimodal;

pub use agm::{Agm, AgmConfig};
pub use aim::{Aim, AimConfig, AuxBn};
pub use aug::{Aug, AugConfig, AugRule};
pub use config::{MethodConfig, MethodName, MethodSetup};
pub use g_blending::{GBlending, GBlendingConfig};
pub use greedy::{Greedy, GreedyConfig};
pub use inforeg::{InfoReg, InforegConfig};
pub use joint::Joint;
pub use mla::{Mla, MlaConfig, MlaDenominator, MlaFusion, MlaProjection};
pub use mmpareto::{MmPareto, MmparetoConfig};
pub use model::{EncoderKind, ModelConfig, ModelOverride};
pub use ogm_ge::{OgmConfig, OgmFormula, OgmGe, OgmScope};
pub use pmr::{Pmr, PmrCoefficient, PmrConfig};
pub use reconboost::{ReconBoost, ReconboostConfig};
pub use relearn::{Relearn, RelearnConfig};
pub use unimodal::Unimodal;


use crate::data::ModalitySpec;
use crate::error::{Error, Result};
use crate::gpu::Gpu;
use crate::nn::{Ctx, Encoder, MlpEncoder, ResNet18, SmallCnn, TransformerConfig, TransformerEncoder};
use crate::ops;
use crate::optim::{Optimizer, Param};
use crate::tensor::Tensor;
use rand::rngs::StdRng;

/// One batch on the device.
pub struct DeviceBatch {
    /// One tensor per modality, `[N, ...sample shape]`.
    pub inputs: Vec<Tensor>,
    /// u32 `[N]`, validated against the number of classes
    pub labels: Tensor,
    /// Batch size N.
    pub n: usize,
}

/// What the trainer reads back once per epoch.
#[derive(Clone, Debug, Default)]
pub struct EpochStats {
    /// mean training loss of the method's objective
    pub loss: f64,
    /// mean cross-entropy of each modality's own view (NaN where a modality has none)
    pub modality_loss: Vec<f64>,
    /// Σ over samples of each modality's true-class probability (confidence scores)
    pub scores: Vec<f64>,
    /// Training samples seen in the epoch.
    pub samples: usize,
    /// the method's own log section, e.g. ("aug", {...})
    pub extra: Vec<(String, serde_json::Value)>,
}

/// Model outputs for evaluation: fused logits and each modality's own logits (None where the
/// method has no view of that modality).
pub struct Prediction {
    /// Fused logits `[N, classes]`.
    pub fused: Tensor,
    /// Each modality's own logits `[N, classes]`, in data order.
    pub per_modality: Vec<Option<Tensor>>,
}

/// A balanced-multimodal training method: the model, its training step and its
/// per-epoch hooks; the trainer drives it (see docs/contributing.md).
pub trait Method: Send {
    /// Method name, as in `method.name`.
    fn name(&self) -> &'static str;
    /// Trainable parameters (stable names: checkpoints use them).
    fn params(&self) -> Vec<Param>;
    /// The parameters the optimizer updates (default: all of them).
    fn trainable(&self) -> Vec<Param> {
        self.params()
    }
    /// States (as [`Method::restore`] takes them) that bring out products a run's first
    /// steps do not launch, restored in turn by `equimodal tune` so that the tuner meets them
    /// before a run does (AUG with more learners, AIM with damped auxiliary blocks). Default:
    /// none.
    fn pretune_states(&self) -> Vec<serde_json::Value> {
        Vec::new()
    }
    /// The parameters `model.init` draws (default: all of them; a method whose own code fixes
    /// some layers' initialisation leaves those out).
    fn model_init_params(&self) -> Vec<Param> {
        self.params()
    }
    /// Non-trainable state tensors (batch-norm running statistics).
    fn buffers(&self) -> Vec<(String, Tensor)>;
    /// Called at the start of every epoch, before any other hook of that epoch.
    fn begin_epoch(&mut self, _epoch: usize) -> Result<()> {
        Ok(())
    }
    /// Share of the training split, in (0, 1], the method wants to see without training
    /// after `begin_epoch` and before the epoch's first step (PMR's prototypes); `None`: no
    /// such pass. The trainer then shows it the first `max(1, ⌊share · batches⌋)` batches of
    /// a separately shuffled pass over the training split ([`Method::observe`]) and calls
    /// [`Method::end_observe`].
    fn observe_fraction(&self, _epoch: usize) -> Option<f64> {
        None
    }
    /// Whether that pass's training batches are augmented as training's are (PMR's official
    /// prototype batches come from the training loader itself), or plain, as evaluation
    /// sees them (Re-learning's official diagnosis reads the training split without
    /// augmentation, `mode='my_train'`).
    fn observe_augmented(&self, _epoch: usize) -> bool {
        true
    }
    /// One batch of that pass (a forward without gradients; statistics stay on the GPU).
    fn observe(&mut self, _batch: &DeviceBatch, _epoch: usize) -> Result<()> {
        Ok(())
    }
    /// Whether the observation pass of `epoch` also covers the whole validation split, after
    /// the training share ([`Method::observe_val`]; Re-learning's held-out purity). The
    /// trainer refuses to start a run that asks for it without a validation split.
    fn observe_val_split(&self, _epoch: usize) -> bool {
        false
    }
    /// One validation batch of that pass (a forward without gradients).
    fn observe_val(&mut self, _batch: &DeviceBatch, _epoch: usize) -> Result<()> {
        Ok(())
    }
    /// The pass of `epoch` is over.
    fn end_observe(&mut self, _epoch: usize) -> Result<()> {
        Ok(())
    }
    /// Work before `epoch`'s observation pass and training that needs the data itself
    /// (G-Blending trains copies of its model to estimate its loss weights); see
    /// [`EpochData`].
    fn before_epoch(&mut self, _epoch: usize, _data: &mut dyn EpochData) -> Result<()> {
        Ok(())
    }
    /// The number of training batches of the epoch that is starting (the trainer calls it
    /// after `begin_epoch` and any observation pass; MLA's projection schedule uses it).
    fn set_epoch_batches(&mut self, _batches: usize) {}
    /// One optimisation step. Statistics stay on the GPU (no host readback).
    fn train_step(&mut self, batch: &DeviceBatch, opt: &mut dyn Optimizer, epoch: usize) -> Result<()>;
    /// Eval-mode forward without gradients.
    fn predict(&self, inputs: &[Tensor]) -> Result<Prediction>;
    /// Each modality's encoder features `[N, D]` in eval mode, without gradients (None where
    /// the method has no encoder of that modality): what the linear probe
    /// (`train::probe`) fits on.
    fn features(&self, inputs: &[Tensor]) -> Result<Vec<Option<Tensor>>> {
        Ok(vec![None; inputs.len()])
    }
    /// Read back and reset the epoch's accumulators and decide what changes for the next
    /// epoch. The model evaluated for this epoch must stay the one that was trained: changes
    /// that add untrained parts (AUG's new learner) wait for [`Method::after_eval`].
    fn end_epoch(&mut self, epoch: usize, opt: &mut dyn Optimizer) -> Result<EpochStats>;
    /// Apply the model changes decided in `end_epoch`; the trainer calls it after the
    /// epoch's evaluation and before its checkpoint (so a resumed run has them).
    fn after_eval(&mut self, _epoch: usize, _opt: &mut dyn Optimizer) -> Result<()> {
        Ok(())
    }
    /// Method state for checkpoints (structure that must exist before parameters load).
    fn state(&self) -> serde_json::Value {
        serde_json::Value::Null
    }
    /// Rebuild the structure saved by [`Method::state`] (e.g. AUG's extra learners) before the
    /// parameters load; new trainable parameters reach `opt` through the trainer.
    fn restore(&mut self, _state: &serde_json::Value, _opt: &mut dyn Optimizer) -> Result<()> {
        Ok(())
    }
}

/// The data and optimizer settings a method may use in [`Method::before_epoch`], provided
/// by the trainer.
pub trait EpochData {
    /// One pass over the training split in the trainer's batch size, shuffled by the run's
    /// seed and `pass` (so reruns and resumed runs see the same batches).
    fn train_pass(&mut self, pass: u64, f: &mut dyn FnMut(&DeviceBatch) -> Result<()>) -> Result<()>;
    /// One pass over the validation split, in order; an error naming the data config when
    /// the dataset has no validation samples.
    fn val_pass(&mut self, f: &mut dyn FnMut(&DeviceBatch) -> Result<()>) -> Result<()>;
    /// A fresh optimizer of the run's kind and settings (`[train]`, base learning rate)
    /// over `params`.
    fn optimizer(&self, params: Vec<Param>) -> Result<Box<dyn Optimizer>>;
}

/// Build one modality's encoder from the model config.
pub fn build_encoder(gpu: &Gpu, name: &str, spec: &ModalitySpec, mc: &ModelConfig, rng: &mut StdRng) -> Result<Box<dyn Encoder>> {
    let field = |f: &str| format!("model.modalities.{}.{f}", spec.name);
    Ok(match mc.encoder {
        EncoderKind::SmallCnn | EncoderKind::Resnet18 => {
            if spec.shape.len() != 3 {
                return Err(Error::config(
                    field("encoder"),
                    format!("{:?} needs [C, H, W] inputs, modality `{}` has shape {:?}; use mlp or transformer", mc.encoder, spec.name, spec.shape),
                ));
            }
            if mc.encoder == EncoderKind::SmallCnn {
                Box::new(SmallCnn::new(gpu, name, spec.shape[0], mc.width, mc.depth, rng)?)
            } else {
                Box::new(ResNet18::new(gpu, name, spec.shape[0], mc.width, rng)?.with_recompute(mc.recompute))
            }
        }
        EncoderKind::Mlp => Box::new(MlpEncoder::new(gpu, name, spec.shape.iter().product(), &mc.hidden, rng)?),
        EncoderKind::Transformer => {
            let cfg = TransformerConfig {
                layers: mc.layers,
                width: mc.width,
                heads: mc.heads,
                mlp_ratio: mc.mlp_ratio,
                patch: (mc.patch[0], mc.patch[1]),
                input_shape: spec.shape.clone(),
            };
            Box::new(TransformerEncoder::new(gpu, name, cfg, rng)?)
        }
    })
}

/// The feature width every encoder gives, for methods with one head across modalities
/// (MLA, ReconBoost); otherwise an error naming the method and each modality's width.
pub fn shared_width(method: &str, specs: &[ModalitySpec], encoders: &[Box<dyn Encoder>]) -> Result<usize> {
    let dims: Vec<usize> = encoders.iter().map(|e| e.out_dim()).collect();
    let Some(&first) = dims.first() else { return Err(Error::config("data.modalities", format!("{method} needs at least one modality"))) };
    if let Some(odd) = dims.iter().position(|&d| d != first) {
        let list: Vec<String> = specs.iter().zip(&dims).map(|(s, d)| format!("{}: {d}", s.name)).collect();
        return Err(Error::config(
            format!("model.modalities.{}", specs[odd].name),
            format!("{method} shares one head across modalities, so every encoder must output the same width; got {}", list.join(", ")),
        ));
    }
    Ok(first)
}

/// One encoder per modality, named `enc.<modality>`.
pub fn build_encoders(gpu: &Gpu, cfg: &MethodSetup, specs: &[ModalitySpec], rng: &mut StdRng) -> Result<Vec<Box<dyn Encoder>>> {
    for name in cfg.model.modalities.keys() {
        if !specs.iter().any(|s| &s.name == name) {
            let names: Vec<&str> = specs.iter().map(|s| s.name.as_str()).collect();
            return Err(Error::config(format!("model.modalities.{name}"), format!("no such modality; the data has {names:?}")));
        }
    }
    specs
        .iter()
        .map(|s| build_encoder(gpu, &format!("enc.{}", s.name), s, &cfg.model.for_modality(&s.name), rng))
        .collect()
}

/// Build the configured method for a dataset with these modalities and classes.
pub fn build(gpu: &Gpu, cfg: &MethodSetup, specs: &[ModalitySpec], classes: usize, rng: &mut StdRng) -> Result<Box<dyn Method>> {
    let method: Box<dyn Method> = match cfg.method.name {
        MethodName::Unimodal => Box::new(Unimodal::new(gpu, cfg, specs, classes, rng)?),
        MethodName::Joint => Box::new(Joint::new(gpu, cfg, specs, classes, rng)?),
        MethodName::Aug => Box::new(Aug::new(gpu, cfg, specs, classes, rng)?),
        MethodName::Aim => Box::new(Aim::new(gpu, cfg, specs, classes, rng)?),
        MethodName::Pmr => Box::new(Pmr::new(gpu, cfg, specs, classes, rng)?),
        MethodName::Mmpareto => Box::new(MmPareto::new(gpu, cfg, specs, classes, rng)?),
        MethodName::Agm => Box::new(Agm::new(gpu, cfg, specs, classes, rng)?),
        MethodName::GBlending => Box::new(GBlending::new(gpu, cfg, specs, classes, rng)?),
        MethodName::Mla => Box::new(Mla::new(gpu, cfg, specs, classes, rng)?),
        MethodName::Inforeg => Box::new(InfoReg::new(gpu, cfg, specs, classes, rng)?),
        MethodName::Relearn => Box::new(Relearn::new(gpu, cfg, specs, classes, rng)?),
        MethodName::Reconboost => Box::new(ReconBoost::new(gpu, cfg, specs, classes, rng)?),
        MethodName::Greedy => Box::new(Greedy::new(gpu, cfg, specs, classes, rng)?),
        MethodName::Ogm | MethodName::OgmGe => Box::new(OgmGe::new(gpu, cfg, specs, classes, rng, cfg.method.name == MethodName::OgmGe)?),
    };
    crate::nn::init::reinit(cfg.model.init, &method.model_init_params(), rng)?;
    Ok(method)
}

/// GPU-side running sums read once per epoch: a flat vector of `k` slots.
pub struct Accum {
    sums: Option<Tensor>,
    k: usize,
    /// Samples recorded so far.
    pub samples: usize,
}

impl Accum {
    /// Accumulator with `k` slots, empty until the first [`Accum::add`].
    pub fn new(k: usize) -> Accum {
        Accum { sums: None, k, samples: 0 }
    }
    /// Add a `[k]` tensor of per-step values (recorded, no readback).
    pub fn add(&mut self, v: &Tensor) -> Result<()> {
        let v = v.detach().reshape(&[self.k])?;
        self.sums = Some(match &self.sums {
            Some(s) => ops::add(s, &v)?,
            None => v.deep_copy()?,
        });
        Ok(())
    }
    /// Record one step: `parts` (together the `k` slots, in order) concatenated and added,
    /// and `n` samples counted.
    pub fn record(&mut self, parts: &[&Tensor], n: usize) -> Result<()> {
        self.add(&ops::concat(parts, 0)?)?;
        self.samples += n;
        Ok(())
    }
    /// Read back and reset.
    pub fn take(&mut self) -> Result<Vec<f64>> {
        let out = match self.sums.take() {
            Some(s) => s.to_vec()?.into_iter().map(|v| v as f64).collect(),
            None => vec![0.0; self.k],
        };
        self.samples = 0;
        Ok(out)
    }
}

/// Per-modality statistics of one step, as a [2·M] tensor: the batch-sum of each view's CE
/// and the batch-sum of each view's true-class probability (no gradient).
pub fn view_stats(views: &[Tensor], labels: &Tensor) -> Result<Tensor> {
    let _ng = crate::autograd::no_grad();
    let n = labels.numel() as f32;
    let mut parts = Vec::new();
    for v in views {
        let ce = ops::scale(&ops::cross_entropy(&v.detach(), ops::Target::Hard(labels), None)?, n)?;
        parts.push(ce.reshape(&[1])?);
    }
    for v in views {
        parts.push(ops::sum_all(&ops::true_class_prob(&v.detach(), labels)?)?);
    }
    let refs: Vec<&Tensor> = parts.iter().collect();
    ops::concat(&refs, 0)
}

/// Encoder features of every modality.
pub fn encode_all(encoders: &[Box<dyn Encoder>], inputs: &[Tensor], ctx: &Ctx) -> Result<Vec<Tensor>> {
    if inputs.len() != encoders.len() {
        return Err(Error::shape("model", format!("{} modalities in the batch, the model has {}", inputs.len(), encoders.len())));
    }
    encoders.iter().zip(inputs).map(|(e, x)| e.forward(x, ctx)).collect()
}

/// Eval-mode features of every encoder, no gradients ([`Method::features`] of methods
/// with one encoder per modality).
pub fn eval_features(encoders: &[Box<dyn Encoder>], inputs: &[Tensor]) -> Result<Vec<Option<Tensor>>> {
    if inputs.is_empty() {
        return Ok(Vec::new());
    }
    let _ng = crate::autograd::no_grad();
    Ok(encode_all(encoders, inputs, &Ctx::eval())?.into_iter().map(Some).collect())
}

/// A log object with one value per modality, `{name: value}` (the methods' own log sections).
pub fn per_modality_json(names: &[String], values: &[f64]) -> serde_json::Value {
    serde_json::Value::Object(names.iter().zip(values).map(|(n, v)| (n.clone(), serde_json::json!(v))).collect())
}

/// Split an epoch's [loss, view CE × M, view score × M] sums into EpochStats.
pub fn stats_from_sums(sums: &[f64], m: usize, samples: usize) -> EpochStats {
    let n = samples.max(1) as f64;
    EpochStats {
        loss: sums[0] / n,
        modality_loss: sums[1..1 + m].iter().map(|v| v / n).collect(),
        scores: sums[1 + m..1 + 2 * m].to_vec(),
        samples,
        extra: Vec::new(),
    }
}

/// A method's only resumable state, one counter (steps taken, noise drawn), as its
/// checkpoint record `{key: value}`.
pub(crate) fn counter_state(key: &str, value: u64) -> serde_json::Value {
    serde_json::json!({ key: value })
}

/// Restore the counter [`counter_state`] wrote; an older checkpoint without it leaves
/// `value` as it is.
pub(crate) fn restore_counter(state: &serde_json::Value, key: &str, value: &mut u64) {
    if let Some(v) = state.get(key).and_then(|v| v.as_u64()) {
        *value = v;
    }
}
