//! Modules: parameters by name, train/eval mode through [`Ctx`], encoders that expose their
//! per-depth features (AIM), and room for per-parameter weight scales (AIM's masks).
mod attention;
mod cnn;
mod fusion;
pub mod init;
mod mmtm;
mod param;
mod resnet;

pub use attention::{MultiHeadAttention, TransformerConfig, TransformerEncoder, TransformerLayer};
pub use cnn::{MlpEncoder, SmallCnn};
pub use fusion::{Fusion, FusionKind};
pub use init::Init;
pub use mmtm::Mmtm;
pub use param::Param;
pub use resnet::{BasicBlock, ResNet18};

use crate::error::{Error, Result};
use crate::gpu::Gpu;
use crate::ops;
use crate::tensor::Tensor;
use rand::rngs::StdRng;
use rand::Rng;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// How a forward pass runs: train or eval mode, whether batch-norm running statistics are
/// updated, which statistics batch norm uses, and optional element-wise weight scales by
/// parameter name (AIM's auxiliary blocks: the same weights, scaled inside the conv/matmul
/// kernels).
#[derive(Clone, Default)]
pub struct Ctx {
    /// Training mode: batch norm normalises with the batch's statistics (see [`BnStats::Mode`]).
    pub training: bool,
    /// In training mode, update batch norm's running statistics (off for forwards that must not
    /// disturb them, e.g. extra passes of a step).
    pub update_stats: bool,
    /// Element-wise weight scales by full parameter name, applied inside the conv/matmul kernels
    /// (AIM's masks); `None`: no scaling.
    pub weight_scales: Option<Arc<HashMap<String, Tensor>>>,
    /// Seed for dropout; the offset advances per call site through `dropout_offset`.
    pub seed: u64,
    /// Which statistics batch norm uses.
    pub bn: BnStats,
    /// When set, every batch-norm layer stores the statistics it normalised with here, by
    /// layer name (for a later forward of the same step with [`BnStats::Given`]).
    pub bn_record: Option<Arc<Mutex<HashMap<String, Tensor>>>>,
}

/// The statistics batch norm normalises with.
#[derive(Clone, Default)]
pub enum BnStats {
    /// By mode: the batch's own in training (updating the running ones when
    /// `update_stats`), the running ones in eval.
    #[default]
    Mode,
    /// The running statistics in either mode, left unchanged.
    Running,
    /// Statistics recorded by an earlier forward (`Ctx::bn_record`), by layer name:
    /// `[2, C]` mean and 1/sqrt(var + eps), used as constants.
    Given(Arc<HashMap<String, Tensor>>),
}

impl Ctx {
    /// Training mode, updating running statistics.
    pub fn train() -> Ctx {
        Ctx { training: true, update_stats: true, ..Default::default() }
    }
    /// Eval mode: running statistics, no weight scales.
    pub fn eval() -> Ctx {
        Ctx::default()
    }
    /// The weight scale of the parameter named `name`, if any.
    pub fn scale_for(&self, name: &str) -> Option<&Tensor> {
        self.weight_scales.as_ref().and_then(|m| m.get(name))
    }
}

/// Anything with named parameters (and non-trainable buffers such as running statistics).
pub trait Module {
    /// Every trainable parameter, with its full name.
    fn params(&self) -> Vec<Param>;
    /// Non-trainable state saved in checkpoints (batch norm's running statistics), by full name.
    /// None by default.
    fn buffers(&self) -> Vec<(String, Tensor)> {
        Vec::new()
    }
}

/// A modality encoder: input batch -> pooled features [N, D], with per-depth outputs.
pub trait Encoder: Module + Send + Sync {
    /// Width D of the pooled features.
    fn out_dim(&self) -> usize;
    /// Number of depths (ResNet18: stem + 4 stages = 5).
    fn num_depths(&self) -> usize;
    /// Pooled features and the output of every depth.
    fn forward_depths(&self, x: &Tensor, ctx: &Ctx) -> Result<(Tensor, Vec<Tensor>)>;
    /// Pooled features `[N, D]`.
    fn forward(&self, x: &Tensor, ctx: &Ctx) -> Result<Tensor> {
        Ok(self.forward_depths(x, ctx)?.0)
    }
    /// Continue from depth `d`'s output to the pooled features (the "rest" of the network).
    fn forward_from(&self, h: &Tensor, depth: usize, ctx: &Ctx) -> Result<Tensor>;
    /// The depth a parameter belongs to (by its full name), if any.
    fn depth_of(&self, param_name: &str) -> Option<usize>;
    /// Depth `depth` alone: from the input (depth 0) or depth `depth − 1`'s output to depth
    /// `depth`'s output, so that a method can act between depths (Greedy's MMTM modules).
    /// Implemented by the convolutional encoders (whose pooled features are the global
    /// average of the last depth's output); the others answer with an error naming
    /// `model.encoder`.
    fn forward_depth(&self, _h: &Tensor, _depth: usize, _ctx: &Ctx) -> Result<Tensor> {
        Err(Error::config("model.encoder", "this encoder does not run one depth at a time; use small_cnn or resnet18"))
    }
}

/// Normal samples with the given std (host generated, seeded).
pub fn normal_init(rng: &mut StdRng, n: usize, std: f32) -> Vec<f32> {
    (0..n)
        .map(|_| {
            let u1: f32 = rng.random::<f32>().max(1e-12);
            let u2: f32 = rng.random::<f32>();
            std * (-2.0 * u1.ln()).sqrt() * (2.0 * std::f32::consts::PI * u2).cos()
        })
        .collect()
}

pub(crate) fn param(gpu: &Gpu, name: String, data: &[f32], shape: &[usize]) -> Result<Param> {
    Ok(Param { name, tensor: Tensor::from_slice(gpu, data, shape)?.requires_grad() })
}

pub(crate) fn join(prefix: &str, name: &str) -> String {
    if prefix.is_empty() {
        name.to_string()
    } else {
        format!("{prefix}.{name}")
    }
}

/// y = x·Wᵀ + b, W [out, in] (xavier-normal init, zero bias).
pub struct Linear {
    /// Weight `[out_dim, in_dim]`, named `<name>.weight`.
    pub weight: Param,
    /// Bias `[out_dim]`, named `<name>.bias`, when the layer has one.
    pub bias: Option<Param>,
    /// Input features.
    pub in_dim: usize,
    /// Output features.
    pub out_dim: usize,
}

impl Linear {
    /// The same layer with its parameters detached: shares the weights, records no gradient
    /// for them (the input still gets one).
    pub fn frozen(&self) -> Linear {
        let f = |p: &Param| Param { name: p.name.clone(), tensor: p.tensor.detach() };
        Linear { weight: f(&self.weight), bias: self.bias.as_ref().map(f), in_dim: self.in_dim, out_dim: self.out_dim }
    }
    /// Xavier-normal weight (std √(2 / (in + out))) from `rng`; zero bias when `bias`.
    pub fn new(gpu: &Gpu, name: &str, in_dim: usize, out_dim: usize, bias: bool, rng: &mut StdRng) -> Result<Linear> {
        let std = (2.0 / (in_dim + out_dim) as f32).sqrt();
        let w = normal_init(rng, in_dim * out_dim, std);
        Ok(Linear {
            weight: param(gpu, join(name, "weight"), &w, &[out_dim, in_dim])?,
            bias: if bias { Some(param(gpu, join(name, "bias"), &vec![0.0; out_dim], &[out_dim])?) } else { None },
            in_dim,
            out_dim,
        })
    }
    /// x `[..., in_dim]` → `[..., out_dim]`, with the weight scaled by `ctx`'s scale for it, if
    /// any.
    pub fn forward(&self, x: &Tensor, ctx: &Ctx) -> Result<Tensor> {
        let s = ctx.scale_for(&self.weight.name);
        let (x, w) = (gemm_operand(x)?, gemm_operand(&self.weight.tensor)?);
        ops::linear(&x, &w, self.bias.as_ref().map(|b| &b.tensor), s)
    }
    /// `relu(forward(x))` as one kernel ([`ops::linear_relu`]): the same values, one pass fewer.
    pub fn forward_relu(&self, x: &Tensor, ctx: &Ctx) -> Result<Tensor> {
        let s = ctx.scale_for(&self.weight.name);
        let (x, w) = (gemm_operand(x)?, gemm_operand(&self.weight.tensor)?);
        ops::linear_relu(&x, &w, self.bias.as_ref().map(|b| &b.tensor), s)
    }
}

/// An operand of a layer's GEMM (linear or convolution): an f16 copy under mixed precision
/// ([`crate::autograd::autocast`]; the cast passes gradients back to the f32 tensor), else
/// the tensor itself.
fn gemm_operand(t: &Tensor) -> Result<Tensor> {
    if crate::autograd::autocast_enabled() && t.dtype() == crate::DType::F32 {
        ops::cast(t, crate::DType::F16)
    } else {
        Ok(t.clone())
    }
}

impl Module for Linear {
    fn params(&self) -> Vec<Param> {
        let mut v = vec![self.weight.clone()];
        v.extend(self.bias.clone());
        v
    }
}

/// 2-D convolution (kaiming-normal fan_out init, as torchvision's ResNet).
pub struct Conv2d {
    /// Weight `[cout, cin, k, k]`, named `<name>.weight`.
    pub weight: Param,
    /// Bias `[cout]`, when the layer has one.
    pub bias: Option<Param>,
    /// Stride and padding (square), dilation 1.
    pub p: ops::Conv2dParams,
}

impl Conv2d {
    #[allow(clippy::too_many_arguments)]
    /// A `k`×`k` convolution, square `stride` and `padding`; weights drawn from `rng` with std √(2
    /// / (cout·k²)).
    pub fn new(
        gpu: &Gpu,
        name: &str,
        cin: usize,
        cout: usize,
        k: usize,
        stride: usize,
        padding: usize,
        bias: bool,
        rng: &mut StdRng,
    ) -> Result<Conv2d> {
        let fan_out = cout * k * k;
        let std = (2.0 / fan_out as f32).sqrt();
        let w = normal_init(rng, cout * cin * k * k, std);
        Ok(Conv2d {
            weight: param(gpu, join(name, "weight"), &w, &[cout, cin, k, k])?,
            bias: if bias { Some(param(gpu, join(name, "bias"), &vec![0.0; cout], &[cout])?) } else { None },
            p: ops::Conv2dParams { stride: (stride, stride), padding: (padding, padding), dilation: (1, 1) },
        })
    }
    /// x `[N, cin, H, W]` → `[N, cout, HO, WO]`, with the weight scaled by `ctx`'s scale for it, if
    /// any.
    pub fn forward(&self, x: &Tensor, ctx: &Ctx) -> Result<Tensor> {
        let s = ctx.scale_for(&self.weight.name);
        let (x, w) = (gemm_operand(x)?, gemm_operand(&self.weight.tensor)?);
        ops::conv2d(&x, &w, self.bias.as_ref().map(|b| &b.tensor), self.p, s)
    }
    /// [`forward`](Self::forward), and where `bn` will normalise the output with its batch
    /// statistics under `ctx`, their partial sums from the convolution's epilogue
    /// ([`ops::conv2d_bn_partials`]).
    pub fn forward_partials(&self, x: &Tensor, bn: &BatchNorm2d, ctx: &Ctx) -> Result<(Tensor, Option<ops::BatchNormPartials>)> {
        if !bn.batch_stats_wanted(ctx) {
            return Ok((self.forward(x, ctx)?, None));
        }
        let s = ctx.scale_for(&self.weight.name);
        let (x, w) = (gemm_operand(x)?, gemm_operand(&self.weight.tensor)?);
        let (y, partials) = ops::conv2d_bn_partials(&x, &w, self.bias.as_ref().map(|b| &b.tensor), self.p, s)?;
        Ok((y, Some(partials)))
    }
    /// `bn.forward(self.forward(x))`, then `+ residual`, then ReLU if `relu`. Where no
    /// gradient is recorded and batch norm's statistics do not depend on the input
    /// (evaluation), all of it runs in the convolution's epilogue
    /// ([`ops::conv2d_inference`]); otherwise the convolution, then batch norm, the sum and
    /// ReLU as one kernel ([`ops::batch_norm_act`]), with batch statistics (training)
    /// completed from the partial sums the convolution's epilogue leaves
    /// ([`ops::conv2d_bn_partials`]) instead of a pass of their own over its output.
    /// `to_gemm`: the output feeds only other layers' GEMMs, so under mixed precision it is
    /// stored f16, the operand those GEMMs would cast it to (no f32 copy, no cast).
    pub fn forward_bn(&self, x: &Tensor, bn: &BatchNorm2d, residual: Option<&Tensor>, relu: bool, to_gemm: bool, ctx: &Ctx) -> Result<Tensor> {
        let s = ctx.scale_for(&self.weight.name);
        let bias = self.bias.as_ref().map(|b| &b.tensor);
        if !crate::autograd::grad_enabled() {
            if let Some(stats) = bn.fixed_stats(ctx)? {
                let epi = ops::ConvEpilogue { batch_norm: Some((&stats, &bn.weight.tensor, &bn.bias.tensor)), residual, relu };
                let (x, w) = (gemm_operand(x)?, gemm_operand(&self.weight.tensor)?);
                return ops::conv2d_inference(&x, &w, bias, self.p, s, epi);
            }
        }
        let (y, partials) = self.forward_partials(x, bn, ctx)?;
        let half = to_gemm && crate::autograd::autocast_enabled();
        let out = if half { crate::DType::F16 } else { crate::DType::F32 };
        bn.forward_act(&y, partials.as_ref(), ops::BnAct { residual, relu, out }, ctx)
    }
    /// `self.forward(relu(bn.forward(y)))`, the same values and gradients, holding only y
    /// (not the convolution's input) until the backward: batch norm and ReLU run again there
    /// ([`ops::conv2d_after_bn_relu`]). `partials`: y's batch-norm partial statistics, if
    /// the layer that produced y left them ([`Conv2d::forward_partials`]); the output's, for
    /// `next` (the batch norm after this convolution), come back where it will want them.
    pub fn forward_after_bn_relu(&self, y: &Tensor, partials: Option<&ops::BatchNormPartials>, bn: &BatchNorm2d, next: &BatchNorm2d, ctx: &Ctx) -> Result<(Tensor, Option<ops::BatchNormPartials>)> {
        let (stats, batch_stats) = bn.stats_from(y, partials, ctx)?;
        let pre = ops::BnRelu { weight: &bn.weight.tensor, bias: &bn.bias.tensor, stats: &stats, batch_stats };
        let s = ctx.scale_for(&self.weight.name);
        let bias = self.bias.as_ref().map(|b| &b.tensor);
        // y stays f32: the rebuilt input relu(bn(y)) is made inside, and never saved
        ops::conv2d_after_bn_relu_ex(y, pre, &gemm_operand(&self.weight.tensor)?, bias, self.p, s, next.batch_stats_wanted(ctx))
    }
}

impl Module for Conv2d {
    fn params(&self) -> Vec<Param> {
        let mut v = vec![self.weight.clone()];
        v.extend(self.bias.clone());
        v
    }
}

/// Batch norm over channels (weight 1, bias 0; running mean 0, var 1; momentum 0.1).
pub struct BatchNorm2d {
    /// Scale γ `[C]`.
    pub weight: Param,
    /// Shift β `[C]`.
    pub bias: Param,
    /// Running statistics (eps 1e-5, momentum 0.1), checkpointed as buffers.
    pub state: ops::BatchNormState,
    name: String,
}

impl BatchNorm2d {
    /// Batch norm over `c` channels; parameters `<name>.weight`, `<name>.bias`, buffers
    /// `<name>.running_mean`, `<name>.running_var`.
    pub fn new(gpu: &Gpu, name: &str, c: usize) -> Result<BatchNorm2d> {
        Ok(BatchNorm2d {
            weight: param(gpu, join(name, "weight"), &vec![1.0; c], &[c])?,
            bias: param(gpu, join(name, "bias"), &vec![0.0; c], &[c])?,
            state: ops::BatchNormState {
                running_mean: Tensor::zeros(gpu, &[c])?,
                running_var: crate::ops::full(gpu, &[c], 1.0)?,
                momentum: 0.1,
                eps: 1e-5,
            },
            name: name.to_string(),
        })
    }
    /// x `[N, C, H, W]` or `[N, C]`, normalised with the statistics `ctx.bn` selects; records them
    /// in `ctx.bn_record` when set. Errors: [`BnStats::Given`] without this layer's statistics.
    pub fn forward(&self, x: &Tensor, ctx: &Ctx) -> Result<Tensor> {
        self.forward_from(x, None, ctx)
    }

    /// [`forward`](Self::forward), with x's batch statistics (where `ctx` asks for them)
    /// completed from `partials` of x (computed where x was produced) instead of a pass over x.
    pub fn forward_from(&self, x: &Tensor, partials: Option<&ops::BatchNormPartials>, ctx: &Ctx) -> Result<Tensor> {
        self.forward_act(x, partials, ops::BnAct::NONE, ctx)
    }

    /// [`forward_from`](Self::forward_from), then what `act` adds (a residual, ReLU, an f16
    /// output), in the same kernel ([`ops::batch_norm_act`]).
    pub fn forward_act(&self, x: &Tensor, partials: Option<&ops::BatchNormPartials>, act: ops::BnAct, ctx: &Ctx) -> Result<Tensor> {
        let (stats, batch) = self.stats_from(x, partials, ctx)?;
        ops::batch_norm_act(x, &self.weight.tensor, &self.bias.tensor, &stats, batch, act)
    }

    /// Whether [`forward`](Self::forward) under `ctx` normalises with the input's batch
    /// statistics (training in [`BnStats::Mode`]).
    pub fn batch_stats_wanted(&self, ctx: &Ctx) -> bool {
        matches!(ctx.bn, BnStats::Mode) && ctx.training
    }

    /// The statistics [`forward`](Self::forward) would normalise with under `ctx` when they do
    /// not depend on the input (running or given ones), else `None` (batch statistics).
    /// Computing them changes nothing.
    pub fn fixed_stats(&self, ctx: &Ctx) -> Result<Option<Tensor>> {
        match &ctx.bn {
            BnStats::Mode if ctx.training => Ok(None),
            BnStats::Mode | BnStats::Running => Ok(Some(ops::batch_norm_running_stats(&self.state)?)),
            BnStats::Given(_) => Ok(Some(self.given(ctx)?.clone())),
        }
    }

    fn given<'a>(&self, ctx: &'a Ctx) -> Result<&'a Tensor> {
        match &ctx.bn {
            BnStats::Given(map) => map.get(&self.name).ok_or_else(|| Error::Other(format!("batch norm `{}`: no recorded statistics (the recording forward did not reach this layer)", self.name))),
            _ => Err(Error::Other(format!("batch norm `{}`: no given statistics in this context", self.name))),
        }
    }

    /// The statistics `[2, C]` (mean, 1/sqrt(var + eps)) [`forward`](Self::forward) normalises
    /// x with under `ctx`, and whether they are x's batch statistics; computing them updates
    /// the running statistics and records them exactly as the forward does.
    pub fn stats(&self, x: &Tensor, ctx: &Ctx) -> Result<(Tensor, bool)> {
        self.stats_from(x, None, ctx)
    }

    /// [`stats`](Self::stats), with batch statistics completed from `partials` of x when
    /// given ([`ops::batch_norm_stats_from_partials`]).
    pub fn stats_from(&self, x: &Tensor, partials: Option<&ops::BatchNormPartials>, ctx: &Ctx) -> Result<(Tensor, bool)> {
        match &ctx.bn {
            BnStats::Mode => {}
            BnStats::Running => return Ok((ops::batch_norm_stats(x, &self.state, false)?, false)),
            BnStats::Given(_) => return Ok((self.given(ctx)?.clone(), false)),
        }
        // batch statistics without touching the running ones: computed against a copy
        let frozen;
        let state = if ctx.training && !ctx.update_stats {
            frozen = ops::BatchNormState {
                running_mean: self.state.running_mean.deep_copy()?,
                running_var: self.state.running_var.deep_copy()?,
                momentum: self.state.momentum,
                eps: self.state.eps,
            };
            &frozen
        } else {
            &self.state
        };
        let stats = match partials {
            Some(p) if ctx.training => ops::batch_norm_stats_from_partials(x, p, state)?,
            _ => ops::batch_norm_stats(x, state, ctx.training)?,
        };
        if let Some(rec) = &ctx.bn_record {
            rec.lock().map_err(|_| Error::Other("batch-norm record lock poisoned".into()))?.insert(self.name.clone(), stats.clone());
        }
        Ok((stats, ctx.training))
    }
}

impl Module for BatchNorm2d {
    fn params(&self) -> Vec<Param> {
        vec![self.weight.clone(), self.bias.clone()]
    }
    fn buffers(&self) -> Vec<(String, Tensor)> {
        vec![
            (join(&self.name, "running_mean"), self.state.running_mean.clone()),
            (join(&self.name, "running_var"), self.state.running_var.clone()),
        ]
    }
}

/// Layer norm over the last dim (weight 1, bias 0).
pub struct LayerNorm {
    /// Scale `[d]`.
    pub weight: Param,
    /// Shift `[d]`.
    pub bias: Param,
    /// Added to the variance (1e-5).
    pub eps: f32,
}

impl LayerNorm {
    /// Layer norm over a last dim of size `d`; parameters `<name>.weight`, `<name>.bias`.
    pub fn new(gpu: &Gpu, name: &str, d: usize) -> Result<LayerNorm> {
        Ok(LayerNorm {
            weight: param(gpu, join(name, "weight"), &vec![1.0; d], &[d])?,
            bias: param(gpu, join(name, "bias"), &vec![0.0; d], &[d])?,
            eps: 1e-5,
        })
    }
    /// Normalise over the last dim (no train/eval difference).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        ops::layer_norm(x, &self.weight.tensor, &self.bias.tensor, self.eps)
    }
}

impl Module for LayerNorm {
    fn params(&self) -> Vec<Param> {
        vec![self.weight.clone(), self.bias.clone()]
    }
}

/// Check a `forward_from` depth against an encoder's depth count (a typed error, not a
/// slice panic).
pub(crate) fn expect_depth(op: &'static str, depth: usize, num_depths: usize) -> Result<()> {
    if depth >= num_depths {
        return Err(Error::shape(op, format!("forward_from depth {depth} out of range: the encoder has depths 0..{num_depths}")));
    }
    Ok(())
}

/// Check an input's per-sample shape against what an encoder expects.
pub(crate) fn expect_input(op: &'static str, x: &Tensor, dims: usize) -> Result<()> {
    if x.dims() != dims {
        return Err(Error::shape(op, format!("expects a {dims}-d batch, got shape {:?}", x.shape())));
    }
    Ok(())
}
