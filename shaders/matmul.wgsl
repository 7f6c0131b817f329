// Batched GEMM: C[z] = op(A[z] ⊙ SA) · op(B[z] ⊙ SB) (+ bias per column).
//
// op() transposes the last two dims when TRANS_A / TRANS_B is set; the transpose lives in
// the load indexing only (no transposed copies). SA / SB are optional element-wise scales
// with their operand's own layout (AIM's per-parameter masks), applied while loading, so a
// masked weight never needs to be materialised. Batch z is decomposed over up to 8
// broadcast batch dims (per-operand strides, 0 on broadcast dims); C is contiguous. The
// parameter block and that decomposition are in matmul_params.wgsl, in front of this file.
//
// Entry points (same bindings, same params):
// - gemm_tile128: 128x128 output tile per workgroup, 256 threads, 8x8 outputs per thread,
//   K-slices of 8 (or 16: override CORE_BK) staged in workgroup memory: the shared f32 GEMM
//   core (gemm_core.wgsl) with matmul's loaders. For large problems.
// - gemm_tile64: 64x64 tile, 256 threads, 4x4 per thread, K-slices of 16: a second
//   instance of the core. More workgroups for small/medium problems.
// - gemm_ref: one thread per output, no tiling. The tests' cross-check and the tuner's
//   correctness probe.
// - gemm_splitk_reduce: sums split-K partials in split order (deterministic), adds the bias.
//
// Split-K (k_chunk > 0, batch 1 only): workgroup z computes K-slices [z*k_chunk,
// (z+1)*k_chunk) of the product into slice z of a partial buffer bound as C; the reduce
// entry then sums the slices. For products whose M x N tiles cannot fill the GPU but whose
// K is long (weight gradients of linear layers). The tuner decides when it pays.
//
// Tiled kernels, common structure:
// - Workgroup (x, y, z) + (x0, y0, z0) = (column tile, row tile, batch): launches are
//   split per dimension at the device's workgroup limit (ops::split_grid).
// - Both operand tiles are stored k-major in workgroup memory (tile[k][m], tile[k][n]), so
//   the inner product step reads one vec4 of A and one of B per 4 (or 8) outputs.
// - The tiles, the accumulators and the multiply-adds are the shared f32 GEMM core's
//   (gemm_core.wgsl): both tiles are instances of it, with this file's loaders and epilogue.
//   The scalar stores of a k-contiguous operand (A untransposed, B transposed) must not meet
//   in a few banks: the core swizzles its columns (`core_at`), so they reach 32 (16) banks
//   instead of 4 while vec4 reads stay 16-byte aligned.
// - Global -> workgroup staging is chosen per operand so that consecutive threads read
//   consecutive addresses: along k when the operand is k-contiguous, along m/n otherwise.
// - Double buffering: the next K-slice is fetched into registers while the current one is
//   multiplied, then stored into the other half of the workgroup buffer; one barrier per
//   slice.
// - Every global access is guarded explicitly (zero-fill outside M, N, K), so the kernels
//   are safe to compile without runtime bounds checks (which cost up to 40x on the H100).
// - Each thread's outputs are rows {4ty..4ty+3} (+64) and columns {4tx..4tx+3} (+64): the
//   vec4 reads of a warp are then 16 consecutive vec4s of B (conflict-free) and one or two
//   broadcast vec4s of A.

@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(2) var<storage, read> sa: array<f32>;
@group(0) @binding(3) var<storage, read> b: array<f32>;
@group(0) @binding(4) var<storage, read> sb: array<f32>;
@group(0) @binding(5) var<storage, read> bias: array<f32>;
@group(0) @binding(6) var<storage, read_write> c: array<f32>;
// A and B again, read as vec4s by the VEC4 form of the 128x128 tile (the host binds the same
// ranges as bindings 1 and 3)
@group(0) @binding(7) var<storage, read> a4: array<vec4<f32>>;
@group(0) @binding(8) var<storage, read> b4: array<vec4<f32>>;
// A and B again, as f16 packed two per word (HALF_A / HALF_B: mixed precision's f16
// operands, widened to f32 as they are loaded; the host binds the same ranges as bindings 1
// and 3). Plain u32 words and unpack2x16float: no shader-f16 feature needed.
@group(0) @binding(9) var<storage, read> ah: array<u32>;
@group(0) @binding(10) var<storage, read> bh: array<u32>;
// C again, written as vec4s by the VEC4 form's interior tiles when N is a multiple of 4
// (STORE4; the host binds the same range as binding 6)
@group(0) @binding(11) var<storage, read_write> c4: array<vec4<f32>>;

// The product's form, fixed per pipeline (override constants, set by ops/matmul/launch.rs): the
// driver folds every test on them away, so the loaders and the epilogue carry no runtime
// branch on the form, and an absent scale or bias costs nothing.
override TRANS_A: bool = false; // A is stored [K, M]
override TRANS_B: bool = false; // B is stored [N, K]
override SCALE_A: bool = false; // SA present
override SCALE_B: bool = false; // SB present
override BIAS: bool = false;    // bias present
override RELU: bool = false;    // epilogue: max(., 0) after the bias (linear_relu)
override HALF_A: bool = false;  // A is f16 (bindings 9 instead of 1); the products stay f32
override HALF_B: bool = false;  // B is f16 (binding 10 instead of 3)
// The 128x128 tile's interior form: every tile of the launch lies inside M and N, K is a
// multiple of the K-slice, the operands are unscaled and their rows start on 16 bytes (the
// host launches it over the interior tiles only, the guarded form over the edge strips).
// Global loads are then unguarded vec4s: one per operand per thread and K-slice instead of
// four guarded scalars.
override VEC4: bool = false;
// With VEC4, on tiles inside M and N: N a multiple of 4 and C on 16 bytes, so each thread's 4
// consecutive outputs of a row are one aligned vec4 store.
override STORE4: bool = false;
// The order in which the tiled kernels visit their launch's output tiles. 0: row by row
// (workgroup x = column tile, the fastest-changing index of the dispatch order). G > 0:
// bands of G tile rows, column by column inside a band, so the workgroups resident at one
// time (about one per compute unit) share G row tiles of A and a few column tiles of B,
// which stay in L2 while they are read again; row by row, a wave spans every column tile of
// B. A bijection on the launch's grid, and a tile's arithmetic does not depend on it: the
// result is bit-identical either way. Only products with more than G row tiles differ.
override GROUP_M: u32 = 0u;

// (column tile, row tile) of workgroup wg in the whole (split) grid, in GROUP_M's order.
fn tile_of(wg: vec3<u32>, nwg: vec3<u32>) -> vec2<u32> {
    var col = wg.x;
    var row = wg.y;
    if (GROUP_M > 0u) {
        let id = wg.y * nwg.x + wg.x;
        let band = GROUP_M * nwg.x; // workgroups per full band
        let first = (id / band) * GROUP_M;
        let rows = min(GROUP_M, nwg.y - first); // the last band may be shorter
        let r = id % band;
        col = r / rows;
        row = first + r % rows;
    }
    return vec2<u32>(col + p.x0, row + p.y0);
}

// K-slices [first, end) of workgroup z for slices of `bk`: all of K, or z's split.
fn k_range(z: u32, bk: u32) -> vec2<u32> {
    let nt = (p.k + bk - 1u) / bk;
    if (p.k_chunk == 0u) {
        return vec2<u32>(0u, nt);
    }
    let t0 = z * p.k_chunk;
    return vec2<u32>(t0, min(nt, t0 + p.k_chunk));
}

// Element i of A's (B's) storage as f32: f16 words are widened exactly.
fn elem_a(i: u32) -> f32 {
    if (HALF_A) {
        return unpack2x16float(ah[i >> 1u])[i & 1u];
    }
    return a[i];
}

fn elem_b(i: u32) -> f32 {
    if (HALF_B) {
        return unpack2x16float(bh[i >> 1u])[i & 1u];
    }
    return b[i];
}

// op(A ⊙ SA)[m, k], zero outside the matrix.
fn load_a(off: u32, m: u32, k: u32) -> f32 {
    if (m >= p.m || k >= p.k) {
        return 0.0;
    }
    var i = off + m * p.k + k;
    if (TRANS_A) {
        i = off + k * p.m + m;
    }
    var v = elem_a(i);
    if (SCALE_A) {
        v = v * sa[i];
    }
    return v;
}

// op(B ⊙ SB)[k, n], zero outside the matrix.
fn load_b(off: u32, k: u32, n: u32) -> f32 {
    if (k >= p.k || n >= p.n) {
        return 0.0;
    }
    var i = off + k * p.n + n;
    if (TRANS_B) {
        i = off + n * p.k + k;
    }
    var v = elem_b(i);
    if (SCALE_B) {
        v = v * sb[i];
    }
    return v;
}

// Write 4 consecutive columns of row m (guarded): the epilogue adds the bias, applies ReLU.
fn store4(coff: u32, m: u32, n: u32, v: vec4<f32>) {
    if (m >= p.m) {
        return;
    }
    let row = coff + m * p.n;
    if (STORE4) {
        var o = v;
        if (BIAS) {
            o = o + vec4<f32>(bias[n], bias[n + 1u], bias[n + 2u], bias[n + 3u]);
        }
        if (RELU) {
            o = max(o, vec4<f32>(0.0));
        }
        c4[(row + n) / 4u] = o;
        return;
    }
    for (var j = 0u; j < 4u; j = j + 1u) {
        let nn = n + j;
        if (nn < p.n) {
            var o = v[j];
            if (BIAS) {
                o = o + bias[nn];
            }
            if (RELU) {
                o = max(o, 0.0);
            }
            c[row + nn] = o;
        }
    }
}

// ---- 128x128 tile, 8x8 per thread ------------------------------------------------------

// The tile is the shared f32 GEMM core's (gemm_core.wgsl, after this file in the module): 128 x 128,
// 2 x 2 groups of 4 x 4 outputs per thread (rows 4ty.., 64 + 4ty..; columns 4tx.., 64 + 4tx..),
// A's rows and B's columns k-major in swizzled rows of 32 vec4s.
const CORE_ROWS: u32 = 128u;
const CORE_COLS: u32 = 128u;
const CORE_GR: u32 = 2u;
const CORE_GC: u32 = 2u;
// K-slice depth: 8, or 16 for the `k16` variants (half the barriers and loop trips per k,
// twice the staging registers and workgroup memory). Double-buffered, 8 takes 16 KiB, the
// least every Vulkan device (and wgpu's default limits) allow; 16 takes 32 KiB, so the host
// offers it only where the device allows that much. A multiple of 8: a slice is staged in
// halves of 8.
override CORE_BK: u32 = 8u;

// Local (m or n, k) of staging element r (0..4) of thread lid for a 128 x 8 half-slice.
fn coord128(k_contig: bool, r: u32, lid: u32) -> vec2<u32> {
    if (k_contig) {
        return vec2<u32>(lid / 8u + 32u * r, lid % 8u); // 4 rows x 8 k per warp
    }
    return vec2<u32>(lid % 128u, lid / 128u + 2u * r); // 32 consecutive m/n per warp
}

struct Staged {
    a: vec4<f32>,
    b: vec4<f32>,
}

// The 128 x 8 half-slice of k [k0, k0 + 8) into registers (4 elements per operand).
fn fetch128(offs: vec2<u32>, m0: u32, n0: u32, k0: u32, lid: u32) -> Staged {
    if (VEC4) {
        return fetch128_vec4(offs, m0, n0, k0, lid);
    }
    var s: Staged;
    for (var r = 0u; r < 4u; r = r + 1u) {
        let ca = coord128(!TRANS_A, r, lid);
        s.a[r] = load_a(offs.x, m0 + ca.x, k0 + ca.y);
        let cb = coord128(TRANS_B, r, lid);
        s.b[r] = load_b(offs.y, k0 + cb.y, n0 + cb.x);
    }
    return s;
}

// A fetched half-slice into rows [kh, kh + 8) of buffer `buf`.
fn put128(s: Staged, buf: u32, kh: u32, lid: u32) {
    if (VEC4) {
        put128_vec4(s, buf, kh, lid);
        return;
    }
    for (var r = 0u; r < 4u; r = r + 1u) {
        let ca = coord128(!TRANS_A, r, lid);
        core_put_row(buf, kh + ca.y, ca.x, s.a[r]);
        let cb = coord128(TRANS_B, r, lid);
        core_put_col(buf, kh + cb.y, cb.x, s.b[r]);
    }
}

// VEC4 form. A k-contiguous operand (A as [M, K], B as [N, K]) is read as 2 vec4s of k per
// row (thread: row lid / 2, k 4 * (lid % 2)), stored as 4 scalars down the k rows of the
// tile; an m/n-contiguous one as 32 vec4s per k row (thread: k lid / 32, m 4 * (lid % 32)),
// stored as one vec4. A warp reads 16 rows x 32 bytes, or one k row's 512 bytes.
fn fetch128_vec4(offs: vec2<u32>, m0: u32, n0: u32, k0: u32, lid: u32) -> Staged {
    var s: Staged;
    if (TRANS_A) {
        s.a = a4[(offs.x + (k0 + lid / 32u) * p.m + m0 + (lid % 32u) * 4u) / 4u];
    } else {
        s.a = a4[(offs.x + (m0 + lid / 2u) * p.k + k0 + (lid % 2u) * 4u) / 4u];
    }
    if (TRANS_B) {
        s.b = b4[(offs.y + (n0 + lid / 2u) * p.k + k0 + (lid % 2u) * 4u) / 4u];
    } else {
        s.b = b4[(offs.y + (k0 + lid / 32u) * p.n + n0 + (lid % 32u) * 4u) / 4u];
    }
    return s;
}

fn put128_vec4(s: Staged, buf: u32, kh: u32, lid: u32) {
    let row = lid / 2u; // k-contiguous: this thread's m (or n), and its 4 k
    let k4 = kh + (lid % 2u) * 4u;
    if (TRANS_A) {
        core_put_row4(buf, kh + lid / 32u, lid % 32u, s.a);
    } else {
        for (var j = 0u; j < 4u; j = j + 1u) {
            core_put_row(buf, k4 + j, row, s.a[j]);
        }
    }
    if (TRANS_B) {
        for (var j = 0u; j < 4u; j = j + 1u) {
            core_put_col(buf, k4 + j, row, s.b[j]);
        }
    } else {
        core_put_col4(buf, kh + lid / 32u, lid % 32u, s.b);
    }
}

// The K-slice in registers: CORE_BK / 8 half-slices (the second unused at CORE_BK = 8; the constant
// trip counts below unroll, so the array lives in registers).
struct Slice128 {
    h: array<Staged, 2>,
}

fn fetch_slice128(offs: vec2<u32>, m0: u32, n0: u32, k0: u32, lid: u32) -> Slice128 {
    var s: Slice128;
    for (var h = 0u; h < CORE_BK / 8u; h = h + 1u) {
        s.h[h] = fetch128(offs, m0, n0, k0 + 8u * h, lid);
    }
    return s;
}

fn put_slice128(s: Slice128, buf: u32, lid: u32) {
    for (var h = 0u; h < CORE_BK / 8u; h = h + 1u) {
        put128(s.h[h], buf, 8u * h, lid);
    }
}

@compute @workgroup_size(256)
fn gemm_tile128(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                @builtin(local_invocation_index) lid: u32) {
    let z = wg.z + p.z0;
    let offs = batch_offsets(z);
    let tile = tile_of(wg, nwg);
    let m0 = tile.y * 128u;
    let n0 = tile.x * 128u;
    core_zero();
    let kr = k_range(z, CORE_BK);
    put_slice128(fetch_slice128(offs, m0, n0, kr.x * CORE_BK, lid), 0u, lid);
    workgroupBarrier();
    for (var t = kr.x; t < kr.y; t = t + 1u) {
        let cur = (t - kr.x) & 1u;
        let more = t + 1u < kr.y;
        var next: Slice128;
        if (more) {
            next = fetch_slice128(offs, m0, n0, (t + 1u) * CORE_BK, lid);
        }
        core_mma(lid, cur);
        if (more) {
            put_slice128(next, 1u - cur, lid);
        }
        workgroupBarrier();
    }

    let coff = z * p.m * p.n;
    for (var i = 0u; i < 4u * CORE_GR; i = i + 1u) {
        for (var g = 0u; g < CORE_GC; g = g + 1u) {
            store4(coff, m0 + core_row(lid, i), n0 + core_col(lid, g), core_acc[i * CORE_GC + g]);
        }
    }
}

// ---- 64x64 tile, 4x4 per thread --------------------------------------------------------

// The shared core again, as a second instance whose names start with c64_ / C64_ instead of
// core_ / CORE_ (src/gpu/shaders.rs generates it from gemm_core.wgsl): 64 x 64, one group of
// 4 x 4 outputs per thread (rows 4ty.., columns 4tx..), K-slices of 16.
const C64_ROWS: u32 = 64u;
const C64_COLS: u32 = 64u;
const C64_GR: u32 = 1u;
const C64_GC: u32 = 1u;
const C64_BK: u32 = 16u;
const BK2: u32 = C64_BK;

// Local (m or n, k) of staging element r (0..4) of thread lid for a 64 x 16 slice.
fn coord64(k_contig: bool, r: u32, lid: u32) -> vec2<u32> {
    if (k_contig) {
        return vec2<u32>(lid / 16u + 16u * r, lid % 16u);
    }
    return vec2<u32>(lid % 64u, lid / 64u + 4u * r);
}

fn fetch64(offs: vec2<u32>, m0: u32, n0: u32, k0: u32, lid: u32) -> Staged {
    var s: Staged;
    for (var r = 0u; r < 4u; r = r + 1u) {
        let ca = coord64(!TRANS_A, r, lid);
        s.a[r] = load_a(offs.x, m0 + ca.x, k0 + ca.y);
        let cb = coord64(TRANS_B, r, lid);
        s.b[r] = load_b(offs.y, k0 + cb.y, n0 + cb.x);
    }
    return s;
}

fn put64(s: Staged, buf: u32, lid: u32) {
    for (var r = 0u; r < 4u; r = r + 1u) {
        let ca = coord64(!TRANS_A, r, lid);
        c64_put_row(buf, ca.y, ca.x, s.a[r]);
        let cb = coord64(TRANS_B, r, lid);
        c64_put_col(buf, cb.y, cb.x, s.b[r]);
    }
}

@compute @workgroup_size(256)
fn gemm_tile64(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let z = wg.z + p.z0;
    let offs = batch_offsets(z);
    let m0 = (wg.y + p.y0) * 64u;
    let n0 = (wg.x + p.x0) * 64u;
    c64_zero();
    let kr = k_range(z, BK2);
    put64(fetch64(offs, m0, n0, kr.x * BK2, lid), 0u, lid);
    workgroupBarrier();
    for (var t = kr.x; t < kr.y; t = t + 1u) {
        let cur = (t - kr.x) & 1u;
        let more = t + 1u < kr.y;
        var next: Staged;
        if (more) {
            next = fetch64(offs, m0, n0, (t + 1u) * BK2, lid);
        }
        c64_mma(lid, cur);
        if (more) {
            put64(next, 1u - cur, lid);
        }
        workgroupBarrier();
    }

    let coff = z * p.m * p.n;
    for (var i = 0u; i < 4u; i = i + 1u) {
        store4(coff, m0 + c64_row(lid, i), n0 + c64_col(lid, 0u), c64_acc[i]);
    }
}

// ---- split-K reduction: C[i] = sum over splits s of partial[s][i] (+ bias, ReLU) ---------
// a = partials [batch = splits, M, N]; one thread per output.

@compute @workgroup_size(64)
fn gemm_splitk_reduce(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                      @builtin(local_invocation_index) lid: u32) {
    let idx = flat_group(wg, nwg) * 64u + lid;
    let mn = p.m * p.n;
    if (idx >= mn) {
        return;
    }
    var acc = 0.0;
    for (var s = 0u; s < p.batch; s = s + 1u) {
        acc = acc + a[s * mn + idx];
    }
    if (BIAS) {
        acc = acc + bias[idx % p.n];
    }
    if (RELU) {
        acc = max(acc, 0.0);
    }
    c[idx] = acc;
}

// ---- reference: one thread per output (tests and the tuner's probe) ----------------------

@compute @workgroup_size(64)
fn gemm_ref(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
            @builtin(local_invocation_index) lid: u32) {
    let idx = flat_group(wg, nwg) * 64u + lid;
    let mn = p.m * p.n;
    if (idx >= mn * p.batch) {
        return;
    }
    let z = idx / mn;
    let r = idx % mn;
    let m = r / p.n;
    let n = r % p.n;
    let offs = batch_offsets(z);
    var acc = 0.0;
    for (var k = 0u; k < p.k; k = k + 1u) {
        acc = acc + load_a(offs.x, m, k) * load_b(offs.y, k, n);
    }
    if (BIAS) {
        acc = acc + bias[n];
    }
    if (RELU) {
        acc = max(acc, 0.0);
    }
    c[idx] = acc;
}
