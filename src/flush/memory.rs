//! The flush memory budget (`--memory-budget`): one number that bounds what
//! the running flushes hold decoded, together.
//!
//! A flush's memory follows the WAL bytes it reads: the frames decoded into
//! Arrow batches, their squash (a second copy, in key order), and the Parquet
//! writer's open row group and upload buffers. [`DECODED_PER_WAL_BYTE`] is
//! that multiple. The budget therefore does two things:
//! - it caps what one flush reads ([`MemoryBudget::read_bytes_max`]: the
//!   budget over that multiple), so a backlog drains as a series of bounded
//!   flushes instead of one that reads it all; a single transaction larger
//!   than the cap is still read whole (a transaction is committed in one
//!   Delta version or not at all), which is the one way past the budget and
//!   is logged;
//! - concurrent flushes reserve their share before reading
//!   ([`MemoryBudget::reserve`]) and wait while the others hold the rest, so
//!   `--flush-concurrency` cannot multiply the budget.
//!
//! Frames are read through an mmap; the pages a flush has decoded are handed
//! back ([`crate::wal::FrameView::release`]) so the mapping does not keep
//! the backlog resident either.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The smallest budget `--memory-budget` accepts.
pub const MEMORY_BUDGET_MIN: u64 = 4 << 20;

/// Bytes a flush holds decoded per byte of WAL it reads (decoded batches,
/// their squash, the Parquet writer's buffers): 3.4 measured with three
/// as the cap (BENCHMARKS.md, "Memory budget"), rounded up.
pub const DECODED_PER_WAL_BYTE: u64 = 4;

/// The semaphore is counted in KiB, so that a `u32` of permits covers any
/// budget up to 4 TiB.
const UNIT: u64 = 1024;

/// The budget shared by every flush of one scheduler.
#[derive(Debug)]
pub struct MemoryBudget {
    bytes: u64,
    units: u32,
    semaphore: Arc<Semaphore>,
    /// Bytes reserved by running flushes now.
    reserved: AtomicU64,
    /// Flushes that had to wait for room.
    waits: AtomicU64,
    /// Flushes of one transaction larger than the read cap.
    oversized: AtomicU64,
}

/// A flush's share of the budget, given back when dropped.
#[derive(Debug)]
pub struct Reservation {
    _permit: OwnedSemaphorePermit,
    bytes: u64,
    budget: Arc<MemoryBudget>,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.budget
            .reserved
            .fetch_sub(self.bytes, Ordering::Relaxed);
    }
}

impl MemoryBudget {
    /// A budget of `bytes` (at least [`MEMORY_BUDGET_MIN`], at most 4 TiB).
    pub fn new(bytes: u64) -> Arc<MemoryBudget> {
        let bytes = bytes.clamp(MEMORY_BUDGET_MIN, u64::from(u32::MAX) * UNIT);
        let units = u32::try_from(bytes / UNIT).unwrap_or(u32::MAX);
        Arc::new(MemoryBudget {
            bytes,
            units,
            semaphore: Arc::new(Semaphore::new(units as usize)),
            reserved: AtomicU64::new(0),
            waits: AtomicU64::new(0),
            oversized: AtomicU64::new(0),
        })
    }

    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Most WAL bytes one flush reads, so that its decoded form fits.
    pub fn read_bytes_max(&self) -> u64 {
        (self.bytes / DECODED_PER_WAL_BYTE).max(1)
    }

    /// Reserves what a flush of `wal_bytes` holds decoded (capped at the
    /// whole budget: an oversized transaction waits for every other flush
    /// to finish, then runs alone). Waits while other flushes hold the rest.
    pub async fn reserve(self: &Arc<Self>, wal_bytes: u64) -> Reservation {
        let wanted = wal_bytes.saturating_mul(DECODED_PER_WAL_BYTE);
        if wal_bytes > self.read_bytes_max() {
            // Only a single transaction is read past the cap (see
            // `Pending::flushable`).
            self.oversized.fetch_add(1, Ordering::Relaxed);
        }
        let units = u32::try_from(wanted.div_ceil(UNIT))
            .unwrap_or(u32::MAX)
            .clamp(1, self.units);
        self.reserve_units(units).await
    }

    /// Reserves the whole budget: for work whose memory does not follow WAL
    /// bytes (table maintenance reads and rewrites data files), run while
    /// no flush holds any of it.
    pub async fn reserve_all(self: &Arc<Self>) -> Reservation {
        self.reserve_units(self.units).await
    }

    async fn reserve_units(self: &Arc<Self>, units: u32) -> Reservation {
        let permit = match self.semaphore.clone().try_acquire_many_owned(units) {
            Ok(permit) => permit,
            Err(_) => {
                self.waits.fetch_add(1, Ordering::Relaxed);
                self.semaphore
                    .clone()
                    .acquire_many_owned(units)
                    .await
                    .expect("the budget's semaphore is never closed")
            }
        };
        let bytes = u64::from(units) * UNIT;
        self.reserved.fetch_add(bytes, Ordering::Relaxed);
        Reservation {
            _permit: permit,
            bytes,
            budget: self.clone(),
        }
    }

    /// Bytes reserved by running flushes now.
    pub fn reserved(&self) -> u64 {
        self.reserved.load(Ordering::Relaxed)
    }

    /// Flushes that waited for room.
    pub fn waits(&self) -> u64 {
        self.waits.load(Ordering::Relaxed)
    }

    /// Flushes of a single transaction larger than [`Self::read_bytes_max`].
    pub fn oversized(&self) -> u64 {
        self.oversized.load(Ordering::Relaxed)
    }
}

/// Makes the C allocator give freed memory back, so that RSS follows what
/// the flushes hold rather than the most they ever held. Call once, before
/// any thread starts. glibc's defaults keep it: every thread that allocates
/// gets an arena of its own (up to 8 per core) that keeps its freed space,
/// and its mmap threshold rises to the largest block freed so far, so the
/// multi-MiB Arrow buffers of one flush stay in some arena after it ends
/// (measured: a 32 MiB budget drained with 235 MiB anonymous RSS; see
/// BENCHMARKS.md "Memory budget"). With one arena per core and a fixed
/// 256 KiB threshold, large buffers are mmapped and unmapped on free.
pub fn tune_allocator(cores: usize) {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let arenas = i32::try_from(cores.max(1)).unwrap_or(i32::MAX);
        // SAFETY: mallopt only changes allocator parameters; it is called
        // before the runtime starts any thread.
        #[allow(unsafe_code)]
        let set = unsafe {
            libc::mallopt(libc::M_ARENA_MAX, arenas) == 1
                && libc::mallopt(libc::M_MMAP_THRESHOLD, 256 * 1024) == 1
        };
        if !set {
            eprintln!(
                "flightlog: mallopt refused the allocator settings; RSS may stay at its peak"
            );
        }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    let _ = cores;
}

/// Returns the allocator's free memory to the system (after a flush freed
/// its batches). Blocking, a few milliseconds at most.
pub fn trim_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: malloc_trim only releases free memory; any thread may call it.
        #[allow(unsafe_code)]
        unsafe {
            libc::malloc_trim(0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn concurrent_reservations_never_exceed_the_budget() {
        let budget = MemoryBudget::new(16 << 20);
        assert_eq!(budget.read_bytes_max(), 4 << 20);
        let first = budget.reserve(3 << 20).await;
        assert_eq!(budget.reserved(), 12 << 20);
        // A second flush of the same size does not fit: it waits.
        let waiting = {
            let budget = budget.clone();
            tokio::spawn(async move { budget.reserve(3 << 20).await })
        };
        tokio::task::yield_now().await;
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        assert!(!waiting.is_finished());
        assert_eq!(budget.waits(), 1);
        drop(first);
        let second = waiting.await.expect("join");
        assert_eq!(budget.reserved(), 12 << 20);
        drop(second);
        assert_eq!(budget.reserved(), 0);
    }

    #[tokio::test]
    async fn an_oversized_flush_takes_the_whole_budget_and_is_counted() {
        let budget = MemoryBudget::new(8 << 20);
        let reservation = budget.reserve(100 << 20).await;
        assert_eq!(budget.reserved(), 8 << 20);
        assert_eq!(budget.oversized(), 1);
        drop(reservation);
        let small = budget.reserve(0).await;
        assert_eq!(budget.reserved(), 1024, "at least one unit");
        drop(small);
    }

    #[test]
    fn the_budget_is_clamped_to_what_the_semaphore_counts() {
        assert_eq!(MemoryBudget::new(1).bytes(), MEMORY_BUDGET_MIN);
        assert_eq!(
            MemoryBudget::new(u64::MAX).bytes(),
            u64::from(u32::MAX) * UNIT
        );
    }
}
