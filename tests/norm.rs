//! Batch norm and layer norm against CPU f64 references and finite differences.
mod common;
use common::*;
use equimodal::ops::{self, BatchNormState};
use equimodal::Tensor;

/// (mean, biased var) per channel of x [n, c, hw].
fn channel_stats(x: &[f64], n: usize, c: usize, hw: usize) -> Vec<(f64, f64)> {
    (0..c)
        .map(|ch| {
            let vals: Vec<f64> = (0..n).flat_map(|i| (0..hw).map(move |s| (i, s))).map(|(i, s)| x[(i * c + ch) * hw + s]).collect();
            let m = vals.iter().sum::<f64>() / vals.len() as f64;
            let v = vals.iter().map(|a| (a - m) * (a - m)).sum::<f64>() / vals.len() as f64;
            (m, v)
        })
        .collect()
}

#[allow(clippy::too_many_arguments)]
fn bn_ref(x: &[f64], w: &[f64], b: &[f64], stats: &[(f64, f64)], n: usize, c: usize, hw: usize, eps: f64) -> Vec<f64> {
    let mut y = vec![0.0; x.len()];
    for i in 0..n {
        for ch in 0..c {
            let (m, v) = stats[ch];
            for s in 0..hw {
                let k = (i * c + ch) * hw + s;
                y[k] = (x[k] - m) / (v + eps).sqrt() * w[ch] + b[ch];
            }
        }
    }
    y
}

fn bn_shape(n: usize, c: usize, hw: Option<(usize, usize)>) -> (Vec<usize>, usize) {
    match hw {
        Some((h, w)) => (vec![n, c, h, w], h * w),
        None => (vec![n, c], 1),
    }
}

#[test]
fn batch_norm_training_matches_reference_and_gradients() {
    let mut rng = Rng::new(21);
    let eps = 1e-5;
    for (n, c, hw) in [(3, 4, Some((5, 3))), (5, 3, None), (2, 1, Some((1, 1))), (1, 2, Some((17, 19)))] {
        let (shape, hws) = bn_shape(n, c, hw);
        let x = rng.uniforms(n * c * hws, -2.0, 3.0);
        let w = rng.uniforms(c, 0.5, 1.5);
        let b = rng.uniforms(c, -0.5, 0.5);
        check_op(
            &format!("batch_norm train {shape:?}"),
            &[(x, shape.clone()), (w, vec![c]), (b, vec![c])],
            &[0, 1, 2],
            &|t| {
                let st = BatchNormState::new(&gpu(), c, 0.1, eps as f32)?;
                ops::batch_norm(&t[0], &t[1], &t[2], &st, true)
            },
            &|xs| bn_ref(&xs[0], &xs[1], &xs[2], &channel_stats(&xs[0], n, c, hws), n, c, hws, eps),
            Tol { rtol: 1e-4, atol: 2e-5, grad_rtol: 3e-3, grad_atol: 3e-4 },
        );
    }
}

#[test]
fn batch_norm_eval_matches_reference_and_gradients() {
    let mut rng = Rng::new(22);
    let eps = 1e-3;
    for (n, c, hw) in [(3, 4, Some((5, 3))), (5, 3, None), (1, 1, Some((1, 1)))] {
        let (shape, hws) = bn_shape(n, c, hw);
        let x = rng.uniforms(n * c * hws, -2.0, 3.0);
        let w = rng.uniforms(c, 0.5, 1.5);
        let b = rng.uniforms(c, -0.5, 0.5);
        let rm = round_f32(&rng.uniforms(c, -1.0, 1.0));
        let rv = round_f32(&rng.uniforms(c, 0.5, 2.0));
        let stats: Vec<(f64, f64)> = rm.iter().zip(&rv).map(|(&m, &v)| (m, v)).collect();
        check_op(
            &format!("batch_norm eval {shape:?}"),
            &[(x, shape.clone()), (w, vec![c]), (b, vec![c])],
            &[0, 1, 2],
            &|t| {
                let g = gpu();
                let st = BatchNormState {
                    running_mean: upload(&g, &rm, &[c]),
                    running_var: upload(&g, &rv, &[c]),
                    momentum: 0.1,
                    eps: eps as f32,
                };
                let y = ops::batch_norm(&t[0], &t[1], &t[2], &st, false)?;
                // eval leaves the running stats alone
                assert_close("running_mean after eval", &st.running_mean.to_vec()?, &rm, 0.0, 0.0);
                Ok(y)
            },
            &|xs| bn_ref(&xs[0], &xs[1], &xs[2], &stats, n, c, hws, eps),
            Tol::default(),
        );
    }
}

#[test]
fn batch_norm_running_stats_after_two_steps() {
    let g = gpu();
    let mut rng = Rng::new(23);
    for (n, c, hw) in [(3, 4, Some((5, 3))), (6, 5, None)] {
        let (shape, hws) = bn_shape(n, c, hw);
        let momentum = 0.3;
        let st = BatchNormState::new(&g, c, momentum as f32, 1e-5).unwrap();
        let w = Tensor::full(&g, &[c], 1.0).unwrap();
        let b = Tensor::zeros(&g, &[c]).unwrap();
        let mut rm = vec![0.0; c];
        let mut rv = vec![1.0; c];
        for _ in 0..2 {
            let x = round_f32(&rng.uniforms(n * c * hws, -1.0, 4.0));
            let xt = upload(&g, &x, &shape);
            let _y = ops::batch_norm(&xt, &w, &b, &st, true).unwrap();
            let m = (n * hws) as f64;
            for (ch, (mean, var)) in channel_stats(&x, n, c, hws).into_iter().enumerate() {
                rm[ch] = (1.0 - momentum) * rm[ch] + momentum * mean;
                rv[ch] = (1.0 - momentum) * rv[ch] + momentum * var * m / (m - 1.0);
            }
        }
        assert_close("running_mean", &st.running_mean.to_vec().unwrap(), &rm, 1e-5, 1e-6);
        assert_close("running_var", &st.running_var.to_vec().unwrap(), &rv, 1e-5, 1e-6);
    }
}

#[test]
fn batch_norm_large_mean_is_numerically_sound() {
    // values 1000 + small noise: E[x^2] - E[x]^2 would cancel catastrophically in f32
    let g = gpu();
    let mut rng = Rng::new(24);
    let (n, c, hws) = (4, 2, 600);
    let x = round_f32(&rng.uniforms(n * c * hws, 999.0, 1001.0));
    let st = BatchNormState::new(&g, c, 0.1, 1e-5).unwrap();
    let w = Tensor::full(&g, &[c], 1.0).unwrap();
    let b = Tensor::zeros(&g, &[c]).unwrap();
    let y = ops::batch_norm(&upload(&g, &x, &[n, c, 20, 30]), &w, &b, &st, true).unwrap();
    let want = bn_ref(&x, &[1.0; 2], &[0.0; 2], &channel_stats(&x, n, c, hws), n, c, hws, 1e-5);
    assert_close("batch_norm offset 1000", &y.to_vec().unwrap(), &want, 1e-3, 1e-3);
}

#[test]
fn batch_norm_shape_errors_are_typed() {
    let g = gpu();
    let st = BatchNormState::new(&g, 3, 0.1, 1e-5).unwrap();
    let w = Tensor::full(&g, &[3], 1.0).unwrap();
    let b = Tensor::zeros(&g, &[3]).unwrap();
    let w4 = Tensor::full(&g, &[4], 1.0).unwrap();
    let x = Tensor::zeros(&g, &[2, 3, 2, 2]).unwrap();
    let e = ops::batch_norm(&x, &w4, &b, &st, true).unwrap_err().to_string();
    assert!(e.contains("weight") && e.contains("[4]") && e.contains("[2, 3, 2, 2]"), "{e}");
    let x3 = Tensor::zeros(&g, &[2, 3, 4]).unwrap();
    let e = ops::batch_norm(&x3, &w, &b, &st, true).unwrap_err().to_string();
    assert!(e.contains("[2, 3, 4]"), "{e}");
    let x1 = Tensor::zeros(&g, &[1, 3]).unwrap();
    let e = ops::batch_norm(&x1, &w, &b, &st, true).unwrap_err().to_string();
    assert!(e.contains("more than one value"), "{e}");
    assert!(ops::batch_norm(&x1, &w, &b, &st, false).is_ok());
}

fn ln_ref(x: &[f64], w: &[f64], b: &[f64], d: usize, eps: f64) -> Vec<f64> {
    let mut y = vec![0.0; x.len()];
    for (r, row) in x.chunks(d).enumerate() {
        let m = row.iter().sum::<f64>() / d as f64;
        let v = row.iter().map(|a| (a - m) * (a - m)).sum::<f64>() / d as f64;
        for j in 0..d {
            y[r * d + j] = (row[j] - m) / (v + eps).sqrt() * w[j] + b[j];
        }
    }
    y
}

#[test]
fn layer_norm_matches_reference_and_gradients() {
    let mut rng = Rng::new(25);
    let eps = 1e-5;
    for shape in [vec![3, 1], vec![2, 2, 7], vec![3, 300], vec![1, 7], vec![70, 7]] {
        let d = *shape.last().unwrap();
        let x = rng.uniforms(numel(&shape), -2.0, 2.0);
        let w = rng.uniforms(d, 0.5, 1.5);
        let b = rng.uniforms(d, -0.5, 0.5);
        check_op(
            &format!("layer_norm {shape:?}"),
            &[(x, shape.clone()), (w, vec![d]), (b, vec![d])],
            &[0, 1, 2],
            &|t| ops::layer_norm(&t[0], &t[1], &t[2], eps as f32),
            &|xs| ln_ref(&xs[0], &xs[1], &xs[2], d, eps),
            Tol { rtol: 1e-4, atol: 2e-5, grad_rtol: 3e-3, grad_atol: 3e-4 },
        );
    }
}

#[test]
fn layer_norm_shape_errors_are_typed() {
    let g = gpu();
    let x = Tensor::zeros(&g, &[2, 5]).unwrap();
    let w = Tensor::full(&g, &[4], 1.0).unwrap();
    let b = Tensor::zeros(&g, &[5]).unwrap();
    let e = ops::layer_norm(&x, &w, &b, 1e-5).unwrap_err().to_string();
    assert!(e.contains("layer_norm") && e.contains("[4]") && e.contains("[2, 5]"), "{e}");
    let w5 = Tensor::full(&g, &[5], 1.0).unwrap();
    let b3 = Tensor::zeros(&g, &[3]).unwrap();
    assert!(ops::layer_norm(&x, &w5, &b3, 1e-5).is_err());
}
