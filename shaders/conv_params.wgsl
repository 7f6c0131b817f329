// The parameter block of the convolution modules (conv.wgsl, conv_coop.wgsl), and what their
// forwards share: the epilogue after the GEMM, its operands, and the f16 rounding of y.

struct Params {
    n: u32, c: u32, h: u32, w: u32,
    o: u32, kh: u32, kw: u32, ho: u32,
    wo: u32, sh: u32, sw: u32, ph: u32,
    pw: u32, dh: u32, dw: u32, m: u32,     // m: GEMM M of the launch (fwd: N*HO*WO; dw: C*KH*KW)
    k: u32, chunk: u32, splits: u32, direct: u32, // k: GEMM K (fwd: C*KH*KW; dw: N*HO*WO)
    flags: u32, // bit 0: w_scale bound (reduce pass); forward epilogue: bit 1 bias, bit 2
                // batch norm with fixed statistics, bit 3 residual add, bit 4 ReLU (in that
                // order); bit 5: batch norm's partial statistics of y (bias alone before it);
                // bit 6: y stored as f16 words (fyh)
    x0: u32, y0: u32, z0: u32, // first workgroup of this launch (ops::split_grid: launches
                               // are split per dimension at the device's workgroup limit)
}

// Workgroup id within the whole (split) grid.
fn tile_id(wg: vec3<u32>) -> vec3<u32> {
    return wg + vec3<u32>(p.x0, p.y0, p.z0);
}

@group(0) @binding(0) var<uniform> p: Params;

// ---- the forward's epilogue --------------------------------------------------------------
@group(0) @binding(3) var<storage, read> fbias: array<f32>;
@group(0) @binding(5) var<storage, read_write> fy: array<f32>;
// The inference epilogue's operands (flags bits 2 and 3; placeholders otherwise): batch
// norm's statistics [2, O] (mean, 1/sqrt(var + eps)), weight and bias [O], and a residual of
// y's shape. Batch norm is applied as its own kernel does, (v - mean) * (invstd * weight) +
// bias, so a folded layer gives what conv then batch_norm would.
@group(0) @binding(6) var<storage, read> fbn_stats: array<f32>;
@group(0) @binding(7) var<storage, read> fbn_w: array<f32>;
@group(0) @binding(8) var<storage, read> fbn_b: array<f32>;
@group(0) @binding(9) var<storage, read> fres: array<f32>;
// Batch norm's partial statistics of y (flags bit 5; a placeholder otherwise):
// [2, O, row tiles], the mean and M2 of each channel over each row tile's pixels, the layout
// of norm.wgsl's bn_stats chunks (chunk = row tile), which bn_stats_merge completes.
@group(0) @binding(10) var<storage, read_write> fpart: array<f32>;

// y as f16 words (flags bit 6, with HALF_Y; a placeholder otherwise). Where H*W of y is
// even, a word's two values are neighbouring pixels of one image and channel, rows m and
// m + 1 (m even) of the GEMM, and every tile's first row is even: each word has one writer,
// so the forward stores y as f16 itself rather than leave it to a cast.
@group(0) @binding(13) var<storage, read_write> fyh: array<u32>;
// y again, as vec4s (the host binds the same range as binding 5): the tiles whose threads own
// 4 neighbouring rows of the GEMM (conv_core.wgsl's `Y4`) store them as one vec4 where H*W of
// y is a multiple of 4 (the 4 rows are then 4 pixels of one image and channel, starting at a
// multiple of 4).
@group(0) @binding(14) var<storage, read_write> fy4: array<vec4<f32>>;

// The forward rounds y to f16 values (stored as f32, so a cast to f16 afterwards keeps them
// exactly): mixed precision stores a convolution's output f16 until its batch norm, and the
// batch norm's partial statistics from the epilogue (conv.wgsl's `tile_stats`,
// conv_coop.wgsl's `coop_stats`) are then those of the very values it will normalise.
override HALF_Y: bool = false;

// The forward's epilogue on output (channel o, element i of y): bias, batch norm, residual,
// ReLU, each a uniform branch on the flags (outside the K loop, once per output).
fn epilogue(v0: f32, o: u32, i: u32) -> f32 {
    var v = v0;
    if ((p.flags & 2u) != 0u) {
        v = v + fbias[o];
    }
    if ((p.flags & 4u) != 0u) {
        let scale = fbn_stats[p.o + o] * fbn_w[o]; // as norm.wgsl's bn_apply groups it
        v = (v - fbn_stats[o]) * scale + fbn_b[o];
    }
    if ((p.flags & 8u) != 0u) {
        v = v + fres[i];
    }
    if ((p.flags & 16u) != 0u) {
        v = max(v, 0.0);
    }
    if (HALF_Y) {
        v = f16_round(v);
    }
    return v;
}

// y's value at accumulator v of channel o < O when only the bias follows the GEMM (the
// epilogue's first step and its rounding, the same operations, so the same bits as the
// stored value).
fn biased(v0: f32, o: u32) -> f32 {
    var v = v0;
    if ((p.flags & 2u) != 0u) {
        v = v + fbias[o];
    }
    if (HALF_Y) {
        v = f16_round(v);
    }
    return v;
}

// y at rows m and m + 1 (m even) of channel o, after the epilogue, as one f16 word (flags
// bit 6); nothing outside y (m + 1 < M whenever m < M, as M = N*H*W is even).
fn store_pair(m: u32, o: u32, v0: f32, v1: f32) {
    if (m < p.m && o < p.o) {
        let hwo = p.ho * p.wo;
        let n = m / hwo;
        let at = n * p.o * hwo + o * hwo + (m - n * hwo);
        fyh[at >> 1u] = pack2x16float(vec2<f32>(epilogue(v0, o, at), epilogue(v1, o, at + 1u)));
    }
}

// ---- the GEMMs' K indices (conv.wgsl's tiles and the cooperative-matrix kernels) ----------
const BIG: i32 = 536870912; // 2^29: pushes a coordinate out of range

// K index -> (c*H*W, kh*dh, kw*dw); out of range -> row pushed out of the image.
fn fwd_entry(k: u32) -> vec4<i32> {
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

// (first tap, tap step, tap count) of phase ph for stride s, padding pad, dilation d, size kk.
fn taps(ph: u32, s: u32, pad: u32, d: u32, kk: u32) -> vec3<u32> {
    let target_r = (ph + pad) % s;
    var first = kk;
    let lim = min(kk, s);
    for (var t = 0u; t < lim; t = t + 1u) {
        if ((t * d) % s == target_r) {
            first = t;
            break;
        }
    }
    var stp = s;
    for (var j = 1u; j < s; j = j + 1u) {
        if ((j * d) % s == 0u) {
            stp = j;
            break;
        }
    }
    var cnt = 0u;
    if (first < kk) {
        cnt = (kk - first + stp - 1u) / stp;
    }
    return vec3<u32>(first, stp, cnt);
}

struct Phase {
    ph: u32, pw: u32,
    th: vec3<u32>, tw: vec3<u32>,
    hp: u32, wp: u32,   // phase image size
    kp: u32,            // GEMM K of the phase: O * taps
}

fn phase_of(z: u32) -> Phase {
    var q: Phase;
    q.ph = z / p.sw;
    q.pw = z - q.ph * p.sw;
    q.th = taps(q.ph, p.sh, p.ph, p.dh, p.kh);
    q.tw = taps(q.pw, p.sw, p.pw, p.dw, p.kw);
    q.hp = 0u;
    if (q.ph < p.h) {
        q.hp = (p.h - q.ph + p.sh - 1u) / p.sh;
    }
    q.wp = 0u;
    if (q.pw < p.w) {
        q.wp = (p.w - q.pw + p.sw - 1u) / p.sw;
    }
    q.kp = p.o * q.th.z * q.tw.z;
    return q;
}

// Pixel m of phase q's image (all N images) -> (image n, row hp, column wp) in it.
fn phase_pixel(q: Phase, m: u32) -> vec3<u32> {
    let php = max(q.hp * q.wp, 1u);
    let n = m / php;
    let r = m - n * php;
    let hp = r / max(q.wp, 1u);
    return vec3<u32>(n, hp, r - hp * q.wp);
}

// Offset in dx of channel 0 at pixel m of phase q's image (channel c adds c*H*W).
fn dx_base(q: Phase, m: u32) -> u32 {
    let v = phase_pixel(q, m);
    return v.x * p.c * p.h * p.w + (v.y * p.sh + q.ph) * p.w + v.z * p.sw + q.pw;
}

// K index of the phase -> (o*HO*WO, row shift, column shift, w offset without c).
fn dx_entry(q: Phase, k: u32) -> vec4<i32> {
    if (k >= q.kp) {
        return vec4<i32>(0, BIG, 0, -1);
    }
    let nt = q.th.z * q.tw.z;
    let o = k / nt;
    let r = k - o * nt;
    let jh = r / q.tw.z;
    let jw = r - jh * q.tw.z;
    let kh = q.th.x + jh * q.th.y;
    let kw = q.tw.x + jw * q.tw.y;
    // exact divisions by construction of the phase (the numerators are multiples of s)
    let dsh = (i32(q.ph + p.ph) - i32(kh * p.dh)) / i32(p.sh);
    let dsw = (i32(q.pw + p.pw) - i32(kw * p.dw)) / i32(p.sw);
    let woff = o * p.c * p.kh * p.kw + kh * p.kw + kw;
    return vec4<i32>(i32(o * p.ho * p.wo), dsh, dsw, i32(woff));
}

// reduction index (n, ho, wo) -> (n*C*H*W, ho*sh - ph, wo*sw - pw, n*O*HO*WO + pix);
// out of range -> row +BIG (the per-thread weight rows add at most +BIG: no overflow)
fn dw_entry(q: u32, end: u32) -> vec4<i32> {
    if (q >= end) {
        return vec4<i32>(0, BIG, 0, -1);
    }
    let hwo = p.ho * p.wo;
    let n = q / hwo;
    let pix = q - n * hwo;
    let ho = pix / p.wo;
    let wo = pix - ho * p.wo;
    return vec4<i32>(i32(n * p.c * p.h * p.w), i32(ho * p.sh) - i32(p.ph), i32(wo * p.sw) - i32(p.pw),
                     i32(n * p.o * hwo + pix));
}
