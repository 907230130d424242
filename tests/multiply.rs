//! End to end: a tracker, seven workers and a requester multiply over
//! loopback and must match the local product; the lease is back in the pool
//! afterwards. Bad input gets clear errors and leaves nothing leased.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use ndarray::Array2;
use rand::{RngExt, SeedableRng};
use septet_client::{Plan, RequestError, Requester, RequesterConfig};
use septet_common::conn::ConnLimits;
use septet_common::frame::{encode_control, BlockOp};
use septet_common::proto::LeaseGrant;
use septet_common::proto::{Failure, LeaseId, PeerId, TaskId, TrackerReply, TrackerRequest, WorkerReply};
use septet_common::strassen::naive_matmul;
use septet_common::{Connection, Element, Error, ErrorCode, Frame, MatrixView, PeerAddr, Role};
use septet_tracker::{Tracker, TrackerConfig};

const LIMIT: Duration = Duration::from_secs(120);

fn random<T: Element>(rows: usize, cols: usize, rng: &mut rand::rngs::StdRng) -> Array2<T> {
    Array2::from_shape_fn((rows, cols), |_| T::from_f64(rng.random_range(-1.0..1.0)))
}

fn ints(rows: usize, cols: usize, salt: usize) -> Array2<f64> {
    Array2::from_shape_fn((rows, cols), |(i, j)| ((i * 7 + j * 3 + salt) % 11) as f64 - 5.0)
}

async fn grid() -> (Server, Tracker, Vec<Server>) {
    let (tracker, state) = spawn_tracker(TrackerConfig::default()).await;
    let workers = spawn_workers(tracker.addr, 7, 1).await;
    wait_for_alive_slots(tracker.addr, 7).await;
    (tracker, state, workers)
}

fn requester(tracker: &Server) -> Requester {
    Requester::new(RequesterConfig { tracker: tracker.addr.to_string(), ..Default::default() })
}

#[tokio::test]
async fn seven_workers_multiply_odd_and_non_square_shapes_exactly_in_f64() {
    tokio::time::timeout(LIMIT, async {
        let (tracker, state, workers) = grid().await;
        let req = requester(&tracker);
        for (salt, &(m, k, n)) in
            [(1, 1, 1), (3, 5, 7), (2, 1, 2), (1, 9, 1), (64, 64, 64), (129, 257, 65)].iter().enumerate()
        {
            let (a, b) = (ints(m, k, salt), ints(k, n, salt + 50));
            let expected = naive_matmul(a.view(), b.view());
            let (c, report) = req.multiply(Arc::new(a), Arc::new(b), |_| {}).await.unwrap();
            assert_eq!(c, expected, "{m}x{k}x{n}");
            assert_eq!(report.peers.len(), 7);
            assert!(report.bytes_sent > 0 && report.bytes_received > 0);
            assert!(report.failures.is_empty(), "{:?}", report.failures);
            // The lease is back in the pool once multiply returns.
            assert_eq!(state.stats().unwrap().free, 7);
            assert_eq!(state.stats().unwrap().leases, 0);
            state.check_invariants().unwrap();
        }
        teardown(tracker, workers).await;
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn random_f32_and_f64_products_match_within_tolerance() {
    tokio::time::timeout(LIMIT, async {
        let (tracker, state, workers) = grid().await;
        let seed = 20261121;
        println!("seed {seed}");
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let req = requester(&tracker);
        let (a, b) = (random::<f32>(97, 130, &mut rng), random::<f32>(130, 33, &mut rng));
        let expected = naive_matmul(a.view(), b.view());
        let (c, _) = req.multiply(Arc::new(a), Arc::new(b), |_| {}).await.unwrap();
        for (g, e) in c.iter().zip(&expected) {
            assert!((g - e).abs() <= 1e-4 * (1.0 + e.abs()), "{g} vs {e}");
        }
        let (a, b) = (random::<f64>(200, 100, &mut rng), random::<f64>(100, 150, &mut rng));
        let expected = naive_matmul(a.view(), b.view());
        let (c, _) = req.multiply(Arc::new(a), Arc::new(b), |_| {}).await.unwrap();
        for (g, e) in c.iter().zip(&expected) {
            assert!((g - e).abs() <= 1e-12 * (1.0 + e.abs()), "{g} vs {e}");
        }
        state.check_invariants().unwrap();
        assert_eq!(state.stats().unwrap().leases, 0);
        teardown(tracker, workers).await;
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn a_shape_mismatch_is_refused_before_anything_is_leased() {
    tokio::time::timeout(LIMIT, async {
        let (tracker, state, workers) = grid().await;
        let err =
            requester(&tracker).multiply(Arc::new(ints(3, 4, 0)), Arc::new(ints(5, 2, 0)), |_| {}).await.unwrap_err();
        assert!(matches!(err, RequestError::ShapeMismatch { left: (3, 4), right: (5, 2) }), "{err}");
        assert!(err.to_string().contains("A has 4 columns but B has 5 rows"), "{err}");
        let (_, rows) = client(tracker.addr).await.peers().await.unwrap();
        assert!(rows.iter().all(|r| r.leases_total == 0), "nothing was ever leased");
        state.check_invariants().unwrap();
        teardown(tracker, workers).await;
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn a_worker_answers_mismatched_operands_with_an_error_and_keeps_serving() {
    tokio::time::timeout(LIMIT, async {
        let worker = spawn_worker(None, 1).await;
        let mut conn = Connection::connect(worker.addr, Role::Client, Default::default()).await.unwrap();
        let (x, y) = (ints(2, 3, 0), ints(4, 2, 0));
        conn.writer
            .send_blocks(TaskId(9), BlockOp::Multiply, &[MatrixView::F64(x.view()), MatrixView::F64(y.view())])
            .await
            .unwrap();
        match conn.reader.read_message::<WorkerReply>("an error").await.unwrap() {
            WorkerReply::Error(Failure { code: ErrorCode::ShapeMismatch, task_id: Some(TaskId(9)), message }) => {
                assert!(message.contains("(2, 3)") && message.contains("(4, 2)"), "{message}");
            }
            other => panic!("expected a shape error, got {other:?}"),
        }
        // Mixed dtypes are refused the same way.
        let yf = ints(3, 2, 0).mapv(|v| v as f32);
        conn.writer
            .send_blocks(TaskId(10), BlockOp::Multiply, &[MatrixView::F64(x.view()), MatrixView::F32(yf.view())])
            .await
            .unwrap_err();
        // The same connection still computes a good task.
        let y = ints(3, 2, 0);
        conn.writer
            .send_blocks(TaskId(11), BlockOp::Multiply, &[MatrixView::F64(x.view()), MatrixView::F64(y.view())])
            .await
            .unwrap();
        assert!(matches!(
            conn.reader.read_message::<WorkerReply>("Computed").await.unwrap(),
            WorkerReply::Computed { task_id: TaskId(11), .. }
        ));
        match conn.reader.read_frame().await.unwrap() {
            Some(Frame::Blocks(b)) => assert_eq!(b.mats, vec![septet_common::Matrix::F64(x.dot(&y))]),
            other => panic!("expected the product, got {other:?}"),
        }
        // An empty inner dimension is refused (it would ask for a zero product of any size).
        let (wide, tall) = (Array2::<f64>::zeros((100_000, 0)), Array2::<f64>::zeros((0, 100_000)));
        conn.writer
            .send_blocks(TaskId(13), BlockOp::Multiply, &[MatrixView::F64(wide.view()), MatrixView::F64(tall.view())])
            .await
            .unwrap();
        match conn.reader.read_message::<WorkerReply>("an error").await.unwrap() {
            WorkerReply::Error(Failure { task_id: Some(TaskId(13)), message, .. }) => {
                assert!(message.contains("inner dimension is empty"), "{message}")
            }
            other => panic!("expected a refusal, got {other:?}"),
        }
        // Raw garbage on another connection does not disturb it.
        let mut raw = tokio::net::TcpStream::connect(worker.addr).await.unwrap();
        tokio::io::AsyncWriteExt::write_all(&mut raw, &encode_control(&TrackerRequest::ListPeers).unwrap())
            .await
            .unwrap();
        drop(raw);
        conn.writer
            .send_blocks(TaskId(12), BlockOp::Multiply, &[MatrixView::F64(x.view()), MatrixView::F64(y.view())])
            .await
            .unwrap();
        assert!(matches!(
            conn.reader.read_message::<WorkerReply>("Computed").await.unwrap(),
            WorkerReply::Computed { task_id: TaskId(12), .. }
        ));
        worker.shutdown().await;
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn an_unreachable_tracker_is_a_clear_error() {
    // Nobody listens there for the whole test (see `dead_addr`).
    let dead = dead_addr();
    let addr = dead.addr;
    let req = Requester::new(RequesterConfig { tracker: addr.to_string(), ..Default::default() });
    let err = req.multiply(Arc::new(ints(2, 2, 0)), Arc::new(ints(2, 2, 0)), |_| {}).await.unwrap_err();
    assert!(matches!(err, RequestError::Tracker { source: Error::Io(_), .. }), "{err}");
    assert!(err.to_string().contains(&addr.to_string()));
}

/// Needs slow workers (`Fault::Delay`), so the `fault-injection` feature
/// (`cargo test --workspace --all-features`); without it the test is not built.
#[cfg(feature = "fault-injection")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_longer_than_the_lease_ttl_renews_its_lease() {
    tokio::time::timeout(LIMIT, async {
        // Renewed at half the TTL: a renewal may come 0.75 s late.
        let config = TrackerConfig { lease_ttl: Duration::from_millis(1500), ..TrackerConfig::default() };
        let (tracker, state) = spawn_tracker(config).await;
        let mut workers = Vec::new();
        for _ in 0..7 {
            workers.push(
                spawn_worker_with(septet_worker::WorkerConfig {
                    tracker: Some(tracker.addr.to_string()),
                    threads: 1,
                    // Every product takes over two TTLs to come back.
                    fault: Some(septet_worker::Fault::Delay(Duration::from_millis(4000))),
                    ..Default::default()
                })
                .await,
            );
        }
        wait_for_alive_slots(tracker.addr, 7).await;
        let watcher = state.clone();
        let held = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(3500)).await;
            watcher.stats().unwrap().leases
        });
        let (a, b) = (ints(9, 8, 0), ints(8, 7, 1));
        let expected = naive_matmul(a.view(), b.view());
        let (c, report) = requester(&tracker).multiply(Arc::new(a), Arc::new(b), |_| {}).await.unwrap();
        assert_eq!(c, expected);
        assert_eq!(held.await.unwrap(), 1, "the lease was still alive after two TTLs");
        assert!(report.failures.is_empty(), "the lease never expired: {:?}", report.failures);
        assert_eq!(state.stats().unwrap().leases, 0);
        teardown(tracker, workers).await;
    })
    .await
    .unwrap();
}

/// How a fake worker answers the one task it reads on each connection.
#[derive(Clone, Copy)]
enum Misbehaviour {
    /// `Computed`, then bytes that are not a frame, then silence with the
    /// connection held open.
    ComputedThenGarbage,
    /// A valid message, but not the one expected: `Computed` for another task.
    WrongKind,
    /// A product of the right shape full of NaN.
    NanProduct,
    /// Takes the task, then never sends a byte, the connection held open:
    /// what a requester sees of a worker whose link was cut silently.
    Silent,
}

/// A misbehaving worker on 127.0.0.1:0, registered with `tracker` as a
/// one-slot peer by the real worker agent.
async fn fake_worker(tracker: std::net::SocketAddr, how: Misbehaviour) -> tokio_util::sync::CancellationToken {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let listen = listener.local_addr().unwrap();
    let stop = tokio_util::sync::CancellationToken::new();
    let s = stop.clone();
    tokio::spawn(async move {
        loop {
            let stream = tokio::select! {
                _ = s.cancelled() => return,
                accepted = listener.accept() => accepted.unwrap().0,
            };
            let s = s.clone();
            tokio::spawn(async move {
                let limits = ConnLimits { max_frame_len: 64 << 20, ..ConnLimits::default() };
                let (mut conn, _) = Connection::accept(stream, limits).await.unwrap();
                // The lease ticket comes first; this worker does not check it.
                let mut frame = conn.reader.read_frame().await;
                if let Ok(Some(Frame::Control(_))) = frame {
                    frame = conn.reader.read_frame().await;
                }
                let Ok(Some(Frame::Blocks(task))) = frame else { return };
                match how {
                    Misbehaviour::ComputedThenGarbage => {
                        let done = WorkerReply::Computed { task_id: task.task_id, compute_us: 1 };
                        conn.writer.send(&done).await.unwrap();
                        conn.writer.send_raw(b"\x05\x00\x00\x00\x07garbage that is no frame").await.unwrap();
                    }
                    Misbehaviour::WrongKind => {
                        let other = WorkerReply::Computed { task_id: TaskId(task.task_id.0 + 1000), compute_us: 1 };
                        conn.writer.send(&other).await.unwrap()
                    }
                    Misbehaviour::Silent => {}
                    Misbehaviour::NanProduct => {
                        let shape = (task.mats[0].shape().0, task.mats[1].shape().1);
                        let nan = Array2::<f64>::from_elem(shape, f64::NAN);
                        let done = WorkerReply::Computed { task_id: task.task_id, compute_us: 1 };
                        conn.writer.send(&done).await.unwrap();
                        conn.writer
                            .send_blocks(task.task_id, BlockOp::Product, &[MatrixView::F64(nan.view())])
                            .await
                            .unwrap();
                    }
                }
                // Hold the connection: only the requester's own checks end the attempt.
                s.cancelled().await;
            });
        }
    });
    let agent = septet_worker::agent::AgentConfig {
        tracker: tracker.to_string(),
        listen,
        slots: 1,
        memory_mib: 0,
        timeout: Duration::from_secs(5),
        security: Default::default(),
        gate: None,
    };
    tokio::spawn(septet_worker::agent::run(agent, stop.clone()));
    stop
}

/// The misbehaving worker registers first (so the lease takes it as peer
/// 0); seven good workers follow, the last one free to replace it. The job
/// must finish with the right answer, never hang.
async fn a_misbehaving_worker_is_replaced(how: Misbehaviour, needle: &str) {
    tokio::time::timeout(LIMIT, async {
        let (tracker, state) = spawn_tracker(TrackerConfig::default()).await;
        let fake = fake_worker(tracker.addr, how).await;
        wait_for_alive_slots(tracker.addr, 1).await;
        let workers = spawn_workers(tracker.addr, 7, 1).await;
        wait_for_alive_slots(tracker.addr, 8).await;
        let (a, b) = (ints(37, 29, 3), ints(29, 41, 4));
        let expected = naive_matmul(a.view(), b.view());
        // No hedging: a misbehaving worker lags, and a hedge would beat
        // it before the failure under test shows.
        // The fake speaks only the direct plan's conversation: this is how
        // that plan (the relay's fallback) copes with it.
        let direct = RequesterConfig { max_hedges: 0, plan: Plan::Direct, ..requester(&tracker).config().clone() };
        let (c, report) =
            Requester::new(direct).multiply(Arc::new(a.clone()), Arc::new(b.clone()), |_| {}).await.unwrap();
        assert_eq!(c, expected);
        assert_eq!(report.retries, 1, "{:?}", report.failures);
        assert!(report.failures[0].contains("peer 0") && report.failures[0].contains(needle), "{:?}", report.failures);
        assert!(report.peers.iter().all(|p| p.peer_id != PeerId(0)));
        assert_eq!(state.stats().unwrap().leases, 0);
        fake.cancel();
        teardown(tracker, workers).await;
    })
    .await
    .expect("the job hung");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_that_sends_computed_then_garbage_is_replaced() {
    a_misbehaving_worker_is_replaced(Misbehaviour::ComputedThenGarbage, "malformed frame").await;
}

/// No byte for the silence timeout (4 s) ends the attempt, long before the
/// product deadline (10 s plus compute) would.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_that_goes_silent_is_given_up_and_replaced() {
    a_misbehaving_worker_is_replaced(Misbehaviour::Silent, "went silent").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_that_answers_with_the_wrong_message_kind_is_replaced() {
    a_misbehaving_worker_is_replaced(
        Misbehaviour::WrongKind,
        "unexpected message: expected Computed, got Computed for task 1",
    )
    .await;
}

/// A "tracker" that grants one peer for a seven-slot lease: the job fails
/// with a clear error (no index panic) and releases the lease.
#[tokio::test]
async fn a_short_lease_grant_is_a_clear_error_and_is_released() {
    tokio::time::timeout(LIMIT, async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let fake = tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            let (mut conn, _) = Connection::accept(stream, ConnLimits::default()).await.unwrap();
            let asked = conn.reader.read_message::<TrackerRequest>("Lease").await.unwrap();
            assert!(matches!(asked, TrackerRequest::Lease { count: 7, .. }), "{asked:?}");
            let peers = vec![PeerAddr { peer_id: PeerId(3), addr: "127.0.0.1:1".into(), ticket: None }];
            let grant = LeaseGrant { lease_id: LeaseId(9), peers, ttl_ms: 60_000, token: "ab".repeat(32) };
            conn.writer.send(&TrackerReply::Leased(grant)).await.unwrap();
            let released = conn.reader.read_message::<TrackerRequest>("Release").await.unwrap();
            conn.writer.send(&TrackerReply::Released { lease_id: LeaseId(9) }).await.unwrap();
            released
        });
        let req = Requester::new(RequesterConfig { tracker: addr.to_string(), ..Default::default() });
        let err = req.multiply(Arc::new(ints(4, 4, 0)), Arc::new(ints(4, 4, 1)), |_| {}).await.unwrap_err();
        assert!(matches!(err, RequestError::ShortGrant { lease_id: LeaseId(9), got: 1, wanted: 7 }), "{err}");
        assert!(err.to_string().contains("1 peers, but a job needs 7"), "{err}");
        assert_eq!(fake.await.unwrap(), TrackerRequest::Release { lease_id: LeaseId(9), token: None });
    })
    .await
    .unwrap();
}

/// A product full of NaN cannot be verified: the job stops at once with a
/// clear error, without blaming the peer or burning replacements on it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_non_finite_product_stops_the_job_without_blaming_or_replacing_the_peer() {
    tokio::time::timeout(LIMIT, async {
        let (tracker, state) = spawn_tracker(TrackerConfig::default()).await;
        let fake = fake_worker(tracker.addr, Misbehaviour::NanProduct).await;
        wait_for_alive_slots(tracker.addr, 1).await;
        let workers = spawn_workers(tracker.addr, 7, 1).await;
        wait_for_alive_slots(tracker.addr, 8).await;
        // The direct plan: the fake does not speak the relay's conversation.
        let direct = RequesterConfig { plan: Plan::Direct, ..requester(&tracker).config().clone() };
        let err = Requester::new(direct)
            .multiply(Arc::new(ints(37, 29, 3)), Arc::new(ints(29, 41, 4)), |_| {})
            .await
            .unwrap_err();
        assert!(
            matches!(
                err,
                RequestError::Unverifiable { peer_id: PeerId(0), cause: septet_client::verify::NonFinite::Product, .. }
            ),
            "{err}"
        );
        let text = err.to_string();
        assert!(
            text.contains("peer 0") && text.contains("non-finite") && text.contains("cannot be verified"),
            "{text}"
        );
        let (_, rows) = client(tracker.addr).await.peers().await.unwrap();
        assert_eq!(rows[0].failures, 0, "the peer was not blamed: {rows:?}");
        assert_eq!(rows.iter().map(|r| r.leases_total).sum::<u64>(), 7, "no replacement was leased: {rows:?}");
        assert_eq!(state.stats().unwrap().leases, 0);
        fake.cancel();
        teardown(tracker, workers).await;
    })
    .await
    .expect("the job hung");
}
