//! Crash points for tests: `FLIGHTLOG_FAILPOINT=<name>` makes the process
//! abort (no destructors, no buffered writes, like a power cut for the
//! process) the first time execution reaches the named point. Only in builds
//! with the `test-seams` feature (the test suite); elsewhere [`hit`] is an
//! empty function and the variable is ignored.

#[cfg(feature = "test-seams")]
use std::sync::OnceLock;

/// Names of the crash points, for tests and docs.
pub const POINTS: &[&str] = &[
    "flush-after-parquet-write",
    "flush-after-commit",
    "flush-after-truncate",
];

#[cfg(feature = "test-seams")]
fn armed() -> Option<&'static str> {
    static ARMED: OnceLock<Option<String>> = OnceLock::new();
    ARMED
        .get_or_init(|| std::env::var("FLIGHTLOG_FAILPOINT").ok())
        .as_deref()
}

/// Aborts the process if `name` is the armed crash point.
#[cfg(not(feature = "test-seams"))]
#[inline(always)]
pub fn hit(_name: &str) {}

/// Aborts the process if `name` is the armed crash point.
#[cfg(feature = "test-seams")]
pub fn hit(name: &str) {
    if armed() == Some(name) {
        eprintln!("flightlog: crash point {name} reached, aborting");
        std::process::abort();
    }
}
