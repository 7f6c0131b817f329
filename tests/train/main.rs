//! Tests of the train layer (src/train/): the trainer, resume through the CLI, run
//! folders, checkpoints and what bad input does.
#[path = "../common/mod.rs"]
mod common;

mod checkpoint;
mod reliability;
mod trainer;
