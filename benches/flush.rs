//! Flush benchmarks against the real binary: flush throughput (rows/s) for
//! insert-only and for a mix of 89% inserts, 10% updates and 1% deletes
//! against an existing table, end-to-end lag from ack to committed in Delta,
//! and the node's RSS while several times its pending-bytes budget passes
//! through it. Prints one line per figure. Run with
//! `cargo bench --profile dev --bench flush` (numbers are then those of a
//! dev build with optimised dependencies).

#![allow(clippy::unwrap_used)]

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use common::model::*;
use common::{NodeOptions, ServeProcess};

const ROWS_PER_MESSAGE: i64 = 50_000;

fn insert(id: i64) -> Change {
    Change::Insert {
        key: vec![id],
        set: set(&[
            ("name", text(&format!("row-{id:012}"))),
            ("amount", int(id)),
        ]),
    }
}

/// Sends `changes` as one transaction in messages of `ROWS_PER_MESSAGE`,
/// returning the instant the closing message was acknowledged.
async fn send_in_messages(
    client: &mut Client,
    table: &str,
    sequence: u64,
    changes: Vec<Change>,
) -> Instant {
    let chunks: Vec<Vec<Change>> = changes
        .chunks(ROWS_PER_MESSAGE as usize)
        .map(|c| c.to_vec())
        .collect();
    let last = chunks.len() - 1;
    for (i, chunk) in chunks.into_iter().enumerate() {
        let message = Message::new(table, &["id"], usual_values(), chunk);
        client
            .send("bench", (i == last).then_some(sequence), &message)
            .await;
    }
    Instant::now()
}

/// Polls until `sequence` is durable; the instant it was first seen so.
async fn durable_at(client: &mut Client, sequence: u64) -> Instant {
    let started = Instant::now();
    loop {
        let response = client.probe("bench").await;
        if response.durable_sequence_number >= Some(sequence) {
            return Instant::now();
        }
        assert!(started.elapsed() < DEADLINE, "{response:?}");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

async fn throughput(rows: i64) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let node = ServeProcess::start_with(&dir, NodeOptions::default().arg("--max-lag-ms", 10));
    let mut client = node.sync_client().await;

    let started = Instant::now();
    let acked = send_in_messages(&mut client, "bench", 1, (0..rows).map(insert).collect()).await;
    let ingest = acked - started;
    let durable = durable_at(&mut client, 1).await;
    let flush = durable - acked;
    println!(
        "insert-only: {rows} rows in one transaction; ingest (build + put + fsync) {:.2} s; flush {:.2} s = {:.0} rows/s; peak-ish RSS now {} MiB",
        ingest.as_secs_f64(),
        flush.as_secs_f64(),
        rows as f64 / flush.as_secs_f64(),
        node.rss_kib().total >> 10
    );

    // 89% new keys, 10% updates of existing keys, 1% deletes.
    let mut rng = Rng::new(5);
    let mixed_rows = rows / 2;
    let mut changes = Vec::with_capacity(mixed_rows as usize);
    let mut next = rows;
    let mut deleted = std::collections::HashSet::new();
    for _ in 0..mixed_rows {
        let pick = rng.below(100);
        let existing = rng.below(rows as u64) as i64;
        changes.push(match pick {
            0..=88 => {
                next += 1;
                insert(next)
            }
            89..=98 if !deleted.contains(&existing) => Change::Update {
                old: vec![existing],
                new: vec![existing],
                set: set(&[("amount", int(-existing))]),
            },
            _ => {
                deleted.insert(existing);
                Change::Delete {
                    key: vec![existing],
                }
            }
        });
    }
    let acked = send_in_messages(&mut client, "bench", 2, changes).await;
    let durable = durable_at(&mut client, 2).await;
    let flush = durable - acked;
    println!(
        "mixed 89/10/1 on a {rows}-row table: {mixed_rows} changes; flush {:.2} s = {:.0} rows/s",
        flush.as_secs_f64(),
        mixed_rows as f64 / flush.as_secs_f64()
    );
    let log = node.log_text();
    for line in log.lines().filter(|l| l.contains("flushed")) {
        println!(
            "  node: {}",
            strip_ansi(line.split("flushed").nth(1).unwrap_or("")).trim()
        );
    }
}

/// Drops terminal colour codes (`ESC [ ... m`) from a log line.
fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c == 'm' {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

async fn lag(max_lag_ms: u64, transactions: u64) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let node =
        ServeProcess::start_with(&dir, NodeOptions::default().arg("--max-lag-ms", max_lag_ms));
    let mut client = node.sync_client().await;
    let mut lags = Vec::new();
    for t in 0..transactions {
        let message = Message::new(
            "lag",
            &["id"],
            usual_values(),
            (0..10).map(|i| insert(t as i64 * 10 + i)).collect(),
        );
        client.send("bench", Some(t + 1), &message).await;
        let acked = Instant::now();
        let durable = durable_at(&mut client, t + 1).await;
        lags.push((durable - acked).as_secs_f64() * 1000.0);
    }
    lags.sort_by(|a, b| a.total_cmp(b));
    let at = |q: f64| lags[((lags.len() - 1) as f64 * q).round() as usize];
    println!(
        "lag ack -> durable, --max-lag-ms {max_lag_ms}, {transactions} sequential 10-row transactions: p50 {:.0} ms, p90 {:.0} ms, max {:.0} ms",
        at(0.5),
        at(0.9),
        at(1.0)
    );
}

async fn memory(transactions: i64, rows: i64) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let low_watermark: u64 = 8 << 20;
    let node = ServeProcess::start_with(
        &dir,
        NodeOptions::default()
            .arg("--max-lag-ms", 5_000)
            .arg("--pending-bytes-low-watermark", low_watermark)
            .arg("--segment-bytes", 16 << 20),
    );
    let mut client = node.sync_client().await;
    let idle = node.rss_kib();
    let mut peak = idle;
    let mut sent = 0u64;
    for t in 0..transactions {
        let message = Message::new(
            &format!("mem{}", t % 4),
            &["id"],
            usual_values(),
            (0..rows).map(|i| insert(t * rows + i)).collect(),
        );
        sent += message.batch().get_array_memory_size() as u64;
        client.send("bench", Some(t as u64 + 1), &message).await;
        let now = node.rss_kib();
        if now.total > peak.total {
            peak = now;
        }
    }
    let started = Instant::now();
    loop {
        let now = node.rss_kib();
        if now.total > peak.total {
            peak = now;
        }
        let response = client.probe("bench").await;
        if response.durable_sequence_number == Some(transactions as u64) {
            break;
        }
        assert!(started.elapsed() < DEADLINE);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    println!(
        "memory: {} MiB of Arrow batches through an {} MiB low watermark: RSS idle {} MiB, peak {} MiB (anon {} MiB, file-backed {} MiB), after {} MiB",
        sent >> 20,
        low_watermark >> 20,
        idle.total >> 10,
        peak.total >> 10,
        peak.anon >> 10,
        peak.file >> 10,
        node.rss_kib().total >> 10
    );
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` passes nothing
    // and only needs this to build and start.
    let quick = !std::env::args().any(|a| a == "--bench");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        if quick {
            throughput(20_000).await;
            return;
        }
        throughput(1_000_000).await;
        lag(50, 40).await;
        lag(10, 40).await;
        memory(40, 50_000).await;
    });
}
