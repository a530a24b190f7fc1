"""Client connections to the proxy (the proxy plays the PostgreSQL server here).

A `ClientSession` runs the start-up conversation as a coroutine (protocol sections "Start-up",
"SSL Session Encryption", "Canceling Requests in Progress"): SSLRequest and GSSENCRequest are
answered 'N', a CancelRequest is relayed to the server running that client's query, and a
StartupMessage is authenticated against the configured user (SCRAM-SHA-256, md5 or trust; the
steps are in `startup`). Then the session takes a server connection and switches to forwarding:
client frames go to the server, server bytes come back unchanged.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from typing import TYPE_CHECKING

from dbbalancer.compose import reset_and_release
from dbbalancer.config import PoolMode, UserConfig
from dbbalancer.core.errors import ErrorCode
from dbbalancer.core.pool import DropReason, Pool
from dbbalancer.postgres import codec
from dbbalancer.postgres.backend import ServerConnection
from dbbalancer.postgres.codec import ProtocolError
from dbbalancer.postgres.engine import Engine
from dbbalancer.postgres.errors import sqlstate_of
from dbbalancer.postgres.framed import ConnectionClosed, FramedProtocol
from dbbalancer.postgres.params import parse_options
from dbbalancer.postgres.startup import (
    Refused,
    acquire,
    apply_settings,
    authenticate,
    check_startup,
    negotiation,
    welcome,
)
from dbbalancer.postgres.stream import FrontendScanner

if TYPE_CHECKING:
    from dbbalancer.postgres.service import PgCluster, PostgresService

log = logging.getLogger(__name__)

# Before authentication a client may only send small messages (PostgreSQL's own limit for the
# start-up packet is 10,000 bytes; a SASL message is a few hundred).
PRE_AUTH_MAX_LENGTH = 64 * 1024


# Start-up parameters that are not settings to replay on the server.
_NOT_SETTINGS = frozenset(("user", "database", "options", "replication"))


class ClientSession(FramedProtocol):
    """One client connection, from start-up to close."""

    def __init__(self, service: PostgresService) -> None:
        super().__init__(PRE_AUTH_MAX_LENGTH)
        self.service = service
        self.startup_reader: codec.StartupReader | None = codec.StartupReader()
        self.user: UserConfig | None = None
        self.cluster: PgCluster | None = None
        self.server: ServerConnection | None = None
        self.backend_key = (secrets.randbits(31) or 1, secrets.randbits(31))
        self.peer = "?"
        self._forwarding = False
        self._pending = 0  # ReadyForQuery messages the server still owes this client
        self._unsynced = False  # extended-protocol messages sent since the last Sync
        self._counted = False
        self.engine: Engine | None = None
        self.scanner = FrontendScanner(service.settings.max_message_size)

    def __repr__(self) -> str:
        user = self.user.name if self.user else "?"
        return f"<ClientSession {user}@{self.peer}>"

    # -- asyncio.Protocol -----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        peer = transport.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        self.service.sessions.add(self)
        self.service.spawn(self._serve())

    def data_received(self, data: bytes) -> None:
        if self._forwarding:
            engine = self.engine
            if engine is None:
                self._forward(data)
                return
            try:
                engine.client_frames(self.reader.frames(data))
            except ProtocolError as exc:
                self._fail(exc)
        elif self.startup_reader is not None:
            try:
                self.startup_reader.feed(data)
            except ProtocolError as exc:
                self._failure = exc
            self._wake()
        else:
            self.queue_data(data)

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        self._forwarding = False
        self._release_server()

    def pause_writing(self) -> None:
        server = self.engine.attached() if self.engine is not None else self.server
        if server is not None:
            server.pause_reading()

    def resume_writing(self) -> None:
        server = self.engine.attached() if self.engine is not None else self.server
        if server is not None:
            server.resume_reading()

    def write_many(self, chunks: list[bytes]) -> None:
        """Send several messages to the client in one go."""
        transport = self.transport
        if transport is not None and not transport.is_closing():
            transport.writelines(chunks)

    def terminate(self) -> None:
        """The client said goodbye (Terminate) or must go: release servers, close."""
        self._terminate()

    def fatal(self, sqlstate: str, message: str, *, hint: str | None = None) -> None:
        """Send a FATAL error and close the client."""
        self._send_error(sqlstate, message, hint=hint)
        self._terminate()

    # -- forwarding (the hot path) ----------------------------------------------------------------

    def _forward(self, data: bytes) -> None:
        """Session pooling: pass client bytes on unchanged, following message boundaries."""
        server = self.server
        assert server is not None
        scanner = self.scanner
        before = scanner.expected
        try:
            terminate_at = scanner.feed(data)
        except ProtocolError as exc:
            # Part of the bad message may already be at the server: never reuse it.
            server.mark_broken()
            self._fail(exc)
            return
        self._pending += scanner.expected - before
        self._unsynced = scanner.unsynced
        transport = server.transport
        assert transport is not None
        if terminate_at is None:
            transport.write(data)
            return
        if terminate_at > 0:
            transport.write(data[:terminate_at])
        elif terminate_at < 0:
            server.mark_broken()  # the start of the Terminate already went to the server
        self._terminate()

    # ServerSink: called by the attached ServerConnection.

    def server_output(self, data: bytes) -> None:
        """Relay server bytes unchanged."""
        self.write(data)

    def server_ready(self, status: bytes) -> None:
        """Count the ReadyForQuery the server owed."""
        if self._pending:
            self._pending -= 1

    def server_lost(self, server: ServerConnection) -> None:
        """The server went away under this session: tell the client and close."""
        if self.server is server:
            self.server = None
            self._send_error(
                sqlstate_of(ErrorCode.SERVER_CONNECTION_LOST),
                f"server connection to {server.server.name} was lost",
                hint="reconnect; the server may be restarting",
            )
            self.close()

    def pause_server_output(self) -> None:
        """The server cannot take more: stop reading from the client."""
        self.pause_reading()

    def resume_server_output(self) -> None:
        """The server drained: read from the client again."""
        self.resume_reading()

    # -- the session coroutine ------------------------------------------------------------------

    async def _serve(self) -> None:
        try:
            async with asyncio.timeout(self.service.settings.client_login_timeout or None):
                started = await self._startup()
                if not started:
                    return
            await self.wait_closed()
        except ProtocolError as exc:
            self._fail(exc)
        except TimeoutError:
            self._send_error(
                sqlstate_of(ErrorCode.LOGIN_TIMEOUT), "client did not finish logging in in time"
            )
            self.close()
        except ConnectionClosed:
            pass
        except Refused as refused:
            self._send_error(refused.sqlstate, refused.message, hint=refused.hint)
            self.close()
        except Exception:
            log.exception("%r: unexpected error", self)
            self._send_error(
                sqlstate_of(ErrorCode.INTERNAL_ERROR), "internal error in dbbalancer; see its log"
            )
            self.close()
        finally:
            self._release_server()
            if self._counted:
                self.service.client_disconnected(self)
                self._counted = False
            self.service.unregister_cancel(self)
            self.service.sessions.discard(self)

    async def _next_startup(self) -> codec.StartupMessage:
        reader = self.startup_reader
        assert reader is not None
        while True:
            msg = reader.next()
            while msg is None:
                if self._failure is not None:
                    raise self._failure
                self._frame_waiter = asyncio.get_running_loop().create_future()
                try:
                    await self._frame_waiter
                finally:
                    self._frame_waiter = None
                msg = reader.next()
            if isinstance(msg, codec.SSLRequest | codec.GSSENCRequest):
                self.write(b"N")  # no TLS/GSS yet: the client goes on in plaintext or gives up
                continue
            if isinstance(msg, codec.CancelRequest):
                await self.service.cancel(msg.process_id, msg.secret_key)
                raise ConnectionClosed("cancel request handled")
            return msg

    async def _startup(self) -> bool:
        try:
            startup = await self._next_startup()
        except ConnectionClosed:
            self.close()
            return False
        assert self.startup_reader is not None
        rest = self.startup_reader.take_buffer()
        self.startup_reader = None
        if rest:
            self.queue_data(rest)

        negotiate = negotiation(startup)
        if negotiate is not None:
            self.write(negotiate)
        check_startup(startup)
        user_name = startup.user
        database = startup.database

        user = self.service.user(user_name)
        await authenticate(self, user_name, user)
        assert user is not None
        self.user = user
        cluster = self.service.cluster(database)
        if cluster is None:
            raise Refused(
                sqlstate_of(ErrorCode.UNKNOWN_DATABASE),
                f'database "{database}" does not exist',
                hint="dbbalancer serves: " + ", ".join(self.service.cluster_names()),
            )
        self.cluster = cluster
        self.service.client_connected(self)  # raises Refused when over a limit
        self._counted = True

        settings = {k: v for k, v in startup.parameters.items() if k not in _NOT_SETTINGS}
        settings.update(parse_options(startup.parameters.get("options", "")))
        mode = cluster.config.effective_pool_mode(user)
        split = cluster.config.read_write_split
        managed = mode is not PoolMode.SESSION or split
        welcome_key = (cluster.config.name, user.name, tuple(sorted(settings.items())))
        cached = self.service.welcome.get(welcome_key)
        if mode is not PoolMode.SESSION and cached is not None:
            # Transaction pooling: a client with the same settings was welcomed before; its
            # ParameterStatus values serve again without taking a server connection.
            parameters = dict(cached)
            self.engine = Engine(
                self, mode=mode, split=split, settings=settings, home=None, home_pool=None
            )
        else:
            server, pool = await acquire(cluster, user)
            await apply_settings(server, pool, settings)
            parameters = dict(server.parameters)
            self.service.welcome[welcome_key] = dict(parameters)
            if not managed:
                self.server = server
            elif mode is PoolMode.SESSION:
                self.engine = Engine(
                    self, mode=mode, split=split, settings=settings, home=server, home_pool=pool
                )
            else:
                # Transaction/statement pooling: the connection only served the welcome.
                pool.release(server)
                self.engine = Engine(
                    self, mode=mode, split=split, settings=settings, home=None, home_pool=None
                )

        self.reader.max_length = self.service.settings.max_message_size
        out = welcome(parameters, self.backend_key)
        self.service.register_cancel(self)
        if self.engine is None:
            server.attach(self)
        self._forwarding = True
        if self.transport is not None:
            self.transport.writelines(out)
        queued = self.take_queued()
        if queued:
            # A client that pipelined its first query behind the password message.
            if self.engine is not None:
                self.engine.client_frames(queued)
            else:
                self._forward(b"".join(frame.data for frame in queued))
        return True

    # -- ending ---------------------------------------------------------------------------------

    def _terminate(self) -> None:
        self._forwarding = False
        self._release_server()
        self.close()

    def _fail(self, exc: ProtocolError) -> None:
        log.info("%r: protocol error: %s", self, exc.message)
        self._send_error(exc.sqlstate, exc.message)
        self._forwarding = False
        self._release_server()
        self.close()

    def _send_error(self, sqlstate: str, message: str, *, hint: str | None = None) -> None:
        self.write(codec.error_response(sqlstate, message, severity="FATAL", hint=hint))

    def _release_server(self) -> None:
        engine = self.engine
        if engine is not None:
            if not engine.closed:
                engine.close()
            return
        server = self.server
        if server is None:
            return
        self.server = None
        cluster = self.cluster
        server.detach()
        clean = (
            server.tx_status == b"I"
            and self._pending == 0
            and not self._unsynced
            and self.scanner.at_boundary
            and not server.broken
        )
        if cluster is None or self.user is None:
            server.close()
            return
        self.give_back(server, cluster.runtime.pool(self.user.name, server.server), clean=clean)

    def is_idle(self) -> bool:
        """True between transactions (or before login), when closing loses nothing."""
        if self.engine is not None:
            return self.engine.is_idle()
        server = self.server
        if server is None:
            return True
        return server.tx_status == b"I" and self._pending == 0 and not self._unsynced

    def shutdown(self) -> None:
        """Close this client because the balancer is stopping."""
        self._send_error(
            sqlstate_of(ErrorCode.SHUTTING_DOWN),
            "terminating connection: dbbalancer is shutting down",
        )
        self._forwarding = False
        self._release_server()
        self.close()

    def cancel_target(self) -> ServerConnection | None:
        """The server connection a CancelRequest for this client should reach."""
        if self.engine is not None:
            return self.engine.attached()
        return self.server

    def give_back(
        self, server: ServerConnection, pool: Pool[ServerConnection], *, clean: bool
    ) -> None:
        """Return a connection this client held: reset it first, or drop it if it is not clean."""
        if not clean or server.broken:
            pool.release(server, reusable=False, reason=DropReason.CLIENT_GONE_MID_TRANSACTION)
        else:
            self.service.spawn(reset_and_release(pool, server))
