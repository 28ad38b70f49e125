//! Writes one message as WAL frames of about `frame_bytes_target` each.
//! Frames before the last are written as the message streams in; the last
//! one carries the sequence number when the message closes a transaction. A
//! chunk whose encoding exceeds the largest frame is split by rows, so no
//! batch is refused for its size alone; only a single row that does not fit
//! a frame is.

use std::collections::VecDeque;
use std::sync::Arc;

use arrow::datatypes::{Schema, SchemaRef};
use arrow::record_batch::RecordBatch;

use crate::error::NodeError;
use crate::identity::Origin;
use crate::pending::{FrameInfo, Pending};
use crate::proto::sync::DataSyncCommand;
use crate::record::encode_record;
use crate::wal::format::FrameKind;
use crate::wal::{Lsn, Wal};

/// The size limits a message is written under.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    pub(crate) message_bytes_max: u64,
    pub(crate) frame_bytes_target: u64,
    pub(crate) transaction_bytes_max: u64,
}

pub(crate) struct MessageWriter<'a> {
    wal: &'a Wal,
    pending: &'a Pending,
    origin: &'a Origin,
    command: &'a DataSyncCommand,
    limits: Limits,
    /// Stored schema of the frames (empty for a message without rows).
    schema: SchemaRef,
    chunk: Vec<RecordBatch>,
    chunk_bytes: u64,
    /// Frames written so far, durable.
    frames: Vec<FrameInfo>,
    /// Whether the origin had an open transaction before this message (its
    /// truncation floor is then already recorded).
    continues_open: bool,
    /// Message bytes so far (Arrow memory of its batches).
    bytes: u64,
    /// Bytes of the origin's open transaction before this message.
    open_bytes: u64,
    pub(crate) rows: u64,
}

impl<'a> MessageWriter<'a> {
    pub(crate) fn new(
        wal: &'a Wal,
        pending: &'a Pending,
        origin: &'a Origin,
        command: &'a DataSyncCommand,
        limits: Limits,
        schema: Option<SchemaRef>,
        open_bytes: Option<u64>,
    ) -> Self {
        MessageWriter {
            wal,
            pending,
            origin,
            command,
            limits,
            schema: schema.unwrap_or_else(|| Arc::new(Schema::empty())),
            chunk: Vec::new(),
            chunk_bytes: 0,
            frames: Vec::new(),
            continues_open: open_bytes.is_some(),
            bytes: 0,
            open_bytes: open_bytes.unwrap_or(0),
            rows: 0,
        }
    }

    /// Adds one batch, already checked and in stored types.
    pub(crate) async fn push(&mut self, index: usize, batch: RecordBatch) -> Result<(), NodeError> {
        let size = batch.get_array_memory_size() as u64;
        self.bytes += size;
        if self.bytes > self.limits.message_bytes_max {
            return Err(NodeError::MessageTooLarge {
                limit: self.limits.message_bytes_max,
            });
        }
        let total = self.open_bytes + self.bytes;
        if total > self.limits.transaction_bytes_max {
            return Err(NodeError::TransactionTooLarge {
                origin: self.command.origin.clone(),
                bytes: total,
                limit: self.limits.transaction_bytes_max,
            });
        }
        self.rows += batch.num_rows() as u64;
        self.chunk_bytes += size;
        self.chunk.push(batch);
        if self.chunk_bytes >= self.limits.frame_bytes_target {
            self.write_chunk(index, None).await?;
        }
        Ok(())
    }

    /// Writes what is left; the last frame carries `sequence` (a message
    /// that closes a transaction always writes one, rows or not). Returns
    /// every frame of the message, durable.
    pub(crate) async fn finish(
        &mut self,
        index: usize,
        sequence: Option<u64>,
    ) -> Result<Vec<FrameInfo>, NodeError> {
        if !self.chunk.is_empty() || sequence.is_some() {
            self.write_chunk(index, sequence).await?;
        }
        Ok(self.frames.clone())
    }

    /// Lsns of the frames this message already wrote, if any.
    pub(crate) fn written(&self) -> Option<(Lsn, Lsn)> {
        Some((self.frames.first()?.lsn, self.frames.last()?.lsn))
    }

    /// Whether this message recorded the origin's open-transaction floor
    /// (it had none before and wrote a frame).
    pub(crate) fn opened(&self) -> bool {
        !self.continues_open && !self.frames.is_empty()
    }

    async fn write_chunk(&mut self, index: usize, sequence: Option<u64>) -> Result<(), NodeError> {
        let mut parts = VecDeque::from([std::mem::take(&mut self.chunk)]);
        self.chunk_bytes = 0;
        let max = self.wal.frame_payload_max();
        while let Some(part) = parts.pop_front() {
            let last = parts.is_empty();
            let command = DataSyncCommand {
                sequence_number: if last { sequence } else { None },
                ..self.command.clone()
            };
            let payload = encode_record(&command, &self.schema, &part)?;
            if payload.len() as u64 > max {
                let (first, second) = split_rows(part).ok_or(NodeError::RowTooLarge {
                    batch: index,
                    bytes: payload.len() as u64,
                    limit: max,
                })?;
                parts.push_front(second);
                parts.push_front(first);
                continue;
            }
            if self.frames.is_empty() && !self.continues_open {
                // Before the frame gets an Lsn: every Lsn assigned from now on
                // is above the durable one, so truncation keeps this frame.
                let floor = Lsn(self.wal.durable_lsn().borrow().0 + 1);
                self.pending.open(self.origin, floor);
            }
            let rows = part.iter().map(|b| b.num_rows() as u64).sum();
            let appended = self.wal.append(FrameKind::Data, payload).await?;
            self.frames.push(FrameInfo {
                lsn: appended.lsn,
                pointer: appended.pointer,
                rows,
                bytes: u64::from(appended.pointer.len),
            });
        }
        Ok(())
    }
}

/// The batches split into two halves by rows; `None` for a single row.
fn split_rows(batches: Vec<RecordBatch>) -> Option<(Vec<RecordBatch>, Vec<RecordBatch>)> {
    let rows: usize = batches.iter().map(RecordBatch::num_rows).sum();
    if rows <= 1 {
        return None;
    }
    let mut remaining = rows / 2;
    let (mut first, mut second) = (Vec::new(), Vec::new());
    for batch in batches {
        if remaining == 0 {
            second.push(batch);
        } else if batch.num_rows() <= remaining {
            remaining -= batch.num_rows();
            first.push(batch);
        } else {
            first.push(batch.slice(0, remaining));
            second.push(batch.slice(remaining, batch.num_rows() - remaining));
            remaining = 0;
        }
    }
    Some((first, second))
}
