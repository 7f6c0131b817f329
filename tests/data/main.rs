//! Tests of the data layer (src/data/): datasets and formats against their files, and
//! the verified downloads of `data fetch` against a loopback HTTP server.
#[path = "../common/mod.rs"]
mod common;

mod datasets;
mod pairs;
mod fetch;
