//! Clients of the septet servers: [`TrackerClient`] for registering,
//! heartbeating, listing peers and leasing. Each call has a deadline, except
//! waiting in the lease queue, which lasts as long as the caller allows.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use septet_common::conn::ConnLimits;
use septet_common::proto::{LeaseGrant, PeerAddr, PeerRow};
use septet_common::secure::Security;
use septet_common::{deadline, Connection, Error, Message, Result, Role};
use tokio::net::ToSocketAddrs;

/// Default deadline for one request/reply exchange with the tracker.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// A worker's registration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registration {
    /// The id to heartbeat with.
    pub peer_id: u64,
    /// The address the tracker hands out for us.
    pub addr: String,
    /// How often to heartbeat.
    pub heartbeat: Duration,
}

/// A connection to the tracker.
#[derive(Debug)]
pub struct TrackerClient {
    conn: Connection,
    timeout: Duration,
}

fn unexpected(expected: &'static str, got: Message) -> Error {
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
        Ok(Self { conn, timeout })
    }

    /// The tracker's address.
    pub fn peer(&self) -> SocketAddr {
        self.conn.peer
    }

    async fn call(&mut self, msg: Message, expected: &'static str) -> Result<Message> {
        self.conn.request(&msg, expected, self.timeout).await
    }

    /// Registers a worker listening on `listen` with `slots` slots.
    ///
    /// # Errors
    /// [`Error::Remote`] if the tracker refuses, or any connection error.
    pub async fn register(&mut self, listen: SocketAddr, slots: u32) -> Result<Registration> {
        match self.call(Message::Register { listen: listen.to_string(), slots }, "Registered").await? {
            Message::Registered { peer_id, addr, heartbeat_ms } => {
                Ok(Registration { peer_id, addr, heartbeat: Duration::from_millis(heartbeat_ms.max(1)) })
            }
            other => Err(unexpected("Registered", other)),
        }
    }

    /// Sends a heartbeat.
    ///
    /// # Errors
    /// [`Error::Remote`] with `PeerGone` or `UnknownPeer` when the worker
    /// must register again, or any connection error.
    pub async fn heartbeat(&mut self, peer_id: u64) -> Result<()> {
        match self.call(Message::Heartbeat { peer_id }, "HeartbeatAck").await? {
            Message::HeartbeatAck => Ok(()),
            other => Err(unexpected("HeartbeatAck", other)),
        }
    }

    /// Leaves the grid.
    ///
    /// # Errors
    /// Any connection error.
    pub async fn deregister(&mut self, peer_id: u64) -> Result<()> {
        match self.call(Message::Deregister { peer_id }, "Deregistered").await? {
            Message::Deregistered => Ok(()),
            other => Err(unexpected("Deregistered", other)),
        }
    }

    /// The peer table: as polars prints it, and as rows.
    ///
    /// # Errors
    /// Any connection error.
    pub async fn peers(&mut self) -> Result<(String, Vec<PeerRow>)> {
        match self.call(Message::ListPeers, "Peers").await? {
            Message::Peers { table, rows } => Ok((table, rows)),
            other => Err(unexpected("Peers", other)),
        }
    }

    /// Leases `count` slots. If the tracker queues the request, `on_wait`
    /// is called with the `Waiting` message's (position, free, needed) and
    /// the call waits for the grant — for at most `max_wait` when given.
    /// Dropping the future (or the client) leaves the queue.
    ///
    /// # Errors
    /// [`Error::Timeout`] when `max_wait` passes, [`Error::Remote`] if the
    /// tracker refuses, or any connection error.
    pub async fn lease(
        &mut self,
        count: u32,
        detached: bool,
        max_wait: Option<Duration>,
        mut on_wait: impl FnMut(u32, u32, u32),
    ) -> Result<LeaseGrant> {
        match self.call(Message::Lease { count, detached }, "Leased or Waiting").await? {
            Message::Leased(grant) => Ok(grant),
            Message::Waiting { position, free, needed } => {
                on_wait(position, free, needed);
                let wait = async {
                    match self.conn.reader.read_message("Leased").await? {
                        Message::Leased(grant) => Ok(grant),
                        other => Err(unexpected("Leased", other)),
                    }
                };
                match max_wait {
                    Some(limit) => deadline(limit, "a lease in the tracker's queue", wait).await,
                    None => wait.await,
                }
            }
            other => Err(unexpected("Leased", other)),
        }
    }

    /// Extends a lease by its TTL; returns the TTL.
    ///
    /// # Errors
    /// [`Error::Remote`] with `UnknownLease` if it already ended.
    pub async fn renew(&mut self, lease_id: u64) -> Result<Duration> {
        match self.call(Message::Renew { lease_id }, "Renewed").await? {
            Message::Renewed { ttl_ms, .. } => Ok(Duration::from_millis(ttl_ms)),
            other => Err(unexpected("Renewed", other)),
        }
    }

    /// Releases a lease.
    ///
    /// # Errors
    /// [`Error::Remote`] with `UnknownLease` if it already ended.
    pub async fn release(&mut self, lease_id: u64) -> Result<()> {
        match self.call(Message::Release { lease_id }, "Released").await? {
            Message::Released { .. } => Ok(()),
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
        lease_id: u64,
        peer_id: u64,
        reason: &str,
        replace: bool,
    ) -> Result<Option<PeerAddr>> {
        let msg = Message::ReportFailure { lease_id, peer_id, reason: reason.to_string(), replace };
        match self.call(msg, "FailureRecorded").await? {
            Message::FailureRecorded { replacement, .. } => Ok(replacement),
            other => Err(unexpected("FailureRecorded", other)),
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
