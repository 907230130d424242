//! A grid of network namespaces on one bridge, for tests that need a real
//! network between the tracker, the workers and the requester.
//!
//! Every host is a network namespace with one veth link to a bridge in a
//! separate "switch" namespace, so nothing touches the root namespace's
//! networking. Hosts: `tr` (tracker, `.1`), `rq` (requester, `.2`), `cl`
//! (a second client, `.3`) and workers `w0`, `w1`, ... (`.10`, `.11`, ...)
//! on a private /24. Each link is shaped with tbf on both ends (netem is not
//! assumed). Names carry the test process's pid and a per-process counter;
//! [`NetGrid`]'s Drop kills every process in its namespaces and deletes
//! them, also on panic. Namespaces left behind by a crashed run (whose pid
//! is gone) are removed by the next run.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Prefix of every namespace a test grid makes: `stn<pid>x<k>-<host>`.
const PREFIX: &str = "stn";
/// Port the tracker listens on inside its namespace.
const TRACKER_PORT: u16 = 7700;

/// One grid at a time per test process: the machine is small and a grid is
/// a dozen processes.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());
static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// A grid of namespaces; see the module docs.
pub struct NetGrid {
    prefix: String,
    net: String,
    workers: usize,
    dir: PathBuf,
    secret: PathBuf,
    namespaces: Vec<String>,
    children: Vec<(String, Child)>,
    /// A second tracker host, `tm`, for a second cluster.
    second: bool,
    /// Behind a NAT: `tm` and the workers from this index on sit on a
    /// second network (`net_b`), reached through router `rt`, which
    /// masquerades their outgoing connections and drops new incoming ones.
    nat: Option<usize>,
    net_b: String,
    /// `rq` sits behind a NAT of its own too (router `rt2`, network
    /// `net_c`): neither it nor the workers behind `rt` can dial the other.
    nat_rq: bool,
    net_c: String,
    /// Processes run with `SEPTET_ENCRYPT=1`.
    encrypt: bool,
    /// The first NAT maps every connection to a random port.
    symmetric: bool,
    _turn: MutexGuard<'static, ()>,
}

/// Runs `ip ARGS`, returning stderr on failure.
fn ip(args: &[&str]) -> Result<(), String> {
    run_tool("ip", args)
}

fn run_tool(tool: &str, args: &[&str]) -> Result<(), String> {
    let out =
        Command::new(tool).args(args).stdin(Stdio::null()).output().map_err(|e| format!("cannot run {tool}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("`{tool} {}` failed: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim()))
    }
}

/// Pids of the processes in namespace `ns`.
fn ns_pids(ns: &str) -> Vec<i32> {
    Command::new("ip")
        .args(["netns", "pids", ns])
        .stderr(Stdio::null())
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).split_whitespace().filter_map(|p| p.parse().ok()).collect())
        .unwrap_or_default()
}

/// Kills every process in `ns` and deletes it.
fn destroy_ns(ns: &str) {
    for _ in 0..3 {
        let pids = ns_pids(ns);
        if pids.is_empty() {
            break;
        }
        for pid in pids {
            // SAFETY: kill(2) has no memory-safety preconditions.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = ip(&["netns", "del", ns]);
}

fn netns_names() -> Vec<String> {
    Command::new("ip")
        .args(["netns", "list"])
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .filter_map(|l| l.split_whitespace().next())
                .map(String::from)
                .collect()
        })
        .unwrap_or_default()
}

/// Whether `name` (`stn<pid>x...`) belongs to a test process that is gone.
fn stale(name: &str) -> bool {
    let Some((pid, _)) = name.strip_prefix(PREFIX).and_then(|r| r.split_once('x')) else { return false };
    let Ok(pid) = pid.parse::<u32>() else { return false };
    pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists()
}

/// Removes the namespaces and log directories of earlier test runs whose
/// process is gone (killed before its Drop ran).
fn sweep_stale() {
    for ns in netns_names() {
        if stale(&ns) {
            destroy_ns(&ns);
        }
    }
    let tmp = std::env::temp_dir();
    for entry in std::fs::read_dir(&tmp).into_iter().flatten().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.strip_prefix("septet-").is_some_and(stale) {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// Says on stderr that the running test is skipped, and why. Written to the
/// process's stderr directly, not through `eprintln!` (which the test
/// harness captures and shows only for failures), so every run shows it:
/// a skipped test passes, and must not pass silently.
fn skipped(reason: &str) {
    use std::io::Write;
    let test = std::thread::current().name().unwrap_or("a network-namespace test").to_string();
    let _ = writeln!(std::io::stderr(), "skipped: {test}: {reason} (see docs/netns.md)");
}

/// Why network-namespace grids cannot run here, if they cannot.
fn unsupported(probe: &str) -> Option<String> {
    // SAFETY: geteuid(2) has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("needs root (with ip(8), tc(8) and network namespaces)".into());
    }
    for tool in ["ip", "tc"] {
        if Command::new(tool).arg("-V").stdout(Stdio::null()).stderr(Stdio::null()).status().is_err() {
            return Some(format!("needs {tool}(8) (Debian's iproute2)"));
        }
    }
    // Try the whole recipe once: a namespace, a veth pair inside it, a bridge, tbf.
    let r = ip(&["netns", "add", probe])
        .and_then(|_| ip(&["-n", probe, "link", "add", "br0", "type", "bridge"]))
        .and_then(|_| ip(&["-n", probe, "link", "add", "va", "type", "veth", "peer", "name", "vb"]))
        .and_then(|_| ip(&["-n", probe, "link", "set", "va", "master", "br0"]))
        .and_then(|_| {
            run_tool(
                "ip",
                &[
                    "netns", "exec", probe, "tc", "qdisc", "add", "dev", "va", "root", "tbf", "rate", "1gbit", "burst",
                    "256kb", "latency", "50ms",
                ],
            )
        });
    let _ = ip(&["netns", "del", probe]);
    r.err().map(|e| format!("no network namespaces with veth, bridge and tbf here ({e})"))
}

impl NetGrid {
    /// Builds a grid of `workers` worker hosts plus `tr`, `rq` and `cl`,
    /// every link shaped to `rate` (tc syntax: "1gbit", "40mbit"). Starts no
    /// process. None, after writing one "skipped: TEST: <reason>" line to stderr, where
    /// namespaces are not available (not root, no ip/tc, no netns support).
    pub fn new(workers: usize, rate: &str) -> Option<NetGrid> {
        Self::new_with(workers, rate, false, None, false)
    }

    /// As [`NetGrid::new`], plus a host `tm` for a second cluster's tracker.
    pub fn new_federated(workers: usize, rate: &str) -> Option<NetGrid> {
        Self::new_with(workers, rate, true, None, false)
    }

    /// As [`NetGrid::new_federated`], with `tm` and the workers from
    /// `inside` on behind a NAT (see the `nat` field); None also where
    /// nft(8) is missing.
    pub fn new_nat(workers: usize, inside: usize, rate: &str) -> Option<NetGrid> {
        Self::new_nat_with(workers, inside, rate, false)
    }

    fn new_nat_with(workers: usize, inside: usize, rate: &str, symmetric: bool) -> Option<NetGrid> {
        if Command::new("nft").arg("-v").stdout(Stdio::null()).stderr(Stdio::null()).status().is_err() {
            skipped("needs nft(8) (Debian's nftables) for the NAT");
            return None;
        }
        Self::new_with(workers, rate, true, Some(inside), symmetric)
    }

    /// As [`NetGrid::new_nat`], with `rq` behind a second NAT (router
    /// `rt2`, same rules): its links to the workers behind the first one
    /// can only be made through a tracker both can reach (`tr`). Both NATs
    /// keep a connection's port for every destination, so the two ends
    /// can punch through them — unless `symmetric`, when the first NAT
    /// picks a random port for every connection, as some do.
    pub fn new_double_nat(workers: usize, inside: usize, rate: &str, symmetric: bool) -> Option<NetGrid> {
        let mut grid = Self::new_nat_with(workers, inside, rate, symmetric)?;
        grid.nat_rq = true;
        grid.build_second_nat(rate).unwrap_or_else(|e| panic!("building the second NAT: {e}"));
        Some(grid)
    }

    fn new_with(workers: usize, rate: &str, second: bool, nat: Option<usize>, symmetric: bool) -> Option<NetGrid> {
        let turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
        let pid = std::process::id();
        let k = COUNTER.fetch_add(1, Ordering::SeqCst);
        let prefix = format!("{PREFIX}{pid}x{k}");
        if let Some(reason) = unsupported(&format!("{prefix}-probe")) {
            skipped(&reason);
            return None;
        }
        sweep_stale();
        let net = format!("10.{}.{}", 200 + pid % 50, (pid / 50 + k as u32) % 250);
        let net_b = format!("172.{}.{}", 16 + pid % 16, (pid / 16 + k as u32) % 250);
        let net_c = format!("192.168.{}", (pid + k as u32) % 250);
        let dir = std::env::temp_dir().join(format!("septet-{prefix}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let secret = dir.join("secret");
        let mut grid = NetGrid {
            prefix,
            net,
            workers,
            dir,
            secret,
            namespaces: Vec::new(),
            children: Vec::new(),
            second,
            nat,
            net_b,
            nat_rq: false,
            net_c,
            encrypt: false,
            symmetric,
            _turn: turn,
        };
        // On failure, Drop removes whatever was made.
        grid.build(rate).unwrap_or_else(|e| panic!("building the namespace grid: {e}"));
        let out =
            Command::new(env!("CARGO_BIN_EXE_septet")).args(["secret", "--out"]).arg(&grid.secret).output().unwrap();
        assert!(out.status.success(), "septet secret: {}", String::from_utf8_lossy(&out.stderr));
        Some(grid)
    }

    fn build(&mut self, rate: &str) -> Result<(), String> {
        let switches = if self.nat.is_some() { vec!["sw", "sw2"] } else { vec!["sw"] };
        for sw in &switches {
            let sw = self.ns(sw);
            ip(&["netns", "add", &sw])?;
            self.namespaces.push(sw.clone());
            ip(&["-n", &sw, "link", "set", "lo", "up"])?;
            ip(&["-n", &sw, "link", "add", "br0", "type", "bridge"])?;
            ip(&["-n", &sw, "link", "set", "br0", "up"])?;
        }
        for host in self.hosts() {
            let ns = self.ns(&host);
            ip(&["netns", "add", &ns])?;
            self.namespaces.push(ns.clone());
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
            self.plug(&host, &self.switch_of(&host), "eth0", &self.addr(&host))?;
            self.shape(&host, rate);
        }
        if self.nat.is_some() {
            self.build_router()?;
        }
        Ok(())
    }

    /// Links `host`'s `dev` to `switch`'s bridge, with address `addr`/24.
    /// The veth is made in the switch namespace with its peer straight in
    /// the host's: nothing ever appears in the root namespace.
    fn plug(&self, host: &str, switch: &str, dev: &str, addr: &str) -> Result<(), String> {
        let (sw, ns) = (self.ns(switch), self.ns(host));
        let port = format!("v-{host}{}", if dev == "eth0" { "" } else { dev });
        ip(&["-n", &sw, "link", "add", &port, "type", "veth", "peer", "name", dev, "netns", &ns])?;
        ip(&["-n", &sw, "link", "set", &port, "master", "br0"])?;
        ip(&["-n", &sw, "link", "set", &port, "up"])?;
        ip(&["-n", &ns, "addr", "add", &format!("{addr}/24"), "dev", dev])?;
        ip(&["-n", &ns, "link", "set", dev, "up"])
    }

    /// The router between the two networks: forwards, masquerades what
    /// leaves the inside, drops new connections toward it. Inside hosts
    /// route everything through it; outside hosts route the inside network
    /// to it (so a dial inward is dropped silently, as by a real NAT).
    fn build_router(&mut self) -> Result<(), String> {
        let (net_b, inside): (String, Vec<String>) =
            (self.net_b.clone(), self.hosts().into_iter().filter(|h| self.inside(h)).collect());
        self.nat_router("rt", "sw2", &net_b, 254, &inside, self.symmetric)
    }

    /// Moves `rq` behind router `rt2` on network `net_c` (see
    /// [`NetGrid::new_double_nat`]).
    fn build_second_nat(&mut self, rate: &str) -> Result<(), String> {
        let sw = self.ns("sw3");
        ip(&["netns", "add", &sw])?;
        self.namespaces.push(sw.clone());
        ip(&["-n", &sw, "link", "set", "lo", "up"])?;
        ip(&["-n", &sw, "link", "add", "br0", "type", "bridge"])?;
        ip(&["-n", &sw, "link", "set", "br0", "up"])?;
        // rq leaves the outside network for net_c.
        let rq = self.ns("rq");
        ip(&["-n", &rq, "link", "del", "eth0"])?;
        self.plug("rq", "sw3", "eth0", &self.addr("rq"))?;
        self.shape("rq", rate);
        let net_c = self.net_c.clone();
        self.nat_router("rt2", "sw3", &net_c, 253, &["rq".to_string()], false)
    }

    /// Router `name`: `.LAST` on the outside network and on `inside_net`
    /// (behind switch `inside_switch`, where the `inside` hosts are). Like
    /// most NATs, it drops connections from outside — to the inside and to
    /// itself — unless they answer one from inside; it keeps a
    /// connection's source port where it can, or with `random` maps every
    /// connection to a random one (a "symmetric" NAT).
    fn nat_router(
        &mut self,
        name: &str,
        inside_switch: &str,
        inside_net: &str,
        last: u8,
        inside: &[String],
        random: bool,
    ) -> Result<(), String> {
        let rt = self.ns(name);
        ip(&["netns", "add", &rt])?;
        self.namespaces.push(rt.clone());
        ip(&["-n", &rt, "link", "set", "lo", "up"])?;
        let (out_ip, in_ip) = (format!("{}.{last}", self.net), format!("{inside_net}.{last}"));
        self.plug(name, "sw", "eth0", &out_ip)?;
        self.plug(name, inside_switch, "eth1", &in_ip)?;
        run_tool("ip", &["netns", "exec", &rt, "sysctl", "-qw", "net.ipv4.ip_forward=1"])?;
        let rules = format!(
            "table ip septet_nat {{
  chain post {{
    type nat hook postrouting priority 100; policy accept;
    ip saddr {inside_net}.0/24 oifname \"eth0\" masquerade{random}
  }}
}}
table inet septet_fw {{
  chain inward {{
    type filter hook forward priority 0; policy accept;
    iifname \"eth0\" ct state new drop
  }}
  chain to_me {{
    type filter hook input priority 0; policy accept;
    iifname \"eth0\" ct state new drop
  }}
}}
",
            random = if random { " random" } else { "" }
        );
        let file = self.dir.join(format!("{name}.nft"));
        std::fs::write(&file, rules).map_err(|e| e.to_string())?;
        run_tool("ip", &["netns", "exec", &rt, "nft", "-f", file.to_str().unwrap()])?;
        let outside: Vec<String> = self.hosts().into_iter().filter(|h| self.switch_of(h) == "sw").collect();
        for host in inside {
            ip(&["-n", &self.ns(host), "route", "add", "default", "via", &in_ip])?;
        }
        for host in outside {
            ip(&["-n", &self.ns(&host), "route", "add", &format!("{inside_net}.0/24"), "via", &out_ip])?;
        }
        Ok(())
    }

    /// Whether `host` sits behind the NAT.
    fn inside(&self, host: &str) -> bool {
        let Some(from) = self.nat else { return false };
        host == "tm" || host.strip_prefix('w').and_then(|i| i.parse::<usize>().ok()).is_some_and(|i| i >= from)
    }

    /// The switch `host` hangs off.
    fn switch_of(&self, host: &str) -> String {
        if self.inside(host) {
            "sw2"
        } else if self.nat_rq && host == "rq" {
            "sw3"
        } else {
            "sw"
        }
        .to_string()
    }

    /// Every host: `tr`, `rq`, `cl`, `w0`...
    pub fn hosts(&self) -> Vec<String> {
        let mut h: Vec<String> = ["tr", "rq", "cl"].iter().map(|s| s.to_string()).collect();
        if self.second {
            h.push("tm".into());
        }
        h.extend((0..self.workers).map(|i| format!("w{i}")));
        h
    }

    /// The namespace of `host` (or `sw`, the switch).
    pub fn ns(&self, host: &str) -> String {
        format!("{}-{host}", self.prefix)
    }

    /// The private address of `host`.
    pub fn addr(&self, host: &str) -> String {
        let last = match host {
            "tr" => 1,
            "rq" => 2,
            "cl" => 3,
            "tm" if self.second => 4,
            w => {
                let i: usize =
                    w.strip_prefix('w').and_then(|i| i.parse().ok()).unwrap_or_else(|| panic!("no host {w}"));
                assert!(i < self.workers, "no host {w}");
                10 + i
            }
        };
        let net = if self.inside(host) {
            &self.net_b
        } else if self.nat_rq && host == "rq" {
            &self.net_c
        } else {
            &self.net
        };
        format!("{net}.{last}")
    }

    /// The tracker's `host:port`.
    pub fn tracker_addr(&self) -> String {
        self.tracker_addr_of("tr")
    }

    /// The `host:port` of the tracker on `host` (`tr` or `tm`).
    pub fn tracker_addr_of(&self, host: &str) -> String {
        format!("{}:{TRACKER_PORT}", self.addr(host))
    }

    /// Starts a tracker on `host` (its log: `tracker-HOST`).
    pub fn start_tracker_at(&mut self, host: &str, args: &[&str]) {
        let mut c = self.command(host, "tracker");
        c.arg("--listen").arg(self.tracker_addr_of(host)).arg("--secret-file").arg(&self.secret).args(args);
        self.spawn(&format!("tracker-{host}"), c);
    }

    /// Starts workers `range` (one slot, one thread each, plus `args`),
    /// registered with the tracker on `tracker_host`, and waits until that
    /// tracker lists them alive.
    pub fn start_workers_at(&mut self, range: std::ops::Range<usize>, tracker_host: &str, args: &[&str]) {
        let n = range.len();
        for i in range {
            self.spawn_worker(i, tracker_host, args.iter().map(|a| a.to_string()).collect());
        }
        let ok = self.wait_for_at(tracker_host, tracker_host, Duration::from_secs(20), |peers| {
            peers.iter().filter(|p| p["state"] == "alive").count() >= n
        });
        assert!(ok, "the workers did not all register with {tracker_host} within 20 s");
    }

    /// Starts worker `i` (one slot, one thread, plus `args`) registering
    /// with the tracker on `tracker_host`.
    fn spawn_worker(&mut self, i: usize, tracker_host: &str, args: Vec<String>) {
        let host = format!("w{i}");
        let mut c = self.command(&host, "worker");
        c.arg("--tracker")
            .arg(self.tracker_addr_of(tracker_host))
            .arg("--listen")
            .arg(format!("{}:0", self.addr(&host)))
            .arg("--secret-file")
            .arg(&self.secret)
            .args(["--slots", "1", "--threads", "1"])
            .args(args);
        self.spawn(&host, c);
    }

    /// `septet peers --json ARGS` against the tracker on `tracker_host`, from `host`.
    pub fn peers_at(&self, host: &str, tracker_host: &str, args: &[&str]) -> Option<Vec<serde_json::Value>> {
        let mut c = self.command(host, "peers");
        c.arg("--tracker").arg(self.tracker_addr_of(tracker_host)).arg("--secret-file").arg(&self.secret);
        let out = c.arg("--json").args(args).output().unwrap();
        if !out.status.success() {
            return None;
        }
        serde_json::from_slice(&out.stdout).ok()
    }

    /// [`NetGrid::wait_for`] against the tracker on `tracker_host`.
    pub fn wait_for_at(
        &self,
        host: &str,
        tracker_host: &str,
        limit: Duration,
        pred: impl Fn(&[serde_json::Value]) -> bool,
    ) -> bool {
        let start = Instant::now();
        loop {
            if self.peers_at(host, tracker_host, &[]).is_some_and(|p| pred(&p)) {
                return true;
            }
            if start.elapsed() > limit {
                return false;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Kills the process started as `name` (and waits for it).
    pub fn kill(&mut self, name: &str) {
        if let Some((_, c)) = self.children.iter_mut().find(|(n, _)| n == name) {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// The cluster secret file every command gets.
    pub fn secret(&self) -> &Path {
        &self.secret
    }

    /// The directory holding the secret and the processes' logs.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// `ip netns exec NS septet SUB ARGS...`, nothing else added.
    pub fn command(&self, host: &str, sub: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.ns(host), env!("CARGO_BIN_EXE_septet"), sub]).stdin(Stdio::null());
        if self.encrypt {
            c.env("SEPTET_ENCRYPT", "1");
        }
        c
    }

    /// Every process started from now on encrypts its links
    /// (`SEPTET_ENCRYPT=1`).
    pub fn encrypt(&mut self) {
        self.encrypt = true;
    }

    /// `septet SUB --tracker T --secret-file F ARGS...` in `host`'s namespace,
    /// for the client subcommands (peers, lease, release, multiply).
    pub fn client(&self, host: &str, sub: &str, args: &[&str]) -> Command {
        let mut c = self.command(host, sub);
        c.arg("--tracker").arg(self.tracker_addr()).arg("--secret-file").arg(&self.secret).args(args);
        c
    }

    /// Runs a client subcommand to completion.
    pub fn run(&self, host: &str, sub: &str, args: &[&str]) -> Output {
        self.client(host, sub, args).output().unwrap()
    }

    /// Starts `cmd` as a child that Drop kills; stdout and stderr go to
    /// `<dir>/<name>.log`.
    pub fn spawn(&mut self, name: &str, mut cmd: Command) {
        let log = std::fs::File::create(self.dir.join(format!("{name}.log"))).unwrap();
        let child = cmd.stdout(log.try_clone().unwrap()).stderr(log).spawn().unwrap();
        self.children.push((name.to_string(), child));
    }

    /// Starts a client subcommand in the background, its stdout piped
    /// (for `septet lease --json`); Drop kills it.
    pub fn spawn_client(&mut self, name: &str, host: &str, sub: &str, args: &[&str]) {
        let mut c = self.client(host, sub, args);
        let log = std::fs::File::create(self.dir.join(format!("{name}.log"))).unwrap();
        let child = c.stdout(log.try_clone().unwrap()).stderr(log).spawn().unwrap();
        self.children.push((name.to_string(), child));
    }

    /// The log of a process started by [`NetGrid::spawn`].
    pub fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.join(format!("{name}.log"))).unwrap_or_default()
    }

    /// Every worker's log, one after another under a heading: for a failed
    /// assertion's message, so a flaky run can be read after the fact.
    pub fn worker_logs(&self) -> String {
        (0..self.workers)
            .map(|i| format!("--- w{i} ({}):\n{}", self.addr(&format!("w{i}")), self.log(&format!("w{i}"))))
            .collect()
    }

    /// Starts the tracker in `tr` with extra `args` (e.g. `--lease-ttl 3`).
    pub fn start_tracker(&mut self, args: &[&str]) {
        let mut c = self.command("tr", "tracker");
        c.arg("--listen").arg(self.tracker_addr()).arg("--secret-file").arg(&self.secret).args(args);
        self.spawn("tracker", c);
    }

    /// Starts every worker (one slot, one thread each, plus `args`) and waits
    /// until the tracker lists them all alive.
    pub fn start_workers(&mut self, args: &[&str]) {
        self.start_workers_with(|_| args.iter().map(|a| a.to_string()).collect());
    }

    /// Starts the workers, worker `i` with the extra arguments `args(i)`.
    pub fn start_workers_with(&mut self, args: impl Fn(usize) -> Vec<String>) {
        for i in 0..self.workers {
            self.spawn_worker(i, "tr", args(i));
        }
        let n = self.workers;
        let ok = self.wait_for("tr", Duration::from_secs(20), |peers| {
            peers.iter().filter(|p| p["state"] == "alive").count() >= n
        });
        assert!(ok, "the workers did not all register within 20 s; tracker log:\n{}", self.log("tracker"));
    }

    /// The tracker's peer table as seen from `host` (`septet peers --json`);
    /// None if it could not be had (e.g. the link is cut).
    pub fn peers(&self, host: &str) -> Option<Vec<serde_json::Value>> {
        self.peers_at(host, "tr", &[])
    }

    /// Polls the peer table from `host` every 100 ms until `pred` holds or
    /// `limit` passes; whether it held.
    pub fn wait_for(&self, host: &str, limit: Duration, pred: impl Fn(&[serde_json::Value]) -> bool) -> bool {
        self.wait_for_at(host, "tr", limit, pred)
    }

    /// Takes `host`'s link down at its switch port: the host keeps its
    /// address and sockets and simply stops hearing anything.
    pub fn cut(&self, host: &str) {
        ip(&["-n", &self.ns(&self.switch_of(host)), "link", "set", &format!("v-{host}"), "down"]).unwrap();
    }

    /// Brings `host`'s link back up.
    pub fn heal(&self, host: &str) {
        ip(&["-n", &self.ns(&self.switch_of(host)), "link", "set", &format!("v-{host}"), "up"]).unwrap();
    }

    /// Shapes `host`'s link to `rate` in both directions (tbf on both ends).
    pub fn shape(&self, host: &str, rate: &str) {
        self.shape_links(host, rate, true, "256kb", "50ms");
    }

    /// Shapes what `host` sends alone (its uplink) to `rate`, with a
    /// shallow buffer (16 KiB and 2 ms: its flows lose packets rather
    /// than queue behind each other, so what it receives is acknowledged
    /// as fast as ever).
    pub fn shape_up_shallow(&self, host: &str, rate: &str) {
        self.shape_links(host, rate, false, "16kb", "2ms");
    }

    fn shape_links(&self, host: &str, rate: &str, down_too: bool, burst: &str, latency: &str) {
        let down = down_too.then(|| (self.ns(&self.switch_of(host)), format!("v-{host}")));
        for (ns, dev) in down.into_iter().chain([(self.ns(host), "eth0".to_string())]) {
            run_tool(
                "ip",
                &[
                    "netns", "exec", &ns, "tc", "qdisc", "replace", "dev", &dev, "root", "tbf", "rate", rate, "burst",
                    burst, "latency", latency,
                ],
            )
            .unwrap();
        }
    }

    /// Whether the child started as `name` is still running.
    pub fn running(&mut self, name: &str) -> bool {
        self.children.iter_mut().find(|(n, _)| n == name).is_some_and(|(_, c)| matches!(c.try_wait(), Ok(None)))
    }
}

impl Drop for NetGrid {
    fn drop(&mut self) {
        for (_, child) in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        // Anything else that ran in the namespaces (clients run to
        // completion, strays), then the namespaces themselves.
        for ns in self.namespaces.iter().rev() {
            destroy_ns(ns);
        }
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        } else {
            eprintln!("netns grid {}: logs kept in {}", self.prefix, self.dir.display());
        }
    }
}
