//! The node: protocol semantics of `do_put` between the Flight adapter and
//! the WAL. Validates a command before anything is written, keeps per-origin
//! transactions and sequence numbers, answers replays and probes without
//! writing, applies back-pressure, appends messages as WAL frames and answers
//! only after their fsync, and rebuilds all of it from the WAL at start.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use futures::{Stream, StreamExt};
use prost::Message;

use crate::config::Config;
use crate::error::NodeError;
use crate::index::{Index, PendingFrame, TableTarget};
use crate::proto::schema::TableFormat;
use crate::proto::sync::{DataSyncCommand, DataSyncResponse};
use crate::proto::wal::{Abort, Checkpoint};
use crate::record::{decode_record_header, encode_record};
use crate::sync::layout::SyncLayout;
use crate::sync::squash::{check_change_batch, ChangeBatch};
use crate::wal::format::FrameKind;
use crate::wal::{Appended, Lsn, Recovery, Wal};

/// One item of a put's Arrow stream, as the Flight adapter decodes it.
#[derive(Debug)]
pub enum PutItem {
    Schema(SchemaRef),
    Batch(RecordBatch),
}

/// The frames of an origin's open transaction.
#[derive(Debug, Default)]
struct OpenTransaction {
    frames: Vec<(TableTarget, PendingFrame)>,
    bytes: u64,
}

/// An origin's sequence numbers: readable and updatable without waiting
/// for the origin's ordering lock (the flusher and checkpoints never wait
/// behind a put that is streaming or waiting for its fsync).
#[derive(Debug, Default, Clone, Copy)]
struct Numbers {
    /// Highest sequence whose transaction is in the WAL and fsynced.
    memory: Option<u64>,
    /// Highest sequence such that it and every earlier transaction are
    /// committed to the table store.
    durable: Option<u64>,
}

/// One origin: its ordering lock around the transaction state, and its
/// numbers beside it.
#[derive(Debug, Default)]
struct Origin {
    state: tokio::sync::Mutex<OriginState>,
    numbers: Mutex<Numbers>,
}

impl Origin {
    fn numbers(&self) -> MutexGuard<'_, Numbers> {
        self.numbers.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[derive(Debug, Default)]
struct OriginState {
    open: Option<OpenTransaction>,
    /// Whether this origin got its `first = true` answer since start.
    answered: bool,
    /// Lsn ranges of frames of failed messages whose abort marker could not
    /// be written yet (full disk); written before the origin's next put.
    orphans: Vec<(Lsn, Lsn)>,
}

/// What recovery found, for the start line.
#[derive(Debug, Clone)]
pub struct StartState {
    pub wal_id: String,
    pub segments: usize,
    pub frames: usize,
    pub pending_frames: usize,
    pub first_lsn: Option<u64>,
    pub last_lsn: Option<u64>,
    pub origins: usize,
    pub aborted_transactions: usize,
    pub torn_tail: Option<String>,
}

/// The ingest node. Shared by every request (wrap in an `Arc`).
pub struct Node {
    config: Config,
    wal: Wal,
    /// The per-origin ordering lock: messages of one origin are handled one
    /// at a time (the protocol orders them); different origins run in parallel.
    origins: Mutex<HashMap<String, Arc<Origin>>>,
    index: Mutex<Index>,
    /// Column types per table, accepted so far or claimed by puts in
    /// flight (checked at put time).
    schemas: Mutex<HashMap<String, HashMap<String, KnownType>>>,
    /// Per table, Lsns that a flush must stay below: frames of open
    /// transactions and, while a put is writing, a lower bound of the Lsns it
    /// may get (durable Lsn + 1 when it started). Counted, as a multiset.
    holds: Mutex<HashMap<String, BTreeMap<Lsn, usize>>>,
    /// Tables whose store schema was read (or found absent) since start.
    store_checked: Mutex<std::collections::HashSet<String>>,
    shutting_down: AtomicBool,
    pub flush_metrics: FlushMetrics,
}

/// Counters of the flush scheduler.
#[derive(Debug, Default)]
pub struct FlushMetrics {
    pub commits: AtomicU64,
    pub already_applied: AtomicU64,
    pub failures: AtomicU64,
    pub rows_written: AtomicU64,
    pub frames_flushed: AtomicU64,
}

/// A column type as the put-time check sees it. `accepted`: the table store
/// has it or an acknowledged put wrote rows with it. `in_flight`: puts that
/// passed the check with it and have not finished. An entry neither accepted
/// nor in flight is removed, so a refused put never fixes a column's type.
#[derive(Debug, Clone)]
struct KnownType {
    data_type: arrow::datatypes::DataType,
    accepted: bool,
    in_flight: usize,
}

/// A put's claim on its column types: dropped unaccepted on every path that
/// writes no rows, accepted once its rows are in the WAL.
struct TypeClaim<'a> {
    node: &'a Node,
    table: String,
    columns: Vec<String>,
    accepted: bool,
}

impl TypeClaim<'_> {
    fn accept(mut self) {
        self.accepted = true;
    }
}

impl Drop for TypeClaim<'_> {
    fn drop(&mut self) {
        let mut schemas = self.node.schemas.lock().unwrap_or_else(|e| e.into_inner());
        let Some(known) = schemas.get_mut(&self.table) else {
            return;
        };
        for column in &self.columns {
            if let Some(entry) = known.get_mut(column) {
                entry.in_flight = entry.in_flight.saturating_sub(1);
                entry.accepted |= self.accepted;
                if !entry.accepted && entry.in_flight == 0 {
                    known.remove(column);
                }
            }
        }
    }
}

/// Releases a hold when dropped (every exit path of a put).
struct Hold<'a> {
    node: &'a Node,
    table: String,
    lsn: Lsn,
}

impl Hold<'_> {
    /// Keeps the hold past this guard (released explicitly later).
    fn keep(self) {
        std::mem::forget(self);
    }
}

impl Drop for Hold<'_> {
    fn drop(&mut self) {
        self.node.release(&self.table, self.lsn);
    }
}

impl Node {
    /// Opens the WAL under the data directory, recovers the index and every
    /// origin's sequence numbers, and aborts transactions left open by the
    /// previous run (durably, before serving).
    pub async fn open(config: Config) -> Result<(Arc<Node>, StartState), NodeError> {
        let (wal, recovery) = Wal::open_dir(config.wal_dir(), config.wal.clone())?;
        let node = Arc::new(Node {
            config,
            wal,
            origins: Mutex::new(HashMap::new()),
            index: Mutex::new(Index::default()),
            schemas: Mutex::new(HashMap::new()),
            holds: Mutex::new(HashMap::new()),
            store_checked: Mutex::new(std::collections::HashSet::new()),
            shutting_down: AtomicBool::new(false),
            flush_metrics: FlushMetrics::default(),
        });
        let mut state = node.recover(recovery).await?;
        node.reconcile_with_store().await;
        state.pending_frames = node.lock_index().pending_frames();
        Ok((node, state))
    }

    /// Before serving: every table with pending frames is asked for its
    /// exactly-once marker, so frames a flush committed just before a crash
    /// (after the Delta commit, before the checkpoint frame) are dropped and
    /// the durable sequences are what the store holds: they never go back
    /// across a restart. A store that cannot be read now is left to the
    /// flush, which checks the marker again before applying anything.
    async fn reconcile_with_store(&self) {
        let tables: Vec<TableTarget> = self
            .lock_index()
            .tables()
            .filter(|t| !t.frames.is_empty())
            .map(|t| t.target.clone())
            .collect();
        let wal_id = self.wal.id().to_string();
        for target in tables {
            match applied_lsn_in_store(&target, &wal_id).await {
                Ok(Some(lsn)) => {
                    let durable = self.lock_index().mark_applied(&target.key, lsn);
                    self.set_durable(durable);
                }
                Ok(None) => {}
                Err(error) => {
                    tracing::warn!(table = %target.key, %error, "cannot read the table's commit marker at start; the flush will check it");
                }
            }
        }
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn wal(&self) -> &Wal {
        &self.wal
    }

    async fn recover(&self, recovery: Recovery) -> Result<StartState, NodeError> {
        let mut origins: HashMap<String, OriginState> = HashMap::new();
        let mut numbers: HashMap<String, Numbers> = HashMap::new();
        let mut index = Index::default();
        let mut applied: HashMap<String, Lsn> = HashMap::new();
        for frame in &recovery.frames {
            let view = self.wal.read(frame.pointer)?;
            match frame.header.kind {
                FrameKind::Data => {
                    let (command, rows) = decode_record_header(view.payload()).map_err(|e| {
                        NodeError::Wal(crate::wal::WalError::Corrupted {
                            segment: frame.pointer.segment,
                            offset: frame.pointer.offset,
                            reason: e.to_string(),
                        })
                    })?;
                    let target = self.resolve_target(&command, false)?;
                    if rows > 0 {
                        self.learn_from_frame(&target, &command, view.payload());
                    }
                    let origin = origins.entry(command.origin.clone()).or_default();
                    let open = origin.open.get_or_insert_with(OpenTransaction::default);
                    open.bytes += u64::from(frame.pointer.len);
                    if rows > 0 {
                        open.frames.push((
                            target,
                            PendingFrame {
                                lsn: frame.header.lsn,
                                pointer: frame.pointer,
                                origin: command.origin.clone(),
                                sequence: 0,
                                rows,
                                bytes: u64::from(frame.pointer.len),
                                accepted_at: Instant::now(),
                            },
                        ));
                    }
                    if let Some(sequence) = command.sequence_number {
                        let open = origin.open.take().unwrap_or_default();
                        numbers.entry(command.origin.clone()).or_default().memory = Some(sequence);
                        index.add_transaction(&command.origin, sequence, open.frames);
                    }
                }
                FrameKind::Abort => {
                    let abort = Abort::decode(view.payload()).map_err(|e| corrupted(frame, e))?;
                    if let Some(origin) = origins.get_mut(&abort.origin) {
                        discard_range(origin, Lsn(abort.first_lsn), Lsn(abort.last_lsn));
                    }
                }
                FrameKind::Checkpoint => {
                    let checkpoint =
                        Checkpoint::decode(view.payload()).map_err(|e| corrupted(frame, e))?;
                    for table in checkpoint.tables {
                        let lsn = applied.entry(table.table).or_default();
                        *lsn = (*lsn).max(Lsn(table.applied_lsn));
                    }
                    for saved in checkpoint.origins {
                        let known = numbers.entry(saved.origin).or_default();
                        known.memory = known.memory.max(saved.memory_sequence_number);
                        known.durable = known.durable.max(saved.durable_sequence_number);
                    }
                }
            }
        }
        for (table, lsn) in &applied {
            let durable = index.mark_applied(table, *lsn);
            for (name, sequence) in durable {
                let known = numbers.entry(name).or_default();
                known.durable = known.durable.max(Some(sequence));
            }
        }
        let mut aborted = 0;
        for (name, origin) in origins.iter_mut() {
            if let Some(open) = origin.open.take() {
                let (Some(first), Some(last)) = (open.frames.first(), open.frames.last()) else {
                    continue;
                };
                self.write_abort(name, first.1.lsn, last.1.lsn).await?;
                aborted += 1;
            }
        }
        let state = StartState {
            wal_id: recovery.wal_id.to_string(),
            segments: recovery.segments.len().max(1),
            frames: recovery.frames.len(),
            pending_frames: index.pending_frames(),
            first_lsn: recovery.frames.first().map(|f| f.header.lsn.0),
            last_lsn: recovery.frames.last().map(|f| f.header.lsn.0),
            origins: numbers
                .keys()
                .chain(origins.keys())
                .collect::<std::collections::HashSet<_>>()
                .len(),
            aborted_transactions: aborted,
            torn_tail: recovery
                .torn_tail
                .as_ref()
                .map(|t| format!("segment {} offset {}", t.segment.0, t.offset)),
        };
        *self.lock_index() = index;
        let mut map = self.lock_origins();
        let names: std::collections::HashSet<String> =
            origins.keys().chain(numbers.keys()).cloned().collect();
        for name in names {
            let origin = Origin {
                state: tokio::sync::Mutex::new(origins.remove(&name).unwrap_or_default()),
                numbers: Mutex::new(numbers.get(&name).copied().unwrap_or_default()),
            };
            map.insert(name, Arc::new(origin));
        }
        Ok(state)
    }

    /// Counters and gauges as JSON (the `metrics` Flight action).
    pub fn metrics_json(&self) -> serde_json::Value {
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let wal = self.wal.metrics();
        let flush = &self.flush_metrics;
        let (pending_bytes, pending_frames, tables) = {
            let index = self.lock_index();
            (
                index.pending_bytes(),
                index.pending_frames(),
                index.tables().count(),
            )
        };
        serde_json::json!({
            "wal": {
                "frames_appended": load(&wal.frames_appended),
                "bytes_written": load(&wal.bytes_written),
                "fsyncs": load(&wal.syncs),
                "group_commits": load(&wal.batches),
                "segments_created": load(&wal.segments_created),
                "segments_removed": load(&wal.segments_removed),
                "segments_recycled": load(&wal.segments_recycled),
                "segments": self.wal.segments().len(),
                "log_bytes": self.wal.log_bytes(),
                "durable_lsn": self.wal.durable_lsn().borrow().0,
            },
            "pending": {
                "bytes": pending_bytes,
                "frames": pending_frames,
                "tables": tables,
                "high_watermark_bytes": self.config.pending_bytes_high_watermark,
            },
            "flush": {
                "commits": load(&flush.commits),
                "already_applied": load(&flush.already_applied),
                "failures": load(&flush.failures),
                "rows_written": load(&flush.rows_written),
                "frames_flushed": load(&flush.frames_flushed),
            },
            "origins": self.lock_origins().len(),
        })
    }

    /// Stops accepting puts; in-flight puts finish.
    pub fn begin_shutdown(&self) {
        self.shutting_down.store(true, Ordering::SeqCst);
    }

    /// Handles one `do_put`: see the module doc and PROTOCOL.md.
    pub async fn put<S>(
        &self,
        command: DataSyncCommand,
        mut items: S,
    ) -> Result<DataSyncResponse, NodeError>
    where
        S: Stream<Item = Result<PutItem, NodeError>> + Unpin,
    {
        if self.shutting_down.load(Ordering::SeqCst) {
            return Err(NodeError::ShuttingDown);
        }
        let target = self.resolve_target(&command, true)?;
        self.learn_from_store(&target).await;
        // The schema message comes first; a stream without one has no rows.
        let mut first_batch = None;
        let idle = std::time::Duration::from_millis(self.config.put_idle_timeout_ms);
        let (layout, claim) = match next_item(&mut items, idle).await? {
            None => (None, None),
            Some(item) => {
                let (layout, claim) = match item {
                    PutItem::Schema(schema) => self.check_layout(&command, &target, &schema)?,
                    PutItem::Batch(batch) => {
                        let checked = self.check_layout(&command, &target, &batch.schema())?;
                        first_batch = Some(batch);
                        checked
                    }
                };
                (Some(layout), Some(claim))
            }
        };
        let entry = self.origin(&command.origin);
        let mut origin = entry.state.lock().await;
        self.abort_orphans(&command.origin, &mut origin).await?;
        if let Some(sequence) = command.sequence_number {
            if entry
                .numbers()
                .memory
                .is_some_and(|memory| sequence <= memory)
            {
                // An idempotent resend: whatever part of this transaction was
                // streamed again since is discarded, nothing is written.
                self.abort_open(&command.origin, &mut origin).await?;
                return Ok(self.answer(&entry, &mut origin, true));
            }
        }
        let pending = self.lock_index().pending_bytes() + self.open_bytes_estimate(&origin);
        if pending >= self.config.pending_bytes_high_watermark {
            return Ok(self.answer(&entry, &mut origin, false));
        }
        let open_bytes = origin.open.as_ref().map_or(0, |o| o.bytes);
        let mut writer = MessageWriter::new(self, &command, &target, layout.as_ref(), open_bytes);
        if let Some(batch) = first_batch {
            if let Err(error) = writer.push(batch).await {
                return Err(self.give_up(&mut origin, &writer, error).await);
            }
        }
        loop {
            let item = match next_item(&mut items, idle).await {
                Ok(Some(item)) => Ok(item),
                Ok(None) => break,
                Err(error) => Err(error),
            };
            let result = match item {
                Ok(PutItem::Batch(batch)) => writer.push(batch).await,
                Ok(PutItem::Schema(_)) => Err(NodeError::Arrow(
                    "a second schema message in one stream".into(),
                )),
                Err(error) => Err(error),
            };
            if let Err(error) = result {
                return Err(self.give_up(&mut origin, &writer, error).await);
            }
        }
        match (writer.rows, command.sequence_number) {
            (0, None) if writer.frames.is_empty() => {
                return Ok(self.answer(&entry, &mut origin, true))
            }
            (0, Some(_)) if origin.open.is_none() && writer.frames.is_empty() => {
                return Err(NodeError::NothingToClose {
                    origin: command.origin.clone(),
                });
            }
            _ => {}
        }
        let wrote_rows = writer.rows > 0;
        let frames = match writer.finish().await {
            Ok(frames) => frames,
            Err(error) => return Err(self.give_up(&mut origin, &writer, error).await),
        };
        if let Some(claim) = claim.filter(|_| wrote_rows) {
            claim.accept();
        }
        let open = origin.open.get_or_insert_with(OpenTransaction::default);
        for (target, frame) in frames {
            open.bytes += frame.bytes;
            if frame.rows > 0 {
                self.hold(&target.key, frame.lsn).keep();
                open.frames.push((target, frame));
            }
        }
        if let Some(sequence) = command.sequence_number {
            let open = origin.open.take().unwrap_or_default();
            entry.numbers().memory = Some(sequence);
            let held: Vec<(String, Lsn)> = open
                .frames
                .iter()
                .map(|(t, f)| (t.key.clone(), f.lsn))
                .collect();
            // Index first, then release: a flush never sees these frames
            // neither held nor pending.
            self.lock_index()
                .add_transaction(&command.origin, sequence, open.frames);
            for (table, lsn) in held {
                self.release(&table, lsn);
            }
        }
        Ok(self.answer(&entry, &mut origin, true))
    }

    /// A message failed midway: its frames already in the WAL get an abort
    /// marker so they are never applied (not even joined to a later
    /// transaction at recovery). If the marker cannot be written now, the
    /// range is remembered and marked before the origin's next put.
    async fn give_up(
        &self,
        origin: &mut OriginState,
        writer: &MessageWriter<'_>,
        error: NodeError,
    ) -> NodeError {
        if let Some(range) = writer.written() {
            origin.orphans.push(range);
            if let Err(abort_error) = self.abort_orphans(&writer.command.origin, origin).await {
                tracing::warn!(%abort_error, "cannot mark a failed message's frames as aborted yet; will retry before the origin's next put");
            }
        }
        error
    }

    /// Writes the abort markers owed for failed messages of this origin.
    async fn abort_orphans(&self, name: &str, origin: &mut OriginState) -> Result<(), NodeError> {
        while let Some((first, last)) = origin.orphans.first().copied() {
            self.write_abort(name, first, last).await?;
            origin.orphans.remove(0);
        }
        Ok(())
    }

    fn answer(&self, entry: &Origin, origin: &mut OriginState, accepted: bool) -> DataSyncResponse {
        let first = !origin.answered;
        origin.answered = true;
        let numbers = *entry.numbers();
        DataSyncResponse {
            accepted,
            memory_sequence_number: numbers.memory,
            durable_sequence_number: numbers.durable,
            first,
        }
    }

    fn open_bytes_estimate(&self, origin: &OriginState) -> u64 {
        origin.open.as_ref().map_or(0, |o| o.bytes)
    }

    /// Writes an abort marker for the origin's open transaction, if any.
    async fn abort_open(&self, name: &str, origin: &mut OriginState) -> Result<(), NodeError> {
        let Some(open) = origin.open.take() else {
            return Ok(());
        };
        for (target, frame) in &open.frames {
            self.release(&target.key, frame.lsn);
        }
        if let (Some(first), Some(last)) = (open.frames.first(), open.frames.last()) {
            self.write_abort(name, first.1.lsn, last.1.lsn).await?;
        }
        Ok(())
    }

    /// Appends an abort marker: the origin's frames with Lsns in
    /// `first..=last` that no sequence-carrying frame closed are discarded,
    /// now and at every later recovery.
    async fn write_abort(&self, origin: &str, first: Lsn, last: Lsn) -> Result<(), NodeError> {
        let abort = Abort {
            origin: origin.to_string(),
            first_lsn: first.0,
            last_lsn: last.0,
        };
        self.wal
            .append(FrameKind::Abort, abort.encode_to_vec())
            .await?;
        Ok(())
    }

    fn hold(&self, table: &str, lsn: Lsn) -> Hold<'_> {
        let mut holds = self.holds.lock().unwrap_or_else(|e| e.into_inner());
        *holds
            .entry(table.to_string())
            .or_default()
            .entry(lsn)
            .or_default() += 1;
        Hold {
            node: self,
            table: table.to_string(),
            lsn,
        }
    }

    fn release(&self, table: &str, lsn: Lsn) {
        let mut holds = self.holds.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(lsns) = holds.get_mut(table) {
            if let Some(count) = lsns.get_mut(&lsn) {
                *count -= 1;
                if *count == 0 {
                    lsns.remove(&lsn);
                }
            }
            if lsns.is_empty() {
                holds.remove(table);
            }
        }
    }

    /// A flush of `table` must stay below this Lsn (open transactions' frames
    /// and puts in flight on the table).
    pub fn open_floor(&self, table: &str) -> Option<Lsn> {
        let holds = self.holds.lock().unwrap_or_else(|e| e.into_inner());
        holds
            .get(table)
            .and_then(|lsns| lsns.keys().next().copied())
    }

    /// The lowest held Lsn over all tables (WAL truncation stays below it).
    pub fn oldest_open_lsn(&self) -> Option<Lsn> {
        let holds = self.holds.lock().unwrap_or_else(|e| e.into_inner());
        holds
            .values()
            .filter_map(|lsns| lsns.keys().next().copied())
            .min()
    }

    fn origin(&self, name: &str) -> Arc<Origin> {
        self.lock_origins()
            .entry(name.to_string())
            .or_default()
            .clone()
    }

    /// Current numbers of an origin without answering (tests, metrics).
    pub fn origin_numbers(&self, name: &str) -> (Option<u64>, Option<u64>) {
        let numbers = *self.origin(name).numbers();
        (numbers.memory, numbers.durable)
    }

    /// Validates the command's own fields and resolves its table.
    fn resolve_target(
        &self,
        command: &DataSyncCommand,
        check_allowed: bool,
    ) -> Result<TableTarget, NodeError> {
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
        check_table_path(&command.path)?;
        let (store_root, options) = match &command.store {
            Some(store) if !store.location.is_empty() => {
                if check_allowed
                    && !self.config.allow_store.is_empty()
                    && !store_allowed(&store.location, &self.config.allow_store)
                {
                    return Err(NodeError::StoreNotAllowed {
                        location: store.location.clone(),
                        allowed: self.config.allow_store.join(", "),
                    });
                }
                (store.location.clone(), store.options.clone())
            }
            _ => (self.config.default_store.clone(), HashMap::new()),
        };
        if check_allowed {
            // A location the flush cannot use would fail every flush of the
            // table and hold back every later transaction's durable sequence.
            check_store_location(&store_root, &command.path, &options)?;
        }
        let key = format!(
            "{}/{}",
            store_root.trim_end_matches('/'),
            command.path.trim_matches('/')
        );
        Ok(TableTarget {
            key,
            store_root,
            path: command.path.clone(),
            options,
        })
    }

    /// Validates the column roles against the schema and the table's known
    /// column types (accepted or claimed by a put in flight), and claims the
    /// message's types until the put is accepted or fails.
    fn check_layout(
        &self,
        command: &DataSyncCommand,
        target: &TableTarget,
        schema: &SchemaRef,
    ) -> Result<(SyncLayout, TypeClaim<'_>), NodeError> {
        let layout = SyncLayout::from_descriptors(&command.column_descriptors, schema)?;
        let mut schemas = self.schemas.lock().unwrap_or_else(|e| e.into_inner());
        let known = schemas.entry(target.key.clone()).or_default();
        // Types as the table store keeps them (Utf8View and LargeUtf8 are
        // Utf8 there); a type the store cannot hold is refused now.
        let mut stored = Vec::new();
        for field in layout.table_fields() {
            let data_type = crate::lake::delta_arrow_type(field.name(), field.data_type())
                .map_err(|error| NodeError::InvalidCommand {
                    field: "column_descriptors",
                    problem: error.to_string(),
                })?;
            if let Some(existing) = known.get(field.name()).map(|k| &k.data_type) {
                if *existing != data_type {
                    return Err(NodeError::InvalidCommand {
                        field: "column_descriptors",
                        problem: format!(
                            "column {:?} has type {} but table {} already has it as {}",
                            field.name(),
                            field.data_type(),
                            command.path,
                            existing
                        ),
                    });
                }
            }
            stored.push((field.name().clone(), data_type));
        }
        let columns = stored.iter().map(|(name, _)| name.clone()).collect();
        for (name, data_type) in stored {
            known
                .entry(name)
                .or_insert(KnownType {
                    data_type,
                    accepted: false,
                    in_flight: 0,
                })
                .in_flight += 1;
        }
        let claim = TypeClaim {
            node: self,
            table: target.key.clone(),
            columns,
            accepted: false,
        };
        Ok((layout, claim))
    }

    /// The first put of a table since start learns the column types the
    /// table already has in the store, so a conflicting type is refused at
    /// put time, not discovered at flush time. A store that cannot be read
    /// now does not block ingest: the check then covers only what this node
    /// accepted, and the next put tries the store again.
    async fn learn_from_store(&self, target: &TableTarget) {
        let checked = self
            .store_checked
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(&target.key);
        if checked {
            return;
        }
        let location = match url::Url::parse(&target.store_root)
            .map_err(|e| e.to_string())
            .and_then(|root| {
                crate::lake::table_location(&root, &target.path, target.options.clone())
                    .map_err(|e| e.to_string())
            }) {
            Ok(location) => location,
            Err(error) => {
                tracing::warn!(table = %target.key, %error, "cannot resolve the table location");
                return;
            }
        };
        match crate::lake::load_state(&location).await {
            Ok(found) => {
                if let Some(state) = found {
                    self.learn_table_schema(&target.key, state.schema());
                }
                self.store_checked
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(target.key.clone());
            }
            Err(error) => {
                tracing::warn!(table = %target.key, %error, "cannot read the table's schema; checking types against accepted puts only");
            }
        }
    }

    /// At recovery: the column types of an accepted frame count as known,
    /// so after a restart a put cannot bring a conflicting type for rows
    /// that are still only in the WAL. A frame whose schema cannot be read
    /// is left to the flush, which reports it.
    fn learn_from_frame(&self, target: &TableTarget, command: &DataSyncCommand, payload: &[u8]) {
        let Ok(schema) = crate::record::decode_record_schema(payload) else {
            return;
        };
        let Ok(layout) = SyncLayout::from_descriptors(&command.column_descriptors, &schema) else {
            return;
        };
        let fields: Vec<arrow::datatypes::Field> = layout
            .table_fields()
            .iter()
            .filter_map(|field| {
                let stored = crate::lake::delta_arrow_type(field.name(), field.data_type()).ok()?;
                Some(arrow::datatypes::Field::new(field.name(), stored, true))
            })
            .collect();
        self.learn_table_schema(&target.key, &arrow::datatypes::Schema::new(fields));
    }

    /// Seeds the known column types of a table (from the table store).
    pub fn learn_table_schema(&self, key: &str, schema: &arrow::datatypes::Schema) {
        let mut schemas = self.schemas.lock().unwrap_or_else(|e| e.into_inner());
        let known = schemas.entry(key.to_string()).or_default();
        for field in schema.fields() {
            known
                .entry(field.name().clone())
                .or_insert_with(|| KnownType {
                    data_type: field.data_type().clone(),
                    accepted: true,
                    in_flight: 0,
                });
        }
    }

    pub fn lock_index(&self) -> MutexGuard<'_, Index> {
        self.index.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn lock_origins(&self) -> MutexGuard<'_, HashMap<String, Arc<Origin>>> {
        self.origins.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records that origins' transactions became durable (flush).
    pub fn set_durable(&self, durable: Vec<(String, u64)>) {
        for (name, sequence) in durable {
            let origin = self.origin(&name);
            let mut numbers = origin.numbers();
            numbers.durable = numbers.durable.max(Some(sequence));
        }
    }

    /// Every origin's numbers, for checkpoint frames.
    pub fn origin_snapshot(&self) -> Vec<(String, Option<u64>, Option<u64>)> {
        self.lock_origins()
            .iter()
            .map(|(name, origin)| {
                let numbers = *origin.numbers();
                (name.clone(), numbers.memory, numbers.durable)
            })
            .collect()
    }
}

fn corrupted(frame: &crate::wal::recovery::RecoveredFrame, error: prost::DecodeError) -> NodeError {
    NodeError::Wal(crate::wal::WalError::Corrupted {
        segment: frame.pointer.segment,
        offset: frame.pointer.offset,
        reason: error.to_string(),
    })
}

/// The next item of a put's stream, or `Idle` if the client sends nothing
/// for `idle`: a stalled client must not hold its origin (or a table's
/// flushes) forever.
async fn next_item<S>(
    items: &mut S,
    idle: std::time::Duration,
) -> Result<Option<PutItem>, NodeError>
where
    S: Stream<Item = Result<PutItem, NodeError>> + Unpin,
{
    match tokio::time::timeout(idle, items.next()).await {
        Ok(Some(item)) => item.map(Some),
        Ok(None) => Ok(None),
        Err(_) => Err(NodeError::Idle {
            ms: u64::try_from(idle.as_millis()).unwrap_or(u64::MAX),
        }),
    }
}

/// The table's exactly-once marker for this WAL, if the table exists.
async fn applied_lsn_in_store(target: &TableTarget, wal_id: &str) -> Result<Option<Lsn>, String> {
    let root = url::Url::parse(&target.store_root).map_err(|e| e.to_string())?;
    let location = crate::lake::table_location(&root, &target.path, target.options.clone())
        .map_err(|e| e.to_string())?;
    let Some(state) = crate::lake::load_state(&location)
        .await
        .map_err(|e| e.to_string())?
    else {
        return Ok(None);
    };
    Ok(state
        .applied_lsn(wal_id)
        .await
        .map_err(|e| e.to_string())?
        .map(Lsn))
}

fn discard_range(origin: &mut OriginState, first: Lsn, last: Lsn) {
    if let Some(open) = &mut origin.open {
        open.frames.retain(|(_, f)| f.lsn < first || f.lsn > last);
        if open.frames.is_empty() {
            origin.open = None;
        }
    }
}

/// Whether `location` is one of the `allowed` store roots or lies under
/// one. Compared as parsed URLs, so `..` and `%2e%2e` segments are resolved
/// as the flush will resolve them, and segment by segment, so an allowed
/// `file:///lake` does not admit `file:///lake-other`.
fn store_allowed(location: &str, allowed: &[String]) -> bool {
    let Ok(location) = url::Url::parse(location) else {
        return false;
    };
    let segments = |url: &url::Url| -> Vec<String> {
        url.path_segments()
            .map(|s| s.filter(|s| !s.is_empty()).map(str::to_owned).collect())
            .unwrap_or_default()
    };
    let location_segments = segments(&location);
    allowed.iter().any(|prefix| {
        let Ok(prefix) = url::Url::parse(prefix) else {
            return false;
        };
        prefix.scheme() == location.scheme()
            && prefix.username() == location.username()
            && prefix.host_str() == location.host_str()
            && prefix.port_or_known_default() == location.port_or_known_default()
            && location_segments.starts_with(&segments(&prefix))
    })
}

/// The store root must be a URL the flush can open, with the table path
/// joined to it (the same check the flush makes, without I/O).
fn check_store_location(
    store_root: &str,
    path: &str,
    options: &HashMap<String, String>,
) -> Result<(), NodeError> {
    let invalid = |problem: String| NodeError::InvalidCommand {
        field: "store.location",
        problem,
    };
    let root = url::Url::parse(store_root)
        .map_err(|error| invalid(format!("{store_root:?} is not a URL: {error}")))?;
    crate::lake::table_location(&root, path, options.clone())
        .map_err(|error| invalid(error.to_string()))?;
    Ok(())
}

/// A table path is relative, non-empty, with no `..`, `.`, empty or
/// backslash components.
pub fn check_table_path(path: &str) -> Result<(), NodeError> {
    let invalid = |problem: &str| {
        Err(NodeError::InvalidCommand {
            field: "path",
            problem: format!("{path:?} {problem}"),
        })
    };
    if path.is_empty() {
        return invalid("is empty");
    }
    if path.starts_with('/') || path.contains(':') {
        return invalid("must be relative to the store root");
    }
    if path.contains('\\') {
        return invalid("must not contain backslashes");
    }
    for component in path.split('/') {
        match component {
            ".." => return invalid("must not contain '..'"),
            "." | "" => return invalid("must not contain empty or '.' components"),
            _ => {}
        }
    }
    Ok(())
}

/// Writes one message as WAL frames of about `frame_bytes_target` each.
/// Frames before the last are submitted as the message streams in; the last
/// carries the sequence number. Only the last one is awaited: the WAL makes
/// frames durable in order.
struct MessageWriter<'a> {
    node: &'a Node,
    command: &'a DataSyncCommand,
    target: &'a TableTarget,
    layout: Option<&'a SyncLayout>,
    chunk: Vec<RecordBatch>,
    chunk_bytes: u64,
    schema: Option<SchemaRef>,
    frames: Vec<Appended>,
    frame_rows: Vec<u64>,
    /// Taken just before the first frame is submitted (so a client that
    /// stalls before sending rows holds nothing back), released when the
    /// writer is dropped, after the frames are held or indexed.
    reservation: Option<Hold<'a>>,
    /// Message bytes so far (Arrow memory of its batches).
    bytes: u64,
    /// Bytes of the origin's open transaction before this message.
    open_bytes: u64,
    rows: u64,
    batches: usize,
}

impl<'a> MessageWriter<'a> {
    fn new(
        node: &'a Node,
        command: &'a DataSyncCommand,
        target: &'a TableTarget,
        layout: Option<&'a SyncLayout>,
        open_bytes: u64,
    ) -> Self {
        MessageWriter {
            node,
            command,
            target,
            layout,
            chunk: Vec::new(),
            chunk_bytes: 0,
            schema: None,
            frames: Vec::new(),
            frame_rows: Vec::new(),
            reservation: None,
            bytes: 0,
            open_bytes,
            rows: 0,
            batches: 0,
        }
    }

    async fn push(&mut self, batch: RecordBatch) -> Result<(), NodeError> {
        let index = self.batches;
        self.batches += 1;
        if batch.num_rows() == 0 {
            return Ok(());
        }
        if let Some(layout) = self.layout {
            check_change_batch(&ChangeBatch {
                layout,
                batch: &batch,
            })
            .map_err(|error| NodeError::Batch {
                batch: index,
                problem: error.to_string(),
            })?;
        }
        let size = batch.get_array_memory_size() as u64;
        self.bytes += size;
        if self.bytes > self.node.config.message_bytes_max {
            return Err(NodeError::MessageTooLarge {
                limit: self.node.config.message_bytes_max,
            });
        }
        let limit = self.node.config.pending_bytes_high_watermark;
        if self.open_bytes + self.bytes > limit {
            return Err(NodeError::TransactionTooLarge {
                origin: self.command.origin.clone(),
                bytes: self.open_bytes + self.bytes,
                limit,
            });
        }
        self.rows += batch.num_rows() as u64;
        self.schema.get_or_insert_with(|| batch.schema());
        self.chunk_bytes += size;
        self.chunk.push(batch);
        if self.chunk_bytes >= self.node.config.frame_bytes_target {
            self.write_chunk(None).await?;
        }
        Ok(())
    }

    async fn write_chunk(&mut self, sequence: Option<u64>) -> Result<(), NodeError> {
        let command = DataSyncCommand {
            sequence_number: sequence,
            ..self.command.clone()
        };
        let schema = match &self.schema {
            Some(schema) => schema.clone(),
            None => Arc::new(arrow::datatypes::Schema::empty()),
        };
        let chunk = std::mem::take(&mut self.chunk);
        let rows = chunk.iter().map(|b| b.num_rows() as u64).sum();
        self.chunk_bytes = 0;
        let payload = encode_record(&command, &schema, &chunk)
            .map_err(|e| NodeError::Arrow(e.to_string()))?;
        if self.reservation.is_none() {
            // Before the frame gets an Lsn: every Lsn assigned from now on
            // is above the durable one, so a flush stays below this frame.
            let floor = Lsn(self.node.wal.durable_lsn().borrow().0 + 1);
            self.reservation = Some(self.node.hold(&self.target.key, floor));
        }
        let appended = self.node.wal.append(FrameKind::Data, payload).await?;
        self.frames.push(appended);
        self.frame_rows.push(rows);
        Ok(())
    }

    /// Writes the last frame and waits for durability of all of them.
    async fn finish(&mut self) -> Result<Vec<(TableTarget, PendingFrame)>, NodeError> {
        if !self.chunk.is_empty() || self.command.sequence_number.is_some() {
            self.write_chunk(self.command.sequence_number).await?;
        }
        let now = Instant::now();
        Ok(self
            .frames
            .iter()
            .zip(&self.frame_rows)
            .map(|(appended, rows)| {
                (
                    self.target.clone(),
                    PendingFrame {
                        lsn: appended.lsn,
                        pointer: appended.pointer,
                        origin: self.command.origin.clone(),
                        sequence: 0,
                        rows: *rows,
                        bytes: u64::from(appended.pointer.len),
                        accepted_at: now,
                    },
                )
            })
            .collect())
    }

    /// Lsns of the frames this message already wrote, if any.
    fn written(&self) -> Option<(Lsn, Lsn)> {
        Some((self.frames.first()?.lsn, self.frames.last()?.lsn))
    }
}
