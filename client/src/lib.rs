//! The septet client side: [`Requester`] multiplies A·B on the grid (it
//! leases peers from the tracker, plans and drives the job, and verifies
//! everything the peers send back), and [`TrackerClient`] speaks to the
//! tracker for requesters and workers alike. A client is not a worker: the
//! compute server and its agent live in `septet-worker`, which uses
//! [`TrackerClient`] to stay registered.

pub mod dialback;
pub mod requester;
pub mod store;
pub mod tracker;
pub mod verify;

pub use requester::{HeldLease, JobReport, Plan, Progress, RequestError, Requester, RequesterConfig, AUTO_DEPTH2_MIN};
pub use store::Store;
pub use tracker::{Registration, TrackerClient, DEFAULT_REQUEST_TIMEOUT};
