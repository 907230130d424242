//! The worker's Prometheus metrics ([`WorkerMetrics`]), counted where things
//! happen: products by dtype and outcome, compute time, task and product
//! bytes, tasks in progress, whether the worker is registered with its
//! tracker, and refused handshakes. `septet worker --http ADDR` serves them
//! at `/metrics` ([`run_http`]).
//!
//! Every family is `septet_worker_…`, in base units (seconds, bytes),
//! counters end in `_total`, and labels take values from fixed lists only.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Response;
use axum::routing::get;
use axum::Router;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};
use septet_common::frame::{BlockOp, BlocksHeader};
use septet_common::listener::{OnRefusal, Refusal};
use septet_common::{Dtype, TaskId};
use septet_observe::metrics::{counters, label_values, Labels2};
use septet_observe::HttpConfig;
use tokio::net::TcpListener;

/// Upper bounds (seconds) of the compute-time histogram's buckets: a
/// 64×64 block takes well under a millisecond, an 8192² one tens of seconds.
pub const COMPUTE_BUCKETS: [f64; 16] =
    [0.0005, 0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0];

/// The products counter's series, in order: (dtype, outcome).
const PRODUCTS: [Labels2; 4] = [
    [("dtype", "f64"), ("outcome", "ok")],
    [("dtype", "f64"), ("outcome", "error")],
    [("dtype", "f32"), ("outcome", "ok")],
    [("dtype", "f32"), ("outcome", "error")],
];

/// The worker's metrics: a cheap handle, shared by its connections, its
/// registration agent and its HTTP endpoint. [`Default`] makes a fresh
/// registry.
#[derive(Clone)]
pub struct WorkerMetrics {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for WorkerMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerMetrics").finish_non_exhaustive()
    }
}

impl Default for WorkerMetrics {
    fn default() -> Self {
        Self::new()
    }
}

struct Inner {
    registry: Registry,
    /// By [`PRODUCTS`].
    products: Vec<Counter>,
    compute: Histogram,
    received: Counter,
    sent: Counter,
    in_progress: Gauge,
    slots: Gauge,
    registered: Gauge,
    registrations: Counter,
    /// By [`Refusal::ALL`].
    refused: Vec<Counter>,
}

impl WorkerMetrics {
    /// A fresh registry with every family at zero.
    pub fn new() -> Self {
        let mut r = Registry::with_prefix("septet_worker");
        let products = counters(
            &mut r,
            "products",
            "Block products finished, by dtype and outcome (error: the task was refused, e.g. its product \
             would exceed the frame limit)",
            &PRODUCTS,
        );
        let compute = Histogram::new(COMPUTE_BUCKETS);
        r.register_with_unit("compute", "Time to compute one block product", Unit::Seconds, compute.clone());
        let received = Counter::default();
        r.register_with_unit(
            "received",
            "Bytes of task frames and relay parts read (operands and their headers, before any encryption)",
            Unit::Bytes,
            received.clone(),
        );
        let sent = Counter::default();
        r.register_with_unit(
            "sent",
            "Bytes of product frames and relay parts written (before any encryption)",
            Unit::Bytes,
            sent.clone(),
        );
        let in_progress = Gauge::default();
        r.register(
            "tasks_in_progress",
            "Tasks read and not yet answered: waiting for a slot, computing, or being written",
            in_progress.clone(),
        );
        let slots = Gauge::default();
        r.register("slots", "Products this worker computes at once (--slots)", slots.clone());
        let registered = Gauge::default();
        r.register(
            "registered",
            "1 while the worker is registered with its tracker (leaseable), else 0",
            registered.clone(),
        );
        let registrations = Counter::default();
        r.register(
            "registrations",
            "Times the worker registered with its tracker (more than one: it lost the tracker and came back)",
            registrations.clone(),
        );
        let refused = counters(
            &mut r,
            "handshakes_rejected",
            "Connections refused before or during the handshake, by reason (busy: past the connection cap)",
            &label_values("reason", Refusal::ALL.map(Refusal::as_str)),
        );
        Self {
            inner: Arc::new(Inner {
                registry: r,
                products,
                compute,
                received,
                sent,
                in_progress,
                slots,
                registered,
                registrations,
                refused,
            }),
        }
    }

    /// The registry, for encoding.
    pub fn registry(&self) -> &Registry {
        &self.inner.registry
    }

    /// The worker serves `slots` products at once.
    pub fn set_slots(&self, slots: u32) {
        self.inner.slots.set(i64::from(slots));
    }

    /// A task frame arrived: counts its bytes, and it is in progress until
    /// the returned guard is dropped.
    pub fn task_received(&self, task_id: TaskId, dtype: Dtype, shapes: Vec<(usize, usize)>) -> InProgress {
        let header = BlocksHeader { task_id, op: BlockOp::Multiply, dtype, shapes };
        self.inner.received.inc_by(header.frame_len().unwrap_or(0) as u64);
        self.inner.in_progress.inc();
        InProgress(self.inner.in_progress.clone())
    }

    /// A product of `dtype` was computed (`ok`) or refused, taking `took`.
    pub fn product(&self, dtype: Dtype, ok: bool, took: Duration) {
        let row = match dtype {
            Dtype::F64 => 0,
            Dtype::F32 => 2,
        } + usize::from(!ok);
        self.inner.products[row].inc();
        if ok {
            self.inner.compute.observe(took.as_secs_f64());
        }
    }

    /// A product of `shape` and `dtype` was written.
    pub fn product_sent(&self, task_id: TaskId, dtype: Dtype, shape: (usize, usize)) {
        let header = BlocksHeader { task_id, op: BlockOp::Product, dtype, shapes: vec![shape] };
        self.inner.sent.inc_by(header.frame_len().unwrap_or(0) as u64);
    }

    /// This worker's share of a relayed job ended: its product (`ok`, or
    /// the job failed here), `took` to compute, and the bytes of the parts
    /// it read and wrote.
    pub fn relay_done(&self, dtype: Dtype, ok: bool, took: Duration, bytes_in: u64, bytes_out: u64) {
        self.product(dtype, ok, took);
        self.inner.received.inc_by(bytes_in);
        self.inner.sent.inc_by(bytes_out);
    }

    /// The agent registered with the tracker, or lost the registration.
    pub fn set_registered(&self, registered: bool) {
        if registered {
            self.inner.registrations.inc();
        }
        self.inner.registered.set(i64::from(registered));
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
}

/// A task in progress: counted in `septet_worker_tasks_in_progress` until
/// dropped (its product written, or its error reply queued).
#[derive(Debug)]
pub struct InProgress(Gauge);

impl Drop for InProgress {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Serves the worker's `GET /metrics` on `listener` until `shutdown`
/// completes (the limits and the loopback rule are `septet_observe`'s).
pub async fn run_http(
    listener: TcpListener,
    metrics: WorkerMetrics,
    config: HttpConfig,
    shutdown: impl Future<Output = ()>,
) {
    async fn scrape(State(metrics): State<WorkerMetrics>, headers: HeaderMap) -> Response {
        septet_observe::metrics_response(metrics.registry(), &headers)
    }
    let router = Router::new()
        .route("/metrics", get(scrape))
        .route("/", get(|| async { "septet worker: Prometheus metrics at /metrics\n" }))
        .with_state(metrics);
    septet_observe::serve(listener, router, config, shutdown).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn products_bytes_and_progress_land_in_their_series() {
        let m = WorkerMetrics::new();
        m.set_slots(2);
        let guard = m.task_received(TaskId(1), Dtype::F32, vec![(2, 3), (3, 4)]);
        m.product(Dtype::F32, true, Duration::from_millis(3));
        m.product(Dtype::F64, false, Duration::ZERO);
        m.product_sent(TaskId(1), Dtype::F32, (2, 4));
        m.set_registered(true);
        let mut t = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut t, m.registry()).unwrap();
        // Frames: 4 length + 1 kind + 12 fixed + 8 per shape, then the payload.
        let received = 4 + 1 + 12 + 16 + (6 + 12) * 4;
        let sent = 4 + 1 + 12 + 8 + 8 * 4;
        for line in [
            "septet_worker_products_total{dtype=\"f32\",outcome=\"ok\"} 1".to_string(),
            "septet_worker_products_total{dtype=\"f64\",outcome=\"error\"} 1".into(),
            "septet_worker_products_total{dtype=\"f64\",outcome=\"ok\"} 0".into(),
            "septet_worker_compute_seconds_count 1".into(),
            "septet_worker_compute_seconds_bucket{le=\"0.005\"} 1".into(),
            format!("septet_worker_received_bytes_total {received}"),
            format!("septet_worker_sent_bytes_total {sent}"),
            "septet_worker_tasks_in_progress 1".into(),
            "septet_worker_slots 2".into(),
            "septet_worker_registered 1".into(),
            "septet_worker_registrations_total 1".into(),
            "septet_worker_handshakes_rejected_total{reason=\"busy\"} 0".into(),
        ] {
            assert!(t.lines().any(|l| l == line), "{line} missing from\n{t}");
        }
        drop(guard);
        m.set_registered(false);
        let mut t = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut t, m.registry()).unwrap();
        assert!(t.lines().any(|l| l == "septet_worker_tasks_in_progress 0"), "{t}");
        assert!(t.lines().any(|l| l == "septet_worker_registered 0"), "{t}");
        assert_eq!(t.lines().filter(|l| l.starts_with("# TYPE ")).count(), 9, "{t}");
        assert!(!t.contains(".."), "help texts end with one period: {t}");
    }
}
