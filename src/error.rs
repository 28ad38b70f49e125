//! The node's errors: structured variants for the put path, a small set of
//! kinds a client can act on, and the one exhaustive map to `tonic::Status`.

use std::time::Duration;

use crate::identity::IdentityError;
use crate::lake::LakeError;
use crate::record::RecordError;
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
    /// The target cannot take writes until an operator acts (quarantine).
    FailedPrecondition,
    /// Temporary: retry later (I/O trouble, a store that does not answer).
    Unavailable,
    /// Stored data is damaged; an operator must look.
    DataCorruption,
    /// The node is shutting down or its WAL has failed.
    Closed,
    /// The client went quiet mid-request.
    Timeout,
    /// The client cancelled the call (or its deadline passed).
    Cancelled,
    /// A bug.
    Internal,
}

/// Why a table's store cannot take the table: a rule, an I/O error, the
/// lake adapter's verdict, or no answer in time.
#[derive(Debug, thiserror::Error)]
pub enum StoreProblem {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Lake(#[from] LakeError),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
}

/// Everything the put path can refuse or fail with.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("{field}: {problem}")]
    InvalidCommand {
        field: &'static str,
        problem: String,
    },
    #[error(transparent)]
    Identity(#[from] IdentityError),
    #[error("column_descriptors: {0}")]
    Layout(#[from] Box<LayoutError>),
    #[error("record batch {batch}: {problem}")]
    Batch { batch: usize, problem: String },
    #[error("format: {format} tables are not supported (only DELTA)")]
    UnsupportedFormat { format: String },
    #[error("store.location {location:?} is not under any --allow-store prefix ({allowed})")]
    StoreNotAllowed { location: String, allowed: String },
    #[error("store.location {location:?}: this token may only write under {allowed}")]
    TokenStoreNotAllowed { location: String, allowed: String },
    #[error("store.location {location:?}: memory stores do not outlive the process, so acknowledged rows would be lost at exit; the node takes them only with --allow-memory-store")]
    MemoryStoreRefused { location: String },
    #[error("{field}: table {table}: {what}: {problem}")]
    Unwritable {
        field: &'static str,
        table: String,
        what: String,
        #[source]
        problem: Box<StoreProblem>,
    },
    #[error("table {table} is quarantined after repeated flush failures ({reason}); its pending changes are kept in the WAL, new ones are refused until an operator acts (see the README)")]
    Quarantined { table: String, reason: String },
    #[error("arrow stream: {0}")]
    Stream(String),
    #[error("arrow stream: {0}")]
    Arrow(#[from] arrow::error::ArrowError),
    #[error("message exceeds the limit of {limit} bytes (--message-bytes-max, message_bytes_max in the config file); split the transaction into more messages")]
    MessageTooLarge { limit: u64 },
    #[error("record batch {batch}: a single row takes {bytes} bytes encoded, more than a WAL frame holds ({limit} bytes: twice --frame-bytes-target, at most 1 GiB)")]
    RowTooLarge {
        batch: usize,
        bytes: u64,
        limit: u64,
    },
    #[error("transaction of origin {origin:?} holds {bytes} bytes, more than the WAL high watermark of {limit} bytes (--pending-bytes-high-watermark); it can never be accepted: split it")]
    TransactionTooLarge {
        origin: String,
        bytes: u64,
        limit: u64,
    },
    #[error(transparent)]
    Wal(#[from] WalError),
    #[error("encoding a WAL frame: {0}")]
    Record(#[from] RecordError),
    #[error("the node is shutting down")]
    ShuttingDown,
    #[error("no message arrived for {ms} ms (--put-idle-timeout-ms, put_idle_timeout_ms in the config file); the put was abandoned, nothing of it is kept")]
    Idle { ms: u64 },
    #[error("the client cancelled the call or its deadline passed before the stream ended; nothing of this message is kept")]
    Cancelled,
}

impl NodeError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            NodeError::InvalidCommand { .. }
            | NodeError::Identity(_)
            | NodeError::Layout(_)
            | NodeError::Batch { .. }
            | NodeError::Stream(_)
            | NodeError::Arrow(_)
            | NodeError::MessageTooLarge { .. }
            | NodeError::RowTooLarge { .. }
            | NodeError::TransactionTooLarge { .. } => ErrorKind::InvalidInput,
            NodeError::UnsupportedFormat { .. } => ErrorKind::Unimplemented,
            NodeError::StoreNotAllowed { .. }
            | NodeError::TokenStoreNotAllowed { .. }
            | NodeError::MemoryStoreRefused { .. } => ErrorKind::PermissionDenied,
            NodeError::Unwritable { problem, .. } => store_problem_kind(problem),
            NodeError::Quarantined { .. } => ErrorKind::FailedPrecondition,
            NodeError::ShuttingDown => ErrorKind::Closed,
            NodeError::Idle { .. } => ErrorKind::Timeout,
            NodeError::Cancelled => ErrorKind::Cancelled,
            NodeError::Record(_) => ErrorKind::Internal,
            NodeError::Wal(error) => wal_kind(error),
        }
    }
}

fn store_problem_kind(problem: &StoreProblem) -> ErrorKind {
    use std::io::ErrorKind as Io;
    match problem {
        StoreProblem::Io(error) => match error.kind() {
            Io::PermissionDenied | Io::ReadOnlyFilesystem => ErrorKind::PermissionDenied,
            Io::StorageFull | Io::QuotaExceeded | Io::TimedOut | Io::Interrupted => {
                ErrorKind::Unavailable
            }
            _ => ErrorKind::InvalidInput,
        },
        StoreProblem::Lake(LakeError::Store { source, .. })
            if !crate::lake::store_is_retryable(source) =>
        {
            ErrorKind::PermissionDenied
        }
        StoreProblem::Lake(error) if error.is_retryable() => ErrorKind::Unavailable,
        StoreProblem::Lake(_) => ErrorKind::InvalidInput,
        StoreProblem::Timeout(_) => ErrorKind::Unavailable,
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

/// Longest error message sent to a client, in bytes. Messages quote what
/// the client sent; a megabyte column name must not become a megabyte
/// `grpc-message` trailer, which clients refuse as a protocol error.
pub const MESSAGE_BYTES_MAX: usize = 4096;

/// `message` cut at a character boundary to [`MESSAGE_BYTES_MAX`].
fn bounded_message(mut message: String) -> String {
    if message.len() > MESSAGE_BYTES_MAX {
        let mut end = MESSAGE_BYTES_MAX - 32;
        while !message.is_char_boundary(end) {
            end -= 1;
        }
        let total = message.len();
        message.truncate(end);
        message.push_str(&format!("... ({total} bytes in all)"));
    }
    message
}

impl From<NodeError> for tonic::Status {
    fn from(error: NodeError) -> tonic::Status {
        let message = bounded_message(error.to_string());
        match error.kind() {
            ErrorKind::InvalidInput => tonic::Status::invalid_argument(message),
            ErrorKind::Unimplemented => tonic::Status::unimplemented(message),
            ErrorKind::PermissionDenied => tonic::Status::permission_denied(message),
            ErrorKind::FailedPrecondition => tonic::Status::failed_precondition(message),
            ErrorKind::Unavailable => tonic::Status::unavailable(message),
            ErrorKind::DataCorruption => tonic::Status::data_loss(message),
            ErrorKind::Closed => tonic::Status::unavailable(message),
            ErrorKind::Timeout => tonic::Status::deadline_exceeded(message),
            ErrorKind::Cancelled => tonic::Status::cancelled(message),
            ErrorKind::Internal => tonic::Status::internal(message),
        }
    }
}
