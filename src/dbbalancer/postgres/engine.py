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

import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from dbbalancer.config import PoolMode, SessionStatePolicy
from dbbalancer.core.cluster import NoServerAvailable
from dbbalancer.core.pool import DropReason, Pool, PoolClosed, PoolTimeout
from dbbalancer.core.routing import Decision, RouteReason, Target, decide
from dbbalancer.core.statement import (
    Classification,
    PinReason,
    Reason,
    SettingChange,
    StatementKind,
    TxAction,
    UnpinEvent,
)
from dbbalancer.core.topology import Server
from dbbalancer.postgres import codec
from dbbalancer.postgres.backend import ServerConnection, ServerError, ServerUnavailable
from dbbalancer.postgres.codec import Frame, ProtocolError
from dbbalancer.postgres.params import sync_statement
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
from dbbalancer.postgres.stream import scan_plain

if TYPE_CHECKING:
    from dbbalancer.postgres.frontend import ClientSession

log = logging.getLogger(__name__)

PARSE_COMPLETE = codec.ParseComplete().encode()
CLOSE_COMPLETE = codec.CloseComplete().encode()
READY_IDLE = codec.ReadyForQuery(b"I").encode()
# The primary's WAL position in bytes, asked right after a write commits (read-your-writes).
POSITION_QUERY = codec.Query("SELECT pg_current_wal_lsn() - '0/0'::pg_lsn").encode()

# Pins that end with a given event. Only events that end the state for certain unpin: a
# pg_advisory_unlock() may release a lock the session never held while another stays held, and
# CLOSE of one cursor says nothing of another WITH HOLD cursor, so those keep the pin until the
# all-clearing form (or the client's disconnect).
_UNPINS: dict[UnpinEvent, frozenset[PinReason]] = {
    UnpinEvent.DISCARD_ALL: frozenset(PinReason),
    UnpinEvent.DISCARD_TEMP: frozenset((PinReason.TEMP_TABLE,)),
    UnpinEvent.UNLISTEN_ALL: frozenset((PinReason.LISTEN,)),
    UnpinEvent.ADVISORY_UNLOCK_ALL: frozenset((PinReason.ADVISORY_LOCK,)),
    UnpinEvent.CLOSE_ALL_CURSORS: frozenset((PinReason.WITH_HOLD_CURSOR,)),
    UnpinEvent.DEALLOCATE_ALL: frozenset((PinReason.SQL_PREPARE,)),
    UnpinEvent.RESET_SESSION_AUTHORIZATION: frozenset((PinReason.SESSION_AUTHORIZATION,)),
}

# Server errors after which a connection's session is gone or the server is going away.
_BACKLOG_PAUSE = 256
_READ_ONLY_SQLSTATE = "25006"
# Extended-protocol messages that do not end a batch: Parse, Bind, Describe, Execute, Close.
_PIPELINED = frozenset((b"P", b"B", b"D", b"E", b"C"))
# Errors on live traffic after which the server is probed at once: read-only (a demoted primary),
# admin shutdown, crash shutdown, cannot connect now.
_PROBE_NOW = frozenset(("25006", "57P01", "57P02", "57P03"))


def query_text(frame: Frame) -> str:
    """The SQL of a Query message."""
    try:
        return frame.data[5:-1].decode()
    except UnicodeDecodeError:
        raise ProtocolError("query text is not valid UTF-8") from None


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
    retry_frames: list[Frame] | None = None  # replica reads that may be re-run on the primary
    retry_sql: str | None = None
    rows_sent: bool = False
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
        self.startup_settings = dict(settings)
        self.settings = dict(settings)
        self.home = home  # session pooling: the primary connection held for the whole session
        self.home_pool = home_pool
        self.server: ServerConnection | None = None
        self.unit: _Unit | None = None
        self.backlog: list[Frame] = []
        self.acquiring = False
        self.prepared: dict[str, PreparedStatement] = {}
        self.unnamed: bytes | None = None
        self.pins: dict[PinReason, int] = {}
        self._pending_settings: list[SettingChange] = []
        self._rollback = False
        self._tx_failed = False
        self._to_server: list[bytes] = []
        self._to_client: list[bytes] = []
        self.closed = False
        self.default_primary = user.default_route.value == "primary"
        self.ro_tx_to_replica = cluster.config.read_only_transactions.value == "replica"
        self.refuse_session_state = cluster.config.session_state is SessionStatePolicy.ERROR
        self.read_your_writes = cluster.config.read_your_writes and split
        self.min_position: int | None = None  # the primary's position after our last write
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
            name, query, rest = parse_fields(frame)
            if not name:
                return False
            server_name = server_statement_name(query, rest, self._search_path())
            if not self.cluster.known_statements.touch(server_name):
                return False
            c = self.classifier.classify(query)
            if c.pins or c.settings or c.unpins:
                return False
            self.prepared[name] = PreparedStatement(
                name, server_name, query, make_parse(server_name, query, rest), c
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
        later statement of the same batch is not a read (None: unknown, go to the primary)."""
        first: Classification | None = None
        batch = self._batch
        batch.clear()
        unnamed: Classification | None = None  # of an unnamed Parse earlier in this batch
        for i, frame in enumerate(self.backlog):
            kind = frame.type
            c: Classification | None
            if kind == b"Q":
                known = self.classifier.classify(query_text(frame))
                batch[id(frame)] = _Parsed(frame, known, None)
                c = known
            elif kind == b"P":
                fields = parse_fields(frame)
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
            if kind in (b"P", b"B") and (c is None or not c.read_only):
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
            if not name and unnamed is not None:
                return unnamed
            if not name and self.unnamed is not None:
                _, query, _ = parse_fields(codec.parse_frame(self.unnamed))
                return self.classifier.classify(query)
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
                "0A000",
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
        if decision.target is Target.REPLICA and first.type == b"Q":
            unit.retry_frames = []
            unit.retry_sql = query_text(first)
        self.unit = unit
        if decision.target is Target.PRIMARY and self.home is not None:
            self._attach_home(self.home)
            return
        self._checkout(unit)

    def _attach_home(self, home: ServerConnection) -> None:
        """Session pooling: run the unit on the connection held for the session."""
        if home.broken:
            # It died while the session was between statements (nobody was attached to hear).
            self.home = None
            self.session.fatal(
                "08006",
                f"server connection to {home.server.name} was lost",
                hint="reconnect; the server may be restarting",
            )
            return
        self._attach(home, None)

    def _checkout(self, unit: _Unit) -> None:
        """Attach an idle connection at once if there is one; else wait for one in a task."""
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
            self._fail_unit("XX000", "internal error in dbbalancer while choosing a server")
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
        self.server = server
        server.attach_managed(self)
        self._sync_state(server)
        backlog, self.backlog = self.backlog, []
        for i, frame in enumerate(backlog):
            if not self._is_attached(server):
                # The unit ended while its frames were sent: the rest starts a new unit.
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

    def _sync_state(self, server: ServerConnection) -> None:
        """Bring the connection's settings to this client's, as one hidden simple query."""
        sql = sync_statement(server.applied, self.settings)
        if sql is None:
            return
        self._to_server.append(codec.Query(sql).encode())
        server.tracker.expect(Request.QUERY, visible=False)
        server.applied = dict(self.settings)

    def _send(self, frame: Frame) -> None:
        """Send one client frame to the attached server, rewriting what pooling requires."""
        server = self.server
        assert server is not None
        tracker = server.tracker
        out = self._to_server
        kind = frame.type
        unit = self.unit
        if unit is not None and unit.retry_frames is not None:
            unit.retry_frames.append(frame)
        known = self._batch.pop(id(frame), None)
        if known is not None and known.frame is not frame:
            known = None
        if kind == b"Q":
            c = known.classification if known is not None else None
            if c is None:
                c = self.classifier.classify(query_text(frame))
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
                name, query, rest = parse_fields(frame)
                c = self.classifier.classify(query)
            if not self._track(c, frame):
                return
            if not name or not self.track_prepared:
                if not name:
                    self.unnamed = frame.data
                    server.unnamed = frame.data
                tracker.expect(Request.PARSE)
                out.append(frame.data)
                return
            server_name = server_statement_name(query, rest)
            stmt = PreparedStatement(
                name, server_name, query, make_parse(server_name, query, rest), c
            )
            self.prepared[name] = stmt
            if server.statements.touch(server_name):
                tracker.synthesize(PARSE_COMPLETE, self._to_client)
            else:
                self._prepare_on(server, stmt, visible=True)
        elif kind == b"B":
            start, end = bind_statement(frame)
            name = frame.data[start:end].decode(errors="replace")
            if name:
                bound = self.prepared.get(name)
                if bound is not None and unit is not None and not bound.classification.read_only:
                    unit.wrote = True
                if bound is not None:
                    self._ensure_prepared(server, bound)
                    out.append(with_name(frame, start, end, bound.server_name))
                else:
                    out.append(frame.data)
            else:
                self._ensure_unnamed(server)
                out.append(frame.data)
            tracker.expect(Request.BIND)
        elif kind == b"E":
            tracker.expect(Request.EXECUTE)
            out.append(frame.data)
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

    def _search_path(self) -> str:
        return self.settings.get("search_path", "")

    def _prepare_on(
        self, server: ServerConnection, stmt: PreparedStatement, *, visible: bool
    ) -> None:
        tracker = server.tracker
        for evicted in server.statements.add(stmt.server_name):
            self._to_server.append(close_statement(evicted))
            tracker.expect(Request.CLOSE, visible=False)
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

    def _track(self, c: Classification, frame: Frame) -> bool:
        """Record what a statement does to session state; False if it was refused."""
        if c.pins and self.refuse_session_state and self.mode is not PoolMode.SESSION:
            reasons = ", ".join(p.value for p in c.pins)
            self._refuse(
                frame,
                "0A000",
                f"statement keeps session state ({reasons}), which this pool refuses",
                'set session_state = "pin" on the cluster, or use pool_mode = "session"',
            )
            return False
        if self.mode is PoolMode.STATEMENT and _begins_transaction(c):
            self._refuse(
                frame,
                "0A000",
                "transactions are not allowed in statement pooling",
                'use pool_mode = "transaction" for this user or cluster',
            )
            return False
        if not c.read_only and self.unit is not None:
            self.unit.wrote = True
        if c.reason is Reason.DDL:
            self.session.service.poke_volatility(self.cluster.config.name)
        for pin in c.pins:
            if pin not in self.pins:
                log.info("%r: pinned to its server connection: %s", self.session, pin.value)
            self.pins[pin] = self.pins.get(pin, 0) + 1
        for event in c.unpins:
            for pin in _UNPINS.get(event, frozenset()):
                if self.pins.pop(pin, None) is not None:
                    log.info("%r: unpinned (%s)", self.session, event.value)
            if event in (UnpinEvent.DISCARD_ALL, UnpinEvent.DEALLOCATE_ALL) and self.server:
                self.server.statements.clear()
                self.server.unnamed = None
                if event is UnpinEvent.DISCARD_ALL:
                    self.prepared.clear()
                    self._pending_settings.append(SettingChange("", None, False, reset_all=True))
        if c.tx in (TxAction.ROLLBACK, TxAction.ROLLBACK_PREPARED):
            self._rollback = True
        for change in c.settings:
            if not change.local:
                self._pending_settings.append(change)
        return True

    def _refuse(self, frame: Frame, sqlstate: str, message: str, hint: str) -> None:
        """Answer a client request with an error, as the server would, without sending it."""
        error = codec.error_response(sqlstate, message, severity="ERROR", hint=hint)
        if frame.type == b"Q":
            if self.server is not None:
                self.server.tracker.synthesize(error + READY_IDLE, self._to_client)
            else:
                self._to_client.append(error + READY_IDLE)
        else:
            # Extended protocol: the error, then the server would skip to the next Sync.
            if self.server is not None:
                self.server.tracker.synthesize(error, self._to_client)
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
        status, rows = found
        unit = self.unit
        if rows and unit is not None:
            unit.rows_sent = True
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
            if unit is not None:
                if kind == b"E":
                    unit.errors += 1
                    msg = codec.decode_backend(frame)
                    sqlstate = msg.sqlstate if isinstance(msg, codec.ErrorResponse) else ""
                    if sqlstate in _PROBE_NOW:
                        self.cluster.runtime.poke(server.server)
                    if (
                        sqlstate == _READ_ONLY_SQLSTATE
                        and unit.retry_frames is not None
                        and not unit.rows_sent
                    ):
                        self._retry_on_primary(server, unit)
                        self._flush()
                        return
                elif kind in (b"T", b"D", b"G", b"H"):
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
        self._flush()

    def _ready(self, server: ServerConnection, status: bytes) -> bool:
        """A ReadyForQuery with transaction status `status` reached the client. True if it was
        the last response owed, so the work in flight ended (`_end_of_work`)."""
        server.tx_status = status
        if status == b"E":
            self._tx_failed = True
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
        if status != b"I":
            if self.mode is PoolMode.STATEMENT:
                self._abort_statement_transaction(server)
            return
        if self._pending_settings:
            if not self._tx_failed and not self._rollback and (unit is None or not unit.errors):
                self._apply_settings()
            server.applied = dict(self.settings)
            self._pending_settings.clear()
        self._rollback = False
        self._tx_failed = False
        if self._position_rows is not None:
            self._learn_position(self._position_rows)
            self._position_rows = None
        elif (
            self.read_your_writes
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
            return
        if self.pins:
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
            unit.pool.release(server)
        # Reading from the client may have been paused while that server's socket was full.
        self.session.resume_reading()
        self._drain_backlog()

    def _learn_position(self, rows: list[bytes]) -> None:
        for data in rows:
            msg = codec.decode_backend(codec.parse_frame(data))
            if isinstance(msg, codec.DataRow) and msg.values and msg.values[0] is not None:
                position = int(msg.values[0].split(b".")[0])
                if self.min_position is None or position > self.min_position:
                    self.min_position = position

    def _apply_settings(self) -> None:
        for change in self._pending_settings:
            if change.reset_all:
                self.settings = dict(self.startup_settings)
            elif change.value is None:
                if change.name in self.startup_settings:
                    self.settings[change.name] = self.startup_settings[change.name]
                else:
                    self.settings.pop(change.name, None)
            else:
                self.settings[change.name] = change.value

    def _abort_statement_transaction(self, server: ServerConnection) -> None:
        """Statement pooling found a transaction left open: roll it back, close the client."""
        self._to_server.append(codec.Query("ROLLBACK").encode())
        server.tracker.expect(Request.QUERY, visible=False)
        self._flush()
        self.session.fatal(
            "0A000",
            "transactions are not allowed in statement pooling; it was rolled back",
            hint='use pool_mode = "transaction" for this user or cluster',
        )

    def _retry_on_primary(self, server: ServerConnection, unit: _Unit) -> None:
        """A replica refused a read as read-only (25006): re-run it on the primary."""
        if unit.retry_sql is not None:
            self.classifier.remember_write(unit.retry_sql)
        log.info(
            "%r: replica %s refused a read as read-only; retrying on the primary",
            self.session,
            server.server.name,
        )
        self._retry(server, unit, Decision(Target.PRIMARY, RouteReason.REMEMBERED_WRITE))

    def _retry(self, server: ServerConnection, unit: _Unit, decision: Decision) -> None:
        """Run the unit's frames again elsewhere; the failed connection is dropped."""
        frames = unit.retry_frames or []
        self.server = None
        server.detach()
        if unit.pool is not None:
            unit.pool.release(server, reusable=False, reason=DropReason.BROKEN)
        self._pending_settings.clear()
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
                "08006",
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
        self._pending_settings.clear()
        self._rollback = False
        self._tx_failed = False
        self._position_rows = None
        if self.pins:
            log.warning("%r: session state lost with %s", self.session, server.server.name)
            self.pins.clear()
        error = codec.error_response(
            "08006",
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
        if self._to_client:
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
            elif clean and not self.pins:
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
        return "53300"
    return "08006"
