//! Launch geometry: grids that respect the per-dimension workgroup limit (the adapter's, or
//! the test cap of [`GpuOptions::max_workgroups_per_dim`](super::GpuOptions)).
use super::Gpu;

/// Workgroups for `n` independent items at `per_group` items per workgroup, folded over
/// x, y and z so none exceeds the device's per-dimension limit
/// ([`Gpu::max_workgroups_per_dim`]: the adapter's, or the test cap). Kernels recover the
/// item index as
/// `flat_group(wg, num_workgroups) * per_group + local_index` (`shaders/common.wgsl`).
/// A folded grid may hold more workgroups than needed (up to gy - 1 extra
/// per z slice, plus a partial last z slice), so every kernel launched on it guards its
/// index. With the adapter's limit z is only used past 2^32 workgroups (never); with a test
/// cap of 3 it is used past 9.
pub fn grid(gpu: &Gpu, n: usize, per_group: usize) -> [u32; 3] {
    let groups = n.div_ceil(per_group).max(1);
    let maxd = gpu.max_workgroups_per_dim().max(1) as usize;
    if groups <= maxd {
        [groups as u32, 1, 1]
    } else {
        // z only when x * y cannot hold the grid; a launch beyond maxd^3 fails in dispatch
        let gz = groups.div_ceil(maxd.saturating_mul(maxd));
        let per_z = groups.div_ceil(gz);
        let gy = per_z.div_ceil(maxd);
        let gx = per_z.div_ceil(gy);
        [gx as u32, gy as u32, gz as u32]
    }
}

/// Launches covering a 3-D grid of `groups` workgroups with at most
/// [`Gpu::max_workgroups_per_dim`] per dimension: (first workgroup, workgroups) per
/// launch. Tiled kernels (conv, matmul) add the first workgroup, passed in their parameters,
/// to their workgroup id. One launch unless a dimension exceeds the limit.
pub fn split_grid(gpu: &Gpu, groups: [usize; 3]) -> Vec<([u32; 3], [u32; 3])> {
    let maxd = gpu.max_workgroups_per_dim().max(1) as usize;
    let chunks = |total: usize| -> Vec<(u32, u32)> {
        (0..total.max(1)).step_by(maxd).map(|s| (s as u32, (total - s).min(maxd) as u32)).collect()
    };
    let mut v = Vec::new();
    for &(z0, gz) in &chunks(groups[2]) {
        for &(y0, gy) in &chunks(groups[1]) {
            for &(x0, gx) in &chunks(groups[0]) {
                v.push(([x0, y0, z0], [gx, gy, gz]));
            }
        }
    }
    v
}
