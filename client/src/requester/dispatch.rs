//! The dispatch loop: the one place that decides what runs where for the
//! seven products of a job — first attempts, redos of failed products and
//! hedges of lagging ones — from what each attempt is observed doing.
//!
//! Each product has an explicit [`State`]; each attempt at it runs as a
//! task (connect, send, wait for the product, receive, verify, fold into
//! C) that publishes its progress in a [`Meter`]: bytes moved and when each
//! phase began. The loop wakes on every finished attempt and every
//! [`TICK`], and applies the policy:
//!
//! - **Sending.** First attempts send in [`SEND_ORDER`] through [`LANES`]
//!   send lanes, so a product computes while the next ones travel. A send
//!   found slow (below) gives its lane up at once and goes on beside the
//!   others, so one slow link does not hold back six fast ones. Redos and
//!   hedges take the next free lane, ahead of first attempts still waiting:
//!   the number of sends sharing the requester's link stays the same, so
//!   the job's send times stay comparable (were they sent beside the lanes,
//!   a saturated link would make every later send look slow).
//! - **Redo.** A product whose attempt failed (and that no other attempt is
//!   computing) goes to whichever is ready first: an idle peer of the lease
//!   (its own product in) or a fresh slot from the tracker.
//! - **Hedge.** A product whose attempt lags well behind the rest gets a
//!   second attempt on a spare: an idle peer of the lease, or one more slot
//!   from the tracker (off the slow peer). The first copy verified is used;
//!   the other attempt is cancelled. The tracker hears at the end which
//!   peers hedges beat (probation) and which delivered first.
//!
//! "Lags" is judged on progress one can observe, never on elapsed time
//! alone, because on a loaded machine healthy products finish far apart:
//! an attempt lags when its send or its receive, projected from the bytes
//! moved so far, would take more than [`SLOW_FACTOR`]× the median of the
//! job's completed sends or receives (and [`SLOW_MARGIN`] more) *and* it
//! moves at less than 1/[`SLOW_FACTOR`] the median pace of the transfers in the same
//! direction running beside it (when the requester's own link is what is
//! slow, they all crawl together and none lags); or when it is the last
//! product missing and has run [`SLOW_FACTOR`]× the median time the
//! verified products took, plus [`LAST_MARGIN`] (a worker that computes
//! slowly: its bytes say nothing). Each product is
//! hedged at most once, and a job hedges at most `max_hedges` products.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use septet_common::proto::{PeerAddr, PeerId};
use septet_common::strassen::PRODUCTS;
use septet_common::{Element, Error};
use serde::Serialize;
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};
use tracing::{info, warn};

use super::{panic_text, Job, JobReport, LeaseKeeper, PeerReport, Progress, ProgressFn, Received, RequestError};
use super::{Requester, Result, SEND_ORDER};
use crate::verify::NonFinite;

/// Sends of first attempts in flight at once (besides those found slow).
pub(super) const LANES: usize = 2;
/// How often the loop looks at the attempts in flight.
const TICK: Duration = Duration::from_millis(100);
/// How often a product waiting for a slot asks the tracker again (one
/// ask is in flight at a time: a slow tracker is never asked twice, so
/// no slot it grants late goes unused).
const TRACKER_POLL: Duration = Duration::from_millis(200);
/// A phase projected to take this many times the job's median lags...
const SLOW_FACTOR: f64 = 3.0;
/// ... and also this much longer than the median.
const SLOW_MARGIN: Duration = Duration::from_millis(300);
/// A transfer is judged only after it has run this long.
const MIN_OBSERVED: Duration = Duration::from_millis(200);
/// The last product lags only this much past `SLOW_FACTOR`× the median.
const LAST_MARGIN: Duration = Duration::from_secs(1);

/// Where a product stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// Waiting for a peer (or a send lane).
    Queued,
    /// Its operands are being written.
    Sending,
    /// Sent; the worker computes.
    Computing,
    /// The product is being read and checked.
    Receiving,
    /// Verified and folded into C.
    Verified,
    /// Gave up: the job fails.
    Failed,
    /// Two attempts race; the first verified wins.
    Hedged,
}

/// What one attempt has done so far. Times are microseconds since the job
/// started, 0 until it happens.
#[derive(Debug, Default)]
pub(super) struct Meter {
    /// Operand bytes written.
    pub sent: Arc<AtomicU64>,
    /// Product bytes read.
    pub received: AtomicU64,
    /// Its operands' size (known once sending starts).
    pub send_len: AtomicU64,
    /// Its product's size (known once receiving starts).
    pub receive_len: AtomicU64,
    pub send_start: AtomicU64,
    pub sent_at: AtomicU64,
    pub computed_at: AtomicU64,
    pub receive_start: AtomicU64,
    /// The send lane it holds while sending, if any. Whoever takes it out
    /// (the attempt when its send ends, or the loop when it finds the send
    /// slow) gives the lane back, so it is given back exactly once, also
    /// when the attempt is cancelled.
    pub lane: Mutex<Option<OwnedSemaphorePermit>>,
}

impl Meter {
    /// Records that something happened now (never 0, so "happened" shows).
    pub fn mark(&self, at: &AtomicU64, started: Instant) {
        at.store((started.elapsed().as_micros() as u64).max(1), Ordering::Relaxed);
    }

    fn at(at: &AtomicU64) -> Option<Duration> {
        match at.load(Ordering::Relaxed) {
            0 => None,
            us => Some(Duration::from_micros(us)),
        }
    }

    /// The transfer under way (sending or receiving): its state, how long
    /// it has run, bytes moved and bytes in all.
    fn transfer(&self, now: Duration) -> Option<(State, Duration, u64, u64)> {
        let (start, done, total) = match self.state() {
            State::Sending => (&self.send_start, &*self.sent, &self.send_len),
            State::Receiving => (&self.receive_start, &self.received, &self.receive_len),
            _ => return None,
        };
        let elapsed = now.saturating_sub(Meter::at(start)?);
        Some((self.state(), elapsed, done.load(Ordering::Relaxed), total.load(Ordering::Relaxed)))
    }

    fn state(&self) -> State {
        if Meter::at(&self.receive_start).is_some() {
            State::Receiving
        } else if Meter::at(&self.sent_at).is_some() {
            State::Computing
        } else if Meter::at(&self.send_start).is_some() {
            State::Sending
        } else {
            State::Queued
        }
    }
}

/// How an attempt came about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    First,
    Redo,
    Hedge,
}

/// One finished attempt at a product.
pub(super) struct Outcome {
    pub attempt: u64,
    pub product: usize,
    pub peer: PeerAddr,
    pub bytes_sent: u64,
    pub send: Duration,
    pub result: Result<Received, Failure>,
}

/// Why an attempt at a product did not deliver it.
#[derive(Debug)]
pub(super) enum Failure {
    /// The peer failed or misbehaved (or its reply broke the task reading
    /// it): report it and send the product elsewhere.
    Peer(Error),
    /// Non-finite values defeat the check: nobody is to blame, and no other
    /// peer would do better.
    Unverifiable(NonFinite),
    /// Another copy of the product was folded into C first (a hedge race
    /// both sides finished): this one is not needed.
    Superseded,
    /// A step on this side failed: a bug, not the peer's doing.
    Local(String),
}

impl From<Error> for Failure {
    fn from(e: Error) -> Self {
        Failure::Peer(e)
    }
}

/// The attempts in flight, each a task that ends in an [`Outcome`]. A task
/// that panics or is cancelled still ends in one, naming its attempt,
/// product and peer, so no product is ever waited for forever.
pub(super) struct Attempts {
    set: tokio::task::JoinSet<Outcome>,
    owners: HashMap<tokio::task::Id, (u64, usize, PeerAddr)>,
}

impl Attempts {
    pub fn new() -> Self {
        Self { set: tokio::task::JoinSet::new(), owners: HashMap::new() }
    }

    pub fn spawn(
        &mut self,
        attempt: u64,
        product: usize,
        peer: PeerAddr,
        task: impl std::future::Future<Output = Outcome> + Send + 'static,
    ) -> tokio::task::AbortHandle {
        let handle = self.set.spawn(task);
        self.owners.insert(handle.id(), (attempt, product, peer));
        handle
    }

    pub fn is_empty(&self) -> bool {
        self.set.is_empty()
    }

    /// The next outcome; `None` when no attempt is left.
    pub async fn next(&mut self) -> Option<Outcome> {
        let (id, outcome) = match self.set.join_next_with_id().await? {
            Ok(done) => done,
            Err(e) => {
                let Some((attempt, product, peer)) = self.owners.remove(&e.id()) else {
                    return Some(Outcome {
                        attempt: u64::MAX,
                        product: 0,
                        peer: PeerAddr { peer_id: PeerId(u64::MAX), addr: String::new(), ticket: None },
                        bytes_sent: 0,
                        send: Duration::ZERO,
                        result: Err(Failure::Local(format!("a task the job does not know ended: {e}"))),
                    });
                };
                let what = if e.is_panic() { "panicked" } else { "was cancelled" };
                let error = Error::Invalid(format!(
                    "the task handling {} {what} (on the peer's reply): {}",
                    PRODUCTS[product].name,
                    panic_text(e)
                ));
                let result = Err(Failure::Peer(error));
                return Some(Outcome { attempt, product, peer, bytes_sent: 0, send: Duration::ZERO, result });
            }
        };
        self.owners.remove(&id);
        Some(outcome)
    }

    pub async fn shutdown(&mut self) {
        self.set.abort_all();
        while self.set.join_next().await.is_some() {}
    }
}

/// A product waiting for a peer to redo it on.
struct Redo {
    product: usize,
    /// The peer it failed on (reported to the tracker).
    failed: PeerAddr,
    cause: Error,
    /// When it started waiting: it gives up after `replacement_wait`.
    since: Instant,
    /// The tracker has been told of the failure (with an ask for a slot).
    told: bool,
}

impl Redo {
    /// What the tracker is told of the failure.
    fn reason(&self) -> String {
        format!("{}: {}", PRODUCTS[self.product].name, self.cause)
    }
}

/// A hedge, as the job report shows it.
#[derive(Debug, Clone, Serialize)]
pub struct HedgeReport {
    /// "M1".."M7".
    pub product: &'static str,
    /// The peer whose attempt lagged.
    #[serde(serialize_with = "PeerAddr::without_ticket")]
    pub slow_peer: PeerAddr,
    /// Where the copy went.
    #[serde(serialize_with = "PeerAddr::without_ticket")]
    pub hedge_peer: PeerAddr,
    /// Why the product was hedged.
    pub reason: String,
    /// Seconds from the start of the job.
    pub at_s: f64,
    /// `hedge` or `original`: whose copy was used (`none` if neither).
    pub winner: &'static str,
}

/// One attempt at a product, as the job's timeline shows it. Times are
/// seconds from the start of the job (before the lease), like the rest of
/// the report; a phase the attempt never reached is `None`.
#[derive(Debug, Clone, Serialize)]
pub struct AttemptReport {
    /// "M1".."M7".
    pub product: &'static str,
    /// The peer it ran on.
    #[serde(serialize_with = "PeerAddr::without_ticket")]
    pub peer: PeerAddr,
    /// `first`, `redo` (after a failure), `hedge` (a second copy of a
    /// lagging product), or `relay` (a slot of a relayed job: its
    /// operands arriving until it could compute — shown as the send —,
    /// computing, then its product passed on and C sent back — shown as
    /// the receive), or `regroup` (two levels: a product relayed again
    /// over seven slots, the first named; one bar, shown as compute).
    pub kind: &'static str,
    /// When it began (connecting to the peer).
    pub started_s: f64,
    /// Its operands began to go out (it had a send lane).
    pub send_start_s: Option<f64>,
    /// Its operands were all out; the worker computes.
    pub sent_s: Option<f64>,
    /// The worker said it had computed the product.
    pub computed_s: Option<f64>,
    /// The product began to arrive.
    pub receive_start_s: Option<f64>,
    /// When it ended.
    pub ended_s: f64,
    /// `verified` (its copy is in C), `failed`, `unverifiable`, `cancelled`
    /// (the other copy of a hedged product won), `superseded` (both copies
    /// arrived; the other was folded first) or `abandoned` (the job ended).
    pub outcome: &'static str,
    /// What went wrong, for `failed` and `unverifiable`.
    pub error: Option<String>,
}

/// An attempt in flight.
struct Running {
    product: usize,
    peer: PeerAddr,
    kind: Kind,
    meter: Arc<Meter>,
    abort: tokio::task::AbortHandle,
    /// Its send is among `Dispatch::sends`.
    send_counted: bool,
    /// When it began, since the job started.
    started: Duration,
}

/// Per product.
struct Product {
    state: State,
    /// Attempts started (first, redos, hedges).
    tries: u32,
    hedged: bool,
}

/// The loop's state for one job.
pub(super) struct Dispatch<'a, T> {
    requester: &'a Requester,
    keeper: &'a LeaseKeeper,
    job: Arc<Job<T>>,
    progress: ProgressFn,
    products: Vec<Product>,
    running: HashMap<u64, Running>,
    attempts: Attempts,
    next_attempt: u64,
    /// Peers of the lease with nothing to do (their product in).
    idle: Vec<PeerAddr>,
    redo: VecDeque<Redo>,
    /// Last time the tracker was asked for a slot (replacement or hedge).
    asked_tracker: Option<Instant>,
    /// Last time a product waiting for a peer saw another attempt still
    /// running (whose peer may yet free up for it).
    busy_at: Instant,
    /// The tracker's answer to the ask in flight: a slot it grants joins
    /// `idle`, whatever it was asked for.
    pending: Option<oneshot::Receiver<septet_common::Result<Option<PeerAddr>>>>,
    /// Durations of completed sends and receives, and of verified
    /// attempts from their send to their product's check.
    sends: Vec<Duration>,
    receives: Vec<Duration>,
    spans: Vec<Duration>,
    hedges: Vec<HedgeReport>,
    /// Peers whose product a hedge delivered first / that delivered first.
    beaten: Vec<PeerId>,
    proven: Vec<PeerId>,
    reports: Vec<Option<PeerReport>>,
    /// Every attempt that ended, for the timeline.
    timeline: Vec<AttemptReport>,
    lanes: Lanes,
}

impl<'a, T: Element> Dispatch<'a, T> {
    pub fn new(requester: &'a Requester, keeper: &'a LeaseKeeper, job: Arc<Job<T>>, progress: ProgressFn) -> Self {
        Self {
            requester,
            keeper,
            job,
            progress,
            products: (0..7).map(|_| Product { state: State::Queued, tries: 0, hedged: false }).collect(),
            running: HashMap::new(),
            attempts: Attempts::new(),
            next_attempt: 0,
            idle: Vec::new(),
            redo: VecDeque::new(),
            asked_tracker: None,
            busy_at: Instant::now(),
            pending: None,
            sends: Vec::new(),
            receives: Vec::new(),
            spans: Vec::new(),
            hedges: Vec::new(),
            beaten: Vec::new(),
            proven: Vec::new(),
            reports: (0..7).map(|_| None).collect(),
            timeline: Vec::new(),
            lanes: Lanes::new(LANES),
        }
    }

    /// Starts an attempt at product `i` on `peer`; it sends once it has a
    /// lane (redos and hedges ahead of waiting first attempts).
    fn start(&mut self, i: usize, peer: PeerAddr, kind: Kind) {
        let lane = Some(self.lanes.ask(kind != Kind::First));
        let id = self.next_attempt;
        self.next_attempt += 1;
        let meter = Arc::new(Meter::default());
        let task = self.job.clone().attempt(id, i, peer.clone(), meter.clone(), lane, self.progress.clone());
        let abort = self.attempts.spawn(id, i, peer.clone(), task);
        if kind != Kind::Hedge {
            // A hedge is extra, not one of the product's attempts.
            self.products[i].tries += 1;
        }
        let started = self.job.started.elapsed();
        self.running.insert(id, Running { product: i, peer, kind, meter, abort, send_counted: false, started });
    }

    /// Runs the job to the end: every product verified and folded into C,
    /// or the error that stopped it. The lease's peers' speed is reported
    /// to the tracker either way.
    ///
    /// Only the products marked `needed` are computed (the others count
    /// as done): each on its `first` peer; one without starts as a redo
    /// of its attempt on the peer `failed` names (reported to the tracker
    /// as failed), on a `spare` peer or a fresh slot.
    pub async fn run(
        mut self,
        first: &[Option<PeerAddr>; 7],
        spare: Vec<PeerAddr>,
        needed: [bool; 7],
        failed: &[Option<(PeerAddr, String)>; 7],
        report: &mut JobReport,
    ) -> Result<()> {
        self.idle = spare;
        let result = self.drive(first, needed, failed, report).await;
        self.attempts.shutdown().await;
        for (_, run) in std::mem::take(&mut self.running) {
            self.record(&run, "abandoned", None);
        }
        self.timeline.sort_by(|a, b| a.started_s.total_cmp(&b.started_s));
        // Connecting took until the first send began.
        if let Some(first) = self.timeline.iter().filter_map(|a| a.send_start_s).min_by(f64::total_cmp) {
            report.connect_s = (first - report.lease_wait_s).max(0.0);
        }
        report.attempts.append(&mut self.timeline);
        report.hedges.append(&mut self.hedges);
        // Told the tracker with the release. A peer both beaten and proven
        // (it delivered one product, and a hedge beat it on another) only
        // counts as beaten.
        let beaten = std::mem::take(&mut self.beaten);
        let mut proven = std::mem::take(&mut self.proven);
        proven.retain(|p| !beaten.contains(p));
        self.keeper.note_speed(beaten, proven).await;
        result?;
        report.peers = self.reports.into_iter().flatten().collect();
        Ok(())
    }

    async fn drive(
        &mut self,
        first: &[Option<PeerAddr>; 7],
        needed: [bool; 7],
        failed: &[Option<(PeerAddr, String)>; 7],
        report: &mut JobReport,
    ) -> Result<()> {
        // The first round asks for lanes in SEND_ORDER, so products go out
        // in that order however their connections come up.
        for &i in &SEND_ORDER {
            if !needed[i] {
                self.products[i].state = State::Verified;
                continue;
            }
            match (&first[i], &failed[i]) {
                (Some(peer), _) => self.start(i, peer.clone(), Kind::First),
                (None, Some((peer, why))) => {
                    self.products[i].tries += 1;
                    self.redo.push_back(Redo {
                        product: i,
                        failed: peer.clone(),
                        cause: Error::Invalid(why.clone()),
                        since: Instant::now(),
                        told: false,
                    });
                }
                (None, None) => {
                    return Err(RequestError::Internal(format!("{} has no peer to run on", PRODUCTS[i].name)))
                }
            }
        }

        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        while self.products.iter().any(|p| p.state != State::Verified) {
            self.take_answer();
            self.hand_out_redos(report)?;
            self.look_at_attempts();
            if self.attempts.is_empty() && self.redo.is_empty() {
                let missing = self.products.iter().filter(|p| p.state != State::Verified).count();
                return Err(RequestError::Internal(format!(
                    "no attempt is running but {missing} products are missing"
                )));
            }
            tokio::select! {
                outcome = self.attempts.next(), if !self.attempts.is_empty() => {
                    if let Some(outcome) = outcome {
                        self.settle(outcome, report)?;
                    }
                }
                _ = tick.tick() => {}
            }
        }
        Ok(())
    }

    /// Takes the tracker's answer to the ask in flight, if it came: a slot
    /// it granted is ours to use (it is part of the lease already).
    fn take_answer(&mut self) {
        let Some(rx) = &mut self.pending else { return };
        match rx.try_recv() {
            Err(oneshot::error::TryRecvError::Empty) => {}
            Ok(Ok(Some(slot))) => {
                self.pending = None;
                self.idle.push(slot);
            }
            Ok(Ok(None)) => self.pending = None,
            Ok(Err(e)) => {
                self.pending = None;
                warn!(error = %e, "the tracker could not give the job a slot; asking again");
            }
            Err(oneshot::error::TryRecvError::Closed) => self.pending = None,
        }
    }

    /// Whether the tracker may be asked for a slot now.
    fn may_ask(&self) -> bool {
        self.pending.is_none() && self.asked_tracker.is_none_or(|t| t.elapsed() >= TRACKER_POLL)
    }

    /// Gives what waits for a peer to our idle peers (own peers whose
    /// product is in, or slots the tracker granted); if none is idle, asks
    /// the tracker for a replacement without waiting for its answer. Fails
    /// the job once a product has waited the replacement wait with no
    /// other attempt running: while one runs, its peer may free up (each
    /// attempt has its own deadline, so this wait has one too) — a grid
    /// whose every slot is in this lease then still finishes, later,
    /// rather than failing because the tracker had none.
    fn hand_out_redos(&mut self, report: &mut JobReport) -> Result<()> {
        while let Some(r) = self.redo.front() {
            let Some(peer) = self.idle.pop() else {
                if self.may_ask() {
                    self.asked_tracker = Some(Instant::now());
                    self.pending = self.keeper.ask_replacement(r.failed.peer_id, r.reason());
                    let told = self.pending.is_some();
                    self.redo.front_mut().expect("not empty").told |= told;
                }
                break;
            };
            if !r.told {
                // Record the failure (no new slot needed).
                self.tell_tracker(r.failed.peer_id, r.reason());
            }
            let Redo { product: i, .. } = self.redo.pop_front().expect("not empty");
            info!(product = PRODUCTS[i].name, peer_id = %peer.peer_id, addr = %peer.addr, "re-sending to another peer");
            report.retries += 1;
            self.products[i].state = State::Queued;
            self.start(i, peer, Kind::Redo);
        }
        if let Some(r) = self.redo.front() {
            if self.running.values().any(|run| run.product != r.product) {
                self.busy_at = Instant::now();
            }
            if r.since.elapsed().min(self.busy_at.elapsed()) >= self.requester.config.replacement_wait {
                let r = self.redo.pop_front().expect("not empty");
                self.products[r.product].state = State::Failed;
                return Err(RequestError::NoReplacement {
                    product: PRODUCTS[r.product].name,
                    peer_id: r.failed.peer_id,
                    addr: r.failed.addr,
                    waited: self.requester.config.replacement_wait,
                    source: r.cause,
                });
            }
        }
        Ok(())
    }

    /// Updates each product's state from its attempts' meters, records
    /// finished transfers, frees the lanes of slow sends, and hedges
    /// products that lag.
    fn look_at_attempts(&mut self) {
        let now = self.job.started.elapsed();
        for r in self.running.values_mut() {
            let m = &r.meter;
            if let (false, Some(start), Some(end)) = (r.send_counted, Meter::at(&m.send_start), Meter::at(&m.sent_at)) {
                self.sends.push(end.saturating_sub(start));
                r.send_counted = true;
            }
        }
        let mut lagging = Vec::new();
        for (&id, r) in &self.running {
            let p = &self.products[r.product];
            if p.state == State::Verified {
                continue;
            }
            let others: Vec<State> =
                self.products.iter().enumerate().filter(|&(j, _)| j != r.product).map(|(_, p)| p.state).collect();
            if let Some(why) = self.lags(r, now, &others) {
                lagging.push((id, why));
            }
        }
        for r in self.running.values() {
            let p = &mut self.products[r.product];
            if p.state != State::Verified && !p.hedged && p.state != State::Failed {
                p.state = r.meter.state();
            }
        }
        for (id, why) in lagging {
            let Some(r) = self.running.get(&id) else { continue };
            // A slow send gives its lane to the next product at once
            // (hedges' and hedged products' sends too).
            if r.meter.state() == State::Sending && r.meter.lane.lock().take().is_some() {
                info!(product = PRODUCTS[r.product].name, peer_id = %r.peer.peer_id, %why, "slow send: the next product goes out beside it");
            }
            if r.kind != Kind::Hedge && !self.products[r.product].hedged {
                self.hedge(id, why);
            }
        }
    }

    /// Why attempt `r` lags, if it does.
    fn lags(&self, r: &Running, now: Duration, others: &[State]) -> Option<String> {
        let m = &r.meter;
        let slow = |elapsed: Duration, done: u64, total: u64, medians: &[Duration], what: &str| -> Option<String> {
            let median = median(medians)?;
            // Every byte moved: what is left (the check) is our own work.
            if elapsed < MIN_OBSERVED || total == 0 || done >= total {
                return None;
            }
            // Transfers in the same direction running now share the
            // requester's link: when that link is what is slow they all
            // are, and none lags. Only one well behind them does.
            let state = m.state();
            let mut rates: Vec<f64> = self
                .running
                .values()
                .filter(|o| !Arc::ptr_eq(&o.meter, m))
                .filter_map(|o| o.meter.transfer(now))
                .filter(|&(s, e, _, _)| s == state && e >= MIN_OBSERVED)
                .map(|(_, e, d, _)| d as f64 / e.as_secs_f64())
                .collect();
            rates.sort_by(f64::total_cmp);
            if let Some(&others) = rates.get(rates.len() / 2) {
                if done as f64 / elapsed.as_secs_f64() > others / SLOW_FACTOR {
                    return None;
                }
            }
            let bound = median.mul_f64(SLOW_FACTOR).max(median + SLOW_MARGIN);
            // Nothing moved yet says little early on (a reader is woken a
            // megabyte at a time): then only once the whole bound has passed.
            let projected = if done == 0 { elapsed } else { elapsed.mul_f64(total as f64 / done as f64) };
            (projected > bound).then(|| {
                format!(
                    "{what} {:.0}% in {:.2} s: projected {:.2} s against a median of {:.2} s",
                    100.0 * done as f64 / total as f64,
                    elapsed.as_secs_f64(),
                    projected.as_secs_f64(),
                    median.as_secs_f64()
                )
            })
        };
        match m.transfer(now) {
            Some((State::Sending, elapsed, done, total)) => slow(elapsed, done, total, &self.sends, "sending"),
            Some((_, elapsed, done, total)) => slow(elapsed, done, total, &self.receives, "receiving"),
            None => self.lags_computing(m, now, others),
        }
    }

    /// Why the attempt metered by `m`, computing, lags, if it does.
    fn lags_computing(&self, m: &Meter, now: Duration, others: &[State]) -> Option<String> {
        // Only the last product, and only while the worker computes (not
        // once it said it is done and waits for a receive slot): a worker
        // computing slowly says nothing through its bytes.
        let computing = m.state() == State::Computing && Meter::at(&m.computed_at).is_none();
        if !computing || others.iter().any(|s| *s != State::Verified) {
            return None;
        }
        let median = median(&self.spans)?;
        let ran = now.saturating_sub(Meter::at(&m.send_start)?);
        let bound = median.mul_f64(SLOW_FACTOR) + LAST_MARGIN;
        (ran > bound).then(|| {
            format!(
                "still computing after {:.2} s while the verified products took a median of {:.2} s",
                ran.as_secs_f64(),
                median.as_secs_f64()
            )
        })
    }

    /// Hedges the product of attempt `id`: a copy on an idle peer of the
    /// lease, or on one more slot from the tracker; nothing if neither is
    /// free (it is tried again on a later tick) or the job's hedges are used up.
    fn hedge(&mut self, id: u64, why: String) {
        if self.hedges.len() >= self.requester.config.max_hedges as usize {
            return;
        }
        let Some(r) = self.running.get(&id) else { return };
        let (i, slow) = (r.product, r.peer.clone());
        let spare = match self.idle.iter().position(|p| p.peer_id != slow.peer_id) {
            Some(k) => Some(self.idle.remove(k)),
            None => {
                // The slot comes back through `take_answer`, for the next tick.
                if self.may_ask() {
                    self.asked_tracker = Some(Instant::now());
                    self.pending = self.keeper.ask_hedge(slow.peer_id);
                }
                None
            }
        };
        let Some(spare) = spare else { return };
        let name = PRODUCTS[i].name;
        info!(product = name, slow = %slow.addr, hedge = %spare.addr, %why, "hedging a lagging product");
        (self.progress)(Progress::Hedged { product: name, addr: spare.addr.clone() });
        self.hedges.push(HedgeReport {
            product: name,
            slow_peer: slow,
            hedge_peer: spare.clone(),
            reason: why,
            at_s: self.job.started.elapsed().as_secs_f64(),
            winner: "none",
        });
        self.products[i].hedged = true;
        self.products[i].state = State::Hedged;
        self.start(i, spare, Kind::Hedge);
    }

    /// Reports a failed peer to the tracker without asking for a slot, in
    /// the background: the loop never waits on it.
    fn tell_tracker(&self, peer_id: PeerId, reason: String) {
        let keeper = self.keeper.clone();
        tokio::spawn(async move {
            if let Err(e) = keeper.report(peer_id, reason, false).await {
                warn!(error = %e, "could not report a failed peer to the tracker");
            }
        });
    }

    /// Adds the ended attempt `run` to the timeline.
    fn record(&mut self, run: &Running, outcome: &'static str, error: Option<String>) {
        let m = &run.meter;
        let at = |t: &AtomicU64| Meter::at(t).map(|d| d.as_secs_f64());
        self.timeline.push(AttemptReport {
            product: PRODUCTS[run.product].name,
            peer: run.peer.clone(),
            kind: match run.kind {
                Kind::First => "first",
                Kind::Redo => "redo",
                Kind::Hedge => "hedge",
            },
            started_s: run.started.as_secs_f64(),
            send_start_s: at(&m.send_start),
            sent_s: at(&m.sent_at),
            computed_s: at(&m.computed_at),
            receive_start_s: at(&m.receive_start),
            ended_s: self.job.started.elapsed().as_secs_f64(),
            outcome,
            error,
        });
    }

    /// Takes one finished attempt into account.
    fn settle(&mut self, outcome: Outcome, report: &mut JobReport) -> Result<()> {
        let Outcome { attempt, product: i, peer, bytes_sent, send, result } = outcome;
        report.bytes_sent += bytes_sent;
        let Some(run) = self.running.remove(&attempt) else {
            if let Err(Failure::Local(e)) = result {
                return Err(RequestError::Internal(e));
            }
            // Cancelled by us: its product is in.
            return Ok(());
        };
        let name = PRODUCTS[i].name;
        let rivals: Vec<u64> = self.running.iter().filter(|(_, r)| r.product == i).map(|(&id, _)| id).collect();
        match result {
            Ok(got) => {
                self.products[i].state = State::Verified;
                self.receives.push(got.receive);
                if let Some(start) = Meter::at(&run.meter.send_start) {
                    self.spans.push(self.job.started.elapsed().saturating_sub(start));
                }
                self.record(&run, "verified", None);
                // The race is over: cancel the other copy.
                for id in rivals {
                    if let Some(loser) = self.running.remove(&id) {
                        loser.abort.abort();
                        self.record(&loser, "cancelled", None);
                        if run.kind == Kind::Hedge {
                            self.beaten.push(loser.peer.peer_id);
                        }
                    }
                }
                if let Some(h) = self.hedges.iter_mut().rev().find(|h| h.product == name) {
                    h.winner = if run.kind == Kind::Hedge { "hedge" } else { "original" };
                }
                self.proven.push(peer.peer_id);
                if self.products.iter().all(|p| p.state == State::Verified) {
                    report.verify_critical_s = got.verify.as_secs_f64();
                }
                report.bytes_received += got.bytes;
                (self.progress)(Progress::Received { product: name, bytes: got.bytes });
                self.reports[i] = Some(PeerReport {
                    product: name,
                    peer_id: peer.peer_id,
                    addr: peer.addr.clone(),
                    bytes_sent,
                    bytes_received: got.bytes,
                    send_s: send.as_secs_f64(),
                    compute_s: got.compute.as_secs_f64(),
                    done_at_s: self.job.started.elapsed().as_secs_f64(),
                    receive_s: got.receive.as_secs_f64(),
                    hedged: run.kind == Kind::Hedge,
                });
                self.idle.push(peer);
                Ok(())
            }
            Err(Failure::Superseded) => {
                // The other copy was folded first; if that was a hedge's,
                // this (slower) peer was beaten, even though the winner's
                // outcome has not been taken in yet.
                if run.kind != Kind::Hedge && rivals.iter().any(|id| self.running[id].kind == Kind::Hedge) {
                    self.beaten.push(run.peer.peer_id);
                }
                self.record(&run, "superseded", None);
                Ok(())
            }
            Err(Failure::Local(e)) => {
                self.record(&run, "failed", Some(e.clone()));
                Err(RequestError::Internal(format!("{name}: {e}")))
            }
            Err(Failure::Unverifiable(cause)) => {
                self.record(&run, "unverifiable", Some(cause.to_string()));
                warn!(product = name, peer_id = %peer.peer_id, %cause, "product cannot be verified; stopping the job");
                report.failures.push(format!("{name} on peer {} ({}): {cause}", peer.peer_id, peer.addr));
                self.products[i].state = State::Failed;
                Err(RequestError::Unverifiable { product: name, peer_id: peer.peer_id, addr: peer.addr, cause })
            }
            Err(Failure::Peer(e)) => {
                self.record(&run, "failed", Some(e.to_string()));
                warn!(product = name, peer_id = %peer.peer_id, addr = %peer.addr, error = %e, "peer failed");
                report.failures.push(format!("{name} on peer {} ({}): {e}", peer.peer_id, peer.addr));
                // A peer that failed is never handed work again in this job.
                self.idle.retain(|p| p.peer_id != peer.peer_id);
                if self.products[i].state == State::Verified {
                    return Ok(());
                }
                if !rivals.is_empty() {
                    // The other copy carries on; only tell the tracker.
                    self.tell_tracker(peer.peer_id, format!("{name}: {e}"));
                    return Ok(());
                }
                if self.products[i].tries >= self.requester.config.max_attempts {
                    self.products[i].state = State::Failed;
                    return Err(RequestError::Peer {
                        product: name,
                        peer_id: peer.peer_id,
                        addr: peer.addr,
                        source: e,
                    });
                }
                self.products[i].state = State::Queued;
                self.redo.push_back(Redo { product: i, failed: peer, cause: e, since: Instant::now(), told: false });
                Ok(())
            }
        }
    }
}

/// The median of `xs` (the upper one for an even count); `None` if empty.
fn median(xs: &[Duration]) -> Option<Duration> {
    let mut v = xs.to_vec();
    v.sort_unstable();
    v.get(v.len() / 2).copied()
}

/// The send lanes: a semaphore, and a feeder task that hands its permits
/// out in order — urgent asks (redos, hedges) first, then the rest in the
/// order they were made. The feeder ends with the job.
struct Lanes {
    asks: mpsc::UnboundedSender<(bool, oneshot::Sender<OwnedSemaphorePermit>)>,
    feeder: tokio::task::JoinHandle<()>,
}

impl Lanes {
    fn new(lanes: usize) -> Self {
        let (asks, mut rx) = mpsc::unbounded_channel::<(bool, oneshot::Sender<OwnedSemaphorePermit>)>();
        let sem = Arc::new(Semaphore::new(lanes));
        let feeder = tokio::spawn(async move {
            let mut waiting = VecDeque::new();
            let take = |waiting: &mut VecDeque<_>, (urgent, tx)| {
                if urgent {
                    waiting.push_front(tx)
                } else {
                    waiting.push_back(tx)
                }
            };
            loop {
                if waiting.is_empty() {
                    let Some(ask) = rx.recv().await else { return };
                    take(&mut waiting, ask);
                }
                let Ok(mut permit) = sem.clone().acquire_owned().await else { return };
                // Asks made while we waited for the permit count too.
                while let Ok(ask) = rx.try_recv() {
                    take(&mut waiting, ask);
                }
                // An attempt that ended before its turn dropped its
                // receiver: the permit goes to the next one.
                while let Some(tx) = waiting.pop_front() {
                    match tx.send(permit) {
                        Ok(()) => break,
                        Err(back) => permit = back,
                    }
                }
            }
        });
        Lanes { asks, feeder }
    }

    /// Where a lane will come from; `urgent` goes ahead of earlier asks.
    fn ask(&self, urgent: bool) -> oneshot::Receiver<OwnedSemaphorePermit> {
        let (tx, rx) = oneshot::channel();
        // The feeder lives as long as `self`.
        let _ = self.asks.send((urgent, tx));
        rx
    }
}

impl Drop for Lanes {
    fn drop(&mut self) {
        self.feeder.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A task that panics still ends as an outcome for its product and
    /// peer (a peer failure, re-dispatched like any other), so the job
    /// never waits for it forever.
    #[tokio::test]
    async fn a_panicking_attempt_becomes_a_failure_of_its_product() {
        let peer = |id: u64| PeerAddr { peer_id: PeerId(id), addr: format!("127.0.0.1:{}", 9000 + id), ticket: None };
        let mut attempts = Attempts::new();
        attempts.spawn(0, 4, peer(2), async { panic!("garbage from the peer") });
        attempts.spawn(1, 1, peer(5), async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            Outcome {
                attempt: 1,
                product: 1,
                peer: peer(5),
                bytes_sent: 7,
                send: Duration::ZERO,
                result: Err(Failure::Peer(Error::Closed("x"))),
            }
        });
        let first = attempts.next().await.expect("an outcome for the panicked task");
        assert_eq!((first.attempt, first.product, first.peer.peer_id), (0, 4, PeerId(2)));
        match first.result {
            Err(Failure::Peer(e)) => {
                let text = e.to_string();
                assert!(
                    text.contains("M5") && text.contains("panicked") && text.contains("garbage from the peer"),
                    "{text}"
                );
            }
            other => panic!("{:?}", other.err()),
        }
        let second = attempts.next().await.unwrap();
        assert_eq!((second.product, second.bytes_sent), (1, 7));
        assert!(attempts.next().await.is_none());
        assert!(attempts.owners.is_empty());
    }
}
