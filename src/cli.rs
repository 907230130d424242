//! Argument parsing and the subcommands' glue. Library errors get context
//! here with `anyhow`, and are printed as one line.

use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::time::Duration;

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use septet_client::DEFAULT_REQUEST_TIMEOUT;
use septet_client::{Plan, Requester, RequesterConfig, TrackerClient};
use septet_common::proto::{LeaseGrant, LeaseId};
use septet_common::secure::{Secret, SecretFileError, Security};
use septet_common::{Dtype, Role, PEERS_PER_LEASE};
use septet_tracker::TrackerConfig;
use septet_worker::WorkerConfig;
use tokio::net::TcpListener;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

use crate::job::{self, JobOptions};
use crate::npy::{self, InputError};
use septet::local::LocalGrid;

/// Tracker-coordinated Strassen matrix multiplication over seven peers.
#[derive(Debug, Parser)]
#[command(name = "septet", version, about, long_about = None, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the tracker: the table of worker peers and the lease queue.
    Tracker(TrackerArgs),
    /// Run a worker: serve block products and stay registered with the tracker.
    Worker(WorkerArgs),
    /// Join the grid as a worker and open a console on the same process to
    /// lease, make, load, multiply and save matrices (`help` lists the
    /// commands). On a terminal it is a line editor (history, Ctrl-R, tab
    /// completion); otherwise it reads one command a line from stdin, for
    /// scripts. By default this peer's own slots are never used by its own
    /// jobs (--serve-self allows them).
    Peer(PeerArgs),
    /// Print the tracker's peer table.
    ///
    /// Columns: slots and in_use (slots leased now), leases_total (slots
    /// handed out over the peer's life), failures reported against it, slow
    /// (> 0: on probation after hedges beat it; a peer on probation or with
    /// failures is leased after the others), joined_at and last_seen in
    /// milliseconds since the tracker started, state (alive, suspect after
    /// half the heartbeat timeout without a heartbeat, gone), cluster.
    Peers(PeersArgs),
    /// Lease slots (seven by default) and print the peers' addresses.
    ///
    /// The lease belongs to this connection: only it may renew or release
    /// it, and it ends when this command exits (Ctrl-C, or --hold SECS).
    /// `septet multiply` takes a lease of its own for each job, so run it
    /// from another terminal or after this one ends.
    ///
    /// A detached lease (--detach) outlives the command: it keeps slots out
    /// of the pool with no process holding them — to keep workers idle for
    /// a measurement, or out of use briefly, from a script — until `septet
    /// release ID --token TOKEN` (or SEPTET_LEASE_TOKEN=TOKEN) or its TTL
    /// (the tracker's --lease-ttl, 60 s by default; it is not renewed).
    /// The token is printed beside the lease id. Keep it secret.
    Lease(LeaseArgs),
    /// Give a detached lease's slots back to the pool.
    ///
    /// Only the lease's holder may: this needs the token `septet lease
    /// --detach` printed. Without it, or with a wrong one, the tracker
    /// refuses (the lease stays in force) and this exits non-zero.
    Release(ReleaseArgs),
    /// Multiply A·B on seven leased workers (Strassen split, TCP fan-out).
    #[command(override_usage = "septet multiply --tracker ADDR (--a A.npy --b B.npy | --random M,K,N) [OPTIONS]")]
    Multiply(MultiplyArgs),
    /// Start a tracker and workers in this process and multiply random
    /// matrices through the real TCP path, checked against a local product.
    Demo(DemoArgs),
    /// Make a new random cluster secret (256 bits) for --secret-file.
    Secret(SecretArgs),
}

#[derive(Debug, Args)]
struct SecretArgs {
    /// Write it to this file, created with mode 0600 (an existing file is
    /// never overwritten); without --out it is printed on stdout.
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,
}

/// How this process proves it belongs to the grid, and whether it encrypts.
#[derive(Debug, Args)]
struct SecurityArgs {
    /// The cluster secret, as `septet secret` writes it. Every connection
    /// starts with a mutual proof of it (the secret never crosses the wire).
    #[arg(long, env = "SEPTET_SECRET_FILE", value_name = "FILE")]
    secret_file: Option<PathBuf>,
    /// Encrypt every byte after the handshake (AES-128-GCM) and refuse
    /// peers that do not. Needs --secret-file.
    #[arg(long, env = "SEPTET_ENCRYPT", value_parser = clap::builder::BoolishValueParser::new())]
    encrypt: bool,
    /// Use a secret file that other users can read (refused otherwise:
    /// anyone who reads it can join the grid). For files a secret store
    /// mounts read-only for a group, on purpose.
    #[arg(long, env = "SEPTET_ALLOW_READABLE_SECRET", value_parser = clap::builder::BoolishValueParser::new())]
    allow_readable_secret: bool,
}

/// A command line that cannot be run as given: exit status 2.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct UsageError(String);

impl SecurityArgs {
    /// Loads the secret (warning on stderr when others can read its file).
    fn security(&self) -> Result<Security> {
        let Some(path) = &self.secret_file else {
            if self.encrypt {
                return Err(UsageError(
                    "--encrypt needs a cluster secret: pass --secret-file FILE (make one with `septet secret --out FILE`)"
                        .into(),
                )
                .into());
            }
            return Ok(Security::default());
        };
        let (secret, warning) = Secret::load(path, self.allow_readable_secret).map_err(|e| match e {
            SecretFileError::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound => {
                anyhow::Error::new(UsageError(format!(
                    "the secret file {} (--secret-file or SEPTET_SECRET_FILE) does not exist; make one with `septet \
                     secret --out FILE` and give the same file to every tracker, worker and client",
                    path.display()
                )))
            }
            e @ (SecretFileError::Readable { .. } | SecretFileError::Malformed { .. }) => {
                anyhow::Error::new(UsageError(e.to_string()))
            }
            e => e.into(),
        })?;
        if let Some(warning) = warning {
            eprintln!("warning: {warning}");
        }
        Ok(Security::with_secret(secret, self.encrypt))
    }
}

/// Safe by default: without a secret, listen only where nobody else can
/// connect. Anything else needs a secret or an explicit --insecure.
async fn check_exposure(role: &str, listen: &str, security: &Security, insecure: bool) -> Result<()> {
    if security.secret.is_some() {
        return Ok(());
    }
    let addrs: Vec<std::net::SocketAddr> = match listen.parse() {
        Ok(addr) => vec![addr],
        Err(_) => {
            tokio::net::lookup_host(listen).await.with_context(|| format!("could not resolve {listen}"))?.collect()
        }
    };
    if addrs.iter().all(|a| a.ip().is_loopback()) {
        return Ok(());
    }
    if insecure {
        eprintln!(
            "warning: septet {role} listens on {listen} without a cluster secret (--insecure): anyone who can reach it can use the grid"
        );
        return Ok(());
    }
    Err(UsageError(format!(
        "refusing to listen on {listen} without a cluster secret: anyone who can reach it could join the grid, \
         lease its workers or send them work. Make a secret with `septet secret --out FILE` and start every \
         tracker, worker and client with --secret-file FILE, or pass --insecure to accept the risk"
    ))
    .into())
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("inputs").required(true).args(["a", "random"])))]
struct MultiplyArgs {
    #[command(flatten)]
    tracker: TrackerAddr,
    #[command(flatten)]
    security: SecurityArgs,
    /// Left operand, a 2-D float64 or float32 .npy file.
    #[arg(long = "a", value_name = "A.npy", requires = "b")]
    a: Option<PathBuf>,
    /// Right operand, a 2-D .npy file of the same dtype.
    #[arg(long = "b", value_name = "B.npy", requires = "a")]
    b: Option<PathBuf>,
    /// Random inputs of shapes M×K and K×N instead of files.
    #[arg(long, value_name = "M,K,N", value_parser = parse_mkn, conflicts_with_all = ["a", "b"])]
    random: Option<(usize, usize, usize)>,
    /// Seed for --random.
    #[arg(long, default_value_t = 1, requires = "random")]
    seed: u64,
    /// Write C here as .npy.
    #[arg(long, value_name = "C.npy")]
    out: Option<PathBuf>,
    /// Element type for --random (files carry their own; this must match them if given).
    #[arg(long, value_enum)]
    dtype: Option<DtypeArg>,
    /// Also compute the product locally and print the max relative error.
    /// When C would take more than 512 MiB, only 64 rows spread over C are
    /// computed locally and compared (the full reference would need C's
    /// size again in memory).
    #[arg(long)]
    check: bool,
    /// With --check: compare this many sampled rows of C (0: all of C,
    /// whatever its size).
    #[arg(long, value_name = "N", requires = "check", hide = true)]
    check_rows: Option<usize>,
    /// Print the summary as one JSON object on stdout.
    #[arg(long)]
    json: bool,
    /// Also write the job report here: one self-contained HTML file with
    /// the inputs, lease, totals, verification, retries and hedges, and a
    /// timeline of every attempt at the seven products.
    #[arg(long, value_name = "FILE.html")]
    report: Option<PathBuf>,
    /// Give up after waiting this many seconds for a lease.
    #[arg(long, value_name = "SECS")]
    max_wait: Option<f64>,
    /// Check every product with Freivalds' test before using it.
    #[arg(long, value_enum, default_value_t = OnOff::On)]
    verify: OnOff,
    /// Seconds a peer may take beyond its product's compute allowance
    /// (connecting, sending, replying) before it counts as failed.
    #[arg(long, default_value_t = 10.0, value_name = "SECS")]
    peer_timeout: f64,
    /// Seconds without a byte from a worker (which says `Working` every
    /// second) before it counts as gone — dead, or cut off silently — and
    /// its product goes to another peer. The slots of a relayed job wait
    /// twice this (at least 10 s, at most 60 s) for a word from us.
    #[arg(long, default_value_t = 4.0, value_name = "SECS")]
    silence_timeout: f64,
    /// Most products a job hedges: a product whose send or receive runs
    /// far slower than the job's others (or that is still computing long
    /// after the rest are in) gets a second copy on a spare slot, and the
    /// first copy verified is used. Each hedge costs one more product of
    /// work. A relayed job hedges once at most: a slot whose link takes
    /// its panels far slower than the others' is replaced by a spare slot
    /// and the job relayed again. 0 turns hedging off.
    #[arg(long, default_value_t = 2, value_name = "N")]
    max_hedges: u32,
    /// auto (relay unless every peer is on this host's loopback), relay,
    /// or direct (each peer sent its product's operands): for benchmarks
    /// and tests that compare the plans.
    #[arg(long, hide = true, default_value = "auto")]
    plan: Plan,
    /// Levels of Strassen's step across peers: 1 leases seven slots, one
    /// per product; 2 leases forty-nine, and each of the seven products is
    /// itself split in seven, computed by seven slots that its first-level
    /// slot requests it from, checks, and sends on (A and B still cross
    /// this host's link once, C once); auto takes 2 for a job of at least
    /// 16384³ multiply-adds when 49 peers have a slot free, else 1.
    #[arg(long, default_value = "1", value_parser = parse_depth, value_name = "1|2|auto")]
    depth: u8,
    /// For a job out of core (--a and --b files, or --random): a product
    /// larger than this many MiB is read into a scratch file in $TMPDIR
    /// rather than memory, as is any operand that needs padding, so that
    /// this host's memory use stays below about this much whatever the
    /// matrices' size. Lower it on a host short of memory.
    #[arg(long, default_value_t = (septet_client::requester::SPILL_ABOVE >> 20) as u64, value_name = "MIB")]
    spill_above: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum OnOff {
    On,
    Off,
}

#[derive(Debug, Args)]
struct DemoArgs {
    /// Size of the random square matrices.
    #[arg(long, default_value_t = 2048)]
    n: usize,
    /// Workers to start, each with one slot: at least 7^depth (the
    /// default).
    #[arg(long)]
    workers: Option<u32>,
    /// Levels of Strassen's step across the workers: 1 (seven workers) or
    /// 2 (forty-nine; see `septet multiply --help`).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=2))]
    depth: u8,
    /// Element type.
    #[arg(long, value_enum, default_value_t = DtypeArg::F64)]
    dtype: DtypeArg,
    /// Seed of the random inputs.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Check every product with Freivalds' test before using it.
    #[arg(long, value_enum, default_value_t = OnOff::On)]
    verify: OnOff,
    /// Print the summary as one JSON object on stdout.
    #[arg(long)]
    json: bool,
    /// Encrypt the demo grid's connections (it always authenticates them
    /// with a secret made for the run).
    #[arg(long, env = "SEPTET_ENCRYPT", value_parser = clap::builder::BoolishValueParser::new())]
    encrypt: bool,
    /// Also serve the demo tracker's Prometheus metrics (/metrics) and live
    /// status page (/) over HTTP on this loopback address while it runs
    /// (port 0 picks a free one).
    #[arg(long, value_name = "ADDR")]
    http: Option<String>,
    /// Also write the job report here: one self-contained HTML file with
    /// the totals and a timeline of the seven products.
    #[arg(long, value_name = "FILE.html")]
    report: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum DtypeArg {
    F64,
    F32,
}

impl DtypeArg {
    fn dtype(self) -> Dtype {
        match self {
            DtypeArg::F64 => Dtype::F64,
            DtypeArg::F32 => Dtype::F32,
        }
    }
}

/// An address to connect to: a host and a port (`127.0.0.1:7700`,
/// `tracker.lan:7700`, `[::1]:7700`).
fn parse_host_port(s: &str) -> Result<String, String> {
    match s.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => Ok(s.to_string()),
        _ => Err(format!("expected HOST:PORT, e.g. 127.0.0.1:7700 (the tracker's default port is {DEFAULT_PORT})")),
    }
}

/// The port `septet tracker` listens on unless told otherwise.
const DEFAULT_PORT: u16 = 7700;

fn parse_mkn(s: &str) -> Result<(usize, usize, usize), String> {
    let parts: Vec<usize> = s
        .split(',')
        .map(|p| p.trim().parse::<usize>().map_err(|_| format!("{p:?} is not a size")))
        .collect::<Result<_, _>>()?;
    match parts[..] {
        [m, k, n] if m > 0 && k > 0 && n > 0 => Ok((m, k, n)),
        [_, _, _] => Err("sizes must be positive".into()),
        _ => Err("expected three sizes, M,K,N".into()),
    }
}

#[derive(Debug, Args)]
struct TrackerAddr {
    /// Tracker address, host:port (`septet tracker` listens on
    /// 127.0.0.1:7700 by default).
    #[arg(long, env = "SEPTET_TRACKER", value_name = "ADDR", value_parser = parse_host_port)]
    tracker: String,
}

#[derive(Debug, Args)]
struct TrackerArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:7700", value_name = "ADDR")]
    listen: String,
    /// Seconds a lease lives unless renewed.
    #[arg(long, default_value_t = 60.0, value_name = "SECS")]
    lease_ttl: f64,
    /// Seconds between the heartbeats workers are asked to send.
    #[arg(long, default_value_t = 2.0, value_name = "SECS")]
    heartbeat_interval: f64,
    /// Seconds of silence after which a worker is marked gone.
    #[arg(long, default_value_t = 6.0, value_name = "SECS")]
    heartbeat_timeout: f64,
    /// Largest frame a client may send, in bytes.
    #[arg(long, default_value_t = 1 << 20, value_name = "BYTES")]
    max_frame_len: usize,
    /// Most worker addresses the peer table holds (rows are kept for
    /// workers that left); once it is full, a new address takes the row of
    /// a worker gone for --forget-gone, or is refused.
    #[arg(long, default_value_t = TrackerConfig::default().max_peers, value_name = "N")]
    max_peers: usize,
    /// Seconds a worker must have been gone before a new one may take its
    /// row in a full peer table (at least twice the lease TTL is used).
    #[arg(long, default_value_t = 600.0, value_name = "SECS")]
    forget_gone: f64,
    /// This cluster's name: every peer row carries it, and sibling trackers
    /// know this one by it (letters, digits, '-', '_', '.').
    #[arg(long, default_value = "default", value_name = "NAME")]
    cluster: String,
    /// Sibling trackers of other clusters (comma-separated host:port): when
    /// this cluster has too few free slots for a lease, the rest are
    /// borrowed from a sibling with enough. Every cluster of a federation
    /// uses the same --secret-file (requesters compute on the siblings'
    /// workers directly).
    #[arg(long, value_name = "ADDR[,ADDR...]", value_delimiter = ',')]
    federate: Vec<String>,
    #[command(flatten)]
    serve: ServeArgs,
    /// Also serve Prometheus metrics (/metrics) and a live status page (/)
    /// over HTTP on this address. Unauthenticated and read-only (no secret
    /// or lease token is ever shown): loopback only unless --http-public.
    #[arg(long, value_name = "ADDR")]
    http: Option<String>,
    /// Let --http listen on a non-loopback address: anyone who can reach it
    /// can read the peer table and the metrics.
    #[arg(long, requires = "http")]
    http_public: bool,
}

/// What both servers share: who may connect, and how many at once.
#[derive(Debug, Args)]
struct ServeArgs {
    #[command(flatten)]
    security: SecurityArgs,
    /// Listen on a non-loopback address without a cluster secret (anyone
    /// who can reach the port can then use the grid).
    #[arg(long)]
    insecure: bool,
    /// Seconds a new connection has to complete its handshake.
    #[arg(long, default_value_t = 5.0, value_name = "SECS")]
    handshake_timeout: f64,
    /// Connections served at once; more are refused.
    #[arg(long, value_name = "N")]
    max_connections: Option<usize>,
}

#[derive(Debug, Args)]
struct WorkerArgs {
    #[command(flatten)]
    tracker: TrackerAddr,
    /// Address to serve block products on (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:0", value_name = "ADDR")]
    listen: String,
    /// Products this worker computes at once.
    #[arg(long, default_value_t = 1)]
    slots: u32,
    /// faer threads per product (0: all cores).
    #[arg(long, default_value_t = 0)]
    threads: usize,
    /// Largest frame accepted, in bytes (a task carries two operands).
    #[arg(long, default_value_t = septet_common::DEFAULT_MAX_FRAME_LEN, value_name = "BYTES")]
    max_frame_len: usize,
    /// Memory the worker's tasks may use, all slots together (e.g. 512M,
    /// 8G; plain numbers are bytes). Registered with the tracker (`peers`
    /// shows it), and a task that does not fit in a slot's share is refused
    /// before it is read. Default: the host's MemAvailable at start.
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    max_memory: Option<u64>,
    /// Before registering, fault in the memory of jobs up to N×N·N×N f64,
    /// direct or relayed (240 MiB a slot at 4096, within --max-memory), so
    /// the first job runs as fast as later ones; 0: none.
    #[arg(long, default_value_t = 4096, value_name = "N")]
    warm_up: usize,
    #[command(flatten)]
    serve: ServeArgs,
    /// Also serve Prometheus metrics (/metrics) over HTTP on this address
    /// (port 0 picks a free one). Unauthenticated and read-only: loopback
    /// only unless --http-public.
    #[arg(long, value_name = "ADDR")]
    http: Option<String>,
    /// Let --http listen on a non-loopback address: anyone who can reach it
    /// can read the metrics.
    #[arg(long, requires = "http")]
    http_public: bool,
    /// Misbehave for fault-tolerance tests: corrupt, drop, or delay=SECS
    /// (only in builds with the `fault-injection` feature).
    #[cfg(feature = "fault-injection")]
    #[arg(long, hide = true)]
    fault: Option<septet_worker::Fault>,
}

#[derive(Debug, Args)]
struct PeerArgs {
    #[command(flatten)]
    worker: WorkerArgs,
    /// Let this peer's own jobs use its own slots (by default they are
    /// swapped for other peers' slots, so a job never checks its own work).
    #[arg(long)]
    serve_self: bool,
}

#[derive(Debug, Args)]
struct PeersArgs {
    #[command(flatten)]
    tracker: TrackerAddr,
    #[command(flatten)]
    security: SecurityArgs,
    /// Print the rows as a JSON array instead of the table.
    #[arg(long, conflicts_with = "csv")]
    json: bool,
    /// Print the rows as CSV (a header line, then one line per peer) that
    /// pandas and spreadsheets read as is.
    #[arg(long)]
    csv: bool,
    /// Also list the peers of the sibling clusters this tracker federates
    /// with (those that answer now); the `cluster` column tells them apart.
    #[arg(long)]
    federation: bool,
}

#[derive(Debug, Args)]
struct LeaseArgs {
    #[command(flatten)]
    tracker: TrackerAddr,
    #[command(flatten)]
    security: SecurityArgs,
    /// Slots to lease.
    #[arg(long, default_value_t = PEERS_PER_LEASE)]
    count: u32,
    /// Hold the lease this many seconds (renewing it), then release it.
    /// Without --hold or --detach, hold until Ctrl-C.
    #[arg(long, value_name = "SECS", conflicts_with = "detach")]
    hold: Option<f64>,
    /// Leave the lease running after exiting; it ends by `septet release
    /// ID --token TOKEN` or its TTL. The token is printed with the lease
    /// (`"token"` with --json); without it nobody can release the lease.
    #[arg(long)]
    detach: bool,
    /// Give up after waiting this many seconds in the queue.
    #[arg(long, value_name = "SECS")]
    max_wait: Option<f64>,
    /// Print the lease as JSON on stdout.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
struct ReleaseArgs {
    #[command(flatten)]
    tracker: TrackerAddr,
    #[command(flatten)]
    security: SecurityArgs,
    /// The lease to release.
    lease_id: u64,
    /// The lease's token, as `septet lease --detach` printed it. Prefer the
    /// environment variable: a command-line argument is visible in `ps`.
    #[arg(long, env = "SEPTET_LEASE_TOKEN", hide_env_values = true, value_name = "TOKEN")]
    token: Option<String>,
}

/// Parses, runs, and maps errors to one line and an exit status.
pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        // --help and --version (on stdout), and `septet` alone (the help):
        // as clap prints them.
        Err(e) if !e.use_stderr() || e.kind() == clap::error::ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
            e.exit()
        }
        Err(e) => {
            eprintln!("error: {}", clap_one_line(&e.render().to_string()));
            return ExitCode::from(2);
        }
    };
    if matches!(cli.command, Command::Tracker(_)) {
        // The tracker formats the peer table for `septet peers`; polars reads
        // its layout from the environment. Set before any thread exists.
        for (key, value) in
            [("POLARS_FMT_MAX_COLS", "16"), ("POLARS_FMT_MAX_ROWS", "64"), ("POLARS_TABLE_WIDTH", "160")]
        {
            if std::env::var_os(key).is_none() {
                std::env::set_var(key, value);
            }
        }
    }
    init_logging(&cli.command);
    // The tracker's work is serialized by its state lock, so it runs on one
    // thread: no lock hand-offs or cross-thread wake-ups between requests
    // (`cargo bench --bench tracker` with 100 requesters shows the gain).
    let mut builder = if matches!(cli.command, Command::Tracker(_)) {
        tokio::runtime::Builder::new_current_thread()
    } else {
        tokio::runtime::Builder::new_multi_thread()
    };
    let runtime = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: could not start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli.command)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", one_line(&e));
            if e.downcast_ref::<InputError>().is_some()
                || e.downcast_ref::<UsageError>().is_some()
                || e.downcast_ref::<SecretFileError>().is_some()
            {
                ExitCode::from(2)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

/// A command-line error as clap renders it (the message, perhaps a list of
/// arguments, a usage line and a pointer to --help, over several lines)
/// on one line, as every other error is: the message, then the usage.
fn clap_one_line(rendered: &str) -> String {
    let mut lines = rendered.lines().map(str::trim);
    let message: Vec<&str> = lines.by_ref().take_while(|l| !l.is_empty()).collect();
    let message = message.join(" ");
    let message = message.strip_prefix("error: ").unwrap_or(&message);
    match lines.find_map(|l| l.strip_prefix("Usage: ")) {
        Some(usage) => format!("{message} (usage: {usage}; more with --help)"),
        None => message.to_string(),
    }
}

/// The error chain on one line, skipping causes whose text the message
/// before them already includes (library errors embed their source).
pub(crate) fn one_line(e: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if !line.contains(&text) {
            if !line.is_empty() {
                line.push_str(": ");
            }
            line.push_str(&text);
        }
    }
    line
}

fn init_logging(command: &Command) {
    let default = match command {
        Command::Tracker(_) | Command::Worker(_) => "info",
        _ => "warn",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}

fn secs(value: f64, what: &str) -> Result<Duration> {
    Duration::try_from_secs_f64(value).with_context(|| format!("{what} must be a non-negative number of seconds"))
}

/// Completes on Ctrl-C or, on Unix, SIGTERM: both shut down cleanly.
pub(crate) async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}

/// The error line's start when the tracker cannot be reached: what to check.
pub(crate) fn unreachable_tracker(addr: &str) -> String {
    format!(
        "could not reach the tracker at {addr} (is `septet tracker` running there? it listens on \
         127.0.0.1:{DEFAULT_PORT} unless given --listen)"
    )
}

async fn connect(addr: &str, security: &SecurityArgs) -> Result<TrackerClient> {
    let security = security.security()?;
    match TrackerClient::connect_with(addr, Role::Client, DEFAULT_REQUEST_TIMEOUT, &security).await {
        Ok(client) => Ok(client),
        // Already one line naming the tracker and the cause.
        Err(e @ septet_common::Error::Handshake { .. }) => Err(e.into()),
        Err(e) => Err(anyhow::Error::new(e).context(unreachable_tracker(addr))),
    }
}

async fn run(command: Command) -> Result<()> {
    match command {
        Command::Tracker(args) => tracker(args).await,
        Command::Worker(args) => worker(args).await,
        Command::Peer(args) => peer(args).await,
        Command::Peers(args) => peers(args).await,
        Command::Lease(args) => lease(args).await,
        Command::Secret(args) => secret(args),
        Command::Release(args) => {
            // A new connection holds no lease: only the token can end one.
            if args.token.is_none() {
                return Err(UsageError(
                    "release needs the lease's token: pass --token TOKEN (or set SEPTET_LEASE_TOKEN), as `septet \
                     lease --detach` printed it; an attached lease ends when its `septet lease` exits"
                        .into(),
                )
                .into());
            }
            let mut client = connect(&args.tracker.tracker, &args.security).await?;
            client
                .release_with(LeaseId(args.lease_id), args.token.as_deref())
                .await
                .with_context(|| format!("while releasing lease {}", args.lease_id))?;
            println!("released lease {}", args.lease_id);
            Ok(())
        }
        Command::Multiply(args) => multiply(args).await,
        Command::Demo(args) => demo(args).await,
    }
}

async fn multiply(args: MultiplyArgs) -> Result<()> {
    let max_wait = args.max_wait.map(|s| secs(s, "--max-wait")).transpose()?;
    let requester = Requester::new(RequesterConfig {
        tracker: args.tracker.tracker,
        max_lease_wait: max_wait,
        verify: args.verify == OnOff::On,
        io_timeout: secs(args.peer_timeout, "--peer-timeout")?,
        silence_timeout: secs(args.silence_timeout, "--silence-timeout")?,
        max_hedges: args.max_hedges,
        security: args.security.security()?,
        plan: args.plan,
        depth: args.depth,
        spill_above: usize::try_from(args.spill_above.saturating_mul(1 << 20)).unwrap_or(usize::MAX),
        ..RequesterConfig::default()
    });
    if let Some(path) = &args.report {
        job::check_output_path(path, "the report")?;
    }
    if let Some(path) = &args.out {
        job::check_output_path(path, "C")?;
    }
    let mut opts = JobOptions {
        check: args.check,
        check_rows: args.check_rows,
        json: args.json,
        out: args.out,
        seed: None,
        inputs: String::new(),
        report: args.report,
        out_of_core: true,
    };
    if let Some((m, k, n)) = args.random {
        opts.seed = Some(args.seed);
        opts.inputs = format!("random, seed {}", args.seed);
        let dtype = args.dtype.unwrap_or(DtypeArg::F64).dtype();
        return job::run_random(&requester, dtype, (m, k, n), args.seed, &opts).await;
    }
    let (a_path, b_path) = (args.a.expect("clap requires --a"), args.b.expect("clap requires --b"));
    opts.inputs = format!("{}, {}", a_path.display(), b_path.display());
    // Every input check happens here, before anything is leased.
    let (a_info, b_info) = (npy::inspect(&a_path)?, npy::inspect(&b_path)?);
    check_operands(&a_path, a_info, &b_path, b_info, args.dtype.map(DtypeArg::dtype))?;
    let want = a_info.dtype;
    // NaN and ±inf are refused here too (their products cannot be
    // verified), unless verification is off.
    let unchecked = args.verify == OnOff::Off;
    match want {
        Dtype::F64 => {
            let a = npy::map_input::<f64>(&a_path, unchecked)?;
            job::run(&requester, a, npy::map_input::<f64>(&b_path, unchecked)?, &opts).await
        }
        Dtype::F32 => {
            let a = npy::map_input::<f32>(&a_path, unchecked)?;
            job::run(&requester, a, npy::map_input::<f32>(&b_path, unchecked)?, &opts).await
        }
    }
}

/// The rules two `.npy` operands must meet together: one element type
/// (and `--dtype`'s, if given), and A's columns equal to B's rows.
///
/// # Errors
/// An [`InputError`] (exit 2) naming the file at fault — both when the
/// shapes disagree, with a hint when A and B look swapped — and the fix.
fn check_operands(
    a_path: &std::path::Path,
    a: npy::NpyInfo,
    b_path: &std::path::Path,
    b: npy::NpyInfo,
    dtype: Option<Dtype>,
) -> Result<()> {
    let (a_name, b_name) = (a_path.display().to_string(), b_path.display().to_string());
    if let Some(want) = dtype {
        for (path, info) in [(&a_name, a), (&b_name, b)] {
            if info.dtype != want {
                return Err(InputError {
                    path: path.clone(),
                    reason: format!(
                        "holds {} but --dtype {want} was given: --dtype must match the files (or leave it out; \
                         convert with np.save(path, np.load(path).astype(np.{})))",
                        info.dtype,
                        numpy_name(want)
                    ),
                }
                .into());
            }
        }
    }
    if a.dtype != b.dtype {
        return Err(InputError {
            path: b_name,
            reason: format!(
                "holds {} but A ({a_name}) holds {}: A and B must have one element type, float64 or float32 \
                 (convert one, e.g. np.save(path, np.load(path).astype(np.{})))",
                b.dtype,
                a.dtype,
                numpy_name(a.dtype)
            ),
        }
        .into());
    }
    if a.shape.1 != b.shape.0 {
        let shapes = format!("A is {}×{} and B is {}×{}", a.shape.0, a.shape.1, b.shape.0, b.shape.1);
        let reason = if b.shape.1 == a.shape.0 {
            format!(
                "shape mismatch: {shapes}, so A's columns ({}) do not equal B's rows ({}); B·A would fit: were they \
                 swapped? (--a {b_name} --b {a_name})",
                a.shape.1, b.shape.0
            )
        } else {
            format!("shape mismatch: {shapes}; A's columns ({}) must equal B's rows ({})", a.shape.1, b.shape.0)
        };
        return Err(InputError { path: format!("--a {a_name}, --b {b_name}"), reason }.into());
    }
    Ok(())
}

/// NumPy's name for `dtype`, for the conversion a message suggests.
fn numpy_name(dtype: Dtype) -> &'static str {
    match dtype {
        Dtype::F64 => "float64",
        Dtype::F32 => "float32",
    }
}

async fn demo(args: DemoArgs) -> Result<()> {
    let least = PEERS_PER_LEASE.pow(u32::from(args.depth));
    let workers = args.workers.unwrap_or(least);
    if workers < least {
        return Err(UsageError(format!(
            "the demo at --depth {} needs at least {least} workers, one per Strassen product (got --workers {workers})",
            args.depth
        ))
        .into());
    }
    anyhow::ensure!(args.n > 0, "--n must be positive");
    if let Some(path) = &args.report {
        job::check_output_path(path, "the report")?;
    }
    // Bound before the grid starts, so a refused --http starts nothing.
    let http = bind_http(args.http.as_deref(), false, "tracker").await?;
    // Even on loopback the demo's grid authenticates every connection, with
    // a secret made for this run that never leaves the process.
    let security = Security::with_secret(Secret::generate(), args.encrypt);
    let grid = LocalGrid::start_with(workers, security.clone()).await?;
    let tracker_addr = grid.tracker();
    let stop_http = CancellationToken::new();
    let state = grid.tracker_state().clone();
    let http_task = start_http(
        http,
        "demo tracker",
        "metrics and status page",
        |a| format!("metrics at http://{a}/metrics, status page at http://{a}/"),
        &stop_http,
        |listener, config, stopped| septet_tracker::http::run(listener, state, config, stopped),
    );
    let result = async {
        let http_task = http_task?;
        eprintln!(
            "demo: tracker on {tracker_addr}, {workers} workers on loopback; multiplying two random {n}×{n} {} matrices (seed {})",
            args.dtype.dtype(),
            args.seed,
            n = args.n
        );
        let requester = Requester::new(RequesterConfig {
            tracker: tracker_addr.to_string(),
            verify: args.verify == OnOff::On,
            security,
            depth: args.depth,
            ..RequesterConfig::default()
        });
        let opts = JobOptions {
            check: true,
            check_rows: Some(0),
            json: args.json,
            out: None,
            seed: Some(args.seed),
            inputs: format!("random, seed {}", args.seed),
            report: args.report.clone(),
            out_of_core: false,
        };
        let ran = job::run_random(&requester, args.dtype.dtype(), (args.n, args.n, args.n), args.seed, &opts).await;
        if ran.is_ok() && !args.json {
            println!(
                "  grid/local is the grid job's time (lease wait left out) over one faer product of the same \
                 matrices in this process. Here every worker shares this machine's cores, so above 1× is \
                 expected: the demo shows the grid working; a grid gains on workers that are separate machines"
            );
        }
        stop_http.cancel();
        if let Some(task) = http_task {
            task.await.context("the demo tracker's HTTP endpoint panicked")?;
        }
        ran
    }
    .await;
    stop_http.cancel();
    grid.shutdown().await?;
    if result.is_ok() {
        eprintln!("demo: tracker and workers shut down cleanly");
    }
    result
}

/// `--depth`: 1, 2, or auto (0 to the requester).
fn parse_depth(s: &str) -> std::result::Result<u8, String> {
    match s {
        "1" => Ok(1),
        "2" => Ok(2),
        "auto" => Ok(0),
        _ => Err(format!("{s:?} is not a depth: 1, 2 or auto")),
    }
}

/// Binds `addr` and says where the `role` listens (port 0 picks one).
async fn listen(addr: &str, role: &str) -> Result<TcpListener> {
    let listener = septet_common::listener::bind(addr).await.with_context(|| format!("could not listen on {addr}"))?;
    eprintln!("septet {role} listening on {}", listener.local_addr()?);
    Ok(listener)
}

/// Room left for a late heartbeat (a busy worker, a slow network, the
/// tracker's sweep period) between the worker's interval and the moment
/// the tracker marks it suspect: a quarter of the interval, and at least
/// this much.
const HEARTBEAT_SLACK: Duration = Duration::from_millis(250);

/// Refuses heartbeat settings under which healthy workers flap: the
/// tracker marks a worker suspect after half `timeout` without a
/// heartbeat, and workers heartbeat every `interval` (the tracker tells
/// them at registration), so half the timeout must exceed the interval
/// with room for delays ([`HEARTBEAT_SLACK`]).
///
/// # Errors
/// A [`UsageError`] (exit 2) saying which values would do.
fn check_heartbeats(interval: Duration, timeout: Duration) -> Result<()> {
    let slack = |interval: Duration| (interval / 4).max(HEARTBEAT_SLACK);
    let needed = interval + slack(interval);
    if timeout / 2 >= needed {
        return Ok(());
    }
    // The longest interval that fits the timeout: i + max(i/4, slack) ≤ t/2.
    let half = timeout.as_secs_f64() / 2.0;
    let longest = if half >= 1.25 { half / 1.25 } else { half - HEARTBEAT_SLACK.as_secs_f64() };
    let interval_hint = if longest > 0.0 {
        format!(", or a --heartbeat-interval of at most {}", (longest * 100.0).floor() / 100.0)
    } else {
        String::new()
    };
    Err(UsageError(format!(
        "--heartbeat-timeout {} is too short for --heartbeat-interval {}: workers are marked suspect after half the \
         timeout ({:.2} s) without a heartbeat, which must exceed the interval with room for delays ({:.2} s), or \
         healthy workers flap; pass --heartbeat-timeout {}{interval_hint}",
        timeout.as_secs_f64(),
        interval.as_secs_f64(),
        half,
        needed.as_secs_f64(),
        // Rounded up to a tenth of a second.
        (needed.as_secs_f64() * 2.0 * 10.0).ceil() / 10.0,
    ))
    .into())
}

async fn tracker(args: TrackerArgs) -> Result<()> {
    check_heartbeats(
        secs(args.heartbeat_interval, "--heartbeat-interval")?,
        secs(args.heartbeat_timeout, "--heartbeat-timeout")?,
    )?;
    let config = TrackerConfig {
        lease_ttl: secs(args.lease_ttl, "--lease-ttl")?,
        heartbeat_interval: secs(args.heartbeat_interval, "--heartbeat-interval")?,
        heartbeat_timeout: secs(args.heartbeat_timeout, "--heartbeat-timeout")?,
        max_frame_len: args.max_frame_len,
        handshake_timeout: secs(args.serve.handshake_timeout, "--handshake-timeout")?,
        max_connections: args.serve.max_connections.unwrap_or(TrackerConfig::default().max_connections),
        security: args.serve.security.security()?,
        max_peers: args.max_peers,
        forget_gone: secs(args.forget_gone, "--forget-gone")?,
        cluster: args.cluster,
        siblings: args.federate,
        ..TrackerConfig::default()
    };
    config.validate().map_err(|e| UsageError(e.to_string()))?;
    check_exposure("tracker", &args.listen, &config.security, args.serve.insecure).await?;
    // The HTTP endpoint is checked and bound before the tracker listens, so
    // a refused --http leaves nothing half started.
    let http = bind_http(args.http.as_deref(), args.http_public, "tracker").await?;
    let listener = listen(&args.listen, "tracker").await?;
    let tracker = septet_tracker::Tracker::new(config)?;
    // Ctrl-C stops both servers at once.
    let stop = CancellationToken::new();
    let http_task = start_http(
        http,
        "tracker",
        "metrics and status page",
        |a| format!("metrics at http://{a}/metrics, status page at http://{a}/"),
        &stop,
        |listener, config, stopped| septet_tracker::http::run(listener, tracker.clone(), config, stopped),
    )?;
    let served = septet_tracker::server::serve(tracker, listener, stop_on_signal(&stop)).await;
    finish_beside_http("tracker", &stop, http_task, served).await
}

/// Binds `--http` (if given) for `role`: a non-loopback address without
/// `--http-public` is a usage error (exit 2).
async fn bind_http(
    addr: Option<&str>,
    public: bool,
    role: &'static str,
) -> Result<Option<(TcpListener, septet_observe::HttpConfig)>> {
    let Some(addr) = addr else { return Ok(None) };
    match septet_observe::bind(addr, public, role).await {
        Ok(bound) => Ok(Some(bound)),
        Err(e @ septet_observe::Error::NotLoopback { .. }) => Err(UsageError(e.to_string()).into()),
        Err(e) => Err(e.into()),
    }
}

/// The worker's settings from its flags, validated and checked for exposure.
async fn worker_config(args: &WorkerArgs, role: &str) -> Result<WorkerConfig> {
    let config = WorkerConfig {
        tracker: Some(args.tracker.tracker.clone()),
        slots: args.slots,
        threads: args.threads,
        warm_up: args.warm_up,
        max_frame_len: args.max_frame_len,
        max_memory: args.max_memory,
        #[cfg(feature = "fault-injection")]
        fault: args.fault,
        handshake_timeout: secs(args.serve.handshake_timeout, "--handshake-timeout")?,
        max_connections: args.serve.max_connections.unwrap_or(WorkerConfig::default().max_connections),
        security: args.serve.security.security()?,
        ..WorkerConfig::default()
    };
    config.validate().map_err(|e| UsageError(e.to_string()))?;
    check_exposure(role, &args.listen, &config.security, args.serve.insecure).await?;
    if let Some(warning) = loopback_worker_warning(&args.listen, &args.tracker.tracker).await {
        eprintln!("warning: {warning}");
    }
    Ok(config)
}

/// The addresses `addr` names (an IP and port as is; a host name looked up).
async fn resolve(addr: &str) -> Vec<std::net::SocketAddr> {
    match addr.parse() {
        Ok(a) => vec![a],
        Err(_) => tokio::net::lookup_host(addr).await.map(Iterator::collect).unwrap_or_default(),
    }
}

/// A worker registers the address it listens on: a loopback one is
/// reachable only from this host, so with a tracker elsewhere the grid's
/// requesters (on other hosts) could never reach it.
async fn loopback_worker_warning(listen: &str, tracker: &str) -> Option<String> {
    let listens = resolve(listen).await;
    let trackers = resolve(tracker).await;
    let local = |addrs: &[std::net::SocketAddr]| !addrs.is_empty() && addrs.iter().all(|a| a.ip().is_loopback());
    (local(&listens) && !trackers.is_empty() && !local(&trackers)).then(|| {
        format!(
            "this worker listens on {listen}, a loopback address, but the tracker {tracker} is not on loopback: \
             requesters on other hosts cannot reach a loopback address. Pass --listen with an address they can \
             reach (e.g. --listen 10.0.0.5:0) and --secret-file"
        )
    })
}

async fn worker(args: WorkerArgs) -> Result<()> {
    let config = worker_config(&args, "worker").await?;
    let http = bind_http(args.http.as_deref(), args.http_public, "worker").await?;
    let listener = listen(&args.listen, "worker").await?;
    // Ctrl-C stops both servers at once; so does the worker stopping on its
    // own (a tracker that refuses its secret).
    let stop = CancellationToken::new();
    let http_task = start_worker_http(http, "worker", &stop, config.metrics.clone())?;
    let served = septet_worker::run(listener, config, stop_on_signal(&stop)).await;
    finish_beside_http("worker", &stop, http_task, served).await
}

/// A worker's (or peer's) `--http` metrics endpoint, as [`start_http`] starts it.
fn start_worker_http(
    http: Option<(TcpListener, septet_observe::HttpConfig)>,
    role: &str,
    stop: &CancellationToken,
    metrics: septet_worker::metrics::WorkerMetrics,
) -> Result<Option<tokio::task::JoinHandle<()>>> {
    start_http(
        http,
        role,
        "metrics",
        |a| format!("metrics at http://{a}/metrics"),
        stop,
        |listener, config, stopped| septet_worker::metrics::run_http(listener, metrics, config, stopped),
    )
}

/// `septet peer`: the worker serves beside the console until `quit`.
async fn peer(args: PeerArgs) -> Result<()> {
    let args_w = &args.worker;
    let config = worker_config(args_w, "peer").await?;
    let http = bind_http(args_w.http.as_deref(), args_w.http_public, "worker").await?;
    let listener = septet_common::listener::bind(&args_w.listen)
        .await
        .with_context(|| format!("could not listen on {}", args_w.listen))?;
    let addr = listener.local_addr()?;
    let stop = CancellationToken::new();
    let metrics = config.metrics.clone();
    let http_task = start_worker_http(http, "peer", &stop, metrics.clone())?;
    let (tracker, security, slots) = (args_w.tracker.tracker.clone(), config.security.clone(), config.slots);
    let s = stop.clone();
    let worker = tokio::spawn(septet_worker::run(listener, config, async move { s.cancelled().await }));
    let serving = crate::console::Serving { worker, addr, slots, metrics };
    let result = crate::console::run(tracker, security, args.serve_self, serving, stop.clone()).await;
    stop.cancel();
    if let Some(task) = http_task {
        task.await.context("the peer's HTTP endpoint panicked")?;
    }
    result
}

/// Starts a server's `--http` endpoint (bound by [`bind_http`], if at all)
/// with `run`, and says where it is (`urls`) and, if it is public, that
/// anyone who reaches it can read its `contents`. It stops when `stop` is
/// cancelled.
fn start_http<F>(
    http: Option<(TcpListener, septet_observe::HttpConfig)>,
    role: &str,
    contents: &str,
    urls: impl FnOnce(std::net::SocketAddr) -> String,
    stop: &CancellationToken,
    run: impl FnOnce(TcpListener, septet_observe::HttpConfig, WaitForCancellationFutureOwned) -> F,
) -> Result<Option<tokio::task::JoinHandle<()>>>
where
    F: std::future::Future<Output = ()> + Send + 'static,
{
    let Some((listener, config)) = http else { return Ok(None) };
    let addr = listener.local_addr()?;
    if !config.loopback_hosts_only {
        eprintln!("warning: the {role}'s {contents} on {addr} are readable by anyone who can reach it (--http-public)");
    }
    eprintln!("septet {role}: {}", urls(addr));
    Ok(Some(tokio::spawn(run(listener, config, stop.clone().cancelled_owned()))))
}

/// A server's shutdown: Ctrl-C or SIGTERM (which also stops its `--http`
/// endpoint, through `stop`), or `stop` cancelled.
fn stop_on_signal(stop: &CancellationToken) -> impl std::future::Future<Output = ()> {
    let stop = stop.clone();
    async move {
        tokio::select! {
            _ = shutdown_signal() => stop.cancel(),
            _ = stop.cancelled() => {}
        }
    }
}

/// Once the server has stopped (`served`), stops its `--http` endpoint and
/// waits for it, then reports the server's result.
async fn finish_beside_http<E>(
    role: &str,
    stop: &CancellationToken,
    http_task: Option<tokio::task::JoinHandle<()>>,
    served: Result<(), E>,
) -> Result<()>
where
    E: std::error::Error + Send + Sync + 'static,
{
    stop.cancel();
    if let Some(task) = http_task {
        task.await.with_context(|| format!("the {role}'s HTTP endpoint panicked"))?;
    }
    served?;
    Ok(())
}

async fn peers(args: PeersArgs) -> Result<()> {
    let mut client = connect(&args.tracker.tracker, &args.security).await?;
    let listed = if args.federation { client.federation_peers().await } else { client.peers().await };
    let (table, rows) = listed.context("while listing peers")?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
    } else if args.csv {
        let mut out = csv::Writer::from_writer(std::io::stdout().lock());
        for row in &rows {
            out.serialize(row).context("while writing CSV")?;
        }
        if rows.is_empty() {
            // A header even for an empty grid, so readers see the columns.
            out.write_record(PEER_COLUMNS).context("while writing CSV")?;
        }
        out.flush().context("while writing CSV")?;
    } else {
        println!("{table}");
        println!("{PEER_UNITS}");
    }
    Ok(())
}

/// A size such as `512M`, `8G` or `1.5T` (binary units; a plain number is
/// bytes) in bytes.
fn parse_size(text: &str) -> std::result::Result<u64, String> {
    let t = text.trim();
    let (number, unit) = match t.find(|c: char| c.is_ascii_alphabetic()) {
        Some(i) => (&t[..i], t[i..].to_ascii_uppercase()),
        None => (t, String::new()),
    };
    let scale: u64 = match unit.trim_end_matches("IB").trim_end_matches('B') {
        "" => 1,
        "K" => 1 << 10,
        "M" => 1 << 20,
        "G" => 1 << 30,
        "T" => 1 << 40,
        _ => return Err(format!("unknown unit in {text:?} (K, M, G or T)")),
    };
    let value: f64 = number.trim().parse().map_err(|_| format!("{text:?} is not a size such as 512M or 8G"))?;
    if !(value.is_finite() && value > 0.0) {
        return Err(format!("{text:?}: a size must be positive"));
    }
    Ok((value * scale as f64) as u64)
}

/// The line under `septet peers`' table: what its numbers count.
const PEER_UNITS: &str = "memory_mib: MiB the worker's tasks may use, all slots together (--max-memory); \
                          joined_at, last_seen: milliseconds since the tracker started; in_use: slots leased now; \
                          slow > 0: on probation; on probation or failures > 0: leased after the others";

/// The peer table's columns, in `PeerRow`'s order (the CSV header).
const PEER_COLUMNS: [&str; 12] = [
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
    "cluster",
];

fn secret(args: SecretArgs) -> Result<()> {
    match args.out {
        Some(path) => {
            let dir = match path.parent() {
                Some(d) if !d.as_os_str().is_empty() => d,
                _ => std::path::Path::new("."),
            };
            if !dir.is_dir() {
                return Err(UsageError(format!(
                    "cannot write the secret to {}: {} is not a directory (create it first, e.g. `mkdir -p {}`)",
                    path.display(),
                    dir.display(),
                    dir.display()
                ))
                .into());
            }
            Secret::create_file(&path)?;
            eprintln!(
                "wrote a new cluster secret to {} (mode 0600); give it to every tracker, worker and client with --secret-file",
                path.display()
            );
        }
        None => println!("{}", Secret::generate().to_text()),
    }
    Ok(())
}

/// Prints the lease; `token` (a detached lease's) beside the lease id.
fn print_lease(grant: &LeaseGrant, token: Option<&str>, json: bool) -> Result<()> {
    let mut out = std::io::stdout().lock();
    if json {
        let mut value = serde_json::json!({
            "lease_id": grant.lease_id,
            "ttl_ms": grant.ttl_ms,
            "peers": grant.peers.iter().map(|p| serde_json::json!({"peer_id": p.peer_id, "addr": p.addr})).collect::<Vec<_>>(),
        });
        if let Some(token) = token {
            value["token"] = token.into();
        }
        writeln!(out, "{value}")?;
    } else {
        writeln!(out, "lease {} ({} slots, ttl {:.0}s)", grant.lease_id, grant.peers.len(), grant.ttl_ms as f64 / 1e3)?;
        if let Some(token) = token {
            writeln!(out, "  token {token}")?;
        }
        for p in &grant.peers {
            writeln!(out, "  peer {:>4}  {}", p.peer_id, p.addr)?;
        }
    }
    out.flush()?;
    Ok(())
}

async fn lease(args: LeaseArgs) -> Result<()> {
    let max_wait = args.max_wait.map(|s| secs(s, "--max-wait")).transpose()?;
    let hold = args.hold.map(|s| secs(s, "--hold")).transpose()?;
    let mut client = connect(&args.tracker.tracker, &args.security).await?;
    let security = args.security.security()?;
    let mut checked = false;
    let on_wait = |position: u32, free: u32, needed: u32| {
        eprintln!("waiting: position {position} in the tracker's queue ({free} of {needed} slots free)");
        if !std::mem::replace(&mut checked, true) {
            let say = |line: String| eprintln!("{line}");
            job::warn_if_unservable(args.tracker.tracker.clone(), security.clone(), needed, say);
        }
    };
    let grant = tokio::select! {
        grant = client.lease(args.count, args.detach, max_wait, on_wait) => grant.context("while leasing peers")?,
        _ = shutdown_signal() => bail!("interrupted while waiting for a lease; left the queue"),
    };
    // Only a detached lease's token is worth printing: an attached one ends
    // with this process anyway.
    let token = args.detach.then_some(grant.token.as_str());
    print_lease(&grant, token, args.json)?;
    if args.detach {
        let id = grant.lease_id;
        eprintln!(
            "lease {id} is detached: it ends when its TTL passes, or with `septet release {id}` given its token \
             (--token, or SEPTET_LEASE_TOKEN to keep it out of `ps`)"
        );
        return Ok(());
    }
    // Hold, renewing at half the TTL, until --hold passes or Ctrl-C.
    let ttl = Duration::from_millis(grant.ttl_ms);
    let until = hold.map(|h| tokio::time::Instant::now() + h);
    let mut renew =
        tokio::time::interval_at(tokio::time::Instant::now() + ttl / 2, (ttl / 2).max(Duration::from_millis(10)));
    let hold_done = async {
        match until {
            Some(t) => tokio::time::sleep_until(t).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(hold_done);
    loop {
        tokio::select! {
            _ = &mut hold_done => break,
            _ = shutdown_signal() => break,
            _ = renew.tick() => {
                client.renew(grant.lease_id).await.with_context(|| format!("while renewing lease {}", grant.lease_id))?;
            }
        }
    }
    client.release(grant.lease_id).await.with_context(|| format!("while releasing lease {}", grant.lease_id))?;
    eprintln!("released lease {}", grant.lease_id);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::parse_size;

    #[test]
    fn memory_sizes_take_binary_units_and_refuse_nonsense() {
        assert_eq!(parse_size("512M"), Ok(512 << 20));
        assert_eq!(parse_size("8G"), Ok(8 << 30));
        assert_eq!(parse_size("8GiB"), Ok(8 << 30));
        assert_eq!(parse_size("1.5t"), Ok(3 << 39));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("64kb"), Ok(64 << 10));
        for bad in ["", "M", "-1G", "0", "12X", "lots"] {
            assert!(parse_size(bad).is_err(), "{bad:?}");
        }
    }
}
