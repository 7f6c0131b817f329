//! Stochastic gradient descent with PyTorch's `torch.optim.SGD` semantics.
use super::{apply_common, Optimizer, Param, Registry, StateReader, StateTensor};
use crate::error::{Error, Result};
use crate::gpu::{Access, Kernel, Shader};
use crate::ops::{bytes_of, grid};
use crate::tensor::{DType, Tensor};

const K_SGD: Kernel =
    Kernel::new(Shader::Optim, "sgd_step", &[Access::ReadWrite, Access::Read, Access::ReadWrite, Access::ReadWrite, Access::Read], &SgdParams::LAYOUT);
/// Every kernel of this file (for the interface test, `tests/gpu/kernels.rs`).
pub(crate) const KERNELS: &[Kernel] = &[K_SGD];

/// SGD hyper-parameters (PyTorch names and meaning).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SgdConfig {
    /// Learning rate, >= 0.
    pub lr: f32,
    /// Momentum factor, >= 0 (0: no momentum buffer).
    pub momentum: f32,
    /// Dampening of the momentum update (PyTorch's `dampening`).
    pub dampening: f32,
    /// L2 penalty added to the gradient (g ← g + wd·θ), >= 0.
    pub weight_decay: f32,
    /// Nesterov momentum (needs momentum > 0 and zero dampening).
    pub nesterov: bool,
}

impl Default for SgdConfig {
    fn default() -> Self {
        SgdConfig { lr: 0.01, momentum: 0.0, dampening: 0.0, weight_decay: 0.0, nesterov: false }
    }
}

crate::gpu::gpu_params! {
    struct SgdParams as "SgdParams" {
        n: u32,
        first: u32,
        flags: u32,
        lr: f32,
        momentum: f32,
        one_minus_dampening: f32,
        weight_decay: f32,
        score_m: f32,
    }
}

// flag bits, as in shaders/optim.wgsl
const MOMENTUM: u32 = 1;
const NESTEROV: u32 = 2;
const SCORE: u32 = 4;

/// SGD: for each parameter with a gradient g (PyTorch's rule, step t = 1, 2, ...):
/// `d = g + wd·θ`; with momentum `buf = d` at t = 1, else `buf = μ·buf + (1−dampening)·d`,
/// then `d = d + μ·buf` (Nesterov) or `d = buf`; finally `θ = θ − lr·d`.
pub struct Sgd {
    cfg: SgdConfig,
    reg: Registry,
    /// Momentum buffers, one per parameter (only when momentum != 0). Contents are
    /// undefined until the parameter's first step, which overwrites them.
    bufs: Vec<Option<Tensor>>,
}

impl Sgd {
    /// Validates the configuration as PyTorch does (non-negative lr, momentum and weight
    /// decay; Nesterov needs momentum > 0 and zero dampening).
    pub fn new(params: &[Param], cfg: SgdConfig) -> Result<Sgd> {
        let bad = |field: &str, msg: String| Err(Error::config(format!("sgd.{field}"), msg));
        if !(cfg.lr >= 0.0 && cfg.lr.is_finite()) {
            return bad("lr", format!("must be a finite value >= 0, got {}", cfg.lr));
        }
        if !(cfg.momentum >= 0.0 && cfg.momentum.is_finite()) {
            return bad("momentum", format!("must be a finite value >= 0, got {}", cfg.momentum));
        }
        if !cfg.dampening.is_finite() {
            return bad("dampening", format!("must be finite, got {}", cfg.dampening));
        }
        if !(cfg.weight_decay >= 0.0 && cfg.weight_decay.is_finite()) {
            return bad("weight_decay", format!("must be a finite value >= 0, got {}", cfg.weight_decay));
        }
        if cfg.nesterov && (cfg.momentum <= 0.0 || cfg.dampening != 0.0) {
            return bad("nesterov", "Nesterov momentum requires momentum > 0 and zero dampening".into());
        }
        let mut s = Sgd { cfg, reg: Registry::default(), bufs: Vec::new() };
        s.add_params(params);
        Ok(s)
    }

    /// The hyper-parameters (`lr` as last set).
    pub fn config(&self) -> &SgdConfig {
        &self.cfg
    }

    /// Steps taken by the named parameter (None if not registered).
    pub fn step_count(&self, name: &str) -> Option<u64> {
        self.reg.index(name).map(|i| self.reg.slots[i].step)
    }

    fn has_momentum(&self) -> bool {
        self.cfg.momentum != 0.0
    }

    /// One step; `scale` multiplies every gradient inside the kernel.
    fn update(&mut self, grads: &crate::Gradients, scale: Option<&Tensor>) -> Result<()> {
        self.reg.check()?;
        // Check every gradient (and the scale) first, so a bad one leaves all parameters untouched.
        let mut todo = Vec::new();
        for i in 0..self.reg.params.len() {
            if let Some(g) = self.reg.grad(i, grads, "sgd.step")? {
                todo.push((i, g.clone()));
            }
        }
        if let (Some(s), Some((i, _))) = (scale, todo.first()) {
            super::check_scale("sgd.step", s, &self.reg.params[*i].tensor)?;
        }
        let momentum = self.has_momentum();
        for (i, g) in todo {
            let p = self.reg.params[i].tensor.clone();
            let (d0, d1) = self.reg.dummies(&p)?;
            let slot = &mut self.reg.slots[i];
            let first = slot.step == 0;
            slot.step += 1;
            let (score, score_m) = match &slot.score {
                Some((t, m)) => (Some(t.clone()), *m),
                None => (None, 0.0),
            };
            if momentum && self.bufs[i].is_none() {
                self.bufs[i] = Some(Tensor::empty(p.gpu(), p.shape(), DType::F32)?);
            }
            let buf = self.bufs[i].clone();
            let n = p.numel();
            let params = SgdParams {
                n: n as u32,
                first: first as u32,
                flags: if momentum { MOMENTUM } else { 0 }
                    | if self.cfg.nesterov { NESTEROV } else { 0 }
                    | if score.is_some() { SCORE } else { 0 }
                    | if scale.is_some() { super::GRAD_SCALE } else { 0 },
                lr: self.cfg.lr,
                momentum: self.cfg.momentum,
                one_minus_dampening: 1.0 - self.cfg.dampening,
                weight_decay: self.cfg.weight_decay,
                score_m,
            };
            let gpu = p.gpu();
            gpu.dispatch(
                &K_SGD,
                &[],
                bytes_of(&params),
                &[
                    p.buffer(),
                    g.buffer(),
                    buf.as_ref().map(|t| t.buffer()).unwrap_or(d0.buffer()),
                    score.as_ref().map(|t| t.buffer()).unwrap_or(d1.buffer()),
                    scale.unwrap_or(&d1).buffer(),
                ],
                grid(gpu, n, 256),
            )?;
        }
        Ok(())
    }
}

impl Optimizer for Sgd {
    fn step(&mut self, grads: &crate::Gradients) -> Result<()> {
        self.update(grads, None)
    }

    fn step_scaled(&mut self, grads: &crate::Gradients, scale: &Tensor) -> Result<()> {
        self.update(grads, Some(scale))
    }

    fn add_params(&mut self, params: &[Param]) {
        for i in self.reg.add(params) {
            debug_assert_eq!(i, self.bufs.len());
            let t = &self.reg.params[i].tensor;
            // An allocation failure (a tensor larger than a binding) leaves the slot empty;
            // `step` allocates it again and reports the error.
            let buf = if self.has_momentum() { Tensor::empty(t.gpu(), t.shape(), DType::F32).ok() } else { None };
            self.bufs.push(buf);
        }
    }

    fn params(&self) -> &[Param] {
        &self.reg.params
    }
    fn lr(&self) -> f32 {
        self.cfg.lr
    }
    fn set_lr(&mut self, lr: f32) {
        self.cfg.lr = lr;
    }

    fn state_tensors(&self) -> Result<Vec<StateTensor>> {
        self.reg.check()?;
        let mut out = Vec::new();
        for i in 0..self.reg.params.len() {
            self.reg.common_state(i, &mut out)?;
            let p = &self.reg.params[i];
            if let (Some(b), true) = (&self.bufs[i], self.reg.slots[i].step > 0) {
                out.push((format!("momentum.{}", p.name), p.tensor.shape().to_vec(), b.to_vec()?));
            }
        }
        Ok(out)
    }

    fn load_state_tensors(&mut self, state: &[StateTensor]) -> Result<()> {
        self.reg.check()?;
        let mut r = StateReader::new(state)?;
        let mut plan = Vec::new();
        for (i, p) in self.reg.params.iter().enumerate() {
            let shape = p.tensor.shape();
            let enabled = self.reg.slots[i].score.as_ref().map(|(_, m)| *m);
            let (step, score) = r.common(&p.name, shape, enabled)?;
            let key = format!("momentum.{}", p.name);
            let mom = if self.has_momentum() && step > 0 { Some(r.need(&key, shape)?) } else { r.get(&key, shape)? };
            plan.push((step, score, mom));
        }
        r.finish()?;
        for (i, (step, score, mom)) in plan.into_iter().enumerate() {
            apply_common(&mut self.reg, i, step, score)?;
            if let (Some(data), true) = (mom, self.has_momentum()) {
                let t = &self.reg.params[i].tensor;
                if self.bufs[i].is_none() {
                    self.bufs[i] = Some(Tensor::empty(t.gpu(), t.shape(), DType::F32)?);
                }
                if let Some(b) = &self.bufs[i] {
                    b.write(data)?;
                }
            }
        }
        Ok(())
    }

    fn enable_scores(&mut self, param_names: &[&str], momentum: f32) -> Result<()> {
        self.reg.enable_scores(param_names, momentum)
    }
    fn scores(&self, name: &str) -> Option<&Tensor> {
        self.reg.scores(name)
    }
}
