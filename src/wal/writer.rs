//! The group-commit writer: one thread owns the active segment. It drains
//! every request that is queued, writes them with one write per segment,
//! fdatasyncs once, and only then answers each waiter. No timer: a lone
//! appender pays one fsync; many appenders share one.
//!
//! Fail-stop: the first write or sync error puts the WAL into a failed state.
//! That batch and every later request get `WalError::Failed`; an fsync is
//! never retried on the same file (its dirty pages may already be dropped).

use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

use crate::wal::format::{
    encode_frame_header, frame_len, FrameHeader, FrameKind, SegmentHeader, SEGMENT_HEADER_LEN,
};
use crate::wal::segment::{create_segment, SegmentInit};
use crate::wal::storage::StorageFile;
use crate::wal::{Appended, Lsn, SegmentId, Shared, WalError, WalPointer};

/// One frame to append, with its payload CRC computed by the appender.
pub(crate) struct Request {
    pub(crate) kind: FrameKind,
    pub(crate) payload: Vec<u8>,
    pub(crate) payload_crc: u32,
    pub(crate) reply: oneshot::Sender<Result<Appended, WalError>>,
}

pub(crate) struct Writer {
    pub(crate) shared: Arc<Shared>,
    pub(crate) active: Box<dyn StorageFile>,
    pub(crate) active_id: SegmentId,
    /// Where the next frame goes in the active segment.
    pub(crate) offset: u64,
    pub(crate) next_lsn: Lsn,
    /// Highest Lsn covered by a completed fdatasync.
    pub(crate) durable_lsn: Lsn,
    pub(crate) failed: Option<String>,
    /// Reused between batches to avoid an allocation per batch.
    pub(crate) buffer: Vec<u8>,
}

impl Writer {
    /// Runs until every sender is gone, answering everything it received.
    pub(crate) fn run(mut self, mut requests: mpsc::Receiver<Request>) {
        let batch_bytes_max = self.shared.config.batch_bytes_max;
        while let Some(first) = requests.blocking_recv() {
            let mut bytes = first.payload.len() as u64;
            let mut batch = vec![first];
            while bytes < batch_bytes_max {
                match requests.try_recv() {
                    Ok(request) => {
                        bytes += request.payload.len() as u64;
                        batch.push(request);
                    }
                    Err(_) => break,
                }
            }
            self.commit(batch);
        }
    }

    fn commit(&mut self, batch: Vec<Request>) {
        if let Some(reason) = &self.failed {
            let reason = reason.clone();
            for request in batch {
                let _ = request.reply.send(Err(WalError::Failed {
                    reason: reason.clone(),
                }));
            }
            return;
        }
        let mut appended = Vec::with_capacity(batch.len());
        match self.write_batch(&batch, &mut appended) {
            Ok(()) => {
                self.shared.metrics.record_batch(batch.len());
                for (request, result) in batch.into_iter().zip(appended) {
                    // A waiter that went away (client disconnected) is fine:
                    // its frame is durable all the same.
                    let _ = request.reply.send(Ok(result));
                }
            }
            Err(error) => {
                let reason = error.to_string();
                tracing::error!(%reason, "WAL failed: no further appends are acknowledged");
                self.shared.set_failed(&reason);
                self.failed = Some(reason.clone());
                for request in batch {
                    let _ = request.reply.send(Err(WalError::Failed {
                        reason: reason.clone(),
                    }));
                }
            }
        }
    }

    fn write_batch(
        &mut self,
        batch: &[Request],
        appended: &mut Vec<Appended>,
    ) -> Result<(), WalError> {
        let target = self.shared.config.segment_bytes_target;
        self.buffer.clear();
        let mut buffer_start = self.offset;
        for request in batch {
            let len = frame_len(request.payload.len()) as u64;
            let has_frames = self.offset > SEGMENT_HEADER_LEN as u64;
            if has_frames && self.offset + len > target {
                self.write_buffer(buffer_start)?;
                self.sync()?;
                self.roll()?;
                buffer_start = self.offset;
            }
            let header = FrameHeader {
                kind: request.kind,
                lsn: self.next_lsn,
                durable_lsn: self.durable_lsn,
            };
            self.buffer.extend_from_slice(&encode_frame_header(
                self.active_id,
                &header,
                request.payload.len(),
                request.payload_crc,
            ));
            self.buffer.extend_from_slice(&request.payload);
            appended.push(Appended {
                lsn: self.next_lsn,
                pointer: WalPointer {
                    segment: self.active_id,
                    offset: self.offset,
                    len: len as u32,
                },
            });
            self.offset += len;
            self.next_lsn = Lsn(self.next_lsn.0 + 1);
        }
        self.write_buffer(buffer_start)?;
        self.sync()
    }

    fn write_buffer(&mut self, at: u64) -> Result<(), WalError> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        self.active
            .write_at(at, &self.buffer)
            .map_err(WalError::io("write frames"))?;
        self.shared.metrics.record_write(self.buffer.len());
        self.buffer.clear();
        Ok(())
    }

    fn sync(&mut self) -> Result<(), WalError> {
        self.active
            .sync_data()
            .map_err(WalError::io("fdatasync the active segment"))?;
        self.shared.metrics.record_sync();
        self.durable_lsn = Lsn(self.next_lsn.0 - 1);
        self.shared
            .segment_synced(self.active_id, self.durable_lsn, self.offset);
        Ok(())
    }

    /// Seals the active segment (already synced) and starts the next one.
    fn roll(&mut self) -> Result<(), WalError> {
        let config = &self.shared.config;
        let header = SegmentHeader {
            wal_id: self.shared.wal_id,
            segment_id: SegmentId(self.active_id.0 + 1),
            first_lsn: self.next_lsn,
        };
        let recycled = match config.segment_init {
            SegmentInit::Recycle => self.shared.take_recyclable(),
            SegmentInit::Grow | SegmentInit::ZeroFill => None,
        };
        let file = create_segment(
            self.shared.storage.as_ref(),
            &header,
            config.segment_init,
            config.segment_bytes_target,
            recycled,
        )
        .map_err(WalError::io("create a segment"))?;
        self.active = file;
        self.active_id = header.segment_id;
        self.offset = SEGMENT_HEADER_LEN as u64;
        self.shared
            .segment_created(header.segment_id, header.first_lsn);
        Ok(())
    }
}
