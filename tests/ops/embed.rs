//! Embedding and patchify against CPU f64 references and finite differences.
use crate::common;
use common::*;
use equimodal::ops;
use equimodal::Tensor;

fn embed_ref(ids: &[u32], table: &[f64], v: usize, d: usize) -> Vec<f64> {
    ids.iter()
        .flat_map(|&id| (0..d).map(move |j| if (id as usize) < v { table[id as usize * d + j] } else { 0.0 }))
        .collect()
}

#[test]
fn embedding_matches_reference_and_gradients() {
    let mut rng = Rng::new(31);
    // repeated ids; D = 300 spans two column chunks; 300 ids span two id tiles
    for (v, d, ids_shape) in [(5usize, 7usize, vec![3, 4]), (9, 300, vec![300]), (1, 1, vec![2]), (40, 33, vec![2, 3, 5])] {
        let n = numel(&ids_shape);
        let ids: Vec<u32> = (0..n).map(|i| if i % 3 == 0 { 0 } else { rng.below(v) as u32 }).collect();
        let table = rng.uniforms(v * d, -1.0, 1.0);
        let g = gpu();
        let idt = Tensor::from_u32(&g, &ids, &ids_shape).unwrap();
        let mut out_shape = ids_shape.clone();
        out_shape.push(d);
        check_op(
            &format!("embedding V={v} D={d} ids {ids_shape:?}"),
            &[(table, vec![v, d])],
            &[0],
            &|t| {
                let y = ops::embedding(&idt, &t[0])?;
                assert_eq!(y.shape(), &out_shape[..]);
                Ok(y)
            },
            &|xs| embed_ref(&ids, &xs[0], v, d),
            Tol::default(),
        );
    }
}

#[test]
fn embedding_out_of_range_ids_read_zero_and_get_no_gradient() {
    let g = gpu();
    let table: Vec<f32> = (0..6).map(|i| i as f32 + 1.0).collect(); // [3, 2]
    let t = Tensor::from_slice(&g, &table, &[3, 2]).unwrap().requires_grad();
    let ids = Tensor::from_u32(&g, &[2, 7, 0, u32::MAX, 2], &[5]).unwrap();
    let y = ops::embedding(&ids, &t).unwrap();
    assert_eq!(y.to_vec().unwrap(), vec![5.0, 6.0, 0.0, 0.0, 1.0, 2.0, 0.0, 0.0, 5.0, 6.0]);
    let grads = ops::sum_all(&y).unwrap().backward().unwrap();
    assert_eq!(grads.get(&t).unwrap().to_vec().unwrap(), vec![1.0, 1.0, 0.0, 0.0, 2.0, 2.0]);
}

#[test]
fn embedding_errors_are_typed() {
    let g = gpu();
    let table = Tensor::zeros(&g, &[4, 3]).unwrap();
    let fids = Tensor::zeros(&g, &[2]).unwrap();
    let e = ops::embedding(&fids, &table).unwrap_err().to_string();
    assert!(e.contains("u32") && e.contains("[2]"), "{e}");
    let ids = Tensor::from_u32(&g, &[0, 1], &[2]).unwrap();
    let t3 = Tensor::zeros(&g, &[4, 3, 2]).unwrap();
    let e = ops::embedding(&ids, &t3).unwrap_err().to_string();
    assert!(e.contains("[4, 3, 2]"), "{e}");
}

fn patchify_ref(x: &[f64], n: usize, c: usize, h: usize, w: usize, ph: usize, pw: usize) -> Vec<f64> {
    let (gh, gw) = (h / ph, w / pw);
    let mut out = Vec::new();
    for i in 0..n {
        for py in 0..gh {
            for px in 0..gw {
                for ch in 0..c {
                    for ky in 0..ph {
                        for kx in 0..pw {
                            out.push(x[((i * c + ch) * h + py * ph + ky) * w + px * pw + kx]);
                        }
                    }
                }
            }
        }
    }
    out
}

#[test]
fn patchify_matches_reference_and_gradients() {
    let mut rng = Rng::new(32);
    for (n, c, h, w, ph, pw) in [(2, 3, 6, 8, 2, 4), (1, 1, 5, 7, 5, 7), (3, 2, 9, 6, 3, 1), (1, 4, 4, 4, 1, 1)] {
        let x = rng.uniforms(n * c * h * w, -1.0, 1.0);
        let l = (h / ph) * (w / pw);
        check_op(
            &format!("patchify {n}x{c}x{h}x{w} by {ph}x{pw}"),
            &[(x, vec![n, c, h, w])],
            &[0],
            &|t| {
                let y = ops::patchify(&t[0], (ph, pw))?;
                assert_eq!(y.shape(), &[n, l, c * ph * pw]);
                Ok(y)
            },
            &|xs| patchify_ref(&xs[0], n, c, h, w, ph, pw),
            Tol::default(),
        );
    }
}

#[test]
fn patchify_errors_are_typed() {
    let g = gpu();
    let x = Tensor::zeros(&g, &[1, 3, 6, 8]).unwrap();
    let e = ops::patchify(&x, (4, 4)).unwrap_err().to_string();
    assert!(e.contains("patchify") && e.contains("[1, 3, 6, 8]") && e.contains("(4, 4)"), "{e}");
    assert!(ops::patchify(&x, (0, 2)).is_err());
    let x3 = Tensor::zeros(&g, &[3, 6, 8]).unwrap();
    let e = ops::patchify(&x3, (2, 2)).unwrap_err().to_string();
    assert!(e.contains("[3, 6, 8]"), "{e}");
}

/// Embedding and patchify with few workgroups per grid dimension (`with_workgroup_cap`):
/// the 90,000-element lookup on a folded 3-D grid of 8 x 8 x 6 workgroups.
#[test]
fn embedding_under_workgroup_cap() {
    with_workgroup_cap(3, patchify_matches_reference_and_gradients);
    with_workgroup_cap(8, || {
        embedding_matches_reference_and_gradients();
        embedding_out_of_range_ids_read_zero_and_get_no_gradient();
        assert_canaries("embedding with out-of-range ids");
    });
}
