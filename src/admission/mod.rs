//! Admission: everything checked before a put is acknowledged, so that an
//! acknowledged put can always be flushed.
//!
//! Owns: turning a command's `store` and `path` into a [`TableId`] (the one
//! place that happens, for puts and for recovery), the store allowlist and
//! the memory-store rule, the once-per-table checks of the table's store
//! (filesystem or object store reachable and writable, existing table
//! features), the schema knowledge of every table, and the exact conversion
//! of batches to their stored types. Knows no Flight and no WAL; reaches the
//! store only through `lake`.

pub(crate) mod local;
pub mod schema;

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arrow::array::RecordBatch;
use arrow::datatypes::{Schema, SchemaRef};

use crate::error::{NodeError, StoreProblem};
use crate::identity::{StoreRoot, StoreScheme, TableId, TablePath};
use crate::pending::Pending;
use crate::proto::sync::DataSyncCommand;
use crate::stored_types;
use crate::sync::layout::SyncLayout;

pub use schema::{SchemaKnowledge, TypeClaim};

/// What admission needs from the configuration.
#[derive(Debug, Clone)]
pub struct AdmissionConfig {
    /// Root of commands without `store`.
    pub default_store: StoreRoot,
    /// Roots a client `store.location` must lie under; empty: any.
    pub allow_store: Vec<StoreRoot>,
    /// Whether clients may name `memory://` stores.
    pub allow_memory_store: bool,
    /// Directories no table may overlap (the WAL directory).
    pub protected_dirs: Vec<PathBuf>,
    /// How long a store may take to answer the first check of a table.
    pub probe_timeout: Duration,
}

/// The admission stage. Shared by every put.
#[derive(Debug)]
pub struct Admission {
    config: AdmissionConfig,
    /// File store roots with symbolic links resolved, by canonical text.
    resolved: Mutex<HashMap<String, StoreRoot>>,
    /// Tables whose store passed its checks since start.
    checked: Mutex<HashSet<TableId>>,
    schema: SchemaKnowledge,
}

/// A message's layout and schema converted to stored types.
#[derive(Debug, Clone)]
pub struct StoredLayout {
    pub layout: SyncLayout,
    pub schema: SchemaRef,
}

/// Why a table's store cannot take it: the request field to name, what was
/// being done, and the problem.
type Unwritable = (&'static str, String, StoreProblem);

/// `future`, or [`StoreProblem::Timeout`] after `timeout`.
async fn bounded<T>(
    timeout: std::time::Duration,
    future: impl std::future::Future<Output = T>,
) -> Result<T, StoreProblem> {
    tokio::time::timeout(timeout, future)
        .await
        .map_err(|_| StoreProblem::Timeout(timeout))
}

impl Admission {
    pub fn new(config: AdmissionConfig) -> Admission {
        Admission {
            config,
            resolved: Mutex::default(),
            checked: Mutex::default(),
            schema: SchemaKnowledge::default(),
        }
    }

    pub fn schema(&self) -> &SchemaKnowledge {
        &self.schema
    }

    pub fn default_store(&self) -> &StoreRoot {
        &self.config.default_store
    }

    /// The table `command` names. With `client` set (a put), the client's
    /// store must pass the allowlist and the memory-store rule; recovery
    /// resolves what was accepted before without them.
    pub fn table_id(&self, command: &DataSyncCommand, client: bool) -> Result<TableId, NodeError> {
        let path = TablePath::parse(&command.path)?;
        let store = match &command.store {
            Some(store) if !store.location.is_empty() => {
                let root = StoreRoot::parse(&store.location, &store.options)?;
                if client {
                    self.check_allowed(&root, &store.location)?;
                }
                root
            }
            _ => self.config.default_store.clone(),
        };
        Ok(TableId::new(self.resolve_links(store), path))
    }

    /// Whether a token restricted to `prefixes` (empty: unrestricted) may
    /// write `table`; `PermissionDenied` otherwise.
    pub fn check_grant(&self, table: &TableId, prefixes: &[StoreRoot]) -> Result<(), NodeError> {
        if prefixes.is_empty() {
            return Ok(());
        }
        let store = table.store();
        let under = |prefix: &StoreRoot| {
            store.is_under(prefix) || store.is_under(&self.resolve_links(prefix.clone()))
        };
        if prefixes.iter().any(under) {
            return Ok(());
        }
        Err(NodeError::TokenStoreNotAllowed {
            location: store.canonical().to_owned(),
            allowed: prefixes
                .iter()
                .map(|p| p.canonical().to_owned())
                .collect::<Vec<_>>()
                .join(", "),
        })
    }

    fn check_allowed(&self, root: &StoreRoot, location: &str) -> Result<(), NodeError> {
        if root.scheme() == StoreScheme::Memory && !self.config.allow_memory_store {
            return Err(NodeError::MemoryStoreRefused {
                location: location.to_owned(),
            });
        }
        let allowed = &self.config.allow_store;
        if allowed.is_empty() || allowed.iter().any(|prefix| root.is_under(prefix)) {
            return Ok(());
        }
        Err(NodeError::StoreNotAllowed {
            location: location.to_owned(),
            allowed: allowed
                .iter()
                .map(|p| p.canonical().to_owned())
                .collect::<Vec<_>>()
                .join(", "),
        })
    }

    /// A file store root with symbolic links of its existing part resolved
    /// (cached: a few `stat` calls once per root).
    fn resolve_links(&self, store: StoreRoot) -> StoreRoot {
        let Some(dir) = store.local_dir() else {
            return store;
        };
        let mut resolved = self.resolved.lock().unwrap_or_else(|e| e.into_inner());
        resolved
            .entry(store.canonical().to_owned())
            .or_insert_with(|| store.with_local_path(&local::resolve_links(&dir)))
            .clone()
    }

    /// Checks, once per table per process, that its store can take it: not
    /// quarantined; on a file store the filesystem checks of `local`; on an
    /// object store a list and a small write; an existing table loadable and
    /// of features the writer keeps correct (its columns then become known).
    pub async fn check_store(&self, table: &TableId, pending: &Pending) -> Result<(), NodeError> {
        if let Some(quarantine) = pending.quarantined(table) {
            return Err(NodeError::Quarantined {
                table: table.to_string(),
                reason: quarantine.reason,
            });
        }
        if self
            .checked
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(table)
        {
            return Ok(());
        }
        let unwritable = |(field, what, problem): Unwritable| NodeError::Unwritable {
            field,
            table: table.to_string(),
            what: what.to_owned(),
            problem: Box::new(problem),
        };
        self.check_location(table).await.map_err(unwritable)?;
        if let Some(state) = self.load_table(table).await.map_err(unwritable)? {
            crate::lake::check_writable(&state).map_err(|error| {
                unwritable((
                    "path",
                    "checking the table".into(),
                    StoreProblem::Lake(error),
                ))
            })?;
            self.schema.learn_from_store(table, state.schema());
        }
        self.checked
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(table.clone());
        Ok(())
    }

    /// The store's own checks: the filesystem rules of `local` on a file
    /// store, a list and a small write on an object store; each bounded by
    /// `--store-check-timeout-ms`.
    async fn check_location(&self, table: &TableId) -> Result<(), Unwritable> {
        let timeout = self.config.probe_timeout;
        match table.store().scheme() {
            StoreScheme::File => {
                let (id, protected) = (table.clone(), self.config.protected_dirs.clone());
                let checked = async move {
                    tokio::task::spawn_blocking(move || local::check_table(&id, &protected))
                        .await
                        .map_err(|join| std::io::Error::other(join.to_string()))
                };
                let what = "checking the directory";
                match bounded(timeout, checked).await {
                    Err(problem) => Err(("store.location", what.into(), problem)),
                    Ok(Err(error)) => Err(("store.location", what.into(), StoreProblem::Io(error))),
                    Ok(Ok(Err(problem))) => {
                        Err((problem.field, problem.what, StoreProblem::Io(problem.error)))
                    }
                    Ok(Ok(Ok(()))) => Ok(()),
                }
            }
            StoreScheme::S3 => match bounded(timeout, crate::lake::probe_store(table)).await {
                Err(problem) => Err(("store.location", "reaching the store".into(), problem)),
                Ok(Err(error)) => Err((
                    "store.location",
                    "reaching the store".into(),
                    StoreProblem::Lake(error),
                )),
                Ok(Ok(())) => Ok(()),
            },
            StoreScheme::Memory => Ok(()),
        }
    }

    /// The table's Delta state, if it exists (bounded like the checks).
    async fn load_table(
        &self,
        table: &TableId,
    ) -> Result<Option<crate::lake::TableState>, Unwritable> {
        let loaded = bounded(self.config.probe_timeout, crate::lake::load_state(table)).await;
        match loaded {
            Err(problem) => Err(("path", "reading the table".into(), problem)),
            Ok(Err(error)) => Err((
                "path",
                "reading the table".into(),
                StoreProblem::Lake(error),
            )),
            Ok(Ok(state)) => Ok(state),
        }
    }

    /// Validates a message's descriptors against its schema in stored
    /// types, and claims its columns against what is known of the table.
    pub fn layout(
        &self,
        table: &TableId,
        command: &DataSyncCommand,
        schema: &Schema,
    ) -> Result<(StoredLayout, TypeClaim), NodeError> {
        // Roles first, on the schema as sent, so errors name the client's types.
        SyncLayout::from_descriptors(&command.column_descriptors, schema).map_err(Box::new)?;
        let stored = stored_types::stored_schema(schema).map_err(|(field, problem)| {
            NodeError::InvalidCommand {
                field: "column_descriptors",
                problem: format!("arrow field {field:?}: {problem}"),
            }
        })?;
        let layout =
            SyncLayout::from_descriptors(&command.column_descriptors, &stored).map_err(Box::new)?;
        let claim =
            self.schema
                .claim(table, &layout)
                .map_err(|conflict| NodeError::InvalidCommand {
                    field: "column_descriptors",
                    problem: conflict.0,
                })?;
        Ok((
            StoredLayout {
                layout,
                schema: Arc::new(stored),
            },
            claim,
        ))
    }
}

/// `batch` converted to the stored schema, every value exactly; errors name
/// the batch, the arrow field and the value.
pub fn to_stored_batch(
    index: usize,
    batch: &RecordBatch,
    stored: &StoredLayout,
) -> Result<RecordBatch, NodeError> {
    if batch.schema().fields().len() != stored.schema.fields().len() {
        return Err(NodeError::Batch {
            batch: index,
            problem: format!(
                "has {} columns but the stream's schema has {}",
                batch.num_columns(),
                stored.schema.fields().len()
            ),
        });
    }
    let columns = batch
        .columns()
        .iter()
        .zip(stored.schema.fields())
        .map(|(column, field)| {
            stored_types::to_stored(column, field.data_type()).map_err(|problem| NodeError::Batch {
                batch: index,
                problem: format!("arrow field {:?}: {problem}", field.name()),
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    RecordBatch::try_new(stored.schema.clone(), columns).map_err(|error| NodeError::Batch {
        batch: index,
        problem: error.to_string(),
    })
}
