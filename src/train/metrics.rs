//! Classification metrics on the host: accuracy, macro-F1, mAP (mean over classes of the
//! average precision of the class scores), plus confidence scores.

/// argmax of each row of `logits` ([n, k] row-major).
pub fn argmax_rows(logits: &[f32], k: usize) -> Vec<usize> {
    logits
        .chunks(k)
        .map(|r| r.iter().enumerate().fold((0, f32::NEG_INFINITY), |b, (i, &v)| if v > b.1 { (i, v) } else { b }).0)
        .collect()
}

/// Softmax of each row of `logits` (`[n, k]` row-major) in f64, max-subtracted; `[n, k]`.
pub fn softmax_rows(logits: &[f32], k: usize) -> Vec<f64> {
    let mut out = Vec::with_capacity(logits.len());
    for r in logits.chunks(k) {
        let m = r.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b)) as f64;
        let e: Vec<f64> = r.iter().map(|&v| (v as f64 - m).exp()).collect();
        let s: f64 = e.iter().sum();
        out.extend(e.iter().map(|v| v / s));
    }
    out
}

/// Fraction of `pred` equal to `labels`, in [0, 1]; NaN for no labels.
pub fn accuracy(pred: &[usize], labels: &[u32]) -> f64 {
    if labels.is_empty() {
        return f64::NAN;
    }
    pred.iter().zip(labels).filter(|(p, &y)| **p == y as usize).count() as f64 / labels.len() as f64
}

/// Mean over classes of F1 (classes absent from both labels and predictions are skipped).
pub fn macro_f1(pred: &[usize], labels: &[u32], k: usize) -> f64 {
    let mut tp = vec![0usize; k];
    let mut fp = vec![0usize; k];
    let mut fn_ = vec![0usize; k];
    for (&p, &y) in pred.iter().zip(labels) {
        let y = y as usize;
        if p == y {
            tp[p] += 1;
        } else {
            if p < k {
                fp[p] += 1;
            }
            fn_[y] += 1;
        }
    }
    let mut sum = 0.0;
    let mut n = 0;
    for c in 0..k {
        let denom = 2 * tp[c] + fp[c] + fn_[c];
        if denom == 0 {
            continue;
        }
        sum += 2.0 * tp[c] as f64 / denom as f64;
        n += 1;
    }
    if n == 0 {
        f64::NAN
    } else {
        sum / n as f64
    }
}

/// Average precision of one class: scores ranked high to low, mean of precision at each
/// positive (scikit-learn's definition, ties broken by order).
pub fn average_precision(scores: &[f64], positive: &[bool]) -> Option<f64> {
    let npos = positive.iter().filter(|&&p| p).count();
    if npos == 0 {
        return None;
    }
    let mut idx: Vec<usize> = (0..scores.len()).collect();
    idx.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]));
    let mut hits = 0usize;
    let mut ap = 0.0;
    for (rank, &i) in idx.iter().enumerate() {
        if positive[i] {
            hits += 1;
            ap += hits as f64 / (rank + 1) as f64;
        }
    }
    Some(ap / npos as f64)
}

/// Mean over classes present in `labels` of the average precision of softmax scores.
pub fn mean_average_precision(probs: &[f64], labels: &[u32], k: usize) -> f64 {
    let mut sum = 0.0;
    let mut n = 0;
    for c in 0..k {
        let scores: Vec<f64> = probs.chunks(k).map(|r| r[c]).collect();
        let pos: Vec<bool> = labels.iter().map(|&y| y as usize == c).collect();
        if let Some(ap) = average_precision(&scores, &pos) {
            sum += ap;
            n += 1;
        }
    }
    if n == 0 {
        f64::NAN
    } else {
        sum / n as f64
    }
}

/// All metrics of one set of logits.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Metrics {
    /// Accuracy, a fraction in [0, 1].
    pub acc: f64,
    /// Macro-F1, see [`macro_f1`].
    pub macro_f1: f64,
    /// Mean average precision over classes.
    pub map: f64,
    /// mean cross-entropy
    pub loss: f64,
    /// mean probability of the true class
    pub confidence: f64,
}

/// Every metric of `logits` (`[n, k]` row-major) against `labels` (`n`, each `< k`).
pub fn evaluate_logits(logits: &[f32], labels: &[u32], k: usize) -> Metrics {
    let pred = argmax_rows(logits, k);
    let probs = softmax_rows(logits, k);
    let n = labels.len().max(1) as f64;
    let mut loss = 0.0;
    let mut conf = 0.0;
    for (r, &y) in probs.chunks(k).zip(labels) {
        let p = r[y as usize].max(1e-300);
        loss -= p.ln();
        conf += r[y as usize];
    }
    Metrics {
        acc: accuracy(&pred, labels),
        macro_f1: macro_f1(&pred, labels, k),
        map: mean_average_precision(&probs, labels, k),
        loss: loss / n,
        confidence: conf / n,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn metrics_on_a_known_case() {
        // 4 samples, 3 classes
        let logits = [2.0, 1.0, 0.0, 0.0, 3.0, 1.0, 0.0, 1.0, 4.0, 5.0, 0.0, 0.0];
        let labels = [0u32, 1, 1, 0];
        let m = evaluate_logits(&logits, &labels, 3);
        assert!((m.acc - 0.75).abs() < 1e-12);
        // class 0: tp 2; class 1: tp 1 fn 1; class 2: fp 1
        let f1 = (1.0 + 2.0 / 3.0 + 0.0) / 3.0;
        assert!((m.macro_f1 - f1).abs() < 1e-12, "{}", m.macro_f1);
        let ap = average_precision(&[0.9, 0.8, 0.7, 0.1], &[true, false, true, false]).unwrap();
        assert!((ap - (1.0 + 2.0 / 3.0) / 2.0).abs() < 1e-12);
        assert!(average_precision(&[0.1], &[false]).is_none());
    }
}
