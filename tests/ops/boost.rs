//! AUG's fused boosting loss against a CPU f64 reference and finite differences, for 1, 2
//! and many learners, in both the paper and the code form.
use crate::common;
use common::*;
use equimodal::ops::{self, BoostForm};
use equimodal::Tensor;

fn lse(r: &[f64]) -> f64 {
    let m = r.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    m + r.iter().map(|v| (v - m).exp()).sum::<f64>().ln()
}

/// Mean AUG loss. `frozen` gives the logits p_prev is computed from (the code form detaches
/// it: finite differences must then see p_prev as a constant).
fn reference(l: &[f64], frozen: &[f64], y: &[u32], n: usize, t: usize, k: usize, lambda: f64) -> f64 {
    let mut total = 0.0;
    for i in 0..n {
        let row = |src: &[f64], upto: std::ops::Range<usize>| -> Vec<f64> {
            (0..k).map(|j| upto.clone().map(|s| src[(i * t + s) * k + j]).sum()).collect()
        };
        let yy = y[i] as usize;
        let all = row(l, 0..t);
        let ce_all = lse(&all) - all[yy];
        if t == 1 {
            total += ce_all;
            continue;
        }
        let prev = row(l, 0..t - 1);
        let newest = row(l, t - 1..t);
        let prev_frozen = row(frozen, 0..t - 1);
        let py = (prev_frozen[yy] - lse(&prev_frozen)).exp();
        total += ce_all + (lse(&prev) - prev[yy]) + (1.0 - lambda * py) * (lse(&newest) - newest[yy]);
    }
    total / n as f64
}

#[test]
fn boost_loss_matches_reference_and_gradients() {
    let mut rng = Rng::new(11);
    for &(n, t, k) in &[(5usize, 1usize, 3usize), (7, 2, 6), (4, 5, 10), (70, 3, 4), (3, 12, 2)] {
        for form in [BoostForm::Paper, BoostForm::Code] {
            let lambda = 0.5;
            let x = round_f32(&rng.normals(n * t * k).iter().map(|v| 2.0 * v).collect::<Vec<_>>());
            let y: Vec<u32> = (0..n).map(|_| rng.below(k) as u32).collect();
            let frozen = x.clone();
            let y2 = y.clone();
            let cpu = move |xs: &[Vec<f64>]| {
                let fz: &[f64] = if form == BoostForm::Code { &frozen } else { &xs[0] };
                vec![reference(&xs[0], fz, &y2, n, t, k, lambda)]
            };
            let g = gpu();
            let labels = Tensor::from_u32(&g, &y, &[n]).unwrap();
            check_op(
                &format!("boost {form:?} n{n} t{t} k{k}"),
                &[(x.clone(), vec![n, t, k])],
                &[0],
                &|ts| Ok(ops::boost_loss(&ts[0], &labels, lambda as f32, form)?.0),
                &cpu,
                // log-sum-exps over k classes of sums over t learners, averaged over n samples
                Tol::sums(n * t * k, 1.0, t * k, 1.0),
            );
            // confidence = softmax(sum of all learners)[y]
            let xt = upload(&g, &x, &[n, t, k]);
            let (_, conf) = ops::boost_loss(&xt, &labels, lambda as f32, form).unwrap();
            let want: Vec<f64> = (0..n)
                .map(|i| {
                    let all: Vec<f64> = (0..k).map(|j| (0..t).map(|s| x[(i * t + s) * k + j]).sum()).collect();
                    (all[y[i] as usize] - lse(&all)).exp()
                })
                .collect();
            assert_close("boost confidence", &conf.to_vec().unwrap(), &want, 1e-5, 1e-6);
        }
    }
}

#[test]
fn paper_and_code_forms_differ_only_in_the_older_learners_gradient() {
    let g = gpu();
    let mut rng = Rng::new(12);
    let (n, t, k) = (6, 3, 5);
    let x = rng.normals(n * t * k);
    let y: Vec<u32> = (0..n).map(|_| rng.below(k) as u32).collect();
    let labels = Tensor::from_u32(&g, &y, &[n]).unwrap();
    let grads = |form| {
        let xt = upload(&g, &x, &[n, t, k]).requires_grad();
        let (loss, _) = ops::boost_loss(&xt, &labels, 0.5, form).unwrap();
        let gr = loss.backward().unwrap();
        (loss.item().unwrap(), gr.get(&xt).unwrap().to_vec().unwrap())
    };
    let (lp, gp) = grads(BoostForm::Paper);
    let (lc, gc) = grads(BoostForm::Code);
    assert_eq!(lp, lc, "same loss value");
    for i in 0..n {
        for s in 0..t {
            for j in 0..k {
                let idx = (i * t + s) * k + j;
                if s == t - 1 {
                    assert_eq!(gp[idx], gc[idx], "newest learner's gradient is the same");
                }
            }
        }
    }
    assert!(gp.iter().zip(&gc).any(|(a, b)| (a - b).abs() > 1e-6), "older learners differ");
}

#[test]
fn bad_shapes_are_typed_errors() {
    let g = gpu();
    let x = Tensor::zeros(&g, &[4, 6]).unwrap();
    let y = Tensor::from_u32(&g, &[0, 1, 2, 3], &[4]).unwrap();
    let e = ops::boost_loss(&x, &y, 0.5, BoostForm::Code).unwrap_err().to_string();
    assert!(e.contains("[4, 6]"), "{e}");
    let x = Tensor::zeros(&g, &[4, 2, 6]).unwrap();
    let y3 = Tensor::from_u32(&g, &[0, 1, 2], &[3]).unwrap();
    let e = ops::boost_loss(&x, &y3, 0.5, BoostForm::Code).unwrap_err().to_string();
    assert!(e.contains("[3]"), "{e}");
}

#[test]
fn empty_logits_are_typed_errors() {
    let g = gpu();
    for shape in [[0, 2, 3], [2, 0, 3], [2, 2, 0]] {
        let x = Tensor::zeros(&g, &shape).unwrap();
        let y = Tensor::from_u32(&g, &vec![0; shape[0]], &[shape[0]]).unwrap();
        let e = ops::boost_loss(&x, &y, 0.5, BoostForm::Code).unwrap_err().to_string();
        assert!(e.contains("empty") && e.contains(&format!("{shape:?}")), "{shape:?}: {e}");
    }
}

#[test]
fn forms_parse_and_print_by_name() {
    for (s, f) in [("paper", BoostForm::Paper), ("code", BoostForm::Code)] {
        assert_eq!(s.parse::<BoostForm>().unwrap(), f);
        assert_eq!(f.to_string(), s);
    }
    let e = "residual".parse::<BoostForm>().unwrap_err();
    assert!(e.contains("residual") && e.contains("paper, code"), "{e}");
}

#[test]
fn a_second_backward_names_the_boosting_loss() {
    let g = gpu();
    let x = Tensor::zeros(&g, &[2, 1, 3]).unwrap().requires_grad();
    let y = Tensor::from_u32(&g, &[0, 2], &[2]).unwrap();
    let (loss, _) = ops::boost_loss(&x, &y, 0.5, BoostForm::Code).unwrap();
    loss.backward().unwrap();
    let Err(e) = loss.backward() else { panic!("a second backward succeeded") };
    let e = e.to_string();
    assert!(e.contains("`boost_loss`"), "{e}");
}
