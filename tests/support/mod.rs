//! Helpers for the flush tests: run the real `flightlog` binary, speak the
//! sync protocol to it through `arrow_flight::FlightClient`, build change
//! messages, keep a simple model of what the tables must hold (a `BTreeMap`
//! per table, applied change by change) and read the Delta tables back.

#![allow(dead_code, unreachable_pub, clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, Decimal128Array, Int64Array, RecordBatch, StringArray,
};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Decimal128Type, Field, Int64Type, Schema, SchemaRef};
use arrow_flight::encode::FlightDataEncoderBuilder;
use arrow_flight::error::FlightError;
use arrow_flight::{FlightClient, FlightDescriptor};
use flightlog::flight::Any;
use flightlog::identity::TableId as TableLocation;
use flightlog::lake::read_table;
use flightlog::proto::schema::StorageLocation;
use flightlog::proto::sync::{ColumnDescriptor, ColumnRole, DataSyncCommand, DataSyncResponse};
use futures::TryStreamExt;
use prost::Message as _;

/// How long any wait in these tests may take before it is a failure.
pub const DEADLINE: Duration = Duration::from_secs(180);

// ------------------------------------------------------------------ process

/// The `flightlog` binary: `FLIGHTLOG_BIN` when set (a build directory
/// shared by several checkouts overwrites `target/debug/flightlog`), else
/// the one cargo built for these tests.
pub fn binary() -> PathBuf {
    std::env::var_os("FLIGHTLOG_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_flightlog")))
}

/// A running `flightlog serve`, killed (SIGKILL) on drop.
pub struct NodeProcess {
    child: Child,
    pub addr: SocketAddr,
    pub data_dir: PathBuf,
    pub log: PathBuf,
}

/// Flags and environment for [`NodeProcess::start`].
#[derive(Debug, Clone, Default)]
pub struct NodeOptions {
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
}

impl NodeOptions {
    pub fn arg(mut self, flag: &str, value: impl ToString) -> Self {
        self.args.push(flag.to_string());
        self.args.push(value.to_string());
        self
    }

    pub fn env(mut self, key: &str, value: impl ToString) -> Self {
        self.env.push((key.to_string(), value.to_string()));
        self
    }

    /// Whether `flag` was given (so the default below is not added).
    fn has(&self, flag: &str) -> bool {
        self.args.iter().any(|a| a == flag)
    }
}

impl NodeProcess {
    /// Starts the binary on a free port with `--max-lag-ms 50` (unless the
    /// options say otherwise) and waits for its start line.
    pub fn start(data_dir: &Path, options: NodeOptions) -> NodeProcess {
        std::fs::create_dir_all(data_dir).unwrap();
        let log = data_dir.with_extension("log");
        let stderr = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        let mut command = Command::new(binary());
        command
            .arg("serve")
            .args(["--listen", "127.0.0.1:0"])
            .arg("--data-dir")
            .arg(data_dir);
        if !options.has("--max-lag-ms") {
            command.args(["--max-lag-ms", "50"]);
        }
        command
            .args(&options.args)
            .env_remove("FLIGHTLOG_FAILPOINT")
            .env("RUST_LOG", "info")
            .envs(options.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr);
        let mut child = command.spawn().expect("spawn flightlog");
        let stdout = child.stdout.take().unwrap();
        let (lines, received) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(stdout);
            let mut line = String::new();
            let _ = reader.read_line(&mut line);
            let _ = lines.send(line);
            // Keep draining so the node never blocks on a full pipe.
            let _ = std::io::copy(&mut reader, &mut std::io::sink());
        });
        let line = match received.recv_timeout(DEADLINE) {
            Ok(line) => line,
            Err(_) => {
                let _ = child.kill();
                panic!("no start line; log:\n{}", read_log(&log));
            }
        };
        let Some(rest) = line.strip_prefix("flightlog listening on ") else {
            let _ = child.kill();
            let _ = child.wait();
            panic!("unexpected start line {line:?}; log:\n{}", read_log(&log));
        };
        let addr = rest.split_whitespace().next().unwrap().parse().unwrap();
        NodeProcess {
            child,
            addr,
            data_dir: data_dir.to_path_buf(),
            log,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub async fn client(&self) -> Client {
        Client::connect(self.addr).await
    }

    /// SIGKILL and reap.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then wait for a clean exit.
    pub fn stop(mut self) -> ExitStatus {
        // SAFETY-free: `kill` the command, not libc, to stay within safe code.
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        self.wait_exit()
    }

    /// Waits (bounded) for the process to exit by itself.
    pub fn wait_exit(&mut self) -> ExitStatus {
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            if started.elapsed() > DEADLINE {
                panic!(
                    "node did not exit within {DEADLINE:?}; log:\n{}",
                    read_log(&self.log)
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Polls `origin` with probes until its durable sequence reaches
    /// `sequence`; fails fast when the node logs a failed flush.
    pub async fn wait_durable(
        &self,
        client: &mut Client,
        origin: &str,
        sequence: u64,
    ) -> DataSyncResponse {
        let started = Instant::now();
        let mut polls = 0u64;
        loop {
            let response = client.probe(origin).await;
            assert!(
                response.durable_sequence_number <= response.memory_sequence_number,
                "durable ahead of memory: {response:?}"
            );
            if response.durable_sequence_number >= Some(sequence) {
                return response;
            }
            polls += 1;
            if polls.is_multiple_of(50) {
                let log = self.log_text();
                assert!(!log.contains("flush failed"), "a flush failed; log:\n{log}");
            }
            assert!(
                started.elapsed() < DEADLINE,
                "origin {origin}: durable sequence did not reach {sequence} within {DEADLINE:?}: {response:?}; log:\n{}",
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    pub fn log_text(&self) -> String {
        read_log(&self.log)
    }

    /// Resident set size in KiB (`VmRSS`), with its anonymous and file parts.
    pub fn rss_kib(&self) -> Rss {
        rss_of(self.child.id())
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[derive(Debug, Clone, Copy, Default)]
pub struct Rss {
    pub total: u64,
    pub anon: u64,
    pub file: u64,
}

pub fn rss_of(pid: u32) -> Rss {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    Rss {
        total: field("VmRSS:"),
        anon: field("RssAnon:"),
        file: field("RssFile:"),
    }
}

pub fn read_log(path: &Path) -> String {
    let mut text = String::new();
    if let Ok(mut file) = std::fs::File::open(path) {
        let _ = file.read_to_string(&mut text);
    }
    // The tail is what matters.
    let start = text.len().saturating_sub(20_000);
    let start = (start..text.len())
        .find(|i| text.is_char_boundary(*i))
        .unwrap_or(0);
    text[start..].to_string()
}

/// Number of live WAL segment files (`<20 digits>.wal`) in `<data-dir>/wal`.
pub fn segment_files(data_dir: &Path) -> usize {
    std::fs::read_dir(data_dir.join("wal"))
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| {
            let name = e.file_name().to_string_lossy().to_string();
            name.strip_suffix(".wal")
                .is_some_and(|stem| stem.len() == 20 && stem.bytes().all(|b| b.is_ascii_digit()))
        })
        .count()
}

// ------------------------------------------------------------------- client

/// A Flight client speaking the sync protocol.
pub struct Client {
    inner: FlightClient,
}

impl Client {
    pub async fn connect(addr: SocketAddr) -> Client {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect()
            .await
            .expect("connect to flightlog");
        Client {
            inner: FlightClient::new(channel),
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
        let any = Any {
            type_url: "DataSyncCommand".into(),
            value: command.encode_to_vec(),
        };
        let descriptor = FlightDescriptor::new_cmd(any.encode_to_vec());
        let stream = FlightDataEncoderBuilder::new()
            .with_schema(schema)
            .with_flight_descriptor(Some(descriptor))
            .build(futures::stream::iter(batches.into_iter().map(Ok)));
        let results: Vec<_> = self
            .inner
            .do_put(stream)
            .await
            .map_err(into_status)?
            .try_collect()
            .await
            .map_err(into_status)?;
        assert_eq!(results.len(), 1, "exactly one PutResult");
        Ok(DataSyncResponse::decode(results[0].app_metadata.as_ref()).expect("DataSyncResponse"))
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

fn into_status(error: FlightError) -> tonic::Status {
    match error {
        FlightError::Tonic(status) => *status,
        other => tonic::Status::unknown(other.to_string()),
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
