"""Unit tests for the MySQL codec, against traffic recorded from a real MariaDB server.

tests/data/mysql_session.json comes from scripts/capture_mysql_session.py (MariaDB 10.11): the
responses in it were cut by waiting for the server to fall silent, not by the codec, so they
check ResponseTracker independently.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import pytest

from dbbalancer.mysql import codec
from dbbalancer.mysql.codec import (
    FAST_AUTH_SUCCESS,
    MAX_CHUNK,
    AuthMoreData,
    AuthSwitchRequest,
    Capability,
    ColumnCount,
    ColumnDefinition41,
    ComChangeUser,
    CommandByte,
    ComQuery,
    ComStmtExecute,
    EofPacket,
    ErrPacket,
    FieldType,
    HandshakeResponse41,
    HandshakeV10,
    OkPacket,
    PacketReader,
    PacketWriter,
    Phase,
    ProtocolError,
    ResponseTracker,
    SchemaTracked,
    ServerStatus,
    SslRequest,
    StmtPrepareOk,
    SystemVariableTracked,
    TransactionStateTracked,
    decode_binary_row,
    decode_command,
    decode_handshake_response,
    decode_text_row,
    encode_lenenc_int,
    encode_packets,
    negotiate,
)

DATA = Path(__file__).parent.parent / "data" / "mysql_session.json"
RECORD: dict[str, Any] = json.loads(DATA.read_text())
SESSIONS = ("deprecate_eof", "classic_eof")

# The greeting of a MariaDB 10.11 server, as first read off the socket (header included).
MARIADB_GREETING = bytes.fromhex(
    "640000000a352e352e352d31302e31312e31392d4d6172696144422d302b6465623132753100080000006d2f"
    "4137312e345800fef72d0200ff81150000000000001d0000003f7243382c73245356374e64006d7973716c5f6e"
    "61746976655f70617373776f726400"
)


def _exchanges(session: str) -> list[dict[str, Any]]:
    exchanges: list[dict[str, Any]] = RECORD[session]["exchanges"]
    return exchanges


def _find(session: str, command: bytes) -> list[bytes]:
    for exchange in _exchanges(session):
        if bytes.fromhex(exchange["command"]) == command:
            return [bytes.fromhex(r) for r in exchange["responses"]]
    raise LookupError(command)


# --------------------------------------------------------------------------------------------
# Framing


def test_reader_frames_the_real_greeting() -> None:
    reader = PacketReader(expected_sequence=0)
    reader.feed(MARIADB_GREETING)
    packet = reader.next()
    assert packet is not None
    assert packet.sequence_id == 0
    assert len(packet.payload) == 100
    assert reader.next() is None
    assert reader.expected_sequence == 1
    reader.feed_eof()


def test_reader_waits_for_a_whole_packet_byte_by_byte() -> None:
    reader = PacketReader()
    for byte in MARIADB_GREETING[:-1]:
        reader.feed(bytes((byte,)))
        assert reader.next() is None
    reader.feed(MARIADB_GREETING[-1:])
    packet = reader.next()
    assert packet is not None
    assert packet.payload == MARIADB_GREETING[4:]


def test_reader_refuses_an_oversized_length_before_buffering_it() -> None:
    reader = PacketReader(max_payload=1000)
    reader.feed(b"\xe9\x03\x00\x00")  # 1001 bytes announced, none sent
    with pytest.raises(ProtocolError, match="1001 bytes exceeds the limit of 1000"):
        reader.next()


def test_reader_counts_continuations_against_the_limit() -> None:
    reader = PacketReader(max_payload=MAX_CHUNK + 10)
    reader.feed(b"\xff\xff\xff\x00" + b"a" * MAX_CHUNK + b"\x0b\x00\x00\x01")
    with pytest.raises(ProtocolError, match="exceeds the limit"):
        reader.next()


def test_reader_checks_sequence_ids() -> None:
    reader = PacketReader(expected_sequence=1)
    reader.feed(b"\x01\x00\x00\x02\x00")
    with pytest.raises(ProtocolError, match="sequence id 2, expected 1"):
        reader.next()


def test_reader_refuses_a_continuation_out_of_order() -> None:
    reader = PacketReader()
    reader.feed(b"\xff\xff\xff\x05" + b"a" * MAX_CHUNK + b"\x00\x00\x00\x07")
    with pytest.raises(ProtocolError, match="out of order: sequence id 7 after 5"):
        reader.next()


def test_reader_reports_a_truncated_packet_at_eof() -> None:
    reader = PacketReader()
    reader.feed(MARIADB_GREETING[:50])
    assert reader.next() is None
    with pytest.raises(ProtocolError, match="in the middle of a packet"):
        reader.feed_eof()


@pytest.mark.parametrize(
    ("size", "chunks"),
    [(0, [0]), (MAX_CHUNK - 1, [MAX_CHUNK - 1]), (MAX_CHUNK, [MAX_CHUNK, 0]),
     (MAX_CHUNK + 1, [MAX_CHUNK, 1]), (2 * MAX_CHUNK, [MAX_CHUNK, MAX_CHUNK, 0])],
)  # fmt: skip
def test_writer_splits_at_16_mb_and_the_reader_joins(size: int, chunks: list[int]) -> None:
    payload = bytes(range(256)) * (size // 256) + b"z" * (size % 256)
    data, next_seq = encode_packets(payload, 254)
    pos, seq, seen = 0, 254, []
    while pos < len(data):
        length = int.from_bytes(data[pos : pos + 3], "little")
        assert data[pos + 3] == seq
        seen.append(length)
        pos += 4 + length
        seq = (seq + 1) & 0xFF
    assert seen == chunks
    assert next_seq == seq
    reader = PacketReader(max_payload=size)
    reader.feed(data)
    packet = reader.next()
    assert packet is not None
    assert packet.payload == payload
    assert (packet.sequence_id, packet.last_sequence_id) == (254, (254 + len(chunks) - 1) & 0xFF)


def test_packet_writer_numbers_and_resets() -> None:
    writer = PacketWriter()
    assert writer.write(b"\x0e") == b"\x01\x00\x00\x00\x0e"
    assert writer.write(b"") == b"\x00\x00\x00\x01"
    writer.reset()
    assert writer.write(b"x")[3] == 0


@pytest.mark.parametrize(
    ("value", "encoded"),
    [(0, b"\x00"), (250, b"\xfa"), (251, b"\xfc\xfb\x00"), (0xFFFF, b"\xfc\xff\xff"),
     (0x10000, b"\xfd\x00\x00\x01"), (0xFFFFFF, b"\xfd\xff\xff\xff"),
     (0x1000000, b"\xfe\x00\x00\x00\x01\x00\x00\x00\x00"), (2**64 - 1, b"\xfe" + b"\xff" * 8)],
)  # fmt: skip
def test_lenenc_int_boundaries(value: int, encoded: bytes) -> None:
    assert encode_lenenc_int(value) == encoded
    reader = codec._Reader(encoded, "test")
    assert reader.lenenc_int() == value
    assert reader.at_end()


def test_lenenc_int_out_of_range() -> None:
    with pytest.raises(ValueError, match="out of range"):
        encode_lenenc_int(2**64)


# --------------------------------------------------------------------------------------------
# Connection phase


def test_decode_real_mariadb_greeting() -> None:
    greeting = HandshakeV10.decode(MARIADB_GREETING[4:])
    assert greeting.server_version == "5.5.5-10.11.19-MariaDB-0+deb12u1"
    assert greeting.connection_id == 8
    assert greeting.auth_plugin_data == b"m/A71.4X?rC8,s$SV7Nd"
    assert greeting.auth_plugin_name == "mysql_native_password"
    caps = Capability(greeting.capabilities)
    for flag in (
        Capability.PROTOCOL_41,
        Capability.DEPRECATE_EOF,
        Capability.SESSION_TRACK,
        Capability.PLUGIN_AUTH,
        Capability.CONNECT_ATTRS,
        Capability.MULTI_RESULTS,
        Capability.MARIADB_PROGRESS,
        Capability.MARIADB_CACHE_METADATA,
    ):
        assert flag in caps
    # A MariaDB server clears CLIENT_MYSQL to say the reserved bytes hold its extended flags.
    assert Capability.LONG_PASSWORD not in caps
    assert greeting.status_flags == ServerStatus.AUTOCOMMIT
    assert greeting.encode() == MARIADB_GREETING[4:]
    assert HandshakeV10.decode(bytes.fromhex(RECORD["greeting"])).encode() == bytes.fromhex(
        RECORD["greeting"]
    )


def test_negotiate_drops_what_the_codec_cannot_parse() -> None:
    server = HandshakeV10.decode(MARIADB_GREETING[4:]).capabilities
    agreed = negotiate(server, (1 << 38) - 1)
    assert Capability.DEPRECATE_EOF in agreed
    assert Capability.MARIADB_CACHE_METADATA not in agreed
    assert Capability.COMPRESS not in agreed
    assert Capability.LONG_PASSWORD not in agreed  # the server did not offer it


def test_greeting_refusals() -> None:
    with pytest.raises(ProtocolError, match="ERR packet"):
        HandshakeV10.decode(ErrPacket(1040, "08004", "Too many connections").encode())
    with pytest.raises(ProtocolError, match="protocol version 9"):
        HandshakeV10.decode(b"\x09" + MARIADB_GREETING[5:])
    with pytest.raises(ProtocolError, match="truncated"):
        HandshakeV10.decode(MARIADB_GREETING[4:50])


def test_handshake_response_with_everything_round_trips() -> None:
    caps = (
        Capability.PROTOCOL_41
        | Capability.SECURE_CONNECTION
        | Capability.PLUGIN_AUTH
        | Capability.PLUGIN_AUTH_LENENC_CLIENT_DATA
        | Capability.CONNECT_WITH_DB
        | Capability.CONNECT_ATTRS
        | Capability.MARIADB_PROGRESS
    )
    response = HandshakeResponse41(
        caps, 1 << 24, 45, "app", bytes(range(20)), "shop", "mysql_native_password",
        (("_client_name", "libmariadb"), ("_pid", "42")),
    )  # fmt: skip
    payload = response.encode()
    # MariaDB's extended flags sit in the last 4 of the 23 filler bytes (CLIENT_MYSQL clear).
    assert payload[28:32] == b"\x01\x00\x00\x00"
    assert decode_handshake_response(payload) == response


def test_handshake_response_layouts_follow_capabilities() -> None:
    base = Capability.PROTOCOL_41 | Capability.LONG_PASSWORD
    classic = HandshakeResponse41(base, 0, 8, "u", b"secret")
    assert classic.encode().endswith(b"u\x00secret\x00")
    assert decode_handshake_response(classic.encode()) == classic
    one_byte = HandshakeResponse41(base | Capability.SECURE_CONNECTION, 0, 8, "u", b"\x00" * 3)
    assert one_byte.encode().endswith(b"u\x00\x03\x00\x00\x00")
    with pytest.raises(ValueError, match="255 bytes"):
        HandshakeResponse41(base | Capability.SECURE_CONNECTION, 0, 8, "u", b"x" * 256).encode()


def test_ssl_request_is_the_first_32_bytes() -> None:
    request = SslRequest(Capability.PROTOCOL_41 | Capability.SSL | Capability.LONG_PASSWORD, 1, 45)
    assert len(request.encode()) == 32
    assert decode_handshake_response(request.encode()) == request
    no_ssl = SslRequest(Capability.PROTOCOL_41, 1, 45).encode()
    with pytest.raises(ProtocolError, match="must be an SSLRequest"):
        decode_handshake_response(no_ssl)


def test_handshake_response_refuses_pre_41_clients_and_garbage() -> None:
    with pytest.raises(ProtocolError, match="CLIENT_PROTOCOL_41"):
        decode_handshake_response(b"\x00\x00\x00\x00" + b"\x00" * 40)
    with pytest.raises(ProtocolError, match="truncated"):
        decode_handshake_response(b"\x00\x02")


def test_login_replies_recorded() -> None:
    for session in SESSIONS:
        (reply,) = (bytes.fromhex(r) for r in RECORD[session]["login_reply"])
        ok = OkPacket.decode(reply, RECORD[session]["capabilities"])
        assert ok.status_flags == ServerStatus.AUTOCOMMIT
    (bad,) = (bytes.fromhex(r) for r in RECORD["bad_login"]["reply"])
    err = ErrPacket.decode(bad)
    assert (err.errno, err.sqlstate) == (1045, "28000")
    assert err.message.startswith("Access denied for user 'root'")


def test_auth_switch_request_from_change_user() -> None:
    (switch,) = _find("deprecate_eof", bytes.fromhex(_exchanges("deprecate_eof")[-1]["command"]))
    request = AuthSwitchRequest.decode(switch)
    assert request.plugin_name == "mysql_native_password"
    assert len(request.nonce) == 20
    assert request.data.endswith(b"\x00")
    assert request.encode() == switch
    assert AuthSwitchRequest.decode(b"\xfe") == AuthSwitchRequest("", b"")


def test_auth_more_data() -> None:
    assert AuthMoreData.decode(b"\x01\x03") == AuthMoreData(FAST_AUTH_SUCCESS)
    with pytest.raises(ProtocolError, match="0x01"):
        AuthMoreData.decode(b"\x02")


# --------------------------------------------------------------------------------------------
# Generic responses, with session tracking


def test_ok_with_tracked_system_variable() -> None:
    caps = RECORD["deprecate_eof"]["capabilities"]
    (reply,) = _find("deprecate_eof", ComQuery(b"SET autocommit = 0").encode())
    ok = OkPacket.decode(reply, caps)
    assert ok.status_flags & ServerStatus.SESSION_STATE_CHANGED
    assert not ok.status_flags & ServerStatus.AUTOCOMMIT
    assert SystemVariableTracked("autocommit", "OFF") in ok.session_state
    assert ok.encode(caps) == reply


def test_ok_with_tracked_schema() -> None:
    caps = RECORD["classic_eof"]["capabilities"]
    (reply,) = _find("classic_eof", b"\x02mysql")
    ok = OkPacket.decode(reply, caps)
    assert SchemaTracked("mysql") in ok.session_state
    assert ok.encode(caps) == reply


def test_begin_sets_in_trans() -> None:
    caps = RECORD["classic_eof"]["capabilities"]
    (reply,) = _find("classic_eof", ComQuery(b"BEGIN").encode())
    assert OkPacket.decode(reply, caps).status_flags & ServerStatus.IN_TRANS


def test_ok_without_session_track_and_41() -> None:
    ok = OkPacket(1, 2, ServerStatus.AUTOCOMMIT, 3, b"Rows matched: 1")
    assert OkPacket.decode(ok.encode(Capability.PROTOCOL_41), Capability.PROTOCOL_41) == ok
    txn = OkPacket(1, 2, 3)
    assert OkPacket.decode(txn.encode(Capability.TRANSACTIONS), Capability.TRANSACTIONS) == txn


def test_transaction_state_tracker() -> None:
    track = TransactionStateTracked("T_______")
    caps = Capability.PROTOCOL_41 | Capability.SESSION_TRACK
    ok = OkPacket(status_flags=ServerStatus.SESSION_STATE_CHANGED, session_state=(track,))
    decoded = OkPacket.decode(ok.encode(caps), caps)
    assert decoded.session_state == (track,)
    assert track.in_transaction


def test_err_real_and_without_sqlstate() -> None:
    (reply,) = _find("classic_eof", ComQuery(b"SELECT * FROM no_such_table_here").encode())
    err = ErrPacket.decode(reply)
    # The session has no default schema yet.
    assert (err.errno, err.sqlstate) == (1046, "3D000")
    assert err.message == "No database selected"
    assert err.encode() == reply
    bare = ErrPacket(1040, None, "Too many connections")
    assert ErrPacket.decode(bare.encode()) == bare


def test_eof() -> None:
    assert EofPacket.decode(b"\xfe\x01\x00\x02\x00") == EofPacket(1, 2)
    assert EofPacket.decode(b"\xfe") == EofPacket()
    with pytest.raises(ProtocolError, match="truncated"):
        EofPacket.decode(b"\xfe\x01\x00\x02")


# --------------------------------------------------------------------------------------------
# Commands and result sets


@pytest.mark.parametrize("session", SESSIONS)
def test_every_recorded_command_round_trips(session: str) -> None:
    caps = RECORD[session]["capabilities"]
    for exchange in _exchanges(session):
        payload = bytes.fromhex(exchange["command"])
        command = decode_command(payload, caps)
        encoded = command.encode(caps) if isinstance(command, ComChangeUser) else command.encode()
        assert encoded == payload
        assert codec.command_byte(command) == payload[0]


def test_change_user_fields() -> None:
    caps = RECORD["classic_eof"]["capabilities"]
    command = decode_command(bytes.fromhex(_exchanges("classic_eof")[-1]["command"]), caps)
    assert command == ComChangeUser("root", b"", "", 45, "mysql_native_password", ())


def test_unknown_command_and_empty_payload() -> None:
    assert decode_command(b"\x08\x00", 0) == codec.UnknownCommand(CommandByte.SHUTDOWN, b"\x00")
    with pytest.raises(ProtocolError, match="empty"):
        decode_command(b"", 0)
    with pytest.raises(ProtocolError, match="trailing"):
        decode_command(b"\x0e\x00", 0)


@pytest.mark.parametrize("session", SESSIONS)
def test_text_result_set(session: str) -> None:
    responses = _find(session, ComQuery(b"SELECT 1 AS a, NULL AS b, 'x' AS c").encode())
    assert ColumnCount.decode(responses[0]).count == 3
    columns = [ColumnDefinition41.decode(p) for p in responses[1:4]]
    assert [c.name for c in columns] == ["a", "b", "c"]
    assert columns[0].type == FieldType.LONG
    assert all(c.encode() == p for c, p in zip(columns, responses[1:4], strict=True))
    row = responses[4] if session == "deprecate_eof" else responses[5]
    assert decode_text_row(row, 3) == (b"1", None, b"x")
    assert codec.encode_text_row((b"1", None, b"x")) == row


def test_password_function_row() -> None:
    responses = _find("deprecate_eof", ComQuery(b"SELECT PASSWORD('secret')").encode())
    assert decode_text_row(responses[2], 1) == (b"*14E65567ABDB5135D0CFD9A70B3032C179A49EE7",)


def test_prepare_ok_and_binary_row() -> None:
    session = "deprecate_eof"
    responses = _find(session, codec.ComStmtPrepare(b"SELECT ? + 1 AS x, ? AS y").encode())
    ok = StmtPrepareOk.decode(responses[0])
    assert (ok.num_params, ok.num_columns) == (2, 2)
    assert ok.encode() == responses[0]
    execute = next(e for e in _exchanges(session) if bytes.fromhex(e["command"])[:1] == b"\x17")
    results = [bytes.fromhex(r) for r in execute["responses"]]
    types = tuple(ColumnDefinition41.decode(p).type for p in results[1:3])
    assert types == (FieldType.LONGLONG, FieldType.LONGLONG)
    values = decode_binary_row(results[3], types)
    assert values == (struct.pack("<q", 42), None)
    assert codec.encode_binary_row(values, types) == results[3]


def test_binary_row_value_kinds() -> None:
    types = (FieldType.TINY, FieldType.DATETIME, FieldType.VAR_STRING, FieldType.DOUBLE)
    values = (b"\x07", b"\xe8\x07\x01\x02", b"text", None)
    row = codec.encode_binary_row(values, types)
    assert decode_binary_row(row, types) == values
    with pytest.raises(ProtocolError, match="string length 4 exceeds the 2 bytes left"):
        decode_binary_row(row[:-2], types)
    with pytest.raises(ProtocolError, match="truncated"):
        decode_binary_row(row[:3], types)


def test_statistics_answer_is_a_string() -> None:
    (reply,) = _find("classic_eof", b"\x09")
    assert reply.startswith(b"Uptime: ")


def test_column_count_refusals() -> None:
    with pytest.raises(ProtocolError, match="zero columns"):
        ColumnCount.decode(b"\x00")
    with pytest.raises(ProtocolError, match="prefix 0xff"):
        ColumnCount.decode(b"\xff")


def test_lenenc_string_longer_than_the_packet_is_refused() -> None:
    with pytest.raises(ProtocolError, match="exceeds the 1 bytes left"):
        decode_text_row(b"\xfe\x00\x00\x00\x00\x01\x00\x00\x00x", 1)


# --------------------------------------------------------------------------------------------
# Response boundaries


@pytest.mark.parametrize("session", SESSIONS)
def test_tracker_ends_exactly_where_the_server_fell_silent(session: str) -> None:
    caps = RECORD[session]["capabilities"]
    for exchange in _exchanges(session):
        command = decode_command(bytes.fromhex(exchange["command"]), caps)
        tracker = ResponseTracker(command, caps)
        responses = [bytes.fromhex(r) for r in exchange["responses"]]
        if not responses:
            assert tracker.phase is Phase.DONE, command
            assert not codec.expects_response(codec.command_byte(command))
            continue
        phases = [tracker.server_packet(p) for p in responses]
        assert phases[:-1] == [Phase.MORE] * (len(phases) - 1), command
        if "client_reply" in exchange:
            assert phases[-1] is Phase.CLIENT_TURN
            assert tracker.client_packet(bytes.fromhex(exchange["client_reply"])) is Phase.MORE
            (after,) = (bytes.fromhex(r) for r in exchange["after_reply"])
            assert tracker.server_packet(after) is Phase.DONE
        else:
            assert phases[-1] is Phase.DONE, command


@pytest.mark.parametrize("session", SESSIONS)
def test_recorded_responses_forwarded_as_runs(session: str) -> None:
    """Each recorded response, taken as one run of raw packets, is the server's bytes as they
    were, and ends where the packet-by-packet tracker ends it."""
    caps = RECORD[session]["capabilities"]
    for exchange in _exchanges(session):
        command = decode_command(bytes.fromhex(exchange["command"]), caps)
        responses = [bytes.fromhex(r) for r in exchange["responses"]]
        if not responses or "client_reply" in exchange:
            continue
        stream, seq = b"", 1
        for payload in responses:
            data, seq = codec.encode_packets(payload, seq)
            stream += data
        reader = PacketReader(expected_sequence=1)
        reader.feed(stream)
        tracker = ResponseTracker(command, caps)
        run = reader.take_response(tracker)
        assert run is not None
        assert run.data == stream, command
        assert (run.first_sequence_id, run.last_sequence_id) == (1, len(responses))
        assert run.last_payload == responses[-1]
        assert tracker.phase is Phase.DONE
        assert reader.expected_sequence == (len(responses) + 1) & 0xFF
        assert reader.take_response(ResponseTracker(command, caps)) is None


def test_runs_leave_16mb_packets_to_next() -> None:
    caps = Capability.PROTOCOL_41 | Capability.DEPRECATE_EOF
    big = b"\xfc\xff\xff" + b"x" * MAX_CHUNK  # one text column of 16 MB + 2 bytes
    payloads = [b"\x01", ColumnDefinition41("", "", "", "x", "", 45, 1, 253).encode()]
    payloads += [b"\x01a", big, b"\x01b", OkPacket(0, 0, 2, 0, header=0xFE).encode(caps)]
    stream, seq = b"", 1
    for payload in payloads:
        data, seq = codec.encode_packets(payload, seq)
        stream += data
    reader = PacketReader(expected_sequence=1)
    reader.feed(stream)
    tracker = ResponseTracker(ComQuery(b"SELECT"), caps)
    first = reader.take_response(tracker)
    assert first is not None
    assert first.packets()[-1].payload == b"\x01a"
    assert reader.take_response(tracker) is None  # a continuation chunk comes next
    packet = reader.next()
    assert packet is not None
    assert packet.payload == big
    assert tracker.server_packet(packet.payload) is Phase.MORE
    again = codec.PacketRun.of(packet).data  # framed as the server framed it
    assert again == stream[len(first.data) : len(first.data) + len(again)]
    rest = reader.take_response(tracker)
    assert rest is not None
    assert rest.first_sequence_id == packet.last_sequence_id + 1
    assert tracker.phase is Phase.DONE
    assert tracker.status_flags == 2


def test_execute_opens_cursor_reads_the_flags_byte() -> None:
    for flags in range(8):
        payload = ComStmtExecute(7, flags).encode()
        assert codec.execute_opens_cursor(payload) == ComStmtExecute(7, flags).opens_cursor
    assert not codec.execute_opens_cursor(b"\x17\x01\x00\x00\x00")


def test_tracker_counts_results_and_reads_final_status() -> None:
    caps = RECORD["classic_eof"]["capabilities"]
    tracker = ResponseTracker(ComQuery(b"SELECT 1; SELECT 2, 3"), caps)
    for payload in _find("classic_eof", ComQuery(b"SELECT 1; SELECT 2, 3").encode()):
        tracker.server_packet(payload)
    assert tracker.result_sets == 2
    assert tracker.status_flags == ServerStatus.AUTOCOMMIT
    assert tracker.in_transaction is False


def test_tracker_stops_at_an_error_between_results() -> None:
    caps = RECORD["deprecate_eof"]["capabilities"]
    query = ComQuery(b"SELECT 1; SELECT * FROM no_such_table_here; SELECT 3")
    tracker = ResponseTracker(query, caps)
    for payload in _find("deprecate_eof", query.encode()):
        tracker.server_packet(payload)
    assert tracker.phase is Phase.DONE
    assert tracker.error is not None
    assert tracker.error.errno == 1046
    assert tracker.status_flags is not None
    assert tracker.status_flags & ServerStatus.MORE_RESULTS_EXISTS


def test_tracker_cursor_ends_after_definitions() -> None:
    caps = RECORD["classic_eof"]["capabilities"]
    execute = ComStmtExecute(1, codec.CursorType.READ_ONLY)
    tracker = ResponseTracker(execute, caps)
    assert tracker.server_packet(b"\x01") is Phase.MORE
    assert tracker.server_packet(ColumnDefinition41("", "", "", "x", "", 63, 1, 8).encode())
    eof = EofPacket(0, ServerStatus.CURSOR_EXISTS | ServerStatus.AUTOCOMMIT).encode()
    assert tracker.server_packet(eof) is Phase.DONE
    # Without a cursor the same EOF only ends the definitions.
    plain = ResponseTracker(ComStmtExecute(1), caps)
    plain.server_packet(b"\x01")
    plain.server_packet(ColumnDefinition41("", "", "", "x", "", 63, 1, 8).encode())
    assert plain.server_packet(EofPacket(0, ServerStatus.AUTOCOMMIT).encode()) is Phase.MORE


def test_tracker_local_infile() -> None:
    caps = Capability.PROTOCOL_41 | Capability.LOCAL_FILES
    tracker = ResponseTracker(ComQuery(b"LOAD DATA LOCAL INFILE 'f' INTO TABLE t"), caps)
    assert tracker.server_packet(b"\xfbf") is Phase.CLIENT_TURN
    assert tracker.client_packet(b"1,2\n") is Phase.CLIENT_TURN
    assert tracker.client_packet(b"") is Phase.MORE
    assert tracker.server_packet(OkPacket(1).encode(caps)) is Phase.DONE


def test_tracker_caching_sha2_fast_auth_in_change_user() -> None:
    caps = Capability.PROTOCOL_41 | Capability.SECURE_CONNECTION | Capability.PLUGIN_AUTH
    tracker = ResponseTracker(ComChangeUser("u", b"x" * 32, "", 45, "caching_sha2_password"), caps)
    assert tracker.server_packet(b"\x01\x03") is Phase.MORE
    assert tracker.server_packet(OkPacket().encode(caps)) is Phase.DONE
    full = ResponseTracker(ComChangeUser("u", b"x" * 32, "", 45, "caching_sha2_password"), caps)
    assert full.server_packet(b"\x01\x04") is Phase.CLIENT_TURN


def test_tracker_refuses_unexpected_packets() -> None:
    caps = Capability.PROTOCOL_41
    tracker = ResponseTracker(codec.ComPing(), caps)
    with pytest.raises(ProtocolError, match="unexpected data packet"):
        tracker.server_packet(b"\x03def")
    done = ResponseTracker(codec.ComStmtClose(1), caps)
    with pytest.raises(ProtocolError, match="in state done"):
        done.server_packet(OkPacket().encode(caps))
    with pytest.raises(ProtocolError, match="client packet"):
        ResponseTracker(codec.ComPing(), caps).client_packet(b"")


def test_transition_table_covers_every_server_state_with_err() -> None:
    states = set(codec._State) - {codec._State.DONE, codec._State.INFILE, codec._State.AUTH_CLIENT}
    for state in states:
        assert codec._TRANSITIONS[(state, codec._Kind.ERR)] is codec._State.DONE
    # Every state the table leads to is one the tracker can be in.
    assert set(codec._TRANSITIONS.values()) <= set(codec._State)
