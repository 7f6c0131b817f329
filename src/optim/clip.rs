//! Gradient-norm clipping as an optimizer wrapper: before each step, the gradients of the
//! registered parameters are scaled by min(1, max_norm / ‖g‖) where ‖g‖ is their global L2
//! norm (PyTorch's `clip_grad_norm_`). Computed on the GPU as tensors: no host readback.
use super::{Optimizer, Param, StateTensor};
use crate::autograd::Gradients;
use crate::error::{Error, Result};
use crate::ops;
use crate::tensor::Tensor;

/// An optimizer that clips the global gradient norm of its parameters to `max_norm` before
/// delegating the step to `inner`; everything else (state, learning rate) is the inner optimizer's.
pub struct ClipGradNorm {
    inner: Box<dyn Optimizer>,
    max_norm: f32,
}

impl ClipGradNorm {
    /// `max_norm` must be finite and > 0 (a config error naming `train.grad_clip`).
    pub fn new(inner: Box<dyn Optimizer>, max_norm: f32) -> Result<ClipGradNorm> {
        if !(max_norm.is_finite() && max_norm > 0.0) {
            return Err(Error::config("train.grad_clip", format!("must be a positive number, got {max_norm}")));
        }
        Ok(ClipGradNorm { inner, max_norm })
    }
}

/// The coefficient `min(1, max_norm / (‖g‖ + 1e-6))` over the gradients of `params` in
/// `grads` (one element, on the GPU); `None` when none of them has a gradient.
pub fn clip_coefficient(params: &[Param], grads: &Gradients, max_norm: f32) -> Result<Option<Tensor>> {
    let _ng = crate::autograd::no_grad();
    let mut total: Option<Tensor> = None;
    for g in params.iter().filter_map(|p| grads.get(&p.tensor)) {
        let sq = ops::sum_all(&ops::square(g)?)?;
        total = Some(match total {
            Some(t) => ops::add(&t, &sq)?,
            None => sq,
        });
    }
    let Some(total) = total else { return Ok(None) };
    let norm = ops::sqrt(&total)?;
    Ok(Some(ops::clamp(&ops::recip(&ops::scale(&ops::add_scalar(&norm, 1e-6)?, 1.0 / max_norm)?)?, 0.0, 1.0)?))
}

/// The gradients of `params` in `grads`, scaled so their global L2 norm is at most `max_norm`.
pub fn clip_grad_norm(params: &[Param], grads: &Gradients, max_norm: f32) -> Result<Gradients> {
    let mut out = Gradients::new();
    let Some(coef) = clip_coefficient(params, grads, max_norm)? else { return Ok(out) };
    let _ng = crate::autograd::no_grad();
    for p in params {
        if let Some(g) = grads.get(&p.tensor) {
            out.insert(&p.tensor, ops::mul(g, &coef)?);
        }
    }
    Ok(out)
}

impl Optimizer for ClipGradNorm {
    delegate_to_inner!();
    /// The coefficient is applied inside the inner optimizer's update kernel (one pass over
    /// each gradient fewer than scaling them first; the same bits).
    fn step(&mut self, grads: &Gradients) -> Result<()> {
        match clip_coefficient(self.inner.params(), grads, self.max_norm)? {
            Some(coef) => self.inner.step_scaled(grads, &coef),
            None => self.inner.step(grads),
        }
    }
    fn state_tensors(&self) -> Result<Vec<StateTensor>> {
        self.inner.state_tensors()
    }
    fn load_state_tensors(&mut self, state: &[StateTensor]) -> Result<()> {
        self.inner.load_state_tensors(state)
    }
}
