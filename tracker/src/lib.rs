//! The septet tracker: the polars peer table ([`table`]), the FIFO lease
//! queue and lease bookkeeping ([`state`]), and the TCP server ([`server`]).
//!
//! Workers register and heartbeat here; requesters lease slots here. The
//! tracker never touches matrix data: requesters talk to leased peers
//! directly.

pub mod error;
pub mod server;
pub mod state;
pub mod table;

pub use error::{Error, Result};
pub use server::run;
pub use state::{Caller, ConnId, Done, Grant, LeaseOutcome, LeaseToken, Op, Ticket, Tracker, TrackerConfig};
pub use table::{PeerState, PeerTable};
