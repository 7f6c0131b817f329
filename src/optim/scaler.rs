//! Dynamic loss scaling as an optimizer wrapper (PyTorch's `torch.amp.GradScaler`, with its
//! defaults): the backward passes seed with S times the loss gradient, the gradients come
//! back divided by S ([`crate::autograd::loss_scaling`]), and a step whose gradients hold an
//! inf or a NaN is skipped and halves S; after `growth_interval` good steps in a row S
//! doubles.
//!
//! Why it exists here, where no gradient is ever stored in f16: what it buys is the skip. An
//! activation beyond f16's range under mixed precision becomes inf and its step's gradients
//! NaN; without the check they are written into the weights, and a ReLU network can then
//! even finish at chance with a finite loss (the ReLUs turn NaN activations into zeros), so
//! nothing stops the run. The scale itself changes no bit of a finite step (a power of two on
//! f32 gradients), so it stays in [1, 2^24]: a larger one protects nothing and would only end
//! in an f32 overflow and a lost step. `docs/design.md` ("Mixed precision") has the argument.
use super::{Optimizer, StateTensor};
use crate::autograd::{Gradients, LossScale};
use crate::error::{Error, Result};
use crate::tensor::Tensor;
use std::sync::Arc;

/// S at the start (PyTorch's `init_scale`).
pub const INIT_SCALE: f32 = 65536.0;
/// The smallest and largest S (see the module docs).
const MIN_SCALE: f32 = 1.0;
const MAX_SCALE: f32 = 16_777_216.0;
/// Checkpoint entries of the wrapper's own state (one element each).
const SCALE_ENTRY: &str = "loss_scale.scale";
const TRACKER_ENTRY: &str = "loss_scale.growth_tracker";

/// Steps and skipped steps since [`GradScaler::take_counts`] last ran (one epoch's).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ScaleCounts {
    /// Steps asked of the optimizer.
    pub steps: u64,
    /// Of those, skipped for an inf or NaN gradient.
    pub skipped: u64,
}

/// An optimizer that skips steps with non-finite gradients and keeps the dynamic loss scale;
/// everything else (state, learning rate) is the inner optimizer's.
pub struct GradScaler {
    inner: Box<dyn Optimizer>,
    shared: Arc<LossScale>,
    growth_interval: u32,
    /// Good steps in a row since S last changed.
    tracker: u32,
    counts: ScaleCounts,
}

impl GradScaler {
    /// Wrap `inner` with S = [`INIT_SCALE`]; S doubles after `growth_interval` good steps in a
    /// row (at least 1: a config error naming `train.loss_scale_interval`).
    pub fn new(gpu: &crate::gpu::Gpu, inner: Box<dyn Optimizer>, growth_interval: u32) -> Result<GradScaler> {
        if growth_interval == 0 {
            return Err(Error::config("train.loss_scale_interval", "must be at least 1"));
        }
        Ok(GradScaler { inner, shared: Arc::new(LossScale::new(gpu, INIT_SCALE)?), growth_interval, tracker: 0, counts: ScaleCounts::default() })
    }

    /// What the backward passes need ([`crate::autograd::loss_scaling`] takes it).
    pub fn loss_scale(&self) -> Arc<LossScale> {
        self.shared.clone()
    }

    /// The current scale S.
    pub fn scale(&self) -> f32 {
        self.shared.scale()
    }

    /// The counts since the last call, reset.
    pub fn take_counts(&mut self) -> ScaleCounts {
        std::mem::take(&mut self.counts)
    }

    /// Run `apply` (the inner step) unless a gradient since the last step was not finite;
    /// then update S and clear the flag.
    fn guarded(&mut self, apply: impl FnOnce(&mut dyn Optimizer) -> Result<()>) -> Result<()> {
        self.counts.steps += 1;
        let s = self.shared.scale();
        if self.shared.found_non_finite()? {
            self.counts.skipped += 1;
            self.tracker = 0;
            self.shared.set_scale((s * 0.5).max(MIN_SCALE));
        } else {
            apply(self.inner.as_mut())?;
            self.tracker += 1;
            if self.tracker >= self.growth_interval {
                self.tracker = 0;
                self.shared.set_scale((s * 2.0).min(MAX_SCALE));
            }
        }
        self.shared.clear()
    }
}

impl Optimizer for GradScaler {
    delegate_to_inner!();
    fn step(&mut self, grads: &Gradients) -> Result<()> {
        self.guarded(|o| o.step(grads))
    }
    fn step_scaled(&mut self, grads: &Gradients, scale: &Tensor) -> Result<()> {
        self.guarded(|o| o.step_scaled(grads, scale))
    }
    /// The inner optimizer's state and `loss_scale.scale`, `loss_scale.growth_tracker`.
    fn state_tensors(&self) -> Result<Vec<StateTensor>> {
        let mut v = self.inner.state_tensors()?;
        v.push((SCALE_ENTRY.into(), vec![1], vec![self.shared.scale()]));
        v.push((TRACKER_ENTRY.into(), vec![1], vec![self.tracker as f32]));
        Ok(v)
    }
    /// A checkpoint without the two entries (written before loss scaling, or in f32) starts
    /// the scale afresh; present ones must be in range.
    fn load_state_tensors(&mut self, state: &[StateTensor]) -> Result<()> {
        let own = |name: &str| state.iter().find(|e| e.0 == name).map(|e| (e.1.as_slice(), e.2.as_slice()));
        let (scale, tracker) = match (own(SCALE_ENTRY), own(TRACKER_ENTRY)) {
            (Some(([1], [s])), Some(([1], [t]))) => (*s, *t),
            (None, None) => (INIT_SCALE, 0.0),
            _ => return Err(Error::config(SCALE_ENTRY, "the checkpoint's loss-scale entries must both be present, one element each")),
        };
        let power_of_two = scale.is_finite() && scale > 0.0 && scale.to_bits() & 0x007f_ffff == 0;
        if !(power_of_two && (MIN_SCALE..=MAX_SCALE).contains(&scale)) {
            return Err(Error::config(SCALE_ENTRY, format!("must be a power of two in [{MIN_SCALE}, {MAX_SCALE}], got {scale}")));
        }
        if !(tracker >= 0.0 && tracker.fract() == 0.0 && tracker <= u32::MAX as f32) {
            return Err(Error::config(TRACKER_ENTRY, format!("must be a whole number of steps, got {tracker}")));
        }
        let rest: Vec<StateTensor> = state.iter().filter(|e| e.0 != SCALE_ENTRY && e.0 != TRACKER_ENTRY).cloned().collect();
        self.inner.load_state_tensors(&rest)?;
        self.shared.set_scale(scale);
        // a resume may shorten the interval: S then doubles at the next good step
        self.tracker = (tracker as u32).min(self.growth_interval - 1);
        Ok(())
    }
    fn grad_scaler(&mut self) -> Option<&mut GradScaler> {
        Some(self)
    }
}
