//! Typed control messages, one request type and one reply type per
//! conversation, shared by the servers and the clients. They travel
//! bincode-encoded inside control frames (see [`crate::frame`]); matrix data
//! never goes through here.
//!
//! Three conversations, each on its own authenticated connection
//! ([`crate::secure`] runs the handshake before any of them):
//!
//! ```text
//! worker agent → tracker   TrackerRequest::{Register, Heartbeat, Deregister}
//! tracker → worker agent   TrackerReply::{Registered, HeartbeatAck, Deregistered, Error}
//!
//! client → tracker         TrackerRequest::{ListPeers, Lease, Renew, Release, ReportFailure,
//!                                           Hedge, Speed}
//! tracker → client         TrackerReply::{Peers, Waiting, Leased, Renewed, Released,
//!                                         FailureRecorded, HedgeSlot, SpeedRecorded, Error}
//!
//! requester → worker       blocks frames only (BlockOp::Multiply, X and Y)
//! worker → requester       WorkerReply::Computed, then a BlockOp::Product blocks frame;
//!                          or WorkerReply::Error; WorkerReply::Working whenever
//!                          it has been quiet for its progress interval
//!
//! relay (crate::relay):
//! requester → worker       WorkerRequest::Relay(plan), then BlockOp::Part frames (R, the
//!                          quadrants it holds) and WorkerRequest::Digests; WorkerRequest::Alive
//!                          whenever it has sent nothing for a second; WorkerRequest::Moved
//!                          when another slot's roles move to a spare; to a reducer,
//!                          WorkerRequest::Checks then its Expect parts
//! worker → requester       BlockOp::Part frames (C panels it reduced, its fingerprint),
//!                          then WorkerReply::RelayDone; or WorkerReply::RelayFailed;
//!                          WorkerReply::RelayProgress every 0.05 s between them;
//!                          WorkerReply::MovedAck to each Moved; WorkerReply::RelayLost
//!                          when its link with another slot broke (it holds, and the
//!                          requester moves that slot or ends the job)
//! worker → worker          WorkerRequest::Join, then BlockOp::Part frames (forwarded
//!                          quadrant panels, product panels); no replies
//! ```
//!
//! Every request gets exactly one reply, except `Lease`, answered with
//! `Waiting` and later `Leased` when the tracker queues it. Errors are a
//! [`Failure`] in either reply type. The receiver decodes a control frame as
//! the type its side of the conversation expects (see
//! [`crate::frame::decode_control`]); the types share no variant numbering.

use std::fmt;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::{Error, ErrorCode};

/// Version of the septet wire protocol. Both sides send theirs in the
/// handshake's hellos ([`crate::secure`]); a mismatch ends the connection
/// with an error naming both. Version 2 added the authenticated handshake.
/// Version 3 split the single `Message` enum into per-conversation request
/// and reply types, made lease tokens fields of the lease messages (no more
/// `…WithToken` variants) and dropped the unused `Hello`/`Welcome`.
/// Version 4 added [`WorkerReply::Working`], which requesters rely on to
/// tell a silent worker from a busy one. Version 5 added hedging:
/// [`TrackerRequest::Hedge`] and [`TrackerRequest::Speed`], and the peer
/// table's `slow` column. Version 6 added the relay: [`WorkerRequest`],
/// [`WorkerReply::RelayDone`] and [`WorkerReply::RelayFailed`], and
/// `BlockOp::Part` frames. Version 7 added federation: the peer table's
/// `cluster` column, sibling status polls, lending, links back (since
/// version 9, [`FederationRequest`]) and [`TrackerRequest::ListFederation`].
/// Version 8 added lease tickets. Version 9 added spliced links (a
/// `splice` in [`TrackerRequest::Broker`] and [`WorkerRequest::DialBack`]:
/// across two NATs, both ends dial a tracker that joins them) and gave the
/// trackers' conversation its own types ([`FederationRequest`],
/// [`FederationReply`]). Version 10 added two-level jobs: a relay plan's
/// `delegate` and [`RelayStats::delegated`]. Version 11 added
/// [`WorkerReply::RelayProgress`]; version 12 its `arrived` panels.
/// Version 13 added [`WorkerRequest::Alive`]. Version 14 added moving a
/// slot's roles mid-relay: [`WorkerRequest::Moved`],
/// [`WorkerReply::MovedAck`], a `Join`'s `generation` and a relay plan's.
/// Version 15 added [`WorkerReply::RelayLost`]: a slot whose link with
/// another broke holds, rather than give up, until the requester decides.
/// Version 16: a slot done keeps its link to the requester, and the
/// product panels it sent, until the requester closes it, answering
/// `Moved` (a reducer may move after its feeders finished); a slot's
/// product panels may come again from a moved slot's new peer, and the
/// copies of those already in are set aside. Version 17: a reducer checks
/// the product panels other slots send it before it folds them in
/// ([`WorkerRequest::Checks`], a relay plan's `checks`), and a slot that
/// sends one that fails is caught.
pub const PROTOCOL_VERSION: u32 = 17;

/// Names one meeting of a brokered link's two ends at a tracker (see
/// [`Rendezvous`]): 128 random bits chosen by the requester, given to the
/// tracker and, through the trackers, to the peer.
pub type SpliceId = [u8; 16];

/// How the two ends of a brokered link meet when neither can dial the
/// other: both dial a tracker they can reach, open with the variant's
/// magic and the id, and then —
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Rendezvous {
    /// — the tracker joins the two connections and copies bytes between
    /// them ([`SPLICE_MAGIC`]): always works, costs the tracker's links.
    Splice(SpliceId),
    /// — the tracker tells each end the address it saw the other's
    /// connection come from ([`PUNCH_MAGIC`]), and both dial each other at
    /// once from the ports they reached it from: a TCP simultaneous open,
    /// through NATs that keep a connection's port for every destination.
    Punch(SpliceId),
}

impl Rendezvous {
    /// The meeting's id.
    pub fn id(&self) -> SpliceId {
        match self {
            Rendezvous::Splice(id) | Rendezvous::Punch(id) => *id,
        }
    }

    /// The connection's first four bytes.
    pub fn magic(&self) -> [u8; 4] {
        match self {
            Rendezvous::Splice(_) => SPLICE_MAGIC,
            Rendezvous::Punch(_) => PUNCH_MAGIC,
        }
    }

    /// The connection's first twenty bytes: the magic, then the id.
    pub fn hello(&self) -> [u8; 20] {
        let mut hello = [0; 20];
        hello[..4].copy_from_slice(&self.magic());
        hello[4..].copy_from_slice(&self.id());
        hello
    }
}

/// The first bytes of a connection that asks a tracker for the other end's
/// address in a [`Rendezvous::Punch`], followed by the id. The tracker
/// answers with [`PUNCH_ADDR_LEN`] bytes (the other end's address as it
/// saw it: an IPv6 or IPv4-mapped address and a port, big-endian) and
/// closes.
pub const PUNCH_MAGIC: [u8; 4] = *b"PNCH";
/// Bytes of the address a tracker answers a punch with.
pub const PUNCH_ADDR_LEN: usize = 18;

/// The first bytes of a connection that asks a tracker to splice it to
/// another (instead of a handshake's `SPTT`), followed by the
/// [`SpliceId`]. The tracker copies bytes between the two legs and
/// reads none of them: the two ends run the handshake with each other
/// through it, so with `--encrypt` it cannot read or alter what crosses.
pub const SPLICE_MAGIC: [u8; 4] = *b"SPLC";

/// Declares a `u64` id newtype: transparent on the wire and in JSON (a bare
/// number, as before), printed as the bare number.
macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(pub u64);

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(&self.0, f)
            }
        }

        impl From<u64> for $name {
            fn from(id: u64) -> Self {
                Self(id)
            }
        }

        impl From<$name> for u64 {
            fn from(id: $name) -> u64 {
                id.0
            }
        }

        impl std::str::FromStr for $name {
            type Err = std::num::ParseIntError;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                s.parse().map(Self)
            }
        }
    };
}

id_type! {
    /// A worker's id in the tracker's peer table (its row; stable for the
    /// worker's address).
    PeerId
}

id_type! {
    /// A lease's id, unique for the tracker's life.
    LeaseId
}

id_type! {
    /// A requester-chosen id pairing a multiply task with its product.
    TaskId
}

id_type! {
    /// A relayed job's id, drawn at random by its requester: it ties the
    /// peers' connections to each other to the job.
    JobId
}

/// What the connecting side is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Role {
    /// A worker talking to the tracker.
    Worker,
    /// A requester (or the CLI) talking to the tracker or to a worker.
    Client,
}

/// The prefix of a leased peer's `addr` when the requester cannot dial it
/// (a federation sibling behind a NAT): the requester listens, and asks its
/// tracker to have the peer dial it ([`TrackerRequest::Broker`]).
pub const DIAL_BACK: &str = "dialback:";

/// A leased slot: which peer, and where to reach it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerAddr {
    /// The tracker's id of the peer.
    pub peer_id: PeerId,
    /// The peer's compute listener, `host:port`.
    pub addr: String,
    /// What the requester shows the peer to be served (see
    /// [`crate::ticket`]); `None` only outside a lease (tests, tools).
    pub ticket: Option<LeaseTicket>,
}

impl PeerAddr {
    /// Serializes a peer as its id and address only, for reports and JSON
    /// output (`#[serde(serialize_with = "PeerAddr::without_ticket")]`):
    /// its lease ticket is a bearer credential until it expires, and does
    /// not belong in a file or a log. (The wire form keeps the ticket.)
    ///
    /// # Errors
    /// The serializer's.
    pub fn without_ticket<S: serde::Serializer>(peer: &PeerAddr, s: S) -> std::result::Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut out = s.serialize_struct("PeerAddr", 2)?;
        out.serialize_field("peer_id", &peer.peer_id)?;
        out.serialize_field("addr", &peer.addr)?;
        out.end()
    }
}

/// A lease's ticket: signed by its peers' tracker, checked by each peer
/// before it serves (see [`crate::ticket`]). One ticket (one signature)
/// covers every peer of the lease at that tracker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseTicket {
    /// The lease (at the peers' own tracker).
    pub lease_id: LeaseId,
    /// Each peer of the lease, as its own tracker numbers it, with the
    /// slots the lease holds on it (its tasks run at most this many at once there).
    pub peers: Vec<(PeerId, u32)>,
    /// When the lease expires unless renewed, in the tracker's clock
    /// (milliseconds since it started).
    pub expires_ms: u64,
    /// Ed25519 signature by the tracker over the fields above.
    pub signature: Vec<u8>,
}

/// A granted lease.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseGrant {
    /// Id to renew or release it with.
    pub lease_id: LeaseId,
    /// One entry per slot; a peer with several free slots may appear several times.
    pub peers: Vec<PeerAddr>,
    /// Time to live from now, in milliseconds, unless renewed.
    pub ttl_ms: u64,
    /// The lease's bearer token: hex text of 256 random bits, sent only to
    /// the connection that took the lease. Whoever presents it may renew,
    /// release or report against the lease (how a detached lease is
    /// released from another process), so it is a credential: keep it
    /// secret. `Debug` prints it redacted.
    pub token: String,
}

impl fmt::Debug for LeaseGrant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LeaseGrant")
            .field("lease_id", &self.lease_id)
            .field("peers", &self.peers)
            .field("ttl_ms", &self.ttl_ms)
            .field("token", &Redacted)
            .finish()
    }
}

/// Stands in for a token in `Debug` output.
struct Redacted;

impl fmt::Debug for Redacted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// `Some(<redacted>)` or `None`, for an optional token in `Debug` output.
fn redacted(token: &Option<String>) -> Option<Redacted> {
    token.as_ref().map(|_| Redacted)
}

/// One row of the tracker's peer table, for `--json` output and tests.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerRow {
    /// Tracker-assigned id.
    pub peer_id: PeerId,
    /// Compute listener address.
    pub addr: String,
    /// Tasks the peer takes at once.
    pub slots: u32,
    /// Memory the peer can give its tasks, in MiB (its `--max-memory`, or
    /// what its host had available when it registered), all slots together.
    pub memory_mib: u64,
    /// Slots held by live leases.
    pub in_use: u32,
    /// Slots handed out over the peer's life.
    pub leases_total: u64,
    /// Failures reported against the peer.
    pub failures: u32,
    /// Products of the peer's that a hedge delivered first, less those it
    /// delivered first since (at most 3). A peer with `slow` > 0 is on
    /// probation: leased only after every peer that is not.
    pub slow: u32,
    /// Milliseconds since the tracker started when the peer first joined.
    pub joined_at: u64,
    /// Milliseconds since the tracker started when the peer was last heard from.
    pub last_seen: u64,
    /// `alive`, `suspect` or `gone`.
    pub state: String,
    /// The cluster the peer belongs to (its tracker's `--cluster` name).
    pub cluster: String,
}

/// A failure, as either side of any conversation reports it; `task_id` is
/// set when it concerns one multiply task.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failure {
    /// What failed, for rebuilding a typed error.
    pub code: ErrorCode,
    /// Human-readable detail.
    pub message: String,
    /// The task concerned, if any.
    pub task_id: Option<TaskId>,
}

impl Failure {
    /// The failure describing `err`.
    pub fn from_error(err: &Error, task_id: Option<TaskId>) -> Failure {
        let message = match err {
            Error::Remote { message, .. } => message.clone(),
            other => other.to_string(),
        };
        Failure { code: err.code(), message, task_id }
    }

    /// The typed error on the receiving side: [`Error::Remote`], its
    /// message [`sanitized`] (it came from another host).
    pub fn into_error(self) -> Error {
        Error::Remote { code: self.code, message: sanitized(&self.message) }
    }
}

/// Most characters of text from a peer (a failure's message, a failure
/// report's reason) that septet shows or logs.
pub const MAX_PEER_TEXT: usize = 512;

/// Text from a peer made fit to show and log: at most [`MAX_PEER_TEXT`]
/// characters (then "…"), control characters escaped (no forged log lines,
/// no terminal escapes).
pub fn sanitized(text: &str) -> String {
    let mut out = String::with_capacity(text.len().min(MAX_PEER_TEXT + 8));
    for (i, c) in text.chars().enumerate() {
        if i == MAX_PEER_TEXT {
            out.push('…');
            break;
        }
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// A control message type: one side of one conversation.
pub trait Control: Serialize + DeserializeOwned + fmt::Debug {
    /// The variant's name, for logs and `Unexpected` errors.
    fn kind(&self) -> &'static str;
}

/// A reply type, which can carry a [`Failure`] instead of an answer.
pub trait Reply: Control {
    /// The reply reporting `failure`.
    fn failure(failure: Failure) -> Self;

    /// The answer, or the failure it reports.
    ///
    /// # Errors
    /// The [`Failure`] of an error reply.
    fn into_result(self) -> Result<Self, Failure>;

    /// Turns a reply that is not the `expected` one into an error: an error
    /// reply becomes [`Error::Remote`], anything else [`Error::Unexpected`].
    fn into_error(self, expected: &'static str) -> Error {
        match self.into_result() {
            Err(failure) => failure.into_error(),
            Ok(other) => Error::Unexpected { expected, got: other.kind().to_string() },
        }
    }
}

/// What workers and clients ask of the tracker.
///
/// Variants are only ever appended within a protocol version: bincode
/// encodes the variant index, and an index this side does not know decodes
/// as an error (answered with `ErrorCode::BadFrame`), never as a different
/// request.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum TrackerRequest {
    /// Worker: join the grid.
    Register {
        /// The worker's compute listener. An unspecified host (`0.0.0.0`)
        /// is replaced by the address the tracker sees the worker connect from.
        listen: String,
        /// Tasks the worker runs at once.
        slots: u32,
        /// Memory its tasks may use, in MiB, all slots together.
        memory_mib: u64,
    },
    /// Worker: still here.
    Heartbeat {
        /// The worker's id.
        peer_id: PeerId,
    },
    /// Worker: leaving the grid.
    Deregister {
        /// The worker's id.
        peer_id: PeerId,
    },
    /// Client: show the peer table.
    ListPeers,
    /// Client: lease `count` slots.
    Lease {
        /// Slots wanted (seven for a Strassen job).
        count: u32,
        /// A detached lease outlives the connection; it ends by release or TTL.
        detached: bool,
    },
    /// Client: extend a lease by its TTL from now.
    Renew {
        /// The lease.
        lease_id: LeaseId,
        /// The lease's token ([`LeaseGrant::token`]); `None` acts only for
        /// the connection that took the lease.
        token: Option<String>,
    },
    /// Client: give a lease's slots back.
    Release {
        /// The lease.
        lease_id: LeaseId,
        /// As for `Renew`.
        token: Option<String>,
    },
    /// Client: a leased peer failed; replace its slot in the lease.
    ReportFailure {
        /// The lease the peer was part of.
        lease_id: LeaseId,
        /// The peer that failed.
        peer_id: PeerId,
        /// What happened, for the logs.
        reason: String,
        /// Also lease a replacement slot into the same lease.
        replace: bool,
        /// As for `Renew`.
        token: Option<String>,
    },
    /// Client: a leased peer's product lags well behind the job's others;
    /// lend one more slot, on another peer, to compute a copy of it (a
    /// hedge). The slow peer is not blamed: it may still win the race.
    Hedge {
        /// The lease.
        lease_id: LeaseId,
        /// The peer whose product is hedged (the new slot is not on it).
        peer_id: PeerId,
        /// As for `Renew`.
        token: Option<String>,
    },
    /// Client: how the lease's peers did against hedges, once the job is
    /// done. `beaten`: peers whose product a hedge delivered first (each
    /// counts one `slow` strike; a peer with strikes is on probation and
    /// leased after every peer without). `proven`: peers that delivered a
    /// product first (each takes one strike away).
    Speed {
        /// The lease.
        lease_id: LeaseId,
        /// Peers beaten by a hedge.
        beaten: Vec<PeerId>,
        /// Peers that delivered a product first.
        proven: Vec<PeerId>,
        /// As for `Renew`.
        token: Option<String>,
    },
    /// Client (or a sibling tracker, forwarding): peer `peer_id` of lease
    /// `lease_id` cannot be dialled from the requester; have it dial the
    /// requester's listener `addr` and present `nonce`. Answered `Brokered`
    /// once the peer's dial connected, an error if it could not.
    ///
    /// With `via` (neither end can dial the other), the requester sends
    /// an empty `addr`: the tracker it asks is where the two ends meet; it
    /// fills in its own address as the peer's side reaches it, and expects
    /// two connections presenting the id (see [`Rendezvous`]).
    Broker {
        /// The lease.
        lease_id: LeaseId,
        /// The peer.
        peer_id: PeerId,
        /// The requester's listener, or the splicing tracker.
        addr: String,
        /// What the requester matches the connection with.
        nonce: u64,
        /// As for `Renew`.
        token: Option<String>,
        /// Where the two ends meet, if neither can dial the other.
        via: Option<Rendezvous>,
    },
    /// Client: the peer tables of this cluster and of every sibling that is
    /// up, each row naming its cluster. Answered with `Peers`.
    ListFederation,
    /// Sibling tracker: the trackers' own conversation (see
    /// [`FederationRequest`]). Answered with [`TrackerReply::Federation`],
    /// or for `Lend` as a lease is.
    Federation(FederationRequest),
}

/// The trackers' own conversation (federation), on a link one sibling
/// tracker opened to another (or, behind a NAT, linked back). Requests
/// about a borrowed part of a lease — renew, release, failure reports,
/// hedges, speed records, brokering — travel on the same link in the
/// requesters' own words ([`TrackerRequest`]): to the lender, the borrowing
/// tracker is a requester like any other.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum FederationRequest {
    /// "I am cluster `cluster`; how are you?" Answered with
    /// [`FederationReply::Status`]; sent every second or so, it is also
    /// how a sibling knows the link is up.
    Status {
        /// The asking tracker's cluster.
        cluster: String,
        /// Where the asking tracker listens (an unspecified host: the
        /// address it asks from). The answering tracker tries to dial it
        /// once in a while; if it cannot, it asks for a `LinkBack`.
        listen: String,
    },
    /// Lease `count` slots to a lease of cluster `cluster`. Queued and
    /// granted like a detached `Lease` (`Waiting`, then `Leased`); it ends
    /// by `Release` with its token, or at the TTL unless renewed — so a
    /// lender gets its peers back if the borrower vanishes.
    Lend {
        /// Slots wanted.
        count: u32,
        /// The borrowing cluster.
        cluster: String,
    },
    /// From a tracker that cannot be dialled (behind a NAT), first on a
    /// link it opened: "send me your requests on this connection" — after
    /// [`FederationReply::LinkedBack`], the roles swap: the tracker that
    /// accepted it asks, the one that dialled answers.
    LinkBack {
        /// The dialling tracker's cluster.
        cluster: String,
    },
}

/// The answers of [`FederationRequest`] (a `Lend` is answered as a lease).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum FederationReply {
    /// To `Status`: this tracker's cluster and its free capacity now.
    Status {
        /// This tracker's cluster.
        cluster: String,
        /// Slots free now (on alive peers, not leased).
        free: u32,
        /// Slots on alive peers.
        slots: u32,
        /// Lease requests waiting in this tracker's queue.
        queued: u32,
        /// This tracker cannot reach the asking one: link back.
        reverse: bool,
    },
    /// To `LinkBack`: from now on this side asks.
    LinkedBack,
}

impl FederationRequest {
    fn kind(&self) -> &'static str {
        match self {
            FederationRequest::Status { .. } => "FederationStatus",
            FederationRequest::Lend { .. } => "Lend",
            FederationRequest::LinkBack { .. } => "LinkBack",
        }
    }
}

/// Tokens redacted.
impl fmt::Debug for TrackerRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TrackerRequest::Register { listen, slots, memory_mib } => f
                .debug_struct("Register")
                .field("listen", listen)
                .field("slots", slots)
                .field("memory_mib", memory_mib)
                .finish(),
            TrackerRequest::Heartbeat { peer_id } => f.debug_struct("Heartbeat").field("peer_id", peer_id).finish(),
            TrackerRequest::Deregister { peer_id } => f.debug_struct("Deregister").field("peer_id", peer_id).finish(),
            TrackerRequest::ListPeers => f.write_str("ListPeers"),
            TrackerRequest::Lease { count, detached } => {
                f.debug_struct("Lease").field("count", count).field("detached", detached).finish()
            }
            TrackerRequest::Renew { lease_id, token } => {
                f.debug_struct("Renew").field("lease_id", lease_id).field("token", &redacted(token)).finish()
            }
            TrackerRequest::Release { lease_id, token } => {
                f.debug_struct("Release").field("lease_id", lease_id).field("token", &redacted(token)).finish()
            }
            TrackerRequest::ReportFailure { lease_id, peer_id, reason, replace, token } => f
                .debug_struct("ReportFailure")
                .field("lease_id", lease_id)
                .field("peer_id", peer_id)
                .field("reason", reason)
                .field("replace", replace)
                .field("token", &redacted(token))
                .finish(),
            TrackerRequest::Hedge { lease_id, peer_id, token } => f
                .debug_struct("Hedge")
                .field("lease_id", lease_id)
                .field("peer_id", peer_id)
                .field("token", &redacted(token))
                .finish(),
            TrackerRequest::Speed { lease_id, beaten, proven, token } => f
                .debug_struct("Speed")
                .field("lease_id", lease_id)
                .field("beaten", beaten)
                .field("proven", proven)
                .field("token", &redacted(token))
                .finish(),
            TrackerRequest::ListFederation => f.write_str("ListFederation"),
            TrackerRequest::Federation(r) => f.debug_tuple("Federation").field(r).finish(),
            TrackerRequest::Broker { lease_id, peer_id, addr, nonce, token, via } => f
                .debug_struct("Broker")
                .field("lease_id", lease_id)
                .field("peer_id", peer_id)
                .field("addr", addr)
                .field("nonce", nonce)
                .field("token", &redacted(token))
                .field("via", &via.map(|v| String::from_utf8_lossy(&v.magic()).into_owned()))
                .finish(),
        }
    }
}

impl Control for TrackerRequest {
    fn kind(&self) -> &'static str {
        match self {
            TrackerRequest::Register { .. } => "Register",
            TrackerRequest::Heartbeat { .. } => "Heartbeat",
            TrackerRequest::Deregister { .. } => "Deregister",
            TrackerRequest::ListPeers => "ListPeers",
            TrackerRequest::Lease { .. } => "Lease",
            TrackerRequest::Renew { .. } => "Renew",
            TrackerRequest::Release { .. } => "Release",
            TrackerRequest::ReportFailure { .. } => "ReportFailure",
            TrackerRequest::Hedge { .. } => "Hedge",
            TrackerRequest::Speed { .. } => "Speed",
            TrackerRequest::ListFederation => "ListFederation",
            TrackerRequest::Federation(r) => r.kind(),
            TrackerRequest::Broker { .. } => "Broker",
        }
    }
}

/// The tracker's answers, one per [`TrackerRequest`] (`Lease` may get
/// `Waiting` first, then `Leased`).
///
/// Variants are only ever appended within a protocol version, as for
/// [`TrackerRequest`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum TrackerReply {
    /// The request failed.
    Error(Failure),
    /// To `Register`: joined.
    Registered {
        /// Id to heartbeat with.
        peer_id: PeerId,
        /// The address the tracker will hand to requesters.
        addr: String,
        /// How often the tracker expects a heartbeat, in milliseconds.
        heartbeat_ms: u64,
        /// The Ed25519 key the tracker signs lease tickets with.
        ticket_key: Vec<u8>,
        /// The tracker's clock now (ms since it started), which tickets expire by.
        now_ms: u64,
    },
    /// To `Heartbeat`: recorded.
    HeartbeatAck {
        /// The tracker's clock now, as in `Registered`.
        now_ms: u64,
    },
    /// To `Deregister`: left.
    Deregistered,
    /// To `ListPeers`: the peer table.
    Peers {
        /// The table as polars formats it.
        table: String,
        /// The same rows, structured.
        rows: Vec<PeerRow>,
    },
    /// To `Lease`: not enough free slots; queued in arrival order. `Leased`
    /// follows once the slots are free.
    Waiting {
        /// 1-based place in the queue.
        position: u32,
        /// Free slots now.
        free: u32,
        /// Slots requested.
        needed: u32,
    },
    /// To `Lease`: granted, with the lease's token (for this connection only).
    Leased(LeaseGrant),
    /// To `Renew`: renewed.
    Renewed {
        /// The lease.
        lease_id: LeaseId,
        /// New time to live from now, in milliseconds.
        ttl_ms: u64,
        /// Every slot of the lease, with a fresh ticket.
        peers: Vec<PeerAddr>,
    },
    /// To `Release`: released.
    Released {
        /// The lease.
        lease_id: LeaseId,
    },
    /// To `ReportFailure`: recorded; `replacement` is the new slot when one
    /// was asked for and available.
    FailureRecorded {
        /// The lease.
        lease_id: LeaseId,
        /// The replacement slot, if any.
        replacement: Option<PeerAddr>,
    },
    /// To `Hedge`: the extra slot, now part of the lease, or `None` when
    /// no slot (off the hedged peer) is free.
    HedgeSlot {
        /// The lease.
        lease_id: LeaseId,
        /// The slot.
        slot: Option<PeerAddr>,
    },
    /// To `Speed`: recorded.
    SpeedRecorded {
        /// The lease.
        lease_id: LeaseId,
    },
    /// To `Broker`: the peer was told to dial.
    Brokered,
    /// To [`TrackerRequest::Federation`].
    Federation(FederationReply),
}

impl Control for TrackerReply {
    fn kind(&self) -> &'static str {
        match self {
            TrackerReply::Error(_) => "Error",
            TrackerReply::Registered { .. } => "Registered",
            TrackerReply::HeartbeatAck { .. } => "HeartbeatAck",
            TrackerReply::Deregistered => "Deregistered",
            TrackerReply::Peers { .. } => "Peers",
            TrackerReply::Waiting { .. } => "Waiting",
            TrackerReply::Leased(_) => "Leased",
            TrackerReply::Renewed { .. } => "Renewed",
            TrackerReply::Released { .. } => "Released",
            TrackerReply::FailureRecorded { .. } => "FailureRecorded",
            TrackerReply::HedgeSlot { .. } => "HedgeSlot",
            TrackerReply::SpeedRecorded { .. } => "SpeedRecorded",
            TrackerReply::Brokered => "Brokered",
            TrackerReply::Federation(FederationReply::Status { .. }) => "FederationStatus",
            TrackerReply::Federation(FederationReply::LinkedBack) => "LinkedBack",
        }
    }
}

impl Reply for TrackerReply {
    fn failure(failure: Failure) -> Self {
        TrackerReply::Error(failure)
    }

    fn into_result(self) -> Result<Self, Failure> {
        match self {
            TrackerReply::Error(failure) => Err(failure),
            other => Ok(other),
        }
    }
}

/// A worker's control messages to a requester. (The requester sends the
/// worker nothing but multiply blocks frames.)
///
/// Variants are only ever appended within a protocol version, as for
/// [`TrackerRequest`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum WorkerReply {
    /// A task (then `task_id` is set), or the connection, failed.
    Error(Failure),
    /// Just before a product's blocks: how long the product took to compute.
    Computed {
        /// The task.
        task_id: TaskId,
        /// Compute time in microseconds.
        compute_us: u64,
    },
    /// Sent by the worker whenever it has written nothing else for its
    /// progress interval (1 s), for as long as the connection is open: the
    /// requester takes silence — no byte for a few seconds — as a worker
    /// that is gone or cut off, whatever the block size, while a slow but
    /// working peer keeps talking.
    Working,
    /// Relay: this slot did all its roles (sent after its last part).
    RelayDone(RelayStats),
    /// Relay: this slot gave up on the job; `blame` names the slot at
    /// fault when it knows one (a forward that failed its digest, a peer
    /// that could not be reached or broke off).
    RelayFailed {
        /// The slot at fault, if known.
        blame: Option<u8>,
        /// What happened.
        message: String,
        /// The blamed slot was caught by what it sent (a panel that fails
        /// its digest, a part the plan does not have it send), not by a
        /// link that broke — which may be the failure of another slot
        /// spreading: the requester trusts this over other reports.
        evidence: bool,
    },
    /// To `DialBack`: dialled (connected; the handshake follows).
    DialingBack,
    /// The first frame on a connection a worker dialled on a `DialBack`
    /// order: which brokered link this is.
    DialedBack {
        /// The order's nonce.
        nonce: u64,
    },
    /// Relay: how far this slot has got, sent in place of `Working` every
    /// twentieth of a second, between the other frames the slot writes.
    /// The requester tells by it a slot slow to compute from one whose
    /// link is slow (a report stuck behind parts is old when it arrives,
    /// and `at_us` says so), a slot whose forwards of B arrive far slower
    /// than the same quadrant's at the other slots that need it, and a
    /// holder whose forwards reach all of them far slower than it took
    /// the quadrant.
    RelayProgress {
        /// Panels of the product whose operands are all in (none before
        /// all of B is).
        inputs: u32,
        /// Panels of the product computed.
        computed: u32,
        /// Panels of each quadrant (A11, A12, A21, A22, B11, B12, B21,
        /// B22) arrived, from the requester or by forward.
        arrived: [u32; 8],
        /// When, in microseconds since the slot received the plan.
        at_us: u64,
    },
    /// Relay: to [`WorkerRequest::Moved`]: the slot takes parts from the
    /// moved slot's new peer only (and sends it what the slot is owed),
    /// or, with `refused`, why it cannot (the move did not happen here).
    MovedAck {
        /// The slot that moved.
        slot: u8,
        /// Why not, if not.
        refused: Option<String>,
    },
    /// Relay: the slot's link with slot `slot` broke (it failed, or closed
    /// before the plan's parts were through), or `slot` was caught sending
    /// what it should not (`evidence`: a forwarded panel that fails the
    /// requester's digest, a part off the plan). The slot holds — it goes on
    /// with everything else, and gives up only if neither a
    /// [`WorkerRequest::Moved`] for `slot` nor the end of the job comes
    /// within its patience — so that the requester, which tells a dead
    /// peer from a broken link between two live ones by its own link to
    /// each, can move `slot`'s roles to a spare. Sent once per slot and
    /// generation.
    RelayLost {
        /// The slot whose link broke.
        slot: u8,
        /// How it broke, or what the slot sent.
        message: String,
        /// Caught by what it sent, not merely by a link that broke.
        evidence: bool,
        /// Caught by a panel of its product that failed this slot's check
        /// ([`crate::relay::RelayPlan::checks`]): what it forwards is not
        /// in question, so the other slots can finish without it.
        wrong_product: bool,
    },
}

/// What one slot of a relayed job moved and when, as it reports it.
/// Times are microseconds since it received the plan.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RelayStats {
    /// The slot.
    pub slot: u8,
    /// Bytes received from each slot (index 0..7) and from the requester (7).
    pub bytes_in: Vec<u64>,
    /// Bytes sent to each slot (0..7) and to the requester (7).
    pub bytes_out: Vec<u64>,
    /// Its last operand panel arrived.
    pub inputs_done_us: u64,
    /// It began computing its first panel.
    pub compute_start_us: u64,
    /// It finished computing its last panel.
    pub compute_end_us: u64,
    /// Microseconds of compute in all.
    pub compute_us: u64,
    /// It sent its first C panel (0 if it reduces none).
    pub reduce_start_us: u64,
    /// It sent its last part.
    pub done_us: u64,
    /// A slot that delegated its product (a two-level job): how that went.
    pub delegated: Option<Delegated>,
}

/// How a slot of a two-level job had its product computed by seven peers
/// of its own, as a relayed job it requested (see
/// [`crate::relay::RelayPlan::delegate`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delegated {
    /// The seven sub-slots, in order (sub-slot j computed product j+1 of
    /// this slot's split).
    pub slots: Vec<SubSlot>,
    /// Quadrants of the product (0..4, C11..C22 of the sub-job) this slot
    /// computed itself because the sub-job did not deliver them verified.
    pub computed_here: Vec<u8>,
    /// Sub-slots at fault, with why (caught by the sub-job's checks, or
    /// gone).
    pub blamed: Vec<(u8, String)>,
    /// Why the sub-job did not deliver everything, if it did not.
    pub failure: Option<String>,
    /// Bytes this slot sent to the sub-slots and received from them.
    pub bytes_sent: u64,
    /// (See `bytes_sent`.)
    pub bytes_received: u64,
    /// Microseconds from the sub-job's start to the product whole.
    pub took_us: u64,
}

/// One sub-slot of a delegated product.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubSlot {
    /// The peer.
    pub peer_id: PeerId,
    /// Its compute listener.
    pub addr: String,
    /// Bytes it received, from the delegating slot and other sub-slots.
    pub bytes_in: u64,
    /// Bytes it sent.
    pub bytes_out: u64,
    /// Microseconds it computed.
    pub compute_us: u64,
    /// It finished all its roles.
    pub done: bool,
}

/// Control messages to a worker for the relay (a requester's job plan and
/// digests; a peer's introduction of the parts it forwards). Multiply
/// tasks are blocks frames and have no control message.
///
/// Variants are only ever appended within a protocol version, as for
/// [`TrackerRequest`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum WorkerRequest {
    /// From a requester: this connection carries a relayed job with this
    /// plan; its parts follow.
    Relay(crate::relay::RelayPlan),
    /// From a peer of a relayed job: the parts that follow on this
    /// connection are for slot `to` of `job_id`, from slot `from`. (A
    /// worker with several slots may hold more than one slot of a job.)
    Join {
        /// The job.
        job_id: JobId,
        /// The sending slot.
        from: u8,
        /// The receiving slot.
        to: u8,
        /// The sending slot's generation: 0, or how many times its roles
        /// have moved to another peer ([`WorkerRequest::Moved`]). A
        /// receiver takes parts only from the slot's current generation.
        generation: u8,
    },
    /// From the requester: BLAKE3 digests of parts this slot receives by
    /// forward (part task id, digest).
    Digests(Vec<(u64, [u8; 32])>),
    /// From the requester of a relayed job, on its link to a slot, when it
    /// has sent nothing else for [`crate::relay::ALIVE_EVERY`]: it is still
    /// there. A slot that hears nothing at all from its requester for
    /// longer than its patience ends the job, freeing what it holds (a
    /// requester whose host died or whose process hangs would otherwise
    /// keep a compute slot until the kernel gives the connection up,
    /// some fifteen minutes).
    Alive,
    /// From the worker's tracker (federation, brokering a link across a
    /// NAT): dial `addr` — a requester that cannot dial this worker — say
    /// [`WorkerReply::DialedBack`] with `nonce` there, and serve that
    /// connection as if the requester had dialled. Answered `DialingBack`
    /// once the dial connected, with an error if it could not.
    ///
    /// With `via`, `addr` is the tracker where this worker and the
    /// requester meet: send the rendezvous' magic and id first; then, for
    /// a splice, run the handshake with the requester through it, and for
    /// a punch, dial the address it answers from the same port.
    DialBack {
        /// The requester's listener, or the splicing tracker.
        addr: String,
        /// What the requester matches the connection with.
        nonce: u64,
        /// Where the two ends meet, if neither can dial the other.
        via: Option<Rendezvous>,
    },
    /// First on every connection of a requester, or of a peer forwarding
    /// a relayed job's parts: the lease ticket this connection is served
    /// under (for the receiving worker). Not answered; a refused ticket is
    /// answered with an error, and the connection closes.
    Ticket(LeaseTicket),
    /// From the requester of a relayed job: slot `slot`'s roles move to
    /// the peer at `addr` (slot `slot`'s next generation), mid-relay. The
    /// receiving slot stops forwarding to it (the requester feeds the new
    /// peer its operands itself), sets aside what the old peer sends from
    /// now on, takes the slot's parts from the new peer (setting aside
    /// copies of product panels the old one sent), and sends it again the
    /// product panels the old one was sent, if the slot reduces its
    /// product — also once it is done with its own roles, until the
    /// requester closes its link. Answered [`WorkerReply::MovedAck`];
    /// refused for a slot that has moved already, or is not another slot.
    Moved {
        /// The slot whose roles move.
        slot: u8,
        /// The new peer's compute listener.
        addr: String,
        /// The new peer's lease ticket, for the links to it.
        ticket: Option<LeaseTicket>,
    },
    /// From the requester of a relayed job, to a slot whose plan says
    /// `checks` and that is sent products by other slots: how it checks
    /// them before it folds them in. Each X·(Y·s) follows as a part
    /// ([`crate::relay::Block::Expect`]). A tolerance that is not finite
    /// (A or B holds NaN or ±inf, or values so large that the bound
    /// overflows) checks nothing: that product's panels are folded in as
    /// they come, and the requester's own check of C decides.
    Checks {
        /// The seed of the slot's secret vector s ([`crate::relay::key`]).
        seed: [u8; 32],
        /// The tolerance on |M·s − X·(Y·s)| for each product it is sent
        /// ([`crate::relay::RelayPlan::checked_products`], in that order).
        tolerance: Vec<f64>,
    },
}

impl Control for WorkerRequest {
    fn kind(&self) -> &'static str {
        match self {
            WorkerRequest::Relay(_) => "Relay",
            WorkerRequest::Join { .. } => "Join",
            WorkerRequest::Digests(_) => "Digests",
            WorkerRequest::Alive => "Alive",
            WorkerRequest::DialBack { .. } => "DialBack",
            WorkerRequest::Ticket(_) => "Ticket",
            WorkerRequest::Moved { .. } => "Moved",
            WorkerRequest::Checks { .. } => "Checks",
        }
    }
}

impl Control for WorkerReply {
    fn kind(&self) -> &'static str {
        match self {
            WorkerReply::Error(_) => "Error",
            WorkerReply::Computed { .. } => "Computed",
            WorkerReply::Working => "Working",
            WorkerReply::RelayDone(_) => "RelayDone",
            WorkerReply::RelayFailed { .. } => "RelayFailed",
            WorkerReply::RelayProgress { .. } => "RelayProgress",
            WorkerReply::DialingBack => "DialingBack",
            WorkerReply::DialedBack { .. } => "DialedBack",
            WorkerReply::MovedAck { .. } => "MovedAck",
            WorkerReply::RelayLost { .. } => "RelayLost",
        }
    }
}

impl Reply for WorkerReply {
    fn failure(failure: Failure) -> Self {
        WorkerReply::Error(failure)
    }

    fn into_result(self) -> Result<Self, Failure> {
        match self {
            WorkerReply::Error(failure) => Err(failure),
            other => Ok(other),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bincode_of<T: Serialize>(value: &T) -> Vec<u8> {
        bincode::serde::encode_to_vec(value, bincode::config::standard()).unwrap()
    }

    #[test]
    fn ids_are_bare_numbers_on_the_wire_and_in_text() {
        for n in [0, 3, 250, 1 << 40, u64::MAX] {
            assert_eq!(bincode_of(&PeerId(n)), bincode_of(&n));
            assert_eq!(bincode_of(&LeaseId(n)), bincode_of(&n));
            assert_eq!(bincode_of(&TaskId(n)), bincode_of(&n));
            assert_eq!(LeaseId(n).to_string(), n.to_string());
            assert_eq!(n.to_string().parse::<PeerId>().unwrap(), PeerId(n));
        }
        // A grant encodes as it did with plain u64 ids, followed by its token.
        let grant = LeaseGrant {
            lease_id: LeaseId(9),
            peers: vec![PeerAddr { peer_id: PeerId(3), addr: "a:1".into(), ticket: None }],
            ttl_ms: 5,
            token: "t".into(),
        };
        let plain = (9u64, vec![(3u64, "a:1", None::<()>)], 5u64, "t");
        assert_eq!(bincode_of(&grant), bincode_of(&plain));
    }

    #[test]
    fn text_from_peers_is_cut_short_and_escaped() {
        assert_eq!(sanitized("plain"), "plain");
        assert_eq!(sanitized("line\nforged: ok\u{1b}[2J"), "line\\nforged: ok\\u{1b}[2J");
        let long = sanitized(&"é".repeat(5000));
        assert_eq!(long.chars().count(), MAX_PEER_TEXT + 1);
        assert!(long.ends_with('…'));
        let err = Failure { code: ErrorCode::Internal, message: "x\ry".into(), task_id: None }.into_error();
        assert!(err.to_string().contains("x\\ry"), "{err}");
    }

    #[test]
    fn a_failure_becomes_a_remote_error_and_replies_split_it_off() {
        let err = Error::Invalid("no".into());
        let failure = Failure::from_error(&err, Some(TaskId(4)));
        assert_eq!((failure.code, failure.task_id), (ErrorCode::InvalidRequest, Some(TaskId(4))));
        let reply = WorkerReply::failure(failure.clone());
        assert_eq!(reply.clone().into_result(), Err(failure));
        assert!(matches!(reply.into_error("Computed"), Error::Remote { code: ErrorCode::InvalidRequest, .. }));
        let other = TrackerReply::HeartbeatAck { now_ms: 1 }.into_error("Peers");
        assert!(matches!(other, Error::Unexpected { expected: "Peers", ref got } if got == "HeartbeatAck"), "{other}");
    }
}
