// The convolution's own GEMM tile (a fragment of the conv modules; conv_core.wgsl is the
// other): BM x BN outputs per workgroup, K-slices of BK = 16, TX x TY threads (TX along M,
// TY along N), each accumulating 4 x TN outputs in registers (rows tx + TX*i, columns
// ty + TY*j). The variant block in front defines TX, TY and TN.
// Why this layout (TX = 32): a 32-thread subgroup shares ty and spans 32 consecutive M rows, so
//  - reads of As are 32 consecutive words (conflict-free), reads of Bs are one broadcast;
//  - output writes are 32 consecutive M rows: for y, dx (pixels) and dW (weight index)
//    consecutive M rows are consecutive addresses, so stores are coalesced.
// Per K-slice each thread does 4 + TN workgroup loads for 4*TN FMAs.
// The interface every tile gives conv.wgsl: NT, BM, BN, BK; zero_acc, put_m, put_n, mma;
// the outputs (OUT_M x OUT_N per thread: out_m, out_n, acc_at; Y4: whether they come in
// groups of 4 neighbouring rows); the scratch of the
// statistics epilogue (lane, LANES, stat_*, mean_*); half_store.

const NT: u32 = TX * TY;  // threads per workgroup
const BM: u32 = 4u * TX;
const BN: u32 = TY * TN;
const BK: u32 = 16u;
const BMP: u32 = BM + 1u; // padded row of As: the dW loader stores with K fastest (2-way at most)
const BNP: u32 = BN + 1u; // padded row of Bs: the B loaders store with K fastest
const OUT_M: u32 = 4u;
const OUT_N: u32 = TN;
const LANES: u32 = TX; // threads sharing a thread's columns
const Y4: bool = false; // a thread's rows are TX apart

// Two buffers of each tile: slice i is staged into buffer i % 2 while the other holds slice
// i - 1 for the multiply-adds.
var<workgroup> As: array<f32, 2u * BK * BMP>;
var<workgroup> Bs: array<f32, 2u * BK * BNP>;
var<private> acc: array<vec4<f32>, TN>; // acc[j][i]: row tx + TX*i, column ty + TY*j

fn zero_acc() {
    for (var j = 0u; j < TN; j = j + 1u) {
        acc[j] = vec4<f32>(0.0);
    }
}

// Stage value v of tile row m (column n) at K row k of buffer buf.
fn put_m(buf: u32, k: u32, m: u32, v: f32) {
    As[(buf * BK + k) * BMP + m] = v;
}

fn put_n(buf: u32, k: u32, n: u32, v: f32) {
    Bs[(buf * BK + k) * BNP + n] = v;
}

// acc += As^T Bs over the K-slice staged in buffer `buf`.
fn mma(lid: u32, buf: u32) {
    let tx = lid % TX;
    let ty = lid / TX;
    for (var kk = 0u; kk < BK; kk = kk + 1u) {
        let ar = (buf * BK + kk) * BMP + tx;
        let a = vec4<f32>(As[ar], As[ar + TX], As[ar + 2u * TX], As[ar + 3u * TX]);
        let br = (buf * BK + kk) * BNP + ty;
        for (var j = 0u; j < TN; j = j + 1u) {
            acc[j] = fma(a, vec4<f32>(Bs[br + TY * j]), acc[j]);
        }
    }
}

// The tile row (column) of the thread's output i < OUT_M (j < OUT_N), and its value.
fn out_m(lid: u32, i: u32) -> u32 {
    return lid % TX + TX * i;
}

fn out_n(lid: u32, j: u32) -> u32 {
    return lid / TX + TY * j;
}

fn acc_at(i: u32, j: u32) -> f32 {
    return acc[j][i];
}

// The statistics epilogue's scratch (As and Bs are free once the K loop's last barrier has
// passed): BN·LANES values, and BN means.
fn lane(lid: u32) -> u32 {
    return lid % TX;
}

fn stat_put(i: u32, v: f32) {
    As[i] = v;
}

fn stat_get(i: u32) -> f32 {
    return As[i];
}

fn mean_put(i: u32, v: f32) {
    Bs[i] = v;
}

fn mean_get(i: u32) -> f32 {
    return Bs[i];
}

// y as f16 words (flags bit 6): a thread's rows tx + TX*i are not neighbours, so the tile
// goes through workgroup memory one slab at a time (output column j of every thread: TY
// columns x BM rows, at most 4*NT values, within As), and each thread then packs pairs of
// neighbouring rows. Every thread must call it (barriers).
fn half_store(lid: u32, m0: u32, n0: u32) {
    let tx = lid % TX;
    let ty = lid / TX;
    for (var j = 0u; j < TN; j = j + 1u) {
        workgroupBarrier(); // As is free: the K loop's, tile_stats' and the last slab's reads are done
        for (var i = 0u; i < 4u; i = i + 1u) {
            As[ty * BM + tx + TX * i] = acc[j][i];
        }
        workgroupBarrier();
        for (var w = lid; w < TY * BM / 2u; w = w + NT) {
            let col = w / (BM / 2u);
            let r = 2u * (w - col * (BM / 2u));
            store_pair(m0 + r, n0 + col + TY * j, As[col * BM + r], As[col * BM + r + 1u]);
        }
    }
}
