//! What security costs a job: A·B (f64) through a tracker and seven
//! workers on loopback, with every connection plain, authenticated with a
//! cluster secret, or authenticated and encrypted (`--encrypt`:
//! AES-128-GCM records, see `septet_common::secure`), in the same run.
//!
//! Three grids run side by side in this process (only one is busy at a
//! time). As in the grid bench, a fixed pass per size times the three in
//! rotating order, round after round, and prints the median of the
//! per-round ratios to the plain job — the VM's drift over the seconds
//! criterion spends on one benchmark would swamp a ratio of two of them.
//! Criterion also measures each at n = 2048.
//!
//! `cargo bench --bench secure` (n = 4096 takes a few minutes).

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use septet::local::LocalGrid;
use septet_client::{Requester, RequesterConfig};
use septet_common::secure::{Secret, Security};

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let secret = Secret::generate();
    let modes = [
        ("plain", Security::default()),
        ("authenticated", Security::with_secret(secret.clone(), false)),
        ("encrypted", Security::with_secret(secret, true)),
    ];
    let grids: Vec<(&str, LocalGrid, Requester)> = modes
        .into_iter()
        .map(|(name, security)| {
            let grid = rt.block_on(LocalGrid::start_with(7, security.clone())).unwrap();
            let requester =
                Requester::new(RequesterConfig { tracker: grid.tracker().to_string(), security, ..Default::default() });
            (name, grid, requester)
        })
        .collect();
    let mut group = c.benchmark_group("secure");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(20));
    for n in [2048usize, 4096] {
        let a =
            Arc::new(ndarray::Array2::from_shape_fn((n, n), |(i, j)| ((i * 31 + j * 17) % 101) as f64 / 50.0 - 1.0));
        let b = Arc::new(ndarray::Array2::from_shape_fn((n, n), |(i, j)| ((i * 13 + j * 29) % 97) as f64 / 48.0 - 1.0));
        let job = |requester: &Requester| drop(rt.block_on(requester.multiply(a.clone(), b.clone(), |_| {})).unwrap());
        if n == 2048 {
            group.throughput(Throughput::Elements(2 * (n as u64).pow(3)));
            for (name, _, requester) in &grids {
                group.bench_with_input(BenchmarkId::new(format!("loopback_grid_{name}"), n), &n, |bch, _| {
                    bch.iter(|| job(requester))
                });
            }
        }
        let rounds = if n >= 4096 { 9 } else { 15 };
        let mut ratios = vec![Vec::new(); grids.len()];
        for round in 0..rounds {
            let mut times = vec![0.0; grids.len()];
            // Rotate which runs first: whichever follows another runs on a
            // warmer machine.
            for k in 0..grids.len() {
                let i = (round + k) % grids.len();
                let start = Instant::now();
                job(&grids[i].2);
                times[i] = start.elapsed().as_secs_f64();
            }
            for (i, t) in times.iter().enumerate() {
                ratios[i].push(t / times[0]);
            }
        }
        let summary: Vec<String> = grids
            .iter()
            .zip(&mut ratios)
            .skip(1)
            .map(|((name, _, _), r)| {
                let m = median(r);
                format!("{name} {m:.3} ({:.3}–{:.3})", r[0], r[r.len() - 1])
            })
            .collect();
        println!("secure/interleaved/{n}: job time ÷ plain job, median of {rounds} rounds: {}", summary.join(", "));
    }
    group.finish();
    for (_, grid, _) in grids {
        rt.block_on(grid.shutdown()).unwrap();
    }
}

/// Sorts `v` and returns its median.
fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

criterion_group!(benches, bench);
criterion_main!(benches);
