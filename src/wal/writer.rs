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

/// Why a batch was not (wholly) written.
enum Failure {
    /// The disk is full: the first `durable` requests are in the log, the
    /// rest are not, and the WAL stays usable.
    NoSpace { durable: usize, error: WalError },
    /// Anything else: the WAL fails (fail-stop).
    Fatal(WalError),
}

impl Failure {
    fn classify(error: WalError, durable: usize) -> Failure {
        if error.is_no_space() {
            Failure::NoSpace { durable, error }
        } else {
            Failure::Fatal(error)
        }
    }
}

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
    pub(crate) failed: Option<Arc<WalError>>,
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
        if let Some(cause) = &self.failed {
            for request in batch {
                let _ = request.reply.send(Err(WalError::Failed {
                    cause: cause.clone(),
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
            Err(Failure::NoSpace { durable, error }) => {
                tracing::warn!(%error, "WAL disk full: refusing this batch, the WAL stays usable");
                self.shared.metrics.record_batch(durable);
                let mut results = appended.into_iter().take(durable);
                let cause = Arc::new(error);
                for request in batch {
                    let result = match results.next() {
                        Some(appended) => Ok(appended),
                        None => Err(WalError::NoSpace {
                            cause: cause.clone(),
                        }),
                    };
                    let _ = request.reply.send(result);
                }
            }
            Err(Failure::Fatal(error)) => {
                tracing::error!(%error, "WAL failed: no further appends are acknowledged");
                let cause = Arc::new(error);
                self.shared.set_failed(&cause);
                self.failed = Some(cause.clone());
                for request in batch {
                    let _ = request.reply.send(Err(WalError::Failed {
                        cause: cause.clone(),
                    }));
                }
            }
        }
    }

    /// Writes and syncs a batch. On a full disk the part that was not
    /// synced is cut off the file (durably) and the writer goes on from
    /// where it was: `durable` requests at the front of the batch are in
    /// the log, the others are not.
    fn write_batch(
        &mut self,
        batch: &[Request],
        appended: &mut Vec<Appended>,
    ) -> Result<(), Failure> {
        let target = self.shared.config.segment_bytes_target;
        self.buffer.clear();
        let mut part = (self.offset, self.next_lsn);
        let mut durable = 0;
        for (index, request) in batch.iter().enumerate() {
            let len = frame_len(request.payload.len()) as u64;
            let has_frames = self.offset > SEGMENT_HEADER_LEN as u64;
            if has_frames && self.offset + len > target {
                if let Err(error) = self.write_buffer(part.0) {
                    return Err(self.undo(part, durable, appended, error));
                }
                self.sync().map_err(Failure::Fatal)?;
                durable = index;
                self.roll()
                    .map_err(|error| Failure::classify(error, durable))?;
                part = (self.offset, self.next_lsn);
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
        if let Err(error) = self.write_buffer(part.0) {
            return Err(self.undo(part, durable, appended, error));
        }
        self.sync().map_err(Failure::Fatal)
    }

    /// After a failed write: on a full disk, cut the partial write off the
    /// file and fsync that, so no stale frame can ever follow a frame
    /// written later at this offset; any other error is fatal.
    fn undo(
        &mut self,
        (offset, lsn): (u64, Lsn),
        durable: usize,
        appended: &mut Vec<Appended>,
        error: WalError,
    ) -> Failure {
        self.buffer.clear();
        if !error.is_no_space() {
            return Failure::Fatal(error);
        }
        let cut = self
            .active
            .set_len(offset)
            .and_then(|()| self.active.sync_data());
        if let Err(source) = cut {
            return Failure::Fatal(WalError::Io {
                context: "cut a failed write off the active segment",
                source,
            });
        }
        self.offset = offset;
        self.next_lsn = lsn;
        appended.truncate(durable);
        Failure::NoSpace { durable, error }
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
        let started = std::time::Instant::now();
        self.active
            .sync_data()
            .map_err(WalError::io("fdatasync the active segment"))?;
        self.shared.metrics.record_sync();
        self.shared.metrics.fsync_seconds.observe(started.elapsed());
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
            SegmentInit::Recycle | SegmentInit::ZeroFill => self.shared.take_recyclable(),
            SegmentInit::Grow => None,
        };
        let file = match create_segment(
            self.shared.storage.as_ref(),
            &header,
            config.segment_init,
            config.segment_bytes_target,
            recycled,
        ) {
            Ok(file) => file,
            Err(source) => {
                // Best effort: a half-made segment has a temporary name that
                // recovery removes anyway; freeing it now helps a full disk.
                let _ = self
                    .shared
                    .storage
                    .remove(&crate::wal::segment::temporary_file_name(header.segment_id));
                return Err(WalError::Io {
                    context: "create a segment",
                    source,
                });
            }
        };
        self.active = file;
        self.active_id = header.segment_id;
        self.offset = SEGMENT_HEADER_LEN as u64;
        self.shared
            .segment_created(header.segment_id, header.first_lsn);
        Shared::prepare_spare(&self.shared);
        Ok(())
    }
}
