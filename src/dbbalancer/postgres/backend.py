"""Connections from the proxy to PostgreSQL servers.

`connect_server` opens a TCP connection, sends the StartupMessage and authenticates with the
configured credentials (SCRAM-SHA-256, md5, cleartext or trust; protocol section "Start-up"),
collecting ParameterStatus and BackendKeyData until the first ReadyForQuery. The connection then
either runs the proxy's own queries (`simple_query`, used for resets and probes) or forwards the
server's bytes, unchanged, to the client session it is attached to, while a BoundaryScanner follows
ReadyForQuery for the transaction status.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from typing import Protocol, cast

from dbbalancer.core.cluster import ServerConnectError
from dbbalancer.core.errors import SERVER_GOING_AWAY
from dbbalancer.core.topology import Server
from dbbalancer.postgres import codec
from dbbalancer.postgres.auth import ScramClient, md5_response
from dbbalancer.postgres.codec import ProtocolError
from dbbalancer.postgres.errors import class_of
from dbbalancer.postgres.framed import ConnectionClosed, FramedProtocol
from dbbalancer.postgres.prepared import StatementCache
from dbbalancer.postgres.responses import ResponseTracker
from dbbalancer.postgres.stream import BoundaryScanner

log = logging.getLogger(__name__)


class ServerError(Exception):
    """The server answered with an ErrorResponse (during login or an internal query)."""

    def __init__(self, sqlstate: str, message: str) -> None:
        super().__init__(f"{message} (SQLSTATE {sqlstate})")
        self.sqlstate = sqlstate
        self.message = message


class ServerUnavailable(ServerConnectError):
    """The server could not be reached or logged in to; the message says which and why."""


class ServerSink(Protocol):
    """The client side of a forwarding server connection."""

    def server_output(self, data: bytes) -> None:
        """Bytes from the server, to be sent to the client unchanged."""

    def server_ready(self, status: bytes) -> None:
        """A ReadyForQuery arrived; `status` is b"I", b"T" or b"E"."""

    def server_lost(self, server: ServerConnection) -> None:
        """The server connection broke while attached."""

    def pause_server_output(self) -> None:
        """The server's socket is full: stop sending it client bytes for now."""

    def resume_server_output(self) -> None:
        """The server's socket drained."""


class FrameSink(Protocol):
    """The client side of a server connection in managed (frame-by-frame) mode."""

    def server_chunk(self, server: ServerConnection, data: bytes) -> bool:
        """Bytes the server sent, offered before framing; True if the sink took them as they
        are (nothing is buffered in `server.reader` then), False to have them framed."""

    def server_frames(self, server: ServerConnection) -> None:
        """Frames are waiting in `server.reader`."""

    def server_lost(self, server: ServerConnection) -> None:
        """The server connection broke while attached."""

    def pause_server_output(self) -> None:
        """The server's socket is full: stop sending it client bytes for now."""

    def resume_server_output(self) -> None:
        """The server's socket drained."""


class _Mode(enum.Enum):
    CONVERSATION = "conversation"  # login and internal queries: frames go to next_frame()
    FORWARD = "forward"  # attached to a client: bytes go to the sink unchanged
    MANAGED = "managed"  # attached to a client that handles every frame (transaction pooling)


class ServerConnection(FramedProtocol):
    """One logged-in connection to a PostgreSQL server."""

    def __init__(self, server: Server, max_length: int) -> None:
        super().__init__(max_length)
        self.server = server
        self.parameters: dict[str, str] = {}
        self.backend_key: tuple[int, int] | None = None
        self.tx_status = b"I"
        self.scanner = BoundaryScanner(max_length)
        self._mode = _Mode.CONVERSATION
        self._sink: ServerSink | FrameSink | None = None
        self._broken = False
        self.created_at = time.monotonic()
        # Transaction pooling: what this connection holds for whichever client comes next.
        self.tracker = ResponseTracker()
        self.statements = StatementCache(0)
        self.applied: dict[str, str] = {}  # settings the proxy SET on it, beyond its defaults
        self.unnamed: bytes | None = None  # the Parse behind its unnamed statement, if known
        # Sequence state (what currval()/lastval() answer; see postgres/sequences.py): whose
        # whole state it holds, and whether any nextval() may have run since it was clean.
        self.seq_owner: object | None = None
        self.seq_dirty = False

    @property
    def broken(self) -> bool:
        """True once this connection must not be reused."""
        return self._broken or self.closed

    def mark_broken(self) -> None:
        """Never hand this connection out again."""
        self._broken = True

    def __repr__(self) -> str:
        pid = self.backend_key[0] if self.backend_key else "?"
        return f"<ServerConnection {self.server.name} pid={pid}>"

    # -- asyncio.Protocol -----------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        if self._mode is _Mode.MANAGED:
            managed = cast(FrameSink, self._sink)
            if not self.reader.buffered and managed.server_chunk(self, data):
                return
            try:
                self.reader.feed(data)
            except ProtocolError as exc:
                log.error("%r: %s", self, exc.message)
                self.mark_broken()
                self.abort()
                return
            managed.server_frames(self)
        elif self._mode is _Mode.FORWARD:
            sink = cast(ServerSink, self._sink)
            try:
                ready = self.scanner.feed(data)
            except ProtocolError as exc:
                log.error("%r: %s", self, exc.message)
                self.mark_broken()
                self.abort()
                return
            sink.server_output(data)
            if ready:
                status = self.scanner.last_status
                assert status is not None
                self.tx_status = status
                sink.server_ready(status)
        else:
            self.queue_data(data)

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        self._broken = True
        sink = self._sink
        if sink is not None:
            self._sink = None
            sink.server_lost(self)

    def pause_writing(self) -> None:
        if self._sink is not None:
            self._sink.pause_server_output()

    def resume_writing(self) -> None:
        if self._sink is not None:
            self._sink.resume_server_output()

    # -- forwarding -----------------------------------------------------------------------------

    def attach(self, sink: ServerSink) -> None:
        """Forward everything the server sends from now on to `sink`."""
        if self._frames:
            # Unsolicited messages (a NOTICE, ParameterStatus) that arrived while idle: relay them.
            for frame in self.take_queued():
                sink.server_output(frame.data)
        self._sink = sink
        self._mode = _Mode.FORWARD
        self.scanner.reset()

    def attach_managed(self, sink: FrameSink) -> None:
        """Hand every frame the server sends from now on to `sink` (via `self.reader`)."""
        self._sink = sink
        self._mode = _Mode.MANAGED
        if self._frames:
            # Unsolicited messages (a NOTICE, ParameterStatus) that arrived while idle.
            queued = self.take_queued()
            self.reader.feed(b"".join(frame.data for frame in queued))

    def detach(self) -> None:
        """Stop forwarding; later output is queued for `next_frame()`."""
        # Reading may have been paused for a slow client: the next holder starts afresh.
        self.resume_reading()
        mode = self._mode
        self._sink = None
        self._mode = _Mode.CONVERSATION
        if mode is _Mode.FORWARD and not self.scanner.at_boundary:
            # Detached in the middle of a message: the stream can no longer be trusted.
            self.mark_broken()
        if mode is _Mode.MANAGED and not self.tracker.idle:
            self.mark_broken()
        if self.reader.buffered:
            # Detached in the middle of a message: the stream can no longer be trusted.
            self.mark_broken()
            self.reader = codec.MessageReader(self.reader.max_length)

    # -- conversation ---------------------------------------------------------------------------

    async def login(self, user: str, password: str | None, parameters: dict[str, str]) -> None:
        """Run the start-up conversation until the first ReadyForQuery."""
        startup = codec.StartupMessage(codec.PROTOCOL_VERSION_3, {"user": user, **parameters})
        self.write(startup.encode())
        scram: ScramClient | None = None
        while True:
            msg = codec.decode_backend(await self.next_frame())
            if isinstance(msg, codec.AuthenticationOk):
                continue
            if isinstance(msg, codec.AuthenticationSASL):
                if "SCRAM-SHA-256" not in msg.mechanisms:
                    raise ServerUnavailable(
                        f"server {self.server.name} offers SASL mechanisms {msg.mechanisms}; "
                        "dbbalancer speaks SCRAM-SHA-256"
                    )
                scram = ScramClient(self._need_password(password))
                self.write(
                    codec.SASLInitialResponse("SCRAM-SHA-256", scram.client_first()).encode()
                )
            elif isinstance(msg, codec.AuthenticationSASLContinue):
                if scram is None:
                    raise ProtocolError("server sent SASLContinue before SASL")
                self.write(codec.SASLResponse(scram.handle_server_first(msg.data)).encode())
            elif isinstance(msg, codec.AuthenticationSASLFinal):
                if scram is None:
                    raise ProtocolError("server sent SASLFinal before SASL")
                scram.verify_server_final(msg.data)
            elif isinstance(msg, codec.AuthenticationMD5Password):
                response = md5_response(user, self._need_password(password), msg.salt)
                self.write(codec.PasswordMessage(response).encode())
            elif isinstance(msg, codec.AuthenticationCleartextPassword):
                self.write(codec.PasswordMessage(self._need_password(password).encode()).encode())
            elif isinstance(msg, codec.ParameterStatus):
                self.parameters[msg.name] = msg.value
            elif isinstance(msg, codec.BackendKeyData):
                self.backend_key = (msg.process_id, msg.secret_key)
            elif isinstance(msg, codec.ReadyForQuery):
                self.tx_status = msg.status
                return
            elif isinstance(msg, codec.ErrorResponse):
                raise ServerError(msg.sqlstate, msg.message)
            elif isinstance(msg, codec.NoticeResponse | codec.NegotiateProtocolVersion):
                continue
            else:
                raise ProtocolError(f"unexpected {type(msg).__name__} during login")

    def _need_password(self, password: str | None) -> str:
        if password is None:
            raise ServerUnavailable(
                f"server {self.server.name} asks for a password and none is configured "
                "(set the user's password or server_password)"
            )
        return password

    async def simple_query(self, sql: str) -> list[codec.BackendMessage]:
        """Run `sql` with the simple query protocol; return the messages before ReadyForQuery.

        Raises ServerError for an ErrorResponse (after reading through to ReadyForQuery, so the
        connection stays usable).
        """
        if self._mode is not _Mode.CONVERSATION:
            raise RuntimeError("simple_query on a connection attached to a client")
        self.write(codec.Query(sql).encode())
        out: list[codec.BackendMessage] = []
        error: codec.ErrorResponse | None = None
        while True:
            frame = await self.next_frame()
            msg = codec.decode_backend(frame)
            if isinstance(msg, codec.ReadyForQuery):
                self.tx_status = msg.status
                break
            if isinstance(msg, codec.ErrorResponse):
                error = msg
            elif isinstance(msg, codec.ParameterStatus):
                self.parameters[msg.name] = msg.value
            out.append(msg)
        if error is not None:
            raise ServerError(error.sqlstate, error.message)
        return out

    async def reset(self, query: str = "DISCARD ALL") -> None:
        """Make the connection clean for the next client (PgBouncer's server_reset_query)."""
        await self.simple_query(query)
        self.applied = {}
        self.statements.clear()
        self.unnamed = None
        self.seq_owner = None
        self.seq_dirty = False


async def connect_server(
    server: Server,
    *,
    user: str,
    password: str | None,
    database: str,
    parameters: dict[str, str] | None = None,
    connect_timeout: float,
    max_length: int,
) -> ServerConnection:
    """Open and log in a server connection, or raise ServerUnavailable / ServerError."""
    loop = asyncio.get_running_loop()
    params = {"database": database, "client_encoding": "UTF8"}
    if parameters:
        params.update(parameters)
    try:
        async with asyncio.timeout(connect_timeout):
            _, conn = await loop.create_connection(
                lambda: ServerConnection(server, max_length), server.host, server.port
            )
            try:
                await conn.login(user, password, params)
            except BaseException:
                conn.abort()
                raise
    except TimeoutError:
        raise ServerUnavailable(
            f"server {server.name} did not complete login within {connect_timeout:g}s"
        ) from None
    except OSError as exc:
        raise ServerUnavailable(f"cannot connect to server {server.name}: {exc}") from exc
    except ConnectionClosed:
        raise ServerUnavailable(
            f"server {server.name} closed the connection during login"
        ) from None
    except ProtocolError as bad:
        raise ServerUnavailable(f"server {server.name}: {bad.message}") from bad
    except ServerError as refused:
        if class_of(refused.sqlstate) in SERVER_GOING_AWAY:
            # Shutting down, starting up, in recovery, or terminated: the server, not the
            # request, is the problem. Reads move to another replica, writes wait for a primary.
            raise ServerUnavailable(f"server {server.name}: {refused}") from refused
        raise
    return conn


async def send_cancel(
    server: Server, process_id: int, secret_key: int, connect_timeout: float
) -> None:
    """Deliver a CancelRequest to `server` on a fresh connection (protocol section "Canceling")."""
    try:
        async with asyncio.timeout(connect_timeout):
            _, writer = await asyncio.open_connection(server.host, server.port)
            writer.write(codec.CancelRequest(process_id, secret_key).encode())
            await writer.drain()
            writer.close()
            await writer.wait_closed()
    except (OSError, TimeoutError) as exc:
        log.warning("cancel request to %s failed: %s", server.name, exc)
