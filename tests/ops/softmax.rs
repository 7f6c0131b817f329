//! Softmax, log-softmax, cross-entropy, true-class probability and argmax against CPU f64
//! references and finite differences.
use crate::common;
use common::*;
use equimodal::ops::{self, Target};
use equimodal::{Error, Tensor};

fn softmax_ref(x: &[f64], cols: usize, log: bool) -> Vec<f64> {
    let mut out = Vec::with_capacity(x.len());
    for row in x.chunks(cols) {
        let m = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let s: f64 = row.iter().map(|v| (v - m).exp()).sum();
        for v in row {
            out.push(if log { v - m - s.ln() } else { (v - m).exp() / s });
        }
    }
    out
}

/// Per-row -sum_k t_k log softmax_k, times the row weight.
fn ce_rows_ref(x: &[f64], t: &[f64], w: Option<&[f64]>, k: usize) -> Vec<f64> {
    let ls = softmax_ref(x, k, true);
    ls.chunks(k)
        .zip(t.chunks(k))
        .enumerate()
        .map(|(i, (l, tt))| -l.iter().zip(tt).map(|(a, b)| a * b).sum::<f64>() * w.map_or(1.0, |w| w[i]))
        .collect()
}

fn one_hot(y: &[u32], k: usize) -> Vec<f64> {
    let mut t = vec![0.0; y.len() * k];
    for (i, &c) in y.iter().enumerate() {
        t[i * k + c as usize] = 1.0;
    }
    t
}

fn mean(v: Vec<f64>) -> Vec<f64> {
    vec![v.iter().sum::<f64>() / v.len() as f64]
}

#[test]
fn softmax_and_log_softmax_match_reference_and_gradients() {
    let mut rng = Rng::new(7);
    // rows of length 1, 7 (short rows packed 32 to a workgroup; 33 rows need a second one),
    // 300 and 1000 (longer than the 256-thread workgroup: threads loop)
    let shapes: Vec<Vec<usize>> =
        vec![vec![1, 1], vec![5, 1], vec![3, 7], vec![33, 7], vec![2, 3, 7], vec![1, 300], vec![3, 300], vec![2, 1000], vec![7]];
    for shape in shapes {
        let cols = *shape.last().unwrap();
        let x = rng.uniforms(numel(&shape), -3.0, 3.0);
        for log in [false, true] {
            let name = format!("{}{:?}", if log { "log_softmax" } else { "softmax" }, shape);
            check_op(
                &name,
                &[(x.clone(), shape.clone())],
                &[0],
                &|t| if log { ops::log_softmax(&t[0]) } else { ops::softmax(&t[0]) },
                &|xs| softmax_ref(&xs[0], cols, log),
                // row sums of `cols` exponentials (probabilities of scale 1 / cols .. 1)
                Tol::sums(cols, 1.0, cols, 1.0),
            );
        }
    }
}

#[test]
fn softmax_is_stable_for_large_logits() {
    let g = gpu();
    let x = Tensor::from_slice(&g, &[1000.0, -1000.0, 999.0, 0.0, -1000.0, -1000.0], &[2, 3]).unwrap();
    let y = ops::softmax(&x).unwrap().to_vec().unwrap();
    let want = softmax_ref(&[1000.0, -1000.0, 999.0, 0.0, -1000.0, -1000.0], 3, false);
    assert_close("softmax large", &y, &want, 1e-5, 1e-7);
    let y = ops::log_softmax(&x).unwrap().to_vec().unwrap();
    let want = softmax_ref(&[1000.0, -1000.0, 999.0, 0.0, -1000.0, -1000.0], 3, true);
    // log-probabilities down to -2000: ulp(2000) = 1.2e-4
    assert_close("log_softmax large", &y, &want, 1e-5, 1e-4);
}

#[test]
fn cross_entropy_hard_labels_match_reference_and_gradients() {
    let g = gpu();
    let mut rng = Rng::new(11);
    // (600, 3): more rows than one workgroup reduces in one pass (the mean's row loop)
    for &(n, k) in &[(5usize, 2usize), (9, 6), (40, 6), (4, 10), (3, 1000), (1, 6), (600, 3)] {
        let x = rng.uniforms(n * k, -4.0, 4.0);
        let y: Vec<u32> = (0..n).map(|_| rng.below(k) as u32).collect();
        let w = rng.uniforms(n, 0.2, 2.0);
        let lt = ops::labels(&g, &y, k).unwrap();
        let t = one_hot(&y, k);
        // log-sum-exp over k classes, then the mean over n rows
        let tol = Tol::sums(k.max(n), 1.0, k, 1.0);
        // mean, unweighted
        check_op(
            &format!("ce hard n{n} k{k}"),
            &[(x.clone(), vec![n, k])],
            &[0],
            &|ts| ops::cross_entropy(&ts[0], Target::Hard(&lt), None),
            &|xs| mean(ce_rows_ref(&xs[0], &t, None, k)),
            tol,
        );
        // mean, weighted (gradient for the weights too)
        check_op(
            &format!("ce hard weighted n{n} k{k}"),
            &[(x.clone(), vec![n, k]), (w.clone(), vec![n])],
            &[0, 1],
            &|ts| ops::cross_entropy(&ts[0], Target::Hard(&lt), Some(&ts[1])),
            &|xs| mean(ce_rows_ref(&xs[0], &t, Some(&xs[1]), k)),
            tol,
        );
        // per-row losses, weighted
        check_op(
            &format!("ce rows hard n{n} k{k}"),
            &[(x.clone(), vec![n, k]), (w.clone(), vec![n])],
            &[0, 1],
            &|ts| ops::cross_entropy_rows(&ts[0], Target::Hard(&lt), Some(&ts[1])),
            &|xs| ce_rows_ref(&xs[0], &t, Some(&xs[1]), k),
            tol,
        );
    }
}

#[test]
fn cross_entropy_soft_targets_match_reference_and_gradients() {
    let mut rng = Rng::new(13);
    for &(n, k) in &[(5usize, 2usize), (9, 6), (4, 10), (2, 1000)] {
        let x = rng.uniforms(n * k, -4.0, 4.0);
        // rows of probabilities (sum 1)
        let mut t = rng.uniforms(n * k, 0.0, 1.0);
        for row in t.chunks_mut(k) {
            let s: f64 = row.iter().sum();
            row.iter_mut().for_each(|v| *v /= s);
        }
        let w = rng.uniforms(n, 0.2, 2.0);
        // log-sum-exp over k classes, then the mean over n rows
        let tol = Tol::sums(k.max(n), 1.0, k, 1.0);
        check_op(
            &format!("ce soft n{n} k{k}"),
            &[(x.clone(), vec![n, k]), (t.clone(), vec![n, k])],
            &[0, 1],
            &|ts| ops::cross_entropy(&ts[0], Target::Soft(&ts[1]), None),
            &|xs| mean(ce_rows_ref(&xs[0], &xs[1], None, k)),
            tol,
        );
        check_op(
            &format!("ce soft weighted n{n} k{k}"),
            &[(x.clone(), vec![n, k]), (t.clone(), vec![n, k]), (w.clone(), vec![n])],
            &[0, 1, 2],
            &|ts| ops::cross_entropy(&ts[0], Target::Soft(&ts[1]), Some(&ts[2])),
            &|xs| mean(ce_rows_ref(&xs[0], &xs[1], Some(&xs[2]), k)),
            tol,
        );
        check_op(
            &format!("ce rows soft n{n} k{k}"),
            &[(x.clone(), vec![n, k]), (t.clone(), vec![n, k]), (w.clone(), vec![n])],
            &[0, 1, 2],
            &|ts| ops::cross_entropy_rows(&ts[0], Target::Soft(&ts[1]), Some(&ts[2])),
            &|xs| ce_rows_ref(&xs[0], &xs[1], Some(&xs[2]), k),
            tol,
        );
    }
}

#[test]
fn cross_entropy_is_stable_for_large_logits() {
    let g = gpu();
    // logits +-1000: naive exp overflows; the loss must be finite and exact
    let x = [1000.0f32, -1000.0, 0.0, -1000.0, 1000.0, 1000.0];
    let xt = Tensor::from_slice(&g, &x, &[2, 3]).unwrap().requires_grad();
    let y = ops::labels(&g, &[1, 0], 3).unwrap();
    let loss = ops::cross_entropy(&xt, Target::Hard(&y), None).unwrap();
    let xd: Vec<f64> = x.iter().map(|&v| v as f64).collect();
    let want = mean(ce_rows_ref(&xd, &one_hot(&[1, 0], 3), None, 3));
    let got = loss.item().unwrap();
    assert!(got.is_finite(), "loss {got}");
    // a loss of ~1000 from logits of +-1000: ulp(1000) = 6e-5, a few roundings
    assert_close("ce large logits", &[got], &want, 1e-6, 1e-3);
    let grads = loss.backward().unwrap();
    let gx = grads.get(&xt).unwrap().to_vec().unwrap();
    assert!(gx.iter().all(|v| v.is_finite()), "{gx:?}");
    // d/dx = (softmax - onehot) / N
    let sm = softmax_ref(&xd, 3, false);
    let oh = one_hot(&[1, 0], 3);
    let want_g: Vec<f64> = sm.iter().zip(&oh).map(|(s, t)| (s - t) / 2.0).collect();
    assert_close("ce large logits grad", &gx, &want_g, 1e-5, 1e-6);
    // soft targets too
    let t = Tensor::from_slice(&g, &[0.5, 0.5, 0.0, 0.2, 0.3, 0.5], &[2, 3]).unwrap();
    let got = ops::cross_entropy(&xt, Target::Soft(&t), None).unwrap().item().unwrap();
    let want = mean(ce_rows_ref(&xd, &[0.5, 0.5, 0.0, 0.2, 0.3, 0.5], None, 3));
    // sums of target x log-probability terms of size up to 2000 (ulp 1.2e-4)
    assert_close("ce soft large logits", &[got], &want, 1e-5, 1e-3);
}

#[test]
fn cross_entropy_guards_out_of_range_labels_in_the_kernel() {
    let g = gpu();
    let x = Tensor::from_slice(&g, &[0.1, 0.2, 0.3, 0.4, 0.5, 0.6], &[2, 3]).unwrap();
    // bypass `labels` validation: label 7 for 3 classes
    let y = Tensor::from_u32(&g, &[1, 7], &[2]).unwrap();
    let rows = ops::cross_entropy_rows(&x, Target::Hard(&y), None).unwrap().to_vec().unwrap();
    assert!(rows[0].is_finite() && rows[1].is_nan(), "{rows:?}");
    assert!(ops::cross_entropy(&x, Target::Hard(&y), None).unwrap().item().unwrap().is_nan());
    let p = ops::true_class_prob(&x, &y).unwrap().to_vec().unwrap();
    assert!(p[0].is_finite() && p[1].is_nan(), "{p:?}");
}

#[test]
fn cross_entropy_under_no_grad_and_untracked_logits() {
    let g = gpu();
    let x = Tensor::from_slice(&g, &[0.1, 0.2, 0.3, 0.4, 0.5, 0.6], &[2, 3]).unwrap();
    let y = ops::labels(&g, &[2, 0], 3).unwrap();
    let want = mean(ce_rows_ref(&[0.1, 0.2, 0.3, 0.4, 0.5, 0.6].map(|v: f32| v as f64), &one_hot(&[2, 0], 3), None, 3));
    let a = ops::cross_entropy(&x, Target::Hard(&y), None).unwrap().item().unwrap();
    let xt = x.requires_grad();
    let b = {
        let _ng = equimodal::autograd::no_grad();
        ops::cross_entropy(&xt, Target::Hard(&y), None).unwrap().item().unwrap()
    };
    assert_close("ce untracked", &[a, b], &[want[0], want[0]], 1e-5, 1e-6);
}

#[test]
fn true_class_prob_and_argmax() {
    let g = gpu();
    let mut rng = Rng::new(17);
    for &(n, k) in &[(1usize, 1usize), (5, 6), (40, 7), (3, 300), (2, 1000)] {
        let x = round_f32(&rng.uniforms(n * k, -3.0, 3.0));
        let y: Vec<u32> = (0..n).map(|_| rng.below(k) as u32).collect();
        let xt = upload(&g, &x, &[n, k]);
        let lt = ops::labels(&g, &y, k).unwrap();
        let p = ops::true_class_prob(&xt, &lt).unwrap().to_vec().unwrap();
        let sm = softmax_ref(&x, k, false);
        let want: Vec<f64> = (0..n).map(|i| sm[i * k + y[i] as usize]).collect();
        assert_close(&format!("true_class_prob n{n} k{k}"), &p, &want, 1e-5, 1e-7);
        let am = ops::argmax(&xt).unwrap().to_vec_u32().unwrap();
        let want: Vec<u32> = x
            .chunks(k)
            .map(|r| {
                let mut b = 0;
                for (j, &v) in r.iter().enumerate() {
                    if v > r[b] {
                        b = j;
                    }
                }
                b as u32
            })
            .collect();
        assert_eq!(am, want, "argmax n{n} k{k}");
    }
    // ties: the first index wins; 3-D input: rows = numel / last dim
    let x = Tensor::from_slice(&g, &[1.0, 3.0, 3.0, 0.0, 2.0, 2.0, 2.0, 2.0, -1.0, -1.0, -5.0, -1.0], &[3, 1, 4]).unwrap();
    assert_eq!(ops::argmax(&x).unwrap().to_vec_u32().unwrap(), vec![1, 0, 0]);
}

#[test]
fn typed_errors_name_shapes_and_labels() {
    let g = gpu();
    // labels out of range: index and value named
    let e = ops::labels(&g, &[0, 1, 9, 2, 11], 6).unwrap_err();
    assert!(matches!(e, Error::Data { .. }), "{e}");
    let msg = e.to_string();
    assert!(msg.contains("index 2") && msg.contains("9") && msg.contains('6'), "{msg}");
    // mismatched label count
    let x = Tensor::zeros(&g, &[4, 6]).unwrap();
    let y = ops::labels(&g, &[0, 1, 2, 3, 4], 6).unwrap();
    let e = ops::cross_entropy(&x, Target::Hard(&y), None).unwrap_err();
    let msg = e.to_string();
    assert!(matches!(e, Error::Shape { .. }) && msg.contains("[5]") && msg.contains("[4, 6]"), "{msg}");
    // soft target shape
    let t = Tensor::zeros(&g, &[4, 5]).unwrap();
    let msg = ops::cross_entropy_rows(&x, Target::Soft(&t), None).unwrap_err().to_string();
    assert!(msg.contains("[4, 5]") && msg.contains("[4, 6]"), "{msg}");
    // weights shape
    let y4 = ops::labels(&g, &[0, 1, 2, 3], 6).unwrap();
    let w = Tensor::zeros(&g, &[3]).unwrap();
    let msg = ops::cross_entropy(&x, Target::Hard(&y4), Some(&w)).unwrap_err().to_string();
    assert!(msg.contains("[3]") && msg.contains("[4, 6]"), "{msg}");
    // labels as f32: dtype error
    let yf = Tensor::zeros(&g, &[4]).unwrap();
    assert!(matches!(ops::cross_entropy(&x, Target::Hard(&yf), None), Err(Error::DType { .. })));
    // logits not 2-D
    let x3 = Tensor::zeros(&g, &[2, 2, 6]).unwrap();
    let msg = ops::cross_entropy(&x3, Target::Hard(&y4), None).unwrap_err().to_string();
    assert!(msg.contains("[2, 2, 6]"), "{msg}");
    // softmax of a 0-d tensor
    let s = Tensor::zeros(&g, &[]).unwrap();
    assert!(matches!(ops::softmax(&s), Err(Error::Shape { .. })));
    assert!(matches!(ops::labels(&g, &[0], 0), Err(Error::Data { .. })));
}

/// Softmax and cross-entropy with at most 3 workgroups per grid dimension
/// (`with_workgroup_cap`): row kernels on folded grids with spare workgroups.
#[test]
fn softmax_and_cross_entropy_under_workgroup_cap() {
    with_workgroup_cap(3, || {
        softmax_and_log_softmax_match_reference_and_gradients();
        cross_entropy_hard_labels_match_reference_and_gradients();
        cross_entropy_soft_targets_match_reference_and_gradients();
        true_class_prob_and_argmax();
        assert_canaries("true_class_prob / argmax");
    });
}
