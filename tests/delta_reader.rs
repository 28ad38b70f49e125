//! The tables flightlog writes, read by a Delta reader we did not write: the
//! Python `deltalake` package (delta-rs's Python binding, through pyarrow),
//! from the suite's one Python (`common::python`). After inserts,
//! updates, partial updates, key changes, deletes, a schema evolution and
//! decimal(38,6) extremes, the reader must see exactly the model's rows.
//! Skipped, with the reason printed, when the venv cannot be made (no
//! network, no `python3 -m venv`).

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use common::model::*;
use common::{NodeOptions, ServeProcess};

/// Reads the table with `deltalake` and prints one JSON object per row;
/// decimals as their unscaled integer (as text, they exceed a double).
const READER: &str = r#"
import json, sys, decimal
from deltalake import DeltaTable
decimal.getcontext().prec = 100  # exact: 38 digits must not round
table = DeltaTable(sys.argv[1])
data = table.to_pyarrow_table()
scale = {f.name: f.type.scale for f in data.schema if hasattr(f.type, "scale")}
print(json.dumps({"version": table.version(), "columns": data.schema.names}))
for row in data.to_pylist():
    out = {}
    for name, value in row.items():
        if isinstance(value, decimal.Decimal):
            value = {"unscaled": str(int(value.scaleb(scale[name])))}
        out[name] = value
    print(json.dumps(out))
"#;

fn read_with_deltalake(python: &Path, table_dir: &Path) -> (Vec<String>, BTreeMap<Key, Row>) {
    let output = Command::new(python)
        .args(["-c", READER])
        .arg(table_dir)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "deltalake could not read {}: {}",
        table_dir.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    let text = String::from_utf8(output.stdout).unwrap();
    let mut lines = text.lines();
    let header: serde_json::Value = serde_json::from_str(lines.next().unwrap()).unwrap();
    println!("deltalake read version {}", header["version"]);
    let columns: Vec<String> = header["columns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap().to_string())
        .collect();
    let mut rows = BTreeMap::new();
    for line in lines {
        let object: serde_json::Map<String, serde_json::Value> =
            serde_json::from_str(line).unwrap();
        let key = vec![object["id"].as_i64().unwrap()];
        let row: Row = object
            .iter()
            .filter(|(name, _)| *name != "id")
            .map(|(name, value)| {
                let cell = match value {
                    serde_json::Value::Null => None,
                    serde_json::Value::Number(n) => Some(Value::Int(n.as_i64().unwrap())),
                    serde_json::Value::String(s) => Some(Value::Str(s.clone())),
                    serde_json::Value::Object(o) => {
                        Some(Value::Dec(o["unscaled"].as_str().unwrap().parse().unwrap()))
                    }
                    other => panic!("unexpected value {other}"),
                };
                (name.clone(), cell)
            })
            .collect();
        assert!(
            rows.insert(key.clone(), row).is_none(),
            "duplicate key {key:?}"
        );
    }
    (columns, rows)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_deltalake_python_reader_sees_the_model() {
    let python =
        match common::python::python_with(&[common::python::PYARROW, common::python::DELTALAKE]) {
            Ok(python) => python,
            Err(reason) => {
                println!("skipped: {reason}");
                return;
            }
        };
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let node = ServeProcess::start_with(&dir, NodeOptions::default());
    let mut client = node.sync_client().await;
    let mut model = Model::default();
    let mut rng = Rng::new(11);
    let transactions = generate_transactions(&mut model, &mut rng, &["reader/t"], 1, 8, 50);
    for transaction in &transactions {
        client.send_transaction("pg", transaction).await.unwrap();
    }
    node.wait_durable(&mut client, "pg", 8).await;

    // A new decimal(38,6) column on some rows: the schema evolves.
    let max = 10i128.pow(38) - 1;
    let ids: Vec<Key> = model.tables["reader/t"].keys().take(4).cloned().collect();
    let prices = [Some(max), Some(-max), Some(1), None];
    let evolve = Message::new(
        "reader/t",
        &["id"],
        vec![value("price", ColumnType::Decimal(38, 6), true)],
        ids.iter()
            .zip(prices)
            .map(|(id, price)| Change::Update {
                old: id.clone(),
                new: id.clone(),
                set: set(&[("price", price.map(Value::Dec))]),
            })
            .collect(),
    );
    client.send("pg", Some(9), &evolve).await;
    model.apply(&evolve);
    node.wait_durable(&mut client, "pg", 9).await;

    let (columns, rows) = read_with_deltalake(&python, &dir.join("lake/reader/t"));
    let mut expected_columns: Vec<String> = vec!["id".into()];
    expected_columns.extend(model.columns["reader/t"].iter().cloned());
    let mut sorted = columns.clone();
    sorted.sort();
    expected_columns.sort();
    assert_eq!(sorted, expected_columns);
    assert_rows_equal("reader/t", &model.expected("reader/t"), &rows);
}
