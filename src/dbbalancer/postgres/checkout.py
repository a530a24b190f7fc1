"""Getting a connection for a unit of work, re-running it, and giving the connection back.

The effects of `core/unitofwork.py` that move connections: routing the waiting batch
(`core.routing.decide`) and checking a connection out for it (`core/cluster.py`, `core/pool.py`;
the connection holding the client's sequence state first), waiting for one in a task, re-running
a read elsewhere, failing a unit whose connection is gone, and releasing, resetting or dropping
connections. Each outcome is raised back to the machine as its event (`CONNECTED`, `MUST_WAIT`,
`NO_SERVER`, `REFUSED`, `HOME_LOST`).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from dbbalancer.config import PoolMode
from dbbalancer.core.cluster import NoServerAvailable
from dbbalancer.core.errors import ErrorCode
from dbbalancer.core.pool import DropReason, Pool, PoolClosed, PoolTimeout
from dbbalancer.core.routing import Decision, RouteReason, Target, decide
from dbbalancer.core.topology import Server
from dbbalancer.core.unitofwork import Effect, UnitEvent
from dbbalancer.postgres import codec
from dbbalancer.postgres.backend import ServerConnection, ServerError, ServerUnavailable
from dbbalancer.postgres.codec import Frame
from dbbalancer.postgres.errors import sqlstate_of
from dbbalancer.postgres.params import sync_statement
from dbbalancer.postgres.responses import Request
from dbbalancer.postgres.rewrite import PIPELINED, READY_IDLE, begins_transaction

if TYPE_CHECKING:
    from dbbalancer.postgres.engine import Engine

log = logging.getLogger(__name__)

# Enum members as module constants: compiled, a constant is read without an attribute lookup.
_E_CONNECTED: Final = UnitEvent.CONNECTED
_E_CONNECTED_READ: Final = UnitEvent.CONNECTED_READ
_E_HOME_LOST: Final = UnitEvent.HOME_LOST
_E_MUST_WAIT: Final = UnitEvent.MUST_WAIT
_E_NO_SERVER: Final = UnitEvent.NO_SERVER
_E_REFUSED: Final = UnitEvent.REFUSED
_F_DETACH_HOME: Final = Effect.DETACH_HOME
_F_RESET_AND_RELEASE: Final = Effect.RESET_AND_RELEASE


@dataclass(slots=True)
class Unit:
    """The unit of work in progress (where it stands is its engine's `uow` state)."""

    decision: Decision
    server: ServerConnection | None = None
    pool: Pool[ServerConnection] | None = None
    # A replica read that may be re-run elsewhere (READING, HOLDING): the frames sent for it.
    retry_frames: list[Frame] | None = None
    mark: int = 0  # where its output starts in the engine's client buffer
    started: float = 0.0  # when a replica unit was sent (least_latency learns from it)
    errors: int = 0
    wrote: bool = False  # ran something that is not a read (read-your-writes)
    exclude: frozenset[str] = frozenset()  # servers that already failed this unit


class Checkout:
    """One client's connections for its units (see the module docstring)."""

    __slots__ = ("engine", "failure", "order")

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.order: list[Server] = []  # the balancing order a waiting checkout follows
        self.failure = ("", "")  # (sqlstate, message) of the checkout that failed

    # -- routing and checkout -------------------------------------------------------------------

    def start_unit(self) -> None:
        """Route the unit that begins with backlog[0] and get it a server connection."""
        engine = self.engine
        c = engine.rewriter.classify_unit(engine.backlog)
        if c is not None and engine.mode is PoolMode.STATEMENT and begins_transaction(c):
            engine.fire(_E_REFUSED)
            return
        if c is None:
            decision = Decision(Target.PRIMARY, RouteReason.WRITE)
        else:
            decision = decide(
                c,
                split=engine.split,
                default_primary=engine.default_primary,
                read_only_transactions_to_replica=engine.ro_tx_to_replica,
            )
        unit = Unit(decision)
        if decision.target is Target.REPLICA and self._retryable():
            unit.retry_frames = []
        engine.unit = unit
        self._connect(unit)

    def _retryable(self) -> bool:
        """May the backlog's first request cycle be re-run elsewhere? A simple Query, or an
        extended-protocol batch that ends with a Sync, may. A batch that ends with a Flush may
        not: its client waits for answers that holding them back would withhold."""
        for frame in self.engine.backlog:
            kind = frame.type
            if kind == b"Q" or kind == b"S":
                return True
            if kind not in PIPELINED:
                return False
        return False

    def _connect(self, unit: Unit) -> None:
        """Offer the unit a connection: the session's own (session pooling), the one holding
        the client's sequence state, an idle one; or wait for one."""
        engine = self.engine
        home = engine.home
        if unit.decision.target is Target.PRIMARY and home is not None:
            if home.broken:
                # It died while the session was between statements (nobody was attached to hear).
                engine.fire(_E_HOME_LOST)
                return
            self._offer(unit, home, None)
            return
        if unit.decision.target is Target.PRIMARY:
            taken = engine.seqs.take_home()
            if taken is not None:
                self._offer(unit, taken[0], taken[1])
                return
        fast = engine.cluster.runtime.try_checkout(
            engine.user.name,
            unit.decision.target,
            min_position=engine.settler.min_position,
            exclude=unit.exclude,
        )
        if isinstance(fast, tuple):
            _, pool, server = fast
            self._offer(unit, server, pool)
            return
        self.order = fast
        engine.fire(_E_MUST_WAIT)

    def _offer(
        self, unit: Unit, server: ServerConnection, pool: Pool[ServerConnection] | None
    ) -> None:
        unit.server = server
        unit.pool = pool
        self.engine.fire(_E_CONNECTED if unit.retry_frames is None else _E_CONNECTED_READ)

    def wait_for_connection(self) -> None:
        unit = self.engine.unit
        assert unit is not None
        self.engine.session.service.spawn(self._acquire(unit, self.order))

    async def _acquire(self, unit: Unit, order: list[Server]) -> None:
        engine = self.engine
        cluster = engine.cluster
        try:
            choice, pool, server = await cluster.runtime.checkout(
                engine.user.name,
                unit.decision.target,
                wait_limit=cluster.config.query_wait_timeout,
                min_position=engine.settler.min_position,
                exclude=unit.exclude,
                order=order if unit.decision.target is Target.REPLICA else None,
            )
            if choice.fallback is not None:
                unit.decision = Decision(Target.PRIMARY, choice.fallback)
                unit.retry_frames = None
        except (PoolTimeout, NoServerAvailable, ServerUnavailable, PoolClosed, ServerError) as exc:
            sqlstate = exc.sqlstate if isinstance(exc, ServerError) else _sqlstate_for(exc)
            self.failure = (sqlstate, str(exc))
            engine.fire(_E_NO_SERVER)
            return
        except Exception:
            log.exception("%r: acquiring a server failed", engine.session)
            self.failure = (
                sqlstate_of(ErrorCode.INTERNAL_ERROR),
                "internal error in dbbalancer while choosing a server",
            )
            engine.fire(_E_NO_SERVER)
            return
        if not engine.closed:
            log.debug(
                "%r: unit to %s (%s)",
                engine.session,
                choice.server.name,
                unit.decision.reason.value,
            )
        self._offer(unit, server, pool)

    def attach(self) -> None:
        """Attach the connection offered to the unit and replay the client's settings."""
        engine = self.engine
        unit = engine.unit
        assert unit is not None
        server = unit.server
        assert server is not None
        unit.mark = len(engine.to_client)
        if unit.decision.target is Target.REPLICA:
            unit.started = time.monotonic()
        engine.server = server
        server.attach_managed(engine)
        settings = engine.state.settings
        sql = sync_statement(server.applied, settings)
        if sql is not None:
            engine.to_server.append(codec.Query(sql).encode())
            server.tracker.expect(Request.QUERY, visible=False)
            server.applied = dict(settings)

    def refuse_unit(self) -> None:
        """Statement pooling: the unit would open a transaction."""
        engine = self.engine
        first = engine.backlog.pop(0)
        engine.rewriter.refuse(
            first,
            sqlstate_of(ErrorCode.TRANSACTION_IN_STATEMENT_MODE),
            "transactions are not allowed in statement pooling",
            'use pool_mode = "transaction" for this user or cluster',
        )

    def fail_unit(self) -> None:
        """No server for this unit: error, skip its messages up to a Sync/Query, and go on."""
        engine = self.engine
        sqlstate, message = self.failure
        engine.unit = None
        backlog = engine.backlog
        engine.to_client.append(codec.error_response(sqlstate, message, severity="ERROR"))
        while backlog:
            frame = backlog.pop(0)
            if frame.type in (b"Q", b"S", b"F"):
                engine.to_client.append(READY_IDLE)
                break
        engine.flush()
        engine.session.resume_reading()
        engine.drain_backlog()

    def release_unused(self) -> None:
        """The client left while its checkout waited: the connection goes straight back."""
        unit = self.engine.unit
        if unit is not None and unit.server is not None and unit.pool is not None:
            unit.pool.release(unit.server)

    # -- re-running -----------------------------------------------------------------------------

    def rerun_on_primary(self) -> None:
        """A replica refused a read as read-only (25006): re-run it on the primary."""
        engine = self.engine
        unit = engine.unit
        server = engine.server
        assert unit is not None
        assert server is not None
        sql = engine.rewriter.sql_of(unit.retry_frames or [])
        if sql:
            engine.classifier.remember_write(sql)
            # The client's prepared statements of that text route by what was just learnt.
            learnt = engine.classifier.classify(sql)
            prepared = engine.rewriter.prepared
            for name, stmt in list(prepared.items()):
                if stmt.query == sql:
                    prepared[name] = dataclasses.replace(stmt, classification=learnt)
        log.info(
            "%r: replica %s refused a read as read-only; retrying on the primary",
            engine.session,
            server.server.name,
        )
        self._rerun(server, unit, Decision(Target.PRIMARY, RouteReason.REMEMBERED_WRITE))

    def rerun_elsewhere(self) -> None:
        """The connection died under a read that sent nothing yet: run it once elsewhere."""
        engine = self.engine
        unit = engine.unit
        server = engine.server
        assert unit is not None
        assert server is not None
        log.info("%r: %s died under a read; retrying it", engine.session, server.server.name)
        self._rerun(server, unit, Decision(Target.REPLICA, RouteReason.READ))
        engine.flush()

    def _rerun(self, server: ServerConnection, unit: Unit, decision: Decision) -> None:
        """Run the unit's frames again elsewhere; the failed connection is dropped."""
        engine = self.engine
        frames = unit.retry_frames or []
        del engine.to_client[unit.mark :]  # held back: the client never saw it
        engine.server = None
        server.detach()
        if unit.pool is not None:
            unit.pool.release(server, reusable=False, reason=DropReason.BROKEN)
        engine.state.forget_pending()  # the frames record their effects again when re-sent
        engine.settler.forget(lost=False)
        engine.backlog = frames + engine.backlog
        retry = Unit(decision, exclude=unit.exclude | {server.server.name})
        engine.unit = retry
        self._connect(retry)

    # -- losing and releasing -------------------------------------------------------------------

    def fatal_lost(self) -> None:
        """The session's own connection (session pooling) is gone: so is the session."""
        engine = self.engine
        home = engine.home
        name = home.server.name if home is not None else "the primary"
        engine.home = None
        engine.server = None
        engine.session.fatal(
            sqlstate_of(ErrorCode.SERVER_CONNECTION_LOST),
            f"server connection to {name} was lost",
            hint="reconnect; the server may be restarting",
        )

    def fail_lost(self, *, mid_pipeline: bool) -> None:
        """Tell the client its unit failed with its connection; the session itself goes on."""
        engine = self.engine
        server = engine.server
        assert server is not None
        unit = engine.unit
        engine.server = None
        engine.unit = None
        server.tracker.clear()
        if unit is not None and unit.pool is not None:
            unit.pool.release(server, reusable=False, reason=DropReason.BROKEN)
        state = engine.state
        state.forget_pending()
        engine.seqs.ledger.lost_connection(server)
        engine.rewriter.dropping = False
        engine.settler.forget(lost=True)
        state.pinned_since_release = False
        if state.pins:
            log.warning("%r: session state lost with %s", engine.session, server.server.name)
            state.pins.clear()
        error = codec.error_response(
            sqlstate_of(ErrorCode.SERVER_CONNECTION_LOST),
            f"server connection to {server.server.name} was lost; "
            "the transaction, if any, did not commit",
            severity="ERROR",
            hint="run the statement or transaction again",
        )
        if mid_pipeline:
            # Like the server after an error: the client's messages up to its Sync are skipped.
            engine.to_client.append(error)
        else:
            engine.to_client.append(error + READY_IDLE)
        engine.flush()

    def rollback_and_close(self) -> None:
        """Statement pooling found a transaction left open: roll it back, close the client."""
        engine = self.engine
        server = engine.server
        assert server is not None
        engine.to_server.append(codec.Query("ROLLBACK").encode())
        server.tracker.expect(Request.QUERY, visible=False)
        engine.flush()
        engine.session.fatal(
            sqlstate_of(ErrorCode.TRANSACTION_IN_STATEMENT_MODE),
            "transactions are not allowed in statement pooling; it was rolled back",
            hint='use pool_mode = "transaction" for this user or cluster',
        )

    def release(self, how: Effect) -> None:
        """The unit ended: detach its connection and give it back (`how`: RELEASE,
        RESET_AND_RELEASE, or DETACH_HOME for the session's own connection)."""
        engine = self.engine
        unit = engine.unit
        server = engine.server
        assert server is not None
        engine.unit = None
        engine.server = None
        server.detach()
        if how is _F_DETACH_HOME or unit is None or unit.pool is None:
            return
        if unit.started:
            engine.cluster.runtime.latency.observe(
                server.server.name, time.monotonic() - unit.started
            )
        if how is _F_RESET_AND_RELEASE:
            # Its pins ended, but it held session state: reset it before anyone else gets it.
            engine.state.pinned_since_release = False
            engine.session.give_back(server, unit.pool, clean=True)
        else:
            # A connection that holds some client's sequence state is handed out last,
            # so writers take connections that hold nobody's first.
            unit.pool.release(server, cold=server.seq_owner is not None)

    def give_back(self) -> None:
        """The client is gone: give back or drop every server connection."""
        engine = self.engine
        server = engine.server
        unit = engine.unit
        engine.server = None
        if server is not None and server is not engine.home:
            clean = server.tracker.idle and server.tx_status == b"I"
            server.detach()
            pool = unit.pool if unit is not None else None
            if pool is None:
                server.close()
            elif clean and not engine.state.pins and not engine.state.pinned_since_release:
                pool.release(server)
            else:
                # Session state left behind (pins) is reset; a transaction in flight is dropped.
                engine.session.give_back(server, pool, clean=clean)
        home = engine.home
        engine.home = None
        if home is not None and engine.home_pool is not None:
            clean = home.tracker.idle and home.tx_status == b"I"
            home.detach()
            engine.session.give_back(home, engine.home_pool, clean=clean)


def _sqlstate_for(exc: Exception) -> str:
    if isinstance(exc, PoolTimeout):
        return sqlstate_of(ErrorCode.POOL_TIMEOUT)
    return sqlstate_of(ErrorCode.SERVER_UNAVAILABLE)
