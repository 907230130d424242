//! Clients of the septet servers: [`TrackerClient`] for registering,
//! heartbeating, listing peers and leasing. Each call has a deadline, except
//! waiting in the lease queue, which lasts as long as the caller allows.
//!
//! A connection whose request timed out (or failed mid-exchange) is
//! discarded, never reused: its reply may still arrive, and the next call
//! would read it as its own answer. The client is *poisoned* instead, and
//! every later call fails at once with [`Error::Io`] (`NotConnected`)
//! saying why; connect a new client to go on.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use septet_common::conn::ConnLimits;
use septet_common::proto::{LeaseGrant, LeaseId, PeerAddr, PeerId, PeerRow, Rendezvous};
use septet_common::proto::{Reply, TrackerReply, TrackerRequest};
use septet_common::secure::Security;
use septet_common::{deadline, Connection, Error, Result, Role};
use tokio::net::ToSocketAddrs;

/// Default deadline for one request/reply exchange with the tracker.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// A worker's registration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registration {
    /// The id to heartbeat with.
    pub peer_id: PeerId,
    /// The address the tracker hands out for us.
    pub addr: String,
    /// How often to heartbeat.
    pub heartbeat: Duration,
    /// The key the tracker signs lease tickets with.
    pub ticket_key: Vec<u8>,
    /// The tracker's clock (ms since it started) when it answered.
    pub tracker_ms: u64,
}

/// A connection to the tracker.
#[derive(Debug)]
pub struct TrackerClient {
    conn: Connection,
    timeout: Duration,
    /// Set once an exchange broke off (timeout, I/O error): why the
    /// connection may no longer be used.
    poisoned: Option<String>,
}

fn unexpected(expected: &'static str, got: TrackerReply) -> Error {
    got.into_error(expected)
}

impl TrackerClient {
    /// Connects and says hello.
    ///
    /// # Errors
    /// As [`Connection::connect`].
    pub async fn connect(addr: impl ToSocketAddrs + std::fmt::Display, role: Role, timeout: Duration) -> Result<Self> {
        Self::connect_with(addr, role, timeout, &Security::default()).await
    }

    /// Connects and authenticates with `security`'s secret (encrypting if
    /// it says so). A handshake failure names "the tracker at ADDR".
    ///
    /// # Errors
    /// As [`Connection::connect`].
    pub async fn connect_with(
        addr: impl ToSocketAddrs + std::fmt::Display,
        role: Role,
        timeout: Duration,
        security: &Security,
    ) -> Result<Self> {
        let limits = ConnLimits { handshake_timeout: timeout, security: security.clone(), ..ConnLimits::default() };
        let name = addr.to_string();
        let conn =
            Connection::connect(addr, role, limits).await.map_err(|e| e.naming(|| format!("the tracker at {name}")))?;
        Ok(Self { conn, timeout, poisoned: None })
    }

    /// The tracker's address.
    pub fn peer(&self) -> SocketAddr {
        self.conn.peer
    }

    /// Whether an earlier exchange broke off, leaving the connection unusable.
    pub fn is_poisoned(&self) -> bool {
        self.poisoned.is_some()
    }

    /// Fails at once if an earlier exchange broke off.
    fn check_usable(&self) -> Result<()> {
        match &self.poisoned {
            None => Ok(()),
            Some(why) => Err(Error::Io(std::io::Error::new(
                std::io::ErrorKind::NotConnected,
                format!("this tracker connection is no longer usable: an earlier request {why}; connect again"),
            ))),
        }
    }

    /// Runs one exchange; if it ends in anything but a whole reply (an
    /// `Error` frame from the tracker is a whole reply), the client is
    /// poisoned. Dropping the future mid-exchange poisons it too.
    async fn guarded<T>(&mut self, exchange: impl std::ops::AsyncFnOnce(&mut Connection) -> Result<T>) -> Result<T> {
        self.check_usable()?;
        // Set first, cleared on a whole reply: a cancelled call stays poisoned.
        self.poisoned = Some("was abandoned before its reply arrived".into());
        let out = exchange(&mut self.conn).await;
        self.poisoned = match &out {
            Ok(_) | Err(Error::Remote { .. }) => None,
            Err(Error::Timeout { what, after }) => Some(format!("timed out after {after:?} waiting for {what}")),
            Err(e) => Some(format!("failed mid-exchange ({e})")),
        };
        out
    }

    async fn call(&mut self, msg: TrackerRequest, expected: &'static str) -> Result<TrackerReply> {
        let timeout = self.timeout;
        self.guarded(async move |conn: &mut Connection| conn.request(&msg, expected, timeout).await).await
    }

    /// Registers a worker listening on `listen` with `slots` slots and
    /// `memory_mib` MiB for its tasks.
    ///
    /// # Errors
    /// [`Error::Remote`] if the tracker refuses, or any connection error.
    pub async fn register(&mut self, listen: SocketAddr, slots: u32, memory_mib: u64) -> Result<Registration> {
        let msg = TrackerRequest::Register { listen: listen.to_string(), slots, memory_mib };
        match self.call(msg, "Registered").await? {
            TrackerReply::Registered { peer_id, addr, heartbeat_ms, ticket_key, now_ms } => Ok(Registration {
                peer_id,
                addr,
                heartbeat: Duration::from_millis(heartbeat_ms.max(1)),
                ticket_key,
                tracker_ms: now_ms,
            }),
            other => Err(unexpected("Registered", other)),
        }
    }

    /// Sends a heartbeat; returns the tracker's clock (ms since it started).
    ///
    /// # Errors
    /// [`Error::Remote`] with `PeerGone` or `UnknownPeer` when the worker
    /// must register again, or any connection error.
    pub async fn heartbeat(&mut self, peer_id: PeerId) -> Result<u64> {
        match self.call(TrackerRequest::Heartbeat { peer_id }, "HeartbeatAck").await? {
            TrackerReply::HeartbeatAck { now_ms } => Ok(now_ms),
            other => Err(unexpected("HeartbeatAck", other)),
        }
    }

    /// Leaves the grid.
    ///
    /// # Errors
    /// Any connection error.
    pub async fn deregister(&mut self, peer_id: PeerId) -> Result<()> {
        match self.call(TrackerRequest::Deregister { peer_id }, "Deregistered").await? {
            TrackerReply::Deregistered => Ok(()),
            other => Err(unexpected("Deregistered", other)),
        }
    }

    /// The peer table: as polars prints it, and as rows.
    ///
    /// # Errors
    /// Any connection error.
    pub async fn peers(&mut self) -> Result<(String, Vec<PeerRow>)> {
        match self.call(TrackerRequest::ListPeers, "Peers").await? {
            TrackerReply::Peers { table, rows } => Ok((table, rows)),
            other => Err(unexpected("Peers", other)),
        }
    }

    /// Has peer `peer_id` of lease `lease_id` (presenting its token) dial
    /// the listener at `addr` and present `nonce`: a link the requester
    /// cannot make itself (the peer is behind a NAT). With `via` (and an
    /// empty `addr`), the peer and the requester meet at this tracker
    /// instead (see [`Rendezvous`]).
    ///
    /// # Errors
    /// [`Error::Remote`] if the tracker refuses or cannot reach the peer.
    pub async fn broker(
        &mut self,
        lease_id: LeaseId,
        peer_id: PeerId,
        addr: String,
        nonce: u64,
        token: &str,
        via: Option<Rendezvous>,
    ) -> Result<()> {
        let msg = TrackerRequest::Broker { lease_id, peer_id, addr, nonce, token: Some(token.to_string()), via };
        match self.call(msg, "Brokered").await? {
            TrackerReply::Brokered => Ok(()),
            other => Err(unexpected("Brokered", other)),
        }
    }

    /// The peer tables of the tracker's cluster and of every sibling
    /// cluster it federates with that answers now; rows name their cluster.
    ///
    /// # Errors
    /// Any connection error.
    pub async fn federation_peers(&mut self) -> Result<(String, Vec<PeerRow>)> {
        match self.call(TrackerRequest::ListFederation, "Peers").await? {
            TrackerReply::Peers { table, rows } => Ok((table, rows)),
            other => Err(unexpected("Peers", other)),
        }
    }

    /// Leases `count` slots. If the tracker queues the request, `on_wait`
    /// is called with the `Waiting` message's (position, free, needed) and
    /// the call waits for the grant — for at most `max_wait` when given.
    /// Dropping the future (or the client) leaves the queue. The grant
    /// carries the lease's token (for a detached lease: what `septet release
    /// --token` needs later).
    ///
    /// # Errors
    /// [`Error::Timeout`] when `max_wait` passes, [`Error::Remote`] if the
    /// tracker refuses, or any connection error; after a timeout in the
    /// queue the client is poisoned (the grant may still arrive on this
    /// connection).
    pub async fn lease(
        &mut self,
        count: u32,
        detached: bool,
        max_wait: Option<Duration>,
        mut on_wait: impl FnMut(u32, u32, u32),
    ) -> Result<LeaseGrant> {
        fn granted(reply: TrackerReply, expected: &'static str) -> Result<LeaseGrant> {
            match reply {
                TrackerReply::Leased(grant) => Ok(grant),
                other => Err(unexpected(expected, other)),
            }
        }
        match self.call(TrackerRequest::Lease { count, detached }, "Leased or Waiting").await? {
            TrackerReply::Waiting { position, free, needed } => {
                on_wait(position, free, needed);
                self.guarded(async move |conn: &mut Connection| {
                    let wait = async { granted(conn.reader.read_message("Leased").await?, "Leased") };
                    match max_wait {
                        Some(limit) => deadline(limit, "a lease in the tracker's queue", wait).await,
                        None => wait.await,
                    }
                })
                .await
            }
            other => granted(other, "Leased"),
        }
    }

    /// Extends a lease by its TTL; returns the TTL.
    ///
    /// # Errors
    /// [`Error::Remote`] with `UnknownLease` if it already ended.
    pub async fn renew(&mut self, lease_id: LeaseId) -> Result<Duration> {
        self.renew_with(lease_id, None).await
    }

    /// [`TrackerClient::renew`], also returning the lease's slots with fresh tickets.
    ///
    /// # Errors
    /// As [`TrackerClient::renew_with`].
    pub async fn renew_tickets(&mut self, lease_id: LeaseId) -> Result<(Duration, Vec<PeerAddr>)> {
        match self.call(TrackerRequest::Renew { lease_id, token: None }, "Renewed").await? {
            TrackerReply::Renewed { ttl_ms, peers, .. } => Ok((Duration::from_millis(ttl_ms), peers)),
            other => Err(unexpected("Renewed", other)),
        }
    }

    /// Extends a lease by its TTL, presenting its token if given (needed
    /// unless this connection took the lease); returns the TTL.
    ///
    /// # Errors
    /// [`Error::Remote`] with `Unauthorized` if the lease is not ours (or
    /// has ended: the tracker does not say which).
    pub async fn renew_with(&mut self, lease_id: LeaseId, token: Option<&str>) -> Result<Duration> {
        let token = token.map(str::to_string);
        match self.call(TrackerRequest::Renew { lease_id, token }, "Renewed").await? {
            TrackerReply::Renewed { ttl_ms, .. } => Ok(Duration::from_millis(ttl_ms)),
            other => Err(unexpected("Renewed", other)),
        }
    }

    /// Releases a lease.
    ///
    /// # Errors
    /// [`Error::Remote`] with `UnknownLease` if it already ended.
    pub async fn release(&mut self, lease_id: LeaseId) -> Result<()> {
        self.release_with(lease_id, None).await
    }

    /// Releases a lease, presenting its token if given (needed unless this
    /// connection took the lease).
    ///
    /// # Errors
    /// [`Error::Remote`] with `Unauthorized` if the lease is not ours (or
    /// has ended: the tracker does not say which); nothing changes then.
    pub async fn release_with(&mut self, lease_id: LeaseId, token: Option<&str>) -> Result<()> {
        let token = token.map(str::to_string);
        match self.call(TrackerRequest::Release { lease_id, token }, "Released").await? {
            TrackerReply::Released { .. } => Ok(()),
            other => Err(unexpected("Released", other)),
        }
    }

    /// Reports a failed peer of a lease; with `replace`, asks for a
    /// replacement slot, returned when one was free.
    ///
    /// # Errors
    /// [`Error::Remote`] if the lease or peer is unknown, or any connection error.
    pub async fn report_failure(
        &mut self,
        lease_id: LeaseId,
        peer_id: PeerId,
        reason: &str,
        replace: bool,
    ) -> Result<Option<PeerAddr>> {
        self.report_failure_with(lease_id, peer_id, reason, replace, None).await
    }

    /// As [`TrackerClient::report_failure`], presenting the lease's token if
    /// given (needed unless this connection took the lease).
    ///
    /// # Errors
    /// As [`TrackerClient::report_failure`], or `Unauthorized`.
    pub async fn report_failure_with(
        &mut self,
        lease_id: LeaseId,
        peer_id: PeerId,
        reason: &str,
        replace: bool,
        token: Option<&str>,
    ) -> Result<Option<PeerAddr>> {
        let (reason, token) = (reason.to_string(), token.map(str::to_string));
        let msg = TrackerRequest::ReportFailure { lease_id, peer_id, reason, replace, token };
        match self.call(msg, "FailureRecorded").await? {
            TrackerReply::FailureRecorded { replacement, .. } => Ok(replacement),
            other => Err(unexpected("FailureRecorded", other)),
        }
    }
    /// Asks for one more slot in the lease, not on `peer_id`, to hedge
    /// that peer's lagging product; `None` when none is free now.
    ///
    /// # Errors
    /// [`Error::Remote`] if the lease or peer is unknown or not ours, or any
    /// connection error.
    pub async fn hedge(&mut self, lease_id: LeaseId, peer_id: PeerId) -> Result<Option<PeerAddr>> {
        match self.call(TrackerRequest::Hedge { lease_id, peer_id, token: None }, "HedgeSlot").await? {
            TrackerReply::HedgeSlot { slot, .. } => Ok(slot),
            other => Err(unexpected("HedgeSlot", other)),
        }
    }

    /// Tells the tracker which of the lease's peers hedges beat and which
    /// delivered first (once per lease).
    ///
    /// # Errors
    /// [`Error::Remote`] if the lease or a peer is unknown or not ours, or
    /// any connection error.
    pub async fn record_speed(&mut self, lease_id: LeaseId, beaten: Vec<PeerId>, proven: Vec<PeerId>) -> Result<()> {
        match self.call(TrackerRequest::Speed { lease_id, beaten, proven, token: None }, "SpeedRecorded").await? {
            TrackerReply::SpeedRecorded { .. } => Ok(()),
            other => Err(unexpected("SpeedRecorded", other)),
        }
    }
}

/// Runs `fut`, or returns `None` if `cancel` fires first.
pub async fn or_cancel<T>(cancel: &tokio_util::sync::CancellationToken, fut: impl Future<Output = T>) -> Option<T> {
    tokio::select! {
        _ = cancel.cancelled() => None,
        out = fut => Some(out),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    /// A fake tracker that answers its first request after `delay`, then
    /// every later one at once — each with a reply naming the request it
    /// answers (a `Peers` table of "reply to request N"). The channel says
    /// when the first reply has been sent, and, once the client has closed
    /// the connection, how many requests it read in all.
    async fn late_tracker(delay: Duration) -> (SocketAddr, tokio::sync::mpsc::UnboundedReceiver<usize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            let (mut conn, _) = Connection::accept(stream, ConnLimits::default()).await.unwrap();
            let mut n = 0;
            while let Ok(Some(_)) = conn.reader.read_frame().await {
                n += 1;
                if n == 1 {
                    tokio::time::sleep(delay).await;
                }
                let reply = TrackerReply::Peers { table: format!("reply to request {n}"), rows: Vec::new() };
                if conn.writer.send(&reply).await.is_err() {
                    break;
                }
                if n == 1 {
                    let _ = tx.send(n);
                }
            }
            let _ = tx.send(n);
        });
        (addr, rx)
    }

    #[tokio::test]
    async fn a_timed_out_request_poisons_the_client_so_a_late_reply_is_never_taken_for_the_next() {
        // The timeout also bounds the handshake: a second holds on a loaded
        // machine; the reply comes well after it.
        let (addr, mut events) = late_tracker(Duration::from_secs(2)).await;
        let mut client = TrackerClient::connect(addr, Role::Client, Duration::from_secs(1)).await.unwrap();
        assert!(matches!(client.peers().await, Err(Error::Timeout { .. })));
        assert!(client.is_poisoned());
        // Let the late reply arrive: the next call must not read it as its own.
        assert_eq!(events.recv().await, Some(1), "the late reply was sent");
        let err = client.peers().await.unwrap_err();
        let text = err.to_string();
        assert!(text.contains("no longer usable") && text.contains("timed out"), "{text}");
        assert!(matches!(client.release(LeaseId(1)).await, Err(Error::Io(_))), "every later call");
        // Neither call sent a request (so neither waited for a round trip):
        // once the client has gone, the fake has read only the first.
        drop(client);
        assert_eq!(events.recv().await, Some(1), "requests read in all");
        // A fresh connection works (the fake answers its first request late
        // only once per listener, so check on a new fake).
        let (addr, _) = late_tracker(Duration::ZERO).await;
        let mut fresh = TrackerClient::connect(addr, Role::Client, Duration::from_secs(5)).await.unwrap();
        assert_eq!(fresh.peers().await.unwrap().0, "reply to request 1");
        assert_eq!(fresh.peers().await.unwrap().0, "reply to request 2");
        assert!(!fresh.is_poisoned());
    }

    #[tokio::test]
    async fn an_error_reply_is_a_whole_answer_and_does_not_poison() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            let (mut conn, _) = Connection::accept(stream, ConnLimits::default()).await.unwrap();
            while let Ok(Some(_)) = conn.reader.read_frame().await {
                let err = Error::Remote { code: septet_common::ErrorCode::Unauthorized, message: "no".into() };
                let reply = TrackerReply::failure(septet_common::Failure::from_error(&err, None));
                conn.writer.send(&reply).await.unwrap();
            }
        });
        let mut client = TrackerClient::connect(addr, Role::Client, Duration::from_secs(5)).await.unwrap();
        for _ in 0..2 {
            assert!(matches!(client.release_with(LeaseId(3), Some("x")).await, Err(Error::Remote { .. })));
        }
        assert!(!client.is_poisoned());
    }
}
