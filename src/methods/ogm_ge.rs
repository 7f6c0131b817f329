//! OGM and OGM-GE (Peng et al., CVPR 2022): after the backward of the fused loss, each
//! encoder's gradients are scaled by k_u = 1 − tanh(α·relu(ρ_u)) for the modality whose
//! confidence ratio ρ_u exceeds 1 (the dominant one), and with GE, Gaussian noise with the
//! gradient's own standard deviation is added. Everything stays on the GPU: the ratio, the
//! coefficients and the noise are tensors, never read back inside the step.
//!
//! docs/methods/ogm_ge.md reads the official code line by line. Follows the official `main.py`
//! (GeWu-Lab/OGM-GE_CVPR2022, `train_epoch`, the block after
//! "Modulation starts here"). Departures: the official code modulates only 4-D (conv)
//! weight gradients, here `method.ogm.modulate = "all"` (default) modulates every encoder
//! parameter so that MLP and transformer encoders are modulated too (`"conv_weights"` is the
//! official scope); at a ratio of exactly 1 the official code modulates audio, here both
//! (ρ = 1 counts as dominant for each; a measure-zero case).
use super::{DeviceBatch, EpochStats, Joint, Method, Prediction};
use super::config::MethodSetup;
use crate::data::ModalitySpec;
use crate::error::{Error, Result};
use crate::gpu::Gpu;
use crate::ops;
use crate::optim::{Optimizer, Param};
use crate::tensor::Tensor;
use rand::rngs::StdRng;

// ---- configuration (`[method.ogm]`) ----

/// Which form of the modulation coefficient.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OgmFormula {
    /// 1 − tanh(α·relu(ρ)) (the official code)
    Code,
    /// 1 − tanh(α·relu(ρ − 1)) (the paper)
    Paper,
}

/// `[method.ogm]`, shared by `ogm` and `ogm_ge`.
#[derive(Clone, Debug, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OgmConfig {
    /// Modulation strength α, ≥ 0.
    pub alpha: f32,
    /// Modulation is applied for epochs in [start_epoch, end_epoch].
    pub start_epoch: usize,
    /// Last modulated epoch, inclusive.
    pub end_epoch: usize,
    /// Form of the coefficient k_u.
    pub formula: OgmFormula,
    /// Which encoder parameters are modulated.
    pub modulate: OgmScope,
}

impl Default for OgmConfig {
    fn default() -> Self {
        OgmConfig { alpha: 0.8, start_epoch: 0, end_epoch: 50, formula: OgmFormula::Code, modulate: OgmScope::All }
    }
}

/// Which encoder gradients OGM modulates.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OgmScope {
    /// Every parameter of the encoder (works for any encoder, MLPs included).
    All,
    /// Only 4-D (convolution) weights, as the official code (`len(parms.grad.size()) == 4`):
    /// batch-norm parameters and linear layers keep their plain gradients.
    ConvWeights,
}


impl OgmConfig {
    /// Check every value; errors name the field (`method.ogm.<field>`).
    pub fn validate(&self) -> Result<()> {
        if !(self.alpha.is_finite() && self.alpha >= 0.0) {
            return Err(Error::config("method.ogm.alpha", "must be >= 0"));
        }
        if self.start_epoch > self.end_epoch {
            return Err(Error::config(
                "method.ogm.start_epoch",
                format!("must be <= method.ogm.end_epoch ({}), got {}", self.end_epoch, self.start_epoch),
            ));
        }
        Ok(())
    }
}

/// OGM (`ge = false`) or OGM-GE (`ge = true`, with the Gaussian noise) over joint
/// training.
pub struct OgmGe {
    joint: Joint,
    ge: bool,
    alpha: f32,
    start: usize,
    end: usize,
    formula: OgmFormula,
    scope: OgmScope,
    seed: u64,
    offset: u64,
    m: usize,
}

impl OgmGe {
    /// Build the model for these modalities and `classes` outputs from `cfg`, drawing the initial
    /// weights from `rng`; errors name a bad config field. `ge`: add the noise (OGM-GE).
    pub fn new(gpu: &Gpu, cfg: &MethodSetup, specs: &[ModalitySpec], classes: usize, rng: &mut StdRng, ge: bool) -> Result<OgmGe> {
        let o = &cfg.method.ogm;
        Ok(OgmGe {
            joint: Joint::new(gpu, cfg, specs, classes, rng)?,
            ge,
            alpha: o.alpha,
            start: o.start_epoch,
            end: o.end_epoch,
            formula: o.formula,
            scope: o.modulate,
            seed: cfg.seed ^ 0x06F6_0000,
            offset: 0,
            m: specs.len(),
        })
    }

    /// Modulation coefficients k [M] from the views' confidence scores: ρ_m = s_m / mean of
    /// the others (for two modalities exactly s_v/s_a and s_a/s_v); k_m = 1 − tanh(α·relu(ρ_m
    /// [− 1 in the paper form])) where ρ_m ≥ 1, else 1 (at exactly 1 every modality counts as dominant).
    fn coefficients(&self, views: &[Tensor], labels: &Tensor) -> Result<Tensor> {
        let scores: Vec<Tensor> = views.iter().map(|v| ops::sum_all(&ops::true_class_prob(v, labels)?)).collect::<Result<_>>()?;
        let refs: Vec<&Tensor> = scores.iter().collect();
        let s = ops::concat(&refs, 0)?; // [M]
        let total = ops::sum_all(&s)?;
        let others = ops::scale(&ops::sub(&total, &s)?, 1.0 / (self.m - 1) as f32)?;
        let rho = ops::div(&s, &ops::add_scalar(&others, 1e-12)?)?;
        let dominant = ops::ge_scalar(&rho, 1.0)?;
        let shifted = match self.formula {
            OgmFormula::Code => rho.clone(),
            OgmFormula::Paper => ops::add_scalar(&rho, -1.0)?,
        };
        let t = ops::tanh(&ops::scale(&ops::relu(&shifted)?, self.alpha)?)?;
        // k = 1 − dominant·t
        ops::affine(&ops::mul(&dominant, &t)?, -1.0, 1.0)
    }
}

impl Method for OgmGe {
    fn name(&self) -> &'static str {
        if self.ge {
            "ogm_ge"
        } else {
            "ogm"
        }
    }
    fn params(&self) -> Vec<Param> {
        self.joint.params()
    }
    fn buffers(&self) -> Vec<(String, Tensor)> {
        self.joint.buffers()
    }
    fn train_step(&mut self, batch: &DeviceBatch, opt: &mut dyn Optimizer, epoch: usize) -> Result<()> {
        let (mut grads, views) = self.joint.forward_backward(batch)?;
        if epoch >= self.start && epoch <= self.end {
            let gpu = batch.labels.gpu().clone();
            let _ng = crate::autograd::no_grad();
            let k = self.coefficients(&views, &batch.labels)?;
            for m in 0..self.m {
                let km = ops::narrow(&k, 0, m, 1)?;
                for p in self.joint.encoder_params(m) {
                    if self.scope == OgmScope::ConvWeights && p.tensor.dims() != 4 {
                        continue;
                    }
                    let Some(g) = grads.remove(&p.tensor) else { continue };
                    let mut g2 = ops::mul(&g, &km)?;
                    if self.ge && g.numel() > 1 {
                        // N(0, std(g)^2), std of the original gradient (unbiased, as torch)
                        let mean = ops::mean_all(&g)?;
                        let var = ops::scale(&ops::sum_all(&ops::square(&ops::sub(&g, &mean)?)?)?, 1.0 / (g.numel() - 1) as f32)?;
                        let std = ops::add_scalar(&ops::sqrt(&ops::add_scalar(&var, 1e-30)?)?, 1e-8)?;
                        let noise = ops::randn(&gpu, g.shape(), self.seed, self.offset)?;
                        self.offset += g.numel() as u64;
                        g2 = ops::add(&g2, &ops::mul(&noise, &std)?)?;
                    }
                    grads.insert(&p.tensor, g2);
                }
            }
        }
        opt.step(&grads)
    }
    fn predict(&self, inputs: &[Tensor]) -> Result<Prediction> {
        self.joint.predict(inputs)
    }
    fn features(&self, inputs: &[Tensor]) -> Result<Vec<Option<Tensor>>> {
        self.joint.features(inputs)
    }
    fn end_epoch(&mut self, epoch: usize, opt: &mut dyn Optimizer) -> Result<EpochStats> {
        self.joint.end_epoch(epoch, opt)
    }
    fn state(&self) -> serde_json::Value {
        super::counter_state("noise_offset", self.offset)
    }
    fn restore(&mut self, state: &serde_json::Value, _opt: &mut dyn Optimizer) -> Result<()> {
        super::restore_counter(state, "noise_offset", &mut self.offset);
        Ok(())
    }
}
