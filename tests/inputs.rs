//! `septet multiply` refuses inputs holding NaN or ±inf before it contacts
//! the tracker (exit 2, one line naming the file and the first such
//! element), unless `--verify off`. The "tracker" is a listener the test
//! owns, so it sees whether the process ever tried to connect.

mod common;

use std::io::ErrorKind;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

use common::septet_bin;
use ndarray::Array2;
use ndarray_npy::{write_npy, WritableElement};

fn tmp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("septet-inputs-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

fn npy<T: WritableElement>(name: &str, x: &Array2<T>) -> String {
    let path = tmp(name);
    write_npy(&path, x).unwrap();
    path.display().to_string()
}

/// A listener that accepts nothing: connections attempts queue in its
/// backlog, where [`connected`] finds them.
fn fake_tracker() -> (TcpListener, String) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    (listener, addr)
}

/// Whether anyone connected to `listener`.
fn connected(listener: &TcpListener) -> bool {
    match listener.accept() {
        Ok(_) => true,
        Err(e) if e.kind() == ErrorKind::WouldBlock => false,
        Err(e) => panic!("accept: {e}"),
    }
}

fn multiply(tracker: &str, a: &str, b: &str, extra: &[&str]) -> Output {
    Command::new(septet_bin())
        .args(["multiply", "--tracker", tracker, "--a", a, "--b", b, "--peer-timeout", "1"])
        .args(extra)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn refused(out: &Output, path: &str, element: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
    assert!(stderr.starts_with(&format!("error: {path}: element {element};")), "{stderr}");
    assert!(stderr.contains("--verify off"), "says how to go ahead anyway: {stderr}");
}

#[test]
fn a_nan_in_a_is_refused_before_the_tracker_is_contacted() {
    let (listener, tracker) = fake_tracker();
    let mut a = Array2::<f64>::ones((4, 5));
    a[[2, 3]] = f64::NAN;
    a[[3, 0]] = f64::INFINITY;
    let (a, b) = (npy("nan-a.npy", &a), npy("ones-b.npy", &Array2::<f64>::ones((5, 3))));
    refused(&multiply(&tracker, &a, &b, &[]), &a, "(2, 3) is NaN");
    assert!(!connected(&listener), "the refusal came after connecting to the tracker");
}

#[test]
fn a_negative_infinity_in_b_is_refused_in_f32_too() {
    let (listener, tracker) = fake_tracker();
    let mut b = Array2::<f32>::ones((3, 2));
    b[[0, 1]] = f32::NEG_INFINITY;
    let (a, b) = (npy("ones-a32.npy", &Array2::<f32>::ones((2, 3))), npy("ninf-b32.npy", &b));
    refused(&multiply(&tracker, &a, &b, &[]), &b, "(0, 1) is -inf");
    assert!(!connected(&listener), "the refusal came after connecting to the tracker");
}

#[test]
fn with_verify_off_non_finite_inputs_go_on_to_the_tracker() {
    let (listener, tracker) = fake_tracker();
    let mut a = Array2::<f64>::ones((2, 2));
    a[[1, 1]] = f64::NAN;
    let (a, b) = (npy("nan-a-unchecked.npy", &a), npy("ones-b-unchecked.npy", &Array2::<f64>::ones((2, 2))));
    let out = multiply(&tracker, &a, &b, &["--verify", "off"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    // Past the check it connects; the listener never answers the
    // handshake, so the job fails on the tracker instead (exit 1).
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains(&tracker) && !stderr.contains("element"), "{stderr}");
    assert!(connected(&listener), "--verify off went ahead to the tracker");
}
