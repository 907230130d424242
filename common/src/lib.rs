//! Everything two septet processes must agree on, and nothing that keeps state.
//!
//! This crate owns the wire protocol ([`frame`], [`proto`], [`conn`]), the
//! matrix block types ([`matrix`]), the Strassen algebra ([`strassen`]) and
//! the shared error enum ([`error`]). Servers, the peer table and the
//! requester live in the `septet-tracker` and `septet-worker` crates.

pub mod conn;
pub mod error;
pub mod frame;
pub mod listener;
pub mod matrix;
pub mod proto;
pub mod punch;
pub mod relay;
pub mod secure;
pub mod strassen;
pub mod ticket;

pub mod time;

pub use conn::{Connection, FrameInto, FrameReader, FrameWriter, WirePart};
pub use error::{Error, ErrorCode, Result};
pub use frame::{BlockOp, Blocks, ControlBody, Frame, DEFAULT_MAX_FRAME_LEN, MAX_CONTROL_FRAME_LEN};
pub use matrix::{Dtype, Element, Matrix, MatrixView};
pub use proto::{
    Control, Failure, FederationReply, FederationRequest, JobId, LeaseGrant, LeaseId, PeerAddr, PeerId, RelayStats,
    Rendezvous, Reply, Role, SpliceId, TaskId, TrackerReply, TrackerRequest, WorkerReply, WorkerRequest,
    PROTOCOL_VERSION, PUNCH_ADDR_LEN, PUNCH_MAGIC, SPLICE_MAGIC,
};
pub use time::deadline;

/// How many peers one Strassen job leases: one for each of M1..M7.
pub const PEERS_PER_LEASE: u32 = 7;
