//! Where a table lives: a store root joined with a validated relative path,
//! and the delta-rs log store that reaches it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Once, OnceLock};

use deltalake::logstore::{logstore_with, LogStoreRef, StorageConfig};
use deltalake::DeltaTableBuilder;
use object_store::memory::InMemory;
use object_store::ObjectStore;
use url::Url;

use super::LakeError;

/// A table's URL plus the object store options needed to reach it (for S3:
/// `aws_endpoint_url`, `aws_region`, `aws_access_key_id`,
/// `aws_secret_access_key`, `aws_allow_http`, ...).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableLocation {
    pub url: Url,
    pub options: HashMap<String, String>,
}

/// Store schemes a table may live on.
const SUPPORTED_SCHEMES: [&str; 4] = ["file", "memory", "s3", "s3a"];

/// Joins a store root (`file:///abs/dir`, `memory://name`, `s3://bucket/prefix`)
/// with a table path relative to it (`"sales/orders"`).
///
/// The path must be non-empty and relative, with `/` separators only, and no
/// empty, `.` or `..` segment: a client can never name a table outside its
/// root. The segments are percent-encoded into the URL as needed.
pub fn table_location(
    root: &Url,
    path: &str,
    options: HashMap<String, String>,
) -> Result<TableLocation, LakeError> {
    let segments = validate_table_path(path)?;
    if !SUPPORTED_SCHEMES.contains(&root.scheme()) {
        return Err(LakeError::UnsupportedStore {
            url: root.to_string(),
            reason: "scheme is not one of file, memory, s3, s3a",
        });
    }
    if root.query().is_some() || root.fragment().is_some() {
        return Err(LakeError::UnsupportedStore {
            url: root.to_string(),
            reason: "a store root has no query or fragment",
        });
    }
    let mut url = root.clone();
    {
        let mut url_segments =
            url.path_segments_mut()
                .map_err(|()| LakeError::UnsupportedStore {
                    url: root.to_string(),
                    reason: "not a base URL",
                })?;
        url_segments.pop_if_empty().extend(segments);
    }
    Ok(TableLocation { url, options })
}

fn validate_table_path(path: &str) -> Result<Vec<&str>, LakeError> {
    let invalid = |reason| LakeError::InvalidTablePath {
        path: path.to_owned(),
        reason,
    };
    if path.is_empty() {
        return Err(invalid("empty"));
    }
    if path.starts_with('/') {
        return Err(invalid("absolute"));
    }
    if path.contains('\\') {
        return Err(invalid("contains a backslash"));
    }
    if path.chars().any(char::is_control) {
        return Err(invalid("contains a control character"));
    }
    let segments: Vec<&str> = path.strip_suffix('/').unwrap_or(path).split('/').collect();
    for segment in &segments {
        match *segment {
            "" => return Err(invalid("contains an empty segment")),
            "." | ".." => return Err(invalid("contains a '.' or '..' segment")),
            _ => {}
        }
    }
    Ok(segments)
}

/// Builds the delta-rs log store for a table (no I/O).
///
/// `memory://` stores are process-wide, one per URL authority, so that every
/// call naming `memory://x/...` sees the same objects; delta-rs alone would
/// give each call a fresh empty store. They live until the process exits:
/// meant for tests and development. A `memory://faulty-*` store is wrapped
/// in a [`FaultyStore`](super::faults::FaultyStore) (a test seam).
pub(crate) fn log_store(location: &TableLocation) -> Result<LogStoreRef, LakeError> {
    register_s3_handlers();
    let delta_error = |source| LakeError::delta("open", &location.url, source);
    if location.url.scheme() == "memory" {
        let root = memory_root(location.url.host_str().unwrap_or_default());
        let config = StorageConfig::parse_options(location.options.clone()).map_err(delta_error)?;
        return logstore_with(root, &location.url, config).map_err(delta_error);
    }
    DeltaTableBuilder::from_url(location.url.clone())
        .and_then(|builder| {
            builder
                .with_storage_options(location.options.clone())
                .build_storage()
        })
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
    let root = stores
        .entry(authority.to_owned())
        .or_insert_with(|| Arc::new(InMemory::new()))
        .clone();
    super::faults::wrap_memory_root(authority, root)
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
