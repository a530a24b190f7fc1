"""Transaction and statement pooling, and read/write splitting, for one client session.

The engine sees every client frame and every server frame of its session (managed mode). It
groups client messages into units of work (a transaction, or one statement outside a transaction),
routes each unit by its first statement, checks a server connection out of the right pool for the
unit and gives it back when ReadyForQuery reports the transaction over. On every connection it
checks out, it first replays the client's session settings (SET/RESET, tracked per client) and
prepares the client's named statements lazily under shared server-side names, so nothing of one
client's session state reaches another, and nothing the client relies on is missing.

State that cannot be replayed (temp tables, session advisory locks, LISTEN, WITH HOLD cursors,
SQL-level PREPARE, LOAD, SET SESSION AUTHORIZATION) pins the session to its connection until the
state is gone, or is refused when the cluster says session_state = "error".
"""

from __future__ import annotations

import dataclasses
import logging
import re
import struct
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from dbbalancer.config import PoolMode, SessionStatePolicy
from dbbalancer.core.cluster import NoServerAvailable
from dbbalancer.core.errors import PROBE_AT_ONCE, RETRY_ON_PRIMARY, ErrorCode
from dbbalancer.core.pool import DropReason, Pool, PoolClosed, PoolTimeout
from dbbalancer.core.routing import Decision, RouteReason, Target, decide
from dbbalancer.core.statement import (
    Classification,
    Reason,
    StatementKind,
    TxAction,
    UnpinEvent,
)
from dbbalancer.core.topology import Server
from dbbalancer.postgres import codec
from dbbalancer.postgres.backend import ServerConnection, ServerError, ServerUnavailable
from dbbalancer.postgres.classify import PLAIN_READ
from dbbalancer.postgres.codec import Frame
from dbbalancer.postgres.errors import class_of, sqlstate_of
from dbbalancer.postgres.lsn import Lsn
from dbbalancer.postgres.params import python_codec, quote_literal, sync_statement
from dbbalancer.postgres.prepared import (
    PreparedStatement,
    bind_statement,
    close_statement,
    make_parse,
    parse_fields,
    rename_target,
    server_statement_name,
    target_name,
    with_name,
)
from dbbalancer.postgres.responses import Request
from dbbalancer.postgres.sequences import SequenceState, Verdict
from dbbalancer.postgres.sessionstate import SessionState, parse_context, read_back_query
from dbbalancer.postgres.stream import scan_plain

if TYPE_CHECKING:
    from dbbalancer.postgres.frontend import ClientSession

log = logging.getLogger(__name__)

PARSE_COMPLETE = codec.ParseComplete().encode()
CLOSE_COMPLETE = codec.CloseComplete().encode()
READY_IDLE = codec.ReadyForQuery(b"I").encode()
SYNC = codec.Sync().encode()
# DISCARD SEQUENCES under a name of the proxy's own, in the extended protocol so that it can
# run anywhere in a client's pipeline without touching the unnamed statement or portal.
_CLEAR_NAME = "dbb_discard_sequences"
CLEAR_SEQUENCES = (
    codec.Close(b"S", _CLEAR_NAME).encode(),  # one left by an interrupted run is no error
    codec.Parse(_CLEAR_NAME, "DISCARD SEQUENCES").encode(),
    codec.Bind(_CLEAR_NAME, _CLEAR_NAME).encode(),
    codec.Execute(_CLEAR_NAME).encode(),
    codec.Close(b"S", _CLEAR_NAME).encode(),
)
_CLEAR_REQUESTS = (Request.CLOSE, Request.PARSE, Request.BIND, Request.EXECUTE, Request.CLOSE)
_REFUSAL_NAME = "dbb_refusal"
_SEQUENCE_REFUSAL = (
    "DO $dbb$BEGIN RAISE EXCEPTION USING ERRCODE = "
    + quote_literal(sqlstate_of(ErrorCode.SEQUENCE_STATE_UNAVAILABLE))
    + ", MESSAGE = "
    + quote_literal(
        "currval()/lastval() cannot be answered for this session: the server connection that "
        "ran its last nextval() has since served another client (transaction pooling)"
    )
    + ", HINT = "
    + quote_literal(
        "use INSERT ... RETURNING or SELECT nextval() to get the id, "
        'or pool_mode = "session" for this user'
    )
    + "; END$dbb$"
)
# Functions that answer from the session's sequence state, and that set it, as the classifier
# names them.
_SEQUENCE_STATE_READERS = frozenset(
    ("currval", "lastval", "pg_catalog.currval", "pg_catalog.lastval")
)
_SEQUENCE_STATE_WRITERS = frozenset(
    ("nextval", "setval", "pg_catalog.nextval", "pg_catalog.setval")
)
# The primary's WAL position in bytes, asked right after a write commits (read-your-writes).
POSITION_QUERY = codec.Query("SELECT pg_current_wal_lsn() - '0/0'::pg_lsn").encode()

# Server errors after which a connection's session is gone or the server is going away.
_BACKLOG_PAUSE = 256
# Extended-protocol messages that do not end a batch: Parse, Bind, Describe, Execute, Close.
_PIPELINED = frozenset((b"P", b"B", b"D", b"E", b"C"))
# The proxy's server-side statement names (prepared.server_statement_name), to hide in errors.
_SERVER_NAME_MARK = b"dbb_"
_SERVER_NAME = re.compile(rb"dbb_[0-9a-f]{20}")
# Server messages after which a read can no longer be re-run elsewhere: rows, a completion, a
# COPY, an empty query, a suspended portal. A RowDescription (sent before a SELECT executes),
# ParseComplete or BindComplete is held back with the rest and may still be withdrawn.
_COMMITS = frozenset((b"D", b"C", b"G", b"H", b"W", b"I", b"s"))


def query_text(frame: Frame, encoding: str = "utf-8") -> str:
    """The SQL of a Query message, in the client's encoding (bytes it does not hold are kept
    as they are, for the server to judge)."""
    return frame.data[5:-1].decode(encoding, "surrogateescape")


@dataclass(frozen=True, slots=True)
class _Parsed:
    """A Query or Parse frame as routing saw it. Holding the frame keeps its id unique."""

    frame: Frame
    classification: Classification
    fields: tuple[str, str, bytes] | None  # a Parse's (name, query, rest)


@dataclass(slots=True)
class _Unit:
    """The unit of work in progress."""

    decision: Decision
    server: ServerConnection | None = None
    pool: Pool[ServerConnection] | None = None
    # A replica read that may be re-run elsewhere: the frames sent for it. While it may be re-run,
    # what the client is to see of it is held back (`_holding`).
    retry_frames: list[Frame] | None = None
    rows_sent: bool = False  # a DataRow or a completion reached the client: no re-run now
    sealed: bool = False  # a re-runnable read was sent whole: later frames wait for its end
    mark: int = 0  # where its output starts in the engine's client buffer
    started: float = 0.0  # when a replica unit was sent (least_latency learns from it)
    errors: int = 0
    wrote: bool = False  # ran something that is not a read (read-your-writes)
    exclude: frozenset[str] = frozenset()  # servers that already failed this unit


class Engine:
    """Managed-mode traffic of one client session (see the module docstring)."""

    def __init__(
        self,
        session: ClientSession,
        *,
        mode: PoolMode,
        split: bool,
        settings: dict[str, str],
        home: ServerConnection | None,
        home_pool: Pool[ServerConnection] | None,
    ) -> None:
        cluster = session.cluster
        user = session.user
        assert cluster is not None
        assert user is not None
        self.session = session
        self.cluster = cluster
        self.user = user
        self.mode = mode
        self.split = split
        self.classifier = session.service.classifier(cluster.config.name)
        self.state = SessionState(settings, session)
        self.encoding = python_codec(self.state.settings)  # the client's, for query text
        self.home = home  # session pooling: the primary connection held for the whole session
        self.home_pool = home_pool
        self.server: ServerConnection | None = None
        self.unit: _Unit | None = None
        self.backlog: list[Frame] = []
        self.acquiring = False
        self.prepared: dict[str, PreparedStatement] = {}
        self.unnamed: bytes | None = None
        # Statement effects learnt at Bind for each portal, applied when it is executed.
        self._portals: dict[bytes, Classification] = {}
        self._unnamed_c: Classification | None = None  # of the client's unnamed statement
        self._untracked: dict[str, Classification] = {}  # named statements passed through
        # Server-side statements a DISCARD/DEALLOCATE ALL in flight may or may not have dropped.
        self._doubt_statements: list[str] = []
        self._prepared_before: dict[str, PreparedStatement] | None = None
        self._settings_rows: list[bytes] | None = None
        self._read_back: list[str] = []
        # Where this client's sequence state lives (postgres/sequences.py): the connection, and
        # the pool it goes back to.
        self.seqs = SequenceState()
        self._seq_home: ServerConnection | None = None
        self._seq_pool: Pool[ServerConnection] | None = None
        self._drop_to_sync = False  # a request was refused mid-batch: skip to the Sync
        self._to_server: list[bytes] = []
        self._to_client: list[bytes] = []
        self.closed = False
        self.default_primary = user.default_route.value == "primary"
        self.ro_tx_to_replica = cluster.config.read_only_transactions.value == "replica"
        self.refuse_session_state = cluster.config.session_state is SessionStatePolicy.ERROR
        self.read_your_writes = cluster.config.read_your_writes and split
        self.min_position: Lsn | None = None  # the primary's position after our last write
        self._position_rows: list[bytes] | None = None
        self._skip_to_sync = False
        # What routing the current batch learnt of its Query and Parse frames (by id(frame),
        # while the backlog holds them), so that sending them does not parse them again.
        self._batch: dict[int, _Parsed] = {}
        # max_prepared_statements = 0: named statements pass through untouched (as PgBouncer).
        self.track_prepared = cluster.config.max_prepared_statements > 0
        self.last_activity = time.monotonic()

    # -- client side ----------------------------------------------------------------------------

    def client_frames(self, frames: list[Frame]) -> None:
        """Handle frames from the client, in order."""
        self.last_activity = time.monotonic()
        for frame in frames:
            if self.closed:
                return
            if self._skip_to_sync:
                if frame.type == b"S":
                    self._skip_to_sync = False
                    self._to_client.append(READY_IDLE)
                elif frame.type == b"X":
                    self.session.terminate()
                    return
                continue
            if self.server is None or self.acquiring:
                if frame.type == b"X":
                    self.session.terminate()
                    return
                if not self.acquiring and not self.backlog and self._answer_locally(frame):
                    continue
                self.backlog.append(frame)
                if self.acquiring:
                    if len(self.backlog) > _BACKLOG_PAUSE:
                        self.session.pause_reading()
                elif frame.type not in _PIPELINED:
                    # An extended-protocol batch is routed once its Sync (or Flush) is in, so a
                    # write anywhere in it sends the whole batch to the primary.
                    self._start_unit()
            elif self._sealed() and frame.type != b"X":
                # A replica read is in flight: what follows is routed on its own once it ends.
                self.backlog.append(frame)
                if len(self.backlog) > _BACKLOG_PAUSE:
                    self.session.pause_reading()
            else:
                if frame.type == b"X":
                    self._flush()
                    self.session.terminate()
                    return
                self._send(frame)
        self._flush()

    def _answer_locally(self, frame: Frame) -> bool:
        """Messages that need no server when none is attached.

        Sync, Flush and the Close of a client statement need none; nor does the Parse of a
        statement that a server connection has already parsed under the same name (same text,
        parameter types and search_path). Answering that one here matters: clients such as
        pgbench prepare synchronously while their other connections hold servers in
        transactions, and would otherwise wait on the pool forever.
        """
        kind = frame.type
        if kind == b"P":
            if not self.track_prepared:
                return False
            name, query, rest = parse_fields(frame, self.encoding)
            if not name:
                return False
            server_name = server_statement_name(query, rest, self._parse_context())
            if not self.cluster.known_statements.touch(server_name):
                return False
            c = self.classifier.classify(query)
            if c.pins or c.settings or c.unpins:
                return False
            self.prepared[name] = PreparedStatement(
                name, server_name, query, make_parse(server_name, query, rest, self.encoding), c
            )
            self._to_client.append(PARSE_COMPLETE)
            return True
        if kind == b"S":
            self._to_client.append(READY_IDLE)
            return True
        if kind == b"H":
            return True
        if kind == b"C":
            close_kind, name = target_name(frame)
            if close_kind == b"S" and name in self.prepared:
                del self.prepared[name]
                self._to_client.append(CLOSE_COMPLETE)
                return True
        return False

    def _classify_unit(self) -> Classification | None:
        """The classification that routes the backlog's unit: its first statement's, unless a
        later statement of the same batch is not a read or pins the session (None: unknown, go
        to the primary)."""
        first: Classification | None = None
        batch = self._batch
        batch.clear()
        unnamed: Classification | None = None  # of an unnamed Parse earlier in this batch
        for i, frame in enumerate(self.backlog):
            kind = frame.type
            c: Classification | None
            if kind == b"Q":
                known = self.classifier.classify(query_text(frame, self.encoding))
                batch[id(frame)] = _Parsed(frame, known, None)
                c = known
            elif kind == b"P":
                fields = parse_fields(frame, self.encoding)
                known = self.classifier.classify(fields[1])
                if not fields[0]:
                    unnamed = known
                batch[id(frame)] = _Parsed(frame, known, fields)
                c = known
            elif kind == b"B" or i == 0:
                c = self._classify_first(frame, unnamed)
            else:
                c = None  # Describe, Execute, Sync...: routing looks only at what they follow
            if i == 0:
                first = c
            if kind not in _PIPELINED:
                break
            if kind in (b"P", b"B") and (c is None or not c.read_only or c.pins):
                return c
        return first

    def _classify_first(
        self, frame: Frame, unnamed: Classification | None = None
    ) -> Classification | None:
        """The classification of the statement a Bind or Describe refers to, if known;
        `unnamed` is that of an unnamed Parse earlier in the same batch."""
        kind = frame.type
        if kind == b"B":
            start, end = bind_statement(frame)
            name = frame.data[start:end].decode(errors="replace")
            stmt = self.prepared.get(name) if name else None
            if stmt is not None:
                return stmt.classification
            if name:
                return self._untracked.get(name)
            if unnamed is not None:
                return unnamed
            if self._unnamed_c is not None:
                return self._unnamed_c
        if kind == b"D":
            describe_kind, name = target_name(frame)
            stmt = self.prepared.get(name) if describe_kind == b"S" and name else None
            if stmt is not None:
                return stmt.classification
        return None

    def _start_unit(self) -> None:
        """Route the unit that begins with backlog[0] and get it a server connection."""
        first = self.backlog[0]
        c = self._classify_unit()
        if c is not None and self.mode is PoolMode.STATEMENT and _begins_transaction(c):
            self.backlog.pop(0)
            self._refuse(
                first,
                sqlstate_of(ErrorCode.TRANSACTION_IN_STATEMENT_MODE),
                "transactions are not allowed in statement pooling",
                'use pool_mode = "transaction" for this user or cluster',
            )
            self._drain_backlog()
            return
        if c is None:
            decision = Decision(Target.PRIMARY, RouteReason.WRITE)
        else:
            decision = decide(
                c,
                split=self.split,
                default_primary=self.default_primary,
                read_only_transactions_to_replica=self.ro_tx_to_replica,
            )
        unit = _Unit(decision)
        if decision.target is Target.REPLICA and self._retryable():
            unit.retry_frames = []
        self.unit = unit
        if decision.target is Target.PRIMARY and self.home is not None:
            self._attach_home(self.home)
            return
        self._checkout(unit)

    def _retryable(self) -> bool:
        """May the backlog's first request cycle be re-run elsewhere? A simple Query, or an
        extended-protocol batch that ends with a Sync, may. A batch that ends with a Flush may
        not: its client waits for answers that holding them back would withhold."""
        for frame in self.backlog:
            kind = frame.type
            if kind == b"Q" or kind == b"S":
                return True
            if kind not in _PIPELINED:
                return False
        return False

    def _sql_of(self, frames: list[Frame]) -> str | None:
        """The SQL that a re-run request cycle runs (for the classifier to learn it)."""
        for frame in frames:
            kind = frame.type
            if kind == b"Q":
                return query_text(frame, self.encoding)
            if kind == b"P":
                return parse_fields(frame, self.encoding)[1]
            if kind == b"B":
                start, end = bind_statement(frame)
                bound = self.prepared.get(frame.data[start:end].decode(errors="replace"))
                return bound.query if bound is not None else None
        return None

    def _attach_home(self, home: ServerConnection) -> None:
        """Session pooling: run the unit on the connection held for the session."""
        if home.broken:
            # It died while the session was between statements (nobody was attached to hear).
            self.home = None
            self.session.fatal(
                sqlstate_of(ErrorCode.SERVER_CONNECTION_LOST),
                f"server connection to {home.server.name} was lost",
                hint="reconnect; the server may be restarting",
            )
            return
        self._attach(home, None)

    def _checkout(self, unit: _Unit) -> None:
        """Attach an idle connection at once if there is one; else wait for one in a task.

        For the primary, the connection that holds this client's sequence state comes first
        while nobody else has changed it, so currval() and lastval() keep answering for it."""
        seq = self._seq_home
        if seq is not None and unit.decision.target is Target.PRIMARY:
            pool = self._seq_pool
            if (
                not self.seqs.owns(seq)
                or pool is None
                or seq.server != self.cluster.runtime.primary()
            ):
                self._seq_home = None
            elif pool.take(seq):
                self._attach(seq, pool)
                return
        fast = self.cluster.runtime.try_checkout(
            self.user.name,
            unit.decision.target,
            min_position=self.min_position,
            exclude=unit.exclude,
        )
        if isinstance(fast, tuple):
            _, pool, server = fast
            self._attach(server, pool)
            return
        self.acquiring = True
        self.session.service.spawn(self._acquire(unit, fast))

    async def _acquire(self, unit: _Unit, order: list[Server]) -> None:
        cluster = self.cluster
        try:
            choice, pool, server = await cluster.runtime.checkout(
                self.user.name,
                unit.decision.target,
                wait_limit=cluster.config.query_wait_timeout,
                min_position=self.min_position,
                exclude=unit.exclude,
                order=order if unit.decision.target is Target.REPLICA else None,
            )
            if choice.fallback is not None:
                unit.decision = Decision(Target.PRIMARY, choice.fallback)
                unit.retry_frames = None
        except (PoolTimeout, NoServerAvailable, ServerUnavailable, PoolClosed, ServerError) as exc:
            self.acquiring = False
            if self.closed:
                return
            sqlstate = exc.sqlstate if isinstance(exc, ServerError) else _sqlstate_for(exc)
            self._fail_unit(sqlstate, str(exc))
            return
        except Exception:
            log.exception("%r: acquiring a server failed", self.session)
            self.acquiring = False
            self._fail_unit(
                sqlstate_of(ErrorCode.INTERNAL_ERROR),
                "internal error in dbbalancer while choosing a server",
            )
            return
        self.acquiring = False
        if self.closed:
            pool.release(server)
            return
        log.debug(
            "%r: unit to %s (%s)", self.session, choice.server.name, unit.decision.reason.value
        )
        self._attach(server, pool)
        self.session.resume_reading()

    def _attach(self, server: ServerConnection, pool: Pool[ServerConnection] | None) -> None:
        unit = self.unit
        assert unit is not None
        unit.server = server
        unit.pool = pool
        unit.mark = len(self._to_client)
        if unit.decision.target is Target.REPLICA:
            unit.started = time.monotonic()
        self.server = server
        server.attach_managed(self)
        self._sync_state(server)
        self._send_backlog(server, unit)

    def _send_backlog(self, server: ServerConnection, unit: _Unit) -> None:
        """Send the waiting frames to the attached server, up to where the unit stops taking
        them (it ended, or a re-runnable read was sent whole)."""
        backlog, self.backlog = self.backlog, []
        for i, frame in enumerate(backlog):
            if not self._is_attached(server) or unit.sealed:
                # The rest starts a new unit once this one ends.
                self.backlog = backlog[i:]
                break
            if frame.type == b"X":
                self._flush()
                self.session.terminate()
                return
            self._send(frame)
        self._flush()
        if not self._is_attached(server) and self.backlog and not self.acquiring:
            self._drain_backlog()

    def _sealed(self) -> bool:
        unit = self.unit
        return unit is not None and unit.sealed

    def _holding(self) -> bool:
        """The client's output is held back: the unit in flight may still be re-run."""
        unit = self.unit
        return (
            unit is not None
            and unit.retry_frames is not None
            and not unit.rows_sent
            and self.server is not None
        )

    def _sync_state(self, server: ServerConnection) -> None:
        """Bring the connection's settings to this client's, as one hidden simple query."""
        settings = self.state.settings
        sql = sync_statement(server.applied, settings)
        if sql is None:
            return
        self._to_server.append(codec.Query(sql).encode())
        server.tracker.expect(Request.QUERY, visible=False)
        server.applied = dict(settings)

    def _send(self, frame: Frame) -> None:
        """Send one client frame to the attached server, rewriting what pooling requires."""
        server = self.server
        assert server is not None
        tracker = server.tracker
        out = self._to_server
        kind = frame.type
        if self._drop_to_sync:
            if kind != b"S":
                return
            self._drop_to_sync = False
        unit = self.unit
        if unit is not None and unit.retry_frames is not None:
            unit.retry_frames.append(frame)
            if kind in (b"Q", b"S"):
                unit.sealed = True
            elif kind == b"H":
                unit.retry_frames = None  # the client may wait for what was asked so far
        known = self._batch.pop(id(frame), None)
        if known is not None and known.frame is not frame:
            known = None
        if kind == b"Q":
            c = known.classification if known is not None else None
            if c is None:
                c = self.classifier.classify(query_text(frame, self.encoding))
            if not c.read_only and c.functions and not self._sequence_ok(server, c, frame):
                return
            if not self._track(c, frame):
                return
            server.unnamed = None  # a simple query destroys the unnamed statement
            tracker.expect(Request.QUERY)
            out.append(frame.data)
        elif kind == b"P":
            if known is not None and known.fields is not None:
                name, query, rest = known.fields
                c = known.classification
            else:
                name, query, rest = parse_fields(frame, self.encoding)
                c = self.classifier.classify(query)
            if not self._admit(c, frame):
                return
            if not name or not self.track_prepared:
                if not name:
                    self.unnamed = frame.data
                    self._unnamed_c = c
                    server.unnamed = frame.data
                else:
                    self._untracked[name] = c
                tracker.expect(Request.PARSE)
                out.append(frame.data)
                return
            server_name = server_statement_name(query, rest, self._parse_context())
            stmt = PreparedStatement(
                name, server_name, query, make_parse(server_name, query, rest, self.encoding), c
            )
            self.prepared[name] = stmt
            if server.statements.touch(server_name):
                tracker.synthesize(PARSE_COMPLETE, self._to_client)
            else:
                self._prepare_on(server, stmt, visible=True)
        elif kind == b"B":
            start, end = bind_statement(frame)
            data = frame.data
            bound_c: Classification | None
            if end > start:
                name = data[start:end].decode(errors="replace")
                bound = self.prepared.get(name)
                if bound is not None:
                    bound_c = bound.classification
                    self._ensure_prepared(server, bound)
                    out.append(with_name(frame, start, end, bound.server_name))
                else:
                    bound_c = self._untracked.get(name)
                    out.append(data)
            else:
                bound_c = self._unnamed_c
                self._ensure_unnamed(server)
                out.append(data)
            # What the statement does to the session counts when the portal runs.
            portal = data[5 : start - 1]
            if bound_c is not None:
                self._portals[portal] = bound_c
            else:
                self._portals.pop(portal, None)
            tracker.expect(Request.BIND)
        elif kind == b"E":
            data = frame.data
            portal_c = self._portals.get(data[5 : data.index(b"\0", 5)])
            if portal_c is not None and portal_c is not PLAIN_READ:
                if (
                    not portal_c.read_only
                    and portal_c.functions
                    and not self._sequence_ok(server, portal_c, frame)
                ):
                    return
                self._effects(portal_c)
            tracker.expect(Request.EXECUTE)
            out.append(data)
        elif kind == b"D":
            describe_kind, name = target_name(frame)
            if describe_kind == b"S":
                described = self.prepared.get(name) if name else None
                if described is not None:
                    self._ensure_prepared(server, described)
                    out.append(rename_target(frame, described.server_name))
                else:
                    if not name:
                        self._ensure_unnamed(server)
                    out.append(frame.data)
                tracker.expect(Request.DESCRIBE_STATEMENT)
            else:
                tracker.expect(Request.DESCRIBE_PORTAL)
                out.append(frame.data)
        elif kind == b"C":
            close_kind, name = target_name(frame)
            if close_kind == b"S" and name in self.prepared:
                # The server-side statement stays cached for other clients and later use.
                del self.prepared[name]
                tracker.synthesize(CLOSE_COMPLETE, self._to_client)
            else:
                tracker.expect(Request.CLOSE)
                out.append(frame.data)
        elif kind == b"S":
            tracker.expect(Request.SYNC)
            out.append(frame.data)
        elif kind == b"F":
            tracker.expect(Request.QUERY)
            out.append(frame.data)
        else:
            # Flush, CopyData, CopyDone, CopyFail: no response of their own.
            out.append(frame.data)

    def _parse_context(self) -> str:
        """The client's settings that change what a statement means when it is parsed (which
        table a name is, what a date or time literal is): statements parsed under other values
        are not shared with it."""
        return parse_context(self.state.settings)

    def _prepare_on(
        self, server: ServerConnection, stmt: PreparedStatement, *, visible: bool
    ) -> None:
        tracker = server.tracker
        for evicted in server.statements.add(stmt.server_name):
            self._to_server.append(close_statement(evicted))
            tracker.expect(Request.CLOSE, visible=False, tag=evicted)
        self.cluster.known_statements.add(stmt.server_name)
        self._to_server.append(stmt.parse)
        tracker.expect(Request.PARSE, visible=visible, tag=stmt.server_name)

    def _ensure_prepared(self, server: ServerConnection, stmt: PreparedStatement) -> None:
        if not server.statements.touch(stmt.server_name):
            self._prepare_on(server, stmt, visible=False)

    def _ensure_unnamed(self, server: ServerConnection) -> None:
        if self.unnamed is not None and server.unnamed != self.unnamed:
            self._to_server.append(self.unnamed)
            server.tracker.expect(Request.PARSE, visible=False)
            server.unnamed = self.unnamed

    def _sequence_ok(self, server: ServerConnection, c: Classification, frame: Frame) -> bool:
        """May `c` run on `server` as far as sequence state goes (postgres/sequences.py)?
        currval()/lastval() run where they answer for this client, after a DISCARD SEQUENCES
        for a client that has no sequence state; otherwise they are refused, never answered
        with another client's number."""
        functions = c.functions
        if not any(name in _SEQUENCE_STATE_READERS for name in functions) or any(
            name in _SEQUENCE_STATE_WRITERS for name in functions
        ):
            return True  # nothing read, or read after its own nextval()/setval()
        verdict = self.seqs.before_read(server)
        if verdict is Verdict.CLEAR_FIRST:
            self._clear_sequences(server, sync=frame.type == b"Q")
        if verdict is not Verdict.REFUSE:
            self._note_seq_home(server)
            return True
        self._raise_on_server(server, frame, _SEQUENCE_REFUSAL)
        return False

    def _raise_on_server(self, server: ServerConnection, frame: Frame, raise_sql: str) -> None:
        """Run `raise_sql` (a DO block that raises the refusal) instead of the client's Query or
        Execute `frame`: the server itself fails the request, so a transaction it was in is
        aborted exactly as the statement's own error would have aborted it."""
        tracker = server.tracker
        out = self._to_server
        if frame.type == b"Q":
            out.append(codec.Query(raise_sql).encode())
            tracker.expect(Request.QUERY)
            server.unnamed = None  # a simple query destroys the unnamed statement
            return
        for request, data in (
            (Request.CLOSE, codec.Close(b"S", _REFUSAL_NAME).encode()),
            (Request.PARSE, codec.Parse(_REFUSAL_NAME, raise_sql).encode()),
            (Request.BIND, codec.Bind(_REFUSAL_NAME, _REFUSAL_NAME).encode()),
        ):
            out.append(data)
            tracker.expect(request, visible=False)
        out.append(codec.Execute(_REFUSAL_NAME).encode())
        tracker.expect(Request.EXECUTE)

    def _clear_sequences(self, server: ServerConnection, *, sync: bool) -> None:
        """DISCARD SEQUENCES on `server` before what is sent next (hidden). `sync`: a simple
        Query follows, so the hidden batch ends with its own Sync rather than leave an implicit
        transaction open under the Query."""
        if server.tx_status == b"E":
            # The failed transaction refuses it (and the statement that follows as well).
            self.seqs.could_not_clear(server)
            return
        tracker = server.tracker
        self._to_server.extend(CLEAR_SEQUENCES)
        for request in _CLEAR_REQUESTS:
            tracker.expect(request, visible=False)
        if sync:
            self._to_server.append(SYNC)
            tracker.expect(Request.SYNC, visible=False)

    def _note_seq_home(self, server: ServerConnection) -> None:
        unit = self.unit
        if unit is not None and unit.decision.target is not Target.PRIMARY:
            return
        if self.seqs.owns(server):
            self._seq_home = server
            unit = self.unit
            self._seq_pool = unit.pool if unit is not None else None

    def _track(self, c: Classification, frame: Frame) -> bool:
        """A simple Query: admit it and record its effects; False if it was refused."""
        if not self._admit(c, frame):
            return False
        self._effects(c, query=True)
        return True

    def _admit(self, c: Classification, frame: Frame) -> bool:
        """Refuse what this pool cannot run (answering the client); True if admitted."""
        if c.pins and self.refuse_session_state and self.mode is not PoolMode.SESSION:
            reasons = ", ".join(p.value for p in c.pins)
            self._refuse(
                frame,
                sqlstate_of(ErrorCode.SESSION_STATE_REFUSED),
                f"statement keeps session state ({reasons}), which this pool refuses",
                'set session_state = "pin" on the cluster, or use pool_mode = "session"',
            )
            return False
        if self.mode is PoolMode.STATEMENT and _begins_transaction(c):
            self._refuse(
                frame,
                sqlstate_of(ErrorCode.TRANSACTION_IN_STATEMENT_MODE),
                "transactions are not allowed in statement pooling",
                'use pool_mode = "transaction" for this user or cluster',
            )
            return False
        return True

    def _effects(self, c: Classification, *, query: bool = False) -> None:
        """A statement is being run (a Query, or the Execute of a portal): record what it does
        to session state, in stream order."""
        unit = self.unit
        server = self.server
        if not c.read_only and unit is not None:
            unit.wrote = True
            if (
                server is not None
                and (c.kind is StatementKind.WRITE or c.kind is StatementKind.UNKNOWN)
                and unit.decision.target is Target.PRIMARY
            ):
                # It may call nextval(): this client's sequence state is then on `server`.
                if self.seqs.before_write(server):
                    self._clear_sequences(server, sync=query)
                self._note_seq_home(server)
        if server is not None and UnpinEvent.DISCARD_SEQUENCES in c.unpins:
            self._sequences_discarded(server, c)
        if c.reason is Reason.DDL:
            self.session.service.poke_volatility(self.cluster.config.name)
        self.state.record(c)
        for event in c.unpins:
            if event is UnpinEvent.DISCARD_ALL or event is UnpinEvent.DEALLOCATE_ALL:
                self._drop_all_statements()
                break

    def _sequences_discarded(self, server: ServerConnection, c: Classification) -> None:
        """DISCARD SEQUENCES (or ALL) is on its way. Believed only where it cannot fail: not in
        a failed transaction, and DISCARD ALL only alone and outside a transaction."""
        status = server.tx_status
        if status == b"E":
            return
        if UnpinEvent.DISCARD_ALL in c.unpins and (status != b"I" or c.statements != 1):
            return
        unit = self.unit
        if unit is not None and unit.decision.target is Target.PRIMARY:
            self.seqs.discarded(server)
            self._note_seq_home(server)
        else:
            self.seqs.forget()  # cleared on a replica: no state left anywhere

    def _drop_all_statements(self) -> None:
        """DISCARD ALL or DEALLOCATE ALL is on its way: every prepared statement of the
        connection and of the client is gone once it runs. Later requests must not rely on them;
        if it fails after all, `_end_of_work` closes what it would have dropped."""
        server = self.server
        if server is not None:
            self._doubt_statements.extend(server.statements.names())
            server.statements.clear()
            server.unnamed = None
        if self._prepared_before is None:
            self._prepared_before = dict(self.prepared)
        self.prepared.clear()
        self._untracked.clear()

    def _refuse(self, frame: Frame, sqlstate: str, message: str, hint: str) -> None:
        """Answer a client request with an error, as the server would, without sending it."""
        error = codec.error_response(sqlstate, message, severity="ERROR", hint=hint)
        server = self.server
        if frame.type == b"Q":
            if server is not None:
                # The ReadyForQuery comes from the server (a Sync is answered with one), so the
                # unit ends as usual and the transaction status is the server's.
                server.tracker.synthesize(error, self._to_client)
                self._to_server.append(SYNC)
                server.tracker.expect(Request.SYNC)
            else:
                self._to_client.append(error + READY_IDLE)
        else:
            # Extended protocol: the error, then the server would skip to the next Sync.
            if server is not None:
                server.tracker.synthesize(error, self._to_client)
                self._drop_to_sync = True  # as the server would after an error
            else:
                self._to_client.append(error)

    def _fail_unit(self, sqlstate: str, message: str) -> None:
        """No server for this unit: error, skip its messages up to a Sync/Query, and go on."""
        self.unit = None
        backlog = self.backlog
        self._to_client.append(codec.error_response(sqlstate, message, severity="ERROR"))
        while backlog:
            frame = backlog.pop(0)
            if frame.type in (b"Q", b"S", b"F"):
                self._to_client.append(READY_IDLE)
                break
        self._flush()
        self.session.resume_reading()
        self._drain_backlog()

    def _drain_backlog(self) -> None:
        """Start the next unit if frames are waiting."""
        while self.backlog and self.server is None and not self.acquiring and not self.closed:
            frame = self.backlog[0]
            if self._answer_locally(frame):
                self.backlog.pop(0)
                continue
            if all(f.type in _PIPELINED for f in self.backlog):
                break  # the batch's Sync has not arrived: route it once it has
            self._start_unit()
        self._flush()

    # -- server side ----------------------------------------------------------------------------

    def server_chunk(self, server: ServerConnection, data: bytes) -> bool:
        """The fast path for server output: a chunk that ends one request cycle cleanly.

        When every request in flight is the client's own and the chunk is whole plain messages
        ending with a ReadyForQuery (`scan_plain`), it goes to the client as it is, without
        being framed message by message. Returns False when the chunk must be framed and
        handed to `server_frames` instead.
        """
        if server is not self.server or not server.tracker.plain:
            return False
        found = scan_plain(data, server.reader.max_length)
        if found is None:
            return False
        status = found[0]
        unit = self.unit
        if unit is not None:
            unit.rows_sent = True  # the request cycle completed without an error
        self.last_activity = time.monotonic()
        self._to_client.append(data)
        server.tracker.finish_plain(status)
        self._ready(server, status)
        self._flush()
        return True

    def server_frames(self, server: ServerConnection) -> None:
        """Frames from the attached server: pass them on, and end the unit at its last Ready."""
        if server is not self.server:
            return
        self.last_activity = time.monotonic()
        tracker = server.tracker
        out = self._to_client
        unit = self.unit
        for frame in server.reader:
            kind = frame.type
            if kind == b"E" and _SERVER_NAME_MARK in frame.data:
                frame = self._client_names(frame)
            if unit is not None:
                if kind == b"E":
                    unit.errors += 1
                    msg = codec.decode_backend(frame)
                    sqlstate = msg.sqlstate if isinstance(msg, codec.ErrorResponse) else ""
                    error_class = class_of(sqlstate)
                    if error_class in PROBE_AT_ONCE:
                        self.cluster.runtime.poke(server.server)
                    if (
                        error_class in RETRY_ON_PRIMARY
                        and unit.retry_frames is not None
                        and not unit.rows_sent
                    ):
                        self._retry_on_primary(server, unit)
                        self._flush()
                        return
                elif kind in _COMMITS:
                    unit.rows_sent = True
            if kind == b"S":
                msg = codec.decode_backend(frame)
                if isinstance(msg, codec.ParameterStatus):
                    server.parameters[msg.name] = msg.value
            if tracker.on_frame(frame, out):
                status = tracker.ready_status
                assert status is not None
                if self._ready(server, status):
                    if not self._is_attached(server):
                        break
                    unit = self.unit
        if tracker.failed_parses:
            for name in tracker.failed_parses:
                server.statements.discard(name)
                self.cluster.known_statements.discard(name)
            tracker.failed_parses.clear()
        if tracker.failed_closes:
            for name in tracker.failed_closes:
                server.statements.keep(name)
            tracker.failed_closes.clear()
        self._flush()

    def _client_names(self, frame: Frame) -> Frame:
        """An ErrorResponse with the client's statement names in place of the proxy's own
        server-side names: no `dbb_...` name ever reaches a client."""
        names = {
            stmt.server_name.encode(): stmt.client_name.encode() for stmt in self.prepared.values()
        }
        body = _SERVER_NAME.sub(lambda m: names.get(m.group(0), b""), frame.data[5:])
        return codec.parse_frame(b"E" + struct.pack("!I", len(body) + 4) + body)

    def _ready(self, server: ServerConnection, status: bytes) -> bool:
        """A ReadyForQuery with transaction status `status` reached the client. True if it was
        the last response owed, so the work in flight ended (`_end_of_work`)."""
        server.tx_status = status
        if status == b"E":
            self.state.failed = True
        if not server.tracker.idle:
            return False
        self._end_of_work(server, status)
        return True

    def _is_attached(self, server: ServerConnection) -> bool:
        # Not inlined where self.server was narrowed earlier in the same function (mypy keeps
        # it narrowed across calls that may set it to None): mypyc-compiled code (setup.py)
        # would check the narrowed type at run time and raise TypeError on None.
        return self.server is server

    def _end_of_work(self, server: ServerConnection, status: bytes) -> None:
        """Everything sent was answered: at transaction end, settle state and release."""
        unit = self.unit
        state = self.state
        # Answers to hidden requests that just came in.
        if self._settings_rows is not None:
            self._learn_settings(self._settings_rows)
            self._settings_rows = None
            self.encoding = python_codec(state.settings)
            server.applied = dict(state.settings)
        asked_position = self._position_rows is not None
        if self._position_rows is not None:
            self._learn_position(self._position_rows)
            self._position_rows = None
        if unit is not None and unit.sealed:
            # It opened a transaction (or pinned): what waits belongs to it after all.
            unit.sealed = False
            unit.retry_frames = None
            if status != b"I" or state.pins:
                self._send_backlog(server, unit)
                self.session.resume_reading()
                if not self._is_attached(server) or not server.tracker.idle:
                    # What waited is running now: its effects settle, and the connection is
                    # kept or released, once the server has answered it.
                    return
        if status != b"I":
            if self.mode is PoolMode.STATEMENT:
                self._abort_statement_transaction(server)
            return
        errors = 0
        if unit is not None:
            errors, unit.errors = unit.errors, 0
        if (state.unsettled or self._doubt_statements) and self._settle(
            server, state.in_doubt(errors)
        ):
            # Hidden requests are on their way; this runs again once they are answered, and
            # what the client sends meanwhile waits to be routed on its own.
            if unit is not None:
                unit.sealed = True
            return
        if (
            not asked_position
            and self.read_your_writes
            and unit is not None
            and unit.wrote
            and unit.decision.target is Target.PRIMARY
        ):
            # Read-your-writes: learn where the primary's WAL stands after this commit; the
            # connection is released once the answer is in.
            unit.wrote = False
            self._position_rows = []
            self._to_server.append(POSITION_QUERY)
            server.tracker.expect(Request.QUERY, visible=False, capture=self._position_rows)
            unit.sealed = True
            return
        if state.pins:
            if unit is not None:
                unit.retry_frames = None
            return  # pinned: keep the connection
        self.unit = None
        if server is self.home:
            self.server = None
            server.detach()
        elif unit is not None and unit.pool is not None:
            self.server = None
            server.detach()
            if unit.started:
                self.cluster.runtime.latency.observe(
                    server.server.name, time.monotonic() - unit.started
                )
            if state.pinned_since_release:
                # Its pins ended, but it held session state: reset it before anyone else gets it.
                state.pinned_since_release = False
                self.session.give_back(server, unit.pool, clean=True)
            else:
                # A connection that holds some client's sequence state is handed out last,
                # so writers take connections that hold nobody's first.
                unit.pool.release(server, cold=server.seq_owner is not None)
        # Reading from the client may have been paused while that server's socket was full.
        self.session.resume_reading()
        self._drain_backlog()

    def _settle(self, server: ServerConnection, doubt: bool) -> bool:
        """Settle the session state the unit changed (see sessionstate.py). True if hidden
        requests were sent to find out what the server kept."""
        sent = False
        changed = bool(self.state.pending)
        read_back = self.state.settle(doubt)
        if changed:
            self.encoding = python_codec(self.state.settings)
        if read_back:
            self._read_back = read_back
            self._settings_rows = []
            self._to_server.append(codec.Query(read_back_query(read_back)).encode())
            server.tracker.expect(Request.QUERY, visible=False, capture=self._settings_rows)
            sent = True
        elif changed and not doubt:
            server.applied = dict(self.state.settings)
        if self._doubt_statements:
            if doubt:
                # A DISCARD/DEALLOCATE ALL may have failed: close what it would have dropped
                # (closing a statement that does not exist is no error).
                tracker = server.tracker
                for name in self._doubt_statements:
                    self._to_server.append(close_statement(name))
                    tracker.expect(Request.CLOSE, visible=False, tag=name)
                self._to_server.append(SYNC)
                tracker.expect(Request.SYNC, visible=False)
                sent = True
                if self._prepared_before is not None:
                    # ... and the client's own statements may still exist.
                    for name, stmt in self._prepared_before.items():
                        self.prepared.setdefault(name, stmt)
            self._doubt_statements.clear()
        self._prepared_before = None
        return sent

    def _learn_settings(self, rows: list[bytes]) -> None:
        names, self._read_back = self._read_back, []
        for data in rows:
            msg = codec.decode_backend(codec.parse_frame(data))
            if isinstance(msg, codec.DataRow) and len(msg.values) == len(names):
                values = [None if v is None else bytes(v).decode() for v in msg.values]
                self.state.learn(names, values)

    def _learn_position(self, rows: list[bytes]) -> None:
        for data in rows:
            msg = codec.decode_backend(codec.parse_frame(data))
            if isinstance(msg, codec.DataRow) and msg.values and msg.values[0] is not None:
                position = Lsn(int(msg.values[0].split(b".")[0]))
                if self.min_position is None or not self.min_position.covers(position):
                    self.min_position = position

    def _abort_statement_transaction(self, server: ServerConnection) -> None:
        """Statement pooling found a transaction left open: roll it back, close the client."""
        self._to_server.append(codec.Query("ROLLBACK").encode())
        server.tracker.expect(Request.QUERY, visible=False)
        self._flush()
        self.session.fatal(
            sqlstate_of(ErrorCode.TRANSACTION_IN_STATEMENT_MODE),
            "transactions are not allowed in statement pooling; it was rolled back",
            hint='use pool_mode = "transaction" for this user or cluster',
        )

    def _retry_on_primary(self, server: ServerConnection, unit: _Unit) -> None:
        """A replica refused a read as read-only (25006): re-run it on the primary."""
        sql = self._sql_of(unit.retry_frames or [])
        if sql:
            self.classifier.remember_write(sql)
            # The client's prepared statements of that text route by what was just learnt.
            learnt = self.classifier.classify(sql)
            for name, stmt in list(self.prepared.items()):
                if stmt.query == sql:
                    self.prepared[name] = dataclasses.replace(stmt, classification=learnt)
        log.info(
            "%r: replica %s refused a read as read-only; retrying on the primary",
            self.session,
            server.server.name,
        )
        self._retry(server, unit, Decision(Target.PRIMARY, RouteReason.REMEMBERED_WRITE))

    def _retry(self, server: ServerConnection, unit: _Unit, decision: Decision) -> None:
        """Run the unit's frames again elsewhere; the failed connection is dropped."""
        frames = unit.retry_frames or []
        del self._to_client[unit.mark :]  # held back: the client never saw it
        self.server = None
        server.detach()
        if unit.pool is not None:
            unit.pool.release(server, reusable=False, reason=DropReason.BROKEN)
        self.state.forget_pending()  # the frames record their effects again when re-sent
        self._prepared_before = None
        self._doubt_statements.clear()
        self.backlog = frames + self.backlog
        retry = _Unit(decision, exclude=unit.exclude | {server.server.name})
        self.unit = retry
        if decision.target is Target.PRIMARY and self.home is not None:
            self._attach_home(self.home)
            return
        self._checkout(retry)

    def server_lost(self, server: ServerConnection) -> None:
        """The attached server connection broke (the server died, or killed the backend)."""
        self.cluster.runtime.report_failure(server.server)
        if server is self.home:
            self.home = None
            self.server = None
            self.session.fatal(
                sqlstate_of(ErrorCode.SERVER_CONNECTION_LOST),
                f"server connection to {server.server.name} was lost",
                hint="reconnect; the server may be restarting",
            )
            return
        if server is not self.server:
            return
        unit = self.unit
        if (
            unit is not None
            and unit.retry_frames is not None
            and not unit.rows_sent
            and not unit.exclude
        ):
            # A read outside a transaction that sent nothing yet: run it once elsewhere.
            log.info("%r: %s died under a read; retrying it", self.session, server.server.name)
            self._retry(server, unit, Decision(Target.REPLICA, RouteReason.READ))
            self._flush()
            return
        self._lost_mid_unit(server)

    def _lost_mid_unit(self, server: ServerConnection) -> None:
        """Tell the client its unit failed; the session itself goes on."""
        unit = self.unit
        awaiting_ready = server.tracker.awaiting_ready()
        self.server = None
        self.unit = None
        server.tracker.clear()
        if unit is not None and unit.pool is not None:
            unit.pool.release(server, reusable=False, reason=DropReason.BROKEN)
        state = self.state
        state.forget_pending()
        self.seqs.lost_connection(server)
        self._drop_to_sync = False
        self._position_rows = None
        self._settings_rows = None
        self._doubt_statements.clear()
        self._prepared_before = None
        state.pinned_since_release = False
        if state.pins:
            log.warning("%r: session state lost with %s", self.session, server.server.name)
            state.pins.clear()
        error = codec.error_response(
            sqlstate_of(ErrorCode.SERVER_CONNECTION_LOST),
            f"server connection to {server.server.name} was lost; "
            "the transaction, if any, did not commit",
            severity="ERROR",
            hint="run the statement or transaction again",
        )
        if awaiting_ready:
            self._to_client.append(error + READY_IDLE)
        else:
            # Mid-pipeline: like the server after an error, skip to the client's Sync.
            self._to_client.append(error)
            self._skip_to_sync = True
        self._flush()
        self._drain_backlog()

    def pause_server_output(self) -> None:
        """The server cannot take more: stop reading from the client."""
        self.session.pause_reading()

    def resume_server_output(self) -> None:
        """The server drained."""
        self.session.resume_reading()

    # -- flushing and ending --------------------------------------------------------------------

    def _flush(self) -> None:
        if self._to_server and self.server is not None:
            transport = self.server.transport
            if transport is not None and not transport.is_closing():
                transport.writelines(self._to_server)
        self._to_server.clear()
        if self._to_client and not self._holding():
            self.session.write_many(self._to_client)
            self._to_client.clear()

    def idle_in_transaction(self, now: float, limit: float) -> bool:
        """True if a transaction has been open and silent for longer than `limit` seconds."""
        server = self.server
        return (
            server is not None
            and server.tx_status in (b"T", b"E")
            and server.tracker.idle
            and now - self.last_activity > limit
        )

    def is_idle(self) -> bool:
        """Between units of work."""
        return self.server is None and not self.acquiring and not self.backlog

    def describe(self) -> str:
        """One line of this session's pooling state, for diagnostics (a stuck client)."""
        unit = self.unit
        server = self.server
        parts = [
            f"server={server.server.name if server else None}",
            f"tx={server.tx_status.decode() if server else '-'}",
            f"in-flight=[{server.tracker.describe() if server else ''}]",
            f"acquiring={self.acquiring}",
            "backlog=" + "".join(f.type.decode() for f in self.backlog),
            f"skip_to_sync={self._skip_to_sync} drop_to_sync={self._drop_to_sync}",
            f"pins={sorted(p.value for p in self.state.pins)}",
            f"to_client={len(self._to_client)} holding={self._holding()}",
            f"position={self._position_rows is not None}",
            f"settings={self._settings_rows is not None}",
        ]
        if unit is not None:
            parts.append(
                f"unit=({unit.decision.target.value}/{unit.decision.reason.value} "
                f"sealed={unit.sealed} retry={unit.retry_frames is not None} "
                f"rows_sent={unit.rows_sent} pool={unit.pool is not None})"
            )
        return " ".join(parts)

    def attached(self) -> ServerConnection | None:
        """The connection running this client's work now (cancel requests go there)."""
        return self.server

    def close(self) -> None:
        """The client is gone: give back or drop every server connection."""
        self.closed = True
        server = self.server
        unit = self.unit
        self.server = None
        if server is not None and server is not self.home:
            clean = server.tracker.idle and server.tx_status == b"I"
            server.detach()
            pool = unit.pool if unit is not None else None
            if pool is None:
                server.close()
            elif clean and not self.state.pins and not self.state.pinned_since_release:
                pool.release(server)
            else:
                # Session state left behind (pins) is reset; a transaction in flight is dropped.
                self.session.give_back(server, pool, clean=clean)
        home = self.home
        self.home = None
        if home is not None and self.home_pool is not None:
            clean = home.tracker.idle and home.tx_status == b"I"
            home.detach()
            self.session.give_back(home, self.home_pool, clean=clean)


def _begins_transaction(c: Classification) -> bool:
    return c.kind is StatementKind.TRANSACTION and c.tx is TxAction.BEGIN and c.statements == 1


def _sqlstate_for(exc: Exception) -> str:
    if isinstance(exc, PoolTimeout):
        return sqlstate_of(ErrorCode.POOL_TIMEOUT)
    return sqlstate_of(ErrorCode.SERVER_UNAVAILABLE)
