"""Server connections (mysql.backend) against a real MariaDB: login, the conversation API, the
reset between clients, 16 MB packet continuations and the forwarding API."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Coroutine, Iterator
from typing import Any, TypeVar

import pytest
import uvloop

from dbbalancer.compose import reset_and_release
from dbbalancer.config.loader import parse_config
from dbbalancer.core.errors import ErrorClass
from dbbalancer.core.pool import Pool, PoolLimits
from dbbalancer.core.topology import Server, ServerRole
from dbbalancer.mysql import auth as mysql_auth
from dbbalancer.mysql.backend import (
    DEFAULT_CAPABILITIES,
    ServerConnection,
    ServerError,
    ServerUnavailable,
    connect_server,
)
from dbbalancer.mysql.codec import (
    Capability,
    ColumnCount,
    ComQuery,
    ErrPacket,
    OkPacket,
    Packet,
    PacketRun,
    Phase,
    decode_text_row,
)
from dbbalancer.mysql.errors import class_of
from dbbalancer.testing.balancer import BalancerThread
from dbbalancer.testing.mariadbcluster import MariaDbCluster, MariaDbNode
from dbbalancer.testing.ports import LOOPBACK, free_port

T = TypeVar("T")
LoopFactory = Callable[[], asyncio.AbstractEventLoop]
LOOPS = pytest.mark.parametrize(
    "loop_factory", [asyncio.new_event_loop, uvloop.new_event_loop], ids=["asyncio", "uvloop"]
)
MB = 1024 * 1024
ER_NO_SUCH_TABLE = 1146
ER_PARSE_ERROR = 1064


def run(loop_factory: LoopFactory, main: Callable[[], Coroutine[Any, Any, T]]) -> T:
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        return runner.run(main())


def as_server(node: MariaDbNode) -> Server:
    return Server(name=node.name, host=node.host, port=node.port, role=ServerRole.AUTO)


async def connect(
    cluster: MariaDbCluster,
    node: MariaDbNode | None = None,
    *,
    password: str | None = None,
    database: str | None = None,
    max_payload: int = 64 * MB,
    capabilities: Capability | None = None,
) -> ServerConnection:
    return await connect_server(
        as_server(node or cluster.primary),
        user=cluster.user,
        password=cluster.password if password is None else password,
        database=cluster.database if database is None else database,
        connect_timeout=10.0,
        max_payload=max_payload,
        capabilities=capabilities,
    )


@contextlib.asynccontextmanager
async def connected(cluster: MariaDbCluster, **kwargs: Any) -> Any:
    conn = await connect(cluster, **kwargs)
    try:
        yield conn
    finally:
        conn.close()
        await conn.wait_closed()


# -- login ------------------------------------------------------------------------------------


@LOOPS
def test_login_with_native_password(
    mariadb_cluster: MariaDbCluster, loop_factory: LoopFactory
) -> None:
    plugin = mariadb_cluster.sql(
        mariadb_cluster.primary,
        f"SELECT plugin FROM mysql.user WHERE user = '{mariadb_cluster.user}'",
    )
    assert plugin == [("mysql_native_password",)]

    async def main() -> None:
        async with connected(mariadb_cluster) as conn:
            assert conn.is_mariadb
            assert "MariaDB" in conn.server_version
            assert conn.connection_id > 0
            assert conn.capabilities & Capability.DEPRECATE_EOF
            assert conn.capabilities & Capability.SESSION_TRACK
            assert conn.autocommit
            assert not conn.in_transaction
            assert not conn.broken
            rows = await conn.query(
                "SELECT CONNECTION_ID(), CURRENT_USER(), DATABASE(), @@character_set_client"
            )
            assert rows == [
                (
                    str(conn.connection_id).encode(),
                    f"{mariadb_cluster.user}@{LOOPBACK}".encode(),
                    mariadb_cluster.database.encode(),
                    b"utf8mb4",
                )
            ]

    run(loop_factory, main)


@pytest.mark.parametrize(
    ("password", "database", "errno", "error_class"),
    [
        ("wrong", None, 1045, ErrorClass.AUTHENTICATION_FAILED),
        (None, "no_such_db", 1044, ErrorClass.AUTHENTICATION_FAILED),  # no grant on it
    ],
)
def test_refused_logins_raise_server_errors(
    mariadb_cluster: MariaDbCluster,
    password: str | None,
    database: str | None,
    errno: int,
    error_class: ErrorClass,
) -> None:
    async def main() -> None:
        with pytest.raises(ServerError) as refused:
            await connect(mariadb_cluster, password=password, database=database)
        assert refused.value.errno == errno
        assert refused.value.sqlstate is not None
        assert class_of(refused.value.errno) is error_class

    asyncio.run(main())


def test_closed_port_is_unavailable() -> None:
    server = Server("nobody", LOOPBACK, free_port(), ServerRole.AUTO)

    async def main() -> None:
        with pytest.raises(ServerUnavailable, match="cannot connect to server nobody"):
            await connect_server(
                server,
                user="app",
                password="app",
                database=None,
                connect_timeout=5.0,
                max_payload=MB,
            )

    asyncio.run(main())


# -- conversation -------------------------------------------------------------------------------


@pytest.mark.parametrize("deprecate_eof", [True, False], ids=["ok-ends", "eof-ends"])
def test_query_result_sets(mariadb_cluster: MariaDbCluster, deprecate_eof: bool) -> None:
    caps = DEFAULT_CAPABILITIES
    if not deprecate_eof:
        caps &= ~Capability.DEPRECATE_EOF

    async def main() -> None:
        async with connected(mariadb_cluster, capabilities=caps) as conn:
            assert bool(conn.capabilities & Capability.DEPRECATE_EOF) is deprecate_eof
            sets = await conn.query_sets(
                "SELECT 1 AS one, NULL AS nothing, 'é' AS accent; SET @x = 5; "
                "SELECT @x AS x UNION ALL SELECT 6; SELECT 1 FROM DUAL WHERE 0"
            )
            assert [s.columns for s in sets] == [("one", "nothing", "accent"), ("x",), ("1",)]
            assert sets[0].rows == [(b"1", None, "é".encode())]
            assert sets[1].rows == [(b"5",), (b"6",)]
            assert sets[2].rows == []
            assert await conn.query("SELECT 1; SELECT 2") == [(b"1",), (b"2",)]
            assert await conn.query("DO 1") == []
            with pytest.raises(ServerError) as failed:
                await conn.query("SELECT 1; SELECT * FROM no_such_table; SELECT 3")
            assert failed.value.errno == ER_NO_SUCH_TABLE
            # An error ends the response; the connection goes on.
            assert not conn.broken
            assert await conn.query("SELECT 4") == [(b"4",)]
            await conn.query("BEGIN")
            assert conn.in_transaction
            await conn.query("COMMIT")
            assert not conn.in_transaction
            await conn.ping()

    asyncio.run(main())


def test_narrowed_capabilities_are_what_the_server_sees(mariadb_cluster: MariaDbCluster) -> None:
    async def main() -> None:
        caps = DEFAULT_CAPABILITIES & ~Capability.MULTI_STATEMENTS
        async with connected(mariadb_cluster, capabilities=caps) as conn:
            assert not conn.capabilities & Capability.MULTI_STATEMENTS
            with pytest.raises(ServerError) as refused:
                await conn.query("SELECT 1; SELECT 2")
            assert refused.value.errno == ER_PARSE_ERROR

    asyncio.run(main())


@pytest.fixture
def big_packets(mariadb_cluster: MariaDbCluster) -> Iterator[None]:
    primary = mariadb_cluster.primary
    (before,) = mariadb_cluster.sql(primary, "SELECT @@global.max_allowed_packet")[0]
    mariadb_cluster.sql(primary, f"SET GLOBAL max_allowed_packet = {64 * MB}")
    try:
        yield
    finally:
        mariadb_cluster.sql(primary, f"SET GLOBAL max_allowed_packet = {before}")


@LOOPS
def test_statements_and_rows_over_16_mb(
    mariadb_cluster: MariaDbCluster, big_packets: None, loop_factory: LoopFactory
) -> None:
    size = 20 * MB  # two packets: 0xFFFFFF bytes and the rest

    async def main() -> None:
        async with connected(mariadb_cluster) as conn:
            text = "SELECT LENGTH('" + "a" * size + "'), 'end'"
            assert await conn.query(text) == [(str(size).encode(), b"end")]
            rows = await conn.query(f"SELECT REPEAT('b', {size}), 'end'")
            assert rows == [(b"b" * size, b"end")]

    run(loop_factory, main)


def test_a_response_over_max_payload_breaks_the_connection(
    mariadb_cluster: MariaDbCluster,
) -> None:
    async def main() -> None:
        async with connected(mariadb_cluster, max_payload=MB) as conn:
            with pytest.raises(Exception, match="exceeds the limit"):
                await conn.query(f"SELECT REPEAT('b', {2 * MB})")
            assert conn.broken

    asyncio.run(main())


def test_reset_clears_session_state(mariadb_cluster: MariaDbCluster) -> None:
    async def main() -> None:
        async with connected(mariadb_cluster) as conn:
            await conn.query(
                "SET @kept = 'no'; CREATE TEMPORARY TABLE scratch (a int); "
                "INSERT INTO scratch VALUES (1); SET SESSION sql_mode = 'ANSI_QUOTES'; "
                "PREPARE stmt FROM 'SELECT 1'; BEGIN"
            )
            assert conn.in_transaction
            assert await conn.query("SELECT @kept, COUNT(*) FROM scratch") == [(b"no", b"1")]
            await conn.reset()
            assert not conn.in_transaction
            assert conn.autocommit
            assert await conn.query("SELECT @kept, CONNECTION_ID()") == [
                (None, str(conn.connection_id).encode())
            ]
            with pytest.raises(ServerError) as gone:
                await conn.query("SELECT * FROM scratch")
            assert gone.value.errno == ER_NO_SUCH_TABLE
            with pytest.raises(ServerError, match="Unknown prepared statement"):
                await conn.query("EXECUTE stmt")
            (mode,) = (await conn.query("SELECT @@session.sql_mode"))[0]
            assert mode is not None
            assert b"ANSI_QUOTES" not in mode

    asyncio.run(main())


def test_reset_is_the_pools_reset_hook(mariadb_cluster: MariaDbCluster) -> None:
    async def main() -> None:
        pool: Pool[ServerConnection] = Pool(
            "app@primary", lambda: connect(mariadb_cluster), PoolLimits(size=1)
        )
        first = await pool.acquire(5.0)
        await first.query("SET @left_behind = 1")
        await reset_and_release(pool, first)
        again = await pool.acquire(5.0)
        assert again is first
        assert await again.query("SELECT @left_behind") == [(None,)]
        again.abort()  # a reset that fails drops the connection
        await reset_and_release(pool, again)
        assert pool.stats().total_dropped == 1
        pool.close()

    asyncio.run(main())


# -- forwarding ---------------------------------------------------------------------------------


class Sink:
    """Collects what an attached server connection hands over."""

    def __init__(self) -> None:
        self.calls: list[list[Packet]] = []
        self.phases: list[Phase] = []
        self.lost = asyncio.Event()
        self.done = asyncio.Event()
        self.client_turn = asyncio.Event()

    def server_packets(self, conn: ServerConnection, run: PacketRun) -> None:
        self.calls.append(run.packets())
        phase = conn.tracker.phase if conn.tracker is not None else Phase.DONE
        self.phases.append(phase)
        if phase is Phase.DONE:
            self.done.set()
        elif phase is Phase.CLIENT_TURN:
            self.client_turn.set()

    def server_lost(self, conn: ServerConnection) -> None:
        self.lost.set()

    @property
    def packets(self) -> list[Packet]:
        return [p for call in self.calls for p in call]


def test_forwarding_hands_over_whole_packets(
    mariadb_cluster: MariaDbCluster, big_packets: None
) -> None:
    size = 17 * MB

    async def main() -> None:
        async with connected(mariadb_cluster) as conn:
            sink = Sink()
            conn.attach(sink)
            conn.send_command(ComQuery(f"SELECT REPEAT('z', {size}), 7".encode()).encode())
            await sink.done.wait()
            packets = sink.packets
            # Column count, two definitions, the row, the OK that ends the result set.
            assert len(packets) == 5
            assert [p.sequence_id for p in packets] == [1, 2, 3, 4, 6]
            assert packets[3].last_sequence_id == 5  # the row took two chunks
            assert ColumnCount.decode(packets[0].payload).count == 2
            assert decode_text_row(packets[3].payload, 2) == (b"z" * size, b"7")
            assert sink.phases[-1] is Phase.DONE
            assert Phase.DONE not in sink.phases[:-1]
            assert not conn.in_flight
            conn.detach()
            assert not conn.broken
            assert await conn.query("SELECT 1") == [(b"1",)]

    asyncio.run(main())


def test_forwarding_local_infile_with_follow_up_packets(mariadb_cluster: MariaDbCluster) -> None:
    mariadb_cluster.sql(
        mariadb_cluster.primary, "CREATE TABLE IF NOT EXISTS backend_infile (a int)"
    )

    async def main() -> None:
        caps = DEFAULT_CAPABILITIES | Capability.LOCAL_FILES
        async with connected(mariadb_cluster, capabilities=caps) as conn:
            await conn.query("DELETE FROM backend_infile")
            sink = Sink()
            conn.attach(sink)
            conn.send_command(
                ComQuery(b"LOAD DATA LOCAL INFILE 'numbers.txt' INTO TABLE backend_infile").encode()
            )
            await sink.client_turn.wait()
            request = sink.packets[-1]
            assert request.payload == b"\xfbnumbers.txt"
            conn.send_packet(b"1\n2\n", request.last_sequence_id + 1)
            conn.send_packet(b"3\n", request.last_sequence_id + 2)
            conn.send_packet(b"", request.last_sequence_id + 3)
            await sink.done.wait()
            ok = OkPacket.decode(sink.packets[-1].payload, conn.capabilities)
            assert ok.affected_rows == 3
            conn.detach()
            assert await conn.query("SELECT SUM(a) FROM backend_infile") == [(b"6",)]
            await conn.query("DROP TABLE backend_infile")

    asyncio.run(main())


def test_detaching_mid_response_breaks_the_connection(mariadb_cluster: MariaDbCluster) -> None:
    async def main() -> None:
        async with connected(mariadb_cluster) as conn:
            conn.attach(Sink())
            conn.send_command(ComQuery(b"SELECT SLEEP(0.2)").encode())
            with pytest.raises(RuntimeError, match="previous response"):
                conn.send_command(ComQuery(b"SELECT 1").encode())
            conn.detach()
            assert conn.broken

    asyncio.run(main())


def test_a_killed_connection_is_lost_to_its_sink(mariadb_cluster: MariaDbCluster) -> None:
    async def main() -> None:
        async with connected(mariadb_cluster) as victim, connected(mariadb_cluster) as killer:
            sink = Sink()
            victim.attach(sink)
            await killer.query(f"KILL CONNECTION {victim.connection_id}")
            await sink.lost.wait()
            assert victim.broken
            # MariaDB may say goodbye first (ER_CONNECTION_KILLED), as an unsolicited ERR.
            for packet in sink.packets:
                assert ErrPacket.decode(packet.payload).errno > 0

    asyncio.run(main())


# -- caching_sha2_password ----------------------------------------------------------------------
# MariaDB does not speak it; the proxy's own MySQL listener does (mysql/login.py, checked
# against PyMySQL and mysql-connector-python in test_mysql_clients.py). It greets with
# mysql_native_password and switches a caching_sha2_password user over, so a login through it
# takes the AuthSwitchRequest, then the fast path (right password) or the full path with the
# RSA public key (wrong password: the proxy decrypts it, then refuses).


@pytest.fixture(scope="module")
def sha2_listener(mariadb_cluster: MariaDbCluster) -> Iterator[Server]:
    cluster = mariadb_cluster
    cluster.sql(
        cluster.primary,
        "SET SESSION sql_log_bin = 0; "
        f"CREATE USER IF NOT EXISTS 'sha2'@'127.0.0.1' IDENTIFIED BY '{cluster.password}'; "
        f"GRANT ALL PRIVILEGES ON `{cluster.database}`.* TO 'sha2'@'127.0.0.1'",
    )
    servers = "\n".join(
        f'[[clusters.servers]]\nname = "{n.name}"\naddress = "{n.address()}"\n'
        f'role = "{"primary" if n == cluster.primary else "replica"}"'
        for n in cluster.nodes
    )
    config = parse_config(
        f"""
[listen]
mysql = "127.0.0.1:0"

[[users]]
name = "sha2"
password = "{cluster.password}"
auth = "caching_sha2_password"

[[clusters]]
name = "app"
protocol = "mysql"
database = "{cluster.database}"
pool_mode = "session"

{servers}
"""
    )
    with BalancerThread(config) as thread:
        address = thread.app.mysql_address
        assert address is not None
        yield Server("proxy", address[0], address[1], ServerRole.AUTO)


@pytest.mark.parametrize("loop_factory", [asyncio.new_event_loop], ids=["asyncio"])
def test_caching_sha2_password_fast_and_full_paths(
    mariadb_cluster: MariaDbCluster,
    sha2_listener: Server,
    loop_factory: LoopFactory,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Spies (the maths are mysql.auth's, tested against PyMySQL): which path the login took.
    calls: list[str] = []
    for name in ("caching_sha2_scramble", "caching_sha2_encrypt_password"):
        real = getattr(mysql_auth, name)

        def spy(*args: Any, _real: Any = real, _name: str = name) -> bytes:
            calls.append(_name)
            result: bytes = _real(*args)
            return result

        monkeypatch.setattr(mysql_auth, name, spy)

    async def login(password: str) -> ServerConnection:
        return await connect_server(
            sha2_listener,
            user="sha2",
            password=password,
            database=mariadb_cluster.database,
            connect_timeout=10.0,
            max_payload=MB,
        )

    async def main() -> None:
        conn = await login(mariadb_cluster.password)
        try:
            assert await conn.query("SELECT CURRENT_USER()") == [(b"sha2@127.0.0.1",)]
        finally:
            conn.close()
        assert calls == ["caching_sha2_scramble"]  # after the switch: fast path only
        calls.clear()
        with pytest.raises(ServerError) as refused:
            await login("wrong")
        assert refused.value.errno == 1045
        assert calls == ["caching_sha2_scramble", "caching_sha2_encrypt_password"]

    run(loop_factory, main)
