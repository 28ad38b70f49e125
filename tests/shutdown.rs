//! Shutdown and restart of the real binary: SIGTERM while clients are connected
//! makes the node stop accepting, finish in-flight puts and exit 0; a restart
//! on the same data directory finds every acknowledged transaction, no
//! transaction to abort and a WAL that verifies clean. Guards the operator's
//! path (systemd stop, Ctrl-C), which must not look like a crash; and that a
//! restart after a crash knows the column types of rows still in the WAL.

mod common;

use common::{command, inserts, key_value_schema, put, wal_verify, ServeProcess};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_cleanly_and_a_restart_finds_every_acknowledged_transaction() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let node = ServeProcess::start(&data, &["--max-lag-ms", "600000"]);
    let mut client = node.client().await;
    for sequence in 1..=5u64 {
        let range = (sequence as i64 * 10)..(sequence as i64 * 10 + 10);
        let response = put(
            &mut client,
            &command("t", "origin", Some(sequence)),
            key_value_schema(),
            vec![inserts(range)],
        )
        .await
        .expect("put");
        assert_eq!(response.memory_sequence_number, Some(sequence));
    }
    let log_path = node.log_path.clone();
    let status = node.terminate();
    assert!(status.success(), "exit status after SIGTERM: {status:?}");
    let log = std::fs::read_to_string(&log_path).unwrap_or_default();
    assert!(log.contains("stopped cleanly"), "log:\n{log}");
    let (verify, output) = wal_verify(&data);
    assert!(verify.success(), "{output}");

    let node = ServeProcess::start(&data, &["--max-lag-ms", "600000"]);
    assert_eq!(node.start_field("aborted_transactions"), "0");
    assert_eq!(node.start_field("origins"), "1");
    let mut client = node.client().await;
    let probe = put(
        &mut client,
        &command("t", "origin", None),
        key_value_schema(),
        vec![],
    )
    .await
    .expect("probe");
    assert_eq!(probe.memory_sequence_number, Some(5));
    assert!(probe.first);
}

/// After a crash, the column types of rows still only in the WAL are known
/// again before the first put: a conflicting type is refused at put time,
/// not discovered by a flush that could then never succeed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_type_conflict_with_unflushed_rows_is_refused_after_a_restart() {
    use std::sync::Arc;

    use arrow::array::{ArrayRef, Int64Array, RecordBatch};
    use arrow::datatypes::{DataType, Field, Schema};

    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let node = ServeProcess::start(&data, &["--max-lag-ms", "600000"]);
    let mut client = node.client().await;
    let response = put(
        &mut client,
        &command("t", "origin", Some(1)),
        key_value_schema(),
        vec![inserts(0..3)],
    )
    .await
    .expect("put");
    assert_eq!(response.memory_sequence_number, Some(1));
    node.kill();

    let node = ServeProcess::start(&data, &["--max-lag-ms", "600000"]);
    let mut client = node.client().await;
    // `value` was Utf8 in the WAL; now it comes as Int64.
    let schema = Arc::new(Schema::new(vec![
        Field::new("old_id", DataType::Int64, true),
        Field::new("new_id", DataType::Int64, true),
        Field::new("value", DataType::Int64, true),
    ]));
    let batch = RecordBatch::try_new(
        schema.clone(),
        vec![
            Arc::new(Int64Array::from(vec![None::<i64>])) as ArrayRef,
            Arc::new(Int64Array::from(vec![Some(9)])) as ArrayRef,
            Arc::new(Int64Array::from(vec![Some(9)])) as ArrayRef,
        ],
    )
    .expect("batch");
    let status = put(
        &mut client,
        &command("t", "origin", Some(2)),
        schema,
        vec![batch],
    )
    .await
    .expect_err("a type conflict with the WAL's rows");
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status}");
    assert!(status.message().contains("value"), "{status}");
}
