//! Batched matmul (transposes, broadcast batch dims, B scales) and linear against CPU f64
//! references and finite differences; the tiled kernels against the reference kernel.
use crate::common;
use common::*;
use equimodal::ops::{self, MatmulKernel, MatmulOpts, Tile128};

/// The 128x128 tile's forms the tests name.
const TILE128: MatmulKernel = MatmulKernel::TILE128;
const VEC4: MatmulKernel = MatmulKernel::Tile128(Tile128 { vec4: true, ..Tile128::PLAIN });
const DEEP: MatmulKernel = MatmulKernel::Tile128(Tile128 { k16: true, ..Tile128::PLAIN });
const VEC4_DEEP: MatmulKernel = MatmulKernel::Tile128(Tile128 { vec4: true, k16: true, ..Tile128::PLAIN });
use equimodal::{Error, Tensor};


/// Flat index of batch `coord` (of the output batch shape) into an operand batch shape.
fn batch_index(shape: &[usize], coord: &[usize]) -> usize {
    let off = coord.len() - shape.len();
    shape.iter().enumerate().fold(0, |acc, (d, &s)| acc * s + if s == 1 { 0 } else { coord[d + off] })
}

/// CPU f64 reference of matmul_ex: op(A) · op(B ⊙ S).
#[allow(clippy::too_many_arguments)]
fn matmul_ref(a: &[f64], sa: &[usize], ta: bool, b: &[f64], sb: &[usize], tb: bool, s: Option<&[f64]>) -> Vec<f64> {
    let (ar, ac) = (sa[sa.len() - 2], sa[sa.len() - 1]);
    let (br, bc) = (sb[sb.len() - 2], sb[sb.len() - 1]);
    let (m, k) = if ta { (ac, ar) } else { (ar, ac) };
    let n = if tb { br } else { bc };
    let (ab, bb) = (&sa[..sa.len() - 2], &sb[..sb.len() - 2]);
    let ob = broadcast_shape(ab, bb);
    let nb = numel(&ob);
    let mut out = vec![0.0; nb * m * n];
    for z in 0..nb {
        let mut coord = vec![0; ob.len()];
        let mut r = z;
        for d in (0..ob.len()).rev() {
            coord[d] = r % ob[d];
            r /= ob[d];
        }
        let (oa, obb) = (batch_index(ab, &coord) * m * k, batch_index(bb, &coord) * k * n);
        for i in 0..m {
            for j in 0..n {
                let mut acc = 0.0;
                for l in 0..k {
                    let av = a[oa + if ta { l * m + i } else { i * k + l }];
                    let bi = obb + if tb { j * k + l } else { l * n + j };
                    acc += av * b[bi] * s.map_or(1.0, |s| s[bi]);
                }
                out[(z * m + i) * n + j] = acc;
            }
        }
    }
    out
}

fn a_shape(batch: &[usize], m: usize, k: usize, ta: bool) -> Vec<usize> {
    let mut s = batch.to_vec();
    s.extend(if ta { [k, m] } else { [m, k] });
    s
}
fn b_shape(batch: &[usize], k: usize, n: usize, tb: bool) -> Vec<usize> {
    let mut s = batch.to_vec();
    s.extend(if tb { [n, k] } else { [k, n] });
    s
}

/// A mask with zeros, ones and a few fractional entries.
fn mask(rng: &mut Rng, n: usize) -> Vec<f64> {
    (0..n)
        .map(|_| match rng.below(4) {
            0 => 0.0,
            1 => 0.5,
            _ => 1.0,
        })
        .collect()
}

#[test]
fn all_transpose_and_scale_combinations_forward_and_gradients() {
    let mut rng = Rng::new(7);
    let (m, k, n) = (5, 7, 6);
    for ta in [false, true] {
        for tb in [false, true] {
            for scaled in [false, true] {
                let sa = a_shape(&[2], m, k, ta);
                let sb = b_shape(&[2], k, n, tb);
                let a = rng.normals(numel(&sa));
                let b = rng.normals(numel(&sb));
                let mut inputs = vec![(a, sa.clone()), (b, sb.clone())];
                if scaled {
                    inputs.push((mask(&mut rng, numel(&sb)), sb.clone()));
                }
                let name = format!("matmul ta={ta} tb={tb} scaled={scaled}");
                let (sa2, sb2) = (sa.clone(), sb.clone());
                check_op(
                    &name,
                    &inputs,
                    &[0, 1],
                    &|t| ops::matmul_ex(&t[0], &t[1], MatmulOpts { trans_a: ta, trans_b: tb, b_scale: t.get(2) }),
                    &|x| matmul_ref(&x[0], &sa2, ta, &x[1], &sb2, tb, x.get(2).map(|v| &v[..])),
                    // K = 7 products of N(0,1) values; gradients sum N = 6 (dA) or M = 5
                    // times the batch of 2 (dB) products
                    Tol::sums(k, (k as f64).sqrt(), 2 * m.max(n), (2.0 * m.max(n) as f64).sqrt()),
                );
            }
        }
    }
}

#[test]
fn masked_weights_get_exactly_zero_gradient() {
    let g = gpu();
    let mut rng = Rng::new(11);
    for tb in [false, true] {
        // B shared by the batch (fold fast path) and batched (general path)
        for b_batch in [vec![], vec![3]] {
            let sa = vec![3, 4, 9];
            let sb = b_shape(&b_batch, 9, 5, tb);
            let a = upload(&g, &rng.normals(numel(&sa)), &sa);
            let b = upload(&g, &rng.normals(numel(&sb)), &sb).requires_grad();
            let mv = mask(&mut rng, numel(&sb));
            let s = upload(&g, &mv, &sb);
            let y = ops::matmul_ex(&a, &b, MatmulOpts { trans_a: false, trans_b: tb, b_scale: Some(&s) }).unwrap();
            let loss = ops::sum_all(&ops::square(&y).unwrap()).unwrap();
            let grads = loss.backward().unwrap();
            let gb = grads.get(&b).unwrap().to_vec().unwrap();
            let mut nonzero = 0;
            for (i, (&gv, &mk)) in gb.iter().zip(&mv).enumerate() {
                if mk == 0.0 {
                    assert_eq!(gv, 0.0, "tb={tb} batch={b_batch:?}: masked gradient entry {i} is {gv}");
                } else if gv != 0.0 {
                    nonzero += 1;
                }
            }
            assert!(nonzero > 0, "unmasked entries should get gradient");
        }
    }
}

#[test]
fn batch_broadcasting_forward_and_gradients() {
    let mut rng = Rng::new(3);
    // (A batch, B batch, trans_a, trans_b)
    let cases: Vec<(Vec<usize>, Vec<usize>, bool, bool)> = vec![
        (vec![2, 3], vec![], false, false), // shared 2-D B: batch folded into M
        (vec![2, 3], vec![], false, true),  // shared, PyTorch weight layout
        (vec![2, 3], vec![], true, false),  // shared B, transposed A: batched, B stride 0
        (vec![2, 1], vec![3], false, false),
        (vec![2, 1], vec![3], true, true),
        (vec![1], vec![4], false, false), // A broadcast along the batch
        (vec![], vec![2], false, true),    // 2-D A shared by batched B
        (vec![1], vec![1], false, false), // batch 1
        (vec![3], vec![1, 1], false, false), // B batch of ones: folded too
    ];
    for (ab, bb, ta, tb) in cases {
        let (m, k, n) = (3, 5, 4);
        // gradient terms: N or M products per batch, times the batch a broadcast operand sums
        let kg = m.max(n) * numel(&broadcast_shape(&ab, &bb));
        let sa = a_shape(&ab, m, k, ta);
        let sb = b_shape(&bb, k, n, tb);
        let scaled = rng.below(2) == 1;
        let mut inputs = vec![(rng.normals(numel(&sa)), sa.clone()), (rng.normals(numel(&sb)), sb.clone())];
        if scaled {
            inputs.push((mask(&mut rng, numel(&sb)), sb.clone()));
        }
        let name = format!("matmul bcast {sa:?} x {sb:?} ta={ta} tb={tb} scaled={scaled}");
        let (sa2, sb2) = (sa.clone(), sb.clone());
        check_op(
            &name,
            &inputs,
            &[0, 1],
            &|t| {
                let y = ops::matmul_ex(&t[0], &t[1], MatmulOpts { trans_a: ta, trans_b: tb, b_scale: t.get(2) })?;
                let mut want = broadcast_shape(&ab, &bb);
                want.extend([m, n]);
                assert_eq!(y.shape(), &want[..], "output shape");
                Ok(y)
            },
            &|x| matmul_ref(&x[0], &sa2, ta, &x[1], &sb2, tb, x.get(2).map(|v| &v[..])),
            // K products per output; a broadcast operand's gradient sums over the batch too
            Tol::sums(k, (k as f64).sqrt(), kg, (kg as f64).sqrt()),
        );
    }
}

#[test]
fn edge_shapes_forward_and_gradients() {
    let mut rng = Rng::new(5);
    // M=1, N=1, K=1 and sizes that are not tile multiples
    let shapes = [(1, 6, 5), (4, 1, 5), (4, 6, 1), (1, 1, 1), (17, 33, 65)];
    for (i, &(m, n, k)) in shapes.iter().enumerate() {
        let (ta, tb) = (i % 2 == 1, i % 3 == 1);
        let sa = a_shape(&[], m, k, ta);
        let sb = b_shape(&[], k, n, tb);
        let inputs = vec![(rng.normals(numel(&sa)), sa.clone()), (rng.normals(numel(&sb)), sb.clone())];
        let (sa2, sb2) = (sa.clone(), sb.clone());
        check_op(
            &format!("matmul {m}x{n}x{k} ta={ta} tb={tb}"),
            &inputs,
            &[0, 1],
            &|t| ops::matmul_ex(&t[0], &t[1], MatmulOpts { trans_a: ta, trans_b: tb, b_scale: None }),
            &|x| matmul_ref(&x[0], &sa2, ta, &x[1], &sb2, tb, None),
            Tol::sums(k, (k as f64).sqrt(), m.max(n), (m.max(n) as f64).sqrt()),
        );
    }
}

/// Forward of every kernel (both tiles, forced, and the reference) vs the CPU.
#[allow(clippy::too_many_arguments)]
fn cross_check(rng: &mut Rng, ab: &[usize], bb: &[usize], m: usize, n: usize, k: usize, ta: bool, tb: bool, scaled: bool) {
    let g = gpu();
    let sa = a_shape(ab, m, k, ta);
    let sb = b_shape(bb, k, n, tb);
    let a = round_f32(&rng.normals(numel(&sa)));
    let b = round_f32(&rng.normals(numel(&sb)));
    let s = scaled.then(|| mask(rng, numel(&sb)));
    let want = matmul_ref(&a, &sa, ta, &b, &sb, tb, s.as_deref());
    let (at, bt) = (upload(&g, &a, &sa), upload(&g, &b, &sb));
    let st = s.as_ref().map(|s| upload(&g, s, &sb));
    let opts = MatmulOpts { trans_a: ta, trans_b: tb, b_scale: st.as_ref() };
    let reference = ops::matmul_with_kernel(&at, &bt, opts, MatmulKernel::Reference).unwrap().to_vec().unwrap();
    let what = format!("{sa:?} x {sb:?} ta={ta} tb={tb} scaled={scaled}");
    // K products of N(0,1) values: scale sqrt(K), f32 error ~ u sqrt(K) of that (Tol::sums)
    let atol = 1e-6 * k as f64;
    assert_close(&format!("reference kernel {what}"), &reference, &want, 1e-5, atol);
    for kernel in [MatmulKernel::Tile64, TILE128, DEEP, MatmulKernel::Auto] {
        let got = ops::matmul_with_kernel(&at, &bt, opts, kernel).unwrap().to_vec().unwrap();
        assert_close(&format!("{kernel:?} {what}"), &got, &want, 1e-5, atol);
        let diff = got.iter().zip(&reference).map(|(x, y)| (x - y).abs()).fold(0.0f32, f32::max);
        assert!(diff <= 1e-4 * (k as f32).sqrt(), "{kernel:?} vs reference kernel {what}: max diff {diff}");
    }
    // no kernel wrote past the end of its output (M and N tails of the tiles)
    assert_canaries(&what);
}

#[test]
fn larger_than_one_tile_every_kernel_matches() {
    let mut rng = Rng::new(9);
    // 130 x 70 x 90: more than one 128 tile in M, more than one 64 tile in every dim
    for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
        cross_check(&mut rng, &[], &[], 130, 70, 90, ta, tb, ta);
    }
    // batched, B shared (folded) and batched with broadcast
    cross_check(&mut rng, &[2], &[], 130, 70, 90, false, true, true);
    cross_check(&mut rng, &[2, 1], &[2], 66, 129, 20, true, false, false);
}

#[test]
fn random_shapes_tiled_kernels_match_reference_kernel() {
    let mut rng = Rng::new(21);
    for _ in 0..12 {
        let (m, n, k) = (1 + rng.below(40), 1 + rng.below(40), 1 + rng.below(40));
        let nb = rng.below(3);
        let ab: Vec<usize> = (0..nb).map(|_| 1 + rng.below(3)).collect();
        // B batch: none, matching, or broadcast-compatible
        let bb: Vec<usize> = match rng.below(3) {
            0 => vec![],
            1 => ab.clone(),
            _ => ab.iter().map(|&d| if rng.below(2) == 0 { 1 } else { d }).collect(),
        };
        let (ta, tb, scaled) = (rng.below(2) == 1, rng.below(2) == 1, rng.below(2) == 1);
        cross_check(&mut rng, &ab, &bb, m, n, k, ta, tb, scaled);
    }
}

fn linear_ref(x: &[f64], in_f: usize, w: &[f64], out_f: usize, bias: Option<&[f64]>, s: Option<&[f64]>) -> Vec<f64> {
    let rows = x.len() / in_f;
    let mut y = vec![0.0; rows * out_f];
    for r in 0..rows {
        for o in 0..out_f {
            let mut acc = bias.map_or(0.0, |b| b[o]);
            for i in 0..in_f {
                acc += x[r * in_f + i] * w[o * in_f + i] * s.map_or(1.0, |s| s[o * in_f + i]);
            }
            y[r * out_f + o] = acc;
        }
    }
    y
}

/// A linear layer's test inputs: x, w `[out_f, in]`, then the bias and the scale if asked
/// (with their indices); `diff` lists the ones with a gradient (all but the scale).
struct LinearInputs {
    inputs: Vec<(Vec<f64>, Vec<usize>)>,
    diff: Vec<usize>,
    bias_at: Option<usize>,
    scale_at: Option<usize>,
}

fn linear_inputs(rng: &mut Rng, xs: &[usize], out_f: usize, with_bias: bool, scaled: bool) -> LinearInputs {
    let ws = vec![out_f, xs[xs.len() - 1]];
    let mut inputs = vec![(rng.normals(numel(xs)), xs.to_vec()), (rng.normals(numel(&ws)), ws.clone())];
    let mut diff = vec![0, 1];
    let bias_at = with_bias.then(|| {
        inputs.push((rng.normals(out_f), vec![out_f]));
        diff.push(inputs.len() - 1);
        inputs.len() - 1
    });
    let scale_at = scaled.then(|| {
        inputs.push((mask(rng, numel(&ws)), ws.clone()));
        inputs.len() - 1
    });
    LinearInputs { inputs, diff, bias_at, scale_at }
}

#[test]
fn linear_with_and_without_bias_and_scale() {
    let mut rng = Rng::new(13);
    let (in_f, out_f) = (7, 5);
    for (xs, with_bias, scaled) in [
        (vec![2, 3, in_f], true, false),
        (vec![2, 3, in_f], false, true),
        (vec![2, 3, in_f], true, true),
        (vec![4, in_f], false, false),
        (vec![in_f], true, false),
    ] {
        let LinearInputs { inputs, diff, bias_at, scale_at } = linear_inputs(&mut rng, &xs, out_f, with_bias, scaled);
        let mut want_shape = xs[..xs.len() - 1].to_vec();
        want_shape.push(out_f);
        check_op(
            &format!("linear x={xs:?} bias={with_bias} scaled={scaled}"),
            &inputs,
            &diff,
            &|t| {
                let y = ops::linear(&t[0], &t[1], bias_at.map(|i| &t[i]), scale_at.map(|i| &t[i]))?;
                assert_eq!(y.shape(), &want_shape[..]);
                Ok(y)
            },
            &|x| linear_ref(&x[0], in_f, &x[1], out_f, bias_at.map(|i| &x[i][..]), scale_at.map(|i| &x[i][..])),
            Tol::default(),
        );
    }
}

/// `linear_relu` (ReLU in the GEMM's epilogue) against the f64 reference, forward and
/// gradients (masked by the output), with and without bias and scale.
#[test]
fn linear_relu_matches_reference_and_gradients() {
    let mut rng = Rng::new(14);
    let (in_f, out_f) = (7, 5);
    for (xs, with_bias, scaled) in [(vec![2, 3, in_f], true, false), (vec![4, in_f], false, true), (vec![6, in_f], true, true)] {
        let LinearInputs { inputs, diff, bias_at, scale_at } = linear_inputs(&mut rng, &xs, out_f, with_bias, scaled);
        check_op(
            &format!("linear_relu x={xs:?} bias={with_bias} scaled={scaled}"),
            &inputs,
            &diff,
            &|t| ops::linear_relu(&t[0], &t[1], bias_at.map(|i| &t[i]), scale_at.map(|i| &t[i])),
            &|x| linear_ref(&x[0], in_f, &x[1], out_f, bias_at.map(|i| &x[i][..]), scale_at.map(|i| &x[i][..])).into_iter().map(|v| v.max(0.0)).collect(),
            Tol::default(),
        );
    }
}

/// The fused epilogue is bit-identical to the two ops, on every variant the tuner may pick
/// and the reference kernel: 150 x 140 outputs (one interior 128x128 tile, edge tiles in
/// both dims), K = 304 (long enough for both split-K factors, a multiple of 16 for the VEC4
/// forms at both slice depths).
#[test]
fn fused_relu_epilogue_is_bit_identical_on_every_kernel() {
    let g = gpu();
    let mut rng = Rng::new(15);
    let (m, k, n) = (150, 304, 140);
    let x = upload(&g, &round_f32(&rng.normals(m * k)), &[m, k]);
    let w = upload(&g, &round_f32(&rng.normals(n * k)), &[n, k]);
    let b = upload(&g, &round_f32(&rng.normals(n)), &[n]);
    let opts = MatmulOpts { trans_a: false, trans_b: true, b_scale: None };
    let two_ops = ops::relu(&ops::linear(&x, &w, Some(&b), None).unwrap()).unwrap().to_vec().unwrap();
    assert_eq!(ops::linear_relu(&x, &w, Some(&b), None).unwrap().to_vec().unwrap(), two_ops, "linear_relu (tuned)");
    assert!(two_ops.iter().any(|&v| v == 0.0) && two_ops.iter().any(|&v| v > 0.0));
    // (the cooperative-matrix kernel multiplies f16 operands: its own test below)
    for kernel in MatmulKernel::TUNED.into_iter().filter(|&k| k != MatmulKernel::Coop).chain([MatmulKernel::Reference]) {
        let plain = ops::matmul_bias_with_kernel(&x, &w, opts, Some(&b), false, kernel).unwrap().to_vec().unwrap();
        let fused = ops::matmul_bias_with_kernel(&x, &w, opts, Some(&b), true, kernel).unwrap().to_vec().unwrap();
        let want: Vec<f32> = plain.iter().map(|v| v.max(0.0)).collect();
        assert_eq!(fused, want, "{kernel:?}");
    }
    assert_canaries("fused relu");
}

/// `ops::matmul` (the plain entry point every module uses) against the f64 reference, forward
/// and gradients: 2-D, batched with a shared B (folded into M) and broadcast batches, sizes
/// not multiples of any tile (64, 128, K-slices of 8 / 16).
#[test]
fn plain_matmul_matches_reference_and_gradients() {
    let mut rng = Rng::new(17);
    for (ab, bb, m, k, n) in [
        (vec![], vec![], 67usize, 33usize, 45usize),
        (vec![3], vec![], 19, 21, 70),
        (vec![2, 1], vec![3], 5, 9, 130),
    ] {
        let sa = a_shape(&ab, m, k, false);
        let sb = b_shape(&bb, k, n, false);
        let inputs = vec![(rng.normals(numel(&sa)), sa.clone()), (rng.normals(numel(&sb)), sb.clone())];
        // dB of a broadcast B sums over the batch as well as M
        let kg = m.max(n) * numel(&broadcast_shape(&ab, &bb));
        let (sa2, sb2) = (sa.clone(), sb.clone());
        check_op(
            &format!("plain matmul {sa:?} x {sb:?}"),
            &inputs,
            &[0, 1],
            &|t| ops::matmul(&t[0], &t[1]),
            &|x| matmul_ref(&x[0], &sa2, false, &x[1], &sb2, false, None),
            Tol::sums(k, (k as f64).sqrt(), kg, (kg as f64).sqrt()),
        );
    }
}

fn shape_err(r: equimodal::Result<Tensor>) -> String {
    match r {
        Err(e @ Error::Shape { .. }) => e.to_string(),
        Err(e) => panic!("expected a shape error, got {e}"),
        Ok(t) => panic!("expected a shape error, got a tensor {:?}", t.shape()),
    }
}

#[test]
fn typed_errors_name_the_shapes() {
    let g = gpu();
    let a = Tensor::zeros(&g, &[2, 3, 4]).unwrap();
    let b = Tensor::zeros(&g, &[5, 6]).unwrap();
    let msg = shape_err(ops::matmul(&a, &b));
    assert!(msg.contains("[2, 3, 4]") && msg.contains("[5, 6]"), "{msg}");
    // transposes change which dim is K
    let bt = Tensor::zeros(&g, &[6, 4]).unwrap();
    assert!(ops::matmul_ex(&a, &bt, MatmulOpts { trans_b: true, ..Default::default() }).is_ok());
    let msg = shape_err(ops::matmul_ex(&a, &bt, MatmulOpts { trans_a: true, trans_b: true, b_scale: None }));
    assert!(msg.contains("[2, 3, 4]") && msg.contains("[6, 4]"), "{msg}");
    // batch dims that do not broadcast
    let b3 = Tensor::zeros(&g, &[3, 4, 2]).unwrap();
    let msg = shape_err(ops::matmul(&a, &b3));
    assert!(msg.contains("[2, 3, 4]") && msg.contains("[3, 4, 2]"), "{msg}");
    // 1-D operand
    let v = Tensor::zeros(&g, &[4]).unwrap();
    shape_err(ops::matmul(&a, &v));
    // scale of the wrong shape
    let b2 = Tensor::zeros(&g, &[4, 6]).unwrap();
    let s = Tensor::zeros(&g, &[6, 4]).unwrap();
    let msg = shape_err(ops::matmul_ex(&a, &b2, MatmulOpts { b_scale: Some(&s), ..Default::default() }));
    assert!(msg.contains("[6, 4]") && msg.contains("[4, 6]"), "{msg}");
    // linear: feature mismatch, bad bias, bad scale
    let x = Tensor::zeros(&g, &[2, 3, 7]).unwrap();
    let w = Tensor::zeros(&g, &[5, 6]).unwrap();
    let msg = shape_err(ops::linear(&x, &w, None, None));
    assert!(msg.contains("[2, 3, 7]") && msg.contains("[5, 6]"), "{msg}");
    let w = Tensor::zeros(&g, &[5, 7]).unwrap();
    let bad_bias = Tensor::zeros(&g, &[6]).unwrap();
    let msg = shape_err(ops::linear(&x, &w, Some(&bad_bias), None));
    assert!(msg.contains("[6]"), "{msg}");
    let bad_scale = Tensor::zeros(&g, &[7, 5]).unwrap();
    shape_err(ops::linear(&x, &w, None, Some(&bad_scale)));
    // dtype errors are typed too
    let u = Tensor::from_u32(&g, &[0; 20], &[4, 5]).unwrap();
    assert!(matches!(ops::matmul(&a, &u), Err(Error::DType { .. })));
}

/// The tiled matmul kernels with few workgroups per grid dimension (`with_workgroup_cap`):
/// column tiles, row tiles and batches are each split into several launches
/// (`ops::split_grid`, offsets x0 / y0 / z0 in the kernel's parameters).
#[test]
fn matmul_under_workgroup_cap() {
    with_workgroup_cap(3, || {
        let g = gpu();
        let mut rng = Rng::new(33);
        // Tile64: 3 column tiles, 4 row tiles (launches of 3 + 1), batch 5 (3 + 2);
        // Tile128: 2 x 2 tiles, batch 5 (3 + 2). K = 37 and no size a tile multiple.
        let (m, n, k) = (200, 150, 37);
        for (ta, tb) in [(false, false), (true, true)] {
            let sa = a_shape(&[5], m, k, ta);
            let sb = b_shape(&[5], k, n, tb);
            let a = round_f32(&rng.normals(numel(&sa)));
            let b = round_f32(&rng.normals(numel(&sb)));
            let want = matmul_ref(&a, &sa, ta, &b, &sb, tb, None);
            let (at, bt) = (upload(&g, &a, &sa), upload(&g, &b, &sb));
            let opts = MatmulOpts { trans_a: ta, trans_b: tb, b_scale: None };
            for kernel in [MatmulKernel::Tile64, TILE128, DEEP] {
                let got = ops::matmul_with_kernel(&at, &bt, opts, kernel).unwrap().to_vec().unwrap();
                // K = 37 products of N(0,1) values: f32 error ~ sqrt(K) * 2^-24 * |a||b|
                assert_close(&format!("capped {kernel:?} ta={ta} tb={tb}"), &got, &want, 1e-5, 1e-5 * (k as f64).sqrt());
            }
            assert_canaries("capped matmul");
        }
    });
    // forward and both gradients (finite differences): 140 x 70 x 9 with Tile64 is 2 x 3
    // tiles, launched as 2 x 2 and 2 x 1 with a cap of 2
    with_workgroup_cap(2, || {
        let mut rng = Rng::new(34);
        let (sa, sb) = (vec![140, 9], vec![9, 70]);
        let inputs = vec![(rng.normals(numel(&sa)), sa.clone()), (rng.normals(numel(&sb)), sb.clone())];
        check_op(
            "capped matmul 140x70x9",
            &inputs,
            &[0, 1],
            &|t| ops::matmul(&t[0], &t[1]),
            &|x| matmul_ref(&x[0], &sa, false, &x[1], &sb, false, None),
            Tol::sums(9, 3.0, 140, 140f64.sqrt()),
        );
    });
}

/// Split-K (both factors the tuner may try, and factors that leave fewer non-empty splits)
/// against the CPU f64 reference: every transposition, with and without B scale, with bias
/// (and the fused ReLU after it in the reduction),
/// K not a multiple of the 16-deep slice, M and N not multiples of the 64 tile.
#[test]
fn split_k_matches_the_cpu_with_every_transposition_scale_and_bias() {
    let g = gpu();
    let mut rng = Rng::new(41);
    for (m, n, k) in [(70, 33, 200), (5, 130, 1000), (64, 64, 512), (1, 1, 17)] {
        for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
            let scaled = ta != tb;
            let (sa, sb) = (a_shape(&[], m, k, ta), b_shape(&[], k, n, tb));
            let a = round_f32(&rng.normals(numel(&sa)));
            let b = round_f32(&rng.normals(numel(&sb)));
            let s = scaled.then(|| mask(&mut rng, numel(&sb)));
            let bias = round_f32(&rng.normals(n));
            let mut want = matmul_ref(&a, &sa, ta, &b, &sb, tb, s.as_deref());
            for (i, w) in want.iter_mut().enumerate() {
                *w += bias[i % n];
            }
            let (at, bt, biast) = (upload(&g, &a, &sa), upload(&g, &b, &sb), upload(&g, &bias, &[n]));
            let st = s.as_ref().map(|s| upload(&g, s, &sb));
            let opts = MatmulOpts { trans_a: ta, trans_b: tb, b_scale: st.as_ref() };
            for splits in [4, 16, 3, 1000] {
                let relu = splits == 3;
                let got = ops::matmul_bias_with_kernel(&at, &bt, opts, Some(&biast), relu, MatmulKernel::SplitK(splits)).unwrap().to_vec().unwrap();
                let what = format!("split-K {splits}: {sa:?} x {sb:?} ta={ta} tb={tb} scaled={scaled} relu={relu}");
                let want: Vec<f64> = want.iter().map(|&v| if relu { v.max(0.0) } else { v }).collect();
                assert_close(&what, &got, &want, 1e-5, 1e-6 * k as f64);
                assert_canaries(&what);
            }
        }
    }
}

/// Split-K launches split over grid z at the workgroup cap, and its reduction takes the
/// folded grid; a batched product is an error, never a wrong answer.
#[test]
fn split_k_under_workgroup_cap_and_batched_products() {
    with_workgroup_cap(3, || {
        let g = gpu();
        let mut rng = Rng::new(42);
        // K = 700 is 44 slices: 16 splits of 3 slices leave 15 non-empty ones, launched over
        // z as 5 launches of 3; the 600 outputs are reduced on a folded grid of 10 workgroups
        let (m, n, k) = (20, 30, 700);
        let a = round_f32(&rng.normals(m * k));
        let b = round_f32(&rng.normals(k * n));
        let want = matmul_ref(&a, &[m, k], false, &b, &[k, n], false, None);
        let (at, bt) = (upload(&g, &a, &[m, k]), upload(&g, &b, &[k, n]));
        let got = ops::matmul_with_kernel(&at, &bt, MatmulOpts::default(), MatmulKernel::SplitK(16)).unwrap().to_vec().unwrap();
        assert_close("capped split-K", &got, &want, 1e-5, 1e-6 * k as f64);
        assert_canaries("capped split-K");
    });
    let g = gpu();
    let (a, b) = (Tensor::zeros(&g, &[2, 3, 40]).unwrap(), Tensor::zeros(&g, &[2, 40, 5]).unwrap());
    let e = ops::matmul_with_kernel(&a, &b, MatmulOpts::default(), MatmulKernel::SplitK(4)).unwrap_err();
    assert!(e.to_string().contains("batch 1 only"), "{e}");
}

/// The 128x128 tile's VEC4 form (unguarded vec4 loads, and vec4 stores where N is a multiple
/// of 4, on interior tiles; the guarded form on the edge strips) against the CPU for every transposition, with bias and ReLU, batched
/// and folded; bit-identical to the guarded tile (same order of accumulation); shapes with
/// and without edges; under the workgroup cap; an error where it does not apply.
#[test]
fn vec4_interior_form_matches_the_cpu_and_the_guarded_tile() {
    let g = gpu();
    let mut rng = Rng::new(51);
    // (A batch, B batch, M, N, K): edges in both dims; no edges; batched; B shared (folded)
    let cases: [(&[usize], &[usize], usize, usize, usize); 4] =
        [(&[], &[], 300, 260, 40), (&[], &[], 256, 128, 16), (&[2], &[2], 136, 132, 24), (&[3], &[], 100, 140, 8)];
    for (ab, bb, m, n, k) in cases {
        for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
            if !bb.is_empty() && ta {
                continue; // a batched A stored transposed is not folded; covered by the first cases
            }
            let (sa, sb) = (a_shape(ab, m, k, ta), b_shape(bb, k, n, tb));
            let a = round_f32(&rng.normals(numel(&sa)));
            let b = round_f32(&rng.normals(numel(&sb)));
            let bias = round_f32(&rng.normals(n));
            let (at, bt, biast) = (upload(&g, &a, &sa), upload(&g, &b, &sb), upload(&g, &bias, &[n]));
            let opts = MatmulOpts { trans_a: ta, trans_b: tb, b_scale: None };
            let relu = ta;
            let want: Vec<f64> = matmul_ref(&a, &sa, ta, &b, &sb, tb, None)
                .iter()
                .enumerate()
                .map(|(i, v)| v + bias[i % n])
                .map(|v| if relu { v.max(0.0) } else { v })
                .collect();
            let what = format!("vec4 {sa:?} x {sb:?} ta={ta} tb={tb} relu={relu}");
            let got = ops::matmul_bias_with_kernel(&at, &bt, opts, Some(&biast), relu, VEC4).unwrap().to_vec().unwrap();
            assert_close(&what, &got, &want, 1e-5, 1e-6 * k as f64);
            let guarded = ops::matmul_bias_with_kernel(&at, &bt, opts, Some(&biast), relu, TILE128).unwrap().to_vec().unwrap();
            assert_eq!(got, guarded, "{what}: vs the guarded tile");
            assert_canaries(&what);
        }
    }
    // at a cap of 3 workgroups per dimension: 4 x 4 tiles, the 3 x 3 interior in one launch,
    // the strips (1 x 4 and 3 x 1) beside it, batch 5 split over z as 3 + 2
    with_workgroup_cap(3, || {
        let g = gpu();
        let (m, n, k) = (400, 392, 16);
        let (sa, sb) = (vec![5, m, k], vec![5, k, n]);
        let a = round_f32(&rng.normals(numel(&sa)));
        let b = round_f32(&rng.normals(numel(&sb)));
        let want = matmul_ref(&a, &sa, false, &b, &sb, false, None);
        let (at, bt) = (upload(&g, &a, &sa), upload(&g, &b, &sb));
        let got = ops::matmul_with_kernel(&at, &bt, MatmulOpts::default(), VEC4).unwrap().to_vec().unwrap();
        assert_close("capped vec4", &got, &want, 1e-5, 1e-6 * k as f64);
        assert_canaries("capped vec4");
    });
    // N not a multiple of 4 (B transposed, so its rows are K long): scalar stores, the same
    // bits; every case above has N a multiple of 4, where the interior tiles store vec4s
    let (m, n, k) = (260, 130, 24);
    let a = round_f32(&rng.normals(m * k));
    let b = round_f32(&rng.normals(n * k));
    let bias = round_f32(&rng.normals(n));
    let (at, bt, biast) = (upload(&g, &a, &[m, k]), upload(&g, &b, &[n, k]), upload(&g, &bias, &[n]));
    let opts = MatmulOpts { trans_a: false, trans_b: true, b_scale: None };
    let want: Vec<f64> = matmul_ref(&a, &[m, k], false, &b, &[n, k], true, None).iter().enumerate().map(|(i, v)| (v + bias[i % n]).max(0.0)).collect();
    let got = ops::matmul_bias_with_kernel(&at, &bt, opts, Some(&biast), true, VEC4).unwrap().to_vec().unwrap();
    assert_close("vec4, N = 130", &got, &want, 1e-5, 1e-6 * k as f64);
    assert_eq!(got, ops::matmul_bias_with_kernel(&at, &bt, opts, Some(&biast), true, TILE128).unwrap().to_vec().unwrap(), "vec4, N = 130: vs the guarded tile");
    assert_canaries("vec4, N = 130");
    // K not a multiple of 8, or a scaled operand: not this form's job
    let (a, b) = (Tensor::zeros(&g, &[130, 42]).unwrap(), Tensor::zeros(&g, &[42, 130]).unwrap());
    let e = ops::matmul_with_kernel(&a, &b, MatmulOpts::default(), VEC4).unwrap_err();
    assert!(e.to_string().contains("vec4 form"), "{e}");
}

/// K-slices of 16 on the 128x128 tile (`k16`, guarded and VEC4) against the CPU for every
/// transposition, with bias and ReLU and a scaled B, K shorter than a slice, one slice, one
/// and a half, several; bit-identical to slices of 8 (every output sums its K products in the
/// same order: the slice depth only moves the barriers); batched under the workgroup cap; an
/// error where the VEC4 form does not apply.
#[test]
fn deep_k_slices_give_the_bits_of_slices_of_8() {
    let g = gpu();
    let mut rng = Rng::new(81);
    let (m, n) = (136, 260); // an interior tile and edges in both dims; rows of 4-float multiples
    for k in [5, 16, 24, 48] {
        for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
            let (sa, sb) = (a_shape(&[], m, k, ta), b_shape(&[], k, n, tb));
            let a = round_f32(&rng.normals(numel(&sa)));
            let b = round_f32(&rng.normals(numel(&sb)));
            let bias = round_f32(&rng.normals(n));
            let scale = (k == 24).then(|| mask(&mut rng, numel(&sb)));
            let (at, bt, biast) = (upload(&g, &a, &sa), upload(&g, &b, &sb), upload(&g, &bias, &[n]));
            let st = scale.as_ref().map(|s| upload(&g, s, &sb));
            let opts = MatmulOpts { trans_a: ta, trans_b: tb, b_scale: st.as_ref() };
            let relu = tb;
            let want: Vec<f64> = matmul_ref(&a, &sa, ta, &b, &sb, tb, scale.as_deref())
                .iter()
                .enumerate()
                .map(|(i, v)| v + bias[i % n])
                .map(|v| if relu { v.max(0.0) } else { v })
                .collect();
            let run = |kernel| ops::matmul_bias_with_kernel(&at, &bt, opts, Some(&biast), relu, kernel).unwrap().to_vec().unwrap();
            let what = format!("k16 {sa:?} x {sb:?} ta={ta} tb={tb} relu={relu} scaled={}", scale.is_some());
            let deep = run(DEEP);
            assert_close(&what, &deep, &want, 1e-5, 1e-6 * k as f64);
            assert_eq!(deep, run(TILE128), "{what}: vs slices of 8");
            if k % 16 == 0 && scale.is_none() {
                assert_eq!(run(VEC4_DEEP), deep, "{what}: the vec4 form");
            }
            assert_canaries(&what);
        }
    }
    // batch 5 of 2 x 2 tiles, launched over x, y and z in pieces of at most 3
    with_workgroup_cap(3, || {
        let g = gpu();
        let (m, n, k) = (200, 264, 32);
        let (sa, sb) = (vec![5, m, k], vec![5, k, n]);
        let a = round_f32(&rng.normals(numel(&sa)));
        let b = round_f32(&rng.normals(numel(&sb)));
        let want = matmul_ref(&a, &sa, false, &b, &sb, false, None);
        let (at, bt) = (upload(&g, &a, &sa), upload(&g, &b, &sb));
        let run = |kernel| ops::matmul_with_kernel(&at, &bt, MatmulOpts::default(), kernel).unwrap().to_vec().unwrap();
        let deep = run(VEC4_DEEP);
        assert_close("capped k16", &deep, &want, 1e-5, 1e-6 * k as f64);
        assert_eq!(deep, run(TILE128), "capped k16 vs slices of 8");
        assert_canaries("capped k16");
    });
    // the VEC4 form at slices of 16 needs K a multiple of 16
    let (a, b) = (Tensor::zeros(&g, &[132, 40]).unwrap(), Tensor::zeros(&g, &[40, 132]).unwrap());
    let e = ops::matmul_with_kernel(&a, &b, MatmulOpts::default(), VEC4_DEEP).unwrap_err();
    assert!(e.to_string().contains("K a multiple of 16"), "{e}");
    assert!(ops::matmul_with_kernel(&a, &b, MatmulOpts::default(), VEC4).is_ok());
    // the depth is a constant of the pipeline (were it dropped, the bit-identity above would
    // hold trivially): slices of 16 compile a pipeline of their own (on a context of this
    // test alone, so no other test's pipelines are counted)
    let g = equimodal::Gpu::new(test_options()).unwrap();
    let (a, b) = (Tensor::zeros(&g, &[132, 40]).unwrap(), Tensor::zeros(&g, &[40, 132]).unwrap());
    let run = |kernel| ops::matmul_with_kernel(&a, &b, MatmulOpts::default(), kernel).unwrap().to_vec().unwrap();
    run(TILE128);
    run(TILE128); // (the second run may still compile the buffer pool's own kernels)
    let before = g.pipelines_compiled();
    run(TILE128);
    assert_eq!(g.pipelines_compiled(), before, "a second run compiles nothing");
    run(DEEP);
    assert_eq!(g.pipelines_compiled(), before + 1, "slices of 16 run their own pipeline");
}

/// The grouped tile order (bands of `MATMUL_GROUP_M` tile rows) on grids with a short last
/// band: bit-identical to row by row (a tile's arithmetic does not depend on when it runs),
/// right against the CPU, no write outside the output; also inside launches cut at a cap
/// of 3 workgroups per dimension, where each launch has its own bands.
#[test]
fn grouped_tile_order_gives_the_same_bits_on_every_tile() {
    let mut rng = Rng::new(71);
    let bands = equimodal::ops::MATMUL_GROUP_M as usize;
    // row tiles: one full band and a band of 2 rows; 3 column tiles (the last one partial)
    let (m, n) = (128 * (bands + 1) + 72, 300); // rows of 4-float multiples: the vec4 form applies
    let run = |k: usize, ta: bool, tb: bool, rng: &mut Rng, pairs: &[(MatmulKernel, MatmulKernel)]| {
        let g = gpu(); // the capped context inside with_workgroup_cap
        let (sa, sb) = (a_shape(&[], m, k, ta), b_shape(&[], k, n, tb));
        let a = round_f32(&rng.normals(numel(&sa)));
        let b = round_f32(&rng.normals(numel(&sb)));
        let want = matmul_ref(&a, &sa, ta, &b, &sb, tb, None);
        let (at, bt) = (upload(&g, &a, &sa), upload(&g, &b, &sb));
        let opts = MatmulOpts { trans_a: ta, trans_b: tb, b_scale: None };
        for &(grouped, plain) in pairs {
            let what = format!("{grouped:?} {sa:?} x {sb:?} ta={ta} tb={tb}");
            let got = ops::matmul_with_kernel(&at, &bt, opts, grouped).unwrap().to_vec().unwrap();
            assert_close(&what, &got, &want, 1e-5, 1e-6 * k as f64);
            let rows = ops::matmul_with_kernel(&at, &bt, opts, plain).unwrap().to_vec().unwrap();
            assert_eq!(got, rows, "{what}: vs {plain:?}");
            assert_canaries(&what);
        }
    };
    let grouped = |t: MatmulKernel| match t {
        MatmulKernel::Tile128(t) => MatmulKernel::Tile128(Tile128 { grouped: true, ..t }),
        _ => unreachable!(),
    };
    let forms = [TILE128, VEC4, DEEP, VEC4_DEEP].map(|t| (grouped(t), t));
    let guarded = [forms[0], forms[2]];
    for (ta, tb) in [(false, false), (true, true)] {
        run(12, ta, tb, &mut rng, &guarded); // K not a multiple of the slice: guarded only
        run(16, ta, tb, &mut rng, &forms);
    }
    with_workgroup_cap(3, || run(16, false, true, &mut Rng::new(72), &forms));
}

/// Operands of one or two floats on every kernel (the 128x128 tile declares its operands as
/// vec4 arrays too, for its VEC4 form: a launch must still bind them validly), against the
/// CPU, on a context as release runs open it: without the test canary, whose slack beyond
/// each tensor lengthened the bindings enough to hide a short one from the whole suite.
#[test]
fn tiny_operands_on_every_kernel() {
    let mut o = test_options();
    o.checked_kernels = false;
    o.pool_canary = false; // the canary's slack would lengthen the bindings
    let g = equimodal::Gpu::new(o).unwrap();
    let mut rng = Rng::new(61);
    for (m, k, n) in [(1, 1, 1), (1, 2, 1), (2, 1, 3), (4, 1, 1)] {
        let a = round_f32(&rng.normals(m * k));
        let b = round_f32(&rng.normals(k * n));
        let want = matmul_ref(&a, &[m, k], false, &b, &[k, n], false, None);
        let (at, bt) = (upload(&g, &a, &[m, k]), upload(&g, &b, &[k, n]));
        for kernel in [MatmulKernel::Auto, TILE128, DEEP, MatmulKernel::Tile64, MatmulKernel::SplitK(4), MatmulKernel::Reference] {
            let got = ops::matmul_with_kernel(&at, &bt, MatmulOpts::default(), kernel).unwrap().to_vec().unwrap();
            assert_close(&format!("{kernel:?} {m}x{k}x{n}"), &got, &want, 1e-6, 1e-7);
        }
    }
}

/// f16 operands (mixed precision): A, B or both stored as f16, widened exactly as they are
/// loaded, products and result f32. On every kernel and each transposition, with bias: bit
/// for bit the f32 product of the f16-rounded values (the same kernel on the same numbers),
/// and so within f32 error of the f64 reference on those values; the gradients through the
/// cast reach the f32 tensors, equal to the f32 product's at the rounded values; the tuner
/// tunes f16 buckets of their own; an f16 bias is refused.
#[test]
fn f16_operands_give_the_f32_product_of_their_values() {
    use equimodal::DType;
    let g = gpu();
    let mut rng = Rng::new(111);
    let (m, n, k) = (140, 70, 45);
    let cast = |t: &Tensor, d: DType| ops::cast(t, d).unwrap();
    let kernels = [MatmulKernel::Tile64, TILE128, DEEP, MatmulKernel::SplitK(4), MatmulKernel::Reference, MatmulKernel::Auto];
    for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
        let (sa, sb) = (a_shape(&[], m, k, ta), b_shape(&[], k, n, tb));
        let a32 = upload(&g, &rng.normals(numel(&sa)), &sa);
        let b32 = upload(&g, &rng.normals(numel(&sb)), &sb);
        let bias = upload(&g, &round_f32(&rng.normals(n)), &[n]);
        let (a16, b16) = (cast(&a32, DType::F16), cast(&b32, DType::F16));
        // the values the kernels see, as f32 tensors
        let (ar, br) = (cast(&a16, DType::F32), cast(&b16, DType::F32));
        let av: Vec<f64> = ar.to_vec().unwrap().iter().map(|&v| v as f64).collect();
        let bv: Vec<f64> = br.to_vec().unwrap().iter().map(|&v| v as f64).collect();
        let bias_v = bias.to_vec().unwrap();
        let want: Vec<f64> = matmul_ref(&av, &sa, ta, &bv, &sb, tb, None).iter().enumerate().map(|(i, v)| v + bias_v[i % n] as f64).collect();
        let opts = MatmulOpts { trans_a: ta, trans_b: tb, b_scale: None };
        // every kernel on the plain and the doubly transposed product, two on the others
        // (each form is a pipeline of its own to compile)
        let kernels = if ta == tb { &kernels[..] } else { &kernels[1..2] };
        for (x, y, which) in [(&a16, &br, "A"), (&ar, &b16, "B"), (&a16, &b16, "A and B")] {
            for &kernel in kernels {
                let what = format!("f16 {which} {kernel:?} ta={ta} tb={tb}");
                let got = ops::matmul_bias_with_kernel(x, y, opts, Some(&bias), false, kernel).unwrap().to_vec().unwrap();
                let same = ops::matmul_bias_with_kernel(&ar, &br, opts, Some(&bias), false, kernel).unwrap().to_vec().unwrap();
                assert_eq!(got, same, "{what}: vs f32 operands of the same values");
                assert_close(&what, &got, &want, 1e-5, 1e-6 * k as f64);
            }
        }
        assert_canaries("f16 operands");
    }
    let tuned: Vec<String> = g.tune_table().keys().filter(|b| b.contains("half=")).cloned().collect();
    assert!(tuned.iter().any(|b| b.ends_with("half=AB")), "no f16 bucket tuned: {tuned:?}");
    // gradients: through the cast to the f32 tensor (A), and to B from the f16 A
    let (a32, b32) = (upload(&g, &rng.normals(m * k), &[m, k]), upload(&g, &rng.normals(k * n), &[k, n]));
    let seed = upload(&g, &rng.uniforms(m * n, -1.0, 1.0), &[m, n]);
    let grads = |half: bool| {
        let (a, b) = (a32.detach().requires_grad(), b32.detach().requires_grad());
        let a_in = if half { cast(&a, DType::F16) } else { cast(&cast(&a, DType::F16), DType::F32).detach() };
        let a_in = if half { a_in } else { a_in.requires_grad() };
        let out = ops::matmul(&a_in, &b).unwrap();
        let mut gr = equimodal::Gradients::new();
        out.backward_with(seed.clone(), &mut gr).unwrap();
        let da = gr.get(if half { &a } else { &a_in }).expect("dA").to_vec().unwrap();
        (da, gr.get(&b).expect("dB").to_vec().unwrap())
    };
    let (mixed, plain) = (grads(true), grads(false));
    assert_eq!(mixed.0, plain.0, "dA through the cast");
    assert_eq!(mixed.1, plain.1, "dB from the f16 A");
    // an f16 bias: a dtype error naming it
    let b16 = cast(&upload(&g, &rng.normals(n), &[n]), DType::F16);
    let e = ops::linear(&a32, &cast(&b32, DType::F16).reshape(&[n, k]).unwrap(), Some(&b16), None).unwrap_err();
    assert!(matches!(e, Error::DType { .. }), "{e}");
}

/// The cooperative-matrix kernel (tensor cores) against the f64 reference on f16 values, for
/// each transposition, with bias and ReLU, on shapes that fill no 64x64 tile, batched; one
/// operand f32 and scaled per tensor (the backward's form); refused on two f32 operands. On
/// tensor cores where the adapter has them (the GPU machine,
/// `scripts/gpu_bench.sh`), else emulated where it has shader f16 (lavapipe 25: the staging,
/// indexing and store); skipped, with the reason printed, where it has neither.
#[test]
fn coop_matmul_matches_the_reference() {
    use equimodal::DType;
    let g = gpu();
    let Some(form) = equimodal::gpu::Coop::on(&g.capabilities()) else {
        println!("skipped: {} has neither cooperative matrices nor shader f16", g.info().name);
        return;
    };
    println!("cooperative-matrix matmul: {form:?}");
    let mut rng = Rng::new(121);
    let half = |t: &Tensor| ops::cast(t, DType::F16).unwrap();
    for (ab, m, n, k) in [(vec![], 130usize, 70usize, 45usize), (vec![3], 64, 64, 96)] {
        for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
            let (sa, sb) = (a_shape(&ab, m, k, ta), b_shape(&ab, k, n, tb));
            let (a, b) = (half(&upload(&g, &rng.normals(numel(&sa)), &sa)), half(&upload(&g, &rng.normals(numel(&sb)), &sb)));
            let bias = upload(&g, &round_f32(&rng.normals(n)), &[n]);
            let host = |t: &Tensor| t.to_vec().unwrap().iter().map(|&v| v as f64).collect::<Vec<f64>>();
            let (av, bv, biasv) = (host(&a), host(&b), host(&bias));
            let want: Vec<f64> = matmul_ref(&av, &sa, ta, &bv, &sb, tb, None).iter().enumerate().map(|(i, v)| (v + biasv[i % n]).max(0.0)).collect();
            let opts = MatmulOpts { trans_a: ta, trans_b: tb, b_scale: None };
            let got = ops::matmul_bias_with_kernel(&a, &b, opts, Some(&bias), true, MatmulKernel::Coop).unwrap().to_vec().unwrap();
            // f16 values multiplied exactly, summed in f32 in the hardware's order
            assert_close(&format!("coop {sa:?} x {sb:?} ta={ta} tb={tb}"), &got, &want, 1e-5, 1e-6 * k as f64);
            assert_canaries("coop");
        }
    }
    let f = upload(&g, &rng.normals(64 * 64), &[64, 64]);
    assert!(ops::matmul_with_kernel(&f, &f, MatmulOpts::default(), MatmulKernel::Coop).is_err());
    // one operand f32 (a gradient in a linear layer's backward), staged as f16 after its
    // per-tensor scale: each term carries at most f16's half-ulp on that operand, 2^-12
    // relative, so the bound is 2^-11 of the sum of the terms' magnitudes, at the gradient's
    // scale and a million times smaller (f16 subnormals, unscaled)
    let (m, n, k) = (70usize, 130usize, 45usize);
    // every transposition of the f32 operand's product (a linear layer's dA and dB, and
    // matmul_ex with either operand transposed under mixed precision)
    for (f32_a, ta, tb) in [(true, false, true), (false, true, false), (true, false, false), (true, true, true), (false, false, false), (false, false, true)] {
        for tiny in [1.0, 1e-6] {
            let (sa, sb) = (a_shape(&[], m, k, ta), b_shape(&[], k, n, tb));
            let av: Vec<f64> = rng.normals(numel(&sa)).iter().map(|v| v * if f32_a { tiny } else { 1.0 }).collect();
            let bv: Vec<f64> = rng.normals(numel(&sb)).iter().map(|v| v * if f32_a { 1.0 } else { tiny }).collect();
            let (a32, b32) = (upload(&g, &av, &sa), upload(&g, &bv, &sb));
            let (a, b) = if f32_a { (a32, half(&b32)) } else { (half(&a32), b32) };
            let host = |t: &Tensor| ops::cast(t, DType::F32).unwrap().to_vec().unwrap().iter().map(|&v| v as f64).collect::<Vec<f64>>();
            let (ah, bh) = (host(&a), host(&b));
            let want = matmul_ref(&ah, &sa, ta, &bh, &sb, tb, None);
            let abs = |v: &[f64]| v.iter().map(|x| x.abs()).collect::<Vec<f64>>();
            let mag = matmul_ref(&abs(&ah), &sa, ta, &abs(&bh), &sb, tb, None);
            let opts = MatmulOpts { trans_a: ta, trans_b: tb, b_scale: None };
            let got = ops::matmul_with_kernel(&a, &b, opts, MatmulKernel::Coop).unwrap().to_vec().unwrap();
            for i in 0..want.len() {
                let err = (got[i] as f64 - want[i]).abs();
                assert!(err <= mag[i] * 2f64.powi(-11), "coop f32 {} x{tiny:e}: [{i}] got {}, want {}, err {err:e}", if f32_a { "A" } else { "B" }, got[i], want[i]);
            }
        }
    }
}

/// The backward of a linear layer and of a matmul on the cooperative-matrix kernels
/// (`ops::prefer_coop`; emulated where the adapter has no tensor cores) takes max |dy|, the
/// per-tensor scale of dy's f16 staging, once for both of its products: the dispatches of a
/// backward with both operands tracked are those of the two single-operand backwards less
/// those of one max. The gradients are those of the f32-arithmetic tiles to f16 staging precision.
#[test]
fn a_backward_on_tensor_cores_takes_dy_max_once_for_both_products() {
    use equimodal::DType;
    let mut o = test_options();
    o.pool_canary = false; // its fills of every new block are dispatches too
    let g = equimodal::Gpu::new(o).unwrap();
    if equimodal::gpu::Coop::on(&g.capabilities()).is_none() {
        println!("skipped: {} has neither cooperative matrices nor shader f16", g.info().name);
        return;
    }
    let mut rng = Rng::new(901);
    let half = |t: Tensor| ops::cast(&t, DType::F16).unwrap();
    let x = half(upload(&g, &rng.uniforms(3 * 7 * 24, -1.0, 1.0), &[3, 7, 24]));
    let w = half(upload(&g, &rng.uniforms(40 * 24, -1.0, 1.0), &[40, 24]));
    let seed = upload(&g, &rng.uniforms(3 * 7 * 40, -1.0, 1.0), &[3, 7, 40]);
    type Op = fn(&Tensor, &Tensor) -> equimodal::Result<Tensor>;
    let linear: Op = |x, w| ops::linear(x, w, None, None);
    let matmul: Op = |x, w| ops::matmul_ex(x, w, MatmulOpts { trans_b: true, ..Default::default() });
    for (name, op) in [("linear", linear), ("matmul", matmul)] {
        // (dispatches of the backward, the gradients) with x and / or w tracked
        let run = |coop: bool, tx: bool, tw: bool| {
            let _c = ops::prefer_coop(coop, coop);
            let track = |t: &Tensor, on: bool| if on { t.detach().requires_grad() } else { t.detach() };
            let (xt, wt) = (track(&x, tx), track(&w, tw));
            let y = op(&xt, &wt).unwrap();
            let before = g.counters().1;
            let mut grads = equimodal::Gradients::new();
            y.backward_with(seed.clone(), &mut grads).unwrap();
            let n = g.counters().1 - before;
            let get = |t: &Tensor| grads.get(t).map(|d| d.to_vec().unwrap());
            (n, get(&xt), get(&wt))
        };
        let (both, dx, dw) = run(true, true, true);
        let (only_x, only_w) = (run(true, true, false).0, run(true, false, true).0);
        let before = g.counters().1;
        ops::abs_max_bits(&seed).unwrap();
        let amax = g.counters().1 - before;
        assert_eq!(both, only_x + only_w - amax, "{name}: {both} dispatches with both operands tracked, {only_x} + {only_w} with one, {amax} for max |dy|");
        // the same gradients as the tiles', to dy's f16 rounding (2^-12 relative per term,
        // 24 or 21 terms of unit size: within 2^-12 * sqrt(24) * 2 of the result)
        let (_, tx_, tw_) = run(false, true, true);
        for (what, a, b) in [("dx", dx, tx_), ("dw", dw, tw_)] {
            let (a, b) = (a.unwrap(), b.unwrap());
            let worst = a.iter().zip(&b).map(|(u, v)| (u - v).abs()).fold(0.0f32, f32::max);
            assert!(worst < 3e-3, "{name} {what}: coop and tiles differ by {worst}");
        }
    }
}
