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

use std::net::SocketAddr;
use std::time::Duration;

use rand::RngExt;
use septet_common::secure::{HandshakeFailure, Security};
use septet_common::{Error, ErrorCode, Role};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::client::{or_cancel, TrackerClient};

/// First retry delay after losing the tracker.
const BACKOFF_START: Duration = Duration::from_millis(100);
/// Longest retry delay: a restarted tracker sees its workers again within
/// about this long.
const BACKOFF_MAX: Duration = Duration::from_secs(2);

/// What the agent needs to stay registered.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// The tracker's address.
    pub tracker: String,
    /// This worker's compute listener.
    pub listen: SocketAddr,
    /// Tasks it runs at once.
    pub slots: u32,
    /// Deadline for each request to the tracker.
    pub timeout: Duration,
    /// The cluster secret and whether to encrypt.
    pub security: Security,
}

/// Keeps the worker registered with the tracker until `cancel` fires,
/// then deregisters. A tracker that is absent, restarting or busy is
/// retried with backoff.
///
/// # Errors
/// A tracker that refuses our cluster secret (or our encryption setting,
/// or speaks another protocol version) is not retried: that is this
/// worker's configuration, which no wait will fix, and a worker that kept
/// knocking would sit unused and unnoticed. The error names the cause; the
/// worker stops with it.
pub async fn run(config: AgentConfig, cancel: CancellationToken) -> Result<(), Error> {
    let mut backoff = BACKOFF_START;
    let tracker = config.tracker.clone();
    loop {
        match session(&config, &cancel, &mut backoff).await {
            Ok(()) => return Ok(()),
            Err(e) if is_fatal(&e) => return Err(e),
            Err(e) => {
                if cancel.is_cancelled() {
                    return Ok(());
                }
                // Jitter spreads a grid's workers out when a tracker restarts.
                let wait = backoff.mul_f64(rand::rng().random_range(0.5..1.5));
                warn!(tracker = %tracker, error = %e, retry_in = ?wait, "lost the tracker; will register again");
                if or_cancel(&cancel, tokio::time::sleep(wait)).await.is_none() {
                    return Ok(());
                }
                backoff = (backoff * 2).clamp(BACKOFF_START, BACKOFF_MAX);
            }
        }
    }
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

/// One connection's worth: register, heartbeat until an error or cancel.
async fn session(config: &AgentConfig, cancel: &CancellationToken, backoff: &mut Duration) -> Result<(), Error> {
    let AgentConfig { tracker, listen, slots, timeout, security } = config;
    let (listen, slots) = (*listen, *slots);
    let connecting = TrackerClient::connect_with(tracker, Role::Worker, *timeout, security);
    let Some(client) = or_cancel(cancel, connecting).await else {
        return Ok(());
    };
    let mut client = client?;
    let reg = client.register(listen, slots).await?;
    *backoff = BACKOFF_START;
    info!(peer_id = %reg.peer_id, addr = %reg.addr, slots, tracker = %tracker, "registered with the tracker");
    let mut tick = tokio::time::interval(reg.heartbeat);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tokio::select! {
            _ = cancel.cancelled() => {
                match client.deregister(reg.peer_id).await {
                    Ok(()) => info!(peer_id = %reg.peer_id, "deregistered from the tracker"),
                    Err(e) => warn!(error = %e, "could not deregister"),
                }
                return Ok(());
            }
            _ = tick.tick() => match client.heartbeat(reg.peer_id).await {
                Ok(()) => {}
                Err(Error::Remote {
                    code: ErrorCode::PeerGone | ErrorCode::UnknownPeer | ErrorCode::Unauthorized,
                    message,
                }) => {
                    // The tracker restarted or gave up on us: register again now.
                    info!(%message, "the tracker no longer knows this worker; registering again");
                    *backoff = Duration::ZERO;
                    return Err(Error::Remote { code: ErrorCode::PeerGone, message });
                }
                Err(e) => return Err(e),
            },
        }
    }
}
