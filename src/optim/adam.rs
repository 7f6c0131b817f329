//! Adam and AdamW with PyTorch's `torch.optim.Adam` / `AdamW` semantics (optional AMSGrad).
use super::{apply_common, Optimizer, Param, Registry, StateReader, StateTensor};
use crate::error::{Error, Result};
use crate::gpu::{Access, Kernel, Shader};
use crate::ops::{bytes_of, grid};
use crate::tensor::Tensor;

const RW: Access = Access::ReadWrite;
const K_ADAM: Kernel = Kernel::new(Shader::Optim, "adam_step", &[RW, Access::Read, RW, RW, RW, RW, Access::Read], &AdamParams::LAYOUT);
/// Every kernel of this file (for the interface test, `tests/gpu/kernels.rs`).
pub(crate) const KERNELS: &[Kernel] = &[K_ADAM];

/// Adam hyper-parameters. `decoupled: true` is AdamW (θ ← θ·(1 − lr·wd) before the
/// update); `false` is Adam's L2 penalty (g ← g + wd·θ).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamConfig {
    /// Learning rate, >= 0.
    pub lr: f32,
    /// Decay of the first moment, in [0, 1).
    pub beta1: f32,
    /// Decay of the second moment, in [0, 1).
    pub beta2: f32,
    /// Added to the denominator, >= 0.
    pub eps: f32,
    /// Weight decay, >= 0 (see `decoupled`).
    pub weight_decay: f32,
    /// AdamW's decoupled decay instead of an L2 penalty.
    pub decoupled: bool,
    /// AMSGrad: normalise by the running maximum of the second moment.
    pub amsgrad: bool,
}

impl Default for AdamConfig {
    fn default() -> Self {
        AdamConfig { lr: 1e-3, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.0, decoupled: false, amsgrad: false }
    }
}

crate::gpu::gpu_params! {
    struct AdamParams as "AdamParams" {
        n: u32,
        flags: u32,
        beta1: f32,
        beta2: f32,
        eps: f32,
        weight_decay: f32,
        decay: f32,
        step_size: f32,
        inv_bc2_sqrt: f32,
        score_m: f32,
        _pad1: u32,
        _pad2: u32,
    }
}

// flag bits, as in shaders/optim.wgsl
const DECOUPLED: u32 = 1;
const AMSGRAD: u32 = 2;
const SCORE: u32 = 4;

struct Moments {
    exp_avg: Tensor,
    exp_avg_sq: Tensor,
    max_exp_avg_sq: Option<Tensor>,
}

/// Adam / AdamW. Per parameter with a gradient, at its step t (1, 2, ...):
/// `m = β1·m + (1−β1)·g`, `v = β2·v + (1−β2)·g²`,
/// `θ = θ − lr/(1−β1^t) · m / (√v / √(1−β2^t) + eps)` (AMSGrad: `v` → running max of `v`).
pub struct Adam {
    cfg: AdamConfig,
    reg: Registry,
    moments: Vec<Option<Moments>>,
}

impl Adam {
    /// Validates the configuration as PyTorch does.
    pub fn new(params: &[Param], cfg: AdamConfig) -> Result<Adam> {
        let bad = |field: &str, msg: String| Err(Error::config(format!("adam.{field}"), msg));
        if !(cfg.lr >= 0.0 && cfg.lr.is_finite()) {
            return bad("lr", format!("must be a finite value >= 0, got {}", cfg.lr));
        }
        if !(cfg.eps >= 0.0 && cfg.eps.is_finite()) {
            return bad("eps", format!("must be a finite value >= 0, got {}", cfg.eps));
        }
        for (f, b) in [("beta1", cfg.beta1), ("beta2", cfg.beta2)] {
            if !(0.0..1.0).contains(&b) {
                return bad(f, format!("must be in [0, 1), got {b}"));
            }
        }
        if !(cfg.weight_decay >= 0.0 && cfg.weight_decay.is_finite()) {
            return bad("weight_decay", format!("must be a finite value >= 0, got {}", cfg.weight_decay));
        }
        let mut a = Adam { cfg, reg: Registry::default(), moments: Vec::new() };
        a.add_params(params);
        Ok(a)
    }

    /// The hyper-parameters (`lr` as last set).
    pub fn config(&self) -> &AdamConfig {
        &self.cfg
    }

    /// Steps taken by the named parameter (None if not registered).
    pub fn step_count(&self, name: &str) -> Option<u64> {
        self.reg.index(name).map(|i| self.reg.slots[i].step)
    }

    fn fresh(&self, t: &Tensor) -> Result<Moments> {
        Ok(Moments {
            exp_avg: Tensor::zeros(t.gpu(), t.shape())?,
            exp_avg_sq: Tensor::zeros(t.gpu(), t.shape())?,
            max_exp_avg_sq: if self.cfg.amsgrad { Some(Tensor::zeros(t.gpu(), t.shape())?) } else { None },
        })
    }

    fn ensure_moments(&mut self, i: usize) -> Result<()> {
        if self.moments[i].is_none() {
            let m = self.fresh(&self.reg.params[i].tensor)?;
            self.moments[i] = Some(m);
        }
        Ok(())
    }

    /// One step; `scale` multiplies every gradient inside the kernel.
    fn update(&mut self, grads: &crate::Gradients, scale: Option<&Tensor>) -> Result<()> {
        self.reg.check()?;
        let mut todo = Vec::new();
        for i in 0..self.reg.params.len() {
            if let Some(g) = self.reg.grad(i, grads, "adam.step")? {
                todo.push((i, g.clone()));
            }
        }
        if let (Some(s), Some((i, _))) = (scale, todo.first()) {
            super::check_scale("adam.step", s, &self.reg.params[*i].tensor)?;
        }
        let c = self.cfg;
        for (i, g) in todo {
            self.ensure_moments(i)?;
            let p = self.reg.params[i].tensor.clone();
            let (d0, d1) = self.reg.dummies(&p)?;
            let slot = &mut self.reg.slots[i];
            slot.step += 1;
            // Step-dependent scalars in f64 on the host, as PyTorch does (Python floats).
            let t = slot.step as f64;
            let bc1 = 1.0 - (c.beta1 as f64).powf(t);
            let bc2 = 1.0 - (c.beta2 as f64).powf(t);
            let (score, score_m) = match &slot.score {
                Some((s, m)) => (Some(s.clone()), *m),
                None => (None, 0.0),
            };
            let n = p.numel();
            let params = AdamParams {
                n: n as u32,
                flags: if c.decoupled { DECOUPLED } else { 0 }
                    | if c.amsgrad { AMSGRAD } else { 0 }
                    | if score.is_some() { SCORE } else { 0 }
                    | if scale.is_some() { super::GRAD_SCALE } else { 0 },
                beta1: c.beta1,
                beta2: c.beta2,
                eps: c.eps,
                weight_decay: c.weight_decay,
                decay: (1.0 - c.lr as f64 * c.weight_decay as f64) as f32,
                step_size: (c.lr as f64 / bc1) as f32,
                inv_bc2_sqrt: (1.0 / bc2.sqrt()) as f32,
                score_m,
                _pad1: 0,
                _pad2: 0,
            };
            let m = self.moments[i].as_ref().expect("moments allocated above");
            let gpu = p.gpu();
            gpu.dispatch(
                &K_ADAM,
                &[],
                bytes_of(&params),
                &[
                    p.buffer(),
                    g.buffer(),
                    m.exp_avg.buffer(),
                    m.exp_avg_sq.buffer(),
                    m.max_exp_avg_sq.as_ref().map(|t| t.buffer()).unwrap_or(d0.buffer()),
                    score.as_ref().map(|t| t.buffer()).unwrap_or(d1.buffer()),
                    scale.unwrap_or(&d1).buffer(),
                ],
                grid(gpu, n, 256),
            )?;
        }
        Ok(())
    }
}

impl Optimizer for Adam {
    fn step(&mut self, grads: &crate::Gradients) -> Result<()> {
        self.update(grads, None)
    }

    fn step_scaled(&mut self, grads: &crate::Gradients, scale: &Tensor) -> Result<()> {
        self.update(grads, Some(scale))
    }

    fn add_params(&mut self, params: &[Param]) {
        for i in self.reg.add(params) {
            debug_assert_eq!(i, self.moments.len());
            // Zeroed moments now; an allocation failure leaves the slot empty and `step`
            // allocates again (reporting the error).
            let m = self.fresh(&self.reg.params[i].tensor).ok();
            self.moments.push(m);
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
            let shape = p.tensor.shape().to_vec();
            if let (Some(m), true) = (&self.moments[i], self.reg.slots[i].step > 0) {
                out.push((format!("exp_avg.{}", p.name), shape.clone(), m.exp_avg.to_vec()?));
                out.push((format!("exp_avg_sq.{}", p.name), shape.clone(), m.exp_avg_sq.to_vec()?));
                if let Some(v) = &m.max_exp_avg_sq {
                    out.push((format!("max_exp_avg_sq.{}", p.name), shape.clone(), v.to_vec()?));
                }
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
            let mut get = |what: &str, required: bool| -> Result<Option<&[f32]>> {
                let key = format!("{what}.{}", p.name);
                if required && step > 0 {
                    Ok(Some(r.need(&key, shape)?))
                } else {
                    r.get(&key, shape)
                }
            };
            let m = get("exp_avg", true)?;
            let v = get("exp_avg_sq", true)?;
            let vmax = get("max_exp_avg_sq", self.cfg.amsgrad)?;
            plan.push((step, score, m, v, vmax));
        }
        r.finish()?;
        for (i, (step, score, m, v, vmax)) in plan.into_iter().enumerate() {
            apply_common(&mut self.reg, i, step, score)?;
            // A parameter without saved moments (step 0) starts fresh.
            let fresh = self.fresh(&self.reg.params[i].tensor)?;
            if let Some(d) = m {
                fresh.exp_avg.write(d)?;
            }
            if let Some(d) = v {
                fresh.exp_avg_sq.write(d)?;
            }
            if let (Some(d), Some(t)) = (vmax, &fresh.max_exp_avg_sq) {
                t.write(d)?;
            }
            self.moments[i] = Some(fresh);
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
