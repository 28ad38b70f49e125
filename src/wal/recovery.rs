//! Recovery: scan every segment in order, verify every frame, and decide
//! where the log ends.
//!
//! Rules (wal-format.md, "Recovery"):
//! - Segment ids are contiguous and Lsns continue from one segment to the
//!   next; a sealed (non-newest) segment must hold every frame up to the next
//!   segment's first Lsn, so any bad frame before that is corruption.
//! - In the newest segment, the log ends at the first bad frame. If a valid
//!   frame of this segment follows it whose durable Lsn shows that the bad
//!   frame had already been fsynced (and so acknowledged) when it was
//!   written, that is corruption too: open fails naming segment and offset.
//!   Otherwise the bad bytes are a torn write and are erased.

use crate::wal::format::{
    decode_frame, decode_segment_header, peek_header, BadFrame, FrameHeader, HeaderError,
    SEGMENT_HEADER_LEN,
};
use crate::wal::segment::{classify, segment_file_name, DirEntry};
use crate::wal::storage::{FileBytes, Storage};
use crate::wal::{Lsn, SegmentId, WalError, WalId, WalPointer};

/// One verified frame found by recovery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecoveredFrame {
    pub header: FrameHeader,
    pub pointer: WalPointer,
}

/// A segment as recovery found it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentSummary {
    pub id: SegmentId,
    pub first_lsn: Lsn,
    /// Lsn of the last frame, None when the segment has no frame.
    pub last_lsn: Option<Lsn>,
    /// Where the next frame would go (the end of the last valid frame).
    pub end_offset: u64,
}

/// Bytes after the end of the log in the newest segment that are not zero:
/// a torn write (or stale bytes of a recycled file) to erase before writing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TornTail {
    pub segment: SegmentId,
    pub offset: u64,
    /// Why the bytes at `offset` are not a frame.
    pub reason: BadFrame,
    /// End of the non-zero bytes after `offset`.
    pub dirty_end: u64,
}

/// What recovery found: the frames of the log and where it ends.
#[derive(Debug, Clone)]
pub struct Scan {
    /// None when the directory holds no segment (a new WAL).
    pub wal_id: Option<WalId>,
    pub segments: Vec<SegmentSummary>,
    pub frames: Vec<RecoveredFrame>,
    /// The Lsn the next frame gets.
    pub next_lsn: Lsn,
    pub torn_tail: Option<TornTail>,
    /// Files of segments under creation when the process stopped.
    pub temporary: Vec<String>,
    pub recyclable: Vec<String>,
}

/// Scans the WAL directory. Reads only; repairs are the caller's.
pub fn scan(storage: &dyn Storage, body_len_max: u64) -> Result<Scan, WalError> {
    let mut ids = Vec::new();
    let mut temporary = Vec::new();
    let mut recyclable = Vec::new();
    for name in storage
        .list()
        .map_err(WalError::io("list the WAL directory"))?
    {
        match classify(&name) {
            DirEntry::Segment(id) => ids.push(id),
            DirEntry::Temporary(name) => temporary.push(name),
            DirEntry::Recyclable(name) => recyclable.push(name),
            DirEntry::Other(_) => {}
        }
    }
    ids.sort();
    recyclable.sort();
    let mut scan = Scan {
        wal_id: None,
        segments: Vec::with_capacity(ids.len()),
        frames: Vec::new(),
        next_lsn: Lsn(1),
        torn_tail: None,
        temporary,
        recyclable,
    };
    for (index, id) in ids.iter().enumerate() {
        let newest = index + 1 == ids.len();
        if let Some(previous) = scan.segments.last() {
            if previous.id.0 + 1 != id.0 {
                return Err(WalError::MissingSegment {
                    after: previous.id,
                    found: *id,
                });
            }
        }
        let bytes = storage
            .map(&segment_file_name(*id))
            .map_err(WalError::io("map a segment"))?;
        let next_first = match ids.get(index + 1) {
            Some(next) => Some(read_header(storage, *next)?.first_lsn),
            None => None,
        };
        scan_segment(&mut scan, *id, &bytes, newest, next_first, body_len_max)?;
    }
    Ok(scan)
}

fn read_header(
    storage: &dyn Storage,
    id: SegmentId,
) -> Result<crate::wal::format::SegmentHeader, WalError> {
    let bytes = storage
        .map(&segment_file_name(id))
        .map_err(WalError::io("map a segment"))?;
    decode_segment_header(&bytes).map_err(|error| bad_header(id, error))
}

fn bad_header(segment: SegmentId, error: HeaderError) -> WalError {
    match error {
        HeaderError::UnsupportedVersion { found } => WalError::UnsupportedVersion {
            segment,
            version: found,
        },
        other => WalError::Corrupted {
            segment,
            offset: 0,
            reason: other.to_string(),
        },
    }
}

fn scan_segment(
    scan: &mut Scan,
    id: SegmentId,
    bytes: &FileBytes,
    newest: bool,
    next_first: Option<Lsn>,
    body_len_max: u64,
) -> Result<(), WalError> {
    let header = decode_segment_header(bytes).map_err(|error| bad_header(id, error))?;
    if header.segment_id != id {
        return Err(WalError::Corrupted {
            segment: id,
            offset: 0,
            reason: format!("header names segment {}", header.segment_id.0),
        });
    }
    match scan.wal_id {
        None => scan.wal_id = Some(header.wal_id),
        Some(wal_id) if wal_id != header.wal_id => {
            return Err(WalError::Corrupted {
                segment: id,
                offset: 0,
                reason: format!("segment belongs to WAL {}, not {}", header.wal_id, wal_id),
            })
        }
        Some(_) => {}
    }
    if !scan.segments.is_empty() && header.first_lsn != scan.next_lsn {
        return Err(WalError::Corrupted {
            segment: id,
            offset: 0,
            reason: format!(
                "first Lsn {} does not continue the previous segment (expected {})",
                header.first_lsn.0, scan.next_lsn.0
            ),
        });
    }
    let mut expected = header.first_lsn;
    let mut offset = SEGMENT_HEADER_LEN;
    let stop = loop {
        if next_first == Some(expected) {
            // A sealed segment ends where the next one begins; what follows
            // is zeros or the stale bytes of a recycled file.
            break None;
        }
        match decode_frame(id, bytes, offset, body_len_max) {
            Ok(frame) if frame.header.lsn == expected => {
                scan.frames.push(RecoveredFrame {
                    header: frame.header,
                    pointer: WalPointer {
                        segment: id,
                        offset: offset as u64,
                        len: frame.len,
                    },
                });
                // Verified: its pages need not stay resident while the rest
                // of the WAL is scanned.
                bytes.release(offset..offset + frame.len as usize);
                offset += frame.len as usize;
                expected = Lsn(expected.0 + 1);
            }
            Ok(frame) => {
                break Some(BadFrame::UnexpectedLsn {
                    expected: expected.0,
                    found: frame.header.lsn.0,
                })
            }
            Err(bad) => break Some(bad),
        }
    };
    scan.segments.push(SegmentSummary {
        id,
        first_lsn: header.first_lsn,
        last_lsn: (expected > header.first_lsn).then(|| Lsn(expected.0 - 1)),
        end_offset: offset as u64,
    });
    scan.next_lsn = expected;
    let Some(reason) = stop else {
        return Ok(());
    };
    if !newest {
        return Err(WalError::Corrupted {
            segment: id,
            offset: offset as u64,
            reason: format!(
                "{reason}; frames up to Lsn {} are missing",
                next_first.map_or(0, |l| l.0.saturating_sub(1))
            ),
        });
    }
    if let Some(acked) = find_acknowledged_after(id, bytes, offset, expected, body_len_max) {
        return Err(WalError::Corrupted {
            segment: id,
            offset: offset as u64,
            reason: format!(
                "{reason}; a valid frame at offset {acked} shows Lsn {} had been made durable",
                expected.0
            ),
        });
    }
    let dirty_end = last_non_zero(bytes, offset).map_or(offset as u64, |end| end as u64);
    if dirty_end > offset as u64 {
        scan.torn_tail = Some(TornTail {
            segment: id,
            offset: offset as u64,
            reason,
            dirty_end,
        });
    }
    Ok(())
}

/// Looks past a bad frame at `from` for a valid frame of this segment whose
/// durable Lsn is at least `expected`: proof that the frame at `from` had
/// been fsynced before, so losing it would lose an acknowledged write.
fn find_acknowledged_after(
    id: SegmentId,
    bytes: &[u8],
    from: usize,
    expected: Lsn,
    body_len_max: u64,
) -> Option<usize> {
    let mut offset = from + 1;
    while offset < bytes.len() {
        // A frame's 4-byte length is never zero: skip runs of zeros quickly,
        // landing on the first place a non-zero length could start.
        if bytes[offset..].iter().take(4).all(|b| *b == 0) {
            match bytes[offset..].iter().position(|b| *b != 0) {
                Some(skip) => {
                    offset = (offset + skip).saturating_sub(3).max(offset + 1);
                    continue;
                }
                None => return None,
            }
        }
        if let Some((header, _)) = peek_header(bytes, offset) {
            if header.lsn > expected && header.durable_lsn >= expected {
                if let Ok(frame) = decode_frame(id, bytes, offset, body_len_max) {
                    if frame.header == header {
                        return Some(offset);
                    }
                }
            }
        }
        offset += 1;
    }
    None
}

/// One past the last non-zero byte at or after `from`, if any.
fn last_non_zero(bytes: &[u8], from: usize) -> Option<usize> {
    let tail = bytes.get(from..)?;
    tail.iter().rposition(|b| *b != 0).map(|i| from + i + 1)
}
