//! flightlog: a crash-safe ingest node. Change-data sources push row changes
//! over Arrow Flight `do_put` (the Seafowl sync protocol); flightlog makes them
//! durable in a segmented write-ahead log before it acknowledges, then flushes
//! them to Delta Lake tables exactly once. See `DESIGN.md` in the shared docs
//! and `wal-format.md` for the on-disk format.

pub mod admission;
pub mod config;
pub mod error;
pub mod failpoint;
pub mod flight;
pub mod flush;
pub mod identity;
pub mod lake;
pub mod node;
pub mod ops;
pub mod pending;
pub mod put;
pub mod record;
mod recovery;
pub mod replicate;
pub mod stored_types;
pub mod sync;
pub mod wal;

/// Generated protobuf messages of the sync protocol (`proto/`).
pub mod proto {
    #![allow(clippy::all, unreachable_pub, missing_docs)]
    pub mod schema {
        include!(concat!(env!("OUT_DIR"), "/clade.schema.rs"));
    }
    pub mod sync {
        include!(concat!(env!("OUT_DIR"), "/clade.sync.rs"));
    }
    /// Control frames of the WAL (checkpoint, abort).
    pub mod wal {
        include!(concat!(env!("OUT_DIR"), "/flightlog.wal.rs"));
    }
}
