//! The `septet` package's library side: what the CLI, the examples and the
//! benchmarks share.

pub mod local;
pub mod report;
