//! Flushing to Delta Lake, end to end: the real `flightlog` binary is sent
//! change messages over Arrow Flight, flushes them on its own, and the Delta
//! tables it writes are read back and compared, row by row, with a simple
//! model (a `BTreeMap` per table applied change by change). Guards the
//! claims that every kind of change lands as the protocol says, that the
//! durable sequence number never runs ahead of what is committed, that
//! store locations and the allow-list are honoured, that flushed WAL
//! segments are truncated, and that a restart applies nothing twice.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashMap;
use std::time::Instant;

use common::model::*;
use common::s3::*;
use common::{binary, segment_files, NodeOptions, ServeProcess, DEADLINE};

fn data_dir(tmp: &tempfile::TempDir) -> std::path::PathBuf {
    tmp.path().join("data")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_kind_of_change_across_messages_and_tables_matches_the_model() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = data_dir(&tmp);
    let node = ServeProcess::start_with(&dir, NodeOptions::default());
    let mut client = node.sync_client().await;
    let mut model = Model::default();
    let values = usual_values;
    let ins = |id: i64, name: &str, amount: i64| Change::Insert {
        key: vec![id],
        set: set(&[("name", text(name)), ("amount", int(amount))]),
    };

    // Transaction 1: both tables, several messages, changes within the flush.
    let orders_1 = Message::new(
        "shop/orders",
        &["id"],
        values(),
        (1..=10).map(|i| ins(i, &format!("o{i}"), i * 10)).collect(),
    );
    let customers_1 = Message::new(
        "shop/customers",
        &["id"],
        values(),
        (1..=5).map(|i| ins(i, &format!("c{i}"), i)).collect(),
    );
    let orders_2 = Message::new(
        "shop/orders",
        &["id"],
        values(),
        vec![
            Change::Update {
                old: vec![1],
                new: vec![1],
                set: set(&[("name", text("one")), ("amount", int(11))]),
            },
            Change::Update {
                old: vec![2],
                new: vec![2],
                set: set(&[("amount", int(22))]),
            },
            Change::Update {
                old: vec![3],
                new: vec![103],
                set: set(&[("name", text("o3")), ("amount", int(30))]),
            },
            Change::Delete { key: vec![4] },
            ins(11, "o11", 110),
            ins(12, "o12", 120),
        ],
    )
    .reversed();
    // Only `name` is carried: `amount` is missing from this message.
    let orders_3 = Message::new(
        "shop/orders",
        &["id"],
        vec![value("name", ColumnType::Utf8, true)],
        vec![
            Change::Update {
                old: vec![5],
                new: vec![5],
                set: set(&[("name", text("five"))]),
            },
            Change::Insert {
                key: vec![13],
                set: set(&[("name", text("o13"))]),
            },
            Change::Update {
                old: vec![12],
                new: vec![12],
                set: set(&[("name", text("twelve"))]),
            },
        ],
    );
    let customers_2 = Message::new(
        "shop/customers",
        &["id"],
        values(),
        vec![
            Change::Update {
                old: vec![1],
                new: vec![1],
                set: set(&[("name", text("first"))]),
            },
            Change::Delete { key: vec![2] },
        ],
    );
    let first = [&orders_1, &customers_1, &orders_2, &orders_3, &customers_2];
    for (i, message) in first.iter().enumerate() {
        let sequence = (i == first.len() - 1).then_some(1);
        client.send("pg", sequence, message).await;
        model.apply(message);
    }
    node.wait_durable(&mut client, "pg", 1).await;
    let orders = lake_table(&dir, "shop/orders");
    let customers = lake_table(&dir, "shop/customers");
    model.assert_table("shop/orders", &orders, &["id"]).await;
    model
        .assert_table("shop/customers", &customers, &["id"])
        .await;

    // Transaction 2: changes that must fill from the rows already in Delta.
    let orders_4 = Message::new(
        "shop/orders",
        &["id"],
        values(),
        vec![
            Change::Update {
                old: vec![1],
                new: vec![1],
                set: set(&[("name", text("uno"))]),
            },
            Change::Update {
                old: vec![103],
                new: vec![203],
                set: set(&[("name", text("o3b")), ("amount", int(33))]),
            },
            // A key change that carries only one column keeps the other.
            Change::Update {
                old: vec![7],
                new: vec![107],
                set: set(&[("name", text("seven"))]),
            },
            // An update of a missing key inserts it; a delete of one is a no-op.
            Change::Update {
                old: vec![500],
                new: vec![500],
                set: set(&[("name", text("new"))]),
            },
            Change::Delete { key: vec![600] },
            // Key swap across messages starts here.
            Change::Update {
                old: vec![9],
                new: vec![1009],
                set: set(&[("name", text("o9")), ("amount", int(90))]),
            },
        ],
    );
    // `amount` without a CHANGED partner: null overwrites.
    let orders_5 = Message::new(
        "shop/orders",
        &["id"],
        vec![
            value("amount", ColumnType::Int64, false),
            value("name", ColumnType::Utf8, true),
        ],
        vec![
            Change::Update {
                old: vec![8],
                new: vec![8],
                set: set(&[("name", text("eight"))]),
            },
            Change::Update {
                old: vec![10],
                new: vec![9],
                set: set(&[("name", text("o10")), ("amount", int(100))]),
            },
        ],
    )
    .reversed();
    let orders_6 = Message::new(
        "shop/orders",
        &["id"],
        values(),
        vec![Change::Update {
            old: vec![1009],
            new: vec![10],
            set: set(&[("name", text("o9")), ("amount", int(90))]),
        }],
    );
    // A new column: the table's schema evolves.
    let orders_7 = Message::new(
        "shop/orders",
        &["id"],
        vec![value("note", ColumnType::Utf8, true)],
        vec![Change::Update {
            old: vec![11],
            new: vec![11],
            set: set(&[("note", text("gift"))]),
        }],
    );
    let second = [&orders_4, &orders_5, &orders_6, &orders_7];
    for (i, message) in second.iter().enumerate() {
        let sequence = (i == second.len() - 1).then_some(2);
        client.send("pg", sequence, message).await;
        model.apply(message);
    }
    node.wait_durable(&mut client, "pg", 2).await;
    model.assert_table("shop/orders", &orders, &["id"]).await;
    model
        .assert_table("shop/customers", &customers, &["id"])
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn composite_keys_change_in_any_of_their_columns() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = data_dir(&tmp);
    let node = ServeProcess::start_with(&dir, NodeOptions::default());
    let mut client = node.sync_client().await;
    let mut model = Model::default();
    let keys = ["a", "b"];
    let ins = |a: i64, b: i64| Change::Insert {
        key: vec![a, b],
        set: set(&[("name", text(&format!("{a}/{b}"))), ("amount", int(a * b))]),
    };
    let first = Message::new(
        "pairs",
        &keys,
        usual_values(),
        vec![ins(1, 1), ins(1, 2), ins(2, 1), ins(2, 2), ins(3, 3)],
    );
    client.send("pg", Some(1), &first).await;
    model.apply(&first);
    node.wait_durable(&mut client, "pg", 1).await;

    let moves = Message::new(
        "pairs",
        &keys,
        usual_values(),
        vec![
            // Only b changes.
            Change::Update {
                old: vec![1, 1],
                new: vec![1, 3],
                set: set(&[("name", text("1/3")), ("amount", int(3))]),
            },
            // Only a changes, and only one value is carried.
            Change::Update {
                old: vec![2, 1],
                new: vec![4, 1],
                set: set(&[("amount", int(41))]),
            },
            // Both change, onto a key freed just before by the first move.
            Change::Update {
                old: vec![3, 3],
                new: vec![1, 1],
                set: set(&[("name", text("was 3/3")), ("amount", int(33))]),
            },
            Change::Delete { key: vec![2, 2] },
            ins(2, 2),
        ],
    )
    .reversed();
    client.send("pg", Some(2), &moves).await;
    model.apply(&moves);
    node.wait_durable(&mut client, "pg", 2).await;
    model
        .assert_table("pairs", &lake_table(&dir, "pairs"), &keys)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn insert_then_delete_in_one_flush_is_a_no_op() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = data_dir(&tmp);
    let node = ServeProcess::start_with(&dir, NodeOptions::default());
    let mut client = node.sync_client().await;
    let mut model = Model::default();
    let ins = |id: i64| Change::Insert {
        key: vec![id],
        set: set(&[("name", text("x")), ("amount", int(id))]),
    };
    let messages = [
        Message::new("kept", &["id"], usual_values(), vec![ins(1), ins(2)]),
        Message::new(
            "kept",
            &["id"],
            usual_values(),
            vec![Change::Delete { key: vec![1] }],
        ),
        // A table whose only change cancels out.
        Message::new(
            "ghost",
            &["id"],
            usual_values(),
            vec![ins(7), Change::Delete { key: vec![7] }],
        ),
    ];
    for (i, message) in messages.iter().enumerate() {
        let sequence = (i == messages.len() - 1).then_some(1);
        client.send("pg", sequence, message).await;
        model.apply(message);
    }
    node.wait_durable(&mut client, "pg", 1).await;
    model
        .assert_table("kept", &lake_table(&dir, "kept"), &["id"])
        .await;
    assert_eq!(row_count(&lake_table(&dir, "ghost")).await, 0);
    assert!(!node.log_text().contains("flush failed"));
}

/// Each Delta commit's `commitInfo` names the WAL and, per origin, the
/// highest transaction sequence it carries: an operator can tell from the
/// table alone which source position it reflects.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commit_info_records_the_wal_and_each_origins_sequence() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = data_dir(&tmp);
    let node = ServeProcess::start_with(&dir, NodeOptions::default());
    let mut client = node.sync_client().await;
    let insert = |id: i64| Change::Insert {
        key: vec![id],
        set: set(&[("name", text("x")), ("amount", int(id))]),
    };
    let message = Message::new("info", &["id"], usual_values(), vec![insert(1), insert(2)]);
    client.send("pg", Some(41), &message).await;
    node.wait_durable(&mut client, "pg", 41).await;
    let log = dir.join("lake").join("info").join("_delta_log");
    let mut found = false;
    for entry in std::fs::read_dir(&log).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "json") {
            continue;
        }
        for line in std::fs::read_to_string(&path).unwrap().lines() {
            let action: serde_json::Value = serde_json::from_str(line).unwrap();
            let Some(info) = action.get("commitInfo").and_then(|c| c.get("flightlog")) else {
                continue;
            };
            assert!(
                info["walId"].as_str().is_some_and(|id| id.len() == 32),
                "{info}"
            );
            assert_eq!(info["origins"][0]["origin"], "pg", "{info}");
            assert_eq!(info["origins"][0]["sequenceNumber"], 41, "{info}");
            found = true;
        }
    }
    assert!(
        found,
        "no commitInfo with flightlog metadata in {}",
        log.display()
    );
}

/// A transaction in completion order: its origin, sequence, and the keys it
/// inserted per table.
struct Sent {
    origin: &'static str,
    sequence: u64,
    keys: Vec<(&'static str, i64)>,
}

/// Checks the durable-sequence rule against the tables: for each origin,
/// every transaction completed up to its durable one must be in the tables.
async fn check_durable_rule(
    dir: &std::path::Path,
    sent: &[Sent],
    durable: &HashMap<&'static str, Option<u64>>,
) {
    let mut present: HashMap<&str, std::collections::BTreeSet<i64>> = HashMap::new();
    for table in ["a", "b", "c"] {
        let (_, rows) = table_rows(&lake_table(dir, table), &["id"]).await;
        present.insert(table, rows.keys().map(|k| k[0]).collect());
    }
    for (origin, durable) in durable {
        let Some(durable) = durable else { continue };
        let Some(last) = sent
            .iter()
            .rposition(|s| s.origin == *origin && s.sequence <= *durable)
        else {
            panic!("{origin} durable at {durable} before any of its transactions completed");
        };
        for transaction in &sent[..=last] {
            for (table, key) in &transaction.keys {
                assert!(
                    present[table].contains(key),
                    "{origin} reports durable {durable}, but transaction {}:{} is not in table {table} (key {key})",
                    transaction.origin,
                    transaction.sequence
                );
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn durable_sequence_never_runs_ahead_of_the_committed_tables() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = data_dir(&tmp);
    let node = ServeProcess::start_with(&dir, NodeOptions::default());
    let mut client = node.sync_client().await;
    let mut sent: Vec<Sent> = Vec::new();
    let mut next_key = 0;
    let mut message = |table: &'static str, rows: i64, keys: &mut Vec<(&'static str, i64)>| {
        let changes = (0..rows)
            .map(|_| {
                next_key += 1;
                keys.push((table, next_key));
                Change::Insert {
                    key: vec![next_key],
                    set: set(&[("name", text(table)), ("amount", int(next_key))]),
                }
            })
            .collect();
        Message::new(table, &["id"], usual_values(), changes)
    };
    let mut durable: HashMap<&'static str, Option<u64>> = HashMap::new();
    for round in 1..=12u64 {
        // o1: a transaction over tables a and b (the bigger one: slower).
        let mut keys = Vec::new();
        let first = message("a", 2000, &mut keys);
        let second = message("b", 50, &mut keys);
        client.send("o1", None, &first).await;
        client.send("o1", Some(round * 10), &second).await;
        sent.push(Sent {
            origin: "o1",
            sequence: round * 10,
            keys,
        });
        // o2: a small transaction over table c, completed after o1's.
        let mut keys = Vec::new();
        let third = message("c", 5, &mut keys);
        client.send("o2", Some(round), &third).await;
        sent.push(Sent {
            origin: "o2",
            sequence: round,
            keys,
        });
        for origin in ["o1", "o2"] {
            let response = client.probe(origin).await;
            assert!(response.durable_sequence_number <= response.memory_sequence_number);
            durable.insert(origin, response.durable_sequence_number);
        }
        check_durable_rule(&dir, &sent, &durable).await;
    }
    let started = Instant::now();
    loop {
        for origin in ["o1", "o2"] {
            let response = client.probe(origin).await;
            assert!(response.durable_sequence_number <= response.memory_sequence_number);
            durable.insert(origin, response.durable_sequence_number);
        }
        check_durable_rule(&dir, &sent, &durable).await;
        if durable["o1"] == Some(120) && durable["o2"] == Some(12) {
            break;
        }
        assert!(
            started.elapsed() < DEADLINE,
            "durable stuck at {durable:?}; log:\n{}",
            node.log_text()
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_thousand_inserts_in_one_message_are_all_flushed() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = data_dir(&tmp);
    let node = ServeProcess::start_with(&dir, NodeOptions::default());
    let mut client = node.sync_client().await;
    let rows = 100_000i64;
    // Keys in a scrambled order, so the flush must sort them.
    let changes = (0..rows)
        .map(|i| {
            let id = (i * 7919) % rows;
            Change::Insert {
                key: vec![id],
                set: set(&[
                    ("name", text(&format!("row {id}"))),
                    ("amount", int(id * 2)),
                ]),
            }
        })
        .collect();
    let message = Message::new("big", &["id"], usual_values(), changes);
    client.send("pg", Some(1), &message).await;
    node.wait_durable(&mut client, "pg", 1).await;
    let (_, table) = table_rows(&lake_table(&dir, "big"), &["id"]).await;
    // table_rows refuses duplicate keys, so the count is also the distinct count.
    assert_eq!(table.len(), rows as usize);
    assert_eq!(table.keys().next(), Some(&vec![0]));
    assert_eq!(table.keys().next_back(), Some(&vec![rows - 1]));
    let amounts: i64 = table
        .values()
        .map(|row| match &row["amount"] {
            Some(Value::Int(v)) => *v,
            other => panic!("amount {other:?}"),
        })
        .sum();
    assert_eq!(amounts, rows * (rows - 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ranges_of_keys_move_to_new_keys() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = data_dir(&tmp);
    let node = ServeProcess::start_with(&dir, NodeOptions::default());
    let mut client = node.sync_client().await;
    let mut model = Model::default();
    let send = |message: Message| message;
    let inserts = send(Message::new(
        "moves",
        &["id"],
        usual_values(),
        (1..=1000)
            .map(|id| Change::Insert {
                key: vec![id],
                set: set(&[("name", text(&format!("r{id}"))), ("amount", int(id))]),
            })
            .collect(),
    ));
    client.send("pg", Some(1), &inserts).await;
    model.apply(&inserts);
    node.wait_durable(&mut client, "pg", 1).await;

    // id -> id + 1000 for every row: each key lands on an empty key.
    let shift = Message::new(
        "moves",
        &["id"],
        usual_values(),
        (1..=1000)
            .map(|id| Change::Update {
                old: vec![id],
                new: vec![id + 1000],
                set: set(&[("name", text(&format!("r{id}"))), ("amount", int(id))]),
            })
            .collect(),
    );
    client.send("pg", Some(2), &shift).await;
    model.apply(&shift);
    node.wait_durable(&mut client, "pg", 2).await;
    let location = lake_table(&dir, "moves");
    model.assert_table("moves", &location, &["id"]).await;

    // id -> id + 500 for 1001..=2000, highest first (the order a database
    // with a unique key emits), overlapping the old range; plus new rows in
    // the range that was emptied, in the same transaction.
    let overlap = Message::new(
        "moves",
        &["id"],
        usual_values(),
        (1001..=2000)
            .rev()
            .map(|id| Change::Update {
                old: vec![id],
                new: vec![id + 500],
                set: set(&[("amount", int(-id))]),
            })
            .collect(),
    );
    let refill = Message::new(
        "moves",
        &["id"],
        usual_values(),
        (1..=100)
            .map(|id| Change::Insert {
                key: vec![id],
                set: set(&[("name", text("refill")), ("amount", int(0))]),
            })
            .collect(),
    );
    client.send("pg", None, &overlap).await;
    client.send("pg", Some(3), &refill).await;
    model.apply(&overlap);
    model.apply(&refill);
    node.wait_durable(&mut client, "pg", 3).await;
    model.assert_table("moves", &location, &["id"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decimal_38_6_extremes_round_trip_exactly() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = data_dir(&tmp);
    let node = ServeProcess::start_with(&dir, NodeOptions::default());
    let mut client = node.sync_client().await;
    let mut model = Model::default();
    let max = 10i128.pow(38) - 1;
    let values = [
        Some(max),
        Some(-max),
        Some(0),
        Some(1),
        Some(-1),
        Some(123_456_789_012_345_678_901_234_567_890_123_456),
        Some(999_999),
        Some(1_000_000),
        None,
    ];
    let column = vec![value("price", ColumnType::Decimal(38, 6), true)];
    let message = Message::new(
        "money",
        &["id"],
        column.clone(),
        values
            .iter()
            .enumerate()
            .map(|(i, v)| Change::Insert {
                key: vec![i as i64],
                set: set(&[("price", v.map(Value::Dec))]),
            })
            .collect(),
    );
    client.send("pg", Some(1), &message).await;
    model.apply(&message);
    node.wait_durable(&mut client, "pg", 1).await;
    let location = lake_table(&dir, "money");
    model.assert_table("money", &location, &["id"]).await;

    // Rewriting the file that holds them (an update of one row) keeps them.
    let update = Message::new(
        "money",
        &["id"],
        column,
        vec![Change::Update {
            old: vec![2],
            new: vec![2],
            set: set(&[("price", Some(Value::Dec(-max + 1)))]),
        }],
    );
    client.send("pg", Some(2), &update).await;
    model.apply(&update);
    node.wait_durable(&mut client, "pg", 2).await;
    model.assert_table("money", &location, &["id"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_store_location_puts_the_table_under_it() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = data_dir(&tmp);
    let elsewhere = tmp.path().join("elsewhere");
    std::fs::create_dir_all(&elsewhere).unwrap();
    let root = format!("file://{}", elsewhere.display());
    let node = ServeProcess::start_with(&dir, NodeOptions::default());
    let mut client = node.sync_client().await;
    let mut model = Model::default();
    let message = Message::new(
        "ns/t",
        &["id"],
        usual_values(),
        vec![Change::Insert {
            key: vec![1],
            set: set(&[("name", text("x")), ("amount", int(1))]),
        }],
    )
    .with_store(&root, HashMap::new());
    client.send("pg", Some(1), &message).await;
    model.apply(&message);
    node.wait_durable(&mut client, "pg", 1).await;
    assert!(elsewhere.join("ns/t/_delta_log").is_dir());
    assert!(!dir.join("lake/ns/t").exists());
    model
        .assert_table("ns/t", &store_table(&root, "ns/t"), &["id"])
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_outside_the_allow_list_is_permission_denied() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = data_dir(&tmp);
    let allowed = format!("file://{}/allowed", tmp.path().display());
    let node =
        ServeProcess::start_with(&dir, NodeOptions::default().arg("--allow-store", &allowed));
    let mut client = node.sync_client().await;
    let message = |root: &str| {
        Message::new(
            "t",
            &["id"],
            usual_values(),
            vec![Change::Insert {
                key: vec![1],
                set: set(&[("name", text("x")), ("amount", int(1))]),
            }],
        )
        .with_store(root, HashMap::new())
    };
    let outside = [
        format!("file://{}/other", tmp.path().display()),
        // A sibling that merely shares the prefix's spelling.
        format!("{allowed}-not"),
        // A path that leaves the allowed directory once normalised.
        format!("{allowed}/../other"),
        format!("{allowed}/%2e%2e/other"),
    ];
    for location in &outside {
        let error = client
            .try_send("pg", Some(1), &message(location))
            .await
            .expect_err(location);
        assert_eq!(
            error.code(),
            tonic::Code::PermissionDenied,
            "{location}: {error}"
        );
    }
    let inside = format!("{allowed}/tables");
    client.send("pg", Some(1), &message(&inside)).await;
    node.wait_durable(&mut client, "pg", 1).await;
    assert_eq!(row_count(&store_table(&inside, "t")).await, 1);
    assert!(!tmp.path().join("other").exists());
    assert!(!tmp.path().join("allowed-not").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unusable_store_location_is_refused_at_put_time() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = data_dir(&tmp);
    let node = ServeProcess::start_with(&dir, NodeOptions::default());
    let mut client = node.sync_client().await;
    let message = |path: &str| {
        Message::new(
            path,
            &["id"],
            usual_values(),
            vec![Change::Insert {
                key: vec![1],
                set: set(&[("name", text("x")), ("amount", int(1))]),
            }],
        )
    };
    // Accepting these would fail every flush of them, and hold back the
    // durable sequence of every later transaction of every origin.
    for location in ["not a url", "http://example.com/lake", "ftp://host/x"] {
        let error = client
            .try_send(
                "bad",
                Some(1),
                &message("t").with_store(location, HashMap::new()),
            )
            .await
            .expect_err(location);
        assert_eq!(
            error.code(),
            tonic::Code::InvalidArgument,
            "{location}: {error}"
        );
    }
    let mut model = Model::default();
    let good = message("t");
    client.send("good", Some(1), &good).await;
    model.apply(&good);
    node.wait_durable(&mut client, "good", 1).await;
    model
        .assert_table("t", &lake_table(&dir, "t"), &["id"])
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flushed_wal_segments_are_truncated() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = data_dir(&tmp);
    let node = ServeProcess::start_with(&dir, NodeOptions::default().arg("--segment-bytes", 65536));
    let mut client = node.sync_client().await;
    let mut model = Model::default();
    // One open transaction of many messages: nothing is flushable until it
    // closes, so the segments pile up first.
    let messages = 40;
    for m in 0..messages {
        let message = Message::new(
            "t",
            &["id"],
            usual_values(),
            (0..500)
                .map(|i| {
                    let id = m * 500 + i;
                    Change::Insert {
                        key: vec![id],
                        set: set(&[("name", text(&format!("{id:032}"))), ("amount", int(id))]),
                    }
                })
                .collect(),
        );
        let sequence = (m == messages - 1).then_some(1);
        if sequence.is_none() {
            client.send("pg", None, &message).await;
        } else {
            let before = segment_files(&dir);
            assert!(before >= 8, "only {before} segments before the flush");
            client.send("pg", sequence, &message).await;
        }
        model.apply(&message);
    }
    let before = segment_files(&dir);
    node.wait_durable(&mut client, "pg", 1).await;
    let started = Instant::now();
    while segment_files(&dir) > 2 {
        assert!(
            started.elapsed() < DEADLINE,
            "segments not truncated: {} left of {before}",
            segment_files(&dir)
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    println!(
        "segments before the flush: {before}, after: {}",
        segment_files(&dir)
    );
    model
        .assert_table("t", &lake_table(&dir, "t"), &["id"])
        .await;
    assert!(node.terminate().success());
    let verify = std::process::Command::new(binary())
        .args(["wal", "verify"])
        .arg(dir.join("wal"))
        .output()
        .unwrap();
    assert!(
        verify.status.success(),
        "wal verify failed: {}{}",
        String::from_utf8_lossy(&verify.stdout),
        String::from_utf8_lossy(&verify.stderr)
    );
    // The truncated WAL still starts, with nothing left to flush.
    let node = ServeProcess::start_with(&dir, NodeOptions::default().arg("--segment-bytes", 65536));
    let mut client = node.sync_client().await;
    let response = client.probe("pg").await;
    assert!(response.first);
    assert_eq!(response.memory_sequence_number, Some(1));
    assert_eq!(response.durable_sequence_number, Some(1));
    model
        .assert_table("t", &lake_table(&dir, "t"), &["id"])
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clean_restart_applies_nothing_twice() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = data_dir(&tmp);
    let tables = ["r1", "r2"];
    let mut model = Model::default();
    let mut rng = Rng::new(7);
    let transactions = generate_transactions(&mut model, &mut rng, &tables, 1, 6, 40);
    let check = |model: Model| {
        let dir = dir.clone();
        async move {
            for table in tables {
                model
                    .assert_table(table, &lake_table(&dir, table), &["id"])
                    .await;
            }
        }
    };

    // Flushed before the stop.
    let node = ServeProcess::start_with(&dir, NodeOptions::default());
    let mut client = node.sync_client().await;
    for transaction in &transactions[..3] {
        client.send_transaction("pg", transaction).await.unwrap();
    }
    node.wait_durable(&mut client, "pg", 3).await;
    assert!(node.terminate().success());

    // Still pending at the stop: a node that never flushes on its own.
    let node =
        ServeProcess::start_with(&dir, NodeOptions::default().arg("--max-lag-ms", 3_600_000));
    let mut client = node.sync_client().await;
    let response = client.probe("pg").await;
    assert!(response.first);
    assert_eq!(response.durable_sequence_number, Some(3));
    for transaction in &transactions[3..] {
        client.send_transaction("pg", transaction).await.unwrap();
    }
    assert_eq!(
        client.probe("pg").await.durable_sequence_number,
        Some(3),
        "nothing flushes with a lag of an hour"
    );
    assert!(node.terminate().success());

    for _ in 0..2 {
        let node = ServeProcess::start_with(&dir, NodeOptions::default());
        let mut client = node.sync_client().await;
        let response = client.probe("pg").await;
        assert!(response.first);
        assert_eq!(response.memory_sequence_number, Some(6));
        node.wait_durable(&mut client, "pg", 6).await;
        check(model.clone()).await;
        // A resent transaction is acknowledged and not applied again.
        let again = client
            .send_transaction("pg", &transactions[5])
            .await
            .unwrap();
        assert_eq!(again.memory_sequence_number, Some(6));
        assert!(node.terminate().success());
    }

    // A replayed insert of an existing key replaces the row.
    let node = ServeProcess::start_with(&dir, NodeOptions::default());
    let mut client = node.sync_client().await;
    let (key, row) = model.tables["r1"].iter().next().unwrap();
    let replay = Message::new(
        "r1",
        &["id"],
        usual_values(),
        vec![Change::Insert {
            key: key.clone(),
            set: row.clone().into_iter().collect(),
        }],
    );
    client.send("pg", Some(7), &replay).await;
    model.apply(&replay);
    node.wait_durable(&mut client, "pg", 7).await;
    check(model.clone()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_s3_default_store_and_an_s3_client_store_are_flushed() {
    let Some(moto) = start_moto() else {
        return;
    };
    create_bucket(&moto.endpoint, "lake");
    let tmp = tempfile::tempdir().unwrap();
    let dir = data_dir(&tmp);
    // The default store's options come from the environment.
    let mut options = NodeOptions::default().arg("--default-store", "s3://lake/prefix");
    for (key, value) in s3_options(&moto.endpoint) {
        options = options.env(&key.to_uppercase(), value);
    }
    let node = ServeProcess::start_with(&dir, options);
    let mut client = node.sync_client().await;
    let mut model = Model::default();
    let mut rng = Rng::new(3);
    let transactions = generate_transactions(&mut model, &mut rng, &["s3t"], 1, 3, 30);
    for transaction in &transactions {
        client.send_transaction("pg", transaction).await.unwrap();
    }
    node.wait_durable(&mut client, "pg", 3).await;
    let location =
        flightlog::identity::TableId::parse("s3://lake/prefix", &s3_options(&moto.endpoint), "s3t")
            .unwrap();
    model.assert_table("s3t", &location, &["id"]).await;

    // A client-supplied S3 store with its options in the command.
    let message = Message::new(
        "via-command",
        &["id"],
        usual_values(),
        vec![Change::Insert {
            key: vec![1],
            set: set(&[("name", text("s3")), ("amount", int(1))]),
        }],
    )
    .with_store("s3://lake/other", s3_options(&moto.endpoint));
    client.send("pg", Some(4), &message).await;
    model.apply(&message);
    node.wait_durable(&mut client, "pg", 4).await;
    let location = flightlog::identity::TableId::parse(
        "s3://lake/other",
        &s3_options(&moto.endpoint),
        "via-command",
    )
    .unwrap();
    model.assert_table("via-command", &location, &["id"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_stays_bounded_while_pending_bytes_exceed_the_low_watermark() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = data_dir(&tmp);
    let low_watermark: u64 = 4 << 20;
    let node = ServeProcess::start_with(
        &dir,
        NodeOptions::default()
            .arg("--max-lag-ms", 5_000)
            .arg("--pending-bytes-low-watermark", low_watermark)
            .arg("--segment-bytes", 8 << 20),
    );
    let mut client = node.sync_client().await;
    let idle = node.rss_kib();
    let mut peak = idle;
    let transactions = 24u64;
    let rows = 20_000i64;
    let mut sent_bytes = 0u64;
    for t in 0..transactions {
        let message = Message::new(
            &format!("mem{}", t % 4),
            &["id"],
            usual_values(),
            (0..rows)
                .map(|i| {
                    let id = t as i64 * rows + i;
                    Change::Insert {
                        key: vec![id],
                        set: set(&[("name", text(&format!("{id:064}"))), ("amount", int(id))]),
                    }
                })
                .collect(),
        );
        sent_bytes += message.batch().get_array_memory_size() as u64;
        client.send("pg", Some(t + 1), &message).await;
        let now = node.rss_kib();
        if now.total > peak.total {
            peak = now;
        }
    }
    // Memory pressure flushes while the puts go on; the tail by lag.
    let drained = drain_watching_rss(&node, &mut client, "pg", transactions).await;
    if drained.total > peak.total {
        peak = drained;
    }
    let end = node.rss_kib();
    println!(
        "memory: sent {} MiB through a {} MiB low watermark; RSS idle {} MiB, peak {} MiB (anon {} MiB, file {} MiB), end {} MiB",
        sent_bytes >> 20,
        low_watermark >> 20,
        idle.total >> 10,
        peak.total >> 10,
        peak.anon >> 10,
        peak.file >> 10,
        end.total >> 10
    );
    // A loose sanity bound, not a measurement.
    assert!(peak.total < 2 << 20, "peak RSS {} KiB", peak.total);
}

/// Probes `origin` until its durable sequence is `sequence`, sampling the
/// node's RSS at each probe; returns the largest sample.
async fn drain_watching_rss(
    node: &ServeProcess,
    client: &mut Client,
    origin: &str,
    sequence: u64,
) -> common::Rss {
    let mut peak = node.rss_kib();
    let started = Instant::now();
    loop {
        let response = client.probe(origin).await;
        let now = node.rss_kib();
        if now.total > peak.total {
            peak = now;
        }
        if response.durable_sequence_number == Some(sequence) {
            return peak;
        }
        assert!(
            started.elapsed() < DEADLINE,
            "{response:?}; log:\n{}",
            node.log_text()
        );
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
}

/// Commits of the table at `log` that carry flightlog's
/// commit info (the flushes; the create commit has none).
fn flush_commits(log: &std::path::Path) -> usize {
    let mut commits = 0;
    for entry in std::fs::read_dir(log).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "json") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        if text.lines().any(|line| line.contains("\"flightlog\"")) {
            commits += 1;
        }
    }
    commits
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_of_ten_times_the_memory_budget_drains_in_bounded_flushes() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = data_dir(&tmp);
    let budget: u64 = 8 << 20;
    let never = (1u64 << 40).to_string();
    // First a node that never flushes builds the backlog, then dies.
    let node = ServeProcess::start_with(
        &dir,
        NodeOptions::default()
            .arg("--max-lag-ms", 3_600_000)
            .arg("--table-flush-bytes", &never)
            .arg("--pending-bytes-low-watermark", &never)
            .arg("--pending-bytes-high-watermark", &never),
    );
    let idle = node.rss_kib();
    let mut client = node.sync_client().await;
    let mut model = Model::default();
    let rows = 10_000i64;
    let mut sent_bytes = 0u64;
    let mut sequence = 0u64;
    while sent_bytes < 10 * budget {
        sequence += 1;
        let table = sequence % 4;
        let message = Message::new(
            &format!("budget{table}"),
            &["id"],
            usual_values(),
            (0..rows)
                .map(|i| {
                    // Tables 0-2: fresh keys (insert-only flushes); table 3:
                    // the same keys again (updates, the general squash).
                    let id = if table == 3 {
                        i
                    } else {
                        sequence as i64 * rows + i
                    };
                    let set = set(&[
                        ("name", text(&format!("{sequence}-{id:060}"))),
                        ("amount", int(id)),
                    ]);
                    if table == 3 && sequence > 4 {
                        Change::Update {
                            old: vec![id],
                            new: vec![id],
                            set,
                        }
                    } else {
                        Change::Insert { key: vec![id], set }
                    }
                })
                .collect(),
        );
        sent_bytes += message.batch().get_array_memory_size() as u64;
        client.send("pg", Some(sequence), &message).await;
        model.apply(&message);
    }
    node.kill();

    // The node that drains it, under the budget.
    let node = ServeProcess::start_with(
        &dir,
        NodeOptions::default()
            .arg("--max-lag-ms", 10)
            .arg("--memory-budget", budget),
    );
    let mut client = node.sync_client().await;
    let peak = drain_watching_rss(&node, &mut client, "pg", sequence).await;
    let log = node.log_text();
    assert!(!log.contains("larger than a flush may read"), "{log}");
    let mut commits = Vec::new();
    for table in 0..4 {
        let path = format!("budget{table}");
        model
            .assert_table(&path, &lake_table(&dir, &path), &["id"])
            .await;
        commits.push(flush_commits(
            &dir.join("lake").join(&path).join("_delta_log"),
        ));
    }
    println!(
        "memory budget: {} MiB of Arrow data in {sequence} transactions drained under a {} MiB budget by {commits:?} commits per table; RSS idle {} MiB, peak {} MiB (anon {} MiB, file {} MiB)",
        sent_bytes >> 20,
        budget >> 20,
        idle.total >> 10,
        peak.total >> 10,
        peak.anon >> 10,
        peak.file >> 10,
    );
    // A loose sanity bound, not the measurement (that is compare.py's):
    // before the budget this drain held ~10x the budget of anonymous memory.
    assert!(
        peak.anon < idle.anon + 4 * (budget >> 10),
        "anonymous RSS peaked at {} KiB (idle {} KiB) under a {} KiB budget",
        peak.anon,
        idle.anon,
        budget >> 10
    );
    // Each table's quarter of the backlog is ~2.5 budgets, a flush reads a
    // quarter of one: without the budget each table drains in one commit.
    assert!(
        commits.iter().all(|c| *c >= 3),
        "commits per table {commits:?}"
    );
}
