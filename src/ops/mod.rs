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
use crate::gpu::Gpu;
use crate::tensor::{DType, Tensor};

/// Workgroups for `n` independent items at `per_group` items per workgroup, folded over
/// x and y so neither exceeds the device's per-dimension limit. Kernels recover the item
/// index as `(wg.y * num_workgroups.x + wg.x) * per_group + local_index`.
pub fn grid(gpu: &Gpu, n: usize, per_group: usize) -> [u32; 3] {
    let groups = n.div_ceil(per_group).max(1);
    let maxd = gpu.limits().max_compute_workgroups_per_dimension.max(1) as usize;
    if groups <= maxd {
        [groups as u32, 1, 1]
    } else {
        let gy = groups.div_ceil(maxd);
        let gx = groups.div_ceil(gy);
        [gx as u32, gy as u32, 1]
    }
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

/// Bytes of a plain-old-data parameter block.
pub fn bytes_of<T: bytemuck::Pod>(p: &T) -> &[u8] {
    bytemuck::bytes_of(p)
}
