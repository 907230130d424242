//! Churn and faults with real processes: `septet` trackers and workers are
//! spawned as child processes and killed with SIGKILL; the requester runs in
//! the test. A multiplication must survive dead, slow and lying workers and
//! return exactly the right answer, and leases must survive crashes.
//!
//! Misbehaving workers are `septet worker --fault=...`, which exists only
//! in builds with the `fault-injection` feature, so this file declares it in
//! `required-features` (Cargo.toml): the README's test command (`cargo test
//! --workspace --all-features`) runs it; without the feature cargo skips the
//! whole file.

mod common;

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use ndarray::Array2;
use septet_client::{JobReport, Plan, Requester, RequesterConfig};
use septet_common::strassen::naive_matmul;
use septet_common::PeerId;
use tokio::io::AsyncBufReadExt;

const LIMIT: Duration = Duration::from_secs(120);

/// A tracker process with short heartbeats, listening on `listen`, and the
/// address it bound.
fn tracker_proc(listen: &str) -> (Child, SocketAddr) {
    tracker_process(listen, &["--heartbeat-interval", "0.2", "--heartbeat-timeout", "1.5"])
}

fn worker_proc(tracker: SocketAddr, extra: &[&str]) -> Child {
    Command::new(septet_bin())
        .args(["worker", "--tracker", &tracker.to_string(), "--threads", "1"])
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

/// A tracker process on a port of its own, up and listening.
async fn start_tracker() -> (Procs, SocketAddr) {
    let (child, tracker) = tracker_proc("127.0.0.1:0");
    (Procs(vec![child]), tracker)
}

/// Rows of the peer table.
async fn rows(tracker: SocketAddr) -> Vec<septet_common::proto::PeerRow> {
    client(tracker).await.peers().await.unwrap().1
}

/// Starts workers one at a time, so their peer ids follow `specs`' order.
async fn start_workers(procs: &mut Procs, tracker: SocketAddr, specs: &[&[&str]]) {
    for spec in specs {
        let before = rows(tracker).await.len();
        procs.0.push(worker_proc(tracker, spec));
        wait_for_alive_slots(tracker, before as u32 + 1).await;
    }
}

fn ints(rows: usize, cols: usize, salt: usize) -> Array2<f64> {
    Array2::from_shape_fn((rows, cols), |(i, j)| ((i * 7 + j * 3 + salt) % 11) as f64 - 5.0)
}

/// These tests are about the direct plan's answers to failures (redos,
/// deadlines, hedges), which is also what a relay that fails falls back
/// to; tests/relay.rs has the relay's own.
fn requester(tracker: SocketAddr, peer_timeout: Duration) -> Requester {
    Requester::new(RequesterConfig {
        tracker: tracker.to_string(),
        io_timeout: peer_timeout,
        replacement_wait: Duration::from_secs(20),
        plan: Plan::Direct,
        ..RequesterConfig::default()
    })
}

async fn multiply_checked(req: &Requester, m: usize, k: usize, n: usize) -> JobReport {
    let (a, b) = (ints(m, k, 1), ints(k, n, 2));
    let expected = naive_matmul(a.view(), b.view());
    let (c, report) = req.multiply(Arc::new(a), Arc::new(b), |_| {}).await.unwrap();
    assert_eq!(c, expected, "the grid's product must equal the local one exactly");
    report
}

/// Waits until every peer has its one slot leased.
async fn wait_until_all_leased(tracker: SocketAddr) {
    for _ in 0..500 {
        if rows(tracker).await.iter().all(|r| r.in_use == 1) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the job never leased every peer");
}

async fn assert_nothing_leased(tracker: SocketAddr) {
    for _ in 0..300 {
        if rows(tracker).await.iter().all(|r| r.in_use == 0) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("slots still leased: {:?}", rows(tracker).await);
}

/// A worker that computes slowly but keeps talking (so it is never given
/// up) lags behind the six others: its product is hedged on a spare, the
/// hedge's copy is used and the slow one cancelled, the tracker puts the
/// slow worker on probation (`slow` = 1), and the next lease of seven on
/// this grid of eight leaves it out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_worker_is_hedged_and_put_on_probation() {
    tokio::time::timeout(LIMIT, async {
        let (mut procs, tracker) = start_tracker().await;
        let good: &[&str] = &[];
        start_workers(&mut procs, tracker, &[&["--fault=delay=30"], good, good, good, good, good, good, good]).await;
        let req = requester(tracker, Duration::from_secs(60));

        let report = multiply_checked(&req, 130, 67, 41).await;
        assert_eq!((report.retries, report.failures.len()), (0, 0), "{:?}", report.failures);
        let [hedge] = &report.hedges[..] else { panic!("one hedge expected: {:?}", report.hedges) };
        assert_eq!((hedge.slow_peer.peer_id, hedge.winner), (PeerId(0), "hedge"), "{hedge:?}");
        assert!(hedge.reason.contains("still computing"), "{hedge:?}");
        assert_ne!(hedge.hedge_peer.peer_id, PeerId(0));
        let hedged: Vec<_> = report.peers.iter().filter(|p| p.hedged).collect();
        assert_eq!(hedged.len(), 1, "{:?}", report.peers);
        assert_eq!(hedged[0].product, hedge.product);
        assert!(report.peers.iter().all(|p| p.peer_id != PeerId(0)), "the slow copy was not used");
        // The timeline shows both attempts at the product: the slow one
        // cancelled, the hedge's verified.
        let attempts: Vec<_> = report.attempts.iter().filter(|a| a.product == hedge.product).collect();
        let outcomes: Vec<_> = attempts.iter().map(|a| (a.kind, a.outcome, a.peer.peer_id)).collect();
        assert_eq!(
            outcomes,
            [("first", "cancelled", PeerId(0)), ("hedge", "verified", hedge.hedge_peer.peer_id)],
            "{:?}",
            report.attempts
        );
        assert!(attempts[0].sent_s.is_some() && attempts[0].computed_s.is_none(), "cancelled while computing");
        let html = septet::report::render(&report, &septet::report::Context::default());
        let svg = &html[html.find("<svg").unwrap()..html.find("</svg>").unwrap()];
        assert!(
            svg.contains(&format!(">{} (hedge) · peer ", hedge.product)) && svg.contains(">cancelled: the hedge won<"),
            "{svg}"
        );
        assert!(html.contains("<h2>Hedges</h2>") && html.contains("still computing"), "{html}");
        assert_nothing_leased(tracker).await;
        let slow: Vec<u32> = rows(tracker).await.iter().map(|r| r.slow).collect();
        assert_eq!(slow[0], 1, "one strike for the beaten worker: {slow:?}");
        assert!(slow[1..].iter().all(|&s| s == 0), "{slow:?}");

        // On probation, it is the one of eight the next lease leaves out.
        let report = multiply_checked(&req, 130, 67, 41).await;
        assert!(report.hedges.is_empty(), "{:?}", report.hedges);
        assert!(report.peers.iter().all(|p| p.peer_id != PeerId(0)), "{:?}", report.peers);
        assert_eq!(rows(tracker).await[0].slow, 1, "not leased, so not proven either");
    })
    .await
    .expect("the job hung");
}

/// A faulty worker registered first (so the lease takes it), six good ones,
/// and a spare registered last (free to replace the faulty one, unless a
/// peer of the job's own lease is idle first).
async fn one_faulty_worker(fault: &str, peer_timeout: Duration, max_hedges: u32) {
    tokio::time::timeout(LIMIT, async {
        let (mut procs, tracker) = start_tracker().await;
        let fault_arg = format!("--fault={fault}");
        let good: &[&str] = &[];
        start_workers(&mut procs, tracker, &[&[fault_arg.as_str()], good, good, good, good, good, good, good]).await;

        let req = Requester::new(RequesterConfig { max_hedges, ..requester(tracker, peer_timeout).config().clone() });
        let report = multiply_checked(&req, 130, 67, 41).await;
        assert_eq!(report.retries, 1, "{:?}", report.failures);
        assert!(report.verified);
        assert_eq!(report.failures.len(), 1, "{:?}", report.failures);
        assert!(report.failures[0].contains("peer 0"), "{:?}", report.failures);
        assert!(report.peers.iter().all(|p| p.peer_id != PeerId(0)), "peer 0's product came from elsewhere");
        assert_nothing_leased(tracker).await;
        let rows = rows(tracker).await;
        assert_eq!(rows[0].failures, 1, "the tracker counted the failure: {rows:?}");
        // The product was redone by the spare or by a peer of the job's own
        // lease that was done with its product, whichever was ready first.
        assert!(rows[7].leases_total <= 1, "{rows:?}");
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupting_worker_is_caught_by_verification_and_its_product_recomputed() {
    one_faulty_worker("corrupt", Duration::from_secs(10), 2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_slower_than_its_deadline_is_replaced() {
    // A deadline of 5 s leaves healthy peers room on a loaded machine;
    // hedging is off, so the slow product is replaced when its deadline
    // passes, not hedged before.
    one_faulty_worker("delay=60", Duration::from_secs(5), 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_that_drops_the_connection_mid_reply_is_replaced() {
    one_faulty_worker("drop", Duration::from_secs(10), 2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_a_worker_mid_multiply_still_gives_the_right_answer() {
    tokio::time::timeout(LIMIT, async {
        let (mut procs, tracker) = start_tracker().await;
        // Every product is held back 2 s, so the job is surely in flight
        // when the victim (peer 0) is killed.
        let slow: &[&str] = &["--fault=delay=2"];
        start_workers(&mut procs, tracker, &[slow; 7]).await;
        let req = requester(tracker, Duration::from_secs(10));
        let job = tokio::spawn(async move { multiply_checked(&req, 90, 77, 65).await });
        wait_until_all_leased(tracker).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        let victim = procs.0.remove(1);
        start_workers(&mut procs, tracker, &[&[]]).await; // the spare
        let mut victim = victim;
        victim.kill().unwrap();
        victim.wait().unwrap();
        let report = job.await.unwrap();
        assert_eq!(report.retries, 1, "{:?}", report.failures);
        assert!(report.failures[0].contains("peer 0"), "{:?}", report.failures);
        assert_nothing_leased(tracker).await;
    })
    .await
    .unwrap();
}

/// A product whose peer failed, on a grid with no slot free beside the
/// lease, waits for a peer of the lease to finish its own product (here,
/// long after the replacement wait) and is redone there: the job
/// finishes rather than failing because the tracker had no spare.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redo_waits_for_a_peer_of_the_lease_while_others_still_compute() {
    tokio::time::timeout(LIMIT, async {
        let (mut procs, tracker) = start_tracker().await;
        let liar: &[&str] = &["--fault=corrupt"];
        let slow: &[&str] = &["--fault=delay=1.5"];
        start_workers(&mut procs, tracker, &[liar, slow, slow, slow, slow, slow, slow]).await;
        let req = Requester::new(RequesterConfig {
            tracker: tracker.to_string(),
            replacement_wait: Duration::from_millis(300),
            max_hedges: 0,
            plan: Plan::Direct,
            ..RequesterConfig::default()
        });
        let (a, b) = (ints(40, 30, 0), ints(30, 50, 1));
        let (result, report) = req.multiply_reporting(Arc::new(a.clone()), Arc::new(b.clone()), |_| {}).await;
        let c = result.unwrap_or_else(|e| panic!("{e}: {:?}", report.failures));
        assert_eq!(c, naive_matmul(a.view(), b.view()));
        assert_eq!(report.retries, 1, "{:?}", report.failures);
        assert!(report.failures.iter().any(|f| f.contains("verification")), "{:?}", report.failures);
        assert_nothing_leased(tracker).await;
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_replacement_in_time_is_a_clear_error_and_releases_the_lease() {
    tokio::time::timeout(LIMIT, async {
        let (mut procs, tracker) = start_tracker().await;
        // Seven liars: no product ever verifies, so no peer of the lease
        // frees up, and the tracker has no spare slot.
        let liar: &[&str] = &["--fault=corrupt"];
        start_workers(&mut procs, tracker, &[liar; 7]).await;
        let req = Requester::new(RequesterConfig {
            tracker: tracker.to_string(),
            replacement_wait: Duration::from_millis(600),
            plan: Plan::Direct,
            ..RequesterConfig::default()
        });
        let (result, report) =
            req.multiply_reporting(Arc::new(ints(20, 20, 0)), Arc::new(ints(20, 20, 1)), |_| {}).await;
        let text = result.unwrap_err().to_string();
        assert!(text.contains("verification") && text.contains("no replacement"), "{text}");
        assert_nothing_leased(tracker).await;
        // The failed job still has its report: seven failed attempts, no products.
        assert!(report.peers.is_empty() && report.lease_id.0 > 0, "{report:?}");
        assert_eq!(report.attempts.iter().filter(|a| a.outcome == "failed").count(), 7, "{:?}", report.attempts);
        assert!(report.attempts.iter().all(|a| a.error.as_deref().is_some_and(|e| e.contains("verification"))));
        let context = septet::report::Context { error: Some(text.clone()), ..Default::default() };
        let html = septet::report::render(&report, &context);
        assert!(html.contains("septet job failed") && html.contains("no C was returned"), "{html}");
        assert_eq!(html.matches("<g class=\"failed\">").count(), 7, "a ✕ per failed attempt");
        assert!(!html.contains("came in last"));
    })
    .await
    .unwrap();
}

/// On a grid of exactly seven (the smallest the design allows) one lying
/// worker cannot stop a job: its product is redone on a peer of the job's
/// own lease once that peer's product is in, without a spare slot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grid_of_exactly_seven_survives_a_lying_worker_by_reusing_its_own_lease() {
    tokio::time::timeout(LIMIT, async {
        let (mut procs, tracker) = start_tracker().await;
        let good: &[&str] = &[];
        start_workers(&mut procs, tracker, &[&["--fault=corrupt"], good, good, good, good, good, good]).await;
        let report = multiply_checked(&requester(tracker, Duration::from_secs(10)), 40, 30, 50).await;
        assert_eq!(report.retries, 1, "{:?}", report.failures);
        assert!(
            report.failures[0].contains("peer 0") && report.failures[0].contains("verification"),
            "{:?}",
            report.failures
        );
        assert!(report.peers.iter().all(|p| p.peer_id != septet_common::PeerId(0)), "the liar's product was used");
        let mut ids: Vec<_> = report.peers.iter().map(|p| p.peer_id).collect();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), 6, "one of the six honest peers computed two products: {:?}", report.peers);
        assert_nothing_leased(tracker).await;
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_requester_gives_its_slots_back() {
    tokio::time::timeout(LIMIT, async {
        let (mut procs, tracker) = start_tracker().await;
        let good: &[&str] = &[];
        start_workers(&mut procs, tracker, &[good; 7]).await;
        let mut holder = tokio::process::Command::new(septet_bin())
            .args(["lease", "--tracker", &tracker.to_string(), "--hold", "600"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let mut lines = tokio::io::BufReader::new(holder.stdout.take().unwrap()).lines();
        let first = lines.next_line().await.unwrap().unwrap();
        assert!(first.starts_with("lease "), "{first}");
        assert!(rows(tracker).await.iter().all(|r| r.in_use == 1));
        holder.start_kill().unwrap();
        holder.wait().await.unwrap();
        assert_nothing_leased(tracker).await;
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_tracker_gets_its_workers_back_and_a_running_job_finishes() {
    tokio::time::timeout(LIMIT, async {
        let mut procs = Procs::default();
        let (mut first, tracker) = tracker_proc("127.0.0.1:0");
        let slow: &[&str] = &["--fault=delay=1.5"];
        start_workers(&mut procs, tracker, &[slow; 7]).await;
        let req = requester(tracker, Duration::from_secs(10));
        let job = tokio::spawn(async move { multiply_checked(&req, 50, 40, 30).await });
        wait_until_all_leased(tracker).await;
        first.kill().unwrap();
        first.wait().unwrap();
        let restarted = std::time::Instant::now();
        let (again, at) = tracker_proc(&tracker.to_string());
        assert_eq!(at, tracker);
        procs.0.push(again);
        // The job talks to its peers directly: it finishes, correct.
        let report = job.await.unwrap();
        assert_eq!(report.retries, 0);
        // Every worker registers again within a few seconds.
        wait_for_alive_slots(tracker, 7).await;
        assert!(restarted.elapsed() < Duration::from_secs(10), "took {:?}", restarted.elapsed());
    })
    .await
    .unwrap();
}
