"""Sans-IO codec for the PostgreSQL frontend/backend protocol 3.0.

Implements the PostgreSQL documentation, chapter "Frontend/Backend Protocol", sections
"Message Data Types" and "Message Formats". Bytes go in through ``feed()``; complete frames come out
of ``next()`` (``None`` means "need more data"); malformed input raises :class:`ProtocolError` and
nothing else. There is no socket and no event loop in this module.

Two framings exist on the wire:

* the untyped startup packets (StartupMessage, SSLRequest, GSSENCRequest, CancelRequest):
  ``Int32 length`` (counting itself) + ``Int32 code`` + payload, read by :class:`StartupReader`;
* every later message: ``Byte1 type`` + ``Int32 length`` (counting itself, not the type byte) +
  body, read by :class:`MessageReader`.

Message classes are named for the direction they travel because the type bytes collide ('D' is
Describe from a client and DataRow from a server): :func:`decode_frontend` decodes what a client
sends, :func:`decode_backend` what a server sends. The proxy forwards :attr:`Frame.data` unchanged
and decodes only what routing needs.

Integers follow the sign conventions PostgreSQL itself uses when reading them: element counts are
read as unsigned 16-bit (``pq_getmsgint(msg, 2)``; libpq allows 65535 bind parameters), OIDs,
process ids and cancel keys as unsigned 32-bit, format codes, attribute numbers, type sizes,
type modifiers and row limits as signed.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import ClassVar, Final, TypeAlias, TypeVar

from dbbalancer.core.errors import ErrorCode
from dbbalancer.postgres.errors import sqlstate_of

__all__ = [
    "CANCEL_REQUEST_CODE",
    "DEFAULT_MAX_MESSAGE_LENGTH",
    "GSSENC_REQUEST_CODE",
    "MAX_STARTUP_LENGTH",
    "PROTOCOL_VERSION_3",
    "SSL_REQUEST_CODE",
    "AuthenticationCleartextPassword",
    "AuthenticationMD5Password",
    "AuthenticationOk",
    "AuthenticationSASL",
    "AuthenticationSASLContinue",
    "AuthenticationSASLFinal",
    "AuthenticationType",
    "BackendKeyData",
    "BackendMessage",
    "BackendType",
    "Bind",
    "BindComplete",
    "CancelRequest",
    "Close",
    "CloseComplete",
    "CommandComplete",
    "CopyBothResponse",
    "CopyData",
    "CopyDone",
    "CopyFail",
    "CopyInResponse",
    "CopyOutResponse",
    "DataRow",
    "Describe",
    "EmptyQueryResponse",
    "ErrorResponse",
    "Execute",
    "FieldDescription",
    "Flush",
    "Frame",
    "FrontendMessage",
    "FrontendType",
    "FunctionCall",
    "FunctionCallResponse",
    "GSSENCRequest",
    "MessageReader",
    "NegotiateProtocolVersion",
    "NoData",
    "NoticeResponse",
    "NotificationResponse",
    "ParameterDescription",
    "ParameterStatus",
    "Parse",
    "ParseComplete",
    "PasswordMessage",
    "PortalSuspended",
    "ProtocolError",
    "Query",
    "ReadyForQuery",
    "RowDescription",
    "SASLInitialResponse",
    "SASLResponse",
    "SSLRequest",
    "StartupMessage",
    "StartupPacket",
    "StartupReader",
    "Sync",
    "Terminate",
    "decode_backend",
    "decode_frontend",
    "decode_sasl_initial_response",
    "decode_sasl_response",
    "error_response",
    "notice_response",
    "parse_frame",
]

PROTOCOL_VERSION_3: Final = 196608  # (3 << 16) | 0
SSL_REQUEST_CODE: Final = 80877103  # (1234 << 16) | 5679
GSSENC_REQUEST_CODE: Final = 80877104  # (1234 << 16) | 5680
CANCEL_REQUEST_CODE: Final = 80877102  # (1234 << 16) | 5678
# PostgreSQL's MAX_STARTUP_PACKET_LENGTH: the payload after the length word may not exceed it.
MAX_STARTUP_LENGTH: Final = 10_000
DEFAULT_MAX_MESSAGE_LENGTH: Final = 256 * 1024 * 1024

_HEADER: Final = struct.Struct("!cI")
_I8: Final = struct.Struct("!b")
_I16: Final = struct.Struct("!h")
_U16: Final = struct.Struct("!H")
_I32: Final = struct.Struct("!i")
_U32: Final = struct.Struct("!I")
_U32_PAIR: Final = struct.Struct("!II")
_U32_MASK: Final = 0xFFFFFFFF
# Compact the receive buffer once this many consumed bytes sit in front of the unread ones; below
# it the unread tail is usually a few bytes and moving it is cheaper than keeping the offset.
_COMPACT_AT: Final = 64 * 1024

_PROTOCOL_VIOLATION: Final = sqlstate_of(ErrorCode.PROTOCOL_VIOLATION)


class ProtocolError(Exception):
    """Malformed, oversized or unsupported input from a peer.

    ``sqlstate`` defaults to that of ErrorCode.PROTOCOL_VIOLATION (``08P01``), the code
    PostgreSQL reports for malformed messages; the proxy turns the error into an ErrorResponse
    carrying it.
    """

    def __init__(self, message: str, sqlstate: str = _PROTOCOL_VIOLATION) -> None:
        super().__init__(message)
        self.message = message
        self.sqlstate = sqlstate


class FrontendType:
    """Type bytes of messages sent by a client ("Message Formats", marked F)."""

    BIND: Final = b"B"
    CLOSE: Final = b"C"
    COPY_DATA: Final = b"d"
    COPY_DONE: Final = b"c"
    COPY_FAIL: Final = b"f"
    DESCRIBE: Final = b"D"
    EXECUTE: Final = b"E"
    FLUSH: Final = b"H"
    FUNCTION_CALL: Final = b"F"
    PARSE: Final = b"P"
    # PasswordMessage, SASLInitialResponse, SASLResponse and GSSResponse share 'p'.
    PASSWORD: Final = b"p"
    QUERY: Final = b"Q"
    SYNC: Final = b"S"
    TERMINATE: Final = b"X"


class BackendType:
    """Type bytes of messages sent by a server ("Message Formats", marked B)."""

    AUTHENTICATION: Final = b"R"
    BACKEND_KEY_DATA: Final = b"K"
    BIND_COMPLETE: Final = b"2"
    CLOSE_COMPLETE: Final = b"3"
    COMMAND_COMPLETE: Final = b"C"
    COPY_BOTH_RESPONSE: Final = b"W"
    COPY_DATA: Final = b"d"
    COPY_DONE: Final = b"c"
    COPY_IN_RESPONSE: Final = b"G"
    COPY_OUT_RESPONSE: Final = b"H"
    DATA_ROW: Final = b"D"
    EMPTY_QUERY_RESPONSE: Final = b"I"
    ERROR_RESPONSE: Final = b"E"
    FUNCTION_CALL_RESPONSE: Final = b"V"
    NEGOTIATE_PROTOCOL_VERSION: Final = b"v"
    NO_DATA: Final = b"n"
    NOTICE_RESPONSE: Final = b"N"
    NOTIFICATION_RESPONSE: Final = b"A"
    PARAMETER_DESCRIPTION: Final = b"t"
    PARAMETER_STATUS: Final = b"S"
    PARSE_COMPLETE: Final = b"1"
    PORTAL_SUSPENDED: Final = b"s"
    READY_FOR_QUERY: Final = b"Z"
    ROW_DESCRIPTION: Final = b"T"


class AuthenticationType:
    """The Int32 subtype that follows the 'R' byte of Authentication* messages."""

    OK: Final = 0
    KERBEROS_V5: Final = 2
    CLEARTEXT_PASSWORD: Final = 3
    MD5_PASSWORD: Final = 5
    GSS: Final = 7
    GSS_CONTINUE: Final = 8
    SSPI: Final = 9
    SASL: Final = 10
    SASL_CONTINUE: Final = 11
    SASL_FINAL: Final = 12


# --------------------------------------------------------------------------------------------
# Framing


@dataclass(frozen=True, slots=True)
class Frame:
    """One typed message as it travelled on the wire.

    ``data`` is the whole message including the 5-byte header, so that the proxy can forward it
    unchanged; ``body`` is the part after the header.
    """

    type: bytes
    data: bytes

    @property
    def body(self) -> memoryview:
        """The message body (``data`` without the type byte and the length word)."""
        return memoryview(self.data)[5:]


# The generated __init__ of a frozen dataclass goes through object.__setattr__ per field and
# costs about half of MessageReader.next(); filling the slots directly builds the same object.
_SET_FRAME_TYPE: Final = Frame.__dict__["type"].__set__
_SET_FRAME_DATA: Final = Frame.__dict__["data"].__set__


def _new_frame(type_: bytes, data: bytes) -> Frame:
    frame = object.__new__(Frame)
    _SET_FRAME_TYPE(frame, type_)
    _SET_FRAME_DATA(frame, data)
    return frame


class MessageReader:
    """Incremental framing of typed messages (``Byte1 type`` + ``Int32 length`` + body).

    The declared length is checked against :attr:`max_length` as soon as the 5-byte header is
    available, before any of the body is waited for (PgBouncer's "don't believe nonsense"): a
    length below 4 or above the limit raises :class:`ProtocolError`. ``max_length`` may be
    changed at any time; the proxy keeps it small until the client has authenticated.
    """

    __slots__ = ("_buf", "_pos", "max_length")

    def __init__(self, max_length: int = DEFAULT_MAX_MESSAGE_LENGTH) -> None:
        self.max_length = max_length
        self._buf = bytearray()
        # Offset of the first unread byte: consumed bytes are dropped in bulk, not per message.
        self._pos = 0

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

    def next(self) -> Frame | None:
        """Return the next complete frame, or ``None`` if more data is needed."""
        buf = self._buf
        pos = self._pos
        if len(buf) - pos < 5:
            return None
        type_, length = _HEADER.unpack_from(buf, pos)
        if length < 4 or length > self.max_length:
            raise ProtocolError(_bad_length(type_, length, self.max_length))
        end = pos + 1 + length
        if end > len(buf):
            return None
        self._pos = end
        return _new_frame(type_, bytes(buf[pos:end]))

    def frames(self, data: bytes) -> list[Frame]:
        """Feed `data` and return every complete frame now buffered.

        With nothing buffered, frames are cut straight out of `data` (a chunk that is exactly one
        message becomes its frame without a copy) and only an incomplete tail is buffered.
        """
        if self._pos != len(self._buf):
            self.feed(data)
            return list(self)
        # Nothing buffered: frame straight out of `data`; only an incomplete tail is buffered.
        frames = []
        n = len(data)
        pos = 0
        max_length = self.max_length
        unpack = _HEADER.unpack_from
        while n - pos >= 5:
            type_, length = unpack(data, pos)
            if length < 4 or length > max_length:
                raise ProtocolError(_bad_length(type_, length, max_length))
            end = pos + 1 + length
            if end > n:
                break
            frames.append(_new_frame(type_, data if end - pos == n else data[pos:end]))
            pos = end
        if pos < n:
            self.feed(memoryview(data)[pos:])
        return frames

    def __iter__(self) -> Iterator[Frame]:
        """Yield every complete frame currently buffered."""
        while (frame := self.next()) is not None:
            yield frame

    @property
    def buffered(self) -> int:
        """Number of unparsed bytes held (a partial message)."""
        return len(self._buf) - self._pos

    def take_buffer(self) -> bytes:
        """Remove and return the unparsed bytes, e.g. to hand them to another reader."""
        rest = bytes(self._buf[self._pos :])
        self._buf.clear()
        self._pos = 0
        return rest


def _bad_length(type_: bytes, length: int, limit: int) -> str:
    if length < 4:
        return f"invalid message length {length} for message type {type_!r} (minimum is 4)"
    return f"message length {length} for type {type_!r} exceeds the limit of {limit} bytes"


def parse_frame(data: bytes) -> Frame:
    """Frame exactly one complete, encoded typed message (a convenience for tests and tools)."""
    reader = MessageReader(max_length=max(len(data), 4))
    reader.feed(data)
    frame = reader.next()
    if frame is None:
        raise ProtocolError(f"incomplete message ({len(data)} bytes)")
    if reader.buffered:
        raise ProtocolError(f"{reader.buffered} bytes after the message")
    return frame


# --------------------------------------------------------------------------------------------
# Encoding helpers


def _cstr(text: str) -> bytes:
    """Encode a protocol String: UTF-8 with a NUL terminator (so it may not contain NUL)."""
    raw = text.encode("utf-8")
    if b"\0" in raw:
        raise ValueError(f"protocol strings cannot contain NUL: {text!r}")
    return raw + b"\0"


def _message(type_: bytes, body: bytes) -> bytes:
    return type_ + _U32.pack(len(body) + 4) + body


def _int16s(values: tuple[int, ...]) -> bytes:
    return _U16.pack(len(values)) + struct.pack(f"!{len(values)}h", *values)


def _uint32s(values: tuple[int, ...]) -> bytes:
    return _U16.pack(len(values)) + struct.pack(f"!{len(values)}I", *values)


def _values(values: tuple[bytes | None, ...]) -> bytes:
    """Int16 count, then per value an Int32 length (-1 for NULL) and the bytes."""
    parts = [_U16.pack(len(values))]
    for value in values:
        if value is None:
            parts.append(b"\xff\xff\xff\xff")
        else:
            parts.append(_I32.pack(len(value)))
            parts.append(value)
    return b"".join(parts)


# --------------------------------------------------------------------------------------------
# Decoding helpers


class _Cursor:
    """Bounds-checked reads over a frame's body; every failure is a ProtocolError."""

    __slots__ = ("_data", "_name", "_pos")

    def __init__(self, frame: Frame, name: str) -> None:
        self._data = frame.data
        self._pos = 5
        self._name = name

    def error(self, problem: str) -> ProtocolError:
        return ProtocolError(f"invalid {self._name} message: {problem}")

    def _need(self, n: int) -> int:
        pos = self._pos
        if len(self._data) - pos < n:
            raise self.error("truncated")
        self._pos = pos + n
        return pos

    def byte(self) -> bytes:
        pos = self._need(1)
        return self._data[pos : pos + 1]

    def int8(self) -> int:
        result: int = _I8.unpack_from(self._data, self._need(1))[0]
        return result

    def int16(self) -> int:
        result: int = _I16.unpack_from(self._data, self._need(2))[0]
        return result

    def uint16(self) -> int:
        result: int = _U16.unpack_from(self._data, self._need(2))[0]
        return result

    def int32(self) -> int:
        result: int = _I32.unpack_from(self._data, self._need(4))[0]
        return result

    def uint32(self) -> int:
        result: int = _U32.unpack_from(self._data, self._need(4))[0]
        return result

    def count(self, min_item_size: int) -> int:
        """An Int16 element count, rejected if the rest of the body cannot hold that many."""
        n = self.uint16()
        if n * min_item_size > len(self._data) - self._pos:
            raise self.error(f"count {n} exceeds the message size")
        return n

    def int16s(self) -> tuple[int, ...]:
        n = self.count(2)
        pos = self._need(2 * n)
        return struct.unpack_from(f"!{n}h", self._data, pos)

    def uint32s(self) -> tuple[int, ...]:
        n = self.count(4)
        pos = self._need(4 * n)
        return struct.unpack_from(f"!{n}I", self._data, pos)

    def take(self, n: int) -> bytes:
        pos = self._need(n)
        return self._data[pos : pos + n]

    def value(self) -> bytes | None:
        """An Int32 length (-1 for NULL) followed by that many bytes."""
        n = self.int32()
        if n == -1:
            return None
        if n < 0:
            raise self.error(f"negative value length {n}")
        return self.take(n)

    def values(self) -> tuple[bytes | None, ...]:
        n = self.count(4)
        return tuple([self.value() for _ in range(n)])

    def cbytes(self) -> bytes:
        """A NUL-terminated string, undecoded."""
        data = self._data
        pos = self._pos
        end = data.find(b"\0", pos)
        if end < 0:
            raise self.error("missing string terminator")
        self._pos = end + 1
        return data[pos:end]

    def cstring(self) -> str:
        raw = self.cbytes()
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise self.error(f"invalid UTF-8 in string: {exc.reason}") from None

    def rest(self) -> bytes:
        pos = self._pos
        self._pos = len(self._data)
        return self._data[pos:]

    def done(self) -> None:
        extra = len(self._data) - self._pos
        if extra:
            raise self.error(f"{extra} unexpected trailing bytes")

    def at_end(self) -> bool:
        return self._pos >= len(self._data)


def _expect_empty(frame: Frame, name: str) -> None:
    if len(frame.data) != 5:
        raise ProtocolError(f"invalid {name} message: {len(frame.data) - 5} unexpected bytes")


def _decode_fields(cur: _Cursor) -> dict[str, str]:
    """ErrorResponse/NoticeResponse body: (Byte1 code, String value)* then a zero byte."""
    fields: dict[str, str] = {}
    while True:
        code = cur.byte()
        if code == b"\0":
            cur.done()
            return fields
        fields[chr(code[0])] = cur.cstring()


def _encode_fields(fields: dict[str, str]) -> bytes:
    parts = []
    for code, value in fields.items():
        if len(code) != 1 or not 0 < ord(code) < 256:
            raise ValueError(f"invalid error field code {code!r}")
        parts.append(code.encode("latin-1") + _cstr(value))
    parts.append(b"\0")
    return b"".join(parts)


# --------------------------------------------------------------------------------------------
# Startup packets (untyped)


@dataclass(frozen=True, slots=True)
class StartupMessage:
    """StartupMessage: protocol version, then name/value String pairs ended by an empty name."""

    protocol: int
    parameters: dict[str, str]

    def encode(self) -> bytes:
        """The packet as a client sends it."""
        parts = [_U32.pack(self.protocol)]
        for name, value in self.parameters.items():
            parts.append(_cstr(name))
            parts.append(_cstr(value))
        parts.append(b"\0")
        body = b"".join(parts)
        return _U32.pack(len(body) + 4) + body

    @property
    def user(self) -> str:
        """The ``user`` parameter ('' if absent; :class:`StartupReader` requires it)."""
        return self.parameters.get("user", "")

    @property
    def database(self) -> str:
        """The ``database`` parameter; like PostgreSQL, it defaults to the user name if absent
        or empty."""
        return self.parameters.get("database") or self.user

    @property
    def major(self) -> int:
        """Major protocol version requested."""
        return self.protocol >> 16

    @property
    def minor(self) -> int:
        """Minor protocol version requested (above 0 calls for NegotiateProtocolVersion)."""
        return self.protocol & 0xFFFF


@dataclass(frozen=True, slots=True)
class SSLRequest:
    """SSLRequest: asks the server to start TLS; answered with a single 'S' or 'N' byte."""

    def encode(self) -> bytes:
        """The 8-byte packet."""
        return _U32_PAIR.pack(8, SSL_REQUEST_CODE)


@dataclass(frozen=True, slots=True)
class GSSENCRequest:
    """GSSENCRequest: asks for GSSAPI encryption; answered with a single 'G' or 'N' byte."""

    def encode(self) -> bytes:
        """The 8-byte packet."""
        return _U32_PAIR.pack(8, GSSENC_REQUEST_CODE)


@dataclass(frozen=True, slots=True)
class CancelRequest:
    """CancelRequest (protocol 3.0 form): the target backend's process id and secret key."""

    process_id: int
    secret_key: int

    def encode(self) -> bytes:
        """The 16-byte packet; negative keys are sent as their 32-bit two's complement."""
        return _U32_PAIR.pack(16, CANCEL_REQUEST_CODE) + _U32_PAIR.pack(
            self.process_id & _U32_MASK, self.secret_key & _U32_MASK
        )


StartupPacket: TypeAlias = StartupMessage | SSLRequest | GSSENCRequest | CancelRequest


class StartupReader:
    """Incremental reader of the untyped packets that open a connection.

    The length is checked against :data:`MAX_STARTUP_LENGTH` as soon as it is available (as
    PostgreSQL's ``ProcessStartupPacket`` does). A StartupMessage whose major protocol version is
    not 3 raises :class:`ProtocolError` with sqlstate ``0A000``; a minor version above 0 is
    accepted (the proxy answers it with NegotiateProtocolVersion). Like PostgreSQL, a
    StartupMessage must name a ``user`` (sqlstate ``28000`` otherwise).
    """

    __slots__ = ("_buf", "_pos")

    def __init__(self) -> None:
        self._buf = bytearray()
        self._pos = 0

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        """Append bytes received from the client."""
        self._buf += data

    def next(self) -> StartupPacket | None:
        """Return the next complete packet, or ``None`` if more data is needed."""
        buf = self._buf
        pos = self._pos
        if len(buf) - pos < 4:
            return None
        (length,) = _U32.unpack_from(buf, pos)
        if not 8 <= length <= MAX_STARTUP_LENGTH + 4:
            raise ProtocolError(
                f"invalid length of startup packet: {length} "
                f"(must be between 8 and {MAX_STARTUP_LENGTH + 4})"
            )
        end = pos + length
        if end > len(buf):
            return None
        packet = bytes(buf[pos:end])
        self._pos = end
        return _decode_startup(packet)

    def take_buffer(self) -> bytes:
        """Remove and return the bytes after the last returned packet (the typed phase)."""
        rest = bytes(self._buf[self._pos :])
        self._buf.clear()
        self._pos = 0
        return rest


def _decode_startup(packet: bytes) -> StartupPacket:
    (code,) = _U32.unpack_from(packet, 4)
    if code in (SSL_REQUEST_CODE, GSSENC_REQUEST_CODE):
        if len(packet) != 8:
            raise ProtocolError(f"invalid length {len(packet)} of encryption request packet")
        return SSLRequest() if code == SSL_REQUEST_CODE else GSSENCRequest()
    if code == CANCEL_REQUEST_CODE:
        if len(packet) != 16:
            raise ProtocolError(f"invalid length {len(packet)} of cancel request packet")
        process_id, secret_key = _U32_PAIR.unpack_from(packet, 8)
        return CancelRequest(process_id, secret_key)
    major, minor = code >> 16, code & 0xFFFF
    if major != 3:
        raise ProtocolError(
            f"unsupported frontend protocol {major}.{minor}: server supports 3.0 to 3.0",
            sqlstate_of(ErrorCode.UNSUPPORTED_PROTOCOL_VERSION),
        )
    if packet[-1] != 0:
        raise ProtocolError("invalid startup packet layout: expected terminator as last byte")
    parameters: dict[str, str] = {}
    # Split off the final terminator: what remains is name\0value\0 pairs.
    items = packet[8:-1].split(b"\0")
    if items[-1] != b"" or len(items) % 2 != 1:
        raise ProtocolError("invalid startup packet layout: expected name/value pairs")
    try:
        for i in range(0, len(items) - 1, 2):
            name = items[i].decode("utf-8")
            if not name:
                raise ProtocolError("invalid startup packet layout: empty parameter name")
            parameters[name] = items[i + 1].decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ProtocolError(f"invalid UTF-8 in startup packet: {exc.reason}") from None
    if not parameters.get("user"):
        raise ProtocolError(
            "no PostgreSQL user name specified in startup packet",
            sqlstate_of(ErrorCode.NO_USER_NAME),
        )
    return StartupMessage(code, parameters)


# --------------------------------------------------------------------------------------------
# Frontend messages


@dataclass(frozen=True, slots=True)
class Query:
    """Query ('Q'): simple-protocol SQL text."""

    TYPE: ClassVar[bytes] = FrontendType.QUERY
    sql: str

    def encode(self) -> bytes:
        """Wire form."""
        return _message(b"Q", _cstr(self.sql))


@dataclass(frozen=True, slots=True)
class Parse:
    """Parse ('P'): statement name, query text, parameter type OIDs (0 = unspecified)."""

    TYPE: ClassVar[bytes] = FrontendType.PARSE
    name: str
    query: str
    param_types: tuple[int, ...] = ()

    def encode(self) -> bytes:
        """Wire form."""
        return _message(b"P", _cstr(self.name) + _cstr(self.query) + _uint32s(self.param_types))


@dataclass(frozen=True, slots=True)
class Bind:
    """Bind ('B'): portal, statement, parameter formats, values (None = NULL), result formats."""

    TYPE: ClassVar[bytes] = FrontendType.BIND
    portal: str
    statement: str
    param_formats: tuple[int, ...] = ()
    params: tuple[bytes | None, ...] = ()
    result_formats: tuple[int, ...] = ()

    def encode(self) -> bytes:
        """Wire form."""
        return _message(
            b"B",
            _cstr(self.portal)
            + _cstr(self.statement)
            + _int16s(self.param_formats)
            + _values(self.params)
            + _int16s(self.result_formats),
        )


def _check_kind(cur: _Cursor, kind: bytes) -> bytes:
    if kind != b"S" and kind != b"P":
        raise cur.error(f"invalid target type {kind!r} (expected 'S' or 'P')")
    return kind


@dataclass(frozen=True, slots=True)
class Describe:
    """Describe ('D' from a client): ``kind`` b"S" (statement) or b"P" (portal), and a name."""

    TYPE: ClassVar[bytes] = FrontendType.DESCRIBE
    kind: bytes
    name: str

    def encode(self) -> bytes:
        """Wire form."""
        return _message(b"D", self.kind + _cstr(self.name))


@dataclass(frozen=True, slots=True)
class Execute:
    """Execute ('E' from a client): portal name and row limit (0 = no limit)."""

    TYPE: ClassVar[bytes] = FrontendType.EXECUTE
    portal: str
    max_rows: int = 0

    def encode(self) -> bytes:
        """Wire form."""
        return _message(b"E", _cstr(self.portal) + _I32.pack(self.max_rows))


@dataclass(frozen=True, slots=True)
class Close:
    """Close ('C' from a client): ``kind`` b"S" (statement) or b"P" (portal), and a name."""

    TYPE: ClassVar[bytes] = FrontendType.CLOSE
    kind: bytes
    name: str

    def encode(self) -> bytes:
        """Wire form."""
        return _message(b"C", self.kind + _cstr(self.name))


@dataclass(frozen=True, slots=True)
class _EmptyMessage:
    """Shared shape of the messages that are a type byte and nothing else (length 4)."""

    TYPE: ClassVar[bytes] = b""

    def encode(self) -> bytes:
        """Wire form."""
        return self.TYPE + b"\x00\x00\x00\x04"


@dataclass(frozen=True, slots=True)
class Sync(_EmptyMessage):
    """Sync ('S' from a client): ends an extended-query batch."""

    TYPE: ClassVar[bytes] = FrontendType.SYNC


@dataclass(frozen=True, slots=True)
class Flush(_EmptyMessage):
    """Flush ('H' from a client): asks the server to send pending output."""

    TYPE: ClassVar[bytes] = FrontendType.FLUSH


@dataclass(frozen=True, slots=True)
class Terminate(_EmptyMessage):
    """Terminate ('X'): the client is closing the connection."""

    TYPE: ClassVar[bytes] = FrontendType.TERMINATE


@dataclass(frozen=True, slots=True)
class CopyData:
    """CopyData ('d'), sent in both directions during COPY."""

    TYPE: ClassVar[bytes] = b"d"
    data: bytes

    def encode(self) -> bytes:
        """Wire form."""
        return _message(b"d", self.data)


@dataclass(frozen=True, slots=True)
class CopyDone(_EmptyMessage):
    """CopyDone ('c'), sent in both directions at the end of COPY data."""

    TYPE: ClassVar[bytes] = b"c"


@dataclass(frozen=True, slots=True)
class CopyFail:
    """CopyFail ('f' from a client): aborts COPY FROM STDIN with an error message."""

    TYPE: ClassVar[bytes] = FrontendType.COPY_FAIL
    message: str

    def encode(self) -> bytes:
        """Wire form."""
        return _message(b"f", _cstr(self.message))


@dataclass(frozen=True, slots=True)
class FunctionCall:
    """FunctionCall ('F'): the legacy fast-path function call interface."""

    TYPE: ClassVar[bytes] = FrontendType.FUNCTION_CALL
    oid: int
    arg_formats: tuple[int, ...] = ()
    args: tuple[bytes | None, ...] = ()
    result_format: int = 0

    def encode(self) -> bytes:
        """Wire form."""
        return _message(
            b"F",
            _U32.pack(self.oid)
            + _int16s(self.arg_formats)
            + _values(self.args)
            + _I16.pack(self.result_format),
        )


@dataclass(frozen=True, slots=True)
class PasswordMessage:
    """PasswordMessage ('p'): a cleartext password or an md5 response, NUL-terminated.

    The password is kept as bytes: PostgreSQL does not interpret its encoding.
    """

    TYPE: ClassVar[bytes] = FrontendType.PASSWORD
    password: bytes

    def encode(self) -> bytes:
        """Wire form."""
        if b"\0" in self.password:
            raise ValueError("a password cannot contain NUL")
        return _message(b"p", self.password + b"\0")


@dataclass(frozen=True, slots=True)
class SASLInitialResponse:
    """SASLInitialResponse ('p'): chosen mechanism and the initial response (None = absent)."""

    TYPE: ClassVar[bytes] = FrontendType.PASSWORD
    mechanism: str
    data: bytes | None

    def encode(self) -> bytes:
        """Wire form."""
        data = self.data
        tail = b"\xff\xff\xff\xff" if data is None else _I32.pack(len(data)) + data
        return _message(b"p", _cstr(self.mechanism) + tail)


@dataclass(frozen=True, slots=True)
class SASLResponse:
    """SASLResponse ('p'): further SASL data from the client."""

    TYPE: ClassVar[bytes] = FrontendType.PASSWORD
    data: bytes

    def encode(self) -> bytes:
        """Wire form."""
        return _message(b"p", self.data)


FrontendMessage: TypeAlias = (
    Query
    | Parse
    | Bind
    | Describe
    | Execute
    | Close
    | Sync
    | Flush
    | Terminate
    | CopyData
    | CopyDone
    | CopyFail
    | FunctionCall
    | PasswordMessage
    | SASLInitialResponse
    | SASLResponse
)


def _d_query(frame: Frame) -> Query:
    # Hot path: one terminated string filling the body, checked without a cursor.
    data = frame.data
    if data.find(b"\0", 5) != len(data) - 1:
        raise ProtocolError("invalid Query message: the query string must fill the body")
    try:
        return Query(data[5:-1].decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ProtocolError(f"invalid Query message: invalid UTF-8: {exc.reason}") from None


def _d_parse(frame: Frame) -> Parse:
    cur = _Cursor(frame, "Parse")
    name = cur.cstring()
    query = cur.cstring()
    types = cur.uint32s()
    cur.done()
    return Parse(name, query, types)


def _d_bind(frame: Frame) -> Bind:
    cur = _Cursor(frame, "Bind")
    portal = cur.cstring()
    statement = cur.cstring()
    param_formats = cur.int16s()
    params = cur.values()
    result_formats = cur.int16s()
    cur.done()
    return Bind(portal, statement, param_formats, params, result_formats)


def _d_describe(frame: Frame) -> Describe:
    cur = _Cursor(frame, "Describe")
    kind = _check_kind(cur, cur.byte())
    name = cur.cstring()
    cur.done()
    return Describe(kind, name)


def _d_execute(frame: Frame) -> Execute:
    cur = _Cursor(frame, "Execute")
    portal = cur.cstring()
    max_rows = cur.int32()
    cur.done()
    return Execute(portal, max_rows)


def _d_close(frame: Frame) -> Close:
    cur = _Cursor(frame, "Close")
    kind = _check_kind(cur, cur.byte())
    name = cur.cstring()
    cur.done()
    return Close(kind, name)


def _d_copy_data(frame: Frame) -> CopyData:
    return CopyData(frame.data[5:])


def _d_copy_fail(frame: Frame) -> CopyFail:
    cur = _Cursor(frame, "CopyFail")
    message = cur.cstring()
    cur.done()
    return CopyFail(message)


def _d_function_call(frame: Frame) -> FunctionCall:
    cur = _Cursor(frame, "FunctionCall")
    oid = cur.uint32()
    arg_formats = cur.int16s()
    args = cur.values()
    result_format = cur.int16()
    cur.done()
    return FunctionCall(oid, arg_formats, args, result_format)


def _d_password(frame: Frame) -> PasswordMessage:
    cur = _Cursor(frame, "PasswordMessage")
    password = cur.cbytes()
    cur.done()
    return PasswordMessage(password)


def _check_p(frame: Frame, name: str) -> None:
    if frame.type != b"p":
        raise ProtocolError(f"expected a {name} message ('p'), got type {frame.type!r}")


def decode_sasl_initial_response(frame: Frame) -> SASLInitialResponse:
    """Decode a 'p' frame as SASLInitialResponse (the first reply to AuthenticationSASL)."""
    _check_p(frame, "SASLInitialResponse")
    cur = _Cursor(frame, "SASLInitialResponse")
    mechanism = cur.cstring()
    data = cur.value()
    cur.done()
    return SASLInitialResponse(mechanism, data)


def decode_sasl_response(frame: Frame) -> SASLResponse:
    """Decode a 'p' frame as SASLResponse (the reply to AuthenticationSASLContinue)."""
    _check_p(frame, "SASLResponse")
    return SASLResponse(frame.data[5:])


_E = TypeVar("_E", bound="_EmptyMessage")
_R = TypeVar("_R", bound="_CopyResponse")


def _empty_decoder(cls: type[_E]) -> Callable[[Frame], _E]:
    """The decoder of a message that has no body."""

    def decode(frame: Frame) -> _E:
        _expect_empty(frame, cls.__name__)
        return cls()

    return decode


def _copy_response_decoder(cls: type[_R]) -> Callable[[Frame], _R]:
    """The decoder of CopyInResponse, CopyOutResponse or CopyBothResponse."""

    def decode(frame: Frame) -> _R:
        cur = _Cursor(frame, cls.__name__)
        fmt = cur.int8()
        formats = cur.int16s()
        cur.done()
        return cls(fmt, formats)

    return decode


_d_sync = _empty_decoder(Sync)
_d_flush = _empty_decoder(Flush)
_d_terminate = _empty_decoder(Terminate)
_d_copy_done = _empty_decoder(CopyDone)


_FRONTEND_DECODERS: Final[dict[bytes, Callable[[Frame], FrontendMessage]]] = {
    b"Q": _d_query,
    b"P": _d_parse,
    b"B": _d_bind,
    b"D": _d_describe,
    b"E": _d_execute,
    b"C": _d_close,
    b"S": _d_sync,
    b"H": _d_flush,
    b"X": _d_terminate,
    b"d": _d_copy_data,
    b"c": _d_copy_done,
    b"f": _d_copy_fail,
    b"F": _d_function_call,
    b"p": _d_password,
}


def decode_frontend(frame: Frame) -> FrontendMessage:
    """Decode a message sent by a client.

    A 'p' frame decodes as :class:`PasswordMessage`; during SASL use
    :func:`decode_sasl_initial_response` / :func:`decode_sasl_response` instead.
    """
    decoder = _FRONTEND_DECODERS.get(frame.type)
    if decoder is None:
        raise ProtocolError(f"invalid frontend message type {frame.type!r}")
    return decoder(frame)


# --------------------------------------------------------------------------------------------
# Backend messages


@dataclass(frozen=True, slots=True)
class AuthenticationOk:
    """AuthenticationOk ('R', 0): authentication succeeded."""

    TYPE: ClassVar[bytes] = BackendType.AUTHENTICATION

    def encode(self) -> bytes:
        """Wire form."""
        return b"R\x00\x00\x00\x08\x00\x00\x00\x00"


@dataclass(frozen=True, slots=True)
class AuthenticationCleartextPassword:
    """AuthenticationCleartextPassword ('R', 3)."""

    TYPE: ClassVar[bytes] = BackendType.AUTHENTICATION

    def encode(self) -> bytes:
        """Wire form."""
        return b"R\x00\x00\x00\x08\x00\x00\x00\x03"


@dataclass(frozen=True, slots=True)
class AuthenticationMD5Password:
    """AuthenticationMD5Password ('R', 5) with its 4-byte salt."""

    TYPE: ClassVar[bytes] = BackendType.AUTHENTICATION
    salt: bytes

    def encode(self) -> bytes:
        """Wire form."""
        if len(self.salt) != 4:
            raise ValueError("the MD5 salt is 4 bytes")
        return b"R\x00\x00\x00\x0c\x00\x00\x00\x05" + self.salt


@dataclass(frozen=True, slots=True)
class AuthenticationSASL:
    """AuthenticationSASL ('R', 10): the mechanisms offered, as a list ended by an empty name."""

    TYPE: ClassVar[bytes] = BackendType.AUTHENTICATION
    mechanisms: tuple[str, ...]

    def encode(self) -> bytes:
        """Wire form."""
        for mechanism in self.mechanisms:
            if not mechanism:
                raise ValueError("an empty SASL mechanism name would end the list")
        names = b"".join(_cstr(m) for m in self.mechanisms)
        return _message(b"R", _I32.pack(AuthenticationType.SASL) + names + b"\0")


@dataclass(frozen=True, slots=True)
class AuthenticationSASLContinue:
    """AuthenticationSASLContinue ('R', 11): a SASL challenge."""

    TYPE: ClassVar[bytes] = BackendType.AUTHENTICATION
    data: bytes

    def encode(self) -> bytes:
        """Wire form."""
        return _message(b"R", _I32.pack(AuthenticationType.SASL_CONTINUE) + self.data)


@dataclass(frozen=True, slots=True)
class AuthenticationSASLFinal:
    """AuthenticationSASLFinal ('R', 12): the SASL outcome ("additional data")."""

    TYPE: ClassVar[bytes] = BackendType.AUTHENTICATION
    data: bytes

    def encode(self) -> bytes:
        """Wire form."""
        return _message(b"R", _I32.pack(AuthenticationType.SASL_FINAL) + self.data)


@dataclass(frozen=True, slots=True)
class BackendKeyData:
    """BackendKeyData ('K'), protocol 3.0 form: process id and a 32-bit cancel key."""

    TYPE: ClassVar[bytes] = BackendType.BACKEND_KEY_DATA
    process_id: int
    secret_key: int

    def encode(self) -> bytes:
        """Wire form; negative keys are sent as their 32-bit two's complement."""
        return b"K\x00\x00\x00\x0c" + _U32_PAIR.pack(
            self.process_id & _U32_MASK, self.secret_key & _U32_MASK
        )


@dataclass(frozen=True, slots=True)
class ParameterStatus:
    """ParameterStatus ('S' from a server): a reported run-time parameter and its value."""

    TYPE: ClassVar[bytes] = BackendType.PARAMETER_STATUS
    name: str
    value: str

    def encode(self) -> bytes:
        """Wire form."""
        return _message(b"S", _cstr(self.name) + _cstr(self.value))


_READY_STATUSES: Final = frozenset((b"I", b"T", b"E"))


@dataclass(frozen=True, slots=True)
class ReadyForQuery:
    """ReadyForQuery ('Z'): transaction status b"I" (idle), b"T" (in a transaction) or b"E"
    (in a failed transaction)."""

    TYPE: ClassVar[bytes] = BackendType.READY_FOR_QUERY
    status: bytes

    def encode(self) -> bytes:
        """Wire form."""
        return b"Z\x00\x00\x00\x05" + self.status


@dataclass(frozen=True, slots=True)
class FieldDescription:
    """One column of a RowDescription."""

    name: str
    table_oid: int = 0
    column_number: int = 0
    type_oid: int = 0
    type_size: int = -1
    type_modifier: int = -1
    format: int = 0


_FIELD: Final = struct.Struct("!IhIhih")


@dataclass(frozen=True, slots=True)
class RowDescription:
    """RowDescription ('T'): the columns of the rows that follow."""

    TYPE: ClassVar[bytes] = BackendType.ROW_DESCRIPTION
    fields: tuple[FieldDescription, ...]

    def encode(self) -> bytes:
        """Wire form."""
        parts = [_U16.pack(len(self.fields))]
        for f in self.fields:
            parts.append(_cstr(f.name))
            parts.append(
                _FIELD.pack(
                    f.table_oid,
                    f.column_number,
                    f.type_oid,
                    f.type_size,
                    f.type_modifier,
                    f.format,
                )
            )
        return _message(b"T", b"".join(parts))


@dataclass(frozen=True, slots=True)
class DataRow:
    """DataRow ('D' from a server): column values (None = NULL)."""

    TYPE: ClassVar[bytes] = BackendType.DATA_ROW
    values: tuple[bytes | None, ...]

    def encode(self) -> bytes:
        """Wire form."""
        return _message(b"D", _values(self.values))


@dataclass(frozen=True, slots=True)
class CommandComplete:
    """CommandComplete ('C' from a server): the command tag, e.g. ``INSERT 0 1``."""

    TYPE: ClassVar[bytes] = BackendType.COMMAND_COMPLETE
    tag: str

    def encode(self) -> bytes:
        """Wire form."""
        return _message(b"C", _cstr(self.tag))


@dataclass(frozen=True, slots=True)
class EmptyQueryResponse(_EmptyMessage):
    """EmptyQueryResponse ('I'): the query string was empty."""

    TYPE: ClassVar[bytes] = BackendType.EMPTY_QUERY_RESPONSE


@dataclass(frozen=True, slots=True)
class _FieldsMessage:
    """Shared shape of ErrorResponse and NoticeResponse ("Error and Notice Message Fields")."""

    TYPE: ClassVar[bytes] = b""
    fields: dict[str, str]

    def encode(self) -> bytes:
        """Wire form."""
        return _message(self.TYPE, _encode_fields(self.fields))

    @property
    def sqlstate(self) -> str:
        """Field C, the SQLSTATE code ('' if absent)."""
        return self.fields.get("C", "")

    @property
    def message(self) -> str:
        """Field M, the primary human-readable message ('' if absent)."""
        return self.fields.get("M", "")

    @property
    def severity(self) -> str:
        """Field V (non-localized severity, PostgreSQL 9.6+), else S (localized)."""
        return self.fields.get("V") or self.fields.get("S", "")


@dataclass(frozen=True, slots=True)
class ErrorResponse(_FieldsMessage):
    """ErrorResponse ('E' from a server)."""

    TYPE: ClassVar[bytes] = BackendType.ERROR_RESPONSE


@dataclass(frozen=True, slots=True)
class NoticeResponse(_FieldsMessage):
    """NoticeResponse ('N')."""

    TYPE: ClassVar[bytes] = BackendType.NOTICE_RESPONSE


@dataclass(frozen=True, slots=True)
class NotificationResponse:
    """NotificationResponse ('A'): a NOTIFY delivered to a listening session."""

    TYPE: ClassVar[bytes] = BackendType.NOTIFICATION_RESPONSE
    process_id: int
    channel: str
    payload: str

    def encode(self) -> bytes:
        """Wire form."""
        return _message(
            b"A",
            _U32.pack(self.process_id & _U32_MASK) + _cstr(self.channel) + _cstr(self.payload),
        )


@dataclass(frozen=True, slots=True)
class ParseComplete(_EmptyMessage):
    """ParseComplete ('1')."""

    TYPE: ClassVar[bytes] = BackendType.PARSE_COMPLETE


@dataclass(frozen=True, slots=True)
class BindComplete(_EmptyMessage):
    """BindComplete ('2')."""

    TYPE: ClassVar[bytes] = BackendType.BIND_COMPLETE


@dataclass(frozen=True, slots=True)
class CloseComplete(_EmptyMessage):
    """CloseComplete ('3')."""

    TYPE: ClassVar[bytes] = BackendType.CLOSE_COMPLETE


@dataclass(frozen=True, slots=True)
class NoData(_EmptyMessage):
    """NoData ('n'): the described statement or portal returns no rows."""

    TYPE: ClassVar[bytes] = BackendType.NO_DATA


@dataclass(frozen=True, slots=True)
class ParameterDescription:
    """ParameterDescription ('t'): the parameter type OIDs of a described statement."""

    TYPE: ClassVar[bytes] = BackendType.PARAMETER_DESCRIPTION
    type_oids: tuple[int, ...]

    def encode(self) -> bytes:
        """Wire form."""
        return _message(b"t", _uint32s(self.type_oids))


@dataclass(frozen=True, slots=True)
class PortalSuspended(_EmptyMessage):
    """PortalSuspended ('s'): Execute's row limit was reached."""

    TYPE: ClassVar[bytes] = BackendType.PORTAL_SUSPENDED


@dataclass(frozen=True, slots=True)
class _CopyResponse:
    """Shared shape of CopyInResponse, CopyOutResponse and CopyBothResponse."""

    TYPE: ClassVar[bytes] = b""
    format: int
    column_formats: tuple[int, ...]

    def encode(self) -> bytes:
        """Wire form."""
        return _message(self.TYPE, _I8.pack(self.format) + _int16s(self.column_formats))


@dataclass(frozen=True, slots=True)
class CopyInResponse(_CopyResponse):
    """CopyInResponse ('G'): the server is ready for COPY FROM STDIN data."""

    TYPE: ClassVar[bytes] = BackendType.COPY_IN_RESPONSE


@dataclass(frozen=True, slots=True)
class CopyOutResponse(_CopyResponse):
    """CopyOutResponse ('H' from a server): COPY TO STDOUT data follows."""

    TYPE: ClassVar[bytes] = BackendType.COPY_OUT_RESPONSE


@dataclass(frozen=True, slots=True)
class CopyBothResponse(_CopyResponse):
    """CopyBothResponse ('W'): streaming replication copy in both directions."""

    TYPE: ClassVar[bytes] = BackendType.COPY_BOTH_RESPONSE


@dataclass(frozen=True, slots=True)
class NegotiateProtocolVersion:
    """NegotiateProtocolVersion ('v'): the newest supported minor version and the
    ``_pq_.`` options the server did not recognize.

    Despite the field's name in older documentation, PostgreSQL sends the full version number
    (``PG_PROTOCOL_LATEST``, i.e. ``major << 16 | minor``: 196608 for 3.0) and libpq reads it
    that way, so a 3.0 proxy should send :data:`PROTOCOL_VERSION_3`. Kept as received.
    """

    TYPE: ClassVar[bytes] = BackendType.NEGOTIATE_PROTOCOL_VERSION
    newest_minor: int
    unrecognized: tuple[str, ...] = ()

    def encode(self) -> bytes:
        """Wire form."""
        return _message(
            b"v",
            _I32.pack(self.newest_minor)
            + _I32.pack(len(self.unrecognized))
            + b"".join(_cstr(o) for o in self.unrecognized),
        )


@dataclass(frozen=True, slots=True)
class FunctionCallResponse:
    """FunctionCallResponse ('V'): the fast-path function result (None = NULL)."""

    TYPE: ClassVar[bytes] = BackendType.FUNCTION_CALL_RESPONSE
    value: bytes | None

    def encode(self) -> bytes:
        """Wire form."""
        if self.value is None:
            return b"V\x00\x00\x00\x08\xff\xff\xff\xff"
        return _message(b"V", _I32.pack(len(self.value)) + self.value)


BackendMessage: TypeAlias = (
    AuthenticationOk
    | AuthenticationCleartextPassword
    | AuthenticationMD5Password
    | AuthenticationSASL
    | AuthenticationSASLContinue
    | AuthenticationSASLFinal
    | BackendKeyData
    | ParameterStatus
    | ReadyForQuery
    | RowDescription
    | DataRow
    | CommandComplete
    | EmptyQueryResponse
    | ErrorResponse
    | NoticeResponse
    | NotificationResponse
    | ParseComplete
    | BindComplete
    | CloseComplete
    | NoData
    | ParameterDescription
    | PortalSuspended
    | CopyInResponse
    | CopyOutResponse
    | CopyBothResponse
    | CopyData
    | CopyDone
    | NegotiateProtocolVersion
    | FunctionCallResponse
)


_Authentication: TypeAlias = (
    AuthenticationOk
    | AuthenticationCleartextPassword
    | AuthenticationMD5Password
    | AuthenticationSASL
    | AuthenticationSASLContinue
    | AuthenticationSASLFinal
)


def _d_authentication(frame: Frame) -> _Authentication:
    cur = _Cursor(frame, "Authentication")
    code = cur.int32()
    result: _Authentication
    if code == AuthenticationType.OK:
        result = AuthenticationOk()
    elif code == AuthenticationType.CLEARTEXT_PASSWORD:
        result = AuthenticationCleartextPassword()
    elif code == AuthenticationType.MD5_PASSWORD:
        result = AuthenticationMD5Password(cur.take(4))
    elif code == AuthenticationType.SASL:
        mechanisms = []
        while (mechanism := cur.cstring()) != "":
            mechanisms.append(mechanism)
        result = AuthenticationSASL(tuple(mechanisms))
    elif code == AuthenticationType.SASL_CONTINUE:
        result = AuthenticationSASLContinue(cur.rest())
    elif code == AuthenticationType.SASL_FINAL:
        result = AuthenticationSASLFinal(cur.rest())
    else:
        raise ProtocolError(
            f"unsupported authentication request {code} from server",
            sqlstate_of(ErrorCode.UNSUPPORTED_SERVER_AUTHENTICATION),
        )
    cur.done()
    return result


def _d_backend_key_data(frame: Frame) -> BackendKeyData:
    cur = _Cursor(frame, "BackendKeyData")
    process_id = cur.uint32()
    secret_key = cur.uint32()
    cur.done()
    return BackendKeyData(process_id, secret_key)


def _d_parameter_status(frame: Frame) -> ParameterStatus:
    cur = _Cursor(frame, "ParameterStatus")
    name = cur.cstring()
    value = cur.cstring()
    cur.done()
    return ParameterStatus(name, value)


def _d_ready_for_query(frame: Frame) -> ReadyForQuery:
    status = frame.data[5:]
    if status not in _READY_STATUSES:
        raise ProtocolError(f"invalid ReadyForQuery message: transaction status {status!r}")
    return ReadyForQuery(status)


def _d_row_description(frame: Frame) -> RowDescription:
    cur = _Cursor(frame, "RowDescription")
    n = cur.count(1 + _FIELD.size)
    fields = []
    for _ in range(n):
        name = cur.cstring()
        attrs = _FIELD.unpack(cur.take(_FIELD.size))
        fields.append(FieldDescription(name, *attrs))
    cur.done()
    return RowDescription(tuple(fields))


def _d_data_row(frame: Frame) -> DataRow:
    cur = _Cursor(frame, "DataRow")
    values = cur.values()
    cur.done()
    return DataRow(values)


def _d_command_complete(frame: Frame) -> CommandComplete:
    cur = _Cursor(frame, "CommandComplete")
    tag = cur.cstring()
    cur.done()
    return CommandComplete(tag)


def _d_error_response(frame: Frame) -> ErrorResponse:
    return ErrorResponse(_decode_fields(_Cursor(frame, "ErrorResponse")))


def _d_notice_response(frame: Frame) -> NoticeResponse:
    return NoticeResponse(_decode_fields(_Cursor(frame, "NoticeResponse")))


def _d_notification_response(frame: Frame) -> NotificationResponse:
    cur = _Cursor(frame, "NotificationResponse")
    process_id = cur.uint32()
    channel = cur.cstring()
    payload = cur.cstring()
    cur.done()
    return NotificationResponse(process_id, channel, payload)


def _d_parameter_description(frame: Frame) -> ParameterDescription:
    cur = _Cursor(frame, "ParameterDescription")
    oids = cur.uint32s()
    cur.done()
    return ParameterDescription(oids)


def _d_negotiate_protocol_version(frame: Frame) -> NegotiateProtocolVersion:
    cur = _Cursor(frame, "NegotiateProtocolVersion")
    newest = cur.int32()
    n = cur.int32()
    # Each option name needs at least its terminator.
    if n < 0 or n > len(frame.data):
        raise cur.error(f"invalid option count {n}")
    options = tuple([cur.cstring() for _ in range(n)])
    cur.done()
    return NegotiateProtocolVersion(newest, options)


def _d_function_call_response(frame: Frame) -> FunctionCallResponse:
    cur = _Cursor(frame, "FunctionCallResponse")
    value = cur.value()
    cur.done()
    return FunctionCallResponse(value)


_d_empty_query_response = _empty_decoder(EmptyQueryResponse)
_d_parse_complete = _empty_decoder(ParseComplete)
_d_bind_complete = _empty_decoder(BindComplete)
_d_close_complete = _empty_decoder(CloseComplete)
_d_no_data = _empty_decoder(NoData)
_d_portal_suspended = _empty_decoder(PortalSuspended)
_d_copy_in_response = _copy_response_decoder(CopyInResponse)
_d_copy_out_response = _copy_response_decoder(CopyOutResponse)
_d_copy_both_response = _copy_response_decoder(CopyBothResponse)

_BACKEND_DECODERS: Final[dict[bytes, Callable[[Frame], BackendMessage]]] = {
    b"R": _d_authentication,
    b"K": _d_backend_key_data,
    b"S": _d_parameter_status,
    b"Z": _d_ready_for_query,
    b"T": _d_row_description,
    b"D": _d_data_row,
    b"C": _d_command_complete,
    b"I": _d_empty_query_response,
    b"E": _d_error_response,
    b"N": _d_notice_response,
    b"A": _d_notification_response,
    b"1": _d_parse_complete,
    b"2": _d_bind_complete,
    b"3": _d_close_complete,
    b"n": _d_no_data,
    b"t": _d_parameter_description,
    b"s": _d_portal_suspended,
    b"G": _d_copy_in_response,
    b"H": _d_copy_out_response,
    b"W": _d_copy_both_response,
    b"d": _d_copy_data,
    b"c": _d_copy_done,
    b"v": _d_negotiate_protocol_version,
    b"V": _d_function_call_response,
}


def decode_backend(frame: Frame) -> BackendMessage:
    """Decode a message sent by a server.

    Authentication requests ('R') dispatch on their Int32 subtype; methods the proxy cannot
    perform (Kerberos, GSSAPI, SSPI) raise :class:`ProtocolError` with sqlstate ``0A000``.
    """
    decoder = _BACKEND_DECODERS.get(frame.type)
    if decoder is None:
        raise ProtocolError(f"invalid backend message type {frame.type!r}")
    return decoder(frame)


# --------------------------------------------------------------------------------------------
# Building error and notice responses


def _fields(
    sqlstate: str, message: str, severity: str, detail: str | None, hint: str | None
) -> dict[str, str]:
    # S is the localized severity and V the untranslated one (PostgreSQL 9.6+); we have no
    # translations, so both carry the same word.
    fields = {"S": severity, "V": severity, "C": sqlstate, "M": message}
    if detail is not None:
        fields["D"] = detail
    if hint is not None:
        fields["H"] = hint
    return fields


def error_response(
    sqlstate: str,
    message: str,
    *,
    severity: str = "FATAL",
    detail: str | None = None,
    hint: str | None = None,
) -> bytes:
    """An encoded ErrorResponse with fields S, V, C, M and, when given, D and H."""
    return ErrorResponse(_fields(sqlstate, message, severity, detail, hint)).encode()


def notice_response(
    sqlstate: str,
    message: str,
    *,
    severity: str = "NOTICE",
    detail: str | None = None,
    hint: str | None = None,
) -> bytes:
    """An encoded NoticeResponse with fields S, V, C, M and, when given, D and H."""
    return NoticeResponse(_fields(sqlstate, message, severity, detail, hint)).encode()
