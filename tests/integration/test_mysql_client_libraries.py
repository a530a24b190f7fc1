"""The client libraries users run, through transaction pooling with read/write splitting and
read-your-writes (issue #12 item 7), against a real MariaDB primary with two GTID replicas.

SQLAlchemy's ORM (over PyMySQL and mysql-connector-python), aiomysql and asyncmy with many
concurrent tasks, mysql-connector's binary protocol with long data (COM_STMT_SEND_LONG_DATA)
and a server-side cursor (COM_STMT_EXECUTE with CURSOR_TYPE_READ_ONLY, then COM_STMT_FETCH),
and sysbench ``oltp_read_write``. Where a statement ran is read from ``@@port`` or from the
servers' ``Com_select`` counters.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiomysql
import asyncmy
import mysql.connector
import pytest
import sqlalchemy as sa
from sqlalchemy import orm

# bench/ is a top-level directory of the checkout, not part of the installed package: make it
# importable however pytest is started (`make test` puts only the compiled build on the path).
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bench.sysbench import SysbenchResult, SysbenchTables, run_sysbench, sysbench_command
from dbbalancer.config.loader import parse_config
from dbbalancer.testing.balancer import BalancerThread
from dbbalancer.testing.delayproxy import DelayProxy
from dbbalancer.testing.mariadbcluster import MariaDbCluster
from dbbalancer.testing.ports import free_port

from .test_mysql_clients import pool_counts, wait_for
from .test_mysql_pooling import connect, one, pooling_config, port_of, run

pytestmark = pytest.mark.timeout(240)

SPLIT = 'read_write_split = true\nread_your_writes = true\nmax_replica_lag = "1h"'


def split_config(cluster: MariaDbCluster, *, pool_size: int = 8) -> str:
    """Transaction pooling over the primary and both replicas, with splitting and
    read-your-writes."""
    config = pooling_config(cluster, extra=SPLIT, primary_only=False)
    return config.replace("pool_size = 1", f"pool_size = {pool_size}")


@pytest.fixture(scope="module")
def balancer(mariadb_cluster: MariaDbCluster) -> Iterator[BalancerThread]:
    with BalancerThread(parse_config(split_config(mariadb_cluster))) as thread:
        yield thread


def replica_ports(cluster: MariaDbCluster) -> set[int]:
    return {node.port for node in cluster.nodes if node != cluster.primary}


# -- SQLAlchemy -----------------------------------------------------------------------------------


class Base(orm.DeclarativeBase):
    pass


class Author(Base):
    __tablename__ = "sa_author"
    id: orm.Mapped[int] = orm.mapped_column(primary_key=True)
    name: orm.Mapped[str] = orm.mapped_column(sa.String(100), unique=True)
    books: orm.Mapped[list[Book]] = orm.relationship(back_populates="author")


class Book(Base):
    __tablename__ = "sa_book"
    id: orm.Mapped[int] = orm.mapped_column(primary_key=True)
    title: orm.Mapped[str] = orm.mapped_column(sa.String(200))
    author_id: orm.Mapped[int] = orm.mapped_column(sa.ForeignKey("sa_author.id"))
    author: orm.Mapped[Author] = orm.relationship(back_populates="books")


DIALECTS = {
    "pymysql": ("mysql+pymysql", {}),
    # mysql-connector asks for MySQL 8's default collation, which MariaDB does not know.
    "mysqlconnector": (
        "mysql+mysqlconnector",
        {"use_pure": True, "ssl_disabled": True, "collation": "utf8mb4_general_ci"},
    ),
}


def make_engine(port: int, dialect: str, **kwargs: Any) -> sa.Engine:
    driver, connect_args = DIALECTS[dialect]
    url = f"{driver}://app:app@127.0.0.1:{port}/app"
    return sa.create_engine(url, connect_args=dict(connect_args), **kwargs)


@pytest.fixture(scope="module")
def sa_tables(balancer: BalancerThread) -> None:
    engine = make_engine(port_of(balancer), "pymysql")
    try:
        Base.metadata.drop_all(engine)  # DDL through the proxy: it runs on the primary
        Base.metadata.create_all(engine)
    finally:
        # An idle client with autocommit off (the DBAPI default) stays pinned to its server
        # connection: let it go, or it holds one of the pool's connections.
        engine.dispose()


@pytest.mark.usefixtures("sa_tables")
@pytest.mark.parametrize("dialect", sorted(DIALECTS))
def test_sqlalchemy_orm_session(
    balancer: BalancerThread, mariadb_cluster: MariaDbCluster, dialect: str
) -> None:
    engine = make_engine(port_of(balancer), dialect, pool_size=3)
    try:
        with orm.Session(engine) as session:
            # The DBAPI's default is autocommit off: the whole session runs on the primary.
            assert session.scalar(sa.text("SELECT @@port")) == mariadb_cluster.primary.port
            author = Author(name=f"{dialect} author")
            author.books = [Book(title=f"{dialect} book {i}") for i in range(5)]
            session.add(author)
            session.commit()
            author_id = author.id
        with orm.Session(engine) as session:
            found = session.scalars(
                sa.select(Book).join(Author).where(Author.id == author_id).order_by(Book.id)
            ).all()
            assert [b.title for b in found] == [f"{dialect} book {i}" for i in range(5)]
            assert {b.author.name for b in found} == {f"{dialect} author"}
            # Rollback: a flushed row is visible inside the transaction, gone after it.
            session.add(Book(title="never", author_id=author_id))
            session.flush()
            assert session.scalar(sa.select(sa.func.count()).where(Book.title == "never")) == 1
            session.rollback()
            assert session.scalar(sa.select(sa.func.count()).where(Book.title == "never")) == 0
            # An error inside a transaction, then a rollback: the session goes on.
            session.add(Author(name=f"{dialect} author"))  # unique name taken
            with pytest.raises(sa.exc.IntegrityError):
                session.flush()
            session.rollback()
            assert session.scalar(sa.select(Author.name).where(Author.id == author_id)) == (
                f"{dialect} author"
            )
    finally:
        engine.dispose()


@pytest.mark.usefixtures("sa_tables")
def test_sqlalchemy_autocommit_engine_splits_and_reads_its_writes(
    balancer: BalancerThread, mariadb_cluster: MariaDbCluster
) -> None:
    engine = make_engine(port_of(balancer), "pymysql", isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            ports = {conn.scalar(sa.text("SELECT @@port")) for _ in range(6)}
            assert ports <= replica_ports(mariadb_cluster)
            author_id = conn.execute(
                sa.insert(Author).values(name="autocommit author")
            ).inserted_primary_key[0]
            # Each insert commits at once; the select after it must see it wherever it runs.
            for i in range(20):
                conn.execute(sa.insert(Book).values(title=f"ac {i}", author_id=author_id))
                count = conn.scalar(sa.select(sa.func.count()).where(Book.author_id == author_id))
                assert count == i + 1
        with orm.Session(engine) as session:
            assert session.get(Author, author_id) is not None
    finally:
        engine.dispose()


def test_sqlalchemy_pool_pre_ping_across_a_proxy_restart(
    mariadb_cluster: MariaDbCluster,
) -> None:
    port = free_port()
    text = split_config(mariadb_cluster, pool_size=2).replace(
        'mysql = "127.0.0.1:0"', f'mysql = "127.0.0.1:{port}"'
    )
    text = '[general]\nshutdown_timeout = "2s"\n' + text
    pinging = make_engine(port, "pymysql", pool_pre_ping=True, isolation_level="AUTOCOMMIT")
    trusting = make_engine(port, "pymysql", isolation_level="AUTOCOMMIT")
    try:
        with BalancerThread(parse_config(text)):
            for engine in (pinging, trusting):
                with engine.connect() as conn:
                    assert conn.scalar(sa.text("SELECT 1")) == 1
        # The proxy went away and came back: the pooled client connections are dead.
        with BalancerThread(parse_config(text)):
            with pinging.connect() as conn:  # the ping finds out and reconnects
                assert conn.scalar(sa.text("SELECT 2")) == 2
            with pytest.raises(sa.exc.OperationalError), trusting.connect() as conn:
                conn.scalar(sa.text("SELECT 3"))
            with trusting.connect() as conn:  # invalidated, the pool connects anew
                assert conn.scalar(sa.text("SELECT 4")) == 4
    finally:
        pinging.dispose()
        trusting.dispose()


# -- aiomysql and asyncmy -------------------------------------------------------------------------

TASKS = 40
PAIRS = 8


async def _task(connect: Any, port: int, table: str, task: int) -> list[int]:
    """One client: where its first reads ran, then insert-then-select pairs, each of which
    must see its row, then a rolled-back transaction."""
    conn = await connect(
        host="127.0.0.1", port=port, user="app", password="app", db="app", autocommit=True
    )
    try:
        async with conn.cursor() as cur:
            ports = []
            for _ in range(2):
                await cur.execute("SELECT @@port")
                ports.append((await cur.fetchone())[0])
            for pair in range(PAIRS):
                await cur.execute(f"INSERT INTO {table} (task, pair) VALUES (%s, %s)", (task, pair))
                await cur.execute(f"SELECT COUNT(*) FROM {table} WHERE task = %s", (task,))
                assert (await cur.fetchone())[0] == pair + 1, (task, pair)
            await conn.begin()
            await cur.execute(f"INSERT INTO {table} (task, pair) VALUES (%s, -1)", (task,))
            await cur.execute(f"SELECT COUNT(*) FROM {table} WHERE task = %s", (task,))
            assert (await cur.fetchone())[0] == PAIRS + 1
            await conn.rollback()
            await cur.execute(f"SELECT COUNT(*) FROM {table} WHERE task = %s", (task,))
            assert (await cur.fetchone())[0] == PAIRS
        return ports
    finally:
        conn.close()


@pytest.mark.parametrize("driver", ["aiomysql", "asyncmy"])
def test_async_driver_many_concurrent_tasks(
    balancer: BalancerThread, mariadb_cluster: MariaDbCluster, driver: str
) -> None:
    table = f"async_{driver}"
    mariadb_cluster.sql(
        mariadb_cluster.primary,
        f"DROP TABLE IF EXISTS {table}; "
        f"CREATE TABLE {table} (id INT AUTO_INCREMENT PRIMARY KEY, task INT, pair INT)",
    )
    mariadb_cluster.wait_replicated()
    connect = aiomysql.connect if driver == "aiomysql" else asyncmy.connect

    async def main() -> list[list[int]]:
        tasks = [_task(connect, port_of(balancer), table, task) for task in range(TASKS)]
        return await asyncio.wait_for(asyncio.gather(*tasks), timeout=120)

    ports = asyncio.run(main())
    # A client's reads before its first write may go to any replica, and only to a replica.
    assert {port for task in ports for port in task} <= replica_ports(mariadb_cluster)
    rows = mariadb_cluster.sql(mariadb_cluster.primary, f"SELECT COUNT(*) FROM {table}")
    assert int(rows[0][0]) == TASKS * PAIRS


# -- binary protocol: long data and server-side cursors -------------------------------------------


def connector(balancer: BalancerThread) -> Any:
    return mysql.connector.connect(
        host="127.0.0.1",
        port=port_of(balancer),
        user="app",
        password="app",
        database="app",
        use_pure=True,
        ssl_disabled=True,
        collation="utf8mb4_general_ci",
        autocommit=True,
    )


def test_send_long_data_with_mysql_connectors_prepared_cursor(
    balancer: BalancerThread, mariadb_cluster: MariaDbCluster
) -> None:
    mariadb_cluster.sql(
        mariadb_cluster.primary,
        "DROP TABLE IF EXISTS long_data; "
        "CREATE TABLE long_data (id INT PRIMARY KEY, label VARCHAR(20), b LONGBLOB)",
    )
    # 3 MB in 128 KB COM_STMT_SEND_LONG_DATA packets (a file-like parameter makes
    # mysql-connector stream it), the other parameters inline in COM_STMT_EXECUTE.
    blob = bytes(range(256)) * (3 * 4096) + b"end"
    conn = connector(balancer)
    try:
        cur = conn.cursor(prepared=True)
        for row in (1, 2):
            cur.execute(
                "INSERT INTO long_data (id, label, b) VALUES (?, ?, ?)",
                (row, f"row {row}", io.BytesIO(blob)),
            )
        cur.execute("SELECT id, label, LENGTH(b), SHA2(b, 256) FROM long_data ORDER BY id")
        digest = hashlib.sha256(blob).hexdigest()
        assert [tuple(r) for r in cur.fetchall()] == [
            (1, "row 1", len(blob), digest),
            (2, "row 2", len(blob), digest),
        ]
        cur.execute("SELECT b FROM long_data WHERE id = ?", (2,))
        assert cur.fetchall() == [(blob,)]
        cur.close()
    finally:
        conn.close()


CURSOR_TYPE_READ_ONLY = 1


def test_server_side_cursor_and_fetch(balancer: BalancerThread) -> None:
    # No client library here opens cursors on its own (mysql-connector's prepared cursor
    # executes without one), so drive its command layer: COM_STMT_EXECUTE with
    # CURSOR_TYPE_READ_ONLY answers column definitions only, COM_STMT_FETCH the rows.
    conn = connector(balancer)
    try:
        prepared = conn.cmd_stmt_prepare(b"SELECT seq, CONCAT('row ', seq) FROM seq_1_to_10")
        statement = prepared["statement_id"]
        for _ in range(2):  # the second execute reopens the cursor
            result = conn.cmd_stmt_execute(statement, flags=CURSOR_TYPE_READ_ONLY)
            assert isinstance(result, tuple)
            count, columns, eof = result
            assert count == 2
            assert eof["status_flag"] & 0x40  # SERVER_STATUS_CURSOR_EXISTS
            rows: list[Any] = []
            for _ in range(10):  # bounded: 4 rows per fetch
                conn.cmd_stmt_fetch(statement, 4)
                batch, eof = conn.get_rows(binary=True, columns=columns)
                rows.extend(batch)
                if eof is not None and eof["status_flag"] & 0x80:  # SERVER_STATUS_LAST_ROW_SENT
                    break
            assert [(int(a), b) for a, b in rows] == [(i, f"row {i}") for i in range(1, 11)]
        conn.cmd_stmt_close(statement)
        cur = conn.cursor()
        cur.execute("SELECT 'after the cursor'")
        assert cur.fetchall() == [("after the cursor",)]
        cur.close()
    finally:
        conn.close()


# -- found by these clients ----------------------------------------------------------------------


def test_a_client_leaving_during_the_position_query_leaves_the_connection_to_it(
    mariadb_cluster: MariaDbCluster,
) -> None:
    # After a write, read-your-writes asks the primary for its GTID on the client's
    # connection (a hidden SELECT @@last_gtid). A client that quits meanwhile (sysbench's
    # threads at the end of a run) must leave the connection to that request: pooled while
    # the answer was on its way, the answer reached the next client as its response and that
    # client hung. Here every answer of the primary takes 0.1 s, so the quit always comes
    # while the request runs; the connection is then pooled once it is answered, not dropped.
    primary = mariadb_cluster.primary
    mariadb_cluster.sql(primary, "CREATE TABLE IF NOT EXISTS leave_t (id SERIAL)")
    with DelayProxy((primary.host, primary.port), delay=0.1) as relay:
        text = pooling_config(mariadb_cluster, extra="read_your_writes = true")
        text = text.replace(primary.address(), relay.address())
        with BalancerThread(parse_config(text)) as thread:
            with connect(thread) as conn:
                first = one(conn, "SELECT CONNECTION_ID()")
                run(conn, "INSERT INTO leave_t VALUES ()")
            wait_for(lambda: pool_counts(thread) == (1, 0), describe=lambda: pool_counts(thread))
            with connect(thread) as conn:
                assert one(conn, "SELECT CONNECTION_ID()") == first


# -- sysbench -------------------------------------------------------------------------------------

SYSBENCH_TABLES = SysbenchTables(tables=4, size=10000)  # little contention: deadlocks are rare


def sysbench() -> str:
    path = shutil.which("sysbench")
    if path is None:
        pytest.fail("sysbench is missing: run `make setup` (scripts/bootstrap.sh installs it)")
    return path


def status(cluster: MariaDbCluster, name: str, *, replicas: bool = False) -> int:
    """The global status counter `name` of the primary, or summed over the replicas."""
    nodes = [n for n in cluster.nodes if (n != cluster.primary) == replicas]
    return sum(int(cluster.sql(n, f"SHOW GLOBAL STATUS LIKE '{name}'")[0][1]) for n in nodes)


def run_through(balancer: BalancerThread, *options: str, seconds: float) -> SysbenchResult:
    command = sysbench_command(
        sysbench(),
        test="oltp_read_write",
        host="127.0.0.1",
        port=port_of(balancer),
        user="app",
        password="app",
        database="app",
        tables=SYSBENCH_TABLES,
        threads=8,
        duration=seconds,
    )
    command[-1:-1] = options
    return run_sysbench(command, duration=seconds, proxy_pids=[])


def assert_clean(result: SysbenchResult, deadlocks: int) -> None:
    """sysbench completed with no reconnect and no error, except the InnoDB deadlocks it
    retries (1213, which the primary counts in Innodb_deadlocks): a server's answer to two
    transactions, passed on as it came. 8 threads over 40,000 rows seldom meet one."""
    assert result.ok, (result.error, result.stderr_tail)
    assert result.transactions > 0
    assert result.reconnects == 0
    assert result.ignored_errors <= deadlocks


def test_sysbench_oltp_read_write(
    balancer: BalancerThread, mariadb_cluster: MariaDbCluster
) -> None:
    primary = mariadb_cluster.primary
    names = ", ".join(f"sbtest{i + 1}" for i in range(SYSBENCH_TABLES.tables))
    mariadb_cluster.sql(primary, f"DROP TABLE IF EXISTS {names}")
    prepare = sysbench_command(
        sysbench(),
        test="oltp_read_write",
        action="prepare",
        host=primary.host,
        port=primary.port,
        user=mariadb_cluster.user,
        password=mariadb_cluster.password,
        database=mariadb_cluster.database,
        tables=SYSBENCH_TABLES,
    )
    done = subprocess.run(prepare, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    mariadb_cluster.wait_replicated()

    # As sysbench ships it: every event a transaction (BEGIN ... COMMIT) of reads and writes,
    # through server-side prepared statements. Transactions run on the primary.
    deadlocks = status(mariadb_cluster, "Innodb_deadlocks")
    result = run_through(balancer, seconds=5)
    assert_clean(result, status(mariadb_cluster, "Innodb_deadlocks") - deadlocks)

    # Autocommit statements and text protocol: the reads are split off to the replicas, each
    # after the client's own writes only where the replica has them (read-your-writes).
    # (Without --delete-inserts=0 sysbench's DELETE-then-INSERT of one id, no longer atomic,
    # fails with 1062 between threads, directly against MariaDB as well.)
    deadlocks = status(mariadb_cluster, "Innodb_deadlocks")
    before = status(mariadb_cluster, "Com_select", replicas=True)
    started = time.monotonic()
    result = run_through(
        balancer, "--skip-trx=on", "--delete-inserts=0", "--db-ps-mode=disable", seconds=4
    )
    assert_clean(result, status(mariadb_cluster, "Innodb_deadlocks") - deadlocks)
    selects = status(mariadb_cluster, "Com_select", replicas=True) - before
    # The health probes read each replica twice a second; the sysbench reads dwarf that.
    probes = 2 * 2 * (time.monotonic() - started + 1)
    print(f"replica selects {selects}, probes at most {probes:.0f}, {result}")
    assert selects > probes + 100

    mariadb_cluster.wait_replicated()
    checksums = [
        mariadb_cluster.sql(node, f"CHECKSUM TABLE {names}") for node in mariadb_cluster.nodes
    ]
    assert all(c == checksums[0] for c in checksums)
    mariadb_cluster.sql(primary, f"DROP TABLE {names}")
