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

