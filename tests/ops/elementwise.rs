//! Element-wise ops (unary, broadcasting binary, lerp, casts) against CPU f64 references
//! and finite differences.
use crate::common;
use common::*;
use equimodal::ops::{self, Binary, Unary};
use equimodal::Tensor;

use common::cpu_nn::gelu_scalar as gelu;

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

/// Broadcasts whose output's last dim is a multiple of 4: the broadcast vec4 form (one
/// index decode per four outputs; each operand's last-dim stride 1 or 0).
#[test]
fn binary_ops_broadcast_in_vec4_form() {
    check_binary(
        &[
            (vec![3, 8], vec![8]),             // a bias row
            (vec![6, 1], vec![6, 12]),         // a column of a, stride 0 along the last dim
            (vec![4], vec![3, 1]),             // both broadcast, output [3, 4]
            (vec![1], vec![2, 4]),             // one value against all
            (vec![2, 3, 1, 4], vec![1, 3, 5, 4]),
        ],
        3,
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
    // [8, 33] twice: the vec4 form (a multiple of 4 elements)
    check_lerp(&[(vec![7, 33], vec![7, 33]), (vec![8, 33], vec![8, 33]), (vec![5, 1, 9], vec![4, 1]), (vec![3, 17], vec![17]), (vec![1], vec![2, 3, 5])], 44);
}

/// The comparisons and the sign, exactly: 1.0 / 0.0 (and −1 / 0 / 1), with a quarter of the
/// pairs tied and exact zeros, on the scalar, vec4 and broadcast forms (PMR, InfoReg, AGM and
/// Greedy build their masks from these).
#[test]
fn comparisons_and_sign_are_exact_with_ties() {
    let g = gpu();
    let mut rng = Rng::new(45);
    // multiples of 0.5 in [-2, 2]: exactly representable, so ties and zeros are real
    let mut halves = |n: usize| -> Vec<f64> { (0..n).map(|_| (rng.uniform() * 9.0).floor() * 0.5 - 2.0).collect() };
    for (sa, sb) in [(vec![7, 33], vec![7, 33]), (vec![8, 33], vec![8, 33]), (vec![3, 8], vec![8]), (vec![5, 1, 9], vec![4, 1]), (vec![8, 33], vec![1])] {
        let a = halves(numel(&sa));
        let mut b = halves(numel(&sb));
        // a quarter of the same-shape pairs tied
        if sa == sb {
            for i in (0..b.len()).step_by(4) {
                b[i] = a[i];
            }
        }
        let (at, bt) = (upload(&g, &a, &sa), upload(&g, &b, &sb));
        for (name, op, f) in [("eq", Binary::Eq, (|x: f64, y: f64| (x == y) as u8 as f64) as fn(f64, f64) -> f64), ("ge", Binary::Ge, |x, y| (x >= y) as u8 as f64)] {
            let got = ops::binary(&at, &bt, op, 0.0, 0.0).unwrap().to_vec().unwrap();
            let want = bcast_ref(&a, &sa, &b, &sb, f);
            assert_eq!(got.iter().map(|v| *v as f64).collect::<Vec<_>>(), want, "{name} {sa:?} {sb:?}");
            assert!(want.contains(&1.0) && want.contains(&0.0), "{name} {sa:?} {sb:?}: the test needs both outcomes");
        }
        let got = ops::sign(&at).unwrap().to_vec().unwrap();
        assert_eq!(got.iter().map(|v| *v as f64).collect::<Vec<_>>(), a.iter().map(|&x| if x > 0.0 { 1.0 } else if x < 0.0 { -1.0 } else { 0.0 }).collect::<Vec<_>>(), "sign {sa:?}");
        assert!(a.contains(&0.0), "sign {sa:?}: the test needs exact zeros");
    }
    // ge_scalar: the scalar operand broadcast
    let x = halves(8 * 33);
    let got = ops::ge_scalar(&upload(&g, &x, &[8, 33]), 0.5).unwrap().to_vec().unwrap();
    assert_eq!(got.iter().map(|v| *v as f64).collect::<Vec<_>>(), x.iter().map(|&v| (v >= 0.5) as u8 as f64).collect::<Vec<_>>());
}

#[test]
fn broadcast_mismatch_is_a_typed_error() {
    let g = gpu();
    let a = Tensor::zeros(&g, &[3, 4]).unwrap();
    let b = Tensor::zeros(&g, &[5]).unwrap();
    let e = ops::add(&a, &b).unwrap_err().to_string();
    assert!(e.contains("[3, 4]") && e.contains("[5]"), "{e}");
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

/// The element-wise and reduction checks with at most 3 workgroups per grid dimension
/// (`with_workgroup_cap`), the path the adapter's 65,535 leaves to tensors of over 16M
/// elements: grids fold over x, y and z and launch more workgroups than there are items, so
/// a kernel that does not guard its index writes into the slack of its output (the pool
/// canary, checked by `check_op`) or reads NaN from its input's slack.
/// The vec4 form (contiguous, length a multiple of 4: each thread moves 4 vec4s) and the
/// scalar form (any length) against the references: 4100 elements are 1025 vec4s, two
/// workgroups of the vec4 form, the second holding one; 77 take the scalar form.
#[test]
fn vec4_and_scalar_forms_match_the_reference() {
    check_unary(vec![2, 2050], 3);
    check_unary(vec![7, 11], 4);
    check_binary(&[(vec![2, 2050], vec![2, 2050]), (vec![8, 33], vec![8, 33]), (vec![7, 11], vec![7, 11])], 5);
    let g = gpu();
    for (shape, v) in [(vec![2, 2050], 1.5f32), (vec![7, 11], -2.0)] {
        let n = numel(&shape);
        assert_eq!(ops::full(&g, &shape, v).unwrap().to_vec().unwrap(), vec![v; n], "fill {shape:?}");
        let acc = ops::full(&g, &shape, 1.0).unwrap();
        let x = ops::full(&g, &shape, v).unwrap();
        assert_eq!(ops::add_into(acc, &x).unwrap().to_vec().unwrap(), vec![1.0 + v; n], "add_into {shape:?}");
        // distinct values: a lane or element mixed up shows (constants would hide it)
        let mut rng = Rng::new(46);
        let (a, b) = (round_f32(&rng.uniforms(n, -2.0, 2.0)), round_f32(&rng.uniforms(n, -2.0, 2.0)));
        let got = ops::add_into(upload(&g, &a, &shape), &upload(&g, &b, &shape)).unwrap().to_vec().unwrap();
        let want: Vec<f32> = a.iter().zip(&b).map(|(x, y)| (*x as f32) + (*y as f32)).collect();
        assert_eq!(got, want, "add_into distinct {shape:?}");
    }
    assert_canaries("vec4 forms");
}

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
        // the vec4 form: 10,000 = 2,500 vec4s = 3 workgroups of 1,024 (a 3 x 1 grid), and
        // 40,000 = 10 workgroups (a 3 x 2 x 2 grid with spares); forward only (finite
        // differences over 40,000 inputs would take minutes)
        let g = gpu();
        let mut rng = Rng::new(46);
        for n in [10_000, 40_000] {
            let a = round_f32(&rng.uniforms(n, -2.0, 2.0));
            let b = round_f32(&rng.uniforms(n, 0.5, 2.0));
            let (at, bt) = (upload(&g, &a, &[n]), upload(&g, &b, &[n]));
            let got = ops::binary(&at, &bt, Binary::Div, 0.0, 0.0).unwrap().to_vec().unwrap();
            let want: Vec<f64> = a.iter().zip(&b).map(|(x, y)| x / y).collect();
            assert_close(&format!("capped vec4 div, {n}"), &got, &want, 1e-6, 1e-7);
            let got = ops::unary(&at, Unary::Exp, 0.0, 0.0).unwrap().to_vec().unwrap();
            let want: Vec<f64> = a.iter().map(|x| x.exp()).collect();
            assert_close(&format!("capped vec4 exp, {n}"), &got, &want, 1e-6, 1e-7);
        }
        assert_canaries("capped vec4 forms");
        binary_ops_broadcast_and_gradients();
    });
}

/// Under mixed precision a ReLU keeps a bit mask of its output for its backward: 1/32 of the
/// f32 output's bytes held between the forward and the backward (counted on a context of this
/// test alone; n not a multiple of 32, so the last word is partial), and the same gradient
/// bit for bit, zeros of either sign included (the input has exact zeros, and the seed
/// negative values, so g * 0 gives -0 where the mask is off).
#[test]
fn relu_under_autocast_keeps_a_bit_mask_of_its_output() {
    let g = equimodal::Gpu::new(test_options()).unwrap();
    let n = 4096 + 19;
    let mut rng = Rng::new(151);
    let mut xv = rng.normals(n);
    for v in xv.iter_mut().step_by(7) {
        *v = 0.0;
    }
    let x = upload(&g, &xv, &[n]).requires_grad();
    let seed = upload(&g, &rng.uniforms(n, -1.0, 1.0), &[n]);
    let run = |mixed: bool| {
        let _ac = equimodal::autograd::autocast(mixed);
        // held once the output itself is gone: what the backward keeps, and the loss
        let before = g.memory().allocated;
        let loss = ops::sum(&ops::relu(&x).unwrap(), &[0], false).unwrap();
        let held = g.memory().allocated - before;
        drop(loss.backward().unwrap());
        let y = ops::relu(&x).unwrap();
        let mut grads = equimodal::Gradients::new();
        y.backward_with(seed.clone(), &mut grads).unwrap();
        (held, grads.get(&x).unwrap().to_vec().unwrap())
    };
    let (held32, dx32) = run(false);
    let (held16, dx16) = run(true);
    let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<u32>>();
    assert_eq!(bits(&dx16), bits(&dx32));
    assert!(dx32.iter().any(|v| v.to_bits() == (-0.0f32).to_bits()), "no -0 in the gradient: the sign case is untested");
    assert_eq!(held32, 4 * n as u64 + 4, "f32 keeps the output itself (and the loss)");
    assert_eq!(held16, 4 * n.div_ceil(32) as u64 + 4, "mixed keeps the mask's words (and the loss)");
}

/// A ReLU's backward masks the gradient in its own storage when nothing else sees it (it
/// came from a later op): the backward then holds one gradient where a new masked tensor
/// would be a second, and the result is bit for bit the one from a gradient that cannot be
/// overwritten (the caller's seed, which stays untouched), f32 and under autocast (mask).
#[test]
fn a_relu_backward_masks_a_gradient_nothing_else_sees_in_place() {
    let g = equimodal::Gpu::new(test_options()).unwrap();
    let n = 1 << 16;
    let mut rng = Rng::new(153);
    let x = upload(&g, &rng.normals(n), &[n]).requires_grad();
    let seed = upload(&g, &rng.uniforms(n, -1.0, 1.0), &[n]);
    let seed_values = seed.to_vec().unwrap();
    let bytes = 4 * n as u64;
    for mixed in [false, true] {
        let _ac = equimodal::autograd::autocast(mixed);
        // through a later op: scale's backward hands the ReLU a gradient of its own
        let y = ops::scale(&ops::relu(&x).unwrap(), 2.0).unwrap();
        g.synchronize().unwrap();
        let before = g.memory().allocated;
        g.reset_peak_memory();
        let mut grads = equimodal::Gradients::new();
        y.backward_with(seed.clone(), &mut grads).unwrap();
        let held = g.memory().peak_allocated - before;
        let through = grads.get(&x).unwrap().to_vec().unwrap();
        assert!(held < bytes + bytes / 2, "mixed={mixed}: the backward peaked at {held} bytes, {bytes} a gradient");
        // directly: the seed is the caller's, so a new tensor is masked
        let mut direct = equimodal::Gradients::new();
        ops::relu(&x).unwrap().backward_with(ops::scale(&seed, 2.0).unwrap(), &mut direct).unwrap();
        assert_eq!(direct.get(&x).unwrap().to_vec().unwrap(), through, "mixed={mixed}");
        let mut seeded = equimodal::Gradients::new();
        ops::relu(&x).unwrap().backward_with(seed.clone(), &mut seeded).unwrap();
        assert_eq!(seed.to_vec().unwrap(), seed_values, "mixed={mixed}: the caller's seed was written");
    }
}

/// A sum or a difference keeps neither operand for its backward (a residual connection then
/// keeps nothing alive), and a product keeps exactly the factors the other factor's gradient
/// reads: bytes held after the forward (its intermediates dropped), on a context of this
/// test alone.
#[test]
fn binary_ops_keep_only_the_operands_their_backward_reads() {
    let g = equimodal::Gpu::new(test_options()).unwrap();
    let n = 1000;
    let mut rng = Rng::new(152);
    let a = upload(&g, &rng.normals(n), &[n]).requires_grad();
    let b = upload(&g, &rng.normals(n), &[n]).requires_grad();
    let c = upload(&g, &rng.normals(n), &[n]);
    // op(2a, rhs): 2a is a fresh intermediate, kept only if op's backward reads it
    let held = |op: &dyn Fn(&Tensor) -> Tensor| {
        let before = g.memory().allocated;
        let loss = ops::sum(&op(&ops::scale(&a, 2.0).unwrap()), &[0], false).unwrap();
        let held = g.memory().allocated - before - 4;
        drop(loss.backward().unwrap());
        held
    };
    let bytes = 4 * n as u64;
    assert_eq!(held(&|u| ops::add(u, &b).unwrap()), 0, "add");
    assert_eq!(held(&|u| ops::sub(u, &b).unwrap()), 0, "sub");
    assert_eq!(held(&|u| ops::mul(u, &b).unwrap()), bytes, "mul keeps 2a for b's gradient");
    assert_eq!(held(&|u| ops::mul(u, &c).unwrap()), 0, "mul by a constant keeps only the constant");
    assert_eq!(held(&|u| ops::div(&c, u).unwrap()), bytes, "c / 2a keeps 2a");
}

/// `abs_max_bits` (the per-tensor scale of an f32 operand the tensor-core kernels stage as
/// f16) is max |x| exactly, as f32 bits: a negative extreme, the extreme in the last element
/// of a tensor longer than its grid (the grid-stride loop), one element, and a NaN anywhere.
#[test]
fn abs_max_bits_is_the_exact_maximum_magnitude() {
    let g = gpu();
    let mut rng = Rng::new(153);
    let bits = |v: &[f64]| -> f32 {
        let t = ops::abs_max_bits(&upload(&g, v, &[v.len()])).unwrap();
        f32::from_bits(t.to_vec().unwrap()[0].to_bits())
    };
    for n in [1usize, 1000, 300_000] {
        let mut v = rng.uniforms(n, -1.0, 1.0);
        v[n - 1] = -3.25;
        assert_eq!(bits(&v), 3.25, "n = {n}");
    }
    let mut v = rng.uniforms(5000, -1e-7, 1e-7);
    v[17] = 2.5e-7;
    assert_eq!(bits(&v), 2.5e-7f64 as f32);
    v[4000] = f64::NAN;
    assert!(bits(&v).is_nan());
}
