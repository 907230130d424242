//! Brokered links at scale (issue 17): PAIRS links open at once between a
//! requester of cluster `n` and the worker slots cluster `m` lends it, each
//! brokered through both trackers, then a block moved both ways on every
//! link, size after size. Prints the numbers the federation design asks
//! for: brokering time (median, p99), the routing-table lookup, transfer
//! time and bytes per second by block size, and drops.
//!
//! ```text
//! cargo run --release --example brokers -- [--pairs 100] [--sizes 65536,1048576,8388608]
//! ```
//!
//! Everything runs in this process on loopback: tracker `m` with
//! ⌈PAIRS/10⌉ workers of 10 slots, tracker `n` federated with it and no
//! workers of its own, so a lease of PAIRS slots at `n` borrows all of
//! them. Every pair is linked three ways in turn, each in the same run:
//! directly (the requester dials the worker: the reference), dialled back
//! (the worker dials the requester on its tracker's order, as across one
//! NAT) and spliced (both dial `n`'s tracker, which joins them, as across
//! two); every link is authenticated with a cluster secret. A block of S bytes goes out as an (S/64)×8 f64
//! matrix times the 8×8 identity, and comes back as the product (S bytes),
//! checked equal to what was sent. Loopback has no NAT and no link limit:
//! the numbers are the brokers' and the hosts' costs, not a network's.

use std::sync::Arc;
use std::time::{Duration, Instant};

use ndarray::Array2;
use septet_client::dialback::Broker;
use septet_client::TrackerClient;
use septet_common::conn::ConnLimits;
use septet_common::frame::BlockOp;
use septet_common::proto::{PeerAddr, WorkerReply, WorkerRequest};
use septet_common::secure::{Secret, Security};
use septet_common::{Connection, Frame, Matrix, MatrixView, Role, TaskId};
use septet_tracker::{Tracker, TrackerConfig};
use septet_worker::WorkerConfig;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

type Res<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

const SLOTS_PER_WORKER: u32 = 10;
const TIMEOUT: Duration = Duration::from_secs(60);

#[tokio::main]
async fn main() -> Res<()> {
    let mut pairs = 100u32;
    let mut sizes: Vec<usize> = vec![64 << 10, 1 << 20, 8 << 20];
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--pairs" => pairs = args.next().ok_or("--pairs N")?.parse()?,
            "--sizes" => {
                sizes = args.next().ok_or("--sizes S,S,..")?.split(',').map(str::parse).collect::<Result<_, _>>()?
            }
            other => return Err(format!("unknown argument {other}; see the example's doc").into()),
        }
    }
    if pairs == 0 || sizes.iter().any(|&s| s < 64) {
        return Err("--pairs at least 1, --sizes at least 64 bytes each".into());
    }
    let security = Security::with_secret(Secret::generate(), false);
    let stop = CancellationToken::new();

    // Cluster m, with the slots; cluster n, federated with it, with none.
    let (m_addr, _) = tracker("m", vec![], &security, &stop).await?;
    let workers = pairs.div_ceil(SLOTS_PER_WORKER);
    for _ in 0..workers {
        worker(m_addr, &security, &stop).await?;
    }
    let (n_addr, n) = tracker("n", vec![m_addr.to_string()], &security, &stop).await?;
    let mut client = TrackerClient::connect_with(&n_addr.to_string(), Role::Client, TIMEOUT, &security).await?;
    // Until m's workers registered and n's poll saw them.
    let started = Instant::now();
    loop {
        let (_, rows) = client.federation_peers().await?;
        let free: u32 = rows.iter().filter(|r| r.cluster == "m" && r.state == "alive").map(|r| r.slots).sum();
        if free >= pairs {
            break;
        }
        if started.elapsed() > Duration::from_secs(30) {
            return Err(format!("cluster m offers {free} slots after 30 s, not {pairs}").into());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let grant = client.lease(pairs, false, Some(Duration::from_secs(30)), |_, _, _| {}).await?;
    println!(
        "{pairs} pairs: {} slots borrowed by cluster n from cluster m ({workers} workers × {SLOTS_PER_WORKER} slots)",
        grant.peers.len()
    );

    // The routing-table lookup, alone: which cluster lent each peer.
    let rounds = 20_000;
    let t = Instant::now();
    for _ in 0..rounds {
        for p in &grant.peers {
            std::hint::black_box(n.federation().lender_of(grant.lease_id, p.peer_id, &grant.token)?);
        }
    }
    let lookup_ns = t.elapsed().as_nanos() as f64 / (rounds as f64 * grant.peers.len() as f64);

    println!("routing-table lookup (which cluster lent a peer, token checked): {lookup_ns:.0} ns");

    // Each way of linking in turn: every link at once, then a block both
    // ways on every link at once, size after size.
    let limits = ConnLimits { security: security.clone(), ..ConnLimits::default() };
    let broker = Arc::new(Broker::start(&n_addr.to_string(), &security, limits.clone(), TIMEOUT, &grant).await?);
    let mut drops = 0;
    let mut setup = Vec::new();
    let mut rows = Vec::new();
    // The first round warms the workers' buffers (a fresh worker's first
    // tasks fault in their memory) and is not counted.
    for (round, mode) in [Mode::Direct, Mode::Direct, Mode::DialBack, Mode::Splice].into_iter().enumerate() {
        let counted = round > 0;
        if mode == Mode::Splice {
            broker.splice_always();
        }
        let t = Instant::now();
        let linking: Vec<_> = grant
            .peers
            .iter()
            .cloned()
            .map(|peer| {
                let (broker, limits) = (broker.clone(), limits.clone());
                tokio::spawn(async move {
                    let t = Instant::now();
                    let conn = link(mode, &broker, &peer, &limits).await;
                    (conn, t.elapsed())
                })
            })
            .collect();
        let mut links = Vec::new();
        let mut times = Vec::new();
        let mut dropped = 0;
        for done in linking {
            match done.await? {
                (Ok(conn), took) => {
                    links.push(conn);
                    times.push(took.as_secs_f64());
                }
                (Err(e), _) => {
                    eprintln!("a link failed: {e}");
                    dropped += 1;
                }
            }
        }
        let all = t.elapsed().as_secs_f64();
        setup.push(format!(
            "| {} | {} | {:.2} ms | {:.2} ms | {:.3} s | {dropped} |",
            mode.name(),
            links.len(),
            1e3 * quantile(&mut times, 0.5),
            1e3 * quantile(&mut times, 0.99),
            all
        ));
        drops += dropped;
        for (k, &size) in sizes.iter().enumerate() {
            let x = Arc::new(Array2::from_shape_fn((size / 64, 8), |(i, j)| (i * 8 + j) as f64));
            let t = Instant::now();
            let moving: Vec<_> = links
                .drain(..)
                .map(|mut conn| {
                    let x = x.clone();
                    tokio::spawn(async move {
                        let t = Instant::now();
                        let out = both_ways(&mut conn, TaskId(k as u64 + 1), &x).await;
                        (conn, out.map(|()| t.elapsed()))
                    })
                })
                .collect();
            let mut times = Vec::new();
            let mut dropped = 0;
            for done in moving {
                match done.await? {
                    (conn, Ok(took)) => {
                        links.push(conn);
                        times.push(took.as_secs_f64());
                    }
                    (_, Err(e)) => {
                        eprintln!("a transfer failed: {e}");
                        dropped += 1;
                    }
                }
            }
            let wall = t.elapsed().as_secs_f64();
            drops += dropped;
            let median = quantile(&mut times, 0.5);
            rows.push(format!(
                "| {} | {} | {} | {:.1} ms | {:.1} ms | {:.1} MB/s | {:.0} MB/s | {dropped} |",
                mode.name(),
                human(size),
                times.len(),
                1e3 * median,
                1e3 * quantile(&mut times, 0.99),
                if median > 0.0 { 2.0 * size as f64 / median / 1e6 } else { 0.0 },
                2.0 * size as f64 * times.len() as f64 / wall / 1e6,
            ));
        }
        if !counted {
            setup.clear();
            rows.clear();
        }
    }
    println!("\nLinking every pair at once (after one uncounted round of direct links at every size):\n");
    println!("| link | pairs linked | set-up median | p99 | all linked in | drops |");
    println!("| --- | --- | --- | --- | --- | --- |");
    setup.iter().for_each(|r| println!("{r}"));
    println!("\nA block both ways on every link at once (out as an (S/64)×8 f64 matrix with the 8×8 identity, back as the product):\n");
    println!("| link | block | pairs | round trip median | p99 | per pair (2·S / median) | all pairs (2·S·pairs / wall) | drops |");
    println!("| --- | --- | --- | --- | --- | --- | --- | --- |");
    rows.iter().for_each(|r| println!("{r}"));
    println!("drops: {drops}");
    stop.cancel();
    if drops > 0 {
        return Err(format!("{drops} links or transfers were dropped").into());
    }
    Ok(())
}

/// How a link is made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// The requester dials the worker (the reference: no broker).
    Direct,
    /// The worker dials the requester on its tracker's order.
    DialBack,
    /// Both dial n's tracker, which joins them.
    Splice,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Direct => "direct (reference)",
            Mode::DialBack => "dialled back",
            Mode::Splice => "spliced",
        }
    }
}

/// A link to `peer` made the `mode` way, presenting its lease ticket.
async fn link(mode: Mode, broker: &Broker, peer: &PeerAddr, limits: &ConnLimits) -> Res<Connection> {
    let mut conn = match mode {
        Mode::Direct => Connection::connect(peer.addr.as_str(), Role::Client, limits.clone()).await?,
        Mode::DialBack | Mode::Splice => broker.connect(peer, limits).await?,
    };
    let ticket = peer.ticket.clone().ok_or("the grant carries no ticket")?;
    conn.writer.send(&WorkerRequest::Ticket(ticket)).await?;
    Ok(conn)
}

/// Sends `x` times the 8×8 identity as task `task`, and checks that the
/// product that comes back is `x`.
async fn both_ways(conn: &mut Connection, task: TaskId, x: &Array2<f64>) -> Res<()> {
    let eye = Array2::<f64>::eye(8);
    conn.writer.send_blocks(task, BlockOp::Multiply, &[MatrixView::F64(x.view()), MatrixView::F64(eye.view())]).await?;
    loop {
        match tokio::time::timeout(TIMEOUT, conn.reader.read_frame()).await?? {
            Some(Frame::Blocks(b)) if b.task_id == task && b.op == BlockOp::Product => {
                return match b.mats.first() {
                    Some(Matrix::F64(c)) if c == x => Ok(()),
                    _ => Err("the product that came back is not the block sent".into()),
                };
            }
            Some(Frame::Control(body)) => match body.decode::<WorkerReply>()? {
                WorkerReply::Working | WorkerReply::Computed { .. } => continue,
                other => return Err(format!("the worker said {other:?}").into()),
            },
            Some(other) => return Err(format!("unexpected frame {other:?}").into()),
            None => return Err("the link closed".into()),
        }
    }
}

/// A tracker of cluster `cluster` on loopback, federated with `siblings`.
async fn tracker(
    cluster: &str,
    siblings: Vec<String>,
    security: &Security,
    stop: &CancellationToken,
) -> Res<(std::net::SocketAddr, Tracker)> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let config = TrackerConfig {
        cluster: cluster.into(),
        siblings,
        security: security.clone(),
        sibling_poll: Duration::from_millis(200),
        ..TrackerConfig::default()
    };
    let tracker = Tracker::new(config)?;
    let (t, s) = (tracker.clone(), stop.clone());
    tokio::spawn(async move { septet_tracker::server::serve(t, listener, async move { s.cancelled().await }).await });
    Ok((addr, tracker))
}

/// A worker of `SLOTS_PER_WORKER` slots registered with `tracker`.
async fn worker(tracker: std::net::SocketAddr, security: &Security, stop: &CancellationToken) -> Res<()> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let config = WorkerConfig {
        tracker: Some(tracker.to_string()),
        slots: SLOTS_PER_WORKER,
        threads: 1,
        warm_up: 0,
        security: security.clone(),
        ..WorkerConfig::default()
    };
    let s = stop.clone();
    tokio::spawn(async move { septet_worker::run(listener, config, async move { s.cancelled().await }).await });
    Ok(())
}

/// The `q` quantile of `v` (nearest rank), 0 for none.
fn quantile(v: &mut [f64], q: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    v[((q * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1]
}

fn human(bytes: usize) -> String {
    match bytes {
        b if b >= 1 << 20 => format!("{} MiB", b >> 20),
        b if b >= 1 << 10 => format!("{} KiB", b >> 10),
        b => format!("{b} B"),
    }
}
