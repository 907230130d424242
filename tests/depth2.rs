//! Jobs two levels deep on loopback: one lease of 49 slots, each of the
//! seven first-level slots requesting its product from a group of seven.
//! A and B still leave the requester once and C comes back once; every
//! group's work is checked by the slot that asked for it; a sub-slot that
//! lies is named and its share redone, and C is exact. In-process tracker
//! and 49 workers on real TCP; the liar needs the `fault-injection` feature.

mod common;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use ndarray::Array2;
use septet_client::{Requester, RequesterConfig};
use septet_common::strassen::naive_matmul;
use septet_tracker::TrackerConfig;

const LIMIT: Duration = Duration::from_secs(180);

fn ints(rows: usize, cols: usize, salt: usize) -> Array2<f64> {
    Array2::from_shape_fn((rows, cols), |(i, j)| ((i * 7 + j * 3 + salt * 11) % 9) as f64 - 4.0)
}

fn requester(tracker: &Server) -> Requester {
    Requester::new(RequesterConfig { tracker: tracker.addr.to_string(), max_hedges: 0, depth: 2, ..Default::default() })
}

/// 49 one-slot workers joined one at a time, so that their peer ids —
/// the order a fresh grid's grant follows — are their indices; the
/// `liar`-th has `fault`.
#[cfg(feature = "fault-injection")]
async fn workers_with_a_liar(tracker: &Server, liar: usize, fault: septet_worker::Fault) -> Vec<Server> {
    let mut workers = Vec::new();
    for i in 0..49 {
        let config = septet_worker::WorkerConfig {
            tracker: Some(tracker.addr.to_string()),
            threads: 1,
            fault: (i == liar).then_some(fault),
            ..Default::default()
        };
        workers.push(spawn_worker_with(config).await);
        wait_for_alive_slots(tracker.addr, i as u32 + 1).await;
    }
    workers
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_two_levels_deep_uses_49_slots_and_moves_a_b_and_c_once() {
    tokio::time::timeout(LIMIT, async {
        let (tracker, state) = spawn_tracker(TrackerConfig::default()).await;
        let workers = spawn_workers(tracker.addr, 49, 1).await;
        wait_for_alive_slots(tracker.addr, 49).await;
        let (m, k, n) = (512, 512, 512);
        let (a, b) = (ints(m, k, 1), ints(k, n, 2));
        let (c, report) = requester(&tracker).multiply(Arc::new(a.clone()), Arc::new(b.clone()), |_| {}).await.unwrap();
        assert_eq!(c, naive_matmul(a.view(), b.view()));
        assert_eq!((report.plan, report.depth), ("relay", 2), "{:?}", report.failures);
        assert!(report.failures.is_empty(), "{:?}", report.failures);
        // The requester's link: A and B once, C once (and a little more).
        let (ab, cw) = (((m * k + k * n) * 8) as f64, (m * n * 8) as f64);
        assert!(report.bytes_sent as f64 >= ab && report.bytes_sent as f64 <= 1.02 * ab, "{}", report.bytes_sent);
        assert!(report.bytes_received as f64 >= cw && report.bytes_received as f64 <= 1.02 * cw);
        let relay = report.relay.as_ref().expect("a relay report");
        assert_eq!(relay.quadrants_verified, ["C11", "C12", "C21", "C22"]);
        let mut peers = HashSet::new();
        for s in &relay.slots {
            let d = s.delegated.as_ref().unwrap_or_else(|| panic!("{} did not delegate: {s:?}", s.product));
            assert_eq!(d.slots.len(), 7, "{d:?}");
            assert!(d.computed_here.is_empty() && d.blamed.is_empty() && d.failure.is_none(), "{d:?}");
            // The group was sent its slot's X and Y once and sent back X·Y once.
            let (mh, kh, nh) = (m.div_ceil(2), k.div_ceil(2), n.div_ceil(2));
            assert!(d.bytes_sent >= ((mh * kh + kh * nh) * 8) as u64, "{d:?}");
            assert!(d.bytes_received >= (mh * nh * 8) as u64, "{d:?}");
            for sub in &d.slots {
                assert!(sub.done && sub.bytes_in > 0 && sub.bytes_out > 0, "{sub:?}");
                peers.insert(sub.peer_id);
            }
        }
        assert_eq!(peers.len(), 49, "every slot of the lease computed a product of the second level");
        assert_eq!(state.stats().unwrap().leases, 0, "nothing left leased");
        // auto: two levels once the job reaches the threshold (lowered for
        // the test), with 49 peers free; one level below it.
        for (min, depth) in [(512, 2), (513, 1)] {
            let auto = Requester::new(RequesterConfig {
                tracker: tracker.addr.to_string(),
                depth: 0,
                auto_depth2_min: min,
                ..Default::default()
            });
            let (c, report) = auto.multiply(Arc::new(a.clone()), Arc::new(b.clone()), |_| {}).await.unwrap();
            assert_eq!(c, naive_matmul(a.view(), b.view()));
            assert_eq!(report.depth, depth, "auto with a threshold of {min} on a 512³ job");
        }
        // The lease held 49 slots: another job at depth 2 runs on the same grid.
        let (c, report) =
            requester(&tracker).multiply(Arc::new(b.t().to_owned()), Arc::new(a.t().to_owned()), |_| {}).await.unwrap();
        assert_eq!(c, naive_matmul(b.t(), a.t()));
        assert!(report.failures.is_empty(), "{:?}", report.failures);
        teardown(tracker, workers).await;
    })
    .await
    .expect("the job hung");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn depth_two_refuses_the_direct_plan_and_runs_on_workers_of_seven_slots() {
    tokio::time::timeout(LIMIT, async {
        let (tracker, state) = spawn_tracker(TrackerConfig::default()).await;
        let workers = spawn_workers(tracker.addr, 7, 7).await;
        wait_for_alive_slots(tracker.addr, 49).await;
        let (a, b) = (ints(64, 64, 1), ints(64, 64, 2));
        let direct = Requester::new(RequesterConfig {
            tracker: tracker.addr.to_string(),
            depth: 2,
            plan: septet_client::Plan::Direct,
            ..Default::default()
        });
        let err = direct.multiply(Arc::new(a.clone()), Arc::new(b.clone()), |_| {}).await.unwrap_err();
        assert!(err.to_string().contains("two levels deep"), "{err}");
        assert_eq!(state.stats().unwrap().leases, 0, "the refused job's lease was released");
        // Seven workers of seven slots each: the first level spans the
        // seven workers and each group stays on one of them; C is exact.
        let (c, report) = requester(&tracker).multiply(Arc::new(a.clone()), Arc::new(b.clone()), |_| {}).await.unwrap();
        assert_eq!(c, naive_matmul(a.view(), b.view()));
        assert!(report.failures.is_empty(), "{:?}", report.failures);
        let relay = report.relay.as_ref().unwrap();
        let first: HashSet<&str> = relay.slots.iter().map(|s| s.peer.addr.as_str()).collect();
        assert_eq!(first.len(), 7, "the first level on seven workers: {first:?}");
        for s in &relay.slots {
            let group: HashSet<&str> = s.delegated.as_ref().unwrap().slots.iter().map(|x| x.addr.as_str()).collect();
            assert_eq!(group, HashSet::from([s.peer.addr.as_str()]), "{}'s group on its own worker", s.product);
        }
        // auto: two levels for a job this large (the threshold lowered for
        // the test) when 49 peers are free — here only 7 are, so one level.
        let auto = |min: u64| {
            Requester::new(RequesterConfig {
                tracker: tracker.addr.to_string(),
                depth: 0,
                auto_depth2_min: min,
                ..Default::default()
            })
        };
        let (_, report) = auto(64).multiply(Arc::new(a.clone()), Arc::new(b.clone()), |_| {}).await.unwrap();
        assert_eq!(report.depth, 1, "seven peers of seven slots are not 49 peers");
        // With one worker gone there are 42 slots: a lease of 49 waits in
        // the queue, and a requester that will not wait long is told so.
        let mut workers = workers;
        workers.pop().unwrap().shutdown().await;
        wait_for_alive_slots(tracker.addr, 42).await;
        let impatient = Requester::new(RequesterConfig {
            tracker: tracker.addr.to_string(),
            depth: 2,
            max_lease_wait: Some(Duration::from_millis(500)),
            ..Default::default()
        });
        let err = impatient.multiply(Arc::new(a), Arc::new(b), |_| {}).await.unwrap_err();
        assert!(err.to_string().contains("waiting for a lease in the tracker's queue"), "{err}");
        assert_eq!(state.stats().unwrap().leases, 0);
        teardown(tracker, workers).await;
    })
    .await
    .expect("the job hung");
}

/// A first-level slot that lies when it reduces C (`corrupt-reduce` on the
/// worker the grant puts first at C11's reducer: on a fresh grid slots go
/// out by peer id): the requester traces the wrong quadrant to it, and each
/// product feeding that quadrant is computed again over seven healthy
/// slots of the lease, as a group would — not whole on one slot. C is
/// exact, the liar is named and in no regrouped product, nothing stays
/// leased.
#[cfg(feature = "fault-injection")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn products_a_first_level_liar_spoilt_are_regrouped_over_seven_slots_each() {
    tokio::time::timeout(LIMIT, async {
        let (a, b) = (ints(260, 250, 4), ints(250, 270, 6));
        let split = septet_common::strassen::Split::of(a.dim(), b.dim()).unwrap();
        let reducer = usize::from(septet_common::relay::Roles::choose(split).reducers[0]);
        let (tracker, state) = spawn_tracker(TrackerConfig::default()).await;
        let workers = workers_with_a_liar(&tracker, reducer, septet_worker::Fault::CorruptReduce).await;
        let liar = format!("{}", workers[reducer].addr);
        let (c, report) = requester(&tracker).multiply(Arc::new(a.clone()), Arc::new(b.clone()), |_| {}).await.unwrap();
        assert_eq!(c, naive_matmul(a.view(), b.view()));
        let relay = report.relay.as_ref().unwrap();
        assert_eq!(relay.slots[reducer].peer.addr, liar, "the grant did not put the liar at slot {reducer}");
        assert!(report.failures.iter().any(|f| f.contains(&liar)), "{:?}", report.failures);
        assert_eq!(report.plan, "relay+regroup", "{:?}", report.failures);
        // C11 = M1 + M4 − M5 + M7: four products, each over its own seven slots.
        let products: Vec<&str> = report.regrouped.iter().map(|g| g.product).collect();
        assert_eq!(products, ["M1", "M4", "M5", "M7"], "{:?}", report.regrouped);
        let mut used = HashSet::new();
        for g in &report.regrouped {
            assert!(g.verified && g.failure.is_none(), "{g:?}");
            assert_eq!(g.peers.len(), 7);
            assert!(g.peers.iter().all(|p| p.addr != liar), "the liar was given work again: {g:?}");
            for p in &g.peers {
                assert!(used.insert(p.addr.clone()), "{} in two regrouped products", p.addr);
            }
        }
        assert!(
            report.attempts.iter().all(|x| x.kind == "relay" || x.kind == "regroup"),
            "nothing went the direct way"
        );
        assert_eq!(report.attempts.iter().filter(|x| x.kind == "regroup" && x.outcome == "verified").count(), 4);
        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(json["regrouped"].as_array().unwrap().len(), 4, "{json}");
        assert!(json["regrouped"][0]["peers"][0].get("ticket").is_none(), "tickets stay out of reports: {json}");
        println!("failures: {:?}; regrouped: {}", report.failures, json["regrouped"]);
        assert_eq!(state.stats().unwrap().leases, 0, "nothing left leased");
        teardown(tracker, workers).await;
    })
    .await
    .expect("the job hung");
}

/// One of 49 workers returns wrong products: peer 10, which a fresh grid's
/// grant puts in slot 3's group, where the slot that asked for its product
/// catches it (had it led, the requester would have). It is named, and C
/// is exact. (A first-level liar: the next test.)
#[cfg(feature = "fault-injection")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lying_slot_at_either_level_is_named_and_c_is_exact() {
    tokio::time::timeout(LIMIT, async {
        let (tracker, state) = spawn_tracker(TrackerConfig::default()).await;
        let workers = workers_with_a_liar(&tracker, 10, septet_worker::Fault::Corrupt).await;
        let liar = format!("{}", workers[10].addr);
        let (a, b) = (ints(200, 180, 3), ints(180, 190, 5));
        let (c, report) = requester(&tracker).multiply(Arc::new(a.clone()), Arc::new(b.clone()), |_| {}).await.unwrap();
        assert_eq!(c, naive_matmul(a.view(), b.view()));
        assert!(
            report.failures.iter().any(|f| f.contains(&liar)),
            "the liar {liar} was not named: {:?}",
            report.failures
        );
        let relay = report.relay.as_ref().unwrap();
        let leads = relay.slots.iter().any(|s| s.peer.addr == liar);
        if !leads {
            // Caught in its group: that slot computed the liar's share itself.
            let group = relay
                .slots
                .iter()
                .find(|s| s.delegated.as_ref().is_some_and(|d| d.slots.iter().any(|x| x.addr == liar)))
                .expect("the liar is in a group");
            let d = group.delegated.as_ref().unwrap();
            assert!(!d.blamed.is_empty() && !d.computed_here.is_empty(), "{d:?}");
            assert_eq!(report.plan, "relay", "the first level never saw the lie: {:?}", report.failures);
        }
        println!("plan {}; failures: {:?}", report.plan, report.failures);
        assert_eq!(state.stats().unwrap().leases, 0, "nothing left leased");
        teardown(tracker, workers).await;
    })
    .await
    .expect("the job hung");
}

/// A worker too small for any share of a 2048³ job two levels deep (4 MiB)
/// is swapped out of the lease's first level and out of its group before
/// anything is sent: the job runs on the others with nothing refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_too_small_for_its_share_is_placed_out_at_both_levels() {
    tokio::time::timeout(LIMIT, async {
        let (tracker, state) = spawn_tracker(TrackerConfig::default()).await;
        // Registered first, so the grant (in peer-id order) makes it the
        // first slot of the first level and the first of its group.
        let small = spawn_worker_with(septet_worker::WorkerConfig {
            tracker: Some(tracker.addr.to_string()),
            threads: 1,
            max_memory: Some(4 << 20),
            ..Default::default()
        })
        .await;
        wait_for_alive_slots(tracker.addr, 1).await;
        let mut workers = vec![small];
        workers.extend(spawn_workers(tracker.addr, 50, 1).await);
        wait_for_alive_slots(tracker.addr, 51).await;
        let small_addr = workers[0].addr.to_string();
        let n = 2048;
        let (a, b) = (ints(n, n, 6), ints(n, n, 7));
        let (c, report) = requester(&tracker).multiply(Arc::new(a.clone()), Arc::new(b.clone()), |_| {}).await.unwrap();
        assert_eq!(c, septet_common::matrix::matmul(a.view(), b.view(), faer::Par::Seq).unwrap());
        assert!(report.failures.is_empty(), "{:?}", report.failures);
        let relay = report.relay.as_ref().unwrap();
        for s in &relay.slots {
            assert_ne!(s.peer.addr, small_addr, "{} on the small worker", s.product);
            for sub in &s.delegated.as_ref().unwrap().slots {
                assert_ne!(sub.addr, small_addr, "a sub-slot of {} on the small worker", s.product);
            }
        }
        assert_eq!(state.stats().unwrap().leases, 0, "nothing left leased");
        teardown(tracker, workers).await;
    })
    .await
    .expect("the job hung");
}
