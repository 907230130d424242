//! The tracker's Prometheus metrics ([`TrackerMetrics`]): events are counted
//! where they happen (leases granted, released, expired or dropped with
//! their connection, the wait for each grant, failure reports, hedges,
//! requests by kind, refused handshakes) with one atomic increment each;
//! levels (peers by state, slots, the queue, leases in force) are read
//! from the tracker's state when scraped ([`TrackerMetrics::set_levels`]),
//! so the lease path does no polars work for metrics.
//!
//! Every family is `septet_tracker_…`, in base units (seconds), counters
//! end in `_total`, and labels take values from fixed lists only.

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};
use septet_common::listener::{OnRefusal, Refusal};
use septet_common::proto::{FederationRequest, TrackerRequest};
use septet_observe::metrics::{counters, gauges, label_values};

use crate::table::PeerState;

/// Upper bounds (seconds) of the lease-wait histogram's buckets: an
/// immediate grant lands in the first; a queued one in seconds to minutes.
pub const LEASE_WAIT_BUCKETS: [f64; 14] =
    [0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0];

/// Buckets of the brokering time histogram, in seconds: a link brokered
/// across two trackers on a LAN takes about a millisecond, a dial that
/// fails up to the dial timeout.
pub const BROKER_BUCKETS: [f64; 12] = [0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0];

/// A request's kind, as the `kind` label of the request counters: one per
/// `TrackerRequest` variant, and `malformed` for a frame that is none.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestKind {
    /// `Register`.
    Register,
    /// `Heartbeat`.
    Heartbeat,
    /// `Deregister`.
    Deregister,
    /// `ListPeers`.
    ListPeers,
    /// `Lease`.
    Lease,
    /// `Renew`.
    Renew,
    /// `Release`.
    Release,
    /// `ReportFailure`.
    ReportFailure,
    /// `Hedge`.
    Hedge,
    /// `Speed`.
    Speed,
    /// `Sibling`.
    Sibling,
    /// `Lend`.
    Lend,
    /// `ListFederation`.
    ListFederation,
    /// `Reverse`.
    Reverse,
    /// `Broker`.
    Broker,
    /// A frame that does not decode as a request.
    Malformed,
}

impl RequestKind {
    /// Every kind, in label order.
    pub const ALL: [RequestKind; 16] = [
        RequestKind::Register,
        RequestKind::Heartbeat,
        RequestKind::Deregister,
        RequestKind::ListPeers,
        RequestKind::Lease,
        RequestKind::Renew,
        RequestKind::Release,
        RequestKind::ReportFailure,
        RequestKind::Hedge,
        RequestKind::Speed,
        RequestKind::Sibling,
        RequestKind::Lend,
        RequestKind::ListFederation,
        RequestKind::Reverse,
        RequestKind::Broker,
        RequestKind::Malformed,
    ];

    /// The `kind` label's value.
    pub fn as_str(self) -> &'static str {
        match self {
            RequestKind::Register => "register",
            RequestKind::Heartbeat => "heartbeat",
            RequestKind::Deregister => "deregister",
            RequestKind::ListPeers => "list_peers",
            RequestKind::Lease => "lease",
            RequestKind::Renew => "renew",
            RequestKind::Release => "release",
            RequestKind::ReportFailure => "report_failure",
            RequestKind::Hedge => "hedge",
            RequestKind::Speed => "speed",
            RequestKind::Sibling => "sibling",
            RequestKind::Lend => "lend",
            RequestKind::ListFederation => "list_federation",
            RequestKind::Reverse => "reverse",
            RequestKind::Broker => "broker",
            RequestKind::Malformed => "malformed",
        }
    }

    fn index(self) -> usize {
        self as usize
    }

    /// The kind of `request`.
    pub fn of(request: &TrackerRequest) -> Self {
        match request {
            TrackerRequest::Register { .. } => RequestKind::Register,
            TrackerRequest::Heartbeat { .. } => RequestKind::Heartbeat,
            TrackerRequest::Deregister { .. } => RequestKind::Deregister,
            TrackerRequest::ListPeers => RequestKind::ListPeers,
            TrackerRequest::Lease { .. } => RequestKind::Lease,
            TrackerRequest::Renew { .. } => RequestKind::Renew,
            TrackerRequest::Release { .. } => RequestKind::Release,
            TrackerRequest::ReportFailure { .. } => RequestKind::ReportFailure,
            TrackerRequest::Hedge { .. } => RequestKind::Hedge,
            TrackerRequest::Speed { .. } => RequestKind::Speed,
            TrackerRequest::Federation(FederationRequest::Status { .. }) => RequestKind::Sibling,
            TrackerRequest::Federation(FederationRequest::Lend { .. }) => RequestKind::Lend,
            TrackerRequest::ListFederation => RequestKind::ListFederation,
            TrackerRequest::Federation(FederationRequest::LinkBack { .. }) => RequestKind::Reverse,
            TrackerRequest::Broker { .. } => RequestKind::Broker,
        }
    }
}

/// Peer states in label order (the index of [`PeerState`] in it).
const PEER_STATES: [PeerState; 3] = [PeerState::Alive, PeerState::Suspect, PeerState::Gone];

/// Levels read from the tracker's state at scrape time.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Levels {
    /// Peers alive, suspect and gone (in JSON, an object by state).
    #[serde(serialize_with = "by_state")]
    pub peers: [u64; 3],
    /// Peers on probation (`slow` > 0) that are not gone.
    pub on_probation: u64,
    /// Slots offered by peers that are not gone.
    pub slots: u64,
    /// Slots held by leases in force.
    pub slots_in_use: u64,
    /// Slots a lease could take now (free, on alive peers).
    pub slots_free: u64,
    /// Lease requests waiting in the queue.
    pub queue_length: u64,
    /// Slots the waiting requests ask for, in all.
    pub queue_slots: u64,
    /// Leases in force.
    pub leases: u64,
}

fn by_state<S: serde::Serializer>(peers: &[u64; 3], s: S) -> Result<S::Ok, S::Error> {
    use serde::ser::SerializeMap;
    let mut map = s.serialize_map(Some(3))?;
    for (state, n) in PEER_STATES.iter().zip(peers) {
        map.serialize_entry(state.as_str(), n)?;
    }
    map.end()
}

/// The tracker's metrics: a cheap handle, shared by the tracker's state,
/// its server and its HTTP endpoint.
#[derive(Clone)]
pub struct TrackerMetrics {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for TrackerMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TrackerMetrics").finish_non_exhaustive()
    }
}

struct Inner {
    registry: Registry,
    leases_granted: Counter,
    leases_released: Counter,
    leases_expired: Counter,
    leases_dropped: Counter,
    lease_wait: Histogram,
    failures_reported: Counter,
    /// Lent, none free.
    hedges: Vec<Counter>,
    /// By [`RequestKind`].
    requests: Vec<Counter>,
    /// By [`RequestKind`].
    request_errors: Vec<Counter>,
    /// By [`Refusal::ALL`].
    refused: Vec<Counter>,
    /// By [`PEER_STATES`].
    peers: Vec<Gauge>,
    on_probation: Gauge,
    slots: Gauge,
    slots_in_use: Gauge,
    slots_free: Gauge,
    queue_length: Gauge,
    queue_slots: Gauge,
    leases: Gauge,
    siblings_up: Gauge,
    slots_lent: Counter,
    slots_borrowed: Counter,
    borrow_wait: Histogram,
    /// By [`BrokerOutcome::ALL`].
    brokered: Vec<Counter>,
    broker_time: Histogram,
    splices_active: Gauge,
    spliced_bytes: Counter,
}

/// How a brokered link (a `Broker` request this tracker handled) ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BrokerOutcome {
    /// The peer dialled the requester.
    DialledBack,
    /// Both ends were told to meet at a tracker, to dial each other at
    /// once from there (a punch; whether the simultaneous open then worked
    /// only the two ends know).
    Punched,
    /// Both ends were told to dial a splicing tracker.
    Spliced,
    /// Neither: the peer could not be reached or could not dial.
    Failed,
}

impl BrokerOutcome {
    /// Every outcome, in label order.
    pub const ALL: [BrokerOutcome; 4] =
        [BrokerOutcome::DialledBack, BrokerOutcome::Punched, BrokerOutcome::Spliced, BrokerOutcome::Failed];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            BrokerOutcome::DialledBack => "dialled_back",
            BrokerOutcome::Punched => "punched",
            BrokerOutcome::Spliced => "spliced",
            BrokerOutcome::Failed => "failed",
        }
    }
}

/// `Instant` differences as seconds, never negative.
fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

impl Default for TrackerMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl TrackerMetrics {
    /// A fresh registry with every family at zero.
    pub fn new() -> Self {
        let mut r = Registry::with_prefix("septet_tracker");
        let counter = |r: &mut Registry, name: &str, help: &str| {
            let c = Counter::default();
            r.register(name, help, c.clone());
            c
        };
        let gauge = |r: &mut Registry, name: &str, help: &str| {
            let g = Gauge::default();
            r.register(name, help, g.clone());
            g
        };
        let peers = gauges(
            &mut r,
            "peers",
            "Peers in the peer table by state: alive (leaseable), suspect (late heartbeat or reported failure), \
             gone (must register again)",
            &label_values("state", PEER_STATES.map(PeerState::as_str)),
        );
        let on_probation = gauge(
            &mut r,
            "peers_on_probation",
            "Peers that are not gone with slow strikes (beaten by hedges): leased after every other peer",
        );
        let slots = gauge(&mut r, "slots", "Slots offered by peers that are not gone");
        let slots_in_use = gauge(&mut r, "slots_in_use", "Slots held by leases in force");
        let slots_free = gauge(&mut r, "slots_free", "Slots a lease could take now: free slots of alive peers");
        let queue_length = gauge(&mut r, "lease_queue_length", "Lease requests waiting in the queue");
        let queue_slots = gauge(&mut r, "lease_queue_slots", "Slots the lease requests waiting in the queue ask for");
        let leases = gauge(&mut r, "leases_active", "Leases in force");
        let leases_granted = counter(&mut r, "leases_granted", "Leases granted, at once or after queueing");
        let leases_released = counter(&mut r, "leases_released", "Leases released by their holder");
        let leases_expired = counter(&mut r, "leases_expired", "Leases that ended because their TTL passed unrenewed");
        let leases_dropped = counter(
            &mut r,
            "leases_dropped",
            "Leases that ended because the connection that took them closed (not detached)",
        );
        let lease_wait = Histogram::new(LEASE_WAIT_BUCKETS);
        r.register_with_unit(
            "lease_wait",
            "Time from a lease request to its grant (0 when granted at once)",
            Unit::Seconds,
            lease_wait.clone(),
        );
        let failures_reported = counter(
            &mut r,
            "failures_reported",
            "Failures requesters reported against leased peers (once per peer and lease)",
        );
        let hedges = counters(
            &mut r,
            "hedges",
            "Hedges asked for: a spare slot lent to a lease to copy a slow peer's product (lent), or none free",
            &label_values("outcome", ["lent", "none_free"]),
        );
        let requests = counters(
            &mut r,
            "requests",
            "Requests handled, by kind",
            &label_values("kind", RequestKind::ALL.map(RequestKind::as_str)),
        );
        let request_errors = counters(
            &mut r,
            "request_errors",
            "Requests answered with an error, by kind",
            &label_values("kind", RequestKind::ALL.map(RequestKind::as_str)),
        );
        let refused = counters(
            &mut r,
            "handshakes_rejected",
            "Connections refused before or during the handshake, by reason (busy: past the connection cap)",
            &label_values("reason", Refusal::ALL.map(Refusal::as_str)),
        );
        let siblings_up =
            gauge(&mut r, "federation_siblings_up", "Sibling trackers (--federate) that answered the last poll");
        let slots_lent = counter(&mut r, "federation_slots_lent", "Slots lent to sibling clusters' leases");
        let slots_borrowed =
            counter(&mut r, "federation_slots_borrowed", "Slots borrowed from sibling clusters for leases of this one");
        let borrow_wait = Histogram::new(LEASE_WAIT_BUCKETS);
        r.register_with_unit(
            "federation_borrow",
            "Time from a lease request that borrows from a sibling to its grant (the lender's queue included)",
            Unit::Seconds,
            borrow_wait.clone(),
        );
        let brokered = counters(
            &mut r,
            "federation_links_brokered",
            "Brokered links (a peer that cannot be dialled by its requester), by outcome: the peer dialled the \
             requester back, both ends met at a tracker to dial each other at once (punched) or to be joined \
             by it (spliced), or none of these",
            &label_values("outcome", BrokerOutcome::ALL.map(BrokerOutcome::as_str)),
        );
        let broker_time = Histogram::new(BROKER_BUCKETS);
        r.register_with_unit(
            "federation_broker",
            "Time to broker a link: from the Broker request to the peer's dial connecting (through every tracker \
             on the way)",
            Unit::Seconds,
            broker_time.clone(),
        );
        let splices_active =
            gauge(&mut r, "splices_active", "Spliced links this tracker is joining now (both legs connected)");
        let spliced_bytes =
            counter(&mut r, "spliced_bytes", "Bytes this tracker copied between the legs of spliced links");
        Self {
            inner: Arc::new(Inner {
                registry: r,
                leases_granted,
                leases_released,
                leases_expired,
                leases_dropped,
                lease_wait,
                failures_reported,
                hedges,
                requests,
                request_errors,
                refused,
                peers,
                on_probation,
                slots,
                slots_in_use,
                slots_free,
                queue_length,
                queue_slots,
                leases,
                siblings_up,
                slots_lent,
                slots_borrowed,
                borrow_wait,
                brokered,
                broker_time,
                splices_active,
                spliced_bytes,
            }),
        }
    }

    /// A `Broker` request ended with `outcome`, `took` after it arrived.
    pub fn brokered(&self, outcome: BrokerOutcome, took: Duration) {
        let i = BrokerOutcome::ALL.iter().position(|&o| o == outcome).expect("every outcome is listed");
        self.inner.brokered[i].inc();
        self.inner.broker_time.observe(secs(took));
    }

    /// Brokered links so far, by outcome, in [`BrokerOutcome::ALL`]'s order.
    pub fn brokered_counts(&self) -> [u64; 4] {
        std::array::from_fn(|i| self.inner.brokered[i].get())
    }

    /// A spliced link's legs were joined (+1) or parted (-1).
    pub fn splice_active(&self, delta: i64) {
        self.inner.splices_active.inc_by(delta);
    }

    /// `bytes` crossed a spliced link here.
    pub fn spliced(&self, bytes: u64) {
        self.inner.spliced_bytes.inc_by(bytes);
    }

    /// `n` sibling trackers answered their last poll.
    pub fn set_siblings_up(&self, n: i64) {
        self.inner.siblings_up.set(n);
    }

    /// `slots` were lent to a sibling cluster's lease.
    pub fn lent(&self, slots: u32) {
        self.inner.slots_lent.inc_by(u64::from(slots));
    }

    /// A lease borrowed `slots` from a sibling, `waited` after it was asked for.
    pub fn borrowed(&self, slots: u32, waited: Duration) {
        self.inner.slots_borrowed.inc_by(u64::from(slots));
        self.inner.borrow_wait.observe(secs(waited));
    }

    /// The registry, for encoding (after [`TrackerMetrics::set_levels`]).
    pub fn registry(&self) -> &Registry {
        &self.inner.registry
    }

    /// A lease was granted after waiting `waited`.
    pub fn lease_granted(&self, waited: Duration) {
        self.inner.leases_granted.inc();
        self.inner.lease_wait.observe(secs(waited));
    }

    /// A lease was released by its holder.
    pub fn lease_released(&self) {
        self.inner.leases_released.inc();
    }

    /// `n` leases expired.
    pub fn leases_expired(&self, n: u64) {
        self.inner.leases_expired.inc_by(n);
    }

    /// `n` leases ended with their connection.
    pub fn leases_dropped(&self, n: u64) {
        self.inner.leases_dropped.inc_by(n);
    }

    /// A failure was recorded against a leased peer.
    pub fn failure_reported(&self) {
        self.inner.failures_reported.inc();
    }

    /// A hedge was asked for; `lent` says whether a slot was free.
    pub fn hedge(&self, lent: bool) {
        self.inner.hedges[usize::from(!lent)].inc();
    }

    /// A request of `kind` was answered, with an error or not.
    pub fn request(&self, kind: RequestKind, ok: bool) {
        self.inner.requests[kind.index()].inc();
        if !ok {
            self.inner.request_errors[kind.index()].inc();
        }
    }

    /// The hook the listener reports refused connections to.
    pub fn refusal_hook(&self) -> OnRefusal {
        let metrics = self.clone();
        OnRefusal(Arc::new(move |why: Refusal| {
            if let Some(i) = Refusal::ALL.iter().position(|r| *r == why) {
                metrics.inner.refused[i].inc();
            }
        }))
    }

    /// Sets the gauges from levels read off the tracker's state.
    pub fn set_levels(&self, levels: &Levels) {
        let i = &self.inner;
        let g = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        for (gauge, n) in i.peers.iter().zip(levels.peers) {
            gauge.set(g(n));
        }
        i.on_probation.set(g(levels.on_probation));
        i.slots.set(g(levels.slots));
        i.slots_in_use.set(g(levels.slots_in_use));
        i.slots_free.set(g(levels.slots_free));
        i.queue_length.set(g(levels.queue_length));
        i.queue_slots.set(g(levels.queue_slots));
        i.leases.set(g(levels.leases));
    }

    /// Totals so far, for the status page's throughput.
    pub fn totals(&self) -> Totals {
        let i = &self.inner;
        Totals {
            leases_granted: i.leases_granted.get(),
            leases_released: i.leases_released.get(),
            leases_expired: i.leases_expired.get(),
            leases_dropped: i.leases_dropped.get(),
            failures_reported: i.failures_reported.get(),
            hedges: i.hedges.iter().map(Counter::get).sum(),
            requests: i.requests.iter().map(Counter::get).sum(),
            request_errors: i.request_errors.iter().map(Counter::get).sum(),
            handshakes_rejected: i.refused.iter().map(Counter::get).sum(),
            slots_lent: i.slots_lent.get(),
            slots_borrowed: i.slots_borrowed.get(),
        }
    }
}

/// Counter totals (see [`TrackerMetrics::totals`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Totals {
    /// Leases granted.
    pub leases_granted: u64,
    /// Leases released by their holder.
    pub leases_released: u64,
    /// Leases expired.
    pub leases_expired: u64,
    /// Leases ended with their connection.
    pub leases_dropped: u64,
    /// Failures reported.
    pub failures_reported: u64,
    /// Hedges asked for.
    pub hedges: u64,
    /// Requests handled.
    pub requests: u64,
    /// Requests answered with an error.
    pub request_errors: u64,
    /// Connections refused before or during the handshake.
    pub handshakes_rejected: u64,
    /// Slots lent to sibling clusters.
    pub slots_lent: u64,
    /// Slots borrowed from sibling clusters.
    pub slots_borrowed: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(m: &TrackerMetrics) -> String {
        let mut out = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut out, m.registry()).unwrap();
        out
    }

    fn has(text: &str, line: &str) -> bool {
        text.lines().any(|l| l == line)
    }

    #[test]
    fn families_follow_the_conventions_and_events_land_in_their_series() {
        let m = TrackerMetrics::new();
        m.lease_granted(Duration::ZERO);
        m.lease_granted(Duration::from_millis(300));
        m.lease_released();
        m.hedge(false);
        m.request(RequestKind::Lease, true);
        m.request(RequestKind::Release, false);
        (m.refusal_hook().0)(Refusal::WrongSecret);
        m.set_levels(&Levels { peers: [7, 1, 2], slots: 8, leases: 1, ..Levels::default() });
        m.brokered(BrokerOutcome::Spliced, Duration::from_millis(3));
        m.brokered(BrokerOutcome::Failed, Duration::from_secs(2));
        m.splice_active(1);
        m.spliced(4096);
        let t = text(&m);
        for line in [
            "septet_tracker_leases_granted_total 2",
            "septet_tracker_leases_released_total 1",
            "septet_tracker_lease_wait_seconds_count 2",
            "septet_tracker_lease_wait_seconds_bucket{le=\"0.001\"} 1",
            "septet_tracker_lease_wait_seconds_bucket{le=\"0.5\"} 2",
            "septet_tracker_hedges_total{outcome=\"none_free\"} 1",
            "septet_tracker_hedges_total{outcome=\"lent\"} 0",
            "septet_tracker_requests_total{kind=\"lease\"} 1",
            "septet_tracker_request_errors_total{kind=\"release\"} 1",
            "septet_tracker_request_errors_total{kind=\"lease\"} 0",
            "septet_tracker_handshakes_rejected_total{reason=\"wrong_secret\"} 1",
            "septet_tracker_peers{state=\"alive\"} 7",
            "septet_tracker_peers{state=\"gone\"} 2",
            "septet_tracker_slots 8",
            "septet_tracker_leases_active 1",
            "# TYPE septet_tracker_leases_granted_total counter",
            "# TYPE septet_tracker_lease_wait_seconds histogram",
            "septet_tracker_federation_links_brokered_total{outcome=\"spliced\"} 1",
            "septet_tracker_federation_links_brokered_total{outcome=\"failed\"} 1",
            "septet_tracker_federation_links_brokered_total{outcome=\"dialled_back\"} 0",
            "septet_tracker_federation_broker_seconds_bucket{le=\"0.005\"} 1",
            "septet_tracker_federation_broker_seconds_count 2",
            "septet_tracker_splices_active 1",
            "septet_tracker_spliced_bytes_total 4096",
        ] {
            assert!(has(&t, line), "{line} missing from\n{t}");
        }
        // Every family has HELP and TYPE, and only fixed label values.
        let families = t.lines().filter(|l| l.starts_with("# TYPE ")).count();
        assert_eq!(families, t.lines().filter(|l| l.starts_with("# HELP ")).count());
        assert_eq!(families, 26, "{t}");
        assert!(!t.contains(".."), "the registry adds the HELP texts' period: {t}");
        assert_eq!(m.totals().leases_granted, 2);
    }
}
