//! Graceful shutdown of the real binary: SIGTERM while clients are connected
//! makes the node stop accepting, finish in-flight puts and exit 0; a restart
//! on the same data directory finds every acknowledged transaction, no
//! transaction to abort and a WAL that verifies clean. Guards the operator's
//! path (systemd stop, Ctrl-C), which must not look like a crash.

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
