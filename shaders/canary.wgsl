// Test mode only (GpuOptions::pool_canary): the slack of a pooled buffer (the bytes between
// the tensor's length and the bucket size, see src/gpu/pool.rs) is filled with a sentinel
// when the buffer is handed out, and checked when it is handed out again and on
// Gpu::check_canaries. A kernel that writes past the end of its output (a missing `i < n`
// guard, a grid that covers more items than exist) changes the sentinel, and the check
// reports it; a kernel that reads past the end reads a NaN (the sentinel is a NaN as one
// f32 and as two f16), which the value comparisons of the tests see.

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

const SENTINEL: u32 = 0x7FC17FC1u;
const WG: u32 = 256u;

@compute @workgroup_size(256)
fn canary_fill(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
               @builtin(local_invocation_index) lid: u32) {
    let i = p.start + ((wg.z * nwg.y + wg.y) * nwg.x + wg.x) * WG + lid;
    if (i < p.end) {
        buf[i] = SENTINEL;
    }
}

@compute @workgroup_size(256)
fn canary_check(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                @builtin(local_invocation_index) lid: u32) {
    let i = p.start + ((wg.z * nwg.y + wg.y) * nwg.x + wg.x) * WG + lid;
    if (i < p.end) {
        let v = buf[i];
        if (v != SENTINEL) {
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
