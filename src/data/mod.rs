//! Data layer: datasets (synthetic, AV-MNIST, CREMA-D, user tensors), audio/image
//! preprocessing, and a prefetching batch loader. Pure CPU code.
//!
//! Every dataset yields, per sample, one `Vec<f32>` per modality (row-major, shaped as the
//! modality's [`ModalitySpec::shape`]) and a class label.

use serde::Deserialize;

use crate::error::{Error, Result};

pub mod avmnist;
pub mod catalog;
pub mod cremad;
pub mod fetch;
pub mod fixture;
pub mod idx;
pub mod image_ops;
pub mod loader;
pub mod pca;
pub mod resample;
pub mod stft;
pub mod synthetic;
pub mod tensors;
pub mod wav;

pub use avmnist::{AvmnistConfig, AvmnistDataset};
pub use cremad::{CremadConfig, CremadDataset};
pub use loader::{Loader, LoaderConfig};
pub use synthetic::{SyntheticConfig, SyntheticDataset, SyntheticModality};
pub use tensors::{write_tensors_split, TensorsConfig, TensorsDataset};

/// Which part of a dataset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Split {
    /// Training samples.
    Train,
    /// Validation samples (model selection).
    Val,
    /// Test samples (reported).
    Test,
}

impl Split {
    /// `train`, `val` or `test`.
    pub fn as_str(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Val => "val",
            Split::Test => "test",
        }
    }
    pub(crate) fn id(self) -> u64 {
        match self {
            Split::Train => 0,
            Split::Val => 1,
            Split::Test => 2,
        }
    }
}

impl std::fmt::Display for Split {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Split {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "train" => Ok(Split::Train),
            "val" => Ok(Split::Val),
            "test" => Ok(Split::Test),
            _ => Err(Error::config(
                "split",
                format!("unknown split `{s}`; allowed: train, val, test"),
            )),
        }
    }
}

/// Name and per-sample shape of one modality, e.g. `audio` `[1, 129, 126]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModalitySpec {
    /// Modality name, e.g. `audio`.
    pub name: String,
    /// Per-sample shape, without the batch axis.
    pub shape: Vec<usize>,
}

impl ModalitySpec {
    /// Spec from a name and a per-sample shape.
    pub fn new(name: impl Into<String>, shape: Vec<usize>) -> Self {
        ModalitySpec {
            name: name.into(),
            shape,
        }
    }
    /// Number of f32 values per sample.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

/// A multimodal classification dataset.
pub trait Dataset: Send + Sync {
    /// Dataset name, for logs and reports.
    fn name(&self) -> &str;
    /// Number of classes; labels are `0..num_classes`.
    fn num_classes(&self) -> usize;
    /// The modalities, in the order `sample` returns them.
    fn modalities(&self) -> &[ModalitySpec];
    /// Number of samples in `split`; 0 when the split does not exist.
    fn len(&self, split: Split) -> usize;
    /// One sample: one `Vec<f32>` per modality (row-major, shape = `ModalitySpec.shape`) and its label.
    /// `aug`: `Some(rng)` in training when augmentation applies, `None` for eval (deterministic).
    fn sample(
        &self,
        split: Split,
        index: usize,
        aug: Option<&mut rand::rngs::StdRng>,
    ) -> Result<(Vec<Vec<f32>>, u32)>;
}

/// A dense f32 host tensor, row-major.
#[derive(Debug, Clone, PartialEq)]
pub struct HostTensor {
    /// Dimensions, outermost first.
    pub shape: Vec<usize>,
    /// Values, row-major; `shape` product of them.
    pub data: Vec<f32>,
}

impl HostTensor {
    /// Tensor from shape and data; a shape error when their sizes differ.
    pub fn new(shape: Vec<usize>, data: Vec<f32>) -> Result<Self> {
        let n: usize = shape.iter().product();
        if n != data.len() {
            return Err(Error::shape(
                "HostTensor::new",
                format!(
                    "shape {shape:?} holds {n} values but data has {}",
                    data.len()
                ),
            ));
        }
        Ok(HostTensor { shape, data })
    }
    /// Number of values.
    pub fn numel(&self) -> usize {
        self.data.len()
    }
}

/// One batch on the host: one tensor per modality (`[batch, ...sample shape]`),
/// labels, and the dataset indices the rows came from.
#[derive(Debug, Clone, PartialEq)]
pub struct HostBatch {
    /// One tensor per modality, `[batch, ...sample shape]`.
    pub inputs: Vec<HostTensor>,
    /// Label per row.
    pub labels: Vec<u32>,
    /// Dataset index of each row within its split.
    pub indices: Vec<usize>,
}

impl HostBatch {
    /// Rows in the batch.
    pub fn len(&self) -> usize {
        self.labels.len()
    }
    /// No rows.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }
}

/// Dataset selection, the `[data]` table of a run configuration (`kind = "..."`).
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum DatasetConfig {
    /// Generated in memory (`kind = "synthetic"`).
    Synthetic(SyntheticConfig),
    /// FSDD spoken digits with MNIST images (`kind = "avmnist"`).
    Avmnist(AvmnistConfig),
    /// CREMA-D audio and frames (`kind = "cremad"`).
    Cremad(CremadConfig),
    /// The user's own safetensors files (`kind = "tensors"`).
    Tensors(TensorsConfig),
}

impl Default for DatasetConfig {
    fn default() -> Self {
        DatasetConfig::Synthetic(SyntheticConfig::default())
    }
}

const KINDS: [&str; 4] = ["synthetic", "avmnist", "cremad", "tensors"];

impl DatasetConfig {
    /// Check every value; errors name the field (`data.<field>`).
    pub fn validate(&self) -> Result<()> {
        match self {
            DatasetConfig::Synthetic(c) => c.validate(),
            DatasetConfig::Avmnist(c) => c.validate(),
            DatasetConfig::Cremad(c) => c.validate(),
            DatasetConfig::Tensors(c) => c.validate(),
        }
    }

    /// The `data.kind` name.
    pub fn kind(&self) -> &'static str {
        match self {
            DatasetConfig::Synthetic(_) => "synthetic",
            DatasetConfig::Avmnist(_) => "avmnist",
            DatasetConfig::Cremad(_) => "cremad",
            DatasetConfig::Tensors(_) => "tensors",
        }
    }

    /// Parse a `[data]` table given as a TOML value, with errors naming the field.
    pub fn from_toml_value(v: toml::Value) -> Result<Self> {
        let table = v
            .as_table()
            .ok_or_else(|| Error::config("data", "must be a table with a `kind` key"))?;
        match table.get("kind") {
            None => {
                return Err(Error::config(
                    "data.kind",
                    format!("missing; allowed: {}", KINDS.join(", ")),
                ))
            }
            Some(toml::Value::String(k)) if KINDS.contains(&k.as_str()) => {}
            Some(other) => {
                return Err(Error::config(
                    "data.kind",
                    format!(
                        "unknown dataset kind {other}; allowed: {}",
                        KINDS.join(", ")
                    ),
                ))
            }
        }
        // each kind's table on its own, so that an error names its field (`data.n_train`);
        // through the tagged enum serde only knows it was somewhere in `data`
        let mut body = table.clone();
        let kind = body.remove("kind").and_then(|k| k.as_str().map(str::to_string)).unwrap_or_default();
        let body = toml::Value::Table(body);
        let cfg = match kind.as_str() {
            "synthetic" => DatasetConfig::Synthetic(data_field(body)?),
            "avmnist" => DatasetConfig::Avmnist(data_field(body)?),
            "cremad" => DatasetConfig::Cremad(data_field(body)?),
            _ => DatasetConfig::Tensors(data_field(body)?),
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// Parse the body of a `[data]` table (TOML text with `kind = ...` at top level).
    pub fn from_toml_str(s: &str) -> Result<Self> {
        let v: toml::Table =
            toml::from_str(s).map_err(|e| Error::config("data", e.message().to_string()))?;
        Self::from_toml_value(toml::Value::Table(v))
    }
}

/// One kind's `[data]` table, with errors naming the field under `data.`.
fn data_field<T: serde::de::DeserializeOwned>(body: toml::Value) -> Result<T> {
    serde_path_to_error::deserialize(body).map_err(|e| {
        let path = e.path().to_string();
        Error::config(if path == "." { "data".to_string() } else { format!("data.{path}") }, e.inner().to_string())
    })
}

/// Build (validate, load, preprocess) the dataset a configuration describes.
pub fn build(cfg: &DatasetConfig) -> Result<Box<dyn Dataset>> {
    cfg.validate()?;
    Ok(match cfg {
        DatasetConfig::Synthetic(c) => Box::new(SyntheticDataset::new(c)?),
        DatasetConfig::Avmnist(c) => Box::new(AvmnistDataset::new(c)?),
        DatasetConfig::Cremad(c) => Box::new(CremadDataset::new(c)?),
        DatasetConfig::Tensors(c) => Box::new(TensorsDataset::new(c)?),
    })
}

pub use catalog::default_data_root;

/// Deterministic 64-bit mixing (SplitMix64 finaliser) used to derive per-sample seeds.
pub(crate) fn mix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// Seed derived from several parts.
pub(crate) fn derive_seed(parts: &[u64]) -> u64 {
    parts
        .iter()
        .fold(0x5EED_u64, |acc, &p| mix64(acc ^ mix64(p)))
}

/// Standard normal via Box–Muller (rand 0.9 has no normal distribution without rand_distr).
pub(crate) fn gauss<R: rand::Rng + ?Sized>(rng: &mut R) -> f32 {
    let u1: f64 = rng.random::<f64>().max(1e-300);
    let u2: f64 = rng.random::<f64>();
    ((-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()) as f32
}

pub(crate) fn check_index(name: &str, split: Split, index: usize, len: usize) -> Result<()> {
    if index >= len {
        return Err(Error::data(
            name,
            format!("index {index} out of range for split `{split}` with {len} samples"),
        ));
    }
    Ok(())
}
