//! Federation over loopback: two trackers of two clusters, each with its
//! own workers; a lease at one that needs more slots than its cluster has
//! free borrows the rest from the other, and everything about that lease
//! (the job, renewal, failure reports, release, the requester leaving, the
//! borrower vanishing) works across both.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use ndarray::Array2;
use septet_client::{Requester, RequesterConfig, TrackerClient};
use septet_common::strassen::naive_matmul;
use septet_common::Role;
use septet_tracker::{Tracker, TrackerConfig};

const LIMIT: Duration = Duration::from_secs(120);

fn ints(rows: usize, cols: usize, salt: usize) -> Array2<f64> {
    Array2::from_shape_fn((rows, cols), |(i, j)| ((i * 7 + j * 3 + salt) % 11) as f64 - 5.0)
}

/// Cluster "m" (its tracker and `m_workers` one-slot workers), then cluster
/// "n" (`n_workers`) federated with it; returns once n sees m up.
async fn clusters(
    n_workers: usize,
    m_workers: usize,
    m_config: TrackerConfig,
) -> ((Server, Tracker, Vec<Server>), (Server, Tracker, Vec<Server>)) {
    clusters_polling(n_workers, m_workers, m_config, Duration::from_millis(200)).await
}

/// As [`clusters`], n polling m every `poll`.
async fn clusters_polling(
    n_workers: usize,
    m_workers: usize,
    m_config: TrackerConfig,
    poll: Duration,
) -> ((Server, Tracker, Vec<Server>), (Server, Tracker, Vec<Server>)) {
    let (m, m_state) = spawn_tracker(TrackerConfig { cluster: "m".into(), ..m_config }).await;
    let m_peers = spawn_workers(m.addr, m_workers, 1).await;
    wait_for_alive_slots(m.addr, m_workers as u32).await;
    let n_config = TrackerConfig {
        cluster: "n".into(),
        siblings: vec![m.addr.to_string()],
        sibling_poll: poll,
        ..Default::default()
    };
    let (n, n_state) = spawn_tracker(n_config).await;
    let n_peers = spawn_workers(n.addr, n_workers, 1).await;
    wait_for_alive_slots(n.addr, n_workers as u32).await;
    sibling_free(&n_state, m_workers as u32).await;
    ((n, n_state, n_peers), (m, m_state, m_peers))
}

/// Waits until `tracker` sees its sibling up with `free` slots free.
async fn sibling_free(tracker: &Tracker, free: u32) {
    tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            let s = &tracker.federation().siblings()[0];
            if s.up && s.free == free {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("the sibling never showed {free} free slots: {:?}", tracker.federation().siblings()));
}

/// Both clusters end with nothing leased and consistent tables, then stop.
async fn end(n: (Server, Tracker, Vec<Server>), m: (Server, Tracker, Vec<Server>)) {
    quiet(&n.1, "n").await;
    quiet(&m.1, "m").await;
    teardown(n.0, n.2).await;
    teardown(m.0, m.2).await;
}

async fn quiet(tracker: &Tracker, what: &str) {
    tokio::time::timeout(Duration::from_secs(20), async {
        while tracker.stats().unwrap().leases > 0 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{what} still has leases: {:?}", tracker.stats()));
    tracker.check_invariants().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_needing_more_than_its_cluster_borrows_the_rest_and_both_end_with_nothing_leased() {
    tokio::time::timeout(LIMIT, async {
        let ((n, n_state, n_peers), (m, m_state, m_peers)) = clusters(2, 6, TrackerConfig::default()).await;
        // The federation's peers, each row naming its cluster.
        let mut c = client(n.addr).await;
        let (table, rows) = c.federation_peers().await.unwrap();
        assert_eq!(rows.iter().filter(|r| r.cluster == "n").count(), 2, "{table}");
        assert_eq!(rows.iter().filter(|r| r.cluster == "m").count(), 6, "{table}");
        assert!(table.contains("cluster"), "{table}");
        let (_, own) = c.peers().await.unwrap();
        assert!(own.len() == 2 && own.iter().all(|r| r.cluster == "n"), "{own:?}");

        let req = Requester::new(RequesterConfig { tracker: n.addr.to_string(), ..Default::default() });
        let (a, b) = (ints(70, 50, 1), ints(50, 60, 2));
        let expected = naive_matmul(a.view(), b.view());
        let (got, report) = req.multiply(Arc::new(a), Arc::new(b), |_| {}).await.unwrap();
        assert_eq!(got, expected);
        let m_addrs: Vec<String> = m_peers.iter().map(|w| w.addr.to_string()).collect();
        let on_m = report.peers.iter().filter(|p| m_addrs.contains(&p.addr)).count();
        assert_eq!(on_m, 5, "two products on n's peers, five on m's: {:?}", report.peers);
        quiet(&n_state, "n").await;
        quiet(&m_state, "m").await;
        assert_eq!(m_state.stats().unwrap().free, 6);
        let totals = n_state.metrics().totals();
        assert!(totals.leases_granted >= 1);
        teardown(n, n_peers).await;
        teardown(m, m_peers).await;
    })
    .await
    .expect("the test hung");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_federated_lease_renews_reports_and_releases_across_both_trackers() {
    tokio::time::timeout(LIMIT, async {
        let ((n, n_state, n_peers), (m, m_state, m_peers)) = clusters(3, 6, TrackerConfig::default()).await;
        let mut c = client(n.addr).await;
        let grant = c.lease(7, true, None, |_, _, _| panic!("no wait expected")).await.unwrap();
        assert_eq!(grant.peers.len(), 7);
        assert_eq!(m_state.stats().unwrap().leases, 1, "m lent a part");
        assert_eq!(m_state.stats().unwrap().free, 2);
        assert_eq!(n_state.stats().unwrap().free, 0);
        let borrowed: Vec<_> = grant.peers.iter().filter(|p| p.peer_id.0 >> 48 != 0).collect();
        assert_eq!(borrowed.len(), 4, "{:?}", grant.peers);
        // From another connection, with the token: renew, report a borrowed
        // peer (m replaces it), release.
        let mut other = client(n.addr).await;
        let token = Some(grant.token.as_str());
        other.renew_with(grant.lease_id, token).await.unwrap();
        let replacement =
            other.report_failure_with(grant.lease_id, borrowed[0].peer_id, "test", true, token).await.unwrap();
        let replacement = replacement.expect("m had free slots");
        assert_ne!(replacement.peer_id.0 >> 48, 0, "the replacement comes from m: {replacement:?}");
        assert_eq!(m_state.stats().unwrap().free, 1);
        // Without the token, another connection may do nothing.
        other.release(grant.lease_id).await.unwrap_err();
        other.release_with(grant.lease_id, token).await.unwrap();
        end((n, n_state, n_peers), (m, m_state, m_peers)).await;
    })
    .await
    .expect("the test hung");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_attached_lease_ends_at_both_trackers_when_its_connection_closes() {
    tokio::time::timeout(LIMIT, async {
        let ((n, n_state, n_peers), (m, m_state, m_peers)) = clusters(1, 7, TrackerConfig::default()).await;
        let mut c = client(n.addr).await;
        let grant = c.lease(7, false, None, |_, _, _| {}).await.unwrap();
        assert_eq!(grant.peers.len(), 7);
        assert_eq!(m_state.stats().unwrap().free, 1);
        drop(c);
        quiet(&n_state, "n").await;
        quiet(&m_state, "m").await;
        assert_eq!(m_state.stats().unwrap().free, 7);
        teardown(n, n_peers).await;
        teardown(m, m_peers).await;
    })
    .await
    .expect("the test hung");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lender_reclaims_its_slots_at_the_ttl_when_the_borrowing_tracker_vanishes() {
    tokio::time::timeout(LIMIT, async {
        let m_config = TrackerConfig { lease_ttl: Duration::from_secs(2), ..Default::default() };
        let ((n, _n_state, n_peers), (m, m_state, m_peers)) = clusters(2, 6, m_config).await;
        let mut c = client(n.addr).await;
        let grant = c.lease(7, true, None, |_, _, _| {}).await.unwrap();
        assert_eq!(grant.peers.len(), 7);
        assert_eq!(m_state.stats().unwrap().leases, 1);
        // n goes away without releasing anything.
        drop(c);
        teardown(n, n_peers).await;
        quiet(&m_state, "m").await;
        assert_eq!(m_state.stats().unwrap().free, 6);
        teardown(m, m_peers).await;
    })
    .await
    .expect("the test hung");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_borrowing_lease_waits_in_the_lenders_queue_and_is_told_its_place() {
    tokio::time::timeout(LIMIT, async {
        // n polls m once (5 free) and not again for an hour; then m's own
        // requester takes 3 of them, so m queues the part n borrows.
        let hour = Duration::from_secs(3600);
        let ((n, n_state, n_peers), (m, m_state, m_peers)) =
            clusters_polling(2, 5, TrackerConfig::default(), hour).await;
        let mut own = client(m.addr).await;
        let held = own.lease(3, false, None, |_, _, _| {}).await.unwrap();
        let mut c = client(n.addr).await;
        let (tx, rx) = tokio::sync::oneshot::channel();
        let mut tx = Some(tx);
        let borrow = tokio::spawn(async move {
            let grant = c.lease(7, false, None, move |position, _, _| {
                if let Some(tx) = tx.take() {
                    let _ = tx.send(position);
                }
            });
            let grant = grant.await;
            (c, grant)
        });
        let position = tokio::time::timeout(Duration::from_secs(10), rx).await.expect("never told its place").unwrap();
        assert_eq!(position, 1, "first in m's queue");
        // n's own two slots are held meanwhile; m's queue has the borrowed part.
        assert_eq!(n_state.stats().unwrap().free, 0);
        assert_eq!(m_state.stats().unwrap().waiting, 1);
        own.release(held.lease_id).await.unwrap();
        let (c, grant) = borrow.await.unwrap();
        let grant = grant.unwrap();
        assert_eq!(grant.peers.len(), 7);
        assert_eq!(grant.peers.iter().filter(|p| p.peer_id.0 >> 48 != 0).count(), 5);
        drop(c);
        end((n, n_state, n_peers), (m, m_state, m_peers)).await;
    })
    .await
    .expect("the test hung");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_with_no_free_slot_borrows_the_whole_lease() {
    tokio::time::timeout(LIMIT, async {
        let ((n, n_state, n_peers), (m, m_state, m_peers)) = clusters(0, 7, TrackerConfig::default()).await;
        let req = Requester::new(RequesterConfig { tracker: n.addr.to_string(), ..Default::default() });
        let (a, b) = (ints(33, 40, 3), ints(40, 21, 4));
        let expected = naive_matmul(a.view(), b.view());
        let (got, report) = req.multiply(Arc::new(a), Arc::new(b), |_| {}).await.unwrap();
        assert_eq!(got, expected);
        assert_eq!(report.peers.len(), 7);
        // A local peer id means nothing to a lease with no local part.
        let mut c = client(n.addr).await;
        let grant = c.lease(7, false, None, |_, _, _| {}).await.unwrap();
        assert!(grant.peers.iter().all(|p| p.peer_id.0 >> 48 == 1), "{:?}", grant.peers);
        let err = c.report_failure(grant.lease_id, septet_common::proto::PeerId(3), "x", false).await.unwrap_err();
        assert!(err.to_string().contains("not part of lease"), "{err}");
        c.release(grant.lease_id).await.unwrap();
        end((n, n_state, n_peers), (m, m_state, m_peers)).await;
    })
    .await
    .expect("the test hung");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_name_is_checked() {
    let bad = TrackerConfig { cluster: "a b".into(), ..Default::default() };
    assert!(Tracker::new(bad).unwrap_err().to_string().contains("cluster name"));
    let c = TrackerClient::connect("127.0.0.1:1", Role::Client, Duration::from_secs(1)).await;
    assert!(c.is_err());
}

/// Brokered links over loopback (no NAT here, so each way is asked for
/// directly): a borrowed peer dials the requester back, and another is
/// spliced to it through n's tracker. Each link carries a product under
/// the lease's ticket; n's tracker counts the links by outcome in its
/// metrics and on its status page. (A punch needs two NATs: the namespace
/// tests make one.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn borrowed_peers_are_linked_by_dial_back_and_by_splice_and_the_tracker_counts_them() {
    use septet_client::dialback::Broker;
    use septet_common::conn::ConnLimits;
    use septet_common::frame::BlockOp;
    use septet_common::proto::{WorkerReply, WorkerRequest};
    use septet_common::{Frame, Matrix, MatrixView, TaskId};

    tokio::time::timeout(LIMIT, async {
        let (n, m) = clusters(0, 2, TrackerConfig::default()).await;
        let mut c = client(n.0.addr).await;
        let grant = c.lease(2, false, None, |_, _, _| {}).await.unwrap();
        let limits = ConnLimits::default();
        let broker =
            Broker::start(&n.0.addr.to_string(), &Default::default(), limits.clone(), LIMIT, &grant).await.unwrap();
        let (x, y) = (ints(5, 4, 1), ints(4, 3, 2));
        for (i, peer) in grant.peers.iter().enumerate() {
            if i == 1 {
                broker.splice_always();
            }
            let mut conn = broker.connect(peer, &limits).await.unwrap();
            conn.writer.send(&WorkerRequest::Ticket(peer.ticket.clone().unwrap())).await.unwrap();
            let task = TaskId(i as u64 + 1);
            conn.writer
                .send_blocks(task, BlockOp::Multiply, &[MatrixView::F64(x.view()), MatrixView::F64(y.view())])
                .await
                .unwrap();
            let product = loop {
                match conn.reader.read_frame().await.unwrap().expect("a product") {
                    Frame::Blocks(b) if b.task_id == task => break b,
                    Frame::Control(body) => assert!(matches!(
                        body.decode::<WorkerReply>().unwrap(),
                        WorkerReply::Working | WorkerReply::Computed { .. }
                    )),
                    other => panic!("unexpected {other:?}"),
                }
            };
            assert!(matches!(&product.mats[0], Matrix::F64(p) if *p == naive_matmul(x.view(), y.view())));
        }
        // Outcomes: dialled back, punched, spliced, failed.
        assert_eq!(n.1.metrics().brokered_counts(), [1, 0, 1, 0]);
        let stop = tokio_util::sync::CancellationToken::new();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let http = listener.local_addr().unwrap();
        let config = septet_observe::HttpConfig { name: "tracker", ..Default::default() };
        tokio::spawn(septet_tracker::http::run(listener, n.1.clone(), config, stop.clone().cancelled_owned()));
        let mut s = tokio::net::TcpStream::connect(http).await.unwrap();
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        s.write_all(b"GET /api/status HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").await.unwrap();
        let mut body = String::new();
        s.read_to_string(&mut body).await.unwrap();
        let json: serde_json::Value = serde_json::from_str(&body[body.find("\r\n\r\n").unwrap() + 4..]).unwrap();
        assert_eq!(
            json["federation"]["links_brokered"],
            serde_json::json!({"dialled_back": 1, "punched": 0, "spliced": 1, "failed": 0})
        );
        stop.cancel();
        c.release(grant.lease_id).await.unwrap();
        drop(broker);
        end(n, m).await;
    })
    .await
    .unwrap();
}
