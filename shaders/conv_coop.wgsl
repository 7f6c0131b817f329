// The convolution's forward on cooperative matrices (tensor cores): y = conv(x, w) as the
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
// the edges) and w's 32 x 64 in workgroup memory as f16, then runs coop_slice. Staging: a thread keeps one pixel
// (lid % 64: consecutive threads read consecutive pixels, coalesced along a row of the
// image) and stages 16 of the slice's taps; a tap's (channel, kernel row, kernel column) is
// decoded once per slice into a table by 32 threads, as conv.wgsl does. The accumulators go
// through workgroup memory to the epilogue and a guarded store, consecutive threads on
// consecutive pixels (coalesced: pixels of a channel are contiguous in y), or pairs of them as
// f16 words.
//
// Not yet: double-buffered staging, the backward's GEMMs (their dy operand would be f16:
// that needs loss scaling), weight scales (AIM's masks run the f32-arithmetic tiles).

@group(0) @binding(11) var<storage, read> xh: array<f16>;
@group(0) @binding(12) var<storage, read> wh: array<f16>;

const BIG: i32 = 536870912; // 2^29: pushes a coordinate out of range
var<workgroup> taps: array<vec4<i32>, KS>; // the slice's taps: (c*H*W, kh*dh, kw*dw)
var<workgroup> stat: array<f32, TN>; // a column's mean, between the two passes of coop_stats

// Tap k -> (c*H*W, kh*dh, kw*dw); past K -> a row pushed out of the image.
fn tap(k: u32) -> vec4<i32> {
    if (k >= p.k) {
        return vec4<i32>(0, BIG, 0, 0);
    }
    let kk = p.kh * p.kw;
    let c = k / kk;
    let r = k - c * kk;
    let i = r / p.kw;
    let j = r - i * p.kw;
    return vec4<i32>(i32(c * p.h * p.w), i32(i * p.dh), i32(j * p.dw), 0);
}

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
    var c00 = coop_mat16x16<f32, C>();
    var c01 = coop_mat16x16<f32, C>();
    var c10 = coop_mat16x16<f32, C>();
    var c11 = coop_mat16x16<f32, C>();
    let slices = (p.k + KS - 1u) / KS;
    for (var t = 0u; t < slices; t = t + 1u) {
        let k0 = t * KS;
        if (lid < KS) {
            taps[lid] = tap(k0 + lid);
        }
        workgroupBarrier();
        for (var r = 0u; r < 16u; r = r + 1u) {
            // x: pixel lm, tap kq + 2 r
            let ak = kq + 2u * r;
            let e = taps[ak];
            let hi = hi0 + e.y;
            let wi = wi0 + e.z;
            var v = f16(0.0);
            if (a_ok && hi >= 0 && hi < i32(p.h) && wi >= 0 && wi < i32(p.w)) {
                v = xh[xbase + u32(e.x) + u32(hi) * p.w + u32(wi)];
            }
            As[lm * AS_STRIDE + ak] = v;
            // w [O, K]: consecutive threads on consecutive taps of one channel
            let f = r * 128u + lid;
            let bk = f % KS;
            let bn = f / KS;
            let o = n0 + bn;
            var u = f16(0.0);
            if (k0 + bk < p.k && o < p.o) {
                u = wh[o * p.k + k0 + bk];
            }
            Bs[bk * BS_STRIDE + bn] = u;
        }
        workgroupBarrier();
        coop_slice(q, &c00, &c01, &c10, &c11);
        workgroupBarrier();
    }
    coop_store(q, c00, c01, c10, c11);
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
