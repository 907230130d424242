//! The worker's door: lease tickets checked before any work (see
//! `septet_common::ticket`), and each lease held to the slots its ticket
//! names.
//!
//! A worker registered with a tracker serves a connection only after its
//! first frame, a [`WorkerRequest::Ticket`](septet_common::WorkerRequest),
//! presents a ticket for this worker that its tracker signed and that has
//! not expired. Then each task (or relayed job) of that lease waits for one
//! of the lease's slots here — as many as its newest ticket names — before
//! it waits for one of the worker's own. A worker started without a
//! tracker (benchmarks, tests) has no tracker to trust and checks nothing.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use parking_lot::{Mutex, RwLock};
use septet_common::proto::{LeaseId, LeaseTicket};
use septet_common::ticket::{TicketRefusal, TicketVerifier};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The slots of one lease on this worker.
#[derive(Debug)]
struct LeaseSlots {
    semaphore: Arc<Semaphore>,
    /// The most slots any of its tickets named.
    slots: u32,
    /// Its newest expiry (tracker clock), for forgetting it.
    expires_ms: u64,
}

/// Checks tickets and counts each lease's slots.
#[derive(Debug, Default)]
pub struct Gate {
    /// Whether tickets are required (the worker has a tracker).
    required: bool,
    /// Set once registered; replaced on each registration.
    verifier: RwLock<Option<TicketVerifier>>,
    leases: Mutex<HashMap<LeaseId, LeaseSlots>>,
}

/// What an admitted connection works under (the default: nothing counted).
#[derive(Debug, Clone, Default)]
pub struct Admission {
    /// The lease's slots here; `None` without a tracker (nothing to count).
    lease: Option<Arc<Semaphore>>,
}

impl Admission {
    /// Waits for one of the lease's slots (at once without a tracker).
    pub async fn slot(&self) -> Option<OwnedSemaphorePermit> {
        match &self.lease {
            Some(s) => s.clone().acquire_owned().await.ok(),
            None => None,
        }
    }
}

impl Gate {
    /// A gate that requires tickets when `required` (the worker has a tracker).
    pub fn new(required: bool) -> Self {
        Self { required, ..Self::default() }
    }

    /// Whether tickets are required.
    pub fn required(&self) -> bool {
        self.required
    }

    /// Registered: tickets are checked with this from now on.
    pub fn registered(&self, verifier: TicketVerifier) {
        *self.verifier.write() = Some(verifier);
    }

    /// The tracker's clock read `tracker_ms` just now (a heartbeat reply).
    pub fn follow_clock(&self, tracker_ms: u64) {
        if let Some(v) = self.verifier.write().as_mut() {
            v.follow_clock(tracker_ms, Instant::now());
        }
    }

    /// Admits a connection without a ticket: only when none is required.
    ///
    /// # Errors
    /// [`TicketRefusal::Missing`] when one is.
    pub fn without_ticket(&self) -> Result<Admission, TicketRefusal> {
        if self.required {
            return Err(TicketRefusal::Missing);
        }
        Ok(Admission { lease: None })
    }

    /// Admits a connection presenting `ticket`.
    ///
    /// # Errors
    /// The [`TicketRefusal`] saying why not.
    pub fn admit(&self, ticket: &LeaseTicket) -> Result<Admission, TicketRefusal> {
        if !self.required {
            return Ok(Admission { lease: None });
        }
        let now = Instant::now();
        let (slots, tracker_now) = {
            let verifier = self.verifier.read();
            let verifier = verifier.as_ref().ok_or(TicketRefusal::NotRegistered)?;
            (verifier.check(ticket, now)?, verifier.tracker_now_ms(now))
        };
        let mut leases = self.leases.lock();
        // Forget leases past their expiry with nothing running.
        leases.retain(|_, l| {
            l.expires_ms.saturating_add(60_000) > tracker_now || l.semaphore.available_permits() < l.slots as usize
        });
        let slots = slots.clamp(1, 1024);
        let lease = leases.entry(ticket.lease_id).or_insert_with(|| LeaseSlots {
            semaphore: Arc::new(Semaphore::new(slots as usize)),
            slots,
            expires_ms: ticket.expires_ms,
        });
        if slots > lease.slots {
            lease.semaphore.add_permits((slots - lease.slots) as usize);
            lease.slots = slots;
        }
        lease.expires_ms = lease.expires_ms.max(ticket.expires_ms);
        Ok(Admission { lease: Some(lease.semaphore.clone()) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use septet_common::proto::PeerId;
    use septet_common::ticket::TicketSigner;
    use std::time::Duration;

    #[tokio::test]
    async fn a_lease_runs_at_most_as_many_tasks_as_its_newest_ticket_names() {
        let epoch = Instant::now();
        let tracker = TicketSigner::generate(epoch);
        let gate = Gate::new(true);
        let later = epoch + Duration::from_secs(60);
        let one = tracker.sign(LeaseId(1), vec![(PeerId(0), 1), (PeerId(5), 1)], later);
        assert_eq!(gate.admit(&one).unwrap_err(), TicketRefusal::NotRegistered);
        assert_eq!(gate.without_ticket().unwrap_err(), TicketRefusal::Missing);
        gate.registered(TicketVerifier::new(tracker.public_key(), PeerId(0), 0, epoch));
        let a = gate.admit(&one).unwrap();
        let held = a.slot().await.unwrap();
        // A second task of the same lease waits for the first...
        let b = gate.admit(&one).unwrap();
        assert!(tokio::time::timeout(Duration::from_millis(20), b.slot()).await.is_err());
        // ...unless a newer ticket gives the lease a second slot here.
        let two = tracker.sign(LeaseId(1), vec![(PeerId(0), 2), (PeerId(5), 1)], later);
        let c = gate.admit(&two).unwrap();
        let _second = c.slot().await.unwrap();
        // Another lease has its own slots.
        let other = gate.admit(&tracker.sign(LeaseId(2), vec![(PeerId(0), 1)], later)).unwrap();
        let _third = other.slot().await.unwrap();
        drop(held);
        assert!(b.slot().await.is_some());
        // Without a tracker nothing is checked or counted.
        let open = Gate::new(false);
        assert!(open.without_ticket().unwrap().slot().await.is_none());
    }
}
