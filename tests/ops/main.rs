//! Tests of the tensor, autograd and ops layer (src/ops/): one module per kernel family,
//! each op against an f64 CPU reference on seeded inputs (shapes that are not multiples of any
//! tile), its backward against central finite differences of that reference, and a rerun
//! under a small workgroup cap.
#[path = "../common/mod.rs"]
mod common;

mod aim;
mod attention;
mod autograd;
mod boost;
mod conv;
mod elementwise;
mod embed;
mod matmul;
mod norm;
mod pool;
mod random;
mod reduce;
mod shape;
mod softmax;
