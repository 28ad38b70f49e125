//! The lake stays healthy under many small transactions: a table fed by
//! one-row transactions, each flushed on its own, ends with a handful of
//! data files (compaction, `dataChange = false`), checkpoints and
//! `_last_checkpoint` every few commits, files removed by compaction are
//! vacuumed (retention 0 here), the table stays at protocol (1,2) with
//! column statistics, and every row is there once.
//!
//! `FLIGHTLOG_OPS_TRANSACTIONS` sets the number of transactions: default
//! 300 (~50 s on 2 cores, one flush each); 1000, the case, takes
//! ~3 min here and ended with 1 active file (12 parquet files on disk).

mod common;

use std::path::Path;

use common::{command, put_inserts, table_rows, wait_durable, ServeProcess};

fn transactions() -> u64 {
    std::env::var("FLIGHTLOG_OPS_TRANSACTIONS")
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(300)
}

/// Every commit file of the table's log, parsed (one JSON action per line).
fn commits(table_dir: &Path) -> Vec<Vec<serde_json::Value>> {
    let mut names: Vec<_> = std::fs::read_dir(table_dir.join("_delta_log"))
        .expect("the table's log")
        .map(|entry| entry.expect("log entry").path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "json"))
        .collect();
    names.sort();
    names
        .iter()
        .map(|path| {
            std::fs::read_to_string(path)
                .expect("commit file")
                .lines()
                .map(|line| serde_json::from_str(line).expect("a JSON action"))
                .collect()
        })
        .collect()
}

fn parquet_files_on_disk(table_dir: &Path) -> usize {
    std::fs::read_dir(table_dir)
        .expect("table dir")
        .filter_map(Result::ok)
        .filter(|entry| entry.path().extension().is_some_and(|ext| ext == "parquet"))
        .count()
}

// terminate() blocks a thread; the client needs another to close.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_row_transactions_end_as_a_handful_of_files_at_protocol_1_2() {
    let count = transactions();
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("node");
    let node = ServeProcess::start(
        &data,
        &[
            "--max-lag-ms",
            "1",
            "--checkpoint-interval-commits",
            "10",
            "--vacuum-retention-hours",
            "0",
        ],
    );
    let mut client = node.client().await;
    let path = "ops/small";
    for sequence in 1..=count {
        let id = sequence as i64;
        put_inserts(
            &mut client,
            &command(path, "small-origin", Some(sequence)),
            id..id + 1,
        )
        .await;
        // Each transaction its own flush: the worst case for file counts.
        wait_durable(&mut client, path, "small-origin", sequence).await;
    }
    let rows = table_rows(&data, path).await;
    let expected: Vec<(i64, Option<String>)> = (1..=count as i64)
        .map(|id| (id, Some(format!("v{id}"))))
        .collect();
    assert_eq!(rows, expected, "every row once");

    let lake = std::path::absolute(data.join("lake")).expect("absolute");
    let root = url::Url::from_directory_path(&lake).expect("file url");
    let table = flightlog::identity::TableId::parse(root.as_str(), &Default::default(), path)
        .expect("table id");
    let files = flightlog::lake::maintenance::data_files(&table)
        .await
        .expect("list files");
    let table_dir = lake.join(path);
    let log = commits(&table_dir);
    let flush_commits = log
        .iter()
        .filter(|actions| actions.iter().any(|a| a.get("txn").is_some()))
        .count();
    println!(
        "{count} transactions: {flush_commits} flush commits, {} active files, {} parquet files on disk",
        files.len(),
        parquet_files_on_disk(&table_dir)
    );
    assert!(
        flush_commits as u64 >= count / 2,
        "the transactions were flushed separately ({flush_commits} commits)"
    );
    assert!(
        files.len() <= 15,
        "a handful of files, not {}: {files:?}",
        files.len()
    );

    // Compaction commits: OPTIMIZE, dataChange = false, statistics kept.
    let optimize: Vec<&Vec<serde_json::Value>> = log
        .iter()
        .filter(|actions| {
            actions
                .iter()
                .any(|a| a["commitInfo"]["operation"] == "OPTIMIZE")
        })
        .collect();
    assert!(!optimize.is_empty(), "no compaction commit in the log");
    for actions in &optimize {
        for action in actions.iter() {
            for kind in ["add", "remove"] {
                if let Some(file) = action.get(kind) {
                    assert_eq!(file["dataChange"], false, "{action}");
                }
            }
            if let Some(add) = action.get("add") {
                let stats: serde_json::Value =
                    serde_json::from_str(add["stats"].as_str().expect("stats"))
                        .expect("stats JSON");
                assert!(
                    stats["numRecords"].as_u64().is_some_and(|n| n > 0),
                    "{stats}"
                );
                assert!(
                    stats["minValues"]["id"].is_number(),
                    "key statistics: {stats}"
                );
            }
        }
    }
    // Protocol (1,2), never raised.
    for action in log.iter().flatten() {
        if let Some(protocol) = action.get("protocol") {
            assert_eq!(protocol["minReaderVersion"], 1, "{protocol}");
            assert_eq!(protocol["minWriterVersion"], 2, "{protocol}");
        }
    }
    // Checkpoints.
    let last: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(table_dir.join("_delta_log/_last_checkpoint"))
            .expect("_last_checkpoint"),
    )
    .expect("_last_checkpoint JSON");
    assert!(last["version"].as_u64().is_some_and(|v| v >= 10), "{last}");
    // Vacuum (retention 0): files removed by compaction are gone, but for
    // those of the last compaction (vacuumed at the next run).
    let on_disk = parquet_files_on_disk(&table_dir);
    assert!(
        on_disk <= files.len() + 20,
        "{on_disk} parquet files on disk for {} active",
        files.len()
    );
    drop(client);
    assert!(node.terminate().success());
}
