// Test mode only (GpuOptions::pool_canary): the slack of a pooled buffer (the bytes between
// the tensor's length and the bucket size, see src/gpu/pool.rs) is filled with a sentinel
// when the buffer is handed out, and checked when it is handed out again and on
// Gpu::check_canaries. A kernel that writes past the end of its output (a missing `i < n`
// guard, a grid that covers more items than exist) changes the sentinel, and the check
// reports it; a kernel that reads past the end reads a NaN, which the value comparisons of
// the tests see.
//
// The sentinel is a *signaling* NaN whose payload depends on the allocation: any arithmetic
// on it returns a quiet NaN (bit 22 set), so a kernel that reads its own slack and writes
// the result back (x = x - lr * g past the end) still changes it, and a kernel that copies
// one buffer's slack into another's writes the wrong payload. (A quiet NaN sentinel was
// tried first: NaN arithmetic keeps the payload, and such a write went unseen.)

struct Params {
    start: u32,  // first slack word
    end: u32,    // one past the last word of the buffer
    serial: u32, // allocation number of the tensor that owns (or owned) the buffer
    _p: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> buf: array<u32>;
// report[0]: words found changed; [1..4]: serial, word index, value and first slack word
// of the first one found (racing writers may mix entries of two findings; the count is exact)
@group(0) @binding(2) var<storage, read_write> report: array<atomic<u32>>;


// Signaling NaN (exponent all ones, quiet bit 22 clear, payload non-zero) for an allocation;
// its high half is a NaN as f16 too.
fn sentinel(serial: u32) -> u32 {
    return 0x7F800000u | (((serial * 0x9E3779B1u) >> 10u) & 0x3FFFFFu) | 1u;
}

@compute @workgroup_size(256)
fn canary_fill(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
               @builtin(local_invocation_index) lid: u32) {
    let i = p.start + flat_index(wg, nwg, lid);
    if (i < p.end) {
        buf[i] = sentinel(p.serial);
    }
}

@compute @workgroup_size(256)
fn canary_check(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                @builtin(local_invocation_index) lid: u32) {
    let i = p.start + flat_index(wg, nwg, lid);
    if (i < p.end) {
        let v = buf[i];
        if (v != sentinel(p.serial)) {
            let first = atomicAdd(&report[0], 1u);
            if (first == 0u) {
                atomicStore(&report[1], p.serial);
                atomicStore(&report[2], i);
                atomicStore(&report[3], v);
                atomicStore(&report[4], p.start);
            }
        }
    }
}
