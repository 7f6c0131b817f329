//! The `[method]` section: which method trains, its fusion, and each method's own settings
//! (defined next to the method, in its file), plus what a method is built from
//! ([`MethodSetup`]). The run configuration holds one of these; methods never see the rest
//! of it.
use super::agm::AgmConfig;
use super::aim::AimConfig;
use super::aug::AugConfig;
use super::g_blending::GBlendingConfig;
use super::greedy::GreedyConfig;
use super::inforeg::InforegConfig;
use super::mla::MlaConfig;
use super::mmpareto::MmparetoConfig;
use super::model::ModelConfig;
use super::ogm_ge::OgmConfig;
use super::pmr::PmrConfig;
use super::reconboost::ReconboostConfig;
use super::relearn::RelearnConfig;
use crate::error::{Error, Result};
use crate::nn::FusionKind;

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
/// `method.name`: which method trains.
pub enum MethodName {
    /// One encoder and a linear head on one modality (`method.modality`).
    Unimodal,
    /// Joint training through one fusion head, no balancing.
    Joint,
    /// OGM: gradient modulation of the dominant modality (`[method.ogm]`).
    Ogm,
    /// OGM-GE: OGM plus Gaussian noise of the gradient's own scale (`[method.ogm]`).
    OgmGe,
    /// AUG: sustained boosting with adaptive classifier assignment (`[method.aug]`).
    Aug,
    /// AIM: adaptive intra-network modulation (`[method.aim]`).
    Aim,
    /// PMR: prototypical modal rebalance (`[method.pmr]`).
    Pmr,
    /// MMPareto: Pareto integration of the multimodal and unimodal gradients (`[method.mmpareto]`).
    Mmpareto,
    /// AGM: Shapley-based mono-modal scores and adaptive gradient coefficients (`[method.agm]`).
    Agm,
    /// G-Blending: losses blended by weights from the overfitting-to-generalisation ratio,
    /// re-estimated on the validation split (`[method.g_blending]`).
    GBlending,
    /// MLA: alternating unimodal updates through a shared head with gradient projection and
    /// entropy-weighted test-time fusion (`[method.mla]`).
    Mla,
    /// InfoReg: regulation of the leading modality's information acquisition in its prime
    /// learning window (`[method.inforeg]`).
    Inforeg,
    /// Diagnosing & Re-learning: soft re-initialisation of each encoder by its learning
    /// state, diagnosed from cluster purity on train and validation (`[method.relearn]`).
    Relearn,
    /// ReconBoost: alternating boosting of one modality against the others' ensemble with
    /// the reconcilement term (`[method.reconboost]`).
    Reconboost,
    /// Greedy: MMTM-connected encoders with re-balancing steps chosen by the conditional
    /// learning speeds (`[method.greedy]`).
    Greedy,
}

impl MethodName {
    /// The run-file name (`ogm_ge`, `mmpareto`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            MethodName::Unimodal => "unimodal",
            MethodName::Joint => "joint",
            MethodName::Ogm => "ogm",
            MethodName::OgmGe => "ogm_ge",
            MethodName::Aug => "aug",
            MethodName::Aim => "aim",
            MethodName::Pmr => "pmr",
            MethodName::Mmpareto => "mmpareto",
            MethodName::Agm => "agm",
            MethodName::GBlending => "g_blending",
            MethodName::Mla => "mla",
            MethodName::Inforeg => "inforeg",
            MethodName::Relearn => "relearn",
            MethodName::Reconboost => "reconboost",
            MethodName::Greedy => "greedy",
        }
    }
}

#[derive(Clone, Debug, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
/// The `[method]` section. Every method's settings are validated; only the chosen method's are
/// read.
pub struct MethodConfig {
    /// Which method trains (`aug` by default).
    pub name: MethodName,
    #[serde(deserialize_with = "by_name::deserialize")]
    /// The fusion head of methods that fuse (`concat` by default).
    pub fusion: FusionKind,
    /// unimodal: which modality to train (by name).
    pub modality: Option<String>,
    /// `[method.ogm]`, read by `ogm` and `ogm_ge`.
    pub ogm: OgmConfig,
    /// `[method.aug]`.
    pub aug: AugConfig,
    /// `[method.aim]`.
    pub aim: AimConfig,
    /// `[method.pmr]`.
    pub pmr: PmrConfig,
    /// `[method.mmpareto]`.
    pub mmpareto: MmparetoConfig,
    /// `[method.agm]`.
    pub agm: AgmConfig,
    /// `[method.g_blending]`.
    pub g_blending: GBlendingConfig,
    /// `[method.mla]`.
    pub mla: MlaConfig,
    /// `[method.inforeg]`.
    pub inforeg: InforegConfig,
    /// `[method.relearn]`.
    pub relearn: RelearnConfig,
    /// `[method.reconboost]`.
    pub reconboost: ReconboostConfig,
    /// `[method.greedy]`.
    pub greedy: GreedyConfig,
}

impl Default for MethodConfig {
    fn default() -> Self {
        MethodConfig {
            name: MethodName::Aug,
            fusion: FusionKind::Concat,
            modality: None,
            ogm: OgmConfig::default(),
            aug: AugConfig::default(),
            aim: AimConfig::default(),
            pmr: PmrConfig::default(),
            mmpareto: MmparetoConfig::default(),
            agm: AgmConfig::default(),
            g_blending: GBlendingConfig::default(),
            mla: MlaConfig::default(),
            inforeg: InforegConfig::default(),
            relearn: RelearnConfig::default(),
            reconboost: ReconboostConfig::default(),
            greedy: GreedyConfig::default(),
        }
    }
}

impl MethodConfig {
    /// Every method's settings (each names its fields in its errors), and the unimodal
    /// method's modality.
    pub fn validate(&self) -> Result<()> {
        if self.name == MethodName::Unimodal && self.modality.is_none() {
            return Err(Error::config("method.modality", "the unimodal method needs the modality to train (e.g. \"audio\")"));
        }
        self.aug.validate()?;
        self.aim.validate()?;
        self.pmr.validate()?;
        self.mmpareto.validate()?;
        self.agm.validate()?;
        self.g_blending.validate()?;
        self.mla.validate()?;
        self.inforeg.validate()?;
        self.relearn.validate()?;
        self.reconboost.validate()?;
        self.greedy.validate()?;
        self.ogm.validate()
    }

    /// Settings of the chosen method that can never take effect within `epochs` (warnings).
    pub fn never_acts(&self, epochs: usize) -> Vec<String> {
        let e = epochs;
        let mut v = Vec::new();
        // AUG checks after epochs k·check_every (and the first, with check_after_first), never
        // after the last one
        let a = &self.aug;
        let aug_checks = a.check_every == 0 || a.check_every < e || (a.check_after_first && e >= 2);
        if self.name == MethodName::Aug && !aug_checks {
            v.push(format!("method.aug.check_every = {} never acts: no check falls before the last of train.epochs = {e}", a.check_every));
        }
        if matches!(self.name, MethodName::Ogm | MethodName::OgmGe) && self.ogm.start_epoch >= e {
            v.push(format!("method.ogm.start_epoch = {} never acts: train.epochs is {e} (epochs count from 0)", self.ogm.start_epoch));
        }
        if self.name == MethodName::Pmr && self.pmr.start_epoch >= e {
            v.push(format!("method.pmr.start_epoch = {} never acts: train.epochs is {e} (epochs count from 0)", self.pmr.start_epoch));
        }
        if self.name == MethodName::Agm && self.agm.start_epoch >= e {
            v.push(format!("method.agm.start_epoch = {} never acts: train.epochs is {e} (epochs count from 0)", self.agm.start_epoch));
        }
        if self.name == MethodName::Greedy && self.greedy.start_epoch >= e {
            v.push(format!("method.greedy.start_epoch = {} never acts: train.epochs is {e} (epochs count from 0)", self.greedy.start_epoch));
        }
        if self.name == MethodName::Mla && !self.mla.weights.is_empty() && self.mla.test_fusion != super::mla::MlaFusion::Fixed {
            v.push(format!("method.mla.weights never acts: only test_fusion = \"fixed\" reads them (this run's is {:?})", self.mla.test_fusion));
        }
        let r = &self.relearn;
        if self.name == MethodName::Relearn && !(0..e).any(|t| r.reinit_before(t)) {
            v.push(format!("method.relearn.reinit_epoch = {} never acts: the first re-initialisation would follow epoch {} of train.epochs = {e} (reinit_num = {})", r.reinit_epoch, r.reinit_epoch, r.reinit_num));
        }
        v
    }
}

/// What a method is built from: the run's seed, the model, the method settings, and the
/// number of epochs it will train (AUG spaces its checks by it).
#[derive(Clone, Debug)]
pub struct MethodSetup {
    /// The run's seed (initialisation and the method's own randomness).
    pub seed: u64,
    /// The `[model]` section.
    pub model: ModelConfig,
    /// The `[method]` section.
    pub method: MethodConfig,
    /// `train.epochs`.
    pub epochs: usize,
}

/// Enums of lower layers (`ops`, `nn`) read from the configuration by name, so that those
/// layers carry no serde: each has `FromStr` (its names, errors listing them) and `Display`.
pub(crate) mod by_name {
    use serde::{Deserialize, Deserializer};
    use std::fmt::Display;
    use std::str::FromStr;

    pub fn deserialize<'de, T, D>(d: D) -> std::result::Result<T, D::Error>
    where
        T: FromStr,
        T::Err: Display,
        D: Deserializer<'de>,
    {
        String::deserialize(d)?.parse().map_err(serde::de::Error::custom)
    }
}
