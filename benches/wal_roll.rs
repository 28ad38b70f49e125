//! Append latency across segment rolls, with and without a spare segment
//! prepared in the background (`WalConfig::prepare_spare`). One appender
//! writes 256 KiB frames, fsync on, into 32 MiB `ZeroFill` segments, so every
//! 128th append rolls the segment; without a spare, that roll zero-fills a
//! whole segment on the writer thread first. Prints p50, p99, max and the
//! slowest append's neighbourhood for each setting.
//!
//! `FLIGHTLOG_BENCH_DIR=/work/bench-tmp cargo bench --profile dev --bench wal_roll`

use std::path::PathBuf;
use std::time::{Duration, Instant};

use flightlog::wal::format::FrameKind;
use flightlog::wal::segment::SegmentInit;
use flightlog::wal::{Wal, WalConfig};

const FRAME: usize = 256 << 10;
const SEGMENT: u64 = 32 << 20;
const FRAMES: usize = 1024;

fn bench_dir() -> PathBuf {
    std::env::var_os("FLIGHTLOG_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir)
}

fn run(prepare_spare: bool) -> Vec<Duration> {
    let parent = bench_dir();
    std::fs::create_dir_all(&parent).expect("bench dir");
    let dir = tempfile::tempdir_in(&parent).expect("tempdir");
    let config = WalConfig {
        segment_bytes_target: SEGMENT,
        frame_bytes_max: 2 << 20,
        segment_init: SegmentInit::ZeroFill,
        prepare_spare,
        ..WalConfig::default()
    };
    let (wal, _) = Wal::open_dir(dir.path(), config).expect("open");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let payload = vec![7u8; FRAME];
    let latencies = runtime.block_on(async {
        let mut latencies = Vec::with_capacity(FRAMES);
        for _ in 0..FRAMES {
            let started = Instant::now();
            wal.append(FrameKind::Data, payload.clone())
                .await
                .expect("append");
            latencies.push(started.elapsed());
        }
        latencies
    });
    wal.close();
    latencies
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

fn main() {
    // `cargo test --benches` runs bench targets with no `--bench` flag: do nothing then.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    println!("| prepare_spare | appends | rolls | p50 ms | p99 ms | max ms | total s |");
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for prepare_spare in [false, true] {
        let latencies = run(prepare_spare);
        let total: Duration = latencies.iter().sum();
        let mut sorted = latencies.clone();
        sorted.sort();
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        println!(
            "| {prepare_spare} | {} | {} | {:.2} | {:.2} | {:.2} | {:.2} |",
            latencies.len(),
            (FRAMES * FRAME) as u64 / SEGMENT,
            ms(percentile(&sorted, 0.5)),
            ms(percentile(&sorted, 0.99)),
            ms(*sorted.last().expect("latencies")),
            total.as_secs_f64(),
        );
    }
}
