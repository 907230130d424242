//! Links to peers the requester cannot dial (a federation sibling's
//! workers behind a NAT): the requester listens, asks its tracker to have
//! the peer dial it ([`TrackerRequest::Broker`], forwarded to the peer's
//! own tracker, which tells the peer), and takes the connection that
//! presents the nonce it chose. The handshake is the cluster secret's, end
//! to end: the trackers that broker the link never see what crosses it.
//!
//! When the peer cannot dial the requester either (the requester is
//! behind a NAT of its own), both meet at the requester's tracker: first
//! to learn each other's public address and dial each other at once (a
//! punch, see `septet_common::punch`), and where that fails to be
//! *spliced*, the tracker joining the two connections byte for byte. The
//! handshake runs end to end either way. A way that failed once is not
//! tried again for the lease's other links.
//!
//! [`TrackerRequest::Broker`]: septet_common::proto::TrackerRequest::Broker

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use rand::RngExt;
use septet_common::conn::ConnLimits;
use septet_common::proto::{LeaseGrant, LeaseId, PeerAddr, Rendezvous, WorkerReply, DIAL_BACK};
use septet_common::punch;
use septet_common::secure::Security;
use septet_common::{deadline, Connection, Error, Result, Role};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tracing::{debug, info};

use crate::TrackerClient;

/// Whether `peer` is one the requester cannot dial.
pub fn dials_back(peer: &PeerAddr) -> bool {
    peer.addr.starts_with(DIAL_BACK)
}

/// A listener for peers that dial back, for one lease.
pub struct Broker {
    tracker: String,
    security: Security,
    timeout: Duration,
    lease_id: LeaseId,
    token: String,
    addr: SocketAddr,
    pending: Arc<Mutex<HashMap<u64, oneshot::Sender<Connection>>>>,
    accept: tokio::task::JoinHandle<()>,
    /// The first way to try (a [`Way`]): ways that failed once for this
    /// lease are skipped.
    way: std::sync::atomic::AtomicU8,
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

impl Broker {
    /// Listens on the address this host reaches `tracker` from, for the
    /// peers of `grant` that dial back.
    ///
    /// # Errors
    /// If `tracker` does not resolve or no listener can be bound.
    pub async fn start(
        tracker: &str,
        security: &Security,
        limits: ConnLimits,
        timeout: Duration,
        grant: &LeaseGrant,
    ) -> Result<Self> {
        // The interface toward the tracker (no packet is sent).
        let probe = std::net::UdpSocket::bind("0.0.0.0:0")?;
        let target = tokio::net::lookup_host(tracker)
            .await?
            .next()
            .ok_or_else(|| Error::Invalid(format!("{tracker} resolves to no address")))?;
        probe.connect(target)?;
        let listener = TcpListener::bind((probe.local_addr()?.ip(), 0)).await?;
        let addr = listener.local_addr()?;
        let pending: Arc<Mutex<HashMap<u64, oneshot::Sender<Connection>>>> = Arc::default();
        let waiting = pending.clone();
        let accept = tokio::spawn(async move {
            loop {
                let Ok((stream, from)) = listener.accept().await else {
                    // Out of descriptors, say: do not spin.
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                };
                let (limits, waiting) = (limits.clone(), waiting.clone());
                tokio::spawn(async move {
                    let took = async {
                        let (mut conn, role) = Connection::accept(stream, limits.clone()).await?;
                        if role != Role::Worker {
                            return Err(Error::Invalid(format!("a {role:?} dialled back, not a worker")));
                        }
                        let hello = deadline(limits.handshake_timeout, "the worker's hello", async {
                            conn.reader.read_message::<WorkerReply>("DialedBack").await
                        });
                        match hello.await? {
                            WorkerReply::DialedBack { nonce } => Ok((nonce, conn)),
                            other => Err(Error::Unexpected { expected: "DialedBack", got: format!("{other:?}") }),
                        }
                    };
                    match took.await {
                        Ok((nonce, conn)) => match waiting.lock().remove(&nonce) {
                            Some(tx) => {
                                let _ = tx.send(conn);
                            }
                            None => debug!(%from, "a dial back nobody waits for"),
                        },
                        Err(e) => debug!(%from, error = %e, "refused a dial back"),
                    }
                });
            }
        });
        info!(%addr, "listening for peers that dial back");
        Ok(Self {
            tracker: tracker.to_string(),
            security: security.clone(),
            timeout,
            lease_id: grant.lease_id,
            token: grant.token.clone(),
            addr,
            pending,
            accept,
            way: Default::default(),
        })
    }

    /// A connection to `peer`, made the first way that works of: the peer
    /// dials this requester on its tracker's order; the two meet at the
    /// requester's tracker and dial each other at once (a punch through
    /// both NATs); the two dial the requester's tracker, which splices
    /// them. A way that failed once for this lease is not tried again.
    ///
    /// # Errors
    /// The last way's error when none links (the tracker refused, the peer
    /// could not dial its tracker, a handshake failed), naming the peer.
    pub async fn connect(&self, peer: &PeerAddr, limits: &ConnLimits) -> Result<Connection> {
        use std::sync::atomic::Ordering::Relaxed;
        let name =
            || format!("the worker at {} (dialling back)", peer.addr.strip_prefix(DIAL_BACK).unwrap_or(&peer.addr));
        let mut out = Err(Error::Closed("no way to link was tried"));
        for way in [Way::DialBack, Way::Punch, Way::Splice] {
            if (way as u8) < self.way.load(Relaxed) {
                continue;
            }
            let id = rand::rng().random();
            out = match way {
                Way::DialBack => self.dialled_back(peer).await,
                Way::Punch => self.met(peer, Rendezvous::Punch(id)).await,
                Way::Splice => self.met(peer, Rendezvous::Splice(id)).await,
            };
            match &out {
                Ok(_) => break,
                Err(e) if way != Way::Splice => {
                    info!(peer = %peer.addr, error = %e, "could not link {}: trying the next way", way.name());
                    self.way.fetch_max(way as u8 + 1, Relaxed);
                }
                Err(_) => {}
            }
        }
        out.map(|mut conn| {
            conn.reader.set_max_frame_len(limits.max_frame_len);
            conn.reader.set_stall_timeout(limits.stall_timeout);
            conn.reader.set_idle_timeout(limits.idle_timeout);
            conn
        })
        .map_err(|e| e.naming(name))
    }

    /// Splices every link from now on, without trying a dial back or a
    /// punch first (for the brokering benchmark and tests).
    pub fn splice_always(&self) {
        self.way.store(Way::Splice as u8, std::sync::atomic::Ordering::Relaxed);
    }

    /// `peer` dials this requester's listener.
    async fn dialled_back(&self, peer: &PeerAddr) -> Result<Connection> {
        let nonce: u64 = rand::rng().random();
        let (tx, rx) = oneshot::channel();
        self.pending.lock().insert(nonce, tx);
        let linked = async {
            let mut tracker =
                TrackerClient::connect_with(&self.tracker, Role::Client, self.timeout, &self.security).await?;
            tracker.broker(self.lease_id, peer.peer_id, self.addr.to_string(), nonce, &self.token, None).await?;
            deadline(self.timeout, "the peer to dial back", async {
                rx.await.map_err(|_| Error::Closed("the dial-back listener"))
            })
            .await
        };
        let out = linked.await;
        self.pending.lock().remove(&nonce);
        out
    }

    /// `peer` and this requester meet at the requester's tracker (`via`):
    /// for a punch, each learns there where the other came from and both
    /// dial each other at once; for a splice, the tracker joins the two.
    /// Either way the handshake is end to end, this side serving.
    async fn met(&self, peer: &PeerAddr, via: Rendezvous) -> Result<Connection> {
        let nonce: u64 = rand::rng().random();
        let mut tracker =
            TrackerClient::connect_with(&self.tracker, Role::Client, self.timeout, &self.security).await?;
        tracker.broker(self.lease_id, peer.peer_id, String::new(), nonce, &self.token, Some(via)).await?;
        let limits =
            ConnLimits { handshake_timeout: self.timeout, security: self.security.clone(), ..ConnLimits::default() };
        let (mut conn, role) = match via {
            Rendezvous::Splice(id) => Connection::accept_spliced(&self.tracker, id, limits).await?,
            Rendezvous::Punch(id) => {
                let meeting = punch::Meeting::dial(&self.tracker, id, self.timeout).await?;
                let local = meeting.local;
                let other = meeting.other(PUNCH_WITHIN).await?;
                let stream = punch::open(local, other, PUNCH_WITHIN).await?;
                Connection::accept(stream, limits).await?
            }
        };
        if role != Role::Worker {
            return Err(Error::Invalid(format!("a {role:?} answered, not a worker")));
        }
        let hello = deadline(self.timeout, "the worker's hello", conn.reader.read_message::<WorkerReply>("DialedBack"));
        match hello.await? {
            WorkerReply::DialedBack { nonce: theirs } if theirs == nonce => {
                debug!(peer = %peer.addr, way = ?via, "linked through a meeting at the tracker");
                Ok(conn)
            }
            WorkerReply::DialedBack { .. } => Err(Error::Invalid("the peer presented another nonce".into())),
            other => Err(Error::Unexpected { expected: "DialedBack", got: format!("{other:?}") }),
        }
    }
}

/// The ways to link to a peer that the requester cannot dial, in the order
/// they are tried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
enum Way {
    DialBack = 0,
    Punch = 1,
    Splice = 2,
}

impl Way {
    fn name(self) -> &'static str {
        match self {
            Way::DialBack => "by a dial back",
            Way::Punch => "by a punch through both NATs",
            Way::Splice => "through a splice",
        }
    }
}

/// How long the two ends of a punch have to meet and then to dial each
/// other through their NATs.
const PUNCH_WITHIN: Duration = Duration::from_secs(3);
