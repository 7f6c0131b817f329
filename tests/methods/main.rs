//! Tests of the methods layer (src/methods/): each method's distinguishing computation
//! against exact expected values, end-to-end runs, and resume.
#[path = "../common/mod.rs"]
mod common;

mod agm_g_blending;
mod aim;
mod aim_internals;
mod baselines;
mod greedy;
mod mechanisms;
mod mla_inforeg;
mod reconboost;
mod relearn;
