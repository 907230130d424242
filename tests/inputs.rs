//! `septet multiply` refuses inputs holding NaN or ±inf before it contacts
//! the tracker (exit 2, one line naming the file and the first such
//! element), unless `--verify off`. The "tracker" is a listener the test
//! owns, so it sees whether the process ever tried to connect.

mod common;

use std::io::ErrorKind;
use std::net::TcpListener;
use std::process::{Command, Output, Stdio};

use common::{septet_bin, Scratch};
use ndarray::Array2;
use ndarray_npy::{write_npy, WritableElement};

fn npy<T: WritableElement>(dir: &Scratch, name: &str, x: &Array2<T>) -> String {
    let path = dir.path(name);
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
    let dir = Scratch::new("inputs-nan");
    let (listener, tracker) = fake_tracker();
    let mut a = Array2::<f64>::ones((4, 5));
    a[[2, 3]] = f64::NAN;
    a[[3, 0]] = f64::INFINITY;
    let (a, b) = (npy(&dir, "nan-a.npy", &a), npy(&dir, "ones-b.npy", &Array2::<f64>::ones((5, 3))));
    refused(&multiply(&tracker, &a, &b, &[]), &a, "(2, 3) is NaN");
    assert!(!connected(&listener), "the refusal came after connecting to the tracker");
}

#[test]
fn a_negative_infinity_in_b_is_refused_in_f32_too() {
    let dir = Scratch::new("inputs-ninf");
    let (listener, tracker) = fake_tracker();
    let mut b = Array2::<f32>::ones((3, 2));
    b[[0, 1]] = f32::NEG_INFINITY;
    let (a, b) = (npy(&dir, "ones-a32.npy", &Array2::<f32>::ones((2, 3))), npy(&dir, "ninf-b32.npy", &b));
    refused(&multiply(&tracker, &a, &b, &[]), &b, "(0, 1) is -inf");
    assert!(!connected(&listener), "the refusal came after connecting to the tracker");
}

#[test]
fn with_verify_off_non_finite_inputs_go_on_to_the_tracker() {
    let dir = Scratch::new("inputs-unchecked");
    let (listener, tracker) = fake_tracker();
    let mut a = Array2::<f64>::ones((2, 2));
    a[[1, 1]] = f64::NAN;
    let (a, b) =
        (npy(&dir, "nan-a-unchecked.npy", &a), npy(&dir, "ones-b-unchecked.npy", &Array2::<f64>::ones((2, 2))));
    let out = multiply(&tracker, &a, &b, &["--verify", "off"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    // Past the check it connects; the listener never answers the
    // handshake, so the job fails on the tracker instead (exit 1).
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains(&tracker) && !stderr.contains("element"), "{stderr}");
    assert!(connected(&listener), "--verify off went ahead to the tracker");
}

/// Runs `multiply` on A and B and checks it is refused before the tracker
/// is contacted: exit 2, one line that contains every one of `needles`.
fn refused_with(a: &str, b: &str, extra: &[&str], needles: &[&str]) {
    let (listener, tracker) = fake_tracker();
    let out = multiply(&tracker, a, b, extra);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
    assert!(stderr.starts_with("error: "), "{stderr}");
    for needle in needles {
        assert!(stderr.contains(needle), "{needle:?} in {stderr}");
    }
    assert!(!connected(&listener), "the refusal came after connecting to the tracker");
}

#[test]
fn input_errors_say_what_to_do() {
    let dir = Scratch::new("inputs-hints");
    let a = npy(&dir, "a.npy", &Array2::<f64>::ones((4, 5)));
    let b = npy(&dir, "b.npy", &Array2::<f64>::ones((5, 3)));
    // An integer array: how to convert it.
    let ints = npy(&dir, "ints.npy", &Array2::<i64>::ones((5, 3)));
    refused_with(&a, &ints, &[], &[&ints, "<i8", "astype(np.float64)"]);
    // f64 with f32: the rule and the conversion.
    let b32 = npy(&dir, "b32.npy", &Array2::<f32>::ones((5, 3)));
    refused_with(&a, &b32, &[], &[&b32, "A and B must have one element type", "astype(np.float64)"]);
    // --dtype that does not match the files.
    refused_with(&a, &b, &["--dtype", "f32"], &[&a, "--dtype must match the files"]);
    // Swapped operands: both files named, and the fix.
    refused_with(&b, &a, &[], &["shape mismatch", "were they swapped?", &format!("--a {a} --b {b}")]);
    // Shapes that fit neither way: both files named.
    let odd = npy(&dir, "odd.npy", &Array2::<f64>::ones((6, 2)));
    refused_with(&a, &odd, &[], &[&format!("--a {a}, --b {odd}"), "A's columns (5) must equal B's rows (6)"]);
    // C into a directory that does not exist: refused before the job.
    let out = dir.path("no-such-dir").join("c.npy");
    refused_with(&a, &b, &["--out", out.to_str().unwrap()], &["cannot write C there", "is not a directory"]);
}
