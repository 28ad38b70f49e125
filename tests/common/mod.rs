//! Helpers shared by the integration tests (and `benches/ingest.rs`, which
//! includes this file by path). Three groups:
//!
//! - **Nodes.** [`InProcessNode`] runs `Node` + the Flight service on an
//!   ephemeral port inside the test's runtime (no flusher, so the WAL only
//!   grows by what puts write). [`ServeProcess`] runs the real binary
//!   (`flightlog serve --listen 127.0.0.1:0 --data-dir <dir>`), parses the
//!   address from its start line, and is killed with SIGKILL
//!   (`Child::kill`) to model a crash.
//! - **Commands and rows.** [`command`], [`key_value_descriptors`],
//!   [`key_value_schema`], [`inserts`]: a `DataSyncCommand` for the usual
//!   test table (`id` Int64 key, `value` Utf8), and [`command_bytes`] to wrap
//!   any command in a protobuf `Any` as clients do.
//! - **Puts and inspection.** [`put`] / [`put_raw`] / [`put_flight_data`]
//!   run one `do_put` with `arrow_flight::FlightClient` and decode the
//!   `DataSyncResponse` from `PutResult.app_metadata`; [`wal_dump`] and
//!   [`wal_verify`] run `flightlog wal dump --json` / `wal verify`.
//!
//! Every wait here is on an explicit signal (a line on stdout, a response) or
//! a poll with a bounded deadline that fails loudly; nothing sleeps to "let
//! things happen".

// Each test binary uses a different subset of these helpers.
#![allow(dead_code, unreachable_pub)]

pub mod model;
pub mod postgres;
pub mod python;
pub mod s3;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::time::Duration;

use arrow::array::{Array, ArrayRef, Int64Array, StringArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::record_batch::RecordBatch;
use arrow_flight::encode::FlightDataEncoderBuilder;
use arrow_flight::error::FlightError;
use arrow_flight::{FlightClient, FlightData, FlightDescriptor};
use bytes::Bytes;
use futures::TryStreamExt;
use prost::Message;

use flightlog::config::Config;
use flightlog::flight::Any;
use flightlog::node::Node;
use flightlog::proto::sync::{ColumnDescriptor, ColumnRole, DataSyncCommand, DataSyncResponse};

/// The `type_url` existing Seafowl clients send.
pub const BARE_TYPE_URL: &str = "DataSyncCommand";
/// The fully qualified `type_url`, also accepted.
pub const PREFIXED_TYPE_URL: &str = "type.googleapis.com/clade.sync.DataSyncCommand";

/// How long a helper waits for the node to start or a condition to hold
/// before failing the test (a guard against hangs, not a timing assertion).
pub const DEADLINE: Duration = Duration::from_secs(180);

/// Path of the `flightlog` binary under test: `FLIGHTLOG_BIN` when set (to
/// run the suite against another build, e.g. the release binary or an older
/// commit), else the one cargo built for this test run.
pub fn binary() -> &'static str {
    static BINARY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    BINARY.get_or_init(|| {
        std::env::var("FLIGHTLOG_BIN")
            .unwrap_or_else(|_| env!("CARGO_BIN_EXE_flightlog").to_owned())
    })
}

// ---------------------------------------------------------------------------
// Commands and rows
// ---------------------------------------------------------------------------

pub fn descriptor(role: ColumnRole, name: &str) -> ColumnDescriptor {
    ColumnDescriptor {
        role: role as i32,
        name: name.to_string(),
    }
}

/// Roles of [`key_value_schema`]: `OLD_PK id`, `NEW_PK id`, `VALUE value`.
pub fn key_value_descriptors() -> Vec<ColumnDescriptor> {
    vec![
        descriptor(ColumnRole::OldPk, "id"),
        descriptor(ColumnRole::NewPk, "id"),
        descriptor(ColumnRole::Value, "value"),
    ]
}

/// `old_id: Int64, new_id: Int64, value: Utf8`, all nullable.
pub fn key_value_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("old_id", DataType::Int64, true),
        Field::new("new_id", DataType::Int64, true),
        Field::new("value", DataType::Utf8, true),
    ]))
}

/// A command on the default store for the key/value table at `path`.
pub fn command(path: &str, origin: &str, sequence_number: Option<u64>) -> DataSyncCommand {
    DataSyncCommand {
        path: path.to_string(),
        store: None,
        column_descriptors: key_value_descriptors(),
        origin: origin.to_string(),
        sequence_number,
        format: 0,
    }
}

/// Inserts of `ids` (old key null, new key = id, value = "v<id>").
pub fn inserts(ids: std::ops::Range<i64>) -> RecordBatch {
    let old: Int64Array = ids.clone().map(|_| None::<i64>).collect();
    let new: Int64Array = ids.clone().map(Some).collect();
    let value: StringArray = ids.map(|id| Some(format!("v{id}"))).collect();
    RecordBatch::try_new(
        key_value_schema(),
        vec![
            Arc::new(old) as ArrayRef,
            Arc::new(new) as ArrayRef,
            Arc::new(value) as ArrayRef,
        ],
    )
    .expect("inserts match key_value_schema")
}

/// The descriptor `cmd` bytes: `command` wrapped in `Any` with `type_url`.
pub fn command_bytes(command: &DataSyncCommand, type_url: &str) -> Bytes {
    Any {
        type_url: type_url.to_string(),
        value: command.encode_to_vec(),
    }
    .encode_to_vec()
    .into()
}

// ---------------------------------------------------------------------------
// Puts
// ---------------------------------------------------------------------------

pub async fn connect(addr: SocketAddr) -> FlightClient {
    try_connect(addr).await.expect("connect to the node")
}

/// [`connect`], or the error (a node that may have died meanwhile).
pub async fn try_connect(addr: SocketAddr) -> Result<FlightClient, tonic::transport::Error> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .expect("valid endpoint")
        .connect()
        .await?;
    Ok(FlightClient::new(channel))
}

/// One `do_put` of `command` (bare `type_url`) with `batches`; the schema
/// message is always sent, so zero batches is a probe or a close.
pub async fn put(
    client: &mut FlightClient,
    command: &DataSyncCommand,
    schema: SchemaRef,
    batches: Vec<RecordBatch>,
) -> Result<DataSyncResponse, tonic::Status> {
    put_raw(
        client,
        command_bytes(command, BARE_TYPE_URL),
        schema,
        batches,
    )
    .await
}

/// Like [`put`] with the key/value schema and `inserts(ids)` (no batch when
/// `ids` is empty). Panics if the node refuses.
pub async fn put_inserts(
    client: &mut FlightClient,
    command: &DataSyncCommand,
    ids: std::ops::Range<i64>,
) -> DataSyncResponse {
    let batches = if ids.is_empty() {
        Vec::new()
    } else {
        vec![inserts(ids)]
    };
    put(client, command, key_value_schema(), batches)
        .await
        .unwrap_or_else(|status| panic!("put {command:?} refused: {status}"))
}

/// A probe: no rows, no sequence number. Panics if the node refuses.
pub async fn probe(client: &mut FlightClient, path: &str, origin: &str) -> DataSyncResponse {
    put_inserts(client, &command(path, origin, None), 0..0).await
}

/// One `do_put` with arbitrary descriptor `cmd` bytes.
pub async fn put_raw(
    client: &mut FlightClient,
    cmd: Bytes,
    schema: SchemaRef,
    batches: Vec<RecordBatch>,
) -> Result<DataSyncResponse, tonic::Status> {
    let stream = FlightDataEncoderBuilder::new()
        .with_flight_descriptor(Some(FlightDescriptor::new_cmd(cmd)))
        .with_schema(schema)
        .build(futures::stream::iter(batches.into_iter().map(Ok)));
    finish_put(client, stream).await
}

/// One `do_put` of hand-made `FlightData` messages.
pub async fn put_flight_data(
    client: &mut FlightClient,
    messages: Vec<FlightData>,
) -> Result<DataSyncResponse, tonic::Status> {
    finish_put(client, futures::stream::iter(messages.into_iter().map(Ok))).await
}

async fn finish_put<S>(
    client: &mut FlightClient,
    stream: S,
) -> Result<DataSyncResponse, tonic::Status>
where
    S: futures::Stream<Item = Result<FlightData, FlightError>> + Send + 'static,
{
    let results: Vec<_> = client
        .do_put(stream)
        .await
        .map_err(into_status)?
        .try_collect()
        .await
        .map_err(into_status)?;
    assert_eq!(results.len(), 1, "exactly one PutResult per do_put");
    Ok(DataSyncResponse::decode(results[0].app_metadata.as_ref())
        .expect("app_metadata is a plain DataSyncResponse"))
}

fn into_status(error: FlightError) -> tonic::Status {
    match error {
        FlightError::Tonic(status) => *status,
        other => tonic::Status::unknown(format!("client-side error: {other}")),
    }
}

// ---------------------------------------------------------------------------
// In-process node
// ---------------------------------------------------------------------------

/// `Node` + Flight service on 127.0.0.1:<ephemeral> in the current runtime,
/// without the flush scheduler. Stops when dropped.
pub struct InProcessNode {
    pub addr: SocketAddr,
    pub node: Arc<Node>,
    pub dir: tempfile::TempDir,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
}

impl InProcessNode {
    /// Starts on a fresh temporary data directory under `parent` (or the
    /// system temp dir), after `configure` adjusts the defaults.
    pub async fn start_in(parent: Option<&Path>, configure: impl FnOnce(&mut Config)) -> Self {
        let dir = match parent {
            Some(parent) => tempfile::tempdir_in(parent),
            None => tempfile::tempdir(),
        }
        .expect("temporary data directory");
        let mut config = Config::for_data_dir(dir.path()).expect("default config");
        configure(&mut config);
        let (node, _state) = Node::open(config).await.expect("node opens");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind an ephemeral port");
        let addr = listener.local_addr().expect("local address");
        let (shutdown, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = flightlog::flight::serve(node.clone(), listener, async {
            let _ = stopped.await;
        });
        tokio::spawn(async move { server.await.expect("flight server runs") });
        InProcessNode {
            addr,
            node,
            dir,
            shutdown: Some(shutdown),
        }
    }

    pub async fn start(configure: impl FnOnce(&mut Config)) -> Self {
        Self::start_in(None, configure).await
    }

    pub async fn client(&self) -> FlightClient {
        connect(self.addr).await
    }

    /// The highest fsynced Lsn: unchanged across a put iff it wrote nothing.
    pub fn durable_lsn(&self) -> u64 {
        self.node.wal().durable_lsn().borrow().0
    }
}

impl Drop for InProcessNode {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        self.node.wal().close();
    }
}

// ---------------------------------------------------------------------------
// The real binary
// ---------------------------------------------------------------------------

/// A running `flightlog serve`. Dropping it kills it (SIGKILL).
pub struct ServeProcess {
    child: Child,
    pub addr: SocketAddr,
    /// The whole start line (`flightlog listening on <addr> ... recovered: ...`).
    pub start_line: String,
    pub data_dir: PathBuf,
    /// Where the node's stderr (its log) goes: `<data_dir>.stderr.log`.
    pub log_path: PathBuf,
}

/// Flags and environment for [`ServeProcess::start_with`].
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
}

impl ServeProcess {
    /// Starts the node with `options`, and `--max-lag-ms 50` unless they set
    /// it (the flush tests want flushes soon, not after the default second).
    pub fn start_with(data_dir: &Path, options: NodeOptions) -> ServeProcess {
        let mut args: Vec<&str> = options.args.iter().map(String::as_str).collect();
        if !args.contains(&"--max-lag-ms") {
            args.extend(["--max-lag-ms", "50"]);
        }
        let env: Vec<(&str, &str)> = options
            .env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        Self::spawn(&[], data_dir, &args, &env)
    }

    /// Starts `flightlog serve --listen 127.0.0.1:0 --data-dir <data_dir>
    /// <extra_args>` and waits for its start line.
    pub fn start(data_dir: &Path, extra_args: &[&str]) -> ServeProcess {
        Self::start_wrapped(&[], data_dir, extra_args)
    }

    /// Like [`ServeProcess::start`], with the node run under `wrapper`
    /// (a program and its arguments, e.g. `strace ... --`). The wrapper
    /// must pass stdout through and exit when the node exits; [`Self::pid`]
    /// is then the wrapper's, and [`Self::node_pid`] the node's.
    pub fn start_wrapped(wrapper: &[&str], data_dir: &Path, extra_args: &[&str]) -> ServeProcess {
        Self::spawn(wrapper, data_dir, extra_args, &[])
    }

    /// Like [`ServeProcess::start`], with `env` set for the node (for
    /// example `FLIGHTLOG_FAILPOINT`, which is otherwise removed).
    pub fn start_with_env(
        data_dir: &Path,
        extra_args: &[&str],
        env: &[(&str, &str)],
    ) -> ServeProcess {
        Self::spawn(&[], data_dir, extra_args, env)
    }

    fn spawn(
        wrapper: &[&str],
        data_dir: &Path,
        extra_args: &[&str],
        env: &[(&str, &str)],
    ) -> ServeProcess {
        Self::try_spawn(wrapper, data_dir, "127.0.0.1:0", extra_args, env)
            .unwrap_or_else(|problem| panic!("{problem}"))
    }

    /// Like [`ServeProcess::start`] on a fixed address `listen`, for clients
    /// that must find a restarted node where it was (the replicator). Retries
    /// while the port is still held, e.g. by a predecessor just killed.
    pub fn start_on(data_dir: &Path, listen: SocketAddr, extra_args: &[&str]) -> ServeProcess {
        let listen = listen.to_string();
        let mut last = String::new();
        for _ in 0..50 {
            match Self::try_spawn(&[], data_dir, &listen, extra_args, &[]) {
                Ok(node) => return node,
                Err(problem) => last = problem,
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("flightlog serve did not start on {listen}: {last}");
    }

    fn try_spawn(
        wrapper: &[&str],
        data_dir: &Path,
        listen: &str,
        extra_args: &[&str],
        env: &[(&str, &str)],
    ) -> Result<ServeProcess, String> {
        let log_path = data_dir.with_extension("stderr.log");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .expect("open the node's log file");
        let mut command = match wrapper.split_first() {
            Some((program, arguments)) => {
                let mut command = Command::new(program);
                command.args(arguments).arg(binary());
                command
            }
            None => Command::new(binary()),
        };
        let mut child = command
            .args(["serve", "--listen", listen, "--data-dir"])
            .arg(data_dir)
            .args(extra_args)
            .env_remove("FLIGHTLOG_FAILPOINT")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .expect("spawn flightlog serve");
        let stdout = child.stdout.take().expect("piped stdout");
        let (line_tx, line_rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            let _ = line_tx.send(lines.next());
            // Keep draining so a later print never blocks or fails.
            for _ in lines {}
        });
        let line = match line_rx.recv_timeout(DEADLINE) {
            Ok(Some(Ok(line))) if line.starts_with("flightlog listening on ") => line,
            other => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "flightlog serve printed no start line ({other:?}); log:\n{}",
                    std::fs::read_to_string(&log_path).unwrap_or_default()
                ));
            }
        };
        let addr = parse_start_line(&line);
        Ok(ServeProcess {
            child,
            addr,
            start_line: line,
            data_dir: data_dir.to_path_buf(),
            log_path,
        })
    }

    /// The value of `key=` in the start line's recovery summary.
    pub fn start_field(&self, key: &str) -> &str {
        let prefix = format!("{key}=");
        self.start_line
            .split(' ')
            .find_map(|word| word.strip_prefix(prefix.as_str()))
            .unwrap_or_else(|| panic!("no {key}= in start line {:?}", self.start_line))
    }

    pub async fn client(&self) -> FlightClient {
        connect(self.addr).await
    }

    /// Graceful stop: SIGTERM, then wait (bounded) for the exit status.
    #[allow(dead_code)]
    pub fn terminate(mut self) -> std::process::ExitStatus {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("run kill -TERM");
        assert!(status.success(), "kill -TERM failed");
        self.wait_exit()
    }

    /// The node's log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// A [`model::Client`] connected to the node.
    pub async fn sync_client(&self) -> model::Client {
        model::Client::connect(self.addr).await
    }

    /// Polls `origin` with probes until its durable sequence reaches
    /// `sequence`, checking that durable never passes memory; fails fast,
    /// with the log, when the node logs a failed flush.
    pub async fn wait_durable(
        &self,
        client: &mut model::Client,
        origin: &str,
        sequence: u64,
    ) -> DataSyncResponse {
        let started = std::time::Instant::now();
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

    /// Waits (bounded) for the process to exit by itself.
    pub fn wait_exit(&mut self) -> ExitStatus {
        let started = std::time::Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().expect("wait for the node") {
                return status;
            }
            assert!(
                started.elapsed() < DEADLINE,
                "the node did not exit within {DEADLINE:?}; log:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Resident set size of the node in KiB, with its anonymous and file parts.
    pub fn rss_kib(&self) -> Rss {
        rss_of(self.node_pid())
    }

    /// Whether the process has exited (a crash point it was armed with).
    pub fn has_exited(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(Some(_)))
    }

    /// The process spawned (the node, or its wrapper).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The node's own pid: the spawned process, or its only child when it
    /// runs under a wrapper.
    pub fn node_pid(&self) -> u32 {
        let pid = self.child.id();
        let children =
            std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
        match children.split_whitespace().next() {
            Some(child) => child.parse().expect("a pid in /proc/<pid>/children"),
            None => pid,
        }
    }

    /// Crash: SIGKILL, then reap. Nothing of the node's shutdown path runs.
    /// Under a wrapper the node is killed and the wrapper reaped.
    pub fn kill(mut self) {
        let node = self.node_pid();
        if node == self.child.id() {
            self.child.kill().expect("SIGKILL the node");
        } else {
            let status = Command::new("kill")
                .args(["-KILL", &node.to_string()])
                .status()
                .expect("run kill");
            assert!(status.success(), "kill -KILL {node} failed");
        }
        self.child.wait().expect("reap the node");
    }
}

impl Drop for ServeProcess {
    fn drop(&mut self) {
        // Under a wrapper, the node first: a killed tracer leaves it running.
        let node = self.node_pid();
        if node != self.child.id() {
            let _ = Command::new("kill")
                .args(["-KILL", &node.to_string()])
                .status();
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Resident set size in KiB (`VmRSS`), with its anonymous and file parts.
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

/// Number of live WAL segment files (`<20 digits>.wal`) in `<data-dir>/wal`.
pub fn segment_files(data_dir: &Path) -> usize {
    std::fs::read_dir(data_dir.join("wal"))
        .expect("read the WAL directory")
        .filter_map(|e| e.ok())
        .filter(|e| {
            let name = e.file_name().to_string_lossy().to_string();
            name.strip_suffix(".wal")
                .is_some_and(|stem| stem.len() == 20 && stem.bytes().all(|b| b.is_ascii_digit()))
        })
        .count()
}

/// The address of `flightlog listening on <addr> ...`.
pub fn parse_start_line(line: &str) -> SocketAddr {
    line.strip_prefix("flightlog listening on ")
        .and_then(|rest| rest.split(' ').next())
        .and_then(|addr| addr.parse().ok())
        .unwrap_or_else(|| panic!("not a start line: {line:?}"))
}

/// `flightlog wal dump --json <data_dir>/wal`: one JSON object per line
/// (segments, frames, then the verdict). Panics unless it exits 0.
pub fn wal_dump(data_dir: &Path) -> Vec<serde_json::Value> {
    let output = Command::new(binary())
        .args(["wal", "dump", "--json"])
        .arg(data_dir.join("wal"))
        .output()
        .expect("run flightlog wal dump");
    assert!(
        output.status.success(),
        "wal dump failed: {}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|line| serde_json::from_str(line).expect("wal dump --json prints JSON lines"))
        .collect()
}

/// The frame lines of a [`wal_dump`] of kind `kind` (`data`, `abort`,
/// `checkpoint`).
pub fn frames_of_kind<'a>(dump: &'a [serde_json::Value], kind: &str) -> Vec<&'a serde_json::Value> {
    dump.iter().filter(|line| line["kind"] == kind).collect()
}

/// `flightlog wal verify <data_dir>/wal`: its exit status and stdout.
pub fn wal_verify(data_dir: &Path) -> (ExitStatus, String) {
    let output = Command::new(binary())
        .args(["wal", "verify"])
        .arg(data_dir.join("wal"))
        .output()
        .expect("run flightlog wal verify");
    (
        output.status,
        String::from_utf8_lossy(&output.stdout).into_owned(),
    )
}

/// Polls `condition` until it returns `Some`, failing after [`DEADLINE`].
/// Probes until `origin`'s `sequence` is committed to the table store
/// (bounded by [`DEADLINE`]).
#[allow(dead_code)]
pub async fn wait_durable(client: &mut FlightClient, path: &str, origin: &str, sequence: u64) {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let numbers = probe(client, path, origin).await;
        if numbers.durable_sequence_number >= Some(sequence) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {origin}/{sequence} to be durable: {numbers:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub async fn poll_until<T, F, Fut>(what: &str, mut condition: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        if let Some(value) = condition().await {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// ---------------------------------------------------------------------------
// The Delta table
// ---------------------------------------------------------------------------

/// The batches of the Delta table at `path` under the node's default store
/// `<data_dir>/lake`, as the lake adapter reads them.
pub async fn lake_batches(data_dir: &Path, path: &str) -> Vec<RecordBatch> {
    let lake = std::path::absolute(data_dir.join("lake")).expect("absolute lake path");
    let root = url::Url::from_directory_path(&lake).expect("a file URL for the lake");
    let location = flightlog::identity::TableId::parse(root.as_str(), &Default::default(), path)
        .expect("a valid table location");
    flightlog::lake::read_table(&location)
        .await
        .expect("read the Delta table")
}

/// The node's `metrics` action, parsed.
pub async fn metrics(client: &mut FlightClient) -> serde_json::Value {
    let bodies: Vec<_> = client
        .do_action(arrow_flight::Action::new("metrics", ""))
        .await
        .expect("metrics action")
        .try_collect()
        .await
        .expect("metrics body");
    serde_json::from_slice(&bodies[0]).expect("metrics are JSON")
}

/// Every row of the key/value table at `path` under the store root
/// `<data_dir>/lake` (the node's default store), as `(id, value)`, sorted.
/// Duplicates are kept, so a change applied twice shows.
pub async fn table_rows(data_dir: &Path, path: &str) -> Vec<(i64, Option<String>)> {
    let batches = lake_batches(data_dir, path).await;
    let mut rows = Vec::new();
    for batch in batches {
        let ids = batch
            .column_by_name("id")
            .and_then(|c| c.as_any().downcast_ref::<Int64Array>())
            .expect("an Int64 id column");
        let values = arrow::compute::cast(
            batch.column_by_name("value").expect("a value column"),
            &DataType::Utf8,
        )
        .expect("value casts to Utf8");
        let values = values
            .as_any()
            .downcast_ref::<StringArray>()
            .expect("Utf8 after the cast");
        for row in 0..batch.num_rows() {
            let value = (!values.is_null(row)).then(|| values.value(row).to_string());
            rows.push((ids.value(row), value));
        }
    }
    rows.sort();
    rows
}

/// One HTTP/1.1 GET; (status, body).
pub fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).expect("connect to the HTTP endpoint");
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .expect("send the request");
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .expect("read the response");
    let status = response
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP response: {response:?}"));
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// The value of the sample `name` (with its labels, exactly) in a
/// Prometheus text exposition.
pub fn sample(text: &str, name: &str) -> Option<f64> {
    text.lines().find_map(|line| {
        let rest = line.strip_prefix(name)?.strip_prefix(' ')?;
        rest.split(' ').next()?.parse().ok()
    })
}
