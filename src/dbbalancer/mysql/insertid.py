"""Whose LAST_INSERT_ID() a server connection holds, and when a client's must be given to it
first (transaction pooling, issue #12).

MariaDB and MySQL keep the last insert id per session: `LAST_INSERT_ID()`, `@@identity` and
`@@last_insert_id` answer it; an insert that generates an id sets it (its OK packet carries the
id), so do `LAST_INSERT_ID(expr)` (an OK packet carries it only from an UPDATE or INSERT that
evaluated it) and a stored procedure; COM_RESET_CONNECTION sets it to 0 ("Information
Functions", LAST_INSERT_ID). Under transaction pooling a connection goes back to the pool
without a reset when its client changed no session state, so it keeps that client's id, and a
client's next statement may run on any connection.

Each `ServerConnection` carries a `Holder` in `conn.insert_id`, what the proxy knows of the id
its session holds:

* `(None, n)`: exactly n (a new or reset connection: 0; after `DO LAST_INSERT_ID(n)`);
* `(owner, n)`: the id of the client whose token is `owner` (`ClientInsertId.owner`); the client
  had it as n when it last ran there. A statement of that client may have set it without an
  OK packet saying so: right for that client, for nobody else;
* None: not known (a client's statement may have set it while the connection held another
  client's id).

When a statement that reads the id (or may set it unseen, see `IdUse`) is written to a
connection, the engine gives it the client's id first (`DO LAST_INSERT_ID(n)`, n the id the
client's OK packets carried, 0 when none did) unless `holds` says it has it already: whatever
way the statement reached the connection (routed on its own, in a transaction, on a pinned
connection, behind a COM_STMT_CLOSE). An id set unseen is read back at the end of the unit.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping
from typing import Final

from dbbalancer.core.statement import Classification, Reason, StatementKind
from dbbalancer.mysql.codec import CommandByte

__all__ = [
    "FRESH",
    "READ_BACK_SQL",
    "ClientInsertId",
    "Holder",
    "IdUse",
    "after",
    "command_use",
    "holds",
    "restore_sql",
    "statement_use",
]

Holder = tuple[object | None, int] | None
FRESH: Final[Holder] = (None, 0)
READ_BACK_SQL: Final = "SELECT LAST_INSERT_ID()"


class IdUse(enum.Enum):
    """What a client command does with the session's last insert id."""

    NONE = "none"  # neither reads nor sets it (a read, PING, COM_STMT_PREPARE, COM_STMT_CLOSE)
    MAY_SET = "may_set"  # a write: when an insert sets the id, its OK packet says so
    READS = "reads"  # LAST_INSERT_ID(), @@identity; a procedure or an SQL EXECUTE may
    SETS_UNSEEN = "sets_unseen"  # LAST_INSERT_ID(expr), a multi-statement write: read back
    RESETS = "resets"  # COM_RESET_CONNECTION: 0

    @property
    def needs_id(self) -> bool:
        """True when the connection must hold the client's id before the command runs."""
        return self is IdUse.READS or self is IdUse.SETS_UNSEEN


_WITH_ARGUMENT: Final = re.compile(r"last_insert_id\s*\(\s*[^\s)]", re.IGNORECASE)
_ID_VARIABLE: Final = re.compile(
    r"@@(?:session\s*\.\s*)?(?:identity|last_insert_id)\b", re.IGNORECASE
)
# Looked up once: `statement_use` runs for every statement sent.
_NONE: Final = IdUse.NONE
_MAY_SET: Final = IdUse.MAY_SET
_READS: Final = IdUse.READS
_SETS_UNSEEN: Final = IdUse.SETS_UNSEEN
# Statements that run others the classifier does not see: a procedure, an SQL prepared one.
_CALL: Final = Reason.CALL_OR_DO
_EXECUTE: Final = Reason.SQL_EXECUTE
_LAST_RESULT: Final = Reason.LAST_RESULT

Statements = Mapping[int, tuple[Classification, str] | None]


def statement_use(c: Classification | None, sql: bytes | str) -> IdUse:
    """What a statement (classified `c`; None: not known) does with the id. `sql` is its
    text, read only when `c` says it asks about the last statement."""
    if c is None:
        return _READS
    if c.parts:
        # Only the last statement's OK packet reaches the proxy's parser: an id set before it
        # goes unseen.
        uses = {statement_use(part, sql) for part in c.parts}
        if _MAY_SET in uses or _SETS_UNSEEN in uses:
            return _SETS_UNSEEN
        return _READS if _READS in uses else _NONE
    reason = c.reason
    if c.uses_last_result:  # LAST_INSERT_ID() always sets it
        text = sql.decode("utf-8", "replace") if isinstance(sql, bytes) else sql
        if "last_insert_id" in c.functions:
            return _SETS_UNSEEN if _WITH_ARGUMENT.search(text) else _READS
        if _ID_VARIABLE.search(text):
            return _READS
        if reason is _LAST_RESULT:
            return _NONE  # ROW_COUNT(), SHOW WARNINGS: not read-only only for where they run
    if reason is _CALL or reason is _EXECUTE:
        return _READS
    return _NONE if c.read_only else _MAY_SET


def command_use(payload: bytes, c: Classification | None, statements: Statements) -> IdUse:
    """What a client command does with the id: a COM_QUERY (classified `c`), a
    COM_STMT_EXECUTE (by its prepared statement's text in `statements`), COM_RESET_CONNECTION;
    the other commands run no SQL of the client's."""
    code = payload[0]
    if code == CommandByte.QUERY:
        return statement_use(c, payload)
    if code == CommandByte.STMT_EXECUTE:
        found = (
            statements.get(int.from_bytes(payload[1:5], "little")) if len(payload) >= 5 else None
        )
        return statement_use(None, "") if found is None else statement_use(found[0], found[1])
    if code == CommandByte.RESET_CONNECTION:
        return IdUse.RESETS
    return IdUse.NONE


def holds(holder: Holder, owner: object, value: int) -> bool:
    """True when a connection holding `holder` answers LAST_INSERT_ID() as `value`, the id of
    the client whose token is `owner`."""
    return holder is not None and holder[1] == value and (holder[0] is None or holder[0] is owner)


def after(
    holder: Holder, use: IdUse, *, owner: object, value: int, inserted: int, held: bool, ok: bool
) -> Holder:
    """What a connection holds once a command of `owner`'s was answered: `value` is the
    client's id now, `inserted` the id the answer's OK packet carried (0: none), `held` says
    the connection held the client's id when the command was sent, `ok` that it succeeded."""
    if use is IdUse.RESETS and ok:
        return FRESH
    if inserted or held:
        return (owner, value)
    if use is IdUse.NONE or (use is IdUse.RESETS and not ok):
        return holder
    return None  # a write ran on another client's id: set, or not


def restore_sql(value: int) -> str:
    """The statement that gives a connection the id `value`."""
    return f"DO LAST_INSERT_ID({int(value)})"


class ClientInsertId:
    """One client's side of it: its token, what the command in flight does with the id, a
    restore running before that command, a connection whose id it set unseen.

    And the rest of "the previous statement" (ROW_COUNT(), FOUND_ROWS(), warnings): a
    connection another client used last (`conn.last_user`) reports that client's; `inherited`
    holds while this client has run only session settings there, and a question about the
    previous statement then has the connection reset first (`asks_inherited`)."""

    def __init__(self) -> None:
        self.owner = object()
        self.sent: tuple[IdUse, bool] | None = None
        self.restoring = False
        self.unread: object | None = None  # the connection to read the id back from
        self.inherited = False

    def user_after(
        self, payload: bytes, c: Classification | None, last_user: object | None
    ) -> object | None:
        """Whose previous statement a connection reports once this client's command `payload`
        (its statement classified `c`) was answered: a statement other than a session setting
        makes it this client's; other commands (a prepare, a ping) and session settings leave
        found rows and warnings as they were."""
        return self if _takes_over(payload, c) else last_user

    def asks_inherited(
        self, payload: bytes, c: Classification | None, in_transaction: bool
    ) -> bool:
        """Whether the command `payload` (its statement classified `c`) asks about a previous
        statement that was another client's; one that takes over (`user_after`) makes the
        next answers the client's own."""
        inherited = self.inherited
        if _takes_over(payload, c):
            self.inherited = False
        return inherited and c is not None and c.uses_last_result and not in_transaction

    def before_send(
        self,
        payload: bytes,
        c: Classification | None,
        statements: Statements,
        holder: Holder,
        value: int,
    ) -> bool:
        """Note the command being written to a connection holding `holder` (`value`: the
        client's id); True when `restore_sql(value)` must run there first."""
        use = command_use(payload, c, statements)
        held = holds(holder, self.owner, value)
        self.sent = (use, held or use.needs_id)
        return use.needs_id and not held

    def answered(
        self, conn: object, holder: Holder, *, value: int, inserted: int, ok: bool
    ) -> Holder:
        """What `conn` (holding `holder`) holds once the command noted was answered
        (`inserted`: the id of its OK packet, 0 for none); remembers to read the id back from
        it when the command set it unseen."""
        sent, self.sent = self.sent, None
        if sent is None:
            return holder
        use, held = sent
        if use is IdUse.SETS_UNSEEN and not inserted:
            self.unread = conn
        value = 0 if use is IdUse.RESETS and ok else value
        return after(
            holder, use, owner=self.owner, value=value, inserted=inserted, held=held, ok=ok
        )


def _takes_over(payload: bytes, c: Classification | None) -> bool:
    """A COM_QUERY or COM_STMT_EXECUTE of a statement that is not a session setting: what
    ROW_COUNT(), FOUND_ROWS() and warnings report afterwards is its own."""
    code = payload[0] if payload else -1
    if code != CommandByte.QUERY and code != CommandByte.STMT_EXECUTE:
        return False
    return c is None or c.kind is not StatementKind.SESSION
