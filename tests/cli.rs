//! The `septet` binary as a person uses it: separate tracker and worker
//! processes, `peers`, `lease` waiting its turn, `multiply` on `.npy` files,
//! and one-line errors with the right exit status.

mod common;

use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use common::{dead_addr, septet_bin, tracker_process, Procs, Scratch};
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

#[test]
fn peers_lists_the_grid_and_a_second_lease_waits_its_turn() {
    let (_procs, tracker) = grid();
    let out = septet(&["peers", "--tracker", &tracker]);
    let table = String::from_utf8(out.stdout).unwrap();
    assert!(table.contains("shape: (7, 12)") && table.matches("alive").count() == 7, "{table}");
    assert!(
        table.contains("leases_total") && table.contains("last_seen") && table.contains("slow"),
        "all columns shown: {table}"
    );
    assert!(table.contains("joined_at, last_seen: milliseconds since the tracker started"), "units: {table}");
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
            "memory_mib",
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
    let files = ["multiply", "--tracker", &tracker, "--a", pa.to_str().unwrap(), "--b", pb.to_str().unwrap()];
    let out = septet(&[&files[..], &["--out", pc.to_str().unwrap(), "--check", "--json"]].concat());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(summary["check"]["max_rel_error"], 0.0);
    assert_eq!(summary["verified"], true);
    assert_eq!(summary["peers"].as_array().unwrap().len(), 7);
    let c: Array2<f64> = read_npy(&pc).unwrap();
    assert_eq!(c, naive_matmul(a.view(), b.view()));
    assert_eq!(summary["check"]["rows"], 37, "a small C is checked whole");
    // The lease ticket (a bearer credential) stays out of the output.
    let json = String::from_utf8_lossy(&out.stdout);
    assert!(!json.contains("ticket") && !json.contains("signature"), "{json}");
    // A check of sampled rows (the way a C over 512 MiB is checked): 8 of
    // the 37 rows, spread over C, computed locally and compared.
    let out = septet(&[&files[..], &["--check", "--check-rows", "8", "--json"]].concat());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let sampled: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let check = &sampled["check"];
    assert_eq!((check["rows"].clone(), check["max_rel_error"].clone()), (8.into(), 0.0.into()), "{sampled}");
    let scaled = check["local_s"].as_f64().unwrap() * 37.0 / 8.0;
    let ratio = sampled["job_s"].as_f64().unwrap() / scaled;
    assert!((check["grid_over_local"].as_f64().unwrap() - ratio).abs() <= 1e-9 * ratio, "{sampled}");

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
    let hold = dead_addr();
    let dead = hold.to_string();
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
    let out = septet(&["release", "--tracker", &tracker, "999", "--token", "00"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("lease 999 is not yours or does not exist"));
}

/// Runs `septet ARGS` with `env` set and no SEPTET_* variables inherited.
fn septet_env(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(septet_bin());
    cmd.args(args).stdin(Stdio::null());
    for var in ["SEPTET_SECRET_FILE", "SEPTET_ENCRYPT", "SEPTET_TRACKER", "SEPTET_LEASE_TOKEN"] {
        cmd.env_remove(var);
    }
    cmd.envs(env.iter().copied()).output().unwrap()
}

/// Stderr of a command that must fail with `code`: exactly one line,
/// starting with "error: ".
fn one_error_line(out: &Output, code: i32) -> String {
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(code), "{err}");
    assert!(err.starts_with("error: ") && err.trim_end().lines().count() == 1, "one line: {err}");
    err
}

#[test]
fn heartbeat_settings_that_would_make_workers_flap_are_refused() {
    // Suspect at half the timeout (1.5 s) with a heartbeat every 2 s: refused.
    let out = septet_env(&["tracker", "--listen", "127.0.0.1:0", "--heartbeat-timeout", "3"], &[]);
    let err = one_error_line(&out, 2);
    assert!(err.contains("--heartbeat-timeout 3 is too short for --heartbeat-interval 2"), "{err}");
    assert!(err.contains("pass --heartbeat-timeout 5") && err.contains("--heartbeat-interval of at most 1.2"), "{err}");
    // Half the timeout only just above the interval: no room for a late heartbeat.
    let out = septet_env(
        &["tracker", "--listen", "127.0.0.1:0", "--heartbeat-interval", "1", "--heartbeat-timeout", "2.2"],
        &[],
    );
    let err = one_error_line(&out, 2);
    assert!(err.contains("pass --heartbeat-timeout 2.5"), "{err}");
    // What the error suggests is accepted: the tracker starts and serves.
    for flags in [
        ["--heartbeat-interval", "2", "--heartbeat-timeout", "5"],
        ["--heartbeat-interval", "1.2", "--heartbeat-timeout", "3"],
    ] {
        let (tracker, addr) = tracker_process("127.0.0.1:0", &flags);
        let _procs = Procs(vec![tracker]);
        assert!(peers_json(&addr.to_string()).is_empty(), "{flags:?}");
    }
}

#[test]
fn septet_encrypt_is_the_environment_form_of_encrypt() {
    let hold = dead_addr();
    let dead = hold.to_string();
    let multiply = ["multiply", "--tracker", &dead, "--random", "8,8,8"];
    // Without a secret, --encrypt is a usage error: so is SEPTET_ENCRYPT=1.
    for value in ["1", "true", "yes", "on"] {
        let err = one_error_line(&septet_env(&multiply, &[("SEPTET_ENCRYPT", value)]), 2);
        assert!(err.contains("--encrypt needs a cluster secret"), "SEPTET_ENCRYPT={value}: {err}");
    }
    // Off: the command goes on to the (absent) tracker instead.
    for value in ["0", "false", "no", "off"] {
        let err = one_error_line(&septet_env(&multiply, &[("SEPTET_ENCRYPT", value)]), 1);
        assert!(err.contains("could not reach the tracker"), "SEPTET_ENCRYPT={value}: {err}");
    }
    let err = one_error_line(&septet_env(&multiply, &[("SEPTET_ENCRYPT", "maybe")]), 2);
    assert!(err.contains("SEPTET_ENCRYPT") || err.contains("maybe"), "{err}");
    // Servers read it too.
    let err = one_error_line(&septet_env(&["tracker", "--listen", "127.0.0.1:0"], &[("SEPTET_ENCRYPT", "1")]), 2);
    assert!(err.contains("--encrypt needs a cluster secret"), "{err}");
}

/// GETs `path` from the HTTP endpoint at `addr`; the response, headers and body.
fn http_get(addr: &str, path: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    text
}

#[test]
fn demo_serves_its_trackers_metrics_with_http_and_says_what_grid_over_local_means() {
    use std::io::BufRead;
    let mut demo = Command::new(septet_bin())
        .args(["demo", "--n", "1536", "--http", "127.0.0.1:0"])
        .env_remove("SEPTET_ENCRYPT")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = std::io::BufReader::new(demo.stderr.take().unwrap());
    let mut lines = stderr.lines().map(Result::unwrap);
    // "septet demo tracker: metrics at http://ADDR/metrics, status page at http://ADDR/"
    let addr = lines
        .by_ref()
        .find_map(|l| l.split("metrics at http://").nth(1).map(|rest| rest.split('/').next().unwrap().to_string()))
        .expect("the demo says where its metrics are");
    // Fetched while the demo's job runs (its local check alone takes a while).
    let metrics = http_get(&addr, "/metrics");
    assert!(metrics.starts_with("HTTP/1.1 200"), "{metrics}");
    assert!(metrics.contains("septet_tracker_"), "{metrics}");
    let page = http_get(&addr, "/");
    assert!(page.starts_with("HTTP/1.1 200") && page.contains("<html"), "{page}");
    let rest: Vec<String> = lines.collect();
    let out = demo.wait_with_output().unwrap();
    assert!(out.status.success(), "{rest:?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("grid/local") && stdout.contains("grid/local is the grid job's time"), "{stdout}");
    assert!(rest.iter().any(|l| l.contains("shut down cleanly")), "{rest:?}");
    // A non-loopback --http is refused before anything starts.
    let err = one_error_line(&septet_env(&["demo", "--n", "8", "--http", "0.0.0.0:0"], &[]), 2);
    assert!(err.contains("refusing to serve HTTP on 0.0.0.0:0"), "{err}");
}

#[test]
fn command_line_errors_are_one_line_that_says_what_to_do() {
    // No arguments: one line, whose usage names --b too.
    let err = one_error_line(&septet_env(&["multiply"], &[]), 2);
    assert!(err.contains("--tracker") && err.contains("--a A.npy --b B.npy") && err.contains("--random"), "{err}");
    // An address without a port.
    let err = one_error_line(&septet_env(&["peers", "--tracker", "localhost"], &[]), 2);
    assert!(err.contains("expected HOST:PORT") && err.contains("7700"), "{err}");
    // Nobody listening: is the tracker running, and where it listens by default.
    let hold = dead_addr();
    let dead = hold.to_string();
    for args in [&["peers", "--tracker", &dead][..], &["multiply", "--tracker", &dead, "--random", "8,8,8"]] {
        let err = one_error_line(&septet_env(args, &[]), 1);
        assert!(err.contains(&format!("could not reach the tracker at {dead}")), "{err}");
        assert!(err.contains("is `septet tracker` running there?") && err.contains("127.0.0.1:7700"), "{err}");
    }
    // release without a token: say to pass it, before connecting anywhere.
    let err = one_error_line(&septet_env(&["release", "--tracker", &dead, "3"], &[]), 2);
    assert!(err.contains("pass --token"), "{err}");
    // secret --out into a missing directory; a missing secret file.
    let scratch = Scratch::new("cli-secret-files");
    let nowhere = scratch.path("no-such-dir").join("key");
    let err = one_error_line(&septet_env(&["secret", "--out", nowhere.to_str().unwrap()], &[]), 2);
    assert!(err.contains("cannot write the secret to") && err.contains("is not a directory"), "{err}");
    assert!(err.contains("mkdir -p"), "{err}");
    let missing = scratch.path("missing.key");
    let err =
        one_error_line(&septet_env(&["peers", "--tracker", &dead, "--secret-file", missing.to_str().unwrap()], &[]), 2);
    assert!(
        err.contains("the secret file") && err.contains("does not exist") && err.contains("septet secret"),
        "{err}"
    );
}

#[test]
fn a_worker_on_loopback_with_a_tracker_elsewhere_is_warned() {
    use std::io::BufRead;
    // 192.0.2.1 (TEST-NET-1) is never a host here: the worker only tries to reach it.
    let mut worker = Command::new(septet_bin())
        .args(["worker", "--tracker", "192.0.2.1:7700", "--warm-up", "0"])
        .env_remove("SEPTET_SECRET_FILE")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = worker.stderr.take().unwrap();
    let _procs = Procs(vec![worker]);
    // Read on a thread: a worker that never warns keeps running (and its
    // stderr open), so the wait for the line is bounded.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.starts_with("warning:") {
                let _ = tx.send(line);
            }
        }
    });
    let warning = rx.recv_timeout(Duration::from_secs(60)).expect("a warning line");
    assert!(
        warning.contains("loopback") && warning.contains("192.0.2.1:7700") && warning.contains("--listen"),
        "{warning}"
    );
}

#[test]
fn lease_waits_stay_out_of_the_rates_and_an_unservable_request_says_why() {
    let (_procs, tracker) = grid();
    // More slots than the whole grid has: said while waiting, with the fix.
    let out = septet_env(&["lease", "--tracker", &tracker, "--count", "100", "--max-wait", "5"], &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("the grid has only 7 slots (7 workers not gone) and this request needs 100"), "{err}");
    assert!(err.contains(&format!("septet worker --tracker {tracker}")), "{err}");
    // A request the grid can serve, queued behind a held lease, says nothing
    // of the kind. (Held long enough that the job still waits however long
    // the check that the lease is in force takes on a loaded machine.)
    let first = Command::new(septet_bin())
        .args(["lease", "--tracker", &tracker, "--hold", "4"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let _first = Procs(vec![first]);
    for _ in 0..300 {
        if peers_json(&tracker).iter().all(|r| r["in_use"] == 1) {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let out = septet_env(&["multiply", "--tracker", &tracker, "--random", "96,80,64", "--json", "--check"], &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("waiting: position 1") && !err.contains("the grid has only"), "{err}");
    let s: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let (total, wait, job) =
        (s["total_s"].as_f64().unwrap(), s["lease_wait_s"].as_f64().unwrap(), s["job_s"].as_f64().unwrap());
    assert!(wait > 0.5, "it waited for the held lease: {s}");
    assert!((total - wait - job).abs() < 1e-9, "job time is the total less the wait: {s}");
    let flops = 2.0 * 96.0 * 80.0 * 64.0;
    let gflops = s["gflops"].as_f64().unwrap();
    assert!((gflops - flops / job / 1e9).abs() <= 1e-9 * gflops.max(1.0), "GFLOP/s over the job time: {s}");
    let bytes = s["bytes_sent"].as_f64().unwrap() + s["bytes_received"].as_f64().unwrap();
    assert!((s["throughput_gbps"].as_f64().unwrap() - bytes / job / 1e9).abs() < 1e-9, "{s}");
    let check = &s["check"];
    let ratio = job / check["local_s"].as_f64().unwrap();
    assert!((check["grid_over_local"].as_f64().unwrap() - ratio).abs() <= 1e-9 * ratio, "{s}");
}

/// `demo --depth 2` starts 49 workers, runs one job on all of them (seven
/// groups of seven) and says so in its JSON; a depth other than 1 or 2, or
/// too few workers for the depth, is refused before anything starts.
#[test]
fn demo_two_levels_deep_runs_on_49_workers() {
    let out = septet_env(&["demo", "--depth", "2", "--n", "300", "--json"], &[]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(summary["depth"], 2, "{summary}");
    assert_eq!(summary["plan"], "relay", "{summary}");
    assert!(summary["check"]["max_rel_error"].as_f64().unwrap() < 1e-12, "{summary}");
    let slots = summary["relay"]["slots"].as_array().unwrap();
    let mut peers = std::collections::HashSet::new();
    for s in slots {
        for sub in s["delegated"]["slots"].as_array().unwrap() {
            assert_eq!(sub["done"], true, "{s}");
            peers.insert(sub["peer_id"].as_u64().unwrap());
        }
    }
    assert_eq!(peers.len(), 49, "{summary}");
    let err = one_error_line(&septet_env(&["demo", "--depth", "2", "--workers", "20"], &[]), 2);
    assert!(err.contains("at least 49 workers"), "{err}");
    let out = septet_env(&["demo", "--depth", "3"], &[]);
    assert_eq!(out.status.code(), Some(2), "{}", String::from_utf8_lossy(&out.stderr));
}
