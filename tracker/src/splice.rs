//! Meetings at this tracker, for brokered links neither end of which can
//! dial the other (a requester and a lent peer, each behind its own NAT):
//! both dial this tracker, and it either tells each the address it saw the
//! other come from, so they can dial each other at once (a punch, see
//! `septet_common::punch`), or — where that fails — joins the two
//! connections byte for byte (a splice).
//!
//! ```text
//!  requester ──SPLC id──▶ tracker ◀──SPLC id── peer      (both dial out through their NATs)
//!      └═════ handshake, frames: end to end, copied ═════┘
//! ```
//!
//! A splice exists only once a lease holder asked for it
//! ([`Splices::expect`], from an authenticated `Broker` request); a leg
//! with any other id is dropped at once. The tracker reads only the
//! 20-byte hello ([`SPLICE_MAGIC`] and the id): the two ends run their
//! handshake with each other through it, so with `--encrypt` it can
//! neither read nor alter what crosses. What it costs: every byte crosses
//! the tracker's links twice, which is why it is the last resort.
//!
//! A meeting's life, as a small state machine:
//! `Expected` (asked for) → `Parked` (one leg in, waiting for the other)
//! → joined (removed from the table; the addresses are sent, or the copy
//! runs) — or gone when it expires unjoined. A leg of the other kind than
//! the meeting asked for is dropped.
//!
//! [`SPLICE_MAGIC`]: septet_common::SPLICE_MAGIC

use std::collections::HashMap;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use septet_common::proto::{Rendezvous, SpliceId};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use crate::metrics::TrackerMetrics;
use crate::{Error, Result};

/// Splices asked for and not yet joined, at most: past it, new ones are
/// refused (each is a lease holder's, so this bounds insiders only).
pub const MAX_PENDING: usize = 1024;
/// Splices joined and copying at once, at most.
pub const MAX_ACTIVE: usize = 1024;
/// How long a splice waits for its two legs after it is asked for.
pub const JOIN_WITHIN: Duration = Duration::from_secs(30);
/// After one direction of a joined splice ends, how long the other has to
/// end too (a leg that vanished silently never sends its end).
pub const LINGER: Duration = Duration::from_secs(10);

/// Where a meeting is, before it is joined.
enum Pending {
    /// Asked for; no leg yet.
    Expected { until: Instant, via: Rendezvous },
    /// One leg in; the other goes to this sender.
    Parked { until: Instant, via: Rendezvous, partner: oneshot::Sender<TcpStream> },
}

impl Pending {
    fn until(&self) -> Instant {
        match self {
            Pending::Expected { until, .. } | Pending::Parked { until, .. } => *until,
        }
    }

    fn via(&self) -> Rendezvous {
        match self {
            Pending::Expected { via, .. } | Pending::Parked { via, .. } => *via,
        }
    }
}

/// What to do with a leg that arrived (the pure part of [`Splices::leg`]).
#[derive(Debug, PartialEq, Eq)]
enum Step {
    /// No such meeting (never asked for, expired, joined already, or of
    /// the other kind).
    Drop,
    /// The first leg: wait for the other.
    Park,
    /// The second leg: hand it to the first.
    Join,
}

/// The splices of one tracker.
pub struct Splices {
    pending: Mutex<HashMap<SpliceId, Pending>>,
    active: std::sync::atomic::AtomicUsize,
    metrics: TrackerMetrics,
    cancel: CancellationToken,
}

impl std::fmt::Debug for Splices {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Splices").field("pending", &self.pending.lock().len()).finish_non_exhaustive()
    }
}

impl Splices {
    /// No splices; joined ones stop when `cancel` is cancelled.
    pub fn new(metrics: TrackerMetrics, cancel: CancellationToken) -> Self {
        Self { pending: Mutex::default(), active: Default::default(), metrics, cancel }
    }

    /// A lease holder asked for meeting `via`: its legs are taken for
    /// [`JOIN_WITHIN`].
    ///
    /// # Errors
    /// [`Error::Invalid`] if its id is taken, or too many wait or run.
    pub fn expect(&self, via: Rendezvous) -> Result<()> {
        let id = via.id();
        let now = Instant::now();
        let mut pending = self.pending.lock();
        pending.retain(|_, p| p.until() > now);
        let active = self.active.load(std::sync::atomic::Ordering::Relaxed);
        if pending.len() >= MAX_PENDING || active >= MAX_ACTIVE {
            return Err(Error::Invalid(format!(
                "this tracker splices {active} links and waits for {} more: try again later",
                pending.len()
            )));
        }
        if pending.contains_key(&id) {
            return Err(Error::Invalid("that splice id is taken".into()));
        }
        pending.insert(id, Pending::Expected { until: now + JOIN_WITHIN, via });
        Ok(())
    }

    /// Decides what a leg for `id` does, and updates the table.
    fn step(
        &self,
        via: Rendezvous,
        now: Instant,
    ) -> (Step, Option<oneshot::Sender<TcpStream>>, Option<oneshot::Receiver<TcpStream>>) {
        let id = via.id();
        let mut pending = self.pending.lock();
        match pending.remove(&id) {
            Some(p) if p.until() <= now || p.via() != via => (Step::Drop, None, None),
            None => (Step::Drop, None, None),
            Some(Pending::Expected { until, via }) => {
                let (tx, rx) = oneshot::channel();
                pending.insert(id, Pending::Parked { until, via, partner: tx });
                (Step::Park, None, Some(rx))
            }
            Some(Pending::Parked { partner, .. }) => (Step::Join, Some(partner), None),
        }
    }

    /// A connection that asked for meeting `via` (from the listener):
    /// parked until its partner comes, handed to it, or dropped.
    pub fn leg(self: &std::sync::Arc<Self>, stream: TcpStream, via: Rendezvous) {
        let (from, id) = (stream.peer_addr().ok(), via.id());
        match self.step(via, Instant::now()) {
            (Step::Drop, ..) => debug!(?from, "dropped a splice leg nobody asked for"),
            (Step::Join, Some(partner), _) => {
                if partner.send(stream).is_err() {
                    debug!(?from, "a splice's first leg left before the second came");
                }
            }
            (Step::Park, _, Some(rx)) => {
                let splices = self.clone();
                tokio::spawn(async move {
                    let other = tokio::select! {
                        _ = splices.cancel.cancelled() => return,
                        _ = tokio::time::sleep(JOIN_WITHIN) => {
                            splices.pending.lock().remove(&id);
                            debug!(?from, "a splice's second leg never came");
                            return;
                        }
                        other = rx => match other {
                            Ok(other) => other,
                            Err(_) => return,
                        },
                    };
                    match via {
                        Rendezvous::Splice(_) => splices.join(stream, other).await,
                        Rendezvous::Punch(_) => introduce(stream, other).await,
                    }
                });
            }
            _ => unreachable!("step returns a sender with Join and a receiver with Park"),
        }
    }

    /// Copies between `a` and `b` until both directions end (or one ends
    /// and the other does not within [`LINGER`], or the tracker stops).
    async fn join(&self, a: TcpStream, b: TcpStream) {
        use std::sync::atomic::Ordering;
        let (from_a, from_b) = (a.peer_addr().ok(), b.peer_addr().ok());
        self.active.fetch_add(1, Ordering::Relaxed);
        self.metrics.splice_active(1);
        info!(?from_a, ?from_b, "spliced a brokered link");
        let _ = a.set_nodelay(true);
        let _ = b.set_nodelay(true);
        let (ar, aw) = a.into_split();
        let (br, bw) = b.into_split();
        let (one, other) = (pipe(ar, bw, &self.metrics), pipe(br, aw, &self.metrics));
        tokio::pin!(one, other);
        let (a_to_b, b_to_a) = tokio::select! {
            _ = self.cancel.cancelled() => (0, 0),
            moved = &mut one => (moved, tokio::time::timeout(LINGER, &mut other).await.unwrap_or(0)),
            moved = &mut other => (tokio::time::timeout(LINGER, &mut one).await.unwrap_or(0), moved),
        };
        self.active.fetch_sub(1, Ordering::Relaxed);
        self.metrics.splice_active(-1);
        info!(?from_a, ?from_b, a_to_b, b_to_a, "a spliced link ended");
    }

    /// Splices waiting for a leg.
    #[cfg(test)]
    fn waiting(&self) -> usize {
        self.pending.lock().len()
    }
}

/// Tells each end of a punch the address the other's connection came
/// from, then closes both.
async fn introduce(mut a: TcpStream, mut b: TcpStream) {
    let (Ok(from_a), Ok(from_b)) = (a.peer_addr(), b.peer_addr()) else { return };
    let told = async {
        a.write_all(&septet_common::punch::encode_addr(from_b)).await?;
        b.write_all(&septet_common::punch::encode_addr(from_a)).await?;
        a.shutdown().await?;
        b.shutdown().await
    };
    match tokio::time::timeout(LINGER, told).await {
        Ok(Ok(())) => info!(%from_a, %from_b, "introduced the two ends of a punch"),
        _ => debug!(%from_a, %from_b, "could not introduce the two ends of a punch"),
    }
}

/// Copies `r` to `w` until `r` ends or either fails, then ends `w`:
/// the bytes moved.
async fn pipe(
    mut r: tokio::net::tcp::OwnedReadHalf,
    mut w: tokio::net::tcp::OwnedWriteHalf,
    metrics: &TrackerMetrics,
) -> u64 {
    let mut buf = vec![0u8; 64 * 1024];
    let mut moved = 0u64;
    loop {
        let n = match r.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if w.write_all(&buf[..n]).await.is_err() {
            break;
        }
        moved += n as u64;
        metrics.spliced(n as u64);
    }
    let _ = w.shutdown().await;
    moved
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use tokio::net::TcpListener;

    use super::*;

    async fn pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let near = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (far, _) = l.accept().await.unwrap();
        (near, far)
    }

    fn splices() -> Arc<Splices> {
        Arc::new(Splices::new(TrackerMetrics::new(), CancellationToken::new()))
    }

    #[test]
    fn a_leg_is_parked_then_joined_and_unknown_or_expired_ones_dropped() {
        let s = splices();
        let now = Instant::now();
        let one = Rendezvous::Splice([1; 16]);
        assert_eq!(s.step(one, now).0, Step::Drop, "never asked for");
        s.expect(one).unwrap();
        assert!(s.expect(Rendezvous::Punch([1; 16])).is_err(), "an id is taken once");
        assert_eq!(s.step(one, now).0, Step::Park);
        assert_eq!(s.step(one, now).0, Step::Join);
        assert_eq!(s.step(one, now).0, Step::Drop, "joined: a third leg finds nothing");
        let two = Rendezvous::Splice([2; 16]);
        s.expect(two).unwrap();
        assert_eq!(s.step(two, now + JOIN_WITHIN + Duration::from_secs(1)).0, Step::Drop, "expired");
        let three = Rendezvous::Punch([3; 16]);
        s.expect(three).unwrap();
        assert_eq!(s.step(Rendezvous::Splice([3; 16]), now).0, Step::Drop, "a splice leg for a punch");
        assert_eq!(s.waiting(), 0);
    }

    #[test]
    fn too_many_waiting_splices_are_refused() {
        let s = splices();
        for i in 0..MAX_PENDING {
            let mut id = [0; 16];
            id[..8].copy_from_slice(&(i as u64).to_le_bytes());
            s.expect(Rendezvous::Splice(id)).unwrap();
        }
        let err = s.expect(Rendezvous::Splice([0xff; 16])).unwrap_err().to_string();
        assert!(err.contains("try again later"), "{err}");
    }

    #[tokio::test]
    async fn joined_legs_carry_bytes_both_ways_and_end_together() {
        let s = splices();
        let via = Rendezvous::Splice([3; 16]);
        s.expect(via).unwrap();
        let (mut a, a_far) = pair().await;
        let (mut b, b_far) = pair().await;
        s.leg(a_far, via);
        s.leg(b_far, via);
        a.write_all(b"from a").await.unwrap();
        let mut got = [0; 6];
        b.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"from a");
        b.write_all(b"from b").await.unwrap();
        a.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"from b");
        drop(a);
        // a's end reaches b as an end.
        let n = tokio::time::timeout(Duration::from_secs(5), b.read(&mut got)).await.unwrap().unwrap();
        assert_eq!(n, 0);
    }

    #[tokio::test]
    async fn each_end_of_a_punch_is_told_where_the_other_came_from() {
        let s = splices();
        let via = Rendezvous::Punch([4; 16]);
        s.expect(via).unwrap();
        let (mut a, a_far) = pair().await;
        let (mut b, b_far) = pair().await;
        let (a_local, b_local) = (a.local_addr().unwrap(), b.local_addr().unwrap());
        s.leg(a_far, via);
        s.leg(b_far, via);
        let mut told = [0; septet_common::PUNCH_ADDR_LEN];
        a.read_exact(&mut told).await.unwrap();
        assert_eq!(septet_common::punch::decode_addr(&told), b_local);
        b.read_exact(&mut told).await.unwrap();
        assert_eq!(septet_common::punch::decode_addr(&told), a_local);
        assert_eq!(a.read(&mut told).await.unwrap(), 0, "then closed");
    }

    #[tokio::test]
    async fn a_leg_with_an_unknown_id_is_closed() {
        let s = splices();
        let (mut a, a_far) = pair().await;
        s.leg(a_far, Rendezvous::Splice([9; 16]));
        let mut got = [0; 1];
        let n = tokio::time::timeout(Duration::from_secs(5), a.read(&mut got)).await.unwrap().unwrap_or(0);
        assert_eq!(n, 0);
    }
}
