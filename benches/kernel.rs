//! Leaf products on one machine: faer on ndarray memory vs ndarray's `dot`
//! vs one local Strassen level with faer leaves. Throughput is in classical
//! flops (2n³), so "Gelem/s" reads as GFLOP/s.
//!
//! `cargo bench --bench kernel`

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use septet_common::matrix::{matmul, parallelism};
use septet_common::strassen::strassen_local;

fn inputs(n: usize) -> (ndarray::Array2<f64>, ndarray::Array2<f64>) {
    let a = ndarray::Array2::from_shape_fn((n, n), |(i, j)| ((i * 31 + j * 17) % 101) as f64 / 50.0 - 1.0);
    let b = ndarray::Array2::from_shape_fn((n, n), |(i, j)| ((i * 13 + j * 29) % 97) as f64 / 48.0 - 1.0);
    (a, b)
}

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("kernel");
    group.sample_size(10);
    for n in [1024usize, 2048] {
        let (a, b) = inputs(n);
        group.throughput(Throughput::Elements(2 * (n as u64).pow(3)));
        group.bench_with_input(BenchmarkId::new("faer", n), &n, |bch, _| {
            bch.iter(|| matmul(a.view(), b.view(), parallelism(0)).unwrap())
        });
        group.bench_with_input(BenchmarkId::new("ndarray_dot", n), &n, |bch, _| bch.iter(|| a.dot(&b)));
        group.bench_with_input(BenchmarkId::new("strassen1_faer", n), &n, |bch, _| {
            bch.iter(|| strassen_local(a.view(), b.view(), parallelism(0)).unwrap())
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
