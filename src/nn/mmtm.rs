//! MMTM, the multimodal transfer module (Joze et al., CVPR 2020), as the Greedy code uses it
//! (`MMTM_mitigate` in nyukat/greedy_multimodal_learning, src/balanced_mmtm.py): each
//! modality's feature map `[N, C_m, H, W]` is squeezed to `[N, C_m]` by a global average,
//! the squeezes are concatenated, a shared linear layer and ReLU map them to a bottleneck of
//! width ⌊2·ΣC_m / ratio⌋, and one linear layer per modality with a sigmoid gives that
//! modality's channel gate `[N, C_m]` (plain sigmoid, as the Greedy code: the MMTM paper's
//! 2·sigmoid is not what it runs). The caller multiplies each feature map by its gate
//! ([`Mmtm::rescale`]), possibly after replacing a gate (Greedy's re-balancing steps).
use super::{join, Ctx, Linear, Module, Param};
use crate::error::{Error, Result};
use crate::gpu::Gpu;
use crate::ops;
use crate::tensor::Tensor;
use rand::rngs::StdRng;

/// One MMTM between the same depth of every modality's encoder.
pub struct Mmtm {
    /// The shared layer on the concatenated squeezes, `ΣC_m → bottleneck`.
    pub squeeze: Linear,
    /// One layer per modality, `bottleneck → C_m` (its output width is modality m's
    /// channel count).
    pub excite: Vec<Linear>,
}

impl Mmtm {
    /// `channels[m]`: modality m's channel count at this depth; `names[m]` names its layer
    /// (`<name>.excite.<names[m]>`). `ratio` is the official reduction ratio (4), the
    /// bottleneck ⌊2·ΣC / ratio⌋ (at least 1).
    pub fn new(gpu: &Gpu, name: &str, channels: &[usize], names: &[String], ratio: usize, rng: &mut StdRng) -> Result<Mmtm> {
        if channels.len() < 2 || channels.len() != names.len() || ratio == 0 {
            return Err(Error::shape("mmtm", format!("{} channel counts for {} modalities, ratio {ratio}: needs at least two modalities and ratio >= 1", channels.len(), names.len())));
        }
        let total: usize = channels.iter().sum();
        let hidden = (2 * total / ratio).max(1);
        let squeeze = Linear::new(gpu, &join(name, "squeeze"), total, hidden, true, rng)?;
        let excite = channels
            .iter()
            .zip(names)
            .map(|(&c, n)| Linear::new(gpu, &join(name, &format!("excite.{n}")), hidden, c, true, rng))
            .collect::<Result<Vec<_>>>()?;
        Ok(Mmtm { squeeze, excite })
    }

    /// Each modality's squeeze `[N, C_m]`: the mean of its feature map over every axis after
    /// the channel axis.
    pub fn squeezes(&self, maps: &[Tensor]) -> Result<Vec<Tensor>> {
        if maps.len() != self.excite.len() {
            return Err(Error::shape("mmtm", format!("{} feature maps for a module of {} modalities", maps.len(), self.excite.len())));
        }
        maps.iter()
            .zip(&self.excite)
            .map(|(x, l)| {
                let c = l.out_dim;
                if x.dims() < 2 || x.dim(1) != c || x.dim(0) != maps[0].dim(0) {
                    return Err(Error::shape("mmtm", format!("feature map {:?}, expected [N, {c}, ...] with N = {}", x.shape(), maps[0].dim(0))));
                }
                let axes: Vec<isize> = (2..x.dims() as isize).collect();
                if axes.is_empty() {
                    return Ok(x.clone());
                }
                ops::mean(x, &axes, false)
            })
            .collect()
    }

    /// Each modality's gate `[N, C_m]` = sigmoid(W_m·relu(W_s·[s_1, …, s_M] + b_s) + b_m).
    pub fn gates(&self, maps: &[Tensor], ctx: &Ctx) -> Result<Vec<Tensor>> {
        let s = self.squeezes(maps)?;
        let refs: Vec<&Tensor> = s.iter().collect();
        let z = self.squeeze.forward_relu(&ops::concat(&refs, 1)?, ctx)?;
        self.excite.iter().map(|l| ops::sigmoid(&l.forward(&z, ctx)?)).collect()
    }

    /// `x` `[N, C, ...]` times its gate `[N, C]` (or `[1, C]`), broadcast over the spatial axes.
    pub fn rescale(x: &Tensor, gate: &Tensor) -> Result<Tensor> {
        let mut shape = gate.shape().to_vec();
        shape.resize(x.dims(), 1);
        ops::mul(x, &gate.reshape(&shape)?)
    }
}

impl Module for Mmtm {
    fn params(&self) -> Vec<Param> {
        let mut v = self.squeeze.params();
        for l in &self.excite {
            v.extend(l.params());
        }
        v
    }
}
