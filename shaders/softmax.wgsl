// Row-wise kernels along the last axis of a tensor viewed as [rows, cols]: softmax and
// log-softmax (forward and backward), the fused cross-entropy (loss rows + gradient rows),
// its batch mean and backward scaling, true-class probability and argmax.
//
// Layout: a workgroup of 256 threads handles 256 / seg rows; each row gets a segment of
// `seg` consecutive threads (a power of two chosen on the host from the row length, at most
// 256). Threads stride over the row by `seg`, so neighbouring threads read neighbouring
// columns (coalesced), rows of any length loop, and short rows (K = 6 classes) do not leave
// 250 of 256 threads idle. Per-row reductions run as segmented trees in workgroup memory.
//
// Rows past the end (last workgroup) still take part in every barrier: their loops run
// zero times and they write nothing. All indexing is guarded explicitly (the kernels are
// compiled without runtime bounds checks in release builds).

struct Params {
    rows: u32,
    cols: u32,
    seg: u32,    // threads per row: power of two, 1..=256
    mode: u32,   // softmax_fwd/bwd: 0 softmax, 1 log-softmax; ce_bwd: 0 mean, 1 rows
    inv_n: f32,  // 1 / rows (cross-entropy mean)
    flags: u32,  // cross_entropy: bit 0 soft targets, bit 1 row weights, bit 2 write gradient
    _p0: u32,
    _p1: u32,
}

@group(0) @binding(0) var<uniform> p: Params;

const NEG_INF: f32 = -3.402823466e+38;
const NAN_BITS: u32 = 0x7fc00000u;

var<workgroup> sh_a: array<f32, 256>;
var<workgroup> sh_b: array<f32, 256>;
var<workgroup> sh_i: array<u32, 256>;

fn row_index(wg: vec3<u32>, nwg: vec3<u32>, lid: u32) -> u32 {
    return flat_group(wg, nwg) * (WG / p.seg) + lid / p.seg;
}

// Columns this thread visits: 0 for rows past the end (they still reach every barrier).
fn row_len(row: u32) -> u32 {
    return select(0u, p.cols, row < p.rows);
}

fn nan() -> f32 {
    return bitcast<f32>(NAN_BITS);
}

// Sum of v over this thread's segment; every thread of the segment gets the result.
// Must be called in uniform control flow (it contains barriers).
fn seg_sum(lid: u32, v: f32) -> f32 {
    workgroupBarrier(); // earlier readers of sh_a are done
    sh_a[lid] = v;
    workgroupBarrier();
    let t = lid % p.seg;
    for (var s = p.seg / 2u; s > 0u; s = s / 2u) {
        if (t < s) {
            sh_a[lid] = sh_a[lid] + sh_a[lid + s];
        }
        workgroupBarrier();
    }
    return sh_a[lid - t];
}

// Combine per-thread online (max, sum of exp(x - max)) pairs over the segment.
fn seg_max_sum(lid: u32, m: f32, s: f32) -> vec2<f32> {
    workgroupBarrier();
    sh_a[lid] = m;
    sh_b[lid] = s;
    workgroupBarrier();
    let t = lid % p.seg;
    for (var k = p.seg / 2u; k > 0u; k = k / 2u) {
        if (t < k) {
            let m1 = sh_a[lid];
            let m2 = sh_a[lid + k];
            let mm = max(m1, m2);
            sh_b[lid] = sh_b[lid] * exp(m1 - mm) + sh_b[lid + k] * exp(m2 - mm);
            sh_a[lid] = mm;
        }
        workgroupBarrier();
    }
    return vec2<f32>(sh_a[lid - t], sh_b[lid - t]);
}

// Online softmax statistics: fold one value into (max, sum exp(x - max)). One exp per
// element, and a row is read once for both statistics (max-then-sum needs two passes).
// (Each kernel loops over its own buffer: WGSL cannot pass storage pointers to functions.)
fn online_step(st: vec2<f32>, v: f32) -> vec2<f32> {
    if (v > st.x) {
        return vec2<f32>(v, st.y * exp(st.x - v) + 1.0);
    }
    return vec2<f32>(st.x, st.y + exp(v - st.x));
}

// ---- softmax / log-softmax forward ---------------------------------------------------
@group(0) @binding(1) var<storage, read> sx: array<f32>;
@group(0) @binding(2) var<storage, read_write> sy: array<f32>;

@compute @workgroup_size(256)
fn softmax_fwd(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
               @builtin(local_invocation_index) lid: u32) {
    let row = row_index(wg, nwg, lid);
    let n = row_len(row);
    let t = lid % p.seg;
    let base = row * p.cols;
    var st = vec2<f32>(NEG_INF, 0.0);
    for (var k = t; k < n; k = k + p.seg) {
        st = online_step(st, sx[base + k]);
    }
    let ms = seg_max_sum(lid, st.x, st.y);
    let m = ms.x;
    if (p.mode == 0u) {
        let inv = 1.0 / ms.y;
        for (var k = t; k < n; k = k + p.seg) {
            sy[base + k] = exp(sx[base + k] - m) * inv;
        }
    } else {
        let lse = m + log(ms.y);
        for (var k = t; k < n; k = k + p.seg) {
            sy[base + k] = sx[base + k] - lse;
        }
    }
}

// ---- softmax / log-softmax backward ---------------------------------------------------
// softmax:     dx = y * (g - sum(g * y))
// log-softmax: dx = g - exp(y) * sum(g)       (y = log-softmax output)
@group(0) @binding(1) var<storage, read> by: array<f32>;
@group(0) @binding(2) var<storage, read> bg: array<f32>;
@group(0) @binding(3) var<storage, read_write> bdx: array<f32>;

@compute @workgroup_size(256)
fn softmax_bwd(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
               @builtin(local_invocation_index) lid: u32) {
    let row = row_index(wg, nwg, lid);
    let n = row_len(row);
    let t = lid % p.seg;
    let base = row * p.cols;
    var acc = 0.0;
    if (p.mode == 0u) {
        for (var k = t; k < n; k = k + p.seg) {
            acc = acc + bg[base + k] * by[base + k];
        }
    } else {
        for (var k = t; k < n; k = k + p.seg) {
            acc = acc + bg[base + k];
        }
    }
    let d = seg_sum(lid, acc);
    if (p.mode == 0u) {
        for (var k = t; k < n; k = k + p.seg) {
            let y = by[base + k];
            bdx[base + k] = y * (bg[base + k] - d);
        }
    } else {
        for (var k = t; k < n; k = k + p.seg) {
            bdx[base + k] = bg[base + k] - exp(by[base + k]) * d;
        }
    }
}

// ---- fused cross-entropy ----------------------------------------------------------------
// Per row i (logits x [N, K], m = max, s = sum exp(x - m), T = sum_k t_k):
//   raw_i  = sum_k t_k (m - x_k) + T log s            (= -sum_k t_k log softmax_k; no
//            cancellation: m - x_k >= 0, so logits of +-1000 stay exact)
//   loss_i = w_i raw_i
//   grad_ik = w_i (softmax_k T - t_k)                  (d loss_i / d x_ik; for a hard label
//            T = 1 and t = one-hot)
// A hard label >= K gives NaN loss and NaN gradient row instead of an out-of-bounds read.
@group(0) @binding(1) var<storage, read> ce_x: array<f32>;
@group(0) @binding(2) var<storage, read> ce_t: array<u32>;   // u32 labels [N] or f32 bits [N, K]
@group(0) @binding(3) var<storage, read> ce_w: array<f32>;   // row weights [N] (flags bit 1)
@group(0) @binding(4) var<storage, read_write> ce_loss: array<f32>;
@group(0) @binding(5) var<storage, read_write> ce_raw: array<f32>;
@group(0) @binding(6) var<storage, read_write> ce_grad: array<f32>; // [N, K] (flags bit 2)

@compute @workgroup_size(256)
fn cross_entropy(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                 @builtin(local_invocation_index) lid: u32) {
    let row = row_index(wg, nwg, lid);
    let n = row_len(row);
    let valid = row < p.rows;
    let t = lid % p.seg;
    let base = row * p.cols;
    let soft = (p.flags & 1u) != 0u;
    let weighted = (p.flags & 2u) != 0u;
    let write_grad = (p.flags & 4u) != 0u;

    var st = vec2<f32>(NEG_INF, 0.0);
    for (var k = t; k < n; k = k + p.seg) {
        st = online_step(st, ce_x[base + k]);
    }
    let ms = seg_max_sum(lid, st.x, st.y);
    let m = ms.x;
    let inv_s = 1.0 / ms.y;
    let log_s = log(ms.y);

    var w = 1.0;
    if (weighted && valid) {
        w = ce_w[row];
    }

    var raw = 0.0;
    if (soft) {
        var tsum = 0.0;
        for (var k = t; k < n; k = k + p.seg) {
            tsum = tsum + bitcast<f32>(ce_t[base + k]);
        }
        let big_t = seg_sum(lid, tsum);
        var acc = 0.0;
        for (var k = t; k < n; k = k + p.seg) {
            let x = ce_x[base + k];
            let tk = bitcast<f32>(ce_t[base + k]);
            acc = acc + tk * (m - x);
            if (write_grad) {
                ce_grad[base + k] = w * (exp(x - m) * inv_s * big_t - tk);
            }
        }
        raw = seg_sum(lid, acc) + big_t * log_s;
    } else {
        var label = p.cols; // rows past the end: treated as invalid, never read or written
        if (valid) {
            label = ce_t[row];
        }
        let ok = label < p.cols;
        if (ok) {
            raw = (m - ce_x[base + label]) + log_s;
        } else {
            raw = nan();
        }
        if (write_grad) {
            for (var k = t; k < n; k = k + p.seg) {
                var gk = nan();
                if (ok) {
                    gk = w * (exp(ce_x[base + k] - m) * inv_s - select(0.0, 1.0, k == label));
                }
                ce_grad[base + k] = gk;
            }
        }
    }
    if (valid && t == 0u) {
        ce_raw[row] = raw;
        ce_loss[row] = w * raw;
    }
}

// Batch mean of the loss rows: one workgroup, y[0] = sum(rows) / N.
@group(0) @binding(1) var<storage, read> mean_x: array<f32>;
@group(0) @binding(2) var<storage, read_write> mean_y: array<f32>;

@compute @workgroup_size(256)
fn ce_mean(@builtin(local_invocation_index) lid: u32) {
    // p.seg is 256 here: the whole workgroup is one segment
    var acc = 0.0;
    for (var k = lid; k < p.rows; k = k + WG) {
        acc = acc + mean_x[k];
    }
    let total = seg_sum(lid, acc);
    if (lid == 0u) {
        mean_y[0] = total * p.inv_n;
    }
}

// Backward scaling of the stored gradient rows, in place:
// mode 0 (mean): G[i, k] *= g[0] / N; mode 1 (rows): G[i, k] *= g[i].
@group(0) @binding(1) var<storage, read> cb_g: array<f32>;
@group(0) @binding(2) var<storage, read_write> cb_grad: array<f32>;

@compute @workgroup_size(256)
fn ce_bwd(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
          @builtin(local_invocation_index) lid: u32) {
    let i = flat_index(wg, nwg, lid);
    if (i >= p.rows * p.cols) { return; }
    var scale = 0.0;
    if (p.mode == 0u) {
        scale = cb_g[0] * p.inv_n;
    } else {
        scale = cb_g[i / p.cols];
    }
    cb_grad[i] = cb_grad[i] * scale;
}

// ---- true-class probability: softmax(x)[i, y_i] ------------------------------------------
@group(0) @binding(1) var<storage, read> tp_x: array<f32>;
@group(0) @binding(2) var<storage, read> tp_y: array<u32>;
@group(0) @binding(3) var<storage, read_write> tp_out: array<f32>;

@compute @workgroup_size(256)
fn true_prob(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
             @builtin(local_invocation_index) lid: u32) {
    let row = row_index(wg, nwg, lid);
    let n = row_len(row);
    let t = lid % p.seg;
    let base = row * p.cols;
    var st = vec2<f32>(NEG_INF, 0.0);
    for (var k = t; k < n; k = k + p.seg) {
        st = online_step(st, tp_x[base + k]);
    }
    let ms = seg_max_sum(lid, st.x, st.y);
    if (row < p.rows && t == 0u) {
        let label = tp_y[row];
        var v = nan();
        if (label < p.cols) {
            v = exp(tp_x[base + label] - ms.x) / ms.y;
        }
        tp_out[row] = v;
    }
}

// ---- argmax along the row (first index on ties) -------------------------------------------
@group(0) @binding(1) var<storage, read> am_x: array<f32>;
@group(0) @binding(2) var<storage, read_write> am_out: array<u32>;

@compute @workgroup_size(256)
fn argmax(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
          @builtin(local_invocation_index) lid: u32) {
    let row = row_index(wg, nwg, lid);
    let n = row_len(row);
    let t = lid % p.seg;
    let base = row * p.cols;
    var best = NEG_INF;
    var bi = 0xffffffffu;
    for (var k = t; k < n; k = k + p.seg) {
        let v = am_x[base + k];
        // k increases, so a strict > keeps the first index of a tie
        if (v > best || bi == 0xffffffffu) {
            best = v;
            bi = k;
        }
    }
    sh_a[lid] = best;
    sh_i[lid] = bi;
    workgroupBarrier();
    for (var s = p.seg / 2u; s > 0u; s = s / 2u) {
        if (t < s) {
            let v2 = sh_a[lid + s];
            let i2 = sh_i[lid + s];
            let i1 = sh_i[lid];
            let v1 = sh_a[lid];
            // take the other slot if it holds a larger value, or an equal value at a smaller
            // index; empty slots (index 0xffffffff) never win
            if (i2 != 0xffffffffu && (i1 == 0xffffffffu || v2 > v1 || (v2 == v1 && i2 < i1))) {
                sh_a[lid] = v2;
                sh_i[lid] = i2;
            }
        }
        workgroupBarrier();
    }
    if (row < p.rows && t == 0u) {
        am_out[row] = sh_i[lid];
    }
}
