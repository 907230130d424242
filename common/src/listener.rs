//! The accept loop the tracker and the worker share: a connection cap, the
//! handshake under its deadline, one task per connection, cancellation and
//! a bounded drain. What a connection does once authenticated is the
//! caller's handler; this module never sees a request.
//!
//! Until its handshake completes a connection holds a task, its socket and
//! the handshake's fixed-size buffers, nothing more, for at most the
//! handshake timeout; refusals are logged as one line naming the address,
//! at most [`LOG_BURST`] of them per [`LOG_WINDOW`] (so a flood of bad
//! connections cannot flood the log either). Every refusal, logged or
//! not, is also told to [`ListenConfig::on_refusal`] as a [`Refusal`], so
//! a server can count them (its metrics).

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use crate::conn::ConnLimits;
use crate::proto::{Rendezvous, SpliceId, PUNCH_MAGIC, SPLICE_MAGIC};
use crate::{deadline, Connection, Error, Role};

/// Refusal warnings logged per window at most.
pub const LOG_BURST: u32 = 10;
/// The window of [`LOG_BURST`].
pub const LOG_WINDOW: Duration = Duration::from_secs(10);

/// How a server accepts connections.
#[derive(Debug, Clone)]
pub struct ListenConfig {
    /// What the server is, for logs ("tracker", "worker").
    pub name: &'static str,
    /// Frame limits, handshake deadline and security of every connection.
    pub limits: ConnLimits,
    /// Connections served at once; the excess is closed at once.
    pub max_connections: usize,
    /// How long shutdown waits for connections to finish.
    pub drain_timeout: Duration,
    /// Told of every connection refused before its handshake completed.
    pub on_refusal: Option<OnRefusal>,
    /// Takes the connections that ask to be spliced (a tracker's; see
    /// [`crate::proto::SPLICE_MAGIC`]). Without one, they fail the
    /// handshake like any other stranger's bytes.
    pub splicer: Option<Splicer>,
}

/// Takes a connection that opened with a [`Rendezvous`]' magic and id
/// (read off the stream); called on the accept path, so it must hand the
/// stream on and return.
#[derive(Clone)]
pub struct Splicer(pub Arc<dyn Fn(TcpStream, Rendezvous) + Send + Sync>);

impl std::fmt::Debug for Splicer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Splicer(..)")
    }
}

/// Whether `stream` opens with a [`Rendezvous`]' magic: then the
/// rendezvous, read off it. Otherwise nothing is consumed (the handshake
/// reads the bytes).
async fn splice_request(stream: &mut TcpStream) -> std::io::Result<Option<Rendezvous>> {
    let mut head = [0u8; 20];
    let magic = loop {
        let n = stream.peek(&mut head).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        let seen = n.min(SPLICE_MAGIC.len());
        let Some(magic) = [SPLICE_MAGIC, PUNCH_MAGIC].into_iter().find(|m| head[..seen] == m[..seen]) else {
            return Ok(None);
        };
        if n == head.len() {
            break magic;
        }
        // The first bytes came alone: wait a moment for the rest.
        tokio::time::sleep(Duration::from_millis(2)).await;
    };
    stream.read_exact(&mut head).await?;
    let id: SpliceId = head[4..].try_into().expect("16 bytes");
    Ok(Some(if magic == SPLICE_MAGIC { Rendezvous::Splice(id) } else { Rendezvous::Punch(id) }))
}

/// The accept queue asked of the kernel for a server's listener (the
/// kernel caps it at `net.core.somaxconn`, 4096 by default since Linux
/// 5.4). Connections the kernel has completed wait there until the accept
/// loop takes them; when it is full the kernel drops new ones' packets and
/// their clients retry after a second. The default of the libraries (128)
/// is filled by any burst of connections from outside, so an honest peer
/// met a one-second stall under a flood the handshake budget below
/// otherwise turns away at once.
pub const LISTEN_BACKLOG: u32 = 4096;

/// Binds a server's listener on `addr` (the first of its addresses that
/// binds) with an accept queue of [`LISTEN_BACKLOG`] and, as the standard
/// library does on Unix, `SO_REUSEADDR`, so a restarted server can bind the
/// port its last run left in `TIME_WAIT`.
///
/// # Errors
/// The last address's error, or `InvalidInput` if `addr` resolves to none.
pub async fn bind(addr: impl tokio::net::ToSocketAddrs) -> std::io::Result<TcpListener> {
    let mut last = None;
    for addr in tokio::net::lookup_host(addr).await? {
        let socket = if addr.is_ipv4() { tokio::net::TcpSocket::new_v4()? } else { tokio::net::TcpSocket::new_v6()? };
        #[cfg(unix)]
        socket.set_reuseaddr(true)?;
        match socket.bind(addr).and_then(|()| socket.listen(LISTEN_BACKLOG)) {
            Ok(listener) => return Ok(listener),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| {
        std::io::Error::new(std::io::ErrorKind::InvalidInput, "the address resolved to no address to listen on")
    }))
}

/// Connections in their handshake (not yet authenticated) at once, from
/// everyone: past it, the oldest is dropped to make room — an honest
/// handshake takes milliseconds, so the oldest is almost always an idle
/// outsider's.
pub const MAX_HANDSHAKES: usize = 512;
/// Connections in their handshake at once from one address: past it, new
/// ones from there are turned away at once. Authenticated connections
/// count only against [`ListenConfig::max_connections`], which outsiders
/// cannot reach, so a flood of unauthenticated connections from a few
/// addresses never keeps a peer with the secret out.
pub const MAX_HANDSHAKES_PER_SOURCE: u32 = 128;

/// The connections in their handshake, by age and by source address.
#[derive(Debug, Default)]
struct Handshakes {
    state: Mutex<HandshakeState>,
}

#[derive(Debug, Default)]
struct HandshakeState {
    next: u64,
    /// Oldest first: id → (source, what cancels it).
    open: std::collections::BTreeMap<u64, CancellationToken>,
    per_source: std::collections::HashMap<std::net::IpAddr, u32>,
}

/// One connection's place among the handshakes; leaves it when dropped.
struct HandshakeSlot {
    id: u64,
    ip: std::net::IpAddr,
    evicted: CancellationToken,
    all: Arc<Handshakes>,
}

impl Drop for HandshakeSlot {
    fn drop(&mut self) {
        let mut state = self.all.state.lock();
        state.open.remove(&self.id);
        if let Some(n) = state.per_source.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                state.per_source.remove(&self.ip);
            }
        }
    }
}

impl Handshakes {
    /// A place for a handshake from `ip`, making room by dropping the
    /// oldest if all are taken; `None` when `ip` has too many already.
    fn enter(self: &Arc<Self>, ip: std::net::IpAddr, max: usize, per_source: u32) -> Option<HandshakeSlot> {
        let mut state = self.state.lock();
        let from_ip = state.per_source.entry(ip).or_insert(0);
        if *from_ip >= per_source {
            return None;
        }
        *from_ip += 1;
        while state.open.len() >= max {
            let Some((_, oldest)) = state.open.pop_first() else { break };
            oldest.cancel();
        }
        state.next += 1;
        let (id, evicted) = (state.next, CancellationToken::new());
        state.open.insert(id, evicted.clone());
        Some(HandshakeSlot { id, ip, evicted, all: self.clone() })
    }
}

/// Why a connection was refused before it was served: a fixed list, so it
/// can label a metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Refusal {
    /// Past the connection cap.
    Busy,
    /// The handshake did not finish within its deadline.
    Timeout,
    /// The client closed (or reset) the connection during the handshake.
    Closed,
    /// The client's proof did not verify: a different cluster secret.
    WrongSecret,
    /// One side holds a cluster secret and the other does not.
    SecretMismatch,
    /// One side encrypts and the other does not.
    EncryptionMismatch,
    /// The client speaks another protocol version.
    Version,
    /// The bytes were not a septet handshake.
    NotSeptet,
    /// Too many unauthenticated connections: from its address, or (the
    /// oldest dropped for a newer one) from everyone.
    Flood,
}

impl Refusal {
    /// Every reason, for metrics that show each from the start.
    pub const ALL: [Refusal; 9] = [
        Refusal::Busy,
        Refusal::Timeout,
        Refusal::Closed,
        Refusal::WrongSecret,
        Refusal::SecretMismatch,
        Refusal::EncryptionMismatch,
        Refusal::Version,
        Refusal::NotSeptet,
        Refusal::Flood,
    ];

    /// The reason as a metric label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::Busy => "busy",
            Refusal::Timeout => "timeout",
            Refusal::Closed => "closed",
            Refusal::WrongSecret => "wrong_secret",
            Refusal::SecretMismatch => "secret_mismatch",
            Refusal::EncryptionMismatch => "encryption_mismatch",
            Refusal::Version => "version",
            Refusal::NotSeptet => "not_septet",
            Refusal::Flood => "flood",
        }
    }

    /// The reason a handshake failed with `err`.
    pub fn of(err: &Error) -> Self {
        use crate::secure::HandshakeFailure as F;
        match err {
            Error::Timeout { .. } => Refusal::Timeout,
            Error::Closed(_) | Error::ClosedMidFrame | Error::Io(_) => Refusal::Closed,
            Error::VersionMismatch { .. } => Refusal::Version,
            Error::Handshake { failure, .. } => match failure {
                F::WrongSecret | F::SecretRefused | F::BadServerProof => Refusal::WrongSecret,
                F::ClientHasNoSecret | F::ClientHasSecret | F::SecretRequired | F::PeerHasNoSecret => {
                    Refusal::SecretMismatch
                }
                F::ClientDoesNotEncrypt | F::ClientEncrypts | F::EncryptionRequired | F::PeerDoesNotEncrypt => {
                    Refusal::EncryptionMismatch
                }
                F::Busy => Refusal::Busy,
                F::NotSeptet => Refusal::NotSeptet,
            },
            _ => Refusal::NotSeptet,
        }
    }
}

/// A callback told of each [`Refusal`]; it must be quick (it runs on the
/// accept path).
#[derive(Clone)]
pub struct OnRefusal(pub Arc<dyn Fn(Refusal) + Send + Sync>);

impl std::fmt::Debug for OnRefusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("OnRefusal(..)")
    }
}

impl ListenConfig {
    fn refused(&self, why: Refusal) {
        if let Some(hook) = &self.on_refusal {
            (hook.0)(why);
        }
    }
}

/// Logs at most [`LOG_BURST`] lines per [`LOG_WINDOW`], then says how many
/// it left out.
#[derive(Debug)]
pub struct RateLimit {
    state: Mutex<(Instant, u32, u64)>,
}

impl Default for RateLimit {
    fn default() -> Self {
        Self::new()
    }
}

impl RateLimit {
    /// A new window.
    pub fn new() -> Self {
        Self { state: Mutex::new((Instant::now(), 0, 0)) }
    }

    /// Whether to log one more line now; `Some(n)` also reports `n` lines
    /// suppressed in the window before.
    pub fn allow(&self) -> Option<u64> {
        let mut state = self.state.lock();
        let (start, logged, suppressed) = &mut *state;
        if start.elapsed() >= LOG_WINDOW {
            let dropped = *suppressed;
            *state = (Instant::now(), 1, 0);
            return Some(dropped);
        }
        if *logged < LOG_BURST {
            *logged += 1;
            Some(0)
        } else {
            *suppressed += 1;
            None
        }
    }
}

fn log_refusal(server: &'static str, addr: SocketAddr, err: &Error, limit: &RateLimit) {
    // Port scanners and health checks that connect and close are not news.
    if matches!(err, Error::Closed(_) | Error::Io(_)) {
        debug!(peer = %addr, error = %err, "{server}: connection closed during the handshake");
        return;
    }
    if let Some(suppressed) = limit.allow() {
        if suppressed > 0 {
            warn!("{server}: {suppressed} more refused connections were not logged");
        }
        match err {
            Error::Handshake { .. } => warn!(peer = %addr, "{server}: refused a connection: {err}"),
            _ => warn!(peer = %addr, "{server}: refused a connection from {addr}: {err}"),
        }
    }
}

/// Tells a connection past the cap that the server is busy and closes it,
/// without waiting for anything: a best-effort write of one hello into the
/// socket's buffer. The client's hello, if it is already here, is read
/// first so the close is a FIN the client can read the hello before, not a
/// reset that discards it.
fn turn_away(stream: tokio::net::TcpStream) {
    let mut hello = [0u8; crate::secure::HELLO_LEN];
    let _ = stream.try_read(&mut hello);
    let _ = stream.try_write(&crate::secure::busy_hello());
    drop(stream);
}

/// Accepts connections on `listener` until `shutdown` completes, runs the
/// handshake on each (within the handshake timeout), and hands each
/// authenticated one to `handler` with the client's role and a token that
/// is cancelled when the server stops. Then stops accepting, cancels, and
/// waits up to the drain timeout for the connections to finish.
pub async fn serve<H, Fut>(listener: TcpListener, config: ListenConfig, shutdown: impl Future<Output = ()>, handler: H)
where
    H: Fn(Connection, Role, CancellationToken) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let cancel = CancellationToken::new();
    let tasks = TaskTracker::new();
    let permits = Arc::new(Semaphore::new(config.max_connections));
    let handshakes = Arc::new(Handshakes::default());
    let limit = Arc::new(RateLimit::new());
    let name = config.name;
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, addr)) => {
                    let Some(slot) = handshakes.enter(addr.ip(), MAX_HANDSHAKES, MAX_HANDSHAKES_PER_SOURCE) else {
                        config.refused(Refusal::Flood);
                        if let Some(suppressed) = limit.allow() {
                            warn!(
                                peer = %addr,
                                suppressed,
                                "{name}: refused a connection: {MAX_HANDSHAKES_PER_SOURCE} unauthenticated connections from {} already open",
                                addr.ip()
                            );
                        }
                        turn_away(stream);
                        continue;
                    };
                    if permits.available_permits() == 0 {
                        config.refused(Refusal::Busy);
                        if let Some(suppressed) = limit.allow() {
                            warn!(
                                peer = %addr,
                                suppressed,
                                "{name}: refused a connection: {} connections already open (the cap)",
                                config.max_connections
                            );
                        }
                        turn_away(stream);
                        continue;
                    };
                    let (config, handler, cancel, limit, permits) =
                        (config.clone(), handler.clone(), cancel.clone(), limit.clone(), permits.clone());
                    tasks.spawn(async move {
                        let accepted = tokio::select! {
                            _ = cancel.cancelled() => return,
                            _ = slot.evicted.cancelled() => {
                                config.refused(Refusal::Flood);
                                return;
                            }
                            accepted = async {
                                let mut stream = stream;
                                if config.splicer.is_some() {
                                    let asked = deadline(
                                        config.limits.handshake_timeout,
                                        "the first bytes",
                                        async { splice_request(&mut stream).await.map_err(Error::from) },
                                    );
                                    match asked.await {
                                        Ok(Some(id)) => return Ok(Err((stream, id))),
                                        Ok(None) => {}
                                        Err(e) => return Err(e),
                                    }
                                }
                                Connection::accept(stream, config.limits.clone()).await.map(Ok)
                            } => accepted,
                        };
                        let accepted = match accepted {
                            Ok(Err((stream, id))) => {
                                drop(slot);
                                if let Some(splicer) = &config.splicer {
                                    (splicer.0)(stream, id);
                                }
                                return;
                            }
                            Ok(Ok(conn)) => Ok(conn),
                            Err(e) => Err(e),
                        };
                        drop(slot);
                        match accepted {
                            Ok((conn, role)) => {
                                // Authenticated: now it counts against the cap.
                                let Ok(_permit) = permits.try_acquire_owned() else {
                                    config.refused(Refusal::Busy);
                                    return;
                                };
                                handler(conn, role, cancel).await
                            }
                            Err(e) => {
                                config.refused(Refusal::of(&e));
                                log_refusal(name, addr, &e, &limit);
                            }
                        }
                    });
                }
                Err(e) => {
                    // Usually descriptor exhaustion: back off instead of spinning.
                    warn!(error = %e, "{name}: accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
        }
    }
    info!("{name} shutting down");
    cancel.cancel();
    tasks.close();
    if tokio::time::timeout(config.drain_timeout, tasks.wait()).await.is_err() {
        warn!("{name}: some connections did not finish within {:?}", config.drain_timeout);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusal_logs_are_limited_to_a_burst_per_window() {
        let limit = RateLimit::new();
        let allowed = (0..100).filter(|_| limit.allow().is_some()).count();
        assert_eq!(allowed, LOG_BURST as usize);
        // A new window reports what the last one left out.
        limit.state.lock().0 = Instant::now().checked_sub(LOG_WINDOW).unwrap();
        assert_eq!(limit.allow(), Some(100 - LOG_BURST as u64));
    }

    /// Connections that the accept loop has not taken yet wait in the
    /// kernel's queue, not dropped: 600 of them all connect at once (with
    /// the libraries' backlog of 128 the 130th would wait for the first
    /// to be accepted, forever here).
    #[tokio::test]
    async fn a_listener_queues_hundreds_of_connections_before_it_accepts() {
        let cap = std::fs::read_to_string("/proc/sys/net/core/somaxconn")
            .ok()
            .and_then(|s| s.trim().parse::<u32>().ok())
            .unwrap_or(LISTEN_BACKLOG);
        let count = 600.min(cap.min(LISTEN_BACKLOG) as usize);
        assert!(count > 200, "net.core.somaxconn is {cap}: raise it to test the accept queue");
        let listener = bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut held = Vec::with_capacity(count);
        for i in 0..count {
            let connected = tokio::time::timeout(Duration::from_secs(10), TcpStream::connect(addr)).await;
            let stream = connected.unwrap_or_else(|_| panic!("connection {i} was not queued")).unwrap();
            held.push(stream);
        }
        // And the loop takes them all, in order.
        for _ in 0..count {
            let (stream, _) = listener.accept().await.unwrap();
            assert!(held.iter().any(|s| s.local_addr().unwrap() == stream.peer_addr().unwrap()));
        }
        // A name that is not an address is an error, not a panic.
        assert!(bind("not an address").await.is_err());
    }

    #[tokio::test]
    async fn connections_past_the_cap_are_refused_and_served_again_once_one_closes() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let refused = Arc::new(Mutex::new(Vec::new()));
        let refusals = refused.clone();
        let config = ListenConfig {
            name: "test",
            limits: ConnLimits::default(),
            max_connections: 2,
            drain_timeout: Duration::from_secs(5),
            on_refusal: Some(OnRefusal(Arc::new(move |why| refusals.lock().push(why)))),
            splicer: None,
        };
        let stop = CancellationToken::new();
        let s = stop.clone();
        // Each connection answers every message with the same message, until it closes.
        let server =
            tokio::spawn(serve(listener, config, async move { s.cancelled().await }, |mut conn, _, _| async move {
                while let Ok(msg) = conn.reader.read_message::<crate::TrackerReply>("anything").await {
                    if conn.writer.send(&msg).await.is_err() {
                        break;
                    }
                }
            }));
        let open = || Connection::connect(addr, Role::Client, ConnLimits::default());
        let mut first = open().await.unwrap();
        let mut second = open().await.unwrap();
        assert!(echo(&mut first).await.is_ok() && echo(&mut second).await.is_ok());
        let t = std::time::Instant::now();
        let third = open().await;
        eprintln!("third took {:?}: {:?}", t.elapsed(), third.as_ref().err());
        match third {
            Err(_) => {}
            Ok(mut third) => {
                assert!(echo(&mut third).await.is_err(), "a third connection was served past the cap of 2")
            }
        }
        drop(first);
        // The freed permit serves the next connection.
        let mut served = false;
        for _ in 0..100 {
            if let Ok(mut c) = open().await {
                if echo(&mut c).await.is_ok() {
                    served = true;
                    break;
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(served, "a connection was never served after one closed");
        assert!(echo(&mut second).await.is_ok(), "an existing connection was disturbed");
        assert!(refused.lock().contains(&Refusal::Busy), "the hook heard of the refusal: {:?}", refused.lock());
        // Bytes that are no septet hello are refused, and the hook hears why.
        drop(second);
        let mut junk = tokio::net::TcpStream::connect(addr).await.unwrap();
        tokio::io::AsyncWriteExt::write_all(&mut junk, &[0xAB; 200]).await.unwrap();
        let mut sink = Vec::new();
        let _ =
            tokio::time::timeout(Duration::from_secs(5), tokio::io::AsyncReadExt::read_to_end(&mut junk, &mut sink))
                .await;
        for _ in 0..100 {
            if refused.lock().contains(&Refusal::NotSeptet) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(refused.lock().contains(&Refusal::NotSeptet), "{:?}", refused.lock());
        stop.cancel();
        server.await.unwrap();
    }

    async fn echo(conn: &mut Connection) -> crate::Result<crate::TrackerReply> {
        conn.request(&crate::TrackerReply::HeartbeatAck { now_ms: 0 }, "HeartbeatAck", Duration::from_secs(5)).await
    }
}
