"""The readers people use agree with the model. Writes a table through the
node (inserts, updates, key changes, deletes, every stored type family,
one flush per transaction so maintenance compacts in between), then reads
it with the deltalake package, polars (read_delta) and DuckDB (delta_scan,
the extension loaded offline from the duckdb-ext-delta wheel). Arguments:
node address, table directory. Prints "ok <rows>" at the end.
"""

import datetime
import decimal
import json
import os
import random
import sys

import pyarrow as pa

sys.path.insert(0, os.path.dirname(__file__))
import stranger  # noqa: E402

wire = stranger.wire
OLD, NEW, VALUE = wire.OLD_PK, wire.NEW_PK, wire.VALUE

COLUMNS = [
    ("name", pa.utf8()),
    ("amount", pa.float64()),
    ("flag", pa.bool_()),
    ("day", pa.date32()),
    ("at", pa.timestamp("us", tz="UTC")),
    ("small", pa.int32()),
    ("price", pa.decimal128(10, 2)),
    ("blob", pa.binary()),
]
DESCRIPTORS = [(OLD, "id"), (NEW, "id")] + [(VALUE, name) for name, _ in COLUMNS]
SCHEMA = pa.schema(
    [pa.field("old_id", pa.int64()), pa.field("new_id", pa.int64())]
    + [pa.field(name, kind) for name, kind in COLUMNS]
)
PATH = "readers/everything"
ORIGIN = "readers-origin"


def values(rng, key):
    if rng.random() < 0.15:
        return {name: None for name, _ in COLUMNS}
    epoch = datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone.utc)
    return {
        "name": f"name {key} {rng.randrange(1000)} é",
        "amount": rng.choice([0.5, -1.25, 1e10, rng.random()]),
        "flag": rng.random() < 0.5,
        "day": datetime.date(2026, 1, 1) + datetime.timedelta(days=rng.randrange(-500, 500)),
        "at": epoch + datetime.timedelta(microseconds=rng.randrange(-10**12, 10**12)),
        "small": rng.randrange(-2**31, 2**31),
        "price": decimal.Decimal(rng.randrange(-10**9, 10**9)) / 100,
        "blob": bytes(rng.randrange(256) for _ in range(rng.randrange(8))),
    }


def batch(changes):
    arrays = [
        pa.array([old for old, _, _ in changes], pa.int64()),
        pa.array([new for _, new, _ in changes], pa.int64()),
    ]
    for name, kind in COLUMNS:
        arrays.append(pa.array([row.get(name) if row else None for _, _, row in changes], kind))
    return pa.record_batch(arrays, schema=SCHEMA)


def transactions(rng, model, count):
    """Yields lists of (old, new, values) and applies them to model."""
    next_key = 1
    for number in range(count):
        # The first half only inserts new keys: appended files, which
        # maintenance compacts before the updates and deletes come.
        inserting = number < count // 2
        changes = []
        for _ in range(rng.randrange(1, 8)):
            keys = sorted(model)
            kind = rng.random()
            if not keys or inserting or kind < 0.45:
                key, next_key = next_key, next_key + 1
                row = values(rng, key)
                changes.append((None, key, row))
                model[key] = row
            elif kind < 0.7:
                key = rng.choice(keys)
                row = values(rng, key)
                changes.append((key, key, row))
                model[key] = row
            elif kind < 0.85:
                old = rng.choice(keys)
                new, next_key = next_key, next_key + 1
                row = values(rng, new)
                changes.append((old, new, row))
                del model[old]
                model[new] = row
            else:
                key = rng.choice(keys)
                changes.append((key, None, None))
                del model[key]
        yield changes


def canonical(value):
    if isinstance(value, datetime.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=datetime.timezone.utc)
        return value.astimezone(datetime.timezone.utc).isoformat()
    if isinstance(value, datetime.date):
        return value.isoformat()
    if isinstance(value, decimal.Decimal):
        return format(value.quantize(decimal.Decimal("0.01")), "f")
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).hex()
    if isinstance(value, float):
        return repr(value)
    return value


def rows_of(dicts):
    rows = []
    for row in dicts:
        rows.append(tuple(canonical(row[name]) for name in ["id"] + [n for n, _ in COLUMNS]))
    return sorted(rows, key=lambda r: r[0])


def model_rows(model):
    return rows_of([dict(id=key, **row) for key, row in model.items()])


def read_deltalake(path):
    from deltalake import DeltaTable

    table = DeltaTable(path)
    protocol = table.protocol()
    stranger.check(
        (protocol.min_reader_version, protocol.min_writer_version) == (1, 2),
        f"protocol {protocol}",
    )
    return rows_of(table.to_pyarrow_table().to_pylist())


def read_polars(path):
    import polars as pl

    return rows_of(pl.read_delta(path).to_dicts())


def read_duckdb(path):
    import duckdb
    import duckdb_ext  # the wheel of duckdb-ext-delta

    # A namespace package (no __init__.py): its one directory.
    extensions = os.path.join(list(duckdb_ext.__path__)[0], "extensions")
    con = duckdb.connect(config={"extension_directory": extensions})
    con.execute("SET TimeZone = 'UTC'")
    con.execute("LOAD delta")
    table = con.execute(f"SELECT * FROM delta_scan('{path}')").fetch_arrow_table()
    return rows_of(table.to_pylist())


def main():
    address, table_dir = sys.argv[1:3]
    count = int(os.environ.get("FLIGHTLOG_READERS_TRANSACTIONS", "40"))
    node = stranger.Node(address, None)
    rng = random.Random(11)
    model = {}
    for sequence, changes in enumerate(transactions(rng, model, count), start=1):
        cmd = wire.data_sync_command(PATH, ORIGIN, DESCRIPTORS, sequence)
        answer = node.put(cmd, SCHEMA, [batch(changes)])
        stranger.check(answer["accepted"], f"put {sequence}: {answer}")
        node.wait_durable(ORIGIN, sequence)
    expected = model_rows(model)
    metrics = node.metrics()
    readers = {"deltalake": read_deltalake, "polars": read_polars, "duckdb": read_duckdb}
    for name, read in readers.items():
        got = read(table_dir)
        if got != expected:
            missing = [r for r in expected if r not in got][:3]
            extra = [r for r in got if r not in expected][:3]
            stranger.fail(f"{name} disagrees with the model ({len(got)} rows, {len(expected)} expected); "
                          f"missing {missing}, unexpected {extra}")
    maintenance = metrics["maintenance"]
    stranger.check(maintenance["compactions"] > 0, f"no compaction happened in between: {metrics}")
    stranger.check(maintenance["failures"] == 0, f"maintenance failed: {metrics}")
    print(json.dumps({"flush_commits": metrics["flush"]["commits"], "maintenance": maintenance}))
    print(f"ok {len(expected)}")


if __name__ == "__main__":
    main()
