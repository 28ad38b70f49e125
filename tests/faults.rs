//! Disk faults under the real binary. An fdatasync that fails (EIO injected
//! with `strace -e inject`) must stop the WAL for good: the put it covered
//! and every later one get `Unavailable` naming the WAL failure, nothing more
//! is acknowledged, and a restart without the fault recovers every
//! acknowledged transaction, verifies clean and flushes each exactly once.
//! A full disk (a small tmpfs filled by puts, or ENOSPC injected into one
//! write) must only refuse the puts that do not fit, with `Unavailable`
//! saying the disk is full: the node keeps answering, accepts puts again
//! once there is space, and a restart recovers every acknowledged
//! transaction and nothing of a refused one. Each test prints why and skips
//! when the sandbox lacks what it needs (strace and ptrace, or mounting).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use tonic::Code;

use common::*;

const TABLE: &str = "t";
const ORIGIN: &str = "faulty";
const NO_FLUSH: [&str; 2] = ["--max-lag-ms", "3600000"];
/// Rows per transaction in the fsync test: transaction `s` inserts ids
/// `s * ROWS .. (s + 1) * ROWS`.
const ROWS: i64 = 10;

fn ids_of(sequence: u64) -> std::ops::Range<i64> {
    let first = sequence as i64 * ROWS;
    first..first + ROWS
}

/// Why strace cannot run the node here, if it cannot.
fn strace_unusable() -> Option<String> {
    match Command::new("strace")
        .args(["-f", "-qq", "-e", "trace=none", "-o", "/dev/null", "true"])
        .output()
    {
        Err(error) => Some(format!("cannot run strace: {error}")),
        Ok(output) if !output.status.success() => Some(format!(
            "strace cannot trace here (ptrace not permitted?): {}",
            String::from_utf8_lossy(&output.stderr).trim()
        )),
        Ok(_) => None,
    }
}

/// The `strace` prefix that traces `syscall` into `trace_file`, with `inject`
/// (e.g. `fdatasync:error=EIO:when=4`) if given.
///
/// strace counts `when=N` per thread. Every WAL append is written and
/// fdatasynced by the WAL writer thread, which makes no such call before the
/// first put (creating the first segment happens on the opening thread);
/// with one sequential client and one frame per put, its N-th `pwrite64`
/// and N-th `fdatasync` belong to the N-th put.
fn strace_wrapper(syscall: &str, trace_file: &Path, inject: Option<&str>) -> Vec<String> {
    let mut wrapper: Vec<String> = [
        "strace",
        "-f",
        "-qq",
        "-e",
        "signal=none",
        "-e",
        &format!("trace={syscall}"),
        "-o",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    wrapper.push(trace_file.display().to_string());
    if let Some(inject) = inject {
        wrapper.extend(["-e".to_string(), format!("inject={inject}")]);
    }
    wrapper.push("--".to_string());
    wrapper
}

fn start_traced(wrapper: &[String], data: &Path, args: &[&str]) -> ServeProcess {
    let wrapper: Vec<&str> = wrapper.iter().map(String::as_str).collect();
    ServeProcess::start_wrapped(&wrapper, data, args)
}

fn assert_wal_verifies(data: &Path) {
    let (status, out) = wal_verify(data);
    assert!(status.success(), "wal verify failed: {out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_fsync_stops_acknowledging_and_restart_recovers_every_acknowledged_transaction() {
    if let Some(reason) = strace_unusable() {
        eprintln!("skipped: {reason}");
        return;
    }
    const ACKS_BEFORE_FAULT: usize = 3;
    let dir = tempfile::tempdir().expect("tempdir");
    let when = ACKS_BEFORE_FAULT + 1;
    let data = dir.path().join("data");
    let trace = dir.path().join("fault.trace");
    let inject = format!("fdatasync:error=EIO:when={when}");
    let node = start_traced(
        &strace_wrapper("fdatasync", &trace, Some(&inject)),
        &data,
        &NO_FLUSH,
    );
    let mut client = node.client().await;

    let mut acknowledged = Vec::new();
    let mut faulted = None;
    for sequence in 1..=20u64 {
        let command = command(TABLE, ORIGIN, Some(sequence));
        let batches = vec![inserts(ids_of(sequence))];
        match put(&mut client, &command, key_value_schema(), batches).await {
            Ok(response) => {
                assert!(response.accepted);
                assert_eq!(response.memory_sequence_number, Some(sequence));
                acknowledged.push(sequence);
            }
            Err(status) => {
                assert_eq!(status.code(), Code::Unavailable, "{status:?}");
                assert!(status.message().contains("WAL has failed"), "{status:?}");
                assert!(status.message().contains("fdatasync"), "{status:?}");
                faulted = Some(sequence);
                break;
            }
        }
    }
    let faulted = faulted.expect("the injected fdatasync failure reached a put");
    assert_eq!(
        acknowledged.len(),
        ACKS_BEFORE_FAULT,
        "acks before the fault"
    );
    let last_acknowledged = *acknowledged.last().expect("some acks");

    // Fail-stop: nothing is acknowledged any more, whatever the origin; the
    // node still answers probes with the numbers it acknowledged.
    for (origin, sequence) in [(ORIGIN, faulted), (ORIGIN, faulted + 1), ("other", 1)] {
        let status = put(
            &mut client,
            &command(TABLE, origin, Some(sequence)),
            key_value_schema(),
            vec![inserts(ids_of(sequence))],
        )
        .await
        .expect_err("a failed WAL acknowledges nothing");
        assert_eq!(status.code(), Code::Unavailable, "{status:?}");
        assert!(status.message().contains("WAL has failed"), "{status:?}");
    }
    let numbers = probe(&mut client, TABLE, ORIGIN).await;
    assert_eq!(numbers.memory_sequence_number, Some(last_acknowledged));
    assert!(
        node.log_text().contains("WAL failed"),
        "the node logs the failure"
    );
    node.kill();
    assert_wal_verifies(&data);

    // Restart without the fault: every acknowledged transaction is back.
    // The one whose fdatasync failed may be too (its write reached the
    // page cache), the refused ones never are.
    let node = ServeProcess::start(&data, &["--max-lag-ms", "50"]);
    let mut client = node.client().await;
    let recovered = probe(&mut client, TABLE, ORIGIN)
        .await
        .memory_sequence_number
        .expect("acknowledged transactions are recovered");
    assert!(
        (last_acknowledged..=faulted).contains(&recovered),
        "recovered {recovered}, acknowledged up to {last_acknowledged}, fault at {faulted}"
    );
    assert_eq!(
        probe(&mut client, TABLE, "other")
            .await
            .memory_sequence_number,
        None
    );
    wait_durable(&mut client, TABLE, ORIGIN, recovered).await;
    let expected: Vec<(i64, Option<String>)> = (1..=recovered)
        .flat_map(ids_of)
        .map(|id| (id, Some(format!("v{id}"))))
        .collect();
    assert_eq!(table_rows(&data, TABLE).await, expected, "each change once");
    node.kill();
    assert_wal_verifies(&data);
}

/// A tmpfs mounted for one test, unmounted when dropped (also when the test
/// fails). Drop the node using it first.
struct Tmpfs {
    mount_point: PathBuf,
}

impl Tmpfs {
    fn mount(mount_point: &Path, size: &str) -> Result<Tmpfs, String> {
        std::fs::create_dir_all(mount_point).map_err(|e| e.to_string())?;
        let output = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(mount_point)
            .output()
            .map_err(|e| format!("cannot run mount: {e}"))?;
        if !output.status.success() {
            return Err(format!(
                "cannot mount a tmpfs (not root?): {}",
                String::from_utf8_lossy(&output.stderr).trim()
            ));
        }
        Ok(Tmpfs {
            mount_point: mount_point.to_path_buf(),
        })
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let unmounted = Command::new("umount")
            .arg(&self.mount_point)
            .status()
            .is_ok_and(|s| s.success());
        if !unmounted {
            let _ = Command::new("umount")
                .arg("-l")
                .arg(&self.mount_point)
                .status();
        }
    }
}

fn big_inserts(sequence: u64) -> std::ops::Range<i64> {
    let rows = 2_000;
    let first = sequence as i64 * rows;
    first..first + rows
}

/// The data frames in the WAL that carry rows.
fn data_frames_with_rows(data: &Path) -> usize {
    frames_of_kind(&wal_dump(data), "data")
        .into_iter()
        .filter(|frame| frame["rows"].as_u64().is_some_and(|rows| rows > 0))
        .count()
}

fn assert_disk_full(status: &tonic::Status) {
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(status.message().contains("disk is full"), "{status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_disk_refuses_puts_until_space_returns_and_keeps_the_wal_usable() {
    let dir = tempfile::tempdir().expect("tempdir");
    let tmpfs = match Tmpfs::mount(&dir.path().join("mnt"), "8m") {
        Ok(tmpfs) => tmpfs,
        Err(reason) => {
            eprintln!("skipped: {reason}");
            return;
        }
    };
    // Space to give back later: written before the node starts.
    let filler = tmpfs.mount_point.join("filler");
    std::fs::write(&filler, vec![1u8; 2 << 20]).expect("write the filler file");
    let data = tmpfs.mount_point.join("data");
    let args = [
        NO_FLUSH[0],
        NO_FLUSH[1],
        "--segment-init",
        "grow",
        "--segment-bytes",
        "1048576",
    ];
    let node = ServeProcess::start(&data, &args);
    let mut client = node.client().await;

    let mut last_acknowledged = 0;
    let mut refused = None;
    for sequence in 1..=1_000u64 {
        let command = command(TABLE, ORIGIN, Some(sequence));
        let batches = vec![inserts(big_inserts(sequence))];
        match put(&mut client, &command, key_value_schema(), batches).await {
            Ok(response) => {
                assert_eq!(response.memory_sequence_number, Some(sequence));
                last_acknowledged = sequence;
            }
            Err(status) => {
                assert_disk_full(&status);
                refused = Some(sequence);
                break;
            }
        }
    }
    let refused = refused.expect("an 8 MiB tmpfs fills up");
    eprintln!("the disk filled after {last_acknowledged} acknowledged puts");
    assert!(
        last_acknowledged > 0,
        "some puts fit before the disk filled"
    );
    // The node stays up and reports what it acknowledged.
    let numbers = probe(&mut client, TABLE, ORIGIN).await;
    assert_eq!(numbers.memory_sequence_number, Some(last_acknowledged));

    // Space returns: the refused transaction and later ones are accepted.
    std::fs::remove_file(&filler).expect("remove the filler file");
    for sequence in refused..refused + 3 {
        let response = put_inserts(
            &mut client,
            &command(TABLE, ORIGIN, Some(sequence)),
            big_inserts(sequence),
        )
        .await;
        assert_eq!(response.memory_sequence_number, Some(sequence));
        last_acknowledged = sequence;
    }
    node.kill();
    assert_wal_verifies(&data);
    assert_eq!(
        data_frames_with_rows(&data),
        last_acknowledged as usize,
        "one data frame per acknowledged transaction, nothing of a refused one"
    );

    let node = ServeProcess::start(&data, &args);
    assert_eq!(node.start_field("aborted_transactions"), "0");
    let mut client = node.client().await;
    let numbers = probe(&mut client, TABLE, ORIGIN).await;
    assert_eq!(numbers.memory_sequence_number, Some(last_acknowledged));
    node.kill();
    assert_wal_verifies(&data);
    drop(tmpfs);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn injected_no_space_write_refuses_only_that_put() {
    if let Some(reason) = strace_unusable() {
        eprintln!("skipped: {reason}");
        return;
    }
    const ACKS_BEFORE_FAULT: usize = 2;
    let dir = tempfile::tempdir().expect("tempdir");
    let when = ACKS_BEFORE_FAULT + 1;
    let data = dir.path().join("data");
    let trace = dir.path().join("fault.trace");
    let inject = format!("pwrite64:error=ENOSPC:when={when}");
    // Growing segments: creating the first one is a single header write,
    // so the opening thread never reaches the injected call.
    let args = [NO_FLUSH[0], NO_FLUSH[1], "--segment-init", "grow"];
    let node = start_traced(
        &strace_wrapper("pwrite64", &trace, Some(&inject)),
        &data,
        &args,
    );
    let mut client = node.client().await;
    for sequence in 1..=ACKS_BEFORE_FAULT as u64 {
        put_inserts(
            &mut client,
            &command(TABLE, ORIGIN, Some(sequence)),
            ids_of(sequence),
        )
        .await;
    }
    let refused = ACKS_BEFORE_FAULT as u64 + 1;
    let status = put(
        &mut client,
        &command(TABLE, ORIGIN, Some(refused)),
        key_value_schema(),
        vec![inserts(ids_of(refused))],
    )
    .await
    .expect_err("the injected ENOSPC refuses this put");
    assert_disk_full(&status);
    // The very next write has space: the resend and a later put succeed.
    for sequence in refused..refused + 2 {
        let response = put_inserts(
            &mut client,
            &command(TABLE, ORIGIN, Some(sequence)),
            ids_of(sequence),
        )
        .await;
        assert_eq!(response.memory_sequence_number, Some(sequence));
    }
    let last_acknowledged = refused + 1;
    node.kill();
    assert_wal_verifies(&data);
    assert_eq!(data_frames_with_rows(&data), last_acknowledged as usize);

    let node = ServeProcess::start(&data, &["--max-lag-ms", "50"]);
    let mut client = node.client().await;
    let numbers = probe(&mut client, TABLE, ORIGIN).await;
    assert_eq!(numbers.memory_sequence_number, Some(last_acknowledged));
    wait_durable(&mut client, TABLE, ORIGIN, last_acknowledged).await;
    let expected: Vec<(i64, Option<String>)> = (1..=last_acknowledged)
        .flat_map(ids_of)
        .map(|id| (id, Some(format!("v{id}"))))
        .collect();
    assert_eq!(table_rows(&data, TABLE).await, expected, "each change once");
}
