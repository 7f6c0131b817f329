//! Element-wise and reduction ops against CPU f64 references and finite differences.
mod common;
use common::*;
use equimodal::ops::{self, Binary, ReduceOp, Unary};
use equimodal::Tensor;

fn gelu(x: f64) -> f64 {
    let c = (2.0 / std::f64::consts::PI).sqrt();
    0.5 * x * (1.0 + (c * (x + 0.044715 * x * x * x)).tanh())
}

#[test]
fn unary_ops_match_reference_and_gradients() {
    // 1000 elements: not a multiple of the 256-thread workgroup
    check_unary(vec![10, 100], 1);
}

fn check_unary(shape: Vec<usize>, seed: u64) {
    let mut rng = Rng::new(seed);
    let n = numel(&shape);
    type F = fn(f64) -> f64;
    let cases: Vec<(&str, Unary, f32, f32, F, (f64, f64))> = vec![
        ("neg", Unary::Neg, 0.0, 0.0, |x| -x, (-2.0, 2.0)),
        ("exp", Unary::Exp, 0.0, 0.0, |x| x.exp(), (-2.0, 2.0)),
        ("log", Unary::Log, 0.0, 0.0, |x| x.ln(), (0.2, 3.0)),
        ("sqrt", Unary::Sqrt, 0.0, 0.0, |x| x.sqrt(), (0.2, 3.0)),
        ("relu", Unary::Relu, 0.0, 0.0, |x| x.max(0.0), (-2.0, 2.0)),
        ("gelu", Unary::Gelu, 0.0, 0.0, gelu, (-3.0, 3.0)),
        ("sigmoid", Unary::Sigmoid, 0.0, 0.0, |x| 1.0 / (1.0 + (-x).exp()), (-6.0, 6.0)),
        ("tanh", Unary::Tanh, 0.0, 0.0, |x| x.tanh(), (-3.0, 3.0)),
        ("abs", Unary::Abs, 0.0, 0.0, |x| x.abs(), (-2.0, 2.0)),
        ("square", Unary::Square, 0.0, 0.0, |x| x * x, (-2.0, 2.0)),
        ("affine", Unary::Affine, 1.5, -0.25, |x| 1.5 * x - 0.25, (-2.0, 2.0)),
        ("recip", Unary::Recip, 0.0, 0.0, |x| 1.0 / x, (0.5, 3.0)),
        ("pow", Unary::Pow, 1.7, 0.0, |x| x.powf(1.7), (0.3, 3.0)),
        ("clamp", Unary::Clamp, -0.5, 0.7, |x| x.clamp(-0.5, 0.7), (-2.0, 2.0)),
    ];
    for (name, op, a, b, f, (lo, hi)) in cases {
        let mut x = rng.uniforms(n, lo, hi);
        // keep finite differences away from kinks
        if matches!(op, Unary::Relu | Unary::Abs | Unary::Clamp) {
            for v in x.iter_mut() {
                for k in [0.0, -0.5, 0.7] {
                    if (*v - k).abs() < 1e-3 {
                        *v += 3e-3;
                    }
                }
            }
        }
        check_op(
            name,
            &[(x, shape.clone())],
            &[0],
            &|t| ops::unary(&t[0], op, a, b),
            &|xs| xs[0].iter().map(|&v| f(v)).collect(),
            Tol::default(),
        );
    }
}

fn bcast_ref(a: &[f64], sa: &[usize], b: &[f64], sb: &[usize], f: impl Fn(f64, f64) -> f64) -> Vec<f64> {
    let out = ops::broadcast_shape("ref", sa, sb).unwrap();
    let n = numel(&out);
    let idx = |shape: &[usize], coord: &[usize]| -> usize {
        let off = out.len() - shape.len();
        let mut i = 0;
        for (d, &s) in shape.iter().enumerate() {
            let c = if s == 1 { 0 } else { coord[d + off] };
            i = i * s + c;
        }
        i
    };
    (0..n)
        .map(|flat| {
            let mut coord = vec![0; out.len()];
            let mut r = flat;
            for d in (0..out.len()).rev() {
                coord[d] = r % out[d];
                r /= out[d];
            }
            f(a[idx(sa, &coord)], b[idx(sb, &coord)])
        })
        .collect()
}

#[test]
fn binary_ops_broadcast_and_gradients() {
    check_binary(
        &[
            (vec![7, 33], vec![7, 33]),
            (vec![5, 1, 9], vec![4, 1]),
            (vec![3, 17], vec![17]),
            (vec![1], vec![2, 3, 5]),
            (vec![2, 3, 1, 5], vec![1, 3, 4, 1]),
        ],
        2,
    );
}

fn check_binary(shapes: &[(Vec<usize>, Vec<usize>)], seed: u64) {
    let mut rng = Rng::new(seed);
    type F = fn(f64, f64) -> f64;
    let ops_list: Vec<(&str, Binary, F)> = vec![
        ("add", Binary::Add, |a, b| a + b),
        ("sub", Binary::Sub, |a, b| a - b),
        ("mul", Binary::Mul, |a, b| a * b),
        ("div", Binary::Div, |a, b| a / b),
        ("max", Binary::Max, |a, b| a.max(b)),
        ("min", Binary::Min, |a, b| a.min(b)),
    ];
    for (sa, sb) in shapes {
        for (name, op, f) in &ops_list {
            let a = rng.uniforms(numel(sa), -2.0, 2.0);
            // b away from zero (div) and from a (max/min ties)
            let b: Vec<f64> = rng.uniforms(numel(sb), 0.5, 2.0).iter().map(|v| if rng.uniform() < 0.5 { -v } else { *v }).collect();
            let (op, f) = (*op, *f);
            let (sa2, sb2) = (sa.clone(), sb.clone());
            check_op(
                &format!("{name} {sa:?} {sb:?}"),
                &[(a, sa.clone()), (b, sb.clone())],
                &[0, 1],
                &|t| ops::binary(&t[0], &t[1], op, 0.0, 0.0),
                &move |xs| bcast_ref(&xs[0], &sa2, &xs[1], &sb2, f),
                Tol::default(),
            );
        }
    }
}

/// lerp(a, b, s, t) = s*a + t*b with broadcasting: forward and both gradients (s*g and t*g,
/// summed over broadcast dims) vs finite differences.
fn check_lerp(shapes: &[(Vec<usize>, Vec<usize>)], seed: u64) {
    let mut rng = Rng::new(seed);
    let (s, t) = (0.7f32, -1.3f32);
    for (sa, sb) in shapes {
        let a = rng.uniforms(numel(sa), -2.0, 2.0);
        let b = rng.uniforms(numel(sb), -2.0, 2.0);
        let (sa2, sb2) = (sa.clone(), sb.clone());
        // a broadcast operand's gradient sums over the dims it was broadcast along
        let k = numel(&broadcast_shape(sa, sb)) / numel(sa).min(numel(sb));
        check_op(
            &format!("lerp {sa:?} {sb:?}"),
            &[(a, sa.clone()), (b, sb.clone())],
            &[0, 1],
            &|x| ops::lerp(&x[0], &x[1], s, t),
            &move |xs| bcast_ref(&xs[0], &sa2, &xs[1], &sb2, |x, y| s as f64 * x + t as f64 * y),
            Tol::sums(1, 1.0, k, (k as f64).sqrt()),
        );
    }
}


#[test]
fn lerp_matches_reference_and_gradients() {
    check_lerp(&[(vec![7, 33], vec![7, 33]), (vec![5, 1, 9], vec![4, 1]), (vec![3, 17], vec![17]), (vec![1], vec![2, 3, 5])], 44);
}

#[test]
fn broadcast_mismatch_is_a_typed_error() {
    let g = gpu();
    let a = Tensor::zeros(&g, &[3, 4]).unwrap();
    let b = Tensor::zeros(&g, &[5]).unwrap();
    let e = ops::add(&a, &b).unwrap_err().to_string();
    assert!(e.contains("[3, 4]") && e.contains("[5]"), "{e}");
}

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

#[test]
fn f16_storage_round_trips() {
    let g = gpu();
    let mut rng = Rng::new(5);
    let x: Vec<f32> = rng.normals(1001).iter().map(|&v| v as f32).collect();
    let t = Tensor::from_slice(&g, &x, &[1001]).unwrap();
    let h = ops::cast(&t, equimodal::DType::F16).unwrap();
    assert_eq!(h.dtype(), equimodal::DType::F16);
    let back = ops::cast(&h, equimodal::DType::F32).unwrap().to_vec().unwrap();
    let host_h = h.to_vec().unwrap();
    for i in 0..x.len() {
        let want = half::f16::from_f32(x[i]).to_f32();
        assert_eq!(back[i], want, "gpu f16 rounding at {i}");
        assert_eq!(host_h[i], want);
    }
    let up = Tensor::from_slice_f16(&g, &x, &[1001]).unwrap();
    assert_eq!(up.to_vec().unwrap(), host_h);
}

#[test]
fn autograd_accumulates_and_frees() {
    let g = gpu();
    let x = Tensor::from_slice(&g, &[1.0, 2.0, 3.0], &[3]).unwrap().requires_grad();
    // y = sum(x*x + x) -> dy/dx = 2x + 1 ; x used twice in the graph
    let y = ops::sum_all(&ops::add(&ops::mul(&x, &x).unwrap(), &x).unwrap()).unwrap();
    let mut grads = equimodal::Gradients::new();
    y.backward_into(&mut grads).unwrap();
    assert_eq!(grads.get(&x).unwrap().to_vec().unwrap(), vec![3.0, 5.0, 7.0]);
    // a second backward through the same graph is a typed error (saved tensors freed)
    assert!(y.backward_into(&mut grads).is_err());
    // a new graph accumulates into the same store
    let z = ops::sum_all(&ops::scale(&x, 2.0).unwrap()).unwrap();
    z.backward_into(&mut grads).unwrap();
    assert_eq!(grads.get(&x).unwrap().to_vec().unwrap(), vec![5.0, 7.0, 9.0]);
    // no_grad records nothing
    let w = {
        let _ng = equimodal::autograd::no_grad();
        ops::mul(&x, &x).unwrap()
    };
    assert!(!w.is_tracked());
    assert!(ops::sum_all(&w).unwrap().backward().is_err());
    // only leaves keep gradients
    assert_eq!(grads.len(), 1);
}

#[test]
fn reshape_is_a_view_with_gradient() {
    let g = gpu();
    let x = Tensor::from_slice(&g, &[1., 2., 3., 4., 5., 6.], &[2, 3]).unwrap().requires_grad();
    let r = x.reshape(&[3, usize::MAX]).unwrap();
    assert_eq!(r.shape(), &[3, 2]);
    assert!(std::sync::Arc::ptr_eq(r.storage(), x.storage()));
    let w = Tensor::from_slice(&g, &[1., 0., 0., 0., 0., 2.], &[3, 2]).unwrap();
    let l = ops::sum_all(&ops::mul(&r, &w).unwrap()).unwrap();
    let gr = l.backward().unwrap();
    assert_eq!(gr.get(&x).unwrap().to_vec().unwrap(), vec![1., 0., 0., 0., 0., 2.]);
    assert!(x.reshape(&[4, 2]).is_err());
}

/// The element-wise and reduction checks with at most 3 workgroups per grid dimension
/// (`with_workgroup_cap`), the path the adapter's 65,535 leaves to tensors of over 16M
/// elements: grids fold over x, y and z and launch more workgroups than there are items, so
/// a kernel that does not guard its index writes into the slack of its output (the pool
/// canary, checked by `check_op`) or reads NaN from its input's slack.
#[test]
fn elementwise_under_workgroup_cap() {
    with_workgroup_cap(3, || {
        // 1700 = 7 workgroups of 256: a 3 x 3 grid, 2 workgroups past the end
        check_unary(vec![17, 100], 41);
        // 2777 = 11 workgroups: a 3 x 2 x 2 grid (z used), 1 past the end
        check_unary(vec![2777], 42);
        // 2747 and 3600 outputs: 11 and 15 workgroups (3-D grids with spare workgroups)
        check_binary(&[(vec![41, 67], vec![41, 67]), (vec![3, 1, 300], vec![4, 1])], 43);
        check_lerp(&[(vec![41, 67], vec![41, 67]), (vec![3, 1, 300], vec![4, 1])], 45);
        binary_ops_broadcast_and_gradients();
        // row reductions over 6 outputs, tree reductions of up to 1000 rows
        reductions_match_reference_and_gradients();
        expand_and_sum_to_shape_are_adjoint();
    });
    // split reductions of up to 300 outputs need more than 27 workgroups
    with_workgroup_cap(7, split_reductions_match_reference);
}
