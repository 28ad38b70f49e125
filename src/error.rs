//! The node's errors: structured variants for the put path, a small set of
//! kinds a client can act on, and the one exhaustive map to `tonic::Status`.

use crate::sync::layout::LayoutError;
use crate::wal::WalError;

/// What a client can do about an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The request is wrong; resending it unchanged fails again.
    InvalidInput,
    /// The request asks for something not built (e.g. Iceberg).
    Unimplemented,
    /// The request names a store it may not use.
    PermissionDenied,
    /// Temporary: retry later (I/O trouble, overload of a kind that has no
    /// `accepted = false` answer).
    Unavailable,
    /// Stored data is damaged; an operator must look.
    DataCorruption,
    /// The node is shutting down or its WAL has failed.
    Closed,
    /// The client went quiet mid-request.
    Timeout,
    /// A bug.
    Internal,
}

/// Everything the put path can refuse or fail with.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("{field}: {problem}")]
    InvalidCommand {
        field: &'static str,
        problem: String,
    },
    #[error("column_descriptors: {0}")]
    Layout(#[from] LayoutError),
    #[error("record batch {batch}: {problem}")]
    Batch { batch: usize, problem: String },
    #[error("format: {format} tables are not supported (only DELTA)")]
    UnsupportedFormat { format: String },
    #[error("store.location {location:?} is not under any --allow-store prefix ({allowed})")]
    StoreNotAllowed { location: String, allowed: String },
    #[error("arrow stream: {0}")]
    Arrow(String),
    #[error("message exceeds the limit of {limit} bytes (message_bytes_max); split the transaction into more messages")]
    MessageTooLarge { limit: u64 },
    #[error("transaction of origin {origin:?} holds {bytes} bytes, more than the WAL high watermark of {limit} bytes; it can never be accepted: split it")]
    TransactionTooLarge {
        origin: String,
        bytes: u64,
        limit: u64,
    },
    #[error("sequence_number: message with zero rows closes a transaction, but origin {origin:?} has none open")]
    NothingToClose { origin: String },
    #[error(transparent)]
    Wal(#[from] WalError),
    #[error("table store: {0}")]
    Lake(String),
    #[error("the node is shutting down")]
    ShuttingDown,
    #[error("no message arrived for {ms} ms (put_idle_timeout_ms); the put was abandoned, nothing of it is kept")]
    Idle { ms: u64 },
}

impl NodeError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            NodeError::InvalidCommand { .. }
            | NodeError::Layout(_)
            | NodeError::Batch { .. }
            | NodeError::Arrow(_)
            | NodeError::MessageTooLarge { .. }
            | NodeError::TransactionTooLarge { .. }
            | NodeError::NothingToClose { .. } => ErrorKind::InvalidInput,
            NodeError::UnsupportedFormat { .. } => ErrorKind::Unimplemented,
            NodeError::StoreNotAllowed { .. } => ErrorKind::PermissionDenied,
            NodeError::Lake(_) => ErrorKind::Unavailable,
            NodeError::ShuttingDown => ErrorKind::Closed,
            NodeError::Idle { .. } => ErrorKind::Timeout,
            NodeError::Wal(error) => wal_kind(error),
        }
    }
}

fn wal_kind(error: &WalError) -> ErrorKind {
    match error {
        WalError::Io { .. } | WalError::NoSpace { .. } => ErrorKind::Unavailable,
        WalError::FrameTooLarge { .. } => ErrorKind::InvalidInput,
        WalError::Corrupted { .. }
        | WalError::UnsupportedVersion { .. }
        | WalError::MissingSegment { .. } => ErrorKind::DataCorruption,
        WalError::Failed { .. } | WalError::Closed | WalError::Locked { .. } => ErrorKind::Closed,
    }
}

impl From<NodeError> for tonic::Status {
    fn from(error: NodeError) -> tonic::Status {
        let message = error.to_string();
        match error.kind() {
            ErrorKind::InvalidInput => tonic::Status::invalid_argument(message),
            ErrorKind::Unimplemented => tonic::Status::unimplemented(message),
            ErrorKind::PermissionDenied => tonic::Status::permission_denied(message),
            ErrorKind::Unavailable => tonic::Status::unavailable(message),
            ErrorKind::DataCorruption => tonic::Status::data_loss(message),
            ErrorKind::Closed => tonic::Status::unavailable(message),
            ErrorKind::Timeout => tonic::Status::deadline_exceeded(message),
            ErrorKind::Internal => tonic::Status::internal(message),
        }
    }
}
