//! Every rule of PROTOCOL.md, and the hostile forms of every field a client
//! controls, sent by a client we did not write: `pyarrow.flight` with
//! hand-encoded protobuf (`tests/python/conformance.py`, on the wire
//! encoders of `examples/sync_client.py`), against the real binary. Each
//! test starts a node with the flags its scenario needs and runs one
//! scenario, which asserts the answers, the error codes and messages, and
//! the Delta table as the `deltalake` package reads it. Skipped with the
//! reason printed when no Python with pyarrow and deltalake can be had.

mod common;

use std::process::Command;

use common::python::{python_with, script, DELTALAKE, PYARROW};
use common::ServeProcess;

/// Runs `scenario` against `node`; panics with its output unless it passes.
fn run_scenario(node: &ServeProcess, scenario: &str) -> Option<String> {
    let python = match python_with(&[PYARROW, DELTALAKE]) {
        Ok(python) => python,
        Err(reason) => {
            println!("skipped: no Python with pyarrow and deltalake: {reason}");
            return None;
        }
    };
    let output = Command::new(python)
        .arg(script("conformance.py"))
        .arg(scenario)
        .args(["--address", &node.addr.to_string()])
        .arg("--data-dir")
        .arg(&node.data_dir)
        .output()
        .expect("run the scenario");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success() && stdout.contains(&format!("ok {scenario}")),
        "scenario {scenario} failed:\n{stdout}\n{stderr}\nnode log (flightlog lines):\n{}",
        node.log_text()
            .lines()
            .filter(|line| line.contains("flightlog"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    print!("{stdout}");
    Some(stdout)
}

/// A fresh node with `args` (and a 50 ms flush lag unless they set one).
fn node(dir: &tempfile::TempDir, args: &[&str]) -> ServeProcess {
    let mut all = args.to_vec();
    if !args.contains(&"--max-lag-ms") {
        all.extend(["--max-lag-ms", "50"]);
    }
    ServeProcess::start(&dir.path().join("data"), &all)
}

fn scenario(name: &str, args: &[&str]) {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = node(&dir, args);
    run_scenario(&node, name);
}

#[test]
fn a_bare_probe_with_no_path_descriptors_or_schema_is_answered() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = node(&dir, &[]);
    if run_scenario(&node, "bare_probe_is_answered").is_none() {
        return;
    }
    // The probes wrote nothing: the one data frame is origin q's put.
    let dump = common::wal_dump(&node.data_dir);
    let origins: Vec<_> = common::frames_of_kind(&dump, "data")
        .into_iter()
        .map(|frame| frame["origin"].clone())
        .collect();
    assert_eq!(
        origins,
        vec![serde_json::json!("q")],
        "probes write nothing"
    );
}

#[test]
fn a_closing_message_needs_no_path_descriptors_or_schema() {
    scenario(
        "closing_message_without_descriptors_closes_the_transaction",
        &[],
    );
}

#[test]
fn both_type_urls_are_accepted_and_no_other() {
    scenario("both_type_urls_and_no_other", &[]);
}

#[test]
fn transactions_span_messages_and_replays_write_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = node(&dir, &[]);
    if run_scenario(
        &node,
        "transactions_span_messages_and_replays_write_nothing",
    )
    .is_none()
    {
        return;
    }
    // Three messages wrote one data frame each; the replay of sequence 10
    // wrote none (the active segment is never truncated, so all are here).
    let dump = common::wal_dump(&node.data_dir);
    let data_frames = common::frames_of_kind(&dump, "data")
        .into_iter()
        .filter(|frame| frame["origin"] == "x")
        .count();
    assert_eq!(data_frames, 3, "a replay writes nothing");
}

#[test]
fn changes_apply_in_order_by_key() {
    scenario("changes_apply_in_order_by_key", &[]);
}

#[test]
fn partial_updates_keep_unchanged_values() {
    scenario("partial_updates_keep_unchanged_values", &[]);
}

#[test]
fn a_put_whose_deadline_passes_mid_stream_keeps_nothing() {
    scenario("a_put_whose_deadline_passes_mid_stream_keeps_nothing", &[]);
}

#[test]
fn a_client_that_abandons_its_stream_mid_message_leaves_nothing() {
    scenario(
        "a_client_that_abandons_its_stream_mid_message_leaves_nothing",
        &["--put-idle-timeout-ms", "2000"],
    );
}

#[test]
fn two_spellings_of_one_store_are_one_table() {
    scenario("two_spellings_of_one_store_are_one_table", &[]);
}

#[test]
fn memory_and_fault_injection_stores_are_refused() {
    scenario("memory_and_fault_injection_stores_are_refused", &[]);
}

#[test]
fn hostile_paths_and_stores_are_refused_and_freeze_nothing() {
    scenario(
        "hostile_paths_and_stores_are_refused_and_freeze_nothing",
        &["--store-check-timeout-ms", "3000"],
    );
}

#[test]
fn columns_that_could_never_flush_are_refused() {
    scenario("columns_that_could_never_flush_are_refused", &[]);
}

#[test]
fn every_accepted_type_round_trips_exactly() {
    scenario("every_accepted_type_round_trips_exactly", &[]);
}

#[test]
fn an_abandoned_open_transaction_holds_back_no_one() {
    scenario(
        "an_abandoned_open_transaction_holds_back_no_one",
        &["--open-transaction-timeout-ms", "1500"],
    );
}

#[test]
fn a_batch_larger_than_a_frame_is_split_not_refused() {
    scenario("a_batch_larger_than_a_frame_is_split_not_refused", &[]);
}

#[test]
fn over_the_high_watermark_puts_are_not_accepted() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = node(
        &dir,
        &[
            "--max-lag-ms",
            "3600000",
            "--pending-bytes-low-watermark",
            "1000",
            "--pending-bytes-high-watermark",
            "20000",
        ],
    );
    if run_scenario(&node, "over_the_high_watermark_puts_are_not_accepted").is_none() {
        return;
    }
    // Pending bytes never exceed what was written: the refusal came only
    // once the accepted frames held at least the high watermark.
    let dump = common::wal_dump(&node.data_dir);
    let written: u64 = common::frames_of_kind(&dump, "data")
        .into_iter()
        .filter(|frame| frame["origin"] == "w")
        .map(|frame| frame["len"].as_u64().expect("frame len"))
        .sum();
    assert!(
        written >= 20_000,
        "refused with only {written} bytes written"
    );
}

#[test]
fn first_is_true_after_a_restart_and_the_numbers_stay_valid() {
    let dir = tempfile::tempdir().expect("tempdir");
    let before = node(&dir, &[]);
    if run_scenario(&before, "restart_before").is_none() {
        return;
    }
    before.kill();
    let after = node(&dir, &[]);
    run_scenario(&after, "restart_after");
}

#[test]
fn every_field_is_bounded_even_in_a_bare_probe() {
    scenario("every_field_is_bounded", &[]);
}
