//! One flush of one table: create or evolve, merge by key, commit once with
//! the exactly-once marker.

use std::collections::HashMap;
use std::sync::Arc;

use arrow::datatypes::{FieldRef, Schema};
use arrow::record_batch::RecordBatch;
use deltalake::kernel::engine::arrow_conversion::TryFromArrow;
use deltalake::kernel::transaction::{CommitBuilder, CommitProperties};
use deltalake::kernel::{
    Action, LogicalFileView, MetadataExt, StructField, StructType, Transaction,
};
use deltalake::logstore::LogStoreRef;
use deltalake::operations::create::CreateBuilder;
use deltalake::protocol::{DeltaOperation, SaveMode};
use deltalake::writer::{DeltaWriter, RecordBatchWriter, WriteMode};
use futures::TryStreamExt;
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;
use serde_json::json;

use super::location::log_store;
use super::merge::{
    affected_keys, build_upserts, check_squashed, keep_rows, needs_fill, plan_schema, FillRows,
    KeyIndex, SchemaPlan,
};
use super::prune::AffectedKeys;
use super::table::{load_with, marker_app_id, read_file, state_of, TableState};
use super::LakeError;
use crate::identity::TableId;
use crate::sync::changes::Squashed;

/// Data files are rolled over at about this size.
const TARGET_FILE_BYTES: u64 = 128 * 1024 * 1024;
/// Rows per Parquet row group: many, so readers get large sequential chunks.
const ROW_GROUP_ROWS: usize = 1024 * 1024;
/// Key of the flightlog entry in a commit's `commitInfo`.
const COMMIT_INFO_KEY: &str = "flightlog";

/// What a commit records so that a flush is applied exactly once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommitMarker {
    /// Identity of the WAL the flushed frames come from.
    pub wal_id: String,
    /// Commit Lsn of the last transaction the flush covers; recorded as the
    /// txn version (every transaction of the table at or below it applied).
    pub lsn: u64,
    /// Highest sequence number per origin covered by the flush, recorded in
    /// `commitInfo` for operators and recovery tools.
    pub origins: Vec<(String, u64)>,
}

/// The result of [`apply`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApplyOutcome {
    /// A new table version holds the flush.
    Committed {
        version: u64,
        files_added: usize,
        files_removed: usize,
        /// Rows in the added files: kept rows of rewritten files plus upserts.
        rows_written: u64,
    },
    /// The table already records this WAL at `recorded_lsn >= marker.lsn`;
    /// nothing was written.
    AlreadyApplied { recorded_lsn: u64 },
}

/// Applies one squashed flush to the table at `location` in a single Delta
/// commit that also records `marker` (txn `appId = "flightlog-<wal_id>"`,
/// `version = lsn`).
///
/// - Creates the table from the flush's key (NOT NULL) and value columns when
///   none exists (a separate, data-less first commit).
/// - Returns [`ApplyOutcome::AlreadyApplied`] without writing when the table
///   already records this WAL at or above `marker.lsn`: replaying a flush is
///   idempotent.
/// - Adds value columns the table lacks (nullable) in the same commit; a type
///   conflict is [`LakeError::TypeConflict`].
/// - Merges per the [`Squashed`] contract, rewriting only the files whose key
///   statistics may hold an affected key; with none, the commit is a plain
///   append.
///
/// `Ok` means the commit is durable in the table's log. On `Err` nothing is
/// visible (data files already uploaded stay unreferenced, for vacuum);
/// retry when [`LakeError::is_retryable`]: the retry reloads the table, so a
/// concurrent writer's commit is merged against, never overwritten.
pub async fn apply(
    location: &TableId,
    squashed: &Squashed,
    marker: &CommitMarker,
) -> Result<ApplyOutcome, LakeError> {
    let store = log_store(location)?;
    let state = load_with(store, location).await?;
    apply_to(location, state.as_ref(), squashed, marker).await
}

/// [`apply`] on a table state the caller already loaded (`None`: the table
/// does not exist and is created), so a flush that read the table's marker
/// does not read its log a second time.
pub async fn apply_to(
    location: &TableId,
    state: Option<&TableState>,
    squashed: &Squashed,
    marker: &CommitMarker,
) -> Result<ApplyOutcome, LakeError> {
    check_squashed(squashed)?;
    match state {
        Some(state) => apply_on(state, location, squashed, marker).await,
        None => {
            let created = create(log_store(location)?, location, squashed).await?;
            apply_on(&created, location, squashed, marker).await
        }
    }
}

/// [`apply`] against an already loaded `state` (which may be stale: the
/// commit then meets delta-rs's conflict checker).
pub(crate) async fn apply_on(
    state: &TableState,
    location: &TableId,
    squashed: &Squashed,
    marker: &CommitMarker,
) -> Result<ApplyOutcome, LakeError> {
    let txn_version =
        i64::try_from(marker.lsn).map_err(|_| LakeError::LsnOutOfRange { lsn: marker.lsn })?;
    if let Some(recorded_lsn) = state.applied_lsn(&marker.wal_id).await? {
        if recorded_lsn >= marker.lsn {
            return Ok(ApplyOutcome::AlreadyApplied { recorded_lsn });
        }
    }
    super::check_writable(state)?;
    let plan = plan_schema(Some(state.schema()), squashed)?;
    let merged = merge(state, &plan, squashed, location).await?;
    crate::failpoint::hit("flush-after-parquet-write");
    commit(state, location, &plan, merged, marker, txn_version).await
}

/// Creates the table from the flush's columns (first commit, no data).
async fn create(
    store: LogStoreRef,
    location: &TableId,
    squashed: &Squashed,
) -> Result<TableState, LakeError> {
    let plan = plan_schema(None, squashed)?;
    let schema = delta_schema(&plan.target.fields().iter().cloned().collect::<Vec<_>>())?;
    let table = CreateBuilder::new()
        .with_log_store(store.clone())
        .with_columns(schema.fields().cloned())
        // A concurrent creator may win the race: then use its table.
        .with_save_mode(SaveMode::Ignore)
        .await
        .map_err(|source| LakeError::delta("create", location.url(), source))?;
    state_of(table, store, location)
}

fn delta_schema(fields: &[FieldRef]) -> Result<StructType, LakeError> {
    let schema = Schema::new(fields.to_vec());
    StructType::try_from_arrow(&schema).map_err(|source| LakeError::UnsupportedType {
        column: fields
            .iter()
            .map(|f| f.name().as_str())
            .collect::<Vec<_>>()
            .join(","),
        data_type: arrow::datatypes::DataType::Struct(schema.fields().clone()),
        source,
    })
}

/// The new data files and the files they replace.
struct Merged {
    adds: Vec<Action>,
    removes: Vec<Action>,
    rows_written: u64,
}

/// Reads the files that may hold affected keys, drops removed keys, builds the
/// upserts (filling from pre-flush rows) and writes everything as new files.
async fn merge(
    state: &TableState,
    plan: &SchemaPlan,
    squashed: &Squashed,
    location: &TableId,
) -> Result<Merged, LakeError> {
    let key_fields = table_key_fields(plan, squashed)?;
    let with_fill = needs_fill(squashed, &plan.target);
    let affected = AffectedKeys::new(
        &key_fields,
        affected_keys(&key_fields, squashed, with_fill)?,
    );
    let candidates: Vec<LogicalFileView> = if affected.is_empty() {
        Vec::new()
    } else {
        state
            .files()
            .await?
            .into_iter()
            .filter(|file| affected.may_be_in(file))
            .collect()
    };
    if candidates
        .iter()
        .any(|file| file.deletion_vector_descriptor().is_some())
    {
        return Err(LakeError::UnsupportedTable {
            table: location.to_string(),
            reason: "deletion vectors are not supported",
        });
    }
    let mut writer = Writer::new(state, plan, location)?;
    let mut fill = FillRows::default();
    // The index of affected keys only when some file may hold one (an
    // append of new keys builds none).
    if !candidates.is_empty() {
        let index = KeyIndex::new(key_fields.clone(), squashed, with_fill)?;
        for file in &candidates {
            let mut batches = read_file(state.object_store(), file, plan.target.clone()).await?;
            while let Some(batch) = batches.try_next().await? {
                let split = index.split(&batch)?;
                fill.collect(&batch, &split.fill_hits)?;
                writer.write(keep_rows(&batch, &split.keep)?).await?;
            }
        }
    }
    writer
        .write(build_upserts(squashed, &plan.target, &fill)?)
        .await?;
    let removes = candidates
        .iter()
        .map(|file| Action::Remove(file.remove_action(true)))
        .collect();
    let rows_written = writer.rows;
    let adds = writer.finish().await?;
    Ok(Merged {
        adds,
        removes,
        rows_written,
    })
}

/// The table's key fields (table types), in the flush's key order.
fn table_key_fields(plan: &SchemaPlan, squashed: &Squashed) -> Result<Vec<FieldRef>, LakeError> {
    squashed
        .key_fields
        .iter()
        .map(|key| {
            plan.target
                .field_with_name(key.name())
                .map(|field| Arc::new(field.clone()))
                .map_err(|_| LakeError::KeyColumnMissing {
                    column: key.name().clone(),
                })
        })
        .collect()
}

/// delta-rs's Parquet writer, tracking rows and mapping errors.
struct Writer<'a> {
    inner: RecordBatchWriter,
    mode: WriteMode,
    rows: u64,
    location: &'a TableId,
}

impl<'a> Writer<'a> {
    fn new(
        state: &TableState,
        plan: &SchemaPlan,
        location: &'a TableId,
    ) -> Result<Self, LakeError> {
        let properties = WriterProperties::builder()
            .set_compression(Compression::SNAPPY)
            .set_max_row_group_row_count(Some(ROW_GROUP_ROWS))
            .build();
        let inner = RecordBatchWriter::for_table(&state.table)
            .map_err(|source| LakeError::delta("open writer", location.url(), source))?
            .with_target_file_size(TARGET_FILE_BYTES)
            .with_writer_properties(properties);
        // New columns widen the writer's schema on the first batch.
        let mode = if plan.added.is_empty() {
            WriteMode::Default
        } else {
            WriteMode::MergeSchema
        };
        Ok(Writer {
            inner,
            mode,
            rows: 0,
            location,
        })
    }

    async fn write(&mut self, batch: RecordBatch) -> Result<(), LakeError> {
        if batch.num_rows() == 0 {
            return Ok(());
        }
        self.rows += batch.num_rows() as u64;
        self.inner
            .write_with_mode(batch, self.mode)
            .await
            .map_err(|source| LakeError::delta("write data", self.location.url(), source))
    }

    async fn finish(mut self) -> Result<Vec<Action>, LakeError> {
        let adds =
            self.inner.flush().await.map_err(|source| {
                LakeError::delta("finish data files", self.location.url(), source)
            })?;
        Ok(adds.into_iter().map(Action::Add).collect())
    }
}

/// Commits removes + adds (+ evolved metadata) + the txn marker as one version.
async fn commit(
    state: &TableState,
    location: &TableId,
    plan: &SchemaPlan,
    merged: Merged,
    marker: &CommitMarker,
    txn_version: i64,
) -> Result<ApplyOutcome, LakeError> {
    let error = |operation| move |source| LakeError::delta(operation, location.url(), source);
    let snapshot = state.table.snapshot().map_err(error("read snapshot"))?;
    let files_added = merged.adds.len();
    let files_removed = merged.removes.len();
    let mut actions = merged.removes;
    actions.extend(merged.adds);
    if !plan.added.is_empty() {
        let current = snapshot.schema();
        let added = delta_schema(&plan.added)?;
        let fields: Vec<StructField> = current
            .fields()
            .cloned()
            .chain(added.fields().cloned())
            .collect();
        let schema =
            StructType::try_new(fields).map_err(|source| error("evolve schema")(source.into()))?;
        let metadata = snapshot
            .metadata()
            .clone()
            .with_schema(&schema)
            .map_err(|source| error("evolve schema")(source.into()))?;
        actions.push(Action::Metadata(metadata));
    }
    actions.push(Action::Txn(Transaction::new(
        marker_app_id(&marker.wal_id, location),
        txn_version,
    )));
    let operation = if files_removed == 0 {
        DeltaOperation::Write {
            mode: SaveMode::Append,
            partition_by: None,
            predicate: None,
        }
    } else {
        // No predicate: the merge read the table as a whole, so a concurrent
        // data change conflicts and the caller retries on fresh state.
        DeltaOperation::Merge {
            predicate: None,
            merge_predicate: Some("flightlog upsert by primary key".to_owned()),
            matched_predicates: Vec::new(),
            not_matched_predicates: Vec::new(),
            not_matched_by_source_predicates: Vec::new(),
        }
    };
    let properties = CommitProperties::default().with_metadata(commit_info(marker));
    let finalized = CommitBuilder::from(properties)
        .with_actions(actions)
        .build(Some(snapshot), state.log_store.clone(), operation)
        .await
        .map_err(error("commit"))?;
    Ok(ApplyOutcome::Committed {
        version: finalized.version(),
        files_added,
        files_removed,
        rows_written: merged.rows_written,
    })
}

/// `commitInfo` entry naming the WAL, the Lsn and the per-origin sequences.
fn commit_info(marker: &CommitMarker) -> HashMap<String, serde_json::Value> {
    let origins: Vec<serde_json::Value> = marker
        .origins
        .iter()
        .map(|(origin, sequence)| json!({ "origin": origin, "sequenceNumber": sequence }))
        .collect();
    HashMap::from([(
        COMMIT_INFO_KEY.to_owned(),
        json!({ "walId": marker.wal_id, "lsn": marker.lsn, "origins": origins }),
    )])
}
