"""LAST_INSERT_ID() under transaction pooling (issue #12), against a real MariaDB primary.

pool_size = 1: every client runs on the one pooled connection, and a client whose session
matches a pooled connection's (here the mysql command-line client) leaves it without a reset,
holding the id it inserted. A client must see its own id (0 before its first insert) whichever
way its question reaches that connection: routed on its own, inside a transaction, on a
connection pinned by a lock or an open binary-protocol statement, through the text or the
binary protocol; and an id set without an OK packet saying so (`SELECT LAST_INSERT_ID(77)`, an
insert in a multi-statement string) follows it too. Each case answered another client's id,
or lost the client's own, while the restore was decided when a unit was routed.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from typing import Any

import mysql.connector
import pytest
from pymysql.constants import CLIENT

from dbbalancer.config.loader import parse_config
from dbbalancer.testing.balancer import BalancerThread
from dbbalancer.testing.mariadbcluster import MariaDbCluster

from .test_mysql_pooling import connect, one, pooling_config, port_of, run

pytestmark = pytest.mark.timeout(180)

TABLE = "CREATE TABLE IF NOT EXISTS lid_t (id INT AUTO_INCREMENT PRIMARY KEY, v INT)"


@pytest.fixture(scope="module")
def balancer(mariadb_cluster: MariaDbCluster) -> Iterator[BalancerThread]:
    mariadb_cluster.sql(mariadb_cluster.primary, TABLE)
    with BalancerThread(parse_config(pooling_config(mariadb_cluster))) as thread:
        yield thread


def connector(balancer: BalancerThread) -> Any:
    """mysql-connector-python (pure Python): `cursor(prepared=True)` speaks the binary
    protocol (COM_STMT_PREPARE, COM_STMT_EXECUTE, COM_STMT_CLOSE when the cursor closes)."""
    return mysql.connector.connect(
        host="127.0.0.1",
        port=port_of(balancer),
        user="app",
        password="app",
        database="app",
        ssl_disabled=True,
        autocommit=True,
        use_pure=True,
        connection_timeout=60,
    )


def cli_insert(balancer: BalancerThread) -> int:
    """Insert a row with the mysql command-line client, a client that sends nothing at login
    but its handshake: its session matches a pooled connection's, so the connection goes
    back without a reset, holding the id it inserted. (PyMySQL and mysql-connector send SET
    NAMES at login: every connection they used goes back with a reset.)"""
    out = subprocess.run(
        [
            "mysql",
            "--no-defaults",
            "--skip-ssl",
            "--default-character-set=utf8mb4",
            "-h",
            "127.0.0.1",
            "-P",
            str(port_of(balancer)),
            "-u",
            "app",
            "-papp",
            "app",
            "-N",
            "-e",
            "INSERT INTO lid_t (v) VALUES (1); SELECT LAST_INSERT_ID()",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    inserted = int(out.stdout.split()[0])
    assert inserted > 0
    return inserted


def prepared_one(cnx: Any, sql: str) -> Any:
    cur = cnx.cursor(prepared=True)
    try:
        cur.execute(sql)
        row = cur.fetchone()
        assert row is not None
        return row[0]
    finally:
        cur.close()


def insert(conn: Any) -> int:
    """Insert a row (text protocol); the id the OK packet gave."""
    cur = conn.cursor()
    try:
        cur.execute("INSERT INTO lid_t (v) VALUES (1)")
        inserted = cur.lastrowid
    finally:
        cur.close()
    assert inserted > 0
    return int(inserted)


def test_a_question_inside_a_transaction_gets_the_clients_own_id(
    balancer: BalancerThread,
) -> None:
    with connect(balancer) as b:
        cli_insert(balancer)
        run(b, "START TRANSACTION")  # routed alone: nothing asks about the id yet
        assert one(b, "SELECT LAST_INSERT_ID()") == 0
        run(b, "COMMIT")
        b_id = insert(b)
        cli_insert(balancer)
        run(b, "START TRANSACTION")
        assert one(b, "SELECT LAST_INSERT_ID(), 1") == b_id
        assert one(b, "SELECT @@identity") == b_id
        run(b, "COMMIT")


def test_a_question_on_a_pinned_connection_gets_the_clients_own_id(
    balancer: BalancerThread,
) -> None:
    with connect(balancer) as b:
        cli_insert(balancer)
        assert one(b, "SELECT GET_LOCK('lid_lock', 0)") == 1  # pins b to the connection
        assert one(b, "SELECT LAST_INSERT_ID()") == 0
        assert one(b, "SELECT RELEASE_LOCK('lid_lock')") == 1


def test_a_binary_protocol_question_gets_the_clients_own_id(balancer: BalancerThread) -> None:
    cnx = connector(balancer)
    try:
        cli_insert(balancer)
        # An open prepared statement pins the client: the question's prepare and execute
        # go to that connection without being routed.
        held = cnx.cursor(prepared=True)
        held.execute("SELECT 1")
        held.fetchall()
        assert prepared_one(cnx, "SELECT LAST_INSERT_ID()") == 0
        held.close()
        cur = cnx.cursor(prepared=True)
        cur.execute("INSERT INTO lid_t (v) VALUES (2)")
        own = cur.lastrowid
        cur.close()
        assert own > 0
        cli_insert(balancer)
        held = cnx.cursor(prepared=True)
        held.execute("SELECT 1")
        held.fetchall()
        assert prepared_one(cnx, "SELECT LAST_INSERT_ID()") == own
        held.close()
        # Closed statements: each question is prepared (after the close of the last one,
        # sent right behind it) and routed; another client inserts in between.
        for _ in range(3):
            cli_insert(balancer)
            assert prepared_one(cnx, "SELECT LAST_INSERT_ID()") == own
    finally:
        cnx.close()


def test_an_id_set_without_an_ok_packet_follows_the_client(balancer: BalancerThread) -> None:
    with connect(balancer, client_flag=CLIENT.MULTI_STATEMENTS) as b:
        assert one(b, "SELECT LAST_INSERT_ID(77)") == 77
        cli_insert(balancer)
        assert one(b, "SELECT LAST_INSERT_ID()") == 77
        # A multi-statement string: only its last OK packet reaches the proxy's parser.
        cur = b.cursor()
        cur.execute("INSERT INTO lid_t (v) VALUES (3); DO 0")
        while cur.nextset():
            pass
        cur.close()
        direct_id = one(b, "SELECT MAX(id) FROM lid_t")
        cli_insert(balancer)
        assert one(b, "SELECT LAST_INSERT_ID()") == direct_id


# -- with read/write splitting: a read-only transaction runs on a replica -------------------


@pytest.fixture(scope="module")
def split_balancer(mariadb_cluster: MariaDbCluster) -> Iterator[BalancerThread]:
    mariadb_cluster.sql(mariadb_cluster.primary, TABLE)
    config = pooling_config(
        mariadb_cluster,
        extra='read_write_split = true\nmax_replica_lag = "1h"',
        primary_only=False,
    )
    mariadb_cluster.wait_replicated()
    with BalancerThread(parse_config(config)) as thread:
        yield thread


def test_a_read_only_transaction_on_a_replica_gets_the_clients_own_id(
    split_balancer: BalancerThread, mariadb_cluster: MariaDbCluster
) -> None:
    with connect(split_balancer) as b:
        own = insert(b)
        run(b, "START TRANSACTION READ ONLY")
        replica_ports = {node.port for node in mariadb_cluster.replicas}
        assert one(b, "SELECT @@port") in replica_ports
        assert one(b, "SELECT LAST_INSERT_ID()") == own
        run(b, "COMMIT")


def test_a_prepare_answer_is_not_read_as_an_insert_id(balancer: BalancerThread) -> None:
    """COM_STMT_PREPARE_OK starts with 0x00 like an OK packet: read as one, a statement id of
    256 or more (bytes xx 01 00 00) gave an insert id of 1 or more to a client that inserted
    nothing. The open statement keeps the client on one connection, whose statement ids
    count up."""
    cnx = connector(balancer)
    try:
        held = cnx.cursor(prepared=True)
        held.execute("SELECT 1")
        held.fetchall()
        for _ in range(300):
            cur = cnx.cursor(prepared=True)
            cur.execute("DO 0")  # no columns, no parameters: a prepare answer of one packet
            cur.close()
        assert prepared_one(cnx, "SELECT LAST_INSERT_ID()") == 0
        held.close()
        plain = cnx.cursor()
        plain.execute("SELECT LAST_INSERT_ID()")
        assert plain.fetchone() == (0,)
        plain.close()
    finally:
        cnx.close()
