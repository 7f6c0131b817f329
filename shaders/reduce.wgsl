// Reductions over the middle axis of a tensor viewed as [outer, r, inner], optionally split
// into chunks of `chunk` consecutive k (nchunk = ceil(r / chunk) of them, none empty):
// y[(o * nchunk + s) * inner + i] = reduce_{k in [s*chunk, min(r, (s+1)*chunk))} x[o, k, i].
// With nchunk == 1 (chunk >= r) that is y[o, i] = reduce_k x[o, k, i]; a split reduction is
// two (or more) launches, partials [outer, nchunk, inner] then a reduction of those over
// nchunk (see src/ops/reduce.rs). OP: 0 sum, 1 mean, 2 max, 3 min; mean divides by `count`
// (the length of the whole reduced axis, not of a chunk), so the host launches the partial
// passes of a mean as sums and only the last pass as a mean. Deterministic: no atomics, the
// combination order depends on the shape alone.
// `reduce_tree`: one workgroup per output element, threads stride over the chunk (four
// independent accumulators per thread, for loads in flight) and combine in workgroup memory
// (best when inner == 1: contiguous rows).
// `reduce_loop`: one thread per output element looping over the chunk, four rows per
// iteration (coalesced when inner > 1: neighbouring threads read neighbouring columns).
// `reduce_loop_vec4`: the same for four neighbouring columns per thread, read and written as
// vec4s (inner a multiple of 4, bindings on 16 bytes); each output adds in the same order as
// in `reduce_loop`, so the two agree bit for bit.
// The op: an override constant (OP, set by ops/reduce.rs), one pipeline per op with the tests
// on it folded away.
// Guards: every output index is checked against outer * nchunk * inner, and every load index
// is (o * r + k) * inner + i with o < outer, k < min(r, (s+1)*chunk), i < inner, i.e. inside
// the outer * r * inner elements of x.

struct Params {
    outer: u32,
    r: u32,
    inner: u32,
    chunk: u32,
    nchunk: u32,
    count: u32,
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> y: array<f32>;
// the same bindings as vec4s (reduce_loop_vec4)
@group(0) @binding(1) var<storage, read> x4: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read_write> y4: array<vec4<f32>>;

// Reduction op codes (ops::ReduceOp; tests/kernels.rs checks that the two agree).
const REDUCE_SUM: u32 = 0u;
const REDUCE_MEAN: u32 = 1u;
const REDUCE_MAX: u32 = 2u;
const REDUCE_MIN: u32 = 3u;

const NEG_INF: f32 = -3.402823466e+38;
const POS_INF: f32 = 3.402823466e+38;

override OP: u32 = REDUCE_SUM;

fn identity() -> f32 {
    if (OP == REDUCE_MAX) { return NEG_INF; }
    if (OP == REDUCE_MIN) { return POS_INF; }
    return 0.0;
}

fn combine(a: f32, b: f32) -> f32 {
    if (OP == REDUCE_MAX) { return max(a, b); }
    if (OP == REDUCE_MIN) { return min(a, b); }
    return a + b;
}

fn finish(v: f32) -> f32 {
    if (OP == REDUCE_MEAN) { return v / f32(p.count); }
    return v;
}

fn combine4(a: vec4<f32>, b: vec4<f32>) -> vec4<f32> {
    if (OP == REDUCE_MAX) { return max(a, b); }
    if (OP == REDUCE_MIN) { return min(a, b); }
    return a + b;
}

fn finish4(v: vec4<f32>) -> vec4<f32> {
    if (OP == REDUCE_MEAN) { return v / f32(p.count); }
    return v;
}

var<workgroup> partial: array<f32, 256>;

@compute @workgroup_size(256)
fn reduce_tree(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
               @builtin(local_invocation_index) lid: u32) {
    let out = flat_group(wg, nwg);
    let total = p.outer * p.nchunk * p.inner;
    // uniform control flow: every thread of the workgroup takes the same branch
    if (out >= total) { return; }
    let i = out % p.inner;
    let t = out / p.inner;
    let s = t % p.nchunk;
    let o = t / p.nchunk;
    let k0 = s * p.chunk;
    let k1 = min(p.r, k0 + p.chunk);
    let base = o * p.r * p.inner + i;
    var a0 = identity();
    var a1 = a0;
    var a2 = a0;
    var a3 = a0;
    var k = k0 + lid;
    // four independent loads per iteration: k, k + WG, k + 2 WG, k + 3 WG (all < k1)
    while (k + 3u * WG < k1) {
        a0 = combine(a0, x[base + k * p.inner]);
        a1 = combine(a1, x[base + (k + WG) * p.inner]);
        a2 = combine(a2, x[base + (k + 2u * WG) * p.inner]);
        a3 = combine(a3, x[base + (k + 3u * WG) * p.inner]);
        k = k + 4u * WG;
    }
    while (k < k1) {
        a0 = combine(a0, x[base + k * p.inner]);
        k = k + WG;
    }
    partial[lid] = combine(combine(a0, a1), combine(a2, a3));
    workgroupBarrier();
    for (var h = WG / 2u; h > 0u; h = h / 2u) {
        if (lid < h) {
            partial[lid] = combine(partial[lid], partial[lid + h]);
        }
        workgroupBarrier();
    }
    if (lid == 0u) {
        y[out] = finish(partial[0]);
    }
}

@compute @workgroup_size(256)
fn reduce_loop(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
               @builtin(local_invocation_index) lid: u32) {
    let out = flat_index(wg, nwg, lid);
    if (out >= p.outer * p.nchunk * p.inner) { return; }
    let i = out % p.inner;
    let t = out / p.inner;
    let s = t % p.nchunk;
    let o = t / p.nchunk;
    let k0 = s * p.chunk;
    let k1 = min(p.r, k0 + p.chunk);
    let step = p.inner;
    var idx = (o * p.r + k0) * step + i;
    var a0 = identity();
    var a1 = a0;
    var a2 = a0;
    var a3 = a0;
    var k = k0;
    // four independent loads per iteration: rows k .. k + 3 (all < k1)
    while (k + 4u <= k1) {
        a0 = combine(a0, x[idx]);
        a1 = combine(a1, x[idx + step]);
        a2 = combine(a2, x[idx + 2u * step]);
        a3 = combine(a3, x[idx + 3u * step]);
        idx = idx + 4u * step;
        k = k + 4u;
    }
    while (k < k1) {
        a0 = combine(a0, x[idx]);
        idx = idx + step;
        k = k + 1u;
    }
    y[out] = finish(combine(combine(a0, a1), combine(a2, a3)));
}

@compute @workgroup_size(256)
fn reduce_loop_vec4(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                    @builtin(local_invocation_index) lid: u32) {
    // output vec4 `q`: outputs 4q .. 4q + 3, which share (o, s) since inner is a multiple of 4
    let q = flat_index(wg, nwg, lid);
    let inner4 = p.inner / 4u;
    if (q >= p.outer * p.nchunk * inner4) { return; }
    let i4 = q % inner4;
    let t = q / inner4;
    let s = t % p.nchunk;
    let o = t / p.nchunk;
    let k0 = s * p.chunk;
    let k1 = min(p.r, k0 + p.chunk);
    let step = inner4;
    var idx = (o * p.r + k0) * step + i4;
    var a0 = vec4<f32>(identity());
    var a1 = a0;
    var a2 = a0;
    var a3 = a0;
    var k = k0;
    while (k + 4u <= k1) {
        a0 = combine4(a0, x4[idx]);
        a1 = combine4(a1, x4[idx + step]);
        a2 = combine4(a2, x4[idx + 2u * step]);
        a3 = combine4(a3, x4[idx + 3u * step]);
        idx = idx + 4u * step;
        k = k + 4u;
    }
    while (k < k1) {
        a0 = combine4(a0, x4[idx]);
        idx = idx + step;
        k = k + 1u;
    }
    y4[q] = finish4(combine4(combine4(a0, a1), combine4(a2, a3)));
}
