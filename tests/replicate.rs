//! `flightlog replicate` end to end: a real Postgres 15 (started by the
//! test), a real node (`flightlog serve`) and the replicator binary. Each
//! test ends by comparing every replicated table in Postgres (`SELECT ...
//! ORDER BY key`) with the Delta table row for row (duplicates kept, so a
//! change applied twice shows).
//!
//! Guards: the initial copy in the slot's snapshot while writes continue
//! (nothing missed or doubled between copy and stream); inserts, updates,
//! key changes, deletes, TOASTed values left unchanged, NULLs and every
//! supported type; several tables in one transaction and one transaction
//! of 100k rows; ADD COLUMN mid-stream; TRUNCATE and a table without a key
//! refused by name; SIGKILL of the node and of the replicator at seeded
//! moments, after which the tables still equal Postgres and the slot's
//! confirmed_flush_lsn never passed what the node made durable; an idle
//! confirm while the walsender lags behind the server's insert position
//! (a bulk load of an unpublished table) skips no later commit; the
//! `--metrics-listen` endpoint's numbers against what the test did;
//! streamed in-progress transactions (protocol v2, a server with
//! `logical_decoding_work_mem = 64kB`): rollbacks and rolled back
//! savepoints drop exactly their changes, interleaved transactions stay
//! apart, one killed replicator gets the open transaction again from its
//! start, one the node already has is skipped, and past
//! `--stream-buffer-bytes` the replicator goes on with protocol v1.
//! `FLIGHTLOG_REPLICATE_KILLS=N` lengthens the kill loop (default 4).

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use arrow::array::{Array, ArrayRef};
use arrow::compute::concat_batches;
use arrow::util::display::{ArrayFormatter, FormatOptions};

use common::postgres::{free_port, Postgres};
use common::{http_get, sample, ServeProcess};
use flightlog::replicate::node_client::NodeClient;
use flightlog::replicate::source::{parse_lsn, publication_tables};
use flightlog::replicate::types::{ColumnBuilder, PgType};

// ---------------------------------------------------------------------------
// Processes
// ---------------------------------------------------------------------------

/// The node, on a fixed port so that a restarted node is where the
/// replicator left it (`common::ServeProcess::start_on`).
fn start_node(data_dir: &Path, port: u16) -> ServeProcess {
    ServeProcess::start_on(
        data_dir,
        SocketAddr::from(([127, 0, 0, 1], port)),
        NODE_ARGS,
    )
}

/// The test node's flags: flushes every 100 ms.
const NODE_ARGS: &[&str] = &["--max-lag-ms", "100"];

fn node_url(node: &ServeProcess) -> String {
    format!("grpc://{}", node.addr)
}

/// `flightlog replicate`. SIGKILL on drop.
struct Replicator {
    child: Child,
    status_file: PathBuf,
    log: PathBuf,
}

impl Replicator {
    fn start(pg: &Postgres, node: &ServeProcess, slot: &str, dir: &Path) -> Replicator {
        Self::start_with(pg, node, slot, dir, &["--idle-confirm-ms", "0"])
    }

    fn start_with(
        pg: &Postgres,
        node: &ServeProcess,
        slot: &str,
        dir: &Path,
        extra: &[&str],
    ) -> Replicator {
        let status_file = dir.join(format!("{slot}.status.json"));
        let log = dir.join(format!("{slot}.replicate.log"));
        let log_file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .expect("open the replicator log");
        let child = Command::new(common::binary())
            .args(["replicate", "--postgres", &pg.url(), "--publication", "pub"])
            .args(["--slot", slot, "--node", &node_url(node)])
            .args(["--durable-poll-ms", "50"])
            .args(extra)
            .args([
                "--status-interval-ms",
                "100",
                "--progress-interval-ms",
                "200",
            ])
            .arg("--status-file")
            .arg(&status_file)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
            .expect("spawn flightlog replicate");
        Replicator {
            child,
            status_file,
            log,
        }
    }

    fn status(&self) -> serde_json::Value {
        std::fs::read(&self.status_file)
            .ok()
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
            .unwrap_or(serde_json::Value::Null)
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn assert_running(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!(
                "the replicator exited ({status}); log:\n{}",
                self.log_text()
            );
        }
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Replicator {
    fn drop(&mut self) {
        self.kill();
    }
}

// ---------------------------------------------------------------------------
// Postgres helpers
// ---------------------------------------------------------------------------

/// Runs `sql` in one transaction; returns an LSN at or below its commit
/// record (the insert position just before COMMIT), so "durable ≥ this"
/// means the transaction is durable when nothing else commits meanwhile.
async fn transaction(pg: &tokio_postgres::Client, sql: &str) -> u64 {
    pg.batch_execute(&format!("BEGIN; {sql}"))
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e} {:?}", e.as_db_error().map(|d| d.message())));
    let row = pg
        .query_one("SELECT pg_current_wal_insert_lsn()::text", &[])
        .await
        .expect("insert lsn");
    pg.batch_execute("COMMIT").await.expect("commit");
    parse_lsn(row.get(0)).expect("an lsn")
}

async fn slot_confirmed(pg: &tokio_postgres::Client, slot: &str) -> Option<u64> {
    let row = pg
        .query_opt(
            "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await
        .expect("read the slot")?;
    row.get::<_, Option<&str>>(0)
        .map(|t| parse_lsn(t).expect("an lsn"))
}

async fn node_numbers(node: &ServeProcess, origin: &str, path: &str) -> (Option<u64>, Option<u64>) {
    let mut client = NodeClient::connect(&node_url(node).replace("grpc://", "http://"), origin)
        .await
        .expect("connect to the node");
    let numbers = client.probe(path).await.expect("probe");
    (
        numbers.memory_sequence_number,
        numbers.durable_sequence_number,
    )
}

/// Waits until the node reports `origin` durable at or past `lsn`, with
/// the replicator still running.
async fn wait_durable(
    node: &ServeProcess,
    replicator: &mut Replicator,
    origin: &str,
    path: &str,
    lsn: u64,
) {
    let deadline = std::time::Instant::now() + Duration::from_secs(300);
    loop {
        replicator.assert_running();
        if node_numbers(node, origin, path).await.1 >= Some(lsn) {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {origin} to be durable at {lsn:X}; status {}; log:\n{}",
            replicator.status(),
            replicator.log_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// ---------------------------------------------------------------------------
// Comparing Postgres and Delta
// ---------------------------------------------------------------------------

/// Every row of `schema.table` as display strings of the replicator's Arrow
/// types, from Postgres and from the Delta table, both sorted.
async fn both_sides(
    pg: &tokio_postgres::Client,
    data_dir: &Path,
    schema: &str,
    table: &str,
) -> (Vec<Vec<String>>, Vec<Vec<String>>) {
    let catalog = publication_tables(pg, "pub")
        .await
        .expect("publication tables")
        .into_iter()
        .find(|t| t.namespace == schema && t.name == table)
        .expect("the table is published");
    let types: Vec<PgType> = catalog
        .columns
        .iter()
        .map(|c| PgType::from_oid(c.type_oid, c.type_modifier).expect("a supported type"))
        .collect();
    let names: Vec<String> = catalog
        .columns
        .iter()
        .map(|c| format!("\"{}\"", c.name))
        .collect();
    let keys: Vec<String> = catalog
        .columns
        .iter()
        .filter(|c| c.is_key)
        .map(|c| format!("\"{}\"", c.name))
        .collect();
    let sql = format!(
        "SELECT {} FROM \"{schema}\".\"{table}\" ORDER BY {}",
        names.join(", "),
        keys.join(", ")
    );
    let rows: Vec<Vec<Option<String>>> = pg
        .simple_query(&sql)
        .await
        .expect("select")
        .into_iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(row) => Some(
                (0..row.len())
                    .map(|i| row.get(i).map(str::to_string))
                    .collect(),
            ),
            _ => None,
        })
        .collect();
    let pg_columns: Vec<ArrayRef> = types
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let mut builder = ColumnBuilder::new(*t, rows.len());
            for row in &rows {
                builder.append(row[i].as_deref()).expect("a valid value");
            }
            builder.finish().expect("a column")
        })
        .collect();
    let lake = std::path::absolute(data_dir.join("lake")).expect("absolute lake");
    let root = url::Url::from_directory_path(&lake).expect("a file URL");
    let location = flightlog::identity::TableId::parse(
        root.as_str(),
        &Default::default(),
        &format!("{schema}/{table}"),
    )
    .expect("a table location");
    let batches = flightlog::lake::read_table(&location)
        .await
        .expect("read the Delta table");
    let delta_columns: Vec<ArrayRef> = if batches.is_empty() {
        pg_columns.iter().map(|c| c.slice(0, 0)).collect()
    } else {
        let batch = concat_batches(&batches[0].schema(), &batches).expect("concat");
        catalog
            .columns
            .iter()
            .zip(&types)
            .map(|(c, t)| match batch.column_by_name(&c.name) {
                Some(column) => arrow::compute::cast(column, &t.arrow_type()).expect("cast"),
                None => arrow::array::new_null_array(&t.arrow_type(), batch.num_rows()),
            })
            .collect()
    };
    (render(&pg_columns), render(&delta_columns))
}

fn render(columns: &[ArrayRef]) -> Vec<Vec<String>> {
    let options = FormatOptions::default().with_null("NULL");
    let formatters: Vec<ArrayFormatter<'_>> = columns
        .iter()
        .map(|c| ArrayFormatter::try_new(c.as_ref(), &options).expect("a formatter"))
        .collect();
    let rows = columns.first().map_or(0, |c| c.len());
    let mut out: Vec<Vec<String>> = (0..rows)
        .map(|row| {
            formatters
                .iter()
                .map(|f| f.value(row).to_string())
                .collect()
        })
        .collect();
    out.sort();
    out
}

async fn assert_same(pg: &tokio_postgres::Client, data_dir: &Path, schema: &str, table: &str) {
    let (postgres, delta) = both_sides(pg, data_dir, schema, table).await;
    if postgres != delta {
        // Sets, not Vec::contains: 100k rows each way would take minutes.
        let in_pg: std::collections::HashSet<&Vec<String>> = postgres.iter().collect();
        let in_delta: std::collections::HashSet<&Vec<String>> = delta.iter().collect();
        let only_pg: Vec<_> = postgres
            .iter()
            .filter(|r| !in_delta.contains(r))
            .take(5)
            .collect();
        let only_delta: Vec<_> = delta
            .iter()
            .filter(|r| !in_pg.contains(r))
            .take(5)
            .collect();
        panic!(
            "{schema}.{table}: Postgres has {} rows, Delta {}; only in Postgres (first 5): {only_pg:?}; only in Delta: {only_delta:?}",
            postgres.len(),
            delta.len()
        );
    }
    assert!(
        !postgres.is_empty(),
        "{schema}.{table} is empty: nothing compared"
    );
}

fn big_text_sql() -> &'static str {
    // ~13 KB of hex from md5: not compressible below the TOAST threshold,
    // and the column is EXTERNAL (no compression) anyway.
    "(SELECT string_agg(md5(g::text || random()::text), '') FROM generate_series(1, 400) g)"
}

const ITEMS: &str = "CREATE TABLE items (
    id int8 PRIMARY KEY, small int2, medium int4, f4 float4, f8 float8,
    price numeric(12,2), exact numeric, name text, code varchar(20), letter char(3),
    flag bool, day date, at time, seen timestamp, seen_tz timestamptz,
    blob bytea, uid uuid, doc json, docb jsonb, big text);
    ALTER TABLE items ALTER COLUMN big SET STORAGE EXTERNAL;
    CREATE TABLE other (a int4, b text, note text, PRIMARY KEY (a, b));
    CREATE TABLE nokey (x int4, y text);
    CREATE TABLE wide (id int4 PRIMARY KEY, ok text, odd point);
    CREATE PUBLICATION pub FOR TABLE items, other, nokey, wide (id, ok);";

fn items_insert(range: &str) -> String {
    format!(
        "INSERT INTO items SELECT g, (g % 30000)::int2, g::int4, g / 7.0, g / 3.0,
           (g * 1.25)::numeric(12,2), (g::numeric / 7), 'name ' || g, 'c' || g, 'ab',
           g % 2 = 0, DATE '2000-01-01' + (g % 9000), TIME '00:00:00' + g * INTERVAL '1.5 second',
           TIMESTAMP '2001-02-03 04:05:06.789' + g * INTERVAL '1 minute',
           TIMESTAMPTZ '2020-01-01 00:00:00+02' + g * INTERVAL '1 second',
           decode(lpad(to_hex(g), 8, '0'), 'hex'), md5(g::text)::uuid,
           json_build_object('g', g), jsonb_build_object('k', g, 'l', ARRAY[1, 2]),
           CASE WHEN g % 1000 = 0 THEN 'short' END
         FROM generate_series({range}) g"
    )
}

// ---------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_while_writing_then_a_mixed_stream_matches_postgres_row_for_row() {
    let server = Postgres::start(&[]);
    let pg = server.client().await;
    pg.batch_execute(ITEMS).await.expect("schema");
    pg.batch_execute(&items_insert("1, 100000"))
        .await
        .expect("100k rows");
    pg.batch_execute("INSERT INTO other SELECT g, 'b' || g, NULL FROM generate_series(1, 50) g; INSERT INTO nokey VALUES (1, 'x'); INSERT INTO wide VALUES (1, 'a', '(1,2)'), (2, 'b', NULL)")
        .await
        .expect("other rows");
    let dir = tempfile::tempdir().expect("tempdir");
    let data_dir = dir.path().join("node");
    let node = start_node(&data_dir, free_port());
    let mut replicator = Replicator::start(&server, &node, "s_main", dir.path());

    // Writes while the copy runs: they land either in the snapshot or in
    // the stream, never in both or neither.
    for i in 0..200i64 {
        let id = 100_001 + i;
        transaction(
            &pg,
            &format!(
                "{}; UPDATE items SET name = 'during copy {i}' WHERE id = {}; DELETE FROM items WHERE id = {};",
                items_insert(&format!("{id}, {id}")),
                1 + i * 7,
                2 + i * 11
            ),
        )
        .await;
    }

    // The mixed workload.
    transaction(
        &pg,
        &format!(
            "UPDATE items SET big = {} WHERE id BETWEEN 10 AND 14",
            big_text_sql()
        ),
    )
    .await;
    // TOASTed big unchanged by these updates (pgoutput sends 'u'), also
    // across a key change.
    transaction(
        &pg,
        "UPDATE items SET name = 'toast kept' WHERE id BETWEEN 10 AND 12",
    )
    .await;
    transaction(&pg, "UPDATE items SET id = 900010 WHERE id = 14").await;
    // Key changes, a swap through a free key, NULLs, deletes.
    transaction(
        &pg,
        "UPDATE items SET id = 900001 WHERE id = 20; UPDATE items SET id = 20 WHERE id = 21; \
         UPDATE items SET id = 21 WHERE id = 900001; \
         UPDATE items SET small = NULL, price = NULL, doc = NULL, seen_tz = NULL WHERE id = 30; \
         DELETE FROM items WHERE id BETWEEN 40 AND 49; \
         INSERT INTO items (id) VALUES (950000)",
    )
    .await;
    // Edge values of every type.
    transaction(
        &pg,
        "INSERT INTO items VALUES (960000, -32768, 2147483647, 'NaN', '-Infinity', -9999999999.99, \
         'NaN', '', 'x', 'a', false, '1970-01-01', '24:00:00', '1900-01-01 00:00:00.000001', \
         '1969-12-31 23:59:59.999999+00', '\\x', '00000000-0000-0000-0000-000000000000', \
         '[]', '{\"é\": \"ü\"}', NULL)",
    )
    .await;
    // Several tables in one transaction.
    transaction(
        &pg,
        "UPDATE other SET note = 'multi' WHERE a <= 10; UPDATE other SET b = 'changed' WHERE a = 11; \
         DELETE FROM other WHERE a = 12; UPDATE items SET medium = -1 WHERE id = 50; \
         INSERT INTO other VALUES (1000, 'new', NULL)",
    )
    .await;
    // One transaction of 100k rows.
    transaction(
        &pg,
        "UPDATE items SET medium = medium + 1 WHERE id <= 100000",
    )
    .await;
    // ADD COLUMN in the middle of the stream.
    transaction(
        &pg,
        "ALTER TABLE items ADD COLUMN added int8; UPDATE items SET added = id WHERE id < 100",
    )
    .await;
    transaction(
        &pg,
        "INSERT INTO items (id, added, name) VALUES (970000, 7, 'after add column')",
    )
    .await;
    // Refused: TRUNCATE and the table without a key.
    transaction(&pg, "INSERT INTO nokey VALUES (2, 'y')").await;
    // A column list leaves out a column of a type not carried.
    transaction(&pg, "UPDATE wide SET ok = 'changed', odd = '(3,4)' WHERE id = 1; INSERT INTO wide VALUES (3, 'c', NULL)").await;
    transaction(&pg, "TRUNCATE other").await;
    transaction(&pg, "INSERT INTO other VALUES (1, 'after truncate', NULL)").await;
    let last = transaction(&pg, "UPDATE items SET name = 'last' WHERE id = 99").await;

    wait_durable(&node, &mut replicator, "s_main", "public/items", last).await;
    let confirmed = slot_confirmed(&pg, "s_main")
        .await
        .expect("the slot exists");
    let (_, durable) = node_numbers(&node, "s_main", "public/items").await;
    assert!(
        Some(confirmed) <= durable,
        "confirmed {confirmed:X} passed durable {durable:?}"
    );

    assert_same(&pg, &data_dir, "public", "items").await;
    assert_same(&pg, &data_dir, "public", "wide").await;
    // `other` was truncated in Postgres, not in Delta (refused): compare
    // what Delta must hold, the rows before the TRUNCATE plus the insert.
    let (_, delta_other) = both_sides(&pg, &data_dir, "public", "other").await;
    assert!(
        delta_other.iter().any(|r| r[1] == "after truncate"),
        "{delta_other:?}"
    );
    assert!(
        delta_other.iter().any(|r| r[2] == "multi"),
        "{delta_other:?}"
    );
    assert!(!delta_other.iter().any(|r| r[0] == "12"), "{delta_other:?}");

    // A few values checked against what they must be, not against the
    // replicator's own conversion.
    let (_, delta_items) = both_sides(&pg, &data_dir, "public", "items").await;
    let edge = delta_items
        .iter()
        .find(|r| r[0] == "960000")
        .expect("the edge row");
    assert_eq!(edge[3], "NaN");
    assert_eq!(edge[4], "-inf");
    assert_eq!(edge[5], "-9999999999.99");
    assert_eq!(edge[6], "NaN");
    assert_eq!(edge[12], "86400000000");
    assert_eq!(edge[13], "1900-01-01T00:00:00.000001");
    assert_eq!(edge[14], "1969-12-31T23:59:59.999999Z");
    let toasted = delta_items.iter().find(|r| r[0] == "10").expect("row 10");
    assert_eq!(toasted[7], "toast kept");
    assert!(toasted[19].len() > 8192, "the TOASTed value survived");
    let moved = delta_items
        .iter()
        .find(|r| r[0] == "900010")
        .expect("row 900010");
    assert!(
        moved[19].len() > 8192,
        "the TOASTed value moved with its key"
    );

    let status = replicator.status();
    assert!(
        status["tables_refused"]["public.nokey"].is_string(),
        "nokey refused by name: {status}"
    );
    assert_eq!(status["truncates_refused"]["public.other"], 1, "{status}");
    assert_eq!(
        status["copy_rows"]["public.items"]
            .as_u64()
            .map(|n| n >= 100_000),
        Some(true)
    );
    let log = replicator.log_text();
    assert!(
        log.contains("public.nokey") && log.contains("TRUNCATE"),
        "{log}"
    );
}

/// `GET /metrics` of a replicator's `--metrics-listen` endpoint.
fn scrape(address: SocketAddr) -> String {
    let (status, text) = http_get(address, "/metrics");
    assert_eq!(status, 200, "{text}");
    text
}

/// Polls the replicator's metrics until `done` holds for them (from the
/// log line that says the endpoint is bound).
async fn wait_metrics(
    replicator: &mut Replicator,
    address: SocketAddr,
    what: &str,
    done: impl Fn(&str) -> bool,
) -> String {
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    loop {
        replicator.assert_running();
        let bound = address.to_string();
        let log = replicator.log_text();
        if !log
            .lines()
            .any(|line| line.contains("metrics endpoint GET /metrics") && line.contains(&bound))
        {
            assert!(
                std::time::Instant::now() < deadline,
                "the metrics endpoint never started; log:\n{}",
                replicator.log_text()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        }
        let text = scrape(address);
        if done(&text) {
            return text;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}; metrics:\n{text}\nlog:\n{}",
            replicator.log_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The replicator is in its stream (the initial copy is done).
fn streaming(text: &str) -> bool {
    sample(text, r#"flightlog_replicate_phase{phase="streaming"}"#) == Some(1.0)
}

/// A metric's value (0 when absent).
fn metric(text: &str, name: &str) -> f64 {
    sample(text, name).unwrap_or(0.0)
}

/// Starts a replicator of `slot` with its metrics on a free port.
fn start_with_metrics(
    pg: &Postgres,
    node: &ServeProcess,
    slot: &str,
    dir: &Path,
    extra: &[&str],
) -> (Replicator, SocketAddr) {
    let address = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let address_text = address.to_string();
    let mut args = vec!["--idle-confirm-ms", "0", "--metrics-listen", &address_text];
    args.extend_from_slice(extra);
    (Replicator::start_with(pg, node, slot, dir, &args), address)
}

/// A Postgres (started with `settings`) holding `schema`, and a node.
struct Setup {
    server: Postgres,
    pg: tokio_postgres::Client,
    dir: tempfile::TempDir,
    data_dir: PathBuf,
    node: ServeProcess,
}

impl Setup {
    async fn start(settings: &[&str], schema: &str) -> Setup {
        Self::start_with(settings, schema, NODE_ARGS).await
    }

    /// With the node's flags `node_args`.
    async fn start_with(settings: &[&str], schema: &str, node_args: &[&str]) -> Setup {
        let server = Postgres::start(settings);
        let pg = server.client().await;
        pg.batch_execute(schema).await.expect("schema");
        let dir = tempfile::tempdir().expect("tempdir");
        let data_dir = dir.path().join("node");
        let listen = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let node = ServeProcess::start_on(&data_dir, listen, node_args);
        Setup {
            server,
            pg,
            dir,
            data_dir,
            node,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_metrics_endpoint_counts_what_was_copied_streamed_refused_and_confirmed() {
    let Setup {
        server,
        pg,
        dir,
        data_dir,
        node,
    } = Setup::start(
        &[],
        "CREATE TABLE m_items (id int8 PRIMARY KEY, name text); \
         CREATE TABLE m_trunc (id int4 PRIMARY KEY); CREATE TABLE m_nokey (x int4); \
         INSERT INTO m_items SELECT g, 'n' || g FROM generate_series(1, 5000) g; \
         INSERT INTO m_trunc VALUES (1); \
         CREATE PUBLICATION pub FOR TABLE m_items, m_trunc, m_nokey",
    )
    .await;
    let (mut replicator, address) =
        start_with_metrics(&server, &node, "s_metrics", dir.path(), &[]);
    let copied = r#"flightlog_replicate_copy_rows_total{schema="public",table="m_items"}"#;
    let text = wait_metrics(&mut replicator, address, "the copy", streaming).await;
    assert_eq!(sample(&text, copied), Some(5000.0), "{text}");
    assert_eq!(
        sample(
            &text,
            r#"flightlog_replicate_copy_rows_total{schema="public",table="m_trunc"}"#
        ),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, r#"flightlog_replicate_phase{phase="copy"}"#),
        Some(0.0)
    );

    // 4 transactions: 17 changes carried, one refused, one TRUNCATE.
    transaction(
        &pg,
        "INSERT INTO m_items SELECT g, 'new' FROM generate_series(5001, 5010) g",
    )
    .await;
    transaction(
        &pg,
        "UPDATE m_items SET name = 'u' WHERE id <= 5; DELETE FROM m_items WHERE id IN (6, 7)",
    )
    .await;
    transaction(&pg, "INSERT INTO m_nokey VALUES (1)").await;
    let last = transaction(&pg, "TRUNCATE m_trunc").await;
    wait_durable(&node, &mut replicator, "s_metrics", "public/m_items", last).await;
    let (memory, durable) = node_numbers(&node, "s_metrics", "public/m_items").await;
    let memory = memory.expect("a memory sequence") as f64;
    // Idle and durable: confirmed to Postgres, and no lag left.
    let text = wait_metrics(&mut replicator, address, "confirmed and no lag", |text| {
        sample(text, "flightlog_replicate_confirmed_lsn") == Some(memory)
            && sample(text, "flightlog_replicate_lag_bytes") == Some(0.0)
    })
    .await;
    let value = |name: &str| sample(&text, name).unwrap_or_else(|| panic!("{name} in\n{text}"));
    assert_eq!(value("flightlog_replicate_transactions_total"), 4.0);
    assert_eq!(value("flightlog_replicate_transactions_skipped_total"), 0.0);
    assert_eq!(value("flightlog_replicate_changes_total"), 17.0);
    assert_eq!(value("flightlog_replicate_last_commit_lsn"), memory);
    assert!(value("flightlog_replicate_last_commit_lsn") >= last as f64);
    assert_eq!(value("flightlog_replicate_node_memory_sequence"), memory);
    assert_eq!(value("flightlog_replicate_node_durable_sequence"), memory);
    assert!(durable >= Some(last));
    assert_eq!(value("flightlog_replicate_lag_seconds"), 0.0);
    assert_eq!(
        value(r#"flightlog_replicate_refused_changes_total{table="public.m_nokey"}"#),
        1.0
    );
    assert_eq!(
        value(r#"flightlog_replicate_truncates_refused_total{table="public.m_trunc"}"#),
        1.0
    );
    assert_eq!(value("flightlog_replicate_sessions_total"), 1.0);
    assert_eq!(value("flightlog_replicate_reconnects_total"), 0.0);
    // The slot reaches the confirmed position the metrics show (with the
    // next standby status update), and not beyond.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let confirmed = slot_confirmed(&pg, "s_metrics").await.map(|lsn| lsn as f64);
        assert!(confirmed <= Some(memory), "{confirmed:?} passed {memory}");
        if confirmed == Some(memory) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "slot at {confirmed:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_same(&pg, &data_dir, "public", "m_items").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_column_of_an_unsupported_type_stops_the_replicator_naming_it() {
    let server = Postgres::start(&[]);
    let pg = server.client().await;
    pg.batch_execute(
        "CREATE TABLE shapes (id int4 PRIMARY KEY, corner point); \
         CREATE PUBLICATION pub FOR TABLE shapes",
    )
    .await
    .expect("schema");
    let dir = tempfile::tempdir().expect("tempdir");
    let node = start_node(&dir.path().join("node"), free_port());
    let mut replicator = Replicator::start(&server, &node, "s_type", dir.path());
    let status = replicator.child.wait().expect("the replicator exits");
    assert!(!status.success());
    let log = replicator.log_text();
    assert!(
        log.contains("public.shapes") && log.contains("corner") && log.contains("point"),
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_slot_moves_on_through_the_node_and_never_ahead_of_it() {
    let server = Postgres::start(&[]);
    let pg = server.client().await;
    pg.batch_execute(
        "CREATE TABLE quiet (id int4 PRIMARY KEY); CREATE TABLE busy (id int4); \
         INSERT INTO quiet VALUES (1); CREATE PUBLICATION pub FOR TABLE quiet",
    )
    .await
    .expect("schema");
    let dir = tempfile::tempdir().expect("tempdir");
    let node = start_node(&dir.path().join("node"), free_port());
    let mut replicator = Replicator::start_with(
        &server,
        &node,
        "s_idle",
        dir.path(),
        &["--idle-confirm-ms", "300"],
    );
    // Only an unpublished table is written: nothing reaches the node, yet
    // the slot must not keep pinning the WAL written after it.
    let written = transaction(&pg, "INSERT INTO busy SELECT generate_series(1, 1000)").await;
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    loop {
        replicator.assert_running();
        let confirmed = slot_confirmed(&pg, "s_idle").await.unwrap_or(0);
        let (_, durable) = node_numbers(&node, "s_idle", "public/quiet").await;
        assert!(
            confirmed <= durable.unwrap_or(0) + 1 || durable <= Some(1),
            "confirmed {confirmed:X} passed durable {durable:?}"
        );
        if confirmed > written {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the idle slot never moved past {written:X} (confirmed {confirmed:X}); log:\n{}",
            replicator.log_text()
        );
        // Keep the server writing WAL the slot does not publish.
        pg.batch_execute("INSERT INTO busy VALUES (0)")
            .await
            .expect("write");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_confirm_never_passes_a_commit_the_walsender_has_not_sent_yet() {
    let server = Postgres::start(&[]);
    let pg = server.client().await;
    pg.batch_execute(
        "CREATE TABLE quiet (id int4 PRIMARY KEY); CREATE TABLE busy (id int4, pad text); \
         INSERT INTO quiet VALUES (1); CREATE PUBLICATION pub FOR TABLE quiet",
    )
    .await
    .expect("schema");
    let dir = tempfile::tempdir().expect("tempdir");
    let data_dir = dir.path().join("node");
    let node = start_node(&data_dir, free_port());
    let mut replicator = Replicator::start_with(
        &server,
        &node,
        "s_behind",
        dir.path(),
        &["--idle-confirm-ms", "100"],
    );
    wait_durable(&node, &mut replicator, "s_behind", "public/quiet", 2).await;
    // A bulk load of an unpublished table keeps the walsender busy (it
    // decodes every change, then replays them at the commit) while the
    // server's insert position is already past the published commit that
    // follows; the replicator sees nothing but keepalives meanwhile.
    pg.batch_execute(
        "INSERT INTO busy SELECT g, repeat('x', 40) FROM generate_series(1, 2000000) g",
    )
    .await
    .expect("bulk load");
    let published = transaction(&pg, "INSERT INTO quiet VALUES (2)").await;
    wait_durable(
        &node,
        &mut replicator,
        "s_behind",
        "public/quiet",
        published,
    )
    .await;
    assert_same(&pg, &data_dir, "public", "quiet").await;
    let (_, delta) = both_sides(&pg, &data_dir, "public", "quiet").await;
    assert_eq!(
        delta.len(),
        2,
        "the published commit after the bulk load is missing"
    );
}

const STREAMED: &str = "CREATE TABLE big (id int8 PRIMARY KEY, name text, n int4);
    INSERT INTO big SELECT g, 'copied', 0 FROM generate_series(1, 100) g;
    CREATE PUBLICATION pub FOR TABLE big";

/// Runs `sql` (which may leave a transaction open).
async fn run(pg: &tokio_postgres::Client, sql: &str) {
    pg.batch_execute(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
}

fn big_insert(from: u64, to: u64, name: &str) -> String {
    format!("INSERT INTO big SELECT g, '{name} ' || g, g % 7 FROM generate_series({from}, {to}) g")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_transactions_are_streamed_and_aborts_drop_exactly_their_changes() {
    // 64kB: every transaction below of more than a few hundred rows is
    // streamed while in progress.
    let Setup {
        server,
        pg,
        dir,
        data_dir,
        node,
    } = Setup::start(&["logical_decoding_work_mem=64kB"], STREAMED).await;
    let (mut replicator, metrics) = start_with_metrics(&server, &node, "s_stream", dir.path(), &[]);
    let text = wait_metrics(&mut replicator, metrics, "the stream", streaming).await;
    assert_eq!(metric(&text, "flightlog_replicate_protocol_version"), 2.0);

    // One transaction of 100k rows.
    transaction(&pg, &big_insert(1_001, 101_000, "big")).await;
    // A rolled back one.
    run(
        &pg,
        &format!(
            "BEGIN; {}; ROLLBACK",
            big_insert(200_001, 250_000, "rolled back")
        ),
    )
    .await;
    // A committed one whose savepoint is rolled back (its inserts and its
    // updates of committed rows vanish), with changes before and after.
    transaction(
        &pg,
        &format!(
            "{}; SAVEPOINT a; {}; UPDATE big SET name = 'in savepoint' WHERE id <= 20000; \
             ROLLBACK TO SAVEPOINT a; UPDATE big SET n = -1 WHERE id BETWEEN 1001 AND 1500; \
             SAVEPOINT b; {}; RELEASE SAVEPOINT b",
            big_insert(300_001, 320_000, "before savepoint"),
            big_insert(400_001, 420_000, "in savepoint"),
            big_insert(500_001, 505_000, "released savepoint"),
        ),
    )
    .await;
    // Two open at once (their chunks interleave), a small whole one in
    // between; the second commits first.
    let other = server.client().await;
    run(
        &pg,
        &format!("BEGIN; {}", big_insert(600_001, 610_000, "first")),
    )
    .await;
    run(
        &other,
        &format!("BEGIN; {}", big_insert(700_001, 710_000, "second")),
    )
    .await;
    run(&pg, &big_insert(610_001, 620_000, "first")).await;
    transaction(
        &server.client().await,
        "UPDATE big SET name = 'small' WHERE id = 5",
    )
    .await;
    run(
        &other,
        "UPDATE big SET n = 2 WHERE id BETWEEN 2001 AND 9000; COMMIT",
    )
    .await;
    run(
        &pg,
        "DELETE FROM big WHERE id BETWEEN 3001 AND 4000; COMMIT",
    )
    .await;
    // One that was itself replicated into this server (it carries a
    // replication origin, which its first chunk names).
    let replicated = server.client().await;
    run(
        &replicated,
        "SELECT pg_replication_origin_create('upstream'); \
         SELECT pg_replication_origin_session_setup('upstream')",
    )
    .await;
    transaction(&replicated, &big_insert(900_001, 920_000, "from upstream")).await;
    let last = transaction(&pg, "UPDATE big SET name = 'last' WHERE id = 6").await;

    wait_durable(&node, &mut replicator, "s_stream", "public/big", last).await;
    assert_same(&pg, &data_dir, "public", "big").await;
    let text = scrape(metrics);
    let value = |name: &str| metric(&text, name);
    for line in text
        .lines()
        .filter(|l| l.starts_with("flightlog_replicate_stream"))
    {
        eprintln!("{line}");
    }
    assert!(
        value("flightlog_replicate_stream_chunks_total") > 0.0,
        "nothing was streamed:\n{text}"
    );
    // The 100k, the savepoint one, the two interleaved ones, the
    // replicated one.
    assert!(
        value("flightlog_replicate_streamed_transactions_committed_total") >= 5.0,
        "{text}"
    );
    assert_eq!(
        value("flightlog_replicate_streamed_transactions_aborted_total"),
        1.0,
        "{text}"
    );
    assert!(
        value("flightlog_replicate_streamed_subtransactions_aborted_total") >= 1.0,
        "{text}"
    );
    assert_eq!(value("flightlog_replicate_stream_open_transactions"), 0.0);
    assert_eq!(value("flightlog_replicate_stream_buffer_bytes"), 0.0);
    assert_eq!(value("flightlog_replicate_reconnects_total"), 0.0, "{text}");

    // A replicator killed while a streamed transaction is open: Postgres
    // sends it again from its start to the next one.
    let chunks = value("flightlog_replicate_stream_chunks_total");
    run(
        &pg,
        &format!("BEGIN; {}", big_insert(800_001, 830_000, "across a kill")),
    )
    .await;
    wait_metrics(
        &mut replicator,
        metrics,
        "chunks of the open transaction",
        |text| metric(text, "flightlog_replicate_stream_chunks_total") > chunks,
    )
    .await;
    replicator.kill();
    drop(replicator);
    let (mut replicator, metrics) = start_with_metrics(&server, &node, "s_stream", dir.path(), &[]);
    wait_metrics(&mut replicator, metrics, "the stream again", streaming).await;
    run(
        &pg,
        "UPDATE big SET name = 'after the kill' WHERE id BETWEEN 800001 AND 800100; COMMIT",
    )
    .await;
    let last = transaction(&pg, "UPDATE big SET name = 'last again' WHERE id = 6").await;
    wait_durable(&node, &mut replicator, "s_stream", "public/big", last).await;
    assert_same(&pg, &data_dir, "public", "big").await;
    let text = scrape(metrics);
    assert!(
        metric(&text, "flightlog_replicate_stream_chunks_total") > 0.0,
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streamed_transaction_past_the_buffer_limit_arrives_without_streaming() {
    let Setup {
        server,
        pg,
        dir,
        data_dir,
        node,
    } = Setup::start(&["logical_decoding_work_mem=64kB"], STREAMED).await;
    let (mut replicator, metrics) = start_with_metrics(
        &server,
        &node,
        "s_limit",
        dir.path(),
        &["--stream-buffer-bytes", "1000000"],
    );
    // The copy is done (the transaction below is not in its snapshot).
    let text = wait_metrics(&mut replicator, metrics, "the stream", streaming).await;
    assert_eq!(metric(&text, "flightlog_replicate_protocol_version"), 2.0);
    // ~100k rows: several MB, past the 1 MB limit.
    let last = transaction(&pg, &big_insert(1_001, 101_000, "big")).await;
    wait_durable(&node, &mut replicator, "s_limit", "public/big", last).await;
    assert_same(&pg, &data_dir, "public", "big").await;
    let text = scrape(metrics);
    assert_eq!(
        metric(&text, "flightlog_replicate_protocol_version"),
        1.0,
        "{text}"
    );
    assert!(
        metric(&text, "flightlog_replicate_reconnects_total") >= 1.0,
        "{text}"
    );
    let log = replicator.log_text();
    assert!(log.contains("--stream-buffer-bytes (1000000)"), "{log}");
    assert!(log.contains("continuing without streaming"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streamed_transaction_the_node_already_has_is_skipped_after_a_restart() {
    // A slow flush: the transaction is in the node's WAL (memory) for
    // seconds before it is durable, so Postgres has not been told and
    // sends it again to the next replicator.
    let Setup {
        server,
        pg,
        dir,
        data_dir,
        node,
    } = Setup::start_with(
        &["logical_decoding_work_mem=64kB"],
        STREAMED,
        &["--max-lag-ms", "8000"],
    )
    .await;
    let (mut replicator, metrics) = start_with_metrics(&server, &node, "s_skip", dir.path(), &[]);
    wait_metrics(&mut replicator, metrics, "the stream", streaming).await;
    let (copied, _) = node_numbers(&node, "s_skip", "public/big").await;
    let lsn = transaction(&pg, &big_insert(1_001, 31_000, "streamed")).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    let memory = loop {
        replicator.assert_running();
        let (memory, durable) = node_numbers(&node, "s_skip", "public/big").await;
        if memory > copied && memory >= Some(lsn) {
            assert!(durable < memory, "durable already: the test proves nothing");
            break memory;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the node never got it"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let text = scrape(metrics);
    assert_eq!(
        metric(
            &text,
            "flightlog_replicate_streamed_transactions_committed_total"
        ),
        1.0,
        "{text}"
    );
    replicator.kill();
    drop(replicator);
    assert!(
        slot_confirmed(&pg, "s_skip").await < memory,
        "confirmed past what the node had durable"
    );

    let (mut replicator, metrics) = start_with_metrics(&server, &node, "s_skip", dir.path(), &[]);
    let text = wait_metrics(&mut replicator, metrics, "the resent transaction", |text| {
        metric(
            text,
            "flightlog_replicate_streamed_transactions_committed_total",
        ) >= 1.0
    })
    .await;
    assert_eq!(
        metric(&text, "flightlog_replicate_transactions_skipped_total"),
        1.0,
        "{text}"
    );
    assert_eq!(
        metric(&text, "flightlog_replicate_transactions_total"),
        0.0,
        "{text}"
    );
    assert!(
        metric(&text, "flightlog_replicate_stream_chunks_total") > 0.0,
        "{text}"
    );
    wait_durable(&node, &mut replicator, "s_skip", "public/big", lsn).await;
    assert_same(&pg, &data_dir, "public", "big").await;
}

/// A tiny deterministic generator (the loop is reproducible from its seed).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_of_node_or_replicator_loses_and_doubles_nothing() {
    let kills: u64 = std::env::var("FLIGHTLOG_REPLICATE_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(4);
    let seed: u64 = std::env::var("FLIGHTLOG_REPLICATE_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0x5eed_f00d);
    eprintln!("seed {seed}, {kills} kills");
    let server = Postgres::start(&[]);
    let pg = server.client().await;
    pg.batch_execute(ITEMS).await.expect("schema");
    // Enough rows that the first kill (always the replicator's) is likely
    // to land in the initial copy, while the writer also deletes rows.
    pg.batch_execute(&items_insert("1, 30000"))
        .await
        .expect("rows");
    let dir = tempfile::tempdir().expect("tempdir");
    let data_dir = dir.path().join("node");
    let port = free_port();
    let mut node = start_node(&data_dir, port);
    let mut replicator = Replicator::start(&server, &node, "s_kill", dir.path());

    // A writer that never stops while the kills happen.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let stop = Arc::clone(&stop);
        let client = server.client().await;
        tokio::spawn(async move {
            let mut rng = Rng(seed | 1);
            let mut next_id = 1_000_000i64;
            let mut last = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let id = 1 + rng.below(30_000) as i64;
                let sql = match rng.below(5) {
                    0 => {
                        next_id += 1;
                        items_insert(&format!("{next_id}, {next_id}"))
                    }
                    1 => format!("UPDATE items SET name = 'u{}' WHERE id = {id}", rng.next()),
                    2 => format!("DELETE FROM items WHERE id = {id}"),
                    3 => {
                        next_id += 1;
                        format!("UPDATE items SET id = {next_id} WHERE id = {id}")
                    }
                    _ => format!(
                        "UPDATE items SET medium = medium + 1 WHERE id BETWEEN {id} AND {}",
                        id + 50
                    ),
                };
                last = transaction(&client, &sql).await;
                // Paced below what the replicator carries (one round trip
                // per transaction), so a long loop ends without a backlog.
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            last
        })
    };

    let mut rng = Rng(seed);
    let mut checks = 0;
    // One more round when none found the copy durable (on a loaded machine
    // the copy can outlast the first rounds, and each kill in it starts it
    // over): it waits for the copy before its check and its kill.
    for round in 0..=kills {
        if round == kills && checks > 0 {
            break;
        }
        let pause = if round == 0 {
            200 + rng.below(400)
        } else {
            300 + rng.below(1500)
        };
        tokio::time::sleep(Duration::from_millis(pause)).await;
        if round == kills {
            wait_durable(&node, &mut replicator, "s_kill", "public/items", 2).await;
        }
        // confirmed_flush_lsn first, then the node's durable sequence
        // (which only grows): confirmed must never be ahead. Until the
        // copy is durable a new slot stands at its consistent point, which
        // the replicator did not confirm (an interrupted copy is redone
        // with a new slot), so the check starts once the copy is durable.
        if let Some(confirmed) = slot_confirmed(&pg, "s_kill").await {
            let (_, durable) = node_numbers(&node, "s_kill", "public/items").await;
            if durable > Some(1) {
                assert!(
                    confirmed <= durable.unwrap_or(0) + 1,
                    "round {round}: confirmed_flush_lsn {confirmed:X} passed durable {durable:?}"
                );
                checks += 1;
            }
        }
        if round > 0 && rng.below(2) == 0 {
            eprintln!("round {round}: SIGKILL node");
            node.kill();
            node = start_node(&data_dir, port);
        } else {
            eprintln!(
                "round {round}: SIGKILL replicator (phase {})",
                replicator.status()["phase"]
            );
            replicator.kill();
            replicator = Replicator::start(&server, &node, "s_kill", dir.path());
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let recopies = replicator
        .log_text()
        .matches("the initial copy did not complete")
        .count();
    eprintln!("initial copies redone after a kill: {recopies}");
    let last = writer.await.expect("the writer");
    wait_durable(&node, &mut replicator, "s_kill", "public/items", last).await;
    assert_same(&pg, &data_dir, "public", "items").await;
    assert!(checks > 0, "confirmed_flush_lsn was never checked");
}

#[test]
fn arrow_columns_have_the_replicators_types() {
    // The comparison above renders both sides through these types; pin one.
    let mut builder = ColumnBuilder::new(
        PgType::Decimal {
            precision: 12,
            scale: 2,
        },
        1,
    );
    builder.append(Some("-1.50")).expect("a decimal");
    let column = builder.finish().expect("a column");
    assert_eq!(render(&[column]), vec![vec!["-1.50".to_string()]]);
}

/// The figures in BENCHMARKS.md (not a test: no assertion on timings).
/// `FLIGHTLOG_REPLICATE_BENCH_ROWS` (default 200000) rows are copied, then
/// `FLIGHTLOG_REPLICATE_BENCH_UPDATES` (default 5000) pgbench-style
/// single-row updates are streamed, each committed by one client in turn.
/// Reference measured in the same run: the rate at which Postgres itself
/// loads the rows and commits the updates. `FLIGHTLOG_REPLICATE_BENCH_PACE_MS`
/// pauses between commits (lag without a backlog).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: cargo test --test replicate replicate_figures -- --ignored --nocapture"]
async fn replicate_figures() {
    let env = |name: &str, default: u64| {
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let rows = env("FLIGHTLOG_REPLICATE_BENCH_ROWS", 200_000);
    let updates = env("FLIGHTLOG_REPLICATE_BENCH_UPDATES", 5_000);
    // A pause between commits, for the lag of a pipeline without backlog.
    let pace = Duration::from_millis(env("FLIGHTLOG_REPLICATE_BENCH_PACE_MS", 0));
    let server = Postgres::start(&[]);
    let pg = server.client().await;
    pg.batch_execute(
        "CREATE TABLE accounts (aid int4 PRIMARY KEY, bid int4, abalance int4, filler char(84)); \
         CREATE PUBLICATION pub FOR TABLE accounts",
    )
    .await
    .expect("schema");
    let started = std::time::Instant::now();
    pg.batch_execute(&format!(
        "INSERT INTO accounts SELECT g, g / 100000, 0, '' FROM generate_series(1, {rows}) g"
    ))
    .await
    .expect("load");
    let load_seconds = started.elapsed().as_secs_f64();

    let dir = tempfile::tempdir().expect("tempdir");
    let data_dir = dir.path().join("node");
    let node = start_node(&data_dir, free_port());
    let started = std::time::Instant::now();
    let mut replicator = Replicator::start(&server, &node, "s_bench", dir.path());
    let consistent = loop {
        replicator.assert_running();
        if let (Some(memory), Some(durable)) =
            node_numbers(&node, "s_bench", "public/accounts").await
        {
            if memory > 1 && durable >= memory {
                break memory;
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let copy_seconds = started.elapsed().as_secs_f64();
    eprintln!("copy done at {consistent:X}");

    // Streamed updates: one client commits them in turn; a probe loop
    // notes when each becomes durable.
    let mut rng = Rng(42);
    let mut commits = Vec::with_capacity(updates as usize);
    let started = std::time::Instant::now();
    let samples = Arc::new(std::sync::Mutex::new(
        Vec::<(std::time::Instant, u64)>::new(),
    ));
    let poller = {
        let url = node_url(&node).replace("grpc://", "http://");
        let samples = Arc::clone(&samples);
        tokio::spawn(async move {
            let mut client = NodeClient::connect(&url, "s_bench").await.expect("connect");
            loop {
                let numbers = client.probe("public/accounts").await.expect("probe");
                let durable = numbers.durable_sequence_number.unwrap_or(0);
                {
                    let mut samples = samples.lock().expect("samples");
                    if samples.last().is_none_or(|s| s.1 < durable) {
                        samples.push((std::time::Instant::now(), durable));
                    }
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        })
    };
    for _ in 0..updates {
        let aid = 1 + rng.below(rows);
        let delta = rng.below(10_000) as i64 - 5_000;
        let lsn = transaction(
            &pg,
            &format!("UPDATE accounts SET abalance = abalance + {delta} WHERE aid = {aid}"),
        )
        .await;
        commits.push((std::time::Instant::now(), lsn));
        if !pace.is_zero() {
            tokio::time::sleep(pace).await;
        }
    }
    let postgres_seconds = started.elapsed().as_secs_f64();
    let last = commits.last().map_or(0, |c| c.1);
    wait_durable(&node, &mut replicator, "s_bench", "public/accounts", last).await;
    let stream_seconds = started.elapsed().as_secs_f64();
    // One more sample past the end, then stop the poller.
    tokio::time::sleep(Duration::from_millis(50)).await;
    poller.abort();
    let samples = samples.lock().expect("samples").clone();
    // Lag of a commit: from COMMIT returning to the first probe that saw
    // the node durable at or past it (the insert LSN just before COMMIT).
    let mut lags: Vec<f64> = commits
        .iter()
        .filter_map(|(at, lsn)| {
            let index = samples.partition_point(|s| s.1 < *lsn);
            samples
                .get(index)
                .map(|s| s.0.saturating_duration_since(*at).as_secs_f64() * 1e3)
        })
        .collect();
    lags.sort_by(f64::total_cmp);
    let quantile = |q: f64| {
        lags.get(((lags.len() as f64 - 1.0) * q) as usize)
            .copied()
            .unwrap_or(f64::NAN)
    };
    eprintln!(
        "lag commit -> durable in Delta over {} commits: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        lags.len(),
        quantile(0.5),
        quantile(0.99),
        quantile(1.0)
    );
    eprintln!(
        "copy: {rows} rows in {copy_seconds:.2} s = {:.0} rows/s (Postgres loads them at {:.0} rows/s: ratio {:.3})",
        rows as f64 / copy_seconds,
        rows as f64 / load_seconds,
        load_seconds / copy_seconds
    );
    eprintln!(
        "stream: {updates} updates durable in {stream_seconds:.2} s = {:.0} tx/s (Postgres commits them at {:.0} tx/s: ratio {:.3})",
        updates as f64 / stream_seconds,
        updates as f64 / postgres_seconds,
        postgres_seconds / stream_seconds
    );
}

/// Figures for BENCHMARKS.md (not a test: no assertion on timings). One
/// transaction of `FLIGHTLOG_REPLICATE_BENCH_BIG_ROWS` (default 500000)
/// pgbench-style rows, on a server with the default
/// `logical_decoding_work_mem` (64 MB), replicated once with streaming
/// (protocol 2) and once without (`--stream-buffer-bytes 0`): the time
/// from COMMIT returning to the transaction durable in Delta, the bytes
/// the server spilled to its disk or streamed (`pg_stat_replication_slots`)
/// and the replicator's peak RSS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: cargo test --test replicate streaming_figures -- --ignored --nocapture"]
async fn streaming_figures() {
    let rows: u64 = std::env::var("FLIGHTLOG_REPLICATE_BENCH_BIG_ROWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(500_000);
    let variants: [(&str, &[&str]); 2] = [
        ("protocol 2, streamed", &[]),
        ("protocol 1", &["--stream-buffer-bytes", "0"]),
    ];
    for (label, extra) in variants {
        let Setup {
            server,
            pg,
            dir,
            data_dir: _,
            node,
        } = Setup::start(
            &[],
            "CREATE TABLE accounts (aid int4 PRIMARY KEY, bid int4, abalance int4, filler char(84)); \
             INSERT INTO accounts VALUES (0, 0, 0, ''); \
             CREATE PUBLICATION pub FOR TABLE accounts",
        )
        .await;
        let (mut replicator, metrics) =
            start_with_metrics(&server, &node, "s_fig", dir.path(), extra);
        wait_metrics(&mut replicator, metrics, "the stream", streaming).await;
        let started = std::time::Instant::now();
        let lsn = transaction(
            &pg,
            &format!(
                "INSERT INTO accounts SELECT g, g / 100000, 0, '' FROM generate_series(1, {rows}) g"
            ),
        )
        .await;
        let postgres_seconds = started.elapsed().as_secs_f64();
        let committed = std::time::Instant::now();
        wait_durable(&node, &mut replicator, "s_fig", "public/accounts", lsn).await;
        let durable_seconds = committed.elapsed().as_secs_f64();
        let status = std::fs::read_to_string(format!("/proc/{}/status", replicator.child.id()))
            .unwrap_or_default();
        let peak = status
            .lines()
            .find(|l| l.starts_with("VmHWM:"))
            .unwrap_or("VmHWM: ?")
            .to_owned();
        let text = scrape(metrics);
        // What the walsender wrote to the server's disk (spill) or sent
        // while the transaction ran (stream), since the slot was made.
        let slot = pg
            .query_one(
                "SELECT spill_bytes, stream_bytes FROM pg_stat_replication_slots \
                 WHERE slot_name = 's_fig'",
                &[],
            )
            .await
            .expect("slot statistics");
        let (spill, stream): (i64, i64) = (slot.get(0), slot.get(1));
        eprintln!(
            "{label}: {rows} rows in one transaction; Postgres ran it in {postgres_seconds:.2} s; \
             COMMIT -> durable in Delta {durable_seconds:.2} s; stream chunks {}; server spill \
             {} MB, streamed {} MB; replicator {peak}",
            metric(&text, "flightlog_replicate_stream_chunks_total"),
            spill >> 20,
            stream >> 20
        );
    }
}
