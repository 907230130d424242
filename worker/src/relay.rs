//! A worker's side of a relayed job ([`septet_common::relay`]): one *node*
//! per job, fed by the job's connections.
//!
//! - The requester's connection (`WorkerRequest::Relay`) brings the plan,
//!   the public vectors R, the panels of the quadrants this slot holds and
//!   the digests of the panels it will receive by forward. It carries back
//!   this slot's C panels (if it reduces), its product's fingerprint M·R,
//!   and `RelayDone` — or `RelayFailed` naming the slot at fault — and,
//!   every twentieth of a second, `RelayProgress` (how far the product has
//!   got, and what has arrived of each quadrant). When it closes, the job
//!   ends here, whatever state it is in.
//! - Each peer that sends this slot parts opens a connection of its own
//!   (`WorkerRequest::Join`); this slot opens one to each peer it sends to.
//!
//! The node takes parts in any order: a held quadrant's panel is forwarded
//! to the slots that need it as soon as it arrives (and kept if this slot
//! needs it); a forwarded panel is used only once it matches the digest the
//! requester sent; Y (the sum of this product's B quadrants) is formed once
//! they are all in, then each panel of the product is computed as soon as
//! its A panels are in, sent to the reducers and folded into the product's
//! fingerprint; a reducer folds each product panel another slot sends it
//! into its C quadrant only once it passes the requester's check (M·s
//! against X·(Y·s) for a secret s the requester sends this slot alone, so
//! a slot that computes wrong is caught before its panel is used), and
//! sends each panel of its C quadrant once all the products feeding it
//! have arrived. Every part a connection brings is
//! checked against the plan — the sender must be the slot the plan says,
//! the shape the plan's, each part once — so a peer can make the job fail,
//! but not make the node hold more than the plan's blocks.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ndarray::{s, Array2};
use parking_lot::Mutex;
use septet_client::verify::{compare, Compare};
use septet_common::conn::{Admit, ConnLimits};
use septet_common::frame::{BlockOp, BlocksHeader};
use septet_common::matrix::{matmul, parallelism};
use septet_common::proto::{JobId, LeaseTicket, RelayStats, WorkerReply, WorkerRequest};
use septet_common::relay::{self, Block, PartId, RelayPlan, Roles, SLOTS};
use septet_common::strassen::{Quad, Sign, PRODUCTS};
use septet_common::{deadline, Connection, Dtype, Element, Frame, FrameReader, FrameWriter, Matrix, Role};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::{mpsc, Notify, OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::server::WorkerConfig;

/// Index of the requester in [`RelayStats`]' byte counts.
const REQUESTER: usize = SLOTS;

/// How often the slot reports its progress on the requester link: often
/// enough that the requester sees a slot slow to compute or slow to take
/// (or send) forwards within a few tenths of a second, and times the
/// first forwards to a twentieth of a second; and that a report is fresh
/// when it arrives unless the link held it back.
const PROGRESS_EVERY: Duration = Duration::from_millis(50);

/// How often one slot's roles may move in a job.
const MOST_MOVES: u8 = 1;

/// Slowest rate, in bytes per second, at which a peer must take a part
/// (beyond the I/O timeout) before the link is given up.
const MIN_PART_RATE: f64 = 1e6;

/// The relayed jobs running on this worker, by id and slot (a worker with
/// several slots may hold more than one slot of a job): how a peer's
/// `Join` finds its job.
pub(crate) struct Relays {
    jobs: Mutex<HashMap<(JobId, u8), Entry>>,
    changed: Notify,
    /// Slots for what a delegating slot computes itself because its group
    /// did not deliver it: as many as the worker's own, but apart from
    /// them — the worker's slots may all be held by slots of the same job
    /// waiting for that very product to reduce it.
    fallback: Arc<Semaphore>,
}

#[derive(Clone)]
struct Entry {
    plan: Arc<RelayPlan>,
    inbox: mpsc::UnboundedSender<Event>,
    cancel: CancellationToken,
    /// Who may still join: see [`Joins`].
    joins: Arc<Mutex<Joins>>,
}

/// The links peers have opened to a job's slot, checked and changed under
/// one lock (a move and a `Join` must not interleave).
#[derive(Default)]
struct Joins {
    /// The slots that have joined (bit `from`): each sends on one link,
    /// so a second `Join` from the same slot is refused — every link may
    /// bring the plan's parts, and two would queue twice that. (A slot
    /// whose roles moved may join once more, as its next generation.)
    joined: u8,
    /// Each slot's generation (how often its roles moved): a `Join` must
    /// say its slot's current one.
    generations: [u8; SLOTS],
}

/// Jobs a worker runs at once, beyond which a plan is refused.
const MAX_JOBS: usize = 64;

impl Relays {
    /// The relayed jobs of a worker with `slots` compute slots.
    pub(crate) fn new(slots: u32) -> Self {
        Self {
            jobs: Mutex::default(),
            changed: Notify::new(),
            fallback: Arc::new(Semaphore::new(slots.max(1) as usize)),
        }
    }

    fn insert(&self, entry: Entry) -> Result<(), String> {
        let mut jobs = self.jobs.lock();
        if jobs.len() >= MAX_JOBS {
            return Err(format!("this worker already runs {MAX_JOBS} relayed jobs"));
        }
        let key = (entry.plan.job_id, entry.plan.you);
        if jobs.contains_key(&key) {
            return Err(format!("slot {} of job {} is already running here", key.1, key.0));
        }
        jobs.insert(key, entry);
        drop(jobs);
        self.changed.notify_waiters();
        Ok(())
    }

    /// Whether slot `slot` of job `job_id` runs here now.
    pub(crate) fn running(&self, job_id: JobId, slot: u8) -> bool {
        self.jobs.lock().contains_key(&(job_id, slot))
    }

    fn remove(&self, job_id: JobId, slot: u8) {
        self.jobs.lock().remove(&(job_id, slot));
    }

    /// The job, once its plan has arrived (a peer's first forward may
    /// overtake it), waiting at most `limit`.
    async fn wait_for(&self, job_id: JobId, slot: u8, limit: Duration) -> Option<Entry> {
        let until = tokio::time::Instant::now() + limit;
        loop {
            let changed = self.changed.notified();
            if let Some(e) = self.jobs.lock().get(&(job_id, slot)) {
                return Some(e.clone());
            }
            if tokio::time::timeout_at(until, changed).await.is_err() {
                return None;
            }
        }
    }
}

/// Who sent a part.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum From {
    Requester,
    Slot(usize),
}

/// What the node hears. What concerns a peer's link says the generation
/// of the slot at its other end ([`WorkerRequest::Moved`]): the node sets
/// aside what comes from, or concerns, a generation that has moved on.
enum Event {
    /// A part, with its digest when it is a forwarded quadrant panel
    /// (hashed by the link's reader, so the node's loop never waits on it).
    Part {
        from: From,
        generation: u8,
        part: PartId,
        data: Matrix,
        digest: Option<[u8; 32]>,
    },
    Digests(Vec<(u64, [u8; 32])>),
    /// How this slot checks the products it is sent
    /// ([`WorkerRequest::Checks`]).
    Checks {
        seed: [u8; 32],
        tolerance: Vec<f64>,
    },
    /// `slot` sent something the plan does not allow.
    Caught {
        slot: usize,
        generation: u8,
        error: String,
    },
    /// A link to or from `slot` failed.
    Link {
        slot: usize,
        generation: u8,
        error: String,
    },
    /// A peer's link closed cleanly.
    Closed {
        slot: usize,
        generation: u8,
    },
    /// A link to `slot` delivered everything: `bytes` written.
    Sent {
        slot: usize,
        generation: u8,
        bytes: u64,
    },
    /// The requester moved `slot`'s roles to the peer at `addr`.
    Moved {
        slot: usize,
        addr: String,
        ticket: Option<LeaseTicket>,
    },
}

/// What goes back to the requester.
enum Out {
    Part(PartId, Matrix),
    Reply(WorkerReply),
}

/// How many parts slot `me` receives from each sender (slots 0..7, the
/// requester at 7) by `plan`.
fn expected_counts(plan: &RelayPlan, me: usize) -> [usize; SLOTS + 1] {
    let mut counts = [0; SLOTS + 1];
    let roles = &plan.roles;
    let panels = |x: usize| if x < 4 { plan.a_panels().count() } else { plan.b_panels().count() };
    for x in 0..8 {
        let holder = roles.holders[x] as usize;
        if holder == me {
            counts[REQUESTER] += panels(x);
        } else if relay::users(x).any(|(u, _)| u == me) {
            // (A slot whose roles moved here is fed all it uses by the requester.)
            let from = if plan.generation > 0 { REQUESTER } else { holder };
            counts[from] += panels(x);
        }
    }
    counts[REQUESTER] += 1; // R
    let checked = plan.checked_products(me).len();
    counts[REQUESTER] += checked; // X·(Y·s) for each
    for (from, count) in counts.iter_mut().enumerate().take(SLOTS) {
        if from != me && roles.product_targets(from).contains(&me) {
            *count += plan.a_panels().count();
        }
    }
    counts
}

/// Whether `from` may send `part` to slot `me`, by `plan`.
fn may_send(plan: &RelayPlan, me: usize, from: From, part: PartId) -> bool {
    let roles = &plan.roles;
    let uses = |x: usize| relay::users(x).any(|(u, _)| u == me);
    match (from, part.block) {
        (From::Requester, Block::Vectors) => true,
        (From::Requester, Block::Expect(i)) => plan.checked_products(me).contains(&i),
        (From::Requester, b) => {
            b.input_index().is_some_and(|x| roles.holders[x] as usize == me || (plan.generation > 0 && uses(x)))
        }
        (From::Slot(f), Block::M(i)) => i == f && f != me && roles.product_targets(f).contains(&me),
        (From::Slot(f), b) => b
            .input_index()
            .is_some_and(|x| roles.holders[x] as usize == f && f != me && plan.generation == 0 && uses(x)),
    }
}

/// Refuses, from its header alone, a blocks frame on a relay link that is
/// not a part `from` may send slot `me` by `plan`, in the plan's shape and
/// dtype: nothing is allocated for it, nor read. (The reader applies it
/// to every blocks frame, so what it returns is admitted.)
fn admit_header(plan: Arc<RelayPlan>, me: usize, from: From) -> Admit {
    Admit(Arc::new(move |header: &BlocksHeader| {
        let part = plan.part_of(header).map_err(septet_common::Error::Invalid)?;
        if !may_send(&plan, me, from, part) {
            let why = format!("sent {}, which the plan does not have it send here", part.name());
            return Err(septet_common::Error::Invalid(why));
        }
        Ok(())
    }))
}

/// Serves a relayed job's requester connection: the plan came first.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn lead(
    plan: RelayPlan,
    mut reader: FrameReader<OwnedReadHalf>,
    writer: FrameWriter<OwnedWriteHalf>,
    config: WorkerConfig,
    slots: Arc<Semaphore>,
    lease_slot: Option<OwnedSemaphorePermit>,
    relays: Arc<Relays>,
    cancel: CancellationToken,
) {
    let started = Instant::now();
    let (out_tx, out_rx) = mpsc::channel::<Out>(4);
    // Answers that must not wait behind C panels (see `write_out`).
    let (urgent_tx, urgent_rx) = mpsc::unbounded_channel::<WorkerReply>();
    let progress = Arc::new(Progress::default());
    let job_cancel = cancel.child_token();
    let writer_task = {
        let (config, progress, job_cancel) = (config.clone(), progress.clone(), job_cancel.clone());
        tokio::spawn(async move {
            // A requester that no longer takes what this slot writes is
            // gone: end the job rather than wait on its reads.
            if !write_out(writer, out_rx, urgent_rx, &config, &progress, started).await {
                job_cancel.cancel();
            }
        })
    };
    let max_bytes = (config.max_frame_len as u64).saturating_mul(8);
    let slot_memory = config.slot_memory();
    let (inbox, inbox_rx) = mpsc::unbounded_channel();
    let plan = Arc::new(plan);
    let joins = Arc::new(Mutex::new(Joins::default()));
    let admitted = plan
        .validate(config.max_frame_len, max_bytes)
        .map_err(|e| e.to_string())
        .and_then(|()| match plan.bytes_needed() {
            Some(need) if need <= slot_memory => Ok(()),
            need => Err(format!(
                "relayed job does not fit: its blocks need {} MiB here and this worker gives a job at most \
                 {} MiB (--max-memory, shared by its slots); refused before any block was sent",
                need.map_or(u64::MAX, |b| b >> 20),
                slot_memory >> 20
            )),
        })
        .and_then(|()| {
            relays.insert(Entry {
                plan: plan.clone(),
                inbox: inbox.clone(),
                cancel: job_cancel.clone(),
                joins: joins.clone(),
            })
        });
    if let Err(message) = admitted {
        warn!(%message, "relay plan refused");
        let _ = out_tx.send(Out::Reply(WorkerReply::RelayFailed { blame: None, message, evidence: false })).await;
        drop(out_tx);
        let _ = writer_task.await;
        return;
    }
    let me = plan.you as usize;
    info!(job = %plan.job_id, slot = me, product = PRODUCTS[me].name, "relayed job");
    reader.set_admit(Some(admit_header(plan.clone(), me, From::Requester)));
    let node = {
        let (plan, out_tx, cancel, config) = (plan.clone(), out_tx.clone(), job_cancel.clone(), config.clone());
        let fallback = relays.fallback.clone();
        let peers = joins;
        tokio::spawn(async move {
            let (links, links_rx) = mpsc::unbounded_channel();
            let job = Job { out: out_tx, urgent: urgent_tx, cancel, slots, lease_slot };
            match plan.dtype {
                Dtype::F64 => {
                    let node =
                        Node::<f64>::new(plan.clone(), started, config.clone(), links, fallback, progress, peers);
                    serve(node, inbox_rx, links_rx, job).await
                }
                Dtype::F32 => {
                    let node =
                        Node::<f32>::new(plan.clone(), started, config.clone(), links, fallback, progress, peers);
                    serve(node, inbox_rx, links_rx, job).await
                }
            }
        })
    };
    let counts = expected_counts(&plan, me);
    let (mut parts, mut digests, mut moves, mut checks) = (0, 0, 0, false);
    let most_digests = 4 * (plan.a_panels().count() + plan.b_panels().count());
    // The requester says something at least every ALIVE_EVERY; past this
    // much silence between its frames it is gone (its host died, its link
    // was cut without a reset, its process hangs), and the job ends here.
    let patience = requester_patience(plan.silence_ms, config.io_timeout);
    reader.set_idle_timeout(Some(patience));
    tokio::pin!(node);
    loop {
        let frame = tokio::select! {
            _ = job_cancel.cancelled() => break,
            _ = &mut node => break,
            frame = reader.read_frame() => frame,
        };
        let event = match frame {
            Ok(Some(Frame::Blocks(b))) if b.op == BlockOp::Part && parts < counts[REQUESTER] => {
                parts += 1;
                // (Admitted from its header: `admit_header`.)
                let Ok(part) = PartId::from_task_id(b.task_id) else { break };
                let Some(data) = b.mats.into_iter().next() else { break };
                Event::Part { from: From::Requester, generation: 0, part, data, digest: None }
            }
            Ok(Some(Frame::Control(body))) => match body.decode::<WorkerRequest>() {
                // Counted here as well as by the node: what waits in its
                // inbox is bounded by the plan, not by the requester.
                Ok(WorkerRequest::Digests(d)) if digests + d.len() <= most_digests => {
                    digests += d.len();
                    Event::Digests(d)
                }
                Ok(WorkerRequest::Alive) => continue,
                Ok(WorkerRequest::Checks { seed, tolerance }) if !std::mem::replace(&mut checks, true) => {
                    Event::Checks { seed, tolerance }
                }
                // At most one per other slot and move: each is answered, and
                // what waits in the inbox stays bounded.
                Ok(WorkerRequest::Moved { slot, addr, ticket }) if moves < (SLOTS - 1) * MOST_MOVES as usize => {
                    moves += 1;
                    Event::Moved { slot: usize::from(slot), addr, ticket }
                }
                _ => break,
            },
            Err(e) => {
                info!(job = %plan.job_id, error = %e, "the requester's link failed, or it broke the plan; ending the relayed job");
                break;
            }
            // The requester closed (it has C, or gave up), or broke the protocol.
            _ => break,
        };
        if inbox.send(event).is_err() {
            break;
        }
    }
    // The node is done (its last reply is queued) or the requester left.
    if !node.is_finished() {
        job_cancel.cancel();
        let _ = node.await;
    }
    relays.remove(plan.job_id, plan.you);
    job_cancel.cancel();
    drop(out_tx);
    let _ = writer_task.await;
    // The last reply is written. Let the requester close first (it does
    // once it has read it), taking what it still sends meanwhile: closing
    // on unread bytes would reset the connection, and a reset can reach
    // the requester as a failed send before it has read why.
    let drain = async { while let Ok(Some(_)) = reader.read_frame().await {} };
    let _ = tokio::time::timeout(config.io_timeout, drain).await;
}

/// What a node's task is given besides its node: the requester link's
/// outbox, the job's cancellation, the worker's compute slots and the
/// lease's slot this job holds.
struct Job {
    out: mpsc::Sender<Out>,
    urgent: mpsc::UnboundedSender<WorkerReply>,
    cancel: CancellationToken,
    slots: Arc<Semaphore>,
    lease_slot: Option<OwnedSemaphorePermit>,
}

/// Runs `node` to its end and says how it went (`RelayDone`, or
/// `RelayFailed` naming whom it blames); then, done, keeps its product
/// panels for the requester's word until the requester closes the link:
/// a slot they went to may still move ([`Node::linger`]).
async fn serve<T: Element>(
    mut node: Node<T>,
    mut inbox: mpsc::UnboundedReceiver<Event>,
    mut links_rx: mpsc::UnboundedReceiver<Event>,
    job: Job,
) {
    let Job { out, urgent, cancel, slots, lease_slot } = job;
    node.urgent = Some(urgent);
    let result = node.run(&mut inbox, &mut links_rx, &out, &cancel, &slots, lease_slot).await;
    let (plan, config) = (node.plan.clone(), node.config.clone());
    let reply = match &result {
        Ok(stats) => {
            let took = Duration::from_micros(stats.compute_us);
            let (bytes_in, bytes_out) = (stats.bytes_in.iter().sum(), stats.bytes_out.iter().sum());
            config.metrics.relay_done(plan.dtype, true, took, bytes_in, bytes_out);
            WorkerReply::RelayDone(stats.clone())
        }
        Err(Failed { blame, message, evidence, .. }) => {
            config.metrics.relay_done(plan.dtype, false, Duration::ZERO, 0, 0);
            if cancel.is_cancelled() {
                // The requester left: it has C, or it gave up on the
                // job because of another slot; nothing is wrong here.
                info!(job = %plan.job_id, %message, "relayed job ended by the requester");
            } else {
                warn!(job = %plan.job_id, blame = ?blame, %message, "relayed job failed");
            }
            WorkerReply::RelayFailed { blame: blame.map(|b| b as u8), message: message.clone(), evidence: *evidence }
        }
    };
    if out.send(Out::Reply(reply)).await.is_ok() && result.is_ok() {
        node.linger(inbox, links_rx, &out, &cancel).await;
    }
}

/// Serves a peer's connection to a relayed job: parts from slot `from`.
pub(crate) async fn follow(
    job_id: JobId,
    (from, to, generation): (u8, u8, u8),
    mut reader: FrameReader<OwnedReadHalf>,
    config: WorkerConfig,
    relays: Arc<Relays>,
) {
    let Some(entry) = relays.wait_for(job_id, to, config.io_timeout).await else {
        debug!(%job_id, "a peer joined a job this worker does not run");
        return;
    };
    let (plan, me, from) = (&entry.plan, entry.plan.you as usize, from as usize);
    if from >= SLOTS || from == me {
        return;
    }
    let refused = {
        let mut joins = entry.joins.lock();
        if joins.generations[from] != generation {
            Some("a link from a slot's other generation (its roles moved)")
        } else if joins.joined & (1 << from) != 0 {
            Some("a second link from the same slot")
        } else {
            joins.joined |= 1 << from;
            None
        }
    };
    if let Some(why) = refused {
        debug!(%job_id, from, to, generation, why, "refused a peer's link");
        // Taken and set aside, not reset: the old peer of a slot that
        // moved must not fail (and spread its failure to slots that have
        // not yet heard of the move) before the requester drops it.
        let drain = async { while let Ok(Some(_)) = reader.read_frame().await {} };
        let _ = tokio::time::timeout(config.io_timeout, drain).await;
        return;
    }
    let expected = expected_counts(plan, me)[from];
    reader.set_admit(Some(admit_header(plan.clone(), me, From::Slot(from))));
    let mut parts = 0;
    let event = loop {
        let frame = tokio::select! {
            _ = entry.cancel.cancelled() => break None,
            frame = reader.read_frame() => frame,
        };
        match frame {
            Ok(Some(Frame::Blocks(b))) if b.op == BlockOp::Part && parts < expected => {
                parts += 1;
                let part = match PartId::from_task_id(b.task_id) {
                    Ok(p) => p,
                    Err(e) => break Some(Event::Caught { slot: from, generation, error: e.to_string() }),
                };
                // (Admitted from its header: `admit_header`.)
                let Some(data) = b.mats.into_iter().next() else {
                    break Some(Event::Closed { slot: from, generation });
                };
                let digest = part.block.input_index().map(|_| match &data {
                    Matrix::F64(x) => relay::digest(x.view()),
                    Matrix::F32(x) => relay::digest(x.view()),
                });
                let event = Event::Part { from: From::Slot(from), generation, part, data, digest };
                if entry.inbox.send(event).is_err() {
                    break None;
                }
            }
            Ok(Some(_)) => {
                let error = "sent something other than the plan's parts".into();
                break Some(Event::Caught { slot: from, generation, error });
            }
            Ok(None) => return drop(entry.inbox.send(Event::Closed { slot: from, generation })),
            // A part off the plan, refused from its header (`admit_header`).
            Err(septet_common::Error::Invalid(error)) => break Some(Event::Caught { slot: from, generation, error }),
            Err(e) => {
                return drop(entry.inbox.send(Event::Link { slot: from, generation, error: e.to_string() }));
            }
        }
    };
    if let Some(event) = event {
        let _ = entry.inbox.send(event);
    }
    // The job ended here (or the sender broke the plan): take what the
    // sender still sends until it closes, for a while, rather than reset
    // its connection — a reset would reach it as a failed link, and it
    // might report that before the requester hears the real cause.
    let drain = async { while let Ok(Some(_)) = reader.read_frame().await {} };
    let _ = tokio::time::timeout(config.io_timeout, drain).await;
}

/// How long a slot waits between frames of its requester before it takes
/// the requester for gone: twice the requester's own silence timeout (it
/// says [`WorkerRequest::Alive`] every [`relay::ALIVE_EVERY`] when it has
/// nothing else to send), and never less than this worker's I/O timeout —
/// nor more than a minute, whatever the plan says.
fn requester_patience(silence_ms: u64, io_timeout: Duration) -> Duration {
    Duration::from_millis(silence_ms.min(30_000) * 2)
        .max(io_timeout)
        .min(Duration::from_secs(60))
        .max(relay::ALIVE_EVERY * 2)
}

/// The requester link's writer: parts and replies in order, and
/// `RelayProgress` (the node's last [`Node::publish`]) every
/// [`PROGRESS_EVERY`] (or the worker's progress interval, if shorter),
/// between them; an `urgent` answer (`MovedAck`, `RelayLost`: at most one
/// per other slot and move) goes ahead of parts not yet written — a move's
/// patience must not be spent behind this slot's C panels on a slow link.
/// False if a write failed or timed out.
async fn write_out(
    mut writer: FrameWriter<OwnedWriteHalf>,
    mut rx: mpsc::Receiver<Out>,
    mut urgent: mpsc::UnboundedReceiver<WorkerReply>,
    config: &WorkerConfig,
    progress: &Progress,
    started: Instant,
) -> bool {
    let mut quiet = tokio::time::interval(config.progress_interval.min(PROGRESS_EVERY));
    quiet.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    quiet.tick().await;
    loop {
        let out = tokio::select! {
            biased;
            Some(reply) = urgent.recv() => Out::Reply(reply),
            out = rx.recv() => match out {
                Some(out) => out,
                None => return true,
            },
            _ = quiet.tick() => {
                let now = progress.product.load(Ordering::Relaxed);
                let report = WorkerReply::RelayProgress {
                    inputs: (now >> 32) as u32,
                    computed: now as u32,
                    arrived: progress.arrived.each_ref().map(|a| a.load(Ordering::Relaxed)),
                    at_us: started.elapsed().as_micros() as u64,
                };
                if deadline(config.io_timeout, "the requester to take a progress frame", writer.send(&report)).await.is_err() {
                    return false;
                }
                continue;
            }
        };
        let sent = match out {
            Out::Part(part, m) => {
                let bytes = (m.shape().0 * m.shape().1 * m.dtype().size()) as f64;
                let limit = config.io_timeout + Duration::from_secs_f64(bytes / MIN_PART_RATE);
                let sent = deadline(
                    limit,
                    "the requester to take a part",
                    writer.send_blocks(part.task_id(), BlockOp::Part, &[m.view()]),
                )
                .await;
                septet_common::matrix::recycle_matrix(m);
                sent
            }
            Out::Reply(reply) => {
                deadline(config.io_timeout, "the requester to take a reply", writer.send(&reply)).await
            }
        };
        if let Err(e) = sent {
            debug!(error = %e, "could not write to the requester; closing");
            return false;
        }
        quiet.reset();
    }
}

/// Why the node gave up, and whom it blames.
#[derive(Debug)]
struct Failed {
    blame: Option<usize>,
    message: String,
    /// `blame` was caught by what it sent (see `WorkerReply::RelayFailed`).
    evidence: bool,
    /// By a product panel that failed its check (`WorkerReply::RelayLost`).
    wrong_product: bool,
}

/// `slot` is at fault: its link broke.
fn blame(slot: usize, message: String) -> Failed {
    Failed { blame: Some(slot), message, evidence: false, wrong_product: false }
}

/// `slot` is at fault: it sent something wrong.
fn caught(slot: usize, message: String) -> Failed {
    Failed { blame: Some(slot), message, evidence: true, wrong_product: false }
}

/// Nobody is known to be at fault.
fn failed(message: impl Into<String>) -> Failed {
    Failed { blame: None, message: message.into(), evidence: false, wrong_product: false }
}

/// Work finished on a blocking thread (or by this slot's group).
enum Done<T> {
    Y(Array2<T>),
    /// Panels of the product computed together: each panel's rows of M
    /// and of M·r, and the time the product took.
    Panels {
        parts: Vec<(usize, Array2<T>, Array2<T>)>,
        took: Duration,
    },
    /// A slot that delegates: X (all of it) with one more panel's rows formed.
    XPanel {
        x: Array2<T>,
    },
    /// A slot that delegates: the product, whole, from its group.
    Whole {
        m: Array2<T>,
        mr: Array2<T>,
        took: Duration,
        delegated: septet_common::proto::Delegated,
    },
}

/// Where a slot that delegates its product stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Delegation {
    /// It computes its product itself.
    No,
    /// Forming X, panel by panel as A's come in; `formed` panels so far.
    Forming { formed: usize },
    /// X and Y went to the group's sub-job.
    Running,
}

/// One C quadrant being reduced here.
struct Reduction<T> {
    quad: Quad,
    /// Products feeding it, with signs.
    feeders: Vec<(usize, Sign)>,
    /// Per panel: the running sum and how many products it holds.
    acc: Vec<Option<Array2<T>>>,
    got: Vec<usize>,
    sent: usize,
}

/// A forwarded part waiting for its digest: its sender, the part, and
/// the digest of what arrived.
type Parked<T> = (usize, Arc<Array2<T>>, [u8; 32]);

/// A part queued for a peer.
type Queued<T> = (PartId, Arc<Array2<T>>);

/// A sender to one peer: its queue (parts go out in order).
type Outbox<T> = mpsc::UnboundedSender<Queued<T>>;

/// The large panels this slot received or made, watched until nothing else
/// holds them (the product has read them, every forward of them is
/// written), then given back to the worker's pool of buffers
/// ([`septet_common::matrix::recycle`]): the next part read from a socket,
/// or product panel computed, then reuses one instead of faulting in and
/// zeroing fresh pages — which, at n = 4096 on a busy host, cost as much
/// CPU as moving the bytes.
struct Recycler<T> {
    held: Vec<Arc<Array2<T>>>,
    recycle: fn(Array2<T>),
}

impl<T: Element> Recycler<T> {
    fn new() -> Self {
        Self { held: Vec::new(), recycle: septet_common::matrix::recycle::<T> }
    }
}

impl<T> Recycler<T> {
    /// Watches `data` (once, however often it is passed).
    fn watch(&mut self, data: &Arc<Array2<T>>) {
        if !self.held.iter().any(|h| Arc::ptr_eq(h, data)) {
            self.held.push(data.clone());
        }
    }

    /// Recycles every watched panel nothing else holds any more.
    fn sweep(&mut self) {
        let mut i = 0;
        while i < self.held.len() {
            if Arc::strong_count(&self.held[i]) == 1 {
                // Only this list holds it (so nobody can take another
                // reference meanwhile): `try_unwrap` cannot fail here, and
                // if it did the panel would simply be freed.
                if let Ok(a) = Arc::try_unwrap(self.held.swap_remove(i)) {
                    (self.recycle)(a);
                }
            } else {
                i += 1;
            }
        }
    }
}

impl<T> Drop for Recycler<T> {
    fn drop(&mut self) {
        self.sweep();
    }
}

/// What a job's peer links check a `Join` against (see [`Entry`]).
type Peers = Arc<Mutex<Joins>>;

/// One slot's share of a relayed job.
struct Node<T> {
    plan: Arc<RelayPlan>,
    me: usize,
    started: Instant,
    config: WorkerConfig,
    /// Where the links to peers report how they ended.
    links: mpsc::UnboundedSender<Event>,
    /// (sender, its generation, part) received: each part comes once
    /// from each generation of its sender.
    seen: std::collections::HashSet<(usize, u8, u64)>,
    /// Operand panels taken (used, or parked for their digest): a slot
    /// whose roles moved sends again what its last generation had sent.
    taken: std::collections::HashSet<PartId>,
    /// Each slot's generation, as this node knows it, and what peers'
    /// links check a `Join` against.
    generation: [u8; SLOTS],
    peers: Peers,
    /// Product panels of other slots folded into this slot's C quadrants:
    /// a slot whose roles moved sends its whole product again, and what
    /// its old peer sent before is not folded in twice (C is checked
    /// whole by the requester, whichever peer each panel came from).
    folded: std::collections::HashSet<PartId>,
    /// Digests of parts that arrive by forward, by part task id.
    digests: HashMap<u64, [u8; 32]>,
    /// Forwarded parts waiting for the requester's digest: sender, part,
    /// and the digest of what arrived.
    parked: HashMap<u64, Parked<T>>,
    /// The requester's checks of the product panels other slots send
    /// this slot, and the panels waiting for them.
    checks: Checks<T>,
    /// Verified operand panels this slot uses.
    inputs: HashMap<PartId, Arc<Array2<T>>>,
    /// B panels still missing before Y can be formed.
    b_missing: usize,
    /// Per A panel: operand panels still missing.
    a_missing: Vec<usize>,
    r: Option<Arc<Array2<T>>>,
    /// Y, while the product's panels need it (dropped after the last).
    y: Option<Arc<Array2<T>>>,
    /// A slot that delegates: X, while it is formed.
    x: Option<Array2<T>>,
    delegation: Delegation,
    /// What a group fails to deliver is computed here holding one of
    /// these ([`Relays`]' fallback slots).
    fallback: Arc<Semaphore>,
    ready: VecDeque<usize>,
    computing: bool,
    computed: usize,
    fingerprint: Array2<T>,
    reductions: Vec<Reduction<T>>,
    outboxes: HashMap<usize, Outbox<T>>,
    /// Links to peers still sending, by receiving slot.
    sending: std::collections::HashSet<usize>,
    /// Links to the old peers of slots whose roles moved (see `moved`).
    retired: Vec<Outbox<T>>,
    /// This slot's product panels sent to each reducer, kept until the job
    /// ends (within the product this slot holds anyway, by the plan's
    /// bytes): a reducer whose roles move gets them again, from here.
    /// (Dropped before `recycler`, which then gives them back.)
    kept: HashMap<usize, Vec<Queued<T>>>,
    /// Slots whose link with this one broke, told to the requester
    /// ([`WorkerReply::RelayLost`]): until when this node holds for a
    /// move of the slot's roles, and the failure it ends with if none
    /// comes.
    lost: [Option<(tokio::time::Instant, Failed)>; SLOTS],
    /// How long it holds.
    hold: Duration,
    /// Panels to give back to the buffer pool once they are done with.
    recycler: Recycler<T>,
    received: [usize; SLOTS + 1],
    expected: [usize; SLOTS + 1],
    stats: RelayStats,
    /// What the requester link's progress reports say.
    progress: Arc<Progress>,
    /// C panels complete, waiting for the requester link's writer to take
    /// them ([`Node::reduce`]).
    c_waiting: VecDeque<Out>,
    /// Where answers that go ahead of queued parts are sent (`write_out`);
    /// without, they queue with the parts.
    urgent: Option<mpsc::UnboundedSender<WorkerReply>>,
}

/// How far a slot has got, as its progress reports say
/// ([`WorkerReply::RelayProgress`]).
#[derive(Default)]
struct Progress {
    /// Panels of the product with their operands in (high half) and
    /// computed (low half).
    product: AtomicU64,
    /// Panels of each quadrant arrived (A11..A22, then B11..B22).
    arrived: [AtomicU32; 8],
}

/// The requester's checks of the product panels other slots send a
/// reducer ([`RelayPlan::checks`]): a panel of M_i is folded in only if
/// M_i·s is X_i·(Y_i·s) within the tolerance, row by row, for the secret
/// vector s the requester sends this slot alone (the slot that computed
/// M_i never sees it, so it cannot make a wrong panel pass).
struct Checks<T> {
    /// The products checked ([`RelayPlan::checked_products`]).
    products: Vec<usize>,
    /// Their tolerances, as [`WorkerRequest::Checks`] said.
    tolerance: Option<Vec<f64>>,
    key: Option<Array2<T>>,
    expect: HashMap<usize, Arc<Array2<T>>>,
    /// Product panels that came before the checks: sender, part, panel.
    /// (At most the products the plan has this slot sent, and they come
    /// only as fast as the slots compute them, once B is in; the
    /// requester forms the checks while B goes out.)
    waiting: Vec<(usize, PartId, Arc<Array2<T>>)>,
}

impl<T: Element> Checks<T> {
    fn new(products: Vec<usize>) -> Self {
        Self { products, tolerance: None, key: None, expect: HashMap::new(), waiting: Vec::new() }
    }

    /// Whether product panels can be checked (or nothing is to be).
    fn ready(&self) -> bool {
        self.products.is_empty()
            || (self.tolerance.is_some() && self.key.is_some() && self.expect.len() == self.products.len())
    }

    /// Checks panel `part` (rows `rows` of its product) from slot `from`.
    /// Where a tolerance, the expected rows or the panel's own M·s are not
    /// finite, nothing can be told: it passes, for the requester's own
    /// check of C to decide (as it does for the product's fingerprint).
    fn check(&self, from: usize, part: PartId, rows: std::ops::Range<usize>, m: &Array2<T>) -> Result<(), Failed> {
        let Block::M(i) = part.block else { return Ok(()) };
        let (Some(k), Some(tolerance), Some(key), Some(expect)) =
            (self.products.iter().position(|&p| p == i), &self.tolerance, &self.key, self.expect.get(&i))
        else {
            return Ok(());
        };
        let (tolerance, first) = (tolerance[k], rows.start);
        // (The panel's shape was admitted from its header as the plan's.)
        let got = matmul(m.view(), key.view(), parallelism(1))
            .map_err(|e| caught(from, format!("{} from slot {from}: {e}", part.name())))?;
        match compare(got.view(), expect.slice(s![rows, ..]), tolerance) {
            Ok(()) | Err(Compare::NonFinite(_)) => Ok(()),
            Err(Compare::Off { worst, row }) => Err(Failed {
                wrong_product: true,
                ..caught(
                    from,
                    format!(
                        "{} from slot {from} failed its check: |M·s − X·(Y·s)| is {worst:.3e} in row {} (tolerance {tolerance:.3e})",
                        part.name(),
                        first + row,
                    ),
                )
            }),
        }
    }
}

impl<T: Element> Node<T> {
    fn new(
        plan: Arc<RelayPlan>,
        started: Instant,
        config: WorkerConfig,
        links: mpsc::UnboundedSender<Event>,
        fallback: Arc<Semaphore>,
        progress: Arc<Progress>,
        peers: Peers,
    ) -> Self {
        let me = plan.you as usize;
        let product = &PRODUCTS[me];
        let (a_panels, b_panels) = (plan.a_panels(), plan.b_panels());
        let roles: &Roles = &plan.roles;
        let reductions = roles
            .reduced_by(me)
            .into_iter()
            .map(|quad| Reduction {
                quad,
                feeders: relay::feeders(quad).collect(),
                acc: (0..a_panels.count()).map(|_| None).collect(),
                got: vec![0; a_panels.count()],
                sent: 0,
            })
            .collect();
        let (mh, _, _) = plan.split().half();
        let hold = requester_patience(plan.silence_ms, config.io_timeout);
        Self {
            me,
            started,
            config,
            links,
            seen: std::collections::HashSet::new(),
            taken: std::collections::HashSet::new(),
            generation: [0; SLOTS],
            peers,
            folded: std::collections::HashSet::new(),
            kept: HashMap::new(),
            lost: Default::default(),
            hold,
            digests: HashMap::new(),
            parked: HashMap::new(),
            checks: Checks::new(plan.checked_products(me)),
            inputs: HashMap::new(),
            b_missing: product.right.len() * b_panels.count(),
            a_missing: vec![product.left.len(); a_panels.count()],
            r: None,
            y: None,
            x: None,
            delegation: if plan.delegate.is_empty() { Delegation::No } else { Delegation::Forming { formed: 0 } },
            fallback,
            ready: VecDeque::new(),
            computing: false,
            computed: 0,
            fingerprint: Array2::zeros((mh, plan.rounds as usize)),
            reductions,
            outboxes: HashMap::new(),
            sending: std::collections::HashSet::new(),
            retired: Vec::new(),
            recycler: Recycler::new(),
            progress,
            urgent: None,
            c_waiting: VecDeque::new(),
            received: [0; SLOTS + 1],
            expected: expected_counts(&plan, me),
            stats: RelayStats {
                slot: me as u8,
                bytes_in: vec![0; SLOTS + 1],
                bytes_out: vec![0; SLOTS + 1],
                ..RelayStats::default()
            },
            plan,
        }
    }

    fn now_us(&self) -> u64 {
        (self.started.elapsed().as_micros() as u64).max(1)
    }

    async fn run(
        &mut self,
        inbox: &mut mpsc::UnboundedReceiver<Event>,
        links_rx: &mut mpsc::UnboundedReceiver<Event>,
        out: &mpsc::Sender<Out>,
        cancel: &CancellationToken,
        slots: &Arc<Semaphore>,
        mut lease_slot: Option<OwnedSemaphorePermit>,
    ) -> Result<RelayStats, Failed> {
        let (done_tx, mut done_rx) = mpsc::unbounded_channel::<Result<Done<T>, String>>();
        // The job's compute slot, taken once there is something to compute
        // (forwarding goes on without it).
        let mut permit = None;
        while !self.finished() {
            // (The hold that ends first, and for which slot.)
            let holding = (0..SLOTS).filter_map(|j| self.lost[j].as_ref().map(|(until, _)| (*until, j))).min();
            tokio::select! {
                _ = cancel.cancelled() => return Err(failed("the job was cancelled")),
                // No move came for a slot whose link broke: give up as
                // without the hold.
                _ = tokio::time::sleep_until(holding.map_or_else(tokio::time::Instant::now, |(until, _)| until)), if holding.is_some() => {
                    let (_, failure) = holding.and_then(|(_, j)| self.lost[j].take()).expect("holding for a slot");
                    return Err(failure);
                }
                event = inbox.recv() => match event {
                    Some(event) => {
                        if let Err(failure) = self.take(event, out).await {
                            self.caught_out(failure, out).await?;
                        }
                    }
                    None => return Err(failed("the job's connections closed")),
                },
                event = links_rx.recv() => if let Some(event) = event {
                    if let Err(failure) = self.take(event, out).await {
                        self.caught_out(failure, out).await?;
                    }
                },
                // A C panel to the requester, as soon as its writer has room.
                permit = out.reserve(), if !self.c_waiting.is_empty() => {
                    let permit = permit.map_err(|_| closed())?;
                    permit.send(self.c_waiting.pop_front().expect("a C panel waits"));
                }
                done = done_rx.recv() => match done {
                    Some(Ok(done)) => {
                        self.computing = false;
                        self.finish_work(done);
                    }
                    Some(Err(e)) => return Err(failed(e)),
                    None => {}
                },
            }
            if !self.computing && self.has_work() {
                if permit.is_none() {
                    permit = Some(tokio::select! {
                        _ = cancel.cancelled() => return Err(failed("the job was cancelled")),
                        p = slots.clone().acquire_owned() => p.map_err(|_| failed("the worker is stopping"))?,
                    });
                }
                self.start_work(&done_tx);
                if self.delegation == Delegation::Running {
                    // The group computes now; its first sub-slot is this
                    // worker's and takes these slots.
                    permit = None;
                    lease_slot = None;
                }
            }
            self.publish();
            if self.computed == self.a_missing.len() && !self.outboxes.is_empty() {
                // (Every held quadrant was used, so every forward is queued too.)
                // Everything this slot sends to peers is queued: let each
                // link finish and close.
                self.outboxes.clear();
            }
        }
        drop((permit, lease_slot));
        let fingerprint = std::mem::replace(&mut self.fingerprint, Array2::zeros((0, 0)));
        let part = PartId { block: Block::Fingerprint(self.me), panel: 0 };
        self.stats.bytes_out[REQUESTER] += relay::part_frame_len(T::DTYPE, fingerprint.dim());
        self.stats.done_us = self.now_us();
        out.send(Out::Part(part, T::into_matrix(fingerprint))).await.map_err(|_| closed())?;
        Ok(self.stats.clone())
    }

    /// Done: keeps the product panels sent to each reducer (`kept`) until
    /// the requester closes the link (`cancel`), so that a reducer whose
    /// roles move after this slot finished — lost, or caught summing wrong
    /// — still gets them, from here ([`Node::moved`]). It answers each
    /// `Moved` and sends the new peer what the old one was sent; nothing
    /// else is taken. It computes nothing more and holds no compute slot.
    async fn linger(
        &mut self,
        mut inbox: mpsc::UnboundedReceiver<Event>,
        mut links_rx: mpsc::UnboundedReceiver<Event>,
        out: &mpsc::Sender<Out>,
        cancel: &CancellationToken,
    ) {
        // Only the kept product panels are still needed.
        self.inputs.clear();
        self.parked.clear();
        self.checks.waiting.clear();
        self.y = None;
        self.x = None;
        self.reductions.iter_mut().for_each(|r| r.acc.iter_mut().for_each(|a| *a = None));
        self.recycler.sweep();
        loop {
            let event = tokio::select! {
                _ = cancel.cancelled() => return,
                event = inbox.recv() => event,
                Some(event) = links_rx.recv() => Some(event),
            };
            match event {
                None => return,
                Some(event @ (Event::Moved { .. } | Event::Sent { .. })) => {
                    if self.take(event, out).await.is_err() {
                        return;
                    }
                }
                Some(Event::Link { slot, error, .. }) => {
                    // The new peer will miss panels and say so; nothing is
                    // left to fail here.
                    info!(job = %self.plan.job_id, slot, %error, "a link to a moved slot failed after this slot was done");
                }
                // Parts sent after the end (a spare's repeats) and the like.
                Some(_) => {}
            }
        }
    }

    /// Makes how far the product has got the next progress report's.
    fn publish(&self) {
        let inputs = if self.b_missing == 0 { self.a_missing.iter().filter(|&&m| m == 0).count() } else { 0 };
        self.progress.product.store((inputs as u64) << 32 | self.computed as u64, Ordering::Relaxed);
    }

    /// Whether there is compute to start: Y to form (all of B is in, and
    /// the product is not done), or a panel ready while Y is there.
    fn has_work(&self) -> bool {
        match (&self.y, self.delegation) {
            (_, Delegation::Running) => false,
            (None, _) => self.b_missing == 0 && self.computed < self.a_missing.len(),
            (Some(_), Delegation::Forming { formed }) => !self.ready.is_empty() || formed == self.a_missing.len(),
            (Some(_), Delegation::No) => !self.ready.is_empty(),
        }
    }

    /// Every role done: the product computed, every C panel sent, every
    /// link to a peer flushed and closed, every expected part received.
    fn finished(&self) -> bool {
        self.computed == self.a_missing.len()
            && self.reductions.iter().all(|r| r.sent == r.acc.len())
            && self.c_waiting.is_empty()
            && self.outboxes.is_empty()
            && self.sending.is_empty()
            && self.received == self.expected
    }

    /// Whether `event` comes from (or concerns) a generation of a slot
    /// that has since moved: it is set aside.
    fn stale(&self, event: &Event) -> bool {
        let (slot, generation) = match *event {
            Event::Part { from: From::Slot(slot), generation, .. }
            | Event::Caught { slot, generation, .. }
            | Event::Link { slot, generation, .. }
            | Event::Closed { slot, generation }
            | Event::Sent { slot, generation, .. } => (slot, generation),
            _ => return false,
        };
        generation != self.generation[slot]
    }

    async fn take(&mut self, event: Event, out: &mpsc::Sender<Out>) -> Result<(), Failed> {
        self.recycler.sweep();
        if self.stale(&event) {
            if let Event::Sent { slot, bytes, .. } = event {
                self.stats.bytes_out[slot] += bytes;
            }
            return Ok(());
        }
        match event {
            Event::Part { from, generation, part, data, digest } => {
                let index = match from {
                    From::Requester => REQUESTER,
                    From::Slot(s) => s,
                };
                let culprit = || Failed {
                    blame: (index < SLOTS).then_some(index),
                    message: String::new(),
                    evidence: true,
                    wrong_product: false,
                };
                if !self.seen.insert((index, generation, part.task_id().0)) {
                    return Err(Failed { message: format!("{} arrived twice", part.name()), ..culprit() });
                }
                self.received[index] += 1;
                let repeat = match part.block {
                    Block::M(_) => self.folded.contains(&part),
                    _ => part.block.input_index().is_some() && self.taken.contains(&part),
                };
                if generation > 0 && repeat {
                    // The slot's last generation sent it before it moved.
                    self.stats.bytes_in[index] += relay::part_frame_len(T::DTYPE, data.shape());
                    return Ok(());
                }
                if let Some(input) = part.block.input_index() {
                    self.progress.arrived[input].fetch_add(1, Ordering::Relaxed);
                }
                let data = T::from_matrix(data)
                    .map_err(|_| Failed { message: "a part of the wrong dtype".into(), ..culprit() })?;
                self.stats.bytes_in[index] += relay::part_frame_len(T::DTYPE, data.dim());
                self.take_part(from, part, Arc::new(data), digest)
            }
            Event::Digests(list) => {
                // At most one per panel of each of the eight quadrants.
                let most = 4 * (self.plan.a_panels().count() + self.plan.b_panels().count());
                if self.digests.len() + list.len() > most {
                    return Err(failed(format!("the requester sent more than {most} digests")));
                }
                // (Every digest is kept, past a panel that fails its own:
                // the job may go on, the forwarder's roles moved.)
                let mut wrong = Ok(());
                for (id, digest) in list {
                    if let Some((from, data, got)) = self.parked.remove(&id) {
                        let part =
                            PartId::from_task_id(septet_common::TaskId(id)).expect("parked parts have valid ids");
                        wrong = wrong.and(self.use_verified(from, part, data, &got, &digest));
                    }
                    self.digests.insert(id, digest);
                }
                wrong
            }
            Event::Checks { seed, tolerance } => {
                if tolerance.len() != self.checks.products.len() || self.checks.tolerance.is_some() {
                    return Err(failed(format!(
                        "the requester sent {} tolerances for the {} products this slot is sent",
                        tolerance.len(),
                        self.checks.products.len()
                    )));
                }
                self.checks.tolerance = Some(tolerance);
                self.checks.key = Some(relay::key(&seed, self.plan.split().half().2));
                self.fold_checked()
            }
            Event::Link { slot, error, .. } => {
                self.hold(slot, blame(slot, format!("the link with slot {slot} failed: {error}")), out).await
            }
            Event::Caught { slot, error, .. } => Err(caught(slot, format!("slot {slot} {error}"))),
            Event::Closed { slot, .. } => {
                if self.received[slot] < self.expected[slot] {
                    let why = format!(
                        "slot {slot} closed its link after {} of {} parts",
                        self.received[slot], self.expected[slot]
                    );
                    return self.hold(slot, blame(slot, why), out).await;
                }
                Ok(())
            }
            Event::Sent { slot, bytes, .. } => {
                self.stats.bytes_out[slot] += bytes;
                self.sending.remove(&slot);
                Ok(())
            }
            Event::Moved { slot, addr, ticket } => {
                let refused = self.moved(slot, addr, ticket);
                if let Some(why) = &refused {
                    info!(job = %self.plan.job_id, slot, %why, "refused to move a slot's roles");
                }
                let reply = WorkerReply::MovedAck { slot: slot.min(255) as u8, refused };
                self.say(reply, out).await
            }
        }
    }

    /// A slot was caught sending what it should not (`failure`, on
    /// evidence: a panel that fails the requester's digest, a part off the
    /// plan): hold for its roles to move, as for a broken link. Any other
    /// failure ends the job here.
    async fn caught_out(&mut self, failure: Failed, out: &mpsc::Sender<Out>) -> Result<(), Failed> {
        match failure.blame {
            Some(slot) if failure.evidence => self.hold(slot, failure, out).await,
            _ => Err(failure),
        }
    }

    /// The link with `slot` broke (`failure`, blaming it): rather than give
    /// up, tell the requester and hold — everything else goes on — until
    /// it moves the slot's roles to a spare ([`Node::moved`]), ends the
    /// job, or `hold` passes (then `failure` ends the job here, as it
    /// would have at once before). The requester's own link to each slot
    /// tells it a dead peer from a broken link between two live ones. A
    /// slot that moved already moves no more: nothing to hold for.
    async fn hold(&mut self, slot: usize, failure: Failed, out: &mpsc::Sender<Out>) -> Result<(), Failed> {
        if slot >= SLOTS || slot == self.me || self.generation[slot] >= MOST_MOVES {
            return Err(failure);
        }
        // (Said once a slot, unless evidence comes after a broken link.)
        if self.lost[slot].as_ref().is_some_and(|(_, held)| held.evidence || !failure.evidence) {
            return Ok(());
        }
        info!(job = %self.plan.job_id, slot, why = %failure.message, "holding for the requester to move a slot");
        let (message, evidence, wrong_product) = (failure.message.clone(), failure.evidence, failure.wrong_product);
        let reply = WorkerReply::RelayLost { slot: slot as u8, message, evidence, wrong_product };
        self.lost[slot] = Some((tokio::time::Instant::now() + self.hold, failure));
        self.say(reply, out).await
    }

    /// Sends the requester `reply` ahead of the parts queued for it, if
    /// the link's writer takes urgent answers.
    async fn say(&self, reply: WorkerReply, out: &mpsc::Sender<Out>) -> Result<(), Failed> {
        match &self.urgent {
            Some(urgent) => urgent.send(reply).map_err(|_| closed()),
            None => out.send(Out::Reply(reply)).await.map_err(|_| closed()),
        }
    }

    /// Moves slot `slot`'s roles to the peer at `addr`, as far as this
    /// slot is concerned (see [`WorkerRequest::Moved`]), or says why not.
    fn moved(&mut self, slot: usize, addr: String, ticket: Option<LeaseTicket>) -> Option<String> {
        if slot >= SLOTS || slot == self.me {
            return Some(format!("slot {slot} is not another slot of the job"));
        }
        // Once a job (the requester hedges a relay once): a requester that
        // asks more must not have this slot send its product again and again.
        if self.generation[slot] >= MOST_MOVES {
            return Some(format!("slot {slot} has moved already"));
        }
        let next = self.generation[slot] + 1;
        self.lost[slot] = None;
        // From now on only the new peer's link is taken from, once. The
        // link to the old one, if any, gets nothing more (it forwarded
        // operands, which the requester now sends the new peer itself),
        // but stays open, unwaited for, until this node ends: closing it
        // would make the old peer fail and, through its links, the slots
        // that have not yet heard of the move — the requester drops it
        // once every slot has.
        self.generation[slot] = next;
        {
            let mut joins = self.peers.lock();
            joins.generations[slot] = next;
            joins.joined &= !(1u8 << slot);
        }
        // What the old peer forwarded and waits for its digest is set
        // aside too: the new peer sends it again (a corrupt copy from the
        // old peer must not fail the job once a good one is on its way).
        let old: Vec<u64> = self.parked.iter().filter(|(_, (from, ..))| *from == slot).map(|(&id, _)| id).collect();
        for id in old {
            self.parked.remove(&id);
            if let Ok(part) = PartId::from_task_id(septet_common::TaskId(id)) {
                self.taken.remove(&part);
            }
        }
        // Product panels of the old peer's still waiting for the checks:
        // the new peer sends its whole product.
        self.checks.waiting.retain(|(from, ..)| *from != slot);
        self.received[slot] = 0;
        if let Some(outbox) = self.outboxes.remove(&slot) {
            self.retired.push(outbox);
        }
        self.sending.remove(&slot);
        let mut plan = RelayPlan::clone(&self.plan);
        plan.peers[slot] = addr;
        if let Some(t) = plan.tickets.get_mut(slot) {
            *t = ticket;
        }
        self.plan = Arc::new(plan);
        // The product panels the old peer was sent (all, whether or not
        // they reached it) go to the new one.
        let again = self.kept.remove(&slot).unwrap_or_default();
        info!(job = %self.plan.job_id, slot, to = %self.plan.peers[slot], again = again.len(), "a slot's roles moved");
        for (part, data) in again {
            self.send_to(slot, part, data);
        }
        None
    }

    fn take_part(
        &mut self,
        from: From,
        part: PartId,
        data: Arc<Array2<T>>,
        got: Option<[u8; 32]>,
    ) -> Result<(), Failed> {
        match (from, part.block) {
            (From::Requester, Block::Vectors) => {
                self.r = Some(data);
                Ok(())
            }
            (From::Requester, Block::Expect(i)) => {
                self.checks.expect.insert(i, data);
                self.fold_checked()
            }
            (From::Requester, _) => {
                // A held quadrant: pass it on, and use it. (A slot whose
                // roles moved here is also sent what it would have had by
                // forward: that it only uses.)
                let x = part.block.input_index().expect("admitted: a quadrant");
                let held = self.plan.roles.holders[x] as usize == self.me;
                for (user, _) in relay::users(x) {
                    if held && user != self.me {
                        #[cfg(feature = "fault-injection")]
                        if let Some(crate::server::Fault::CorruptForward) = self.config.fault {
                            let mut bad = Array2::clone(&data);
                            bad.iter_mut().take(1).for_each(|v| *v += T::from_f64(1.0));
                            self.send_to(user, part, Arc::new(bad));
                            continue;
                        }
                        self.send_to(user, part, data.clone());
                    }
                }
                self.taken.insert(part);
                self.use_input(part, data);
                Ok(())
            }
            (From::Slot(f), Block::M(_)) => {
                if !self.checks.ready() {
                    self.checks.waiting.push((f, part, data));
                    return Ok(());
                }
                self.fold_product(f, part, data)
            }
            (From::Slot(f), _) => {
                self.taken.insert(part);
                let id = part.task_id().0;
                let got = got.unwrap_or_else(|| relay::digest(data.view()));
                match self.digests.get(&id) {
                    Some(&digest) => self.use_verified(f, part, data, &got, &digest)?,
                    None => {
                        self.parked.insert(id, (f, data, got));
                    }
                }
                Ok(())
            }
        }
    }

    /// Folds product panel `part` from slot `from` into this slot's C
    /// quadrants if it passes the requester's check; if not, it is not
    /// folded in (a good copy may still come, from the sender's new peer)
    /// and `from` is caught.
    fn fold_product(&mut self, from: usize, part: PartId, data: Arc<Array2<T>>) -> Result<(), Failed> {
        let Block::M(i) = part.block else { return Ok(()) };
        let rows = self.plan.a_panels().range(part.panel as usize);
        self.checks.check(from, part, rows, &data)?;
        self.folded.insert(part);
        self.reduce(i, part.panel as usize, &data);
        // Folded in: its buffer can take the next part.
        if let Ok(m) = Arc::try_unwrap(data) {
            septet_common::matrix::recycle(m);
        }
        Ok(())
    }

    /// Once the requester's checks are all in, folds in the product
    /// panels that waited for them (the first that fails is the error;
    /// the others are still looked at, and folded in if they pass).
    fn fold_checked(&mut self) -> Result<(), Failed> {
        if !self.checks.ready() {
            return Ok(());
        }
        let mut wrong = Ok(());
        for (from, part, data) in std::mem::take(&mut self.checks.waiting) {
            wrong = wrong.and(self.fold_product(from, part, data));
        }
        wrong
    }

    /// Uses forwarded panel `part` from slot `from` if its digest `got`
    /// is the requester's `digest`; if not, it is not taken (a good copy
    /// may still come, from the forwarder's new peer) and `from` is caught.
    fn use_verified(
        &mut self,
        from: usize,
        part: PartId,
        data: Arc<Array2<T>>,
        got: &[u8; 32],
        digest: &[u8; 32],
    ) -> Result<(), Failed> {
        if let Err(e) = verify(from, part, got, digest) {
            self.taken.remove(&part);
            return Err(e);
        }
        self.use_input(part, data);
        Ok(())
    }

    /// A verified operand panel this slot's product reads.
    fn use_input(&mut self, part: PartId, data: Arc<Array2<T>>) {
        let p = part.panel as usize;
        match part.block {
            Block::A(_) => {
                self.a_missing[p] -= 1;
                if self.a_missing[p] == 0 {
                    self.ready.push_back(p);
                }
            }
            _ => self.b_missing -= 1,
        }
        if self.stats.inputs_done_us == 0 && self.b_missing == 0 && self.a_missing.iter().all(|&m| m == 0) {
            self.stats.inputs_done_us = self.now_us();
        }
        self.recycler.watch(&data);
        self.inputs.insert(part, data);
    }

    /// Queues `data` for slot `to`, opening the link on first use.
    fn send_to(&mut self, to: usize, part: PartId, data: Arc<Array2<T>>) {
        if self.plan.done & (1 << to) != 0 {
            // Done before this slot's roles moved here: it has all it needs.
            return;
        }
        if self.generation[to] > 0 && part.block.input_index().is_some() {
            // Its roles moved: the requester sends the new peer its operands.
            return;
        }
        if let Block::M(_) = part.block {
            self.kept.entry(to).or_default().push((part, data.clone()));
        }
        // (This slot's product panels are watched from here: what a panel
        // computed before this one was written from may be free by now, for
        // the next panel's product.)
        self.recycler.sweep();
        self.recycler.watch(&data);
        if !self.outboxes.contains_key(&to) {
            let config = &self.config;
            let (tx, rx) = mpsc::unbounded_channel();
            let (addr, job_id, links) = (self.plan.peers[to].clone(), self.plan.job_id, self.links.clone());
            // The link says this slot's generation; its events, the receiver's.
            let (ends, generation) = ((self.me as u8, to as u8, self.plan.generation), self.generation[to]);
            let ticket = self.plan.tickets.get(to).cloned().flatten();
            let limits = ConnLimits {
                handshake_timeout: config.handshake_timeout,
                security: config.security.clone(),
                ..ConnLimits::default()
            };
            let io_timeout = config.io_timeout;
            tokio::spawn(async move {
                let event = match send_parts::<T>(&addr, job_id, ends, ticket, rx, limits, io_timeout).await {
                    Ok(bytes) => Event::Sent { slot: to, generation, bytes },
                    Err(e) => Event::Link { slot: to, generation, error: e.to_string() },
                };
                let _ = links.send(event);
            });
            self.sending.insert(to);
            self.outboxes.insert(to, tx);
        }
        // The link's task holds the receiver until it fails; a failure
        // arrives as an event.
        if let Some(outbox) = self.outboxes.get(&to) {
            let _ = outbox.send((part, data));
        }
    }

    fn start_work(&mut self, done: &mpsc::UnboundedSender<Result<Done<T>, String>>) {
        let threads = self.config.threads;
        #[cfg(feature = "fault-injection")]
        let fault = self.config.fault;
        let product = &PRODUCTS[self.me];
        let done = done.clone();
        if self.y.is_none() {
            // Y = Σ ±B_q, assembled panel by panel.
            self.computing = true;
            let (b_panels, (_, kh, nh)) = (self.plan.b_panels(), self.plan.split().half());
            let terms: Vec<(Sign, Vec<Arc<Array2<T>>>)> = product
                .right
                .iter()
                .map(|&(sign, q)| {
                    let panels = (0..b_panels.count())
                        .map(|p| {
                            self.inputs
                                .remove(&PartId { block: Block::B(q), panel: p as u32 })
                                .expect("every B panel is in")
                        })
                        .collect();
                    (sign, panels)
                })
                .collect();
            tokio::task::spawn_blocking(move || {
                // A pooled buffer, its rows written once by the first term:
                // neither zeroed first nor faulted in afresh each job.
                let mut y = septet_common::matrix::alloc_uninit::<T>((kh, nh));
                for (i, (sign, panels)) in terms.into_iter().enumerate() {
                    for (p, part) in panels.iter().enumerate() {
                        let rows = y.slice_mut(s![b_panels.range(p), ..]);
                        accumulate(rows, sign, part, i == 0);
                    }
                }
                let _ = done.send(Ok(Done::Y(y)));
            });
            return;
        }
        if let Delegation::Forming { formed } = self.delegation {
            return self.delegate_work(formed, &done);
        }
        let Some(first) = self.ready.pop_front() else { return };
        self.computing = true;
        if self.stats.compute_start_us == 0 {
            self.stats.compute_start_us = self.now_us();
        }
        // Panels that are ready together go into one product: each call
        // packs all of Y afresh, and with seven slots sharing two cores
        // 128-row calls gave a fifth less throughput than 512-row ones.
        let mut panels = vec![first];
        while panels.len() < batch_panels(self.plan.a_panels()) {
            let Some(p) = self.ready.pop_front() else { break };
            panels.push(p);
        }
        let terms: Vec<_> = panels.iter().map(|&p| self.a_terms(p)).collect();
        let (y, r) = (self.y.clone().expect("Y formed"), self.r.clone());
        tokio::task::spawn_blocking(move || {
            // A slow worker: slow to compute, still talking.
            #[cfg(feature = "fault-injection")]
            if let Some(crate::server::Fault::Delay(d)) = fault {
                std::thread::sleep(d * panels.len() as u32);
            }
            let t = Instant::now();
            let result = (|| {
                // X's rows: one A panel read in place when X is one
                // quadrant, else the panels' signed sums stacked in a
                // pooled buffer, given back once the product has read it.
                let stacked = match terms.as_slice() {
                    [one] if matches!(one.as_slice(), [(Sign::Plus, _)]) => None,
                    _ => {
                        let rows = terms.iter().map(|t| t[0].1.nrows()).sum();
                        let mut x = septet_common::matrix::alloc_uninit::<T>((rows, terms[0][0].1.ncols()));
                        let mut at = 0;
                        for panel in &terms {
                            let h = panel[0].1.nrows();
                            for (i, (sign, part)) in panel.iter().enumerate() {
                                accumulate(x.slice_mut(s![at..at + h, ..]), *sign, part, i == 0);
                            }
                            at += h;
                        }
                        Some(x)
                    }
                };
                let x = stacked.as_ref().map_or_else(|| terms[0][0].1.view(), |x| x.view());
                #[allow(unused_mut)]
                let mut m = matmul(x, y.view(), parallelism(threads)).map_err(|e| e.to_string())?;
                let heights: Vec<usize> = terms.iter().map(|t| t[0].1.nrows()).collect();
                drop(terms);
                if let Some(x) = stacked {
                    septet_common::matrix::recycle(x);
                }
                // A liar: a wrong product, and the fingerprint of that wrong product.
                #[cfg(feature = "fault-injection")]
                if let Some(crate::server::Fault::Corrupt) = fault {
                    m.iter_mut().take(1).for_each(|v| *v += T::from_f64(1.0));
                }
                let r = r.ok_or("the requester sent no vectors")?;
                let mr = matmul(m.view(), r.view(), parallelism(1)).map_err(|e| e.to_string())?;
                let took = t.elapsed();
                if let [panel] = panels[..] {
                    return Ok(Done::Panels { parts: vec![(panel, m, mr)], took });
                }
                // Each panel's rows in a buffer of its own: they go to
                // other slots and into sums one panel at a time.
                let mut parts = Vec::with_capacity(panels.len());
                let mut at = 0;
                for (panel, h) in panels.into_iter().zip(heights) {
                    let mut mp = septet_common::matrix::alloc_uninit::<T>((h, m.ncols()));
                    mp.assign(&m.slice(s![at..at + h, ..]));
                    parts.push((panel, mp, mr.slice(s![at..at + h, ..]).to_owned()));
                    at += h;
                }
                septet_common::matrix::recycle(m);
                Ok(Done::Panels { parts, took })
            })();
            let _ = done.send(result);
        });
    }

    /// The A panels a ready `panel` of X is the signed sum of (taken out
    /// of `inputs`).
    fn a_terms(&mut self, panel: usize) -> Vec<(Sign, Arc<Array2<T>>)> {
        PRODUCTS[self.me]
            .left
            .iter()
            .map(|&(sign, q)| {
                let part = PartId { block: Block::A(q), panel: panel as u32 };
                (sign, self.inputs.remove(&part).expect("a ready panel has its A panels"))
            })
            .collect()
    }

    /// A slot that delegates: forms the next panel of X's rows, or — X
    /// whole — hands X·Y to its group.
    fn delegate_work(&mut self, formed: usize, done: &mpsc::UnboundedSender<Result<Done<T>, String>>) {
        let done = done.clone();
        if let Some(panel) = self.ready.pop_front() {
            self.computing = true;
            let terms = self.a_terms(panel);
            let (mh, kh, _) = self.plan.split().half();
            let x = self.x.take();
            let rows = self.plan.a_panels().range(panel);
            tokio::task::spawn_blocking(move || {
                let mut x = x.unwrap_or_else(|| septet_common::matrix::alloc_zeroed::<T>((mh, kh)));
                let mut dst = x.slice_mut(s![rows, ..]);
                for (sign, part) in &terms {
                    match sign {
                        Sign::Plus => dst += &**part,
                        Sign::Minus => dst -= &**part,
                    }
                }
                let _ = done.send(Ok(Done::XPanel { x }));
            });
            return;
        }
        debug_assert_eq!(formed, self.a_missing.len());
        self.delegation = Delegation::Running;
        self.computing = true;
        self.stats.compute_start_us = self.now_us();
        let (Some(x), Some(y)) = (self.x.take(), self.y.take()) else {
            let _ = done.send(Err("X or Y missing when the product was delegated".into()));
            return;
        };
        let y = Arc::try_unwrap(y).unwrap_or_else(|y| Array2::clone(&y));
        let Ok(group) = <[septet_common::proto::PeerAddr; 7]>::try_from(self.plan.delegate.clone()) else {
            let _ = done.send(Err("the plan's group is not seven peers".into()));
            return;
        };
        let config = septet_client::RequesterConfig {
            io_timeout: self.config.io_timeout,
            // The requester's patience with its slots, for this slot's group;
            // at least a second, whatever the plan says.
            silence_timeout: Duration::from_millis(self.plan.silence_ms.max(1000)),
            security: self.config.security.clone(),
            verify_rounds: self.plan.rounds as usize,
            ..Default::default()
        };
        let (threads, r, slots) = (self.config.threads, self.r.clone(), Some(self.fallback.clone()));
        #[cfg(feature = "fault-injection")]
        let fault = self.config.fault;
        info!(job = %self.plan.job_id, slot = self.me, "delegating the product to the group");
        tokio::spawn(async move {
            let t = Instant::now();
            let result = async {
                #[allow(unused_mut)]
                let (mut m, delegated) = septet_client::requester::relay::delegate(config, x, y, group, threads, slots)
                    .await
                    .map_err(|e| format!("computing the product with the group: {e}"))?;
                // A liar: a wrong product, and the fingerprint of that wrong product.
                #[cfg(feature = "fault-injection")]
                if let Some(crate::server::Fault::Corrupt) = fault {
                    m.iter_mut().take(1).for_each(|v| *v += T::from_f64(1.0));
                }
                let r = r.ok_or("the requester sent no vectors")?;
                let (m, mr) = tokio::task::spawn_blocking(move || {
                    let mr = matmul(m.view(), r.view(), parallelism(1)).map_err(|e| e.to_string())?;
                    Ok::<_, String>((m, mr))
                })
                .await
                .map_err(|e| e.to_string())??;
                Ok(Done::Whole { m, mr, took: t.elapsed(), delegated })
            };
            let _ = done.send(result.await);
        });
    }

    fn finish_work(&mut self, done: Done<T>) {
        match done {
            Done::Y(y) => {
                // Given back to the pool once the last panel is computed.
                let y = Arc::new(y);
                self.recycler.watch(&y);
                self.y = Some(y);
            }
            Done::XPanel { x } => {
                self.x = Some(x);
                if let Delegation::Forming { formed } = &mut self.delegation {
                    *formed += 1;
                }
            }
            Done::Whole { m, mr, took, delegated } => {
                self.stats.compute_us += took.as_micros() as u64;
                self.stats.compute_end_us = self.now_us();
                self.stats.delegated = Some(delegated);
                self.fingerprint.assign(&mr);
                let count = self.a_missing.len();
                self.computed = count;
                for panel in 0..count {
                    let rows = self.plan.a_panels().range(panel);
                    let mp = Arc::new(m.slice(s![rows, ..]).to_owned());
                    let part = PartId { block: Block::M(self.me), panel: panel as u32 };
                    for to in self.plan.roles.product_targets(self.me) {
                        self.send_to(to, part, mp.clone());
                    }
                    self.reduce(self.me, panel, &mp);
                }
            }
            Done::Panels { parts, took } => {
                self.stats.compute_us += took.as_micros() as u64;
                for (panel, m, mr) in parts {
                    self.computed += 1;
                    if self.computed == self.a_missing.len() {
                        self.stats.compute_end_us = self.now_us();
                        self.y = None;
                    }
                    let rows = self.plan.a_panels().range(panel);
                    self.fingerprint.slice_mut(s![rows, ..]).assign(&mr);
                    let m = Arc::new(m);
                    let part = PartId { block: Block::M(self.me), panel: panel as u32 };
                    for to in self.plan.roles.product_targets(self.me) {
                        self.send_to(to, part, m.clone());
                    }
                    self.reduce(self.me, panel, &m);
                }
            }
        }
    }

    /// Folds panel `panel` of product `product` into each C quadrant this
    /// slot reduces that it feeds; queues each C panel that is complete for
    /// the requester (`c_waiting`: the node goes on computing while a
    /// congested requester link takes them, within the C quadrants the
    /// plan counts).
    fn reduce(&mut self, product: usize, panel: usize, m: &Array2<T>) {
        let mut complete = Vec::new();
        for (k, red) in self.reductions.iter_mut().enumerate() {
            let Some(&(_, sign)) = red.feeders.iter().find(|(i, _)| *i == product) else { continue };
            match &mut red.acc[panel] {
                Some(acc) => accumulate(acc.view_mut(), sign, m, false),
                empty @ None => {
                    // The first product in starts the sum in a pooled
                    // buffer: no zeroing, and no fresh pages to fault in.
                    let mut acc = septet_common::matrix::alloc_uninit::<T>(m.dim());
                    accumulate(acc.view_mut(), sign, m, true);
                    *empty = Some(acc);
                }
            }
            red.got[panel] += 1;
            if red.got[panel] == red.feeders.len() {
                complete.push(k);
            }
        }
        for k in complete {
            let red = &mut self.reductions[k];
            #[allow(unused_mut)]
            let mut c = red.acc[panel].take().expect("a complete panel has its sum");
            red.sent += 1;
            #[cfg(feature = "fault-injection")]
            if let Some(crate::server::Fault::CorruptReduce) = self.config.fault {
                c.iter_mut().take(1).for_each(|v| *v += T::from_f64(1.0));
            }
            let part = PartId { block: Block::C(red.quad), panel: panel as u32 };
            if self.stats.reduce_start_us == 0 {
                self.stats.reduce_start_us = (self.started.elapsed().as_micros() as u64).max(1);
            }
            self.stats.bytes_out[REQUESTER] += relay::part_frame_len(T::DTYPE, c.dim());
            self.c_waiting.push_back(Out::Part(part, T::into_matrix(c)));
        }
    }
}

/// Sends parts to slot `to` of job `job_id` over a connection of their
/// own, in order, until the queue closes: the bytes written.
async fn send_parts<T: Element>(
    addr: &str,
    job_id: JobId,
    (me, to, generation): (u8, u8, u8),
    ticket: Option<LeaseTicket>,
    mut rx: mpsc::UnboundedReceiver<(PartId, Arc<Array2<T>>)>,
    limits: ConnLimits,
    io_timeout: Duration,
) -> septet_common::Result<u64> {
    let mut conn = Connection::connect(addr, Role::Client, limits)
        .await
        .map_err(|e| e.naming(|| format!("the peer at {addr}")))?;
    let join = WorkerRequest::Join { job_id, from: me, to, generation };
    deadline(io_timeout, "a peer to take a Join", async {
        if let Some(ticket) = ticket {
            conn.writer.send(&WorkerRequest::Ticket(ticket)).await?;
        }
        conn.writer.send(&join).await
    })
    .await?;
    let mut bytes = 0;
    while let Some((part, data)) = rx.recv().await {
        let len = relay::part_frame_len(T::DTYPE, data.dim());
        let limit = io_timeout + Duration::from_secs_f64(len as f64 / MIN_PART_RATE);
        deadline(
            limit,
            "a peer to take a part",
            conn.writer.send_blocks(part.task_id(), BlockOp::Part, &[T::view(data.view())]),
        )
        .await?;
        bytes += len;
    }
    let _ = conn.writer.shutdown().await;
    Ok(bytes)
}

/// `dst ±= src`, or `dst = ±src` for the `first` term (whatever `dst`
/// held before: a pooled buffer's old values).
fn accumulate<T: Element>(mut dst: ndarray::ArrayViewMut2<'_, T>, sign: Sign, src: &Array2<T>, first: bool) {
    match (first, sign) {
        (true, Sign::Plus) => ndarray::Zip::from(&mut dst).and(src).for_each(|a, &b| *a = T::zero() + b),
        (true, Sign::Minus) => ndarray::Zip::from(&mut dst).and(src).for_each(|a, &b| *a = T::zero() - b),
        (false, Sign::Plus) => dst += src,
        (false, Sign::Minus) => dst -= src,
    }
}

/// Most panels of a product computed in one call: as many as make 512
/// rows, and a quarter of the panels at most, so C still flows back early.
pub(crate) fn batch_panels(panels: relay::Panels) -> usize {
    (512 / panels.per.max(1)).clamp(1, (panels.count() / 4).max(1))
}

/// Checks that a forwarded part hashed to the requester's digest.
fn verify(from: usize, part: PartId, got: &[u8; 32], digest: &[u8; 32]) -> Result<(), Failed> {
    if got != digest {
        return Err(caught(
            from,
            format!("{} forwarded by slot {from} does not match the requester's digest", part.name()),
        ));
    }
    Ok(())
}

fn closed() -> Failed {
    failed("the requester's link closed")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_off_the_plan_are_refused_from_their_headers() {
        let plan = Arc::new(RelayPlan::example(64, 8));
        let roles = plan.roles;
        // Slot 0 computes M1 = (A11 + A22)(B11 + B22); A11's holder sends it A11's panels.
        let holder = roles.holders[0] as usize;
        let a11 = PartId { block: Block::A(Quad::Q11), panel: 3 };
        let header = |part: PartId, dtype, shapes: Vec<(usize, usize)>| BlocksHeader {
            task_id: part.task_id(),
            op: BlockOp::Part,
            dtype,
            shapes,
        };
        let check = |from, h: &BlocksHeader| (admit_header(plan.clone(), 0, from).0)(h);
        let from = if holder == 0 { From::Requester } else { From::Slot(holder) };
        check(from, &header(a11, Dtype::F64, vec![(8, 32)])).unwrap();
        // Declared a gigabyte: refused before anything is allocated.
        assert!(check(from, &header(a11, Dtype::F64, vec![(1 << 14, 1 << 13)])).is_err());
        assert!(check(from, &header(a11, Dtype::F32, vec![(8, 32)])).is_err());
        assert!(check(from, &header(a11, Dtype::F64, vec![(8, 32), (8, 32)])).is_err());
        let past = PartId { block: Block::A(Quad::Q11), panel: 4 };
        assert!(check(from, &header(past, Dtype::F64, vec![(8, 32)])).is_err(), "A has 4 panels");
        // From a slot that does not hold A11.
        let other = (0..SLOTS).find(|&s| s != 0 && s != holder).unwrap();
        assert!(check(From::Slot(other), &header(a11, Dtype::F64, vec![(8, 32)])).is_err());
        // Not a part at all.
        let mut task = header(a11, Dtype::F64, vec![(8, 32)]);
        task.op = BlockOp::Multiply;
        assert!(check(from, &task).is_err());
    }

    /// A slot of `plan` that uses a quadrant it does not hold, the
    /// quadrant, its holder, and the quadrant's first panel.
    fn forwarded_to(plan: &RelayPlan) -> (usize, usize, usize, PartId) {
        let roles = plan.roles;
        let (me, x) = (0..SLOTS)
            .flat_map(|me| (0..8).map(move |x| (me, x)))
            .find(|&(me, x)| roles.holders[x] as usize != me && relay::users(x).any(|(u, _)| u == me))
            .unwrap();
        let block = if x < 4 { Block::A(Quad::ALL[x]) } else { Block::B(Quad::ALL[x - 4]) };
        (me, x, roles.holders[x] as usize, PartId { block, panel: 0 })
    }

    #[test]
    fn a_slot_whose_roles_moved_here_is_fed_all_it_uses_by_the_requester() {
        let mut plan = RelayPlan::example(64, 8);
        let (me, x, holder, part) = forwarded_to(&plan);
        plan.you = me as u8;
        let first = expected_counts(&plan, me);
        assert!(may_send(&plan, me, From::Slot(holder), part));
        assert!(!may_send(&plan, me, From::Requester, part));
        plan.generation = 1;
        let moved = expected_counts(&plan, me);
        assert!(may_send(&plan, me, From::Requester, part));
        assert!(!may_send(&plan, me, From::Slot(holder), part), "nobody forwards to a moved slot");
        // What came by forward now comes from the requester; products as before.
        let panels = if x < 4 { plan.a_panels().count() } else { plan.b_panels().count() };
        assert!(moved[holder] <= first[holder] - panels, "{first:?} {moved:?}");
        assert!(moved[REQUESTER] >= first[REQUESTER] + panels, "{first:?} {moved:?}");
        assert_eq!(moved.iter().sum::<usize>(), first.iter().sum::<usize>());
        for from in (0..SLOTS).filter(|&f| f != me) {
            let products = if plan.roles.product_targets(from).contains(&me) { plan.a_panels().count() } else { 0 };
            assert_eq!(moved[from], products, "slot {from}: {first:?} {moved:?}");
        }
    }

    /// A node of slot `me` of `plan`, its links' events dropped.
    fn node(mut plan: RelayPlan, me: usize) -> Node<f64> {
        plan.you = me as u8;
        let (links, _) = mpsc::unbounded_channel();
        let peers = Arc::new(Mutex::new(Joins { joined: 0xff, generations: [0; SLOTS] }));
        let config = WorkerConfig::default();
        Node::new(Arc::new(plan), Instant::now(), config, links, Arc::new(Semaphore::new(1)), Arc::default(), peers)
    }

    fn part_data(plan: &RelayPlan, part: PartId) -> Matrix {
        Matrix::F64(Array2::zeros(plan.part_shape(part).unwrap()))
    }

    /// Gives node `n` the requester's checks of the products it is sent
    /// (`tolerance` each), and X·(Y·s) = 0 for each (the products of the
    /// tests are zeros).
    async fn give_checks(n: &mut Node<f64>, tolerance: f64, out: &mpsc::Sender<Out>) {
        let plan = n.plan.clone();
        let products = plan.checked_products(n.me);
        let checks = Event::Checks { seed: [7; 32], tolerance: vec![tolerance; products.len()] };
        n.take(checks, out).await.unwrap();
        for i in products {
            let part = PartId { block: Block::Expect(i), panel: 0 };
            let data = part_data(&plan, part);
            n.take(Event::Part { from: From::Requester, generation: 0, part, data, digest: None }, out).await.unwrap();
        }
    }

    /// `part` (zeros) from slot `from`'s `generation`, as its link brings it.
    fn from_slot(plan: &RelayPlan, from: usize, generation: u8, part: PartId) -> Event {
        Event::Part { from: From::Slot(from), generation, part, data: part_data(plan, part), digest: None }
    }

    #[tokio::test]
    async fn a_move_sets_the_old_peer_aside_and_resends_the_new_one_what_the_slot_was_owed() {
        let plan = RelayPlan::example(64, 8);
        // A slot that sends its product to another (the reducer that moves).
        let me = (0..SLOTS).find(|&s| !plan.roles.product_targets(s).is_empty()).unwrap();
        let to = plan.roles.product_targets(me)[0];
        let mut node = node(plan.clone(), me);
        let panel = PartId { block: Block::M(me), panel: 0 };
        node.send_to(to, panel, Arc::new(Array2::zeros(plan.part_shape(panel).unwrap())));
        assert_eq!(node.moved(to, "127.0.0.1:2".into(), None), None);
        assert_eq!(node.generation[to], 1);
        assert_eq!(node.peers.lock().generations[to], 1);
        assert_eq!(node.peers.lock().joined & (1 << to), 0, "the new peer may join");
        assert_eq!(node.plan.peers[to], "127.0.0.1:2");
        // Its product panel is queued for the new peer, on a new link.
        assert_eq!(node.kept[&to].len(), 1);
        assert!(node.sending.contains(&to) && node.retired.len() == 1);
        // What the old peer's links bring or say is set aside.
        assert!(node.stale(&Event::Closed { slot: to, generation: 0 }));
        assert!(!node.stale(&Event::Closed { slot: to, generation: 1 }));
        // Not itself, not a slot past the job's.
        assert!(node.moved(me, "127.0.0.1:3".into(), None).is_some());
        assert!(node.moved(SLOTS, "127.0.0.1:3".into(), None).is_some());
        // A slot moves once.
        assert!(node.moved(to, "127.0.0.1:4".into(), None).is_some_and(|why| why.contains("already")));
        assert_eq!(node.plan.peers[to], "127.0.0.1:2");
    }

    /// A reducer whose requester link takes nothing (its writer's channel
    /// full) still takes product panels and completes C panels: they wait
    /// in `c_waiting`, and the node is never held up on that link.
    #[tokio::test]
    async fn a_reducer_goes_on_while_its_requester_link_takes_no_c_panels() {
        let plan = RelayPlan::example(64, 8);
        let me = plan.roles.reducers[0] as usize;
        let mut n = node(plan.clone(), me);
        let (out, _full) = mpsc::channel(1);
        give_checks(&mut n, 1e-9, &out).await;
        out.send(Out::Reply(WorkerReply::Working)).await.unwrap();
        for panel in 0..3u32 {
            for (i, _) in relay::feeders(Quad::Q11) {
                let m = PartId { block: Block::M(i), panel };
                if i == me {
                    n.reduce(me, panel as usize, &Array2::zeros(plan.part_shape(m).unwrap()));
                    continue;
                }
                let event = from_slot(&plan, i, 0, m);
                let took = tokio::time::timeout(Duration::from_secs(5), n.take(event, &out)).await;
                assert!(took.expect("held up by the requester's link").is_ok());
            }
        }
        assert_eq!(n.c_waiting.len(), 3);
        assert!(!n.finished(), "finished with C panels still to send");
    }

    /// The requester link's writer sends an answer to a move ahead of the
    /// C panels already queued for the requester.
    #[tokio::test]
    async fn a_moves_answer_goes_ahead_of_queued_c_panels() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (client, accepted) = tokio::join!(tokio::net::TcpStream::connect(addr), listener.accept());
        let (_, write_half) = client.unwrap().into_split();
        let (read_half, _keep) = accepted.unwrap().0.into_split();
        let (tx, rx) = mpsc::channel(4);
        let (urgent_tx, urgent_rx) = mpsc::unbounded_channel();
        let plan = RelayPlan::example(64, 8);
        for panel in 0..3 {
            let part = PartId { block: Block::C(Quad::Q11), panel };
            tx.send(Out::Part(part, part_data(&plan, part))).await.unwrap();
        }
        urgent_tx.send(WorkerReply::MovedAck { slot: 2, refused: None }).unwrap();
        drop((tx, urgent_tx));
        let config = WorkerConfig::default();
        let writer = FrameWriter::new(write_half);
        assert!(write_out(writer, rx, urgent_rx, &config, &Progress::default(), Instant::now()).await);
        let mut reader = FrameReader::new(read_half, 1 << 20);
        let mut order = Vec::new();
        while let Ok(Some(frame)) = reader.read_frame().await {
            order.push(match frame {
                Frame::Control(body) => match body.decode::<WorkerReply>() {
                    Ok(WorkerReply::MovedAck { .. }) => "ack",
                    _ => "other",
                },
                Frame::Blocks(_) => "part",
            });
        }
        assert_eq!(order, ["ack", "part", "part", "part"]);
    }

    /// A reducer takes each product panel once: a feeder whose roles moved
    /// after some of its product came in sends it all again, and what came
    /// before is set aside, not folded in twice (nor taken for a repeat
    /// off the plan).
    #[tokio::test]
    async fn a_moved_feeders_product_panels_already_folded_in_are_set_aside() {
        let plan = RelayPlan::example(64, 8);
        let me = plan.roles.reducers[0] as usize;
        let feeder = relay::feeders(Quad::Q11).map(|(i, _)| i).find(|&i| i != me).unwrap();
        let mut n = node(plan.clone(), me);
        let (out, _said) = mpsc::channel(64);
        give_checks(&mut n, 1e-9, &out).await;
        let m = |panel| PartId { block: Block::M(feeder), panel };
        let part = |generation, panel| from_slot(&plan, feeder, generation, m(panel));
        let got = |n: &Node<f64>, panel: usize| n.reductions.iter().find(|r| r.quad == Quad::Q11).unwrap().got[panel];
        n.take(part(0, 0), &out).await.expect("the old peer's panel 0");
        assert_eq!(got(&n, 0), 1);
        assert_eq!(n.moved(feeder, "127.0.0.1:2".into(), None), None);
        n.take(part(1, 0), &out).await.expect("the new peer's panel 0: a repeat, set aside");
        assert_eq!(got(&n, 0), 1, "panel 0 folded in twice");
        n.take(part(1, 1), &out).await.expect("the new peer's panel 1");
        assert_eq!(got(&n, 1), 1);
        n.take(part(1, 1), &out).await.expect_err("the same generation's panel twice is off the plan");
    }

    /// A reducer folds in a product panel another slot sends only once it
    /// passes the requester's check: one that comes before the checks
    /// waits for them; one whose M·s is off is not folded in and its
    /// sender is caught (the node holds for it, saying so on evidence);
    /// the moved sender's new peer's copy is folded in instead, and what
    /// the old peer sent that passed is not folded in twice.
    #[tokio::test]
    async fn a_product_panel_that_fails_the_requesters_check_is_not_folded_in_and_its_sender_is_caught() {
        let plan = RelayPlan::example(64, 8);
        let me = plan.roles.reducers[0] as usize;
        let feeder = relay::feeders(Quad::Q11).map(|(i, _)| i).find(|&i| i != me).unwrap();
        assert!(plan.checked_products(me).contains(&feeder));
        let mut n = node(plan.clone(), me);
        let (out, mut said) = mpsc::channel(64);
        let got = |n: &Node<f64>, panel: usize| n.reductions.iter().find(|r| r.quad == Quad::Q11).unwrap().got[panel];
        let m = |panel| PartId { block: Block::M(feeder), panel };
        let wrong = |generation, panel: u32| {
            let mut data = Array2::<f64>::zeros(plan.part_shape(m(panel)).unwrap());
            data[(1, 2)] = 0.5;
            Event::Part { from: From::Slot(feeder), generation, part: m(panel), data: Matrix::F64(data), digest: None }
        };
        // Before the checks: it waits.
        n.take(from_slot(&plan, feeder, 0, m(0)), &out).await.unwrap();
        assert_eq!(got(&n, 0), 0, "folded in before it could be checked");
        give_checks(&mut n, 1e-9, &out).await;
        assert_eq!(got(&n, 0), 1, "a right panel that waited is folded in once the checks come");
        // Off by 0.5 in one element: M·s is off by at least 0.25 in that row.
        let failure = n.take(wrong(0, 1), &out).await.expect_err("a wrong panel passed");
        assert_eq!((failure.blame, failure.evidence), (Some(feeder), true));
        assert!(
            failure.message.contains("failed its check") && failure.message.contains("row 9"),
            "{}",
            failure.message
        );
        assert_eq!(got(&n, 1), 0, "a wrong panel was folded in");
        n.caught_out(failure, &out).await.unwrap();
        let lost = said.recv().await.unwrap();
        assert!(
            matches!(lost, Out::Reply(WorkerReply::RelayLost { slot, evidence: true, wrong_product: true, .. }) if slot as usize == feeder)
        );
        // Its spare's copies: panel 1 folded in, panel 0 (in already) set aside.
        assert_eq!(n.moved(feeder, "127.0.0.1:2".into(), None), None);
        n.take(from_slot(&plan, feeder, 1, m(1)), &out).await.unwrap();
        n.take(from_slot(&plan, feeder, 1, m(0)), &out).await.unwrap();
        assert_eq!((got(&n, 0), got(&n, 1)), (1, 1));
        // Where the check cannot tell (an infinite tolerance: A or B not
        // finite), a panel is folded in as it comes.
        let mut blind = node(plan.clone(), me);
        give_checks(&mut blind, f64::INFINITY, &out).await;
        blind.take(wrong(0, 0), &out).await.unwrap();
        assert_eq!(got(&blind, 0), 1);
    }

    /// A node whose link with a slot breaks says so once and holds; a move
    /// of that slot ends the hold; a break with the slot's new peer (it
    /// moved once already) fails the job at once; and a hold no move ends
    /// fails the job, blaming the slot, once the node's patience is out.
    #[tokio::test(start_paused = true)]
    async fn a_node_holds_for_a_move_when_a_link_to_another_slot_breaks() {
        let plan = RelayPlan::example(64, 8);
        let (me, lost) = (0, 1);
        let mut n = node(plan.clone(), me);
        let (out, mut said) = mpsc::channel(16);
        let broke = |generation| Event::Link { slot: lost, generation, error: "reset".into() };
        assert!(n.take(broke(0), &out).await.is_ok(), "gave up at once");
        let closed = Event::Closed { slot: lost, generation: 0 };
        assert!(n.take(closed, &out).await.is_ok());
        match said.try_recv() {
            Ok(Out::Reply(WorkerReply::RelayLost { slot, message, evidence: false, wrong_product: false })) => {
                assert_eq!(usize::from(slot), lost);
                assert!(message.contains("reset"), "{message}");
            }
            _ => panic!("no RelayLost"),
        }
        assert!(said.try_recv().is_err(), "said twice");
        assert!(n.lost[lost].is_some());
        assert_eq!(n.moved(lost, "127.0.0.1:2".into(), None), None);
        assert!(n.lost[lost].is_none(), "still holding after the move");
        let failed = n.take(broke(1), &out).await.expect_err("a second break is not held");
        assert_eq!(failed.blame, Some(lost));

        // No move comes: the job fails here, blaming the slot, after the hold.
        let n = node(plan.clone(), me);
        let hold = n.hold;
        let (inbox, inbox_rx) = mpsc::unbounded_channel();
        let (_links, links_rx) = mpsc::unbounded_channel();
        inbox.send(broke(0)).unwrap();
        let (cancel, slots) = (CancellationToken::new(), Arc::new(Semaphore::new(1)));
        let start = tokio::time::Instant::now();
        let (mut inbox_rx, mut links_rx) = (inbox_rx, links_rx);
        let mut n = n;
        let failed = n.run(&mut inbox_rx, &mut links_rx, &out, &cancel, &slots, None).await.expect_err("failed");
        assert_eq!(failed.blame, Some(lost));
        assert!(failed.message.contains("reset"), "{}", failed.message);
        assert!(start.elapsed() >= hold, "gave up after {:?}, before its patience ({hold:?})", start.elapsed());
        drop(inbox);
    }

    /// A forwarder caught by its panel's digest: the node holds for a move
    /// (saying so, on evidence) rather than give up, and the panel is not
    /// taken, so the good copy from the forwarder's new peer is used.
    #[tokio::test]
    async fn a_forwarder_caught_lying_is_held_for_and_its_spare_s_copy_used() {
        let plan = RelayPlan::example(64, 8);
        let (me, _, holder, part) = forwarded_to(&plan);
        let mut n = node(plan.clone(), me);
        let (out, mut said) = mpsc::channel(16);
        let good = Array2::<f64>::zeros(plan.part_shape(part).unwrap());
        let digest = relay::digest(good.view());
        n.take(Event::Digests(vec![(part.task_id().0, digest)]), &out).await.ok().unwrap();
        let missing = |n: &Node<f64>| (n.b_missing, n.a_missing.iter().sum::<usize>());
        let before = missing(&n);
        let bad = Array2::<f64>::ones(plan.part_shape(part).unwrap());
        let bad_digest = relay::digest(bad.view());
        let lie = Event::Part {
            from: From::Slot(holder),
            generation: 0,
            part,
            data: Matrix::F64(bad),
            digest: Some(bad_digest),
        };
        let failure = n.take(lie, &out).await.expect_err("caught");
        assert!(failure.evidence && failure.blame == Some(holder));
        assert!(n.caught_out(failure, &out).await.is_ok(), "gave up at once");
        match said.try_recv() {
            Ok(Out::Reply(WorkerReply::RelayLost { slot, evidence: true, message, wrong_product: false })) => {
                assert_eq!(usize::from(slot), holder);
                assert!(message.contains("digest"), "{message}");
            }
            _ => panic!("no RelayLost on evidence"),
        }
        assert!(!n.taken.contains(&part) && missing(&n) == before);
        assert_eq!(n.moved(holder, "127.0.0.1:2".into(), None), None);
        let copy = Event::Part {
            from: From::Slot(holder),
            generation: 1,
            part,
            data: Matrix::F64(good),
            digest: Some(digest),
        };
        n.take(copy, &out).await.ok().unwrap();
        assert_ne!(missing(&n), before, "the good copy was not used");
        // Failures without evidence against a slot are not held here.
        let other = failed("the requester sent too much");
        assert!(n.caught_out(other, &out).await.is_err());
    }

    #[tokio::test]
    async fn a_panel_the_old_peer_forwarded_is_a_repeat_from_the_new_one_not_a_fault() {
        let plan = RelayPlan::example(64, 8);
        let (me, _, holder, part) = forwarded_to(&plan);
        let mut node = node(plan.clone(), me);
        let (out, _rx) = mpsc::channel(16);
        let digest = relay::digest(Array2::<f64>::zeros(plan.part_shape(part).unwrap()).view());
        node.take(Event::Digests(vec![(part.task_id().0, digest)]), &out).await.ok().unwrap();
        let missing = |n: &Node<f64>| (n.b_missing, n.a_missing.iter().sum::<usize>());
        let before = missing(&node);
        let from_old = Event::Part {
            from: From::Slot(holder),
            generation: 0,
            part,
            data: part_data(&plan, part),
            digest: Some(digest),
        };
        node.take(from_old, &out).await.ok().unwrap();
        let used = missing(&node);
        assert_ne!(used, before);
        // A corrupt panel from the old peer, waiting for its digest.
        let next = PartId { panel: 1, ..part };
        let bad = Array2::<f64>::ones(plan.part_shape(next).unwrap());
        let bad_digest = relay::digest(bad.view());
        let corrupt = Event::Part {
            from: From::Slot(holder),
            generation: 0,
            part: next,
            data: Matrix::F64(bad),
            digest: Some(bad_digest),
        };
        node.take(corrupt, &out).await.ok().unwrap();
        assert_eq!(node.moved(holder, "127.0.0.1:2".into(), None), None);
        // Set aside by the move: the new peer's good copy is used, and the digest fails nobody.
        let good = Event::Part {
            from: From::Slot(holder),
            generation: 1,
            part: next,
            data: part_data(&plan, next),
            digest: Some(digest),
        };
        node.take(good, &out).await.ok().unwrap();
        node.take(Event::Digests(vec![(next.task_id().0, digest)]), &out).await.ok().unwrap();
        let used = missing(&node);
        assert_eq!(node.received[holder], 1);
        let from_new = |data| Event::Part { from: From::Slot(holder), generation: 1, part, data, digest: Some(digest) };
        node.take(from_new(part_data(&plan, part)), &out).await.ok().unwrap();
        assert_eq!(missing(&node), used, "used once");
        assert_eq!(node.received[holder], 2);
        // The new peer sending it twice is a fault.
        let again = node.take(from_new(part_data(&plan, part)), &out).await;
        assert!(again.is_err_and(|f| f.blame == Some(holder)));
        // And the old peer's late parts are set aside.
        let late = PartId { panel: 1, ..part };
        let old = from_slot(&plan, holder, 0, late);
        node.take(old, &out).await.ok().unwrap();
        assert_eq!(node.received[holder], 2);
    }

    #[test]
    fn a_slot_waits_for_its_requester_twice_its_silence_timeout_within_bounds() {
        let secs = Duration::from_secs;
        // The defaults: 4 s of silence, a 10 s I/O timeout.
        assert_eq!(requester_patience(4000, secs(10)), secs(10));
        assert_eq!(requester_patience(8000, secs(10)), secs(16));
        // Whatever the plan says: never past a minute, never below two
        // keep-alives' spacing.
        assert_eq!(requester_patience(u64::MAX, secs(10)), secs(60));
        assert_eq!(requester_patience(0, Duration::ZERO), relay::ALIVE_EVERY * 2);
        assert_eq!(requester_patience(0, secs(3600)), secs(60));
    }
}
