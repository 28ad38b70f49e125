//! The WAL's on-disk format: pure encoding and decoding, no I/O. Every layout
//! here is specified byte for byte in `wal-format.md`; the two change together.
//!
//! Every function that reads bytes treats them as untrusted: lengths are
//! checked before slicing, nothing is allocated from a length field, and
//! garbage yields an error or a `Bad` outcome, never a panic.

use std::mem::size_of;

use crate::wal::{Lsn, SegmentId, WalId};

/// Current format version, written in every segment header.
pub const FORMAT_VERSION: u32 = 1;

// Segment header (64 bytes, little-endian):
//    8 bytes  magic "FLTLGWAL"
//    4 bytes  format version
//    4 bytes  header length (64)
//   16 bytes  WAL identity (random, fixed for the life of the WAL)
//    8 bytes  segment id
//    8 bytes  first Lsn (the Lsn of the segment's first frame)
//   12 bytes  reserved, zero
//    4 bytes  CRC-32 of bytes 0..60
pub const SEGMENT_MAGIC: [u8; 8] = *b"FLTLGWAL";
const MAGIC_OFFSET: usize = 0;
const VERSION_OFFSET: usize = MAGIC_OFFSET + SEGMENT_MAGIC.len();
const HEADER_LEN_OFFSET: usize = VERSION_OFFSET + size_of::<u32>();
const WAL_ID_OFFSET: usize = HEADER_LEN_OFFSET + size_of::<u32>();
const SEGMENT_ID_OFFSET: usize = WAL_ID_OFFSET + size_of::<u128>();
const FIRST_LSN_OFFSET: usize = SEGMENT_ID_OFFSET + size_of::<u64>();
const RESERVED_OFFSET: usize = FIRST_LSN_OFFSET + size_of::<u64>();
const HEADER_CRC_OFFSET: usize = RESERVED_OFFSET + 12;
/// Size of the segment header; the first frame starts here.
pub const SEGMENT_HEADER_LEN: usize = HEADER_CRC_OFFSET + size_of::<u32>();
const _: () = assert!(SEGMENT_HEADER_LEN == 64);

// Frame header (28 bytes, little-endian), followed by the payload:
//    4 bytes  body length: bytes from `kind` to the end of the payload
//    4 bytes  CRC-32 of (segment id as u64 LE) ++ the body
//    1 byte   kind (1 data, 2 checkpoint, 3 abort)
//    1 byte   flags (zero in version 1)
//    2 bytes  reserved, zero
//    8 bytes  Lsn
//    8 bytes  durable Lsn: highest Lsn fsynced before this frame was written
const BODY_LEN_OFFSET: usize = 0;
const CRC_OFFSET: usize = BODY_LEN_OFFSET + size_of::<u32>();
/// Where the CRC-covered body starts.
const BODY_OFFSET: usize = CRC_OFFSET + size_of::<u32>();
const KIND_OFFSET: usize = BODY_OFFSET;
const FLAGS_OFFSET: usize = KIND_OFFSET + size_of::<u8>();
const FRAME_RESERVED_OFFSET: usize = FLAGS_OFFSET + size_of::<u8>();
const LSN_OFFSET: usize = FRAME_RESERVED_OFFSET + size_of::<u16>();
const DURABLE_LSN_OFFSET: usize = LSN_OFFSET + size_of::<u64>();
/// Size of the frame header; the payload starts here.
pub const FRAME_HEADER_LEN: usize = DURABLE_LSN_OFFSET + size_of::<u64>();
const _: () = assert!(FRAME_HEADER_LEN == 28);
/// Body bytes that precede the payload (kind .. durable Lsn).
const BODY_HEADER_LEN: usize = FRAME_HEADER_LEN - BODY_OFFSET;
/// Header bytes outside the body (length and CRC fields).
pub const BODY_LEN_FIELDS_BEFORE_BODY: u64 = BODY_OFFSET as u64;

/// Hard ceiling on a frame's body, whatever the configuration: a length field
/// above it is garbage, not a large frame.
pub const FRAME_BODY_LEN_CEILING: u64 = 1 << 30;

/// What a frame carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FrameKind {
    /// One sync message: command metadata and an Arrow IPC stream.
    Data,
    /// Control state: durable sequences per origin, applied Lsn per table.
    Checkpoint,
    /// An origin's open transaction is discarded (written at recovery).
    Abort,
}

impl FrameKind {
    pub fn to_byte(self) -> u8 {
        match self {
            FrameKind::Data => 1,
            FrameKind::Checkpoint => 2,
            FrameKind::Abort => 3,
        }
    }

    pub fn from_byte(byte: u8) -> Option<FrameKind> {
        match byte {
            1 => Some(FrameKind::Data),
            2 => Some(FrameKind::Checkpoint),
            3 => Some(FrameKind::Abort),
            _ => None,
        }
    }
}

/// A decoded segment header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentHeader {
    pub wal_id: WalId,
    pub segment_id: SegmentId,
    pub first_lsn: Lsn,
}

/// Why a segment header was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    #[error("segment header is {len} bytes, needs {SEGMENT_HEADER_LEN}")]
    Short { len: usize },
    #[error("bad magic {found:02x?}: not a flightlog WAL segment")]
    BadMagic { found: [u8; 8] },
    #[error("segment format version {found} is not supported (this build reads version {FORMAT_VERSION})")]
    UnsupportedVersion { found: u32 },
    #[error("segment header length {found} is not {SEGMENT_HEADER_LEN}")]
    BadHeaderLength { found: u32 },
    #[error("segment header CRC mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    CrcMismatch { stored: u32, computed: u32 },
    #[error("segment header reserved bytes are not zero")]
    Reserved,
}

pub fn encode_segment_header(header: &SegmentHeader) -> [u8; SEGMENT_HEADER_LEN] {
    let mut out = [0u8; SEGMENT_HEADER_LEN];
    out[MAGIC_OFFSET..VERSION_OFFSET].copy_from_slice(&SEGMENT_MAGIC);
    put_u32(&mut out, VERSION_OFFSET, FORMAT_VERSION);
    put_u32(&mut out, HEADER_LEN_OFFSET, SEGMENT_HEADER_LEN as u32);
    out[WAL_ID_OFFSET..SEGMENT_ID_OFFSET].copy_from_slice(&header.wal_id.0.to_le_bytes());
    put_u64(&mut out, SEGMENT_ID_OFFSET, header.segment_id.0);
    put_u64(&mut out, FIRST_LSN_OFFSET, header.first_lsn.0);
    let crc = crc32fast::hash(&out[..HEADER_CRC_OFFSET]);
    put_u32(&mut out, HEADER_CRC_OFFSET, crc);
    out
}

/// Decodes and checks a segment header from the start of `bytes`.
pub fn decode_segment_header(bytes: &[u8]) -> Result<SegmentHeader, HeaderError> {
    let header = bytes
        .get(..SEGMENT_HEADER_LEN)
        .ok_or(HeaderError::Short { len: bytes.len() })?;
    let mut magic = [0u8; 8];
    magic.copy_from_slice(&header[MAGIC_OFFSET..VERSION_OFFSET]);
    if magic != SEGMENT_MAGIC {
        return Err(HeaderError::BadMagic { found: magic });
    }
    // The CRC is checked before the version so that a torn header is reported
    // as damage, not as a future version.
    let stored = get_u32(header, HEADER_CRC_OFFSET);
    let computed = crc32fast::hash(&header[..HEADER_CRC_OFFSET]);
    if stored != computed {
        return Err(HeaderError::CrcMismatch { stored, computed });
    }
    let version = get_u32(header, VERSION_OFFSET);
    if version != FORMAT_VERSION {
        return Err(HeaderError::UnsupportedVersion { found: version });
    }
    let header_len = get_u32(header, HEADER_LEN_OFFSET);
    if header_len as usize != SEGMENT_HEADER_LEN {
        return Err(HeaderError::BadHeaderLength { found: header_len });
    }
    if header[RESERVED_OFFSET..HEADER_CRC_OFFSET]
        .iter()
        .any(|b| *b != 0)
    {
        return Err(HeaderError::Reserved);
    }
    let mut id = [0u8; 16];
    id.copy_from_slice(&header[WAL_ID_OFFSET..SEGMENT_ID_OFFSET]);
    Ok(SegmentHeader {
        wal_id: WalId(u128::from_le_bytes(id)),
        segment_id: SegmentId(get_u64(header, SEGMENT_ID_OFFSET)),
        first_lsn: Lsn(get_u64(header, FIRST_LSN_OFFSET)),
    })
}

/// The fields of a frame header that the writer chooses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    pub kind: FrameKind,
    pub lsn: Lsn,
    pub durable_lsn: Lsn,
}

/// Total on-disk size of a frame with a payload of `payload_len` bytes.
pub fn frame_len(payload_len: usize) -> usize {
    FRAME_HEADER_LEN + payload_len
}

/// CRC-32 of a payload alone, computed by the appender (off the writer
/// thread); [`encode_frame_header`] combines it with the header fields.
pub fn payload_crc(payload: &[u8]) -> u32 {
    crc32fast::hash(payload)
}

/// Encodes a frame header for `payload_len` bytes of payload whose CRC-32 is
/// `payload_crc`, in segment `segment`.
pub fn encode_frame_header(
    segment: SegmentId,
    header: &FrameHeader,
    payload_len: usize,
    payload_crc: u32,
) -> [u8; FRAME_HEADER_LEN] {
    let mut out = [0u8; FRAME_HEADER_LEN];
    let body_len = (BODY_HEADER_LEN + payload_len) as u32;
    put_u32(&mut out, BODY_LEN_OFFSET, body_len);
    out[KIND_OFFSET] = header.kind.to_byte();
    put_u64(&mut out, LSN_OFFSET, header.lsn.0);
    put_u64(&mut out, DURABLE_LSN_OFFSET, header.durable_lsn.0);
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&segment.0.to_le_bytes());
    hasher.update(&out[BODY_OFFSET..FRAME_HEADER_LEN]);
    hasher.combine(&crc32fast::Hasher::new_with_initial_len(
        payload_crc,
        payload_len as u64,
    ));
    put_u32(&mut out, CRC_OFFSET, hasher.finalize());
    out
}

/// Encodes a whole frame (header and payload) into one buffer.
pub fn encode_frame(segment: SegmentId, header: &FrameHeader, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(frame_len(payload.len()));
    out.extend_from_slice(&encode_frame_header(
        segment,
        header,
        payload.len(),
        payload_crc(payload),
    ));
    out.extend_from_slice(payload);
    out
}

/// A frame read back and verified.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameRef<'a> {
    pub header: FrameHeader,
    /// Offset of the frame in its segment file.
    pub offset: u64,
    /// Total length of the frame on disk (header and payload).
    pub len: u32,
    pub payload: &'a [u8],
}

/// Why bytes at an offset are not a valid frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error, serde::Serialize)]
#[serde(tag = "reason", rename_all = "snake_case")]
pub enum BadFrame {
    #[error("end of data (zero length field)")]
    ZeroLength,
    #[error("only {available} bytes left, a frame header needs {FRAME_HEADER_LEN}")]
    ShortHeader { available: usize },
    #[error("body length {body_len} is below the minimum {BODY_HEADER_LEN}")]
    BodyTooShort { body_len: u32 },
    #[error("body length {body_len} exceeds the limit {limit}")]
    BodyTooLong { body_len: u32, limit: u64 },
    #[error("body length {body_len} runs past the end of the segment ({available} bytes left)")]
    PastEnd { body_len: u32, available: usize },
    #[error("CRC mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    CrcMismatch { stored: u32, computed: u32 },
    #[error("unknown frame kind {kind}")]
    UnknownKind { kind: u8 },
    #[error("non-zero flags or reserved bytes")]
    Reserved,
    #[error("valid frame with Lsn {found} where Lsn {expected} was due (stale bytes)")]
    UnexpectedLsn { expected: u64, found: u64 },
}

/// Outcome of decoding at one offset: a verified frame, or why not.
pub type FrameDecode<'a> = Result<FrameRef<'a>, BadFrame>;

/// Decodes the frame at `offset` of a segment's bytes. `body_len_max` caps
/// the length field (the configured frame limit); nothing is allocated.
pub fn decode_frame(
    segment: SegmentId,
    bytes: &[u8],
    offset: usize,
    body_len_max: u64,
) -> FrameDecode<'_> {
    let rest = bytes.get(offset..).unwrap_or(&[]);
    if rest.len() >= size_of::<u32>() && get_u32(rest, BODY_LEN_OFFSET) == 0 {
        return Err(BadFrame::ZeroLength);
    }
    if rest.len() < FRAME_HEADER_LEN {
        return Err(BadFrame::ShortHeader {
            available: rest.len(),
        });
    }
    let body_len = get_u32(rest, BODY_LEN_OFFSET);
    if (body_len as usize) < BODY_HEADER_LEN {
        return Err(BadFrame::BodyTooShort { body_len });
    }
    let limit = body_len_max.min(FRAME_BODY_LEN_CEILING);
    if u64::from(body_len) > limit {
        return Err(BadFrame::BodyTooLong { body_len, limit });
    }
    let body_end = BODY_OFFSET + body_len as usize;
    let Some(body) = rest.get(BODY_OFFSET..body_end) else {
        return Err(BadFrame::PastEnd {
            body_len,
            available: rest.len() - BODY_OFFSET,
        });
    };
    let stored = get_u32(rest, CRC_OFFSET);
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&segment.0.to_le_bytes());
    hasher.update(body);
    let computed = hasher.finalize();
    if stored != computed {
        return Err(BadFrame::CrcMismatch { stored, computed });
    }
    let kind = FrameKind::from_byte(rest[KIND_OFFSET]).ok_or(BadFrame::UnknownKind {
        kind: rest[KIND_OFFSET],
    })?;
    if rest[FLAGS_OFFSET] != 0 || rest[FRAME_RESERVED_OFFSET..LSN_OFFSET] != [0, 0] {
        return Err(BadFrame::Reserved);
    }
    Ok(FrameRef {
        header: FrameHeader {
            kind,
            lsn: Lsn(get_u64(rest, LSN_OFFSET)),
            durable_lsn: Lsn(get_u64(rest, DURABLE_LSN_OFFSET)),
        },
        offset: offset as u64,
        len: (BODY_OFFSET + body_len as usize) as u32,
        payload: &rest[FRAME_HEADER_LEN..body_end],
    })
}

/// The header fields of a possible frame at `offset`, if its fixed fields
/// are plausible: a known kind, zero flags and reserved bytes, a durable Lsn
/// below its Lsn, and a body that fits in the bytes left. Used when scanning
/// past a bad frame: only candidates that pass are CRC-checked, so the scan
/// stays linear over high-entropy bytes.
pub fn peek_header(bytes: &[u8], offset: usize) -> Option<(FrameHeader, u32)> {
    let header = bytes.get(offset..offset.checked_add(FRAME_HEADER_LEN)?)?;
    let kind = FrameKind::from_byte(header[KIND_OFFSET])?;
    if header[FLAGS_OFFSET] != 0 || header[FRAME_RESERVED_OFFSET..LSN_OFFSET] != [0, 0] {
        return None;
    }
    let body_len = get_u32(header, BODY_LEN_OFFSET);
    let available = bytes.len() - offset - BODY_OFFSET;
    if (body_len as usize) < BODY_HEADER_LEN || body_len as usize > available {
        return None;
    }
    let lsn = Lsn(get_u64(header, LSN_OFFSET));
    let durable_lsn = Lsn(get_u64(header, DURABLE_LSN_OFFSET));
    if durable_lsn >= lsn {
        return None;
    }
    Some((
        FrameHeader {
            kind,
            lsn,
            durable_lsn,
        },
        body_len,
    ))
}

// Data frame payload (little-endian):
//    4 bytes  command length C
//    C bytes  the `clade.sync.DataSyncCommand` protobuf, as the frame's
//             metadata (origin, sequence number only on the frame that
//             completes a transaction, path, store, column descriptors)
//    8 bytes  row count of the batches that follow
//    rest     an Arrow IPC stream: schema message, record batches, end marker
const COMMAND_LEN_OFFSET: usize = 0;
const COMMAND_OFFSET: usize = COMMAND_LEN_OFFSET + size_of::<u32>();

/// The parts of a data frame's payload, borrowed from the segment bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DataPayload<'a> {
    pub command: &'a [u8],
    pub rows: u64,
    pub ipc_stream: &'a [u8],
}

/// Why a data payload could not be split into its parts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PayloadError {
    #[error("data payload of {len} bytes is too short for its {needed}-byte prefix")]
    Short { len: usize, needed: usize },
}

pub fn encode_data_payload(command: &[u8], rows: u64, ipc_stream: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(COMMAND_OFFSET + command.len() + 8 + ipc_stream.len());
    out.extend_from_slice(&(command.len() as u32).to_le_bytes());
    out.extend_from_slice(command);
    out.extend_from_slice(&rows.to_le_bytes());
    out.extend_from_slice(ipc_stream);
    out
}

/// The fixed bytes a data payload adds around the command and IPC stream.
pub const DATA_PAYLOAD_OVERHEAD: usize = COMMAND_OFFSET + size_of::<u64>();

pub fn decode_data_payload(payload: &[u8]) -> Result<DataPayload<'_>, PayloadError> {
    let short = |needed| PayloadError::Short {
        len: payload.len(),
        needed,
    };
    if payload.len() < COMMAND_OFFSET {
        return Err(short(COMMAND_OFFSET));
    }
    let command_len = get_u32(payload, COMMAND_LEN_OFFSET) as usize;
    let rows_offset = COMMAND_OFFSET
        .checked_add(command_len)
        .ok_or(short(usize::MAX))?;
    let ipc_offset = rows_offset + size_of::<u64>();
    if payload.len() < ipc_offset {
        return Err(short(ipc_offset));
    }
    Ok(DataPayload {
        command: &payload[COMMAND_OFFSET..rows_offset],
        rows: get_u64(payload, rows_offset),
        ipc_stream: &payload[ipc_offset..],
    })
}

fn put_u32(out: &mut [u8], offset: usize, value: u32) {
    out[offset..offset + 4].copy_from_slice(&value.to_le_bytes());
}

fn put_u64(out: &mut [u8], offset: usize, value: u64) {
    out[offset..offset + 8].copy_from_slice(&value.to_le_bytes());
}

/// Reads a u32 at `offset`; callers have checked the bounds.
fn get_u32(bytes: &[u8], offset: usize) -> u32 {
    let mut raw = [0u8; 4];
    raw.copy_from_slice(&bytes[offset..offset + 4]);
    u32::from_le_bytes(raw)
}

/// Reads a u64 at `offset`; callers have checked the bounds.
fn get_u64(bytes: &[u8], offset: usize) -> u64 {
    let mut raw = [0u8; 8];
    raw.copy_from_slice(&bytes[offset..offset + 8]);
    u64::from_le_bytes(raw)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const SEGMENT: SegmentId = SegmentId(7);

    fn header(lsn: u64) -> FrameHeader {
        FrameHeader {
            kind: FrameKind::Data,
            lsn: Lsn(lsn),
            durable_lsn: Lsn(lsn.saturating_sub(1)),
        }
    }

    #[test]
    fn segment_header_round_trips() {
        let h = SegmentHeader {
            wal_id: WalId(0x0123_4567_89ab_cdef_0011_2233_4455_6677),
            segment_id: SegmentId(42),
            first_lsn: Lsn(1000),
        };
        assert_eq!(decode_segment_header(&encode_segment_header(&h)), Ok(h));
    }

    #[test]
    fn unknown_version_is_a_typed_error() {
        let h = SegmentHeader {
            wal_id: WalId(1),
            segment_id: SegmentId(1),
            first_lsn: Lsn(1),
        };
        let mut bytes = encode_segment_header(&h);
        put_u32(&mut bytes, VERSION_OFFSET, 9);
        let crc = crc32fast::hash(&bytes[..HEADER_CRC_OFFSET]);
        put_u32(&mut bytes, HEADER_CRC_OFFSET, crc);
        assert_eq!(
            decode_segment_header(&bytes),
            Err(HeaderError::UnsupportedVersion { found: 9 })
        );
    }

    #[test]
    fn zero_filled_bytes_are_an_end_not_a_frame() {
        let zeros = vec![0u8; 100];
        assert_eq!(
            decode_frame(SEGMENT, &zeros, 0, u64::MAX),
            Err(BadFrame::ZeroLength)
        );
    }

    #[test]
    fn a_frame_is_bound_to_its_segment() {
        let frame = encode_frame(SEGMENT, &header(1), b"payload");
        assert!(decode_frame(SEGMENT, &frame, 0, u64::MAX).is_ok());
        assert!(matches!(
            decode_frame(SegmentId(8), &frame, 0, u64::MAX),
            Err(BadFrame::CrcMismatch { .. })
        ));
    }

    #[test]
    fn a_length_over_the_limit_is_refused_before_reading() {
        let frame = encode_frame(SEGMENT, &header(1), &[7u8; 100]);
        assert!(matches!(
            decode_frame(SEGMENT, &frame, 0, 50),
            Err(BadFrame::BodyTooLong { .. })
        ));
    }

    proptest! {
        #[test]
        fn frame_round_trips(payload in proptest::collection::vec(any::<u8>(), 0..2048), lsn in 1u64..u64::MAX) {
            let h = header(lsn);
            let frame = encode_frame(SEGMENT, &h, &payload);
            let decoded = decode_frame(SEGMENT, &frame, 0, u64::MAX).expect("valid frame");
            prop_assert_eq!(decoded.header, h);
            prop_assert_eq!(decoded.payload, &payload[..]);
            prop_assert_eq!(decoded.len as usize, frame.len());
        }

        #[test]
        fn any_flipped_bit_is_detected(payload in proptest::collection::vec(any::<u8>(), 0..256), bit in any::<prop::sample::Index>()) {
            let mut frame = encode_frame(SEGMENT, &header(3), &payload);
            let bit = bit.index(frame.len() * 8);
            frame[bit / 8] ^= 1 << (bit % 8);
            prop_assert!(decode_frame(SEGMENT, &frame, 0, u64::MAX).is_err());
        }

        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512), offset in 0usize..600) {
            let _ = decode_frame(SEGMENT, &bytes, offset, u64::MAX);
            let _ = decode_segment_header(&bytes);
            let _ = decode_data_payload(&bytes);
        }

        #[test]
        fn data_payload_round_trips(command in proptest::collection::vec(any::<u8>(), 0..64), rows in any::<u64>(), ipc in proptest::collection::vec(any::<u8>(), 0..64)) {
            let encoded = encode_data_payload(&command, rows, &ipc);
            let decoded = decode_data_payload(&encoded).expect("valid payload");
            prop_assert_eq!(decoded, DataPayload { command: &command, rows, ipc_stream: &ipc });
        }
    }
}
