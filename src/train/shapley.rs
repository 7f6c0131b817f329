//! Each modality's Shapley contribution to the fused test accuracy: v(S) is the accuracy of
//! the trained model when only the modalities in S are present (the others' inputs replaced
//! by zeros), and φ_m = Σ_{S ⊆ M∖{m}} |S|!(|M|−|S|−1)!/|M|! · (v(S ∪ {m}) − v(S)). The φ_m
//! sum to v(M) − v(∅). With two modalities this is the average of m's leave-one-out gain
//! and its gain over no input at all.
use crate::data::{Dataset, Loader, LoaderConfig, Split};
use crate::error::{Error, Result};
use crate::gpu::Gpu;
use crate::methods::Method;
use crate::tensor::Tensor;
use std::sync::Arc;

/// Largest number of modalities: 2^M evaluations of the test split.
pub const MAX_MODALITIES: usize = 8;

/// v(S) for every subset S (bit i set: modality i present), as fused test accuracy.
pub fn subset_accuracies(gpu: &Gpu, method: &dyn Method, ds: &Arc<dyn Dataset>, batch: usize) -> Result<Vec<f64>> {
    let m = ds.modalities().len();
    if m > MAX_MODALITIES {
        return Err(Error::config("data.modalities", format!("Shapley values over {m} modalities need 2^{m} evaluations; at most {MAX_MODALITIES} modalities")));
    }
    let k = ds.num_classes();
    let mut correct = vec![0usize; 1 << m];
    let mut total = 0usize;
    let mut lc = LoaderConfig::eval(batch);
    lc.workers = 1;
    for b in Loader::new(ds.clone(), Split::Test, lc)? {
        let b = b?;
        let db = super::upload_batch(gpu, &b, k)?;
        let zeros = db.inputs.iter().map(|x| Tensor::zeros(gpu, x.shape())).collect::<Result<Vec<_>>>()?;
        for (subset, c) in correct.iter_mut().enumerate() {
            let inputs: Vec<Tensor> = (0..m).map(|i| if subset >> i & 1 == 1 { db.inputs[i].clone() } else { zeros[i].clone() }).collect();
            let logits = method.predict(&inputs)?.fused.to_vec()?;
            let pred = super::metrics::argmax_rows(&logits, k);
            *c += pred.iter().zip(&b.labels).filter(|(p, &y)| **p == y as usize).count();
        }
        total += b.labels.len();
    }
    if total == 0 {
        return Err(Error::config("data", "the test split is empty"));
    }
    Ok(correct.into_iter().map(|c| c as f64 / total as f64).collect())
}

/// The Shapley values of `m` players from the values of every coalition (bit i: player i).
pub fn shapley(v: &[f64], m: usize) -> Vec<f64> {
    let fact = |n: usize| (1..=n).map(|x| x as f64).product::<f64>();
    (0..m)
        .map(|p| {
            (0..1usize << m)
                .filter(|s| s >> p & 1 == 0)
                .map(|s| {
                    let size = s.count_ones() as usize;
                    fact(size) * fact(m - size - 1) / fact(m) * (v[s | 1 << p] - v[s])
                })
                .sum()
        })
        .collect()
}
