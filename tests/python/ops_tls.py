"""pyarrow.flight against a node serving TLS with bearer tokens: a client
that trusts the test CA and sends a token writes and reads its numbers; no
token or a wrong token gets UNAUTHENTICATED; a token limited to other store
prefixes gets PERMISSION_DENIED; a client that does not trust the CA fails
the handshake. Arguments: address, CA file, good token, limited token (or "rotated",
address, CA file, new token, old token: after a SIGHUP).
Prints "ok" at the end; any failed check exits non-zero with the reason.
"""

import os
import sys

import pyarrow as pa
import pyarrow.flight as flight

sys.path.insert(0, os.path.dirname(__file__))
import stranger  # noqa: E402

wire = stranger.wire


def client(address, ca):
    with open(ca, "rb") as f:
        return flight.FlightClient(f"grpc+tls://{address}", tls_root_certs=f.read())


def put(client, token, sequence):
    headers = [] if token is None else [(b"authorization", f"Bearer {token}".encode())]
    options = flight.FlightCallOptions(headers=headers, timeout=20)
    cmd = wire.data_sync_command("ops/tls", "tls-origin", wire.DESCRIPTORS, sequence)
    batch = pa.record_batch(
        [pa.array([None], pa.int64()), pa.array([sequence], pa.int64()), pa.array([f"row {sequence}"])],
        schema=wire.SCHEMA,
    )
    descriptor = flight.FlightDescriptor.for_command(wire.any_wrap("DataSyncCommand", cmd))
    try:
        writer, reader = client.do_put(descriptor, wire.SCHEMA, options=options)
        writer.write_batch(batch)
        writer.done_writing()
        metadata = reader.read()
        writer.close()
    except (flight.FlightError, pa.ArrowException) as error:
        raise stranger.Refused(error) from None
    return wire.decode_response(metadata.to_pybytes() if metadata is not None else b"")


def expect(code, function):
    try:
        answer = function()
    except stranger.Refused as refused:
        text = refused.text
        got = refused.code
        if got == "UNKNOWN" and "nauthenticated" in text:
            got = "UNAUTHENTICATED"
        stranger.check(got == code, f"expected {code}, got {refused.code}: {text}")
        return text
    stranger.fail(f"expected {code}, the node answered {answer}")


def rotated(address, ca, new, old):
    """After SIGHUP re-read a rotated file: the new token writes, the old one is refused."""
    trusted = client(address, ca)
    answer = put(trusted, new, 2)
    stranger.check(answer["accepted"] and answer["memory_sequence_number"] == 2, f"put with the new token: {answer}")
    expect("UNAUTHENTICATED", lambda: put(trusted, old, 3))
    print("ok")


def mtls(address, ca, cert, key):
    """A node with --tls-client-ca: a client with a certificate the CA signed
    writes; one without a certificate is refused in the handshake."""
    with open(ca, "rb") as f:
        roots = f.read()
    with open(cert, "rb") as f:
        chain = f.read()
    with open(key, "rb") as f:
        private = f.read()
    with_cert = flight.FlightClient(
        f"grpc+tls://{address}", tls_root_certs=roots, cert_chain=chain, private_key=private
    )
    answer = put(with_cert, None, 1)
    stranger.check(answer["accepted"] and answer["memory_sequence_number"] == 1, f"put with a client certificate: {answer}")
    without = flight.FlightClient(f"grpc+tls://{address}", tls_root_certs=roots)
    try:
        put(without, None, 2)
        stranger.fail("a client without a certificate was answered")
    except stranger.Refused:
        pass
    print("ok")


def main():
    if sys.argv[1] == "rotated":
        return rotated(*sys.argv[2:6])
    if sys.argv[1] == "mtls":
        return mtls(*sys.argv[2:6])
    address, ca, token, limited = sys.argv[1:5]
    trusted = client(address, ca)
    answer = put(trusted, token, 1)
    stranger.check(answer["accepted"] and answer["memory_sequence_number"] == 1, f"put over TLS: {answer}")

    expect("UNAUTHENTICATED", lambda: put(trusted, None, 2))
    expect("UNAUTHENTICATED", lambda: put(trusted, token + "x", 2))
    text = expect("PERMISSION_DENIED", lambda: put(trusted, limited, 2))
    stranger.check(token not in text and limited not in text, f"a token appears in an error: {text}")

    # A client that does not trust the node's CA never gets to send a call.
    untrusting = flight.FlightClient(f"grpc+tls://{address}")
    try:
        put(untrusting, token, 2)
        stranger.fail("a client without the CA was answered")
    except stranger.Refused:
        pass
    # Plain gRPC on the TLS port gets no answer either.
    plain = flight.FlightClient(f"grpc://{address}")
    try:
        put(plain, token, 2)
        stranger.fail("a plain-text client was answered")
    except stranger.Refused:
        pass
    print("ok")


if __name__ == "__main__":
    main()
