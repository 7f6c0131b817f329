//! Optimizers that update parameters in place on the GPU: [`Sgd`] (momentum, dampening,
//! Nesterov, weight decay) and [`Adam`] / AdamW (optional AMSGrad), with PyTorch's update
//! rules, plus per-epoch learning-rate schedules ([`Scheduler`]).
//!
//! Each step launches one fused kernel per parameter that has a gradient
//! (`shaders/optim.wgsl`): weight decay, momentum or Adam moments, the update, and the
//! optional AIM/PAM score EMA `score = m·score + (1−m)·|g ⊙ θ|` happen in one pass. The
//! parameter is written in its own storage, so every graph and module that holds the
//! tensor sees the new values. Step-dependent scalars (learning rate, bias corrections)
//! are computed on the host; a step never reads anything back (but under [`GradScaler`],
//! which reads one word to decide whether to skip it).
//!
//! Parameters can be added mid-training ([`Optimizer::add_params`]); they start with fresh
//! state. State for checkpoints is exported as named host arrays
//! ([`Optimizer::state_tensors`]): `step.<param>` (shape `[1]`), `momentum.<param>` (SGD),
//! `exp_avg.<param>`, `exp_avg_sq.<param>`, `max_exp_avg_sq.<param>` (Adam),
//! `score.<param>` and `score_momentum.<param>` (when scores are enabled).
/// The methods an optimizer wrapper hands to its `inner` optimizer unchanged: parameters,
/// learning rate and scores are the inner optimizer's. For use inside `impl Optimizer for W`
/// where `W` has a field `inner: Box<dyn Optimizer>` (gradient clipping, loss scaling, or an
/// embedding program's own wrapper). Defined before the modules so that theirs see it.
#[macro_export]
macro_rules! delegate_to_inner {
    () => {
        fn add_params(&mut self, params: &[$crate::optim::Param]) {
            self.inner.add_params(params)
        }
        fn params(&self) -> &[$crate::optim::Param] {
            self.inner.params()
        }
        fn lr(&self) -> f32 {
            self.inner.lr()
        }
        fn set_lr(&mut self, lr: f32) {
            self.inner.set_lr(lr)
        }
        fn enable_scores(&mut self, param_names: &[&str], momentum: f32) -> $crate::Result<()> {
            self.inner.enable_scores(param_names, momentum)
        }
        fn scores(&self, name: &str) -> Option<&$crate::Tensor> {
            self.inner.scores(name)
        }
    };
}

pub mod adam;
pub mod clip;
pub mod scaler;
pub mod schedule;
pub mod sgd;

pub use adam::{Adam, AdamConfig};
pub use clip::{clip_grad_norm, ClipGradNorm};
pub use scaler::{GradScaler, ScaleCounts};
pub use schedule::{LrSchedule, Scheduler};
pub use sgd::{Sgd, SgdConfig};
/// What optimizers update: the parameters `nn` modules define.
pub use crate::nn::Param;

/// Every kernel the optimizers launch (for the interface test, `tests/gpu/kernels.rs`).
pub fn kernels() -> Vec<crate::gpu::Kernel> {
    [adam::KERNELS, sgd::KERNELS].concat()
}

use crate::error::{Error, Result};
use crate::tensor::{DType, Tensor};
use std::collections::{HashMap, HashSet};

/// One named optimizer-state array: (name, shape, host data).
pub type StateTensor = (String, Vec<usize>, Vec<f32>);

/// A parameter update rule running on the GPU, with its state (momentum, moments, step counts) per
/// registered parameter.
pub trait Optimizer: Send {
    /// Update every registered parameter that has a gradient in `grads` (by tensor id);
    /// others untouched (their state too).
    fn step(&mut self, grads: &crate::Gradients) -> Result<()>;
    /// [`Optimizer::step`] with every gradient multiplied by `scale` (a one-element tensor,
    /// e.g. gradient-norm clipping's coefficient) first. SGD and Adam apply it inside their
    /// update kernel, bit-identical to scaling the gradients first and one pass over each
    /// gradient cheaper; this default scales them first.
    fn step_scaled(&mut self, grads: &crate::Gradients, scale: &Tensor) -> Result<()> {
        let _ng = crate::autograd::no_grad();
        let mut scaled = crate::Gradients::new();
        for p in self.params() {
            if let Some(g) = grads.get(&p.tensor) {
                scaled.insert(&p.tensor, crate::ops::mul(g, scale)?);
            }
        }
        self.step(&scaled)
    }
    /// Register parameters; new ones start with fresh state (zero momentum / moments, step
    /// count 0). A tensor that is already registered is skipped; a name that is already
    /// taken by another tensor makes the next `step` / `state_tensors` fail (typed error).
    fn add_params(&mut self, params: &[Param]);
    /// The registered parameters, in registration order.
    fn params(&self) -> &[Param];
    /// The current learning rate.
    fn lr(&self) -> f32;
    /// Set the learning rate for the next steps (schedules call this every epoch).
    fn set_lr(&mut self, lr: f32);
    /// Optimizer state for checkpoints: name -> host f32 data (see the module docs).
    fn state_tensors(&self) -> Result<Vec<StateTensor>>;
    /// Load state saved by [`Optimizer::state_tensors`]. All entries are checked before
    /// anything is changed: a missing, unknown or mis-shaped entry is a typed error naming
    /// it (`Error::Config` for missing/unknown/invalid, `Error::Shape` for mis-shaped).
    fn load_state_tensors(&mut self, state: &[StateTensor]) -> Result<()>;
    /// Maintain the optimisation-state score `score = m·score + (1−m)·|g ⊙ θ|` (θ before
    /// the update, g the gradient the step applies: after gradient clipping) for the named
    /// parameters, in the update kernel.
    /// Scores start at zero; enabling again only changes the momentum.
    fn enable_scores(&mut self, param_names: &[&str], momentum: f32) -> Result<()> {
        let _ = (param_names, momentum);
        Err(Error::Other("this optimizer does not maintain scores".into()))
    }
    /// The score tensor of a parameter (same shape), when enabled.
    fn scores(&self, name: &str) -> Option<&Tensor> {
        let _ = name;
        None
    }
    /// The loss-scaling wrapper, when this optimizer is one ([`GradScaler`] is the outermost
    /// wrapper wherever the trainer builds one).
    fn grad_scaler(&mut self) -> Option<&mut GradScaler> {
        None
    }
}


/// Flag bit of the update kernels (`shaders/optim.wgsl` `GRAD_SCALE`): multiply the
/// gradient by the one-element scale tensor bound after the state buffers.
pub(crate) const GRAD_SCALE: u32 = 8;

/// Check a gradient scale: one f32 element on the parameters' device.
pub(crate) fn check_scale(op: &'static str, scale: &Tensor, like: &Tensor) -> Result<()> {
    if scale.numel() != 1 || scale.dtype() != crate::tensor::DType::F32 || !scale.gpu().same_device(like.gpu()) {
        return Err(Error::shape(op, format!("the gradient scale must be one f32 element on the parameters' device, got {:?} {:?}", scale.shape(), scale.dtype())));
    }
    Ok(())
}

/// Per-parameter bookkeeping shared by the optimizers.
pub(crate) struct Slot {
    pub(crate) step: u64,
    /// (score tensor, EMA momentum)
    pub(crate) score: Option<(Tensor, f32)>,
}

/// Registered parameters, their names and common per-parameter state.
#[derive(Default)]
pub(crate) struct Registry {
    pub(crate) params: Vec<Param>,
    pub(crate) slots: Vec<Slot>,
    by_name: HashMap<String, usize>,
    ids: HashSet<u64>,
    /// An error found by `add_params` (which cannot return one), reported by the next
    /// `step` / `state_tensors` / `load_state_tensors`.
    deferred: Option<String>,
    /// Small buffers bound where a kernel's optional binding is unused.
    dummies: Option<(Tensor, Tensor)>,
}

impl Registry {
    /// Register new params; returns the indices that were added.
    pub(crate) fn add(&mut self, params: &[Param]) -> Vec<usize> {
        let mut added = Vec::new();
        for p in params {
            if self.ids.contains(&p.tensor.id()) {
                continue;
            }
            if self.by_name.contains_key(&p.name) {
                if self.deferred.is_none() {
                    self.deferred = Some(format!("parameter name {:?} registered twice (for different tensors)", p.name));
                }
                continue;
            }
            let i = self.params.len();
            self.ids.insert(p.tensor.id());
            self.by_name.insert(p.name.clone(), i);
            self.params.push(p.clone());
            self.slots.push(Slot { step: 0, score: None });
            added.push(i);
        }
        added
    }

    pub(crate) fn check(&self) -> Result<()> {
        match &self.deferred {
            Some(msg) => Err(Error::config("params", msg.clone())),
            None => Ok(()),
        }
    }

    pub(crate) fn index(&self, name: &str) -> Option<usize> {
        self.by_name.get(name).copied()
    }

    /// The gradient of param `i` if `grads` has one, checked against the parameter.
    pub(crate) fn grad<'a>(&self, i: usize, grads: &'a crate::Gradients, op: &'static str) -> Result<Option<&'a Tensor>> {
        let p = &self.params[i];
        let Some(g) = grads.get(&p.tensor) else { return Ok(None) };
        if g.shape() != p.tensor.shape() {
            return Err(Error::shape(
                op,
                format!("gradient of {:?} has shape {:?}, parameter has {:?}", p.name, g.shape(), p.tensor.shape()),
            ));
        }
        if p.tensor.dtype() != DType::F32 || g.dtype() != DType::F32 {
            return Err(Error::DType {
                op,
                msg: format!("parameter {:?} is {:?} with a {:?} gradient; expects f32", p.name, p.tensor.dtype(), g.dtype()),
            });
        }
        crate::ops::expect_same_gpu(op, &[&p.tensor, g])?;
        if std::sync::Arc::ptr_eq(g.storage(), p.tensor.storage()) {
            return Err(Error::Other(format!("{op}: gradient of {:?} shares the parameter's storage", p.name)));
        }
        Ok(Some(g))
    }

    /// Two distinct one-element buffers on `t`'s device for unused optional bindings.
    pub(crate) fn dummies(&mut self, t: &Tensor) -> Result<(Tensor, Tensor)> {
        if let Some((a, b)) = &self.dummies {
            if a.gpu().same_device(t.gpu()) {
                return Ok((a.clone(), b.clone()));
            }
        }
        let d = (Tensor::zeros(t.gpu(), &[1])?, Tensor::zeros(t.gpu(), &[1])?);
        self.dummies = Some(d.clone());
        Ok(d)
    }

    pub(crate) fn enable_scores(&mut self, names: &[&str], momentum: f32) -> Result<()> {
        if !(0.0..=1.0).contains(&momentum) {
            return Err(Error::config("score momentum", format!("must be in [0, 1], got {momentum}")));
        }
        let mut idx = Vec::with_capacity(names.len());
        for n in names {
            idx.push(self.index(n).ok_or_else(|| Error::config("enable_scores", format!("no parameter named {n:?}")))?);
        }
        for i in idx {
            match &mut self.slots[i].score {
                Some((_, m)) => *m = momentum,
                None => {
                    let t = &self.params[i].tensor;
                    self.slots[i].score = Some((Tensor::zeros(t.gpu(), t.shape())?, momentum));
                }
            }
        }
        Ok(())
    }

    pub(crate) fn scores(&self, name: &str) -> Option<&Tensor> {
        self.index(name).and_then(|i| self.slots[i].score.as_ref().map(|(t, _)| t))
    }

    /// `step.*`, `score.*`, `score_momentum.*` entries of param `i`.
    pub(crate) fn common_state(&self, i: usize, out: &mut Vec<StateTensor>) -> Result<()> {
        let name = &self.params[i].name;
        let s = &self.slots[i];
        out.push((format!("step.{name}"), vec![1], vec![s.step as f32]));
        if let Some((t, m)) = &s.score {
            out.push((format!("score.{name}"), t.shape().to_vec(), t.to_vec()?));
            out.push((format!("score_momentum.{name}"), vec![1], vec![*m]));
        }
        Ok(())
    }
}

/// A loaded score: (data, EMA momentum).
pub(crate) type LoadedScore<'a> = (&'a [f32], f32);

/// Checked view of a state list for loading: every entry must be consumed by a lookup,
/// else `finish` reports it as unknown.
pub(crate) struct StateReader<'a> {
    map: HashMap<&'a str, (&'a [usize], &'a [f32])>,
    used: HashSet<&'a str>,
}

impl<'a> StateReader<'a> {
    pub(crate) fn new(state: &'a [StateTensor]) -> Result<Self> {
        let mut map = HashMap::new();
        for (name, shape, data) in state {
            if map.insert(name.as_str(), (shape.as_slice(), data.as_slice())).is_some() {
                return Err(Error::config(name.clone(), "optimizer state entry appears twice"));
            }
            if crate::tensor::numel(shape) != data.len() {
                return Err(Error::shape(
                    "load_state_tensors",
                    format!("entry {name:?}: shape {shape:?} holds {} values, data has {}", crate::tensor::numel(shape), data.len()),
                ));
            }
        }
        Ok(StateReader { map, used: HashSet::new() })
    }

    /// An optional entry that, when present, must have `shape`.
    pub(crate) fn get(&mut self, name: &str, shape: &[usize]) -> Result<Option<&'a [f32]>> {
        let Some((&key, &(s, d))) = self.map.get_key_value(name) else { return Ok(None) };
        self.used.insert(key);
        if s != shape {
            return Err(Error::shape("load_state_tensors", format!("entry {name:?} has shape {s:?}, expected {shape:?}")));
        }
        Ok(Some(d))
    }

    /// A required entry of `shape`.
    pub(crate) fn need(&mut self, name: &str, shape: &[usize]) -> Result<&'a [f32]> {
        self.get(name, shape)?.ok_or_else(|| Error::config(name.to_string(), "missing from the optimizer state"))
    }

    /// A required one-element scalar (shape `[1]` or `[]`).
    pub(crate) fn scalar(&mut self, name: &str) -> Result<f32> {
        let Some((&key, &(s, d))) = self.map.get_key_value(name) else {
            return Err(Error::config(name.to_string(), "missing from the optimizer state"));
        };
        self.used.insert(key);
        if !(s.is_empty() || s == [1]) {
            return Err(Error::shape("load_state_tensors", format!("entry {name:?} has shape {s:?}, expected [1]")));
        }
        Ok(d[0])
    }

    /// `step.<name>` as a count, and the optional score (tensor data, momentum).
    /// `enabled` is the parameter's current score momentum, used when the state has a
    /// score but no `score_momentum` entry.
    pub(crate) fn common(&mut self, name: &str, shape: &[usize], enabled: Option<f32>) -> Result<(u64, Option<LoadedScore<'a>>)> {
        let key = format!("step.{name}");
        let step = self.scalar(&key)?;
        if !(step.is_finite() && step >= 0.0 && step.fract() == 0.0) {
            return Err(Error::config(key, format!("step count must be a non-negative integer, got {step}")));
        }
        let mkey = format!("score_momentum.{name}");
        let m = if self.map.contains_key(mkey.as_str()) { Some(self.scalar(&mkey)?) } else { None };
        let score = match self.get(&format!("score.{name}"), shape)? {
            Some(d) => {
                let m = m.or(enabled).ok_or_else(|| {
                    Error::config(mkey.clone(), "missing (and scores are not enabled for this parameter)")
                })?;
                if !(0.0..=1.0).contains(&m) {
                    return Err(Error::config(mkey, format!("must be in [0, 1], got {m}")));
                }
                Some((d, m))
            }
            None if m.is_some() => return Err(Error::config(format!("score.{name}"), "missing (score_momentum is present)")),
            None => None,
        };
        Ok((step as u64, score))
    }

    /// Fail on entries nobody asked for (unknown names or parameters).
    pub(crate) fn finish(&self) -> Result<()> {
        let mut unknown: Vec<&str> = self.map.keys().filter(|k| !self.used.contains(*k)).copied().collect();
        unknown.sort_unstable();
        match unknown.first() {
            Some(k) => Err(Error::config(
                k.to_string(),
                format!("unknown optimizer state entry (no such registered parameter or state); unknown: {unknown:?}"),
            )),
            None => Ok(()),
        }
    }
}

/// Apply loaded common state to param `i` (after all validation passed).
pub(crate) fn apply_common(reg: &mut Registry, i: usize, step: u64, score: Option<LoadedScore<'_>>) -> Result<()> {
    reg.slots[i].step = step;
    if let Some((data, momentum)) = score {
        let st = match reg.slots[i].score.take() {
            Some((st, _)) => st,
            None => {
                let t = &reg.params[i].tensor;
                Tensor::empty(t.gpu(), t.shape(), DType::F32)?
            }
        };
        st.write(data)?;
        reg.slots[i].score = Some((st, momentum));
    }
    Ok(())
}
