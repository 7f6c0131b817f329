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
pub mod tune;

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
pub use tune::{prefer_coop, PreferCoopGuard};

use crate::error::{Error, Result};
use crate::gpu::Kernel;
/// Launch geometry (defined with the device limits it respects, in `gpu`).
pub use crate::gpu::{grid, split_grid};
use crate::tensor::{DType, Tensor};

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
/// test (`tests/gpu/kernels.rs`) checks against the WGSL modules.
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
