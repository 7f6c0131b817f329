//! equimodal: a hand-written GPU compute engine (wgpu + WGSL) for balanced multimodal
//! learning. See the README for the user guide and `docs/` for design and performance notes.
//!
//! Layers, from the device up (imports point downwards, checked by `tests/layers.rs`;
//! `docs/contributing.md` has the map and checklists for adding an op or a method):
//! [`error`], [`limits`] and [`csv`] (below everything) → [`gpu`] → [`tensor`] / [`autograd`] /
//! [`ops`] → [`nn`] → [`optim`] → [`data`] → [`methods`] (each method's settings next to
//! it) → [`config`] (the run file) → [`train`] → [`experiments`] / [`report`] → [`bench`](mod@bench)
//! and the CLI.
#![warn(missing_docs)]
pub mod autograd;
pub mod bench;
pub mod config;
pub mod csv;
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
pub use gpu::{Gpu, GpuOptions, TuneMode, TuneStore};
pub use tensor::{DType, Tensor};
