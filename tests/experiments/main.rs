//! Tests of the experiments and report layer: sweeps (one GPU and Slurm), compare and
//! its statistics, and the charts.
#[path = "../common/mod.rs"]
mod common;

mod report;
mod probe;
mod sweeps;
