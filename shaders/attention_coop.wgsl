// Attention's forward on cooperative matrices (tensor cores): o = softmax(q kᵀ · scale + mask) v
// for f16 q, k and v, the o and lse of attention.wgsl's attn_fwd (its backward passes read
// them unchanged), with the two products on coop_tile.wgsl's 64 x 64 tile. Compiled only on
// adapters with cooperative matrices, shader f16 and subgroups of 32, or as their emulation
// (src/gpu/shaders.rs puts the `enable` directives in front); `ops::attention` offers it to
// the tuner for f16 q, k and v.
//
// attn_fwd_coop: one workgroup per (bh, block of 64 query rows, 64-column half of the head
// dim; a head dim above 64 has two halves, which both compute the scores: the smaller
// product). Per tile of 64 keys:
//   1. S = q kᵀ (64 rows x 64 keys, K = the head dim in slices of 32) into Cs, f32;
//   2. the online softmax of each row over Cs (a thread keeps one row's running max m and sum
//      l, and 32 of its scores), leaving P = exp(s·scale - m) in Cs;
//   3. P v for the workgroup's 64 columns (K = the tile's 64 keys in slices of 32), P staged
//      as two f16 terms, hi = f16(P) and lo = f16(P - hi), each multiplied in turn (hi from
//      common.wgsl's f16_round: a compiler may fold f32(f16(P)) back to P): P rounded
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

@compute @workgroup_size(128)
fn attn_fwd_coop(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                 @builtin(local_invocation_index) lid: u32) {
    let halves = (p.dh + TN - 1u) / TN;
    let id = flat_group(wg, nwg);
    if (id >= p.bh * p.nblk * halves) { return; } // uniform per workgroup
    let c0 = (id % halves) * TN;
    let blk = id / halves;
    let bh = blk / p.nblk;
    let q0 = (blk % p.nblk) * TM;
    let b = bh / p.heads;
    let dh = p.dh;
    let qbase = bh * p.l * dh;
    let kbase = bh * p.s * dh;
    let quarter = coop_quarter(lid);
    let r = lid / 2u;          // the row this thread keeps
    let cc = (lid % 2u) * 32u; // its 32 scores of a tile, then its 32 output columns
    let at = r * CS_STRIDE + cc;

    var m = MASKED;
    var l = 0.0;
    var acc: array<f32, 32>;
    for (var j = 0u; j < 32u; j = j + 1u) { acc[j] = 0.0; }

    for (var k0 = 0u; k0 < p.s; k0 = k0 + TN) {
        // 1. S = q kᵀ: a thread stages 16 of each slice's 64 x 32 values of q and of k,
        // consecutive threads along the head dim (coalesced)
        coop_zero();
        for (var d0 = 0u; d0 < dh; d0 = d0 + KS) {
            for (var i = 0u; i < 16u; i = i + 1u) {
                let e = lid + 128u * i;
                let row = e / KS;
                let d = d0 + e % KS;
                var x = f16(0.0);
                var y = f16(0.0);
                if (d < dh && q0 + row < p.l) { x = qh[qbase + (q0 + row) * dh + d]; }
                if (d < dh && k0 + row < p.s) { y = kh[kbase + (k0 + row) * dh + d]; }
                As[row * AS_STRIDE + e % KS] = x;
                Bs[(e % KS) * BS_STRIDE + row] = y; // kᵀ: a key is a column
            }
            workgroupBarrier();
            coop_slice(quarter);
            workgroupBarrier();
        }
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
                As[(e / KS) * AS_STRIDE + e % KS] = f16(f16_round(pv));
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
                As[(e / KS) * AS_STRIDE + e % KS] = f16(pv - f16_round(pv));
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
