"""Connections from the proxy to MySQL and MariaDB servers.

`connect_server` opens a TCP connection and logs in ("Connection Phase" of the MySQL Source
Code Documentation, MariaDB "Connection"): it reads the HandshakeV10 greeting, answers with a
HandshakeResponse41 whose capabilities are those the caller asks for, intersected with the
server's and with what the codec decodes (`codec.negotiate`), and authenticates with
mysql_native_password or caching_sha2_password, following AuthSwitchRequest and AuthMoreData.
caching_sha2_password's full authentication runs over plain TCP: the proxy asks for the server's
RSA public key (AuthMoreData 0x02) and sends the password encrypted with it (`mysql.auth`).
MariaDB's client_ed25519 is spoken when the server switches to it (a user created
``IDENTIFIED VIA ed25519``): the proxy signs the 32-byte scramble with the key the password
derives. A server that asks for any other plugin is refused with a message naming it; a login
the server refuses as access denied names the server and the plugin.

A logged-in `ServerConnection` then runs in one of two modes:

* **conversation** (probes, resets): `query`, `query_sets`, `ping`, `reset` send one command
  and await its whole response.
* **forwarding** (attached to a client session): after `attach(sink)` the server's whole
  packets (sequence ids checked) go to `sink.server_packets` as they arrive, as runs of raw
  bytes (`codec.PacketRun`: what one read brought of a response, up to its end), which the
  sink writes on as they are; `send_command` and `send_packet` write the client's packets.
  Rows and definitions are only counted, never decoded. The connection follows
  each command's response with a `codec.ResponseTracker` (`conn.tracker`), set up by
  `send_command`, so `conn.tracker.phase` tells the sink when a response is complete
  (`Phase.DONE`) or waits for the client (`Phase.CLIENT_TURN`: LOCAL INFILE data, an
  authentication round of COM_CHANGE_USER), and `conn.status` holds the last status flags.

Packets that arrive while no command is in flight are the server's goodbye (an ERR such as
ER_SERVER_SHUTDOWN or ER_CONNECTION_KILLED before it closes the connection): they mark the
connection broken, go to the sink if one is attached, and are kept in `conn.unsolicited`.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from dataclasses import dataclass
from typing import Final, Protocol, cast

from dbbalancer.core.cluster import ServerConnectError
from dbbalancer.core.errors import SERVER_GOING_AWAY, ErrorClass
from dbbalancer.core.topology import Server
from dbbalancer.mysql import auth
from dbbalancer.mysql.codec import (
    CACHING_SHA2_PASSWORD,
    FAST_AUTH_SUCCESS,
    MAX_CHUNK,
    MYSQL_NATIVE_PASSWORD,
    PERFORM_FULL_AUTHENTICATION,
    AuthMoreData,
    AuthSwitchRequest,
    Capability,
    ColumnCount,
    ColumnDefinition41,
    CommandByte,
    ComPing,
    ComQuery,
    ComQuit,
    ComResetConnection,
    ErrPacket,
    HandshakeResponse41,
    HandshakeV10,
    OkPacket,
    Packet,
    PacketReader,
    PacketRun,
    Phase,
    ProtocolError,
    ResponseTracker,
    ServerStatus,
    decode_text_row,
    encode_packets,
    execute_opens_cursor,
    negotiate,
)
from dbbalancer.mysql.errors import class_of

__all__ = [
    "ALWAYS_REQUESTED",
    "DEFAULT_CAPABILITIES",
    "UTF8MB4_GENERAL_CI",
    "ConnectionClosed",
    "ResultSet",
    "ServerConnection",
    "ServerError",
    "ServerSink",
    "ServerUnavailable",
    "connect_server",
]

log = logging.getLogger(__name__)

# What the proxy asks a server for unless the caller narrows it (`connect_server`'s
# `capabilities`): the client side needs the same flags as its client to forward responses
# unchanged, so it passes the client's own.
DEFAULT_CAPABILITIES: Final = (
    Capability.LONG_PASSWORD
    | Capability.LONG_FLAG
    | Capability.PROTOCOL_41
    | Capability.TRANSACTIONS
    | Capability.SECURE_CONNECTION
    | Capability.MULTI_STATEMENTS
    | Capability.MULTI_RESULTS
    | Capability.PS_MULTI_RESULTS
    | Capability.PLUGIN_AUTH
    | Capability.CONNECT_ATTRS
    | Capability.PLUGIN_AUTH_LENENC_CLIENT_DATA
    | Capability.SESSION_TRACK
    | Capability.DEPRECATE_EOF
)
# Asked for whatever the caller says: the login needs them, and they change nothing after it.
ALWAYS_REQUESTED: Final = (
    Capability.PROTOCOL_41
    | Capability.SECURE_CONNECTION
    | Capability.PLUGIN_AUTH
    | Capability.PLUGIN_AUTH_LENENC_CLIENT_DATA
)
UTF8MB4_GENERAL_CI: Final = 45  # known to every MySQL and MariaDB since 5.5
CONNECT_ATTRS: Final = (("_client_name", "dbbalancer"),)
_REQUEST_PUBLIC_KEY: Final = b"\x02"  # caching_sha2_password, over a connection without TLS
# Plugins the first answer may use; a server switches to the others (`_SWITCH_PLUGINS`).
_PLUGINS: Final = frozenset({MYSQL_NATIVE_PASSWORD, CACHING_SHA2_PASSWORD})
_SWITCH_PLUGINS: Final = _PLUGINS | {auth.CLIENT_ED25519}
# Tested after every response: plain ints (an IntFlag operation runs Python-level enum code).
_IN_TRANS: Final = int(ServerStatus.IN_TRANS)
_AUTOCOMMIT: Final = int(ServerStatus.AUTOCOMMIT)


class ServerError(Exception):
    """The server answered with an ERR packet (during login or one of the proxy's commands)."""

    def __init__(self, errno: int, sqlstate: str | None, message: str) -> None:
        super().__init__(f"{message} (errno {errno}, SQLSTATE {sqlstate or '-'})")
        self.errno = errno
        self.sqlstate = sqlstate
        self.message = message

    @classmethod
    def of(cls, err: ErrPacket) -> ServerError:
        """The exception for an ERR packet."""
        return cls(err.errno, err.sqlstate, err.message)


class ServerUnavailable(ServerConnectError):
    """The server could not be reached or logged in to; the message says which and why."""


class ConnectionClosed(Exception):
    """The server closed the connection while a packet was awaited."""


class ServerSink(Protocol):
    """The client side of a forwarding server connection (see `ServerConnection.attach`)."""

    def server_packets(self, conn: ServerConnection, run: PacketRun) -> None:
        """Whole server packets, in order, as the server framed them. One call never holds
        packets of two responses: the last packet of a run may end the response
        (`conn.tracker.phase` says so)."""

    def server_lost(self, conn: ServerConnection) -> None:
        """The server connection closed or broke while attached."""


@dataclass(frozen=True, slots=True)
class ResultSet:
    """One text-protocol result set: column names and rows (NULL as None)."""

    columns: tuple[str, ...]
    rows: list[tuple[bytes | None, ...]]
    types: tuple[tuple[int, int], ...] = ()  # (column type, character set) per column

    def column(self, *names: str) -> int | None:
        """The index of the first of `names` that is a column (servers rename columns:
        Slave_IO_Running / Replica_IO_Running), None if none is."""
        for name in names:
            if name in self.columns:
                return self.columns.index(name)
        return None


class ServerConnection(asyncio.Protocol):
    """One logged-in connection to a MySQL or MariaDB server."""

    def __init__(self, server: Server, max_payload: int) -> None:
        self.server = server
        self.transport: asyncio.Transport | None = None
        self.reader = PacketReader(max_payload, expected_sequence=0)
        self.capabilities = Capability(0)
        self.server_version = ""
        self.connection_id = 0
        self.status = 0
        # Whose LAST_INSERT_ID() the session holds, as far as the proxy knows: a holder of
        # mysql/insertid.py, (None, 0) when new or reset (the engine keeps it up to date).
        self.insert_id: tuple[object | None, int] | None = (None, 0)
        # The client whose command this session ran last (None: new or reset): what
        # ROW_COUNT(), FOUND_ROWS() and warnings report is that client's.
        self.last_user: object | None = None
        # The binary-protocol statements prepared here (mysql/statements.StatementRegistry).
        self.prepared_statements: object | None = None
        self.tracker: ResponseTracker | None = None
        self.unsolicited: list[Packet] = []
        self.created_at = time.monotonic()
        self.closed = False
        self.writing_paused = False
        self._logging_in = True
        self._broken = False
        self._sink: ServerSink | None = None
        # Conversation mode: packets with the phase their arrival left the response in.
        self._queue: collections.deque[tuple[Packet, Phase]] = collections.deque()
        self._waiter: asyncio.Future[None] | None = None
        self._failure: BaseException | None = None
        self._closed_waiter: asyncio.Future[None] | None = None
        self._reading_paused = False

    # -- state -------------------------------------------------------------------------------

    @property
    def broken(self) -> bool:
        """True once this connection must not be reused."""
        return self._broken or self.closed

    def mark_broken(self) -> None:
        """Never hand this connection out again."""
        self._broken = True

    @property
    def in_flight(self) -> bool:
        """True while a command's response is not complete."""
        tracker = self.tracker
        return tracker is not None and tracker.phase is not Phase.DONE

    @property
    def in_transaction(self) -> bool:
        """SERVER_STATUS_IN_TRANS of the last status the server sent."""
        return bool(self.status & _IN_TRANS)

    @property
    def autocommit(self) -> bool:
        """SERVER_STATUS_AUTOCOMMIT of the last status the server sent."""
        return bool(self.status & _AUTOCOMMIT)

    @property
    def is_mariadb(self) -> bool:
        """True for MariaDB (its greeting's version says so: "5.5.5-10.11.6-MariaDB...")."""
        return "mariadb" in self.server_version.lower()

    def __repr__(self) -> str:
        return f"<ServerConnection {self.server.name} id={self.connection_id}>"

    # -- asyncio.Protocol --------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)
        self._closed_waiter = asyncio.get_running_loop().create_future()

    def data_received(self, data: bytes) -> None:
        reader = self.reader
        try:
            reader.feed(data)
            while True:
                sink = self._sink
                tracker = self.tracker
                if sink is not None and tracker is not None and tracker.phase is Phase.MORE:
                    # The fast path: the response's whole packets as one run of raw bytes. A
                    # run ends where the response does or gives the client its turn: the
                    # sink acts (and may send the next command) before anything else comes.
                    run = reader.take_response(tracker)
                    if run is not None:
                        self._accounted(tracker)
                        sink.server_packets(self, run)
                        continue
                # A 16 MB packet, an unsolicited one, the login, a conversation.
                packet = reader.next()
                if packet is None:
                    break
                phase = self._account(packet)
                sink = self._sink
                if sink is None:
                    self._queue.append((packet, phase))
                    self._wake()
                else:
                    sink.server_packets(self, PacketRun.of(packet))
        except ProtocolError as exc:
            log.error("%r: %s", self, exc.message)
            self._fail(exc)

    def _account(self, packet: Packet) -> Phase:
        """Follow the response `packet` belongs to; the phase it leaves the response in."""
        if self._logging_in:
            return Phase.MORE
        tracker = self.tracker
        if tracker is None or tracker.phase is Phase.DONE:
            # Nothing asked: the server says goodbye (shutdown, KILL, a timeout) and closes.
            self.unsolicited.append(packet)
            self.mark_broken()
            return Phase.DONE
        if tracker.phase is Phase.CLIENT_TURN:
            raise ProtocolError("server packet while the server waits for the client")
        phase = tracker.server_packet(packet.payload)
        self._accounted(tracker)
        return phase

    def _accounted(self, tracker: ResponseTracker) -> None:
        """Take in the status a response's packets carried; note where it ended."""
        flags = tracker.status_flags
        if flags is not None:
            self.status = flags
        if tracker.phase is Phase.DONE:
            # Idle: whatever comes next is unsolicited, with any sequence id.
            self.reader.expected_sequence = None

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._broken = True
        if self._failure is None:
            self._failure = ConnectionClosed(f"server {self.server.name} closed the connection")
        self._wake()
        waiter = self._closed_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        sink = self._sink
        if sink is not None:
            self._sink = None
            sink.server_lost(self)

    def pause_writing(self) -> None:
        self.writing_paused = True

    def resume_writing(self) -> None:
        self.writing_paused = False

    def _fail(self, exc: BaseException) -> None:
        self.mark_broken()
        if self._failure is None:
            self._failure = exc
        self._wake()
        self.abort()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # -- transport ---------------------------------------------------------------------------

    def _write(self, data: bytes) -> None:
        transport = self.transport
        if transport is not None and not transport.is_closing():
            transport.write(data)

    def pause_reading(self) -> None:
        """Stop reading from the server (flow control: the client is behind)."""
        transport = self.transport
        if not self._reading_paused and transport is not None:
            if not transport.is_closing():
                transport.pause_reading()
            self._reading_paused = True

    def resume_reading(self) -> None:
        """Read from the server again."""
        transport = self.transport
        if self._reading_paused and transport is not None:
            if not transport.is_closing():
                transport.resume_reading()
            self._reading_paused = False

    def close(self) -> None:
        """Send COM_QUIT and close after flushing (idempotent)."""
        self.mark_broken()
        transport = self.transport
        if transport is not None and not transport.is_closing():
            transport.write(encode_packets(ComQuit().encode(), 0)[0])
            transport.close()

    def abort(self) -> None:
        """Close at once, dropping unsent data."""
        self.mark_broken()
        if self.transport is not None:
            self.transport.abort()

    async def wait_closed(self) -> None:
        """Wait until the connection is lost."""
        if self._closed_waiter is not None:
            await asyncio.shield(self._closed_waiter)

    # -- forwarding --------------------------------------------------------------------------

    def attach(self, sink: ServerSink) -> None:
        """Hand every server packet from now on to `sink`."""
        queued = list(self._queue)
        self._queue.clear()
        for packet, _ in queued:
            # Unsolicited packets that arrived while idle: the sink sees them first.
            sink.server_packets(self, PacketRun.of(packet))
        self._sink = sink

    def detach(self) -> None:
        """Stop forwarding; later packets are queued for the conversation API. Detaching in
        the middle of a response (or of a packet) leaves a stream nobody can follow: the
        connection is marked broken."""
        self.resume_reading()
        self._sink = None
        if self.in_flight or self.reader.buffered:
            self.mark_broken()

    def send_command(self, payload: bytes) -> None:
        """Write a command packet (sequence id 0, split at 16 MB) and start following its
        response with a new `tracker`. Refused while the previous response is incomplete."""
        if not payload:
            raise ValueError("a command packet has at least its command byte")
        if self.in_flight:
            raise RuntimeError(f"{self!r}: a command while the previous response is incomplete")
        code = payload[0]
        # A COM_STMT_EXECUTE's flags say whether it opens a cursor, which changes where the
        # response ends.
        cursor = code == CommandByte.STMT_EXECUTE and execute_opens_cursor(payload)
        tracker = ResponseTracker(code, self.capabilities, opens_cursor=cursor)
        self.tracker = tracker
        data, next_seq = encode_packets(payload, 0)
        self.reader.expected_sequence = None if tracker.phase is Phase.DONE else next_seq
        self._write(data)

    def send_packet(self, payload: bytes, seq: int) -> None:
        """Write a follow-up packet of the current exchange with sequence id `seq` (LOCAL
        INFILE data, an authentication answer during COM_CHANGE_USER)."""
        tracker = self.tracker
        if tracker is not None and tracker.phase is Phase.CLIENT_TURN:
            tracker.client_packet(payload)
        data, next_seq = encode_packets(payload, seq)
        self.reader.expected_sequence = next_seq
        self._write(data)

    # -- conversation ------------------------------------------------------------------------

    async def next_packet(self) -> tuple[Packet, Phase]:
        """The next queued packet and the phase it left its response in (conversation mode);
        raises ProtocolError or ConnectionClosed."""
        while not self._queue:
            if self._failure is not None:
                raise self._failure
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        return self._queue.popleft()

    def write_login_packet(self, payload: bytes, seq: int) -> None:
        """Write a packet of the connection phase (login only)."""
        data, next_seq = encode_packets(payload, seq)
        self.reader.expected_sequence = next_seq
        self._write(data)

    def login_done(self, status: int) -> None:
        """The server accepted the login: commands may follow."""
        self._logging_in = False
        self.status = status
        self.reader.expected_sequence = None

    async def roundtrip(self, payload: bytes) -> list[Packet]:
        """Send one command and return its whole response; raise ServerError if it ended in
        an ERR (the connection stays usable then). Cancelled or failed mid-way, the
        connection is marked broken."""
        if self._sink is not None:
            raise RuntimeError(f"{self!r}: a conversation on a connection attached to a client")
        if self.broken:
            raise ConnectionClosed(f"{self!r} is broken")
        try:
            self.send_command(payload)
            packets: list[Packet] = []
            phase = Phase.DONE if not self.in_flight else Phase.MORE
            while phase is not Phase.DONE:
                packet, phase = await self.next_packet()
                packets.append(packet)
                if phase is Phase.CLIENT_TURN:
                    # LOAD DATA LOCAL from the proxy's own query: send no file.
                    self.send_packet(b"", packet.last_sequence_id + 1)
        except BaseException:
            self.mark_broken()
            raise
        tracker = self.tracker
        if tracker is not None and tracker.error is not None:
            raise ServerError.of(tracker.error)
        return packets

    async def query_sets(self, sql: str | bytes) -> list[ResultSet]:
        """Run `sql` (COM_QUERY, text protocol); every result set, in order. Statements
        without a result set (SET, INSERT) give none."""
        text = sql.encode("utf-8") if isinstance(sql, str) else sql
        packets = await self.roundtrip(ComQuery(text).encode())
        return _result_sets(packets, self.capabilities)

    async def query(self, sql: str | bytes) -> list[tuple[bytes | None, ...]]:
        """Run `sql`; the rows of all its result sets joined, in order (text values as the
        server sent them, NULL as None). Use `query_sets` to tell result sets apart."""
        return [row for result in await self.query_sets(sql) for row in result.rows]

    async def ping(self) -> None:
        """COM_PING: raises unless the server answers OK."""
        await self.roundtrip(ComPing().encode())

    async def reset(self) -> None:
        """COM_RESET_CONNECTION: the server drops the session's state (user variables,
        temporary tables, prepared statements, session variables, an open transaction) and
        keeps the login. Re-applies nothing: the caller replays what the next client needs.
        This is the reset `compose.reset_and_release` calls between clients."""
        await self.roundtrip(ComResetConnection().encode())
        self.unsolicited.clear()
        self.insert_id = (None, 0)
        self.last_user = None


def _result_sets(packets: list[Packet], capabilities: int) -> list[ResultSet]:
    """Split a complete COM_QUERY response (validated by its ResponseTracker) into result sets."""
    deprecate_eof = bool(capabilities & Capability.DEPRECATE_EOF)
    results: list[ResultSet] = []
    i, n = 0, len(packets)

    def take() -> bytes:
        nonlocal i
        if i >= n:
            raise ProtocolError("result set ends early")
        payload = packets[i].payload
        i += 1
        return payload

    while i < n:
        head = take()
        if not head or head[0] in (0x00, 0xFF, 0xFB, 0xFE):
            continue  # an OK (with more results to come), the ERR, a LOCAL INFILE request
        count = ColumnCount.decode(head).count
        definitions = [ColumnDefinition41.decode(take()) for _ in range(count)]
        columns = tuple(d.name for d in definitions)
        types = tuple((d.type, d.charset) for d in definitions)
        if not deprecate_eof:
            take()  # the EOF after the definitions
        rows: list[tuple[bytes | None, ...]] = []
        while True:
            payload = take()
            if payload[:1] == b"\xff":
                break
            if payload[:1] == b"\xfe" and (
                len(payload) < 9 or (deprecate_eof and len(payload) < MAX_CHUNK)
            ):
                break
            rows.append(decode_text_row(payload, count))
        results.append(ResultSet(columns, rows, types))
    return results


# -- login ------------------------------------------------------------------------------------


def _scramble(plugin: str, password: str, nonce: bytes) -> bytes:
    if plugin == CACHING_SHA2_PASSWORD:
        return auth.caching_sha2_scramble(password, nonce)
    return auth.native_scramble(password, nonce)


def _switch_answer(switch: AuthSwitchRequest, password: str) -> bytes:
    """The answer to an AuthSwitchRequest for one of `_SWITCH_PLUGINS`."""
    if switch.plugin_name != auth.CLIENT_ED25519:
        return _scramble(switch.plugin_name, password, switch.nonce)
    # The whole data is the scramble: its last byte may be 0 (`switch.nonce` would drop it).
    if len(switch.data) != auth.ED25519_NONCE_LENGTH:
        raise ProtocolError(
            f"a {auth.CLIENT_ED25519} scramble of {len(switch.data)} bytes, "
            f"not {auth.ED25519_NONCE_LENGTH}"
        )
    return auth.ed25519_scramble(password, switch.data)


def _refusal(err: ErrPacket, server: str, user: str, plugin: str) -> ServerError:
    """The ServerError for an ERR that ends the login; an access denied names the server and
    the authentication plugin that was answered."""
    if class_of(err.errno) is not ErrorClass.AUTHENTICATION_FAILED:
        return ServerError.of(err)
    return ServerError(
        err.errno,
        err.sqlstate,
        f"server {server} refused the login as '{user}' with {plugin}: {err.message}",
    )


async def _login(
    conn: ServerConnection,
    *,
    user: str,
    password: str,
    database: str | None,
    requested: int,
    max_payload: int,
    charset: int,
) -> None:
    """The connection phase, up to the OK that ends it."""
    name = conn.server.name
    first, _ = await conn.next_packet()
    if first.payload[:1] == b"\xff":
        # Refused before the greeting: too many connections, host blocked.
        raise ServerError.of(ErrPacket.decode(first.payload))
    greeting = HandshakeV10.decode(first.payload)
    conn.server_version = greeting.server_version
    conn.connection_id = greeting.connection_id
    wanted = requested | ALWAYS_REQUESTED
    if database:
        wanted |= Capability.CONNECT_WITH_DB
    caps = negotiate(greeting.capabilities, wanted)
    if not caps & Capability.PROTOCOL_41 or not caps & Capability.SECURE_CONNECTION:
        raise ServerUnavailable(
            f"server {name} ({greeting.server_version}) does not speak protocol 4.1 with "
            "secure authentication"
        )
    conn.capabilities = caps
    plugin = greeting.auth_plugin_name if caps & Capability.PLUGIN_AUTH else ""
    if plugin not in _PLUGINS:
        plugin = MYSQL_NATIVE_PASSWORD  # the server switches us to the user's plugin
    nonce = greeting.auth_plugin_data
    response = HandshakeResponse41(
        capabilities=caps,
        max_packet_size=max_payload,
        charset=charset,
        username=user,
        auth_response=_scramble(plugin, password, nonce),
        database=database if caps & Capability.CONNECT_WITH_DB else None,
        auth_plugin_name=plugin if caps & Capability.PLUGIN_AUTH else None,
        connect_attrs=CONNECT_ATTRS if caps & Capability.CONNECT_ATTRS else None,
    )
    conn.write_login_packet(response.encode(), first.last_sequence_id + 1)
    while True:
        packet, _ = await conn.next_packet()
        payload = packet.payload
        reply = packet.last_sequence_id + 1
        head = payload[:1]
        if head == b"\x00":
            conn.login_done(OkPacket.decode(payload, caps).status_flags)
            return
        if head == b"\xff":
            raise _refusal(ErrPacket.decode(payload), name, user, plugin)
        if head == b"\xfe":
            switch = AuthSwitchRequest.decode(payload)
            if switch.plugin_name not in _SWITCH_PLUGINS:
                raise ServerUnavailable(
                    f"server {name} asks for authentication plugin "
                    f"{switch.plugin_name or '(pre-4.1 password)'!r}; dbbalancer speaks "
                    f"{MYSQL_NATIVE_PASSWORD}, {CACHING_SHA2_PASSWORD} and {auth.CLIENT_ED25519}"
                )
            plugin, nonce = switch.plugin_name, switch.nonce
            conn.write_login_packet(_switch_answer(switch, password), reply)
        elif head == b"\x01" and plugin == CACHING_SHA2_PASSWORD:
            data = AuthMoreData.decode(payload).data
            if data == FAST_AUTH_SUCCESS:
                continue  # the OK follows
            if data == PERFORM_FULL_AUTHENTICATION:
                conn.write_login_packet(_REQUEST_PUBLIC_KEY, reply)
            elif data.startswith(b"-----BEGIN"):
                secret = auth.caching_sha2_encrypt_password(password, nonce, data)
                conn.write_login_packet(secret, reply)
            else:
                raise ProtocolError(f"unexpected caching_sha2_password data {data[:1].hex()}")
        else:
            raise ProtocolError(
                f"unexpected packet 0x{head.hex() or '--'} during authentication ({plugin})"
            )


async def connect_server(
    server: Server,
    *,
    user: str,
    password: str | None,
    database: str | None,
    connect_timeout: float,
    max_payload: int,
    capabilities: Capability | None = None,
    charset: int = UTF8MB4_GENERAL_CI,
) -> ServerConnection:
    """Open and log in a server connection, or raise ServerUnavailable / ServerError.

    `capabilities` narrows what is asked for (default `DEFAULT_CAPABILITIES`); the login's own
    flags (`ALWAYS_REQUESTED`) and CONNECT_WITH_DB (with a database) are added, and the
    result is intersected with the server's. A missing password logs in with an empty one.
    A refusal that says the server, not the request, is the problem (shutting down, too many
    connections: `core.errors.SERVER_GOING_AWAY`) raises ServerUnavailable.
    """
    loop = asyncio.get_running_loop()
    requested = DEFAULT_CAPABILITIES if capabilities is None else capabilities
    try:
        async with asyncio.timeout(connect_timeout):
            _, conn = await loop.create_connection(
                lambda: ServerConnection(server, max_payload), server.host, server.port
            )
            try:
                await _login(
                    conn,
                    user=user,
                    password=password or "",
                    database=database,
                    requested=int(requested),
                    max_payload=max_payload,
                    charset=charset,
                )
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
        if class_of(refused.errno) in SERVER_GOING_AWAY:
            raise ServerUnavailable(f"server {server.name}: {refused}") from refused
        raise
    return conn
