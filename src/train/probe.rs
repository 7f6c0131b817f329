//! The field's unimodal metric: a linear probe of each modality's frozen encoder. OGM-GE and
//! its successors report "audio-only" and "visual-only" accuracy this way: the trained
//! encoder's features of the training split, standardised, fit a multinomial logistic
//! regression; its accuracy on the test split's features is the modality's probe accuracy.
//!
//! The regression is full-batch gradient descent (Adam, a fixed number of steps, a small L2
//! penalty) on the GPU with the engine's own ops; features are extracted in eval mode and
//! never update the network.
use super::metrics::{self, Metrics};
use crate::data::{Dataset, Loader, LoaderConfig, Split};
use crate::error::{Error, Result};
use crate::gpu::Gpu;
use crate::methods::Method;
use crate::ops;
use crate::optim::{Adam, AdamConfig, Optimizer, Param};
use crate::tensor::Tensor;
use std::sync::Arc;

/// Settings of the probe's logistic regression.
#[derive(Clone, Copy, Debug)]
pub struct ProbeConfig {
    /// full-batch Adam steps
    pub steps: usize,
    /// Adam learning rate.
    pub lr: f32,
    /// L2 penalty on the weights (coupled, as `weight_decay` in torch's Adam)
    pub weight_decay: f32,
}

impl Default for ProbeConfig {
    fn default() -> Self {
        ProbeConfig { steps: 300, lr: 0.05, weight_decay: 1e-4 }
    }
}

/// One modality's features of a split: row-major values and the width.
type Features = Option<(Vec<f32>, usize)>;

/// Every sample's encoder features per modality on one split, and the labels.
fn features(gpu: &Gpu, method: &dyn Method, ds: &Arc<dyn Dataset>, split: Split, batch: usize) -> Result<(Vec<Features>, Vec<u32>)> {
    let m = ds.modalities().len();
    let mut out: Vec<Features> = vec![Some((Vec::new(), 0)); m];
    let mut labels = Vec::new();
    let mut lc = LoaderConfig::eval(batch);
    lc.workers = 1;
    for b in Loader::new(ds.clone(), split, lc)? {
        let b = b?;
        let db = super::upload_batch(gpu, &b, ds.num_classes())?;
        let feats = method.features(&db.inputs)?;
        if feats.len() != m {
            return Err(Error::Other(format!("{}: features for {} modalities, the data has {m}", method.name(), feats.len())));
        }
        for (slot, f) in out.iter_mut().zip(feats) {
            match (slot.as_mut(), f) {
                (Some((v, d)), Some(t)) => {
                    *d = t.numel() / b.labels.len().max(1);
                    v.extend(t.to_vec()?);
                }
                _ => *slot = None,
            }
        }
        labels.extend(b.labels);
    }
    Ok((out, labels))
}

/// Per-column mean and standard deviation of a row-major [n, d] matrix.
fn column_stats(x: &[f32], d: usize) -> (Vec<f32>, Vec<f32>) {
    let n = (x.len() / d.max(1)).max(1) as f64;
    let mut mean = vec![0f64; d];
    for row in x.chunks(d) {
        for (m, v) in mean.iter_mut().zip(row) {
            *m += *v as f64;
        }
    }
    mean.iter_mut().for_each(|m| *m /= n);
    let mut var = vec![0f64; d];
    for row in x.chunks(d) {
        for ((s, v), m) in var.iter_mut().zip(row).zip(&mean) {
            *s += (*v as f64 - m).powi(2);
        }
    }
    // a constant column (a dead unit) is left at zero rather than divided by zero
    let std = var.iter().map(|s| ((s / n).sqrt() as f32).max(1e-6)).collect();
    (mean.iter().map(|m| *m as f32).collect(), std)
}

fn standardise(x: &mut [f32], d: usize, mean: &[f32], std: &[f32]) {
    for row in x.chunks_mut(d) {
        for ((v, m), s) in row.iter_mut().zip(mean).zip(std) {
            *v = (*v - m) / s;
        }
    }
}

/// Fit a multinomial logistic regression on `(x, y)` ([n, d] features, labels < k) and
/// return the test logits of `x_test`.
pub fn fit_and_predict(gpu: &Gpu, x: &[f32], y: &[u32], x_test: &[f32], d: usize, k: usize, cfg: &ProbeConfig) -> Result<Vec<f32>> {
    let n = y.len();
    if n == 0 || d == 0 || x.len() != n * d || !x_test.len().is_multiple_of(d) {
        return Err(Error::shape("linear_probe", format!("features {} values for {n} samples of width {d}, test {} values", x.len(), x_test.len())));
    }
    let xt = Tensor::from_slice(gpu, x, &[n, d])?;
    let labels = ops::labels(gpu, y, k)?;
    let w = Tensor::zeros(gpu, &[k, d])?.requires_grad();
    let b = Tensor::zeros(gpu, &[k])?.requires_grad();
    let params = [Param::new("probe.weight", w.clone()), Param::new("probe.bias", b.clone())];
    let mut adam = Adam::new(&params, AdamConfig { lr: cfg.lr, weight_decay: cfg.weight_decay, ..Default::default() })?;
    for _ in 0..cfg.steps {
        let loss = ops::cross_entropy(&ops::linear(&xt, &w, Some(&b), None)?, ops::Target::Hard(&labels), None)?;
        adam.step(&loss.backward()?)?;
    }
    let _ng = crate::autograd::no_grad();
    let test = Tensor::from_slice(gpu, x_test, &[x_test.len() / d, d])?;
    ops::linear(&test, &w.detach(), Some(&b.detach()), None)?.to_vec()
}

/// The probe accuracy of every modality the method has an encoder for (None elsewhere),
/// trained on the training split's features and measured on the test split's.
pub fn linear_probe(gpu: &Gpu, method: &dyn Method, ds: &Arc<dyn Dataset>, batch: usize, cfg: &ProbeConfig) -> Result<Vec<Option<Metrics>>> {
    let k = ds.num_classes();
    let (train, y) = features(gpu, method, ds, Split::Train, batch)?;
    let (test, y_test) = features(gpu, method, ds, Split::Test, batch)?;
    train
        .into_iter()
        .zip(test)
        .map(|(tr, te)| match (tr, te) {
            (Some((mut x, d)), Some((mut xt, _))) if d > 0 => {
                let (mean, std) = column_stats(&x, d);
                standardise(&mut x, d, &mean, &std);
                standardise(&mut xt, d, &mean, &std);
                let logits = fit_and_predict(gpu, &x, &y, &xt, d, k, cfg)?;
                Ok(Some(metrics::evaluate_logits(&logits, &y_test, k)))
            }
            _ => Ok(None),
        })
        .collect()
}

/// Name of the probe's record inside a run directory (written when `train.probe = true`).
pub const PROBE_FILE: &str = "probe.json";

/// One modality's linear-probe test figures in [`ProbeRecord`].
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ProbeScore {
    /// Test accuracy, as a fraction.
    pub acc: f64,
    /// Test macro-F1.
    pub macro_f1: f64,
}

/// The content of `probe.json`: the linear probe of every modality's frozen encoder and
/// each modality's Shapley contribution to the fused test accuracy. Written by the trainer,
/// read by the charts (`report`) and by `compare`: the one definition of the file's format.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ProbeRecord {
    /// Modality names in dataset order (the charts' order); files written before this field
    /// existed lack it, and their modalities are then taken in name order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub modalities: Vec<String>,
    /// Probe test figures by modality; a modality the method has no encoder for is absent.
    pub probe: std::collections::BTreeMap<String, ProbeScore>,
    /// Shapley contribution to the fused test accuracy by modality, as a fraction (0.1: ten
    /// points); they add up to `accuracy − accuracy_without_inputs`.
    pub shapley: std::collections::BTreeMap<String, f64>,
    /// Fused test accuracy of the probed model with every modality present, v(all); absent
    /// from files written before this field existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accuracy: Option<f64>,
    /// Fused test accuracy with every input zeroed, v(∅).
    pub accuracy_without_inputs: f64,
}

impl ProbeRecord {
    /// The record of probe results (`linear_probe`, per modality in `names` order) and subset
    /// accuracies (`shapley::subset_accuracies`: v(S) by bit mask over `names`).
    pub fn new(names: &[String], probe: &[Option<Metrics>], subsets: &[f64]) -> ProbeRecord {
        let phi = super::shapley::shapley(subsets, names.len());
        ProbeRecord {
            modalities: names.to_vec(),
            probe: names
                .iter()
                .zip(probe)
                .filter_map(|(n, m)| Some((n.clone(), ProbeScore { acc: m.as_ref()?.acc, macro_f1: m.as_ref()?.macro_f1 })))
                .collect(),
            shapley: names.iter().cloned().zip(phi).collect(),
            accuracy: subsets.last().copied(),
            accuracy_without_inputs: subsets.first().copied().unwrap_or(f64::NAN),
        }
    }

    /// Reads `path` (a `probe.json`); an unreadable or malformed file is an error naming it
    /// and the field that is wrong.
    pub fn read(path: &std::path::Path) -> Result<ProbeRecord> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let de = &mut serde_json::Deserializer::from_str(&text);
        serde_path_to_error::deserialize(de).map_err(|e| Error::data(path.display().to_string(), format!("field `{}`: {}", e.path(), e.inner())))
    }

    /// Writes the record to `path` as one line of JSON (atomically: a reader never sees half).
    pub fn write(&self, path: &std::path::Path) -> Result<()> {
        let text = serde_json::to_string(self).map_err(|e| Error::data(path.display().to_string(), e.to_string()))?;
        super::checkpoint::write_atomic(path, format!("{text}\n").as_bytes())
    }

    /// The modalities in display order: `modalities` when the file has it, else every name
    /// the probe or the Shapley values mention, in name order.
    pub fn modality_order(&self) -> Vec<String> {
        if !self.modalities.is_empty() {
            return self.modalities.clone();
        }
        let names: std::collections::BTreeSet<&String> = self.probe.keys().chain(self.shapley.keys()).collect();
        names.into_iter().cloned().collect()
    }
}
