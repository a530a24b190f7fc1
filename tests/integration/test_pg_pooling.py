"""Transaction and statement pooling with real clients: no session state leaks, prepared
statements keep working, limits hold."""

from __future__ import annotations

import asyncio
import os
import resource
import socket
import subprocess
import time
from collections.abc import Iterator

import asyncpg
import psycopg
import pytest
from psycopg.conninfo import make_conninfo

from dbbalancer.config import parse_config
from dbbalancer.testing.balancer import BalancerThread
from dbbalancer.testing.configs import cluster_config
from dbbalancer.testing.pgcluster import PgCluster


def config_text(cluster: PgCluster, *, mode: str, pool_size: int, extra: str = "") -> str:
    return cluster_config(
        cluster, mode=mode, pool_size=pool_size, extra='query_wait_timeout = "60s"\n' + extra
    )


def start(cluster: PgCluster, **kwargs: object) -> BalancerThread:
    return BalancerThread(parse_config(config_text(cluster, **kwargs))).start()  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def tx_balancer(pg_cluster: PgCluster) -> Iterator[BalancerThread]:
    balancer = start(pg_cluster, mode="transaction", pool_size=10)
    try:
        yield balancer
    finally:
        balancer.stop()


def dsn(balancer: BalancerThread, **extra: str) -> str:
    host, port = balancer.pg_address
    return make_conninfo(
        host=host, port=str(port), user="app", password="app", dbname="main", **extra
    )


def server_connections(cluster: PgCluster) -> int:
    rows = cluster.sql(
        cluster.primary,
        "SELECT count(*) FROM pg_stat_activity WHERE usename = 'app' "
        "AND application_name <> 'dbbalancer-probe' AND backend_type = 'client backend'",
    )
    return int(rows[0][0] or 0)


def raise_fd_limit(wanted: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(wanted, hard), hard))


def test_thousand_clients_over_pool_size_ten(
    tx_balancer: BalancerThread, pg_cluster: PgCluster
) -> None:
    raise_fd_limit(8192)
    host, port = tx_balancer.pg_address

    async def one(i: int) -> int:
        conn = await asyncpg.connect(
            host=host, port=port, user="app", password="app", database="main", timeout=60
        )
        try:
            value = await conn.fetchval("SELECT $1::int + 1", i)
            await asyncio.sleep(0.01)
            value += await conn.fetchval("SELECT 0")
            return int(value)
        finally:
            await conn.close()

    async def run() -> list[int]:
        sem = asyncio.Semaphore(1000)

        async def guarded(i: int) -> int:
            async with sem:
                return await one(i)

        return await asyncio.gather(*(guarded(i) for i in range(1000)))

    results = asyncio.run(run())
    assert results == [i + 1 for i in range(1000)]
    # pool_size 10 for the primary; the replicas are not used without read_write_split.
    assert server_connections(pg_cluster) <= 10


def test_asyncpg_pool_prepared_statements(tx_balancer: BalancerThread) -> None:
    host, port = tx_balancer.pg_address
    small = None

    async def run() -> list[int]:
        nonlocal small
        pool = await asyncpg.create_pool(
            host=host, port=port, user="app", password="app", database="main",
            min_size=50, max_size=50,
        )  # fmt: skip
        try:

            async def work(i: int) -> int:
                async with pool.acquire() as conn:
                    total = 0
                    for j in range(5):
                        total += await conn.fetchval("SELECT $1::int * $2::int", i, j)
                    row = await conn.fetchrow("SELECT $1::text AS t, $2::int AS n", "x", i)
                    assert row is not None
                    assert row["n"] == i
                    return total

            return await asyncio.gather(*(work(i) for i in range(200)))
        finally:
            await pool.close()

    assert asyncio.run(run()) == [i * 10 for i in range(200)]


def backend_pid(conn: psycopg.Connection[tuple[object, ...]]) -> int:
    row = conn.execute("SELECT pg_backend_pid()").fetchone()
    assert row is not None
    return int(str(row[0]))


def test_psycopg_prepare_threshold_zero(pg_cluster: PgCluster) -> None:
    """Named statements are parsed again, and settings replayed, on provably another server
    connection: with pool_size = 2, holders in open transactions leave the client exactly one
    idle connection, first one and then the other."""
    balancer = start(pg_cluster, mode="transaction", pool_size=2)
    query = "SELECT %s::int + 1, pg_backend_pid(), current_setting('statement_timeout')"
    try:
        with psycopg.connect(dsn(balancer), autocommit=True, prepare_threshold=0) as conn:
            conn.execute("SET statement_timeout = '4321ms'")
            with psycopg.connect(dsn(balancer)) as first_holder:
                first_held = backend_pid(first_holder)
                row = conn.execute(query, (1,)).fetchone()
                assert row is not None
                used = row[1]
                assert row == (2, used, "4321ms")
                assert used != first_held
                with psycopg.connect(dsn(balancer)) as second_holder:
                    assert backend_pid(second_holder) == used
                    first_holder.rollback()  # its connection is now the only idle one
                    # Bind alone from the client: the balancer must Parse it there first.
                    assert conn.execute(query, (2,)).fetchone() == (3, first_held, "4321ms")
                    second_holder.rollback()
        with psycopg.connect(dsn(balancer), prepare_threshold=0) as conn:
            for i in range(5):
                assert conn.execute("SELECT %s::text", (str(i),)).fetchone() == (str(i),)
                conn.commit()
    finally:
        balancer.stop()


def test_set_statement_timeout_stays_with_its_client(
    tx_balancer: BalancerThread,
) -> None:
    with psycopg.connect(dsn(tx_balancer), autocommit=True) as a:
        a.execute("SET statement_timeout = 1")
        a.execute("SET search_path = pg_catalog")

        def busy(i: int) -> list[tuple[str, str]]:
            seen = []
            with psycopg.connect(dsn(tx_balancer), autocommit=True) as other:
                for _ in range(10):
                    other.execute("SELECT pg_sleep(0.005)")
                    row = other.execute("SHOW statement_timeout").fetchone()
                    path = other.execute("SHOW search_path").fetchone()
                    assert row is not None
                    assert path is not None
                    seen.append((row[0], path[0]))
            return seen

        async def many() -> list[list[tuple[str, str]]]:
            return await asyncio.gather(*(asyncio.to_thread(busy, i) for i in range(20)))

        results = asyncio.run(many())
        for seen in results:
            assert set(seen) == {("0", '"$user", public')}
        assert a.execute("SHOW statement_timeout").fetchone() == ("1ms",)
        assert a.execute("SHOW search_path").fetchone() == ("pg_catalog",)
        with pytest.raises(psycopg.errors.QueryCanceled):
            a.execute("SELECT pg_sleep(0.2)")
        a.execute("RESET statement_timeout")
        assert a.execute("SHOW statement_timeout").fetchone() == ("0",)


def test_set_rolled_back_does_not_stick(tx_balancer: BalancerThread) -> None:
    with psycopg.connect(dsn(tx_balancer)) as conn:
        conn.execute("SET application_name = 'in-tx'")
        conn.rollback()
        conn.autocommit = True
        assert conn.execute("SHOW application_name").fetchone() != ("in-tx",)


def test_session_state_error_policy_refuses(pg_cluster: PgCluster) -> None:
    balancer = start(pg_cluster, mode="transaction", pool_size=2, extra='session_state = "error"')
    try:
        with psycopg.connect(dsn(balancer), autocommit=True) as conn:
            with pytest.raises(psycopg.errors.FeatureNotSupported, match="session state"):
                conn.execute("CREATE TEMP TABLE refused_t (x int)")
            assert conn.execute("SELECT 1").fetchone() == (1,)
    finally:
        balancer.stop()


def test_pgbench_prepared_more_clients_than_connections(pg_cluster: PgCluster) -> None:
    env = {**os.environ, "PGPASSWORD": pg_cluster.password}
    primary = pg_cluster.primary
    init = subprocess.run(
        ["pgbench", "-i", "-s", "1", "-q", "-h", primary.host, "-p", str(primary.port),
         "-U", pg_cluster.user, pg_cluster.database],
        capture_output=True, text=True, env=env, timeout=120, check=False,
    )  # fmt: skip
    assert init.returncode == 0, init.stderr
    balancer = start(pg_cluster, mode="transaction", pool_size=4)
    try:
        host, port = balancer.pg_address
        run = subprocess.run(
            ["pgbench", "-M", "prepared", "-c", "32", "-j", "2", "-T", "4", "-n",
             "-h", host, "-p", str(port), "-U", pg_cluster.user, "main"],
            capture_output=True, text=True, env=env, timeout=90, check=False,
        )  # fmt: skip
    finally:
        balancer.stop()
    assert run.returncode == 0, run.stdout + run.stderr
    assert "number of failed transactions: 0" in run.stdout


def test_statement_mode_refuses_transactions(pg_cluster: PgCluster) -> None:
    balancer = start(pg_cluster, mode="statement", pool_size=2)
    try:
        with psycopg.connect(dsn(balancer), autocommit=True) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
            with pytest.raises(psycopg.errors.FeatureNotSupported, match="statement pooling"):
                conn.execute("BEGIN")
            assert conn.execute("SELECT 2").fetchone() == (2,)
    finally:
        balancer.stop()


def test_query_wait_timeout_names_the_pool(pg_cluster: PgCluster) -> None:
    balancer = (
        start(pg_cluster, mode="transaction", pool_size=1, extra='query_wait_timeout = "300ms"')
        if False
        else BalancerThread(
            parse_config(
                config_text(pg_cluster, mode="transaction", pool_size=1).replace(
                    'query_wait_timeout = "60s"', 'query_wait_timeout = "300ms"'
                )
            )
        ).start()
    )
    try:
        with psycopg.connect(dsn(balancer)) as warm:
            warm.execute("SELECT 1")  # the welcome for these settings is now cached
        with psycopg.connect(dsn(balancer)) as holder:
            holder.execute("SELECT 1")  # holds the only connection in an open transaction
            with (
                psycopg.connect(dsn(balancer), autocommit=True) as waiter,
                pytest.raises(psycopg.OperationalError, match="main/app@primary"),
            ):
                waiter.execute("SELECT 2")
            holder.rollback()
    finally:
        balancer.stop()


def test_client_killed_mid_transaction_rolls_back(
    tx_balancer: BalancerThread, pg_cluster: PgCluster
) -> None:
    conn = psycopg.connect(dsn(tx_balancer, application_name="killed-mid-tx"))
    conn.execute("CREATE TABLE IF NOT EXISTS killed_t (x int)")
    conn.commit()
    conn.execute("INSERT INTO killed_t VALUES (1)")
    pid_row = conn.execute("SELECT pg_backend_pid()").fetchone()
    assert pid_row is not None
    with socket.socket(fileno=os.dup(conn.pgconn.socket)) as sock:
        sock.shutdown(socket.SHUT_RDWR)
    deadline = time.monotonic() + 10
    rows: list[tuple[str | None, ...]] = []
    while time.monotonic() < deadline:
        rows = pg_cluster.sql(
            pg_cluster.primary,
            f"SELECT state FROM pg_stat_activity WHERE pid = {pid_row[0]} "
            "AND state LIKE 'idle in transaction%'",
        )
        if not rows:
            break
        time.sleep(0.1)
    conn.close()
    assert rows == []
    assert pg_cluster.sql(pg_cluster.primary, "SELECT count(*) FROM killed_t") == [("0",)]


def test_idle_transaction_timeout_closes_the_client(pg_cluster: PgCluster) -> None:
    balancer = start(
        pg_cluster, mode="transaction", pool_size=2, extra='idle_transaction_timeout = "500ms"'
    )
    try:
        conn = psycopg.connect(dsn(balancer))
        conn.execute("SELECT 1")  # a transaction is now open, and the client goes quiet
        time.sleep(2.5)  # the janitor ticks every second
        with pytest.raises(psycopg.errors.IdleInTransactionSessionTimeout):
            conn.execute("SELECT 2")
        conn.close()
        with psycopg.connect(dsn(balancer), autocommit=True) as fresh:
            assert fresh.execute("SELECT 3").fetchone() == (3,)
            open_tx = pg_cluster.sql(
                pg_cluster.primary,
                "SELECT count(*) FROM pg_stat_activity WHERE usename = 'app' "
                "AND state LIKE 'idle in transaction%'",
            )
            assert open_tx == [("0",)]
    finally:
        balancer.stop()


def test_min_pool_size_is_opened_in_the_background(pg_cluster: PgCluster) -> None:
    balancer = start(pg_cluster, mode="transaction", pool_size=5, extra="min_pool_size = 3")
    try:

        def idle_connections() -> int:
            assert balancer.app.pg is not None
            cluster = balancer.app.pg.cluster("main")
            assert cluster is not None
            return sum(p.stats().idle for p in cluster.runtime.pools() if "primary" in p.key)

        deadline = time.monotonic() + 10
        while balancer.call(idle_connections) < 3:
            assert time.monotonic() < deadline, "min_pool_size connections were not opened"
            time.sleep(0.1)
    finally:
        balancer.stop()
