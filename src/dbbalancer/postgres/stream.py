"""Message boundaries in a PostgreSQL byte stream, without buffering message bodies.

The proxy forwards server output to the client unchanged; all it must know is where each message
starts, so that it sees every ReadyForQuery ('Z', protocol section "Message Formats") and its
transaction status. `BoundaryScanner` walks the 5-byte headers of a chunk and jumps over bodies,
carrying at most a partial header (plus the status byte of a ReadyForQuery) to the next chunk.
Sans-IO: bytes in, facts out.
"""

from __future__ import annotations

import struct

from dbbalancer.postgres.codec import ProtocolError

_LENGTH = struct.Struct("!I")
_READY_FOR_QUERY = 0x5A  # 'Z'
_ERROR_RESPONSE = 0x45  # 'E'


class _Scanner:
    """Carries what crosses a chunk boundary: the rest of a message body still to skip, or an
    incomplete header. Subclasses walk the headers of `_join(chunk)` and end with `_carry`."""

    __slots__ = ("_partial", "_skip", "max_length")

    def __init__(self, max_length: int) -> None:
        self.max_length = max_length
        self._skip = 0  # bytes of the current message body still to come
        self._partial = b""  # an incomplete header carried to the next chunk

    @property
    def at_boundary(self) -> bool:
        """True when the bytes fed so far end exactly at a message boundary."""
        return self._skip == 0 and not self._partial

    def reset(self) -> None:
        """Forget any partial state (after the stream was re-synchronised)."""
        self._skip = 0
        self._partial = b""

    def _join(self, chunk: bytes | bytearray | memoryview) -> bytes | bytearray | memoryview:
        """The bytes to scan: a carried partial header followed by `chunk`."""
        if not self._partial:
            return chunk
        data = self._partial + bytes(chunk)
        self._partial = b""
        return data

    def _carry(self, data: bytes | bytearray | memoryview, pos: int) -> None:
        """Remember where scanning of `data` stopped at `pos`."""
        n = len(data)
        if pos >= n:
            self._skip = pos - n
        else:
            self._skip = 0
            self._partial = bytes(data[pos:])


class BoundaryScanner(_Scanner):
    """Follows message boundaries across chunks of a backend stream.

    After `feed(chunk)`, `ready_count` says how many ReadyForQuery messages ended in the chunk
    and `last_status` holds the transaction status byte of the last one (b"I", b"T" or b"E").
    `errors` counts ErrorResponse headers seen. A declared length below 4 or above `max_length`
    raises ProtocolError before anything is buffered.
    """

    __slots__ = ("errors", "last_status", "ready_count")

    def __init__(self, max_length: int) -> None:
        super().__init__(max_length)
        self.ready_count = 0
        self.last_status: bytes | None = None
        self.errors = 0

    def feed(self, chunk: bytes | bytearray | memoryview) -> int:
        """Scan one chunk; return the number of ReadyForQuery messages it completed."""
        # A 'Z' whose status byte is in the next chunk is carried whole (5 bytes).
        data = self._join(chunk)
        n = len(data)
        pos = self._skip
        ready = 0
        max_length = self.max_length
        unpack = _LENGTH.unpack_from
        while pos + 5 <= n:
            kind = data[pos]
            (length,) = unpack(data, pos + 1)
            if length < 4 or length > max_length:
                raise ProtocolError(
                    f"server sent a message of type {chr(kind)!r} with length {length} "
                    f"(limit {max_length}); the stream is corrupt"
                )
            if kind == _READY_FOR_QUERY:
                if pos + 6 > n:
                    break
                ready += 1
                self.last_status = bytes(data[pos + 5 : pos + 6])
            elif kind == _ERROR_RESPONSE:
                self.errors += 1
            pos += 1 + length
        self._carry(data, pos)
        self.ready_count += ready
        return ready


# Backend messages a proxy can forward without looking into them: results, completions,
# notices (protocol section "Message Formats"). Errors, ParameterStatus, notifications and COPY
# are not among them: someone must read those.
_PLAIN_BACKEND = frozenset(b"TDCN123nsIt")
_ROWS = frozenset(b"TD")
_READY_LENGTH = b"\x00\x00\x00\x05"


def scan_plain(data: bytes | bytearray | memoryview, max_length: int) -> tuple[bytes, bool] | None:
    """Whether a chunk of backend output can be forwarded as it is, and what it ends with.

    True (returned as ``(status, rows)``) when `data` is whole messages of the plain kinds above,
    with lengths within `max_length`, ending exactly with a ReadyForQuery that is its only one:
    ``status`` is that message's transaction status byte and ``rows`` says whether a
    RowDescription or DataRow came before it. Otherwise None, and the caller frames the chunk.
    """
    n = len(data)
    end = n - 6
    if end < 0 or data[end] != _READY_FOR_QUERY or data[end + 1 : end + 5] != _READY_LENGTH:
        return None
    pos = 0
    rows = False
    unpack = _LENGTH.unpack_from
    plain = _PLAIN_BACKEND
    while pos < end:
        kind = data[pos]
        if kind not in plain:
            return None
        (length,) = unpack(data, pos + 1)
        if length < 4 or length > max_length:
            return None
        if kind in _ROWS:
            rows = True
        pos += 1 + length
    if pos != end:
        return None
    return bytes(data[n - 1 :]), rows


_EXPECTS_READY = frozenset(b"QSF")  # Query, Sync, FunctionCall: each is answered by a Ready
_EXTENDED = frozenset(b"PBEDCH")  # extended-protocol messages that wait for a Sync
_TERMINATE = 0x58  # 'X'


class FrontendScanner(_Scanner):
    """Follows message boundaries of a client stream forwarded unchanged (session pooling).

    `feed(chunk)` returns None, or the offset in the chunk where a Terminate message starts
    (negative when its first bytes were in an earlier chunk, already forwarded). `expected` counts
    the ReadyForQuery messages the server owes for what was fed; `unsynced` says whether
    extended-protocol messages were sent after the last Sync. Lengths are checked against
    `max_length` before anything else happens to the chunk.
    """

    __slots__ = ("expected", "unsynced")

    def __init__(self, max_length: int) -> None:
        super().__init__(max_length)
        self.expected = 0
        self.unsynced = False

    def feed(self, chunk: bytes | bytearray | memoryview) -> int | None:
        """Scan one chunk (see the class docstring)."""
        carried = len(self._partial)
        data = self._join(chunk)
        n = len(data)
        pos = self._skip
        max_length = self.max_length
        unpack = _LENGTH.unpack_from
        while pos + 5 <= n:
            kind = data[pos]
            (length,) = unpack(data, pos + 1)
            if length < 4 or length > max_length:
                raise ProtocolError(
                    f"client sent a message of type {chr(kind)!r} with length {length} "
                    f"(limit {max_length})"
                )
            if kind in _EXPECTS_READY:
                self.expected += 1
                self.unsynced = False
            elif kind in _EXTENDED:
                self.unsynced = True
            elif kind == _TERMINATE:
                self._skip = 0
                return pos - carried
            pos += 1 + length
        self._carry(data, pos)
        return None
