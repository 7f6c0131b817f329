// The f32 GEMM core (a fragment): the workgroup tiles, the accumulators and the multiply-add
// loop of a tiled product C[r][c] = sum over k of L[k][r] * R[k][c], without the loaders and
// the epilogue, which each family writes for its own operands (conv_core.wgsl adapts it to
// the convolution's GEMMs).
//
// The includer defines the tile: CORE_ROWS x CORE_COLS outputs per workgroup, K-slices of
// CORE_BK, and per thread CORE_GR groups of 4 rows times CORE_GC groups of 4 columns.
// - Threads: CORE_TC along the columns (the fastest index of the invocation), CORE_TR along
//   the rows. Thread (tr, tc) owns rows 4tr + (CORE_ROWS / CORE_GR)·g + i (i < 4) and
//   columns 4tc + (CORE_COLS / CORE_GC)·g + i: groups of 4 consecutive columns, so that a
//   thread's outputs along a column group are one vec4, and the groups of neighbouring
//   threads are neighbours (a subgroup's stores of one row span 4·CORE_TC columns).
// - Both tiles are k-major rows of vec4 in workgroup memory (tile[k][r / 4], tile[k][c / 4]),
//   double-buffered ([2][CORE_BK][row]): per k, a thread reads CORE_GR vec4s of L and CORE_GC
//   of R for 16·CORE_GR·CORE_GC multiply-adds. The convolution's own tiles read 4 + TN scalars
//   for 4·TN (conv_strided.wgsl).
// - The vec4 columns of a row are swizzled (XOR k mod 8 within aligned groups of 8 vec4s,
//   or of the whole row where it is shorter), so scalar stores down k (a k-contiguous
//   operand staged by consecutive threads) reach 8 times more banks, while the vec4 reads
//   of a subgroup stay whole permuted groups. The rows then need no padding.
// - A subgroup shares one or two tr: its reads of L are broadcasts, its reads of R
//   consecutive vec4s.
// The same tile, for matmul's operands, is matmul.wgsl's 128 x 128 tile (CORE_GR = CORE_GC = 2).

const CORE_TC: u32 = CORE_COLS / (4u * CORE_GC); // threads along the columns
const CORE_TR: u32 = CORE_ROWS / (4u * CORE_GR); // threads along the rows
const CORE_NT: u32 = CORE_TC * CORE_TR;
const CORE_LV: u32 = CORE_ROWS / 4u; // vec4s per k row of L's tile
const CORE_RV: u32 = CORE_COLS / 4u; // of R's
const CORE_ACC: u32 = 4u * CORE_GR * CORE_GC; // accumulator vec4s per thread

var<workgroup> core_l: array<vec4<f32>, 2u * CORE_BK * CORE_LV>;
var<workgroup> core_r: array<vec4<f32>, 2u * CORE_BK * CORE_RV>;
// core_acc[i * CORE_GC + g]: row i (< 4·CORE_GR) of the thread, column group g
var<private> core_acc: array<vec4<f32>, CORE_ACC>;

// The vec4 index of column v (in vec4s) of k row k of buffer buf, in a tile of `len` vec4s
// per row (a power of two below 8, or a multiple of 8).
fn core_at(buf: u32, k: u32, v: u32, len: u32) -> u32 {
    return (buf * CORE_BK + k) * len + (v ^ (k & (min(len, 8u) - 1u)));
}

// Stage one value of L (row r of the tile) or R (column c) at k row k of buffer buf.
fn core_put_row(buf: u32, k: u32, r: u32, v: f32) {
    core_l[core_at(buf, k, r / 4u, CORE_LV)][r % 4u] = v;
}

fn core_put_col(buf: u32, k: u32, c: u32, v: f32) {
    core_r[core_at(buf, k, c / 4u, CORE_RV)][c % 4u] = v;
}

// Stage 4 values at once: vec4 v of L's (R's) k row k.
fn core_put_row4(buf: u32, k: u32, v: u32, x: vec4<f32>) {
    core_l[core_at(buf, k, v, CORE_LV)] = x;
}

fn core_put_col4(buf: u32, k: u32, v: u32, x: vec4<f32>) {
    core_r[core_at(buf, k, v, CORE_RV)] = x;
}

fn core_zero() {
    for (var i = 0u; i < CORE_ACC; i = i + 1u) {
        core_acc[i] = vec4<f32>(0.0);
    }
}

// core_acc += L^T R over the K-slice staged in buffer buf (every k of it: the loaders
// stage zeros beyond K).
fn core_mma(lid: u32, buf: u32) {
    let tc = lid % CORE_TC;
    let tr = lid / CORE_TC;
    for (var kk = 0u; kk < CORE_BK; kk = kk + 1u) {
        var lv: array<vec4<f32>, CORE_GR>;
        for (var g = 0u; g < CORE_GR; g = g + 1u) {
            lv[g] = core_l[core_at(buf, kk, tr + (CORE_LV / CORE_GR) * g, CORE_LV)];
        }
        var rv: array<vec4<f32>, CORE_GC>;
        for (var g = 0u; g < CORE_GC; g = g + 1u) {
            rv[g] = core_r[core_at(buf, kk, tc + (CORE_RV / CORE_GC) * g, CORE_RV)];
        }
        for (var i = 0u; i < 4u * CORE_GR; i = i + 1u) {
            let a = vec4<f32>(lv[i / 4u][i % 4u]);
            for (var g = 0u; g < CORE_GC; g = g + 1u) {
                core_acc[i * CORE_GC + g] = fma(a, rv[g], core_acc[i * CORE_GC + g]);
            }
        }
    }
}

// The tile row of the thread's accumulator row i (< 4·CORE_GR).
fn core_row(lid: u32, i: u32) -> u32 {
    return 4u * (lid / CORE_TC) + (CORE_ROWS / CORE_GR) * (i / 4u) + i % 4u;
}

// The first tile column of the thread's column group g (< CORE_GC).
fn core_col(lid: u32, g: u32) -> u32 {
    return 4u * (lid % CORE_TC) + (CORE_COLS / CORE_GC) * g;
}
