// Pooling kernels over x [N, C, H, W] viewed as N*C planes of H*W.
// All launches are 1-D (one thread per output or per input element, folded over x, y, z:
// index = ((wg.z * nwg.y + wg.y) * nwg.x + wg.x) * WG + lid). Every kernel guards its own bounds.
//
// max_pool_fwd:  one thread per output; PyTorch semantics (padding acts as -inf, the first
//                maximum in row-major window order wins ties); writes the argmax as the
//                in-plane index iy*W + ix (u32).
// max_pool_bwd:  one thread per INPUT element gathering the gradients of the (at most
//                ceil(kh/sh)*ceil(kw/sw)) outputs whose window covers it and whose argmax is
//                this element: no atomics, deterministic, coalesced writes.
// adaptive_fwd / adaptive_bwd: PyTorch's adaptive windows start = floor(i*H/O),
//                end = ceil((i+1)*H/O); the backward is again a per-input gather.

struct Params {
    nc: u32,   // N * C planes
    h: u32,
    w: u32,
    oh: u32,
    ow: u32,
    kh: u32,
    kw: u32,
    sh: u32,
    sw: u32,
    ph: u32,
    pw: u32,
    _p: u32,
}

@group(0) @binding(0) var<uniform> p: Params;

const NEG_BIG: f32 = -3.402823466e+38;


// forward bindings (also used by adaptive_fwd / adaptive_bwd: read input, write output)
@group(0) @binding(1) var<storage, read> src: array<f32>;
@group(0) @binding(2) var<storage, read_write> dst: array<f32>;
@group(0) @binding(3) var<storage, read_write> mp_arg: array<u32>;

@compute @workgroup_size(256)
fn max_pool_fwd(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                @builtin(local_invocation_index) lid: u32) {
    let o = flat_index(wg, nwg, lid);
    if (o >= p.nc * p.oh * p.ow) { return; }
    let ox = o % p.ow;
    let t = o / p.ow;
    let oy = t % p.oh;
    let plane = t / p.oh;
    let base = plane * p.h * p.w;
    let y0 = i32(oy * p.sh) - i32(p.ph);
    let x0 = i32(ox * p.sw) - i32(p.pw);
    var best = NEG_BIG;
    var arg = 0u;
    var found = false;
    for (var ky = 0u; ky < p.kh; ky = ky + 1u) {
        let iy = y0 + i32(ky);
        if (iy < 0 || iy >= i32(p.h)) { continue; }
        for (var kx = 0u; kx < p.kw; kx = kx + 1u) {
            let ix = x0 + i32(kx);
            if (ix < 0 || ix >= i32(p.w)) { continue; }
            let k = u32(iy) * p.w + u32(ix);
            let v = src[base + k];
            // strict '>' keeps the first maximum; NaN propagates as in PyTorch
            if (!found || v > best || v != v) {
                best = v;
                arg = k;
                found = true;
            }
        }
    }
    dst[o] = best;
    mp_arg[o] = arg;
}

@group(0) @binding(1) var<storage, read> mb_g: array<f32>;
@group(0) @binding(2) var<storage, read> mb_arg: array<u32>;
@group(0) @binding(3) var<storage, read_write> mb_dx: array<f32>;

@compute @workgroup_size(256)
fn max_pool_bwd(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                @builtin(local_invocation_index) lid: u32) {
    let i = flat_index(wg, nwg, lid);
    if (i >= p.nc * p.h * p.w) { return; }
    let k = i % (p.h * p.w);
    let plane = i / (p.h * p.w);
    let iy = k / p.w;
    let ix = k % p.w;
    // outputs with oy*sh - ph <= iy <= oy*sh - ph + kh - 1
    let ty = iy + p.ph;
    let tx = ix + p.pw;
    let oy_lo = select(0u, (ty + 1u - p.kh + p.sh - 1u) / p.sh, ty + 1u >= p.kh);
    let ox_lo = select(0u, (tx + 1u - p.kw + p.sw - 1u) / p.sw, tx + 1u >= p.kw);
    let oy_hi = min(ty / p.sh + 1u, p.oh);
    let ox_hi = min(tx / p.sw + 1u, p.ow);
    let obase = plane * p.oh * p.ow;
    var acc = 0.0;
    for (var oy = oy_lo; oy < oy_hi; oy = oy + 1u) {
        for (var ox = ox_lo; ox < ox_hi; ox = ox + 1u) {
            let o = obase + oy * p.ow + ox;
            if (mb_arg[o] == k) {
                acc = acc + mb_g[o];
            }
        }
    }
    mb_dx[i] = acc;
}

fn win_start(i: u32, len: u32, out: u32) -> u32 {
    return (i * len) / out;
}
fn win_end(i: u32, len: u32, out: u32) -> u32 {
    return ((i + 1u) * len + out - 1u) / out;
}

@compute @workgroup_size(256)
fn adaptive_fwd(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                @builtin(local_invocation_index) lid: u32) {
    let o = flat_index(wg, nwg, lid);
    if (o >= p.nc * p.oh * p.ow) { return; }
    let ox = o % p.ow;
    let t = o / p.ow;
    let oy = t % p.oh;
    let plane = t / p.oh;
    let y0 = win_start(oy, p.h, p.oh);
    let y1 = win_end(oy, p.h, p.oh);
    let x0 = win_start(ox, p.w, p.ow);
    let x1 = win_end(ox, p.w, p.ow);
    let base = plane * p.h * p.w;
    var acc = 0.0;
    for (var iy = y0; iy < y1; iy = iy + 1u) {
        for (var ix = x0; ix < x1; ix = ix + 1u) {
            acc = acc + src[base + iy * p.w + ix];
        }
    }
    dst[o] = acc / f32((y1 - y0) * (x1 - x0));
}

@compute @workgroup_size(256)
fn adaptive_bwd(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                @builtin(local_invocation_index) lid: u32) {
    // src = grad of the output [N*C, OH, OW], dst = grad of the input [N*C, H, W]
    let i = flat_index(wg, nwg, lid);
    if (i >= p.nc * p.h * p.w) { return; }
    let k = i % (p.h * p.w);
    let plane = i / (p.h * p.w);
    let iy = k / p.w;
    let ix = k % p.w;
    // outputs j with start(j) <= iy < end(j): floor(iy*O/H) <= j <= ceil((iy+1)*O/H) - 1
    let oy_lo = (iy * p.oh) / p.h;
    let oy_hi = min(((iy + 1u) * p.oh + p.h - 1u) / p.h, p.oh);
    let ox_lo = (ix * p.ow) / p.w;
    let ox_hi = min(((ix + 1u) * p.ow + p.w - 1u) / p.w, p.ow);
    let obase = plane * p.oh * p.ow;
    var acc = 0.0;
    for (var oy = oy_lo; oy < oy_hi; oy = oy + 1u) {
        let hy = win_end(oy, p.h, p.oh) - win_start(oy, p.h, p.oh);
        for (var ox = ox_lo; ox < ox_hi; ox = ox + 1u) {
            let hx = win_end(ox, p.w, p.ow) - win_start(ox, p.w, p.ow);
            acc = acc + src[obase + oy * p.ow + ox] / f32(hy * hx);
        }
    }
    dst[i] = acc;
}
