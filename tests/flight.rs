//! The Flight `do_put` contract of PROTOCOL.md, end to end through tonic and
//! `arrow_flight::FlightClient` against an in-process node (no flusher, so
//! the WAL's durable Lsn moves only when a put writes). Guards two things:
//! every malformed command or batch is refused with the right status code
//! and a message naming the offending field, writes nothing and leaves the
//! node serving; and the protocol semantics clients rely on (both
//! `type_url`s, probes, `first`, multi-message transactions, interleaved
//! origins, closing with an empty message, replays, back-pressure, the
//! message size limit, concurrent origins).

mod common;

use std::sync::Arc;

use arrow::array::{ArrayRef, BooleanArray, Int32Array, Int64Array, StringArray};
use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use arrow_flight::{FlightData, FlightDescriptor};
use bytes::Bytes;
use tonic::Code;

use common::*;
use flightlog::config::Config;
use flightlog::flight::Any;
use flightlog::proto::schema::StorageLocation;
use flightlog::proto::sync::{ColumnDescriptor, ColumnRole, DataSyncCommand};
use prost::Message;

const TABLE: &str = "t";
const ORIGIN: &str = "o";

/// A put the node must refuse.
struct BadPut {
    cmd: Bytes,
    schema: SchemaRef,
    batches: Vec<RecordBatch>,
}

impl BadPut {
    /// `command` (mutated by `edit`) with one insert; sequence 100, so an
    /// accepted put would show in the origin's memory sequence.
    fn edited(edit: impl FnOnce(&mut DataSyncCommand)) -> BadPut {
        let mut command = command(TABLE, ORIGIN, Some(100));
        edit(&mut command);
        BadPut {
            cmd: command_bytes(&command, BARE_TYPE_URL),
            schema: key_value_schema(),
            batches: vec![inserts(100..101)],
        }
    }

    /// A command on `TABLE` with `descriptors` and one batch of `columns`.
    fn columns(descriptors: Vec<ColumnDescriptor>, columns: Vec<(&str, ArrayRef)>) -> BadPut {
        Self::columns_at(TABLE, descriptors, columns)
    }

    /// [`BadPut::columns`] on the table at `path`.
    fn columns_at(
        path: &str,
        descriptors: Vec<ColumnDescriptor>,
        columns: Vec<(&str, ArrayRef)>,
    ) -> BadPut {
        let batch = batch(columns);
        let command = DataSyncCommand {
            column_descriptors: descriptors,
            ..command(path, ORIGIN, Some(100))
        };
        BadPut {
            cmd: command_bytes(&command, BARE_TYPE_URL),
            schema: batch.schema(),
            batches: vec![batch],
        }
    }

    /// Raw descriptor bytes with a valid key/value stream.
    fn cmd(cmd: impl Into<Bytes>) -> BadPut {
        BadPut {
            cmd: cmd.into(),
            schema: key_value_schema(),
            batches: vec![inserts(100..101)],
        }
    }
}

fn batch(columns: Vec<(&str, ArrayRef)>) -> RecordBatch {
    RecordBatch::try_from_iter_with_nullable(
        columns
            .into_iter()
            .map(|(name, array)| (name, array, true))
            .collect::<Vec<_>>(),
    )
    .expect("a valid batch")
}

fn int64(values: &[Option<i64>]) -> ArrayRef {
    Arc::new(Int64Array::from(values.to_vec()))
}

fn utf8(values: &[Option<&str>]) -> ArrayRef {
    Arc::new(StringArray::from(values.to_vec()))
}

fn d(role: ColumnRole, name: &str) -> ColumnDescriptor {
    descriptor(role, name)
}

/// On a node (configured by `configure`) where origin `o` has committed
/// sequence 1 to `TABLE`: `bad` is refused with `code` and a message
/// containing every `needles`, the durable Lsn does not move, the origin's
/// memory sequence stays 1, and a valid put afterwards is accepted.
async fn assert_refused_without_effect(
    configure: impl FnOnce(&mut Config),
    bad: BadPut,
    code: Code,
    needles: &[&str],
) {
    let node = InProcessNode::start(configure).await;
    let mut client = node.client().await;
    let accepted = put_inserts(&mut client, &command(TABLE, ORIGIN, Some(1)), 0..3).await;
    assert_eq!(accepted.memory_sequence_number, Some(1));
    let lsn_before = node.durable_lsn();

    let status = put_raw(&mut client, bad.cmd, bad.schema, bad.batches)
        .await
        .expect_err("the node must refuse this put");
    assert_eq!(status.code(), code, "status: {status:?}");
    for needle in needles {
        assert!(
            status.message().contains(needle),
            "message {:?} does not name {needle:?}",
            status.message()
        );
    }

    assert_eq!(
        node.durable_lsn(),
        lsn_before,
        "a refused put wrote a frame"
    );
    let numbers = probe(&mut client, TABLE, ORIGIN).await;
    assert_eq!(numbers.memory_sequence_number, Some(1));
    assert_eq!(node.durable_lsn(), lsn_before, "a probe wrote a frame");
    let next = put_inserts(&mut client, &command(TABLE, ORIGIN, Some(2)), 3..6).await;
    assert!(next.accepted);
    assert_eq!(next.memory_sequence_number, Some(2));
}

async fn refused(bad: BadPut, code: Code, needles: &[&str]) {
    assert_refused_without_effect(|_| {}, bad, code, needles).await;
}

// --- Refusals: the command -------------------------------------------------

#[tokio::test]
async fn unknown_type_url_is_invalid_argument() {
    let command = command(TABLE, ORIGIN, Some(100));
    let cmd = command_bytes(&command, "type.googleapis.com/clade.sync.SomethingElse");
    refused(BadPut::cmd(cmd), Code::InvalidArgument, &["type_url"]).await;
}

#[tokio::test]
async fn descriptor_that_is_not_a_protobuf_any_is_invalid_argument() {
    let cmd = vec![0xff, 0xff, 0xff, 0xff];
    refused(
        BadPut::cmd(cmd),
        Code::InvalidArgument,
        &["flight_descriptor.cmd", "Any"],
    )
    .await;
}

#[tokio::test]
async fn any_wrapping_garbage_is_invalid_argument() {
    let cmd = Any {
        type_url: BARE_TYPE_URL.into(),
        value: vec![0xff, 0xff, 0xff, 0xff],
    }
    .encode_to_vec();
    refused(
        BadPut::cmd(cmd),
        Code::InvalidArgument,
        &["flight_descriptor.cmd.value", "DataSyncCommand"],
    )
    .await;
}

#[tokio::test]
async fn iceberg_format_is_unimplemented() {
    refused(
        BadPut::edited(|c| c.format = 1),
        Code::Unimplemented,
        &["format", "ICEBERG"],
    )
    .await;
}

#[tokio::test]
async fn store_outside_the_allow_list_is_permission_denied() {
    let bad = BadPut::edited(|c| {
        c.store = Some(StorageLocation {
            location: "file:///somewhere/else".into(),
            ..Default::default()
        })
    });
    assert_refused_without_effect(
        |config| config.allow_store = vec!["file:///allowed/".into()],
        bad,
        Code::PermissionDenied,
        &["store.location", "file:///somewhere/else", "--allow-store"],
    )
    .await;
}

#[tokio::test]
async fn absolute_table_path_is_invalid_argument() {
    refused(
        BadPut::edited(|c| c.path = "/etc/t".into()),
        Code::InvalidArgument,
        &["path", "relative"],
    )
    .await;
}

#[tokio::test]
async fn table_path_with_parent_component_is_invalid_argument() {
    refused(
        BadPut::edited(|c| c.path = "a/../../t".into()),
        Code::InvalidArgument,
        &["path", ".."],
    )
    .await;
}

#[tokio::test]
async fn empty_origin_is_invalid_argument() {
    refused(
        BadPut::edited(|c| c.origin.clear()),
        Code::InvalidArgument,
        &["origin"],
    )
    .await;
}

// --- Refusals: the column descriptors --------------------------------------

#[tokio::test]
async fn descriptor_count_unequal_to_field_count_is_invalid_argument() {
    refused(
        BadPut::edited(|c| c.column_descriptors.truncate(2)),
        Code::InvalidArgument,
        &["column_descriptors", "2 entries", "3 fields"],
    )
    .await;
}

#[tokio::test]
async fn unknown_column_role_is_invalid_argument() {
    refused(
        BadPut::edited(|c| c.column_descriptors[2].role = 7),
        Code::InvalidArgument,
        &["column_descriptors[2]", "role 7"],
    )
    .await;
}

#[tokio::test]
async fn changed_column_that_is_not_boolean_is_invalid_argument() {
    let bad = BadPut::columns(
        vec![
            d(ColumnRole::OldPk, "id"),
            d(ColumnRole::NewPk, "id"),
            d(ColumnRole::Value, "value"),
            d(ColumnRole::Changed, "value"),
        ],
        vec![
            ("old_id", int64(&[None])),
            ("new_id", int64(&[Some(100)])),
            ("value", utf8(&[Some("x")])),
            ("value_changed", Arc::new(Int32Array::from(vec![Some(1)]))),
        ],
    );
    refused(
        bad,
        Code::InvalidArgument,
        &["column_descriptors[3]", "CHANGED", "Boolean"],
    )
    .await;
}

#[tokio::test]
async fn changed_column_naming_no_value_column_is_invalid_argument() {
    let bad = BadPut::columns(
        vec![
            d(ColumnRole::OldPk, "id"),
            d(ColumnRole::NewPk, "id"),
            d(ColumnRole::Value, "value"),
            d(ColumnRole::Changed, "missing"),
        ],
        vec![
            ("old_id", int64(&[None])),
            ("new_id", int64(&[Some(100)])),
            ("value", utf8(&[Some("x")])),
            (
                "missing_changed",
                Arc::new(BooleanArray::from(vec![Some(true)])),
            ),
        ],
    );
    refused(
        bad,
        Code::InvalidArgument,
        &["column_descriptors[3]", "\"missing\"", "no VALUE column"],
    )
    .await;
}

#[tokio::test]
async fn old_and_new_key_with_different_names_is_invalid_argument() {
    refused(
        BadPut::edited(|c| c.column_descriptors[1].name = "key".into()),
        Code::InvalidArgument,
        &["column_descriptors[", "OLD_PK", "NEW_PK"],
    )
    .await;
}

#[tokio::test]
async fn old_and_new_key_with_different_types_is_invalid_argument() {
    let bad = BadPut::columns(
        key_value_descriptors(),
        vec![
            ("old_id", Arc::new(Int32Array::from(vec![None::<i32>]))),
            ("new_id", int64(&[Some(100)])),
            ("value", utf8(&[Some("x")])),
        ],
    );
    refused(
        bad,
        Code::InvalidArgument,
        &["key column \"id\"", "Int32", "Int64"],
    )
    .await;
}

#[tokio::test]
async fn command_without_key_columns_is_invalid_argument() {
    let bad = BadPut::columns(
        vec![d(ColumnRole::Value, "value")],
        vec![("value", utf8(&[Some("x")]))],
    );
    refused(
        bad,
        Code::InvalidArgument,
        &["column_descriptors", "no primary key"],
    )
    .await;
}

#[tokio::test]
async fn column_type_conflicting_with_the_table_is_invalid_argument() {
    let bad = BadPut::columns(
        key_value_descriptors(),
        vec![
            ("old_id", int64(&[None])),
            ("new_id", int64(&[Some(100)])),
            ("value", int64(&[Some(7)])),
        ],
    );
    refused(
        bad,
        Code::InvalidArgument,
        &["column_descriptors", "\"value\"", "Int64", "Utf8"],
    )
    .await;
}

// --- Refusals: the rows ----------------------------------------------------

fn composite_key_descriptors() -> Vec<ColumnDescriptor> {
    vec![
        d(ColumnRole::OldPk, "a"),
        d(ColumnRole::OldPk, "b"),
        d(ColumnRole::NewPk, "a"),
        d(ColumnRole::NewPk, "b"),
        d(ColumnRole::Value, "value"),
    ]
}

/// One insert on the composite-key table whose new key has `b` null.
fn partially_null_insert(value: ArrayRef) -> Vec<(&'static str, ArrayRef)> {
    vec![
        ("old_a", int64(&[None])),
        ("old_b", int64(&[None])),
        ("new_a", int64(&[Some(1)])),
        ("new_b", int64(&[None])),
        ("value", value),
    ]
}

#[tokio::test]
async fn partially_null_composite_key_is_invalid_argument() {
    // Its own table: `TABLE` already has the key (id).
    let mut bad = BadPut::columns_at(
        "composite",
        composite_key_descriptors(),
        partially_null_insert(utf8(&[Some("x")])),
    );
    // A first, valid batch: the refusal names the batch it is about.
    let valid = batch(vec![
        ("old_a", int64(&[None])),
        ("old_b", int64(&[None])),
        ("new_a", int64(&[Some(2)])),
        ("new_b", int64(&[Some(2)])),
        ("value", utf8(&[Some("y")])),
    ]);
    bad.batches.insert(0, valid);
    refused(
        bad,
        Code::InvalidArgument,
        &["record batch 1", "NEW_PK", "partially null", "\"b\""],
    )
    .await;
}

#[tokio::test]
async fn refused_put_does_not_fix_the_column_types_of_a_new_table() {
    let node = InProcessNode::start(|_| {}).await;
    let mut client = node.client().await;
    let descriptors = composite_key_descriptors();
    let refused = BadPut::columns(
        descriptors.clone(),
        partially_null_insert(int64(&[Some(7)])),
    );
    put_raw(&mut client, refused.cmd, refused.schema, refused.batches)
        .await
        .expect_err("a partially null key is refused");

    // The table accepted nothing, so a Utf8 `value` conflicts with nothing.
    let good = BadPut::columns(
        descriptors,
        vec![
            ("old_a", int64(&[None])),
            ("old_b", int64(&[None])),
            ("new_a", int64(&[Some(1)])),
            ("new_b", int64(&[Some(1)])),
            ("value", utf8(&[Some("x")])),
        ],
    );
    let response = put_raw(&mut client, good.cmd, good.schema, good.batches)
        .await
        .expect("the first accepted put defines the table's column types");
    assert_eq!(response.memory_sequence_number, Some(100));
}

// --- Protocol semantics ----------------------------------------------------

#[tokio::test]
async fn both_type_urls_are_accepted() {
    let node = InProcessNode::start(|_| {}).await;
    let mut client = node.client().await;
    for (sequence, type_url) in [(1, BARE_TYPE_URL), (2, PREFIXED_TYPE_URL)] {
        let command = command(TABLE, ORIGIN, Some(sequence));
        let cmd = command_bytes(&command, type_url);
        let start = sequence as i64 * 10;
        let response = put_raw(
            &mut client,
            cmd,
            key_value_schema(),
            vec![inserts(start..start + 3)],
        )
        .await
        .unwrap_or_else(|status| panic!("type_url {type_url:?} refused: {status}"));
        assert!(response.accepted);
        assert_eq!(response.memory_sequence_number, Some(sequence));
    }
}

#[tokio::test]
async fn probe_writes_nothing_and_returns_the_current_numbers() {
    let node = InProcessNode::start(|_| {}).await;
    let mut client = node.client().await;

    let fresh = probe(&mut client, TABLE, "new-origin").await;
    assert!(fresh.accepted);
    assert_eq!(fresh.memory_sequence_number, None);
    assert_eq!(fresh.durable_sequence_number, None);
    assert_eq!(node.durable_lsn(), 0, "a probe on an empty node wrote");

    put_inserts(&mut client, &command(TABLE, ORIGIN, Some(7)), 0..5).await;
    let lsn = node.durable_lsn();
    let numbers = probe(&mut client, TABLE, ORIGIN).await;
    assert!(numbers.accepted);
    assert_eq!(numbers.memory_sequence_number, Some(7));
    assert_eq!(numbers.durable_sequence_number, None, "nothing is flushed");
    assert_eq!(node.durable_lsn(), lsn, "a probe wrote");
}

#[tokio::test]
async fn a_probe_of_one_descriptor_only_message_without_a_schema_is_answered() {
    let node = InProcessNode::start(|_| {}).await;
    let mut client = node.client().await;
    put_inserts(&mut client, &command(TABLE, ORIGIN, Some(3)), 0..2).await;
    let lsn = node.durable_lsn();
    let descriptor_only = FlightData {
        flight_descriptor: Some(FlightDescriptor::new_cmd(command_bytes(
            &command(TABLE, ORIGIN, None),
            BARE_TYPE_URL,
        ))),
        ..Default::default()
    };
    let numbers = put_flight_data(&mut client, vec![descriptor_only])
        .await
        .expect("a descriptor-only probe");
    assert_eq!(numbers.memory_sequence_number, Some(3));
    assert_eq!(node.durable_lsn(), lsn, "a probe wrote");
}

#[tokio::test]
async fn first_is_true_on_the_first_response_per_origin_only() {
    let node = InProcessNode::start(|_| {}).await;
    let mut client = node.client().await;
    assert!(probe(&mut client, TABLE, "a").await.first);
    assert!(
        !put_inserts(&mut client, &command(TABLE, "a", Some(1)), 0..2)
            .await
            .first
    );
    assert!(!probe(&mut client, TABLE, "a").await.first);
    assert!(
        put_inserts(&mut client, &command(TABLE, "b", Some(1)), 2..4)
            .await
            .first
    );
    assert!(!probe(&mut client, TABLE, "b").await.first);
}

#[tokio::test]
async fn multi_message_transaction_advances_memory_sequence_only_at_its_last_message() {
    let node = InProcessNode::start(|_| {}).await;
    let mut client = node.client().await;
    put_inserts(&mut client, &command(TABLE, ORIGIN, Some(1)), 0..2).await;

    for (index, ids) in [(0, 10..20), (1, 20..30)] {
        let lsn = node.durable_lsn();
        let response = put_inserts(&mut client, &command(TABLE, ORIGIN, None), ids).await;
        assert!(response.accepted);
        assert_eq!(
            response.memory_sequence_number,
            Some(1),
            "message {index} of an open transaction moved the memory sequence"
        );
        assert!(
            node.durable_lsn() > lsn,
            "an acknowledged message is in the WAL"
        );
    }
    let last = put_inserts(&mut client, &command(TABLE, ORIGIN, Some(2)), 30..40).await;
    assert_eq!(last.memory_sequence_number, Some(2));
    assert_eq!(
        probe(&mut client, TABLE, ORIGIN)
            .await
            .memory_sequence_number,
        Some(2)
    );
}

#[tokio::test]
async fn interleaved_open_transactions_of_two_origins_commit_independently() {
    let node = InProcessNode::start(|_| {}).await;
    let mut client = node.client().await;
    let a = put_inserts(&mut client, &command(TABLE, "a", None), 0..5).await;
    let b = put_inserts(&mut client, &command("other", "b", None), 0..5).await;
    assert_eq!(a.memory_sequence_number, None);
    assert_eq!(b.memory_sequence_number, None);
    put_inserts(&mut client, &command(TABLE, "a", None), 5..10).await;
    let b = put_inserts(&mut client, &command("other", "b", Some(20)), 5..10).await;
    assert_eq!(b.memory_sequence_number, Some(20));
    assert_eq!(
        probe(&mut client, TABLE, "a").await.memory_sequence_number,
        None,
        "b's commit closed a's transaction"
    );
    let a = put_inserts(&mut client, &command(TABLE, "a", Some(10)), 10..15).await;
    assert_eq!(a.memory_sequence_number, Some(10));
    assert_eq!(
        probe(&mut client, "other", "b")
            .await
            .memory_sequence_number,
        Some(20)
    );
}

#[tokio::test]
async fn empty_message_with_sequence_closes_the_open_transaction() {
    let node = InProcessNode::start(|_| {}).await;
    let mut client = node.client().await;
    put_inserts(&mut client, &command(TABLE, ORIGIN, None), 0..5).await;
    let lsn = node.durable_lsn();
    let closed = put_inserts(&mut client, &command(TABLE, ORIGIN, Some(4)), 0..0).await;
    assert!(closed.accepted);
    assert_eq!(closed.memory_sequence_number, Some(4));
    assert!(
        node.durable_lsn() > lsn,
        "the closing message is written, so the commit survives a crash"
    );
}

#[tokio::test]
/// As Seafowl does: a message with no rows and a sequence number, with no
/// transaction open, is an empty transaction (a CDC source's way to say "I
/// am at this position"): kept, and durable once every earlier one is.
async fn empty_message_with_sequence_and_no_open_transaction_is_an_empty_transaction() {
    let node = InProcessNode::start(|_| {}).await;
    let mut client = node.client().await;
    let response = put(
        &mut client,
        &command(TABLE, ORIGIN, Some(1)),
        key_value_schema(),
        vec![],
    )
    .await
    .expect("an empty transaction is accepted");
    assert_eq!(response.memory_sequence_number, Some(1));
    assert_eq!(
        response.durable_sequence_number,
        Some(1),
        "nothing to flush"
    );
    assert_eq!(node.durable_lsn(), 1, "its closing frame is in the WAL");
    let numbers = probe(&mut client, TABLE, ORIGIN).await;
    assert_eq!(numbers.memory_sequence_number, Some(1));
}

#[tokio::test]
async fn replayed_sequence_writes_nothing_and_returns_the_current_numbers() {
    let node = InProcessNode::start(|_| {}).await;
    let mut client = node.client().await;
    put_inserts(&mut client, &command(TABLE, ORIGIN, Some(5)), 0..5).await;
    put_inserts(&mut client, &command(TABLE, ORIGIN, Some(9)), 5..10).await;
    let lsn = node.durable_lsn();
    for replayed in [9, 5, 1] {
        let response =
            put_inserts(&mut client, &command(TABLE, ORIGIN, Some(replayed)), 0..5).await;
        assert!(response.accepted, "a replay is answered, not refused");
        assert_eq!(response.memory_sequence_number, Some(9));
        assert_eq!(node.durable_lsn(), lsn, "replay of {replayed} wrote");
    }
}

#[tokio::test]
async fn over_the_high_watermark_puts_are_not_accepted_and_write_nothing() {
    let node = InProcessNode::start(|config| {
        config.pending_bytes_low_watermark = 16 << 10;
        config.pending_bytes_high_watermark = 16 << 10;
        config.max_lag_ms = u64::MAX / 4;
    })
    .await;
    let mut client = node.client().await;
    let mut last_accepted = None;
    for sequence in 1..=1000u64 {
        let lsn = node.durable_lsn();
        let start = sequence as i64 * 100;
        let response = put_inserts(
            &mut client,
            &command(TABLE, ORIGIN, Some(sequence)),
            start..start + 100,
        )
        .await;
        if response.accepted {
            assert_eq!(response.memory_sequence_number, Some(sequence));
            last_accepted = Some(sequence);
            continue;
        }
        assert!(
            last_accepted.is_some(),
            "refused before anything was pending"
        );
        assert_eq!(response.memory_sequence_number, last_accepted);
        assert_eq!(node.durable_lsn(), lsn, "a refused put wrote");
        // Nothing flushes, so the node stays over the watermark.
        let again = put_inserts(
            &mut client,
            &command(TABLE, ORIGIN, Some(sequence)),
            start..start + 100,
        )
        .await;
        assert!(!again.accepted);
        assert_eq!(node.durable_lsn(), lsn);
        return;
    }
    panic!("1000 puts never crossed a 16 KiB high watermark");
}

#[tokio::test]
async fn message_over_the_size_limit_is_invalid_argument_naming_the_limit() {
    let node = InProcessNode::start(|config| config.message_bytes_max = 64 << 10).await;
    let mut client = node.client().await;
    put_inserts(&mut client, &command(TABLE, ORIGIN, Some(1)), 0..5).await;
    let lsn = node.durable_lsn();
    // Many small batches: each FlightData is small, the message is not.
    let batches: Vec<_> = (0..100).map(|i| inserts(i * 100..i * 100 + 100)).collect();
    let status = put(
        &mut client,
        &command(TABLE, ORIGIN, Some(2)),
        key_value_schema(),
        batches,
    )
    .await
    .expect_err("over message_bytes_max");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(
        status.message().contains("message_bytes_max")
            && status.message().contains(&(64 << 10).to_string()),
        "{status:?}"
    );
    assert_eq!(node.durable_lsn(), lsn, "a refused message wrote");
    let numbers = probe(&mut client, TABLE, ORIGIN).await;
    assert_eq!(numbers.memory_sequence_number, Some(1));
    let next = put_inserts(&mut client, &command(TABLE, ORIGIN, Some(2)), 5..10).await;
    assert_eq!(next.memory_sequence_number, Some(2));
}

#[tokio::test]
async fn single_batch_over_the_size_limit_is_invalid_argument_naming_the_limit() {
    let node = InProcessNode::start(|config| config.message_bytes_max = 64 << 10).await;
    let mut client = node.client().await;
    let status = put(
        &mut client,
        &command(TABLE, ORIGIN, Some(1)),
        key_value_schema(),
        vec![inserts(0..20_000)],
    )
    .await
    .expect_err("over message_bytes_max");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("message_bytes_max"), "{status:?}");
    assert_eq!(node.durable_lsn(), 0);
    let next = put_inserts(&mut client, &command(TABLE, ORIGIN, Some(1)), 0..10).await;
    assert_eq!(next.memory_sequence_number, Some(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_puts_of_different_origins_all_succeed() {
    let node = InProcessNode::start(|_| {}).await;
    let origins = 8;
    let transactions = 10u64;
    let mut tasks = Vec::new();
    for origin in 0..origins {
        let mut client = node.client().await;
        tasks.push(tokio::spawn(async move {
            let name = format!("origin-{origin}");
            let table = if origin % 2 == 0 { "even" } else { "odd" };
            for sequence in 1..=transactions {
                let start = origin * 1000 + sequence as i64 * 10;
                let response = put_inserts(
                    &mut client,
                    &command(table, &name, Some(sequence)),
                    start..start + 10,
                )
                .await;
                assert!(response.accepted);
                assert_eq!(response.memory_sequence_number, Some(sequence));
            }
        }));
    }
    for task in tasks {
        task.await.expect("an origin's puts all succeed");
    }
    let mut client = node.client().await;
    for origin in 0..origins {
        let table = if origin % 2 == 0 { "even" } else { "odd" };
        let numbers = probe(&mut client, table, &format!("origin-{origin}")).await;
        assert_eq!(numbers.memory_sequence_number, Some(transactions));
    }
}

#[tokio::test]
async fn stream_without_a_descriptor_is_invalid_argument() {
    let node = InProcessNode::start(|_| {}).await;
    let mut client = node.client().await;
    let status = put_flight_data(&mut client, vec![FlightData::default()])
        .await
        .expect_err("no descriptor");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("flight_descriptor"), "{status:?}");

    let path_descriptor =
        FlightData::default().with_descriptor(FlightDescriptor::new_path(vec!["t".to_string()]));
    let status = put_flight_data(&mut client, vec![path_descriptor])
        .await
        .expect_err("a PATH descriptor");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(
        status.message().contains("flight_descriptor.type"),
        "{status:?}"
    );
    assert_eq!(node.durable_lsn(), 0);
}

#[tokio::test]
async fn oversized_first_flight_data_is_invalid_argument_naming_the_limit() {
    let node = InProcessNode::start(|config| config.message_bytes_max = 64 << 10).await;
    let mut client = node.client().await;
    let command = command(TABLE, ORIGIN, Some(1));
    let first = FlightData {
        flight_descriptor: Some(FlightDescriptor::new_cmd(command_bytes(
            &command,
            BARE_TYPE_URL,
        ))),
        app_metadata: vec![0u8; 128 << 10].into(),
        ..FlightData::default()
    };
    let status = put_flight_data(&mut client, vec![first])
        .await
        .expect_err("over message_bytes_max");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("message_bytes_max"), "{status:?}");
    assert_eq!(node.durable_lsn(), 0);
}

/// A batch message whose body is shorter than its buffers say made arrow-ipc
/// panic inside the Flight decoder (a slice past the end), which panicked
/// the request task (found by the `command_decode` fuzz target).
#[tokio::test]
async fn batch_message_with_buffers_past_its_body_is_invalid_argument() {
    let node = InProcessNode::start(|_| {}).await;
    let mut client = node.client().await;
    let mut messages =
        arrow_flight::utils::batches_to_flight_data(&key_value_schema(), vec![inserts(0..3)])
            .expect("encode");
    messages[0].flight_descriptor = Some(FlightDescriptor::new_cmd(command_bytes(
        &command(TABLE, ORIGIN, Some(1)),
        BARE_TYPE_URL,
    )));
    let body = messages[1].data_body.clone();
    messages[1].data_body = body.slice(..body.len() / 4);
    let status = put_flight_data(&mut client, messages)
        .await
        .expect_err("a malformed batch message");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("arrow stream"), "{status:?}");
    assert_eq!(node.durable_lsn(), 0);
    let accepted = put_inserts(&mut client, &command(TABLE, ORIGIN, Some(1)), 0..3).await;
    assert!(accepted.accepted, "the node still serves");
}
