//! The relay end to end on loopback: A and B leave the requester once and
//! C comes back once, with its byte counts at the bound; and peers that lie
//! while forwarding, computing or reducing, or vanish mid-job, are named and
//! the job still ends with the right C (the relay's missing quadrants are
//! computed through the direct plan). In-process tracker and workers on
//! real TCP; the liars need the `fault-injection` feature.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use ndarray::Array2;
use rand::{RngExt, SeedableRng};
use septet_client::{Plan, Requester, RequesterConfig};
use septet_common::strassen::naive_matmul;
use septet_tracker::TrackerConfig;

const LIMIT: Duration = Duration::from_secs(120);

fn ints(rows: usize, cols: usize, salt: usize) -> Array2<f64> {
    Array2::from_shape_fn((rows, cols), |(i, j)| ((i * 7 + j * 3 + salt * 11) % 9) as f64 - 4.0)
}

fn requester(tracker: &Server) -> Requester {
    // On loopback a job goes direct unless told to relay.
    Requester::new(RequesterConfig {
        tracker: tracker.addr.to_string(),
        max_hedges: 0,
        plan: Plan::Relay,
        ..Default::default()
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relayed_job_sends_a_and_b_once_and_receives_c_once() {
    tokio::time::timeout(LIMIT, async {
        let (tracker, state) = spawn_tracker(TrackerConfig::default()).await;
        let workers = spawn_workers(tracker.addr, 7, 1).await;
        wait_for_alive_slots(tracker.addr, 7).await;
        let seed = 0x7e1a7;
        println!("seed {seed}");
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let n = 768;
        let a: Array2<f64> = Array2::from_shape_simple_fn((n, n), || rng.random_range(-1.0..1.0));
        let b: Array2<f64> = Array2::from_shape_simple_fn((n, n), || rng.random_range(-1.0..1.0));
        let want = septet_common::matrix::matmul(a.view(), b.view(), faer::Par::Seq).unwrap();
        let (c, report) = requester(&tracker).multiply(Arc::new(a), Arc::new(b), |_| {}).await.unwrap();
        let worst = c.iter().zip(&want).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max);
        assert!(worst < 1e-9, "off by {worst}");
        assert_eq!(report.plan, "relay", "{:?}", report.failures);
        assert!(report.failures.is_empty(), "{:?}", report.failures);
        let words = (n * n * 8) as f64;
        assert!(
            report.bytes_sent as f64 <= 2.02 * words,
            "sent {} = {:.4}·n²w",
            report.bytes_sent,
            report.bytes_sent as f64 / words
        );
        assert!(report.bytes_sent as f64 >= 2.0 * words);
        assert!(
            report.bytes_received as f64 <= 1.02 * words,
            "received {} = {:.4}·n²w",
            report.bytes_received,
            report.bytes_received as f64 / words
        );
        let relay = report.relay.as_ref().expect("a relay report");
        assert_eq!(relay.quadrants_verified, ["C11", "C12", "C21", "C22"]);
        // Every slot reported; the forwards and reductions show in its bytes.
        let forwarded: u64 = relay.slots.iter().map(|s| s.bytes_out - s.to_requester).sum();
        assert!(forwarded as f64 >= 3.9 * words, "16 quadrant copies and 8 products between peers: {forwarded}");
        for s in &relay.slots {
            assert!(s.done_s.is_some() && s.compute_s > 0.0, "{s:?}");
            assert!(s.bytes_in > 0 && s.bytes_out > 0, "{s:?}");
        }
        assert_eq!(relay.slots.iter().map(|s| s.holds.len()).sum::<usize>(), 8);
        assert_eq!(relay.slots.iter().map(|s| s.reduces.len()).sum::<usize>(), 4);
        assert_eq!(state.stats().unwrap().leases, 0);
        teardown(tracker, workers).await;
    })
    .await
    .expect("the job hung");
}

/// A peer on probation (a slow strike, as a hedge that beat it gives) that
/// does its part of a relayed job that verifies has the strike taken off,
/// as a product it delivers in the direct plan does: a grid that only
/// relays no longer keeps a peer on probation for good.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relayed_job_that_verifies_takes_a_slow_strike_off_its_peers() {
    tokio::time::timeout(LIMIT, async {
        let (tracker, state, workers) = grid_of(7).await;
        // A strike, as a hedge that beat the peer gives.
        let mut holder = client(tracker.addr).await;
        let held = holder.lease(7, false, None, |_, _, _| {}).await.unwrap();
        let struck = held.peers[3].peer_id;
        holder.record_speed(held.lease_id, vec![struck], Vec::new()).await.unwrap();
        holder.release(held.lease_id).await.unwrap();
        let slow = || state.peers().unwrap().1.iter().map(|r| r.slow).collect::<Vec<_>>();
        assert_eq!(slow().iter().sum::<u32>(), 1, "{:?}", slow());
        let n = 256;
        let (_, report) =
            requester(&tracker).multiply(Arc::new(ints(n, n, 1)), Arc::new(ints(n, n, 2)), |_| {}).await.unwrap();
        assert_eq!(report.plan, "relay", "{:?}", report.failures);
        assert_eq!(slow(), vec![0; 7], "the strike is still on");
        teardown(tracker, workers).await;
    })
    .await
    .expect("the job hung");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn odd_shapes_and_f32_relay_exactly() {
    tokio::time::timeout(LIMIT, async {
        let (tracker, _) = spawn_tracker(TrackerConfig::default()).await;
        let workers = spawn_workers(tracker.addr, 7, 1).await;
        wait_for_alive_slots(tracker.addr, 7).await;
        let req = requester(&tracker);
        for (m, k, n) in [(1, 1, 1), (3, 5, 7), (129, 257, 65), (64, 1, 64), (200, 33, 1)] {
            let (a, b) = (ints(m, k, 1), ints(k, n, 2));
            let (c, report) = req.multiply(Arc::new(a.clone()), Arc::new(b.clone()), |_| {}).await.unwrap();
            assert_eq!(c, naive_matmul(a.view(), b.view()), "{m}x{k}x{n}");
            assert_eq!(report.plan, "relay", "{m}x{k}x{n}: {:?}", report.failures);
            let (a, b) = (a.mapv(|x| x as f32), b.mapv(|x| x as f32));
            let (c, report) = req.multiply(Arc::new(a.clone()), Arc::new(b.clone()), |_| {}).await.unwrap();
            assert_eq!(c, naive_matmul(a.view(), b.view()), "f32 {m}x{k}x{n}");
            assert_eq!(report.plan, "relay");
        }
        teardown(tracker, workers).await;
    })
    .await
    .expect("the job hung");
}

/// Seven workers, `liars` of them misbehaving as `fault` says; a job of
/// integer matrices (exact) must come out right. Returns its report.
#[cfg(feature = "fault-injection")]
async fn job_with_liars(
    fault: septet_worker::Fault,
    liars: usize,
) -> (septet_client::JobReport, Vec<septet_common::PeerId>) {
    let (tracker, state) = spawn_tracker(TrackerConfig::default()).await;
    let mut workers = Vec::new();
    for i in 0..7 {
        let config = septet_worker::WorkerConfig {
            tracker: Some(tracker.addr.to_string()),
            threads: 1,
            fault: (i < liars).then_some(fault),
            ..Default::default()
        };
        workers.push(spawn_worker_with(config).await);
        wait_for_alive_slots(tracker.addr, i as u32 + 1).await;
    }
    let (_, rows) = client(tracker.addr).await.peers().await.unwrap();
    let liar_ids: Vec<_> = rows.iter().take(liars).map(|r| r.peer_id).collect();
    let (a, b) = (ints(300, 260, 3), ints(260, 280, 5));
    let (c, report) = requester(&tracker).multiply(Arc::new(a.clone()), Arc::new(b.clone()), |_| {}).await.unwrap();
    assert_eq!(c, naive_matmul(a.view(), b.view()));
    assert_eq!(state.stats().unwrap().leases, 0, "nothing left leased");
    teardown(tracker, workers).await;
    (report, liar_ids)
}

#[cfg(feature = "fault-injection")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forwarder_that_alters_a_block_is_caught_by_its_digest_and_named() {
    tokio::time::timeout(LIMIT, async {
        let (report, liars) = job_with_liars(septet_worker::Fault::CorruptForward, 1).await;
        assert_eq!(report.plan, "relay+direct");
        let named = format!("peer {}", liars[0]);
        let digest = report.failures.iter().find(|f| f.starts_with("slot ") && f.contains("digest"));
        let digest = digest.unwrap_or_else(|| panic!("no digest failure: {:?}", report.failures));
        assert!(digest.contains(&named), "{digest} should name {named}: {:?}", report.failures);
    })
    .await
    .expect("the job hung");
}

#[cfg(feature = "fault-injection")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reducers_that_lie_are_named_and_their_quadrants_redone() {
    tokio::time::timeout(LIMIT, async {
        // Every worker lies when it reduces (and computes honestly): each
        // of the four C quadrants fails its check and is blamed on its
        // reducer, then computed through the direct plan.
        let (report, _) = job_with_liars(septet_worker::Fault::CorruptReduce, 7).await;
        assert_eq!(report.plan, "relay+direct");
        let relay = report.relay.as_ref().unwrap();
        assert!(relay.quadrants_verified.is_empty(), "{relay:?}");
        let checks: Vec<&String> =
            report.failures.iter().filter(|f| f.starts_with("slot ") && f.contains("failed its check")).collect();
        assert_eq!(checks.len(), 4, "{:?}", report.failures);
        for (slot, s) in relay.slots.iter().enumerate() {
            let blamed = checks.iter().any(|f| f.starts_with(&format!("slot {slot} ")));
            assert_eq!(blamed, !s.reduces.is_empty(), "slot {slot} reduces {:?}: {:?}", s.reduces, report.failures);
        }
    })
    .await
    .expect("the job hung");
}

/// A slot that computes wrong (`--fault=corrupt`): a reducer it sends its
/// product to checks each panel against the requester's X·(Y·s) for its
/// own secret s before folding it in, catches it and names it; the relay
/// ends (loopback: no spare is lent), and its product is computed again
/// elsewhere. C is right.
#[cfg(feature = "fault-injection")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slot_that_computes_wrong_is_caught_by_a_reducers_check_and_named() {
    tokio::time::timeout(LIMIT, async {
        let (report, liars) = job_with_liars(septet_worker::Fault::Corrupt, 1).await;
        assert_eq!(report.plan, "relay+direct");
        let named = format!("peer {}", liars[0]);
        let blamed: Vec<&String> =
            report.failures.iter().filter(|f| f.starts_with("slot ") && f.contains("failed its check")).collect();
        assert!(!blamed.is_empty() && blamed.iter().all(|f| f.contains(&named)), "{named}: {:?}", report.failures);
        // A reducer caught it by a panel of its product, before folding
        // that in (on loopback, with no spare, the relay then ends).
        let relay = report.relay.as_ref().unwrap();
        let ended = relay.failure.as_deref().unwrap_or_default();
        assert!(ended.contains("caught slot") && ended.contains("failed its check"), "{relay:?}");
        // Its product was computed by someone else.
        assert!(report.retries >= 1);
    })
    .await
    .expect("the job hung");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slot_that_vanishes_mid_job_is_named_and_the_job_finishes() {
    tokio::time::timeout(LIMIT, async {
        let (tracker, state) = spawn_tracker(TrackerConfig::default()).await;
        let mut workers = spawn_workers(tracker.addr, 8, 1).await;
        wait_for_alive_slots(tracker.addr, 8).await;
        let n = 1024;
        let (a, b) = (ints(n, n, 1), ints(n, n, 2));
        let want = septet_common::matrix::matmul(a.view(), b.view(), faer::Par::Seq).unwrap();
        let req = requester(&tracker);
        let job = tokio::spawn(async move { req.multiply(Arc::new(a), Arc::new(b), |_| {}).await });
        // Stop a worker as soon as the job has leased: whichever it is, it
        // is then one of the seven (or the spare, and nothing happens).
        while state.stats().unwrap().leases == 0 {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let victim = workers.remove(0);
        victim.stop.cancel();
        let (c, report) = job.await.unwrap().unwrap();
        assert_eq!(c, want);
        if report.plan != "relay" {
            assert_eq!(report.plan, "relay+direct");
            assert!(!report.failures.is_empty());
        }
        let _ = victim.task.await;
        assert_eq!(state.stats().unwrap().leases, 0);
        teardown(tracker, workers).await;
    })
    .await
    .expect("the job hung");
}

/// A slot that computes far slower than the rest but keeps talking: the
/// quadrants it holds up are due at twice the time the first two quadrants
/// took plus a second (or twice the send time plus the silence timeout),
/// so the relay gives up on them well before its own deadline, and they
/// are computed the direct way.
#[cfg(feature = "fault-injection")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slot_that_computes_slowly_holds_the_relay_up_only_briefly() {
    tokio::time::timeout(LIMIT, async {
        let started = std::time::Instant::now();
        let (report, _) = job_with_liars(septet_worker::Fault::Delay(Duration::from_secs(3)), 1).await;
        assert_eq!(report.plan, "relay+direct", "{:?}", report.failures);
        let relay = report.relay.as_ref().unwrap();
        let failure = relay.failure.as_deref().unwrap_or_default();
        assert!(failure.contains("not back") && failure.contains(" s after the"), "{failure}");
        assert!(!relay.quadrants_verified.is_empty(), "the quadrants it does not feed are kept: {relay:?}");
        println!("took {:?}: {:?}", started.elapsed(), report.failures);
    })
    .await
    .expect("the job hung");
}

/// With the cluster secret and `--encrypt`, the peers' links to each other
/// are authenticated and encrypted like every other, and a relayed job
/// works (tests/security.rs shows a missing or wrong secret refused).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_encrypted_grid_relays() {
    tokio::time::timeout(LIMIT, async {
        let security = septet_common::secure::Security::with_secret(septet_common::secure::Secret::generate(), true);
        let (tracker, state) =
            spawn_tracker(TrackerConfig { security: security.clone(), ..TrackerConfig::default() }).await;
        let mut workers = Vec::new();
        for _ in 0..7 {
            let config = septet_worker::WorkerConfig {
                tracker: Some(tracker.addr.to_string()),
                threads: 1,
                security: security.clone(),
                ..Default::default()
            };
            workers.push(spawn_worker_with(config).await);
        }
        let req = Requester::new(RequesterConfig {
            tracker: tracker.addr.to_string(),
            plan: Plan::Relay,
            security: security.clone(),
            ..Default::default()
        });
        // The tracker answers only with the secret: wait for the workers with it.
        let mut alive = 0;
        for _ in 0..200 {
            let mut client = septet_client::TrackerClient::connect_with(
                tracker.addr,
                septet_common::Role::Client,
                Duration::from_secs(5),
                &security,
            )
            .await
            .unwrap();
            alive = client.peers().await.unwrap().1.iter().filter(|p| p.state == "alive").count();
            if alive == 7 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(alive, 7);
        let (a, b) = (ints(130, 70, 1), ints(70, 90, 2));
        let (c, report) = req.multiply(Arc::new(a.clone()), Arc::new(b.clone()), |_| {}).await.unwrap();
        assert_eq!(c, naive_matmul(a.view(), b.view()));
        assert_eq!(report.plan, "relay", "{:?}", report.failures);
        assert_eq!(state.stats().unwrap().leases, 0);
        teardown(tracker, workers).await;
    })
    .await
    .expect("the job hung");
}

/// Workers with two slots each: a lease of seven on four of them puts
/// two slots of the job on one worker (at least three times), which the
/// worker keeps apart by slot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_slots_of_one_job_on_one_worker_relay() {
    tokio::time::timeout(LIMIT, async {
        let (tracker, state) = spawn_tracker(TrackerConfig::default()).await;
        let workers = spawn_workers(tracker.addr, 4, 2).await;
        wait_for_alive_slots(tracker.addr, 8).await;
        let (a, b) = (ints(200, 150, 3), ints(150, 170, 4));
        let (c, report) = requester(&tracker).multiply(Arc::new(a.clone()), Arc::new(b.clone()), |_| {}).await.unwrap();
        assert_eq!(c, naive_matmul(a.view(), b.view()));
        assert_eq!(report.plan, "relay", "{:?}", report.failures);
        let relay = report.relay.as_ref().unwrap();
        let mut addrs: Vec<&str> = relay.slots.iter().map(|s| s.peer.addr.as_str()).collect();
        addrs.sort_unstable();
        addrs.dedup();
        assert!(addrs.len() <= 4, "{addrs:?}");
        assert_eq!(state.stats().unwrap().leases, 0);
        teardown(tracker, workers).await;
    })
    .await
    .expect("the job hung");
}

/// A requester that falls silent mid-relay — its host hangs, or its link
/// is cut without a reset — does not keep its slots' compute slots until
/// the kernel gives the connections up (some fifteen minutes): every slot
/// ends its share once the requester has said nothing for its patience
/// (twice the requester's silence timeout, and at least the worker's I/O
/// timeout: 2 s here). The requester is a real `septet multiply` process,
/// stopped with SIGSTOP as soon as its plans are out: its kernel still
/// acknowledges every byte, so only the missing keep-alives can tell.
#[cfg(feature = "fault-injection")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slots_end_a_relayed_job_whose_requester_falls_silent() {
    use std::io::BufRead;
    tokio::time::timeout(LIMIT, async {
        let (tracker, _state) = spawn_tracker(TrackerConfig::default()).await;
        let metrics: Vec<septet_worker::WorkerMetrics> = (0..7).map(|_| Default::default()).collect();
        let mut workers = Vec::new();
        for (i, m) in metrics.iter().enumerate() {
            let config = septet_worker::WorkerConfig {
                tracker: Some(tracker.addr.to_string()),
                threads: 1,
                io_timeout: Duration::from_secs(2),
                metrics: m.clone(),
                // One slot slow to compute: the job is still running when
                // its requester stops, however loaded the machine.
                fault: (i == 0).then_some(septet_worker::Fault::Delay(Duration::from_millis(500))),
                ..Default::default()
            };
            workers.push(spawn_worker_with(config).await);
        }
        wait_for_alive_slots(tracker.addr, 7).await;
        let (child, stderr) = with_stderr(
            std::process::Command::new(septet_bin())
                .args(["multiply", "--tracker", &tracker.addr.to_string(), "--random", "512,512,512"])
                .args(["--plan", "relay", "--silence-timeout", "1", "--max-hedges", "0"])
                .env("RUST_LOG", "septet_client=info"),
        );
        let procs = Procs(vec![child]);
        let pid = procs.0[0].id() as libc::pid_t;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr).lines().map_while(Result::ok) {
                if line.contains("relay: plans out") {
                    let _ = tx.send(());
                }
            }
        });
        tokio::task::spawn_blocking(move || rx.recv_timeout(Duration::from_secs(60)))
            .await
            .unwrap()
            .expect("the requester never sent its plans");
        // SAFETY: signalling our own child, which `procs` has not reaped.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGSTOP) }, 0);
        // Each slot's share ends, as a failure (its product never went
        // anywhere), within seconds: patience 2 s, then the node's close.
        let failed = |m: &septet_worker::WorkerMetrics| {
            let (text, _) = septet_observe::encode_metrics(m.registry(), false).unwrap();
            text.lines().any(|l| l == "septet_worker_products_total{dtype=\"f64\",outcome=\"error\"} 1")
        };
        let since = std::time::Instant::now();
        while !metrics.iter().all(failed) {
            assert!(
                since.elapsed() < Duration::from_secs(30),
                "slots still holding the job of a silent requester: {} of 7 ended",
                metrics.iter().filter(|m| failed(m)).count()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        drop(procs);
        teardown(tracker, workers).await;
    })
    .await
    .expect("the test hung");
}
