// Word copy between two ranges of one device buffer. Tensors are sub-allocated from shared
// segments (src/gpu/pool.rs), and WebGPU forbids a buffer-to-buffer copy whose source and
// destination are the same buffer, so Gpu::copy launches this instead when they are. Both
// ranges are bound on their own (the bindings are disjoint: two tensors never overlap).

struct Params {
    src: u32,   // first word of the source range
    dst: u32,   // first word of the destination range
    n: u32,     // words to copy
    _p: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> src: array<u32>;
@group(0) @binding(2) var<storage, read_write> dst: array<u32>;

@compute @workgroup_size(256)
fn copy_words(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
              @builtin(local_invocation_index) lid: u32) {
    let i = flat_index(wg, nwg, lid);
    if (i < p.n) {
        dst[p.dst + i] = src[p.src + i];
    }
}
