//! Protocol semantics: what a `DataSyncCommand` means. Column roles and their
//! validation, per-origin transactions and sequence numbers, and the squash of
//! a table's pending changes into one final change per key.

pub mod changes;
pub mod layout;
pub mod origins;
pub mod squash;
