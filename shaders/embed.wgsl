// Embedding lookup and patchify.
//
// embed_fwd: one thread per output element (i, d): out[i, d] = table[ids[i], d], or 0 when
//            ids[i] >= V (an out-of-range id cannot raise an error on the GPU; it reads as a
//            zero row and receives no gradient). Adjacent threads read adjacent columns.
// embed_bwd: deterministic scatter-add without float atomics: one workgroup per
//            (table row v, chunk of 256 columns). The workgroup walks the ids in tiles of
//            256 staged in workgroup memory (one coalesced load per tile, broadcast reads
//            after) and each thread adds g[i, d] for every i with ids[i] == v, in
//            ascending i, for its column d. Every table row is written (zeros if unused).
// patchify_fwd / patchify_bwd: [N, C, H, W] <-> [N, L, C*ph*pw] permutations; one thread
//            per element of the destination (coalesced writes), gathering from the source.

struct EmbParams {
    n: u32,       // number of ids
    v: u32,       // table rows
    d: u32,       // embedding width
    dchunks: u32, // ceil(d / 256)
}

struct PatchParams {
    n: u32,
    c: u32,
    h: u32,
    w: u32,
    ph: u32,
    pw: u32,
    gh: u32,  // h / ph
    gw: u32,  // w / pw
}

@group(0) @binding(0) var<uniform> ep: EmbParams;
@group(0) @binding(0) var<uniform> pp: PatchParams;

const NO_ID: u32 = 0xFFFFFFFFu;


@group(0) @binding(1) var<storage, read> ids: array<u32>;
@group(0) @binding(2) var<storage, read> table: array<f32>;
@group(0) @binding(3) var<storage, read_write> emb_out: array<f32>;

@compute @workgroup_size(256)
fn embed_fwd(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
             @builtin(local_invocation_index) lid: u32) {
    let o = flat_index(wg, nwg, lid);
    if (o >= ep.n * ep.d) { return; }
    let i = o / ep.d;
    let col = o - i * ep.d;
    let id = ids[i];
    var v = 0.0;
    if (id < ep.v) {
        v = table[id * ep.d + col];
    }
    emb_out[o] = v;
}

@group(0) @binding(2) var<storage, read> eb_g: array<f32>;
@group(0) @binding(3) var<storage, read_write> eb_dt: array<f32>;

var<workgroup> tile_ids: array<u32, 256>;

@compute @workgroup_size(256)
fn embed_bwd(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
             @builtin(local_invocation_index) lid: u32) {
    let item = flat_group(wg, nwg);
    if (item >= ep.v * ep.dchunks) { return; } // uniform: whole workgroup
    let row = item / ep.dchunks;
    let col = (item - row * ep.dchunks) * WG + lid;
    var acc = 0.0;
    for (var i0 = 0u; i0 < ep.n; i0 = i0 + WG) {
        let i = i0 + lid;
        var id = NO_ID;
        if (i < ep.n) {
            id = ids[i];
        }
        tile_ids[lid] = id;
        workgroupBarrier();
        let cnt = min(WG, ep.n - i0);
        if (col < ep.d) {
            for (var k = 0u; k < cnt; k = k + 1u) {
                if (tile_ids[k] == row) {
                    acc = acc + eb_g[(i0 + k) * ep.d + col];
                }
            }
        }
        workgroupBarrier();
    }
    if (col < ep.d) {
        eb_dt[row * ep.d + col] = acc;
    }
}

@group(0) @binding(1) var<storage, read> pa_src: array<f32>;
@group(0) @binding(2) var<storage, read_write> pa_dst: array<f32>;

@compute @workgroup_size(256)
fn patchify_fwd(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                @builtin(local_invocation_index) lid: u32) {
    // dst [N, L, K], K = C*ph*pw, L = gh*gw
    let o = flat_index(wg, nwg, lid);
    if (o >= pp.n * pp.c * pp.h * pp.w) { return; }
    let pk = pp.ph * pp.pw;
    let kk = pp.c * pk;
    let k = o % kk;
    let t = o / kk;
    let l = t % (pp.gh * pp.gw);
    let nn = t / (pp.gh * pp.gw);
    let c = k / pk;
    let r = k % pk;
    let iy = (l / pp.gw) * pp.ph + r / pp.pw;
    let ix = (l % pp.gw) * pp.pw + r % pp.pw;
    pa_dst[o] = pa_src[((nn * pp.c + c) * pp.h + iy) * pp.w + ix];
}

@compute @workgroup_size(256)
fn patchify_bwd(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                @builtin(local_invocation_index) lid: u32) {
    // src = grad [N, L, K], dst = grad of x [N, C, H, W]
    let i = flat_index(wg, nwg, lid);
    if (i >= pp.n * pp.c * pp.h * pp.w) { return; }
    let ix = i % pp.w;
    let t = i / pp.w;
    let iy = t % pp.h;
    let t2 = t / pp.h;
    let c = t2 % pp.c;
    let nn = t2 / pp.c;
    let l = (iy / pp.ph) * pp.gw + ix / pp.pw;
    let k = (c * pp.ph + iy % pp.ph) * pp.pw + ix % pp.pw;
    pa_dst[i] = pa_src[(nn * pp.gh * pp.gw + l) * (pp.c * pp.ph * pp.pw) + k];
}
