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
        prepare_spare: true,
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

// ---------------------------------------------------------------------------
// Panics under libFuzzer

thread_local! {
    /// What the last panic on this thread said (message and location).
    static LAST_PANIC: std::cell::RefCell<Option<String>> = const { std::cell::RefCell::new(None) };
}

/// libfuzzer-sys installs a panic hook that aborts on every panic, even one
/// the code under test catches on purpose (`record::decode_record` and the
/// Flight adapter contain arrow-ipc panics). This hook only remembers the
/// panic; [`run_contained`] aborts when a panic escapes a target body. Call
/// it from the target's `init:` block.
pub fn remember_panics_instead_of_aborting() {
    std::panic::set_hook(Box::new(|info| {
        LAST_PANIC.with(|last| *last.borrow_mut() = Some(info.to_string()));
    }));
}

/// Runs a target body; a panic that escapes it is a finding: print it and
/// abort so libFuzzer saves the input.
pub fn run_contained(data: &[u8], body: fn(&[u8])) {
    if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| body(data))).is_err() {
        let message = LAST_PANIC.with(|last| last.borrow_mut().take());
        eprintln!(
            "panic escaped the fuzz body: {}",
            message.as_deref().unwrap_or("(no message)")
        );
        std::process::abort();
    }
}

// ---------------------------------------------------------------------------
// command_decode

/// A `FlightDescriptor` and a short `do_put` Arrow stream: optionally a valid
/// schema (and batch) message for a random small schema, with bits flipped,
/// then raw messages; and column descriptors to validate against it.
#[derive(Debug, Arbitrary)]
pub struct CommandDecodeInput {
    pub descriptor_type: u8,
    pub cmd: CmdInput,
    pub schema: Option<SchemaInput>,
    /// Rows of the valid batch message (needs `schema`); none without it.
    pub batch: Option<BatchInput>,
    pub flips: Vec<Flip>,
    pub raw: Vec<RawMessage>,
    pub descriptors: Vec<DescriptorInput>,
    /// True: exactly one descriptor per field (pad or cut), so layouts validate.
    pub descriptors_fit: bool,
}

/// The descriptor's `cmd`: raw bytes, or an `Any` with a chosen `type_url`
/// around raw bytes or an encoded `DataSyncCommand`.
#[derive(Debug, Arbitrary)]
pub enum CmdInput {
    Raw(Vec<u8>),
    Any {
        type_url: u8,
        raw_url: String,
        value: AnyValue,
    },
}

#[derive(Debug, Arbitrary)]
pub enum AnyValue {
    Raw(Vec<u8>),
    Command {
        path: String,
        origin: String,
        sequence_number: Option<u64>,
        format: i32,
        descriptors: Vec<DescriptorInput>,
    },
}

#[derive(Debug, Arbitrary)]
pub struct SchemaInput {
    pub fields: Vec<FieldInput>,
}

#[derive(Debug, Arbitrary)]
pub struct FieldInput {
    pub name: u8,
    pub data_type: u8,
    pub nullable: bool,
}

#[derive(Debug, Arbitrary)]
pub struct BatchInput {
    pub rows: u8,
    pub values: Vec<u8>,
}

/// Flips bit `bit` of the header (`body` false) or body of message `message`.
#[derive(Debug, Arbitrary)]
pub struct Flip {
    pub message: u8,
    pub body: bool,
    pub bit: u16,
}

#[derive(Debug, Arbitrary)]
pub struct RawMessage {
    pub header: Vec<u8>,
    pub body: Vec<u8>,
}

/// Role 0..=3 most of the time, sometimes any `i32`; the name comes from a
/// small set so that keys pair up and names collide.
#[derive(Debug, Arbitrary)]
pub struct DescriptorInput {
    pub role: u8,
    pub name: u8,
}

const FIELD_NAMES: [&str; 5] = ["id", "v", "w", "x", ""];
const FLIGHT_MESSAGES_MAX: usize = 4;
const RAW_MESSAGE_BYTES_MAX: usize = 4096;

fn column_descriptor(input: &DescriptorInput) -> flightlog::proto::sync::ColumnDescriptor {
    let role = match input.role {
        0..=250 => i32::from(input.role % 4),
        other => i32::from(other) - 253,
    };
    flightlog::proto::sync::ColumnDescriptor {
        role,
        name: FIELD_NAMES[usize::from(input.name) % FIELD_NAMES.len()].to_string(),
    }
}

fn arrow_type(byte: u8) -> arrow::datatypes::DataType {
    use arrow::datatypes::{DataType, Field, Fields, TimeUnit};
    match byte % 16 {
        0 => DataType::Int64,
        1 => DataType::Int32,
        2 => DataType::Utf8,
        3 => DataType::Boolean,
        4 => DataType::Float64,
        5 => DataType::Binary,
        6 => DataType::Date32,
        7 => DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
        8 => DataType::List(Arc::new(Field::new("item", DataType::Int32, true))),
        9 => DataType::Struct(Fields::from(vec![Field::new("a", DataType::Int32, true)])),
        10 => DataType::Dictionary(Box::new(DataType::Int32), Box::new(DataType::Utf8)),
        11 => DataType::Decimal128(10, 2),
        12 => DataType::LargeUtf8,
        13 => DataType::FixedSizeBinary(4),
        14 => DataType::Utf8View,
        _ => DataType::Null,
    }
}

fn build_schema(input: &SchemaInput) -> arrow::datatypes::Schema {
    let fields: Vec<_> = input
        .fields
        .iter()
        .take(6)
        .map(|field| {
            let data_type = arrow_type(field.data_type);
            // Only primitive columns get values; the others are all null.
            let nullable = field.nullable || !has_values(&data_type) || data_type.is_null();
            arrow::datatypes::Field::new(
                FIELD_NAMES[usize::from(field.name) % FIELD_NAMES.len()],
                data_type,
                nullable,
            )
        })
        .collect();
    arrow::datatypes::Schema::new(fields)
}

fn has_values(data_type: &arrow::datatypes::DataType) -> bool {
    use arrow::datatypes::DataType;
    matches!(
        data_type,
        DataType::Int64 | DataType::Int32 | DataType::Utf8 | DataType::Boolean | DataType::Float64
    )
}

/// A batch of `rows` rows for `schema`; values and nulls from `bytes`.
fn build_batch(
    schema: &arrow::datatypes::SchemaRef,
    input: &BatchInput,
) -> Option<arrow::record_batch::RecordBatch> {
    use arrow::array::{
        new_null_array, ArrayRef, BooleanArray, Float64Array, Int32Array, Int64Array, StringArray,
    };
    use arrow::datatypes::DataType;
    let rows = usize::from(input.rows % 8);
    let mut bytes = input.values.iter().copied().cycle();
    let mut next = || bytes.next().unwrap_or(0);
    let columns: Vec<ArrayRef> = schema
        .fields()
        .iter()
        .map(|field| {
            let cells: Vec<Option<u8>> = (0..rows)
                .map(|_| {
                    let byte = next();
                    (!field.is_nullable() || byte % 4 != 0).then_some(byte)
                })
                .collect();
            let array: ArrayRef = match field.data_type() {
                DataType::Int64 => Arc::new(Int64Array::from_iter(
                    cells.iter().map(|c| c.map(|b| i64::from(b % 4))),
                )),
                DataType::Int32 => Arc::new(Int32Array::from_iter(
                    cells.iter().map(|c| c.map(|b| i32::from(b % 4))),
                )),
                DataType::Utf8 => Arc::new(StringArray::from_iter(
                    cells
                        .iter()
                        .map(|c| c.map(|b| FIELD_NAMES[usize::from(b) % 5])),
                )),
                DataType::Boolean => Arc::new(BooleanArray::from_iter(
                    cells.iter().map(|c| c.map(|b| b % 2 == 0)),
                )),
                DataType::Float64 => Arc::new(Float64Array::from_iter(
                    cells.iter().map(|c| c.map(f64::from)),
                )),
                other => new_null_array(other, rows),
            };
            array
        })
        .collect();
    arrow::record_batch::RecordBatch::try_new(schema.clone(), columns).ok()
}

fn build_cmd(input: &CmdInput) -> Vec<u8> {
    match input {
        CmdInput::Raw(bytes) => bytes.clone(),
        CmdInput::Any {
            type_url,
            raw_url,
            value,
        } => {
            let type_url = match type_url % 4 {
                0 | 1 => {
                    flightlog::flight::COMMAND_TYPE_URLS[usize::from(type_url % 2)].to_string()
                }
                2 => format!("{}x", flightlog::flight::COMMAND_TYPE_URLS[1]),
                _ => raw_url.clone(),
            };
            let value = match value {
                AnyValue::Raw(bytes) => bytes.clone(),
                AnyValue::Command {
                    path,
                    origin,
                    sequence_number,
                    format,
                    descriptors,
                } => flightlog::proto::sync::DataSyncCommand {
                    path: path.clone(),
                    origin: origin.clone(),
                    sequence_number: *sequence_number,
                    format: *format,
                    column_descriptors: descriptors.iter().take(8).map(column_descriptor).collect(),
                    store: None,
                }
                .encode_to_vec(),
            };
            flightlog::flight::Any { type_url, value }.encode_to_vec()
        }
    }
}

/// The `FlightData` messages of the input: valid ones first (bits flipped),
/// then raw ones, at most [`FLIGHT_MESSAGES_MAX`] in all.
fn build_messages(input: &CommandDecodeInput) -> Vec<arrow_flight::FlightData> {
    let mut messages = Vec::new();
    if let Some(schema) = &input.schema {
        let schema = Arc::new(build_schema(schema));
        let batches: Vec<_> = input
            .batch
            .iter()
            .filter_map(|batch| build_batch(&schema, batch))
            .collect();
        if let Ok(encoded) = arrow_flight::utils::batches_to_flight_data(&schema, batches) {
            messages.extend(encoded);
        }
    }
    messages.truncate(FLIGHT_MESSAGES_MAX);
    for flip in input.flips.iter().take(8) {
        let count = messages.len();
        let Some(message) = messages.get_mut(usize::from(flip.message) % count.max(1)) else {
            break;
        };
        let target = if flip.body {
            &mut message.data_body
        } else {
            &mut message.data_header
        };
        let mut bytes = target.to_vec();
        flip_bits(&mut bytes, &[flip.bit]);
        *target = bytes.into();
    }
    for raw in &input.raw {
        if messages.len() >= FLIGHT_MESSAGES_MAX {
            break;
        }
        let cap = |bytes: &[u8]| bytes[..bytes.len().min(RAW_MESSAGE_BYTES_MAX)].to_vec();
        messages.push(arrow_flight::FlightData {
            data_header: cap(&raw.header).into(),
            data_body: cap(&raw.body).into(),
            ..Default::default()
        });
    }
    messages
}

/// Entry point of `command_decode`: the rest of the input as a structured
/// [`CommandDecodeInput`].
pub fn command_decode(data: &[u8]) {
    let data = &data[..data.len().min(INPUT_BYTES_MAX)];
    if let Ok(input) = CommandDecodeInput::arbitrary_take_rest(Unstructured::new(data)) {
        command_decode_structured(&input);
    }
}

/// `decode_command` on the descriptor never panics and accepts only a
/// `CMD` descriptor holding an `Any` with one of the two accepted
/// `type_url`s around a valid `DataSyncCommand`; the Arrow stream goes
/// through the node's `do_put` decoding and every decoded schema and batch
/// through the checks `do_put` makes, none of which panics.
pub fn command_decode_structured(input: &CommandDecodeInput) {
    use arrow_flight::flight_descriptor::DescriptorType;
    let cmd = build_cmd(&input.cmd);
    let descriptor = arrow_flight::FlightDescriptor {
        r#type: match input.descriptor_type {
            0..=250 => DescriptorType::Cmd as i32,
            other => i32::from(other) - 253,
        },
        cmd: cmd.clone().into(),
        path: Vec::new(),
    };
    match flightlog::flight::decode_command(Some(&descriptor)) {
        Ok(command) => {
            assert_eq!(descriptor.r#type, DescriptorType::Cmd as i32);
            let any = flightlog::flight::Any::decode(&cmd[..]).expect("accepted: an Any");
            assert!(
                flightlog::flight::COMMAND_TYPE_URLS.contains(&any.type_url.as_str()),
                "accepted type_url {:?}",
                any.type_url
            );
            assert_eq!(
                flightlog::proto::sync::DataSyncCommand::decode(&any.value[..]).ok(),
                Some(command)
            );
        }
        Err(error) => assert!(
            matches!(error, flightlog::error::NodeError::InvalidCommand { .. }),
            "{error}"
        ),
    }
    assert!(flightlog::flight::decode_command(None).is_err());

    let messages = build_messages(input);
    let mut descriptors: Vec<_> = input
        .descriptors
        .iter()
        .take(8)
        .map(column_descriptor)
        .collect();
    let items = decode_stream(messages);
    let mut layout = None;
    for item in items {
        match item {
            StreamItem::Schema(schema) => {
                if input.descriptors_fit {
                    fit_descriptors(&mut descriptors, schema.fields().len());
                }
                layout = check_layout(&descriptors, &schema);
            }
            StreamItem::Batch(batch) => {
                if layout.is_none() {
                    if input.descriptors_fit {
                        fit_descriptors(&mut descriptors, batch.num_columns());
                    }
                    layout = check_layout(&descriptors, &batch.schema());
                }
                if let Some(layout) = &layout {
                    check_batch(layout, &batch);
                }
            }
        }
    }
}

fn fit_descriptors(descriptors: &mut Vec<flightlog::proto::sync::ColumnDescriptor>, fields: usize) {
    descriptors.resize(fields, Default::default());
}

/// What `do_put` does with a schema: validate the layout and map every
/// table column to the table store's type.
fn check_layout(
    descriptors: &[flightlog::proto::sync::ColumnDescriptor],
    schema: &arrow::datatypes::Schema,
) -> Option<flightlog::sync::layout::SyncLayout> {
    let layout = flightlog::sync::layout::SyncLayout::from_descriptors(descriptors, schema).ok()?;
    for field in layout.table_fields() {
        let _ = flightlog::lake::delta_arrow_type(field.name(), field.data_type());
    }
    Some(layout)
}

/// What `do_put` does with a batch: the change-batch checks, then the WAL
/// record encoding, which must decode again to the same rows.
fn check_batch(
    layout: &flightlog::sync::layout::SyncLayout,
    batch: &arrow::record_batch::RecordBatch,
) {
    use flightlog::sync::squash::{check_change_batch, squash, ChangeBatch};
    let change = ChangeBatch { layout, batch };
    if check_change_batch(&change).is_err() || batch.num_rows() == 0 {
        return;
    }
    // A checked message squashes on its own.
    squash(&[change]).expect("a checked change batch squashes");
    let command = flightlog::proto::sync::DataSyncCommand::default();
    let Ok(payload) =
        flightlog::record::encode_record(&command, &batch.schema(), std::slice::from_ref(batch))
    else {
        return;
    };
    let record = decode_record(&payload).expect("an encoded record decodes");
    let rows: usize = record.batches.iter().map(|b| b.num_rows()).sum();
    assert_eq!(rows, batch.num_rows());
}

enum StreamItem {
    Schema(arrow::datatypes::SchemaRef),
    Batch(arrow::record_batch::RecordBatch),
}

/// Decodes `messages` as `do_put` decodes its Arrow stream (arrow-flight's
/// `FlightDataDecoder` with arrow-ipc panics contained): every error is an
/// `InvalidArgument` one, and the stream ends after an error.
fn decode_stream(messages: Vec<arrow_flight::FlightData>) -> Vec<StreamItem> {
    use flightlog::error::{ErrorKind, NodeError};
    use flightlog::put::PutItem;
    use futures::StreamExt;
    let stream = futures::stream::iter(messages.into_iter().map(Ok));
    let decoded: Vec<Result<PutItem, NodeError>> = futures::executor::block_on(
        flightlog::flight::decode_put_stream(stream, 1 << 20).collect::<Vec<_>>(),
    );
    let mut items = Vec::new();
    for item in decoded {
        match item {
            Ok(PutItem::Schema(schema)) => items.push(StreamItem::Schema(schema)),
            Ok(PutItem::Batch(batch)) => items.push(StreamItem::Batch(batch)),
            Err(error) => {
                assert_eq!(error.kind(), ErrorKind::InvalidInput, "{error}");
                // do_put stops at the first error.
                break;
            }
        }
    }
    items
}

// ---------------------------------------------------------------------------
// wal_ops

/// A WAL configuration with tiny segments and a list of operations on it.
#[derive(Debug, Arbitrary)]
pub struct WalOpsInput {
    /// Segment size 512 B + 0..=3.5 KiB.
    pub segment_bytes: u16,
    pub init: u8,
    pub recycle_pool_max: u8,
    /// Writer batch limit 1 B + 0..=8 KiB (small: batches split).
    pub batch_bytes: u16,
    pub ops: Vec<WalOp>,
}

#[derive(Debug, Arbitrary)]
pub enum WalOp {
    Append(FrameInput),
    /// 1 to 4 frames (`count`) submitted before any is awaited (one writer
    /// batch or a few). Fixed-size arrays keep each operation a few bytes.
    AppendConcurrently {
        count: u8,
        frames: [FrameInput; 4],
    },
    /// `truncate_below(next Lsn - back)`.
    TruncateBelow {
        back: u8,
    },
    /// Room left on the disk beyond what is used now; None: unlimited.
    SetSpace(Option<u16>),
    /// Power cut after `after_operations` more storage operations (None: now,
    /// between operations) while these frames are appended; recover from
    /// the crash image.
    Crash {
        mode: CrashModeInput,
        after_operations: Option<u8>,
        count: u8,
        frames: [FrameInput; 4],
    },
    CloseAndReopen,
}

#[derive(Debug, Arbitrary)]
pub struct FrameInput {
    pub kind: u8,
    /// Payload length modulo 4 KiB + 1.
    pub len: u16,
}

#[derive(Debug, Arbitrary)]
pub enum CrashModeInput {
    DropUnsynced,
    KeepUnsynced,
    ZeroFilled,
    TornAt(u16),
}

impl CrashModeInput {
    fn mode(&self) -> flightlog::wal::storage::CrashMode {
        use flightlog::wal::storage::CrashMode;
        match self {
            CrashModeInput::DropUnsynced => CrashMode::DropUnsynced,
            CrashModeInput::KeepUnsynced => CrashMode::KeepUnsynced,
            CrashModeInput::ZeroFilled => CrashMode::ZeroFilled,
            CrashModeInput::TornAt(keep) => CrashMode::TornAt {
                keep_bytes: usize::from(*keep),
            },
        }
    }
}

const WAL_OPS_MAX: usize = 24;
const WAL_PAYLOAD_BYTES_MAX: usize = 4096;

/// What the WAL has promised: acknowledged frames by Lsn, every payload ever
/// submitted, and the floor below which truncation may have removed frames.
#[derive(Default)]
struct WalModel {
    acked: std::collections::BTreeMap<Lsn, Vec<u8>>,
    submitted: std::collections::HashSet<Vec<u8>>,
    floor: Lsn,
    /// Lsn the next frame gets, as the last recovery or append said.
    next_lsn: Lsn,
    /// Distinguishes payloads: each one starts with its serial number.
    serial: u64,
    wal_id: Option<WalId>,
}

impl WalModel {
    fn payload(&mut self, frame: &FrameInput) -> Vec<u8> {
        self.serial += 1;
        let len = usize::from(frame.len) % (WAL_PAYLOAD_BYTES_MAX + 1);
        let serial = self.serial.to_le_bytes();
        let payload: Vec<u8> = (0..len)
            .map(|i| {
                serial
                    .get(i)
                    .copied()
                    .unwrap_or((i as u64 ^ self.serial) as u8)
            })
            .collect();
        self.submitted.insert(payload.clone());
        payload
    }

    fn acknowledge(&mut self, appended: flightlog::wal::Appended, payload: Vec<u8>) {
        assert!(
            appended.lsn >= self.next_lsn,
            "Lsn {:?} handed out again (next was {:?})",
            appended.lsn,
            self.next_lsn
        );
        assert!(
            self.acked.insert(appended.lsn, payload).is_none(),
            "Lsn {:?} acknowledged twice",
            appended.lsn
        );
        self.next_lsn = Lsn(appended.lsn.0 + 1);
    }

    /// Checks a recovery against the model and adopts what it found.
    fn check(&mut self, wal: &Wal, recovery: &flightlog::wal::Recovery, context: &str) {
        if let Some(id) = self.wal_id {
            assert_eq!(recovery.wal_id, id, "{context}: the WAL identity changed");
            assert!(!recovery.created, "{context}: a new WAL was created");
        }
        self.wal_id = Some(recovery.wal_id);
        let mut expected = recovery.frames.first().map(|f| f.header.lsn);
        let mut recovered = std::collections::BTreeMap::new();
        for frame in &recovery.frames {
            assert_eq!(Some(frame.header.lsn), expected, "{context}: Lsn gap");
            expected = Some(Lsn(frame.header.lsn.0 + 1));
            let view = wal.read(frame.pointer).expect("a recovered frame reads");
            let payload = view.payload().to_vec();
            assert!(
                self.submitted.contains(&payload),
                "{context}: Lsn {:?} holds a payload nobody submitted",
                frame.header.lsn
            );
            recovered.insert(frame.header.lsn, payload);
        }
        if let Some(next) = expected {
            assert_eq!(recovery.next_lsn, next, "{context}: next Lsn");
        }
        for (lsn, payload) in self.acked.range(self.floor..) {
            assert_eq!(
                recovered.get(lsn),
                Some(payload),
                "{context}: acknowledged Lsn {lsn:?} lost or changed (floor {:?})",
                self.floor
            );
        }
        if let Some((last, _)) = self.acked.last_key_value() {
            assert!(
                recovery.next_lsn > *last,
                "{context}: next Lsn {:?} reuses acknowledged {last:?}",
                recovery.next_lsn
            );
        }
        // Frames that survived without an acknowledgement are kept from now
        // on: a later recovery must not lose or change them either.
        for (lsn, payload) in recovered {
            self.acked.entry(lsn).or_insert(payload);
        }
        self.next_lsn = recovery.next_lsn;
    }
}

fn wal_ops_config(input: &WalOpsInput) -> WalConfig {
    WalConfig {
        segment_bytes_target: 512 + u64::from(input.segment_bytes % 3585),
        frame_bytes_max: WAL_PAYLOAD_BYTES_MAX as u64,
        segment_init: match input.init % 3 {
            0 => SegmentInit::Grow,
            1 => SegmentInit::ZeroFill,
            _ => SegmentInit::Recycle,
        },
        recycle_pool_max: usize::from(input.recycle_pool_max % 3),
        prepare_spare: input.recycle_pool_max.is_multiple_of(2),
        queue_depth: 8,
        batch_bytes_max: 1 + u64::from(input.batch_bytes % 8192),
    }
}

/// Entry point of `wal_ops`: the input as a [`WalOpsInput`] whose
/// operations take the rest of the bytes, one after the other (not
/// `arbitrary_take_rest`, whose continuation bit per element makes random
/// bytes yield one operation on average).
pub fn wal_ops(data: &[u8]) {
    let data = &data[..data.len().min(INPUT_BYTES_MAX)];
    let mut u = Unstructured::new(data);
    let (Ok(segment_bytes), Ok(init), Ok(recycle_pool_max), Ok(batch_bytes)) =
        (u.arbitrary(), u.arbitrary(), u.arbitrary(), u.arbitrary())
    else {
        return;
    };
    let mut ops = Vec::new();
    while !u.is_empty() && ops.len() < WAL_OPS_MAX {
        match u.arbitrary() {
            Ok(op) => ops.push(op),
            Err(_) => break,
        }
    }
    wal_ops_structured(&WalOpsInput {
        segment_bytes,
        init,
        recycle_pool_max,
        batch_bytes,
        ops,
    });
}

/// Runs the operations against a WAL in the crash model and checks, after
/// every reopen, that every acknowledged frame at or above the truncation
/// floor is recovered with its exact payload, that nothing recovered was
/// never submitted, that Lsns are contiguous and never reused, and that
/// `Wal::open` accepts every image a crash produced.
pub fn wal_ops_structured(input: &WalOpsInput) {
    let config = wal_ops_config(input);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let mut storage = CrashStorage::new();
    let mut model = WalModel::default();
    let (mut wal, recovery) =
        Wal::open(Arc::new(storage.clone()), config.clone()).expect("a new WAL opens");
    model.check(&wal, &recovery, "create");
    for (step, op) in input.ops.iter().take(WAL_OPS_MAX).enumerate() {
        let context = format!("op {step} {op:?}");
        match op {
            WalOp::Append(frame) => {
                let payload = model.payload(frame);
                let result = runtime.block_on(wal.append(kind_from(frame.kind), payload.clone()));
                settle(&mut model, payload, result, false, &context);
            }
            WalOp::AppendConcurrently { count, frames } => {
                let frames = &frames[..usize::from(count % 4) + 1];
                append_concurrently(&runtime, &wal, &mut model, frames, false, &context);
            }
            WalOp::TruncateBelow { back } => {
                let below = Lsn(model.next_lsn.0.saturating_sub(u64::from(*back)));
                wal.truncate_below(below).expect("truncation in the model");
                model.floor = model.floor.max(below);
            }
            WalOp::SetSpace(room) => {
                let used: u64 = snapshot(&storage)
                    .iter()
                    .map(|(_, bytes)| bytes.len() as u64)
                    .sum();
                storage.set_space(room.map(|room| used + u64::from(room)));
            }
            WalOp::Crash {
                mode,
                after_operations,
                count,
                frames,
            } => {
                if let Some(after) = after_operations {
                    let frames = &frames[..usize::from(count % 4) + 1];
                    storage.crash_at(u64::from(*after));
                    append_concurrently(&runtime, &wal, &mut model, frames, true, &context);
                }
                let image = storage.crash_image(mode.mode());
                wal.close();
                storage = image;
                let (reopened, recovery) = Wal::open(Arc::new(storage.clone()), config.clone())
                    .unwrap_or_else(|error| panic!("{context}: recovery refused: {error}"));
                model.check(&reopened, &recovery, &context);
                wal = reopened;
            }
            WalOp::CloseAndReopen => {
                wal.close();
                let (reopened, recovery) =
                    match Wal::open(Arc::new(storage.clone()), config.clone()) {
                        Ok(opened) => opened,
                        Err(error) if error.is_no_space() => {
                            // A full disk may refuse the restart; freeing space helps.
                            storage.set_space(None);
                            Wal::open(Arc::new(storage.clone()), config.clone()).unwrap_or_else(
                                |error| panic!("{context}: reopen refused: {error}"),
                            )
                        }
                        Err(error) => panic!("{context}: reopen refused: {error}"),
                    };
                model.check(&reopened, &recovery, &context);
                wal = reopened;
            }
        }
    }
    wal.close();
    // Whatever happened last, a clean power cut now loses nothing.
    let image = storage.crash_image(flightlog::wal::storage::CrashMode::DropUnsynced);
    let (wal, recovery) =
        Wal::open(Arc::new(image), config).expect("the final crash image recovers");
    model.check(&wal, &recovery, "final");
    wal.close();
}

fn append_concurrently(
    runtime: &tokio::runtime::Runtime,
    wal: &Wal,
    model: &mut WalModel,
    frames: &[FrameInput],
    dying: bool,
    context: &str,
) {
    let payloads: Vec<(FrameKind, Vec<u8>)> = frames
        .iter()
        .take(4)
        .map(|frame| (kind_from(frame.kind), model.payload(frame)))
        .collect();
    let results = runtime.block_on(async {
        let mut waits = Vec::new();
        for (kind, payload) in &payloads {
            waits.push(wal.submit(*kind, payload.clone()).await);
        }
        let mut results = Vec::new();
        for wait in waits {
            results.push(match wait {
                Ok(wait) => wait.await,
                Err(error) => Err(error),
            });
        }
        results
    });
    for ((_, payload), result) in payloads.into_iter().zip(results) {
        settle(model, payload, result, dying, context);
    }
}

/// Records an append's outcome: acknowledged frames join the model; a full
/// disk may refuse, and so may a WAL whose storage is `dying` (a crash is
/// armed), nothing else may.
fn settle(
    model: &mut WalModel,
    payload: Vec<u8>,
    result: Result<flightlog::wal::Appended, WalError>,
    dying: bool,
    context: &str,
) {
    match result {
        Ok(appended) => model.acknowledge(appended, payload),
        Err(WalError::NoSpace { .. }) => {}
        Err(WalError::Failed { .. }) if dying => {}
        Err(error) => panic!("{context}: unexpected append error: {error}"),
    }
}
