//! An existing kind of client, unchanged: `examples/sync_client.py` speaks
//! the sync protocol with `pyarrow.flight` and hand-encoded protobuf (no
//! generated code) against the real binary. Guards wire compatibility with
//! a non-Rust Flight implementation: the `Any`-wrapped command with the bare
//! `type_url`, pyarrow's schema-first stream (a probe is a schema with no
//! batches), and the plain `DataSyncResponse` in `PutResult.app_metadata`.
//!
//! The interpreter is the suite's one Python (`common::python`:
//! `FLIGHTLOG_PYTHON`, or the shared venv under the target directory). When
//! none can be had (no python3, no network), the test prints why and passes
//! as skipped.

mod common;

use std::path::Path;
use std::process::Command;

use serde_json::Value;

use common::*;

/// The JSON after `<label> ` on the example's output line starting with it.
fn response_line(stdout: &str, label: &str) -> Value {
    let line = stdout
        .lines()
        .find_map(|line| line.strip_prefix(&format!("{label} ")))
        .unwrap_or_else(|| panic!("no {label:?} line in output:\n{stdout}"));
    serde_json::from_str(line).expect("the example prints JSON")
}

#[tokio::test]
async fn python_example_inserts_then_probes() {
    let python = match common::python::python_with(&[common::python::PYARROW]) {
        Ok(python) => python,
        Err(reason) => {
            println!("skipped: no Python with pyarrow: {reason}");
            return;
        }
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let node = ServeProcess::start(&dir.path().join("data"), &["--max-lag-ms", "3600000"]);
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/sync_client.py");
    let output = Command::new(&python)
        .arg(&example)
        .args(["--address", &node.addr.to_string()])
        .args(["--path", "py/items", "--origin", "python"])
        .args(["--sequence", "3", "--rows", "5"])
        .output()
        .expect("run the example");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "example failed: {stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );

    let insert = response_line(&stdout, "insert");
    assert_eq!(insert["accepted"], true);
    assert_eq!(insert["memory_sequence_number"], 3);
    assert_eq!(insert["durable_sequence_number"], Value::Null);
    assert_eq!(insert["first"], true);
    let probe = response_line(&stdout, "probe");
    assert_eq!(probe["accepted"], true);
    assert_eq!(probe["memory_sequence_number"], 3);
    assert_eq!(probe["first"], false);

    // The rows the example sent are in the WAL, under its origin.
    let dump = wal_dump(&node.data_dir);
    let rows: u64 = frames_of_kind(&dump, "data")
        .iter()
        .filter(|frame| frame["origin"] == "python")
        .map(|frame| frame["rows"].as_u64().expect("rows"))
        .sum();
    assert_eq!(rows, 5);
}
