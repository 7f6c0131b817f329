//! 2-D convolution against a direct f64 CPU convolution and finite differences.
use crate::common;
use common::*;
use equimodal::gpu::ConvTile;
use equimodal::ops::{self, Conv2dParams};
use equimodal::{Error, Tensor};

/// Every way a convolution's GEMMs can run: each tile forced on all three, and the choice
/// per GEMM (None: tuned on this device, or the size rule with tuning off).
fn tiles() -> impl Iterator<Item = Option<ConvTile>> {
    std::iter::once(None).chain(ConvTile::ALL.into_iter().map(Some))
}

fn tile_name(t: Option<ConvTile>) -> &'static str {
    t.map_or("chosen", |t| t.name())
}

#[derive(Clone, Copy, Debug)]
struct Shape {
    n: usize,
    c: usize,
    h: usize,
    w: usize,
    o: usize,
    kh: usize,
    kw: usize,
}

/// Direct convolution in f64 (the shared reference, `cpu_nn::conv2d_ex`). `x` [N,C,H,W],
/// `w` [O,C,KH,KW], optional bias [O].
fn conv_ref(s: Shape, p: Conv2dParams, x: &[f64], w: &[f64], b: Option<&[f64]>) -> Vec<f64> {
    use common::cpu_nn::{conv2d_ex, T};
    let x = T::new(&[s.n, s.c, s.h, s.w], x.to_vec());
    let w = T::new(&[s.o, s.c, s.kh, s.kw], w.to_vec());
    let b = b.map(|b| T::new(&[s.o], b.to_vec()));
    conv2d_ex(&x, &w, b.as_ref(), p.stride, p.padding, p.dilation).data
}

/// Gradients of sum(g * conv(x, w) + b) in f64: (dx, dw, db).
fn conv_ref_grads(s: Shape, p: Conv2dParams, x: &[f64], w: &[f64], g: &[f64]) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let (ho, wo) = ops::conv2d_output_size(s.h, s.w, s.kh, s.kw, &p);
    let mut dx = vec![0.0; x.len()];
    let mut dw = vec![0.0; w.len()];
    let mut db = vec![0.0; s.o];
    for n in 0..s.n {
        for o in 0..s.o {
            for i in 0..ho {
                for j in 0..wo {
                    let gv = g[((n * s.o + o) * ho + i) * wo + j];
                    db[o] += gv;
                    for c in 0..s.c {
                        for ki in 0..s.kh {
                            for kj in 0..s.kw {
                                let hi = (i * p.stride.0 + ki * p.dilation.0) as isize - p.padding.0 as isize;
                                let wi = (j * p.stride.1 + kj * p.dilation.1) as isize - p.padding.1 as isize;
                                if hi < 0 || wi < 0 || hi >= s.h as isize || wi >= s.w as isize {
                                    continue;
                                }
                                let xi = ((n * s.c + c) * s.h + hi as usize) * s.w + wi as usize;
                                let wi_ = ((o * s.c + c) * s.kh + ki) * s.kw + kj;
                                dx[xi] += gv * w[wi_];
                                dw[wi_] += gv * x[xi];
                            }
                        }
                    }
                }
            }
        }
    }
    (dx, dw, db)
}

fn params(stride: (usize, usize), padding: (usize, usize), dilation: (usize, usize)) -> Conv2dParams {
    Conv2dParams { stride, padding, dilation }
}

fn xw_shapes(s: Shape) -> (Vec<usize>, Vec<usize>) {
    (vec![s.n, s.c, s.h, s.w], vec![s.o, s.c, s.kh, s.kw])
}

/// Tolerance of a convolution of unit-size values: the forward sums K = C*KH*KW products,
/// dX sums O*KH*KW, dW and dbias sum N*HO*WO (scale: sqrt of the terms).
fn conv_tol(s: Shape, p: Conv2dParams) -> Tol {
    let (ho, wo) = ops::conv2d_output_size(s.h, s.w, s.kh, s.kw, &p);
    let k = s.c * s.kh * s.kw;
    let kg = (s.o * s.kh * s.kw).max(s.n * ho * wo);
    Tol::sums(k, (k as f64).sqrt(), kg, (kg as f64).sqrt())
}

/// Forward vs the f64 reference, gradients of x, w, bias vs finite differences, on every tile.
fn check_fd(name: &str, s: Shape, p: Conv2dParams, seed: u64) {
    let mut rng = Rng::new(seed);
    let (xs, ws) = xw_shapes(s);
    let x = rng.uniforms(numel(&xs), -1.0, 1.0);
    let w = rng.uniforms(numel(&ws), -1.0, 1.0);
    let b = rng.uniforms(s.o, -1.0, 1.0);
    for tile in tiles() {
        check_op(
            &format!("{name} tile {}", tile_name(tile)),
            &[(x.clone(), xs.clone()), (w.clone(), ws.clone()), (b.clone(), vec![s.o])],
            &[0, 1, 2],
            &|t| ops::conv2d_on_tile(&t[0], &t[1], Some(&t[2]), p, None, tile),
            &|v| conv_ref(s, p, &v[0], &v[1], Some(&v[2])),
            conv_tol(s, p),
        );
    }
}

/// The weight scale as a differentiated input (AIM tracks it where its strengths learn):
/// d/dscale = dW_raw * w and d/dw = dW_raw * scale, against finite differences of the f64
/// convolution with w * scale, on the chosen tile and the two tile kinds.
#[test]
fn conv_weight_scale_gradient_matches_finite_differences() {
    let s = Shape { n: 2, c: 3, h: 7, w: 6, o: 4, kh: 3, kw: 3 };
    let p = params((1, 1), (1, 1), (1, 1));
    let mut rng = Rng::new(33);
    let (xs, ws) = xw_shapes(s);
    let x = rng.uniforms(numel(&xs), -1.0, 1.0);
    let w = rng.uniforms(numel(&ws), -1.0, 1.0);
    let b = rng.uniforms(s.o, -1.0, 1.0);
    let sc = rng.uniforms(numel(&ws), 0.5, 1.5);
    for tile in [None, Some(ConvTile::T128x64), Some(ConvTile::G64x16)] {
        check_op(
            &format!("conv scale tracked tile {}", tile_name(tile)),
            &[(x.clone(), xs.clone()), (w.clone(), ws.clone()), (b.clone(), vec![s.o]), (sc.clone(), ws.clone())],
            &[0, 1, 2, 3],
            &|t| ops::conv2d_on_tile(&t[0], &t[1], Some(&t[2]), p, Some(&t[3]), tile),
            &|v| {
                let scaled: Vec<f64> = v[1].iter().zip(&v[3]).map(|(a, b)| a * b).collect();
                conv_ref(s, p, &v[0], &scaled, Some(&v[2]))
            },
            conv_tol(s, p),
        );
    }
}

#[test]
fn conv_3x3_stride1_pad1() {
    check_fd("3x3 s1 p1", Shape { n: 2, c: 3, h: 9, w: 7, o: 5, kh: 3, kw: 3 }, params((1, 1), (1, 1), (1, 1)), 1);
}

#[test]
fn conv_3x3_stride2_pad1() {
    check_fd("3x3 s2 p1", Shape { n: 2, c: 3, h: 9, w: 7, o: 5, kh: 3, kw: 3 }, params((2, 2), (1, 1), (1, 1)), 2);
}

#[test]
fn conv_7x7_stride2_pad3() {
    check_fd("7x7 s2 p3 C3", Shape { n: 2, c: 3, h: 13, w: 11, o: 5, kh: 7, kw: 7 }, params((2, 2), (3, 3), (1, 1)), 3);
    check_fd("7x7 s2 p3 C1", Shape { n: 2, c: 1, h: 13, w: 11, o: 4, kh: 7, kw: 7 }, params((2, 2), (3, 3), (1, 1)), 4);
}

#[test]
fn conv_1x1_stride2_pad0() {
    check_fd("1x1 s2 p0", Shape { n: 2, c: 3, h: 9, w: 7, o: 5, kh: 1, kw: 1 }, params((2, 2), (0, 0), (1, 1)), 5);
}

#[test]
fn conv_2x3_mixed_stride_dilation() {
    check_fd("2x3 s(2,1) p(0,1) d(2,1)", Shape { n: 2, c: 3, h: 9, w: 7, o: 5, kh: 2, kw: 3 }, params((2, 1), (0, 1), (2, 1)), 6);
    // stride and dilation sharing a factor (phases with no taps at all), stride 3
    check_fd("3x3 s(2,3) p(1,2) d(2,3)", Shape { n: 1, c: 2, h: 10, w: 11, o: 3, kh: 3, kw: 3 }, params((2, 3), (1, 2), (2, 3)), 7);
}

#[test]
fn conv_degenerate_sizes() {
    // batch 1, one channel, one output channel
    check_fd("batch1 C1 O1", Shape { n: 1, c: 1, h: 6, w: 5, o: 1, kh: 3, kw: 3 }, params((1, 1), (1, 1), (1, 1)), 8);
    // kernel exactly the padded image: 1x1 output
    check_fd("full-size kernel", Shape { n: 1, c: 2, h: 3, w: 4, o: 2, kh: 5, kw: 4 }, params((1, 1), (1, 0), (1, 1)), 9);
    // 1-pixel image
    check_fd("1x1 image", Shape { n: 3, c: 2, h: 1, w: 1, o: 3, kh: 3, kw: 3 }, params((2, 2), (1, 1), (1, 1)), 10);
}

#[test]
fn conv_without_bias_and_untracked_inputs() {
    let s = Shape { n: 2, c: 3, h: 8, w: 6, o: 4, kh: 3, kw: 3 };
    let p = params((1, 2), (1, 1), (1, 1));
    let mut rng = Rng::new(11);
    let (xs, ws) = xw_shapes(s);
    let x = rng.uniforms(numel(&xs), -1.0, 1.0);
    let w = rng.uniforms(numel(&ws), -1.0, 1.0);
    // only w differentiated: x untracked (dX skipped)
    check_op(
        "no bias, dw only",
        &[(x.clone(), xs.clone()), (w.clone(), ws.clone())],
        &[1],
        &|t| ops::conv2d(&t[0], &t[1], None, p, None),
        &|v| conv_ref(s, p, &v[0], &v[1], None),
        conv_tol(s, p),
    );
    check_op(
        "no bias, dx only",
        &[(x, xs), (w, ws)],
        &[0],
        &|t| ops::conv2d(&t[0], &t[1], None, p, None),
        &|v| conv_ref(s, p, &v[0], &v[1], None),
        conv_tol(s, p),
    );
}

/// Forward and all gradients vs the f64 reference (no finite differences): for shapes larger
/// than one 128 x 64 x 16 tile in every GEMM dimension of forward, dX and dW.
fn check_big(name: &str, s: Shape, p: Conv2dParams, seed: u64) {
    check_big_opt(name, s, p, seed, true)
}

/// [`check_big`] with or without a bias, on every tile.
fn check_big_opt(name: &str, s: Shape, p: Conv2dParams, seed: u64, with_bias: bool) {
    for tile in tiles() {
        check_big_on(&format!("{name} tile {}", tile_name(tile)), s, p, seed, with_bias, tile);
    }
}

fn check_big_on(name: &str, s: Shape, p: Conv2dParams, seed: u64, with_bias: bool, tile: Option<ConvTile>) {
    let g = gpu();
    let mut rng = Rng::new(seed);
    let (xs, ws) = xw_shapes(s);
    let x = round_f32(&rng.uniforms(numel(&xs), -1.0, 1.0));
    let w = round_f32(&rng.uniforms(numel(&ws), -1.0, 1.0));
    let b = round_f32(&rng.uniforms(s.o, -1.0, 1.0));
    let xt = upload(&g, &x, &xs).requires_grad();
    let wt = upload(&g, &w, &ws).requires_grad();
    let bt = upload(&g, &b, &[s.o]).requires_grad();
    let y = ops::conv2d_on_tile(&xt, &wt, with_bias.then_some(&bt), p, None, tile).unwrap();
    let want = conv_ref(s, p, &x, &w, with_bias.then_some(&b[..]));
    // K = C*KH*KW terms of magnitude <= 1: scale the tolerance with sqrt(K)
    let k = (s.c * s.kh * s.kw) as f64;
    assert_close(&format!("{name} forward"), &y.to_vec().unwrap(), &want, 1e-5, 2e-6 * k.sqrt() * 4.0);
    let gy = round_f32(&rng.uniforms(want.len(), -1.0, 1.0));
    let mut grads = equimodal::Gradients::new();
    y.backward_with(upload(&g, &gy, y.shape()), &mut grads).unwrap();
    let (dx, dw, db) = conv_ref_grads(s, p, &x, &w, &gy);
    let tol = |terms: f64| 1e-5 * terms.sqrt() * 4.0;
    assert_close(&format!("{name} dx"), &grads.get(&xt).unwrap().to_vec().unwrap(), &dx, 1e-5, tol((s.o * s.kh * s.kw) as f64));
    let (ho, wo) = ops::conv2d_output_size(s.h, s.w, s.kh, s.kw, &p);
    let red = (s.n * ho * wo) as f64;
    assert_close(&format!("{name} dw"), &grads.get(&wt).unwrap().to_vec().unwrap(), &dw, 1e-5, tol(red));
    if with_bias {
        assert_close(&format!("{name} db"), &grads.get(&bt).unwrap().to_vec().unwrap(), &db, 1e-5, tol(red));
    }
    // no kernel of the forward or backward wrote past the end of a tensor
    assert_canaries(name);
}

#[test]
fn conv_larger_than_one_tile_stride1() {
    // fwd: M = 2*13*11 = 286 > 128, N = 70 > 64, K = 594 > 16
    // dX: M = 286, N = C = 66 > 64, K = 630; dW: M = 594, N = 70, K = 286 (two split-K slices)
    check_big("big s1", Shape { n: 2, c: 66, h: 13, w: 11, o: 70, kh: 3, kw: 3 }, params((1, 1), (1, 1), (1, 1)), 21);
}

#[test]
fn conv_larger_than_one_tile_stride2() {
    // dX phases of 2*9*8 = 144 > 128 rows each
    check_big("big s2", Shape { n: 2, c: 66, h: 17, w: 15, o: 70, kh: 3, kw: 3 }, params((2, 2), (1, 1), (1, 1)), 22);
}

/// Every tile adds each output's K-slices in the same order, the strided ones and the GEMM
/// core's alike, so the forward and dX give the 128 x 64 tile's bits on every tile (what the
/// tuner's probe and the docs rely on; dW's split-K count follows the tile): with the
/// vec4 store of y (stride 2: y 9 x 8) and without it (stride 1: y 13 x 11), edge tiles in
/// every GEMM dimension.
#[test]
fn every_tile_gives_the_forward_and_dx_bits_of_the_128x64_tile() {
    let g = gpu();
    for (s, p) in [
        (Shape { n: 2, c: 66, h: 17, w: 15, o: 70, kh: 3, kw: 3 }, params((2, 2), (1, 1), (1, 1))),
        (Shape { n: 2, c: 66, h: 13, w: 11, o: 70, kh: 3, kw: 3 }, params((1, 1), (1, 1), (1, 1))),
    ] {
        let mut rng = Rng::new(31);
        let (xs, ws) = xw_shapes(s);
        let x = round_f32(&rng.uniforms(numel(&xs), -1.0, 1.0));
        let w = round_f32(&rng.uniforms(numel(&ws), -1.0, 1.0));
        let b = round_f32(&rng.uniforms(s.o, -1.0, 1.0));
        let (ho, wo) = ops::conv2d_output_size(s.h, s.w, s.kh, s.kw, &p);
        let gy = round_f32(&rng.uniforms(s.n * s.o * ho * wo, -1.0, 1.0));
        let run = |tile: ConvTile| -> [Vec<f32>; 2] {
            let xt = upload(&g, &x, &xs).requires_grad();
            let wt = upload(&g, &w, &ws);
            let bt = upload(&g, &b, &[s.o]);
            let y = ops::conv2d_on_tile(&xt, &wt, Some(&bt), p, None, Some(tile)).unwrap();
            let mut grads = equimodal::Gradients::new();
            y.backward_with(upload(&g, &gy, y.shape()), &mut grads).unwrap();
            [y.to_vec().unwrap(), grads.get(&xt).unwrap().to_vec().unwrap()]
        };
        let want = run(ConvTile::T128x64);
        for tile in ConvTile::ALL {
            let got = run(tile);
            assert!(got[0] == want[0], "y {ho}x{wo}: {} differs from 128x64", tile.name());
            assert!(got[1] == want[1], "dx of y {ho}x{wo}: {} differs from 128x64", tile.name());
        }
    }
}

/// The operands of one convolution: x, w, bias, a weight scale in [0.5, 1.5], and dy.
struct Operands {
    xs: Vec<usize>,
    ws: Vec<usize>,
    x: Vec<f64>,
    w: Vec<f64>,
    b: Vec<f64>,
    scale: Vec<f64>,
    gy: Vec<f64>,
}

fn operands(s: Shape, p: Conv2dParams, seed: u64) -> Operands {
    let mut rng = Rng::new(seed);
    let (xs, ws) = xw_shapes(s);
    let (ho, wo) = ops::conv2d_output_size(s.h, s.w, s.kh, s.kw, &p);
    let x = round_f32(&rng.uniforms(numel(&xs), -1.0, 1.0));
    let w = round_f32(&rng.uniforms(numel(&ws), -1.0, 1.0));
    let b = round_f32(&rng.uniforms(s.o, -1.0, 1.0));
    let scale = round_f32(&rng.uniforms(numel(&ws), 0.5, 1.5));
    let gy = round_f32(&rng.uniforms(s.n * s.o * ho * wo, -1.0, 1.0));
    Operands { xs, ws, x, w, b, scale, gy }
}

/// y and the gradients of x, w, the bias and (with `scaled`) the weight scale of one
/// convolution on `kernel`, x and w cast to f16 first with `half`.
fn run_on(o: &Operands, p: Conv2dParams, kernel: ops::ConvKernel, scaled: bool, half: bool) -> Vec<Vec<f32>> {
    let g = gpu();
    let xt = upload(&g, &o.x, &o.xs).requires_grad();
    let wt = upload(&g, &o.w, &o.ws).requires_grad();
    let bt = upload(&g, &o.b, &[o.ws[0]]).requires_grad();
    let st = upload(&g, &o.scale, &o.ws).requires_grad();
    let cast = |t: &Tensor| if half { ops::cast(t, equimodal::DType::F16).unwrap() } else { t.clone() };
    let y = ops::conv2d_on_kernel(&cast(&xt), &cast(&wt), Some(&bt), p, scaled.then_some(&st), kernel).unwrap();
    let mut grads = equimodal::Gradients::new();
    y.backward_with(upload(&g, &o.gy, y.shape()), &mut grads).unwrap();
    let mut out = vec![y.to_vec().unwrap()];
    let tracked = if scaled { vec![&xt, &wt, &bt, &st] } else { vec![&xt, &wt, &bt] };
    out.extend(tracked.into_iter().map(|t| grads.get(t).unwrap().to_vec().unwrap()));
    out
}

/// Every tile's interior form (`ConvKernel::Interior`: no range tests on the workgroups
/// inside M and N, the forward's f32 weights as vec4s; the guarded form on the edge tiles):
/// against the f64 reference, and bit for bit against the tile's guarded form, plain and
/// through the forward's batch-norm partials, and on two tiles with a weight scale as a
/// differentiated input and on f16 operands. The shapes give every tile interior workgroups and edge tiles
/// (M of 240 and 1,296 or 1,368 rows, 144 to 152 channels); the second has an H*W that is
/// not a multiple of 4 (the scalar store of y); the third, stride 2, has an interior forward
/// and no interior dX (one phase only).
#[test]
fn the_interior_form_of_every_tile_gives_the_reference_and_the_guarded_bits() {
    let g = gpu();
    let cases = [
        // fwd K = 1,296 and dW K = 240: whole slices; dX K = 1,368: not for slices of 16
        (Shape { n: 2, c: 144, h: 12, w: 10, o: 152, kh: 3, kw: 3 }, params((1, 1), (1, 1), (1, 1)), [true, false, true]),
        // dX K = 1,296, dW K = 240; fwd K = 1,368
        (Shape { n: 8, c: 152, h: 5, w: 6, o: 144, kh: 3, kw: 3 }, params((1, 1), (1, 1), (1, 1)), [false, true, true]),
        (Shape { n: 2, c: 16, h: 17, w: 17, o: 128, kh: 3, kw: 3 }, params((2, 2), (1, 1), (1, 1)), [true, false, false]),
    ];
    for (ci, (s, p, interior)) in cases.into_iter().enumerate() {
        let o = operands(s, p, 300 + ci as u64);
        let (want_y, (want_dx, want_dw, want_db)) = (conv_ref(s, p, &o.x, &o.w, Some(&o.b)), conv_ref_grads(s, p, &o.x, &o.w, &o.gy));
        let (ho, wo) = ops::conv2d_output_size(s.h, s.w, s.kh, s.kw, &p);
        let tol = |terms: usize| 1e-5 * (terms as f64).sqrt() * 4.0;
        let (xt, wt) = (upload(&g, &o.x, &o.xs), upload(&g, &o.w, &o.ws));
        for tile in ConvTile::ALL {
            let (inner, guarded) = (ops::ConvKernel::Interior(tile), ops::ConvKernel::Tile(tile));
            let what = format!("{s:?} stride {:?} on {}", p.stride, inner.name());
            // the launch really has interior workgroups where the shape was chosen for them
            // (the slices of the tiles on the shared core are 8 or 16 deep)
            let regions = ops::conv2d_interior_workgroups(&xt, &wt, p, inner).unwrap();
            for (gemm, (&want, got)) in ["fwd", "dx", "dw"].iter().zip(interior.iter().zip(regions)) {
                if want {
                    assert!(got.iter().all(|&d| d > 0), "{what}: no interior workgroups in {gemm}: {got:?}");
                }
            }
            if p.stride != (1, 1) {
                assert_eq!(regions[1], [0, 0], "{what}: dX has an interior only at stride 1");
            }
            assert_eq!(ops::conv2d_interior_workgroups(&xt, &wt, p, guarded).unwrap(), [[0; 2]; 3]);
            let got = run_on(&o, p, inner, false, false);
            assert_close(&format!("{what}: y"), &got[0], &want_y, 1e-5, tol(s.c * s.kh * s.kw));
            assert_close(&format!("{what}: dx"), &got[1], &want_dx, 1e-5, tol(s.o * s.kh * s.kw));
            assert_close(&format!("{what}: dw"), &got[2], &want_dw, 1e-5, tol(s.n * ho * wo));
            assert_close(&format!("{what}: db"), &got[3], &want_db, 1e-5, tol(s.n * ho * wo));
            assert!(got == run_on(&o, p, guarded, false, false), "{what}: differs from the guarded form");
            // the weight scale and f16 operands on a tile that loads the weights as vec4s and
            // one that cannot (its thread's share of a slice is 2 values): every other
            // pipeline compiles in minutes on lavapipe with a cold shader cache
            if [ConvTile::G128x64, ConvTile::T128x32].contains(&tile) {
                for (scaled, half) in [(true, false), (false, true)] {
                    let same = run_on(&o, p, inner, scaled, half) == run_on(&o, p, guarded, scaled, half);
                    assert!(same, "{what} scaled={scaled} f16={half}: differs from the guarded form");
                }
            }
            let fused = |k| {
                let (y, part) = ops::conv2d_forward_on(&xt, &wt, None, p, Default::default(), true, k).unwrap();
                let state = ops::BatchNormState::new(&g, s.o, 0.1, 1e-5).unwrap();
                [y.to_vec().unwrap(), ops::batch_norm_stats_from_partials(&y, &part.unwrap(), &state).unwrap().to_vec().unwrap()]
            };
            assert!(fused(inner) == fused(guarded), "{what}: batch-norm partials differ from the guarded form");
            assert_canaries(&what);
        }
    }
}

#[test]
fn conv_7x7_stride2_stem_backward_across_tiles() {
    // ResNet stem: 7x7, stride 2, padding 3. fwd M = 2*19*18 = 684 (6 tiles of 128, the
    // last partial), N = O = 70 (2 tiles of 64), K = 3*49 = 147 (10 K-slices, the last
    // partial); dX: 4 stride phases of 2*19*18 rows with 16, 12, 12 and 9 taps each, K = 70 *
    // taps; dW: M = 147 (2 tiles), K = 684 reduced with split-K.
    check_big("stem 7x7 s2", Shape { n: 2, c: 3, h: 37, w: 35, o: 70, kh: 7, kw: 7 }, params((2, 2), (3, 3), (1, 1)), 26);
}

#[test]
fn conv_1x1_stride2_shortcut_backward_across_tiles() {
    // ResNet downsample shortcut: 1x1, stride 2, no padding. fwd M = 2*15*14 = 420 (4 tiles),
    // N = 70 (2 tiles), K = C = 66 (5 K-slices); dX: only phase (0, 0) has a tap, the other
    // three phases write zeros, N = C = 66 (2 tiles); dW: M = 66, K = 420.
    check_big("shortcut 1x1 s2", Shape { n: 2, c: 66, h: 29, w: 27, o: 70, kh: 1, kw: 1 }, params((2, 2), (0, 0), (1, 1)), 27);
}

#[test]
fn conv_split_k_weight_gradient() {
    // dW reduces over N*HO*WO = 4*21*19 = 1596 = 99.75 K-slices: 10 split-K partials, the
    // last one shorter and ending in a partial K-slice, summed by the second pass.
    check_big("split-k", Shape { n: 4, c: 3, h: 21, w: 19, o: 6, kh: 3, kw: 3 }, params((1, 1), (1, 1), (1, 1)), 23);
}

#[test]
fn conv_vec4_stores_of_dx_and_dw() {
    // the `g` tiles store four neighbouring rows as one vec4 where the addresses allow: dX at
    // stride 1 with H*W = 320 a multiple of 4, dW with C*KH*KW = 36 a multiple of 4, here
    // through split-K partials (K = 4*320 = 1,280); the strided tiles store scalars. Both
    // against the f64 reference on every tile (the scalar forms: conv_split_k_weight_gradient
    // and the shapes above, whose H*W and C*KH*KW are not multiples of 4).
    check_big("vec4 stores", Shape { n: 4, c: 4, h: 20, w: 16, o: 6, kh: 3, kw: 3 }, params((1, 1), (1, 1), (1, 1)), 28);
}

#[test]
fn conv_weight_scale_masks() {
    let g = gpu();
    let s = Shape { n: 2, c: 4, h: 9, w: 7, o: 5, kh: 3, kw: 3 };
    let mut rng = Rng::new(31);
    let (xs, ws) = xw_shapes(s);
    let x = round_f32(&rng.uniforms(numel(&xs), -1.0, 1.0));
    let w = round_f32(&rng.uniforms(numel(&ws), -1.0, 1.0));
    let b = round_f32(&rng.uniforms(s.o, -1.0, 1.0));
    // mask: a third zeros, the rest scales in [0.5, 1.5]
    let sc: Vec<f64> = (0..w.len()).map(|i| if i % 3 == 1 { 0.0 } else { rng.range(0.5, 1.5) as f32 as f64 }).collect();
    // every tile's scaled entry points (the tuner checks a tile with the unscaled ones, so a
    // broken scaled form would only show where timing happened to pick it)
    for (p, tile) in [params((1, 1), (1, 1), (1, 1)), params((2, 2), (1, 1), (1, 1))].into_iter().flat_map(|p| tiles().map(move |t| (p, t))) {
        let name = tile_name(tile);
        let xt = upload(&g, &x, &xs).requires_grad();
        let wt = upload(&g, &w, &ws).requires_grad();
        let bt = upload(&g, &b, &[s.o]).requires_grad();
        let st = upload(&g, &sc, &ws);
        let y = ops::conv2d_on_tile(&xt, &wt, Some(&bt), p, Some(&st), tile).unwrap();
        // the forward equals a convolution with w * s
        let ws_: Vec<f64> = w.iter().zip(&sc).map(|(a, b)| ((a * b) as f32) as f64).collect();
        let y_plain = ops::conv2d_on_tile(&xt.detach(), &upload(&g, &ws_, &ws), Some(&bt.detach()), p, None, tile).unwrap();
        let got = y.to_vec().unwrap();
        let want = conv_ref(s, p, &x, &ws_, Some(&b));
        // sums of K = 36 products of values <= 1.5 (Tol::sums: 1e-6 sqrt(K) x scale sqrt(K))
        assert_close(&format!("{name}: masked forward"), &got, &want, 1e-5, 1e-6 * 36.0 * 1.5);
        assert_close(&format!("{name}: masked forward vs unmasked kernel on w*s"), &got, &y_plain.to_vec().unwrap().iter().map(|&v| v as f64).collect::<Vec<_>>(), 0.0, 0.0);
        let gy = round_f32(&rng.uniforms(want.len(), -1.0, 1.0));
        let mut grads = equimodal::Gradients::new();
        y.backward_with(upload(&g, &gy, y.shape()), &mut grads).unwrap();
        let (dx, dw_raw, db) = conv_ref_grads(s, p, &x, &ws_, &gy);
        let dw_want: Vec<f64> = dw_raw.iter().zip(&sc).map(|(a, b)| a * b).collect();
        let dw_got = grads.get(&wt).unwrap().to_vec().unwrap();
        for (i, v) in dw_got.iter().enumerate() {
            if sc[i] == 0.0 {
                assert_eq!(*v, 0.0, "{name}: masked weight gradient [{i}] must be exactly 0");
            }
        }
        // dW and db sum N*HO*WO <= 126 terms, dX sums O*KH*KW = 45 (Tol::sums)
        assert_close(&format!("{name}: masked dw"), &dw_got, &dw_want, 1e-5, 1e-6 * 126.0 * 1.5);
        assert_close(&format!("{name}: masked dx"), &grads.get(&xt).unwrap().to_vec().unwrap(), &dx, 1e-5, 1e-6 * 45.0 * 1.5);
        assert_close(&format!("{name}: masked db"), &grads.get(&bt).unwrap().to_vec().unwrap(), &db, 1e-5, 1e-6 * 126.0);
    }
}

#[test]
fn conv_weight_scale_split_k() {
    // masked weight gradient through the split-K reduction pass
    let g = gpu();
    let s = Shape { n: 4, c: 3, h: 20, w: 19, o: 6, kh: 3, kw: 3 };
    let p = params((1, 1), (1, 1), (1, 1));
    let mut rng = Rng::new(32);
    let (xs, ws) = xw_shapes(s);
    let x = round_f32(&rng.uniforms(numel(&xs), -1.0, 1.0));
    let w = round_f32(&rng.uniforms(numel(&ws), -1.0, 1.0));
    let sc: Vec<f64> = (0..w.len()).map(|i| if i % 4 == 0 { 0.0 } else { 0.75 }).collect();
    let xt = upload(&g, &x, &xs);
    let wt = upload(&g, &w, &ws).requires_grad();
    let y = ops::conv2d(&xt, &wt, None, p, Some(&upload(&g, &sc, &ws))).unwrap();
    let gy = round_f32(&rng.uniforms(y.numel(), -1.0, 1.0));
    let mut grads = equimodal::Gradients::new();
    y.backward_with(upload(&g, &gy, y.shape()), &mut grads).unwrap();
    let ws_: Vec<f64> = w.iter().zip(&sc).map(|(a, b)| a * b).collect();
    let (_, dw_raw, _) = conv_ref_grads(s, p, &x, &ws_, &gy);
    let want: Vec<f64> = dw_raw.iter().zip(&sc).map(|(a, b)| a * b).collect();
    let got = grads.get(&wt).unwrap().to_vec().unwrap();
    for (i, v) in got.iter().enumerate() {
        if sc[i] == 0.0 {
            assert_eq!(*v, 0.0, "masked weight gradient [{i}] must be exactly 0");
        }
    }
    // sums of N*HO*WO = 1,520 terms of size <= 0.75 (scale ~30): f32 error ~ u sqrt(K) 30 ~ 7e-5
    assert_close("split-k masked dw", &got, &want, 1e-5, 2e-4);
}

fn shape_err(r: equimodal::Result<Tensor>, needles: &[&str]) {
    match r {
        Err(Error::Shape { op, msg }) => {
            assert_eq!(op, "conv2d");
            for n in needles {
                assert!(msg.contains(n), "error {msg:?} should mention {n:?}");
            }
        }
        Err(e) => panic!("expected a shape error, got {e}"),
        Ok(t) => panic!("expected a shape error, got a tensor {:?}", t.shape()),
    }
}

#[test]
fn conv_shape_errors() {
    let g = gpu();
    let z = |s: &[usize]| Tensor::zeros(&g, s).unwrap();
    let d = Conv2dParams::default();
    // channel mismatch
    shape_err(ops::conv2d(&z(&[2, 3, 8, 8]), &z(&[4, 2, 3, 3]), None, d, None), &["[2, 3, 8, 8]", "[4, 2, 3, 3]"]);
    // kernel larger than the padded input
    shape_err(ops::conv2d(&z(&[1, 1, 4, 4]), &z(&[1, 1, 7, 7]), None, params((1, 1), (1, 1), (1, 1)), None), &["[7, 7]", "[6, 6]"]);
    // dilation makes the kernel too large
    shape_err(ops::conv2d(&z(&[1, 1, 5, 5]), &z(&[1, 1, 3, 3]), None, params((1, 1), (0, 0), (3, 3)), None), &["larger"]);
    // bias length
    shape_err(ops::conv2d(&z(&[1, 3, 8, 8]), &z(&[4, 3, 3, 3]), Some(&z(&[5])), d, None), &["[5]", "[4]"]);
    // scale shape
    shape_err(ops::conv2d(&z(&[1, 3, 8, 8]), &z(&[4, 3, 3, 3]), None, d, Some(&z(&[4, 3, 3, 1]))), &["[4, 3, 3, 1]", "[4, 3, 3, 3]"]);
    // ranks
    shape_err(ops::conv2d(&z(&[3, 8, 8]), &z(&[4, 3, 3, 3]), None, d, None), &["[3, 8, 8]"]);
    shape_err(ops::conv2d(&z(&[1, 3, 8, 8]), &z(&[4, 3, 3]), None, d, None), &["[4, 3, 3]"]);
    // zero stride
    shape_err(ops::conv2d(&z(&[1, 3, 8, 8]), &z(&[4, 3, 3, 3]), None, params((0, 1), (0, 0), (1, 1)), None), &["stride"]);
}

#[test]
fn conv_output_size_formula() {
    let p = params((2, 2), (3, 3), (1, 1));
    assert_eq!(ops::conv2d_output_size(224, 224, 7, 7, &p), (112, 112));
    assert_eq!(ops::conv2d_output_size(257, 188, 7, 7, &p), (129, 94));
    assert_eq!(ops::conv2d_output_size(9, 7, 2, 3, &params((2, 1), (0, 1), (2, 1))), (4, 7));
    assert_eq!(ops::conv2d_output_size(4, 4, 7, 7, &params((1, 1), (1, 1), (1, 1))), (0, 0));
}

/// The tiled conv GEMMs with at most 3 workgroups per grid dimension (`with_workgroup_cap`):
/// every launch is split (`ops::split_grid`) and the kernels add the launch's first
/// workgroup to their id. Without a bias: the bias gradient takes one workgroup per output
/// channel, more than 3^3.
#[test]
fn conv_under_workgroup_cap() {
    with_workgroup_cap(3, || {
        // fwd: M = 5*11*10 = 550 (5 tiles: launches of 3 + 2), O = 200 (4 tiles: 3 + 1);
        // dX: 4 stride phases (3 + 1) of 550 rows; dW: N = 200 (3 + 1), 4 split-K slices (3 + 1)
        let s = Shape { n: 5, c: 2, h: 21, w: 19, o: 200, kh: 3, kw: 3 };
        check_big_opt("capped s2", s, params((2, 2), (1, 1), (1, 1)), 24, false);
        // stride 1: fwd and dX of M = 5*21*19 = 1995 rows (16 tiles: 3 + 3 + ... + 1)
        let s = Shape { n: 5, c: 2, h: 21, w: 19, o: 70, kh: 3, kw: 3 };
        check_big_opt("capped s1", s, params((1, 1), (1, 1), (1, 1)), 25, false);
        // the small finite-difference checks (bias included: few output channels)
        conv_3x3_stride2_pad1();
        conv_7x7_stride2_pad3();
        conv_2x3_mixed_stride_dilation();
    });
}

/// The size rule: the least work counting padding, at 1 + 8·(1/BM + 1/BN) per computed
/// output (128x64: 1.1875, 128x32: 1.3125, 128x16: 1.5625, 32x16: 1.75).
/// The tuner times only the tiles within twice the least estimated work: all eight on a wide
/// ResNet layer, not the 128-channel tiles on a layer of 8 channels, and the rule's own tile
/// always.
#[test]
fn the_tuner_times_the_tiles_that_could_win() {
    use ConvTile::*;
    assert_eq!(ops::tiles_to_time(64 * 28 * 28, 128), ConvTile::ALL.to_vec());
    let narrow = ops::tiles_to_time(64 * 65 * 63, 8);
    assert!(!narrow.contains(&G128x128) && !narrow.contains(&T128x64) && !narrow.contains(&G128x64), "{narrow:?}");
    assert_eq!(ops::tiles_to_time(9, 8), vec![T32x16, G64x16]);
    for (m, n) in [(9, 8), (147, 64), (4096, 24), (4096, 70), (64 * 65 * 63, 8), (128 * 64, 64 * 7)] {
        assert!(ops::tiles_to_time(m, n).contains(&ops::tile_for(m, n)), "({m}, {n})");
    }
}

#[test]
fn conv_tile_rule_avoids_mostly_padded_tiles() {
    use ConvTile::*;
    // a ResNet layer: M = 64*28*28, N = 128: the wide tile, fully used
    assert_eq!(ops::tile_for(64 * 28 * 28, 128), T128x64);
    // 70 channels: 70 of 80 columns on 128x16 (4096·80·1.5625 < 4096·96·1.3125 on 128x32 <
    // 4096·128·1.1875 on the wide tile)
    assert_eq!(ops::tile_for(4096, 70), T128x16);
    // 8 output channels of a 65x63 map at batch 64 (M = 262080, not a multiple of 128): 8 of
    // 16 columns on 128x16 (262144·16·1.5625 < 262080·16·1.75 on 32x16)
    assert_eq!(ops::tile_for(64 * 65 * 63, 8), T128x16);
    // 24 channels: 24 of 32 on 128x32
    assert_eq!(ops::tile_for(4096, 24), T128x32);
    // the weight gradient of a 3x3 layer on one input channel (M = 9), 8 outputs: 32x16
    assert_eq!(ops::tile_for(9, 8), T32x16);
    // a 7x7 stem on 3 channels (M = 147), 64 outputs: 160·64·1.75 < 256·64·1.1875
    assert_eq!(ops::tile_for(147, 64), T32x16);
    // M = 288 (32 channels, 3x3), 64 outputs: 384·64·1.1875 < 288·64·1.75
    assert_eq!(ops::tile_for(288, 64), T128x64);
    // M and N multiples of every tile: no padding anywhere, the wide tile
    assert_eq!(ops::tile_for(128 * 64, 64 * 7), T128x64);
}

/// conv2d(relu(batch_norm(y))) with y's batch statistics, in f64: y [N, C, H, W].
fn bn_relu_conv_ref(s: Shape, p: Conv2dParams, y: &[f64], gamma: &[f64], beta: &[f64], w: &[f64], b: &[f64]) -> Vec<f64> {
    let hw = s.h * s.w;
    let m = (s.n * hw) as f64;
    let mut h = vec![0.0; y.len()];
    for ch in 0..s.c {
        let at = |i: usize, q: usize| (i * s.c + ch) * hw + q;
        let vals = || (0..s.n).flat_map(move |i| (0..hw).map(move |q| at(i, q)));
        let mean = vals().map(|j| y[j]).sum::<f64>() / m;
        let var = vals().map(|j| (y[j] - mean).powi(2)).sum::<f64>() / m;
        let inv = 1.0 / (var + 1e-5).sqrt();
        for j in vals() {
            h[j] = ((y[j] - mean) * inv * gamma[ch] + beta[ch]).max(0.0);
        }
    }
    conv_ref(s, p, &h, w, Some(b))
}

/// The convolution that rebuilds its input relu(batch_norm(y)) in the backward
/// (`model.recompute`): against the f64 reference with finite differences of y, γ, β, the
/// weight and the bias (batch statistics, so y's gradient goes through them too), and bit
/// for bit the unfused ops' output and gradients, with batch or given statistics and with a
/// weight scale (AIM's masks).
#[test]
fn conv_after_bn_relu_recomputes_the_unfused_ops_bit_for_bit() {
    let s = Shape { n: 2, c: 3, h: 7, w: 6, o: 5, kh: 3, kw: 3 };
    let p = params((2, 2), (1, 1), (1, 1));
    let mut rng = Rng::new(91);
    let (ys, ws) = xw_shapes(s);
    let y = rng.normals(numel(&ys));
    let gamma = rng.uniforms(s.c, 0.5, 1.5);
    let beta = rng.uniforms(s.c, -0.5, 0.5);
    let w = rng.uniforms(numel(&ws), -1.0, 1.0);
    let b = rng.uniforms(s.o, -1.0, 1.0);
    let fused = |t: &[Tensor]| {
        let state = ops::BatchNormState::new(t[0].gpu(), s.c, 0.1, 1e-5)?;
        let stats = ops::batch_norm_stats(&t[0], &state, true)?;
        let bn = ops::BnRelu { weight: &t[1], bias: &t[2], stats: &stats, batch_stats: true };
        ops::conv2d_after_bn_relu(&t[0], bn, &t[3], Some(&t[4]), p, None)
    };
    let inputs = [(y.clone(), ys.clone()), (gamma.clone(), vec![s.c]), (beta.clone(), vec![s.c]), (w.clone(), ws.clone()), (b.clone(), vec![s.o])];
    check_op(
        "conv_after_bn_relu",
        &inputs,
        &[0, 1, 2, 3, 4],
        &fused,
        &|v| bn_relu_conv_ref(s, p, &v[0], &v[1], &v[2], &v[3], &v[4]),
        // normalised values of unit size feed the convolution: its own tolerance
        conv_tol(s, p),
    );

    let g = gpu();
    let mask = upload(&g, &rng.uniforms(numel(&ws), 0.0, 1.0), &ws);
    for (batch_stats, scale) in [(true, None), (false, None), (true, Some(&mask)), (false, Some(&mask))] {
        let run = |recompute: bool| {
            let t: Vec<Tensor> = inputs.iter().map(|(v, sh)| upload(&g, v, sh).requires_grad()).collect();
            let state = ops::BatchNormState::new(&g, s.c, 0.1, 1e-5).unwrap();
            let stats = ops::batch_norm_stats(&t[0], &state, batch_stats).unwrap();
            let out = if recompute {
                let bn = ops::BnRelu { weight: &t[1], bias: &t[2], stats: &stats, batch_stats };
                ops::conv2d_after_bn_relu(&t[0], bn, &t[3], Some(&t[4]), p, scale)
            } else {
                let h = ops::relu(&ops::batch_norm_apply(&t[0], &t[1], &t[2], &stats, batch_stats).unwrap()).unwrap();
                ops::conv2d(&h, &t[3], Some(&t[4]), p, scale)
            }
            .unwrap();
            let seed = upload(&g, &Rng::new(92).uniforms(out.numel(), -1.0, 1.0), out.shape());
            let mut grads = equimodal::Gradients::new();
            out.backward_with(seed, &mut grads).unwrap();
            let mut all = vec![out.to_vec().unwrap()];
            all.extend(t.iter().map(|x| grads.get(x).expect("a gradient for every input").to_vec().unwrap()));
            all
        };
        let (plain, fused) = (run(false), run(true));
        for (i, (a, f)) in plain.iter().zip(&fused).enumerate() {
            assert_eq!(a, f, "batch_stats={batch_stats} scaled={}: {} differs", scale.is_some(), ["output", "dy", "dgamma", "dbeta", "dw", "dbias"][i]);
        }
    }
    assert_canaries("conv_after_bn_relu");
}

/// The inference epilogue (bias, batch norm with fixed statistics, residual, ReLU in the
/// convolution's store) on every tile, against the separate ops (bit for bit: batch norm is
/// computed as its own kernel does) and the f64 reference; it refuses to run where a gradient
/// would be recorded, and names a misshapen operand.
#[test]
fn conv_inference_epilogue_equals_the_separate_ops() {
    let g = gpu();
    let s = Shape { n: 2, c: 5, h: 9, w: 7, o: 19, kh: 3, kw: 3 };
    let p = params((2, 2), (1, 1), (1, 1));
    let (ho, wo) = ops::conv2d_output_size(s.h, s.w, s.kh, s.kw, &p);
    let ys = [s.n, s.o, ho, wo];
    let mut rng = Rng::new(95);
    let (xs, ws) = xw_shapes(s);
    let x = round_f32(&rng.normals(numel(&xs)));
    let w = round_f32(&rng.uniforms(numel(&ws), -1.0, 1.0));
    let b = round_f32(&rng.uniforms(s.o, -1.0, 1.0));
    let mean = round_f32(&rng.uniforms(s.o, -0.5, 0.5));
    let var = round_f32(&rng.uniforms(s.o, 0.5, 2.0));
    let gamma = round_f32(&rng.uniforms(s.o, 0.5, 1.5));
    let beta = round_f32(&rng.uniforms(s.o, -0.5, 0.5));
    let res = round_f32(&rng.normals(numel(&ys)));
    let [xt, wt, bt, gt, bet, rt] = [(&x, &xs[..]), (&w, &ws[..]), (&b, &[s.o][..]), (&gamma, &[s.o][..]), (&beta, &[s.o][..]), (&res, &ys[..])].map(|(v, sh)| upload(&g, v, sh));
    let state = ops::BatchNormState { running_mean: upload(&g, &mean, &[s.o]), running_var: upload(&g, &var, &[s.o]), momentum: 0.1, eps: 1e-5 };
    let stats = ops::batch_norm_running_stats(&state).unwrap();
    let _ng = equimodal::autograd::no_grad();
    for tile in tiles() {
        for (bias, bn, residual, relu) in [(true, false, false, false), (false, true, false, true), (true, true, true, true), (false, true, true, false), (false, false, true, true)] {
            let what = format!("tile {} bias={bias} bn={bn} residual={residual} relu={relu}", tile_name(tile));
            let bias_t = bias.then_some(&bt);
            let mut want = ops::conv2d_on_tile(&xt, &wt, bias_t, p, None, tile).unwrap();
            let mut cpu = conv_ref(s, p, &x, &w, bias.then_some(&b[..]));
            if bn {
                want = ops::batch_norm_given(&want, &gt, &bet, &stats).unwrap();
                let hw = ho * wo;
                for (i, v) in cpu.iter_mut().enumerate() {
                    let o = i / hw % s.o;
                    *v = (*v - mean[o]) / (var[o] + 1e-5).sqrt() * gamma[o] + beta[o];
                }
            }
            if residual {
                want = ops::add(&want, &rt).unwrap();
                cpu.iter_mut().zip(&res).for_each(|(v, r)| *v += r);
            }
            if relu {
                want = ops::relu(&want).unwrap();
                cpu.iter_mut().for_each(|v| *v = v.max(0.0));
            }
            let epi = ops::ConvEpilogue { batch_norm: bn.then_some((&stats, &gt, &bet)), residual: residual.then_some(&rt), relu };
            let got = ops::conv2d_inference_on_tile(&xt, &wt, bias_t, p, None, epi, tile).unwrap().to_vec().unwrap();
            assert_eq!(got, want.to_vec().unwrap(), "{what}: vs the separate ops");
            // K = 45 products of unit-size values, then an affine map of gain up to ~2
            assert_close(&what, &got, &cpu, 1e-5, 2e-6 * 45f64.sqrt() * 2.0);
            assert_canaries(&what);
        }
    }
    drop(_ng);
    // recording with a tracked input: refused
    let wq = wt.requires_grad();
    let e = ops::conv2d_inference(&xt, &wq, None, p, None, ops::ConvEpilogue { relu: true, ..Default::default() }).unwrap_err();
    assert!(e.to_string().contains("no backward"), "{e}");
    // a residual of another shape: a shape error naming it
    let e = ops::conv2d_inference(&xt, &wt, None, p, None, ops::ConvEpilogue { residual: Some(&xt), ..Default::default() }).unwrap_err();
    assert!(matches!(e, Error::Shape { .. }) && e.to_string().contains("residual"), "{e}");
}

/// Batch norm's statistics from the convolution's epilogue (`conv2d_bn_partials`, then
/// `batch_norm_stats_from_partials`) on every tile: the output bit for bit `conv2d`'s, with
/// its gradients; the statistics and the running statistics' update within f32 rounding of
/// the f64 reference and of the separate pass (`batch_norm_stats`); a channel count and a
/// pixel count that fill no tile; more row tiles than the merge kernel has threads (324 of
/// the 32-row tile: the merge loops); partials that do not cover the input refused.
#[test]
fn conv_bn_partials_give_the_batch_statistics_on_every_tile() {
    let g = gpu();
    let cases = [
        (Shape { n: 2, c: 5, h: 9, w: 7, o: 19, kh: 3, kw: 3 }, params((2, 2), (1, 1), (1, 1)), true),
        (Shape { n: 2, c: 1, h: 72, w: 72, o: 3, kh: 3, kw: 3 }, params((1, 1), (1, 1), (1, 1)), false),
    ];
    let mut rng = Rng::new(97);
    for (s, p, with_bias) in cases {
        let (ho, wo) = ops::conv2d_output_size(s.h, s.w, s.kh, s.kw, &p);
        let (xs, ws) = xw_shapes(s);
        let x = round_f32(&rng.normals(numel(&xs)));
        let w = round_f32(&rng.uniforms(numel(&ws), -1.0, 1.0));
        let b = round_f32(&rng.uniforms(s.o, -1.0, 1.0));
        let bias = with_bias.then_some(&b[..]);
        // the statistics in f64: batch mean, 1/sqrt(biased var + eps), and the running update
        let y = conv_ref(s, p, &x, &w, bias);
        let (hw, m) = (ho * wo, s.n * ho * wo);
        let chan = |o: usize| (0..s.n).flat_map(move |i| (0..hw).map(move |q| (i * s.o + o) * hw + q));
        let mean: Vec<f64> = (0..s.o).map(|o| chan(o).map(|j| y[j]).sum::<f64>() / m as f64).collect();
        let var: Vec<f64> = (0..s.o).map(|o| chan(o).map(|j| (y[j] - mean[o]).powi(2)).sum::<f64>() / m as f64).collect();
        let mut want = mean.clone();
        want.extend(var.iter().map(|v| 1.0 / (v + 1e-5).sqrt()));
        let running: Vec<f64> = mean.iter().map(|u| 0.1 * u).chain(var.iter().map(|v| 0.9 + 0.1 * v * m as f64 / (m - 1) as f64)).collect();
        for tile in tiles() {
            let what = format!("{s:?} tile {} bias={with_bias}", tile_name(tile));
            let [xt, wt] = [(&x, &xs), (&w, &ws)].map(|(v, sh)| upload(&g, v, sh).requires_grad());
            let bt = upload(&g, &b, &[s.o]).requires_grad();
            let (yt, partials) = ops::conv2d_bn_partials_on_tile(&xt, &wt, with_bias.then_some(&bt), p, None, tile).unwrap();
            let plain = ops::conv2d_on_tile(&xt, &wt, with_bias.then_some(&bt), p, None, tile).unwrap();
            assert_eq!(yt.to_vec().unwrap(), plain.to_vec().unwrap(), "{what}: y vs conv2d");
            let state = ops::BatchNormState::new(&g, s.o, 0.1, 1e-5).unwrap();
            let stats = ops::batch_norm_stats_from_partials(&yt, &partials, &state).unwrap().to_vec().unwrap();
            assert_close(&format!("{what}: stats"), &stats, &want, 1e-5, 1e-6);
            let rs: Vec<f32> = [&state.running_mean, &state.running_var].iter().flat_map(|t| t.to_vec().unwrap()).collect();
            assert_close(&format!("{what}: running statistics"), &rs, &running, 1e-5, 1e-6);
            // the separate pass over y agrees to rounding
            let again = ops::batch_norm_stats(&plain, &ops::BatchNormState::new(&g, s.o, 0.1, 1e-5).unwrap(), true).unwrap().to_vec().unwrap();
            let again: Vec<f64> = again.iter().map(|&v| v as f64).collect();
            assert_close(&format!("{what}: vs batch_norm_stats"), &stats, &again, 1e-5, 1e-6);
            // the same op for autograd: the same gradients
            let seed = Rng::new(98).uniforms(yt.numel(), -1.0, 1.0);
            let grads = |out: &Tensor| {
                let mut gr = equimodal::Gradients::new();
                out.backward_with(upload(&g, &seed, out.shape()), &mut gr).unwrap();
                [&xt, &wt].iter().map(|t| gr.get(t).unwrap().to_vec().unwrap()).collect::<Vec<_>>()
            };
            assert_eq!(grads(&yt), grads(&plain), "{what}: gradients");
            assert_canaries(&what);
        }
    }
    // partials of another convolution's output: refused, naming them
    let s = cases[0].0;
    let (xs, ws) = xw_shapes(s);
    let (xt, wt) = (upload(&g, &rng.normals(numel(&xs)), &xs), upload(&g, &rng.normals(numel(&ws)), &ws));
    let (_, partials) = ops::conv2d_bn_partials(&xt, &wt, None, cases[0].1, None).unwrap();
    let other = Tensor::zeros(&g, &[2, s.o, 3, 3]).unwrap();
    let state = ops::BatchNormState::new(&g, s.o, 0.1, 1e-5).unwrap();
    let e = ops::batch_norm_stats_from_partials(&other, &partials, &state).unwrap_err();
    assert!(matches!(e, Error::Shape { .. }) && e.to_string().contains("partial statistics"), "{e}");
}

/// f16 operands (mixed precision): x, w or both stored as f16 and widened as they are
/// loaded, on every tile, stride 2 with padding, with bias: the output and the gradients of
/// x and w (dX reads the f16 w, dW the f16 x, dy stays f32) are bit for bit those of the f32
/// convolution on the f16-rounded values, and those agree with the f64 reference; the
/// gradients reach the f32 tensors through the casts.
#[test]
fn conv_with_f16_operands_equals_f32_on_the_rounded_values() {
    use equimodal::DType;
    let g = gpu();
    let s = Shape { n: 2, c: 5, h: 9, w: 7, o: 19, kh: 3, kw: 3 };
    let p = params((2, 2), (1, 1), (1, 1));
    let mut rng = Rng::new(131);
    let (xs, ws) = xw_shapes(s);
    let (x32, w32) = (upload(&g, &rng.normals(numel(&xs)), &xs), upload(&g, &rng.uniforms(numel(&ws), -1.0, 1.0), &ws));
    let b = upload(&g, &round_f32(&rng.uniforms(s.o, -1.0, 1.0)), &[s.o]);
    let round = |t: &Tensor| ops::cast(&ops::cast(t, DType::F16).unwrap(), DType::F32).unwrap();
    let (xr, wr) = (round(&x32), round(&w32));
    let (ho, wo) = ops::conv2d_output_size(s.h, s.w, s.kh, s.kw, &p);
    let seed = upload(&g, &rng.uniforms(s.n * s.o * ho * wo, -1.0, 1.0), &[s.n, s.o, ho, wo]);
    let host = |t: &Tensor| t.to_vec().unwrap().iter().map(|&v| v as f64).collect::<Vec<f64>>();
    let want = conv_ref(s, p, &host(&xr), &host(&wr), Some(&host(&b)));
    for tile in tiles() {
        // (x, w) as the run gives them: f32 tensors, cast to f16 where `half`
        let run = |x: &Tensor, w: &Tensor, half_x: bool, half_w: bool| {
            let (x, w) = (x.detach().requires_grad(), w.detach().requires_grad());
            let xi = if half_x { ops::cast(&x, DType::F16).unwrap() } else { x.clone() };
            let wi = if half_w { ops::cast(&w, DType::F16).unwrap() } else { w.clone() };
            let y = ops::conv2d_on_tile(&xi, &wi, Some(&b), p, None, tile).unwrap();
            let mut gr = equimodal::Gradients::new();
            y.backward_with(seed.clone(), &mut gr).unwrap();
            let (dx, dw) = (gr.get(&x).expect("dx"), gr.get(&w).expect("dw"));
            assert_eq!((dx.dtype(), dw.dtype()), (DType::F32, DType::F32));
            [y.to_vec().unwrap(), dx.to_vec().unwrap(), dw.to_vec().unwrap()]
        };
        let plain = run(&xr, &wr, false, false);
        assert_close(&format!("tile {} f32 on rounded values", tile_name(tile)), &plain[0], &want, 1e-5, 2e-6 * 45f64.sqrt());
        for (hx, hw) in [(true, false), (false, true), (true, true)] {
            let got = run(&x32, &w32, hx, hw);
            // the f32 convolution of the operands this run rounded (the others as they are)
            let same = run(if hx { &xr } else { &x32 }, if hw { &wr } else { &w32 }, false, false);
            for (i, what) in ["y", "dx", "dw"].iter().enumerate() {
                assert_eq!(got[i], same[i], "tile {} half x={hx} w={hw}: {what}", tile_name(tile));
            }
        }
        assert_canaries("conv f16");
    }
}

/// Under mixed precision a convolution whose output goes to a batch norm with batch
/// statistics stores that output f16 (`conv2d_bn_partials`, and `conv2d_after_bn_relu_ex`
/// with partials), on every tile, from the kernel (an even pixel count) and through a cast
/// (odd): its values are the f32 convolution's rounded to f16 (bit for
/// bit a cast of them), the partial statistics are those of the stored values (within f32
/// rounding of a separate pass over them), and the gradients are bit for bit those of the f32
/// op (the cast passes the f32 gradient through). Without partials the output stays f32.
#[test]
fn conv_output_before_batch_norm_is_f16_under_autocast() {
    use equimodal::DType;
    let g = gpu();
    let s = Shape { n: 2, c: 5, h: 9, w: 7, o: 19, kh: 3, kw: 3 };
    let mut rng = Rng::new(133);
    let (xs, ws) = xw_shapes(s);
    let (xv, wv, bv) = (rng.normals(numel(&xs)), rng.uniforms(numel(&ws), -1.0, 1.0), rng.uniforms(s.o, -1.0, 1.0));
    let rounded = |t: &Tensor| ops::cast(&ops::cast(t, DType::F16).unwrap(), DType::F32).unwrap().to_vec().unwrap();
    // y of 5 x 4 pixels (even: the kernel stores f16 words) and of 9 x 7 (odd: a cast does)
    for (p, tile) in [params((2, 2), (1, 1), (1, 1)), params((1, 1), (1, 1), (1, 1))].into_iter().flat_map(|p| tiles().map(move |t| (p, t))) {
        let (ho, wo) = ops::conv2d_output_size(s.h, s.w, s.kh, s.kw, &p);
        let seed = upload(&g, &rng.uniforms(s.n * s.o * ho * wo, -1.0, 1.0), &[s.n, s.o, ho, wo]);
        let what = format!("y {ho}x{wo} tile {}", tile_name(tile));
        // (y, stats from the partials, y's batch_norm_stats, dx, dw, db)
        let run = |mixed: bool| {
            let _ac = equimodal::autograd::autocast(mixed);
            let [xt, wt, bt] = [(&xv, &xs[..]), (&wv, &ws[..]), (&bv, &[s.o][..])].map(|(v, sh)| upload(&g, v, sh).requires_grad());
            let (y, partials) = ops::conv2d_bn_partials_on_tile(&xt, &wt, Some(&bt), p, None, tile).unwrap();
            assert_eq!(y.dtype(), if mixed { DType::F16 } else { DType::F32 }, "{what} mixed={mixed}");
            let state = || ops::BatchNormState::new(&g, s.o, 0.1, 1e-5).unwrap();
            let stats = ops::batch_norm_stats_from_partials(&y, &partials, &state()).unwrap().to_vec().unwrap();
            let pass = ops::batch_norm_stats(&y, &state(), true).unwrap().to_vec().unwrap();
            let mut grads = equimodal::Gradients::new();
            y.backward_with(seed.clone(), &mut grads).unwrap();
            let mut all = vec![ops::cast(&y, DType::F32).unwrap().to_vec().unwrap(), stats, pass];
            all.extend([&xt, &wt, &bt].map(|t| grads.get(t).unwrap().to_vec().unwrap()));
            all
        };
        let (plain, mixed) = (run(false), run(true));
        let plain_y = upload(&g, &plain[0].iter().map(|&v| v as f64).collect::<Vec<_>>(), &[s.n, s.o, ho, wo]);
        assert_eq!(mixed[0], rounded(&plain_y), "{what}: y is the f32 output rounded to f16");
        assert_ne!(mixed[0], plain[0], "{what}: no rounding seen");
        let pass: Vec<f64> = mixed[2].iter().map(|&v| v as f64).collect();
        assert_close(&format!("{what}: partial statistics of the stored values"), &mixed[1], &pass, 1e-5, 1e-6);
        for (i, d) in ["dx", "dw", "dbias"].iter().enumerate() {
            assert_eq!(mixed[3 + i], plain[3 + i], "{what}: {d}");
        }
        assert_canaries(&what);
    }
    // the fused convolution after batch norm + ReLU: f16 output with partials, f32 without
    let p = params((2, 2), (1, 1), (1, 1));
    let (cs, cw) = xw_shapes(Shape { c: s.o, o: 7, ..s });
    let cwt = upload(&g, &rng.uniforms(numel(&cw), -1.0, 1.0), &cw);
    let yin = upload(&g, &rng.normals(numel(&cs)), &cs);
    let (gamma, beta) = (upload(&g, &vec![1.0; s.o], &[s.o]), upload(&g, &vec![0.0; s.o], &[s.o]));
    let after = |mixed: bool, partials: bool| {
        let _ac = equimodal::autograd::autocast(mixed);
        let stats = ops::batch_norm_stats(&yin, &ops::BatchNormState::new(&g, s.o, 0.1, 1e-5).unwrap(), true).unwrap();
        let bn = ops::BnRelu { weight: &gamma, bias: &beta, stats: &stats, batch_stats: true };
        ops::conv2d_after_bn_relu_ex(&yin, bn, &cwt, None, p, None, partials).unwrap().0
    };
    let out = after(true, true);
    assert_eq!(out.dtype(), DType::F16);
    assert_eq!(ops::cast(&out, DType::F32).unwrap().to_vec().unwrap(), rounded(&after(false, true)));
    assert_eq!(after(true, false).dtype(), DType::F32);
}

/// The forward's rounding to f16 values (`HALF_Y`, written out in f32 arithmetic) is the cast's
/// on the cases where rounding is delicate: ties to even, subnormal f16 values and the ties
/// between them, the largest f16 value, overflow to infinity, negative values. A 1×1 convolution
/// with weight 1 passes each value through exactly; the stored f16 value is then the cast's
/// (on an adapter whose conversion rounds to nearest even, as lavapipe's and NVIDIA's do) and
/// the expected one.
#[test]
fn conv_rounds_its_output_to_f16_as_a_cast_does() {
    use equimodal::DType;
    let g = gpu();
    let t = |e: i32| 2f64.powi(e);
    let cases: Vec<(f64, f64)> = vec![
        (1.0 + t(-11), 1.0),                     // tie: to the even mantissa
        (1.0 + 3.0 * t(-11), 1.0 + t(-9)),       // tie: up, to the even one
        (-(1.0 + t(-11)), -1.0),
        (2.5 * t(-24), 2.0 * t(-24)),            // subnormal ties
        (3.5 * t(-24), 4.0 * t(-24)),
        (t(-25), 0.0),                           // half the smallest subnormal: to zero
        (1.5 * t(-25), t(-24)),
        (t(-14) - t(-26), t(-14)),               // up to the smallest normal
        (65504.0, 65504.0),
        (65519.0, 65504.0),
        (65520.0, f64::INFINITY),                // the tie above the largest: to infinity
        (-1.0e6, f64::NEG_INFINITY),
        (-2.5 * t(-24), -2.0 * t(-24)),
        (0.1, 0.0999755859375),
    ];
    let n = cases.len();
    let x = upload(&g, &cases.iter().map(|c| c.0).collect::<Vec<_>>(), &[1, 1, 1, n]).requires_grad();
    let w = upload(&g, &[1.0], &[1, 1, 1, 1]).requires_grad();
    let _ac = equimodal::autograd::autocast(true);
    let (y, _) = ops::conv2d_bn_partials(&x, &w, None, params((1, 1), (0, 0), (1, 1)), None).unwrap();
    let got = ops::cast(&y, DType::F32).unwrap().to_vec().unwrap();
    let cast = ops::cast(&ops::cast(&x, DType::F16).unwrap(), DType::F32).unwrap().to_vec().unwrap();
    for (i, (v, want)) in cases.iter().enumerate() {
        assert_eq!(got[i].to_bits(), (*want as f32).to_bits(), "{v:e}: got {:e}, want {want:e}", got[i]);
        assert_eq!(got[i].to_bits(), cast[i].to_bits(), "{v:e}: the cast gives {:e}", cast[i]);
    }
}

/// The cooperative-matrix forward (tensor cores) against the f64 reference on f16 values:
/// stride 2 with padding and channels that fill no 64 x 64 tile, K in several slices with a
/// tail and an odd pixel count, and an exact tile; with bias; the inference epilogue (batch norm, residual, ReLU)
/// against the 128 x 64 tile's; batch norm's partial statistics against a separate pass over
/// its output, as f32 and as f16 words (`HALF_Y`: the direct f16 store); f32 operands
/// refused. On tensor cores where the adapter has them (the GPU machine,
/// `scripts/gpu_bench.sh`), else emulated where it has shader f16 (lavapipe 25: the staging,
/// indexing and epilogue); skipped, with the reason printed, where it has neither.
#[test]
fn coop_conv_forward_matches_the_reference() {
    use equimodal::DType;
    let g = gpu();
    let Some(form) = equimodal::gpu::Coop::on(&g.capabilities()) else {
        println!("skipped: {} has neither cooperative matrices nor shader f16", g.info().name);
        return;
    };
    println!("cooperative-matrix forward: {form:?}");
    let mut rng = Rng::new(141);
    let cases = [
        (Shape { n: 2, c: 5, h: 9, w: 7, o: 19, kh: 3, kw: 3 }, params((2, 2), (1, 1), (1, 1))),
        (Shape { n: 1, c: 70, h: 9, w: 13, o: 130, kh: 3, kw: 3 }, params((1, 1), (1, 1), (1, 1))),
        (Shape { n: 1, c: 64, h: 8, w: 8, o: 64, kh: 1, kw: 1 }, params((1, 1), (0, 0), (1, 1))),
    ];
    for (s, p) in cases {
        let what = format!("coop {s:?}");
        let (xs, ws) = xw_shapes(s);
        let half = |v: Vec<f64>, sh: &[usize]| ops::cast(&upload(&g, &v, sh), DType::F16).unwrap();
        let (x, w) = (half(rng.normals(numel(&xs)), &xs), half(rng.uniforms(numel(&ws), -1.0, 1.0), &ws));
        let bias = upload(&g, &round_f32(&rng.uniforms(s.o, -1.0, 1.0)), &[s.o]);
        let host = |t: &Tensor| ops::cast(t, DType::F32).unwrap().to_vec().unwrap().iter().map(|&v| v as f64).collect::<Vec<f64>>();
        let want = conv_ref(s, p, &host(&x), &host(&w), Some(&host(&bias)));
        let k = s.c * s.kh * s.kw;
        let coop = |epi: ops::ConvEpilogue, partials: bool| ops::conv2d_forward_on(&x, &w, Some(&bias), p, epi, partials, ops::ConvKernel::Coop).unwrap();
        // f16 values multiply exactly; the sums are f32 in the hardware's order
        let (y, partials) = coop(Default::default(), true);
        assert_close(&format!("{what}: y"), &y.to_vec().unwrap(), &want, 1e-5, 1e-6 * k as f64);
        let state = || ops::BatchNormState::new(&g, s.o, 0.1, 1e-5).unwrap();
        let stats = ops::batch_norm_stats_from_partials(&y, &partials.unwrap(), &state()).unwrap().to_vec().unwrap();
        let pass: Vec<f64> = ops::batch_norm_stats(&y, &state(), true).unwrap().to_vec().unwrap().iter().map(|&v| v as f64).collect();
        assert_close(&format!("{what}: partial statistics"), &stats, &pass, 1e-5, 1e-6);
        // under mixed precision: y rounded to f16 (stored by the kernel where H*W is even)
        let y16 = {
            let _ac = equimodal::autograd::autocast(true);
            coop(Default::default(), true).0
        };
        assert_eq!(y16.dtype(), DType::F16, "{what}");
        let rounded = ops::cast(&ops::cast(&y, DType::F16).unwrap(), DType::F32).unwrap().to_vec().unwrap();
        assert_eq!(ops::cast(&y16, DType::F32).unwrap().to_vec().unwrap(), rounded, "{what}: f16 y");
        // the inference epilogue, against the 128 x 64 tile's
        let (ho, wo) = ops::conv2d_output_size(s.h, s.w, s.kh, s.kw, &p);
        let res = upload(&g, &rng.normals(s.n * s.o * ho * wo), &[s.n, s.o, ho, wo]);
        let stats = upload(&g, &[rng.normals(s.o), rng.uniforms(s.o, 0.5, 2.0)].concat(), &[2, s.o]);
        let (gw, gb) = (upload(&g, &rng.uniforms(s.o, 0.5, 1.5), &[s.o]), upload(&g, &rng.uniforms(s.o, -0.5, 0.5), &[s.o]));
        let epi = ops::ConvEpilogue { batch_norm: Some((&stats, &gw, &gb)), residual: Some(&res), relu: true };
        let tile = ops::conv2d_forward_on(&x, &w, Some(&bias), p, epi, false, ops::ConvKernel::Tile(ConvTile::T128x64)).unwrap().0.to_vec().unwrap();
        let tile: Vec<f64> = tile.iter().map(|&v| v as f64).collect();
        assert_close(&format!("{what}: epilogue"), &coop(epi, false).0.to_vec().unwrap(), &tile, 1e-4, 1e-5 * k as f64);
        assert_canaries(&what);
    }
    let (xs, ws) = xw_shapes(cases[0].0);
    let (x, w) = (upload(&g, &rng.normals(numel(&xs)), &xs), upload(&g, &rng.normals(numel(&ws)), &ws));
    assert!(ops::conv2d_forward_on(&x, &w, None, cases[0].1, Default::default(), false, ops::ConvKernel::Coop).is_err(), "f32 operands refused");
}

/// Without cooperative matrices or shader f16 the cooperative-matrix forward is refused with
/// an error naming what it needs (stock Mesa 22's lavapipe; skipped where either exists).
#[test]
fn coop_conv_forward_is_refused_where_the_adapter_lacks_f16() {
    use equimodal::DType;
    let g = gpu();
    if equimodal::gpu::Coop::on(&g.capabilities()).is_some() {
        println!("skipped: {} runs the cooperative-matrix forward", g.info().name);
        return;
    }
    let s = Shape { n: 1, c: 3, h: 5, w: 5, o: 4, kh: 3, kw: 3 };
    let (xs, ws) = xw_shapes(s);
    let mut rng = Rng::new(142);
    let half = |v: Vec<f64>, sh: &[usize]| ops::cast(&upload(&g, &v, sh), DType::F16).unwrap();
    let (x, w) = (half(rng.normals(numel(&xs)), &xs), half(rng.normals(numel(&ws)), &ws));
    let Err(e) = ops::conv2d_forward_on(&x, &w, None, params((1, 1), (1, 1), (1, 1)), Default::default(), false, ops::ConvKernel::Coop) else {
        panic!("the cooperative-matrix forward ran without cooperative matrices");
    };
    assert!(e.to_string().contains("cooperative matrices"), "{e}");
}

/// The cooperative-matrix gradients (dX per stride phase, dW with split-K) against the f64
/// reference on the f16 values of x and w and the f32 dy, through autograd with every GEMM on
/// the cooperative-matrix kernels: stride 2 with padding and dilation (phases with different
/// tap counts), channels and pixel counts that fill no 64 x 64 tile, and a long reduction for
/// dW (several splits). dy enters the tensor cores as f16 after a per-tensor power-of-two
/// scale, so each term of a sum carries at most f16's half-ulp, 2^-12 relative: the bound is
/// 2^-11 of the sum of the terms' magnitudes (the reference on |dy|, |x|, |w|), whatever dy's
/// magnitude: the same bound holds for a dy a million times smaller, whose values unscaled
/// would be f16 subnormals with a few bits. A weight scale is refused.
#[test]
fn coop_conv_gradients_match_the_reference() {
    use equimodal::DType;
    let g = gpu();
    let Some(form) = equimodal::gpu::Coop::on(&g.capabilities()) else {
        println!("skipped: {} has neither cooperative matrices nor shader f16", g.info().name);
        return;
    };
    println!("cooperative-matrix gradients: {form:?}");
    let mut rng = Rng::new(143);
    let cases = [
        (Shape { n: 2, c: 5, h: 11, w: 9, o: 19, kh: 3, kw: 3 }, params((2, 2), (1, 1), (2, 1))),
        (Shape { n: 3, c: 70, h: 12, w: 13, o: 67, kh: 3, kw: 3 }, params((1, 1), (1, 1), (1, 1))),
    ];
    for (s, p) in cases {
        let (xs, ws) = xw_shapes(s);
        let (ho, wo) = ops::conv2d_output_size(s.h, s.w, s.kh, s.kw, &p);
        // f16 values (rounded by the GPU's cast), as f64
        let half = |v: Vec<f64>, sh: &[usize]| -> Vec<f64> {
            let t = ops::cast(&ops::cast(&upload(&g, &v, sh), DType::F16).unwrap(), DType::F32).unwrap();
            t.to_vec().unwrap().iter().map(|&a| a as f64).collect()
        };
        let (xv, wv) = (half(rng.normals(numel(&xs)), &xs), half(rng.uniforms(numel(&ws), -1.0, 1.0), &ws));
        let gv = round_f32(&rng.uniforms(s.n * s.o * ho * wo, -1.0, 1.0));
        let abs = |v: &[f64]| v.iter().map(|a| a.abs()).collect::<Vec<f64>>();
        for tiny in [1.0, 1e-6] {
            let what = format!("coop {s:?} dy x{tiny:e}");
            let gs: Vec<f64> = gv.iter().map(|v| v * tiny).collect();
            let (want_dx, want_dw, _) = conv_ref_grads(s, p, &xv, &wv, &gs);
            let (mag_dx, mag_dw, _) = conv_ref_grads(s, p, &abs(&xv), &abs(&wv), &abs(&gs));
            let x = upload(&g, &xv, &xs).requires_grad();
            let w = upload(&g, &wv, &ws).requires_grad();
            let (x16, w16) = (ops::cast(&x, DType::F16).unwrap(), ops::cast(&w, DType::F16).unwrap());
            let y = ops::conv2d_on_kernel(&x16, &w16, None, p, None, ops::ConvKernel::Coop).unwrap();
            let mut grads = equimodal::Gradients::new();
            y.backward_with(upload(&g, &gs, &[s.n, s.o, ho, wo]), &mut grads).unwrap();
            for (name, got, want, mag) in [("dx", grads.get(&x).unwrap(), &want_dx, &mag_dx), ("dw", grads.get(&w).unwrap(), &want_dw, &mag_dw)] {
                let got = got.to_vec().unwrap();
                for i in 0..want.len() {
                    let err = (got[i] as f64 - want[i]).abs();
                    assert!(err <= mag[i] * 2f64.powi(-11) + 1e-30, "{what}: {name}[{i}]: got {}, want {}, err {err:e} > {:e}", got[i], want[i], mag[i] * 2f64.powi(-11));
                }
            }
            assert_canaries(&what);
        }
    }
    // AIM's weight scales run the f32-arithmetic kernels only
    let (xs, ws) = xw_shapes(cases[0].0);
    let x16 = ops::cast(&upload(&g, &rng.normals(numel(&xs)), &xs), DType::F16).unwrap();
    let w16 = ops::cast(&upload(&g, &rng.normals(numel(&ws)), &ws), DType::F16).unwrap();
    let scale = upload(&g, &vec![1.0; numel(&ws)], &ws);
    assert!(ops::conv2d_on_kernel(&x16, &w16, None, cases[0].1, Some(&scale), ops::ConvKernel::Coop).is_err());
}
