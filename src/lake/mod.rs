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
//! Not supported (typed errors, never silent): partitioned tables, column
//! mapping, deletion vectors on files that must be rewritten.
//!
//! [`faults`] is a test seam: a fault-injecting object store behind
//! `memory://faulty-*` roots.

mod apply;
mod error;
pub mod faults;
mod location;
mod merge;
mod prune;
mod table;

pub use apply::{apply, apply_to, ApplyOutcome, CommitMarker};
pub use error::LakeError;
pub use location::{sync_local_store, table_location, TableLocation};
pub use merge::delta_arrow_type;
pub use table::{load_state, read_table, TableState};

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests;
