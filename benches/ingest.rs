//! Ingest throughput and acknowledgement latency through Flight `do_put`.
//!
//! For N ∈ {1, 4, 16} concurrent `FlightClient`s (one origin each, one shared
//! table), each sends M one-message transactions of R inserted rows to an
//! in-process node whose data directory is under the cargo target dir (a real
//! disk, not tmpfs: every acknowledgement waits for an fdatasync). No flusher
//! runs, so this measures the ingest path alone: decode, validate, WAL group
//! commit, ack. Prints puts/s, rows/s, MB/s (Arrow bytes of the batches
//! sent), ack latency p50/p99, and WAL fsyncs per put (group commit).
//!
//! `cargo bench --profile dev --bench ingest`. Knobs (environment):
//! `FLIGHTLOG_BENCH_SECONDS` runs each N for that long instead of M
//! transactions; `FLIGHTLOG_BENCH_TRANSACTIONS` (M, default 100) and
//! `FLIGHTLOG_BENCH_ROWS` (R, default 100); `FLIGHTLOG_BENCH_CLIENTS`
//! (comma-separated N, default `1,4,16,64`); `FLIGHTLOG_BENCH_CLIENT_NODELAY=0`
//! turns `TCP_NODELAY` off on the clients' sockets (to measure Nagle's part).

#[path = "../tests/common/mod.rs"]
mod common;

use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::{command, inserts, key_value_schema, put, InProcessNode};

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(default)
}

/// When a client stops: after M transactions or at a deadline.
#[derive(Clone, Copy)]
enum Stop {
    Transactions(u64),
    Deadline(Instant),
}

struct ClientResult {
    latencies: Vec<Duration>,
    rows: u64,
    bytes: u64,
}

async fn run_client(
    addr: std::net::SocketAddr,
    origin: usize,
    rows: u64,
    stop: Stop,
) -> ClientResult {
    let nodelay = std::env::var("FLIGHTLOG_BENCH_CLIENT_NODELAY").map_or(true, |v| v != "0");
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .expect("valid endpoint")
        .tcp_nodelay(nodelay)
        .connect()
        .await
        .expect("connect to the node");
    let mut client = arrow_flight::FlightClient::new(channel);
    let name = format!("bench-{origin}");
    let base = origin as i64 * 1_000_000_000;
    let mut result = ClientResult {
        latencies: Vec::new(),
        rows: 0,
        bytes: 0,
    };
    for sequence in 1u64.. {
        let done = match stop {
            Stop::Transactions(count) => sequence > count,
            Stop::Deadline(deadline) => Instant::now() >= deadline,
        };
        if done {
            break;
        }
        let start = base + (sequence as i64) * rows as i64;
        let batch = inserts(start..start + rows as i64);
        let bytes = batch.get_array_memory_size() as u64;
        let sent = Instant::now();
        let response = put(
            &mut client,
            &command("bench", &name, Some(sequence)),
            key_value_schema(),
            vec![batch],
        )
        .await
        .expect("put accepted");
        result.latencies.push(sent.elapsed());
        assert!(response.accepted, "back-pressure during the bench");
        result.rows += rows;
        result.bytes += bytes;
    }
    result
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

async fn bench(clients: usize, rows: u64, transactions: u64, seconds: Option<u64>) -> String {
    let parent = Path::new(env!("CARGO_TARGET_TMPDIR"));
    let node = InProcessNode::start_in(Some(parent), |config| {
        config.max_lag_ms = u64::MAX / 4;
    })
    .await;
    let syncs_before = node.node.wal().metrics().syncs.load(Ordering::Relaxed);
    let stop = match seconds {
        Some(seconds) => Stop::Deadline(Instant::now() + Duration::from_secs(seconds)),
        None => Stop::Transactions(transactions),
    };
    let started = Instant::now();
    let tasks: Vec<_> = (0..clients)
        .map(|origin| tokio::spawn(run_client(node.addr, origin, rows, stop)))
        .collect();
    let mut latencies = Vec::new();
    let (mut total_rows, mut total_bytes) = (0, 0);
    for task in tasks {
        let result = task.await.expect("client task");
        latencies.extend(result.latencies);
        total_rows += result.rows;
        total_bytes += result.bytes;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let syncs = node.node.wal().metrics().syncs.load(Ordering::Relaxed) - syncs_before;
    latencies.sort_unstable();
    let puts = latencies.len() as f64;
    format!(
        "| {clients:>2} | {rows:>4} | {puts:>6} | {:>9.0} | {:>10.0} | {:>6.2} | {:>8.2} | {:>8.2} | {:>5.2} |",
        puts / elapsed,
        total_rows as f64 / elapsed,
        total_bytes as f64 / elapsed / 1e6,
        percentile(&latencies, 0.50).as_secs_f64() * 1e3,
        percentile(&latencies, 0.99).as_secs_f64() * 1e3,
        syncs as f64 / puts.max(1.0),
    )
}

fn main() {
    // `cargo bench` passes `--bench`; nothing else to parse.
    let rows = env_u64("FLIGHTLOG_BENCH_ROWS", 100);
    let transactions = env_u64("FLIGHTLOG_BENCH_TRANSACTIONS", 100);
    let seconds = std::env::var("FLIGHTLOG_BENCH_SECONDS")
        .ok()
        .and_then(|value| value.parse().ok());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    println!(
        "ingest: one-message transactions of {rows} rows, {}",
        match seconds {
            Some(seconds) => format!("{seconds} s per client count"),
            None => format!("{transactions} per client"),
        }
    );
    println!("| clients | rows/put | puts | puts/s | rows/s | MB/s | ack p50 ms | ack p99 ms | fsyncs/put |");
    println!("|---|---|---|---|---|---|---|---|---|");
    let clients: Vec<usize> = std::env::var("FLIGHTLOG_BENCH_CLIENTS")
        .unwrap_or_else(|_| "1,4,16,64".to_owned())
        .split(',')
        .filter_map(|n| n.trim().parse().ok())
        .collect();
    for clients in clients {
        let line = runtime.block_on(bench(clients, rows, transactions, seconds));
        println!("{line}");
    }
}
