//! The Delta Lake adapter: the only code that talks to `deltalake`. Creates
//! tables, evolves their schema, merges squashed changes by primary key and
//! commits each flush exactly once (a `txn` action records the WAL watermark).
//!
//! Flow of one flush ([`apply`]): load the table (or create it from the
//! flush's columns), stop if its txn marker for this WAL is already at the
//! flush's Lsn, plan the schema (add missing value columns, reject type
//! conflicts), pick the data files whose key statistics may hold an affected
//! key, stream them through the key filter while collecting the pre-flush rows
//! that upserts fill from, write kept rows plus upserts as new Parquet files,
//! and commit `remove(old) + add(new) + [metadata] + txn` as one version.
//! With no file to rewrite the commit is a plain append.
//!
//! Every table is named by a [`TableId`](crate::identity::TableId); its
//! exactly-once marker is a txn action whose `appId` names the WAL and the
//! table and whose version is the commit Lsn of the last transaction applied.
//!
//! Not supported (typed errors, never silent, checked at admission and before
//! each flush by [`check_writable`]): partitioned tables, column mapping,
//! deletion vectors, change data feed, append-only tables, invariants, check
//! constraints, generated and identity columns, unknown writer features.
//!
//! `faults` (only with the `test-seams` feature, which the test suite turns
//! on) is a fault-injecting object store behind `memory://faulty-*` roots.

mod apply;
mod error;
#[cfg(feature = "test-seams")]
pub mod faults;
mod features;
mod location;
pub mod maintenance;
mod merge;
mod prune;
mod table;

pub use apply::{apply, apply_to, ApplyOutcome, CommitMarker};
pub use error::{store_is_retryable, LakeError};
pub use features::{check_writable, probe_store};
pub use location::sync_local_store;
pub use merge::delta_arrow_type;
pub use table::{load_state, read_table, TableState};

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests;
