//! The requester's held lease and avoided peers (what `septet peer` and
//! Python's `Grid.lease` build on), in process over real TCP: jobs on one
//! lease, an avoided peer's slot swapped out of every grant, and a grant
//! with no other slot refused and given back.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{client, spawn_tracker, spawn_workers, teardown, wait_for_alive_slots};
use ndarray::Array2;
use septet_client::{RequestError, Requester, RequesterConfig};
use septet_common::strassen::naive_matmul;
use septet_tracker::TrackerConfig;

const LIMIT: Duration = Duration::from_secs(120);

fn ints(rows: usize, cols: usize, salt: usize) -> Array2<f64> {
    Array2::from_shape_fn((rows, cols), |(i, j)| ((i * 5 + j * 3 + salt) % 9) as f64 - 4.0)
}

#[tokio::test]
async fn jobs_share_a_held_lease_and_never_use_an_avoided_peer() {
    tokio::time::timeout(LIMIT, async {
        let (tracker, state) = spawn_tracker(TrackerConfig::default()).await;
        let workers = spawn_workers(tracker.addr, 8, 1).await;
        wait_for_alive_slots(tracker.addr, 8).await;
        let (_, rows) = client(tracker.addr).await.peers().await.unwrap();
        // Avoid each peer in turn: whichever the tracker grants, it is swapped out.
        for avoided in rows.iter().map(|r| r.peer_id) {
            let req = Requester::new(RequesterConfig {
                tracker: tracker.addr.to_string(),
                avoid: vec![avoided],
                ..Default::default()
            });
            let lease = req.lease(|_| {}).await.unwrap();
            assert!(lease.peers().iter().all(|p| p.peer_id != avoided), "{avoided} in {:?}", lease.peers());
            for salt in 0..2 {
                let (a, b) = (ints(33, 20, salt), ints(20, 17, salt + 9));
                let expected = naive_matmul(a.view(), b.view());
                let (c, report) = req.multiply_on(&lease, Arc::new(a), Arc::new(b), |_| {}).await;
                assert_eq!(c.unwrap(), expected);
                assert_eq!(report.lease_id, lease.lease_id(), "the held lease, not a new one");
                assert!(report.peers.iter().all(|p| p.peer_id != avoided));
                assert_eq!(state.stats().unwrap().leases, 1, "the lease stays held between jobs");
            }
            lease.release().await.unwrap();
            assert_eq!((state.stats().unwrap().leases, state.stats().unwrap().free), (0, 8));
        }
        teardown(tracker, workers).await;
    })
    .await
    .expect("timed out");
}

#[tokio::test]
async fn a_grant_with_only_the_avoided_peer_left_is_refused_and_released() {
    tokio::time::timeout(LIMIT, async {
        let (tracker, state) = spawn_tracker(TrackerConfig::default()).await;
        let workers = spawn_workers(tracker.addr, 7, 1).await;
        wait_for_alive_slots(tracker.addr, 7).await;
        let (_, rows) = client(tracker.addr).await.peers().await.unwrap();
        let avoided = rows[3].peer_id;
        let req = Requester::new(RequesterConfig {
            tracker: tracker.addr.to_string(),
            avoid: vec![avoided],
            ..Default::default()
        });
        let err = req.lease(|_| {}).await.unwrap_err();
        assert!(matches!(err, RequestError::OnlyAvoided { peer_id, .. } if peer_id == avoided), "{err}");
        let (c, _) = req.multiply_reporting(Arc::new(ints(4, 4, 0)), Arc::new(ints(4, 4, 1)), |_| {}).await;
        assert!(matches!(c, Err(RequestError::OnlyAvoided { .. })));
        // Nothing stays leased.
        for _ in 0..200 {
            if state.stats().unwrap().leases == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!((state.stats().unwrap().leases, state.stats().unwrap().free), (0, 7));
        teardown(tracker, workers).await;
    })
    .await
    .expect("timed out");
}
