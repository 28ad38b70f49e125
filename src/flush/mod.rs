//! The flush scheduler: a background task, at its own pace and never on the
//! request path, that picks tables (lag, bytes, memory pressure), flushes
//! their complete transactions to Delta exactly once ([`table`]), and writes
//! checkpoint frames and truncates the WAL behind what is still needed
//! ([`checkpoint`]).
//!
//! Works on the pending stage and the WAL alone ([`FlushContext`]); knows
//! no Flight and no put. A failed flush keeps its data in the WAL and is
//! retried through one capped backoff policy. A table that keeps failing is
//! *quarantined* (its transactions are logged at `error`, counted in the
//! metrics, and new puts to it are refused) after a bounded number of
//! failures: few when the error says retrying cannot help, more when it may
//! be a long outage. Quarantined tables are still retried, slowly, and leave
//! quarantine at their first successful flush. While a table is quarantined
//! its transactions stay pending, so durable numbers stop at the first of
//! them (they are never reported durable before they are); `flightlog wal
//! discard-table` is the way out when the table cannot be mended.

pub mod checkpoint;
pub mod memory;
pub mod table;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::{Duration, Instant};

use crate::config::Config;
use crate::identity::TableId;
use crate::lake::maintenance::{maintain, MaintenanceConfig};
use crate::pending::{DuePolicy, Pending, Quarantine};
use crate::wal::Wal;

pub use checkpoint::checkpoint_and_truncate;
pub use memory::MemoryBudget;
pub use table::{flush_table, FlushError, FlushErrorKind};

/// At most one checkpoint (with its store sync and WAL truncation) per
/// interval: a checkpoint after every flush made each flush wait for a
/// `syncfs` of the local store (p50 ack-to-durable lag 85 ms instead of
/// ~45 ms with `--max-lag-ms 10` in the release bench). Durable sequences are
/// reported at commit either way; only truncation waits.
const CHECKPOINT_INTERVAL: Duration = Duration::from_secs(1);

/// Least time between two vacuums of one table (each lists the table's
/// whole directory).
const VACUUM_INTERVAL: Duration = Duration::from_secs(3600);

/// Settings of the scheduler.
#[derive(Debug, Clone)]
pub struct FlushConfig {
    pub due: DuePolicy,
    /// Most pending bytes one flush reads (at least one whole transaction);
    /// the memory budget may cap it further ([`MemoryBudget::read_bytes_max`]).
    pub flush_bytes_max: u64,
    /// Consecutive failures before quarantine, when the error is permanent.
    pub quarantine_after_permanent: u32,
    /// Consecutive failures before quarantine, when it may be transient.
    pub quarantine_after_transient: u32,
    /// How often a quarantined table is tried again.
    pub quarantine_retry: Duration,
    /// Most tables flushed at the same time (each in its own task).
    pub concurrency: usize,
    /// Compaction, checkpoints and vacuum, run between flushes of a table.
    pub maintenance: MaintenanceConfig,
}

impl From<&Config> for FlushConfig {
    fn from(config: &Config) -> FlushConfig {
        FlushConfig {
            due: DuePolicy {
                max_lag: Duration::from_millis(config.max_lag_ms),
                table_flush_bytes: config.table_flush_bytes,
                low_watermark_bytes: config.pending_bytes_low_watermark,
            },
            flush_bytes_max: config.table_flush_bytes.max(64 << 20),
            quarantine_after_permanent: config.quarantine_after_failures.clamp(1, 3),
            quarantine_after_transient: config.quarantine_after_failures,
            quarantine_retry: Duration::from_millis(config.quarantine_retry_ms),
            concurrency: config.flush_concurrency.max(1),
            maintenance: MaintenanceConfig {
                target_file_bytes: config.ops.target_file_bytes,
                vacuum_retention: Duration::from_secs(
                    config.ops.vacuum_retention_hours.saturating_mul(3600),
                ),
                interval_commits: config.ops.checkpoint_interval_commits,
                // A retention shorter than the interval is an operator's
                // wish to see removed files go soon.
                vacuum_interval: VACUUM_INTERVAL.min(Duration::from_secs(
                    config.ops.vacuum_retention_hours.saturating_mul(3600),
                )),
            },
        }
    }
}

/// What the scheduler works on.
#[derive(Clone)]
pub struct FlushContext {
    pub pending: Pending,
    pub wal: Wal,
    pub config: FlushConfig,
    pub metrics: Arc<FlushMetrics>,
    /// Shared by every flush started from this context (and its clones).
    pub memory: Arc<MemoryBudget>,
}

/// Counters of the flush scheduler.
#[derive(Debug, Default)]
pub struct FlushMetrics {
    pub commits: AtomicU64,
    pub already_applied: AtomicU64,
    pub failures: AtomicU64,
    pub rows_written: AtomicU64,
    pub frames_flushed: AtomicU64,
    pub quarantines: AtomicU64,
    /// Failures that retrying may mend (store outage, WAL I/O).
    pub failures_transient: AtomicU64,
    /// Failures that repeat on the same input.
    pub failures_permanent: AtomicU64,
    /// Duration of each committed flush of one table.
    pub flush_seconds: crate::ops::latency::Latency,
    /// Compaction, checkpoints and vacuum.
    pub maintenance: crate::lake::maintenance::MaintenanceMetrics,
}

/// Handle of the running scheduler.
pub struct Flusher {
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Flusher {
    /// Stops after the flush in progress, if any. Pending data stays in the WAL.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

/// Starts the scheduler.
pub fn start(context: FlushContext) -> Flusher {
    let (stop, stopped) = watch::channel(false);
    let task = tokio::spawn(run(context, stopped));
    Flusher { stop, task }
}

/// One retry policy for every table: 100 ms doubling to 30 s, and the
/// quarantine interval once quarantined.
#[derive(Debug, Clone, Copy)]
struct Backoff {
    failures: u32,
    next_attempt: Instant,
}

impl Backoff {
    fn delay(failures: u32) -> Duration {
        Duration::from_millis(100u64.saturating_mul(1 << failures.min(9)).min(30_000))
    }
}

/// The scheduler loop: at each tick (or as soon as a flush ends), starts
/// flushes of due tables, each table at most once at a time and at most
/// `concurrency` at once, each in its own task so that the CPU-bound parts of
/// different tables' flushes run on different cores. Tables are independent
/// in `Pending` (a transaction becomes durable once every table it touched
/// has applied it, in commit order), so durable numbers stay exact whatever
/// order the flushes finish in. On stop, no new flush starts and the
/// running ones finish.
async fn run(context: FlushContext, mut stopped: watch::Receiver<bool>) {
    let tick = (context.config.due.max_lag / 4)
        .clamp(Duration::from_millis(10), Duration::from_millis(250));
    let mut backoff: HashMap<TableId, Backoff> = HashMap::new();
    let mut running: JoinSet<FlushOutcome> = JoinSet::new();
    let mut in_flight: HashMap<tokio::task::Id, TableId> = HashMap::new();
    let mut unsaved = false;
    let mut last_checkpoint: Option<Instant> = None;
    let mut upkeep: HashMap<TableId, Upkeep> = HashMap::new();
    loop {
        tokio::select! {
            _ = stopped.changed() => break,
            _ = tokio::time::sleep(tick) => {}
            Some(done) = running.join_next_with_id(), if !running.is_empty() => {
                unsaved |= finished(&context, &mut backoff, &mut in_flight, &mut upkeep, done);
            }
        }
        if *stopped.borrow() {
            break;
        }
        let now = Instant::now();
        for table in context.pending.due_tables(now, &context.config.due) {
            if running.len() >= context.config.concurrency {
                break;
            }
            if backoff.get(&table).is_some_and(|b| b.next_attempt > now)
                || in_flight.values().any(|t| *t == table)
            {
                continue;
            }
            // Maintenance runs in the table's own task, after its flush: never
            // beside a flush of the same table, and never holding up others.
            let maintenance = maintenance_due(
                &context.config.maintenance,
                upkeep.entry(table.clone()).or_default(),
            );
            let task_context = context.clone();
            let task_table = table.clone();
            let handle = running.spawn(async move {
                let result = flush_table(&task_context, &task_table).await;
                // What the flush decoded is free now: give it back, so RSS
                // stays near the memory budget between flushes.
                let _ = tokio::task::spawn_blocking(memory::trim_allocator).await;
                if let (Ok(_), Some(vacuum)) = (&result, maintenance) {
                    // Compaction's memory follows the table's files, not the
                    // WAL: it runs with the whole budget, beside no flush.
                    let reservation = task_context.memory.reserve_all().await;
                    maintain_logged(&task_context, &task_table, vacuum).await;
                    drop(reservation);
                    let _ = tokio::task::spawn_blocking(memory::trim_allocator).await;
                }
                (task_table, result)
            });
            in_flight.insert(handle.id(), table);
        }
        let checkpoint_due = last_checkpoint.is_none_or(|at| at.elapsed() >= CHECKPOINT_INTERVAL);
        if unsaved && checkpoint_due {
            match checkpoint_and_truncate(&context).await {
                Ok(()) => {
                    unsaved = false;
                    last_checkpoint = Some(Instant::now());
                }
                Err(error) => tracing::warn!(%error, "checkpoint or truncation failed; will retry"),
            }
        }
    }
    while let Some(done) = running.join_next_with_id().await {
        finished(&context, &mut backoff, &mut in_flight, &mut upkeep, done);
    }
}

/// What a flush task returns: its table and the flush's result.
type FlushOutcome = (TableId, Result<bool, FlushError>);

/// Books one finished flush task; returns whether it changed anything.
fn finished(
    context: &FlushContext,
    backoff: &mut HashMap<TableId, Backoff>,
    in_flight: &mut HashMap<tokio::task::Id, TableId>,
    upkeep: &mut HashMap<TableId, Upkeep>,
    done: Result<(tokio::task::Id, FlushOutcome), tokio::task::JoinError>,
) -> bool {
    match done {
        Ok((id, (table, Ok(changed)))) => {
            in_flight.remove(&id);
            if changed {
                upkeep.entry(table.clone()).or_default().flushes += 1;
            }
            backoff.remove(&table);
            if context.pending.lift_quarantine(&table) {
                tracing::info!(%table, "flushed again: the table left quarantine");
            }
            changed
        }
        Ok((id, (table, Err(error)))) => {
            in_flight.remove(&id);
            let previous = backoff.get(&table).copied();
            let next = failed(context, &table, &error, previous);
            backoff.insert(table, next);
            false
        }
        Err(error) => {
            // A flush task panicked (a bug): its data stays pending; retry later.
            let table = in_flight.remove(&error.id());
            tracing::error!(%error, ?table, "flush task failed; data stays in the WAL");
            if let Some(table) = table {
                let failures = backoff
                    .get(&table)
                    .map_or(1, |b| b.failures.saturating_add(1));
                backoff.insert(
                    table,
                    Backoff {
                        failures,
                        next_attempt: Instant::now() + Backoff::delay(failures),
                    },
                );
            }
            false
        }
    }
}

/// A table's maintenance state in the scheduler.
#[derive(Debug, Default)]
struct Upkeep {
    /// Flushes since the last maintenance run.
    flushes: u64,
    last_vacuum: Option<Instant>,
}

/// Whether `table` is due for maintenance (see [`crate::lake::maintenance`]):
/// `interval_commits` flushes that changed it since the last run; `Some`
/// says whether to vacuum too. Counts the run as started.
fn maintenance_due(config: &MaintenanceConfig, state: &mut Upkeep) -> Option<bool> {
    if state.flushes < config.interval_commits {
        return None;
    }
    state.flushes = 0;
    let vacuum = state
        .last_vacuum
        .is_none_or(|at| at.elapsed() >= config.vacuum_interval);
    if vacuum {
        state.last_vacuum = Some(Instant::now());
    }
    Some(vacuum)
}

/// Maintains `table`; a failure is logged and the run repeats after the
/// next interval.
async fn maintain_logged(context: &FlushContext, table: &TableId, vacuum: bool) {
    let config = &context.config.maintenance;
    if let Err(error) = maintain(table, config, vacuum, &context.metrics.maintenance).await {
        tracing::warn!(%table, %error, "table maintenance failed; the table is unchanged and maintenance runs again later");
    }
}

/// Records a failed flush: the next attempt, and quarantine once the table
/// failed often enough for its kind of error.
fn failed(
    context: &FlushContext,
    table: &TableId,
    error: &FlushError,
    previous: Option<Backoff>,
) -> Backoff {
    context.metrics.failures.fetch_add(1, Ordering::Relaxed);
    match error.kind() {
        FlushErrorKind::Transient => &context.metrics.failures_transient,
        FlushErrorKind::Permanent => &context.metrics.failures_permanent,
    }
    .fetch_add(1, Ordering::Relaxed);
    let failures = previous.map_or(1, |b| b.failures.saturating_add(1));
    let config = &context.config;
    let limit = match error.kind() {
        FlushErrorKind::Permanent => config.quarantine_after_permanent,
        FlushErrorKind::Transient => config.quarantine_after_transient,
    };
    let now = Instant::now();
    if let Some(mut quarantine) = context.pending.quarantined(table) {
        quarantine.failures = failures;
        quarantine.reason = error.to_string();
        context.pending.quarantine(table, quarantine);
        return Backoff {
            failures,
            next_attempt: now + config.quarantine_retry,
        };
    }
    if failures >= limit {
        let transactions = context.pending.transactions_of(table);
        tracing::error!(%table, %error, failures, ?transactions, "table quarantined: its transactions stay in the WAL and hold back every origin's durable sequence; new puts to it are refused; see the README (quarantine)");
        context.metrics.quarantines.fetch_add(1, Ordering::Relaxed);
        context.pending.quarantine(
            table,
            Quarantine {
                reason: error.to_string(),
                since: now,
                failures,
            },
        );
        return Backoff {
            failures,
            next_attempt: now + config.quarantine_retry,
        };
    }
    tracing::warn!(%error, failures, kind = ?error.kind(), "flush failed; data stays in the WAL, retrying with backoff");
    Backoff {
        failures,
        next_attempt: now + Backoff::delay(failures),
    }
}
