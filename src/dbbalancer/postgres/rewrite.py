"""Per-message wire work of transaction pooling: what a client message becomes on a connection.

A client's prepared statements are parsed on each connection lazily, under shared server-side
names (`prepared.py`); the unnamed statement is re-parsed where it is missing; a Parse a
connection already holds is answered here; Close of a client statement leaves the shared one
cached. Each statement's effects on the session are recorded when it is sent (Query) or executed
(Execute of a portal). Requests the pool cannot run are refused as the server would refuse
them, and after a refusal in an extended-protocol batch the rest of the batch is dropped up to
its Sync, as the server does after an error.

When a unit starts, `classify_unit` tells routing what the waiting batch does, and what it
learnt is kept (`batch`) so that sending the batch does not parse it again.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING

from dbbalancer.config import PoolMode
from dbbalancer.core.errors import ErrorCode
from dbbalancer.core.routing import Target
from dbbalancer.core.statement import (
    Classification,
    Reason,
    StatementKind,
    TxAction,
    UnpinEvent,
)
from dbbalancer.postgres import codec
from dbbalancer.postgres.backend import ServerConnection
from dbbalancer.postgres.classify import PLAIN_READ
from dbbalancer.postgres.codec import Frame
from dbbalancer.postgres.errors import sqlstate_of
from dbbalancer.postgres.prepared import (
    PreparedStatement,
    bind_statement,
    close_statement,
    parse_fields,
    prepared_statement,
    rename_target,
    reparsed,
    server_statement_name,
    target_name,
    with_name,
)
from dbbalancer.postgres.responses import Request
from dbbalancer.postgres.sessionstate import parse_context

if TYPE_CHECKING:
    from dbbalancer.postgres.engine import Engine

PARSE_COMPLETE = codec.ParseComplete().encode()
CLOSE_COMPLETE = codec.CloseComplete().encode()
READY_IDLE = codec.ReadyForQuery(b"I").encode()
SYNC = codec.Sync().encode()
# Extended-protocol messages that do not end a batch: Parse, Bind, Describe, Execute, Close.
PIPELINED = frozenset((b"P", b"B", b"D", b"E", b"C"))
# The proxy's server-side statement names (prepared.server_statement_name), to hide in errors.
SERVER_NAME_MARK = b"dbb_"
_SERVER_NAME = re.compile(rb"dbb_[0-9a-f]{20}")


def query_text(frame: Frame, encoding: str = "utf-8") -> str:
    """The SQL of a Query message, in the client's encoding (bytes it does not hold are kept
    as they are, for the server to judge)."""
    return frame.data[5:-1].decode(encoding, "surrogateescape")


def begins_transaction(c: Classification) -> bool:
    return c.kind is StatementKind.TRANSACTION and c.tx is TxAction.BEGIN and c.statements == 1


@dataclass(frozen=True, slots=True)
class _Parsed:
    """A Query or Parse frame as routing saw it. Holding the frame keeps its id unique."""

    frame: Frame
    classification: Classification
    fields: tuple[str, str, bytes] | None  # a Parse's (name, query, rest)


class Rewriter:
    """One client's statements as its connections see them (see the module docstring)."""

    __slots__ = (
        "batch",
        "dropping",
        "engine",
        "portals",
        "prepared",
        "track_prepared",
        "unnamed",
        "unnamed_c",
        "untracked",
    )

    def __init__(self, engine: Engine, *, track_prepared: bool) -> None:
        self.engine = engine
        self.prepared: dict[str, PreparedStatement] = {}
        self.unnamed: bytes | None = None
        # Statement effects learnt at Bind for each portal, applied when it is executed.
        self.portals: dict[bytes, Classification] = {}
        self.unnamed_c: Classification | None = None  # of the client's unnamed statement
        self.untracked: dict[str, Classification] = {}  # named statements passed through
        # What routing the current batch learnt of its Query and Parse frames (by id(frame),
        # while the backlog holds them), so that sending them does not parse them again.
        self.batch: dict[int, _Parsed] = {}
        self.dropping = False  # a request was refused mid-batch: drop messages up to the Sync
        # max_prepared_statements = 0: named statements pass through untouched (as PgBouncer).
        self.track_prepared = track_prepared

    # -- without a server -----------------------------------------------------------------------

    def answer_locally(self, frame: Frame) -> bool:
        """Messages that need no server when none is attached.

        Sync, Flush and the Close of a client statement need none; nor does the Parse of a
        statement that a server connection has already parsed under the same name (same text,
        parameter types and search_path). Answering that one here matters: clients such as
        pgbench prepare synchronously while their other connections hold servers in
        transactions, and would otherwise wait on the pool forever.
        """
        engine = self.engine
        kind = frame.type
        if kind == b"P":
            if not self.track_prepared:
                return False
            name, query, rest = parse_fields(frame, engine.encoding)
            if not name:
                return False
            context = self.parse_context()
            if not engine.cluster.known_statements.touch(
                server_statement_name(query, rest, context)
            ):
                return False
            c = engine.classifier.classify(query)
            if c.pins or c.settings or c.unpins:
                return False
            self.prepared[name] = prepared_statement(name, query, rest, c, context, engine.encoding)
            engine.to_client.append(PARSE_COMPLETE)
            return True
        if kind == b"S":
            engine.to_client.append(READY_IDLE)
            return True
        if kind == b"H":
            return True
        if kind == b"C":
            close_kind, name = target_name(frame)
            if close_kind == b"S" and name in self.prepared:
                del self.prepared[name]
                engine.to_client.append(CLOSE_COMPLETE)
                return True
        return False

    def classify_unit(self, backlog: list[Frame]) -> Classification | None:
        """The classification that routes the backlog's unit: its first statement's, unless a
        later statement of the same batch is not a read or pins the session (None: unknown, go
        to the primary)."""
        classifier = self.engine.classifier
        encoding = self.engine.encoding
        first: Classification | None = None
        batch = self.batch
        batch.clear()
        unnamed: Classification | None = None  # of an unnamed Parse earlier in this batch
        for i, frame in enumerate(backlog):
            kind = frame.type
            c: Classification | None
            if kind == b"Q":
                known = classifier.classify(query_text(frame, encoding))
                batch[id(frame)] = _Parsed(frame, known, None)
                c = known
            elif kind == b"P":
                fields = parse_fields(frame, encoding)
                known = classifier.classify(fields[1])
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
            if kind not in PIPELINED:
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
                return self.untracked.get(name)
            if unnamed is not None:
                return unnamed
            if self.unnamed_c is not None:
                return self.unnamed_c
        if kind == b"D":
            describe_kind, name = target_name(frame)
            stmt = self.prepared.get(name) if describe_kind == b"S" and name else None
            if stmt is not None:
                return stmt.classification
        return None

    def sql_of(self, frames: list[Frame]) -> str | None:
        """The SQL that a re-run request cycle runs (for the classifier to learn it)."""
        for frame in frames:
            kind = frame.type
            if kind == b"Q":
                return query_text(frame, self.engine.encoding)
            if kind == b"P":
                return parse_fields(frame, self.engine.encoding)[1]
            if kind == b"B":
                start, end = bind_statement(frame)
                bound = self.prepared.get(frame.data[start:end].decode(errors="replace"))
                return bound.query if bound is not None else None
        return None

    def client_names(self, frame: Frame) -> Frame:
        """An ErrorResponse with the client's statement names in place of the proxy's own
        server-side names: no `dbb_...` name ever reaches a client."""
        names = {
            stmt.server_name.encode(): stmt.client_name.encode() for stmt in self.prepared.values()
        }
        body = _SERVER_NAME.sub(lambda m: names.get(m.group(0), b""), frame.data[5:])
        return codec.parse_frame(b"E" + struct.pack("!I", len(body) + 4) + body)

    # -- to the attached server -----------------------------------------------------------------

    def send(self, server: ServerConnection, frame: Frame) -> None:
        """Send one client frame to `server`, rewriting what pooling requires."""
        engine = self.engine
        tracker = server.tracker
        out = engine.to_server
        kind = frame.type
        known = self.batch.pop(id(frame), None)
        if known is not None and known.frame is not frame:
            known = None
        if kind == b"Q":
            c = known.classification if known is not None else None
            if c is None:
                c = engine.classifier.classify(query_text(frame, engine.encoding))
            if not c.read_only and c.functions and not engine.seqs.check(server, c, frame):
                return
            if not self.admit(c, frame):
                return
            self.effects(c, query=True)
            server.unnamed = None  # a simple query destroys the unnamed statement
            tracker.expect(Request.QUERY)
            out.append(frame.data)
        elif kind == b"P":
            if known is not None and known.fields is not None:
                name, query, rest = known.fields
                c = known.classification
            else:
                name, query, rest = parse_fields(frame, engine.encoding)
                c = engine.classifier.classify(query)
            if not self.admit(c, frame):
                return
            if not name or not self.track_prepared:
                if not name:
                    self.unnamed = frame.data
                    self.unnamed_c = c
                    server.unnamed = frame.data
                else:
                    self.untracked[name] = c
                tracker.expect(Request.PARSE)
                out.append(frame.data)
                return
            stmt = prepared_statement(name, query, rest, c, self.parse_context(), engine.encoding)
            self.prepared[name] = stmt
            if server.statements.touch(stmt.server_name):
                tracker.synthesize(PARSE_COMPLETE, engine.to_client)
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
                    bound = self._ensure_prepared(server, bound)
                    out.append(with_name(frame, start, end, bound.server_name))
                else:
                    bound_c = self.untracked.get(name)
                    out.append(data)
            else:
                bound_c = self.unnamed_c
                self._ensure_unnamed(server)
                out.append(data)
            # What the statement does to the session counts when the portal runs.
            portal = data[5 : start - 1]
            if bound_c is not None:
                self.portals[portal] = bound_c
            else:
                self.portals.pop(portal, None)
            tracker.expect(Request.BIND)
        elif kind == b"E":
            data = frame.data
            portal_c = self.portals.get(data[5 : data.index(b"\0", 5)])
            if portal_c is not None and portal_c is not PLAIN_READ:
                if (
                    not portal_c.read_only
                    and portal_c.functions
                    and not engine.seqs.check(server, portal_c, frame)
                ):
                    return
                self.effects(portal_c)
            tracker.expect(Request.EXECUTE)
            out.append(data)
        elif kind == b"D":
            describe_kind, name = target_name(frame)
            if describe_kind == b"S":
                described = self.prepared.get(name) if name else None
                if described is not None:
                    described = self._ensure_prepared(server, described)
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
                tracker.synthesize(CLOSE_COMPLETE, engine.to_client)
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

    def parse_context(self) -> str:
        """The client's settings that change what a statement means when it is parsed (which
        table a name is, what a date or time literal is): statements parsed under other values
        are not shared with it. While the unit has changed such a setting (its value may be
        local to the transaction, or not confirmed yet), what it parses is its own."""
        state = self.engine.state
        if state.transient is not None:
            return f"transient unit {state.transient}"
        return parse_context(state.settings)

    def _prepare_on(
        self, server: ServerConnection, stmt: PreparedStatement, *, visible: bool
    ) -> None:
        engine = self.engine
        tracker = server.tracker
        for evicted in server.statements.add(stmt.server_name):
            engine.to_server.append(close_statement(evicted))
            tracker.expect(Request.CLOSE, visible=False, tag=evicted)
        engine.cluster.known_statements.add(stmt.server_name)
        engine.to_server.append(stmt.parse)
        tracker.expect(Request.PARSE, visible=visible, tag=stmt.server_name)

    def _ensure_prepared(
        self, server: ServerConnection, stmt: PreparedStatement
    ) -> PreparedStatement:
        """The client's statement as `server` will run it: the one there, or parsed there now
        (under a name of the settings of now: see `reparsed`)."""
        if server.statements.touch(stmt.server_name):
            return stmt
        fresh = reparsed(stmt, self.parse_context(), self.engine.encoding)
        if fresh is not stmt:
            self.prepared[stmt.client_name] = fresh
            if server.statements.touch(fresh.server_name):
                return fresh
        self._prepare_on(server, fresh, visible=False)
        return fresh

    def _ensure_unnamed(self, server: ServerConnection) -> None:
        if self.unnamed is not None and server.unnamed != self.unnamed:
            self.engine.to_server.append(self.unnamed)
            server.tracker.expect(Request.PARSE, visible=False)
            server.unnamed = self.unnamed

    # -- statements' effects --------------------------------------------------------------------

    def admit(self, c: Classification, frame: Frame) -> bool:
        """Refuse what this pool cannot run (answering the client); True if admitted."""
        engine = self.engine
        if c.pins and engine.refuse_session_state and engine.mode is not PoolMode.SESSION:
            reasons = ", ".join(p.value for p in c.pins)
            self.refuse(
                frame,
                sqlstate_of(ErrorCode.SESSION_STATE_REFUSED),
                f"statement keeps session state ({reasons}), which this pool refuses",
                'set session_state = "pin" on the cluster, or use pool_mode = "session"',
            )
            return False
        if engine.mode is PoolMode.STATEMENT and begins_transaction(c):
            self.refuse(
                frame,
                sqlstate_of(ErrorCode.TRANSACTION_IN_STATEMENT_MODE),
                "transactions are not allowed in statement pooling",
                'use pool_mode = "transaction" for this user or cluster',
            )
            return False
        return True

    def effects(self, c: Classification, *, query: bool = False) -> None:
        """A statement is being run (a Query, or the Execute of a portal): record what it does
        to session state, in stream order."""
        engine = self.engine
        unit = engine.unit
        server = engine.server
        if not c.read_only and unit is not None:
            unit.wrote = True
            if (
                server is not None
                and (c.kind is StatementKind.WRITE or c.kind is StatementKind.UNKNOWN)
                and unit.decision.target is Target.PRIMARY
            ):
                # It may call nextval(): this client's sequence state is then on `server`.
                engine.seqs.before_write(server, query=query)
        if server is not None and UnpinEvent.DISCARD_SEQUENCES in c.unpins:
            engine.seqs.discarded(server, c)
        if c.reason is Reason.DDL:
            engine.session.service.poke_volatility(engine.cluster.config.name)
        engine.state.record(c)
        for event in c.unpins:
            if event is UnpinEvent.DISCARD_ALL or event is UnpinEvent.DEALLOCATE_ALL:
                engine.settler.drop_all_statements(engine.server)
                break

    def refuse(self, frame: Frame, sqlstate: str, message: str, hint: str) -> None:
        """Answer a client request with an error, as the server would, without sending it."""
        engine = self.engine
        error = codec.error_response(sqlstate, message, severity="ERROR", hint=hint)
        server = engine.server
        if frame.type == b"Q":
            if server is not None:
                # The ReadyForQuery comes from the server (a Sync is answered with one), so the
                # unit ends as usual and the transaction status is the server's.
                server.tracker.synthesize(error, engine.to_client)
                engine.to_server.append(SYNC)
                server.tracker.expect(Request.SYNC)
            else:
                engine.to_client.append(error + READY_IDLE)
        else:
            # Extended protocol: the error, then the server would skip to the next Sync.
            if server is not None:
                server.tracker.synthesize(error, engine.to_client)
                self.dropping = True  # as the server would after an error
            else:
                engine.to_client.append(error)
