pub mod error;
pub mod data;
