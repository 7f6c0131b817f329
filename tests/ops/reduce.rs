//! Reductions (sum, mean, max, min over any axes; tree, row and split launches) against CPU
//! f64 references and finite differences, and `expand`/`sum_to_shape` as adjoints.
use crate::common;
use common::*;
use equimodal::ops::{self, ReduceOp};
use equimodal::Tensor;

fn reduce_ref(x: &[f64], shape: &[usize], axes: &[usize], op: ReduceOp) -> Vec<f64> {
    let out_shape: Vec<usize> = shape.iter().enumerate().map(|(i, &d)| if axes.contains(&i) { 1 } else { d }).collect();
    let n = numel(&out_shape);
    let mut acc = vec![
        match op {
            ReduceOp::Max => f64::NEG_INFINITY,
            ReduceOp::Min => f64::INFINITY,
            _ => 0.0,
        };
        n
    ];
    for (flat, &v) in x.iter().enumerate() {
        let mut r = flat;
        let mut o = 0;
        let mut mult = 1;
        for d in (0..shape.len()).rev() {
            let c = r % shape[d];
            r /= shape[d];
            if !axes.contains(&d) {
                o += c * mult;
                mult *= shape[d];
            }
        }
        acc[o] = match op {
            ReduceOp::Max => acc[o].max(v),
            ReduceOp::Min => acc[o].min(v),
            _ => acc[o] + v,
        };
    }
    if op == ReduceOp::Mean {
        let cnt: usize = axes.iter().map(|&a| shape[a]).product();
        acc.iter_mut().for_each(|v| *v /= cnt as f64);
    }
    acc
}

#[test]
fn reductions_match_reference_and_gradients() {
    let mut rng = Rng::new(3);
    let cases: Vec<(Vec<usize>, Vec<usize>)> = vec![
        (vec![300], vec![0]),
        (vec![6, 301], vec![1]),
        (vec![6, 301], vec![0]),
        (vec![3, 5, 7], vec![0, 2]),
        (vec![3, 5, 7], vec![1, 2]),
        (vec![2, 3, 4, 5], vec![0, 1, 3]),
        (vec![1000, 3], vec![0]),
        // inner a multiple of 4: the vec4 form of the loop (four columns per thread)
        (vec![5, 9, 8], vec![1]),
        (vec![64, 36], vec![0]),
    ];
    for (shape, axes) in &cases {
        for op in [ReduceOp::Sum, ReduceOp::Mean, ReduceOp::Max, ReduceOp::Min] {
            let x = rng.uniforms(numel(shape), -3.0, 3.0); // continuous: no ties
            let ax: Vec<isize> = axes.iter().map(|&a| a as isize).collect();
            let (s2, a2) = (shape.clone(), axes.clone());
            // a sum of r values of size <= 3 (r up to 1000): scale ~ 3 sqrt(r); means, max and
            // min are one rounding from exact (the gradients: a copy or a 1/r scale)
            let r = numel(shape) / reduce_ref(&x, shape, axes, op).len();
            let tol = if op == ReduceOp::Sum { Tol::sums(r, 3.0 * (r as f64).sqrt(), 1, 1.0) } else { Tol::default() };
            check_op(
                &format!("{op:?} {shape:?} over {axes:?}"),
                &[(x, shape.clone())],
                &[0],
                &|t| ops::reduce(&t[0], &ax, op, false),
                &move |xs| reduce_ref(&xs[0], &s2, &a2, op),
                tol,
            );
        }
    }
}

/// Reductions over long axes with few outputs run split into chunks (partials, then a
/// reduction of the partials; src/ops/reduce.rs); long axes with many outputs run in one pass
/// with four accumulators per thread. Shapes not multiples of the chunk, the workgroup or the
/// four-way unroll; forward against the f64 reference (the backward does not depend on how
/// the forward was launched and is checked above).
#[test]
fn split_reductions_match_reference() {
    let mut rng = Rng::new(31);
    let cases: Vec<(Vec<usize>, Vec<usize>)> = vec![
        (vec![1000, 37], vec![0]),    // 59 chunks of 17 rows (the last 14)
        (vec![75, 7], vec![0]),       // 4 chunks of 19 rows (the last 18): 19 = 4 * 4 + 3
        (vec![1000, 12], vec![0]),    // the vec4 form split: 12 columns as 3 vec4s per row
        (vec![3, 777, 5], vec![1]),   // 46 chunks of 17 rows (the last 12), outer > 1
        (vec![4096, 3], vec![0]),     // three passes: 4096 -> 256 -> 16 -> 1
        (vec![2, 20001], vec![1]),    // contiguous rows: 4 workgroups per row (the last short)
        (vec![70001], vec![0]),       // everything into one: 17 workgroups, then one
        (vec![300, 4, 50], vec![0, 2]), // two runs, the leading one split (mean scaled once)
        (vec![300, 5001], vec![1]),   // 300 workgroups of long rows: no split, unrolled
        (vec![101, 66000], vec![0]),  // 66000 outputs fill the GPU: no split, unrolled loop
    ];
    for (shape, axes) in &cases {
        let r: usize = axes.iter().map(|&a| shape[a]).product();
        for op in [ReduceOp::Sum, ReduceOp::Mean, ReduceOp::Max, ReduceOp::Min] {
            let x = rng.uniforms(numel(shape), -3.0, 3.0);
            let ax: Vec<isize> = axes.iter().map(|&a| a as isize).collect();
            let (s2, a2) = (shape.clone(), axes.clone());
            // f32 accumulation error of a sum grows like sqrt(r) (values of size ~1.7)
            let atol = match op {
                ReduceOp::Sum => 2e-6 * (r as f64).sqrt() * 3.0,
                ReduceOp::Mean => 2e-6 * 3.0 / (r as f64).sqrt(),
                _ => 0.0,
            };
            check_op(
                &format!("split {op:?} {shape:?} over {axes:?}"),
                &[(x, shape.clone())],
                &[],
                &|t| ops::reduce(&t[0], &ax, op, false),
                &move |xs| reduce_ref(&xs[0], &s2, &a2, op),
                Tol { rtol: 1e-5, atol, ..Tol::default() },
            );
        }
    }
}

#[test]
fn keepdim_and_negative_axes() {
    let g = gpu();
    let x = Tensor::from_slice(&g, &[1., 2., 3., 4., 5., 6.], &[2, 3]).unwrap();
    let s = ops::sum(&x, &[-1], true).unwrap();
    assert_eq!(s.shape(), &[2, 1]);
    assert_eq!(s.to_vec().unwrap(), vec![6.0, 15.0]);
    let m = ops::mean_all(&x).unwrap();
    assert_eq!(m.item().unwrap(), 3.5);
    assert!(ops::sum(&x, &[2], false).is_err());
}

#[test]
fn expand_and_sum_to_shape_are_adjoint() {
    let mut rng = Rng::new(4);
    let x = rng.normals(12);
    check_op(
        "expand",
        &[(x, vec![3, 1, 4])],
        &[0],
        &|t| ops::expand(&t[0], &[2, 3, 5, 4]),
        &|xs| {
            let mut out = Vec::new();
            for _ in 0..2 {
                for i in 0..3 {
                    for _ in 0..5 {
                        for k in 0..4 {
                            out.push(xs[0][i * 4 + k]);
                        }
                    }
                }
            }
            out
        },
        Tol::default(),
    );
}

/// Reductions on grids folded within a small workgroup cap.
#[test]
fn reductions_under_workgroup_cap() {
    with_workgroup_cap(3, || {
        // row reductions over 6 outputs, tree reductions of up to 1000 rows
        reductions_match_reference_and_gradients();
        expand_and_sum_to_shape_are_adjoint();
    });
    // split reductions of up to 300 outputs need more than 27 workgroups
    with_workgroup_cap(7, split_reductions_match_reference);
}
