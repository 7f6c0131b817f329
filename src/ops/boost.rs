//! AUG's fused residual-boosting loss (see shaders/boost.wgsl for the formulas).
use super::{bytes_of, expect_f32, grid};
use crate::autograd::BackwardOp;
use crate::error::{Error, Result};
use crate::gpu::{Access, Kernel, Shader};
use crate::tensor::{DType, Tensor};

const K_BOOST: Kernel = Kernel::new(Shader::Boost, "boost_loss", &[Access::Read, Access::Read, Access::ReadWrite, Access::ReadWrite, Access::ReadWrite], &Params::LAYOUT);
/// Every kernel of this file (for the interface test, `tests/gpu/kernels.rs`).
pub(crate) const KERNELS: &[Kernel] = &[K_BOOST];

crate::gpu::gpu_params! {
    struct Params as "Params" {
        n: u32,
        t: u32,
        k: u32,
        paper: u32,
        lambda: f32,
        inv_n: f32,
        _p: [u32; 2],
    }
}

/// Which loss AUG trains with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BoostForm {
    /// ε + ε_all + ε_pre, the residual target y − λ·y⊙p_pre differentiated through p_pre.
    Paper,
    /// CE(F_t) + CE(F_{t−1}) + CE(f_t) − λ·CE(f_t, y⊙stopgrad(p_{t−1})) (the official code).
    Code,
}

impl std::str::FromStr for BoostForm {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "paper" => Ok(BoostForm::Paper),
            "code" => Ok(BoostForm::Code),
            _ => Err(format!("unknown boosting loss form {s:?}; allowed: paper, code")),
        }
    }
}

impl std::fmt::Display for BoostForm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            BoostForm::Paper => "paper",
            BoostForm::Code => "code",
        })
    }
}

struct BoostBack {
    grad: Tensor,
}

impl BackwardOp for BoostBack {
    fn name(&self) -> &'static str {
        "boost_loss"
    }
    fn backward(&self, g: &Tensor, _inputs: &[Tensor]) -> Result<Vec<Option<Tensor>>> {
        // the kernel already produced d(mean loss)/d logits; scale by the upstream scalar
        Ok(vec![Some(super::elementwise::mul(&self.grad, g)?), None])
    }
}

/// The per-modality AUG loss from the stacked learner logits `logits` [N, T, K] (learner t's
/// logits at `[:, t, :]`, the newest last) and labels (u32 `[N]`). Returns the batch-mean loss
/// `[1]` (differentiable w.r.t. `logits`) and each sample's confidence `softmax(Σ_t f_t)[y]` `[N]`
/// (not differentiable), all computed in one kernel launch.
pub fn boost_loss(logits: &Tensor, labels: &Tensor, lambda: f32, form: BoostForm) -> Result<(Tensor, Tensor)> {
    expect_f32("boost_loss", &[logits])?;
    if logits.dims() != 3 {
        return Err(Error::shape("boost_loss", format!("logits must be [N, T, K], got {:?}", logits.shape())));
    }
    let (n, t, k) = (logits.dim(0), logits.dim(1), logits.dim(2));
    if labels.dtype() != DType::U32 || labels.shape() != [n] {
        return Err(Error::shape("boost_loss", format!("labels must be u32 [{n}], got {:?} {:?}", labels.dtype(), labels.shape())));
    }
    if t == 0 || k == 0 || n == 0 {
        return Err(Error::shape("boost_loss", format!("empty logits {:?}", logits.shape())));
    }
    if !lambda.is_finite() {
        return Err(Error::config("method.aug.lambda", format!("must be finite, got {lambda}")));
    }
    let gpu = logits.gpu();
    let grad = Tensor::empty(gpu, logits.shape(), DType::F32)?;
    let per = Tensor::empty(gpu, &[n], DType::F32)?;
    let conf = Tensor::empty(gpu, &[n], DType::F32)?;
    let p = Params {
        n: n as u32,
        t: t as u32,
        k: k as u32,
        paper: (form == BoostForm::Paper) as u32,
        lambda,
        inv_n: 1.0 / n as f32,
        _p: [0; 2],
    };
    gpu.dispatch(
        &K_BOOST,
        &[],
        bytes_of(&p),
        &[logits.buffer(), labels.buffer(), grad.buffer(), per.buffer(), conf.buffer()],
        grid(gpu, n, 64),
    )?;
    let loss = {
        let _ng = crate::autograd::no_grad();
        super::reduce::mean_all(&per)?
    };
    let loss = loss.with_grad_fn(&[logits, labels], || Box::new(BoostBack { grad }));
    Ok((loss, conf))
}
