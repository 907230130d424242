//! Federation: trackers of separate clusters lend each other slots.
//!
//! A tracker started with `--federate ADDR,…` keeps a control link to each
//! sibling tracker and asks it every second how it is
//! ([`FederationRequest::Status`]: its cluster, free slots, queue). When a
//! lease asks for more slots than its own cluster has free (and nobody is
//! queued ahead of it), the tracker takes the free local slots and borrows
//! the rest from the sibling with the most free slots:
//!
//! ```text
//!  requester ──Lease 7──▶ tracker N ──Lend 5──▶ tracker M   (M's FIFO queue, like any lease;
//!      ▲                   │  takes its 2 free                 the requester is told its place)
//!      └──── Leased ───────┘  + M's 5, one federated lease
//!  requester ═══ matrices, directly ═══▶ N's 2 peers and M's 5 peers
//! ```
//!
//! The requester sees one lease (its id carries N's cluster tag, its peers'
//! ids from M carry M's place in N's sibling list in their top bits) and
//! renews, releases, reports and hedges it at its own tracker as always;
//! the tracker forwards what concerns M's part. M's part is a detached lease
//! at M with M's own TTL: if N disappears it lapses and M reclaims its
//! slots. Matrices never cross a tracker.
//!
//! Trust: the siblings authenticate with the cluster secret that every
//! tracker, worker and requester of the federation shares — a requester of
//! N computes on M's workers directly, so they must accept it; a separate
//! federation secret would guard nothing that secret does not.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use septet_common::conn::ConnLimits;
use septet_common::proto::{
    FederationReply, FederationRequest, LeaseGrant, LeaseId, PeerAddr, PeerId, PeerRow, Rendezvous, Reply,
    TrackerReply, TrackerRequest, DIAL_BACK,
};
use septet_common::{Connection, Role};
use serde::Serialize;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::metrics::BrokerOutcome;
use crate::server::{submit, Submission};
use crate::state::{Caller, ConnId, Grant, LeaseOutcome, LeaseToken, Op};
use crate::{Error, Result, Tracker};

/// How often a sibling is asked how it is, by default.
pub const POLL_INTERVAL: Duration = Duration::from_secs(1);
/// A borrowed peer's id: the sibling's index (1-based) above this bit, the
/// lender's own id below.
const PEER_TAG_SHIFT: u32 = 48;
/// Set in every federated lease id (the cluster's tag sits below it).
const FEDERATED: u64 = 1 << 62;

/// A sibling tracker, as the last poll found it.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SiblingStatus {
    /// Where it listens (as given to `--federate`).
    pub addr: String,
    /// Its cluster, once it answered.
    pub cluster: Option<String>,
    /// Whether the last poll was answered.
    pub up: bool,
    /// Its free slots, queued requests and slots, at the last poll.
    pub free: u32,
    /// Lease requests waiting in its queue.
    pub queued: u32,
    /// Slots on its alive peers.
    pub slots: u32,
    /// Slots borrowed from it by leases in force here.
    pub borrowed: u32,
    /// Why the last poll failed, if it did.
    pub error: Option<String>,
    /// It cannot be dialled from here: it linked back (a NAT or firewall
    /// between), and its peers are reached by having them dial.
    pub reverse: bool,
}

struct Sibling {
    status: Mutex<SiblingStatus>,
    /// The control link (polls and forwarded lease requests): made on
    /// demand, or — for a sibling behind a NAT — the reverse link it opened.
    control: Arc<tokio::sync::Mutex<Option<Connection>>>,
    /// Polls in a row that failed.
    failures: std::sync::atomic::AtomicU32,
}

impl Sibling {
    fn new(status: SiblingStatus, control: Option<Connection>) -> Arc<Self> {
        Arc::new(Self {
            status: Mutex::new(status),
            control: Arc::new(tokio::sync::Mutex::new(control)),
            failures: Default::default(),
        })
    }

    /// Whether this tracker cannot dial it (it linked back to us).
    fn reverse(&self) -> bool {
        self.status.lock().reverse
    }
}

/// What a tracker needs to serve a sibling's requests on a link it dialled
/// (see [`Federation::set_server`]).
#[derive(Clone)]
pub(crate) struct Server {
    /// Where this tracker listens (told to siblings).
    pub listen: std::net::SocketAddr,
    /// Weak: the batch loop ends when the server's connections are gone.
    pub ops: mpsc::WeakUnboundedSender<Submission>,
    pub next_conn: Arc<AtomicU64>,
    pub cancel: CancellationToken,
    /// The links this tracker splices.
    pub splices: Arc<crate::splice::Splices>,
}

/// The part of a federated lease a sibling lent.
#[derive(Debug, Clone)]
struct Part {
    sibling: usize,
    lease_id: LeaseId,
    token: String,
    slots: u32,
}

/// A lease made of local slots and slots borrowed from a sibling.
#[derive(Debug)]
struct FedLease {
    holder: ConnId,
    /// Set for a lease that ends with its connection.
    owner: Option<ConnId>,
    token: LeaseToken,
    /// The local part: its lease here, and that lease's token.
    local: Option<(LeaseId, LeaseToken)>,
    remote: Part,
    expires_at: Instant,
}

/// Where a request about one peer of a federated lease is carried out.
enum Holder {
    /// At the lender, under its own ids and the borrowed part's token.
    Lender { sibling: usize, lease_id: LeaseId, peer_id: PeerId, token: Option<String> },
    /// Here, on the local part's lease.
    Local { lease_id: LeaseId, peer_id: PeerId, caller: Caller },
}

/// The link a borrowed part is asked for on.
enum LenderLink {
    /// A connection of its own.
    Own(Box<Connection>),
    /// A reverse sibling's link back, held until the grant.
    Shared(tokio::sync::OwnedMutexGuard<Option<Connection>>),
}

impl LenderLink {
    fn conn(&mut self) -> &mut Connection {
        match self {
            LenderLink::Own(c) => c,
            LenderLink::Shared(g) => g.as_mut().expect("checked when taken"),
        }
    }

    /// The exchange broke off: a shared link is dropped (the sibling links
    /// back again).
    fn broken(&mut self) {
        if let LenderLink::Shared(g) = self {
            **g = None;
        }
    }
}

/// How a lease request that borrows starts.
pub enum Borrowed {
    /// Granted at once.
    Granted(Grant),
    /// The lender queued it: its place there; the grant (or why none
    /// came) arrives on `wait`.
    Waiting {
        /// 1-based place in the lender's queue.
        position: u32,
        /// Free slots here.
        free: u32,
        /// The outcome.
        wait: oneshot::Receiver<Result<Grant>>,
    },
}

/// The tracker's federation: its siblings and the leases that borrow from them.
pub struct Federation {
    cluster: String,
    tag: u64,
    /// Configured (`--federate`) first, then those that linked back; an
    /// entry's index never changes (borrowed peers' ids carry it).
    siblings: Mutex<Vec<Arc<Sibling>>>,
    leases: Mutex<HashMap<LeaseId, FedLease>>,
    next: AtomicU64,
    server: std::sync::OnceLock<Server>,
    /// Siblings this tracker is serving on a reverse link now.
    serving: Mutex<std::collections::HashSet<String>>,
    /// Whether this tracker could dial a sibling that polls it (by
    /// cluster; `None` while a try runs), and when that was found.
    dialable: Arc<Mutex<HashMap<String, Dialable>>>,
}

/// Whether a sibling could be dialled (`None`: trying), and since when.
type Dialable = (Option<bool>, Instant);

impl std::fmt::Debug for Federation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Federation")
            .field("cluster", &self.cluster)
            .field("siblings", &self.siblings.lock().len())
            .finish()
    }
}

/// A cluster name's 16-bit tag (FNV-1a), carried in its federated lease ids.
pub fn cluster_tag(cluster: &str) -> u64 {
    let mut h: u32 = 0x811c_9dc5;
    for b in cluster.bytes() {
        h = (h ^ u32::from(b)).wrapping_mul(0x0100_0193);
    }
    u64::from((h >> 16) ^ (h & 0xffff))
}

/// A peer id as this tracker hands it out: `sibling`'s index tagged above a
/// lender's own id.
fn tag_peer(sibling: usize, peer: PeerAddr) -> PeerAddr {
    PeerAddr { peer_id: PeerId(((sibling as u64 + 1) << PEER_TAG_SHIFT) | peer.peer_id.0), ..peer }
}

/// Which sibling lent `peer` (None: a local peer), and its id there.
fn untag(peer: PeerId) -> (Option<usize>, PeerId) {
    match peer.0 >> PEER_TAG_SHIFT {
        0 => (None, peer),
        s => (Some(s as usize - 1), PeerId(peer.0 & ((1 << PEER_TAG_SHIFT) - 1))),
    }
}

impl Federation {
    /// The federation of cluster `cluster` with the trackers at `siblings`.
    pub fn new(cluster: &str, siblings: &[String]) -> Self {
        let siblings = siblings
            .iter()
            .map(|addr| Sibling::new(SiblingStatus { addr: addr.clone(), ..Default::default() }, None))
            .collect();
        Self {
            cluster: cluster.to_string(),
            tag: cluster_tag(cluster),
            siblings: Mutex::new(siblings),
            leases: Mutex::new(HashMap::new()),
            next: AtomicU64::new(0),
            server: std::sync::OnceLock::new(),
            serving: Mutex::new(Default::default()),
            dialable: Arc::default(),
        }
    }

    /// How to serve siblings' requests on links this tracker dialled (set
    /// once by the server).
    pub(crate) fn set_server(&self, server: Server) {
        let _ = self.server.set(server);
    }

    fn sibling(&self, i: usize) -> Arc<Sibling> {
        self.siblings.lock()[i].clone()
    }

    fn count(&self) -> usize {
        self.siblings.lock().len()
    }

    /// Where the peer of a `Broker` request dials: the requester's
    /// listener `addr` as asked, or — for a meeting asked of this tracker
    /// (an empty `addr`) — this tracker, once it expects the two legs.
    /// (An unspecified listen address is completed by the sibling that
    /// passes the order on, with the address this tracker reached it from.)
    pub(crate) fn rendezvous(&self, addr: String, via: Option<Rendezvous>) -> Result<String> {
        let Some(via) = via else { return Ok(addr) };
        if !addr.is_empty() {
            return Ok(addr);
        }
        let server = self.server.get().ok_or_else(|| Error::Invalid("this tracker brokers no meetings".into()))?;
        server.splices.expect(via)?;
        Ok(server.listen.to_string())
    }

    /// Whether a sibling of cluster `cluster`, listening at `listen` and
    /// polling from `from`, should open a reverse link: this tracker has
    /// no working link to it, no configured sibling is still unknown (it
    /// may be that one), and it cannot dial `listen` (tried in the
    /// background, again after a minute; until known, no).
    pub fn wants_reverse(&self, tracker: &Tracker, cluster: &str, listen: &str, from: std::net::SocketAddr) -> bool {
        if !self.unlinked(cluster) {
            return false;
        }
        let mut known = self.dialable.lock();
        match known.get(cluster) {
            Some((Some(ok), at)) if at.elapsed() < Duration::from_secs(60) => return !ok,
            Some((None, _)) => return false,
            _ => {}
        }
        known.insert(cluster.to_string(), (None, Instant::now()));
        let addr = match listen.parse::<std::net::SocketAddr>() {
            Ok(a) if a.ip().is_unspecified() => std::net::SocketAddr::new(from.ip(), a.port()).to_string(),
            _ => listen.to_string(),
        };
        let (dialable, tracker, cluster) = (self.dialable.clone(), tracker.clone(), cluster.to_string());
        tokio::spawn(async move {
            let ok = connect(&tracker, &addr, "the sibling tracker").await.is_ok();
            if !ok {
                info!(%cluster, %addr, "federation: cannot dial a sibling that polls us; it will be asked to link back");
            }
            dialable.lock().insert(cluster, (Some(ok), Instant::now()));
        });
        false
    }

    /// Whether this tracker has no working link to cluster `cluster`, and
    /// no configured sibling is still unknown (it may be that one).
    fn unlinked(&self, cluster: &str) -> bool {
        let siblings = self.siblings.lock();
        let linked = siblings.iter().any(|s| {
            let st = s.status.lock();
            st.up && st.cluster.as_deref() == Some(cluster)
        });
        let pending = siblings.iter().any(|s| {
            let st = s.status.lock();
            !st.reverse && st.cluster.is_none() && s.failures.load(Ordering::Relaxed) < 3
        });
        !linked && !pending
    }

    /// A sibling of cluster `cluster` linked back on `conn`: from now on
    /// this tracker sends it requests there (its entry by cluster name, or
    /// a new one).
    pub(crate) async fn adopt(&self, cluster: String, conn: Connection) -> Result<()> {
        let peer = conn.peer;
        let existing = self.siblings.lock().iter().position(|s| s.status.lock().cluster.as_deref() == Some(&cluster));
        let sibling = match existing {
            Some(i) => {
                let s = self.sibling(i);
                if s.status.lock().up && !s.reverse() {
                    return Err(Error::Invalid(format!("cluster {cluster} is linked already")));
                }
                s
            }
            None => {
                let status = SiblingStatus {
                    addr: format!("{peer} (linked back)"),
                    cluster: Some(cluster.clone()),
                    reverse: true,
                    ..Default::default()
                };
                let s = Sibling::new(status, None);
                self.siblings.lock().push(s.clone());
                s
            }
        };
        *sibling.control.lock().await = Some(conn);
        sibling.status.lock().reverse = true;
        info!(%cluster, %peer, "federation: a sibling behind a NAT linked back");
        Ok(())
    }

    /// This tracker's cluster.
    pub fn cluster(&self) -> &str {
        &self.cluster
    }

    /// The siblings as last seen.
    pub fn siblings(&self) -> Vec<SiblingStatus> {
        self.siblings.lock().iter().map(|s| s.status.lock().clone()).collect()
    }

    /// Federated leases in force.
    pub fn leases(&self) -> usize {
        self.leases.lock().len()
    }

    /// Whether `lease_id` is a federated lease of this tracker's.
    pub fn owns(&self, lease_id: LeaseId) -> bool {
        lease_id.0 & FEDERATED != 0 && self.leases.lock().contains_key(&lease_id)
    }

    /// One exchange with sibling `i` on its control link (made if need be;
    /// dropped if the exchange fails).
    async fn call(
        &self,
        tracker: &Tracker,
        i: usize,
        msg: TrackerRequest,
        expected: &'static str,
    ) -> Result<TrackerReply> {
        let config = tracker.config();
        let sibling = self.sibling(i);
        let mut control = sibling.control.lock().await;
        if control.is_none() {
            if sibling.reverse() {
                return Err(Error::Invalid("the sibling's link back is down; it links again when it can".into()));
            }
            let addr = sibling.status.lock().addr.clone();
            *control = Some(connect(tracker, &addr, "the sibling tracker").await?);
        }
        let conn = control.as_mut().expect("just made");
        match conn.request::<_, TrackerReply>(&msg, expected, config.io_timeout).await {
            Ok(reply) => Ok(reply),
            Err(e) => {
                if !matches!(e, septet_common::Error::Remote { .. }) {
                    *control = None;
                }
                Err(e.into())
            }
        }
    }

    /// Polls every sibling every `sibling_poll` until `cancel`.
    pub async fn poll_loop(self: Arc<Self>, tracker: Tracker, cancel: CancellationToken) {
        let mut tick = tokio::time::interval(tracker.config().sibling_poll);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tick.tick() => {}
            }
            let mut polls = tokio::task::JoinSet::new();
            for i in 0..self.count() {
                let (me, tracker) = (self.clone(), tracker.clone());
                polls.spawn(async move { me.poll(&tracker, i).await });
            }
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = async { while polls.join_next().await.is_some() {} } => {}
            }
            let up = self.siblings.lock().iter().filter(|s| s.status.lock().up).count();
            tracker.metrics().set_siblings_up(up as i64);
        }
    }

    async fn poll(self: &Arc<Self>, tracker: &Tracker, i: usize) {
        let sibling = self.sibling(i);
        // A borrowed part waiting in a reverse sibling's queue holds its
        // link: skip the poll rather than wait.
        if sibling.reverse() && sibling.control.try_lock().is_err() {
            return;
        }
        let listen = self.server.get().map(|s| s.listen.to_string()).unwrap_or_default();
        let msg = TrackerRequest::Federation(FederationRequest::Status { cluster: self.cluster.clone(), listen });
        let reply = self.call(tracker, i, msg, "FederationStatus").await;
        let mut status = sibling.status.lock();
        if reply.is_ok() {
            sibling.failures.store(0, Ordering::Relaxed);
        } else {
            sibling.failures.fetch_add(1, Ordering::Relaxed);
        }
        match reply {
            Ok(TrackerReply::Federation(FederationReply::Status { cluster, free, slots, queued, reverse })) => {
                if !status.up {
                    info!(sibling = %status.addr, %cluster, free, "federation: sibling up");
                }
                *status = SiblingStatus {
                    addr: status.addr.clone(),
                    cluster: Some(cluster),
                    up: true,
                    free,
                    queued,
                    slots,
                    borrowed: status.borrowed,
                    error: None,
                    reverse: status.reverse,
                };
                if reverse && !status.reverse {
                    let addr = status.addr.clone();
                    drop(status);
                    self.link_back(tracker, addr);
                }
            }
            Ok(other) => {
                status.up = false;
                status.error = Some(format!("answered {}", septet_common::proto::Control::kind(&other)));
            }
            Err(e) => {
                if status.up {
                    warn!(sibling = %status.addr, error = %e, "federation: sibling down");
                }
                status.up = false;
                status.error = Some(e.to_string());
            }
        }
    }

    /// The sibling to borrow `need` slots from: up, nobody queued there,
    /// enough free; the most free first.
    fn lender(&self, need: u32) -> Option<usize> {
        let siblings = self.siblings.lock();
        (0..siblings.len())
            .filter_map(|i| {
                let s = siblings[i].status.lock();
                (s.up && s.queued == 0 && s.free >= need).then_some((s.free, i))
            })
            .max()
            .map(|(_, i)| i)
    }

    /// Serves a lease of `count` slots by borrowing, when this cluster has
    /// too few free and nobody waits here: `None` when it does not borrow
    /// (the lease then queues here as always).
    pub(crate) async fn lease(
        self: &Arc<Self>,
        tracker: &Tracker,
        ops: &mpsc::UnboundedSender<Submission>,
        count: u32,
        conn: ConnId,
        detached: bool,
    ) -> Option<Borrowed> {
        if self.count() == 0 {
            return None;
        }
        let levels = tracker.levels().ok()?;
        let free = levels.slots_free as u32;
        if levels.queue_length > 0 || free >= count {
            return None;
        }
        let need = count - free;
        let i = self.lender(need)?;
        let started = Instant::now();
        // The free local slots first: nobody is queued, so they are granted
        // at once (or, if another request just took them, this one queues
        // here like any other).
        let local = if free > 0 {
            match submit(ops, Op::Lease { count: free, conn, detached }).await.ok()?.into_lease() {
                LeaseOutcome::Granted(g) => Some(g),
                LeaseOutcome::Queued(mut t) => {
                    tracker.cancel_wait(t.waiter_id);
                    match t.grant.try_recv() {
                        Ok(g) => Some(g),
                        Err(_) => return None,
                    }
                }
            }
        } else {
            None
        };
        let sibling = self.sibling(i);
        let addr = sibling.status.lock().addr.clone();
        let lend = TrackerRequest::Federation(FederationRequest::Lend { count: need, cluster: self.cluster.clone() });
        let asked = async {
            // A sibling behind a NAT is asked on its link back, held until
            // the grant; any other on a link of the request's own.
            let mut link = if sibling.reverse() {
                let guard = sibling.control.clone().lock_owned().await;
                if guard.is_none() {
                    return Err(Error::Invalid("the sibling's link back is down".into()));
                }
                LenderLink::Shared(guard)
            } else {
                LenderLink::Own(Box::new(connect(tracker, &addr, "the sibling tracker").await?))
            };
            let reply =
                link.conn().request::<_, TrackerReply>(&lend, "Leased or Waiting", tracker.config().io_timeout).await;
            let reply = reply.inspect_err(|_| link.broken())?;
            Ok::<_, Error>((link, reply))
        };
        let (lender, reply) = match asked.await {
            Ok(x) => x,
            Err(e) => {
                warn!(sibling = %addr, error = %e, "federation: could not borrow; the lease waits here instead");
                self.give_back_local(ops, &local).await;
                return None;
            }
        };
        match reply {
            TrackerReply::Leased(remote) => {
                Some(Borrowed::Granted(self.compose(tracker, local, i, remote, conn, detached, started)))
            }
            TrackerReply::Waiting { position, .. } => {
                info!(sibling = %addr, position, need, "federation: the lender queued the borrowed part");
                let (tx, wait) = oneshot::channel();
                let (me, tracker, ops) = (self.clone(), tracker.clone(), ops.clone());
                tokio::spawn(async move {
                    // The whole link, not just its reader: dropping the
                    // writer would close it, and the lender drop the request.
                    let mut lender = lender;
                    let mut tx = tx;
                    let got = tokio::select! {
                        got = lender.conn().reader.read_message::<TrackerReply>("Leased") => got,
                        // The requester gave up: closing the link takes the
                        // request out of the lender's queue.
                        () = tx.closed() => {
                            lender.broken();
                            me.give_back_local(&ops, &local).await;
                            return;
                        }
                    };
                    if got.is_err() {
                        lender.broken();
                    }
                    drop(lender);
                    let out = match got {
                        Ok(TrackerReply::Leased(remote)) => {
                            Ok(me.compose(&tracker, local, i, remote, conn, detached, started))
                        }
                        Ok(other) => Err((Error::Protocol(other.into_error("Leased")), local)),
                        Err(e) => Err((Error::Protocol(e), local)),
                    };
                    let out = match out {
                        Ok(grant) => Ok(grant),
                        Err((e, local)) => {
                            warn!(error = %e, "federation: the lender did not grant the borrowed part");
                            me.give_back_local(&ops, &local).await;
                            Err(e)
                        }
                    };
                    if let Err(Ok(grant)) = tx.send(out) {
                        // The requester left just now.
                        let _ = me.release(&tracker, &ops, grant.lease_id).await;
                    }
                });
                Some(Borrowed::Waiting { position, free, wait })
            }
            other => {
                warn!(sibling = %addr, reply = septet_common::proto::Control::kind(&other), "federation: unexpected answer to Lend");
                self.give_back_local(ops, &local).await;
                None
            }
        }
    }

    /// Serves sibling `addr`'s requests on a link this tracker dials to it
    /// (it cannot dial this tracker: a NAT or firewall between), until the
    /// link breaks; the sibling asks for another at its next poll if need be.
    fn link_back(self: &Arc<Self>, tracker: &Tracker, addr: String) {
        let Some(server) = self.server.get().cloned() else { return };
        let Some(ops) = server.ops.upgrade() else { return };
        if !self.serving.lock().insert(addr.clone()) {
            return;
        }
        let (me, tracker) = (self.clone(), tracker.clone());
        tokio::spawn(async move {
            let linked = async {
                let mut conn = connect(&tracker, &addr, "the sibling tracker").await?;
                let reverse = TrackerRequest::Federation(FederationRequest::LinkBack { cluster: me.cluster.clone() });
                match conn.request::<_, TrackerReply>(&reverse, "LinkedBack", tracker.config().io_timeout).await? {
                    TrackerReply::Federation(FederationReply::LinkedBack) => Ok(conn),
                    other => Err(Error::Protocol(other.into_error("LinkedBack"))),
                }
            };
            match linked.await {
                Ok(conn) => {
                    info!(sibling = %addr, "federation: linked back to a sibling that cannot dial us; serving its requests");
                    let id = server.next_conn.fetch_add(1, Ordering::Relaxed) + 1;
                    crate::server::serve_connection(tracker, ops, conn, Role::Client, id, server.cancel).await;
                    info!(sibling = %addr, "federation: the link back closed");
                }
                Err(e) => warn!(sibling = %addr, error = %e, "federation: could not link back"),
            }
            me.serving.lock().remove(&addr);
        });
    }

    async fn give_back_local(&self, ops: &mpsc::UnboundedSender<Submission>, local: &Option<Grant>) {
        if let Some(g) = local {
            let _ = submit(ops, Op::Release { lease_id: g.lease_id }).await;
        }
    }

    /// One lease of the local grant and the sibling's.
    #[allow(clippy::too_many_arguments)]
    fn compose(
        &self,
        tracker: &Tracker,
        local: Option<Grant>,
        sibling: usize,
        remote: LeaseGrant,
        conn: ConnId,
        detached: bool,
        started: Instant,
    ) -> Grant {
        let lease_id = LeaseId(FEDERATED | (self.tag << 32) | (self.next.fetch_add(1, Ordering::Relaxed) + 1));
        let token = LeaseToken::generate();
        let slots = remote.peers.len() as u32;
        let mut peers: Vec<PeerAddr> = local.as_ref().map(|g| g.peers.clone()).unwrap_or_default();
        peers.extend(remote.peers.into_iter().map(|p| self.tag(sibling, p)));
        let ttl_ms = local.as_ref().map_or(remote.ttl_ms, |g| g.ttl_ms.min(remote.ttl_ms));
        let record = FedLease {
            holder: conn,
            owner: (!detached).then_some(conn),
            token: token.clone(),
            local: local.map(|g| (g.lease_id, g.token)),
            remote: Part { sibling, lease_id: remote.lease_id, token: remote.token, slots },
            expires_at: Instant::now() + Duration::from_millis(ttl_ms),
        };
        self.sibling(sibling).status.lock().borrowed += slots;
        self.leases.lock().insert(lease_id, record);
        tracker.metrics().borrowed(slots, started.elapsed());
        info!(%lease_id, slots = peers.len(), borrowed = slots, sibling, "federation: lease granted with borrowed slots");
        let lease = LeaseGrant { lease_id, peers, ttl_ms, token: token.expose().to_string() };
        Grant { lease, token }
    }

    /// A peer lent by sibling `sibling` as this tracker hands it out: its id
    /// tagged, and — if the requester cannot dial it — marked to dial back.
    fn tag(&self, sibling: usize, peer: PeerAddr) -> PeerAddr {
        let reverse = self.sibling(sibling).reverse();
        let p = tag_peer(sibling, peer);
        if reverse {
            PeerAddr { addr: format!("{DIAL_BACK}{}", p.addr), ..p }
        } else {
            p
        }
    }

    /// Who holds peer `peer_id` of federated lease `lease_id` (for
    /// `caller`): the lender, as its own lease and peer ids with its token,
    /// or this tracker, as the local part's lease with a caller that may act
    /// on it.
    fn holder(&self, lease_id: LeaseId, peer_id: PeerId, caller: &Caller) -> Result<Holder> {
        let (local, remote) = self.local_part(lease_id, caller)?;
        match (untag(peer_id), local) {
            ((Some(s), id), _) if s == remote.sibling => {
                Ok(Holder::Lender { sibling: s, lease_id: remote.lease_id, peer_id: id, token: Some(remote.token) })
            }
            ((None, id), Some((local_id, caller))) => Ok(Holder::Local { lease_id: local_id, peer_id: id, caller }),
            _ => Err(Error::NotInLease { lease_id, peer_id }),
        }
    }

    /// Which sibling cluster lent peer `peer_id` of federated lease
    /// `lease_id`, and the peer's id there (None: a peer of this cluster):
    /// the routing-table lookup that every request about one peer of a
    /// borrowed lease makes (brokering, failure reports, hedges), checked
    /// against the lease's `token` as they are.
    ///
    /// # Errors
    /// [`Error::NotYourLease`] for an unknown lease or a wrong token,
    /// [`Error::NotInLease`] for a peer the lease does not hold.
    pub fn lender_of(&self, lease_id: LeaseId, peer_id: PeerId, token: &str) -> Result<Option<(String, PeerId)>> {
        let caller = Caller { conn: 0, token: Some(LeaseToken::presented(token.to_string())) };
        Ok(match self.holder(lease_id, peer_id, &caller)? {
            Holder::Lender { sibling, peer_id, .. } => {
                Some((self.sibling(sibling).status.lock().cluster.clone().unwrap_or_default(), peer_id))
            }
            Holder::Local { .. } => None,
        })
    }

    /// The local part's lease and a caller that may act on it.
    fn local_part(&self, lease_id: LeaseId, caller: &Caller) -> Result<(Option<(LeaseId, Caller)>, Part)> {
        let leases = self.leases.lock();
        let lease = leases.get(&lease_id).ok_or(Error::NotYourLease(lease_id))?;
        let by_token = caller.token.as_ref().is_some_and(|t| lease.token.matches(t));
        if lease.holder != caller.conn && !by_token {
            return Err(Error::NotYourLease(lease_id));
        }
        let local =
            lease.local.as_ref().map(|(id, token)| (*id, Caller { conn: caller.conn, token: Some(token.clone()) }));
        Ok((local, lease.remote.clone()))
    }

    /// Answers a request about federated lease `msg`'s lease: what concerns
    /// the local part is done here, what concerns the borrowed part is
    /// forwarded to its lender.
    pub(crate) async fn handle(
        &self,
        tracker: &Tracker,
        ops: &mpsc::UnboundedSender<Submission>,
        msg: TrackerRequest,
        conn: ConnId,
    ) -> Result<TrackerReply> {
        let token_of = |t: &Option<String>| Caller { conn, token: t.clone().map(LeaseToken::presented) };
        match msg {
            TrackerRequest::Renew { lease_id, token } => {
                let (local, remote) = self.local_part(lease_id, &token_of(&token))?;
                let (mut ttl, mut peers) = (tracker.config().lease_ttl, Vec::new());
                if let Some((id, caller)) = local {
                    (ttl, peers) = tracker.renew_by(id, &caller)?;
                }
                let renew = TrackerRequest::Renew { lease_id: remote.lease_id, token: Some(remote.token.clone()) };
                match self.call(tracker, remote.sibling, renew, "Renewed").await {
                    Ok(TrackerReply::Renewed { ttl_ms, peers: lent, .. }) => {
                        ttl = ttl.min(Duration::from_millis(ttl_ms));
                        peers.extend(lent.into_iter().map(|p| self.tag(remote.sibling, p)));
                    }
                    Ok(_) => {}
                    // The job goes on on the lender's peers regardless; the
                    // lender reclaims them at its TTL unless a later renewal gets through.
                    Err(e) => warn!(%lease_id, error = %e, "federation: could not renew the borrowed part"),
                }
                if let Some(l) = self.leases.lock().get_mut(&lease_id) {
                    l.expires_at = Instant::now() + ttl;
                }
                Ok(TrackerReply::Renewed { lease_id, ttl_ms: ttl.as_millis() as u64, peers })
            }
            TrackerRequest::Release { lease_id, token } => {
                self.local_part(lease_id, &token_of(&token))?;
                self.release(tracker, ops, lease_id).await?;
                Ok(TrackerReply::Released { lease_id })
            }
            TrackerRequest::ReportFailure { lease_id, peer_id, reason, replace, token } => {
                let replacement = match self.holder(lease_id, peer_id, &token_of(&token))? {
                    Holder::Lender { sibling, lease_id, peer_id, token } => {
                        let report = TrackerRequest::ReportFailure { lease_id, peer_id, reason, replace, token };
                        match self.call(tracker, sibling, report, "FailureRecorded").await? {
                            TrackerReply::FailureRecorded { replacement, .. } => {
                                replacement.map(|p| self.tag(sibling, p))
                            }
                            other => return Err(Error::Protocol(other.into_error("FailureRecorded"))),
                        }
                    }
                    Holder::Local { lease_id, peer_id, caller } => {
                        tracker.report_failure_by(lease_id, peer_id, replace, &caller)?
                    }
                };
                warn!(%lease_id, %peer_id, "failure reported against a peer of a federated lease");
                Ok(TrackerReply::FailureRecorded { lease_id, replacement })
            }
            TrackerRequest::Hedge { lease_id, peer_id, token } => {
                let slot = match self.holder(lease_id, peer_id, &token_of(&token))? {
                    Holder::Lender { sibling, lease_id, peer_id, token } => {
                        let hedge = TrackerRequest::Hedge { lease_id, peer_id, token };
                        match self.call(tracker, sibling, hedge, "HedgeSlot").await? {
                            TrackerReply::HedgeSlot { slot, .. } => slot.map(|p| self.tag(sibling, p)),
                            other => return Err(Error::Protocol(other.into_error("HedgeSlot"))),
                        }
                    }
                    Holder::Local { lease_id, peer_id, caller } => tracker.hedge_by(lease_id, peer_id, &caller)?,
                };
                Ok(TrackerReply::HedgeSlot { lease_id, slot })
            }
            TrackerRequest::Broker { lease_id, peer_id, addr, nonce, token, via } => {
                let started = Instant::now();
                let brokered = async {
                    let holder = self.holder(lease_id, peer_id, &token_of(&token))?;
                    let addr = self.rendezvous(addr, via)?;
                    match holder {
                        Holder::Lender { sibling, lease_id, peer_id, token } => {
                            let broker = TrackerRequest::Broker { lease_id, peer_id, addr, nonce, token, via };
                            match self.call(tracker, sibling, broker, "Brokered").await? {
                                TrackerReply::Brokered => Ok(TrackerReply::Brokered),
                                other => Err(Error::Protocol(other.into_error("Brokered"))),
                            }
                        }
                        Holder::Local { lease_id, peer_id, caller } => {
                            let worker = tracker.leased_peer(lease_id, peer_id, &caller)?;
                            dial_back(tracker, &worker, addr, nonce, via).await
                        }
                    }
                };
                let out = brokered.await;
                tracker.metrics().brokered(broker_outcome(&out, via), started.elapsed());
                out
            }
            TrackerRequest::Speed { lease_id, beaten, proven, token } => {
                let (local, remote) = self.local_part(lease_id, &token_of(&token))?;
                let split = |ids: &[PeerId], want: Option<usize>| -> Vec<PeerId> {
                    ids.iter().map(|&p| untag(p)).filter(|(s, _)| *s == want).map(|(_, id)| id).collect()
                };
                if let Some((local_id, caller)) = local {
                    tracker.record_speed_by(local_id, &split(&beaten, None), &split(&proven, None), &caller)?;
                }
                let speed = TrackerRequest::Speed {
                    lease_id: remote.lease_id,
                    beaten: split(&beaten, Some(remote.sibling)),
                    proven: split(&proven, Some(remote.sibling)),
                    token: Some(remote.token.clone()),
                };
                if let Err(e) = self.call(tracker, remote.sibling, speed, "SpeedRecorded").await {
                    debug!(%lease_id, error = %e, "federation: could not pass on the peers' speed");
                }
                Ok(TrackerReply::SpeedRecorded { lease_id })
            }
            other => {
                Err(Error::Invalid(format!("{} is not about a lease", septet_common::proto::Control::kind(&other))))
            }
        }
    }

    /// Ends federated lease `lease_id`: its local part here, its borrowed
    /// part at the lender (which otherwise reclaims it at its TTL).
    pub(crate) async fn release(
        &self,
        tracker: &Tracker,
        ops: &mpsc::UnboundedSender<Submission>,
        lease_id: LeaseId,
    ) -> Result<()> {
        let lease = self.leases.lock().remove(&lease_id).ok_or(Error::UnknownLease(lease_id))?;
        self.end(tracker, Some(ops), lease).await;
        Ok(())
    }

    async fn end(&self, tracker: &Tracker, ops: Option<&mpsc::UnboundedSender<Submission>>, lease: FedLease) {
        if let (Some((id, _)), Some(ops)) = (lease.local, ops) {
            let _ = submit(ops, Op::Release { lease_id: id }).await;
        }
        let part = lease.remote;
        {
            let sibling = self.sibling(part.sibling);
            let mut s = sibling.status.lock();
            s.borrowed = s.borrowed.saturating_sub(part.slots);
        }
        let release = TrackerRequest::Release { lease_id: part.lease_id, token: Some(part.token) };
        if let Err(e) = self.call(tracker, part.sibling, release, "Released").await {
            warn!(error = %e, "federation: could not release a borrowed part; the lender reclaims it at its TTL");
        }
    }

    /// Connection `conn` closed: its attached federated leases end (their
    /// local parts end with the connection already).
    pub(crate) async fn disconnect(&self, tracker: &Tracker, conn: ConnId) {
        let ended: Vec<FedLease> = {
            let mut leases = self.leases.lock();
            let ids: Vec<LeaseId> = leases.iter().filter(|(_, l)| l.owner == Some(conn)).map(|(id, _)| *id).collect();
            ids.into_iter().filter_map(|id| leases.remove(&id)).collect()
        };
        for lease in ended {
            self.end(tracker, None, lease).await;
        }
    }

    /// Forgets federated leases past their TTL: each part lapses on its own
    /// (the local one in this tracker's sweep, the borrowed one at the lender).
    pub fn sweep(&self) {
        let now = Instant::now();
        let mut leases = self.leases.lock();
        let expired: Vec<LeaseId> = leases.iter().filter(|(_, l)| l.expires_at <= now).map(|(id, _)| *id).collect();
        for id in expired {
            if let Some(l) = leases.remove(&id) {
                info!(lease_id = %id, "federated lease expired unrenewed");
                let sibling = self.sibling(l.remote.sibling);
                let mut s = sibling.status.lock();
                s.borrowed = s.borrowed.saturating_sub(l.remote.slots);
            }
        }
    }

    /// Every sibling's peer rows that can be had now, each naming its cluster.
    pub(crate) async fn sibling_rows(&self, tracker: &Tracker) -> Vec<PeerRow> {
        let mut rows = Vec::new();
        for i in 0..self.count() {
            let cluster = {
                let sibling = self.sibling(i);
                let s = sibling.status.lock();
                if !s.up {
                    continue;
                }
                s.cluster.clone().unwrap_or_default()
            };
            match self.call(tracker, i, TrackerRequest::ListPeers, "Peers").await {
                Ok(TrackerReply::Peers { rows: theirs, .. }) => {
                    rows.extend(theirs.into_iter().map(|r| PeerRow { cluster: cluster.clone(), ..r }))
                }
                Ok(_) => {}
                Err(e) => debug!(error = %e, "federation: could not list a sibling's peers"),
            }
        }
        rows
    }
}

/// How a `Broker` request that ended in `out` counts.
pub(crate) fn broker_outcome<T>(out: &Result<T>, via: Option<Rendezvous>) -> BrokerOutcome {
    match (out, via) {
        (Err(_), _) => BrokerOutcome::Failed,
        (Ok(_), Some(Rendezvous::Splice(_))) => BrokerOutcome::Spliced,
        (Ok(_), Some(Rendezvous::Punch(_))) => BrokerOutcome::Punched,
        (Ok(_), None) => BrokerOutcome::DialledBack,
    }
}

/// Tells the worker at `worker` (a peer of this tracker's, which it can
/// dial) to dial the requester listening at `addr` (or, with `via`, the
/// tracker at `addr` where the two meet) and present `nonce`. Answered
/// once the worker's dial connected.
pub(crate) async fn dial_back(
    tracker: &Tracker,
    worker: &str,
    addr: String,
    nonce: u64,
    via: Option<Rendezvous>,
) -> Result<TrackerReply> {
    let mut conn = connect(tracker, worker, "the worker").await?;
    let order = septet_common::proto::WorkerRequest::DialBack { addr, nonce, via };
    let reply = conn
        .request::<_, septet_common::proto::WorkerReply>(&order, "DialingBack", tracker.config().io_timeout)
        .await?;
    match reply {
        septet_common::proto::WorkerReply::DialingBack => Ok(TrackerReply::Brokered),
        other => Err(Error::Protocol(other.into_error("DialingBack"))),
    }
}

/// Connects to the tracker at `addr` as a client, with this tracker's secret.
async fn connect(tracker: &Tracker, addr: &str, what: &str) -> Result<Connection> {
    let config = tracker.config();
    let limits = ConnLimits {
        handshake_timeout: config.handshake_timeout,
        stall_timeout: Some(config.io_timeout),
        security: config.security.clone(),
        ..ConnLimits::default()
    };
    Connection::connect(addr, Role::Client, limits)
        .await
        .map_err(|e| Error::Protocol(e.naming(|| format!("{what} at {addr}"))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn borrowed_peer_ids_carry_their_lender_and_come_apart_again() {
        let p = tag_peer(2, PeerAddr { peer_id: PeerId(17), addr: "10.0.0.1:9".into(), ticket: None });
        assert_eq!(p.peer_id.0 >> PEER_TAG_SHIFT, 3);
        assert_eq!(untag(p.peer_id), (Some(2), PeerId(17)));
        assert_eq!(untag(PeerId(17)), (None, PeerId(17)));
    }

    #[test]
    fn cluster_tags_are_16_bits_and_differ_for_different_names() {
        let (a, b) = (cluster_tag("lab"), cluster_tag("dept"));
        assert!(a < 1 << 16 && b < 1 << 16);
        assert_ne!(a, b);
        assert_eq!(a, cluster_tag("lab"));
    }

    #[test]
    fn the_lender_is_the_sibling_up_with_no_queue_and_the_most_free_slots() {
        let f = Federation::new("n", &["a:1".into(), "b:1".into(), "c:1".into()]);
        let set = |i: usize, up: bool, free: u32, queued: u32| {
            let sibling = f.sibling(i);
            let mut s = sibling.status.lock();
            (s.up, s.free, s.queued) = (up, free, queued);
        };
        set(0, true, 6, 0);
        set(1, true, 9, 1);
        set(2, false, 20, 0);
        assert_eq!(f.lender(5), Some(0), "b has a queue, c is down");
        assert_eq!(f.lender(7), None);
        set(1, true, 9, 0);
        assert_eq!(f.lender(5), Some(1));
    }
}
