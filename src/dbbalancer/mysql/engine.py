"""Transaction pooling and read/write splitting for one MySQL client (issue #12).

The engine drives the protocol-neutral unit-of-work table (`core/unitofwork.py`): a MySQL
command is a whole request cycle, so every command is the table's QUERY event. A unit of work
is one command outside a transaction, or a transaction; it ends when the server's last status
flags say so (SERVER_STATUS_IN_TRANS clear) and nothing keeps the client on its connection
(`MySessionState.pin_reasons`). A client with autocommit off holds a connection during each
transaction and none between them: autocommit off is replayed with its session (the server's
SERVER_STATUS_AUTOCOMMIT cleared by a statement the tracking missed pins).

The client session (`mysql/frontend.py`) hands the engine one command at a time (the others wait
in its queue until `busy` is false), tells it where each response ends (`response_done`) and
when the connection is lost (`lost`). The engine runs the table, sends commands, learns from
responses and runs the hidden end-of-unit requests (user variables read back, the GTID of a
write for read-your-writes); routing (`core/routing.decide` on `mysql/classify`'s answer),
checkout with the session state replayed (a dirty session is replayed in the checkout task
before the table hears CONNECTED), re-runs and giving connections back (reset when the client
changed session state) are `mysql/checkout.py`'s.

Replica reads are held back until the server's first packet: a read-only refusal (1290, 1792)
as the whole answer re-runs the command on the primary (and the classifier remembers the
statement as a write); a replica lost before answering re-runs it on another server.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
from typing import TYPE_CHECKING, Final

from dbbalancer.core.errors import ErrorClass
from dbbalancer.core.pool import Pool
from dbbalancer.core.position import Position
from dbbalancer.core.statement import Classification, RouteHint
from dbbalancer.core.unitofwork import (
    HOLDS_OUTPUT,
    RULES,
    SENDS_FRAMES,
    Effect,
    UnitEvent,
    UnitState,
    work_done,
)
from dbbalancer.mysql.backend import ServerConnection
from dbbalancer.mysql.checkout import UnitCheckout
from dbbalancer.mysql.codec import (
    CommandByte,
    OkPacket,
    Packet,
    ProtocolError,
    ServerStatus,
)
from dbbalancer.mysql.errors import class_of
from dbbalancer.mysql.gtid import MariaDbGtidPos, MySqlGtidSet
from dbbalancer.mysql.insertid import READ_BACK_SQL, ClientInsertId
from dbbalancer.mysql.remap import StatementRemapper
from dbbalancer.mysql.sessionstate import MySessionState, literal_of
from dbbalancer.mysql.startup import MULTI_STATEMENTS_OFF
from dbbalancer.mysql.statements import STATEMENT_COMMANDS

if TYPE_CHECKING:
    from dbbalancer.mysql.frontend import ClientSession
    from dbbalancer.mysql.service import MySqlCluster

__all__ = ["TxEngine"]

log = logging.getLogger(__name__)

# Commands that get no response: with no connection held they concern nothing on a server.
_NO_RESPONSE: Final = frozenset({CommandByte.STMT_CLOSE, CommandByte.STMT_SEND_LONG_DATA})
# Commands that change nothing in the server session (a reset is not needed after them).
_STATELESS: Final = frozenset(
    {
        CommandByte.PING,
        CommandByte.STMT_PREPARE,
        CommandByte.STMT_CLOSE,
        CommandByte.STMT_RESET,
        CommandByte.STMT_FETCH,
        CommandByte.STMT_SEND_LONG_DATA,
        CommandByte.FIELD_LIST,
        CommandByte.STATISTICS,
    }
)
_BUSY_STATES: Final = frozenset(
    {UnitState.ACQUIRING, UnitState.HOLDING, UnitState.SEALED, UnitState.SETTLING}
)
# MariaDB sequence functions that leave the session a value for LASTVAL() / PREVIOUS VALUE FOR,
# which a direct connection that never used the sequence answers with NULL.
_SEQUENCE_STEPS: Final = frozenset({"nextval", "next value for", "setval"})
# Commands a statement mapping sends itself (mysql/remap.py).
_MAPPED: Final = frozenset({CommandByte.STMT_PREPARE, *STATEMENT_COMMANDS})


def changes_session(c: Classification) -> bool:
    """Whether a statement may leave state in the server session (settings, database, user
    variables, pins and what ends them, a sequence's value for `LASTVAL()`)."""
    return bool(_SEQUENCE_STEPS.intersection(c.functions)) or any(
        part.settings
        or part.user_variables
        or part.database is not None
        or part.pins
        or part.unpins
        or part.autocommit is not None
        for part in (c, *c.parts)
    )


class TxEngine:
    """One client's units of work (see the module docstring)."""

    def __init__(
        self, session: ClientSession, cluster: MySqlCluster, state: MySessionState
    ) -> None:
        self.session = session
        self.cluster = cluster
        self.state = state
        self.unit = UnitState.IDLE
        self.read_your_writes = cluster.config.read_your_writes
        self.backlog: collections.deque[Packet] = collections.deque()
        self.packet: Packet | None = None  # the client command an effect works on
        self.recorded: Packet | None = None  # a replica read, to re-run elsewhere
        self.sent: Packet | None = None  # the command whose response is on its way
        self.sent_class: Classification | None = None
        self.conn: ServerConnection | None = None
        self.pool: Pool[ServerConnection] | None = None
        self.on_primary = False
        self.held_dirty = False  # the connection carries session state: reset it on release
        self.wrote = False  # the unit wrote on the primary: learn its position
        # A command that may have changed session state ran on the held connection (whatever
        # the tracking made of it): reset it on release.
        self.touched = False
        self.min_position: Position | None = None
        self.hidden_running = False
        self.ids = ClientInsertId()  # LAST_INSERT_ID() across connections (mysql/insertid.py)
        # Routing, checkout, re-runs and giving back (mysql/checkout.py).
        self.checkout = UnitCheckout(self)
        # Binary-protocol statement ids mapped to each connection's (mysql/remap.py), unless
        # max_prepared_statements = 0: then a prepared statement pins its connection.
        capacity = cluster.config.max_prepared_statements
        self.statements = StatementRemapper(self, capacity) if capacity > 0 else None
        state.statements_pin = self.statements is None
        self.preparing = False  # a hidden COM_STMT_PREPARE runs before the command sent

    # -- the table ------------------------------------------------------------------------

    def fire(self, event: UnitEvent) -> None:
        """Look the event up, enter the next state, carry out the effects in order."""
        effects, nxt = RULES[self.unit][event]
        self.unit = nxt
        for effect in effects:
            self._do(effect, event)

    def _do(self, effect: Effect, event: UnitEvent) -> None:
        if effect is Effect.WAIT or effect is Effect.WAIT_OR_ANSWER:
            self._wait(answer=effect is Effect.WAIT_OR_ANSWER)
        elif effect is Effect.ROUTE:
            self.checkout.route()
        elif effect is Effect.SEND:
            self._send()
        elif effect is Effect.RECORD:
            self.recorded = self.packet
        elif effect is Effect.TERMINATE:
            self.session.quit()
        elif effect is Effect.ATTACH:
            self.checkout.attach()
        elif effect is Effect.SEND_BACKLOG:
            self._send_backlog()
        elif effect is Effect.AWAIT_CONNECTION:
            self.session.service.spawn(self.checkout.acquire())
        elif effect is Effect.RESUME_READING or effect is Effect.DRAIN:
            self.session.engine_ready()
        elif effect is Effect.FAIL_UNIT:
            self.checkout.fail_unit()
        elif effect is Effect.RELEASE_UNUSED:
            self.checkout.release_unused()
        elif effect is Effect.RERUN_ON_PRIMARY:
            self.checkout.rerun(primary=True)
        elif effect is Effect.RERUN_ELSEWHERE:
            self.checkout.rerun(primary=False)
        elif effect is Effect.FAIL_LOST:
            self.checkout.fail_lost()
        elif effect is Effect.SETTLE or effect is Effect.ASK_POSITION:
            if self.unit is UnitState.SETTLING and not self.hidden_running:
                self.hidden_running = True
                self.session.service.spawn(self._hidden())
        elif effect is Effect.KEEP:
            if log.isEnabledFor(logging.DEBUG):  # pin_reasons() on every pinned command costs
                log.debug("%r: keeps its connection: %s", self.session, self.state.pin_reasons())
        elif effect is Effect.RELEASE or effect is Effect.RESET_AND_RELEASE:
            self.checkout.release()
        elif effect is Effect.GIVE_BACK:
            if not self.hidden_running:
                # Else the hidden request owns the connection: `_hidden` gives it back once
                # answered. Pooled now, its answer would reach the next client as a response.
                self.checkout.release()
            self.checkout.release_unused()
        elif effect is Effect.LEARN or effect is Effect.FLUSH:
            pass
        else:
            log.warning("%r: %s after %s in %s", self.session, effect.name, event.name, self.unit)

    # -- commands -------------------------------------------------------------------------

    @property
    def busy(self) -> bool:
        """True while the client's next command must wait in the session's queue."""
        if self.unit in _BUSY_STATES or self.backlog or self.preparing or self.ids.restoring:
            return True
        conn = self.conn
        return conn is not None and conn.in_flight

    def command(self, packet: Packet) -> None:
        """A client command (not COM_QUIT / COM_CHANGE_USER): the table's QUERY."""
        if self.statements is not None:
            packet = self.statements.command(packet)
        self.packet = packet
        self.fire(UnitEvent.QUERY)

    def terminate(self) -> None:
        """COM_QUIT."""
        self.fire(UnitEvent.TERMINATE)

    def close(self) -> None:
        """The client is gone."""
        if self.statements is not None:
            self.statements.client_gone()
        self.fire(UnitEvent.CLOSE)

    def _wait(self, *, answer: bool) -> None:
        packet = self.packet
        if packet is None:
            return
        code = packet.payload[0]
        if answer and not self.backlog:
            if code == CommandByte.PING:
                status = 0 if self.state.autocommit_off else ServerStatus.AUTOCOMMIT
                self.session.answer_locally(packet, OkPacket(status_flags=status))
                return
            statements = self.statements
            if statements is not None:
                if statements.answer_unattached(packet):
                    return
            elif code in _NO_RESPONSE:
                self.session.answer_locally(packet, None)
                return
        self.backlog.append(packet)

    def classify(self, packet: Packet) -> Classification | None:
        """The classification of a COM_QUERY or COM_STMT_PREPARE's text, or of the statement a
        COM_STMT_EXECUTE / COM_STMT_SEND_LONG_DATA runs; None for the other commands. Without
        statement mapping a prepared text is marked for the primary (the statement pins its
        connection, which must take writes)."""
        code = packet.payload[0]
        if code != CommandByte.QUERY and code != CommandByte.STMT_PREPARE:
            return None if self.statements is None else self.statements.classify(packet)
        c = self.session.service.classifier.classify(
            bytes(packet.payload[1:]).decode("utf-8", "replace")
        )
        if code == CommandByte.STMT_PREPARE and self.statements is None:
            return dataclasses.replace(c, hint=RouteHint.PRIMARY)
        return c

    def statement_text(self, packet: Packet) -> str:
        """The SQL text a command runs (a COM_STMT_EXECUTE: its statement's)."""
        if self.statements is not None:
            text = self.statements.statement_text(packet)
            if text is not None:
                return text
        return bytes(packet.payload[1:]).decode("utf-8", "replace")

    def _send_backlog(self) -> None:
        while self.backlog and self.unit in SENDS_FRAMES:
            conn = self.conn
            if self.preparing or self.ids.restoring or (conn is not None and conn.in_flight):
                return
            self.packet = self.backlog.popleft()
            self.fire(UnitEvent.QUERY)

    def _send(self) -> None:
        packet, conn = self.packet, self.conn
        if packet is None or conn is None:
            return
        self.sent = packet
        self.sent_class = self.classify(packet)
        state = self.state
        c = self.sent_class
        restore = self.ids.before_send(
            packet.payload, c, state.statements, conn.insert_id, state.last_insert_id
        )
        fresh = self.ids.asks_inherited(packet.payload, c, conn.in_transaction)
        if (restore or fresh) and not conn.broken:
            # Decided here, not when the unit was routed: the command may have come to this
            # connection in a transaction, pinned, or behind a COM_STMT_CLOSE.
            self.ids.restoring = True
            self.session.service.spawn(self.checkout.prepare_for(packet, conn, fresh=fresh))
            return
        self.write(packet, conn)

    def write(self, packet: Packet, conn: ServerConnection) -> None:
        if conn.broken:  # it died after the checkout: nothing was sent, so a read re-runs
            self.fire(UnitEvent.LOST)
            return
        statements = self.statements
        if statements is not None and packet.payload[0] in _MAPPED:
            statements.send(conn, packet)
            return
        self.forward(conn, packet)

    def forward(self, conn: ServerConnection, packet: Packet) -> None:
        """Send `packet` to the unit's connection."""
        self.session.send_to_server(packet)
        if not conn.in_flight:  # COM_STMT_CLOSE, COM_STMT_SEND_LONG_DATA
            self.response_done(conn)

    def answered(self, conn: ServerConnection) -> None:
        """The proxy answered the command itself (a binary-protocol statement's): the unit
        goes on as after a response."""
        self.sent = self.sent_class = None
        self.fire(self._work_done(conn))

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
            self.fire(UnitEvent.READ_ONLY_REFUSAL)
            return False
        self.fire(UnitEvent.ROWS_SENT)
        return True

    def response_done(self, conn: ServerConnection, last: bytes = b"") -> None:
        """The response to the command sent is complete (`last`: its last packet): take in
        what it did; end the unit?"""
        if conn is not self.conn:
            return
        inserted = 0
        tracker = conn.tracker
        # A COM_STMT_PREPARE_OK starts with 0x00 too (and its statement id would read as an
        # insert id): only an OK packet counts.
        if last[:1] == b"\x00" and (tracker is None or tracker.prepare_ok is None):
            try:
                inserted = OkPacket.decode(last, conn.capabilities).last_insert_id
            except ProtocolError:
                inserted = 0
            if inserted:
                self.state.last_insert_id = inserted
        ok = tracker is None or tracker.error is None
        sent = self.sent
        if sent is not None:
            conn.last_user = self.ids.user_after(sent.payload, self.sent_class, conn.last_user)
        conn.insert_id = self.ids.answered(
            conn, conn.insert_id, value=self.state.last_insert_id, inserted=inserted, ok=ok
        )
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
        if self.statements is not None:
            self.statements.learn(conn, packet, tracker)
        if code == CommandByte.QUERY and c is not None:
            state.apply(c, bytes(packet.payload[1:]).decode("utf-8", "replace"), ok=ok)
            # A SET NAMES to the connection's own character set, or autocommit on where it is
            # (PyMySQL's and mysql-connector's after their login), needs no reset.
            self.touched = self.touched or (changes_session(c) and not state.settles(c))
            if self.on_primary and not c.read_only:
                self.wrote = True
        elif code == CommandByte.STMT_EXECUTE and len(packet.payload) >= 5:
            # What the statement does (SET, USE, SELECT @x := ..., GET_LOCK, a temporary
            # table ...) counts as it would in a COM_QUERY.
            executed = state.executed(int.from_bytes(packet.payload[1:5], "little"), ok=ok)
            self.touched = self.touched or executed is None or changes_session(executed)
            if self.on_primary and ok and (executed is None or not executed.read_only):
                self.wrote = True
        elif not ok:
            pass
        elif code == CommandByte.INIT_DB:
            state.init_db(bytes(packet.payload[1:]).decode("utf-8", "replace"))
        elif code == CommandByte.STMT_PREPARE and tracker is not None:
            prepared = tracker.prepare_ok
            if prepared is not None:
                text = bytes(packet.payload[1:]).decode("utf-8", "replace")
                number = prepared.statement_id
                if self.statements is not None:
                    number = self.statements.prepared(conn, prepared)
                state.prepared(number, c, text)
        elif code == CommandByte.STMT_CLOSE and len(packet.payload) >= 5:
            state.closed(int.from_bytes(packet.payload[1:5], "little"))
        elif code == CommandByte.RESET_CONNECTION:
            state.reset()
        elif code == CommandByte.SET_OPTION and len(packet.payload) >= 3:
            option = int.from_bytes(packet.payload[1:3], "little")
            state.multi_statements_off = option == MULTI_STATEMENTS_OFF
        else:
            self.wrote = self.wrote or (self.on_primary and code != CommandByte.PING)
        if code != CommandByte.QUERY and code != CommandByte.STMT_EXECUTE:
            self.touched = self.touched or code not in _STATELESS
        self.sent = self.sent_class = None

    def _work_done(self, conn: ServerConnection) -> UnitEvent:
        state = self.state
        in_tx = conn.in_transaction
        if self.hidden_running:
            read_back = ask = False
        else:
            read_back = state.read_back_sql() is not None or self.ids.unread is conn
            ask = self.read_your_writes and self.wrote and not in_tx
        # Autocommit off as tracked is replayed on the next connection; untracked, it pins.
        pinned = state.pinned or not (conn.autocommit or state.autocommit_off)
        if not in_tx and not read_back and not ask:
            self.checkout.force_primary = False
        return work_done(
            in_transaction=in_tx,
            statement_mode=False,
            read_back=read_back,
            ask_position=ask,
            pinned=pinned,
            home=False,
            reset=self.held_dirty or self.touched or state.dirty,
        )

    async def _hidden(self) -> None:
        """The end-of-unit requests: user variables read back, the position of a write."""
        conn = self.conn
        assert conn is not None
        state = self.state
        conn.detach()
        try:
            if self.ids.unread is conn:
                self.ids.unread = None
                rows = await conn.query(READ_BACK_SQL)
                value = int(rows[0][0] or 0) if rows else 0
                state.last_insert_id = value
                conn.insert_id = (self.ids.owner, value)
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
                self.min_position = await _position(conn, self.min_position)
        except Exception as exc:
            log.info("%r: end-of-unit request failed (%s)", self.session, exc)
            conn.mark_broken()
        if self.unit is UnitState.CLOSED:
            self.hidden_running = False
            self.checkout.release()
            return
        if not conn.broken:
            conn.attach(self.session)
        event = self._work_done(conn)
        self.hidden_running = False
        self.fire(event)
        # Commands that arrived meanwhile wait in the session's queue: a unit that goes on
        # (pinned) fires no DRAIN, so they are taken from here.
        self.session.engine_ready()

    # -- failures and re-runs -------------------------------------------------------------

    def lost(self, conn: ServerConnection) -> None:
        """The server connection broke under this client."""
        if conn is not self.conn:
            return
        self.fire(UnitEvent.LOST)

    def __repr__(self) -> str:
        return f"<TxEngine {self.session!r} {self.unit.name}>"


async def _position(conn: ServerConnection, known: Position | None) -> Position | None:
    """The replication position a write of `conn`'s session reached (`known` when MariaDB
    gives none)."""
    if conn.is_mariadb:
        rows = await conn.query("SELECT @@last_gtid")
        text = (rows[0][0] or b"").decode("ascii") if rows else ""
        return MariaDbGtidPos.parse(text) if text else known
    rows = await conn.query("SELECT @@global.gtid_executed")
    text = (rows[0][0] or b"").decode("ascii") if rows else ""
    return MySqlGtidSet.parse(text)
