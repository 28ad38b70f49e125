//! The put pipeline: one `do_put` from decoded command to answer.
//!
//! Order of one message, under its origin's ordering lock:
//! 1. owed abort markers first; a sequence at or below the origin's memory
//!    number is a replay: its open transaction is discarded, nothing written;
//! 2. the stream is read; a message without rows is answered whatever its
//!    path, descriptors and schema say (a probe, or the close of a
//!    transaction); the first batch with rows is admitted (table identity,
//!    store checks, layout and types, back-pressure) before anything is
//!    written, and every batch is checked and converted to stored types;
//! 3. the message is committed only if its stream ended normally: a client
//!    that cancels, resets the stream, passes its deadline or goes quiet gets
//!    nothing kept (its frames get an abort marker);
//! 4. the answer comes after the fsync of the message's last frame.
//!
//! Owns the shape of a put; the rules it applies live in `admission`,
//! `sync` and `pending`. Knows no tonic (the Flight adapter hands it items
//! and a cancellation token) and no Delta.

mod writer;

use std::sync::atomic::Ordering;
use std::time::Duration;

use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use futures::{Stream, StreamExt};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::admission::{to_stored_batch, StoredLayout, TypeClaim};
use crate::error::NodeError;
use crate::identity::{Origin, TableId};
use crate::node::Node;
use crate::pending::Completion;
use crate::proto::schema::TableFormat;
use crate::proto::sync::{DataSyncCommand, DataSyncResponse};
use crate::sync::origins::{write_abort, OriginState};
use crate::sync::squash::{check_change_batch, ChangeBatch};
use crate::wal::Lsn;
use writer::{Limits, MessageWriter};

/// One item of a put's Arrow stream, as the Flight adapter decodes it.
#[derive(Debug)]
pub enum PutItem {
    Schema(SchemaRef),
    Batch(RecordBatch),
}

/// How reading a message's stream goes on or ended.
enum Flow {
    Continue,
    Ended,
    /// Over the high watermark at the first row: answer `accepted = false`.
    Overloaded,
}

/// The admitted part of a message (from its first batch with rows).
struct Admitted<'a> {
    table: TableId,
    stored: StoredLayout,
    claim: TypeClaim,
    writer: MessageWriter<'a>,
}

/// A message being read.
struct Message<'a> {
    node: &'a Node,
    command: &'a DataSyncCommand,
    origin: &'a Origin,
    schema: Option<SchemaRef>,
    batches: usize,
    /// Bytes of the origin's open transaction before this message.
    open_bytes: Option<u64>,
    admitted: Option<Admitted<'a>>,
}

impl Node {
    /// Handles one `do_put`: see the module doc and PROTOCOL.md. `cancel` is
    /// cancelled by the Flight adapter when the call ends before the put does.
    pub async fn put<S>(
        &self,
        command: DataSyncCommand,
        mut items: S,
        cancel: CancellationToken,
    ) -> Result<DataSyncResponse, NodeError>
    where
        S: Stream<Item = Result<PutItem, NodeError>> + Unpin,
    {
        if self.shutting_down.load(Ordering::SeqCst) {
            return Err(NodeError::ShuttingDown);
        }
        check_origin(&command.origin)?;
        let origin = Origin::new(&command.origin);
        let entry = self.origins.entry(&origin);
        let mut state = tokio::select! {
            biased;
            _ = cancel.cancelled() => return Err(NodeError::Cancelled),
            state = entry.state.lock() => state,
        };
        let result = self
            .put_locked(&command, &origin, &mut state, &mut items, &cancel)
            .await;
        state.last_message = Instant::now();
        result
    }

    async fn put_locked<S>(
        &self,
        command: &DataSyncCommand,
        origin: &Origin,
        state: &mut OriginState,
        items: &mut S,
        cancel: &CancellationToken,
    ) -> Result<DataSyncResponse, NodeError>
    where
        S: Stream<Item = Result<PutItem, NodeError>> + Unpin,
    {
        self.write_owed_aborts(origin, state).await?;
        if let Some(sequence) = command.sequence_number {
            if self.pending.numbers(origin).memory >= Some(sequence) {
                // An idempotent resend: whatever part of this transaction was
                // streamed again since is discarded, nothing is written.
                self.abort_open(origin, state).await?;
                self.drain(items, cancel).await?;
                return Ok(self.answer(origin, state, true));
            }
        }
        let mut message = Message {
            node: self,
            command,
            origin,
            schema: None,
            batches: 0,
            open_bytes: state.open.as_ref().map(|open| open.bytes),
            admitted: None,
        };
        let flow = message.read(items, self.idle_timeout(), cancel).await;
        let flow = match flow {
            Ok(_) if cancel.is_cancelled() => Err(NodeError::Cancelled),
            other => other,
        };
        match flow {
            Ok(Flow::Ended | Flow::Continue) => self.commit(message, origin, state, cancel).await,
            Ok(Flow::Overloaded) => {
                self.drain(items, cancel).await?;
                Ok(self.answer(origin, state, false))
            }
            Err(error) => Err(self.give_up(origin, state, message, error).await),
        }
    }

    /// The stream ended normally: keep the message.
    async fn commit(
        &self,
        message: Message<'_>,
        origin: &Origin,
        state: &mut OriginState,
        cancel: &CancellationToken,
    ) -> Result<DataSyncResponse, NodeError> {
        let command = message.command;
        let Some(sequence) = command.sequence_number else {
            let Some(mut admitted) = message.admitted else {
                return Ok(self.answer(origin, state, true)); // a probe
            };
            let index = message.batches;
            let frames = match admitted.writer.finish(index, None).await {
                Ok(frames) => frames,
                Err(error) => {
                    return Err(self.abandon(origin, state, &admitted.writer, error).await)
                }
            };
            state
                .open
                .get_or_insert_with(Default::default)
                .extend(Some(&admitted.table), &frames);
            admitted.claim.accept();
            return Ok(self.answer(origin, state, true));
        };
        // Before the closing frame gets its Lsn (see `pending`, invariant 1).
        let reservation = self
            .pending
            .reserve_commit(Lsn(self.wal.durable_lsn().borrow().0 + 1));
        if cancel.is_cancelled() {
            return Err(self
                .give_up(origin, state, message, NodeError::Cancelled)
                .await);
        }
        let index = message.batches;
        let open_bytes = message.open_bytes;
        let (table, claim, mut writer) = match message.admitted {
            Some(admitted) => (Some(admitted.table), Some(admitted.claim), admitted.writer),
            None => (None, None, self.writer(command, origin, None, open_bytes)),
        };
        let frames = match writer.finish(index, Some(sequence)).await {
            Ok(frames) => frames,
            Err(error) => return Err(self.abandon(origin, state, &writer, error).await),
        };
        let mut open = state.open.take().unwrap_or_default();
        open.extend(table.as_ref(), &frames);
        let commit = frames.last().map_or(Lsn(0), |f| f.lsn);
        let completion = Completion {
            origin: origin.clone(),
            sequence,
            commit,
            frames: open.frames,
            accepted_at: Instant::now(),
        };
        self.pending.complete(completion, Some(reservation));
        if let Some(claim) = claim {
            claim.accept();
        }
        Ok(self.answer(origin, state, true))
    }

    fn writer<'a>(
        &'a self,
        command: &'a DataSyncCommand,
        origin: &'a Origin,
        schema: Option<SchemaRef>,
        open_bytes: Option<u64>,
    ) -> MessageWriter<'a> {
        let limits = Limits {
            message_bytes_max: self.config.message_bytes_max,
            frame_bytes_target: self.config.frame_bytes_target,
            transaction_bytes_max: self.config.pending_bytes_high_watermark,
        };
        MessageWriter::new(
            &self.wal,
            &self.pending,
            origin,
            command,
            limits,
            schema,
            open_bytes,
        )
    }

    /// A message failed after reading started: frames it already wrote get
    /// an abort marker, so they are never applied (not even joined to a
    /// later transaction at recovery).
    async fn give_up(
        &self,
        origin: &Origin,
        state: &mut OriginState,
        message: Message<'_>,
        error: NodeError,
    ) -> NodeError {
        match &message.admitted {
            Some(admitted) => self.abandon(origin, state, &admitted.writer, error).await,
            None => self.fail(origin, state, None, error).await,
        }
    }

    /// [`Self::give_up`] for a message whose writer may have written frames.
    async fn abandon(
        &self,
        origin: &Origin,
        state: &mut OriginState,
        writer: &MessageWriter<'_>,
        error: NodeError,
    ) -> NodeError {
        if writer.opened() {
            self.pending.close_open(origin);
        }
        self.fail(origin, state, writer.written(), error).await
    }

    /// Records owed abort markers for `written` and writes them if it can.
    async fn fail(
        &self,
        origin: &Origin,
        state: &mut OriginState,
        written: Option<(Lsn, Lsn)>,
        error: NodeError,
    ) -> NodeError {
        if let Some(range) = written {
            state.orphans.push(range);
        }
        if state.open.is_none() {
            self.pending.close_open(origin);
        }
        if let Err(abort_error) = self.write_owed_aborts(origin, state).await {
            tracing::warn!(%abort_error, origin = %origin, "cannot mark a failed message's frames as aborted yet; will retry before the origin's next put");
        }
        error
    }

    /// Writes the abort markers owed for failed messages of this origin.
    async fn write_owed_aborts(
        &self,
        origin: &Origin,
        state: &mut OriginState,
    ) -> Result<(), NodeError> {
        while let Some((first, last)) = state.orphans.first().copied() {
            write_abort(&self.wal, origin, first, last).await?;
            state.orphans.remove(0);
        }
        Ok(())
    }

    /// Discards the origin's open transaction, if any (durably).
    pub(crate) async fn abort_open(
        &self,
        origin: &Origin,
        state: &mut OriginState,
    ) -> Result<(), NodeError> {
        let Some(open) = state.open.take() else {
            return Ok(());
        };
        self.pending.close_open(origin);
        if let Some((first, last)) = open.range {
            write_abort(&self.wal, origin, first, last).await?;
        }
        Ok(())
    }

    /// Reads the rest of a message that keeps nothing (a replay, or one
    /// refused as overloaded) and throws it away, so that the answer comes
    /// after the client's end of stream. Answered while the client still
    /// sends, the call is closed under it: pyarrow then sometimes reports no
    /// `PutResult` at all (seen as an all-default answer, `memory = None`).
    /// Bounded like a message: `--message-bytes-max` bytes, the idle timeout,
    /// the client's cancellation.
    async fn drain<S>(&self, items: &mut S, cancel: &CancellationToken) -> Result<(), NodeError>
    where
        S: Stream<Item = Result<PutItem, NodeError>> + Unpin,
    {
        let limit = self.config.message_bytes_max;
        let idle = self.idle_timeout();
        let mut bytes = 0u64;
        loop {
            let item = tokio::select! {
                biased;
                _ = cancel.cancelled() => return Err(NodeError::Cancelled),
                item = tokio::time::timeout(idle, items.next()) => item,
            };
            match item {
                Err(_) => {
                    return Err(NodeError::Idle {
                        ms: u64::try_from(idle.as_millis()).unwrap_or(u64::MAX),
                    })
                }
                Ok(None) => return Ok(()),
                Ok(Some(item)) => {
                    if let PutItem::Batch(batch) = item? {
                        bytes = bytes.saturating_add(batch.get_array_memory_size() as u64);
                        if bytes > limit {
                            return Err(NodeError::MessageTooLarge { limit });
                        }
                    }
                }
            }
        }
    }

    fn answer(&self, origin: &Origin, state: &mut OriginState, accepted: bool) -> DataSyncResponse {
        let first = !state.answered;
        state.answered = true;
        let numbers = self.pending.numbers(origin);
        DataSyncResponse {
            accepted,
            memory_sequence_number: numbers.memory,
            durable_sequence_number: numbers.durable,
            first,
        }
    }

    fn idle_timeout(&self) -> Duration {
        Duration::from_millis(self.config.put_idle_timeout_ms)
    }
}

impl<'a> Message<'a> {
    /// Reads the stream to its end (or the first error).
    async fn read<S>(
        &mut self,
        items: &mut S,
        idle: Duration,
        cancel: &CancellationToken,
    ) -> Result<Flow, NodeError>
    where
        S: Stream<Item = Result<PutItem, NodeError>> + Unpin,
    {
        loop {
            let item = tokio::select! {
                biased;
                _ = cancel.cancelled() => return Err(NodeError::Cancelled),
                item = tokio::time::timeout(idle, items.next()) => item,
            };
            let item = match item {
                Err(_) => {
                    return Err(NodeError::Idle {
                        ms: u64::try_from(idle.as_millis()).unwrap_or(u64::MAX),
                    })
                }
                Ok(None) => return Ok(Flow::Ended),
                Ok(Some(item)) => item?,
            };
            match item {
                PutItem::Schema(schema) => {
                    if self.schema.is_some() {
                        return Err(NodeError::Stream(
                            "a second schema message in one stream".into(),
                        ));
                    }
                    self.schema = Some(schema);
                }
                PutItem::Batch(batch) => match self.batch(batch).await? {
                    Flow::Continue => {}
                    other => return Ok(other),
                },
            }
        }
    }

    async fn batch(&mut self, batch: RecordBatch) -> Result<Flow, NodeError> {
        let index = self.batches;
        self.batches += 1;
        if batch.num_rows() == 0 {
            return Ok(Flow::Continue);
        }
        if self.admitted.is_none() {
            if self.overloaded() {
                return Ok(Flow::Overloaded);
            }
            let schema = self.schema.clone().unwrap_or_else(|| batch.schema());
            self.admitted = Some(self.admit(schema).await?);
        }
        let Some(admitted) = &mut self.admitted else {
            return Ok(Flow::Continue);
        };
        let stored = to_stored_batch(index, &batch, &admitted.stored)?;
        check_change_batch(&ChangeBatch {
            layout: &admitted.stored.layout,
            batch: &stored,
        })
        .map_err(|error| NodeError::Batch {
            batch: index,
            problem: error.to_string(),
        })?;
        admitted.writer.push(index, stored).await?;
        Ok(Flow::Continue)
    }

    fn overloaded(&self) -> bool {
        let pending = self.node.pending.pending_bytes() + self.open_bytes.unwrap_or(0);
        pending >= self.node.config.pending_bytes_high_watermark
    }

    /// Every check a message with rows must pass before anything is written.
    async fn admit(&self, schema: SchemaRef) -> Result<Admitted<'a>, NodeError> {
        let command = self.command;
        check_command(command)?;
        let node = self.node;
        let table = node.admission.table_id(command, true)?;
        node.admission.check_store(&table, &node.pending).await?;
        let (stored, claim) = node.admission.layout(&table, command, &schema)?;
        let writer = node.writer(
            command,
            self.origin,
            Some(stored.schema.clone()),
            self.open_bytes,
        );
        Ok(Admitted {
            table,
            stored,
            claim,
            writer,
        })
    }
}

/// Longest origin accepted, in bytes. An origin is written into every frame
/// and every checkpoint (one entry per origin), so an unbounded one could
/// make checkpoints too large to write and stop WAL truncation for good.
pub const ORIGIN_BYTES_MAX: usize = 1024;

/// The origin rules of every message, probes included: at most
/// [`ORIGIN_BYTES_MAX`] bytes and no control characters (it reaches logs,
/// `wal dump` and metrics). Emptiness is checked only for messages with
/// rows (see [`check_command`]).
fn check_origin(origin: &str) -> Result<(), NodeError> {
    let problem = if origin.len() > ORIGIN_BYTES_MAX {
        format!("is {} bytes long; at most {ORIGIN_BYTES_MAX}", origin.len())
    } else if origin.chars().any(char::is_control) {
        format!("{origin:?} contains a control character")
    } else {
        return Ok(());
    };
    Err(NodeError::InvalidCommand {
        field: "origin",
        problem,
    })
}

/// The command fields a message with rows needs besides its table.
fn check_command(command: &DataSyncCommand) -> Result<(), NodeError> {
    match TableFormat::try_from(command.format) {
        Ok(TableFormat::Delta) => {}
        Ok(TableFormat::Iceberg) => {
            return Err(NodeError::UnsupportedFormat {
                format: "ICEBERG".into(),
            })
        }
        Err(_) => {
            return Err(NodeError::InvalidCommand {
                field: "format",
                problem: format!("{} is not a known TableFormat", command.format),
            })
        }
    }
    if command.origin.is_empty() {
        return Err(NodeError::InvalidCommand {
            field: "origin",
            problem: "must not be empty".into(),
        });
    }
    Ok(())
}
