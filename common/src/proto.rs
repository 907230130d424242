//! Typed control messages: one enum variant per request or reply, shared by
//! the servers and the clients. They travel bincode-encoded inside control
//! frames (see [`crate::frame`]); matrix data never goes through here.

use serde::{Deserialize, Serialize};

use crate::{Error, ErrorCode};

/// Version of the septet wire protocol. Both sides send theirs in the
/// handshake's hellos ([`crate::secure`]); a mismatch ends the connection
/// with an error naming both. Version 2 added the authenticated handshake.
pub const PROTOCOL_VERSION: u32 = 2;

/// What the connecting side is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Role {
    /// A worker talking to the tracker.
    Worker,
    /// A requester (or the CLI) talking to the tracker or to a worker.
    Client,
}

/// A leased slot: which peer, and where to reach it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerAddr {
    /// The tracker's id of the peer.
    pub peer_id: u64,
    /// The peer's compute listener, `host:port`.
    pub addr: String,
}

/// A granted lease.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseGrant {
    /// Id to renew or release it with.
    pub lease_id: u64,
    /// One entry per slot; a peer with several free slots may appear several times.
    pub peers: Vec<PeerAddr>,
    /// Time to live from now, in milliseconds, unless renewed.
    pub ttl_ms: u64,
}

/// One row of the tracker's peer table, for `--json` output and tests.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerRow {
    /// Tracker-assigned id.
    pub peer_id: u64,
    /// Compute listener address.
    pub addr: String,
    /// Tasks the peer takes at once.
    pub slots: u32,
    /// Slots held by live leases.
    pub in_use: u32,
    /// Slots handed out over the peer's life.
    pub leases_total: u64,
    /// Failures reported against the peer.
    pub failures: u32,
    /// Milliseconds since the tracker started when the peer first joined.
    pub joined_at: u64,
    /// Milliseconds since the tracker started when the peer was last heard from.
    pub last_seen: u64,
    /// `alive`, `suspect` or `gone`.
    pub state: String,
}

/// Every control message of the protocol.
///
/// Variants are only ever appended: bincode encodes the variant index, and
/// an index this side does not know decodes as an error (answered with
/// `ErrorCode::BadFrame`), never as a different message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Message {
    /// First frame on every connection, from the connecting side.
    Hello {
        /// Sender's [`PROTOCOL_VERSION`].
        version: u32,
        /// Who is connecting.
        role: Role,
    },
    /// Reply to an acceptable hello.
    Welcome {
        /// Receiver's [`PROTOCOL_VERSION`].
        version: u32,
    },
    /// A failure; `task_id` is set when it concerns one multiply task.
    Error {
        /// What failed, for rebuilding a typed error.
        code: ErrorCode,
        /// Human-readable detail.
        message: String,
        /// The task concerned, if any.
        task_id: Option<u64>,
    },

    /// Worker → tracker: join the grid.
    Register {
        /// The worker's compute listener. An unspecified host (`0.0.0.0`)
        /// is replaced by the address the tracker sees the worker connect from.
        listen: String,
        /// Tasks the worker runs at once.
        slots: u32,
    },
    /// Tracker → worker: joined.
    Registered {
        /// Id to heartbeat with.
        peer_id: u64,
        /// The address the tracker will hand to requesters.
        addr: String,
        /// How often the tracker expects a heartbeat, in milliseconds.
        heartbeat_ms: u64,
    },
    /// Worker → tracker: still here.
    Heartbeat {
        /// The worker's id.
        peer_id: u64,
    },
    /// Tracker → worker: heartbeat recorded.
    HeartbeatAck,
    /// Worker → tracker: leaving the grid.
    Deregister {
        /// The worker's id.
        peer_id: u64,
    },
    /// Tracker → worker: left.
    Deregistered,

    /// Client → tracker: show the peer table.
    ListPeers,
    /// Tracker → client: the peer table.
    Peers {
        /// The table as polars formats it.
        table: String,
        /// The same rows, structured.
        rows: Vec<PeerRow>,
    },

    /// Client → tracker: lease `count` slots.
    Lease {
        /// Slots wanted (seven for a Strassen job).
        count: u32,
        /// A detached lease outlives the connection; it ends by release or TTL.
        detached: bool,
    },
    /// Tracker → client: not enough free slots; queued in arrival order.
    Waiting {
        /// 1-based place in the queue.
        position: u32,
        /// Free slots now.
        free: u32,
        /// Slots requested.
        needed: u32,
    },
    /// Tracker → client: the lease is granted.
    Leased(LeaseGrant),
    /// Client → tracker: extend a lease by its TTL from now.
    Renew {
        /// The lease.
        lease_id: u64,
    },
    /// Tracker → client: renewed.
    Renewed {
        /// The lease.
        lease_id: u64,
        /// New time to live from now, in milliseconds.
        ttl_ms: u64,
    },
    /// Client → tracker: give a lease's slots back.
    Release {
        /// The lease.
        lease_id: u64,
    },
    /// Tracker → client: released.
    Released {
        /// The lease.
        lease_id: u64,
    },
    /// Client → tracker: a leased peer failed; replace its slot in the lease.
    ReportFailure {
        /// The lease the peer was part of.
        lease_id: u64,
        /// The peer that failed.
        peer_id: u64,
        /// What happened, for the logs.
        reason: String,
        /// Also lease a replacement slot into the same lease.
        replace: bool,
    },
    /// Tracker → client: the failure was recorded; `replacement` is the new
    /// slot when one was asked for and available.
    FailureRecorded {
        /// The lease.
        lease_id: u64,
        /// The replacement slot, if any.
        replacement: Option<PeerAddr>,
    },
    /// Worker → requester, just before a product's blocks: how long the
    /// product took to compute.
    Computed {
        /// The task.
        task_id: u64,
        /// Compute time in microseconds.
        compute_us: u64,
    },

    // Ownership (appended): a lease is renewed, released or reported
    // against only by its holder — the connection that took it, or whoever
    // presents its token. The variants below carry the token; the older
    // `Leased`, `Renew`, `Release` and `ReportFailure` stay valid and mean
    // "no token" (acted on only for the connection that took the lease).
    /// Tracker → client: the lease is granted; `token` (hex, 256 random
    /// bits) lets another connection renew, release or report against it —
    /// how a detached lease is released later. Keep it secret.
    LeasedWithToken {
        /// The lease.
        grant: LeaseGrant,
        /// The lease's bearer token.
        token: String,
    },
    /// Client → tracker: as `Renew`, presenting the lease's token if given.
    RenewWithToken {
        /// The lease.
        lease_id: u64,
        /// The token from `LeasedWithToken`; `None` acts as the holder connection only.
        token: Option<String>,
    },
    /// Client → tracker: as `Release`, presenting the lease's token if given.
    ReleaseWithToken {
        /// The lease.
        lease_id: u64,
        /// The token from `LeasedWithToken`; `None` acts as the holder connection only.
        token: Option<String>,
    },
    /// Client → tracker: as `ReportFailure`, presenting the lease's token if given.
    ReportFailureWithToken {
        /// The lease the peer was part of.
        lease_id: u64,
        /// The peer that failed.
        peer_id: u64,
        /// What happened, for the logs.
        reason: String,
        /// Also lease a replacement slot into the same lease.
        replace: bool,
        /// The token from `LeasedWithToken`; `None` acts as the holder connection only.
        token: Option<String>,
    },
}

impl Message {
    /// The variant's name, for logs and `Unexpected` errors.
    pub fn kind(&self) -> &'static str {
        match self {
            Message::Hello { .. } => "Hello",
            Message::Welcome { .. } => "Welcome",
            Message::Error { .. } => "Error",
            Message::Register { .. } => "Register",
            Message::Registered { .. } => "Registered",
            Message::Heartbeat { .. } => "Heartbeat",
            Message::HeartbeatAck => "HeartbeatAck",
            Message::Deregister { .. } => "Deregister",
            Message::Deregistered => "Deregistered",
            Message::ListPeers => "ListPeers",
            Message::Peers { .. } => "Peers",
            Message::Lease { .. } => "Lease",
            Message::Waiting { .. } => "Waiting",
            Message::Leased(_) => "Leased",
            Message::Renew { .. } => "Renew",
            Message::Renewed { .. } => "Renewed",
            Message::Release { .. } => "Release",
            Message::Released { .. } => "Released",
            Message::ReportFailure { .. } => "ReportFailure",
            Message::FailureRecorded { .. } => "FailureRecorded",
            Message::Computed { .. } => "Computed",
            Message::LeasedWithToken { .. } => "LeasedWithToken",
            Message::RenewWithToken { .. } => "RenewWithToken",
            Message::ReleaseWithToken { .. } => "ReleaseWithToken",
            Message::ReportFailureWithToken { .. } => "ReportFailureWithToken",
        }
    }

    /// An `Error` message describing `err`.
    pub fn error(err: &Error, task_id: Option<u64>) -> Message {
        let message = match err {
            Error::Remote { message, .. } => message.clone(),
            other => other.to_string(),
        };
        Message::Error { code: err.code(), message, task_id }
    }

    /// Turns an `Error` message back into a typed error; other messages
    /// become [`Error::Unexpected`].
    pub fn into_error(self, expected: &'static str) -> Error {
        match self {
            Message::Error { code, message, .. } => Error::Remote { code, message },
            other => Error::Unexpected { expected, got: other.kind().to_string() },
        }
    }
}
