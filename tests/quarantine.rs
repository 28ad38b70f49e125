//! A table that can no longer be flushed, through the real binary: it is
//! quarantined (metrics, `FailedPrecondition` on new puts, other tables go
//! on), its acknowledged transactions stay in the WAL and are never reported
//! durable, and `flightlog wal discard-table` is the way out that moves
//! durability on without hand-editing the WAL.
//!
//! The table is broken the way an operator would break it: another writer
//! (the Python `deltalake` package) turns on change data feed after the
//! node created the table, a feature the node cannot write. Skipped with the
//! reason printed when no Python with `deltalake` can be had.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::python::{python_with, DELTALAKE};
use common::{command, metrics, put_inserts, table_rows, wait_durable, ServeProcess};

const ARGS: &[&str] = &["--max-lag-ms", "20", "--quarantine-retry-ms", "200"];

/// Turns on change data feed in the Delta table at `table` with another
/// writer, as an operator might.
fn enable_change_data_feed(python: &Path, table: &Path) {
    let code = "import sys\nfrom deltalake import DeltaTable\n\
                DeltaTable(sys.argv[1]).alter.set_table_properties({'delta.enableChangeDataFeed': 'true'})\n";
    let output = Command::new(python)
        .args(["-c", code])
        .arg(table)
        .output()
        .expect("run python");
    assert!(
        output.status.success(),
        "alter the table with deltalake: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

fn discard_table(data_dir: &Path, table: &str, yes: bool) -> (bool, String) {
    let mut discard = Command::new(common::binary());
    discard
        .args(["wal", "discard-table", "--data-dir"])
        .arg(data_dir)
        .args(["--table", table]);
    if yes {
        discard.arg("--yes");
    }
    let output = discard.output().expect("run wal discard-table");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_that_cannot_flush_is_quarantined_and_can_be_discarded() {
    let python = match python_with(&[DELTALAKE]) {
        Ok(python) => python,
        Err(reason) => {
            println!("skipped: no Python with deltalake: {reason}");
            return;
        }
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let node = ServeProcess::start(&data, ARGS);
    let mut client = node.client().await;

    // The node creates `broken`; then another writer turns on a feature the
    // node cannot write. The node learnt the table at the first put, so the
    // next put is acknowledged and only its flush finds out.
    put_inserts(&mut client, &command("broken", "a", Some(1)), 0..10).await;
    wait_durable(&mut client, "broken", "a", 1).await;
    enable_change_data_feed(&python, &data.join("lake/broken"));
    let acknowledged = put_inserts(&mut client, &command("broken", "a", Some(2)), 10..20).await;
    assert_eq!(acknowledged.memory_sequence_number, Some(2));
    // A later transaction of another origin, to another table.
    put_inserts(&mut client, &command("healthy", "b", Some(1)), 0..5).await;

    let deadline = tokio::time::Instant::now() + common::DEADLINE;
    let quarantined = loop {
        let metrics = metrics(&mut client).await;
        let list = metrics["flush"]["quarantined"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        if !list.is_empty() {
            break list;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for the table to be quarantined: {metrics}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(quarantined.len(), 1, "{quarantined:?}");
    let table = quarantined[0]["table"]
        .as_str()
        .expect("table name")
        .to_owned();
    assert!(table.ends_with("/lake/broken"), "{table}");
    let reason = quarantined[0]["reason"].as_str().unwrap_or_default();
    assert!(
        reason.to_lowercase().contains("change data feed")
            || reason.contains("enableChangeDataFeed"),
        "the reason names the feature: {reason}"
    );

    // Acknowledged, never reported durable: not `a`'s second transaction,
    // and not `b`'s, which came after it (durable means "with every earlier
    // transaction of any origin").
    let a = common::probe(&mut client, "", "a").await;
    assert_eq!(a.memory_sequence_number, Some(2));
    assert_eq!(a.durable_sequence_number, Some(1), "{a:?}");
    let b = common::probe(&mut client, "", "b").await;
    assert_eq!(b.memory_sequence_number, Some(1));
    assert_eq!(b.durable_sequence_number, None, "{b:?}");

    // New puts to the quarantined table are refused, naming it; others go on.
    let refused = common::put(
        &mut client,
        &command("broken", "c", Some(1)),
        common::key_value_schema(),
        vec![common::inserts(100..101)],
    )
    .await
    .expect_err("a put to a quarantined table is refused");
    assert_eq!(refused.code(), tonic::Code::FailedPrecondition, "{refused}");
    assert!(refused.message().contains("broken") && refused.message().contains("quarantined"));
    let accepted = put_inserts(&mut client, &command("healthy", "b", Some(2)), 5..10).await;
    assert_eq!(accepted.memory_sequence_number, Some(2));

    // Still quarantined after more retries, and nothing was lost meanwhile.
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(table_rows(&data, "broken").await.len(), 10);
    let status = node.terminate();
    assert!(status.success(), "clean shutdown: {status}");

    // The way out: a dry run lists the transactions and changes nothing ...
    let (ok, listing) = discard_table(&data, &table, false);
    assert!(ok, "{listing}");
    assert!(listing.contains("origin \"a\" sequence 2"), "{listing}");
    assert!(listing.contains("--yes"), "{listing}");
    let (ok, unknown) = discard_table(&data, "file:///nowhere/t", true);
    assert!(!ok, "an unknown table is an error: {unknown}");
    assert!(
        unknown.contains(&table),
        "lists the pending tables: {unknown}"
    );
    // ... and `--yes` discards them.
    let (ok, discarded) = discard_table(&data, &table, true);
    assert!(ok, "{discarded}");

    let node = ServeProcess::start(&data, ARGS);
    let mut client = node.client().await;
    wait_durable(&mut client, "healthy", "b", 2).await;
    let a = common::probe(&mut client, "", "a").await;
    assert_eq!(a.durable_sequence_number, Some(2), "{a:?}");
    assert_eq!(
        table_rows(&data, "healthy").await.len(),
        10,
        "the other table's rows are all there"
    );
    let broken = table_rows(&data, "broken").await;
    assert_eq!(
        broken.iter().map(|(id, _)| *id).collect::<Vec<_>>(),
        (0..10).collect::<Vec<_>>(),
        "the discarded transaction is not in the table"
    );
    let metrics = metrics(&mut client).await;
    assert_eq!(metrics["pending"]["transactions"], 0, "{metrics}");
    assert!(metrics["flush"]["quarantined"]
        .as_array()
        .is_some_and(|list| list.is_empty()));
    drop(client);
    let status = node.terminate();
    assert!(status.success(), "clean shutdown: {status}");
    let (verified, report) = common::wal_verify(&data);
    assert!(verified.success(), "{report}");
}
