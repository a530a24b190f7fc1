"""Client connections to the proxy (the proxy plays the MySQL/MariaDB server here).

A `ClientSession` greets the client and runs its login (`mysql.login`, sans-IO) as a coroutine
(that first half, `ConnectionPhase`, and COM_CHANGE_USER's new login are in `mysql.startup`),
bounded by general.client_login_timeout: before the login ends every packet is checked against a
small limit (PRE_AUTH_MAX_PAYLOAD) before it is buffered, and garbage, an oversized length or
an out-of-order packet gets an ERR and the connection closes. The user's database names the
cluster (a client naming none lands on the user's `default_cluster`, or the only MySQL
cluster). Then the session checks out a primary connection (session pooling) and forwards:
one command at a time goes to the server (under transaction pooling a `mysql.engine.TxEngine`
takes the command and picks the connection for each unit of work), and the server's packets
come back renumbered from the client's last sequence id, with `conn.tracker` (a
codec.ResponseTracker) saying where each response ends. Commands a client pipelines behind one
in flight wait in a short queue.

The command phase keeps these to itself:

* COM_QUIT closes the client; the server connection is reset and pooled again.
* COM_CHANGE_USER re-authenticates against the configured users; the server connection goes
  back (reset) and one of the new user's is checked out.
* A LOCAL INFILE request (0xFB) reaches the client only when the cluster sets
  `local_infile = true` and the client negotiated CLIENT_LOCAL_FILES; otherwise the proxy
  sends the server an empty file, as libmysqlclient does when it refuses one, and the client
  gets ERR 1148 instead of the statement's result.
* Replication commands (COM_BINLOG_DUMP, COM_REGISTER_SLAVE, ...) are refused.

A client that leaves in the middle of a response leaves a server connection nobody can
follow: it is dropped, not pooled.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import re
from typing import TYPE_CHECKING, Final, cast

from dbbalancer.core.errors import ErrorCode
from dbbalancer.core.pool import DropReason
from dbbalancer.mysql.backend import ServerConnection
from dbbalancer.mysql.codec import (
    MAX_CHUNK,
    Capability,
    ComInitDb,
    CommandByte,
    ComSetOption,
    ErrPacket,
    OkPacket,
    Packet,
    PacketRun,
    Phase,
    ProtocolError,
    renumber,
)
from dbbalancer.mysql.engine import TxEngine
from dbbalancer.mysql.sessionstate import MySessionState
from dbbalancer.mysql.startup import (
    MULTI_STATEMENTS_OFF,
    MULTI_STATEMENTS_ON,
    PRE_AUTH_MAX_PAYLOAD,
    ConnectionPhase,
    Refused,
)

if TYPE_CHECKING:
    from dbbalancer.mysql.login import LoggedIn
    from dbbalancer.mysql.service import MySqlCluster, MySqlService

__all__ = ["PRE_AUTH_MAX_PAYLOAD", "ClientSession", "Refused"]

log = logging.getLogger(__name__)

# Commands a client may pipeline behind the one in flight before the proxy stops reading it.
MAX_QUEUED_COMMANDS: Final = 64
# The commands of a replica or a binlog reader, which the proxy does not relay.
_REPLICATION_COMMANDS: Final = frozenset(
    {
        CommandByte.BINLOG_DUMP,
        CommandByte.BINLOG_DUMP_GTID,
        CommandByte.REGISTER_SLAVE,
        CommandByte.TABLE_DUMP,
        CommandByte.CONNECT_OUT,
    }
)
_LOCAL_INFILE_REQUEST: Final = 0xFB
# ER_NOT_ALLOWED_COMMAND: what MariaDB answers LOAD DATA LOCAL with when it is disabled.
_ER_NOT_ALLOWED_COMMAND: Final = (1148, "42000")
# A COM_QUERY that may change the current database (USE): the connection's default is restored
# before the next client gets it.
_USE: Final = re.compile(rb"(?i)\buse\b")


class ClientSession(ConnectionPhase):
    """One client connection, from greeting to close: the connection phase (`ConnectionPhase`),
    then the command phase here."""

    def __init__(self, service: MySqlService) -> None:
        super().__init__(service)
        self._queue: collections.deque[Packet] = collections.deque()
        self._server_seq = 0  # next sequence id toward the server (LOCAL INFILE data)
        self._infile = False  # the client is sending a file
        self._swallow: ErrPacket | None = None  # replace the rest of this response by this ERR
        # Transaction pooling: the units of work (None under session pooling).
        self.engine: TxEngine | None = None

    # -- asyncio.Protocol -----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)
        self._closed_waiter = asyncio.get_running_loop().create_future()
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple):
            self.peer_host = str(peer[0])
            self.peer = f"{peer[0]}:{peer[1]}"
        else:
            self.peer = self.peer_host = str(peer)
        self.service.sessions.add(self)
        self.service.spawn(self._serve())

    def data_received(self, data: bytes) -> None:
        try:
            self.reader.feed(data)
            if not self._forwarding:
                self._inbox.put(self.reader)
                return
            reader = self.reader
            # next() in a loop rather than iterating the reader: no generator per read.
            while (packet := reader.next()) is not None:
                self._client_packet(packet)
                if self.closed:
                    return
        except ProtocolError as exc:
            if self._forwarding:
                self._fail(ErrorCode.PROTOCOL_VIOLATION, exc.message)
            else:
                self._inbox.fail(exc)

    def connection_lost(self, exc: Exception | None) -> None:
        log.debug("%r: connection lost (%s)", self, exc)
        self.closed = True
        self._forwarding = False
        self._inbox.fail(ConnectionError("client closed the connection"), replace=False)
        waiter = self._closed_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        self._release_server()

    def _fail(self, code: ErrorCode, message: str) -> None:
        """Tell the client why and close it; the server connection is not reused."""
        log.info("%r: %s", self, message)
        server = self.server
        if server is not None and (server.in_flight or self._infile):
            server.mark_broken()
        self._send_error(code, message)
        self._release_server()
        self.close()

    def _start_transaction_pooling(self, cluster: MySqlCluster, done: LoggedIn) -> None:
        """Transaction pooling: no connection until the first command (mysql/engine.py)."""
        profile = done.profile
        state = MySessionState(
            database=cluster.config.server_database,
            defaults=self.service.profile_defaults(
                cluster.config.name, done.user.name, profile.name
            ),
            multi_statements=profile.multi_statements,
        )
        self.engine = TxEngine(self, cluster, state)

    # -- command phase ----------------------------------------------------------------------------

    def _client_packet(self, packet: Packet) -> None:
        if self._infile:
            self._forward_file(packet)
            return
        if self._changing_user:
            self._change_user_packet(packet)
            return
        if packet.sequence_id != 0:
            # Every command starts a new exchange at sequence id 0: anything else is not a
            # MySQL client speaking (or one that lost its place), and the bytes after it cannot
            # be trusted to frame the next packets.
            self._client_seq = (packet.last_sequence_id + 1) & 0xFF
            self._fail(
                ErrorCode.PROTOCOL_VIOLATION,
                f"packets out of order: a command must start with sequence id 0, "
                f"not {packet.sequence_id}",
            )
            return
        server = self.server
        engine = self.engine
        if (
            (engine is not None and engine.busy)
            or (server is not None and server.in_flight)
            or self._queue
        ):
            self._queue.append(packet)
            if len(self._queue) >= MAX_QUEUED_COMMANDS:
                self._pause_client()
            return
        self._command(packet)

    def _command(self, packet: Packet) -> None:
        payload = packet.payload
        self._client_seq = (packet.last_sequence_id + 1) & 0xFF
        if not payload:
            self._fail(ErrorCode.PROTOCOL_VIOLATION, "empty command packet")
            return
        code = payload[0]
        engine = self.engine
        if code == CommandByte.QUIT:
            if engine is not None:
                engine.terminate()
                return
            self._release_server()
            self.close()
            return
        if code in _REPLICATION_COMMANDS:
            self._send_error(
                ErrorCode.REPLICATION_REFUSED, "dbbalancer does not relay replication commands"
            )
            return
        if code == CommandByte.CHANGE_USER:
            # The server would reset the session (roll back, drop temporary tables, release
            # locks and prepared statements): so does giving the held connection back.
            self._release_server()
            self.engine = None
            self._start_change_user(payload)
            return
        if engine is not None:
            engine.command(packet)
            return
        if code == CommandByte.INIT_DB or (
            (code == CommandByte.QUERY or code == CommandByte.STMT_PREPARE)
            and _USE.search(payload, 1)
        ):
            # A USE prepared through the binary protocol switches the database as well.
            self._database_dirty = True
        elif code == CommandByte.SET_OPTION:
            self._options_dirty = True
        server = self.server
        if server is None:
            self._fail(ErrorCode.SERVER_CONNECTION_LOST, "no server connection")
            return
        server.send_command(payload)
        if not server.in_flight:  # COM_STMT_CLOSE, COM_STMT_SEND_LONG_DATA: no response
            self._next_queued()

    def _next_queued(self) -> None:
        engine = self.engine
        if engine is not None:
            while self._queue and not engine.busy and not self.closed and not self._infile:
                self._command(self._queue.popleft())
        else:
            server = self.server
            while self._queue and server is not None and not server.in_flight and not self.closed:
                if self._infile or self._changing_user:
                    return
                self._command(self._queue.popleft())
        if len(self._queue) < MAX_QUEUED_COMMANDS // 2:
            self._resume_client()

    # Transaction pooling: what the engine asks of the session.

    def engine_ready(self) -> None:
        """The engine may take the next queued command."""
        self._next_queued()

    def quit(self) -> None:
        """COM_QUIT under transaction pooling."""
        self.close()

    def send_to_server(self, packet: Packet) -> None:
        """Send a client command to the attached connection."""
        server = self.server
        if server is None:
            return
        self._client_seq = (packet.last_sequence_id + 1) & 0xFF
        server.send_command(packet.payload)

    def answer_locally(self, packet: Packet, ok: OkPacket | ErrPacket | None) -> None:
        """Answer a command without a server (COM_PING: OK; a COM_STMT_CLOSE: nothing; a
        statement id the client does not hold: ERR)."""
        self._client_seq = (packet.last_sequence_id + 1) & 0xFF
        if isinstance(ok, ErrPacket):
            self._send((ok.encode(),))
        elif ok is not None:
            done = self.logged_in
            caps = done.capabilities if done is not None else 0
            self._send((ok.encode(caps),))

    def answer_error(self, packet: Packet, code: ErrorCode, message: str) -> None:
        """Answer a command with an ERR (no server could take it)."""
        log.info("%r: %s", self, message)
        self._client_seq = (packet.last_sequence_id + 1) & 0xFF
        self._send_error(code, message)

    def lost_mid_unit(self, message: str) -> None:
        """The connection of the unit in progress broke: tell the client and close it."""
        if not self.closed:
            self._send_error(ErrorCode.SERVER_CONNECTION_LOST, message)
            self.close()

    # ServerSink: called by the attached ServerConnection.

    def server_packets(self, conn: ServerConnection, run: PacketRun) -> None:
        """Relay a server's packets as they are (renumbered only when the client's sequence
        ids differ); act at the response's end."""
        if conn is not self.server or self.closed:
            return
        tracker = conn.tracker
        phase = tracker.phase if tracker is not None else Phase.DONE
        engine = self.engine
        if engine is not None and engine.holding() and not engine.first_packets(conn):
            return  # a read-only refusal of a replica read: re-run on the primary
        if engine is not None and engine.statements is not None and engine.statements.reply_id:
            run = engine.statements.renumbered(run)  # COM_STMT_PREPARE_OK: the client's id
        if self._swallow is None:
            if phase is Phase.CLIENT_TURN and run.last_payload[:1] == bytes(
                (_LOCAL_INFILE_REQUEST,)
            ):
                self._relay(run.head)
                self._local_infile(conn, run)
                return
            self._relay_run(run)
        if phase is Phase.DONE:
            swallowed = self._swallow
            if swallowed is not None:
                self._swallow = None
                self._send((swallowed.encode(),))
            if engine is not None:
                engine.response_done(conn, run.last_payload)
            self._next_queued()
        elif phase is Phase.CLIENT_TURN:
            # Only LOCAL INFILE gives the client a turn in forwarding: COM_CHANGE_USER is
            # answered by the proxy itself.
            conn.mark_broken()
            self._fail(ErrorCode.PROTOCOL_VIOLATION, "unexpected authentication round")

    def _relay_run(self, run: PacketRun) -> None:
        """Write a run of server packets, numbered on from the client's sequence id."""
        if run.first_sequence_id != self._client_seq:
            self._relay(run.data)
            return
        # The usual case: the client numbered its command as the proxy did, so the server's
        # ids are those the client expects; a run's ids are consecutive.
        self._client_seq = (run.last_sequence_id + 1) & 0xFF
        transport = self.transport
        if transport is not None and not transport.is_closing():
            transport.write(run.data)

    def _relay(self, data: bytes) -> None:
        """Write whole server packets, numbered on from the client's sequence id."""
        data, self._client_seq = renumber(data, self._client_seq)
        transport = self.transport
        if data and transport is not None and not transport.is_closing():
            transport.write(data)

    def _local_infile(self, conn: ServerConnection, run: PacketRun) -> None:
        """The server asks for a file (the last packet of `run`): relay the request, or
        refuse it with an empty file."""
        self._server_seq = (run.last_sequence_id + 1) & 0xFF
        cluster = self.cluster
        done = self.logged_in
        allowed = cluster is not None and cluster.config.local_infile
        client_can = done is not None and bool(done.capabilities & Capability.LOCAL_FILES)
        if allowed and client_can:
            self._send((run.last_payload,))
            self._infile = True
            return
        why = (
            "LOAD DATA LOCAL INFILE is disabled by dbbalancer for this cluster "
            "(set local_infile = true in its [[clusters]] table)"
            if not allowed
            else "LOAD DATA LOCAL INFILE needs a client with local files enabled "
            "(mysql --local-infile, local_infile=True)"
        )
        self._swallow = ErrPacket(*_ER_NOT_ALLOWED_COMMAND, why)
        conn.send_packet(b"", self._server_seq)

    def _forward_file(self, packet: Packet) -> None:
        """Pass one packet of a LOCAL INFILE upload on; an empty one ends the file."""
        server = self.server
        if server is None:
            return
        payload = packet.payload
        server.send_packet(payload, self._server_seq)
        self._server_seq = (self._server_seq + len(payload) // MAX_CHUNK + 1) & 0xFF
        self._client_seq = (packet.last_sequence_id + 1) & 0xFF
        if not payload:
            self._infile = False

    def server_lost(self, conn: ServerConnection) -> None:
        """The server connection went away under this client: tell it and close."""
        if conn is not self.server:
            return
        if self.engine is not None:
            self.engine.lost(conn)
            return
        self.server = None
        pool = self.pool
        self.pool = None
        if pool is not None:
            pool.release(conn, reusable=False, reason=DropReason.BROKEN)
        if not self.closed:
            if conn.in_flight:
                self._send_error(
                    ErrorCode.SERVER_CONNECTION_LOST,
                    f"Lost connection to server {conn.server.name} during query",
                )
            # Between commands the client expects nothing: an ERR now would be read as the
            # answer to its next command, with a sequence id it does not expect ("packet
            # sequence number wrong"). It finds the connection closed, as when a server dies.
            self.close()

    # -- ending ---------------------------------------------------------------------------------

    def _release_server(self) -> None:
        """Give the server connection back: reset when the client left it between commands,
        dropped when it left in the middle of one."""
        engine = self.engine
        if engine is not None:
            engine.close()
            return
        server, pool = self.server, self.pool
        self.server = self.pool = None
        if server is None or pool is None:
            return
        mid_command = server.in_flight or self._infile or self._swallow is not None
        server.detach()
        if mid_command or server.broken:
            pool.release(server, reusable=False, reason=DropReason.CLIENT_GONE_MID_TRANSACTION)
            return
        restore: list[bytes] = []
        done = self.logged_in
        if self._options_dirty:
            # Back to the statement mode of the connection's pool profile.
            multi = done is None or done.profile.multi_statements
            option = MULTI_STATEMENTS_ON if multi else MULTI_STATEMENTS_OFF
            restore.append(ComSetOption(option).encode())
        cluster = self.cluster
        if self._database_dirty and cluster is not None:
            restore.append(ComInitDb(cluster.config.server_database).encode())
        self._options_dirty = self._database_dirty = False
        self.service.spawn(self.service.give_back(pool, server, restore))

    def is_idle(self) -> bool:
        """True between commands outside a transaction (or before login): closing loses
        nothing."""
        server = self.server
        if self.engine is not None:
            return not (self.engine.busy or self._queue or (server and server.in_transaction))
        if server is None:
            return True
        return not (server.in_flight or self._infile or self._queue or server.in_transaction)

    def _between_commands(self) -> bool:
        """True when the client is logged in and waits for no answer."""
        if not self._forwarding or self._changing_user or self._infile or self._queue:
            return False
        if self.engine is not None:
            return not self.engine.busy
        return self.server is None or not self.server.in_flight

    def shutdown(self) -> None:
        """Close this client because the balancer is stopping (ER_SERVER_SHUTDOWN)."""
        if self.closed:
            return
        server = self.server
        if server is not None and server.in_flight:
            server.mark_broken()
        if self._between_commands():
            # Unasked, the ERR starts an exchange of its own, at sequence id 0, as a server's
            # goodbye does: continuing the last one, it would read as a garbled answer to the
            # client's next command (PyMySQL: "packet sequence number wrong", which pools such
            # as SQLAlchemy's pre-ping do not take for a lost connection).
            self._client_seq = 0
        self._send_error(ErrorCode.SHUTTING_DOWN, "Server shutdown in progress (dbbalancer)")
        self._release_server()
        self.close()
