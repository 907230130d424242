//! The septet worker: a compute server that multiplies the blocks it is sent
//! ([`server`]), its registration and heartbeats with the tracker
//! ([`agent`], through `septet_client::TrackerClient`), and its metrics and
//! their HTTP endpoint ([`metrics`]); a worker also takes its part in
//! relayed jobs (forwarding, computing, reducing: `relay`).

pub mod agent;
pub mod gate;
pub mod metrics;
mod relay;
pub mod server;

pub use metrics::WorkerMetrics;
#[cfg(feature = "fault-injection")]
pub use server::Fault;
pub use server::{run, WorkerConfig};
