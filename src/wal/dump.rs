//! `flightlog wal dump` and `flightlog wal verify`: read-only inspection of a
//! WAL directory. Neither locks nor repairs anything, so they are safe to run
//! beside a live node and on a copy of a damaged WAL.

use std::io::Write;
use std::path::Path;

use prost::Message;
use serde_json::json;

use crate::proto::wal::{Abort, Checkpoint};
use crate::record::{decode_record, decode_record_header};
use crate::wal::format::{
    decode_frame, decode_segment_header, FrameKind, FrameRef, SEGMENT_HEADER_LEN,
};
use crate::wal::recovery::{scan, Scan};
use crate::wal::segment::{classify, segment_file_name, DirEntry};
use crate::wal::storage::{FsStorage, Storage};
use crate::wal::{SegmentId, WalError};

#[derive(Debug, Clone, Copy, Default)]
pub struct DumpOptions {
    /// One JSON object per line instead of text.
    pub json: bool,
    /// Print the rows of data frames.
    pub rows: bool,
    /// After a bad frame, look for the next valid one and go on listing.
    pub continue_on_error: bool,
    /// Body length cap used to read frames (the node's frame limit).
    pub body_len_max: u64,
}

/// The verdict of a dump or verify: Ok when recovery would accept the WAL.
#[derive(Debug)]
pub struct Verdict {
    pub scan: Result<Scan, WalError>,
    pub frames_listed: u64,
    pub bad_frames: u64,
}

/// Lists every segment and frame of the WAL in `dir`, then the recovery
/// verdict. Returns Err only when output or the directory listing fails.
pub fn dump(dir: &Path, options: DumpOptions, out: &mut dyn Write) -> std::io::Result<Verdict> {
    let storage = FsStorage::new(dir)?;
    let mut ids: Vec<SegmentId> = storage
        .list()?
        .iter()
        .filter_map(|name| match classify(name) {
            DirEntry::Segment(id) => Some(id),
            _ => None,
        })
        .collect();
    ids.sort();
    let mut frames_listed = 0;
    let mut bad_frames = 0;
    'segments: for id in ids {
        let name = segment_file_name(id);
        let bytes = storage.map(&name)?;
        let header = decode_segment_header(&bytes);
        match &header {
            Ok(h) if options.json => writeln!(
                out,
                "{}",
                json!({"segment": name, "bytes": bytes.len(), "wal_id": h.wal_id.to_string(),
                       "segment_id": h.segment_id.0, "first_lsn": h.first_lsn.0})
            )?,
            Ok(h) => writeln!(
                out,
                "segment {name}: {} bytes, wal {}, first lsn {}",
                bytes.len(),
                h.wal_id,
                h.first_lsn.0
            )?,
            Err(error) => {
                bad_frames += 1;
                print_bad(out, options, &name, 0, &error.to_string())?;
                continue 'segments;
            }
        }
        let mut offset = SEGMENT_HEADER_LEN;
        while offset < bytes.len() {
            match decode_frame(id, &bytes, offset, options.body_len_max) {
                Ok(frame) => {
                    frames_listed += 1;
                    print_frame(out, options, &name, &frame)?;
                    offset += frame.len as usize;
                }
                Err(bad) => {
                    if bytes[offset..].iter().all(|b| *b == 0) {
                        break;
                    }
                    bad_frames += 1;
                    print_bad(out, options, &name, offset as u64, &bad.to_string())?;
                    if !options.continue_on_error {
                        break 'segments;
                    }
                    match next_valid(id, &bytes, offset + 1, options.body_len_max) {
                        Some(next) => offset = next,
                        None => break,
                    }
                }
            }
        }
    }
    let verdict = scan(&storage, options.body_len_max);
    print_verdict(out, options, &verdict)?;
    Ok(Verdict {
        scan: verdict,
        frames_listed,
        bad_frames,
    })
}

/// Runs recovery's checks without repairing; prints a summary.
pub fn verify(
    dir: &Path,
    body_len_max: u64,
    out: &mut dyn Write,
) -> std::io::Result<Result<Scan, WalError>> {
    let storage = FsStorage::new(dir)?;
    let verdict = scan(&storage, body_len_max);
    print_verdict(out, DumpOptions::default(), &verdict)?;
    Ok(verdict)
}

fn next_valid(id: SegmentId, bytes: &[u8], from: usize, body_len_max: u64) -> Option<usize> {
    (from..bytes.len()).find(|offset| decode_frame(id, bytes, *offset, body_len_max).is_ok())
}

fn print_bad(
    out: &mut dyn Write,
    options: DumpOptions,
    segment: &str,
    offset: u64,
    reason: &str,
) -> std::io::Result<()> {
    if options.json {
        writeln!(
            out,
            "{}",
            json!({"segment": segment, "offset": offset, "crc": "bad", "error": reason})
        )
    } else {
        writeln!(out, "  BAD FRAME at {segment} offset {offset}: {reason}")
    }
}

fn print_frame(
    out: &mut dyn Write,
    options: DumpOptions,
    segment: &str,
    frame: &FrameRef<'_>,
) -> std::io::Result<()> {
    let mut line = json!({
        "segment": segment,
        "offset": frame.offset,
        "len": frame.len,
        "crc": "ok",
        "kind": frame.header.kind,
        "lsn": frame.header.lsn.0,
        "durable_lsn": frame.header.durable_lsn.0,
    });
    let mut rows_text = None;
    match frame.header.kind {
        FrameKind::Data => describe_data(frame.payload, options.rows, &mut line, &mut rows_text),
        FrameKind::Checkpoint => match Checkpoint::decode(frame.payload) {
            Ok(checkpoint) => {
                line["origins"] = json!(checkpoint
                    .origins
                    .iter()
                    .map(|o| json!({
                    "origin": o.origin, "memory_sequence_number": o.memory_sequence_number,
                    "durable_sequence_number": o.durable_sequence_number}))
                    .collect::<Vec<_>>());
                line["tables"] = json!(checkpoint
                    .tables
                    .iter()
                    .map(|t| json!({
                    "table": t.table, "applied_lsn": t.applied_lsn}))
                    .collect::<Vec<_>>());
            }
            Err(error) => line["error"] = json!(error.to_string()),
        },
        FrameKind::Abort => match Abort::decode(frame.payload) {
            Ok(abort) => {
                line["origin"] = json!(abort.origin);
                line["aborted_lsns"] = json!([abort.first_lsn, abort.last_lsn]);
            }
            Err(error) => line["error"] = json!(error.to_string()),
        },
    }
    if options.json {
        if let Some(rows) = rows_text {
            line["rows_text"] = json!(rows);
        }
        return writeln!(out, "{line}");
    }
    let mut text = format!(
        "  frame offset {} len {} crc ok kind {:?} lsn {}",
        frame.offset, frame.len, frame.header.kind, frame.header.lsn.0
    );
    for key in [
        "origin",
        "sequence",
        "table",
        "store",
        "rows",
        "schema",
        "aborted_lsns",
        "origins",
        "tables",
        "error",
    ] {
        if let Some(value) = line.get(key) {
            text.push_str(&format!(" {key} {value}"));
        }
    }
    writeln!(out, "{text}")?;
    if let Some(rows) = rows_text {
        writeln!(out, "{rows}")?;
    }
    Ok(())
}

fn describe_data(
    payload: &[u8],
    with_rows: bool,
    line: &mut serde_json::Value,
    rows_text: &mut Option<String>,
) {
    match decode_record_header(payload) {
        Ok((command, rows)) => {
            line["origin"] = json!(command.origin);
            line["sequence"] = json!(command.sequence_number);
            line["table"] = json!(command.path);
            if let Some(store) = &command.store {
                line["store"] = json!(store.location);
            }
            line["rows"] = json!(rows);
        }
        Err(error) => {
            line["error"] = json!(error.to_string());
            return;
        }
    }
    match decode_record(payload) {
        Ok(record) => {
            line["schema"] = json!(record
                .schema
                .fields()
                .iter()
                .map(|f| format!("{}: {}", f.name(), f.data_type()))
                .collect::<Vec<_>>());
            if with_rows {
                *rows_text = Some(format_rows(&record.batches));
            }
        }
        Err(error) => line["error"] = json!(error.to_string()),
    }
}

/// One line per row: `    field=value, ...` (arrow's display formatting).
fn format_rows(batches: &[arrow::record_batch::RecordBatch]) -> String {
    use arrow::util::display::{ArrayFormatter, FormatOptions};
    let options = FormatOptions::default().with_null("null");
    let mut text = String::new();
    for batch in batches {
        let formatters: Result<Vec<_>, _> = batch
            .columns()
            .iter()
            .map(|c| ArrayFormatter::try_new(c.as_ref(), &options))
            .collect();
        let formatters = match formatters {
            Ok(f) => f,
            Err(error) => return error.to_string(),
        };
        for row in 0..batch.num_rows() {
            let cells: Vec<String> = batch
                .schema()
                .fields()
                .iter()
                .zip(&formatters)
                .map(|(field, f)| format!("{}={}", field.name(), f.value(row)))
                .collect();
            text.push_str(&format!("    {}\n", cells.join(", ")));
        }
    }
    text.trim_end().to_string()
}

fn print_verdict(
    out: &mut dyn Write,
    options: DumpOptions,
    verdict: &Result<Scan, WalError>,
) -> std::io::Result<()> {
    match verdict {
        Ok(scan) => {
            let first = scan.frames.first().map(|f| f.header.lsn.0);
            let last = scan.frames.last().map(|f| f.header.lsn.0);
            let torn = scan.torn_tail.as_ref().map(|t| {
                format!(
                    "{} offset {} ({} bytes: {})",
                    segment_file_name(t.segment),
                    t.offset,
                    t.dirty_end - t.offset,
                    t.reason
                )
            });
            if options.json {
                writeln!(
                    out,
                    "{}",
                    json!({"verdict": "ok", "segments": scan.segments.len(),
                    "frames": scan.frames.len(), "first_lsn": first, "last_lsn": last, "torn_tail": torn})
                )
            } else {
                writeln!(
                    out,
                    "verdict: ok: {} segments, {} frames, lsn {}..{}{}",
                    scan.segments.len(),
                    scan.frames.len(),
                    first.unwrap_or(0),
                    last.unwrap_or(0),
                    torn.map(|t| format!(", torn tail to be erased at {t}"))
                        .unwrap_or_default()
                )
            }
        }
        Err(error) => {
            if options.json {
                writeln!(
                    out,
                    "{}",
                    json!({"verdict": "corrupted", "error": error.to_string()})
                )
            } else {
                writeln!(out, "verdict: CORRUPTED: {error}")
            }
        }
    }
}
