//! The node: the stages of one ingest node put together, and what spans
//! them (start, shutdown, metrics). The stages live in their own modules:
//! `put` (the put pipeline), `admission` (table identity and every check
//! before acknowledging), `sync::origins` (per-origin transactions),
//! `pending` (acknowledged, not yet durable), `recovery` (start-up), `wal`,
//! and `flush`, which runs beside the node on `Pending` and the `Wal` alone.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::admission::{Admission, AdmissionConfig};
use crate::config::Config;
use crate::error::NodeError;
use crate::flush::{FlushConfig, FlushContext, FlushMetrics, MemoryBudget};
use crate::identity::{Origin, StoreRoot, StoreScheme};
use crate::pending::Pending;
use crate::sync::origins::{write_abort, Origins};
use crate::wal::Wal;

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
    /// Data frames whose table no longer passes the identity rules (kept in
    /// the WAL, never applied; logged at error).
    pub unresolvable_frames: usize,
    pub torn_tail: Option<String>,
}

/// Counters of the put path that no single stage owns.
#[derive(Debug, Default)]
pub struct PutMetrics {
    /// Open transactions aborted because their origin went quiet.
    pub idle_transactions_aborted: AtomicU64,
    /// do_put calls answered, by status code (counted by the Flight adapter).
    pub requests: crate::ops::metrics::RequestCounts,
    /// Time from a do_put's start to its successful answer.
    pub ack_seconds: crate::ops::latency::Latency,
}

/// The ingest node. Shared by every request (wrap in an `Arc`).
pub struct Node {
    pub(crate) config: Config,
    pub(crate) wal: Wal,
    pub(crate) origins: Origins,
    pub(crate) pending: Pending,
    pub(crate) admission: Admission,
    pub(crate) shutting_down: AtomicBool,
    pub(crate) flush_metrics: Arc<FlushMetrics>,
    pub(crate) put_metrics: PutMetrics,
    /// `--memory-budget`, shared by every flush of this node.
    pub(crate) flush_memory: Arc<MemoryBudget>,
}

impl Node {
    /// Opens the WAL under the data directory, recovers the pending stage,
    /// every origin's sequence numbers and the tables' column knowledge, and
    /// aborts transactions left open by the previous run (durably, before
    /// serving).
    pub async fn open(config: Config) -> Result<(Arc<Node>, StartState), NodeError> {
        let (wal, recovery) = Wal::open_dir(config.wal_dir(), config.wal.clone())?;
        let admission = Admission::new(admission_config(&config)?);
        let flush_memory = MemoryBudget::new(config.memory_budget);
        let node = Arc::new(Node {
            config,
            wal,
            origins: Origins::default(),
            pending: Pending::default(),
            admission,
            shutting_down: AtomicBool::new(false),
            flush_metrics: Arc::default(),
            flush_memory,
            put_metrics: PutMetrics::default(),
        });
        let mut state = node.recover(recovery).await?;
        node.reconcile_with_store().await;
        state.pending_frames = node.pending.pending_frames();
        Ok((node, state))
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn wal(&self) -> &Wal {
        &self.wal
    }

    pub fn pending(&self) -> &Pending {
        &self.pending
    }

    /// What the flush scheduler needs: the pending stage, the WAL, its
    /// settings and its counters; never the node itself.
    pub fn flush_context(&self) -> FlushContext {
        FlushContext {
            pending: self.pending.clone(),
            wal: self.wal.clone(),
            config: FlushConfig::from(&self.config),
            metrics: self.flush_metrics.clone(),
            memory: self.flush_memory.clone(),
        }
    }

    /// Whether [`Node::begin_shutdown`] was called.
    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::SeqCst)
    }

    /// Counters of the put path (the Flight adapter records into them).
    pub fn put_metrics(&self) -> &PutMetrics {
        &self.put_metrics
    }

    /// The admission stage (the Flight adapter checks a token's grant).
    pub fn admission(&self) -> &Admission {
        &self.admission
    }

    /// Stops accepting puts; in-flight puts finish.
    pub fn begin_shutdown(&self) {
        self.shutting_down.store(true, Ordering::SeqCst);
    }

    /// Current numbers of an origin without answering (tests, metrics).
    pub fn origin_numbers(&self, name: &str) -> (Option<u64>, Option<u64>) {
        let numbers = self.pending.numbers(&Origin::new(name));
        (numbers.memory, numbers.durable)
    }

    /// Aborts every open transaction whose origin sent nothing for
    /// `timeout` (its frames get an abort marker, its next answer says
    /// `first = true`, as after a restart, so the client resends from its
    /// acknowledged sequence). An origin whose put is in progress is not
    /// idle. Returns how many were aborted.
    pub async fn abort_idle_transactions(&self, now: Instant, timeout: Duration) -> usize {
        let mut aborted = 0;
        for (origin, entry) in self.origins.all() {
            let Ok(mut state) = entry.state.try_lock() else {
                continue;
            };
            let idle = now.saturating_duration_since(state.last_message);
            if state.open.is_none() || idle < timeout {
                continue;
            }
            let range = state.open.as_ref().and_then(|open| open.range);
            if let Some((first, last)) = range {
                if let Err(error) = write_abort(&self.wal, &origin, first, last).await {
                    tracing::warn!(%error, %origin, "cannot abort an idle open transaction yet");
                    continue;
                }
            }
            state.open = None;
            state.answered = false;
            self.pending.close_open(&origin);
            aborted += 1;
            tracing::warn!(%origin, idle_ms = idle.as_millis() as u64, "aborted an open transaction whose origin went quiet; its next answer says first = true");
        }
        self.put_metrics
            .idle_transactions_aborted
            .fetch_add(aborted as u64, Ordering::Relaxed);
        aborted
    }

    /// Counters and gauges as JSON (the `metrics` Flight action).
    pub fn metrics_json(&self) -> serde_json::Value {
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let wal = self.wal.metrics();
        let flush = &self.flush_metrics;
        let pending = &self.pending;
        let quarantined: Vec<serde_json::Value> = pending
            .quarantined_tables()
            .into_iter()
            .map(|(table, q)| serde_json::json!({"table": table.to_string(), "reason": q.reason, "failures": q.failures}))
            .collect();
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
                "bytes": pending.pending_bytes(),
                "frames": pending.pending_frames(),
                "tables": pending.pending_tables().len(),
                "transactions": pending.pending_transactions(),
                "durable_lag_ms": pending.durable_lag(Instant::now()).as_millis() as u64,
                "high_watermark_bytes": self.config.pending_bytes_high_watermark,
            },
            "flush": {
                "commits": load(&flush.commits),
                "already_applied": load(&flush.already_applied),
                "failures": load(&flush.failures),
                "rows_written": load(&flush.rows_written),
                "frames_flushed": load(&flush.frames_flushed),
                "quarantined": quarantined,
            },
            "maintenance": {
                "compactions": load(&flush.maintenance.compactions),
                "files_compacted": load(&flush.maintenance.files_compacted),
                "checkpoints": load(&flush.maintenance.checkpoints),
                "files_vacuumed": load(&flush.maintenance.files_vacuumed),
                "failures": load(&flush.maintenance.failures),
            },
            "put": {
                "idle_transactions_aborted": load(&self.put_metrics.idle_transactions_aborted),
            },
            "origins": self.origins.len(),
        })
    }
}

/// Aborts idle open transactions (see [`Node::abort_idle_transactions`])
/// every tenth of `--open-transaction-timeout-ms` (between 100 ms and 10 s).
pub fn spawn_idle_sweeper(node: Arc<Node>) -> tokio::task::JoinHandle<()> {
    let timeout = Duration::from_millis(node.config.open_transaction_timeout_ms);
    let period = (timeout / 10).clamp(Duration::from_millis(100), Duration::from_secs(10));
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(period).await;
            node.abort_idle_transactions(Instant::now(), timeout).await;
        }
    })
}

/// The admission settings of a configuration; the default store and every
/// allowlist entry must parse, and a memory store needs the operator's flag.
fn admission_config(config: &Config) -> Result<AdmissionConfig, NodeError> {
    let default_store = StoreRoot::parse(&config.default_store, &Default::default())?;
    if default_store.scheme() == StoreScheme::Memory && !config.allow_memory_store {
        return Err(NodeError::MemoryStoreRefused {
            location: config.default_store.clone(),
        });
    }
    let allow_store = config
        .allow_store
        .iter()
        .map(|prefix| StoreRoot::parse(prefix, &Default::default()))
        .collect::<Result<Vec<_>, _>>()?;
    let wal_dir = std::path::absolute(config.wal_dir()).unwrap_or_else(|_| config.wal_dir());
    let wal_dir = std::fs::canonicalize(&wal_dir).unwrap_or(wal_dir);
    Ok(AdmissionConfig {
        default_store,
        allow_store,
        allow_memory_store: config.allow_memory_store,
        protected_dirs: vec![wal_dir],
        probe_timeout: Duration::from_millis(config.store_check_timeout_ms),
    })
}
