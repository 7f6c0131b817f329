// Normalisation kernels.
//
// Batch norm, x [N, C, HW] (HW = H*W, or 1 for [N, C]), m = N*HW values per channel.
//   bn_stats:      one workgroup per channel. Two passes over the channel (mean, then
//                  sum of squared deviations) with per-thread partials combined in
//                  workgroup memory: numerically sound for large N*H*W (no E[x^2]-E[x]^2
//                  cancellation). Writes stats = [mean[C], invstd[C]] (biased variance) and
//                  updates the running stats IN PLACE (unbiased variance m/(m-1)).
//   bn_eval_stats: one thread per channel: stats from the running stats.
//   bn_apply:      one thread per element: y = (x - mean) * invstd * w + b.
//   bn_bwd_reduce: one workgroup per channel: sums = [sum g*xhat (= dweight), sum g (= dbias)].
//   bn_bwd_dx:     one thread per element. training: dx = w*invstd/m * (m*g - sum g - xhat*sum g*xhat);
//                  eval: dx = g * w * invstd.
// Layer norm, x [rows, D]:
//   ln_fwd:    one workgroup per row (two-pass mean / variance), writes y and
//              stats = [mean[rows], rstd[rows]].
//   ln_bwd_dx: one workgroup per row: dx = rstd * (gw - mean(gw) - xhat * mean(gw * xhat)), gw = g*w.
//   ln_bwd_dw: one thread per (chunk of LN_CHUNK rows, column d): partial sums of g*xhat and g;
//              adjacent threads read adjacent columns (coalesced). The host sums the chunks
//              with the reduction kernel.

struct BnParams {
    n: u32,
    c: u32,
    hw: u32,
    m: u32,          // n * hw
    eps: f32,
    momentum: f32,
    unbias: f32,     // m / (m - 1)
    training: u32,
}

struct LnParams {
    rows: u32,
    d: u32,
    chunks: u32,
    _p: u32,
    eps: f32,
    _q0: f32,
    _q1: f32,
    _q2: f32,
}

@group(0) @binding(0) var<uniform> bp: BnParams;
@group(0) @binding(0) var<uniform> lp: LnParams;

const WG: u32 = 256u;
const LN_WG: u32 = 128u;
const LN_CHUNK: u32 = 32u;

var<workgroup> red: array<vec2<f32>, 256>;

// Sum of v over the workgroup (size n <= 256), result broadcast to every thread.
// Must be called in uniform control flow.
fn wg_sum2(lid: u32, v: vec2<f32>, n: u32) -> vec2<f32> {
    red[lid] = v;
    workgroupBarrier();
    for (var s = n / 2u; s > 0u; s = s / 2u) {
        if (lid < s) {
            red[lid] = red[lid] + red[lid + s];
        }
        workgroupBarrier();
    }
    let r = red[0];
    workgroupBarrier();
    return r;
}

fn flat_index(wg: vec3<u32>, nwg: vec3<u32>, lid: u32) -> u32 {
    return (wg.y * nwg.x + wg.x) * WG + lid;
}

// element j of channel c (j in [0, m))
fn bn_index(c: u32, j: u32) -> u32 {
    let nn = j / bp.hw;
    let s = j - nn * bp.hw;
    return (nn * bp.c + c) * bp.hw + s;
}

// ---- bn_stats ----------------------------------------------------------------------------
@group(0) @binding(1) var<storage, read> bs_x: array<f32>;
@group(0) @binding(2) var<storage, read_write> bs_stats: array<f32>;
@group(0) @binding(3) var<storage, read_write> bs_rmean: array<f32>;
@group(0) @binding(4) var<storage, read_write> bs_rvar: array<f32>;

@compute @workgroup_size(256)
fn bn_stats(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
            @builtin(local_invocation_index) lid: u32) {
    let c = wg.y * nwg.x + wg.x;
    if (c >= bp.c) { return; } // uniform: whole workgroup
    var acc = 0.0;
    for (var j = lid; j < bp.m; j = j + WG) {
        acc = acc + bs_x[bn_index(c, j)];
    }
    let mean = wg_sum2(lid, vec2<f32>(acc, 0.0), WG).x / f32(bp.m);
    var sq = 0.0;
    for (var j = lid; j < bp.m; j = j + WG) {
        let d = bs_x[bn_index(c, j)] - mean;
        sq = sq + d * d;
    }
    let var_b = wg_sum2(lid, vec2<f32>(sq, 0.0), WG).x / f32(bp.m);
    if (lid == 0u) {
        bs_stats[c] = mean;
        bs_stats[bp.c + c] = 1.0 / sqrt(var_b + bp.eps);
        if (bp.training != 0u) {
            let mo = bp.momentum;
            bs_rmean[c] = (1.0 - mo) * bs_rmean[c] + mo * mean;
            bs_rvar[c] = (1.0 - mo) * bs_rvar[c] + mo * var_b * bp.unbias;
        }
    }
}

// ---- bn_eval_stats -----------------------------------------------------------------------
@group(0) @binding(1) var<storage, read> be_rmean: array<f32>;
@group(0) @binding(2) var<storage, read> be_rvar: array<f32>;
@group(0) @binding(3) var<storage, read_write> be_stats: array<f32>;

@compute @workgroup_size(256)
fn bn_eval_stats(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                 @builtin(local_invocation_index) lid: u32) {
    let c = flat_index(wg, nwg, lid);
    if (c >= bp.c) { return; }
    be_stats[c] = be_rmean[c];
    be_stats[bp.c + c] = 1.0 / sqrt(be_rvar[c] + bp.eps);
}

// ---- bn_apply ----------------------------------------------------------------------------
@group(0) @binding(1) var<storage, read> ba_x: array<f32>;
@group(0) @binding(2) var<storage, read> ba_stats: array<f32>;
@group(0) @binding(3) var<storage, read> ba_w: array<f32>;
@group(0) @binding(4) var<storage, read> ba_b: array<f32>;
@group(0) @binding(5) var<storage, read_write> ba_y: array<f32>;

@compute @workgroup_size(256)
fn bn_apply(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
            @builtin(local_invocation_index) lid: u32) {
    let i = flat_index(wg, nwg, lid);
    if (i >= bp.n * bp.c * bp.hw) { return; }
    let c = (i / bp.hw) % bp.c;
    let scale = ba_stats[bp.c + c] * ba_w[c];
    ba_y[i] = (ba_x[i] - ba_stats[c]) * scale + ba_b[c];
}

// ---- bn_bwd_reduce -----------------------------------------------------------------------
@group(0) @binding(1) var<storage, read> br_x: array<f32>;
@group(0) @binding(2) var<storage, read> br_g: array<f32>;
@group(0) @binding(3) var<storage, read> br_stats: array<f32>;
@group(0) @binding(4) var<storage, read_write> br_sums: array<f32>;

@compute @workgroup_size(256)
fn bn_bwd_reduce(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                 @builtin(local_invocation_index) lid: u32) {
    let c = wg.y * nwg.x + wg.x;
    if (c >= bp.c) { return; }
    let mean = br_stats[c];
    let inv = br_stats[bp.c + c];
    var acc = vec2<f32>(0.0, 0.0);
    for (var j = lid; j < bp.m; j = j + WG) {
        let k = bn_index(c, j);
        let g = br_g[k];
        acc = acc + vec2<f32>(g * (br_x[k] - mean) * inv, g);
    }
    let s = wg_sum2(lid, acc, WG);
    if (lid == 0u) {
        br_sums[c] = s.x;
        br_sums[bp.c + c] = s.y;
    }
}

// ---- bn_bwd_dx ---------------------------------------------------------------------------
@group(0) @binding(1) var<storage, read> bd_x: array<f32>;
@group(0) @binding(2) var<storage, read> bd_g: array<f32>;
@group(0) @binding(3) var<storage, read> bd_stats: array<f32>;
@group(0) @binding(4) var<storage, read> bd_w: array<f32>;
@group(0) @binding(5) var<storage, read> bd_sums: array<f32>;
@group(0) @binding(6) var<storage, read_write> bd_dx: array<f32>;

@compute @workgroup_size(256)
fn bn_bwd_dx(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
             @builtin(local_invocation_index) lid: u32) {
    let i = flat_index(wg, nwg, lid);
    if (i >= bp.n * bp.c * bp.hw) { return; }
    let c = (i / bp.hw) % bp.c;
    let inv = bd_stats[bp.c + c];
    let g = bd_g[i];
    if (bp.training != 0u) {
        let m = f32(bp.m);
        let xhat = (bd_x[i] - bd_stats[c]) * inv;
        bd_dx[i] = bd_w[c] * inv / m * (m * g - bd_sums[bp.c + c] - xhat * bd_sums[c]);
    } else {
        bd_dx[i] = g * bd_w[c] * inv;
    }
}

// ---- layer norm --------------------------------------------------------------------------
@group(0) @binding(1) var<storage, read> lf_x: array<f32>;
@group(0) @binding(2) var<storage, read> lf_w: array<f32>;
@group(0) @binding(3) var<storage, read> lf_b: array<f32>;
@group(0) @binding(4) var<storage, read_write> lf_y: array<f32>;
@group(0) @binding(5) var<storage, read_write> lf_stats: array<f32>;

@compute @workgroup_size(128)
fn ln_fwd(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
          @builtin(local_invocation_index) lid: u32) {
    let r = wg.y * nwg.x + wg.x;
    if (r >= lp.rows) { return; } // uniform
    let base = r * lp.d;
    var acc = 0.0;
    for (var j = lid; j < lp.d; j = j + LN_WG) {
        acc = acc + lf_x[base + j];
    }
    let mean = wg_sum2(lid, vec2<f32>(acc, 0.0), LN_WG).x / f32(lp.d);
    var sq = 0.0;
    for (var j = lid; j < lp.d; j = j + LN_WG) {
        let d = lf_x[base + j] - mean;
        sq = sq + d * d;
    }
    let rstd = 1.0 / sqrt(wg_sum2(lid, vec2<f32>(sq, 0.0), LN_WG).x / f32(lp.d) + lp.eps);
    for (var j = lid; j < lp.d; j = j + LN_WG) {
        lf_y[base + j] = (lf_x[base + j] - mean) * rstd * lf_w[j] + lf_b[j];
    }
    if (lid == 0u) {
        lf_stats[r] = mean;
        lf_stats[lp.rows + r] = rstd;
    }
}

@group(0) @binding(1) var<storage, read> lb_x: array<f32>;
@group(0) @binding(2) var<storage, read> lb_g: array<f32>;
@group(0) @binding(3) var<storage, read> lb_w: array<f32>;
@group(0) @binding(4) var<storage, read> lb_stats: array<f32>;
@group(0) @binding(5) var<storage, read_write> lb_dx: array<f32>;

@compute @workgroup_size(128)
fn ln_bwd_dx(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
             @builtin(local_invocation_index) lid: u32) {
    let r = wg.y * nwg.x + wg.x;
    if (r >= lp.rows) { return; }
    let base = r * lp.d;
    let mean = lb_stats[r];
    let rstd = lb_stats[lp.rows + r];
    var acc = vec2<f32>(0.0, 0.0);
    for (var j = lid; j < lp.d; j = j + LN_WG) {
        let gw = lb_g[base + j] * lb_w[j];
        let xhat = (lb_x[base + j] - mean) * rstd;
        acc = acc + vec2<f32>(gw, gw * xhat);
    }
    let s = wg_sum2(lid, acc, LN_WG) / f32(lp.d);
    for (var j = lid; j < lp.d; j = j + LN_WG) {
        let gw = lb_g[base + j] * lb_w[j];
        let xhat = (lb_x[base + j] - mean) * rstd;
        lb_dx[base + j] = rstd * (gw - s.x - xhat * s.y);
    }
}

@group(0) @binding(1) var<storage, read> lw_x: array<f32>;
@group(0) @binding(2) var<storage, read> lw_g: array<f32>;
@group(0) @binding(3) var<storage, read> lw_stats: array<f32>;
@group(0) @binding(4) var<storage, read_write> lw_part: array<f32>; // [2, chunks, d]

@compute @workgroup_size(256)
fn ln_bwd_dw(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
             @builtin(local_invocation_index) lid: u32) {
    let t = flat_index(wg, nwg, lid);
    if (t >= lp.chunks * lp.d) { return; }
    let col = t % lp.d;
    let chunk = t / lp.d;
    let r0 = chunk * LN_CHUNK;
    let r1 = min(r0 + LN_CHUNK, lp.rows);
    var dw = 0.0;
    var db = 0.0;
    for (var r = r0; r < r1; r = r + 1u) {
        let k = r * lp.d + col;
        let g = lw_g[k];
        dw = dw + g * (lw_x[k] - lw_stats[r]) * lw_stats[lp.rows + r];
        db = db + g;
    }
    lw_part[t] = dw;
    lw_part[lp.chunks * lp.d + t] = db;
}
