pub mod error;
pub mod report;
