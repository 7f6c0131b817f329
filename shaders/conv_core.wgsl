// The convolution's GEMMs on the shared f32 GEMM core (gemm_core.wgsl; a fragment of the
// conv modules of the `g` tiles, conv_strided.wgsl is the other): the core's rows are the
// GEMM's N (channels: O for the forward and dW, C for dX), its columns the GEMM's M (pixels,
// or dW's C·KH·KW), so a thread's 4 consecutive columns are 4 neighbouring addresses of y,
// dx or dW. The variant block in front defines the core's tile (CORE_*); this file gives
// conv.wgsl the interface conv_strided.wgsl describes.

const NT: u32 = CORE_NT;
const BM: u32 = CORE_COLS;
const BN: u32 = CORE_ROWS;
const BK: u32 = CORE_BK;
const OUT_M: u32 = 4u * CORE_GC;
const OUT_N: u32 = 4u * CORE_GR;
const LANES: u32 = CORE_TC; // threads sharing a thread's rows (the GEMM's columns)
// outputs 4g..4g+3 of a thread are 4 neighbouring GEMM rows from a multiple of 4 (conv.wgsl's
// store_y4)
const Y4: bool = true;

fn zero_acc() {
    core_zero();
}

fn put_m(buf: u32, k: u32, m: u32, v: f32) {
    core_put_col(buf, k, m, v);
}

fn put_n(buf: u32, k: u32, n: u32, v: f32) {
    core_put_row(buf, k, n, v);
}

fn mma(lid: u32, buf: u32) {
    core_mma(lid, buf);
}

fn out_m(lid: u32, i: u32) -> u32 {
    return core_col(lid, i / 4u) + i % 4u;
}

fn out_n(lid: u32, j: u32) -> u32 {
    return core_row(lid, j);
}

fn acc_at(i: u32, j: u32) -> f32 {
    return core_acc[j * CORE_GC + i / 4u][i % 4u];
}

// The statistics epilogue's scratch: R's tile holds 2·BK·BM values, L's 2·BK·BN (the host
// checks BN·LANES <= 2·BK·BM).
fn lane(lid: u32) -> u32 {
    return lid % CORE_TC;
}

fn stat_put(i: u32, v: f32) {
    core_r[i / 4u][i % 4u] = v;
}

fn stat_get(i: u32) -> f32 {
    return core_r[i / 4u][i % 4u];
}

fn mean_put(i: u32, v: f32) {
    core_l[i / 4u][i % 4u] = v;
}

fn mean_get(i: u32) -> f32 {
    return core_l[i / 4u][i % 4u];
}

// y as f16 words (flags bit 6): a thread's columns come in groups of 4 neighbouring rows
// of y starting at a multiple of 4, so it packs its own pairs; no workgroup memory.
fn half_store(lid: u32, m0: u32, n0: u32) {
    for (var j = 0u; j < OUT_N; j = j + 1u) {
        let o = n0 + out_n(lid, j);
        for (var i = 0u; i < OUT_M; i = i + 2u) {
            store_pair(m0 + out_m(lid, i), o, acc_at(i, j), acc_at(i + 1u, j));
        }
    }
}
