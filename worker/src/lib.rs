//! The septet worker: a compute server that multiplies the blocks it is sent
//! ([`server`]), its registration and heartbeats with the tracker
//! ([`agent`]), its metrics and their HTTP endpoint ([`metrics`]), and the
//! client side of the protocol ([`client`]).

pub mod agent;
pub mod client;
pub mod metrics;
pub mod requester;
pub mod server;
pub mod verify;

pub use client::{Registration, TrackerClient};
pub use metrics::WorkerMetrics;
pub use requester::{JobReport, Progress, RequestError, Requester, RequesterConfig};
#[cfg(feature = "fault-injection")]
pub use server::Fault;
pub use server::{run, WorkerConfig};
