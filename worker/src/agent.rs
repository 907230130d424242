//! A worker's life with the tracker: register, heartbeat, and when the
//! tracker goes away (or forgets us) keep retrying with jittered
//! exponential backoff and register again once it is back. On shutdown the
//! worker deregisters.
//!
//! Ownership: the tracker lets only the connection that registered a peer
//! heartbeat or deregister it. The agent needs no token for that because
//! every session registers first, on its own fresh connection: after any
//! reconnection it is the registering connection again (a registration from
//! the same address takes the peer's row over). If another registration
//! from our address took the row over meanwhile, heartbeats are refused as
//! `Unauthorized` and the agent registers again, like after `PeerGone`.
//!
//! # A silent tracker
//!
//! A tracker cut off without a reset or FIN (a link down, a partition)
//! says nothing: requests simply get no reply and connection attempts no
//! SYN-ACK. The agent notices the way a requester notices a silent worker,
//! by replies that stop coming, and bounds every wait by the heartbeat
//! rhythm rather than by the I/O timeout (`AgentConfig::timeout`, 10 s by
//! default):
//!
//! - a heartbeat reply must come within [`reply_timeout`]: twice the
//!   interval the tracker hands out at registration (2 s by default, so
//!   4 s), at least [`MIN_REPLY_TIMEOUT`], at most the I/O timeout. A late
//!   reply means the next heartbeat is already due; the session ends (the
//!   client is poisoned by the abandoned call and dropped) and a new
//!   connection registers. If the tracker was merely slow that costs
//!   nothing: a registration from our address takes our row over, leases
//!   and all.
//! - joining — the TCP connect with the handshake, then the registration,
//!   each — must finish within [`JOIN_TIMEOUT`] (3 s, at most the I/O
//!   timeout), so during a cut a fresh connection attempt starts every
//!   few seconds instead of one attempt sitting out the kernel's SYN
//!   retransmissions (1, 2, 4, 8 s apart) for the whole I/O timeout.
//! - backoff between attempts is measured from the start of the failed
//!   attempt: a connect that already waited out its deadline has waited
//!   long enough and the next starts at once. A tracker that refuses
//!   quickly (restarting: connection refused, or busy) still sees each
//!   worker at most once per jittered backoff, 100 ms doubling to
//!   [`BACKOFF_MAX`] (2 s, ×0.5..1.5 jitter), so a restart is not stormed;
//!   a silent one gets a new connection attempt from each worker every
//!   3 s ([`JOIN_TIMEOUT`], by which time the jittered backoff, at most
//!   1.5 × [`BACKOFF_MAX`] = 3 s, has passed too).
//!
//! So when a partition heals, each worker is in one of these states, and
//! registered again — which makes it `alive` in the tracker's table at
//! once — within:
//!
//! - waiting for a heartbeat reply (only if the cut was shorter than the
//!   heartbeat interval plus the reply bound, 6 s): TCP retransmits the
//!   request, and the reply or the 4 s bound ends the wait; a registration
//!   follows after the first backoff (≤ 150 ms): ≤ 4.2 s;
//! - connecting or registering: the attempt's own retransmission (a SYN
//!   1 s in) or the next attempt (3 s in) reaches the tracker: ≤ 3 s;
//! - sleeping after a quick failure (e.g. "no route to host" once the
//!   tracker's neighbour entry failed): ≤ 3 s, then a connect that works;
//!
//! plus a round trip each for the handshake and the registration: about
//! 4 s in the worst case with the default settings, well inside the 15 s
//! the grid promises (`tests/netns.rs` measures it for a cut tracker).
//! With other settings the bound is max(reply bound, join bound,
//! 1.5 × [`BACKOFF_MAX`]) plus those round trips.
//!
//! Logging: a lost tracker is one warning; the attempts that follow are at
//! debug level, with an info line each minute while it stays away and one
//! when the worker is registered again (saying after how long).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rand::RngExt;
use septet_common::secure::{HandshakeFailure, Security};
use septet_common::ticket::TicketVerifier;
use septet_common::{deadline, Error, ErrorCode, Role};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::gate::Gate;
use crate::metrics::WorkerMetrics;
use septet_client::tracker::{or_cancel, Registration, TrackerClient};

/// First retry delay after losing the tracker.
const BACKOFF_START: Duration = Duration::from_millis(100);
/// Longest retry delay (before jitter): a restarted tracker sees its
/// workers again within about 1.5 times this long.
pub const BACKOFF_MAX: Duration = Duration::from_secs(2);
/// Deadline for connecting to the tracker (TCP connect and handshake) and,
/// separately, for its reply to our registration; capped by the I/O timeout.
pub const JOIN_TIMEOUT: Duration = Duration::from_secs(3);
/// The shortest heartbeat-reply bound, however short the heartbeat
/// interval: a busy tracker (or test machine) is not taken for a gone one.
pub const MIN_REPLY_TIMEOUT: Duration = Duration::from_secs(1);
/// How often a long outage is reported at info level.
const OUTAGE_REPORT_EVERY: Duration = Duration::from_secs(60);

/// What the agent needs to stay registered.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// The tracker's address.
    pub tracker: String,
    /// This worker's compute listener.
    pub listen: SocketAddr,
    /// Tasks it runs at once.
    pub slots: u32,
    /// Memory its tasks may use, MiB, all slots together (0: not said).
    pub memory_mib: u64,
    /// Upper bound on every wait for the tracker; the agent's own bounds
    /// ([`JOIN_TIMEOUT`], [`reply_timeout`]) are shorter by default.
    pub timeout: Duration,
    /// The cluster secret and whether to encrypt.
    pub security: Security,
    /// Where the tracker's ticket key and clock go (see [`crate::gate`]).
    pub gate: Option<Arc<Gate>>,
}

/// How long the agent waits for a heartbeat (or deregistration) reply when
/// the tracker asks for a heartbeat every `interval`: two intervals, at
/// least [`MIN_REPLY_TIMEOUT`], at most `timeout` (the I/O timeout).
pub fn reply_timeout(interval: Duration, timeout: Duration) -> Duration {
    interval.saturating_mul(2).max(MIN_REPLY_TIMEOUT).min(timeout)
}

/// Since when the tracker has been out of reach, for the logs.
struct Outage {
    since: Instant,
    attempts: u32,
    reported: Instant,
}

impl Outage {
    fn new() -> Self {
        let now = Instant::now();
        Self { since: now, attempts: 0, reported: now }
    }

    /// Logs another failed attempt: at debug level, but at info once every
    /// [`OUTAGE_REPORT_EVERY`] so that a long outage stays visible.
    fn still_away(&mut self, tracker: &str, e: &Error, wait: Duration) {
        self.attempts += 1;
        if self.reported.elapsed() >= OUTAGE_REPORT_EVERY {
            self.reported = Instant::now();
            let down_for = self.since.elapsed();
            info!(tracker, error = %e, attempts = self.attempts, ?down_for, "still cannot reach the tracker");
        } else {
            debug!(tracker, error = %e, attempt = self.attempts, retry_in = ?wait, "still cannot reach the tracker");
        }
    }
}

/// How a registered session ended without an error.
enum Ended {
    /// Cancelled (after deregistering, or trying to).
    Cancelled,
    /// The tracker no longer knows us (or another connection took our row
    /// over): register again at once.
    Forgotten(String),
}

/// Keeps the worker registered with the tracker until `cancel` fires,
/// then deregisters. A tracker that is absent, restarting, busy or silent
/// is retried with backoff (see the module docs for the bounds).
///
/// # Errors
/// A tracker that refuses our cluster secret (or our encryption setting,
/// or speaks another protocol version) is not retried: that is this
/// worker's configuration, which no wait will fix, and a worker that kept
/// knocking would sit unused and unnoticed. The error names the cause; the
/// worker stops with it.
pub async fn run(config: AgentConfig, cancel: CancellationToken) -> Result<(), Error> {
    run_observed(config, &WorkerMetrics::default(), cancel).await
}

/// [`run`], showing in `metrics` whether the worker is registered
/// (`septet_worker_registered`) and how often it registered.
///
/// # Errors
/// As [`run`].
pub async fn run_observed(
    config: AgentConfig,
    metrics: &WorkerMetrics,
    cancel: CancellationToken,
) -> Result<(), Error> {
    let tracker = config.tracker.as_str();
    let mut backoff = BACKOFF_START;
    // Some while the tracker is out of reach (also before the first registration).
    let mut outage: Option<Outage> = None;
    loop {
        let started = Instant::now();
        let Some(joined) = or_cancel(&cancel, join(&config)).await else { return Ok(()) };
        let (mut client, reg) = match joined {
            Ok(joined) => joined,
            Err(e) if is_fatal(&e) => return Err(e),
            Err(e) => {
                // Measured from the attempt's start: an attempt that waited
                // out its deadline has waited long enough.
                let wait = jittered(backoff).saturating_sub(started.elapsed());
                match &mut outage {
                    Some(o) => o.still_away(tracker, &e, wait),
                    None => {
                        warn!(tracker, error = %e, retry_in = ?wait, "cannot reach the tracker; will keep trying");
                        outage = Some(Outage::new());
                    }
                }
                if or_cancel(&cancel, tokio::time::sleep(wait)).await.is_none() {
                    return Ok(());
                }
                backoff = (backoff * 2).min(BACKOFF_MAX);
                continue;
            }
        };
        backoff = BACKOFF_START;
        match outage.take() {
            Some(o) => info!(
                peer_id = %reg.peer_id, addr = %reg.addr, slots = config.slots, tracker,
                after = ?o.since.elapsed(), attempts = o.attempts + 1,
                "registered with the tracker"
            ),
            None => info!(
                peer_id = %reg.peer_id, addr = %reg.addr, slots = config.slots, tracker,
                "registered with the tracker"
            ),
        }
        if let Some(gate) = &config.gate {
            gate.registered(TicketVerifier::new(
                &reg.ticket_key,
                reg.peer_id,
                reg.tracker_ms,
                std::time::Instant::now(),
            ));
        }
        metrics.set_registered(true);
        let stayed = stay(&mut client, &reg, &config, &cancel).await;
        metrics.set_registered(false);
        match stayed {
            Ok(Ended::Cancelled) => return Ok(()),
            Ok(Ended::Forgotten(message)) => {
                // The tracker restarted or gave up on us: register again now.
                info!(%message, "the tracker no longer knows this worker; registering again");
            }
            Err(e) if is_fatal(&e) => return Err(e),
            Err(e) => {
                if cancel.is_cancelled() {
                    return Ok(());
                }
                // Jitter spreads a grid's workers out when a tracker restarts.
                let wait = jittered(backoff);
                warn!(tracker, error = %e, retry_in = ?wait, "lost the tracker; will register again");
                outage = Some(Outage::new());
                if or_cancel(&cancel, tokio::time::sleep(wait)).await.is_none() {
                    return Ok(());
                }
                backoff = (backoff * 2).min(BACKOFF_MAX);
            }
        }
    }
}

/// `backoff` times a random factor in 0.5..1.5.
fn jittered(backoff: Duration) -> Duration {
    backoff.mul_f64(rand::rng().random_range(0.5..1.5))
}

/// Whether `e` is about this worker's configuration rather than the
/// tracker's availability.
fn is_fatal(e: &Error) -> bool {
    match e {
        Error::Handshake { failure, .. } => *failure != HandshakeFailure::Busy,
        Error::VersionMismatch { .. } => true,
        _ => false,
    }
}

/// Connects to the tracker and registers, each step within [`JOIN_TIMEOUT`].
async fn join(config: &AgentConfig) -> Result<(TrackerClient, Registration), Error> {
    let AgentConfig { tracker, listen, slots, memory_mib, timeout, security, .. } = config;
    let limit = JOIN_TIMEOUT.min(*timeout);
    let connecting = TrackerClient::connect_with(tracker, Role::Worker, *timeout, security);
    let mut client = deadline(limit, "the tracker to accept the connection", connecting).await?;
    // Abandoned on timeout, the client is poisoned; it is dropped anyway.
    let reg = deadline(limit, "the tracker's reply to our registration", client.register(*listen, *slots, *memory_mib))
        .await?;
    Ok((client, reg))
}

/// A registered session: heartbeat until an error, the tracker forgetting
/// us, or `cancel` (then deregister).
async fn stay(
    client: &mut TrackerClient,
    reg: &Registration,
    config: &AgentConfig,
    cancel: &CancellationToken,
) -> Result<Ended, Error> {
    let reply_limit = reply_timeout(reg.heartbeat, config.timeout);
    let mut tick = tokio::time::interval(reg.heartbeat);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tokio::select! {
            _ = cancel.cancelled() => {
                match deadline(reply_limit, "the tracker to confirm we left", client.deregister(reg.peer_id)).await {
                    Ok(()) => info!(peer_id = %reg.peer_id, "deregistered from the tracker"),
                    Err(e) => warn!(error = %e, "could not deregister"),
                }
                return Ok(Ended::Cancelled);
            }
            _ = tick.tick() => {
                // A timeout abandons the call, which poisons the client: the
                // caller drops it and connects afresh.
                match deadline(reply_limit, "the tracker's heartbeat reply", client.heartbeat(reg.peer_id)).await {
                    Ok(tracker_ms) => {
                        if let Some(gate) = &config.gate {
                            gate.follow_clock(tracker_ms);
                        }
                    }
                    Err(Error::Remote {
                        code: ErrorCode::PeerGone | ErrorCode::UnknownPeer | ErrorCode::Unauthorized,
                        message,
                    }) => return Ok(Ended::Forgotten(message)),
                    Err(e) => return Err(e),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use septet_common::conn::ConnLimits;
    use septet_common::proto::{PeerId, TrackerReply, TrackerRequest};
    use septet_common::Connection;
    use tokio::net::TcpListener;
    use tokio::sync::mpsc;

    #[test]
    fn the_reply_bound_is_two_heartbeats_within_limits() {
        let s = Duration::from_secs;
        assert_eq!(reply_timeout(s(2), s(10)), s(4));
        assert_eq!(reply_timeout(Duration::from_millis(50), s(10)), MIN_REPLY_TIMEOUT);
        assert_eq!(reply_timeout(s(30), s(10)), s(10));
        assert_eq!(reply_timeout(Duration::from_millis(50), Duration::from_millis(300)), Duration::from_millis(300));
        assert_eq!(reply_timeout(Duration::MAX, s(10)), s(10));
    }

    /// A fake tracker that registers every connection (heartbeat every
    /// `heartbeat`), acks heartbeats on the first `answered` connections
    /// only and leaves later ones unanswered (the connection stays open:
    /// silent, not closed), and says on `events` when a connection
    /// registers.
    async fn fake_tracker(heartbeat: Duration, answered: usize) -> (SocketAddr, mpsc::UnboundedReceiver<usize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            for n in 0.. {
                let (stream, _) = listener.accept().await.unwrap();
                let tx = tx.clone();
                tokio::spawn(async move {
                    let Ok((mut conn, _)) = Connection::accept(stream, ConnLimits::default()).await else { return };
                    while let Ok(req) = conn.reader.read_message::<TrackerRequest>("a request").await {
                        let reply = match req {
                            TrackerRequest::Register { listen, .. } => {
                                let _ = tx.send(n);
                                let heartbeat_ms = heartbeat.as_millis() as u64;
                                TrackerReply::Registered {
                                    peer_id: PeerId(0),
                                    addr: listen,
                                    heartbeat_ms,
                                    ticket_key: Vec::new(),
                                    now_ms: 0,
                                }
                            }
                            TrackerRequest::Heartbeat { .. } if n < answered => {
                                TrackerReply::HeartbeatAck { now_ms: 0 }
                            }
                            TrackerRequest::Deregister { .. } => TrackerReply::Deregistered,
                            // Silent: no reply, the connection stays open.
                            _ => continue,
                        };
                        if conn.writer.send(&reply).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        (addr, rx)
    }

    fn config(tracker: SocketAddr, timeout: Duration) -> AgentConfig {
        AgentConfig {
            tracker: tracker.to_string(),
            listen: "127.0.0.1:9".parse().unwrap(),
            slots: 1,
            memory_mib: 0,
            timeout,
            security: Security::default(),
            gate: None,
        }
    }

    #[tokio::test]
    async fn a_tracker_that_stops_answering_heartbeats_is_left_within_two_intervals_not_the_io_timeout() {
        let heartbeat = Duration::from_millis(600);
        let (addr, mut registered) = fake_tracker(heartbeat, 0).await;
        let cancel = CancellationToken::new();
        let agent = tokio::spawn(run(config(addr, Duration::from_secs(30)), cancel.clone()));
        assert_eq!(registered.recv().await, Some(0));
        let first = Instant::now();
        // The first heartbeat goes out after one interval and gets no
        // reply; two intervals later the agent gives up on it, and after
        // the first backoff (≤ 150 ms) registers on a new connection.
        let again = tokio::time::timeout(Duration::from_secs(10), registered.recv()).await.expect("never came back");
        let took = first.elapsed();
        assert_eq!(again, Some(1));
        let bound = heartbeat + reply_timeout(heartbeat, Duration::from_secs(30));
        assert!(took + Duration::from_millis(100) >= bound, "registered again after {took:?}, before the reply bound");
        // Well before the 30 s I/O timeout, with room for a loaded machine.
        assert!(took < bound + Duration::from_secs(5), "registered again only after {took:?} (bound {bound:?})");
        cancel.cancel();
        agent.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn a_tracker_that_answers_keeps_the_session_and_cancel_deregisters() {
        // Replies get two intervals (1 s): a loaded machine answers in time.
        let heartbeat = Duration::from_millis(500);
        let (addr, mut registered) = fake_tracker(heartbeat, usize::MAX).await;
        let cancel = CancellationToken::new();
        let agent = tokio::spawn(run(config(addr, Duration::from_secs(30)), cancel.clone()));
        assert_eq!(registered.recv().await, Some(0));
        tokio::time::sleep(Duration::from_secs(3)).await;
        assert!(registered.try_recv().is_err(), "registered again while the tracker answered");
        cancel.cancel();
        tokio::time::timeout(Duration::from_secs(2), agent).await.expect("did not stop").unwrap().unwrap();
    }
}
