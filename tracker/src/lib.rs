//! The septet tracker: the polars peer table ([`table`]), the FIFO lease
//! queue and lease bookkeeping ([`state`]), the TCP server ([`server`]), its
//! metrics ([`metrics`]) and the read-only HTTP endpoint with the status
//! page ([`http`]).
//!
//! Workers register and heartbeat here; requesters lease slots here. The
//! tracker never touches matrix data: requesters talk to leased peers
//! directly.

pub mod error;
pub mod federation;
pub mod http;
pub mod metrics;
pub mod server;
pub mod splice;
pub mod state;
pub mod table;

pub use error::{Error, Result};
pub use metrics::TrackerMetrics;
pub use server::run;
pub use state::{
    Caller, ConnId, Done, Grant, LeaseEntry, LeaseOutcome, LeaseToken, Op, QueueEntry, Snapshot, Ticket, Tracker,
    TrackerConfig,
};
pub use table::{PeerState, PeerTable};
