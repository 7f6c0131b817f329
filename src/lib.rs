pub mod error;
pub mod gpu;
pub mod autograd;
pub mod ops;
pub mod tensor;

pub use autograd::Gradients;
pub use error::{Error, Result};
pub use gpu::{Gpu, GpuOptions};
pub use tensor::{DType, Tensor};
