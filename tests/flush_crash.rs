//! Crashes around a flush: the real binary is started with a crash point
//! armed (`FLIGHTLOG_FAILPOINT` = after the Parquet write, after the Delta
//! commit, after the WAL truncation) or is SIGKILLed while puts stream in and
//! flushes run. It is then restarted without the crash point on the same
//! data directory; the client resends what was not acknowledged, as CDC
//! clients do, and once the durable sequence reaches the last transaction
//! every table must equal the model row by row: no acknowledged change lost,
//! none applied twice.

#![allow(clippy::unwrap_used)]

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use common::model::*;
use common::{NodeOptions, ServeProcess};

const TABLES: [&str; 2] = ["crash/a", "crash/b"];
const SEGMENT_BYTES: u64 = 65536;

fn options() -> NodeOptions {
    NodeOptions::default().arg("--segment-bytes", SEGMENT_BYTES)
}

async fn assert_tables(model: &Model, dir: &std::path::Path) {
    for table in TABLES {
        model
            .assert_table(table, &lake_table(dir, table), &["id"])
            .await;
    }
}

/// Restarts without a crash point, resends every transaction the node does
/// not have, waits until all are durable and compares with the model; then
/// once more after a clean restart.
async fn recover_and_compare(dir: &std::path::Path, model: &Model, transactions: &[Transaction]) {
    let last = transactions.last().unwrap().sequence;
    let node = ServeProcess::start_with(dir, options());
    let mut client = node.sync_client().await;
    let response = client.probe("pg").await;
    assert!(response.first);
    let memory = response.memory_sequence_number.unwrap_or(0);
    for transaction in transactions.iter().filter(|t| t.sequence > memory) {
        client.send_transaction("pg", transaction).await.unwrap();
    }
    node.wait_durable(&mut client, "pg", last).await;
    assert_tables(model, dir).await;
    assert!(node.terminate().success());

    let node = ServeProcess::start_with(dir, options());
    let mut client = node.sync_client().await;
    let response = client.probe("pg").await;
    assert_eq!(response.memory_sequence_number, Some(last));
    assert_eq!(response.durable_sequence_number, Some(last));
    assert_tables(model, dir).await;
}

async fn crash_at(point: &str) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let mut model = Model::default();
    let mut rng = Rng::new(point.len() as u64 * 7919);
    let mut transactions = generate_transactions(&mut model, &mut rng, &TABLES, 1, 5, 40);

    // Tables with rows in them, flushed without a crash point.
    let node = ServeProcess::start_with(&dir, options());
    let mut client = node.sync_client().await;
    for transaction in &transactions {
        client.send_transaction("pg", transaction).await.unwrap();
    }
    node.wait_durable(&mut client, "pg", 5).await;
    assert!(node.terminate().success());

    // Inserts, updates, key changes and deletes until the flush crashes.
    let more = generate_transactions(&mut model, &mut rng, &TABLES, 6, 60, 40);
    transactions.extend(more.iter().cloned());
    let mut node = ServeProcess::start_with(&dir, options().env("FLIGHTLOG_FAILPOINT", point));
    let mut client = node.sync_client().await;
    let mut acknowledged = 5;
    for transaction in &more {
        match client.send_transaction("pg", transaction).await {
            Ok(response) => {
                assert_eq!(response.memory_sequence_number, Some(transaction.sequence));
                acknowledged = transaction.sequence;
            }
            Err(_) => break,
        }
    }
    let status = node.wait_exit();
    assert!(!status.success(), "the node survived {point}: {status}");
    let log = node.log_text();
    assert!(
        log.contains(&format!("crash point {point} reached")),
        "died elsewhere: {status}; log:\n{log}"
    );
    drop(node);
    println!("{point}: {acknowledged} of 65 transactions acknowledged before the crash");

    recover_and_compare(&dir, &model, &transactions).await;
    // Acknowledged means durable in the WAL: the restarted node had them all.
    assert!(acknowledged >= 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_after_the_parquet_write_loses_and_repeats_nothing() {
    crash_at("flush-after-parquet-write").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_after_the_delta_commit_loses_and_repeats_nothing() {
    crash_at("flush-after-commit").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_after_the_wal_truncation_loses_and_repeats_nothing() {
    crash_at("flush-after-truncate").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigkill_while_puts_stream_and_flushes_run_loses_and_repeats_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let mut model = Model::default();
    let mut rng = Rng::new(42);
    let transactions = Arc::new(generate_transactions(
        &mut model, &mut rng, &TABLES, 1, 150, 40,
    ));
    let node = ServeProcess::start_with(&dir, options());
    let acknowledged = Arc::new(AtomicU64::new(0));
    let writer = {
        let transactions = transactions.clone();
        let acknowledged = acknowledged.clone();
        let mut client = node.sync_client().await;
        tokio::spawn(async move {
            for transaction in transactions.iter() {
                match client.send_transaction("pg", transaction).await {
                    Ok(_) => acknowledged.store(transaction.sequence, Ordering::SeqCst),
                    Err(_) => return,
                }
            }
        })
    };
    // Kill once flushes have made some of the stream durable and more is
    // still arriving.
    let mut probe = node.sync_client().await;
    let started = Instant::now();
    loop {
        let durable = probe.probe("pg").await.durable_sequence_number.unwrap_or(0);
        let acked = acknowledged.load(Ordering::SeqCst);
        if durable >= 20 && acked >= 40 {
            break;
        }
        assert!(
            acked < 150 && started.elapsed() < DEADLINE,
            "no kill point: durable {durable}, acknowledged {acked}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    node.kill();
    writer.await.unwrap();
    let acked = acknowledged.load(Ordering::SeqCst);
    println!("sigkill: {acked} of 150 transactions acknowledged before the kill");
    recover_and_compare(&dir, &model, &transactions).await;
}
