//! Per-epoch learning-rate schedules: optional linear warm-up, then constant, step decay
//! (PyTorch `StepLR`) or cosine annealing (PyTorch `CosineAnnealingLR`).
use super::Optimizer;

/// The schedule that follows the warm-up. Its epoch counter `e` starts at 0 on the first
/// epoch after the warm-up.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum LrSchedule {
    /// `base_lr` throughout.
    Constant,
    /// `base_lr · gamma^⌊e / step_size⌋` (StepLR; `step_size` 0 is treated as 1).
    Step {
        /// Epochs between decays.
        step_size: usize,
        /// Factor applied at each decay.
        gamma: f32,
    },
    /// `min_lr + (base_lr − min_lr)·(1 + cos(π·e / T))/2` with `T = total − warmup_epochs`
    /// (CosineAnnealingLR with `T_max = T`, `eta_min = min_lr`). `total` is the epoch
    /// count of the whole run, warm-up included, so the last epoch (`total − 1`) runs just
    /// above `min_lr`, exactly as with PyTorch. Past `T` the rate stays at `min_lr`
    /// (PyTorch's closed form would rise again).
    Cosine {
        /// Epochs of the whole run, warm-up included.
        total: usize,
        /// The rate the annealing ends at.
        min_lr: f32,
    },
}

/// Learning rate per epoch (epochs count from 0).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Scheduler {
    /// The rate the warm-up rises to and the schedule starts from.
    pub base_lr: f32,
    /// What follows the warm-up.
    pub schedule: LrSchedule,
    /// Linear warm-up: epoch `k < warmup_epochs` runs at `base_lr · (k + 1) / (warmup_epochs + 1)`
    /// (never zero, strictly rising), and the schedule starts at `base_lr` right after.
    pub warmup_epochs: usize,
}

impl Scheduler {
    /// A scheduler; rates are computed on demand by [`Scheduler::lr_at`].
    pub fn new(base_lr: f32, schedule: LrSchedule, warmup_epochs: usize) -> Scheduler {
        Scheduler { base_lr, schedule, warmup_epochs }
    }

    /// The learning rate of `epoch`.
    pub fn lr_at(&self, epoch: usize) -> f32 {
        let base = self.base_lr as f64;
        let w = self.warmup_epochs;
        if epoch < w {
            return (base * (epoch + 1) as f64 / (w + 1) as f64) as f32;
        }
        let e = epoch - w;
        let lr = match self.schedule {
            LrSchedule::Constant => base,
            LrSchedule::Step { step_size, gamma } => base * (gamma as f64).powi((e / step_size.max(1)) as i32),
            LrSchedule::Cosine { total, min_lr } => {
                let t = total.saturating_sub(w);
                let min = min_lr as f64;
                if t == 0 || e >= t {
                    min
                } else {
                    min + (base - min) * (1.0 + (std::f64::consts::PI * e as f64 / t as f64).cos()) / 2.0
                }
            }
        };
        lr as f32
    }

    /// Set the optimizer's learning rate for `epoch`; returns it.
    pub fn apply(&self, opt: &mut dyn Optimizer, epoch: usize) -> f32 {
        let lr = self.lr_at(epoch);
        opt.set_lr(lr);
        lr
    }
}
