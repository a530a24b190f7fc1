"""Sans-IO codec for the MySQL/MariaDB client/server protocol (protocol 4.1).

Bytes go in through :meth:`PacketReader.feed`; whole payloads come out of
:meth:`PacketReader.next` (``None`` means "need more data"); malformed input raises
:class:`ProtocolError` and nothing else (no ``struct.error`` or ``IndexError`` escapes a parser).
There is no socket and no event loop in this module.

Sections followed (MySQL Source Code Documentation, "Client/Server Protocol"; MariaDB
documentation, "Client/Server Protocol"):

* "MySQL Packets" / MariaDB "0 - Packet": ``int<3>`` payload length + ``int<1>`` sequence id;
  a payload of 0xFFFFFF bytes or more is sent in 0xFFFFFF-byte chunks followed by a shorter one
  (possibly empty), with consecutive sequence ids.
* "Basic Data Types": fixed-length little-endian integers, length-encoded integers
  (``< 0xFB`` one byte, ``0xFC`` + 2, ``0xFD`` + 3, ``0xFE`` + 8; ``0xFB`` is NULL in a row) and
  length-encoded, NUL-terminated and rest-of-packet strings.
* "Connection Phase Packets": Protocol::HandshakeV10, Protocol::HandshakeResponse41,
  Protocol::SSLRequest, Protocol::AuthSwitchRequest, Protocol::AuthSwitchResponse,
  Protocol::AuthMoreData; MariaDB "Connection": the last 4 of the 10 reserved bytes of the
  greeting and the last 4 of the 23 filler bytes of the response carry MariaDB's extended
  capabilities when ``CLIENT_MYSQL`` (bit 0) is clear. They appear here shifted left by 32.
* "Generic Response Packets": OK_Packet (with "Session State Information" when
  ``CLIENT_SESSION_TRACK``), ERR_Packet, EOF_Packet; "Capabilities Flags" and
  "SERVER_STATUS_flags_enum".
* "Command Phase": "Text Protocol" (COM_QUERY and its response: column count,
  Protocol::ColumnDefinition41, ProtocolText::ResultsetRow, LOCAL INFILE request; COM_INIT_DB,
  COM_FIELD_LIST, COM_STATISTICS, COM_PING, COM_QUIT, COM_CHANGE_USER, COM_RESET_CONNECTION,
  COM_SET_OPTION) and "Prepared Statements" (COM_STMT_PREPARE and COM_STMT_PREPARE_OK,
  COM_STMT_EXECUTE, COM_STMT_SEND_LONG_DATA, COM_STMT_CLOSE, COM_STMT_RESET, COM_STMT_FETCH,
  "Binary Protocol Resultset Row"); WL#7766 "Deprecate the EOF packet" for
  ``CLIENT_DEPRECATE_EOF``; MariaDB "COM_STMT_EXECUTE" for cursors (column definitions and an EOF
  whose status carries SERVER_STATUS_CURSOR_EXISTS, rows only on COM_STMT_FETCH).

Packets do not name their direction and their first bytes collide (0xFE is an EOF, an OK ending
a result set under DEPRECATE_EOF, or an AuthSwitchRequest; 0x00 an OK, a prepare-OK or a binary
row), so server packets are decoded by the class the context calls for, and
:class:`ResponseTracker` knows that context for the command phase. Client commands are decoded
by :func:`decode_command`. Not negotiated, hence not decoded: compression, MySQL's
``CLIENT_OPTIONAL_RESULTSET_METADATA`` and ``CLIENT_QUERY_ATTRIBUTES``, MariaDB's
``EXTENDED_TYPE_INFO``, ``CACHE_METADATA`` and bulk execution; :func:`negotiate` drops them.
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Final, TypeAlias

__all__ = [
    "CACHING_SHA2_PASSWORD",
    "DEFAULT_MAX_PAYLOAD",
    "FAST_AUTH_SUCCESS",
    "MAX_CHUNK",
    "MYSQL_NATIVE_PASSWORD",
    "PERFORM_FULL_AUTHENTICATION",
    "SUPPORTED_CAPABILITIES",
    "AuthMoreData",
    "AuthSwitchRequest",
    "AuthSwitchResponse",
    "Capability",
    "ColumnCount",
    "ColumnDefinition41",
    "ComChangeUser",
    "ComFieldList",
    "ComInitDb",
    "ComPing",
    "ComQuery",
    "ComQuit",
    "ComResetConnection",
    "ComSetOption",
    "ComStatistics",
    "ComStmtClose",
    "ComStmtExecute",
    "ComStmtFetch",
    "ComStmtPrepare",
    "ComStmtReset",
    "ComStmtSendLongData",
    "Command",
    "CommandByte",
    "CursorType",
    "EofPacket",
    "ErrPacket",
    "FieldType",
    "GtidsTracked",
    "HandshakeResponse41",
    "HandshakeV10",
    "OkPacket",
    "Packet",
    "PacketReader",
    "PacketRun",
    "PacketWriter",
    "Phase",
    "ProtocolError",
    "ResponseTracker",
    "SchemaTracked",
    "ServerStatus",
    "SessionTrack",
    "SessionTrackType",
    "SslRequest",
    "StateChangeTracked",
    "StmtPrepareOk",
    "SystemVariableTracked",
    "TransactionCharacteristicsTracked",
    "TransactionStateTracked",
    "UnknownCommand",
    "UnknownTracked",
    "command_byte",
    "decode_binary_row",
    "decode_command",
    "decode_handshake_response",
    "decode_text_row",
    "encode_binary_row",
    "encode_lenenc_bytes",
    "encode_lenenc_int",
    "encode_packets",
    "encode_text_row",
    "execute_opens_cursor",
    "expects_response",
    "negotiate",
    "renumber",
]

MAX_CHUNK: Final = 0xFFFFFF
# MySQL 8's default max_allowed_packet is 64 MB (MariaDB's 16 MB); the upper bound is 1 GB.
DEFAULT_MAX_PAYLOAD: Final = 64 * 1024 * 1024
MYSQL_NATIVE_PASSWORD: Final = "mysql_native_password"
CACHING_SHA2_PASSWORD: Final = "caching_sha2_password"

_U16: Final = struct.Struct("<H")
_U32: Final = struct.Struct("<I")
_U64: Final = struct.Struct("<Q")
_COMPACT_AT: Final = 64 * 1024
# Identifiers (user, schema, plugin and column names) are decoded losslessly: a non-UTF-8 name
# survives decode/encode byte for byte.
_ENC: Final = "utf-8"
_ERRORS: Final = "surrogateescape"


class ProtocolError(Exception):
    """Malformed, oversized, truncated or out-of-order input from a peer.

    The proxy answers a client with an ERR packet and closes only that connection.
    """

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class Capability(enum.IntFlag):
    """Capability flags ("Capabilities Flags"); MariaDB's extended ones shifted left by 32."""

    LONG_PASSWORD = 1 << 0  # MariaDB: CLIENT_MYSQL, clear in a MariaDB server's greeting
    FOUND_ROWS = 1 << 1
    LONG_FLAG = 1 << 2
    CONNECT_WITH_DB = 1 << 3
    NO_SCHEMA = 1 << 4
    COMPRESS = 1 << 5
    ODBC = 1 << 6
    LOCAL_FILES = 1 << 7
    IGNORE_SPACE = 1 << 8
    PROTOCOL_41 = 1 << 9
    INTERACTIVE = 1 << 10
    SSL = 1 << 11
    IGNORE_SIGPIPE = 1 << 12
    TRANSACTIONS = 1 << 13
    RESERVED = 1 << 14
    SECURE_CONNECTION = 1 << 15
    MULTI_STATEMENTS = 1 << 16
    MULTI_RESULTS = 1 << 17
    PS_MULTI_RESULTS = 1 << 18
    PLUGIN_AUTH = 1 << 19
    CONNECT_ATTRS = 1 << 20
    PLUGIN_AUTH_LENENC_CLIENT_DATA = 1 << 21
    CAN_HANDLE_EXPIRED_PASSWORDS = 1 << 22
    SESSION_TRACK = 1 << 23
    DEPRECATE_EOF = 1 << 24
    OPTIONAL_RESULTSET_METADATA = 1 << 25
    ZSTD_COMPRESSION_ALGORITHM = 1 << 26
    QUERY_ATTRIBUTES = 1 << 27
    MULTI_FACTOR_AUTHENTICATION = 1 << 28
    CAPABILITY_EXTENSION = 1 << 29
    SSL_VERIFY_SERVER_CERT = 1 << 30
    REMEMBER_OPTIONS = 1 << 31
    MARIADB_PROGRESS = 1 << 32
    MARIADB_COM_MULTI = 1 << 33
    MARIADB_STMT_BULK_OPERATIONS = 1 << 34
    MARIADB_EXTENDED_TYPE_INFO = 1 << 35
    MARIADB_CACHE_METADATA = 1 << 36
    MARIADB_BULK_UNIT_RESULTS = 1 << 37


# What this codec can decode, hence the most a proxy may agree to with either peer.
SUPPORTED_CAPABILITIES: Final = (
    Capability.LONG_PASSWORD
    | Capability.FOUND_ROWS
    | Capability.LONG_FLAG
    | Capability.CONNECT_WITH_DB
    | Capability.NO_SCHEMA
    | Capability.ODBC
    | Capability.LOCAL_FILES
    | Capability.IGNORE_SPACE
    | Capability.PROTOCOL_41
    | Capability.INTERACTIVE
    | Capability.SSL
    | Capability.IGNORE_SIGPIPE
    | Capability.TRANSACTIONS
    | Capability.SECURE_CONNECTION
    | Capability.MULTI_STATEMENTS
    | Capability.MULTI_RESULTS
    | Capability.PS_MULTI_RESULTS
    | Capability.PLUGIN_AUTH
    | Capability.CONNECT_ATTRS
    | Capability.PLUGIN_AUTH_LENENC_CLIENT_DATA
    | Capability.CAN_HANDLE_EXPIRED_PASSWORDS
    | Capability.SESSION_TRACK
    | Capability.DEPRECATE_EOF
    | Capability.SSL_VERIFY_SERVER_CERT
    | Capability.REMEMBER_OPTIONS
)


def negotiate(server: int, client: int) -> Capability:
    """The capabilities in effect: those both peers announced and this codec decodes.

    "Capabilities Flags": a flag counts only if both sides set it. The result always lacks
    compression, optional metadata, query attributes and MariaDB's metadata extensions, which
    change packet layouts this codec does not parse.
    """
    return Capability(server & client & SUPPORTED_CAPABILITIES)


class ServerStatus(enum.IntFlag):
    """The status flags of OK and EOF packets ("SERVER_STATUS_flags_enum")."""

    IN_TRANS = 1 << 0
    AUTOCOMMIT = 1 << 1
    MORE_RESULTS_EXISTS = 1 << 3
    NO_GOOD_INDEX_USED = 1 << 4
    NO_INDEX_USED = 1 << 5
    CURSOR_EXISTS = 1 << 6
    LAST_ROW_SENT = 1 << 7
    DB_DROPPED = 1 << 8
    NO_BACKSLASH_ESCAPES = 1 << 9
    METADATA_CHANGED = 1 << 10
    QUERY_WAS_SLOW = 1 << 11
    PS_OUT_PARAMS = 1 << 12
    IN_TRANS_READONLY = 1 << 13
    SESSION_STATE_CHANGED = 1 << 14
    ANSI_QUOTES = 1 << 15  # MariaDB


class CommandByte(enum.IntEnum):
    """The first byte of a command-phase packet from a client ("Command Phase")."""

    SLEEP = 0x00
    QUIT = 0x01
    INIT_DB = 0x02
    QUERY = 0x03
    FIELD_LIST = 0x04
    CREATE_DB = 0x05
    DROP_DB = 0x06
    REFRESH = 0x07
    SHUTDOWN = 0x08
    STATISTICS = 0x09
    PROCESS_INFO = 0x0A
    CONNECT = 0x0B
    PROCESS_KILL = 0x0C
    DEBUG = 0x0D
    PING = 0x0E
    TIME = 0x0F
    DELAYED_INSERT = 0x10
    CHANGE_USER = 0x11
    BINLOG_DUMP = 0x12
    TABLE_DUMP = 0x13
    CONNECT_OUT = 0x14
    REGISTER_SLAVE = 0x15
    STMT_PREPARE = 0x16
    STMT_EXECUTE = 0x17
    STMT_SEND_LONG_DATA = 0x18
    STMT_CLOSE = 0x19
    STMT_RESET = 0x1A
    SET_OPTION = 0x1B
    STMT_FETCH = 0x1C
    DAEMON = 0x1D
    BINLOG_DUMP_GTID = 0x1E
    RESET_CONNECTION = 0x1F


class CursorType(enum.IntFlag):
    """COM_STMT_EXECUTE flags."""

    NO_CURSOR = 0
    READ_ONLY = 1
    FOR_UPDATE = 2
    SCROLLABLE = 4


class FieldType(enum.IntEnum):
    """Column types ("enum_field_types"); they fix a binary row value's size."""

    DECIMAL = 0
    TINY = 1
    SHORT = 2
    LONG = 3
    FLOAT = 4
    DOUBLE = 5
    NULL = 6
    TIMESTAMP = 7
    LONGLONG = 8
    INT24 = 9
    DATE = 10
    TIME = 11
    DATETIME = 12
    YEAR = 13
    NEWDATE = 14
    VARCHAR = 15
    BIT = 16
    TIMESTAMP2 = 17
    DATETIME2 = 18
    TIME2 = 19
    VECTOR = 242
    JSON = 245
    NEWDECIMAL = 246
    ENUM = 247
    SET = 248
    TINY_BLOB = 249
    MEDIUM_BLOB = 250
    LONG_BLOB = 251
    BLOB = 252
    VAR_STRING = 253
    STRING = 254
    GEOMETRY = 255


# --------------------------------------------------------------------------------------------
# Framing


@dataclass(slots=True)
class Packet:
    """One logical packet: the reassembled payload and the sequence ids it used on the wire.

    Treat it as a value; it is not frozen because a frozen dataclass sets its fields through a
    Python-level ``__setattr__``, which makes building one, for every client command, five
    times slower (compiled: 0.5-0.8 µs instead of about 0.1 µs)."""

    sequence_id: int
    payload: bytes
    # The id of its last chunk: differs from sequence_id for a payload of 16 MB or more.
    last_sequence_id: int


class PacketReader:
    """Incremental framing of packets, reassembling 0xFFFFFF-byte continuations.

    The declared length of every chunk is checked against :attr:`max_payload` (counting the
    chunks already received for the same payload) as soon as its 4-byte header is available,
    before its body is waited for. If :attr:`expected_sequence` is not ``None`` the first chunk
    must carry it; continuation chunks must always be consecutive. After each packet
    :attr:`expected_sequence` (when set) becomes the id following its last chunk.
    """

    __slots__ = (
        "_buf",
        "_first_seq",
        "_parts",
        "_parts_len",
        "_pos",
        "_seq",
        "expected_sequence",
        "max_payload",
    )

    def __init__(
        self, max_payload: int = DEFAULT_MAX_PAYLOAD, expected_sequence: int | None = None
    ) -> None:
        self.max_payload = max_payload
        self.expected_sequence = expected_sequence
        self._buf = bytearray()
        self._pos = 0
        # Chunks of a payload being reassembled, their total size, and the last chunk's id.
        self._parts: list[bytes] = []
        self._parts_len = 0
        self._seq = -1
        self._first_seq = 0

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        """Append bytes received from the peer."""
        pos = self._pos
        if pos:
            buf = self._buf
            if pos == len(buf):
                buf.clear()
                self._pos = 0
            elif pos >= _COMPACT_AT:
                del buf[:pos]
                self._pos = 0
        self._buf += data

    def next(self) -> Packet | None:
        """Return the next complete packet, or ``None`` if more data is needed."""
        buf = self._buf
        while True:
            pos = self._pos
            if len(buf) - pos < 4:
                return None
            length = buf[pos] | buf[pos + 1] << 8 | buf[pos + 2] << 16
            seq = buf[pos + 3]
            if self._parts:
                if seq != (self._seq + 1) & 0xFF:
                    raise ProtocolError(
                        f"packet continuation out of order: sequence id {seq} after {self._seq}"
                    )
            elif self.expected_sequence is not None and seq != self.expected_sequence:
                raise ProtocolError(
                    f"packets out of order: sequence id {seq}, expected {self.expected_sequence}"
                )
            total = self._parts_len + length
            if total > self.max_payload:
                raise ProtocolError(
                    f"packet payload of at least {total} bytes exceeds the limit of "
                    f"{self.max_payload} bytes"
                )
            end = pos + 4 + length
            if end > len(buf):
                return None
            chunk = bytes(buf[pos + 4 : end])
            self._pos = end
            if length == MAX_CHUNK:
                if not self._parts:
                    self._first_seq = seq
                self._parts.append(chunk)
                self._parts_len = total
                self._seq = seq
                continue
            if self._parts:
                self._parts.append(chunk)
                payload = b"".join(self._parts)
                first = self._first_seq
                self._parts = []
                self._parts_len = 0
            else:
                payload = chunk
                first = seq
            self._seq = -1
            if self.expected_sequence is not None:
                self.expected_sequence = (seq + 1) & 0xFF
            return Packet(first, payload, seq)

    def __iter__(self) -> Iterator[Packet]:
        """Yield every complete packet currently buffered."""
        while (packet := self.next()) is not None:
            yield packet

    def take_response(self, tracker: ResponseTracker) -> PacketRun | None:
        """The whole packets buffered that continue the response `tracker` follows (its phase
        is MORE), as one run of raw bytes, headers included: up to the packet that ends the
        response or gives the client its turn, or else to the last whole packet buffered.

        Each packet is checked as :meth:`next` checks it (length limit, sequence id) and
        accounted with :meth:`ResponseTracker.server_packet_in`, which copies no row. None
        when no whole packet is buffered, or when the next one is a chunk of a payload of
        16 MB or more: :meth:`next` reassembles those.
        """
        if self._parts:
            return None
        buf = self._buf
        n = len(buf)
        start = pos = self._pos
        expected = self.expected_sequence
        limit = self.max_payload
        first_seq = last_seq = -1
        last = start
        phase = tracker.phase
        while phase is Phase.MORE and n - pos >= 4:
            length = buf[pos] | buf[pos + 1] << 8 | buf[pos + 2] << 16
            if length == MAX_CHUNK:
                break
            seq = buf[pos + 3]
            if expected is not None:
                if seq != expected:
                    raise ProtocolError(
                        f"packets out of order: sequence id {seq}, expected {expected}"
                    )
            elif last_seq >= 0 and seq != (last_seq + 1) & 0xFF:
                break  # a run's ids are consecutive; the next run starts here
            if length > limit:
                raise ProtocolError(
                    f"packet payload of at least {length} bytes exceeds the limit of {limit} bytes"
                )
            end = pos + 4 + length
            if end > n:
                break
            phase = tracker.server_packet_in(buf, pos + 4, end)
            if first_seq < 0:
                first_seq = seq
            last_seq = seq
            last = pos
            pos = end
            if expected is not None:
                expected = (seq + 1) & 0xFF
        if first_seq < 0:
            return None
        self._pos = pos
        self.expected_sequence = expected
        return PacketRun(bytes(buf[start:pos]), first_seq, last_seq, last - start)

    @property
    def buffered(self) -> int:
        """Bytes held that do not yet make a packet (including reassembled chunks)."""
        return len(self._buf) - self._pos + self._parts_len + 4 * len(self._parts)

    def feed_eof(self) -> None:
        """The peer closed the connection: raise if it left a packet unfinished."""
        if self.buffered:
            raise ProtocolError(
                f"connection closed in the middle of a packet ({self.buffered} bytes)"
            )


class PacketRun:
    """Whole packets in a row as they came off the wire, headers included, with consecutive
    sequence ids: what the proxy forwards from a server to its client in one write."""

    __slots__ = ("_last", "_last_start", "data", "first_sequence_id", "last_sequence_id")

    def __init__(
        self, data: bytes, first_sequence_id: int, last_sequence_id: int, last_start: int
    ) -> None:
        self.data = data
        self.first_sequence_id = first_sequence_id
        # The id of the last chunk (a packet of 16 MB or more takes several).
        self.last_sequence_id = last_sequence_id
        self._last_start = last_start  # where the last packet's header starts in `data`
        self._last: bytes | None = None

    @classmethod
    def of(cls, packet: Packet) -> PacketRun:
        """The run of one (reassembled) packet, framed as its sender framed it."""
        data, _ = encode_packets(packet.payload, packet.sequence_id)
        run = cls(data, packet.sequence_id, packet.last_sequence_id, 0)
        run._last = packet.payload
        return run

    @property
    def last_payload(self) -> bytes:
        """The payload of the last packet (the one that may end a response)."""
        last = self._last
        if last is None:
            last = self._last = self.data[self._last_start + 4 :]
        return last

    @property
    def head(self) -> bytes:
        """The packets before the last one, headers included."""
        return self.data[: self._last_start]

    def with_first_payload(self, payload: bytes) -> PacketRun:
        """This run with its first packet's payload replaced by one of the same length (a
        COM_STMT_PREPARE_OK renumbered for the client)."""
        data = self.data
        size = data[0] | data[1] << 8 | data[2] << 16
        if len(payload) != size or size >= MAX_CHUNK:
            raise ValueError("with_first_payload() keeps the packet's length")
        return PacketRun(
            data[:4] + payload + data[4 + size :],
            self.first_sequence_id,
            self.last_sequence_id,
            self._last_start,
        )

    def packets(self) -> list[Packet]:
        """The packets decoded (tests, diagnostics)."""
        reader = PacketReader(max(len(self.data), 1))
        reader.feed(self.data)
        return list(reader)

    def __repr__(self) -> str:
        return (
            f"<PacketRun {len(self.data)} bytes, ids {self.first_sequence_id}.."
            f"{self.last_sequence_id}>"
        )


def renumber(data: bytes, sequence_id: int) -> tuple[bytes, int]:
    """Whole packets `data` with their chunks numbered from `sequence_id` on; the bytes and the
    next id. Unchanged (not copied) when the first chunk already has that id and the ids are
    consecutive, as in a :class:`PacketRun`."""
    seq = sequence_id & 0xFF
    n = len(data)
    out: bytearray | None = None
    pos = 0
    while pos + 4 <= n:
        if data[pos + 3] != seq:
            if out is None:
                out = bytearray(data)
            out[pos + 3] = seq
        seq = (seq + 1) & 0xFF
        pos += 4 + (data[pos] | data[pos + 1] << 8 | data[pos + 2] << 16)
    if pos != n:
        raise ValueError("renumber() takes whole packets")
    return (data if out is None else bytes(out)), seq


def execute_opens_cursor(payload: bytes) -> bool:
    """Whether a COM_STMT_EXECUTE payload's flags ask for a cursor (:attr:`ComStmtExecute.
    opens_cursor`), read from the flags byte alone; False for a payload too short to say."""
    return len(payload) > 5 and bool(payload[5] & 0x07)


def encode_packets(payload: bytes, sequence_id: int) -> tuple[bytes, int]:
    """Frame ``payload`` starting at ``sequence_id``; return the bytes and the next id.

    A payload of 0xFFFFFF bytes or more goes out in 0xFFFFFF-byte chunks, and one shorter
    (possibly empty) chunk always ends it ("Sending More Than 16Mb").
    """
    parts = []
    view = memoryview(payload)
    seq = sequence_id & 0xFF
    while len(view) >= MAX_CHUNK:
        parts.append(b"\xff\xff\xff" + bytes((seq,)))
        parts.append(bytes(view[:MAX_CHUNK]))
        view = view[MAX_CHUNK:]
        seq = (seq + 1) & 0xFF
    parts.append(len(view).to_bytes(3, "little") + bytes((seq,)))
    parts.append(bytes(view))
    return b"".join(parts), (seq + 1) & 0xFF


class PacketWriter:
    """Numbers outgoing packets; :meth:`reset` starts a new command cycle at id 0."""

    __slots__ = ("sequence_id",)

    def __init__(self, sequence_id: int = 0) -> None:
        self.sequence_id = sequence_id

    def reset(self, sequence_id: int = 0) -> None:
        """Start a new exchange (a command from the client restarts the count at 0)."""
        self.sequence_id = sequence_id

    def write(self, payload: bytes) -> bytes:
        """Frame one payload with the next sequence id(s)."""
        data, self.sequence_id = encode_packets(payload, self.sequence_id)
        return data


# --------------------------------------------------------------------------------------------
# Basic data types


def encode_lenenc_int(value: int) -> bytes:
    """A length-encoded integer ("Basic Data Types: Integer Types")."""
    if value < 0:
        raise ValueError(f"length-encoded integers are unsigned: {value}")
    if value < 0xFB:
        return bytes((value,))
    if value < 1 << 16:
        return b"\xfc" + _U16.pack(value)
    if value < 1 << 24:
        return b"\xfd" + value.to_bytes(3, "little")
    if value < 1 << 64:
        return b"\xfe" + _U64.pack(value)
    raise ValueError(f"length-encoded integer out of range: {value}")


def encode_lenenc_bytes(value: bytes) -> bytes:
    """A length-encoded string."""
    return encode_lenenc_int(len(value)) + value


def _lenenc_str(text: str) -> bytes:
    return encode_lenenc_bytes(text.encode(_ENC, _ERRORS))


def _nul_str(text: str) -> bytes:
    raw = text.encode(_ENC, _ERRORS)
    if b"\0" in raw:
        raise ValueError(f"NUL-terminated strings cannot contain NUL: {text!r}")
    return raw + b"\0"


class _Reader:
    """Bounds-checked reads over a payload; every failure is a ProtocolError."""

    __slots__ = ("_data", "_name", "pos")

    def __init__(self, data: bytes, name: str, pos: int = 0) -> None:
        self._data = data
        self._name = name
        self.pos = pos

    def error(self, problem: str) -> ProtocolError:
        return ProtocolError(f"invalid {self._name} packet: {problem}")

    def _need(self, n: int) -> int:
        pos = self.pos
        if len(self._data) - pos < n:
            raise self.error(f"truncated (needs {n} more bytes, has {len(self._data) - pos})")
        self.pos = pos + n
        return pos

    @property
    def remaining(self) -> int:
        return len(self._data) - self.pos

    def at_end(self) -> bool:
        return self.pos >= len(self._data)

    def u8(self) -> int:
        return self._data[self._need(1)]

    def u16(self) -> int:
        result: int = _U16.unpack_from(self._data, self._need(2))[0]
        return result

    def u24(self) -> int:
        pos = self._need(3)
        return int.from_bytes(self._data[pos : pos + 3], "little")

    def u32(self) -> int:
        result: int = _U32.unpack_from(self._data, self._need(4))[0]
        return result

    def u64(self) -> int:
        result: int = _U64.unpack_from(self._data, self._need(8))[0]
        return result

    def take(self, n: int) -> bytes:
        pos = self._need(n)
        return self._data[pos : pos + n]

    def lenenc_int(self) -> int:
        first = self.u8()
        if first < 0xFB:
            return first
        if first == 0xFC:
            return self.u16()
        if first == 0xFD:
            return self.u24()
        if first == 0xFE:
            return self.u64()
        raise self.error(f"invalid length-encoded integer prefix 0x{first:02x}")

    def lenenc_bytes(self) -> bytes:
        n = self.lenenc_int()
        # Never trust a length: it must fit in what is left of this payload.
        if n > self.remaining:
            raise self.error(f"string length {n} exceeds the {self.remaining} bytes left")
        return self.take(n)

    def lenenc_str(self) -> str:
        return self.lenenc_bytes().decode(_ENC, _ERRORS)

    def nul_bytes(self, *, eof_ok: bool = False) -> bytes:
        """A NUL-terminated string; with `eof_ok` the end of the payload also ends it."""
        data = self._data
        pos = self.pos
        end = data.find(b"\0", pos)
        if end < 0:
            if not eof_ok:
                raise self.error("missing string terminator")
            self.pos = len(data)
            return data[pos:]
        self.pos = end + 1
        return data[pos:end]

    def nul_str(self, *, eof_ok: bool = False) -> str:
        return self.nul_bytes(eof_ok=eof_ok).decode(_ENC, _ERRORS)

    def rest(self) -> bytes:
        pos = self.pos
        self.pos = len(self._data)
        return self._data[pos:]

    def done(self) -> None:
        if self.remaining:
            raise self.error(f"{self.remaining} unexpected trailing bytes")


def _attrs_encode(attrs: tuple[tuple[str, str], ...]) -> bytes:
    body = b"".join(_lenenc_str(k) + _lenenc_str(v) for k, v in attrs)
    return encode_lenenc_bytes(body)


def _attrs_decode(r: _Reader) -> tuple[tuple[str, str], ...]:
    sub = _Reader(r.lenenc_bytes(), "connection attributes")
    attrs = []
    while not sub.at_end():
        attrs.append((sub.lenenc_str(), sub.lenenc_str()))
    return tuple(attrs)


# --------------------------------------------------------------------------------------------
# Connection phase


@dataclass(frozen=True, slots=True)
class HandshakeV10:
    """The server greeting (Protocol::HandshakeV10), server to client.

    ``auth_plugin_data`` is the whole nonce (20 bytes from MySQL and MariaDB) without the NUL
    that follows its second part; ``capabilities`` includes MariaDB's extended ones (<< 32).
    """

    server_version: str
    connection_id: int
    auth_plugin_data: bytes
    capabilities: int
    charset: int
    status_flags: int
    auth_plugin_name: str

    def encode(self) -> bytes:
        """The packet payload."""
        caps = self.capabilities
        data = self.auth_plugin_data
        if len(data) < 8:
            raise ValueError("auth_plugin_data must hold at least 8 bytes")
        part2 = (data[8:] + b"\0").ljust(13, b"\0")
        mariadb = 0 if caps & Capability.LONG_PASSWORD else caps >> 32
        return b"".join(
            (
                b"\x0a",
                _nul_str(self.server_version),
                _U32.pack(self.connection_id),
                data[:8],
                b"\0",
                _U16.pack(caps & 0xFFFF),
                bytes((self.charset,)),
                _U16.pack(self.status_flags),
                _U16.pack((caps >> 16) & 0xFFFF),
                bytes((len(data) + 1 if caps & Capability.PLUGIN_AUTH else 0,)),
                b"\0" * 6,
                _U32.pack(mariadb),
                part2 if caps & Capability.SECURE_CONNECTION else b"",
                _nul_str(self.auth_plugin_name) if caps & Capability.PLUGIN_AUTH else b"",
            )
        )

    @classmethod
    def decode(cls, payload: bytes) -> HandshakeV10:
        """Decode a greeting; an ERR packet or another protocol version raises ProtocolError."""
        r = _Reader(payload, "HandshakeV10")
        version = r.u8()
        if version != 10:
            if version == 0xFF:
                raise r.error("the server refused the connection with an ERR packet")
            raise r.error(f"unsupported protocol version {version}")
        server_version = r.nul_str()
        connection_id = r.u32()
        data = r.take(8)
        r.take(1)
        caps = r.u16()
        charset = status = 0
        plugin = ""
        if not r.at_end():
            charset = r.u8()
            status = r.u16()
            caps |= r.u16() << 16
            data_len = r.u8()
            r.take(6)
            mariadb = r.u32()
            if not caps & Capability.LONG_PASSWORD:
                caps |= mariadb << 32
            if caps & Capability.SECURE_CONNECTION:
                part2 = r.take(max(13, data_len - 8))
                if data_len:
                    # data_len counts the NUL after the nonce; part2 is padded to 13 bytes.
                    data += part2[: max(0, data_len - 9)]
                else:
                    data += part2[:-1] if part2.endswith(b"\0") else part2
            if caps & Capability.PLUGIN_AUTH:
                # MySQL 5.5.7-5.5.9 omitted the terminator: the payload's end ends the name.
                plugin = r.nul_str(eof_ok=True)
        return cls(server_version, connection_id, data, caps, charset, status, plugin)


@dataclass(frozen=True, slots=True)
class SslRequest:
    """Protocol::SSLRequest: the first 32 bytes of a HandshakeResponse41 with CLIENT_SSL."""

    capabilities: int
    max_packet_size: int
    charset: int

    def encode(self) -> bytes:
        """The packet payload."""
        return _response_head(self.capabilities, self.max_packet_size, self.charset)


def _response_head(caps: int, max_packet: int, charset: int) -> bytes:
    mariadb = 0 if caps & Capability.LONG_PASSWORD else caps >> 32
    return (
        _U32.pack(caps & 0xFFFFFFFF)
        + _U32.pack(max_packet)
        + bytes((charset,))
        + b"\0" * 19
        + _U32.pack(mariadb)
    )


@dataclass(frozen=True, slots=True)
class HandshakeResponse41:
    """Protocol::HandshakeResponse41, client to server.

    The capabilities in the packet decide its layout: ``database`` is sent only with
    CONNECT_WITH_DB, ``auth_plugin_name`` with PLUGIN_AUTH, ``connect_attrs`` with
    CONNECT_ATTRS, ``zstd_level`` with ZSTD_COMPRESSION_ALGORITHM; fields the capabilities leave
    out are ``None`` when decoded.
    """

    capabilities: int
    max_packet_size: int
    charset: int
    username: str
    auth_response: bytes
    database: str | None = None
    auth_plugin_name: str | None = None
    connect_attrs: tuple[tuple[str, str], ...] | None = None
    zstd_level: int | None = None

    def encode(self) -> bytes:
        """The packet payload."""
        caps = self.capabilities
        parts = [
            _response_head(caps, self.max_packet_size, self.charset),
            _nul_str(self.username),
        ]
        auth = self.auth_response
        if caps & Capability.PLUGIN_AUTH_LENENC_CLIENT_DATA:
            parts.append(encode_lenenc_bytes(auth))
        elif caps & Capability.SECURE_CONNECTION:
            if len(auth) > 255:
                raise ValueError(
                    "auth_response over 255 bytes needs PLUGIN_AUTH_LENENC_CLIENT_DATA"
                )
            parts.append(bytes((len(auth),)) + auth)
        else:
            if b"\0" in auth:
                raise ValueError("a NUL-terminated auth_response cannot contain NUL")
            parts.append(auth + b"\0")
        if caps & Capability.CONNECT_WITH_DB:
            parts.append(_nul_str(self.database or ""))
        if caps & Capability.PLUGIN_AUTH:
            parts.append(_nul_str(self.auth_plugin_name or ""))
        if caps & Capability.CONNECT_ATTRS:
            parts.append(_attrs_encode(self.connect_attrs or ()))
        if caps & Capability.ZSTD_COMPRESSION_ALGORITHM:
            parts.append(bytes((self.zstd_level or 0,)))
        return b"".join(parts)


def decode_handshake_response(payload: bytes) -> HandshakeResponse41 | SslRequest:
    """Decode a client's answer to the greeting: an SSLRequest or a HandshakeResponse41.

    A client without CLIENT_PROTOCOL_41 (Protocol::HandshakeResponse320) is refused.
    """
    r = _Reader(payload, "HandshakeResponse41")
    if len(payload) < 4:
        raise r.error("truncated")
    caps = r.u32()
    if not caps & Capability.PROTOCOL_41:
        raise r.error("the client does not support CLIENT_PROTOCOL_41")
    max_packet = r.u32()
    charset = r.u8()
    r.take(19)
    mariadb = r.u32()
    if not caps & Capability.LONG_PASSWORD:
        caps |= mariadb << 32
    if r.at_end():
        if not caps & Capability.SSL:
            raise r.error("truncated (a 32-byte response must be an SSLRequest)")
        return SslRequest(caps, max_packet, charset)
    username = r.nul_str()
    if caps & Capability.PLUGIN_AUTH_LENENC_CLIENT_DATA:
        auth = r.lenenc_bytes()
    elif caps & Capability.SECURE_CONNECTION:
        auth = r.take(r.u8())
    else:
        auth = r.nul_bytes()
    database = r.nul_str() if caps & Capability.CONNECT_WITH_DB else None
    plugin = r.nul_str(eof_ok=True) if caps & Capability.PLUGIN_AUTH else None
    attrs = _attrs_decode(r) if caps & Capability.CONNECT_ATTRS else None
    zstd = r.u8() if caps & Capability.ZSTD_COMPRESSION_ALGORITHM else None
    r.done()
    return HandshakeResponse41(
        caps, max_packet, charset, username, auth, database, plugin, attrs, zstd
    )


@dataclass(frozen=True, slots=True)
class AuthSwitchRequest:
    """Protocol::AuthSwitchRequest (0xFE), server to client, during authentication.

    ``data`` is everything after the plugin name; MySQL and MariaDB end a scramble with a NUL,
    which :attr:`nonce` drops.
    """

    plugin_name: str
    data: bytes

    def encode(self) -> bytes:
        """The packet payload."""
        return b"\xfe" + _nul_str(self.plugin_name) + self.data

    @property
    def nonce(self) -> bytes:
        """The plugin data without its trailing NUL."""
        return self.data[:-1] if self.data.endswith(b"\0") else self.data

    @classmethod
    def decode(cls, payload: bytes) -> AuthSwitchRequest:
        """Decode; a bare 0xFE (the pre-4.1 "old auth switch") has no plugin name."""
        r = _Reader(payload, "AuthSwitchRequest")
        if r.u8() != 0xFE:
            raise r.error("header is not 0xFE")
        if r.at_end():
            return cls("", b"")
        return cls(r.nul_str(), r.rest())


@dataclass(frozen=True, slots=True)
class AuthSwitchResponse:
    """Protocol::AuthSwitchResponse, client to server: the plugin's answer, unframed."""

    data: bytes

    def encode(self) -> bytes:
        """The packet payload."""
        return self.data

    @classmethod
    def decode(cls, payload: bytes) -> AuthSwitchResponse:
        """Any payload is a valid response: its meaning belongs to the plugin."""
        return cls(payload)


# caching_sha2_password's AuthMoreData: fast authentication succeeded (an OK follows), or the
# client must perform the full authentication. Module constants, not ClassVars: mypyc takes a
# ClassVar of a dataclass for a field (mypyc/mypyc#1122).
FAST_AUTH_SUCCESS: Final = b"\x03"
PERFORM_FULL_AUTHENTICATION: Final = b"\x04"


@dataclass(frozen=True, slots=True)
class AuthMoreData:
    """Protocol::AuthMoreData (0x01), server to client: plugin-specific data.

    caching_sha2_password sends :data:`FAST_AUTH_SUCCESS` (an OK follows),
    :data:`PERFORM_FULL_AUTHENTICATION` or a PEM public key.
    """

    data: bytes

    def encode(self) -> bytes:
        """The packet payload."""
        return b"\x01" + self.data

    @classmethod
    def decode(cls, payload: bytes) -> AuthMoreData:
        """Decode (header 0x01)."""
        r = _Reader(payload, "AuthMoreData")
        if r.u8() != 0x01:
            raise r.error("header is not 0x01")
        return cls(r.rest())


# --------------------------------------------------------------------------------------------
# Generic responses


class SessionTrackType(enum.IntEnum):
    """enum_session_state_type ("Session State Information")."""

    SYSTEM_VARIABLES = 0
    SCHEMA = 1
    STATE_CHANGE = 2
    GTIDS = 3
    TRANSACTION_CHARACTERISTICS = 4
    TRANSACTION_STATE = 5


@dataclass(frozen=True, slots=True)
class SystemVariableTracked:
    """A session system variable changed (one name and its new value)."""

    name: str
    value: str

    def encode_data(self) -> bytes:
        return _lenenc_str(self.name) + _lenenc_str(self.value)


@dataclass(frozen=True, slots=True)
class SchemaTracked:
    """The default schema changed."""

    name: str

    def encode_data(self) -> bytes:
        return _lenenc_str(self.name)


@dataclass(frozen=True, slots=True)
class StateChangeTracked:
    """Some session state changed (the tracker sends ``"1"``)."""

    changed: bool = True

    def encode_data(self) -> bytes:
        return _lenenc_str("1" if self.changed else "0")


@dataclass(frozen=True, slots=True)
class GtidsTracked:
    """The GTIDs of the transaction just committed (MySQL), with their encoding byte."""

    encoding: int
    gtids: str

    def encode_data(self) -> bytes:
        return bytes((self.encoding,)) + _lenenc_str(self.gtids)


@dataclass(frozen=True, slots=True)
class TransactionCharacteristicsTracked:
    """SQL that recreates the transaction's characteristics (MySQL)."""

    statements: str

    def encode_data(self) -> bytes:
        return _lenenc_str(self.statements)


@dataclass(frozen=True, slots=True)
class TransactionStateTracked:
    """The 8-character transaction state (MySQL; position 0 is 'T', 'I' or '_')."""

    state: str

    def encode_data(self) -> bytes:
        return _lenenc_str(self.state)

    @property
    def in_transaction(self) -> bool:
        """True for an explicit ('T') or implicit ('I') transaction."""
        return self.state[:1] in ("T", "I")


@dataclass(frozen=True, slots=True)
class UnknownTracked:
    """A tracker type this codec does not know, kept as its raw data."""

    kind: int
    data: bytes

    def encode_data(self) -> bytes:
        return self.data


SessionTrack: TypeAlias = (
    SystemVariableTracked
    | SchemaTracked
    | StateChangeTracked
    | GtidsTracked
    | TransactionCharacteristicsTracked
    | TransactionStateTracked
    | UnknownTracked
)
_TRACK_KIND: Final[dict[type, int]] = {
    SystemVariableTracked: SessionTrackType.SYSTEM_VARIABLES,
    SchemaTracked: SessionTrackType.SCHEMA,
    StateChangeTracked: SessionTrackType.STATE_CHANGE,
    GtidsTracked: SessionTrackType.GTIDS,
    TransactionCharacteristicsTracked: SessionTrackType.TRANSACTION_CHARACTERISTICS,
    TransactionStateTracked: SessionTrackType.TRANSACTION_STATE,
}


def _encode_tracks(tracks: tuple[SessionTrack, ...]) -> bytes:
    parts = []
    for track in tracks:
        kind = track.kind if isinstance(track, UnknownTracked) else _TRACK_KIND[type(track)]
        parts.append(bytes((kind,)) + encode_lenenc_bytes(track.encode_data()))
    return b"".join(parts)


def _decode_track(kind: int, data: bytes) -> SessionTrack:
    r = _Reader(data, "session state")
    track: SessionTrack
    if kind == SessionTrackType.SYSTEM_VARIABLES:
        track = SystemVariableTracked(r.lenenc_str(), r.lenenc_str())
    elif kind == SessionTrackType.SCHEMA:
        track = SchemaTracked(r.lenenc_str())
    elif kind == SessionTrackType.STATE_CHANGE:
        track = StateChangeTracked(r.lenenc_str() == "1")
    elif kind == SessionTrackType.GTIDS:
        track = GtidsTracked(r.u8(), r.lenenc_str())
    elif kind == SessionTrackType.TRANSACTION_CHARACTERISTICS:
        track = TransactionCharacteristicsTracked(r.lenenc_str())
    elif kind == SessionTrackType.TRANSACTION_STATE:
        track = TransactionStateTracked(r.lenenc_str())
    else:
        return UnknownTracked(kind, data)
    r.done()
    return track


def _decode_tracks(data: bytes) -> tuple[SessionTrack, ...]:
    r = _Reader(data, "session state")
    tracks = []
    while not r.at_end():
        kind = r.u8()
        tracks.append(_decode_track(kind, r.lenenc_bytes()))
    return tuple(tracks)


@dataclass(frozen=True, slots=True)
class OkPacket:
    """OK_Packet, server to client.

    ``header`` is 0x00, or 0xFE for the OK that ends a result set under DEPRECATE_EOF.
    ``session_state`` holds the session tracker entries (SESSION_TRACK and
    SERVER_SESSION_STATE_CHANGED).
    """

    affected_rows: int = 0
    last_insert_id: int = 0
    status_flags: int = 0
    warnings: int = 0
    info: bytes = b""
    session_state: tuple[SessionTrack, ...] = ()
    header: int = 0x00

    def encode(self, capabilities: int) -> bytes:
        """The packet payload for a peer with these capabilities."""
        parts = [
            bytes((self.header,)),
            encode_lenenc_int(self.affected_rows),
            encode_lenenc_int(self.last_insert_id),
        ]
        if capabilities & Capability.PROTOCOL_41:
            parts.append(_U16.pack(self.status_flags) + _U16.pack(self.warnings))
        elif capabilities & Capability.TRANSACTIONS:
            parts.append(_U16.pack(self.status_flags))
        if capabilities & Capability.SESSION_TRACK:
            parts.append(encode_lenenc_bytes(self.info))
            if self.status_flags & ServerStatus.SESSION_STATE_CHANGED:
                parts.append(encode_lenenc_bytes(_encode_tracks(self.session_state)))
        else:
            parts.append(self.info)
        return b"".join(parts)

    @classmethod
    def decode(cls, payload: bytes, capabilities: int) -> OkPacket:
        """Decode an OK packet (header 0x00 or 0xFE)."""
        r = _Reader(payload, "OK")
        header = r.u8()
        if header not in (0x00, 0xFE):
            raise r.error(f"header is 0x{header:02x}, not 0x00 or 0xFE")
        affected = r.lenenc_int()
        insert_id = r.lenenc_int()
        status = warnings = 0
        if capabilities & Capability.PROTOCOL_41:
            status = r.u16()
            warnings = r.u16()
        elif capabilities & Capability.TRANSACTIONS:
            status = r.u16()
        tracks: tuple[SessionTrack, ...] = ()
        if capabilities & Capability.SESSION_TRACK:
            # Servers leave out an empty info string when nothing follows it.
            info = b"" if r.at_end() else r.lenenc_bytes()
            if status & ServerStatus.SESSION_STATE_CHANGED and not r.at_end():
                tracks = _decode_tracks(r.lenenc_bytes())
        else:
            info = r.rest()
        return cls(affected, insert_id, status, warnings, info, tracks, header)


@dataclass(frozen=True, slots=True)
class ErrPacket:
    """ERR_Packet (0xFF), server to client.

    ``sqlstate`` is ``None`` when the packet carries no ``#`` marker (pre-4.1, and errors a
    server sends before it knows the client's capabilities).
    """

    errno: int
    sqlstate: str | None
    message: str

    def encode(self) -> bytes:
        """The packet payload."""
        state = b""
        if self.sqlstate is not None:
            raw = self.sqlstate.encode("ascii")
            if len(raw) != 5:
                raise ValueError(f"SQLSTATE must have 5 characters: {self.sqlstate!r}")
            state = b"#" + raw
        return b"\xff" + _U16.pack(self.errno) + state + self.message.encode(_ENC, _ERRORS)

    @classmethod
    def decode(cls, payload: bytes) -> ErrPacket:
        """Decode; the ``#`` marker decides whether a SQLSTATE follows."""
        r = _Reader(payload, "ERR")
        if r.u8() != 0xFF:
            raise r.error("header is not 0xFF")
        errno = r.u16()
        sqlstate = None
        if r.remaining >= 6 and payload[r.pos] == 0x23:  # '#'
            r.take(1)
            sqlstate = r.take(5).decode("ascii", "replace")
        return cls(errno, sqlstate, r.rest().decode(_ENC, _ERRORS))


@dataclass(frozen=True, slots=True)
class EofPacket:
    """EOF_Packet (0xFE, at most 5 bytes with PROTOCOL_41), server to client."""

    warnings: int = 0
    status_flags: int = 0

    def encode(self) -> bytes:
        """The packet payload (PROTOCOL_41 layout)."""
        return b"\xfe" + _U16.pack(self.warnings) + _U16.pack(self.status_flags)

    @classmethod
    def decode(cls, payload: bytes) -> EofPacket:
        """Decode; a bare 0xFE (pre-4.1) has no warnings or status."""
        r = _Reader(payload, "EOF")
        if r.u8() != 0xFE:
            raise r.error("header is not 0xFE")
        if r.at_end():
            return cls()
        eof = cls(r.u16(), r.u16())
        r.done()
        return eof


# --------------------------------------------------------------------------------------------
# Commands (client to server)


@dataclass(frozen=True, slots=True)
class ComQuit:
    """COM_QUIT: no response; the server closes the connection."""

    def encode(self) -> bytes:
        """The packet payload."""
        return b"\x01"


@dataclass(frozen=True, slots=True)
class ComInitDb:
    """COM_INIT_DB: change the default schema; OK or ERR."""

    schema: str

    def encode(self) -> bytes:
        """The packet payload."""
        return b"\x02" + self.schema.encode(_ENC, _ERRORS)


@dataclass(frozen=True, slots=True)
class ComQuery:
    """COM_QUERY: the statement text, undecoded (it is in the connection's character set)."""

    query: bytes

    def encode(self) -> bytes:
        """The packet payload."""
        return b"\x03" + self.query


@dataclass(frozen=True, slots=True)
class ComFieldList:
    """COM_FIELD_LIST: column definitions of a table, then EOF (deprecated, still sent)."""

    table: str
    wildcard: str = ""

    def encode(self) -> bytes:
        """The packet payload."""
        return b"\x04" + _nul_str(self.table) + self.wildcard.encode(_ENC, _ERRORS)


@dataclass(frozen=True, slots=True)
class ComStatistics:
    """COM_STATISTICS: the answer is one human-readable string packet, not an OK."""

    def encode(self) -> bytes:
        """The packet payload."""
        return b"\x09"


@dataclass(frozen=True, slots=True)
class ComPing:
    """COM_PING: OK."""

    def encode(self) -> bytes:
        """The packet payload."""
        return b"\x0e"


@dataclass(frozen=True, slots=True)
class ComChangeUser:
    """COM_CHANGE_USER: re-authenticate as another user, which resets the session.

    The fields after ``database`` are optional on the wire: ``charset`` is ``None`` when the
    packet ends after the schema; the plugin name needs PLUGIN_AUTH, the attributes
    CONNECT_ATTRS.
    """

    user: str
    auth_response: bytes
    database: str
    charset: int | None = None
    auth_plugin_name: str | None = None
    connect_attrs: tuple[tuple[str, str], ...] | None = None

    def encode(self, capabilities: int) -> bytes:
        """The packet payload for a server with these capabilities."""
        auth = self.auth_response
        parts = [b"\x11", _nul_str(self.user)]
        if capabilities & Capability.SECURE_CONNECTION:
            if len(auth) > 255:
                raise ValueError("COM_CHANGE_USER auth_response is limited to 255 bytes")
            parts.append(bytes((len(auth),)) + auth)
        else:
            if b"\0" in auth:
                raise ValueError("a NUL-terminated auth_response cannot contain NUL")
            parts.append(auth + b"\0")
        parts.append(_nul_str(self.database))
        if self.charset is not None:
            parts.append(_U16.pack(self.charset))
            if capabilities & Capability.PLUGIN_AUTH:
                parts.append(_nul_str(self.auth_plugin_name or ""))
            if capabilities & Capability.CONNECT_ATTRS:
                parts.append(_attrs_encode(self.connect_attrs or ()))
        return b"".join(parts)


@dataclass(frozen=True, slots=True)
class ComStmtPrepare:
    """COM_STMT_PREPARE: COM_STMT_PREPARE_OK (+ definitions) or ERR."""

    query: bytes

    def encode(self) -> bytes:
        """The packet payload."""
        return b"\x16" + self.query


@dataclass(frozen=True, slots=True)
class ComStmtExecute:
    """COM_STMT_EXECUTE.

    ``parameters`` is the rest of the packet (NULL bitmap, new-params-bound flag, types,
    values) kept raw: its layout depends on the statement's parameter count, which only the
    COM_STMT_PREPARE_OK said; the proxy rewrites the statement id and forwards the rest.
    """

    statement_id: int
    flags: int = CursorType.NO_CURSOR
    iteration_count: int = 1
    parameters: bytes = b""

    @property
    def opens_cursor(self) -> bool:
        """True if the flags ask for a cursor (rows then come only through COM_STMT_FETCH)."""
        return bool(self.flags & 0x07)

    def encode(self) -> bytes:
        """The packet payload."""
        return (
            b"\x17"
            + _U32.pack(self.statement_id)
            + bytes((self.flags,))
            + _U32.pack(self.iteration_count)
            + self.parameters
        )


@dataclass(frozen=True, slots=True)
class ComStmtSendLongData:
    """COM_STMT_SEND_LONG_DATA: a chunk of one parameter's value; no response."""

    statement_id: int
    param_id: int
    data: bytes

    def encode(self) -> bytes:
        """The packet payload."""
        return b"\x18" + _U32.pack(self.statement_id) + _U16.pack(self.param_id) + self.data


@dataclass(frozen=True, slots=True)
class ComStmtClose:
    """COM_STMT_CLOSE: no response."""

    statement_id: int

    def encode(self) -> bytes:
        """The packet payload."""
        return b"\x19" + _U32.pack(self.statement_id)


@dataclass(frozen=True, slots=True)
class ComStmtReset:
    """COM_STMT_RESET: drop long data and close the cursor; OK or ERR."""

    statement_id: int

    def encode(self) -> bytes:
        """The packet payload."""
        return b"\x1a" + _U32.pack(self.statement_id)


@dataclass(frozen=True, slots=True)
class ComSetOption:
    """COM_SET_OPTION: 0 enables, 1 disables multi-statements; EOF (or OK) or ERR."""

    option: int

    def encode(self) -> bytes:
        """The packet payload."""
        return b"\x1b" + _U16.pack(self.option)


@dataclass(frozen=True, slots=True)
class ComStmtFetch:
    """COM_STMT_FETCH: up to ``num_rows`` binary rows of an open cursor."""

    statement_id: int
    num_rows: int

    def encode(self) -> bytes:
        """The packet payload."""
        return b"\x1c" + _U32.pack(self.statement_id) + _U32.pack(self.num_rows)


@dataclass(frozen=True, slots=True)
class ComResetConnection:
    """COM_RESET_CONNECTION: reset the session without re-authenticating; OK or ERR."""

    def encode(self) -> bytes:
        """The packet payload."""
        return b"\x1f"


@dataclass(frozen=True, slots=True)
class UnknownCommand:
    """Any other command byte, kept raw (the proxy refuses or forwards it)."""

    command: int
    body: bytes

    def encode(self) -> bytes:
        """The packet payload."""
        return bytes((self.command,)) + self.body


Command: TypeAlias = (
    ComQuit
    | ComInitDb
    | ComQuery
    | ComFieldList
    | ComStatistics
    | ComPing
    | ComChangeUser
    | ComStmtPrepare
    | ComStmtExecute
    | ComStmtSendLongData
    | ComStmtClose
    | ComStmtReset
    | ComSetOption
    | ComStmtFetch
    | ComResetConnection
    | UnknownCommand
)


_COMMAND_BYTES: Final[dict[type, CommandByte]] = {
    ComQuit: CommandByte.QUIT,
    ComInitDb: CommandByte.INIT_DB,
    ComQuery: CommandByte.QUERY,
    ComFieldList: CommandByte.FIELD_LIST,
    ComStatistics: CommandByte.STATISTICS,
    ComPing: CommandByte.PING,
    ComChangeUser: CommandByte.CHANGE_USER,
    ComStmtPrepare: CommandByte.STMT_PREPARE,
    ComStmtExecute: CommandByte.STMT_EXECUTE,
    ComStmtSendLongData: CommandByte.STMT_SEND_LONG_DATA,
    ComStmtClose: CommandByte.STMT_CLOSE,
    ComStmtReset: CommandByte.STMT_RESET,
    ComSetOption: CommandByte.SET_OPTION,
    ComStmtFetch: CommandByte.STMT_FETCH,
    ComResetConnection: CommandByte.RESET_CONNECTION,
}


def command_byte(command: Command) -> int:
    """The command byte a command is sent with."""
    if isinstance(command, UnknownCommand):
        return command.command
    return _COMMAND_BYTES[type(command)]


def _decode_change_user(r: _Reader, capabilities: int) -> ComChangeUser:
    user = r.nul_str()
    auth = r.take(r.u8()) if capabilities & Capability.SECURE_CONNECTION else r.nul_bytes()
    database = r.nul_str()
    charset = plugin = attrs = None
    if not r.at_end():
        charset = r.u16()
        if capabilities & Capability.PLUGIN_AUTH and not r.at_end():
            plugin = r.nul_str(eof_ok=True)
        if capabilities & Capability.CONNECT_ATTRS and not r.at_end():
            attrs = _attrs_decode(r)
    r.done()
    return ComChangeUser(user, auth, database, charset, plugin, attrs)


def _no_body(r: _Reader, cmd: Command) -> Command:
    r.done()
    return cmd


def decode_command(payload: bytes, capabilities: int) -> Command:
    """Decode a command-phase packet from a client ("Command Phase").

    ``capabilities`` are those in effect (COM_CHANGE_USER's layout depends on them). An
    unknown command byte gives :class:`UnknownCommand`; an empty payload raises.
    """
    r = _Reader(payload, "command")
    if not payload:
        raise r.error("empty")
    cmd = r.u8()
    if cmd == CommandByte.QUERY:
        return ComQuery(r.rest())
    if cmd == CommandByte.STMT_EXECUTE:
        return ComStmtExecute(r.u32(), r.u8(), r.u32(), r.rest())
    if cmd == CommandByte.STMT_PREPARE:
        return ComStmtPrepare(r.rest())
    if cmd == CommandByte.STMT_CLOSE:
        return _no_body(r, ComStmtClose(r.u32()))
    if cmd == CommandByte.STMT_RESET:
        return _no_body(r, ComStmtReset(r.u32()))
    if cmd == CommandByte.STMT_FETCH:
        return _no_body(r, ComStmtFetch(r.u32(), r.u32()))
    if cmd == CommandByte.STMT_SEND_LONG_DATA:
        return ComStmtSendLongData(r.u32(), r.u16(), r.rest())
    if cmd == CommandByte.PING:
        return _no_body(r, ComPing())
    if cmd == CommandByte.QUIT:
        return _no_body(r, ComQuit())
    if cmd == CommandByte.INIT_DB:
        return ComInitDb(r.rest().decode(_ENC, _ERRORS))
    if cmd == CommandByte.RESET_CONNECTION:
        return _no_body(r, ComResetConnection())
    if cmd == CommandByte.STATISTICS:
        return _no_body(r, ComStatistics())
    if cmd == CommandByte.SET_OPTION:
        return _no_body(r, ComSetOption(r.u16()))
    if cmd == CommandByte.FIELD_LIST:
        return ComFieldList(r.nul_str(), r.rest().decode(_ENC, _ERRORS))
    if cmd == CommandByte.CHANGE_USER:
        return _decode_change_user(r, capabilities)
    return UnknownCommand(cmd, r.rest())


# --------------------------------------------------------------------------------------------
# Result sets


@dataclass(frozen=True, slots=True)
class ColumnCount:
    """The first packet of a result set: the number of columns (a length-encoded integer)."""

    count: int

    def encode(self) -> bytes:
        """The packet payload."""
        return encode_lenenc_int(self.count)

    @classmethod
    def decode(cls, payload: bytes) -> ColumnCount:
        """Decode; zero columns and trailing bytes are refused."""
        r = _Reader(payload, "column count")
        count = r.lenenc_int()
        r.done()
        if count == 0:
            raise r.error("zero columns")
        return cls(count)


@dataclass(frozen=True, slots=True)
class ColumnDefinition41:
    """Protocol::ColumnDefinition41. ``default_values`` only in answers to COM_FIELD_LIST."""

    schema: str
    table: str
    org_table: str
    name: str
    org_name: str
    charset: int
    column_length: int
    type: int
    flags: int = 0
    decimals: int = 0
    catalog: str = "def"
    default_values: bytes | None = None

    def encode(self) -> bytes:
        """The packet payload."""
        parts = [
            _lenenc_str(self.catalog),
            _lenenc_str(self.schema),
            _lenenc_str(self.table),
            _lenenc_str(self.org_table),
            _lenenc_str(self.name),
            _lenenc_str(self.org_name),
            b"\x0c",
            _U16.pack(self.charset),
            _U32.pack(self.column_length),
            bytes((self.type,)),
            _U16.pack(self.flags),
            bytes((self.decimals,)),
            b"\0\0",
        ]
        if self.default_values is not None:
            parts.append(encode_lenenc_bytes(self.default_values))
        return b"".join(parts)

    @classmethod
    def decode(cls, payload: bytes) -> ColumnDefinition41:
        """Decode; trailing bytes after the fixed fields are taken as default values."""
        r = _Reader(payload, "column definition")
        catalog = r.lenenc_str()
        schema = r.lenenc_str()
        table = r.lenenc_str()
        org_table = r.lenenc_str()
        name = r.lenenc_str()
        org_name = r.lenenc_str()
        fixed = r.lenenc_int()
        if fixed < 0x0C:
            raise r.error(f"fixed-length fields of {fixed} bytes (expected 12)")
        sub = _Reader(r.take(fixed), "column definition")
        charset = sub.u16()
        length = sub.u32()
        type_ = sub.u8()
        flags = sub.u16()
        decimals = sub.u8()
        defaults = None if r.at_end() else r.lenenc_bytes()
        r.done()
        return cls(
            schema,
            table,
            org_table,
            name,
            org_name,
            charset,
            length,
            type_,
            flags,
            decimals,
            catalog,
            defaults,
        )


def encode_text_row(values: tuple[bytes | None, ...]) -> bytes:
    """ProtocolText::ResultsetRow: each value a length-encoded string, NULL as 0xFB."""
    return b"".join(b"\xfb" if v is None else encode_lenenc_bytes(v) for v in values)


def decode_text_row(payload: bytes, column_count: int) -> tuple[bytes | None, ...]:
    """Decode a text row of ``column_count`` values."""
    r = _Reader(payload, "text row")
    values: list[bytes | None] = []
    for _ in range(column_count):
        if r.remaining and payload[r.pos] == 0xFB:
            r.pos += 1
            values.append(None)
        else:
            values.append(r.lenenc_bytes())
    r.done()
    return tuple(values)


_FIXED_SIZE: Final[dict[int, int]] = {
    FieldType.TINY: 1,
    FieldType.SHORT: 2,
    FieldType.YEAR: 2,
    FieldType.LONG: 4,
    FieldType.INT24: 4,
    FieldType.FLOAT: 4,
    FieldType.DOUBLE: 8,
    FieldType.LONGLONG: 8,
    FieldType.NULL: 0,
}
# Temporal values carry a one-byte length (0, 4, 7 or 11 for dates, 0, 8 or 12 for times).
_TEMPORAL: Final = frozenset(
    {
        FieldType.DATE,
        FieldType.DATETIME,
        FieldType.TIMESTAMP,
        FieldType.NEWDATE,
        FieldType.TIME,
        FieldType.DATETIME2,
        FieldType.TIMESTAMP2,
        FieldType.TIME2,
    }
)


def _null_bitmap_size(column_count: int) -> int:
    # A result row's NULL bitmap starts at bit 2 ("Binary Protocol Resultset Row").
    return (column_count + 7 + 2) // 8


def decode_binary_row(payload: bytes, types: tuple[int, ...]) -> tuple[bytes | None, ...]:
    """Split a binary result row (header 0x00) into raw values, one per column type.

    Fixed-size types give their little-endian bytes, temporal types the bytes after their
    length byte, all others the bytes of their length-encoded string.
    """
    r = _Reader(payload, "binary row")
    if r.u8() != 0x00:
        raise r.error("header is not 0x00")
    bitmap = r.take(_null_bitmap_size(len(types)))
    values: list[bytes | None] = []
    for i, type_ in enumerate(types):
        bit = i + 2
        if bitmap[bit >> 3] & (1 << (bit & 7)):
            values.append(None)
        elif (size := _FIXED_SIZE.get(type_)) is not None:
            values.append(r.take(size))
        elif type_ in _TEMPORAL:
            values.append(r.take(r.u8()))
        else:
            values.append(r.lenenc_bytes())
    r.done()
    return tuple(values)


def encode_binary_row(values: tuple[bytes | None, ...], types: tuple[int, ...]) -> bytes:
    """The inverse of :func:`decode_binary_row` (values already in their binary form)."""
    if len(values) != len(types):
        raise ValueError("one type per value")
    bitmap = bytearray(_null_bitmap_size(len(types)))
    parts = []
    for i, (value, type_) in enumerate(zip(values, types, strict=True)):
        if value is None:
            bit = i + 2
            bitmap[bit >> 3] |= 1 << (bit & 7)
        elif (size := _FIXED_SIZE.get(type_)) is not None:
            if len(value) != size:
                raise ValueError(f"a value of type {type_} has {size} bytes, not {len(value)}")
            parts.append(value)
        elif type_ in _TEMPORAL:
            if len(value) > 255:
                raise ValueError("temporal values have at most 255 bytes")
            parts.append(bytes((len(value),)) + value)
        else:
            parts.append(encode_lenenc_bytes(value))
    return b"\x00" + bytes(bitmap) + b"".join(parts)


@dataclass(frozen=True, slots=True)
class StmtPrepareOk:
    """COM_STMT_PREPARE_OK, server to client; parameter then column definitions follow."""

    statement_id: int
    num_columns: int
    num_params: int
    warnings: int = 0

    def encode(self) -> bytes:
        """The packet payload."""
        return (
            b"\x00"
            + _U32.pack(self.statement_id)
            + _U16.pack(self.num_columns)
            + _U16.pack(self.num_params)
            + b"\x00"
            + _U16.pack(self.warnings)
        )

    @classmethod
    def decode(cls, payload: bytes) -> StmtPrepareOk:
        """Decode; the warning count is optional (a 9-byte packet has none)."""
        r = _Reader(payload, "COM_STMT_PREPARE_OK")
        if r.u8() != 0x00:
            raise r.error("header is not 0x00")
        statement_id = r.u32()
        columns = r.u16()
        params = r.u16()
        r.take(1)
        warnings = 0 if r.at_end() else r.u16()
        # MySQL 8 appends metadata_follows with CLIENT_OPTIONAL_RESULTSET_METADATA.
        if r.remaining > 1:
            raise r.error(f"{r.remaining} unexpected trailing bytes")
        return cls(statement_id, columns, params, warnings)


# --------------------------------------------------------------------------------------------
# Response boundaries


class Phase(enum.Enum):
    """Where a command cycle stands after a packet (see :class:`ResponseTracker`)."""

    # More server packets belong to this response.
    MORE = "more"
    # The server waits for the client: a LOCAL INFILE request, or an authentication round
    # of COM_CHANGE_USER. Feed the client's packets to ResponseTracker.client_packet().
    CLIENT_TURN = "client_turn"
    # The response is complete: the next packet from the server answers another command.
    DONE = "done"


class _State(enum.Enum):
    # Members are singletons: hashing by identity (a C slot) instead of Enum's hash of the
    # name keeps the table lookups off the Python-level __hash__ on every packet.
    __hash__ = object.__hash__

    START = "start"  # the first packet of a (next) result
    SIMPLE = "simple"  # OK/EOF/ERR answers a command without results
    STATISTICS = "statistics"  # one string packet
    COLUMNS = "columns"  # column definitions of a result set
    COLUMNS_EOF = "columns_eof"  # the EOF after them (no DEPRECATE_EOF)
    ROWS = "rows"  # rows until EOF / OK(0xFE) / ERR
    PREPARE = "prepare"  # COM_STMT_PREPARE_OK or ERR
    PARAMS = "params"  # parameter definitions after COM_STMT_PREPARE_OK
    PARAMS_EOF = "params_eof"
    PREPARED_COLUMNS = "prepared_columns"
    PREPARED_COLUMNS_EOF = "prepared_columns_eof"
    FIELD_LIST = "field_list"  # column definitions until EOF
    INFILE = "infile"  # the client sends the file, an empty packet ends it
    AUTH = "auth"  # COM_CHANGE_USER: OK, ERR, AuthSwitchRequest or AuthMoreData
    AUTH_CLIENT = "auth_client"  # the client answers an authentication round
    DONE = "done"


class _Kind(enum.Enum):
    __hash__ = object.__hash__

    OK = "ok"  # 0x00 where an OK may stand
    ERR = "err"  # 0xFF
    EOF = "eof"  # 0xFE short enough to be EOF, or OK under DEPRECATE_EOF
    INFILE = "infile"  # 0xFB as the first packet of a COM_QUERY response
    MORE_DATA = "more_data"  # 0x01 during authentication
    DATA = "data"  # anything else: a column count, definition, row or string


# (state, packet kind) -> next state. A pair not listed is a protocol error. Counters
# (columns, parameters) and "more results" are applied by ResponseTracker on top of this table.
_TRANSITIONS: Final[dict[tuple[_State, _Kind], _State]] = {
    (_State.START, _Kind.OK): _State.DONE,
    (_State.START, _Kind.ERR): _State.DONE,
    (_State.START, _Kind.INFILE): _State.INFILE,
    (_State.START, _Kind.DATA): _State.COLUMNS,
    (_State.SIMPLE, _Kind.OK): _State.DONE,
    (_State.SIMPLE, _Kind.EOF): _State.DONE,
    (_State.SIMPLE, _Kind.ERR): _State.DONE,
    (_State.STATISTICS, _Kind.DATA): _State.DONE,
    (_State.STATISTICS, _Kind.OK): _State.DONE,
    (_State.STATISTICS, _Kind.ERR): _State.DONE,
    (_State.STATISTICS, _Kind.EOF): _State.DONE,
    (_State.COLUMNS, _Kind.DATA): _State.COLUMNS,
    (_State.COLUMNS_EOF, _Kind.EOF): _State.ROWS,
    (_State.ROWS, _Kind.DATA): _State.ROWS,
    (_State.ROWS, _Kind.OK): _State.ROWS,  # a binary row begins with 0x00
    (_State.ROWS, _Kind.EOF): _State.DONE,
    (_State.ROWS, _Kind.ERR): _State.DONE,
    (_State.PREPARE, _Kind.OK): _State.PARAMS,
    (_State.PREPARE, _Kind.ERR): _State.DONE,
    (_State.PARAMS, _Kind.DATA): _State.PARAMS,
    (_State.PARAMS_EOF, _Kind.EOF): _State.PREPARED_COLUMNS,
    (_State.PREPARED_COLUMNS, _Kind.DATA): _State.PREPARED_COLUMNS,
    (_State.PREPARED_COLUMNS_EOF, _Kind.EOF): _State.DONE,
    (_State.FIELD_LIST, _Kind.DATA): _State.FIELD_LIST,
    (_State.FIELD_LIST, _Kind.EOF): _State.DONE,
    (_State.FIELD_LIST, _Kind.ERR): _State.DONE,
    (_State.AUTH, _Kind.OK): _State.DONE,
    (_State.AUTH, _Kind.ERR): _State.DONE,
    (_State.AUTH, _Kind.EOF): _State.AUTH_CLIENT,  # AuthSwitchRequest
    (_State.AUTH, _Kind.MORE_DATA): _State.AUTH_CLIENT,
}
_DEFINITIONS: Final = frozenset({_State.COLUMNS, _State.PARAMS, _State.PREPARED_COLUMNS})
# A definition whose catalog is empty begins with 0x00.
_TRANSITIONS.update({(state, _Kind.OK): state for state in _DEFINITIONS})
_TRANSITIONS[(_State.FIELD_LIST, _Kind.OK)] = _State.FIELD_LIST
# The server may end any response with an ERR (a row it failed to produce, a failed prepare).
_TRANSITIONS.update(
    {
        (state, _Kind.ERR): _State.DONE
        for state in _State
        if state not in (_State.DONE, _State.INFILE, _State.AUTH_CLIENT)
    }
)

# Flags the tracker tests on every response, as plain ints: an IntFlag operation runs
# Python-level enum code.
_DEPRECATE_EOF: Final = int(Capability.DEPRECATE_EOF)
_MORE_RESULTS: Final = int(ServerStatus.MORE_RESULTS_EXISTS)
_CURSOR_EXISTS: Final = int(ServerStatus.CURSOR_EXISTS)

_PHASE: Final[dict[_State, Phase]] = {
    _State.DONE: Phase.DONE,
    _State.INFILE: Phase.CLIENT_TURN,
    _State.AUTH_CLIENT: Phase.CLIENT_TURN,
}

_NO_RESPONSE: Final = frozenset(
    {CommandByte.QUIT, CommandByte.STMT_SEND_LONG_DATA, CommandByte.STMT_CLOSE}
)
_SIMPLE: Final = frozenset(
    {
        CommandByte.PING,
        CommandByte.INIT_DB,
        CommandByte.RESET_CONNECTION,
        CommandByte.STMT_RESET,
        CommandByte.SET_OPTION,
    }
)


def expects_response(command: int) -> bool:
    """False for the commands a server never answers: COM_QUIT, COM_STMT_SEND_LONG_DATA and
    COM_STMT_CLOSE."""
    return command not in _NO_RESPONSE


def _first_state(command: int) -> _State:
    if command in _NO_RESPONSE:
        return _State.DONE
    if command in (CommandByte.QUERY, CommandByte.STMT_EXECUTE):
        return _State.START
    if command == CommandByte.STMT_PREPARE:
        return _State.PREPARE
    if command == CommandByte.STMT_FETCH:
        return _State.ROWS
    if command == CommandByte.FIELD_LIST:
        return _State.FIELD_LIST
    if command == CommandByte.STATISTICS:
        return _State.STATISTICS
    if command == CommandByte.CHANGE_USER:
        return _State.AUTH
    return _State.SIMPLE  # PING, INIT_DB, RESET_CONNECTION, ... and unknown commands (ERR)


class ResponseTracker:
    """Tells when the server's response to one command is complete.

    Feed every server packet of the cycle to :meth:`server_packet` (and, in
    :attr:`Phase.CLIENT_TURN`, the client's packets to :meth:`client_packet`) until it returns
    :attr:`Phase.DONE`. Follows "COM_QUERY Response" (OK, ERR, LOCAL INFILE request or a result
    set: column count, definitions, EOF unless DEPRECATE_EOF, rows, then EOF or an OK with
    header 0xFE; SERVER_MORE_RESULTS_EXISTS announces another result), "COM_STMT_PREPARE
    Response", "COM_STMT_EXECUTE Response" (a cursor ends the response at the EOF/OK after the
    definitions, whose status carries SERVER_STATUS_CURSOR_EXISTS), "COM_STMT_FETCH Response",
    "COM_FIELD_LIST Response", "COM_STATISTICS" and COM_CHANGE_USER's authentication exchange.

    ``status_flags`` is the status of the last OK/EOF seen (``None`` before any: an ERR carries
    none, so after a failed command the session's previous status still holds).
    """

    __slots__ = (
        "_binary",
        "_cursor",
        "_deprecate_eof",
        "_left",
        "_phase",
        "_state",
        "error",
        "prepare_ok",
        "result_sets",
        "status_flags",
    )

    def __init__(
        self, command: Command | int, capabilities: int, *, opens_cursor: bool = False
    ) -> None:
        """`command` is the decoded command or its command byte; for a COM_STMT_EXECUTE given
        as a byte, `opens_cursor` says what its flags ask (:func:`execute_opens_cursor`)."""
        if isinstance(command, int):
            code = command
            self._cursor = opens_cursor
        else:
            code = command_byte(command)
            self._cursor = isinstance(command, ComStmtExecute) and command.opens_cursor
        self._binary = code == CommandByte.STMT_EXECUTE or code == CommandByte.STMT_FETCH
        self._deprecate_eof = bool(capabilities & _DEPRECATE_EOF)
        state = _first_state(code)
        self._state = state
        self._phase = _PHASE.get(state, Phase.MORE)
        self._left = 0
        self.status_flags: int | None = None
        self.error: ErrPacket | None = None
        self.prepare_ok: StmtPrepareOk | None = None
        self.result_sets = 0

    @property
    def phase(self) -> Phase:
        """Where the cycle stands now."""
        return self._phase

    def _enter(self, state: _State) -> Phase:
        self._state = state
        phase = self._phase = _PHASE.get(state, Phase.MORE)
        return phase

    @property
    def in_transaction(self) -> bool | None:
        """SERVER_STATUS_IN_TRANS of the last status seen, ``None`` if none was."""
        if self.status_flags is None:
            return None
        return bool(self.status_flags & ServerStatus.IN_TRANS)

    def _kind(self, payload: bytes) -> _Kind:
        if not payload:
            return _Kind.DATA
        first = payload[0]
        if first == 0xFF:
            return _Kind.ERR
        state = self._state
        if first == 0xFE:
            if state is _State.AUTH:
                return _Kind.EOF
            # An EOF packet has at most 9 bytes; under DEPRECATE_EOF the OK that ends a result
            # set may be longer, but a row starting with 0xFE (an 8-byte length) cannot be
            # shorter than 16 MB ("Text Resultset").
            if len(payload) < 9 or (self._deprecate_eof and len(payload) < MAX_CHUNK):
                return _Kind.EOF
            return _Kind.DATA
        if first == 0x00:
            return _Kind.OK
        if first == 0xFB and state is _State.START:
            return _Kind.INFILE
        if first == 0x01 and state is _State.AUTH:
            return _Kind.MORE_DATA
        return _Kind.DATA

    def server_packet(self, payload: bytes) -> Phase:
        """Account for one server packet (a reassembled payload) and return the new phase."""
        state = self._state
        kind = self._kind(payload)
        nxt = _TRANSITIONS.get((state, kind))
        if nxt is None:
            raise ProtocolError(
                f"unexpected {kind.value} packet (first byte 0x{payload[:1].hex() or '--'}) "
                f"in state {state.value} of a response"
            )
        if kind is _Kind.ERR:
            # An ERR ends the whole response: the server runs no further statement.
            self.error = ErrPacket.decode(payload)
        elif state is _State.START:
            if kind is _Kind.DATA:
                self.result_sets += 1
                # One byte below 0xFB is the usual column count; anything else in full.
                if len(payload) == 1 and 0 < payload[0] < 0xFB:
                    self._left = payload[0]
                else:
                    self._left = ColumnCount.decode(payload).count
            elif kind is _Kind.OK and self._status(payload) & _MORE_RESULTS:
                nxt = _State.START
        elif state in _DEFINITIONS:
            self._left -= 1
            if self._left == 0:
                nxt = self._after_definitions(state)
        elif state is _State.PREPARE:
            ok = self.prepare_ok = StmtPrepareOk.decode(payload)
            self._left = ok.num_params
            nxt = _State.PARAMS if ok.num_params else self._prepared_columns()
        elif state is _State.PARAMS_EOF:
            nxt = self._prepared_columns()
        elif state is _State.COLUMNS_EOF:
            if self._status(payload) & _CURSOR_EXISTS and self._cursor:
                nxt = _State.DONE
        elif state is _State.ROWS:
            if kind is _Kind.EOF and self._status(payload) & _MORE_RESULTS:
                nxt = _State.START
        elif state in (_State.SIMPLE, _State.FIELD_LIST) and kind is not _Kind.DATA:
            self._status(payload)
        elif state is _State.AUTH:
            if kind is _Kind.OK:
                self._status(payload)
            elif kind is _Kind.MORE_DATA and payload[1:] == FAST_AUTH_SUCCESS:
                nxt = _State.AUTH  # caching_sha2_password: the OK follows at once
        return self._enter(nxt)

    def server_packet_in(self, buf: bytes | bytearray, start: int, end: int) -> Phase:
        """:meth:`server_packet` for the payload ``buf[start:end]``. The packets a response is
        mostly made of (rows, column and parameter definitions), which only their first
        byte places and a counter follows, are accounted without being copied."""
        if end > start:
            first = buf[start]
            if first < 0xFE:  # not an ERR, nor an EOF or OK that ends a result
                state = self._state
                if state is _State.ROWS:  # a text row, or a binary row (0x00)
                    return self._phase
                if state in _DEFINITIONS:
                    left = self._left - 1
                    self._left = left
                    if left == 0:
                        return self._enter(self._after_definitions(state))
                    return self._phase
        return self.server_packet(bytes(buf[start:end]))

    def _after_definitions(self, state: _State) -> _State:
        if state is _State.PARAMS:
            if not self._deprecate_eof:
                return _State.PARAMS_EOF
            return self._prepared_columns()
        if state is _State.PREPARED_COLUMNS:
            return _State.DONE if self._deprecate_eof else _State.PREPARED_COLUMNS_EOF
        return _State.ROWS if self._deprecate_eof else _State.COLUMNS_EOF

    def _prepared_columns(self) -> _State:
        assert self.prepare_ok is not None
        self._left = self.prepare_ok.num_columns
        return _State.PREPARED_COLUMNS if self._left else _State.DONE

    def _status(self, payload: bytes) -> int:
        # An EOF has 5 bytes, an OK at least 7 (header, two length-encoded zeros, status,
        # warnings): the length tells them apart whatever DEPRECATE_EOF says.
        n = len(payload)
        if n == 5 and payload[0] == 0xFE:  # EOF: header, warnings, status
            status = payload[3] | payload[4] << 8
        elif n >= 7 and payload[1] < 0xFB and payload[2] < 0xFB:
            # An OK whose affected rows and insert id take one byte each (the usual case).
            status = payload[3] | payload[4] << 8
        elif payload[0] == 0xFE and n <= 5:
            status = EofPacket.decode(payload).status_flags
        else:
            status = OkPacket.decode(payload, _STATUS_CAPS).status_flags
        self.status_flags = status
        return status

    def client_packet(self, payload: bytes) -> Phase:
        """Account for a client packet sent in :attr:`Phase.CLIENT_TURN`."""
        if self._state is _State.INFILE:
            if not payload:  # the empty packet ends the file; OK or ERR follows
                self._enter(_State.SIMPLE)
        elif self._state is _State.AUTH_CLIENT:
            self._enter(_State.AUTH)
        else:
            raise ProtocolError(
                f"client packet while the server is answering ({self._state.value})"
            )
        return self._phase


# Status flags sit at the same offset whatever else was negotiated, given PROTOCOL_41.
_STATUS_CAPS: Final = Capability.PROTOCOL_41
