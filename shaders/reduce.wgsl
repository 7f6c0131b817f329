// Reductions over the middle axis of a tensor viewed as [outer, r, inner]:
// y[o, i] = reduce_k x[o, k, i]. op: 0 sum, 1 mean, 2 max, 3 min.
// `reduce_tree`: one workgroup per output element, threads stride over r and combine in
// workgroup memory (best when inner == 1: contiguous rows).
// `reduce_loop`: one thread per output element looping over r (coalesced when inner > 1).

struct Params {
    outer: u32,
    r: u32,
    inner: u32,
    op: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> y: array<f32>;

const WG: u32 = 256u;
const NEG_INF: f32 = -3.402823466e+38;
const POS_INF: f32 = 3.402823466e+38;

fn identity(op: u32) -> f32 {
    if (op == 2u) { return NEG_INF; }
    if (op == 3u) { return POS_INF; }
    return 0.0;
}

fn combine(op: u32, a: f32, b: f32) -> f32 {
    if (op == 2u) { return max(a, b); }
    if (op == 3u) { return min(a, b); }
    return a + b;
}

fn finish(op: u32, v: f32) -> f32 {
    if (op == 1u) { return v / f32(p.r); }
    return v;
}

var<workgroup> partial: array<f32, 256>;

@compute @workgroup_size(256)
fn reduce_tree(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
               @builtin(local_invocation_index) lid: u32) {
    let out = wg.y * nwg.x + wg.x;
    let total = p.outer * p.inner;
    // uniform control flow: every thread of the workgroup takes the same branch
    if (out >= total) { return; }
    let o = out / p.inner;
    let i = out % p.inner;
    let base = o * p.r * p.inner + i;
    var acc = identity(p.op);
    for (var k = lid; k < p.r; k = k + WG) {
        acc = combine(p.op, acc, x[base + k * p.inner]);
    }
    partial[lid] = acc;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s = s / 2u) {
        if (lid < s) {
            partial[lid] = combine(p.op, partial[lid], partial[lid + s]);
        }
        workgroupBarrier();
    }
    if (lid == 0u) {
        y[out] = finish(p.op, partial[0]);
    }
}

@compute @workgroup_size(256)
fn reduce_loop(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
               @builtin(local_invocation_index) lid: u32) {
    let out = (wg.y * nwg.x + wg.x) * WG + lid;
    if (out >= p.outer * p.inner) { return; }
    let o = out / p.inner;
    let i = out % p.inner;
    let base = o * p.r * p.inner + i;
    var acc = identity(p.op);
    for (var k = 0u; k < p.r; k = k + 1u) {
        acc = combine(p.op, acc, x[base + k * p.inner]);
    }
    y[out] = finish(p.op, acc);
}
