//! Tests of the methods layer (src/methods/): each method's distinguishing computation
//! against exact expected values, end-to-end runs, and resume.
#[path = "../common/mod.rs"]
mod common;

mod aim;
mod baselines;
mod mechanisms;
mod reconboost;
mod relearn;
