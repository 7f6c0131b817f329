//! Unimodal baseline: one encoder and a linear head, trained alone on one modality — the
//! ceiling that modality can reach by itself.
use super::{build_encoder, stats_from_sums, view_stats, Accum, DeviceBatch, EpochStats, Method, Prediction};
use super::config::MethodSetup;
use crate::data::ModalitySpec;
use crate::error::{Error, Result};
use crate::gpu::Gpu;
use crate::nn::{Ctx, Encoder, Linear, Module};
use crate::ops;
use crate::optim::{Optimizer, Param};
use crate::tensor::Tensor;
use rand::rngs::StdRng;

/// Unimodal baseline: one encoder and a linear head on `method.modality`.
pub struct Unimodal {
    encoder: Box<dyn Encoder>,
    head: Linear,
    index: usize,
    m: usize,
    acc: Accum,
}

impl Unimodal {
    /// Build the model for these modalities and `classes` outputs from `cfg`, drawing the initial
    /// weights from `rng`; errors name a bad config field. An error when
    /// `method.modality` names no modality of the data.
    pub fn new(gpu: &Gpu, cfg: &MethodSetup, specs: &[ModalitySpec], classes: usize, rng: &mut StdRng) -> Result<Unimodal> {
        let want = cfg.method.modality.clone().unwrap_or_default();
        let index = specs.iter().position(|s| s.name == want).ok_or_else(|| {
            let names: Vec<&str> = specs.iter().map(|s| s.name.as_str()).collect();
            Error::config("method.modality", format!("no modality {want:?}; the data has {names:?}"))
        })?;
        let spec = &specs[index];
        let encoder = build_encoder(gpu, &format!("enc.{}", spec.name), spec, &cfg.model.for_modality(&spec.name), rng)?;
        let head = Linear::new(gpu, "head", encoder.out_dim(), classes, true, rng)?;
        Ok(Unimodal { encoder, head, index, m: specs.len(), acc: Accum::new(3) })
    }
}

impl Method for Unimodal {
    fn name(&self) -> &'static str {
        "unimodal"
    }
    fn params(&self) -> Vec<Param> {
        let mut v = self.encoder.params();
        v.extend(self.head.params());
        v
    }
    fn buffers(&self) -> Vec<(String, Tensor)> {
        self.encoder.buffers()
    }
    fn train_step(&mut self, batch: &DeviceBatch, opt: &mut dyn Optimizer, _epoch: usize) -> Result<()> {
        let ctx = Ctx::train();
        let f = self.encoder.forward(&batch.inputs[self.index], &ctx)?;
        let logits = self.head.forward(&f, &ctx)?;
        let loss = ops::cross_entropy(&logits, ops::Target::Hard(&batch.labels), None)?;
        let grads = loss.backward()?;
        opt.step(&grads)?;
        let vs = view_stats(&[logits.detach()], &batch.labels)?;
        let total = ops::scale(&loss.detach(), batch.n as f32)?;
        self.acc.record(&[&total.reshape(&[1])?, &vs], batch.n)?;
        Ok(())
    }
    fn features(&self, inputs: &[Tensor]) -> Result<Vec<Option<Tensor>>> {
        let _ng = crate::autograd::no_grad();
        let f = self.encoder.forward(&inputs[self.index], &Ctx::eval())?;
        Ok((0..self.m).map(|i| if i == self.index { Some(f.clone()) } else { None }).collect())
    }
    fn predict(&self, inputs: &[Tensor]) -> Result<Prediction> {
        let _ng = crate::autograd::no_grad();
        let ctx = Ctx::eval();
        let logits = self.head.forward(&self.encoder.forward(&inputs[self.index], &ctx)?, &ctx)?;
        let per_modality = (0..self.m).map(|i| if i == self.index { Some(logits.clone()) } else { None }).collect();
        Ok(Prediction { fused: logits, per_modality })
    }
    fn end_epoch(&mut self, _epoch: usize, _opt: &mut dyn Optimizer) -> Result<EpochStats> {
        let samples = self.acc.samples;
        let sums = self.acc.take()?;
        let one = stats_from_sums(&sums, 1, samples);
        let mut st = EpochStats { loss: one.loss, samples, ..Default::default() };
        st.modality_loss = (0..self.m).map(|i| if i == self.index { one.modality_loss[0] } else { f64::NAN }).collect();
        st.scores = (0..self.m).map(|i| if i == self.index { one.scores[0] } else { f64::NAN }).collect();
        Ok(st)
    }
}
