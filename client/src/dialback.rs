//! Links to peers the requester cannot dial (a federation sibling's
//! workers behind a NAT): the requester listens, asks its tracker to have
//! the peer dial it ([`TrackerRequest::Broker`], forwarded to the peer's
//! own tracker, which tells the peer), and takes the connection that
//! presents the nonce it chose. The handshake is the cluster secret's, end
//! to end: the trackers that broker the link never see what crosses it.
//!
//! When the peer cannot dial the requester either (the requester is
//! behind a NAT of its own), the link is *spliced*: both dial the
//! requester's tracker, which joins the two connections byte for byte
//! (see the tracker's `splice` module); the handshake still runs end to
//! end through it. After one such failure, the lease's other links are
//! spliced at once.
//!
//! [`TrackerRequest::Broker`]: septet_common::proto::TrackerRequest::Broker

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use rand::RngExt;
use septet_common::conn::ConnLimits;
use septet_common::proto::{LeaseGrant, LeaseId, PeerAddr, SpliceId, WorkerReply, DIAL_BACK};
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
    /// A peer could not dial this requester: splice every link.
    splice: std::sync::atomic::AtomicBool,
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
            splice: Default::default(),
        })
    }

    /// A connection to `peer`, which dials this requester on its tracker's
    /// order — or, if it cannot, dials the requester's tracker, which
    /// splices it to the requester's own leg.
    ///
    /// # Errors
    /// The splice's error when neither way links (the tracker refused, the
    /// peer could not dial its tracker, a handshake failed), naming the peer.
    pub async fn connect(&self, peer: &PeerAddr, limits: &ConnLimits) -> Result<Connection> {
        use std::sync::atomic::Ordering::Relaxed;
        let name =
            || format!("the worker at {} (dialling back)", peer.addr.strip_prefix(DIAL_BACK).unwrap_or(&peer.addr));
        let direct = if self.splice.load(Relaxed) {
            None
        } else {
            match self.dialled_back(peer).await {
                Ok(conn) => Some(Ok(conn)),
                Err(e) => {
                    info!(peer = %peer.addr, error = %e, "the peer could not dial back: splicing the link through the tracker");
                    self.splice.store(true, Relaxed);
                    None
                }
            }
        };
        let out = match direct {
            Some(out) => out,
            None => self.spliced(peer).await,
        };
        out.map(|mut conn| {
            conn.reader.set_max_frame_len(limits.max_frame_len);
            conn.reader.set_stall_timeout(limits.stall_timeout);
            conn.reader.set_idle_timeout(limits.idle_timeout);
            conn
        })
        .map_err(|e| e.naming(name))
    }

    /// Splices every link from now on, without trying a dial back first
    /// (for a requester that knows it cannot be dialled, and for the
    /// brokering benchmark).
    pub fn splice_always(&self) {
        self.splice.store(true, std::sync::atomic::Ordering::Relaxed);
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

    /// `peer` and this requester both dial the requester's tracker, which
    /// joins the two legs of splice `id`; the handshake runs through it.
    async fn spliced(&self, peer: &PeerAddr) -> Result<Connection> {
        let (nonce, id): (u64, SpliceId) = (rand::rng().random(), rand::rng().random());
        let mut tracker =
            TrackerClient::connect_with(&self.tracker, Role::Client, self.timeout, &self.security).await?;
        tracker.broker(self.lease_id, peer.peer_id, String::new(), nonce, &self.token, Some(id)).await?;
        let limits =
            ConnLimits { handshake_timeout: self.timeout, security: self.security.clone(), ..ConnLimits::default() };
        let (mut conn, role) = Connection::accept_spliced(&self.tracker, id, limits).await?;
        if role != Role::Worker {
            return Err(Error::Invalid(format!("a {role:?} came through the splice, not a worker")));
        }
        let hello = deadline(self.timeout, "the worker's hello", conn.reader.read_message::<WorkerReply>("DialedBack"));
        match hello.await? {
            WorkerReply::DialedBack { nonce: theirs } if theirs == nonce => {
                debug!(peer = %peer.addr, "spliced a link through the tracker");
                Ok(conn)
            }
            WorkerReply::DialedBack { .. } => Err(Error::Invalid("the spliced peer presented another nonce".into())),
            other => Err(Error::Unexpected { expected: "DialedBack", got: format!("{other:?}") }),
        }
    }
}
