//! Where a table lives: the delta-rs log store that reaches a [`TableId`],
//! and the durability step local stores need.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Once, OnceLock};

use deltalake::logstore::{logstore_with, LogStoreRef, StorageConfig};
use deltalake::DeltaTableBuilder;
use object_store::memory::InMemory;
use object_store::ObjectStore;
use url::Url;

use super::LakeError;
use crate::identity::TableId;

/// Builds the delta-rs log store for a table (no I/O).
///
/// `memory://` stores are process-wide, one per URL authority, so that every
/// call naming `memory://x/...` sees the same objects; delta-rs alone would
/// give each call a fresh empty store. They live until the process exits:
/// meant for tests and development (admission refuses them unless the
/// operator allows them). In builds with the `test-seams` feature (the test
/// suite), a `memory://faulty-*` store is wrapped in the fault-injecting
/// store of `lake::faults`; the release binary has no such code.
pub(crate) fn log_store(table: &TableId) -> Result<LogStoreRef, LakeError> {
    register_s3_handlers();
    let delta_error = |source| LakeError::delta("open", table.url(), source);
    let options: HashMap<String, String> = table
        .options()
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    if table.url().scheme() == "memory" {
        let root = memory_root(table.url().host_str().unwrap_or_default());
        let config = StorageConfig::parse_options(options).map_err(delta_error)?;
        return logstore_with(root, table.url(), config).map_err(delta_error);
    }
    DeltaTableBuilder::from_url(table.url().clone())
        .and_then(|builder| builder.with_storage_options(options).build_storage())
        .map_err(delta_error)
}

fn register_s3_handlers() {
    static REGISTER: Once = Once::new();
    REGISTER.call_once(|| deltalake::aws::register_handlers(None));
}

fn memory_root(authority: &str) -> Arc<dyn ObjectStore> {
    static STORES: OnceLock<Mutex<HashMap<String, Arc<InMemory>>>> = OnceLock::new();
    let stores = STORES.get_or_init(Default::default);
    // A poisoned map is still a valid map: nothing panics while holding it.
    let mut stores = stores
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let root: Arc<dyn ObjectStore> = stores
        .entry(authority.to_owned())
        .or_insert_with(|| Arc::new(InMemory::new()))
        .clone();
    #[cfg(feature = "test-seams")]
    let root = super::faults::wrap_memory_root(authority, root);
    root
}

/// Makes everything written under a `file://` store root durable before the
/// WAL forgets it: object_store's local backend writes files and renames
/// them into place without fsync, so a committed Delta version survives a
/// process crash but not a power cut until the page cache is flushed.
/// `syncfs` flushes the whole filesystem holding `root` (one call covers
/// every table on it). Other schemes are durable when their put returns.
pub fn sync_local_store(root: &Url) -> std::io::Result<()> {
    if root.scheme() != "file" {
        return Ok(());
    }
    let path = root
        .to_file_path()
        .map_err(|()| std::io::Error::other(format!("{root} is not a local path")))?;
    let directory = match std::fs::File::open(&path) {
        Ok(directory) => directory,
        // Nothing was ever written under a root that does not exist.
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(error) => return Err(error),
    };
    use std::os::fd::AsRawFd;
    // SAFETY: syncfs only reads the descriptor, which `directory` keeps open
    // for the duration of the call; it touches no memory of ours.
    #[allow(unsafe_code)]
    let result = unsafe { libc::syncfs(directory.as_raw_fd()) };
    if result == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}
