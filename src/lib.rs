//! equimodal: a hand-written GPU compute engine (wgpu + WGSL) for balanced multimodal
//! learning. See the README for the user guide and `docs/` for design and performance notes.
//!
//! Layers, from the device up (imports point downwards; `docs/contributing.md` has the
//! map, its known exceptions, and checklists for adding an op or a method):
//! [`gpu`] → [`tensor`] → [`autograd`] / [`ops`] → [`nn`] → [`optim`] → [`methods`] →
//! [`train`] → [`experiments`] → the CLI; [`config`], [`data`] and [`report`] beside them.
pub mod autograd;
pub mod bench;
pub mod config;
pub mod data;
pub mod error;
pub mod experiments;
pub mod gpu;
pub mod limits;
pub mod methods;
pub mod nn;
pub mod ops;
pub mod optim;
pub mod report;
pub mod tensor;
pub mod train;

pub use autograd::Gradients;
pub use error::{Error, Result};
pub use gpu::{Gpu, GpuOptions};
pub use tensor::{DType, Tensor};
