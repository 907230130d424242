//! `septet peer`: a worker and a requester in one process, driven from a
//! console — the peer serves block products to the grid while its user
//! leases, makes, loads, multiplies and saves matrices.
//!
//! This module owns the console: reading commands (a line editor with
//! history, Ctrl-R and completion on a terminal; plain lines otherwise, for
//! scripts and tests), the session's named matrices, and the answers. On a
//! terminal the history is kept in a file across sessions (see
//! [`history_path`]); piped input never reads or writes it. The
//! worker is `septet_worker::run`, started by the CLI beside it; jobs and
//! leases are the client's [`Requester`] and [`HeldLease`].
//!
//! Every error is one line on stderr and the console goes on; `quit` (or
//! the end of input, or Ctrl-C/SIGTERM while idle and not on a terminal)
//! releases the lease, stops the worker (which deregisters) and exits 0.
//!
//! Own slots: by default this peer's own slots are never used by its own
//! jobs ([`RequesterConfig::avoid`]): a job is meant to spread work over
//! other machines, and a peer that computed its own product would verify
//! its own work. `--serve-self` allows them.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use ndarray::Array2;
use parking_lot::Mutex;
use rand::SeedableRng;
use septet_client::{HeldLease, JobReport, Requester, RequesterConfig, TrackerClient, DEFAULT_REQUEST_TIMEOUT};
use septet_common::proto::PeerId;
use septet_common::secure::Security;
use septet_common::{Dtype, Element, Role, PEERS_PER_LEASE};
use tokio::io::AsyncBufReadExt;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::job;
use crate::npy;

/// How long the worker has to appear in the tracker's table.
const REGISTRATION_TIMEOUT: Duration = Duration::from_secs(30);

/// Largest matrix `make` builds, in elements (8 GiB of f64): past this a
/// typo would exhaust memory rather than fail.
const MAX_MAKE_ELEMENTS: usize = 1 << 30;

/// The commands, for `help` and completion: (name, short forms, usage, what it does).
const COMMANDS: &[(&str, &[&str], &str, &str)] = &[
    ("help", &["?", "h"], "help", "this list"),
    ("lease", &["need", "l"], "lease [7] | need 7 peers", "lease seven slots and hold them (Ctrl-C stops waiting)"),
    ("release", &["r"], "release", "give the held lease back"),
    ("make", &["mk"], "make A 2048x1024 [f32|f64] [seed S]", "a random matrix, entries uniform in [-1, 1)"),
    ("load", &[], "load A path.npy", "a 2-D float64 or float32 .npy file"),
    ("save", &[], "save C path.npy", "write a matrix as .npy"),
    ("multiply", &["mul", "m"], "multiply A B into C", "C = A·B on the held lease, or on one taken for the job"),
    ("matrices", &["ls"], "matrices", "the session's matrices"),
    ("drop", &["rm"], "drop A", "forget a matrix"),
    ("peers", &["p"], "peers", "the tracker's peer table"),
    ("status", &["st"], "status", "this peer: slots, products served, lease held"),
    ("report", &[], "report C job.html", "the HTML report of the job that made C"),
    ("quit", &["exit", "q"], "quit", "release the lease, deregister and exit"),
];

/// A named matrix of the session.
#[derive(Clone)]
enum Matrix {
    F64(Arc<Array2<f64>>),
    F32(Arc<Array2<f32>>),
}

impl Matrix {
    fn dim(&self) -> (usize, usize) {
        match self {
            Matrix::F64(x) => x.dim(),
            Matrix::F32(x) => x.dim(),
        }
    }

    fn dtype(&self) -> Dtype {
        match self {
            Matrix::F64(_) => Dtype::F64,
            Matrix::F32(_) => Dtype::F32,
        }
    }

    fn describe(&self) -> String {
        let (r, c) = self.dim();
        format!("{r}×{c} {}", self.dtype())
    }
}

/// A matrix and, if a job made it, that job's report.
struct Entry {
    matrix: Matrix,
    job: Option<(JobReport, String)>,
}

/// What the peer serves with, as the console reports it.
pub struct Serving {
    /// The worker's task.
    pub worker: JoinHandle<septet_common::Result<()>>,
    /// Where it serves products.
    pub addr: SocketAddr,
    /// Its slots.
    pub slots: u32,
    /// Its metrics (products served).
    pub metrics: septet_worker::metrics::WorkerMetrics,
}

/// One line of input, or why there is none.
enum Input {
    Line(String),
    /// Ctrl-C at the prompt (terminal), or SIGINT/SIGTERM while idle.
    Interrupted,
    Eof,
}

/// The console's state.
struct Console {
    tracker: String,
    security: Security,
    avoid: Vec<PeerId>,
    peer_id: PeerId,
    serving: Serving,
    matrices: BTreeMap<String, Entry>,
    names: Arc<Mutex<Vec<String>>>,
    lease: Option<HeldLease>,
}

/// Runs the console until `quit` or the end of input; the worker is
/// stopped (through `stop`) and awaited before it returns.
///
/// # Errors
/// When the worker does not register with the tracker, or fails.
pub async fn run(
    tracker: String,
    security: Security,
    serve_self: bool,
    serving: Serving,
    stop: tokio_util::sync::CancellationToken,
) -> Result<()> {
    let registered = tokio::select! {
        id = own_peer_id(&tracker, &security, serving.addr) => id,
        ended = wait_ended(&serving.worker) => Err(ended),
    };
    let peer_id = match registered {
        Ok(id) => id,
        Err(e) => {
            stop.cancel();
            let ended = (&mut { serving.worker }).await;
            // The worker's own error says more than "did not register".
            if let Ok(Err(worker_error)) = ended {
                return Err(anyhow::Error::new(worker_error).context("the peer's worker stopped"));
            }
            return Err(e);
        }
    };
    eprintln!(
        "septet peer {peer_id}: serving {} slot(s) on {} for the grid at {tracker}; {}. Type `help`.",
        serving.slots,
        serving.addr,
        if serve_self { "its own jobs may use its own slots" } else { "its own jobs use other peers' slots" }
    );
    let mut console = Console {
        tracker,
        security,
        avoid: if serve_self { Vec::new() } else { vec![peer_id] },
        peer_id,
        serving,
        matrices: BTreeMap::new(),
        names: Arc::new(Mutex::new(Vec::new())),
        lease: None,
    };
    let mut input = Reader::start(console.names.clone());
    loop {
        let line = tokio::select! {
            line = input.next() => line,
            ended = wait_ended(&console.serving.worker) => {
                eprintln!("error: {}", crate::cli::one_line(&ended));
                break;
            }
        };
        let line = match line {
            Input::Line(line) => line,
            Input::Interrupted if input.is_terminal() => {
                eprintln!("(Ctrl-C: type `quit` to leave)");
                continue;
            }
            Input::Interrupted | Input::Eof => break,
        };
        match console.execute(&line).await {
            Ok(Flow::Continue) => {}
            Ok(Flow::Quit) => break,
            Err(e) => eprintln!("error: {}", crate::cli::one_line(&e)),
        }
        let _ = std::io::stdout().flush();
    }
    console.shut_down(stop).await
}

/// Resolves when the worker's task has ended (it should not while the
/// console runs), with why.
async fn wait_ended(worker: &JoinHandle<septet_common::Result<()>>) -> anyhow::Error {
    loop {
        if worker.is_finished() {
            return anyhow::anyhow!("the peer's worker stopped (see the log above); the console cannot serve");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Finds this peer's row in the tracker's table (by its address) once its
/// worker has registered.
async fn own_peer_id(tracker: &str, security: &Security, addr: SocketAddr) -> Result<PeerId> {
    let mut client = TrackerClient::connect_with(tracker, Role::Client, DEFAULT_REQUEST_TIMEOUT, security)
        .await
        .with_context(|| format!("could not reach the tracker at {tracker}"))?;
    let deadline = tokio::time::Instant::now() + REGISTRATION_TIMEOUT;
    loop {
        let (_, rows) = client.peers().await.context("while listing peers")?;
        let alive = |r: &&septet_common::proto::PeerRow| r.state == "alive";
        // The exact address, or (listening on a wildcard address) the port
        // on the address the tracker saw.
        let exact = rows.iter().filter(alive).find(|r| r.addr == addr.to_string());
        let by_port = || {
            rows.iter().filter(alive).find(|r| {
                addr.ip().is_unspecified() && r.addr.parse::<SocketAddr>().is_ok_and(|a| a.port() == addr.port())
            })
        };
        if let Some(row) = exact.or_else(by_port) {
            return Ok(row.peer_id);
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "this peer's worker did not appear in the tracker's table within {REGISTRATION_TIMEOUT:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Whether the console goes on.
enum Flow {
    Continue,
    Quit,
}

/// Waits for Ctrl-C or SIGTERM.
async fn interrupted() {
    crate::cli::shutdown_signal().await
}

impl Console {
    async fn execute(&mut self, line: &str) -> Result<Flow> {
        let words: Vec<&str> = line.split_whitespace().collect();
        let Some((&first, args)) = words.split_first() else { return Ok(Flow::Continue) };
        if first.starts_with('#') {
            return Ok(Flow::Continue);
        }
        let command = COMMANDS
            .iter()
            .find(|(name, short, _, _)| *name == first || short.contains(&first))
            .map(|(name, ..)| *name)
            .with_context(|| format!("unknown command {first:?} (type `help`)"))?;
        match command {
            "help" => help(),
            "lease" => self.take_lease(args).await?,
            "release" => self.release().await?,
            "make" => self.make(args)?,
            "load" => self.load(args)?,
            "save" => self.save(args)?,
            "multiply" => self.multiply(args).await?,
            "matrices" => self.list(args)?,
            "drop" => {
                let [name] = args else { bail!("usage: drop A") };
                self.matrices.remove(*name).with_context(|| format!("no matrix named {name}"))?;
                self.update_names();
                println!("dropped {name}");
            }
            "peers" => self.peers(args).await?,
            "status" => self.status(args)?,
            "report" => self.report(args)?,
            "quit" => return Ok(Flow::Quit),
            other => unreachable!("{other} is in COMMANDS"),
        }
        Ok(Flow::Continue)
    }

    fn requester(&self) -> Requester {
        Requester::new(RequesterConfig {
            tracker: self.tracker.clone(),
            security: self.security.clone(),
            avoid: self.avoid.clone(),
            ..RequesterConfig::default()
        })
    }

    async fn take_lease(&mut self, args: &[&str]) -> Result<()> {
        let count = match args {
            [] => PEERS_PER_LEASE,
            [n] | [n, "peers" | "peer" | "slots"] => {
                n.parse::<u32>().map_err(|_| anyhow::anyhow!("{n:?} is not a number of peers"))?
            }
            _ => bail!("usage: lease [7]  or  need 7 peers"),
        };
        anyhow::ensure!(
            count == PEERS_PER_LEASE,
            "a Strassen job runs on exactly {PEERS_PER_LEASE} slots; a lease of {count} cannot be used for one"
        );
        if let Some(lease) = &self.lease {
            bail!("lease {} is already held: `release` it first", lease.lease_id());
        }
        let requester = self.requester();
        let (tracker, security) = (self.tracker.clone(), self.security.clone());
        let checked = std::sync::atomic::AtomicBool::new(false);
        let on_wait = move |p: septet_client::Progress| {
            if let septet_client::Progress::Waiting { position, free, needed } = p {
                eprintln!("waiting: position {position} in the tracker's queue ({free} of {needed} slots free); Ctrl-C stops waiting");
                if !checked.swap(true, std::sync::atomic::Ordering::Relaxed) {
                    let say = |line: String| eprintln!("{line}");
                    job::warn_if_unservable(tracker.clone(), security.clone(), needed, say);
                }
            }
        };
        let lease = tokio::select! {
            lease = requester.lease(on_wait) => lease.context("while leasing peers")?,
            _ = interrupted() => bail!("interrupted while waiting for a lease; left the queue"),
        };
        println!("lease {} ({} slots)", lease.lease_id(), lease.peers().len());
        for (i, p) in lease.peers().iter().enumerate() {
            println!("  M{}  peer {:>4}  {}", i + 1, p.peer_id, p.addr);
        }
        self.lease = Some(lease);
        Ok(())
    }

    async fn release(&mut self) -> Result<()> {
        let lease = self.lease.take().context("no lease is held")?;
        let id = lease.lease_id();
        lease.release().await.with_context(|| format!("while releasing lease {id}"))?;
        println!("released lease {id}");
        Ok(())
    }

    fn insert(&mut self, name: &str, matrix: Matrix, job: Option<(JobReport, String)>) {
        self.matrices.insert(name.to_string(), Entry { matrix, job });
        self.update_names();
    }

    fn update_names(&self) {
        *self.names.lock() = self.matrices.keys().cloned().collect();
    }

    fn get(&self, name: &str) -> Result<&Entry> {
        self.matrices.get(name).with_context(|| format!("no matrix named {name} (see `matrices`)"))
    }

    fn make(&mut self, args: &[&str]) -> Result<()> {
        let usage = "usage: make A 2048x1024 [f32|f64] [seed S]";
        let [name, shape, rest @ ..] = args else { bail!(usage) };
        check_name(name)?;
        let (rows, cols) = parse_shape(shape)?;
        let (mut dtype, mut seed) = (Dtype::F64, 1u64);
        let mut rest = rest.iter();
        while let Some(&word) = rest.next() {
            match word {
                "f64" | "float64" => dtype = Dtype::F64,
                "f32" | "float32" => dtype = Dtype::F32,
                "seed" => {
                    let s = rest.next().context("seed needs a number")?;
                    seed = s.parse().map_err(|_| anyhow::anyhow!("{s:?} is not a seed (a whole number)"))?;
                }
                other => bail!("unexpected {other:?}; {usage}"),
            }
        }
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let matrix = match dtype {
            Dtype::F64 => Matrix::F64(Arc::new(job::random_matrix(rows, cols, &mut rng))),
            Dtype::F32 => Matrix::F32(Arc::new(job::random_matrix(rows, cols, &mut rng))),
        };
        println!("{name} = random {} (seed {seed})", matrix.describe());
        self.insert(name, matrix, None);
        Ok(())
    }

    fn load(&mut self, args: &[&str]) -> Result<()> {
        let [name, path] = args else { bail!("usage: load A path.npy") };
        check_name(name)?;
        let path = PathBuf::from(path);
        let info = npy::inspect(&path)?;
        // NaN and ±inf are refused when they are multiplied (as the CLI
        // does before leasing), not here: `save` of such a matrix is fine.
        let matrix = match info.dtype {
            Dtype::F64 => Matrix::F64(Arc::new(npy::load_input::<f64>(&path, true)?)),
            Dtype::F32 => Matrix::F32(Arc::new(npy::load_input::<f32>(&path, true)?)),
        };
        println!("{name} = {} from {}", matrix.describe(), path.display());
        self.insert(name, matrix, None);
        Ok(())
    }

    fn save(&self, args: &[&str]) -> Result<()> {
        let [name, path] = args else { bail!("usage: save C path.npy") };
        let path = PathBuf::from(path);
        match &self.get(name)?.matrix {
            Matrix::F64(x) => npy::save(&path, x)?,
            Matrix::F32(x) => npy::save(&path, x)?,
        }
        println!("wrote {name} to {}", path.display());
        Ok(())
    }

    fn list(&self, args: &[&str]) -> Result<()> {
        anyhow::ensure!(args.is_empty(), "usage: matrices");
        if self.matrices.is_empty() {
            println!("no matrices (make one with `make A 1024x1024`)");
        }
        for (name, entry) in &self.matrices {
            let made = entry.job.as_ref().map(|(r, inputs)| format!("  (C = {inputs} on lease {})", r.lease_id));
            println!("{name:<12} {}{}", entry.matrix.describe(), made.unwrap_or_default());
        }
        Ok(())
    }

    async fn multiply(&mut self, args: &[&str]) -> Result<()> {
        let (a_name, b_name, c_name) = match args {
            [a, b, "into" | "->" | "=", c] | [a, b, c] => (*a, *b, *c),
            _ => bail!("usage: multiply A B into C"),
        };
        check_name(c_name)?;
        let (a, b) = (self.get(a_name)?.matrix.clone(), self.get(b_name)?.matrix.clone());
        let (ad, bd) = (a.dim(), b.dim());
        anyhow::ensure!(
            ad.1 == bd.0,
            "shape mismatch: {a_name} is {}×{} and {b_name} is {}×{}; {a_name}'s columns must equal {b_name}'s rows",
            ad.0,
            ad.1,
            bd.0,
            bd.1
        );
        let requester = self.requester();
        let inputs = format!("{a_name}·{b_name}");
        match (a, b) {
            (Matrix::F64(a), Matrix::F64(b)) => self.run_job(&requester, a, b, (a_name, b_name), &inputs, c_name).await,
            (Matrix::F32(a), Matrix::F32(b)) => self.run_job(&requester, a, b, (a_name, b_name), &inputs, c_name).await,
            (a, b) => bail!("{a_name} is {} and {b_name} is {}: both must be one dtype", a.dtype(), b.dtype()),
        }
    }

    async fn run_job<T: Element>(
        &mut self,
        requester: &Requester,
        a: Arc<Array2<T>>,
        b: Arc<Array2<T>>,
        (a_name, b_name): (&str, &str),
        inputs: &str,
        c_name: &str,
    ) -> Result<()>
    where
        Matrix: From<Arc<Array2<T>>>,
    {
        for (name, x) in [(a_name, &a), (b_name, &b)] {
            if let Some(((i, j), v)) = x.indexed_iter().find(|(_, v)| !v.to_f64().is_finite()) {
                bail!("{name}[{i}, {j}] is {}: NaN and ±inf cannot be verified", v.to_f64());
            }
        }
        let (bar, on_progress) = job::progress(requester);
        let job = async {
            match &self.lease {
                Some(lease) => requester.multiply_on(lease, a, b, on_progress).await,
                None => requester.multiply_reporting(a, b, on_progress).await,
            }
        };
        let (c, mut report) = tokio::select! {
            done = job => done,
            _ = interrupted() => {
                bar.finish_and_clear();
                let kept = self.lease.as_ref().map(|l| format!("; lease {} is still held", l.lease_id()));
                bail!("interrupted: the job was stopped{}", kept.unwrap_or_else(|| " and its lease released".into()));
            }
        };
        bar.finish_and_clear();
        septet::report::exclude_lease_wait(&mut report);
        let c = Arc::new(c.map_err(|e| anyhow::Error::new(e).context("while multiplying on the grid"))?);
        println!("{}", summary_line(c_name, inputs, &report));
        self.insert(c_name, Matrix::from(c), Some((report, inputs.to_string())));
        Ok(())
    }

    async fn peers(&self, args: &[&str]) -> Result<()> {
        anyhow::ensure!(args.is_empty(), "usage: peers");
        let mut client =
            TrackerClient::connect_with(&self.tracker, Role::Client, DEFAULT_REQUEST_TIMEOUT, &self.security)
                .await
                .with_context(|| format!("could not reach the tracker at {}", self.tracker))?;
        let (table, _) = client.peers().await.context("while listing peers")?;
        println!("{table}");
        Ok(())
    }

    fn status(&self, args: &[&str]) -> Result<()> {
        anyhow::ensure!(args.is_empty(), "usage: status");
        let served = products_served(&self.serving.metrics);
        println!(
            "peer {}  serving on {}  slots {}  products served {}  own slots used by own jobs: {}",
            self.peer_id,
            self.serving.addr,
            self.serving.slots,
            served,
            if self.avoid.is_empty() { "yes (--serve-self)" } else { "no" }
        );
        match &self.lease {
            Some(lease) => {
                let peers: Vec<String> = lease.peers().iter().map(|p| p.peer_id.to_string()).collect();
                println!("lease {} held: peers {}", lease.lease_id(), peers.join(" "));
            }
            None => println!("no lease held"),
        }
        println!("{} matrices", self.matrices.len());
        Ok(())
    }

    fn report(&self, args: &[&str]) -> Result<()> {
        let [name, path] = args else { bail!("usage: report C job.html") };
        let path = PathBuf::from(path);
        let (report, inputs) =
            self.get(name)?.job.as_ref().with_context(|| format!("{name} was not made by a job on the grid"))?;
        job::check_output_path(&path, "the report")?;
        let context = septet::report::Context {
            inputs: inputs.clone(),
            check: None,
            authenticated: self.security.secret.is_some(),
            encrypted: self.security.encrypt,
            when: septet::report::utc_now(),
            error: None,
        };
        job::write_report(&path, &septet::report::render(report, &context))?;
        println!("wrote the report of {name} to {}", path.display());
        Ok(())
    }

    async fn shut_down(mut self, stop: tokio_util::sync::CancellationToken) -> Result<()> {
        if self.lease.is_some() {
            if let Err(e) = self.release().await {
                eprintln!("warning: {}", crate::cli::one_line(&e));
            }
        }
        stop.cancel();
        let ended = (&mut self.serving.worker).await.context("the peer's worker panicked")?;
        ended.context("the peer's worker failed")?;
        eprintln!("septet peer {}: deregistered and stopped", self.peer_id);
        Ok(())
    }
}

impl From<Arc<Array2<f64>>> for Matrix {
    fn from(x: Arc<Array2<f64>>) -> Self {
        Matrix::F64(x)
    }
}

impl From<Arc<Array2<f32>>> for Matrix {
    fn from(x: Arc<Array2<f32>>) -> Self {
        Matrix::F32(x)
    }
}

/// The job in one line: what was made, how fast, on which lease, checked how.
fn summary_line(c_name: &str, inputs: &str, r: &JobReport) -> String {
    format!(
        "{c_name} = {inputs}: {}×{} · {}×{} {} in {:.3} s (after {:.3} s waiting for a lease), {:.1} GFLOP/s, lease {}, plan {}, {}, retries {}, hedges {}",
        r.m,
        r.k,
        r.k,
        r.n,
        r.dtype,
        septet::report::job_s(r),
        r.lease_wait_s,
        r.gflops,
        r.lease_id,
        r.plan,
        if r.verified { "every product verified" } else { "not verified" },
        r.retries,
        r.hedges.len()
    )
}

/// Block products this peer's worker finished without error.
fn products_served(metrics: &septet_worker::metrics::WorkerMetrics) -> u64 {
    let Ok((text, _)) = septet_observe::encode_metrics(metrics.registry(), false) else { return 0 };
    text.lines()
        .filter(|l| l.starts_with("septet_worker_products_total{") && l.contains("outcome=\"ok\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

fn help() {
    println!("commands (short forms in brackets):");
    for (_, short, usage, what) in COMMANDS {
        let short = if short.is_empty() { String::new() } else { format!(" [{}]", short.join(", ")) };
        println!("  {:<40} {what}{short}", usage);
    }
}

/// Matrix names: a letter or `_`, then letters, digits or `_` (at most 64).
fn check_name(name: &str) -> Result<()> {
    let ok = name.len() <= 64
        && name.chars().next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    anyhow::ensure!(ok, "{name:?} is not a matrix name (a letter, then letters, digits or _)");
    let reserved = COMMANDS.iter().any(|(n, short, ..)| *n == name || short.contains(&name)) || name == "into";
    anyhow::ensure!(!reserved, "{name:?} is a command; pick another name");
    Ok(())
}

/// `2048x1024` (or `2048×1024`, `2048,1024`) as (rows, cols).
fn parse_shape(s: &str) -> Result<(usize, usize)> {
    let parts: Vec<&str> = s.split(['x', 'X', '×', ',']).collect();
    let [r, c] = parts[..] else { bail!("{s:?} is not a shape like 2048x1024") };
    let size = |p: &str| p.parse::<usize>().ok().filter(|&v| v > 0);
    let (Some(r), Some(c)) = (size(r), size(c)) else { bail!("{s:?}: both sizes must be positive whole numbers") };
    anyhow::ensure!(
        r.checked_mul(c).is_some_and(|n| n <= MAX_MAKE_ELEMENTS),
        "{r}×{c} is more than {MAX_MAKE_ELEMENTS} elements"
    );
    Ok((r, c))
}

/// Where commands come from.
enum Reader {
    /// A line editor on its own thread: it reads a line when asked.
    Editor { ask: std::sync::mpsc::Sender<()>, lines: mpsc::Receiver<Input> },
    /// Plain lines from stdin.
    Lines(tokio::io::Lines<tokio::io::BufReader<tokio::io::Stdin>>),
}

impl Reader {
    fn start(names: Arc<Mutex<Vec<String>>>) -> Self {
        if std::io::stdin().is_terminal() && std::io::stdout().is_terminal() {
            if let Some(editor) = editor::start(names, history_path()) {
                return editor;
            }
        }
        Reader::Lines(tokio::io::BufReader::new(tokio::io::stdin()).lines())
    }

    fn is_terminal(&self) -> bool {
        matches!(self, Reader::Editor { .. })
    }

    async fn next(&mut self) -> Input {
        match self {
            Reader::Editor { ask, lines } => {
                if ask.send(()).is_err() {
                    return Input::Eof;
                }
                lines.recv().await.unwrap_or(Input::Eof)
            }
            Reader::Lines(lines) => tokio::select! {
                line = lines.next_line() => match line {
                    Ok(Some(line)) => Input::Line(line),
                    Ok(None) => Input::Eof,
                    Err(e) => {
                        eprintln!("error: could not read the next command: {e}");
                        Input::Eof
                    }
                },
                _ = interrupted() => Input::Interrupted,
            },
        }
    }
}

/// Where a terminal console keeps its history:
/// `$XDG_STATE_HOME/septet/history`, or `~/.local/state/septet/history`
/// (the XDG default) when XDG_STATE_HOME is unset or not absolute; `None`
/// without a home either.
fn history_path() -> Option<PathBuf> {
    let absolute = |v: std::ffi::OsString| Some(PathBuf::from(v)).filter(|p| p.is_absolute());
    let state = std::env::var_os("XDG_STATE_HOME")
        .and_then(absolute)
        .or_else(|| std::env::var_os("HOME").and_then(absolute).map(|h| h.join(".local/state")))?;
    Some(state.join("septet").join("history"))
}

/// The history's lines, oldest first (none if there is no file yet).
fn load_history(path: &std::path::Path) -> std::io::Result<Vec<String>> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(text.lines().filter(|l| !l.trim().is_empty()).map(String::from).collect()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(e),
    }
}

/// Writes the history, one line per entry, to `path`, readable by its
/// owner only (0600, its directory 0700 when created here): commands can
/// name files and hosts. Written to a temporary file and renamed, so a
/// crash mid-write leaves the old history.
fn save_history<'a>(path: &std::path::Path, lines: impl Iterator<Item = &'a String>) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        let mut builder = std::fs::DirBuilder::new();
        builder.recursive(true);
        #[cfg(unix)]
        std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
        builder.create(dir)?;
    }
    let tmp = path.with_extension(format!("tmp-{}", std::process::id()));
    let mut text = String::new();
    for line in lines.filter(|l| !l.contains('\n')) {
        text.push_str(line);
        text.push('\n');
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(&tmp)?;
    // The mode applies only to a file created now, not to one left behind.
    #[cfg(unix)]
    file.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
    file.write_all(text.as_bytes())?;
    drop(file);
    std::fs::rename(&tmp, path)
}

/// The terminal's line editor: rustyline, with history (Ctrl-R searches
/// it) and completion of commands and matrix names.
mod editor {
    use std::path::PathBuf;
    use std::sync::Arc;

    use parking_lot::Mutex;
    use rustyline::completion::{Completer, Pair};
    use rustyline::error::ReadlineError;
    use rustyline::highlight::Highlighter;
    use rustyline::hint::Hinter;
    use rustyline::validate::Validator;
    use rustyline::{Context, Editor, Helper};
    use tokio::sync::mpsc;

    use super::{Input, Reader, COMMANDS};

    /// Lines kept in the history.
    const HISTORY: usize = 1000;

    struct Complete {
        names: Arc<Mutex<Vec<String>>>,
    }

    impl Completer for Complete {
        type Candidate = Pair;

        fn complete(&self, line: &str, pos: usize, _: &Context<'_>) -> rustyline::Result<(usize, Vec<Pair>)> {
            let before = &line[..pos];
            let start = before.rfind(char::is_whitespace).map_or(0, |i| i + 1);
            let word = &before[start..];
            let pair = |s: &str| Pair { display: s.to_string(), replacement: format!("{s} ") };
            let candidates: Vec<Pair> = if start == 0 {
                COMMANDS.iter().map(|(name, ..)| *name).filter(|n| n.starts_with(word)).map(pair).collect()
            } else {
                let mut words: Vec<String> = self.names.lock().clone();
                words.extend(["into", "f32", "f64", "seed", "peers"].map(String::from));
                words.iter().filter(|n| n.starts_with(word)).map(|n| pair(n)).collect()
            };
            Ok((start, candidates))
        }
    }

    impl Hinter for Complete {
        type Hint = String;
    }
    impl Highlighter for Complete {}
    impl Validator for Complete {}
    impl Helper for Complete {}

    /// Starts the editor's thread; `None` if the terminal cannot host one.
    /// The history is loaded from `history` (if given and present) and
    /// saved to it after every line read, so that it survives however the
    /// console ends.
    pub(super) fn start(names: Arc<Mutex<Vec<String>>>, history: Option<PathBuf>) -> Option<Reader> {
        let config = rustyline::Config::builder().max_history_size(HISTORY).ok()?.auto_add_history(true).build();
        let mut editor: Editor<Complete, rustyline::history::DefaultHistory> = Editor::with_config(config).ok()?;
        editor.set_helper(Some(Complete { names }));
        if let Some(path) = &history {
            match super::load_history(path) {
                Ok(lines) => {
                    for line in lines {
                        let _ = editor.add_history_entry(line);
                    }
                }
                Err(e) => eprintln!("(could not read the history in {}: {e})", path.display()),
            }
        }
        let (ask, asked) = std::sync::mpsc::channel::<()>();
        let (tx, lines) = mpsc::channel(1);
        std::thread::Builder::new()
            .name("septet-console".into())
            .spawn(move || {
                while asked.recv().is_ok() {
                    let input = match editor.readline("septet> ") {
                        Ok(line) => Input::Line(line),
                        Err(ReadlineError::Interrupted) => Input::Interrupted,
                        Err(ReadlineError::Eof) => Input::Eof,
                        Err(e) => {
                            eprintln!("error: the line editor failed: {e}");
                            Input::Eof
                        }
                    };
                    if let (Some(path), Input::Line(_)) = (&history, &input) {
                        if let Err(e) = super::save_history(path, editor.history().into_iter()) {
                            eprintln!("(could not save the history to {}: {e})", path.display());
                        }
                    }
                    if tx.blocking_send(input).is_err() {
                        break;
                    }
                }
            })
            .ok()?;
        Some(Reader::Editor { ask, lines })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn history_is_saved_for_its_owner_only_and_loaded_back() {
        let dir = std::env::temp_dir().join(format!("septet-history-{}", std::process::id()));
        let path = dir.join("septet").join("history");
        assert_eq!(load_history(&path).unwrap(), Vec::<String>::new(), "no file yet: no history");
        let lines: Vec<String> = ["make A 4x4", "multiply A A into C", "two\nlines", "quit"].map(String::from).into();
        save_history(&path, lines.iter()).unwrap();
        assert_eq!(load_history(&path).unwrap(), ["make A 4x4", "multiply A A into C", "quit"]);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode(&path), 0o600);
            assert_eq!(mode(path.parent().unwrap()), 0o700);
            // A file left readable by others is made private when saved again.
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
            save_history(&path, lines[..1].iter()).unwrap();
            assert_eq!(mode(&path), 0o600);
        }
        assert_eq!(load_history(&path).unwrap(), ["make A 4x4"]);
        assert_eq!(std::fs::read_dir(path.parent().unwrap()).unwrap().count(), 1, "no temporary file is left");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
