//! End to end: A·B through a tracker and seven workers on loopback (real
//! TCP, in this process) vs the single-process faer product of the same
//! inputs, measured in the same run. Throughput is classical flops (2n³).
//!
//! The grid runs with and without Freivalds verification, so its cost shows.
//!
//! On a shared VM the machine's speed drifts over the seconds
//! criterion spends on one benchmark before the next, which swamps a ratio
//! of two of them. So a fixed pass after each size also times the three
//! *interleaved* — local, then grid verified and unverified in alternating
//! order, repeated — and prints the median of the per-round ratios,
//! including verified ÷ unverified: the cost of the Freivalds check, and
//! the relay forced (`Plan::Relay`) ÷ the default, which on loopback is the
//! direct plan (`Plan::Auto`): what relaying costs where there is no link
//! to spare.
//!
//! `cargo bench --bench grid` (n = 4096 takes a few minutes);
//! `GRID_N=4096 cargo bench --bench grid` for some sizes only.

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use septet::local::LocalGrid;
use septet_client::{Plan, Requester, RequesterConfig};
use septet_common::matrix::{matmul, parallelism};

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let grid = rt.block_on(LocalGrid::start(7)).unwrap();
    let tracker = grid.tracker().to_string();
    let requester = Requester::new(RequesterConfig { tracker: tracker.clone(), ..Default::default() });
    let unverified = Requester::new(RequesterConfig { tracker: tracker.clone(), verify: false, ..Default::default() });
    let relayed = Requester::new(RequesterConfig { tracker, plan: Plan::Relay, ..Default::default() });
    let sizes: Vec<usize> = std::env::var("GRID_N")
        .ok()
        .map(|v| v.split(',').filter_map(|x| x.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![1024, 2048, 4096]);
    let mut group = c.benchmark_group("grid");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(20));
    for n in sizes {
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
        let rounds = if n >= 4096 { 7 } else { 15 };
        let (mut verified, mut unverified_ratio, mut cost) = (Vec::new(), Vec::new(), Vec::new());
        let (mut relay_gain, mut hedges, mut hedged_jobs) = (Vec::new(), 0, 0);
        for round in 0..rounds {
            let time = |f: &mut dyn FnMut()| {
                let start = Instant::now();
                f();
                start.elapsed().as_secs_f64()
            };
            let local = time(&mut || drop(matmul(a.view(), b.view(), parallelism(0)).unwrap()));
            let mut sent = 0;
            let mut checked = || {
                time(&mut || {
                    let (_, report) = rt.block_on(requester.multiply(a.clone(), b.clone(), |_| {})).unwrap();
                    sent += report.hedges.len();
                })
            };
            let bare = || time(&mut || drop(rt.block_on(unverified.multiply(a.clone(), b.clone(), |_| {})).unwrap()));
            let plain = || time(&mut || drop(rt.block_on(relayed.multiply(a.clone(), b.clone(), |_| {})).unwrap()));
            // Rotate which runs first: whichever follows another runs on a
            // warmer machine.
            let (grid, bare, plain) = match round % 3 {
                0 => {
                    let g = checked();
                    let u = bare();
                    (g, u, plain())
                }
                1 => {
                    let u = bare();
                    let p = plain();
                    (checked(), u, p)
                }
                _ => {
                    let p = plain();
                    let g = checked();
                    (g, bare(), p)
                }
            };
            hedges += sent;
            hedged_jobs += usize::from(sent > 0);
            verified.push(grid / local);
            unverified_ratio.push(bare / local);
            cost.push(grid / bare);
            relay_gain.push(plain / grid);
        }
        println!(
            "grid/interleaved/{n}: grid ÷ local faer, median of {rounds} rounds: {:.3} verified ({:.3}–{:.3}), \
             {:.3} unverified ({:.3}–{:.3}); verified ÷ unverified, same rounds: {:.3} ({:.3}–{:.3})",
            median(&mut verified),
            verified[0],
            verified[rounds - 1],
            median(&mut unverified_ratio),
            unverified_ratio[0],
            unverified_ratio[rounds - 1],
            median(&mut cost),
            cost[0],
            cost[rounds - 1],
        );
        println!(
            "grid/interleaved/{n}: relay forced ÷ the default (direct: every peer is on loopback), both verified, \
             same rounds: {:.3} ({:.3}–{:.3}); hedges sent by the default jobs: {hedges} in {hedged_jobs} of {rounds}",
            median(&mut relay_gain),
            relay_gain[0],
            relay_gain[rounds - 1],
        );
    }
    group.finish();
    rt.block_on(grid.shutdown()).unwrap();
}

/// Sorts `v` and returns its median.
fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

criterion_group!(benches, bench);
criterion_main!(benches);
