//! Pooling ops against CPU f64 references and finite differences.
use crate::common;
use common::*;
use equimodal::ops;
use equimodal::Tensor;

/// Distinct values (spaced 0.01 apart, shuffled): no ties, and finite differences cannot
/// move the argmax.
fn distinct(rng: &mut Rng, n: usize) -> Vec<f64> {
    let mut v: Vec<f64> = (0..n).map(|i| i as f64 * 0.01 - 0.5 * n as f64 * 0.01).collect();
    for i in (1..n).rev() {
        let j = rng.below(i + 1);
        v.swap(i, j);
    }
    v
}

#[allow(clippy::too_many_arguments)]
fn max_pool_ref(x: &[f64], nc: usize, h: usize, w: usize, k: (usize, usize), s: (usize, usize), p: (usize, usize)) -> Vec<f64> {
    let oh = (h + 2 * p.0 - k.0) / s.0 + 1;
    let ow = (w + 2 * p.1 - k.1) / s.1 + 1;
    let mut out = Vec::new();
    for pl in 0..nc {
        for oy in 0..oh {
            for ox in 0..ow {
                let mut best = f64::NEG_INFINITY;
                for ky in 0..k.0 {
                    for kx in 0..k.1 {
                        let iy = (oy * s.0 + ky) as isize - p.0 as isize;
                        let ix = (ox * s.1 + kx) as isize - p.1 as isize;
                        if iy >= 0 && ix >= 0 && (iy as usize) < h && (ix as usize) < w {
                            best = best.max(x[pl * h * w + iy as usize * w + ix as usize]);
                        }
                    }
                }
                out.push(best);
            }
        }
    }
    out
}

#[test]
fn max_pool_matches_reference_and_gradients() {
    let mut rng = Rng::new(11);
    let cases = [
        // (n, c, h, w, kernel, stride, padding)
        (2, 3, 9, 7, (3, 3), (2, 2), (1, 1)),
        (1, 2, 8, 8, (3, 3), (2, 2), (1, 1)),
        (2, 3, 8, 8, (2, 2), (2, 2), (0, 0)),
        (1, 3, 7, 5, (2, 2), (2, 2), (0, 0)),
        (3, 1, 6, 9, (3, 2), (1, 2), (1, 0)),
        (1, 1, 1, 1, (1, 1), (1, 1), (0, 0)),
        // 6,138 outputs: many workgroups
        (2, 3, 33, 31, (3, 3), (1, 1), (1, 1)),
    ];
    for (n, c, h, w, k, s, p) in cases {
        let x = distinct(&mut rng, n * c * h * w);
        let name = format!("max_pool2d {n}x{c}x{h}x{w} k{k:?} s{s:?} p{p:?}");
        check_op(
            &name,
            &[(x, vec![n, c, h, w])],
            &[0],
            &|t| ops::max_pool2d(&t[0], k, s, p),
            &|xs| max_pool_ref(&xs[0], n * c, h, w, k, s, p),
            Tol::default(),
        );
    }
}

#[test]
fn max_pool_ties_route_to_first_maximum() {
    let g = gpu();
    // one 2x2 window, all equal: the gradient goes to the first element only
    let x = Tensor::from_slice(&g, &[1.0, 1.0, 1.0, 1.0], &[1, 1, 2, 2]).unwrap().requires_grad();
    let y = ops::max_pool2d(&x, (2, 2), (2, 2), (0, 0)).unwrap();
    let grads = ops::sum_all(&y).unwrap().backward().unwrap();
    assert_eq!(grads.get(&x).unwrap().to_vec().unwrap(), vec![1.0, 0.0, 0.0, 0.0]);
}

fn adaptive_ref(x: &[f64], nc: usize, h: usize, w: usize, oh: usize, ow: usize) -> Vec<f64> {
    let mut out = Vec::new();
    for pl in 0..nc {
        for oy in 0..oh {
            let (y0, y1) = (oy * h / oh, ((oy + 1) * h).div_ceil(oh));
            for ox in 0..ow {
                let (x0, x1) = (ox * w / ow, ((ox + 1) * w).div_ceil(ow));
                let mut s = 0.0;
                for iy in y0..y1 {
                    for ix in x0..x1 {
                        s += x[pl * h * w + iy * w + ix];
                    }
                }
                out.push(s / ((y1 - y0) * (x1 - x0)) as f64);
            }
        }
    }
    out
}

#[test]
fn adaptive_avg_pool_matches_reference_and_gradients() {
    let mut rng = Rng::new(12);
    // the last: 1,440 outputs, many workgroups
    for (n, c, h, w, oh, ow) in [(2, 3, 7, 5, 1, 1), (2, 3, 7, 5, 3, 2), (1, 2, 7, 5, 4, 3), (1, 2, 3, 2, 5, 4), (1, 1, 4, 4, 2, 2), (2, 3, 33, 31, 16, 15)] {
        let x = rng.uniforms(n * c * h * w, -1.0, 1.0);
        check_op(
            &format!("adaptive_avg_pool2d {n}x{c}x{h}x{w} -> {oh}x{ow}"),
            &[(x, vec![n, c, h, w])],
            &[0],
            &|t| ops::adaptive_avg_pool2d(&t[0], (oh, ow)),
            &|xs| adaptive_ref(&xs[0], n * c, h, w, oh, ow),
            Tol::default(),
        );
    }
}

#[test]
fn global_avg_pool_matches_reference_and_gradients() {
    let mut rng = Rng::new(13);
    for (n, c, h, w) in [(2, 3, 7, 5), (1, 4, 1, 1), (3, 2, 9, 11)] {
        let x = rng.uniforms(n * c * h * w, -1.0, 1.0);
        check_op(
            &format!("global_avg_pool {n}x{c}x{h}x{w}"),
            &[(x, vec![n, c, h, w])],
            &[0],
            &|t| {
                let y = ops::global_avg_pool(&t[0])?;
                assert_eq!(y.shape(), &[n, c]);
                Ok(y)
            },
            &|xs| adaptive_ref(&xs[0], n * c, h, w, 1, 1),
            Tol::default(),
        );
    }
}

#[test]
fn pooling_shape_errors_are_typed() {
    let g = gpu();
    let x3 = Tensor::zeros(&g, &[2, 3, 4]).unwrap();
    let x4 = Tensor::zeros(&g, &[1, 1, 4, 4]).unwrap();
    let e = ops::max_pool2d(&x3, (2, 2), (2, 2), (0, 0)).unwrap_err().to_string();
    assert!(e.contains("max_pool2d") && e.contains("[2, 3, 4]"), "{e}");
    let e = ops::max_pool2d(&x4, (2, 2), (2, 2), (2, 2)).unwrap_err().to_string();
    assert!(e.contains("padding") && e.contains("(2, 2)"), "{e}");
    let e = ops::max_pool2d(&x4, (5, 5), (1, 1), (0, 0)).unwrap_err().to_string();
    assert!(e.contains("[1, 1, 4, 4]"), "{e}");
    assert!(ops::max_pool2d(&x4, (2, 2), (0, 1), (0, 0)).is_err());
    let e = ops::adaptive_avg_pool2d(&x4, (0, 2)).unwrap_err().to_string();
    assert!(e.contains("adaptive_avg_pool2d"), "{e}");
    let e = ops::global_avg_pool(&x3).unwrap_err().to_string();
    assert!(e.contains("[2, 3, 4]"), "{e}");
}

/// Pooling with at most 3 workgroups per grid dimension (`with_workgroup_cap`).
#[test]
fn pooling_under_workgroup_cap() {
    with_workgroup_cap(3, || {
        max_pool_matches_reference_and_gradients();
        adaptive_avg_pool_matches_reference_and_gradients();
        global_avg_pool_matches_reference_and_gradients();
    });
}
