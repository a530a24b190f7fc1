"""Read/write splitting and read-your-writes for MySQL clients (issue #12), against a real
MariaDB primary and GTID replicas (replicas run with read_only = 1)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import mysql.connector
import pymysql
import pytest

from dbbalancer.config.loader import parse_config
from dbbalancer.testing.balancer import BalancerThread
from dbbalancer.testing.mariadbcluster import MariaDbCluster, gtid_pos_covers

from .test_mysql_pooling import connect, one, pooling_config, port_of, run

pytestmark = pytest.mark.timeout(240)

SPLIT = 'read_write_split = true\nmax_replica_lag = "1h"'


@pytest.fixture(scope="module")
def balancer(mariadb_cluster: MariaDbCluster) -> Iterator[BalancerThread]:
    mariadb_cluster.sql(mariadb_cluster.primary, "SET GLOBAL log_bin_trust_function_creators = 1")
    direct = pymysql.connect(**mariadb_cluster.connect_kwargs(mariadb_cluster.primary))
    with direct, direct.cursor() as cur:
        for sql in (
            "CREATE TABLE IF NOT EXISTS route_t (id INT AUTO_INCREMENT PRIMARY KEY, v INT)",
            "CREATE TABLE IF NOT EXISTS route_log (v INT)",
            "CREATE OR REPLACE SEQUENCE route_seq",
            "CREATE OR REPLACE PROCEDURE route_port() SELECT @@port",
            "CREATE OR REPLACE FUNCTION route_writes() RETURNS INT DETERMINISTIC MODIFIES SQL DATA "
            "BEGIN INSERT INTO route_log VALUES (1); RETURN @@port; END",
            "CREATE OR REPLACE VIEW route_view AS SELECT route_writes() AS port",
        ):
            cur.execute(sql)
        direct.commit()
    config = pooling_config(mariadb_cluster, extra=SPLIT, primary_only=False)
    config = config.replace("pool_size = 1", "pool_size = 4")
    with BalancerThread(parse_config(config)) as thread:
        want = mariadb_cluster.gtid_binlog_pos(mariadb_cluster.primary)
        for node in mariadb_cluster.nodes:
            if node != mariadb_cluster.primary:
                while not gtid_pos_covers(mariadb_cluster.gtid_slave_pos(node), want):
                    time.sleep(0.05)
        yield thread


def replica_ports(cluster: MariaDbCluster) -> set[int]:
    return {node.port for node in cluster.nodes if node != cluster.primary}


def test_plain_reads_go_to_replicas(
    balancer: BalancerThread, mariadb_cluster: MariaDbCluster
) -> None:
    with connect(balancer) as conn:
        ports = {one(conn, "SELECT @@port") for _ in range(10)}
    assert ports <= replica_ports(mariadb_cluster)
    assert ports


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT @@port FROM DUAL FOR UPDATE",
        "SELECT @@port + 0 * GET_LOCK('route_lock', 0) + 0 * RELEASE_LOCK('route_lock')",
        "SELECT @@port + 0 * NEXTVAL(route_seq)",
        "CALL route_port()",
    ],
)
def test_locking_and_writing_statements_go_to_the_primary(
    balancer: BalancerThread, mariadb_cluster: MariaDbCluster, sql: str
) -> None:
    with connect(balancer) as conn:
        assert one(conn, sql) == mariadb_cluster.primary.port


def test_write_then_read_in_a_transaction_stays_on_the_primary(
    balancer: BalancerThread, mariadb_cluster: MariaDbCluster
) -> None:
    with connect(balancer) as conn:
        run(conn, "START TRANSACTION")
        run(conn, "INSERT INTO route_t (v) VALUES (1)")
        assert one(conn, "SELECT @@port") == mariadb_cluster.primary.port
        run(conn, "COMMIT")


def test_read_only_transaction_goes_to_a_replica(
    balancer: BalancerThread, mariadb_cluster: MariaDbCluster
) -> None:
    with connect(balancer) as conn:
        run(conn, "START TRANSACTION READ ONLY")
        first = one(conn, "SELECT @@port")
        assert first in replica_ports(mariadb_cluster)
        assert one(conn, "SELECT @@port") == first
        run(conn, "COMMIT")


def test_autocommit_off_keeps_everything_on_the_primary_until_commit(
    balancer: BalancerThread, mariadb_cluster: MariaDbCluster
) -> None:
    primary = mariadb_cluster.primary
    with connect(balancer) as conn:
        run(conn, "SET autocommit = 0")
        assert one(conn, "SELECT @@server_id") == one_direct(mariadb_cluster, "@@server_id")
        assert one(conn, "SELECT @@port") == primary.port
        run(conn, "INSERT INTO route_t (v) VALUES (2)")
        assert one(conn, "SELECT @@port") == primary.port
        run(conn, "COMMIT")
        assert one(conn, "SELECT @@port") == primary.port  # autocommit is still off
        run(conn, "SET autocommit = 1")
        assert one(conn, "SELECT @@port") in replica_ports(mariadb_cluster)


def one_direct(cluster: MariaDbCluster, expr: str) -> int:
    return int(str(cluster.sql(cluster.primary, f"SELECT {expr}")[0][0]))


def test_a_read_that_writes_is_rerun_on_the_primary(
    balancer: BalancerThread, mariadb_cluster: MariaDbCluster
) -> None:
    # The view hides a function that writes: the classifier calls it a read, a replica
    # refuses it (1290, read_only), and the proxy runs it again on the primary.
    with connect(balancer) as conn:
        for _ in range(3):
            assert one(conn, "SELECT port FROM route_view") == mariadb_cluster.primary.port


def test_mysql_connector_reads_from_replicas(
    balancer: BalancerThread, mariadb_cluster: MariaDbCluster
) -> None:
    cnx = mysql.connector.connect(
        host="127.0.0.1",
        port=port_of(balancer),
        user="app",
        password="app",
        database="app",
        ssl_disabled=True,
        autocommit=True,
    )
    try:
        cur = cnx.cursor()
        cur.execute("SELECT @@port")
        row = cur.fetchone()
        assert row is not None
        assert row[0] in replica_ports(mariadb_cluster)
        cur.close()
    finally:
        cnx.close()


def test_many_clients_with_churn_have_no_errors(balancer: BalancerThread) -> None:
    errors: list[BaseException] = []

    def client(n: int) -> None:
        try:
            for round_ in range(3):
                with connect(balancer) as conn:
                    run(conn, f"SET @me = {n}")
                    assert one(conn, "SELECT @me") == n
                    run(conn, f"INSERT INTO route_t (v) VALUES ({n})")
                    assert one(conn, "SELECT @me + 1") == n + 1
                    if round_ == 1:
                        run(conn, "START TRANSACTION")
                        run(conn, f"INSERT INTO route_t (v) VALUES ({n})")
                        run(conn, "COMMIT")
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=client, args=(n,)) for n in range(100)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []


def test_read_your_writes_with_a_delayed_replica(mariadb_cluster_factory: Any) -> None:
    cluster: MariaDbCluster = mariadb_cluster_factory(replicas=1, delay={0: 3})
    cluster.sql(cluster.primary, "CREATE TABLE ryw (id INT PRIMARY KEY)")
    want = cluster.gtid_binlog_pos(cluster.primary)
    while not gtid_pos_covers(cluster.gtid_slave_pos(cluster.replicas[0]), want):
        time.sleep(0.1)  # the delayed replica has the table: a miss would be a stale read
    config = pooling_config(
        cluster, extra=SPLIT + "\nread_your_writes = true", primary_only=False
    ).replace("pool_size = 1", "pool_size = 4")
    with BalancerThread(parse_config(config)) as thread, connect(thread) as conn:
        misses = 0
        for i in range(50):
            run(conn, f"INSERT INTO ryw VALUES ({i})")
            if one(conn, f"SELECT COUNT(*) FROM ryw WHERE id = {i}") != 1:
                misses += 1
        assert misses == 0


def test_reads_survive_a_replica_dying(mariadb_cluster_factory: Any) -> None:
    cluster: MariaDbCluster = mariadb_cluster_factory(replicas=2)
    config = pooling_config(cluster, extra=SPLIT, primary_only=False).replace(
        "pool_size = 1", "pool_size = 4"
    )
    errors: list[BaseException] = []
    reads = [0]
    stop = threading.Event()

    def reader() -> None:
        try:
            with connect(thread) as conn:
                while not stop.is_set():
                    assert one(conn, "SELECT @@port") > 0
                    reads[0] += 1
        except BaseException as exc:
            errors.append(exc)

    with BalancerThread(parse_config(config)) as thread:
        threads = [threading.Thread(target=reader) for _ in range(8)]
        for t in threads:
            t.start()
        while reads[0] < 200:
            time.sleep(0.01)
        cluster.kill(cluster.replicas[0])
        done = reads[0]
        while reads[0] < done + 500 and not errors:
            time.sleep(0.01)
        stop.set()
        for t in threads:
            t.join()
    assert errors == []


@pytest.mark.parametrize(
    ("sql", "where"),
    [
        ("/* dbbalancer:primary */ SELECT @@port", "primary"),
        # Only a leading comment is a hint (docs/mysql.md, "Hints and executable comments").
        ("SELECT /* dbbalancer:primary */ @@port", "replica"),
        ("/* dbbalancer:replica */ SELECT @@port", "replica"),
        # A replica hint never turns a write (or a locking read) into a read.
        ("/* dbbalancer:replica */ SELECT @@port FROM DUAL FOR UPDATE", "primary"),
        ("/* dbbalancer:replica */ SELECT @@port + 0 * NEXTVAL(route_seq)", "primary"),
    ],
)
def test_routing_hints_in_comments(
    balancer: BalancerThread, mariadb_cluster: MariaDbCluster, sql: str, where: str
) -> None:
    with connect(balancer) as conn:
        ports = {one(conn, sql) for _ in range(4)}
    if where == "primary":
        assert ports == {mariadb_cluster.primary.port}
    else:
        assert ports <= replica_ports(mariadb_cluster)


def test_a_users_default_route_primary_keeps_its_reads_on_the_primary(
    mariadb_cluster: MariaDbCluster,
) -> None:
    """`default_route = "primary"` for one user; another user on the same cluster still reads
    from the replicas, and a replica hint still sends the first user's read to a replica."""
    mariadb_cluster.sql(
        mariadb_cluster.primary,
        "CREATE USER IF NOT EXISTS 'reporter'@'127.0.0.1' IDENTIFIED BY 'reporter'; "
        f"GRANT ALL PRIVILEGES ON {mariadb_cluster.database}.* TO 'reporter'@'127.0.0.1'",
    )
    mariadb_cluster.wait_replicated()
    config = pooling_config(mariadb_cluster, extra=SPLIT, primary_only=False).replace(
        "[[clusters]]",
        '[[users]]\nname = "reporter"\npassword = "reporter"\nauth = "mysql_native_password"\n'
        'default_route = "primary"\n\n[[clusters]]',
    )
    with BalancerThread(parse_config(config)) as thread:
        with connect(thread, user="reporter", password="reporter") as conn:
            assert {one(conn, "SELECT @@port") for _ in range(4)} == {mariadb_cluster.primary.port}
            hinted = {one(conn, "/* dbbalancer:replica */ SELECT @@port") for _ in range(4)}
            assert hinted <= replica_ports(mariadb_cluster)
        with connect(thread) as conn:
            assert one(conn, "SELECT @@port") in replica_ports(mariadb_cluster)
