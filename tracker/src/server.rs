//! The tracker's TCP server: accepts connections, turns their frames into
//! calls on [`Tracker`], and cleans up after each connection. It never sees
//! bytes (that is `septet_common::conn`) nor polars (that is the table).

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use septet_common::conn::{ConnLimits, FrameBudget};
use septet_common::listener::{self, ListenConfig, Splicer};
use septet_common::proto::{Failure, FederationReply, FederationRequest, Rendezvous, TrackerReply, TrackerRequest};
use septet_common::{deadline, Connection, Frame, Role};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, instrument, warn};

use crate::federation::Borrowed;
use crate::metrics::RequestKind;
use crate::state::{Caller, ConnId, Done, Grant, LeaseOutcome, LeaseToken, Op, Ticket};
use crate::{Error, Result, Tracker, TrackerConfig};

/// "Bad frame" warnings, at most a burst per window like handshake refusals.
static BAD_FRAMES: std::sync::LazyLock<listener::RateLimit> = std::sync::LazyLock::new(listener::RateLimit::new);

/// How long shutdown waits for connection tasks to finish.
const DRAIN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);
/// Most lease and release requests applied in one batch.
const MAX_BATCH: usize = 1024;

/// A lease or release request on its way to the batch loop, with where its
/// result goes.
pub(crate) type Submission = (Op, oneshot::Sender<Result<Done>>);

/// Serves a new tracker on `listener` until `shutdown` completes.
///
/// # Errors
/// [`Error::Config`] for an invalid configuration.
pub async fn run(listener: TcpListener, config: TrackerConfig, shutdown: impl Future<Output = ()>) -> Result<()> {
    serve(Tracker::new(config)?, listener, shutdown).await
}

/// Serves `tracker` on `listener` until `shutdown` completes: every
/// connection is authenticated first (the shared scaffold in
/// `septet_common::listener`: connection cap, handshake deadline,
/// cancellation, drain); then stops accepting, tells every connection to
/// stop between frames, and waits (with a deadline) for them to finish.
///
/// # Errors
/// None in practice: accept errors are logged and retried.
pub async fn serve(tracker: Tracker, listener: TcpListener, shutdown: impl Future<Output = ()>) -> Result<()> {
    let config = tracker.config().clone();
    let side = CancellationToken::new();
    let side_tasks = TaskTracker::new();
    side_tasks.spawn(sweep_loop(tracker.clone(), side.clone()));
    // Unbounded, yet bounded in practice: a connection has at most one
    // request in flight.
    let (ops, batches) = mpsc::unbounded_channel();
    side_tasks.spawn(batch_loop(tracker.clone(), batches));
    // Also without --federate: a sibling behind a NAT may link back.
    side_tasks.spawn(tracker.federation().clone().poll_loop(tracker.clone(), side.clone()));
    info!(addr = %listener.local_addr()?, "tracker listening");
    let splices = Arc::new(crate::splice::Splices::new(tracker.metrics().clone(), side.clone()));
    let listen = ListenConfig {
        name: "tracker",
        limits: ConnLimits {
            max_frame_len: config.max_frame_len,
            handshake_timeout: config.handshake_timeout,
            stall_timeout: Some(config.io_timeout),
            idle_timeout: None,
            security: config.security.clone(),
            // Control messages only: 64 of the largest in flight at once.
            budget: Some(FrameBudget::new(config.max_frame_len.saturating_mul(64))),
        },
        max_connections: config.max_connections,
        drain_timeout: DRAIN_TIMEOUT,
        on_refusal: Some(tracker.metrics().refusal_hook()),
        splicer: Some(Splicer(Arc::new({
            let splices = splices.clone();
            move |stream, id| splices.leg(stream, id)
        }))),
    };
    let next_conn = Arc::new(AtomicU64::new(0));
    tracker.federation().set_server(crate::federation::Server {
        listen: listener.local_addr()?,
        ops: ops.downgrade(),
        next_conn: next_conn.clone(),
        cancel: side.clone(),
        splices,
    });
    let handler = {
        let (tracker, ops) = (tracker.clone(), ops.clone());
        move |conn: Connection, role: Role, cancel: CancellationToken| {
            let conn_id: ConnId = next_conn.fetch_add(1, Ordering::Relaxed) + 1;
            serve_connection(tracker.clone(), ops.clone(), conn, role, conn_id, cancel)
        }
    };
    listener::serve(listener, listen, shutdown, handler).await;
    // The batch loop ends once the connections, the other holders, are done.
    drop(ops);
    side.cancel();
    side_tasks.close();
    if tokio::time::timeout(DRAIN_TIMEOUT, side_tasks.wait()).await.is_err() {
        warn!("the tracker's batch loop did not finish within {DRAIN_TIMEOUT:?}");
    }
    Ok(())
}

async fn sweep_loop(tracker: Tracker, cancel: CancellationToken) {
    let mut tick = tokio::time::interval(tracker.config().sweep_period());
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {
                if let Err(e) = tracker.sweep() {
                    warn!(error = %e, "sweep failed");
                }
                tracker.federation().sweep();
            }
        }
    }
}

/// Applies lease and release requests in batches: each batch is everything
/// the connections submitted while the previous one was being applied. On
/// the tracker's single thread that is every request whose bytes arrived in
/// the same turn of the event loop, so under load the table's column passes
/// are shared by many requests (see [`Tracker::apply`]); when idle, a batch
/// is one request and costs what it did alone.
async fn batch_loop(tracker: Tracker, mut submissions: mpsc::UnboundedReceiver<Submission>) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while submissions.recv_many(&mut batch, MAX_BATCH).await > 0 {
        let (ops, replies): (Vec<Op>, Vec<_>) = batch.drain(..).unzip();
        // A panic here would be a bug; it fails this batch's requests, not
        // every later lease (the loop is the only way to one).
        let applied = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| tracker.apply(ops)));
        let results = applied.unwrap_or_else(|_| {
            tracing::error!(requests = replies.len(), "applying a batch of lease requests panicked");
            replies.iter().map(|_| Err(Error::Internal("applying the request panicked".into()))).collect()
        });
        for (done, reply) in results.into_iter().zip(replies) {
            // Only fails if the connection's task is gone, which happens
            // only after its reply arrived (it awaits it).
            let _ = reply.send(done);
        }
    }
}

/// What a client is told when the tracker stops under its request.
fn shutting_down() -> septet_common::Error {
    septet_common::Error::Remote {
        code: septet_common::ErrorCode::ShuttingDown,
        message: "the tracker is shutting down".into(),
    }
}

/// Hands `op` to the batch loop and waits for its result.
pub(crate) async fn submit(ops: &mpsc::UnboundedSender<Submission>, op: Op) -> Result<Done> {
    let (reply, done) = oneshot::channel();
    ops.send((op, reply)).map_err(|_| Error::Protocol(shutting_down()))?;
    done.await.map_err(|_| Error::Protocol(shutting_down()))?
}

/// Resolves with the outcome of a lease that borrows from a sibling; never,
/// without one.
async fn next_borrowed(wait: &mut Option<oneshot::Receiver<Result<Grant>>>) -> Result<Grant> {
    match wait {
        Some(w) => w.await.unwrap_or_else(|_| Err(Error::Internal("borrowing from a sibling stopped".into()))),
        None => std::future::pending().await,
    }
}

/// What a connection waits for besides its next request.
struct Waits<'a> {
    ticket: &'a mut Option<Ticket>,
    borrowing: &'a mut Option<oneshot::Receiver<Result<Grant>>>,
    lending: &'a mut Option<u32>,
}

/// Resolves once the queued request's grant arrives; never, without one.
async fn next_grant(ticket: &mut Option<Ticket>) -> Option<Grant> {
    match ticket {
        Some(t) => (&mut t.grant).await.ok(),
        None => std::future::pending().await,
    }
}

#[instrument(skip_all, fields(conn = conn_id, peer = %conn.peer))]
pub(crate) async fn serve_connection(
    tracker: Tracker,
    ops: mpsc::UnboundedSender<Submission>,
    mut conn: Connection,
    role: Role,
    conn_id: ConnId,
    cancel: CancellationToken,
) {
    let config = tracker.config().clone();
    debug!(?role, "connection accepted");
    tracker.connected(conn_id, conn.peer);
    let mut ticket: Option<Ticket> = None;
    // A lease that borrows from a sibling and waits in its queue.
    let mut borrowing: Option<oneshot::Receiver<Result<Grant>>> = None;
    // Slots of a `Lend` request waiting here, counted as lent once granted.
    let mut lending: Option<u32> = None;
    loop {
        let frame = tokio::select! {
            _ = cancel.cancelled() => {
                conn.refuse::<TrackerReply>(&shutting_down()).await;
                break;
            }
            Some(grant) = next_grant(&mut ticket) => {
                ticket = None;
                if let Some(n) = lending.take() {
                    tracker.metrics().lent(n);
                }
                if let Err(e) = send(&mut conn, &leased(grant), &config).await {
                    debug!(error = %e, "could not deliver a queued lease");
                    break;
                }
                continue;
            }
            got = next_borrowed(&mut borrowing) => {
                borrowing = None;
                let reply = match got {
                    Ok(grant) => leased(grant),
                    Err(e) => error_reply(&e),
                };
                if let Err(e) = send(&mut conn, &reply, &config).await {
                    debug!(error = %e, "could not deliver a lease with borrowed slots");
                    break;
                }
                continue;
            }
            frame = conn.reader.read_frame() => frame,
        };
        let msg = match frame.and_then(|frame| match frame {
            Some(Frame::Control(body)) => body.decode::<TrackerRequest>().map(Some),
            Some(Frame::Blocks(_)) => {
                Err(septet_common::Error::Unexpected { expected: "a control message", got: "matrix blocks".into() })
            }
            None => Ok(None),
        }) {
            // A sibling behind a NAT links back: this connection becomes
            // this tracker's link to it (it answers, this side asks).
            Ok(Some(TrackerRequest::Federation(FederationRequest::LinkBack { cluster }))) => {
                tracker.metrics().request(RequestKind::Reverse, true);
                if let Err(e) = send(&mut conn, &TrackerReply::Federation(FederationReply::LinkedBack), &config).await {
                    debug!(error = %e, "could not accept a link back");
                    break;
                }
                if let Err(e) = tracker.federation().adopt(cluster, conn).await {
                    warn!(error = %e, "refused a link back");
                }
                tracker.federation().disconnect(&tracker, conn_id).await;
                tracker.disconnect(conn_id);
                return;
            }
            Ok(Some(msg)) => msg,
            Ok(None) => break,
            Err(e) => {
                if let Some(suppressed) = BAD_FRAMES.allow() {
                    warn!(error = %e, suppressed, "bad frame; dropping the connection");
                }
                tracker.metrics().request(RequestKind::Malformed, false);
                conn.refuse::<TrackerReply>(&e).await;
                break;
            }
        };
        let mut waits = Waits { ticket: &mut ticket, borrowing: &mut borrowing, lending: &mut lending };
        let reply = handle(&tracker, &ops, msg, conn_id, conn.peer, role, &mut waits).await;
        if let Err(e) = send(&mut conn, &reply, &config).await {
            debug!(error = %e, "could not send a reply");
            break;
        }
    }
    // A borrowing lease still waiting at a lender: dropping its receiver
    // makes the task waiting there give everything back.
    drop(borrowing);
    tracker.federation().disconnect(&tracker, conn_id).await;
    let ended = tracker.disconnect(conn_id);
    if ended > 0 {
        info!(leases = ended, "connection closed; its leases returned to the pool");
    }
}

async fn send(conn: &mut Connection, msg: &TrackerReply, config: &TrackerConfig) -> septet_common::Result<()> {
    deadline(config.io_timeout, "the client to take a reply", conn.writer.send(msg)).await
}

fn error_reply(e: &Error) -> TrackerReply {
    TrackerReply::Error(Failure { code: e.code(), message: e.to_string(), task_id: None })
}

/// The reply for a grant: the lease and its token, for this connection only.
fn leased(grant: Grant) -> TrackerReply {
    TrackerReply::Leased(grant.lease)
}

/// Who sent a lease request: this connection, with the token it presented.
/// A meeting tracker's address as a sibling passed it on (`addr`, from
/// the connection at `peer`): an unspecified IP (a tracker listening on
/// every interface) becomes the one the sibling reached this tracker from.
fn spliced_from(addr: String, via: Option<Rendezvous>, peer: SocketAddr) -> String {
    match addr.parse::<SocketAddr>() {
        Ok(a) if via.is_some() && a.ip().is_unspecified() => SocketAddr::new(peer.ip(), a.port()).to_string(),
        _ => addr,
    }
}

fn caller(conn: ConnId, token: Option<String>) -> Caller {
    Caller { conn, token: token.map(LeaseToken::presented) }
}

/// The listening address to hand out for a worker: its own, except that an
/// unspecified host becomes the host the tracker sees it connect from.
/// Refused: a port of 0, and — after that substitution — an address no
/// requester could connect to: unspecified, multicast or broadcast.
fn resolve_listen(listen: &str, seen_from: SocketAddr) -> Result<String> {
    let addr: SocketAddr =
        listen.parse().map_err(|_| Error::Invalid(format!("{listen:?} is not an ip:port listening address")))?;
    if addr.port() == 0 {
        return Err(Error::Invalid("a worker must register the port it actually listens on, not 0".into()));
    }
    let ip = if addr.ip().is_unspecified() { seen_from.ip() } else { addr.ip() };
    let broadcast = matches!(ip, std::net::IpAddr::V4(v4) if v4.is_broadcast());
    let kind = if ip.is_unspecified() {
        Some("unspecified")
    } else if ip.is_multicast() {
        Some("multicast")
    } else if broadcast {
        Some("broadcast")
    } else {
        None
    };
    if let Some(kind) = kind {
        return Err(Error::Invalid(format!(
            "a worker cannot register {listen}: {ip} is a {kind} address, which requesters cannot connect to"
        )));
    }
    Ok(SocketAddr::new(ip, addr.port()).to_string())
}

/// A worker may register the address it connects from; any other only
/// if the tracker reaches a septet server there (with the cluster's
/// secret): so nobody hands out addresses that are not grid workers'.
async fn prove_listen(tracker: &Tracker, addr: &str, seen_from: SocketAddr) -> Result<()> {
    let listen: SocketAddr = addr.parse().map_err(|_| Error::Invalid(format!("{addr:?} is not an ip:port")))?;
    if listen.ip().to_canonical() == seen_from.ip().to_canonical() {
        return Ok(());
    }
    let config = tracker.config();
    let limits = ConnLimits {
        handshake_timeout: config.handshake_timeout.min(config.io_timeout),
        security: config.security.clone(),
        ..ConnLimits::default()
    };
    match Connection::connect(listen, Role::Client, limits).await {
        Ok(mut conn) => {
            let _ = conn.writer.shutdown().await;
            debug!(%addr, from = %seen_from, "a worker's address, other than the one it connects from, answers");
            Ok(())
        }
        Err(e) => Err(Error::Invalid(format!(
            "a worker connecting from {} cannot register {addr}: that is not its address as the tracker sees it, and \
             the tracker could not reach a septet worker there to check ({e}); register the address it connects \
             from (--listen 0.0.0.0:PORT), or make {addr} reachable from the tracker",
            seen_from.ip()
        ))),
    }
}

/// A lease from this cluster's slots: granted, or queued (the grant comes
/// on `waits.ticket`).
async fn lease(
    ops: &mpsc::UnboundedSender<Submission>,
    count: u32,
    conn: ConnId,
    detached: bool,
    waits: &mut Waits<'_>,
) -> Result<TrackerReply> {
    submit(ops, Op::Lease { count, conn, detached }).await.map(|done| match done.into_lease() {
        LeaseOutcome::Granted(grant) => leased(grant),
        LeaseOutcome::Queued(t) => {
            let reply = TrackerReply::Waiting { position: t.position, free: t.free, needed: count };
            *waits.ticket = Some(t);
            reply
        }
    })
}

/// One request → one reply. Leases and releases go through the batch loop;
/// the rest, rarer, take the tracker's lock directly.
async fn handle(
    tracker: &Tracker,
    ops: &mpsc::UnboundedSender<Submission>,
    msg: TrackerRequest,
    conn: ConnId,
    peer: SocketAddr,
    role: Role,
    waits: &mut Waits<'_>,
) -> TrackerReply {
    let heartbeat_ms = tracker.config().heartbeat_interval.as_millis() as u64;
    let kind = RequestKind::of(&msg);
    let federation = tracker.federation();
    let result = match msg {
        // Only a connection that said it is a worker speaks for one.
        TrackerRequest::Register { .. } | TrackerRequest::Heartbeat { .. } | TrackerRequest::Deregister { .. }
            if role != Role::Worker =>
        {
            Err(Error::Invalid(format!(
                "{} is a worker's request, and this connection opened as a client",
                kind.as_str()
            )))
        }
        // Requests about a lease that borrows from a sibling.
        TrackerRequest::Renew { lease_id, .. }
        | TrackerRequest::Broker { lease_id, .. }
        | TrackerRequest::Release { lease_id, .. }
        | TrackerRequest::ReportFailure { lease_id, .. }
        | TrackerRequest::Hedge { lease_id, .. }
        | TrackerRequest::Speed { lease_id, .. }
            if federation.owns(lease_id) =>
        {
            federation.handle(tracker, ops, msg, conn).await
        }
        TrackerRequest::Register { listen, slots, memory_mib } => match resolve_listen(&listen, peer) {
            Ok(addr) => prove_listen(tracker, &addr, peer).await.map(|()| addr),
            Err(e) => Err(e),
        }
        .and_then(|addr| {
            let peer_id = tracker.register_by(&addr, slots, conn)?;
            tracker.set_memory(peer_id, memory_mib)?;
            info!(%peer_id, %addr, slots, memory_mib, "worker registered");
            let (ticket_key, now_ms) = (tracker.ticket_key(), tracker.clock_ms());
            Ok(TrackerReply::Registered { peer_id, addr, heartbeat_ms, ticket_key, now_ms })
        }),
        TrackerRequest::Heartbeat { peer_id } => {
            tracker.heartbeat_by(peer_id, conn).map(|()| TrackerReply::HeartbeatAck { now_ms: tracker.clock_ms() })
        }
        TrackerRequest::Deregister { peer_id } => tracker.deregister_by(peer_id, conn).map(|()| {
            info!(%peer_id, "worker deregistered");
            TrackerReply::Deregistered
        }),
        TrackerRequest::ListPeers => tracker.peers().map(|(table, rows)| TrackerReply::Peers { table, rows }),
        TrackerRequest::ListFederation => match tracker.peers() {
            Ok((_, mut rows)) => {
                rows.extend(federation.sibling_rows(tracker).await);
                crate::table::render(&rows).map(|table| TrackerReply::Peers { table, rows }).map_err(Error::from)
            }
            Err(e) => Err(e),
        },
        TrackerRequest::Broker { lease_id, peer_id, addr, nonce, token, via } => {
            let started = std::time::Instant::now();
            let out = match tracker.leased_peer(lease_id, peer_id, &caller(conn, token)) {
                Ok(worker) => match federation.rendezvous(spliced_from(addr, via, peer), via) {
                    Ok(addr) => crate::federation::dial_back(tracker, &worker, addr, nonce, via).await,
                    Err(e) => Err(e),
                },
                Err(e) => Err(e),
            };
            tracker.metrics().brokered(crate::federation::broker_outcome(&out, via), started.elapsed());
            out
        }
        TrackerRequest::Federation(FederationRequest::LinkBack { .. }) => {
            Err(Error::Invalid("a link back must be the first request".into()))
        }
        TrackerRequest::Federation(FederationRequest::Status { cluster, listen }) => tracker.levels().map(|levels| {
            debug!(%cluster, "federation: a sibling asks how we are");
            TrackerReply::Federation(FederationReply::Status {
                cluster: federation.cluster().to_string(),
                free: levels.slots_free as u32,
                slots: levels.slots as u32,
                queued: levels.queue_length as u32,
                reverse: federation.wants_reverse(tracker, &cluster, &listen, peer),
            })
        }),
        TrackerRequest::Lease { .. } | TrackerRequest::Federation(FederationRequest::Lend { .. })
            if waits.ticket.is_some() || waits.borrowing.is_some() =>
        {
            Err(Error::Invalid("this connection already has a lease request waiting".into()))
        }
        TrackerRequest::Lease { count, detached } => {
            match federation.lease(tracker, ops, count, conn, detached).await {
                Some(Borrowed::Granted(grant)) => Ok(leased(grant)),
                Some(Borrowed::Waiting { position, free, wait }) => {
                    *waits.borrowing = Some(wait);
                    Ok(TrackerReply::Waiting { position, free, needed: count })
                }
                None => lease(ops, count, conn, detached, waits).await,
            }
        }
        TrackerRequest::Federation(FederationRequest::Lend { count, cluster }) => {
            info!(%cluster, count, "federation: a sibling borrows slots");
            let reply = lease(ops, count, conn, true, waits).await;
            match &reply {
                Ok(TrackerReply::Leased(_)) => tracker.metrics().lent(count),
                Ok(_) => *waits.lending = Some(count),
                Err(_) => {}
            }
            reply
        }
        TrackerRequest::Renew { lease_id, token } => tracker
            .renew_by(lease_id, &caller(conn, token))
            .map(|(ttl, peers)| TrackerReply::Renewed { lease_id, ttl_ms: ttl.as_millis() as u64, peers }),
        TrackerRequest::Release { lease_id, token } => {
            submit(ops, Op::ReleaseBy { lease_id, caller: caller(conn, token) })
                .await
                .map(|_| TrackerReply::Released { lease_id })
        }
        TrackerRequest::ReportFailure { lease_id, peer_id, reason, replace, token } => {
            let replacement = tracker.report_failure_by(lease_id, peer_id, replace, &caller(conn, token));
            // Logged only once known to come from the lease's holder.
            replacement.map(|replacement| {
                let reason = septet_common::proto::sanitized(&reason);
                warn!(%lease_id, %peer_id, %reason, "failure reported against a peer");
                TrackerReply::FailureRecorded { lease_id, replacement }
            })
        }
        TrackerRequest::Hedge { lease_id, peer_id, token } => {
            tracker.hedge_by(lease_id, peer_id, &caller(conn, token)).map(|slot| {
                info!(%lease_id, %peer_id, spare = ?slot.as_ref().map(|s| s.peer_id), "hedging a slow peer's product");
                TrackerReply::HedgeSlot { lease_id, slot }
            })
        }
        TrackerRequest::Speed { lease_id, beaten, proven, token } => {
            tracker.record_speed_by(lease_id, &beaten, &proven, &caller(conn, token)).map(|()| {
                if !beaten.is_empty() {
                    info!(%lease_id, ?beaten, "peers beaten by hedges: one slow strike each");
                }
                TrackerReply::SpeedRecorded { lease_id }
            })
        }
    };
    tracker.metrics().request(kind, result.is_ok());
    result.unwrap_or_else(|e| error_reply(&e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unspecified_hosts_become_the_address_seen() {
        let seen: SocketAddr = "10.1.2.3:5555".parse().unwrap();
        assert_eq!(resolve_listen("0.0.0.0:7000", seen).unwrap(), "10.1.2.3:7000");
        assert_eq!(resolve_listen("127.0.0.1:7000", seen).unwrap(), "127.0.0.1:7000");
        assert_eq!(resolve_listen("[::]:7000", seen).unwrap(), "10.1.2.3:7000");
        assert!(matches!(resolve_listen("127.0.0.1:0", seen), Err(Error::Invalid(_))));
        assert!(matches!(resolve_listen("nonsense", seen), Err(Error::Invalid(_))));
        for bad in ["224.0.0.1:7000", "[ff02::1]:7000", "255.255.255.255:7000"] {
            let err = resolve_listen(bad, seen).unwrap_err().to_string();
            assert!(err.contains("cannot register") && err.contains("address"), "{bad}: {err}");
        }
        // Substitution cannot make an unspecified address usable when the
        // tracker saw nothing better.
        let nowhere: SocketAddr = "0.0.0.0:5555".parse().unwrap();
        assert!(resolve_listen("0.0.0.0:7000", nowhere).unwrap_err().to_string().contains("unspecified"));
    }
}
