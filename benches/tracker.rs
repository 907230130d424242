//! Lease + release cycles through the real TCP tracker with 1,000 registered
//! peers of one slot each, by 1 and by 100 concurrent requesters (each on
//! its own connection) leasing 7 slots, and by 100 requesters leasing 49.
//! The tracker runs as `septet tracker` does, on a single-threaded
//! runtime, here on its own thread pinned to the last CPU; the requesters
//! share a one-worker runtime pinned to the first, so the load generator
//! never takes the tracker's core. (Unpinned, the kernel's wake-affine
//! placement often stacks the two ping-ponging threads on one CPU while the
//! other idles, and each then waits milliseconds for a turn.)
//!
//! Criterion measures cycles per second with every requester going back to
//! back (closed loop: the saturation throughput). A longer pass of each
//! kind then prints lease-latency percentiles, which criterion does not
//! report, per quarter second and pooled:
//! - closed loop — each requester starts its next cycle at once, so with 100
//!   requesters the latency is mostly their own queue (Little's law:
//!   100 / throughput);
//! - open loop at 10,000 cycles/s in all (7 slots only) — for five seconds,
//!   each requester starts cycles at Poisson-distributed times (independent
//!   users) whatever the replies do, so the latency is what a request meets
//!   at that load. The first half second is a warm-up, not timed: starting
//!   100 paced requesters at once stalls the load generator for tens of
//!   milliseconds (seen as late arrivals), and the burst that follows is the
//!   generator's.
//!
//! 100 leases of 7 fit in the 1,000 slots at once; leases of 49 do not: at
//! most 20 are in force and the other ~80 requests wait in the tracker's
//! slot queue, so the 49-slot pass (closed loop only: an open loop faster
//! than the grid turns leases over would only grow the queue) measures that
//! queue, and checks the tracker as it goes — it panics if
//! - the leases in force, as their requesters hold them from grant to
//!   release, ever hold a peer more times than it has slots (a double
//!   lease), or one lease holds a peer more times than that;
//! - a request is granted before one that was already in the queue when it
//!   was sent, or sooner than its reported queue position allows (FIFO):
//!   see [`Audit::check_fifo`].
//!
//! It also prints the longest wait and how many requests queued. Its
//! requesters hold each lease across one turn of their runtime (the 7-slot
//! passes release at once), so that holds overlap and a slot granted twice
//! can be seen.
//!
//! Before all that, a probe reports how often the machine itself ran slow
//! (both CPUs, 4 s), since those episodes decide the worst passes.
//!
//! A last group times the tracker's own work for one cycle (`Tracker::lease`
//! + `release` on the polars table, no sockets), alone and in batches of 100.
//!
//! `cargo bench --bench tracker`; `TRACKER_PASSES=7x100,49x100 cargo bench
//! --bench tracker -- tracker/lease_release/` runs only the passes over TCP
//! named there (`SLOTSxREQUESTERS`; all three by default:
//! `7x1,7x100,49x100`), and none of the in-process group.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use parking_lot::Mutex;
use rand::RngExt;
use septet_client::TrackerClient;
use septet_common::proto::{LeaseGrant, PeerId};
use septet_common::Role;
use septet_tracker::{Done, LeaseOutcome, Op, Tracker, TrackerConfig};
use tokio::net::TcpListener;
use tokio::runtime::Runtime;

const PEERS: u16 = 1000;
/// Slots each fake peer offers.
const SLOTS_PER_PEER: u32 = 1;
/// Cycles of the closed-loop latency pass of 7 slots, and of one whose
/// leases queue (each of those takes longer: it waits its turn for slots).
const CLOSED_CYCLES: u64 = 150_000;
const CLOSED_CYCLES_QUEUED: u64 = 30_000;
/// Total arrival rate of the open-loop passes.
const OPEN_LOOP_RATE: f64 = 10_000.0;

fn config() -> TrackerConfig {
    // The fake peers below never heartbeat; keep them alive for the run.
    TrackerConfig { heartbeat_timeout: Duration::from_secs(3600), ..TrackerConfig::default() }
}

/// A tracker serving on its own thread and runtime until dropped.
struct Grid {
    addr: std::net::SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Grid {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// CPUs this process may use, read before any thread is pinned (a pinned
/// thread, and every thread it spawns, sees only its own CPU).
static CPUS: std::sync::LazyLock<usize> =
    std::sync::LazyLock::new(|| std::thread::available_parallelism().map_or(1, usize::from));

/// Pins the calling thread to `cpu` (Linux; elsewhere, or with one CPU, a no-op).
fn pin_to(cpu: usize) {
    #[cfg(target_os = "linux")]
    if *CPUS > 1 {
        // SAFETY: a zeroed cpu_set_t is a valid empty set; CPU_SET stays in
        // bounds for cpu < CPU_SETSIZE; pid 0 means the calling thread.
        unsafe {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            libc::CPU_SET(cpu, &mut set);
            libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = cpu;
}

fn last_cpu() -> usize {
    *CPUS - 1
}

fn start(clients: &Runtime) -> Grid {
    let (addr_tx, addr_rx) = std::sync::mpsc::channel();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let thread = std::thread::Builder::new()
        .name("tracker".into())
        .spawn(move || {
            pin_to(last_cpu());
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async {
                let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
                addr_tx.send(listener.local_addr().unwrap()).unwrap();
                let shutdown = async {
                    let _ = stopped.await;
                };
                septet_tracker::server::run(listener, config(), shutdown).await.unwrap();
            });
        })
        .expect("spawning the tracker thread");
    let addr = addr_rx.recv().unwrap();
    clients.block_on(async {
        let mut c = TrackerClient::connect(addr, Role::Worker, Duration::from_secs(5)).await.unwrap();
        for i in 0..PEERS {
            c.register(format!("127.0.0.1:{}", 20_000 + i).parse().unwrap(), SLOTS_PER_PEER, 0).await.unwrap();
        }
    });
    Grid { addr, stop: Some(stop), thread: Some(thread) }
}

async fn requesters(addr: std::net::SocketAddr, n: usize) -> Vec<TrackerClient> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        out.push(TrackerClient::connect(addr, Role::Client, Duration::from_secs(5)).await.unwrap());
    }
    out
}

/// A set of passes over TCP: `requesters` clients each leasing `slots` at a time.
#[derive(Clone, Copy)]
struct Pass {
    slots: u32,
    requesters: usize,
}

impl Pass {
    /// The passes `TRACKER_PASSES` names (`SLOTSxREQUESTERS`, comma-separated),
    /// by default `7x1,7x100,49x100`.
    fn from_env() -> Vec<Pass> {
        let spec = std::env::var("TRACKER_PASSES").unwrap_or_else(|_| "7x1,7x100,49x100".into());
        let parse = |p: &str| -> Option<Pass> {
            let (slots, requesters) = p.trim().split_once('x')?;
            let pass = Pass { slots: slots.parse().ok()?, requesters: requesters.parse().ok()? };
            (pass.slots >= 1 && pass.slots <= SLOTS_PER_PEER * u32::from(PEERS) && pass.requesters >= 1).then_some(pass)
        };
        spec.split(',')
            .map(|p| parse(p).unwrap_or_else(|| panic!("TRACKER_PASSES: {p:?} is not SLOTSxREQUESTERS (e.g. 49x100)")))
            .collect()
    }

    /// Whether its leases cannot all be in force at once, so they queue:
    /// the passes that check FIFO order and double leases.
    fn queues(self) -> bool {
        u64::from(self.slots) * self.requesters as u64 > u64::from(SLOTS_PER_PEER) * u64::from(PEERS)
    }

    /// How it is named in ids and printouts: the 7-slot passes keep the
    /// names they had before other sizes ran (`tracker/lease_release/100`).
    fn label(self) -> String {
        if self.slots == 7 {
            self.requesters.to_string()
        } else {
            format!("{}_slots/{}", self.slots, self.requesters)
        }
    }
}

/// One lease request's timeline, as its requester saw it.
#[derive(Debug, Clone, Copy)]
struct Request {
    /// Just before the request was sent.
    sent: Instant,
    /// Just after its first reply (`Waiting`, or the grant) arrived: the
    /// request was in the tracker's queue by then.
    entered: Instant,
    /// Just after the grant arrived.
    granted: Instant,
    /// The queue position the tracker reported (`None`: granted at once).
    position: Option<u32>,
    /// The tracker numbers leases from 1 in the order it grants them.
    lease_id: u64,
}

/// What a pass whose leases queue checks as it runs: the peers the leases in
/// force hold, from each grant until just before its release is sent (so a
/// slot counted by two requesters at once was granted twice), and every
/// request's timeline for [`Audit::check_fifo`].
#[derive(Default)]
struct Audit {
    /// Per peer, the slots the leases in force hold on it; and how many
    /// leases are in force, and the most that were at once.
    held: Mutex<(HashMap<PeerId, u32>, usize, usize)>,
    requests: Mutex<Vec<Request>>,
}

/// What [`Audit::check_fifo`] found (it panics on a violation instead).
struct Fifo {
    requests: usize,
    queued: usize,
    max_position: u32,
    /// Pairs of requests of which one was in the queue before the other was
    /// sent: the pairs whose grant order is checked.
    ordered_pairs: u64,
    longest_wait: Duration,
}

impl Audit {
    /// Counts a grant's slots in; panics on a double lease.
    fn take(&self, slots: u32, grant: &LeaseGrant) {
        let id = grant.lease_id;
        let n = grant.peers.len();
        assert_eq!(n, slots as usize, "lease {id} holds {n} slots, not the {slots} asked for");
        let mut mine: HashMap<PeerId, u32> = HashMap::new();
        for p in &grant.peers {
            *mine.entry(p.peer_id).or_default() += 1;
        }
        if let Some((peer, n)) = mine.iter().find(|(_, n)| **n > SLOTS_PER_PEER) {
            panic!("double lease: lease {id} holds peer {peer} {n} times, but it has {SLOTS_PER_PEER} slot(s)");
        }
        let mut held = self.held.lock();
        let (by_peer, leases, most) = &mut *held;
        for (peer, n) in mine {
            let total = by_peer.entry(peer).or_default();
            *total += n;
            if *total > SLOTS_PER_PEER {
                panic!(
                    "double lease: with lease {id} just granted, the leases in force hold peer {peer} {total} times, \
                     but it has {SLOTS_PER_PEER} slot(s)"
                );
            }
        }
        *leases += 1;
        *most = (*most).max(*leases);
    }

    /// Counts a lease's slots out, just before its release is sent.
    fn give_back(&self, grant: &LeaseGrant) {
        let mut held = self.held.lock();
        let (by_peer, leases, _) = &mut *held;
        for p in &grant.peers {
            let n = by_peer.get_mut(&p.peer_id).expect("a held peer is counted");
            *n -= 1;
            if *n == 0 {
                by_peer.remove(&p.peer_id);
            }
        }
        *leases -= 1;
    }

    /// The most leases in force at once so far.
    fn most_in_force(&self) -> usize {
        self.held.lock().2
    }

    /// Checks that the tracker granted this pass's requests — all of the
    /// same size, none cancelled — in the order they entered its queue, and
    /// panics if not. The grant order is exact (lease ids); the order of
    /// entry is known where causality fixes it:
    /// - a request whose first reply had arrived before another was sent
    ///   entered the queue first, so it must have the smaller lease id;
    /// - a request told it waits at position p is, in FIFO order, the p-th
    ///   grant after the tracker said so — by which time at least the
    ///   grants that had reached their requesters before it was sent were
    ///   made — so its lease id is at least that count plus p.
    ///
    /// The first catches a request overtaken by a later one, the second one
    /// that overtook requests ahead of it. Also checks that the pass's
    /// leases are numbered without a gap: every grant reached its requester.
    fn check_fifo(&self) -> Fifo {
        let requests = std::mem::take(&mut *self.requests.lock());
        let n = requests.len();
        assert!(n > 0, "no lease requests recorded");
        let mut ids: Vec<u64> = requests.iter().map(|r| r.lease_id).collect();
        ids.sort_unstable();
        // Every lease granted before this pass has a smaller id.
        let before = ids[0] - 1;
        assert!(
            ids.windows(2).all(|w| w[1] == w[0] + 1),
            "the tracker granted leases during the pass that no requester received (lease ids {}..={} for {n} requests)",
            ids[0],
            ids[n - 1]
        );
        let mut by_entry: Vec<&Request> = requests.iter().collect();
        by_entry.sort_by_key(|r| r.entered);
        let mut by_send: Vec<&Request> = requests.iter().collect();
        by_send.sort_by_key(|r| r.sent);
        let (mut entered, mut ordered_pairs) = (0, 0u64);
        let mut latest: Option<&Request> = None;
        for s in &by_send {
            while entered < n && by_entry[entered].entered < s.sent {
                let r = by_entry[entered];
                if latest.is_none_or(|l| r.lease_id > l.lease_id) {
                    latest = Some(r);
                }
                entered += 1;
            }
            ordered_pairs += entered as u64;
            if let Some(r) = latest.filter(|r| r.lease_id > s.lease_id) {
                panic!(
                    "FIFO broken: a request sent {:?} after another had entered the tracker's queue (told position \
                     {:?}) was granted first: lease {} before lease {}",
                    s.sent.duration_since(r.entered),
                    r.position,
                    s.lease_id,
                    r.lease_id
                );
            }
        }
        let mut grants: Vec<Instant> = requests.iter().map(|r| r.granted).collect();
        grants.sort_unstable();
        for r in &requests {
            let Some(position) = r.position else { continue };
            let made = before + grants.partition_point(|g| *g < r.sent) as u64;
            if r.lease_id < made + u64::from(position) {
                panic!(
                    "FIFO broken: a request told it waits at position {position} became lease {}, but {made} leases \
                     had been granted before it was sent: it overtook {} requests ahead of it",
                    r.lease_id,
                    made + u64::from(position) - r.lease_id
                );
            }
        }
        Fifo {
            requests: n,
            queued: requests.iter().filter(|r| r.position.is_some()).count(),
            max_position: requests.iter().filter_map(|r| r.position).max().unwrap_or(0),
            ordered_pairs,
            longest_wait: requests.iter().map(|r| r.granted - r.sent).max().expect("n > 0"),
        }
    }
}

/// How the requesters pace their cycles.
#[derive(Clone, Copy)]
enum Load {
    /// `n` cycles split over the clients, each back to back.
    Closed(u64),
    /// Cycles at Poisson-distributed times at `rate` (cycles/s in all) for
    /// `warmup` and then `length`, only the latter timed; a client that falls
    /// behind starts its late cycles at once.
    Open { rate: f64, warmup: Duration, length: Duration },
}

/// Each timed lease's start and request-to-grant latency, from all requesters.
type Samples = Arc<Mutex<Vec<(Instant, Duration)>>>;

/// Runs lease+release cycles of `slots` over the clients. Returns the
/// cycles timed and the time they took; records each timed lease's start
/// time and request-to-grant latency when `latencies` is given, and checks
/// and records every lease with `audit` when given.
async fn cycles(
    clients: &mut Vec<TrackerClient>,
    slots: u32,
    load: Load,
    latencies: Option<Samples>,
    audit: Option<Arc<Audit>>,
) -> (u64, Duration) {
    let n = clients.len() as u64;
    let start = tokio::time::Instant::now();
    let mut tasks = Vec::new();
    for (i, mut c) in clients.drain(..).enumerate() {
        let latencies = latencies.clone();
        let audit = audit.clone();
        tasks.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            let mut next = start;
            let mut done = 0u64;
            loop {
                let timed = match load {
                    Load::Closed(total) => {
                        if done == total / n + u64::from((i as u64) < total % n) {
                            break;
                        }
                        true
                    }
                    Load::Open { rate, warmup, length } => {
                        let u: f64 = rand::rng().random_range(f64::EPSILON..1.0);
                        next += Duration::from_secs_f64(-u.ln() * n as f64 / rate);
                        if next > start + warmup + length {
                            break;
                        }
                        tokio::time::sleep_until(next).await;
                        next >= start + warmup
                    }
                };
                let t = Instant::now();
                let mut waiting = None;
                let grant = c.lease(slots, false, None, |position, _, _| waiting = Some((position, Instant::now())));
                let grant = grant.await.unwrap();
                let granted = Instant::now();
                if timed {
                    mine.push((t, granted - t));
                    done += 1;
                }
                if let Some(audit) = &audit {
                    audit.take(slots, &grant);
                    let (position, entered) = waiting.map_or((None, granted), |(p, at)| (Some(p), at));
                    let lease_id = grant.lease_id.0;
                    audit.requests.lock().push(Request { sent: t, entered, granted, position, lease_id });
                    // Hold the lease across a turn of the runtime, in which
                    // other requesters' grants arrive: without an await
                    // between grant and release, no two holds could overlap
                    // on the one-worker client runtime, and the double-lease
                    // check could never fail.
                    tokio::task::yield_now().await;
                    audit.give_back(&grant);
                }
                c.release(grant.lease_id).await.unwrap();
            }
            if let Some(l) = latencies {
                l.lock().extend(mine);
            }
            (c, done)
        }));
    }
    let mut total = 0;
    for t in tasks {
        let (c, done) = t.await.unwrap();
        clients.push(c);
        total += done;
    }
    let warmup = match load {
        Load::Closed(_) => Duration::ZERO,
        Load::Open { warmup, .. } => warmup,
    };
    (total, start.elapsed().saturating_sub(warmup))
}

/// Lease-latency percentile `p` (0..1) of `sorted`.
fn pct(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 * p) as usize).min(sorted.len() - 1)]
}

/// Runs one pass of `load` and prints its throughput and lease latencies:
/// the median over quarter-second windows (by request start) of each
/// window's p50 and p99, the share of windows whose p99 is within 2 ms, and
/// the pooled p50, p99, p99.9 and maximum. Windows, because a shared VM can have
/// episodes in which both CPUs run several times slower (see
/// [`slowdown_probe`]): every request in flight during one waits it out, so
/// the pooled tail is mostly the machine's, and the windows show what the
/// tracker does the rest of the time.
///
/// With `audit`, every lease is checked as it comes (see [`Audit`]) and the
/// pass's grant order afterwards; then it also prints what the FIFO check
/// covered and the longest wait.
fn measure(rt: &Runtime, clients: &mut Vec<TrackerClient>, pass: Pass, kind: &str, load: Load, audit: bool) {
    const WINDOW: Duration = Duration::from_millis(250);
    let latencies = Arc::new(Mutex::new(Vec::new()));
    let audit = audit.then(|| Arc::new(Audit::default()));
    let (total, elapsed) = rt.block_on(cycles(clients, pass.slots, load, Some(latencies.clone()), audit.clone()));
    let what = format!("{} {kind}", pass.label());
    let mut samples = std::mem::take(&mut *latencies.lock());
    samples.sort();
    let first = samples[0].0;
    let mut windows: Vec<Vec<Duration>> = Vec::new();
    for &(start, latency) in &samples {
        let w = (start.duration_since(first).as_nanos() / WINDOW.as_nanos()) as usize;
        windows.resize_with(windows.len().max(w + 1), Vec::new);
        windows[w].push(latency);
    }
    // A last window shorter than a tenth of the first says little; an empty
    // one (a pause in the load) has no percentiles.
    if windows.len() > 1 && windows.last().is_some_and(|w| w.len() * 10 < windows[0].len()) {
        windows.pop();
    }
    windows.retain(|w| !w.is_empty());
    let (mut p50s, mut p99s): (Vec<Duration>, Vec<Duration>) = windows
        .iter_mut()
        .map(|w| {
            w.sort();
            (pct(w, 0.50), pct(w, 0.99))
        })
        .unzip();
    let within = p99s.iter().filter(|d| **d <= Duration::from_millis(2)).count();
    p50s.sort();
    p99s.sort();
    let mut pooled: Vec<Duration> = samples.into_iter().map(|(_, l)| l).collect();
    pooled.sort();
    println!(
        "tracker/lease_release/{what}: {:.0} cycles/s; lease latency in {} windows of {WINDOW:?}: median p50 {:?}, \
         median p99 {:?} (p99 ≤ 2 ms in {within}); pooled p50 {:?}, p99 {:?}, p99.9 {:?}, max {:?}",
        total as f64 / elapsed.as_secs_f64(),
        p99s.len(),
        p50s[p50s.len() / 2],
        p99s[p99s.len() / 2],
        pct(&pooled, 0.50),
        pct(&pooled, 0.99),
        pct(&pooled, 0.999),
        pooled[pooled.len() - 1],
    );
    if let Some(audit) = audit {
        let fifo = audit.check_fifo();
        println!(
            "tracker/lease_release/{what}: FIFO held — {} requests, {} queued (up to position {}), {} pairs whose \
             order of entry was known granted in that order; no double lease, at most {} leases of {} in force; \
             longest wait {:?}",
            fifo.requests,
            fifo.queued,
            fifo.max_position,
            fifo.ordered_pairs,
            audit.most_in_force(),
            pass.slots,
            fifo.longest_wait,
        );
    }
}

/// How often this machine itself runs slow: a thread pinned to each CPU
/// does fixed slices of arithmetic for `length`; prints the share of 10 ms
/// windows in which a CPU got less than half, and less than a quarter, of
/// its median work done (what it found on the development VM is in
/// benches/README.md). A request in flight during a slow episode waits it
/// out whatever the tracker does, so when they fill more than 1 % of a pass
/// its pooled p99 is theirs.
fn slowdown_probe(length: Duration) {
    const WINDOW: Duration = Duration::from_millis(10);
    let windows = (length.as_nanos() / WINDOW.as_nanos()) as usize;
    let probes: Vec<_> = (0..*CPUS)
        .map(|cpu| {
            std::thread::spawn(move || {
                pin_to(cpu);
                let mut work = vec![0u32; windows];
                let start = Instant::now();
                let mut x = 1.0f64;
                loop {
                    let w = (start.elapsed().as_nanos() / WINDOW.as_nanos()) as usize;
                    if w >= windows {
                        break;
                    }
                    for _ in 0..2000 {
                        x = std::hint::black_box(x * 1.000_000_1 + 1e-9);
                    }
                    work[w] += 1;
                }
                work
            })
        })
        .collect();
    for (cpu, probe) in probes.into_iter().enumerate() {
        let work = probe.join().expect("probe thread");
        let mut sorted = work.clone();
        sorted.sort_unstable();
        let median = sorted[sorted.len() / 2];
        let below = |fraction: u32| work.iter().filter(|&&w| w < median / fraction).count();
        let (half, quarter) = (below(2), below(4));
        println!(
            "machine slowdowns, CPU {cpu}: of {windows} 10 ms windows, {half} ({:.1} %) below half speed, \
             {quarter} ({:.1} %) below a quarter",
            100.0 * half as f64 / windows as f64,
            100.0 * quarter as f64 / windows as f64,
        );
    }
}

fn over_tcp(c: &mut Criterion) {
    slowdown_probe(Duration::from_secs(4));
    pin_to(0);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .on_thread_start(|| pin_to(0))
        .enable_all()
        .build()
        .unwrap();
    let grid = start(&rt);
    let mut group = c.benchmark_group("tracker/lease_release");
    group.throughput(Throughput::Elements(1));
    group.measurement_time(Duration::from_secs(8));
    for pass in Pass::from_env() {
        let audit = pass.queues();
        let mut clients = rt.block_on(requesters(grid.addr, pass.requesters));
        group.bench_with_input(BenchmarkId::from_parameter(pass.label()), &pass, |b, pass| {
            b.iter_custom(|iters| {
                let check = audit.then(|| Arc::new(Audit::default()));
                let took = rt.block_on(cycles(&mut clients, pass.slots, Load::Closed(iters), None, check.clone())).1;
                if let Some(check) = check {
                    check.check_fifo();
                }
                took
            })
        });
        let closed = if audit { CLOSED_CYCLES_QUEUED } else { CLOSED_CYCLES };
        measure(&rt, &mut clients, pass, "closed-loop", Load::Closed(closed), audit);
        if !audit {
            let open =
                Load::Open { rate: OPEN_LOOP_RATE, warmup: Duration::from_millis(500), length: Duration::from_secs(5) };
            measure(&rt, &mut clients, pass, "open-loop at 10k/s", open, false);
        }
    }
    group.finish();
    drop(grid);
}

/// The tracker's own work per cycle: the polars queries and updates of a
/// lease of seven and its release, under the state lock, without sockets.
fn in_process(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let _guard = rt.enter();
    let tracker = Tracker::new(config()).unwrap();
    for i in 0..PEERS {
        tracker.register(&format!("127.0.0.1:{}", 20_000 + i), SLOTS_PER_PEER).unwrap();
    }
    let mut group = c.benchmark_group("tracker/in_process");
    group.throughput(Throughput::Elements(1));
    group.bench_function("lease_release", |b| {
        b.iter(|| match tracker.lease(7, 1, false).unwrap() {
            LeaseOutcome::Granted(g) => tracker.release(g.lease_id).unwrap(),
            LeaseOutcome::Queued(_) => panic!("1,000 free slots, yet queued"),
        })
    });
    // What a busy tracker does: a batch of 100 leases, then one of their
    // releases (the server applies whatever arrived together as one batch).
    const BATCH: u64 = 100;
    group.throughput(Throughput::Elements(BATCH));
    group.bench_function("lease_release_batched_100", |b| {
        b.iter(|| {
            let leases = (0..BATCH).map(|conn| Op::Lease { count: 7, conn, detached: false });
            let releases: Vec<Op> = tracker
                .apply(leases)
                .into_iter()
                .map(|done| match done.unwrap() {
                    Done::Lease(LeaseOutcome::Granted(g)) => Op::Release { lease_id: g.lease_id },
                    _ => panic!("1,000 free slots, yet not granted"),
                })
                .collect();
            for done in tracker.apply(releases) {
                done.unwrap();
            }
        })
    });
    group.finish();
}

criterion_group!(benches, over_tcp, in_process);
criterion_main!(benches);
