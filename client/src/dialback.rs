//! Links to peers the requester cannot dial (a federation sibling's
//! workers behind a NAT): the requester listens, asks its tracker to have
//! the peer dial it ([`TrackerRequest::Broker`], forwarded to the peer's
//! own tracker, which tells the peer), and takes the connection that
//! presents the nonce it chose. The handshake is the cluster secret's, end
//! to end: the trackers that broker the link never see what crosses it.
//!
//! [`TrackerRequest::Broker`]: septet_common::proto::TrackerRequest::Broker

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use rand::RngExt;
use septet_common::conn::ConnLimits;
use septet_common::proto::{LeaseGrant, LeaseId, PeerAddr, WorkerReply, DIAL_BACK};
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
pub(crate) struct Broker {
    tracker: String,
    security: Security,
    timeout: Duration,
    lease_id: LeaseId,
    token: String,
    addr: SocketAddr,
    pending: Arc<Mutex<HashMap<u64, oneshot::Sender<Connection>>>>,
    accept: tokio::task::JoinHandle<()>,
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

impl Broker {
    /// Listens on the address this host reaches `tracker` from, for the
    /// peers of `grant` that dial back.
    pub(crate) async fn start(
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
        })
    }

    /// A connection to `peer`, which dials this requester on its tracker's
    /// order.
    pub(crate) async fn connect(&self, peer: &PeerAddr, limits: &ConnLimits) -> Result<Connection> {
        let nonce: u64 = rand::rng().random();
        let (tx, rx) = oneshot::channel();
        self.pending.lock().insert(nonce, tx);
        let linked = async {
            let mut tracker =
                TrackerClient::connect_with(&self.tracker, Role::Client, self.timeout, &self.security).await?;
            tracker.broker(self.lease_id, peer.peer_id, self.addr.to_string(), nonce, &self.token).await?;
            deadline(self.timeout, "the peer to dial back", async {
                rx.await.map_err(|_| Error::Closed("the dial-back listener"))
            })
            .await
        };
        let out = linked.await.map(|mut conn| {
            conn.reader.set_max_frame_len(limits.max_frame_len);
            conn.reader.set_stall_timeout(limits.stall_timeout);
            conn.reader.set_idle_timeout(limits.idle_timeout);
            conn
        });
        self.pending.lock().remove(&nonce);
        out.map_err(|e| e.naming(|| format!("the worker at {} (dialling back)", &peer.addr[DIAL_BACK.len()..])))
    }
}
