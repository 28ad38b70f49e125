//! The fuzz targets of `fuzz/` as bounded property tests, so CI on stable
//! runs the same checks: frame and header decoding on arbitrary bytes,
//! recovery of arbitrary segment files in the crash model, and control-frame
//! and data-payload decoding. Each target runs `FLIGHTLOG_FUZZ_CASES` cases
//! (2,000 by default) from random bytes turned into the target's `Arbitrary`
//! input, then replays the seed corpus in `fuzz/corpus/<target>/`.

#[path = "../fuzz/src/lib.rs"]
mod bodies;

use std::path::Path;

use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

fn cases() -> u32 {
    std::env::var("FLIGHTLOG_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2_000)
}

/// Feeds `cases()` random byte strings to `body`, half of them in the
/// target's structured mode (odd first byte).
fn run(max_bytes: usize, body: fn(&[u8])) {
    let mut runner = TestRunner::new(Config {
        cases: cases(),
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
    run(4096, bodies::frame_decode);
    assert!(replay("frame_decode", bodies::frame_decode) > 0);
}

#[test]
fn segment_recovery_never_panics_and_recovered_frames_verify() {
    run(8192, bodies::segment_recovery);
    assert!(replay("segment_recovery", bodies::segment_recovery) > 0);
}

#[test]
fn checkpoint_and_record_decoding_never_panic() {
    run(4096, bodies::checkpoint_decode);
    assert!(replay("checkpoint_decode", bodies::checkpoint_decode) > 0);
}
