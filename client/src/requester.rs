//! [`Requester`]: multiplies A·B on the grid. It leases seven slots, sends
//! each leased worker one Strassen operand pair, folds the products into C
//! as they arrive, and releases the lease.
//!
//! Memory: A, B and C (3 units of n² elements for square inputs, none of
//! it the requester's when they are mapped from files: see
//! [`crate::store::Store`] and [`Requester::multiply_stored`]) plus at
//! most two formed operand pairs (the one being sent and the next one being
//! formed, ≤ 0.75 units in the send order used) plus at most
//! [`RequesterConfig::max_receiving`] products being received and
//! accumulated (0.25 units each). Plain quadrants are sent straight from A's
//! and B's memory. The rest waits in the workers' socket buffers.

mod dispatch;
pub mod relay;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ndarray::{Array2, ArrayView2};
use parking_lot::Mutex;
use septet_common::conn::ConnLimits;
use septet_common::frame::{BlockOp, BlocksHeader, Frame};
use septet_common::proto::{LeaseGrant, LeaseTicket, PeerAddr, WorkerRequest};
use septet_common::proto::{LeaseId, PeerId, Reply, TaskId, WorkerReply};
use septet_common::strassen::{self, Quad, Sign, Split, PRODUCTS};
use septet_common::{deadline, Connection, Element, Error, ErrorCode, FrameReader, Role, PEERS_PER_LEASE};
use septet_common::{FrameInto, FrameWriter, WirePart};
use serde::Serialize;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::{mpsc, oneshot, watch, OwnedSemaphorePermit, Semaphore};
use tracing::{debug, info, warn};

use crate::store::Store;
use crate::tracker::TrackerClient;
use crate::verify::{CheckError, NonFinite, Verifier};
pub use dispatch::{AttemptReport, HedgeReport, State as ProductState};
use dispatch::{Dispatch, Failure, Meter, Outcome};

/// Order in which the seven pairs are sent (through
/// [`dispatch::LANES`] send lanes). Sums of two full-size quadrants are
/// formed as they are written, so only operands that need zero padding
/// (odd shapes) are materialised; for those, pairs that need one formed
/// operand (M2, M3, M4, M5) alternate with pairs that need two (M1, M6,
/// M7), so the two pairs in flight at once never hold more than three
/// formed blocks.
const SEND_ORDER: [usize; 7] = [1, 0, 2, 5, 3, 6, 4];

/// The size (cube root of m·k·n) from which `depth` 0 (auto) runs a job
/// two levels deep when 49 peers are free. Two levels save each slot
/// 7/32 of (n/2)³·2 flops of compute, and cost each first-level slot's
/// link its operands and product once more (3·(n/2)² words, not
/// overlapped with the first level yet): they break even at
/// n ≈ 3.4·w·R/B for a worker's rate R and link rate B, about 20,000 for
/// one core of this project's test machine (90 GFLOP/s in faer, f64) on
/// 1 Gbit/s links. On one host (every worker sharing its cores) two levels
/// never win: n=4096 on loopback took 1.6× as long as one level.
pub const AUTO_DEPTH2_MIN: u64 = 16_384;

/// Requester settings.
#[derive(Debug, Clone)]
pub struct RequesterConfig {
    /// Tracker address.
    pub tracker: String,
    /// Deadline for connecting, hellos and tracker requests.
    pub io_timeout: Duration,
    /// Give up waiting in the lease queue after this long (`None`: wait).
    pub max_lease_wait: Option<Duration>,
    /// Slowest compute rate a worker is allowed, in GFLOP/s: with
    /// `io_timeout` it sets each product's deadline.
    pub min_worker_gflops: f64,
    /// Products received and accumulated at once (bounds memory).
    pub max_receiving: usize,
    /// A job out of core (C in a file) reads a product larger than this
    /// many bytes into a scratch file rather than memory (one in memory
    /// at a time otherwise: the buffer pool's reuse makes that faster), and
    /// forms any padded operand in one: the requester's anonymous memory
    /// stays below this plus O(n), whatever n is.
    pub spill_above: usize,
    /// Check every product with Freivalds' test before using it.
    pub verify: bool,
    /// Random vectors per Freivalds check.
    pub verify_rounds: usize,
    /// Attempts per product (the first plus re-dispatches) before the job fails.
    pub max_attempts: u32,
    /// How long to keep asking the tracker for a replacement peer.
    pub replacement_wait: Duration,
    /// The cluster secret and whether to encrypt, with the tracker and the workers.
    pub security: septet_common::secure::Security,
    /// A worker from which not one byte arrives for this long — while it
    /// takes its operands, computes, or sends its product — is taken as
    /// gone (dead, or cut off without a reset) and its product re-dispatched.
    /// Workers say `Working` every second they have nothing else to say, so
    /// this is independent of the block size; the product deadline stays
    /// as the last resort for a worker that talks but never finishes.
    pub silence_timeout: Duration,
    /// Most products a job hedges (sends a second copy of, to a spare
    /// slot, because its first attempt lags well behind the rest); 0 turns
    /// hedging off.
    pub max_hedges: u32,
    /// How the job moves its blocks (see [`Plan`]).
    pub plan: Plan,
    /// Peers whose slots the job never uses (a peer's own, for its own
    /// jobs): a slot on one of them in the grant is swapped for another.
    pub avoid: Vec<PeerId>,
    /// Levels of Strassen's step across peers: 1 (seven peers), or 2
    /// (forty-nine: each of the seven products is itself split in seven,
    /// computed by seven peers its slot requests it from). Leases take
    /// 7^depth slots. 0 is `auto`: 2 for a job of at least
    /// `auto_depth2_min`³ multiply-adds when 49 peers have a slot free at
    /// the time of asking, else 1 (a lease held ahead of jobs takes 1).
    pub depth: u8,
    /// See `depth`; [`AUTO_DEPTH2_MIN`] by default.
    pub auto_depth2_min: u64,
}

/// How a job moves its blocks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Plan {
    /// The relay, unless every leased peer is on this host's loopback
    /// interface: then there is no link to spare and the relay only adds
    /// copies (relayed jobs are slower there: `cargo bench --bench grid`
    /// shows both plans), so the job goes direct.
    #[default]
    Auto,
    /// The relay: A and B go out once, the peers forward them and reduce
    /// C among themselves, C comes back once.
    Relay,
    /// Each peer is sent its product's operands and returns its product
    /// (3.5·n² words out, 1.75·n² in): what a relay that fails falls back
    /// to for the quadrants it did not deliver.
    Direct,
}

impl Plan {
    /// Whether a job on `peers` relays, C mapped from a file or not: a
    /// job out of core relays on loopback too, since the direct plan
    /// receives whole products (a quarter of C each) into memory.
    pub fn relays_job(self, peers: &[PeerAddr], out_of_core: bool) -> bool {
        match self {
            Plan::Auto if out_of_core => !peers.iter().any(crate::dialback::dials_back),
            _ => self.relays(peers),
        }
    }

    /// Whether a job on `peers` relays.
    pub fn relays(self, peers: &[PeerAddr]) -> bool {
        match self {
            // Peers that dial back cannot dial each other either.
            _ if peers.iter().any(crate::dialback::dials_back) => false,
            Plan::Relay => true,
            Plan::Direct => false,
            Plan::Auto => !all_loopback(peers),
        }
    }
}

/// Whether every one of `peers` is on this host's loopback interface.
fn all_loopback(peers: &[PeerAddr]) -> bool {
    peers.iter().all(|p| p.addr.parse::<std::net::SocketAddr>().is_ok_and(|a| a.ip().is_loopback()))
}

impl std::str::FromStr for Plan {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "auto" => Ok(Plan::Auto),
            "relay" => Ok(Plan::Relay),
            "direct" => Ok(Plan::Direct),
            other => Err(format!("unknown plan {other:?} (auto, relay or direct)")),
        }
    }
}

impl Default for RequesterConfig {
    fn default() -> Self {
        Self {
            tracker: "127.0.0.1:7700".into(),
            io_timeout: Duration::from_secs(10),
            max_lease_wait: None,
            min_worker_gflops: 0.5,
            max_receiving: 2,
            spill_above: SPILL_ABOVE,
            verify: true,
            verify_rounds: 2,
            max_attempts: 4,
            replacement_wait: Duration::from_secs(30),
            security: septet_common::secure::Security::default(),
            silence_timeout: Duration::from_secs(4),
            max_hedges: 2,
            plan: Plan::Auto,
            avoid: Vec::new(),
            depth: 1,
            auto_depth2_min: AUTO_DEPTH2_MIN,
        }
    }
}

/// Something that happened during a job, for progress displays.
#[derive(Debug, Clone)]
pub enum Progress {
    /// The lease request is queued.
    Waiting {
        /// 1-based place in the queue.
        position: u32,
        /// Free slots.
        free: u32,
        /// Slots needed.
        needed: u32,
    },
    /// The lease was granted.
    Leased {
        /// Its id.
        lease_id: LeaseId,
    },
    /// A product's operands were sent.
    Sent {
        /// "M1".."M7".
        product: &'static str,
        /// Bytes sent.
        bytes: u64,
    },
    /// A product lagged; a copy went to another peer.
    Hedged {
        /// "M1".."M7".
        product: &'static str,
        /// Where the copy went.
        addr: String,
    },
    /// A product arrived and was folded into C.
    Received {
        /// "M1".."M7".
        product: &'static str,
        /// Bytes received.
        bytes: u64,
    },
}

/// Per-product record of a job.
#[derive(Debug, Clone, Serialize)]
pub struct PeerReport {
    /// "M1".."M7".
    pub product: &'static str,
    /// Peer that computed it.
    pub peer_id: PeerId,
    /// Its address.
    pub addr: String,
    /// Bytes of the task frame.
    pub bytes_sent: u64,
    /// Bytes of the reply frames.
    pub bytes_received: u64,
    /// Seconds spent writing the task.
    pub send_s: f64,
    /// Seconds the worker reports computing.
    pub compute_s: f64,
    /// Seconds from the start of the job until the product was folded into C.
    pub done_at_s: f64,
    /// Seconds reading the product (once allowed to).
    pub receive_s: f64,
    /// This copy is a hedge's: the first attempt lagged, a second copy
    /// went to this peer, and this one verified first.
    pub hedged: bool,
}

/// What a job did and how long it took.
#[derive(Debug, Clone, Serialize)]
pub struct JobReport {
    /// Rows of A and C.
    pub m: usize,
    /// Inner dimension.
    pub k: usize,
    /// Columns of B and C.
    pub n: usize,
    /// Element type.
    pub dtype: String,
    /// The lease used (0 when no lease was needed).
    pub lease_id: LeaseId,
    /// Wall time of the whole job, seconds.
    pub total_s: f64,
    /// Time from asking the tracker to holding the lease (includes queueing).
    pub lease_wait_s: f64,
    /// Time connecting to the seven peers.
    pub connect_s: f64,
    /// Bytes sent to workers.
    pub bytes_sent: u64,
    /// Bytes received from workers.
    pub bytes_received: u64,
    /// Classical flops (2·m·k·n) per second of the job's own time
    /// (`total_s` less `lease_wait_s`), in GFLOP/s.
    pub gflops: f64,
    /// (bytes sent + received) per second of the job's own time, in GB/s.
    pub throughput_gbps: f64,
    /// One record per product, in M1..M7 order.
    pub peers: Vec<PeerReport>,
    /// Whether every product passed Freivalds' check before it was used.
    pub verified: bool,
    /// Seconds of verification work (preparing the check, checking each
    /// product); most of it overlaps the workers' compute.
    pub verify_s: f64,
    /// Seconds verification added to the job's critical path: the last
    /// product's wait for the check to be ready plus its check.
    pub verify_critical_s: f64,
    /// Products sent again to a replacement peer.
    pub retries: u32,
    /// Products sent a second time because their first attempt lagged
    /// (each costs one more product's work).
    pub hedges: Vec<HedgeReport>,
    /// Every attempt at a product, in the order they began: the job's
    /// timeline (send, compute, receive per attempt; failures, redos and
    /// hedges).
    pub attempts: Vec<AttemptReport>,
    /// Messages that were dropped or failed, described.
    pub failures: Vec<String>,
    /// `relay` (A and B out once, C back once), `direct` (each product's
    /// operands sent to its peer), or `relay+direct` (the relay delivered
    /// part of C; the rest was computed directly); two levels deep,
    /// `relay+regroup` (the rest was computed over seven slots a product,
    /// see `regrouped`) or `relay+regroup+direct`.
    pub plan: &'static str,
    /// The relay: its slots' roles, bytes and times.
    pub relay: Option<relay::RelayReport>,
    /// Two levels: products whose quadrants the relay did not deliver,
    /// computed again each over seven healthy slots of the lease.
    pub regrouped: Vec<Regrouped>,
    /// Levels of Strassen's step across peers: 1 (seven peers) or 2
    /// (forty-nine; each slot's group is in `relay.slots[i].delegated`).
    pub depth: u8,
}

impl JobReport {
    /// The report of a job on A and B before it starts.
    fn empty<T: Element>(a: (usize, usize), b: (usize, usize)) -> Self {
        JobReport {
            m: a.0,
            k: a.1,
            n: b.1,
            dtype: T::DTYPE.to_string(),
            lease_id: LeaseId(0),
            total_s: 0.0,
            lease_wait_s: 0.0,
            connect_s: 0.0,
            bytes_sent: 0,
            bytes_received: 0,
            gflops: 0.0,
            throughput_gbps: 0.0,
            peers: Vec::new(),
            verified: false,
            verify_s: 0.0,
            verify_critical_s: 0.0,
            retries: 0,
            hedges: Vec::new(),
            attempts: Vec::new(),
            failures: Vec::new(),
            plan: "direct",
            relay: None,
            regrouped: Vec::new(),
            depth: 1,
        }
    }

    /// Sets the totals once the job has ended.
    fn finish<C>(&mut self, c: &Result<C>, started: Instant) {
        let total = started.elapsed().as_secs_f64();
        self.total_s = total;
        // The rates are the job's own: a wait in the tracker's queue is not.
        let job = (total - self.lease_wait_s).max(0.0);
        if c.is_ok() && job > 0.0 {
            self.gflops = 2.0 * (self.m * self.k * self.n) as f64 / job / 1e9;
            self.throughput_gbps = (self.bytes_sent + self.bytes_received) as f64 / job / 1e9;
        }
    }
}

/// Seven slots leased ahead of jobs and kept across them
/// ([`Requester::lease`], [`Requester::multiply_on`]). A task renews the
/// lease at half its TTL; dropping the value closes its tracker connection,
/// and the tracker ends the lease.
pub struct HeldLease {
    grant: LeaseGrant,
    /// The seven slots of the first level.
    peers: [PeerAddr; 7],
    /// Two levels: slot i's seven peers (`groups[i][0]` is slot i's own,
    /// unless a swap moved slot i elsewhere). Empty for one level.
    groups: Vec<[PeerAddr; 7]>,
    keeper: LeaseKeeper,
}

impl std::fmt::Debug for HeldLease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HeldLease").field("lease_id", &self.grant.lease_id).field("peers", &self.peers).finish()
    }
}

impl HeldLease {
    /// The lease's id.
    pub fn lease_id(&self) -> LeaseId {
        self.grant.lease_id
    }

    /// Levels of the jobs this lease runs (1 or 2).
    pub fn depth(&self) -> u8 {
        if self.groups.is_empty() {
            1
        } else {
            2
        }
    }

    /// The seven slots jobs on this lease use, slot i computing M(i+1)
    /// (two levels deep: having it computed by its group).
    pub fn peers(&self) -> &[PeerAddr; 7] {
        &self.peers
    }

    /// Gives the lease back to the tracker.
    ///
    /// # Errors
    /// What the tracker answered, or a connection error (the tracker then
    /// ends the lease when the connection closes).
    pub async fn release(self) -> septet_common::Result<()> {
        self.keeper.release().await
    }
}

/// Every way a grid multiplication can fail.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    /// A and B cannot be multiplied; nothing was leased.
    #[error("cannot multiply A {left:?} by B {right:?}: A has {} columns but B has {} rows", left.1, right.0)]
    ShapeMismatch {
        /// A's shape.
        left: (usize, usize),
        /// B's shape.
        right: (usize, usize),
    },
    /// Talking to the tracker failed.
    #[error("tracker {addr}: {source}")]
    Tracker {
        /// Tracker address.
        addr: String,
        /// What failed.
        #[source]
        source: Error,
    },
    /// A leased peer failed.
    #[error("{product} on peer {peer_id} ({addr}) failed: {source}")]
    Peer {
        /// The product it was computing.
        product: &'static str,
        /// The peer.
        peer_id: PeerId,
        /// Its address.
        addr: String,
        /// What happened.
        #[source]
        source: Error,
    },
    /// A peer failed and no replacement could be found.
    #[error(
        "{product} on peer {peer_id} ({addr}) failed ({source}) and no replacement peer was free within {waited:?}"
    )]
    NoReplacement {
        /// The product.
        product: &'static str,
        /// The failed peer.
        peer_id: PeerId,
        /// Its address.
        addr: String,
        /// How long we asked.
        waited: Duration,
        /// What happened to the peer.
        #[source]
        source: Error,
    },
    /// The tracker granted fewer slots than the job asked for; the lease
    /// was released without using it.
    #[error("the tracker granted lease {lease_id} with {got} peers, but a job needs {wanted}")]
    ShortGrant {
        /// The lease.
        lease_id: LeaseId,
        /// Peers in the grant.
        got: usize,
        /// Peers asked for.
        wanted: u32,
    },
    /// The job cannot run at the depth asked for (an unknown depth, or
    /// two levels with the direct plan or on peers that cannot reach each
    /// other); nothing was sent.
    #[error("{0}")]
    Depth(String),
    /// Every slot free beside the lease is on a peer the job must avoid
    /// ([`RequesterConfig::avoid`]: a peer's own slots); the lease was released.
    #[error("lease {lease_id} was given a slot of peer {peer_id}, which this job avoids (its own), and no other slot is free")]
    OnlyAvoided {
        /// The lease.
        lease_id: LeaseId,
        /// The avoided peer.
        peer_id: PeerId,
    },
    /// Non-finite values (NaN, ±inf, or an overflowing bound) make a
    /// product's Freivalds check meaningless. The peer is not blamed and no
    /// other peer could do better, so the job stops at once.
    #[error("{product} from peer {peer_id} ({addr}) cannot be verified: {cause}")]
    Unverifiable {
        /// The product.
        product: &'static str,
        /// The peer that sent it.
        peer_id: PeerId,
        /// Its address.
        addr: String,
        /// Where the non-finite values are.
        cause: NonFinite,
    },
    /// A leased peer cannot hold its share of the job (its workers'
    /// `--max-memory`, or its host's memory) and no free slot on a peer
    /// that can was lent in its place; the lease was released.
    #[error(
        "peer {peer_id} ({addr}) offers {have_mib} MiB a slot but this job needs {need_mib} MiB a slot, and no free \
         slot on a peer with room was found: add workers with more memory (septet worker --max-memory) or multiply \
         smaller blocks"
    )]
    NoRoom {
        /// The peer that cannot hold it (the last one tried).
        peer_id: PeerId,
        /// Its address.
        addr: String,
        /// MiB its slots offer.
        have_mib: u64,
        /// MiB a slot of the job needs.
        need_mib: u64,
    },
    /// A local step failed (a bug rather than bad input).
    #[error("internal error: {0}")]
    Internal(String),
}

/// Result alias for requests.
pub type Result<T, E = RequestError> = std::result::Result<T, E>;

/// Commands to the task that holds the lease.
enum KeeperCmd {
    Release(oneshot::Sender<septet_common::Result<()>>),
    /// One job's peers beaten by hedges and peers that delivered first:
    /// every job's are told the tracker together, just before the release.
    Speed {
        beaten: Vec<PeerId>,
        proven: Vec<PeerId>,
    },
    /// One more slot, off `peer_id`, to hedge its product.
    Hedge {
        peer_id: PeerId,
        reply: oneshot::Sender<septet_common::Result<Option<PeerAddr>>>,
    },
    Report {
        peer_id: PeerId,
        reason: String,
        /// Also lease a replacement slot into the lease.
        replace: bool,
        reply: oneshot::Sender<septet_common::Result<Option<PeerAddr>>>,
    },
}

/// The verdicts of a lease's jobs on its peers, kept for the release: the
/// tracker takes one speed report per lease, so a lease held across jobs
/// reports every job's at once.
#[derive(Debug, Default)]
struct Verdicts {
    /// Beaten by a hedge in some job.
    beaten: Vec<PeerId>,
    /// Delivered first in some job.
    proven: Vec<PeerId>,
    /// Whether any job reported (an unused lease reports nothing).
    any: bool,
}

impl Verdicts {
    /// Adds one job's verdicts; each peer is named once.
    fn add(&mut self, beaten: Vec<PeerId>, proven: Vec<PeerId>) {
        self.any = true;
        for (kept, ids) in [(&mut self.beaten, beaten), (&mut self.proven, proven)] {
            for id in ids {
                if !kept.contains(&id) {
                    kept.push(id);
                }
            }
        }
    }

    /// (beaten, proven) for the tracker, if any job reported: a peer beaten
    /// in one job and proven in another counts as beaten, as within a job.
    fn take(&mut self) -> Option<(Vec<PeerId>, Vec<PeerId>)> {
        let Verdicts { beaten, mut proven, any } = std::mem::take(self);
        proven.retain(|p| !beaten.contains(p));
        any.then_some((beaten, proven))
    }
}

/// Handle on the task that keeps a lease: it renews the lease at half its
/// TTL, reports failed peers and asks for replacements, and releases the
/// lease on request. Since the lease is attached to that task's tracker
/// connection, the tracker ends it whenever the task or its connection
/// dies, however the job ends.
#[derive(Clone)]
struct LeaseKeeper {
    tx: mpsc::Sender<KeeperCmd>,
    /// For the lease's peers that dial back (see [`crate::dialback`]).
    broker: Option<Arc<crate::dialback::Broker>>,
    /// The newest ticket for each of the lease's peers.
    tickets: Tickets,
}

/// The newest lease ticket for each peer of a lease, as the grant, hedges,
/// replacements and renewals hand them out: what a connection to the peer
/// presents first (see `septet_common::ticket`).
#[derive(Debug, Clone, Default)]
pub(crate) struct Tickets(Arc<Mutex<std::collections::HashMap<PeerId, LeaseTicket>>>);

impl Tickets {
    /// Keeps `peer`'s ticket if it is newer than the one kept.
    fn note(&self, peer: &PeerAddr) {
        let Some(ticket) = &peer.ticket else { return };
        let mut kept = self.0.lock();
        // Later, or as late and naming more slots (a hedge's, a replacement's).
        let newer = |old: &LeaseTicket| (ticket.expires_ms, ticket.peers.len()) >= (old.expires_ms, old.peers.len());
        if kept.get(&peer.peer_id).is_none_or(newer) {
            kept.insert(peer.peer_id, ticket.clone());
        }
    }

    /// The ticket to present to `peer`.
    pub(crate) fn for_peer(&self, peer: &PeerAddr) -> Option<LeaseTicket> {
        self.0.lock().get(&peer.peer_id).cloned().or_else(|| peer.ticket.clone())
    }

    /// `peer` with the newest ticket.
    fn fresh(&self, peer: &PeerAddr) -> PeerAddr {
        PeerAddr { ticket: self.for_peer(peer), ..peer.clone() }
    }
}

/// Presents `ticket` (if any) as the first frame of a connection to a worker.
pub(crate) async fn present(
    writer: &mut FrameWriter<OwnedWriteHalf>,
    ticket: Option<LeaseTicket>,
) -> septet_common::Result<()> {
    match ticket {
        Some(ticket) => writer.send(&WorkerRequest::Ticket(ticket)).await,
        None => Ok(()),
    }
}

impl LeaseKeeper {
    /// Slots lent on an `avoid` peer are kept in the lease but never handed
    /// to the job.
    fn spawn(mut client: TrackerClient, grant: &LeaseGrant, avoid: Vec<PeerId>) -> LeaseKeeper {
        let (tx, mut rx) = mpsc::channel::<KeeperCmd>(8);
        let lease_id = grant.lease_id;
        let tickets = Tickets::default();
        grant.peers.iter().for_each(|p| tickets.note(p));
        let kept = tickets.clone();
        let every = (Duration::from_millis(grant.ttl_ms) / 2).max(Duration::from_millis(10));
        tokio::spawn(async move {
            let mut speed = Verdicts::default();
            let (mut lost, mut renew_failed) = (false, None::<String>);
            let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
            let usable = |slot: septet_common::Result<Option<PeerAddr>>| {
                if let Ok(Some(s)) = &slot {
                    kept.note(s);
                }
                slot.map(|s| s.filter(|s| !avoid.contains(&s.peer_id)))
            };
            loop {
                tokio::select! {
                    // Within half the TTL: a tracker that does not answer by
                    // then has let the lease lapse anyway, and a renewal
                    // waiting longer would hold up reports and hedges.
                    _ = tick.tick(), if !lost => match deadline(every, "the tracker to renew the lease", client.renew_tickets(lease_id)).await {
                        Ok((_, peers)) => {
                            peers.iter().for_each(|p| kept.note(p));
                            renew_failed = None;
                        }
                        // The tracker ended it: the TTL passed while the
                        // tracker was unreachable. The job carries on with
                        // the peers it has; renewing again cannot help.
                        Err(Error::Remote { code: ErrorCode::Unauthorized | ErrorCode::UnknownLease, .. }) => {
                            warn!(%lease_id, "the tracker no longer holds this lease (its TTL passed while the tracker was unreachable); the job carries on with the peers it has");
                            lost = true;
                        }
                        Err(e) => {
                            // Once per kind of failure, not every tick.
                            let text = e.to_string();
                            if renew_failed.as_ref() != Some(&text) {
                                warn!(%lease_id, error = %text, "could not renew the lease");
                                renew_failed = Some(text);
                            }
                        }
                    },
                    cmd = rx.recv() => match cmd {
                        Some(KeeperCmd::Report { peer_id, reason, replace, reply }) => {
                            let _ = reply.send(usable(client.report_failure(lease_id, peer_id, &reason, replace).await));
                        }
                        Some(KeeperCmd::Hedge { peer_id, reply }) => {
                            let _ = reply.send(usable(client.hedge(lease_id, peer_id).await));
                        }
                        Some(KeeperCmd::Speed { beaten, proven }) => speed.add(beaten, proven),
                        Some(KeeperCmd::Release(reply)) => {
                            if let Some((beaten, proven)) = speed.take() {
                                if let Err(e) = client.record_speed(lease_id, beaten, proven).await {
                                    warn!(%lease_id, error = %e, "could not tell the tracker how the peers did against hedges");
                                }
                            }
                            let _ = reply.send(client.release(lease_id).await);
                            return;
                        }
                        // Dropping the client closes the connection: the
                        // tracker ends the lease if it still exists.
                        None => return,
                    },
                }
            }
        });
        LeaseKeeper { tx, broker: None, tickets }
    }

    /// Listens for the lease's peers that dial back, if it has any.
    async fn with_broker(mut self, config: &RequesterConfig, grant: &LeaseGrant) -> Result<Self> {
        if grant.peers.iter().any(crate::dialback::dials_back) {
            let limits = ConnLimits {
                handshake_timeout: config.silence_timeout.min(config.io_timeout),
                security: config.security.clone(),
                ..ConnLimits::default()
            };
            let broker =
                crate::dialback::Broker::start(&config.tracker, &config.security, limits, config.io_timeout, grant)
                    .await
                    .map_err(|e| RequestError::Tracker { addr: config.tracker.clone(), source: e })?;
            self.broker = Some(Arc::new(broker));
        }
        Ok(self)
    }

    async fn report(&self, peer_id: PeerId, reason: String, replace: bool) -> septet_common::Result<Option<PeerAddr>> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(KeeperCmd::Report { peer_id, reason, replace, reply })
            .await
            .map_err(|_| Error::Closed("the lease keeper"))?;
        rx.await.map_err(|_| Error::Closed("the lease keeper"))?
    }

    /// Reports `peer_id` failed (no replacement) without waiting for the
    /// tracker's answer; a failure to report is logged. The report is
    /// queued at once where the keeper has room (it nearly always has), so
    /// it goes ahead of the verdicts and the release the job sends after
    /// it: queued from a task of its own, it could come after the release,
    /// when the tracker no longer takes reports on the lease (a relayed
    /// job that moved a liar within the relay ends soon after, and its
    /// liar went unreported and was leased first again).
    fn report_in_background(&self, peer_id: PeerId, reason: String) {
        let (reply, rx) = oneshot::channel();
        let queued = match self.tx.try_send(KeeperCmd::Report { peer_id, reason, replace: false, reply }) {
            Ok(()) => None,
            Err(mpsc::error::TrySendError::Full(cmd)) => Some(cmd),
            Err(mpsc::error::TrySendError::Closed(_)) => {
                warn!("could not report a failed peer to the tracker: the lease keeper is closed");
                return;
            }
        };
        let tx = self.tx.clone();
        tokio::spawn(async move {
            if let Some(cmd) = queued {
                if tx.send(cmd).await.is_err() {
                    return warn!("could not report a failed peer to the tracker: the lease keeper is closed");
                }
            }
            match rx.await {
                Ok(Err(e)) => warn!(error = %e, "could not report a failed peer to the tracker"),
                Ok(Ok(_)) => {}
                Err(_) => warn!("could not report a failed peer to the tracker: the lease keeper is closed"),
            }
        });
    }

    /// Asks for one more slot, off `peer_id`, to hedge its product; the
    /// answer comes on the receiver. `None` if the keeper is busy (ask later).
    fn ask_hedge(&self, peer_id: PeerId) -> Option<oneshot::Receiver<septet_common::Result<Option<PeerAddr>>>> {
        let (reply, rx) = oneshot::channel();
        self.tx.try_send(KeeperCmd::Hedge { peer_id, reply }).ok().map(|()| rx)
    }

    /// One more slot of the lease, off `peer_id` (which is slow), if the
    /// tracker has one free now.
    async fn hedge_slot(&self, peer_id: PeerId) -> Option<PeerAddr> {
        match self.ask_hedge(peer_id)?.await {
            Ok(Ok(peer)) => peer,
            Ok(Err(e)) => {
                warn!(error = %e, "could not ask the tracker for another slot");
                None
            }
            Err(_) => None,
        }
    }

    /// Reports `peer_id` failed and asks for a replacement slot; the answer
    /// comes on the receiver. `None` if the keeper is busy (ask later).
    fn ask_replacement(
        &self,
        peer_id: PeerId,
        reason: String,
    ) -> Option<oneshot::Receiver<septet_common::Result<Option<PeerAddr>>>> {
        let (reply, rx) = oneshot::channel();
        self.tx.try_send(KeeperCmd::Report { peer_id, reason, replace: true, reply }).ok().map(|()| rx)
    }

    /// Keeps the job's verdict on its peers for the release.
    async fn note_speed(&self, beaten: Vec<PeerId>, proven: Vec<PeerId>) {
        let _ = self.tx.send(KeeperCmd::Speed { beaten, proven }).await;
    }

    async fn release(self) -> septet_common::Result<()> {
        let (reply, rx) = oneshot::channel();
        if self.tx.send(KeeperCmd::Release(reply)).await.is_err() {
            return Ok(());
        }
        rx.await.unwrap_or(Ok(()))
    }
}

/// An operand as it will be sent: a quadrant of the input used in place, a
/// sum of two full-size quadrants formed while it is written (never stored
/// whole), or — only when padding is needed — a materialised array (in a
/// scratch file, for a job out of core).
enum Formed<T> {
    Quadrant(Quad),
    Sum(Quad, Sign, Quad),
    Owned(Store<T>),
}

impl<T: Element> Formed<T> {
    /// `spill`: the directory for an operand that must be materialised,
    /// if it must not be in memory.
    fn form(
        x: ArrayView2<'_, T>,
        terms: &[strassen::Term],
        shape: (usize, usize),
        spill: Option<&std::path::Path>,
    ) -> std::io::Result<Formed<T>> {
        if let [(Sign::Plus, q1), (sign, q2)] = terms {
            let full = |q: Quad| strassen::quadrant(x, q, shape.0, shape.1).dim() == shape;
            if full(*q1) && full(*q2) {
                return Ok(Formed::Sum(*q1, *sign, *q2));
            }
        }
        if let [(Sign::Plus, q)] = terms {
            if strassen::quadrant(x, *q, shape.0, shape.1).dim() == shape {
                return Ok(Formed::Quadrant(*q));
            }
        }
        let mut out = Store::zeroed_in(spill, shape)?;
        strassen::add_terms(out.view_mut(), x, terms);
        Ok(Formed::Owned(out))
    }

    /// The operand as a part of a frame; every variant has the padded `shape`.
    fn part<'a>(&'a self, x: ArrayView2<'a, T>, shape: (usize, usize)) -> WirePart<'a> {
        let quadrant = |q: Quad| T::view(strassen::quadrant(x, q, shape.0, shape.1));
        match self {
            Formed::Quadrant(q) => WirePart::View(quadrant(*q)),
            Formed::Sum(q1, sign, q2) => {
                WirePart::Sum { a: quadrant(*q1), b: quadrant(*q2), subtract: *sign == Sign::Minus }
            }
            Formed::Owned(a) => WirePart::View(T::view(a.view())),
        }
    }

    /// Hands a formed operand's buffer back once it has been sent.
    fn recycle(self) {
        if let Formed::Owned(a) = self {
            if !a.is_mapped() {
                septet_common::matrix::recycle(a.into_owned());
            }
        }
    }
}

type ProgressFn = Arc<dyn Fn(Progress) + Send + Sync>;

/// [`RequesterConfig::spill_above`]'s default: 64 MiB (an f64 product
/// of a job over n ≈ 5,800).
pub const SPILL_ABOVE: usize = 64 << 20;

/// Rows of a product's M·R formed at a time while it arrives.
const PROBE_ROWS: usize = 64;

/// A product's M·R (R: the check's random vectors), formed row block by
/// row block as the product arrives — each block read right after the
/// socket copy wrote it, while it is still in cache — instead of in one
/// more pass over the whole product afterwards.
struct ProductProbe<T> {
    r: Arc<Array2<T>>,
    shape: (usize, usize),
    mr: Array2<T>,
    rows_done: usize,
    /// Time spent forming M·R.
    spent: Duration,
}

impl<T: Element> ProductProbe<T> {
    fn new(r: Arc<Array2<T>>, shape: (usize, usize)) -> Self {
        let mr = Array2::zeros((shape.0, r.ncols()));
        Self { r, shape, mr, rows_done: 0, spent: Duration::ZERO }
    }

    /// Forms M·R for the rows complete within the first `filled` payload
    /// bytes, once a block's worth is there. Frames that are not one
    /// product of the expected shape and dtype are left to the checks made
    /// after the read.
    fn advance(&mut self, mats: &[septet_common::Matrix], filled: usize) {
        let [m] = mats else { return };
        let Some(m) = T::matrix_ref(m) else { return };
        if m.dim() != self.shape || self.shape.1 == 0 {
            return;
        }
        let ready = (filled / (self.shape.1 * std::mem::size_of::<T>())).min(self.shape.0);
        if ready >= self.rows_done + PROBE_ROWS {
            self.form(m.view(), ready);
        }
    }

    /// [`ProductProbe::advance`] for a product read into memory of the
    /// caller's: `done` is its final part so far.
    fn advance_rows(&mut self, done: &[T]) {
        let cols = self.shape.1;
        if cols == 0 {
            return;
        }
        let ready = (done.len() / cols).min(self.shape.0);
        if ready >= self.rows_done + PROBE_ROWS {
            let rows = ArrayView2::from_shape((ready, cols), &done[..ready * cols]).expect("ready rows are in done");
            self.form(rows, ready);
        }
    }

    fn form(&mut self, m: ArrayView2<'_, T>, upto: usize) {
        if upto <= self.rows_done {
            return;
        }
        let t = Instant::now();
        let rows = ndarray::s![self.rows_done..upto, ..];
        septet_common::matrix::matmul_into(
            self.mr.slice_mut(rows),
            m.slice(rows),
            self.r.view(),
            false,
            faer::Par::Seq,
        )
        .expect("shapes checked: M is rows×cols and R is cols×rounds");
        self.rows_done = upto;
        self.spent += t.elapsed();
    }

    /// M·R for the whole product `m` (as received), forming what is left.
    fn finish(mut self, m: ArrayView2<'_, T>) -> Result<Array2<T>, Error> {
        if m.dim() != self.shape {
            return Err(Error::ShapeMismatch { left: m.dim(), right: self.shape });
        }
        self.form(m, self.shape.0);
        Ok(self.mr)
    }
}

/// The Freivalds check being prepared (`None`), ready, or failed to prepare.
type PreparedCheck<T> = Option<Result<Arc<Verifier<T>>, String>>;

/// A job's Freivalds check: its random vectors R, known from the start so
/// each product's M·R is formed while it arrives, and the rest of the
/// check, prepared while the operands travel.
struct Check<T> {
    r: Arc<Array2<T>>,
    prepared: watch::Receiver<PreparedCheck<T>>,
}

impl<T> Check<T> {
    /// The prepared check, once it is ready.
    async fn verifier(&self) -> Result<Arc<Verifier<T>>, Error> {
        let mut rx = self.prepared.clone();
        let ready = rx.wait_for(Option::is_some).await.map_err(|_| Error::Closed("the verifier"))?.clone();
        ready.expect("waited for Some").map_err(Error::Invalid)
    }
}

/// Everything the tasks of one job share.
struct Job<T> {
    a: Arc<Store<T>>,
    b: Arc<Store<T>>,
    split: Split,
    c: Mutex<Store<T>>,
    /// A job out of core: the directory where padded operands, and
    /// products over [`Job::spill_above`] bytes, are kept (in scratch
    /// files, so that no n²/4-word block of a large job is ever in the
    /// requester's anonymous memory).
    spill: Option<std::path::PathBuf>,
    spill_above: usize,
    receiving: Semaphore,
    reply_deadline: Duration,
    limits: ConnLimits,
    /// The Freivalds check; `None` with verification off.
    check: Option<Check<T>>,
    verify_time: Mutex<Duration>,
    started: Instant,
    /// Products folded into C: a hedge race both copies finish folds once.
    folded: [AtomicBool; 7],
    /// For peers that dial back.
    broker: Option<Arc<crate::dialback::Broker>>,
    /// What each connection presents first.
    tickets: Tickets,
}

/// What a failed task said, as far as it can be told.
fn panic_text(e: tokio::task::JoinError) -> String {
    if !e.is_panic() {
        return e.to_string();
    }
    let payload = e.into_panic();
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "no message".into())
}

/// A frame where product `i` was expected: another task's, or not a product.
fn not_the_product(i: usize, op: BlockOp, task_id: TaskId) -> Error {
    Error::BadFrame(format!("expected the product of task {i}, got {op:?} of task {task_id}"))
}

/// A control message where a product was expected: the worker's error, or
/// a protocol error.
fn refusal(body: septet_common::ControlBody) -> Error {
    match body.decode::<WorkerReply>() {
        Ok(reply) => reply.into_error("the product"),
        Err(e) => e,
    }
}

/// A product received, verified and folded into C.
struct Received {
    bytes: u64,
    compute: Duration,
    receive: Duration,
    /// Time this product waited for the check to be ready plus the check itself.
    verify: Duration,
}

impl<T: Element> Job<T> {
    /// Forms product `i`'s operands on a blocking thread (only padded ones
    /// take work here; full-size sums are formed as they are sent).
    async fn form(self: &Arc<Self>, i: usize) -> Result<(Formed<T>, Formed<T>), Error> {
        let job = self.clone();
        tokio::task::spawn_blocking(move || {
            let p = &PRODUCTS[i];
            let spill = job.spill.as_deref();
            let formed = Formed::form(job.a.view(), p.left, job.split.left_shape(), spill)
                .and_then(|x| Ok((x, Formed::form(job.b.view(), p.right, job.split.right_shape(), spill)?)));
            formed.map_err(|e| {
                let dir = spill.map_or_else(String::new, |d| format!(" in {}", d.display()));
                Error::Invalid(format!("cannot make a scratch file{dir} for a padded operand: {e}"))
            })
        })
        .await
        .map_err(|e| Error::Invalid(format!("forming operands panicked: {e}")))?
    }

    /// Sends product `i`'s operands; returns the frame's size.
    async fn send(
        &self,
        writer: &mut FrameWriter<OwnedWriteHalf>,
        i: usize,
        (x, y): &(Formed<T>, Formed<T>),
        meter: &Meter,
    ) -> Result<u64, Error> {
        let (xs, ys) = (self.split.left_shape(), self.split.right_shape());
        let header =
            BlocksHeader { task_id: TaskId(i as u64), op: BlockOp::Multiply, dtype: T::DTYPE, shapes: vec![xs, ys] };
        let parts = [x.part(self.a.view(), xs), y.part(self.b.view(), ys)];
        meter.send_len.store(header.frame_len().unwrap_or(0) as u64, Ordering::Relaxed);
        writer.set_meter(Some(meter.sent.clone()));
        meter.mark(&meter.send_start, self.started);
        deadline(
            self.reply_deadline,
            "a worker to take its operands",
            writer.send_parts(TaskId(i as u64), BlockOp::Multiply, &parts),
        )
        .await?;
        Ok(header.frame_len().unwrap_or(0) as u64)
    }

    /// [`Job::send`], while listening to the worker: it says `Working`
    /// every second, so silence while its operands are still being written
    /// (a dead or cut-off worker whose socket buffers are full, which would
    /// otherwise block the write until the product deadline) ends the
    /// attempt within the silence timeout. Anything but `Working` before
    /// the operands are all sent is the worker's error or a protocol error.
    async fn send_watching(
        &self,
        writer: &mut FrameWriter<OwnedWriteHalf>,
        reader: &mut FrameReader<OwnedReadHalf>,
        i: usize,
        pair: &(Formed<T>, Formed<T>),
        meter: &Meter,
    ) -> Result<u64, Error> {
        let sending = self.send(writer, i, pair, meter);
        tokio::pin!(sending);
        loop {
            tokio::select! {
                sent = &mut sending => return sent,
                // FrameReader is cancel-safe: dropping this read when the
                // send completes loses nothing.
                heard = reader.read_message::<WorkerReply>("Working") => match heard? {
                    WorkerReply::Working => continue,
                    WorkerReply::Error(f) => return Err(f.into_error()),
                    other => {
                        return Err(Error::Unexpected { expected: "Working", got: septet_common::proto::Control::kind(&other).to_string() });
                    }
                },
            }
        }
    }

    /// Waits for product `i` on `reader`, checks it, and folds it into C.
    async fn receive(
        self: &Arc<Self>,
        mut reader: FrameReader<OwnedReadHalf>,
        i: usize,
        meter: &Meter,
    ) -> Result<Received, Failure> {
        let msg = deadline(self.reply_deadline, "a worker's product", async {
            loop {
                match reader.read_message::<WorkerReply>("Computed").await? {
                    WorkerReply::Working => continue,
                    other => return Ok::<_, Error>(other),
                }
            }
        })
        .await?;
        let compute_us = match msg {
            WorkerReply::Computed { task_id, compute_us } if task_id == TaskId(i as u64) => compute_us,
            WorkerReply::Computed { task_id, .. } => {
                let got = format!("Computed for task {task_id}");
                return Err(Error::Unexpected { expected: "Computed", got }.into());
            }
            other => return Err(other.into_error("Computed").into()),
        };
        meter.mark(&meter.computed_at, self.started);
        let _permit = self.receiving.acquire().await.map_err(|_| Error::Closed("a receive permit"))?;
        // The payload's bytes, as `filled` below counts them.
        let (rows, cols) = self.split.product_shape();
        let payload = (rows as u64).saturating_mul(cols as u64).saturating_mul(std::mem::size_of::<T>() as u64);
        meter.receive_len.store(payload, Ordering::Relaxed);
        meter.mark(&meter.receive_start, self.started);
        let t = Instant::now();
        let mut probe = self.check.as_ref().map(|c| (c, ProductProbe::new(c.r.clone(), self.split.product_shape())));
        let (rows, cols) = self.split.product_shape();
        let spill = self.spill.as_ref().filter(|_| rows * cols * std::mem::size_of::<T>() > self.spill_above);
        let m: Store<T> = match spill {
            // A large product out of core: straight into a scratch file,
            // never whole in memory.
            Some(dir) => {
                let mut store = Store::<T>::scratch(dir, (rows, cols)).map_err(|e| {
                    Failure::Local(format!("cannot make a scratch file in {} for a product: {e}", dir.display()))
                })?;
                let accept = |h: &BlocksHeader| {
                    if h.op != BlockOp::Product || h.task_id != TaskId(i as u64) {
                        return Err(not_the_product(i, h.op, h.task_id));
                    }
                    if h.shapes != [(rows, cols)] {
                        return Err(Error::BadFrame(format!("expected one {rows}×{cols} product, got {:?}", h.shapes)));
                    }
                    Ok(())
                };
                let mut view = store.view_mut();
                let dst = view.as_slice_mut().expect("a scratch store is contiguous");
                let frame = deadline(
                    self.reply_deadline,
                    "a worker's product",
                    reader.read_frame_into(dst, &accept, &mut |done: &[T]| {
                        meter.received.store(std::mem::size_of_val(done) as u64, Ordering::Relaxed);
                        if let Some((_, p)) = probe.as_mut() {
                            p.advance_rows(done);
                        }
                    }),
                )
                .await?;
                match frame {
                    Some(FrameInto::Blocks(_)) => store,
                    Some(FrameInto::Control(body)) => return Err(refusal(body).into()),
                    None => return Err(Error::Closed("the product").into()),
                }
            }
            None => {
                let frame = deadline(
                    self.reply_deadline,
                    "a worker's product",
                    reader.read_frame_with(&mut |mats: &[septet_common::Matrix], filled: usize| {
                        meter.received.store(filled as u64, Ordering::Relaxed);
                        if let Some((_, p)) = probe.as_mut() {
                            p.advance(mats, filled);
                        }
                    }),
                )
                .await?;
                let product = match frame {
                    Some(Frame::Blocks(blocks))
                        if blocks.op == BlockOp::Product && blocks.task_id == TaskId(i as u64) =>
                    {
                        blocks
                    }
                    Some(Frame::Blocks(blocks)) => return Err(not_the_product(i, blocks.op, blocks.task_id).into()),
                    Some(Frame::Control(body)) => return Err(refusal(body).into()),
                    None => return Err(Error::Closed("the product").into()),
                };
                let [m] = <[septet_common::Matrix; 1]>::try_from(product.mats)
                    .map_err(|_| Error::BadFrame("a product frame must hold one matrix".into()))?;
                let (shape, dtype) = (m.shape(), m.dtype());
                let m = T::from_matrix(m).map_err(|_| Error::DtypeMismatch { left: T::DTYPE, right: dtype })?;
                if shape != (rows, cols) {
                    return Err(Error::ShapeMismatch { left: shape, right: (rows, cols) }.into());
                }
                Store::from(m)
            }
        };
        let receive = t.elapsed();
        let (shape, dtype) = (m.dim(), T::DTYPE);
        let header = BlocksHeader { task_id: TaskId(i as u64), op: BlockOp::Product, dtype, shapes: vec![shape] };
        let computed =
            septet_common::frame::encode_control(&WorkerReply::Computed { task_id: TaskId(i as u64), compute_us })?;
        let bytes = (header.frame_len().unwrap_or(0) + computed.len()) as u64;
        let waiting = Instant::now();
        let checking = match probe {
            Some((check, probe)) => {
                let v =
                    check.verifier().await.map_err(|e| Failure::Local(format!("preparing the check failed: {e}")))?;
                Some((v, probe))
            }
            None => None,
        };
        let waited = waiting.elapsed();
        let job = self.clone();
        let checked = tokio::task::spawn_blocking(move || {
            let mut took = Duration::ZERO;
            if let Some((v, probe)) = checking {
                let (t, during_receive) = (Instant::now(), probe.spent);
                let checked = probe.finish(m.view()).map_err(CheckError::from).and_then(|mr| v.check_mr(i, mr.view()));
                took = t.elapsed() + during_receive;
                *job.verify_time.lock() += took;
                match checked {
                    Ok(()) => {}
                    Err(CheckError::Rejected(e)) => return Err(Failure::Peer(e)),
                    // Every element finite but M·r not: only a product far
                    // larger than A·B allows overflows so; it is wrong.
                    Err(CheckError::NonFinite { cause: NonFinite::Product, .. })
                        if m.view().iter().all(|v| v.to_f64().is_finite()) =>
                    {
                        return Err(Failure::Peer(Error::Verification(format!(
                            "{}: M·r overflows although every element is finite",
                            PRODUCTS[i].name
                        ))))
                    }
                    Err(CheckError::NonFinite { cause, .. }) => return Err(Failure::Unverifiable(cause)),
                }
            }
            {
                // Under C's lock: a product is folded once, and marked only
                // once it is.
                let mut c = job.c.lock();
                if job.folded[i].load(Ordering::Acquire) {
                    return Err(Failure::Superseded);
                }
                strassen::accumulate(c.view_mut(), m.view(), &PRODUCTS[i], job.split)?;
                job.folded[i].store(true, Ordering::Release);
            }
            if !m.is_mapped() {
                septet_common::matrix::recycle(m.into_owned());
            }
            Ok::<_, Failure>(took)
        })
        .await
        .map_err(|e| Error::Invalid(format!("checking a product panicked: {}", panic_text(e))))??;
        Ok(Received { bytes, compute: Duration::from_micros(compute_us), receive, verify: waited + checked })
    }

    /// A whole attempt at product `i` on `peer`: connect, wait for a send
    /// lane (first attempts), form, send, receive, check, fold into C. Its
    /// progress shows in `meter`.
    async fn attempt(
        self: Arc<Self>,
        attempt: u64,
        i: usize,
        peer: PeerAddr,
        meter: Arc<Meter>,
        lane: Option<oneshot::Receiver<OwnedSemaphorePermit>>,
        progress: ProgressFn,
    ) -> Outcome {
        let (mut bytes_sent, mut send) = (0, Duration::ZERO);
        let result = async {
            let Connection { mut reader, mut writer, .. } = match &self.broker {
                Some(broker) if crate::dialback::dials_back(&peer) => broker.connect(&peer, &self.limits).await?,
                _ => Connection::connect(&peer.addr, Role::Client, self.limits.clone())
                    .await
                    .map_err(|e| e.naming(|| format!("the worker at {}", peer.addr)))?,
            };
            present(&mut writer, self.tickets.for_peer(&peer)).await?;
            if let Some(lane) = lane {
                let permit = lane.await.map_err(|_| Failure::Local("the send lanes closed".into()))?;
                *meter.lane.lock() = Some(permit);
            }
            let pair = self.form(i).await.map_err(|e| Failure::Local(e.to_string()))?;
            let t = Instant::now();
            let sent = self.send_watching(&mut writer, &mut reader, i, &pair, &meter).await;
            // The lane goes to the next product (unless it went already).
            drop(meter.lane.lock().take());
            pair.0.recycle();
            pair.1.recycle();
            bytes_sent = sent?;
            send = t.elapsed();
            meter.mark(&meter.sent_at, self.started);
            progress(Progress::Sent { product: PRODUCTS[i].name, bytes: bytes_sent });
            // The write side stays open until the reply is in.
            let got = self.receive(reader, i, &meter).await;
            drop(writer);
            got
        }
        .await;
        Outcome { attempt, product: i, peer, bytes_sent, send, result }
    }
}

/// A relay's rows on the job's timeline: one per slot, its operands
/// arriving (until it could start computing), computing, and passing its
/// product on and C back. A slot blamed failed; one that finished did its
/// part (its fingerprint passed), whatever became of the relay; one that
/// did neither ends as `unfinished` ("failed", or "cancelled" when the
/// relay was given up for another slot's sake and run again).
fn relay_attempts(outcome: &relay::Outcome, unfinished: &'static str, started: Instant) -> Vec<AttemptReport> {
    let relay = &outcome.report;
    // A slot whose roles moved: its old peer's row ends when the spare took over.
    let moved = relay.moved.iter().map(|mv| AttemptReport {
        product: mv.product,
        peer: mv.from.clone(),
        kind: "relay",
        started_s: relay.plan_sent_s,
        send_start_s: Some(relay.plan_sent_s),
        sent_s: None,
        computed_s: None,
        receive_start_s: None,
        ended_s: mv.at_s,
        outcome: "moved",
        error: Some(mv.reason.clone()),
    });
    moved
        .chain(relay.slots.iter().enumerate().map(|(slot, sl)| {
            let blamed = outcome.blamed.iter().find(|(s, _)| *s == slot).map(|(_, why)| why.clone());
            let (ok, error) = match (blamed, sl.done_s) {
                (None, Some(_)) => ("verified", None),
                (Some(why), _) => ("failed", Some(why)),
                (None, None) => (unfinished, Some(relay.failure.clone().unwrap_or_else(|| "did not finish".into()))),
            };
            // (A spare that took a slot's roles got its plan at the move.)
            let plan_in = relay.moved.as_ref().filter(|mv| mv.slot == slot).map_or(relay.plan_sent_s, |mv| mv.at_s);
            AttemptReport {
                product: sl.product,
                peer: sl.peer.clone(),
                kind: "relay",
                started_s: plan_in,
                send_start_s: Some(plan_in),
                sent_s: sl.compute_start_s,
                computed_s: sl.compute_end_s,
                receive_start_s: sl.compute_end_s,
                ended_s: sl.done_s.unwrap_or(started.elapsed().as_secs_f64()),
                outcome: ok,
                error,
            }
        }))
        .collect()
}

/// Peers for a report: ids and addresses, never their tickets.
fn without_tickets<S: serde::Serializer>(peers: &[PeerAddr], s: S) -> std::result::Result<S::Ok, S::Error> {
    use serde::ser::SerializeSeq;
    struct Bare<'a>(&'a PeerAddr);
    impl Serialize for Bare<'_> {
        fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
            PeerAddr::without_ticket(self.0, s)
        }
    }
    let mut seq = s.serialize_seq(Some(peers.len()))?;
    for p in peers {
        seq.serialize_element(&Bare(p))?;
    }
    seq.end()
}

/// Product `i` of A·B relayed over `group`: its operands formed here (in
/// scratch files under `spill`, if given), sent once, the product back
/// once and checked by quadrant. The product, if every quadrant passed,
/// and what the relay said.
#[allow(clippy::too_many_arguments)]
async fn regroup_one<T: Element>(
    requester: &Requester,
    a: Arc<Store<T>>,
    b: Arc<Store<T>>,
    split: Split,
    i: usize,
    group: &[PeerAddr; 7],
    spill: Option<std::path::PathBuf>,
    started: Instant,
) -> std::result::Result<(Option<Store<T>>, relay::Outcome), String> {
    let make = move |shape: (usize, usize)| {
        Store::zeroed_in(spill.as_deref(), shape).map_err(|e| {
            let dir = spill.as_ref().map_or_else(String::new, |d| format!(" in {}", d.display()));
            format!("cannot make a scratch file{dir}: {e}")
        })
    };
    let (xs, ys) = (split.left_shape(), split.right_shape());
    let form = make.clone();
    let (x, y) = tokio::task::spawn_blocking(move || {
        let p = &PRODUCTS[i];
        let (mut x, mut y) = (form(xs)?, form(ys)?);
        strassen::add_terms(x.view_mut(), a.view(), p.left);
        strassen::add_terms(y.view_mut(), b.view(), p.right);
        Ok::<_, String>((x, y))
    })
    .await
    .map_err(|e| format!("forming the operands panicked: {e}"))??;
    let sub = Split::of(xs, ys).map_err(|e| e.to_string())?;
    let m = Mutex::new(make(split.product_shape())?);
    let quiet: ProgressFn = Arc::new(|_| {});
    let outcome = relay::run(requester, Arc::new(x), Arc::new(y), &m, sub, group, &[], started, &quiet, None).await;
    let whole = outcome.verified.iter().all(|&v| v) && outcome.unverifiable.is_none();
    Ok((whole.then(|| m.into_inner()), outcome))
}

/// A product of a two-level job computed again after the relay did not
/// deliver its share of C: split in seven over seven healthy slots of the
/// lease and relayed (the requester forms its operands and sends them
/// once, and gets the product back once), as its first-level slot's group
/// would have.
#[derive(Debug, Clone, Serialize)]
pub struct Regrouped {
    /// M1..M7.
    pub product: &'static str,
    /// The seven slots' peers.
    #[serde(serialize_with = "without_tickets")]
    pub peers: Vec<PeerAddr>,
    /// Every quadrant of the product came back and passed its check
    /// (otherwise it was computed the direct way).
    pub verified: bool,
    /// Why not, if not.
    pub failure: Option<String>,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    /// Seconds from its start to its end.
    pub took_s: f64,
}

/// Multiplies matrices on the grid.
#[derive(Debug, Clone)]
pub struct Requester {
    config: RequesterConfig,
}

impl Requester {
    /// A requester for the tracker in `config`.
    pub fn new(config: RequesterConfig) -> Self {
        Self { config }
    }

    /// The configuration.
    pub fn config(&self) -> &RequesterConfig {
        &self.config
    }

    /// Deadline for one product's reply (and for sending its operands):
    /// the I/O timeout plus its flops at the slowest rate allowed.
    pub fn product_deadline(&self, split: Split) -> Duration {
        let flops = split.strassen_flops() / 7.0;
        self.config.io_timeout + Duration::from_secs_f64(flops / (self.config.min_worker_gflops.max(1e-3) * 1e9))
    }

    /// Computes A·B on seven leased workers.
    ///
    /// Shapes are checked before anything is leased. Every product is
    /// verified (unless `verify` is off) before it is folded into C. A peer
    /// that fails — refused or reset connection, error reply, no reply by
    /// the deadline, a product that fails verification — is reported to the
    /// tracker and its product alone is sent to a replacement. The lease is
    /// released however the job ends; if the future is dropped, the tracker
    /// connection closes and the tracker ends the lease.
    ///
    /// # Errors
    /// [`RequestError::ShapeMismatch`], [`RequestError::Tracker`] if leasing
    /// fails, [`RequestError::NoReplacement`] or [`RequestError::Peer`]
    /// naming the peer that failed when the job cannot finish. A partial C
    /// is never returned.
    pub async fn multiply<T: Element>(
        &self,
        a: Arc<Array2<T>>,
        b: Arc<Array2<T>>,
        progress: impl Fn(Progress) + Send + Sync + 'static,
    ) -> Result<(Array2<T>, JobReport)> {
        let (c, report) = self.multiply_reporting(a, b, progress).await;
        c.map(|c| (c, report))
    }

    /// [`Requester::multiply`], returning the job's report however the job
    /// ended: a failed job's report has its attempts (the timeline up to
    /// the failure), failures, retries and hedges, and no `peers`.
    pub async fn multiply_reporting<T: Element>(
        &self,
        a: Arc<Array2<T>>,
        b: Arc<Array2<T>>,
        progress: impl Fn(Progress) + Send + Sync + 'static,
    ) -> (Result<Array2<T>>, JobReport) {
        let c = Store::zeros((a.nrows(), b.ncols()));
        let (c, report) = self.multiply_stored(Arc::new(a.into()), Arc::new(b.into()), c, progress).await;
        (c.map(Store::into_owned), report)
    }

    /// [`Requester::multiply_reporting`] on matrices wherever they are: A
    /// and B are only read, C (zeroed, A's rows × B's columns) is written
    /// in place and returned. With A, B and C mapped from files
    /// ([`Store::open`], [`Store::create`]) the requester holds none of
    /// them in memory: the job relays (whatever the peers' addresses, for
    /// the direct plan receives whole products), blocks go out as they are
    /// read and C's panels go into its file as they arrive.
    ///
    /// # Panics
    /// If C's shape is not A's rows × B's columns.
    pub async fn multiply_stored<T: Element>(
        &self,
        a: Arc<Store<T>>,
        b: Arc<Store<T>>,
        c: Store<T>,
        progress: impl Fn(Progress) + Send + Sync + 'static,
    ) -> (Result<Store<T>>, JobReport) {
        self.multiply_stored_with(None, a, b, c, progress).await
    }

    /// [`Requester::multiply_stored`] on `held`, or on a lease taken for
    /// the job and released after it.
    async fn multiply_stored_with<T: Element>(
        &self,
        held: Option<&HeldLease>,
        a: Arc<Store<T>>,
        b: Arc<Store<T>>,
        c: Store<T>,
        progress: impl Fn(Progress) + Send + Sync + 'static,
    ) -> (Result<Store<T>>, JobReport) {
        assert_eq!(c.dim(), (a.nrows(), b.ncols()), "C is A's rows × B's columns");
        let started = Instant::now();
        let mut report = JobReport::empty::<T>(a.dim(), b.dim());
        if let Some(lease) = held {
            report.lease_id = lease.grant.lease_id;
        }
        let job = async {
            let Some(split) = self.split(a.dim(), b.dim())? else { return Ok(c) };
            let progress: ProgressFn = Arc::new(progress);
            let (peers, groups, keeper) = match held {
                Some(lease) => (&lease.peers, &lease.groups, &lease.keeper),
                None => {
                    let depth = self.depth_for(split).await;
                    let lease = self.take_lease(&progress, depth).await?;
                    report.lease_id = lease.grant.lease_id;
                    report.lease_wait_s = started.elapsed().as_secs_f64();
                    let result = self
                        .run_job(
                            a,
                            b,
                            c,
                            split,
                            &lease.peers,
                            &lease.groups,
                            &lease.keeper,
                            &progress,
                            started,
                            &mut report,
                        )
                        .await;
                    if let Err(e) = lease.keeper.release().await {
                        report.failures.push(format!("release of lease {}: {e}", lease.grant.lease_id));
                    }
                    return result;
                }
            };
            self.run_job(a, b, c, split, peers, groups, keeper, &progress, started, &mut report).await
        };
        let c = job.await;
        report.finish(&c, started);
        (c, report)
    }

    /// The job's split, or `None` when there is nothing to distribute (the
    /// product is all zeros or empty).
    fn split(&self, a: (usize, usize), b: (usize, usize)) -> Result<Option<Split>> {
        let split = Split::of(a, b).map_err(|_| RequestError::ShapeMismatch { left: a, right: b })?;
        Ok((split.m != 0 && split.n != 0 && split.k != 0).then_some(split))
    }

    /// Leases 7^depth slots and starts the task that keeps the lease;
    /// slots on [`RequesterConfig::avoid`] peers are swapped for others.
    async fn take_lease(&self, progress: &ProgressFn, depth: u8) -> Result<HeldLease> {
        let tracker_err = |source| RequestError::Tracker { addr: self.config.tracker.clone(), source };
        if !(1..=2).contains(&depth) {
            return Err(RequestError::Depth(format!("depth {depth}: septet runs jobs one or two levels deep")));
        }
        let count = PEERS_PER_LEASE.pow(u32::from(depth));
        let mut tracker = TrackerClient::connect_with(
            &self.config.tracker,
            Role::Client,
            self.config.io_timeout,
            &self.config.security,
        )
        .await
        .map_err(tracker_err)?;
        let p = progress.clone();
        let grant = tracker
            .lease(count, false, self.config.max_lease_wait, move |position, free, needed| {
                p(Progress::Waiting { position, free, needed })
            })
            .await
            .map_err(tracker_err)?;
        progress(Progress::Leased { lease_id: grant.lease_id });
        let keeper =
            LeaseKeeper::spawn(tracker, &grant, self.config.avoid.clone()).with_broker(&self.config, &grant).await?;
        // A short grant would leave products with no peer: refuse it (and
        // release it) rather than index past its end.
        let Some(mut slots) = grant.peers.get(..count as usize).map(<[PeerAddr]>::to_vec) else {
            let _ = keeper.release().await;
            return Err(RequestError::ShortGrant { lease_id: grant.lease_id, got: grant.peers.len(), wanted: count });
        };
        if let Err(e) = self.avoid_own(&keeper, grant.lease_id, &mut slots).await {
            let _ = keeper.clone().release().await;
            return Err(e);
        }
        // Two levels: group i is every seventh slot of the grant from the
        // i-th, and its first slot is slot i of the first level — it hands
        // its lease slot on to its group's first sub-slot (itself) once its
        // operands are formed, so 49 slots hold the 56 roles. The tracker
        // grants a host's slots one per round over the hosts, so on seven
        // hosts of seven slots the first level spans the seven hosts and
        // each group stays on one (its sub-job's traffic never leaves it).
        let groups: Vec<[PeerAddr; 7]> = if depth == 2 {
            (0..7).map(|i| std::array::from_fn(|j| slots[i + 7 * j].clone())).collect()
        } else {
            Vec::new()
        };
        let peers: [PeerAddr; 7] = if depth == 2 {
            std::array::from_fn(|i| groups[i][0].clone())
        } else {
            std::array::from_fn(|i| slots[i].clone())
        };
        Ok(HeldLease { grant, peers, groups, keeper })
    }

    /// The tracker's peer table, as `septet peers` shows it.
    async fn peer_table(&self) -> septet_common::Result<Vec<septet_common::proto::PeerRow>> {
        let mut client = TrackerClient::connect_with(
            &self.config.tracker,
            Role::Client,
            self.config.io_timeout,
            &self.config.security,
        )
        .await?;
        client.peers().await.map(|(_, rows)| rows)
    }

    /// The depth a job of `split` runs at: the configured one, or for
    /// `auto` (0) two levels when the job is large enough
    /// (`auto_depth2_min`) and 49 peers have a slot free now (a lease of
    /// 49 would otherwise wait, or stack slots on fewer hosts), else one.
    async fn depth_for(&self, split: Split) -> u8 {
        if self.config.depth != 0 {
            return self.config.depth;
        }
        let work = split.m as u128 * split.k as u128 * split.n as u128;
        if work < u128::from(self.config.auto_depth2_min).pow(3) {
            return 1;
        }
        match self.peer_table().await {
            Ok(rows) => {
                let free = rows.iter().filter(|r| r.state == "alive" && r.slow == 0 && r.in_use < r.slots).count();
                let depth = if free >= 49 { 2 } else { 1 };
                info!(free_peers = free, depth, "depth auto");
                depth
            }
            Err(e) => {
                debug!(error = %e, "no peer table to choose the depth by: one level");
                1
            }
        }
    }

    /// Swaps each slot on an avoided peer for a free slot elsewhere, lent
    /// into the lease by the tracker (as for a hedge); the avoided slot
    /// stays in the lease, idle, until it is released.
    async fn avoid_own(&self, keeper: &LeaseKeeper, lease_id: LeaseId, slots: &mut [PeerAddr]) -> Result<()> {
        for slot in slots.iter_mut() {
            let avoided = slot.peer_id;
            if !self.config.avoid.contains(&avoided) {
                continue;
            }
            let tracker_err = |source| RequestError::Tracker { addr: self.config.tracker.clone(), source };
            let (reply, rx) = oneshot::channel();
            keeper
                .tx
                .send(KeeperCmd::Hedge { peer_id: avoided, reply })
                .await
                .map_err(|_| tracker_err(Error::Closed("the lease keeper")))?;
            match rx.await.map_err(|_| tracker_err(Error::Closed("the lease keeper")))? {
                Ok(Some(lent)) => *slot = lent,
                Ok(None) => return Err(RequestError::OnlyAvoided { lease_id, peer_id: avoided }),
                Err(e) => return Err(tracker_err(e)),
            }
        }
        Ok(())
    }

    /// Leases seven slots and keeps them (renewing the lease) for jobs run
    /// with [`Requester::multiply_on`], until [`HeldLease::release`] or
    /// the value is dropped (its tracker connection closes, and the tracker
    /// ends the lease).
    ///
    /// # Errors
    /// [`RequestError::Tracker`] if leasing fails (or `max_lease_wait`
    /// passes), [`RequestError::ShortGrant`], [`RequestError::OnlyAvoided`].
    pub async fn lease(&self, progress: impl Fn(Progress) + Send + Sync + 'static) -> Result<HeldLease> {
        let depth = if self.config.depth == 0 { 1 } else { self.config.depth };
        self.take_lease(&(Arc::new(progress) as ProgressFn), depth).await
    }

    /// [`Requester::multiply_reporting`] on a lease already held: the
    /// lease is kept when the job ends, however it ends.
    pub async fn multiply_on<T: Element>(
        &self,
        lease: &HeldLease,
        a: Arc<Array2<T>>,
        b: Arc<Array2<T>>,
        progress: impl Fn(Progress) + Send + Sync + 'static,
    ) -> (Result<Array2<T>>, JobReport) {
        let c = Store::zeros((a.nrows(), b.ncols()));
        let (c, report) = self.multiply_stored_on(lease, Arc::new(a.into()), Arc::new(b.into()), c, progress).await;
        (c.map(Store::into_owned), report)
    }

    /// [`Requester::multiply_stored`] on a lease already held: the lease is
    /// kept when the job ends, however it ends.
    ///
    /// # Panics
    /// If C's shape is not A's rows × B's columns.
    pub async fn multiply_stored_on<T: Element>(
        &self,
        lease: &HeldLease,
        a: Arc<Store<T>>,
        b: Arc<Store<T>>,
        c: Store<T>,
        progress: impl Fn(Progress) + Send + Sync + 'static,
    ) -> (Result<Store<T>>, JobReport) {
        self.multiply_stored_with(Some(lease), a, b, c, progress).await
    }

    #[allow(clippy::too_many_arguments)]
    async fn run_job<T: Element>(
        &self,
        a: Arc<Store<T>>,
        b: Arc<Store<T>>,
        c: Store<T>,
        split: Split,
        peers: &[PeerAddr; 7],
        groups: &[[PeerAddr; 7]],
        keeper: &LeaseKeeper,
        progress: &ProgressFn,
        started: Instant,
        report: &mut JobReport,
    ) -> Result<Store<T>> {
        // Two levels always relay: the slots request their products from
        // their groups (the checks below refuse what cannot).
        let relays = !groups.is_empty() || self.config.plan.relays_job(peers, c.is_mapped());
        report.depth = if groups.is_empty() { 1 } else { 2 };
        let dials_back = groups.iter().flatten().any(crate::dialback::dials_back);
        if !groups.is_empty() && (self.config.plan == Plan::Direct || dials_back) {
            return Err(RequestError::Depth(
                "a job two levels deep relays (its slots request their products from their groups), so it cannot \
                 run with --plan direct or on peers that must dial back"
                    .into(),
            ));
        }
        let need = if relays {
            let own = septet_common::relay::slot_bytes(split, T::DTYPE);
            if groups.is_empty() {
                own
            } else {
                own.zip(septet_common::relay::delegate_bytes(split, T::DTYPE)).and_then(|(a, b)| a.checked_add(b))
            }
        } else {
            septet_common::relay::task_bytes(split, T::DTYPE)
        };
        let mut placed = peers.clone();
        self.place(&mut placed, need.unwrap_or(u64::MAX), keeper).await?;
        let peers = &placed;
        // Two levels: each group's slots hold a relayed job of the halves.
        let mut groups = groups.to_vec();
        if !groups.is_empty() {
            let (m, k, n) = split.half();
            let sub = septet_common::relay::slot_bytes(Split { m, k, n }, T::DTYPE);
            for group in &mut groups {
                self.place(group, sub.unwrap_or(u64::MAX), keeper).await?;
            }
        }
        let groups = &groups[..];
        if !relays {
            report.plan = "direct";
            let everything = peers.clone().map(Some);
            return self
                .run_direct(
                    a,
                    b,
                    c,
                    split,
                    &everything,
                    Vec::new(),
                    [true; 7],
                    &Default::default(),
                    keeper,
                    progress,
                    started,
                    report,
                )
                .await;
        }
        report.plan = "relay";
        let out_of_core = c.is_mapped();
        let c = Mutex::new(c);
        let t = Instant::now();
        // A held lease's tickets from its grant may be old: the renewals' are not.
        let peers = &peers.clone().map(|p| keeper.tickets.fresh(&p));
        let leased: [PeerId; 7] = peers.clone().map(|p| p.peer_id);
        let groups: Vec<[PeerAddr; 7]> = groups.iter().map(|g| g.clone().map(|p| keeper.tickets.fresh(&p))).collect();
        // A slot whose link is far too slow to take its panels ends the
        // relay early: relay once more, with a fresh slot in its place, if
        // the tracker has one at once (else the direct way below, as for
        // any failure). Not two levels deep, where the groups' slots cannot
        // move, nor with hedging off, nor on loopback (no link there to be
        // slow: a peer slow there is starved of CPU, which the overdue
        // rules catch); and a job relays again only once.
        let hedges = groups.is_empty() && self.config.max_hedges > 0 && !all_loopback(peers);
        let mut outcome = relay::run(
            self,
            a.clone(),
            b.clone(),
            &c,
            split,
            peers,
            &groups,
            started,
            progress,
            hedges.then_some(keeper),
        )
        .await;
        let replaced: [PeerAddr; 7];
        let mut peers = peers;
        // A slow or lost slot whose roles moved to a spare mid-relay: a hedge, as
        // below, but within the one relay; the spare holds the slot from
        // here on (for what the direct way may still need).
        let moved_to: [PeerAddr; 7];
        if let Some(mv) = outcome.report.moved.clone() {
            if mv.lost {
                // Gone, not slow: the tracker hears it as a failure.
                report.failures.push(format!(
                    "relay: slot {} ({}, peer {}): {}; its roles moved to {}",
                    mv.slot, mv.from.addr, mv.from.peer_id, mv.reason, mv.to.addr
                ));
                keeper.report_in_background(mv.from.peer_id, format!("relay: {}", mv.reason));
            } else {
                keeper.note_speed(vec![mv.from.peer_id], Vec::new()).await;
            }
            let won = outcome.verified.iter().all(|&v| v);
            report.hedges.push(HedgeReport {
                product: PRODUCTS[mv.slot].name,
                slow_peer: mv.from,
                hedge_peer: mv.to.clone(),
                reason: mv.reason,
                at_s: mv.named_s,
                winner: if won { "hedge" } else { "none" },
            });
            moved_to = {
                let mut r = peers.clone();
                r[mv.slot] = keeper.tickets.fresh(&mv.to);
                r
            };
            peers = &moved_to;
        }
        if let Some((slot, spare)) = outcome.slow.take() {
            let why = outcome.blamed.first().map(|(_, w)| w.clone()).unwrap_or_default();
            let at_s = started.elapsed().as_secs_f64();
            info!(slot, slow = %peers[slot].addr, spare = %spare.addr, %why, "relay: relaying again without a slow slot");
            report.bytes_sent += outcome.bytes_sent;
            report.bytes_received += outcome.bytes_received;
            report.verify_s += outcome.verify_s;
            report.attempts.extend(relay_attempts(&outcome, "cancelled", started));
            report
                .failures
                .push(format!("relay: slot {slot} ({}, peer {}): {why}", peers[slot].addr, peers[slot].peer_id));
            // Slow, not failed: the tracker hears it as of a hedged
            // peer (probation), not as a failure.
            keeper.note_speed(vec![peers[slot].peer_id], Vec::new()).await;
            report.hedges.push(HedgeReport {
                product: PRODUCTS[slot].name,
                slow_peer: peers[slot].clone(),
                hedge_peer: spare.clone(),
                reason: why,
                at_s,
                winner: "none",
            });
            replaced = {
                let mut r = peers.clone();
                r[slot] = keeper.tickets.fresh(&spare);
                r
            };
            peers = &replaced;
            outcome = relay::run(self, a.clone(), b.clone(), &c, split, peers, &[], started, progress, None).await;
            if outcome.verified.iter().all(|&v| v) {
                report.hedges.last_mut().expect("pushed above").winner = "hedge";
            }
        }
        // A relay whose quadrants all verified: each slot done on the peer
        // the lease gave it (not a spare's) proves that peer, as a product
        // delivered does in the direct plan — a slow strike comes off, if
        // it has any (a peer both beaten and proven counts as beaten).
        // Without this a peer on probation stayed there in a grid that
        // only relays.
        if outcome.verified.iter().all(|&v| v) {
            let proven = outcome
                .report
                .slots
                .iter()
                .zip(leased)
                .filter(|(s, leased)| s.done_s.is_some() && s.peer.peer_id == *leased)
                .map(|(_, leased)| leased)
                .collect();
            keeper.note_speed(Vec::new(), proven).await;
        }
        report.bytes_sent += outcome.bytes_sent;
        report.bytes_received += outcome.bytes_received;
        report.connect_s = (outcome.report.plan_sent_s - report.lease_wait_s).max(0.0);
        report.verified = self.config.verify;
        report.verify_s += outcome.verify_s;
        report.verify_critical_s = outcome.verify_critical_s;
        report.peers = outcome
            .report
            .slots
            .iter()
            .map(|s| PeerReport {
                product: s.product,
                peer_id: s.peer.peer_id,
                addr: s.peer.addr.clone(),
                bytes_sent: s.from_requester,
                bytes_received: s.to_requester,
                send_s: 0.0,
                compute_s: s.compute_s,
                done_at_s: s.done_s.unwrap_or(0.0),
                receive_s: 0.0,
                hedged: false,
            })
            .collect();
        report.attempts.extend(relay_attempts(&outcome, "failed", started));
        let verified = outcome.verified;
        let blamed = outcome.blamed.clone();
        if let Some(failure) = &outcome.report.failure {
            report.failures.push(format!("relay: {failure}"));
        }
        // Two levels: what each group did. Its slot checked its sub-slots'
        // work and computed what they failed at; those at fault are
        // reported to the tracker here (the lease is this requester's).
        let mut sub_blamed: Vec<PeerId> = Vec::new();
        for sl in &outcome.report.slots {
            let Some(d) = &sl.delegated else { continue };
            let name = sl.product;
            if let Some(f) = &d.failure {
                report.failures.push(format!("{name}'s group: {f}"));
            }
            for (j, why) in &d.blamed {
                let Some(sub) = d.slots.get(usize::from(*j)) else { continue };
                report.failures.push(format!(
                    "{name}.{} (peer {}, {}): {why}",
                    usize::from(*j) + 1,
                    sub.peer_id,
                    sub.addr
                ));
                if sub_blamed.contains(&sub.peer_id) {
                    continue;
                }
                sub_blamed.push(sub.peer_id);
                keeper.report_in_background(sub.peer_id, format!("relay, second level: {why}"));
            }
        }
        report.relay = Some(outcome.report);
        if let Some((slot, cause)) = outcome.unverifiable {
            return Err(RequestError::Unverifiable {
                product: PRODUCTS[slot].name,
                peer_id: peers[slot].peer_id,
                addr: peers[slot].addr.clone(),
                cause,
            });
        }
        if verified.iter().all(|&v| v) {
            debug!(elapsed = ?t.elapsed(), "relayed job complete");
            return Ok(c.into_inner());
        }
        // What the relay did not deliver is computed directly: the products
        // feeding the missing quadrants, on the peers not to blame (a
        // blamed peer's product goes to an idle peer or a fresh slot).
        report.plan = "relay+direct";
        let mut needed = [false; 7];
        for q in strassen::Quad::ALL.into_iter().filter(|q| !verified[q.index()]) {
            for (i, _) in septet_common::relay::feeders(q) {
                needed[i] = true;
            }
        }
        let mut reasons: Vec<Option<String>> = vec![None; 7];
        for (slot, why) in &blamed {
            report.failures.push(format!("slot {slot} ({}, peer {}): {why}", peers[*slot].addr, peers[*slot].peer_id));
            reasons[*slot].get_or_insert_with(|| why.clone());
        }
        let mut first: [Option<PeerAddr>; 7] = Default::default();
        let mut spare = Vec::new();
        for (i, peer) in peers.iter().enumerate() {
            match (&reasons[i], needed[i]) {
                (None, true) => first[i] = Some(peer.clone()),
                (None, false) => spare.push(peer.clone()),
                (Some(_), _) => {}
            }
        }
        // Two levels: the groups' other slots are spares too (for the
        // regroups below, and the direct plan), but not those a group
        // found at fault.
        for p in groups.iter().flat_map(|g| g.iter().skip(1)) {
            if !sub_blamed.contains(&p.peer_id) {
                spare.push(p.clone());
            }
        }
        // A blamed peer whose product is needed is reported as the redo of
        // that product is handed out; the others are reported here.
        let blamed_peers: [Option<(PeerAddr, String)>; 7] =
            std::array::from_fn(|i| reasons[i].clone().filter(|_| needed[i]).map(|r| (peers[i].clone(), r)));
        for (i, peer) in peers.iter().enumerate().filter(|&(i, _)| reasons[i].is_some() && !needed[i]) {
            let why = reasons[i].clone().unwrap_or_default();
            keeper.report_in_background(peer.peer_id, format!("relay: {why}"));
        }
        info!(missing = ?strassen::Quad::ALL.iter().filter(|q| !verified[q.index()]).map(|q| q.suffix()).collect::<Vec<_>>(), "relay incomplete: computing the rest");
        let relay_peers = std::mem::take(&mut report.peers);
        // The products needed are added into a C of their own (quadrants
        // the relay delivered get products added too): in a scratch file
        // when C is in one.
        let mut scratch = Store::zeroed_in(out_of_core.then(std::env::temp_dir).as_deref(), (split.m, split.n))
            .map_err(|e| RequestError::Internal(format!("cannot make a scratch file for C: {e}")))?;
        // Two levels: each over seven healthy slots, as its group would
        // have; what that does not deliver, and everything one level deep,
        // the direct way.
        if !groups.is_empty() {
            let done = self.regroup(&a, &b, &mut scratch, split, needed, &mut spare, keeper, started, report).await?;
            for i in (0..7).filter(|&i| done[i]) {
                needed[i] = false;
                if let Some((peer, why)) = &blamed_peers[i] {
                    keeper.report_in_background(peer.peer_id, format!("relay: {why}"));
                }
                spare.extend(first[i].take());
            }
            report.plan = if needed.contains(&true) { "relay+regroup+direct" } else { "relay+regroup" };
        }
        let scratch = if needed.contains(&true) {
            self.run_direct(
                a,
                b,
                scratch,
                split,
                &first,
                spare,
                needed,
                &blamed_peers,
                keeper,
                progress,
                started,
                report,
            )
            .await?
        } else {
            scratch
        };
        let mut direct_peers = std::mem::replace(&mut report.peers, relay_peers);
        direct_peers.retain(|p| PRODUCTS.iter().position(|q| q.name == p.product).is_some_and(|i| needed[i]));
        for p in direct_peers {
            if let Some(slot) = report.peers.iter_mut().find(|r| r.product == p.product) {
                *slot = p;
            }
        }
        let mut c = c.into_inner();
        let (mh, _, nh) = split.half();
        for q in strassen::Quad::ALL.into_iter().filter(|q| !verified[q.index()]) {
            strassen::quadrant_mut(c.view_mut(), q, mh, nh).assign(&strassen::quadrant(scratch.view(), q, mh, nh));
        }
        Ok(c)
    }

    /// Two levels: computes each product in `todo` the way its group would
    /// have, split in seven over seven slots taken from `spare` and relayed
    /// (all at once, on disjoint slots, while seven are left), and adds
    /// each that comes back whole and checked into `c`. Returns which were;
    /// the rest are left to the direct plan. The slots go back to `spare`
    /// unless they were found at fault, which are reported to the tracker.
    #[allow(clippy::too_many_arguments)]
    async fn regroup<T: Element>(
        &self,
        a: &Arc<Store<T>>,
        b: &Arc<Store<T>>,
        c: &mut Store<T>,
        split: Split,
        todo: [bool; 7],
        spare: &mut Vec<PeerAddr>,
        keeper: &LeaseKeeper,
        started: Instant,
        report: &mut JobReport,
    ) -> Result<[bool; 7]> {
        let spill = c.is_mapped().then(std::env::temp_dir);
        let mut tasks = tokio::task::JoinSet::new();
        for i in (0..7).filter(|&i| todo[i]) {
            if spare.len() < 7 {
                break;
            }
            // With their newest tickets: the lease may have been renewed
            // since the relay began.
            let group: [PeerAddr; 7] = spare
                .drain(..7)
                .map(|p| keeper.tickets.fresh(&p))
                .collect::<Vec<_>>()
                .try_into()
                .expect("seven drained");
            let (requester, a, b, spill) = (self.clone(), a.clone(), b.clone(), spill.clone());
            tasks.spawn(async move {
                let at = started.elapsed();
                let outcome = regroup_one(&requester, a, b, split, i, &group, spill, started).await;
                (i, group, outcome, at, started.elapsed())
            });
        }
        let mut done = [false; 7];
        while let Some(joined) = tasks.join_next().await {
            let (i, group, outcome, at, end) =
                joined.map_err(|e| RequestError::Internal(format!("a regrouped product panicked: {e}")))?;
            let name = PRODUCTS[i].name;
            let (product, failure, blamed, bytes) = match outcome {
                Ok((product, o)) => (product, o.report.failure, o.blamed, (o.bytes_sent, o.bytes_received)),
                Err(e) => (None, Some(e), Vec::new(), (0, 0)),
            };
            for (slot, why) in &blamed {
                let peer = &group[*slot];
                report
                    .failures
                    .push(format!("{name} regrouped, slot {slot} ({}, peer {}): {why}", peer.addr, peer.peer_id));
                keeper.report_in_background(peer.peer_id, format!("relay, regrouped: {why}"));
            }
            spare.extend(
                group.iter().enumerate().filter(|(j, _)| !blamed.iter().any(|(s, _)| s == j)).map(|(_, p)| p.clone()),
            );
            if let Some(m) = &product {
                strassen::accumulate(c.view_mut(), m.view(), &PRODUCTS[i], split)
                    .map_err(|e| RequestError::Internal(format!("adding regrouped {name} into C: {e}")))?;
                done[i] = true;
            } else if let Some(f) = &failure {
                report.failures.push(format!("{name} regrouped: {f}"));
            }
            report.bytes_sent += bytes.0;
            report.bytes_received += bytes.1;
            // On the timeline: one bar a product, from forming its operands
            // to its last quadrant checked.
            report.attempts.push(AttemptReport {
                product: name,
                peer: PeerAddr { ticket: None, ..group[0].clone() },
                kind: "regroup",
                started_s: at.as_secs_f64(),
                send_start_s: None,
                sent_s: Some(at.as_secs_f64()),
                computed_s: None,
                receive_start_s: None,
                ended_s: end.as_secs_f64(),
                outcome: if product.is_some() { "verified" } else { "failed" },
                error: failure.clone(),
            });
            report.regrouped.push(Regrouped {
                product: name,
                peers: group.iter().map(|p| PeerAddr { ticket: None, ..p.clone() }).collect(),
                verified: product.is_some(),
                failure,
                bytes_sent: bytes.0,
                bytes_received: bytes.1,
                took_s: (end - at).as_secs_f64(),
            });
        }
        report.regrouped.sort_by_key(|r| r.product);
        Ok(done)
    }

    /// Swaps each slot whose peer cannot hold `need` bytes (its memory, as
    /// registered with the tracker, over its slots) for a free slot lent
    /// into the lease on another peer, as for a hedge; the swapped slot
    /// stays in the lease, idle, until it is released. Peers the tracker's
    /// table does not know (a sibling cluster's) or that said nothing of
    /// their memory are taken to fit: they refuse a task that does not,
    /// before reading it, and the job redoes it elsewhere.
    async fn place(&self, peers: &mut [PeerAddr; 7], need: u64, keeper: &LeaseKeeper) -> Result<()> {
        let rows = match self.peer_table().await {
            Ok(rows) => rows,
            Err(e) => {
                debug!(error = %e, "no peer table to place the job by; every peer taken to fit");
                return Ok(());
            }
        };
        let room = |p: &PeerAddr| {
            rows.iter()
                .find(|r| r.peer_id == p.peer_id && r.addr == p.addr && r.memory_mib > 0)
                .map_or(u64::MAX, |r| (r.memory_mib << 20) / u64::from(r.slots.max(1)))
        };
        for slot in peers.iter_mut() {
            let mut tries = 0;
            while room(slot) < need {
                let no_room = RequestError::NoRoom {
                    peer_id: slot.peer_id,
                    addr: slot.addr.clone(),
                    have_mib: room(slot) >> 20,
                    need_mib: need.div_ceil(1 << 20),
                };
                tries += 1;
                if tries > PEERS_PER_LEASE {
                    return Err(no_room);
                }
                info!(peer = %slot.addr, have_mib = room(slot) >> 20, need_mib = need >> 20, "a leased slot cannot hold its share of the job: asking for another");
                let (reply, rx) = oneshot::channel();
                if keeper.tx.send(KeeperCmd::Hedge { peer_id: slot.peer_id, reply }).await.is_err() {
                    return Err(no_room);
                }
                match rx.await {
                    Ok(Ok(Some(lent))) => *slot = lent,
                    _ => return Err(no_room),
                }
            }
        }
        Ok(())
    }

    /// The direct plan for the products marked `needed`: each on its
    /// `first` peer, or — if it has none — as a redo of its attempt on the
    /// peer `failed` names (with why), on a `spare` peer or a fresh slot.
    /// Returns a C holding (at least) the quadrants those products feed.
    #[allow(clippy::too_many_arguments)]
    async fn run_direct<T: Element>(
        &self,
        a: Arc<Store<T>>,
        b: Arc<Store<T>>,
        c: Store<T>,
        split: Split,
        first: &[Option<PeerAddr>; 7],
        spare: Vec<PeerAddr>,
        needed: [bool; 7],
        failed: &[Option<(PeerAddr, String)>; 7],
        keeper: &LeaseKeeper,
        progress: &ProgressFn,
        started: Instant,
        report: &mut JobReport,
    ) -> Result<Store<T>> {
        // Products are exactly `product_len` bytes; 1 MiB leaves room for error messages.
        let product_len = BlocksHeader {
            task_id: TaskId(0),
            op: BlockOp::Product,
            dtype: T::DTYPE,
            shapes: vec![split.product_shape()],
        }
        .frame_len()
        .ok_or_else(|| RequestError::Internal("product too large".into()))?;
        let limits = ConnLimits {
            max_frame_len: product_len.max(1 << 20),
            // A worker answers its handshake at once; one that does not
            // within the silence timeout is as gone as one that stops talking.
            handshake_timeout: self.config.silence_timeout.min(self.config.io_timeout),
            stall_timeout: Some(self.config.silence_timeout.min(self.config.io_timeout)),
            // Workers say `Working` every second: silence means gone.
            idle_timeout: Some(self.config.silence_timeout),
            security: self.config.security.clone(),
            budget: None,
        };

        // Prepare the Freivalds check while the operands travel.
        let mut verify_prepare = None;
        let check = if self.config.verify {
            let r = Arc::new(Verifier::<T>::draw(split, self.config.verify_rounds));
            let (tx, prepared) = watch::channel(None);
            let (a, b, r_owned) = (a.clone(), b.clone(), Array2::clone(&r));
            let spent = Arc::new(Mutex::new(Duration::ZERO));
            let took = spent.clone();
            tokio::task::spawn_blocking(move || {
                let t = Instant::now();
                let v =
                    Verifier::with_vectors(a.view(), b.view(), split, r_owned).map(Arc::new).map_err(|e| e.to_string());
                *took.lock() = t.elapsed();
                let _ = tx.send(Some(v));
            });
            verify_prepare = Some(spent);
            Some(Check { r, prepared })
        } else {
            None
        };
        let job = Arc::new(Job {
            a,
            b,
            split,
            // A job out of core holds one product at a time (a quarter of C).
            receiving: Semaphore::new(if c.is_mapped() { 1 } else { self.config.max_receiving.max(1) }),
            spill: c.is_mapped().then(std::env::temp_dir),
            spill_above: self.config.spill_above,
            c: Mutex::new(c),
            reply_deadline: self.product_deadline(split),
            limits: limits.clone(),
            check,
            verify_time: Mutex::new(Duration::ZERO),
            started,
            folded: Default::default(),
            broker: keeper.broker.clone(),
            tickets: keeper.tickets.clone(),
        });

        // Every attempt — first, redo or hedge — runs under the dispatch loop.
        Dispatch::new(self, keeper, job.clone(), progress.clone()).run(first, spare, needed, failed, report).await?;
        report.verified = job.check.is_some();
        let prepare = verify_prepare.map(|p| *p.lock()).unwrap_or_default();
        report.verify_s = (prepare + *job.verify_time.lock()).as_secs_f64();
        debug!(elapsed = ?job.started.elapsed(), "job complete");
        // Taken, not unwrapped: a cancelled hedge race's loser may still be
        // checking its copy on a blocking thread (it holds the job, and
        // finds its product folded already, so it never touches C).
        let c = std::mem::replace(&mut *job.c.lock(), Store::zeros((0, 0)));
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use septet_common::Matrix;

    /// A held lease's jobs: each job's verdicts reach the release, not only
    /// the last job's; a peer beaten in any job is reported beaten.
    #[test]
    fn every_jobs_verdicts_are_reported_at_release() {
        let id = PeerId;
        let mut v = Verdicts::default();
        assert_eq!(v.take(), None, "an unused lease reports nothing");
        v.add(vec![id(3)], vec![id(1), id(2)]);
        v.add(vec![], vec![id(1), id(4)]);
        v.add(vec![id(2)], vec![id(5)]);
        assert_eq!(v.take(), Some((vec![id(3), id(2)], vec![id(1), id(4), id(5)])));
        assert_eq!(v.take(), None, "taken once");
        v.add(vec![], vec![]);
        assert_eq!(v.take(), Some((vec![], vec![])), "a job with no verdicts still reports");
    }

    /// M·R formed block by block, whatever the read sizes, equals the one-shot
    /// product; frames that are not one product of the right shape and dtype
    /// are left alone.
    #[test]
    fn product_probe_matches_the_one_shot_product_for_any_read_pattern() {
        let (rows, cols) = (150, 37);
        let m = Array2::from_shape_fn((rows, cols), |(i, j)| ((i * 7 + j * 3) % 11) as f64 - 5.0);
        let r = Arc::new(Array2::from_shape_fn((cols, 2), |(i, j)| if (i + j) % 2 == 0 { 0.75 } else { -0.5 }));
        let want = septet_common::matrix::matmul(m.view(), r.view(), faer::Par::Seq).unwrap();
        let bytes = rows * cols * 8;
        for step in [1usize, 8 * cols - 3, 8 * cols * 64, 8 * cols * 65 + 5, bytes] {
            let mut probe = ProductProbe::new(r.clone(), (rows, cols));
            let mats = [Matrix::F64(m.clone())];
            let mut filled = 0;
            while filled < bytes {
                filled = (filled + step).min(bytes);
                probe.advance(&mats, filled);
            }
            assert!(probe.rows_done >= rows - PROBE_ROWS, "step {step}: most rows formed during the read");
            assert_eq!(probe.finish(m.view()).unwrap(), want, "step {step}");
        }
        // Not a product of this job: nothing formed early, and finish refuses a wrong shape.
        let mut probe = ProductProbe::new(r.clone(), (rows, cols));
        probe.advance(&[Matrix::F32(Array2::zeros((rows, cols)))], bytes);
        probe.advance(&[Matrix::F64(Array2::zeros((rows, cols + 1)))], bytes);
        probe.advance(&[Matrix::F64(m.clone()), Matrix::F64(m.clone())], bytes);
        assert_eq!(probe.rows_done, 0);
        assert!(probe.finish(Array2::zeros((rows + 1, cols)).view()).is_err());
    }
}
