//! Ops: shape checks, kernel launch and backward rule, one file per kernel family.
//! Every op here is compared with a CPU f64 reference and finite differences in `tests/`.
pub mod aim;
pub mod boost;
pub mod attention;
pub mod conv;
pub mod elementwise;
pub mod embed;
pub mod norm;
pub mod pool;
pub mod random;
pub mod matmul;
pub mod reduce;
pub mod shape;
pub mod softmax;

pub use aim::*;
pub use boost::*;
pub use attention::*;
pub use conv::*;
pub use elementwise::*;
pub use embed::*;
pub use norm::*;
pub use pool::*;
pub use random::*;
pub use matmul::*;
pub use reduce::*;
pub use shape::*;
pub use softmax::*;

use crate::error::{Error, Result};
use crate::gpu::{Gpu, Kernel};
use crate::tensor::{DType, Tensor};

/// Workgroups for `n` independent items at `per_group` items per workgroup, folded over
/// x, y and z so none exceeds the device's per-dimension limit
/// ([`Gpu::max_workgroups_per_dim`]: the adapter's, or the test cap). Kernels recover the
/// item index as
/// `((wg.z * num_workgroups.y + wg.y) * num_workgroups.x + wg.x) * per_group + local_index`.
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

/// Fail unless every tensor is f32.
pub fn expect_f32(op: &'static str, ts: &[&Tensor]) -> Result<()> {
    for t in ts {
        if t.dtype() != DType::F32 {
            return Err(Error::DType { op, msg: format!("expects f32, got {:?} (shape {:?})", t.dtype(), t.shape()) });
        }
    }
    Ok(())
}

/// Fail unless every tensor lives on the first one's device.
pub fn expect_same_gpu(op: &'static str, ts: &[&Tensor]) -> Result<()> {
    if let Some(first) = ts.first() {
        for t in &ts[1..] {
            if !t.gpu().same_device(first.gpu()) {
                return Err(Error::Other(format!("{op}: tensors live on different GPU contexts")));
            }
        }
    }
    Ok(())
}

/// Every kernel the ops launch, attention's instantiations included: what the interface
/// test (`tests/kernels.rs`) checks against the WGSL modules.
pub fn kernels() -> Vec<Kernel> {
    let files = [
        aim::KERNELS,
        boost::KERNELS,
        conv::KERNELS,
        elementwise::KERNELS,
        embed::KERNELS,
        matmul::KERNELS,
        norm::KERNELS,
        pool::KERNELS,
        random::KERNELS,
        reduce::KERNELS,
        shape::KERNELS,
        softmax::KERNELS,
    ];
    let mut all = files.concat();
    all.extend(attention::kernels());
    all
}

/// Bytes of a plain-old-data parameter block.
pub fn bytes_of<T: bytemuck::Pod>(p: &T) -> &[u8] {
    bytemuck::bytes_of(p)
}
