//! Fused attention: forward against a naive f64 softmax-attention reference, gradients with
//! respect to q, k and v against central finite differences of that reference. Shapes are
//! chosen not to be multiples of the tile sizes (forward 32 rows × 64/32/16 keys, backward
//! 32/16 rows and keys) and to cross several tiles in every pass.
use crate::common;
use common::*;
use equimodal::ops;
use equimodal::{Error, Tensor};

/// Naive attention in f64: o[b,h,i] = sum_j softmax_j(q_i·k_j·scale, padded keys dropped) v_j.
/// A row with every key padded gives zeros.
fn attention_ref(q: &[f64], k: &[f64], v: &[f64], mask: Option<&[f64]>, dims: (usize, usize, usize, usize, usize), scale: f64) -> Vec<f64> {
    let (b, h, l, s, dh) = dims;
    let mut o = vec![0.0; b * h * l * dh];
    for bi in 0..b {
        for hi in 0..h {
            let bh = bi * h + hi;
            for i in 0..l {
                let qi = &q[(bh * l + i) * dh..][..dh];
                let mut sc: Vec<Option<f64>> = Vec::with_capacity(s);
                for j in 0..s {
                    let padded = mask.is_some_and(|m| m[bi * s + j] > 0.5);
                    if padded {
                        sc.push(None);
                    } else {
                        let kj = &k[(bh * s + j) * dh..][..dh];
                        sc.push(Some(qi.iter().zip(kj).map(|(a, b)| a * b).sum::<f64>() * scale));
                    }
                }
                let m = sc.iter().flatten().fold(f64::NEG_INFINITY, |a, &b| a.max(b));
                if m == f64::NEG_INFINITY {
                    continue;
                }
                let e: Vec<f64> = sc.iter().map(|x| x.map_or(0.0, |x| (x - m).exp())).collect();
                let z: f64 = e.iter().sum();
                let oi = &mut o[(bh * l + i) * dh..][..dh];
                for (j, &ej) in e.iter().enumerate() {
                    let vj = &v[(bh * s + j) * dh..][..dh];
                    for (od, vd) in oi.iter_mut().zip(vj) {
                        *od += ej / z * vd;
                    }
                }
            }
        }
    }
    o
}

/// Check forward and the gradients of the inputs in `diff` (0 q, 1 k, 2 v) for one shape.
fn check_attention(name: &str, dims: (usize, usize, usize, usize, usize), mask: Option<Vec<f64>>, diff: &[usize], seed: u64) {
    let (b, h, l, s, dh) = dims;
    let mut rng = Rng::new(seed);
    let scale = 1.0 / (dh as f64).sqrt();
    let mut inputs = vec![
        (rng.normals(b * h * l * dh), vec![b, h, l, dh]),
        (rng.normals(b * h * s * dh), vec![b, h, s, dh]),
        (rng.normals(b * h * s * dh), vec![b, h, s, dh]),
    ];
    let has_mask = mask.is_some();
    if let Some(m) = mask {
        inputs.push((m, vec![b, s]));
    }
    check_op(
        name,
        &inputs,
        diff,
        &|t| ops::attention(&t[0], &t[1], &t[2], t.get(3), scale as f32),
        &|xs| attention_ref(&xs[0], &xs[1], &xs[2], if has_mask { Some(&xs[3][..]) } else { None }, dims, scale as f32 as f64),
        // scores sum Dh products of N(0,1) values (scale sqrt(Dh), times 1/sqrt(Dh)); outputs
        // and gradients are softmax-weighted sums over S keys (and, for dQ / dK, over Dh)
        Tol::sums(s.max(dh), 1.0, s.max(l) * dh, 1.0),
    );
}

#[test]
fn small_shapes_forward_and_gradients() {
    check_attention("attn B2 H3 L5 S7 Dh4", (2, 3, 5, 7, 4), None, &[0, 1, 2], 1);
    check_attention("attn B1 H1 L1 S1 Dh1", (1, 1, 1, 1, 1), None, &[0, 1, 2], 2);
    check_attention("attn B1 H1 L1 S1 Dh3", (1, 1, 1, 1, 3), None, &[0, 1, 2], 3);
}

#[test]
fn several_tiles_forward_and_gradients() {
    // Dh 16 (Dh <= 32 kernels): 2 forward row blocks, 2 dK/dV key blocks and query tiles, 2 dQ key tiles
    check_attention("attn L37 S37 Dh16", (1, 2, 37, 37, 16), None, &[0, 1, 2], 4);
    // S 75 > 64: several forward key tiles too
    check_attention("attn L37 S75 Dh16", (1, 1, 37, 75, 16), None, &[0, 1, 2], 5);
}

#[test]
fn cross_attention_l_ne_s() {
    check_attention("attn L9 S3 Dh5", (2, 2, 9, 3, 5), None, &[0, 1, 2], 6);
    check_attention("attn L3 S41 Dh8", (1, 2, 3, 41, 8), None, &[0, 1, 2], 7);
    // 270 query rows: the backward's row sums (attn_bwd_delta) over more than one workgroup
    check_attention("attn B3 H2 L45 S20 Dh8", (3, 2, 45, 20, 8), None, &[0, 1, 2], 11);
    // only some inputs tracked: exercises the dq-only and dkv-only backward paths
    check_attention("attn q only", (1, 2, 6, 11, 8), None, &[0], 8);
    check_attention("attn k only", (1, 2, 6, 11, 8), None, &[1], 9);
}

#[test]
fn key_padding_mask_and_fully_padded_rows() {
    let (b, s) = (2, 7);
    let mut m = vec![0.0; b * s];
    m[2] = 1.0;
    m[5] = 1.0; // batch 0: keys 2 and 5 padded
    for j in 0..s {
        m[s + j] = 1.0; // batch 1: every key padded -> zeros, zero gradients, no NaN
    }
    check_attention("attn mask B2 H3 L5 S7 Dh4", (2, 3, 5, s, 4), Some(m), &[0, 1, 2], 10);

    // mask over several tiles: padded tail of a 40-key sequence, per batch element
    let (b, s) = (3, 40);
    let mut m = vec![0.0; b * s];
    for j in 0..s {
        m[j] = if j >= 33 { 1.0 } else { 0.0 };
        m[s + j] = if j % 3 == 1 { 1.0 } else { 0.0 };
        m[2 * s + j] = if j == 39 { 0.0 } else { 1.0 }; // only the last key attends
    }
    check_attention("attn mask L35 S40 Dh12", (b, 1, 35, s, 12), Some(m), &[0, 1, 2], 11);
}

#[test]
fn all_padded_gives_exact_zeros() {
    let g = gpu();
    let (b, h, l, s, dh) = (1, 2, 3, 4, 8);
    let mut rng = Rng::new(12);
    let q = upload(&g, &rng.normals(b * h * l * dh), &[b, h, l, dh]).requires_grad();
    let k = upload(&g, &rng.normals(b * h * s * dh), &[b, h, s, dh]).requires_grad();
    let v = upload(&g, &rng.normals(b * h * s * dh), &[b, h, s, dh]).requires_grad();
    let m = Tensor::from_slice(&g, &[1.0; 4], &[1, 4]).unwrap();
    let o = ops::attention(&q, &k, &v, Some(&m), 0.3).unwrap();
    assert!(o.to_vec().unwrap().iter().all(|&x| x == 0.0));
    let mut grads = equimodal::Gradients::new();
    let seed = upload(&g, &rng.normals(b * h * l * dh), &[b, h, l, dh]);
    o.backward_with(seed, &mut grads).unwrap();
    for t in [&q, &k, &v] {
        assert!(grads.get(t).unwrap().to_vec().unwrap().iter().all(|&x| x == 0.0));
    }
}

#[test]
fn head_dim_64_and_128_instantiations() {
    // Dh <= 64 kernels: 40 keys cross two forward key tiles (32) and two dK/dV key blocks
    check_attention("attn Dh64", (1, 2, 9, 40, 64), None, &[0, 1, 2], 13);
    check_attention("attn Dh40", (1, 1, 37, 37, 40), None, &[0, 1, 2], 14);
    // Dh <= 128 kernels (Dh 100 leaves padded columns)
    check_attention("attn Dh100", (1, 1, 5, 19, 100), None, &[0, 1, 2], 15);
    check_attention("attn Dh128 fwd", (2, 1, 33, 17, 128), None, &[], 16);
}

#[test]
fn attention_backward_at_head_dim_128() {
    // the DH = 128 backward kernels (dQ, dK / dV) with every column live (Dh 100 above leaves
    // 28 zero columns, which hide a kernel that drops the last ones): 33 queries and 37 keys
    // cross query and key blocks, two heads
    check_attention("attn Dh128", (1, 2, 33, 37, 128), None, &[0, 1, 2], 17);
}

#[test]
fn typed_shape_errors() {
    let g = gpu();
    let z = |shape: &[usize]| Tensor::zeros(&g, shape).unwrap();
    let expect_shape_err = |r: equimodal::Result<Tensor>, needle: &str| match r {
        Err(e @ Error::Shape { .. }) => {
            let msg = e.to_string();
            assert!(msg.contains(needle), "message {msg:?} should name {needle:?}");
        }
        Err(e) => panic!("expected a shape error, got {e}"),
        Ok(_) => panic!("expected a shape error naming {needle}"),
    };
    // Dh mismatch between q and k
    expect_shape_err(ops::attention(&z(&[1, 2, 3, 8]), &z(&[1, 2, 5, 4]), &z(&[1, 2, 5, 4]), None, 1.0), "[1, 2, 3, 8]");
    // k and v differ
    expect_shape_err(ops::attention(&z(&[1, 2, 3, 4]), &z(&[1, 2, 5, 4]), &z(&[1, 2, 6, 4]), None, 1.0), "[1, 2, 6, 4]");
    // batch / heads differ
    expect_shape_err(ops::attention(&z(&[2, 2, 3, 4]), &z(&[1, 2, 5, 4]), &z(&[1, 2, 5, 4]), None, 1.0), "[2, 2, 3, 4]");
    // rank
    expect_shape_err(ops::attention(&z(&[2, 3, 4]), &z(&[2, 5, 4]), &z(&[2, 5, 4]), None, 1.0), "[2, 3, 4]");
    // mask shape must be [B, S]
    let m = z(&[1, 4]);
    expect_shape_err(ops::attention(&z(&[1, 2, 3, 4]), &z(&[1, 2, 5, 4]), &z(&[1, 2, 5, 4]), Some(&m), 1.0), "[1, 4]");
    // Dh over the supported maximum
    expect_shape_err(ops::attention(&z(&[1, 1, 2, 129]), &z(&[1, 1, 2, 129]), &z(&[1, 1, 2, 129]), None, 1.0), "129");
    assert_eq!(ops::ATTENTION_MAX_HEAD_DIM, 128);
}

/// Attention with at most 3 workgroups per grid dimension (`with_workgroup_cap`): one
/// workgroup per (batch, head, query block) on folded grids with spare workgroups.
#[test]
fn attention_under_workgroup_cap() {
    with_workgroup_cap(3, || {
        small_shapes_forward_and_gradients();
        several_tiles_forward_and_gradients();
        cross_attention_l_ne_s();
        key_padding_mask_and_fully_padded_rows();
    });
}

/// f16 q, k and v (mixed precision), each head-dim instantiation, with a key-padding mask:
/// the output and the gradients of q, k and v (through the casts, as f32) are bit for bit
/// those of the f32 kernel on the f16-rounded values; mixed dtypes are refused.
#[test]
fn f16_operands_give_the_f32_attention_of_their_values() {
    use equimodal::DType;
    let g = gpu();
    let mut rng = Rng::new(141);
    // Dh 128: every column of the widest tile live (Dh 100 would hide a dropped one)
    for (b, h, l, s, dh) in [(2usize, 2usize, 19usize, 23usize, 24usize), (1, 1, 9, 9, 64), (1, 2, 5, 7, 100), (1, 2, 33, 37, 128)] {
        let shape_q = [b, h, l, dh];
        let shape_kv = [b, h, s, dh];
        let (q, k, v) = (upload(&g, &rng.normals(b * h * l * dh), &shape_q), upload(&g, &rng.normals(b * h * s * dh), &shape_kv), upload(&g, &rng.normals(b * h * s * dh), &shape_kv));
        let mask: Vec<f64> = (0..b * s).map(|i| if i % 5 == 3 { 1.0 } else { 0.0 }).collect();
        let mask = upload(&g, &mask, &[b, s]);
        let seed = upload(&g, &rng.uniforms(b * h * l * dh, -1.0, 1.0), &shape_q);
        let round = |t: &Tensor| ops::cast(&ops::cast(t, DType::F16).unwrap(), DType::F32).unwrap();
        let run = |q: &Tensor, k: &Tensor, v: &Tensor, half: bool| {
            let [q, k, v] = [q, k, v].map(|t| t.detach().requires_grad());
            let cast = |t: &Tensor| if half { ops::cast(t, DType::F16).unwrap() } else { t.clone() };
            let o = ops::attention(&cast(&q), &cast(&k), &cast(&v), Some(&mask), 0.3).unwrap();
            assert_eq!(o.dtype(), DType::F32);
            let mut gr = equimodal::Gradients::new();
            o.backward_with(seed.clone(), &mut gr).unwrap();
            let mut out = vec![o.to_vec().unwrap()];
            out.extend([&q, &k, &v].map(|t| gr.get(t).expect("a gradient").to_vec().unwrap()));
            out
        };
        let mixed = run(&q, &k, &v, true);
        let want = run(&round(&q), &round(&k), &round(&v), false);
        for (i, what) in ["o", "dq", "dk", "dv"].iter().enumerate() {
            assert_eq!(mixed[i], want[i], "dh {dh}: {what}");
        }
        assert_canaries("attention f16");
    }
    let x = upload(&g, &rng.normals(2 * 4 * 8), &[1, 2, 4, 8]);
    let e = ops::attention(&ops::cast(&x, DType::F16).unwrap(), &x, &x, None, 1.0).unwrap_err();
    assert!(matches!(e, equimodal::Error::DType { .. }), "{e}");
}

/// Attention on cooperative matrices (`ops::prefer_coop`; emulated on lavapipe, on tensor
/// cores on the GPU machine) for f16 q, k and v, on shapes that fill no tile of 64 query rows,
/// 64 keys or 64 output columns (head dims 24, 64 and 100: one partial column half, one whole,
/// two with a partial one), with padded keys and one batch element wholly padded:
/// - the forward's o is the f64 attention of the f16 values within the f32 kernels' tolerance
///   (P staged as hi + lo; f16 weights alone are ~2^-12 off and fail it), and wholly padded
///   rows are exact zeros;
/// - the gradients from the forward's lse (tile backward) and those of the backward's own
///   products (dO, P and dS staged as hi + lo with per-tile scales) are the tiles' within the
///   same tolerance, at dO's natural size and at 1e-6 and 1e5 times it (a dO staged as f16
///   without its scale would underflow or overflow).
#[test]
fn coop_attention_matches_the_reference() {
    use equimodal::DType;
    let g = gpu();
    if equimodal::gpu::Coop::on(&g.capabilities()).is_none() {
        eprintln!("skipped: the adapter has no shader f16, so no cooperative-matrix kernel (nor its emulation) runs");
        return;
    }
    let mut rng = Rng::new(2024);
    for (b, h, l, s, dh) in [(2usize, 2usize, 70usize, 75usize, 24usize), (1, 1, 9, 130, 64), (2, 1, 65, 33, 100)] {
        let scale = (1.0 / (dh as f64).sqrt()) as f32;
        let mut half = |n: usize, shape: &[usize]| ops::cast(&upload(&g, &rng.normals(n), shape), DType::F16).unwrap();
        let (q, k, v) = (half(b * h * l * dh, &[b, h, l, dh]), half(b * h * s * dh, &[b, h, s, dh]), half(b * h * s * dh, &[b, h, s, dh]));
        // batch element 1 wholly padded; in element 0 every third key
        let mask: Vec<f64> = (0..b * s).map(|i| if i >= s || i % 3 == 1 { 1.0 } else { 0.0 }).collect();
        let mask_t = upload(&g, &mask, &[b, s]);
        let seed = rng.uniforms(b * h * l * dh, -1.0, 1.0);
        let run = |forward: bool, gradients: bool, size: f64| {
            let _c = ops::prefer_coop(forward, gradients);
            let [q, k, v] = [&q, &k, &v].map(|t| t.detach().requires_grad());
            let o = ops::attention(&q, &k, &v, Some(&mask_t), scale).unwrap();
            let mut gr = equimodal::Gradients::new();
            let dy: Vec<f64> = seed.iter().map(|x| x * size).collect();
            o.backward_with(upload(&g, &dy, &[b, h, l, dh]), &mut gr).unwrap();
            let mut out = vec![o.to_vec().unwrap()];
            out.extend([&q, &k, &v].map(|t| gr.get(t).expect("a gradient").to_vec().unwrap()));
            out
        };
        let values = |t: &Tensor| -> Vec<f64> { ops::cast(t, DType::F32).unwrap().to_vec().unwrap().into_iter().map(f64::from).collect() };
        let want = attention_ref(&values(&q), &values(&k), &values(&v), Some(&mask), (b, h, l, s, dh), scale as f64);
        // the f32 kernels' tolerances (check_attention): what remains of the f16 staging is
        // ~2^-21 of each term, below f32's rounding of the sums
        let tol = Tol::sums(s.max(dh), 1.0, s.max(l) * dh, 1.0);
        for size in [1.0, 1e-6, 1e5] {
            let tile = run(false, false, size);
            for (forward, gradients) in [(true, false), (false, true), (true, true)] {
                let coop = run(forward, gradients, size);
                let how = format!("dh {dh}, coop forward {forward}, gradients {gradients}, dO x{size:e}");
                assert_close(&format!("o, {how}"), &coop[0], &want, tol.rtol, tol.atol);
                if b == 2 {
                    assert!(coop[0][h * l * dh..].iter().all(|&x| x == 0.0), "{how}: a wholly padded row is not zero");
                }
                for (i, what) in ["dq", "dk", "dv"].iter().enumerate() {
                    let want: Vec<f64> = tile[i + 1].iter().map(|&x| x as f64).collect();
                    assert_close(&format!("{what}, {how}"), &coop[i + 1], &want, tol.grad_rtol, tol.grad_atol * size);
                }
            }
        }
        assert_canaries("attention coop");
    }
}
