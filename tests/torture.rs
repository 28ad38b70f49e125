//! Crash torture: a seeded CDC workload (several origins interleaving
//! multi-message transactions over shared tables: inserts, full and partial
//! updates, key changes, deletes) runs against the real `flightlog serve`,
//! which is SIGKILLed at seeded points (during appends and, with a short
//! flush lag and small segments, during flushes and truncation) and
//! restarted on the same data directory. The client behaves like a real CDC
//! source: after each restart it reconnects and resends every transaction
//! after the last one it saw acknowledged (so some resends are replays).
//!
//! The client also misbehaves the ways real clients do: it names the one
//! store in several spellings (no store, `file:///…`, `file://localhost/…`,
//! `file:/…/`, `FILE://…/./`), which must all be one table; it cancels some
//! puts mid-stream (half of the message's batches sent, then the call is
//! dropped), which must keep nothing, after which it sends the message
//! again in full; and one extra origin opens a transaction and walks away,
//! which must hold back no one's durability and leave no row behind.
//!
//! Guards: every acknowledged transaction is in the Delta tables exactly once
//! (row by row against a model), sequence numbers never go backwards, and
//! `wal verify` accepts the WAL after every kill.
//!
//! One seed reproduces the workload and the kill points:
//! `FLIGHTLOG_TORTURE_SEED=<seed> cargo test --test torture`;
//! `FLIGHTLOG_TORTURE_ITERATIONS=<n>` runs n seeds (default 2).

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::{Array, BooleanArray, Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow_flight::encode::FlightDataEncoderBuilder;
use arrow_flight::{FlightClient, FlightDescriptor};
use common::ServeProcess;
use futures::{StreamExt, TryStreamExt};
use prost::Message;

use flightlog::flight::Any;
use flightlog::proto::schema::StorageLocation;
use flightlog::proto::sync::{ColumnDescriptor, ColumnRole, DataSyncCommand, DataSyncResponse};

const ORIGINS: usize = 3;
const TABLES: [&str; 2] = ["torture/a", "torture/b"];

/// xorshift64*: small, seeded, reproducible.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// One change row: (old key, new key, v, v changed, s, s changed).
#[derive(Debug, Clone)]
struct Change {
    old: Option<i64>,
    new: Option<i64>,
    v: Option<i64>,
    v_changed: bool,
    s: Option<String>,
    s_changed: bool,
}

#[derive(Debug, Clone)]
struct MessageSpec {
    table: usize,
    changes: Vec<Change>,
}

#[derive(Debug, Clone)]
struct Transaction {
    sequence: u64,
    messages: Vec<MessageSpec>,
}

type Row = (Option<i64>, Option<String>);
type Table = BTreeMap<i64, Row>;

fn apply(table: &mut Table, change: &Change) {
    match (change.old, change.new) {
        (None, Some(key)) => {
            table.insert(key, (change.v, change.s.clone()));
        }
        (Some(old), Some(new)) => {
            let prior = table.remove(&old).unwrap_or((None, None));
            let v = if change.v_changed { change.v } else { prior.0 };
            let s = if change.s_changed {
                change.s.clone()
            } else {
                prior.1
            };
            table.insert(new, (v, s));
        }
        (Some(old), None) => {
            table.remove(&old);
        }
        (None, None) => {}
    }
}

/// Generates each origin's transactions. Origins own disjoint key ranges, so
/// the expected tables do not depend on how origins interleave.
fn generate(rng: &mut Rng, transactions_per_origin: usize) -> Vec<Vec<Transaction>> {
    (0..ORIGINS)
        .map(|origin| {
            let base = origin as i64 * 1_000_000;
            let mut view: Vec<Table> = vec![Table::new(); TABLES.len()];
            let mut next_key = base;
            (0..transactions_per_origin)
                .map(|i| {
                    let messages = (0..1 + rng.below(3))
                        .map(|_| {
                            let table = rng.below(TABLES.len() as u64) as usize;
                            let changes = (0..1 + rng.below(12))
                                .map(|_| {
                                    let change = random_change(rng, &view[table], &mut next_key);
                                    apply(&mut view[table], &change);
                                    change
                                })
                                .collect();
                            MessageSpec { table, changes }
                        })
                        .collect();
                    Transaction {
                        sequence: 100 + i as u64 * 3,
                        messages,
                    }
                })
                .collect()
        })
        .collect()
}

fn random_change(rng: &mut Rng, table: &Table, next_key: &mut i64) -> Change {
    let existing: Vec<i64> = table.keys().copied().collect();
    let pick = |rng: &mut Rng| existing[rng.below(existing.len() as u64) as usize];
    let value = |rng: &mut Rng| (rng.below(10) > 0).then(|| rng.below(1000) as i64);
    let text = |rng: &mut Rng| (rng.below(10) > 0).then(|| format!("s{}", rng.below(100_000)));
    let kind = if existing.is_empty() {
        0
    } else {
        rng.below(10)
    };
    match kind {
        0..=3 => {
            *next_key += 1;
            Change {
                old: None,
                new: Some(*next_key),
                v: value(rng),
                v_changed: true,
                s: text(rng),
                s_changed: true,
            }
        }
        4..=5 => {
            let key = pick(rng);
            Change {
                old: Some(key),
                new: Some(key),
                v: value(rng),
                v_changed: true,
                s: text(rng),
                s_changed: true,
            }
        }
        6 => {
            // A partial update: one column unchanged (its value is garbage on purpose).
            let key = pick(rng);
            let v_changed = rng.below(2) == 0;
            Change {
                old: Some(key),
                new: Some(key),
                v: Some(-1),
                v_changed,
                s: Some("garbage".into()),
                s_changed: !v_changed,
            }
        }
        7 => {
            let key = pick(rng);
            *next_key += 1;
            Change {
                old: Some(key),
                new: Some(*next_key),
                v: value(rng),
                v_changed: true,
                s: text(rng),
                s_changed: true,
            }
        }
        _ => {
            let key = pick(rng);
            Change {
                old: Some(key),
                new: None,
                v: None,
                v_changed: false,
                s: None,
                s_changed: false,
            }
        }
    }
}

fn schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("old_id", DataType::Int64, true),
        Field::new("new_id", DataType::Int64, true),
        Field::new("v", DataType::Int64, true),
        Field::new("v_changed", DataType::Boolean, true),
        Field::new("s", DataType::Utf8, true),
        Field::new("s_changed", DataType::Boolean, true),
    ]))
}

fn descriptors() -> Vec<ColumnDescriptor> {
    let d = |role: ColumnRole, name: &str| ColumnDescriptor {
        role: role as i32,
        name: name.into(),
    };
    vec![
        d(ColumnRole::OldPk, "id"),
        d(ColumnRole::NewPk, "id"),
        d(ColumnRole::Value, "v"),
        d(ColumnRole::Changed, "v"),
        d(ColumnRole::Value, "s"),
        d(ColumnRole::Changed, "s"),
    ]
}

fn batch(changes: &[Change]) -> RecordBatch {
    RecordBatch::try_new(
        schema(),
        vec![
            Arc::new(Int64Array::from(
                changes.iter().map(|c| c.old).collect::<Vec<_>>(),
            )),
            Arc::new(Int64Array::from(
                changes.iter().map(|c| c.new).collect::<Vec<_>>(),
            )),
            Arc::new(Int64Array::from(
                changes.iter().map(|c| c.v).collect::<Vec<_>>(),
            )),
            Arc::new(BooleanArray::from(
                changes
                    .iter()
                    .map(|c| Some(c.v_changed))
                    .collect::<Vec<_>>(),
            )),
            Arc::new(StringArray::from(
                changes.iter().map(|c| c.s.clone()).collect::<Vec<_>>(),
            )),
            Arc::new(BooleanArray::from(
                changes
                    .iter()
                    .map(|c| Some(c.s_changed))
                    .collect::<Vec<_>>(),
            )),
        ],
    )
    .expect("batch")
}

/// The origin that opens a transaction and never closes it.
const ABANDONER: &str = "abandoner";
/// Keys of the abandoned transaction: in no origin's range, never in a table.
const ABANDONED_KEYS: std::ops::Range<i64> = 900_000_000..900_000_005;

/// Starts the node; with `failpoint`, it aborts itself when a flush reaches
/// that point (`FLIGHTLOG_FAILPOINT`).
fn start(dir: &Path, failpoint: Option<&str>) -> ServeProcess {
    let args = [
        "--max-lag-ms",
        "30",
        "--segment-bytes",
        "32768",
        "--open-transaction-timeout-ms",
        "400",
    ];
    let mut env = vec![("RUST_LOG", "warn")];
    if let Some(point) = failpoint {
        env.push(("FLIGHTLOG_FAILPOINT", point));
    }
    ServeProcess::start_with_env(dir, &args, &env)
}

/// The spellings of the node's default store (`<data>/lake`) a client may
/// use; `None` is "no store". All must be one table.
fn store_spellings(data: &Path) -> Vec<Option<String>> {
    let lake = std::path::absolute(data.join("lake")).expect("absolute lake");
    let lake = lake.to_str().expect("a UTF-8 temp path");
    vec![
        None,
        Some(format!("file://{lake}")),
        Some(format!("file://localhost{lake}")),
        Some(format!("file:{lake}/")),
        Some(format!("FILE://{lake}/./")),
    ]
}

/// How one put is sent.
#[derive(Clone, Copy)]
enum Send {
    /// The whole message, then end of stream.
    Whole,
    /// The first half of the message's rows (as their own batch), then the
    /// call is dropped before the stream ends.
    Cancelled,
}

async fn put(
    client: &mut FlightClient,
    origin: &str,
    spec: Option<&MessageSpec>,
    sequence: Option<u64>,
    store: Option<&str>,
    send: Send,
) -> Result<DataSyncResponse, String> {
    let command = DataSyncCommand {
        path: TABLES[spec.map_or(0, |s| s.table)].into(),
        store: store.map(|location| StorageLocation {
            location: location.to_owned(),
            ..Default::default()
        }),
        column_descriptors: descriptors(),
        origin: origin.into(),
        sequence_number: sequence,
        ..Default::default()
    };
    let any = Any {
        type_url: "DataSyncCommand".into(),
        value: command.encode_to_vec(),
    };
    let descriptor = Some(FlightDescriptor::new_cmd(any.encode_to_vec()));
    let changes = spec.map_or(&[][..], |s| &s.changes[..]);
    let results = match send {
        Send::Whole => {
            let batches: Vec<RecordBatch> =
                spec.map(|s| vec![batch(&s.changes)]).unwrap_or_default();
            let stream = FlightDataEncoderBuilder::new()
                .with_schema(schema())
                .with_flight_descriptor(descriptor)
                .build(futures::stream::iter(batches.into_iter().map(Ok)));
            client.do_put(stream).await.map_err(|e| e.to_string())?
        }
        Send::Cancelled => {
            // Half the rows, then a stream that never ends; the call is
            // dropped once the node has had time to write what it got.
            let half = vec![Ok(batch(&changes[..changes.len().div_ceil(2)]))];
            let stream = FlightDataEncoderBuilder::new()
                .with_schema(schema())
                .with_flight_descriptor(descriptor)
                .build(futures::stream::iter(half).chain(futures::stream::pending()));
            let call = async {
                let results: Result<Vec<_>, _> = client.do_put(stream).await?.try_collect().await;
                results
            };
            // The node may answer before the stream ends only when it keeps
            // nothing of it (a replay of an acknowledged sequence).
            return match tokio::time::timeout(Duration::from_millis(30), call).await {
                Err(_) => Err("cancelled by the client".into()),
                Ok(Ok(results)) => {
                    let result = results.first().ok_or("no PutResult")?;
                    DataSyncResponse::decode(result.app_metadata.as_ref())
                        .map_err(|e| e.to_string())
                }
                Ok(Err(error)) => Err(format!("cancelled put: {error}")),
            };
        }
    };
    let results: Vec<_> = results.try_collect().await.map_err(|e| e.to_string())?;
    let result = results.first().ok_or("no PutResult")?;
    DataSyncResponse::decode(result.app_metadata.as_ref()).map_err(|e| e.to_string())
}

/// The numbers the client has seen per origin, checked never to go back.
#[derive(Debug, Default, Clone, Copy)]
struct Seen {
    acknowledged: u64,
    memory: u64,
    durable: u64,
}

fn observe(seen: &mut Seen, response: &DataSyncResponse, seed: u64) {
    let memory = response.memory_sequence_number.unwrap_or(0);
    let durable = response.durable_sequence_number.unwrap_or(0);
    assert!(
        memory >= seen.memory,
        "seed {seed}: memory sequence went back from {} to {memory}",
        seen.memory
    );
    assert!(
        durable >= seen.durable,
        "seed {seed}: durable sequence went back from {} to {durable}",
        seen.durable
    );
    seen.memory = memory;
    seen.durable = durable;
}

fn verify_wal(data: &Path, seed: u64) {
    let (status, report) = common::wal_verify(data);
    assert!(
        status.success(),
        "seed {seed}: wal verify after a kill: {report}"
    );
}

/// Reconnects as a CDC client: every origin's next transaction is the one
/// after the last acknowledged, resent from its first message. Checks that
/// the node kept every acknowledged transaction and says `first`.
async fn resync(
    client: &mut FlightClient,
    transactions: &[Vec<Transaction>],
    seen: &mut [Seen],
    cursor: &mut [(usize, usize)],
    seed: u64,
) -> Result<(), String> {
    for origin in 0..ORIGINS {
        let probe = put(
            client,
            &format!("origin-{origin}"),
            None,
            None,
            None,
            Send::Whole,
        )
        .await?;
        assert!(
            probe.first,
            "seed {seed}: first answer after restart must say first"
        );
        observe(&mut seen[origin], &probe, seed);
        assert!(
            probe.memory_sequence_number.unwrap_or(0) >= seen[origin].acknowledged,
            "seed {seed}: an acknowledged transaction was lost"
        );
        let next = transactions[origin]
            .iter()
            .position(|t| t.sequence > seen[origin].acknowledged)
            .unwrap_or(transactions[origin].len());
        cursor[origin] = (next, 0);
    }
    Ok(())
}

#[derive(Debug, Default)]
struct Outcome {
    /// Deaths at a flush crash point (counted in `kills` too).
    crash_points: u64,
    kills: u64,
    /// Puts cancelled mid-stream (each then sent again in full).
    cancelled: u64,
    /// Puts that named the store in one of its spellings.
    spelled: u64,
    /// Transactions opened and walked away from.
    abandoned: u64,
    transactions: u64,
    rows: u64,
}

fn run_seed(seed: u64) -> Outcome {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    let transactions = generate(&mut rng, 25);
    let kills: Vec<u64> = {
        let mut points: Vec<u64> = (0..3).map(|_| 5 + rng.below(70)).collect();
        points.sort_unstable();
        points
    };
    let mut outcome = Outcome::default();
    rt.block_on(async {
        let mut armed: Option<&'static str> = None;
        let mut node = start(&data, armed);
        let mut client = node.client().await;
        let spellings = store_spellings(&data);
        let abandon_at = 3 + rng.below(40);
        let mut seen = [Seen::default(); ORIGINS];
        // Per origin: next transaction and next message to send.
        let mut cursor = [(0usize, 0usize); ORIGINS];
        let mut puts = 0u64;
        let mut kill_index = 0;
        loop {
            let live: Vec<usize> = (0..ORIGINS)
                .filter(|o| cursor[*o].0 < transactions[*o].len())
                .collect();
            if live.is_empty() {
                break;
            }
            let origin = live[rng.below(live.len() as u64) as usize];
            let (t, m) = cursor[origin];
            let transaction = &transactions[origin][t];
            let last = m + 1 == transaction.messages.len();
            let sequence = last.then_some(transaction.sequence);
            let name = format!("origin-{origin}");
            puts += 1;
            let kill_now = kill_index < kills.len() && puts == kills[kill_index];
            // Half of the kills land while this put is in flight (during the
            // append or its fsync), the others between puts.
            let killer = (kill_now && rng.below(2) == 0).then(|| {
                let pid = node.pid().to_string();
                let delay = Duration::from_micros(rng.below(4000));
                tokio::spawn(async move {
                    tokio::time::sleep(delay).await;
                    let _ = tokio::process::Command::new("kill")
                        .args(["-9", &pid])
                        .status()
                        .await;
                })
            });
            let message = &transaction.messages[m];
            let store = spellings[rng.below(spellings.len() as u64) as usize].as_deref();
            if !kill_now && armed.is_none() && puts == abandon_at {
                let abandoned = MessageSpec {
                    table: 0,
                    changes: ABANDONED_KEYS
                        .map(|key| Change {
                            old: None,
                            new: Some(key),
                            v: Some(key),
                            v_changed: true,
                            s: None,
                            s_changed: true,
                        })
                        .collect(),
                };
                let answer = put(
                    &mut client,
                    ABANDONER,
                    Some(&abandoned),
                    None,
                    None,
                    Send::Whole,
                )
                .await
                .unwrap_or_else(|e| panic!("seed {seed}: the abandoned transaction's put: {e}"));
                assert!(answer.accepted, "seed {seed}: {answer:?}");
                outcome.abandoned += 1;
            }
            if !kill_now && armed.is_none() && message.changes.len() > 1 && rng.below(5) == 0 {
                let cancelled = put(
                    &mut client,
                    &name,
                    Some(message),
                    sequence,
                    store,
                    Send::Cancelled,
                )
                .await;
                match cancelled {
                    Err(_) => outcome.cancelled += 1,
                    // Answered before its stream ended: only a replay may be,
                    // (the node committed it before a kill the client did not
                    // see acknowledged), and it keeps nothing.
                    Ok(answer) => assert!(
                        sequence.is_some() && answer.memory_sequence_number >= sequence,
                        "seed {seed}: a put whose stream never ended was answered: {answer:?}"
                    ),
                }
            }
            if store.is_some() {
                outcome.spelled += 1;
            }
            let result = put(
                &mut client,
                &name,
                Some(message),
                sequence,
                store,
                Send::Whole,
            )
            .await;
            if let Some(killer) = killer {
                let _ = killer.await;
            }
            match result {
                Ok(response) if response.accepted => {
                    observe(&mut seen[origin], &response, seed);
                    if last {
                        assert_eq!(
                            response.memory_sequence_number,
                            Some(transaction.sequence),
                            "seed {seed}"
                        );
                        seen[origin].acknowledged = transaction.sequence;
                        cursor[origin] = (t + 1, 0);
                    } else {
                        cursor[origin] = (t, m + 1);
                    }
                }
                Ok(_) => {} // overloaded: resend the same message
                Err(error) if kill_now || armed.is_some() => {
                    eprintln!("torture: put cut by a kill or crash point: {error}")
                }
                Err(error) => panic!("seed {seed}: put failed on a live node: {error}"),
            }
            let crashed = armed.is_some() && node.has_exited();
            if kill_now || crashed {
                if kill_now {
                    kill_index += 1;
                } else {
                    outcome.crash_points += 1;
                }
                outcome.kills += 1;
                // A third of the restarts arm a flush crash point, so the
                // next death lands inside a flush or truncation.
                armed = (rng.below(3) == 0)
                    .then(|| flightlog::failpoint::POINTS[rng.below(3) as usize]);
                loop {
                    drop(node);
                    verify_wal(&data, seed);
                    node = start(&data, armed);
                    client = match common::try_connect(node.addr).await {
                        Ok(client) => client,
                        Err(error) if armed.is_some() => {
                            // Died at the crash point before it took a connection.
                            eprintln!("torture: died at a crash point before connecting: {error}");
                            outcome.kills += 1;
                            outcome.crash_points += 1;
                            continue;
                        }
                        Err(error) => panic!("seed {seed}: connect after restart failed: {error}"),
                    };
                    match resync(&mut client, &transactions, &mut seen, &mut cursor, seed).await {
                        Ok(()) => break,
                        Err(error) if armed.is_some() => {
                            eprintln!("torture: died at a crash point while reconnecting: {error}");
                            outcome.kills += 1;
                            outcome.crash_points += 1;
                        }
                        Err(error) => panic!("seed {seed}: probe after restart failed: {error}"),
                    }
                }
            }
        }
        if armed.is_some() {
            drop(node);
            node = start(&data, None);
            client = node.client().await;
            resync(&mut client, &transactions, &mut seen, &mut cursor, seed)
                .await
                .expect("resync");
        }
        // Everything acknowledged must become durable, then match the model.
        let deadline = Instant::now() + Duration::from_secs(120);
        for origin in 0..ORIGINS {
            let last = transactions[origin].last().map_or(0, |t| t.sequence);
            loop {
                let probe = put(
                    &mut client,
                    &format!("origin-{origin}"),
                    None,
                    None,
                    None,
                    Send::Whole,
                )
                .await
                .expect("probe");
                observe(&mut seen[origin], &probe, seed);
                if probe.durable_sequence_number == Some(last) {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "seed {seed}: origin {origin} never became durable ({probe:?})"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        let mut expected: Vec<Table> = vec![Table::new(); TABLES.len()];
        for origin_transactions in &transactions {
            for transaction in origin_transactions {
                for message in &transaction.messages {
                    for change in &message.changes {
                        apply(&mut expected[message.table], change);
                    }
                }
            }
            outcome.transactions += origin_transactions.len() as u64;
        }
        for (index, path) in TABLES.iter().enumerate() {
            let actual = read_table(&data, path).await;
            outcome.rows += actual.len() as u64;
            assert_eq!(
                actual, expected[index],
                "seed {seed}: table {path} differs from the model"
            );
        }
        drop(node);
    });
    outcome
}

async fn read_table(data: &Path, path: &str) -> Table {
    let batches = common::lake_batches(data, path).await;
    let mut table = Table::new();
    for batch in batches {
        let column = |name: &str| {
            batch
                .column_by_name(name)
                .unwrap_or_else(|| panic!("column {name}"))
                .clone()
        };
        let ids = column("id");
        let ids = ids.as_any().downcast_ref::<Int64Array>().expect("id");
        let v = column("v");
        let v = v.as_any().downcast_ref::<Int64Array>().expect("v");
        let s = column("s");
        let s = s.as_any().downcast_ref::<StringArray>().expect("s");
        for row in 0..batch.num_rows() {
            let key = ids.value(row);
            let value = (
                v.is_valid(row).then(|| v.value(row)),
                s.is_valid(row).then(|| s.value(row).to_string()),
            );
            assert!(
                table.insert(key, value).is_none(),
                "key {key} is in table {path} twice"
            );
        }
    }
    table
}

#[test]
fn acknowledged_transactions_survive_sigkill_exactly_once() {
    let iterations: u64 = std::env::var("FLIGHTLOG_TORTURE_ITERATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2);
    let first_seed: u64 = std::env::var("FLIGHTLOG_TORTURE_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    let mut total = Outcome::default();
    for seed in first_seed..first_seed + iterations {
        eprintln!("torture: seed {seed} (replay: FLIGHTLOG_TORTURE_SEED={seed} FLIGHTLOG_TORTURE_ITERATIONS=1 cargo test --test torture)");
        let outcome = run_seed(seed);
        total.kills += outcome.kills;
        total.crash_points += outcome.crash_points;
        total.transactions += outcome.transactions;
        total.cancelled += outcome.cancelled;
        total.spelled += outcome.spelled;
        total.abandoned += outcome.abandoned;
        total.rows += outcome.rows;
    }
    eprintln!(
        "torture: seeds {first_seed}..{} ({iterations} runs): {} kills survived ({} at flush crash points), {} puts cancelled mid-stream, {} puts naming the store in another spelling, {} transactions abandoned open, {} transactions and {} final rows verified",
        first_seed + iterations - 1,
        total.kills,
        total.crash_points,
        total.cancelled,
        total.spelled,
        total.abandoned,
        total.transactions,
        total.rows
    );
}
