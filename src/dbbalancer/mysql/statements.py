"""Binary-protocol prepared statements that survive transaction pooling (issue #12). Sans-IO.

A client's COM_STMT_PREPARE gets a statement id from the proxy (one counter per client
session), and the proxy keeps, per server connection, the statements it holds: which text (in
which session context) is which server statement id. A COM_STMT_EXECUTE,
COM_STMT_SEND_LONG_DATA, COM_STMT_RESET or COM_STMT_FETCH has its statement id rewritten to the
id of the connection its unit runs on; a connection that lacks the statement gets a hidden
COM_STMT_PREPARE first (`mysql/remap.py` sends it). This is what PgBouncer (1.21+) does for
PostgreSQL's named statements and ProxySQL for MySQL's ("Prepared Statements" of the MySQL
Source Code Documentation: COM_STMT_PREPARE_OK, COM_STMT_EXECUTE, COM_STMT_SEND_LONG_DATA,
COM_STMT_CLOSE, COM_STMT_RESET, COM_STMT_FETCH).

* **Keys.** A server statement is known by (context, text, owner): the context is the session
  state the text was prepared under (current database, character set, settings: a statement
  resolves its tables in the database current at prepare time and is parsed under its
  `sql_mode` and character set), so clients share a server statement only when it means the
  same for both. `owner` is 0 for a shared statement; a statement that holds per-statement
  server state (an open cursor, parameter data sent with COM_STMT_SEND_LONG_DATA) belongs to
  one client statement while it does, and another client statement of the same text then gets
  a private one.
* **The cap.** Each connection keeps at most `max_prepared_statements` (the least recently used
  beyond are closed with COM_STMT_CLOSE, which has no response), so the server's global
  `max_prepared_stmt_count` is never reached by statements nobody uses: the count on a server
  stays within cap x connections.
* **References.** `StatementRegistry` counts the client statements of each text; when the last
  one closes (COM_STMT_CLOSE, the client leaves or resets its session), every connection's
  statement of that text is closed, at once on a connection with no command in flight, else
  before the next command the proxy sends it.
* **Parameter types.** A client sends the parameter types with the first COM_STMT_EXECUTE only
  (new-params-bound-flag = 1) and the server keeps them with its statement; the proxy remembers
  them per client statement and puts them back into every execute that has none, since the
  server statement may be new or shared.

`ClientStatements.plan` turns one client command into a `Plan`: send this payload, prepare
first, or answer the client without a server (COM_STMT_CLOSE; a statement id the client does
not hold; a COM_STMT_RESET or COM_STMT_FETCH with no server state behind it).
"""

from __future__ import annotations

import collections
import enum
import itertools
import weakref
from dataclasses import dataclass
from typing import Final

from dbbalancer.mysql.codec import CommandByte, ErrPacket, OkPacket, ServerStatus

__all__ = [
    "LAST_PREPARED",
    "STATEMENT_COMMANDS",
    "ClientStatement",
    "ClientStatements",
    "ConnectionStatements",
    "Context",
    "Plan",
    "ServerStatement",
    "StatementRegistry",
    "Step",
    "execute_payload",
    "renumbered",
    "statement_id",
    "with_statement_id",
]

# MariaDB: a COM_STMT_* statement id of -1 names the statement prepared last (10.2+).
LAST_PREPARED: Final = 0xFFFFFFFF
# Commands that name a statement by id, after their command byte.
STATEMENT_COMMANDS: Final = frozenset(
    {
        CommandByte.STMT_EXECUTE,
        CommandByte.STMT_SEND_LONG_DATA,
        CommandByte.STMT_CLOSE,
        CommandByte.STMT_RESET,
        CommandByte.STMT_FETCH,
    }
)
# The function names a server puts in ER_UNKNOWN_STMT_HANDLER.
_FUNCTIONS: Final[dict[int, str]] = {
    CommandByte.STMT_EXECUTE: "mysqld_stmt_execute",
    CommandByte.STMT_SEND_LONG_DATA: "mysqld_stmt_send_long_data",
    CommandByte.STMT_RESET: "mysqld_stmt_reset",
    CommandByte.STMT_FETCH: "mysqld_stmt_fetch",
    CommandByte.STMT_CLOSE: "mysqld_stmt_close",
}
ER_UNKNOWN_STMT_HANDLER: Final = 1243
ER_STMT_HAS_NO_OPEN_CURSOR: Final = 1421
ER_NEED_REPREPARE: Final = 1615
_OPEN_CURSOR_FLAGS: Final = 0x07  # CURSOR_TYPE_READ_ONLY | FOR_UPDATE | SCROLLABLE

# The session state a statement is prepared under: (database, SET NAMES, settings).
Context = tuple[str, str, tuple[tuple[str, str], ...]]
# A server statement: (context, text, owner token; 0 = shared).
Key = tuple[Context, bytes, int]
# What client statements hold a reference to: (text, owner token).
Ref = tuple[bytes, int]


def statement_id(payload: bytes) -> int:
    """The statement id of a COM_STMT_* command (payload[1:5]); -1 if the packet is short."""
    if len(payload) < 5:
        return -1
    return int.from_bytes(payload[1:5], "little")


def with_statement_id(payload: bytes, statement: int) -> bytes:
    """`payload` (a COM_STMT_* command, or COM_STMT_PREPARE_OK) naming `statement` instead."""
    return payload[:1] + statement.to_bytes(4, "little") + payload[5:]


def renumbered(payload: bytes, client_id: int) -> bytes:
    """The first packet of a COM_STMT_PREPARE response as the client must see it: a
    COM_STMT_PREPARE_OK names the client's statement id; an ERR is left alone."""
    if payload[:1] == b"\x00" and len(payload) >= 5:
        return with_statement_id(payload, client_id)
    return payload


def execute_payload(payload: bytes, server_id: int, statement: ClientStatement) -> bytes:
    """A COM_STMT_EXECUTE for server statement `server_id`, with the parameter types.

    Layout ("COM_STMT_EXECUTE"): command, statement id (4), flags (1), iteration count (4),
    then, with parameters, the NULL bitmap ((n + 7) / 8 bytes), new-params-bound-flag (1), the
    types (2 per parameter) when that flag is 1, and the values. Types sent are remembered;
    an execute without them gets the remembered ones. A payload too short for its layout is
    passed on for the server to refuse.
    """
    n = statement.params
    head = with_statement_id(payload, server_id)
    if n == 0:
        return head
    flag_at = 10 + (n + 7) // 8
    if len(payload) <= flag_at:
        return head
    if payload[flag_at] == 1:
        types = payload[flag_at + 1 : flag_at + 1 + 2 * n]
        if len(types) == 2 * n:
            statement.types = types
        return head
    types_known = statement.types
    if types_known is None:
        return head
    return head[:flag_at] + b"\x01" + types_known + head[flag_at + 1 :]


def opens_cursor(payload: bytes) -> bool:
    """True if a COM_STMT_EXECUTE asks for a cursor (rows then come with COM_STMT_FETCH)."""
    return len(payload) > 5 and bool(payload[5] & _OPEN_CURSOR_FLAGS)


@dataclass(slots=True)
class ServerStatement:
    """A statement one server connection holds."""

    server_id: int
    params: int
    columns: int
    owner: int = 0  # the token of the client statement whose server state it holds (0: none)


@dataclass(slots=True)
class ClientStatement:
    """A statement as the client knows it: its id, text and the metadata it was given."""

    id: int
    token: int  # unique in the registry: names its private server statements
    text: bytes
    params: int
    columns: int
    types: bytes | None = None  # parameter types of the last execute that sent them
    cursor: bool = False  # an execute opened a cursor that is not exhausted or closed
    long_data: bool = False  # parameter data was sent ahead of the next execute
    key: Key | None = None  # the server statement its last command went to

    @property
    def holds_state(self) -> bool:
        """True while its server statement holds state of its own (its client is pinned)."""
        return self.cursor or self.long_data


# The attribute of a connection that holds its statements (StatementRegistry.of).
_ATTRIBUTE: Final = "prepared_statements"


class StatementRegistry:
    """Per balancer: every connection's statements and how many client statements use each
    text (when none does, its server statements are closed everywhere)."""

    def __init__(self) -> None:
        self._refs: collections.Counter[Ref] = collections.Counter()
        self._holders: dict[Ref, weakref.WeakSet[ConnectionStatements]] = {}
        self._tokens = itertools.count(1)

    def of(self, conn: object, capacity: int) -> ConnectionStatements:
        """The statements `conn` holds (created empty, capped at `capacity`, on first use).

        Kept on the connection (its `prepared_statements` attribute), never in a weak
        mapping: a mypyc-compiled ServerConnection accepts weak references but does not
        clear them when it is freed, and a dangling one crashes the garbage collector."""
        cache = self.known(conn)
        if cache is None:
            cache = ConnectionStatements(capacity, self, conn)
            setattr(conn, _ATTRIBUTE, cache)
        return cache

    def known(self, conn: object) -> ConnectionStatements | None:
        """The statements `conn` holds, if it ever held any."""
        cache = getattr(conn, _ATTRIBUTE, None)
        return cache if isinstance(cache, ConnectionStatements) else None

    def forget_connection(self, conn: object) -> None:
        """`conn` lost all its statements (COM_RESET_CONNECTION)."""
        cache = self.known(conn)
        if cache is not None:
            cache.clear()

    def token(self) -> int:
        """A new client statement token."""
        return next(self._tokens)

    def retain(self, ref: Ref) -> None:
        """A client statement uses `ref`."""
        self._refs[ref] += 1

    def release(self, ref: Ref) -> list[ConnectionStatements]:
        """A client statement no longer uses `ref`: when none does, its server statements are
        dropped from every connection; the connections that have statements to close."""
        left = self._refs[ref] - 1
        if left > 0:
            self._refs[ref] = left
            return []
        self._refs.pop(ref, None)
        holders = self._holders.pop(ref, None)
        if not holders:
            return []
        return [cache for cache in list(holders) if cache.drop_ref(ref)]

    def referenced(self, ref: Ref) -> bool:
        """True while a client statement uses `ref`."""
        return self._refs.get(ref, 0) > 0

    def _held(self, ref: Ref, cache: ConnectionStatements) -> None:
        holders = self._holders.get(ref)
        if holders is None:
            holders = self._holders[ref] = weakref.WeakSet()
        holders.add(cache)

    def _unheld(self, ref: Ref, cache: ConnectionStatements) -> None:
        holders = self._holders.get(ref)
        if holders is not None:
            holders.discard(cache)
            if not holders:
                del self._holders[ref]

    @property
    def referenced_texts(self) -> int:
        """How many (text, owner) pairs client statements use (admin output, tests)."""
        return len(self._refs)


class ConnectionStatements:
    """The statements one server connection holds, least recently used first, at most
    `capacity` (statements that hold per-statement state are never evicted). Statements
    dropped wait in `closing` until the proxy sends their COM_STMT_CLOSE."""

    __slots__ = (
        "__weakref__",
        "_by_ref",
        "_conn",
        "_entries",
        "_registry",
        "capacity",
        "closing",
    )

    def __init__(
        self, capacity: int, registry: StatementRegistry, conn: object | None = None
    ) -> None:
        self.capacity = capacity
        self._registry = registry
        self._conn = conn
        self._entries: collections.OrderedDict[Key, ServerStatement] = collections.OrderedDict()
        self._by_ref: dict[Ref, set[Key]] = {}
        self.closing: list[int] = []

    def __len__(self) -> int:
        return len(self._entries)

    def connection(self) -> object | None:
        """The server connection these statements are on (None once it is gone)."""
        return self._conn

    def server_ids(self) -> list[int]:
        """The server statement ids held, least recently used first (tests)."""
        return [entry.server_id for entry in self._entries.values()]

    def find(
        self, context: Context, statement: ClientStatement
    ) -> tuple[Key, ServerStatement | None]:
        """The server statement `statement` uses here under `context` (marked used), or None
        with the key to prepare it under: the shared one unless another client statement's
        state holds that, then a private one."""
        shared: Key = (context, statement.text, 0)
        entry = self._entries.get(shared)
        if entry is not None and (entry.owner == 0 or entry.owner == statement.token):
            self._entries.move_to_end(shared)
            return shared, entry
        if entry is None:
            return shared, None
        private: Key = (context, statement.text, statement.token)
        entry = self._entries.get(private)
        if entry is not None:
            self._entries.move_to_end(private)
        return private, entry

    def get(self, key: Key) -> ServerStatement | None:
        """The statement under `key`, not marked used."""
        return self._entries.get(key)

    def add(self, key: Key, entry: ServerStatement) -> None:
        """Record a statement the server prepared. One already there under `key` is kept and
        the new one closed (the same client prepared a text twice); the least recently used
        statements beyond the capacity are closed."""
        if key in self._entries:
            self.closing.append(entry.server_id)
            self._entries.move_to_end(key)
            return
        self._entries[key] = entry
        ref: Ref = (key[1], key[2])
        keys = self._by_ref.get(ref)
        if keys is None:
            keys = self._by_ref[ref] = set()
            self._registry._held(ref, self)
        keys.add(key)
        if not self._registry.referenced(ref):
            self.remove(key)  # its client statement is gone already
            return
        self._evict(key)

    def _evict(self, added: Key) -> None:
        if self.capacity <= 0:
            return
        excess = len(self._entries) - self.capacity
        if excess <= 0:
            return
        victims: list[Key] = []
        for key, entry in self._entries.items():
            if entry.owner == 0 and key != added:  # the statement added is about to run
                victims.append(key)
                if len(victims) == excess:
                    break
        for key in victims:
            self.remove(key)

    def remove(self, key: Key) -> None:
        """Drop the statement under `key` and queue its COM_STMT_CLOSE."""
        entry = self._entries.pop(key, None)
        if entry is None:
            return
        self.closing.append(entry.server_id)
        ref: Ref = (key[1], key[2])
        keys = self._by_ref.get(ref)
        if keys is not None:
            keys.discard(key)
            if not keys:
                del self._by_ref[ref]
                self._registry._unheld(ref, self)

    def forget(self, key: Key) -> None:
        """The server no longer has the statement under `key` (it said so): drop it without
        closing it."""
        entry = self._entries.get(key)
        if entry is not None:
            self.remove(key)
            self.closing.remove(entry.server_id)

    def drop_ref(self, ref: Ref) -> bool:
        """No client statement uses `ref` any more: drop its statements here. True if any."""
        keys = self._by_ref.pop(ref, None)
        if not keys:
            return False
        for key in keys:
            entry = self._entries.pop(key, None)
            if entry is not None:
                self.closing.append(entry.server_id)
        return True

    def take_closing(self) -> list[int]:
        """The server statement ids to close now (the caller sends COM_STMT_CLOSE for each)."""
        closing, self.closing = self.closing, []
        return closing

    def clear(self) -> None:
        """The server dropped every statement (COM_RESET_CONNECTION): nothing left to close."""
        for ref in self._by_ref:
            self._registry._unheld(ref, self)
        self._by_ref.clear()
        self._entries.clear()
        self.closing.clear()


class Step(enum.Enum):
    """What to do with a client's statement command."""

    SEND = "send"  # send `payload` to the connection
    PREPARE = "prepare"  # prepare `statement` under `key` (hidden), then plan again
    ANSWER = "answer"  # answer the client with `answer` (None: nothing), send nothing
    ROUTE = "route"  # it needs a server connection (no connection is held)


@dataclass(frozen=True, slots=True)
class Plan:
    """A decision about one client command, with its reason."""

    step: Step
    reason: str
    payload: bytes = b""
    answer: OkPacket | ErrPacket | None = None
    statement: ClientStatement | None = None
    key: Key | None = None


def _unknown(code: int, number: int) -> ErrPacket:
    return ErrPacket(
        ER_UNKNOWN_STMT_HANDLER,
        "HY000",
        f"Unknown prepared statement handler ({number}) given to {_FUNCTIONS.get(code, '?')}",
    )


class ClientStatements:
    """One client's binary-protocol statements (see the module docstring)."""

    def __init__(self, registry: StatementRegistry) -> None:
        self.registry = registry
        self.by_id: dict[int, ClientStatement] = {}
        self._next_id = 1
        self.last_prepared = 0  # the id -1 stands for (0: none)
        self.preparing: tuple[int, bytes] | None = None  # (id given, text) of a prepare sent

    def __len__(self) -> int:
        return len(self.by_id)

    # -- the client's commands ------------------------------------------------------------

    def begin_prepare(self, text: bytes) -> int:
        """A COM_STMT_PREPARE is sent: the id its COM_STMT_PREPARE_OK will carry."""
        number = self._next_id
        self._next_id = number + 1 if number < LAST_PREPARED - 1 else 1
        self.preparing = (number, text)
        return number

    def prepared(self, params: int, columns: int) -> ClientStatement | None:
        """The prepare sent succeeded: the new client statement (None if none was sent)."""
        preparing, self.preparing = self.preparing, None
        if preparing is None:
            return None
        number, text = preparing
        statement = ClientStatement(number, self.registry.token(), text, params, columns)
        self.by_id[number] = statement
        self.registry.retain((text, 0))
        self.registry.retain((text, statement.token))
        self.last_prepared = number
        return statement

    def failed(self) -> None:
        """The prepare sent failed (ERR): no statement, and -1 names none."""
        self.preparing = None
        self.last_prepared = 0

    def resolve(self, payload: bytes) -> bytes:
        """`payload` with a statement id of -1 (MariaDB: the last prepared) made explicit."""
        if statement_id(payload) == LAST_PREPARED and self.last_prepared:
            return with_statement_id(payload, self.last_prepared)
        return payload

    def close(self, number: int, cache: ConnectionStatements | None) -> list[ConnectionStatements]:
        """COM_STMT_CLOSE: forget the statement; a server statement holding its state on the
        connection held (`cache`) is closed; the connections with statements to close."""
        statement = self.by_id.pop(number, None)
        if statement is None:
            return []
        if self.last_prepared == number:
            self.last_prepared = 0
        return self._release(statement, cache)

    def _release(
        self, statement: ClientStatement, cache: ConnectionStatements | None
    ) -> list[ConnectionStatements]:
        touched: list[ConnectionStatements] = []
        key = statement.key
        if cache is not None and key is not None and statement.holds_state:
            entry = cache.get(key)
            if entry is not None and entry.owner == statement.token:
                # Its cursor or parameter data must not reach another statement's execute.
                cache.remove(key)
                touched.append(cache)
        statement.cursor = statement.long_data = False
        touched += self.registry.release((statement.text, 0))
        touched += self.registry.release((statement.text, statement.token))
        return touched

    def forget_all(self, cache: ConnectionStatements | None) -> list[ConnectionStatements]:
        """The client left or reset its session: every statement goes."""
        touched: list[ConnectionStatements] = []
        for statement in list(self.by_id.values()):
            touched += self._release(statement, cache)
        self.by_id.clear()
        self.last_prepared = 0
        self.preparing = None
        return touched

    def plan(self, payload: bytes, cache: ConnectionStatements | None, context: Context) -> Plan:
        """What to do with a COM_STMT_* command (not COM_STMT_PREPARE) on the connection whose
        statements are `cache` (None: no connection is held)."""
        code = payload[0]
        number = statement_id(payload)
        statement = self.by_id.get(number)
        if statement is None:
            if code == CommandByte.STMT_CLOSE or code == CommandByte.STMT_SEND_LONG_DATA:
                # No response in the protocol: a server would note the error for the execute.
                return Plan(Step.ANSWER, "unknown statement: nothing to do")
            return Plan(Step.ANSWER, "unknown statement", answer=_unknown(code, number))
        if code == CommandByte.STMT_CLOSE:
            return Plan(Step.ANSWER, "closed by the proxy", statement=statement)
        if code == CommandByte.STMT_RESET and not statement.holds_state:
            status = ServerStatus.AUTOCOMMIT
            return Plan(Step.ANSWER, "nothing to reset", answer=OkPacket(status_flags=status))
        if code == CommandByte.STMT_FETCH and not statement.cursor:
            err = ErrPacket(
                ER_STMT_HAS_NO_OPEN_CURSOR, "HY000", f"The statement ({number}) has no open cursor"
            )
            return Plan(Step.ANSWER, "no open cursor", answer=err)
        if cache is None:
            return Plan(Step.ROUTE, "needs a connection", statement=statement)
        key, entry = cache.find(context, statement)
        if entry is None:
            if statement.holds_state:
                # Its cursor or parameter data live on a statement this connection lost.
                err = ErrPacket(
                    ER_NEED_REPREPARE, "HY000", "Prepared statement needs to be re-prepared"
                )
                return Plan(Step.ANSWER, "server state lost", answer=err, statement=statement)
            return Plan(Step.PREPARE, "not prepared here", statement=statement, key=key)
        if entry.params != statement.params or entry.columns != statement.columns:
            err = ErrPacket(
                ER_NEED_REPREPARE, "HY000", "Prepared statement needs to be re-prepared"
            )
            return Plan(Step.ANSWER, "metadata changed", answer=err, statement=statement)
        statement.key = key
        if code == CommandByte.STMT_EXECUTE:
            out = execute_payload(payload, entry.server_id, statement)
        else:
            out = with_statement_id(payload, entry.server_id)
        if code == CommandByte.STMT_SEND_LONG_DATA:
            statement.long_data = True
            entry.owner = statement.token
        return Plan(Step.SEND, "mapped", payload=out, statement=statement, key=key)

    # -- what the server answered -----------------------------------------------------------

    def answered(
        self,
        payload: bytes,
        cache: ConnectionStatements,
        *,
        status: int,
        errno: int | None,
    ) -> ClientStatement | None:
        """The server answered a mapped COM_STMT_EXECUTE, COM_STMT_FETCH or COM_STMT_RESET
        (`status`: its last status flags; `errno`: its ERR, if any): follow the statement's
        cursor and parameter data. Returns the statement, whose pins may have changed."""
        code = payload[0]
        statement = self.by_id.get(statement_id(payload))
        if statement is None or statement.key is None:
            return None
        key = statement.key
        if errno == ER_UNKNOWN_STMT_HANDLER:
            cache.forget(key)  # the server lost it: prepare it again next time
            statement.cursor = statement.long_data = False
            return statement
        if code == CommandByte.STMT_EXECUTE:
            # The server consumed the parameter data; a new execute closes an open cursor.
            statement.long_data = False
            cursor = bool(status & ServerStatus.CURSOR_EXISTS)
            statement.cursor = errno is None and opens_cursor(payload) and cursor
        elif code == CommandByte.STMT_FETCH:
            if errno == ER_STMT_HAS_NO_OPEN_CURSOR or status & ServerStatus.LAST_ROW_SENT:
                statement.cursor = False
        elif code == CommandByte.STMT_RESET and errno is None:
            statement.cursor = statement.long_data = False
        entry = cache.get(key)
        if entry is not None:
            entry.owner = statement.token if statement.holds_state else 0
        return statement
