"""Transaction pooling and read/write splitting for one MySQL client (issue #12).

The engine drives the protocol-neutral unit-of-work table (`core/unitofwork.py`): a MySQL
command is a whole request cycle, so every command is the table's QUERY event. A unit of work
is one command outside a transaction, or a transaction; it ends when the server's last status
flags say so (SERVER_STATUS_IN_TRANS clear) and nothing keeps the client on its connection
(`MySessionState.pin_reasons`, and the server's SERVER_STATUS_AUTOCOMMIT: a client with
autocommit off is held to its connection until it turns it back on).

The client session (`mysql/frontend.py`) hands the engine one command at a time (the others wait
in its queue until `busy` is false), tells it where each response ends (`response_done`) and
when the connection is lost (`lost`). Everything that talks to the wire for a unit lives here:
routing (`core/routing.decide` on `mysql/classify`'s answer), checkout with the session state
replayed (a dirty session is replayed in the checkout task before the table hears CONNECTED),
the hidden end-of-unit requests (user variables read back, the GTID of a write for
read-your-writes) and giving connections back (reset when the client changed session state).

Replica reads are held back until the server's first packet: a read-only refusal (1290, 1792)
as the whole answer re-runs the command on the primary (and the classifier remembers the
statement as a write); a replica lost before answering re-runs it on another server.
"""

from __future__ import annotations

import collections
import logging
from typing import TYPE_CHECKING, Final

from dbbalancer.config import Route
from dbbalancer.config.model import ReadOnlyTransactions
from dbbalancer.core.cluster import NoServerAvailable
from dbbalancer.core.errors import ErrorClass, ErrorCode
from dbbalancer.core.pool import DropReason, Pool, PoolClosed, PoolTimeout
from dbbalancer.core.position import Position
from dbbalancer.core.routing import Target, decide
from dbbalancer.core.statement import Classification
from dbbalancer.core.unitofwork import (
    HOLDS_OUTPUT,
    RULES,
    SENDS_FRAMES,
    Effect,
    UnitEvent,
    UnitState,
    work_done,
)
from dbbalancer.mysql.backend import ServerConnection, ServerError, ServerUnavailable
from dbbalancer.mysql.codec import (
    CommandByte,
    ComSetOption,
    OkPacket,
    Packet,
    ProtocolError,
    ServerStatus,
)
from dbbalancer.mysql.errors import class_of
from dbbalancer.mysql.gtid import MariaDbGtidPos, MySqlGtidSet
from dbbalancer.mysql.sessionstate import MySessionState, literal_of

if TYPE_CHECKING:
    from dbbalancer.mysql.frontend import ClientSession
    from dbbalancer.mysql.service import MySqlCluster

__all__ = ["TxEngine"]

log = logging.getLogger(__name__)

_S = UnitState
_E = UnitEvent
_F = Effect
# Commands that get no response: with no connection held they concern nothing on a server.
_NO_RESPONSE: Final = frozenset({CommandByte.STMT_CLOSE, CommandByte.STMT_SEND_LONG_DATA})
_BUSY_STATES: Final = frozenset({_S.ACQUIRING, _S.HOLDING, _S.SEALED, _S.SETTLING})
_MULTI_STATEMENTS_ON: Final = 0
_MULTI_STATEMENTS_OFF: Final = 1
# Dead pooled connections skipped in one checkout before the unit fails.
_CHECKOUT_ATTEMPTS: Final = 4


class TxEngine:
    """One client's units of work (see the module docstring)."""

    def __init__(
        self, session: ClientSession, cluster: MySqlCluster, state: MySessionState
    ) -> None:
        self.session = session
        self.cluster = cluster
        self.state = state
        self.unit = _S.IDLE
        config = cluster.config
        self.split = config.read_write_split
        self.read_your_writes = config.read_your_writes
        self.ro_tx_to_replica = config.read_only_transactions is ReadOnlyTransactions.REPLICA
        user = session.user
        self.default_primary = user is not None and user.default_route is Route.PRIMARY
        self.backlog: collections.deque[Packet] = collections.deque()
        self.packet: Packet | None = None  # the client command an effect works on
        self.recorded: Packet | None = None  # a replica read, to re-run elsewhere
        self.sent: Packet | None = None  # the command whose response is on its way
        self.sent_class: Classification | None = None
        self.conn: ServerConnection | None = None
        self.pool: Pool[ServerConnection] | None = None
        self.on_primary = False
        self.held_dirty = False  # the connection carries session state: reset it on release
        self.offer: tuple[Pool[ServerConnection], ServerConnection, bool] | None = None
        self.failure: tuple[ErrorCode, str] | None = None
        self.force_primary = False
        self.exclude: frozenset[str] = frozenset()
        self.wrote = False  # the unit wrote on the primary: learn its position
        self.min_position: Position | None = None
        self.hidden_running = False
        self.target_wanted = Target.PRIMARY
        self.last_insert_id = 0  # to restore on the connection before the next command

    # -- the table ------------------------------------------------------------------------

    def fire(self, event: UnitEvent) -> None:
        """Look the event up, enter the next state, carry out the effects in order."""
        effects, nxt = RULES[self.unit][event]
        self.unit = nxt
        for effect in effects:
            self._do(effect, event)

    def _do(self, effect: Effect, event: UnitEvent) -> None:
        if effect is _F.WAIT or effect is _F.WAIT_OR_ANSWER:
            self._wait(answer=effect is _F.WAIT_OR_ANSWER)
        elif effect is _F.ROUTE:
            self._route()
        elif effect is _F.SEND:
            self._send()
        elif effect is _F.RECORD:
            self.recorded = self.packet
        elif effect is _F.TERMINATE:
            self.session.quit()
        elif effect is _F.ATTACH:
            self._attach()
        elif effect is _F.SEND_BACKLOG:
            self._send_backlog()
        elif effect is _F.AWAIT_CONNECTION:
            self.session.service.spawn(self._acquire())
        elif effect is _F.RESUME_READING or effect is _F.DRAIN:
            self.session.engine_ready()
        elif effect is _F.FAIL_UNIT:
            self._fail_unit()
        elif effect is _F.RELEASE_UNUSED:
            offer, self.offer = self.offer, None
            if offer is not None:
                self.session.service.spawn(self._give_back(offer[0], offer[1], reset=True))
        elif effect is _F.RERUN_ON_PRIMARY:
            self._rerun(primary=True)
        elif effect is _F.RERUN_ELSEWHERE:
            self._rerun(primary=False)
        elif effect is _F.FAIL_LOST:
            self._fail_lost()
        elif effect is _F.SETTLE or effect is _F.ASK_POSITION:
            if self.unit is _S.SETTLING and not self.hidden_running:
                self.hidden_running = True
                self.session.service.spawn(self._hidden())
        elif effect is _F.KEEP:
            log.debug("%r: keeps its connection: %s", self.session, self.state.pin_reasons())
        elif effect is _F.RELEASE or effect is _F.RESET_AND_RELEASE:
            self._release()
        elif effect is _F.GIVE_BACK:
            self._release()
            offer, self.offer = self.offer, None
            if offer is not None:
                self.session.service.spawn(self._give_back(offer[0], offer[1], reset=True))
        elif effect is _F.LEARN or effect is _F.FLUSH:
            pass
        else:
            log.warning("%r: %s after %s in %s", self.session, effect.name, event.name, self.unit)

    # -- commands -------------------------------------------------------------------------

    @property
    def busy(self) -> bool:
        """True while the client's next command must wait in the session's queue."""
        if self.unit in _BUSY_STATES or self.backlog:
            return True
        conn = self.conn
        return conn is not None and conn.in_flight

    def command(self, packet: Packet) -> None:
        """A client command (not COM_QUIT / COM_CHANGE_USER): the table's QUERY."""
        self.packet = packet
        self.fire(_E.QUERY)

    def terminate(self) -> None:
        """COM_QUIT."""
        self.fire(_E.TERMINATE)

    def close(self) -> None:
        """The client is gone."""
        self.fire(_E.CLOSE)

    def _wait(self, *, answer: bool) -> None:
        packet = self.packet
        if packet is None:
            return
        code = packet.payload[0]
        if answer and not self.backlog:
            if code == CommandByte.PING:
                self.session.answer_locally(packet, OkPacket(status_flags=self._status()))
                return
            if code in _NO_RESPONSE:
                self.session.answer_locally(packet, None)
                return
        self.backlog.append(packet)

    def _status(self) -> int:
        return ServerStatus.AUTOCOMMIT

    def _classify(self, packet: Packet) -> Classification | None:
        if packet.payload[0] != CommandByte.QUERY:
            return None
        return self.session.service.classifier.classify(
            bytes(packet.payload[1:]).decode("utf-8", "replace")
        )

    def _target(self, c: Classification | None) -> Target:
        if self.force_primary or c is None or c.autocommit is False:
            return Target.PRIMARY
        decision = decide(
            c,
            split=self.split,
            default_primary=self.default_primary,
            read_only_transactions_to_replica=self.ro_tx_to_replica,
        )
        log.debug("%r: %s (%s)", self.session, decision.target.value, decision.reason.value)
        return decision.target

    def _route(self) -> None:
        if not self.backlog:
            return
        c = self._classify(self.backlog[0])
        target = self._target(c)
        runtime = self.cluster.runtime
        self.last_insert_id = 0
        if c is not None and c.uses_last_result:
            # The statement asks about the previous one, which ran on a connection that may
            # have served others since: LAST_INSERT_ID() is given back its value first.
            self.last_insert_id = self.state.last_insert_id
        if not self.state.dirty and not self.exclude and not self.last_insert_id:
            user = self.session.user
            assert user is not None
            found = runtime.try_checkout(user.name, target, min_position=self.min_position)
            if not isinstance(found, list):
                choice, pool, conn = found
                self._offered(pool, conn, runtime.primary() != choice.server)
                return
        self.target_wanted = target
        self.fire(_E.MUST_WAIT)

    def _offered(self, pool: Pool[ServerConnection], conn: ServerConnection, replica: bool) -> None:
        self.offer = (pool, conn, replica)
        self.fire(_E.CONNECTED_READ if replica else _E.CONNECTED)

    async def _acquire(self) -> None:
        """Check a connection out (waiting if need be) and replay the session on it. A pooled
        connection found dead (its server went away while it was idle) is dropped and another
        one taken, on another server for a replica read."""
        found: tuple[Pool[ServerConnection], ServerConnection, bool] | None = None
        for _ in range(_CHECKOUT_ATTEMPTS):
            found = await self._checkout_once()
            if found is not None or self.failure is not None:
                break
        if found is None:
            if self.failure is None:
                self.failure = (ErrorCode.SERVER_UNAVAILABLE, "no server connection")
            if self.unit is not _S.CLOSED:
                self.fire(_E.NO_SERVER)
            return
        self.exclude = frozenset()
        pool, conn, replica = found
        self._offered(pool, conn, replica)

    async def _checkout_once(
        self,
    ) -> tuple[Pool[ServerConnection], ServerConnection, bool] | None:
        """One checkout and replay; None with `failure` set when the unit must fail, None
        without it when the connection died and another may be tried."""
        user = self.session.user
        assert user is not None
        runtime = self.cluster.runtime
        target = self.target_wanted
        try:
            choice, pool, conn = await runtime.checkout(
                user.name,
                target,
                wait_limit=self.cluster.config.query_wait_timeout,
                min_position=self.min_position if target is Target.REPLICA else None,
                exclude=self.exclude,
            )
        except PoolTimeout as exc:
            self.failure = (ErrorCode.POOL_TIMEOUT, str(exc))
            return None
        except (NoServerAvailable, ServerUnavailable, PoolClosed) as exc:
            self.failure = (ErrorCode.SERVER_UNAVAILABLE, str(exc))
            return None
        except Exception as exc:
            self.failure = (ErrorCode.SERVER_UNAVAILABLE, f"no server connection: {exc}")
            return None
        replica = runtime.primary() != choice.server
        try:
            await self._replay(conn)
        except ServerError as exc:
            self.failure = (ErrorCode.SERVER_UNAVAILABLE, f"replaying the session: {exc.message}")
            await self._give_back(pool, conn, reset=True)
            return None
        except Exception as exc:
            log.info("%r: %r is gone (%s); taking another", self.session, conn, exc)
            pool.release(conn, reusable=False, reason=DropReason.BROKEN)
            if replica:
                self.exclude = self.exclude | {conn.server.name}
                runtime.report_failure(conn.server)
            return None
        return pool, conn, replica

    async def _replay(self, conn: ServerConnection) -> None:
        sql = self.state.replay_sql()
        if self.last_insert_id:
            restore = f"DO LAST_INSERT_ID({self.last_insert_id})"
            sql = restore if sql is None else f"{sql}; {restore}"
        if sql is not None:
            await conn.query(sql)
        if self.state.multi_statements_off:
            await conn.roundtrip(ComSetOption(_MULTI_STATEMENTS_OFF).encode())

    def _attach(self) -> None:
        offer, self.offer = self.offer, None
        assert offer is not None
        pool, conn, replica = offer
        self.conn, self.pool, self.on_primary = conn, pool, not replica
        self.held_dirty = self.state.dirty
        self.session.server, self.session.pool = conn, pool
        conn.attach(self.session)

    def _send_backlog(self) -> None:
        while self.backlog and self.unit in SENDS_FRAMES:
            conn = self.conn
            if conn is not None and conn.in_flight:
                return
            self.packet = self.backlog.popleft()
            self.fire(_E.QUERY)

    def _send(self) -> None:
        packet, conn = self.packet, self.conn
        if packet is None or conn is None:
            return
        self.sent = packet
        self.sent_class = self._classify(packet)
        if conn.broken:  # it died after the checkout: nothing was sent, so a read re-runs
            self.fire(_E.LOST)
            return
        self.session.send_to_server(packet)
        if not conn.in_flight:  # COM_STMT_CLOSE, COM_STMT_SEND_LONG_DATA
            self.response_done(conn)

    def _fail_unit(self) -> None:
        failure, self.failure = self.failure, None
        if self.backlog:
            packet = self.backlog.popleft()
            code, message = failure or (ErrorCode.SERVER_UNAVAILABLE, "no server connection")
            self.session.answer_error(packet, code, message)
        self.force_primary = False
        self.exclude = frozenset()
        self.session.engine_ready()

    # -- responses ------------------------------------------------------------------------

    def holding(self) -> bool:
        """True while the response of a replica read is held back (it may be re-run)."""
        return self.unit in HOLDS_OUTPUT

    def first_packets(self, conn: ServerConnection) -> bool:
        """The held read got its first packets: False when they are a read-only refusal (the
        read is re-run on the primary and they must not reach the client)."""
        tracker = conn.tracker
        if (
            tracker is not None
            and tracker.error is not None
            and tracker.result_sets == 0
            and class_of(tracker.error.errno) is ErrorClass.READ_ONLY
        ):
            self.fire(_E.READ_ONLY_REFUSAL)
            return False
        self.fire(_E.ROWS_SENT)
        return True

    def response_done(self, conn: ServerConnection, last: bytes = b"") -> None:
        """The response to the command sent is complete (`last`: its last packet): take in
        what it did; end the unit?"""
        if conn is not self.conn:
            return
        if last[:1] == b"\x00":
            try:
                inserted = OkPacket.decode(last, conn.capabilities).last_insert_id
            except ProtocolError:
                inserted = 0
            if inserted:
                self.state.last_insert_id = inserted
        self._learn(conn)
        self.fire(self._work_done(conn))

    def _learn(self, conn: ServerConnection) -> None:
        packet, c = self.sent, self.sent_class
        if packet is None:
            return
        tracker = conn.tracker
        ok = tracker is None or tracker.error is None
        code = packet.payload[0]
        state = self.state
        if code == CommandByte.QUERY and c is not None:
            state.apply(c, bytes(packet.payload[1:]).decode("utf-8", "replace"), ok=ok)
            if self.on_primary and not c.read_only:
                self.wrote = True
        elif not ok:
            pass
        elif code == CommandByte.INIT_DB:
            state.init_db(bytes(packet.payload[1:]).decode("utf-8", "replace"))
        elif code == CommandByte.STMT_PREPARE and tracker is not None:
            prepared = tracker.prepare_ok
            if prepared is not None:
                state.prepared(prepared.statement_id)
        elif code == CommandByte.STMT_CLOSE and len(packet.payload) >= 5:
            state.closed(int.from_bytes(packet.payload[1:5], "little"))
        elif code == CommandByte.RESET_CONNECTION:
            state.reset()
        elif code == CommandByte.SET_OPTION and len(packet.payload) >= 3:
            option = int.from_bytes(packet.payload[1:3], "little")
            state.multi_statements_off = option == _MULTI_STATEMENTS_OFF
        else:
            self.wrote = self.wrote or (self.on_primary and code != CommandByte.PING)
        self.sent = self.sent_class = None

    def _work_done(self, conn: ServerConnection) -> UnitEvent:
        state = self.state
        in_tx = conn.in_transaction
        if self.hidden_running:
            read_back = ask = False
        else:
            read_back = state.read_back_sql() is not None
            ask = self.read_your_writes and self.wrote and not in_tx
        pinned = state.pinned or not (conn.status & ServerStatus.AUTOCOMMIT)
        if not in_tx and not read_back and not ask:
            self.force_primary = False
        return work_done(
            in_transaction=in_tx,
            statement_mode=False,
            read_back=read_back,
            ask_position=ask,
            pinned=pinned,
            home=False,
            reset=self.held_dirty or state.dirty,
        )

    async def _hidden(self) -> None:
        """The end-of-unit requests: user variables read back, the position of a write."""
        conn = self.conn
        assert conn is not None
        state = self.state
        conn.detach()
        try:
            sql = state.read_back_sql()
            if sql is not None:
                names = sorted(state.unknown_variables)
                results = await conn.query_sets(sql)
                row = results[0].rows[0]
                types = results[0].types
                state.learn_read_back(
                    [
                        (name, literal_of(value, *types[i]))
                        for i, (name, value) in enumerate(zip(names, row, strict=True))
                    ]
                )
            if self.read_your_writes and self.wrote:
                self.wrote = False
                self.min_position = await self._position(conn)
        except Exception as exc:
            log.info("%r: end-of-unit request failed (%s)", self.session, exc)
            conn.mark_broken()
        if self.unit is _S.CLOSED:
            self.hidden_running = False
            self._release()
            return
        if not conn.broken:
            conn.attach(self.session)
        event = self._work_done(conn)
        self.hidden_running = False
        self.fire(event)

    async def _position(self, conn: ServerConnection) -> Position | None:
        if conn.is_mariadb:
            rows = await conn.query("SELECT @@last_gtid")
            text = (rows[0][0] or b"").decode("ascii") if rows else ""
            return MariaDbGtidPos.parse(text) if text else self.min_position
        rows = await conn.query("SELECT @@global.gtid_executed")
        text = (rows[0][0] or b"").decode("ascii") if rows else ""
        return MySqlGtidSet.parse(text)

    # -- failures and re-runs -------------------------------------------------------------

    def lost(self, conn: ServerConnection) -> None:
        """The server connection broke under this client."""
        if conn is not self.conn:
            return
        self.fire(_E.LOST)

    def _fail_lost(self) -> None:
        conn = self._drop_conn()
        name = conn.server.name if conn is not None else "?"
        self.session.lost_mid_unit(f"Lost connection to server {name} during query")

    def _drop_conn(self) -> ServerConnection | None:
        conn, pool = self.conn, self.pool
        self.conn = self.pool = None
        self.session.server = self.session.pool = None
        if conn is not None:
            conn.detach()
            if pool is not None:
                pool.release(conn, reusable=False, reason=DropReason.BROKEN)
        return conn

    def _rerun(self, *, primary: bool) -> None:
        packet, self.recorded = self.recorded, None
        conn = self.conn
        if primary:
            c = self._classify(packet) if packet is not None else None
            if packet is not None and c is not None:
                self.session.service.classifier.remember_write(
                    bytes(packet.payload[1:]).decode("utf-8", "replace")
                )
            log.info("%r: a replica refused a read as a write; running it on the primary", self)
            self.force_primary = True
            self._release()
        else:
            log.info("%r: replica lost before answering; running the read again", self.session)
            if conn is not None:
                self.exclude = self.exclude | {conn.server.name}
                self.cluster.runtime.report_failure(conn.server)
            self._drop_conn()
        self.sent = self.sent_class = None
        if packet is not None:
            self.backlog.appendleft(packet)
        self._route()

    # -- giving back ----------------------------------------------------------------------

    def _release(self) -> None:
        conn, pool = self.conn, self.pool
        self.conn = self.pool = None
        self.session.server = self.session.pool = None
        if conn is None or pool is None:
            return
        mid = conn.in_flight
        conn.detach()
        if mid or conn.broken:
            pool.release(conn, reusable=False, reason=DropReason.CLIENT_GONE_MID_TRANSACTION)
            return
        reset = self.held_dirty or self.state.dirty or self.state.pinned or conn.in_transaction
        self.held_dirty = False
        if not reset:
            pool.release(conn)
            return
        self.session.service.spawn(self._give_back(pool, conn, reset=True))

    async def _give_back(
        self, pool: Pool[ServerConnection], conn: ServerConnection, *, reset: bool
    ) -> None:
        restore: list[bytes] = []
        if self.state.multi_statements_off:
            restore.append(ComSetOption(_MULTI_STATEMENTS_ON).encode())
        if self.state.database != self.state.home_database:
            restore.append(bytes((CommandByte.INIT_DB,)) + self.state.home_database.encode("utf-8"))
        await self.session.service.give_back(pool, conn, restore)

    def __repr__(self) -> str:
        return f"<TxEngine {self.session!r} {self.unit.name}>"
