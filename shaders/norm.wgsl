// Normalisation kernels.
//
// Batch norm, x [N, C, HW] (HW = H*W, or 1 for [N, C]), m = N*HW values per channel.
// The per-channel reductions split each channel's m values (flat index j = nn*HW + s) into
// `chunks` contiguous ranges of `cs` values (the last may be shorter, none is empty), one
// workgroup per (chunk, channel), then merge the chunks in a second small kernel: many
// workgroups fill a large GPU even for few channels. Each thread walks j in steps of WG with
// a running (s, element offset) pair: no integer division per element. Everything is summed
// in a fixed order (no float atomics): results are deterministic.
//   bn_stats:       one workgroup per (chunk, channel), one pass over x: per-thread Welford
//                   (count, mean, M2) over batches of 4 values of x - shift (shift = the
//                   chunk's first value), then the chunk's mean and M2 = sum (x - mean_chunk)^2
//                   from the threads' with Chan's rule (wg_chan): no E[x^2]-E[x]^2
//                   cancellation, and no large common offset in the sums.
//                   Writes part = [mean [C, chunks], M2 [C, chunks]].
//   bn_stats_merge: one workgroup per channel, one thread per chunk (chunks <= 256): Chan's
//                   merge mean = sum n_i mean_i / m, M2 = sum M2_i + sum n_i (mean_i - mean)^2
//                   (n_i from the chunk layout, means shifted by chunk 0's). Writes
//                   stats = [mean[C], invstd[C]] (biased variance) and updates the running
//                   stats IN PLACE (unbiased variance m/(m-1)).
//   bn_eval_stats:  one thread per channel: stats from the running stats.
//   bn_apply:       one thread per element (per f16 word): y = act((x - mean) * invstd * w + b (+ r)).
//   bn_bwd_reduce:  one workgroup per (chunk, channel): part = [sum g*xhat [C, chunks],
//                   sum g [C, chunks]] over the chunk.
//   bn_bwd_merge:   one workgroup per channel, one thread per chunk: sums = [sum g*xhat
//                   (= dweight) [C], sum g (= dbias) [C]].
//   bn_bwd_dx:      one thread per element. training: dx = w*invstd/m * (m*g - sum g - xhat*sum g*xhat);
//                   eval: dx = g * w * invstd. bn_bwd_dx_in_place: the same, over g.
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
    chunks: u32,     // chunks per channel: 1..=256 in bn_stats / bn_bwd_reduce; any number in
                     // bn_stats_merge (a convolution's row tiles, `conv2d_bn_partials`)
    cs: u32,         // values per chunk (the last chunk holds m - (chunks - 1) * cs)
    _p0: u32,
    _p1: u32,
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

// Batch norm's input x as mixed precision stores it between a convolution and its batch
// norm: f16, two per word (HALF_X), widened exactly as it is read; otherwise f32. The kernels
// that read x (bn_stats, bn_apply, bn_bwd_reduce, bn_bwd_dx) bind it as words either way and
// read value i through xval(word xword(i), i); statistics, outputs and gradients are f32.
override HALF_X: bool = false;

fn xword(i: u32) -> u32 {
    return select(i, i >> 1u, HALF_X);
}

fn xval(word: u32, i: u32) -> f32 {
    if (HALF_X) {
        return unpack2x16float(word)[i & 1u];
    }
    return bitcast<f32>(word);
}
@group(0) @binding(0) var<uniform> lp: LnParams;

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


// ---- batch-norm chunk walk ---------------------------------------------------------------
// A thread of the workgroup for (chunk, channel c) visits j = j0 + lid, j0 + lid + WG, ...
// while j < j1, j in [0, m) a channel-local index; element offset k = (nn*C + c)*HW + s with
// j = nn*HW + s. Stepping j by WG = q*HW + r (r < HW) adds q*C*HW + r to k, plus
// (C - 1)*HW when s wraps past HW: one compare per step instead of a division.
struct BnWalk {
    j: u32,      // channel-local index of the current value
    j1: u32,     // end of the chunk (exclusive)
    s: u32,      // j % HW
    k: u32,      // offset of value j in x
    r: u32,      // WG % HW
    kstep: u32,  // q*C*HW + r
    kwrap: u32,  // (C - 1)*HW
}

// Offset in x of value j of channel c (divides: used once per thread, not per value).
fn bn_offset(c: u32, j: u32) -> u32 {
    let nn = j / bp.hw;
    return (nn * bp.c + c) * bp.hw + (j - nn * bp.hw);
}

// The walk of thread lid over chunk `chunk` of channel c (requires chunk < chunks, c < C).
fn bn_walk(c: u32, chunk: u32, lid: u32) -> BnWalk {
    let j0 = chunk * bp.cs;
    let j1 = min(j0 + bp.cs, bp.m);
    let j = j0 + lid;
    let q = WG / bp.hw;
    let r = WG - q * bp.hw;
    return BnWalk(j, j1, j % bp.hw, bn_offset(c, j), r, q * bp.c * bp.hw + r, (bp.c - 1u) * bp.hw);
}

// Advance a walk by WG values (j and k may then be past the chunk: callers test j < j1
// before every load).
fn bn_step(w: ptr<function, BnWalk>) {
    (*w).j = (*w).j + WG;
    (*w).k = (*w).k + (*w).kstep;
    (*w).s = (*w).s + (*w).r;
    if ((*w).s >= bp.hw) {
        (*w).s = (*w).s - bp.hw;
        (*w).k = (*w).k + (*w).kwrap;
    }
}

// (chunk, channel) of a bn_stats / bn_bwd_reduce workgroup, on a grid of chunks*C
// workgroups folded into 2-D (see ops::grid); chunk == chunks marks a padding workgroup.
fn bn_chunk_id(wg: vec3<u32>, nwg: vec3<u32>) -> vec2<u32> {
    let w = flat_group(wg, nwg);
    if (w >= bp.chunks * bp.c) { return vec2<u32>(bp.chunks, 0u); }
    let c = w / bp.chunks;
    return vec2<u32>(w - c * bp.chunks, c);
}

// Number of values in chunk i of a channel.
fn bn_chunk_len(i: u32) -> u32 {
    let j0 = i * bp.cs;
    return min(j0 + bp.cs, bp.m) - j0;
}

// Chan's merge of the workgroup's (count, mean, M2) triples (count n = 0, mean = 0 for none):
// mean = sum n_t mean_t / n_tot, M2 = sum M2_t + sum n_t (mean_t - mean)^2. The means are
// relative to a common shift (a value of the data: the sum then carries no large common
// offset, and the caller adds the shift back once). Broadcast to every thread as
// (shifted mean, M2). Must be called in uniform control flow. n_tot > 0 required.
fn wg_chan(lid: u32, n: f32, mean: f32, m2: f32, ntot: f32) -> vec2<f32> {
    let s1 = wg_sum2(lid, vec2<f32>(n * mean, m2), WG);
    let mu = s1.x / ntot;
    let d = mean - mu;
    let s2 = wg_sum2(lid, vec2<f32>(n * d * d, 0.0), WG);
    return vec2<f32>(mu, s1.y + s2.x);
}

// ---- bn_stats ----------------------------------------------------------------------------
@group(0) @binding(1) var<storage, read> bs_x: array<u32>;
@group(0) @binding(2) var<storage, read_write> bs_part: array<f32>; // [2, C, chunks]

// Fold a batch of b values (batch mean bm, batch M2 bq) into a running (n, mean, M2).
fn welford_add(acc: vec3<f32>, b: f32, bm: f32, bq: f32) -> vec3<f32> {
    let n = acc.x + b;
    let d = bm - acc.y;
    let f = b / n;
    return vec3<f32>(n, acc.y + d * f, acc.z + bq + d * d * acc.x * f);
}

fn bs_at(i: u32) -> f32 {
    return xval(bs_x[xword(i)], i);
}

@compute @workgroup_size(256)
fn bn_stats(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
            @builtin(local_invocation_index) lid: u32) {
    let id = bn_chunk_id(wg, nwg);
    let chunk = id.x;
    let c = id.y;
    if (chunk >= bp.chunks) { return; } // uniform: whole workgroup
    var w = bn_walk(c, chunk, lid);
    // shift: the chunk's first value (chunks are never empty); accumulate x - shift
    let shift = bs_at(bn_offset(c, chunk * bp.cs));
    var acc = vec3<f32>(0.0, 0.0, 0.0); // this thread's (count, mean, M2) of x - shift
    // batches of 4 values (4 independent loads in flight), then the tail one at a time
    loop {
        if (w.j + 3u * WG >= w.j1) { break; }
        let x0 = bs_at(w.k) - shift;
        bn_step(&w);
        let x1 = bs_at(w.k) - shift;
        bn_step(&w);
        let x2 = bs_at(w.k) - shift;
        bn_step(&w);
        let x3 = bs_at(w.k) - shift;
        bn_step(&w);
        let bm = ((x0 + x1) + (x2 + x3)) * 0.25;
        let d0 = x0 - bm;
        let d1 = x1 - bm;
        let d2 = x2 - bm;
        let d3 = x3 - bm;
        acc = welford_add(acc, 4.0, bm, (d0 * d0 + d1 * d1) + (d2 * d2 + d3 * d3));
    }
    loop {
        if (w.j >= w.j1) { break; }
        acc = welford_add(acc, 1.0, bs_at(w.k) - shift, 0.0);
        bn_step(&w);
    }
    let r = wg_chan(lid, acc.x, acc.y, acc.z, f32(bn_chunk_len(chunk)));
    if (lid == 0u) {
        let i = c * bp.chunks + chunk;
        bs_part[i] = shift + r.x;
        bs_part[bp.c * bp.chunks + i] = r.y;
    }
}

// ---- bn_stats_merge ----------------------------------------------------------------------
@group(0) @binding(1) var<storage, read> bm_part: array<f32>; // [2, C, chunks]
@group(0) @binding(2) var<storage, read_write> bm_stats: array<f32>;
@group(0) @binding(3) var<storage, read_write> bm_rmean: array<f32>;
@group(0) @binding(4) var<storage, read_write> bm_rvar: array<f32>;

@compute @workgroup_size(256)
fn bn_stats_merge(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                  @builtin(local_invocation_index) lid: u32) {
    let c = flat_group(wg, nwg);
    if (c >= bp.c) { return; } // uniform: whole workgroup
    let shift = bm_part[c * bp.chunks]; // chunk 0's mean (chunks >= 1)
    // this thread's chunks lid, lid + WG, ... folded in order (with 256 chunks or fewer, one
    // each: the fold of one chunk into nothing is that chunk's triple, bit for bit)
    var acc = vec3<f32>(0.0, 0.0, 0.0); // (count, mean relative to shift, M2)
    for (var i = lid; i < bp.chunks; i = i + WG) {
        let at = c * bp.chunks + i;
        acc = welford_add(acc, f32(bn_chunk_len(i)), bm_part[at] - shift, bm_part[bp.c * bp.chunks + at]);
    }
    let r = wg_chan(lid, acc.x, acc.y, acc.z, f32(bp.m));
    if (lid == 0u) {
        let mu = shift + r.x;
        let var_b = r.y / f32(bp.m);
        bm_stats[c] = mu;
        bm_stats[bp.c + c] = 1.0 / sqrt(var_b + bp.eps);
        if (bp.training != 0u) {
            let mo = bp.momentum;
            bm_rmean[c] = (1.0 - mo) * bm_rmean[c] + mo * mu;
            bm_rvar[c] = (1.0 - mo) * bm_rvar[c] + mo * var_b * bp.unbias;
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
// y = act((x - mean) * invstd * w + b (+ r)): the residual r where RESIDUAL, ReLU where RELU,
// in the order and f32 arithmetic of batch norm, add and ReLU run one after another (the same
// bits), without their intermediate tensors. HALF_Y: y is f16, two values per word, one
// thread per word (a word's two values may lie in different channels); else one thread per
// value, its f32 bits.
override RESIDUAL: bool = false;
override RELU: bool = false;
override HALF_Y: bool = false;
@group(0) @binding(1) var<storage, read> ba_x: array<u32>;
@group(0) @binding(2) var<storage, read> ba_stats: array<f32>;
@group(0) @binding(3) var<storage, read> ba_w: array<f32>;
@group(0) @binding(4) var<storage, read> ba_b: array<f32>;
@group(0) @binding(5) var<storage, read_write> ba_y: array<u32>;
@group(0) @binding(6) var<storage, read> ba_r: array<f32>; // x again when !RESIDUAL (unread)

fn ba_value(i: u32) -> f32 {
    let c = (i / bp.hw) % bp.c;
    let scale = ba_stats[bp.c + c] * ba_w[c];
    var v = (xval(ba_x[xword(i)], i) - ba_stats[c]) * scale + ba_b[c];
    if (RESIDUAL) {
        v = v + ba_r[i];
    }
    if (RELU) {
        v = max(v, 0.0);
    }
    return v;
}

@compute @workgroup_size(256)
fn bn_apply(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
            @builtin(local_invocation_index) lid: u32) {
    let i = flat_index(wg, nwg, lid);
    let n = bp.n * bp.c * bp.hw;
    if (HALF_Y) {
        let j = 2u * i;
        if (j >= n) { return; }
        var hi = 0.0;
        if (j + 1u < n) {
            hi = ba_value(j + 1u);
        }
        ba_y[i] = pack2x16float(vec2<f32>(ba_value(j), hi));
        return;
    }
    if (i >= n) { return; }
    ba_y[i] = bitcast<u32>(ba_value(i));
}

// ---- bn_bwd_reduce -----------------------------------------------------------------------
@group(0) @binding(1) var<storage, read> br_x: array<u32>;
@group(0) @binding(2) var<storage, read> br_g: array<f32>;
@group(0) @binding(3) var<storage, read> br_stats: array<f32>;
@group(0) @binding(4) var<storage, read_write> br_part: array<f32>; // [2, C, chunks]

fn br_at(i: u32) -> f32 {
    return xval(br_x[xword(i)], i);
}

@compute @workgroup_size(256)
fn bn_bwd_reduce(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                 @builtin(local_invocation_index) lid: u32) {
    let id = bn_chunk_id(wg, nwg);
    let chunk = id.x;
    let c = id.y;
    if (chunk >= bp.chunks) { return; } // uniform: whole workgroup
    let mean = br_stats[c];
    let inv = br_stats[bp.c + c];
    var w = bn_walk(c, chunk, lid);
    var acc = vec2<f32>(0.0, 0.0); // (sum g*(x - mean), sum g)
    loop {
        if (w.j + 3u * WG >= w.j1) { break; }
        let k0 = w.k;
        bn_step(&w);
        let k1 = w.k;
        bn_step(&w);
        let k2 = w.k;
        bn_step(&w);
        let k3 = w.k;
        bn_step(&w);
        let g0 = br_g[k0];
        let g1 = br_g[k1];
        let g2 = br_g[k2];
        let g3 = br_g[k3];
        let x0 = br_at(k0);
        let x1 = br_at(k1);
        let x2 = br_at(k2);
        let x3 = br_at(k3);
        acc = acc + vec2<f32>((g0 * (x0 - mean) + g1 * (x1 - mean)) + (g2 * (x2 - mean) + g3 * (x3 - mean)),
                              (g0 + g1) + (g2 + g3));
    }
    loop {
        if (w.j >= w.j1) { break; }
        let g = br_g[w.k];
        acc = acc + vec2<f32>(g * (br_at(w.k) - mean), g);
        bn_step(&w);
    }
    let s = wg_sum2(lid, acc, WG);
    if (lid == 0u) {
        let i = c * bp.chunks + chunk;
        br_part[i] = s.x * inv;
        br_part[bp.c * bp.chunks + i] = s.y;
    }
}

// ---- bn_bwd_merge ------------------------------------------------------------------------
@group(0) @binding(1) var<storage, read> bg_part: array<f32>; // [2, C, chunks]
@group(0) @binding(2) var<storage, read_write> bg_sums: array<f32>;

@compute @workgroup_size(256)
fn bn_bwd_merge(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                @builtin(local_invocation_index) lid: u32) {
    let c = flat_group(wg, nwg);
    if (c >= bp.c) { return; } // uniform: whole workgroup
    var v = vec2<f32>(0.0, 0.0);
    if (lid < bp.chunks) {
        let i = c * bp.chunks + lid;
        v = vec2<f32>(bg_part[i], bg_part[bp.c * bp.chunks + i]);
    }
    let s = wg_sum2(lid, v, WG);
    if (lid == 0u) {
        bg_sums[c] = s.x;
        bg_sums[bp.c + c] = s.y;
    }
}

// ---- bn_bwd_dx ---------------------------------------------------------------------------
@group(0) @binding(1) var<storage, read> bd_x: array<u32>;
@group(0) @binding(2) var<storage, read> bd_g: array<f32>;
@group(0) @binding(3) var<storage, read> bd_stats: array<f32>;
@group(0) @binding(4) var<storage, read> bd_w: array<f32>;
@group(0) @binding(5) var<storage, read> bd_sums: array<f32>;
@group(0) @binding(6) var<storage, read_write> bd_dx: array<f32>;

fn bd_at(i: u32) -> f32 {
    return xval(bd_x[xword(i)], i);
}

// dx[i] from the gradient g of element i.
fn bd_value(i: u32, g: f32) -> f32 {
    let c = (i / bp.hw) % bp.c;
    let inv = bd_stats[bp.c + c];
    if (bp.training != 0u) {
        let m = f32(bp.m);
        let xhat = (bd_at(i) - bd_stats[c]) * inv;
        return bd_w[c] * inv / m * (m * g - bd_sums[bp.c + c] - xhat * bd_sums[c]);
    }
    return g * bd_w[c] * inv;
}

@compute @workgroup_size(256)
fn bn_bwd_dx(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
             @builtin(local_invocation_index) lid: u32) {
    let i = flat_index(wg, nwg, lid);
    if (i >= bp.n * bp.c * bp.hw) { return; }
    bd_dx[i] = bd_value(i, bd_g[i]);
}

// The same, written over the gradient (bound as bd_dx; binding 2 is not read): each thread
// reads its element before it writes it, and the sums were taken from g by earlier launches.
@compute @workgroup_size(256)
fn bn_bwd_dx_in_place(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                      @builtin(local_invocation_index) lid: u32) {
    let i = flat_index(wg, nwg, lid);
    if (i >= bp.n * bp.c * bp.hw) { return; }
    bd_dx[i] = bd_value(i, bd_dx[i]);
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
    let r = flat_group(wg, nwg);
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
    let r = flat_group(wg, nwg);
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
