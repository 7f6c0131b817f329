// Shape kernels: strided slab copy (concat / split / narrow and their backward), general
// permute with precomputed strides, tiled batched 2-D transpose, gather of rows along axis 0
// and its atomic-free scatter-add backward.
//
// Data is bound as u32 words so the same kernels move f32 and u32 tensors bit-exactly.
// All indexing is guarded explicitly (release builds compile these without runtime checks).

struct Params {
    n: u32,        // items to produce (elements, or vec4 words for slab_copy4)
    ndim: u32,     // permute: dims of the output
    a: u32,        // slab: len * inner          | gather: inner (row length) | transpose: R
    b: u32,        // slab: src row (total*inner) | gather: rows of x           | transpose: C
    c: u32,        // slab: src offset           | gather: number of ids
    d: u32,        // slab: dst row
    e: u32,        // slab: dst offset
    f: u32,
    shape: array<vec4<u32>, 2>,   // permute: output shape, up to 8 dims
    strides: array<vec4<u32>, 2>, // permute: input element stride of each output dim
}

@group(0) @binding(0) var<uniform> p: Params;

const NAN_BITS: u32 = 0x7fc00000u;


// ---- slab copy -------------------------------------------------------------------------
// Copy a [outer, len, inner] slab between two tensors viewed as [outer, total, inner]:
// item i = (o, r) with o = i / (len*inner), r = i % (len*inner);
// dst[o * dst_row + dst_off + r] = src[o * src_row + src_off + r].
// Consecutive threads touch consecutive words on both sides (coalesced).
@group(0) @binding(1) var<storage, read> cs: array<u32>;
@group(0) @binding(2) var<storage, read_write> cd: array<u32>;

@compute @workgroup_size(256)
fn slab_copy(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
             @builtin(local_invocation_index) lid: u32) {
    let i = flat_index(wg, nwg, lid);
    if (i >= p.n) { return; }
    let o = i / p.a;
    let r = i - o * p.a;
    cd[o * p.d + p.e + r] = cs[o * p.b + p.c + r];
}

// Same with 16-byte words, used when every length and offset is a multiple of 4 elements
// (4x fewer threads and index computations, full-width memory transactions).
@group(0) @binding(1) var<storage, read> cs4: array<vec4<u32>>;
@group(0) @binding(2) var<storage, read_write> cd4: array<vec4<u32>>;

@compute @workgroup_size(256)
fn slab_copy4(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
              @builtin(local_invocation_index) lid: u32) {
    let i = flat_index(wg, nwg, lid);
    if (i >= p.n) { return; }
    let o = i / p.a;
    let r = i - o * p.a;
    cd4[o * p.d + p.e + r] = cs4[o * p.b + p.c + r];
}

// ---- general permute ---------------------------------------------------------------------
// y[i] = x[sum_d coord_d(i) * strides[d]], coord over the output shape (writes coalesced).
@group(0) @binding(1) var<storage, read> px: array<u32>;
@group(0) @binding(2) var<storage, read_write> py: array<u32>;

@compute @workgroup_size(256)
fn permute(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
           @builtin(local_invocation_index) lid: u32) {
    let i = flat_index(wg, nwg, lid);
    if (i >= p.n) { return; }
    var src = 0u;
    var rem = i;
    for (var d: i32 = i32(p.ndim) - 1; d >= 0; d = d - 1) {
        let du = u32(d);
        let extent = p.shape[du / 4u][du % 4u];
        src = src + (rem % extent) * p.strides[du / 4u][du % 4u];
        rem = rem / extent;
    }
    py[i] = px[src];
}

// ---- batched 2-D transpose: x [B, R, C] -> y [B, C, R] ---------------------------------------
// 32x32 tiles staged in workgroup memory so that both the reads (along C) and the writes
// (along R) are coalesced; the tile row is padded to 33 words so the column-wise reads of
// the second phase hit 32 different banks. Workgroup 32x8: each thread moves 4 elements.
const TILE: u32 = 32u;
var<workgroup> tile: array<u32, 1056>; // 32 * 33

@group(0) @binding(1) var<storage, read> tx: array<u32>;
@group(0) @binding(2) var<storage, read_write> ty: array<u32>;

@compute @workgroup_size(32, 8)
fn transpose2d(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_id) l: vec3<u32>) {
    let rows = p.a; // R
    let cols = p.b; // C
    let batch = wg.z * rows * cols;
    let c0 = wg.x * TILE;
    let r0 = wg.y * TILE;
    for (var j = 0u; j < TILE; j = j + 8u) {
        let r = r0 + l.y + j;
        let c = c0 + l.x;
        if (r < rows && c < cols) {
            tile[(l.y + j) * 33u + l.x] = tx[batch + r * cols + c];
        }
    }
    workgroupBarrier();
    for (var j = 0u; j < TILE; j = j + 8u) {
        let c = c0 + l.y + j; // output row
        let r = r0 + l.x;     // output column
        if (r < rows && c < cols) {
            ty[batch + c * rows + r] = tile[l.x * 33u + l.y + j];
        }
    }
}

// ---- gather rows along axis 0: y[j, :] = x[ids[j], :] --------------------------------------
// An id past the end gives a NaN row instead of an out-of-bounds read.
@group(0) @binding(1) var<storage, read> gx: array<u32>;
@group(0) @binding(2) var<storage, read> gids: array<u32>;
@group(0) @binding(3) var<storage, read_write> gy: array<u32>;

@compute @workgroup_size(256)
fn gather_rows(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
               @builtin(local_invocation_index) lid: u32) {
    let i = flat_index(wg, nwg, lid);
    if (i >= p.n) { return; }
    let j = i / p.a;
    let c = i - j * p.a;
    let id = gids[j];
    var v = NAN_BITS;
    if (id < p.b) {
        v = gx[id * p.a + c];
    }
    gy[i] = v;
}

// ---- scatter-add backward of the gather, without atomics -----------------------------------
// dx[r, c] = sum over j with ids[j] == r of g[j, c]. One thread per dx element loops over
// the ids: no atomics (WGSL has no float atomics), deterministic summation order, and
// repeated ids just add up. All threads of a workgroup read the same ids[j] at the same
// time (a broadcast load), and matching rows of g are read coalesced. The cost is
// O(rows * inner * n_ids / 256) id loads, fine for the batch-sized gathers this engine does.
@group(0) @binding(1) var<storage, read> sg: array<f32>;
@group(0) @binding(2) var<storage, read> sids: array<u32>;
@group(0) @binding(3) var<storage, read_write> sdx: array<f32>;

@compute @workgroup_size(256)
fn scatter_add_rows(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                    @builtin(local_invocation_index) lid: u32) {
    let i = flat_index(wg, nwg, lid);
    if (i >= p.n) { return; }
    let r = i / p.a;
    let c = i - r * p.a;
    var acc = 0.0;
    for (var j = 0u; j < p.c; j = j + 1u) {
        if (sids[j] == r) {
            acc = acc + sg[j * p.a + c];
        }
    }
    sdx[i] = acc;
}
