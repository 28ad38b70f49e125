//! Errors of the Delta adapter, split by what the caller should do about them
//! ([`LakeError::is_retryable`]).

use arrow::datatypes::DataType;
use arrow::error::ArrowError;
use deltalake::kernel::transaction::TransactionError;
use deltalake::DeltaTableError;
use parquet::errors::ParquetError;

/// Everything that can go wrong between a [`Squashed`](crate::sync::changes::Squashed)
/// and a committed Delta version.
#[derive(Debug, thiserror::Error)]
pub enum LakeError {
    /// A flushed column has a type the table does not (should have been
    /// rejected at put time).
    #[error("column {column:?} has type {flush_type} in the flush but {table_type} in the table")]
    TypeConflict {
        column: String,
        table_type: DataType,
        flush_type: DataType,
    },

    /// A key column of the flush does not exist in the table; key columns are
    /// never added by schema evolution.
    #[error("key column {column:?} is missing from the table")]
    KeyColumnMissing { column: String },

    /// A column type has no Delta equivalent.
    #[error("column {column:?} of type {data_type} cannot be stored in Delta")]
    UnsupportedType {
        column: String,
        data_type: DataType,
        #[source]
        source: ArrowError,
    },

    /// The table uses a Delta feature this writer cannot preserve when it
    /// rewrites files.
    #[error("table {table} is not supported: {reason}")]
    UnsupportedTable { table: String, reason: &'static str },

    /// The table uses a Delta feature or property this writer cannot keep
    /// correct (see `lake::features`).
    #[error("table {table} cannot be written by flightlog: {reason}")]
    UnsupportedFeature { table: String, reason: String },

    /// An object store operation of a probe failed.
    #[error("store of table {table}: cannot {operation}: {source}")]
    Store {
        operation: &'static str,
        table: String,
        #[source]
        source: object_store::Error,
    },

    /// The squashed input breaks its own contract (a bug upstream).
    #[error("squashed changes violate their contract: {reason}")]
    InvalidSquashed { reason: &'static str },

    /// The marker Lsn does not fit Delta's signed 64-bit txn version.
    #[error("lsn {lsn} does not fit a Delta txn version (i64)")]
    LsnOutOfRange { lsn: u64 },

    /// The table log holds a txn version that no flightlog commit writes.
    #[error("txn {app_id:?} has version {version}, which is not a valid lsn")]
    InvalidMarker { app_id: String, version: i64 },

    /// A delta-rs operation failed; see [`LakeError::is_retryable`].
    #[error("delta {operation} failed on {table}: {source}")]
    Delta {
        operation: &'static str,
        table: String,
        // Boxed: DeltaTableError is large and every Result here carries it.
        #[source]
        source: Box<DeltaTableError>,
    },

    /// Reading or writing a Parquet data file failed.
    #[error("parquet {operation} failed on {path}: {source}")]
    Parquet {
        operation: &'static str,
        path: String,
        #[source]
        source: ParquetError,
    },

    /// An Arrow kernel failed while merging rows.
    #[error("arrow {operation} failed: {source}")]
    Arrow {
        operation: &'static str,
        #[source]
        source: ArrowError,
    },
}

impl LakeError {
    /// True when the same call may succeed later after reloading the table:
    /// object store and network failures, and commit conflicts with a
    /// concurrent writer. False for bad input and unsupported tables, which
    /// fail the same way every time.
    pub fn is_retryable(&self) -> bool {
        match self {
            LakeError::Delta { source, .. } => delta_is_retryable(source),
            LakeError::Parquet { source, .. } => {
                matches!(source, ParquetError::External(_) | ParquetError::EOF(_))
            }
            LakeError::Store { source, .. } => store_is_retryable(source),
            LakeError::UnsupportedFeature { .. }
            | LakeError::TypeConflict { .. }
            | LakeError::KeyColumnMissing { .. }
            | LakeError::UnsupportedType { .. }
            | LakeError::UnsupportedTable { .. }
            | LakeError::InvalidSquashed { .. }
            | LakeError::LsnOutOfRange { .. }
            | LakeError::InvalidMarker { .. }
            | LakeError::Arrow { .. } => false,
        }
    }

    pub(crate) fn delta(
        operation: &'static str,
        table: &url::Url,
        source: DeltaTableError,
    ) -> Self {
        LakeError::Delta {
            operation,
            table: table.to_string(),
            source: Box::new(source),
        }
    }

    pub(crate) fn arrow(operation: &'static str) -> impl FnOnce(ArrowError) -> Self {
        move |source| LakeError::Arrow { operation, source }
    }
}

/// Storage and concurrency failures are transient; everything else describes
/// the table or the request and repeats on retry.
fn delta_is_retryable(error: &DeltaTableError) -> bool {
    if source_chain_has_refusal(error) {
        return false;
    }
    match error {
        DeltaTableError::ObjectStore { .. }
        | DeltaTableError::Io { .. }
        | DeltaTableError::VersionAlreadyExists(_)
        | DeltaTableError::VersionMismatch(..) => true,
        DeltaTableError::Transaction { source } => matches!(
            source,
            TransactionError::VersionAlreadyExists(_)
                | TransactionError::ObjectStore { .. }
                | TransactionError::CommitConflict(_)
                | TransactionError::MaxCommitAttempts(_)
                | TransactionError::LogStoreError { .. }
        ),
        DeltaTableError::Parquet { source } => {
            matches!(source, ParquetError::External(_) | ParquetError::EOF(_))
        }
        other => source_chain_has_io(other),
    }
}

/// An object store that refuses the credentials or the operation answers the
/// same way on every retry.
pub fn store_is_retryable(error: &object_store::Error) -> bool {
    !matches!(
        error,
        object_store::Error::PermissionDenied { .. }
            | object_store::Error::Unauthenticated { .. }
            | object_store::Error::NotSupported { .. }
            | object_store::Error::UnknownConfigurationKey { .. }
    )
}

/// Whether a refusal by the object store (credentials, permissions) is
/// anywhere in the error's chain.
fn source_chain_has_refusal(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut next: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(cause) = next {
        if let Some(store) = cause.downcast_ref::<object_store::Error>() {
            if !store_is_retryable(store) {
                return true;
            }
        }
        next = cause.source();
    }
    false
}

/// Kernel and generic errors wrap storage failures several layers deep; a
/// storage or I/O error anywhere in the chain makes the failure transient.
fn source_chain_has_io(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = error.source();
    while let Some(cause) = next {
        if cause.is::<object_store::Error>() || cause.is::<std::io::Error>() {
            return true;
        }
        next = cause.source();
    }
    false
}
