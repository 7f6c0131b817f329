// Shared by every kernel family: src/gpu/shaders.rs puts this file in front of each one.

// Threads per workgroup of the one-thread-per-element kernels (gpu::WG on the Rust side,
// which computes their grids; tests/kernels.rs checks that the two agree).
const WG: u32 = 256u;

// Linear index of this workgroup in a grid folded over up to three dimensions (launches
// split any count over x, y and z so no dimension exceeds the adapter's limit; workgroups
// and threads past the end compare their index with the count they cover).
fn flat_group(wg: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return (wg.z * nwg.y + wg.y) * nwg.x + wg.x;
}

// Global element index of this thread, for kernels of WG threads per workgroup.
fn flat_index(wg: vec3<u32>, nwg: vec3<u32>, lid: u32) -> u32 {
    return flat_group(wg, nwg) * WG + lid;
}

// v rounded to the nearest f16 value (ties to even; beyond the largest, 65504, to infinity),
// as f32. Written out in f32 arithmetic: compilers fold the round trip
// unpack2x16float(pack2x16float(v)) to v itself (lavapipe does), which rounds nothing. The
// f16 spacing below a = |v| < 2^e is 2^(e - 11), and 2^-24 among the subnormals; scaling by
// a power of two is exact, and round() breaks ties to even.
fn f16_round(v: f32) -> f32 {
    let a = abs(v);
    var r = bitcast<f32>(0x7f800000u); // +inf
    if (a < 65520.0) { // the midpoint between 65504 and 2^16 rounds (to even) up, to infinity
        let q = max(frexp(a).exp - 11, -24);
        r = ldexp(round(ldexp(a, -q)), q);
    }
    return bitcast<f32>(bitcast<u32>(r) | (bitcast<u32>(v) & 0x80000000u));
}
