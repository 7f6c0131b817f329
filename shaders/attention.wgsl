// Fused multi-head attention (FlashAttention-style): o = softmax(q kᵀ · scale + mask) v.
// Tensors are contiguous [BH, L, Dh] (q, o, dO, dq), [BH, S, Dh] (k, v, dk, dv); the
// optional key-padding mask is [B, S] (> 0.5 = padded key), with b = bh / heads.
// The L×S score matrix never exists in device memory: every kernel recomputes its score
// tile in registers/workgroup memory.
//
// Entry points
//   attn_fwd       one workgroup per (bh, block of F_BQ query rows); loops over key tiles of
//                  F_BK keys staged in workgroup memory; online softmax (running max m and
//                  sum l per row); accumulator in registers. Writes o and the per-row
//                  logsumexp (lse) that the backward reuses.
//   attn_bwd_delta one thread per row: ld[2i] = lse[i], ld[2i+1] = D_i = rowsum(dO ⊙ O).
//                  (lse and D are interleaved so the backward passes bind 8 buffers at most.)
//   attn_bwd_dq    one workgroup per (bh, block of Q_BQ query rows), loops over key tiles:
//                  P = exp(s - lse), dS = P ⊙ (dO vᵀ - D), dq = dS k · scale.
//   attn_bwd_dkv   one workgroup per (bh, block of KV_BK keys), loops over query tiles:
//                  dv = Pᵀ dO, dk = dSᵀ q · scale.
// Each gradient element is owned by exactly one thread: no atomics.
//
// Thread layout (all three tiled kernels): 4 threads per row of the workgroup's block,
// thread t owns row t / 4 and lane c = t % 4. In the score phase lane c computes the
// scores of the other side's rows c, c+4, c+8, ...; in the accumulate phase it owns the
// head-dim columns c, c+4, ..., c+DH-4 (DH/4 registers per accumulator). Workgroup-memory
// rows are DH+1 floats apart (odd stride): the 8 rows a 32-wide subgroup reads at the same
// column fall in 8 different banks.
//
// Masked, padded (key >= S) and out-of-range (row >= L) scores are explicitly zero
// probabilities; a row whose keys are all padded gets o = 0, lse = 0 and zero gradients.
// Every index into a storage buffer is guarded by an explicit bound, so the kernels are
// correct with runtime bounds checks off.

// @variant-begin
// Instantiation for head dims up to 128 (the Rust side substitutes this block to make the
// Dh <= 32 and Dh <= 64 instantiations; keep the names and the one-per-line form).
const DH: u32 = 128u;    // padded head dim of this instantiation
const F_BQ: u32 = 32u;   // forward: query rows per workgroup
const F_BK: u32 = 16u;   // forward: keys per tile
const Q_BQ: u32 = 16u;   // dq pass: query rows per workgroup
const Q_BK: u32 = 16u;   // dq pass: keys per tile
const KV_BK: u32 = 16u;  // dk/dv pass: keys per workgroup
const KV_BQ: u32 = 8u;   // dk/dv pass: query rows per tile
// @variant-end

const NC: u32 = DH / 4u;         // accumulator columns per thread
const DS: u32 = DH + 1u;         // workgroup-memory row stride (odd: no bank conflicts)
const F_WG: u32 = F_BQ * 4u;
const Q_WG: u32 = Q_BQ * 4u;
const KV_WG: u32 = KV_BK * 4u;

// ------------------------------------------------------------------------------------
// forward
@group(0) @binding(1) var<storage, read> q: array<f32>;
@group(0) @binding(2) var<storage, read> k: array<f32>;
@group(0) @binding(3) var<storage, read> v: array<f32>;
@group(0) @binding(5) var<storage, read_write> o: array<f32>;
@group(0) @binding(6) var<storage, read_write> lse: array<f32>;

// Mixed precision: q, k and v as f16 (HALF; packed two per word and widened as they are
// loaded; the host binds them a second time at bindings 9-11, in the forward and both
// gradient passes). o, lse and every gradient stay f32.
override HALF: bool = false;
@group(0) @binding(9) var<storage, read> qh: array<u32>;
@group(0) @binding(10) var<storage, read> kh: array<u32>;
@group(0) @binding(11) var<storage, read> vh: array<u32>;

fn ld_q(i: u32) -> f32 {
    if (HALF) {
        return unpack2x16float(qh[i >> 1u])[i & 1u];
    }
    return q[i];
}

fn ld_k(i: u32) -> f32 {
    if (HALF) {
        return unpack2x16float(kh[i >> 1u])[i & 1u];
    }
    return k[i];
}

fn ld_v(i: u32) -> f32 {
    if (HALF) {
        return unpack2x16float(vh[i >> 1u])[i & 1u];
    }
    return v[i];
}

var<workgroup> f_q: array<f32, F_BQ * DS>;        // q block, pre-scaled, resident
var<workgroup> f_kv: array<f32, F_BK * DS>;       // k tile, then v tile (shared: saves DH*F_BK floats)
var<workgroup> f_s: array<f32, F_BQ * (F_BK + 1u)>; // score tile

@compute @workgroup_size(F_WG)
fn attn_fwd(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
            @builtin(local_invocation_index) t: u32) {
    let blk_id = flat_group(wg, nwg);
    if (blk_id >= p.bh * p.nblk) { return; } // uniform per workgroup
    let bh = blk_id / p.nblk;
    let q0 = (blk_id % p.nblk) * F_BQ;
    let b = bh / p.heads;
    let r = t / 4u;
    let c = t % 4u;
    let dh = p.dh;
    let qbase = bh * p.l * dh;
    let kbase = bh * p.s * dh;

    // stage the query block (coalesced: rows are contiguous in memory)
    for (var e = t; e < F_BQ * DH; e = e + F_WG) {
        let row = e / DH;
        let col = e % DH;
        let gr = q0 + row;
        var x = 0.0;
        if (gr < p.l && col < dh) { x = ld_q(qbase + gr * dh + col) * p.scale; }
        f_q[row * DS + col] = x;
    }

    var m = MASKED;
    var l = 0.0;
    var acc: array<f32, NC>;
    for (var j = 0u; j < NC; j = j + 1u) { acc[j] = 0.0; }

    for (var k0 = 0u; k0 < p.s; k0 = k0 + F_BK) {
        // k tile (zero beyond S)
        for (var e = t; e < F_BK * DH; e = e + F_WG) {
            let row = e / DH;
            let col = e % DH;
            let gk = k0 + row;
            var x = 0.0;
            if (gk < p.s && col < dh) { x = ld_k(kbase + gk * dh + col); }
            f_kv[row * DS + col] = x;
        }
        workgroupBarrier();
        // scores of row r against keys c, c+4, ...
        for (var j = c; j < F_BK; j = j + 4u) {
            var s = 0.0;
            for (var d = 0u; d < DH; d = d + 1u) {
                s = s + f_q[r * DS + d] * f_kv[j * DS + d];
            }
            if (!key_on(b, k0 + j)) { s = MASKED; }
            f_s[r * (F_BK + 1u) + j] = s;
        }
        workgroupBarrier();
        // v tile into the same buffer (zero beyond S: 0 * v must not meet garbage)
        for (var e = t; e < F_BK * DH; e = e + F_WG) {
            let row = e / DH;
            let col = e % DH;
            let gk = k0 + row;
            var x = 0.0;
            if (gk < p.s && col < dh) { x = ld_v(kbase + gk * dh + col); }
            f_kv[row * DS + col] = x;
        }
        workgroupBarrier();
        // online softmax update of row r (the 4 lanes of a row compute the same m, l)
        var mt = m;
        for (var j = 0u; j < F_BK; j = j + 1u) {
            mt = max(mt, f_s[r * (F_BK + 1u) + j]);
        }
        let alpha = exp(m - mt); // 1 while both are MASKED, 0 when the first real key arrives
        l = l * alpha;
        for (var jj = 0u; jj < NC; jj = jj + 1u) { acc[jj] = acc[jj] * alpha; }
        for (var j = 0u; j < F_BK; j = j + 1u) {
            let sv = f_s[r * (F_BK + 1u) + j];
            var pr = 0.0;
            if (sv > MASKED_CUT) { pr = exp(sv - mt); }
            l = l + pr;
            for (var jj = 0u; jj < NC; jj = jj + 1u) {
                acc[jj] = acc[jj] + pr * f_kv[j * DS + c + 4u * jj];
            }
        }
        m = mt;
        workgroupBarrier(); // before the next k tile overwrites f_kv and f_s
    }

    let gr = q0 + r;
    if (gr < p.l) {
        let end = row_end(m, l);
        for (var jj = 0u; jj < NC; jj = jj + 1u) {
            let col = c + 4u * jj;
            if (col < dh) { o[qbase + gr * dh + col] = acc[jj] * end.x; }
        }
        if (c == 0u) { lse[bh * p.l + gr] = end.y; }
    }
}

// ------------------------------------------------------------------------------------
// backward pre-pass: ld[2i] = lse[i], ld[2i+1] = D_i = sum_d dO[i,d] * O[i,d]
@group(0) @binding(1) var<storage, read> d_o_in: array<f32>;
@group(0) @binding(2) var<storage, read> d_go_in: array<f32>;
@group(0) @binding(3) var<storage, read> d_lse_in: array<f32>;
@group(0) @binding(4) var<storage, read_write> d_ld_out: array<f32>;

@compute @workgroup_size(256)
fn attn_bwd_delta(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                  @builtin(local_invocation_index) t: u32) {
    let i = flat_group(wg, nwg) * 256u + t;
    if (i >= p.bh * p.l) { return; }
    let base = i * p.dh;
    var acc = 0.0;
    for (var d = 0u; d < p.dh; d = d + 1u) {
        acc = acc + d_go_in[base + d] * d_o_in[base + d];
    }
    d_ld_out[2u * i] = d_lse_in[i];
    d_ld_out[2u * i + 1u] = acc;
}

// ------------------------------------------------------------------------------------
// backward passes: bindings 1-4 as in the forward, then dO, ld, outputs
@group(0) @binding(5) var<storage, read> go: array<f32>;
@group(0) @binding(6) var<storage, read> ld: array<f32>;
@group(0) @binding(7) var<storage, read_write> g1: array<f32>; // dq (dq pass) or dk (dkv pass)
@group(0) @binding(8) var<storage, read_write> g2: array<f32>; // dv (dkv pass)

var<workgroup> bq_q: array<f32, Q_BQ * DS>;         // q block, pre-scaled, resident
var<workgroup> bq_go: array<f32, Q_BQ * DS>;        // dO block, resident
var<workgroup> bq_kv: array<f32, Q_BK * DS>;        // v tile, then k tile
var<workgroup> bq_ds: array<f32, Q_BQ * (Q_BK + 1u)>; // dS tile

@compute @workgroup_size(Q_WG)
fn attn_bwd_dq(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
               @builtin(local_invocation_index) t: u32) {
    let blk_id = flat_group(wg, nwg);
    if (blk_id >= p.bh * p.nblk) { return; }
    let bh = blk_id / p.nblk;
    let q0 = (blk_id % p.nblk) * Q_BQ;
    let b = bh / p.heads;
    let r = t / 4u;
    let c = t % 4u;
    let dh = p.dh;
    let qbase = bh * p.l * dh;
    let kbase = bh * p.s * dh;

    for (var e = t; e < Q_BQ * DH; e = e + Q_WG) {
        let row = e / DH;
        let col = e % DH;
        let gr = q0 + row;
        var x = 0.0;
        var y = 0.0;
        if (gr < p.l && col < dh) {
            x = ld_q(qbase + gr * dh + col) * p.scale;
            y = go[qbase + gr * dh + col];
        }
        bq_q[row * DS + col] = x;
        bq_go[row * DS + col] = y;
    }
    let gr = q0 + r;
    let row_on = gr < p.l;
    var lse_r = 0.0;
    var del_r = 0.0;
    if (row_on) {
        lse_r = ld[2u * (bh * p.l + gr)];
        del_r = ld[2u * (bh * p.l + gr) + 1u];
    }

    var acc: array<f32, NC>;
    for (var j = 0u; j < NC; j = j + 1u) { acc[j] = 0.0; }
    var dp: array<f32, Q_BK / 4u>;

    for (var k0 = 0u; k0 < p.s; k0 = k0 + Q_BK) {
        // v tile: dP = dO vᵀ for keys c, c+4, ...
        for (var e = t; e < Q_BK * DH; e = e + Q_WG) {
            let row = e / DH;
            let col = e % DH;
            let gk = k0 + row;
            var x = 0.0;
            if (gk < p.s && col < dh) { x = ld_v(kbase + gk * dh + col); }
            bq_kv[row * DS + col] = x;
        }
        workgroupBarrier();
        for (var j = 0u; j < Q_BK / 4u; j = j + 1u) {
            let kk = c + 4u * j;
            var s = 0.0;
            for (var d = 0u; d < DH; d = d + 1u) {
                s = s + bq_go[r * DS + d] * bq_kv[kk * DS + d];
            }
            dp[j] = s;
        }
        workgroupBarrier();
        // k tile: P = exp(s - lse), dS = P (dP - D)
        for (var e = t; e < Q_BK * DH; e = e + Q_WG) {
            let row = e / DH;
            let col = e % DH;
            let gk = k0 + row;
            var x = 0.0;
            if (gk < p.s && col < dh) { x = ld_k(kbase + gk * dh + col); }
            bq_kv[row * DS + col] = x;
        }
        workgroupBarrier();
        for (var j = 0u; j < Q_BK / 4u; j = j + 1u) {
            let kk = c + 4u * j;
            var s = 0.0;
            for (var d = 0u; d < DH; d = d + 1u) {
                s = s + bq_q[r * DS + d] * bq_kv[kk * DS + d];
            }
            var ds = 0.0;
            if (row_on && key_on(b, k0 + kk)) {
                ds = exp(s - lse_r) * (dp[j] - del_r);
            }
            bq_ds[r * (Q_BK + 1u) + kk] = ds;
        }
        workgroupBarrier();
        // dq[r, c + 4jj] += sum_k dS[r, k] k[k, c + 4jj]
        for (var kk = 0u; kk < Q_BK; kk = kk + 1u) {
            let ds = bq_ds[r * (Q_BK + 1u) + kk];
            for (var jj = 0u; jj < NC; jj = jj + 1u) {
                acc[jj] = acc[jj] + ds * bq_kv[kk * DS + c + 4u * jj];
            }
        }
        workgroupBarrier();
    }

    if (row_on) {
        for (var jj = 0u; jj < NC; jj = jj + 1u) {
            let col = c + 4u * jj;
            if (col < dh) { g1[qbase + gr * dh + col] = acc[jj] * p.scale; }
        }
    }
}

var<workgroup> bk_k: array<f32, KV_BK * DS>;          // k block, resident
var<workgroup> bk_v: array<f32, KV_BK * DS>;          // v block, resident
var<workgroup> bk_q: array<f32, KV_BQ * DS>;          // q tile, pre-scaled
var<workgroup> bk_go: array<f32, KV_BQ * DS>;         // dO tile
var<workgroup> bk_p: array<f32, KV_BK * (KV_BQ + 1u)>;  // Pᵀ tile
var<workgroup> bk_ds: array<f32, KV_BK * (KV_BQ + 1u)>; // dSᵀ tile
var<workgroup> bk_ld: array<f32, KV_BQ * 2u>;         // lse, D of the tile's rows

@compute @workgroup_size(KV_WG)
fn attn_bwd_dkv(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                @builtin(local_invocation_index) t: u32) {
    let blk_id = flat_group(wg, nwg);
    if (blk_id >= p.bh * p.nblk) { return; }
    let bh = blk_id / p.nblk;
    let k0 = (blk_id % p.nblk) * KV_BK;
    let b = bh / p.heads;
    let r = t / 4u; // key row of the block
    let c = t % 4u;
    let dh = p.dh;
    let qbase = bh * p.l * dh;
    let kbase = bh * p.s * dh;

    for (var e = t; e < KV_BK * DH; e = e + KV_WG) {
        let row = e / DH;
        let col = e % DH;
        let gk = k0 + row;
        var x = 0.0;
        var y = 0.0;
        if (gk < p.s && col < dh) {
            x = ld_k(kbase + gk * dh + col);
            y = ld_v(kbase + gk * dh + col);
        }
        bk_k[row * DS + col] = x;
        bk_v[row * DS + col] = y;
    }
    let gk = k0 + r;
    let key_r = key_on(b, gk);

    var dk: array<f32, NC>;
    var dv: array<f32, NC>;
    for (var j = 0u; j < NC; j = j + 1u) {
        dk[j] = 0.0;
        dv[j] = 0.0;
    }

    for (var i0 = 0u; i0 < p.l; i0 = i0 + KV_BQ) {
        for (var e = t; e < KV_BQ * DH; e = e + KV_WG) {
            let row = e / DH;
            let col = e % DH;
            let gr = i0 + row;
            var x = 0.0;
            var y = 0.0;
            if (gr < p.l && col < dh) {
                x = ld_q(qbase + gr * dh + col) * p.scale;
                y = go[qbase + gr * dh + col];
            }
            bk_q[row * DS + col] = x;
            bk_go[row * DS + col] = y;
        }
        if (t < KV_BQ * 2u) {
            let gr = i0 + t / 2u;
            var x = 0.0;
            if (gr < p.l) { x = ld[2u * (bh * p.l + gr) + t % 2u]; }
            bk_ld[t] = x;
        }
        workgroupBarrier();
        // Pᵀ and dSᵀ of key r against query rows c, c+4, ...
        for (var i = c; i < KV_BQ; i = i + 4u) {
            var s = 0.0;
            var dpv = 0.0;
            for (var d = 0u; d < DH; d = d + 1u) {
                s = s + bk_k[r * DS + d] * bk_q[i * DS + d];
                dpv = dpv + bk_v[r * DS + d] * bk_go[i * DS + d];
            }
            var pr = 0.0;
            var ds = 0.0;
            if (key_r && i0 + i < p.l) {
                pr = exp(s - bk_ld[2u * i]);
                ds = pr * (dpv - bk_ld[2u * i + 1u]);
            }
            bk_p[r * (KV_BQ + 1u) + i] = pr;
            bk_ds[r * (KV_BQ + 1u) + i] = ds;
        }
        workgroupBarrier();
        // dv[r, c + 4jj] += sum_i P[i, r] dO[i, c + 4jj];  dk likewise with dS and scaled q
        for (var i = 0u; i < KV_BQ; i = i + 1u) {
            let pr = bk_p[r * (KV_BQ + 1u) + i];
            let ds = bk_ds[r * (KV_BQ + 1u) + i];
            for (var jj = 0u; jj < NC; jj = jj + 1u) {
                let col = c + 4u * jj;
                dv[jj] = dv[jj] + pr * bk_go[i * DS + col];
                dk[jj] = dk[jj] + ds * bk_q[i * DS + col];
            }
        }
        workgroupBarrier();
    }

    if (gk < p.s) {
        for (var jj = 0u; jj < NC; jj = jj + 1u) {
            let col = c + 4u * jj;
            if (col < dh) {
                g1[kbase + gk * dh + col] = dk[jj];
                g2[kbase + gk * dh + col] = dv[jj];
            }
        }
    }
}
