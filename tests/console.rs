//! `septet peer` driven as a script drives it: real tracker, worker and
//! peer processes sharing a secret, commands on the peer's piped stdin,
//! answers read from its stdout and one-line errors from its stderr.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Output, Stdio};
use std::sync::mpsc::{channel, Receiver};
use std::time::{Duration, Instant};

use common::{septet_bin, tracker_process, Procs, Scratch};
use ndarray::Array2;
use ndarray_npy::{read_npy, write_npy};
use septet_common::strassen::naive_matmul;

/// Generous: these are waits for things that happen, not timings.
const WAIT: Duration = Duration::from_secs(120);

fn septet(args: &[&str]) -> Output {
    Command::new(septet_bin()).args(args).stdin(Stdio::null()).output().unwrap()
}

fn peers_json(tracker: &str, secret: &str) -> Vec<serde_json::Value> {
    let out = septet(&["peers", "--tracker", tracker, "--json", "--secret-file", secret]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// A tracker and `workers` worker processes with the secret in `dir`.
fn grid(dir: &Path, workers: usize) -> (Procs, String, String) {
    let secret = dir.join("secret");
    let secret = secret.to_str().unwrap().to_string();
    assert!(septet(&["secret", "--out", &secret]).status.success());
    let (tracker, addr) = tracker_process("127.0.0.1:0", &["--secret-file", &secret]);
    let addr = addr.to_string();
    let mut procs = Procs(vec![tracker]);
    for _ in 0..workers {
        procs.0.push(
            Command::new(septet_bin())
                .args(["worker", "--tracker", &addr, "--secret-file", &secret, "--threads", "1", "--warm-up", "0"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        );
    }
    wait_alive(&addr, &secret, workers);
    (procs, addr, secret)
}

fn wait_alive(tracker: &str, secret: &str, n: usize) {
    let deadline = Instant::now() + WAIT;
    while peers_json(tracker, secret).iter().filter(|r| r["state"] == "alive").count() < n {
        assert!(Instant::now() < deadline, "{n} peers did not register");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A `septet peer` process and its output, line by line.
struct Peer {
    child: Child,
    stdin: Option<ChildStdin>,
    out: Receiver<String>,
    err: Receiver<String>,
    /// Every line read so far, for failure messages.
    seen: Vec<String>,
}

impl Peer {
    fn start(tracker: &str, secret: &str, extra: &[&str]) -> Peer {
        Peer::spawn(peer_command(tracker, secret, extra))
    }

    fn spawn(mut command: Command) -> Peer {
        let mut child = command.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
        let lines = |r: Box<dyn std::io::Read + Send>| {
            let (tx, rx) = channel();
            std::thread::spawn(move || {
                for line in BufReader::new(r).lines() {
                    let Ok(line) = line else { break };
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            });
            rx
        };
        let out = lines(Box::new(child.stdout.take().unwrap()));
        let err = lines(Box::new(child.stderr.take().unwrap()));
        let stdin = child.stdin.take();
        let mut peer = Peer { child, stdin, out, err, seen: Vec::new() };
        peer.expect_err("Type `help`");
        peer
    }

    fn send(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("stdin is open");
        writeln!(stdin, "{line}").unwrap();
        stdin.flush().unwrap();
    }

    fn expect(&mut self, on_stderr: bool, want: &str) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            let rx = if on_stderr { &self.err } else { &self.out };
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left.min(Duration::from_millis(200))) {
                Ok(line) => {
                    self.seen.push(format!("{}{line}", if on_stderr { "[err] " } else { "" }));
                    if line.contains(want) {
                        return line;
                    }
                }
                Err(_) if Instant::now() < deadline => {}
                Err(_) => panic!("no line with {want:?}; seen:\n{}", self.seen.join("\n")),
            }
        }
    }

    /// The next stdout line that contains `want` (earlier ones are skipped).
    fn expect_out(&mut self, want: &str) -> String {
        self.expect(false, want)
    }

    /// The next stderr line that contains `want`.
    fn expect_err(&mut self, want: &str) -> String {
        self.expect(true, want)
    }

    /// Sends `quit` (or closes stdin) and waits for a clean exit.
    fn finish(mut self, quit: bool) {
        if quit {
            self.send("quit");
        }
        drop(self.stdin.take());
        let deadline = Instant::now() + WAIT;
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            assert!(Instant::now() < deadline, "the peer did not exit");
            std::thread::sleep(Duration::from_millis(50));
        };
        self.expect_err("deregistered and stopped");
        assert!(status.success(), "exit {status}; seen:\n{}", self.seen.join("\n"));
    }

    fn interrupt(&self) {
        // SAFETY: kill(2) on our own child's pid has no memory effects.
        let rc = unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        assert_eq!(rc, 0);
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// `septet peer` on the grid at `tracker`, with one slot.
fn peer_command(tracker: &str, secret: &str, extra: &[&str]) -> Command {
    let mut command = Command::new(septet_bin());
    command
        .args(["peer", "--tracker", tracker, "--secret-file", secret, "--threads", "1", "--warm-up", "0"])
        .args(extra);
    command
}

/// Small integers, so every product is exact.
fn ints(rows: usize, cols: usize, salt: usize) -> Array2<f64> {
    Array2::from_shape_fn((rows, cols), |(i, j)| ((i * 7 + j * 3 + salt) % 11) as f64 - 5.0)
}

fn own_id(line: &str) -> u64 {
    // "peer 7  serving on ..."
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[test]
fn a_script_loads_multiplies_on_a_held_lease_saves_and_quits() {
    let dir = Scratch::new("console-script");
    let (_procs, tracker, secret) = grid(dir.dir(), 7);
    let (a, b) = (ints(130, 70, 1), ints(70, 90, 2));
    let (a_path, b_path) = (dir.path("a.npy"), dir.path("b.npy"));
    write_npy(&a_path, &a).unwrap();
    write_npy(&b_path, &b).unwrap();
    let (c_path, c2_path, report) = (dir.path("c.npy"), dir.path("c2.npy"), dir.path("job.html"));
    let mut peer = Peer::start(&tracker, &secret, &[]);

    peer.send("help");
    peer.expect_out("multiply A B into C");
    peer.send("status");
    let own = own_id(&peer.expect_out("serving on"));
    peer.expect_out("no lease held");
    peer.send(&format!("load A {}", a_path.display()));
    peer.expect_out("A = 130×70 f64");
    peer.send(&format!("load B {}", b_path.display()));
    peer.expect_out("B = 70×90 f64");

    // Every error is one line, and the console goes on.
    for (command, error) in [
        ("bogus", "unknown command \"bogus\""),
        ("multiply A Z into C", "no matrix named Z"),
        ("multiply B A into C", "shape mismatch: B is 70×90 and A is 130×70"),
        ("load Q /nonexistent/q.npy", "/nonexistent/q.npy: cannot open"),
        ("make M 0x3", "both sizes must be positive"),
        ("make M 100000x100000", "more than"),
        ("make 9 2x2", "not a matrix name"),
        ("make quit 2x2", "is a command"),
        ("lease 3", "exactly 7 slots"),
        ("release", "no lease is held"),
        ("report A job.html", "A was not made by a job"),
        ("save Z out.npy", "no matrix named Z"),
        ("multiply A B", "usage: multiply A B into C"),
    ] {
        peer.send(command);
        let line = peer.expect_err("error: ");
        assert!(line.contains(error), "{command}: {line}");
    }

    // A job on a lease taken for it, then on a lease held across jobs.
    peer.send("multiply A B into C");
    let summary = peer.expect_out("C = A·B");
    assert!(summary.contains("130×70 · 70×90 f64") && summary.contains("every product verified"), "{summary}");
    peer.send(&format!("save C {}", c_path.display()));
    peer.expect_out("wrote C");
    let expected = naive_matmul(a.view(), b.view());
    assert_eq!(read_npy::<_, Array2<f64>>(&c_path).unwrap(), expected);

    peer.send("need 7 peers");
    let held = peer.expect_out("lease ");
    let lease_id: u64 = held.split_whitespace().nth(1).unwrap().parse().unwrap();
    let mut slots = Vec::new();
    for _ in 0..7 {
        let line = peer.expect_out("  M");
        slots.push(line.split_whitespace().nth(2).unwrap().parse::<u64>().unwrap());
    }
    assert!(!slots.contains(&own), "own slot {own} in the job's slots {slots:?}");
    peer.send("mul A B into C2");
    let summary = peer.expect_out("C2 = A·B");
    assert!(summary.contains(&format!("lease {lease_id},")), "the held lease: {summary}");
    peer.send(&format!("save C2 {}", c2_path.display()));
    peer.expect_out("wrote C2");
    assert_eq!(read_npy::<_, Array2<f64>>(&c2_path).unwrap(), expected);
    peer.send(&format!("report C2 {}", report.display()));
    peer.expect_out("wrote the report of C2");
    assert!(std::fs::read_to_string(&report).unwrap().contains("M7"));
    peer.send("status");
    peer.expect_out("products served 0");
    peer.expect_out(&format!("lease {lease_id} held"));
    peer.send("matrices");
    peer.expect_out(&format!("C2           130×90 f64  (C = A·B on lease {lease_id})"));

    // quit releases the held lease and deregisters.
    peer.finish(true);
    let rows = peers_json(&tracker, &secret);
    assert!(rows.iter().all(|r| r["in_use"] == 0), "{rows:?}");
    let row = rows.iter().find(|r| r["peer_id"] == own).unwrap();
    assert_eq!(row["state"], "gone", "{row:?}");
}

#[test]
fn own_slots_are_not_used_unless_asked() {
    let dir = Scratch::new("console-own");
    // Six workers and the peer: any lease of seven holds the peer's slot.
    let (_procs, tracker, secret) = grid(dir.dir(), 6);
    let mut peer = Peer::start(&tracker, &secret, &[]);
    peer.send("make A 40x30 seed 1");
    peer.send("make B 30x20 seed 2");
    peer.send("multiply A B into C");
    let line = peer.expect_err("error: ");
    assert!(line.contains("which this job avoids (its own), and no other slot is free"), "{line}");
    peer.send("lease");
    peer.expect_err("its own");
    peer.send("status");
    peer.expect_out("products served 0");
    peer.expect_out("no lease held");
    peer.finish(true);
    wait_in_use(&tracker, &secret, 0);

    // --serve-self: the peer computes a product of its own job.
    let mut peer = Peer::start(&tracker, &secret, &["--serve-self"]);
    peer.send("make A 40x30 seed 1");
    peer.send("make B 30x20 seed 2 f64");
    peer.send("multiply A B into C");
    peer.expect_out("C = A·B: 40×30 · 30×20 f64");
    peer.send("status");
    let status = peer.expect_out("products served");
    assert!(status.contains("own slots used by own jobs: yes"), "{status}");
    assert!(!status.contains("products served 0 "), "{status}");
    // The end of input quits like `quit`.
    peer.finish(false);
    wait_in_use(&tracker, &secret, 0);
}

fn wait_in_use(tracker: &str, secret: &str, n: u64) {
    let deadline = Instant::now() + WAIT;
    loop {
        let rows = peers_json(tracker, secret);
        if rows.iter().map(|r| r["in_use"].as_u64().unwrap()).sum::<u64>() == n {
            return;
        }
        assert!(Instant::now() < deadline, "in use never came to {n}: {rows:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn ctrl_c_leaves_the_lease_queue_and_the_console_goes_on() {
    let dir = Scratch::new("console-ctrlc");
    let (mut procs, tracker, secret) = grid(dir.dir(), 7);
    let mut peer = Peer::start(&tracker, &secret, &[]);
    wait_alive(&tracker, &secret, 8);
    // Someone else holds seven of the eight slots.
    let holder = Command::new(septet_bin())
        .args(["lease", "--tracker", &tracker, "--secret-file", &secret, "--hold", "600"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    procs.0.push(holder);
    wait_in_use(&tracker, &secret, 7);
    peer.send("lease");
    peer.expect_err("waiting: position 1 in the tracker's queue");
    peer.interrupt();
    peer.expect_err("interrupted while waiting for a lease; left the queue");
    peer.send("status");
    peer.expect_out("no lease held");
    // The holder goes; the queue is empty, so the next lease is granted.
    let mut holder = procs.0.pop().unwrap();
    holder.kill().unwrap();
    holder.wait().unwrap();
    wait_in_use(&tracker, &secret, 0);
    peer.send("lease");
    peer.expect_out("(7 slots)");
    // Ctrl-C while idle, with no terminal, quits cleanly: lease released,
    // worker deregistered, exit 0.
    peer.interrupt();
    peer.finish(false);
    wait_in_use(&tracker, &secret, 0);
}

#[test]
fn wrong_secret_is_one_line_and_a_nonzero_exit() {
    let dir = Scratch::new("console-secret");
    let (_procs, tracker, _secret) = grid(dir.dir(), 0);
    let other = dir.path("other");
    assert!(septet(&["secret", "--out", other.to_str().unwrap()]).status.success());
    let out = Command::new(septet_bin())
        .args(["peer", "--tracker", &tracker, "--secret-file", other.to_str().unwrap(), "--warm-up", "0"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error: ")).collect();
    assert_eq!(errors.len(), 1, "{stderr}");
    assert!(errors[0].contains("refused our cluster secret"), "{stderr}");
}

#[test]
fn a_lease_the_grid_cannot_serve_says_why_while_it_waits() {
    let dir = Scratch::new("console-unservable");
    let (_procs, tracker, secret) = grid(dir.dir(), 3);
    let mut peer = Peer::start(&tracker, &secret, &[]);
    wait_alive(&tracker, &secret, 4);
    peer.send("lease");
    peer.expect_err("waiting: position 1 in the tracker's queue");
    let line = peer.expect_err("the grid has only 4 slots");
    assert!(line.contains("this request needs 7") && line.contains("septet worker --tracker"), "{line}");
    peer.interrupt();
    peer.expect_err("interrupted while waiting for a lease; left the queue");
    peer.finish(true);
}

/// A command's output on a pseudo-terminal, as it comes (echo, prompts and
/// escape sequences included).
struct Terminal {
    child: Child,
    stdin: ChildStdin,
    output: std::sync::Arc<std::sync::Mutex<String>>,
    /// How much of `output` has been matched.
    read: usize,
}

impl Terminal {
    /// `command` on a pseudo-terminal that script(1) makes; `None` without script.
    fn start(command: &Command) -> Option<Terminal> {
        let mut line = format!("{:?}", command.get_program());
        for arg in command.get_args() {
            line.push(' ');
            line.push_str(&format!("{arg:?}"));
        }
        let mut script = Command::new("script");
        script.args(["-qfec", &line, "/dev/null"]).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::null());
        for (key, value) in command.get_envs() {
            if let Some(value) = value {
                script.env(key, value);
            }
        }
        let mut child = script.env("TERM", "xterm").spawn().ok()?;
        let output = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let mut out = child.stdout.take().unwrap();
        let sink = output.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n @ 1..) = std::io::Read::read(&mut out, &mut buf) {
                sink.lock().unwrap().push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        let stdin = child.stdin.take().unwrap();
        Some(Terminal { child, stdin, output, read: 0 })
    }

    /// Waits for `want` after what was matched before.
    fn expect(&mut self, want: &str) {
        let deadline = Instant::now() + WAIT;
        loop {
            {
                let output = self.output.lock().unwrap();
                if let Some(at) = output[self.read..].find(want) {
                    self.read += at + want.len();
                    return;
                }
                assert!(Instant::now() < deadline, "no {want:?} in:\n{output}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Types `keys` (a line ends with `\r`, as Enter sends it).
    fn type_keys(&mut self, keys: &str) {
        self.stdin.write_all(keys.as_bytes()).unwrap();
        self.stdin.flush().unwrap();
    }

    fn wait(mut self) {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                assert!(status.success(), "exit {status}:\n{}", self.output.lock().unwrap());
                return;
            }
            assert!(Instant::now() < deadline, "did not exit:\n{}", self.output.lock().unwrap());
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Terminal {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Piped stdin never reads or writes a history; on a terminal the console
/// loads `$XDG_STATE_HOME/septet/history` at start and saves it (0600) as
/// it goes, so the next session recalls the last one's commands.
#[test]
fn history_is_kept_on_a_terminal_and_never_for_piped_input() {
    let dir = Scratch::new("console-history");
    let (_procs, tracker, secret) = grid(dir.dir(), 0);
    let state = dir.path("state");
    let history = state.join("septet").join("history");
    let command = || {
        let mut command = peer_command(&tracker, &secret, &[]);
        command.env("XDG_STATE_HOME", &state).env("HOME", dir.dir());
        command
    };

    let mut peer = Peer::spawn(command());
    peer.send("status");
    peer.expect_out("products served");
    peer.finish(true);
    assert!(!state.exists(), "piped input wrote a history");

    let Some(mut term) = Terminal::start(&command()) else {
        eprintln!("skipped the terminal half: script(1) is not installed (util-linux)");
        return;
    };
    term.expect("septet> ");
    term.type_keys("make A 2x3\r");
    term.expect("A = random 2×3");
    term.expect("septet> ");
    term.type_keys("status\r");
    term.expect("products served");
    term.expect("septet> ");
    term.type_keys("quit\r");
    term.wait();
    let saved = std::fs::read_to_string(&history).unwrap();
    assert_eq!(saved.lines().collect::<Vec<_>>(), ["make A 2x3", "status", "quit"]);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&history).unwrap().permissions().mode() & 0o777, 0o600);
    }

    // The next session starts with it: two steps up is `status`.
    let mut term = Terminal::start(&command()).unwrap();
    term.expect("septet> ");
    term.type_keys("\x1b[A\x1b[A\r");
    term.expect("products served");
    term.expect("septet> ");
    term.type_keys("quit\r");
    term.wait();
    let saved = std::fs::read_to_string(&history).unwrap();
    assert_eq!(saved.lines().collect::<Vec<_>>(), ["make A 2x3", "status", "quit", "status", "quit"]);
}
