//! septet's observability, shared by the tracker and the worker: the
//! read-only HTTP endpoint (`septet tracker --http`, `septet worker --http`)
//! in [`http`], and helpers for their Prometheus metrics in [`metrics`]. The
//! tracker and the worker only say *what* they serve — an axum `Router` over
//! read-only snapshots of their state, and the events they count — never
//! how.
//!
//! The endpoint is unauthenticated, so it is built to be harmless rather
//! than trusted:
//! - it serves only what the routers offer — metrics and a status page,
//!   never a secret or a lease token — and reads no request body;
//! - it listens on loopback unless the operator says otherwise
//!   ([`http::check_exposure`]), and while on loopback it answers only
//!   requests addressed to an IP address or `localhost`
//!   ([`http::HttpConfig::loopback_hosts_only`]), so a web page in the
//!   operator's browser cannot read it through DNS rebinding (a name of the
//!   attacker's that resolves to 127.0.0.1);
//! - a slow or idle client cannot pile up: connections beyond
//!   [`http::HttpConfig::max_connections`] are closed at once, request
//!   headers must arrive within [`http::HttpConfig::header_timeout`], and
//!   every connection is closed after
//!   [`http::HttpConfig::connection_lifetime`] (gracefully: a request in
//!   flight gets [`http::GRACE`] to finish) — a browser or Prometheus simply
//!   opens a new one;
//! - every response forbids caching, sniffing, framing and loading anything
//!   from elsewhere (a strict `Content-Security-Policy`);
//! - it runs beside the septet server on the same runtime and stops with it.
//!
//! Metrics use `prometheus-client`, the official Rust client, and are
//! rendered ([`http::metrics_response`]) in the Prometheus text format
//! (0.0.4), which `promtool check metrics` checks, or in OpenMetrics text
//! when the scraper asks for it (Prometheus does).

pub mod http;
pub mod metrics;

pub use http::{
    bind, check_exposure, encode_metrics, metrics_body, metrics_response, serve, wants_openmetrics, Error, Exposure,
    HttpConfig,
};
