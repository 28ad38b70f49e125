#!/usr/bin/env python3
"""A minimal Seafowl-sync client for flightlog, using only pyarrow.flight.

Sends one transaction of inserts with an Arrow Flight do_put, then a probe
(no rows, no sequence number), and prints each decoded DataSyncResponse as
one line of JSON:

    python3 examples/sync_client.py --address 127.0.0.1:47470 \
        --path demo/items --origin example --sequence 1 --rows 5

The protobuf messages (google.protobuf.Any wrapping clade.sync.DataSyncCommand,
and the DataSyncResponse in PutResult.app_metadata) are encoded by hand: a few
varint and length-delimited fields, so no protoc or generated code is needed.
Field numbers are those of PROTOCOL.md.
"""

import argparse
import json
import sys

import pyarrow as pa
import pyarrow.flight as flight

# ColumnRole
OLD_PK, NEW_PK, CHANGED, VALUE = 0, 1, 2, 3

# Wire types
VARINT, LENGTH_DELIMITED = 0, 2


def varint(value):
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def key(field, wire_type):
    return varint(field << 3 | wire_type)


def bytes_field(field, data):
    return key(field, LENGTH_DELIMITED) + varint(len(data)) + data


def string_field(field, text):
    return bytes_field(field, text.encode("utf-8"))


def varint_field(field, value):
    return key(field, VARINT) + varint(value)


def column_descriptor(role, name):
    # message ColumnDescriptor { ColumnRole role = 1; string name = 2; }
    return varint_field(1, role) + string_field(2, name)


def data_sync_command(path, origin, descriptors, sequence_number=None):
    # message DataSyncCommand { string path = 1; StorageLocation store = 2;
    #   repeated ColumnDescriptor column_descriptors = 3; string origin = 4;
    #   optional uint64 sequence_number = 5; TableFormat format = 6; }
    # store absent: the node's default store; format DELTA (0) is the default.
    message = string_field(1, path)
    for role, name in descriptors:
        message += bytes_field(3, column_descriptor(role, name))
    message += string_field(4, origin)
    if sequence_number is not None:
        message += varint_field(5, sequence_number)
    return message


def any_wrap(type_url, value):
    # message Any { string type_url = 1; bytes value = 2; }
    return string_field(1, type_url) + bytes_field(2, value)


def read_varint(data, offset):
    result, shift = 0, 0
    while True:
        byte = data[offset]
        offset += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, offset
        shift += 7


def decode_response(data):
    # message DataSyncResponse { bool accepted = 1;
    #   optional uint64 memory_sequence_number = 2;
    #   optional uint64 durable_sequence_number = 3; bool first = 4; }
    response = {
        "accepted": False,
        "memory_sequence_number": None,
        "durable_sequence_number": None,
        "first": False,
    }
    names = {
        1: "accepted",
        2: "memory_sequence_number",
        3: "durable_sequence_number",
        4: "first",
    }
    offset = 0
    while offset < len(data):
        tag, offset = read_varint(data, offset)
        field, wire_type = tag >> 3, tag & 7
        if wire_type != VARINT:
            raise ValueError(f"unexpected wire type {wire_type} for field {field}")
        value, offset = read_varint(data, offset)
        if field in (1, 4):
            value = bool(value)
        if field in names:
            response[names[field]] = value
    return response


DESCRIPTORS = [(OLD_PK, "id"), (NEW_PK, "id"), (VALUE, "name")]
SCHEMA = pa.schema(
    [
        pa.field("old_id", pa.int64()),
        pa.field("new_id", pa.int64()),
        pa.field("name", pa.utf8()),
    ]
)


def do_put(client, command, batches):
    descriptor = flight.FlightDescriptor.for_command(
        any_wrap("DataSyncCommand", command)
    )
    writer, reader = client.do_put(descriptor, SCHEMA)
    for batch in batches:
        writer.write_batch(batch)
    writer.done_writing()
    metadata = reader.read()
    writer.close()
    if metadata is None:
        # Every answer carries one PutResult: none is a broken call (resend),
        # never an answer with all fields at their defaults.
        raise RuntimeError("the node's answer carried no PutResult; resend")
    return decode_response(metadata.to_pybytes())


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--address", default="127.0.0.1:47470")
    parser.add_argument("--path", default="demo/items")
    parser.add_argument("--origin", default="example")
    parser.add_argument("--sequence", type=int, default=1)
    parser.add_argument("--rows", type=int, default=5)
    args = parser.parse_args()

    client = flight.FlightClient(f"grpc://{args.address}")
    ids = list(range(args.rows))
    inserts = pa.record_batch(
        [
            pa.array([None] * len(ids), pa.int64()),
            pa.array(ids, pa.int64()),
            pa.array([f"row {i}" for i in ids], pa.utf8()),
        ],
        schema=SCHEMA,
    )
    insert = data_sync_command(args.path, args.origin, DESCRIPTORS, args.sequence)
    print("insert", json.dumps(do_put(client, insert, [inserts])), flush=True)
    probe = data_sync_command(args.path, args.origin, DESCRIPTORS)
    print("probe", json.dumps(do_put(client, probe, [])), flush=True)
    client.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
