// The convolution on cooperative matrices (tensor cores): the forward y = conv(x, w) as the
// implicit GEMM of conv.wgsl (M = N*HO*WO pixels, N = O channels, K = C*KH*KW), x and w f16,
// products accumulated in f32, the forward's epilogue (conv_params.wgsl: bias, batch norm with
// fixed statistics, residual, ReLU, f16 rounding) and batch norm's partial statistics of y as
// the f32-arithmetic tiles give them. Compiled only on adapters with cooperative matrices
// (16x16x16, f16 inputs, f32 accumulators), shader f16, and subgroups of exactly 32
// (src/gpu/shaders.rs puts the `enable` directives in front); `ops::conv` offers it to the
// tuner for forwards of f16 x and w without a weight scale.
//
// conv_fwd_coop: coop_tile.wgsl's 64 x 64 tile (pixels x channels). Per K-slice of 32 the
// workgroup stages the im2col tile of x (64 pixels x 32 taps, zero in the padding and past
// the edges) and w's 32 x 64 in workgroup memory as f16, fetched into registers one slice
// ahead (while the previous slice is multiplied), then runs coop_slice. Staging: a
// thread keeps one pixel (lid % 64: consecutive threads read consecutive pixels, coalesced
// along a row of the image) and stages 16 of the slice's taps; a tap's (channel, kernel row, kernel column) is
// decoded once per slice into a table by 32 threads, as conv.wgsl does. The accumulators go
// through workgroup memory to the epilogue and a guarded store, consecutive threads on
// consecutive pixels (coalesced: pixels of a channel are contiguous in y), or pairs of them as
// f16 words.
//
// The gradients' GEMMs (conv_dx_coop, conv_dw_coop) follow at the end, with dy scaled per
// tensor into f16's range.
//
// Not yet: vector loads, weight scales (AIM's masks run the f32-arithmetic tiles).

@group(0) @binding(11) var<storage, read> xh: array<f16>;
@group(0) @binding(12) var<storage, read> wh: array<f16>;

var<workgroup> ktab: array<vec4<i32>, KS>; // the K-slice's decoded indices (conv_params.wgsl)
var<workgroup> stat: array<f32, TN>; // a column's mean, between the two passes of coop_stats

// Batch norm's partial statistics of the tile (flags bit 5), from Cs: per channel, the mean of
// the tile's valid pixels, then the sum of squared deviations from it (no cancellation), in
// a fixed order; the layout of conv.wgsl's tile_stats with row tiles of TM. Every thread must
// call it (barriers).
fn coop_stats(lid: u32, m0: u32, n0: u32, tile: u32) {
    let rows = min(TM, p.m - m0);
    let o = n0 + lid;
    let on = lid < TN && o < p.o;
    if (on) {
        var s = 0.0;
        for (var r = 0u; r < rows; r = r + 1u) {
            s = s + biased(Cs[r * CS_STRIDE + lid], o);
        }
        stat[lid] = s / f32(rows);
    }
    workgroupBarrier();
    if (on) {
        let mean = stat[lid];
        var q = 0.0;
        for (var r = 0u; r < rows; r = r + 1u) {
            let d = biased(Cs[r * CS_STRIDE + lid], o) - mean;
            q = q + d * d;
        }
        let tiles = (p.m + TM - 1u) / TM;
        let at = o * tiles + tile;
        fpart[at] = mean;
        fpart[p.o * tiles + at] = q;
    }
}

// A slice's registers into As and Bs: A's row lid % 64, K columns lid / 64 + 2 r (each
// kernel's A loader keeps one row per thread); B's element f = 128 r + lid, with K fastest
// (`k_fast`: the forward's w, dW's dy: consecutive threads on consecutive K) or N fastest
// (dX's w: consecutive threads on consecutive channels).
fn stage(lid: u32, k_fast: bool) {
    let lm = lid % TM;
    let kq = lid / TM;
    for (var r = 0u; r < 16u; r = r + 1u) {
        let f = r * 128u + lid;
        var bk = f / TN;
        var bn = f % TN;
        if (k_fast) {
            bk = f % KS;
            bn = f / KS;
        }
        As[lm * AS_STRIDE + kq + 2u * r] = ra[r];
        Bs[bk * BS_STRIDE + bn] = rb[r];
    }
}

@compute @workgroup_size(128)
fn conv_fwd_coop(@builtin(workgroup_id) wg_in: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let wg = tile_id(wg_in);
    let m0 = wg.x * TM;
    let n0 = wg.y * TN;
    let hwo = p.ho * p.wo;
    // this thread's pixel (staging): row lm of the tile, taps kq + 2 r of each slice
    let lm = lid % TM;
    let kq = lid / TM;
    let am = m0 + lm;
    let a_ok = am < p.m;
    let an = am / hwo;
    let apix = am - an * hwo;
    let aho = apix / p.wo;
    let xbase = an * p.c * p.h * p.w;
    let hi0 = i32(aho * p.sh) - i32(p.ph);
    let wi0 = i32((apix - aho * p.wo) * p.sw) - i32(p.pw);
    let q = coop_quarter(lid);
    coop_zero();
    let slices = (p.k + KS - 1u) / KS;
    // slice t's K entries are in ktab while slice t is fetched (into coop_tile.wgsl's ra, rb)
    if (lid < KS) {
        ktab[lid] = fwd_entry(lid);
    }
    workgroupBarrier();
    for (var t = 0u; t <= slices; t = t + 1u) {
        // fetch slice t: its loads are in flight while slice t - 1 is multiplied
        if (t < slices) {
            let k0 = t * KS;
            for (var r = 0u; r < 16u; r = r + 1u) {
                // x: pixel lm, tap kq + 2 r
                let ak = kq + 2u * r;
                let e = ktab[ak];
                let hi = hi0 + e.y;
                let wi = wi0 + e.z;
                var v = f16(0.0);
                if (a_ok && hi >= 0 && hi < i32(p.h) && wi >= 0 && wi < i32(p.w)) {
                    v = xh[xbase + u32(e.x) + u32(hi) * p.w + u32(wi)];
                }
                ra[r] = v;
                // w [O, K]: consecutive threads on consecutive taps of one channel
                let f = r * 128u + lid;
                let bk = f % KS;
                let bn = f / KS;
                let o = n0 + bn;
                var u = f16(0.0);
                if (k0 + bk < p.k && o < p.o) {
                    u = wh[o * p.k + k0 + bk];
                }
                rb[r] = u;
            }
        }
        if (t > 0u) {
            coop_slice(q);
        }
        workgroupBarrier(); // the multiply is done with As and Bs, the fetch with ktab
        if (t < slices) {
            stage(lid, true);
            if (lid < KS) {
                ktab[lid] = fwd_entry((t + 1u) * KS + lid);
            }
        }
        workgroupBarrier();
    }
    coop_store(q);
    workgroupBarrier();
    if ((p.flags & 32u) != 0u) {
        coop_stats(lid, m0, n0, wg.x);
    }
    if ((p.flags & 64u) != 0u) {
        // y as f16 words: pairs of neighbouring pixels, consecutive threads on consecutive pairs
        for (var r = 0u; r < 16u; r = r + 1u) {
            let f = r * 128u + lid;
            let lo = f / (TM / 2u);
            let lp = 2u * (f - lo * (TM / 2u));
            store_pair(m0 + lp, n0 + lo, Cs[lp * CS_STRIDE + lo], Cs[(lp + 1u) * CS_STRIDE + lo]);
        }
        return;
    }
    // the epilogue and the guarded store: 32 values per thread, consecutive threads on
    // consecutive pixels of one channel
    for (var r = 0u; r < 32u; r = r + 1u) {
        let f = r * 128u + lid;
        let lp = f % TM;
        let lo = f / TM;
        let m = m0 + lp;
        let o = n0 + lo;
        if (m < p.m && o < p.o) {
            let n = m / hwo;
            let at = n * p.o * hwo + o * hwo + (m - n * hwo);
            fy[at] = epilogue(Cs[lp * CS_STRIDE + lo], o, at);
        }
    }
}

// ---------------------------------------------------------------- the gradients ----------
// dy enters the tensor cores as f16 after coop_tile.wgsl's per-tensor scale (coop_scale, from
// max |dy|, which the host computes with elementwise.wgsl's abs_max_bits); the sums are
// multiplied back by 1/s in the store.

// conv_dx_coop: dX as conv.wgsl's conv_dx decomposes it (one grid z per stride phase: the
// phase's pixels x C, K = O * the phase's taps), on coop_tile.wgsl's 64 x 64 tile: A is dy
// scaled to f16 (a thread keeps one pixel of the phase image and stages 16 of the slice's K
// entries, decoded once per slice into ktab), B is w (f16). dX is f32.
@group(0) @binding(1) var<storage, read> dx_dy: array<f32>;
@group(0) @binding(2) var<storage, read> dx_w: array<f16>;
@group(0) @binding(3) var<storage, read> dx_max: array<u32>;
@group(0) @binding(4) var<storage, read_write> dx_out: array<f32>;

@compute @workgroup_size(128)
fn conv_dx_coop(@builtin(workgroup_id) wg_in: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let wg = tile_id(wg_in);
    let q = phase_of(wg.z);
    let php = q.hp * q.wp;
    let mp = p.n * php;
    let m0 = wg.x * TM;
    if (m0 >= mp) {
        return; // workgroup-uniform: this phase has fewer tiles than the largest
    }
    let n0 = wg.y * TN;
    let s = coop_scale(dx_max[0]);
    let hwo = p.ho * p.wo;
    let kkw = p.kh * p.kw;
    // this thread's pixel of the phase image (staging)
    let lm = lid % TM;
    let kq = lid / TM;
    let am = m0 + lm;
    let a_ok = am < mp;
    let apx = phase_pixel(q, am);
    let ahp = i32(apx.y);
    let awp = i32(apx.z);
    let dybase = apx.x * p.o * hwo;
    let quarter = coop_quarter(lid);
    coop_zero();
    let slices = (q.kp + KS - 1u) / KS;
    // slice t's K entries are in ktab while slice t is fetched (into coop_tile.wgsl's ra, rb)
    if (lid < KS) {
        ktab[lid] = dx_entry(q, lid);
    }
    workgroupBarrier();
    for (var t = 0u; t <= slices; t = t + 1u) {
        // fetch slice t: its loads are in flight while slice t - 1 is multiplied
        if (t < slices) {
            let k0 = t * KS;
            for (var r = 0u; r < 16u; r = r + 1u) {
                let ak = kq + 2u * r;
                let e = ktab[ak];
                let ho = ahp + e.y;
                let wo = awp + e.z;
                var v = 0.0;
                if (a_ok && ho >= 0 && ho < i32(p.ho) && wo >= 0 && wo < i32(p.wo)) {
                    v = dx_dy[dybase + u32(e.x) + u32(ho) * p.wo + u32(wo)] * s;
                }
                ra[r] = f16(v);
                // w: K entry bk (o, tap), channel c; consecutive threads on consecutive channels
                let f = r * 128u + lid;
                let bn = f % TN;
                let bk = f / TN;
                let eb = ktab[bk];
                let c = n0 + bn;
                var u = f16(0.0);
                if (eb.w >= 0 && c < p.c) {
                    u = dx_w[u32(eb.w) + c * kkw];
                }
                rb[r] = u;
            }
        }
        if (t > 0u) {
            coop_slice(quarter);
        }
        workgroupBarrier(); // the multiply is done with As and Bs, the fetch with ktab
        if (t < slices) {
            stage(lid, false);
            if (lid < KS) {
                ktab[lid] = dx_entry(q, (t + 1u) * KS + lid);
            }
        }
        workgroupBarrier();
    }
    coop_store(quarter);
    workgroupBarrier();
    // dx[n, c, h, w], h = hp*sh + ph, w = wp*sw + pw: consecutive threads on consecutive pixels
    let inv = 1.0 / s;
    let hw = p.h * p.w;
    for (var r = 0u; r < 32u; r = r + 1u) {
        let f = r * 128u + lid;
        let lp = f % TM;
        let lc = f / TM;
        let m = m0 + lp;
        let c = n0 + lc;
        if (m < mp && c < p.c) {
            dx_out[dx_base(q, m) + c * hw] = Cs[lp * CS_STRIDE + lc] * inv;
        }
    }
}

// conv_dw_coop: dW as conv.wgsl's conv_dw sets it (rows m = (c, kh, kw), columns o, K the
// N*HO*WO pixels, split-K over grid z into part[z][o][m], or straight into dW when there is
// one split), on coop_tile.wgsl's tile: A is x's im2col (f16; a thread keeps one weight row,
// decoded once, and stages 16 of the slice's pixels, decoded once per slice into ktab), B is
// dy scaled to f16 (consecutive threads on consecutive pixels: coalesced).
@group(0) @binding(1) var<storage, read> dw_x: array<f16>;
@group(0) @binding(2) var<storage, read> dw_dy: array<f32>;
@group(0) @binding(3) var<storage, read> dw_max: array<u32>;
@group(0) @binding(4) var<storage, read_write> dw_out: array<f32>;

@compute @workgroup_size(128)
fn conv_dw_coop(@builtin(workgroup_id) wg_in: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let wg = tile_id(wg_in);
    let m0 = wg.x * TM;
    let n0 = wg.y * TN;
    let kstart = wg.z * p.chunk;
    let kend = min(kstart + p.chunk, p.k);
    let s = coop_scale(dw_max[0]);
    let hwo = p.ho * p.wo;
    let kkw = p.kh * p.kw;
    // this thread's weight row (staging): (c*H*W, kh*dh, kw*dw), or pushed out of the image
    let lm = lid % TM;
    let kq = lid / TM;
    let am = m0 + lm;
    var mi = vec3<i32>(0, BIG, 0);
    if (am < p.m) {
        let c = am / kkw;
        let rr = am - c * kkw;
        let i = rr / p.kw;
        mi = vec3<i32>(i32(c * p.h * p.w), i32(i * p.dh), i32((rr - i * p.kw) * p.dw));
    }
    let quarter = coop_quarter(lid);
    coop_zero();
    let slices = (kend - min(kstart, kend) + KS - 1u) / KS;
    // slice t's K entries are in ktab while slice t is fetched (into coop_tile.wgsl's ra, rb)
    if (lid < KS) {
        ktab[lid] = dw_entry(kstart + lid, kend);
    }
    workgroupBarrier();
    for (var t = 0u; t <= slices; t = t + 1u) {
        // fetch slice t: its loads are in flight while slice t - 1 is multiplied
        if (t < slices) {
            let k0 = kstart + t * KS;
            for (var r = 0u; r < 16u; r = r + 1u) {
                let ak = kq + 2u * r;
                let e = ktab[ak];
                let hi = e.y + mi.y;
                let wi = e.z + mi.z;
                var v = f16(0.0);
                if (hi >= 0 && hi < i32(p.h) && wi >= 0 && wi < i32(p.w)) {
                    v = dw_x[u32(e.x + mi.x) + u32(hi) * p.w + u32(wi)];
                }
                ra[r] = v;
                let f = r * 128u + lid;
                let bk = f % KS;
                let bn = f / KS;
                let eb = ktab[bk];
                let o = n0 + bn;
                var u = 0.0;
                if (eb.w >= 0 && o < p.o) {
                    u = dw_dy[u32(eb.w) + o * hwo] * s;
                }
                rb[r] = f16(u);
            }
        }
        if (t > 0u) {
            coop_slice(quarter);
        }
        workgroupBarrier(); // the multiply is done with As and Bs, the fetch with ktab
        if (t < slices) {
            stage(lid, true);
            if (lid < KS) {
                ktab[lid] = dw_entry(kstart + (t + 1u) * KS + lid, kend);
            }
        }
        workgroupBarrier();
    }
    coop_store(quarter);
    workgroupBarrier();
    // part[z][o][m] (or dW[o][m]): consecutive threads on consecutive weight rows
    let inv = 1.0 / s;
    var base = wg.z * p.o * p.m;
    if (p.direct != 0u) {
        base = 0u;
    }
    for (var r = 0u; r < 32u; r = r + 1u) {
        let f = r * 128u + lid;
        let lr = f % TM;
        let lo = f / TM;
        let m = m0 + lr;
        let o = n0 + lo;
        if (m < p.m && o < p.o) {
            dw_out[base + o * p.m + m] = Cs[lr * CS_STRIDE + lo] * inv;
        }
    }
}
