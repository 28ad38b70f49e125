//! WAL append throughput and latency with fsync on: 1, 4, 16 and 64
//! concurrent appenders × 1 KiB, 64 KiB and 1 MiB frames × each
//! `SegmentInit`. One criterion iteration is one frame from every appender.
//! Besides criterion's output, prints a summary table (MB/s, frames/s,
//! p50/p99 append latency, fsyncs per frame from `wal.metrics()`).
//!
//! The WAL lives under `FLIGHTLOG_BENCH_DIR` (default: the system temp dir;
//! point it at a real disk, not tmpfs). Run:
//! `FLIGHTLOG_BENCH_DIR=/work/bench-tmp cargo bench --profile dev --bench wal_append`

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use criterion::{
    criterion_group, criterion_main, BenchmarkId, Criterion, SamplingMode, Throughput,
};

use flightlog::wal::format::FrameKind;
use flightlog::wal::segment::SegmentInit;
use flightlog::wal::{Lsn, Wal, WalConfig};

const APPENDERS: [usize; 4] = [1, 4, 16, 64];
const SIZES: [usize; 3] = [1 << 10, 64 << 10, 1 << 20];
const INITS: [SegmentInit; 3] = [
    SegmentInit::Grow,
    SegmentInit::ZeroFill,
    SegmentInit::Recycle,
];
const SEGMENT_BYTES: u64 = 16 << 20;
const RECYCLE_POOL: usize = 4;

/// What one configuration measured, over all its criterion iterations.
#[derive(Default)]
struct Tally {
    frames: u64,
    bytes: u64,
    elapsed: Duration,
    latencies_us: Vec<u64>,
    syncs: u64,
}

type Key = (usize, usize, &'static str);

fn bench_dir() -> PathBuf {
    std::env::var_os("FLIGHTLOG_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir)
}

fn init_name(init: SegmentInit) -> &'static str {
    match init {
        SegmentInit::Grow => "grow",
        SegmentInit::ZeroFill => "zero_fill",
        SegmentInit::Recycle => "recycle",
    }
}

fn config(init: SegmentInit) -> WalConfig {
    WalConfig {
        segment_bytes_target: SEGMENT_BYTES,
        frame_bytes_max: 2 << 20,
        segment_init: init,
        recycle_pool_max: RECYCLE_POOL,
        prepare_spare: true,
        queue_depth: 4096,
        batch_bytes_max: 16 << 20,
    }
}

/// Drops every whole segment behind the durable Lsn (recycling their files
/// when the WAL recycles), so disk use stays bounded between samples.
fn truncate_all(wal: &Wal) {
    let durable = *wal.durable_lsn().borrow();
    wal.truncate_below(Lsn(durable.0 + 1)).expect("truncate");
}

/// Fills the recycle pool: appends until `RECYCLE_POOL + 1` segments were
/// sealed, then truncates, so later appends overwrite recycled files.
fn prefill_recycle_pool(runtime: &tokio::runtime::Runtime, wal: &Wal) {
    let frames = (RECYCLE_POOL as u64 + 1) * SEGMENT_BYTES / (1 << 20) + 1;
    runtime.block_on(async {
        for _ in 0..frames {
            wal.append(FrameKind::Data, vec![0x5a; 1 << 20])
                .await
                .expect("prefill append");
        }
    });
    truncate_all(wal);
}

/// `iters` rounds of one frame from each of `appenders` concurrent tasks.
fn run_round(
    runtime: &tokio::runtime::Runtime,
    wal: &Wal,
    appenders: usize,
    size: usize,
    iters: u64,
    tally: &mut Tally,
) -> Duration {
    let syncs_before = wal.metrics().syncs.load(Ordering::Relaxed);
    let start = Instant::now();
    let latencies = runtime.block_on(async {
        let mut tasks = Vec::with_capacity(appenders);
        for appender in 0..appenders {
            let wal = wal.clone();
            tasks.push(tokio::spawn(async move {
                let mut latencies = Vec::with_capacity(iters as usize);
                for i in 0..iters {
                    let payload = vec![(appender as u64 ^ i) as u8; size];
                    let t = Instant::now();
                    wal.append(FrameKind::Data, payload).await.expect("append");
                    latencies.push(t.elapsed().as_micros() as u64);
                }
                latencies
            }));
        }
        let mut all = Vec::new();
        for task in tasks {
            all.extend(task.await.expect("appender task"));
        }
        all
    });
    let elapsed = start.elapsed();
    tally.frames += appenders as u64 * iters;
    tally.bytes += (appenders * size) as u64 * iters;
    tally.elapsed += elapsed;
    tally.latencies_us.extend(latencies);
    tally.syncs += wal.metrics().syncs.load(Ordering::Relaxed) - syncs_before;
    truncate_all(wal);
    elapsed
}

fn wal_append(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let root = bench_dir();
    std::fs::create_dir_all(&root).expect("bench dir");
    let tallies: Arc<Mutex<BTreeMap<Key, Tally>>> = Arc::default();
    for init in INITS {
        let dir = tempfile::tempdir_in(&root).expect("tempdir");
        let (wal, _) = Wal::open_dir(dir.path(), config(init)).expect("open WAL");
        if init == SegmentInit::Recycle {
            prefill_recycle_pool(&runtime, &wal);
        }
        let mut group = c.benchmark_group(format!("wal_append/{}", init_name(init)));
        group
            .sample_size(10)
            .sampling_mode(SamplingMode::Flat)
            .warm_up_time(Duration::from_millis(300))
            .measurement_time(Duration::from_secs(1));
        for size in SIZES {
            for appenders in APPENDERS {
                group.throughput(Throughput::Bytes((appenders * size) as u64));
                let id = BenchmarkId::new(format!("{}KiB", size >> 10), appenders);
                group.bench_with_input(id, &appenders, |b, &appenders| {
                    b.iter_custom(|iters| {
                        let mut tallies = tallies.lock().expect("tallies");
                        let tally = tallies
                            .entry((appenders, size, init_name(init)))
                            .or_default();
                        run_round(&runtime, &wal, appenders, size, iters, tally)
                    });
                });
            }
        }
        group.finish();
        wal.close();
    }
    print_summary(&tallies.lock().expect("tallies"));
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index]
}

fn print_summary(tallies: &BTreeMap<Key, Tally>) {
    println!();
    println!("WAL append summary (fsync on; every criterion iteration, warm-up included)");
    println!("| appenders | frame | init | MB/s | frames/s | p50 ms | p99 ms | fsyncs/frame |");
    println!("|---:|---:|---|---:|---:|---:|---:|---:|");
    for size in SIZES {
        for appenders in APPENDERS {
            for init in INITS {
                let Some(tally) = tallies.get(&(appenders, size, init_name(init))) else {
                    continue;
                };
                let mut latencies = tally.latencies_us.clone();
                latencies.sort_unstable();
                let seconds = tally.elapsed.as_secs_f64().max(f64::MIN_POSITIVE);
                println!(
                    "| {} | {} KiB | {} | {:.1} | {:.0} | {:.2} | {:.2} | {:.3} |",
                    appenders,
                    size >> 10,
                    init_name(init),
                    tally.bytes as f64 / seconds / 1e6,
                    tally.frames as f64 / seconds,
                    percentile(&latencies, 0.50) as f64 / 1000.0,
                    percentile(&latencies, 0.99) as f64 / 1000.0,
                    tally.syncs as f64 / tally.frames.max(1) as f64,
                );
            }
        }
    }
}

criterion_group!(benches, wal_append);
criterion_main!(benches);
