"""Protocol-neutral description of what one SQL string does.

A protocol's classifier (``postgres/classify.py``, later ``mysql/classify.py``) turns query text
into a :class:`Classification`; the router and the pooler only ever look at these values.  The
shape follows the "decisions are values with reasons" rule: every classification says *why*
(:class:`Reason`), so a route, a log line or a metric label can carry it.

Nothing in this module knows a wire protocol or a SQL dialect.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class StatementKind(enum.Enum):
    """Routing class of a statement string.

    ``READ`` may run on a replica; ``WRITE`` must run on the primary; ``TRANSACTION`` is
    transaction control (it follows the transaction); ``SESSION`` changes session state (settings,
    prepared statements, cursors, listeners) that the pooler must track.  ``UNKNOWN`` means the
    answer depends on state the classifier cannot see (SQL-level ``EXECUTE``): route it as a
    write unless the caller knows better.
    """

    READ = "read"
    WRITE = "write"
    TRANSACTION = "transaction"
    SESSION = "session"
    UNKNOWN = "unknown"


class Reason(enum.Enum):
    """Why a statement got its kind.  Values are stable strings for logs and metric labels."""

    EMPTY = "empty"
    PLAIN_SELECT = "plain_select"
    SHOW = "show"
    EXPLAIN = "explain"
    CURSOR = "cursor"
    COPY_TO = "copy_to"
    SELECT_FOR_LOCK = "select_for_lock"
    WRITING_CTE = "writing_cte"
    SELECT_INTO = "select_into"
    SEQUENCE_FUNCTION = "sequence_function"
    PRIMARY_ONLY_FUNCTION = "primary_only_function"
    ADVISORY_LOCK = "advisory_lock"
    VOLATILE_FUNCTION = "volatile_function"
    UNKNOWN_FUNCTION = "unknown_function"
    LOCK_TABLE = "lock_table"
    COPY_FROM = "copy_from"
    COPY_TO_SERVER = "copy_to_server"
    LISTEN_NOTIFY = "listen_notify"
    WITH_HOLD_CURSOR = "with_hold_cursor"
    EXPLAIN_ANALYZE_WRITE = "explain_analyze_write"
    CALL_OR_DO = "call_or_do"
    DML = "dml"
    DDL = "ddl"
    MAINTENANCE = "maintenance"
    MULTI_STATEMENT_WRITE = "multi_statement_write"
    TX_CONTROL = "tx_control"
    SET = "set"
    DISCARD = "discard"
    LOAD = "load"
    SQL_PREPARE = "sql_prepare"
    SQL_EXECUTE = "sql_execute"
    SQL_DEALLOCATE = "sql_deallocate"
    HINT_PRIMARY = "hint_primary"
    HINT_REPLICA = "hint_replica"
    LEARNED_WRITE = "learned_write"
    AMBIGUOUS_ESCAPE = "ambiguous_escape"
    CHANGE_DATABASE = "change_database"  # USE db: the session's current database
    LAST_RESULT = "last_result"  # reads the outcome of the session's previous statement
    PARSE_ERROR = "parse_error"
    UNKNOWN = "unknown"


class TxAction(enum.Enum):
    """Transaction-control action of a ``TRANSACTION`` statement."""

    BEGIN = "begin"
    COMMIT = "commit"
    ROLLBACK = "rollback"
    SAVEPOINT = "savepoint"
    RELEASE = "release"
    ROLLBACK_TO = "rollback_to"
    PREPARE_TRANSACTION = "prepare_transaction"
    COMMIT_PREPARED = "commit_prepared"
    ROLLBACK_PREPARED = "rollback_prepared"
    SET_TRANSACTION = "set_transaction"
    SET_CONSTRAINTS = "set_constraints"
    # A commit or rollback that opens a new transaction at once (SQL standard ``AND CHAIN``).
    COMMIT_AND_CHAIN = "commit_and_chain"
    ROLLBACK_AND_CHAIN = "rollback_and_chain"
    # An X/Open XA branch leaves the session (``XA END``): it can then only be prepared or
    # committed in one phase.
    END_BRANCH = "end_branch"


class PinReason(enum.Enum):
    """Session-bound server state a statement creates.

    The pooler either pins the client to its server connection or, for state it can replay
    (SQL-level prepared statements), records it; the classifier only reports the fact.
    """

    TEMP_TABLE = "temp_table"
    ADVISORY_LOCK = "advisory_lock"
    LISTEN = "listen"
    WITH_HOLD_CURSOR = "with_hold_cursor"
    LOAD = "load"
    SESSION_AUTHORIZATION = "session_authorization"
    SQL_PREPARE = "sql_prepare"
    UNTRACKED_SETTING = "untracked_setting"
    TABLE_LOCK = "table_lock"  # explicit table or instance locks held by the session
    DISTRIBUTED_TRANSACTION = "distributed_transaction"  # an open X/Open XA branch
    OPEN_CURSOR = "open_cursor"  # a table cursor opened outside any transaction
    # Characteristics set for the session's next transaction only; held until a transaction
    # ends (the server keeps them on its connection until then, and they cannot be read back).
    NEXT_TRANSACTION = "next_transaction"


class UnpinEvent(enum.Enum):
    """Session-bound state a statement releases.

    Single-object releases (``UNLISTEN``, ``ADVISORY_UNLOCK``, ``CLOSE_CURSOR``, ``DEALLOCATE``)
    name the object in ``Classification.target`` / ``prepared_name`` where it is known; the
    pooler decides whether anything session-bound remains.
    """

    DISCARD_ALL = "discard_all"
    DISCARD_TEMP = "discard_temp"
    DISCARD_PLANS = "discard_plans"
    DISCARD_SEQUENCES = "discard_sequences"
    UNLISTEN = "unlisten"
    UNLISTEN_ALL = "unlisten_all"
    ADVISORY_UNLOCK = "advisory_unlock"
    ADVISORY_UNLOCK_ALL = "advisory_unlock_all"
    CLOSE_CURSOR = "close_cursor"
    CLOSE_ALL_CURSORS = "close_all_cursors"
    DEALLOCATE = "deallocate"
    DEALLOCATE_ALL = "deallocate_all"
    RESET_SESSION_AUTHORIZATION = "reset_session_authorization"
    TABLE_UNLOCK_ALL = "table_unlock_all"  # every explicit table lock of the session released
    DROP_TEMP_TABLE = "drop_temp_table"  # one temporary table dropped (named in ``target``)
    END_DISTRIBUTED_TRANSACTION = "end_distributed_transaction"  # XA id in ``target``


class RouteHint(enum.Enum):
    """Routing hint written by the application in a leading comment."""

    PRIMARY = "primary"
    REPLICA = "replica"


@dataclass(frozen=True, slots=True)
class SettingChange:
    """One session setting change.

    ``name`` is the lower-cased setting name; ``value`` is the text the server would store
    (``None`` for RESET / DEFAULT); ``local`` is true for transaction-scoped changes
    (``SET LOCAL``, ``set_config(..., true)``); ``reset_all`` marks ``RESET ALL`` (name ``all``).
    """

    name: str
    value: str | None
    local: bool
    reset_all: bool = False


@dataclass(frozen=True, slots=True)
class UserVariable:
    """One assignment to a user-defined session variable (``SET @x = 1``, ``SELECT @x := a``).

    ``name`` is the variable name as the server folds it (lower-cased); ``value`` is the SQL
    literal that replays the assignment (``5``, ``'text'``, ``NULL``) when the statement assigns
    a constant, and None when the server computes it (an expression, a query result): the pooler
    then reads the value back instead of pinning the session.
    """

    name: str
    value: str | None


@dataclass(frozen=True, slots=True)
class Classification:
    """What a SQL string does, and why.

    ``read_only`` is true only if the whole string is safe to run on a replica.  For
    multi-statement strings ``statements`` counts the statements, ``parts`` holds one
    classification per statement, and the list fields are concatenated over the parts.
    ``inner`` is the classification of an embedded statement (``EXPLAIN``, ``PREPARE``,
    ``DECLARE``, ``COPY (query)``).  ``functions`` lists the functions called (including those of
    ``inner``) as the server resolves the name: unquoted names lower-cased, schema-qualified if
    written so.  ``target`` names the object a statement acts on: cursor, channel, savepoint,
    two-phase transaction id, the setting for ``SHOW``, or the library for ``LOAD``.

    Fields for dialects with more session state (all default to "nothing changes"):
    ``database`` is the current database the string switches to; ``user_variables`` lists
    assignments to user-defined variables; ``autocommit`` is the autocommit mode the string
    leaves the session in when it sets one (also reported as a setting, which is what a replay
    uses; this field is for the transaction tracker: with autocommit off any statement opens a
    transaction); ``implicit_commit`` says the statement commits an open transaction before it
    runs (DDL, table locks, a new BEGIN); ``uses_last_result`` says the string reads the outcome
    of the session's previous statement (last insert id, affected or found rows, warnings), so
    it must run on the connection that ran that statement.
    """

    kind: StatementKind
    reason: Reason
    read_only: bool
    tx: TxAction | None = None
    tx_read_only: bool | None = None
    settings: tuple[SettingChange, ...] = ()
    pins: tuple[PinReason, ...] = ()
    unpins: tuple[UnpinEvent, ...] = ()
    functions: tuple[str, ...] = ()
    hint: RouteHint | None = None
    statements: int = 1
    prepared_name: str | None = None
    target: str | None = None
    inner: Classification | None = None
    parts: tuple[Classification, ...] = ()
    database: str | None = None
    user_variables: tuple[UserVariable, ...] = ()
    autocommit: bool | None = None
    implicit_commit: bool = False
    uses_last_result: bool = False

    @property
    def is_write(self) -> bool:
        """True when the string must go to the primary for what it does (not for a hint)."""
        return not self.read_only and self.kind is not StatementKind.READ
