//! The storage seam under the WAL: a directory of files with explicit
//! durability points. [`FsStorage`] is the real one (std::fs, fdatasync,
//! directory fsync, mmap for reads); [`CrashStorage`] is an in-memory crash
//! model that keeps what was written apart from what was made durable, so a
//! test can cut the power at every write and fsync and recover from exactly
//! what a disk could hold at that moment.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io;
use std::ops::Deref;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

/// Read-only bytes of a whole file: an mmap for [`FsStorage`].
pub type FileBytes = Arc<dyn MappedBytes>;

/// The bytes of a [`Storage::map`].
pub trait MappedBytes: Deref<Target = [u8]> + Send + Sync {
    /// Says that `range` will not be read again soon: a mapping drops those
    /// pages from the process (they stay in the page cache and are read
    /// back on the next access), so a reader that walks through a large
    /// file does not keep all of it resident. The bytes stay readable and
    /// unchanged. Best effort; a no-op for bytes in memory.
    fn release(&self, _range: std::ops::Range<usize>) {}
}

impl MappedBytes for Vec<u8> {}

/// A directory of files with explicit durability.
///
/// Contract: `write_at` and `set_len` are volatile until `sync_data` on that
/// file returns Ok; `create`, `rename` and `remove` are volatile until
/// `sync_dir` returns Ok. After an `Err` from a sync, nothing is known about
/// what reached the disk.
pub trait Storage: Send + Sync + 'static {
    /// File names in the directory (no paths), any order.
    fn list(&self) -> io::Result<Vec<String>>;
    /// Creates a new empty file; fails if it exists.
    fn create(&self, name: &str) -> io::Result<Box<dyn StorageFile>>;
    /// Opens an existing file for writing.
    fn open(&self, name: &str) -> io::Result<Box<dyn StorageFile>>;
    fn rename(&self, from: &str, to: &str) -> io::Result<()>;
    fn remove(&self, name: &str) -> io::Result<()>;
    /// Makes creates, renames and removes durable.
    fn sync_dir(&self) -> io::Result<()>;
    /// A read-only view of the file as it is now (later writes past its end
    /// are not visible: map again).
    fn map(&self, name: &str) -> io::Result<FileBytes>;
    /// Where this storage lives, for messages.
    fn describe(&self) -> String;
}

/// One open file.
pub trait StorageFile: Send {
    fn write_at(&mut self, offset: u64, bytes: &[u8]) -> io::Result<()>;
    /// fdatasync: data and size are durable when this returns Ok.
    fn sync_data(&mut self) -> io::Result<()>;
    fn set_len(&mut self, len: u64) -> io::Result<()>;
}

/// The real directory on a local filesystem.
#[derive(Debug, Clone)]
pub struct FsStorage {
    dir: PathBuf,
}

impl FsStorage {
    /// Uses `dir`, creating it (and its parents) if missing.
    pub fn new(dir: impl AsRef<Path>) -> io::Result<FsStorage> {
        std::fs::create_dir_all(dir.as_ref())?;
        Ok(FsStorage {
            dir: dir.as_ref().to_path_buf(),
        })
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}

struct FsFile(File);

impl StorageFile for FsFile {
    fn write_at(&mut self, offset: u64, bytes: &[u8]) -> io::Result<()> {
        self.0.write_all_at(bytes, offset)
    }
    fn sync_data(&mut self) -> io::Result<()> {
        self.0.sync_data()
    }
    fn set_len(&mut self, len: u64) -> io::Result<()> {
        self.0.set_len(len)
    }
}

struct Mapped(memmap2::Mmap);

impl Deref for Mapped {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.0
    }
}

impl MappedBytes for Mapped {
    fn release(&self, range: std::ops::Range<usize>) {
        // Whole pages inside the range only: a page it shares with a
        // neighbour may still be wanted.
        const PAGE: usize = 4096;
        let start = range.start.div_ceil(PAGE) * PAGE;
        let end = (range.end.min(self.0.len()) / PAGE) * PAGE;
        if start >= end {
            return;
        }
        // SAFETY: MADV_DONTNEED on a read-only shared file mapping only
        // drops this process's page table entries; the next access reads
        // the same bytes from the page cache or the file (which, as `map`
        // says, do not change under a reader). No reference into the range
        // is invalidated.
        #[allow(unsafe_code)]
        let result = unsafe {
            self.0
                .unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, start, end - start)
        };
        if let Err(error) = result {
            tracing::debug!(%error, "madvise(DONTNEED) of a WAL mapping failed; pages stay resident");
        }
    }
}

impl Storage for FsStorage {
    fn list(&self) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in std::fs::read_dir(&self.dir)? {
            let entry = entry?;
            if let Some(name) = entry.file_name().to_str() {
                names.push(name.to_string());
            }
        }
        Ok(names)
    }

    fn create(&self, name: &str) -> io::Result<Box<dyn StorageFile>> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(self.path(name))?;
        Ok(Box::new(FsFile(file)))
    }

    fn open(&self, name: &str) -> io::Result<Box<dyn StorageFile>> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(self.path(name))?;
        Ok(Box::new(FsFile(file)))
    }

    fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        std::fs::rename(self.path(from), self.path(to))
    }

    fn remove(&self, name: &str) -> io::Result<()> {
        std::fs::remove_file(self.path(name))
    }

    fn sync_dir(&self) -> io::Result<()> {
        File::open(&self.dir)?.sync_all()
    }

    fn map(&self, name: &str) -> io::Result<FileBytes> {
        let file = File::open(self.path(name))?;
        if file.metadata()?.len() == 0 {
            // mmap of an empty file fails on Linux; an empty view is the truth.
            return Ok(Arc::new(Vec::new()));
        }
        // SAFETY: the WAL directory is owned by one flightlog process (the
        // writer takes an exclusive lock on it). Segment files are only
        // appended to or overwritten beyond what readers were handed, and
        // shrunk only during recovery before any map exists; removal unlinks
        // the name and leaves existing maps valid. So the mapped bytes a
        // reader looks at do not change under it and the map cannot SIGBUS.
        #[allow(unsafe_code)]
        let map = unsafe { memmap2::Mmap::map(&file)? };
        Ok(Arc::new(Mapped(map)))
    }

    fn describe(&self) -> String {
        self.dir.display().to_string()
    }
}

/// What happens to writes that were not yet fsynced when the power is cut.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CrashMode {
    /// Unsynced writes are lost entirely.
    DropUnsynced,
    /// Unsynced writes all reached the disk.
    KeepUnsynced,
    /// Of each file's unsynced writes, a prefix survives and the write that
    /// was cut keeps only its first `keep_bytes` bytes (a torn write).
    TornAt { keep_bytes: usize },
    /// Unsynced writes reached the disk as zeros (the page was allocated but
    /// its data never written).
    ZeroFilled,
}

#[derive(Debug, Clone)]
enum Pending {
    Write { offset: u64, data: Vec<u8> },
    SetLen { len: u64 },
}

#[derive(Debug, Clone, Default)]
struct MemFile {
    /// What a read sees now.
    live: Vec<u8>,
    /// What survives a crash.
    durable: Vec<u8>,
    /// Changes since the last sync, in order.
    pending: Vec<Pending>,
}

#[derive(Debug, Default)]
struct CrashState {
    next_inode: u64,
    files: BTreeMap<u64, MemFile>,
    live_names: BTreeMap<String, u64>,
    durable_names: BTreeMap<String, u64>,
    /// Counts mutating operations (write, set_len, sync, create, rename, remove).
    operations: u64,
    /// When set, the operation with this index and every later one fail:
    /// the process "died" there.
    crash_at: Option<u64>,
    /// Fail syncs with EIO instead of dying (fault injection).
    fail_syncs: bool,
    /// Total live bytes the "disk" holds; a write past it stores what fits
    /// and fails with ENOSPC (fault injection).
    space_bytes: Option<u64>,
}

/// In-memory crash model of a directory (see the module doc).
#[derive(Debug, Clone, Default)]
pub struct CrashStorage {
    state: Arc<Mutex<CrashState>>,
}

impl CrashStorage {
    pub fn new() -> CrashStorage {
        CrashStorage::default()
    }

    /// Arms a crash: operation number `index` (0-based, counted from now on
    /// over the whole directory) and everything after it fail.
    pub fn crash_at(&self, index: u64) {
        let mut state = self.lock();
        state.crash_at = Some(state.operations + index);
    }

    /// Makes every later sync fail with EIO (fault injection).
    pub fn fail_syncs(&self) {
        self.lock().fail_syncs = true;
    }

    /// Limits the live bytes of all files together (None: unlimited);
    /// writes past the limit store what fits and fail with ENOSPC.
    pub fn set_space(&self, bytes: Option<u64>) {
        self.lock().space_bytes = bytes;
    }

    /// Mutating operations so far.
    pub fn operations(&self) -> u64 {
        self.lock().operations
    }

    /// The directory as a disk would hold it after a power cut now.
    pub fn crash_image(&self, mode: CrashMode) -> CrashStorage {
        let state = self.lock();
        let mut image = CrashState {
            next_inode: state.next_inode,
            ..CrashState::default()
        };
        for (name, inode) in &state.durable_names {
            let Some(file) = state.files.get(inode) else {
                continue;
            };
            let bytes = survive(file, mode);
            image.files.insert(
                *inode,
                MemFile {
                    live: bytes.clone(),
                    durable: bytes,
                    pending: Vec::new(),
                },
            );
            image.live_names.insert(name.clone(), *inode);
            image.durable_names.insert(name.clone(), *inode);
        }
        CrashStorage {
            state: Arc::new(Mutex::new(image)),
        }
    }

    /// The live bytes of a file (test inspection).
    pub fn read(&self, name: &str) -> Option<Vec<u8>> {
        let state = self.lock();
        let inode = state.live_names.get(name)?;
        state.files.get(inode).map(|f| f.live.clone())
    }

    /// Overwrites live and durable bytes of a file (test damage).
    pub fn overwrite(&self, name: &str, bytes: Vec<u8>) {
        let mut state = self.lock();
        if let Some(inode) = state.live_names.get(name).copied() {
            if let Some(file) = state.files.get_mut(&inode) {
                file.live = bytes.clone();
                file.durable = bytes;
                file.pending.clear();
            }
        }
    }

    fn lock(&self) -> MutexGuard<'_, CrashState> {
        // A poisoned lock only means a test thread panicked; the state is
        // still the model's best knowledge.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn survive(file: &MemFile, mode: CrashMode) -> Vec<u8> {
    let mut bytes = file.durable.clone();
    match mode {
        CrashMode::DropUnsynced => {}
        CrashMode::KeepUnsynced => bytes = file.live.clone(),
        CrashMode::ZeroFilled => {
            for change in &file.pending {
                match change {
                    Pending::Write { offset, data } => {
                        apply_write(&mut bytes, *offset, &vec![0u8; data.len()])
                    }
                    Pending::SetLen { len } => bytes.resize(*len as usize, 0),
                }
            }
        }
        CrashMode::TornAt { keep_bytes } => {
            let mut budget = keep_bytes;
            for change in &file.pending {
                match change {
                    Pending::Write { offset, data } => {
                        let kept = budget.min(data.len());
                        apply_write(&mut bytes, *offset, &data[..kept]);
                        budget -= kept;
                        if budget == 0 {
                            break;
                        }
                    }
                    Pending::SetLen { len } => bytes.resize(*len as usize, 0),
                }
            }
        }
    }
    bytes
}

fn apply_write(bytes: &mut Vec<u8>, offset: u64, data: &[u8]) {
    let offset = offset as usize;
    let end = offset + data.len();
    if bytes.len() < end {
        bytes.resize(end, 0);
    }
    bytes[offset..end].copy_from_slice(data);
}

fn crashed() -> io::Error {
    io::Error::other("crash model: the process died here")
}

impl CrashState {
    /// How many of `len` bytes written at `offset` of `inode` fit in the
    /// space limit (overwrites of existing bytes always fit).
    fn bytes_that_fit(&self, inode: u64, offset: u64, len: usize) -> usize {
        let Some(space) = self.space_bytes else {
            return len;
        };
        let used: u64 = self
            .live_names
            .values()
            .filter_map(|i| self.files.get(i))
            .map(|f| f.live.len() as u64)
            .sum();
        let current = self.files.get(&inode).map_or(0, |f| f.live.len() as u64);
        let growth_room = space.saturating_sub(used);
        let end_allowed = current + growth_room;
        (end_allowed.saturating_sub(offset) as usize).min(len)
    }

    /// Counts one mutating operation; Err if the process has died.
    fn step(&mut self) -> io::Result<()> {
        let index = self.operations;
        self.operations += 1;
        match self.crash_at {
            Some(at) if index >= at => Err(crashed()),
            _ => Ok(()),
        }
    }
}

struct CrashFile {
    storage: CrashStorage,
    inode: u64,
}

impl StorageFile for CrashFile {
    fn write_at(&mut self, offset: u64, bytes: &[u8]) -> io::Result<()> {
        let mut state = self.storage.lock();
        state.step()?;
        let fits = state.bytes_that_fit(self.inode, offset, bytes.len());
        let file = state.files.entry(self.inode).or_default();
        apply_write(&mut file.live, offset, &bytes[..fits]);
        file.pending.push(Pending::Write {
            offset,
            data: bytes[..fits].to_vec(),
        });
        if fits < bytes.len() {
            return Err(io::Error::from_raw_os_error(libc::ENOSPC));
        }
        Ok(())
    }

    fn sync_data(&mut self) -> io::Result<()> {
        let mut state = self.storage.lock();
        state.step()?;
        if state.fail_syncs {
            return Err(io::Error::from_raw_os_error(libc::EIO));
        }
        let file = state.files.entry(self.inode).or_default();
        file.durable = file.live.clone();
        file.pending.clear();
        Ok(())
    }

    fn set_len(&mut self, len: u64) -> io::Result<()> {
        let mut state = self.storage.lock();
        state.step()?;
        let file = state.files.entry(self.inode).or_default();
        file.live.resize(len as usize, 0);
        // A size change is metadata that fdatasync makes durable.
        file.pending.push(Pending::SetLen { len });
        Ok(())
    }
}

impl Storage for CrashStorage {
    fn list(&self) -> io::Result<Vec<String>> {
        Ok(self.lock().live_names.keys().cloned().collect())
    }

    fn create(&self, name: &str) -> io::Result<Box<dyn StorageFile>> {
        let mut state = self.lock();
        state.step()?;
        if state.live_names.contains_key(name) {
            return Err(io::Error::from(io::ErrorKind::AlreadyExists));
        }
        state.next_inode += 1;
        let inode = state.next_inode;
        state.files.insert(inode, MemFile::default());
        state.live_names.insert(name.to_string(), inode);
        Ok(Box::new(CrashFile {
            storage: self.clone(),
            inode,
        }))
    }

    fn open(&self, name: &str) -> io::Result<Box<dyn StorageFile>> {
        let state = self.lock();
        let inode = *state
            .live_names
            .get(name)
            .ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))?;
        Ok(Box::new(CrashFile {
            storage: self.clone(),
            inode,
        }))
    }

    fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        let mut state = self.lock();
        state.step()?;
        let inode = state
            .live_names
            .remove(from)
            .ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))?;
        state.live_names.insert(to.to_string(), inode);
        Ok(())
    }

    fn remove(&self, name: &str) -> io::Result<()> {
        let mut state = self.lock();
        state.step()?;
        state
            .live_names
            .remove(name)
            .ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))?;
        Ok(())
    }

    fn sync_dir(&self) -> io::Result<()> {
        let mut state = self.lock();
        state.step()?;
        if state.fail_syncs {
            return Err(io::Error::from_raw_os_error(libc::EIO));
        }
        state.durable_names = state.live_names.clone();
        Ok(())
    }

    fn map(&self, name: &str) -> io::Result<FileBytes> {
        let state = self.lock();
        let inode = state
            .live_names
            .get(name)
            .ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))?;
        let bytes = state
            .files
            .get(inode)
            .map(|f| f.live.clone())
            .unwrap_or_default();
        Ok(Arc::new(bytes))
    }

    fn describe(&self) -> String {
        "in-memory crash model".to_string()
    }
}
