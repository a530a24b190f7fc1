"""Record a real MySQL/MariaDB server's answers to the commands the codec tests care about.

Usage: python scripts/capture_mysql_session.py HOST PORT USER > tests/data/mysql_session.json

Read-only: it logs in with an empty password and runs SELECTs, PING, STATISTICS, FIELD_LIST,
prepared statements (one with a cursor), RESET_CONNECTION and CHANGE_USER, creating nothing. A
response is taken to be everything the server sends until it stays silent for a moment, so the
recording does not depend on the codec's own idea of where a response ends: the tests check
ResponseTracker against it.
"""

from __future__ import annotations

import json
import socket
import struct
import sys

from dbbalancer.mysql.auth import native_scramble
from dbbalancer.mysql.codec import (
    MYSQL_NATIVE_PASSWORD,
    Capability,
    ComChangeUser,
    ComFieldList,
    ComInitDb,
    ComPing,
    ComQuery,
    ComResetConnection,
    ComStatistics,
    ComStmtClose,
    ComStmtExecute,
    ComStmtFetch,
    ComStmtPrepare,
    ComStmtReset,
    FieldType,
    HandshakeResponse41,
    HandshakeV10,
    PacketReader,
    PacketWriter,
    StmtPrepareOk,
)

CLIENT_CAPS = (
    Capability.LONG_PASSWORD
    | Capability.LONG_FLAG
    | Capability.PROTOCOL_41
    | Capability.TRANSACTIONS
    | Capability.SECURE_CONNECTION
    | Capability.MULTI_STATEMENTS
    | Capability.MULTI_RESULTS
    | Capability.PS_MULTI_RESULTS
    | Capability.PLUGIN_AUTH
    | Capability.CONNECT_ATTRS
    | Capability.PLUGIN_AUTH_LENENC_CLIENT_DATA
    | Capability.SESSION_TRACK
)


def _read_all(sock: socket.socket, reader: PacketReader, quiet: float = 0.3) -> list[bytes]:
    sock.settimeout(quiet)
    while True:
        try:
            data = sock.recv(65536)
        except TimeoutError:
            break
        if not data:
            break
        reader.feed(data)
    return [packet.payload for packet in reader]


def _session(host: str, port: int, user: str, deprecate_eof: bool) -> dict[str, object]:
    sock = socket.create_connection((host, port), timeout=5)
    reader = PacketReader()
    greeting_payload = _read_all(sock, reader)[0]
    greeting = HandshakeV10.decode(greeting_payload)
    caps = CLIENT_CAPS | (Capability.DEPRECATE_EOF if deprecate_eof else 0)
    caps &= greeting.capabilities | Capability.LONG_PASSWORD
    login = HandshakeResponse41(
        caps,
        16 * 1024 * 1024,
        45,
        user,
        b"",
        auth_plugin_name=greeting.auth_plugin_name,
        connect_attrs=(("_client_name", "dbbalancer-capture"),),
    )
    writer = PacketWriter(1)
    sock.sendall(writer.write(login.encode()))
    login_reply = _read_all(sock, reader)
    in_effect = caps & greeting.capabilities
    exchanges: list[dict[str, object]] = []

    def run(payload: bytes) -> list[bytes]:
        writer.reset()
        sock.sendall(writer.write(payload))
        replies = _read_all(sock, reader)
        exchanges.append({"command": payload.hex(), "responses": [r.hex() for r in replies]})
        return replies

    run(ComQuery(b"SELECT 1 AS a, NULL AS b, 'x' AS c").encode())
    run(ComQuery(b"SELECT 1; SELECT 2, 3").encode())
    run(ComQuery(b"SELECT 1; SELECT * FROM no_such_table_here; SELECT 3").encode())
    run(ComQuery(b"SELECT * FROM no_such_table_here").encode())
    run(ComQuery(b"SET autocommit = 0").encode())
    run(ComQuery(b"SELECT 1").encode())
    run(ComQuery(b"COMMIT").encode())
    run(ComQuery(b"SET autocommit = 1").encode())
    run(ComQuery(b"BEGIN").encode())
    run(ComQuery(b"COMMIT").encode())
    run(ComQuery(b"SELECT PASSWORD('secret')").encode())
    run(ComQuery(b"DO 1").encode())
    run(ComInitDb("mysql").encode())
    run(ComPing().encode())
    run(ComStatistics().encode())
    run(ComFieldList("db", "").encode())
    prepared = run(ComStmtPrepare(b"SELECT ? + 1 AS x, ? AS y").encode())
    stmt = StmtPrepareOk.decode(prepared[0]).statement_id
    # Parameters: NULL bitmap (second one NULL), new-params-bound, types, then the one value.
    params = (
        b"\x02\x01"
        + struct.pack("<BBBB", FieldType.LONGLONG, 0, FieldType.LONGLONG, 0)
        + struct.pack("<q", 41)
    )
    run(ComStmtExecute(stmt, 0, 1, params).encode())
    run(ComStmtExecute(stmt, 1, 1, params).encode())
    run(ComStmtFetch(stmt, 5).encode())
    run(ComStmtReset(stmt).encode())
    run(ComStmtClose(stmt).encode())
    run(ComStmtPrepare(b"DO 1").encode())
    run(ComResetConnection().encode())
    switch = run(ComChangeUser(user, b"", "", 45, greeting.auth_plugin_name).encode(in_effect))
    if switch and switch[-1][:1] == b"\xfe":
        # AuthSwitchRequest: answer for the empty password, keeping the sequence ids going.
        writer.reset(2)  # the command was 0, the AuthSwitchRequest 1
        sock.sendall(writer.write(b""))
        exchanges[-1]["client_reply"] = ""
        exchanges[-1]["after_reply"] = [r.hex() for r in _read_all(sock, reader)]
    sock.close()
    return {
        "client_capabilities": caps,
        "capabilities": in_effect,
        "login_reply": [r.hex() for r in login_reply],
        "exchanges": exchanges,
    }


def main() -> None:
    """Connect twice (with and without DEPRECATE_EOF) and print the recording as JSON."""
    host, port, user = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    sock = socket.create_connection((host, port), timeout=5)
    reader = PacketReader()
    greeting = _read_all(sock, reader)[0]
    sock.close()
    # A login with a wrong scramble: the server's ERR during authentication.
    sock = socket.create_connection((host, port), timeout=5)
    reader = PacketReader()
    hello = HandshakeV10.decode(_read_all(sock, reader)[0])
    wrong = native_scramble("wrong password", hello.auth_plugin_data)
    bad = HandshakeResponse41(CLIENT_CAPS, 1 << 24, 45, user, wrong, None, MYSQL_NATIVE_PASSWORD)
    sock.sendall(PacketWriter(1).write(bad.encode()))
    bad_login = _read_all(sock, reader)
    sock.close()
    record = {
        "bad_login": {"nonce": hello.auth_plugin_data.hex(), "reply": [r.hex() for r in bad_login]},
        "server": HandshakeV10.decode(greeting).server_version,
        "greeting": greeting.hex(),
        "deprecate_eof": _session(host, port, user, True),
        "classic_eof": _session(host, port, user, False),
    }
    json.dump(record, sys.stdout, indent=1)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
