//! The HTTP endpoints (`--http`) tell the truth: a tracker and seven
//! workers on real TCP, leases taken, queued, released, expired, dropped,
//! reported against and hedged, a job multiplied — and every number on
//! `/metrics` and `/api/status` checked against what was done. Then the
//! same through the CLI on real processes, including the loopback rule and
//! shutdown. Scrapes are plain HTTP/1.1 over a `TcpStream`, as Prometheus
//! and a browser make them; no page or JSON ever holds a lease token.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use ndarray::Array2;
use septet_client::{Plan, Requester, RequesterConfig};
use septet_observe::HttpConfig;
use septet_tracker::TrackerConfig;
use septet_worker::{WorkerConfig, WorkerMetrics};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

const LIMIT: Duration = Duration::from_secs(120);

/// `GET path` on `addr` as `Host: host`: (status, head, body).
async fn get_as(addr: SocketAddr, host: &str, path: &str) -> (u16, String, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nAccept: */*\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut raw)).await.unwrap().unwrap();
    let raw = String::from_utf8(raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    (status, head.to_string(), body.to_string())
}

async fn get(addr: SocketAddr, path: &str) -> (u16, String, String) {
    get_as(addr, &addr.to_string(), path).await
}

/// The value of one series (its full name with labels) in a scrape.
fn value(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|rest| rest.strip_prefix(' ')))
        .unwrap_or_else(|| panic!("{series} is not in\n{text}"))
        .parse()
        .unwrap()
}

/// Scrapes `/metrics` until `ok` holds (the tracker's levels are read at
/// most every 200 ms, and some events land a moment after the reply that
/// caused them), or panics with the last scrape.
async fn scrape_until(addr: SocketAddr, what: &str, ok: impl Fn(&str) -> bool) -> String {
    let mut last = String::new();
    for _ in 0..100 {
        let (status, _, body) = get(addr, "/metrics").await;
        assert_eq!(status, 200);
        if ok(&body) {
            return body;
        }
        last = body;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("never saw {what}:\n{last}");
}

async fn status_until(
    addr: SocketAddr,
    what: &str,
    ok: impl Fn(&serde_json::Value) -> bool,
) -> (String, serde_json::Value) {
    for _ in 0..100 {
        let (status, head, body) = get(addr, "/api/status").await;
        assert_eq!(status, 200);
        assert!(head.to_ascii_lowercase().contains("content-type: application/json"), "{head}");
        let json: serde_json::Value = serde_json::from_str(&body).unwrap();
        if ok(&json) {
            return (body, json);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the status never showed {what}");
}

/// The tracker's HTTP endpoint on 127.0.0.1:0, stopped by `stop`.
async fn tracker_http(tracker: septet_tracker::Tracker, stop: &CancellationToken) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let config = HttpConfig { name: "tracker", ..HttpConfig::default() };
    tokio::spawn(septet_tracker::http::run(listener, tracker, config, stop.clone().cancelled_owned()));
    addr
}

/// A worker registered with `tracker` and its `/metrics` endpoint.
async fn observed_worker(tracker: SocketAddr, stop: &CancellationToken) -> (Server, SocketAddr) {
    let metrics = WorkerMetrics::default();
    let config = WorkerConfig {
        tracker: Some(tracker.to_string()),
        threads: 1,
        metrics: metrics.clone(),
        ..WorkerConfig::default()
    };
    let worker = spawn_worker_with(config).await;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let http = HttpConfig { name: "worker", ..HttpConfig::default() };
    tokio::spawn(septet_worker::metrics::run_http(listener, metrics, http, stop.clone().cancelled_owned()));
    (worker, addr)
}

/// Bytes of a blocks frame: length, kind, fixed header, 8 per shape, payload.
fn frame_bytes(shapes: &[(usize, usize)]) -> f64 {
    (4 + 1 + 12 + 8 * shapes.len() + shapes.iter().map(|(r, c)| r * c * 8).sum::<usize>()) as f64
}

#[tokio::test]
async fn tracker_and_worker_metrics_and_the_status_json_match_what_happened() {
    tokio::time::timeout(LIMIT, async {
        // A short TTL, so one detached lease expires within the test.
        let config = TrackerConfig { lease_ttl: Duration::from_secs(3), ..TrackerConfig::default() };
        let (tracker, state) = spawn_tracker(config).await;
        let stop = CancellationToken::new();
        let http = tracker_http(state.clone(), &stop).await;
        let mut workers = Vec::new();
        let mut worker_http = Vec::new();
        for _ in 0..7 {
            let (w, a) = observed_worker(tracker.addr, &stop).await;
            workers.push(w);
            worker_http.push(a);
        }
        wait_for_alive_slots(tracker.addr, 7).await;
        let t =
            scrape_until(http, "seven alive peers", |t| value(t, "septet_tracker_peers{state=\"alive\"}") == 7.0).await;
        assert_eq!(value(&t, "septet_tracker_slots"), 7.0);
        assert_eq!(value(&t, "septet_tracker_slots_free"), 7.0);
        assert_eq!(value(&t, "septet_tracker_requests_total{kind=\"register\"}"), 7.0);
        for w in &worker_http {
            let (_, _, body) = get(*w, "/metrics").await;
            assert_eq!(value(&body, "septet_worker_registered"), 1.0);
            assert_eq!(value(&body, "septet_worker_registrations_total"), 1.0);
            assert_eq!(value(&body, "septet_worker_slots"), 1.0);
        }

        // One lease in force, one waiting behind it.
        let mut first = client(tracker.addr).await;
        let held = first.lease(7, false, None, |_, _, _| {}).await.unwrap();
        let (queued_tx, mut queued) = tokio::sync::mpsc::unbounded_channel();
        let second = tokio::spawn(async move {
            let mut c = client(tracker.addr).await;
            let local = c.peer();
            let grant = c.lease(7, false, None, move |position, _, _| {
                let _ = queued_tx.send(position);
            });
            (grant.await.unwrap(), c, local)
        });
        assert_eq!(queued.recv().await, Some(1));
        let t =
            scrape_until(http, "one lease and one waiter", |t| value(t, "septet_tracker_lease_queue_length") == 1.0)
                .await;
        assert_eq!(value(&t, "septet_tracker_leases_active"), 1.0);
        assert_eq!(value(&t, "septet_tracker_lease_queue_slots"), 7.0);
        assert_eq!(value(&t, "septet_tracker_slots_in_use"), 7.0);
        assert_eq!(value(&t, "septet_tracker_slots_free"), 0.0);
        assert_eq!(value(&t, "septet_tracker_leases_granted_total"), 1.0);
        assert_eq!(value(&t, "septet_tracker_lease_wait_seconds_count"), 1.0);
        let (body, s) = status_until(http, "the waiter", |s| s["queue"].as_array().is_some_and(|q| q.len() == 1)).await;
        assert_eq!((s["queue"][0]["position"].as_u64(), s["queue"][0]["count"].as_u64()), (Some(1), Some(7)));
        assert!(s["queue"][0]["waited_s"].as_f64().unwrap() >= 0.0);
        let lease = &s["leases"][0];
        assert_eq!(lease["lease_id"].as_u64(), Some(held.lease_id.0));
        assert_eq!(lease["slots"].as_u64(), Some(7));
        assert_eq!(lease["detached"].as_bool(), Some(false));
        // The holder is the address the tracker saw the lease taken from.
        let holder: SocketAddr = lease["holder"].as_str().unwrap().parse().unwrap();
        assert!(holder.ip().is_loopback() && holder.port() != tracker.addr.port());
        let ttl_left = lease["ttl_left_s"].as_f64().unwrap();
        assert!(ttl_left > 0.0 && ttl_left <= 3.0, "{ttl_left}");
        assert_eq!(s["levels"]["peers"]["alive"].as_u64(), Some(7));
        assert_eq!(s["peers_total"].as_u64(), Some(7));
        let peer = &s["peers"][0];
        for field in ["peer_id", "addr", "slots", "in_use", "state", "leases", "failures", "slow", "last_seen_ago_s"] {
            assert!(!peer[field].is_null(), "{field} missing: {peer}");
        }
        assert!(!body.contains(&held.token), "the status shows a lease token");

        // The waiter's lease comes when the first is released; its wait is measured.
        tokio::time::sleep(Duration::from_millis(100)).await;
        first.release(held.lease_id).await.unwrap();
        let (granted, mut second_client, _) = second.await.unwrap();
        let t =
            scrape_until(http, "the second grant", |t| value(t, "septet_tracker_leases_granted_total") == 2.0).await;
        assert_eq!(value(&t, "septet_tracker_leases_released_total"), 1.0);
        assert_eq!(value(&t, "septet_tracker_lease_wait_seconds_count"), 2.0);
        assert!(value(&t, "septet_tracker_lease_wait_seconds_sum") >= 0.1, "the waiter waited ≥ 100 ms");
        assert_eq!(value(&t, "septet_tracker_lease_wait_seconds_bucket{le=\"0.001\"}"), 1.0, "one granted at once");

        // A failure report with a replacement asked for (none free), a hedge
        // (none free), and a release of a lease that is not ours.
        let bad = granted.peers[2].peer_id;
        assert!(second_client.report_failure(granted.lease_id, bad, "test", true).await.unwrap().is_none());
        assert!(second_client.hedge(granted.lease_id, granted.peers[3].peer_id).await.unwrap().is_none());
        assert!(first.release(granted.lease_id).await.is_err());
        second_client.release(granted.lease_id).await.unwrap();
        let t = scrape_until(http, "the failure's suspect peer", |t| {
            value(t, "septet_tracker_peers{state=\"suspect\"}") == 1.0
        })
        .await;
        assert_eq!(value(&t, "septet_tracker_failures_reported_total"), 1.0);
        assert_eq!(value(&t, "septet_tracker_hedges_total{outcome=\"none_free\"}"), 1.0);
        assert_eq!(value(&t, "septet_tracker_hedges_total{outcome=\"lent\"}"), 0.0);
        assert_eq!(value(&t, "septet_tracker_request_errors_total{kind=\"release\"}"), 1.0);
        assert_eq!(value(&t, "septet_tracker_requests_total{kind=\"release\"}"), 3.0);
        assert_eq!(value(&t, "septet_tracker_requests_total{kind=\"report_failure\"}"), 1.0);
        assert_eq!(value(&t, "septet_tracker_requests_total{kind=\"hedge\"}"), 1.0);
        assert_eq!(value(&t, "septet_tracker_leases_released_total"), 2.0);
        // The suspect peer heartbeats back to alive within a heartbeat (2 s).
        scrape_until(http, "seven alive again", |t| value(t, "septet_tracker_peers{state=\"alive\"}") == 7.0).await;

        // A detached lease expires; a lease whose connection closes is dropped.
        let detached = first.lease(1, true, None, |_, _, _| {}).await.unwrap();
        let mut doomed = client(tracker.addr).await;
        doomed.lease(2, false, None, |_, _, _| {}).await.unwrap();
        let (body, s) = status_until(http, "two leases", |s| s["leases_total"].as_u64() == Some(2)).await;
        assert!(!body.contains(&detached.token), "the status shows a lease token");
        assert!(s["leases"].as_array().unwrap().iter().any(|l| l["detached"] == true));
        drop(doomed);
        drop(first);
        let t = scrape_until(http, "the dropped and the expired lease", |t| {
            value(t, "septet_tracker_leases_expired_total") == 1.0
                && value(t, "septet_tracker_leases_dropped_total") == 1.0
        })
        .await;
        assert_eq!(value(&t, "septet_tracker_leases_active"), 0.0);
        assert_eq!(value(&t, "septet_tracker_slots_in_use"), 0.0);
        assert_eq!(value(&t, "septet_tracker_leases_granted_total"), 4.0);

        // Bytes that are no septet hello: a rejected handshake.
        let mut junk = tokio::net::TcpStream::connect(tracker.addr).await.unwrap();
        junk.write_all(&[0x5A; 128]).await.unwrap();
        let _ = tokio::time::timeout(Duration::from_secs(5), junk.read_to_end(&mut Vec::new())).await;
        scrape_until(http, "the rejected handshake", |t| {
            value(t, "septet_tracker_handshakes_rejected_total{reason=\"not_septet\"}") == 1.0
        })
        .await;

        // A job: one lease of seven, one product on each worker.
        // Relayed (on loopback a job goes direct unless told otherwise).
        let requester = Requester::new(RequesterConfig {
            tracker: tracker.addr.to_string(),
            plan: Plan::Relay,
            ..Default::default()
        });
        let a = Array2::from_shape_fn((64, 64), |(i, j)| ((i * 3 + j) % 7) as f64 - 3.0);
        let (_, report) = requester.multiply(Arc::new(a.clone()), Arc::new(a), |_| {}).await.unwrap();
        let t = scrape_until(http, "the job's lease released", |t| {
            value(t, "septet_tracker_leases_granted_total") == 5.0 && value(t, "septet_tracker_leases_active") == 0.0
        })
        .await;
        assert_eq!(value(&t, "septet_tracker_leases_released_total"), 3.0);
        let (mut products, mut received, mut sent) = (0.0, 0.0, 0.0);
        for w in &worker_http {
            let (_, _, m) = get(*w, "/metrics").await;
            let done = value(&m, "septet_worker_products_total{dtype=\"f64\",outcome=\"ok\"}");
            if report.hedges.is_empty() && report.retries == 0 {
                assert_eq!(done, 1.0, "one product on each of the seven:\n{m}");
            }
            assert_eq!(value(&m, "septet_worker_products_total{dtype=\"f64\",outcome=\"error\"}"), 0.0);
            assert_eq!(value(&m, "septet_worker_compute_seconds_count"), done);
            assert_eq!(value(&m, "septet_worker_tasks_in_progress"), 0.0);
            products += done;
            received += value(&m, "septet_worker_received_bytes_total");
            sent += value(&m, "septet_worker_sent_bytes_total");
        }
        assert_eq!(products, 7.0 + report.hedges.len() as f64 + f64::from(report.retries));
        // Relayed: every part each worker read and wrote, as the slots reported them.
        let relay = report.relay.as_ref().expect("a relayed job");
        assert_eq!(report.plan, "relay", "{:?}", report.failures);
        assert_eq!(received, relay.slots.iter().map(|s| s.bytes_in as f64).sum::<f64>());
        assert_eq!(sent, relay.slots.iter().map(|s| s.bytes_out as f64).sum::<f64>());
        // The direct plan: n = 64, every product a 32×32 block of two 32×32 operands.
        let direct = Requester::new(RequesterConfig { plan: Plan::Direct, ..requester.config().clone() });
        let a = Array2::from_shape_fn((64, 64), |(i, j)| ((i * 5 + j) % 7) as f64 - 3.0);
        let (_, report) = direct.multiply(Arc::new(a.clone()), Arc::new(a), |_| {}).await.unwrap();
        let (mut direct_received, mut direct_sent) = (0.0, 0.0);
        for w in &worker_http {
            let (_, _, m) = get(*w, "/metrics").await;
            direct_received += value(&m, "septet_worker_received_bytes_total");
            direct_sent += value(&m, "septet_worker_sent_bytes_total");
        }
        let products = 7.0 + report.hedges.len() as f64 + f64::from(report.retries);
        assert_eq!(direct_received - received, products * frame_bytes(&[(32, 32), (32, 32)]));
        assert_eq!(direct_sent - sent, products * frame_bytes(&[(32, 32)]));
        // The throughput history has begun (one sample a second).
        let (_, s) = status_until(http, "throughput", |s| {
            s["throughput"]["leases_granted"].as_array().is_some_and(|a| !a.is_empty())
        })
        .await;
        assert_eq!(s["totals"]["leases_granted"].as_u64(), Some(6), "five, and the direct plan's job");

        // Stopping the endpoint closes its port.
        stop.cancel();
        for _ in 0..100 {
            if tokio::net::TcpStream::connect(http).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(tokio::net::TcpStream::connect(http).await.is_err(), "the endpoint still listens");
        teardown(tracker, workers).await;
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn the_page_is_self_contained_and_refuses_foreign_hosts() {
    tokio::time::timeout(LIMIT, async {
        let (tracker, state) = spawn_tracker(TrackerConfig::default()).await;
        let stop = CancellationToken::new();
        let http = tracker_http(state, &stop).await;
        let (status, head, page) = get(http, "/").await;
        assert_eq!(status, 200);
        let head = head.to_ascii_lowercase();
        assert!(head.contains("content-type: text/html"), "{head}");
        assert!(head.contains("content-security-policy: default-src 'none'; script-src 'self'"), "{head}");
        assert!(head.contains("cache-control: no-store") && head.contains("x-frame-options: deny"), "{head}");
        assert!(page.contains("<script src=\"/status.js\"") && page.contains("/status.css"));
        for (path, kind) in [("/status.js", "text/javascript"), ("/status.css", "text/css")] {
            let (status, head, _) = get(http, path).await;
            assert_eq!(status, 200);
            assert!(head.to_ascii_lowercase().contains(&format!("content-type: {kind}")), "{head}");
        }
        assert_eq!(get(http, "/nothing/here").await.0, 404);
        // A page elsewhere that rebinds its own name to 127.0.0.1 cannot read it.
        let (status, _, body) = get_as(http, "tracker.attacker.example", "/api/status").await;
        assert_eq!(status, 421);
        assert!(!body.contains("peers"));
        assert_eq!(get_as(http, "localhost", "/api/status").await.0, 200);
        // Writes are not a thing here.
        let mut s = tokio::net::TcpStream::connect(http).await.unwrap();
        s.write_all(
            format!("POST /api/status HTTP/1.1\r\nHost: {http}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
        .await
        .unwrap();
        let mut raw = String::new();
        s.read_to_string(&mut raw).await.unwrap();
        assert!(raw.starts_with("HTTP/1.1 405"), "{raw}");
        stop.cancel();
        tracker.shutdown().await;
    })
    .await
    .unwrap();
}

/// Reads `child`'s stderr until a line containing `marker`, returns the
/// word after it, and drains the rest on a thread.
fn announced(child: &mut std::process::Child, marker: &str) -> String {
    use std::io::BufRead;
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let marker = marker.to_string();
    std::thread::spawn(move || {
        let mut tx = Some(tx);
        for line in std::io::BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if let Some(rest) = line.split(marker.as_str()).nth(1) {
                if let Some(tx) = tx.take() {
                    let word = rest.split([' ', ',']).next().unwrap_or_default().to_string();
                    let _ = tx.send(word);
                }
            }
        }
    });
    rx.recv_timeout(Duration::from_secs(30)).expect("the process never announced its address")
}

fn septet_cmd(args: &[&str]) -> std::process::Command {
    let mut c = std::process::Command::new(septet_bin());
    c.args(args).stdin(std::process::Stdio::null());
    c
}

fn host_of(url: &str) -> SocketAddr {
    url.trim_start_matches("http://").trim_end_matches('/').trim_end_matches("/metrics").parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_serves_metrics_and_the_status_page_with_http_and_refuses_public_addresses() {
    tokio::time::timeout(LIMIT, async {
        // Without --http-public, a non-loopback HTTP address: exit 2, one line.
        for role in [&["tracker", "--listen", "127.0.0.1:0"][..], &["worker", "--tracker", "127.0.0.1:9"][..]] {
            let out = septet_cmd(role).args(["--http", "0.0.0.0:0"]).output().unwrap();
            let err = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(2), "{err}");
            assert!(
                err.starts_with("error: refusing to serve HTTP on 0.0.0.0:0") && err.contains("--http-public"),
                "{err}"
            );
            assert_eq!(err.trim_end().lines().count(), 1, "{err}");
        }
        let out = septet_cmd(&["tracker", "--listen", "127.0.0.1:0", "--http-public"]).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "--http-public alone is a usage error");

        let scratch = Scratch::new("metrics-tracker");
        let log = scratch.path("tracker.log");
        let (tracker, addr) = tracker_process_logged("127.0.0.1:0", &["--http", "127.0.0.1:0"], Some(&log));
        let mut procs = Procs(vec![tracker]);
        let mut http = None;
        for _ in 0..200 {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            if let Some(url) = text.lines().find_map(|l| l.split("status page at ").nth(1)) {
                http = Some(host_of(url.trim()));
                break;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        let http = http.expect("the tracker never said where its status page is");
        let tracker_addr = addr.to_string();
        let mut worker_http = Vec::new();
        for _ in 0..7 {
            let mut w = septet_cmd(&["worker", "--tracker", &tracker_addr, "--threads", "1", "--http", "127.0.0.1:0"])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap();
            worker_http.push(host_of(&announced(&mut w, "metrics at ")));
            procs.0.push(w);
        }
        scrape_until(http, "seven alive peers", |t| value(t, "septet_tracker_peers{state=\"alive\"}") == 7.0).await;

        // A job, and a detached lease whose token is printed to its taker only.
        let out =
            septet_cmd(&["multiply", "--tracker", &tracker_addr, "--random", "64,64,64", "--json"]).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let job: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let out =
            septet_cmd(&["lease", "--tracker", &tracker_addr, "--count", "3", "--detach", "--json"]).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let lease: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let token = lease["token"].as_str().unwrap().to_string();
        assert_eq!(token.len(), 64);

        let t =
            scrape_until(http, "two leases granted", |t| value(t, "septet_tracker_leases_granted_total") == 2.0).await;
        assert_eq!(value(&t, "septet_tracker_leases_released_total"), 1.0);
        assert_eq!(value(&t, "septet_tracker_leases_active"), 1.0);
        assert_eq!(value(&t, "septet_tracker_slots_in_use"), 3.0);
        assert_eq!(value(&t, "septet_tracker_slots"), 7.0);
        let (body, s) = status_until(http, "the detached lease", |s| s["leases_total"].as_u64() == Some(1)).await;
        let held = &s["leases"][0];
        assert_eq!((held["slots"].as_u64(), held["detached"].as_bool()), (Some(3), Some(true)));
        assert!(held["holder"].is_null(), "its taker has exited: {held}");
        assert_eq!(s["peers"].as_array().unwrap().len(), 7);
        for (path, text) in [("/api/status", body), ("/metrics", t), ("/", get(http, "/").await.2)] {
            assert!(!text.contains(&token), "{path} shows the lease token");
        }
        let mut products = 0.0;
        for w in &worker_http {
            let (status, _, m) = get(*w, "/metrics").await;
            assert_eq!(status, 200);
            products += value(&m, "septet_worker_products_total{dtype=\"f64\",outcome=\"ok\"}");
            assert_eq!(value(&m, "septet_worker_registered"), 1.0);
        }
        // Seven, or a few more if the job hedged or redid a product.
        assert!((7.0..=10.0).contains(&products), "{products} products for {job}");

        // SIGTERM: the tracker stops, and its HTTP port with it.
        let tracker = &mut procs.0[0];
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(tracker.id() as i32, libc::SIGTERM) };
        let mut exited = None;
        for _ in 0..200 {
            if let Some(status) = tracker.try_wait().unwrap() {
                exited = Some(status);
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(exited.expect("the tracker did not stop on SIGTERM").success());
        assert!(tokio::net::TcpStream::connect(http).await.is_err(), "the HTTP endpoint outlived the tracker");
        let _ = std::fs::remove_file(&log);
    })
    .await
    .unwrap();
}
