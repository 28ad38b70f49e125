//! Bodies of the WAL fuzz targets, shared by `cargo fuzz` (the binaries in
//! `fuzz_targets/`) and by the bounded proptest run in `tests/fuzz_smoke.rs`,
//! which includes this file so that CI on stable exercises the same checks.
//!
//! Inputs are bounded `Arbitrary` types: structured enough that the fuzzer
//! reaches valid CRCs and recovery decisions, small enough to run fast.
#![allow(unreachable_pub, dead_code)]

use std::sync::Arc;

use arbitrary::{Arbitrary, Unstructured};
use prost::Message;

use flightlog::proto::wal::{Abort, Checkpoint};
use flightlog::record::decode_record;
use flightlog::wal::format::{
    decode_data_payload, decode_frame, decode_segment_header, encode_data_payload, encode_frame,
    encode_segment_header, FrameHeader, FrameKind, SegmentHeader, FRAME_HEADER_LEN,
    SEGMENT_HEADER_LEN,
};
use flightlog::wal::segment::{segment_file_name, SegmentInit};
use flightlog::wal::storage::{CrashStorage, Storage};
use flightlog::wal::{Lsn, SegmentId, Wal, WalConfig, WalError, WalId};

/// Largest input any target looks at (the DEPENDENCIES.md cap).
pub const INPUT_BYTES_MAX: usize = 64 << 10;

// ---------------------------------------------------------------------------
// frame_decode

/// Bytes to decode as a frame, optionally starting with a valid frame so the
/// decoder's accept path is reached, with bits flipped afterwards.
#[derive(Debug, Arbitrary)]
pub struct FrameDecodeInput {
    pub segment: u64,
    pub offset: u16,
    /// Cap on the body length; 0 means no cap beyond the format's ceiling.
    pub body_len_max: u32,
    pub valid_prefix: Option<ValidFrame>,
    pub flips: Vec<u16>,
    pub bytes: Vec<u8>,
}

#[derive(Debug, Arbitrary)]
pub struct ValidFrame {
    pub kind: u8,
    pub lsn: u64,
    pub durable_lsn: u64,
    pub payload: Vec<u8>,
}

fn kind_from(byte: u8) -> FrameKind {
    match byte % 3 {
        0 => FrameKind::Data,
        1 => FrameKind::Checkpoint,
        _ => FrameKind::Abort,
    }
}

/// Entry point of `frame_decode` on raw fuzzer bytes. Layout: 1 byte mode;
/// an even mode means raw bytes follow (8 bytes segment id LE, 2 bytes offset
/// LE, 4 bytes body length cap LE, then the bytes to decode: seeds are real
/// frames and segments); an odd mode decodes the rest as a structured
/// [`FrameDecodeInput`].
pub fn frame_decode(data: &[u8]) {
    let data = &data[..data.len().min(INPUT_BYTES_MAX)];
    let Some((mode, rest)) = data.split_first() else {
        return;
    };
    if mode % 2 == 1 {
        if let Ok(input) = FrameDecodeInput::arbitrary_take_rest(Unstructured::new(rest)) {
            frame_decode_structured(input);
        }
        return;
    }
    let mut u = Unstructured::new(rest);
    let (Ok(segment), Ok(offset), Ok(body_len_max)) = (
        u.arbitrary::<u64>(),
        u.arbitrary::<u16>(),
        u.arbitrary::<u32>(),
    ) else {
        return;
    };
    frame_decode_structured(FrameDecodeInput {
        segment,
        offset,
        body_len_max,
        valid_prefix: None,
        flips: Vec::new(),
        bytes: u.take_rest().to_vec(),
    });
}

/// `decode_frame`, `decode_segment_header` and `decode_data_payload` on
/// arbitrary bytes: no panic, and whatever they accept re-encodes to exactly
/// the bytes it was decoded from (so an accepted frame's CRC is right).
pub fn frame_decode_structured(input: FrameDecodeInput) {
    let segment = SegmentId(input.segment);
    let mut bytes = Vec::new();
    if let Some(valid) = &input.valid_prefix {
        let header = FrameHeader {
            kind: kind_from(valid.kind),
            lsn: Lsn(valid.lsn),
            durable_lsn: Lsn(valid.durable_lsn),
        };
        bytes.extend(encode_frame(segment, &header, &valid.payload));
    }
    bytes.extend_from_slice(&input.bytes);
    bytes.truncate(INPUT_BYTES_MAX);
    flip_bits(&mut bytes, &input.flips);
    let body_len_max = match input.body_len_max {
        0 => u64::MAX,
        cap => u64::from(cap),
    };
    let offset = usize::from(input.offset);

    if let Ok(frame) = decode_frame(segment, &bytes, offset, body_len_max) {
        let len = frame.len as usize;
        assert_eq!(frame.offset, offset as u64);
        assert_eq!(
            len,
            FRAME_HEADER_LEN + frame.payload.len(),
            "length and payload agree"
        );
        let encoded = encode_frame(segment, &frame.header, frame.payload);
        assert_eq!(
            encoded[..],
            bytes[offset..offset + len],
            "an accepted frame re-encodes to its bytes"
        );
    }
    if let Ok(header) = decode_segment_header(&bytes) {
        let encoded = encode_segment_header(&header);
        // The header decoder does not check the reserved bytes (48..60), see
        // `tests/fuzz_smoke.rs`; everything else must round-trip exactly.
        assert_eq!(encoded[..48], bytes[..48], "header fields round-trip");
        if bytes[48..60].iter().all(|b| *b == 0) {
            assert_eq!(encoded[..], bytes[..SEGMENT_HEADER_LEN]);
        }
    }
    if let Ok(parts) = decode_data_payload(&bytes) {
        let encoded = encode_data_payload(parts.command, parts.rows, parts.ipc_stream);
        assert_eq!(encoded, bytes, "a data payload re-encodes to its bytes");
    }
}

fn flip_bits(bytes: &mut [u8], flips: &[u16]) {
    if bytes.is_empty() {
        return;
    }
    for flip in flips.iter().take(8) {
        let bit = usize::from(*flip) % (bytes.len() * 8);
        bytes[bit / 8] ^= 1 << (bit % 8);
    }
}

// ---------------------------------------------------------------------------
// segment_recovery

/// One to three segment files (plus leftovers of segment creation and the
/// recycle pool) to recover from. Single bytes are mapped with a bias towards
/// the well-formed case (a frame with the due Lsn, contiguous ids) so that
/// random bytes reach recovery's decisions instead of failing on the header.
#[derive(Debug, Arbitrary)]
pub struct RecoveryInput {
    pub init: u8,
    pub frame_bytes_max: u16,
    pub first_id: u8,
    pub first: SegmentInput,
    pub more: Vec<SegmentInput>,
    pub extra_files: Vec<ExtraFile>,
    /// Appended after a successful open, then the WAL is opened again.
    pub append: Option<Vec<u8>>,
}

#[derive(Debug, Arbitrary)]
pub struct SegmentInput {
    /// Below 224 the next id; else the previous id plus 0..=2.
    pub id_step: u8,
    pub header: HeaderInput,
    pub chunks: Vec<Chunk>,
    /// Below 64: flip bit `flip` of the file.
    pub flip_gate: u8,
    pub flip: u16,
}

#[derive(Debug, Arbitrary)]
pub struct HeaderInput {
    /// 240 and up: raw bytes (`raw`) instead of a header.
    pub shape: u8,
    /// Below 192: the first Lsn continues the previous segment; else skewed.
    pub first_lsn_skew: u8,
    /// Below 8: another WAL's identity.
    pub foreign_wal: u8,
    /// 248 and up: format version 2..=9.
    pub version: u8,
    /// Below 8: the header names the next segment id.
    pub wrong_id: u8,
    pub raw: Vec<u8>,
}

/// Below 200: a well-formed frame with the due Lsn; 200..230: Lsn skewed;
/// 230..240: CRC seeded with another segment id; 240..248: `payload` as raw
/// bytes; 248 and up: zeros.
#[derive(Debug, Arbitrary)]
pub struct Chunk {
    pub shape: u8,
    pub kind: u8,
    /// Durable Lsn is the frame's Lsn minus 1 minus (this % 4).
    pub durable_back: u8,
    pub payload: Vec<u8>,
}

#[derive(Debug, Arbitrary)]
pub struct ExtraFile {
    pub kind: u8,
    pub bytes: Vec<u8>,
}

const WAL: WalId = WalId(0x0123_4567_89ab_cdef_fedc_ba98_7654_3210);

fn skew(byte: u8, threshold: u8) -> i64 {
    if byte < threshold {
        0
    } else {
        i64::from(byte) - 240
    }
}

fn build_header(id: SegmentId, input: &HeaderInput, next_lsn: &mut u64, first: bool) -> Vec<u8> {
    if input.shape >= 240 {
        return input.raw.clone();
    }
    let first_lsn = next_lsn
        .saturating_add_signed(skew(input.first_lsn_skew, 192))
        .max(1);
    if first {
        *next_lsn = first_lsn;
    }
    let header = SegmentHeader {
        wal_id: if input.foreign_wal < 8 { WalId(7) } else { WAL },
        segment_id: SegmentId(id.0 + u64::from(input.wrong_id < 8)),
        first_lsn: Lsn(first_lsn),
    };
    let mut encoded = encode_segment_header(&header);
    if input.version >= 248 {
        let version = u32::from(input.version - 246);
        encoded[8..12].copy_from_slice(&version.to_le_bytes());
        let crc = crc32(&encoded[..60]);
        encoded[60..64].copy_from_slice(&crc.to_le_bytes());
    }
    encoded.to_vec()
}

fn build_segment(id: SegmentId, input: &SegmentInput, next_lsn: &mut u64, first: bool) -> Vec<u8> {
    let mut bytes = build_header(id, &input.header, next_lsn, first);
    for chunk in input.chunks.iter().take(16) {
        if chunk.shape >= 248 {
            bytes.extend(std::iter::repeat_n(0u8, chunk.payload.len() * 4));
            continue;
        }
        if chunk.shape >= 240 {
            bytes.extend_from_slice(&chunk.payload);
            continue;
        }
        let lsn = next_lsn.saturating_add_signed(if (200..230).contains(&chunk.shape) {
            i64::from(chunk.shape) - 215
        } else {
            0
        });
        let header = FrameHeader {
            kind: kind_from(chunk.kind),
            lsn: Lsn(lsn),
            durable_lsn: Lsn(lsn.saturating_sub(1 + u64::from(chunk.durable_back % 4))),
        };
        let seed = SegmentId(id.0 + u64::from(chunk.shape >= 230));
        bytes.extend(encode_frame(seed, &header, &chunk.payload));
        *next_lsn = lsn.saturating_add(1);
    }
    if input.flip_gate < 64 {
        flip_bits(&mut bytes, &[input.flip]);
    }
    bytes
}

fn crc32(bytes: &[u8]) -> u32 {
    // CRC-32 (IEEE), bitwise: the fuzz crate does not need crc32fast's speed.
    let mut crc = !0u32;
    for byte in bytes {
        crc ^= u32::from(*byte);
        for _ in 0..8 {
            crc = (crc >> 1) ^ (0xedb8_8320 & (!(crc & 1)).wrapping_add(1));
        }
    }
    !crc
}

fn recovery_config(init: u8, frame_bytes_max: u16) -> WalConfig {
    WalConfig {
        segment_bytes_target: 4096,
        // Mostly roomy; 0xf000 and up: a small limit (what the node was
        // restarted with may be below what it wrote).
        frame_bytes_max: match frame_bytes_max {
            0..0xf000 => 1 << 16,
            small => u64::from(small & 0xfff).max(1),
        },
        segment_init: match init % 3 {
            0 => SegmentInit::Grow,
            1 => SegmentInit::ZeroFill,
            _ => SegmentInit::Recycle,
        },
        recycle_pool_max: 2,
        queue_depth: 4,
        batch_bytes_max: 1 << 16,
    }
}

/// Every file of the storage with its live bytes, sorted by name.
fn snapshot(storage: &CrashStorage) -> Vec<(String, Vec<u8>)> {
    let mut names = storage.list().expect("the crash model lists");
    names.sort();
    names
        .into_iter()
        .map(|name| {
            let bytes = storage.read(&name).unwrap_or_default();
            (name, bytes)
        })
        .collect()
}

/// Builds the directory described by `input` in the crash model.
pub fn build_storage(input: &RecoveryInput) -> CrashStorage {
    let storage = CrashStorage::new();
    let mut id = u64::from(input.first_id % 4) + 1;
    let mut next_lsn = 1u64;
    let mut total = 0usize;
    let segments = std::iter::once(&input.first).chain(input.more.iter().take(2));
    for (index, segment) in segments.enumerate() {
        if index > 0 {
            id += match segment.id_step {
                0..224 => 1,
                step => u64::from(step % 3),
            };
        }
        let mut bytes = build_segment(SegmentId(id), segment, &mut next_lsn, index == 0);
        bytes.truncate(INPUT_BYTES_MAX.saturating_sub(total));
        total += bytes.len();
        write_file(&storage, &segment_file_name(SegmentId(id)), &bytes);
    }
    for (index, extra) in input.extra_files.iter().take(2).enumerate() {
        let name = match extra.kind % 3 {
            0 => format!("{}.tmp", segment_file_name(SegmentId(id + 1))),
            1 => format!("recycle-{:020}.wal", index),
            _ => "LOCK".to_string(),
        };
        let mut bytes = extra.bytes.clone();
        bytes.truncate(4096);
        write_file(&storage, &name, &bytes);
    }
    storage
}

fn write_file(storage: &CrashStorage, name: &str, bytes: &[u8]) {
    if storage.list().expect("list").iter().any(|n| n == name) {
        return;
    }
    let mut file = storage.create(name).expect("create in the crash model");
    file.write_at(0, bytes).expect("write in the crash model");
    file.sync_data().expect("sync in the crash model");
    storage.sync_dir().expect("sync the crash model directory");
}

/// Entry point of `segment_recovery` on raw fuzzer bytes. Layout: 1 byte
/// mode; an odd mode decodes the rest as a structured [`RecoveryInput`]
/// (frames with valid CRCs, chosen Lsns, headers); an even mode means raw
/// files follow: 1 byte init, 2 bytes frame limit LE, 1 byte first segment
/// id, 1 byte file count (1 to 3), then per file 1 byte id step, 2 bytes
/// length LE and that many bytes (seeds are real segment files); the rest,
/// if any, is appended after a successful open.
pub fn segment_recovery(data: &[u8]) {
    let data = &data[..data.len().min(INPUT_BYTES_MAX)];
    let Some((mode, rest)) = data.split_first() else {
        return;
    };
    if mode % 2 == 1 {
        if let Ok(input) = RecoveryInput::arbitrary_take_rest(Unstructured::new(rest)) {
            let storage = build_storage(&input);
            let config = recovery_config(input.init, input.frame_bytes_max);
            check_recovery(storage, config, input.append.as_deref());
        }
        return;
    }
    let Some((storage, config, append)) = raw_storage(rest) else {
        return;
    };
    check_recovery(storage, config, append);
}

fn raw_storage(data: &[u8]) -> Option<(CrashStorage, WalConfig, Option<&[u8]>)> {
    let mut u = Unstructured::new(data);
    let init: u8 = u.arbitrary().ok()?;
    let frame_bytes_max: u16 = u.arbitrary().ok()?;
    let first_id: u8 = u.arbitrary().ok()?;
    let count = u.arbitrary::<u8>().ok()? % 3 + 1;
    let storage = CrashStorage::new();
    let mut id = u64::from(first_id % 4) + 1;
    for index in 0..count {
        let step = u.arbitrary::<u8>().ok()?;
        let len = u.arbitrary::<u16>().ok()?;
        let bytes = u.bytes(usize::from(len).min(u.len())).ok()?;
        if index > 0 {
            id += u64::from(step % 3);
        }
        write_file(&storage, &segment_file_name(SegmentId(id)), bytes);
    }
    let rest = u.take_rest();
    let append = (!rest.is_empty()).then_some(rest);
    Some((storage, recovery_config(init, frame_bytes_max), append))
}

/// `Wal::open` on arbitrary segment files: never panics; on Err nothing was
/// modified; on Ok every recovered frame reads back, verifies, and is the
/// byte-exact encoding of what recovery reported; Lsns are contiguous; and
/// the repaired log takes an append and recovers it on the next open.
fn check_recovery(storage: CrashStorage, config: WalConfig, append: Option<&[u8]>) {
    let before = snapshot(&storage);
    let (wal, recovery) = match Wal::open(Arc::new(storage.clone()), config.clone()) {
        Ok(opened) => opened,
        Err(error) => {
            assert!(
                matches!(
                    error,
                    WalError::Corrupted { .. }
                        | WalError::UnsupportedVersion { .. }
                        | WalError::MissingSegment { .. }
                ),
                "unexpected error kind: {error}"
            );
            assert_eq!(snapshot(&storage), before, "a refused open modified files");
            return;
        }
    };
    let mut expected_lsn = recovery.frames.first().map(|f| f.header.lsn);
    for frame in &recovery.frames {
        assert_eq!(Some(frame.header.lsn), expected_lsn, "Lsns are contiguous");
        expected_lsn = Some(Lsn(frame.header.lsn.0 + 1));
        let view = wal
            .read(frame.pointer)
            .expect("a recovered frame reads back");
        assert_eq!(view.header, frame.header);
        let file = storage
            .read(&segment_file_name(frame.pointer.segment))
            .expect("the frame's segment exists");
        let start = frame.pointer.offset as usize;
        let on_disk = &file[start..start + frame.pointer.len as usize];
        let encoded = encode_frame(frame.pointer.segment, &frame.header, view.payload());
        assert_eq!(on_disk, &encoded[..], "the recovered frame's CRC matches");
    }
    if let Some(next) = expected_lsn {
        assert_eq!(recovery.next_lsn, next);
    }
    let Some(payload) = append else {
        wal.close();
        return;
    };
    let payload: Vec<u8> = payload.iter().copied().take(1024).collect();
    let appended = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime")
        .block_on(wal.append(FrameKind::Data, payload.clone()));
    wal.close();
    drop(wal);
    let Ok(appended) = appended else {
        // Refused (frame over the configured limit): nothing to recover.
        return;
    };
    assert_eq!(appended.lsn, recovery.next_lsn);
    let (wal, again) = Wal::open(Arc::new(storage.clone()), config)
        .expect("a repaired log with one more frame opens again");
    assert!(again.torn_tail.is_none(), "the repair was durable");
    let old: Vec<_> = recovery.frames.iter().map(|f| f.header.lsn).collect();
    let new: Vec<_> = again.frames.iter().map(|f| f.header.lsn).collect();
    assert_eq!(
        new[..new.len() - 1],
        old[..],
        "the old frames are still there"
    );
    let last = again.frames.last().expect("the appended frame");
    assert_eq!(last.header.lsn, appended.lsn);
    assert_eq!(
        wal.read(last.pointer).expect("read").payload(),
        &payload[..]
    );
    wal.close();
}

// ---------------------------------------------------------------------------
// checkpoint_decode

/// Control-frame protobufs and whole data payloads on arbitrary bytes (at
/// most 64 KiB): no panic, and what decodes re-encodes stably.
pub fn checkpoint_decode(data: &[u8]) {
    let bytes = &data[..data.len().min(INPUT_BYTES_MAX)];
    if let Ok(checkpoint) = Checkpoint::decode(bytes) {
        let again = Checkpoint::decode(&checkpoint.encode_to_vec()[..]).expect("re-decode");
        assert_eq!(again, checkpoint);
    }
    if let Ok(abort) = Abort::decode(bytes) {
        let again = Abort::decode(&abort.encode_to_vec()[..]).expect("re-decode");
        assert_eq!(again, abort);
    }
    if !ipc_lengths_are_plausible(bytes) {
        // Known: arrow-ipc allocates from junk length headers (see
        // tests/fuzz_smoke.rs); skip those inputs so the run finds the rest.
        return;
    }
    if let Ok(record) = decode_record(bytes) {
        let rows: usize = record.batches.iter().map(|b| b.num_rows()).sum();
        let parts = decode_data_payload(bytes).expect("decode_record split it");
        assert_eq!(rows as u64, parts.rows);
    }
}

/// False when the IPC stream of a data payload starts with a message length
/// larger than the stream itself: arrow-ipc would allocate that much.
pub fn ipc_lengths_are_plausible(payload: &[u8]) -> bool {
    let Ok(parts) = decode_data_payload(payload) else {
        return true;
    };
    let ipc = parts.ipc_stream;
    let word = |at: usize| {
        ipc.get(at..at + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    };
    let length = match word(0) {
        Some(0xffff_ffff) => word(4),
        other => other,
    };
    length.is_none_or(|len| (len as usize) <= ipc.len())
}
