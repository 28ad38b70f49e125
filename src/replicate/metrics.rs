//! The replicator's own Prometheus registry (`--metrics-listen`): the
//! progress numbers of [`Status`] (the same ones as the log line and the
//! status file), read from the shared status at scrape time. Names carry
//! their unit and start with `flightlog_replicate_`; counters get `_total`
//! from the encoder. Served by [`crate::ops::http::serve_metrics`].

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use crate::ops::metrics::{counter, family, gauge, TableLabel};
use crate::replicate::{SharedStatus, Status};

/// The phases the `flightlog_replicate_phase` state set names.
pub const PHASES: [&str; 3] = ["connecting", "copy", "streaming"];

/// The replicator's registry, in the OpenMetrics text format.
pub fn render(status: &SharedStatus) -> String {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(StatusCollector {
        status: status.clone(),
    }));
    crate::ops::metrics::encode(&registry)
}

#[derive(Debug)]
struct StatusCollector {
    status: SharedStatus,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SchemaTableLabels {
    schema: String,
    table: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PhaseLabel {
    phase: String,
}

fn per_table(values: &std::collections::BTreeMap<String, u64>) -> Vec<(TableLabel, u64)> {
    values
        .iter()
        .map(|(table, n)| {
            (
                TableLabel {
                    table: table.clone(),
                },
                *n,
            )
        })
        .collect()
}

impl Collector for StatusCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        // A copy, so that the replicator is never held up by a scrape.
        let status: Status = self.status.lock().clone();
        let e = &mut encoder;
        let phases: Vec<(PhaseLabel, u64)> = PHASES
            .iter()
            .map(|phase| {
                (
                    PhaseLabel {
                        phase: (*phase).to_owned(),
                    },
                    u64::from(status.phase == *phase),
                )
            })
            .collect();
        family(
            e,
            "flightlog_replicate_phase",
            "1 for the phase the replicator is in (connecting, copy, streaming), 0 for the others",
            MetricType::Gauge,
            &phases,
        )?;
        let copied: Vec<(SchemaTableLabels, u64)> = status
            .copy_tables
            .iter()
            .map(|(name, (schema, table))| {
                (
                    SchemaTableLabels {
                        schema: schema.clone(),
                        table: table.clone(),
                    },
                    status.copy_rows.get(name).copied().unwrap_or(0),
                )
            })
            .collect();
        family(
            e,
            "flightlog_replicate_copy_rows",
            "Rows of the initial copy sent to the node, per table (restarts at 0 when a copy is redone)",
            MetricType::Counter,
            &copied,
        )?;
        let counters = [
            (
                "flightlog_replicate_transactions",
                "Postgres transactions sent to the node as sync transactions",
                status.transactions_streamed,
            ),
            (
                "flightlog_replicate_transactions_skipped",
                "Postgres transactions received again that the node already had (commit LSN at or below its sequence)",
                status.transactions_skipped,
            ),
            (
                "flightlog_replicate_changes",
                "Row changes (insert, update, delete) sent to the node",
                status.changes_streamed,
            ),
            (
                "flightlog_replicate_sessions",
                "Replication sessions started (node connection, slot, stream)",
                status.sessions,
            ),
            (
                "flightlog_replicate_reconnects",
                "Sessions started again after a transient error (connection lost, node restarted)",
                status.sessions.saturating_sub(1),
            ),
            (
                "flightlog_replicate_stream_chunks",
                "Chunks of streamed in-progress transactions received (stream starts)",
                status.stream_chunks,
            ),
            (
                "flightlog_replicate_streamed_transactions_committed",
                "Streamed transactions committed (sent to the node as one transaction, or skipped)",
                status.streamed_transactions_committed,
            ),
            (
                "flightlog_replicate_streamed_transactions_aborted",
                "Streamed transactions aborted as a whole (their buffered changes dropped)",
                status.streamed_transactions_aborted,
            ),
            (
                "flightlog_replicate_streamed_subtransactions_aborted",
                "Subtransactions of streamed transactions aborted (exactly their changes dropped)",
                status.streamed_subtransactions_aborted,
            ),
        ];
        for (name, help, value) in counters {
            counter(e, name, help, value)?;
        }
        let gauges = [
            (
                "flightlog_replicate_last_commit_lsn",
                "Commit LSN of the last transaction sent to the node (its sequence number), as an integer",
                status.last_commit_lsn.unwrap_or(0),
            ),
            (
                "flightlog_replicate_confirmed_lsn",
                "Flush position last confirmed to Postgres (standby status update), as an integer",
                status.confirmed_lsn.unwrap_or(0),
            ),
            (
                "flightlog_replicate_node_memory_sequence",
                "The node's acknowledged (fsynced) sequence for the origin",
                status.node_memory_sequence.unwrap_or(0),
            ),
            (
                "flightlog_replicate_node_durable_sequence",
                "The node's durable (in Delta) sequence for the origin",
                status.node_durable_sequence.unwrap_or(0),
            ),
            (
                "flightlog_replicate_lag_bytes",
                "WAL bytes between the server's insert position and what the replicator has processed",
                status.lag_bytes,
            ),
            (
                "flightlog_replicate_protocol_version",
                "pgoutput protocol version of the session: 2 streams large in-progress transactions, 1 does not (0 before the first stream)",
                u64::from(status.protocol_version),
            ),
            (
                "flightlog_replicate_stream_open_transactions",
                "Streamed transactions neither committed nor aborted yet",
                status.stream_open_transactions,
            ),
            (
                "flightlog_replicate_stream_buffer_bytes",
                "Bytes held for open streamed transactions (limit: --stream-buffer-bytes)",
                status.stream_buffer_bytes,
            ),
        ];
        for (name, help, value) in gauges {
            gauge(e, name, help, value)?;
        }
        gauge(
            e,
            "flightlog_replicate_lag_seconds",
            "Age of the last processed commit while behind the server (0 when caught up)",
            status.lag_seconds,
        )?;
        family(
            e,
            "flightlog_replicate_refused_changes",
            "Row changes of a refused table (no primary key) that were not carried, per table",
            MetricType::Counter,
            &per_table(&status.refused_changes),
        )?;
        family(
            e,
            "flightlog_replicate_truncates_refused",
            "TRUNCATEs not applied to the Delta table, per table",
            MetricType::Counter,
            &per_table(&status.truncates_refused),
        )?;
        Ok(())
    }
}
