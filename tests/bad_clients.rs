//! Clients that misbehave, against the real binary (and an in-process node
//! where only the status code matters). A client that drops its connection
//! in the middle of a message must leave nothing of that message applied,
//! now or after a restart (its frames already in the WAL get an abort
//! frame), and must not hold up its origin. A Flight stream whose IPC bytes
//! are cut or garbage, or a descriptor holding a truncated protobuf, is
//! `InvalidArgument` and writes nothing. Thousands of one-row transactions
//! from concurrent clients are all acknowledged with the right sequence
//! numbers while a probe still gets answers, and land in the table exactly
//! once. Connections that open a `do_put` and never send anything do not
//! stop another client's puts.

mod common;

use std::path::Path;
use std::time::Instant;

use arrow_flight::encode::FlightDataEncoderBuilder;
use arrow_flight::error::FlightError;
use arrow_flight::{FlightData, FlightDescriptor};
use bytes::Bytes;
use futures::{SinkExt, StreamExt, TryStreamExt};
use prost::Message;
use tonic::Code;

use common::*;
use flightlog::flight::Any;
use flightlog::proto::sync::DataSyncCommand;

const TABLE: &str = "t";
const NO_FLUSH: [&str; 2] = ["--max-lag-ms", "3600000"];

fn expected_rows(ids: impl IntoIterator<Item = i64>) -> Vec<(i64, Option<String>)> {
    let mut rows: Vec<_> = ids
        .into_iter()
        .map(|id| (id, Some(format!("v{id}"))))
        .collect();
    rows.sort();
    rows
}

/// `(first, last)` Lsn of each data frame of `origin` carrying rows, and
/// the Lsn ranges of its abort frames.
fn frames_of_origin(data: &Path, origin: &str) -> (Vec<u64>, Vec<(u64, u64)>) {
    let dump = wal_dump(data);
    let data_frames = frames_of_kind(&dump, "data")
        .into_iter()
        .filter(|f| f["origin"] == origin && f["rows"].as_u64().is_some_and(|r| r > 0))
        .map(|f| f["lsn"].as_u64().expect("lsn"))
        .collect();
    let aborts = frames_of_kind(&dump, "abort")
        .into_iter()
        .filter(|f| f["origin"] == origin)
        .map(|f| {
            let lsns = &f["aborted_lsns"];
            (
                lsns[0].as_u64().expect("first"),
                lsns[1].as_u64().expect("last"),
            )
        })
        .collect();
    (data_frames, aborts)
}

/// A TCP proxy in front of the node for one client connection, whose
/// connection can be cut at once in both directions.
struct CuttableProxy {
    addr: std::net::SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl CuttableProxy {
    async fn start(node: std::net::SocketAddr) -> CuttableProxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the proxy");
        let addr = listener.local_addr().expect("proxy address");
        let task = tokio::spawn(async move {
            let (mut client, _) = listener.accept().await.expect("the client connects");
            let mut upstream = tokio::net::TcpStream::connect(node)
                .await
                .expect("connect to the node");
            let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
        });
        CuttableProxy { addr, task }
    }

    /// Drops both sockets: the node and the client see the connection end.
    async fn cut(self) {
        self.task.abort();
        let _ = self.task.await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_cutting_the_connection_mid_message_leaves_nothing_applied() {
    const ORIGIN: &str = "dropper";
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    // Small frames: every batch of the message is written (and fsynced)
    // as it arrives, before the message ends.
    let node = ServeProcess::start(
        &data,
        &[NO_FLUSH[0], NO_FLUSH[1], "--frame-bytes-target", "1024"],
    );

    let (mut batches, batch_stream) = futures::channel::mpsc::channel::<Result<_, FlightError>>(4);
    let command = command(TABLE, ORIGIN, Some(1));
    let flight_data = FlightDataEncoderBuilder::new()
        .with_flight_descriptor(Some(FlightDescriptor::new_cmd(command_bytes(
            &command,
            BARE_TYPE_URL,
        ))))
        .with_schema(key_value_schema())
        .build(batch_stream);
    let proxy = CuttableProxy::start(node.addr).await;
    let mut dropping_client = connect(proxy.addr).await;
    let put_task = tokio::spawn(async move {
        let responses = dropping_client.do_put(flight_data).await?;
        responses.try_collect::<Vec<_>>().await
    });
    for part in 0..3 {
        let start = part * 100;
        batches
            .send(Ok(inserts(start..start + 100)))
            .await
            .expect("the put is still reading");
    }
    poll_until("the message's first frames are in the WAL", || {
        let data = data.clone();
        async move { (frames_of_origin(&data, ORIGIN).0.len() == 3).then_some(()) }
    })
    .await;

    // The connection is cut mid-message (the client's host died), with
    // batches left to send: the stream never ends cleanly.
    proxy.cut().await;
    let outcome = put_task.await.expect("the put task ends");
    assert!(
        outcome.is_err(),
        "the put fails for the client: {outcome:?}"
    );

    let (written, aborts) = poll_until("an abort frame covering the dropped message", || {
        let data = data.clone();
        async move {
            let (written, aborts) = frames_of_origin(&data, ORIGIN);
            let covered = written.iter().all(|lsn| {
                aborts
                    .iter()
                    .any(|(first, last)| (first..=last).contains(&lsn))
            });
            covered.then_some((written, aborts))
        }
    })
    .await;
    assert_eq!(written.len(), 3, "{aborts:?}");

    // The node is up and the origin's next transaction works.
    let mut client = node.client().await;
    let numbers = probe(&mut client, TABLE, ORIGIN).await;
    assert_eq!(numbers.memory_sequence_number, None);
    let response = put_inserts(&mut client, &command, 1_000..1_010).await;
    assert_eq!(response.memory_sequence_number, Some(1));
    node.kill();
    let (status, out) = wal_verify(&data);
    assert!(status.success(), "wal verify failed: {out}");

    // After a restart only the acknowledged transaction is applied.
    let node = ServeProcess::start(&data, &["--max-lag-ms", "50"]);
    assert_eq!(node.start_field("aborted_transactions"), "0");
    let mut client = node.client().await;
    assert_eq!(
        probe(&mut client, TABLE, ORIGIN)
            .await
            .memory_sequence_number,
        Some(1)
    );
    wait_durable(&mut client, TABLE, ORIGIN, 1).await;
    assert_eq!(table_rows(&data, TABLE).await, expected_rows(1_000..1_010));
    drop(batches);
}

/// Descriptor + schema + one batch, as a client encodes them.
async fn encoded_put(command: &DataSyncCommand) -> Vec<FlightData> {
    let messages: Vec<FlightData> = FlightDataEncoderBuilder::new()
        .with_flight_descriptor(Some(FlightDescriptor::new_cmd(command_bytes(
            command,
            BARE_TYPE_URL,
        ))))
        .with_schema(key_value_schema())
        .build(futures::stream::iter([Ok(inserts(0..100))]))
        .try_collect()
        .await
        .expect("encode a put");
    assert_eq!(messages.len(), 2, "schema message, then one batch");
    messages
}

async fn assert_corrupt_stream_refused(corrupt: impl FnOnce(&mut FlightData)) {
    let node = InProcessNode::start(|_| {}).await;
    let mut client = node.client().await;
    let command = command(TABLE, "corrupt", Some(1));
    let mut messages = encoded_put(&command).await;
    corrupt(&mut messages[1]);
    let status = put_flight_data(&mut client, messages)
        .await
        .expect_err("a corrupt batch is refused");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("arrow stream"), "{status:?}");
    assert_eq!(node.durable_lsn(), 0, "nothing written");
    // The node still serves, the same transaction sent intact is accepted.
    let response = put_inserts(&mut client, &command, 0..100).await;
    assert_eq!(response.memory_sequence_number, Some(1));
}

#[tokio::test]
async fn batch_with_truncated_body_is_invalid_argument() {
    assert_corrupt_stream_refused(|batch| {
        let half = batch.data_body.len() / 2;
        batch.data_body = batch.data_body.slice(..half);
    })
    .await;
}

#[tokio::test]
async fn batch_with_garbage_ipc_header_is_invalid_argument() {
    assert_corrupt_stream_refused(|batch| {
        batch.data_header = Bytes::from_static(&[0xde, 0xad, 0xbe, 0xef, 0x01, 0x02, 0x03]);
    })
    .await;
}

#[tokio::test]
async fn batch_with_truncated_ipc_header_is_invalid_argument() {
    assert_corrupt_stream_refused(|batch| {
        let half = batch.data_header.len() / 2;
        batch.data_header = batch.data_header.slice(..half);
    })
    .await;
}

#[tokio::test]
async fn any_wrapping_a_truncated_command_is_invalid_argument() {
    let node = InProcessNode::start(|_| {}).await;
    let mut client = node.client().await;
    let encoded = command(TABLE, "truncated", Some(1)).encode_to_vec();
    // Cut after the `path` field's tag and length, before its bytes.
    let truncated = encoded[..2].to_vec();
    assert!(DataSyncCommand::decode(truncated.as_slice()).is_err());
    let cmd = Any {
        type_url: BARE_TYPE_URL.into(),
        value: truncated,
    }
    .encode_to_vec();
    let status = put_raw(
        &mut client,
        cmd.into(),
        key_value_schema(),
        vec![inserts(0..1)],
    )
    .await
    .expect_err("a truncated command");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(
        status.message().contains("flight_descriptor.cmd.value"),
        "{status:?}"
    );
    assert_eq!(node.durable_lsn(), 0);
}

#[tokio::test]
async fn truncated_any_is_invalid_argument() {
    let node = InProcessNode::start(|_| {}).await;
    let mut client = node.client().await;
    let any = command_bytes(&command(TABLE, "truncated", Some(1)), BARE_TYPE_URL);
    let cut = any.slice(..any.len() - 5);
    let status = put_raw(&mut client, cut, key_value_schema(), vec![inserts(0..1)])
        .await
        .expect_err("a truncated Any");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(
        status.message().contains("flight_descriptor.cmd"),
        "{status:?}"
    );
    assert_eq!(node.durable_lsn(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousands_of_tiny_transactions_are_all_acknowledged_and_flushed_once() {
    const CLIENTS: u64 = 8;
    const TRANSACTIONS: u64 = 375;
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let node = ServeProcess::start(&data, &["--max-lag-ms", "200"]);
    let id = |client: u64, sequence: u64| (client * 10_000 + sequence) as i64;

    let (done, mut load_finished) = tokio::sync::watch::channel(false);
    let mut prober = node.client().await;
    let probes = tokio::spawn(async move {
        let mut answered = 0u64;
        // At least one probe, then as many as the load lasts.
        loop {
            probe(&mut prober, TABLE, "prober").await;
            answered += 1;
            if *load_finished.borrow_and_update() {
                return answered;
            }
        }
    });
    let started = Instant::now();
    let mut clients = Vec::new();
    for client_index in 0..CLIENTS {
        let mut client = node.client().await;
        clients.push(tokio::spawn(async move {
            let origin = format!("tiny-{client_index}");
            for sequence in 1..=TRANSACTIONS {
                let first = id(client_index, sequence);
                let response = put_inserts(
                    &mut client,
                    &command(TABLE, &origin, Some(sequence)),
                    first..first + 1,
                )
                .await;
                assert!(response.accepted, "{origin}/{sequence}");
                assert_eq!(response.memory_sequence_number, Some(sequence));
            }
        }));
    }
    for client in clients {
        client.await.expect("a client task");
    }
    let elapsed = started.elapsed();
    done.send(true).expect("the prober is running");
    let answered = probes.await.expect("the prober");
    assert!(answered >= 1);

    let mut client = node.client().await;
    let wal = metrics(&mut client).await["wal"].clone();
    eprintln!(
        "{} one-row transactions from {CLIENTS} clients in {elapsed:?} ({:.0}/s); \
         {answered} probes answered meanwhile; WAL: {} frames in {} group commits",
        CLIENTS * TRANSACTIONS,
        (CLIENTS * TRANSACTIONS) as f64 / elapsed.as_secs_f64(),
        wal["frames_appended"],
        wal["group_commits"],
    );
    for client_index in 0..CLIENTS {
        let origin = format!("tiny-{client_index}");
        let numbers = probe(&mut client, TABLE, &origin).await;
        assert_eq!(
            numbers.memory_sequence_number,
            Some(TRANSACTIONS),
            "{origin}"
        );
        wait_durable(&mut client, TABLE, &origin, TRANSACTIONS).await;
    }
    let all_ids = (0..CLIENTS).flat_map(|c| (1..=TRANSACTIONS).map(move |s| id(c, s)));
    assert_eq!(table_rows(&data, TABLE).await, expected_rows(all_ids));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_that_never_send_do_not_block_other_puts() {
    const SILENT: usize = 64;
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let node = ServeProcess::start(&data, &NO_FLUSH);

    let mut silent = Vec::new();
    let mut opened = Vec::new();
    for _ in 0..SILENT {
        let mut client = node.client().await;
        let (polled, body_polled) = tokio::sync::oneshot::channel::<()>();
        opened.push(body_polled);
        silent.push(tokio::spawn(async move {
            // The request body is polled once its stream is open on the
            // connection: say so, then never yield a message.
            let mut polled = Some(polled);
            let nothing = futures::stream::poll_fn(move |_| {
                if let Some(polled) = polled.take() {
                    let _ = polled.send(());
                }
                std::task::Poll::<Option<Result<FlightData, FlightError>>>::Pending
            });
            client.do_put(nothing).await.map(|_| ())
        }));
    }
    for body_polled in opened {
        body_polled
            .await
            .expect("each silent do_put opens its stream");
    }

    let mut client = node.client().await;
    for sequence in 1..=20u64 {
        let first = sequence as i64 * 10;
        let response = put_inserts(
            &mut client,
            &command(TABLE, "talker", Some(sequence)),
            first..first + 10,
        )
        .await;
        assert_eq!(response.memory_sequence_number, Some(sequence));
    }
    assert!(
        silent.iter().all(|task| !task.is_finished()),
        "the silent puts are still open, neither answered nor refused"
    );
    for task in &silent {
        task.abort();
    }
    // Still serving after they all went away.
    let numbers = probe(&mut client, TABLE, "talker").await;
    assert_eq!(numbers.memory_sequence_number, Some(20));
}

/// A client that sends its command and schema and then goes quiet holds back
/// nothing: another origin's transaction on the same table still becomes
/// durable; and after `--put-idle-timeout-ms` the quiet put is abandoned with
/// DeadlineExceeded while the node keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_stalling_after_its_schema_holds_back_no_flush_and_times_out() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let node = ServeProcess::start(
        &data,
        &["--max-lag-ms", "50", "--put-idle-timeout-ms", "2000"],
    );
    let mut staller = node.client().await;
    let (polled, body_polled) = tokio::sync::oneshot::channel::<()>();
    let stalled = tokio::spawn(async move {
        let header = FlightDataEncoderBuilder::new()
            .with_schema(key_value_schema())
            .with_flight_descriptor(Some(FlightDescriptor::new_cmd(command_bytes(
                &command(TABLE, "staller", Some(1)),
                BARE_TYPE_URL,
            ))))
            .build(futures::stream::empty());
        let mut polled = Some(polled);
        let quiet = futures::stream::poll_fn(move |_| {
            if let Some(polled) = polled.take() {
                let _ = polled.send(());
            }
            std::task::Poll::<Option<Result<FlightData, FlightError>>>::Pending
        });
        match staller
            .do_put(futures::StreamExt::chain(header, quiet))
            .await
        {
            Ok(stream) => stream.try_collect::<Vec<_>>().await.map(|_| ()),
            Err(error) => Err(error),
        }
    });
    body_polled.await.expect("the stalled put sent its schema");

    let mut client = node.client().await;
    let response = put_inserts(&mut client, &command(TABLE, "talker", Some(1)), 0..10).await;
    assert_eq!(response.memory_sequence_number, Some(1));
    let address = node.addr;
    poll_until(
        "the talker's transaction to become durable",
        || async move {
            let mut client = connect(address).await;
            let numbers = probe(&mut client, TABLE, "talker").await;
            (numbers.durable_sequence_number == Some(1)).then_some(())
        },
    )
    .await;

    let outcome = tokio::time::timeout(std::time::Duration::from_secs(60), stalled)
        .await
        .expect("the stalled put is answered once it is idle too long")
        .expect("task");
    match outcome {
        Err(FlightError::Tonic(status)) => {
            assert_eq!(status.code(), Code::DeadlineExceeded, "{status}");
            assert!(status.message().contains("put_idle_timeout_ms"), "{status}");
        }
        other => panic!("expected DeadlineExceeded, got {other:?}"),
    }
    let numbers = probe(&mut client, TABLE, "staller").await;
    assert_eq!(
        numbers.memory_sequence_number, None,
        "nothing of the stalled put is kept"
    );
}

/// The client drops a `do_put` call after sending part of a message (its
/// HTTP/2 stream is reset with CANCEL, as a cancelled or timed-out gRPC call
/// is). tonic reports that to the server as a clean end of the request
/// stream; the node must still keep nothing of the message, every time (the
/// torture run found one in ten such puts committed as if whole). Then the
/// message, sent whole, is written whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_dropped_mid_message_keeps_nothing_of_it() {
    const ROUNDS: u64 = 30;
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let node = ServeProcess::start(&data, &["--max-lag-ms", "20"]);
    let mut client = node.client().await;
    for round in 0..ROUNDS {
        let sequence = round + 1;
        let first_id = round as i64 * 10;
        let cmd = command(TABLE, "dropper", Some(sequence));
        let half = FlightDataEncoderBuilder::new()
            .with_flight_descriptor(Some(FlightDescriptor::new_cmd(command_bytes(
                &cmd,
                BARE_TYPE_URL,
            ))))
            .with_schema(key_value_schema())
            .build(
                futures::stream::iter([Ok(inserts(first_id..first_id + 5))])
                    .chain(futures::stream::pending()),
            );
        // A short, varying wait so the reset lands at different points.
        let wait = std::time::Duration::from_millis(5 + round % 7 * 5);
        let call = async {
            let results: Result<Vec<_>, FlightError> =
                client.do_put(half).await?.try_collect().await;
            results
        };
        let dropped = tokio::time::timeout(wait, call).await;
        assert!(
            dropped.is_err(),
            "round {round}: a never-ending put was answered: {dropped:?}"
        );
        let numbers = probe(&mut client, TABLE, "dropper").await;
        assert_eq!(
            numbers.memory_sequence_number,
            (round > 0).then_some(round),
            "round {round}: the dropped message was kept ({numbers:?})"
        );
        let whole = put_inserts(&mut client, &cmd, first_id..first_id + 10).await;
        assert_eq!(
            whole.memory_sequence_number,
            Some(sequence),
            "round {round}"
        );
    }
    wait_durable(&mut client, TABLE, "dropper", ROUNDS).await;
    assert_eq!(
        table_rows(&data, TABLE).await,
        expected_rows(0..ROUNDS as i64 * 10),
        "every message whole, none half"
    );
}

/// Origins are opaque, but bounded: one of more than 1,024 bytes or with a
/// control character is refused naming `origin`, for probes too (an origin
/// is written into every frame and every checkpoint: unbounded, a few of
/// them could make checkpoints unwritable and stop WAL truncation for good).
/// Nothing is written for them, and the longest allowed origin works.
#[tokio::test]
async fn huge_or_control_character_origins_are_refused() {
    let node = InProcessNode::start(|_| {}).await;
    let mut client = node.client().await;
    for (origin, needle) in [
        ("o".repeat(1025), "1025 bytes long"),
        ("o".repeat(10 << 20), "bytes long"),
        ("a\nb".to_owned(), "control character"),
        ("a\u{0}b".to_owned(), "control character"),
    ] {
        for rows in [0..0, 0..3] {
            let refused = put(
                &mut client,
                &command(TABLE, &origin, Some(1)),
                key_value_schema(),
                if rows.is_empty() {
                    vec![]
                } else {
                    vec![inserts(rows)]
                },
            )
            .await
            .expect_err("a bad origin is refused");
            assert_eq!(refused.code(), Code::InvalidArgument, "{refused}");
            assert!(
                refused.message().starts_with("origin:") && refused.message().contains(needle),
                "{}",
                &refused.message()[..refused.message().len().min(200)]
            );
        }
    }
    let longest = "o".repeat(1024);
    let answer = put_inserts(&mut client, &command(TABLE, &longest, Some(1)), 0..3).await;
    assert_eq!(answer.memory_sequence_number, Some(1));
    let dump = wal_dump(node.dir.path());
    let data = frames_of_kind(&dump, "data");
    assert_eq!(data.len(), 1, "only the good origin wrote a frame");
    assert_eq!(data[0]["origin"], longest.as_str());
}

/// Fields of megabytes (a path, a store location, a store option, a column
/// name) are refused naming the field, and the answer stays small: the
/// error quotes at most the start of what was sent.
#[tokio::test]
async fn huge_fields_are_refused_with_a_short_answer() {
    let node = InProcessNode::start(|_| {}).await;
    let mut client = node.client().await;
    let huge = "x".repeat(4 << 20);
    let mut big_path = command(&huge, "huge", Some(1));
    let mut big_store = command(TABLE, "huge", Some(1));
    big_store.store = Some(flightlog::proto::schema::StorageLocation {
        location: format!("file:///{huge}"),
        ..Default::default()
    });
    let mut big_option = command(TABLE, "huge", Some(1));
    big_option.store = Some(flightlog::proto::schema::StorageLocation {
        location: "file:///tmp/x".into(),
        options: [("aws_endpoint_url".to_owned(), huge.clone())].into(),
        ..Default::default()
    });
    let mut big_column = command(TABLE, "huge", Some(1));
    big_column.column_descriptors[2].name = huge.clone();
    for (name, cmd, field) in [
        ("path", big_path.clone(), "path:"),
        ("store", big_store, "store.location:"),
        ("option", big_option, "store.options:"),
        ("column", big_column, "column_descriptors"),
    ] {
        let refused = put(&mut client, &cmd, key_value_schema(), vec![inserts(0..1)])
            .await
            .expect_err("a huge field is refused");
        assert_eq!(refused.code(), Code::InvalidArgument, "{name}: {refused}");
        assert!(
            refused.message().starts_with(field) && refused.message().len() <= 4096,
            "{name}: {} bytes: {}",
            refused.message().len(),
            &refused.message()[..refused.message().len().min(300)]
        );
    }
    big_path.path = TABLE.into();
    let answer = put_inserts(&mut client, &big_path, 0..1).await;
    assert_eq!(
        answer.memory_sequence_number,
        Some(1),
        "the node still serves"
    );
}

/// A replay keeps nothing, but it is answered only after the client's
/// stream ended: answered while the client still sends, the call is closed
/// under it and pyarrow sometimes reports no `PutResult` at all (a full run
/// saw an all-default answer, `memory_sequence_number = None`, for a replay
/// of an acknowledged sequence).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_is_answered_after_its_stream_ends() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let node = InProcessNode::start(|_| {}).await;
    let mut client = node.client().await;
    let cmd = command(TABLE, "replayer", Some(5));
    put_inserts(&mut client, &cmd, 0..3).await;
    let sent_all = std::sync::Arc::new(AtomicBool::new(false));
    let flag = sent_all.clone();
    let tail = futures::stream::once(async move {
        // The last batch leaves well after the node could have answered.
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        flag.store(true, Ordering::SeqCst);
        Ok(inserts(3..6))
    });
    let stream = FlightDataEncoderBuilder::new()
        .with_flight_descriptor(Some(FlightDescriptor::new_cmd(command_bytes(
            &cmd,
            BARE_TYPE_URL,
        ))))
        .with_schema(key_value_schema())
        .build(futures::stream::iter([Ok(inserts(0..3))]).chain(tail));
    let results: Vec<_> = client
        .do_put(stream)
        .await
        .expect("the replay is answered")
        .try_collect()
        .await
        .expect("one PutResult");
    assert!(
        sent_all.load(Ordering::SeqCst),
        "the replay was answered before the client's stream ended"
    );
    let answer = flightlog::proto::sync::DataSyncResponse::decode(results[0].app_metadata.as_ref())
        .expect("a DataSyncResponse");
    assert_eq!(answer.memory_sequence_number, Some(5), "{answer:?}");
    assert!(answer.accepted);
}
