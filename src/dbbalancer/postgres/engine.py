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

When a unit starts and ends, what waits and what is held back are the rules of
`core/unitofwork.py`: this module turns what happens into its events and carries out the
effects its table names (`_fire`, `_do`). The wire work is in `rewrite.py` (what a client
message becomes on a connection), `settle.py` (hidden requests at the end of a unit),
`sequencing.py` (sequence state) and `checkout.py` (getting a connection for a unit).
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Final

from dbbalancer.config import PoolMode, ReadOnlyTransactions, Route, SessionStatePolicy
from dbbalancer.core.errors import PROBE_AT_ONCE, RETRY_ON_PRIMARY
from dbbalancer.core.pool import Pool
from dbbalancer.core.unitofwork import (
    HOLDS_OUTPUT,
    RULES,
    SENDS_FRAMES,
    Effect,
    UnitEvent,
    UnitState,
    work_done,
)
from dbbalancer.postgres import codec
from dbbalancer.postgres.backend import ServerConnection
from dbbalancer.postgres.checkout import Checkout, Unit
from dbbalancer.postgres.codec import Frame
from dbbalancer.postgres.errors import class_of
from dbbalancer.postgres.params import python_codec
from dbbalancer.postgres.rewrite import PIPELINED, READY_IDLE, SERVER_NAME_MARK, Rewriter
from dbbalancer.postgres.sequencing import SequenceKeeper
from dbbalancer.postgres.sessionstate import SessionState
from dbbalancer.postgres.settle import Settler
from dbbalancer.postgres.stream import scan_plain

if TYPE_CHECKING:
    from dbbalancer.postgres.frontend import ClientSession

log = logging.getLogger(__name__)

_BACKLOG_PAUSE = 256
# Server messages after which a read can no longer be re-run elsewhere: rows, a completion, a
# COPY, an empty query, a suspended portal. A RowDescription (sent before a SELECT executes),
# ParseComplete or BindComplete is held back with the rest and may still be withdrawn.
_COMMITS = frozenset((b"D", b"C", b"G", b"H", b"W", b"I", b"s"))
# Enum members as module constants: compiled, a constant is read without an attribute lookup.
_E_CLOSE: Final = UnitEvent.CLOSE
_E_FLUSH: Final = UnitEvent.FLUSH
_E_FRAME: Final = UnitEvent.FRAME
_E_HOME_LOST: Final = UnitEvent.HOME_LOST
_E_LOST: Final = UnitEvent.LOST
_E_LOST_MID_PIPELINE: Final = UnitEvent.LOST_MID_PIPELINE
_E_OTHER: Final = UnitEvent.OTHER
_E_QUERY: Final = UnitEvent.QUERY
_E_READ_ONLY_REFUSAL: Final = UnitEvent.READ_ONLY_REFUSAL
_E_ROWS_SENT: Final = UnitEvent.ROWS_SENT
_E_SYNC: Final = UnitEvent.SYNC
_E_TERMINATE: Final = UnitEvent.TERMINATE
_F_ANSWER_READY: Final = Effect.ANSWER_READY
_F_ASK_POSITION: Final = Effect.ASK_POSITION
_F_ATTACH: Final = Effect.ATTACH
_F_AWAIT_CONNECTION: Final = Effect.AWAIT_CONNECTION
_F_DETACH_HOME: Final = Effect.DETACH_HOME
_F_DRAIN: Final = Effect.DRAIN
_F_FAIL_LOST: Final = Effect.FAIL_LOST
_F_FAIL_UNIT: Final = Effect.FAIL_UNIT
_F_FATAL_LOST: Final = Effect.FATAL_LOST
_F_FLUSH: Final = Effect.FLUSH
_F_GIVE_BACK: Final = Effect.GIVE_BACK
_F_KEEP: Final = Effect.KEEP
_F_LEARN: Final = Effect.LEARN
_F_RECORD: Final = Effect.RECORD
_F_REFUSE_UNIT: Final = Effect.REFUSE_UNIT
_F_RELEASE: Final = Effect.RELEASE
_F_RELEASE_UNUSED: Final = Effect.RELEASE_UNUSED
_F_RERUN_ELSEWHERE: Final = Effect.RERUN_ELSEWHERE
_F_RERUN_ON_PRIMARY: Final = Effect.RERUN_ON_PRIMARY
_F_RESET_AND_RELEASE: Final = Effect.RESET_AND_RELEASE
_F_RESUME_READING: Final = Effect.RESUME_READING
_F_ROLLBACK_AND_CLOSE: Final = Effect.ROLLBACK_AND_CLOSE
_F_ROUTE: Final = Effect.ROUTE
_F_SEND: Final = Effect.SEND
_F_SEND_BACKLOG: Final = Effect.SEND_BACKLOG
_F_SETTLE: Final = Effect.SETTLE
_F_TERMINATE: Final = Effect.TERMINATE
_F_WAIT: Final = Effect.WAIT
_F_WAIT_OR_ANSWER: Final = Effect.WAIT_OR_ANSWER
_S_ACQUIRING: Final = UnitState.ACQUIRING
_S_CLOSED: Final = UnitState.CLOSED
_S_HOLDING: Final = UnitState.HOLDING
_S_IDLE: Final = UnitState.IDLE
_S_READING: Final = UnitState.READING
_S_SETTLING: Final = UnitState.SETTLING
_S_SKIPPING: Final = UnitState.SKIPPING
# The client event of each message type that is not a Parse/Bind/Describe/Execute/Close.
_CLIENT_EVENTS = {b"Q": _E_QUERY, b"S": _E_SYNC, b"H": _E_FLUSH, b"X": _E_TERMINATE}
for _kind in (b"P", b"B", b"D", b"E", b"C"):
    _CLIENT_EVENTS[_kind] = _E_FRAME
_RERUNNABLE = frozenset((_S_READING, _S_HOLDING))


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
        self.unit: Unit | None = None
        self.uow = UnitState.IDLE
        self.backlog: list[Frame] = []
        self.to_server: list[bytes] = []
        self.to_client: list[bytes] = []
        self.default_primary = user.default_route is Route.PRIMARY
        self.ro_tx_to_replica = (
            cluster.config.read_only_transactions is ReadOnlyTransactions.REPLICA
        )
        self.refuse_session_state = cluster.config.session_state is SessionStatePolicy.ERROR
        self.read_your_writes = cluster.config.read_your_writes and split
        self.rewriter = Rewriter(self, track_prepared=cluster.config.max_prepared_statements > 0)
        self.settler = Settler(self)
        self.seqs = SequenceKeeper(self)
        self.checkout = Checkout(self)
        self.last_activity = time.monotonic()

    @property
    def closed(self) -> bool:
        """The client is gone (`close` ran)."""
        return self.uow is _S_CLOSED

    # -- the machine ----------------------------------------------------------------------------

    def fire(self, event: UnitEvent, frame: Frame | None = None) -> None:
        """Raise `event` (with the client `frame` it is about, if any): enter the next state the
        table names, then carry out its effects in order."""
        effects, self.uow = RULES[self.uow][event]
        for effect in effects:
            # The effects of every client message first, without a further call.
            if effect is _F_SEND:
                server = self.server
                assert server is not None
                assert frame is not None
                self.rewriter.send(server, frame)
            elif effect is _F_WAIT_OR_ANSWER:
                assert frame is not None
                if self.backlog or not self.rewriter.answer_locally(frame):
                    self.backlog.append(frame)
            else:
                self._do(effect, event, frame)

    def _do(self, effect: Effect, event: UnitEvent, frame: Frame | None) -> None:
        """Carry out one effect other than SEND (see `core.unitofwork.Effect`)."""
        if effect is _F_RECORD:
            unit = self.unit
            if unit is not None and unit.retry_frames is not None and frame is not None:
                unit.retry_frames.append(frame)
        elif effect is _F_WAIT:
            assert frame is not None
            self.backlog.append(frame)
            if len(self.backlog) > _BACKLOG_PAUSE:
                self.session.pause_reading()
        elif effect is _F_ROUTE:
            if self.backlog:
                self.checkout.start_unit()
        elif effect is _F_ATTACH:
            self.checkout.attach()
        elif effect is _F_SEND_BACKLOG:
            self._send_backlog()
        elif effect is _F_LEARN:
            server = self.server
            assert server is not None
            self.settler.learn(server)
        elif effect is _F_SETTLE:
            server = self.server
            assert server is not None
            self.settler.settle(server, self.unit)
        elif effect is _F_RELEASE or effect is _F_RESET_AND_RELEASE or effect is _F_DETACH_HOME:
            self.checkout.release(effect)
        elif effect is _F_RESUME_READING:
            self.session.resume_reading()
        elif effect is _F_DRAIN:
            self.drain_backlog()
        elif effect is _F_KEEP:
            pass  # the unit goes on at the next message, on the same connection
        else:
            self._do_rare(effect, event, frame)

    def _do_rare(self, effect: Effect, event: UnitEvent, frame: Frame | None) -> None:
        """The effects off the hot path."""
        if effect is _F_FLUSH:
            self.flush()
        elif effect is _F_TERMINATE:
            self.session.terminate()
        elif effect is _F_ANSWER_READY:
            self.to_client.append(READY_IDLE)
        elif effect is _F_REFUSE_UNIT:
            self.checkout.refuse_unit()
        elif effect is _F_AWAIT_CONNECTION:
            self.checkout.wait_for_connection()
        elif effect is _F_FAIL_UNIT:
            self.checkout.fail_unit()
        elif effect is _F_RELEASE_UNUSED:
            self.checkout.release_unused()
        elif effect is _F_FATAL_LOST:
            self.checkout.fatal_lost()
        elif effect is _F_RERUN_ON_PRIMARY:
            self.checkout.rerun_on_primary()
        elif effect is _F_RERUN_ELSEWHERE:
            self.checkout.rerun_elsewhere()
        elif effect is _F_FAIL_LOST:
            self.checkout.fail_lost(mid_pipeline=event is _E_LOST_MID_PIPELINE)
        elif effect is _F_ROLLBACK_AND_CLOSE:
            self.checkout.rollback_and_close()
        elif effect is _F_ASK_POSITION:
            server = self.server
            assert server is not None
            self.settler.ask_position(server, self.unit)
        elif effect is _F_GIVE_BACK:
            self.checkout.give_back()
        else:
            log.warning("%r: %s cannot happen in %s; ignored", self.session, event, self.uow)

    def client_event(self, frame: Frame) -> None:
        """One client message, as its event."""
        kind = frame.type
        if self.rewriter.dropping and self.uow in SENDS_FRAMES:
            # A request of this batch was refused: as the server would, skip to its Sync.
            if kind != b"S":
                return
            self.rewriter.dropping = False
        self.fire(_CLIENT_EVENTS.get(kind, _E_OTHER), frame)

    # -- client side ----------------------------------------------------------------------------

    def client_frames(self, frames: list[Frame]) -> None:
        """Handle frames from the client, in order."""
        self.last_activity = time.monotonic()
        rewriter = self.rewriter
        for frame in frames:
            if self.uow is _S_CLOSED:
                return
            if rewriter.dropping:
                self.client_event(frame)
            else:
                self.fire(_CLIENT_EVENTS.get(frame.type, _E_OTHER), frame)
        self.flush()

    def _send_backlog(self) -> None:
        """The waiting frames raise their client events, while the state takes them (it may
        stop: a re-runnable read was sent whole, the unit ended)."""
        backlog, self.backlog = self.backlog, []
        for i, frame in enumerate(backlog):
            state = self.uow
            if state not in SENDS_FRAMES and state is not _S_SKIPPING:
                self.backlog = backlog[i:] + self.backlog
                break
            self.client_event(frame)
        self.flush()
        if self.uow is _S_IDLE and self.backlog:
            self.drain_backlog()

    def drain_backlog(self) -> None:
        """Start the next unit if frames are waiting."""
        while self.backlog and self.uow is _S_IDLE:
            frame = self.backlog[0]
            if self.rewriter.answer_locally(frame):
                self.backlog.pop(0)
                continue
            if all(f.type in PIPELINED for f in self.backlog):
                break  # the batch's Sync has not arrived: route it once it has
            self.checkout.start_unit()
        self.flush()

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
        if self.uow in _RERUNNABLE:
            self.fire(_E_ROWS_SENT)  # the request cycle completed without an error
        self.last_activity = time.monotonic()
        self.to_client.append(data)
        server.tracker.finish_plain(status)
        self._ready(server, status)
        self.flush()
        return True

    def server_frames(self, server: ServerConnection) -> None:
        """Frames from the attached server: pass them on, and end the unit at its last Ready."""
        if server is not self.server:
            return
        self.last_activity = time.monotonic()
        tracker = server.tracker
        out = self.to_client
        unit = self.unit
        for frame in server.reader:
            kind = frame.type
            if kind == b"E" and SERVER_NAME_MARK in frame.data:
                frame = self.rewriter.client_names(frame)
            if unit is not None:
                if kind == b"E":
                    unit.errors += 1
                    msg = codec.decode_backend(frame)
                    sqlstate = msg.sqlstate if isinstance(msg, codec.ErrorResponse) else ""
                    error_class = class_of(sqlstate)
                    if error_class in PROBE_AT_ONCE:
                        self.cluster.runtime.poke(server.server)
                    if error_class in RETRY_ON_PRIMARY and self.uow in _RERUNNABLE:
                        self.fire(_E_READ_ONLY_REFUSAL)
                        self.flush()
                        return
                elif kind in _COMMITS and self.uow in _RERUNNABLE:
                    self.fire(_E_ROWS_SENT)
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
        self.flush()

    def _ready(self, server: ServerConnection, status: bytes) -> bool:
        """A ReadyForQuery with transaction status `status` reached the client. True if it was
        the last response owed, so the work in flight ended (`_work_done`)."""
        server.tx_status = status
        if status == b"E":
            self.state.failed = True
        if not server.tracker.idle:
            return False
        self._work_done(server, status)
        return True

    def _work_done(self, server: ServerConnection, status: bytes) -> None:
        """Everything sent was answered: raise the event `core.unitofwork.work_done` names."""
        unit = self.unit
        settler = self.settler
        state = self.state
        event = work_done(
            in_transaction=status != b"I",
            statement_mode=self.mode is PoolMode.STATEMENT,
            read_back=settler.will_read_back(settler.doubt(unit)),
            ask_position=settler.wants_position(unit),
            pinned=bool(state.pins),
            home=server is self.home,
            reset=state.pinned_since_release,
        )
        self.fire(event)
        if self.uow is _S_SETTLING and server.tracker.idle and self._is_attached(server):
            self._work_done(server, status)  # settling found nothing to send after all

    def _is_attached(self, server: ServerConnection) -> bool:
        # Not inlined where self.server was narrowed earlier in the same function (mypy keeps
        # it narrowed across calls that may set it to None): mypyc-compiled code (setup.py)
        # would check the narrowed type at run time and raise TypeError on None.
        return self.server is server

    def server_lost(self, server: ServerConnection) -> None:
        """The attached server connection broke (the server died, or killed the backend)."""
        self.cluster.runtime.report_failure(server.server)
        if server is self.home:
            self.fire(_E_HOME_LOST)
            return
        if server is not self.server:
            return
        self.fire(_E_LOST if server.tracker.awaiting_ready() else _E_LOST_MID_PIPELINE)

    def pause_server_output(self) -> None:
        """The server cannot take more: stop reading from the client."""
        self.session.pause_reading()

    def resume_server_output(self) -> None:
        """The server drained."""
        self.session.resume_reading()

    # -- flushing and ending --------------------------------------------------------------------

    def flush(self) -> None:
        if self.to_server and self.server is not None:
            transport = self.server.transport
            if transport is not None and not transport.is_closing():
                transport.writelines(self.to_server)
        self.to_server.clear()
        if self.to_client and self.uow not in HOLDS_OUTPUT:
            self.session.write_many(self.to_client)
            self.to_client.clear()

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
        return self.server is None and self.uow is not _S_ACQUIRING and not self.backlog

    def describe(self) -> str:
        """One line of this session's pooling state, for diagnostics (a stuck client)."""
        unit = self.unit
        server = self.server
        parts = [
            f"state={self.uow.name}",
            f"server={server.server.name if server else None}",
            f"tx={server.tx_status.decode() if server else '-'}",
            f"in-flight=[{server.tracker.describe() if server else ''}]",
            "backlog=" + "".join(f.type.decode() for f in self.backlog),
            f"dropping={self.rewriter.dropping}",
            f"pins={sorted(p.value for p in self.state.pins)}",
            f"to_client={len(self.to_client)} holding={self.uow in HOLDS_OUTPUT}",
            f"position={self.settler.position_rows is not None}",
            f"settings={self.settler.settings_rows is not None}",
        ]
        if unit is not None:
            parts.append(
                f"unit=({unit.decision.target.value}/{unit.decision.reason.value} "
                f"pool={unit.pool is not None})"
            )
        return " ".join(parts)

    def attached(self) -> ServerConnection | None:
        """The connection running this client's work now (cancel requests go there)."""
        return self.server

    def close(self) -> None:
        """The client is gone: give back or drop every server connection."""
        self.fire(_E_CLOSE)
