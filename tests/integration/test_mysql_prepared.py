"""Binary-protocol prepared statements under transaction pooling (issue #12, item 4), against
a real MariaDB primary and a GTID replica, through a small pool (pool_size = 2 per server).

A client's statement ids are the proxy's; each server connection holds its own statements,
prepared again wherever a unit runs, at most `max_prepared_statements` of them, and closed when
no client uses them. Clients: mysql-connector-python's `cursor(prepared=True)`, and raw
COM_STMT_* commands through the project's own codec (`mysql.backend.connect_server` logs in to
the proxy as it would to a server) for what connectors rarely send: cursors, long data,
statement id -1.
"""

from __future__ import annotations

import asyncio
import struct
import time
from collections.abc import Callable, Iterator
from typing import Any

import mysql.connector
import pytest

from dbbalancer.config.loader import parse_config
from dbbalancer.core.topology import Server, ServerRole
from dbbalancer.mysql.backend import ServerConnection, ServerError, connect_server
from dbbalancer.mysql.codec import (
    ColumnCount,
    ColumnDefinition41,
    ComStmtClose,
    ComStmtExecute,
    ComStmtFetch,
    ComStmtPrepare,
    ComStmtReset,
    ComStmtSendLongData,
    CursorType,
    FieldType,
    Packet,
    ServerStatus,
    decode_binary_row,
)
from dbbalancer.testing.balancer import BalancerThread
from dbbalancer.testing.mariadbcluster import MariaDbCluster

from .test_mysql_pooling import pooling_config, port_of

pytestmark = pytest.mark.timeout(240)

CAP = 3
MB = 1 << 20


def prepared_config(cluster: MariaDbCluster, *, cap: int = CAP, pool_size: int = 2) -> str:
    """Transaction pooling with splitting over every node, `pool_size` per server."""
    extra = f'read_write_split = true\nmax_replica_lag = "1h"\nmax_prepared_statements = {cap}'
    config = pooling_config(cluster, extra=extra, primary_only=False)
    return config.replace("pool_size = 1", f"pool_size = {pool_size}")


@pytest.fixture
def cluster(mariadb_cluster_factory: Any) -> MariaDbCluster:
    """A private primary and replica: the statement counts on its servers are this test's."""
    made: MariaDbCluster = mariadb_cluster_factory(replicas=1)
    made.sql(
        made.primary,
        "CREATE TABLE ps_t (id INT PRIMARY KEY, v VARCHAR(20)); "
        "INSERT INTO ps_t SELECT seq, CONCAT('v', seq) FROM seq_1_to_50",
    )
    made.wait_replicated()
    return made


@pytest.fixture
def balancer(cluster: MariaDbCluster) -> Iterator[BalancerThread]:
    with BalancerThread(parse_config(prepared_config(cluster))) as thread:
        yield thread


def connector(balancer: BalancerThread, **kwargs: Any) -> Any:
    """mysql-connector-python, pure Python. It sends `SET NAMES` after logging in, so its
    units replay that and its connections are reset when they go back (statements included)."""
    options: dict[str, Any] = {
        "host": "127.0.0.1",
        "port": port_of(balancer),
        "user": "app",
        "password": "app",
        "database": "app",
        "ssl_disabled": True,
        "autocommit": True,
        "use_pure": True,
        "charset": "utf8mb4",
        "collation": "utf8mb4_general_ci",
    }
    options.update(kwargs)
    return mysql.connector.connect(**options)


def prepared_count(cluster: MariaDbCluster) -> dict[str, int]:
    """Prepared_stmt_count of each server (global: every session's statements)."""
    counts = {}
    for node in cluster.nodes:
        rows = cluster.sql(node, "SHOW GLOBAL STATUS LIKE 'Prepared_stmt_count'")
        counts[node.name] = int(rows[0][1] or 0)
    return counts


def pool_usage(balancer: BalancerThread) -> dict[str, tuple[int, int]]:
    """(active, connections) of every pool, read on the balancer's loop."""

    def read() -> dict[str, tuple[int, int]]:
        service = balancer.app.mysql
        assert service is not None
        return {
            stats.key: (stats.active, stats.active + stats.idle)
            for cluster in service.clusters()
            for stats in cluster.runtime.stats()
        }

    return balancer.call(read)


def wait_for(check: Callable[[], bool], what: str, limit: float = 20.0) -> None:
    deadline = time.monotonic() + limit
    while not check():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


# -- mysql-connector-python -------------------------------------------------------------------


def test_many_clients_many_statements_share_two_connections(
    balancer: BalancerThread, cluster: MariaDbCluster
) -> None:
    """Twelve clients keep four statements each open at once and take turns: were an open
    statement to pin its client, the third client would wait for a connection forever."""
    clients = [connector(balancer) for _ in range(12)]
    try:
        cursors = [[c.cursor(prepared=True) for _ in range(4)] for c in clients]
        texts = [
            "SELECT ? + 1",
            "SELECT v FROM ps_t WHERE id = ?",
            "SELECT COUNT(*) FROM ps_t WHERE id <= ?",
            "SELECT CONCAT(?, '-', @@server_id > 0)",
        ]
        for round_ in range(5):
            for n, client_cursors in enumerate(cursors):
                k = (n + round_) % 40 + 1
                expected = [(k + 1,), (f"v{k}",), (k,), (f"c{k}-1",)]
                for cur, sql, want in zip(client_cursors, texts, expected, strict=True):
                    param = f"c{k}" if "CONCAT" in sql else k
                    cur.execute(sql, (param,))
                    assert cur.fetchall() == [want], (n, round_, sql)
                # Between its commands a client holds no server connection (the one it used
                # may still be being reset: its session has SET NAMES to replay).
                wait_for(
                    lambda: all(active == 0 for active, _ in pool_usage(balancer).values()),
                    f"client {n} keeps a connection: {pool_usage(balancer)}",
                )
        usage = pool_usage(balancer)
        assert all(total <= 2 for _, total in usage.values()), usage
        # Four texts, each at most once on each of a server's two connections.
        counts = prepared_count(cluster)
        assert all(count <= CAP * 2 for count in counts.values()), counts
        for client_cursors in cursors:
            for cur in client_cursors:
                cur.close()
    finally:
        for c in clients:
            c.close()
    wait_for(
        lambda: all(n == 0 for n in prepared_count(cluster).values()),
        f"statements left on the servers after every client left: {prepared_count(cluster)}",
    )


def test_a_prepared_read_goes_to_a_replica_and_a_write_to_the_primary(
    balancer: BalancerThread, cluster: MariaDbCluster
) -> None:
    replica = next(node for node in cluster.nodes if node != cluster.primary)
    cnx = connector(balancer)
    try:
        read = cnx.cursor(prepared=True)
        for _ in range(3):
            read.execute("SELECT @@port, ? + 0", (7,))
            assert read.fetchall() == [(replica.port, 7)]
        # A locking read is a write to the router; a replica would run it without complaint.
        locking = cnx.cursor(prepared=True)
        locking.execute("SELECT @@port FROM ps_t WHERE id = ? FOR UPDATE", (1,))
        assert locking.fetchall() == [(cluster.primary.port,)]
        write = cnx.cursor(prepared=True)
        write.execute("INSERT INTO ps_t VALUES (?, ?)", (1000, "new"))
        assert write.rowcount == 1
        read.execute("SELECT @@port, ? + 0", (8,))
        assert read.fetchall() == [(replica.port, 8)]
    finally:
        cnx.close()
    assert cluster.sql(cluster.primary, "SELECT v FROM ps_t WHERE id = 1000") == [("new",)]


def test_a_prepared_statement_after_use_follows_its_database(
    balancer: BalancerThread, cluster: MariaDbCluster
) -> None:
    """The same text in two databases is two statements: a client that switched database is
    never handed the statement another client prepared in the cluster's."""
    cluster.sql(
        cluster.primary,
        "CREATE DATABASE ps_other; CREATE TABLE ps_other.ps_t (id INT, v VARCHAR(20)); "
        "INSERT INTO ps_other.ps_t VALUES (1, 'other'); "
        f"GRANT ALL PRIVILEGES ON ps_other.* TO '{cluster.user}'@'127.0.0.1'",
    )
    cluster.wait_replicated()
    a, b = connector(balancer), connector(balancer)
    try:
        in_app = a.cursor(prepared=True)
        in_app.execute("SELECT v FROM ps_t WHERE id = ?", (1,))
        assert in_app.fetchall() == [("v1",)]
        plain = b.cursor()
        plain.execute("USE ps_other")
        plain.close()
        in_other = b.cursor(prepared=True)
        in_other.execute("SELECT v FROM ps_t WHERE id = ?", (1,))
        assert in_other.fetchall() == [("other",)]
        in_app.execute("SELECT v FROM ps_t WHERE id = ?", (1,))
        assert in_app.fetchall() == [("v1",)]
    finally:
        a.close()
        b.close()


# -- raw COM_STMT_* through the project's codec --------------------------------------------------


def _longlong_params(values: list[int]) -> bytes:
    """The parameter block of a COM_STMT_EXECUTE binding LONGLONGs (types sent)."""
    n = len(values)
    bitmap = bytes((n + 7) // 8)
    types = bytes((FieldType.LONGLONG, 0)) * n
    return bitmap + b"\x01" + types + b"".join(struct.pack("<q", v) for v in values)


Rows = list[tuple[bytes | None, ...]]


def _rows(packets: list[Packet], types: tuple[int, ...] = ()) -> tuple[Rows, int]:
    """The binary rows of a COM_STMT_EXECUTE's result set, or of a COM_STMT_FETCH given the
    column `types` (every column here is a LONGLONG unless said), and the status flags of the
    last EOF."""
    rows: Rows = []
    status = 0
    i = 0
    if packets and packets[0].payload[:1] not in (b"\x00", b"\xfe", b"\xff"):
        count = ColumnCount.decode(packets[0].payload).count
        types = tuple(ColumnDefinition41.decode(p.payload).type for p in packets[1 : 1 + count])
        i = 1 + count
    for packet in packets[i:]:
        payload = packet.payload
        if payload[:1] == b"\xfe" and len(payload) < 9:
            status = int.from_bytes(payload[3:5], "little")
            continue
        rows.append(decode_binary_row(payload, types or (FieldType.LONGLONG,)))
    return rows, status


async def _raw_client(balancer: BalancerThread) -> ServerConnection:
    proxy = Server("dbbalancer", "127.0.0.1", port_of(balancer), ServerRole.PRIMARY)
    return await connect_server(
        proxy,
        user="app",
        password="app",
        database="app",
        connect_timeout=10.0,
        max_payload=MB,
    )


async def _prepare(conn: ServerConnection, sql: str) -> int:
    await conn.roundtrip(ComStmtPrepare(sql.encode()).encode())
    assert conn.tracker is not None
    ok = conn.tracker.prepare_ok
    assert ok is not None
    return ok.statement_id


def _ints(rows: Rows) -> list[int]:
    return [int(struct.unpack("<q", row[0] or bytes(8))[0]) for row in rows]


async def _run(conn: ServerConnection, sid: int, values: list[int]) -> list[int]:
    payload = ComStmtExecute(sid, 0, 1, _longlong_params(values)).encode()
    return _ints(_rows(await conn.roundtrip(payload))[0])


def test_the_cap_bounds_the_statements_of_each_connection(
    balancer: BalancerThread, cluster: MariaDbCluster
) -> None:
    """Ten statements per client, three clients, cap 3: each server holds at most 3 x its two
    connections, every statement still answers right (prepared again where it is missing), and
    the statements go when the clients do."""

    async def main() -> None:
        clients = [await _raw_client(balancer) for _ in range(3)]
        try:
            ids = [
                [await _prepare(c, f"SELECT CAST(? AS SIGNED) * {i + 2} + {n}") for i in range(10)]
                for n, c in enumerate(clients)
            ]
            peak: dict[str, int] = {}
            for round_ in range(3):
                for n, c in enumerate(clients):
                    for i, sid in enumerate(ids[n]):
                        assert await _run(c, sid, [round_ + 1]) == [(round_ + 1) * (i + 2) + n]
                    for node, count in prepared_count(cluster).items():
                        peak[node] = max(peak.get(node, 0), count)
            assert all(count <= CAP * 2 for count in peak.values()), peak
            assert max(peak.values()) >= CAP  # the cap was reached, not just respected
        finally:
            for c in clients:
                c.close()

    asyncio.run(main())
    wait_for(
        lambda: all(n == 0 for n in prepared_count(cluster).values()),
        f"statements left after the clients left: {prepared_count(cluster)}",
    )


def test_closing_a_statement_closes_it_where_nobody_else_uses_it(
    balancer: BalancerThread, cluster: MariaDbCluster
) -> None:
    async def main() -> None:
        a, b = await _raw_client(balancer), await _raw_client(balancer)
        try:
            shared_a = await _prepare(a, "SELECT CAST(? AS SIGNED) + 100")
            shared_b = await _prepare(b, "SELECT CAST(? AS SIGNED) + 100")
            own = await _prepare(a, "SELECT CAST(? AS SIGNED) + 200")
            for conn, sid, want in ((a, shared_a, 101), (b, shared_b, 101), (a, own, 201)):
                assert await _run(conn, sid, [1]) == [want]
            a.send_command(ComStmtClose(own).encode())  # answered by the proxy
            a.send_command(ComStmtClose(shared_a).encode())  # b still uses the text: kept
            assert await a.query("SELECT 1") == [(b"1",)]
            wait_for(
                lambda: sum(prepared_count(cluster).values()) <= 2,
                f"the closed statement is still prepared: {prepared_count(cluster)}",
            )
            assert sum(prepared_count(cluster).values()) >= 1
            assert await _run(b, shared_b, [2]) == [102]
        finally:
            a.close()
            b.close()

    asyncio.run(main())
    wait_for(
        lambda: all(n == 0 for n in prepared_count(cluster).values()),
        f"statements left after the clients left: {prepared_count(cluster)}",
    )


def test_a_cursor_pins_its_client_until_it_is_exhausted(balancer: BalancerThread) -> None:
    async def main() -> None:
        a = await _raw_client(balancer)
        others = [await _raw_client(balancer) for _ in range(3)]
        try:
            ids = await _prepare(a, "SELECT CAST(id AS SIGNED) FROM ps_t WHERE id <= ? ORDER BY id")
            packets = await a.roundtrip(
                ComStmtExecute(ids, CursorType.READ_ONLY, 1, _longlong_params([7])).encode()
            )
            _, status = _rows(packets)
            assert status & ServerStatus.CURSOR_EXISTS
            assert sum(active for active, _ in pool_usage(balancer).values()) == 1  # pinned
            seen: list[int] = []
            for _ in range(10):
                # Others use the pool between the cursor's fetches (and their own statement
                # ids, which may collide with a's on the server: each is mapped).
                for other in others:
                    sid = await _prepare(other, "SELECT CAST(? AS SIGNED) * 2")
                    rows, _ = _rows(
                        await other.roundtrip(
                            ComStmtExecute(sid, 0, 1, _longlong_params([21])).encode()
                        )
                    )
                    assert _ints(rows) == [42]
                    await other.roundtrip(ComStmtClose(sid).encode())
                rows, status = _rows(await a.roundtrip(ComStmtFetch(ids, 3).encode()))
                seen += _ints(rows)
                if status & ServerStatus.LAST_ROW_SENT:
                    break
            assert seen == [1, 2, 3, 4, 5, 6, 7]
            wait_for(
                lambda: sum(active for active, _ in pool_usage(balancer).values()) == 0,
                "the exhausted cursor still pins its client",
            )
            # A new cursor, ended by COM_STMT_RESET, unpins as well.
            await a.roundtrip(
                ComStmtExecute(ids, CursorType.READ_ONLY, 1, _longlong_params([3])).encode()
            )
            assert sum(active for active, _ in pool_usage(balancer).values()) == 1
            await a.roundtrip(ComStmtReset(ids).encode())
            assert sum(active for active, _ in pool_usage(balancer).values()) == 0
            with pytest.raises(ServerError) as no_cursor:
                await a.roundtrip(ComStmtFetch(ids, 3).encode())
            assert no_cursor.value.errno == 1421
        finally:
            for conn in (a, *others):
                conn.close()

    asyncio.run(main())


def test_long_data_stays_on_its_connection_until_the_execute(balancer: BalancerThread) -> None:
    async def main() -> None:
        a = await _raw_client(balancer)
        b = await _raw_client(balancer)
        try:
            sid = await _prepare(a, "SELECT CONCAT(?, '!')")
            for chunk in (b"hello ", b"long ", b"data"):
                a.send_command(ComStmtSendLongData(sid, 0, chunk).encode())  # no response
                # b takes units meanwhile; a's parameter data must not move or leak.
                bid = await _prepare(b, "SELECT CONCAT(?, '?')")
                params = b"\x00\x01" + bytes((FieldType.VAR_STRING, 0)) + b"\x02hi"
                rows, _ = _rows(await b.roundtrip(ComStmtExecute(bid, 0, 1, params).encode()))
                assert rows == [(b"hi?",)]
            assert sum(active for active, _ in pool_usage(balancer).values()) == 1  # a, pinned
            params = b"\x00\x01" + bytes((FieldType.BLOB, 0))  # the value came as long data
            rows, _ = _rows(await a.roundtrip(ComStmtExecute(sid, 0, 1, params).encode()))
            assert rows == [(b"hello long data!",)]
            assert sum(active for active, _ in pool_usage(balancer).values()) == 0
        finally:
            a.close()
            b.close()

    asyncio.run(main())


def test_statement_ids_are_the_clients_own(balancer: BalancerThread) -> None:
    """Ids count per client from 1; -1 names the last prepared (MariaDB); an id the client
    does not hold gets ER_UNKNOWN_STMT_HANDLER, even when a server statement has that id; the
    parameter types of the first execute are remembered for executes that send none."""

    async def main() -> None:
        a = await _raw_client(balancer)
        b = await _raw_client(balancer)
        try:
            first = await _prepare(a, "SELECT CAST(? AS SIGNED) + 1")
            second = await _prepare(a, "SELECT CAST(? AS SIGNED) + 2")
            assert (first, second) == (1, 2)
            assert await _prepare(b, "SELECT CAST(? AS SIGNED) + 3") == 1
            rows, _ = _rows(
                await a.roundtrip(ComStmtExecute(0xFFFFFFFF, 0, 1, _longlong_params([40])).encode())
            )
            assert _ints(rows) == [42]
            rows, _ = _rows(
                await b.roundtrip(ComStmtExecute(1, 0, 1, _longlong_params([40])).encode())
            )
            assert _ints(rows) == [43]
            rows, _ = _rows(
                await a.roundtrip(ComStmtExecute(first, 0, 1, _longlong_params([1])).encode())
            )
            assert _ints(rows) == [2]
            for _ in range(4):  # on whichever connection: the types come from the first execute
                no_types = b"\x00\x00" + struct.pack("<q", 5)
                rows, _ = _rows(await a.roundtrip(ComStmtExecute(first, 0, 1, no_types).encode()))
                assert _ints(rows) == [6]
            a.send_command(ComStmtClose(first).encode())
            with pytest.raises(ServerError) as unknown:
                await a.roundtrip(ComStmtExecute(first, 0, 1, _longlong_params([1])).encode())
            assert unknown.value.errno == 1243
            with pytest.raises(ServerError) as never:
                await b.roundtrip(ComStmtExecute(2, 0, 1, _longlong_params([1])).encode())
            assert never.value.errno == 1243
        finally:
            a.close()
            b.close()

    asyncio.run(main())
