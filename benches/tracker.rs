//! Lease + release cycles through the real TCP tracker with 1,000 registered
//! peers, by 1 and by 100 concurrent requesters (each on its own
//! connection). Criterion measures cycles per second; a second, fixed pass
//! prints the lease-latency percentiles (p50, p99), which criterion does not
//! report.
//!
//! `cargo bench --bench tracker`

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use parking_lot::Mutex;
use septet_common::Role;
use septet_tracker::{Tracker, TrackerConfig};
use septet_worker::TrackerClient;
use tokio::net::TcpListener;
use tokio::runtime::Runtime;

const PEERS: u16 = 1000;

struct Grid {
    addr: std::net::SocketAddr,
    _tracker: Tracker,
}

fn start(rt: &Runtime) -> Grid {
    rt.block_on(async {
        let config = TrackerConfig {
            // The fake peers below never heartbeat; keep them alive for the run.
            heartbeat_timeout: Duration::from_secs(3600),
            ..TrackerConfig::default()
        };
        let tracker = Tracker::new(config).unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(septet_tracker::server::serve(tracker.clone(), listener, std::future::pending()));
        let mut c = TrackerClient::connect(addr, Role::Worker, Duration::from_secs(5)).await.unwrap();
        for i in 0..PEERS {
            c.register(format!("127.0.0.1:{}", 20_000 + i).parse().unwrap(), 1).await.unwrap();
        }
        Grid { addr, _tracker: tracker }
    })
}

async fn requesters(addr: std::net::SocketAddr, n: usize) -> Vec<TrackerClient> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        out.push(TrackerClient::connect(addr, Role::Client, Duration::from_secs(5)).await.unwrap());
    }
    out
}

/// Runs `cycles` lease+release cycles split over the clients, each client
/// starting one cycle per `pace` when given (catching up if late), else
/// back to back. Returns the elapsed time; records each lease's latency
/// when `latencies` is given.
async fn cycles(
    clients: &mut Vec<TrackerClient>,
    cycles: u64,
    pace: Option<Duration>,
    latencies: Option<Arc<Mutex<Vec<Duration>>>>,
) -> Duration {
    let n = clients.len() as u64;
    let start = Instant::now();
    let mut tasks = Vec::new();
    for (i, mut c) in clients.drain(..).enumerate() {
        let share = cycles / n + u64::from((i as u64) < cycles % n);
        let latencies = latencies.clone();
        tasks.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            let mut tick = pace.map(|p| {
                let mut t = tokio::time::interval(p);
                t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
                t
            });
            for _ in 0..share {
                if let Some(t) = tick.as_mut() {
                    t.tick().await;
                }
                let t = Instant::now();
                let grant = c.lease(7, false, None, |_, _, _| {}).await.unwrap();
                mine.push(t.elapsed());
                c.release(grant.lease_id).await.unwrap();
            }
            if let Some(l) = latencies {
                l.lock().extend(mine);
            }
            c
        }));
    }
    for t in tasks {
        clients.push(t.await.unwrap());
    }
    start.elapsed()
}

fn report(what: &str, total: u64, elapsed: Duration, latencies: &[Duration]) {
    let mut l = latencies.to_vec();
    l.sort();
    let pct = |p: f64| l[((l.len() as f64 * p) as usize).min(l.len() - 1)];
    println!(
        "tracker/lease_release/{what}: {:.0} cycles/s; lease latency p50 {:?}, p99 {:?}, max {:?}",
        total as f64 / elapsed.as_secs_f64(),
        pct(0.50),
        pct(0.99),
        l[l.len() - 1]
    );
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let grid = start(&rt);
    let mut group = c.benchmark_group("tracker/lease_release");
    group.throughput(Throughput::Elements(1));
    group.measurement_time(Duration::from_secs(8));
    for n in [1usize, 100] {
        let mut clients = rt.block_on(requesters(grid.addr, n));
        group.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, _| {
            b.iter_custom(|iters| rt.block_on(cycles(&mut clients, iters, None, None)))
        });
        // Latency passes, every lease timed: closed loop (each requester
        // starts its next cycle at once), then paced at 10,000 cycles/s in all.
        let total = 20_000u64;
        let closed = Arc::new(Mutex::new(Vec::new()));
        let elapsed = rt.block_on(cycles(&mut clients, total, None, Some(closed.clone())));
        report(&format!("{n} closed-loop"), total, elapsed, &closed.lock());
        let paced = Arc::new(Mutex::new(Vec::new()));
        let per_client = Duration::from_secs_f64(n as f64 / 10_000.0);
        let elapsed = rt.block_on(cycles(&mut clients, total, Some(per_client), Some(paced.clone())));
        report(&format!("{n} paced at 10k/s"), total, elapsed, &paced.lock());
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
