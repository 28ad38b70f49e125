"""A sync client we did not write against our own code: pyarrow.flight plus
hand-encoded protobuf (examples/sync_client.py), as Seafowl's clients send
it. Shared by the scenarios of conformance.py.

Every call sends exactly what the caller says: no path, no descriptors, an
empty schema, no batches are all possible, so the smallest forms a rule
allows can be sent as they are.
"""

import os
import sys
import time

import pyarrow as pa
import pyarrow.flight as flight

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "examples"))
import sync_client as wire  # noqa: E402  (the example's encoders)

OLD_PK, NEW_PK, CHANGED, VALUE = wire.OLD_PK, wire.NEW_PK, wire.CHANGED, wire.VALUE


def storage_location(location, options=None):
    # message StorageLocation { string location = 1; map<string,string> options = 2; }
    out = wire.string_field(1, location)
    for key, value in sorted((options or {}).items()):
        entry = wire.string_field(1, key) + wire.string_field(2, value)
        out += wire.bytes_field(2, entry)
    return out


def command(path="", origin="", descriptors=(), sequence=None, store=None, options=None, fmt=None):
    """DataSyncCommand bytes; fields left at their default are not sent."""
    out = b""
    if path:
        out += wire.string_field(1, path)
    if store is not None:
        out += wire.bytes_field(2, storage_location(store, options))
    for role, name in descriptors:
        out += wire.bytes_field(3, wire.column_descriptor(role, name))
    if origin:
        out += wire.string_field(4, origin)
    if sequence is not None:
        out += wire.varint_field(5, sequence)
    if fmt:
        out += wire.varint_field(6, fmt)
    return out


class Refused(Exception):
    """A Flight error, with the gRPC code name pyarrow reports."""

    def __init__(self, error):
        super().__init__(str(error))
        text = str(error)
        self.code = "UNKNOWN"
        marker = "gRPC client debug context: "
        if marker in text:
            self.code = text.split(marker, 1)[1].split(":", 1)[0].strip()
        for name, cls in [
            ("INVALID_ARGUMENT", pa.ArrowInvalid),
            ("UNIMPLEMENTED", NotImplementedError),
            ("PERMISSION_DENIED", flight.FlightUnauthorizedError),
            ("UNAVAILABLE", flight.FlightUnavailableError),
            ("DEADLINE_EXCEEDED", flight.FlightTimedOutError),
            ("CANCELLED", flight.FlightCancelledError),
        ]:
            if self.code == "UNKNOWN" and isinstance(error, cls):
                self.code = name
        self.text = text


class Node:
    def __init__(self, address, lake):
        self.address = address
        self.lake = lake
        self.client = flight.FlightClient(f"grpc://{address}")

    def put(self, cmd, schema=None, batches=(), type_url="DataSyncCommand", options=None):
        """One do_put; returns the decoded DataSyncResponse or raises Refused."""
        schema = schema if schema is not None else pa.schema([])
        descriptor = flight.FlightDescriptor.for_command(wire.any_wrap(type_url, cmd))
        try:
            if options is None:
                writer, reader = self.client.do_put(descriptor, schema)
            else:
                writer, reader = self.client.do_put(descriptor, schema, options=options)
            for batch in batches:
                writer.write_batch(batch)
            writer.done_writing()
            metadata = reader.read()
            writer.close()
        except (flight.FlightError, pa.ArrowException, NotImplementedError) as error:
            raise Refused(error) from None
        # Every answer carries one PutResult; none at all is a broken call,
        # not an all-default answer.
        check(metadata is not None, "the node's answer carried no PutResult")
        return wire.decode_response(metadata.to_pybytes())

    def probe(self, origin):
        return self.put(command(origin=origin))

    def expect_refused(self, code, needles, cmd, schema=None, batches=(), **kwargs):
        try:
            answer = self.put(cmd, schema, batches, **kwargs)
        except Refused as refused:
            check(refused.code == code, f"expected {code}, got {refused.code}: {refused.text}")
            for needle in needles:
                check(needle in refused.text, f"{needle!r} not in {refused.text!r}")
            return refused
        fail(f"expected {code}, the node accepted: {answer}")

    def wait_durable(self, origin, sequence, timeout=60.0):
        deadline = time.monotonic() + timeout
        while True:
            answer = self.probe(origin)
            durable = answer["durable_sequence_number"]
            memory = answer["memory_sequence_number"]
            check(durable is None or memory is not None and durable <= memory,
                  f"durable ahead of memory: {answer}")
            if durable is not None and durable >= sequence:
                return answer
            if time.monotonic() > deadline:
                fail(f"{origin}/{sequence} not durable after {timeout} s: {answer}")
            time.sleep(0.05)

    def metrics(self):
        import json

        results = list(self.client.do_action(flight.Action("metrics", b"")))
        return json.loads(results[0].body.to_pybytes())


def read_table(path):
    """The Delta table at `path` through the deltalake package, as a list of
    dicts sorted by every column."""
    from deltalake import DeltaTable

    table = DeltaTable(path).to_pyarrow_table()
    rows = table.to_pylist()
    def key(row):
        return [(row[k] is None, row[k] if row[k] is not None else 0) for k in sorted(row)]

    return sorted(rows, key=key)


def check(condition, message):
    if not condition:
        fail(message)


def fail(message):
    raise AssertionError(message)


# The usual table: key `id` (int64), value `name` (utf8).
KV_DESCRIPTORS = [(OLD_PK, "id"), (NEW_PK, "id"), (VALUE, "name")]
KV_SCHEMA = pa.schema(
    [pa.field("old_id", pa.int64()), pa.field("new_id", pa.int64()), pa.field("name", pa.utf8())]
)


def inserts(ids, name=lambda i: f"v{i}"):
    ids = list(ids)
    return pa.record_batch(
        [pa.array([None] * len(ids), pa.int64()), pa.array(ids, pa.int64()),
         pa.array([name(i) for i in ids], pa.utf8())],
        schema=KV_SCHEMA,
    )


def changes(rows):
    """(old id, new id, name) rows in the usual schema."""
    return pa.record_batch(
        [pa.array([r[0] for r in rows], pa.int64()), pa.array([r[1] for r in rows], pa.int64()),
         pa.array([r[2] for r in rows], pa.utf8())],
        schema=KV_SCHEMA,
    )
