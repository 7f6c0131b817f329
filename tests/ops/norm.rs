//! Batch norm and layer norm against CPU f64 references and finite differences.
use crate::common;
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
            // statistics and the weight / bias gradients sum m = n*hw values; the input
            // gradient is w/sigma (g - mean(g) - xhat mean(g xhat)): a difference of sums
            Tol::sums(n * hws, 1.0, n * hws, (n * hws) as f64),
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
        let w = equimodal::ops::full(&g, &[c], 1.0).unwrap();
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
    let w = equimodal::ops::full(&g, &[c], 1.0).unwrap();
    let b = Tensor::zeros(&g, &[c]).unwrap();
    let y = ops::batch_norm(&upload(&g, &x, &[n, c, 20, 30]), &w, &b, &st, true).unwrap();
    let want = bn_ref(&x, &[1.0; 2], &[0.0; 2], &channel_stats(&x, n, c, hws), n, c, hws, 1e-5);
    // x - mean in f32 loses up to ulp(1000) / 2 = 3e-5 of a standard deviation of 0.58, and
    // the mean itself carries ~u sqrt(m) 1000: ~1e-4 in y, so 1e-3 (this test is about the
    // catastrophic cancellation of E[x^2] - E[x]^2, which would be off by O(1))
    assert_close("batch_norm offset 1000", &y.to_vec().unwrap(), &want, 1e-3, 1e-3);
}

#[test]
fn batch_norm_shape_errors_are_typed() {
    let g = gpu();
    let st = BatchNormState::new(&g, 3, 0.1, 1e-5).unwrap();
    let w = equimodal::ops::full(&g, &[3], 1.0).unwrap();
    let b = Tensor::zeros(&g, &[3]).unwrap();
    let w4 = equimodal::ops::full(&g, &[4], 1.0).unwrap();
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
            // row statistics sum d values; dweight / dbias sum the rows, dx differences of sums
            Tol::sums(d, 1.0, d.max(numel(&shape) / d), (d.max(numel(&shape) / d)) as f64),
        );
    }
}

#[test]
fn layer_norm_shape_errors_are_typed() {
    let g = gpu();
    let x = Tensor::zeros(&g, &[2, 5]).unwrap();
    let w = equimodal::ops::full(&g, &[4], 1.0).unwrap();
    let b = Tensor::zeros(&g, &[5]).unwrap();
    let e = ops::layer_norm(&x, &w, &b, 1e-5).unwrap_err().to_string();
    assert!(e.contains("layer_norm") && e.contains("[4]") && e.contains("[2, 5]"), "{e}");
    let w5 = equimodal::ops::full(&g, &[5], 1.0).unwrap();
    let b3 = Tensor::zeros(&g, &[3]).unwrap();
    assert!(ops::layer_norm(&x, &w5, &b3, 1e-5).is_err());
}

/// (N, C, Some((H, W)) or None for x [N, C]).
type BnCase = (usize, usize, Option<(usize, usize)>);

/// Shapes whose channels split into several chunks in the batch-norm reductions (one
/// workgroup per (chunk, channel), see `bn_chunks` in src/ops/norm.rs): m = N*HW not a
/// multiple of the chunk, chunks starting inside a sample, HW above and below the
/// workgroup size (256), HW = 1 ([N, C] input), the 256-chunk cap (2x742x742 = 1.1M values),
/// and many channels with a single chunk each.
const CHUNKED: [BnCase; 6] = [
    (37, 3, Some((29, 29))),   // m = 31,117: 8 chunks of 3,890, the last 3,887
    (64, 2, Some((40, 40))),   // m = 102,400: 25 chunks of 4,096
    (300, 5, Some((7, 7))),    // m = 14,700: 4 chunks of 3,675, HW = 49 < 256
    (9000, 3, None),           // m = 9,000: 3 chunks of 3,000, HW = 1
    (2, 1, Some((742, 742))),  // m = 1,101,128: 256 chunks of 4,302, the last 4,118
    (3, 1000, None),           // m = 3: 1 chunk per channel, 1,000 channels
];

/// f64 batch-norm backward (training) from upstream g: (dx, dweight = sum g*xhat, dbias = sum g,
/// the largest per-channel sum of |g*xhat|: the scale of the rounding error of dweight).
#[allow(clippy::too_many_arguments)]
fn bn_backward_ref(
    x: &[f64],
    g: &[f64],
    w: &[f64],
    stats: &[(f64, f64)],
    n: usize,
    c: usize,
    hw: usize,
    eps: f64,
) -> (Vec<f64>, Vec<f64>, Vec<f64>, f64) {
    let m = (n * hw) as f64;
    let (mut dw, mut db, mut abs) = (vec![0.0; c], vec![0.0; c], vec![0.0f64; c]);
    for i in 0..n {
        for ch in 0..c {
            let (mu, v) = stats[ch];
            let inv = 1.0 / (v + eps).sqrt();
            for s in 0..hw {
                let k = (i * c + ch) * hw + s;
                dw[ch] += g[k] * (x[k] - mu) * inv;
                db[ch] += g[k];
                abs[ch] += (g[k] * (x[k] - mu) * inv).abs();
            }
        }
    }
    let mut dx = vec![0.0; x.len()];
    for i in 0..n {
        for ch in 0..c {
            let (mu, v) = stats[ch];
            let inv = 1.0 / (v + eps).sqrt();
            for s in 0..hw {
                let k = (i * c + ch) * hw + s;
                let xhat = (x[k] - mu) * inv;
                dx[k] = w[ch] * inv / m * (m * g[k] - db[ch] - xhat * dw[ch]);
            }
        }
    }
    (dx, dw, db, abs.into_iter().fold(0.0, f64::max))
}

/// Batch statistics (read through the running stats with momentum 1: running_mean = mean,
/// running_var = unbiased variance), y, and the backward's dx / dweight / dbias of a
/// training-mode batch norm against f64, for x = offset + 0.1 * (channel % 8) + scale * N(0, 1).
fn check_chunked(rng: &mut Rng, n: usize, c: usize, hw: Option<(usize, usize)>, offset: f64, scale: f64, y_tol: f64) {
    let g = gpu();
    let eps = 1e-5;
    let (shape, hws) = bn_shape(n, c, hw);
    let what = format!("batch_norm {shape:?} offset {offset}");
    let z = rng.normals(n * c * hws);
    let x: Vec<f64> = round_f32(&z.iter().enumerate().map(|(k, z)| offset + 0.1 * ((k / hws) % c % 8) as f64 + scale * z).collect::<Vec<_>>());
    let w = round_f32(&rng.uniforms(c, 0.5, 1.5));
    let b = round_f32(&rng.uniforms(c, -0.5, 0.5));
    let gy = round_f32(&rng.uniforms(x.len(), -1.0, 1.0));
    let stats = channel_stats(&x, n, c, hws);
    let m = (n * hws) as f64;

    let st = BatchNormState::new(&g, c, 1.0, eps as f32).unwrap();
    let xt = upload(&g, &x, &shape).requires_grad();
    let (wt, bt) = (upload(&g, &w, &[c]).requires_grad(), upload(&g, &b, &[c]).requires_grad());
    let y = ops::batch_norm(&xt, &wt, &bt, &st, true).unwrap();
    let means: Vec<f64> = stats.iter().map(|s| s.0).collect();
    let uvars: Vec<f64> = stats.iter().map(|s| s.1 * m / (m - 1.0)).collect();
    assert_close(&format!("{what} mean"), &st.running_mean.to_vec().unwrap(), &means, 1e-6, 1e-6 * scale);
    assert_close(&format!("{what} var"), &st.running_var.to_vec().unwrap(), &uvars, 2e-5, 0.0);
    assert_close(&format!("{what} y"), &y.to_vec().unwrap(), &bn_ref(&x, &w, &b, &stats, n, c, hws, eps), y_tol, y_tol);

    // The backward against the f64 formula at the forward's own f32 mean: x - mean is what
    // any f32 kernel computes, and at offset 1000 half an ulp of the mean (3e-5) times sum g
    // would otherwise dominate the comparison.
    let gpu_means = st.running_mean.to_vec().unwrap();
    let bstats: Vec<(f64, f64)> = stats.iter().zip(&gpu_means).map(|(s, &mu)| (mu as f64, s.1)).collect();
    let mut grads = equimodal::Gradients::new();
    y.backward_with(upload(&g, &gy, &shape), &mut grads).unwrap();
    let (dx, dw, db, sx) = bn_backward_ref(&x, &gy, &w, &bstats, n, c, hws, eps);
    assert_close(&format!("{what} dweight"), &grads.get(&wt).unwrap().to_vec().unwrap(), &dw, 1e-5, 1e-6 * sx);
    assert_close(&format!("{what} dbias"), &grads.get(&bt).unwrap().to_vec().unwrap(), &db, 1e-5, 1e-6 * sx);
    let dx_max = dx.iter().fold(0.0f64, |a, v| a.max(v.abs()));
    // dx = w/sigma (g - mean(g) - xhat mean(g xhat)): a difference of sums over m (up to 1.1M)
    // values, whose f32 errors (~u sqrt(m) relative) land on every element
    assert_close(&format!("{what} dx"), &grads.get(&xt).unwrap().to_vec().unwrap(), &dx, 1e-4, 1e-5 * dx_max);
    // the chunked statistics' partials and the backward's partial sums stayed in bounds
    assert_canaries(&what);
}

#[test]
fn batch_norm_chunked_reductions_match_reference() {
    let mut rng = Rng::new(26);
    for (n, c, hw) in CHUNKED {
        check_chunked(&mut rng, n, c, hw, 0.5, 1.5, 1e-4);
    }
}

#[test]
fn batch_norm_chunked_large_offset_keeps_variance() {
    // x = 1000 + N(0, 1): in f32, E[x^2] - E[x]^2 loses ~eps_f32 * 1000^2 / 1 ~ 6e-2 of the
    // variance; the chunked Welford / Chan merge keeps it to ~1e-6 relative.
    let mut rng = Rng::new(27);
    for (n, c, hw) in [(37, 3, Some((29, 29))), (64, 2, Some((40, 40))), (9000, 3, None)] {
        check_chunked(&mut rng, n, c, hw, 1000.0, 1.0, 1e-3);
    }
}

#[test]
fn batch_norm_given_reuses_recorded_statistics() {
    // statistics recorded from one batch (x1) normalise another (x2) as constants: AIM's
    // auxiliary forward with `aux_bn = "main"`
    let g = gpu();
    let mut rng = Rng::new(24);
    let eps = 1e-5;
    for (n, c, hw) in [(3, 4, Some((5, 3))), (5, 3, None), (2, 7, Some((9, 11)))] {
        let (shape, hws) = bn_shape(n, c, hw);
        let x1 = round_f32(&rng.uniforms(n * c * hws, -2.0, 3.0));
        let st = BatchNormState::new(&g, c, 0.1, eps as f32).unwrap();
        let (w1, b1) = (equimodal::ops::full(&g, &[c], 1.0).unwrap(), Tensor::zeros(&g, &[c]).unwrap());
        let (y1, stats) = ops::batch_norm_with_stats(&upload(&g, &x1, &shape), &w1, &b1, &st, true).unwrap();
        let ref_stats = channel_stats(&x1, n, c, hws);
        // the recorded statistics are [mean, 1/sqrt(var + eps)] of x1
        let want: Vec<f64> = ref_stats.iter().map(|s| s.0).chain(ref_stats.iter().map(|s| 1.0 / (s.1 + eps).sqrt())).collect();
        assert_close("recorded stats", &stats.to_vec().unwrap(), &want, 1e-5, 1e-6);
        // the same batch through the recorded statistics gives the training output exactly
        let again = ops::batch_norm_given(&upload(&g, &x1, &shape), &w1, &b1, &stats).unwrap();
        assert_eq!(again.to_vec().unwrap(), y1.to_vec().unwrap(), "{shape:?}: x1 through its own statistics");
        let x2 = rng.uniforms(n * c * hws, -1.0, 4.0);
        let w = rng.uniforms(c, 0.5, 1.5);
        let b = rng.uniforms(c, -0.5, 0.5);
        check_op(
            &format!("batch_norm_given {shape:?}"),
            &[(x2, shape.clone()), (w, vec![c]), (b, vec![c])],
            &[0, 1, 2],
            &|t| ops::batch_norm_given(&t[0], &t[1], &t[2], &stats),
            &|xs| bn_ref(&xs[0], &xs[1], &xs[2], &ref_stats, n, c, hws, eps),
            Tol::default(),
        );
    }
    // shapes are checked
    let x = Tensor::zeros(&g, &[2, 3, 4, 4]).unwrap();
    let w = Tensor::zeros(&g, &[3]).unwrap();
    let e = ops::batch_norm_given(&x, &w, &w, &Tensor::zeros(&g, &[2, 4]).unwrap()).unwrap_err().to_string();
    assert!(e.contains("stats") && e.contains("[2, 3]"), "{e}");
}

/// Batch norm and layer norm with few workgroups per grid dimension (`with_workgroup_cap`):
/// per-channel and per-row kernels (one workgroup each) and the element-wise apply run on
/// folded 3-D grids with spare workgroups, as on the adapter's limit only for huge tensors.
#[test]
fn norms_under_workgroup_cap() {
    with_workgroup_cap(3, || {
        batch_norm_training_matches_reference_and_gradients();
        batch_norm_eval_matches_reference_and_gradients();
        batch_norm_given_reuses_recorded_statistics();
    });
    // 70 rows of layer norm: one workgroup per row needs more than 27
    with_workgroup_cap(5, layer_norm_matches_reference_and_gradients);
    // the chunked statistics over tensors of up to 1.1M elements (4,400 workgroups)
    with_workgroup_cap(17, || {
        batch_norm_chunked_reductions_match_reference();
        batch_norm_chunked_large_offset_keeps_variance();
        assert_canaries("chunked batch norm");
    });
}

/// Batch norm reading an f16 input (mixed precision stores a convolution's output so before
/// its batch norm): in training (batch statistics, running update) and with fixed statistics,
/// on [N, C, H, W] and [N, C] with an odd element count (a half-filled last word), the
/// statistics, the running statistics, the output and the f32 gradients of x, weight and bias
/// are bit for bit those of the f32 kernels on the widened values (the same arithmetic on the
/// same numbers), and the output agrees with the f64 reference.
#[test]
fn batch_norm_reads_f16_input_as_its_widened_values() {
    use equimodal::DType;
    let g = gpu();
    let mut rng = Rng::new(23);
    let eps = 1e-5;
    // the last: 31,117 values per channel, several statistics chunks (as CHUNKED)
    for (n, c, hw) in [(3, 4, Some((5, 3))), (5, 3, None), (1, 3, Some((17, 19))), (37, 3, Some((29, 29)))] {
        let (shape, hws) = bn_shape(n, c, hw);
        let x32 = upload(&g, &rng.uniforms(n * c * hws, -2.0, 3.0), &shape);
        let x16 = ops::cast(&x32, DType::F16).unwrap();
        let widened = ops::cast(&x16, DType::F32).unwrap();
        let (w, b) = (rng.uniforms(c, 0.5, 1.5), rng.uniforms(c, -0.5, 0.5));
        let seed = upload(&g, &rng.uniforms(n * c * hws, -1.0, 1.0), &shape);
        for training in [true, false] {
            let run = |x: &Tensor| {
                let x = x.detach().requires_grad();
                let (wt, bt) = (upload(&g, &w, &[c]).requires_grad(), upload(&g, &b, &[c]).requires_grad());
                let st = BatchNormState::new(&g, c, 0.1, eps as f32).unwrap();
                let (y, stats) = ops::batch_norm_with_stats(&x, &wt, &bt, &st, training).unwrap();
                let mut grads = equimodal::Gradients::new();
                y.backward_with(seed.clone(), &mut grads).unwrap();
                let dx = grads.get(&x).unwrap();
                assert_eq!((y.dtype(), dx.dtype(), dx.shape()), (DType::F32, DType::F32, x.shape()));
                let mut all = vec![y.to_vec().unwrap(), stats.to_vec().unwrap(), st.running_mean.to_vec().unwrap(), st.running_var.to_vec().unwrap()];
                all.extend([dx, grads.get(&wt).unwrap(), grads.get(&bt).unwrap()].map(|t| t.to_vec().unwrap()));
                all
            };
            let (half, plain) = (run(&x16), run(&widened));
            for (i, what) in ["y", "stats", "running mean", "running var", "dx", "dweight", "dbias"].iter().enumerate() {
                assert_eq!(half[i], plain[i], "{shape:?} training={training}: {what}");
            }
            let xs: Vec<f64> = widened.to_vec().unwrap().iter().map(|&v| v as f64).collect();
            let stats = if training { channel_stats(&xs, n, c, hws) } else { vec![(0.0, 1.0); c] };
            let want = bn_ref(&xs, &w, &b, &stats, n, c, hws, eps);
            // chunked statistics over 31,117 values: the tolerance of check_chunked
            let tol = if n * hws > 4096 { 1e-4 } else { 1e-5 };
            assert_close(&format!("{shape:?} training={training}: y vs f64"), &half[0], &want, tol, tol);
        }
    }
}

/// `batch_norm_act` (batch norm, residual add and ReLU in one kernel): its output and every
/// gradient are bit for bit those of `batch_norm_apply`, `add` and `relu` run in turn (the same
/// f32 operations in the same order), for each part on and off, batch and fixed statistics,
/// and a value count that is odd (the f16 output's last word holds one value). Stored f16, the
/// output is the composition's cast to f16, and the gradients stay the same. The output's
/// gradient arrives as the caller's seed (which the ReLU's backward must not overwrite) and
/// from a later op (which it masks in place), and the ReLU keeps its output or, under
/// autocast, a bit mask of it.
#[test]
fn batch_norm_act_is_batch_norm_add_relu_in_one_kernel() {
    use equimodal::DType;
    let g = gpu();
    let mut rng = Rng::new(29);
    for (n, c, hw) in [(3, 3, Some((5, 3))), (4, 5, None)] {
        let (shape, hws) = bn_shape(n, c, hw);
        let numel = n * c * hws;
        let x = upload(&g, &rng.uniforms(numel, -2.0, 3.0), &shape);
        let r = upload(&g, &rng.uniforms(numel, -1.5, 1.5), &shape);
        let (w, b) = (upload(&g, &rng.uniforms(c, 0.5, 1.5), &[c]), upload(&g, &rng.uniforms(c, -0.5, 0.5), &[c]));
        let seed = upload(&g, &rng.uniforms(numel, -1.0, 1.0), &shape);
        let st = BatchNormState::new(&g, c, 0.1, 1e-5).unwrap();
        for batch_stats in [true, false] {
            let stats = ops::batch_norm_stats(&x, &st, batch_stats).unwrap();
            for (residual, relu, out) in [(true, true, DType::F32), (false, true, DType::F32), (true, false, DType::F32), (true, true, DType::F16), (false, false, DType::F16)] {
                let what = format!("{shape:?} batch_stats={batch_stats} residual={residual} relu={relu} {out:?}");
                for (later_op, mixed) in [(false, false), (true, false), (true, true)] {
                let what = format!("{what} later_op={later_op} autocast={mixed}");
                // under autocast a ReLU with an f32 output keeps a bit mask instead of it
                let _ac = equimodal::autograd::autocast(mixed);
                let run = |fused: bool| {
                    let ins: Vec<Tensor> = [&x, &w, &b, &r].iter().map(|t| t.detach().requires_grad()).collect();
                    let res = residual.then_some(&ins[3]);
                    let y = if fused {
                        let act = ops::BnAct { residual: res, relu, out };
                        ops::batch_norm_act(&ins[0], &ins[1], &ins[2], &stats, batch_stats, act).unwrap()
                    } else {
                        let mut y = ops::batch_norm_apply(&ins[0], &ins[1], &ins[2], &stats, batch_stats).unwrap();
                        if let Some(r) = res {
                            y = ops::add(&y, r).unwrap();
                        }
                        if relu {
                            y = ops::relu(&y).unwrap();
                        }
                        if out == DType::F16 { ops::cast(&y, DType::F16).unwrap() } else { y }
                    };
                    assert_eq!(y.dtype(), out, "{what}");
                    let mut grads = equimodal::Gradients::new();
                    if later_op {
                        let y32 = if out == DType::F16 { ops::cast(&y, DType::F32).unwrap() } else { y.clone() };
                        ops::scale(&y32, 0.5).unwrap().backward_with(seed.clone(), &mut grads).unwrap();
                    } else {
                        y.backward_with(seed.clone(), &mut grads).unwrap();
                    }
                    let mut all = vec![ops::cast(&y, DType::F32).unwrap().to_vec().unwrap()];
                    for (i, t) in ins.iter().enumerate() {
                        match grads.get(t) {
                            Some(d) => all.push(d.to_vec().unwrap()),
                            None => assert!(i == 3 && !residual, "{what}: input {i} got no gradient"),
                        }
                    }
                    all
                };
                let seed_before = seed.to_vec().unwrap();
                let (fused, plain) = (run(true), run(false));
                assert_eq!(seed.to_vec().unwrap(), seed_before, "{what}: the backward wrote into the caller's seed");
                assert_eq!(fused.len(), plain.len(), "{what}");
                for (i, part) in ["y", "dx", "dweight", "dbias", "dresidual"].iter().take(fused.len()).enumerate() {
                    assert_eq!(fused[i], plain[i], "{what}: {part}");
                }
                assert_canaries(&what);
                }
            }
        }
    }
}

/// `batch_norm_act` with residual and ReLU against the f64 reference, gradients by finite
/// differences (training statistics: the input's gradient includes their dependence on x).
#[test]
fn batch_norm_act_matches_reference_and_gradients() {
    let mut rng = Rng::new(30);
    let eps = 1e-5;
    let (n, c, h, w) = (3, 4, 3, 5);
    let hws = h * w;
    let shape = vec![n, c, h, w];
    let x = rng.uniforms(n * c * hws, -2.0, 3.0);
    let r = rng.uniforms(n * c * hws, -1.0, 1.0);
    check_op(
        "batch_norm_act train",
        &[(x, shape.clone()), (rng.uniforms(c, 0.5, 1.5), vec![c]), (rng.uniforms(c, -0.5, 0.5), vec![c]), (r, shape.clone())],
        &[0, 1, 2, 3],
        &|t| {
            let st = BatchNormState::new(&gpu(), c, 0.1, eps as f32)?;
            let stats = ops::batch_norm_stats(&t[0], &st, true)?;
            let act = ops::BnAct { residual: Some(&t[3]), relu: true, out: equimodal::DType::F32 };
            ops::batch_norm_act(&t[0], &t[1], &t[2], &stats, true, act)
        },
        &|xs| {
            let y = bn_ref(&xs[0], &xs[1], &xs[2], &channel_stats(&xs[0], n, c, hws), n, c, hws, eps);
            y.iter().zip(&xs[3]).map(|(a, b)| (a + b).max(0.0)).collect()
        },
        Tol::sums(n * hws, 1.0, n * hws, (n * hws) as f64),
    );
}

#[test]
fn batch_norm_act_errors_are_typed() {
    use equimodal::DType;
    let g = gpu();
    let x = upload(&g, &[0.5; 24], &[2, 3, 2, 2]);
    let (w, b) = (upload(&g, &[1.0; 3], &[3]), upload(&g, &[0.0; 3], &[3]));
    let st = BatchNormState::new(&g, 3, 0.1, 1e-5).unwrap();
    let stats = ops::batch_norm_stats(&x, &st, true).unwrap();
    let short = upload(&g, &[0.5; 12], &[1, 3, 2, 2]);
    let half = ops::cast(&x, DType::F16).unwrap();
    let cases: [(ops::BnAct, &str); 3] = [
        (ops::BnAct { residual: Some(&short), relu: true, out: DType::F32 }, "residual has shape [1, 3, 2, 2]"),
        (ops::BnAct { residual: Some(&half), relu: true, out: DType::F32 }, "F16"),
        (ops::BnAct { residual: None, relu: true, out: DType::U32 }, "output dtype"),
    ];
    for (act, want) in cases {
        let e = ops::batch_norm_act(&x, &w, &b, &stats, true, act).err().expect("an error").to_string();
        assert!(e.contains(want) && e.contains("batch_norm"), "{e}");
    }
}

/// The backward of `batch_norm_act` with a ReLU holds no more than that of the separate ops
/// (up to per-channel sums),
/// where the ReLU's node hands batch norm the masked gradient and the engine drops the one it
/// masked: the fused node masks the gradient in place (it arrives from a later op, so nothing
/// else sees it). Without that, the masked gradient would live beside the unmasked one, a
/// whole activation more at the backward's peak.
#[test]
fn batch_norm_act_backward_holds_no_more_than_the_separate_ops() {
    use equimodal::DType;
    let g = equimodal::Gpu::new(test_options()).unwrap();
    let mut rng = Rng::new(31);
    let (n, c, hw) = (8, 4, 32 * 32);
    let shape = [n, c, 32, 32];
    let x = upload(&g, &rng.uniforms(n * c * hw, -2.0, 3.0), &shape).requires_grad();
    let r = upload(&g, &rng.uniforms(n * c * hw, -1.0, 1.0), &shape).requires_grad();
    let (w, b) = (upload(&g, &rng.uniforms(c, 0.5, 1.5), &[c]).requires_grad(), upload(&g, &rng.uniforms(c, -0.5, 0.5), &[c]).requires_grad());
    let st = BatchNormState::new(&g, c, 0.1, 1e-5).unwrap();
    let stats = ops::batch_norm_stats(&x, &st, true).unwrap();
    let bytes = (4 * x.numel()) as u64;
    let peak = |fused: bool, residual: bool| {
        let res = residual.then_some(&r);
        let y = if fused {
            ops::batch_norm_act(&x, &w, &b, &stats, true, ops::BnAct { residual: res, relu: true, out: DType::F32 }).unwrap()
        } else {
            let y = ops::batch_norm_apply(&x, &w, &b, &stats, true).unwrap();
            ops::relu(&match res { Some(r) => ops::add(&y, r).unwrap(), None => y }).unwrap()
        };
        let loss = ops::sum_all(&ops::scale(&y, 0.5).unwrap()).unwrap();
        drop(y);
        g.synchronize().unwrap();
        let before = g.memory().allocated;
        g.reset_peak_memory();
        let grads = loss.backward().unwrap();
        let held = g.memory().peak_allocated - before;
        drop(grads);
        held
    };
    for residual in [false, true] {
        let (fused, plain) = (peak(true, residual), peak(false, residual));
        eprintln!("residual={residual}: backward peak fused {fused}, separate {plain} (activation {bytes})");
        // (up to a few per-channel sums: a whole activation is `bytes`)
        assert!(fused <= plain + 1024, "residual={residual}: the fused backward peaks at {fused} bytes, the separate ops at {plain}");
    }
}

/// Batch norm's backward writes dx over its incoming gradient where nothing else holds it
/// (the gradient arrives from a later op, and no residual reads it afterwards): the backward
/// then holds one activation-sized gradient instead of two. The values are bit for bit those
/// of a new dx (a gradient the caller still holds is not written), for batch norm alone,
/// with ReLU, and with an f16 output (whose gradient is widened first); with a residual the
/// gradient is the shortcut's too and stays.
#[test]
fn batch_norm_backward_writes_dx_over_a_gradient_nothing_else_holds() {
    use equimodal::DType;
    let g = equimodal::Gpu::new(test_options()).unwrap();
    let mut rng = Rng::new(37);
    let (n, c, hw) = (8, 4, 32 * 32);
    let shape = [n, c, 32, 32];
    let x = upload(&g, &rng.uniforms(n * c * hw, -2.0, 3.0), &shape).requires_grad();
    let r = upload(&g, &rng.uniforms(n * c * hw, -1.0, 1.0), &shape).requires_grad();
    let (w, b) = (upload(&g, &rng.uniforms(c, 0.5, 1.5), &[c]).requires_grad(), upload(&g, &rng.uniforms(c, -0.5, 0.5), &[c]).requires_grad());
    let seed = upload(&g, &rng.uniforms(n * c * hw, -1.0, 1.0), &shape);
    let seed_values = seed.to_vec().unwrap();
    let st = BatchNormState::new(&g, c, 0.1, 1e-5).unwrap();
    let stats = ops::batch_norm_stats(&x, &st, true).unwrap();
    let bytes = (4 * x.numel()) as u64;
    let forms = [("alone", None, false, DType::F32), ("relu", None, true, DType::F32), ("relu f16", None, true, DType::F16), ("residual", Some(&r), true, DType::F32)];
    for (name, residual, relu, out) in forms {
        let y = || {
            let y = ops::batch_norm_act(&x, &w, &b, &stats, true, ops::BnAct { residual, relu, out }).unwrap();
            ops::cast(&y, DType::F32).unwrap()
        };
        let grads_of = |gr: &equimodal::Gradients| [&x, &w, &b].map(|t| gr.get(t).unwrap().to_vec().unwrap());
        // through a later op: scale's backward hands batch norm a gradient of its own (y held
        // throughout, so that its release after scale's backward cannot hide a second
        // gradient)
        let kept_y = y();
        let through = ops::scale(&kept_y, 0.5).unwrap();
        g.synchronize().unwrap();
        let before = g.memory().allocated;
        g.reset_peak_memory();
        let mut grads = equimodal::Gradients::new();
        through.backward_with(seed.clone(), &mut grads).unwrap();
        let held = g.memory().peak_allocated - before;
        drop(kept_y);
        // directly, with a gradient this test holds on to: a new dx
        let kept = ops::scale(&seed, 0.5).unwrap();
        let mut direct = equimodal::Gradients::new();
        y().backward_with(kept.clone(), &mut direct).unwrap();
        assert_eq!(grads_of(&grads), grads_of(&direct), "{name}: in place and new dx differ");
        assert_eq!(kept.to_vec().unwrap(), ops::scale(&seed, 0.5).unwrap().to_vec().unwrap(), "{name}: a held gradient was written");
        assert_eq!(seed.to_vec().unwrap(), seed_values, "{name}: the caller's seed was written");
        eprintln!("{name}: backward peak {held} bytes (activation {bytes})");
        if residual.is_some() {
            assert!(held >= 2 * bytes, "{name}: the shortcut's gradient must stay beside dx ({held} bytes)");
        } else {
            // one f32 gradient (and, f16, the widened copy's f16 source), a few sums
            let limit = if out == DType::F16 { 2 * bytes } else { bytes + bytes / 2 };
            assert!(held < limit, "{name}: the backward peaked at {held} bytes, {bytes} a gradient");
        }
    }
}
