//! The contents of a WAL data frame: one sync message (its command metadata
//! and record batches), encoded as `wal-format.md` "Data frame payload" says.
//! Encoding happens on the put path, decoding at flush time and in `wal dump`.

use std::io::Cursor;
use std::panic::AssertUnwindSafe;

use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use arrow_ipc::reader::StreamReader;
use arrow_ipc::writer::StreamWriter;
use prost::Message;

use crate::proto::sync::DataSyncCommand;
use crate::wal::format::{decode_data_payload, encode_data_payload, PayloadError};

/// Why a data frame's payload could not be decoded. Frames are CRC-checked,
/// so this means a bug or a frame written by an incompatible build.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("data payload: {0}")]
    Payload(#[from] PayloadError),
    #[error("data payload command is not a valid DataSyncCommand: {0}")]
    Command(#[from] prost::DecodeError),
    #[error("data payload Arrow IPC stream: {0}")]
    Arrow(#[from] arrow::error::ArrowError),
    #[error("data payload Arrow IPC stream is malformed (the Arrow reader refused it)")]
    Malformed,
    #[error("data payload Arrow IPC stream at byte {offset}: {problem}")]
    Framing { offset: usize, problem: String },
    #[error("data payload says {stated} rows, its batches hold {actual}")]
    RowCount { stated: u64, actual: u64 },
}

/// Encodes a data frame payload from a command and its batches.
pub fn encode_record(
    command: &DataSyncCommand,
    schema: &SchemaRef,
    batches: &[RecordBatch],
) -> Result<Vec<u8>, RecordError> {
    let rows: u64 = batches.iter().map(|b| b.num_rows() as u64).sum();
    let mut ipc = Vec::new();
    {
        let mut writer = StreamWriter::try_new(&mut ipc, schema)?;
        for batch in batches {
            writer.write(batch)?;
        }
        writer.finish()?;
    }
    Ok(encode_data_payload(&command.encode_to_vec(), rows, &ipc))
}

/// Only the command and row count: cheap, for building the index.
pub fn decode_record_header(payload: &[u8]) -> Result<(DataSyncCommand, u64), RecordError> {
    let parts = decode_data_payload(payload)?;
    Ok((DataSyncCommand::decode(parts.command)?, parts.rows))
}

/// A decoded data frame.
#[derive(Debug, Clone)]
pub struct Record {
    pub command: DataSyncCommand,
    pub schema: SchemaRef,
    pub batches: Vec<RecordBatch>,
}

/// Only the Arrow schema of a data frame (its first IPC message): cheap,
/// for learning a table's column types at recovery.
pub fn decode_record_schema(payload: &[u8]) -> Result<SchemaRef, RecordError> {
    let parts = decode_data_payload(payload)?;
    check_ipc_framing(parts.ipc_stream)?;
    let decoded = std::panic::catch_unwind(AssertUnwindSafe(|| {
        StreamReader::try_new(Cursor::new(parts.ipc_stream), None).map(|reader| reader.schema())
    }));
    Ok(decoded.map_err(|_| RecordError::Malformed)??)
}

/// Decodes a whole data frame payload, batches included.
pub fn decode_record(payload: &[u8]) -> Result<Record, RecordError> {
    let parts = decode_data_payload(payload)?;
    let command = DataSyncCommand::decode(parts.command)?;
    check_ipc_framing(parts.ipc_stream)?;
    // arrow-ipc 59 panics on some malformed metadata (unimplemented types,
    // unwraps, out-of-range slices) instead of returning an error. Frames are
    // CRC-checked, so this takes a frame from a buggy or hostile writer; it
    // must still not take the flush path or `wal dump` down.
    let decoded = std::panic::catch_unwind(AssertUnwindSafe(|| {
        let reader = StreamReader::try_new(Cursor::new(parts.ipc_stream), None)?;
        let schema = reader.schema();
        let batches = reader.collect::<Result<Vec<_>, _>>()?;
        Ok::<_, arrow::error::ArrowError>((schema, batches))
    }));
    let (schema, batches) = decoded.map_err(|_| RecordError::Malformed)??;
    let actual: u64 = batches.iter().map(|b| b.num_rows() as u64).sum();
    if actual != parts.rows {
        return Err(RecordError::RowCount {
            stated: parts.rows,
            actual,
        });
    }
    Ok(Record {
        command,
        schema,
        batches,
    })
}

/// Walks the IPC stream's message framing and checks every length against
/// the bytes that are there, before arrow-ipc allocates from any of them
/// (fed junk, its reader allocates whatever a length field says).
fn check_ipc_framing(stream: &[u8]) -> Result<(), RecordError> {
    const CONTINUATION: u32 = 0xFFFF_FFFF;
    let bad = |offset: usize, problem: &str| RecordError::Framing {
        offset,
        problem: problem.to_string(),
    };
    let read_u32 = |at: usize| -> Option<u32> {
        let raw: [u8; 4] = stream.get(at..at.checked_add(4)?)?.try_into().ok()?;
        Some(u32::from_le_bytes(raw))
    };
    let mut offset = 0;
    while offset < stream.len() {
        let Some(marker) = read_u32(offset) else {
            return Err(bad(offset, "truncated message length"));
        };
        let (metadata_len, metadata_start) = if marker == CONTINUATION {
            let Some(len) = read_u32(offset + 4) else {
                return Err(bad(offset, "truncated message length"));
            };
            (len, offset + 8)
        } else {
            (marker, offset + 4)
        };
        if metadata_len == 0 {
            return Ok(()); // end-of-stream marker
        }
        let metadata_end = metadata_start
            .checked_add(metadata_len as usize)
            .filter(|end| *end <= stream.len())
            .ok_or_else(|| bad(offset, "message metadata runs past the end"))?;
        let message = arrow_ipc::root_as_message(&stream[metadata_start..metadata_end])
            .map_err(|e| bad(offset, &format!("message metadata: {e}")))?;
        let body_len = usize::try_from(message.bodyLength())
            .map_err(|_| bad(offset, "negative body length"))?;
        offset = metadata_end
            .checked_add(body_len)
            .filter(|end| *end <= stream.len())
            .ok_or_else(|| bad(offset, "message body runs past the end"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Int64Array, StringArray};
    use arrow::datatypes::{DataType, Field, Schema};
    use std::sync::Arc;

    #[test]
    fn record_round_trips_with_batches() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, true),
            Field::new("name", DataType::Utf8, true),
        ]));
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(Int64Array::from(vec![1, 2])),
                Arc::new(StringArray::from(vec!["a", "b"])),
            ],
        )
        .expect("batch");
        let command = DataSyncCommand {
            path: "t".into(),
            origin: "o".into(),
            sequence_number: Some(7),
            ..Default::default()
        };
        let payload = encode_record(&command, &schema, &[batch.clone(), batch]).expect("encode");
        let (header, rows) = decode_record_header(&payload).expect("header");
        assert_eq!((header.clone(), rows), (command.clone(), 4));
        let record = decode_record(&payload).expect("decode");
        assert_eq!(record.command, command);
        assert_eq!(record.batches.len(), 2);
        assert_eq!(record.schema, schema);
    }
}
