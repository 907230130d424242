//! Jobs larger than the requester's memory, and workers that refuse what
//! they cannot hold: a file-to-file `multiply` whose requester's anonymous
//! memory stays far below its matrices, a worker refusing a task from its
//! header alone, `peers` showing each worker's memory, and a job that a
//! grid has no room for refused with the sizes.

mod common;

use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{septet_bin, spawn_worker_with, tracker_process, Procs, Scratch};
use ndarray::Array2;
use ndarray_npy::{read_npy, write_npy};
use rand::{RngExt, SeedableRng};
use septet_common::frame::{encode, BlockOp, Blocks, Frame};
use septet_common::proto::{TaskId, WorkerReply};
use septet_common::{Connection, Matrix, Role};
use septet_worker::WorkerConfig;

fn septet(args: &[&str]) -> Output {
    Command::new(septet_bin()).args(args).stdin(Stdio::null()).output().unwrap()
}

fn peers_json(tracker: &str) -> Vec<serde_json::Value> {
    let out = septet(&["peers", "--tracker", tracker, "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// A tracker and one worker process per entry of `workers` (its extra flags).
fn grid(workers: &[&[&str]]) -> (Procs, String) {
    let (tracker, addr) = tracker_process("127.0.0.1:0", &[]);
    let addr = addr.to_string();
    let mut procs = Procs(vec![tracker]);
    for extra in workers {
        let child = Command::new(septet_bin())
            .args(["worker", "--tracker", &addr, "--threads", "1", "--warm-up", "0"])
            .args(*extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        procs.0.push(child);
    }
    for _ in 0..500 {
        if peers_json(&addr).len() == workers.len() {
            return (procs, addr);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("workers did not join");
}

/// A field of /proc/PID/status, in KiB.
fn status_kib(pid: u32, field: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = text.lines().find(|l| l.starts_with(field))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn random(rows: usize, cols: usize, rng: &mut rand::rngs::StdRng) -> Array2<f64> {
    Array2::from_shape_simple_fn((rows, cols), || rng.random_range(-1.0..1.0))
}

/// A file-to-file `multiply` of two random n×n matrices with `extra`
/// flags, on one worker process per entry of `workers` (its flags): the
/// job's summary and the requester's peak anonymous memory (page cache
/// excluded) in KiB, once C in the file is checked against a plain
/// product on a sample of rows.
fn file_to_file(n: usize, seed: u64, workers: &[&[&str]], extra: &[&str]) -> (serde_json::Value, u64) {
    let (_procs, tracker) = grid(workers);
    let scratch = Scratch::new("large-files");
    let (pa, pb, pc) = (scratch.path("a.npy"), scratch.path("b.npy"), scratch.path("c.npy"));
    println!("n {n}, seed {seed}");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let (a, b) = (random(n, n, &mut rng), random(n, n, &mut rng));
    write_npy(&pa, &a).unwrap();
    write_npy(&pb, &b).unwrap();
    let mut child = Command::new(septet_bin())
        .args(["multiply", "--tracker", &tracker, "--json"])
        .args(["--a", pa.to_str().unwrap(), "--b", pb.to_str().unwrap(), "--out", pc.to_str().unwrap()])
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (mut peak_kib, started) = (0, Instant::now());
    while child.try_wait().unwrap().is_none() {
        if let Some(kib) = status_kib(child.id(), "RssAnon:") {
            peak_kib = peak_kib.max(kib);
        }
        assert!(started.elapsed() < Duration::from_secs(120), "the job took over two minutes");
        std::thread::sleep(Duration::from_millis(5));
    }
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(summary["verified"], true);
    assert!(peak_kib > 0, "sampled the requester");

    // C is in the file, right: a sample of rows against a plain product.
    let c: Array2<f64> = read_npy(&pc).unwrap();
    assert_eq!(c.dim(), (n, n));
    for row in [0, 1, n / 2 - 1, n / 2, n - 1] {
        let want = a.row(row).dot(&b);
        let err = (&c.row(row) - &want).iter().fold(0.0f64, |m, v| m.max(v.abs()));
        assert!(err < 1e-9, "row {row}: max error {err}");
    }
    assert!(!scratch.path("c.npy.partial").exists(), "the partial file was moved into place");
    (summary, peak_kib)
}

const PLAIN: &[&str] = &[];

#[test]
fn a_file_to_file_job_keeps_a_b_and_c_out_of_the_requesters_memory() {
    let n = 2048;
    let (summary, peak_kib) = file_to_file(n, 20, &[PLAIN; 7], &[]);
    assert_eq!(summary["plan"], "relay", "a job out of core relays, on loopback too");
    let matrices_kib = (3 * n * n * 8 / 1024) as u64;
    println!("requester peak RssAnon {peak_kib} KiB; A, B and C are {matrices_kib} KiB");
    assert!(peak_kib < matrices_kib / 2, "peak RssAnon {peak_kib} KiB, not far below A+B+C ({matrices_kib} KiB)");
}

/// The direct plan out of core (which the relay falls back on) holds no
/// product over `--spill-above` and no padded operand in memory: such
/// products are read straight into scratch files, and the padded operands
/// of an odd n (every one of the fourteen here) are formed in them. Before,
/// such a job's requester peaked at about 100 MiB of anonymous memory at
/// n = 2047 (release build).
#[test]
fn the_direct_plan_out_of_core_keeps_products_and_padded_operands_out_of_memory() {
    // (A debug build's requester holds about 7 MiB of its own.)
    let n = 3071;
    let (summary, peak_kib) = file_to_file(n, 21, &[PLAIN; 7], &["--plan", "direct", "--spill-above", "1"]);
    assert_eq!(summary["plan"], "direct");
    let product_kib = (n.div_ceil(2).pow(2) * 8 / 1024) as u64;
    println!("requester peak RssAnon {peak_kib} KiB; one product is {product_kib} KiB");
    assert!(peak_kib < product_kib, "peak RssAnon {peak_kib} KiB: a product ({product_kib} KiB) was held in memory");
}

/// A liar's product read into a scratch file is checked there, refused,
/// and redone on another worker; C in the file is right.
#[cfg(feature = "fault-injection")]
#[test]
fn a_liars_product_out_of_core_is_refused_from_its_scratch_file_and_redone() {
    let liar: &[&str] = &["--fault=corrupt"];
    let workers = [liar, PLAIN, PLAIN, PLAIN, PLAIN, PLAIN, PLAIN];
    let (summary, _) = file_to_file(511, 22, &workers, &["--plan", "direct", "--spill-above", "0"]);
    assert_eq!(summary["plan"], "direct");
    let failures = summary["failures"].as_array().unwrap();
    assert!(failures.iter().any(|f| f.as_str().unwrap().contains("failed verification")), "{summary}");
    assert!(summary["retries"].as_u64() >= Some(1), "{summary}");
}

#[tokio::test]
async fn a_worker_refuses_a_task_it_cannot_hold_before_reading_it() {
    let worker =
        spawn_worker_with(WorkerConfig { max_memory: Some(1 << 20), threads: 1, ..WorkerConfig::default() }).await;
    let mut conn = Connection::connect(worker.addr, Role::Client, Default::default()).await.unwrap();
    // Two 300×300 f64 operands and their product: 2 MiB, over the 1 MiB allowed.
    let x = Array2::<f64>::ones((300, 300));
    let frame = encode(&Frame::Blocks(Blocks {
        task_id: TaskId(4),
        op: BlockOp::Multiply,
        mats: vec![Matrix::F64(x.clone()), Matrix::F64(x)],
    }))
    .unwrap();
    // Only the header goes out: the refusal must not wait for the payload.
    conn.writer.send_raw(&frame[..200]).await.unwrap();
    let reply = tokio::time::timeout(Duration::from_secs(10), conn.reader.read_message::<WorkerReply>("an error"))
        .await
        .expect("refused at once, from the header")
        .unwrap();
    match reply {
        WorkerReply::Error(f) => {
            assert!(f.message.contains("does not fit") && f.message.contains("--max-memory"), "{}", f.message);
            assert!(f.message.contains("2 MiB") && f.message.contains("at most 1 MiB"), "{}", f.message);
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    worker.shutdown().await;
}

#[test]
fn peers_show_each_workers_memory_and_jobs_go_where_they_fit() {
    let small: &[&str] = &["--max-memory", "1M"];
    let mut workers: Vec<&[&str]> = vec![small];
    workers.extend([&["--max-memory", "2G"] as &[&str]; 6]);
    let (procs, tracker) = grid(&workers);
    let rows = peers_json(&tracker);
    let mut memory: Vec<u64> = rows.iter().map(|r| r["memory_mib"].as_u64().unwrap()).collect();
    memory.sort_unstable();
    assert_eq!(memory, [1, 2048, 2048, 2048, 2048, 2048, 2048]);
    let table = String::from_utf8(septet(&["peers", "--tracker", &tracker]).stdout).unwrap();
    assert!(table.contains("memory_mib") && table.contains("2048"), "{table}");

    // Seven slots, one too small for its share of a 512² job, no spare: refused with the sizes.
    let out = septet(&["multiply", "--tracker", &tracker, "--random", "512,512,512"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("offers 1 MiB a slot") && err.contains("needs 4 MiB a slot"), "{err}");

    // An eighth worker with room: the job goes there instead.
    let mut procs = procs;
    procs.0.push(
        Command::new(septet_bin())
            .args(["worker", "--tracker", &tracker, "--threads", "1", "--warm-up", "0"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    while peers_json(&tracker).len() < 8 {
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = septet(&["multiply", "--tracker", &tracker, "--random", "512,512,512", "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let small_addr = rows.iter().find(|r| r["memory_mib"] == 1).unwrap()["addr"].clone();
    let used: Vec<_> = summary["peers"].as_array().unwrap().iter().map(|p| p["addr"].clone()).collect();
    assert!(!used.contains(&small_addr), "the small worker got no work: {used:?}");
    assert!(summary["failures"].as_array().unwrap().is_empty(), "{summary}");
    drop(procs);
}
