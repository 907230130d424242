//! [`Tracker`]: the peer table plus the lease bookkeeping around it, behind
//! one mutex, with no sockets — so the lease queue can be tested on its own.
//!
//! The lease queue is a fair counting semaphore whose permits are the free
//! slots of alive peers, read from the table itself. It is hand-written
//! rather than `tokio::sync::Semaphore` because the permit count must also
//! *shrink* when a peer goes away (tokio cannot take back permits it has
//! already handed, partially, to a queued waiter) and because a waiter must
//! be told its place in the queue. Requests are served strictly in arrival
//! order: a request that cannot be served queues behind every earlier one,
//! even if fewer slots would do for it. Every change to the table's free
//! slots is followed by `State::dispatch` in the same critical section.
//!
//! Leases and releases can be applied in batches ([`Tracker::apply`]): one
//! update of the table for all the releases, one choice and one update for
//! all the grants. The server batches whatever arrives together, so the
//! polars passes — the tracker's main cost per request — are shared out
//! when load is high (`cargo bench --bench tracker` compares batches with
//! one request at a time).
//!
//! # Ownership
//! A lease is renewed, released or reported against only by its *holder*:
//! the connection that took it (`LeaseRecord::holder`, detached or not),
//! or any connection presenting the lease's token — 256 random bits made
//! when it is granted ([`LeaseToken`]), handed only to the taker, and how a
//! detached lease is released from another process. A peer is heartbeated
//! or deregistered only by the connection that registered it
//! (`State::peer_owner`). Tokens and owners live here, beside the leases,
//! never in the polars table (which is printed for `septet peers`), and a
//! token's `Debug` is redacted so it cannot reach a log line.
//!
//! Workers need no token of their own: the agent registers again on every
//! new connection to the tracker (it has to — a restarted tracker has
//! forgotten it), and a registration from the same address takes the row
//! over for the new connection. So connection ownership suffices.
//!
//! The methods without a caller ([`Tracker::release`], [`Tracker::renew`],
//! [`Tracker::heartbeat`], …) are the trusted in-process API (tests,
//! benches); the server only uses the `_by` variants, which check.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use septet_common::proto::{LeaseGrant, LeaseId, PeerAddr, PeerId, PeerRow};
use septet_common::secure::random_token;
use septet_common::ticket::TicketSigner;
use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::metrics::{Levels, TrackerMetrics};
use crate::table::{PeerState, PeerTable};
use crate::{Error, Result};

/// Beyond this many waiters, `dispatch` counts the free slots first rather
/// than add up the demand of the whole queue.
const LONG_QUEUE: usize = 64;

/// Identifies the connection that owns a lease or a waiting request. The
/// server numbers connections from 1; 0 stands for the in-process caller
/// (the trusted API without a caller, see the module docs).
pub type ConnId = u64;

/// The in-process caller: owner of the peers [`Tracker::register`] adds.
const IN_PROCESS: ConnId = 0;

/// Bytes of randomness in a lease token (256 bits; 64 hex characters).
pub const TOKEN_BYTES: usize = 32;

/// A lease's bearer token, as hex text. Whoever presents it may renew,
/// release or report against the lease, so it is only ever sent to the
/// connection that took the lease; its `Debug` is redacted and it has no
/// `Display`, so it does not end up in a log line by accident.
#[derive(Clone, PartialEq, Eq)]
pub struct LeaseToken(String);

impl std::fmt::Debug for LeaseToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LeaseToken(<redacted>)")
    }
}

impl LeaseToken {
    /// A fresh token of [`TOKEN_BYTES`] random bytes from the OS.
    pub fn generate() -> Self {
        Self(random_token(TOKEN_BYTES))
    }

    /// The token as presented on the wire (any text: a wrong one just fails
    /// to match).
    pub fn presented(text: impl Into<String>) -> Self {
        Self(text.into())
    }

    /// The hex text, to send to the lease's taker.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Whether `presented` is this token, in time independent of where they
    /// differ, and of the presented token's length beyond hashing it.
    ///
    /// ring 0.17 deprecated its `constant_time::verify_slices_are_equal`
    /// ("no promises regarding side channels"); the comparison it does
    /// document as constant-time is [`ring::hmac::verify`]. So both sides
    /// go through HMAC-SHA256 under a key made once per process: the stored
    /// token's tag is computed, and `hmac::verify` checks the presented
    /// token against it. Even a leak in that check would only reveal bits
    /// of a MAC under a key no peer knows, not of the token.
    pub fn matches(&self, presented: &LeaseToken) -> bool {
        let key = token_mac_key();
        let tag = ring::hmac::sign(key, self.0.as_bytes());
        ring::hmac::verify(key, presented.0.as_bytes(), tag.as_ref()).is_ok()
    }
}

/// The per-process HMAC key that [`LeaseToken::matches`] compares under.
fn token_mac_key() -> &'static ring::hmac::Key {
    static KEY: std::sync::OnceLock<ring::hmac::Key> = std::sync::OnceLock::new();
    KEY.get_or_init(|| {
        ring::hmac::Key::generate(ring::hmac::HMAC_SHA256, &ring::rand::SystemRandom::new())
            .expect("the OS random number generator failed")
    })
}

/// Who asks to act on a lease: the connection the request came on, and the
/// token it presented, if any. See `State::authorize`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The connection.
    pub conn: ConnId,
    /// The lease token presented with the request.
    pub token: Option<LeaseToken>,
}

impl Caller {
    /// A request on `conn` with no token.
    pub fn conn(conn: ConnId) -> Self {
        Self { conn, token: None }
    }
}

/// A granted lease and its token, for the connection that asked for it.
/// Derefs to the [`LeaseGrant`] (`grant.lease_id`, `grant.peers`), which
/// carries the token's text for the wire; `token` is the same token, for
/// comparing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// What the requester is told.
    pub lease: LeaseGrant,
    /// The lease's bearer token.
    pub token: LeaseToken,
}

impl std::ops::Deref for Grant {
    type Target = LeaseGrant;

    fn deref(&self) -> &LeaseGrant {
        &self.lease
    }
}

/// Tracker settings.
#[derive(Debug, Clone)]
pub struct TrackerConfig {
    /// Time a lease lives unless renewed.
    pub lease_ttl: Duration,
    /// How often workers are told to heartbeat.
    pub heartbeat_interval: Duration,
    /// A peer silent this long is marked gone (plus one sweep period of slack);
    /// silent for half of it, suspect.
    pub heartbeat_timeout: Duration,
    /// Most slots one lease may ask for.
    pub max_lease_count: u32,
    /// Most slots one worker may offer.
    pub max_slots_per_peer: u32,
    /// Deadline for a client's hello and for writing each reply.
    pub io_timeout: Duration,
    /// Largest frame a client may send (the tracker only takes control
    /// messages, so this is small).
    pub max_frame_len: usize,
    /// Deadline for a new connection's handshake.
    pub handshake_timeout: Duration,
    /// Connections served at once (workers and clients); the excess is refused.
    pub max_connections: usize,
    /// The cluster secret and whether to encrypt.
    pub security: septet_common::secure::Security,
    /// Most rows the peer table holds. Rows are never removed (a peer's id
    /// is its row), so this counts every worker address ever registered;
    /// a registration from a new address beyond it is refused, while a
    /// known address may always register again.
    pub max_peers: usize,
    /// A peer gone this long (and at least twice the lease TTL, so no
    /// ticket for it is still good) may lose its row to a new worker when
    /// the table is full.
    pub forget_gone: Duration,
    /// This tracker's cluster: the name its peers' rows carry and its
    /// siblings know it by (`--cluster`).
    pub cluster: String,
    /// Sibling trackers to borrow slots from when this cluster has too few
    /// free (`--federate`); see [`crate::federation`].
    pub siblings: Vec<String>,
    /// How often each sibling is asked for its free slots.
    pub sibling_poll: Duration,
}

impl Default for TrackerConfig {
    fn default() -> Self {
        Self {
            lease_ttl: Duration::from_secs(60),
            heartbeat_interval: Duration::from_secs(2),
            heartbeat_timeout: Duration::from_secs(6),
            forget_gone: Duration::from_secs(600),
            max_lease_count: 1024,
            max_slots_per_peer: 1024,
            io_timeout: Duration::from_secs(10),
            max_frame_len: 1 << 20,
            handshake_timeout: Duration::from_secs(5),
            max_connections: 4096,
            security: septet_common::secure::Security::default(),
            max_peers: 10_000,
            cluster: "default".into(),
            siblings: Vec::new(),
            sibling_poll: crate::federation::POLL_INTERVAL,
        }
    }
}

impl TrackerConfig {
    /// Checks that the settings make sense together.
    ///
    /// # Errors
    /// [`Error::Config`] naming the offending setting.
    pub fn validate(&self) -> Result<()> {
        let positive = [
            ("lease TTL", self.lease_ttl),
            ("heartbeat interval", self.heartbeat_interval),
            ("heartbeat timeout", self.heartbeat_timeout),
            ("I/O timeout", self.io_timeout),
            ("handshake timeout", self.handshake_timeout),
            ("sibling poll interval", self.sibling_poll),
        ];
        if let Some((name, _)) = positive.iter().find(|(_, d)| d.is_zero()) {
            return Err(Error::Config(format!("the {name} must be positive")));
        }
        // A peer is suspect after half the timeout without a heartbeat: if
        // that is not longer than the interval, healthy peers flap. (The
        // CLI also asks for room for delays: see `septet tracker --help`.)
        if self.heartbeat_timeout / 2 <= self.heartbeat_interval {
            return Err(Error::Config(format!(
                "half the heartbeat timeout ({:?}) must exceed the heartbeat interval ({:?}), or healthy peers are \
                 marked suspect between heartbeats",
                self.heartbeat_timeout / 2,
                self.heartbeat_interval
            )));
        }
        if self.max_connections == 0 {
            return Err(Error::Config("the connection cap must be at least 1".into()));
        }
        self.security.validate().map_err(|e| Error::Config(e.to_string()))?;
        if self.max_frame_len < 64 {
            return Err(Error::Config(format!("a maximum frame length of {} bytes is too small", self.max_frame_len)));
        }
        if !(1..=crate::table::MAX_PEERS).contains(&self.max_peers) {
            return Err(Error::Config(format!(
                "the peer cap must be between 1 and {}, not {}",
                crate::table::MAX_PEERS,
                self.max_peers
            )));
        }
        let name_ok = |c: char| c.is_ascii_alphanumeric() || "-_.".contains(c);
        if self.cluster.is_empty() || self.cluster.len() > 64 || !self.cluster.chars().all(name_ok) {
            return Err(Error::Config(format!(
                "a cluster name is 1 to 64 letters, digits, '-', '_' or '.', not {:?}",
                self.cluster
            )));
        }
        // The peer table's ranking key has 11 bits for a peer's slots in use
        // plus the extra slots one lease ranks on it.
        if !(1..=1024).contains(&self.max_lease_count) || !(1..=1024).contains(&self.max_slots_per_peer) {
            return Err(Error::Config("slot limits must be between 1 and 1024".into()));
        }
        Ok(())
    }

    /// How often leases and heartbeats are checked; also the slack added to
    /// the heartbeat timeout.
    pub fn sweep_period(&self) -> Duration {
        (self.lease_ttl.min(self.heartbeat_timeout) / 8).clamp(Duration::from_millis(10), Duration::from_millis(500))
    }
}

/// The lease `lease_id`, which must hold a slot on `peer_id`.
fn lease_holding(
    leases: &mut HashMap<LeaseId, LeaseRecord>,
    lease_id: LeaseId,
    peer_id: PeerId,
) -> Result<&mut LeaseRecord> {
    let lease = leases.get_mut(&lease_id).ok_or(Error::UnknownLease(lease_id))?;
    if !lease.slots.iter().any(|p| p.peer_id == peer_id) {
        return Err(Error::NotInLease { lease_id, peer_id });
    }
    Ok(lease)
}

/// Takes the best free slot (never on `except`) into `lease` — a
/// replacement or a hedge; `None` when none is free.
fn lend_slot(
    table: &mut PeerTable,
    signer: &TicketSigner,
    lease_id: LeaseId,
    lease: &mut LeaseRecord,
    except: Option<u64>,
) -> Result<Option<PeerAddr>> {
    let Some(slot) = table.choose_except(1, except)?.pop() else { return Ok(None) };
    table.take_slots(std::slice::from_ref(&slot))?;
    lease.slots.push(slot.clone());
    Ok(ticketed(signer, lease_id, lease, &[slot]).pop())
}

/// A live lease.
#[derive(Debug)]
struct LeaseRecord {
    /// One entry per slot held (replacements are appended).
    slots: Vec<PeerAddr>,
    /// The connection whose close ends the lease; `None` when detached.
    owner: Option<ConnId>,
    /// The connection that took the lease (detached or not): it may renew,
    /// release and report against it without the token.
    holder: ConnId,
    /// Lets any other connection act as the holder.
    token: LeaseToken,
    granted_at: Instant,
    expires_at: Instant,
    /// Peers already reported failed in this lease: a failure counts once
    /// per lease however often the requester asks for a replacement.
    reported: Vec<PeerId>,
    /// The holder said how the lease's peers did against hedges: once per lease.
    speed_recorded: bool,
    /// Slots lent for hedges (at most [`MAX_HEDGES_PER_LEASE`]).
    hedges: u32,
    /// Slots granted at first.
    granted: u32,
    /// Replacements lent, per reported peer: at most one per slot the
    /// lease holds on that peer, and at most `granted` in all — so a
    /// holder cannot grow its lease ahead of the queue by reporting one
    /// peer again and again, or each replacement in turn.
    replaced: Vec<(PeerId, u32)>,
}

impl LeaseRecord {
    /// Whether a failure report against `peer_id` may be given a slot.
    fn may_replace(&self, peer_id: PeerId) -> bool {
        let lent: u32 = self.replaced.iter().map(|(_, n)| n).sum();
        let here = self.replaced.iter().find(|(p, _)| *p == peer_id).map_or(0, |(_, n)| *n);
        let held = self.slots.iter().filter(|p| p.peer_id == peer_id).count() as u32;
        lent < self.granted && here < held
    }

    fn note_replaced(&mut self, peer_id: PeerId) {
        match self.replaced.iter_mut().find(|(p, _)| *p == peer_id) {
            Some((_, n)) => *n += 1,
            None => self.replaced.push((peer_id, 1)),
        }
    }
}

/// Most slots one lease borrows for hedges: a requester hedges each of its
/// seven products at most once.
pub const MAX_HEDGES_PER_LEASE: u32 = 7;

/// A request waiting in the queue.
#[derive(Debug)]
struct Waiter {
    id: u64,
    count: u32,
    conn: ConnId,
    detached: bool,
    queued_at: Instant,
    tx: oneshot::Sender<Grant>,
}

/// The answer to a lease request.
#[derive(Debug)]
pub enum LeaseOutcome {
    /// Served at once.
    Granted(Grant),
    /// Queued: the grant arrives on the ticket.
    Queued(Ticket),
}

/// A queued lease request.
#[derive(Debug)]
pub struct Ticket {
    /// Id to cancel the wait with.
    pub waiter_id: u64,
    /// 1-based place in the queue when queued.
    pub position: u32,
    /// Free slots when queued.
    pub free: u32,
    /// Resolves with the grant when the request reaches the front and enough
    /// slots are free.
    pub grant: oneshot::Receiver<Grant>,
}

#[derive(Debug)]
struct State {
    table: PeerTable,
    leases: HashMap<LeaseId, LeaseRecord>,
    queue: VecDeque<Waiter>,
    next_lease_id: u64,
    next_waiter_id: u64,
    /// The connection that registered each peer (last registration wins);
    /// only it may heartbeat or deregister the peer.
    peer_owner: HashMap<PeerId, ConnId>,
    /// Where each open connection comes from, for the status page's lease
    /// holders (see [`Tracker::connected`]).
    conn_addrs: HashMap<ConnId, SocketAddr>,
    /// Signs the lease tickets workers check (see [`septet_common::ticket`]).
    signer: TicketSigner,
}

/// `peers` with a fresh ticket of `lease`: every peer it holds with its
/// slots (the times it appears there), valid until the lease expires. One
/// signature for all of them.
fn ticketed(signer: &TicketSigner, lease_id: LeaseId, lease: &LeaseRecord, peers: &[PeerAddr]) -> Vec<PeerAddr> {
    let mut held: Vec<(PeerId, u32)> = Vec::new();
    for p in &lease.slots {
        match held.iter_mut().find(|(id, _)| *id == p.peer_id) {
            Some((_, n)) => *n += 1,
            None => held.push((p.peer_id, 1)),
        }
    }
    let ticket = signer.sign(lease_id, held, lease.expires_at.into_std());
    peers.iter().map(|p| PeerAddr { ticket: Some(ticket.clone()), ..p.clone() }).collect()
}

impl State {
    /// Whether `caller` may act on lease `lease_id`: it came on the
    /// connection that took it, or presents its token. An unknown lease is
    /// refused with the same error as someone else's, so the answer does
    /// not tell whether a lease exists.
    fn authorize(&self, lease_id: LeaseId, caller: &Caller) -> Result<()> {
        let Some(lease) = self.leases.get(&lease_id) else {
            // The same comparison as for a wrong token, so the time taken
            // does not tell an unknown lease from someone else's either.
            if let Some(token) = &caller.token {
                std::hint::black_box(token.matches(token));
            }
            return Err(Error::NotYourLease(lease_id));
        };
        let by_token = caller.token.as_ref().is_some_and(|t| lease.token.matches(t));
        if lease.holder == caller.conn || by_token {
            Ok(())
        } else {
            Err(Error::NotYourLease(lease_id))
        }
    }

    /// Whether `conn` registered peer `peer_id` (and it still exists).
    fn authorize_peer(&self, peer_id: PeerId, conn: ConnId) -> Result<()> {
        if self.table.state(peer_id.0)?.is_none() {
            return Err(Error::UnknownPeer(peer_id));
        }
        match self.peer_owner.get(&peer_id) {
            Some(&owner) if owner == conn => Ok(()),
            _ => Err(Error::NotYourPeer(peer_id)),
        }
    }

    /// Ends a lease and hands back the slots it held, for the caller to
    /// return to the table (alone or with others). Removing the record first
    /// is what makes this happen exactly once, whoever gets here first
    /// (release, expiry, disconnect).
    fn end_lease(&mut self, lease_id: LeaseId) -> Result<Vec<PeerAddr>> {
        Ok(self.leases.remove(&lease_id).ok_or(Error::UnknownLease(lease_id))?.slots)
    }

    /// Ends a lease and returns its slots to the table at once.
    fn end_lease_now(&mut self, lease_id: LeaseId) -> Result<()> {
        let slots = self.end_lease(lease_id)?;
        Ok(self.table.return_slots(&slots)?)
    }

    /// Queues a lease request behind every earlier one; `dispatch` serves it
    /// when it reaches the front and enough slots are free.
    fn enqueue(&mut self, count: u32, conn: ConnId, detached: bool, now: Instant) -> (u64, oneshot::Receiver<Grant>) {
        self.next_waiter_id += 1;
        let (tx, grant) = oneshot::channel();
        self.queue.push_back(Waiter { id: self.next_waiter_id, count, conn, detached, queued_at: now, tx });
        (self.next_waiter_id, grant)
    }

    /// Serves queued requests, front first, while enough slots are free —
    /// all of them with one choice and one update of the table, however
    /// many there are: under load the requests of a whole batch (see
    /// [`Tracker::apply`]) share the column passes.
    ///
    /// One `choose` for the demand of the whole queue returns its best slots
    /// in rank order (every free slot, if fewer); the longest prefix of the
    /// queue whose counts fit takes them, front first, consecutive runs of
    /// the ranking. A request that does not fit stops the walk: nothing
    /// behind it is served (no barging). Slots of a grant whose requester
    /// already left go straight back, and the walk starts again.
    fn dispatch(&mut self, now: Instant, ttl: Duration, metrics: &TrackerMetrics) -> Result<()> {
        loop {
            if self.queue.is_empty() {
                return Ok(());
            }
            // The demand of the whole queue — or, when it is long, of the
            // part that could fit in the free slots: no more can be served.
            let cap = if self.queue.len() > LONG_QUEUE { self.table.free_slots()? as usize } else { usize::MAX };
            let mut demand = 0usize;
            for w in &self.queue {
                demand += w.count as usize;
                if demand > cap {
                    break;
                }
            }
            let ranked = self.table.choose(demand)?;
            let (mut served, mut taken) = (0, 0);
            for w in &self.queue {
                if taken + w.count as usize > ranked.len() {
                    break;
                }
                taken += w.count as usize;
                served += 1;
            }
            if served == 0 {
                return Ok(());
            }
            let ranked = &ranked[..taken];
            self.table.take_slots(ranked)?;
            let mut abandoned = Vec::new();
            let mut rest = ranked;
            for waiter in self.queue.drain(..served) {
                let (mine, tail) = rest.split_at(waiter.count as usize);
                rest = tail;
                self.next_lease_id += 1;
                let lease_id = LeaseId(self.next_lease_id);
                let token = LeaseToken::generate();
                let owner = (!waiter.detached).then_some(waiter.conn);
                let record = LeaseRecord {
                    slots: mine.to_vec(),
                    owner,
                    holder: waiter.conn,
                    token: token.clone(),
                    granted_at: now,
                    expires_at: now + ttl,
                    reported: Vec::new(),
                    speed_recorded: false,
                    hedges: 0,
                    granted: waiter.count,
                    replaced: Vec::new(),
                };
                let lease = LeaseGrant {
                    lease_id,
                    peers: ticketed(&self.signer, lease_id, &record, mine),
                    ttl_ms: ttl.as_millis() as u64,
                    token: token.expose().to_string(),
                };
                let grant = Grant { lease, token };
                if waiter.tx.send(grant).is_ok() {
                    metrics.lease_granted(now.saturating_duration_since(waiter.queued_at));
                    self.leases.insert(lease_id, record);
                } else {
                    // The requester went away between queueing and now.
                    abandoned.extend(record.slots);
                }
            }
            if abandoned.is_empty() {
                return Ok(());
            }
            self.table.return_slots(&abandoned)?;
        }
    }
}

/// A request the tracker takes in batches: see [`Tracker::apply`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Lease `count` slots for connection `conn` (see [`Tracker::lease`]).
    Lease {
        /// Slots wanted.
        count: u32,
        /// The requesting connection.
        conn: ConnId,
        /// Whether the lease outlives the connection.
        detached: bool,
    },
    /// End a lease, unchecked: the trusted in-process path (see
    /// [`Tracker::release`]).
    Release {
        /// The lease to end.
        lease_id: LeaseId,
    },
    /// End a lease if `caller` holds it (see [`Tracker::release_by`]);
    /// otherwise refused with [`Error::NotYourLease`], changing nothing.
    ReleaseBy {
        /// The lease to end.
        lease_id: LeaseId,
        /// Who asks.
        caller: Caller,
    },
}

/// An op of a batch between queueing and the batch's dispatch.
enum Pending {
    /// A lease request in the queue.
    Lease { waiter_id: u64, grant: oneshot::Receiver<Grant> },
    /// Settled already (a release, or a refused request).
    Done(Result<Done>),
}

/// What an [`Op`] came to.
#[derive(Debug)]
pub enum Done {
    /// A lease request's outcome.
    Lease(LeaseOutcome),
    /// The lease ended; its slots are back in the pool.
    Released,
}

impl Done {
    /// The outcome of an [`Op::Lease`] (which never comes to `Released`).
    pub(crate) fn into_lease(self) -> LeaseOutcome {
        match self {
            Done::Lease(outcome) => outcome,
            Done::Released => unreachable!("a lease op yields a lease outcome"),
        }
    }
}

/// Cheap-to-clone handle on the tracker's state.
#[derive(Debug, Clone)]
pub struct Tracker {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    config: TrackerConfig,
    epoch: Instant,
    state: Mutex<State>,
    metrics: TrackerMetrics,
    federation: Arc<crate::federation::Federation>,
}

/// A read-only view of the tracker for the status page: see
/// [`Tracker::snapshot`].
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// When it was taken, in ms since the tracker started (the clock of the
    /// peer rows' `joined_at` and `last_seen`).
    pub now_ms: u64,
    /// The gauges' levels.
    pub levels: Levels,
    /// The counters' totals (the lease counters agree with the levels:
    /// both move under the state's lock).
    pub totals: crate::metrics::Totals,
    /// Peer rows, by id, at most the requested number.
    pub peers: Vec<PeerRow>,
    /// Rows in the peer table.
    pub peers_total: usize,
    /// The queue, front first, at most the requested number.
    pub queue: Vec<QueueEntry>,
    /// Requests in the queue.
    pub queue_total: usize,
    /// Leases in force, oldest first, at most the requested number.
    pub leases: Vec<LeaseEntry>,
    /// Leases in force.
    pub leases_total: usize,
}

/// A lease request waiting in the queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueEntry {
    /// 1-based place in the queue.
    pub position: u32,
    /// Slots it asks for.
    pub count: u32,
    /// The requesting connection's address (`None` for the in-process caller).
    pub from: Option<SocketAddr>,
    /// How long it has waited.
    pub waited: Duration,
}

/// A lease in force, without its token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseEntry {
    /// The lease.
    pub lease_id: LeaseId,
    /// Slots it holds (replacement and hedge slots included).
    pub slots: u32,
    /// The address of the connection that took it, while that connection
    /// is open (`None` once it closed — a detached lease outlives it — and
    /// for the in-process caller).
    pub holder: Option<SocketAddr>,
    /// Whether it outlives its connection.
    pub detached: bool,
    /// Time since it was granted.
    pub age: Duration,
    /// Time until it expires unless renewed.
    pub ttl_left: Duration,
}

/// Counts for logs and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stats {
    /// Free slots on alive peers.
    pub free: u32,
    /// Live leases.
    pub leases: usize,
    /// Requests waiting.
    pub waiting: usize,
}

impl Tracker {
    /// A tracker with an empty peer table.
    ///
    /// # Errors
    /// [`Error::Config`] if the configuration is invalid.
    pub fn new(config: TrackerConfig) -> Result<Self> {
        config.validate()?;
        let epoch = Instant::now();
        let state = State {
            signer: TicketSigner::generate(epoch.into_std()),
            table: PeerTable::new(),
            leases: HashMap::new(),
            queue: VecDeque::new(),
            next_lease_id: 0,
            next_waiter_id: 0,
            peer_owner: HashMap::new(),
            conn_addrs: HashMap::new(),
        };
        let metrics = TrackerMetrics::new();
        let federation = Arc::new(crate::federation::Federation::new(&config.cluster, &config.siblings));
        Ok(Self { inner: Arc::new(Inner { config, epoch, state: Mutex::new(state), metrics, federation }) })
    }

    /// The configuration.
    pub fn config(&self) -> &TrackerConfig {
        &self.inner.config
    }

    /// The federation: sibling trackers and leases that borrow from them.
    pub fn federation(&self) -> &Arc<crate::federation::Federation> {
        &self.inner.federation
    }

    /// The tracker's metrics (counters move as things happen; call
    /// [`Tracker::levels`] and [`TrackerMetrics::set_levels`] before encoding).
    pub fn metrics(&self) -> &TrackerMetrics {
        &self.inner.metrics
    }

    /// Connection `conn` opened from `addr`: leases it takes show that
    /// address as their holder on the status page, until it closes
    /// ([`Tracker::disconnect`]).
    pub fn connected(&self, conn: ConnId, addr: SocketAddr) {
        self.inner.state.lock().conn_addrs.insert(conn, addr);
    }

    fn now_ms(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.inner.epoch).as_millis() as u64
    }

    /// The tracker's clock now (ms since it started): what lease tickets
    /// expire by, told to workers in every registration and heartbeat reply.
    pub fn clock_ms(&self) -> u64 {
        self.now_ms(Instant::now())
    }

    /// The public key lease tickets are signed with, told to workers when they register.
    pub fn ticket_key(&self) -> Vec<u8> {
        self.inner.state.lock().signer.public_key().to_vec()
    }

    /// Runs `f` on the locked state, then serves the queue: every path that
    /// can free slots goes through here or through [`Tracker::apply`].
    fn mutate<T>(&self, f: impl FnOnce(&mut State, Instant) -> Result<T>) -> Result<T> {
        let now = Instant::now();
        let mut state = self.inner.state.lock();
        let out = f(&mut state, now)?;
        state.dispatch(now, self.inner.config.lease_ttl, &self.inner.metrics)?;
        Ok(out)
    }

    /// Adds or revives a worker for the in-process caller; returns its peer
    /// id. See [`Tracker::register_by`].
    ///
    /// # Errors
    /// As [`Tracker::register_by`].
    pub fn register(&self, addr: &str, slots: u32) -> Result<PeerId> {
        self.register_by(addr, slots, IN_PROCESS)
    }

    /// Adds a worker registered on connection `conn`, or — when one
    /// registered from the same address before — takes its row over: same
    /// peer id, the new slot count, alive again, and owned by `conn` from
    /// now on (the old connection may no longer heartbeat or deregister it).
    ///
    /// Leases that hold slots on the old row keep them: the slots stay
    /// counted in `in_use` until those leases are released, expire or
    /// replace the peer after a failure report, so no slot is ever leased
    /// twice (a worker that merely reconnected is still running those
    /// tasks). For the same reason a worker may not come back with fewer
    /// slots than its row still has in use: that registration is refused
    /// until enough are returned (the agent retries on its own).
    ///
    /// # Errors
    /// [`Error::Invalid`] for zero or too many slots, a full table (see
    /// [`TrackerConfig::max_peers`]), or fewer slots than still in use.
    pub fn register_by(&self, addr: &str, slots: u32, conn: ConnId) -> Result<PeerId> {
        let config = &self.inner.config;
        if slots == 0 || slots > config.max_slots_per_peer {
            return Err(Error::Invalid(format!(
                "a worker must offer between 1 and {} slots, not {slots}",
                config.max_slots_per_peer
            )));
        }
        self.mutate(|s, now| {
            match s.table.find(addr)? {
                Some(peer_id) => {
                    let in_use = s.table.usage_of(peer_id)?.1;
                    if slots < in_use {
                        return Err(Error::Invalid(format!(
                            "the worker at {addr} still has {in_use} slots held by live leases; register with at \
                             least {in_use} slots, or with {slots} once they are released (within the lease TTL)"
                        )));
                    }
                }
                None if s.table.len() >= config.max_peers => {
                    // A full table: the row of a peer long gone, if any.
                    let forget = config.forget_gone.max(2 * config.lease_ttl);
                    let gone_before = self.now_ms(now).saturating_sub(forget.as_millis() as u64);
                    if let Some(row) = s.table.recycle(addr, slots, self.now_ms(now), gone_before)? {
                        let peer_id = PeerId(row);
                        tracing::info!(%peer_id, addr, "the peer table is full; a new worker takes the row of a peer long gone");
                        s.peer_owner.insert(peer_id, conn);
                        return Ok(peer_id);
                    }
                    return Err(Error::Invalid(format!(
                        "the tracker's peer table is full ({} peers, its --max-peers, none gone for {:?}); no new \
                         worker can join",
                        config.max_peers, forget
                    )));
                }
                None => {}
            }
            let peer_id = PeerId(s.table.register(addr, slots, self.now_ms(now))?);
            s.peer_owner.insert(peer_id, conn);
            Ok(peer_id)
        })
    }

    /// Records the memory a registered peer offers its tasks (MiB, all
    /// slots together; 0: not said), shown by `peers` and read by
    /// requesters that place work by size.
    ///
    /// # Errors
    /// Only table errors (a bug).
    pub fn set_memory(&self, peer_id: PeerId, memory_mib: u64) -> Result<()> {
        self.mutate(|s, _| Ok(s.table.set_memory(peer_id.0, memory_mib)?))
    }

    fn live_peer(state: &State, peer_id: PeerId) -> Result<()> {
        match state.table.state(peer_id.0)? {
            None => Err(Error::UnknownPeer(peer_id)),
            Some(PeerState::Gone) => Err(Error::PeerGone(peer_id)),
            Some(_) => Ok(()),
        }
    }

    /// Records a heartbeat; a suspect peer becomes alive again.
    ///
    /// # Errors
    /// [`Error::UnknownPeer`], or [`Error::PeerGone`] when it must register again.
    pub fn heartbeat(&self, peer_id: PeerId) -> Result<()> {
        self.mutate(|s, now| {
            Self::live_peer(s, peer_id)?;
            Ok(s.table.heartbeat(peer_id.0, self.now_ms(now))?)
        })
    }

    /// [`Tracker::heartbeat`] from connection `conn`, which must be the one
    /// that registered the peer.
    ///
    /// # Errors
    /// [`Error::UnknownPeer`], [`Error::NotYourPeer`] (nothing changes), or
    /// [`Error::PeerGone`].
    pub fn heartbeat_by(&self, peer_id: PeerId, conn: ConnId) -> Result<()> {
        self.mutate(|s, now| {
            s.authorize_peer(peer_id, conn)?;
            Self::live_peer(s, peer_id)?;
            Ok(s.table.heartbeat(peer_id.0, self.now_ms(now))?)
        })
    }

    /// Marks a worker gone at its own request.
    ///
    /// # Errors
    /// [`Error::UnknownPeer`].
    pub fn deregister(&self, peer_id: PeerId) -> Result<()> {
        self.mutate(|s, _| {
            if s.table.state(peer_id.0)?.is_none() {
                return Err(Error::UnknownPeer(peer_id));
            }
            Ok(s.table.set_state(peer_id.0, PeerState::Gone)?)
        })
    }

    /// [`Tracker::deregister`] from connection `conn`, which must be the
    /// one that registered the peer.
    ///
    /// # Errors
    /// [`Error::UnknownPeer`] or [`Error::NotYourPeer`] (nothing changes).
    pub fn deregister_by(&self, peer_id: PeerId, conn: ConnId) -> Result<()> {
        self.mutate(|s, _| {
            s.authorize_peer(peer_id, conn)?;
            Ok(s.table.set_state(peer_id.0, PeerState::Gone)?)
        })
    }

    /// Asks for `count` slots for connection `conn`. A detached lease is not
    /// ended by the connection closing (a queued request still is).
    ///
    /// # Errors
    /// [`Error::Invalid`] for a zero or oversized count.
    pub fn lease(&self, count: u32, conn: ConnId, detached: bool) -> Result<LeaseOutcome> {
        self.apply_one(Op::Lease { count, conn, detached }).map(Done::into_lease)
    }

    /// Ends a lease and returns its slots to the pool.
    ///
    /// # Errors
    /// [`Error::UnknownLease`] if it already ended.
    pub fn release(&self, lease_id: LeaseId) -> Result<()> {
        self.apply_one(Op::Release { lease_id }).map(|_| ())
    }

    /// Ends a lease if `caller` holds it (see `State::authorize`).
    ///
    /// # Errors
    /// [`Error::NotYourLease`] (nothing changes) for an ended, unknown or
    /// someone else's lease.
    pub fn release_by(&self, lease_id: LeaseId, caller: Caller) -> Result<()> {
        self.apply_one(Op::ReleaseBy { lease_id, caller }).map(|_| ())
    }

    fn apply_one(&self, op: Op) -> Result<Done> {
        self.apply(std::iter::once(op)).pop().expect("one result per op")
    }

    /// Applies a batch of lease and release requests under one lock, with
    /// one update of the table for all the releases and one choice and one
    /// update for all the grants: the same outcome as applying them one by
    /// one in this order, except that a request may be granted at once
    /// where one by one it would have queued briefly (a release later in
    /// the batch frees its slots before any grant is made), and that the
    /// batch's slots are ranked once, so `leases_total` grown by one grant
    /// does not reorder the peers for the next. Leases are still granted
    /// strictly in arrival order. Returns one result per op, in order.
    ///
    /// The server feeds this with every request that arrives while the
    /// previous batch is being applied, so the tracker's work per request
    /// falls as load rises instead of queueing up.
    pub fn apply(&self, ops: impl IntoIterator<Item = Op>) -> Vec<Result<Done>> {
        let ttl = self.inner.config.lease_ttl;
        let max = self.inner.config.max_lease_count;
        let metrics = &self.inner.metrics;
        let now = Instant::now();
        let mut state = self.inner.state.lock();
        let s = &mut *state;
        // Waiters with ids from here on joined in this batch (the queue stays
        // in id order: it only grows at the back).
        let first_new = s.next_waiter_id + 1;
        let mut returned = Vec::new();
        // Releases gather their slots; leases join the queue, to be served by
        // the one dispatch below (or to wait).
        let pending: Vec<Pending> = ops
            .into_iter()
            .map(|op| match op {
                Op::Lease { count, .. } if count == 0 || count > max => {
                    Pending::Done(Err(Error::Invalid(format!("a lease takes between 1 and {max} slots, not {count}"))))
                }
                Op::Lease { count, conn, detached } => {
                    let (waiter_id, grant) = s.enqueue(count, conn, detached, now);
                    Pending::Lease { waiter_id, grant }
                }
                Op::Release { lease_id } => Pending::Done(s.end_lease(lease_id).map(|slots| {
                    metrics.lease_released();
                    returned.extend(slots);
                    Done::Released
                })),
                Op::ReleaseBy { lease_id, caller } => {
                    Pending::Done(s.authorize(lease_id, &caller).and_then(|()| s.end_lease(lease_id)).map(|slots| {
                        metrics.lease_released();
                        returned.extend(slots);
                        Done::Released
                    }))
                }
            })
            .collect();
        // A polars failure below is a bug, not bad input; it is reported to
        // exactly the requests it touched.
        let returned = s.table.return_slots(&returned).map_err(|e| e.to_string());
        let dispatched = match &returned {
            Ok(()) => s.dispatch(now, ttl, metrics).map_err(|e| e.to_string()),
            Err(e) => Err(e.clone()),
        };
        if let Err(e) = &dispatched {
            tracing::error!(error = %e, "applying a batch of lease requests failed");
            // Grants already made stand (they are recorded); the rest of the
            // batch's leases leave the queue and are refused.
            s.queue.retain(|w| w.id < first_new);
        }
        let failed = |e: &String| Error::Internal(e.clone());
        let free = if s.queue.is_empty() { 0 } else { s.table.free_slots().unwrap_or(0) };
        let (len, last) = (s.queue.len() as u64, s.next_waiter_id);
        pending
            .into_iter()
            .map(|p| match p {
                Pending::Done(Ok(Done::Released)) if returned.is_err() => Err(failed(returned.as_ref().unwrap_err())),
                Pending::Done(done) => done,
                Pending::Lease { waiter_id, mut grant } => match (grant.try_recv(), &dispatched) {
                    (Ok(g), _) => Ok(Done::Lease(LeaseOutcome::Granted(g))),
                    (Err(_), Err(e)) => Err(failed(e)),
                    // The batch's waiters still queued are the queue's tail, in
                    // id order with consecutive ids ending at `last`.
                    (Err(_), Ok(())) => {
                        let position = len.saturating_sub(last - waiter_id) as u32;
                        Ok(Done::Lease(LeaseOutcome::Queued(Ticket { waiter_id, position, free, grant })))
                    }
                },
            })
            .collect()
    }

    /// Takes a queued request out of the queue (the requester gave up).
    pub fn cancel_wait(&self, waiter_id: u64) {
        let _ = self.mutate(|s, _| {
            s.queue.retain(|w| w.id != waiter_id);
            Ok(())
        });
    }

    /// Extends a lease to a full TTL from now; returns the TTL.
    ///
    /// # Errors
    /// [`Error::UnknownLease`].
    pub fn renew(&self, lease_id: LeaseId) -> Result<(Duration, Vec<PeerAddr>)> {
        self.renew_as(lease_id, None)
    }

    /// Renews, checking `caller` first when there is one; returns the new
    /// TTL and the lease's slots with fresh tickets.
    fn renew_as(&self, lease_id: LeaseId, caller: Option<&Caller>) -> Result<(Duration, Vec<PeerAddr>)> {
        let ttl = self.inner.config.lease_ttl;
        self.mutate(|s, now| {
            if let Some(caller) = caller {
                s.authorize(lease_id, caller)?;
            }
            let lease = s.leases.get_mut(&lease_id).ok_or(Error::UnknownLease(lease_id))?;
            lease.expires_at = now + ttl;
            let lease = &*lease;
            Ok((ttl, ticketed(&s.signer, lease_id, lease, &lease.slots)))
        })
    }

    /// [`Tracker::renew`] if `caller` holds the lease.
    ///
    /// # Errors
    /// [`Error::NotYourLease`] (nothing changes).
    pub fn renew_by(&self, lease_id: LeaseId, caller: &Caller) -> Result<(Duration, Vec<PeerAddr>)> {
        self.renew_as(lease_id, Some(caller))
    }

    /// [`Tracker::report_failure`] if `caller` holds the lease.
    ///
    /// # Errors
    /// [`Error::NotYourLease`] (nothing changes), or as `report_failure`.
    pub fn report_failure_by(
        &self,
        lease_id: LeaseId,
        peer_id: PeerId,
        replace: bool,
        caller: &Caller,
    ) -> Result<Option<PeerAddr>> {
        self.report_failure_as(lease_id, peer_id, replace, Some(caller))
    }

    /// Records that a leased peer failed: its `failures` count goes up (once
    /// per lease) and it is suspect (not leased again until it heartbeats
    /// healthily). With `replace`, one more slot joins the lease at once if
    /// one is free; asking again later polls for one. A lease gets at most
    /// one replacement per slot it holds on the reported peer, and at most
    /// as many in all as it was granted slots (`None` past either).
    ///
    /// A replacement does not queue behind waiting requests: it finishes a
    /// job that already holds its other six slots, which frees them sooner.
    ///
    /// # Errors
    /// [`Error::UnknownLease`] or [`Error::NotInLease`].
    pub fn report_failure(&self, lease_id: LeaseId, peer_id: PeerId, replace: bool) -> Result<Option<PeerAddr>> {
        self.report_failure_as(lease_id, peer_id, replace, None)
    }

    /// Records a failure, checking `caller` first when there is one.
    fn report_failure_as(
        &self,
        lease_id: LeaseId,
        peer_id: PeerId,
        replace: bool,
        caller: Option<&Caller>,
    ) -> Result<Option<PeerAddr>> {
        self.mutate(|s, _| {
            if let Some(caller) = caller {
                s.authorize(lease_id, caller)?;
            }
            let lease = lease_holding(&mut s.leases, lease_id, peer_id)?;
            if !lease.reported.contains(&peer_id) {
                s.table.record_failure(peer_id.0)?;
                self.inner.metrics.failure_reported();
                lease.reported.push(peer_id);
            }
            if !replace || !lease.may_replace(peer_id) {
                return Ok(None);
            }
            let slot = lend_slot(&mut s.table, &s.signer, lease_id, lease, None)?;
            if slot.is_some() {
                lease.note_replaced(peer_id);
            }
            Ok(slot)
        })
    }

    /// The address of peer `peer_id` of lease `lease_id`, held by `caller`
    /// (to broker a link to it).
    ///
    /// # Errors
    /// [`Error::NotYourLease`] unless `caller` holds the lease,
    /// [`Error::NotInLease`] if `peer_id` is not in it.
    pub fn leased_peer(&self, lease_id: LeaseId, peer_id: PeerId, caller: &Caller) -> Result<String> {
        let state = self.inner.state.lock();
        state.authorize(lease_id, caller)?;
        let lease = state.leases.get(&lease_id).ok_or(Error::UnknownLease(lease_id))?;
        let slot = lease.slots.iter().find(|p| p.peer_id == peer_id);
        slot.map(|p| p.addr.clone()).ok_or(Error::NotInLease { lease_id, peer_id })
    }

    /// Lends the lease one more slot, not on `peer_id` (a leased peer whose
    /// product lags), to compute a copy of that product: a hedge. The slow
    /// peer is not blamed. `None` when no such slot is free now. Like a
    /// replacement, a hedge does not queue behind waiting requests.
    ///
    /// # Errors
    /// [`Error::NotYourLease`] unless `caller` holds the lease,
    /// [`Error::NotInLease`] if `peer_id` is not in it.
    pub fn hedge_by(&self, lease_id: LeaseId, peer_id: PeerId, caller: &Caller) -> Result<Option<PeerAddr>> {
        self.mutate(|s, _| {
            s.authorize(lease_id, caller)?;
            let lease = lease_holding(&mut s.leases, lease_id, peer_id)?;
            let slot = if lease.hedges < MAX_HEDGES_PER_LEASE {
                lend_slot(&mut s.table, &s.signer, lease_id, lease, Some(peer_id.0))?
            } else {
                None
            };
            lease.hedges += u32::from(slot.is_some());
            self.inner.metrics.hedge(slot.is_some());
            Ok(slot)
        })
    }

    /// Records how a lease's peers did against hedges (see
    /// [`PeerTable::record_speed`]): each peer counts at most once per list,
    /// and a lease reports once.
    ///
    /// # Errors
    /// [`Error::NotYourLease`] unless `caller` holds the lease,
    /// [`Error::NotInLease`] for a peer not in it, [`Error::Invalid`] if the
    /// lease already reported; nothing changes then.
    pub fn record_speed_by(
        &self,
        lease_id: LeaseId,
        beaten: &[PeerId],
        proven: &[PeerId],
        caller: &Caller,
    ) -> Result<()> {
        self.mutate(|s, _| {
            s.authorize(lease_id, caller)?;
            let lease = s.leases.get_mut(&lease_id).ok_or(Error::UnknownLease(lease_id))?;
            if lease.speed_recorded {
                return Err(Error::Invalid(format!("lease {lease_id} already reported its peers' speed")));
            }
            let mut lists = [Vec::new(), Vec::new()];
            for (list, ids) in lists.iter_mut().zip([beaten, proven]) {
                for &peer_id in ids {
                    let slot = lease
                        .slots
                        .iter()
                        .find(|p| p.peer_id == peer_id)
                        .ok_or(Error::NotInLease { lease_id, peer_id })?;
                    if !list.iter().any(|p: &PeerAddr| p.peer_id == peer_id) {
                        list.push(slot.clone());
                    }
                }
            }
            lease.speed_recorded = true;
            let [beaten, proven] = lists;
            s.table.record_speed(&beaten, &proven)?;
            Ok(())
        })
    }

    /// A connection closed: its queued requests leave the queue and its
    /// attached leases end. Returns how many leases ended.
    pub fn disconnect(&self, conn: ConnId) -> usize {
        self.mutate(|s, _| {
            s.conn_addrs.remove(&conn);
            s.queue.retain(|w| w.conn != conn);
            let owned: Vec<LeaseId> =
                s.leases.iter().filter(|(_, l)| l.owner == Some(conn)).map(|(id, _)| *id).collect();
            for id in &owned {
                s.end_lease_now(*id)?;
                self.inner.metrics.leases_dropped(1);
            }
            Ok(owned.len())
        })
        .unwrap_or_else(|e| {
            tracing::error!(error = %e, conn, "cleaning up a closed connection failed");
            0
        })
    }

    /// Ends expired leases and marks silent peers suspect or gone.
    ///
    /// # Errors
    /// Only peer-table errors.
    pub fn sweep(&self) -> Result<()> {
        let config = &self.inner.config;
        let gone_after = (config.heartbeat_timeout + config.sweep_period()).as_millis() as u64;
        let suspect_after = (config.heartbeat_timeout / 2).as_millis() as u64;
        self.mutate(|s, now| {
            let expired: Vec<LeaseId> =
                s.leases.iter().filter(|(_, l)| l.expires_at <= now).map(|(id, _)| *id).collect();
            for id in expired {
                tracing::info!(lease_id = %id, "lease expired unrenewed; its slots return to the pool");
                s.end_lease_now(id)?;
                self.inner.metrics.leases_expired(1);
            }
            for peer_id in s.table.sweep(self.now_ms(now), suspect_after, gone_after)? {
                tracing::warn!(peer_id, "peer missed its heartbeats; marked gone");
            }
            Ok(())
        })
    }

    /// The peer table as polars prints it, and its rows.
    ///
    /// # Errors
    /// Only peer-table errors.
    pub fn peers(&self) -> Result<(String, Vec<PeerRow>)> {
        let mut rows = self.inner.state.lock().table.rows()?;
        for row in &mut rows {
            row.cluster.clone_from(&self.inner.config.cluster);
        }
        Ok((crate::table::render(&rows)?, rows))
    }

    /// The levels the tracker's gauges show: peers by state, slots, the
    /// queue, leases in force. One short hold of the lock, a few column
    /// passes over the table; meant for scrapes, not for the lease path.
    ///
    /// # Errors
    /// Only peer-table errors.
    pub fn levels(&self) -> Result<Levels> {
        let state = self.inner.state.lock();
        Self::levels_of(&state)
    }

    /// Sets the metrics' gauges from the state and runs `f` on the metrics,
    /// all under the state's lock: the lease counters, which move under the
    /// same lock, agree with the gauges in whatever `f` encodes (a scrape
    /// never shows a lease granted but not yet in force). Meant for
    /// scrapes: it holds the lock for the encoding.
    ///
    /// # Errors
    /// Only peer-table errors.
    pub fn with_metrics<T>(&self, f: impl FnOnce(&TrackerMetrics) -> T) -> Result<T> {
        let state = self.inner.state.lock();
        self.inner.metrics.set_levels(&Self::levels_of(&state)?);
        Ok(f(&self.inner.metrics))
    }

    fn levels_of(state: &State) -> Result<Levels> {
        let summary = state.table.summary()?;
        Ok(Levels {
            peers: summary.peers,
            on_probation: summary.on_probation,
            slots: summary.slots,
            slots_in_use: summary.slots_in_use,
            slots_free: u64::from(state.table.free_slots()?),
            queue_length: state.queue.len() as u64,
            queue_slots: state.queue.iter().map(|w| u64::from(w.count)).sum(),
            leases: state.leases.len() as u64,
        })
    }

    /// What the status page shows, read in one hold of the lock: the
    /// levels, the peer table's rows, the queue and the leases in force —
    /// each list cut at `max_rows` (peers by id, the queue front first,
    /// leases oldest first), with its full length beside it. It carries no
    /// lease token: [`QueueEntry`] and [`LeaseEntry`] have no field for one.
    ///
    /// # Errors
    /// Only peer-table errors.
    pub fn snapshot(&self, max_rows: usize) -> Result<Snapshot> {
        let now = Instant::now();
        let state = self.inner.state.lock();
        let levels = Self::levels_of(&state)?;
        let mut peers = state.table.rows()?;
        let peers_total = peers.len();
        peers.truncate(max_rows);
        let addr_of = |conn: ConnId| state.conn_addrs.get(&conn).copied();
        let queue = state
            .queue
            .iter()
            .take(max_rows)
            .enumerate()
            .map(|(i, w)| QueueEntry {
                position: i as u32 + 1,
                count: w.count,
                from: addr_of(w.conn),
                waited: now.saturating_duration_since(w.queued_at),
            })
            .collect();
        let mut ids: Vec<LeaseId> = state.leases.keys().copied().collect();
        ids.sort_unstable();
        let leases = ids
            .iter()
            .take(max_rows)
            .filter_map(|id| state.leases.get(id).map(|l| (id, l)))
            .map(|(&lease_id, l)| LeaseEntry {
                lease_id,
                slots: l.slots.len() as u32,
                holder: addr_of(l.holder),
                detached: l.owner.is_none(),
                age: now.saturating_duration_since(l.granted_at),
                ttl_left: l.expires_at.saturating_duration_since(now),
            })
            .collect();
        Ok(Snapshot {
            now_ms: self.now_ms(now),
            levels,
            totals: self.inner.metrics.totals(),
            peers,
            peers_total,
            queue,
            queue_total: state.queue.len(),
            leases,
            leases_total: state.leases.len(),
        })
    }

    /// Free slots, live leases and waiting requests.
    ///
    /// # Errors
    /// Only peer-table errors.
    pub fn stats(&self) -> Result<Stats> {
        let state = self.inner.state.lock();
        Ok(Stats { free: state.table.free_slots()?, leases: state.leases.len(), waiting: state.queue.len() })
    }

    /// Checks the lease invariants; returns a description of the first violation.
    ///
    /// - each peer's `in_use` equals the slots live leases hold on it;
    /// - no peer has more slots held than it offers (no slot is in two leases);
    /// - the queue is not stuck: its front asks for more than is free.
    ///
    /// # Errors
    /// A message describing the violation.
    pub fn check_invariants(&self) -> std::result::Result<(), String> {
        let state = self.inner.state.lock();
        let usage = state.table.usage().map_err(|e| e.to_string())?;
        let mut held = vec![0u32; usage.len()];
        for lease in state.leases.values() {
            for slot in &lease.slots {
                *held.get_mut(slot.peer_id.0 as usize).ok_or("lease holds an unknown peer")? += 1;
            }
        }
        for (peer, ((slots, in_use), held)) in usage.iter().zip(&held).enumerate() {
            if in_use != held {
                return Err(format!("peer {peer}: in_use is {in_use} but live leases hold {held}"));
            }
            if held > slots {
                return Err(format!("peer {peer}: {held} slots held but only {slots} exist"));
            }
        }
        let free = state.table.free_slots().map_err(|e| e.to_string())?;
        if let Some(front) = state.queue.front() {
            if front.count <= free {
                return Err(format!("queue stuck: front wants {} and {free} are free", front.count));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tracker() -> Tracker {
        Tracker::new(TrackerConfig { lease_ttl: Duration::from_secs(10), ..Default::default() }).unwrap()
    }

    /// A tracker with `workers` peers "w0", "w1", … of `slots` slots each.
    fn tracker_with(workers: usize, slots: u32) -> Tracker {
        let t = tracker();
        for i in 0..workers {
            t.register(&format!("w{i}"), slots).unwrap();
        }
        t
    }

    fn granted(outcome: LeaseOutcome) -> Grant {
        match outcome {
            LeaseOutcome::Granted(g) => g,
            LeaseOutcome::Queued(t) => panic!("expected a grant, queued at {}", t.position),
        }
    }

    fn queued(outcome: LeaseOutcome) -> Ticket {
        match outcome {
            LeaseOutcome::Queued(t) => t,
            LeaseOutcome::Granted(g) => panic!("expected to queue, got lease {}", g.lease_id),
        }
    }

    #[tokio::test]
    async fn queued_requests_are_served_in_arrival_order_without_barging() {
        let t = tracker_with(7, 1);
        let first = granted(t.lease(7, 1, false).unwrap());
        let mut a = queued(t.lease(7, 2, false).unwrap());
        let mut b = queued(t.lease(2, 3, false).unwrap());
        assert_eq!((a.position, b.position), (1, 2));
        // A late small request may not overtake the queue even if it would fit.
        t.register("extra", 2).unwrap();
        let mut c = queued(t.lease(1, 4, false).unwrap());
        assert_eq!(c.position, 3);
        assert!(a.grant.try_recv().is_err());
        t.check_invariants().unwrap();
        t.release(first.lease_id).unwrap();
        let ga = a.grant.try_recv().expect("a is served first");
        let gb = b.grant.try_recv().expect("b fits in the two extra slots");
        assert!(c.grant.try_recv().is_err(), "nothing left for c");
        assert!(matches!(t.release(first.lease_id), Err(Error::UnknownLease(_))), "exactly once");
        t.check_invariants().unwrap();
        t.release(gb.lease_id).unwrap();
        assert_eq!(c.grant.try_recv().unwrap().peers.len(), 1);
        t.release(ga.lease_id).unwrap();
        t.check_invariants().unwrap();
        assert_eq!(t.stats().unwrap(), Stats { free: 8, leases: 1, waiting: 0 });
    }

    #[tokio::test]
    async fn a_batch_returns_its_releases_first_then_grants_in_arrival_order_without_barging() {
        let t = tracker_with(8, 1);
        let held = granted(t.lease(7, 1, false).unwrap());
        let out = t.apply([
            Op::Lease { count: 3, conn: 2, detached: false },
            Op::Release { lease_id: held.lease_id },
            Op::Lease { count: 2, conn: 3, detached: true },
            Op::Lease { count: 9, conn: 4, detached: false },
            Op::Lease { count: 1, conn: 5, detached: false },
            Op::Lease { count: 0, conn: 6, detached: false },
            Op::Release { lease_id: held.lease_id },
        ]);
        let mut out = out.into_iter();
        let lease = |done: Option<Result<Done>>| done.unwrap().unwrap().into_lease();
        // The release later in the batch freed all eight slots before any grant.
        let a = granted(lease(out.next()));
        let released = out.next().unwrap();
        assert!(matches!(released, Ok(Done::Released)));
        let b = granted(lease(out.next()));
        let mut peers: Vec<PeerId> = a.peers.iter().chain(&b.peers).map(|p| p.peer_id).collect();
        peers.sort_unstable();
        peers.dedup();
        assert_eq!((a.peers.len(), b.peers.len(), peers.len()), (3, 2, 5), "no slot in two leases");
        // Nine do not fit in the three left; the one behind them may not barge.
        let nine = queued(lease(out.next()));
        let one = queued(lease(out.next()));
        assert_eq!((nine.position, nine.free, one.position, one.free), (1, 3, 2, 3));
        assert!(matches!(out.next().unwrap(), Err(Error::Invalid(_))));
        assert!(matches!(out.next().unwrap(), Err(Error::UnknownLease(_))), "a release counts once");
        assert!(out.next().is_none());
        t.check_invariants().unwrap();
        assert_eq!(t.stats().unwrap(), Stats { free: 3, leases: 2, waiting: 2 });
        // Releasing both in one batch frees eight slots: still too few for
        // the nine at the front, so nothing is served yet.
        let out = t.apply([Op::Release { lease_id: a.lease_id }, Op::Release { lease_id: b.lease_id }]);
        assert!(out.iter().all(|d| matches!(d, Ok(Done::Released))));
        let (mut nine, mut one) = (nine.grant, one.grant);
        assert!(nine.try_recv().is_err(), "nine do not fit in eight");
        assert!(one.try_recv().is_err(), "one waits behind nine");
        t.register("w8", 1).unwrap();
        assert_eq!(nine.try_recv().unwrap().peers.len(), 9);
        assert!(one.try_recv().is_err(), "nothing left");
        t.check_invariants().unwrap();
    }

    #[tokio::test]
    async fn a_long_queue_is_served_in_order_as_slots_free() {
        let t = tracker_with(7, 1);
        let held = granted(t.lease(7, 1, false).unwrap());
        // More waiters than LONG_QUEUE, one batch of them and then one by one.
        let batch = t.apply((0..50).map(|i| Op::Lease { count: 1, conn: 100 + i, detached: false }));
        let mut tickets: Vec<Ticket> = batch.into_iter().map(|d| queued(d.unwrap().into_lease())).collect();
        tickets.extend((50..100).map(|i| queued(t.lease(1, 100 + i, false).unwrap())));
        let positions: Vec<u32> = tickets.iter().map(|t| t.position).collect();
        assert_eq!(positions, (1..=100).collect::<Vec<u32>>());
        t.release(held.lease_id).unwrap();
        for (i, ticket) in tickets.iter_mut().enumerate() {
            assert_eq!(ticket.grant.try_recv().is_ok(), i < 7, "waiter {i}");
        }
        assert_eq!(t.stats().unwrap(), Stats { free: 0, leases: 7, waiting: 93 });
        t.check_invariants().unwrap();
    }

    /// Distinct peers of `grants`, and how many slots they hold in all.
    fn distinct_peers<'a>(grants: impl IntoIterator<Item = &'a LeaseGrant>) -> (usize, usize) {
        let mut peers: Vec<PeerId> = grants.into_iter().flat_map(|g| g.peers.iter().map(|p| p.peer_id)).collect();
        let slots = peers.len();
        peers.sort_unstable();
        peers.dedup();
        (peers.len(), slots)
    }

    #[tokio::test]
    async fn a_large_request_at_the_front_is_never_overtaken_by_later_small_ones() {
        // 56 one-slot peers, all held by eight leases of 7; a lease of 49
        // waits at the front, and leases of 7 keep coming (more than
        // LONG_QUEUE of them). Were a small request served whenever 7 slots
        // are free (barging), the 49 would wait as long as they keep coming.
        let t = tracker_with(56, 1);
        let mut holders: VecDeque<Grant> = (1..=8).map(|conn| granted(t.lease(7, conn, false).unwrap())).collect();
        let mut big = queued(t.lease(49, 9, false).unwrap());
        assert_eq!((big.position, big.free), (1, 0));
        let mut conns = 100..;
        let mut small: Vec<Ticket> =
            (0..70).map(|_| queued(t.lease(7, conns.next().unwrap(), false).unwrap())).collect();
        for (i, s) in small.iter().enumerate() {
            assert_eq!(s.position, i as u32 + 2, "behind the 49");
        }
        for released in 1..=7u32 {
            t.release(holders.pop_front().unwrap().lease_id).unwrap();
            let newcomer = queued(t.lease(7, conns.next().unwrap(), false).unwrap());
            if released < 7 {
                assert!(big.grant.try_recv().is_err(), "49 do not fit in {}", 7 * released);
                // It would fit in the free slots, yet queues behind everyone.
                assert_eq!((newcomer.position, newcomer.free), (small.len() as u32 + 2, 7 * released));
            } else {
                // The 49 took the slots freed: the newcomer is behind the small ones.
                assert_eq!((newcomer.position, newcomer.free), (small.len() as u32 + 1, 0));
            }
            for (i, s) in small.iter_mut().enumerate() {
                assert!(s.grant.try_recv().is_err(), "small request {i} overtook the 49 after {released} releases");
            }
            small.push(newcomer);
            t.check_invariants().unwrap();
        }
        let big = big.grant.try_recv().expect("the 49 are served once 49 slots are free");
        let last = holders.pop_front().unwrap();
        assert_eq!(distinct_peers([&big.lease, &last.lease]), (56, 56), "no slot in two leases");
        assert!(holders.is_empty() && last.lease_id < big.lease_id);
        assert_eq!(t.stats().unwrap(), Stats { free: 0, leases: 2, waiting: 77 });
        // Now the small ones, front first, as slots free: 7, then 49.
        t.release(last.lease_id).unwrap();
        t.release(big.lease_id).unwrap();
        let mut served = Vec::new();
        for (i, s) in small.iter_mut().enumerate() {
            match s.grant.try_recv() {
                Ok(g) => {
                    assert!(i < 8, "small request {i} served before those ahead of it");
                    served.push(g);
                }
                Err(_) => assert!(i >= 8, "small request {i} not served with {} slots free", 56 - 7 * i),
            }
        }
        let ids: Vec<LeaseId> = served.iter().map(|g| g.lease_id).collect();
        assert!(ids.windows(2).all(|w| w[0] < w[1]) && ids[0] > big.lease_id, "granted in queue order: {ids:?}");
        assert_eq!(distinct_peers(served.iter().map(|g| &g.lease)), (56, 56));
        assert_eq!(t.stats().unwrap(), Stats { free: 0, leases: 8, waiting: 69 });
        t.check_invariants().unwrap();
    }

    #[tokio::test]
    async fn disconnect_ends_attached_leases_and_queued_requests_but_not_detached_ones() {
        let t = tracker_with(4, 2);
        let attached = granted(t.lease(3, 1, false).unwrap());
        let detached = granted(t.lease(3, 1, true).unwrap());
        let waiting = queued(t.lease(3, 1, false).unwrap());
        let mut behind = queued(t.lease(2, 2, false).unwrap());
        assert_eq!(t.disconnect(1), 1);
        assert!(behind.grant.try_recv().is_ok(), "the queue moves once conn 1 leaves it");
        drop(waiting);
        assert!(matches!(t.release(attached.lease_id), Err(Error::UnknownLease(_))));
        t.release(detached.lease_id).unwrap();
        t.check_invariants().unwrap();
    }

    #[tokio::test]
    async fn a_grant_to_a_requester_that_left_goes_straight_back() {
        let t = tracker();
        t.register("w", 7).unwrap();
        let first = granted(t.lease(7, 1, false).unwrap());
        let gone = queued(t.lease(7, 2, false).unwrap());
        drop(gone.grant);
        t.release(first.lease_id).unwrap();
        assert_eq!(t.stats().unwrap(), Stats { free: 7, leases: 0, waiting: 0 });
        t.check_invariants().unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn leases_expire_once_unless_renewed() {
        let t = tracker_with(7, 1);
        let kept = granted(t.lease(3, 1, true).unwrap());
        let lost = granted(t.lease(4, 1, true).unwrap());
        tokio::time::advance(Duration::from_secs(6)).await;
        t.renew(kept.lease_id).unwrap();
        for i in 0..7 {
            t.heartbeat(PeerId(i)).unwrap();
        }
        tokio::time::advance(Duration::from_secs(5)).await;
        for i in 0..7 {
            t.heartbeat(PeerId(i)).unwrap();
        }
        t.sweep().unwrap();
        t.sweep().unwrap();
        assert!(matches!(t.release(lost.lease_id), Err(Error::UnknownLease(_))));
        assert_eq!(t.stats().unwrap().free, 4);
        t.check_invariants().unwrap();
        t.release(kept.lease_id).unwrap();
        assert_eq!(t.stats().unwrap().free, 7);
    }

    #[tokio::test(start_paused = true)]
    async fn silent_peers_leave_the_pool_and_return_only_by_registering() {
        let t = tracker_with(8, 1);
        let lease = granted(t.lease(7, 1, true).unwrap());
        for step in 0..8 {
            tokio::time::advance(Duration::from_secs(1)).await;
            for peer in 0..7 {
                t.heartbeat(PeerId(peer)).unwrap();
            }
            t.sweep().unwrap();
            t.check_invariants().unwrap();
            if step == 3 {
                assert_eq!(t.peers().unwrap().1[7].state, "suspect");
            }
        }
        let rows = t.peers().unwrap().1;
        assert_eq!(rows[7].state, "gone");
        assert!(matches!(t.heartbeat(PeerId(7)), Err(Error::PeerGone(PeerId(7)))));
        t.release(lease.lease_id).unwrap();
        assert_eq!(t.stats().unwrap().free, 7, "the gone peer's slot is not in the pool");
        assert_eq!(t.register("w7", 1).unwrap(), PeerId(7));
        assert_eq!(t.stats().unwrap().free, 8);
        t.check_invariants().unwrap();
    }

    #[tokio::test]
    async fn failures_mark_suspect_and_replacements_join_the_lease() {
        let t = tracker_with(8, 1);
        let lease = granted(t.lease(7, 1, false).unwrap());
        let bad = lease.peers[2].peer_id;
        let replacement = t.report_failure(lease.lease_id, bad, true).unwrap().expect("one slot is free");
        assert_eq!(replacement.peer_id, PeerId(7));
        assert!(t.report_failure(lease.lease_id, bad, true).unwrap().is_none(), "nothing left");
        let row = &t.peers().unwrap().1[bad.0 as usize];
        assert_eq!((row.failures, row.state.as_str()), (1, "suspect"), "counted once per lease");
        assert!(matches!(t.report_failure(lease.lease_id, PeerId(99), false), Err(Error::NotInLease { .. })));
        t.check_invariants().unwrap();
        t.release(lease.lease_id).unwrap();
        assert_eq!(t.stats().unwrap().free, 7, "suspect peer stays out of the pool");
        t.heartbeat(bad).unwrap();
        assert_eq!(t.stats().unwrap().free, 8);
    }

    #[tokio::test]
    async fn replacements_are_one_per_failed_slot_and_at_most_the_lease_size_in_all() {
        let t = tracker_with(40, 1);
        let lease = granted(t.lease(7, 1, false).unwrap());
        let first = lease.peers[0].peer_id;
        let mut reported = t.report_failure(lease.lease_id, first, true).unwrap().expect("slots are free");
        // Reporting the same one-slot peer again takes nothing more.
        for _ in 0..5 {
            assert!(t.report_failure(lease.lease_id, first, true).unwrap().is_none());
        }
        // Reporting each replacement in turn takes one more each, up to
        // seven in all (the lease's size), then nothing.
        for _ in 1..7 {
            reported = t.report_failure(lease.lease_id, reported.peer_id, true).unwrap().expect("under the cap");
        }
        assert!(t.report_failure(lease.lease_id, reported.peer_id, true).unwrap().is_none(), "past the cap");
        assert!(t.report_failure(lease.lease_id, lease.peers[3].peer_id, true).unwrap().is_none(), "past the cap");
        assert_eq!(t.stats().unwrap().free, 40 - 7 - 7);
        // A peer with three slots in a lease may be replaced three times.
        let t = tracker_with(4, 3);
        let lease = granted(t.lease(6, 1, false).unwrap());
        let many = lease.peers[0].peer_id;
        let held = lease.peers.iter().filter(|p| p.peer_id == many).count();
        let lent = (0..5).filter(|_| t.report_failure(lease.lease_id, many, true).unwrap().is_some()).count();
        assert_eq!(lent, held.min(12 - 6), "one per slot held on it ({held}), while slots are free");
        t.check_invariants().unwrap();
    }

    #[tokio::test]
    async fn hedges_borrow_a_slot_off_the_slow_peer_and_speed_reports_set_probation() {
        let t = tracker_with(9, 1);
        let lease = granted(t.lease(7, 1, false).unwrap());
        let holder = Caller::conn(1);
        let slow = lease.peers[3].peer_id;
        let spare = t.hedge_by(lease.lease_id, slow, &holder).unwrap().expect("two slots are free");
        assert_ne!(spare.peer_id, slow);
        assert!(!lease.peers.iter().any(|p| p.peer_id == spare.peer_id), "a free slot, not one of ours");
        assert_eq!(t.stats().unwrap().free, 1);
        let row = &t.peers().unwrap().1[slow.0 as usize];
        assert_eq!((row.failures, row.state.as_str()), (0, "alive"), "hedging blames nobody");
        assert!(matches!(t.hedge_by(lease.lease_id, PeerId(99), &holder), Err(Error::NotInLease { .. })));
        assert!(matches!(t.hedge_by(lease.lease_id, slow, &Caller::conn(2)), Err(Error::NotYourLease(_))));
        // The hedge slot is part of the lease: speed may name it, and release returns it.
        let stranger = PeerId(if spare.peer_id.0 == 8 { 7 } else { 8 });
        assert!(
            matches!(t.record_speed_by(lease.lease_id, &[slow], &[stranger], &holder), Err(Error::NotInLease { .. })),
            "a peer outside the lease"
        );
        t.record_speed_by(lease.lease_id, &[slow, slow], &[spare.peer_id], &holder).unwrap();
        assert!(matches!(t.record_speed_by(lease.lease_id, &[slow], &[], &holder), Err(Error::Invalid(_))), "once");
        let rows = t.peers().unwrap().1;
        assert_eq!((rows[slow.0 as usize].slow, rows[spare.peer_id.0 as usize].slow), (1, 0), "once per list");
        t.release(lease.lease_id).unwrap();
        assert_eq!(t.stats().unwrap().free, 9);
        t.check_invariants().unwrap();
        // On probation: the next lease of eight takes it last.
        let next = granted(t.lease(8, 1, false).unwrap());
        assert!(!next.peers.iter().any(|p| p.peer_id == slow), "{:?}", next.peers);
        let all = granted(t.lease(1, 2, false).unwrap());
        assert_eq!(all.peers[0].peer_id, slow, "still leased when it is all that is free");
    }

    #[tokio::test]
    async fn a_lease_borrows_at_most_seven_hedge_slots() {
        let t = tracker_with(20, 1);
        let lease = granted(t.lease(7, 1, false).unwrap());
        let slow = lease.peers[0].peer_id;
        let lent: Vec<_> = (0..10).map(|_| t.hedge_by(lease.lease_id, slow, &Caller::conn(1)).unwrap()).collect();
        assert_eq!(lent.iter().filter(|s| s.is_some()).count(), MAX_HEDGES_PER_LEASE as usize, "{lent:?}");
        assert_eq!(t.stats().unwrap().free, 20 - 7 - MAX_HEDGES_PER_LEASE);
        t.release(lease.lease_id).unwrap();
        assert_eq!(t.stats().unwrap().free, 20, "hedge slots return with the lease");
        t.check_invariants().unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn the_snapshot_shows_the_queue_and_leases_without_tokens_and_the_metrics_count_them() {
        let t = tracker_with(7, 1);
        let holder: SocketAddr = "10.0.0.9:4242".parse().unwrap();
        t.connected(1, holder);
        let first = granted(t.lease(7, 1, false).unwrap());
        let mut waiting = queued(t.lease(3, 2, true).unwrap());
        tokio::time::advance(Duration::from_secs(3)).await;
        let snap = t.snapshot(10).unwrap();
        let three = Duration::from_secs(3);
        assert_eq!(snap.queue, vec![QueueEntry { position: 1, count: 3, from: None, waited: three }]);
        let expected = LeaseEntry {
            lease_id: first.lease_id,
            slots: 7,
            holder: Some(holder),
            detached: false,
            age: three,
            ttl_left: Duration::from_secs(7),
        };
        assert_eq!(snap.leases, vec![expected]);
        assert_eq!((snap.peers.len(), snap.peers_total, snap.queue_total, snap.leases_total), (7, 7, 1, 1));
        let levels = snap.levels;
        assert_eq!((levels.peers, levels.slots, levels.slots_in_use, levels.slots_free), ([7, 0, 0], 7, 7, 0));
        assert_eq!((levels.queue_length, levels.queue_slots, levels.leases), (1, 3, 1));
        assert!(!format!("{snap:?}").contains(first.token.expose()), "a token in the snapshot");
        assert_eq!(t.snapshot(2).unwrap().peers.len(), 2, "cut at max_rows");

        // The waiter is served after 3 s in the queue; the histogram says so.
        t.release(first.lease_id).unwrap();
        let second = waiting.grant.try_recv().unwrap();
        let totals = t.metrics().totals();
        assert_eq!((totals.leases_granted, totals.leases_released), (2, 1));
        let mut text = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut text, t.metrics().registry()).unwrap();
        assert!(text.lines().any(|l| l == "septet_tracker_lease_wait_seconds_sum 3.0"), "{text}");
        // Conn 1 leaves: its address goes with it; the detached lease expires.
        t.disconnect(1);
        tokio::time::advance(Duration::from_secs(11)).await;
        t.sweep().unwrap();
        assert!(matches!(t.release(second.lease_id), Err(Error::UnknownLease(_))));
        let totals = t.metrics().totals();
        assert_eq!((totals.leases_expired, totals.leases_dropped), (1, 0));
        assert!(t.inner.state.lock().conn_addrs.is_empty());
    }

    /// The request `conn` makes presenting `token`.
    fn by(conn: ConnId, token: &str) -> Caller {
        Caller { conn, token: Some(LeaseToken::presented(token)) }
    }

    #[tokio::test]
    async fn only_the_holder_connection_or_the_token_may_renew_release_or_report() {
        let t = tracker_with(8, 1);
        let lease = granted(t.lease(7, 1, true).unwrap());
        let (id, token) = (lease.lease_id, lease.token.expose().to_string());
        assert_eq!(token.len(), 2 * TOKEN_BYTES);
        assert!(token.chars().all(|c| c.is_ascii_hexdigit()));
        let other = granted(t.lease(1, 2, false).unwrap());
        assert_ne!(other.token, lease.token, "every lease has its own token");
        let before = (t.stats().unwrap(), t.peers().unwrap().1);
        let wrong = "0".repeat(token.len());
        let bad_peer = lease.peers[0].peer_id;
        // Another connection: without the token, with a wrong one, with the
        // token of its own lease, or a truncated one: refused, nothing changes.
        for caller in [Caller::conn(2), by(2, &wrong), by(2, other.token.expose()), by(2, &token[..10]), by(2, "")] {
            assert!(matches!(t.release_by(id, caller.clone()), Err(Error::NotYourLease(i)) if i == id));
            assert!(matches!(t.renew_by(id, &caller), Err(Error::NotYourLease(_))));
            assert!(matches!(t.report_failure_by(id, bad_peer, true, &caller), Err(Error::NotYourLease(_))));
            assert_eq!((t.stats().unwrap(), t.peers().unwrap().1), before, "refused means unchanged");
        }
        // An unknown lease reads exactly like someone else's.
        let unknown = t.release_by(LeaseId(999), Caller::conn(2)).unwrap_err().to_string();
        let theirs = t.release_by(id, Caller::conn(2)).unwrap_err().to_string();
        assert_eq!(unknown.replace("999", &id.to_string()), theirs);
        assert!(!theirs.contains(&token), "the error never shows the token");
        // The holder connection may, without the token (detached or not) …
        t.renew_by(id, &Caller::conn(1)).unwrap();
        assert!(t.report_failure_by(id, bad_peer, false, &Caller::conn(1)).unwrap().is_none());
        t.renew_by(other.lease_id, &Caller::conn(2)).unwrap();
        // … and so may anyone with the token.
        t.renew_by(id, &by(3, &token)).unwrap();
        t.release_by(id, by(3, &token)).unwrap();
        assert!(matches!(t.release_by(id, by(3, &token)), Err(Error::NotYourLease(_))), "exactly once");
        t.release_by(other.lease_id, Caller::conn(2)).unwrap();
        assert_eq!(t.stats().unwrap().leases, 0);
        t.check_invariants().unwrap();
    }

    #[tokio::test]
    async fn a_batch_release_by_a_stranger_is_refused_and_changes_nothing() {
        let t = tracker_with(7, 1);
        let lease = granted(t.lease(7, 1, false).unwrap());
        let out = t.apply([
            Op::ReleaseBy { lease_id: lease.lease_id, caller: Caller::conn(9) },
            Op::Lease { count: 1, conn: 9, detached: false },
        ]);
        assert!(matches!(out[0], Err(Error::NotYourLease(_))));
        let mut waiting = queued(out.into_iter().nth(1).unwrap().unwrap().into_lease());
        assert_eq!(t.stats().unwrap(), Stats { free: 0, leases: 1, waiting: 1 });
        t.apply([Op::ReleaseBy { lease_id: lease.lease_id, caller: Caller::conn(1) }]).pop().unwrap().unwrap();
        assert_eq!(waiting.grant.try_recv().unwrap().peers.len(), 1);
        t.check_invariants().unwrap();
    }

    #[test]
    fn lease_tokens_compare_whole_and_never_print() {
        let a = LeaseToken::generate();
        assert!(a.matches(&a.clone()));
        assert!(!a.matches(&LeaseToken::generate()));
        assert!(!a.matches(&LeaseToken::presented(&a.expose()[1..])));
        assert_eq!(format!("{a:?}"), "LeaseToken(<redacted>)");
        let caller = format!("{:?}", Caller { conn: 1, token: Some(a.clone()) });
        assert!(!caller.contains(a.expose()));
    }

    #[tokio::test]
    async fn only_the_registering_connection_may_heartbeat_or_deregister_a_peer() {
        let t = tracker();
        let p = t.register_by("10.0.0.1:7000", 1, 5).unwrap();
        let before = t.peers().unwrap().1;
        assert!(matches!(t.heartbeat_by(p, 6), Err(Error::NotYourPeer(_))));
        assert!(matches!(t.deregister_by(p, 6), Err(Error::NotYourPeer(_))));
        assert_eq!(t.peers().unwrap().1, before, "refused means unchanged");
        assert!(matches!(t.heartbeat_by(PeerId(42), 5), Err(Error::UnknownPeer(PeerId(42)))));
        t.heartbeat_by(p, 5).unwrap();
        // The worker reconnects and registers again: the row is the new
        // connection's now, and no longer the old one's.
        assert_eq!(t.register_by("10.0.0.1:7000", 1, 7).unwrap(), p);
        assert!(matches!(t.heartbeat_by(p, 5), Err(Error::NotYourPeer(_))));
        t.heartbeat_by(p, 7).unwrap();
        t.deregister_by(p, 7).unwrap();
        assert_eq!(t.peers().unwrap().1[p.0 as usize].state, "gone");
        assert!(matches!(t.heartbeat_by(p, 7), Err(Error::PeerGone(_))));
    }

    #[tokio::test]
    async fn the_peer_table_has_a_cap_and_a_returning_address_keeps_its_row_and_leased_slots() {
        let t = Tracker::new(TrackerConfig { max_peers: 2, ..Default::default() }).unwrap();
        let a = t.register_by("10.0.0.1:7000", 2, 1).unwrap();
        t.register_by("10.0.0.2:7000", 1, 2).unwrap();
        let full = t.register_by("10.0.0.3:7000", 1, 3).unwrap_err().to_string();
        assert!(full.contains("full") && full.contains("2 peers"), "{full}");
        let lease = granted(t.lease(3, 9, false).unwrap());
        // A known address may always come back, same row, same id: the
        // slots its old registration has leased stay held until released.
        assert_eq!(t.register_by("10.0.0.1:7000", 3, 4).unwrap(), a);
        assert_eq!(t.peers().unwrap().1[a.0 as usize].in_use, 2);
        assert_eq!(t.stats().unwrap().free, 1, "three offered, two still held");
        t.check_invariants().unwrap();
        // Fewer slots than still held would break the accounting: refused.
        let fewer = t.register_by("10.0.0.1:7000", 1, 4).unwrap_err().to_string();
        assert!(fewer.contains("still has 2 slots held"), "{fewer}");
        t.check_invariants().unwrap();
        t.release(lease.lease_id).unwrap();
        t.register_by("10.0.0.1:7000", 1, 4).unwrap();
        assert_eq!(t.stats().unwrap().free, 2);
        t.check_invariants().unwrap();
        assert!(Tracker::new(TrackerConfig { max_peers: 0, ..Default::default() }).is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_table_gives_the_row_of_a_peer_long_gone_to_a_new_worker() {
        let config = TrackerConfig {
            max_peers: 2,
            forget_gone: Duration::from_secs(60),
            lease_ttl: Duration::from_secs(10),
            ..Default::default()
        };
        let t = Tracker::new(config).unwrap();
        let a = t.register_by("10.0.0.1:7000", 1, 1).unwrap();
        t.register_by("10.0.0.2:7000", 1, 2).unwrap();
        let lease = granted(t.lease(2, 9, false).unwrap());
        t.release(lease.lease_id).unwrap();
        t.deregister_by(a, 1).unwrap();
        // Gone, but not for long: the table is still full.
        let full = t.register_by("10.0.0.3:7000", 2, 3).unwrap_err().to_string();
        assert!(full.contains("full") && full.contains("60s"), "{full}");
        tokio::time::advance(Duration::from_secs(61)).await;
        let c = t.register_by("10.0.0.3:7000", 2, 3).unwrap();
        assert_eq!(c, a, "the long-gone row is reused");
        let row = &t.peers().unwrap().1[c.0 as usize];
        assert_eq!((row.addr.as_str(), row.slots, row.state.as_str()), ("10.0.0.3:7000", 2, "alive"));
        assert_eq!((row.leases_total, row.failures, row.in_use), (0, 0, 0), "fresh counts");
        // Only its new connection speaks for it; the live peer kept its row.
        assert!(matches!(t.heartbeat_by(c, 1), Err(Error::NotYourPeer(_))));
        t.heartbeat_by(c, 3).unwrap();
        assert_eq!(t.peers().unwrap().1[1].addr, "10.0.0.2:7000");
        t.check_invariants().unwrap();
    }
}
