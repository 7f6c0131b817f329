//! Tests of the gpu layer (src/gpu/): every kernel's interface against its WGSL module,
//! and the test modes (workgroup cap, pool canary) that the op tests rely on.
#[path = "../common/mod.rs"]
mod common;

mod kernels;
mod memory;
mod test_modes;
mod tune;
