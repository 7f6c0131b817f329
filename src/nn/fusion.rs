//! Fusion heads of the OGM-GE code base (sum, concat, FiLM, gated), with the unimodal views
//! used for confidence scores and per-modality reporting (README, Methods: joint).
use super::{join, Ctx, Linear, Module};
use crate::error::{Error, Result};
use crate::gpu::Gpu;
use crate::ops;
use super::Param;
use crate::tensor::Tensor;
use rand::rngs::StdRng;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FusionKind {
    Sum,
    Concat,
    Film,
    Gated,
}

impl std::str::FromStr for FusionKind {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "sum" => Ok(FusionKind::Sum),
            "concat" => Ok(FusionKind::Concat),
            "film" => Ok(FusionKind::Film),
            "gated" => Ok(FusionKind::Gated),
            _ => Err(Error::config("method.fusion", format!("unknown fusion {s:?}; allowed: sum, concat, film, gated"))),
        }
    }
}

pub struct Fusion {
    pub kind: FusionKind,
    dims: Vec<usize>,
    /// sum: one classifier per modality; film: [fc]; gated: [fc_x, fc_y]
    fcs: Vec<Linear>,
    /// concat, film, gated
    out: Option<Linear>,
    film_dim: usize,
}

impl Fusion {
    /// `dims`: feature width of each modality; `hidden`: the gated inner width (FiLM's inner
    /// width is always the second modality's feature width).
    pub fn new(gpu: &Gpu, name: &str, kind: FusionKind, dims: &[usize], classes: usize, hidden: usize, rng: &mut StdRng) -> Result<Fusion> {
        if dims.len() < 2 {
            return Err(Error::config("data.modalities", "fusion needs at least 2 modalities"));
        }
        if matches!(kind, FusionKind::Film | FusionKind::Gated) && dims.len() != 2 {
            return Err(Error::config(
                "method.fusion",
                format!("{kind:?} fusion is defined for exactly 2 modalities, the data has {}; use sum or concat", dims.len()),
            ));
        }
        let (fcs, out) = match kind {
            FusionKind::Sum => (
                dims.iter().enumerate().map(|(i, &d)| Linear::new(gpu, &join(name, &format!("fc.{i}")), d, classes, true, rng)).collect::<Result<Vec<_>>>()?,
                None,
            ),
            FusionKind::Concat => (Vec::new(), Some(Linear::new(gpu, &join(name, "fc_out"), dims.iter().sum(), classes, true, rng)?)),
            FusionKind::Film => {
                // FiLM modulates the second modality's features in place (γ ⊙ y + β), so its
                // inner width is dims[1] for any dims; `hidden` does not apply (as in OGM-GE,
                // where FiLM's `dim` is the feature width).
                (vec![Linear::new(gpu, &join(name, "fc"), dims[0], 2 * dims[1], true, rng)?], Some(Linear::new(gpu, &join(name, "fc_out"), dims[1], classes, true, rng)?))
            }
            FusionKind::Gated => (
                vec![
                    Linear::new(gpu, &join(name, "fc_x"), dims[0], hidden, true, rng)?,
                    Linear::new(gpu, &join(name, "fc_y"), dims[1], hidden, true, rng)?,
                ],
                Some(Linear::new(gpu, &join(name, "fc_out"), hidden, classes, true, rng)?),
            ),
        };
        Ok(Fusion { kind, dims: dims.to_vec(), fcs, out, film_dim: dims[1] })
    }

    /// The same head with every parameter detached ([`Linear::frozen`]): gradients still reach
    /// the features, never the head.
    pub fn frozen(&self) -> Fusion {
        Fusion {
            kind: self.kind,
            dims: self.dims.clone(),
            fcs: self.fcs.iter().map(Linear::frozen).collect(),
            out: self.out.as_ref().map(Linear::frozen),
            film_dim: self.film_dim,
        }
    }

    fn check(&self, feats: &[Tensor]) -> Result<()> {
        if feats.len() != self.dims.len() {
            return Err(Error::shape("fusion", format!("expects {} modalities, got {}", self.dims.len(), feats.len())));
        }
        for (m, (f, &d)) in feats.iter().zip(&self.dims).enumerate() {
            if f.dims() != 2 || f.dim(1) != d {
                return Err(Error::shape("fusion", format!("modality {m}: expects [N, {d}], got {:?}", f.shape())));
            }
        }
        Ok(())
    }

    /// Fused logits [N, K].
    pub fn forward(&self, feats: &[Tensor], ctx: &Ctx) -> Result<Tensor> {
        self.check(feats)?;
        match self.kind {
            FusionKind::Sum => {
                let mut acc = self.fcs[0].forward(&feats[0], ctx)?;
                for (fc, f) in self.fcs.iter().zip(feats).skip(1) {
                    acc = ops::add(&acc, &fc.forward(f, ctx)?)?;
                }
                Ok(acc)
            }
            FusionKind::Concat => {
                let refs: Vec<&Tensor> = feats.iter().collect();
                self.out.as_ref().expect("concat head").forward(&ops::concat(&refs, 1)?, ctx)
            }
            FusionKind::Film => {
                let gb = self.fcs[0].forward(&feats[0], ctx)?;
                let parts = ops::split(&gb, &[self.film_dim, self.film_dim], 1)?;
                let h = ops::add(&ops::mul(&parts[0], &feats[1])?, &parts[1])?;
                self.out.as_ref().expect("film head").forward(&h, ctx)
            }
            FusionKind::Gated => {
                let gate = ops::sigmoid(&self.fcs[0].forward(&feats[0], ctx)?)?;
                let h = ops::mul(&gate, &self.fcs[1].forward(&feats[1], ctx)?)?;
                self.out.as_ref().expect("gated head").forward(&h, ctx)
            }
        }
    }

    /// Logits of modality `m` alone (its unimodal view).
    pub fn unimodal(&self, m: usize, feat: &Tensor, ctx: &Ctx) -> Result<Tensor> {
        if m >= self.dims.len() {
            return Err(Error::shape("fusion", format!("unimodal view of modality {m}, the head has {}", self.dims.len())));
        }
        if feat.dims() != 2 || feat.dim(1) != self.dims[m] {
            return Err(Error::shape("fusion", format!("modality {m}: expects [N, {}], got {:?}", self.dims[m], feat.shape())));
        }
        let n = feat.dim(0);
        match self.kind {
            FusionKind::Sum => self.fcs[m].forward(feat, ctx),
            FusionKind::Concat => {
                let out = self.out.as_ref().expect("concat head");
                let off: usize = self.dims[..m].iter().sum();
                let w = ops::narrow(&out.weight.tensor, 1, off, self.dims[m])?;
                let y = ops::linear(feat, &w, None, None)?;
                match &out.bias {
                    Some(b) => ops::add(&y, &ops::scale(&b.tensor, 1.0 / self.dims.len() as f32)?),
                    None => Ok(y),
                }
            }
            FusionKind::Film | FusionKind::Gated => {
                let feats: Vec<Tensor> = (0..self.dims.len())
                    .map(|i| if i == m { Ok(feat.clone()) } else { Tensor::zeros(feat.gpu(), &[n, self.dims[i]]) })
                    .collect::<Result<_>>()?;
                self.forward(&feats, ctx)
            }
        }
    }
}

impl Module for Fusion {
    fn params(&self) -> Vec<Param> {
        let mut v: Vec<Param> = self.fcs.iter().flat_map(|l| l.params()).collect();
        if let Some(o) = &self.out {
            v.extend(o.params());
        }
        v
    }
}
