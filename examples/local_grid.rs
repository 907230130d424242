//! The library without the CLI: start a tracker and seven workers on
//! loopback in this process, multiply two random matrices through them, and
//! compare with the local product.
//!
//! `cargo run --release --example local_grid -- [N]`

use std::sync::Arc;

use ndarray::Array2;
use septet::local::LocalGrid;
use septet_client::{Requester, RequesterConfig};
use septet_common::matrix::{matmul, parallelism};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let n: usize = std::env::args().nth(1).map(|s| s.parse()).transpose()?.unwrap_or(1000);

    let grid = LocalGrid::start(7).await?;
    let tracker = grid.tracker();

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

    grid.shutdown().await?;
    Ok(())
}
