//! User-preprocessed data in safetensors files: `DIR/train.safetensors`,
//! `DIR/test.safetensors` and optionally `DIR/val.safetensors`. Each file holds one tensor
//! per modality (f32 or f64, shape `[N, ...]`) named after the modality, and a `labels`
//! tensor (any integer dtype, shape `[N]`). Modalities are those listed in the config, or
//! every non-label tensor of `train.safetensors` in sorted order.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use rand::rngs::StdRng;
use safetensors::{tensor::TensorView, Dtype, SafeTensors};
use serde::Deserialize;

use super::{check_index, Dataset, HostTensor, ModalitySpec, Split};
use crate::error::{Error, Result};

/// The `[data]` table for `kind = "tensors"`: one safetensors file per split.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TensorsConfig {
    /// Directory with `train.safetensors`, `test.safetensors`, optional `val.safetensors`.
    pub root: Option<String>,
    /// Modality tensor names; empty = all non-label tensors (sorted).
    pub modalities: Vec<String>,
    /// Number of classes; 0 = max label + 1.
    pub num_classes: usize,
    /// Name of the label tensor.
    pub labels: String,
}

impl Default for TensorsConfig {
    fn default() -> Self {
        TensorsConfig {
            root: None,
            modalities: vec![],
            num_classes: 0,
            labels: "labels".into(),
        }
    }
}

impl TensorsConfig {
    /// Check every value; errors name the field (`data.<field>`).
    pub fn validate(&self) -> Result<()> {
        if self.root.as_deref().unwrap_or("").is_empty() {
            return Err(Error::config(
                "data.root",
                "required: directory holding train.safetensors and test.safetensors",
            ));
        }
        if !self.modalities.is_empty() && self.modalities.len() < 2 {
            return Err(Error::config(
                "data.modalities",
                format!("list at least 2 modalities, got {:?}", self.modalities),
            ));
        }
        let mut seen = std::collections::HashSet::new();
        for m in &self.modalities {
            if m.is_empty() || m == &self.labels || !seen.insert(m) {
                return Err(Error::config(
                    "data.modalities",
                    format!("names must be non-empty, unique and not the label tensor; got `{m}`"),
                ));
            }
        }
        if self.num_classes == 1 || self.num_classes > 1_000_000 {
            return Err(Error::config(
                "data.num_classes",
                format!(
                    "must be 0 (infer) or in 2..=1000000, got {}",
                    self.num_classes
                ),
            ));
        }
        if self.labels.is_empty() {
            return Err(Error::config(
                "data.labels",
                "label tensor name must be non-empty",
            ));
        }
        Ok(())
    }
}

struct SplitData {
    n: usize,
    /// Per modality, flat `[N * numel]`.
    data: Vec<Vec<f32>>,
    labels: Vec<u32>,
}

/// The user's tensors, all splits loaded into memory.
pub struct TensorsDataset {
    specs: Vec<ModalitySpec>,
    num_classes: usize,
    splits: HashMap<Split, SplitData>,
}

fn read_f32(view: &TensorView<'_>, file: &str, name: &str) -> Result<Vec<f32>> {
    let b = view.data();
    Ok(match view.dtype() {
        Dtype::F32 => b
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        Dtype::F64 => b
            .chunks_exact(8)
            .map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes")) as f32)
            .collect(),
        d => {
            return Err(Error::data(
                file,
                format!("tensor `{name}` has dtype {d:?}; modalities must be F32 or F64"),
            ))
        }
    })
}

fn read_labels(view: &TensorView<'_>, file: &str, name: &str) -> Result<Vec<i64>> {
    let b = view.data();
    macro_rules! conv {
        ($t:ty, $n:expr) => {
            b.chunks_exact($n)
                .map(|c| <$t>::from_le_bytes(c.try_into().expect("width")) as i64)
                .collect()
        };
    }
    Ok(match view.dtype() {
        Dtype::I64 => conv!(i64, 8),
        Dtype::I32 => conv!(i32, 4),
        Dtype::I16 => conv!(i16, 2),
        Dtype::I8 => conv!(i8, 1),
        Dtype::U8 => conv!(u8, 1),
        Dtype::U16 => conv!(u16, 2),
        Dtype::U32 => conv!(u32, 4),
        Dtype::U64 => b
            .chunks_exact(8)
            .map(|c| u64::from_le_bytes(c.try_into().expect("8")).min(i64::MAX as u64) as i64)
            .collect(),
        d => return Err(Error::data(file, format!("tensor `{name}` has dtype {d:?}; labels must be an integer dtype (i64, i32, u8, ...)"))),
    })
}

impl TensorsDataset {
    /// Read and check the split files; errors name the file and tensor.
    pub fn new(cfg: &TensorsConfig) -> Result<Self> {
        cfg.validate()?;
        let dir = PathBuf::from(cfg.root.clone().unwrap_or_default());
        let files = [
            (Split::Train, dir.join("train.safetensors"), true),
            (Split::Val, dir.join("val.safetensors"), false),
            (Split::Test, dir.join("test.safetensors"), true),
        ];
        let mut modality_names: Vec<String> = cfg.modalities.clone();
        let mut specs: Vec<ModalitySpec> = Vec::new();
        let mut splits = HashMap::new();
        let mut raw_labels: Vec<(Split, String, Vec<i64>)> = Vec::new();
        for (split, path, required) in files {
            if !path.exists() {
                if required {
                    return Err(Error::io(
                        &path,
                        std::io::Error::new(
                            std::io::ErrorKind::NotFound,
                            format!("{split} file not found"),
                        ),
                    ));
                }
                continue;
            }
            let (data, labels) = read_split(cfg, &path, &mut modality_names, &mut specs)?;
            raw_labels.push((split, path.display().to_string(), labels));
            splits.insert(split, data);
        }
        let num_classes = set_labels(cfg, raw_labels, &mut splits)?;
        Ok(TensorsDataset {
            specs,
            num_classes,
            splits,
        })
    }
}

/// One split's file: its labels (returned raw, checked against the class count later) and
/// its modality tensors. The first file read names the modalities when the config does not
/// and sets each modality's per-sample shape in `specs`; later files must match it.
fn read_split(
    cfg: &TensorsConfig,
    path: &Path,
    modality_names: &mut Vec<String>,
    specs: &mut Vec<ModalitySpec>,
) -> Result<(SplitData, Vec<i64>)> {
    let fname = path.display().to_string();
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let st = SafeTensors::deserialize(&bytes).map_err(|e| {
        Error::data(fname.clone(), format!("not a valid safetensors file: {e}"))
    })?;
    if modality_names.is_empty() {
        *modality_names = modality_tensor_names(cfg, &st, &fname)?;
    }
    let (n, labels) = read_label_tensor(cfg, &st, &fname)?;
    let mut data = Vec::new();
    for (mi, m) in modality_names.iter().enumerate() {
        data.push(read_modality(cfg, &st, &fname, m, n, mi, specs)?);
    }
    Ok((
        SplitData {
            n,
            data,
            labels: vec![],
        },
        labels,
    ))
}

/// Every tensor but the labels, sorted: the modalities when the config lists none.
fn modality_tensor_names(cfg: &TensorsConfig, st: &SafeTensors<'_>, fname: &str) -> Result<Vec<String>> {
    let mut names: Vec<String> = st
        .names()
        .into_iter()
        .filter(|n| *n != cfg.labels)
        .map(String::from)
        .collect();
    names.sort();
    if names.len() < 2 {
        return Err(Error::data(
            fname,
            format!(
                "need at least 2 modality tensors besides `{}`, found {names:?}",
                cfg.labels
            ),
        ));
    }
    Ok(names)
}

/// The label tensor: shape `[N]`, integers, none negative; returns N and the labels.
fn read_label_tensor(cfg: &TensorsConfig, st: &SafeTensors<'_>, fname: &str) -> Result<(usize, Vec<i64>)> {
    let lv = st.tensor(&cfg.labels).map_err(|_| {
        Error::data(
            fname,
            format!("missing label tensor `{}`", cfg.labels),
        )
    })?;
    if lv.shape().len() != 1 {
        return Err(Error::data(
            fname,
            format!(
                "tensor `{}` must have shape [N], got {:?}",
                cfg.labels,
                lv.shape()
            ),
        ));
    }
    let n = lv.shape()[0];
    let labels = read_labels(&lv, fname, &cfg.labels)?;
    if let Some((i, l)) = labels.iter().enumerate().find(|(_, l)| **l < 0) {
        return Err(Error::data(
            fname,
            format!(
                "tensor `{}`: label {l} at index {i} is negative",
                cfg.labels
            ),
        ));
    }
    Ok((n, labels))
}

/// Modality `m` (the `mi`-th): `n` samples of one per-sample shape (recorded in `specs`
/// from the first file, checked against it in the others), every value finite.
fn read_modality(
    cfg: &TensorsConfig,
    st: &SafeTensors<'_>,
    fname: &str,
    m: &str,
    n: usize,
    mi: usize,
    specs: &mut Vec<ModalitySpec>,
) -> Result<Vec<f32>> {
    let v = st.tensor(m).map_err(|_| {
        Error::data(fname, format!("missing modality tensor `{m}`"))
    })?;
    let shape = v.shape();
    if shape.is_empty() || shape[0] != n {
        return Err(Error::data(
            fname,
            format!("tensor `{m}` has shape {shape:?}; its first dimension must equal the {n} labels of `{}`", cfg.labels),
        ));
    }
    let per: Vec<usize> = shape[1..].to_vec();
    if per.is_empty() || per.contains(&0) {
        return Err(Error::data(fname, format!("tensor `{m}` has shape {shape:?}; per-sample shape must be non-empty with sizes >= 1")));
    }
    if let Some(s) = specs.get(mi) {
        if s.shape != per {
            return Err(Error::data(
                fname,
                format!("tensor `{m}` has per-sample shape {per:?} but the train split has {:?}", s.shape),
            ));
        }
    } else {
        specs.push(ModalitySpec::new(m, per));
    }
    let vals = read_f32(&v, fname, m)?;
    if let Some(i) = vals.iter().position(|x| !x.is_finite()) {
        return Err(Error::data(
            fname,
            format!("tensor `{m}` has a non-finite value at flat index {i}"),
        ));
    }
    Ok(vals)
}

/// The class count (configured, or the largest label + 1) and every split's labels checked
/// against it and stored in `splits`.
fn set_labels(cfg: &TensorsConfig, raw_labels: Vec<(Split, String, Vec<i64>)>, splits: &mut HashMap<Split, SplitData>) -> Result<usize> {
    // the largest label, with its file and index (an inferred class count names them)
    let (max_label, max_index, max_file) = raw_labels
        .iter()
        .flat_map(|(_, f, l)| l.iter().enumerate().map(move |(i, v)| (*v, i, f.as_str())))
        .max_by_key(|(v, _, _)| *v)
        .unwrap_or((0, 0, ""));
    let num_classes = crate::limits::class_count(cfg.num_classes, max_label, max_index, max_file)?;
    for (split, fname, labels) in raw_labels {
        if let Some((i, l)) = labels
            .iter()
            .enumerate()
            .find(|(_, l)| **l as u64 >= num_classes as u64)
        {
            return Err(Error::data(
                fname,
                format!("tensor `{}`: label {l} at index {i} is outside 0..{num_classes} (data.num_classes)", cfg.labels),
            ));
        }
        splits.get_mut(&split).expect("split loaded").labels =
            labels.into_iter().map(|l| l as u32).collect();
    }
    Ok(num_classes)
}

impl Dataset for TensorsDataset {
    fn name(&self) -> &str {
        "tensors"
    }
    fn num_classes(&self) -> usize {
        self.num_classes
    }
    fn modalities(&self) -> &[ModalitySpec] {
        &self.specs
    }
    fn len(&self, split: Split) -> usize {
        self.splits.get(&split).map_or(0, |s| s.n)
    }
    fn sample(
        &self,
        split: Split,
        index: usize,
        _aug: Option<&mut StdRng>,
    ) -> Result<(Vec<Vec<f32>>, u32)> {
        check_index("tensors", split, index, self.len(split))?;
        let s = &self.splits[&split];
        let xs = self
            .specs
            .iter()
            .zip(&s.data)
            .map(|(spec, d)| {
                let k = spec.numel();
                d[index * k..(index + 1) * k].to_vec()
            })
            .collect();
        Ok((xs, s.labels[index]))
    }
}

/// Write one split file: each modality tensor as F32 `[N, ...]` and `labels` as I64 `[N]`.
pub fn write_tensors_split(
    path: impl AsRef<Path>,
    modalities: &[(&str, &HostTensor)],
    labels: &[u32],
) -> Result<()> {
    let path = path.as_ref();
    let fname = path.display().to_string();
    let n = labels.len();
    let mut bufs: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = Vec::new();
    for (name, t) in modalities {
        if *name == "labels" {
            return Err(Error::data(fname, "a modality may not be named `labels`"));
        }
        if t.shape.first() != Some(&n) || t.shape.iter().product::<usize>() != t.data.len() {
            return Err(Error::shape(
                "write_tensors_split",
                format!(
                    "{fname}: tensor `{name}` shape {:?} ({} values) does not match {n} labels",
                    t.shape,
                    t.data.len()
                ),
            ));
        }
        bufs.push((
            name.to_string(),
            Dtype::F32,
            t.shape.clone(),
            t.data.iter().flat_map(|v| v.to_le_bytes()).collect(),
        ));
    }
    bufs.push((
        "labels".into(),
        Dtype::I64,
        vec![n],
        labels
            .iter()
            .flat_map(|&l| (l as i64).to_le_bytes())
            .collect(),
    ));
    let views: Vec<(String, TensorView<'_>)> = bufs
        .iter()
        .map(|(name, dt, shape, b)| {
            TensorView::new(*dt, shape.clone(), b)
                .map(|v| (name.clone(), v))
                .map_err(|e| Error::data(fname.clone(), format!("tensor `{name}`: {e}")))
        })
        .collect::<Result<_>>()?;
    let bytes = safetensors::serialize(views, None)
        .map_err(|e| Error::data(fname.clone(), format!("serialize: {e}")))?;
    std::fs::write(path, bytes).map_err(|e| Error::io(path, e))
}
