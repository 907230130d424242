//! The tracker's read-only HTTP endpoint (`septet tracker --http ADDR`): a
//! thin axum layer over read-only snapshots of [`Tracker`], served by
//! `septet_observe` (which owns the limits, the loopback rule and
//! shutdown).
//!
//! - `GET /metrics`: Prometheus metrics ([`crate::metrics`]).
//! - `GET /api/status`: the status page's data as JSON — the peer table,
//!   the lease queue, the leases in force (never their tokens), the gauges'
//!   levels, counter totals and the last minute's throughput.
//! - `GET /`: the status page, which polls `/api/status` once a second and
//!   redraws itself; its HTML, CSS and script are compiled into the binary
//!   (`tracker/assets/`) and it loads nothing from anywhere else.
//!
//! However often and by however many clients these are asked for, the
//! tracker's state is read at most once per [`MIN_REFRESH`] for each of
//! them (and each metrics format): later requests within it get the last
//! answer. So the endpoint's cost to the lease path is bounded, whatever
//! the HTTP load. Each answer is read in one hold of the state's lock, so
//! its numbers agree with each other. Lists are cut at [`MAX_ROWS`] rows
//! (with their full lengths beside them).

use std::collections::VecDeque;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use parking_lot::Mutex;
use septet_observe::HttpConfig;
use serde::Serialize;
use tokio::net::TcpListener;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::metrics::{Levels, Totals};
use crate::Tracker;

/// Most rows of each list (peers, queue, leases) the status JSON carries.
pub const MAX_ROWS: usize = 1000;

/// The tracker's state is read at most this often per endpoint.
pub const MIN_REFRESH: Duration = Duration::from_millis(200);

/// Throughput samples kept: one a second, a minute's worth.
const HISTORY: usize = 60;

const PAGE_HTML: &str = include_str!("../assets/status.html");
const PAGE_CSS: &str = include_str!("../assets/status.css");
const PAGE_JS: &str = include_str!("../assets/status.js");

/// An answer kept for [`MIN_REFRESH`]: when it was made, the body, and its
/// content type.
type Cached = Option<(Instant, Arc<str>, &'static str)>;

/// What the handlers share.
#[derive(Clone)]
struct Page {
    tracker: Tracker,
    started: Instant,
    /// The last `/api/status` body.
    status: Arc<Mutex<Cached>>,
    /// The last `/metrics` body in each format (Prometheus text, OpenMetrics).
    metrics: Arc<Mutex<[Cached; 2]>>,
    history: Arc<Mutex<VecDeque<(Instant, Totals)>>>,
}

/// Serves the tracker's endpoint on `listener` until `shutdown` completes.
pub async fn run(listener: TcpListener, tracker: Tracker, config: HttpConfig, shutdown: impl Future<Output = ()>) {
    let page = Page {
        tracker,
        started: Instant::now(),
        status: Arc::default(),
        metrics: Arc::default(),
        history: Arc::default(),
    };
    let stop = CancellationToken::new();
    let sampler = tokio::spawn(sample(page.clone(), stop.clone()));
    septet_observe::serve(listener, router(page), config, shutdown).await;
    stop.cancel();
    let _ = sampler.await;
}

fn router(page: Page) -> Router {
    Router::new()
        .route("/", get(|| async { ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], PAGE_HTML) }))
        .route("/status.css", get(|| async { ([(header::CONTENT_TYPE, "text/css; charset=utf-8")], PAGE_CSS) }))
        .route("/status.js", get(|| async { ([(header::CONTENT_TYPE, "text/javascript; charset=utf-8")], PAGE_JS) }))
        .route("/metrics", get(metrics))
        .route("/api/status", get(status))
        .with_state(page)
}

/// Records the counters' totals once a second, for the throughput.
async fn sample(page: Page, stop: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            now = tick.tick() => {
                let mut history = page.history.lock();
                if history.len() > HISTORY {
                    history.pop_front();
                }
                history.push_back((now, page.tracker.metrics().totals()));
            }
        }
    }
}

fn internal(e: impl std::fmt::Display) -> Response {
    tracing::error!(error = %e, "could not read the tracker's state for the HTTP endpoint");
    (StatusCode::INTERNAL_SERVER_ERROR, "could not read the tracker's state\n").into_response()
}

async fn metrics(State(page): State<Page>, headers: HeaderMap) -> Response {
    let openmetrics = septet_observe::wants_openmetrics(&headers);
    let slot = usize::from(openmetrics);
    let cached = page.metrics.lock()[slot]
        .as_ref()
        .filter(|(at, ..)| at.elapsed() < MIN_REFRESH)
        .map(|(_, body, kind)| (body.clone(), *kind));
    if let Some((body, kind)) = cached {
        return septet_observe::metrics_body(Ok((body.to_string(), kind)));
    }
    let encoded = match page.tracker.with_metrics(|m| septet_observe::encode_metrics(m.registry(), openmetrics)) {
        Ok(encoded) => encoded,
        Err(e) => return internal(e),
    };
    if let Ok((body, kind)) = &encoded {
        page.metrics.lock()[slot] = Some((Instant::now(), body.as_str().into(), kind));
    }
    septet_observe::metrics_body(encoded)
}

async fn status(State(page): State<Page>) -> Response {
    let cached =
        page.status.lock().as_ref().filter(|(at, ..)| at.elapsed() < MIN_REFRESH).map(|(_, body, _)| body.clone());
    let body = match cached {
        Some(body) => body,
        None => match build_status(&page) {
            Ok(body) => {
                let body: Arc<str> = body.into();
                *page.status.lock() = Some((Instant::now(), body.clone(), "application/json"));
                body
            }
            Err(e) => return internal(e),
        },
    };
    ([(header::CONTENT_TYPE, "application/json")], body.to_string()).into_response()
}

/// The status JSON: see [`Status`].
fn build_status(page: &Page) -> crate::Result<String> {
    let snap = page.tracker.snapshot(MAX_ROWS)?;
    let config = page.tracker.config();
    let secs = |d: Duration| (d.as_secs_f64() * 1000.0).round() / 1000.0;
    let ago = |ms: u64| snap.now_ms.saturating_sub(ms) as f64 / 1000.0;
    let status = Status {
        version: env!("CARGO_PKG_VERSION"),
        uptime_s: secs(page.started.elapsed()),
        lease_ttl_s: secs(config.lease_ttl),
        heartbeat_timeout_s: secs(config.heartbeat_timeout),
        levels: snap.levels,
        totals: snap.totals,
        peers: snap
            .peers
            .iter()
            .map(|p| PeerView {
                peer_id: p.peer_id.0,
                addr: &p.addr,
                state: &p.state,
                slots: p.slots,
                in_use: p.in_use,
                leases: p.leases_total,
                failures: p.failures,
                slow: p.slow,
                last_seen_ago_s: ago(p.last_seen),
            })
            .collect(),
        peers_total: snap.peers_total,
        queue: snap
            .queue
            .iter()
            .map(|q| QueueView { position: q.position, count: q.count, from: q.from, waited_s: secs(q.waited) })
            .collect(),
        queue_total: snap.queue_total,
        leases: snap
            .leases
            .iter()
            .map(|l| LeaseView {
                lease_id: l.lease_id.0,
                slots: l.slots,
                holder: l.holder,
                detached: l.detached,
                age_s: secs(l.age),
                ttl_left_s: secs(l.ttl_left),
            })
            .collect(),
        leases_total: snap.leases_total,
        throughput: throughput(&page.history.lock()),
        federation: FederationView {
            cluster: config.cluster.clone(),
            siblings: page.tracker.federation().siblings(),
            leases: page.tracker.federation().leases(),
            slots_lent: snap.totals.slots_lent,
            slots_borrowed: snap.totals.slots_borrowed,
            links_brokered: {
                let [dialled_back, punched, spliced, failed] = page.tracker.metrics().brokered_counts();
                LinksBrokered { dialled_back, punched, spliced, failed }
            },
        },
    };
    serde_json::to_string(&status).map_err(|e| crate::Error::Internal(format!("encoding the status: {e}")))
}

/// Per-second rates between consecutive samples, oldest first.
fn throughput(history: &VecDeque<(Instant, Totals)>) -> Throughput {
    let mut t = Throughput { interval_s: 1.0, ..Throughput::default() };
    let pairs = history.iter().zip(history.iter().skip(1));
    for ((t0, a), (t1, b)) in pairs {
        let dt = t1.saturating_duration_since(*t0).as_secs_f64().max(1e-3);
        let rate = |x: u64, y: u64| ((y.saturating_sub(x)) as f64 / dt * 100.0).round() / 100.0;
        t.leases_granted.push(rate(a.leases_granted, b.leases_granted));
        let ended = |x: &Totals| x.leases_released + x.leases_expired + x.leases_dropped;
        t.leases_ended.push(rate(ended(a), ended(b)));
        t.requests.push(rate(a.requests, b.requests));
    }
    t
}

/// `GET /api/status`.
#[derive(Serialize)]
struct Status<'a> {
    version: &'static str,
    uptime_s: f64,
    lease_ttl_s: f64,
    heartbeat_timeout_s: f64,
    levels: Levels,
    totals: Totals,
    peers: Vec<PeerView<'a>>,
    peers_total: usize,
    queue: Vec<QueueView>,
    queue_total: usize,
    leases: Vec<LeaseView>,
    leases_total: usize,
    throughput: Throughput,
    federation: FederationView,
}

/// This tracker's cluster and its siblings (`--federate`).
#[derive(Serialize)]
struct FederationView {
    cluster: String,
    siblings: Vec<crate::federation::SiblingStatus>,
    /// Leases in force here that borrow from a sibling.
    leases: usize,
    slots_lent: u64,
    slots_borrowed: u64,
    /// Links this tracker brokered (a peer its requester cannot dial), by outcome.
    links_brokered: LinksBrokered,
}

/// Brokered links by outcome (see [`crate::metrics::BrokerOutcome`]).
#[derive(Serialize)]
struct LinksBrokered {
    dialled_back: u64,
    punched: u64,
    spliced: u64,
    failed: u64,
}

/// A peer row as the page shows it.
#[derive(Serialize)]
struct PeerView<'a> {
    peer_id: u64,
    addr: &'a str,
    state: &'a str,
    slots: u32,
    in_use: u32,
    leases: u64,
    failures: u32,
    slow: u32,
    last_seen_ago_s: f64,
}

#[derive(Serialize)]
struct QueueView {
    position: u32,
    count: u32,
    from: Option<SocketAddr>,
    waited_s: f64,
}

/// A lease in force; there is no token to show (see [`crate::LeaseEntry`]).
#[derive(Serialize)]
struct LeaseView {
    lease_id: u64,
    slots: u32,
    holder: Option<SocketAddr>,
    detached: bool,
    age_s: f64,
    ttl_left_s: f64,
}

#[derive(Serialize, Default)]
struct Throughput {
    interval_s: f64,
    leases_granted: Vec<f64>,
    leases_ended: Vec<f64>,
    requests: Vec<f64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn throughput_is_the_rate_between_samples() {
        let t0 = Instant::now();
        let totals = |granted, released, requests| Totals {
            leases_granted: granted,
            leases_released: released,
            requests,
            ..Totals::default()
        };
        let history: VecDeque<_> = [
            (t0, totals(0, 0, 0)),
            (t0 + Duration::from_secs(1), totals(5, 2, 20)),
            (t0 + Duration::from_secs(3), totals(9, 8, 20)),
        ]
        .into();
        let t = throughput(&history);
        assert_eq!(t.leases_granted, vec![5.0, 2.0]);
        assert_eq!(t.leases_ended, vec![2.0, 3.0]);
        assert_eq!(t.requests, vec![20.0, 0.0]);
    }

    #[test]
    fn the_page_loads_nothing_from_elsewhere() {
        for asset in [PAGE_HTML, PAGE_CSS, PAGE_JS] {
            // The SVG namespace is a name, not something fetched.
            let asset = asset.replace("\"http://www.w3.org/2000/svg\"", "");
            for needle in ["http://", "https://", "//cdn", "@import", "url("] {
                assert!(!asset.contains(needle), "an asset mentions {needle}");
            }
        }
        assert!(PAGE_HTML.contains("/status.js") && PAGE_HTML.contains("/status.css"));
        assert!(PAGE_JS.contains("/api/status"));
    }
}
