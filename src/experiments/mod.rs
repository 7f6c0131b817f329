//! Experiments over many runs: sweeps (a grid of configurations and seeds, run locally or as
//! a Slurm job array) and their comparison with seed statistics and paired tests.
pub mod compare;
pub mod run;
pub mod stats;
pub mod sweep;

pub use compare::{compare, find_runs, read_run, Comparison};
pub use run::{run_all, run_one, write_slurm, ChildArgs, Outcome};
pub use sweep::{RunSpec, Selection, Sweep};
