//! The write-ahead log end to end: appends, recovery, torn tails versus
//! corruption, truncation and recycling, fail-stop on fsync errors, and the
//! crash model (power cut at every write and fsync index). Guards the claim
//! "an acknowledged frame survives any crash; a damaged one is never returned".

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use flightlog::wal::format::FrameKind;
use flightlog::wal::segment::{segment_file_name, SegmentInit};
use flightlog::wal::storage::{CrashMode, CrashStorage, Storage};
use flightlog::wal::{Lsn, SegmentId, Wal, WalConfig, WalError};

fn config(segment_bytes_target: u64, init: SegmentInit) -> WalConfig {
    WalConfig {
        segment_bytes_target,
        frame_bytes_max: 1 << 20,
        segment_init: init,
        recycle_pool_max: 2,
        prepare_spare: true,
        queue_depth: 64,
        batch_bytes_max: 1 << 20,
    }
}

fn payload(tag: u64, len: usize) -> Vec<u8> {
    let mut bytes = tag.to_le_bytes().to_vec();
    bytes.extend((0..len).map(|i| (i as u64 ^ tag) as u8));
    bytes
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

/// Appends `count` frames one after the other; returns payloads by Lsn.
fn append_sequentially(wal: &Wal, count: u64, len: usize) -> BTreeMap<Lsn, Vec<u8>> {
    runtime().block_on(async {
        let mut out = BTreeMap::new();
        for tag in 0..count {
            let p = payload(tag, len);
            let appended = wal
                .append(FrameKind::Data, p.clone())
                .await
                .expect("append");
            out.insert(appended.lsn, p);
        }
        out
    })
}

fn recovered_payloads(wal: &Wal, recovery: &flightlog::wal::Recovery) -> BTreeMap<Lsn, Vec<u8>> {
    recovery
        .frames
        .iter()
        .map(|f| {
            let view = wal.read(f.pointer).expect("read back");
            (f.header.lsn, view.payload().to_vec())
        })
        .collect()
}

#[test]
fn appended_frames_are_recovered_in_order_after_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (wal, recovery) = Wal::open_dir(dir.path(), config(4096, SegmentInit::Grow)).expect("open");
    assert!(recovery.created);
    let written = append_sequentially(&wal, 50, 300);
    let id = wal.id();
    wal.close();
    drop(wal);
    let (wal, recovery) =
        Wal::open_dir(dir.path(), config(4096, SegmentInit::Grow)).expect("reopen");
    assert_eq!(recovery.wal_id, id);
    assert!(
        recovery.segments.len() > 1,
        "4 KiB segments must have rolled"
    );
    assert_eq!(recovered_payloads(&wal, &recovery), written);
    let next = runtime()
        .block_on(wal.append(FrameKind::Data, b"after".to_vec()))
        .expect("append after reopen");
    assert_eq!(next.lsn, Lsn(51));
}

#[test]
fn a_second_process_cannot_open_the_same_directory() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_wal, _) = Wal::open_dir(dir.path(), WalConfig::default()).expect("open");
    assert!(matches!(
        Wal::open_dir(dir.path(), WalConfig::default()),
        Err(WalError::Locked { .. })
    ));
}

#[test]
fn frames_over_the_limit_are_refused_with_their_size() {
    let storage = Arc::new(CrashStorage::new());
    let (wal, _) = Wal::open(storage, config(1 << 20, SegmentInit::Grow)).expect("open");
    let error = runtime()
        .block_on(wal.append(FrameKind::Data, vec![0u8; (1 << 20) + 1]))
        .expect_err("too large");
    assert!(
        matches!(error, WalError::FrameTooLarge { len, max } if len == (1 << 20) + 1 && max == 1 << 20)
    );
}

/// Builds a WAL in the crash model with `count` frames in few segments and
/// returns the storage and the payloads by Lsn.
fn crash_model_wal(count: u64, segment_bytes: u64) -> (CrashStorage, BTreeMap<Lsn, Vec<u8>>) {
    let storage = CrashStorage::new();
    let (wal, _) = Wal::open(
        Arc::new(storage.clone()),
        config(segment_bytes, SegmentInit::Grow),
    )
    .expect("open");
    let written = append_sequentially(&wal, count, 40);
    wal.close();
    (storage, written)
}

fn newest_segment(storage: &CrashStorage) -> String {
    storage
        .list()
        .expect("list")
        .into_iter()
        .filter(|n| n.ends_with(".wal") && !n.starts_with("recycle"))
        .max()
        .expect("a segment")
}

#[test]
fn truncation_at_every_byte_of_the_last_segment_recovers_the_frames_before_the_cut() {
    let (storage, written) = crash_model_wal(12, 400);
    let last = newest_segment(&storage);
    let full = storage.read(&last).expect("bytes");
    let (_, complete) = Wal::open(
        Arc::new(storage.crash_image(CrashMode::KeepUnsynced)),
        config(400, SegmentInit::Grow),
    )
    .expect("open the uncut WAL");
    assert_eq!(complete.frames.len(), written.len());
    for cut in 64..=full.len() {
        let image = storage.crash_image(CrashMode::KeepUnsynced);
        image.overwrite(&last, full[..cut].to_vec());
        let (wal, recovery) = Wal::open(Arc::new(image.clone()), config(400, SegmentInit::Grow))
            .unwrap_or_else(|e| panic!("cut at {cut}: {e}"));
        let expected: BTreeMap<Lsn, Vec<u8>> = complete
            .frames
            .iter()
            .filter(|f| {
                segment_file_name(f.pointer.segment) != last
                    || f.pointer.offset + u64::from(f.pointer.len) <= cut as u64
            })
            .map(|f| (f.header.lsn, written[&f.header.lsn].clone()))
            .collect();
        assert_eq!(
            recovered_payloads(&wal, &recovery),
            expected,
            "cut at {cut}"
        );
        // The repaired log accepts appends and recovers them again.
        runtime()
            .block_on(wal.append(FrameKind::Data, b"x".to_vec()))
            .expect("append after repair");
        wal.close();
        let (_, again) = Wal::open(Arc::new(image), config(400, SegmentInit::Grow))
            .expect("reopen after repair");
        assert_eq!(again.frames.len(), expected.len() + 1, "cut at {cut}");
    }
}

#[test]
fn a_flipped_bit_in_an_acknowledged_frame_is_corruption_naming_segment_and_offset() {
    let (storage, _) = crash_model_wal(12, 1 << 20);
    let last = newest_segment(&storage);
    let full = storage.read(&last).expect("bytes");
    // Frame 3 of 12: every later frame was written after it was fsynced.
    let frame_len = (full.len() - 64) / 12;
    let offset = 64 + 3 * frame_len;
    for bit in 0..(frame_len * 8) {
        let mut damaged = full.clone();
        damaged[offset + bit / 8] ^= 1 << (bit % 8);
        let image = storage.crash_image(CrashMode::KeepUnsynced);
        image.overwrite(&last, damaged);
        match Wal::open(Arc::new(image), config(1 << 20, SegmentInit::Grow)) {
            Err(WalError::Corrupted {
                segment,
                offset: at,
                ..
            }) => {
                assert_eq!(segment, SegmentId(1));
                assert_eq!(at, offset as u64, "bit {bit}");
            }
            Err(other) => panic!("bit {bit}: unexpected error {other}"),
            Ok(_) => panic!("bit {bit}: a damaged acknowledged frame was accepted"),
        }
    }
}

#[test]
fn a_bad_frame_in_a_sealed_segment_is_corruption() {
    let (storage, _) = crash_model_wal(30, 400);
    let first = segment_file_name(SegmentId(1));
    let mut bytes = storage.read(&first).expect("bytes");
    let last_byte = bytes.len() - 1;
    bytes[last_byte] ^= 0xff; // the sealed segment's last frame
    storage.overwrite(&first, bytes);
    let error = Wal::open(Arc::new(storage), config(400, SegmentInit::Grow))
        .err()
        .expect("corruption");
    assert!(
        matches!(
            error,
            WalError::Corrupted {
                segment: SegmentId(1),
                ..
            }
        ),
        "{error}"
    );
}

#[test]
fn garbage_after_the_tail_is_erased_and_never_read_as_frames() {
    let (storage, written) = crash_model_wal(5, 1 << 20);
    let last = newest_segment(&storage);
    let mut bytes = storage.read(&last).expect("bytes");
    bytes.extend((0..500u32).map(|i| (i * 7 + 3) as u8));
    storage.overwrite(&last, bytes);
    let (wal, recovery) = Wal::open(
        Arc::new(storage.clone()),
        config(1 << 20, SegmentInit::Grow),
    )
    .expect("open");
    assert!(recovery.torn_tail.is_some());
    assert_eq!(recovered_payloads(&wal, &recovery), written);
    wal.close();
    let (_, again) =
        Wal::open(Arc::new(storage), config(1 << 20, SegmentInit::Grow)).expect("reopen");
    assert!(again.torn_tail.is_none(), "the tail was erased durably");
}

#[test]
fn empty_and_zero_filled_segments_recover_as_empty() {
    let storage = CrashStorage::new();
    let (wal, _) = Wal::open(
        Arc::new(storage.clone()),
        config(1 << 20, SegmentInit::ZeroFill),
    )
    .expect("open");
    wal.close();
    let (_, recovery) = Wal::open(
        Arc::new(storage.clone()),
        config(1 << 20, SegmentInit::ZeroFill),
    )
    .expect("reopen");
    assert!(recovery.frames.is_empty());
    assert!(recovery.torn_tail.is_none());
    // A segment file that is all zeros (header included) is not a segment.
    let name = newest_segment(&storage);
    storage.overwrite(&name, vec![0u8; 4096]);
    assert!(matches!(
        Wal::open(Arc::new(storage), config(1 << 20, SegmentInit::Grow)),
        Err(WalError::Corrupted { offset: 0, .. })
    ));
}

#[test]
fn an_unknown_format_version_is_a_typed_error() {
    let (storage, _) = crash_model_wal(1, 1 << 20);
    let name = newest_segment(&storage);
    let mut bytes = storage.read(&name).expect("bytes");
    bytes[8..12].copy_from_slice(&2u32.to_le_bytes());
    let crc = crc32fast::hash(&bytes[..60]);
    bytes[60..64].copy_from_slice(&crc.to_le_bytes());
    storage.overwrite(&name, bytes);
    assert!(matches!(
        Wal::open(Arc::new(storage), config(1 << 20, SegmentInit::Grow)),
        Err(WalError::UnsupportedVersion { version: 2, .. })
    ));
}

#[test]
fn truncation_removes_whole_segments_below_the_lsn_and_never_the_active_one() {
    for init in [SegmentInit::Grow, SegmentInit::Recycle] {
        let storage = CrashStorage::new();
        let (wal, _) = Wal::open(Arc::new(storage.clone()), config(400, init)).expect("open");
        let written = append_sequentially(&wal, 40, 40);
        let segments = wal.segments();
        assert!(segments.len() > 3);
        let (third, third_first, _) = segments[2];
        let done = wal.truncate_below(third_first).expect("truncate");
        let mut gone: Vec<SegmentId> = done.removed.iter().chain(&done.recycled).copied().collect();
        gone.sort();
        assert_eq!(gone, vec![SegmentId(1), SegmentId(2)], "{init:?}");
        assert_eq!(done.recycled.is_empty(), init != SegmentInit::Recycle);
        assert_eq!(wal.segments()[0].0, third);
        // Everything: nothing else is removed, and the active one stays.
        let done = wal.truncate_below(Lsn(u64::MAX)).expect("truncate all");
        assert!(!done.removed.is_empty() || !done.recycled.is_empty());
        assert_eq!(wal.segments().len(), 1);
        // Keep appending so recycled files get re-used, then recover.
        let more = append_sequentially(&wal, 40, 40);
        wal.close();
        let (wal, recovery) =
            Wal::open(Arc::new(storage.clone()), config(400, init)).expect("reopen");
        let got = recovered_payloads(&wal, &recovery);
        let last_written = written.keys().last().copied().unwrap_or_default();
        assert!(got
            .keys()
            .all(|l| *l > last_written || got[l] == written[l]));
        for (lsn, p) in &more {
            if *lsn >= recovery.frames[0].header.lsn {
                assert_eq!(got.get(lsn), Some(p), "{init:?} lsn {lsn:?}");
            }
        }
        assert_eq!(got.keys().last(), more.keys().last());
    }
}

#[test]
fn a_failed_fsync_stops_every_later_acknowledgement() {
    let storage = CrashStorage::new();
    let (wal, _) = Wal::open(
        Arc::new(storage.clone()),
        config(1 << 20, SegmentInit::Grow),
    )
    .expect("open");
    let rt = runtime();
    rt.block_on(wal.append(FrameKind::Data, b"ok".to_vec()))
        .expect("first append");
    storage.fail_syncs();
    assert!(matches!(
        rt.block_on(wal.append(FrameKind::Data, b"lost".to_vec())),
        Err(WalError::Failed { .. })
    ));
    assert!(matches!(
        rt.block_on(wal.append(FrameKind::Data, b"later".to_vec())),
        Err(WalError::Failed { .. })
    ));
}

/// The crash model: for every mutating storage operation index, run a
/// workload of concurrent appenders that dies at that operation, take the
/// disk image under each crash mode, recover, and check that every
/// acknowledged frame is there with its exact payload and that nothing
/// recovered was never submitted.
#[test]
fn crash_at_every_write_and_fsync_index_keeps_every_acknowledged_frame() {
    let modes = [
        CrashMode::DropUnsynced,
        CrashMode::KeepUnsynced,
        CrashMode::ZeroFilled,
        CrashMode::TornAt { keep_bytes: 37 },
        CrashMode::TornAt { keep_bytes: 100 },
    ];
    for init in [SegmentInit::Grow, SegmentInit::Recycle] {
        // Count the operations of an uncrashed run first.
        let total = {
            let storage = CrashStorage::new();
            run_workload(&storage, init);
            storage.operations()
        };
        let mut checked = 0;
        for crash_at in 0..total {
            let storage = CrashStorage::new();
            storage.crash_at(crash_at);
            let (acked, submitted, truncated_below) = run_workload(&storage, init);
            for mode in modes {
                let image = storage.crash_image(mode);
                let (wal, recovery) = match Wal::open(Arc::new(image), config(600, init)) {
                    Ok(opened) => opened,
                    Err(error) => panic!(
                        "{init:?} crash at op {crash_at} mode {mode:?}: recovery failed: {error}"
                    ),
                };
                let got = recovered_payloads(&wal, &recovery);
                for (lsn, p) in &acked {
                    if lsn.0 >= truncated_below {
                        assert_eq!(got.get(lsn), Some(p), "{init:?} crash at op {crash_at} mode {mode:?}: acknowledged frame lost");
                    }
                }
                for p in got.values() {
                    assert!(
                        submitted.contains(p),
                        "{init:?} crash at op {crash_at} mode {mode:?}: a frame nobody wrote"
                    );
                }
                checked += 1;
            }
        }
        assert!(checked > 50, "the workload must exercise many crash points");
    }
}

/// Three concurrent appenders, a truncation in the middle; stops at the
/// first error (the process died). Returns acknowledged frames, submitted
/// payloads, and the Lsn below which truncation may have removed frames.
type Workload = (Vec<(Lsn, Vec<u8>)>, HashSet<Vec<u8>>, u64);
fn run_workload(storage: &CrashStorage, init: SegmentInit) -> Workload {
    let Ok((wal, _)) = Wal::open(Arc::new(storage.clone()), config(600, init)) else {
        return (Vec::new(), HashSet::new(), 0);
    };
    let truncated_below = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let results = rt.block_on(async {
        let mut tasks = Vec::new();
        for writer in 0..3u64 {
            let wal = wal.clone();
            let truncated_below = truncated_below.clone();
            tasks.push(tokio::spawn(async move {
                let mut acked = Vec::new();
                let mut submitted = Vec::new();
                for i in 0..8u64 {
                    let p = payload(writer * 1000 + i, 30 + (i as usize * 13) % 50);
                    submitted.push(p.clone());
                    match wal.append(FrameKind::Data, p.clone()).await {
                        Ok(appended) => acked.push((appended.lsn, p)),
                        Err(_) => break,
                    }
                    if writer == 0 && i == 5 {
                        let wal = wal.clone();
                        let below = Lsn(wal.segments().last().map_or(0, |s| s.1 .0));
                        truncated_below.store(below.0, std::sync::atomic::Ordering::SeqCst);
                        let _ =
                            tokio::task::spawn_blocking(move || wal.truncate_below(below)).await;
                    }
                }
                (acked, submitted)
            }));
        }
        let mut acked = Vec::new();
        let mut submitted = HashSet::new();
        for task in tasks {
            let (a, s) = task.await.expect("task");
            acked.extend(a);
            submitted.extend(s);
        }
        (acked, submitted)
    });
    wal.close();
    (
        results.0,
        results.1,
        truncated_below.load(std::sync::atomic::Ordering::SeqCst),
    )
}

#[test]
fn a_full_disk_refuses_appends_without_failing_the_wal_and_loses_nothing_acknowledged() {
    for init in [SegmentInit::Grow, SegmentInit::Recycle] {
        let storage = CrashStorage::new();
        let (wal, _) = Wal::open(Arc::new(storage.clone()), config(600, init)).expect("open");
        let rt = runtime();
        let mut acked = BTreeMap::new();
        for tag in 0..5u64 {
            let p = payload(tag, 40);
            let appended = rt
                .block_on(wal.append(FrameKind::Data, p.clone()))
                .expect("append");
            acked.insert(appended.lsn, p);
        }
        // The disk fills up: some appends fail with NoSpace, none is acknowledged wrongly.
        let used: u64 = storage
            .list()
            .expect("list")
            .iter()
            .map(|n| storage.read(n).map_or(0, |b| b.len() as u64))
            .sum();
        storage.set_space(Some(used + 150));
        let mut refused = 0;
        for round in 0..5u64 {
            // Several frames per batch, so a partial write spans frames.
            let results = rt.block_on(async {
                let mut waits = Vec::new();
                for i in 0..3u64 {
                    let p = payload(100 + round * 10 + i, 10 + 30 * i as usize);
                    waits.push((
                        p.clone(),
                        wal.submit(FrameKind::Data, p).await.expect("submit"),
                    ));
                }
                let mut results = Vec::new();
                for (p, wait) in waits {
                    results.push((p, wait.await));
                }
                results
            });
            for (p, result) in results {
                match result {
                    Ok(appended) => {
                        acked.insert(appended.lsn, p);
                    }
                    Err(WalError::NoSpace { .. }) => refused += 1,
                    Err(other) => panic!("{init:?}: a full disk must not fail the WAL: {other}"),
                }
            }
        }
        assert!(refused > 0, "{init:?}: the space limit must have been hit");
        // Space returns: appends work again, Lsns continue without a gap.
        storage.set_space(None);
        for tag in 20..30u64 {
            let p = payload(tag, 40);
            let appended = rt
                .block_on(wal.append(FrameKind::Data, p.clone()))
                .expect("append after space returns");
            acked.insert(appended.lsn, p);
        }
        wal.close();
        for mode in [CrashMode::DropUnsynced, CrashMode::KeepUnsynced] {
            let (wal, recovery) =
                Wal::open(Arc::new(storage.crash_image(mode)), config(600, init)).expect("recover");
            assert_eq!(
                recovered_payloads(&wal, &recovery),
                acked,
                "{init:?} {mode:?}"
            );
        }
    }
}
