//! Joint training: every encoder trained end-to-end through one fusion head with one
//! cross-entropy loss (the "naive" baseline that modality imbalance hurts).
use super::{build_encoders, encode_all, stats_from_sums, view_stats, Accum, DeviceBatch, EpochStats, Method, Prediction};
use crate::autograd::Gradients;
use super::config::MethodSetup;
use crate::data::ModalitySpec;
use crate::error::Result;
use crate::gpu::Gpu;
use crate::nn::{Ctx, Encoder, Fusion, Module};
use crate::ops;
use crate::optim::{Optimizer, Param};
use crate::tensor::Tensor;
use rand::rngs::StdRng;

/// Joint training: the encoders and one fusion head, fused cross-entropy only.
pub struct Joint {
    pub(crate) encoders: Vec<Box<dyn Encoder>>,
    pub(crate) fusion: Fusion,
    acc: Accum,
    m: usize,
}

impl Joint {
    /// Build the model for these modalities and `classes` outputs from `cfg`, drawing the initial
    /// weights from `rng`; errors name a bad config field.
    pub fn new(gpu: &Gpu, cfg: &MethodSetup, specs: &[ModalitySpec], classes: usize, rng: &mut StdRng) -> Result<Joint> {
        let encoders = build_encoders(gpu, cfg, specs, rng)?;
        let dims: Vec<usize> = encoders.iter().map(|e| e.out_dim()).collect();
        let fusion = Fusion::new(gpu, "fusion", cfg.method.fusion, &dims, classes, cfg.model.fusion_hidden, rng)?;
        let m = specs.len();
        Ok(Joint { encoders, fusion, acc: Accum::new(1 + 2 * m), m })
    }

    /// Forward + backward of the fused loss. Returns the gradients, the unimodal views
    /// (detached) and records the step's statistics.
    pub(crate) fn forward_backward(&mut self, batch: &DeviceBatch) -> Result<(Gradients, Vec<Tensor>)> {
        let ctx = Ctx::train();
        let feats = encode_all(&self.encoders, &batch.inputs, &ctx)?;
        let logits = self.fusion.forward(&feats, &ctx)?;
        let loss = ops::cross_entropy(&logits, ops::Target::Hard(&batch.labels), None)?;
        let grads = loss.backward()?;
        let views = {
            let _ng = crate::autograd::no_grad();
            (0..self.m).map(|i| self.fusion.unimodal(i, &feats[i].detach(), &ctx)).collect::<Result<Vec<_>>>()?
        };
        let vs = view_stats(&views, &batch.labels)?;
        let total = ops::scale(&loss.detach(), batch.n as f32)?;
        self.acc.record(&[&total.reshape(&[1])?, &vs], batch.n)?;
        Ok((grads, views))
    }

    pub(crate) fn encoder_params(&self, m: usize) -> Vec<Param> {
        self.encoders[m].params()
    }
}

impl Method for Joint {
    fn name(&self) -> &'static str {
        "joint"
    }
    fn params(&self) -> Vec<Param> {
        let mut v: Vec<Param> = self.encoders.iter().flat_map(|e| e.params()).collect();
        v.extend(self.fusion.params());
        v
    }
    fn buffers(&self) -> Vec<(String, Tensor)> {
        self.encoders.iter().flat_map(|e| e.buffers()).collect()
    }
    fn train_step(&mut self, batch: &DeviceBatch, opt: &mut dyn Optimizer, _epoch: usize) -> Result<()> {
        let (grads, _) = self.forward_backward(batch)?;
        opt.step(&grads)
    }
    fn features(&self, inputs: &[Tensor]) -> Result<Vec<Option<Tensor>>> {
        super::eval_features(&self.encoders, inputs)
    }
    fn predict(&self, inputs: &[Tensor]) -> Result<Prediction> {
        let _ng = crate::autograd::no_grad();
        let ctx = Ctx::eval();
        let feats = encode_all(&self.encoders, inputs, &ctx)?;
        let fused = self.fusion.forward(&feats, &ctx)?;
        let per_modality = (0..self.m).map(|i| self.fusion.unimodal(i, &feats[i], &ctx).map(Some)).collect::<Result<_>>()?;
        Ok(Prediction { fused, per_modality })
    }
    fn end_epoch(&mut self, _epoch: usize, _opt: &mut dyn Optimizer) -> Result<EpochStats> {
        let samples = self.acc.samples;
        let sums = self.acc.take()?;
        Ok(stats_from_sums(&sums, self.m, samples))
    }
}
