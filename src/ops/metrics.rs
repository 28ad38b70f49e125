//! The Prometheus registry of a node. Counters and gauges are read from the
//! stages' own atomics at scrape time (a [`Collector`]), so nothing on the
//! put or flush path changes to be observed; latencies are the stages'
//! [`Latency`](super::latency::Latency) histograms. Names carry their unit
//! and counters end in `_total`, as Prometheus asks.
//!
//! The `/metrics` endpoint and the Flight `metrics` action both render
//! [`registry`]. The helpers [`counter`], [`gauge`] and [`family`] also
//! serve the replicator's own registry (`flightlog replicate
//! --metrics-listen`, in `replicate::metrics`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use tokio::time::Instant;

use crate::node::Node;

/// The content type of [`render`]'s text.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Put requests answered, by gRPC status code (`Ok` included).
#[derive(Debug, Default)]
pub struct RequestCounts(Mutex<std::collections::BTreeMap<&'static str, u64>>);

impl RequestCounts {
    pub fn record(&self, code: tonic::Code) {
        let mut counts = self.0.lock().unwrap_or_else(|e| e.into_inner());
        *counts.entry(code_name(code)).or_default() += 1;
    }

    pub fn snapshot(&self) -> Vec<(&'static str, u64)> {
        let counts = self.0.lock().unwrap_or_else(|e| e.into_inner());
        counts.iter().map(|(code, n)| (*code, *n)).collect()
    }
}

fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code;
    match code {
        Code::Ok => "ok",
        Code::Cancelled => "cancelled",
        Code::Unknown => "unknown",
        Code::InvalidArgument => "invalid_argument",
        Code::DeadlineExceeded => "deadline_exceeded",
        Code::NotFound => "not_found",
        Code::AlreadyExists => "already_exists",
        Code::PermissionDenied => "permission_denied",
        Code::ResourceExhausted => "resource_exhausted",
        Code::FailedPrecondition => "failed_precondition",
        Code::Aborted => "aborted",
        Code::OutOfRange => "out_of_range",
        Code::Unimplemented => "unimplemented",
        Code::Internal => "internal",
        Code::Unavailable => "unavailable",
        Code::DataLoss => "data_loss",
        Code::Unauthenticated => "unauthenticated",
    }
}

/// The registry of `node`: one collector over every stage.
pub fn registry(node: Arc<Node>) -> Registry {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(NodeCollector { node }));
    registry
}

/// The registry of `node` in the OpenMetrics text format.
pub fn render(node: &Arc<Node>) -> String {
    encode(&registry(node.clone()))
}

/// What is rendered while the node is still recovering.
pub fn render_empty() -> String {
    encode(&Registry::default())
}

/// `registry` in the OpenMetrics text format ([`CONTENT_TYPE`]).
pub fn encode(registry: &Registry) -> String {
    let mut text = String::new();
    // Writing into a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut text, registry);
    text
}

struct NodeCollector {
    node: Arc<Node>,
}

impl std::fmt::Debug for NodeCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("NodeCollector")
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CodeLabel {
    code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OriginLabel {
    origin: String,
}

/// A `table` label (a node's canonical table name, or a replicated
/// Postgres table's `schema.table`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TableLabel {
    pub table: String,
}

/// One unlabelled counter (the encoder appends `_total` to `name`).
pub fn counter(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: u64,
) -> Result<(), std::fmt::Error> {
    let metric = ConstCounter::new(value);
    metric.encode(encoder.encode_descriptor(name, help, None, metric.metric_type())?)
}

/// One unlabelled gauge.
pub fn gauge<V>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: V,
) -> Result<(), std::fmt::Error>
where
    V: prometheus_client::encoding::EncodeGaugeValue + std::fmt::Debug + Send + Sync + 'static,
{
    let metric = ConstGauge::new(value);
    metric.encode(encoder.encode_descriptor(name, help, None, metric.metric_type())?)
}

fn histogram(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    latency: &super::latency::Latency,
) -> Result<(), std::fmt::Error> {
    let metric = latency.histogram();
    metric.encode(encoder.encode_descriptor(name, help, None, metric.metric_type())?)
}

/// The flush memory budget: its size, what is reserved now, waits, and
/// flushes of transactions larger than it lets one flush read.
fn memory_budget(
    encoder: &mut DescriptorEncoder,
    memory: &crate::flush::MemoryBudget,
) -> Result<(), std::fmt::Error> {
    gauge(
        encoder,
        "flightlog_flush_memory_budget_bytes",
        "--memory-budget: most bytes the running flushes hold decoded, together",
        memory.bytes(),
    )?;
    gauge(
        encoder,
        "flightlog_flush_memory_reserved_bytes",
        "Bytes of the memory budget the running flushes reserved",
        memory.reserved(),
    )?;
    counter(
        encoder,
        "flightlog_flush_memory_waits",
        "Flushes that waited for room in the memory budget",
        memory.waits(),
    )?;
    counter(
        encoder,
        "flightlog_flush_memory_oversized",
        "Flushes of one transaction larger than the budget lets a flush read (each ran alone)",
        memory.oversized(),
    )
}

/// One labelled family of whole-number values of one type.
pub fn family<L: EncodeLabelSet>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    metric_type: MetricType,
    values: &[(L, u64)],
) -> Result<(), std::fmt::Error> {
    let mut metric = encoder.encode_descriptor(name, help, None, metric_type)?;
    for (labels, value) in values {
        let mut labelled = metric.encode_family(labels)?;
        match metric_type {
            MetricType::Counter => labelled
                .encode_counter::<prometheus_client::encoding::NoLabelSet, _, f64>(value, None)?,
            _ => labelled.encode_gauge(value)?,
        }
    }
    Ok(())
}

impl Collector for NodeCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let node = &self.node;
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let e = &mut encoder;

        let put = &node.put_metrics;
        let codes: Vec<(CodeLabel, u64)> = put
            .requests
            .snapshot()
            .into_iter()
            .map(|(code, n)| {
                (
                    CodeLabel {
                        code: code.to_owned(),
                    },
                    n,
                )
            })
            .collect();
        family(
            e,
            "flightlog_put_requests",
            "do_put calls answered, by gRPC status code",
            MetricType::Counter,
            &codes,
        )?;
        histogram(
            e,
            "flightlog_ack_seconds",
            "Time from a do_put's start to its answer (after the fsync covering it)",
            &put.ack_seconds,
        )?;
        counter(
            e,
            "flightlog_put_idle_transactions_aborted",
            "Open transactions aborted because their origin went quiet",
            load(&put.idle_transactions_aborted),
        )?;

        let wal = node.wal.metrics();
        counter(
            e,
            "flightlog_wal_fsyncs",
            "fdatasync calls on WAL segments",
            load(&wal.syncs),
        )?;
        histogram(
            e,
            "flightlog_wal_fsync_seconds",
            "Duration of one fdatasync of the active WAL segment",
            &wal.fsync_seconds,
        )?;
        counter(
            e,
            "flightlog_wal_bytes",
            "Bytes written to the WAL",
            load(&wal.bytes_written),
        )?;
        counter(
            e,
            "flightlog_wal_frames",
            "Frames appended to the WAL",
            load(&wal.frames_appended),
        )?;
        counter(
            e,
            "flightlog_wal_group_commits",
            "Group commits (one write + one fsync for every waiter)",
            load(&wal.batches),
        )?;
        gauge(
            e,
            "flightlog_wal_segments",
            "WAL segment files in use",
            node.wal.segments().len() as u64,
        )?;
        gauge(
            e,
            "flightlog_wal_log_bytes",
            "Bytes of the WAL segments in use",
            node.wal.log_bytes(),
        )?;
        gauge(
            e,
            "flightlog_wal_failed",
            "1 after a WAL failure (fail-stop: nothing is acknowledged until restart)",
            u64::from(node.wal.failure().is_some()),
        )?;

        let pending = &node.pending;
        gauge(
            e,
            "flightlog_pending_bytes",
            "WAL bytes acknowledged and not yet durable in the lake",
            pending.pending_bytes(),
        )?;
        gauge(
            e,
            "flightlog_pending_frames",
            "WAL frames acknowledged and not yet durable in the lake",
            pending.pending_frames() as u64,
        )?;
        gauge(
            e,
            "flightlog_durable_lag_seconds",
            "Age of the oldest acknowledged change not yet durable (0 when none)",
            pending.durable_lag(Instant::now()).as_secs_f64(),
        )?;

        let flush = &node.flush_metrics;
        counter(
            e,
            "flightlog_flush_commits",
            "Delta commits made by flushes",
            load(&flush.commits),
        )?;
        counter(
            e,
            "flightlog_flush_rows",
            "Rows written by flushes (kept rows of rewritten files included)",
            load(&flush.rows_written),
        )?;
        let kinds = [
            (
                KindLabel {
                    kind: "transient".into(),
                },
                load(&flush.failures_transient),
            ),
            (
                KindLabel {
                    kind: "permanent".into(),
                },
                load(&flush.failures_permanent),
            ),
        ];
        family(
            e,
            "flightlog_flush_failures",
            "Failed flushes, by whether retrying may help",
            MetricType::Counter,
            &kinds,
        )?;
        histogram(
            e,
            "flightlog_flush_seconds",
            "Duration of one table's flush (read back, merge, commit)",
            &flush.flush_seconds,
        )?;
        memory_budget(e, &node.flush_memory)?;
        counter(
            e,
            "flightlog_flush_quarantines",
            "Tables put in quarantine",
            load(&flush.quarantines),
        )?;
        let quarantined: Vec<(TableLabel, u64)> = pending
            .quarantined_tables()
            .into_iter()
            .map(|(table, q)| {
                (
                    TableLabel {
                        table: table.to_string(),
                    },
                    u64::from(q.failures),
                )
            })
            .collect();
        gauge(
            e,
            "flightlog_tables_quarantined",
            "Tables in quarantine now",
            quarantined.len() as u64,
        )?;
        family(
            e,
            "flightlog_table_quarantine_failures",
            "Consecutive failed flushes of each quarantined table",
            MetricType::Gauge,
            &quarantined,
        )?;

        let maintenance = &flush.maintenance;
        counter(
            e,
            "flightlog_compactions",
            "Compaction commits (dataChange = false)",
            load(&maintenance.compactions),
        )?;
        counter(
            e,
            "flightlog_compaction_files_removed",
            "Small data files replaced by compaction",
            load(&maintenance.files_compacted),
        )?;
        counter(
            e,
            "flightlog_checkpoints",
            "Delta checkpoints written",
            load(&maintenance.checkpoints),
        )?;
        counter(
            e,
            "flightlog_vacuum_files_deleted",
            "Unreferenced data files deleted by vacuum",
            load(&maintenance.files_vacuumed),
        )?;
        counter(
            e,
            "flightlog_maintenance_failures",
            "Failed maintenance steps (compaction, checkpoint, vacuum); retried later",
            load(&maintenance.failures),
        )?;

        let numbers = pending.origin_numbers();
        let memory: Vec<(OriginLabel, u64)> = numbers
            .iter()
            .filter_map(|(origin, n)| {
                Some((
                    OriginLabel {
                        origin: origin.to_string(),
                    },
                    n.memory?,
                ))
            })
            .collect();
        let durable: Vec<(OriginLabel, u64)> = numbers
            .iter()
            .filter_map(|(origin, n)| {
                Some((
                    OriginLabel {
                        origin: origin.to_string(),
                    },
                    n.durable?,
                ))
            })
            .collect();
        family(
            e,
            "flightlog_origin_memory_sequence",
            "Highest acknowledged (fsynced) sequence number per origin",
            MetricType::Gauge,
            &memory,
        )?;
        family(
            e,
            "flightlog_origin_durable_sequence",
            "Highest sequence number durable in the lake per origin",
            MetricType::Gauge,
            &durable,
        )?;
        Ok(())
    }
}
