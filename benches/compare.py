#!/usr/bin/env python3
"""flightlog next to its references, in one invocation, as ratios.

    python3 benches/compare.py                 # everything
    python3 benches/compare.py --only fio,ack  # a subset: fio, ack, lake

Runs, in this order and in one sitting:

- **fio** (the disk's ceiling for an acknowledgement):
  `fio --name=x --rw=write --bs=4k --fdatasync=1 --size=64m` in a temp dir
  under `target/bench-compare/` (the disk the WAL of both flightlog runs
  lives on). IOPS and fdatasync p99.
- **ack** path: `target/release/flightlog-ack-bench` (src/bin) against a
  fresh release `flightlog serve` (no flush due) per client count, 1/4/16/64
  clients, one-message transactions of 100 rows for `--ack-seconds` each;
  acks/s against fio's IOPS, ack p99 against fio's fdatasync p99.
- **lake**: Python `deltalake.write_deltalake`, 10 appends of 100k rows
  (Int64 key, Utf8, Float64) into a new local table, then
  `DeltaTable.merge(...).when_matched_update_all().when_not_matched_insert_all()`
  of 100k upserts (10 % of the keys, a seeded random sample, so spread over
  every file); then the release `flightlog serve` (`--max-lag-ms 10`, local
  `file://` store on the same disk) gets the same rows through Flight
  `do_put` (pyarrow client): 10 transactions of 100k inserts, timed first put
  to the last one durable, then one transaction of the 100k upserts (same-key
  updates), timed put to durable. Both tables are checked to hold 1 M rows.
- **tables**: `moto_server` (S3) on loopback as the default store; one
  table's put -> durable (median of 3), then 100 tables with one 10-row
  transaction each, first put -> all durable, at `--flush-concurrency` 1 and
  2 x cores.

Prints one table of ratios (flightlog / reference), the form BENCHMARKS.md
reports. Needs pyarrow and deltalake: when the running interpreter lacks
them, the script re-runs itself in the venv the tests use
(`target/tmp/flightlog-python`, made and filled with pip if missing) and says
so. fio: Debian `fio`; when absent the fio rows say so and the ratios against
it are left out. The flightlog binary is `target/release/flightlog`
and `flightlog-ack-bench` beside it (`cargo build --release --bins` when
missing, which takes ~25-50 min on 2 cores).
"""

import argparse
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
WORK = os.path.join(ROOT, "target", "bench-compare")
VENV = os.path.join(ROOT, "target", "tmp", "flightlog-python")

ROWS_PER_PUT = 100_000
PUTS = 10
UPSERTS = 100_000


def ensure_python_packages():
    try:
        import deltalake  # noqa: F401
        import pyarrow.flight  # noqa: F401
        return
    except ImportError:
        pass
    python = os.path.join(VENV, "bin", "python")
    if os.path.abspath(sys.executable) == os.path.abspath(python):
        sys.exit("compare.py: pyarrow/deltalake do not import even in " + VENV)
    if not os.path.exists(python):
        print(f"compare.py: making the venv {VENV}", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "venv", VENV], check=True)
    probe = subprocess.run([python, "-c", "import deltalake, pyarrow.flight"], capture_output=True)
    if probe.returncode != 0:
        print("compare.py: pip install pyarrow deltalake into the venv", file=sys.stderr)
        subprocess.run([python, "-m", "pip", "install", "--quiet",
                        "--disable-pip-version-check", "pyarrow", "deltalake"], check=True)
    os.execv(python, [python] + sys.argv)


# ---------------------------------------------------------------- fio

def run_fio(overwrite=False):
    """The issue's fio line; `overwrite` adds --overwrite=1 (rewrites allocated
    blocks, as the WAL's recycled segments do: no ext4 size change per sync)."""
    if shutil.which("fio") is None:
        print("fio: not installed (Debian: apt-get install -y fio); fio ratios left out")
        return None
    directory = tempfile.mkdtemp(prefix="fio-", dir=WORK)
    try:
        out = subprocess.run(
            ["fio", "--name=x", "--rw=write", "--bs=4k", "--fdatasync=1", "--size=64m",
             "--ioengine=sync", f"--directory={directory}", "--output-format=json",
             *(["--overwrite=1"] if overwrite else [])],
            check=True, capture_output=True, text=True).stdout
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    job = json.loads(out)["jobs"][0]
    sync = job["sync"]["lat_ns"]
    result = {
        "iops": job["write"]["iops"],
        "sync_p50_ms": sync["percentile"]["50.000000"] / 1e6,
        "sync_p99_ms": sync["percentile"]["99.000000"] / 1e6,
    }
    kind = "overwrite" if overwrite else "append"
    print(f"fio 4 KiB {kind} + fdatasync: {result['iops']:.0f} IOPS, fdatasync "
          f"p50 {result['sync_p50_ms']:.3f} ms p99 {result['sync_p99_ms']:.3f} ms")
    return result


# ---------------------------------------------------------------- ack path

def run_ack(binary, clients, seconds, nodelay=True, directory=None):
    """`flightlog-ack-bench` against a fresh release node per client count
    (`--max-lag-ms` of an hour: no flush runs, only the ingest path)."""
    tool = os.path.join(os.path.dirname(binary), "flightlog-ack-bench")
    if not os.path.exists(tool):
        tool = os.path.join(ROOT, "target", "release", "flightlog-ack-bench")
    print(f"ack: {tool} against {binary}, {seconds} s per client count,"
          f" client TCP_NODELAY {'on' if nodelay else 'off'}", flush=True)
    print("  | clients | rows/put | puts | puts/s | rows/s | ack p50 ms | ack p99 ms | fsyncs/put |")
    rows = {}
    for count in clients:
        data_dir = os.path.join(directory or WORK, f"flightlog-ack-{count}")
        shutil.rmtree(data_dir, ignore_errors=True)
        node = FlightlogNode(binary, data_dir, ["--max-lag-ms", "3600000"])
        try:
            done = subprocess.run([tool, node.address, str(count), str(seconds), "100",
                                   "1" if nodelay else "0"], capture_output=True, text=True)
            if done.returncode != 0:
                sys.exit(f"flightlog-ack-bench failed at {count} clients: {done.stderr.strip()}")
            line = done.stdout.strip()
        finally:
            node.stop()
            shutil.rmtree(data_dir, ignore_errors=True)
        print("  " + line, flush=True)
        cells = [c.strip() for c in line.strip("|").split("|")]
        rows[count] = {"acks": float(cells[3]), "p50_ms": float(cells[5]),
                       "p99_ms": float(cells[6]), "fsyncs_per_put": float(cells[7])}
    return rows


# ---------------------------------------------------------------- lake

def make_data():
    import pyarrow as pa
    keys = list(range(ROWS_PER_PUT * PUTS))
    batches = []
    for put in range(PUTS):
        ids = keys[put * ROWS_PER_PUT:(put + 1) * ROWS_PER_PUT]
        batches.append(pa.table({
            "id": pa.array(ids, pa.int64()),
            "name": pa.array([f"row-{i:012}" for i in ids], pa.utf8()),
            "amount": pa.array([i * 0.5 for i in ids], pa.float64()),
        }))
    chosen = sorted(random.Random(9).sample(keys, UPSERTS))
    upserts = pa.table({
        "id": pa.array(chosen, pa.int64()),
        "name": pa.array([f"upd-{i:012}" for i in chosen], pa.utf8()),
        "amount": pa.array([-i * 0.5 for i in chosen], pa.float64()),
    })
    return batches, upserts


def reference_lake(batches, upserts):
    from deltalake import DeltaTable, write_deltalake
    path = os.path.join(WORK, "reference-table")
    shutil.rmtree(path, ignore_errors=True)
    started = time.perf_counter()
    for batch in batches:
        write_deltalake(path, batch, mode="append")
    inserted = time.perf_counter() - started
    started = time.perf_counter()
    (DeltaTable(path).merge(source=upserts, predicate="t.id = s.id", source_alias="s",
                            target_alias="t")
     .when_matched_update_all().when_not_matched_insert_all().execute())
    merged = time.perf_counter() - started
    rows = DeltaTable(path).to_pyarrow_table().num_rows
    assert rows == ROWS_PER_PUT * PUTS, rows
    shutil.rmtree(path, ignore_errors=True)
    return {"insert_rows_s": ROWS_PER_PUT * PUTS / inserted, "insert_s": inserted,
            "upsert_rows_s": UPSERTS / merged, "upsert_s": merged}


class FlightlogNode:
    """`flightlog serve` on an ephemeral port with its own data dir."""

    def __init__(self, binary, data_dir, extra=(), wrapper=()):
        import pyarrow.flight as flight
        self.log_path = data_dir + ".stderr.log"
        self.log = open(self.log_path, "w")
        self.wrapped = bool(wrapper)
        self.process = subprocess.Popen(
            [*wrapper, binary, "serve", "--listen", "127.0.0.1:0", "--data-dir", data_dir, *extra],
            stdout=subprocess.PIPE, stderr=self.log, text=True)
        line = self.process.stdout.readline()
        if "listening on" not in line:
            self.stop()
            sys.exit(f"flightlog serve did not start: {line!r}; see {self.log_path}")
        self.address = line.split("listening on ", 1)[1].split(" ", 1)[0]
        self.client = flight.FlightClient(f"grpc://{self.address}")

    def stop(self):
        if self.wrapped:
            # A profiler writes its data when interrupted, and stops the node.
            self.process.send_signal(2)
            self.process.wait(timeout=300)
        else:
            self.process.kill()
            self.process.wait()
        self.log.close()


def sync_command(path, origin, sequence):
    sys.path.insert(0, os.path.join(ROOT, "examples"))
    import sync_client as wire
    if not path:
        # A probe: only the origin (no path, no descriptors, no sequence).
        return wire.any_wrap("DataSyncCommand", wire.string_field(4, origin))
    descriptors = [(wire.OLD_PK, "id"), (wire.NEW_PK, "id"), (wire.VALUE, "name"),
                   (wire.VALUE, "amount")]
    return wire.any_wrap("DataSyncCommand",
                         wire.data_sync_command(path, origin, descriptors, sequence))


def decode_response(data):
    sys.path.insert(0, os.path.join(ROOT, "examples"))
    import sync_client as wire
    return wire.decode_response(data)


def to_sync_batch(table, old_keys):
    """Rows in the sync encoding: old_id null (insert) or = id (same-key update)."""
    import pyarrow as pa
    schema = pa.schema([("old_id", pa.int64()), ("new_id", pa.int64()),
                        ("name", pa.utf8()), ("amount", pa.float64())])
    ids = table.column("id").combine_chunks()
    old = ids if old_keys else pa.nulls(len(ids), pa.int64())
    return pa.record_batch([old, ids, table.column("name").combine_chunks(),
                            table.column("amount").combine_chunks()], schema=schema)


def put(node, path, origin, sequence, batches):
    import pyarrow.flight as flight
    descriptor = flight.FlightDescriptor.for_command(sync_command(path, origin, sequence))
    schema = batches[0].schema if batches else None
    if schema is None:
        import pyarrow as pa
        schema = pa.schema([])
    writer, reader = node.client.do_put(descriptor, schema)
    for batch in batches:
        writer.write_batch(batch)
    writer.done_writing()
    metadata = reader.read()
    writer.close()
    return decode_response(metadata.to_pybytes() if metadata is not None else b"")


def wait_durable(node, origin, sequence, timeout=600.0):
    deadline = time.monotonic() + timeout
    while True:
        answer = put(node, "", origin, None, [])
        if (answer.get("durable_sequence_number") or 0) >= sequence:
            return time.perf_counter()
        if time.monotonic() > deadline:
            sys.exit(f"{origin}/{sequence} not durable after {timeout} s: {answer}")
        time.sleep(0.002)


def flush_log_summary(log_path):
    """Per commit of the node's log: rows and the Delta write+commit time."""
    import re
    commits = []
    with open(log_path) as log:
        for line in log:
            line = re.sub(r"\x1b\[[0-9;]*m", "", line)
            if "flushed" not in line:
                continue
            fields = dict(part.split("=", 1) for part in line.split() if "=" in part)
            commits.append((int(fields.get("rows_written", 0)), int(fields.get("elapsed_ms", 0))))
    return commits


def flightlog_lake(binary, batches, upserts, extra, wrapper=()):
    data_dir = os.path.join(WORK, "flightlog-data")
    shutil.rmtree(data_dir, ignore_errors=True)
    node = FlightlogNode(binary, data_dir, ["--max-lag-ms", "10", *extra], wrapper)
    try:
        inserts = [to_sync_batch(b, old_keys=False) for b in batches]
        updates = to_sync_batch(upserts, old_keys=True)
        started = time.perf_counter()
        for sequence, batch in enumerate(inserts, start=1):
            answer = put(node, "bench/compare", "bench", sequence, [batch])
            assert answer["accepted"], answer
        acked = time.perf_counter()
        durable = wait_durable(node, "bench", PUTS)
        inserted = durable - started
        started = time.perf_counter()
        answer = put(node, "bench/compare", "bench", PUTS + 1, [updates])
        assert answer["accepted"], answer
        upserted = wait_durable(node, "bench", PUTS + 1) - started
        from deltalake import DeltaTable
        table = DeltaTable(os.path.join(data_dir, "lake", "bench", "compare"))
        rows = table.to_pyarrow_table().num_rows
        assert rows == ROWS_PER_PUT * PUTS, rows
    finally:
        node.stop()
    commits = flush_log_summary(node.log_path)
    return {"insert_rows_s": ROWS_PER_PUT * PUTS / inserted, "insert_s": inserted,
            "insert_ack_s": acked - (durable - inserted),
            "upsert_rows_s": UPSERTS / upserted, "upsert_s": upserted, "commits": commits}


# ---------------------------------------------------------------- tables

def start_moto():
    if shutil.which("moto_server") is None:
        print("tables: moto_server not on PATH (pip install 'moto[server]'); left out")
        return None, None
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    process = subprocess.Popen(["moto_server", "-H", "127.0.0.1", "-p", str(port)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            time.sleep(0.1)
    import http.client
    connection = http.client.HTTPConnection("127.0.0.1", port)
    connection.request("PUT", "/lake")
    assert connection.getresponse().status == 200
    return process, f"http://127.0.0.1:{port}"


def small_batch(key):
    import pyarrow as pa
    return to_sync_batch(pa.table({
        "id": pa.array(range(key, key + 10), pa.int64()),
        "name": pa.array([f"t{key}"] * 10, pa.utf8()),
        "amount": pa.array([1.0] * 10, pa.float64())}), old_keys=False)


def many_tables(binary, endpoint, concurrency, tables):
    """One table's put -> durable (median of 3 fresh tables), then `tables`
    fresh tables with one 10-row transaction each, first put -> all durable."""
    data_dir = os.path.join(WORK, f"flightlog-tables-{concurrency or 0}")
    shutil.rmtree(data_dir, ignore_errors=True)
    os.environ.update({"AWS_ENDPOINT_URL": endpoint, "AWS_REGION": "us-east-1",
                       "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test",
                       "AWS_ALLOW_HTTP": "true"})
    prefix = f"s3://lake/c{concurrency or 0}-{int(time.time())}"
    extra = ["--max-lag-ms", "10", "--default-store", prefix]
    if concurrency is not None:
        extra += ["--flush-concurrency", str(concurrency)]
    node = FlightlogNode(binary, data_dir, extra)
    try:
        singles = []
        for sequence in range(1, 4):
            started = time.perf_counter()
            put(node, f"single{sequence}", "one", sequence, [small_batch(sequence * 10)])
            singles.append(wait_durable(node, "one", sequence) - started)
        single = sorted(singles)[1]
        started = time.perf_counter()
        for table in range(1, tables + 1):
            put(node, f"many{table}", "many", table, [small_batch(table * 10)])
        everything = wait_durable(node, "many", tables) - started
    finally:
        node.stop()
    print(f"tables: --flush-concurrency {concurrency or '(none)'}: one table put -> durable {single * 1e3:.0f} ms;"
          f" {tables} tables {everything:.2f} s = {everything / single:.1f} x one table", flush=True)
    return {"single_s": single, "all_s": everything}


# ---------------------------------------------------------------- memory

def process_memory(pid):
    """VmRSS, VmHWM (peak RSS), RssAnon and RssFile of `pid` in bytes, from /proc."""
    fields = {}
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
                fields[key] = int(value.split()[0]) * 1024
    return fields


def backlog_batches(table_index, rows, start):
    """`rows` sync rows for table `table_index`: tables 0-2 get fresh keys
    (insert-only flushes), table 3 the same 20k keys again and again
    (same-key updates: the general squash path)."""
    import pyarrow as pa
    if table_index == 3:
        ids = pa.array([i % 20_000 for i in range(start, start + rows)], pa.int64())
        old = ids
    else:
        ids = pa.array(range(start, start + rows), pa.int64())
        old = pa.nulls(rows, pa.int64())
    names = pa.array([f"name-{i % 1000:06}" for i in range(rows)], pa.utf8())
    amounts = pa.array([float(i) for i in range(rows)], pa.float64())
    schema = pa.schema([("old_id", pa.int64()), ("new_id", pa.int64()),
                        ("name", pa.utf8()), ("amount", pa.float64())])
    return pa.record_batch([old, ids, names, amounts], schema=schema)


def memory_case(binary, budget, factor, extra):
    """Peak RSS while `factor` x `budget` bytes of pending WAL data drain.

    1. Idle: a fresh node, a 10-row insert and then an update of those rows
       made durable, with maintenance after each flush (so the flush, merge
       and compaction code has run once); its VmRSS is the idle RSS.
    2. Backlog: a node that never flushes (`--max-lag-ms` of an hour, no
       size or watermark trigger) takes 4 tables' transactions of ~1 MiB
       until its WAL holds `factor` x `budget` bytes; then SIGKILL.
    3. Drain: a node on that data dir with `--memory-budget budget` (when the
       binary has the flag) recovers and flushes everything; its VmRSS is
       sampled every 5 ms until every origin is durable, and VmHWM read at
       the end (it includes recovery).
    """
    huge = str(1 << 50)
    idle_dir = os.path.join(WORK, "flightlog-memory-idle")
    shutil.rmtree(idle_dir, ignore_errors=True)
    node = FlightlogNode(binary, idle_dir, ["--max-lag-ms", "10", "--checkpoint-interval-commits",
                                            "1", *extra])
    try:
        # The code paths the drain runs, on a tiny table: insert-only and
        # update flushes, then maintenance after each (so their code pages
        # count as the binary's, not as the backlog's).
        put(node, "memory/idle", "idle", 1, [small_batch(0)])
        wait_durable(node, "idle", 1)
        updates = small_batch(0)
        updates = updates.set_column(0, "old_id", updates.column(1))
        put(node, "memory/idle", "idle", 2, [updates])
        wait_durable(node, "idle", 2)
        time.sleep(1.0)
        idle = process_memory(node.process.pid)
        idle_rss, idle_hwm = idle["VmRSS"], idle["VmHWM"]
    finally:
        node.stop()
        shutil.rmtree(idle_dir, ignore_errors=True)

    data_dir = os.path.join(WORK, "flightlog-memory")
    shutil.rmtree(data_dir, ignore_errors=True)
    node = FlightlogNode(binary, data_dir, [
        "--max-lag-ms", "3600000", "--table-flush-bytes", huge,
        "--pending-bytes-low-watermark", huge, "--pending-bytes-high-watermark", huge, *extra])
    rows_per_txn = 30_000  # ~1 MiB of Arrow data (and of WAL) per transaction
    sequence = 0
    backlog = 0
    try:
        while backlog < budget * factor:
            for table in range(4):
                sequence += 1
                batch = backlog_batches(table, rows_per_txn, sequence * rows_per_txn)
                answer = put(node, f"memory/t{table}", f"o{table}", sequence, [batch])
                assert answer["accepted"], answer
                backlog += batch.nbytes
    finally:
        node.process.kill()
        node.process.wait()
        node.log.close()

    help_text = subprocess.run([binary, "serve", "--help"], capture_output=True, text=True).stdout
    flags = ["--max-lag-ms", "10", *extra]
    if "--memory-budget" in help_text:
        flags += ["--memory-budget", str(budget)]
    import threading
    samples = []
    stop = threading.Event()
    started = time.perf_counter()
    node = FlightlogNode(binary, data_dir, flags)
    pid = node.process.pid

    def sample():
        while not stop.is_set():
            try:
                samples.append(process_memory(pid))
            except OSError:
                return
            time.sleep(0.005)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        last = {f"o{t}": max(s for s in range(1, sequence + 1) if (s - 1) % 4 == t)
                for t in range(4)}
        for origin, seq in last.items():
            wait_durable(node, origin, seq)
        drained = time.perf_counter() - started
        stop.set()
        sampler.join()
        hwm = process_memory(pid)["VmHWM"]
    finally:
        stop.set()
        node.stop()
    commits = flush_log_summary(node.log_path)
    top = max(samples, key=lambda m: m.get("VmRSS", 0)) if samples else {}
    peak = top.get("VmRSS", 0)
    result = {"budget": budget, "backlog": backlog, "idle_rss": idle_rss, "idle_hwm": idle_hwm,
              "peak_rss": peak, "hwm": hwm, "drain_s": drained, "commits": len(commits),
              "has_flag": "--memory-budget" in help_text}
    mib = 1 << 20
    print(f"memory: budget {budget / mib:.0f} MiB, backlog {backlog / mib:.0f} MiB of Arrow data in "
          f"{sequence} transactions over 4 tables, drained in {drained:.1f} s by {len(commits)} "
          f"commits{'' if result['has_flag'] else ' (binary has no --memory-budget)'}; idle RSS "
          f"{idle_rss / mib:.0f} MiB (anon {idle['RssAnon'] / mib:.0f}, file {idle['RssFile'] / mib:.0f}); "
          f"peak RSS while draining {peak / mib:.0f} MiB (anon {top.get('RssAnon', 0) / mib:.0f}, "
          f"file {top.get('RssFile', 0) / mib:.0f}; sampled every "
          f"5 ms), VmHWM {hwm / mib:.0f} MiB (includes recovery); "
          f"(peak - idle) / budget = {(peak - idle_rss) / budget:.2f}", flush=True)
    shutil.rmtree(data_dir, ignore_errors=True)
    return result


# ---------------------------------------------------------------- main

def release_binary():
    binary = os.path.join(ROOT, "target", "release", "flightlog")
    if not os.path.exists(binary):
        print("compare.py: no release binary; cargo build --release (long on 2 cores)", flush=True)
        subprocess.run(["cargo", "build", "--release", "--bins"], cwd=ROOT, check=True)
    return binary


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", default="fio,ack,lake,tables,memory")
    parser.add_argument("--memory-budget", type=int, default=32 << 20,
                        help="bytes; the memory case drains 10 x this much WAL")
    parser.add_argument("--tables", type=int, default=100)
    parser.add_argument("--clients", default="1,4,16,64")
    parser.add_argument("--ack-seconds", type=int, default=3)
    parser.add_argument("--ack-dir", help="parent of the ack nodes' data dirs (default "
                        "target/bench-compare; /dev/shm takes the disk out to see the network part)")
    parser.add_argument("--client-nagle", action="store_true",
                        help="ack clients without TCP_NODELAY (to measure Nagle's part)")
    parser.add_argument("--binary", help="flightlog binary (default target/release/flightlog)")
    parser.add_argument("--wrap", help="run the lake node under this command, e.g. "
                        "'perf record -g -o target/bench-compare/perf.data --'")
    parser.add_argument("--serve-arg", action="append", default=[],
                        help="extra argument for flightlog serve (repeatable)")
    args = parser.parse_args()
    only = set(args.only.split(","))
    ensure_python_packages()
    os.makedirs(WORK, exist_ok=True)
    print(f"compare.py on {socket.gethostname()}, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())},"
          f" {os.cpu_count()} cores", flush=True)
    fio = run_fio() if "fio" in only or "ack" in only else None
    fio_overwrite = run_fio(overwrite=True) if "fio" in only else None
    ack = {}
    if "ack" in only:
        ack = run_ack(args.binary or release_binary(), [int(c) for c in args.clients.split(",")],
                      args.ack_seconds, nodelay=not args.client_nagle, directory=args.ack_dir)
    reference = ours = None
    if "lake" in only:
        binary = args.binary or release_binary()
        batches, upserts = make_data()
        reference = reference_lake(batches, upserts)
        wrapper = args.wrap.split() if args.wrap else ()
        ours = flightlog_lake(binary, batches, upserts, args.serve_arg, wrapper)
        print(f"flightlog: the 10 insert puts were acknowledged {ours['insert_ack_s']:.2f} s after "
              f"the first was sent; all durable at {ours['insert_s']:.2f} s")
        print(f"flightlog flush commits (rows_written, elapsed_ms of the Delta write+commit): "
              f"{ours['commits']}")

    tables = {}
    if "tables" in only:
        moto, endpoint = start_moto()
        if moto is not None:
            try:
                binary = args.binary or release_binary()
                help_text = subprocess.run([binary, "serve", "--help"], capture_output=True,
                                           text=True).stdout
                # A binary from before --flush-concurrency flushes one table at a time.
                settings = ((1, 2 * (os.cpu_count() or 1)) if "--flush-concurrency" in help_text
                            else (None,))
                for concurrency in settings:
                    tables[concurrency] = many_tables(binary, endpoint, concurrency, args.tables)
            finally:
                moto.kill()
                moto.wait()

    memory = None
    if "memory" in only:
        memory = memory_case(args.binary or release_binary(), args.memory_budget, 10,
                             args.serve_arg)

    print()
    print("| measure | flightlog | reference | ratio | goal |")
    print("|---|---|---|---|---|")
    if reference:
        print(f"| 1 M inserts in 10 puts of 100k, first put -> durable | "
              f"{ours['insert_rows_s'] / 1e6:.2f} M rows/s ({ours['insert_s']:.2f} s) | "
              f"write_deltalake x10: {reference['insert_rows_s'] / 1e6:.2f} M rows/s "
              f"({reference['insert_s']:.2f} s) | "
              f"**{ours['insert_rows_s'] / reference['insert_rows_s']:.2f}** | >= 0.8 |")
        print(f"| 100k upserts (10 % of keys) into 1 M, put -> durable | "
              f"{ours['upsert_rows_s'] / 1e6:.2f} M rows/s ({ours['upsert_s']:.2f} s) | "
              f"DeltaTable.merge: {reference['upsert_rows_s'] / 1e6:.2f} M rows/s "
              f"({reference['upsert_s']:.2f} s) | "
              f"**{ours['upsert_rows_s'] / reference['upsert_rows_s']:.2f}** | >= 2 |")
    for clients, row in sorted(ack.items()):
        goal = {1: ">= 0.9", 64: ">= 20"}.get(clients, "")
        if fio:
            print(f"| {clients} clients, 100-row puts, acks/s | {row['acks']:.0f} | fio "
                  f"{fio['iops']:.0f} IOPS | **{row['acks'] / fio['iops']:.2f}** | {goal} |")
        else:
            print(f"| {clients} clients, 100-row puts, acks/s | {row['acks']:.0f} | (no fio) | | {goal} |")
    if fio_overwrite:
        for clients in (1, 64):
            if clients in ack:
                print(f"| {clients} clients acks/s vs fio --overwrite=1 (the WAL recycles segments) | "
                      f"{ack[clients]['acks']:.0f} | {fio_overwrite['iops']:.0f} IOPS | "
                      f"**{ack[clients]['acks'] / fio_overwrite['iops']:.2f}** | |")
    for clients, row in sorted(ack.items()):
        if fio:
            print(f"| ack p99 at {clients} clients | {row['p99_ms']:.2f} ms | fio fdatasync p99 "
                  f"{fio['sync_p99_ms']:.3f} ms | **{row['p99_ms'] / fio['sync_p99_ms']:.1f}x** | <= 3x |")

    for concurrency, row in tables.items():
        setting = "sequential (no setting)" if concurrency is None else f"--flush-concurrency {concurrency}"
        print(f"| {args.tables} tables x one 10-row transaction, S3 (moto) on loopback, "
              f"{setting}: first put -> all durable | {row['all_s']:.2f} s | "
              f"one table put -> durable {row['single_s'] * 1e3:.0f} ms | "
              f"**{row['all_s'] / row['single_s']:.1f}x** | |")
    if memory:
        mib = 1 << 20
        print(f"| peak RSS while {memory['backlog'] / mib:.0f} MiB of pending WAL drains, "
              f"--memory-budget {memory['budget'] / mib:.0f} MiB | {memory['peak_rss'] / mib:.0f} MiB "
              f"(VmHWM {memory['hwm'] / mib:.0f}) | budget + idle RSS "
              f"{(memory['budget'] + memory['idle_rss']) / mib:.0f} MiB | "
              f"**{(memory['peak_rss'] - memory['idle_rss']) / memory['budget']:.2f}** x budget "
              f"above idle | <= 1.2 |")


if __name__ == "__main__":
    main()
