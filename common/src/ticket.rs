//! Lease tickets: what makes a lease mean something to the workers.
//!
//! The tracker's FIFO queue decides who computes on which worker; a ticket
//! is how a worker knows, on its own, that the tracker decided it. With
//! a lease the tracker hands the holder a [`LeaseTicket`]: lease id, each
//! peer with the slots the lease holds on it, and when the lease expires,
//! signed with the tracker's Ed25519 key — one signature per lease (and per
//! renewal, hedge or replacement), which costs the tracker ~25 µs. A worker learns
//! the tracker's public key when it registers, and serves a connection only
//! after it presents a ticket for this very worker that verifies and has
//! not expired; it runs at most the ticket's slot count of the lease's
//! tasks at once. A renewal hands out fresh tickets.
//!
//! Why a signature and not a MAC under a key derived from the cluster
//! secret: every insider holds the cluster secret, so any requester could
//! derive such a key and mint its own tickets — the queue would still be
//! advisory. Only the tracker holds its signing key, which it makes afresh
//! at start (a restarted tracker has a new key; its workers learn it when
//! they register again, and tickets of the old one stop working, as its
//! leases did).
//!
//! Expiry is in the tracker's clock (milliseconds since it started), which
//! each worker follows from the tracker's time in every registration and
//! heartbeat reply, so hosts' wall clocks need not agree.
//!
//! A ticket is a bearer credential for compute on one worker until the
//! lease's expiry: on a link without `--encrypt` an insider on the path
//! could copy it. It is not bound to the connection that took the lease
//! (insiders share one secret and have no separate identities).

use std::time::{Duration, Instant};

use ring::signature::{self, Ed25519KeyPair, KeyPair, UnparsedPublicKey};

use crate::proto::{LeaseId, LeaseTicket, PeerId};

/// How far past its expiry a ticket is still accepted: the slack for the
/// delay between the tracker's clock and a worker's estimate of it.
pub const EXPIRY_GRACE: Duration = Duration::from_secs(1);

/// Bytes of an Ed25519 public key.
pub const PUBLIC_KEY_LEN: usize = 32;

const LABEL: &[u8] = b"septet/8 lease ticket\0";

/// The bytes a ticket's signature covers.
fn signed_bytes(lease_id: LeaseId, peers: &[(PeerId, u32)], expires_ms: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(LABEL.len() + 24 + 12 * peers.len());
    out.extend_from_slice(LABEL);
    out.extend_from_slice(&lease_id.0.to_le_bytes());
    out.extend_from_slice(&expires_ms.to_le_bytes());
    out.extend_from_slice(&(peers.len() as u64).to_le_bytes());
    for (peer, slots) in peers {
        out.extend_from_slice(&peer.0.to_le_bytes());
        out.extend_from_slice(&slots.to_le_bytes());
    }
    out
}

/// The tracker's side: a fresh signing key and the clock tickets expire by.
pub struct TicketSigner {
    key: Ed25519KeyPair,
    epoch: Instant,
}

impl std::fmt::Debug for TicketSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TicketSigner").field("public_key", &crate::secure::to_hex(self.public_key())).finish()
    }
}

impl TicketSigner {
    /// A new random key; `epoch` is the instant the tracker's clock counts from.
    ///
    /// # Panics
    /// If the operating system's random source fails (see [`crate::secure::fill_random`]).
    pub fn generate(epoch: Instant) -> Self {
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng).expect("the operating system's random source failed");
        let key = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).expect("ring parses the key it just made");
        Self { key, epoch }
    }

    /// The public key workers verify with.
    pub fn public_key(&self) -> &[u8] {
        self.key.public_key().as_ref()
    }

    /// Milliseconds of the tracker's clock at `at`.
    pub fn clock_ms(&self, at: Instant) -> u64 {
        at.saturating_duration_since(self.epoch).as_millis() as u64
    }

    /// A ticket for lease `lease_id` holding `peers` (each with its slots), valid until `expires_at`.
    pub fn sign(&self, lease_id: LeaseId, peers: Vec<(PeerId, u32)>, expires_at: Instant) -> LeaseTicket {
        let expires_ms = self.clock_ms(expires_at);
        let signature = self.key.sign(&signed_bytes(lease_id, &peers, expires_ms)).as_ref().to_vec();
        LeaseTicket { lease_id, peers, expires_ms, signature }
    }
}

/// Why a worker refused a ticket: the text the requester is shown.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TicketRefusal {
    /// No ticket came before the work.
    #[error(
        "this worker serves only under a lease ticket from its tracker, and none was presented \
         (lease slots with `septet multiply --tracker ADDR`, which presents them)"
    )]
    Missing,
    /// The worker has not registered with its tracker yet (or lost it).
    #[error("this worker is not registered with its tracker yet, so it cannot check lease tickets; try again shortly")]
    NotRegistered,
    /// The signature does not verify under this worker's tracker's key.
    #[error("the lease ticket was not signed by this worker's tracker (forged, altered, or from another tracker)")]
    BadSignature,
    /// A ticket of a lease that holds no slot on this worker.
    #[error("the lease ticket of lease {lease_id} names no slot on this worker (peer {ours})")]
    OtherPeer {
        /// The lease.
        lease_id: LeaseId,
        /// This worker.
        ours: PeerId,
    },
    /// Past its expiry.
    #[error("the lease ticket of lease {lease_id} expired {ago_ms} ms ago (renew the lease for fresh tickets)")]
    Expired {
        /// The lease.
        lease_id: LeaseId,
        /// How long ago, by this worker's view of the tracker's clock.
        ago_ms: u64,
    },
}

/// The worker's side: its tracker's public key, its own peer id, and its
/// view of the tracker's clock.
#[derive(Debug, Clone)]
pub struct TicketVerifier {
    public_key: Vec<u8>,
    peer_id: PeerId,
    /// The tracker's clock (ms) as last heard, and when it was heard here.
    clock: (u64, Instant),
}

impl TicketVerifier {
    /// A verifier for peer `peer_id` of the tracker with `public_key`,
    /// whose clock read `tracker_ms` when it answered, received `heard`.
    pub fn new(public_key: &[u8], peer_id: PeerId, tracker_ms: u64, heard: Instant) -> Self {
        Self { public_key: public_key.to_vec(), peer_id, clock: (tracker_ms, heard) }
    }

    /// The tracker's clock read `tracker_ms` at `heard` (a heartbeat reply).
    pub fn follow_clock(&mut self, tracker_ms: u64, heard: Instant) {
        self.clock = (tracker_ms, heard);
    }

    /// The tracker's clock now, as far as this worker can tell.
    pub fn tracker_now_ms(&self, now: Instant) -> u64 {
        self.clock.0.saturating_add(now.saturating_duration_since(self.clock.1).as_millis() as u64)
    }

    /// Checks `ticket` at `now`: the slots the lease holds on this worker.
    ///
    /// # Errors
    /// The [`TicketRefusal`] that says why it is not good here.
    pub fn check(&self, ticket: &LeaseTicket, now: Instant) -> Result<u32, TicketRefusal> {
        let msg = signed_bytes(ticket.lease_id, &ticket.peers, ticket.expires_ms);
        UnparsedPublicKey::new(&signature::ED25519, &self.public_key)
            .verify(&msg, &ticket.signature)
            .map_err(|_| TicketRefusal::BadSignature)?;
        let Some(&(_, slots)) = ticket.peers.iter().find(|(peer, _)| *peer == self.peer_id) else {
            return Err(TicketRefusal::OtherPeer { lease_id: ticket.lease_id, ours: self.peer_id });
        };
        let tracker_now = self.tracker_now_ms(now);
        let limit = ticket.expires_ms.saturating_add(EXPIRY_GRACE.as_millis() as u64);
        if tracker_now > limit {
            return Err(TicketRefusal::Expired { lease_id: ticket.lease_id, ago_ms: tracker_now - ticket.expires_ms });
        }
        Ok(slots)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ticket_verifies_only_unaltered_for_its_peer_under_its_trackers_key_until_it_expires() {
        let epoch = Instant::now();
        let tracker = TicketSigner::generate(epoch);
        let expires = epoch + Duration::from_secs(60);
        let ticket = tracker.sign(LeaseId(4), vec![(PeerId(1), 1), (PeerId(2), 2)], expires);
        assert_eq!(ticket.expires_ms, 60_000);
        let heard = epoch + Duration::from_secs(10);
        let worker = TicketVerifier::new(tracker.public_key(), PeerId(2), 10_000, heard);
        assert_eq!(worker.check(&ticket, heard), Ok(2));
        // Every signed field is covered.
        for altered in [
            LeaseTicket { lease_id: LeaseId(5), ..ticket.clone() },
            LeaseTicket { peers: vec![(PeerId(1), 1), (PeerId(2), 7)], ..ticket.clone() },
            LeaseTicket { peers: vec![(PeerId(2), 2)], ..ticket.clone() },
            LeaseTicket { expires_ms: 600_000, ..ticket.clone() },
            LeaseTicket { signature: vec![0; 64], ..ticket.clone() },
            LeaseTicket { signature: Vec::new(), ..ticket.clone() },
        ] {
            assert_eq!(worker.check(&altered, heard), Err(TicketRefusal::BadSignature), "{altered:?}");
        }
        // A lease of other peers, honestly signed.
        let theirs = tracker.sign(LeaseId(4), vec![(PeerId(3), 1)], expires);
        assert_eq!(
            worker.check(&theirs, heard),
            Err(TicketRefusal::OtherPeer { lease_id: LeaseId(4), ours: PeerId(2) })
        );
        // Another tracker's key (a restarted tracker, or an insider's own).
        let other = TicketSigner::generate(epoch);
        let forged = other.sign(LeaseId(4), vec![(PeerId(2), 1)], expires);
        assert_eq!(worker.check(&forged, heard), Err(TicketRefusal::BadSignature));
        // Expiry, by the worker's view of the tracker's clock: at the limit
        // still good, past it refused.
        let at_limit = heard + Duration::from_secs(50) + EXPIRY_GRACE;
        assert_eq!(worker.check(&ticket, at_limit), Ok(2));
        let late = at_limit + Duration::from_millis(5);
        assert_eq!(worker.check(&ticket, late), Err(TicketRefusal::Expired { lease_id: LeaseId(4), ago_ms: 1_005 }));
        // The worker's clock follows the tracker's heartbeats, not its own
        // wall clock: a tracker that says it is later makes tickets expire sooner.
        let mut worker = worker;
        worker.follow_clock(70_000, heard);
        assert!(matches!(worker.check(&ticket, heard), Err(TicketRefusal::Expired { .. })));
    }
}
