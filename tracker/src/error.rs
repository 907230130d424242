//! Errors of the tracker crate.

use septet_common::{ErrorCode, LeaseId, PeerId};

/// Result alias for the tracker crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Every way a tracker operation can fail.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No peer has this id.
    #[error("no peer with id {0}")]
    UnknownPeer(PeerId),
    /// The peer was marked gone and must register again.
    #[error("peer {0} was marked gone; register again")]
    PeerGone(PeerId),
    /// No live lease has this id (released, expired, or never issued).
    #[error("no live lease with id {0} (released, expired or never issued)")]
    UnknownLease(LeaseId),
    /// The peer is not part of the lease.
    #[error("peer {peer_id} is not part of lease {lease_id}")]
    NotInLease {
        /// The lease.
        lease_id: LeaseId,
        /// The peer.
        peer_id: PeerId,
    },
    /// A renew, release or failure report from neither the connection that
    /// took the lease nor one presenting its token. Worded alike whether or
    /// not the lease exists, so a refusal never reveals which.
    #[error(
        "lease {0} is not yours or does not exist (only the connection that took it, or one presenting its token, \
         may renew, release or report against it)"
    )]
    NotYourLease(LeaseId),
    /// A heartbeat or deregistration for a peer registered by another
    /// connection.
    #[error("peer {0} was registered by another connection; only that connection may heartbeat or deregister it")]
    NotYourPeer(PeerId),
    /// A request argument is out of range.
    #[error("invalid request: {0}")]
    Invalid(String),
    /// The configuration is inconsistent.
    #[error("invalid tracker configuration: {0}")]
    Config(String),
    /// A polars operation on the peer table failed (a bug, not bad input).
    #[error("peer table error: {0}")]
    Table(#[from] polars::prelude::PolarsError),
    /// A bug inside the tracker (a failed table update, a panic), reported
    /// to the requests it touched.
    #[error("internal tracker error: {0}")]
    Internal(String),
    /// A protocol or socket error.
    #[error(transparent)]
    Protocol(#[from] septet_common::Error),
    /// Binding or accepting failed.
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
}

impl Error {
    /// The wire code for an `Error` frame.
    pub fn code(&self) -> ErrorCode {
        match self {
            Error::UnknownPeer(_) => ErrorCode::UnknownPeer,
            Error::PeerGone(_) => ErrorCode::PeerGone,
            Error::UnknownLease(_) => ErrorCode::UnknownLease,
            Error::NotYourLease(_) | Error::NotYourPeer(_) => ErrorCode::Unauthorized,
            Error::NotInLease { .. } | Error::Invalid(_) => ErrorCode::InvalidRequest,
            Error::Protocol(e) => e.code(),
            Error::Config(_) | Error::Table(_) | Error::Internal(_) | Error::Io(_) => ErrorCode::Internal,
        }
    }
}
