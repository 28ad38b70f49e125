//! The fuzz targets of `fuzz/` as bounded property tests, so CI on stable
//! runs the same checks: frame and header decoding on arbitrary bytes,
//! recovery of arbitrary segment files in the crash model, control-frame and
//! data-payload decoding, `do_put`'s command and Arrow stream decoding, and
//! WAL operations with crashes against a model. Each target runs a bounded
//! number of cases (`FLIGHTLOG_FUZZ_CASES` sets it for all; defaults keep the
//! file well under a minute in a debug build) from random bytes turned into
//! the target's `Arbitrary` input, then replays the seed corpus in
//! `fuzz/corpus/<target>/`.

#[path = "../fuzz/src/lib.rs"]
mod bodies;

use std::path::Path;

use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

fn cases(default: u32) -> u32 {
    std::env::var("FLIGHTLOG_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Feeds `cases(default)` random byte strings to `body` (for the targets
/// with a mode byte, half of them in the structured mode).
fn run(default: u32, max_bytes: usize, body: fn(&[u8])) {
    let mut runner = TestRunner::new(Config {
        cases: cases(default),
        failure_persistence: None,
        ..Config::default()
    });
    runner
        .run(
            &proptest::collection::vec(any::<u8>(), 0..max_bytes),
            |bytes| {
                body(&bytes);
                Ok(())
            },
        )
        .unwrap_or_else(|error| panic!("{error}"));
}

/// Replays every file of `fuzz/corpus/<target>/` (seeds and past findings).
fn replay(target: &str, body: fn(&[u8])) -> usize {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut replayed = 0;
    for entry in std::fs::read_dir(&dir).expect("the seed corpus exists") {
        let bytes = std::fs::read(entry.expect("entry").path()).expect("read seed");
        body(&bytes);
        replayed += 1;
    }
    replayed
}

#[test]
fn frame_decode_accepts_only_what_re_encodes_to_the_same_bytes() {
    run(2_000, 4096, bodies::frame_decode);
    assert!(replay("frame_decode", bodies::frame_decode) > 0);
}

#[test]
fn segment_recovery_never_panics_and_recovered_frames_verify() {
    run(2_000, 8192, bodies::segment_recovery);
    assert!(replay("segment_recovery", bodies::segment_recovery) > 0);
}

#[test]
fn checkpoint_and_record_decoding_never_panic() {
    run(2_000, 4096, bodies::checkpoint_decode);
    assert!(replay("checkpoint_decode", bodies::checkpoint_decode) > 0);
}

#[test]
fn command_and_arrow_stream_decoding_never_panic() {
    run(500, 4096, bodies::command_decode);
    assert!(replay("command_decode", bodies::command_decode) > 0);
}

#[test]
fn wal_operations_with_crashes_keep_every_acknowledged_frame() {
    run(200, 512, bodies::wal_ops);
    assert!(replay("wal_ops", bodies::wal_ops) > 0);
}
