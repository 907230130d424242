//! The lease queue over real TCP: on a grid too small to serve everyone, a
//! lease of 49 at the front of the queue is not overtaken by later leases
//! of 7, even while they would fit in the free slots. The tracker's policy
//! is strict FIFO (`septet_tracker::state`: no barging), so a large request
//! waits only for the slots held by leases granted before it, never for
//! requests that came after it; grants leave in queue order, and no slot is
//! in two leases in force.
//!
//! The requests go over the wire as bytes from raw connections; what the
//! tracker decided is read from its own state ([`Tracker::snapshot`]) once
//! a release's reply is in, since a release and the grants it allows are
//! applied under one lock before that reply is sent. No sleeps: the only
//! timeout is the guard that turns a hang into a failure.

use std::net::SocketAddr;
use std::time::Duration;

use septet_common::conn::ConnLimits;
use septet_common::proto::{LeaseGrant, LeaseId, PeerId, TrackerReply, TrackerRequest};
use septet_common::{Connection, Role};
use septet_tracker::{Tracker, TrackerConfig};
use tokio::net::TcpListener;

/// Turns a hang into a failure; the test itself takes milliseconds.
const HANG: Duration = Duration::from_secs(60);

/// A tracker serving on 127.0.0.1:0 with `peers` one-slot peers, its
/// address, and what stops it.
async fn spawn_tracker(
    peers: u16,
) -> (SocketAddr, Tracker, tokio::sync::oneshot::Sender<()>, tokio::task::JoinHandle<septet_tracker::Result<()>>) {
    // The peers are registered in-process and never heartbeat.
    let config = TrackerConfig { heartbeat_timeout: Duration::from_secs(3600), ..TrackerConfig::default() };
    let tracker = Tracker::new(config).unwrap();
    for i in 0..peers {
        tracker.register(&format!("127.0.0.1:{}", 20_000 + i), 1).unwrap();
    }
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(septet_tracker::server::serve(tracker.clone(), listener, async {
        let _ = stopped.await;
    }));
    (addr, tracker, stop, server)
}

async fn dial(addr: SocketAddr) -> Connection {
    Connection::connect(addr, Role::Client, ConnLimits::default()).await.unwrap()
}

/// Asks for `count` slots; the first reply: the grant, or the place in the queue.
async fn ask(conn: &mut Connection, count: u32) -> TrackerReply {
    conn.writer.send(&TrackerRequest::Lease { count, detached: false }).await.unwrap();
    conn.reader.read_message("Leased or Waiting").await.unwrap()
}

async fn leased(conn: &mut Connection, count: u32) -> LeaseGrant {
    match ask(conn, count).await {
        TrackerReply::Leased(grant) => grant,
        other => panic!("expected a grant of {count}, got {other:?}"),
    }
}

/// Asks for `count` slots, which must queue: (position, free slots).
async fn queued(conn: &mut Connection, count: u32) -> (u32, u32) {
    match ask(conn, count).await {
        TrackerReply::Waiting { position, free, needed } => {
            assert_eq!(needed, count);
            (position, free)
        }
        other => panic!("expected {count} to queue, got {other:?}"),
    }
}

/// The grant a queued request's connection receives.
async fn grant(conn: &mut Connection) -> LeaseGrant {
    match conn.reader.read_message("Leased").await.unwrap() {
        TrackerReply::Leased(grant) => grant,
        other => panic!("expected the queued grant, got {other:?}"),
    }
}

async fn release(conn: &mut Connection, lease_id: LeaseId) {
    conn.writer.send(&TrackerRequest::Release { lease_id, token: None }).await.unwrap();
    match conn.reader.read_message("Released").await.unwrap() {
        TrackerReply::Released { lease_id: id } => assert_eq!(id, lease_id),
        other => panic!("expected Released, got {other:?}"),
    }
}

/// The slot counts of the queue, front first, and the leases in force.
fn queue_and_leases(tracker: &Tracker) -> (Vec<u32>, usize) {
    let snap = tracker.snapshot(usize::MAX).unwrap();
    (snap.queue.iter().map(|w| w.count).collect(), snap.leases_total)
}

/// Distinct peers of `grants`, and how many slots they hold in all.
fn distinct_peers<'a>(grants: impl IntoIterator<Item = &'a LeaseGrant>) -> (usize, usize) {
    let mut peers: Vec<PeerId> = grants.into_iter().flat_map(|g| g.peers.iter().map(|p| p.peer_id)).collect();
    let slots = peers.len();
    peers.sort_unstable();
    peers.dedup();
    (peers.len(), slots)
}

#[tokio::test]
async fn a_lease_of_49_at_the_front_is_not_overtaken_by_later_leases_of_7() {
    tokio::time::timeout(HANG, async {
        // 56 slots, all held by eight leases of 7, on eight connections.
        let (addr, tracker, stop, server) = spawn_tracker(56).await;
        let mut holders = Vec::new();
        for _ in 0..8 {
            let mut conn = dial(addr).await;
            let grant = leased(&mut conn, 7).await;
            holders.push((conn, grant));
        }
        assert_eq!(distinct_peers(holders.iter().map(|(_, g)| g)), (56, 56));
        let mut big = dial(addr).await;
        assert_eq!(queued(&mut big, 49).await, (1, 0));
        // One lease of 7 is released, and one more request of 7 arrives,
        // at a time: each newcomer would fit in the slots free, but joins
        // the back of the queue, and nothing behind the 49 is served.
        let mut small: Vec<Connection> = Vec::new();
        for released in 1..=6u32 {
            let (conn, held) = &mut holders[released as usize - 1];
            release(conn, held.lease_id).await;
            let mut newcomer = dial(addr).await;
            let at = queued(&mut newcomer, 7).await;
            assert_eq!(at, (small.len() as u32 + 2, 7 * released), "a request of 7 behind the 49");
            small.push(newcomer);
            let mut expected = vec![49];
            expected.extend(vec![7; small.len()]);
            assert_eq!(queue_and_leases(&tracker), (expected, 8 - released as usize), "after {released} releases");
        }
        // The seventh release frees 49: the 49 is served, and only it.
        let (conn, grant7) = &mut holders[6];
        release(conn, grant7.lease_id).await;
        assert_eq!(queue_and_leases(&tracker), (vec![7; 6], 2));
        let big_grant = grant(&mut big).await;
        let last = &holders[7].1;
        assert_eq!(distinct_peers([&big_grant, last]), (56, 56), "no slot in two leases");
        assert!(holders.iter().all(|(_, g)| g.lease_id < big_grant.lease_id));
        // A newcomer now queues behind the small requests that were there first.
        let mut newcomer = dial(addr).await;
        assert_eq!(queued(&mut newcomer, 7).await, (7, 0));
        small.push(newcomer);
        // Then the small ones, in queue order, as slots free: 7, then 49.
        let (conn, grant8) = &mut holders[7];
        release(conn, grant8.lease_id).await;
        assert_eq!(queue_and_leases(&tracker), (vec![7; 6], 2));
        release(&mut big, big_grant.lease_id).await;
        assert_eq!(queue_and_leases(&tracker), (vec![], 7));
        let mut served = Vec::new();
        for conn in &mut small {
            served.push(grant(conn).await);
        }
        let ids: Vec<LeaseId> = served.iter().map(|g| g.lease_id).collect();
        assert!(ids[0] > big_grant.lease_id && ids.windows(2).all(|w| w[0] < w[1]), "granted in queue order: {ids:?}");
        assert_eq!(distinct_peers(&served), (49, 49));
        tracker.check_invariants().unwrap();
        drop(stop);
        server.await.unwrap().unwrap();
    })
    .await
    .expect("the test hung");
}
