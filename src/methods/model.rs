//! The model every method builds: an encoder per modality (kind and sizes, with
//! per-modality overrides) and the fusion head's width. Read from the `[model]` section.
use crate::error::{Error, Result};
use std::collections::BTreeMap;

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
/// `model.encoder`: the encoder family (run-file names `small_cnn`, `resnet18`, `transformer`,
/// `mlp`).
pub enum EncoderKind {
    /// [`crate::nn::SmallCnn`]; needs `[C, H, W]` inputs.
    SmallCnn,
    /// [`crate::nn::ResNet18`]; needs `[C, H, W]` inputs.
    Resnet18,
    /// [`crate::nn::TransformerEncoder`] over patches of `[C, H, W]` or rows of `[L, F]`.
    Transformer,
    /// [`crate::nn::MlpEncoder`] on the flattened input.
    Mlp,
}

/// Encoder settings; `modalities.<name>` overrides any of them for one modality.
#[derive(Clone, Debug, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModelConfig {
    /// Encoder family (`mlp` by default).
    pub encoder: EncoderKind,
    /// small_cnn: first block's width (doubles per block); resnet18: base width (64 standard);
    /// transformer: token width.
    pub width: usize,
    /// small_cnn: number of blocks.
    pub depth: usize,
    /// mlp: hidden widths.
    pub hidden: Vec<usize>,
    /// transformer: number of blocks.
    pub layers: usize,
    /// transformer: attention heads (must divide `width`).
    pub heads: usize,
    /// transformer: MLP hidden width as a multiple of `width`.
    pub mlp_ratio: usize,
    /// transformer: patch size [height, width] for `[C, H, W]` inputs (must divide the image).
    pub patch: [usize; 2],
    /// Inner width of gated fusion (FiLM's is the second modality's feature width).
    pub fusion_hidden: usize,
    /// Initialisation of conv and linear layers: `official` (the AUG code's) or `torch`.
    #[serde(deserialize_with = "super::config::by_name::deserialize")]
    pub init: crate::nn::Init,
    /// resnet18: recompute each basic block's inner batch norm + ReLU in the backward instead
    /// of holding the second convolution's input from the forward (less memory, the same
    /// values and gradients, two element-wise passes more per block).
    pub recompute: bool,
    /// Per-modality overrides, by modality name (`[model.modalities.audio]`); a name the data lacks
    /// is an error.
    pub modalities: BTreeMap<String, ModelOverride>,
}

impl Default for ModelConfig {
    fn default() -> Self {
        ModelConfig {
            encoder: EncoderKind::Mlp,
            width: 8,
            depth: 2,
            hidden: vec![128, 64],
            layers: 2,
            heads: 4,
            mlp_ratio: 2,
            patch: [4, 4],
            fusion_hidden: 64,
            init: crate::nn::Init::Official,
            recompute: false,
            modalities: BTreeMap::new(),
        }
    }
}

#[derive(Clone, Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
/// One modality's overrides of [`ModelConfig`] (`[model.modalities.<name>]`); each field set
/// replaces the shared one.
pub struct ModelOverride {
    /// Overrides `encoder`.
    pub encoder: Option<EncoderKind>,
    /// Overrides `width`.
    pub width: Option<usize>,
    /// Overrides `depth`.
    pub depth: Option<usize>,
    /// Overrides `hidden`.
    pub hidden: Option<Vec<usize>>,
    /// Overrides `layers`.
    pub layers: Option<usize>,
    /// Overrides `heads`.
    pub heads: Option<usize>,
    /// Overrides `mlp_ratio`.
    pub mlp_ratio: Option<usize>,
    /// Overrides `patch`.
    pub patch: Option<[usize; 2]>,
}

impl ModelConfig {
    /// The settings for one modality (overrides applied).
    pub fn for_modality(&self, name: &str) -> ModelConfig {
        let mut m = self.clone();
        if let Some(o) = self.modalities.get(name) {
            if let Some(v) = o.encoder {
                m.encoder = v;
            }
            if let Some(v) = o.width {
                m.width = v;
            }
            if let Some(v) = o.depth {
                m.depth = v;
            }
            if let Some(v) = &o.hidden {
                m.hidden = v.clone();
            }
            if let Some(v) = o.layers {
                m.layers = v;
            }
            if let Some(v) = o.heads {
                m.heads = v;
            }
            if let Some(v) = o.mlp_ratio {
                m.mlp_ratio = v;
            }
            if let Some(v) = o.patch {
                m.patch = v;
            }
        }
        m
    }
}

impl ModelConfig {
    /// Every width >= 1 (a zero width trains a constant model) and at most
    /// [`crate::limits::MAX_WIDTH`], for the shared settings and each modality's overrides.
    pub fn validate(&self) -> Result<()> {
        let max = crate::limits::MAX_WIDTH;
        let in_range = |v: usize| (1..=max).contains(&v);
        for (name, o) in std::iter::once(("", None)).chain(self.modalities.iter().map(|(k, v)| (k.as_str(), Some(v)))) {
            let mc = if o.is_some() { self.for_modality(name) } else { self.clone() };
            let field = |f: &str| if o.is_some() { format!("model.modalities.{name}.{f}") } else { format!("model.{f}") };
            mc.validate_one(&field, &in_range, max)?;
        }
        let resnet = std::iter::once(Some(self.encoder)).chain(self.modalities.values().map(|o| o.encoder)).any(|e| e == Some(EncoderKind::Resnet18));
        if self.recompute && !resnet {
            return Err(Error::config("model.recompute", format!("recomputes resnet18's blocks, and no modality has a resnet18 encoder (model.encoder = {:?})", self.encoder)));
        }
        if !in_range(self.fusion_hidden) {
            return Err(Error::config("model.fusion_hidden", format!("must be in 1..={max}, got {}", self.fusion_hidden)));
        }
        Ok(())
    }

    /// The checks of one modality's settings; `field` names a field in the messages.
    fn validate_one(&self, field: &dyn Fn(&str) -> String, in_range: &dyn Fn(usize) -> bool, max: usize) -> Result<()> {
        if self.width == 0 {
            return Err(Error::config(field("width"), "must be at least 1"));
        }
        if self.encoder == EncoderKind::SmallCnn && self.depth == 0 {
            return Err(Error::config(field("depth"), "must be at least 1"));
        }
        if self.encoder == EncoderKind::Transformer && (self.heads == 0 || self.width % self.heads != 0) {
            return Err(Error::config(field("heads"), format!("width {} must be a multiple of heads {}", self.width, self.heads)));
        }
        let deep = crate::limits::MAX_DEPTH;
        for (f, n) in [("hidden", self.hidden.len()), ("layers", self.layers), ("depth", self.depth)] {
            if n > deep {
                return Err(Error::config(field(f), format!("{n} layers: at most {deep}")));
            }
        }
        if self.encoder == EncoderKind::Mlp && self.hidden.is_empty() {
            return Err(Error::config(field("hidden"), "needs at least one hidden width"));
        }
        if let Some(h) = self.hidden.iter().find(|h| !in_range(**h)) {
            return Err(Error::config(field("hidden"), format!("widths must be in 1..={max}, got {h}")));
        }
        for (f, v) in [("width", self.width), ("mlp_ratio", self.mlp_ratio), ("patch", self.patch[0]), ("patch", self.patch[1])] {
            if !in_range(v) {
                return Err(Error::config(field(f), format!("must be in 1..={max}, got {v}")));
            }
        }
        if self.encoder == EncoderKind::Transformer && self.layers == 0 {
            return Err(Error::config(field("layers"), "must be at least 1"));
        }
        if self.depth > 16 {
            return Err(Error::config(field("depth"), format!("must be at most 16 (the width doubles per block), got {}", self.depth)));
        }
        Ok(())
    }
}
