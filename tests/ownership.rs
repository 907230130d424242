//! Ownership over real connections: a lease answers only to the connection
//! that took it or to its token; a peer only to the connection that
//! registered it; registrations the tracker cannot hand out are refused;
//! and the `septet lease --detach` / `septet release --token` round trip as
//! separate processes.

mod common;

use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::{
    client, registrar, septet_bin, spawn_tracker, spawn_worker, teardown, tracker_process, wait_for_alive_slots, Procs,
};
use septet_common::frame::{decode, encode};
use septet_common::proto::{LeaseGrant, LeaseId, PeerAddr, PeerId, TrackerReply, TrackerRequest};
use septet_common::{Error, ErrorCode, Frame, DEFAULT_MAX_FRAME_LEN};
use septet_tracker::TrackerConfig;

/// A tracker whose fake peers (nobody listens on them) never go silent.
fn patient() -> TrackerConfig {
    TrackerConfig { heartbeat_timeout: Duration::from_secs(3600), ..TrackerConfig::default() }
}

fn code(result: septet_common::Result<impl std::fmt::Debug>) -> (ErrorCode, String) {
    match result {
        Err(Error::Remote { code, message }) => (code, message),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[tokio::test]
async fn the_token_carrying_messages_round_trip() {
    let peers = vec![PeerAddr { peer_id: PeerId(3), addr: "127.0.0.1:9".into(), ticket: None }];
    let grant = LeaseGrant { lease_id: LeaseId(9), peers, ttl_ms: 5, token: "ab".repeat(32) };
    let reply = TrackerReply::Leased(grant);
    let bytes = encode(&Frame::Control(septet_common::ControlBody::encode(&reply).unwrap())).unwrap();
    let Some((Frame::Control(body), used)) = decode(&bytes, DEFAULT_MAX_FRAME_LEN).unwrap() else {
        panic!("expected a control frame")
    };
    assert_eq!((body.decode::<TrackerReply>().unwrap(), used), (reply, bytes.len()));
    let requests = [
        TrackerRequest::Renew { lease_id: LeaseId(9), token: None },
        TrackerRequest::Release { lease_id: LeaseId(9), token: Some("cd".into()) },
        TrackerRequest::ReportFailure {
            lease_id: LeaseId(9),
            peer_id: PeerId(3),
            reason: "x".into(),
            replace: true,
            token: None,
        },
    ];
    for msg in requests {
        let bytes = encode(&Frame::Control(septet_common::ControlBody::encode(&msg).unwrap())).unwrap();
        let Some((Frame::Control(body), used)) = decode(&bytes, DEFAULT_MAX_FRAME_LEN).unwrap() else {
            panic!("expected a control frame")
        };
        assert_eq!((body.decode::<TrackerRequest>().unwrap(), used), (msg, bytes.len()));
    }
}

#[tokio::test]
async fn a_lease_answers_only_to_the_connection_that_took_it_or_to_its_token() {
    let (tracker, state) = spawn_tracker(patient()).await;
    let mut registrar = registrar(tracker.addr).await;
    for i in 0..8u16 {
        registrar.register(format!("127.0.0.1:{}", 31_000 + i).parse().unwrap(), 1, 0).await.unwrap();
    }
    let mut holder = client(tracker.addr).await;
    let held = holder.lease(7, true, None, |_, _, _| {}).await.unwrap();
    let (id, token) = (held.lease_id, held.token.clone());
    assert!(token.len() >= 32 && token.chars().all(|c| c.is_ascii_hexdigit()), "at least 128 bits of hex");
    assert!(!format!("{held:?}").contains(&token), "Debug redacts the token");

    let mut stranger = client(tracker.addr).await;
    let before = (state.stats().unwrap(), state.peers().unwrap().1);
    let wrong = "f".repeat(token.len());
    let refusals = [
        code(stranger.release(id).await),
        code(stranger.release_with(id, Some(&wrong)).await),
        code(stranger.release_with(id, Some(&token[1..])).await),
        code(stranger.renew(id).await),
        code(stranger.renew_with(id, Some(&wrong)).await),
        code(stranger.report_failure(id, held.peers[0].peer_id, "x", true).await),
    ];
    for (code, message) in &refusals {
        assert_eq!(*code, ErrorCode::Unauthorized, "{message}");
        assert!(message.contains(&format!("lease {id} is not yours or does not exist")), "{message}");
        assert!(!message.contains(&token));
    }
    assert_eq!((state.stats().unwrap(), state.peers().unwrap().1), before, "refused means unchanged");
    // An unknown lease reads exactly like someone else's.
    let (unknown_code, unknown) = code(stranger.release(LeaseId(id.0 + 1000)).await);
    assert_eq!(unknown_code, ErrorCode::Unauthorized);
    assert_eq!(unknown.replace(&(id.0 + 1000).to_string(), &id.to_string()), refusals[0].1);
    assert!(!stranger.is_poisoned(), "a refusal is a whole answer");

    // Nothing the tracker serves shows the token.
    let (table, rows) = stranger.peers().await.unwrap();
    assert!(!table.contains(&token) && !format!("{rows:?}").contains(&token));
    assert!(rows.iter().filter(|r| r.in_use == 1).count() == 7, "the lease is still in force");

    // The holder needs no token; anyone with the token may act.
    holder.renew(id).await.unwrap();
    stranger.renew_with(id, Some(&token)).await.unwrap();
    stranger.release_with(id, Some(&token)).await.unwrap();
    assert_eq!(code(holder.release(id).await).0, ErrorCode::Unauthorized, "released once");
    assert_eq!(state.stats().unwrap().free, 8);
    state.check_invariants().unwrap();
    tracker.shutdown().await;
}

#[tokio::test]
async fn only_the_registering_connection_heartbeats_or_deregisters_its_peer() {
    let (tracker, state) = spawn_tracker(patient()).await;
    let listen = "127.0.0.1:31100".parse().unwrap();
    // A connection that opened as a client may not speak for a worker.
    let (c, message) = code(client(tracker.addr).await.register(listen, 2, 0).await);
    assert_eq!(c, ErrorCode::InvalidRequest, "{message}");
    assert!(message.contains("opened as a client"), "{message}");
    let mut worker = registrar(tracker.addr).await;
    let reg = worker.register(listen, 2, 0).await.unwrap();
    let mut other = registrar(tracker.addr).await;
    let before = state.peers().unwrap().1;
    let (c, message) = code(other.heartbeat(reg.peer_id).await);
    assert_eq!(c, ErrorCode::Unauthorized, "{message}");
    assert_eq!(code(other.deregister(reg.peer_id).await).0, ErrorCode::Unauthorized);
    assert_eq!(state.peers().unwrap().1, before, "refused means unchanged");
    worker.heartbeat(reg.peer_id).await.unwrap();
    // The same address registering again (a reconnected worker) takes the
    // row over: same id, the new connection's now.
    let again = other.register(listen, 2, 0).await.unwrap();
    assert_eq!(again.peer_id, reg.peer_id);
    assert_eq!(code(worker.heartbeat(reg.peer_id).await).0, ErrorCode::Unauthorized);
    other.deregister(reg.peer_id).await.unwrap();
    assert_eq!(state.peers().unwrap().1[reg.peer_id.0 as usize].state, "gone");
    tracker.shutdown().await;
}

#[tokio::test]
async fn a_worker_whose_row_another_connection_took_registers_again() {
    let config = TrackerConfig {
        heartbeat_interval: Duration::from_millis(50),
        heartbeat_timeout: Duration::from_secs(5),
        ..TrackerConfig::default()
    };
    let (tracker, state) = spawn_tracker(config).await;
    let worker = spawn_worker(Some(tracker.addr), 1).await;
    wait_for_alive_slots(tracker.addr, 1).await;
    // Someone registers the worker's address: the row is theirs for now …
    let mut impostor = registrar(tracker.addr).await;
    let reg = impostor.register(worker.addr, 1, 0).await.unwrap();
    assert_eq!(reg.peer_id, PeerId(0), "same address, same row");
    // … until the worker's next heartbeat is refused and its agent
    // registers again, taking the row back.
    let mut taken_back = false;
    for _ in 0..250 {
        if impostor.heartbeat(reg.peer_id).await.is_err() {
            taken_back = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(taken_back, "the worker never registered again");
    assert_eq!(code(impostor.deregister(reg.peer_id).await).0, ErrorCode::Unauthorized);
    assert_eq!(state.peers().unwrap().1[0].state, "alive");
    teardown(tracker, vec![worker]).await;
}

#[tokio::test]
async fn registrations_the_tracker_cannot_hand_out_are_refused() {
    let (tracker, state) = spawn_tracker(TrackerConfig { max_peers: 2, ..patient() }).await;
    let mut c = registrar(tracker.addr).await;
    for (addr, needle) in
        [("224.0.0.9:7000", "multicast"), ("255.255.255.255:7000", "broadcast"), ("[ff02::1]:7000", "multicast")]
    {
        let (code, message) = code(c.register(addr.parse().unwrap(), 1, 0).await);
        assert_eq!(code, ErrorCode::InvalidRequest, "{message}");
        assert!(message.contains(needle), "{addr}: {message}");
    }
    let (_, message) = code(c.register("127.0.0.1:0".parse().unwrap(), 1, 0).await);
    assert!(message.contains("not 0"), "{message}");
    // 0.0.0.0 becomes the address the tracker saw: loopback here, accepted.
    let reg = c.register("0.0.0.0:31200".parse().unwrap(), 1, 0).await.unwrap();
    assert_eq!(reg.addr, "127.0.0.1:31200");
    c.register("127.0.0.1:31201".parse().unwrap(), 1, 0).await.unwrap();
    let (code, message) = code(c.register("127.0.0.1:31202".parse().unwrap(), 1, 0).await);
    assert_eq!(code, ErrorCode::InvalidRequest);
    assert!(message.contains("full"), "{message}");
    // A known address may always come back.
    assert_eq!(c.register("127.0.0.1:31201".parse().unwrap(), 3, 0).await.unwrap().peer_id, PeerId(1));
    assert_eq!(state.peers().unwrap().1.len(), 2);
    state.check_invariants().unwrap();
    tracker.shutdown().await;
}

/// A worker registers the address it connects from; another address only
/// if the tracker finds a septet server there (so nobody can have the
/// tracker hand out addresses that are not workers').
#[tokio::test]
async fn a_registered_address_is_the_workers_own_or_proved_by_dialling_it() {
    let (tracker, state) = spawn_tracker(patient()).await;
    let mut c = registrar(tracker.addr).await; // from 127.0.0.1
    let (code, message) = code(c.register("127.0.0.3:9".parse().unwrap(), 1, 0).await);
    assert_eq!(code, ErrorCode::InvalidRequest, "{message}");
    assert!(message.contains("cannot register 127.0.0.3:9") && message.contains("could not reach"), "{message}");
    assert!(state.peers().unwrap().1.is_empty(), "nothing registered");
    // A septet server on another address of this host answers: accepted.
    let other = tokio::net::TcpListener::bind("127.0.0.2:0").await.unwrap();
    let there = other.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = other.accept().await {
            tokio::spawn(septet_common::Connection::accept(stream, Default::default()));
        }
    });
    let reg = c.register(there, 1, 0).await.unwrap();
    assert_eq!(reg.addr, there.to_string());
    tracker.shutdown().await;
}

fn septet(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(septet_bin());
    cmd.args(args).stdin(Stdio::null()).env_remove("SEPTET_LEASE_TOKEN");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

fn in_use(tracker: &str) -> Vec<u64> {
    let out = septet(&["peers", "--tracker", tracker, "--json"], &[]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let rows: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    rows.iter().map(|r| r["in_use"].as_u64().unwrap()).collect()
}

/// A one-line refusal, exit status 1.
fn refused(out: &Output) -> String {
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.starts_with("error: ") && err.trim_end().lines().count() == 1, "{err}");
    err
}

#[test]
fn a_detached_lease_is_released_only_with_its_token() {
    let (tracker, addr) = tracker_process("127.0.0.1:0", &[]);
    let addr = addr.to_string();
    let mut procs = Procs(vec![tracker]);
    for _ in 0..6 {
        let worker = Command::new(septet_bin())
            .args(["worker", "--tracker", &addr, "--threads", "1"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        procs.0.push(worker);
    }
    for _ in 0..500 {
        if in_use(&addr).len() == 6 {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(in_use(&addr).len(), 6, "workers did not join");

    let lease = |n: &str| {
        let out = septet(&["lease", "--tracker", &addr, "--count", n, "--detach", "--json"], &[]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let token = v["token"].as_str().expect("a token beside lease_id").to_string();
        assert_eq!(v["peers"].as_array().unwrap().len(), n.parse::<usize>().unwrap());
        (v["lease_id"].as_u64().unwrap().to_string(), token)
    };
    let (first, first_token) = lease("3");
    let (second, second_token) = lease("3");
    assert_ne!(first_token, second_token);
    assert_eq!(in_use(&addr), vec![1; 6]);

    // By id alone: a usage error (exit 2) that says to pass the token.
    let out = septet(&["release", "--tracker", &addr, &first], &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.starts_with("error: ") && err.trim_end().lines().count() == 1 && err.contains("pass --token"), "{err}");
    // With a wrong token, or with the other lease's token: refused, one
    // line, and both leases stay in force.
    let wrong = "0".repeat(first_token.len());
    for out in [
        septet(&["release", "--tracker", &addr, &first, "--token", &wrong], &[]),
        septet(&["release", "--tracker", &addr, &first], &[("SEPTET_LEASE_TOKEN", &second_token)]),
    ] {
        let err = refused(&out);
        assert!(err.contains(&format!("lease {first} is not yours or does not exist")), "{err}");
        assert!(!err.contains(&first_token) && !err.contains(&second_token), "{err}");
    }
    assert_eq!(in_use(&addr), vec![1; 6], "nothing was released");
    let table = septet(&["peers", "--tracker", &addr], &[]);
    let table = String::from_utf8_lossy(&table.stdout);
    assert!(!table.contains(&first_token) && !table.contains(&second_token), "{table}");

    // The right token releases: by flag, or from the environment.
    let out = septet(&["release", "--tracker", &addr, &first, "--token", &first_token], &[]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(in_use(&addr).iter().sum::<u64>(), 3);
    let out = septet(&["release", "--tracker", &addr, &second], &[("SEPTET_LEASE_TOKEN", &second_token)]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(in_use(&addr), vec![0; 6]);
    refused(&septet(&["release", "--tracker", &addr, &second], &[("SEPTET_LEASE_TOKEN", &second_token)]));

    // The help says how.
    let help = String::from_utf8_lossy(&septet(&["release", "--help"], &[]).stdout).to_string();
    assert!(help.contains("--token") && help.contains("SEPTET_LEASE_TOKEN"), "{help}");
    let help = String::from_utf8_lossy(&septet(&["lease", "--help"], &[]).stdout).to_string();
    assert!(help.contains("token"), "{help}");
}
