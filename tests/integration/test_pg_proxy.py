"""The PostgreSQL proxy in session pooling, driven by real clients against a real cluster."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import struct
import subprocess
import threading
import time
from collections.abc import Iterator

import asyncpg
import psycopg
import pytest
from psycopg import errors
from psycopg.conninfo import make_conninfo

from dbbalancer.config import parse_config
from dbbalancer.testing.balancer import BalancerThread
from dbbalancer.testing.configs import cluster_config
from dbbalancer.testing.pgcluster import PgCluster

EXTRA_ROLES = (("md5user", "md5pass"), ("trustuser", "trustpass"))


EXTRA_USERS = """
[[users]]
name = "md5user"
password = "md5pass"
auth = "md5"

[[users]]
name = "trustuser"
password = "trustpass"
auth = "trust"
"""


def balancer_config(cluster: PgCluster, *, pool_size: int = 4) -> str:
    """Session pooling in front of the cluster, with md5 and trust users too."""
    return cluster_config(cluster, pool_size=pool_size, users=EXTRA_USERS)


@pytest.fixture(scope="module")
def roles(pg_cluster: PgCluster) -> None:
    """Extra login roles for the md5 and trust client-auth tests."""
    for name, password in EXTRA_ROLES:
        pg_cluster.sql(
            pg_cluster.primary,
            f"DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{name}') THEN "
            f"CREATE ROLE {name} LOGIN PASSWORD '{password}'; END IF; END $$",
        )
        pg_cluster.sql(pg_cluster.primary, f"GRANT ALL ON DATABASE {pg_cluster.database} TO {name}")


@pytest.fixture(scope="module")
def balancer(pg_cluster: PgCluster, roles: None) -> Iterator[BalancerThread]:
    """A balancer in session pooling in front of the shared cluster."""
    with BalancerThread(parse_config(balancer_config(pg_cluster))) as running:
        yield running


def dsn(balancer: BalancerThread, *, user: str = "app", password: str = "app", **extra: str) -> str:
    host, port = balancer.pg_address
    parts = {"host": host, "port": str(port), "user": user, "password": password}
    parts["dbname"] = "main"
    parts.update(extra)
    return make_conninfo(**parts)


def test_psql_runs_queries(balancer: BalancerThread, pg_cluster: PgCluster) -> None:
    result = subprocess.run(
        ["psql", "-X", "-A", "-t", dsn(balancer), "-c", "SELECT inet_server_port(), current_user"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"{pg_cluster.primary.port}|app"


def test_psycopg_simple_and_extended(balancer: BalancerThread) -> None:
    with psycopg.connect(dsn(balancer), autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS items_px")
        conn.execute("CREATE TABLE items_px (id int PRIMARY KEY, name text)")
        # Parameters make psycopg use the extended protocol (Parse/Bind/Execute/Sync).
        for i in range(20):
            conn.execute("INSERT INTO items_px VALUES (%s, %s)", (i, f"name-{i}"))
        row = conn.execute(
            "SELECT count(*), max(name) FROM items_px WHERE id >= %s", (5,)
        ).fetchone()
        assert row == (15, "name-9")
        # No parameters: the simple query protocol.
        assert conn.execute("SELECT 40 + 2").fetchone() == (42,)
        # A statement prepared on the server (session pooling keeps it on one connection).
        for _ in range(3):
            cur = conn.execute("SELECT name FROM items_px WHERE id = %s", (3,), prepare=True)
            assert cur.fetchone() == ("name-3",)


def test_psycopg_server_side_cursor(balancer: BalancerThread) -> None:
    with psycopg.connect(dsn(balancer)) as conn:
        with conn.cursor(name="big") as cur:
            cur.itersize = 100
            cur.execute("SELECT g FROM generate_series(1, 5000) g")
            total = sum(row[0] for row in cur)
        conn.commit()
    assert total == 5000 * 5001 // 2


def test_psycopg_copy_in_and_out(balancer: BalancerThread) -> None:
    rows = [(i, f"text {i} with\ttab") for i in range(2000)]
    with psycopg.connect(dsn(balancer), autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS copy_px")
        conn.execute("CREATE TABLE copy_px (id int, body text)")
        with conn.cursor() as cur:
            with cur.copy("COPY copy_px (id, body) FROM STDIN") as copy:
                for row in rows:
                    copy.write_row(row)
            with cur.copy("COPY copy_px TO STDOUT") as copy:
                out = [(int(r[0]), r[1]) for r in copy.rows()]
    assert sorted(out) == rows


def test_asyncpg(balancer: BalancerThread) -> None:
    host, port = balancer.pg_address

    async def run() -> list[int]:
        conn = await asyncpg.connect(
            host=host, port=port, user="app", password="app", database="main"
        )
        try:
            stmt = await conn.prepare("SELECT $1::int * 2")
            values = [await stmt.fetchval(i) for i in range(10)]
            async with conn.transaction():
                await conn.execute("CREATE TEMP TABLE t_asyncpg (x int)")
                await conn.executemany(
                    "INSERT INTO t_asyncpg VALUES ($1)", [(i,) for i in range(5)]
                )
                values.append(await conn.fetchval("SELECT sum(x) FROM t_asyncpg"))
            return values
        finally:
            await conn.close()

    assert asyncio.run(run()) == [i * 2 for i in range(10)] + [10]


def test_pgbench_select_only(balancer: BalancerThread, pg_cluster: PgCluster) -> None:
    env = {**os.environ, "PGPASSWORD": pg_cluster.password}
    primary = pg_cluster.primary
    init = subprocess.run(
        ["pgbench", "-i", "-s", "1", "-q", "-h", primary.host, "-p", str(primary.port),
         "-U", pg_cluster.user, pg_cluster.database],
        capture_output=True, text=True, env=env, timeout=120, check=False,
    )  # fmt: skip
    assert init.returncode == 0, init.stderr
    host, port = balancer.pg_address
    run = subprocess.run(
        ["pgbench", "-S", "-T", "3", "-c", "4", "-j", "2", "-n", "-h", host, "-p", str(port),
         "-U", pg_cluster.user, "main"],
        capture_output=True, text=True, env=env, timeout=60, check=False,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert "number of failed transactions: 0" in run.stdout
    processed = next(
        line
        for line in run.stdout.splitlines()
        if "number of transactions actually processed" in line
    )
    assert int(processed.split(":")[1].split("/")[0]) > 0


def test_wrong_password_is_28P01(balancer: BalancerThread) -> None:
    with pytest.raises(psycopg.OperationalError) as info:
        psycopg.connect(dsn(balancer, password="wrong"))
    assert "28P01" in str(info.value) or "password authentication failed" in str(info.value)
    # The same through asyncpg, which exposes the SQLSTATE.
    host, port = balancer.pg_address

    async def attempt() -> None:
        await asyncpg.connect(host=host, port=port, user="app", password="nope", database="main")

    with pytest.raises(asyncpg.InvalidPasswordError) as apg:
        asyncio.run(attempt())
    assert apg.value.sqlstate == "28P01"


def test_unknown_user_fails_like_a_wrong_password(balancer: BalancerThread) -> None:
    host, port = balancer.pg_address

    async def attempt() -> None:
        await asyncpg.connect(host=host, port=port, user="ghost", password="x", database="main")

    with pytest.raises(asyncpg.InvalidPasswordError):
        asyncio.run(attempt())


def test_unknown_database(balancer: BalancerThread) -> None:
    with pytest.raises(psycopg.OperationalError, match="does not exist"):
        psycopg.connect(dsn(balancer, dbname="nope"))


@pytest.mark.parametrize(("user", "password"), EXTRA_ROLES)
def test_md5_and_trust_client_auth(balancer: BalancerThread, user: str, password: str) -> None:
    with psycopg.connect(dsn(balancer, user=user, password=password)) as conn:
        assert conn.execute("SELECT current_user").fetchone() == (user,)
    if user == "md5user":
        with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
            psycopg.connect(dsn(balancer, user=user, password="bad"))
    else:
        # trust: the proxy lets the client in whatever it says; the server login uses the config.
        with psycopg.connect(dsn(balancer, user=user, password="anything")) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)


def test_startup_parameters_apply_and_are_reset(pg_cluster: PgCluster, roles: None) -> None:
    config = parse_config(balancer_config(pg_cluster, pool_size=1))
    with BalancerThread(config) as single:
        with psycopg.connect(
            dsn(single, application_name="px-app", options="-c search_path=pg_catalog")
        ) as conn:
            assert conn.execute("SHOW application_name").fetchone() == ("px-app",)
            assert conn.execute("SHOW search_path").fetchone() == ("pg_catalog",)
            conn.execute("SET statement_timeout = '7s'")
            conn.execute("CREATE TEMP TABLE leak_check (x int)")
            backend = conn.execute("SELECT pg_backend_pid()").fetchone()
        # pool_size = 1: the next client gets the same server connection, reset by DISCARD ALL.
        with psycopg.connect(dsn(single)) as conn:
            assert conn.execute("SELECT pg_backend_pid()").fetchone() == backend
            assert conn.execute("SHOW statement_timeout").fetchone() == ("0",)
            assert conn.execute("SHOW search_path").fetchone() == ('"$user", public',)
            assert conn.execute("SELECT to_regclass('pg_temp.leak_check')").fetchone() == (None,)


def test_client_killed_mid_transaction_leaves_nothing_open(
    pg_cluster: PgCluster, roles: None
) -> None:
    config = parse_config(balancer_config(pg_cluster, pool_size=1))
    with BalancerThread(config) as single:
        conn = psycopg.connect(dsn(single, application_name="mid-tx"))
        conn.execute("SELECT 1")  # opens a transaction (psycopg is not in autocommit)
        pid = conn.execute("SELECT pg_backend_pid()").fetchone()
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.INTRANS
        # Cut the connection without a Terminate message, as a killed process would.
        with socket.socket(fileno=os.dup(conn.pgconn.socket)) as sock:
            sock.shutdown(socket.SHUT_RDWR)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            rows = pg_cluster.sql(
                pg_cluster.primary,
                f"SELECT state FROM pg_stat_activity WHERE pid = {pid[0]}",  # type: ignore[index]
            )
            if not rows:
                break
            time.sleep(0.1)
        assert rows == [], f"server backend still there: {rows}"
        conn.close()
        with psycopg.connect(dsn(single)) as fresh:
            assert fresh.execute("SELECT 1").fetchone() == (1,)


def _raw_client(balancer: BalancerThread) -> socket.socket:
    sock = socket.create_connection(balancer.pg_address, timeout=10)
    return sock


def _read_until_closed(sock: socket.socket) -> bytes:
    chunks = []
    while True:
        data = sock.recv(65536)
        if not data:
            return b"".join(chunks)
        chunks.append(data)


def test_garbage_and_huge_length_get_an_error_while_others_carry_on(
    balancer: BalancerThread,
) -> None:
    with psycopg.connect(dsn(balancer), autocommit=True) as good:
        garbage = _raw_client(balancer)
        garbage.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        reply = _read_until_closed(garbage)
        assert reply.startswith(b"E"), reply
        assert b"08P01" in reply
        garbage.close()

        # A logged-in client that claims a 2 GB message.
        huge = psycopg.connect(dsn(balancer), autocommit=True)
        raw = socket.socket(fileno=os.dup(huge.pgconn.socket))
        raw.sendall(b"Q" + struct.pack("!I", 2**31 - 1) + b"SELECT")
        raw.settimeout(10)
        reply = _read_until_closed(raw)
        assert b"08P01" in reply
        assert b"length" in reply
        raw.close()
        huge.close()

        # The other client never noticed.
        assert good.execute("SELECT 7").fetchone() == (7,)


def test_ssl_request_is_declined(balancer: BalancerThread) -> None:
    # sslmode=prefer (libpq's default) sends SSLRequest, gets 'N' and carries on in plaintext.
    with psycopg.connect(dsn(balancer, sslmode="prefer")) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
    with pytest.raises(psycopg.OperationalError, match="SSL"):
        psycopg.connect(dsn(balancer, sslmode="require"))


def test_cancel_stops_pg_sleep(balancer: BalancerThread) -> None:
    with psycopg.connect(dsn(balancer), autocommit=True) as conn:
        timer = threading.Timer(0.5, conn.cancel_safe)
        timer.start()
        # 57014 proves the cancel; an uncancelled pg_sleep would end without it.
        with pytest.raises(errors.QueryCanceled):
            conn.execute("SELECT pg_sleep(30)")
        timer.join()
        assert conn.execute("SELECT 2").fetchone() == (2,)


def test_server_backend_killed_gives_client_an_error(
    balancer: BalancerThread, pg_cluster: PgCluster
) -> None:
    conn = psycopg.connect(dsn(balancer), autocommit=True)
    pid = conn.execute("SELECT pg_backend_pid()").fetchone()
    assert pid is not None
    pg_cluster.sql(pg_cluster.primary, f"SELECT pg_terminate_backend({pid[0]})")
    with pytest.raises(psycopg.OperationalError):
        conn.execute("SELECT 1")
    conn.close()
    with psycopg.connect(dsn(balancer), autocommit=True) as fresh:
        assert fresh.execute("SELECT 1").fetchone() == (1,)


def test_notices_and_notifications_are_relayed(balancer: BalancerThread) -> None:
    notices: list[str] = []
    with psycopg.connect(dsn(balancer), autocommit=True) as conn:
        conn.add_notice_handler(lambda diag: notices.append(diag.message_primary or ""))
        conn.execute("DO $$ BEGIN RAISE NOTICE 'hello from the server'; END $$")
        conn.execute("LISTEN px_channel")
        conn.execute("NOTIFY px_channel, 'payload-1'")
        gen = conn.notifies(timeout=5, stop_after=1)
        received = [(n.channel, n.payload) for n in gen]
    assert notices == ["hello from the server"]
    assert received == [("px_channel", "payload-1")]


def test_psql_binary_exists() -> None:
    assert shutil.which("psql"), "psql must be installed (make setup installs it)"


def test_slow_login_is_cut_off_while_others_carry_on(pg_cluster: PgCluster, roles: None) -> None:
    text = balancer_config(pg_cluster).replace(
        "[listen]", '[general]\nclient_login_timeout = "500ms"\n\n[listen]', 1
    )
    with BalancerThread(parse_config(text)) as quick:
        silent = _raw_client(quick)
        silent.sendall(b"\x00\x00")  # half a length word, then nothing
        with psycopg.connect(dsn(quick), autocommit=True) as good:
            assert good.execute("SELECT 1").fetchone() == (1,)
        # The balancer's own cut-off says so; the socket timeout is only a hang guard.
        reply = _read_until_closed(silent)
        silent.close()
        assert b"in time" in reply
