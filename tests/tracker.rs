//! The tracker over real TCP: joining, listing, FIFO leasing, expiry, and
//! surviving bad input. Every scenario ends with the lease invariants.

mod common;

use std::time::Duration;

use common::*;
use septet_common::frame::{encode_control, KIND_BLOCKS, KIND_CONTROL};
use septet_common::proto::{LeaseId, PeerId, TrackerReply, TrackerRequest};
use septet_common::secure::{HELLO_LEN, MAGIC};
use septet_common::{Error, ErrorCode, PROTOCOL_VERSION};
use septet_tracker::TrackerConfig;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const LIMIT: Duration = Duration::from_secs(60);

#[tokio::test]
async fn seven_workers_join_and_a_three_slot_worker_counts_three() {
    tokio::time::timeout(LIMIT, async {
        let (tracker, state) = spawn_tracker(TrackerConfig::default()).await;
        let mut workers = spawn_workers(tracker.addr, 6, 1).await;
        workers.push(spawn_worker(Some(tracker.addr), 3).await);
        wait_for_alive_slots(tracker.addr, 9).await;
        let (table, rows) = client(tracker.addr).await.peers().await.unwrap();
        assert_eq!(rows.len(), 7);
        assert!(rows.iter().all(|r| r.state == "alive" && r.in_use == 0));
        assert_eq!(rows.iter().filter(|r| r.slots == 3).count(), 1);
        let mut addrs: Vec<_> = rows.iter().map(|r| r.addr.clone()).collect();
        addrs.sort();
        let mut expected: Vec<_> = workers.iter().map(|w| w.addr.to_string()).collect();
        expected.sort();
        assert_eq!(addrs, expected, "the tracker hands out the workers' real listening addresses");
        assert!(table.contains("shape: (7, 12)") && table.contains("peer_id") && table.contains("alive"), "{table}");
        state.check_invariants().unwrap();

        // A worker that shuts down deregisters: its row is gone, not deleted.
        workers.pop().unwrap().shutdown().await;
        wait_for_alive_slots(tracker.addr, 6).await;
        let (_, rows) = client(tracker.addr).await.peers().await.unwrap();
        assert_eq!(rows.iter().filter(|r| r.state == "gone").count(), 1);
        teardown(tracker, workers).await;
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn a_second_lease_waits_is_told_so_and_gets_its_peers_after_release() {
    tokio::time::timeout(LIMIT, async {
        let (tracker, state) = spawn_tracker(TrackerConfig::default()).await;
        let workers = spawn_workers(tracker.addr, 7, 1).await;
        wait_for_alive_slots(tracker.addr, 7).await;

        let mut first = client(tracker.addr).await;
        let lease = first.lease(7, false, None, |_, _, _| panic!("seven are free")).await.unwrap();
        assert_eq!(lease.peers.len(), 7);
        let (_, rows) = first.peers().await.unwrap();
        assert!(rows.iter().all(|r| r.in_use == 1), "a lease of seven takes seven slots");
        state.check_invariants().unwrap();

        let (told_tx, told_rx) = tokio::sync::oneshot::channel();
        let second = tokio::spawn(async move {
            let mut c = client(tracker.addr).await;
            let mut told = Some(told_tx);
            let grant = c
                .lease(7, false, None, |position, free, needed| {
                    told.take().unwrap().send((position, free, needed)).unwrap();
                })
                .await
                .unwrap();
            (c, grant)
        });
        assert_eq!(told_rx.await.unwrap(), (1, 0, 7), "told it waits, first in line, with nothing free");
        first.release(lease.lease_id).await.unwrap();
        let (mut c, grant) = second.await.unwrap();
        assert_eq!(grant.peers.len(), 7);
        state.check_invariants().unwrap();
        c.release(grant.lease_id).await.unwrap();
        assert!(matches!(c.release(grant.lease_id).await, Err(Error::Remote { code: ErrorCode::Unauthorized, .. })));
        assert_eq!(state.stats().unwrap().free, 7);
        state.check_invariants().unwrap();
        teardown(tracker, workers).await;
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn queued_requesters_are_served_in_arrival_order() {
    tokio::time::timeout(LIMIT, async {
        let (tracker, state) = spawn_tracker(TrackerConfig::default()).await;
        let workers = spawn_workers(tracker.addr, 7, 1).await;
        wait_for_alive_slots(tracker.addr, 7).await;
        let mut holder = client(tracker.addr).await;
        let held = holder.lease(7, false, None, |_, _, _| {}).await.unwrap();

        let (order_tx, mut order_rx) = tokio::sync::mpsc::unbounded_channel();
        let mut waiters = Vec::new();
        for i in 0..3u32 {
            let (queued_tx, queued_rx) = tokio::sync::oneshot::channel();
            let order_tx = order_tx.clone();
            waiters.push(tokio::spawn(async move {
                let mut c = client(tracker.addr).await;
                let mut queued = Some(queued_tx);
                let grant =
                    c.lease(7, false, None, |pos, _, _| queued.take().unwrap().send(pos).unwrap()).await.unwrap();
                order_tx.send(i).unwrap();
                // Hold briefly so the next in line really has to wait for us.
                tokio::time::sleep(Duration::from_millis(20)).await;
                c.release(grant.lease_id).await.unwrap();
            }));
            // Each requester is queued before the next one arrives.
            assert_eq!(queued_rx.await.unwrap(), i + 1, "queue position");
        }
        state.check_invariants().unwrap();
        holder.release(held.lease_id).await.unwrap();
        for w in waiters {
            w.await.unwrap();
        }
        drop(order_tx);
        let mut order = Vec::new();
        while let Some(i) = order_rx.recv().await {
            order.push(i);
        }
        assert_eq!(order, vec![0, 1, 2]);
        state.check_invariants().unwrap();
        assert_eq!(state.stats().unwrap().leases, 0);
        teardown(tracker, workers).await;
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn closed_connections_ttl_expiry_and_dead_workers_return_slots_exactly_once() {
    tokio::time::timeout(LIMIT, async {
        // Margins that hold on a loaded 2-core machine: a renewal may come
        // 1.5 s late, a heartbeat 1.4 s late (suspect at half the timeout).
        let config = TrackerConfig {
            lease_ttl: Duration::from_secs(2),
            heartbeat_interval: Duration::from_millis(100),
            heartbeat_timeout: Duration::from_secs(3),
            ..TrackerConfig::default()
        };
        let (tracker, state) = spawn_tracker(config).await;
        let workers = spawn_workers(tracker.addr, 8, 1).await;
        wait_for_alive_slots(tracker.addr, 8).await;

        // A requester that disconnects: its attached lease ends at once.
        let mut c = client(tracker.addr).await;
        c.lease(7, false, None, |_, _, _| {}).await.unwrap();
        drop(c);
        for _ in 0..200 {
            if state.stats().unwrap().leases == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(state.stats().unwrap().free, 8);

        // A detached lease outlives its connection and ends at its TTL...
        let mut c = client(tracker.addr).await;
        let detached = c.lease(7, true, None, |_, _, _| {}).await.unwrap();
        drop(c);
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(state.stats().unwrap().leases, 1);
        // ...unless renewed: seven renewals half a second apart outlast the
        // TTL (and its sweep) by over a second, and the detached lease ends.
        let mut c = client(tracker.addr).await;
        let renewed = c.lease(1, false, None, |_, _, _| {}).await.unwrap();
        for _ in 0..7 {
            tokio::time::sleep(Duration::from_millis(500)).await;
            c.renew(renewed.lease_id).await.unwrap();
            state.check_invariants().unwrap();
        }
        assert!(matches!(c.release(detached.lease_id).await, Err(Error::Remote { code: ErrorCode::Unauthorized, .. })));
        assert_eq!(state.stats().unwrap().free, 7);

        // A worker that dies without deregistering (here: one that registers
        // and never heartbeats) is marked gone; its slot leaves the pool once,
        // even though a lease still holds it, and does not come back at release.
        let mut dead = registrar(tracker.addr).await;
        let reg = dead.register("127.0.0.1:1".parse().unwrap(), 1, 0).await.unwrap();
        let lease = c.lease(8, false, None, |_, _, _| {}).await.unwrap();
        assert!(lease.peers.iter().any(|p| p.peer_id == reg.peer_id));
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while std::time::Instant::now() < deadline {
            c.renew(lease.lease_id).await.unwrap();
            c.renew(renewed.lease_id).await.unwrap();
            let (_, rows) = c.peers().await.unwrap();
            if rows[reg.peer_id.0 as usize].state == "gone" {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(matches!(dead.heartbeat(reg.peer_id).await, Err(Error::Remote { code: ErrorCode::PeerGone, .. })));
        state.check_invariants().unwrap();
        c.release(lease.lease_id).await.unwrap();
        c.release(renewed.lease_id).await.unwrap();
        assert_eq!(state.stats().unwrap().free, 8, "eight live workers, one slot each");
        state.check_invariants().unwrap();
        teardown(tracker, workers).await;
    })
    .await
    .unwrap();
}

/// Sends raw bytes on a fresh connection and returns whatever comes back
/// before the tracker closes it (or 2 s pass).
async fn raw_exchange(addr: std::net::SocketAddr, bytes: &[u8]) -> Vec<u8> {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(bytes).await.unwrap();
    let _ = s.shutdown().await;
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(2), s.read_to_end(&mut out)).await;
    out
}

/// A client's handshake hello without a secret, byte by byte as
/// `septet_common::secure` documents it: magic, version, role (2: client),
/// flags (none), two reserved bytes, a 32-byte nonce.
fn hello(version: u32) -> Vec<u8> {
    let mut out = MAGIC.to_vec();
    out.extend_from_slice(&version.to_le_bytes());
    out.extend_from_slice(&[2, 0, 0, 0]);
    out.extend_from_slice(&[7; 32]);
    out
}

/// The first error frame in a reply, after the server's hello.
fn error_code(reply: &[u8]) -> Option<ErrorCode> {
    let mut buf = reply.get(HELLO_LEN..).unwrap_or_default();
    while let Some((frame, used)) = septet_common::frame::decode(buf, 1 << 20).ok().flatten() {
        if let septet_common::Frame::Control(body) = frame {
            if let Ok(TrackerReply::Error(failure)) = body.decode::<TrackerReply>() {
                return Some(failure.code);
            }
        }
        buf = &buf[used..];
    }
    None
}

#[tokio::test]
async fn the_tracker_survives_bad_bytes_and_keeps_serving_others() {
    tokio::time::timeout(LIMIT, async {
        let (tracker, state) = spawn_tracker(TrackerConfig::default()).await;
        let workers = spawn_workers(tracker.addr, 7, 1).await;
        wait_for_alive_slots(tracker.addr, 7).await;
        // A well-behaved client holds a connection open through all of it.
        let mut good = registrar(tracker.addr).await;
        let lease = good.lease(7, false, None, |_, _, _| {}).await.unwrap();

        // Garbage instead of a hello: dropped without a word about the grid.
        let reply = raw_exchange(tracker.addr, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert!(reply.is_empty(), "{reply:?}");
        let reply = raw_exchange(tracker.addr, &[b'x'; 200]).await;
        assert!(reply.is_empty(), "{reply:?}");
        // A declared length far over the maximum, after the handshake: refused before allocating.
        let mut huge = hello(PROTOCOL_VERSION);
        huge.extend_from_slice(&u32::MAX.to_le_bytes());
        huge.push(KIND_CONTROL);
        assert_eq!(error_code(&raw_exchange(tracker.addr, &huge).await), Some(ErrorCode::FrameTooLarge));
        // Matrix blocks are not for the tracker, even small ones.
        let mut blocks = hello(PROTOCOL_VERSION);
        blocks.extend_from_slice(&[30, 0, 0, 0, KIND_BLOCKS]);
        blocks.extend_from_slice(&[0; 29]);
        assert!(error_code(&raw_exchange(tracker.addr, &blocks).await).is_some());
        // A truncated frame: the connection closes, nothing else happens.
        let hb = hello(PROTOCOL_VERSION);
        raw_exchange(tracker.addr, &hb[..hb.len() - 2]).await;
        let mut truncated = hello(PROTOCOL_VERSION);
        let ls = encode_control(&TrackerRequest::ListPeers).unwrap();
        truncated.extend_from_slice(&ls[..ls.len() - 1]);
        raw_exchange(tracker.addr, &truncated).await;
        // Wrong protocol version: the server's hello names its version with
        // status 1 (version mismatch), and nothing more is said.
        let reply = raw_exchange(tracker.addr, &hello(PROTOCOL_VERSION + 41)).await;
        assert_eq!(reply.len(), HELLO_LEN, "{reply:?}");
        assert_eq!((&reply[..4], &reply[4..8], reply[8]), (&MAGIC[..], &PROTOCOL_VERSION.to_le_bytes()[..], 1));
        // An unknown message kind after a good hello.
        let mut unknown = hello(PROTOCOL_VERSION);
        unknown.extend_from_slice(&[2, 0, 0, 0, KIND_CONTROL, 250]);
        assert_eq!(error_code(&raw_exchange(tracker.addr, &unknown).await), Some(ErrorCode::BadFrame));
        // A reply sent as a request: no request of this conversation (variant
        // 8 of the replies, past the requests' last), so a bad frame.
        let mut odd = hello(PROTOCOL_VERSION);
        odd.extend_from_slice(&encode_control(&TrackerReply::Released { lease_id: LeaseId(9) }).unwrap());
        assert_eq!(error_code(&raw_exchange(tracker.addr, &odd).await), Some(ErrorCode::BadFrame));
        // Well-formed requests with bad arguments get an error and the connection lives on.
        assert!(matches!(good.heartbeat(PeerId(999)).await, Err(Error::Remote { code: ErrorCode::UnknownPeer, .. })));
        assert!(matches!(
            good.lease(0, false, None, |_, _, _| {}).await,
            Err(Error::Remote { code: ErrorCode::InvalidRequest, .. })
        ));
        assert!(matches!(
            good.register("127.0.0.1:0".parse().unwrap(), 1, 0).await,
            Err(Error::Remote { code: ErrorCode::InvalidRequest, .. })
        ));

        // The well-behaved client, and a new one, are still served.
        let (_, rows) = good.peers().await.unwrap();
        assert_eq!(rows.len(), 7);
        good.release(lease.lease_id).await.unwrap();
        let mut fresh = client(tracker.addr).await;
        let again = fresh.lease(7, false, None, |_, _, _| {}).await.unwrap();
        fresh.release(again.lease_id).await.unwrap();
        state.check_invariants().unwrap();
        teardown(tracker, workers).await;
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_requesters_churning_over_twenty_workers_keep_the_invariants() {
    tokio::time::timeout(LIMIT, async {
        // The twenty workers are registrations that never heartbeat: keep
        // them alive for the test's length.
        let config = TrackerConfig { heartbeat_timeout: Duration::from_secs(3600), ..TrackerConfig::default() };
        let (tracker, state) = spawn_tracker(config).await;
        let mut registrar = registrar(tracker.addr).await;
        for i in 0..20u16 {
            registrar.register(format!("127.0.0.1:{}", 30_000 + i).parse().unwrap(), 1, 0).await.unwrap();
        }
        // Check the invariants continuously while the load runs.
        let stop = tokio_util::sync::CancellationToken::new();
        let (monitor_state, monitor_stop) = (state.clone(), stop.clone());
        let monitor = tokio::spawn(async move {
            let mut checks = 0u32;
            while !monitor_stop.is_cancelled() {
                monitor_state.check_invariants().unwrap();
                checks += 1;
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            checks
        });
        let until = tokio::time::Instant::now() + Duration::from_secs(3);
        let mut requesters = Vec::new();
        for r in 0..100u32 {
            requesters.push(tokio::spawn(async move {
                let mut c = client(tracker.addr).await;
                let mut cycles = 0u32;
                while tokio::time::Instant::now() < until {
                    let count = 1 + (r + cycles) % 7;
                    let grant = c.lease(count, false, Some(Duration::from_secs(30)), |_, _, _| {}).await.unwrap();
                    assert_eq!(grant.peers.len(), count as usize);
                    c.release(grant.lease_id).await.unwrap();
                    cycles += 1;
                }
                cycles
            }));
        }
        let mut total = 0;
        for r in requesters {
            total += r.await.unwrap();
        }
        stop.cancel();
        let checks = monitor.await.unwrap();
        assert!(total > 100 && checks > 10, "cycles {total}, checks {checks}");
        // Nothing leaked: every slot free, no lease, nobody waiting.
        assert_eq!(state.stats().unwrap(), septet_tracker::state::Stats { free: 20, leases: 0, waiting: 0 });
        let (_, rows) = registrar.peers().await.unwrap();
        assert!(rows.iter().map(|r| r.leases_total).sum::<u64>() >= u64::from(total));
        state.check_invariants().unwrap();
        tracker.shutdown().await;
    })
    .await
    .unwrap();
}
