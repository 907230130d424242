//! The error enum shared by every septet crate, and the wire codes that let
//! an `Error` frame be turned back into a typed error on the other side.

use serde::{Deserialize, Serialize};

/// Result alias for this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A failure code carried in an `Error` frame. The numeric values are part of
/// the protocol: never renumber, only append.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[repr(u16)]
pub enum ErrorCode {
    /// The peer sent bytes that do not form a valid frame.
    BadFrame = 1,
    /// A frame declared a length above the receiver's maximum.
    FrameTooLarge = 2,
    /// The hello carried a protocol version the receiver does not speak.
    VersionMismatch = 3,
    /// The frame decoded, but the message is not one this server handles.
    UnexpectedMessage = 4,
    /// A peer id the tracker does not know.
    UnknownPeer = 5,
    /// The peer was marked gone; it must register again.
    PeerGone = 6,
    /// A lease id the tracker does not know (released, expired or never issued).
    UnknownLease = 7,
    /// The request is well-formed but its arguments are not acceptable.
    InvalidRequest = 8,
    /// The operands of a product do not have compatible shapes.
    ShapeMismatch = 9,
    /// The server is shutting down.
    ShuttingDown = 10,
    /// Something failed inside the server that is not the client's fault.
    Internal = 11,
    /// No peer could be found in time.
    Unavailable = 12,
    /// The peer failed the handshake (wrong or missing secret, encryption mismatch).
    Unauthorized = 13,
}

/// Every way a septet operation can fail.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The socket failed.
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
    /// A frame declared more bytes than the receiver accepts. Nothing was
    /// allocated for it.
    #[error("frame of {len} bytes exceeds the maximum of {max} bytes")]
    FrameTooLarge {
        /// Declared length.
        len: u64,
        /// Receiver's maximum.
        max: u64,
    },
    /// The bytes received do not form a valid frame.
    #[error("malformed frame: {0}")]
    BadFrame(String),
    /// A control message could not be decoded (unknown kind, truncated fields).
    #[error("could not decode message: {0}")]
    Decode(#[from] bincode::error::DecodeError),
    /// A control message could not be encoded.
    #[error("could not encode message: {0}")]
    Encode(#[from] bincode::error::EncodeError),
    /// The two sides speak different protocol versions.
    #[error("protocol version mismatch: this side speaks v{ours}, the peer speaks v{theirs}")]
    VersionMismatch {
        /// Our version.
        ours: u32,
        /// The peer's version.
        theirs: u32,
    },
    /// The peer closed the connection after sending part of a frame.
    #[error("connection closed in the middle of a frame")]
    ClosedMidFrame,
    /// The peer closed the connection where a reply was expected.
    #[error("connection closed by the peer while waiting for {0}")]
    Closed(&'static str),
    /// A deadline passed.
    #[error("timed out after {after:?} waiting for {what}")]
    Timeout {
        /// What was being waited for.
        what: &'static str,
        /// How long we waited.
        after: std::time::Duration,
    },
    /// The peer sent a valid message that makes no sense at this point.
    #[error("unexpected message: expected {expected}, got {got}")]
    Unexpected {
        /// What we were waiting for.
        expected: &'static str,
        /// What arrived.
        got: String,
    },
    /// The other side answered with an `Error` frame.
    #[error("{message} (remote error {code:?})")]
    Remote {
        /// The failure code.
        code: ErrorCode,
        /// The remote side's explanation.
        message: String,
    },
    /// The operands of a product have incompatible shapes.
    #[error("shape mismatch: cannot multiply {left:?} by {right:?} (inner dimensions differ)")]
    ShapeMismatch {
        /// Shape (rows, cols) of the left operand.
        left: (usize, usize),
        /// Shape (rows, cols) of the right operand.
        right: (usize, usize),
    },
    /// The operands have different element types.
    #[error("dtype mismatch: {left} and {right}")]
    DtypeMismatch {
        /// Left operand's dtype.
        left: crate::Dtype,
        /// Right operand's dtype.
        right: crate::Dtype,
    },
    /// An argument is out of range.
    #[error("invalid argument: {0}")]
    Invalid(String),
    /// The handshake failed; `peer` names the other side ("the tracker at
    /// ADDR"), `failure` says why, from this side's point of view.
    #[error("{peer} {failure}")]
    Handshake {
        /// Who the other side is.
        peer: String,
        /// Why the handshake failed.
        failure: crate::secure::HandshakeFailure,
    },
    /// A returned product failed Freivalds' check.
    #[error("the product failed verification: {0}")]
    Verification(String),
}

impl Error {
    /// The wire code that best describes this error, for an `Error` frame.
    pub fn code(&self) -> ErrorCode {
        match self {
            Error::FrameTooLarge { .. } => ErrorCode::FrameTooLarge,
            Error::BadFrame(_) | Error::Decode(_) | Error::ClosedMidFrame => ErrorCode::BadFrame,
            Error::VersionMismatch { .. } => ErrorCode::VersionMismatch,
            Error::Unexpected { .. } => ErrorCode::UnexpectedMessage,
            Error::Remote { code, .. } => *code,
            Error::ShapeMismatch { .. } | Error::DtypeMismatch { .. } => ErrorCode::ShapeMismatch,
            Error::Invalid(_) | Error::Verification(_) => ErrorCode::InvalidRequest,
            Error::Timeout { .. } => ErrorCode::Unavailable,
            Error::Handshake { .. } => ErrorCode::Unauthorized,
            Error::Io(_) | Error::Encode(_) | Error::Closed(_) => ErrorCode::Internal,
        }
    }

    /// Renames the other side of a handshake error ("the tracker at ADDR"
    /// instead of "the server at ADDR"); other errors pass unchanged.
    pub fn naming(self, peer: impl FnOnce() -> String) -> Error {
        match self {
            Error::Handshake { failure, .. } => Error::Handshake { peer: peer(), failure },
            other => other,
        }
    }

    /// True when the error came from the peer's side of the protocol rather
    /// than from our socket: the connection itself may still be usable.
    pub fn is_remote(&self) -> bool {
        matches!(self, Error::Remote { .. })
    }
}
