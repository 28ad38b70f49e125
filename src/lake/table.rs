//! Loading a table's state and reading its data files back.

use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use bytes::Bytes;
use deltalake::kernel::LogicalFileView;
use deltalake::logstore::LogStoreRef;
use deltalake::DeltaTable;
use futures::future::BoxFuture;
use futures::FutureExt;
use futures::{Stream, StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::ObjectStore;
use object_store::{GetOptions, GetRange, ObjectStoreExt};
use parquet::arrow::arrow_reader::ArrowReaderOptions;
use parquet::arrow::async_reader::{AsyncFileReader, MetadataSuffixFetch};
use parquet::arrow::ParquetRecordBatchStreamBuilder;
use parquet::errors::ParquetError;
use parquet::file::metadata::{ParquetMetaData, ParquetMetaDataReader};
use std::ops::Range;
use std::sync::Arc;

use super::location::log_store;
use super::merge::conform;
use super::LakeError;
use crate::identity::TableId;

/// Rows per batch when reading data files back: large enough to amortise
/// per-batch work, small enough to keep a rewrite's memory flat.
const READ_BATCH_ROWS: usize = 64 * 1024;

/// The Delta txn `appId` under which a WAL records the commit Lsn applied to
/// one table: the WAL identity and the table's [`TableId::marker_tag`], so a
/// marker written for one table never counts for another even if two ids
/// ever reach one physical table.
pub(crate) fn marker_app_id(wal_id: &str, table: &TableId) -> String {
    format!("flightlog-{wal_id}-{}", table.marker_tag())
}

/// The `appId` of markers written before they named their table; read only
/// when a table has no per-table marker of this WAL.
fn legacy_marker_app_id(wal_id: &str) -> String {
    format!("flightlog-{wal_id}")
}

/// A loaded Delta table: its schema, its version, and the exactly-once
/// markers it records.
#[derive(Debug)]
pub struct TableState {
    pub(crate) table: DeltaTable,
    pub(crate) log_store: LogStoreRef,
    pub(crate) id: TableId,
    schema: SchemaRef,
}

impl TableState {
    /// The table's schema as Arrow sees it when reading Delta (what put-time
    /// type checks compare against).
    pub fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    /// The Delta version this state was loaded at.
    pub fn version(&self) -> u64 {
        // A loaded table always has a version; 0 is the creation commit.
        self.table.version().unwrap_or(0)
    }

    /// The highest commit Lsn of WAL `wal_id` applied to this table (the
    /// version of its txn action, see [`marker_app_id`]), as of this state's
    /// version; `None` when that WAL never committed here.
    pub async fn applied_lsn(&self, wal_id: &str) -> Result<Option<u64>, LakeError> {
        let app_id = marker_app_id(wal_id, &self.id);
        if let Some(version) = self.txn_version(&app_id).await? {
            return Ok(Some(version));
        }
        self.txn_version(&legacy_marker_app_id(wal_id)).await
    }

    async fn txn_version(&self, app_id: &str) -> Result<Option<u64>, LakeError> {
        let snapshot = self
            .table
            .snapshot()
            .map_err(|source| LakeError::delta("read snapshot", self.table.table_url(), source))?;
        let version = snapshot
            .transaction_version(self.log_store.as_ref(), app_id)
            .await
            .map_err(|source| {
                LakeError::delta("read txn marker", self.table.table_url(), source)
            })?;
        let app_id = app_id.to_owned();
        version
            .map(|version| {
                u64::try_from(version).map_err(|_| LakeError::InvalidMarker { app_id, version })
            })
            .transpose()
    }

    /// The active data files, newest first.
    pub(crate) async fn files(&self) -> Result<Vec<LogicalFileView>, LakeError> {
        let error = |source| LakeError::delta("list files", self.table.table_url(), source);
        self.table
            .snapshot()
            .map_err(error)?
            .snapshot()
            .file_views(self.log_store.as_ref(), None)
            .try_collect()
            .await
            .map_err(error)
    }

    /// The object store rooted at the table directory (data file paths are
    /// relative to it).
    pub(crate) fn object_store(&self) -> Arc<dyn ObjectStore> {
        self.log_store.object_store(None)
    }
}

/// Loads the newest version of the table at `location`; `Ok(None)` when no
/// Delta table exists there (no `_delta_log` entry).
pub async fn load_state(table: &TableId) -> Result<Option<TableState>, LakeError> {
    let store = log_store(table)?;
    load_with(store, table).await
}

pub(crate) async fn load_with(
    log_store: LogStoreRef,
    location: &TableId,
) -> Result<Option<TableState>, LakeError> {
    let error = |operation| move |source| LakeError::delta(operation, location.url(), source);
    let exists = log_store
        .is_delta_table_location()
        .await
        .map_err(error("probe"))?;
    if !exists {
        return Ok(None);
    }
    let mut table = DeltaTable::new(log_store.clone());
    table.load().await.map_err(error("load"))?;
    Ok(Some(state_of(table, log_store, location)?))
}

pub(crate) fn state_of(
    table: DeltaTable,
    log_store: LogStoreRef,
    location: &TableId,
) -> Result<TableState, LakeError> {
    let schema = table
        .snapshot()
        .map_err(|source| LakeError::delta("read snapshot", location.url(), source))?
        .snapshot()
        .arrow_schema();
    Ok(TableState {
        table,
        log_store,
        id: location.clone(),
        schema,
    })
}

/// Streams the rows of one data file, conformed to `schema` (columns the file
/// predates read as null).
pub(crate) async fn read_file(
    store: Arc<dyn ObjectStore>,
    file: &LogicalFileView,
    schema: SchemaRef,
) -> Result<impl Stream<Item = Result<RecordBatch, LakeError>>, LakeError> {
    let path = file.object_store_path();
    let parquet_error = {
        let path = path.to_string();
        move |source| LakeError::Parquet {
            operation: "read",
            path: path.clone(),
            source,
        }
    };
    let reader = ObjectReader {
        store,
        path: path.clone(),
    };
    let stream = ParquetRecordBatchStreamBuilder::new(reader)
        .await
        .map_err(parquet_error.clone())?
        .with_batch_size(READ_BATCH_ROWS)
        .build()
        .map_err(parquet_error.clone())?;
    Ok(stream.map(move |batch| conform(&batch.map_err(parquet_error.clone())?, &schema)))
}

/// Reads the whole current table at `location` into memory: every active
/// data file, in the table's schema. An empty vector when no table exists.
///
/// Meant for tests and tools (it holds the table in memory); readers of real
/// tables use a query engine.
pub async fn read_table(location: &TableId) -> Result<Vec<RecordBatch>, LakeError> {
    let Some(state) = load_state(location).await? else {
        return Ok(Vec::new());
    };
    let mut batches = Vec::new();
    for file in state.files().await? {
        let stream = read_file(state.object_store(), &file, state.schema().clone()).await?;
        batches.extend(stream.try_collect::<Vec<_>>().await?);
    }
    Ok(batches)
}

/// Parquet's view of one object: ranged reads, footer by suffix request.
struct ObjectReader {
    store: Arc<dyn ObjectStore>,
    path: Path,
}

fn external(error: object_store::Error) -> ParquetError {
    ParquetError::External(Box::new(error))
}

impl AsyncFileReader for ObjectReader {
    fn get_bytes(&mut self, range: Range<u64>) -> BoxFuture<'_, parquet::errors::Result<Bytes>> {
        async move {
            self.store
                .get_range(&self.path, range)
                .await
                .map_err(external)
        }
        .boxed()
    }

    fn get_byte_ranges(
        &mut self,
        ranges: Vec<Range<u64>>,
    ) -> BoxFuture<'_, parquet::errors::Result<Vec<Bytes>>> {
        async move {
            self.store
                .get_ranges(&self.path, &ranges)
                .await
                .map_err(external)
        }
        .boxed()
    }

    fn get_metadata<'a>(
        &'a mut self,
        options: Option<&'a ArrowReaderOptions>,
    ) -> BoxFuture<'a, parquet::errors::Result<Arc<ParquetMetaData>>> {
        async move {
            let metadata = ParquetMetaDataReader::new()
                .with_arrow_reader_options(options)
                .load_via_suffix_and_finish(self)
                .await?;
            Ok(Arc::new(metadata))
        }
        .boxed()
    }
}

impl MetadataSuffixFetch for &mut ObjectReader {
    fn fetch_suffix(&mut self, suffix: usize) -> BoxFuture<'_, parquet::errors::Result<Bytes>> {
        let options = GetOptions {
            range: Some(GetRange::Suffix(suffix as u64)),
            ..Default::default()
        };
        async move {
            let response = self
                .store
                .get_opts(&self.path, options)
                .await
                .map_err(external)?;
            response.bytes().await.map_err(external)
        }
        .boxed()
    }
}
