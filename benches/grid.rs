//! End to end: A·B through a tracker and seven workers on loopback (real
//! TCP, in this process) vs the single-process faer product of the same
//! inputs, measured in the same run. Throughput is classical flops (2n³).
//!
//! The grid runs with and without Freivalds verification, so its cost shows.
//!
//! `cargo bench --bench grid` (n = 4096 takes a few minutes).

use std::sync::Arc;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use septet_common::matrix::{matmul, parallelism};
use septet_tracker::TrackerConfig;
use septet_worker::{Requester, RequesterConfig, WorkerConfig};
use tokio::net::TcpListener;

fn start_grid(rt: &tokio::runtime::Runtime) -> (Requester, Requester) {
    rt.block_on(async {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let tracker = listener.local_addr().unwrap();
        tokio::spawn(septet_tracker::run(listener, TrackerConfig::default(), std::future::pending()));
        for _ in 0..7 {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let config = WorkerConfig { tracker: Some(tracker.to_string()), ..WorkerConfig::default() };
            tokio::spawn(septet_worker::run(listener, config, std::future::pending()));
        }
        let mut client =
            septet_worker::TrackerClient::connect(tracker, septet_common::Role::Client, Duration::from_secs(5))
                .await
                .unwrap();
        while client.peers().await.unwrap().1.len() < 7 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let verified = Requester::new(RequesterConfig { tracker: tracker.to_string(), ..Default::default() });
        let unverified =
            Requester::new(RequesterConfig { tracker: tracker.to_string(), verify: false, ..Default::default() });
        (verified, unverified)
    })
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let (requester, unverified) = start_grid(&rt);
    let mut group = c.benchmark_group("grid");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(20));
    for n in [1024usize, 2048, 4096] {
        let a =
            Arc::new(ndarray::Array2::from_shape_fn((n, n), |(i, j)| ((i * 31 + j * 17) % 101) as f64 / 50.0 - 1.0));
        let b = Arc::new(ndarray::Array2::from_shape_fn((n, n), |(i, j)| ((i * 13 + j * 29) % 97) as f64 / 48.0 - 1.0));
        group.throughput(Throughput::Elements(2 * (n as u64).pow(3)));
        group.bench_with_input(BenchmarkId::new("loopback_grid", n), &n, |bch, _| {
            bch.iter(|| rt.block_on(requester.multiply(a.clone(), b.clone(), |_| {})).unwrap())
        });
        group.bench_with_input(BenchmarkId::new("loopback_grid_unverified", n), &n, |bch, _| {
            bch.iter(|| rt.block_on(unverified.multiply(a.clone(), b.clone(), |_| {})).unwrap())
        });
        group.bench_with_input(BenchmarkId::new("local_faer", n), &n, |bch, _| {
            bch.iter(|| matmul(a.view(), b.view(), parallelism(0)).unwrap())
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
