//! Convolutions fused with the batch norm, residual and ReLU around them:
//! - [`conv2d_inference`]: conv → bias → batch norm with fixed statistics → + residual →
//!   ReLU in the GEMM's epilogue, for forwards that record no gradient (evaluation): no
//!   pass over the activation after the convolution's own store;
//! - [`conv2d_after_bn_relu`]: a convolution whose input is `relu(batch_norm(y))`,
//!   recomputed in the backward instead of saved (`model.recompute`);
//! - [`conv2d_bn_partials`]: a training forward that also gives the batch norm after it its
//!   partial statistics, from the epilogue, so the statistics take no pass over y.
//!
//! In conv → BN → ReLU → conv the second convolution saves its input h = relu(bn(y)) for its
//! weight gradient, and batch norm saves y: two activations of the same size live from the
//! forward to the backward. [`conv2d_after_bn_relu`] saves only y (and the per-channel statistics): the
//! backward normalises y again (one element-wise pass, then ReLU) to rebuild h, runs the
//! convolution's backward with it, drops it, and goes on through ReLU and batch norm. The
//! rebuilt h has the bits of the forward's (the same kernels on the same values), so every
//! gradient is bit-identical to the unfused ops'; the price is two element-wise passes per
//! step over h.
use super::{check, conv2d_recorded, forward, forward_ex, half_output, Conv2dBack, Conv2dParams, ConvKernel, Geom};
use crate::autograd::BackwardOp;
use crate::error::{Error, Result};
use crate::ops::elementwise::{relu, relu_backward_in_place};
use crate::ops::norm::{batch_norm_given, batch_norm_rule, BatchNormBack, BatchNormPartials};
use crate::tensor::Tensor;

/// What [`conv2d_inference`]'s epilogue applies after the bias, in this order.
#[derive(Clone, Copy, Default)]
pub struct ConvEpilogue<'a> {
    /// Batch norm with fixed statistics: (stats `[2, O]` (mean, 1/sqrt(var + eps)), weight
    /// `[O]`, bias `[O]`), computed as [`batch_norm_apply`](crate::ops::batch_norm_apply) does.
    pub batch_norm: Option<(&'a Tensor, &'a Tensor, &'a Tensor)>,
    /// Added next: a tensor of the output's shape.
    pub residual: Option<&'a Tensor>,
    /// max(·, 0) last.
    pub relu: bool,
}

/// `conv2d(x, w, bias, p, w_scale)`, then `epi`, all in the convolution's epilogue: the
/// values of the separate ops (batch norm as its kernel computes it), for forwards that
/// need no gradient. Recording is refused: an error if gradients are being recorded and any
/// input requires one (the epilogue has no backward).
pub fn conv2d_inference(x: &Tensor, w: &Tensor, bias: Option<&Tensor>, p: Conv2dParams, w_scale: Option<&Tensor>, epi: ConvEpilogue) -> Result<Tensor> {
    conv2d_inference_on_tile(x, w, bias, p, w_scale, epi, None)
}

/// [`conv2d_inference`] on tile `tile` (None: the chosen one). For the tests of each tile.
#[doc(hidden)]
pub fn conv2d_inference_on_tile(x: &Tensor, w: &Tensor, bias: Option<&Tensor>, p: Conv2dParams, w_scale: Option<&Tensor>, epi: ConvEpilogue, tile: Option<crate::gpu::ConvTile>) -> Result<Tensor> {
    const OP: &str = "conv2d_inference";
    let mut g = check(x, w, bias, &p, w_scale)?;
    g.kernel = tile.map(ConvKernel::Tile);
    let mut extra: Vec<(&str, &Tensor, Vec<usize>)> = Vec::new();
    if let Some((stats, gw, gb)) = epi.batch_norm {
        extra.extend([("batch-norm stats", stats, vec![2, g.o]), ("batch-norm weight", gw, vec![g.o]), ("batch-norm bias", gb, vec![g.o])]);
    }
    if let Some(r) = epi.residual {
        extra.push(("residual", r, vec![g.n, g.o, g.ho, g.wo]));
    }
    for (what, t, want) in &extra {
        crate::ops::expect_f32(OP, &[t])?;
        crate::ops::expect_same_gpu(OP, &[x, t])?;
        if t.shape() != want.as_slice() {
            return Err(Error::shape(OP, format!("{what} has shape {:?}, expected {want:?} for x {:?} and w {:?}", t.shape(), x.shape(), w.shape())));
        }
    }
    let recording = crate::autograd::grad_enabled();
    let tracked = [Some(x), Some(w), bias, w_scale].into_iter().flatten().chain(extra.iter().map(|e| e.1)).any(|t| t.is_tracked());
    if recording && tracked {
        return Err(Error::Other(format!("{OP}: an input requires a gradient while gradients are recorded; the fused epilogue has no backward (use conv2d and the separate ops)")));
    }
    forward(&g, x, w, bias, w_scale, &epi)
}

/// The forward alone on kernel `kernel` (no gradient is recorded): `conv2d(x, w, bias, p)`
/// then `epi`, and with `partials` (only with an epilogue of the bias alone) batch norm's
/// partial statistics of y, y then f16 under mixed precision as [`conv2d_bn_partials`] gives
/// it. For the tests of each kernel, the cooperative-matrix one above all, which runs
/// nothing else.
#[doc(hidden)]
pub fn conv2d_forward_on(x: &Tensor, w: &Tensor, bias: Option<&Tensor>, p: Conv2dParams, epi: ConvEpilogue, partials: bool, kernel: ConvKernel) -> Result<(Tensor, Option<BatchNormPartials>)> {
    let g = Geom { kernel: Some(kernel), round_y: half_output(partials), ..check(x, w, bias, &p, None)? };
    let _ng = crate::autograd::no_grad();
    let (y, part) = forward_ex(&g, x, w, bias, None, &epi, partials)?;
    let y = if g.round_y { crate::ops::cast(&y, crate::DType::F16)? } else { y }; // odd H*W: f32 so far
    let values = y.dim(0) * y.dim(2) * y.dim(3);
    Ok((y, part.map(|(part, rows)| BatchNormPartials { part, rows, values })))
}

/// [`conv2d`](crate::ops::conv2d) (the same op: its values, its gradients), and the partial
/// statistics a batch norm with batch statistics after it needs
/// ([`batch_norm_stats_from_partials`](crate::ops::batch_norm_stats_from_partials)): each
/// workgroup reduces its output tile per channel (mean, then M2 about it) from its registers
/// before the store, so the statistics cost no pass over y. Under mixed precision
/// ([`crate::autograd::autocast`]) y comes back f16, the largest tensor a training step
/// keeps for its backward at half the bytes; the epilogue rounds it to f16 values before the
/// statistics, which are therefore those of the stored values.
pub fn conv2d_bn_partials(x: &Tensor, w: &Tensor, bias: Option<&Tensor>, p: Conv2dParams, w_scale: Option<&Tensor>) -> Result<(Tensor, BatchNormPartials)> {
    conv2d_bn_partials_on_tile(x, w, bias, p, w_scale, None)
}

/// [`conv2d_bn_partials`] on tile `tile` (None: the chosen one). For the tests of each tile.
#[doc(hidden)]
pub fn conv2d_bn_partials_on_tile(x: &Tensor, w: &Tensor, bias: Option<&Tensor>, p: Conv2dParams, w_scale: Option<&Tensor>, tile: Option<crate::gpu::ConvTile>) -> Result<(Tensor, BatchNormPartials)> {
    let (y, part) = conv2d_recorded(x, w, bias, p, w_scale, tile.map(ConvKernel::Tile), true)?;
    let (part, rows) = part.ok_or_else(|| Error::Other("conv2d: no partial statistics".into()))?;
    let values = y.dim(0) * y.dim(2) * y.dim(3);
    Ok((y, BatchNormPartials { part, rows, values }))
}

/// The batch norm + ReLU in front of [`conv2d_after_bn_relu`]'s convolution.
#[derive(Clone, Copy)]
pub struct BnRelu<'a> {
    /// Scale γ `[C]`.
    pub weight: &'a Tensor,
    /// Shift β `[C]`.
    pub bias: &'a Tensor,
    /// `[2, C]`: mean and 1/sqrt(var + eps), as [`batch_norm_stats`](crate::ops::batch_norm_stats) gives.
    pub stats: &'a Tensor,
    /// The statistics are y's own batch statistics (training), so y's gradient includes
    /// their dependence on y; otherwise they are constants (running or given statistics).
    pub batch_stats: bool,
}

/// `conv2d(relu(batch_norm_apply(y, bn)), w, bias, p, w_scale)` with the same values and
/// gradients as those ops one after another (inputs y, bn's weight and bias, w, bias and
/// w_scale), holding only y until the backward instead of y and the convolution's input.
pub fn conv2d_after_bn_relu(y: &Tensor, bn: BnRelu, w: &Tensor, bias: Option<&Tensor>, p: Conv2dParams, w_scale: Option<&Tensor>) -> Result<Tensor> {
    Ok(conv2d_after_bn_relu_ex(y, bn, w, bias, p, w_scale, false)?.0)
}

/// [`conv2d_after_bn_relu`], and with `partials` the batch-norm partial statistics of its
/// output from the epilogue (as [`conv2d_bn_partials`] gives them, f16 output under mixed
/// precision included), for a batch norm with batch statistics after it. y may be f16.
pub fn conv2d_after_bn_relu_ex(y: &Tensor, bn: BnRelu, w: &Tensor, bias: Option<&Tensor>, p: Conv2dParams, w_scale: Option<&Tensor>, partials: bool) -> Result<(Tensor, Option<BatchNormPartials>)> {
    let rule = batch_norm_rule(y, bn.weight, bn.bias, bn.stats, bn.batch_stats)?;
    let h = {
        let _ng = crate::autograd::no_grad();
        relu(&batch_norm_given(y, bn.weight, bn.bias, bn.stats)?)?
    };
    let g = check(&h, w, bias, &p, w_scale)?;
    let half = half_output(partials);
    let (out, part) = forward_ex(&Geom { round_y: half, ..g }, &h, w, bias, w_scale, &ConvEpilogue::default(), partials)?;
    let values = out.dim(0) * out.dim(2) * out.dim(3);
    let part = part.map(|(part, rows)| BatchNormPartials { part, rows, values });
    let mut inputs: Vec<&Tensor> = vec![y, bn.weight, bn.bias, w];
    inputs.extend(bias);
    inputs.extend(w_scale);
    let out = out.with_grad_fn(&inputs, || {
        Box::new(BnReluConvBack {
            bn: rule,
            bn_bias: bn.bias.detach(),
            g,
            w: w.detach(),
            scale: w_scale.map(|s| s.detach()),
            has_bias: bias.is_some(),
        })
    });
    Ok((if half { crate::ops::cast(&out, crate::DType::F16)? } else { out }, part))
}

struct BnReluConvBack {
    /// batch norm's rule: holds y, γ and the statistics
    bn: BatchNormBack,
    bn_bias: Tensor,
    g: Geom,
    w: Tensor,
    scale: Option<Tensor>,
    has_bias: bool,
}

impl BackwardOp for BnReluConvBack {
    fn name(&self) -> &'static str {
        "conv2d_after_bn_relu"
    }
    fn backward(&self, dout: &Tensor, inputs: &[Tensor]) -> Result<Vec<Option<Tensor>>> {
        let (bn_inputs, conv_rest) = inputs.split_at(3);
        // h again, from the saved y (the forward's kernels on the forward's values)
        let (y, gamma, stats) = self.bn.saved();
        let h = relu(&batch_norm_given(y, gamma, &self.bn_bias, stats)?)?;
        // the convolution's backward sees h as an input that needs a gradient exactly when
        // something in front of it does (a handle of one of y, γ, β)
        let h_handle = bn_inputs.iter().find(|t| t.is_tracked()).unwrap_or(&bn_inputs[0]).clone();
        let conv_inputs: Vec<Tensor> = std::iter::once(h_handle).chain(conv_rest.iter().cloned()).collect();
        let conv = Conv2dBack { g: self.g, x: h, w: self.w.clone(), scale: self.scale.clone(), has_bias: self.has_bias };
        let mut conv_grads = conv.backward(dout, &conv_inputs)?;
        let dh = conv_grads.remove(0);
        let mut out = match dh {
            Some(dh) => {
                let dz = relu_backward_in_place(&conv.x, &dh)?;
                drop(conv); // h is not needed past this point
                // dz is dh's storage or a new tensor, read by nothing after batch norm's
                // backward: dx may be written over it
                self.bn.backward_over(&dz, bn_inputs, true)?
            }
            None => vec![None, None, None],
        };
        out.extend(conv_grads);
        Ok(out)
    }
}
