//! Matrix blocks on the wire: encoding and decoding a 2048×2048 f64 block
//! in memory, and sending one over loopback TCP from ndarray memory
//! straight into the receiver's array through septet's connections (as a
//! requester sends to a worker) — next to a reference for that last one: a
//! plain blocking `std::net` loop with default socket options moving the
//! same bytes with `write_all` / `read_exact` into one reused buffer — and
//! the same transfer over an encrypted connection (`--encrypt`).
//!
//! `cargo bench --bench wire`

use std::io::{Read, Write};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use ndarray::Array2;
use septet_common::conn::ConnLimits;
use septet_common::frame::{decode, encode, BlockOp, Blocks, Frame, DEFAULT_MAX_FRAME_LEN};
use septet_common::secure::{Secret, Security};
use septet_common::{Connection, Matrix, MatrixView, Role, TaskId};
use tokio::net::TcpListener;

const N: usize = 2048;

fn bench(c: &mut Criterion) {
    let block = Array2::from_shape_fn((N, N), |(i, j)| (i ^ j) as f64);
    let bytes = (N * N * 8) as u64;
    let mut group = c.benchmark_group("wire");
    group.throughput(Throughput::Bytes(bytes));
    group.sample_size(20);

    let frame =
        Frame::Blocks(Blocks { task_id: TaskId(1), op: BlockOp::Product, mats: vec![Matrix::F64(block.clone())] });
    group.bench_function("encode/2048", |b| b.iter(|| encode(&frame).unwrap()));
    let encoded = encode(&frame).unwrap();
    group.bench_function("decode/2048", |b| b.iter(|| decode(&encoded, DEFAULT_MAX_FRAME_LEN).unwrap().unwrap()));

    // Loopback: a writer task sends blocks back to back; a reader task reads
    // them (inside the runtime, as workers and the requester do) and hands
    // each buffer back for reuse once read, as they do once a block is
    // consumed (so the steady state is measured, not the kernel zeroing
    // fresh pages). Plain, and encrypted (AES-128-GCM records opened in place).
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let encrypted = Security::with_secret(Secret::generate(), true);
    for (name, security) in [("loopback/2048", Security::default()), ("loopback_encrypted/2048", encrypted)] {
        let limits = ConnLimits { max_frame_len: DEFAULT_MAX_FRAME_LEN, security, ..ConnLimits::default() };
        let reader = rt.block_on(async {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let sender = block.clone();
            let client_limits = limits.clone();
            tokio::spawn(async move {
                let mut conn = Connection::connect(addr, Role::Client, client_limits).await.unwrap();
                while conn
                    .writer
                    .send_blocks(TaskId(1), BlockOp::Product, &[MatrixView::F64(sender.view())])
                    .await
                    .is_ok()
                {}
            });
            let (stream, _) = listener.accept().await.unwrap();
            Connection::accept(stream, limits).await.unwrap().0.reader
        });
        let reader = std::sync::Arc::new(tokio::sync::Mutex::new(reader));
        group.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let reader = reader.clone();
                rt.block_on(async move {
                    tokio::spawn(async move {
                        let mut reader = reader.lock().await;
                        let start = std::time::Instant::now();
                        for _ in 0..iters {
                            if let Some(Frame::Blocks(blocks)) = reader.read_frame().await.unwrap() {
                                blocks.mats.into_iter().for_each(septet_common::matrix::recycle_matrix);
                            }
                        }
                        start.elapsed()
                    })
                    .await
                    .unwrap()
                })
            })
        });
    }

    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let payload = septet_common::frame::as_bytes(block.as_slice().unwrap()).to_vec();
    let len = payload.len();
    std::thread::spawn(move || {
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        while s.write_all(&payload).is_ok() {}
    });
    let (mut s, _) = listener.accept().unwrap();
    let mut buf = vec![0u8; len];
    group.bench_function("loopback_reference/2048", |b| b.iter(|| s.read_exact(&mut buf).unwrap()));
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
