"""Binary-protocol statements on the connections of a client's units (issue #12).

The engine's side of `mysql/statements.py` (which decides; this module sends): a
`mysql.engine.TxEngine` with `max_prepared_statements > 0` hands its COM_STMT_PREPARE and
COM_STMT_* commands here. A COM_STMT_PREPARE goes to the unit's connection and its
COM_STMT_PREPARE_OK reaches the client renumbered with the client's statement id. A command
naming a statement goes out with the id of the connection's own statement; a connection that
lacks it first gets a hidden COM_STMT_PREPARE (sent in a task with the connection detached from
the client, its response swallowed; an ERR becomes the command's answer, a parameter or column
count that changed since the client prepared becomes ER_NEED_REPREPARE). COM_STMT_CLOSE is
answered by the proxy (it has no response), and COM_STMT_CLOSE of server statements that were
evicted or that no client uses any more are written to a connection whenever it has no command
in flight (COM_STMT_CLOSE has no response, so it can slip in between any two commands).

A statement whose server statement holds state of its own (a cursor opened by COM_STMT_EXECUTE
until COM_STMT_FETCH exhausts it or COM_STMT_RESET / COM_STMT_CLOSE ends it; parameter data sent
with COM_STMT_SEND_LONG_DATA until the execute) pins its client (`MySessionState.statement_pins`).
"""

from __future__ import annotations

import dataclasses
import logging
from typing import TYPE_CHECKING, Final

from dbbalancer.core.statement import Classification
from dbbalancer.core.unitofwork import UnitState
from dbbalancer.mysql.backend import ServerConnection, ServerError
from dbbalancer.mysql.codec import (
    CommandByte,
    ComStmtClose,
    ComStmtPrepare,
    ErrPacket,
    Packet,
    PacketRun,
    ResponseTracker,
    StmtPrepareOk,
)
from dbbalancer.mysql.statements import (
    STATEMENT_COMMANDS,
    ClientStatement,
    ClientStatements,
    ConnectionStatements,
    Context,
    Plan,
    ServerStatement,
    StatementRegistry,
    Step,
    renumbered,
    statement_id,
)

if TYPE_CHECKING:
    from dbbalancer.mysql.engine import TxEngine

__all__ = ["CURSOR_PIN", "LONG_DATA_PIN", "StatementRemapper", "close_evicted"]

log = logging.getLogger(__name__)

CURSOR_PIN: Final = "statement_cursor"
LONG_DATA_PIN: Final = "statement_long_data"
# Commands that run a statement: routed as its text would be.
_RUNS: Final = frozenset({CommandByte.STMT_EXECUTE, CommandByte.STMT_SEND_LONG_DATA})
# What the server answers that changes a statement's cursor or parameter data.
_FOLLOWED: Final = frozenset(
    {CommandByte.STMT_EXECUTE, CommandByte.STMT_FETCH, CommandByte.STMT_RESET}
)


def close_evicted(cache: ConnectionStatements) -> None:
    """Send the COM_STMT_CLOSE `cache` owes its connection, if no command is in flight there
    (else they wait for the next time the proxy sends it a command)."""
    conn = cache.connection()
    if not isinstance(conn, ServerConnection) or conn.in_flight or conn.broken:
        return
    for server_id in cache.take_closing():
        conn.send_command(ComStmtClose(server_id).encode())


class StatementRemapper:
    """One client's binary-protocol statements across its units (see the module docstring)."""

    def __init__(self, engine: TxEngine, capacity: int) -> None:
        self.engine = engine
        self.capacity = capacity
        self.registry: StatementRegistry = engine.session.service.statements
        self.client = ClientStatements(self.registry)
        # The client id the COM_STMT_PREPARE_OK on its way gets (0: none is).
        self.reply_id = 0

    def context(self) -> Context:
        """The session state statements are prepared under now."""
        state = self.engine.state
        # The character set is the connection's profile's (mysql/profile.py): connections of
        # other profiles never share statements with this client.
        return (state.database, "", tuple(sorted(state.changed_settings().items())))

    def _cache(self, conn: ServerConnection) -> ConnectionStatements:
        return self.registry.of(conn, self.capacity)

    def _flush(self, conn: ServerConnection) -> None:
        cache = self.registry.known(conn)
        if cache is not None and cache.closing:
            close_evicted(cache)

    # -- routing ----------------------------------------------------------------------------

    def command(self, packet: Packet) -> Packet:
        """A client command as the engine keeps it: a statement id of -1 (MariaDB's "the one
        prepared last") made explicit, so that re-runs and the tracking see the real one."""
        payload = packet.payload
        if payload[0] in STATEMENT_COMMANDS:
            resolved = self.client.resolve(payload)
            if resolved is not payload:
                return dataclasses.replace(packet, payload=resolved)
        return packet

    def statement_text(self, packet: Packet) -> str | None:
        """The SQL text a COM_STMT_EXECUTE or COM_STMT_SEND_LONG_DATA runs (None: another
        command, or an unknown statement)."""
        payload = packet.payload
        if payload[0] not in _RUNS:
            return None
        statement = self.client.by_id.get(statement_id(payload))
        return None if statement is None else statement.text.decode("utf-8", "replace")

    def classify(self, packet: Packet) -> Classification | None:
        """How a command that runs a statement is routed: as its text would be."""
        text = self.statement_text(packet)
        if text is None:
            return None
        return self.engine.session.service.classifier.classify(text)

    # -- sending ----------------------------------------------------------------------------

    def answer_unattached(self, packet: Packet) -> bool:
        """Answer a statement command that needs no connection (none is held); False when it
        must be routed."""
        payload = packet.payload
        if payload[0] not in STATEMENT_COMMANDS:
            return False
        plan = self.client.plan(payload, None, self.context())
        if plan.step is Step.ROUTE:
            return False
        self._answer(packet, plan, None)
        return True

    def send(self, conn: ServerConnection, packet: Packet) -> None:
        """Send a COM_STMT_PREPARE or COM_STMT_* command on the unit's connection, mapped."""
        self._flush(conn)
        payload = packet.payload
        if payload[0] == CommandByte.STMT_PREPARE:
            self.reply_id = self.client.begin_prepare(bytes(payload[1:]))
            self.engine.forward(conn, packet)
            return
        cache = self._cache(conn)
        self._carry_out(conn, packet, self.client.plan(payload, cache, self.context()), cache)

    def _carry_out(
        self, conn: ServerConnection, packet: Packet, plan: Plan, cache: ConnectionStatements
    ) -> None:
        log.debug("%r: statement command 0x%02x: %s", self.engine, packet.payload[0], plan.reason)
        if plan.step is Step.SEND:
            if plan.statement is not None:
                self._pins(plan.statement)
            self.engine.forward(conn, dataclasses.replace(packet, payload=plan.payload))
        elif plan.step is Step.PREPARE:
            self.engine.preparing = True
            self.engine.session.service.spawn(self._prepare_then_send(conn, packet, plan))
        else:
            self._answer(packet, plan, cache)
            self.engine.answered(conn)

    def _answer(self, packet: Packet, plan: Plan, cache: ConnectionStatements | None) -> None:
        statement = plan.statement
        if packet.payload[0] == CommandByte.STMT_CLOSE and statement is not None:
            self.engine.state.closed(statement.id)
            self._unpin(statement)
            for touched in self.client.close(statement.id, cache):
                close_evicted(touched)
        self.engine.session.answer_locally(packet, plan.answer)

    async def _prepare_then_send(self, conn: ServerConnection, packet: Packet, plan: Plan) -> None:
        """Prepare the statement on the connection (hidden), then send the command."""
        engine = self.engine
        statement, key = plan.statement, plan.key
        assert statement is not None
        assert key is not None
        conn.detach()
        ok: StmtPrepareOk | None = None
        refused: ErrPacket | None = None
        try:
            await conn.roundtrip(ComStmtPrepare(statement.text).encode())
            tracker = conn.tracker
            ok = tracker.prepare_ok if tracker is not None else None
        except ServerError as exc:
            refused = ErrPacket(exc.errno, exc.sqlstate, exc.message)
        except Exception as exc:
            log.info("%r: preparing a statement again failed (%s)", engine.session, exc)
        finally:
            engine.preparing = False
        cache = self._cache(conn)
        if ok is not None:
            cache.add(key, ServerStatement(ok.statement_id, ok.num_params, ok.num_columns))
        if engine.conn is not conn or engine.unit is UnitState.CLOSED:
            close_evicted(cache)  # the client left meanwhile
            return
        if ok is None and refused is None:
            engine.lost(conn)
            engine.session.engine_ready()
            return
        conn.attach(engine.session)
        if refused is not None:
            plan = Plan(Step.ANSWER, "preparing again failed", answer=refused)
        else:
            close_evicted(cache)
            plan = self.client.plan(packet.payload, cache, self.context())
            if plan.step is not Step.SEND and plan.step is not Step.ANSWER:
                plan = Plan(Step.ANSWER, "not kept", answer=_REPREPARE)
        self._carry_out(conn, packet, plan, cache)
        engine.session.engine_ready()

    # -- responses --------------------------------------------------------------------------

    def renumbered(self, run: PacketRun) -> PacketRun:
        """The first packets of a COM_STMT_PREPARE response, its statement id the client's."""
        number, self.reply_id = self.reply_id, 0
        data = run.data
        size = data[0] | data[1] << 8 | data[2] << 16
        return run.with_first_payload(renumbered(data[4 : 4 + size], number))

    def prepared(self, conn: ServerConnection, ok: StmtPrepareOk) -> int:
        """The client's COM_STMT_PREPARE succeeded: its statement is recorded, and so is the
        server statement; the client's statement id."""
        statement = self.client.prepared(ok.num_params, ok.num_columns)
        if statement is None:
            return ok.statement_id
        cache = self._cache(conn)
        key = (self.context(), statement.text, 0)
        cache.add(key, ServerStatement(ok.statement_id, ok.num_params, ok.num_columns))
        statement.key = key
        close_evicted(cache)
        return statement.id

    def learn(
        self, conn: ServerConnection, packet: Packet, tracker: ResponseTracker | None
    ) -> None:
        """Take in the server's answer to a command: a failed prepare, a reset session, a
        statement's cursor or parameter data."""
        code = packet.payload[0]
        error = tracker.error if tracker is not None else None
        if code == CommandByte.STMT_PREPARE:
            if error is not None or tracker is None or tracker.prepare_ok is None:
                self.client.failed()
        elif code == CommandByte.RESET_CONNECTION:
            if error is None:
                # The server forgot every statement of this connection and the client's.
                self.registry.forget_connection(conn)
                self.engine.state.statement_pins.clear()
                for touched in self.client.forget_all(None):
                    close_evicted(touched)
        elif code in _FOLLOWED and tracker is not None:
            cache = self.registry.known(conn)
            if cache is not None:
                statement = self.client.answered(
                    packet.payload,
                    cache,
                    status=tracker.status_flags or 0,
                    errno=error.errno if error is not None else None,
                )
                if statement is not None:
                    self._pins(statement)

    def client_gone(self) -> None:
        """The client left: its statements are released (closed where nobody uses them)."""
        conn = self.engine.conn
        cache = self.registry.known(conn) if conn is not None else None
        for touched in self.client.forget_all(cache):
            close_evicted(touched)
        self.engine.state.statement_pins.clear()

    # -- pins -------------------------------------------------------------------------------

    def _pins(self, statement: ClientStatement) -> None:
        pins = self.engine.state.statement_pins
        for reason, on in ((CURSOR_PIN, statement.cursor), (LONG_DATA_PIN, statement.long_data)):
            if on:
                pins.add((statement.id, reason))
            else:
                pins.discard((statement.id, reason))

    def _unpin(self, statement: ClientStatement) -> None:
        pins = self.engine.state.statement_pins
        pins.discard((statement.id, CURSOR_PIN))
        pins.discard((statement.id, LONG_DATA_PIN))


_REPREPARE: Final = ErrPacket(1615, "HY000", "Prepared statement needs to be re-prepared")
