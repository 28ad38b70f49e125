//! Table identity: which physical table a command names.
//!
//! Owns the rules for store locations (`StorageLocation.location` and its
//! options) and table paths (`DataSyncCommand.path`), and the one canonical
//! form of both. A [`TableId`] is made here, from a store root and a path,
//! and nowhere else; the index, the schema knowledge, the flusher, the
//! checkpoint frames, the exactly-once marker and the lake adapter all key
//! tables by it. Two spellings of one table (`file://localhost/x`,
//! `file:/x/`, `FILE:///x/./`) are one `TableId`.
//!
//! Pure: no I/O. What needs the filesystem or the store (symlinks, whether a
//! path component is a file, whether the store is writable) is checked at
//! admission (`crate::admission`). Knows no Flight, no WAL, no Delta.

use std::collections::BTreeMap;
use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use url::Url;

/// Longest table path, in bytes.
pub const TABLE_PATH_BYTES_MAX: usize = 1024;
/// Most segments in a table path.
pub const TABLE_PATH_SEGMENTS_MAX: usize = 32;
/// Longest path segment, in bytes (the usual filesystem name limit).
pub const SEGMENT_BYTES_MAX: usize = 255;

/// Option keys that choose an S3 endpoint: part of a store's identity (the
/// same bucket name on two endpoints is two stores).
const ENDPOINT_KEYS: [&str; 4] = [
    "aws_endpoint_url",
    "aws_endpoint",
    "endpoint_url",
    "endpoint",
];

/// A location or path a client sent that names no usable table. `field` is
/// the command field at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {} {problem}", shown(value))]
pub struct IdentityError {
    pub field: &'static str,
    pub value: String,
    pub problem: String,
}

/// `value` quoted for an error message, cut to its first 200 characters
/// when longer (a client's megabyte path must not become a megabyte answer).
fn shown(value: &str) -> String {
    const SHOWN: usize = 200;
    match value.char_indices().nth(SHOWN) {
        None => format!("{value:?}"),
        Some((end, _)) => format!("{:?}... ({} bytes)", &value[..end], value.len()),
    }
}

/// Longest store location, in bytes.
pub const STORE_LOCATION_BYTES_MAX: usize = 2048;
/// Most store options, and the longest key and value of one, in bytes.
pub const STORE_OPTIONS_MAX: usize = 64;
pub const STORE_OPTION_BYTES_MAX: usize = 4096;

/// The size rules of a store's location and options: both reach every WAL
/// frame, and the endpoint option the table's identity in every checkpoint.
fn check_store_size(
    location: &str,
    options: &HashMap<String, String>,
) -> Result<(), IdentityError> {
    if location.len() > STORE_LOCATION_BYTES_MAX {
        return Err(store_error(
            location,
            format!(
                "is {} bytes long; at most {STORE_LOCATION_BYTES_MAX}",
                location.len()
            ),
        ));
    }
    let option_error = |value: &str, problem: String| IdentityError {
        field: "store.options",
        value: value.to_owned(),
        problem,
    };
    if options.len() > STORE_OPTIONS_MAX {
        return Err(option_error(
            "",
            format!("has {} entries; at most {STORE_OPTIONS_MAX}", options.len()),
        ));
    }
    for (key, value) in options {
        if key.len() > STORE_OPTION_BYTES_MAX || value.len() > STORE_OPTION_BYTES_MAX {
            return Err(option_error(
                key,
                format!("has a key or value longer than {STORE_OPTION_BYTES_MAX} bytes"),
            ));
        }
    }
    Ok(())
}

fn path_error(path: &str, problem: impl Into<String>) -> IdentityError {
    IdentityError {
        field: "path",
        value: path.to_owned(),
        problem: problem.into(),
    }
}

fn store_error(location: &str, problem: impl Into<String>) -> IdentityError {
    IdentityError {
        field: "store.location",
        value: location.to_owned(),
        problem: problem.into(),
    }
}

/// The kinds of store a table may live on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum StoreScheme {
    /// A local directory (`file:///abs/dir`).
    File,
    /// An S3 bucket and prefix (`s3://bucket/prefix`, also `s3a://`).
    S3,
    /// A process-wide in-memory store (`memory://name`): gone at exit, so
    /// only allowed when the operator says so.
    Memory,
}

/// A canonical store root: scheme, host (bucket, memory name), normalised
/// path, and for S3 the endpoint; plus the options needed to reach it.
#[derive(Debug, Clone)]
pub struct StoreRoot {
    scheme: StoreScheme,
    /// Canonical URL of the root (directory form: no trailing segment).
    url: Url,
    /// Decoded path segments below the host.
    segments: Vec<String>,
    /// The endpoint option, canonical, when one is given (S3).
    endpoint: Option<String>,
    options: BTreeMap<String, String>,
    canonical: String,
}

impl PartialEq for StoreRoot {
    fn eq(&self, other: &Self) -> bool {
        self.canonical == other.canonical
    }
}
impl Eq for StoreRoot {}

impl StoreRoot {
    /// Parses a store location and its options into canonical form, or says
    /// which rule it breaks: a supported scheme (`file`, `s3`/`s3a`,
    /// `memory`), no credentials, query or fragment in the URL; for `file`
    /// an absolute path (`file:/`, `file:///`, `file://localhost/`), no
    /// remote host; no segment that decodes to `.`, `..` or holds a `/`,
    /// `\` or control character; for S3 a valid bucket name.
    pub fn parse(
        location: &str,
        options: &HashMap<String, String>,
    ) -> Result<StoreRoot, IdentityError> {
        let bad = |problem: &str| store_error(location, problem);
        check_store_size(location, options)?;
        if location.chars().any(char::is_control) {
            return Err(bad("contains a control character"));
        }
        let url = Url::parse(location).map_err(|error| bad(&format!("is not a URL: {error}")))?;
        if !url.username().is_empty() || url.password().is_some() {
            return Err(bad(
                "carries credentials in the URL; pass them in store.options",
            ));
        }
        if url.query().is_some() || url.fragment().is_some() {
            return Err(bad("has a query or fragment; a store root has neither"));
        }
        let segments = decoded_segments(&url).map_err(|problem| bad(&problem))?;
        let options: BTreeMap<String, String> = options
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let (scheme, host, endpoint) = match url.scheme() {
            "file" => (
                StoreScheme::File,
                Self::file(location, &url, &options)?,
                None,
            ),
            "s3" | "s3a" => (
                StoreScheme::S3,
                Self::s3(location, &url)?,
                endpoint_of(&options)?,
            ),
            "memory" => (StoreScheme::Memory, Self::memory(location, &url)?, None),
            other => {
                return Err(bad(&format!(
                    "has scheme {other:?}; supported: file, s3 (s3a), memory"
                )))
            }
        };
        Ok(Self::build(scheme, host, segments, endpoint, options))
    }

    /// The rules of a `file:` root (it has no host).
    fn file(
        location: &str,
        url: &Url,
        options: &BTreeMap<String, String>,
    ) -> Result<Option<String>, IdentityError> {
        // `file:relative/x` parses as `file:///relative/x`: refuse what was
        // not written as an absolute path.
        let after_scheme = &location[location.find(':').map_or(0, |i| i + 1)..];
        if !after_scheme.starts_with('/') {
            return Err(store_error(
                location,
                "is a relative file URL; write file:///absolute/path",
            ));
        }
        match url.host_str() {
            None | Some("") | Some("localhost") => {}
            Some(host) => {
                return Err(store_error(
                    location,
                    format!("names host {host:?}; a file store is local: file:///absolute/path"),
                ))
            }
        }
        if url.port().is_some() {
            return Err(store_error(location, "has a port; a file store is local"));
        }
        if !options.is_empty() {
            return Err(IdentityError {
                field: "store.options",
                value: options.keys().cloned().collect::<Vec<_>>().join(","),
                problem: "are not used by a file store; send none".into(),
            });
        }
        Ok(None)
    }

    /// The rules of an `s3:` root; its host is the bucket.
    fn s3(location: &str, url: &Url) -> Result<Option<String>, IdentityError> {
        let bucket = url.host_str().unwrap_or_default();
        check_bucket_name(bucket).map_err(|problem| store_error(location, problem))?;
        if url.port().is_some() {
            return Err(store_error(
                location,
                "has a port; an S3 endpoint goes in store.options (aws_endpoint_url)",
            ));
        }
        Ok(Some(bucket.to_owned()))
    }

    /// The rules of a `memory:` root; its host is the store's name.
    fn memory(location: &str, url: &Url) -> Result<Option<String>, IdentityError> {
        let name = url.host_str().unwrap_or_default().to_ascii_lowercase();
        if name.is_empty() {
            return Err(store_error(
                location,
                "names no memory store: memory://name",
            ));
        }
        // `memory://faulty-*` is the fault-injecting store of the test
        // seams; a build without them knows no such store.
        if cfg!(not(feature = "test-seams")) && name.starts_with("faulty-") {
            return Err(store_error(
                location,
                "names the test suite's fault-injecting store, which this build does not have",
            ));
        }
        Ok(Some(name))
    }

    fn build(
        scheme: StoreScheme,
        host: Option<String>,
        segments: Vec<String>,
        endpoint: Option<String>,
        options: BTreeMap<String, String>,
    ) -> StoreRoot {
        let prefix = match scheme {
            StoreScheme::File => "file://".to_owned(),
            StoreScheme::S3 => format!("s3://{}", host.as_deref().unwrap_or_default()),
            StoreScheme::Memory => format!("memory://{}", host.as_deref().unwrap_or_default()),
        };
        let url = join_url(&format!("{prefix}/"), &segments);
        let mut canonical = format!("{prefix}/{}", segments.join("/"));
        if scheme != StoreScheme::File && segments.is_empty() {
            canonical.pop();
        }
        if let Some(endpoint) = &endpoint {
            canonical.push_str("?endpoint=");
            canonical.push_str(endpoint);
        }
        StoreRoot {
            scheme,
            url,
            segments,
            endpoint,
            options,
            canonical,
        }
    }

    /// A local directory as a file store root (the default store).
    pub fn local(dir: &Path) -> Result<StoreRoot, IdentityError> {
        let location = format!("file://{}", dir.display());
        let url = Url::from_directory_path(dir)
            .map_err(|()| store_error(&location, "is not an absolute local path"))?;
        Self::parse(url.as_str(), &HashMap::new())
    }

    /// The same store with its local path replaced (symlinks resolved at
    /// admission). Only meaningful for file stores.
    pub fn with_local_path(&self, path: &Path) -> StoreRoot {
        let segments = path
            .components()
            .filter_map(|c| match c {
                std::path::Component::Normal(s) => Some(s.to_string_lossy().into_owned()),
                _ => None,
            })
            .collect();
        Self::build(
            self.scheme,
            None,
            segments,
            self.endpoint.clone(),
            self.options.clone(),
        )
    }

    pub fn scheme(&self) -> StoreScheme {
        self.scheme
    }

    /// Canonical URL of the root, in directory form.
    pub fn url(&self) -> &Url {
        &self.url
    }

    pub fn options(&self) -> &BTreeMap<String, String> {
        &self.options
    }

    /// The canonical text: what two spellings of one store share.
    pub fn canonical(&self) -> &str {
        &self.canonical
    }

    /// The root directory of a file store.
    pub fn local_dir(&self) -> Option<PathBuf> {
        (self.scheme == StoreScheme::File).then(|| {
            let mut path = PathBuf::from("/");
            path.extend(&self.segments);
            path
        })
    }

    /// Whether `self` is `prefix` or lies under it, segment by segment (so
    /// `file:///lake` does not admit `file:///lake-other`); S3 endpoints must
    /// match too.
    pub fn is_under(&self, prefix: &StoreRoot) -> bool {
        self.scheme == prefix.scheme
            && self.url.host_str() == prefix.url.host_str()
            && self.endpoint == prefix.endpoint
            && self.segments.starts_with(&prefix.segments)
    }
}

impl fmt::Display for StoreRoot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.canonical)
    }
}

/// A validated table path relative to its store root.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TablePath {
    segments: Vec<String>,
}

impl TablePath {
    /// Checks a client's table path: relative, `/`-separated, one trailing
    /// `/` tolerated; at most [`TABLE_PATH_SEGMENTS_MAX`] segments and
    /// [`TABLE_PATH_BYTES_MAX`] bytes; each segment non-empty, at most
    /// [`SEGMENT_BYTES_MAX`] bytes, not starting with `.` (so never `.` or
    /// `..`), not `_delta_log`, and free of `\`, `%`, `:` and control
    /// characters. `%` is refused outright so that no layer can decode a
    /// segment into `..` or a separator.
    pub fn parse(path: &str) -> Result<TablePath, IdentityError> {
        let bad = |problem: &str| Err(path_error(path, problem));
        if path.is_empty() {
            return bad("is empty; name the table relative to the store root");
        }
        if path.len() > TABLE_PATH_BYTES_MAX {
            return bad(&format!("is longer than {TABLE_PATH_BYTES_MAX} bytes"));
        }
        if path.chars().any(char::is_control) {
            return bad("contains a control character (NUL, newline, ...)");
        }
        if path.starts_with('/') {
            return bad("is absolute; it must be relative to the store root");
        }
        for (character, what) in [('\\', "a backslash"), ('%', "a '%'"), (':', "a ':'")] {
            if path.contains(character) {
                return bad(&format!("contains {what}"));
            }
        }
        let trimmed = path.strip_suffix('/').unwrap_or(path);
        let segments: Vec<String> = trimmed.split('/').map(str::to_owned).collect();
        if segments.len() > TABLE_PATH_SEGMENTS_MAX {
            return bad(&format!("has more than {TABLE_PATH_SEGMENTS_MAX} segments"));
        }
        for segment in &segments {
            if segment.is_empty() {
                return bad("contains an empty segment ('//')");
            }
            if segment.starts_with('.') {
                return bad(&format!(
                    "has segment {segment:?}; segments must not start with '.'"
                ));
            }
            if segment.len() > SEGMENT_BYTES_MAX {
                return bad(&format!(
                    "has a segment of {} bytes; at most {SEGMENT_BYTES_MAX}",
                    segment.len()
                ));
            }
            if segment.eq_ignore_ascii_case("_delta_log") {
                return bad("has a _delta_log segment (a table cannot live in a Delta log)");
            }
        }
        Ok(TablePath { segments })
    }

    pub fn segments(&self) -> &[String] {
        &self.segments
    }
}

impl fmt::Display for TablePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.segments.join("/"))
    }
}

/// The identity of one physical table: a canonical store root plus a table
/// path. Cheap to clone; equality, hashing and order are by the canonical
/// text.
#[derive(Clone)]
pub struct TableId(Arc<TableIdInner>);

struct TableIdInner {
    store: StoreRoot,
    path: TablePath,
    url: Url,
    canonical: String,
}

impl TableId {
    /// The one constructor.
    pub fn new(store: StoreRoot, path: TablePath) -> TableId {
        let url = join_url(store.url.as_str(), &path.segments);
        let mut canonical = store.canonical.clone();
        let endpoint = canonical
            .find("?endpoint=")
            .map(|at| canonical.split_off(at));
        if !canonical.ends_with('/') {
            canonical.push('/');
        }
        canonical.push_str(&path.to_string());
        if let Some(endpoint) = endpoint {
            canonical.push_str(&endpoint);
        }
        TableId(Arc::new(TableIdInner {
            store,
            path,
            url,
            canonical,
        }))
    }

    /// A table id from a store URL, its options and a table path, by the
    /// same rules as a command's (for tools and tests; the node itself goes
    /// through `admission::Admission::table_id`, which also resolves links).
    pub fn parse(
        store: &str,
        options: &HashMap<String, String>,
        path: &str,
    ) -> Result<TableId, IdentityError> {
        Ok(TableId::new(
            StoreRoot::parse(store, options)?,
            TablePath::parse(path)?,
        ))
    }

    pub fn store(&self) -> &StoreRoot {
        &self.0.store
    }

    pub fn path(&self) -> &TablePath {
        &self.0.path
    }

    /// The table's URL for the object store (segments percent-encoded once).
    pub fn url(&self) -> &Url {
        &self.0.url
    }

    pub fn options(&self) -> &BTreeMap<String, String> {
        &self.0.store.options
    }

    /// The canonical text (checkpoint frames and logs use it).
    pub fn canonical(&self) -> &str {
        &self.0.canonical
    }

    /// The table directory of a file store.
    pub fn local_dir(&self) -> Option<PathBuf> {
        let mut dir = self.0.store.local_dir()?;
        dir.extend(&self.0.path.segments);
        Some(dir)
    }

    /// A short stable tag of the identity (64-bit FNV-1a of the canonical
    /// text, hex): it names this table in its exactly-once marker, so a
    /// marker written for one `TableId` never counts for another, even if two
    /// ids ever reach one physical table.
    pub fn marker_tag(&self) -> String {
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        for byte in self.0.canonical.as_bytes() {
            hash ^= u64::from(*byte);
            hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        }
        format!("{hash:016x}")
    }
}

impl PartialEq for TableId {
    fn eq(&self, other: &Self) -> bool {
        self.0.canonical == other.0.canonical
    }
}
impl Eq for TableId {}

impl std::hash::Hash for TableId {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.0.canonical.hash(state);
    }
}

impl PartialOrd for TableId {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for TableId {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.canonical.cmp(&other.0.canonical)
    }
}

impl fmt::Display for TableId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0.canonical)
    }
}

impl fmt::Debug for TableId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TableId({})", self.0.canonical)
    }
}

/// The identity of a data source: the command's opaque `origin` string.
/// Cheap to clone.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Origin(Arc<str>);

impl Origin {
    pub fn new(name: &str) -> Origin {
        Origin(Arc::from(name))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Origin({:?})", &*self.0)
    }
}

/// `base` (a URL ending in `/`) with `segments` appended, each percent-
/// encoded once by the `url` crate.
fn join_url(base: &str, segments: &[String]) -> Url {
    let mut url = Url::parse(base).expect("store roots are built from valid URL prefixes");
    if let Ok(mut path) = url.path_segments_mut() {
        path.pop_if_empty();
        for segment in segments {
            path.push(segment);
        }
        if segments.is_empty() {
            path.push("");
        }
    }
    url
}

/// The URL's path segments, percent-decoded, empty ones dropped (trailing
/// and doubled slashes); a segment that decodes to `.`, `..` or holds a
/// separator or control character is refused (the URL parser already
/// resolved literal and `%2e` dot segments).
fn decoded_segments(url: &Url) -> Result<Vec<String>, String> {
    let Some(raw) = url.path_segments() else {
        return Ok(Vec::new());
    };
    let mut segments = Vec::new();
    for part in raw.filter(|s| !s.is_empty()) {
        let decoded = percent_decode(part).ok_or_else(|| {
            format!("has path segment {part:?} that is not valid percent-encoded UTF-8")
        })?;
        if decoded == "." || decoded == ".." {
            return Err(format!("has a {decoded:?} path segment"));
        }
        if decoded.contains(['/', '\\']) || decoded.chars().any(char::is_control) {
            return Err(format!(
                "has path segment {part:?} that decodes to a separator or control character"
            ));
        }
        segments.push(decoded);
    }
    Ok(segments)
}

fn percent_decode(part: &str) -> Option<String> {
    let bytes = part.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        if bytes[index] == b'%' {
            let hex = part.get(index + 1..index + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            index += 3;
        } else {
            out.push(bytes[index]);
            index += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// S3 bucket naming rules: 3 to 63 characters of lowercase letters, digits,
/// `.` and `-`, starting and ending with a letter or digit.
fn check_bucket_name(bucket: &str) -> Result<(), String> {
    let valid_char = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '.' || c == '-';
    let edge = |c: Option<char>| c.is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    if (3..=63).contains(&bucket.len())
        && bucket.chars().all(valid_char)
        && edge(bucket.chars().next())
        && edge(bucket.chars().last())
    {
        Ok(())
    } else {
        Err(format!(
            "has bucket {bucket:?}; an S3 bucket name is 3-63 lowercase letters, digits, '.' or '-'"
        ))
    }
}

/// The canonical endpoint of an S3 store's options, if one is given.
fn endpoint_of(options: &BTreeMap<String, String>) -> Result<Option<String>, IdentityError> {
    let Some((key, value)) = options
        .iter()
        .find(|(key, _)| ENDPOINT_KEYS.iter().any(|k| k.eq_ignore_ascii_case(key)))
    else {
        return Ok(None);
    };
    let bad = |problem: &str| IdentityError {
        field: "store.options",
        value: format!("{key}={value}"),
        problem: problem.to_owned(),
    };
    let url = Url::parse(value).map_err(|error| bad(&format!("is not a URL: {error}")))?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err(bad("must be an http(s) URL with a host"));
    }
    let mut canonical = format!(
        "{}://{}",
        url.scheme(),
        url.host_str().unwrap_or_default().to_ascii_lowercase()
    );
    if let Some(port) = url.port() {
        canonical.push_str(&format!(":{port}"));
    }
    let path = url.path().trim_end_matches('/');
    canonical.push_str(path);
    Ok(Some(canonical))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn store(location: &str) -> Result<StoreRoot, IdentityError> {
        StoreRoot::parse(location, &HashMap::new())
    }

    fn table(location: &str, path: &str) -> TableId {
        TableId::new(store(location).unwrap(), TablePath::parse(path).unwrap())
    }

    #[test]
    fn spellings_of_one_local_store_are_one_table() {
        let canonical = table("file:///data/lake", "t");
        for spelling in [
            "file:///data/lake/",
            "file://localhost/data/lake",
            "FILE:///data/lake",
            "file:/data/lake",
            "file:///data/./lake//",
            "file:///data/x/../lake",
            "file:///data/%2e/lake",
            "file://LOCALHOST/data/lake/",
        ] {
            let id = table(spelling, "t");
            assert_eq!(id, canonical, "{spelling}");
            assert_eq!(id.canonical(), "file:///data/lake/t");
            assert_eq!(id.marker_tag(), canonical.marker_tag());
        }
        assert_eq!(table("file:///data/lake", "t/"), canonical);
        assert_ne!(table("file:///data/lake-other", "t"), canonical);
    }

    #[test]
    fn s3_identity_includes_the_endpoint_and_drops_trailing_slashes() {
        let plain = table("s3://bucket/prefix/", "t");
        assert_eq!(plain.canonical(), "s3://bucket/prefix/t");
        assert_eq!(table("s3a://bucket/prefix", "t"), plain);
        let options = HashMap::from([(
            "aws_endpoint_url".to_string(),
            "http://127.0.0.1:5000/".to_string(),
        )]);
        let local = TableId::new(
            StoreRoot::parse("s3://bucket/prefix", &options).unwrap(),
            TablePath::parse("t").unwrap(),
        );
        assert_ne!(local, plain);
        assert_eq!(
            local.canonical(),
            "s3://bucket/prefix/t?endpoint=http://127.0.0.1:5000"
        );
        assert_eq!(local.url().as_str(), "s3://bucket/prefix/t");
    }

    #[test]
    fn store_locations_that_name_no_local_absolute_directory_are_refused() {
        for (location, problem) in [
            ("file:relrel/x", "relative"),
            ("file://relative/x", "host"),
            ("file://otherhost/x", "host"),
            ("file:///a/%2e%2e%2fx", "separator"),
            ("file:///a/b%2Fc", "separator"),
            ("file:///a/b%5cc", "separator"),
            ("file:///a/b%00c", "separator"),
            ("file:///a?x=1", "query"),
            ("s3://user:pw@bucket/a", "credentials"),
            ("http://example.com/x", "scheme"),
            ("gs://bucket/x", "scheme"),
            ("s3://Bucket/x", "bucket"),
            ("s3://b/x", "bucket"),
            ("s3://bucket:9000/x", "port"),
            ("memory:///x", "memory"),
            ("not a url", "not a URL"),
        ] {
            let error = store(location).expect_err(location);
            assert_eq!(error.field, "store.location", "{location}");
            assert!(error.problem.contains(problem), "{location}: {error}");
        }
    }

    #[test]
    fn table_paths_are_relative_plain_segments() {
        for (path, problem) in [
            ("", "empty"),
            ("/abs", "absolute"),
            ("a//b", "empty segment"),
            ("a/../b", "'.'"),
            ("./a", "'.'"),
            (".hidden", "'.'"),
            ("%2e%2e/%2e%2e/victim", "'%'"),
            ("ok/%2e%2e%2fx", "'%'"),
            ("a\\b", "backslash"),
            ("s3://x", "':'"),
            ("a\0b", "control"),
            ("a\nb", "control"),
            ("t/_delta_log/x", "_delta_log"),
            ("t/_DELTA_LOG", "_delta_log"),
        ] {
            let error = TablePath::parse(path).expect_err(path);
            assert_eq!(error.field, "path");
            assert!(error.problem.contains(problem), "{path:?}: {error}");
        }
        let long = "x".repeat(300);
        assert!(TablePath::parse(&long)
            .unwrap_err()
            .problem
            .contains("300 bytes"));
        let deep = vec!["d"; 40].join("/");
        assert!(TablePath::parse(&deep).is_err());
        assert_eq!(
            TablePath::parse("sales/order items/2024")
                .unwrap()
                .to_string(),
            "sales/order items/2024"
        );
    }

    #[test]
    fn table_urls_encode_each_segment_once_and_stay_under_the_root() {
        let id = table("file:///data/my%20lake", "a b/c#d?e");
        assert_eq!(id.url().as_str(), "file:///data/my%20lake/a%20b/c%23d%3Fe");
        assert_eq!(
            id.local_dir().unwrap(),
            PathBuf::from("/data/my lake/a b/c#d?e")
        );
        assert_eq!(id.url().to_file_path().unwrap(), id.local_dir().unwrap());
    }

    #[test]
    fn is_under_compares_whole_segments() {
        let root = store("file:///lake").unwrap();
        assert!(store("file:///lake/x").unwrap().is_under(&root));
        assert!(store("file:///lake/").unwrap().is_under(&root));
        assert!(!store("file:///lake-other").unwrap().is_under(&root));
        assert!(!store("s3://lake/x").unwrap().is_under(&root));
    }
}
