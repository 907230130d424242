//! The worker's compute server: each connection reads multiply tasks, runs
//! each product with faer on a blocking thread (at most `slots` at once),
//! and writes the products back from a separate writer task, so the
//! connection keeps reading frames while products compute.
//!
//! A product holds its compute slot until it has been written: at most
//! `slots` products exist at once, however many tasks clients pipeline, and
//! a client that never reads its replies stops the worker reading its tasks
//! (and, after the write deadline, loses its connection) instead of making
//! it hold more products.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use septet_common::conn::{ConnLimits, FrameBudget};
use septet_common::frame::{BlockOp, Blocks, DEFAULT_MAX_FRAME_LEN};
use septet_common::listener::{self, ListenConfig};
use septet_common::matrix::{matmul_dyn, parallelism, prefault, recycle_matrix};
use septet_common::proto::{Failure, Rendezvous, TaskId, WorkerReply, WorkerRequest};
use septet_common::punch;
use septet_common::secure::Security;
use septet_common::ticket::TicketRefusal;
use septet_common::{deadline, Connection, Dtype, Error, ErrorCode, Frame, FrameWriter, Matrix, Result, Role};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, instrument, warn};

use crate::agent;
use crate::gate::{Admission, Gate};
use crate::metrics::{InProgress, WorkerMetrics};
use crate::relay::{self, Relays};

/// "Bad frame" warnings, at most a burst per window like handshake refusals.
static BAD_FRAMES: std::sync::LazyLock<listener::RateLimit> = std::sync::LazyLock::new(listener::RateLimit::new);

/// How long shutdown waits for connections (and their products) to finish.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Slowest rate, in bytes per second, at which a client must take a product
/// (beyond the I/O timeout) before the worker gives up on the connection
/// and frees the product's slot.
const MIN_REPLY_RATE: f64 = 1e6;

/// Worker settings.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// Tracker to register with; `None` serves without registering (tests, benches).
    pub tracker: Option<String>,
    /// Products computed at once.
    pub slots: u32,
    /// faer threads per product; 0 uses every thread of the rayon pool.
    pub threads: usize,
    /// Before registering, set aside page-faulted buffers for the blocks of
    /// f64 jobs up to `warm_up`×`warm_up`·`warm_up`×`warm_up`, in the shapes
    /// either plan holds them in ([`WorkerConfig::warm_up_buffers`]: 240 MiB
    /// a slot at 4096), so the first job does not fault them in while it
    /// runs; 0 sets none aside.
    pub warm_up: usize,
    /// Largest frame accepted (a task carries two operands).
    pub max_frame_len: usize,
    /// Bytes of memory the worker's tasks may use, all slots together
    /// (`--max-memory`); `None`: what the host has available
    /// ([`available_memory`]) when the worker starts. Each slot gets an
    /// equal share; a task or relayed job whose blocks do not fit in one is
    /// refused, before its payload is read, with the sizes in the reason.
    pub max_memory: Option<u64>,
    /// Deadline for tracker requests, and for a frame that has begun to
    /// keep arriving.
    pub io_timeout: Duration,
    /// Deadline for a new connection's handshake.
    pub handshake_timeout: Duration,
    /// Connections served at once; the excess is refused.
    pub max_connections: usize,
    /// The cluster secret and whether to encrypt (with requesters and the tracker).
    pub security: Security,
    /// On every connection, say [`WorkerReply::Working`] whenever nothing
    /// else was written for this long, so requesters can tell a silent
    /// (dead or cut-off) worker from a busy one within a few of these.
    pub progress_interval: Duration,
    /// Where the worker counts what it does (served by `--http`); a fresh
    /// registry by default.
    pub metrics: WorkerMetrics,
    /// Misbehave on purpose, for fault-tolerance tests.
    #[cfg(feature = "fault-injection")]
    pub fault: Option<Fault>,
}

/// A deliberate misbehaviour, for testing how requesters cope. Only in
/// builds with the `fault-injection` feature.
#[cfg(feature = "fault-injection")]
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Fault {
    /// Return wrong products (one element off by one, every task).
    Corrupt,
    /// Hold every reply this long before sending it.
    Delay(Duration),
    /// Send half of every product, then drop the connection.
    DropMidReply,
    /// Relay: alter every quadrant panel forwarded to another slot.
    CorruptForward,
    /// Relay: alter every C panel reduced here.
    CorruptReduce,
}

#[cfg(feature = "fault-injection")]
impl std::str::FromStr for Fault {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "corrupt" => Ok(Fault::Corrupt),
            "drop" => Ok(Fault::DropMidReply),
            "corrupt-forward" => Ok(Fault::CorruptForward),
            "corrupt-reduce" => Ok(Fault::CorruptReduce),
            _ => match s.strip_prefix("delay=").map(str::parse::<f64>) {
                Some(Ok(secs)) if secs >= 0.0 => Ok(Fault::Delay(Duration::from_secs_f64(secs))),
                _ => {
                    Err(format!("unknown fault {s:?} (corrupt, corrupt-forward, corrupt-reduce, drop, or delay=SECS)"))
                }
            },
        }
    }
}

impl Default for WorkerConfig {
    fn default() -> Self {
        Self {
            tracker: None,
            slots: 1,
            threads: 0,
            warm_up: 0,
            max_frame_len: DEFAULT_MAX_FRAME_LEN,
            max_memory: None,
            io_timeout: Duration::from_secs(10),
            handshake_timeout: Duration::from_secs(5),
            max_connections: 512,
            security: Security::default(),
            progress_interval: PROGRESS_INTERVAL,
            metrics: WorkerMetrics::default(),
            #[cfg(feature = "fault-injection")]
            fault: None,
        }
    }
}

impl WorkerConfig {
    /// Checks the settings.
    ///
    /// # Errors
    /// [`Error::Invalid`] naming the bad setting.
    pub fn validate(&self) -> Result<()> {
        if self.slots == 0 || self.slots > 1024 {
            return Err(Error::Invalid(format!("slots must be between 1 and 1024, not {}", self.slots)));
        }
        if self.max_frame_len < 1024 {
            return Err(Error::Invalid(format!("a maximum frame of {} bytes is too small", self.max_frame_len)));
        }
        if self.io_timeout.is_zero() || self.handshake_timeout.is_zero() {
            return Err(Error::Invalid("the I/O and handshake timeouts must be positive".into()));
        }
        if self.max_connections == 0 {
            return Err(Error::Invalid("the connection cap must be at least 1".into()));
        }
        if self.warm_up_block().is_none() {
            return Err(Error::Invalid(format!(
                "a warm-up for {n}×{n} jobs needs tasks larger than this worker's {}-byte frame limit",
                self.max_frame_len,
                n = self.warm_up
            )));
        }
        self.security.validate()?;
        Ok(())
    }

    /// Bytes each slot's task may use: [`WorkerConfig::max_memory`] (or
    /// the host's available memory) shared equally among the slots.
    pub fn slot_memory(&self) -> u64 {
        self.max_memory.unwrap_or_else(available_memory) / u64::from(self.slots.max(1))
    }

    /// Elements of one block of a [`WorkerConfig::warm_up`]-sized job, if
    /// its tasks (two such blocks) fit in a frame.
    fn warm_up_block(&self) -> Option<usize> {
        let half = self.warm_up.div_ceil(2);
        let len = half.checked_mul(half)?;
        let task = len.checked_mul(2 * std::mem::size_of::<f64>())?;
        (task <= self.max_frame_len).then_some(len)
    }

    /// What [`WorkerConfig::warm_up`] sets aside for each slot, as
    /// (elements, buffers), in the order it is set aside: a direct task's
    /// three blocks (its operands and product); the panels a relayed job's
    /// slot holds at once — its two quadrants of A and two of B arrive,
    /// are forwarded and are computed with a panel at a time, and a slow
    /// product keeps them waiting (40–65 panels were faulted in by each
    /// slot of a first relayed n=4096 job without these); and the two
    /// buffers of a batched product call (its operand's rows and the
    /// product's). Each shape is served by the pool's smallest buffer that
    /// holds it, so without the panels a relay's first panels took the
    /// direct task's blocks. Capped by the slot's memory
    /// ([`WorkerConfig::slot_memory`]): the shapes that do not fit are left out.
    pub fn warm_up_buffers(&self) -> Vec<(usize, usize)> {
        let Some(block) = self.warm_up_block().filter(|_| self.warm_up > 0) else { return Vec::new() };
        let half = self.warm_up.div_ceil(2);
        let panels = septet_common::relay::Panels::choose(half, half, Dtype::F64);
        let panel = panels.per * half;
        let wanted = [(block, 3), (panel, 4 * panels.count()), (relay::batch_panels(panels) * panel, 2)];
        let budget = self.slot_memory();
        let mut used = 0u64;
        wanted
            .into_iter()
            .take_while(|&(len, count)| {
                used = used.saturating_add((len * count * std::mem::size_of::<f64>()) as u64);
                used <= budget
            })
            .collect()
    }
}

/// Default [`WorkerConfig::progress_interval`]: requesters give a worker
/// up after a few of these without a byte (`RequesterConfig::silence_timeout`).
pub const PROGRESS_INTERVAL: Duration = Duration::from_secs(1);

/// Serves multiply tasks on `listener` (and, with a tracker configured,
/// stays registered with it) until `shutdown` completes; then deregisters,
/// stops accepting and lets running products finish.
///
/// # Errors
/// [`Error::Invalid`] for a bad configuration, [`Error::Io`] if the listener
/// has no local address, and the tracker's refusal of our cluster secret
/// (or encryption setting, or protocol version), after shutting down as
/// above: a worker the grid will never use should not keep running.
pub async fn run(listener: TcpListener, config: WorkerConfig, shutdown: impl Future<Output = ()>) -> Result<()> {
    config.validate()?;
    // Fixed at start: what the worker registers with is what it enforces.
    let config = WorkerConfig { max_memory: Some(config.max_memory.unwrap_or_else(available_memory)), ..config };
    config.metrics.set_slots(config.slots);
    let local = listener.local_addr()?;
    warm_up(&config).await;
    let agent_stop = CancellationToken::new();
    let gate = Arc::new(Gate::new(config.tracker.is_some()));
    let agent_task = config.tracker.clone().map(|tracker| {
        let agent_config = agent::AgentConfig {
            tracker,
            listen: local,
            slots: config.slots,
            memory_mib: config.max_memory.unwrap_or(0) >> 20,
            timeout: config.io_timeout,
            security: config.security.clone(),
            gate: Some(gate.clone()),
        };
        let (metrics, stop) = (config.metrics.clone(), agent_stop.clone());
        tokio::spawn(async move { agent::run_observed(agent_config, &metrics, stop).await })
    });
    let (fatal_tx, fatal_rx) = tokio::sync::oneshot::channel();
    let agent_task = agent_task.map(|task| {
        tokio::spawn(async move {
            // A refused secret stops the worker (see `agent::run`).
            if let Ok(Err(e)) = task.await {
                let _ = fatal_tx.send(e);
            }
        })
    });
    let mut fatal = None;
    info!(addr = %local, slots = config.slots, memory_mib = config.max_memory.unwrap_or(0) >> 20, "worker listening");
    let slots = Arc::new(Semaphore::new(config.slots as usize));
    let listen = ListenConfig {
        name: "worker",
        // Room for a task frame per slot and one more in flight at once.
        limits: ConnLimits {
            budget: Some(FrameBudget::new(config.max_frame_len.saturating_mul(config.slots as usize + 1))),
            ..conn_limits(&config)
        },
        max_connections: config.max_connections,
        drain_timeout: DRAIN_TIMEOUT,
        on_refusal: Some(config.metrics.refusal_hook()),
        splicer: None,
    };
    let relays = Arc::new(Relays::new(config.slots));
    let handler = {
        let config = config.clone();
        move |conn: Connection, _role: Role, cancel: CancellationToken| {
            let shared = Shared { slots: slots.clone(), relays: relays.clone(), gate: gate.clone() };
            serve_connection(conn, config.clone(), shared, cancel)
        }
    };
    // Deregister first on shutdown, so no new lease names this worker
    // while its connections drain.
    let stopping = async {
        tokio::select! {
            _ = shutdown => {}
            Ok(e) = fatal_rx => fatal = Some(e),
        }
        agent_stop.cancel();
    };
    listener::serve(listener, listen, stopping, handler).await;
    if let Some(agent) = agent_task {
        let _ = tokio::time::timeout(DRAIN_TIMEOUT, agent).await;
    }
    fatal.map_or(Ok(()), Err)
}

/// Sets aside the buffers of [`WorkerConfig::warm_up`]: before the worker
/// registers, so the tracker lends no slot of it while it is busy with this.
async fn warm_up(config: &WorkerConfig) {
    let buffers = config.warm_up_buffers();
    if buffers.is_empty() {
        return;
    }
    let slots = config.slots as usize;
    let started = std::time::Instant::now();
    let set_aside = move || {
        buffers.iter().fold((0, 0), |(made, bytes), &(len, count)| {
            let n = prefault::<f64>(len, count * slots);
            (made + n, bytes + n * len * std::mem::size_of::<f64>())
        })
    };
    match tokio::task::spawn_blocking(set_aside).await {
        Ok((made, bytes)) => info!(
            n = config.warm_up,
            buffers = made,
            mib = bytes >> 20,
            ms = started.elapsed().as_millis() as u64,
            "memory for the first jobs set aside"
        ),
        Err(e) => warn!(error = %e, "setting memory aside failed; the first job will fault its own in"),
    }
}

/// What the writer task sends back.
enum Reply {
    /// A product, with the compute slot it holds until it is written.
    Product(TaskId, Matrix, Duration, Slot),
    Error(WorkerReply),
}

/// A product's hold on a compute slot: released when the product has been
/// written (or abandoned with its connection), not when it was computed.
struct Slot {
    _permit: OwnedSemaphorePermit,
    /// The lease's slot on this worker (see [`Gate`]), if it counts them.
    _lease: Option<OwnedSemaphorePermit>,
    _task: InProgress,
    #[cfg(test)]
    _live: tests::LiveProduct,
}

impl Slot {
    fn new(permit: OwnedSemaphorePermit, lease: Option<OwnedSemaphorePermit>, task: InProgress) -> Self {
        Self {
            _permit: permit,
            _lease: lease,
            _task: task,
            #[cfg(test)]
            _live: tests::LiveProduct::new(),
        }
    }
}

/// Fault injection: nudges one element of a product.
#[cfg(feature = "fault-injection")]
fn corrupt(mut m: Matrix) -> Matrix {
    match &mut m {
        Matrix::F64(a) => a.iter_mut().take(1).for_each(|v| *v += 1.0),
        Matrix::F32(a) => a.iter_mut().take(1).for_each(|v| *v += 1.0),
    }
    m
}

/// Fault injection: `Computed`, half of the product, then nothing.
#[cfg(feature = "fault-injection")]
async fn drop_mid_reply(writer: &mut FrameWriter<OwnedWriteHalf>, task_id: TaskId, m: Matrix, took: Duration) {
    let done = WorkerReply::Computed { task_id, compute_us: took.as_micros() as u64 };
    if writer.send(&done).await.is_ok() {
        let bytes =
            septet_common::frame::encode(&Frame::Blocks(Blocks { task_id, op: BlockOp::Product, mats: vec![m] }));
        if let Ok(bytes) = bytes {
            let _ = writer.send_raw(&bytes[..bytes.len() / 2]).await;
        }
    }
    warn!(%task_id, "fault injection: dropping the connection mid-reply");
}

/// Writes `Computed` and the product, within the I/O timeout plus the
/// product's size at [`MIN_REPLY_RATE`].
async fn send_product(
    writer: &mut FrameWriter<OwnedWriteHalf>,
    task_id: TaskId,
    m: &Matrix,
    took: Duration,
    io_timeout: Duration,
) -> Result<()> {
    let bytes = (m.shape().0 * m.shape().1 * m.dtype().size()) as f64;
    let limit = io_timeout + Duration::from_secs_f64(bytes / MIN_REPLY_RATE);
    deadline(limit, "the client to take a product", async {
        writer.send(&WorkerReply::Computed { task_id, compute_us: took.as_micros() as u64 }).await?;
        writer.send_blocks(task_id, BlockOp::Product, &[m.view()]).await
    })
    .await
}

/// The connection's writer: sends replies in order, each product freeing
/// its slot once written.
async fn write_replies(mut writer: FrameWriter<OwnedWriteHalf>, mut rx: mpsc::Receiver<Reply>, config: &WorkerConfig) {
    let mut quiet = tokio::time::interval(config.progress_interval);
    quiet.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    quiet.tick().await;
    loop {
        let reply = tokio::select! {
            reply = rx.recv() => match reply {
                Some(reply) => reply,
                None => return,
            },
            _ = quiet.tick() => {
                // Nothing to say for a whole interval: say we are here.
                let said = deadline(config.io_timeout, "the client to take a progress frame", writer.send(&WorkerReply::Working)).await;
                if let Err(e) = said {
                    debug!(error = %e, "could not send a progress frame; closing");
                    return;
                }
                continue;
            }
        };
        let sent = match reply {
            Reply::Product(task_id, m, took, slot) => {
                #[cfg(feature = "fault-injection")]
                let m = match config.fault {
                    Some(Fault::Corrupt) => corrupt(m),
                    Some(Fault::DropMidReply) => return drop_mid_reply(&mut writer, task_id, m, took).await,
                    _ => m,
                };
                let sent = send_product(&mut writer, task_id, &m, took, config.io_timeout).await;
                if sent.is_ok() {
                    config.metrics.product_sent(task_id, m.dtype(), m.shape());
                }
                recycle_matrix(m);
                drop(slot);
                sent
            }
            Reply::Error(msg) => deadline(config.io_timeout, "the client to take an error", writer.send(&msg)).await,
        };
        if let Err(e) = sent {
            debug!(error = %e, "could not send a reply; closing");
            return;
        }
        quiet.reset();
    }
}

/// A product may hold at most this many times its operands' elements (plus
/// [`PRODUCT_FLOOR`]): a task's reply is bounded by what it sent, so a
/// small frame cannot make a worker allocate and send a huge product.
pub const MAX_PRODUCT_GROWTH: usize = 16;
/// Elements any product may have whatever its operands (4 Mi: 32 MiB of f64).
pub const PRODUCT_FLOOR: usize = 4 << 20;

/// Refuses an empty inner dimension and a product much larger than its operands.
fn check_product_size((m, k): (usize, usize), (_, n): (usize, usize)) -> Result<()> {
    if k == 0 {
        return Err(Error::Invalid(format!("a {m}×0 by 0×{n} product: the inner dimension is empty")));
    }
    let operands = m.saturating_mul(k).saturating_add(k.saturating_mul(n));
    let allowed = operands.saturating_mul(MAX_PRODUCT_GROWTH).saturating_add(PRODUCT_FLOOR);
    if m.saturating_mul(n) > allowed {
        return Err(Error::Invalid(format!(
            "a {m}×{n} product of {m}×{k} and {k}×{n} operands is more than {MAX_PRODUCT_GROWTH} times their size; \
             the grid does not take such shapes (multiply them locally)"
        )));
    }
    Ok(())
}

/// The memory the host has available, in bytes: `MemAvailable` of
/// /proc/meminfo (free memory plus what the kernel can reclaim), or — where
/// there is no such file — no limit.
pub fn available_memory() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|text| {
            let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
            let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
            Some(kib.saturating_mul(1024))
        })
        .unwrap_or(u64::MAX)
}

/// Refuses, from its header alone, a multiply task whose operands and
/// product do not fit in `slot_memory` bytes.
fn admit_task(slot_memory: u64) -> septet_common::conn::Admit {
    septet_common::conn::Admit(Arc::new(move |header: &septet_common::frame::BlocksHeader| {
        let [(m, k), (_, n)] = header.shapes[..] else { return Ok(()) };
        // An empty inner dimension is refused per task, the connection kept
        // (`check_product_size`): its frame has no payload to skip.
        if header.op != BlockOp::Multiply || k == 0 {
            return Ok(());
        }
        let elements = (m as u128) * (k as u128) + (k as u128) * (n as u128) + (m as u128) * (n as u128);
        let need = elements * header.dtype.size() as u128;
        if need > u128::from(slot_memory) {
            return Err(Error::Invalid(format!(
                "task {} does not fit: its operands and product need {} MiB and this worker gives a task at most \
                 {} MiB (--max-memory, shared by its slots); refused before reading it",
                header.task_id,
                need >> 20,
                slot_memory >> 20
            )));
        }
        Ok(())
    }))
}

/// Multiplies one task's operands.
fn compute(task: Blocks, threads: usize, max_frame_len: usize) -> Result<Matrix> {
    let [x, y] = <[Matrix; 2]>::try_from(task.mats).map_err(|m| Error::BadFrame(format!("{} operands", m.len())))?;
    // The operands' sizes were checked against the frame's length, but with
    // an empty inner dimension a tiny frame could still ask for a huge
    // product: check that the reply fits in a frame before allocating it.
    let (rows, cols) = (x.shape().0, y.shape().1);
    check_product_size(x.shape(), y.shape())?;
    let bytes = rows.checked_mul(cols).and_then(|e| e.checked_mul(x.dtype().size()));
    if bytes.is_none_or(|b| b > max_frame_len) {
        return Err(Error::Invalid(format!(
            "a {rows}×{cols} product would exceed this worker's {max_frame_len}-byte frame limit"
        )));
    }
    let product = matmul_dyn(&x, &y, parallelism(threads));
    recycle_matrix(x);
    recycle_matrix(y);
    product
}

/// The limits of every connection the worker serves.
fn conn_limits(config: &WorkerConfig) -> ConnLimits {
    ConnLimits {
        max_frame_len: config.max_frame_len,
        handshake_timeout: config.handshake_timeout,
        stall_timeout: Some(config.io_timeout),
        idle_timeout: None,
        security: config.security.clone(),
        budget: None,
    }
}

/// A dial on a tracker's `DialBack` order, connected and not yet shaken
/// hands on.
enum Dialled {
    /// To the requester, or to a tracker that splices it to the requester.
    Stream(TcpStream),
    /// To the tracker where this worker and the requester meet to punch:
    /// the requester's address comes next.
    Meeting(punch::Meeting),
}

/// How long the two ends of a punch have to meet and then to dial each
/// other through their NATs.
const PUNCH_WITHIN: Duration = Duration::from_secs(3);

/// Dials a requester that cannot dial this worker (on its tracker's
/// order, `WorkerRequest::DialBack`) — directly at `addr`, or with `via`
/// the tracker at `addr` where the two meet — before any handshake: the
/// tracker is answered only once the dial connected, so a requester that
/// cannot be reached is told at once (and may ask for a meeting instead).
async fn dial_out(addr: &str, via: Option<Rendezvous>, config: &WorkerConfig) -> septet_common::Result<Dialled> {
    deadline(config.handshake_timeout, "the dial", async {
        match via {
            Some(Rendezvous::Punch(id)) => {
                Ok(Dialled::Meeting(punch::Meeting::dial(addr, id, config.handshake_timeout).await?))
            }
            via => Ok(Dialled::Stream(Connection::dial(addr, via).await?)),
        }
    })
    .await
}

/// Finishes a dial (see [`dial_out`]): for a punch, learns the requester's
/// address and dials it from the meeting's port as it dials this worker;
/// then runs the handshake, says which brokered link this is, and serves
/// the connection as if the requester had dialled.
/// (A boxed future of a named type: it serves a connection, which may
/// order another dial back.)
fn dial_back(
    dialled: Dialled,
    addr: String,
    nonce: u64,
    config: WorkerConfig,
    shared: Shared,
    cancel: CancellationToken,
) -> std::pin::Pin<Box<dyn Future<Output = ()> + Send>> {
    Box::pin(async move {
        let dialled = async {
            let stream = match dialled {
                Dialled::Stream(stream) => stream,
                Dialled::Meeting(meeting) => {
                    let local = meeting.local;
                    let other = meeting.other(PUNCH_WITHIN).await?;
                    let stream = punch::open(local, other, PUNCH_WITHIN).await?;
                    info!(requester = %other, "punched through to a requester behind a NAT");
                    stream
                }
            };
            let mut conn = Connection::handshake_as_client(stream, Role::Worker, conn_limits(&config)).await?;
            deadline(
                config.io_timeout,
                "the requester to take a hello",
                conn.writer.send(&WorkerReply::DialedBack { nonce }),
            )
            .await?;
            Ok::<_, septet_common::Error>(conn)
        };
        match dialled.await {
            Ok(conn) => {
                info!(requester = %addr, "dialled back a requester that cannot dial this worker");
                serve_connection(conn, config, shared, cancel).await;
            }
            Err(e) => warn!(requester = %addr, error = %e, "could not dial back a requester"),
        }
    })
}

/// What every connection of a worker shares: its compute slots, its
/// relayed jobs, and its door.
#[derive(Clone)]
struct Shared {
    slots: Arc<Semaphore>,
    relays: Arc<Relays>,
    gate: Arc<Gate>,
}

/// Says why a connection is refused, then lets it close.
async fn refuse(writer: &mut FrameWriter<OwnedWriteHalf>, refusal: &TicketRefusal, io_timeout: Duration) {
    info!(reason = %refusal, "refused a connection without a valid lease ticket");
    let failure = Failure { code: ErrorCode::Unauthorized, message: refusal.to_string(), task_id: None };
    let _ = deadline(io_timeout, "the client to take a refusal", writer.send(&WorkerReply::Error(failure))).await;
}

/// Serves one connection: its lease ticket first (when the worker has a
/// tracker), then multiply tasks (blocks frames), or a relayed job — its
/// requester's link (`WorkerRequest::Relay`) or a peer's
/// (`WorkerRequest::Join`). A tracker's `DialBack` order needs no ticket.
#[instrument(skip_all, fields(client = %conn.peer))]
async fn serve_connection(conn: Connection, config: WorkerConfig, shared: Shared, cancel: CancellationToken) {
    let Connection { mut reader, mut writer, .. } = conn;
    reader.set_admit(Some(admit_task(config.slot_memory())));
    let mut first = tokio::select! {
        _ = cancel.cancelled() => return,
        frame = reader.read_frame() => frame,
    };
    // A connection that closes at once (a tracker checking this worker's
    // address, a port scan that got past the handshake) is not news.
    if matches!(first, Ok(None)) {
        return;
    }
    let mut ticket = None;
    if let Ok(Some(Frame::Control(body))) = &first {
        if let Ok(WorkerRequest::Ticket(t)) = body.decode::<WorkerRequest>() {
            ticket = Some(shared.gate.admit(&t));
            first = tokio::select! {
                _ = cancel.cancelled() => return,
                frame = reader.read_frame() => frame,
            };
        }
    }
    // The first frame's request, decoded once (anything else is answered
    // below as the task conversation does).
    let request = match &first {
        Ok(Some(Frame::Control(body))) => body.decode::<WorkerRequest>().ok(),
        _ => None,
    };
    let admission = match ticket {
        Some(Ok(admission)) => admission,
        // A forward for a job admitted here before its lease lapsed: work
        // admitted under a valid ticket finishes; only new work needs one.
        Some(Err(TicketRefusal::Expired { .. })) if matches!(request, Some(WorkerRequest::Join { job_id, to, .. }) if shared.relays.running(job_id, to)) => {
            Admission::default()
        }
        Some(Err(refusal)) => return refuse(&mut writer, &refusal, config.io_timeout).await,
        None => match shared.gate.without_ticket() {
            Ok(admission) => admission,
            // A tracker's order to dial back carries no ticket.
            Err(_) if matches!(request, Some(WorkerRequest::DialBack { .. })) => Admission::default(),
            Err(refusal) => return refuse(&mut writer, &refusal, config.io_timeout).await,
        },
    };
    let Shared { slots, relays, .. } = shared.clone();
    match request {
        Some(WorkerRequest::Relay(plan)) => {
            // The relayed job holds one of the lease's slots here throughout
            // (a slot that delegates its product hands it on to its group).
            let lease_slot = admission.slot().await;
            return relay::lead(plan, reader, writer, config, slots, lease_slot, relays, cancel).await;
        }
        Some(WorkerRequest::Join { job_id, from, to, generation }) => {
            return relay::follow(job_id, (from, to, generation), reader, config, relays).await
        }
        Some(WorkerRequest::DialBack { addr, nonce, via }) => {
            let dialled = match dial_out(&addr, via, &config).await {
                Ok(dialled) => dialled,
                Err(e) => {
                    let message = format!("the worker could not dial {addr}: {e}");
                    warn!(requester = %addr, error = %e, "could not dial back a requester");
                    let failure = Failure { code: ErrorCode::Unavailable, message, task_id: None };
                    let reply = WorkerReply::Error(failure);
                    let _ = deadline(config.io_timeout, "the tracker to take a reply", writer.send(&reply)).await;
                    return;
                }
            };
            let said =
                deadline(config.io_timeout, "the tracker to take a reply", writer.send(&WorkerReply::DialingBack));
            if said.await.is_ok() {
                tokio::spawn(dial_back(dialled, addr, nonce, config, shared, cancel));
            }
            return;
        }
        _ => {}
    }
    let mut first = Some(first);
    let (tx, rx) = mpsc::channel::<Reply>(config.slots as usize + 1);
    let writer_task = {
        let config = config.clone();
        tokio::spawn(async move { write_replies(writer, rx, &config).await })
    };
    loop {
        let frame = match first.take() {
            Some(frame) => frame,
            None => tokio::select! {
                _ = cancel.cancelled() => break,
                frame = reader.read_frame() => frame,
            },
        };
        match frame {
            Ok(Some(Frame::Blocks(task))) if task.op == BlockOp::Multiply => {
                // A multiply frame always carries two matrices of one dtype
                // (the decoder checks); F64 labels the impossible empty one.
                let dtype = task.mats.first().map_or(Dtype::F64, Matrix::dtype);
                let busy =
                    config.metrics.task_received(task.task_id, dtype, task.mats.iter().map(Matrix::shape).collect());
                let lease_slot = admission.slot().await;
                let Ok(permit) = slots.clone().acquire_owned().await else { break };
                let (tx, threads, task_id, max_len) = (tx.clone(), config.threads, task.task_id, config.max_frame_len);
                let metrics = config.metrics.clone();
                #[cfg(feature = "fault-injection")]
                let fault = config.fault;
                tokio::task::spawn_blocking(move || {
                    // A slow worker: slow to compute, still talking.
                    #[cfg(feature = "fault-injection")]
                    if let Some(Fault::Delay(d)) = fault {
                        std::thread::sleep(d);
                    }
                    let started = std::time::Instant::now();
                    // The slot goes with the product to the writer, and is
                    // freed once the product is written.
                    let computed = compute(task, threads, max_len);
                    metrics.product(dtype, computed.is_ok(), started.elapsed());
                    let reply = match computed {
                        Ok(product) => {
                            Reply::Product(task_id, product, started.elapsed(), Slot::new(permit, lease_slot, busy))
                        }
                        Err(e) => {
                            debug!(%task_id, error = %e, "task refused");
                            drop((permit, lease_slot, busy));
                            Reply::Error(WorkerReply::Error(Failure::from_error(&e, Some(task_id))))
                        }
                    };
                    let _ = tx.blocking_send(reply);
                });
            }
            Ok(Some(other)) => {
                let got = match other {
                    Frame::Control(_) => "a control message".to_string(),
                    Frame::Blocks(b) => format!("{:?} blocks", b.op),
                };
                let err = Error::Unexpected { expected: "a multiply task", got };
                let _ = tx.send(Reply::Error(WorkerReply::Error(Failure::from_error(&err, None)))).await;
                break;
            }
            Ok(None) => break,
            Err(e) => {
                match &e {
                    // A task that does not fit (see `admit_task`): not a bad frame.
                    Error::Invalid(reason) => info!(%reason, "task refused"),
                    _ => {
                        if let Some(suppressed) = BAD_FRAMES.allow() {
                            warn!(error = %e, suppressed, "bad frame; dropping the connection");
                        }
                    }
                }
                let _ = tx.send(Reply::Error(WorkerReply::Error(Failure::from_error(&e, None)))).await;
                break;
            }
        }
    }
    drop(tx);
    let _ = writer_task.await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use ndarray::Array2;
    use septet_common::MatrixView;

    static LIVE: AtomicUsize = AtomicUsize::new(0);
    static PEAK: AtomicUsize = AtomicUsize::new(0);

    /// Counts the products that hold a slot (computed, not yet written).
    pub(super) struct LiveProduct;

    impl LiveProduct {
        pub(super) fn new() -> Self {
            let now = LIVE.fetch_add(1, Ordering::SeqCst) + 1;
            PEAK.fetch_max(now, Ordering::SeqCst);
            LiveProduct
        }
    }

    impl Drop for LiveProduct {
        fn drop(&mut self) {
            LIVE.fetch_sub(1, Ordering::SeqCst);
        }
    }

    /// A warm-up whose tasks could never arrive is a configuration error,
    /// not a gigabyte set aside for nothing.
    #[test]
    fn a_product_is_bounded_by_its_operands() {
        assert!(check_product_size((4096, 0), (0, 4096)).unwrap_err().to_string().contains("inner dimension is empty"));
        // 16384×1 by 1×16384: 32 Ki elements sent, 256 Mi asked back.
        let err = check_product_size((16384, 1), (1, 16384)).unwrap_err().to_string();
        assert!(err.contains("more than 16 times"), "{err}");
        // Real Strassen blocks, square or thin, and small outer products pass.
        for (m, k, n) in [(2048, 2048, 2048), (2048, 128, 2048), (4096, 1, 1), (1, 1, 2048), (2048, 1, 2048)] {
            check_product_size((m, k), (k, n)).unwrap();
        }
    }

    #[test]
    fn a_warm_up_must_fit_in_the_frame_limit() {
        let config = |warm_up, max_frame_len| WorkerConfig { warm_up, max_frame_len, ..WorkerConfig::default() };
        assert!(config(4096, DEFAULT_MAX_FRAME_LEN).validate().is_ok());
        assert!(config(0, 1024).validate().is_ok());
        // Two 2048² f64 operands are 64 MiB.
        assert!(config(4096, 64 << 20).validate().is_ok());
        assert!(matches!(config(4096, (64 << 20) - 1).validate(), Err(Error::Invalid(_))));
        assert!(matches!(config(usize::MAX, DEFAULT_MAX_FRAME_LEN).validate(), Err(Error::Invalid(_))));
    }

    #[test]
    fn a_warm_up_sets_aside_both_plans_shapes_within_the_slots_memory() {
        let config = |warm_up, max_memory: u64| WorkerConfig {
            warm_up,
            slots: 2,
            max_memory: Some(max_memory),
            ..WorkerConfig::default()
        };
        let mib = |buffers: &[(usize, usize)]| buffers.iter().map(|(len, count)| len * count * 8).sum::<usize>() >> 20;
        // n=4096: three 2048² blocks, 64 panels of 128 rows, two 512-row batches.
        let all = config(4096, 8 << 30).warm_up_buffers();
        assert_eq!(all, [(2048 * 2048, 3), (128 * 2048, 64), (512 * 2048, 2)]);
        assert_eq!(mib(&all), 240);
        // A slot's share of 230 MiB holds the direct task's blocks and the
        // panels (224 MiB), not the batches too; of 200 MiB only the blocks.
        assert_eq!(config(4096, 460 << 20).warm_up_buffers(), all[..2]);
        assert_eq!(config(4096, 400 << 20).warm_up_buffers(), all[..1]);
        assert!(config(4096, 100 << 20).warm_up_buffers().is_empty());
        assert!(config(0, 8 << 30).warm_up_buffers().is_empty());
        // Small jobs: panels of 8 rows of 64 (under the pool's 1 MiB, so
        // `prefault` makes none), batches of a quarter of them.
        assert_eq!(config(128, 8 << 30).warm_up_buffers(), [(64 * 64, 3), (4 * 64, 64), (16 * 64, 2)]);
    }

    /// A client pipelines four tasks whose products are far larger than the
    /// socket buffers and reads nothing: a one-slot worker holds one product
    /// (the one it is trying to write), not four. Once the client reads,
    /// every product arrives, right.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_client_that_never_reads_cannot_make_a_worker_hold_more_products_than_slots() {
        tokio::time::timeout(Duration::from_secs(60), async {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let stop = CancellationToken::new();
            let config = WorkerConfig { slots: 1, threads: 1, ..WorkerConfig::default() };
            let server = tokio::spawn(run(listener, config, stop.clone().cancelled_owned()));
            let limits = ConnLimits { max_frame_len: 64 << 20, ..ConnLimits::default() };
            let mut conn = Connection::connect(addr, Role::Client, limits).await.unwrap();
            // 1500×1 · 1×1500: tiny tasks, 18 MB products.
            let n = 1500;
            let (x, y) = (Array2::<f64>::from_elem((n, 1), 2.0), Array2::<f64>::from_elem((1, n), 3.0));
            for task in 0..4 {
                conn.writer
                    .send_blocks(
                        TaskId(task),
                        BlockOp::Multiply,
                        &[MatrixView::F64(x.view()), MatrixView::F64(y.view())],
                    )
                    .await
                    .unwrap();
            }
            tokio::time::sleep(Duration::from_millis(1500)).await;
            assert_eq!(PEAK.load(Ordering::SeqCst), 1, "products held at once by a one-slot worker");
            for task in 0..4 {
                let done = conn.reader.read_message::<WorkerReply>("Computed").await.unwrap();
                assert!(matches!(done, WorkerReply::Computed { task_id, .. } if task_id == TaskId(task)), "{done:?}");
                match conn.reader.read_frame().await.unwrap() {
                    Some(Frame::Blocks(b)) => {
                        assert_eq!((b.task_id, b.op), (TaskId(task), BlockOp::Product));
                        let Matrix::F64(m) = &b.mats[0] else { panic!("dtype") };
                        assert_eq!(m.dim(), (n, n));
                        assert!(m.iter().all(|&v| v == 6.0));
                    }
                    other => panic!("expected a product, got {other:?}"),
                }
            }
            assert_eq!(PEAK.load(Ordering::SeqCst), 1);
            drop(conn);
            stop.cancel();
            server.await.unwrap().unwrap();
        })
        .await
        .unwrap();
    }
}
