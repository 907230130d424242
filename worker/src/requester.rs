//! [`Requester`]: multiplies A·B on the grid. It leases seven slots, sends
//! each leased worker one Strassen operand pair, folds the products into C
//! as they arrive, and releases the lease.
//!
//! Memory: A, B and C (3 units of n² elements for square inputs) plus at
//! most two formed operand pairs (the one being sent and the next one being
//! formed, ≤ 0.75 units in the send order used) plus at most
//! [`RequesterConfig::max_receiving`] products being received and
//! accumulated (0.25 units each). Plain quadrants are sent straight from A's
//! and B's memory. The rest waits in the workers' socket buffers.

use std::sync::Arc;
use std::time::{Duration, Instant};

use ndarray::{Array2, ArrayView2};
use parking_lot::Mutex;
use septet_common::conn::ConnLimits;
use septet_common::frame::{BlockOp, BlocksHeader, Frame};
use septet_common::proto::{LeaseGrant, PeerAddr};
use septet_common::strassen::{self, Operand, Quad, Split, PRODUCTS};
use septet_common::{deadline, Connection, Element, Error, FrameReader, Message, Role, PEERS_PER_LEASE};
use serde::Serialize;
use tokio::net::tcp::OwnedReadHalf;
use tokio::sync::{mpsc, oneshot, Semaphore};
use tracing::{debug, warn};

use crate::client::TrackerClient;

/// Order in which the seven pairs are formed and sent: pairs that need two
/// formed operands alternate with pairs that need one, so the two pairs in
/// memory at once never hold more than three formed blocks.
const SEND_ORDER: [usize; 7] = [0, 1, 5, 2, 6, 3, 4];

/// Requester settings.
#[derive(Debug, Clone)]
pub struct RequesterConfig {
    /// Tracker address.
    pub tracker: String,
    /// Deadline for connecting, hellos and tracker requests.
    pub io_timeout: Duration,
    /// Give up waiting in the lease queue after this long (`None`: wait).
    pub max_lease_wait: Option<Duration>,
    /// Slowest compute rate a worker is allowed, in GFLOP/s: with
    /// `io_timeout` it sets each product's deadline.
    pub min_worker_gflops: f64,
    /// Products received and accumulated at once (bounds memory).
    pub max_receiving: usize,
}

impl Default for RequesterConfig {
    fn default() -> Self {
        Self {
            tracker: "127.0.0.1:7700".into(),
            io_timeout: Duration::from_secs(10),
            max_lease_wait: None,
            min_worker_gflops: 0.5,
            max_receiving: 2,
        }
    }
}

/// Something that happened during a job, for progress displays.
#[derive(Debug, Clone)]
pub enum Progress {
    /// The lease request is queued.
    Waiting {
        /// 1-based place in the queue.
        position: u32,
        /// Free slots.
        free: u32,
        /// Slots needed.
        needed: u32,
    },
    /// The lease was granted.
    Leased {
        /// Its id.
        lease_id: u64,
    },
    /// A product's operands were sent.
    Sent {
        /// "M1".."M7".
        product: &'static str,
        /// Bytes sent.
        bytes: u64,
    },
    /// A product arrived and was folded into C.
    Received {
        /// "M1".."M7".
        product: &'static str,
        /// Bytes received.
        bytes: u64,
    },
}

/// Per-product record of a job.
#[derive(Debug, Clone, Serialize)]
pub struct PeerReport {
    /// "M1".."M7".
    pub product: &'static str,
    /// Peer that computed it.
    pub peer_id: u64,
    /// Its address.
    pub addr: String,
    /// Bytes of the task frame.
    pub bytes_sent: u64,
    /// Bytes of the reply frames.
    pub bytes_received: u64,
    /// Seconds spent writing the task.
    pub send_s: f64,
    /// Seconds the worker reports computing.
    pub compute_s: f64,
    /// Seconds from the start of the job until the product was folded into C.
    pub done_at_s: f64,
    /// Seconds reading the product (once allowed to).
    pub receive_s: f64,
}

/// What a job did and how long it took.
#[derive(Debug, Clone, Serialize)]
pub struct JobReport {
    /// Rows of A and C.
    pub m: usize,
    /// Inner dimension.
    pub k: usize,
    /// Columns of B and C.
    pub n: usize,
    /// Element type.
    pub dtype: String,
    /// The lease used (0 when no lease was needed).
    pub lease_id: u64,
    /// Wall time of the whole job, seconds.
    pub total_s: f64,
    /// Time from asking the tracker to holding the lease (includes queueing).
    pub lease_wait_s: f64,
    /// Time connecting to the seven peers.
    pub connect_s: f64,
    /// Bytes sent to workers.
    pub bytes_sent: u64,
    /// Bytes received from workers.
    pub bytes_received: u64,
    /// Classical flops (2·m·k·n) per second of `total_s`, in GFLOP/s.
    pub gflops: f64,
    /// (bytes sent + received) / `total_s`, in GB/s.
    pub throughput_gbps: f64,
    /// One record per product, in M1..M7 order.
    pub peers: Vec<PeerReport>,
    /// Messages that were dropped or failed, described.
    pub failures: Vec<String>,
}

/// Every way a grid multiplication can fail.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    /// A and B cannot be multiplied; nothing was leased.
    #[error("cannot multiply A {left:?} by B {right:?}: A has {} columns but B has {} rows", left.1, right.0)]
    ShapeMismatch {
        /// A's shape.
        left: (usize, usize),
        /// B's shape.
        right: (usize, usize),
    },
    /// Talking to the tracker failed.
    #[error("tracker {addr}: {source}")]
    Tracker {
        /// Tracker address.
        addr: String,
        /// What failed.
        #[source]
        source: Error,
    },
    /// A leased peer failed.
    #[error("{product} on peer {peer_id} ({addr}) failed: {source}")]
    Peer {
        /// The product it was computing.
        product: &'static str,
        /// The peer.
        peer_id: u64,
        /// Its address.
        addr: String,
        /// What happened.
        #[source]
        source: Error,
    },
    /// A local step failed (a bug rather than bad input).
    #[error("internal error: {0}")]
    Internal(String),
}

/// Result alias for requests.
pub type Result<T, E = RequestError> = std::result::Result<T, E>;

/// Keeps a lease: renews it at half its TTL, releases it on request, and
/// — since the lease is attached to this connection — ends it at the
/// tracker whenever this task or its connection dies, however the job ends.
struct LeaseKeeper {
    release: Option<oneshot::Sender<oneshot::Sender<septet_common::Result<()>>>>,
}

impl LeaseKeeper {
    fn spawn(mut client: TrackerClient, grant: &LeaseGrant) -> LeaseKeeper {
        let (tx, mut rx) = oneshot::channel::<oneshot::Sender<septet_common::Result<()>>>();
        let lease_id = grant.lease_id;
        let every = (Duration::from_millis(grant.ttl_ms) / 2).max(Duration::from_millis(10));
        tokio::spawn(async move {
            let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
            loop {
                tokio::select! {
                    _ = tick.tick() => {
                        if let Err(e) = client.renew(lease_id).await {
                            warn!(lease_id, error = %e, "could not renew the lease");
                        }
                    }
                    cmd = &mut rx => {
                        if let Ok(reply) = cmd {
                            let _ = reply.send(client.release(lease_id).await);
                        }
                        // Dropping the client closes the connection: the
                        // tracker ends the lease if it still exists.
                        return;
                    }
                }
            }
        });
        LeaseKeeper { release: Some(tx) }
    }

    async fn release(mut self) -> septet_common::Result<()> {
        let (tx, rx) = oneshot::channel();
        if let Some(cmd) = self.release.take() {
            let _ = cmd.send(tx);
        }
        rx.await.unwrap_or(Ok(()))
    }
}

/// A formed operand, owned or a quadrant of the input used in place.
enum Formed<T> {
    Quadrant(Quad),
    Owned(Array2<T>),
}

impl<T: Element> Formed<T> {
    fn form(x: ArrayView2<'_, T>, terms: &[strassen::Term], shape: (usize, usize)) -> Formed<T> {
        match strassen::operand(x, terms, shape) {
            Operand::View(_) => Formed::Quadrant(terms[0].1),
            Operand::Owned(a) => Formed::Owned(a),
        }
    }

    fn view<'a>(&'a self, x: ArrayView2<'a, T>, shape: (usize, usize)) -> ArrayView2<'a, T> {
        match self {
            Formed::Quadrant(q) => strassen::quadrant(x, *q, shape.0, shape.1),
            Formed::Owned(a) => a.view(),
        }
    }
}

/// Multiplies matrices on the grid.
#[derive(Debug, Clone)]
pub struct Requester {
    config: RequesterConfig,
}

type ProgressFn = Arc<dyn Fn(Progress) + Send + Sync>;

impl Requester {
    /// A requester for the tracker in `config`.
    pub fn new(config: RequesterConfig) -> Self {
        Self { config }
    }

    /// The configuration.
    pub fn config(&self) -> &RequesterConfig {
        &self.config
    }

    /// Deadline for one product's reply: connection overhead plus its flops
    /// at the slowest rate allowed.
    pub fn product_deadline(&self, split: Split) -> Duration {
        let flops = split.strassen_flops() / 7.0;
        self.config.io_timeout + Duration::from_secs_f64(flops / (self.config.min_worker_gflops * 1e9))
    }

    /// Computes A·B on seven leased workers.
    ///
    /// Shapes are checked before anything is leased. The lease is released
    /// however the job ends; if the job is cancelled (the future dropped),
    /// the tracker connection closes and the tracker ends the lease.
    ///
    /// # Errors
    /// [`RequestError::ShapeMismatch`], [`RequestError::Tracker`] if leasing
    /// fails, [`RequestError::Peer`] naming the peer that failed.
    pub async fn multiply<T: Element>(
        &self,
        a: Arc<Array2<T>>,
        b: Arc<Array2<T>>,
        progress: impl Fn(Progress) + Send + Sync + 'static,
    ) -> Result<(Array2<T>, JobReport)> {
        let split =
            Split::of(a.dim(), b.dim()).map_err(|_| RequestError::ShapeMismatch { left: a.dim(), right: b.dim() })?;
        let started = Instant::now();
        let mut report = JobReport {
            m: split.m,
            k: split.k,
            n: split.n,
            dtype: T::DTYPE.to_string(),
            lease_id: 0,
            total_s: 0.0,
            lease_wait_s: 0.0,
            connect_s: 0.0,
            bytes_sent: 0,
            bytes_received: 0,
            gflops: 0.0,
            throughput_gbps: 0.0,
            peers: Vec::new(),
            failures: Vec::new(),
        };
        if split.m == 0 || split.n == 0 || split.k == 0 {
            // Nothing to distribute: the product is all zeros (or empty).
            return Ok((Array2::zeros((split.m, split.n)), report));
        }
        let progress: ProgressFn = Arc::new(progress);
        let tracker_err = |source| RequestError::Tracker { addr: self.config.tracker.clone(), source };
        let mut tracker = TrackerClient::connect(&self.config.tracker, Role::Client, self.config.io_timeout)
            .await
            .map_err(tracker_err)?;
        let p = progress.clone();
        let grant = tracker
            .lease(PEERS_PER_LEASE, false, self.config.max_lease_wait, move |position, free, needed| {
                p(Progress::Waiting { position, free, needed })
            })
            .await
            .map_err(tracker_err)?;
        report.lease_id = grant.lease_id;
        report.lease_wait_s = started.elapsed().as_secs_f64();
        progress(Progress::Leased { lease_id: grant.lease_id });
        let keeper = LeaseKeeper::spawn(tracker, &grant);

        let result = self.run_job(&a, &b, split, &grant.peers, &progress, started, &mut report).await;
        let released = keeper.release().await;
        let c = result?;
        if let Err(e) = released {
            report.failures.push(format!("release of lease {}: {e}", grant.lease_id));
        }
        let total = started.elapsed().as_secs_f64();
        report.total_s = total;
        report.gflops = split.classical_flops() / total / 1e9;
        report.throughput_gbps = (report.bytes_sent + report.bytes_received) as f64 / total / 1e9;
        Ok((c, report))
    }

    #[allow(clippy::too_many_arguments)]
    async fn run_job<T: Element>(
        &self,
        a: &Arc<Array2<T>>,
        b: &Arc<Array2<T>>,
        split: Split,
        peers: &[PeerAddr],
        progress: &ProgressFn,
        started: Instant,
        report: &mut JobReport,
    ) -> Result<Array2<T>> {
        let peer_err = |i: usize, source: Error| RequestError::Peer {
            product: PRODUCTS[i].name,
            peer_id: peers[i].peer_id,
            addr: peers[i].addr.clone(),
            source,
        };
        // Connect to all seven in parallel.
        let product_len =
            BlocksHeader { task_id: 0, op: BlockOp::Product, dtype: T::DTYPE, shapes: vec![split.product_shape()] }
                .frame_len()
                .ok_or_else(|| RequestError::Internal("product too large".into()))?;
        // Products are exactly `product_len` bytes; 1 MiB leaves room for error messages.
        let limits = ConnLimits { max_frame_len: product_len.max(1 << 20), handshake_timeout: self.config.io_timeout };
        let mut connecting = tokio::task::JoinSet::new();
        for (i, peer) in peers.iter().enumerate().take(7) {
            let addr = peer.addr.clone();
            connecting.spawn(async move { (i, Connection::connect(addr, Role::Client, limits).await) });
        }
        let mut conns: Vec<Option<Connection>> = (0..7).map(|_| None).collect();
        while let Some(joined) = connecting.join_next().await {
            let (i, conn) = joined.map_err(|e| RequestError::Internal(e.to_string()))?;
            conns[i] = Some(conn.map_err(|e| peer_err(i, e))?);
        }
        report.connect_s = started.elapsed().as_secs_f64() - report.lease_wait_s;

        // Receivers: one task per product, at most `max_receiving` reading
        // and accumulating at once.
        let c = Arc::new(Mutex::new(septet_common::matrix::alloc_zeroed::<T>((split.m, split.n))));
        let receiving = Arc::new(Semaphore::new(self.config.max_receiving.max(1)));
        let (done_tx, mut done_rx) = mpsc::channel::<(usize, Result<Received, Error>)>(7);
        let mut writers = Vec::with_capacity(7);
        let reply_deadline = self.product_deadline(split);
        let mut receivers = tokio::task::JoinSet::new();
        for (i, conn) in conns.into_iter().enumerate() {
            let conn = conn.expect("every peer connected");
            writers.push(conn.writer);
            let (c, receiving, done_tx) = (c.clone(), receiving.clone(), done_tx.clone());
            let reader = conn.reader;
            receivers.spawn(async move {
                let out = receive::<T>(reader, i, split, c, receiving, reply_deadline).await;
                let _ = done_tx.send((i, out)).await;
            });
        }
        drop(done_tx);

        // Send in SEND_ORDER, forming the next pair while the previous one is written.
        let mut sent = [(0u64, 0.0f64); 7];
        let form = |i: usize| {
            let (a, b) = (a.clone(), b.clone());
            tokio::task::spawn_blocking(move || {
                let p = &PRODUCTS[i];
                (
                    Formed::form(a.view(), p.left, split.left_shape()),
                    Formed::form(b.view(), p.right, split.right_shape()),
                )
            })
        };
        let mut next = Some(form(SEND_ORDER[0]));
        for (step, &i) in SEND_ORDER.iter().enumerate() {
            let (x, y) = next.take().expect("formed").await.map_err(|e| RequestError::Internal(e.to_string()))?;
            next = SEND_ORDER.get(step + 1).map(|&j| form(j));
            let (xv, yv) = (x.view(a.view(), split.left_shape()), y.view(b.view(), split.right_shape()));
            let header = BlocksHeader {
                task_id: i as u64,
                op: BlockOp::Multiply,
                dtype: T::DTYPE,
                shapes: vec![xv.dim(), yv.dim()],
            };
            let t = Instant::now();
            deadline(
                reply_deadline,
                "a worker to take its operands",
                writers[i].send_blocks(i as u64, BlockOp::Multiply, &[T::view(xv), T::view(yv)]),
            )
            .await
            .map_err(|e| peer_err(i, e))?;
            let bytes = header.frame_len().unwrap_or(0) as u64;
            sent[i] = (bytes, t.elapsed().as_secs_f64());
            progress(Progress::Sent { product: PRODUCTS[i].name, bytes });
        }

        // Gather.
        let mut reports: Vec<Option<PeerReport>> = (0..7).map(|_| None).collect();
        while let Some((i, out)) = done_rx.recv().await {
            let got = out.map_err(|e| peer_err(i, e))?;
            progress(Progress::Received { product: PRODUCTS[i].name, bytes: got.bytes });
            reports[i] = Some(PeerReport {
                product: PRODUCTS[i].name,
                peer_id: peers[i].peer_id,
                addr: peers[i].addr.clone(),
                bytes_sent: sent[i].0,
                bytes_received: got.bytes,
                send_s: sent[i].1,
                compute_s: got.compute.as_secs_f64(),
                done_at_s: started.elapsed().as_secs_f64(),
                receive_s: got.receive.as_secs_f64(),
            });
        }
        while receivers.join_next().await.is_some() {}
        drop(writers);
        report.peers = reports.into_iter().map(|r| r.expect("every product received")).collect();
        report.bytes_sent = report.peers.iter().map(|p| p.bytes_sent).sum();
        report.bytes_received = report.peers.iter().map(|p| p.bytes_received).sum();
        let c = Arc::try_unwrap(c).map_err(|_| RequestError::Internal("C still shared".into()))?;
        debug!("job complete");
        Ok(c.into_inner())
    }
}

/// A product received and folded into C.
struct Received {
    bytes: u64,
    compute: Duration,
    receive: Duration,
}

/// Waits for product `i` on `reader`, checks it, and adds it into C.
async fn receive<T: Element>(
    mut reader: FrameReader<OwnedReadHalf>,
    i: usize,
    split: Split,
    c: Arc<Mutex<Array2<T>>>,
    receiving: Arc<Semaphore>,
    reply_deadline: Duration,
) -> Result<Received, Error> {
    let expected = "the product";
    let msg = deadline(reply_deadline, "a worker's product", reader.read_message(expected)).await?;
    let (compute_us, header_bytes) = match msg {
        Message::Computed { task_id, compute_us } if task_id == i as u64 => {
            (compute_us, septet_common::frame::encode_control(&Message::Computed { task_id, compute_us })?.len())
        }
        other => return Err(other.into_error("Computed")),
    };
    let _permit = receiving.acquire().await.map_err(|_| Error::Closed("a receive permit"))?;
    let t = Instant::now();
    let frame = deadline(reply_deadline, "a worker's product", reader.read_frame()).await?;
    let receive = t.elapsed();
    let product = match frame {
        Some(Frame::Blocks(blocks)) if blocks.op == BlockOp::Product && blocks.task_id == i as u64 => blocks,
        Some(Frame::Blocks(blocks)) => {
            return Err(Error::BadFrame(format!(
                "expected the product of task {i}, got {:?} of task {}",
                blocks.op, blocks.task_id
            )))
        }
        Some(Frame::Control(msg)) => return Err(msg.into_error("the product")),
        None => return Err(Error::Closed(expected)),
    };
    let [m] =
        <[septet_common::Matrix; 1]>::try_from(product.mats).map_err(|_| Error::BadFrame("product count".into()))?;
    let shape = m.shape();
    let dtype = m.dtype();
    let m = T::from_matrix(m).map_err(|_| Error::DtypeMismatch { left: T::DTYPE, right: dtype })?;
    if shape != split.product_shape() {
        return Err(Error::ShapeMismatch { left: shape, right: split.product_shape() });
    }
    let frame_len =
        BlocksHeader { task_id: i as u64, op: BlockOp::Product, dtype: T::DTYPE, shapes: vec![shape] }.frame_len();
    let bytes = (frame_len.unwrap_or(0) + header_bytes) as u64;
    tokio::task::spawn_blocking(move || {
        let mut c = c.lock();
        strassen::accumulate(c.view_mut(), m.view(), &PRODUCTS[i], split)
    })
    .await
    .map_err(|e| Error::Invalid(format!("accumulating a product panicked: {e}")))??;
    Ok(Received { bytes, compute: Duration::from_micros(compute_us), receive })
}
