//! The Delta Lake adapter: the only code that talks to `deltalake`. Creates
//! tables, evolves their schema, merges squashed changes by primary key and
//! commits each flush exactly once (a `txn` action records the WAL watermark).
