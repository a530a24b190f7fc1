"""Property tests for the MySQL codec: framing is independent of chunking (including 16 MB
continuations), messages round-trip, and hostile input only ever raises ProtocolError."""

from __future__ import annotations

import contextlib
from collections.abc import Callable

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dbbalancer.mysql import codec
from dbbalancer.mysql.codec import (
    MAX_CHUNK,
    Capability,
    ColumnDefinition41,
    ErrPacket,
    HandshakeResponse41,
    HandshakeV10,
    OkPacket,
    PacketReader,
    ProtocolError,
    ResponseTracker,
    ServerStatus,
    decode_command,
    encode_packets,
)

SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

names = st.text(st.characters(codec="utf-8", exclude_characters="\0"), max_size=12)
blobs = st.binary(max_size=40)
u8 = st.integers(0, 0xFF)
u16 = st.integers(0, 0xFFFF)
u32 = st.integers(0, 0xFFFFFFFF)
lenenc = st.one_of(st.integers(0, 300), st.integers(0, 2**64 - 1))
caps32 = st.integers(0, 0xFFFFFFFF)
attrs = st.lists(st.tuples(names, names), max_size=4).map(tuple)


def _split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    pieces, last = [], 0
    for point in points:
        pieces.append(data[last:point])
        last = point
    pieces.append(data[last:])
    return pieces


@SETTINGS
@given(st.lists(st.binary(max_size=300), min_size=1, max_size=8), st.lists(st.integers(0, 10**6)))
def test_chunking_does_not_change_packets(payloads: list[bytes], cuts: list[int]) -> None:
    stream, seq = b"", 0
    for payload in payloads:
        data, seq = encode_packets(payload, seq)
        stream += data
    reader = PacketReader(expected_sequence=0)
    got = []
    for piece in _split(stream, cuts):
        reader.feed(piece)
        got.extend(packet.payload for packet in reader)
    assert got == payloads
    reader.feed_eof()


@settings(max_examples=6, deadline=None)
@given(st.integers(MAX_CHUNK - 2, 2 * MAX_CHUNK + 2), st.integers(0, 255), st.integers(1, 5))
def test_16mb_continuation_in_any_chunking(size: int, first_seq: int, pieces: int) -> None:
    payload = b"\xab" * size
    data, next_seq = encode_packets(payload, first_seq)
    reader = PacketReader(max_payload=size, expected_sequence=first_seq)
    step = len(data) // pieces + 1
    packets = []
    for start in range(0, len(data), step):
        reader.feed(data[start : start + step])
        packets.extend(reader)
    assert [p.payload == payload for p in packets] == [True]
    assert reader.expected_sequence == next_seq
    too_small = PacketReader(max_payload=size - 1)
    too_small.feed(data)
    with contextlib.suppress(ProtocolError):
        too_small.next()
        raise AssertionError("a payload over the limit was accepted")


@SETTINGS
@given(st.binary(max_size=600), st.integers(0, 1000))
def test_reader_raises_only_protocol_error(data: bytes, limit: int) -> None:
    reader = PacketReader(max_payload=limit, expected_sequence=0)
    with contextlib.suppress(ProtocolError):
        reader.feed(data)
        for packet in reader:
            assert len(packet.payload) <= limit
        reader.feed_eof()


def _decoders(caps: int) -> list[Callable[[bytes], object]]:
    return [
        HandshakeV10.decode,
        codec.decode_handshake_response,
        codec.AuthSwitchRequest.decode,
        codec.AuthMoreData.decode,
        lambda p: OkPacket.decode(p, caps),
        ErrPacket.decode,
        codec.EofPacket.decode,
        codec.ColumnCount.decode,
        ColumnDefinition41.decode,
        codec.StmtPrepareOk.decode,
        lambda p: decode_command(p, caps),
        lambda p: codec.decode_text_row(p, 3),
        lambda p: codec.decode_binary_row(p, (1, 7, 253, 5, 6)),
    ]


@SETTINGS
@given(st.binary(max_size=120), caps32)
def test_decoders_raise_only_protocol_error(payload: bytes, caps: int) -> None:
    for decode in _decoders(caps):
        with contextlib.suppress(ProtocolError):
            decode(payload)


@SETTINGS
@given(st.lists(st.binary(max_size=20), max_size=12), u8, caps32)
def test_tracker_raises_only_protocol_error(packets: list[bytes], command: int, caps: int) -> None:
    tracker = ResponseTracker(command, caps)
    with contextlib.suppress(ProtocolError):
        for payload in packets:
            tracker.server_packet(payload)


@SETTINGS
@given(lenenc)
def test_lenenc_int_round_trips(value: int) -> None:
    reader = codec._Reader(codec.encode_lenenc_int(value), "test")
    assert reader.lenenc_int() == value
    assert reader.at_end()


nonce = st.binary(min_size=20, max_size=20).map(lambda b: b.replace(b"\0", b"\1"))


@SETTINGS
@given(names, u32, nonce, caps32, u8, u16, names)
def test_greeting_round_trips(
    version: str, conn: int, data: bytes, caps: int, charset: int, status: int, plugin: str
) -> None:
    caps |= Capability.SECURE_CONNECTION | Capability.PLUGIN_AUTH
    greeting = HandshakeV10(version, conn, data, caps, charset, status, plugin)
    assert HandshakeV10.decode(greeting.encode()) == greeting


@SETTINGS
@given(caps32, u32, u8, names, st.binary(max_size=300), names, names, attrs, u8, u32)
def test_handshake_response_round_trips(
    caps: int,
    max_packet: int,
    charset: int,
    user: str,
    auth: bytes,
    database: str,
    plugin: str,
    connect_attrs: tuple[tuple[str, str], ...],
    zstd: int,
    mariadb: int,
) -> None:
    caps |= Capability.PROTOCOL_41
    if not caps & Capability.LONG_PASSWORD:
        caps |= mariadb << 32
    if not caps & Capability.PLUGIN_AUTH_LENENC_CLIENT_DATA:
        auth = auth[:255] if caps & Capability.SECURE_CONNECTION else auth.replace(b"\0", b"")
    response = HandshakeResponse41(
        caps,
        max_packet,
        charset,
        user,
        auth,
        database if caps & Capability.CONNECT_WITH_DB else None,
        plugin if caps & Capability.PLUGIN_AUTH else None,
        connect_attrs if caps & Capability.CONNECT_ATTRS else None,
        zstd if caps & Capability.ZSTD_COMPRESSION_ALGORITHM else None,
    )
    assert codec.decode_handshake_response(response.encode()) == response


tracks = st.one_of(
    st.builds(codec.SystemVariableTracked, names, names),
    st.builds(codec.SchemaTracked, names),
    st.builds(codec.StateChangeTracked, st.booleans()),
    st.builds(codec.GtidsTracked, u8, names),
    st.builds(codec.TransactionCharacteristicsTracked, names),
    st.builds(codec.TransactionStateTracked, names),
    st.builds(codec.UnknownTracked, st.integers(6, 255), blobs),
)


@SETTINGS
@given(
    lenenc, lenenc, u16, u16, blobs, st.lists(tracks, max_size=4).map(tuple),
    st.sampled_from([0x00, 0xFE]), st.booleans(),
)  # fmt: skip
def test_ok_round_trips(
    affected: int,
    insert_id: int,
    status: int,
    warnings: int,
    info: bytes,
    session_state: tuple[codec.SessionTrack, ...],
    header: int,
    track: bool,
) -> None:
    caps = Capability.PROTOCOL_41 | (Capability.SESSION_TRACK if track else 0)
    if not (track and status & ServerStatus.SESSION_STATE_CHANGED):
        session_state = ()
    ok = OkPacket(affected, insert_id, status, warnings, info, session_state, header)
    assert OkPacket.decode(ok.encode(caps), caps) == ok


@SETTINGS
@given(u16, st.none() | st.text("0123456789ABCDEFHYS", min_size=5, max_size=5), names)
def test_err_round_trips(errno: int, sqlstate: str | None, message: str) -> None:
    if sqlstate is None and message.startswith("#"):
        message = message[1:]
    err = ErrPacket(errno, sqlstate, message)
    assert ErrPacket.decode(err.encode()) == err


command_strategy = st.one_of(
    st.builds(codec.ComQuery, blobs),
    st.builds(codec.ComStmtPrepare, blobs),
    st.builds(codec.ComInitDb, names),
    st.builds(codec.ComFieldList, names, names),
    st.builds(codec.ComStmtExecute, u32, u8, u32, blobs),
    st.builds(codec.ComStmtSendLongData, u32, u16, blobs),
    st.builds(codec.ComStmtClose, u32),
    st.builds(codec.ComStmtReset, u32),
    st.builds(codec.ComStmtFetch, u32, u32),
    st.builds(codec.ComSetOption, u16),
    st.just(codec.ComPing()),
    st.just(codec.ComQuit()),
    st.just(codec.ComStatistics()),
    st.just(codec.ComResetConnection()),
)


@SETTINGS
@given(command_strategy)
def test_commands_round_trip(command: codec.Command) -> None:
    payload = command.encode()
    assert decode_command(payload, 0) == command
    assert codec.command_byte(command) == payload[0]


@SETTINGS
@given(names, st.binary(max_size=255), names, st.none() | u16, names, attrs, caps32)
def test_change_user_round_trips(
    user: str,
    auth: bytes,
    database: str,
    charset: int | None,
    plugin: str,
    connect_attrs: tuple[tuple[str, str], ...],
    caps: int,
) -> None:
    caps |= Capability.SECURE_CONNECTION
    with_rest = charset is not None
    command = codec.ComChangeUser(
        user,
        auth,
        database,
        charset,
        plugin if with_rest and caps & Capability.PLUGIN_AUTH else None,
        connect_attrs if with_rest and caps & Capability.CONNECT_ATTRS else None,
    )
    assert decode_command(command.encode(caps), caps) == command


@SETTINGS
@given(names, names, names, names, names, u16, u32, u8, u16, u8, names, st.none() | blobs)
def test_column_definition_round_trips(
    schema: str,
    table: str,
    org_table: str,
    name: str,
    org_name: str,
    charset: int,
    length: int,
    type_: int,
    flags: int,
    decimals: int,
    catalog: str,
    defaults: bytes | None,
) -> None:
    column = ColumnDefinition41(
        schema, table, org_table, name, org_name, charset, length, type_, flags, decimals,
        catalog, defaults,
    )  # fmt: skip
    assert ColumnDefinition41.decode(column.encode()) == column


@SETTINGS
@given(st.lists(st.none() | blobs, max_size=8).map(tuple))
def test_text_rows_round_trip(values: tuple[bytes | None, ...]) -> None:
    assert codec.decode_text_row(codec.encode_text_row(values), len(values)) == values


_SIZES = {codec.FieldType.TINY: 1, codec.FieldType.SHORT: 2, codec.FieldType.LONG: 4,
          codec.FieldType.DOUBLE: 8, codec.FieldType.NULL: 0}  # fmt: skip
binary_cell = st.one_of(
    *(st.tuples(st.just(t), st.binary(min_size=n, max_size=n)) for t, n in _SIZES.items()),
    st.tuples(st.sampled_from([codec.FieldType.DATETIME, codec.FieldType.TIME]), blobs),
    st.tuples(st.sampled_from([codec.FieldType.VAR_STRING, codec.FieldType.BLOB]), blobs),
    st.tuples(st.sampled_from(list(codec.FieldType)), st.none()),
)


@SETTINGS
@given(st.lists(binary_cell, max_size=12))
def test_binary_rows_round_trip(cells: list[tuple[int, bytes | None]]) -> None:
    types = tuple(t for t, _ in cells)
    values = tuple(v for _, v in cells)
    row = codec.encode_binary_row(values, types)
    assert codec.decode_binary_row(row, types) == values


@SETTINGS
@given(st.lists(st.lists(st.none() | blobs, min_size=2, max_size=2), max_size=5), u16)
def test_tracker_ends_a_text_result_at_its_terminator(
    rows: list[list[bytes | None]], status: int
) -> None:
    """A generated result set (with and without DEPRECATE_EOF) ends exactly at its last packet."""
    status &= ~(ServerStatus.MORE_RESULTS_EXISTS | ServerStatus.CURSOR_EXISTS)
    for deprecate in (False, True):
        caps = Capability.PROTOCOL_41 | (Capability.DEPRECATE_EOF if deprecate else 0)
        column = ColumnDefinition41("s", "t", "t", "c", "c", 45, 10, codec.FieldType.VAR_STRING)
        packets = [codec.ColumnCount(2).encode(), column.encode(), column.encode()]
        end = OkPacket(0, 0, status, 0, header=0xFE).encode(caps)
        if not deprecate:
            end = codec.EofPacket(0, status).encode()
            packets.append(end)
        packets += [codec.encode_text_row(tuple(row)) for row in rows] + [end]
        tracker = ResponseTracker(codec.ComQuery(b"SELECT"), caps)
        phases = [tracker.server_packet(p) for p in packets]
        assert phases == [codec.Phase.MORE] * (len(packets) - 1) + [codec.Phase.DONE]
        assert tracker.status_flags == status


# -- forwarding whole responses as runs of raw packets (PacketReader.take_response) ------------

_COMMANDS = st.sampled_from(
    [
        codec.CommandByte.QUERY,
        codec.CommandByte.STMT_EXECUTE,
        codec.CommandByte.STMT_PREPARE,
        codec.CommandByte.STMT_FETCH,
        codec.CommandByte.FIELD_LIST,
        codec.CommandByte.PING,
        codec.CommandByte.STATISTICS,
        codec.CommandByte.CHANGE_USER,
    ]
)
# First bytes that mean something somewhere in a response, and a few that do not.
_heads = st.sampled_from([0x00, 0x01, 0x02, 0x03, 0x0C, 0x41, 0xFB, 0xFC, 0xFE, 0xFF])
_payloads = st.builds(lambda head, tail: bytes((head,)) + tail, _heads, st.binary(max_size=14))


def _result_set(
    columns: int, rows: list[bytes], status: int, caps: int, binary: bool
) -> list[bytes]:
    column = ColumnDefinition41("s", "t", "t", "c", "c", 45, 10, codec.FieldType.VAR_STRING)
    deprecate = bool(caps & Capability.DEPRECATE_EOF)
    eof = codec.EofPacket(0, status).encode()
    end = OkPacket(0, 0, status, 0, header=0xFE).encode(caps) if deprecate else eof
    packets = [codec.ColumnCount(columns).encode()] + [column.encode()] * columns
    if not deprecate:
        packets.append(codec.EofPacket(0, status).encode())
    prefix = b"\x00" if binary else b""
    return packets + [prefix + row for row in rows] + [end]


@st.composite
def _responses(draw: st.DrawFn) -> tuple[int, int, bool, list[bytes]]:
    """(command, capabilities, opens_cursor, payloads): a well-formed response, perhaps with
    more results, or random packets after a well-formed start."""
    caps = Capability.PROTOCOL_41 | (Capability.DEPRECATE_EOF if draw(st.booleans()) else 0)
    command = draw(_COMMANDS)
    binary = command == codec.CommandByte.STMT_EXECUTE
    payloads: list[bytes] = []
    for more in reversed(range(draw(st.integers(1, 3)))):
        status = draw(u16) & ~ServerStatus.MORE_RESULTS_EXISTS & ~ServerStatus.CURSOR_EXISTS
        if more:
            status |= ServerStatus.MORE_RESULTS_EXISTS
        rows = draw(st.lists(st.binary(max_size=30), max_size=6))
        payloads += _result_set(draw(st.integers(1, 3)), rows, status, caps, binary)
    if draw(st.booleans()):
        cut = draw(st.integers(0, len(payloads)))
        payloads = payloads[:cut] + draw(st.lists(_payloads, max_size=8))
    return command, int(caps), draw(st.booleans()), payloads


def _stream(payloads: list[bytes]) -> bytes:
    stream, seq = b"", 1
    for payload in payloads:
        data, seq = encode_packets(payload, seq)
        stream += data
    return stream


def _outcome(tracker: ResponseTracker, reader: PacketReader) -> tuple[object, ...]:
    return (
        tracker.phase,
        tracker.status_flags,
        tracker.error,
        tracker.result_sets,
        tracker.prepare_ok,
        reader.buffered,
    )


def _packet_by_packet(
    stream: bytes, command: int, caps: int, cursor: bool
) -> tuple[object, ...] | str:
    reader = PacketReader(expected_sequence=1)
    reader.feed(stream)
    tracker = ResponseTracker(command, caps, opens_cursor=cursor)
    try:
        while tracker.phase is codec.Phase.MORE and (packet := reader.next()) is not None:
            tracker.server_packet(packet.payload)
    except ProtocolError:
        return "error"
    return _outcome(tracker, reader)


@SETTINGS
@given(_responses(), st.lists(st.integers(0, 10**6), max_size=6))
def test_runs_account_a_response_as_packet_by_packet(
    response: tuple[int, int, bool, list[bytes]], cuts: list[int]
) -> None:
    """Taking a response as runs of raw packets (any chunking) ends it where decoding packet
    by packet does, with the same status, error and counts, and forwards exactly its bytes."""
    command, caps, cursor, payloads = response
    stream = _stream(payloads)
    expected = _packet_by_packet(stream, command, caps, cursor)
    reader = PacketReader(expected_sequence=1)
    tracker = ResponseTracker(command, caps, opens_cursor=cursor)
    runs: list[codec.PacketRun] = []
    try:
        for piece in _split(stream, cuts):
            reader.feed(piece)
            while tracker.phase is codec.Phase.MORE:
                run = reader.take_response(tracker)
                if run is None:
                    break
                runs.append(run)
    except ProtocolError:
        assert expected == "error"
        return
    assert _outcome(tracker, reader) == expected
    forwarded = b"".join(run.data for run in runs)
    assert forwarded == stream[: len(stream) - reader.buffered]
    packets = [p for run in runs for p in run.packets()]
    assert [p.payload for p in packets] == payloads[: len(packets)]
    for run in runs:
        assert run.last_payload == run.packets()[-1].payload
        assert run.head + encode_packets(run.last_payload, run.last_sequence_id)[0] == run.data


@SETTINGS
@given(st.lists(st.binary(max_size=300), min_size=1, max_size=6), u8, u8)
def test_renumber_shifts_every_chunk(payloads: list[bytes], first: int, start: int) -> None:
    stream, seq = b"", first
    for payload in payloads:
        data, seq = encode_packets(payload, seq)
        stream += data
    again, nxt = codec.renumber(stream, start)
    reader = PacketReader(expected_sequence=start)
    reader.feed(again)
    assert [p.payload for p in reader] == payloads
    assert nxt == (start + len(payloads)) & 0xFF
    assert (again is stream) == (first == start)
