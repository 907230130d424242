//! A worker's life with the tracker: register, heartbeat, and when the
//! tracker goes away (or forgets us) keep retrying with jittered
//! exponential backoff and register again once it is back. On shutdown the
//! worker deregisters.

use std::net::SocketAddr;
use std::time::Duration;

use rand::RngExt;
use septet_common::{Error, ErrorCode, Role};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::client::{or_cancel, TrackerClient};

/// First retry delay after losing the tracker.
const BACKOFF_START: Duration = Duration::from_millis(100);
/// Longest retry delay: a restarted tracker sees its workers again within
/// about this long.
const BACKOFF_MAX: Duration = Duration::from_secs(2);

/// Keeps the worker listening on `listen` registered with `tracker` until
/// `cancel` fires, then deregisters.
pub async fn run(tracker: String, listen: SocketAddr, slots: u32, timeout: Duration, cancel: CancellationToken) {
    let mut backoff = BACKOFF_START;
    loop {
        match session(&tracker, listen, slots, timeout, &cancel, &mut backoff).await {
            Ok(()) => return,
            Err(e) => {
                if cancel.is_cancelled() {
                    return;
                }
                // Jitter spreads a grid's workers out when a tracker restarts.
                let wait = backoff.mul_f64(rand::rng().random_range(0.5..1.5));
                warn!(tracker = %tracker, error = %e, retry_in = ?wait, "lost the tracker; will register again");
                if or_cancel(&cancel, tokio::time::sleep(wait)).await.is_none() {
                    return;
                }
                backoff = (backoff * 2).clamp(BACKOFF_START, BACKOFF_MAX);
            }
        }
    }
}

/// One connection's worth: register, heartbeat until an error or cancel.
async fn session(
    tracker: &str,
    listen: SocketAddr,
    slots: u32,
    timeout: Duration,
    cancel: &CancellationToken,
    backoff: &mut Duration,
) -> Result<(), Error> {
    let Some(client) = or_cancel(cancel, TrackerClient::connect(tracker, Role::Worker, timeout)).await else {
        return Ok(());
    };
    let mut client = client?;
    let reg = client.register(listen, slots).await?;
    *backoff = BACKOFF_START;
    info!(peer_id = reg.peer_id, addr = %reg.addr, slots, tracker = %tracker, "registered with the tracker");
    let mut tick = tokio::time::interval(reg.heartbeat);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tokio::select! {
            _ = cancel.cancelled() => {
                match client.deregister(reg.peer_id).await {
                    Ok(()) => info!(peer_id = reg.peer_id, "deregistered from the tracker"),
                    Err(e) => warn!(error = %e, "could not deregister"),
                }
                return Ok(());
            }
            _ = tick.tick() => match client.heartbeat(reg.peer_id).await {
                Ok(()) => {}
                Err(Error::Remote { code: ErrorCode::PeerGone | ErrorCode::UnknownPeer, message }) => {
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
