//! What a connection's handshake costs, by security mode: connect to a
//! loopback listener and complete septet's handshake (no secret; the
//! cluster secret's mutual proof; the proof plus the X25519 exchange of
//! `--encrypt`), many times in rotating order, and print the median per
//! mode and its ratio to the plain one.
//!
//! `cargo run --release --example handshake [ROUNDS]` (default 2000).

use std::time::{Duration, Instant};

use septet_common::conn::ConnLimits;
use septet_common::secure::{Secret, Security};
use septet_common::{Connection, Role};

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let rounds: usize = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(2000);
    let secret = Secret::generate();
    let modes = [
        ("plain", Security::default()),
        ("authenticated", Security::with_secret(secret.clone(), false)),
        ("encrypted", Security::with_secret(secret, true)),
    ];
    let mut servers = Vec::new();
    for (_, security) in &modes {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let limits = ConnLimits { security: security.clone(), ..ConnLimits::default() };
        tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                let limits = limits.clone();
                tokio::spawn(async move {
                    let _ = Connection::accept(stream, limits).await;
                });
            }
        });
        servers.push(addr);
    }
    let mut times: Vec<Vec<Duration>> = vec![Vec::with_capacity(rounds); modes.len()];
    for round in 0..rounds {
        for k in 0..modes.len() {
            let i = (round + k) % modes.len();
            let limits = ConnLimits { security: modes[i].1.clone(), ..ConnLimits::default() };
            let t = Instant::now();
            let conn = Connection::connect(servers[i], Role::Client, limits).await.unwrap();
            times[i].push(t.elapsed());
            drop(conn);
        }
    }
    let median = |v: &mut Vec<Duration>| {
        v.sort();
        v[v.len() / 2]
    };
    let medians: Vec<Duration> = times.iter_mut().map(median).collect();
    for ((name, _), m) in modes.iter().zip(&medians) {
        println!(
            "{name:>13}: median {:>7.1} µs per connection and handshake ({:.2}× plain)",
            m.as_secs_f64() * 1e6,
            m.as_secs_f64() / medians[0].as_secs_f64()
        );
    }
}
