//! `flightlog replicate`: a Postgres logical replication source that is an
//! ordinary client of a node. It reads the publication's tables from a
//! `pgoutput` slot (an initial copy in the slot's exported snapshot, then
//! the stream) and pushes them to the node over Flight `do_put`; each
//! Postgres transaction is one sync transaction whose sequence number is its
//! commit LSN. Postgres learns a flush position only once the node reports
//! that transaction durable (or, with `--confirm memory`, fsynced in its WAL).
//!
//! Restart rules (the node's sequence numbers for the origin are the only
//! state; the replicator keeps none of its own):
//! - Before the copy the replicator closes an empty transaction at
//!   [`COPY_MARKER`] (sequence 1); the copy is one transaction closed just
//!   below the slot's consistent point. So `memory > 1` means "the copy is
//!   complete". Not at the point itself: a transaction whose commit record
//!   starts exactly there is not in the snapshot and is streamed with that
//!   LSN as its commit LSN, so a copy closed there would make it look
//!   already applied.
//! - Postgres's confirmed position `c` means "commits at `c` or later are
//!   still to be sent", so the node, which has every commit at or below
//!   `memory`, misses nothing while `c <= memory + 1`.
//! - Every session starts by closing an empty transaction at the node's
//!   `memory` sequence: the node treats it as a resend and discards whatever
//!   the previous session left open (half a transaction, half a copy).
//! - Slot present, copy incomplete: the slot is dropped and made again (its
//!   snapshot is gone) and the copy starts over. Slot missing or starting
//!   after `memory` once the copy is complete, or invalidated: stop with an
//!   error, since streaming would skip changes.
//! - Transactions whose commit LSN is at or below `memory` are already in
//!   the node and are skipped when Postgres sends them again.
//! - A streamed transaction (protocol v2, [`stream_buffer`]) is held in
//!   memory until its stream commit and then sent like a whole one; a new
//!   session starts with an empty buffer, and Postgres sends a transaction
//!   that was streamed but not confirmed again from its start.

pub mod metrics;
pub mod node_client;
pub mod pgoutput;
pub mod rows;
pub mod source;
pub mod stream_buffer;
pub mod types;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use arrow::record_batch::RecordBatch;
use pgwire_replication::{Lsn, ReplicationClient, ReplicationConfig, ReplicationEvent, TlsConfig};
use serde::Serialize;

use crate::replicate::node_client::{backoff, NodeClient};
use crate::replicate::pgoutput::{DecodeError, OldTuple, PgLsn, PgOutput, Relation};
use crate::replicate::rows::{Change, ColumnInfo, Refusal, TableShape};
use crate::replicate::source::{format_lsn, quote_ident, PgTarget};
use crate::replicate::stream_buffer::{Buffered, StreamBuffer};
use crate::replicate::types::SESSION_OPTIONS;

/// The sequence of the empty transaction sent before an initial copy.
pub const COPY_MARKER: u64 = 1;

/// When Postgres learns that a transaction is safe.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Confirm {
    /// Committed to the Delta table (`durable_sequence_number`).
    Durable,
    /// Fsynced into the node's WAL (`memory_sequence_number`).
    Memory,
}

/// `flightlog replicate` flags.
#[derive(Debug, Clone, clap::Args)]
pub struct ReplicateArgs {
    /// Postgres connection URL, e.g. postgres://USER@127.0.0.1:5432/DB
    /// (the user needs the REPLICATION attribute).
    #[arg(long)]
    pub postgres: String,
    /// The publication whose tables are replicated.
    #[arg(long)]
    pub publication: String,
    /// The logical replication slot (created with pgoutput if missing).
    #[arg(long)]
    pub slot: String,
    /// The node's Flight address.
    #[arg(long, default_value = "grpc://127.0.0.1:47470")]
    pub node: String,
    /// The protocol origin [default: the slot name].
    #[arg(long)]
    pub origin: Option<String>,
    /// Confirm a Postgres transaction once the node has it durable (in
    /// Delta) or in memory (fsynced into its WAL).
    #[arg(long, value_enum, default_value_t = Confirm::Durable)]
    pub confirm: Confirm,
    /// Standby status update interval, in milliseconds (also while idle).
    #[arg(long, default_value_t = 1_000)]
    pub status_interval_ms: u64,
    /// How often to ask the node for its durable sequence while some
    /// transaction is not durable yet, in milliseconds.
    #[arg(long, default_value_t = 200)]
    pub durable_poll_ms: u64,
    /// While nothing is in flight, confirm the server's position after this
    /// many idle milliseconds (through an empty transaction at the node), so
    /// the slot does not hold WAL that only other tables wrote; 0 = never.
    #[arg(long, default_value_t = 10_000)]
    pub idle_confirm_ms: u64,
    /// Interval of the progress log line and status file, in milliseconds.
    #[arg(long, default_value_t = 10_000)]
    pub progress_interval_ms: u64,
    /// Write the progress numbers as JSON to this file (replaced atomically).
    #[arg(long)]
    pub status_file: Option<PathBuf>,
    /// Serve the progress numbers as Prometheus metrics (`GET /metrics`)
    /// on this address, e.g. 127.0.0.1:9465 [default: off].
    #[arg(long)]
    pub metrics_listen: Option<SocketAddr>,
    /// Rows per Arrow batch.
    #[arg(long, default_value_t = 8_192)]
    pub batch_rows: usize,
    /// Buffered bytes of one transaction before they are sent to the node
    /// (the transaction stays open there until its commit).
    #[arg(long, default_value_t = 16 << 20)]
    pub put_bytes_max: usize,
    /// Bytes of streamed in-progress transactions held in memory until
    /// their commit, all together (pgoutput protocol v2, server 14 or
    /// newer). Past it the session starts again without streaming, and
    /// stays so until the replicator restarts; 0 = never stream.
    #[arg(long, default_value_t = 256 << 20)]
    pub stream_buffer_bytes: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum ReplicateError {
    #[error("{0}")]
    Usage(String),
    #[error("postgres: {0}")]
    Postgres(String),
    #[error("replication stream: {0}")]
    Stream(String),
    #[error("node: {0}")]
    Node(String),
    #[error("the node refused a put to {path}: {message}")]
    Refused { path: String, message: String },
    #[error("table {table}: column {column} has type {pg_type}, which the replicator does not carry (see the type table in README.md)")]
    UnsupportedType {
        table: String,
        column: String,
        pg_type: String,
    },
    #[error("table {table}: column {column} ({pg_type}): {reason}")]
    BadValue {
        table: String,
        column: String,
        pg_type: String,
        reason: String,
    },
    #[error("malformed change: {0}")]
    Malformed(String),
    #[error(transparent)]
    Decode(#[from] DecodeError),
    #[error("slot {slot}: {reason}")]
    Slot { slot: String, reason: String },
    #[error(
        "streamed transaction {xid} needs more than --stream-buffer-bytes ({bytes_max}) \
         held in memory until its commit; continuing without streaming (protocol v1: \
         Postgres sends a large transaction after its commit)"
    )]
    StreamBufferFull { xid: u32, bytes_max: usize },
    #[error("--metrics-listen {address}: {source}")]
    MetricsListen {
        address: SocketAddr,
        source: std::io::Error,
    },
}

impl ReplicateError {
    /// Worth a new session (connection lost, node restarted), not a stop.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            ReplicateError::Node(_)
                | ReplicateError::Stream(_)
                | ReplicateError::Postgres(_)
                | ReplicateError::StreamBufferFull { .. }
        )
    }
}

fn stream_error(error: pgwire_replication::PgWireError) -> ReplicateError {
    ReplicateError::Stream(error.to_string())
}

/// The progress numbers (log line, status file, metrics). Tables are
/// named `schema.table`; LSNs are written as Postgres prints them.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Status {
    /// One of [`metrics::PHASES`].
    pub phase: String,
    pub sessions: u64,
    pub copy_rows: BTreeMap<String, u64>,
    pub copy_rows_per_second: BTreeMap<String, f64>,
    /// Schema and table of each name in `copy_rows` (for metric labels:
    /// either may contain a dot).
    #[serde(skip)]
    pub copy_tables: BTreeMap<String, (String, String)>,
    pub transactions_streamed: u64,
    pub transactions_skipped: u64,
    pub changes_streamed: u64,
    /// Commit LSN of the last transaction sent to the node.
    #[serde(serialize_with = "serialize_lsn")]
    pub last_commit_lsn: Option<u64>,
    pub node_memory_sequence: Option<u64>,
    pub node_durable_sequence: Option<u64>,
    /// The flush position last confirmed to Postgres.
    #[serde(serialize_with = "serialize_lsn")]
    pub confirmed_lsn: Option<u64>,
    pub lag_bytes: u64,
    pub lag_seconds: f64,
    /// Tables of the publication that are not carried, and why.
    pub tables_refused: BTreeMap<String, String>,
    /// Changes of refused tables, not carried, per table.
    pub refused_changes: BTreeMap<String, u64>,
    /// TRUNCATEs not applied, per table.
    pub truncates_refused: BTreeMap<String, u64>,
    /// The pgoutput protocol version of the session (0 before the first).
    pub protocol_version: u32,
    /// Chunks of streamed in-progress transactions received (stream starts).
    pub stream_chunks: u64,
    /// Streamed transactions committed (sent to the node, or skipped).
    pub streamed_transactions_committed: u64,
    /// Streamed transactions aborted as a whole (dropped).
    pub streamed_transactions_aborted: u64,
    /// Subtransactions of streamed transactions aborted (their changes dropped).
    pub streamed_subtransactions_aborted: u64,
    /// Streamed transactions neither committed nor aborted yet.
    pub stream_open_transactions: u64,
    /// Bytes those hold (counted against `--stream-buffer-bytes`).
    pub stream_buffer_bytes: u64,
    pub last_error: Option<String>,
}

fn serialize_lsn<S: serde::Serializer>(
    lsn: &Option<u64>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    match lsn {
        Some(lsn) => serializer.serialize_some(&format_lsn(*lsn)),
        None => serializer.serialize_none(),
    }
}

/// The [`Status`] of a running replicator, shared with its metrics
/// endpoint. Locked only for short updates and copies, never across an
/// await.
#[derive(Debug, Clone, Default)]
pub struct SharedStatus(Arc<Mutex<Status>>);

impl SharedStatus {
    pub fn lock(&self) -> MutexGuard<'_, Status> {
        // A panic while holding it cannot leave the numbers inconsistent
        // beyond one stale value.
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

struct Settings {
    args: ReplicateArgs,
    origin: String,
    node_url: String,
    target: PgTarget,
}

/// Runs the replicator until a non-transient error.
pub async fn run(args: ReplicateArgs) -> Result<(), ReplicateError> {
    validate_slot_name(&args.slot)?;
    let target = PgTarget::parse(&args.postgres)?;
    let node_url = match args.node.strip_prefix("grpc://") {
        Some(rest) => format!("http://{rest}"),
        None => args.node.clone(),
    };
    let settings = Settings {
        origin: args.origin.clone().unwrap_or_else(|| args.slot.clone()),
        node_url,
        target,
        args,
    };
    let status = SharedStatus::default();
    if let Some(address) = settings.args.metrics_listen {
        serve_metrics(address, &status).await?;
    }
    let mut attempt = 0;
    let mut streaming_allowed = settings.args.stream_buffer_bytes > 0;
    loop {
        {
            let mut status = status.lock();
            status.sessions += 1;
            status.phase = "connecting".into();
        }
        let started = Instant::now();
        let error = match Session::run(&settings, status.clone(), streaming_allowed).await {
            Ok(()) => return Ok(()),
            Err(error) => error,
        };
        status.lock().last_error = Some(error.to_string());
        if !error.is_transient() {
            write_status(&settings, &status);
            return Err(error);
        }
        if matches!(error, ReplicateError::StreamBufferFull { .. }) {
            streaming_allowed = false;
        }
        if started.elapsed() > Duration::from_secs(30) {
            attempt = 0;
        }
        tracing::warn!(%error, "replication session ended; resuming from what the node acknowledged");
        tokio::time::sleep(backoff(attempt)).await;
        attempt += 1;
    }
}

fn validate_slot_name(slot: &str) -> Result<(), ReplicateError> {
    let valid = !slot.is_empty()
        && slot.len() <= 63
        && slot
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if valid {
        Ok(())
    } else {
        Err(ReplicateError::Usage(format!(
            "--slot {slot:?}: a slot name has 1 to 63 lower-case letters, digits and underscores"
        )))
    }
}

/// Binds `address` and serves the metrics of `status` there (a task of
/// its own for the life of the process).
async fn serve_metrics(address: SocketAddr, status: &SharedStatus) -> Result<(), ReplicateError> {
    let listener = tokio::net::TcpListener::bind(address)
        .await
        .map_err(|source| ReplicateError::MetricsListen { address, source })?;
    let bound = listener
        .local_addr()
        .map_err(|source| ReplicateError::MetricsListen { address, source })?;
    let status = status.clone();
    let render: crate::ops::http::RenderMetrics = Arc::new(move || metrics::render(&status));
    tokio::spawn(async move {
        if let Err(error) = crate::ops::http::serve_metrics(listener, render).await {
            tracing::error!(%error, address = %bound, "the metrics endpoint stopped");
        }
    });
    tracing::info!(address = %bound, "metrics endpoint GET /metrics");
    Ok(())
}

fn write_status(settings: &Settings, status: &SharedStatus) {
    let Some(path) = &settings.args.status_file else {
        return;
    };
    let Ok(json) = serde_json::to_vec_pretty(&*status.lock()) else {
        return;
    };
    let tmp = path.with_extension("tmp");
    if let Err(error) = std::fs::write(&tmp, json).and_then(|()| std::fs::rename(&tmp, path)) {
        tracing::warn!(%error, path = %path.display(), "cannot write the status file");
    }
}

/// A transaction being received.
struct Transaction {
    commit_lsn: PgLsn,
    skip: bool,
    /// Changes per table part, in arrival order per table.
    parts: Vec<Part>,
    bytes: usize,
}

struct Part {
    shape: Arc<TableShape>,
    changes: Vec<Change>,
    batches: Vec<RecordBatch>,
}

/// One replication session: the node connection, the slot, the stream.
struct Session<'a> {
    settings: &'a Settings,
    status: SharedStatus,
    node: NodeClient,
    /// Any carried table's path, for probes and empty transactions.
    probe_path: String,
    memory: Option<u64>,
    durable: Option<u64>,
    confirmed: u64,
    shapes: HashMap<u32, Result<Arc<TableShape>, (String, Refusal)>>,
    transaction: Option<Transaction>,
    /// Ask for pgoutput v2 with streaming (server 14 or newer, allowed).
    streaming: bool,
    /// Streamed transactions not yet committed or aborted.
    streams: StreamBuffer,
    /// The top-level xid of the streamed chunk being received.
    chunk: Option<u32>,
    /// The server's insert position (lag only: it can be ahead of what
    /// the walsender has sent).
    server_position: PgLsn,
    last_commit_time_micros: i64,
    /// How far the stream has been processed: every commit before it has
    /// been received (a commit's end, a keepalive between transactions).
    processed: PgLsn,
    idle_since: Instant,
}

impl<'a> Session<'a> {
    async fn run(
        settings: &'a Settings,
        status: SharedStatus,
        streaming_allowed: bool,
    ) -> Result<(), ReplicateError> {
        let sql = settings.target.connect().await?;
        source::check_wal_level(&sql).await?;
        let server_version = source::server_version(&sql).await?;
        let streaming = streaming_allowed && server_version >= STREAMING_SERVER_VERSION;
        if streaming {
            tracing::info!(
                server_version,
                stream_buffer_bytes = settings.args.stream_buffer_bytes,
                "pgoutput protocol version 2: large in-progress transactions are streamed"
            );
        } else {
            tracing::info!(server_version, streaming_allowed, "pgoutput protocol version 1: a large transaction arrives after its commit (streaming needs server 14 or newer, --stream-buffer-bytes > 0, and no transaction past that limit since the replicator started)");
        }
        status.lock().protocol_version = if streaming { 2 } else { 1 };
        let tables = source::publication_tables(&sql, &settings.args.publication).await?;
        let mut carried = Vec::new();
        for table in &tables {
            match TableShape::new(
                &table.namespace,
                &table.name,
                table.replica_identity,
                &table.columns,
            )? {
                Ok(shape) => carried.push((table.clone(), Arc::new(shape))),
                Err(refusal) => refuse_table(
                    &mut status.lock(),
                    &format!("{}.{}", table.namespace, table.name),
                    &refusal,
                ),
            }
        }
        let Some(probe_path) = carried.first().map(|(_, shape)| shape.path.clone()) else {
            return Err(ReplicateError::Usage(format!(
                "publication {:?} has no table the replicator can carry ({} refused)",
                settings.args.publication,
                status.lock().tables_refused.len()
            )));
        };
        let mut node = NodeClient::connect(&settings.node_url, &settings.origin).await?;
        let numbers = node.probe(&probe_path).await?;
        let memory = numbers.memory_sequence_number;
        let copy_done = memory.is_some_and(|m| m > COPY_MARKER);
        tracing::info!(
            node = node.url(),
            origin = %settings.origin,
            memory = ?memory,
            durable = ?numbers.durable_sequence_number,
            first = numbers.first,
            "connected to the node"
        );
        // Discard whatever a previous session left open at the node.
        let opened = node
            .close(&probe_path, memory.unwrap_or(COPY_MARKER))
            .await?;
        let mut session = Session {
            settings,
            status,
            node,
            probe_path,
            memory: opened.memory_sequence_number,
            durable: opened.durable_sequence_number,
            confirmed: 0,
            shapes: HashMap::new(),
            transaction: None,
            streaming,
            streams: StreamBuffer::new(settings.args.stream_buffer_bytes),
            chunk: None,
            server_position: 0,
            last_commit_time_micros: 0,
            processed: 0,
            idle_since: Instant::now(),
        };
        let slot = source::slot_state(&sql, &settings.args.slot).await?;
        let slot_name = &settings.args.slot;
        let slot_error = |reason: String| ReplicateError::Slot {
            slot: slot_name.clone(),
            reason,
        };
        let client = match slot {
            Some(state) => {
                if state.plugin.as_deref() != Some("pgoutput")
                    || state.database.as_deref() != Some(settings.target.database.as_str())
                {
                    return Err(slot_error(format!(
                        "exists with plugin {:?} on database {:?}, not a pgoutput slot on {:?}",
                        state.plugin, state.database, settings.target.database
                    )));
                }
                if state.wal_status.as_deref() == Some("lost") {
                    return Err(slot_error(
                        "is invalidated (wal_status = lost: the server removed WAL the slot still \
                         needed, e.g. past max_slot_wal_keep_size); changes are missing. Drop the \
                         slot and the Delta tables and start again (a new slot makes a new initial copy)"
                            .into(),
                    ));
                }
                if let Some(pid) = &state.active_pid {
                    return Err(ReplicateError::Stream(format!(
                        "slot {slot_name} is in use by server process {pid}"
                    )));
                }
                if !copy_done {
                    tracing::warn!(slot = %slot_name, "the initial copy did not complete; dropping the slot to copy again in a new snapshot");
                    sql.batch_execute(&format!(
                        "SELECT pg_drop_replication_slot({})",
                        source::quote_literal(slot_name)
                    ))
                    .await
                    .map_err(source::pg_error)?;
                    session.copy(&carried).await?
                } else {
                    let confirmed = state.confirmed_flush.unwrap_or(0);
                    let memory = session.memory.unwrap_or(0);
                    if confirmed.saturating_sub(1) > memory {
                        return Err(slot_error(format!(
                            "starts at {} but the node has this origin only up to {}: streaming \
                             would skip the changes in between (was the slot dropped and made \
                             again?). Drop the Delta tables and the slot to start over",
                            format_lsn(confirmed),
                            format_lsn(memory)
                        )));
                    }
                    session.confirmed = confirmed;
                    session.status().phase = "streaming".into();
                    let client = ReplicationClient::connect(session.replication_config(confirmed))
                        .await
                        .map_err(stream_error)?;
                    client
                }
            }
            None if copy_done => {
                return Err(slot_error(format!(
                    "does not exist, but the node holds origin {} up to {}: a new slot would \
                     start now and skip what changed since. Drop the Delta tables (or use a new \
                     --origin) to start over with an initial copy",
                    settings.origin,
                    format_lsn(session.memory.unwrap_or(0))
                )))
            }
            None => session.copy(&carried).await?,
        };
        session.stream(client, &sql).await
    }

    fn replication_config(&self, start: PgLsn) -> ReplicationConfig {
        let target = &self.settings.target;
        let args = &self.settings.args;
        ReplicationConfig::new(
            target.host.clone(),
            target.user.clone(),
            target.password.clone(),
            target.database.clone(),
            args.slot.clone(),
            args.publication.clone(),
        )
        .with_port(target.port)
        .with_tls(TlsConfig::disabled())
        .with_start_lsn(Lsn::from_u64(start))
        .with_ack_lsn(Lsn::from_u64(start))
        .with_status_interval(Duration::from_millis(args.status_interval_ms.max(10)))
        .with_wakeup_interval(Duration::from_millis(args.status_interval_ms.max(10)))
        .with_options(SESSION_OPTIONS)
        .with_application_name("flightlog-replicate")
        .with_proto_version(if self.streaming { 2 } else { 1 })
        .with_streaming(self.streaming)
    }

    /// Creates the slot, copies every carried table in its exported
    /// snapshot as one transaction closed just below the consistent point, and
    /// returns the replication session, ready to stream from there.
    async fn copy(
        &mut self,
        carried: &[(source::CatalogTable, Arc<TableShape>)],
    ) -> Result<ReplicationClient, ReplicateError> {
        self.status().phase = "copy".into();
        write_status(self.settings, &self.status);
        let mut client = ReplicationClient::connect_gated(self.replication_config(0))
            .await
            .map_err(stream_error)?;
        let rows = client
            .simple_query(&format!(
                "CREATE_REPLICATION_SLOT {} LOGICAL pgoutput (SNAPSHOT 'export')",
                quote_ident(&self.settings.args.slot)
            ))
            .await
            .map_err(stream_error)?;
        let text = |row: &[Option<bytes::Bytes>], i: usize| {
            row.get(i)
                .and_then(|v| v.as_ref())
                .map(|v| String::from_utf8_lossy(v).into_owned())
                .ok_or_else(|| {
                    ReplicateError::Stream("CREATE_REPLICATION_SLOT answered no row".into())
                })
        };
        let row = rows.first().ok_or_else(|| {
            ReplicateError::Stream("CREATE_REPLICATION_SLOT answered no row".into())
        })?;
        let consistent_point = source::parse_lsn(&text(row, 1)?)?;
        let snapshot = text(row, 2)?;
        tracing::info!(slot = %self.settings.args.slot, consistent_point = %format_lsn(consistent_point), %snapshot, "created the slot; copying in its snapshot");
        // A separate session reads in the exported snapshot; it is valid
        // while the replication session runs no other command.
        let sql = self.settings.target.connect().await?;
        sql.batch_execute(&format!(
            "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; SET TRANSACTION SNAPSHOT {}",
            source::quote_literal(&snapshot)
        ))
        .await
        .map_err(source::pg_error)?;
        for (table, shape) in carried {
            self.copy_table(&sql, table, shape).await?;
        }
        sql.batch_execute("COMMIT")
            .await
            .map_err(source::pg_error)?;
        // Just below: a commit record that starts at the consistent point
        // is streamed, not in the snapshot (see the module's restart rules).
        let copy_sequence = consistent_point.saturating_sub(1);
        if copy_sequence <= COPY_MARKER {
            return Err(ReplicateError::Stream(format!(
                "CREATE_REPLICATION_SLOT answered the consistent point {}",
                format_lsn(consistent_point)
            )));
        }
        let response = self.node.close(&self.probe_path, copy_sequence).await?;
        self.record_checked(&response)?;
        self.processed = consistent_point;
        client.start().await.map_err(stream_error)?;
        self.status().phase = "streaming".into();
        Ok(client)
    }

    async fn copy_table(
        &mut self,
        sql: &tokio_postgres::Client,
        table: &source::CatalogTable,
        shape: &Arc<TableShape>,
    ) -> Result<(), ReplicateError> {
        let columns: Vec<String> = table.columns.iter().map(|c| quote_ident(&c.name)).collect();
        sql.batch_execute(&format!(
            "DECLARE flightlog_copy NO SCROLL CURSOR FOR SELECT {} FROM {}.{}",
            columns.join(", "),
            quote_ident(&table.namespace),
            quote_ident(&table.name)
        ))
        .await
        .map_err(source::pg_error)?;
        let started = Instant::now();
        let mut last_log = Instant::now();
        let mut copied = 0u64;
        let fetch = format!(
            "FETCH {} FROM flightlog_copy",
            self.settings.args.batch_rows.max(1)
        );
        loop {
            let rows = source::text_rows(sql, &fetch).await?;
            if rows.is_empty() {
                break;
            }
            let mut changes = Vec::with_capacity(rows.len());
            for row in rows {
                let tuple = row
                    .into_iter()
                    .map(|value| match value {
                        Some(text) => pgoutput::Datum::Text(bytes::Bytes::from(text)),
                        None => pgoutput::Datum::Null,
                    })
                    .collect();
                changes.push(shape.insert(tuple)?);
            }
            copied += changes.len() as u64;
            let batch = shape.batch(&changes)?;
            let response = self
                .node
                .put(
                    &shape.path,
                    shape.descriptors(),
                    shape.schema(),
                    vec![batch],
                    None,
                )
                .await?;
            // A node that restarted meanwhile dropped the copy so far.
            self.record_checked(&response)?;
            let rate = self.copied(table, shape, copied, started);
            if last_log.elapsed() >= self.progress_interval() {
                last_log = Instant::now();
                tracing::info!(table = %shape.name, rows = copied, rows_per_second = rate as u64, "copying");
                write_status(self.settings, &self.status);
            }
        }
        sql.batch_execute("CLOSE flightlog_copy")
            .await
            .map_err(source::pg_error)?;
        let rate = self.copied(table, shape, copied, started);
        tracing::info!(table = %shape.name, rows = copied, rows_per_second = rate as u64, "copied");
        write_status(self.settings, &self.status);
        Ok(())
    }

    /// Records the rows of `table` copied so far; returns its rows/s.
    fn copied(
        &self,
        table: &source::CatalogTable,
        shape: &TableShape,
        copied: u64,
        started: Instant,
    ) -> f64 {
        let rate = copied as f64 / started.elapsed().as_secs_f64().max(1e-9);
        let mut status = self.status();
        status.copy_rows.insert(shape.name.clone(), copied);
        status.copy_rows_per_second.insert(shape.name.clone(), rate);
        status.copy_tables.insert(
            shape.name.clone(),
            (table.namespace.clone(), table.name.clone()),
        );
        rate
    }

    fn status(&self) -> MutexGuard<'_, Status> {
        self.status.lock()
    }

    fn progress_interval(&self) -> Duration {
        Duration::from_millis(self.settings.args.progress_interval_ms.max(100))
    }

    /// Takes the node's numbers from an answer.
    fn record(&mut self, response: &crate::proto::sync::DataSyncResponse) {
        self.memory = response.memory_sequence_number.max(self.memory);
        self.durable = response.durable_sequence_number.max(self.durable);
        let mut status = self.status();
        status.node_memory_sequence = self.memory;
        status.node_durable_sequence = self.durable;
    }

    /// Like [`Self::record`] for an answer within the session: `first`
    /// means the node restarted and dropped what was open, so the session
    /// must start again from what it acknowledged.
    fn record_checked(
        &mut self,
        response: &crate::proto::sync::DataSyncResponse,
    ) -> Result<(), ReplicateError> {
        if response.first {
            return Err(ReplicateError::Node(
                "the node restarted (first = true)".into(),
            ));
        }
        self.record(response);
        Ok(())
    }

    /// `sql` is a session for the server's current position (lag).
    async fn stream(
        &mut self,
        mut client: ReplicationClient,
        sql: &tokio_postgres::Client,
    ) -> Result<(), ReplicateError> {
        let mut poll = tokio::time::interval(Duration::from_millis(
            self.settings.args.durable_poll_ms.max(10),
        ));
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut progress = tokio::time::interval(self.progress_interval());
        progress.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                event = client.recv() => {
                    match event.map_err(stream_error)? {
                        Some(event) => self.event(&client, event).await?,
                        None => return Err(ReplicateError::Stream("the server ended the stream".into())),
                    }
                }
                _ = poll.tick() => self.confirm(&client).await?,
                _ = progress.tick() => {
                    // The server's insert position, not the walsender's:
                    // a backlog not yet decoded is lag too.
                    if let Ok(current) = source::current_lsn(sql).await {
                        self.server_position = self.server_position.max(current);
                    }
                    self.progress();
                }
            }
        }
    }

    fn progress(&mut self) {
        let now_micros = chrono::Utc::now().timestamp_micros() - PG_EPOCH_MICROS;
        let lag_bytes = self.server_position.saturating_sub(self.processed);
        let lag_seconds = if lag_bytes == 0 || self.last_commit_time_micros == 0 {
            0.0
        } else {
            (now_micros - self.last_commit_time_micros).max(0) as f64 / 1e6
        };
        let (transactions, changes) = {
            let mut status = self.status();
            status.lag_bytes = lag_bytes;
            status.lag_seconds = lag_seconds;
            (status.transactions_streamed, status.changes_streamed)
        };
        tracing::info!(
            lag_bytes,
            lag_seconds,
            transactions,
            changes,
            memory = ?self.memory,
            durable = ?self.durable,
            confirmed = %format_lsn(self.confirmed),
            streamed_open = self.streams.open_transactions(),
            streamed_bytes = self.streams.bytes(),
            "streaming"
        );
        write_status(self.settings, &self.status);
    }

    /// Tells Postgres what the node made safe; asks the node while some
    /// transaction is not durable yet; confirms an idle server position.
    async fn confirm(&mut self, client: &ReplicationClient) -> Result<(), ReplicateError> {
        let args = &self.settings.args;
        if args.confirm == Confirm::Durable && self.durable < self.memory {
            let response = self.node.probe(&self.probe_path).await?;
            self.record_checked(&response)?;
        }
        let idle = self.transaction.is_none()
            && self.streams.open_transactions() == 0
            && self.durable >= self.memory;
        if !idle {
            self.idle_since = Instant::now();
        }
        let memory = self.memory.unwrap_or(0);
        // Every commit before `processed` has been received (the stream is
        // in commit order and `processed` only moves with it), so an empty
        // transaction just below it lets the slot move on without skipping
        // any commit. Not `server_position`: the server's insert position
        // can be ahead of what the walsender has decoded and sent, and a
        // commit in between would then be skipped as already in the node.
        if idle
            && args.idle_confirm_ms > 0
            && self.idle_since.elapsed() >= Duration::from_millis(args.idle_confirm_ms)
            && self.processed.saturating_sub(1) > memory
        {
            let response = self
                .node
                .close(&self.probe_path, self.processed - 1)
                .await?;
            self.record_checked(&response)?;
            self.idle_since = Instant::now();
        }
        let safe = match args.confirm {
            Confirm::Durable => self.durable,
            Confirm::Memory => self.memory,
        }
        .unwrap_or(0);
        if safe > self.confirmed && safe > COPY_MARKER {
            client.update_applied_lsn(Lsn::from_u64(safe));
            self.confirmed = safe;
            self.status().confirmed_lsn = Some(safe);
        }
        Ok(())
    }

    async fn event(
        &mut self,
        client: &ReplicationClient,
        event: ReplicationEvent,
    ) -> Result<(), ReplicateError> {
        match event {
            ReplicationEvent::KeepAlive { wal_end, .. } => {
                self.server_position = self.server_position.max(wal_end.as_u64());
                if self.transaction.is_none() {
                    self.processed = self.processed.max(wal_end.as_u64());
                }
            }
            ReplicationEvent::Begin { final_lsn, .. } => {
                let commit_lsn = final_lsn.as_u64();
                self.transaction = Some(Transaction {
                    commit_lsn,
                    skip: self.memory.is_some_and(|m| commit_lsn <= m),
                    parts: Vec::new(),
                    bytes: 0,
                });
            }
            ReplicationEvent::XLogData { data, wal_end, .. } => {
                self.server_position = self.server_position.max(wal_end.as_u64());
                let message = pgoutput::decode(&data, self.chunk.is_some())?;
                if let PgOutput::StreamCommit {
                    xid,
                    commit_lsn,
                    end_lsn,
                    commit_time_micros,
                    ..
                } = message
                {
                    self.stream_commit(xid, commit_lsn).await?;
                    self.committed(client, end_lsn, commit_time_micros).await?;
                } else if let Some(message) = self.streamed(message, data)? {
                    self.message(message).await?;
                }
            }
            ReplicationEvent::Commit {
                lsn,
                end_lsn,
                commit_time_micros,
            } => {
                self.commit(lsn.as_u64()).await?;
                self.committed(client, end_lsn.as_u64(), commit_time_micros)
                    .await?;
            }
            ReplicationEvent::Message { .. } => {}
            ReplicationEvent::StoppedAt { .. } => {
                return Err(ReplicateError::Stream("the stream stopped".into()))
            }
        }
        Ok(())
    }

    /// After a transaction's commit was sent to the node (or skipped).
    async fn committed(
        &mut self,
        client: &ReplicationClient,
        end_lsn: PgLsn,
        commit_time_micros: i64,
    ) -> Result<(), ReplicateError> {
        self.processed = self.processed.max(end_lsn);
        self.server_position = self.server_position.max(end_lsn);
        self.last_commit_time_micros = commit_time_micros;
        if self.settings.args.confirm == Confirm::Memory {
            self.confirm(client).await?;
        }
        Ok(())
    }

    /// Takes the stream messages (protocol v2) and buffers what arrives
    /// inside a chunk; any other message is given back.
    fn streamed(
        &mut self,
        message: PgOutput,
        bytes: bytes::Bytes,
    ) -> Result<Option<PgOutput>, ReplicateError> {
        let out_of_place = |what: &str| {
            ReplicateError::Malformed(format!(
                "{what} arrived inside a transaction or a stream chunk"
            ))
        };
        match (&message, self.chunk) {
            (PgOutput::StreamStart { xid, first_segment }, None) => {
                if self.transaction.is_some() {
                    return Err(out_of_place("a stream start"));
                }
                self.streams.start(*xid, *first_segment == 1)?;
                self.chunk = Some(*xid);
                self.status().stream_chunks += 1;
            }
            (PgOutput::StreamStart { .. }, Some(_)) => return Err(out_of_place("a stream start")),
            (PgOutput::StreamStop, Some(_)) => self.chunk = None,
            (PgOutput::StreamStop, None) => {
                return Err(ReplicateError::Malformed(
                    "a stream stop arrived outside a stream chunk".into(),
                ))
            }
            (
                PgOutput::StreamAbort {
                    xid,
                    subtransaction_xid,
                },
                None,
            ) => {
                self.streams.abort(*xid, *subtransaction_xid);
                let mut status = self.status();
                if xid == subtransaction_xid {
                    status.streamed_transactions_aborted += 1;
                } else {
                    status.streamed_subtransactions_aborted += 1;
                }
            }
            (PgOutput::StreamAbort { .. }, Some(_)) => return Err(out_of_place("a stream abort")),
            (_, Some(top)) => {
                let subxid = match &message {
                    PgOutput::Relation(_) => None,
                    PgOutput::Insert { xid, .. }
                    | PgOutput::Update { xid, .. }
                    | PgOutput::Delete { xid, .. }
                    | PgOutput::Truncate { xid, .. } => Some(xid.unwrap_or(top)),
                    PgOutput::Begin { .. } | PgOutput::Commit { .. } => {
                        return Err(out_of_place("a transaction boundary"))
                    }
                    // Ignored in a transaction too (types, logical messages,
                    // the origin a first chunk names when the transaction
                    // was itself replicated into this server).
                    _ => return Ok(Some(message)),
                };
                self.streams.push(top, Buffered { subxid, bytes })?;
            }
            (_, None) => return Ok(Some(message)),
        }
        let mut status = self.status();
        status.stream_open_transactions = self.streams.open_transactions() as u64;
        status.stream_buffer_bytes = self.streams.bytes() as u64;
        Ok(None)
    }

    /// A streamed transaction committed: its buffered messages are sent
    /// as one transaction closed at `commit_lsn`, like a whole one (or
    /// skipped when the node already has it).
    async fn stream_commit(&mut self, xid: u32, commit_lsn: PgLsn) -> Result<(), ReplicateError> {
        if self.transaction.is_some() || self.chunk.is_some() {
            return Err(ReplicateError::Malformed(
                "a stream commit arrived inside a transaction or a stream chunk".into(),
            ));
        }
        let messages = self.streams.commit(xid)?;
        let skip = self.memory.is_some_and(|m| commit_lsn <= m);
        {
            let mut status = self.status();
            status.streamed_transactions_committed += 1;
            status.stream_open_transactions = self.streams.open_transactions() as u64;
            status.stream_buffer_bytes = self.streams.bytes() as u64;
        }
        self.transaction = Some(Transaction {
            commit_lsn,
            skip,
            parts: Vec::new(),
            bytes: 0,
        });
        if !skip {
            for buffered in messages {
                let message = pgoutput::decode(&buffered.bytes, true)?;
                self.message(message).await?;
            }
        }
        self.commit(commit_lsn).await
    }

    async fn message(&mut self, message: PgOutput) -> Result<(), ReplicateError> {
        match message {
            PgOutput::Relation(relation) => self.relation(relation)?,
            PgOutput::Insert { relation, new, .. } => {
                if let Some(shape) = self.carried(relation)? {
                    let change = shape.insert(new)?;
                    self.push(shape, change).await?;
                }
            }
            PgOutput::Update {
                relation, old, new, ..
            } => {
                if let Some(shape) = self.carried(relation)? {
                    let old_key = match &old {
                        Some(OldTuple::Key(tuple)) => Some(tuple),
                        Some(OldTuple::Full(_)) | None => None,
                    };
                    let change = shape.update(old_key, new)?;
                    self.push(shape, change).await?;
                }
            }
            PgOutput::Delete { relation, old, .. } => {
                if let Some(shape) = self.carried(relation)? {
                    let change = shape.delete(old.tuple())?;
                    self.push(shape, change).await?;
                }
            }
            PgOutput::Truncate { relations, .. } => {
                for oid in relations {
                    let name = match self.shapes.get(&oid) {
                        Some(Ok(shape)) => shape.name.clone(),
                        Some(Err((name, _))) => name.clone(),
                        None => format!("relation oid {oid}"),
                    };
                    tracing::error!(table = %name, "TRUNCATE is not replicated: the Delta table keeps its rows (delete them with DELETE, or re-sync the table; see README)");
                    *self.status().truncates_refused.entry(name).or_default() += 1;
                }
            }
            PgOutput::Begin { .. }
            | PgOutput::Commit { .. }
            | PgOutput::Origin { .. }
            | PgOutput::Type { .. }
            | PgOutput::Message { .. } => {}
            PgOutput::StreamStart { .. }
            | PgOutput::StreamStop
            | PgOutput::StreamCommit { .. }
            | PgOutput::StreamAbort { .. } => {
                return Err(ReplicateError::Malformed(
                    "a stream message out of place (inside a streamed transaction)".into(),
                ))
            }
        }
        Ok(())
    }

    fn relation(&mut self, relation: Relation) -> Result<(), ReplicateError> {
        let columns: Vec<ColumnInfo> = relation
            .columns
            .iter()
            .map(|c| ColumnInfo {
                name: c.name.clone(),
                type_oid: c.type_oid,
                type_modifier: c.type_modifier,
                is_key: c.is_key(),
                type_name: None,
            })
            .collect();
        let name = format!("{}.{}", relation.namespace, relation.name);
        let shape = TableShape::new(
            &relation.namespace,
            &relation.name,
            relation.replica_identity,
            &columns,
        )?;
        let entry = match shape {
            Ok(shape) => Ok(Arc::new(shape)),
            Err(refusal) => {
                refuse_table(&mut self.status(), &name, &refusal);
                Err((name, refusal))
            }
        };
        self.shapes.insert(relation.oid, entry);
        Ok(())
    }

    /// The shape of a relation whose changes are carried; `None` for a
    /// refused table (counted, not applied).
    fn carried(&mut self, oid: u32) -> Result<Option<Arc<TableShape>>, ReplicateError> {
        match self.shapes.get(&oid) {
            Some(Ok(shape)) => Ok(Some(Arc::clone(shape))),
            Some(Err((name, _))) => {
                *self
                    .status
                    .lock()
                    .refused_changes
                    .entry(name.clone())
                    .or_default() += 1;
                Ok(None)
            }
            None => Err(ReplicateError::Malformed(format!(
                "a change of relation {oid} arrived before its Relation message"
            ))),
        }
    }

    async fn push(&mut self, shape: Arc<TableShape>, change: Change) -> Result<(), ReplicateError> {
        let batch_rows = self.settings.args.batch_rows.max(1);
        let Some(transaction) = self.transaction.as_mut() else {
            return Err(ReplicateError::Malformed(
                "a change arrived outside a transaction".into(),
            ));
        };
        if transaction.skip {
            return Ok(());
        }
        self.status.lock().changes_streamed += 1;
        transaction.bytes += change.bytes();
        let index = transaction
            .parts
            .iter()
            .rposition(|part| part.shape.path == shape.path);
        let index = match index {
            Some(index) if Arc::ptr_eq(&transaction.parts[index].shape, &shape) => index,
            _ => {
                transaction.parts.push(Part {
                    shape,
                    changes: Vec::new(),
                    batches: Vec::new(),
                });
                transaction.parts.len() - 1
            }
        };
        let part = &mut transaction.parts[index];
        part.changes.push(change);
        if part.changes.len() >= batch_rows {
            let batch = part.shape.batch(&part.changes)?;
            part.changes.clear();
            part.batches.push(batch);
        }
        if transaction.bytes >= self.settings.args.put_bytes_max {
            self.send_parts(None).await?;
        }
        Ok(())
    }

    /// Sends the buffered parts of the open transaction; the last put
    /// carries `sequence` when given (an empty transaction still closes).
    async fn send_parts(&mut self, sequence: Option<u64>) -> Result<(), ReplicateError> {
        let Some(transaction) = self.transaction.as_mut() else {
            return Ok(());
        };
        let mut parts = std::mem::take(&mut transaction.parts);
        transaction.bytes = 0;
        parts.retain(|part| !part.changes.is_empty() || !part.batches.is_empty());
        let count = parts.len();
        if count == 0 {
            if let Some(sequence) = sequence {
                let response = self.node.close(&self.probe_path, sequence).await?;
                self.record_checked(&response)?;
            }
            return Ok(());
        }
        for (index, mut part) in parts.into_iter().enumerate() {
            if !part.changes.is_empty() {
                part.batches.push(part.shape.batch(&part.changes)?);
            }
            let last = index + 1 == count;
            let response = self
                .node
                .put(
                    &part.shape.path,
                    part.shape.descriptors(),
                    part.shape.schema(),
                    part.batches,
                    if last { sequence } else { None },
                )
                .await?;
            self.record_checked(&response)?;
        }
        Ok(())
    }

    async fn commit(&mut self, commit_lsn: PgLsn) -> Result<(), ReplicateError> {
        let Some(transaction) = self.transaction.as_ref() else {
            return Err(ReplicateError::Malformed(
                "a commit arrived outside a transaction".into(),
            ));
        };
        if transaction.commit_lsn != commit_lsn {
            return Err(ReplicateError::Malformed(format!(
                "commit at {} closes the transaction that began for {}",
                format_lsn(commit_lsn),
                format_lsn(transaction.commit_lsn)
            )));
        }
        if transaction.skip {
            self.status().transactions_skipped += 1;
        } else {
            self.send_parts(Some(commit_lsn)).await?;
            let mut status = self.status();
            status.transactions_streamed += 1;
            status.last_commit_lsn = Some(commit_lsn);
        }
        self.transaction = None;
        Ok(())
    }
}

/// The first `server_version_num` whose pgoutput streams in-progress
/// transactions (protocol version 2).
const STREAMING_SERVER_VERSION: u32 = 140_000;

/// Microseconds from 1970-01-01 to 2000-01-01 (Postgres's epoch).
const PG_EPOCH_MICROS: i64 = 946_684_800_000_000;

fn refuse_table(status: &mut Status, name: &str, refusal: &Refusal) {
    if !status.tables_refused.contains_key(name) {
        tracing::error!(table = %name, reason = %refusal, "table refused: its changes are not replicated");
    }
    status
        .tables_refused
        .insert(name.to_string(), refusal.to_string());
    status.refused_changes.entry(name.to_string()).or_default();
}
