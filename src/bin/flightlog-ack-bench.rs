//! Ack-path load client for a running `flightlog serve` (used by
//! `benches/compare.py`): N concurrent Flight clients, one origin each, send
//! one-message transactions of R inserted rows for S seconds; prints one
//! markdown row: clients, rows/put, puts, puts/s, rows/s, ack p50/p99 ms,
//! WAL fsyncs per put (from the node's `metrics` action).
//!
//! `flightlog-ack-bench <addr> <clients> <seconds> [rows] [nodelay: 1|0]`
//!
//! A plain binary rather than a criterion bench so that it builds with the
//! release binary's dependency set (a `cargo bench` build needs the
//! dev-dependencies' features and rebuilds most of the tree).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::{ArrayRef, Int64Array, StringArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::record_batch::RecordBatch;
use arrow_flight::encode::FlightDataEncoderBuilder;
use arrow_flight::{Action, FlightClient, FlightDescriptor};
use futures::TryStreamExt;
use prost::Message;

use flightlog::flight::Any;
use flightlog::proto::sync::{ColumnDescriptor, ColumnRole, DataSyncCommand, DataSyncResponse};

type Error = Box<dyn std::error::Error + Send + Sync>;

fn schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("old_id", DataType::Int64, true),
        Field::new("new_id", DataType::Int64, true),
        Field::new("value", DataType::Utf8, true),
    ]))
}

fn command(origin: &str, sequence: u64) -> bytes::Bytes {
    let descriptor = |role: ColumnRole, name: &str| ColumnDescriptor {
        role: role as i32,
        name: name.to_owned(),
    };
    let command = DataSyncCommand {
        path: "ackbench".to_owned(),
        store: None,
        column_descriptors: vec![
            descriptor(ColumnRole::OldPk, "id"),
            descriptor(ColumnRole::NewPk, "id"),
            descriptor(ColumnRole::Value, "value"),
        ],
        origin: origin.to_owned(),
        sequence_number: Some(sequence),
        format: 0,
    };
    Any {
        type_url: "DataSyncCommand".to_owned(),
        value: command.encode_to_vec(),
    }
    .encode_to_vec()
    .into()
}

fn inserts(start: i64, rows: i64) -> Result<RecordBatch, Error> {
    let ids = start..start + rows;
    let old: Int64Array = ids.clone().map(|_| None::<i64>).collect();
    let new: Int64Array = ids.clone().map(Some).collect();
    let value: StringArray = ids.map(|id| Some(format!("v{id}"))).collect();
    let columns = vec![
        Arc::new(old) as ArrayRef,
        Arc::new(new) as ArrayRef,
        Arc::new(value) as ArrayRef,
    ];
    Ok(RecordBatch::try_new(schema(), columns)?)
}

async fn connect(addr: SocketAddr, nodelay: bool) -> Result<FlightClient, Error> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
        .tcp_nodelay(nodelay)
        .connect()
        .await?;
    Ok(FlightClient::new(channel))
}

async fn client(
    addr: SocketAddr,
    origin: usize,
    rows: i64,
    deadline: Instant,
    nodelay: bool,
) -> Result<Vec<Duration>, Error> {
    let mut client = connect(addr, nodelay).await?;
    let name = format!("ack-{origin}-{}", std::process::id());
    let base = origin as i64 * 1_000_000_000;
    let mut latencies = Vec::new();
    for sequence in 1u64.. {
        if Instant::now() >= deadline {
            break;
        }
        let batch = inserts(base + sequence as i64 * rows, rows)?;
        let sent = Instant::now();
        let stream = FlightDataEncoderBuilder::new()
            .with_flight_descriptor(Some(FlightDescriptor::new_cmd(command(&name, sequence))))
            .with_schema(schema())
            .build(futures::stream::iter([Ok(batch)]));
        let results: Vec<_> = client.do_put(stream).await?.try_collect().await?;
        latencies.push(sent.elapsed());
        let metadata = results.first().ok_or("no PutResult")?;
        let response = DataSyncResponse::decode(metadata.app_metadata.as_ref())?;
        if !response.accepted {
            return Err("back-pressure (accepted = false) during the bench".into());
        }
    }
    Ok(latencies)
}

async fn fsyncs(addr: SocketAddr) -> Result<u64, Error> {
    let mut client = connect(addr, true).await?;
    let results: Vec<bytes::Bytes> = client
        .do_action(Action::new("metrics", ""))
        .await?
        .try_collect()
        .await?;
    let body = results.first().ok_or("no metrics")?;
    let json: serde_json::Value = serde_json::from_slice(body)?;
    json["wal"]["fsyncs"]
        .as_u64()
        .ok_or_else(|| "no wal.fsyncs".into())
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

async fn run(
    addr: SocketAddr,
    clients: usize,
    seconds: u64,
    rows: i64,
    nodelay: bool,
) -> Result<(), Error> {
    // One put first: concurrent first puts to a table that does not exist
    // yet can be refused by the local store check (a race, reported in
    // BENCHMARKS.md), and the bench is about acks, not table creation.
    let mut warm = connect(addr, nodelay).await?;
    let stream = FlightDataEncoderBuilder::new()
        .with_flight_descriptor(Some(FlightDescriptor::new_cmd(command("ack-warmup", 1))))
        .with_schema(schema())
        .build(futures::stream::iter([Ok(inserts(-rows, rows)?)]));
    let _: Vec<_> = warm.do_put(stream).await?.try_collect().await?;
    let syncs_before = fsyncs(addr).await?;
    let started = Instant::now();
    let deadline = started + Duration::from_secs(seconds);
    let tasks: Vec<_> = (0..clients)
        .map(|origin| tokio::spawn(client(addr, origin, rows, deadline, nodelay)))
        .collect();
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await??);
    }
    let elapsed = started.elapsed().as_secs_f64();
    let syncs = fsyncs(addr).await? - syncs_before;
    latencies.sort_unstable();
    let puts = latencies.len() as f64;
    println!(
        "| {clients:>2} | {rows:>4} | {puts:>6} | {:>9.0} | {:>10.0} | {:>8.2} | {:>8.2} | {:>5.2} |",
        puts / elapsed,
        puts * rows as f64 / elapsed,
        percentile(&latencies, 0.50).as_secs_f64() * 1e3,
        percentile(&latencies, 0.99).as_secs_f64() * 1e3,
        syncs as f64 / puts.max(1.0),
    );
    Ok(())
}

fn main() -> Result<(), Error> {
    let args: Vec<String> = std::env::args().collect();
    let usage = "usage: flightlog-ack-bench <addr> <clients> <seconds> [rows] [nodelay 1|0]";
    let addr: SocketAddr = args.get(1).ok_or(usage)?.parse()?;
    let clients: usize = args.get(2).ok_or(usage)?.parse()?;
    let seconds: u64 = args.get(3).ok_or(usage)?.parse()?;
    let rows: i64 = args.get(4).map_or(Ok(100), |r| r.parse())?;
    let nodelay = args.get(5).is_none_or(|n| n != "0");
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(run(addr, clients, seconds, rows, nodelay))
}
