//! The library without the CLI: start a tracker and seven workers on
//! loopback in this process, multiply two random matrices through them, and
//! compare with the local product.
//!
//! `cargo run --release --example local_grid -- [N]`

use std::sync::Arc;
use std::time::Duration;

use ndarray::Array2;
use septet_common::matrix::{matmul, parallelism};
use septet_tracker::TrackerConfig;
use septet_worker::{Requester, RequesterConfig, TrackerClient, WorkerConfig};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let n: usize = std::env::args().nth(1).map(|s| s.parse()).transpose()?.unwrap_or(1000);
    let stop = CancellationToken::new();

    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let tracker = listener.local_addr()?;
    let s = stop.clone();
    let tracker_task =
        tokio::spawn(septet_tracker::run(listener, TrackerConfig::default(), async move { s.cancelled().await }));
    let mut workers = Vec::new();
    for _ in 0..7 {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let config = WorkerConfig { tracker: Some(tracker.to_string()), ..WorkerConfig::default() };
        let s = stop.clone();
        workers.push(tokio::spawn(septet_worker::run(listener, config, async move { s.cancelled().await })));
    }
    let mut client = TrackerClient::connect(tracker, septet_common::Role::Client, Duration::from_secs(5)).await?;
    while client.peers().await?.1.len() < 7 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    let a = Arc::new(Array2::from_shape_fn((n, n + 1), |(i, j)| ((i * 7 + j) % 13) as f64 - 6.0));
    let b = Arc::new(Array2::from_shape_fn((n + 1, n - 1), |(i, j)| ((i + 3 * j) % 11) as f64 - 5.0));
    let requester = Requester::new(RequesterConfig { tracker: tracker.to_string(), ..RequesterConfig::default() });
    let (c, report) = requester.multiply(a.clone(), b.clone(), |p| eprintln!("{p:?}")).await?;
    let expected = matmul(a.view(), b.view(), parallelism(0))?;
    println!(
        "{}×{} · {}×{}: {:.3} s on the grid, {} retries, verified: {}, equal to the local product: {}",
        report.m,
        report.k,
        report.k,
        report.n,
        report.total_s,
        report.retries,
        report.verified,
        c == expected
    );

    stop.cancel();
    for w in workers {
        w.await??;
    }
    tracker_task.await??;
    Ok(())
}
