//! The HTTP server: serving a router under the limits the crate docs list,
//! the loopback rule for its address, and rendering a metrics registry.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::http::{header, HeaderMap, HeaderValue, Request, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, warn};

/// How long a connection closed at its lifetime's end (or at shutdown) has
/// to finish the response in flight.
pub const GRACE: Duration = Duration::from_secs(1);

/// Bytes hyper buffers per connection for a request's head (its minimum):
/// a GET with a few headers needs far less.
const MAX_BUF: usize = 8 * 1024;

/// `Content-Type` of OpenMetrics text, served when the scraper's `Accept`
/// header asks for it (Prometheus does).
pub const OPENMETRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// How the endpoint serves.
#[derive(Debug, Clone)]
pub struct HttpConfig {
    /// What serves, for logs ("tracker", "worker").
    pub name: &'static str,
    /// Connections served at once; more are closed at once.
    pub max_connections: usize,
    /// Deadline for a request's headers.
    pub header_timeout: Duration,
    /// Every connection is closed after this long, kept alive or not.
    pub connection_lifetime: Duration,
    /// How long shutdown waits for connections to finish.
    pub drain_timeout: Duration,
    /// Answer only requests whose `Host` is an IP address or `localhost`
    /// (right for a loopback endpoint; see the module docs).
    pub loopback_hosts_only: bool,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            name: "septet",
            max_connections: 64,
            header_timeout: Duration::from_secs(5),
            connection_lifetime: Duration::from_secs(30),
            drain_timeout: Duration::from_secs(2),
            loopback_hosts_only: true,
        }
    }
}

/// Why an HTTP address is refused.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The address does not parse or resolve.
    #[error("could not resolve the HTTP address {addr}: {source}")]
    Resolve {
        /// The address as given.
        addr: String,
        /// What went wrong.
        #[source]
        source: std::io::Error,
    },
    /// A non-loopback address without the operator's explicit consent.
    #[error(
        "refusing to serve HTTP on {addr}: the metrics and status endpoint is unauthenticated, so by default it \
         listens only on loopback (e.g. --http 127.0.0.1:7701); to let other hosts read it, pass --http-public \
         as well (and firewall it)"
    )]
    NotLoopback {
        /// The address as given.
        addr: String,
    },
    /// The address could not be bound.
    #[error("could not serve HTTP on {addr}: {source}")]
    Bind {
        /// The address as given.
        addr: String,
        /// What went wrong.
        #[source]
        source: std::io::Error,
    },
}

/// Where an accepted HTTP address lets the endpoint be reached from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exposure {
    /// Only this host.
    Loopback,
    /// Other hosts too (the operator passed `--http-public`).
    Public,
}

/// Safe by default: an HTTP address must be loopback unless `public` (the
/// operator's `--http-public`) says otherwise.
///
/// # Errors
/// [`Error::NotLoopback`] for any other address without `public`, and
/// [`Error::Resolve`] when the address does not resolve.
pub async fn check_exposure(addr: &str, public: bool) -> Result<Exposure, Error> {
    let addrs: Vec<SocketAddr> = match addr.parse() {
        Ok(a) => vec![a],
        Err(_) => tokio::net::lookup_host(addr)
            .await
            .map_err(|source| Error::Resolve { addr: addr.to_string(), source })?
            .collect(),
    };
    if !addrs.is_empty() && addrs.iter().all(|a| a.ip().is_loopback()) {
        Ok(Exposure::Loopback)
    } else if public {
        Ok(Exposure::Public)
    } else {
        Err(Error::NotLoopback { addr: addr.to_string() })
    }
}

/// [`check_exposure`], then binds `addr`: the listener to [`serve`] on, and
/// the config its exposure calls for (on loopback, only local `Host`s).
///
/// # Errors
/// As [`check_exposure`], and [`Error::Bind`].
pub async fn bind(addr: &str, public: bool, name: &'static str) -> Result<(TcpListener, HttpConfig), Error> {
    let exposure = check_exposure(addr, public).await?;
    let listener = TcpListener::bind(addr).await.map_err(|source| Error::Bind { addr: addr.to_string(), source })?;
    let config = HttpConfig { name, loopback_hosts_only: exposure == Exposure::Loopback, ..HttpConfig::default() };
    Ok((listener, config))
}

/// Whether a `Host` header names this machine by address or as `localhost`
/// (rather than by a DNS name someone else controls).
fn is_local_host(host: &str) -> bool {
    // "[::1]:80", "127.0.0.1:80", "localhost", "LOCALHOST.:80"
    let name = if let Some(rest) = host.strip_prefix('[') {
        return rest.split(']').next().is_some_and(|ip| ip.parse::<std::net::Ipv6Addr>().is_ok());
    } else {
        host.rsplit_once(':').map_or(host, |(name, _)| name)
    };
    let name = name.trim_end_matches('.');
    name.eq_ignore_ascii_case("localhost") || name.parse::<std::net::IpAddr>().is_ok()
}

async fn local_hosts_only(request: Request<axum::body::Body>, next: Next) -> Response {
    let host = request.headers().get(header::HOST).map(|h| h.to_str().unwrap_or(""));
    match host {
        Some(h) if !is_local_host(h) => (
            StatusCode::MISDIRECTED_REQUEST,
            "this endpoint answers only requests addressed to an IP address or localhost\n",
        )
            .into_response(),
        _ => next.run(request).await,
    }
}

/// Headers every response carries: nothing is cached, sniffed, framed or
/// loaded from elsewhere (the status page's script and style are served by
/// the same endpoint).
async fn harden(mut response: Response) -> Response {
    let headers = response.headers_mut();
    for (name, value) in [
        (header::CACHE_CONTROL, "no-store"),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::REFERRER_POLICY, "no-referrer"),
        (header::X_FRAME_OPTIONS, "DENY"),
        (
            header::CONTENT_SECURITY_POLICY,
            "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'; \
             frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
        ),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
    response
}

/// Serves `router` on `listener` until `shutdown` completes (see the module
/// docs for the limits); then stops accepting, lets each connection finish
/// its response in flight, and waits up to the drain timeout.
pub async fn serve(listener: TcpListener, router: Router, config: HttpConfig, shutdown: impl Future<Output = ()>) {
    let mut router = router.layer(middleware::map_response(harden));
    if config.loopback_hosts_only {
        router = router.layer(middleware::from_fn(local_hosts_only));
    }
    let cancel = CancellationToken::new();
    let tasks = TaskTracker::new();
    let permits = Arc::new(Semaphore::new(config.max_connections));
    let name = config.name;
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, addr)) => {
                    let Ok(permit) = permits.clone().try_acquire_owned() else {
                        debug!(peer = %addr, "{name} http: {} connections open (the cap); closing one more", config.max_connections);
                        drop(stream);
                        continue;
                    };
                    let _ = stream.set_nodelay(true);
                    let service = TowerToHyperService::new(router.clone());
                    let (cancel, config) = (cancel.clone(), config.clone());
                    tasks.spawn(async move {
                        let _permit = permit;
                        let mut builder = hyper::server::conn::http1::Builder::new();
                        builder.timer(TokioTimer::new()).header_read_timeout(config.header_timeout).max_buf_size(MAX_BUF);
                        let conn = builder.serve_connection(TokioIo::new(stream), service);
                        tokio::pin!(conn);
                        tokio::select! {
                            served = conn.as_mut() => {
                                if let Err(e) = served {
                                    debug!(peer = %addr, error = %e, "{name} http: connection ended");
                                }
                                return;
                            }
                            _ = cancel.cancelled() => {}
                            _ = tokio::time::sleep(config.connection_lifetime) => {}
                        }
                        conn.as_mut().graceful_shutdown();
                        let _ = tokio::time::timeout(GRACE, conn).await;
                    });
                }
                Err(e) => {
                    // Usually descriptor exhaustion: back off instead of spinning.
                    warn!(error = %e, "{name} http: accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
        }
    }
    cancel.cancel();
    tasks.close();
    if tokio::time::timeout(config.drain_timeout, tasks.wait()).await.is_err() {
        warn!("{name} http: some connections did not finish within {:?}", config.drain_timeout);
    }
}

/// Whether the scraper's `Accept` header asks for OpenMetrics text.
pub fn wants_openmetrics(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("application/openmetrics-text"))
}

/// `registry` as text: OpenMetrics if `openmetrics`, else the Prometheus
/// text format (0.0.4); with its `Content-Type`.
///
/// # Errors
/// Only a formatting error from the encoder.
pub fn encode_metrics(registry: &Registry, openmetrics: bool) -> Result<(String, &'static str), std::fmt::Error> {
    let mut body = String::with_capacity(8 * 1024);
    if openmetrics {
        prometheus_client::encoding::text::encode(&mut body, registry)?;
        Ok((body, OPENMETRICS_CONTENT_TYPE))
    } else {
        prometheus_client::encoding::prometheus_text::encode(&mut body, registry)?;
        Ok((body, prometheus_client::encoding::prometheus_text::CONTENT_TYPE))
    }
}

/// An encoded `/metrics` body as a response.
pub fn metrics_body(encoded: Result<(impl IntoResponse, &'static str), std::fmt::Error>) -> Response {
    match encoded {
        Ok((body, content_type)) => ([(header::CONTENT_TYPE, content_type)], body).into_response(),
        Err(_) => (StatusCode::INTERNAL_SERVER_ERROR, "could not encode the metrics\n").into_response(),
    }
}

/// `registry` as a `/metrics` response: OpenMetrics text when `headers`
/// accept it, else the Prometheus text format (0.0.4).
pub fn metrics_response(registry: &Registry, headers: &HeaderMap) -> Response {
    metrics_body(encode_metrics(registry, wants_openmetrics(headers)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::routing::get;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[test]
    fn only_addresses_and_localhost_count_as_local_hosts() {
        for ok in ["127.0.0.1:7701", "127.0.0.1", "[::1]:7701", "[::1]", "localhost:80", "LOCALHOST", "localhost.:1"] {
            assert!(is_local_host(ok), "{ok}");
        }
        for bad in
            ["evil.example:7701", "evil.example", "127.0.0.1.evil.example", "[::1.evil]:80", "", "localhost.evil"]
        {
            assert!(!is_local_host(bad), "{bad}");
        }
    }

    #[tokio::test]
    async fn only_loopback_unless_public() {
        assert_eq!(check_exposure("127.0.0.1:0", false).await.unwrap(), Exposure::Loopback);
        assert_eq!(check_exposure("[::1]:0", false).await.unwrap(), Exposure::Loopback);
        let err = check_exposure("0.0.0.0:7701", false).await.unwrap_err().to_string();
        assert!(err.contains("--http-public") && err.contains("0.0.0.0:7701"), "{err}");
        assert_eq!(check_exposure("0.0.0.0:7701", true).await.unwrap(), Exposure::Public);
        assert!(matches!(check_exposure("no port here", true).await, Err(Error::Resolve { .. })));
        let (listener, config) = bind("127.0.0.1:0", false, "test").await.unwrap();
        assert!(config.loopback_hosts_only && listener.local_addr().unwrap().ip().is_loopback());
        let taken = listener.local_addr().unwrap().to_string();
        assert!(matches!(bind(&taken, false, "test").await, Err(Error::Bind { .. })));
        assert!(matches!(bind("0.0.0.0:0", false, "test").await, Err(Error::NotLoopback { .. })));
        let (_, public) = bind("0.0.0.0:0", true, "test").await.unwrap();
        assert!(!public.loopback_hosts_only, "a public endpoint may be addressed by name");
    }

    async fn get_raw(addr: SocketAddr, host: &str, path: &str) -> String {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        let req = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
        s.write_all(req.as_bytes()).await.unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out
    }

    #[tokio::test]
    async fn serves_caps_connections_refuses_foreign_hosts_and_stops() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let config = HttpConfig {
            max_connections: 2,
            // Long enough that the silent connections below still hold the
            // cap when the third arrives, however loaded the machine.
            header_timeout: Duration::from_secs(2),
            connection_lifetime: Duration::from_secs(4),
            ..HttpConfig::default()
        };
        let stop = CancellationToken::new();
        let router = Router::new().route("/hello", get(|| async { "hi" }));
        let server = tokio::spawn(serve(listener, router, config, stop.clone().cancelled_owned()));
        let ok = get_raw(addr, "127.0.0.1", "/hello").await;
        assert!(ok.starts_with("HTTP/1.1 200") && ok.ends_with("hi"), "{ok}");
        assert!(ok.to_ascii_lowercase().contains("content-security-policy: default-src 'none'"), "{ok}");
        assert!(get_raw(addr, "localhost:1", "/nowhere").await.starts_with("HTTP/1.1 404"));
        let rebound = get_raw(addr, "evil.example", "/hello").await;
        assert!(rebound.starts_with("HTTP/1.1 421") && !rebound.ends_with("hi"), "{rebound}");
        // Two silent connections hold the cap; a third is closed at once
        // (accepted after them: the backlog is first in, first out); the
        // silent ones are closed after the header timeout.
        let idle: Vec<_> =
            [tokio::net::TcpStream::connect(addr).await.unwrap(), tokio::net::TcpStream::connect(addr).await.unwrap()]
                .into();
        tokio::time::sleep(Duration::from_millis(50)).await;
        let mut third = tokio::net::TcpStream::connect(addr).await.unwrap();
        let mut buf = [0u8; 16];
        let n = tokio::time::timeout(Duration::from_secs(1), third.read(&mut buf)).await;
        assert!(matches!(n, Ok(Ok(0)) | Ok(Err(_))), "a connection past the cap was served: {n:?}");
        for mut s in idle {
            let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf)).await;
            assert!(n.is_ok(), "a silent connection outlived the header timeout");
        }
        // Their slots come back once the server has seen them close.
        let mut served = false;
        for _ in 0..100 {
            if get_raw(addr, "127.0.0.1", "/hello").await.ends_with("hi") {
                served = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(served, "served again once they closed");
        stop.cancel();
        tokio::time::timeout(Duration::from_secs(5), server).await.unwrap().unwrap();
        assert!(tokio::net::TcpStream::connect(addr).await.is_err(), "still listening after shutdown");
    }

    #[tokio::test]
    async fn metrics_are_prometheus_text_unless_openmetrics_is_asked_for() {
        let mut registry = Registry::with_prefix("septet_test");
        let c: prometheus_client::metrics::counter::Counter = Default::default();
        registry.register("events", "Events seen", c.clone());
        c.inc();
        let plain = metrics_response(&registry, &HeaderMap::new());
        assert_eq!(plain.headers()[header::CONTENT_TYPE], prometheus_client::encoding::prometheus_text::CONTENT_TYPE);
        let body = axum::body::to_bytes(plain.into_body(), 1 << 20).await.unwrap();
        let body = String::from_utf8(body.to_vec()).unwrap();
        assert!(body.contains("# TYPE septet_test_events_total counter\nseptet_test_events_total 1\n"), "{body}");
        assert!(!body.contains("# EOF"), "{body}");
        let mut accept = HeaderMap::new();
        accept.insert(header::ACCEPT, HeaderValue::from_static("application/openmetrics-text;version=1.0.0,*/*;q=0.1"));
        let om = metrics_response(&registry, &accept);
        assert_eq!(om.headers()[header::CONTENT_TYPE], OPENMETRICS_CONTENT_TYPE);
        let body = axum::body::to_bytes(om.into_body(), 1 << 20).await.unwrap();
        assert!(String::from_utf8(body.to_vec()).unwrap().ends_with("# EOF\n"));
    }
}
