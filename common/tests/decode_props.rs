//! Peer bytes never panic the decoder, never make it allocate beyond what
//! the bytes account for, and decode the same however the stream cuts them.
//!
//! Four properties, 100,000 proptest cases in all per `cargo test` run:
//!
//! | test                                          | cases  |
//! |-----------------------------------------------|--------|
//! | `random_bytes_never_panic_or_overallocate`    | 40,000 |
//! | `random_bodies_behind_valid_prefixes_…`       | 25,000 |
//! | `mutated_valid_frames_never_panic_or_…`       | 33,000 |
//! | `valid_frames_split_anywhere_decode_the_same` |  2,000 |
//!
//! (The split test reads each case's stream once per split point, a few
//! hundred reads per case.) Each decode of the first three runs under a
//! counting global allocator that records the peak bytes allocated on the
//! decoding thread, and the peak must stay within [`allowance`]: the frame's
//! own bytes (plus a small constant) for a blocks frame, a fixed multiple of
//! them for a control frame (the frame holds a copy of its body, and each
//! decoded message — a `TrackerRequest`, `TrackerReply`, `WorkerReply` or `WorkerRequest`,
//! every control body is decoded as all three — holds its strings and
//! vectors, whose in-memory size is a bounded multiple of their encoding).
//! A declared string length or element count never enters the bound, so a
//! decoder that allocates for a claimed length before checking the bytes are
//! there fails it.
//!
//! Failure persistence is off: proptest writes no files into the repository.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::collections::VecDeque;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use ndarray::Array2;
use proptest::prelude::*;
use proptest::sample::{select, Index};
use proptest::test_runner::{Config, TestRunner};
use septet_common::frame::{self, KIND_BLOCKS, KIND_CONTROL, LEN_PREFIX};
use septet_common::proto::{
    Delegated, Failure, FederationReply, FederationRequest, JobId, LeaseGrant, LeaseId, LeaseTicket, PeerAddr, PeerId,
    PeerRow, RelayStats, Rendezvous, SubSlot, TaskId, TrackerReply, TrackerRequest, WorkerReply, WorkerRequest,
};
use septet_common::relay::{RelayPlan, Roles};
use septet_common::{BlockOp, Blocks, ControlBody, ErrorCode, Frame, FrameReader, Matrix, DEFAULT_MAX_FRAME_LEN};
use tokio::io::{AsyncRead, ReadBuf};

/// Wraps [`System`], counting the bytes each thread has allocated and the
/// peak since [`peak_during`] last reset it. Counting is per thread, so the
/// tests that `cargo test` runs in parallel do not see each other's memory.
struct Counting;

thread_local! {
    /// Bytes allocated minus bytes freed on this thread since the reset
    /// (negative when it frees memory allocated before).
    static CURRENT: Cell<isize> = const { Cell::new(0) };
    /// The highest `CURRENT` since the reset.
    static PEAK: Cell<isize> = const { Cell::new(0) };
}

fn record(delta: isize) {
    // `try_with`: allocations during thread teardown are not counted.
    let _ = CURRENT.try_with(|current| {
        let now = current.get() + delta;
        current.set(now);
        let _ = PEAK.try_with(|peak| peak.set(peak.get().max(now)));
    });
}

// SAFETY: every call is passed straight to `System`; the counters only
// observe sizes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        record(layout.size() as isize);
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        record(layout.size() as isize);
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        record(-(layout.size() as isize));
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // Count the new block before the old one goes: a moving realloc
        // holds both for a moment.
        record(new_size as isize);
        let out = unsafe { System.realloc(ptr, layout, new_size) };
        record(-(layout.size() as isize));
        out
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Runs `f`, returning its result and the peak bytes it had allocated at
/// once on this thread (whatever it freed before returning).
fn peak_during<T>(f: impl FnOnce() -> T) -> (T, usize) {
    CURRENT.with(|c| c.set(0));
    PEAK.with(|p| p.set(0));
    let out = f();
    (out, PEAK.with(Cell::get).max(0) as usize)
}

/// Bytes any decode may allocate whatever the input: error messages, the
/// `Vec` of a blocks frame's matrices, small first allocations of vectors.
const SLACK: usize = 4096;

/// Bytes a control frame may allocate per byte of its encoding. The decoded
/// message holds copies of its strings (one byte per encoded byte) and
/// vectors of `PeerRow` (96 bytes, at least 9 encoded) or `PeerAddr` (32
/// bytes, at least 2 encoded), which grow by doubling, briefly holding the
/// old and new buffers (×3): 48 per byte covers them with room.
const CONTROL_BYTES_PER_BYTE: usize = 64;

/// The most [`frame::decode`] may allocate for `buf`: the frame's own bytes
/// for a blocks frame (its matrices hold exactly the payload, which the
/// whole frame must be there to be allocated), a multiple of them for
/// anything else. Never a length the bytes merely declare.
fn allowance(buf: &[u8]) -> usize {
    match buf.get(LEN_PREFIX) {
        Some(&KIND_BLOCKS) => buf.len() + SLACK,
        _ => CONTROL_BYTES_PER_BYTE * buf.len() + SLACK,
    }
}

/// Decodes `buf` as a peer would send it, under the allocation bound. Any
/// panic fails the property (proptest reports it with the input).
fn decode_checked(buf: &[u8]) -> Result<(), TestCaseError> {
    let (result, peak) = peak_during(|| frame::decode(buf, DEFAULT_MAX_FRAME_LEN));
    prop_assert!(
        peak <= allowance(buf),
        "decoding {} bytes allocated {peak} bytes at once (allowed {}): {result:?}",
        buf.len(),
        allowance(buf)
    );
    if let Ok(Some((_, used))) = &result {
        prop_assert!(*used <= buf.len());
    }
    // A control body on its own, as `decode_control` sees it, decoded as
    // each conversation's message type, under the same bound.
    if buf.len() > LEN_PREFIX && buf[LEN_PREFIX] == KIND_CONTROL {
        let body = &buf[LEN_PREFIX + 1..];
        control_checked::<TrackerRequest>(body)?;
        control_checked::<TrackerReply>(body)?;
        control_checked::<WorkerReply>(body)?;
        control_checked::<WorkerRequest>(body)?;
    }
    Ok(())
}

/// Decodes `body` as a `T` under the control allocation bound.
fn control_checked<T: serde::de::DeserializeOwned + std::fmt::Debug>(body: &[u8]) -> Result<(), TestCaseError> {
    let (result, peak) = peak_during(|| frame::decode_control::<T>(body));
    let allowed = CONTROL_BYTES_PER_BYTE * body.len() + SLACK;
    prop_assert!(
        peak <= allowed,
        "control body of {} bytes, as {}, allocated {peak}: {result:?}",
        body.len(),
        std::any::type_name::<T>()
    );
    Ok(())
}

fn config(cases: u32) -> Config {
    Config { cases, failure_persistence: None, ..Config::default() }
}

/// Short strings of any chars (multi-byte UTF-8 included).
fn text() -> impl Strategy<Value = String> {
    prop::collection::vec(any::<char>(), 0..8).prop_map(|c| c.into_iter().collect())
}

fn via() -> impl Strategy<Value = Option<Rendezvous>> {
    prop::option::of(prop_oneof![
        any::<[u8; 16]>().prop_map(Rendezvous::Splice),
        any::<[u8; 16]>().prop_map(Rendezvous::Punch)
    ])
}

fn peer_id() -> impl Strategy<Value = PeerId> {
    any::<u64>().prop_map(PeerId)
}

fn lease_id() -> impl Strategy<Value = LeaseId> {
    any::<u64>().prop_map(LeaseId)
}

fn task_id() -> impl Strategy<Value = TaskId> {
    any::<u64>().prop_map(TaskId)
}

fn ticket() -> impl Strategy<Value = LeaseTicket> {
    (
        lease_id(),
        prop::collection::vec((peer_id(), any::<u32>()), 0..8),
        any::<u64>(),
        prop::collection::vec(any::<u8>(), 0..70),
    )
        .prop_map(|(lease_id, peers, expires_ms, signature)| LeaseTicket {
            lease_id,
            peers,
            expires_ms,
            signature,
        })
}

fn peer_addr() -> impl Strategy<Value = PeerAddr> {
    (peer_id(), text(), prop::option::of(ticket())).prop_map(|(peer_id, addr, ticket)| PeerAddr {
        peer_id,
        addr,
        ticket,
    })
}

fn peer_row() -> impl Strategy<Value = PeerRow> {
    (any::<(u64, u32, u32, u64, u32, u64, u64)>(), any::<(u32, u64)>(), text(), text(), text()).prop_map(
        |(
            (peer_id, slots, in_use, leases_total, failures, joined_at, last_seen),
            (slow, memory_mib),
            addr,
            state,
            cluster,
        )| {
            PeerRow {
                peer_id: PeerId(peer_id),
                addr,
                slots,
                memory_mib,
                in_use,
                leases_total,
                failures,
                slow,
                joined_at,
                last_seen,
                state,
                cluster,
            }
        },
    )
}

fn error_code() -> impl Strategy<Value = ErrorCode> {
    use ErrorCode::*;
    select(vec![
        BadFrame,
        FrameTooLarge,
        VersionMismatch,
        UnexpectedMessage,
        UnknownPeer,
        PeerGone,
        UnknownLease,
        InvalidRequest,
        ShapeMismatch,
        ShuttingDown,
        Internal,
        Unavailable,
        Unauthorized,
    ])
}

fn failure() -> impl Strategy<Value = Failure> {
    (error_code(), text(), prop::option::of(task_id())).prop_map(|(code, message, task_id)| Failure {
        code,
        message,
        task_id,
    })
}

/// A lease token: usually 64 hex digits, sometimes any text.
fn token() -> impl Strategy<Value = String> {
    prop_oneof![Just("0123456789abcdef".repeat(4)), text()]
}

/// Every variant of [`TrackerRequest`], with arbitrary fields.
fn tracker_request() -> impl Strategy<Value = TrackerRequest> {
    let tok = || prop::option::of(token());
    prop_oneof![
        (text(), any::<u32>(), any::<u64>()).prop_map(|(listen, slots, memory_mib)| TrackerRequest::Register {
            listen,
            slots,
            memory_mib
        }),
        peer_id().prop_map(|peer_id| TrackerRequest::Heartbeat { peer_id }),
        peer_id().prop_map(|peer_id| TrackerRequest::Deregister { peer_id }),
        Just(TrackerRequest::ListPeers),
        (any::<u32>(), any::<bool>()).prop_map(|(count, detached)| TrackerRequest::Lease { count, detached }),
        (lease_id(), tok()).prop_map(|(lease_id, token)| TrackerRequest::Renew { lease_id, token }),
        (lease_id(), tok()).prop_map(|(lease_id, token)| TrackerRequest::Release { lease_id, token }),
        (lease_id(), peer_id(), text(), any::<bool>(), tok()).prop_map(
            |(lease_id, peer_id, reason, replace, token)| {
                TrackerRequest::ReportFailure { lease_id, peer_id, reason, replace, token }
            }
        ),
        (lease_id(), peer_id(), tok()).prop_map(|(lease_id, peer_id, token)| TrackerRequest::Hedge {
            lease_id,
            peer_id,
            token
        }),
        (lease_id(), prop::collection::vec(peer_id(), 0..8), prop::collection::vec(peer_id(), 0..8), tok())
            .prop_map(|(lease_id, beaten, proven, token)| TrackerRequest::Speed { lease_id, beaten, proven, token }),
        (text(), text())
            .prop_map(|(cluster, listen)| TrackerRequest::Federation(FederationRequest::Status { cluster, listen })),
        (any::<u32>(), text())
            .prop_map(|(count, cluster)| TrackerRequest::Federation(FederationRequest::Lend { count, cluster })),
        Just(TrackerRequest::ListFederation),
        text().prop_map(|cluster| TrackerRequest::Federation(FederationRequest::LinkBack { cluster })),
        (lease_id(), peer_id(), text(), any::<u64>(), tok(), via()).prop_map(
            |(lease_id, peer_id, addr, nonce, token, via)| TrackerRequest::Broker {
                lease_id,
                peer_id,
                addr,
                nonce,
                token,
                via
            }
        ),
    ]
}

/// Every variant of [`TrackerReply`], with arbitrary fields.
fn tracker_reply() -> impl Strategy<Value = TrackerReply> {
    let u = any::<u64>;
    let sessions = prop_oneof![
        failure().prop_map(TrackerReply::Error),
        (peer_id(), text(), u(), prop::collection::vec(any::<u8>(), 0..40), u()).prop_map(
            |(peer_id, addr, heartbeat_ms, ticket_key, now_ms)| TrackerReply::Registered {
                peer_id,
                addr,
                heartbeat_ms,
                ticket_key,
                now_ms
            }
        ),
        u().prop_map(|now_ms| TrackerReply::HeartbeatAck { now_ms }),
        Just(TrackerReply::Deregistered),
        (text(), prop::collection::vec(peer_row(), 0..4)).prop_map(|(table, rows)| TrackerReply::Peers { table, rows }),
    ];
    let leases = prop_oneof![
        any::<(u32, u32, u32)>().prop_map(|(position, free, needed)| TrackerReply::Waiting { position, free, needed }),
        (lease_id(), prop::collection::vec(peer_addr(), 0..8), u(), token()).prop_map(
            |(lease_id, peers, ttl_ms, token)| { TrackerReply::Leased(LeaseGrant { lease_id, peers, ttl_ms, token }) }
        ),
        (lease_id(), u(), prop::collection::vec(peer_addr(), 0..8))
            .prop_map(|(lease_id, ttl_ms, peers)| TrackerReply::Renewed { lease_id, ttl_ms, peers }),
        lease_id().prop_map(|lease_id| TrackerReply::Released { lease_id }),
        (lease_id(), prop::option::of(peer_addr()))
            .prop_map(|(lease_id, replacement)| TrackerReply::FailureRecorded { lease_id, replacement }),
        (lease_id(), prop::option::of(peer_addr()))
            .prop_map(|(lease_id, slot)| TrackerReply::HedgeSlot { lease_id, slot }),
        lease_id().prop_map(|lease_id| TrackerReply::SpeedRecorded { lease_id }),
        (text(), any::<(u32, u32, u32, bool)>()).prop_map(|(cluster, (free, slots, queued, reverse))| {
            TrackerReply::Federation(FederationReply::Status { cluster, free, slots, queued, reverse })
        }),
        Just(TrackerReply::Federation(FederationReply::LinkedBack)),
        Just(TrackerReply::Brokered),
    ];
    prop_oneof![sessions, leases]
}

/// Every variant of [`WorkerReply`], with arbitrary fields.
fn worker_reply() -> impl Strategy<Value = WorkerReply> {
    prop_oneof![
        failure().prop_map(WorkerReply::Error),
        (task_id(), any::<u64>()).prop_map(|(task_id, compute_us)| WorkerReply::Computed { task_id, compute_us }),
        Just(WorkerReply::Working),
        Just(WorkerReply::DialingBack),
        any::<u64>().prop_map(|nonce| WorkerReply::DialedBack { nonce }),
        any::<(u32, u32, [u32; 8], u64)>().prop_map(|(inputs, computed, arrived, at_us)| {
            WorkerReply::RelayProgress { inputs, computed, arrived, at_us }
        }),
        (proptest::option::of(any::<u8>()), text(), any::<bool>())
            .prop_map(|(blame, message, evidence)| WorkerReply::RelayFailed { blame, message, evidence }),
        (any::<u8>(), proptest::option::of(text())).prop_map(|(slot, refused)| WorkerReply::MovedAck { slot, refused }),
        (any::<u8>(), text(), any::<bool>(), any::<bool>()).prop_map(|(slot, message, evidence, wrong_product)| {
            WorkerReply::RelayLost { slot, message, evidence, wrong_product }
        }),
        (any::<u8>(), proptest::collection::vec(any::<u64>(), 0..9), any::<[u64; 4]>(), prop::option::of(delegated()))
            .prop_map(|(slot, bytes, t, delegated)| {
                WorkerReply::RelayDone(RelayStats {
                    slot,
                    bytes_in: bytes.clone(),
                    bytes_out: bytes,
                    inputs_done_us: t[0],
                    compute_start_us: t[1],
                    compute_end_us: t[2],
                    compute_us: t[3],
                    reduce_start_us: t[0],
                    done_us: t[1],
                    delegated,
                })
            }),
    ]
}

/// A delegated product's report, with arbitrary fields.
fn delegated() -> impl Strategy<Value = Delegated> {
    (
        proptest::collection::vec(
            (peer_id(), text(), any::<[u64; 3]>(), any::<bool>()).prop_map(|(peer_id, addr, x, done)| SubSlot {
                peer_id,
                addr,
                bytes_in: x[0],
                bytes_out: x[1],
                compute_us: x[2],
                done,
            }),
            0..8,
        ),
        proptest::collection::vec(any::<u8>(), 0..5),
        proptest::collection::vec((any::<u8>(), text()), 0..3),
        prop::option::of(text()),
        any::<[u64; 3]>(),
    )
        .prop_map(|(slots, computed_here, blamed, failure, x)| Delegated {
            slots,
            computed_here,
            blamed,
            failure,
            bytes_sent: x[0],
            bytes_received: x[1],
            took_us: x[2],
        })
}

/// Every variant of [`WorkerRequest`], with arbitrary fields.
fn worker_request() -> impl Strategy<Value = WorkerRequest> {
    prop_oneof![
        (any::<u64>(), any::<u8>(), any::<u8>(), any::<u8>()).prop_map(|(job, from, to, generation)| {
            WorkerRequest::Join { job_id: JobId(job), from, to, generation }
        }),
        (any::<u8>(), text(), prop::option::of(ticket())).prop_map(|(slot, addr, ticket)| WorkerRequest::Moved {
            slot,
            addr,
            ticket
        }),
        proptest::collection::vec((any::<u64>(), any::<[u8; 32]>()), 0..6).prop_map(WorkerRequest::Digests),
        Just(WorkerRequest::Alive),
        (text(), any::<u64>(), via()).prop_map(|(addr, nonce, via)| WorkerRequest::DialBack { addr, nonce, via }),
        ticket().prop_map(WorkerRequest::Ticket),
        (
            any::<[u64; 6]>(),
            any::<u32>(),
            proptest::collection::vec(text(), 0..8),
            any::<[u8; 8]>(),
            any::<[u8; 4]>(),
            any::<bool>(),
            proptest::collection::vec(prop::option::of(ticket()), 0..8),
            proptest::collection::vec(peer_addr(), 0..8),
        )
            .prop_map(|(x, rounds, peers, holders, reducers, f64, tickets, delegate)| {
                WorkerRequest::Relay(RelayPlan {
                    job_id: JobId(x[0]),
                    dtype: if f64 { septet_common::Dtype::F64 } else { septet_common::Dtype::F32 },
                    m: x[1],
                    k: x[2],
                    n: x[3],
                    a_panel: x[4],
                    b_panel: x[5],
                    rounds,
                    peers,
                    roles: Roles { holders, reducers },
                    you: holders[0],
                    tickets,
                    delegate,
                    silence_ms: x[0] ^ x[1],
                    generation: reducers[0],
                    done: reducers[1],
                    checks: reducers[2] % 2 == 0,
                })
            }),
        // (Any tolerance but NaN, which is not equal to itself.)
        (
            any::<[u8; 32]>(),
            proptest::collection::vec(
                proptest::num::f64::NORMAL | proptest::num::f64::INFINITE | proptest::num::f64::ZERO,
                0..8
            )
        )
            .prop_map(|(seed, tolerance)| WorkerRequest::Checks { seed, tolerance }),
    ]
}

/// A control message of any conversation.
#[derive(Debug, Clone, PartialEq)]
enum AnyControl {
    Request(TrackerRequest),
    TrackerReply(TrackerReply),
    WorkerReply(WorkerReply),
    WorkerRequest(WorkerRequest),
}

impl AnyControl {
    fn body(&self) -> ControlBody {
        match self {
            AnyControl::Request(m) => ControlBody::encode(m),
            AnyControl::TrackerReply(m) => ControlBody::encode(m),
            AnyControl::WorkerReply(m) => ControlBody::encode(m),
            AnyControl::WorkerRequest(m) => ControlBody::encode(m),
        }
        .unwrap()
    }

    /// Decodes `body` as this message's type.
    fn decode_like(&self, body: &ControlBody) -> septet_common::Result<AnyControl> {
        Ok(match self {
            AnyControl::Request(_) => AnyControl::Request(body.decode()?),
            AnyControl::TrackerReply(_) => AnyControl::TrackerReply(body.decode()?),
            AnyControl::WorkerReply(_) => AnyControl::WorkerReply(body.decode()?),
            AnyControl::WorkerRequest(_) => AnyControl::WorkerRequest(body.decode()?),
        })
    }
}

fn message() -> impl Strategy<Value = AnyControl> {
    prop_oneof![
        8 => tracker_request().prop_map(AnyControl::Request),
        10 => tracker_reply().prop_map(AnyControl::TrackerReply),
        2 => worker_reply().prop_map(AnyControl::WorkerReply),
        2 => worker_request().prop_map(AnyControl::WorkerRequest),
    ]
}

/// A `rows × cols` matrix of finite values (so decoded frames compare equal).
fn matrix(f64: bool, (rows, cols): (usize, usize), seed: u64) -> Matrix {
    let value = |i: usize, j: usize| {
        let x = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(((i * 31 + j) as u64).wrapping_mul(1442695040888963407));
        (x >> 40) as f64 / 1024.0 - 4096.0
    };
    if f64 {
        Matrix::F64(Array2::from_shape_fn((rows, cols), |(i, j)| value(i, j)))
    } else {
        Matrix::F32(Array2::from_shape_fn((rows, cols), |(i, j)| value(i, j) as f32))
    }
}

/// Blocks frames of both ops and dtypes, with small shapes (empty ones
/// included).
fn blocks() -> impl Strategy<Value = Frame> {
    (any::<u64>(), any::<bool>(), any::<bool>(), 0usize..5, 0usize..5, 0usize..5, any::<u64>()).prop_map(
        |(task_id, multiply, f64, m, k, n, seed)| {
            let (op, mats) = if multiply {
                (BlockOp::Multiply, vec![matrix(f64, (m, k), seed), matrix(f64, (k, n), !seed)])
            } else {
                (BlockOp::Product, vec![matrix(f64, (m, n), seed)])
            };
            Frame::Blocks(Blocks { task_id: TaskId(task_id), op, mats })
        },
    )
}

/// A valid frame, and the message a control frame carries.
fn valid_frame() -> impl Strategy<Value = (Frame, Option<AnyControl>)> {
    prop_oneof![message().prop_map(|m| (Frame::Control(m.body()), Some(m))), blocks().prop_map(|f| (f, None))]
}

/// One change to a valid frame's bytes.
#[derive(Debug, Clone)]
enum Mutation {
    /// XOR a byte anywhere.
    Flip(Index, u8),
    /// Overwrite a byte of the prefix or blocks header (the first 37 bytes).
    Header(usize, u8),
    /// Overwrite four bytes with a little-endian `u32` (a dimension, a
    /// length, a varint's body).
    Word(Index, u32),
    /// Insert a bincode varint claiming a `u64` length at a position.
    Varint(Index, u64),
    /// Cut the bytes short.
    Truncate(Index),
    /// Append bytes.
    Extend(Vec<u8>),
    /// Replace the length field.
    Length(u32),
    /// Add to the length field (wrapping).
    LengthDelta(i8),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<Index>(), 1u8..).prop_map(|(at, mask)| Mutation::Flip(at, mask)),
        (0usize..37, any::<u8>()).prop_map(|(at, v)| Mutation::Header(at, v)),
        (any::<Index>(), any::<u32>()).prop_map(|(at, v)| Mutation::Word(at, v)),
        (any::<Index>(), any::<u64>()).prop_map(|(at, v)| Mutation::Varint(at, v)),
        any::<Index>().prop_map(Mutation::Truncate),
        prop::collection::vec(any::<u8>(), 1..16).prop_map(Mutation::Extend),
        any::<u32>().prop_map(Mutation::Length),
        any::<i8>().prop_map(Mutation::LengthDelta),
    ]
}

fn apply(bytes: &mut Vec<u8>, m: &Mutation) {
    let len = bytes.len();
    match m {
        Mutation::Flip(at, mask) if len > 0 => bytes[at.index(len)] ^= mask,
        Mutation::Header(at, v) if *at < len => bytes[*at] = *v,
        Mutation::Word(at, v) if len >= 4 => {
            let at = at.index(len - 3);
            bytes[at..at + 4].copy_from_slice(&v.to_le_bytes());
        }
        Mutation::Varint(at, v) => {
            let at = at.index(len + 1);
            let mut varint = vec![253];
            varint.extend_from_slice(&v.to_le_bytes());
            bytes.splice(at..at, varint);
        }
        Mutation::Truncate(at) => bytes.truncate(at.index(len + 1)),
        Mutation::Extend(more) => bytes.extend_from_slice(more),
        Mutation::Length(v) if len >= LEN_PREFIX => bytes[..LEN_PREFIX].copy_from_slice(&v.to_le_bytes()),
        Mutation::LengthDelta(d) if len >= LEN_PREFIX => {
            let old = u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
            bytes[..LEN_PREFIX].copy_from_slice(&old.wrapping_add_signed(i32::from(*d)).to_le_bytes());
        }
        _ => {}
    }
}

#[test]
fn random_bytes_never_panic_or_overallocate() {
    let mut runner = TestRunner::new(config(40_000));
    runner.run(&prop::collection::vec(any::<u8>(), 0..64), |bytes| decode_checked(&bytes)).unwrap();
}

#[test]
fn random_bodies_behind_valid_prefixes_never_panic_or_overallocate() {
    // A consistent length field and a known kind, so the random bytes reach
    // the blocks header parser and bincode rather than stopping at the prefix.
    let input = (prop_oneof![Just(KIND_CONTROL), Just(KIND_BLOCKS)], prop::collection::vec(any::<u8>(), 0..96));
    let mut runner = TestRunner::new(config(25_000));
    runner
        .run(&input, |(kind, body)| {
            let mut bytes = ((body.len() + 1) as u32).to_le_bytes().to_vec();
            bytes.push(kind);
            bytes.extend_from_slice(&body);
            decode_checked(&bytes)
        })
        .unwrap();
}

#[test]
fn mutated_valid_frames_never_panic_or_overallocate() {
    let input = (valid_frame(), prop::collection::vec(mutation(), 1..4));
    let mut runner = TestRunner::new(config(33_000));
    runner
        .run(&input, |((frame, message), mutations)| {
            let mut bytes = frame::encode(&frame).unwrap();
            let original = bytes.clone();
            for m in &mutations {
                apply(&mut bytes, m);
            }
            decode_checked(&bytes)?;
            if bytes == original {
                let decoded = frame::decode(&bytes, DEFAULT_MAX_FRAME_LEN).unwrap();
                prop_assert_eq!(&decoded, &Some((frame, bytes.len())));
                // The body decodes back as the message, as its receiver reads it.
                if let (Some(message), Some((Frame::Control(body), _))) = (message, decoded) {
                    prop_assert_eq!(message.decode_like(&body).unwrap(), message);
                }
            }
            Ok(())
        })
        .unwrap();
}

/// An in-memory stream that hands out its bytes in the given pieces: one
/// read never returns bytes of two pieces, as if each arrived in its own
/// TCP segment.
struct Pieces(VecDeque<Vec<u8>>);

impl AsyncRead for Pieces {
    fn poll_read(mut self: Pin<&mut Self>, _: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        if let Some(mut piece) = self.0.pop_front() {
            let n = piece.len().min(buf.remaining());
            buf.put_slice(&piece[..n]);
            if n < piece.len() {
                self.0.push_front(piece.split_off(n));
            }
        }
        Poll::Ready(Ok(()))
    }
}

/// Cuts `bytes` at the given (sorted, deduplicated) offsets.
fn cut(bytes: &[u8], cuts: &[usize]) -> VecDeque<Vec<u8>> {
    let mut pieces = VecDeque::new();
    let mut start = 0;
    for &at in cuts.iter().chain(std::iter::once(&bytes.len())) {
        if at > start {
            pieces.push_back(bytes[start..at].to_vec());
            start = at;
        }
    }
    pieces
}

#[test]
fn valid_frames_split_anywhere_decode_the_same() {
    let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
    // Two frames back to back, so the reader must also stop at the first
    // frame's end whatever piece it arrives in.
    let input = (valid_frame(), valid_frame(), prop::collection::vec(any::<Index>(), 2..6));
    let mut runner = TestRunner::new(config(2_000));
    runner
        .run(&input, |((first, _), (second, _), extra_cuts)| {
            let mut stream = frame::encode(&first).unwrap();
            stream.extend_from_slice(&frame::encode(&second).unwrap());
            let read_all = |pieces: VecDeque<Vec<u8>>| {
                rt.block_on(async {
                    let mut reader = FrameReader::new(Pieces(pieces), DEFAULT_MAX_FRAME_LEN);
                    let a = reader.read_frame().await.unwrap();
                    let b = reader.read_frame().await.unwrap();
                    let end = reader.read_frame().await.unwrap();
                    (a, b, end)
                })
            };
            let expected = (Some(first.clone()), Some(second.clone()), None);
            // Two pieces, cut at every offset.
            for at in 0..=stream.len() {
                prop_assert_eq!(read_all(cut(&stream, &[at])), expected.clone(), "cut at {}", at);
            }
            // Several pieces at once.
            let mut cuts: Vec<usize> = extra_cuts.iter().map(|i| i.index(stream.len() + 1)).collect();
            cuts.sort_unstable();
            cuts.dedup();
            prop_assert_eq!(read_all(cut(&stream, &cuts)), expected, "cuts at {:?}", cuts);
            Ok(())
        })
        .unwrap();
}
