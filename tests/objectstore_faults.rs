//! Flushing through a misbehaving object store: the node runs in process on
//! a `memory://faulty-<test>/` default store, whose in-memory objects sit
//! behind `flightlog::lake::faults::FaultyStore`, and the test steers the
//! store's `FaultPlan` while it sends change messages over Arrow Flight and
//! the flush scheduler runs on its own. Faults: every put failing or timing
//! out, a Delta commit that lands but whose response is lost, and transient
//! get / list errors while a flush rewrites files. Guards the claims that
//! puts are acknowledged while the store is down, that pending frames stay
//! in the index and in the WAL until their commit is known to have landed,
//! that a flush is retried until it lands, that a commit is never applied
//! twice (the retry finds the table's txn marker), that the tables match a
//! model row by row with no duplicate key, and that the flush metrics say
//! what happened.

#![allow(clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::model::*;

use flightlog::config::Config;
use flightlog::flush::{self, Flusher};
use flightlog::identity::TableId as TableLocation;
use flightlog::lake::faults::{fault_plan, FaultPlan, Operation, Times};
use flightlog::lake::load_state;
use flightlog::node::Node;

const ORIGIN: &str = "pg";
const TABLE: &str = "shop/orders";

/// A node on a faulty in-memory store, its Flight server and its flusher.
struct FaultyNode {
    node: Arc<Node>,
    plan: Arc<FaultPlan>,
    store_root: String,
    addr: SocketAddr,
    flusher: Option<Flusher>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    _dir: tempfile::TempDir,
}

impl FaultyNode {
    /// Starts a node whose default store is `memory://faulty-<name>/`
    /// (`name` unique per test: memory stores are process-wide), with
    /// 4 KiB WAL segments so that truncation has segments to remove.
    async fn start(name: &str) -> FaultyNode {
        let authority = format!("faulty-{name}");
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config::for_data_dir(dir.path()).unwrap();
        config.default_store = format!("memory://{authority}/");
        config.allow_memory_store = true;
        config.max_lag_ms = 20;
        config.wal.segment_bytes_target = 4096;
        let (node, _state) = Node::open(config).await.unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (shutdown, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = flightlog::flight::serve(node.clone(), listener, async {
            let _ = stopped.await;
        });
        tokio::spawn(async move { server.await.unwrap() });
        let flusher = flush::start(node.flush_context());
        FaultyNode {
            node,
            plan: fault_plan(&authority),
            store_root: format!("memory://{authority}/"),
            addr,
            flusher: Some(flusher),
            shutdown: Some(shutdown),
            _dir: dir,
        }
    }

    async fn client(&self) -> Client {
        Client::connect(self.addr).await
    }

    fn table(&self) -> TableLocation {
        store_table(&self.store_root, TABLE)
    }

    /// A flush counter from `metrics_json()["flush"]`.
    fn metric(&self, name: &str) -> u64 {
        self.node.metrics_json()["flush"][name].as_u64().unwrap()
    }

    fn context(&self) -> String {
        format!(
            "flush metrics {}; store {}",
            self.node.metrics_json()["flush"],
            self.plan.summary()
        )
    }

    /// The origin's durable sequence number, read from the node (no probe:
    /// a probe would touch the store and consume faults).
    async fn durable(&self) -> Option<u64> {
        self.node.origin_numbers(ORIGIN).1
    }

    async fn wait_durable(&self, sequence: u64) {
        let started = Instant::now();
        while self.durable().await < Some(sequence) {
            assert!(
                started.elapsed() < DEADLINE,
                "durable sequence did not reach {sequence} within {DEADLINE:?}: {}",
                self.context()
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Polls `condition` until it holds, failing after [`DEADLINE`].
    async fn wait_until(&self, what: &str, condition: impl Fn(&FaultyNode) -> bool) {
        let started = Instant::now();
        while !condition(self) {
            assert!(
                started.elapsed() < DEADLINE,
                "{what}: not within {DEADLINE:?}: {}",
                self.context()
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// The table's Delta version (the store must be healthy).
    async fn version(&self) -> u64 {
        load_state(&self.table()).await.unwrap().unwrap().version()
    }

    async fn stop(mut self) {
        if let Some(flusher) = self.flusher.take() {
            flusher.stop().await;
        }
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        self.node.wal().close();
    }
}

/// Sends `message` closing transaction `sequence` and checks the answer:
/// accepted, in the WAL, durable no further than `durable`.
async fn send_acknowledged(
    client: &mut Client,
    model: &mut Model,
    sequence: u64,
    message: &Message,
) -> flightlog::proto::sync::DataSyncResponse {
    let response = client.send(ORIGIN, Some(sequence), message).await;
    assert_eq!(response.memory_sequence_number, Some(sequence));
    model.apply(message);
    response
}

fn orders(changes: Vec<Change>) -> Message {
    Message::new(TABLE, &["id"], usual_values(), changes)
}

fn insert(id: i64) -> Change {
    Change::Insert {
        key: vec![id],
        set: set(&[("name", text(&format!("n{id}"))), ("amount", int(id * 10))]),
    }
}

/// An update that carries only `column`: applied twice after a key change,
/// the second application would find the old key gone and lose the rest.
fn partial(old: i64, new: i64, column: &str, cell: Cell) -> Change {
    Change::Update {
        old: vec![old],
        new: vec![new],
        set: set(&[(column, cell)]),
    }
}

/// Changes whose double application shows: key changes carrying one column,
/// partial updates, a delete, an insert, and a chain through a new key.
fn tricky_changes(round: i64) -> Vec<Change> {
    let base = round * 1000;
    vec![
        partial(3, base + 103, "amount", int(round)),
        partial(5, 5, "name", text(&format!("five-{round}"))),
        Change::Delete { key: vec![7] },
        insert(base + 11),
        partial(base + 11, base + 12, "name", text("moved")),
        Change::Update {
            old: vec![8],
            new: vec![base + 108],
            set: set(&[("name", text("eight")), ("amount", int(8))]),
        },
    ]
}

async fn create_table_with_ten_rows(node: &FaultyNode, client: &mut Client, model: &mut Model) {
    let first = orders((1..=10).map(insert).collect());
    send_acknowledged(client, model, 1, &first).await;
    node.wait_durable(1).await;
    model.assert_table(TABLE, &node.table(), &["id"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn puts_are_acknowledged_while_every_store_put_fails_and_land_once_the_store_recovers() {
    let node = FaultyNode::start("every-put-fails").await;
    let mut client = node.client().await;
    let mut model = Model::default();
    create_table_with_ten_rows(&node, &mut client, &mut model).await;
    let commits_before = node.metric("commits");

    // The store goes down: the first put times out, every later one fails.
    node.plan
        .time_out(Operation::Put, Duration::from_millis(5), Times::Next(1));
    node.plan.fail(Operation::Put, Times::Always);
    let messages = [
        orders(tricky_changes(1)),
        orders(vec![
            partial(1103, 2103, "name", text("again")),
            partial(2, 2, "amount", int(-2)),
            Change::Delete { key: vec![1012] },
            insert(30),
        ]),
        orders(vec![
            partial(30, 31, "amount", int(31)),
            partial(500, 500, "name", text("missing before")),
        ]),
    ];
    for (i, message) in messages.iter().enumerate() {
        let response = send_acknowledged(&mut client, &mut model, 2 + i as u64, message).await;
        assert_eq!(response.durable_sequence_number, Some(1));
    }
    node.wait_until("two failed flushes", |n| {
        n.metric("failures") >= 2 && n.plan.injected(Operation::Put) >= 2
    })
    .await;

    // Nothing past the last commit is durable, and every pending frame is
    // still in the index and readable from the WAL, even after the same
    // checkpoint-and-truncate step the scheduler runs after a flush.
    assert_eq!(node.durable().await, Some(1));
    flush::checkpoint_and_truncate(&node.node.flush_context())
        .await
        .unwrap();
    let pending: Vec<_> = node
        .node
        .pending()
        .pending_tables()
        .iter()
        .flat_map(|t| node.node.pending().frames_of(t))
        .collect();
    assert_eq!(pending.len(), messages.len(), "one frame per message");
    for frame in &pending {
        let view = node.node.wal().read(frame.frame.pointer).unwrap();
        assert_eq!(view.header.lsn, frame.frame.lsn);
    }
    let oldest_segment_lsn = node.node.wal().segments()[0].1;
    let oldest_pending = pending.iter().map(|f| f.frame.lsn).min().unwrap();
    assert!(oldest_segment_lsn <= oldest_pending);
    assert_eq!(node.metric("commits"), commits_before);

    node.plan.clear();
    node.wait_durable(4).await;
    model.assert_table(TABLE, &node.table(), &["id"]).await;
    assert_eq!(node.node.pending().pending_frames(), 0);
    assert!(node.metric("failures") >= 2, "{}", node.context());
    assert!(
        node.metric("commits") > commits_before,
        "{}",
        node.context()
    );
    assert_eq!(node.metric("already_applied"), 0, "{}", node.context());
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_whose_response_was_lost_is_found_by_its_marker_and_not_applied_again() {
    let node = FaultyNode::start("lost-commit-response").await;
    let mut client = node.client().await;
    let mut model = Model::default();
    create_table_with_ten_rows(&node, &mut client, &mut model).await;
    let version_before = node.version().await;
    let commits_before = node.metric("commits");
    let failures_before = node.metric("failures");

    node.plan.lose_commit_responses(Times::Next(1));
    send_acknowledged(&mut client, &mut model, 2, &orders(tricky_changes(1))).await;
    node.wait_durable(2).await;

    assert_eq!(node.plan.lost_responses(), 1);
    model.assert_table(TABLE, &node.table(), &["id"]).await;
    assert_eq!(
        node.version().await,
        version_before + 1,
        "the landed commit is the only one"
    );
    assert_eq!(node.metric("failures"), failures_before + 1);
    assert_eq!(node.metric("commits"), commits_before, "{}", node.context());
    assert_eq!(node.metric("already_applied"), 1, "{}", node.context());
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_after_a_lost_commit_response_are_applied_and_the_landed_ones_skipped() {
    let node = FaultyNode::start("lost-commit-then-more").await;
    let mut client = node.client().await;
    let mut model = Model::default();
    create_table_with_ten_rows(&node, &mut client, &mut model).await;
    let version_before = node.version().await;
    let commits_before = node.metric("commits");

    // The commit lands, its response is lost, and the retries cannot read
    // it back until more changes are pending behind it.
    let landed = format!("_delta_log/{:020}.json", version_before + 1);
    node.plan.lose_commit_responses(Times::Next(1));
    node.plan
        .fail_matching(Operation::Get, &landed, Times::Always);
    send_acknowledged(&mut client, &mut model, 2, &orders(tricky_changes(1))).await;
    node.wait_until("the lost commit and a failed retry", |n| {
        n.plan.lost_responses() == 1 && n.metric("failures") >= 2
    })
    .await;
    send_acknowledged(&mut client, &mut model, 3, &orders(tricky_changes(2))).await;
    assert_eq!(node.durable().await, Some(1));
    node.plan.clear();
    node.wait_durable(3).await;

    model.assert_table(TABLE, &node.table(), &["id"]).await;
    assert_eq!(
        node.version().await,
        version_before + 2,
        "the landed commit plus one for the later changes"
    );
    assert_eq!(node.metric("commits"), commits_before + 1);
    assert_eq!(node.metric("already_applied"), 1, "{}", node.context());
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transient_get_and_list_failures_while_rewriting_files_are_retried() {
    let node = FaultyNode::start("rewrite-reads-fail").await;
    let mut client = node.client().await;
    let mut model = Model::default();
    create_table_with_ten_rows(&node, &mut client, &mut model).await;
    let commits_before = node.metric("commits");
    let failures_before = node.metric("failures");

    // Updates of existing keys make the flush read the data file back.
    node.plan.delay(Operation::Get, Duration::from_millis(1));
    node.plan
        .fail_matching(Operation::Get, ".parquet", Times::Next(1));
    node.plan.fail(Operation::List, Times::Next(1));
    node.plan
        .time_out(Operation::Get, Duration::from_millis(5), Times::Next(1));
    send_acknowledged(&mut client, &mut model, 2, &orders(tricky_changes(1))).await;
    node.wait_durable(2).await;

    // Every armed fault was consumed before the flush could succeed.
    assert_eq!(node.plan.injected(Operation::Get), 2, "{}", node.context());
    assert_eq!(node.plan.injected(Operation::List), 1, "{}", node.context());
    assert!(
        node.metric("failures") > failures_before,
        "{}",
        node.context()
    );
    node.plan.clear();
    model.assert_table(TABLE, &node.table(), &["id"]).await;
    assert_eq!(node.metric("commits"), commits_before + 1);
    assert_eq!(node.metric("already_applied"), 0);
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_creation_whose_response_was_lost_is_reused_by_the_retry() {
    let node = FaultyNode::start("lost-create-response").await;
    let mut client = node.client().await;
    let mut model = Model::default();

    node.plan.lose_commit_responses(Times::Next(1));
    send_acknowledged(
        &mut client,
        &mut model,
        1,
        &orders((1..=10).map(insert).collect()),
    )
    .await;
    node.wait_durable(1).await;

    assert_eq!(node.plan.lost_responses(), 1);
    model.assert_table(TABLE, &node.table(), &["id"]).await;
    assert_eq!(node.version().await, 1, "one creation, one data commit");
    assert_eq!(node.metric("failures"), 1, "{}", node.context());
    assert_eq!(node.metric("commits"), 1, "{}", node.context());
    assert_eq!(node.metric("already_applied"), 0, "{}", node.context());
    node.stop().await;
}
