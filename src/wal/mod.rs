//! The write-ahead log: durability for every accepted sync. Frames are
//! appended to segment files by a group-commit writer and acknowledged only
//! after the fdatasync that covers them; recovery verifies every frame and
//! tells a torn tail from corruption; segments behind the flushed state are
//! deleted (or recycled) by [`Wal::truncate_below`]. The format is in
//! `wal-format.md` and `format.rs`.

pub mod dump;
pub mod format;
pub mod recovery;
pub mod segment;
pub mod storage;
mod writer;

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::{mpsc, oneshot, watch};

use crate::wal::format::{decode_frame, FrameHeader, FrameKind, SegmentHeader, SEGMENT_HEADER_LEN};
use crate::wal::recovery::{RecoveredFrame, Scan, SegmentSummary, TornTail};
use crate::wal::segment::{create_segment, recycle_file_name, segment_file_name, SegmentInit};
use crate::wal::storage::{FileBytes, FsStorage, Storage};

/// Log sequence number: strictly increasing, one per frame, for the life of
/// the WAL (it continues across restarts and truncation). 0 means "none".
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, serde::Serialize)]
pub struct Lsn(pub u64);

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
pub struct SegmentId(pub u64);

/// The random 128-bit identity of a WAL, fixed when it is created.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct WalId(pub u128);

impl fmt::Display for WalId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

impl WalId {
    fn random() -> Result<WalId, WalError> {
        let mut bytes = [0u8; 16];
        getrandom::fill(&mut bytes).map_err(|error| WalError::Io {
            context: "draw a random WAL identity",
            source: std::io::Error::other(error.to_string()),
        })?;
        Ok(WalId(u128::from_le_bytes(bytes)))
    }
}

/// A data frame as the put that wrote it knows it: where it is, and its
/// size in rows and bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameInfo {
    pub lsn: Lsn,
    pub pointer: WalPointer,
    pub rows: u64,
    /// Frame bytes on disk.
    pub bytes: u64,
}

/// Where a frame lives: enough to read it back without any other state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
pub struct WalPointer {
    pub segment: SegmentId,
    pub offset: u64,
    /// Whole frame, header included.
    pub len: u32,
}

/// A frame made durable by [`Wal::append`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    pub lsn: Lsn,
    pub pointer: WalPointer,
}

/// Every knob of the WAL, with units.
#[derive(Debug, Clone)]
pub struct WalConfig {
    /// A segment is sealed and the next one started when a frame would take
    /// it past this size. A single larger frame gets a segment of its own.
    pub segment_bytes_target: u64,
    /// Largest payload accepted by `append`; larger ones are refused.
    pub frame_bytes_max: u64,
    pub segment_init: SegmentInit,
    /// How many truncated segment files are kept for re-use.
    pub recycle_pool_max: usize,
    /// Keep one zero-filled spare segment ready (ZeroFill and Recycle), made
    /// in the background, so a roll does not zero-fill on the writer thread.
    /// Off by default: measured here it halves the worst append (the roll)
    /// but its background writes quadruple p99 (BENCHMARKS.md, "Segment
    /// rolls").
    pub prepare_spare: bool,
    /// Appends queued for the writer before `append` waits (back-pressure).
    pub queue_depth: usize,
    /// The writer stops draining the queue into one batch past this many
    /// payload bytes (bounds the write buffer).
    pub batch_bytes_max: u64,
}

impl Default for WalConfig {
    fn default() -> Self {
        WalConfig {
            segment_bytes_target: 64 << 20,
            frame_bytes_max: 64 << 20,
            segment_init: SegmentInit::Recycle,
            recycle_pool_max: 4,
            prepare_spare: false,
            queue_depth: 4096,
            batch_bytes_max: 16 << 20,
        }
    }
}

/// Everything that can go wrong in the WAL.
#[derive(Debug, thiserror::Error)]
pub enum WalError {
    #[error("WAL I/O failed ({context}): {source}")]
    Io {
        context: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("WAL corrupted in segment {} at byte offset {offset}: {reason}; inspect with `flightlog wal dump`", segment_file_name(*segment))]
    Corrupted {
        segment: SegmentId,
        offset: u64,
        reason: String,
    },
    #[error("segment {} has format version {version}, which this build cannot read (upgrade flightlog)", segment_file_name(*segment))]
    UnsupportedVersion { segment: SegmentId, version: u32 },
    #[error("WAL segment missing: {} is followed by {}", segment_file_name(*after), segment_file_name(*found))]
    MissingSegment { after: SegmentId, found: SegmentId },
    #[error("frame payload of {len} bytes exceeds the limit of {max} bytes")]
    FrameTooLarge { len: u64, max: u64 },
    /// The WAL failed stop; `cause` is the write or sync error that did it,
    /// shared by every waiter that gets this answer.
    #[error("the WAL has failed and acknowledges nothing more until restart: {cause}")]
    Failed {
        #[source]
        cause: Arc<WalError>,
    },
    #[error(
        "the WAL disk is full; nothing of this write was kept, retry when space returns: {cause}"
    )]
    NoSpace {
        #[source]
        cause: Arc<WalError>,
    },
    #[error("the WAL is closed")]
    Closed,
    #[error("WAL directory {dir} is locked by another process")]
    Locked { dir: PathBuf },
}

impl WalError {
    /// True for a full disk or exhausted quota (ENOSPC, EDQUOT).
    pub fn is_no_space(&self) -> bool {
        matches!(self, WalError::Io { source, .. }
            if matches!(source.raw_os_error(), Some(code) if code == libc::ENOSPC || code == libc::EDQUOT))
    }

    fn io(context: &'static str) -> impl FnOnce(std::io::Error) -> WalError {
        move |source| WalError::Io { context, source }
    }
}

/// Counters for the metrics endpoint and benchmarks.
#[derive(Debug, Default)]
pub struct WalMetrics {
    pub frames_appended: AtomicU64,
    pub bytes_written: AtomicU64,
    pub syncs: AtomicU64,
    pub batches: AtomicU64,
    pub segments_created: AtomicU64,
    pub segments_removed: AtomicU64,
    pub segments_recycled: AtomicU64,
    /// Duration of each fdatasync of the active segment.
    pub fsync_seconds: crate::ops::latency::Latency,
}

impl WalMetrics {
    fn record_batch(&self, frames: usize) {
        self.batches.fetch_add(1, Ordering::Relaxed);
        self.frames_appended
            .fetch_add(frames as u64, Ordering::Relaxed);
    }
    fn record_write(&self, bytes: usize) {
        self.bytes_written
            .fetch_add(bytes as u64, Ordering::Relaxed);
    }
    fn record_sync(&self) {
        self.syncs.fetch_add(1, Ordering::Relaxed);
    }
}

#[derive(Debug, Clone, Copy)]
struct SegmentState {
    first_lsn: Lsn,
    /// Last durable frame, None while the segment has none.
    last_lsn: Option<Lsn>,
    /// End of the durable frames.
    end_offset: u64,
}

#[derive(Default)]
struct State {
    segments: BTreeMap<SegmentId, SegmentState>,
    active: Option<SegmentId>,
    recyclable: Vec<String>,
    maps: HashMap<SegmentId, FileBytes>,
    failed: Option<Arc<WalError>>,
}

/// State shared by the writer thread and the handles.
pub(crate) struct Shared {
    config: WalConfig,
    storage: Arc<dyn Storage>,
    wal_id: WalId,
    state: Mutex<State>,
    durable: watch::Sender<Lsn>,
    pub(crate) metrics: WalMetrics,
    /// A spare segment is being prepared (at most one at a time).
    preparing: std::sync::atomic::AtomicBool,
    /// The thread preparing it, joined by `close`.
    spare_thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    /// Numbers spare files (unique within this directory: seeded at open).
    spares: AtomicU64,
    /// Held for the life of the WAL: one process per directory.
    _lock: Option<std::fs::File>,
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        // The state is only mutated by short, non-panicking sections.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn set_failed(&self, cause: &Arc<WalError>) {
        self.state().failed = Some(cause.clone());
    }

    fn segment_synced(&self, id: SegmentId, durable: Lsn, end_offset: u64) {
        {
            let mut state = self.state();
            if let Some(segment) = state.segments.get_mut(&id) {
                if durable >= segment.first_lsn {
                    segment.last_lsn = Some(durable);
                }
                segment.end_offset = end_offset;
            }
        }
        self.durable.send_replace(durable);
    }

    fn segment_created(&self, id: SegmentId, first_lsn: Lsn) {
        let mut state = self.state();
        state.segments.insert(
            id,
            SegmentState {
                first_lsn,
                last_lsn: None,
                end_offset: SEGMENT_HEADER_LEN as u64,
            },
        );
        state.active = Some(id);
        self.metrics
            .segments_created
            .fetch_add(1, Ordering::Relaxed);
    }

    fn take_recyclable(&self) -> Option<String> {
        self.state().recyclable.pop()
    }

    /// Keeps one zero-filled spare in the pool (ZeroFill and Recycle), made
    /// by a background thread, so that a segment roll renames a ready file
    /// instead of writing a whole segment of zeros on the writer thread.
    fn prepare_spare(shared: &Arc<Shared>) {
        if shared.config.segment_init == SegmentInit::Grow
            || !shared.config.prepare_spare
            || !shared.state().recyclable.is_empty()
            || shared.preparing.swap(true, Ordering::AcqRel)
        {
            return;
        }
        let n = shared.spares.fetch_add(1, Ordering::Relaxed);
        let worker = shared.clone();
        let started = std::thread::Builder::new()
            .name("wal-spare".to_string())
            .spawn(move || {
                let len = worker.config.segment_bytes_target;
                match segment::create_spare(worker.storage.as_ref(), n, len) {
                    Ok(name) => worker.state().recyclable.push(name),
                    Err(error) => tracing::warn!(%error, "cannot prepare a spare WAL segment; the next roll zero-fills inline"),
                }
                worker.preparing.store(false, Ordering::Release);
            });
        match started {
            Ok(handle) => {
                let previous = shared
                    .spare_thread
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .replace(handle);
                // The previous preparer has finished (`preparing` was false).
                if let Some(previous) = previous {
                    let _ = previous.join();
                }
            }
            Err(_) => shared.preparing.store(false, Ordering::Release),
        }
    }
}

/// What [`Wal::open`] found and repaired.
#[derive(Debug, Clone)]
pub struct Recovery {
    pub wal_id: WalId,
    /// True when the directory held no WAL and a new one was created.
    pub created: bool,
    pub segments: Vec<SegmentSummary>,
    /// Every frame of the log, in Lsn order.
    pub frames: Vec<RecoveredFrame>,
    /// The torn tail that was erased, if any.
    pub torn_tail: Option<TornTail>,
    pub next_lsn: Lsn,
}

/// A frame read back from a segment: the mapped bytes and where its payload is.
#[derive(Clone)]
pub struct FrameView {
    bytes: FileBytes,
    pub header: FrameHeader,
    payload_start: usize,
    payload_end: usize,
}

impl FrameView {
    pub fn payload(&self) -> &[u8] {
        &self.bytes[self.payload_start..self.payload_end]
    }

    /// The reader is done with this frame: its pages of the segment's
    /// mapping leave the process's resident memory (see
    /// [`storage::MappedBytes::release`]); the view stays readable.
    pub fn release(&self) {
        self.bytes.release(self.payload_start..self.payload_end);
    }
}

impl fmt::Debug for FrameView {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FrameView")
            .field("header", &self.header)
            .field("payload_len", &(self.payload_end - self.payload_start))
            .finish()
    }
}

/// Handle to an open WAL; cheap to clone, safe to share between tasks.
#[derive(Clone)]
pub struct Wal {
    shared: Arc<Shared>,
    sender: Arc<Mutex<Option<mpsc::Sender<writer::Request>>>>,
    writer_thread: Arc<Mutex<Option<std::thread::JoinHandle<()>>>>,
}

/// What [`Wal::truncate_below`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Truncation {
    pub removed: Vec<SegmentId>,
    pub recycled: Vec<SegmentId>,
}

impl Wal {
    /// Opens (or creates) the WAL in directory `dir` on the local filesystem,
    /// taking an exclusive lock on it for the life of the returned handle.
    pub fn open_dir(dir: impl AsRef<Path>, config: WalConfig) -> Result<(Wal, Recovery), WalError> {
        let storage =
            FsStorage::new(dir.as_ref()).map_err(WalError::io("create the WAL directory"))?;
        let lock = lock_dir(dir.as_ref())?;
        Wal::open_with(Arc::new(storage), config, Some(lock))
    }

    /// Opens (or creates) the WAL on any storage (tests use the crash model).
    /// Recovery runs first: frames are verified, a torn tail is erased and
    /// fsynced, leftovers of an interrupted segment creation are removed.
    /// Returns Err on corruption; nothing is modified in that case.
    pub fn open(storage: Arc<dyn Storage>, config: WalConfig) -> Result<(Wal, Recovery), WalError> {
        Wal::open_with(storage, config, None)
    }

    fn open_with(
        storage: Arc<dyn Storage>,
        config: WalConfig,
        lock: Option<std::fs::File>,
    ) -> Result<(Wal, Recovery), WalError> {
        let body_len_max = config.frame_bytes_max + format::FRAME_HEADER_LEN as u64;
        let scan = recovery::scan(storage.as_ref(), body_len_max)?;
        repair(storage.as_ref(), &scan)?;
        let created = scan.wal_id.is_none();
        let wal_id = match scan.wal_id {
            Some(id) => id,
            None => WalId::random()?,
        };
        let (active, active_id, offset) = match scan.segments.last() {
            Some(last) => {
                let file = storage
                    .open(&segment_file_name(last.id))
                    .map_err(WalError::io("open the newest segment"))?;
                (file, last.id, last.end_offset)
            }
            None => {
                let header = SegmentHeader {
                    wal_id,
                    segment_id: SegmentId(1),
                    first_lsn: scan.next_lsn,
                };
                let file = create_segment(
                    storage.as_ref(),
                    &header,
                    config.segment_init,
                    config.segment_bytes_target,
                    None,
                )
                .map_err(WalError::io("create the first segment"))?;
                (file, SegmentId(1), SEGMENT_HEADER_LEN as u64)
            }
        };
        let mut segments: BTreeMap<SegmentId, SegmentState> = scan
            .segments
            .iter()
            .map(|s| {
                (
                    s.id,
                    SegmentState {
                        first_lsn: s.first_lsn,
                        last_lsn: s.last_lsn,
                        end_offset: s.end_offset,
                    },
                )
            })
            .collect();
        segments.entry(active_id).or_insert(SegmentState {
            first_lsn: scan.next_lsn,
            last_lsn: None,
            end_offset: offset,
        });
        let durable_lsn = Lsn(scan.next_lsn.0 - 1);
        let (durable, _) = watch::channel(durable_lsn);
        let shared = Arc::new(Shared {
            storage,
            wal_id,
            state: Mutex::new(State {
                segments,
                active: Some(active_id),
                recyclable: scan.recyclable.clone(),
                maps: HashMap::new(),
                failed: None,
            }),
            durable,
            metrics: WalMetrics::default(),
            preparing: std::sync::atomic::AtomicBool::new(false),
            spare_thread: Mutex::new(None),
            spares: AtomicU64::new(spare_seed(&scan.recyclable)),
            config,
            _lock: lock,
        });
        let (sender, receiver) = mpsc::channel(shared.config.queue_depth.max(1));
        let writer = writer::Writer {
            shared: shared.clone(),
            active,
            active_id,
            offset,
            next_lsn: scan.next_lsn,
            durable_lsn,
            failed: None,
            buffer: Vec::new(),
        };
        let thread = std::thread::Builder::new()
            .name("wal-writer".to_string())
            .spawn(move || writer.run(receiver))
            .map_err(WalError::io("start the WAL writer thread"))?;
        Shared::prepare_spare(&shared);
        let recovery = Recovery {
            wal_id,
            created,
            segments: scan.segments,
            frames: scan.frames,
            torn_tail: scan.torn_tail,
            next_lsn: scan.next_lsn,
        };
        Ok((
            Wal {
                shared,
                sender: Arc::new(Mutex::new(Some(sender))),
                writer_thread: Arc::new(Mutex::new(Some(thread))),
            },
            recovery,
        ))
    }

    pub fn id(&self) -> WalId {
        self.shared.wal_id
    }

    pub fn config(&self) -> &WalConfig {
        &self.shared.config
    }

    /// Why the WAL failed (fail-stop), if it did.
    pub fn failure(&self) -> Option<String> {
        self.shared
            .state()
            .failed
            .as_ref()
            .map(|error| error.to_string())
    }

    pub fn metrics(&self) -> &WalMetrics {
        &self.shared.metrics
    }

    /// Appends one frame and returns once it is written **and fdatasync'ed**
    /// (and, if it started a segment, the directory fsynced): on `Ok` the
    /// frame survives a crash. Frames get Lsns in the order the writer
    /// receives them. On `Err` the frame may or may not be in the log (a
    /// failed fsync leaves it unknown); the WAL then refuses every later
    /// append. Waits when `queue_depth` appends are already queued.
    pub async fn append(&self, kind: FrameKind, payload: Vec<u8>) -> Result<Appended, WalError> {
        self.submit(kind, payload).await?.await
    }

    /// Queues one frame and returns a future for its durability. Frames
    /// submitted in order by one task get increasing Lsns; awaiting the last
    /// one's result implies the earlier ones are durable too.
    pub async fn submit(
        &self,
        kind: FrameKind,
        payload: Vec<u8>,
    ) -> Result<impl std::future::Future<Output = Result<Appended, WalError>>, WalError> {
        let max = self.frame_payload_max();
        if payload.len() as u64 > max {
            return Err(WalError::FrameTooLarge {
                len: payload.len() as u64,
                max,
            });
        }
        if let Some(cause) = self.shared.state().failed.clone() {
            return Err(WalError::Failed { cause });
        }
        let sender = self
            .sender
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .ok_or(WalError::Closed)?;
        let (reply, answer) = oneshot::channel();
        let payload_crc = format::payload_crc(&payload);
        sender
            .send(writer::Request {
                kind,
                payload,
                payload_crc,
                reply,
            })
            .await
            .map_err(|_| WalError::Closed)?;
        Ok(async move { answer.await.map_err(|_| WalError::Closed)? })
    }

    /// Largest payload `append` accepts: the configured limit, capped so the
    /// frame's body length fits the format's ceiling.
    pub fn frame_payload_max(&self) -> u64 {
        let ceiling = format::FRAME_BODY_LEN_CEILING
            - (format::FRAME_HEADER_LEN as u64 - format::BODY_LEN_FIELDS_BEFORE_BODY);
        self.shared.config.frame_bytes_max.min(ceiling)
    }

    /// Highest Lsn known durable; changes are announced on the receiver.
    pub fn durable_lsn(&self) -> watch::Receiver<Lsn> {
        self.shared.durable.subscribe()
    }

    /// Reads a frame back (through an mmap of its segment) and verifies it
    /// again: bit rot since it was written is reported, not returned.
    pub fn read(&self, pointer: WalPointer) -> Result<FrameView, WalError> {
        let end = pointer.offset + u64::from(pointer.len);
        let bytes = self.map_covering(pointer.segment, end)?;
        let body_len_max = self.shared.config.frame_bytes_max + format::FRAME_HEADER_LEN as u64;
        let frame = decode_frame(
            pointer.segment,
            &bytes,
            pointer.offset as usize,
            body_len_max,
        )
        .map_err(|bad| WalError::Corrupted {
            segment: pointer.segment,
            offset: pointer.offset,
            reason: bad.to_string(),
        })?;
        if frame.len != pointer.len {
            return Err(WalError::Corrupted {
                segment: pointer.segment,
                offset: pointer.offset,
                reason: format!(
                    "frame is {} bytes, the index says {}",
                    frame.len, pointer.len
                ),
            });
        }
        let payload_start = pointer.offset as usize + format::FRAME_HEADER_LEN;
        Ok(FrameView {
            header: frame.header,
            payload_start,
            payload_end: payload_start + frame.payload.len(),
            bytes,
        })
    }

    fn map_covering(&self, segment: SegmentId, end: u64) -> Result<FileBytes, WalError> {
        if let Some(bytes) = self.shared.state().maps.get(&segment) {
            if bytes.len() as u64 >= end {
                return Ok(bytes.clone());
            }
        }
        let bytes = self
            .shared
            .storage
            .map(&segment_file_name(segment))
            .map_err(WalError::io("map a segment"))?;
        if (bytes.len() as u64) < end {
            return Err(WalError::Corrupted {
                segment,
                offset: end,
                reason: format!("segment is only {} bytes long", bytes.len()),
            });
        }
        self.shared.state().maps.insert(segment, bytes.clone());
        Ok(bytes)
    }

    /// Deletes every whole segment whose frames all have an Lsn below `lsn`;
    /// the active segment is never deleted. Segments go oldest first, each
    /// removal fsynced before the next, so a crash leaves a contiguous log.
    /// Files are kept for re-use (renamed into the recycle pool) while the
    /// pool has room and the WAL recycles. Blocking I/O: call from a
    /// blocking context.
    pub fn truncate_below(&self, lsn: Lsn) -> Result<Truncation, WalError> {
        let doomed: Vec<SegmentId> = {
            let state = self.shared.state();
            state
                .segments
                .iter()
                .filter(|(id, segment)| {
                    Some(**id) != state.active && segment.last_lsn.is_some_and(|last| last < lsn)
                })
                .map(|(id, _)| *id)
                .collect()
        };
        let storage = self.shared.storage.as_ref();
        let mut done = Truncation::default();
        for id in doomed {
            let recycle = {
                let state = self.shared.state();
                self.shared.config.segment_init == SegmentInit::Recycle
                    && state.recyclable.len() < self.shared.config.recycle_pool_max
            };
            let name = segment_file_name(id);
            if recycle {
                let target = recycle_file_name(id);
                storage
                    .rename(&name, &target)
                    .map_err(WalError::io("move a segment to the recycle pool"))?;
                storage
                    .sync_dir()
                    .map_err(WalError::io("fsync the WAL directory"))?;
                self.shared.state().recyclable.push(target);
                self.shared
                    .metrics
                    .segments_recycled
                    .fetch_add(1, Ordering::Relaxed);
                done.recycled.push(id);
            } else {
                storage
                    .remove(&name)
                    .map_err(WalError::io("remove a segment"))?;
                storage
                    .sync_dir()
                    .map_err(WalError::io("fsync the WAL directory"))?;
                self.shared
                    .metrics
                    .segments_removed
                    .fetch_add(1, Ordering::Relaxed);
                done.removed.push(id);
            }
            let mut state = self.shared.state();
            state.segments.remove(&id);
            state.maps.remove(&id);
        }
        Ok(done)
    }

    /// Segments currently in the log: (id, first Lsn, last durable Lsn).
    pub fn segments(&self) -> Vec<(SegmentId, Lsn, Option<Lsn>)> {
        self.shared
            .state()
            .segments
            .iter()
            .map(|(id, s)| (*id, s.first_lsn, s.last_lsn))
            .collect()
    }

    /// Bytes of frames held in the log (segment headers excluded).
    pub fn log_bytes(&self) -> u64 {
        self.shared
            .state()
            .segments
            .values()
            .map(|s| s.end_offset.saturating_sub(SEGMENT_HEADER_LEN as u64))
            .sum()
    }

    /// Stops accepting appends, lets the writer finish what is queued, and
    /// waits for it. Appends after this return `WalError::Closed`.
    pub fn close(&self) {
        self.sender.lock().unwrap_or_else(|e| e.into_inner()).take();
        let thread = self
            .writer_thread
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(thread) = thread {
            // The writer does not panic; if it did, there is nothing to add.
            let _ = thread.join();
        }
        let spare = self
            .shared
            .spare_thread
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(spare) = spare {
            let _ = spare.join();
        }
    }
}

/// The first spare number not used by a spare already in the pool.
fn spare_seed(recyclable: &[String]) -> u64 {
    recyclable
        .iter()
        .filter_map(|name| {
            name.strip_prefix("recycle-spare-")?
                .strip_suffix(".wal")?
                .parse::<u64>()
                .ok()
        })
        .max()
        .map_or(0, |n| n + 1)
}

fn lock_dir(dir: &Path) -> Result<std::fs::File, WalError> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join("LOCK"))
        .map_err(WalError::io("open the WAL lock file"))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(WalError::Locked {
            dir: dir.to_path_buf(),
        }),
        Err(std::fs::TryLockError::Error(error)) => Err(WalError::Io {
            context: "lock the WAL directory",
            source: error,
        }),
    }
}

/// Applies what recovery decided: drop half-created segments, erase a torn
/// tail (zeros over its bytes, fdatasync'ed) so that no stale frame can ever
/// follow a frame written after this restart.
fn repair(storage: &dyn Storage, scan: &Scan) -> Result<(), WalError> {
    for name in &scan.temporary {
        match storage.remove(name) {
            Ok(()) => {}
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
            Err(error) => return Err(WalError::io("remove an unfinished segment")(error)),
        }
    }
    if !scan.temporary.is_empty() {
        storage
            .sync_dir()
            .map_err(WalError::io("fsync the WAL directory"))?;
    }
    if let Some(torn) = &scan.torn_tail {
        tracing::warn!(
            segment = %segment_file_name(torn.segment),
            offset = torn.offset,
            bytes = torn.dirty_end - torn.offset,
            reason = %torn.reason,
            "erasing a torn tail (an unacknowledged write cut by a crash)"
        );
        let mut file = storage
            .open(&segment_file_name(torn.segment))
            .map_err(WalError::io("open the newest segment"))?;
        const CHUNK: u64 = 1 << 20;
        let zeros = vec![0u8; CHUNK as usize];
        let mut offset = torn.offset;
        while offset < torn.dirty_end {
            let n = CHUNK.min(torn.dirty_end - offset);
            file.write_at(offset, &zeros[..n as usize])
                .map_err(WalError::io("erase a torn tail"))?;
            offset += n;
        }
        file.sync_data()
            .map_err(WalError::io("fsync the erased tail"))?;
    }
    Ok(())
}
