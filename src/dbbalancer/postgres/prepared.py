"""Protocol-level prepared statements that survive transaction pooling.

A client's named Parse is recorded under its own name and mapped to a server-side name derived
from the statement text and parameter types (`dbb_<hash>`), so every client that prepares the same
SQL shares one server-side statement per connection. Bind, Describe and Close are rewritten to the
server-side name by patching the name field in place; nothing else in the message is decoded
(protocol section "Message Formats": Parse, Bind, Describe, Close). Each server connection keeps an
LRU set of the statements it holds, capped by `max_prepared_statements`. Sans-IO.
"""

from __future__ import annotations

import collections
import hashlib
import struct
from dataclasses import dataclass

from dbbalancer.core.statement import Classification
from dbbalancer.postgres.codec import Frame, ProtocolError

_HEADER = struct.Struct("!cI")


@dataclass(frozen=True, slots=True)
class PreparedStatement:
    """A statement a client prepared, as the proxy will prepare it on any server connection."""

    client_name: str
    server_name: str
    query: str
    parse: bytes  # the Parse message under server_name, ready to send
    classification: Classification
    rest: bytes = b""  # the Parse body after the query: parameter types
    context: str = ""  # the settings it is parsed under (sessionstate.parse_context)


def prepared_statement(
    name: str, query: str, rest: bytes, c: Classification, context: str, encoding: str
) -> PreparedStatement:
    """Client statement `name` as it is prepared on servers under the settings `context`."""
    server_name = server_statement_name(query, rest, context)
    parse = make_parse(server_name, query, rest, encoding)
    return PreparedStatement(name, server_name, query, parse, c, rest, context)


def reparsed(stmt: PreparedStatement, context: str, encoding: str) -> PreparedStatement:
    """`stmt` as it is parsed again under the settings `context` (itself if they are its own).

    A statement is parsed only under the name of the settings it is parsed under: when the
    client's settings changed since it prepared the statement (or its unit changed them), parsing
    it again gives another statement, named after the settings of now. Parsed under its old
    shared name, it would be handed to other clients folded under settings that are not theirs.
    """
    if context == stmt.context:
        return stmt
    return prepared_statement(
        stmt.client_name, stmt.query, stmt.rest, stmt.classification, context, encoding
    )


def _frame(kind: bytes, body: bytes) -> bytes:
    return _HEADER.pack(kind, len(body) + 4) + body


def parse_fields(frame: Frame, encoding: str = "utf-8") -> tuple[str, str, bytes]:
    """(statement name, query text, the rest of the body) of a Parse message, decoded in the
    client's encoding (bytes it does not hold are kept as they are, see `make_parse`)."""
    data = frame.data
    name_end = data.find(b"\0", 5)
    query_end = data.find(b"\0", name_end + 1) if name_end >= 0 else -1
    if query_end < 0:
        raise ProtocolError("malformed Parse message")
    return (
        data[5:name_end].decode(encoding, "surrogateescape"),
        data[name_end + 1 : query_end].decode(encoding, "surrogateescape"),
        data[query_end + 1 :],
    )


def server_statement_name(query: str, rest: bytes, context: str = "") -> str:
    """The shared server-side name of a statement.

    A hash of its text, its parameter types and the settings it is parsed under (`context`:
    search_path, DateStyle, TimeZone, ...): the same text names other tables under another
    search_path, and folds '03/04/2024'::date to another day under another DateStyle, so those
    must not share a statement.
    """
    key = query.encode(errors="surrogateescape") + b"\0" + rest + b"\0" + context.encode()
    return f"dbb_{hashlib.blake2b(key, digest_size=10).hexdigest()}"


def make_parse(server_name: str, query: str, rest: bytes, encoding: str = "utf-8") -> bytes:
    """A Parse message for `query` under `server_name`, encoded as the client sent it."""
    text = query.encode(encoding, "surrogateescape")
    return _frame(b"P", server_name.encode() + b"\0" + text + b"\0" + rest)


def bind_statement(frame: Frame) -> tuple[int, int]:
    """Byte offsets (in frame.data) of the statement name in a Bind message: (start, end)."""
    data = frame.data
    portal_end = data.find(b"\0", 5)
    if portal_end < 0:
        raise ProtocolError("malformed Bind message")
    name_end = data.find(b"\0", portal_end + 1)
    if name_end < 0:
        raise ProtocolError("malformed Bind message")
    return portal_end + 1, name_end


def target_name(frame: Frame) -> tuple[bytes, str]:
    """(kind byte, name) of a Describe or Close message."""
    data = frame.data
    if len(data) < 7:
        raise ProtocolError("malformed Describe/Close message")
    end = data.find(b"\0", 6)
    if end < 0:
        raise ProtocolError("malformed Describe/Close message")
    try:
        return data[5:6], data[6:end].decode()
    except UnicodeDecodeError:
        raise ProtocolError("statement name is not valid UTF-8") from None


def with_name(frame: Frame, start: int, end: int, name: str) -> bytes:
    """frame.data with the bytes [start, end) replaced by `name`, length fixed up."""
    data = frame.data
    body = data[5:start] + name.encode() + data[end:]
    return _frame(frame.type, body)


def rename_target(frame: Frame, name: str) -> bytes:
    """A Describe/Close message naming `name` instead."""
    return _frame(frame.type, frame.data[5:6] + name.encode() + b"\0")


class StatementCache:
    """The server-side statements one server connection holds, least recently used first."""

    __slots__ = ("_names", "capacity")

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._names: collections.OrderedDict[str, None] = collections.OrderedDict()

    def __contains__(self, name: object) -> bool:
        return name in self._names

    def __len__(self) -> int:
        return len(self._names)

    def touch(self, name: str) -> bool:
        """Mark `name` used; True if the connection has it."""
        if name in self._names:
            self._names.move_to_end(name)
            return True
        return False

    def add(self, name: str) -> list[str]:
        """Record `name`; return the names evicted to stay within capacity (to Close them)."""
        self._names[name] = None
        self._names.move_to_end(name)
        evicted = []
        while self.capacity and len(self._names) > self.capacity:
            old, _ = self._names.popitem(last=False)
            evicted.append(old)
        return evicted

    def keep(self, name: str) -> None:
        """`name` is still there after all (its Close did not run): record it again, least
        recently used, so that it is the next one evicted."""
        self._names[name] = None
        self._names.move_to_end(name, last=False)

    def discard(self, name: str) -> None:
        """Forget `name` (its Parse failed, or it was closed)."""
        self._names.pop(name, None)

    def names(self) -> list[str]:
        """The statements held, least recently used first."""
        return list(self._names)

    def clear(self) -> None:
        """The server dropped all its statements (DISCARD ALL, DEALLOCATE ALL)."""
        self._names.clear()


def close_statement(name: str) -> bytes:
    """A Close message for a server-side statement."""
    return _frame(b"C", b"S" + name.encode() + b"\0")
