//! A test seam: an [`ObjectStore`] wrapper that injects faults, so tests can
//! show what a flush does when the table store misbehaves.
//!
//! [`FaultyStore`] forwards every call to the store it wraps, after
//! consulting a shared [`FaultPlan`] that a test steers while the node runs:
//! fail the next N operations of a kind (optionally only on paths containing
//! a substring) with a retryable `object_store::Error::Generic`, answer them
//! with a timeout after a short wait, slow every operation of a kind down, or
//! perform a Delta commit (the conditional put of `_delta_log/<version>.json`)
//! and then report it as failed, as when the response of a successful request
//! is lost. The plan counts the operations per kind and the faults it
//! injected.
//!
//! Reached without touching production paths: a `memory://` store root whose
//! authority starts with [`FAULTY_AUTHORITY_PREFIX`] (`memory://faulty-1/`)
//! gets its process-wide in-memory store wrapped in a `FaultyStore`, steered by
//! [`fault_plan`]`("faulty-1")`. With an empty plan the wrapper only counts.
//! Every other store is untouched.

use std::collections::HashMap;
use std::fmt;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use futures::stream::{self, BoxStream, StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    ObjectStoreExt, PutMode, PutMultipartOptions, PutOptions, PutPayload, PutResult,
};

/// `memory://` authorities with this prefix are wrapped in a [`FaultyStore`].
pub const FAULTY_AUTHORITY_PREFIX: &str = "faulty-";

/// The `store` name in the errors this wrapper injects.
const STORE_NAME: &str = "FaultyStore";

/// The kinds of object store operation a [`FaultPlan`] tells apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Operation {
    /// `put_opts` and `put_multipart_opts` (data files and Delta commits).
    Put,
    /// `get_opts` without `head`, and `get_ranges`.
    Get,
    /// `get_opts` with `head` (what `ObjectStoreExt::head` sends).
    Head,
    /// `list`, `list_with_offset`, `list_with_delimiter`.
    List,
    /// Each path of `delete_stream`.
    Delete,
    /// `copy_opts` (and renames, which copy then delete).
    Copy,
}

impl Operation {
    const ALL: [Operation; 6] = [
        Operation::Put,
        Operation::Get,
        Operation::Head,
        Operation::List,
        Operation::Delete,
        Operation::Copy,
    ];

    fn slot(self) -> usize {
        self as usize
    }
}

/// How many matching operations a fault applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Times {
    /// The next `n` matching operations, then the fault is spent.
    Next(u64),
    /// Every matching operation until [`FaultPlan::clear`].
    Always,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Effect {
    /// Return an error without calling the wrapped store.
    Fail,
    /// Wait, then return a timeout error without calling the wrapped store.
    TimeOut(Duration),
    /// Call the wrapped store (a Delta commit only), then return an error.
    LoseResponse,
}

#[derive(Debug, Clone)]
struct Rule {
    operation: Operation,
    effect: Effect,
    path_contains: Option<String>,
    times: Times,
}

impl Rule {
    fn matches(&self, operation: Operation, path: &str, is_commit: bool) -> bool {
        self.operation == operation
            && (self.effect != Effect::LoseResponse || is_commit)
            && self
                .path_contains
                .as_deref()
                .is_none_or(|part| path.contains(part))
            && self.times != Times::Next(0)
    }
}

/// What to do with one operation, decided before it reaches the store.
enum Decision {
    Proceed,
    Fail(object_store::Error),
    LoseResponse,
}

/// The faults a [`FaultyStore`] injects, shared with the test that steers it.
/// Rules are checked in the order they were added; the first match applies.
#[derive(Debug, Default)]
pub struct FaultPlan {
    rules: Mutex<Vec<Rule>>,
    delays: Mutex<HashMap<Operation, Duration>>,
    operations: [AtomicU64; 6],
    injected: [AtomicU64; 6],
    lost_responses: AtomicU64,
}

impl FaultPlan {
    /// Fails matching operations of `operation` with a retryable
    /// `Error::Generic` (an I/O "connection reset" inside).
    pub fn fail(&self, operation: Operation, times: Times) {
        self.add(operation, Effect::Fail, None, times);
    }

    /// Like [`FaultPlan::fail`], only for paths containing `path_contains`
    /// (`".parquet"`, `"_delta_log/"`).
    pub fn fail_matching(&self, operation: Operation, path_contains: &str, times: Times) {
        self.add(
            operation,
            Effect::Fail,
            Some(path_contains.to_owned()),
            times,
        );
    }

    /// Answers matching operations with a timeout: waits `after` (keep it
    /// short), then returns a retryable `Error::Generic` holding an I/O
    /// `TimedOut` error. The wrapped store is not called.
    pub fn time_out(&self, operation: Operation, after: Duration, times: Times) {
        self.add(operation, Effect::TimeOut(after), None, times);
    }

    /// A lost response: the next Delta commits (conditional creates of
    /// `_delta_log/*.json`, the table's creation included) are performed on
    /// the wrapped store, then reported to the caller as timed out.
    pub fn lose_commit_responses(&self, times: Times) {
        self.add(Operation::Put, Effect::LoseResponse, None, times);
    }

    /// Slows every operation of `operation` down by `delay` (a slow store,
    /// not an error); `Duration::ZERO` removes the delay.
    pub fn delay(&self, operation: Operation, delay: Duration) {
        lock(&self.delays).insert(operation, delay);
    }

    /// Removes every fault and delay; counters are kept.
    pub fn clear(&self) {
        lock(&self.rules).clear();
        lock(&self.delays).clear();
    }

    /// Operations of this kind that reached the wrapper, faulted or not.
    pub fn operations(&self, operation: Operation) -> u64 {
        self.operations[operation.slot()].load(Ordering::SeqCst)
    }

    /// Operations of this kind answered with an injected error (lost
    /// responses included).
    pub fn injected(&self, operation: Operation) -> u64 {
        self.injected[operation.slot()].load(Ordering::SeqCst)
    }

    /// Commits that landed but were reported as failed.
    pub fn lost_responses(&self) -> u64 {
        self.lost_responses.load(Ordering::SeqCst)
    }

    /// A one-line summary of the counters, for assertion messages.
    pub fn summary(&self) -> String {
        Operation::ALL
            .iter()
            .map(|op| {
                format!(
                    "{op:?}: {} ops, {} injected",
                    self.operations(*op),
                    self.injected(*op)
                )
            })
            .chain([format!("lost responses: {}", self.lost_responses())])
            .collect::<Vec<_>>()
            .join("; ")
    }

    fn add(
        &self,
        operation: Operation,
        effect: Effect,
        path_contains: Option<String>,
        times: Times,
    ) {
        lock(&self.rules).push(Rule {
            operation,
            effect,
            path_contains,
            times,
        });
    }

    /// Counts the operation, applies the delay, and decides its fate.
    async fn before(&self, operation: Operation, path: &Path, is_commit: bool) -> Decision {
        self.operations[operation.slot()].fetch_add(1, Ordering::SeqCst);
        let delay = lock(&self.delays).get(&operation).copied();
        if let Some(delay) = delay.filter(|d| !d.is_zero()) {
            tokio::time::sleep(delay).await;
        }
        let effect = {
            let mut rules = lock(&self.rules);
            let rule = rules
                .iter_mut()
                .find(|rule| rule.matches(operation, path.as_ref(), is_commit));
            rule.map(|rule| {
                if let Times::Next(n) = &mut rule.times {
                    *n -= 1;
                }
                rule.effect
            })
        };
        let Some(effect) = effect else {
            return Decision::Proceed;
        };
        self.injected[operation.slot()].fetch_add(1, Ordering::SeqCst);
        match effect {
            Effect::Fail => Decision::Fail(injected(
                std::io::ErrorKind::ConnectionReset,
                format!("injected {operation:?} failure on {path}"),
            )),
            Effect::TimeOut(after) => {
                tokio::time::sleep(after).await;
                Decision::Fail(injected(
                    std::io::ErrorKind::TimedOut,
                    format!("injected {operation:?} timeout on {path}"),
                ))
            }
            Effect::LoseResponse => Decision::LoseResponse,
        }
    }

    async fn check(&self, operation: Operation, path: &Path) -> object_store::Result<()> {
        match self.before(operation, path, false).await {
            Decision::Proceed | Decision::LoseResponse => Ok(()),
            Decision::Fail(error) => Err(error),
        }
    }
}

fn injected(kind: std::io::ErrorKind, message: String) -> object_store::Error {
    object_store::Error::Generic {
        store: STORE_NAME,
        source: Box::new(std::io::Error::new(kind, message)),
    }
}

// A poisoned plan is still a valid plan: nothing panics while holding it.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The plan of the faulty `memory://` store named `authority` (created empty
/// on first use, shared by every later call; lives until the process exits).
pub fn fault_plan(authority: &str) -> Arc<FaultPlan> {
    static PLANS: OnceLock<Mutex<HashMap<String, Arc<FaultPlan>>>> = OnceLock::new();
    lock(PLANS.get_or_init(Default::default))
        .entry(authority.to_owned())
        .or_default()
        .clone()
}

/// `store` wrapped in a [`FaultyStore`] steered by [`fault_plan`]`(authority)`
/// when the authority names a faulty store; `store` itself otherwise.
pub(crate) fn wrap_memory_root(
    authority: &str,
    store: Arc<dyn ObjectStore>,
) -> Arc<dyn ObjectStore> {
    if authority.starts_with(FAULTY_AUTHORITY_PREFIX) {
        Arc::new(FaultyStore::new(store, fault_plan(authority)))
    } else {
        store
    }
}

/// Forwards to `inner` after applying `plan` (see the module doc).
#[derive(Debug, Clone)]
pub struct FaultyStore {
    inner: Arc<dyn ObjectStore>,
    plan: Arc<FaultPlan>,
}

impl FaultyStore {
    pub fn new(inner: Arc<dyn ObjectStore>, plan: Arc<FaultPlan>) -> Self {
        FaultyStore { inner, plan }
    }
}

impl fmt::Display for FaultyStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FaultyStore({})", self.inner)
    }
}

/// A Delta commit: the conditional create of a log entry.
fn is_commit(location: &Path, opts: &PutOptions) -> bool {
    let path: &str = location.as_ref();
    matches!(opts.mode, PutMode::Create) && path.contains("_delta_log/") && path.ends_with(".json")
}

#[async_trait::async_trait]
impl ObjectStore for FaultyStore {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        let commit = is_commit(location, &opts);
        match self.plan.before(Operation::Put, location, commit).await {
            Decision::Proceed => self.inner.put_opts(location, payload, opts).await,
            Decision::Fail(error) => Err(error),
            Decision::LoseResponse => {
                self.inner.put_opts(location, payload, opts).await?;
                self.plan.lost_responses.fetch_add(1, Ordering::SeqCst);
                Err(injected(
                    std::io::ErrorKind::TimedOut,
                    format!("injected lost response: commit {location} landed"),
                ))
            }
        }
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        self.plan.check(Operation::Put, location).await?;
        self.inner.put_multipart_opts(location, opts).await
    }

    async fn get_opts(
        &self,
        location: &Path,
        options: GetOptions,
    ) -> object_store::Result<GetResult> {
        let operation = if options.head {
            Operation::Head
        } else {
            Operation::Get
        };
        self.plan.check(operation, location).await?;
        self.inner.get_opts(location, options).await
    }

    async fn get_ranges(
        &self,
        location: &Path,
        ranges: &[Range<u64>],
    ) -> object_store::Result<Vec<Bytes>> {
        self.plan.check(Operation::Get, location).await?;
        self.inner.get_ranges(location, ranges).await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, object_store::Result<Path>>,
    ) -> BoxStream<'static, object_store::Result<Path>> {
        let inner = self.inner.clone();
        let plan = self.plan.clone();
        locations
            .and_then(move |location| {
                let inner = inner.clone();
                let plan = plan.clone();
                async move {
                    plan.check(Operation::Delete, &location).await?;
                    inner.delete(&location).await?;
                    Ok(location)
                }
            })
            .boxed()
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        let inner = self.inner.clone();
        let prefix = prefix.cloned();
        self.checked_list(prefix.clone(), move || inner.list(prefix.as_ref()))
    }

    fn list_with_offset(
        &self,
        prefix: Option<&Path>,
        offset: &Path,
    ) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        let inner = self.inner.clone();
        let prefix = prefix.cloned();
        let offset = offset.clone();
        self.checked_list(prefix.clone(), move || {
            inner.list_with_offset(prefix.as_ref(), &offset)
        })
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> object_store::Result<ListResult> {
        self.plan
            .check(Operation::List, &prefix.cloned().unwrap_or_default())
            .await?;
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(
        &self,
        from: &Path,
        to: &Path,
        options: CopyOptions,
    ) -> object_store::Result<()> {
        self.plan.check(Operation::Copy, from).await?;
        self.inner.copy_opts(from, to, options).await
    }
}

impl FaultyStore {
    /// A listing that consults the plan once, when first polled.
    fn checked_list(
        &self,
        prefix: Option<Path>,
        list: impl FnOnce() -> BoxStream<'static, object_store::Result<ObjectMeta>> + Send + 'static,
    ) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        let plan = self.plan.clone();
        stream::once(async move {
            match plan
                .check(Operation::List, &prefix.unwrap_or_default())
                .await
            {
                Ok(()) => list(),
                Err(error) => stream::once(async move { Err(error) }).boxed(),
            }
        })
        .flatten()
        .boxed()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use object_store::memory::InMemory;

    fn store() -> (FaultyStore, Arc<FaultPlan>) {
        let plan = Arc::new(FaultPlan::default());
        (
            FaultyStore::new(Arc::new(InMemory::new()), plan.clone()),
            plan,
        )
    }

    fn create() -> PutOptions {
        PutOptions {
            mode: PutMode::Create,
            ..PutOptions::default()
        }
    }

    #[tokio::test]
    async fn the_next_n_operations_fail_then_the_store_answers_again() {
        let (store, plan) = store();
        let path = Path::from("t/a.parquet");
        plan.fail(Operation::Put, Times::Next(2));
        for _ in 0..2 {
            let error = store.put(&path, "x".into()).await.unwrap_err();
            assert!(matches!(error, object_store::Error::Generic { .. }));
        }
        store.put(&path, "x".into()).await.unwrap();
        assert_eq!(plan.operations(Operation::Put), 3);
        assert_eq!(plan.injected(Operation::Put), 2);
        assert_eq!(store.get(&path).await.unwrap().bytes().await.unwrap(), "x");
        assert_eq!(plan.operations(Operation::Get), 1);
    }

    #[tokio::test]
    async fn a_path_filter_spares_other_paths_and_clear_removes_every_fault() {
        let (store, plan) = store();
        store
            .put(&Path::from("t/a.parquet"), "x".into())
            .await
            .unwrap();
        store
            .put(&Path::from("t/b.json"), "y".into())
            .await
            .unwrap();
        plan.fail_matching(Operation::Get, ".parquet", Times::Always);
        store.get(&Path::from("t/b.json")).await.unwrap();
        assert!(store.get(&Path::from("t/a.parquet")).await.is_err());
        assert!(store.head(&Path::from("t/a.parquet")).await.is_ok());
        plan.fail(Operation::List, Times::Next(1));
        let listed: Vec<_> = store.list(None).collect().await;
        assert!(listed.len() == 1 && listed[0].is_err());
        plan.clear();
        store.get(&Path::from("t/a.parquet")).await.unwrap();
        assert_eq!(
            store
                .list(None)
                .try_collect::<Vec<_>>()
                .await
                .unwrap()
                .len(),
            2
        );
    }

    #[tokio::test]
    async fn a_lost_commit_response_lands_the_commit_and_reports_an_error() {
        let (store, plan) = store();
        plan.lose_commit_responses(Times::Next(1));
        let data = Path::from("t/part-0.parquet");
        store.put_opts(&data, "d".into(), create()).await.unwrap();
        let commit = Path::from("t/_delta_log/00000000000000000001.json");
        assert!(store.put_opts(&commit, "c".into(), create()).await.is_err());
        assert_eq!(plan.lost_responses(), 1);
        assert_eq!(
            store.get(&commit).await.unwrap().bytes().await.unwrap(),
            "c"
        );
        // A retry of the same commit meets the one that landed.
        let again = store.put_opts(&commit, "c".into(), create()).await;
        assert!(matches!(
            again,
            Err(object_store::Error::AlreadyExists { .. })
        ));
    }

    #[tokio::test]
    async fn only_faulty_authorities_are_wrapped() {
        let inner: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        let plain = wrap_memory_root("plain", inner.clone());
        assert!(Arc::ptr_eq(&plain, &inner));
        let wrapped = wrap_memory_root("faulty-unit", inner);
        wrapped.put(&Path::from("x"), "x".into()).await.unwrap();
        assert_eq!(fault_plan("faulty-unit").operations(Operation::Put), 1);
    }
}
