// 2-D convolution (PyTorch semantics, zero padding) as implicit GEMM: no im2col buffer is
// ever materialised; the tile loaders compute input coordinates on the fly.
//
//   conv_fwd : y[n,o,ho,wo]      GEMM  M = N*HO*WO, N = O, K = C*KH*KW
//   conv_dx  : dx[n,c,h,w]       GEMM  M = N*H*W (one stride phase per grid z), N = C,
//                                      K = O*(taps of that phase)   (transposed conv)
//   conv_dw  : dW[o,c,kh,kw]     GEMM  M = C*KH*KW, N = O, K = N*HO*WO, split-K over grid z
//   conv_dw_reduce : sums the split-K partials (fixed order: deterministic), applies w_scale
//   conv_dbias     : dbias[o] = sum over n, ho, wo of dy
//
// Tiling shared by the three GEMMs: workgroup tile BM x BN, K-slices of BK staged in
// workgroup memory (double-buffered), each thread accumulating OUT_M x OUT_N outputs in
// registers. The tile is the variant block below, which src/gpu/shaders.rs replaces per
// instantiation (`ConvTile`) together with the tile's own fragment: conv_strided.wgsl (the
// convolution's own tiles: 128 x 64 in this file's block, and the narrower 128 x 32, 128 x 16,
// 32 x 16 for GEMMs whose N, output or input channels, or whose M, the weight gradient's
// C*KH*KW, is small) or conv_core.wgsl (the shared f32 GEMM core of gemm_core.wgsl). The
// loaders below only stage values (put_m, put_n) and read outputs (out_m, out_n, acc_at):
// they are the same for every tile.
//
// The K index is decoded (div/mod by kernel and image sizes) once per K-slice by BK
// threads into a small table `tbl` in workgroup memory (three slots, two slices ahead)
// rather than by every loading thread; the per-thread M coordinates are decoded once per
// kernel.
//
// Pipelining: step i of the K loop fetches slice i from global memory into registers, then
// multiplies slice i - 1 (already in workgroup memory), then stores slice i into the other
// buffer, decodes slice i + 2 and meets the one barrier of the step; the global loads of a
// slice are in flight while the previous one is multiplied.
//
// Bounds: every global load and store is explicitly guarded (M, N and K tails, padding),
// so the kernels are correct with runtime bounds checks off. Invalid table entries use a
// large offset (BIG) that pushes the coordinate out of range instead of a second test.
//
// The interior form (INTERIOR): the host launches it on the workgroups whose tile lies inside
// M and N, for a GEMM whose K-slices are all whole, and the guarded form on the edge tiles
// (`ops::conv`, `ConvKernel::Interior`). There the M, N and K range tests are constant true
// and the driver drops them, and the forward loads f32 weights as vec4s along K (rows of
// C*KH*KW, a multiple of the slice and so of 4: 16 aligned bytes). The padding tests of the
// gather stay: a 3x3, pad-1 convolution reads padding in every M tile. The same values are
// multiplied in the same order, so both forms give the same bits.

// The parameter block, the forward's epilogue and its operands: conv_params.wgsl, in front.

// w_scale: each GEMM has two entry points calling one body with a constant `scaled`
// argument (`conv_fwd` / `conv_fwd_scaled`, ...), so the driver folds the scale load away
// when there is no scale. (Override constants would do the same, as in matmul.wgsl; the
// shader test translates every form of those.) The bias add is one uniform branch in the
// epilogue.

// Mixed precision's f16 operands (packed two per word, widened exactly as they are loaded;
// the products stay f32): x (forward, dW) and w (forward, dX). Each GEMM binds the f16 view
// of such an operand a second time, as array<u32> (forward: bindings 11 and 12, dX and dW:
// binding 5). The gradient dy is always f32.
override HALF_X: bool = false;
override HALF_W: bool = false;
override INTERIOR: bool = false;
// @variant-begin
const TX: u32 = 32u; // threads along M; a thread's rows are tx + TX*i, i < 4
const TY: u32 = 8u;  // threads along N; a thread's columns are ty + TY*j, j < TN
const TN: u32 = 8u;  // outputs per thread along N
// @variant-end
// (src/gpu/shaders.rs checks every instantiation against the constraints: NT a multiple of BM
// and of BK, BK*BN a multiple of NT, NT >= BN)
// Staging of a K-slice by the NT threads: a thread stages A_PER values of the A tile and
// B_PER of the B tile. Where M is the fast index of a loader (forward and dX A tiles) its
// values lie M_STEP K rows apart; where K is (B tiles, dW's A tile), K_STEP tile rows or
// columns apart.
const M_STEP: u32 = NT / BM;
const K_STEP: u32 = NT / BK;
const A_PER: u32 = BK * BM / NT;
const B_PER: u32 = BK * BN / NT;
// The interior forward's vec4 weight loads: a K-slice of one weight row is KQ vec4s; thread
// lid fetches vec4 lid % KQ of columns lid / KQ + W4_STEP*r (r < B_PER / 4), where each
// thread's share of the slice is whole vec4s (W4).
const KQ: u32 = BK / 4u;
const W4_STEP: u32 = NT / KQ;
const W4: bool = B_PER % 4u == 0u;

var<workgroup> tbl: array<vec4<i32>, 3u * BK>; // three K-slice decode tables: slot i % 3 is slice i
// the slice this thread fetched from global memory, on its way to workgroup memory
var<private> ra: array<f32, A_PER>;
var<private> rb: array<f32, B_PER>;

// Store the fetched slice (ra, rb) into buffer `buf`, for the loaders whose A values run
// along M (forward and dX: K rows ka + M_STEP*r of tile row lm; B: K row kb, columns
// nb + K_STEP*r).
fn store_slice(buf: u32, ka: u32, lm: u32, kb: u32, nb: u32) {
    store_a(buf, ka, lm);
    for (var r = 0u; r < B_PER; r = r + 1u) {
        put_n(buf, kb, nb + K_STEP * r, rb[r]);
    }
}

fn store_a(buf: u32, ka: u32, lm: u32) {
    for (var r = 0u; r < A_PER; r = r + 1u) {
        put_m(buf, ka + M_STEP * r, lm, ra[r]);
    }
}

// ---------------------------------------------------------------- forward ----------------
@group(0) @binding(1) var<storage, read> fx: array<f32>;
@group(0) @binding(2) var<storage, read> fw: array<f32>;
@group(0) @binding(4) var<storage, read> fscale: array<f32>;
@group(0) @binding(11) var<storage, read> fxh: array<u32>;
@group(0) @binding(12) var<storage, read> fwh: array<u32>;
// w again, as vec4s (the host binds the same range as binding 2): the interior form's loads.
@group(0) @binding(15) var<storage, read> fw4: array<vec4<f32>>;

// x[i] and w[i] of the forward as f32.
fn fwd_x(i: u32) -> f32 {
    if (HALF_X) {
        return unpack2x16float(fxh[i >> 1u])[i & 1u];
    }
    return fx[i];
}

fn fwd_w(i: u32) -> f32 {
    if (HALF_W) {
        return unpack2x16float(fwh[i >> 1u])[i & 1u];
    }
    return fw[i];
}

// Whether the forward fetches its weights as vec4s (the interior form, f32 weights).
fn w4_loads() -> bool {
    return INTERIOR && W4 && !HALF_W;
}

// The interior forward's weights of K-slice t (w4_loads): vec4 kq of the slice's row of
// output channel n0 + nq + W4_STEP*r, into rb[4r..4r+3] (K rows 4kq..4kq+3); scaled the
// same way as the scalar loads.
fn fetch_w4(t: u32, n0: u32, lid: u32, ktot: u32, scaled: bool) {
    let kq = lid % KQ;
    let nq = lid / KQ;
    for (var r = 0u; r < B_PER / 4u; r = r + 1u) {
        let wi = (n0 + nq + W4_STEP * r) * ktot + t * BK + 4u * kq;
        var v = fw4[wi / 4u];
        if (scaled) {
            v = v * vec4<f32>(fscale[wi], fscale[wi + 1u], fscale[wi + 2u], fscale[wi + 3u]);
        }
        for (var e = 0u; e < 4u; e = e + 1u) {
            rb[4u * r + e] = v[e];
        }
    }
}

// Stage what fetch_w4 fetched into buffer buf.
fn store_w4(buf: u32, lid: u32) {
    let kq = lid % KQ;
    let nq = lid / KQ;
    for (var r = 0u; r < B_PER / 4u; r = r + 1u) {
        for (var e = 0u; e < 4u; e = e + 1u) {
            put_n(buf, 4u * kq + e, nq + W4_STEP * r, rb[4u * r + e]);
        }
    }
}

// Batch norm's partial statistics of this tile's outputs, into fpart: per channel, the mean
// of the tile's valid rows, then the sum of squared deviations from it (two passes over the
// registers: no cancellation); each reduced over the LANES threads that share a column in
// the tile's scratch, in a fixed order. Every thread must call it (barriers).
fn tile_stats(lid: u32, m0: u32, n0: u32, tile: u32) {
    let rows = min(BM, p.m - m0);
    for (var j = 0u; j < OUT_N; j = j + 1u) {
        let col = out_n(lid, j);
        let o = n0 + col;
        var s = 0.0;
        for (var i = 0u; i < OUT_M; i = i + 1u) {
            if (o < p.o && out_m(lid, i) < rows) {
                s = s + biased(acc_at(i, j), o);
            }
        }
        stat_put(col * LANES + lane(lid), s);
    }
    workgroupBarrier();
    if (lid < BN) {
        var s = 0.0;
        for (var t = 0u; t < LANES; t = t + 1u) {
            s = s + stat_get(lid * LANES + t);
        }
        mean_put(lid, s / f32(rows));
    }
    workgroupBarrier();
    for (var j = 0u; j < OUT_N; j = j + 1u) {
        let col = out_n(lid, j);
        let o = n0 + col;
        let mean = mean_get(col);
        var q = 0.0;
        for (var i = 0u; i < OUT_M; i = i + 1u) {
            if (o < p.o && out_m(lid, i) < rows) {
                let d = biased(acc_at(i, j), o) - mean;
                q = q + d * d;
            }
        }
        stat_put(col * LANES + lane(lid), q);
    }
    workgroupBarrier();
    let o = n0 + lid;
    if (lid < BN && o < p.o) {
        var q = 0.0;
        for (var t = 0u; t < LANES; t = t + 1u) {
            q = q + stat_get(lid * LANES + t);
        }
        let tiles = (p.m + BM - 1u) / BM;
        let at = o * tiles + tile;
        fpart[at] = mean_get(lid);
        fpart[p.o * tiles + at] = q;
    }
}

// The forward's store where a thread's outputs i = 4g..4g+3 are 4 neighbouring rows starting
// at a multiple of 4 (Y4) and H*W of y is a multiple of 4: one vec4 per group and channel,
// the same epilogue per value.
fn store_y4(lid: u32, m0: u32, n0: u32) {
    let hwo = p.ho * p.wo;
    for (var g = 0u; g < OUT_M / 4u; g = g + 1u) {
        let m = m0 + out_m(lid, 4u * g);
        // M = N*H*W is a multiple of 4 here, so the group lies inside M whole or not at all
        if (INTERIOR || m < p.m) {
            let n = m / hwo;
            let base = n * p.o * hwo + (m - n * hwo);
            for (var j = 0u; j < OUT_N; j = j + 1u) {
                let o = n0 + out_n(lid, j);
                if (INTERIOR || o < p.o) {
                    let at = base + o * hwo;
                    var v: vec4<f32>;
                    for (var e = 0u; e < 4u; e = e + 1u) {
                        v[e] = epilogue(acc_at(4u * g + e, j), o, at + e);
                    }
                    fy4[at / 4u] = v;
                }
            }
        }
    }
}

@compute @workgroup_size(NT)
fn conv_fwd(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    fwd_body(tile_id(wg), lid, false);
}

@compute @workgroup_size(NT)
fn conv_fwd_scaled(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    fwd_body(tile_id(wg), lid, true);
}

fn fwd_body(wg: vec3<u32>, lid: u32, scaled: bool) {
    let m0 = wg.x * BM;
    let n0 = wg.y * BN;
    let hwo = p.ho * p.wo;
    let ktot = p.c * p.kh * p.kw;

    // A loader: this thread owns row lm of the tile, K rows ka + M_STEP*r.
    let lm = lid % BM;
    let ka = lid / BM;
    let am = m0 + lm;
    let a_ok = INTERIOR || am < p.m;
    let an = am / hwo;
    let apix = am - an * hwo;
    let aho = apix / p.wo;
    let awo = apix - aho * p.wo;
    let xbase = an * p.c * p.h * p.w;
    let hi0 = i32(aho * p.sh) - i32(p.ph);
    let wi0 = i32(awo * p.sw) - i32(p.pw);
    let hh = i32(p.h);
    let ww = i32(p.w);
    // B loader: K row kb (contiguous in w), N columns nb + K_STEP*r.
    let kb = lid % BK;
    let nb = lid / BK;

    zero_acc();
    if (lid < BK) {
        tbl[lid] = fwd_entry(lid);
        tbl[BK + lid] = fwd_entry(BK + lid);
    }
    workgroupBarrier();
    let ntiles = (ktot + BK - 1u) / BK;
    for (var t = 0u; t <= ntiles; t = t + 1u) {
        let fetch = t < ntiles;
        if (fetch) {
            let slot = (t % 3u) * BK;
            for (var r = 0u; r < A_PER; r = r + 1u) {
                let e = tbl[slot + ka + M_STEP * r];
                let hi = hi0 + e.y;
                let wi = wi0 + e.z;
                var v = 0.0;
                if (a_ok && hi >= 0 && hi < hh && wi >= 0 && wi < ww) {
                    v = fwd_x(xbase + u32(e.x) + u32(hi) * p.w + u32(wi));
                }
                ra[r] = v;
            }
            let kg = t * BK + kb;
            if (w4_loads()) {
                fetch_w4(t, n0, lid, ktot, scaled);
            } else {
                for (var r = 0u; r < B_PER; r = r + 1u) {
                    let o = n0 + nb + K_STEP * r;
                    var v = 0.0;
                    if (INTERIOR || (kg < ktot && o < p.o)) {
                        let wi = o * ktot + kg;
                        v = fwd_w(wi);
                        if (scaled) {
                            v = v * fscale[wi];
                        }
                    }
                    rb[r] = v;
                }
            }
        }
        if (t > 0u) {
            mma(lid, (t - 1u) % 2u);
        }
        if (fetch) {
            if (w4_loads()) {
                store_a(t % 2u, ka, lm);
                store_w4(t % 2u, lid);
            } else {
                store_slice(t % 2u, ka, lm, kb, nb);
            }
        }
        if (lid < BK) {
            tbl[((t + 2u) % 3u) * BK + lid] = fwd_entry((t + 2u) * BK + lid);
        }
        workgroupBarrier();
    }

    if ((p.flags & 32u) != 0u) {
        tile_stats(lid, m0, n0, wg.x);
    }
    if ((p.flags & 64u) != 0u) {
        half_store(lid, m0, n0);
        return;
    }
    if (Y4 && hwo % 4u == 0u) {
        store_y4(lid, m0, n0);
        return;
    }
    for (var i = 0u; i < OUT_M; i = i + 1u) {
        let m = m0 + out_m(lid, i);
        if (INTERIOR || m < p.m) {
            let n = m / hwo;
            let pix = m - n * hwo;
            let base = n * p.o * hwo + pix;
            for (var j = 0u; j < OUT_N; j = j + 1u) {
                let o = n0 + out_n(lid, j);
                if (INTERIOR || o < p.o) {
                    let at = base + o * hwo;
                    fy[at] = epilogue(acc_at(i, j), o, at);
                }
            }
        }
    }
}

// ---------------------------------------------------------------- dX ---------------------
// Transposed convolution, decomposed by stride phase so that no tap is wasted: input pixel
// h = hp*sh + ph receives from output row ho = hp + (ph + pad - kh*dil)/sh exactly for the
// kernel rows kh with (ph + pad - kh*dil) = 0 (mod sh); those form an arithmetic progression
// kh0, kh0 + step, ... (step = sh / gcd(sh, dil)). Grid z enumerates the sh*sw phases.
@group(0) @binding(1) var<storage, read> bdy: array<f32>;
@group(0) @binding(2) var<storage, read> bw: array<f32>;
@group(0) @binding(3) var<storage, read> bscale: array<f32>;
@group(0) @binding(4) var<storage, read_write> bdx: array<f32>;
@group(0) @binding(5) var<storage, read> bwh: array<u32>;
// dx again, as vec4s (the host binds the same range as binding 4): store_dx4's stores.
@group(0) @binding(6) var<storage, read_write> bdx4: array<vec4<f32>>;

// w[i] of dX as f32.
fn dx_w(i: u32) -> f32 {
    if (HALF_W) {
        return unpack2x16float(bwh[i >> 1u])[i & 1u];
    }
    return bw[i];
}

@compute @workgroup_size(NT)
fn conv_dx(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    dx_body(tile_id(wg), lid, false);
}

@compute @workgroup_size(NT)
fn conv_dx_scaled(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    dx_body(tile_id(wg), lid, true);
}

fn dx_body(wg: vec3<u32>, lid: u32, scaled: bool) {
    let q = phase_of(wg.z);
    let mp = p.n * q.hp * q.wp;
    let m0 = wg.x * BM;
    // workgroup-uniform exit: this phase has fewer tiles than the largest one
    if (m0 >= mp) {
        return;
    }
    let n0 = wg.y * BN;
    let hwo = p.ho * p.wo;
    let hw = p.h * p.w;
    let kkw = p.kh * p.kw;

    let lm = lid % BM;
    let ka = lid / BM;
    let am = m0 + lm;
    let a_ok = INTERIOR || am < mp;
    let apx = phase_pixel(q, am);
    let ahp = apx.y;
    let awp = apx.z;
    let dybase = apx.x * p.o * hwo;
    let hoi = i32(p.ho);
    let woi = i32(p.wo);
    let kb = lid % BK;
    let nb = lid / BK;

    zero_acc();
    if (lid < BK) {
        tbl[lid] = dx_entry(q, lid);
        tbl[BK + lid] = dx_entry(q, BK + lid);
    }
    workgroupBarrier();
    let ntiles = (q.kp + BK - 1u) / BK;
    for (var t = 0u; t <= ntiles; t = t + 1u) {
        let fetch = t < ntiles;
        if (fetch) {
            let slot = (t % 3u) * BK;
            for (var r = 0u; r < A_PER; r = r + 1u) {
                let e = tbl[slot + ka + M_STEP * r];
                let ho = i32(ahp) + e.y;
                let wo = i32(awp) + e.z;
                var v = 0.0;
                if (a_ok && ho >= 0 && ho < hoi && wo >= 0 && wo < woi) {
                    v = bdy[dybase + u32(e.x) + u32(ho) * p.wo + u32(wo)];
                }
                ra[r] = v;
            }
            let eb = tbl[slot + kb];
            for (var r = 0u; r < B_PER; r = r + 1u) {
                let c = n0 + nb + K_STEP * r;
                var v = 0.0;
                if (INTERIOR || (eb.w >= 0 && c < p.c)) {
                    let wi = u32(eb.w) + c * kkw;
                    v = dx_w(wi);
                    if (scaled) {
                        v = v * bscale[wi];
                    }
                }
                rb[r] = v;
            }
        }
        if (t > 0u) {
            mma(lid, (t - 1u) % 2u);
        }
        if (fetch) {
            store_slice(t % 2u, ka, lm, kb, nb);
        }
        if (lid < BK) {
            tbl[((t + 2u) % 3u) * BK + lid] = dx_entry(q, (t + 2u) * BK + lid);
        }
        workgroupBarrier();
    }

    // stride 1 (one phase: rows m are the pixels of dx in order) with H*W a multiple of 4:
    // four neighbouring rows are four neighbouring addresses, stored as one vec4
    if (Y4 && p.sh == 1u && p.sw == 1u && hw % 4u == 0u) {
        store_dx4(lid, m0, n0);
        return;
    }
    for (var i = 0u; i < OUT_M; i = i + 1u) {
        let m = m0 + out_m(lid, i);
        if (INTERIOR || m < mp) {
            let base = dx_base(q, m);
            for (var j = 0u; j < OUT_N; j = j + 1u) {
                let c = n0 + out_n(lid, j);
                if (INTERIOR || c < p.c) {
                    bdx[base + c * hw] = acc_at(i, j);
                }
            }
        }
    }
}

// dX's store at stride 1 where H*W is a multiple of 4 (see store_y4): M = N*H*W is then a
// multiple of 4 too, so a group of 4 rows lies inside M whole or not at all, and inside
// one image.
fn store_dx4(lid: u32, m0: u32, n0: u32) {
    let hw = p.h * p.w;
    for (var g = 0u; g < OUT_M / 4u; g = g + 1u) {
        let m = m0 + out_m(lid, 4u * g);
        if (INTERIOR || m < p.n * hw) {
            let n = m / hw;
            let base = n * p.c * hw + (m - n * hw);
            for (var j = 0u; j < OUT_N; j = j + 1u) {
                let c = n0 + out_n(lid, j);
                if (INTERIOR || c < p.c) {
                    let g4 = 4u * g;
                    bdx4[(base + c * hw) / 4u] = vec4<f32>(acc_at(g4, j), acc_at(g4 + 1u, j), acc_at(g4 + 2u, j), acc_at(g4 + 3u, j));
                }
            }
        }
    }
}

// ---------------------------------------------------------------- dW ---------------------
// dW^T as GEMM: rows = weight index (c, kh, kw), columns = o, reduction over (n, ho, wo).
// Grid z = split: split z reduces over [z*chunk, min((z+1)*chunk, K)) and writes its
// partial to part[z][o][row] (direct = 1: one split, written straight into dW with scale).
@group(0) @binding(1) var<storage, read> gx: array<f32>;
@group(0) @binding(2) var<storage, read> gdy: array<f32>;
@group(0) @binding(3) var<storage, read> gscale: array<f32>;
@group(0) @binding(4) var<storage, read_write> gpart: array<f32>;
@group(0) @binding(5) var<storage, read> gxh: array<u32>;
// the partials (or dW) again, as vec4s (the host binds the same range as binding 4)
@group(0) @binding(6) var<storage, read_write> gpart4: array<vec4<f32>>;

// x[i] of dW as f32.
fn dw_x(i: u32) -> f32 {
    if (HALF_X) {
        return unpack2x16float(gxh[i >> 1u])[i & 1u];
    }
    return gx[i];
}

@compute @workgroup_size(NT)
fn conv_dw(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    dw_body(tile_id(wg), lid, false);
}

@compute @workgroup_size(NT)
fn conv_dw_scaled(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    dw_body(tile_id(wg), lid, true);
}

fn dw_body(wg: vec3<u32>, lid: u32, scaled: bool) {
    let m0 = wg.x * BM;
    let n0 = wg.y * BN;
    let z = wg.z;
    let kstart = z * p.chunk;
    let kend = min(kstart + p.chunk, p.k);
    let hwo = p.ho * p.wo;
    let kkw = p.kh * p.kw;
    let hh = i32(p.h);
    let ww = i32(p.w);

    // A loader: K (pixel) row kl = lid % BK (consecutive threads read consecutive output
    // pixels), tile rows lm + K_STEP*r whose (c, kh, kw) decode is done once here.
    let kl = lid % BK;
    let lm = lid / BK;
    var mi: array<vec4<i32>, A_PER>;
    for (var r = 0u; r < A_PER; r = r + 1u) {
        let m = m0 + lm + K_STEP * r;
        if (INTERIOR || m < p.m) {
            let c = m / kkw;
            let rr = m - c * kkw;
            let i = rr / p.kw;
            let j = rr - i * p.kw;
            mi[r] = vec4<i32>(i32(c * p.h * p.w), i32(i * p.dh), i32(j * p.dw), 1);
        } else {
            mi[r] = vec4<i32>(0, BIG, 0, 0);
        }
    }

    zero_acc();
    if (lid < BK) {
        tbl[lid] = dw_entry(kstart + lid, kend);
        tbl[BK + lid] = dw_entry(kstart + BK + lid, kend);
    }
    workgroupBarrier();
    let ntiles = (kend - min(kstart, kend) + BK - 1u) / BK;
    for (var t = 0u; t <= ntiles; t = t + 1u) {
        let fetch = t < ntiles;
        if (fetch) {
            let e = tbl[(t % 3u) * BK + kl];
            for (var r = 0u; r < A_PER; r = r + 1u) {
                let f = mi[r];
                let hi = e.y + f.y;
                let wi = e.z + f.z;
                var v = 0.0;
                if (hi >= 0 && hi < hh && wi >= 0 && wi < ww) {
                    v = dw_x(u32(e.x + f.x) + u32(hi) * p.w + u32(wi));
                }
                ra[r] = v;
            }
            for (var r = 0u; r < B_PER; r = r + 1u) {
                let o = n0 + lm + K_STEP * r;
                var v = 0.0;
                if (INTERIOR || (e.w >= 0 && o < p.o)) {
                    v = gdy[u32(e.w) + o * hwo];
                }
                rb[r] = v;
            }
        }
        if (t > 0u) {
            mma(lid, (t - 1u) % 2u);
        }
        if (fetch) {
            let buf = t % 2u;
            for (var r = 0u; r < A_PER; r = r + 1u) {
                put_m(buf, kl, lm + K_STEP * r, ra[r]);
            }
            for (var r = 0u; r < B_PER; r = r + 1u) {
                put_n(buf, kl, lm + K_STEP * r, rb[r]);
            }
        }
        if (lid < BK) {
            tbl[((t + 2u) % 3u) * BK + lid] = dw_entry(kstart + (t + 2u) * BK + lid, kend);
        }
        workgroupBarrier();
    }

    let per = p.o * p.m;
    // rows m of dW are neighbouring addresses: with C*KH*KW a multiple of 4 each group of
    // four is one vec4 (of dW, or of a partial: per is a multiple of 4 too)
    if (Y4 && p.m % 4u == 0u) {
        for (var g = 0u; g < OUT_M / 4u; g = g + 1u) {
            let m = m0 + out_m(lid, 4u * g);
            if (INTERIOR || m < p.m) {
                for (var j = 0u; j < OUT_N; j = j + 1u) {
                    let o = n0 + out_n(lid, j);
                    if (INTERIOR || o < p.o) {
                        let idx = o * p.m + m;
                        let g4 = 4u * g;
                        var v = vec4<f32>(acc_at(g4, j), acc_at(g4 + 1u, j), acc_at(g4 + 2u, j), acc_at(g4 + 3u, j));
                        if (p.direct != 0u) {
                            if (scaled) {
                                v = v * vec4<f32>(gscale[idx], gscale[idx + 1u], gscale[idx + 2u], gscale[idx + 3u]);
                            }
                            gpart4[idx / 4u] = v;
                        } else {
                            gpart4[(z * per + idx) / 4u] = v;
                        }
                    }
                }
            }
        }
        return;
    }
    for (var i = 0u; i < OUT_M; i = i + 1u) {
        let m = m0 + out_m(lid, i);
        if (INTERIOR || m < p.m) {
            for (var j = 0u; j < OUT_N; j = j + 1u) {
                let o = n0 + out_n(lid, j);
                if (INTERIOR || o < p.o) {
                    let idx = o * p.m + m;
                    var v = acc_at(i, j);
                    if (p.direct != 0u) {
                        if (scaled) {
                            v = v * gscale[idx];
                        }
                        gpart[idx] = v;
                    } else {
                        gpart[z * per + idx] = v;
                    }
                }
            }
        }
    }
}

// ---------------------------------------------------------------- split-K reduction ------
@group(0) @binding(1) var<storage, read> rpart: array<f32>;
@group(0) @binding(2) var<storage, read> rscale: array<f32>;
@group(0) @binding(3) var<storage, read_write> rdw: array<f32>;

@compute @workgroup_size(256)
fn conv_dw_reduce(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                  @builtin(local_invocation_index) lid: u32) {
    let i = flat_group(wg, nwg) * 256u + lid;
    let per = p.o * p.m;
    if (i >= per) {
        return;
    }
    var s = 0.0;
    for (var z = 0u; z < p.splits; z = z + 1u) {
        s = s + rpart[z * per + i];
    }
    if ((p.flags & 1u) != 0u) {
        s = s * rscale[i];
    }
    rdw[i] = s;
}

// ---------------------------------------------------------------- dbias ------------------
@group(0) @binding(1) var<storage, read> sdy: array<f32>;
@group(0) @binding(2) var<storage, read_write> sdb: array<f32>;

var<workgroup> red: array<f32, 256>;

// One workgroup per output channel: threads stride over the contiguous HO*WO plane of each
// image (coalesced), then a tree reduction in workgroup memory.
@compute @workgroup_size(256)
fn conv_dbias(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
              @builtin(local_invocation_index) lid: u32) {
    let o = flat_group(wg, nwg);
    // workgroup-uniform exit
    if (o >= p.o) {
        return;
    }
    let hwo = p.ho * p.wo;
    var s = 0.0;
    for (var n = 0u; n < p.n; n = n + 1u) {
        let base = (n * p.o + o) * hwo;
        for (var i = lid; i < hwo; i = i + 256u) {
            s = s + sdy[base + i];
        }
    }
    red[lid] = s;
    workgroupBarrier();
    for (var st = 128u; st > 0u; st = st / 2u) {
        if (lid < st) {
            red[lid] = red[lid] + red[lid + st];
        }
        workgroupBarrier();
    }
    if (lid == 0u) {
        sdb[o] = red[0];
    }
}
