//! Helpers shared by the integration tests: in-process tracker and workers
//! on real TCP sockets bound to 127.0.0.1:0, and the `septet` binary.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::Duration;

use septet_client::TrackerClient;
use septet_common::Role;
use septet_tracker::{Tracker, TrackerConfig};
use septet_worker::WorkerConfig;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// A running in-process server.
pub struct Server {
    pub addr: SocketAddr,
    pub stop: CancellationToken,
    pub task: JoinHandle<()>,
}

impl Server {
    /// Stops the server and waits until its task (and so all its connections) ended.
    pub async fn shutdown(self) {
        self.stop.cancel();
        tokio::time::timeout(Duration::from_secs(15), self.task)
            .await
            .expect("server did not shut down in time")
            .expect("server task panicked");
    }
}

/// Shuts the workers down (they deregister), then the tracker.
pub async fn teardown(tracker: Server, workers: Vec<Server>) {
    for w in workers {
        w.shutdown().await;
    }
    tracker.shutdown().await;
}

/// A tracker on 127.0.0.1:0 plus a handle on its state.
pub async fn spawn_tracker(config: TrackerConfig) -> (Server, Tracker) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let tracker = Tracker::new(config).unwrap();
    let stop = CancellationToken::new();
    let (t, s) = (tracker.clone(), stop.clone());
    let task = tokio::spawn(async move {
        septet_tracker::server::serve(t, listener, async move { s.cancelled().await }).await.unwrap();
    });
    (Server { addr, stop, task }, tracker)
}

/// A worker on 127.0.0.1:0, registered with `tracker` when given.
pub async fn spawn_worker(tracker: Option<SocketAddr>, slots: u32) -> Server {
    spawn_worker_with(WorkerConfig { tracker: tracker.map(|a| a.to_string()), slots, threads: 1, ..Default::default() })
        .await
}

/// A worker with an explicit configuration.
pub async fn spawn_worker_with(config: WorkerConfig) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stop = CancellationToken::new();
    let s = stop.clone();
    let task = tokio::spawn(async move {
        septet_worker::run(listener, config, async move { s.cancelled().await }).await.unwrap();
    });
    Server { addr, stop, task }
}

/// `n` workers with `slots` slots each.
pub async fn spawn_workers(tracker: SocketAddr, n: usize, slots: u32) -> Vec<Server> {
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(spawn_worker(Some(tracker), slots).await);
    }
    out
}

/// A tracker with `n` one-slot workers, all alive; its state for the
/// test to read.
pub async fn grid_of(n: usize) -> (Server, Tracker, Vec<Server>) {
    let (tracker, state) = spawn_tracker(TrackerConfig::default()).await;
    let workers = spawn_workers(tracker.addr, n, 1).await;
    wait_for_alive_slots(tracker.addr, n as u32).await;
    (tracker, state, workers)
}

/// A client connection to the tracker.
pub async fn client(tracker: SocketAddr) -> TrackerClient {
    TrackerClient::connect(tracker, Role::Client, Duration::from_secs(5)).await.unwrap()
}

/// A connection to the tracker that opens as a worker's (only those may
/// register, heartbeat or deregister).
pub async fn registrar(tracker: SocketAddr) -> TrackerClient {
    TrackerClient::connect(tracker, Role::Worker, Duration::from_secs(5)).await.unwrap()
}

/// Polls until `tracker` has `alive` alive slots (or panics after 10 s).
pub async fn wait_for_alive_slots(tracker: SocketAddr, alive: u32) {
    let mut c = client(tracker).await;
    for _ in 0..1000 {
        let (_, rows) = c.peers().await.unwrap();
        let n: u32 = rows.iter().filter(|r| r.state == "alive").map(|r| r.slots).sum();
        if n == alive {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the grid never reached {alive} alive slots");
}

/// A test's scratch directory under the system's temp dir, made empty when
/// created and removed when dropped (however the test ends), so runs leave
/// no `septet-*` directories behind.
pub struct Scratch(std::path::PathBuf);

impl Scratch {
    /// `septet-TEST-PID-N`: unique to this test within this run (N counts
    /// the scratch directories this process made).
    pub fn new(test: &str) -> Self {
        static MADE: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = MADE.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("septet-{test}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }

    /// The directory.
    pub fn dir(&self) -> &std::path::Path {
        &self.0
    }

    /// `name` inside the directory.
    pub fn path(&self, name: &str) -> std::path::PathBuf {
        self.0.join(name)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Path of the built `septet` binary.
pub fn septet_bin() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_BIN_EXE_septet"))
}

/// Child processes killed when the test ends, however it ends.
#[derive(Default)]
pub struct Procs(pub Vec<std::process::Child>);

impl Drop for Procs {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Spawns `command` with no stdin or stdout, and its stderr piped: the
/// child, and its stderr to read.
pub fn with_stderr(command: &mut std::process::Command) -> (std::process::Child, std::process::ChildStderr) {
    let mut child = command
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    (child, stderr)
}

/// Starts `septet tracker --listen LISTEN EXTRA..` and returns it with the
/// address it bound, read from its "listening on" line on stderr — so
/// `127.0.0.1:0` gives each test a port of its own, with no window in which
/// another test could take it (as there would be between probing a free port and the
/// tracker binding it). The rest of its stderr is drained on a thread, so
/// the tracker never blocks on a full pipe.
pub fn tracker_process(listen: &str, extra: &[&str]) -> (std::process::Child, SocketAddr) {
    tracker_process_logged(listen, extra, None)
}

/// [`tracker_process`], also copying the tracker's stderr to `log`.
pub fn tracker_process_logged(
    listen: &str,
    extra: &[&str],
    log: Option<&std::path::Path>,
) -> (std::process::Child, SocketAddr) {
    use std::io::{BufRead, Write};
    let mut log = log.map(|p| std::fs::File::create(p).unwrap());
    let mut command = std::process::Command::new(septet_bin());
    command.args(["tracker", "--listen", listen]).args(extra);
    let (child, stderr) = with_stderr(&mut command);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut tx = Some(tx);
        for line in std::io::BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if let Some(log) = &mut log {
                let _ = writeln!(log, "{line}");
            }
            if let Some(addr) = line.split("listening on ").nth(1) {
                if let Some(tx) = tx.take() {
                    let _ = tx.send(addr.trim().to_string());
                }
            }
        }
    });
    let addr = rx.recv_timeout(Duration::from_secs(30)).expect("the tracker never said where it listens");
    (child, addr.parse().unwrap())
}

/// A loopback address nobody listens on, for as long as the value lives: a
/// socket is bound to it but never listens, so connections to it are refused
/// and the kernel gives its port to no other test running alongside (an
/// address that was merely free a moment ago was once taken by a parallel
/// test's worker, and a "nobody listening" check met that worker instead).
pub struct DeadAddr {
    pub addr: SocketAddr,
    _socket: std::os::fd::OwnedFd,
}

impl std::fmt::Display for DeadAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.addr.fmt(f)
    }
}

pub fn dead_addr() -> DeadAddr {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    // SAFETY: plain socket calls on a descriptor this function owns; the
    // structures passed are sized as the calls expect.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
        let socket = OwnedFd::from_raw_fd(fd);
        let mut sin: libc::sockaddr_in = std::mem::zeroed();
        sin.sin_family = libc::AF_INET as libc::sa_family_t;
        sin.sin_addr.s_addr = u32::from(std::net::Ipv4Addr::LOCALHOST).to_be();
        let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
        let rc = libc::bind(socket.as_raw_fd(), &sin as *const libc::sockaddr_in as *const libc::sockaddr, len);
        assert_eq!(rc, 0, "bind: {}", std::io::Error::last_os_error());
        let mut len = len;
        let rc =
            libc::getsockname(socket.as_raw_fd(), &mut sin as *mut libc::sockaddr_in as *mut libc::sockaddr, &mut len);
        assert_eq!(rc, 0, "getsockname: {}", std::io::Error::last_os_error());
        let addr = SocketAddr::from((std::net::Ipv4Addr::LOCALHOST, u16::from_be(sin.sin_port)));
        DeadAddr { addr, _socket: socket }
    }
}
