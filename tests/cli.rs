//! The `septet` binary as a person uses it: separate tracker and worker
//! processes, `peers`, `lease` waiting its turn, `multiply` on `.npy` files,
//! and one-line errors with the right exit status.

mod common;

use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use common::{free_addr, septet_bin, tracker_process, Procs};
use ndarray::Array2;
use ndarray_npy::{read_npy, write_npy};
use septet_common::strassen::naive_matmul;

fn septet(args: &[&str]) -> Output {
    Command::new(septet_bin()).args(args).stdin(Stdio::null()).output().unwrap()
}

fn spawn(args: &[&str]) -> Child {
    Command::new(septet_bin())
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

fn peers_json(tracker: &str) -> Vec<serde_json::Value> {
    let out = septet(&["peers", "--tracker", tracker, "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice::<Vec<serde_json::Value>>(&out.stdout).unwrap()
}

/// A tracker and seven workers, as separate processes.
fn grid() -> (Procs, String) {
    let (tracker, addr) = tracker_process("127.0.0.1:0", &[]);
    let addr = addr.to_string();
    let mut procs = Procs(vec![tracker]);
    for _ in 0..7 {
        procs.0.push(spawn(&["worker", "--tracker", &addr, "--threads", "1"]));
    }
    for _ in 0..500 {
        if peers_json(&addr).len() == 7 {
            return (procs, addr);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("workers did not join");
}

/// A test's scratch directory, removed when the test ends.
struct Scratch(std::path::PathBuf);

impl Scratch {
    fn new(test: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("septet-cli-{}-{test}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }

    fn path(&self, name: &str) -> std::path::PathBuf {
        self.0.join(name)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn peers_lists_the_grid_and_a_second_lease_waits_its_turn() {
    let (_procs, tracker) = grid();
    let out = septet(&["peers", "--tracker", &tracker]);
    let table = String::from_utf8(out.stdout).unwrap();
    assert!(table.contains("shape: (7, 11)") && table.matches("alive").count() == 7, "{table}");
    assert!(
        table.contains("leases_total") && table.contains("last_seen") && table.contains("slow"),
        "all columns shown: {table}"
    );
    // The same rows as CSV, as pandas reads it: a header, then one record per peer.
    let out = septet(&["peers", "--tracker", &tracker, "--csv"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let mut csv = csv::Reader::from_reader(&out.stdout[..]);
    let header: Vec<String> = csv.headers().unwrap().iter().map(str::to_string).collect();
    assert_eq!(
        header,
        [
            "peer_id",
            "addr",
            "slots",
            "in_use",
            "leases_total",
            "failures",
            "slow",
            "joined_at",
            "last_seen",
            "state",
            "cluster"
        ]
    );
    let records: Vec<csv::StringRecord> = csv.records().map(Result::unwrap).collect();
    let json = peers_json(&tracker);
    assert_eq!(records.len(), json.len());
    for (rec, row) in records.iter().zip(&json) {
        for (k, name) in header.iter().enumerate() {
            let want = match &row[name.as_str()] {
                serde_json::Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            // last_seen moves between the two calls.
            if name != "last_seen" {
                assert_eq!(rec[k], want, "{name}");
            }
        }
    }

    let first = Command::new(septet_bin())
        .args(["lease", "--tracker", &tracker, "--hold", "1.5", "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    for _ in 0..300 {
        if peers_json(&tracker).iter().all(|r| r["in_use"] == 1) {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let second = septet(&["lease", "--tracker", &tracker, "--hold", "0.1"]);
    let first = first.wait_with_output().unwrap();
    assert!(first.status.success() && second.status.success());
    let grant: serde_json::Value = serde_json::from_slice(&first.stdout).unwrap();
    assert_eq!(grant["peers"].as_array().unwrap().len(), 7);
    assert!(grant["lease_id"].as_u64().is_some());
    let waited = String::from_utf8_lossy(&second.stderr);
    assert!(waited.contains("waiting: position 1 in the tracker's queue"), "{waited}");
    assert!(String::from_utf8_lossy(&second.stdout).starts_with("lease "), "served after the first released");
    assert!(peers_json(&tracker).iter().all(|r| r["in_use"] == 0));
}

#[test]
fn multiply_reads_npy_files_and_writes_the_product() {
    let (_procs, tracker) = grid();
    let scratch = Scratch::new("multiply");
    let tmp = |name: &str| scratch.path(name);
    let a = Array2::from_shape_fn((37, 50), |(i, j)| ((i * 5 + j) % 9) as f64 - 4.0);
    let b = Array2::from_shape_fn((50, 23), |(i, j)| ((i + 7 * j) % 5) as f64 - 2.0);
    let (pa, pb, pc) = (tmp("a.npy"), tmp("b.npy"), tmp("c.npy"));
    write_npy(&pa, &a).unwrap();
    write_npy(&pb, &b).unwrap();
    let out = septet(&[
        "multiply",
        "--tracker",
        &tracker,
        "--a",
        pa.to_str().unwrap(),
        "--b",
        pb.to_str().unwrap(),
        "--out",
        pc.to_str().unwrap(),
        "--check",
        "--json",
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(summary["check"]["max_rel_error"], 0.0);
    assert_eq!(summary["verified"], true);
    assert_eq!(summary["peers"].as_array().unwrap().len(), 7);
    let c: Array2<f64> = read_npy(&pc).unwrap();
    assert_eq!(c, naive_matmul(a.view(), b.view()));

    // The job report: one self-contained HTML file with a timeline of the seven products.
    let report = tmp("report.html");
    let out = septet(&[
        "multiply",
        "--tracker",
        &tracker,
        "--random",
        "64,64,64",
        "--json",
        "--report",
        report.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let html = std::fs::read_to_string(&report).unwrap();
    assert!(html.starts_with("<!doctype html>") && html.trim_end().ends_with("</html>"));
    assert!(
        html.contains(&format!("lease {}", summary["lease_id"])) && html.contains("random, seed 1"),
        "inputs and lease"
    );
    let svg = &html[html.find("<svg").expect("a timeline")..html.find("</svg>").unwrap()];
    for p in 1..=7 {
        assert!(svg.contains(&format!(">M{p} · peer ")), "M{p} has a row");
    }
    assert_eq!(svg.matches("class=\"send\"").count(), 7, "one send bar per product");
    assert_eq!(svg.matches("class=\"compute\"").count(), 7, "one compute bar per product");
    assert_eq!(svg.matches("✓").count(), 7, "seven verified attempts");
    assert!(html.contains("came in last"), "says which product held the job up");
    // Self-contained: nothing to fetch (the SVG namespace is a name, not a fetch).
    assert!(!html.contains("src=") && !html.contains("<link") && !html.contains("<script"), "{html}");
    assert_eq!(html.matches("http").count(), 1, "only the SVG namespace");
    assert!(summary["attempts"].as_array().unwrap().iter().all(|a| a["outcome"] == "verified"), "{summary}");

    // f32 random inputs, text summary.
    let out = septet(&["multiply", "--tracker", &tracker, "--random", "33,17,9", "--dtype", "f32", "--check"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && text.contains("f32") && text.contains("max relative error"), "{text}");
}

#[test]
fn bad_inputs_exit_2_with_one_line_and_lease_nothing() {
    let (_procs, tracker) = grid();
    let scratch = Scratch::new("bad-inputs");
    let tmp = |name: &str| scratch.path(name);
    let good = tmp("good.npy");
    write_npy(&good, &Array2::<f64>::zeros((3, 4))).unwrap();
    let wide = tmp("wide.npy");
    write_npy(&wide, &Array2::<f64>::zeros((5, 2))).unwrap();
    let ints = tmp("ints.npy");
    write_npy(&ints, &Array2::<i64>::zeros((4, 2))).unwrap();
    let truncated = tmp("truncated.npy");
    let bytes = std::fs::read(&good).unwrap();
    std::fs::write(&truncated, &bytes[..bytes.len() - 5]).unwrap();
    let missing = tmp("missing.npy");
    for (b, needle) in [(&wide, "shape mismatch"), (&ints, "<i8"), (&truncated, "truncated"), (&missing, "cannot open")]
    {
        let out =
            septet(&["multiply", "--tracker", &tracker, "--a", good.to_str().unwrap(), "--b", b.to_str().unwrap()]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{err}");
        assert!(err.starts_with("error: ") && err.trim_end().lines().count() == 1 && err.contains(needle), "{err}");
        assert!(!err.contains("panicked"), "{err}");
    }
    // A report that cannot be written is refused before anything is leased.
    for bad in [tmp("no-such-dir").join("r.html"), tmp("")] {
        let out = septet(&["multiply", "--tracker", &tracker, "--random", "8,8,8", "--report", bad.to_str().unwrap()]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{err}");
        assert!(err.starts_with("error: ") && err.contains("cannot write the report there"), "{err}");
    }
    assert!(peers_json(&tracker).iter().all(|r| r["leases_total"] == 0), "nothing was leased");

    // An unreachable tracker: one line, exit 1.
    let dead = free_addr().to_string();
    let out = septet(&["peers", "--tracker", &dead]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert!(err.starts_with("error: could not reach the tracker") && err.trim_end().lines().count() == 1, "{err}");
    // A job that fails still writes its report, saying why.
    let report = tmp("failed.html");
    let out = septet(&["multiply", "--tracker", &dead, "--random", "8,8,8", "--report", report.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let html = std::fs::read_to_string(&report).unwrap();
    assert!(html.contains("septet job failed") && html.contains("no C was returned"), "{html}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("report of the failed job"));
    // So is an unknown lease (worded like someone else's: see tests/ownership.rs).
    let out = septet(&["release", "--tracker", &tracker, "999"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("lease 999 is not yours or does not exist"));
}
