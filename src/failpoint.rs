//! Crash points for tests: `FLIGHTLOG_FAILPOINT=<name>` makes the process
//! abort (no destructors, no buffered writes, like a power cut for the
//! process) the first time execution reaches the named point. Unset in
//! production: one relaxed load per point.

use std::sync::OnceLock;

/// Names of the crash points, for tests and docs.
pub const POINTS: &[&str] = &[
    "flush-after-parquet-write",
    "flush-after-commit",
    "flush-after-truncate",
];

fn armed() -> Option<&'static str> {
    static ARMED: OnceLock<Option<String>> = OnceLock::new();
    ARMED
        .get_or_init(|| std::env::var("FLIGHTLOG_FAILPOINT").ok())
        .as_deref()
}

/// Aborts the process if `name` is the armed crash point.
pub fn hit(name: &str) {
    if armed() == Some(name) {
        eprintln!("flightlog: crash point {name} reached, aborting");
        std::process::abort();
    }
}
