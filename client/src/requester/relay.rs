//! The requester's side of a relayed job ([`septet_common::relay`] has the
//! plan and its diagram): A and B go out once, C comes back once.
//!
//! 1. Connect to the seven slots; send each the plan and the public
//!    vectors R.
//! 2. Send B's quadrants, then A's a panel of rows at a time, each panel to
//!    its quadrant's holder only — and, just before, its BLAKE3 digest to
//!    every other slot that will receive it by forward.
//! 3. Take the C panels the reducers send back and place them in C as they
//!    arrive; take each product's fingerprint M·R.
//!
//! Trust. R is public (the slots need it to form their fingerprints), so a
//! fingerprint only catches a slot that does not fake it; what makes C
//! right is the check of each C quadrant with vectors no slot ever sees:
//! the requester draws 2·rounds columns, sends the first half, and checks
//! every C quadrant q against Σ ±X_i·(Y_i·r) over the products feeding it
//! for all the columns (the [`Verifier`] forms X_i·(Y_i·r) from A and B
//! while the blocks travel) — Freivalds' test on C, quadrant by quadrant.
//! Each reducer also checks every product panel another slot sends it
//! before folding it in, against X_i·(Y_i·s) for a vector s of its own
//! (one more column of the same pass; only its seed goes to that reducer,
//! [`slot_checks`]): a slot that computes wrong is caught at its first
//! panel, by a vector it never sees, and its roles move to a spare within
//! the relay like a lying forwarder's. A quadrant that fails is blamed on
//! the slots whose fingerprints failed, or, if every one passed, on its
//! reducer (a reducer's own product is checked only by its fingerprint and
//! the quadrant's check; C is never accepted wrong). A slot that forwards
//! a wrong panel is named by the slot that received it (digest), a slot
//! that breaks off or goes silent by whoever saw it.
//!
//! Whatever fails, the job goes on: the quadrants of C that arrived and
//! passed are kept, and the caller computes the others through the direct
//! plan (`dispatch`), on the lease's peers that were not blamed.
//!
//! Slow slots (where the lease can lend a spare): a slot that takes its
//! panels far slower than the others ([`slow_feed`]), or, by the slots'
//! progress reports, takes the forwards of a quadrant of B far slower
//! than the other slots that need it ([`slow_receiver`]), or forwards one
//! to all of them far slower than it took it ([`slow_sender`]), or whose
//! product is far behind ([`slow_product`]), is replaced: the job is
//! relayed again with a spare in its place.

use std::collections::HashMap;
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ndarray::{s, Array2, ArrayView2};
use parking_lot::Mutex;
use rand::RngExt;
use septet_common::conn::{Admit, ConnLimits, SendInfo};
use septet_common::frame::{BlockOp, BlocksHeader};
use septet_common::matrix::matmul_into;
use septet_common::proto::{sanitized, Delegated, JobId, PeerAddr, RelayStats, WorkerReply, WorkerRequest};
use septet_common::relay::{self, Block, Panels, PartId, RelayPlan, Roles, SLOTS};
use septet_common::strassen::{quadrant, Quad, Split};
use septet_common::{deadline, Connection, Element, Error, Frame, FrameReader, FrameWriter, Role};
use serde::Serialize;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use super::{ProgressFn, Requester};
use crate::store::Store;
use crate::verify::{compare, Compare, NonFinite, Verifier};

/// How long the relay listens for more failure reports after the first.
const SETTLE: Duration = Duration::from_millis(300);
/// A slot that lost its link with another holds for a move: the requester
/// waits its own silence timeout, and this much more, for its own link to
/// the other to fail too (then the other moves) before it takes the lost
/// link for a failure that ends the relay.
const SUSPECT_SLACK: Duration = Duration::from_secs(1);
/// A slot whose host has acknowledged nothing the requester sent it for
/// this long (and twenty round trips), with the same segments waiting all
/// along, is lost at once, not after the silence timeout: a live host's
/// kernel acknowledges what arrives however busy its process
/// ([`SendInfo::unreachable`]). Two seconds outlast three losses in a
/// row of one segment (retransmitted after 0.2, 0.4 and 0.8 s).
const UNREACHED: Duration = Duration::from_secs(2);
/// How often the gather loop asks the kernel whether the slots' hosts
/// still answer.
const REACH_TICK: Duration = Duration::from_millis(250);
/// A slot whose link takes the requester's parts at less than 1/this of
/// the median pace of the others' is slow ...
const SLOW_FEED_FACTOR: f64 = 3.0;
/// ... judged once its parts have been going out for this long (and as
/// long as the feeds already done took) ...
const FEED_OBSERVED: Duration = Duration::from_millis(250);
/// ... or for only this long where the kernel times the round trips of it
/// and of three or more others: its round trip then tells a slow link of
/// its own from a queue it shares with them (see [`slow_feed`]).
const FEED_OBSERVED_TIMED: Duration = Duration::from_millis(120);
/// ... and only while what it still has to take would need this long.
const FEED_MARGIN: Duration = Duration::from_millis(300);
/// A slot that has computed at most 1/this of its product's panels while
/// the others have computed all of theirs is slow ([`slow_product`]).
const SLOW_PRODUCT_FACTOR: usize = 4;
/// A slot that takes a quadrant of B by forward at 1/this of the pace of
/// another that needs it is slow ([`slow_receiver`]) ...
const SLOW_RECEIVE_FACTOR: f64 = 4.0;
/// ... once this long has passed since the first panel reached any of
/// them (a link that opened late takes what it missed at once).
const RECEIVE_OBSERVED: Duration = Duration::from_millis(200);
/// A slot's last progress report older than this (by its own clock) when
/// a rule reads it says nothing of how it computes now: its link held it
/// back, or it has sent none since ([`SlotProgress::as_of`]).
const PROGRESS_FRESH: Duration = Duration::from_millis(300);
/// A slot slow to compute ([`slow_product`]) has had half its product's
/// operands in for at least this long, by its own reports.
const OPERANDS_SETTLED: Duration = Duration::from_millis(300);
/// A slot's panels have begun to go out once its socket took this much.
const FEED_STARTED: u64 = 64 << 10;
/// How often the gather loop looks at the feeds.
const FEED_TICK: Duration = Duration::from_millis(50);
/// How much longer than the others' round trip a slow feed's must be: its
/// flow queues behind a slow link of its own, not only behind the
/// requester's (see [`slow_feed`]).
const SLOW_RTT_FACTOR: f64 = 2.0;

/// What the job report shows of one slot of a relayed job.
#[derive(Debug, Clone, Serialize)]
pub struct SlotReport {
    /// The slot (0..7); it computed `product`.
    pub slot: usize,
    /// "M1".."M7".
    pub product: &'static str,
    /// The peer.
    #[serde(serialize_with = "PeerAddr::without_ticket")]
    pub peer: PeerAddr,
    /// Quadrants of A and B it held and forwarded.
    pub holds: Vec<String>,
    /// Quadrants of C it reduced.
    pub reduces: Vec<String>,
    /// Bytes it received, from the requester and from other slots.
    pub bytes_in: u64,
    /// Bytes it sent, to other slots and to the requester.
    pub bytes_out: u64,
    /// Bytes the requester sent it.
    pub from_requester: u64,
    /// Bytes it sent the requester.
    pub to_requester: u64,
    /// Seconds it computed.
    pub compute_s: f64,
    /// Seconds since the start of the job (its plan was sent at
    /// `plan_sent_s`, or a spare's at `moved.at_s`; the slot's own clock
    /// runs from its arrival): its
    /// last operand panel arrived, it began and ended computing, it sent
    /// its first C panel, it was done. `None`: it did not get there.
    pub inputs_done_s: Option<f64>,
    /// Began computing.
    pub compute_start_s: Option<f64>,
    /// Ended computing.
    pub compute_end_s: Option<f64>,
    /// Sent its first C panel.
    pub reduce_start_s: Option<f64>,
    /// Done.
    pub done_s: Option<f64>,
    /// A job two levels deep: how the slot had its product computed by
    /// seven peers of its own (product j of its split is "M3.5" for slot
    /// 2's sub-slot 4).
    pub delegated: Option<septet_common::proto::Delegated>,
}

/// What the relay phase of a job did.
#[derive(Debug, Clone, Serialize)]
pub struct RelayReport {
    /// Rows per panel of A (and of the products and C), and of B.
    pub a_panel_rows: usize,
    /// Rows per panel of B.
    pub b_panel_rows: usize,
    /// When the plans went out, seconds since the job started.
    pub plan_sent_s: f64,
    /// C11..C22 that arrived and passed their check.
    pub quadrants_verified: Vec<String>,
    /// The slots, in slot order.
    pub slots: Vec<SlotReport>,
    /// Why the relay did not deliver all of C, if it did not.
    pub failure: Option<String>,
    /// A slow or lost slot whose roles moved to a spare mid-relay (`slots` shows
    /// the spare in its place).
    pub moved: Option<MovedSlot>,
}

/// A slot whose roles moved to a spare mid-relay.
#[derive(Debug, Clone, Serialize)]
pub struct MovedSlot {
    /// The slot (0..7).
    pub slot: usize,
    /// Its product, "M1".."M7".
    pub product: &'static str,
    /// The slow or lost peer.
    #[serde(serialize_with = "PeerAddr::without_ticket")]
    pub from: PeerAddr,
    /// The spare.
    #[serde(serialize_with = "PeerAddr::without_ticket")]
    pub to: PeerAddr,
    /// Why it moved: "slow: …", "lost: …" or "caught: …".
    pub reason: String,
    /// When the other slots were told of the move, seconds since the job
    /// started.
    pub named_s: f64,
    /// When they had all taken it and the spare was handed the slot's
    /// plan.
    pub at_s: f64,
    /// Bytes the requester had sent the slow peer (the slot's row in
    /// `slots` counts the spare's).
    pub from_requester: u64,
    /// The peer failed, not slow: its link to the requester broke or fell
    /// silent, or another slot caught it sending what it should not.
    pub lost: bool,
}

/// The outcome of the relay phase.
pub(super) struct Outcome {
    /// C quadrants in C and verified.
    pub verified: [bool; 4],
    /// Slots at fault, with why.
    pub blamed: Vec<(usize, String)>,
    /// Non-finite values made a check meaningless: the job stops.
    pub unverifiable: Option<(usize, NonFinite)>,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    /// Seconds preparing the check (beside the transfers) and checking.
    pub verify_s: f64,
    /// Seconds of checking after C was in.
    pub verify_critical_s: f64,
    pub report: RelayReport,
    /// The relay ended because this slot was slow (its link, or its
    /// product), and nobody else is to blame: the job can relay again with
    /// the slot the tracker lent the lease for it in its place.
    pub slow: Option<(usize, PeerAddr)>,
}

/// What the reader of one slot's link hears.
enum Heard {
    Part(usize, PartId, septet_common::Matrix),
    Done(usize, RelayStats),
    /// The slot gave up: whom it blames, why, and whether on evidence.
    Failed(usize, Option<u8>, String, bool),
    Lost(usize, String),
    /// The slot sent a part off the plan, refused from its header.
    OffPlan(usize, String),
    /// The slot's progress report: panels with operands in, computed,
    /// arrived of each quadrant, and when (microseconds since it received
    /// the plan).
    Progress(usize, u32, u32, [u32; 8], u64),
    /// Sending to the slot failed. Its reader has the last word: the slot
    /// may have closed after saying why it gave up (blaming another), and
    /// the reader ends either way.
    WriteFailed(usize, String),
    /// Every part for the slot is written.
    Written(usize),
    /// The slot (first) took slot (second)'s move to a spare, or refused
    /// it, saying why ([`WorkerReply::MovedAck`]).
    MovedAck(usize, usize, Option<String>),
    /// The slot (first) lost its link with slot (second), or caught it
    /// (on evidence, the fourth field; by a panel of its product, the
    /// fifth), saying how, and holds for a move
    /// ([`WorkerReply::RelayLost`]).
    PeerLost(usize, usize, String, bool, bool),
}

impl Heard {
    /// The slot whose link said it.
    fn slot(&self) -> usize {
        match *self {
            Heard::Part(s, ..)
            | Heard::Done(s, _)
            | Heard::Failed(s, ..)
            | Heard::Lost(s, _)
            | Heard::OffPlan(s, _)
            | Heard::Progress(s, ..)
            | Heard::WriteFailed(s, _)
            | Heard::Written(s)
            | Heard::MovedAck(s, ..)
            | Heard::PeerLost(s, ..) => s,
        }
    }
}

/// What a slot's writer sends.
enum Send {
    Part(PartId),
    Digests(Vec<(u64, [u8; 32])>),
}

/// The padded panel `rows` of quadrant `q` of `x` (a quadrant is
/// `shape`, padded with zeros past the edge of `x`).
fn padded_panel<T: Element>(
    x: ArrayView2<'_, T>,
    q: Quad,
    shape: (usize, usize),
    rows: std::ops::Range<usize>,
) -> septet_common::strassen::Operand<'_, T> {
    let real = quadrant(x, q, shape.0, shape.1);
    let (r, c) = real.dim();
    if rows.end <= r && c == shape.1 {
        return septet_common::strassen::Operand::View(real.slice_move(s![rows, ..]));
    }
    let mut out = Array2::zeros((rows.len(), shape.1));
    if rows.start < r {
        let have = rows.start..rows.end.min(r);
        out.slice_mut(s![..have.len(), ..c]).assign(&real.slice(s![have, ..]));
    }
    septet_common::strassen::Operand::Owned(out)
}

/// The operand panel a part names.
fn part_of<'a, T: Element>(
    a: &'a Store<T>,
    b: &'a Store<T>,
    split: Split,
    plan: &RelayPlan,
    part: PartId,
) -> septet_common::strassen::Operand<'a, T> {
    match part.block {
        Block::A(q) => padded_panel(a.view(), q, split.left_shape(), plan.a_panels().range(part.panel as usize)),
        _ => {
            let Block::B(q) = part.block else { unreachable!("only quadrants of A and B are sent") };
            padded_panel(b.view(), q, split.right_shape(), plan.b_panels().range(part.panel as usize))
        }
    }
}

/// The order parts leave the requester: B whole first (no product can
/// start without it), then A a panel of rows at a time, all four
/// quadrants' panel p before any panel p+1.
fn send_order(a_panels: Panels, b_panels: Panels) -> Vec<PartId> {
    let mut order = Vec::new();
    for p in 0..b_panels.count() {
        for q in Quad::ALL {
            order.push(PartId { block: Block::B(q), panel: p as u32 });
        }
    }
    for p in 0..a_panels.count() {
        for q in Quad::ALL {
            order.push(PartId { block: Block::A(q), panel: p as u32 });
        }
    }
    order
}

/// Runs the relay phase of A·B on the lease's seven `peers`, writing C's
/// quadrants into `c` as they arrive. `groups` empty: each slot computes
/// its product; otherwise (two levels) slot i has its product computed by
/// the seven peers `groups[i]`. `hedge`: the lease's keeper, to watch the
/// feeds with: a slot that takes its panels far slower than the others
/// ([`slow_feed`]) ends the relay at once if the tracker lends a slot in
/// its place ([`Outcome::slow`]); with none free the relay goes on, as
/// if nothing had been seen (ending it would only push every product onto
/// the direct fallback, and on a slow requester link TCP's unfairness can
/// make a healthy slot look slow).
#[allow(clippy::too_many_arguments)]
pub(super) async fn run<T: Element>(
    requester: &Requester,
    a: Arc<Store<T>>,
    b: Arc<Store<T>>,
    c: &Mutex<Store<T>>,
    split: Split,
    peers: &[PeerAddr; 7],
    groups: &[[PeerAddr; 7]],
    started: Instant,
    progress: &ProgressFn,
    hedge: Option<&super::LeaseKeeper>,
) -> Outcome {
    let config = &requester.config;
    let (mh, kh, nh) = split.half();
    let rounds = config.verify_rounds.max(1);
    let roles = Roles::choose(split);
    let a_panels = Panels::choose(mh, kh.max(nh), T::DTYPE);
    let b_panels = Panels::choose(kh, nh, T::DTYPE);
    let job_id = JobId(rand::rng().random());
    // R: the first `rounds` columns are sent to the slots, the next
    // `rounds` never leave, and the last are each quadrant's reducer's
    // secret vector s, which only that reducer is given (as the seed it is
    // formed from), to check the products it is sent (`slot_checks`).
    let seeds: [[u8; 32]; 4] = std::array::from_fn(|_| rand::rng().random());
    let r_all = {
        let mut columns = vec![Verifier::<T>::draw(split, 2 * rounds)];
        columns.extend(seeds.iter().map(|seed| relay::key::<T>(seed, nh)));
        let views: Vec<_> = columns.iter().map(|c| c.view()).collect();
        ndarray::concatenate(ndarray::Axis(1), &views).expect("columns of one height")
    };
    let r_pub = r_all.slice(s![.., ..rounds]).to_owned();
    let plan_for = |you: usize| RelayPlan {
        job_id,
        dtype: T::DTYPE,
        m: split.m as u64,
        k: split.k as u64,
        n: split.n as u64,
        a_panel: a_panels.per as u64,
        b_panel: b_panels.per as u64,
        rounds: rounds as u32,
        peers: peers.iter().map(|p| p.addr.clone()).collect(),
        roles,
        you: you as u8,
        tickets: peers.iter().map(|p| p.ticket.clone()).collect(),
        delegate: groups.get(you).map(|g| g.to_vec()).unwrap_or_default(),
        silence_ms: config.silence_timeout.as_millis() as u64,
        generation: 0,
        done: 0,
        checks: config.verify,
    };
    let plan = Arc::new(plan_for(0));
    let verifier = if config.verify {
        let (a, b, r) = (a.clone(), b.clone(), r_all.clone());
        Some(tokio::task::spawn_blocking(move || {
            let t = Instant::now();
            Verifier::with_vectors(a.view(), b.view(), split, r).map(|v| (v, t.elapsed()))
        }))
    } else {
        None
    };
    let mut report = RelayReport {
        a_panel_rows: a_panels.per,
        b_panel_rows: b_panels.per,
        plan_sent_s: 0.0,
        quadrants_verified: Vec::new(),
        slots: Vec::new(),
        failure: None,
        moved: None,
    };
    let mut outcome = Outcome {
        verified: [false; 4],
        blamed: Vec::new(),
        unverifiable: None,
        bytes_sent: 0,
        bytes_received: 0,
        verify_s: 0.0,
        verify_critical_s: 0.0,
        report: report.clone(),
        slow: None,
    };
    let c_part_len = relay::part_frame_len(T::DTYPE, (a_panels.per, nh));
    let limits = ConnLimits {
        max_frame_len: (c_part_len as usize).max((mh * rounds * T::DTYPE.size()) + 1024).max(1 << 20),
        handshake_timeout: config.silence_timeout.min(config.io_timeout),
        stall_timeout: Some(config.silence_timeout.min(config.io_timeout)),
        idle_timeout: Some(config.silence_timeout),
        security: config.security.clone(),
        budget: None,
    };

    // 1. Connect and hand out the plan and R, to all seven at once.
    // (Each slot's clock, in its progress reports, starts when its plan
    // arrives: after this.)
    let plans_from = tokio::time::Instant::now();
    let r_pub = Arc::new(r_pub);
    let mut connecting = tokio::task::JoinSet::new();
    for (slot, peer) in peers.iter().enumerate() {
        let (limits, plan, r_pub, addr) = (limits.clone(), plan_for(slot), r_pub.clone(), peer.addr.clone());
        let ticket = peer.ticket.clone();
        connecting.spawn(async move {
            let conn = async {
                let mut conn = Connection::connect(&addr, Role::Client, limits)
                    .await
                    .map_err(|e| e.naming(|| format!("the worker at {addr}")))?;
                let meter = Arc::new(AtomicU64::new(0));
                conn.writer.set_meter(Some(meter.clone()));
                // A second descriptor of the socket, to ask the kernel how
                // much of what was written the slot has taken (dropped
                // before the links are closed, so it never holds one open).
                let fd = conn.writer.get_ref().as_ref().as_fd().try_clone_to_owned().ok();
                super::present(&mut conn.writer, ticket).await?;
                conn.writer.send(&WorkerRequest::Relay(plan)).await?;
                let part = PartId { block: Block::Vectors, panel: 0 };
                conn.writer.send_blocks(part.task_id(), BlockOp::Part, &[T::view(r_pub.view())]).await?;
                Ok::<_, Error>((conn, meter, fd))
            };
            (slot, conn.await)
        });
    }
    let connected = deadline(config.io_timeout, "the slots to take their plans", async {
        let mut out: Vec<Option<Result<_, Error>>> = (0..SLOTS).map(|_| None).collect();
        while let Some(done) = connecting.join_next().await {
            let (slot, result) = done.map_err(|e| Error::Invalid(format!("handing out a plan panicked: {e}")))?;
            out[slot] = Some(result);
        }
        Ok::<_, Error>(out.into_iter().map(|o| o.expect("every slot answered")).collect::<Vec<_>>())
    })
    .await;
    report.plan_sent_s = started.elapsed().as_secs_f64();
    let connected = match connected {
        Ok(c) => c,
        Err(e) => {
            outcome.report = RelayReport { failure: Some(format!("handing out the plan: {e}")), ..report };
            return outcome;
        }
    };
    let mut writers = Vec::new();
    let mut readers = Vec::new();
    let mut meters = Vec::new();
    let mut fds = Vec::new();
    for (slot, result) in connected.into_iter().enumerate() {
        match result {
            Ok((conn, meter, fd)) => {
                readers.push(Some(conn.reader));
                writers.push(Some(conn.writer));
                meters.push(meter);
                fds.push(fd);
            }
            Err(e) => {
                warn!(slot, peer = %peers[slot].addr, error = %e, "a slot could not take its plan");
                outcome.blamed.push((slot, format!("could not take its plan: {e}")));
            }
        }
    }
    if !outcome.blamed.is_empty() {
        outcome.report = RelayReport { failure: Some("a slot could not take its plan".into()), ..report };
        return outcome;
    }
    let reducers: Vec<String> = Quad::ALL
        .iter()
        .map(|q| {
            let slot = roles.reducers[q.index()] as usize;
            format!("C{}=slot{slot}@{}", q.suffix(), peers[slot].addr)
        })
        .collect();
    info!(%job_id, a_panel = a_panels.per, b_panel = b_panels.per, reducers = %reducers.join(" "), "relay: plans out");

    // What each slot is to be sent (its quadrants' panels), and what its
    // link had taken before them: the gather loop watches the rest go.
    let mut held = [0u64; SLOTS];
    for part in send_order(a_panels, b_panels) {
        let x = part.block.input_index().expect("only quadrants are sent");
        let shape = plan.part_shape(part).expect("the plan's own parts");
        held[roles.holders[x] as usize] += relay::part_frame_len(T::DTYPE, shape);
    }
    // What reached the slot, as its acknowledgements say (else what was
    // written to its socket: that also counts what waits in the socket's
    // buffers, megabytes that hide a slow link for a while).
    let info = |s: usize| fds[s].as_ref().and_then(|fd| septet_common::conn::send_info(fd.as_fd()));
    let delivered =
        |s: usize, info: Option<SendInfo>| info.map_or_else(|| meters[s].load(Ordering::Relaxed), |i| i.bytes_acked);
    let base: Vec<u64> = (0..SLOTS).map(|s| delivered(s, info(s))).collect();
    let base_written: Vec<u64> = meters.iter().map(|m| m.load(Ordering::Relaxed)).collect();

    // 2. The writers, and the sequencer that feeds them in send order.
    // What a slot's link says, with the slot's generation: what the old
    // peer of a slot whose roles moved still says is set aside.
    let (heard_tx, mut heard_rx) = mpsc::unbounded_channel::<(u8, Heard)>();
    let mut send_txs = Vec::new();
    // Each slot's control messages (`Moved`), and its link's tasks.
    let mut ctl_txs: Vec<mpsc::UnboundedSender<Ctl<T>>> = Vec::new();
    let mut links: Vec<Vec<tokio::task::AbortHandle>> = vec![Vec::new(); SLOTS];
    let mut tasks = tokio::task::JoinSet::new();
    for (slot, writer) in writers.into_iter().enumerate() {
        let (tx, rx) = mpsc::channel::<Send>(2);
        send_txs.push(tx);
        let (ctl_tx, ctl_rx) = mpsc::unbounded_channel();
        ctl_txs.push(ctl_tx);
        let writer = writer.expect("every slot connected");
        let feed = Feeding { slot, generation: 0, a: a.clone(), b: b.clone(), split, plan: plan.clone() };
        links[slot].push(tasks.spawn(feed_slot(feed, writer, rx, ctl_rx, config.io_timeout, heard_tx.clone())));
    }
    let (sent_tx, mut sent_rx) = tokio::sync::oneshot::channel::<tokio::time::Instant>();
    {
        let (a, b, plan) = (a.clone(), b.clone(), plan.clone());
        let order = send_order(a_panels, b_panels);
        tokio::task::spawn_blocking(move || {
            // In send order, but never held up by one slot: what a slot's
            // writer cannot take yet waits in that slot's backlog (its own
            // order kept) while the others' parts go on.
            let mut backlog: Vec<std::collections::VecDeque<Send>> = (0..SLOTS).map(|_| Default::default()).collect();
            // A writer that closed: its slot's roles moved (the new peer is
            // fed apart), or the relay is over (all closed).
            let mut closed = [false; SLOTS];
            let mut flush = |backlog: &mut Vec<std::collections::VecDeque<Send>>| -> Result<bool, ()> {
                let mut moved = false;
                for (slot, queue) in backlog.iter_mut().enumerate() {
                    while let Some(next) = queue.pop_front() {
                        match send_txs[slot].try_send(next) {
                            Ok(()) => moved = true,
                            Err(mpsc::error::TrySendError::Full(back)) => {
                                queue.push_front(back);
                                break;
                            }
                            Err(mpsc::error::TrySendError::Closed(_)) => {
                                closed[slot] = true;
                                queue.clear();
                            }
                        }
                    }
                }
                if closed.iter().all(|&c| c) {
                    return Err(());
                }
                Ok(moved)
            };
            for part in order {
                let x = part.block.input_index().expect("only quadrants are sent");
                let holder = plan.roles.holders[x] as usize;
                let digest = relay::digest(part_of(&a, &b, split, &plan, part).view());
                for (user, _) in relay::users(x) {
                    if user != holder {
                        backlog[user].push_back(Send::Digests(vec![(part.task_id().0, digest)]));
                    }
                }
                backlog[holder].push_back(Send::Part(part));
                // Pace: go on once this part is with its writer — or at
                // once if every other writer has nothing queued, so that a
                // slow holder does not leave the requester's link idle.
                loop {
                    if flush(&mut backlog).is_err() {
                        return;
                    }
                    if !backlog[holder].iter().any(|m| matches!(m, Send::Part(_))) {
                        break;
                    }
                    let others_idle = (0..SLOTS)
                        .filter(|&s| s != holder)
                        .all(|s| backlog[s].is_empty() && send_txs[s].capacity() == send_txs[s].max_capacity());
                    if others_idle {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
            // Every part has been handed to a writer or waits behind a slow one.
            let _ = sent_tx.send(tokio::time::Instant::now());
            while backlog.iter().any(|q| !q.is_empty()) {
                match flush(&mut backlog) {
                    Err(()) => return,
                    Ok(true) => {}
                    Ok(false) => std::thread::sleep(Duration::from_millis(1)),
                }
            }
        });
    }

    // 3. The readers.
    let received = Arc::new(AtomicU64::new(0));
    for (slot, reader) in readers.into_iter().enumerate() {
        let reader = reader.expect("every slot connected");
        let (heard, received, plan) = (heard_tx.clone(), received.clone(), plan.clone());
        links[slot].push(tasks.spawn(read_slot::<T>(slot, 0, reader, plan, heard, received)));
    }
    // (`heard_tx` stays: a spare taking a slow slot's roles gets links too.)

    // 4. Gather C.
    let mut gather = Gather::<T>::new(&plan, split, r_all.slice(s![.., ..2 * rounds]).to_owned());
    // Each slot's checks of the products it is sent, once formed (and
    // sent; a spare taking a slot's roles is sent the slot's).
    let mut checks: Option<Vec<Option<Arc<SlotChecks<T>>>>> = None;
    let limit = relay_deadline(requester, split);
    let until = tokio::time::Instant::now() + limit;
    let mut stats: Vec<Option<RelayStats>> = vec![None; SLOTS];
    let mut failure: Option<String> = None;
    let mut grace: Option<tokio::time::Instant> = None;
    // Failures heard (blamed slot, summary, why, on evidence), and when
    // to stop listening for more.
    let mut reports: Vec<Report> = Vec::new();
    // Slots caught sending off the plan: one report each, whatever else
    // they send (a flood of bad parts must not flood the reports).
    let mut caught = [false; SLOTS];
    let mut settle: Option<tokio::time::Instant> = None;
    // Once A and B are out, C is due within twice the time they took plus
    // the silence timeout plus a product's work at the slowest rate
    // allowed (a job whose products take longer than its blocks take to
    // send — large n, or peers on one host — is not cut short by it): a
    // slot that computes or forwards far slower than the rest (it still
    // talks, so silence does not catch it) then costs that, not the whole
    // relay deadline; its quadrants go the direct way. Once two quadrants
    // are in, `quads_due` sets a much nearer due time for the rest.
    let plan_sent = tokio::time::Instant::now();
    let mut sent_at: Option<tokio::time::Instant> = None;
    let work = requester.product_deadline(split).saturating_sub(config.io_timeout);
    let due_after = |at: tokio::time::Instant| c_due(at, at - plan_sent, config.silence_timeout + work);
    // Each slot's panels: when the first began to go out, when all had
    // reached it.
    let mut first_out: [Option<tokio::time::Instant>; SLOTS] = [None; SLOTS];
    let mut fed_at: [Option<tokio::time::Instant>; SLOTS] = [None; SLOTS];
    let mut slow: Option<(usize, PeerAddr)> = None;
    let mut watching = hedge.is_some();
    // (A slot that delegates has its product back whole, at the end: its
    // progress says nothing before.)
    let mut watching_products = hedge.is_some() && groups.is_empty();
    let mut progress_of: [Option<SlotProgress>; SLOTS] = [None; SLOTS];
    let b_panels = gather.plan.b_panels().count();
    let mut feed_tick = tokio::time::interval(FEED_TICK);
    feed_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut reach_tick = tokio::time::interval(REACH_TICK);
    reach_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Slots (of their present generation) already heard lost: once each.
    let mut lost_heard = [false; SLOTS];
    // Since when segments have waited on each slot's link with its
    // acknowledged bytes unchanged (what they were then).
    let mut unanswered: [Option<(tokio::time::Instant, u64)>; SLOTS] = [None; SLOTS];
    // The slot each slot has accused on evidence: one a relay, so that a
    // lying slot cannot get every other one replaced and reported.
    let mut accused: [Option<usize>; SLOTS] = [None; SLOTS];
    // A slot named slow or lost, with the spare lent for it.
    let mut named: Option<Named> = None;
    // Slots another slot lost its link with, while the requester's own
    // link to them still holds: the failure reported, if the requester's
    // link does not fail (then the slot moves, to the spare lent for it
    // already) by when it is due.
    let mut suspects: [Option<(tokio::time::Instant, Report, PeerAddr)>; SLOTS] = Default::default();
    // Each slot's generation: 1 once its roles moved (what its old peer
    // says from then on is set aside).
    let mut generation = [0u8; SLOTS];
    let mut moving: Option<Moving> = None;
    let mut moved: Option<MovedSlot> = None;
    // A slot caught with no spare lent, waiting for a slot of the job to be
    // done, whose peer then takes its roles.
    let mut awaiting: Option<Awaiting> = None;
    let mut peers_now = peers.clone();
    // A slow product with no spare lent and no slot done yet ([`slow_product`]).
    let mut slow_waiting: Option<(usize, String)> = None;
    let mut spare_meter: Option<Arc<AtomicU64>> = None;
    // When the sequencer had handed out every part, and whether a spare
    // is still being fed: A and B are out once both are done.
    let mut seq_sent: Option<tokio::time::Instant> = None;
    let mut spare_feeding = false;
    let mut named_at = 0.0;
    // The check prepared (`verifier`, once it is done), and the quadrants
    // looked at with it during the relay.
    let mut verifier = verifier;
    let mut prepared = None;
    let mut checked = [false; 4];
    loop {
        // A quadrant in, with its feeders' fingerprints, is checked at
        // once: one that fails by its reducer's sum alone (every product
        // in it as fingerprinted) has the reducer's roles move to a spare,
        // as a slot caught lying does — the slots feeding it still keep
        // their product panels — and the quadrant comes again from the
        // spare. (Any other failure is left to the check after the relay.)
        if let (Some(Ok(Ok((v, _)))), Some(_)) = (&prepared, hedge) {
            for q in Quad::ALL {
                let (qi, reducer) = (q.index(), plan.roles.reducers[q.index()] as usize);
                let fingerprinted = relay::feeders(q).all(|(i, _)| gather.fingerprints.contains_key(&i));
                if checked[qi] || !matches!(gather.quads[qi], QuadState::In { .. }) || !fingerprinted {
                    continue;
                }
                checked[qi] = true;
                let Err(Check::Wrong(why)) = gather.check(q, v) else { continue };
                // (Not `may_move`: C may be all in here, and the quadrant
                // is redone.)
                let free = nothing_under_way(&reports, &named, &moving, &moved, &slow, &awaiting)
                    && gather.generation[reducer] == 0;
                if !free || culprits(q, reducer, None, |i| gather.fingerprint_wrong(i, v, rounds)) != [reducer] {
                    continue;
                }
                let why = format!("C{} failed its check: {why}", q.suffix());
                warn!(slot = reducer, %why, "relay: a reducer summed wrong");
                if let Some(spare) = spare_for(hedge, peers, reducer, &why).await {
                    // (Its other quadrant too, if it reduces two and that one is wrong.)
                    for other in Quad::ALL.into_iter().filter(|o| plan.roles.reducers[o.index()] as usize == reducer) {
                        if other == q || gather.check(other, v).is_err() {
                            checked[other.index()] = true;
                            gather.redo(other);
                        }
                    }
                    // C is not all in any more: no grace for the last stats.
                    grace = None;
                    named = Some(Named { slot: reducer, why, spare, movable: true, kind: Kind::Caught });
                }
            }
        }
        // (One hedge a relay: a naming while a move is under way, or after
        // one, is set aside.)
        if let Some(Named { slot, why, spare, movable, kind }) =
            named.take().filter(|_| moving.is_none() && moved.is_none())
        {
            let now = tokio::time::Instant::now();
            // Every other slot, done or not, takes the move: a slot done
            // keeps the product panels it sent the slot, for the spare.
            suspects[slot] = None;
            if movable && gather.may_move(slot) {
                let (addr, ticket) = (spare.addr.clone(), spare.ticket.clone());
                for (_, ctl) in ctl_txs.iter().enumerate().filter(|&(j, _)| j != slot) {
                    let moved = WorkerRequest::Moved { slot: slot as u8, addr: addr.clone(), ticket: ticket.clone() };
                    let _ = ctl.send(Ctl::Say(moved));
                }
                generation[slot] += 1;
                (watching, watching_products) = (false, false);
                named_at = started.elapsed().as_secs_f64();
                info!(slot, kind = kind.name(), peer = %peers[slot].addr, spare = %spare.addr, "relay: moving a slot's roles to a spare");
                moving = Some(Moving {
                    slot,
                    spare,
                    why,
                    kind,
                    acks: [false; SLOTS],
                    until: now + MOVE_PATIENCE.max(config.silence_timeout),
                });
            } else if kind != Kind::Slow {
                // As any failure: the relay ends, and what is missing is
                // computed the direct way.
                reports.push(Report::lost(slot, why, kind == Kind::Caught));
                // (Other slots' words on it may still come: hear them.)
                settle.get_or_insert(now + SETTLE);
            } else if peers_now.contains(&spare) {
                // A slow slot that cannot move, and its spare the peer of a
                // slot done: that peer holds a slot of the job already, so
                // the job is not relayed again with it. The slow slot goes
                // on (the overdue rule still ends the relay if it must).
                info!(slot, spare = %spare.addr, "relay: the slow slot cannot move; it stays");
            } else {
                reports.push(Report::slow(slot, &why));
                // Seen here, not reported by a slot: no other word to wait for.
                settle = Some(now);
                slow = Some((slot, spare));
            }
        }
        let complete = gather.quads.iter().all(|q| !q.arriving());
        if complete && stats.iter().all(Option::is_some) {
            // (The check was prepared before any of C could be: the
            // reducers fold nothing in before their checks, which go out
            // when it is.)
            break;
        }
        if complete && grace.is_none() {
            // C is in: the rest of the slots' stats and fingerprints come
            // within moments, or not at all.
            grace = Some(tokio::time::Instant::now() + Duration::from_secs(1));
        }
        // Once two quadrants are in, the others are due too (see `quads_due`)
        // — but not once a slot moved: its spare is fed from the move on,
        // and the quadrants it reduces or feeds come that much later (the
        // due time after A and B are out, the spare's feed included, holds).
        let behind = if moving.is_none() && moved.is_none() && awaiting.is_none() {
            quads_due(plan_sent, &gather.quads)
        } else {
            None
        };
        let due = [sent_at.map(due_after), behind].into_iter().flatten().min();
        let wait_until = settle.or(grace).or(due).map_or(until, |g| g.min(until));
        let suspect_due = suspects.iter().flatten().map(|(at, ..)| *at).min();
        let heard = tokio::select! {
            heard = heard_rx.recv() => heard,
            // The check is prepared: quadrants in are checked at the top.
            done = async { verifier.as_mut().expect("preparing").await }, if verifier.is_some() && prepared.is_none() => {
                // The reducers' checks go out at once: product panels
                // wait for them.
                let v = match &done {
                    Ok(Ok((v, _))) => Some(v),
                    _ => None,
                };
                let formed: Vec<_> = (0..SLOTS).map(|j| slot_checks(v, &seeds, &plan, j, rounds)).collect();
                for (ctl, c) in ctl_txs.iter().zip(&formed) {
                    if let Some(c) = c {
                        let _ = ctl.send(Ctl::Checks(c.clone()));
                    }
                }
                checks = Some(formed);
                prepared = Some(done);
                verifier = None;
                continue;
            }
            // A slot lost its link with another, whose link to the
            // requester still holds: the failure stands.
            _ = tokio::time::sleep_until(suspect_due.unwrap_or(until)), if suspect_due.is_some() => {
                let now = tokio::time::Instant::now();
                for suspect in suspects.iter_mut().filter(|s| s.as_ref().is_some_and(|(at, ..)| *at <= now)) {
                    let (_, report, _) = suspect.take().expect("due");
                    info!(slot = report.at_fault, by = ?report.by, "relay: the requester's link to the slot holds; the lost link ends the relay");
                    reports.push(report);
                }
                settle.get_or_insert(now + SETTLE);
                continue;
            }
            // Wakes the loop when A and B are all out, to set the due time.
            Ok(at) = &mut sent_rx, if seq_sent.is_none() => {
                seq_sent = Some(at);
                if !spare_feeding {
                    sent_at = Some(at);
                }
                continue;
            }
            // The slots did not all take a move in time: relay again.
            _ = tokio::time::sleep_until(moving.as_ref().map_or(until, |m| m.until)), if moving.is_some() => {
                let m = moving.take().expect("moving");
                warn!(slot = m.slot, "relay: not every slot answered the move in time; relaying again");
                named = Some(m.off());
                continue;
            }
            // A slot whose link takes its panels far slower than the
            // others' would hold up every product that needs what it
            // forwards: the relay ends at once (the caller relays again
            // with a spare in its place, see `Outcome::slow`).
            _ = feed_tick.tick(), if watching && reports.is_empty() && awaiting.is_none() && fed_at.iter().any(Option::is_none) => {
                let now = tokio::time::Instant::now();
                let feeds: Vec<Feed> = (0..SLOTS)
                    .map(|s| {
                        let kernel = info(s);
                        let sent = delivered(s, kernel).saturating_sub(base[s]);
                        // Its panels have begun to go: its socket took the
                        // start of one (what it took before may be digests
                        // alone, sent ahead of its panels).
                        let wrote = meters[s].load(Ordering::Relaxed).saturating_sub(base_written[s]);
                        if wrote >= FEED_STARTED.min(held[s]) && first_out[s].is_none() {
                            first_out[s] = Some(now);
                        }
                        if sent >= held[s] && fed_at[s].is_none() {
                            fed_at[s] = Some(now);
                        }
                        Feed {
                            held: held[s],
                            written: sent.min(held[s]),
                            going: first_out[s].map(|f| fed_at[s].unwrap_or(now).saturating_duration_since(f)),
                            done: fed_at[s].is_some(),
                            rtt: kernel.map(|i| i.rtt).filter(|r| !r.is_zero()),
                        }
                    })
                    .collect();
                if let Some((slot, why)) = slow_feed(&feeds) {
                    // One look only: a slot for it, or the relay goes on.
                    watching = false;
                    if let Some(spare) = spare_for(hedge, peers, slot, &why).await {
                        named = Some(Named::slow(slot, why, spare));
                    }
                }
                continue;
            }
            // A slot whose host no longer answers at all (a cut link, a dead
            // host) is lost now, not once its link has been silent for the
            // silence timeout. (Of the first generation only: the kernel is
            // asked about the links the relay opened.)
            _ = reach_tick.tick() => {
                let now = tokio::time::Instant::now();
                for s in (0..SLOTS).filter(|&s| stats[s].is_none() && generation[s] == 0 && !lost_heard[s]) {
                    let Some(i) = info(s) else { continue };
                    unanswered[s] = waiting_since(unanswered[s], i, now);
                    let stuck = unanswered[s].is_some_and(|(since, _)| now - since >= UNREACHED);
                    if stuck && i.unreachable(UNREACHED) {
                        let why = format!(
                            "its host acknowledged nothing sent to it for {:.1} s (round trip {} ms): unreachable",
                            i.since_ack.as_secs_f64(),
                            i.rtt.as_millis()
                        );
                        let _ = heard_tx.send((0, Heard::Lost(s, why)));
                    }
                }
                continue;
            }
            _ = tokio::time::sleep_until(wait_until) => {
                if grace.is_none() && reports.is_empty() {
                    let late: Vec<String> = Quad::ALL
                        .iter()
                        .filter(|q| gather.quads[q.index()].arriving())
                        .map(|q| format!("C{}", q.suffix()))
                        .collect();
                    let second = second_in(&gather.quads);
                    failure = Some(match sent_at {
                        _ if behind.is_some_and(|b| b <= until && Some(b) == due) => format!(
                            "{} not back {:.1} s after the first two quadrants (they took {:.1} s)",
                            late.join(", "),
                            second.map_or(0.0, |t| t.elapsed().as_secs_f64()),
                            second.map_or(0.0, |t| (t - plan_sent).as_secs_f64())
                        ),
                        Some(at) if due_after(at) <= until => format!(
                            "{} not back {:.1} s after A and B were out (they took {:.1} s)",
                            late.join(", "),
                            at.elapsed().as_secs_f64(),
                            (at - plan_sent).as_secs_f64()
                        ),
                        _ => format!("{} not back within {limit:?}", late.join(", ")),
                    });
                }
                break;
            }
        };
        let Some((said_by, heard)) = heard else { break };
        if said_by != generation[heard.slot()] {
            continue;
        }
        match heard {
            Heard::Part(slot, _, _) if caught[slot] => {}
            Heard::OffPlan(slot, why) => off_plan(&mut caught, &mut reports, slot, why),
            Heard::Part(slot, part, m) => {
                let t = Instant::now();
                match gather.take(slot, part, m, c) {
                    Ok(Some((q, bytes))) => progress(super::Progress::Received { product: quad_name(q), bytes }),
                    Ok(None) => {}
                    Err(why) => off_plan(&mut caught, &mut reports, slot, why),
                }
                debug!(slot, part = %part.name(), took = ?t.elapsed(), "part in");
            }
            Heard::Progress(slot, inputs, computed, arrived, at_us) => {
                // (The slot's clock started when the plan reached it, after
                // `plans_from`: the age is, if anything, overstated.)
                let age = plans_from.elapsed().saturating_sub(Duration::from_micros(at_us));
                // Its clock against the requester's: the least delay seen
                // between the plans going out and one of its reports
                // arriving, less the report's own time (its plan's way
                // there, mostly).
                let plan_in = progress_of[slot].map_or(age, |p| p.plan_in.min(age));
                let at = Duration::from_micros(at_us) + plan_in;
                let report = ProgressReport { inputs, computed, arrived, at, age, plan_in };
                let a_panels = gather.plan.a_panels().count();
                progress_of[slot] = Some(SlotProgress::after(progress_of[slot], report, b_panels, a_panels));
                // A slot whose forwards of B come far slower than the same
                // quadrant's to the others: its link is slow. (Its own feed
                // may not have begun: a slot holding only A is fed after B.)
                // A holder whose forwards reach all of them far slower than
                // it took the quadrant: its link is slow to send.
                // Every slot's last report, aged to now: a slot whose
                // reports stopped (a reducer's writer busy with C panels
                // on a congested link sends none) is judged by an old one.
                let now_progress = SlotProgress::as_of(&progress_of, plans_from.elapsed());
                if watching && reports.is_empty() && slow.is_none() && awaiting.is_none() {
                    let holders = gather.plan.roles.holders;
                    let seen = slow_receiver(&now_progress, holders, b_panels)
                        .or_else(|| slow_sender(&now_progress, holders, b_panels));
                    if let Some((slot, why)) = seen {
                        watching = false;
                        if let Some(spare) = spare_for(hedge, peers, slot, &why).await {
                            named = Some(Named::slow(slot, why, spare));
                        }
                    }
                }
                // A product far behind the others' holds up the quadrants
                // it feeds: relayed again with a spare, as a slow feed is.
                if watching_products && reports.is_empty() && slow.is_none() && named.is_none() && awaiting.is_none() {
                    let panels = gather.plan.a_panels().count();
                    let done = std::array::from_fn(|s| stats[s].is_some());
                    if let Some((slot, why)) = slow_product(&now_progress, panels, done) {
                        watching_products = false;
                        // (With no slot free at the tracker, the peer of a
                        // slot done, as for a slot caught: on a grid of
                        // exactly seven the slow product moves too.)
                        let spare = spare_or_done_peer(hedge, peers, slot, &why, &stats, &peers_now).await;
                        if spare.is_none() && hedge.is_some() {
                            // (No slot done yet: the first to be lends its peer.)
                            slow_waiting = Some((slot, why.clone()));
                        }
                        if let Some(spare) = spare {
                            // (Its roles move only if nothing it computed has
                            // left it, and no slot done sent it its product.)
                            named = Some(Named::slow(slot, why, spare));
                        }
                    }
                }
            }
            Heard::Done(slot, s) => {
                stats[slot] = Some(s);
                // A caught slot waiting for a slot to be done: this one's
                // peer takes its roles.
                if let Some(spare) = awaiting.as_ref().and_then(|w| done_peer(&stats, &peers_now, w.slot)) {
                    let w = awaiting.take().expect("awaiting");
                    named = Some(Named { slot: w.slot, why: w.why, spare, movable: true, kind: Kind::Caught });
                }
                // A slow product named when no slot was done: this one's
                // peer takes its roles, if it is still behind and nothing
                // else went wrong meanwhile.
                if let Some((slow_slot, why)) = slow_waiting.take() {
                    let free = nothing_under_way(&reports, &named, &moving, &moved, &slow, &awaiting);
                    if let Some(spare) =
                        done_peer(&stats, &peers_now, slow_slot).filter(|_| free && stats[slow_slot].is_none())
                    {
                        named = Some(Named::slow(slow_slot, why, spare));
                    }
                }
            }
            Heard::Failed(slot, blame, message, evidence) => {
                let at_fault = blame.map(usize::from).filter(|&b| b < SLOTS).unwrap_or(slot);
                // (A slot's evidence is believed against one slot a relay.)
                let evidence = evidence && accused[slot].is_none_or(|a| a == at_fault && generation[a] == 0);
                warn!(slot, blame = at_fault, %message, evidence, "relay: a slot gave up");
                let summary = format!("slot {slot} gave up: {message}");
                reports.push(Report { at_fault, by: Some(slot), summary, why: message, evidence });
            }
            // (With acknowledgements to go by, the feed is done once they
            // cover it, not once the socket took the last byte.)
            Heard::Written(slot) => {
                if fds[slot].is_none() {
                    fed_at[slot] = Some(tokio::time::Instant::now());
                }
                if generation[slot] > 0 && spare_feeding {
                    // The spare has its operands: A and B are out once the
                    // others' are too.
                    spare_feeding = false;
                    sent_at = seq_sent.map(|t| t.max(tokio::time::Instant::now()));
                }
            }
            Heard::MovedAck(from, which, refused) => {
                let word = refused.map_or(Word::Took, Word::Refused);
                if let Some(why) = moving.as_mut().and_then(|m| m.heard(from, which, word, &gather.plan.roles)) {
                    let m = moving.take().expect("moving");
                    info!(slot = m.slot, by = from, %why, "relay: the move is off; relaying again");
                    named = Some(m.off());
                }
            }
            Heard::WriteFailed(slot, why) => {
                debug!(slot, %why, "relay: a send failed; waiting for the slot's last word")
            }
            // A slot done, lost: it has nothing more to send, unless a
            // move needs the product it kept.
            Heard::Lost(slot, why) if stats[slot].is_some() => {
                let which = moving.as_ref().map_or(slot, |m| m.slot);
                if let Some(off) = moving.as_mut().and_then(|m| m.heard(slot, which, Word::Gone, &gather.plan.roles)) {
                    let m = moving.take().expect("moving");
                    info!(slot = m.slot, by = slot, why = %off, "relay: the move is off; relaying again");
                    named = Some(m.off());
                }
                debug!(slot, %why, "relay: a slot done is gone");
            }
            Heard::Lost(slot, why) => {
                if !std::mem::replace(&mut lost_heard[slot], true) {
                    warn!(slot, %why, "relay: lost a slot");
                    // Its roles move to a spare, if the lease lends one and
                    // nothing else has gone wrong (one move a relay).
                    // (Nor asked of the tracker where the move could not be
                    // made anyway: a spare would be spent for nothing.)
                    let free =
                        nothing_under_way(&reports, &named, &moving, &moved, &slow, &awaiting) && gather.may_move(slot);
                    // (A slot another had lost already has its spare.)
                    let held = suspects[slot].take().map(|(.., spare)| spare);
                    let spare = match (free, held) {
                        (false, _) => None,
                        (true, Some(spare)) => Some(spare),
                        // (Or the peer of a slot done: a slot lost late —
                        // a reducer whose feeders finished — moves on a
                        // grid with no slot free too.)
                        (true, None) => spare_or_done_peer(hedge, peers, slot, &why, &stats, &peers_now).await,
                    };
                    match spare {
                        Some(spare) => named = Some(Named { slot, why, spare, movable: true, kind: Kind::Lost }),
                        None => reports.push(Report::lost(slot, why, false)),
                    }
                }
            }
            Heard::PeerLost(by, lost, why, evidence, _) if evidence && accused[by].is_some() => {
                debug!(slot = by, lost, %why, "relay: a second accusation on evidence from one slot, set aside");
            }
            Heard::PeerLost(by, lost, why, evidence, wrong_product) => {
                if evidence {
                    accused[by] = Some(lost);
                }
                let replacing = [
                    named.as_ref().map(|n| n.slot),
                    moving.as_ref().map(|m| m.slot),
                    moved.as_ref().map(|m| m.slot),
                    awaiting.as_ref().map(|w| w.slot),
                ];
                let free = hedge.is_some()
                    && nothing_under_way(&reports, &named, &moving, &moved, &slow, &awaiting)
                    && gather.may_move(lost);
                let done = stats.get(lost).is_some_and(Option::is_some);
                let word = if evidence { "caught" } else { "lost its link with" };
                let summary = format!("slot {by} {word} slot {lost}: {why}");
                let report = Report { at_fault: lost, by: Some(by), summary, why: why.clone(), evidence };
                match on_peer_lost(by, lost, evidence, &replacing, free, done) {
                    OnPeerLost::OffPlan => {
                        off_plan(&mut caught, &mut reports, by, format!("said it {word} slot {lost}"));
                    }
                    OnPeerLost::Moot => {}
                    OnPeerLost::End => {
                        warn!(slot = by, lost, %why, evidence, "relay: a slot lost or caught another");
                        reports.push(report);
                    }
                    OnPeerLost::Replace => {
                        warn!(slot = by, caught = lost, %why, "relay: a slot caught another");
                        suspects[lost] = None;
                        let why = format!("{why} (slot {by} caught it)");
                        // A spare the tracker lends, or else the peer of a
                        // slot of the job that is done (the slots holding
                        // for the caught one wait meanwhile).
                        match spare_or_done_peer(hedge, peers, lost, &why, &stats, &peers_now).await {
                            Some(spare) => {
                                named = Some(Named { slot: lost, why, spare, movable: true, kind: Kind::Caught })
                            }
                            // A wrong product: the others can finish
                            // without it, and the first done lends its
                            // peer. (A slot caught forwarding a wrong
                            // panel holds up every slot that needs it:
                            // none may finish, and the relay ends.)
                            None if wrong_product => {
                                info!(slot = lost, "relay: no slot free; its roles move to the first slot done");
                                awaiting = Some(Awaiting { slot: lost, why, report });
                            }
                            None => reports.push(report),
                        }
                    }
                    OnPeerLost::Suspect if suspects[lost].is_some() => {}
                    // Worth waiting for the requester's own link to tell
                    // only if the slot could move: with no spare lent, the
                    // relay ends either way, so it ends now.
                    OnPeerLost::Suspect => match spare_for(hedge, peers, lost, &why).await {
                        Some(spare) => {
                            warn!(slot = by, lost, %why, "relay: a slot lost its link with another");
                            let due = tokio::time::Instant::now() + config.silence_timeout + SUSPECT_SLACK;
                            suspects[lost] = Some((due, report, spare));
                        }
                        None => reports.push(report),
                    },
                }
            }
        }
        if moving.as_ref().is_some_and(Moving::answered) {
            let m = moving.take().expect("moving");
            if !gather.may_move(m.slot) {
                info!(slot = m.slot, "relay: C came in whole before the slot could move; the move is off");
                named = Some(m.off());
            } else {
                let Moving { slot, spare, why, kind, .. } = m;
                // What C the old peer sent stays; the spare's copies of it
                // are set aside.
                gather.moved(slot);
                lost_heard[slot] = false;
                // Every other slot takes the slot's parts from the spare
                // only: drop the old peer (its job ends as its link
                // closes) and hand the spare the slot's plan and operands.
                for link in links[slot].drain(..) {
                    link.abort();
                }
                let (ctl_tx, ctl_rx) = mpsc::unbounded_channel();
                // (After its plan: `take_over` hands it that first.)
                if let Some(c) = checks.as_ref().and_then(|c| c[slot].clone()) {
                    let _ = ctl_tx.send(Ctl::Checks(c));
                }
                ctl_txs[slot] = ctl_tx;
                let meter = Arc::new(AtomicU64::new(0));
                spare_meter = Some(meter.clone());
                (stats[slot], progress_of[slot], caught[slot]) = (None, None, false);
                let mut spare_plan = plan_for(slot);
                spare_plan.peers[slot].clone_from(&spare.addr);
                spare_plan.tickets[slot].clone_from(&spare.ticket);
                spare_plan.generation = generation[slot];
                // (A slot done has every panel it needs: nothing to forward it.)
                spare_plan.done = (0..SLOTS).filter(|&j| stats[j].is_some()).fold(0, |b, j| b | 1 << j);
                let feed = Feeding {
                    slot,
                    generation: generation[slot],
                    a: a.clone(),
                    b: b.clone(),
                    split,
                    plan: plan.clone(),
                };
                let over = TakeOver {
                    plan: spare_plan,
                    spare: spare.clone(),
                    limits: limits.clone(),
                    r: r_pub.clone(),
                    meter,
                };
                let (heard, received) = (heard_tx.clone(), received.clone());
                links[slot].push(tasks.spawn(take_over(feed, over, ctl_rx, config.io_timeout, heard, received)));
                (spare_feeding, sent_at) = (true, None);
                info!(slot, kind = kind.name(), spare = %spare.addr, "relay: a slot's roles moved to a spare");
                moved = Some(MovedSlot {
                    slot,
                    product: septet_common::strassen::PRODUCTS[slot].name,
                    from: peers[slot].clone(),
                    to: spare.clone(),
                    reason: format!("{}: {why}", kind.name()),
                    lost: kind != Kind::Slow,
                    named_s: named_at,
                    at_s: started.elapsed().as_secs_f64(),
                    from_requester: meters[slot].load(Ordering::Relaxed),
                });
                peers_now[slot] = spare;
            }
        }
        // The first failure ends the relay, after a moment to hear the
        // rest: one slot's failure spreads (links close under the others),
        // so a report on evidence — a panel that failed its digest, a part
        // off the plan — is trusted over reports of broken links, and
        // without one, the first report is.
        if !reports.is_empty() && settle.is_none() {
            settle = Some(tokio::time::Instant::now() + SETTLE);
        }
    }
    // (A caught slot still waiting for a slot to be done: the relay ended
    // first, and the report stands.)
    if let Some(w) = awaiting.take() {
        reports.push(w.report);
    }
    let chosen = believed(&reports);
    if let Some(&first) = chosen.first() {
        failure = Some(reports[first].summary.clone());
    }
    for i in chosen {
        let Report { at_fault, why, .. } = &reports[i];
        // (Once each: two reducers may catch one slot.)
        if !outcome.blamed.iter().any(|(s, _)| s == at_fault) {
            outcome.blamed.push((*at_fault, why.clone()));
        }
    }
    // Closing the links ends the job on every slot, however far it got.
    drop(fds);
    tasks.shutdown().await;
    outcome.bytes_sent = meters.iter().chain(&spare_meter).map(|m| m.load(Ordering::Relaxed)).sum();
    outcome.bytes_received = received.load(Ordering::Relaxed);

    // 5. Check what came back.
    let checking = Instant::now();
    let prepared = match (prepared, verifier) {
        (Some(done), _) => Some(done),
        (None, Some(v)) => Some(v.await),
        (None, None) => None,
    };
    let verifier = match prepared {
        Some(done) => match done {
            Ok(Ok((v, prepared))) => {
                outcome.verify_s += prepared.as_secs_f64();
                Some(v)
            }
            Ok(Err(e)) => {
                failure.get_or_insert(format!("preparing the check: {e}"));
                None
            }
            Err(e) => {
                failure.get_or_insert(format!("preparing the check panicked: {e}"));
                None
            }
        },
        None => None,
    };
    for q in Quad::ALL {
        let qi = q.index();
        if !matches!(gather.quads[qi], QuadState::In { .. }) {
            continue;
        }
        let Some(v) = &verifier else {
            if !config.verify {
                gather.quads[qi] = QuadState::Verified;
            }
            continue;
        };
        gather.quads[qi] = match gather.check(q, v) {
            Ok(()) => QuadState::Verified,
            Err(Check::NonFinite(cause)) => {
                outcome.unverifiable = Some((plan.roles.reducers[qi] as usize, cause));
                QuadState::Refused
            }
            Err(Check::Wrong(why)) => {
                // The products' fingerprints say who: a wrong one names its
                // slot; if all are right, the reducer summed wrong.
                let reducer = plan.roles.reducers[qi] as usize;
                let moved_slot = moved.as_ref().map(|mv| mv.slot);
                for slot in culprits(q, reducer, moved_slot, |i| gather.fingerprint_wrong(i, v, rounds)) {
                    outcome.blamed.push((slot, format!("C{} failed its check: {why}", q.suffix())));
                }
                failure.get_or_insert(format!("C{} failed its check", q.suffix()));
                QuadState::Refused
            }
        }
    }
    outcome.verified = gather.quads.map(|q| q == QuadState::Verified);
    outcome.slow = slow.filter(|(s, _)| outcome.unverifiable.is_none() && outcome.blamed.iter().all(|(b, _)| b == s));
    outcome.verify_critical_s = checking.elapsed().as_secs_f64();
    outcome.verify_s += outcome.verify_critical_s;
    report.quadrants_verified =
        Quad::ALL.iter().filter(|q| outcome.verified[q.index()]).map(|q| quad_name(*q).into()).collect();
    report.failure = failure;
    // (A slot whose roles moved is its spare's, from the spare's feed.)
    if let (Some(mv), Some(meter)) = (&moved, spare_meter) {
        meters[mv.slot] = meter;
    }
    // (Each slot's clock starts when its plan reaches it: the spare's, at the move.)
    let plans_sent: [f64; SLOTS] =
        std::array::from_fn(|j| moved.as_ref().filter(|mv| mv.slot == j).map_or(report.plan_sent_s, |mv| mv.at_s));
    report.slots = slot_reports(&plan, &peers_now, groups, &stats, &meters, plans_sent);
    report.moved = moved;
    outcome.report = report;
    outcome
}

/// What a slot that delegates its product (a job two levels deep) runs:
/// X·Y as a relayed job on the seven `peers`, with this slot as their
/// requester — it checks every quadrant of the product as any requester
/// does — and whatever they do not deliver verified (a peer gone, silent
/// or lying), it computes itself on `threads` threads. So the product is
/// right whatever the sub-slots do; what they did is in the returned
/// [`Delegated`](septet_common::proto::Delegated), for the job's report.
///
/// `config` is the sub-job's requester configuration (its tracker is not
/// used: the peers are already leased, their tickets in `peers`). What it
/// computes itself it computes holding one of `compute_slots` (a worker's
/// own slots, which it handed on to its group while the sub-job ran).
pub async fn delegate<T: Element>(
    config: super::RequesterConfig,
    x: Array2<T>,
    y: Array2<T>,
    peers: [PeerAddr; 7],
    threads: usize,
    compute_slots: Option<Arc<tokio::sync::Semaphore>>,
) -> Result<(Array2<T>, septet_common::proto::Delegated), Error> {
    use septet_common::proto::SubSlot;
    let started = Instant::now();
    let split = Split::of(x.dim(), y.dim())?;
    let requester = Requester::new(config);
    let (x, y) = (Arc::new(Store::from(x)), Arc::new(Store::from(y)));
    let c = Mutex::new(Store::zeros((split.m, split.n)));
    let quiet: ProgressFn = Arc::new(|_| {});
    let outcome = run(&requester, x.clone(), y.clone(), &c, split, &peers, &[], started, &quiet, None).await;
    let mut c = c.into_inner().into_owned();
    let missing: Vec<Quad> = Quad::ALL.into_iter().filter(|q| !outcome.verified[q.index()]).collect();
    if !missing.is_empty() {
        info!(missing = ?missing.iter().map(|q| q.suffix()).collect::<Vec<_>>(), failure = ?outcome.report.failure, "delegated product: computing what the sub-job did not deliver");
        let (x, y, todo) = (x.clone(), y.clone(), missing.clone());
        let _slot = match compute_slots {
            Some(slots) => Some(slots.acquire_owned().await.map_err(|_| Error::Closed("the worker's compute slots"))?),
            None => None,
        };
        c = tokio::task::spawn_blocking(move || {
            let (mh, _, nh) = split.half();
            for q in todo {
                let rows = match q {
                    Quad::Q11 | Quad::Q12 => 0..mh,
                    _ => mh..split.m,
                };
                let cols = match q {
                    Quad::Q11 | Quad::Q21 => 0..nh,
                    _ => nh..split.n,
                };
                let (xv, yv) = (x.view(), y.view());
                let out = septet_common::strassen::quadrant_mut(c.view_mut(), q, mh, nh);
                matmul_into(
                    out,
                    xv.slice(s![rows, ..]),
                    yv.slice(s![.., cols]),
                    false,
                    septet_common::matrix::parallelism(threads),
                )?;
            }
            Ok::<_, Error>(c)
        })
        .await
        .map_err(|e| Error::Invalid(format!("computing the product panicked: {e}")))??;
    }
    // Every sub-slot, with what it reported (nothing, if the sub-job
    // ended before it began: a sub-slot could not take its plan).
    let slots = peers
        .iter()
        .enumerate()
        .map(|(j, p)| {
            let s = outcome.report.slots.get(j);
            SubSlot {
                peer_id: p.peer_id,
                addr: p.addr.clone(),
                bytes_in: s.map_or(0, |s| s.bytes_in),
                bytes_out: s.map_or(0, |s| s.bytes_out),
                compute_us: s.map_or(0, |s| (s.compute_s * 1e6) as u64),
                done: s.is_some_and(|s| s.done_s.is_some()),
            }
        })
        .collect();
    let delegated = Delegated {
        slots,
        computed_here: missing.iter().map(|q| q.index() as u8).collect(),
        blamed: outcome.blamed.iter().map(|(s, why)| (*s as u8, why.clone())).collect(),
        failure: outcome.report.failure.clone(),
        bytes_sent: outcome.bytes_sent,
        bytes_received: outcome.bytes_received,
        took_us: started.elapsed().as_micros() as u64,
    };
    Ok((c, delegated))
}

/// A failure the requester heard of during a relayed job.
#[derive(Debug, Clone)]
struct Report {
    /// The slot the report blames.
    at_fault: usize,
    /// The slot that reported it (None: the requester itself saw it).
    by: Option<usize>,
    /// One line for the job's failures.
    summary: String,
    /// Why, for the blamed slot's failure record.
    why: String,
    /// `at_fault` was caught by what it sent (a digest, a part off the
    /// plan), not merely by a link that broke.
    evidence: bool,
}

impl Report {
    /// The requester lost `slot` (its link), or a slot caught it
    /// (`evidence`), and it did not move.
    fn lost(slot: usize, why: String, evidence: bool) -> Self {
        Report { at_fault: slot, by: None, summary: format!("slot {slot}: {why}"), why, evidence }
    }

    /// The requester saw `slot` slow ([`slow_feed`], [`slow_product`]).
    fn slow(slot: usize, why: &str) -> Self {
        let summary = format!("slot {slot} is slow: {why}");
        Report { at_fault: slot, by: None, summary, why: format!("slow: {why}"), evidence: false }
    }
}

/// Which of the `reports` to believe (indices, first one first).
///
/// One slot's failure spreads: a slot that gives up closes its links, and
/// the slots at their other ends report those links broken. So reports on
/// evidence are believed over reports of broken links; without evidence, a
/// report blaming a slot that itself reported giving up is explained by that
/// slot's own report and set aside, and the first report left is believed
/// (the first of all if every blamed slot gave up itself).
fn believed(reports: &[Report]) -> Vec<usize> {
    let on_evidence: Vec<usize> = (0..reports.len()).filter(|&i| reports[i].evidence).collect();
    if !on_evidence.is_empty() {
        return on_evidence;
    }
    let gave_up = |slot: usize| reports.iter().any(|r| r.by == Some(slot));
    let first = (0..reports.len()).find(|&i| !gave_up(reports[i].at_fault));
    first.or((!reports.is_empty()).then_some(0)).into_iter().collect()
}

/// Who is to blame when C quadrant `q` fails its check: the slots feeding
/// it whose fingerprints are wrong; if none is, its reducer (the products
/// it was sent agree with what their slots fingerprinted, as far as the
/// public vectors tell, so the sum is what is wrong) — unless a slot that
/// moved had a hand in it (`moved`): then part of the quadrant, or of a
/// product in it, came from an old peer no fingerprint speaks for, and
/// nobody more is blamed (the old peer is named already).
fn culprits(q: Quad, reducer: usize, moved: Option<usize>, fingerprint_wrong: impl Fn(usize) -> bool) -> Vec<usize> {
    let wrong: Vec<usize> = relay::feeders(q).map(|(i, _)| i).filter(|&i| fingerprint_wrong(i)).collect();
    let had_a_hand = moved.is_some_and(|m| m == reducer || relay::feeders(q).any(|(i, _)| i == m));
    if !wrong.is_empty() {
        wrong
    } else if had_a_hand {
        Vec::new()
    } else {
        vec![reducer]
    }
}

/// The requester's sends to one slot, as the gather loop sees them.
#[derive(Debug, Clone, Copy, Default)]
struct Feed {
    /// Bytes of the panels it holds.
    held: u64,
    /// Of which its link has taken so far.
    written: u64,
    /// How long they have been going out (until the last reached it);
    /// None before the first began to.
    going: Option<Duration>,
    /// Every one reached it.
    done: bool,
    /// The connection's smoothed round-trip time, where the kernel says.
    rtt: Option<Duration>,
}

/// The slot whose link takes its panels at less than 1/[`SLOW_FEED_FACTOR`]
/// the median pace of the others' (at least three under way), if what it
/// has left would take it more than [`FEED_MARGIN`]; with why. Where the
/// kernel times its round trip and three or more others', that round trip
/// must also be at least [`SLOW_RTT_FACTOR`] times the others' median, and
/// the slot is judged once its panels have been going out for
/// [`FEED_OBSERVED_TIMED`]; elsewhere, by pace alone, only once they have
/// been going out for [`FEED_OBSERVED`] and as long as the feeds already
/// done took (their median). A slow requester link slows every feed alike, and none is
/// slow; a slot that is merely fed later (its quadrant later in the send
/// order) is judged from when its first panel began to go out. A slow link
/// of the slot's own queues its flow alone and lengthens its round trip;
/// a congested requester link, where TCP may starve one flow of several
/// for a while, queues them all alike.
fn slow_feed(feeds: &[Feed]) -> Option<(usize, String)> {
    // (A feed done between two looks took at most one tick; a slot that
    // holds nothing has no pace.)
    let pace = |f: &Feed| {
        let going = f.going.filter(|_| f.held > 0)?;
        let going = if f.done { going.max(FEED_TICK) } else { going };
        (!going.is_zero()).then(|| f.written as f64 / going.as_secs_f64())
    };
    // By pace alone, judged only once it has gone out as long as the
    // feeds done took (a median), so that on a busy requester link a feed
    // whose connection is still in TCP's slow start, behind queues the
    // others filled, is not taken for slow. Its round trip, where known,
    // tells that case apart sooner: it waits in the same queue as theirs.
    let mut took: Vec<Duration> = feeds.iter().filter(|f| f.done && f.held > 0).filter_map(|f| f.going).collect();
    took.sort_unstable();
    let paced = took.get(took.len() / 2).map(|&t| FEED_OBSERVED.max(t));
    feeds.iter().enumerate().find_map(|(slot, f)| {
        let mut rtts: Vec<Duration> =
            feeds.iter().enumerate().filter(|&(o, g)| o != slot && g.going.is_some()).filter_map(|(_, g)| g.rtt).collect();
        rtts.sort_unstable();
        let rtt = match (f.rtt, rtts.get(rtts.len() / 2)) {
            (Some(own), Some(&theirs)) if rtts.len() >= 3 => Some((own, theirs)),
            _ => None,
        };
        let observed = if rtt.is_some() { FEED_OBSERVED_TIMED } else { paced? };
        let going = f.going.filter(|&g| !f.done && g >= observed)?;
        let mut others: Vec<f64> =
            feeds.iter().enumerate().filter(|&(o, _)| o != slot).filter_map(|(_, o)| pace(o)).collect();
        if others.len() < 3 {
            return None;
        }
        others.sort_by(f64::total_cmp);
        let median = others[others.len() / 2];
        let rate = pace(f)?;
        let left = f.held.saturating_sub(f.written) as f64;
        let needs = if rate > 0.0 { left / rate } else { f64::INFINITY };
        let queued_alone = rtt.is_none_or(|(own, theirs)| own.as_secs_f64() >= SLOW_RTT_FACTOR * theirs.as_secs_f64());
        (rate < median / SLOW_FEED_FACTOR && needs > FEED_MARGIN.as_secs_f64() && queued_alone)
            .then(|| {
                let trip = rtt.map_or(String::new(), |(own, theirs)| {
                    format!("; round trip {:.0} ms, the others' {:.0} ms", own.as_secs_f64() * 1e3, theirs.as_secs_f64() * 1e3)
                });
                format!(
                    "its link took {:.0}% of its {:.1} MB in {:.2} s ({:.1} MB/s, the other slots' median {:.1} MB/s{trip})",
                    100.0 * f.written as f64 / f.held.max(1) as f64,
                    f.held as f64 / 1e6,
                    going.as_secs_f64(),
                    rate / 1e6,
                    median / 1e6
                )
            })
            .map(|why| (slot, why))
    })
}

/// A slot seen to be slow ([`slow_feed`], [`slow_product`]) or lost: one
/// more slot of the lease to take its place, if the tracker lends one now.
async fn spare_for(
    hedge: Option<&super::LeaseKeeper>,
    peers: &[PeerAddr; 7],
    slot: usize,
    why: &str,
) -> Option<PeerAddr> {
    warn!(slot, peer = %peers[slot].addr, %why, "relay: a slot to replace");
    let spare = match hedge {
        Some(keeper) => keeper.hedge_slot(peers[slot].peer_id).await,
        None => None,
    };
    if spare.is_none() {
        info!(slot, "relay: no slot free to take the slot's place");
    }
    spare
}

/// A peer to take slot `slot`'s roles: a spare the tracker lends, else
/// the peer of a slot of the job that is done ([`done_peer`]; `peers_now`:
/// each slot's peer after any move). Neither where the relay may not
/// hedge (`hedge` is `None`: two levels, hedging off, or all on loopback).
async fn spare_or_done_peer(
    hedge: Option<&super::LeaseKeeper>,
    peers: &[PeerAddr; 7],
    slot: usize,
    why: &str,
    stats: &[Option<RelayStats>],
    peers_now: &[PeerAddr; 7],
) -> Option<PeerAddr> {
    match spare_for(hedge, peers, slot, why).await {
        None if hedge.is_some() => done_peer(stats, peers_now, slot),
        spare => spare,
    }
}

/// One progress report of a slot ([`WorkerReply::RelayProgress`]), as
/// the requester takes it.
#[derive(Debug, Clone, Copy)]
struct ProgressReport {
    inputs: u32,
    computed: u32,
    arrived: [u32; 8],
    /// When the slot wrote it, since the plans went out (by the slot's
    /// clock, set by the least delay seen of its reports).
    at: Duration,
    /// How long ago the slot wrote it, by its clock alone (overstated by
    /// its plan's way there).
    age: Duration,
    /// When its plan reached it (its clock's start), since the plans went
    /// out.
    plan_in: Duration,
}

/// What a slot's progress reports have said so far.
#[derive(Debug, Clone, Copy)]
struct SlotProgress {
    /// Panels of its product with their operands in.
    inputs: usize,
    /// Panels computed.
    computed: usize,
    /// How long ago the slot wrote the last report.
    age: Duration,
    /// When it wrote the last report, since the plans went out.
    at: Duration,
    /// When its plan reached it, as far as its reports tell.
    plan_in: Duration,
    /// Panels of each quadrant (A11..A22, B11..B22) arrived.
    arrived: [usize; 8],
    /// When a report first showed a panel of each quadrant of B arrived
    /// (index as `arrived`) ...
    first: [Option<Duration>; 8],
    /// ... and all `b_panels` of them.
    all: [Option<Duration>; 8],
    /// When a report first showed half its product's panels or more with
    /// their operands in.
    half_in: Option<Duration>,
}

impl SlotProgress {
    /// What the reports say once `report` is in, after `before`.
    fn after(before: Option<SlotProgress>, report: ProgressReport, b_panels: usize, panels: usize) -> SlotProgress {
        let arrived = report.arrived.map(|a| a as usize);
        let half_in = before.and_then(|b| b.half_in).or(((report.inputs as usize) * 2 >= panels).then_some(report.at));
        let (mut first, mut all) = before.map_or(([None; 8], [None; 8]), |b| (b.first, b.all));
        for q in 4..8 {
            if arrived[q] > 0 {
                first[q].get_or_insert(report.at);
            }
            if arrived[q] >= b_panels {
                all[q].get_or_insert(report.at);
            }
        }
        SlotProgress {
            inputs: report.inputs as usize,
            computed: report.computed as usize,
            age: report.age,
            at: report.at,
            plan_in: report.plan_in,
            arrived,
            first,
            all,
            half_in,
        }
    }

    /// Every slot's reports as of `now` (since the plans went out): the
    /// last report's age is how long ago the slot wrote it *now*, not when
    /// it arrived. A report is judged fresh or old when a rule reads it,
    /// which may be long after it came: a reducer's writer streaming C
    /// panels behind a congested link sends no report meanwhile, and its
    /// last one, fresh when it came, said nothing of the panels it has
    /// computed since.
    fn as_of(progress: &[Option<SlotProgress>; SLOTS], now: Duration) -> [Option<SlotProgress>; SLOTS] {
        // (`at` less `plan_in` is the slot's own clock when it wrote it.)
        progress.map(|p| {
            p.map(|p| SlotProgress { age: p.age.max(now.saturating_sub(p.at.saturating_sub(p.plan_in))), ..p })
        })
    }

    /// Panels of quadrant `q` a second since `start`, up to when a report
    /// showed them all in (or its last report). (A report every twentieth
    /// of a second or so: one that shows a quadrant all in may have come
    /// up to then after it was.)
    fn pace_since(&self, q: usize, start: Duration) -> f64 {
        let took = self.all[q].unwrap_or(self.at).saturating_sub(start).max(FEED_TICK);
        self.arrived[q] as f64 / took.as_secs_f64()
    }

    /// How this slot, still taking quadrant `q` (of `panels` panels) by
    /// forward, takes it, by its fresh report ([`PROGRESS_FRESH`]): timed
    /// from `start` or, if that reached it later, its plan (nothing comes
    /// to a slot before), once [`RECEIVE_OBSERVED`] has passed.
    fn taking(&self, q: usize, start: Duration, panels: usize) -> Option<Taking> {
        let (have, span) = (self.arrived[q], self.at.saturating_sub(start.max(self.plan_in)));
        (self.age <= PROGRESS_FRESH && have < panels && span >= RECEIVE_OBSERVED).then(|| Taking {
            have,
            span,
            pace: have as f64 / span.as_secs_f64(),
            left: panels - have,
        })
    }
}

/// How a slot takes a quadrant by forward ([`SlotProgress::taking`]).
#[derive(Debug, Clone, Copy)]
struct Taking {
    /// Panels in.
    have: usize,
    /// Over how long.
    span: Duration,
    /// Panels a second.
    pace: f64,
    /// Panels still to come.
    left: usize,
}

impl Taking {
    /// At 1/[`SLOW_RECEIVE_FACTOR`] of `pace` or less, with what is left
    /// needing it more than [`FEED_MARGIN`] at its own.
    fn far_slower_than(&self, pace: f64) -> bool {
        let needs = if self.have > 0 { self.left as f64 / self.pace } else { f64::INFINITY };
        self.pace * SLOW_RECEIVE_FACTOR <= pace && needs > FEED_MARGIN.as_secs_f64()
    }
}

/// The slot slow to compute, with why: it has computed at most
/// 1/[`SLOW_PRODUCT_FACTOR`] of its product's `panels` though it has the
/// operands of half of them or more, every other slot has computed all of
/// its own (`progress`) or reported (`done`), and its report is fresh
/// ([`PROGRESS_FRESH`]). Its product then has three quarters or more
/// still to compute, which would take it three times as long as the part
/// it did, and relaying again takes about as long as the others took for
/// everything. A fresh report (as of now: `progress` is aged by
/// [`SlotProgress::as_of`]) tells slow compute from a quiet writer: a
/// reducer streaming C panels behind a congested requester link sends no
/// report meanwhile, and its last one says nothing of what it computed
/// since. A slot short of operands waits for a feed or a forward, which
/// the feed rule ([`slow_feed`]) and the overdue rules ([`quads_due`])
/// judge.
fn slow_product(
    progress: &[Option<SlotProgress>; SLOTS],
    panels: usize,
    done: [bool; SLOTS],
) -> Option<(usize, String)> {
    if panels < 4 {
        return None;
    }
    let finished = |t: usize| done[t] || progress[t].is_some_and(|p| p.computed >= panels);
    let slot = (0..SLOTS).find(|&s| !finished(s))?;
    if (0..SLOTS).any(|t| t != slot && !finished(t)) {
        return None;
    }
    let p = progress[slot]?;
    let behind = p.computed * SLOW_PRODUCT_FACTOR <= panels && p.inputs * 2 >= panels && p.inputs > p.computed;
    // (Its operands must have been in a while: a slot whose last forward
    // came late, in a burst, is starved, not slow — seen in a debug build
    // behind a 30 Mbit/s requester link, named 0.2 s after its operands
    // came.)
    let settled = p.half_in.is_some_and(|h| p.at.saturating_sub(h) >= OPERANDS_SETTLED);
    (behind && settled && p.age <= PROGRESS_FRESH).then(|| {
        (
            slot,
            format!(
                "its product {} is behind: {} of {panels} panels computed ({} with their operands in) when the others had computed all theirs",
                septet_common::strassen::PRODUCTS[slot].name,
                p.computed,
                p.inputs
            ),
        )
    })
}

/// The slot whose link is slow by the forwards of B it takes, with why.
///
/// Each quadrant of B goes from its holder to the other slots that need
/// it (every product needs B11 or B22), over the holder's one link and at
/// one pace, as its panels arrive. A slot is slow when its fresh report
/// ([`PROGRESS_FRESH`]) shows it taking such a quadrant at 1/
/// [`SLOW_RECEIVE_FACTOR`] of the pace of another slot that has half of it
/// or more, both paces timed from the first panel any of them was seen to
/// have (the slot's from its plan, if that reached it later); once
/// [`RECEIVE_OBSERVED`] has passed since, and while what the
/// slot still has to take would need it more than [`FEED_MARGIN`].
///
/// Paces over a span, not counts at one moment: on a loaded machine a
/// healthy slot's link may open a tenth of a second after the others', or
/// its plan arrive late, and it then has one panel where they have all;
/// it takes the rest at once. A slot holding only quadrants of A is fed
/// once B is out: this names it while B is still going out
/// ([`slow_feed`] names a slot by its feed). A slow holder slows all its
/// receivers alike, so none of them is named.
fn slow_receiver(progress: &[Option<SlotProgress>; SLOTS], holders: [u8; 8], panels: usize) -> Option<(usize, String)> {
    if panels < 4 {
        return None;
    }
    for (input, &holder) in holders.iter().enumerate().skip(4) {
        let receivers: Vec<usize> = relay::users(input).map(|(s, _)| s).filter(|&s| s != holder as usize).collect();
        let Some(start) = receivers.iter().filter_map(|&r| progress[r]?.first[input]).min() else { continue };
        for &s in &receivers {
            let Some(t) = progress[s].and_then(|p| p.taking(input, start, panels)) else { continue };
            let lead = receivers
                .iter()
                .filter(|&&o| o != s)
                .filter_map(|&o| progress[o])
                .filter(|o| o.arrived[input] * 2 >= panels)
                .map(|o| o.pace_since(input, start))
                .max_by(f64::total_cmp);
            let Some(lead) = lead else { continue };
            if t.far_slower_than(lead) {
                let name = Block::B(Quad::ALL[input - 4]).name();
                return Some((
                    s,
                    format!(
                        "its link took {} of {name}'s {panels} panels by forward in {:.2} s ({:.0} a second; another slot that needs it, {lead:.0})",
                        t.have,
                        t.span.as_secs_f64(),
                        t.pace
                    ),
                ));
            }
        }
    }
    None
}

/// The holder slow to send by the forwards it makes, with why: of a
/// quadrant of B that two or more other slots need, it has half or more
/// (by its report, fresh or not: a report held back behind its forwards
/// tells what it had then), and every one of them, by its fresh report,
/// takes it at 1/[`SLOW_RECEIVE_FACTOR`] of the pace at which the holder
/// had it or less, once [`RECEIVE_OBSERVED`] has passed since the first
/// panel reached the holder (or since its plan reached the slot, if
/// later), and while what they still have to take would
/// need them more than [`FEED_MARGIN`]. Its link takes the requester's
/// feed at the others' pace (the feed rule, [`slow_feed`], sees nothing
/// wrong) but sends slowly: every slot waiting on its forwards waits.
fn slow_sender(progress: &[Option<SlotProgress>; SLOTS], holders: [u8; 8], panels: usize) -> Option<(usize, String)> {
    if panels < 4 {
        return None;
    }
    holders.iter().enumerate().skip(4).find_map(|(input, &holder)| {
        let holder = holder as usize;
        let receivers: Vec<usize> = relay::users(input).map(|(s, _)| s).filter(|&s| s != holder).collect();
        let h = progress[holder]?;
        let (start, has) = (h.first[input]?, h.arrived[input]);
        if receivers.len() < 2 || has * 2 < panels {
            return None;
        }
        let own = h.pace_since(input, start);
        let mut most = 0;
        for &r in &receivers {
            let t = progress[r]?.taking(input, start, panels).filter(|t| t.far_slower_than(own))?;
            most = most.max(t.have);
        }
        let name = Block::B(Quad::ALL[input - 4]).name();
        Some((
            holder,
            format!(
                "its link sent {most} of {name}'s {panels} panels or fewer to each of the {} slots that need it, which it took at {own:.0} a second",
                receivers.len()
            ),
        ))
    })
}

/// When the C quadrants still missing are due, once two are in: twice the
/// time the second took, plus a second. The quadrants come back within
/// moments of each other when every slot keeps pace (their last panels
/// all wait for A's last panel); one far behind the others waits on a slot
/// that is slow — computing, or forwarding to the slots that feed it —
/// and goes the direct way (the rule the direct plan applies to its last
/// product, at a quadrant's grain).
fn quads_due(plan_sent: tokio::time::Instant, quads: &[QuadState; 4]) -> Option<tokio::time::Instant> {
    let missing = quads.iter().filter(|q| q.arriving()).count();
    if missing == 0 {
        return None;
    }
    second_in(quads).map(|second| plan_sent + (second - plan_sent) * 2 + Duration::from_secs(1))
}

/// When the second C quadrant to arrive was all in, if two are.
fn second_in(quads: &[QuadState; 4]) -> Option<tokio::time::Instant> {
    let mut done: Vec<tokio::time::Instant> = quads
        .iter()
        .filter_map(|q| match *q {
            QuadState::In { at, .. } => Some(at),
            _ => None,
        })
        .collect();
    done.sort_unstable();
    done.get(1).copied()
}

/// When C is due: A and B were all out at `sent_at`, `took` after the
/// plans went out; C may take twice that again, plus `slack` (the silence
/// timeout and a product's work at the slowest rate allowed).
fn c_due(sent_at: tokio::time::Instant, took: Duration, slack: Duration) -> tokio::time::Instant {
    sent_at + took * 2 + slack
}

fn quad_name(q: Quad) -> &'static str {
    ["C11", "C12", "C21", "C22"][q.index()]
}

/// How long the relay phase may take: the I/O timeout, plus a product's
/// work at the slowest compute rate allowed, plus A, B and C over the
/// requester's link at 5 MB/s.
fn relay_deadline(requester: &Requester, split: Split) -> Duration {
    let bytes = (2 * split.m * split.k + 2 * split.k * split.n + split.m * split.n) as f64 * 8.0;
    requester.product_deadline(split) + Duration::from_secs_f64(bytes / 5e6)
}

/// A slot named slow, or lost (its link to the requester failed), with
/// the spare lent for it, and whether its roles may move to the spare
/// mid-relay (else a slow slot's relay ends, and the caller relays again
/// with the spare in its place; a lost slot's relay ends as on any
/// failure).
struct Named {
    slot: usize,
    why: String,
    spare: PeerAddr,
    movable: bool,
    kind: Kind,
}

impl Named {
    fn slow(slot: usize, why: String, spare: PeerAddr) -> Self {
        Named { slot, why, spare, movable: true, kind: Kind::Slow }
    }
}

/// Why a slot is replaced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Far slower than the others (it goes on probation).
    Slow,
    /// Its link to the requester broke or fell silent (it is reported
    /// failed).
    Lost,
    /// Another slot caught it sending what it should not (a panel that
    /// fails the requester's digest, a part off the plan; reported failed).
    Caught,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Slow => "slow",
            Kind::Lost => "lost",
            Kind::Caught => "caught",
        }
    }
}

/// A move of a slow or lost slot's roles to a spare, under way: the other slots
/// have been told ([`WorkerRequest::Moved`]); once each has taken it
/// (`acks`), the spare gets the slot's plan and operands. A slot that
/// refuses, or `until` passing, ends the relay as before.
struct Moving {
    slot: usize,
    spare: PeerAddr,
    why: String,
    kind: Kind,
    acks: [bool; SLOTS],
    until: tokio::time::Instant,
}

/// What a slot says of a move under way.
#[derive(Debug)]
enum Word {
    /// It took the move ([`WorkerReply::MovedAck`]).
    Took,
    /// It refused it, saying why.
    Refused(String),
    /// Its link broke after it had finished its roles: it has nothing to
    /// say, and no product to send the spare.
    Gone,
}

impl Moving {
    /// Takes slot `from`'s `word` about the move of slot `which`: why the
    /// move is off, if it is. (Words about another move, or from the
    /// moving slot itself, are not this move's.)
    fn heard(&mut self, from: usize, which: usize, word: Word, roles: &Roles) -> Option<String> {
        if which != self.slot || from == self.slot || from >= SLOTS {
            return None;
        }
        match word {
            Word::Took => self.acks[from] = true,
            Word::Refused(why) => return Some(format!("slot {from} refused it: {why}")),
            // Gone after it took the move: its product went to the spare.
            Word::Gone if self.acks[from] => {}
            Word::Gone if roles.product_targets(from).contains(&self.slot) => {
                return Some(format!("slot {from}, done, is gone with the product it owes the slot"))
            }
            Word::Gone => self.acks[from] = true,
        }
        None
    }

    /// Every other slot has taken the move (or had no part in it).
    fn answered(&self) -> bool {
        (0..SLOTS).all(|j| j == self.slot || self.acks[j])
    }

    /// The move is off: the slot as named, not to be moved.
    fn off(self) -> Named {
        Named { slot: self.slot, why: self.why, spare: self.spare, movable: false, kind: self.kind }
    }
}

/// Since when (and at what acknowledged count) segments have waited on a
/// link with nothing more acknowledged, from the last look `before` and
/// the kernel's word now: none when nothing waits or the count moved on.
fn waiting_since(
    before: Option<(tokio::time::Instant, u64)>,
    now_info: SendInfo,
    now: tokio::time::Instant,
) -> Option<(tokio::time::Instant, u64)> {
    if now_info.unacked == 0 {
        return None;
    }
    match before {
        Some((since, acked)) if acked == now_info.bytes_acked => Some((since, acked)),
        _ => Some((now, now_info.bytes_acked)),
    }
}

/// What the requester does when slot `by` says it lost its link with
/// slot `lost`, or (on `evidence`) caught it sending what it should not
/// ([`Heard::PeerLost`]; the slot holds meanwhile).
#[derive(Debug, PartialEq, Eq)]
enum OnPeerLost {
    /// No such slot, or itself: the word breaks the protocol.
    OffPlan,
    /// `lost` is being replaced already: the word is of its old peer.
    Moot,
    /// The report ends the relay (as every failure did before moves).
    End,
    /// Replace `lost` now (with a spare, if the lease lends one; else End).
    Replace,
    /// Wait for the requester's own link to `lost`: if it fails too within
    /// the silence timeout, `lost` is gone and moves; if it holds, the two
    /// cannot reach each other, and the report ends the relay.
    Suspect,
}

/// Whether nothing else is under way in the relay — no failure heard, no
/// slot named, moving, moved or waiting to move (one move a relay), none
/// found slow — so a slot may be replaced now.
fn nothing_under_way(
    reports: &[Report],
    named: &Option<Named>,
    moving: &Option<Moving>,
    moved: &Option<MovedSlot>,
    slow: &Option<(usize, PeerAddr)>,
    awaiting: &Option<Awaiting>,
) -> bool {
    reports.is_empty() && named.is_none() && moving.is_none() && moved.is_none() && slow.is_none() && awaiting.is_none()
}

/// A slot caught with no spare lent ([`done_peer`] had none yet): the
/// first slot done lends its peer. The slots that caught it hold
/// meanwhile, for as long as their patience lasts (twice the requester's
/// silence timeout, at least the worker's I/O timeout); the rest of the
/// relay goes on.
struct Awaiting {
    slot: usize,
    why: String,
    /// What ends the relay if it ends first.
    report: Report,
}

/// The peer of a slot done with all its roles that can take slot `slot`'s
/// (the first such, by slot): a peer of the job's own lease, as the direct
/// plan's redos use, when the tracker lends no spare. Not `slot`'s own
/// peer (a worker holding two slots of the job), nor a slot not done: its
/// peer's compute slot is its own. A done slot holds no compute slot (it
/// only keeps its product panels), so its worker takes a second slot of
/// the job under the lease's ticket.
fn done_peer(stats: &[Option<RelayStats>], peers: &[PeerAddr; 7], slot: usize) -> Option<PeerAddr> {
    (0..SLOTS)
        .find(|&j| j != slot && stats[j].is_some() && peers[j].peer_id != peers[slot].peer_id)
        .map(|j| peers[j].clone())
}

/// Decides [`OnPeerLost`]. `replacing`: the slots named, moving or moved
/// (one replacement a relay). `free`: the lease may lend a spare, nothing
/// else has gone wrong, nothing is being replaced. `done`: `lost` said it
/// is done. A slot done is replaced only on evidence: a reducer may catch
/// it by a product panel after it finished (its panels waited for the
/// checks), and its spare computes the product again; a done slot's
/// links closing is no news.
fn on_peer_lost(
    by: usize,
    lost: usize,
    evidence: bool,
    replacing: &[Option<usize>],
    free: bool,
    done: bool,
) -> OnPeerLost {
    if lost >= SLOTS || lost == by {
        OnPeerLost::OffPlan
    } else if replacing.contains(&Some(lost)) {
        OnPeerLost::Moot
    } else if !free || (done && !evidence) {
        OnPeerLost::End
    } else if evidence {
        OnPeerLost::Replace
    } else {
        OnPeerLost::Suspect
    }
}

/// How long, at least, the other slots have to take a move: they answer
/// at once, but `Moved` reaches them behind what the requester's sockets
/// already hold (seconds behind a congested requester link: 1.0-2.0 s at
/// 30 Mbit/s in the namespace tests), so the patience is also never
/// shorter than the silence timeout, within which any slot's word is due.
const MOVE_PATIENCE: Duration = Duration::from_secs(2);

/// What a spare taking a slow slot's roles is handed: the slot's plan
/// (its own address in it, `generation` 1), and R.
struct TakeOver<T> {
    plan: RelayPlan,
    spare: PeerAddr,
    limits: ConnLimits,
    r: Arc<Array2<T>>,
    meter: Arc<AtomicU64>,
}

/// Connects to the spare taking slot `feed.slot`'s roles, hands it the
/// slot's plan and R, and then every panel of each quadrant the slot
/// uses, in send order (the other slots no longer forward to it; it
/// forwards what it holds); its link is then served as any slot's.
async fn take_over<T: Element>(
    feed: Feeding<T>,
    over: TakeOver<T>,
    ctl: mpsc::UnboundedReceiver<Ctl<T>>,
    io_timeout: Duration,
    heard: mpsc::UnboundedSender<(u8, Heard)>,
    received: Arc<AtomicU64>,
) {
    let (slot, generation) = (feed.slot, feed.generation);
    let TakeOver { plan, spare, limits, r, meter } = over;
    let addr = spare.addr.clone();
    let conn = async {
        let mut conn = Connection::connect(&addr, Role::Client, limits)
            .await
            .map_err(|e| e.naming(|| format!("the worker at {addr}")))?;
        conn.writer.set_meter(Some(meter));
        super::present(&mut conn.writer, spare.ticket.clone()).await?;
        conn.writer.send(&WorkerRequest::Relay(plan)).await?;
        let part = PartId { block: Block::Vectors, panel: 0 };
        conn.writer.send_blocks(part.task_id(), BlockOp::Part, &[T::view(r.view())]).await?;
        Ok::<_, Error>(conn)
    };
    let conn = match deadline(io_timeout, "the spare to take its plan", conn).await {
        Ok(conn) => conn,
        Err(e) => {
            let why = format!("the spare at {addr} could not take the slot's plan: {e}");
            let _ = heard.send((generation, Heard::Lost(slot, why)));
            return;
        }
    };
    // (Aborted with this task.)
    let mut inner = tokio::task::JoinSet::new();
    inner.spawn(read_slot::<T>(slot, generation, conn.reader, feed.plan.clone(), heard.clone(), received));
    let uses = |p: &PartId| p.block.input_index().is_some_and(|x| relay::users(x).any(|(u, _)| u == slot));
    let parts: Vec<PartId> =
        send_order(feed.plan.a_panels(), feed.plan.b_panels()).into_iter().filter(|p| uses(p)).collect();
    let (tx, rx) = mpsc::channel::<Send>(2);
    inner.spawn(async move {
        for part in parts {
            if tx.send(Send::Part(part)).await.is_err() {
                return;
            }
        }
    });
    feed_slot(feed, conn.writer, rx, ctl, io_timeout, heard).await;
}

/// What one slot's writer sends from: the slot, its generation (0, or 1
/// for a spare its roles moved to), the inputs and the plan.
struct Feeding<T> {
    slot: usize,
    generation: u8,
    a: Arc<Store<T>>,
    b: Arc<Store<T>>,
    split: Split,
    plan: Arc<RelayPlan>,
}

/// A slot's link's writer: what `rx` hands it (see [`write_slot`]) and
/// the control messages `ctl` does, then — keeping the write side open,
/// since closing it ends the job on the slot — `Alive` now and then, and
/// control messages, until the relay drops it.
async fn feed_slot<T: Element>(
    feed: Feeding<T>,
    writer: FrameWriter<OwnedWriteHalf>,
    rx: mpsc::Receiver<Send>,
    mut ctl: mpsc::UnboundedReceiver<Ctl<T>>,
    io_timeout: Duration,
    heard: mpsc::UnboundedSender<(u8, Heard)>,
) {
    let (slot, generation) = (feed.slot, feed.generation);
    match write_slot(writer, rx, &mut ctl, &feed, io_timeout).await {
        Ok(mut writer) => {
            let _ = heard.send((generation, Heard::Written(slot)));
            loop {
                let said = tokio::select! {
                    () = tokio::time::sleep(relay::ALIVE_EVERY) => alive(&mut writer, io_timeout).await,
                    Some(ctl) = ctl.recv() => say(&mut writer, ctl, io_timeout).await,
                };
                if said.is_err() {
                    // The reader hears why; the link stays as it is.
                    std::future::pending::<()>().await;
                }
            }
        }
        Err(e) => drop(heard.send((generation, Heard::WriteFailed(slot, format!("sending to it failed: {e}"))))),
    }
}

/// A slot's link's reader: what the slot says, as [`Heard`], until the
/// link ends (its last word, a failure, is heard too).
async fn read_slot<T: Element>(
    slot: usize,
    generation: u8,
    mut reader: FrameReader<OwnedReadHalf>,
    plan: Arc<RelayPlan>,
    heard: mpsc::UnboundedSender<(u8, Heard)>,
    received: Arc<AtomicU64>,
) {
    reader.set_admit(Some(admit_from(plan, slot)));
    // A slot says `RelayLost` once per other slot and generation: more is
    // a slot flooding the requester.
    let mut lost_said = 0;
    loop {
        let event = match reader.read_frame().await {
            Ok(Some(Frame::Blocks(blk))) if blk.op == BlockOp::Part => {
                let shape = blk.mats.first().map(|m| m.shape()).unwrap_or((0, 0));
                received.fetch_add(relay::part_frame_len(T::DTYPE, shape), Ordering::Relaxed);
                match (PartId::from_task_id(blk.task_id), blk.mats.into_iter().next()) {
                    (Ok(part), Some(m)) => Heard::Part(slot, part, m),
                    _ => Heard::Lost(slot, "sent a malformed part".into()),
                }
            }
            Ok(Some(Frame::Control(body))) => {
                received.fetch_add(body.as_bytes().len() as u64 + 5, Ordering::Relaxed);
                match body.decode::<WorkerReply>() {
                    Ok(WorkerReply::Working) => continue,
                    Ok(WorkerReply::RelayProgress { inputs, computed, arrived, at_us }) => {
                        Heard::Progress(slot, inputs, computed, arrived, at_us)
                    }
                    Ok(WorkerReply::RelayDone(stats)) => Heard::Done(slot, stats),
                    // (Its words are shown and logged: sanitized.)
                    Ok(WorkerReply::RelayFailed { blame, message, evidence }) => {
                        Heard::Failed(slot, blame, sanitized(&message), evidence)
                    }
                    Ok(WorkerReply::MovedAck { slot: moved, refused }) => {
                        Heard::MovedAck(slot, usize::from(moved), refused.as_deref().map(sanitized))
                    }
                    Ok(WorkerReply::RelayLost { slot: lost, message, evidence, wrong_product })
                        if lost_said < 2 * SLOTS =>
                    {
                        lost_said += 1;
                        Heard::PeerLost(
                            slot,
                            usize::from(lost),
                            sanitized(&message),
                            evidence,
                            evidence && wrong_product,
                        )
                    }
                    Ok(WorkerReply::Error(f)) => Heard::Failed(slot, None, sanitized(&f.message), false),
                    Ok(other) => Heard::Lost(slot, format!("sent {}", septet_common::proto::Control::kind(&other))),
                    Err(e) => Heard::Lost(slot, e.to_string()),
                }
            }
            Ok(Some(Frame::Blocks(_))) => Heard::Lost(slot, "sent blocks that are not a part".into()),
            Ok(None) => Heard::Lost(slot, "closed the connection".into()),
            Err(Error::Invalid(why)) => Heard::OffPlan(slot, why),
            Err(e) => Heard::Lost(slot, e.to_string()),
        };
        // (A slot done keeps its link, and answers moves, until the relay drops it.)
        let last = matches!(event, Heard::Failed(..) | Heard::Lost(..) | Heard::OffPlan(..));
        if heard.send((generation, event)).is_err() || last {
            return;
        }
    }
}

/// Writes what the sequencer hands this slot: its held panels and the
/// digests of what it receives by forward.
async fn write_slot<T: Element>(
    mut writer: FrameWriter<OwnedWriteHalf>,
    mut rx: mpsc::Receiver<Send>,
    ctl: &mut mpsc::UnboundedReceiver<Ctl<T>>,
    feed: &Feeding<T>,
    io_timeout: Duration,
) -> septet_common::Result<FrameWriter<OwnedWriteHalf>> {
    let Feeding { a, b, split, plan, .. } = feed;
    loop {
        let send = tokio::select! {
            // A move (`Moved`) goes ahead of the parts still to write: the
            // other slots answer it sooner.
            biased;
            Some(ctl) = ctl.recv() => {
                say(&mut writer, ctl, io_timeout).await?;
                continue;
            }
            send = rx.recv() => match send {
                Some(send) => send,
                None => break,
            },
            // Nothing to send for a while (the other slots' parts go
            // first): say so, or the slot takes the requester for gone.
            () = tokio::time::sleep(relay::ALIVE_EVERY) => {
                alive(&mut writer, io_timeout).await?;
                continue;
            }
        };
        match send {
            Send::Digests(d) => {
                deadline(io_timeout, "a slot to take digests", writer.send(&WorkerRequest::Digests(d))).await?
            }
            Send::Part(part) => {
                let data = part_of(a, b, *split, plan, part);
                let len = relay::part_frame_len(T::DTYPE, data.view().dim());
                let limit = io_timeout + Duration::from_secs_f64(len as f64 / 1e6);
                deadline(
                    limit,
                    "a slot to take a panel",
                    writer.send_blocks(part.task_id(), BlockOp::Part, &[T::view(data.view())]),
                )
                .await?;
            }
        }
    }
    Ok(writer)
}

/// A slot's account of the group it delegated to, as far as the requester
/// takes it: only from a slot it gave a group, naming that group's peers
/// (not whichever the slot names: they are reported to the tracker if
/// blamed), one blame per sub-slot, quadrants 0..4 once each, its words
/// sanitized.
fn own_group(mut d: Delegated, group: Option<&[PeerAddr; 7]>) -> Option<Delegated> {
    let group = group?;
    d.failure = d.failure.as_deref().map(sanitized);
    d.slots.truncate(SLOTS);
    for (sub, peer) in d.slots.iter_mut().zip(group) {
        sub.peer_id = peer.peer_id;
        sub.addr.clone_from(&peer.addr);
    }
    let (subs, mut blamed) = (d.slots.len(), [false; SLOTS]);
    d.blamed.retain(|&(j, _)| {
        let j = usize::from(j);
        j < subs && !std::mem::replace(&mut blamed[j], true)
    });
    d.blamed.iter_mut().for_each(|(_, why)| *why = sanitized(why));
    d.computed_here.sort_unstable();
    d.computed_here.dedup();
    d.computed_here.retain(|&q| q < 4);
    Some(d)
}

/// Refuses, from its header alone, a blocks frame from `slot` that is not
/// a part it may send the requester by `plan` — a panel of the C quadrant
/// it reduces, or its own fingerprint — in the plan's shape and dtype:
/// nothing is allocated for it, nor read. ([`Gather::take`] checks the
/// rest: each part once, in its quadrant's turn.)
fn admit_from(plan: Arc<RelayPlan>, slot: usize) -> Admit {
    Admit(Arc::new(move |header: &BlocksHeader| {
        let part = plan.part_of(header).map_err(Error::Invalid)?;
        let its = match part.block {
            Block::C(q) => plan.roles.reducers[q.index()] as usize == slot,
            Block::Fingerprint(i) => i == slot,
            _ => false,
        };
        if !its {
            return Err(Error::Invalid(format!("sent {}, which is not its to send", part.name())));
        }
        Ok(())
    }))
}

/// `slot` sent a part off the plan (`why`): one report on evidence against
/// it, the first time (what it sends after is not looked at).
fn off_plan(caught: &mut [bool; SLOTS], reports: &mut Vec<Report>, slot: usize, why: String) {
    if !std::mem::replace(&mut caught[slot], true) {
        let summary = format!("slot {slot}: {why}");
        reports.push(Report { at_fault: slot, by: None, summary, why, evidence: true });
    }
}

/// What goes to a slot ahead of the parts still to write.
enum Ctl<T> {
    /// A control message (`Moved`).
    Say(WorkerRequest),
    /// The checks of the products it is sent.
    Checks(Arc<SlotChecks<T>>),
}

/// Writes `ctl` to a slot.
async fn say<T: Element>(
    writer: &mut FrameWriter<OwnedWriteHalf>,
    ctl: Ctl<T>,
    io_timeout: Duration,
) -> septet_common::Result<()> {
    deadline(io_timeout, "a slot to take a control message", async {
        match ctl {
            Ctl::Say(request) => writer.send(&request).await,
            Ctl::Checks(c) => {
                writer.send(&WorkerRequest::Checks { seed: c.seed, tolerance: c.tolerance.clone() }).await?;
                for (i, e) in &c.expect {
                    let part = PartId { block: Block::Expect(*i), panel: 0 };
                    writer.send_blocks(part.task_id(), BlockOp::Part, &[T::view(e.view())]).await?;
                }
                Ok(())
            }
        }
    })
    .await
}

/// What a reducer checks the product panels it is sent with
/// ([`RelayPlan::checks`]): the seed of its secret vector s, and for each
/// product it is sent X·(Y·s) and the tolerance.
struct SlotChecks<T> {
    seed: [u8; 32],
    tolerance: Vec<f64>,
    expect: Vec<(usize, Array2<T>)>,
}

/// Slot `slot`'s checks, from the prepared check `v` (the columns of R
/// past `2·rounds` are the reducers' secret vectors, one per quadrant,
/// formed from `seeds`; a slot that reduces two uses its first one's):
/// `None` for a slot sent no product. Without a check (it could not be
/// prepared) the tolerances are infinite, and the slot folds in what it
/// is sent as it comes.
fn slot_checks<T: Element>(
    v: Option<&Verifier<T>>,
    seeds: &[[u8; 32]; 4],
    plan: &RelayPlan,
    slot: usize,
    rounds: usize,
) -> Option<Arc<SlotChecks<T>>> {
    let products = plan.checked_products(slot);
    let q = plan.roles.reduced_by(slot).first()?.index();
    if products.is_empty() {
        return None;
    }
    let cols = 2 * rounds + q * relay::KEY_COLUMNS..2 * rounds + (q + 1) * relay::KEY_COLUMNS;
    let (mh, _, _) = plan.split().half();
    let (tolerance, expect) = products
        .iter()
        .map(|&i| match v {
            Some(v) => (v.tolerance(i), (i, v.expected(i).slice(s![.., cols.clone()]).to_owned())),
            None => (f64::INFINITY, (i, Array2::zeros((mh, relay::KEY_COLUMNS)))),
        })
        .unzip();
    Some(Arc::new(SlotChecks { seed: seeds[q], tolerance, expect }))
}

/// Tells a slot the requester is still there ([`WorkerRequest::Alive`]).
async fn alive(writer: &mut FrameWriter<OwnedWriteHalf>, io_timeout: Duration) -> septet_common::Result<()> {
    deadline(io_timeout, "a slot to take a keep-alive", writer.send(&WorkerRequest::Alive)).await
}

/// Where one C quadrant of a relayed job stands: what the gather loop
/// waits for, what falls due, what is checked and what goes the direct way
/// all read it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum QuadState {
    /// `left` panels still to come; `bytes` of it in.
    Arriving { left: usize, bytes: u64 },
    /// Every panel in, at `at`; not checked yet.
    In { at: tokio::time::Instant, bytes: u64 },
    /// Passed its check (or taken as is, with verification off).
    Verified,
    /// Failed its check, or could not be checked: computed the direct way.
    Refused,
}

impl QuadState {
    fn arriving(&self) -> bool {
        matches!(self, QuadState::Arriving { .. })
    }
}

/// Why a C quadrant was refused.
enum Check {
    NonFinite(NonFinite),
    Wrong(String),
}

/// C as it comes back: panels placed, their C·R formed as they arrive.
struct Gather<T> {
    plan: Arc<RelayPlan>,
    split: Split,
    /// Per quadrant: C_q·R for the rows in.
    cr: Vec<Array2<T>>,
    /// Where each quadrant stands.
    quads: [QuadState; 4],
    /// (slot, its generation, part) taken: by sender, so that a part
    /// another slot sent off the plan does not make the real sender's look
    /// like a repeat.
    seen: std::collections::HashSet<(usize, u8, u64)>,
    /// Each slot's generation: 1 once its roles moved ([`Gather::moved`]).
    generation: [u8; SLOTS],
    /// C panels placed (part ids): a moved reducer's spare sends its
    /// quadrants whole, and what its old peer sent first is kept.
    placed: std::collections::HashSet<u64>,
    fingerprints: HashMap<usize, Array2<T>>,
    /// All the job's vectors, public and secret.
    r: Array2<T>,
}

impl<T: Element> Gather<T> {
    fn new(plan: &Arc<RelayPlan>, split: Split, r: Array2<T>) -> Self {
        let (mh, _, _) = split.half();
        let columns = r.ncols();
        let panels = plan.a_panels().count();
        Self {
            plan: plan.clone(),
            split,
            cr: (0..4).map(|_| Array2::zeros((mh, columns))).collect(),
            quads: [QuadState::Arriving { left: panels, bytes: 0 }; 4],
            seen: Default::default(),
            generation: [0; SLOTS],
            placed: Default::default(),
            fingerprints: HashMap::new(),
            r,
        }
    }

    /// Takes a part from `slot`: a C panel goes into C, a fingerprint is
    /// kept. Returns the quadrant and its bytes when this was its last panel.
    fn take(
        &mut self,
        slot: usize,
        part: PartId,
        m: septet_common::Matrix,
        c: &Mutex<Store<T>>,
    ) -> Result<Option<(Quad, u64)>, String> {
        let id = part.task_id().0;
        if Some(m.shape()) != self.plan.part_shape(part) || !self.seen.insert((slot, self.generation[slot], id)) {
            return Err(format!("sent {} of shape {:?} (or twice)", part.name(), m.shape()));
        }
        if self.generation[slot] > 0 && self.placed.contains(&id) {
            // The spare's copy of a panel the slot's old peer sent.
            return Ok(None);
        }
        let m = T::from_matrix(m).map_err(|_| "sent a part of the wrong dtype".to_string())?;
        match part.block {
            Block::C(q) if self.plan.roles.reducers[q.index()] as usize == slot => {
                let qi = q.index();
                let rows = self.plan.a_panels().range(part.panel as usize);
                let QuadState::Arriving { left, bytes } = self.quads[qi] else {
                    return Err(format!("sent {} after all of C{}", part.name(), q.suffix()));
                };
                let bytes = bytes + relay::part_frame_len(T::DTYPE, m.dim());
                // Place the real part of the panel in C.
                let (mh, _, nh) = self.split.half();
                let (row0, col0) = match q {
                    Quad::Q11 => (0, 0),
                    Quad::Q12 => (0, nh),
                    Quad::Q21 => (mh, 0),
                    Quad::Q22 => (mh, nh),
                };
                let real_rows = (self.split.m.saturating_sub(row0)).min(mh);
                let real_cols = (self.split.n.saturating_sub(col0)).min(nh);
                self.placed.insert(id);
                let take = rows.start.min(real_rows)..rows.end.min(real_rows);
                if !take.is_empty() && real_cols > 0 {
                    let src = m.slice(s![..take.len(), ..real_cols]);
                    c.lock()
                        .view_mut()
                        .slice_mut(s![row0 + take.start..row0 + take.end, col0..col0 + real_cols])
                        .assign(&src);
                }
                matmul_into(self.cr[qi].slice_mut(s![rows, ..]), m.view(), self.r.view(), false, faer::Par::Seq)
                    .map_err(|e| e.to_string())?;
                // Placed and fingerprinted: its buffer can take the next panel read.
                septet_common::matrix::recycle(m);
                if left > 1 {
                    self.quads[qi] = QuadState::Arriving { left: left - 1, bytes };
                    return Ok(None);
                }
                self.quads[qi] = QuadState::In { at: tokio::time::Instant::now(), bytes };
                Ok(Some((q, bytes)))
            }
            Block::Fingerprint(i) if i == slot => {
                self.fingerprints.insert(i, m);
                Ok(None)
            }
            _ => Err(format!("sent {}, which is not its to send", part.name())),
        }
    }

    /// Whether slot `slot`'s roles could move now, as far as C says: it
    /// is not all in, and the slot has not moved already. (Slots done
    /// keep the product panels they sent it; the other slots have their
    /// own say.)
    fn may_move(&self, slot: usize) -> bool {
        slot < SLOTS && self.generation[slot] == 0 && self.quads.iter().any(QuadState::arriving)
    }

    /// Quadrant `q` failed its check by its reducer's sum: it comes again,
    /// whole, from the reducer's spare.
    fn redo(&mut self, q: Quad) {
        let panels = self.plan.a_panels().count();
        self.quads[q.index()] = QuadState::Arriving { left: panels, bytes: 0 };
        for panel in 0..panels {
            self.placed.remove(&PartId { block: Block::C(q), panel: panel as u32 }.task_id().0);
        }
        self.cr[q.index()].fill(T::zero());
    }

    /// Slot `slot`'s roles moved: what it sends from now on is its spare's
    /// (C panels its old peer sent are kept, the spare's copies set aside).
    fn moved(&mut self, slot: usize) {
        self.generation[slot] += 1;
        // (Its new peer's fingerprint speaks for the product now.)
        self.fingerprints.remove(&slot);
    }

    /// Checks C quadrant `q`: C_q·r against Σ ±X_i·(Y_i·r) over the
    /// products feeding it, for every column of r (public and secret),
    /// within the sum of the products' tolerances.
    fn check(&self, q: Quad, v: &Verifier<T>) -> Result<(), Check> {
        let cr = &self.cr[q.index()];
        let mut expected = Array2::<T>::zeros(cr.dim());
        let mut tolerance = 0.0;
        for (i, sign) in relay::feeders(q) {
            // (Its columns of R: the reducers' own vectors are left out.)
            let want = v.expected(i);
            let want = want.slice(s![.., ..cr.ncols()]);
            match sign {
                septet_common::strassen::Sign::Plus => expected += &want,
                septet_common::strassen::Sign::Minus => expected -= &want,
            }
            tolerance += v.tolerance(i);
        }
        compare(cr.view(), expected.view(), tolerance).map_err(|e| match e {
            Compare::NonFinite(cause) => Check::NonFinite(cause),
            Compare::Off { worst, row } => Check::Wrong(format!(
                "|C{}·r − Σ X·(Y·r)| is {worst:.3e} in row {row} (tolerance {tolerance:.3e})",
                q.suffix()
            )),
        })
    }

    /// Whether product `i`'s fingerprint (M·r for the public columns of r)
    /// disagrees with the requester's X·(Y·r). A fingerprint that never
    /// came blames nobody.
    fn fingerprint_wrong(&self, i: usize, v: &Verifier<T>, rounds: usize) -> bool {
        let Some(fp) = self.fingerprints.get(&i) else { return false };
        let expected = v.expected(i);
        compare(fp.view(), expected.slice(s![.., ..rounds]), v.tolerance(i)).is_err()
    }
}

fn slot_reports(
    plan: &RelayPlan,
    peers: &[PeerAddr; 7],
    groups: &[[PeerAddr; 7]],
    stats: &[Option<RelayStats>],
    meters: &[Arc<AtomicU64>],
    plans_sent: [f64; SLOTS],
) -> Vec<SlotReport> {
    (0..SLOTS)
        .map(|slot| {
            let at = |us: u64| (us > 0).then(|| plans_sent[slot] + us as f64 / 1e6);
            let s = stats[slot].clone().unwrap_or_default();
            // (Saturating: the counts are the slot's word.)
            let sum = |v: &[u64]| v.iter().fold(0u64, |a, &b| a.saturating_add(b));
            SlotReport {
                slot,
                product: septet_common::strassen::PRODUCTS[slot].name,
                peer: peers[slot].clone(),
                holds: (0..8)
                    .filter(|&x| plan.roles.holders[x] as usize == slot)
                    .map(|x| if x < 4 { Block::A(Quad::ALL[x]) } else { Block::B(Quad::ALL[x - 4]) }.name())
                    .collect(),
                reduces: plan.roles.reduced_by(slot).into_iter().map(|q| format!("C{}", q.suffix())).collect(),
                bytes_in: sum(&s.bytes_in),
                bytes_out: sum(&s.bytes_out),
                from_requester: meters.get(slot).map_or(0, |m| m.load(Ordering::Relaxed)),
                to_requester: s.bytes_out.get(SLOTS).copied().unwrap_or(0),
                compute_s: s.compute_us as f64 / 1e6,
                inputs_done_s: at(s.inputs_done_us),
                compute_start_s: at(s.compute_start_us),
                compute_end_s: at(s.compute_end_us),
                reduce_start_s: at(s.reduce_start_us),
                done_s: at(s.done_us),
                delegated: s.delegated.and_then(|d| own_group(d, groups.get(slot))),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_move_goes_ahead_once_every_other_slot_took_it_or_is_gone_owing_it_nothing() {
        let roles = Roles::choose(Split::of((64, 64), (64, 64)).unwrap());
        // A reducer that another slot sends its product to, and a slot that does not.
        let slot = (0..SLOTS).find(|&s| (0..SLOTS).any(|j| j != s && roles.product_targets(j).contains(&s))).unwrap();
        let feeder = (0..SLOTS).find(|&j| j != slot && roles.product_targets(j).contains(&slot)).unwrap();
        let bystander = (0..SLOTS).find(|&j| j != slot && !roles.product_targets(j).contains(&slot)).unwrap();
        let spare = PeerAddr { peer_id: septet_common::proto::PeerId(9), addr: "10.0.0.9:1".into(), ticket: None };
        let start = || Moving {
            slot,
            spare: spare.clone(),
            why: "slow".into(),
            kind: Kind::Slow,
            acks: [false; SLOTS],
            until: tokio::time::Instant::now(),
        };
        let mut m = start();
        for j in (0..SLOTS).filter(|&j| j != slot && j != bystander) {
            assert!(!m.answered());
            assert_eq!(m.heard(j, slot, Word::Took, &roles), None);
            // Not this move's words.
            assert_eq!(m.heard(j, (slot + 1) % SLOTS, Word::Refused("no".into()), &roles), None);
            assert_eq!(m.heard(slot, slot, Word::Refused("no".into()), &roles), None);
        }
        assert!(!m.answered());
        // Done and gone, owing the slot nothing: as good as taken.
        assert_eq!(m.heard(bystander, slot, Word::Gone, &roles), None);
        assert!(m.answered());
        // Gone after taking the move: fine; gone before, with the product it owes the slot: off.
        assert_eq!(m.heard(feeder, slot, Word::Gone, &roles), None);
        let mut m = start();
        assert!(m.heard(feeder, slot, Word::Gone, &roles).is_some_and(|why| why.contains("owes")));
        let mut m = start();
        assert!(m.heard(bystander, slot, Word::Refused("took its product".into()), &roles).is_some());
    }

    #[test]
    fn a_link_waits_unanswered_only_while_the_same_segments_wait() {
        let t0 = tokio::time::Instant::now();
        let later = t0 + Duration::from_secs(3);
        let info = |unacked, bytes_acked| SendInfo {
            bytes_acked,
            rtt: Duration::from_millis(1),
            unacked,
            since_ack: Duration::from_secs(3),
        };
        assert_eq!(waiting_since(None, info(0, 10), t0), None);
        let first = waiting_since(None, info(2, 10), t0);
        assert_eq!(first, Some((t0, 10)));
        // Nothing more acknowledged: it has waited since then.
        assert_eq!(waiting_since(first, info(3, 10), later), Some((t0, 10)));
        // An acknowledgement came meanwhile (whatever was sent since): the wait starts again.
        assert_eq!(waiting_since(first, info(1, 11), later), Some((later, 11)));
        assert_eq!(waiting_since(first, info(0, 10), later), None);
    }

    #[test]
    fn a_slot_lost_by_another_is_replaced_on_evidence_else_waited_for_and_never_twice() {
        use OnPeerLost::*;
        let none = [None, None, None];
        // Free to replace: on evidence at once; a broken link waits for the requester's own.
        assert_eq!(on_peer_lost(1, 2, true, &none, true, false), Replace);
        assert_eq!(on_peer_lost(1, 2, false, &none, true, false), Suspect);
        // A slot done: caught (a wrong product panel that waited for the
        // checks), replaced; a broken link with it is no news.
        assert_eq!(on_peer_lost(1, 2, true, &none, true, true), Replace);
        assert_eq!(on_peer_lost(1, 2, false, &none, true, true), End);
        // Not free (no spare, another failure, another move): as before.
        assert_eq!(on_peer_lost(1, 2, true, &none, false, false), End);
        assert_eq!(on_peer_lost(1, 2, false, &none, false, false), End);
        // Of a slot being replaced: its old peer's, whichever stage.
        for stage in 0..3 {
            let mut replacing = none;
            replacing[stage] = Some(2);
            assert_eq!(on_peer_lost(1, 2, true, &replacing, false, false), Moot);
            assert_eq!(on_peer_lost(1, 2, false, &replacing, true, true), Moot);
        }
        // A slot naming itself, or no slot of the job.
        assert_eq!(on_peer_lost(3, 3, true, &none, true, false), OffPlan);
        assert_eq!(on_peer_lost(3, SLOTS, false, &none, true, false), OffPlan);
        assert_eq!(on_peer_lost(3, 255, false, &[None, Some(255), None], true, false), OffPlan);
    }

    #[test]
    fn a_failed_quadrant_is_blamed_on_wrong_fingerprints_else_on_its_reducer() {
        // C11 = M1 + M4 − M5 + M7 (slots 0, 3, 4, 6), reduced by slot 3.
        assert_eq!(culprits(Quad::Q11, 3, None, |_| false), [3]);
        assert_eq!(culprits(Quad::Q11, 3, None, |i| i == 6), [6]);
        assert_eq!(culprits(Quad::Q11, 3, None, |i| i == 0 || i == 4), [0, 4]);
        // A wrong fingerprint of a product that does not feed C12 (M3 + M5) blames nobody there.
        assert_eq!(culprits(Quad::Q12, 4, None, |i| i == 0), [4]);
        // A slot that moved fed it, or reduced it: its old peer's panels may be the wrong ones.
        assert_eq!(culprits(Quad::Q11, 3, Some(6), |_| false), Vec::<usize>::new());
        assert_eq!(culprits(Quad::Q11, 3, Some(3), |_| false), Vec::<usize>::new());
        assert_eq!(culprits(Quad::Q11, 3, Some(6), |i| i == 0), [0]);
        // One that had no hand in it does not excuse its reducer.
        assert_eq!(culprits(Quad::Q11, 3, Some(1), |_| false), [3]);
    }

    #[test]
    fn a_part_sent_off_the_plan_does_not_make_the_real_senders_look_repeated() {
        let plan = Arc::new(RelayPlan::example(8, 2));
        let (split, roles) = (plan.split(), plan.roles);
        let mut gather = Gather::<f64>::new(&plan, split, Verifier::<f64>::draw(split, 2));
        let c = Mutex::new(Store::<f64>::zeros((8, 8)));
        let reducer = roles.reducers[Quad::Q11.index()] as usize;
        let other = (reducer + 1) % SLOTS;
        let part = PartId { block: Block::C(Quad::Q11), panel: 0 };
        let panel = || septet_common::Matrix::F64(Array2::from_elem((2, 4), 1.0));
        let err = gather.take(other, part, panel(), &c).unwrap_err();
        assert!(err.contains("not its to send"), "{err}");
        // The reducer's own panel is taken; the same panel from it again is not.
        assert_eq!(gather.take(reducer, part, panel(), &c), Ok(None));
        assert!(gather.take(reducer, part, panel(), &c).unwrap_err().contains("twice"));
        assert_eq!(c.lock().view()[[1, 3]], 1.0);
    }

    #[test]
    fn a_slot_may_send_the_requester_only_its_own_c_panels_and_fingerprint() {
        let plan = Arc::new(RelayPlan::example(8, 2));
        let reducer = plan.roles.reducers[Quad::Q12.index()] as usize;
        let other = (reducer + 1) % SLOTS;
        let header = |block, panel, dtype, shapes: Vec<(usize, usize)>| BlocksHeader {
            task_id: PartId { block, panel }.task_id(),
            op: BlockOp::Part,
            dtype,
            shapes,
        };
        let check = |slot, h: &BlocksHeader| (admit_from(plan.clone(), slot).0)(h);
        let f64 = septet_common::Dtype::F64;
        check(reducer, &header(Block::C(Quad::Q12), 1, f64, vec![(2, 4)])).unwrap();
        check(other, &header(Block::Fingerprint(other), 0, f64, vec![(4, 2)])).unwrap();
        for (slot, h) in [
            (other, header(Block::C(Quad::Q12), 1, f64, vec![(2, 4)])),
            (reducer, header(Block::C(Quad::Q12), 1, f64, vec![(1 << 15, 1 << 15)])),
            (reducer, header(Block::C(Quad::Q12), 2, f64, vec![(2, 4)])),
            (reducer, header(Block::C(Quad::Q12), 1, septet_common::Dtype::F32, vec![(2, 4)])),
            (reducer, header(Block::C(Quad::Q12), 1, f64, vec![(2, 4), (2, 4)])),
            (reducer, header(Block::Fingerprint(other), 0, f64, vec![(4, 2)])),
            (reducer, header(Block::A(Quad::Q11), 0, f64, vec![(2, 4)])),
        ] {
            let refused = check(slot, &h).unwrap_err();
            assert!(matches!(refused, Error::Invalid(_)), "{h:?}: {refused}");
        }
    }

    #[test]
    fn a_slots_account_of_its_group_names_the_group_it_was_given_once_each() {
        use septet_common::proto::SubSlot;
        let peer = |i: u64| PeerAddr { peer_id: septet_common::PeerId(i), addr: format!("10.0.0.{i}:1"), ticket: None };
        let group: [PeerAddr; 7] = std::array::from_fn(|i| peer(100 + i as u64));
        let sub = |i: u64| SubSlot {
            peer_id: septet_common::PeerId(i),
            addr: "1.2.3.4:5".into(),
            bytes_in: 0,
            bytes_out: 0,
            compute_us: 0,
            done: true,
        };
        // 300 sub-slots naming other peers, and blame of sub-slots 0, 255 and 0 again.
        let told = Delegated {
            slots: (0..300).map(sub).collect(),
            computed_here: vec![3, 9, 3, 0],
            blamed: vec![(0, "a".into()), (255, "b".into()), (0, "c".into()), (6, "d\u{1b}[2J".into())],
            failure: None,
            bytes_sent: 0,
            bytes_received: 0,
            took_us: 0,
        };
        assert_eq!(own_group(told.clone(), None), None, "no group was given");
        let d = own_group(told, Some(&group)).unwrap();
        assert_eq!(d.slots.len(), 7);
        assert!(d.slots.iter().zip(&group).all(|(s, p)| s.peer_id == p.peer_id && s.addr == p.addr));
        assert_eq!(d.blamed, [(0, "a".to_string()), (6, "d\\u{1b}[2J".to_string())], "one each, escaped");
        assert_eq!(d.computed_here, [0, 3]);
    }

    #[test]
    fn evidence_is_believed_over_broken_links_and_a_slot_that_gave_up_explains_its_closed_links() {
        let r = |at_fault, by, evidence| Report { at_fault, by, summary: String::new(), why: String::new(), evidence };
        assert!(believed(&[]).is_empty());
        // Slot 2 saw slot 0's link close, because slot 0 caught slot 5 lying.
        assert_eq!(believed(&[r(0, Some(2), false), r(5, Some(0), true), r(5, Some(4), true)]), [1, 2]);
        // Slot 5's link broke under slot 0 (no evidence), so slot 0 gave up and
        // closed its links: slot 2's report on slot 0 is explained by slot 0's.
        assert_eq!(believed(&[r(0, Some(2), false), r(5, Some(0), false), r(0, Some(6), false)]), [1]);
        // The requester lost slot 3 itself: nothing explains that away.
        assert_eq!(believed(&[r(3, None, false), r(3, Some(1), false)]), [0]);
        // Two slots that blame each other: the first report.
        assert_eq!(believed(&[r(1, Some(4), false), r(4, Some(1), false)]), [0]);
    }

    fn feed(held: u64, written: u64, going_ms: Option<u64>, done: bool) -> Feed {
        Feed { held, written, going: going_ms.map(Duration::from_millis), done, rtt: None }
    }

    #[test]
    fn a_feed_slow_behind_the_requesters_own_queue_is_not_slow() {
        let mb = 1_000_000;
        let ms = |ms| Some(Duration::from_millis(ms));
        let mut feeds = vec![feed(8 * mb, mb / 4, Some(1000), false)];
        feeds.extend((0..6).map(|_| feed(8 * mb, 8 * mb, Some(800), true)));
        feeds.iter_mut().for_each(|f| f.rtt = ms(50));
        // Starved at a bottleneck it shares with the others (its round
        // trip is theirs): not slow.
        assert_eq!(slow_feed(&feeds), None);
        // Queued alone behind a slow link of its own: slow, and it says so.
        feeds[0].rtt = ms(120);
        let (slot, why) = slow_feed(&feeds).expect("slow");
        assert_eq!(slot, 0);
        assert!(why.contains("round trip 120 ms, the others' 50 ms"), "{why}");
        // Where the kernel does not time round trips, pace alone decides.
        feeds[0].rtt = None;
        assert_eq!(slow_feed(&feeds).map(|s| s.0), Some(0));
    }

    #[test]
    fn a_feed_far_slower_than_the_others_is_slow_once_observed_long_enough() {
        let mb = 1_000_000;
        let healthy = [feed(8 * mb, 8 * mb, Some(250), true), feed(8 * mb, 6 * mb, Some(200), false)];
        let slow = |written, ms| {
            let mut f = vec![feed(8 * mb, written, Some(ms), false)];
            f.extend(healthy.iter().copied().cycle().take(4));
            f
        };
        // 1 MB in 300 ms against 30-odd MB/s: slow, and it says how slow.
        let (slot, why) = slow_feed(&slow(mb, 300)).expect("slow");
        assert_eq!(slot, 0);
        assert!(why.contains("12% of its 8.0 MB in 0.30 s (3.3 MB/s"), "{why}");
        // Nothing at all reached it: slow too.
        assert_eq!(slow_feed(&slow(0, 300)).map(|s| s.0), Some(0));
        // Not yet observed long enough.
        assert_eq!(slow_feed(&slow(mb, 200)), None);
        // Only a little behind the others' pace (a third of it or more).
        assert_eq!(slow_feed(&slow(7 * mb / 2, 300)), None);
        // Nearly done: what it has left takes less than the margin.
        assert_eq!(slow_feed(&[&[feed(8 * mb, 7 * mb, Some(2000), false)][..], &slow(mb, 300)[1..]].concat()), None);
    }

    #[test]
    fn a_feed_is_judged_only_once_it_has_gone_out_as_long_as_the_done_ones_took() {
        let mb = 1_000_000;
        // On a 200 Mbit/s requester link the B holders' feeds took 1.3 s.
        let mut feeds: Vec<Feed> = (0..4).map(|_| feed(8 * mb, 8 * mb, Some(1300), true)).collect();
        feeds.push(feed(8 * mb, mb / 10, Some(500), false));
        feeds.push(feed(8 * mb, 2 * mb, Some(500), false));
        assert_eq!(slow_feed(&feeds), None);
        feeds[4].going = Some(Duration::from_millis(1400));
        assert_eq!(slow_feed(&feeds).map(|s| s.0), Some(4));
        // None done yet: nothing to judge by.
        feeds.iter_mut().take(4).for_each(|f| f.done = false);
        assert_eq!(slow_feed(&feeds), None);
    }

    #[test]
    fn a_feed_whose_round_trip_is_timed_is_judged_sooner_and_without_a_done_feed() {
        let mb = 1_000_000;
        let ms = |ms| Some(Duration::from_millis(ms));
        // 150 ms into the B quadrants' feeds, none done yet: the slow
        // one's link has taken 1 MB, the others 5 MB each.
        let mut feeds = vec![feed(8 * mb, mb, Some(150), false)];
        feeds.extend((0..4).map(|_| feed(8 * mb, 5 * mb, Some(150), false)));
        // By pace alone, nothing is judged before a feed is done.
        assert_eq!(slow_feed(&feeds), None);
        // Round trips timed, its own far the longest: slow at once.
        feeds.iter_mut().for_each(|f| f.rtt = ms(8));
        feeds[0].rtt = ms(50);
        let (slot, why) = slow_feed(&feeds).expect("slow");
        assert_eq!(slot, 0);
        assert!(why.contains("in 0.15 s") && why.contains("round trip 50 ms, the others' 8 ms"), "{why}");
        // Its round trip no longer than theirs: a queue they share, not slow.
        feeds[0].rtt = ms(9);
        assert_eq!(slow_feed(&feeds), None);
        // Timed, but not yet going out for FEED_OBSERVED_TIMED.
        feeds[0].rtt = ms(50);
        feeds[0].going = ms(100);
        assert_eq!(slow_feed(&feeds), None);
        // Fewer than three others timed: pace alone, which waits.
        feeds.iter_mut().skip(2).for_each(|f| f.rtt = None);
        feeds[0].going = ms(150);
        assert_eq!(slow_feed(&feeds), None);
    }

    fn progress(computed: usize, inputs: usize, age_ms: u64) -> Option<SlotProgress> {
        let b = [0, 0, 0, 0, 16, 16, 16, 16];
        let report = ProgressReport {
            inputs: inputs as u32,
            computed: computed as u32,
            arrived: b,
            at: Duration::from_millis(300),
            age: Duration::from_millis(age_ms),
            plan_in: Duration::from_millis(2),
        };
        // (Its operands in since its first report, at 0 ms.)
        let first = ProgressReport { at: Duration::ZERO, ..report };
        Some(SlotProgress::after(Some(SlotProgress::after(None, first, 16, 16)), report, 16, 16))
    }

    const MS: fn(u64) -> Duration = Duration::from_millis;

    /// Every slot's reports at `at_ms`: each quadrant of B's 16 panels
    /// first seen 20 ms after the plans went out, all of them by `all_ms`;
    /// but slot `s` has `b11` of B11's (the first seen at 40 ms), and its
    /// report is `age_ms` old.
    fn receiving(s: usize, b11: usize, at_ms: u64, all_ms: u64, age_ms: u64) -> [Option<SlotProgress>; SLOTS] {
        let mut all = [None; SLOTS];
        for (t, p) in all.iter_mut().enumerate() {
            let report = |at: u64, got: u32, age: u64| ProgressReport {
                inputs: 0,
                computed: 0,
                arrived: [0, 0, 0, 0, got, got, got, got],
                at: MS(at),
                age: MS(age),
                plan_in: MS(2),
            };
            let mut q = SlotProgress::after(None, report(20, 1, 20), 16, 16);
            q = SlotProgress::after(Some(q), report(all_ms, 16, 20), 16, 16);
            q = SlotProgress::after(Some(q), report(at_ms, 16, if t == s { age_ms } else { 20 }), 16, 16);
            if t == s {
                q.arrived[4] = b11;
                q.first[4] = (b11 > 0).then_some(MS(40));
                q.all[4] = None;
            }
            *p = Some(q);
        }
        all
    }

    #[test]
    fn a_slot_far_slower_than_the_others_to_take_a_quadrant_of_b_by_forward_is_slow() {
        // M4 (slot 3) holds B11 and forwards it to M1, M2 and M6 (slots
        // 0, 1, 5); M1 holds B22, M3 B12, M7 B21.
        let holders = [4, 4, 1, 6, 3, 2, 6, 0];
        // M2 (slot 1, which holds only A) has 2 of B11's 16 panels 0.28 s
        // after the first reached any of them; the others had all 80 ms
        // after (200 a second, their reports' spacing allowed for).
        let (slot, why) = slow_receiver(&receiving(1, 2, 300, 100, 50), holders, 16).expect("slow");
        assert_eq!(slot, 1);
        assert_eq!(
            why,
            "its link took 2 of B11's 16 panels by forward in 0.28 s (7 a second; another slot that needs it, 200)"
        );
        // Too soon to tell a slow link from one that opened late: it takes
        // what it missed at once.
        assert_eq!(slow_receiver(&receiving(1, 1, 210, 100, 50), holders, 16), None);
        assert_eq!(slow_receiver(&receiving(1, 1, 220, 100, 50), holders, 16).map(|s| s.0), Some(1));
        // Its plan reached it late: it is timed from then.
        let mut late = receiving(1, 2, 300, 100, 50);
        late[1].as_mut().unwrap().plan_in = MS(120);
        assert_eq!(slow_receiver(&late, holders, 16), None);
        late[1].as_mut().unwrap().at = MS(330);
        assert_eq!(slow_receiver(&late, holders, 16).map(|s| s.0), Some(1));
        // A quarter of the leader's pace is slow; a little more is not.
        assert_eq!(slow_receiver(&receiving(1, 3, 300, 300, 50), holders, 16).map(|s| s.0), Some(1));
        assert_eq!(slow_receiver(&receiving(1, 5, 300, 300, 50), holders, 16), None);
        // Nearly all in: what is left takes it no time.
        assert_eq!(slow_receiver(&receiving(1, 15, 300, 100, 50), holders, 16), None);
        // (A report of more panels than there are is taken as all in.)
        assert_eq!(slow_receiver(&receiving(1, u32::MAX as usize, 300, 100, 50), holders, 16), None);
        // Its report is old: it understates what arrived.
        assert_eq!(slow_receiver(&receiving(1, 2, 300, 100, 301), holders, 16), None);
        // The holder is fed by the requester, not by forward: the feed
        // rule judges it.
        assert_eq!(slow_receiver(&receiving(3, 0, 300, 100, 50), holders, 16), None);
        // The others have less than half of it: its holder is slow, or
        // the requester's link; too soon to tell a slot from the rest.
        let mut slow_holder = receiving(1, 2, 300, 100, 50);
        for t in [0, 5] {
            let p = slow_holder[t].as_mut().unwrap();
            (p.arrived[4], p.all[4]) = (7, None);
        }
        assert_eq!(slow_receiver(&slow_holder, holders, 16), None);
        // Too few panels to tell.
        assert_eq!(slow_receiver(&receiving(1, 0, 300, 100, 50), holders, 3), None);
    }

    #[test]
    fn a_holder_whose_forwards_reach_every_slot_that_needs_them_far_slower_than_it_took_them_is_slow() {
        let holders = [4, 4, 1, 6, 3, 2, 6, 0];
        // M4 (slot 3) had all of B11 80 ms after its first panel (200 a
        // second); M1, M2 and M6 have 2, 3 and 2 of it 0.28 s after.
        let behind = |got: [usize; 3], age_ms: u64| {
            let mut all = receiving(3, 16, 300, 100, 50);
            let h = all[3].as_mut().unwrap();
            (h.first[4], h.all[4]) = (Some(MS(20)), Some(MS(100)));
            for (r, g) in [0, 1, 5].into_iter().zip(got) {
                let p = all[r].as_mut().unwrap();
                (p.arrived[4], p.all[4], p.age) = (g, None, MS(age_ms));
            }
            all
        };
        let (slot, why) = slow_sender(&behind([2, 3, 2], 50), holders, 16).expect("slow");
        assert_eq!(slot, 3);
        assert_eq!(
            why,
            "its link sent 3 of B11's 16 panels or fewer to each of the 3 slots that need it, which it took at 200 a second"
        );
        // The receivers are no slower than each other: slow_receiver names none.
        assert_eq!(slow_receiver(&behind([2, 3, 2], 50), holders, 16), None);
        // One of them keeps up: its own link is fine, and so the holder's.
        assert_eq!(slow_sender(&behind([2, 16, 2], 50), holders, 16), None);
        // (One that claims more panels than there are is taken as done.)
        assert_eq!(slow_sender(&behind([2, u32::MAX as usize, 2], 50), holders, 16), None);
        assert_eq!(slow_sender(&behind([2, 14, 2], 50), holders, 16), None);
        // A receiver's report is old: it may have caught up since.
        assert_eq!(slow_sender(&behind([2, 3, 2], 301), holders, 16), None);
        // The holder itself has less than half: its feed is slow, or the
        // requester's link (the feed rule's to judge).
        let mut fed_slowly = behind([2, 3, 2], 50);
        let h = fed_slowly[3].as_mut().unwrap();
        (h.arrived[4], h.all[4]) = (7, None);
        assert_eq!(slow_sender(&fed_slowly, holders, 16), None);
        // Too soon to tell.
        let mut soon = behind([0, 0, 0], 50);
        soon.iter_mut().flatten().for_each(|p| p.at = MS(200));
        assert_eq!(slow_sender(&soon, holders, 16), None);
        // B12 and B21 go to one slot each: a slow receiver or a slow
        // holder, no telling which.
        let mut one = receiving(2, 16, 300, 100, 50);
        let p = one[5].as_mut().unwrap();
        (p.arrived[5], p.all[5]) = (0, None);
        assert_eq!(slow_sender(&one, holders, 16), None);
    }

    #[test]
    fn progress_reports_keep_when_each_quadrant_of_b_was_first_seen_and_all_in() {
        let report = |at: u64, arrived: [u32; 8]| ProgressReport {
            inputs: 0,
            computed: 0,
            arrived,
            at: MS(at),
            age: MS(5),
            plan_in: MS(2),
        };
        let p = SlotProgress::after(None, report(100, [3, 0, 0, 0, 0, 2, 0, 0]), 4, 16);
        let p = SlotProgress::after(Some(p), report(200, [4, 0, 0, 0, 1, 4, 0, 0]), 4, 16);
        let p = SlotProgress::after(Some(p), report(300, [4, 0, 0, 0, 4, 4, 0, 0]), 4, 16);
        assert_eq!(p.first, [None, None, None, None, Some(MS(200)), Some(MS(100)), None, None]);
        assert_eq!(p.all, [None, None, None, None, Some(MS(300)), Some(MS(200)), None, None]);
        assert_eq!((p.arrived[0], p.at), (4, MS(300)));
    }

    #[test]
    fn a_slot_far_behind_in_computing_its_product_is_slow_whatever_its_roles() {
        // Slot 2 (M3, which reduces a quadrant) has computed 3 of 16
        // panels with all 16's operands in; the others computed all.
        let mut all = [progress(16, 16, 40); SLOTS];
        all[2] = progress(3, 16, 50);
        let none = [false; SLOTS];
        let (slot, why) = slow_product(&all, 16, none).expect("slow");
        assert_eq!(slot, 2);
        assert_eq!(
            why,
            "its product M3 is behind: 3 of 16 panels computed (16 with their operands in) when the others had computed all theirs"
        );
        // A quarter is a quarter: judged; more is not.
        all[2] = progress(4, 16, 50);
        assert_eq!(slow_product(&all, 16, none).map(|s| s.0), Some(2));
        all[2] = progress(5, 16, 50);
        assert_eq!(slow_product(&all, 16, none), None);
        // Others that reported count as having computed all, with or
        // without a progress report.
        all[2] = progress(0, 8, 50);
        all[0] = None;
        let mut done = none;
        done[0] = true;
        assert_eq!(slow_product(&all, 16, done).map(|s| s.0), Some(2));
        // Too few panels to tell a quarter from noise.
        assert_eq!(slow_product(&[progress(0, 3, 10); SLOTS], 3, none), None);
    }

    #[test]
    fn a_slot_behind_for_want_of_operands_or_by_an_old_report_or_not_alone_is_not_slow() {
        let none = [false; SLOTS];
        let mut all = [progress(16, 16, 40); SLOTS];
        // Fewer than half its panels' operands in: a feed or a forward
        // holds it up, which other rules judge.
        all[4] = progress(1, 7, 50);
        assert_eq!(slow_product(&all, 16, none), None);
        // Nothing it could compute and has not.
        all[4] = progress(8, 8, 50);
        assert_eq!(slow_product(&all, 16, none), None);
        // Its operands came only just now (a late forward, in a burst):
        // starved, not slow, until they have been in for 0.3 s.
        let burst = |first_ms: u64| {
            let report = |at_ms, inputs| ProgressReport {
                inputs,
                computed: 0,
                arrived: [0, 0, 0, 0, 16, 16, 16, 16],
                at: MS(at_ms),
                age: MS(10),
                plan_in: MS(2),
            };
            let before = SlotProgress::after(None, report(first_ms, 16), 16, 16);
            Some(SlotProgress::after(Some(before), report(500, 16), 16, 16))
        };
        all[4] = burst(300);
        assert_eq!(slow_product(&all, 16, none), None);
        all[4] = burst(200);
        assert_eq!(slow_product(&all, 16, none).map(|s| s.0), Some(4));
        // Its report is old: the link held it back (a reducer whose C
        // panels wait on a congested requester link), or it went quiet.
        all[4] = progress(1, 16, 301);
        assert_eq!(slow_product(&all, 16, none), None);
        all[4] = progress(1, 16, 300);
        assert_eq!(slow_product(&all, 16, none).map(|s| s.0), Some(4));
        // Fresh when it came, old when read: the slot wrote it at 298 ms
        // (its clock), so by 800 ms it is 502 ms old. (A reducer streaming
        // C sends no report; its last one, fresh when it came, told of
        // none of the panels it computed since. Seen on a 30 Mbit/s link.)
        all[4] = progress(0, 16, 5);
        assert_eq!(slow_product(&all, 16, none).map(|s| s.0), Some(4));
        let read_at = |ms| SlotProgress::as_of(&all, MS(ms));
        assert_eq!(read_at(800)[4].unwrap().age, MS(502));
        assert_eq!(slow_product(&read_at(800), 16, none), None);
        assert_eq!(slow_product(&read_at(598), 16, none).map(|s| s.0), Some(4));
        // (Ageing never makes a report younger than it came.)
        assert_eq!(read_at(100)[4].unwrap().age, MS(5));
        // Another slot has not computed all its panels yet.
        all[6] = progress(15, 16, 10);
        assert_eq!(slow_product(&all, 16, none), None);
        // No report from it yet.
        all[6] = progress(16, 16, 10);
        all[4] = None;
        assert_eq!(slow_product(&all, 16, none), None);
        // Every slot done: nobody is behind.
        assert_eq!(slow_product(&[progress(16, 16, 10); SLOTS], 16, none), None);
    }

    #[test]
    fn feeds_slow_alike_or_not_yet_begun_are_not_slow() {
        let mb = 1_000_000;
        // The requester's own link is slow: every feed crawls, none is slow.
        let crawling: Vec<Feed> = (0..7).map(|_| feed(8 * mb, mb / 2, Some(1000), false)).collect();
        assert_eq!(slow_feed(&crawling), None);
        // Fewer than three others under way: nothing to compare with.
        let lonely =
            [feed(8 * mb, 0, Some(1000), false), feed(8 * mb, 8 * mb, Some(100), true), feed(8 * mb, 0, None, false)];
        assert_eq!(slow_feed(&lonely), None);
        // Feeds done within one look are as fast as one tick allows, not
        // infinitely fast, and are compared like the rest.
        let mut quick: Vec<Feed> = (0..6).map(|_| feed(2 * mb, 2 * mb, Some(0), true)).collect();
        quick.push(feed(2 * mb, 0, Some(500), false));
        assert_eq!(slow_feed(&quick).map(|s| s.0), Some(6));
        quick[6].written = mb + mb / 2;
        assert_eq!(slow_feed(&quick), None);
    }

    #[test]
    fn c_is_due_twice_the_send_time_plus_the_slack_after_the_sends() {
        let at = tokio::time::Instant::now();
        let due = c_due(at, Duration::from_secs(3), Duration::from_secs(4));
        assert_eq!(due - at, Duration::from_secs(10));
        assert_eq!(c_due(at, Duration::ZERO, Duration::from_secs(4)) - at, Duration::from_secs(4));
    }

    #[test]
    fn missing_quadrants_are_due_at_twice_the_second_ones_time_plus_a_second() {
        let t0 = tokio::time::Instant::now();
        let at = |ms: u64| QuadState::In { at: t0 + Duration::from_millis(ms), bytes: 0 };
        let due = |ms: u64| Some(t0 + Duration::from_millis(ms));
        let none = QuadState::Arriving { left: 1, bytes: 0 };
        assert_eq!(quads_due(t0, &[none, at(500), none, none]), None, "one quadrant says nothing");
        assert_eq!(quads_due(t0, &[at(400), none, at(700), none]), due(2400));
        assert_eq!(quads_due(t0, &[at(400), at(300), at(700), none]), due(1800), "the second of three");
        assert_eq!(quads_due(t0, &[at(1), at(2), at(3), at(4)]), None, "all in");
    }

    #[test]
    fn parts_leave_b_first_then_a_panel_by_panel() {
        let order = send_order(Panels { rows: 3, per: 2 }, Panels { rows: 5, per: 5 });
        let names: Vec<String> = order.iter().map(|p| p.name()).collect();
        assert_eq!(
            names,
            [
                "B11[0]", "B12[0]", "B21[0]", "B22[0]", "A11[0]", "A12[0]", "A21[0]", "A22[0]", "A11[1]", "A12[1]",
                "A21[1]", "A22[1]"
            ]
        );
    }

    #[test]
    fn panels_past_the_edge_of_a_quadrant_are_zero_padded() {
        // A 3×3 matrix: quadrants are 2×2; A22 is the single element (2, 2).
        let a = Array2::from_shape_fn((3, 3), |(i, j)| (i * 3 + j) as f64);
        let p = padded_panel(a.view(), Quad::Q22, (2, 2), 0..2);
        assert_eq!(p.view(), ndarray::arr2(&[[8.0, 0.0], [0.0, 0.0]]));
        let p = padded_panel(a.view(), Quad::Q11, (2, 2), 1..2);
        assert!(matches!(p, septet_common::strassen::Operand::View(_)));
        assert_eq!(p.view(), ndarray::arr2(&[[3.0, 4.0]]));
    }
}
