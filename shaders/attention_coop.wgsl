// Attention on cooperative matrices (tensor cores) for f16 q, k and v: the forward
// o = softmax(q kᵀ · scale + mask) v with the o and lse of attention.wgsl's attn_fwd (either
// backward reads them), and the backward's two gradient passes (after attention.wgsl's ld
// pre-pass), every product on coop_tile.wgsl's 64 x 64 tile. Compiled only on adapters with
// cooperative matrices, shader f16 and subgroups of 32, or as their emulation
// (src/gpu/shaders.rs puts the `enable` directives in front); `ops::attention` offers them to
// the tuner for f16 q, k and v.
//
// attn_fwd_coop: one workgroup per (bh, block of 64 query rows, 64-column half of the head
// dim; a head dim above 64 has two halves, which both compute the scores: the smaller
// product). Per tile of 64 keys:
//   1. S = q kᵀ (64 rows x 64 keys, K = the head dim in slices of 32) into Cs, f32;
//   2. the online softmax of each row over Cs (a thread keeps one row's running max m and sum
//      l, and 32 of its scores), leaving P = exp(s·scale - m) in Cs;
//   3. P v for the workgroup's 64 columns (K = the tile's 64 keys in slices of 32), P staged
//      as two f16 terms, hi = f16(P) and lo = f16(P - hi), each multiplied in turn (hi16 and
//      lo16 below; hi from common.wgsl's f16_round, as a compiler may fold f32(f16(P)) back
//      to P): P rounded
//      to f16 alone would lose 2^-11 of every weight, hi + lo keeps about 2^-21, so o is the
//      f32-weight kernel's to f32 rounding (and the tuner's probe compares them at 1e-4);
//   4. the running output (a thread: one row, 32 columns, in registers) is rescaled by
//      exp(m_old - m_new) and the tile's P v added from Cs.
// Masked and padded keys (key >= S) have P = 0 and v staged as zero; rows past L stage q as
// zero and are not stored; a row whose keys are all masked gets o = 0 and lse = 0.

@group(0) @binding(1) var<storage, read> qh: array<f16>;
@group(0) @binding(2) var<storage, read> kh: array<f16>;
@group(0) @binding(3) var<storage, read> vh: array<f16>;
@group(0) @binding(5) var<storage, read_write> o: array<f32>;
@group(0) @binding(6) var<storage, read_write> lse: array<f32>;

// Per thread, one value the two threads of a row combine (the row's max, then its sum).
var<workgroup> red: array<f32, 128>;

// A workgroup's place in the grid: its bh (and batch element b), its first row (query rows;
// keys in the dkv pass), its first output column (its 64-column half of the head dim), and
// where bh's queries and keys start; `on` is false for the spare workgroups past the grid.
struct Place {
    on: bool,
    bh: u32,
    b: u32,
    r0: u32,
    c0: u32,
    qbase: u32,
    kbase: u32,
}

fn place(wg: vec3<u32>, nwg: vec3<u32>) -> Place {
    let halves = (p.dh + TN - 1u) / TN;
    let id = flat_group(wg, nwg);
    let blk = id / halves;
    let bh = blk / p.nblk;
    return Place(id < p.bh * p.nblk * halves, bh, bh / p.heads, (blk % p.nblk) * TM, (id % halves) * TN, bh * p.l * p.dh, bh * p.s * p.dh);
}

@compute @workgroup_size(128)
fn attn_fwd_coop(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                 @builtin(local_invocation_index) lid: u32) {
    let pl = place(wg, nwg);
    if (!pl.on) { return; } // uniform per workgroup
    let bh = pl.bh;
    let q0 = pl.r0;
    let c0 = pl.c0;
    let b = pl.b;
    let dh = p.dh;
    let qbase = pl.qbase;
    let kbase = pl.kbase;
    let quarter = coop_quarter(lid);
    let r = lid / 2u;          // the row this thread keeps
    let cc = (lid % 2u) * 32u; // its 32 scores of a tile, then its 32 output columns
    let at = r * CS_STRIDE + cc;

    var m = MASKED;
    var l = 0.0;
    var acc: array<f32, 32>;
    for (var j = 0u; j < 32u; j = j + 1u) { acc[j] = 0.0; }

    for (var k0 = 0u; k0 < p.s; k0 = k0 + TN) {
        // 1. S = q kᵀ (K = the head dim)
        product_f16(0u, q0, p.l, qbase, 1u, k0, p.s, kbase, lid);
        coop_store(quarter);
        workgroupBarrier();

        // 2. online softmax of row r: the tile's max over both threads of the row, then P
        var mx = MASKED;
        for (var j = 0u; j < 32u; j = j + 1u) {
            var sv = MASKED;
            if (key_on(b, k0 + cc + j)) { sv = Cs[at + j] * p.scale; }
            Cs[at + j] = sv;
            mx = max(mx, sv);
        }
        red[lid] = mx;
        workgroupBarrier();
        let mt = max(m, max(red[lid], red[lid ^ 1u]));
        let alpha = exp(m - mt); // 1 while both are MASKED, 0 when the first real key arrives
        var sum = 0.0;
        for (var j = 0u; j < 32u; j = j + 1u) {
            let sv = Cs[at + j];
            var pr = 0.0;
            if (sv > MASKED_CUT) { pr = exp(sv - mt); }
            Cs[at + j] = pr;
            sum = sum + pr;
        }
        workgroupBarrier(); // both threads of the row have read red
        red[lid] = sum;
        workgroupBarrier();
        // a + b == b + a exactly: both threads of the row keep the same l
        l = l * alpha + (red[lid] + red[lid ^ 1u]);
        m = mt;
        for (var j = 0u; j < 32u; j = j + 1u) { acc[j] = acc[j] * alpha; }

        // 3. P v for columns c0.. c0 + 63: per slice of 32 keys, v staged once (consecutive
        // threads along a row of v: coalesced), P's hi and then its lo term in As
        coop_zero();
        for (var ks = 0u; ks < TN; ks = ks + KS) {
            for (var i = 0u; i < 16u; i = i + 1u) {
                let e = lid + 128u * i;
                let pv = Cs[(e / KS) * CS_STRIDE + ks + e % KS];
                As[(e / KS) * AS_STRIDE + e % KS] = hi16(pv);
                let key = k0 + ks + e / TN;
                let d = c0 + e % TN;
                var y = f16(0.0);
                if (key < p.s && d < dh) { y = vh[kbase + key * dh + d]; }
                Bs[(e / TN) * BS_STRIDE + e % TN] = y;
            }
            workgroupBarrier();
            coop_slice(quarter);
            workgroupBarrier();
            for (var i = 0u; i < 16u; i = i + 1u) {
                let e = lid + 128u * i;
                let pv = Cs[(e / KS) * CS_STRIDE + ks + e % KS];
                As[(e / KS) * AS_STRIDE + e % KS] = lo16(pv);
            }
            workgroupBarrier();
            coop_slice(quarter);
            workgroupBarrier();
        }
        coop_store(quarter); // P is read: Cs takes the tile's P v
        workgroupBarrier();
        // 4. the running output
        for (var j = 0u; j < 32u; j = j + 1u) { acc[j] = acc[j] + Cs[at + j]; }
        workgroupBarrier(); // before the next tile's scores overwrite Cs
    }

    let gr = q0 + r;
    if (gr < p.l) {
        let end = row_end(m, l);
        for (var j = 0u; j < 32u; j = j + 1u) {
            let col = c0 + cc + j;
            if (col < dh) { o[qbase + gr * dh + col] = acc[j] * end.x; }
        }
        if (lid % 2u == 0u && c0 == 0u) { lse[bh * p.l + gr] = end.y; }
    }
}

// ------------------------------------------------------------------------------------
// The backward's products on cooperative matrices, for the same f16 q, k and v: attention.wgsl's
// attn_bwd_dq and attn_bwd_dkv (the same ld pre-pass: ld[2i] = lse_i, ld[2i+1] = D_i), one
// workgroup per (bh, block of 64 query rows or keys, 64-column half of the head dim), looping
// over tiles of 64 keys or query rows:
//   dq pass:  S = q kᵀ, P = exp(S·scale - lse), dP = dO vᵀ, dS = P (dP - D), dq += dS k;
//   dkv pass: Sᵀ = k qᵀ, Pᵀ, dPᵀ = v dOᵀ, dSᵀ, dv += Pᵀ dO, dk += dSᵀ q;
// dq and dk times scale at the end. The f32 operands (dO, P, dS) are staged as hi + lo f16
// terms, as P in the forward, each scaled by a power of two from its tile's (or block's)
// largest magnitude (tile_scale), so that neither term leaves f16's range or precision;
// a product's sums are multiplied back by the inverse (exact) as they join the running sums
// in registers. A product of two f32 operands (Pᵀ dO) takes three: hi·hi + hi·lo + lo·hi.
// The results match the f32-arithmetic tiles' to f32 rounding.

@group(0) @binding(5) var<storage, read> go: array<f32>;          // dO
@group(0) @binding(6) var<storage, read> ld: array<f32>;          // lse, D interleaved
@group(0) @binding(7) var<storage, read_write> g1: array<f32>;    // dq (dq pass) or dk (dkv pass)
@group(0) @binding(8) var<storage, read_write> g2: array<f32>;    // dv (dkv pass)

// The f16 terms of v·t: the value rounded, and what the rounding left.
fn hi16(v: f32) -> f16 {
    return f16(f16_round(v));
}
fn lo16(v: f32) -> f16 {
    return f16(v - f16_round(v));
}

// The power of two t with the workgroup's largest |value| times t in [2^14, 2^15)
// (coop_tile.wgsl's coop_scale), from each thread's largest `mx`; 1 for zero or non-finite.
// Every thread must call it (barriers).
fn tile_scale(lid: u32, mx: f32) -> f32 {
    workgroupBarrier(); // red's previous use is over
    red[lid] = mx;
    workgroupBarrier();
    var m = 0.0;
    for (var i = 0u; i < 128u; i = i + 1u) { m = max(m, red[i]); }
    return coop_scale(bitcast<u32>(m));
}

// The largest |dO| of rows r0.. r0 + 63 (those below L), this thread's share of them.
fn go_max(lid: u32, base: u32, r0: u32) -> f32 {
    var mx = 0.0;
    for (var e = lid; e < TM * p.dh; e = e + 128u) {
        let row = r0 + e / p.dh;
        if (row < p.l) { mx = max(mx, abs(go[base + row * p.dh + e % p.dh])); }
    }
    return mx;
}

// Stage the 64 x 32 slice at d0 of rows r0.. of an f16 matrix [rows, dh] (rows past n and
// columns past dh as zero) as As (transposed = false: rows of the product) or as Bs
// (transposed = true: columns of the product, the matrix's transpose).
fn stage_f16(src: u32, base: u32, r0: u32, n: u32, d0: u32, lid: u32, transposed: bool) {
    for (var i = 0u; i < 16u; i = i + 1u) {
        let e = lid + 128u * i;
        let row = e / KS;
        let d = d0 + e % KS;
        var x = f16(0.0);
        if (d < p.dh && r0 + row < n) {
            let at = base + (r0 + row) * p.dh + d;
            if (src == 0u) { x = qh[at]; } else if (src == 1u) { x = kh[at]; } else { x = vh[at]; }
        }
        if (transposed) {
            Bs[(e % KS) * BS_STRIDE + row] = x;
        } else {
            As[row * AS_STRIDE + e % KS] = x;
        }
    }
}

// Stage the same slice of dO (rows r0.., below L) times s, its hi (part 0) or lo (part 1) term.
fn stage_go(base: u32, r0: u32, d0: u32, s: f32, part: u32, lid: u32, transposed: bool) {
    for (var i = 0u; i < 16u; i = i + 1u) {
        let e = lid + 128u * i;
        let row = e / KS;
        let d = d0 + e % KS;
        var v = 0.0;
        if (d < p.dh && r0 + row < p.l) { v = go[base + (r0 + row) * p.dh + d] * s; }
        var x = hi16(v);
        if (part == 1u) { x = lo16(v); }
        if (transposed) {
            Bs[(e % KS) * BS_STRIDE + row] = x;
        } else {
            As[row * AS_STRIDE + e % KS] = x;
        }
    }
}

// Stage columns ks.. ks + 31 of the 64 x 64 f32 matrix in Cs, times s, as As: its hi or lo term.
fn stage_cs(ks: u32, s: f32, part: u32, lid: u32) {
    for (var i = 0u; i < 16u; i = i + 1u) {
        let e = lid + 128u * i;
        let v = Cs[(e / KS) * CS_STRIDE + ks + e % KS] * s;
        var x = hi16(v);
        if (part == 1u) { x = lo16(v); }
        As[(e / KS) * AS_STRIDE + e % KS] = x;
    }
}

// Stage rows k0 + ks.. (32 of them, below n) of an f16 matrix [rows, dh] at columns c0.. c0 + 63
// as Bs, or of dO times s (src 3, part: hi or lo).
fn stage_rows(src: u32, base: u32, r0: u32, n: u32, c0: u32, s: f32, part: u32, lid: u32) {
    for (var i = 0u; i < 16u; i = i + 1u) {
        let e = lid + 128u * i;
        let row = r0 + e / TN;
        let d = c0 + e % TN;
        var x = f16(0.0);
        if (row < n && d < p.dh) {
            let at = base + row * p.dh + d;
            if (src == 0u) { x = qh[at]; } else if (src == 1u) { x = kh[at]; } else if (src == 2u) { x = vh[at]; } else {
                let v = go[at] * s;
                x = hi16(v);
                if (part == 1u) { x = lo16(v); }
            }
        }
        Bs[(e / TN) * BS_STRIDE + e % TN] = x;
    }
}

// A product over K = the head dim into the accumulators: rows ar0.. of the f16 matrix `a`
// times the transpose of rows br0.. of the f16 matrix `b` (sources 0: q, 1: k, 2: v; rows
// below an and bn). The caller stores the accumulators. Every thread must call it (barriers).
fn product_f16(a: u32, ar0: u32, an: u32, abase: u32, b: u32, br0: u32, bn: u32, bbase: u32, lid: u32) {
    let quarter = coop_quarter(lid);
    coop_zero();
    for (var d0 = 0u; d0 < p.dh; d0 = d0 + KS) {
        stage_f16(a, abase, ar0, an, d0, lid, false);
        stage_f16(b, bbase, br0, bn, d0, lid, true);
        workgroupBarrier();
        coop_slice(quarter);
        workgroupBarrier();
    }
}

// The same with dO on one side, times s, as its hi and then its lo term: rows gr0.. of dO
// times the f16 matrix's rows fr0.. transposed (go_first), or the f16 matrix's rows times
// dO's transposed. (Separate from product_f16: the forward, which binds o where the
// backward binds dO, must not reach dO.)
fn product_go(f: u32, fr0: u32, fnum: u32, fbase: u32, gbase: u32, gr0: u32, s: f32, go_first: bool, lid: u32) {
    let quarter = coop_quarter(lid);
    coop_zero();
    for (var d0 = 0u; d0 < p.dh; d0 = d0 + KS) {
        stage_f16(f, fbase, fr0, fnum, d0, lid, go_first);
        for (var part = 0u; part < 2u; part = part + 1u) {
            stage_go(gbase, gr0, d0, s, part, lid, !go_first);
            workgroupBarrier();
            coop_slice(quarter);
            workgroupBarrier();
        }
    }
}

// The 64 x 64 f32 matrix in Cs times t (staged as hi + lo) times rows r0.. r0 + 63 of an f16
// matrix (src 0: q, 1: k; rows below n) at columns c0.. c0 + 63, into Cs. Every thread must
// call it (barriers).
fn cs_times_rows(src: u32, base: u32, r0: u32, n: u32, c0: u32, t: f32, lid: u32) {
    let quarter = coop_quarter(lid);
    coop_zero();
    for (var ks = 0u; ks < TN; ks = ks + KS) {
        stage_rows(src, base, r0 + ks, n, c0, 1.0, 0u, lid);
        for (var part = 0u; part < 2u; part = part + 1u) {
            stage_cs(ks, t, part, lid);
            workgroupBarrier();
            coop_slice(quarter);
            workgroupBarrier();
        }
    }
    coop_store(quarter); // every slice is read: Cs takes the product
    workgroupBarrier();
}

@compute @workgroup_size(128)
fn attn_bwd_dq_coop(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                    @builtin(local_invocation_index) lid: u32) {
    let pl = place(wg, nwg);
    if (!pl.on) { return; } // uniform per workgroup
    let bh = pl.bh;
    let q0 = pl.r0;
    let c0 = pl.c0;
    let b = pl.b;
    let qbase = pl.qbase;
    let kbase = pl.kbase;
    let quarter = coop_quarter(lid);
    let r = lid / 2u;
    let cc = (lid % 2u) * 32u;
    let at = r * CS_STRIDE + cc;
    let row_on = q0 + r < p.l;
    var lse_r = 0.0;
    var del_r = 0.0;
    if (row_on) {
        lse_r = ld[2u * (bh * p.l + q0 + r)];
        del_r = ld[2u * (bh * p.l + q0 + r) + 1u];
    }
    // dO's scale: one for the whole block (every key tile multiplies the same rows)
    let so = tile_scale(lid, go_max(lid, qbase, q0));

    var acc: array<f32, 32>;
    var pr: array<f32, 32>;
    for (var j = 0u; j < 32u; j = j + 1u) { acc[j] = 0.0; }

    for (var k0 = 0u; k0 < p.s; k0 = k0 + TN) {
        // P = exp(q kᵀ · scale - lse), kept in registers
        product_f16(0u, q0, p.l, qbase, 1u, k0, p.s, kbase, lid);
        coop_store(quarter);
        workgroupBarrier();
        for (var j = 0u; j < 32u; j = j + 1u) {
            pr[j] = 0.0;
            if (row_on && key_on(b, k0 + cc + j)) { pr[j] = exp(Cs[at + j] * p.scale - lse_r); }
        }
        workgroupBarrier();
        // dS·so = P (dP·so - D·so), into Cs, and its scale for staging
        product_go(2u, k0, p.s, kbase, qbase, q0, so, true, lid);
        coop_store(quarter);
        workgroupBarrier();
        var mx = 0.0;
        for (var j = 0u; j < 32u; j = j + 1u) {
            let ds = pr[j] * (Cs[at + j] - del_r * so);
            Cs[at + j] = ds;
            mx = max(mx, abs(ds));
        }
        let t = tile_scale(lid, mx);
        // dq += dS k over the tile's keys
        cs_times_rows(1u, kbase, k0, p.s, c0, t, lid);
        let back = 1.0 / (t * so);
        for (var j = 0u; j < 32u; j = j + 1u) { acc[j] = acc[j] + Cs[at + j] * back; }
        workgroupBarrier();
    }
    if (row_on) {
        for (var j = 0u; j < 32u; j = j + 1u) {
            let col = c0 + cc + j;
            if (col < p.dh) { g1[qbase + (q0 + r) * p.dh + col] = acc[j] * p.scale; }
        }
    }
}

@compute @workgroup_size(128)
fn attn_bwd_dkv_coop(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                     @builtin(local_invocation_index) lid: u32) {
    let pl = place(wg, nwg);
    if (!pl.on) { return; } // uniform per workgroup
    let bh = pl.bh;
    let k0 = pl.r0;
    let c0 = pl.c0;
    let b = pl.b;
    let qbase = pl.qbase;
    let kbase = pl.kbase;
    let quarter = coop_quarter(lid);
    let r = lid / 2u; // the key row this thread keeps
    let cc = (lid % 2u) * 32u; // its 32 query columns, then its 32 output columns
    let at = r * CS_STRIDE + cc;
    let key_r = key_on(b, k0 + r);

    var dk: array<f32, 32>;
    var dv: array<f32, 32>;
    var pt: array<f32, 32>;
    var dst: array<f32, 32>;
    for (var j = 0u; j < 32u; j = j + 1u) {
        dk[j] = 0.0;
        dv[j] = 0.0;
    }

    for (var i0 = 0u; i0 < p.l; i0 = i0 + TN) {
        let so = tile_scale(lid, go_max(lid, qbase, i0));
        // Pᵀ = exp(k qᵀ · scale - lse of each query), in registers
        product_f16(1u, k0, p.s, kbase, 0u, i0, p.l, qbase, lid);
        coop_store(quarter);
        workgroupBarrier();
        var pmx = 0.0;
        for (var j = 0u; j < 32u; j = j + 1u) {
            let i = i0 + cc + j;
            pt[j] = 0.0;
            if (key_r && i < p.l) { pt[j] = exp(Cs[at + j] * p.scale - ld[2u * (bh * p.l + i)]); }
            pmx = max(pmx, pt[j]);
        }
        workgroupBarrier();
        // dSᵀ·so = Pᵀ (v dOᵀ·so - D·so), in registers
        product_go(2u, k0, p.s, kbase, qbase, i0, so, false, lid);
        coop_store(quarter);
        workgroupBarrier();
        var smx = 0.0;
        for (var j = 0u; j < 32u; j = j + 1u) {
            let i = i0 + cc + j;
            var dl = 0.0;
            if (i < p.l) { dl = ld[2u * (bh * p.l + i) + 1u]; }
            dst[j] = pt[j] * (Cs[at + j] - dl * so);
            smx = max(smx, abs(dst[j]));
        }
        // dv += Pᵀ dO: Pᵀ and dO both f32, hi·hi + lo·hi + hi·lo (each thread rewrites only
        // its own entries of Cs; tile_scale's barriers order them before the staging)
        for (var j = 0u; j < 32u; j = j + 1u) { Cs[at + j] = pt[j]; }
        let tp = tile_scale(lid, pmx);
        coop_zero();
        for (var ks = 0u; ks < TN; ks = ks + KS) {
            for (var term = 0u; term < 3u; term = term + 1u) {
                stage_cs(ks, tp, term & 1u, lid);
                stage_rows(3u, qbase, i0 + ks, p.l, c0, so, term >> 1u, lid);
                workgroupBarrier();
                coop_slice(quarter);
                workgroupBarrier();
            }
        }
        coop_store(quarter);
        workgroupBarrier();
        let vback = 1.0 / (tp * so);
        for (var j = 0u; j < 32u; j = j + 1u) { dv[j] = dv[j] + Cs[at + j] * vback; }
        // dk += dSᵀ q
        for (var j = 0u; j < 32u; j = j + 1u) { Cs[at + j] = dst[j]; }
        let ts = tile_scale(lid, smx);
        cs_times_rows(0u, qbase, i0, p.l, c0, ts, lid);
        let kback = 1.0 / (ts * so);
        for (var j = 0u; j < 32u; j = j + 1u) { dk[j] = dk[j] + Cs[at + j] * kback; }
        workgroupBarrier();
    }
    if (k0 + r < p.s) {
        for (var j = 0u; j < 32u; j = j + 1u) {
            let col = c0 + cc + j;
            if (col < p.dh) {
                g1[kbase + (k0 + r) * p.dh + col] = dk[j] * p.scale;
                g2[kbase + (k0 + r) * p.dh + col] = dv[j];
            }
        }
    }
}
