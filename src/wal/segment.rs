//! Segment files: names, the crash-safe creation protocol, and the pool of
//! truncated segment files kept for re-use.

use std::io;

use crate::wal::format::{encode_segment_header, SegmentHeader, SEGMENT_HEADER_LEN};
use crate::wal::storage::{Storage, StorageFile};
use crate::wal::SegmentId;

const SEGMENT_SUFFIX: &str = ".wal";
const TEMP_SUFFIX: &str = ".tmp";
const RECYCLE_PREFIX: &str = "recycle-";

/// How a new segment file gets its space.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize, clap::ValueEnum,
)]
#[serde(rename_all = "snake_case")]
pub enum SegmentInit {
    /// Start empty and grow with every append.
    Grow,
    /// Write zeros over the whole target size when the segment is created,
    /// so appends overwrite allocated blocks.
    ZeroFill,
    /// Re-use the files of truncated segments (already written blocks);
    /// new files are zero-filled while the pool is empty.
    Recycle,
}

/// `00000000000000000042.wal`: fixed width so names sort by id.
pub fn segment_file_name(id: SegmentId) -> String {
    format!("{:020}{SEGMENT_SUFFIX}", id.0)
}

/// What a file in the WAL directory is, by its name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DirEntry {
    Segment(SegmentId),
    /// A segment being created when the process stopped: never acknowledged.
    Temporary(String),
    /// A truncated segment's file, kept for re-use.
    Recyclable(String),
    /// Anything else (the lock file, an operator's notes): left alone.
    Other(String),
}

pub fn classify(name: &str) -> DirEntry {
    if name.ends_with(TEMP_SUFFIX) {
        return DirEntry::Temporary(name.to_string());
    }
    if name.starts_with(RECYCLE_PREFIX) && name.ends_with(SEGMENT_SUFFIX) {
        return DirEntry::Recyclable(name.to_string());
    }
    if let Some(stem) = name.strip_suffix(SEGMENT_SUFFIX) {
        if stem.len() == 20 && stem.bytes().all(|b| b.is_ascii_digit()) {
            if let Ok(id) = stem.parse::<u64>() {
                return DirEntry::Segment(SegmentId(id));
            }
        }
    }
    DirEntry::Other(name.to_string())
}

/// The name a segment has while it is being created.
pub fn temporary_file_name(id: SegmentId) -> String {
    format!("{}{TEMP_SUFFIX}", segment_file_name(id))
}

/// A spare file zero-filled ahead of need, named like a recycled segment
/// (`recycle-spare-<n>.wal`) so recovery keeps it in the pool.
pub fn spare_file_name(n: u64) -> String {
    format!("{RECYCLE_PREFIX}spare-{n:020}{SEGMENT_SUFFIX}")
}

/// Creates a zero-filled spare durably (temporary name, fdatasync, rename,
/// directory fsync) and returns its name.
pub fn create_spare(storage: &dyn Storage, n: u64, len: u64) -> io::Result<String> {
    let name = spare_file_name(n);
    let temp = format!("{name}{TEMP_SUFFIX}");
    let result = (|| {
        let mut file = storage.create(&temp)?;
        zero_fill(file.as_mut(), len)?;
        file.sync_data()?;
        storage.rename(&temp, &name)?;
        storage.sync_dir()
    })();
    if result.is_err() {
        let _ = storage.remove(&temp);
    }
    result.map(|()| name)
}

/// The pool name a truncated segment's file is renamed to.
pub fn recycle_file_name(id: SegmentId) -> String {
    format!("{RECYCLE_PREFIX}{:020}{SEGMENT_SUFFIX}", id.0)
}

/// Creates segment `header.segment_id` durably: the file is prepared under a
/// temporary name (fresh, or a recycled file renamed), its header written and
/// fdatasync'ed, then renamed into place and the directory fsynced. So a file
/// with a segment name always has a complete header.
pub fn create_segment(
    storage: &dyn Storage,
    header: &SegmentHeader,
    init: SegmentInit,
    segment_bytes_target: u64,
    recycled: Option<String>,
) -> io::Result<Box<dyn StorageFile>> {
    let name = segment_file_name(header.segment_id);
    let temp = temporary_file_name(header.segment_id);
    let mut file = match recycled {
        Some(old) => {
            storage.rename(&old, &temp)?;
            storage.open(&temp)?
        }
        None => {
            let mut file = storage.create(&temp)?;
            if init != SegmentInit::Grow {
                zero_fill(file.as_mut(), segment_bytes_target)?;
            }
            file
        }
    };
    file.write_at(0, &encode_segment_header(header))?;
    file.sync_data()?;
    storage.rename(&temp, &name)?;
    storage.sync_dir()?;
    Ok(file)
}

pub(crate) fn zero_fill(file: &mut dyn StorageFile, len: u64) -> io::Result<()> {
    const CHUNK: usize = 1 << 20;
    let zeros = vec![0u8; CHUNK];
    let mut offset = SEGMENT_HEADER_LEN as u64;
    while offset < len {
        let n = CHUNK.min((len - offset) as usize);
        file.write_at(offset, &zeros[..n])?;
        offset += n as u64;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_sort_by_id() {
        let a = segment_file_name(SegmentId(9));
        let b = segment_file_name(SegmentId(10));
        assert!(a < b);
        assert_eq!(classify(&b), DirEntry::Segment(SegmentId(10)));
        assert_eq!(
            classify(&recycle_file_name(SegmentId(3))),
            DirEntry::Recyclable(recycle_file_name(SegmentId(3)))
        );
        assert!(matches!(classify("x.wal.tmp"), DirEntry::Temporary(_)));
        assert!(matches!(classify("LOCK"), DirEntry::Other(_)));
        assert!(matches!(classify("12.wal"), DirEntry::Other(_)));
    }
}
