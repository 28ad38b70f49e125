//! Crash and restart of the real binary. Several origins put transactions
//! (some closed by their last data message, one by an empty message), some
//! leave a transaction open; the node is SIGKILLed right after the last
//! acknowledgement and restarted on the same data directory. Guards the
//! promise of an acknowledgement: every origin's memory sequence is what was
//! last acknowledged, `first = true` tells the client about the restart, each
//! open transaction is aborted by a durable abort frame (never applied, not
//! even after a later restart), its resend is applied exactly once, and the
//! WAL verifies clean after each crash. Flushing is held off with a huge
//! `--max-lag-ms` until the last restart, which flushes everything and
//! checks the table's rows.

mod common;

use std::collections::{BTreeSet, HashMap};

use arrow::array::Int64Array;
use serde_json::Value;

use common::*;
use flightlog::identity::TableId;
use flightlog::lake::read_table;

const TABLE: &str = "t";
const NO_FLUSH: [&str; 2] = ["--max-lag-ms", "3600000"];

/// A data frame of a `wal dump --json`.
struct DataFrame {
    lsn: u64,
    origin: String,
    sequence: Option<u64>,
    rows: u64,
}

fn data_frames(dump: &[Value]) -> Vec<DataFrame> {
    frames_of_kind(dump, "data")
        .into_iter()
        .map(|frame| DataFrame {
            lsn: frame["lsn"].as_u64().expect("lsn"),
            origin: frame["origin"].as_str().expect("origin").to_string(),
            sequence: frame["sequence"].as_u64(),
            rows: frame["rows"].as_u64().expect("rows"),
        })
        .collect()
}

/// Per origin, the inclusive Lsn ranges its abort frames discard.
fn aborted_ranges(dump: &[Value]) -> HashMap<String, Vec<(u64, u64)>> {
    let mut ranges: HashMap<String, Vec<(u64, u64)>> = HashMap::new();
    for frame in frames_of_kind(dump, "abort") {
        let lsns = &frame["aborted_lsns"];
        ranges
            .entry(frame["origin"].as_str().expect("origin").to_string())
            .or_default()
            .push((
                lsns[0].as_u64().expect("first"),
                lsns[1].as_u64().expect("last"),
            ));
    }
    ranges
}

fn is_aborted(ranges: &HashMap<String, Vec<(u64, u64)>>, frame: &DataFrame) -> bool {
    ranges.get(&frame.origin).is_some_and(|ranges| {
        ranges
            .iter()
            .any(|(first, last)| (*first..=*last).contains(&frame.lsn))
    })
}

fn assert_wal_verifies(data: &std::path::Path) {
    let (status, out) = wal_verify(data);
    assert!(status.success(), "wal verify failed: {out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_keeps_acknowledged_transactions_and_aborts_open_ones() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");

    // --- Run 1: acknowledged puts, then SIGKILL. ---
    let node = ServeProcess::start(&data, &NO_FLUSH);
    let mut client = node.client().await;
    // a: two one-message transactions.
    put_inserts(&mut client, &command(TABLE, "a", Some(1)), 0..10).await;
    put_inserts(&mut client, &command(TABLE, "a", Some(2)), 10..20).await;
    // b: a two-message transaction, then an open one of two messages.
    put_inserts(&mut client, &command(TABLE, "b", None), 100..110).await;
    put_inserts(&mut client, &command(TABLE, "b", Some(10)), 110..120).await;
    put_inserts(&mut client, &command(TABLE, "b", None), 120..130).await;
    put_inserts(&mut client, &command(TABLE, "b", None), 130..140).await;
    // c: a transaction closed by an empty message, then an open one that
    // is never resent.
    put_inserts(&mut client, &command(TABLE, "c", None), 200..210).await;
    put_inserts(&mut client, &command(TABLE, "c", Some(7)), 0..0).await;
    put_inserts(&mut client, &command(TABLE, "c", None), 210..220).await;
    // d: only an open transaction.
    let last = put_inserts(&mut client, &command(TABLE, "d", None), 300..310).await;
    assert!(last.accepted);
    node.kill();
    assert_wal_verifies(&data);

    // --- Run 2: recovery. ---
    let node = ServeProcess::start(&data, &NO_FLUSH);
    assert_eq!(node.start_field("aborted_transactions"), "3");
    let mut client = node.client().await;
    for (origin, acknowledged) in [("a", Some(2)), ("b", Some(10)), ("c", Some(7)), ("d", None)] {
        let numbers = probe(&mut client, TABLE, origin).await;
        assert_eq!(
            numbers.memory_sequence_number, acknowledged,
            "origin {origin}"
        );
        assert!(
            numbers.first,
            "origin {origin}: first response after restart"
        );
        assert!(!probe(&mut client, TABLE, origin).await.first);
    }

    let dump = wal_dump(&data);
    let frames = data_frames(&dump);
    let aborted = aborted_ranges(&dump);
    assert_eq!(
        aborted.keys().cloned().collect::<BTreeSet<_>>(),
        BTreeSet::from(["b".to_string(), "c".to_string(), "d".to_string()]),
        "one abort per open transaction"
    );
    for (origin, sequence) in [("a", 1), ("a", 2), ("b", 10), ("c", 7)] {
        assert!(
            frames
                .iter()
                .any(|f| f.origin == origin && f.sequence == Some(sequence)),
            "the closing frame of {origin}/{sequence} is in the WAL"
        );
    }
    // Every acknowledged change is in a frame no abort covers; every change
    // of an open transaction is in an aborted frame.
    let rows = |origin: &str, aborted_wanted: bool| -> u64 {
        frames
            .iter()
            .filter(|f| f.origin == origin && is_aborted(&aborted, f) == aborted_wanted)
            .map(|f| f.rows)
            .sum()
    };
    assert_eq!(
        [
            rows("a", false),
            rows("b", false),
            rows("c", false),
            rows("d", false)
        ],
        [20, 20, 10, 0],
        "rows of acknowledged transactions"
    );
    assert_eq!(
        [
            rows("a", true),
            rows("b", true),
            rows("c", true),
            rows("d", true)
        ],
        [0, 20, 10, 10],
        "rows of aborted transactions"
    );

    // Resends from the acknowledged sequence: b and d (c gives up on its).
    put_inserts(&mut client, &command(TABLE, "b", None), 120..130).await;
    let b = put_inserts(&mut client, &command(TABLE, "b", Some(11)), 130..140).await;
    assert_eq!(b.memory_sequence_number, Some(11));
    let d = put_inserts(&mut client, &command(TABLE, "d", Some(1)), 300..310).await;
    assert_eq!(d.memory_sequence_number, Some(1));
    node.kill();
    assert_wal_verifies(&data);

    // --- Run 3: nothing open, the aborted frames stay aborted. ---
    let node = ServeProcess::start(&data, &NO_FLUSH);
    assert_eq!(node.start_field("aborted_transactions"), "0");
    let dump = wal_dump(&data);
    let aborted = aborted_ranges(&dump);
    let live_frames = data_frames(&dump)
        .iter()
        .filter(|f| f.rows > 0 && !is_aborted(&aborted, f))
        .count();
    // a: 2, b: 2 + 2 resent, c: 1, d: 1 resent.
    assert_eq!(live_frames, 8);
    assert_eq!(node.start_field("pending_frames"), live_frames.to_string());
    let mut client = node.client().await;
    for (origin, acknowledged) in [("a", 2), ("b", 11), ("c", 7), ("d", 1)] {
        let numbers = probe(&mut client, TABLE, origin).await;
        assert_eq!(numbers.memory_sequence_number, Some(acknowledged));
    }
    node.kill();

    // --- Run 4: flush everything; the table holds each change once. ---
    let node = ServeProcess::start(&data, &["--max-lag-ms", "0"]);
    let mut client = node.client().await;
    for (origin, acknowledged) in [("a", 2), ("b", 11), ("c", 7), ("d", 1)] {
        // Bounded poll: the flusher runs on its own schedule.
        let deadline = tokio::time::Instant::now() + DEADLINE;
        loop {
            let numbers = probe(&mut client, TABLE, origin).await;
            if numbers.durable_sequence_number == Some(acknowledged) {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "origin {origin} never became durable at {acknowledged}: {numbers:?}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }
    node.kill();
    let root = url::Url::parse(&format!("file://{}/lake", data.display())).expect("lake url");
    let location = TableId::parse(root.as_str(), &HashMap::new(), TABLE).expect("table location");
    let batches = read_table(&location).await.expect("read the table");
    let mut ids: Vec<i64> = Vec::new();
    for batch in &batches {
        let column = batch
            .column_by_name("id")
            .expect("id column")
            .as_any()
            .downcast_ref::<Int64Array>()
            .expect("id is Int64");
        ids.extend(column.iter().map(|id| id.expect("id is never null")));
    }
    ids.sort_unstable();
    let expected: Vec<i64> = (0..20)
        .chain(100..140)
        .chain(200..210)
        .chain(300..310)
        .collect();
    assert_eq!(
        ids, expected,
        "each acknowledged change once; c's aborted 210..220 never applied"
    );
}
