//! Change messages and the model of the tables: a [`Client`] that sends
//! [`Message`]s and [`Transaction`]s through the one `do_put` of
//! [`super::put`], messages of key, value and CHANGED columns of several
//! types, a [`Model`] of what each table must hold (a `BTreeMap` per table,
//! applied change by change), the Delta tables read back and compared row by
//! row, and seeded workloads. The nodes themselves are started by
//! [`super::ServeProcess`].

#![allow(dead_code, unreachable_pub, clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, Decimal128Array, Int64Array, RecordBatch, StringArray,
};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Decimal128Type, Field, Int64Type, Schema, SchemaRef};
use arrow_flight::FlightClient;
use flightlog::identity::TableId as TableLocation;
use flightlog::lake::read_table;
use flightlog::proto::schema::StorageLocation;
use flightlog::proto::sync::{ColumnDescriptor, ColumnRole, DataSyncCommand, DataSyncResponse};

pub use super::DEADLINE;

// ------------------------------------------------------------------- client

/// A Flight client speaking the sync protocol.
pub struct Client {
    inner: FlightClient,
}

impl Client {
    pub async fn connect(addr: SocketAddr) -> Client {
        Client {
            inner: super::connect(addr).await,
        }
    }

    /// One `do_put`: the command (as `Any{type_url: "DataSyncCommand"}` in a
    /// CMD descriptor), the schema message, then `batches`; the decoded
    /// `DataSyncResponse`.
    pub async fn put(
        &mut self,
        command: &DataSyncCommand,
        schema: SchemaRef,
        batches: Vec<RecordBatch>,
    ) -> Result<DataSyncResponse, tonic::Status> {
        super::put(&mut self.inner, command, schema, batches).await
    }

    /// A probe: a message with no rows and no sequence number.
    pub async fn probe(&mut self, origin: &str) -> DataSyncResponse {
        let message = Message::new("probe", &["id"], usual_values(), Vec::new());
        let command = message.command(origin, None);
        self.put(&command, message.batch().schema(), Vec::new())
            .await
            .expect("probe")
    }

    /// Sends `message` for `origin` (with `sequence` when it closes a
    /// transaction); panics unless accepted.
    pub async fn send(
        &mut self,
        origin: &str,
        sequence: Option<u64>,
        message: &Message,
    ) -> DataSyncResponse {
        let response = self.try_send(origin, sequence, message).await.unwrap();
        assert!(response.accepted, "not accepted: {response:?}");
        response
    }

    pub async fn try_send(
        &mut self,
        origin: &str,
        sequence: Option<u64>,
        message: &Message,
    ) -> Result<DataSyncResponse, tonic::Status> {
        let command = message.command(origin, sequence);
        let batch = message.batch();
        self.put(&command, batch.schema(), vec![batch]).await
    }

    /// Sends a whole transaction: every message, the last one closing it.
    pub async fn send_transaction(
        &mut self,
        origin: &str,
        transaction: &Transaction,
    ) -> Result<DataSyncResponse, tonic::Status> {
        let last = transaction.messages.len() - 1;
        let mut response = None;
        for (i, message) in transaction.messages.iter().enumerate() {
            let sequence = (i == last).then_some(transaction.sequence);
            let answer = self.try_send(origin, sequence, message).await?;
            assert!(answer.accepted, "not accepted: {answer:?}");
            response = Some(answer);
        }
        Ok(response.unwrap())
    }

    /// Polls with probes until `origin`'s durable sequence reaches
    /// `sequence`; checks on the way that durable never passes memory.
    pub async fn wait_durable(&mut self, origin: &str, sequence: u64) -> DataSyncResponse {
        let started = Instant::now();
        loop {
            let response = self.probe(origin).await;
            assert!(
                response.durable_sequence_number <= response.memory_sequence_number,
                "durable ahead of memory: {response:?}"
            );
            if response.durable_sequence_number >= Some(sequence) {
                return response;
            }
            assert!(
                started.elapsed() < DEADLINE,
                "origin {origin}: durable sequence did not reach {sequence} within {DEADLINE:?}: {response:?}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

// ----------------------------------------------------------------- messages

/// A key column value set: one `i64` per key column.
pub type Key = Vec<i64>;

/// One cell as the model and the tables see it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Value {
    Int(i64),
    Str(String),
    Dec(i128),
}

pub type Cell = Option<Value>;
pub type Row = BTreeMap<String, Cell>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColumnType {
    Int64,
    Utf8,
    Decimal(u8, i8),
}

impl ColumnType {
    fn data_type(self) -> DataType {
        match self {
            ColumnType::Int64 => DataType::Int64,
            ColumnType::Utf8 => DataType::Utf8,
            ColumnType::Decimal(p, s) => DataType::Decimal128(p, s),
        }
    }
}

/// A VALUE column of a message, with or without a CHANGED partner.
#[derive(Debug, Clone)]
pub struct ValueColumn {
    pub name: String,
    pub column_type: ColumnType,
    pub changed: bool,
}

pub fn value(name: &str, column_type: ColumnType, changed: bool) -> ValueColumn {
    ValueColumn {
        name: name.into(),
        column_type,
        changed,
    }
}

/// The usual value columns: `name` (text) and `amount` (int), both with
/// CHANGED partners.
pub fn usual_values() -> Vec<ValueColumn> {
    vec![
        value("name", ColumnType::Utf8, true),
        value("amount", ColumnType::Int64, true),
    ]
}

/// One row change. `set` lists the value columns that carry a new value;
/// the message's other value columns are sent with CHANGED = false (or, with
/// no CHANGED partner, as null, which overwrites).
#[derive(Debug, Clone)]
pub enum Change {
    Insert {
        key: Key,
        set: Vec<(String, Cell)>,
    },
    Update {
        old: Key,
        new: Key,
        set: Vec<(String, Cell)>,
    },
    Delete {
        key: Key,
    },
}

pub fn set(cells: &[(&str, Cell)]) -> Vec<(String, Cell)> {
    cells
        .iter()
        .map(|(name, cell)| (name.to_string(), cell.clone()))
        .collect()
}

pub fn int(v: i64) -> Cell {
    Some(Value::Int(v))
}

pub fn text(v: &str) -> Cell {
    Some(Value::Str(v.into()))
}

/// One `do_put` message: a table, its column layout and its rows.
#[derive(Debug, Clone)]
pub struct Message {
    pub path: String,
    pub keys: Vec<String>,
    pub values: Vec<ValueColumn>,
    pub changes: Vec<Change>,
    /// Arrow field order reversed (roles say which field is which).
    pub reversed: bool,
    pub store: Option<StorageLocation>,
}

impl Message {
    pub fn new(path: &str, keys: &[&str], values: Vec<ValueColumn>, changes: Vec<Change>) -> Self {
        Message {
            path: path.into(),
            keys: keys.iter().map(|k| k.to_string()).collect(),
            values,
            changes,
            reversed: false,
            store: None,
        }
    }

    pub fn reversed(mut self) -> Self {
        self.reversed = true;
        self
    }

    pub fn with_store(mut self, location: &str, options: HashMap<String, String>) -> Self {
        self.store = Some(StorageLocation {
            location: location.into(),
            options,
            name: String::new(),
        });
        self
    }

    /// (role, logical name, arrow field, array) in natural order.
    fn columns(&self) -> Vec<(ColumnRole, String, Field, ArrayRef)> {
        let mut columns = Vec::new();
        for (i, key) in self.keys.iter().enumerate() {
            let old: Int64Array = self
                .changes
                .iter()
                .map(|c| match c {
                    Change::Insert { .. } => None,
                    Change::Update { old, .. } => Some(old[i]),
                    Change::Delete { key } => Some(key[i]),
                })
                .collect();
            let new: Int64Array = self
                .changes
                .iter()
                .map(|c| match c {
                    Change::Insert { key, .. } => Some(key[i]),
                    Change::Update { new, .. } => Some(new[i]),
                    Change::Delete { .. } => None,
                })
                .collect();
            columns.push((
                ColumnRole::OldPk,
                key.clone(),
                Field::new(format!("old_{key}"), DataType::Int64, true),
                Arc::new(old) as ArrayRef,
            ));
            columns.push((
                ColumnRole::NewPk,
                key.clone(),
                Field::new(format!("new_{key}"), DataType::Int64, true),
                Arc::new(new) as ArrayRef,
            ));
        }
        for column in &self.values {
            let cells: Vec<Option<&Cell>> = self
                .changes
                .iter()
                .map(|c| match c {
                    Change::Insert { set, .. } | Change::Update { set, .. } => set
                        .iter()
                        .find(|(name, _)| *name == column.name)
                        .map(|(_, cell)| cell),
                    Change::Delete { .. } => None,
                })
                .collect();
            let array = cells_to_array(column.column_type, &cells);
            columns.push((
                ColumnRole::Value,
                column.name.clone(),
                Field::new(
                    format!("v_{}", column.name),
                    column.column_type.data_type(),
                    true,
                ),
                array,
            ));
            if column.changed {
                let changed: BooleanArray = cells.iter().map(|c| Some(c.is_some())).collect();
                columns.push((
                    ColumnRole::Changed,
                    column.name.clone(),
                    Field::new(format!("c_{}", column.name), DataType::Boolean, true),
                    Arc::new(changed) as ArrayRef,
                ));
            }
        }
        if self.reversed {
            columns.reverse();
        }
        columns
    }

    pub fn batch(&self) -> RecordBatch {
        let columns = self.columns();
        let schema = Schema::new(
            columns
                .iter()
                .map(|(_, _, f, _)| f.clone())
                .collect::<Vec<_>>(),
        );
        RecordBatch::try_new(
            Arc::new(schema),
            columns.into_iter().map(|(_, _, _, a)| a).collect(),
        )
        .unwrap()
    }

    pub fn command(&self, origin: &str, sequence: Option<u64>) -> DataSyncCommand {
        DataSyncCommand {
            path: self.path.clone(),
            store: self.store.clone(),
            column_descriptors: self
                .columns()
                .into_iter()
                .map(|(role, name, _, _)| ColumnDescriptor {
                    role: role as i32,
                    name,
                })
                .collect(),
            origin: origin.into(),
            sequence_number: sequence,
            format: 0,
        }
    }
}

fn cells_to_array(column_type: ColumnType, cells: &[Option<&Cell>]) -> ArrayRef {
    let flat = cells.iter().map(|c| c.and_then(|c| c.as_ref()));
    match column_type {
        ColumnType::Int64 => Arc::new(
            flat.map(|v| {
                v.map(|v| match v {
                    Value::Int(i) => *i,
                    other => panic!("not an int: {other:?}"),
                })
            })
            .collect::<Int64Array>(),
        ),
        ColumnType::Utf8 => Arc::new(
            flat.map(|v| {
                v.map(|v| match v {
                    Value::Str(s) => s.clone(),
                    other => panic!("not a string: {other:?}"),
                })
            })
            .collect::<StringArray>(),
        ),
        ColumnType::Decimal(p, s) => Arc::new(
            flat.map(|v| {
                v.map(|v| match v {
                    Value::Dec(d) => *d,
                    other => panic!("not a decimal: {other:?}"),
                })
            })
            .collect::<Decimal128Array>()
            .with_precision_and_scale(p, s)
            .unwrap(),
        ),
    }
}

/// A transaction: messages of one origin, the last carrying `sequence`.
#[derive(Debug, Clone)]
pub struct Transaction {
    pub sequence: u64,
    pub messages: Vec<Message>,
}

// -------------------------------------------------------------------- model

/// What the tables must hold: per table path, rows by key.
#[derive(Debug, Clone, Default)]
pub struct Model {
    pub tables: BTreeMap<String, BTreeMap<Key, Row>>,
    /// Every value column seen per table.
    pub columns: BTreeMap<String, BTreeSet<String>>,
}

impl Model {
    /// Applies one message, change by change, per PROTOCOL.md.
    pub fn apply(&mut self, message: &Message) {
        let table = self.tables.entry(message.path.clone()).or_default();
        let columns = self.columns.entry(message.path.clone()).or_default();
        columns.extend(message.values.iter().map(|c| c.name.clone()));
        let lookup = |set: &[(String, Cell)], name: &str| {
            set.iter()
                .find(|(n, _)| n == name)
                .map(|(_, cell)| cell.clone())
        };
        for change in &message.changes {
            match change {
                Change::Insert { key, set } => {
                    let row = message
                        .values
                        .iter()
                        .map(|c| (c.name.clone(), lookup(set, &c.name).flatten()))
                        .collect();
                    table.insert(key.clone(), row);
                }
                Change::Update { old, new, set } => {
                    let mut row = table.remove(old).unwrap_or_default();
                    for column in &message.values {
                        match lookup(set, &column.name) {
                            Some(cell) => {
                                row.insert(column.name.clone(), cell);
                            }
                            None if !column.changed => {
                                row.insert(column.name.clone(), None);
                            }
                            None => {}
                        }
                    }
                    table.insert(new.clone(), row);
                }
                Change::Delete { key } => {
                    table.remove(key);
                }
            }
        }
    }

    pub fn apply_transaction(&mut self, transaction: &Transaction) {
        for message in &transaction.messages {
            self.apply(message);
        }
    }

    /// The model's rows of `path` with every column of the table present.
    pub fn expected(&self, path: &str) -> BTreeMap<Key, Row> {
        let columns = self.columns.get(path).cloned().unwrap_or_default();
        self.tables
            .get(path)
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .map(|(key, row)| {
                let full = columns
                    .iter()
                    .map(|c| (c.clone(), row.get(c).cloned().flatten()))
                    .collect();
                (key, full)
            })
            .collect()
    }

    /// Reads the table at `location` and asserts it equals the model's
    /// `path`, row by row, with the same value columns.
    pub async fn assert_table(&self, path: &str, location: &TableLocation, keys: &[&str]) {
        let (columns, actual) = table_rows(location, keys).await;
        let expected_columns = self.columns.get(path).cloned().unwrap_or_default();
        assert_eq!(
            columns, expected_columns,
            "table {path}: value columns differ"
        );
        assert_rows_equal(path, &self.expected(path), &actual);
    }
}

/// Compares two row maps, reporting the first differences readably.
pub fn assert_rows_equal(path: &str, expected: &BTreeMap<Key, Row>, actual: &BTreeMap<Key, Row>) {
    if expected == actual {
        return;
    }
    let mut report = Vec::new();
    for (key, row) in expected {
        match actual.get(key) {
            None => report.push(format!("missing {key:?}: {row:?}")),
            Some(got) if got != row => {
                report.push(format!("differs {key:?}: expected {row:?}, got {got:?}"))
            }
            _ => {}
        }
    }
    for (key, row) in actual {
        if !expected.contains_key(key) {
            report.push(format!("unexpected {key:?}: {row:?}"));
        }
    }
    let shown: Vec<_> = report.iter().take(20).collect();
    panic!(
        "table {path}: {} rows expected, {} found, {} differences; first: {shown:#?}",
        expected.len(),
        actual.len(),
        report.len()
    );
}

/// The table's rows by key (key columns `keys`, Int64), and its value columns.
/// Panics on a duplicate key: a flush applied twice shows up here.
pub async fn table_rows(
    location: &TableLocation,
    keys: &[&str],
) -> (BTreeSet<String>, BTreeMap<Key, Row>) {
    let batches = read_table(location).await.expect("read table");
    let mut rows = BTreeMap::new();
    let mut columns = BTreeSet::new();
    for batch in &batches {
        let schema = batch.schema();
        let key_columns: Vec<&Int64Array> = keys
            .iter()
            .map(|k| {
                batch
                    .column_by_name(k)
                    .unwrap_or_else(|| panic!("no key column {k}"))
                    .as_primitive::<Int64Type>()
            })
            .collect();
        let value_columns: Vec<(String, ArrayRef)> = schema
            .fields()
            .iter()
            .zip(batch.columns())
            .filter(|(f, _)| !keys.contains(&f.name().as_str()))
            .map(|(f, a)| (f.name().clone(), a.clone()))
            .collect();
        for (name, _) in &value_columns {
            columns.insert(name.clone());
        }
        for row in 0..batch.num_rows() {
            let key: Key = key_columns
                .iter()
                .map(|c| {
                    assert!(c.is_valid(row), "null key");
                    c.value(row)
                })
                .collect();
            let values = value_columns
                .iter()
                .map(|(name, array)| (name.clone(), cell_at(array, row)))
                .collect();
            if let Some(previous) = rows.insert(key.clone(), values) {
                panic!("duplicate key {key:?} in the table (previous row {previous:?})");
            }
        }
    }
    (columns, rows)
}

fn cell_at(array: &ArrayRef, row: usize) -> Cell {
    if array.is_null(row) {
        return None;
    }
    match array.data_type() {
        DataType::Int64 => Some(Value::Int(array.as_primitive::<Int64Type>().value(row))),
        DataType::Decimal128(_, _) => Some(Value::Dec(
            array.as_primitive::<Decimal128Type>().value(row),
        )),
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => {
            let text = cast(&array.slice(row, 1), &DataType::Utf8).unwrap();
            Some(Value::Str(text.as_string::<i32>().value(0).to_string()))
        }
        other => panic!("unexpected column type {other}"),
    }
}

/// Number of rows in the table (0 when it does not exist yet).
pub async fn row_count(location: &TableLocation) -> usize {
    read_table(location)
        .await
        .expect("read table")
        .iter()
        .map(|b| b.num_rows())
        .sum()
}

/// The table `path` under the node's default store `<data-dir>/lake`.
pub fn lake_table(data_dir: &Path, path: &str) -> TableLocation {
    store_table(&format!("file://{}", data_dir.join("lake").display()), path)
}

pub fn store_table(root: &str, path: &str) -> TableLocation {
    TableLocation::parse(root, &HashMap::new(), path).unwrap()
}

// ----------------------------------------------------------------- workload

/// A small deterministic generator (xorshift64*).
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.max(1))
    }

    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Generates `count` transactions (sequences `first_sequence..`) of mixed
/// inserts, full and partial updates, key changes and deletes over `tables`
/// (single key `id`, the usual value columns), consistent with `model`,
/// which it advances.
pub fn generate_transactions(
    model: &mut Model,
    rng: &mut Rng,
    tables: &[&str],
    first_sequence: u64,
    count: usize,
    rows_per_message: usize,
) -> Vec<Transaction> {
    let mut out = Vec::with_capacity(count);
    for t in 0..count {
        let messages_in_transaction = 1 + rng.below(3) as usize;
        let mut messages = Vec::new();
        for _ in 0..messages_in_transaction {
            let path = tables[rng.below(tables.len() as u64) as usize];
            let mut changes = Vec::new();
            // A scratch copy so changes within the message see each other.
            let mut scratch = model.clone();
            for _ in 0..rows_per_message {
                let existing: Vec<Key> = scratch
                    .tables
                    .get(path)
                    .map(|t| t.keys().cloned().collect())
                    .unwrap_or_default();
                let pick = rng.below(100);
                let change = if existing.is_empty() || pick < 50 {
                    let id = loop {
                        let candidate = rng.below(1_000_000) as i64;
                        if !existing.contains(&vec![candidate]) {
                            break candidate;
                        }
                    };
                    Change::Insert {
                        key: vec![id],
                        set: set(&[
                            ("name", text(&format!("n{id}-{t}"))),
                            ("amount", int(rng.below(1000) as i64)),
                        ]),
                    }
                } else {
                    let key = existing[rng.below(existing.len() as u64) as usize].clone();
                    match pick {
                        50..=69 => Change::Update {
                            old: key.clone(),
                            new: key,
                            set: set(&[
                                ("name", text(&format!("u{t}"))),
                                ("amount", int(rng.below(1000) as i64)),
                            ]),
                        },
                        70..=79 => Change::Update {
                            old: key.clone(),
                            new: key,
                            set: set(&[("amount", int(-(rng.below(1000) as i64)))]),
                        },
                        80..=87 => {
                            let new_id = loop {
                                let candidate = 1_000_000 + rng.below(1_000_000) as i64;
                                if !existing.contains(&vec![candidate]) {
                                    break candidate;
                                }
                            };
                            let row = scratch.tables[path][&key].clone();
                            // Every other one carries a single column and
                            // keeps the rest: applied twice, it would lose it.
                            let set = if pick.is_multiple_of(2) {
                                row.into_iter().collect()
                            } else {
                                set(&[("amount", int(rng.below(1000) as i64))])
                            };
                            Change::Update {
                                old: key,
                                new: vec![new_id],
                                set,
                            }
                        }
                        _ => Change::Delete { key },
                    }
                };
                let one = Message::new(path, &["id"], usual_values(), vec![change.clone()]);
                scratch.apply(&one);
                changes.push(change);
            }
            let message = Message::new(path, &["id"], usual_values(), changes);
            model.apply(&message);
            messages.push(message);
        }
        out.push(Transaction {
            sequence: first_sequence + t as u64,
            messages,
        });
    }
    out
}
