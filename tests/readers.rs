//! The readers people use read what the node wrote: a table written
//! through the node (inserts, updates, key changes, deletes, every stored
//! type family, one flush per transaction with compaction and checkpoints
//! in between) read back with the Python `deltalake` package, `polars`
//! (`read_delta`) and DuckDB (`delta_scan`), each compared with a model of
//! the changes (`tests/python/readers.py`). Skipped, with the reason
//! printed, only when the packages cannot be installed.
//! `FLIGHTLOG_READERS_TRANSACTIONS` sets the number of transactions (40).

mod common;

use std::process::Command;

use common::python::{python_with, script, DELTALAKE, PYARROW};
use common::ServeProcess;

const READERS: [(&str, &str); 5] = [
    PYARROW,
    DELTALAKE,
    ("polars", "polars"),
    ("duckdb==1.4.4", "duckdb"),
    ("duckdb-ext-delta==1.4.4.20260205", "duckdb_ext"),
];

#[test]
fn deltalake_polars_and_duckdb_agree_with_the_model() {
    let python = match python_with(&READERS) {
        Ok(python) => python,
        Err(reason) => {
            eprintln!("SKIPPED: the Python readers cannot be installed: {reason}");
            return;
        }
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("node");
    let node = ServeProcess::start(
        &data,
        &["--max-lag-ms", "1", "--checkpoint-interval-commits", "4"],
    );
    let table_dir = std::path::absolute(data.join("lake/readers/everything")).expect("absolute");
    let output = Command::new(&python)
        .arg(script("readers.py"))
        .arg(node.addr.to_string())
        .arg(&table_dir)
        .output()
        .expect("run readers.py");
    let stdout = String::from_utf8_lossy(&output.stdout);
    println!("{stdout}");
    assert!(
        output.status.success() && stdout.contains("ok "),
        "readers.py failed ({}):\n{stdout}\n{}\nnode log:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr),
        std::fs::read_to_string(&node.log_path).unwrap_or_default()
    );
    assert!(node.terminate().success());
}
