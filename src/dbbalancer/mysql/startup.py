"""The connection phase of a client connection (MySQL's "Connection Phase"; PostgreSQL's
start-up is `postgres.startup`), and what it shares with the command phase.

`ConnectionPhase` is the first half of `frontend.ClientSession`: the transport, packets
numbered with the client's sequence ids, the login coroutine (the exchange itself is sans-IO
in `mysql.login`) fed through a `PacketInbox`, and the new login of COM_CHANGE_USER. A
logged-in client gets a primary connection of its pool profile (character set, statement mode)
from `checkout`, at login and again after COM_CHANGE_USER (session pooling); under transaction
pooling the login ends without one and `mysql.engine` takes a connection per unit of work.
The command phase (forwarding, LOCAL INFILE, giving the connection back) is in `frontend`.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from dbbalancer.config import PoolMode, UserConfig
from dbbalancer.core.cluster import NoServerAvailable
from dbbalancer.core.errors import ErrorCode
from dbbalancer.core.pool import Pool, PoolClosed, PoolTimeout
from dbbalancer.core.routing import Target
from dbbalancer.mysql.backend import ServerConnection, ServerError, ServerUnavailable
from dbbalancer.mysql.codec import (
    ComChangeUser,
    ErrPacket,
    Packet,
    PacketReader,
    PacketRun,
    ProtocolError,
    decode_command,
    encode_packets,
)
from dbbalancer.mysql.errors import error_of
from dbbalancer.mysql.login import ClientLogin, LoggedIn, Reply

if TYPE_CHECKING:
    from dbbalancer.mysql.service import MySqlCluster, MySqlService

log = logging.getLogger(__name__)

__all__ = [
    "MULTI_STATEMENTS_OFF",
    "MULTI_STATEMENTS_ON",
    "PRE_AUTH_MAX_PAYLOAD",
    "Checkout",
    "ConnectionPhase",
    "PacketInbox",
    "Refused",
    "check_pool_mode",
    "checkout",
]

# Before the login ends a client sends a HandshakeResponse41 (user, database, a few hundred
# bytes of attributes) and auth answers (an RSA block of 512 bytes at most): 64 kB is plenty,
# and a packet claiming more is refused before anything is buffered.
PRE_AUTH_MAX_PAYLOAD: Final = 64 * 1024
# MYSQL_OPTION_MULTI_STATEMENTS_ON / _OFF (COM_SET_OPTION).
MULTI_STATEMENTS_ON: Final = 0
MULTI_STATEMENTS_OFF: Final = 1
_CONNECTION_IDS = itertools.count(1)


class Refused(Exception):
    """A login refused with a MySQL error (sent as ERR, then the connection closes)."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class PacketInbox:
    """Client packets of the connection phase, for a coroutine that awaits them one by one.

    `data_received` puts packets in; a protocol error or the client's leaving is kept as the
    failure, which `next` raises once no packet is left.
    """

    __slots__ = ("_failure", "_packets", "_waiter")

    def __init__(self) -> None:
        self._packets: collections.deque[Packet] = collections.deque()
        self._waiter: asyncio.Future[None] | None = None
        self._failure: BaseException | None = None

    def put(self, packets: Iterable[Packet]) -> None:
        """Queue packets and wake the waiting coroutine."""
        self._packets.extend(packets)
        self._wake()

    def fail(self, exc: BaseException, *, replace: bool = True) -> None:
        """Make `next` raise `exc` (keep an earlier failure unless `replace`)."""
        if replace or self._failure is None:
            self._failure = exc
        self._wake()

    async def next(self) -> Packet:
        """The next packet; raises the failure when there is none left."""
        while not self._packets:
            if self._failure is not None:
                raise self._failure
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        return self._packets.popleft()

    def take_all(self) -> list[Packet]:
        """Packets the client pipelined behind its login (the command phase takes them)."""
        packets = list(self._packets)
        self._packets.clear()
        return packets

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)


def check_pool_mode(cluster: MySqlCluster, user: UserConfig) -> PoolMode:
    """The user's pool mode; refused when MySQL clients cannot have it yet (statement
    pooling)."""
    mode = cluster.config.effective_pool_mode(user)
    if mode is PoolMode.STATEMENT:
        raise Refused(
            ErrorCode.SESSION_STATE_REFUSED,
            "pool_mode 'statement' is not available for MySQL clients yet (issue #12); "
            f'user \'{user.name}\' needs pool_mode = "transaction" or "session"',
        )
    return mode


@dataclass(frozen=True, slots=True)
class Checkout:
    """A primary connection for one client."""

    server: ServerConnection
    pool: Pool[ServerConnection]


async def checkout(service: MySqlService, cluster: MySqlCluster, done: LoggedIn) -> Checkout:
    """Take a primary connection for a logged-in client from the pool of its profile, whose
    connections have its character set and statement mode (mysql/profile.py)."""
    server, pool = await _acquire(service, cluster, done.user, done.profile.name)
    return Checkout(server, pool)


async def _acquire(
    service: MySqlService, cluster: MySqlCluster, user: UserConfig, profile: str
) -> tuple[ServerConnection, Pool[ServerConnection]]:
    try:
        _, pool, server = await cluster.runtime.checkout(
            user.name,
            Target.PRIMARY,
            wait_limit=cluster.config.query_wait_timeout,
            profile=profile,
        )
    except PoolTimeout as timeout:
        raise Refused(ErrorCode.POOL_TIMEOUT, str(timeout)) from None
    except (NoServerAvailable, ServerUnavailable, PoolClosed) as unavailable:
        raise Refused(ErrorCode.SERVER_UNAVAILABLE, str(unavailable)) from None
    except ServerError as refused:
        raise Refused(
            ErrorCode.SERVER_UNAVAILABLE,
            f"the server refused dbbalancer's login as '{user.name}': {refused.message}",
        ) from None
    service.learn_version(server)
    return server, pool


class ConnectionPhase(asyncio.Protocol):
    """A client connection up to its command phase, and what both phases share: the transport,
    packets numbered for the client, the login coroutine with the first server connection, and
    the new login of COM_CHANGE_USER. `frontend.ClientSession` adds the command phase, through
    the hooks at the end of this class.
    """

    def __init__(self, service: MySqlService) -> None:
        self.service = service
        self.transport: asyncio.Transport | None = None
        self.peer = "?"
        self.peer_host = "?"
        self.connection_id = next(_CONNECTION_IDS) & 0xFFFFFFFF
        self.reader = PacketReader(PRE_AUTH_MAX_PAYLOAD, expected_sequence=1)
        self.login: ClientLogin | None = None
        self.logged_in: LoggedIn | None = None
        self.user: UserConfig | None = None
        self.cluster: MySqlCluster | None = None
        self.server: ServerConnection | None = None
        self.pool: Pool[ServerConnection] | None = None
        self.closed = False
        self._counted = False
        self._forwarding = False
        # Login-phase packets for the coroutine.
        self._inbox = PacketInbox()
        self._closed_waiter: asyncio.Future[None] | None = None
        self._client_seq = 0  # next sequence id toward the client
        self._changing_user = False
        self._reading_paused = False
        # What the next client of the server connection must not inherit.
        self._database_dirty = False
        self._options_dirty = False

    def __repr__(self) -> str:
        user = self.user.name if self.user else "?"
        return f"<mysql.ClientSession {user}@{self.peer} id={self.connection_id}>"

    # -- asyncio.Protocol -----------------------------------------------------------------------

    def pause_writing(self) -> None:
        server = self.server
        if server is not None:
            server.pause_reading()

    def resume_writing(self) -> None:
        server = self.server
        if server is not None:
            server.resume_reading()

    # -- writing and flow control ---------------------------------------------------------------

    def _send(self, payloads: tuple[bytes, ...] | list[bytes]) -> None:
        """Frame payloads with the client's next sequence ids and write them."""
        transport = self.transport
        seq = self._client_seq
        chunks = []
        for payload in payloads:
            data, seq = encode_packets(payload, seq)
            chunks.append(data)
        self._client_seq = seq
        if transport is not None and not transport.is_closing():
            transport.writelines(chunks)

    def _send_error(self, code: ErrorCode, message: str) -> None:
        errno, sqlstate = error_of(code)
        self._send((ErrPacket(errno, sqlstate, message).encode(),))

    def close(self) -> None:
        """Close after flushing what was written."""
        self.closed = True
        self._forwarding = False
        if self.transport is not None:
            self.transport.close()

    def _pause_client(self) -> None:
        if not self._reading_paused and self.transport is not None:
            self.transport.pause_reading()
            self._reading_paused = True

    def _resume_client(self) -> None:
        if self._reading_paused and self.transport is not None:
            if not self.transport.is_closing():
                self.transport.resume_reading()
            self._reading_paused = False

    # -- login ----------------------------------------------------------------------------------

    async def _serve(self) -> None:
        settings = self.service.settings
        try:
            try:
                async with asyncio.timeout(settings.client_login_timeout or None):
                    await self._login()
            except TimeoutError:
                self._send_error(ErrorCode.LOGIN_TIMEOUT, "Bad handshake: login timed out")
                self.close()
                return
            except ProtocolError as exc:
                log.info("%r: bad login packet: %s", self, exc.message)
                self._send_error(ErrorCode.PROTOCOL_VIOLATION, f"Bad handshake: {exc.message}")
                self.close()
                return
            except Refused as refused:
                self._send_error(refused.code, refused.message)
                self.close()
                return
            await self._wait_closed()
        except ConnectionError:
            pass
        except Exception:
            log.exception("%r: unexpected error", self)
            self._send_error(ErrorCode.INTERNAL_ERROR, "internal error in dbbalancer; see its log")
            self.close()
        finally:
            self._release_server()
            if self._counted and self.user is not None:
                self.service.limits.leave(self.user)
                self._counted = False
            self.service.sessions.discard(self)

    async def _wait_closed(self) -> None:
        if self._closed_waiter is not None:
            await asyncio.shield(self._closed_waiter)

    async def _login(self) -> None:
        login = self.login = self.service.new_login(self.connection_id, self.peer_host)
        self._client_seq = 0
        self._send((login.greeting(),))
        while True:
            packet = await self._inbox.next()
            self._client_seq = (packet.last_sequence_id + 1) & 0xFF
            reply = login.receive(packet.payload)
            if reply.accepted is not None:
                await self._logged_in(reply)
                return
            self._send(reply.packets)
            if reply.refused:
                log.info("%r: login refused: %s", self, login.failure or "see the client")
                self.close()
                return
            self.reader.expected_sequence = self._client_seq

    async def _logged_in(self, reply: Reply) -> None:
        """Pick the cluster, count the client, take a server connection (session pooling; under
        transaction pooling none until the first command), then send the OK."""
        done = reply.accepted
        assert done is not None
        self.logged_in = done
        self.user = done.user
        cluster = self.service.cluster_for(done.user, done.database)
        self.cluster = cluster
        mode = check_pool_mode(cluster, done.user)
        self.service.admit(done.user)
        self._counted = True
        if mode is PoolMode.TRANSACTION:
            self._start_transaction_pooling(cluster, done)
        else:
            taken = await checkout(self.service, cluster, done)
            server = taken.server
            self.server, self.pool = server, taken.pool
            server.attach(self)
        self.reader.max_payload = self.service.settings.max_message_size
        self.reader.expected_sequence = None
        self._forwarding = True
        self._send(reply.packets)
        # A client that pipelined its first command behind the login.
        for packet in self._inbox.take_all():
            self._client_packet(packet)

    # -- COM_CHANGE_USER ----------------------------------------------------------------------

    def _start_change_user(self, payload: bytes) -> None:
        login, done = self.login, self.logged_in
        if login is None or done is None:
            self._fail(ErrorCode.PROTOCOL_VIOLATION, "COM_CHANGE_USER before login")
            return
        command = decode_command(payload, done.capabilities)
        assert isinstance(command, ComChangeUser)
        self._changing_user = True
        self._pause_server_reading()
        self._change_user_reply(login.change_user(command))

    def _change_user_packet(self, packet: Packet) -> None:
        login = self.login
        assert login is not None
        self._client_seq = (packet.last_sequence_id + 1) & 0xFF
        try:
            reply = login.receive(packet.payload)
        except ProtocolError as exc:
            self._fail(ErrorCode.PROTOCOL_VIOLATION, exc.message)
            return
        self._change_user_reply(reply)

    def _change_user_reply(self, reply: Reply) -> None:
        if reply.accepted is not None:
            self._pause_client()
            self.service.spawn(self._switch_user(reply))
            return
        self._send(reply.packets)
        if reply.refused:
            login = self.login
            log.info("%r: COM_CHANGE_USER refused: %s", self, login.failure if login else "")
            self._release_server()
            self.close()

    def _pause_server_reading(self) -> None:
        server = self.server
        if server is not None:
            server.pause_reading()

    async def _switch_user(self, reply: Reply) -> None:
        """After a successful COM_CHANGE_USER: give the old connection back, take the new
        user's (none under transaction pooling: a fresh session's units of work), then send
        the OK."""
        done = reply.accepted
        assert done is not None
        old_user = self.user
        try:
            self._release_server()
            if self._counted and old_user is not None:
                self.service.limits.leave(old_user)
                self._counted = False
            self.logged_in = done
            cluster = self.service.cluster_for(done.user, done.database)
            self.user, self.cluster = done.user, cluster
            mode = check_pool_mode(cluster, done.user)
            self.service.admit(done.user)
            self._counted = True
            if mode is PoolMode.TRANSACTION:
                self._start_transaction_pooling(cluster, done)
                self._changing_user = False
                self._send(reply.packets)
                self._resume_client()
                self._next_queued()
                return
            taken = await checkout(self.service, cluster, done)
            server, pool = taken.server, taken.pool
        except Refused as refused:
            self._send_error(refused.code, refused.message)
            self.close()
            return
        except Exception as exc:
            log.info("%r: COM_CHANGE_USER failed: %s", self, exc)
            self._send_error(ErrorCode.SERVER_UNAVAILABLE, f"COM_CHANGE_USER failed: {exc}")
            self.close()
            return
        if self.closed:
            pool.release(server)
            return
        self.server, self.pool = server, pool
        server.attach(self)
        self._changing_user = False
        self._send(reply.packets)
        self._resume_client()
        self._next_queued()

    # -- hooks: the command phase (frontend.ClientSession) --------------------------------------

    def _start_transaction_pooling(self, cluster: MySqlCluster, done: LoggedIn) -> None:
        """Transaction pooling: set up the units of work (no connection until the first
        command)."""
        raise NotImplementedError

    def _client_packet(self, packet: Packet) -> None:
        """A packet of the command phase."""
        raise NotImplementedError

    def _next_queued(self) -> None:
        """Run the commands that waited behind the one in flight."""
        raise NotImplementedError

    def _fail(self, code: ErrorCode, message: str) -> None:
        """Tell the client why and close it; the server connection is not reused."""
        raise NotImplementedError

    def _release_server(self) -> None:
        """Give the server connection back (or drop it)."""
        raise NotImplementedError

    # ServerSink (backend.ServerConnection.attach), implemented by the command phase.

    def server_packets(self, conn: ServerConnection, run: PacketRun) -> None:
        """Packets of the attached server's response."""
        raise NotImplementedError

    def server_lost(self, conn: ServerConnection) -> None:
        """The attached server connection went away."""
        raise NotImplementedError
