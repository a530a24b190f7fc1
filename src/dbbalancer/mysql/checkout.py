"""Getting a connection for a MySQL client's unit of work, re-running it, and giving the
connection back (transaction pooling, issue #12; PostgreSQL's counterpart is
`postgres/checkout.py`).

The effects of `core/unitofwork.py` that move connections for a `mysql.engine.TxEngine`: routing
the waiting command (`core.routing.decide` on `mysql/classify`'s answer, with the session's facts)
and checking a connection out for it (`core/cluster.py`, `core/pool.py`), waiting for one in a
task that replays the session state first (a pooled connection found dead is dropped and another
taken, on another server for a replica read), re-running a replica read on the primary or
elsewhere, failing a unit that got no connection or lost it, and releasing connections (reset
when the client changed session state). Each outcome is raised back to the engine's table as its
event (`CONNECTED`, `CONNECTED_READ`, `MUST_WAIT`, `NO_SERVER`).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Final

from dbbalancer.config import Route
from dbbalancer.config.model import ReadOnlyTransactions
from dbbalancer.core.cluster import NoServerAvailable
from dbbalancer.core.errors import ErrorCode
from dbbalancer.core.pool import DropReason, Pool, PoolClosed, PoolTimeout
from dbbalancer.core.routing import SessionFacts, Target, decide
from dbbalancer.core.statement import Classification
from dbbalancer.core.unitofwork import UnitEvent, UnitState
from dbbalancer.mysql.backend import ServerConnection, ServerError, ServerUnavailable
from dbbalancer.mysql.codec import Capability, CommandByte, ComSetOption, Packet
from dbbalancer.mysql.insertid import restore_sql
from dbbalancer.mysql.startup import MULTI_STATEMENTS_OFF, MULTI_STATEMENTS_ON

if TYPE_CHECKING:
    from dbbalancer.mysql.engine import TxEngine

__all__ = ["UnitCheckout"]

log = logging.getLogger(__name__)

# Dead pooled connections skipped in one checkout before the unit fails.
_CHECKOUT_ATTEMPTS: Final = 4

# Sets what FOUND_ROWS() answers to 0 (COM_RESET_CONNECTION leaves the last client's).
_NO_ROWS: Final = "SELECT 0 FROM DUAL WHERE 0"

_Offer = tuple[Pool[ServerConnection], ServerConnection, bool]  # (pool, connection, replica)


class UnitCheckout:
    """One client's connections for its units (see the module docstring)."""

    def __init__(self, engine: TxEngine) -> None:
        self.engine = engine
        config = engine.cluster.config
        self.split = config.read_write_split
        self.ro_tx_to_replica = config.read_only_transactions is ReadOnlyTransactions.REPLICA
        user = engine.session.user
        self.default_primary = user is not None and user.default_route is Route.PRIMARY
        done = engine.session.logged_in
        self.profile = done.profile.name if done is not None else ""
        self.offer: _Offer | None = None  # checked out, not attached yet
        self.failure: tuple[ErrorCode, str] | None = None
        self.force_primary = False  # a replica refused the unit's read: run it on the primary
        self.exclude: frozenset[str] = frozenset()  # servers that failed this unit
        self.target_wanted = Target.PRIMARY

    # -- routing and checkout -------------------------------------------------------------

    def _target(self, c: Classification | None) -> Target:
        engine = self.engine
        if self.force_primary or c is None or c.autocommit is False:
            return Target.PRIMARY
        state = engine.state
        decision = decide(
            c,
            split=self.split,
            default_primary=self.default_primary,
            read_only_transactions_to_replica=self.ro_tx_to_replica,
            session=SessionFacts(autocommit=not state.autocommit_off, pinned=state.pinned),
        )
        log.debug("%r: %s (%s)", engine.session, decision.target.value, decision.reason.value)
        return decision.target

    def route(self) -> None:
        """Route the command that waits first and offer it an idle connection, or wait."""
        engine = self.engine
        if not engine.backlog:
            return
        c = engine.classify(engine.backlog[0])
        target = self._target(c)
        runtime = engine.cluster.runtime
        if not engine.state.dirty and not self.exclude:
            user = engine.session.user
            assert user is not None
            found = runtime.try_checkout(
                user.name, target, min_position=engine.min_position, profile=self.profile
            )
            if not isinstance(found, list):
                choice, pool, conn = found
                self._offered(pool, conn, runtime.primary() != choice.server)
                return
        self.target_wanted = target
        engine.fire(UnitEvent.MUST_WAIT)

    def _offered(self, pool: Pool[ServerConnection], conn: ServerConnection, replica: bool) -> None:
        self.offer = (pool, conn, replica)
        self.engine.fire(UnitEvent.CONNECTED_READ if replica else UnitEvent.CONNECTED)

    async def acquire(self) -> None:
        """Check a connection out (waiting if need be) and replay the session on it. A pooled
        connection found dead (its server went away while it was idle) is dropped and another
        one taken, on another server for a replica read."""
        found: _Offer | None = None
        for _ in range(_CHECKOUT_ATTEMPTS):
            found = await self._checkout_once()
            if found is not None or self.failure is not None:
                break
        if found is None:
            if self.failure is None:
                self.failure = (ErrorCode.SERVER_UNAVAILABLE, "no server connection")
            if self.engine.unit is not UnitState.CLOSED:
                self.engine.fire(UnitEvent.NO_SERVER)
            return
        self.exclude = frozenset()
        pool, conn, replica = found
        self._offered(pool, conn, replica)

    async def _checkout_once(self) -> _Offer | None:
        """One checkout and replay; None with `failure` set when the unit must fail, None
        without it when the connection died and another may be tried."""
        engine = self.engine
        user = engine.session.user
        assert user is not None
        runtime = engine.cluster.runtime
        target = self.target_wanted
        try:
            choice, pool, conn = await runtime.checkout(
                user.name,
                target,
                wait_limit=engine.cluster.config.query_wait_timeout,
                min_position=engine.min_position if target is Target.REPLICA else None,
                exclude=self.exclude,
                profile=self.profile,
            )
        except PoolTimeout as timeout:
            self.failure = (ErrorCode.POOL_TIMEOUT, str(timeout))
            return None
        except (NoServerAvailable, ServerUnavailable, PoolClosed) as unavailable:
            self.failure = (ErrorCode.SERVER_UNAVAILABLE, str(unavailable))
            return None
        except Exception as exc:
            self.failure = (ErrorCode.SERVER_UNAVAILABLE, f"no server connection: {exc}")
            return None
        replica = runtime.primary() != choice.server
        try:
            await self._replay(conn)
        except ServerError as refused:
            message = f"replaying the session: {refused.message}"
            self.failure = (ErrorCode.SERVER_UNAVAILABLE, message)
            await self._give_back(pool, conn)
            return None
        except Exception as gone:
            log.info("%r: %r is gone (%s); taking another", engine.session, conn, gone)
            pool.release(conn, reusable=False, reason=DropReason.BROKEN)
            if replica:
                self.exclude = self.exclude | {conn.server.name}
                runtime.report_failure(conn.server)
            return None
        return pool, conn, replica

    async def prepare_for(self, packet: Packet, conn: ServerConnection, *, fresh: bool) -> None:
        """Before `packet`, a statement that asks about the previous one, runs: with `fresh`,
        reset the connection (another client's statement ran last there) and replay the
        session; give it the client's last insert id; then send `packet` (a connection that
        fails here is lost, as if it died before the command)."""
        engine = self.engine
        value = engine.state.last_insert_id
        log.debug("%r: %r gets the last insert id %d first", engine.session, conn, value)
        conn.detach()
        try:
            if fresh:
                await conn.reset()
                engine.session.service.statements.forget_connection(conn)
                await conn.query(_NO_ROWS)  # a reset keeps FOUND_ROWS()
                await self._replay(conn)
            if value or not fresh:
                await conn.query(restore_sql(value))
                conn.insert_id = (None, value)
        except Exception as exc:
            log.info("%r: preparing the connection failed (%s)", engine.session, exc)
            conn.mark_broken()
        engine.ids.restoring = False
        if engine.unit is UnitState.CLOSED or engine.conn is not conn:
            return  # the client left meanwhile: the connection went back or was dropped
        if not conn.broken:
            conn.attach(engine.session)
        engine.write(packet, conn)
        engine.session.engine_ready()

    async def _replay(self, conn: ServerConnection) -> None:
        engine = self.engine
        state = engine.state
        statements = state.replay_statements()
        switch = state.multi_statements_switch()
        if switch is True:
            await conn.roundtrip(ComSetOption(MULTI_STATEMENTS_ON).encode())
        if len(statements) == 1 or (
            statements and (switch is True or conn.capabilities & Capability.MULTI_STATEMENTS)
        ):
            await conn.query("; ".join(statements))
        else:
            # A connection of a profile without multi-statements takes them one by one.
            for statement in statements:
                await conn.query(statement)
        if switch is False:
            await conn.roundtrip(ComSetOption(MULTI_STATEMENTS_OFF).encode())

    def attach(self) -> None:
        """The offered connection becomes the unit's (and the session's)."""
        offer, self.offer = self.offer, None
        assert offer is not None
        pool, conn, replica = offer
        engine = self.engine
        engine.conn, engine.pool, engine.on_primary = conn, pool, not replica
        engine.held_dirty = engine.state.dirty
        engine.ids.inherited = conn.last_user is not None and conn.last_user is not engine.ids
        session = engine.session
        session.server, session.pool = conn, pool
        conn.attach(session)

    def fail_unit(self) -> None:
        """No connection for the waiting command: answer it with the checkout's error."""
        engine = self.engine
        failure, self.failure = self.failure, None
        if engine.backlog:
            packet = engine.backlog.popleft()
            code, message = failure or (ErrorCode.SERVER_UNAVAILABLE, "no server connection")
            engine.session.answer_error(packet, code, message)
        self.force_primary = False
        self.exclude = frozenset()
        engine.session.engine_ready()

    # -- failures and re-runs -------------------------------------------------------------

    def fail_lost(self) -> None:
        """The unit's connection broke mid-unit: drop it; the client is told and closed."""
        conn = self._drop_conn()
        name = conn.server.name if conn is not None else "?"
        self.engine.session.lost_mid_unit(f"Lost connection to server {name} during query")

    def _drop_conn(self) -> ServerConnection | None:
        engine = self.engine
        conn, pool = engine.conn, engine.pool
        engine.conn = engine.pool = None
        engine.session.server = engine.session.pool = None
        if conn is not None:
            conn.detach()
            if pool is not None:
                pool.release(conn, reusable=False, reason=DropReason.BROKEN)
        return conn

    def rerun(self, *, primary: bool) -> None:
        """Run the recorded replica read again: on the primary after a read-only refusal (the
        classifier remembers it as a write), or elsewhere after its replica was lost."""
        engine = self.engine
        packet, engine.recorded = engine.recorded, None
        conn = engine.conn
        if primary:
            c = engine.classify(packet) if packet is not None else None
            if packet is not None and c is not None:
                engine.session.service.classifier.remember_write(engine.statement_text(packet))
            log.info("%r: a replica refused a read as a write; running it on the primary", engine)
            self.force_primary = True
            self.release()
        else:
            log.info("%r: replica lost before answering; running the read again", engine.session)
            if conn is not None:
                self.exclude = self.exclude | {conn.server.name}
                engine.cluster.runtime.report_failure(conn.server)
            self._drop_conn()
        engine.sent = engine.sent_class = None
        if packet is not None:
            engine.backlog.appendleft(packet)
        self.route()

    # -- giving back ----------------------------------------------------------------------

    def release(self) -> None:
        """Give the unit's connection back (reset when it carries session state); dropped when
        it is mid-command or broken."""
        engine = self.engine
        conn, pool = engine.conn, engine.pool
        engine.conn = engine.pool = None
        engine.session.server = engine.session.pool = None
        if conn is None or pool is None:
            return
        mid = conn.in_flight
        conn.detach()
        if mid or conn.broken:
            pool.release(conn, reusable=False, reason=DropReason.CLIENT_GONE_MID_TRANSACTION)
            return
        state = engine.state
        reset = (
            engine.held_dirty
            or engine.touched
            or state.dirty
            or state.pinned
            or conn.in_transaction
        )
        engine.held_dirty = engine.touched = False
        if not reset:
            pool.release(conn)
            return
        engine.session.service.spawn(self._give_back(pool, conn))

    def release_unused(self) -> None:
        """Give back a connection checked out for a unit that no longer needs it."""
        offer, self.offer = self.offer, None
        if offer is not None:
            self.engine.session.service.spawn(self._give_back(offer[0], offer[1]))

    async def _give_back(self, pool: Pool[ServerConnection], conn: ServerConnection) -> None:
        """Reset the connection (and give it back its profile's statement mode and the
        cluster's database). The database is restored whatever the tracking says: a reset
        keeps the current database, and a `USE` the tracking missed must not reach the next
        client."""
        state = self.engine.state
        restore: list[bytes] = []
        if state.multi_statements_switch() is not None:
            default = (
                MULTI_STATEMENTS_OFF if state.default_multi_statements_off else MULTI_STATEMENTS_ON
            )
            restore.append(ComSetOption(default).encode())
        restore.append(bytes((CommandByte.INIT_DB,)) + state.home_database.encode("utf-8"))
        await self.engine.session.service.give_back(pool, conn, restore)
