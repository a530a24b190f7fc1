"""Transaction pooling for MySQL clients (issue #12), against a real MariaDB primary.

pool_size = 1: every client shares one server connection, so whatever one client's session
state leaks, the other sees. Real clients: PyMySQL, mysql-connector-python and the mysql CLI.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import mysql.connector
import pymysql
import pytest
from pymysql.constants import CLIENT

from dbbalancer.config.loader import parse_config
from dbbalancer.testing.balancer import BalancerThread
from dbbalancer.testing.mariadbcluster import MariaDbCluster

pytestmark = pytest.mark.timeout(180)


def pooling_config(cluster: MariaDbCluster, *, extra: str = "", primary_only: bool = True) -> str:
    """TOML for one MySQL cluster "app" with transaction pooling."""
    nodes = [cluster.primary] if primary_only else list(cluster.nodes)
    servers = "\n".join(
        f'[[clusters.servers]]\nname = "{node.name}"\naddress = "{node.address()}"\n'
        f'role = "{"primary" if node == cluster.primary else "replica"}"\n'
        for node in nodes
    )
    return f"""
[listen]
mysql = "127.0.0.1:0"

[[users]]
name = "{cluster.user}"
password = "{cluster.password}"
auth = "mysql_native_password"

[[clusters]]
name = "app"
protocol = "mysql"
database = "{cluster.database}"
pool_mode = "transaction"
pool_size = 1
query_wait_timeout = "30s"
{extra}

{servers}
"""


@pytest.fixture(scope="module")
def balancer(mariadb_cluster: MariaDbCluster) -> Iterator[BalancerThread]:
    mariadb_cluster.sql(
        mariadb_cluster.primary,
        "SET SESSION sql_log_bin = 0; CREATE DATABASE IF NOT EXISTS other; "
        f"GRANT ALL PRIVILEGES ON other.* TO '{mariadb_cluster.user}'@'127.0.0.1'",
    )
    with BalancerThread(parse_config(pooling_config(mariadb_cluster))) as thread:
        yield thread


def port_of(balancer: BalancerThread) -> int:
    address = balancer.app.mysql_address
    assert address is not None
    return address[1]


def connect(balancer: BalancerThread, **kwargs: Any) -> pymysql.Connection[Any]:
    options: dict[str, Any] = {
        "host": "127.0.0.1",
        "port": port_of(balancer),
        "user": "app",
        "password": "app",
        "database": "app",
        "connect_timeout": 10,
        "read_timeout": 60,
        "autocommit": True,
    }
    options.update(kwargs)
    return pymysql.connect(**options)


def one(conn: Any, sql: str) -> Any:
    cur = conn.cursor()
    try:
        cur.execute(sql)
        row = cur.fetchone()
        assert row is not None
        return row[0]
    finally:
        cur.close()


def run(conn: Any, sql: str) -> None:
    cur = conn.cursor()
    try:
        cur.execute(sql)
    finally:
        cur.close()


def test_two_clients_share_one_connection_without_seeing_each_others_session(
    balancer: BalancerThread,
) -> None:
    with connect(balancer) as a, connect(balancer) as b:
        a_id = one(a, "SELECT CONNECTION_ID()")
        assert one(b, "SELECT CONNECTION_ID()") == a_id  # one pooled connection
        run(a, "SET SESSION sql_mode = 'ANSI_QUOTES'")
        run(a, "SET @x = 42, @s = 'hello', @n = NULL, @d = 1.50, @b = X'00ff'")
        run(a, "USE other")
        run(a, "SET time_zone = '+05:00'")
        assert one(b, "SELECT @@sql_mode") != "ANSI_QUOTES"
        assert one(b, "SELECT @x") is None
        assert one(b, "SELECT DATABASE()") == "app"
        assert one(b, "SELECT @@time_zone") != "+05:00"
        assert one(a, "SELECT @@sql_mode") == "ANSI_QUOTES"
        assert one(a, "SELECT @x") == 42
        assert one(a, "SELECT @s") == "hello"
        assert one(a, "SELECT @n") is None
        assert str(one(a, "SELECT @d")) == "1.50"
        assert one(a, "SELECT @b") == b"\x00\xff"
        assert one(a, "SELECT DATABASE()") == "other"
        assert one(a, "SELECT @@time_zone") == "+05:00"
        assert one(a, "SELECT CONNECTION_ID()") == a_id


def test_computed_user_variables_are_read_back_and_keep_their_type(
    balancer: BalancerThread,
) -> None:
    with connect(balancer) as a, connect(balancer) as b:
        assert one(a, "SELECT @i := 6 * 7") == 42
        run(a, "SET @t = CONCAT('a', 'b'), @f = 1e0 / 4")
        run(a, "SELECT 10 INTO @into")
        assert one(b, "SELECT @i") is None
        assert one(a, "SELECT @i + 1") == 43
        assert one(a, "SELECT @t") == "ab"
        assert one(a, "SELECT @f") == 0.25
        assert one(a, "SELECT @into") == 10


def test_temporary_tables_pin_until_dropped(balancer: BalancerThread) -> None:
    with connect(balancer) as a, connect(balancer, read_timeout=5) as b:
        run(a, "CREATE TEMPORARY TABLE tmp_a (x INT)")
        run(a, "INSERT INTO tmp_a VALUES (1)")
        assert one(a, "SELECT COUNT(*) FROM tmp_a") == 1
        run(a, "DROP TEMPORARY TABLE tmp_a")
        # a released the only connection: b gets it, and sees no temp table.
        with pytest.raises(pymysql.err.ProgrammingError):
            run(b, "SELECT * FROM tmp_a")


def test_autocommit_off_holds_the_connection_until_commit(balancer: BalancerThread) -> None:
    with connect(balancer) as a:
        run(a, "CREATE TABLE IF NOT EXISTS pool_ac (x INT)")
        run(a, "DELETE FROM pool_ac")
        run(a, "SET autocommit = 0")
        run(a, "INSERT INTO pool_ac VALUES (1)")
        assert one(a, "SELECT COUNT(*) FROM pool_ac") == 1
        run(a, "ROLLBACK")
        assert one(a, "SELECT COUNT(*) FROM pool_ac") == 0
        run(a, "INSERT INTO pool_ac VALUES (2)")
        run(a, "COMMIT")
        run(a, "SET autocommit = 1")
        with connect(balancer) as b:
            assert one(b, "SELECT COUNT(*) FROM pool_ac") == 1
            assert one(b, "SELECT @@autocommit") == 1


def test_autocommit_off_frees_the_connection_between_transactions(
    balancer: BalancerThread,
) -> None:
    """pool_size = 1: a client with autocommit off holds the connection during each of its
    transactions only (as ProxySQL multiplexes it); the next one starts with autocommit off
    again, and the other client never sees that setting."""
    with connect(balancer) as a, connect(balancer) as b:
        run(a, "CREATE TABLE IF NOT EXISTS pool_ac2 (x INT)")
        run(a, "DELETE FROM pool_ac2")
        run(a, "SET autocommit = 0")
        run(a, "INSERT INTO pool_ac2 VALUES (1)")
        run(a, "COMMIT")
        # a is idle between transactions: b gets the only connection, as it was pooled.
        assert one(b, "SELECT @@autocommit") == 1
        assert one(b, "SELECT COUNT(*) FROM pool_ac2") == 1
        assert one(a, "SELECT @@autocommit") == 0
        run(a, "INSERT INTO pool_ac2 VALUES (2)")
        assert one(a, "SELECT COUNT(*) FROM pool_ac2") == 2
        run(a, "ROLLBACK")
        assert one(b, "SELECT COUNT(*) FROM pool_ac2") == 1
        assert one(a, "SELECT @@autocommit, COUNT(*) FROM pool_ac2") == 0
        run(a, "ROLLBACK")


def test_transaction_keeps_its_connection_and_others_wait(balancer: BalancerThread) -> None:
    with connect(balancer) as a, connect(balancer) as b:
        run(a, "CREATE TABLE IF NOT EXISTS pool_tx (x INT)")
        run(a, "START TRANSACTION")
        run(a, "INSERT INTO pool_tx VALUES (1)")
        run(a, "SET @in_tx = 5")
        run(a, "COMMIT")
        assert one(b, "SELECT @in_tx") is None
        assert one(a, "SELECT @in_tx") == 5


def test_get_lock_pins_until_released(balancer: BalancerThread) -> None:
    with connect(balancer) as a:
        assert one(a, "SELECT GET_LOCK('pool_lock', 1)") == 1
        assert one(a, "SELECT IS_USED_LOCK('pool_lock') = CONNECTION_ID()") == 1
        assert one(a, "SELECT RELEASE_LOCK('pool_lock')") == 1
        with connect(balancer) as b:
            assert one(b, "SELECT IS_FREE_LOCK('pool_lock')") == 1


def test_binary_prepared_statements_pin_until_closed(balancer: BalancerThread) -> None:
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
        cur = cnx.cursor(prepared=True)
        cur.execute("SELECT ? + 1", (41,))
        assert cur.fetchone() == (42,)
        cur.execute("SELECT ? + 1", (1,))
        assert cur.fetchone() == (2,)
        cur.close()
        plain = cnx.cursor()
        plain.execute("SET @after_prepare = 3")
        plain.execute("SELECT @after_prepare")
        assert plain.fetchone() == (3,)
        plain.close()
    finally:
        cnx.close()
    with connect(balancer) as b:
        assert one(b, "SELECT 1") == 1


def test_a_prepared_use_never_reaches_the_next_client(balancer: BalancerThread) -> None:
    """Session state changed through the binary protocol (COM_STMT_PREPARE + EXECUTE) follows
    its client, and the one pooled connection comes back to the next client with the
    cluster's database and default session: after A's unit ends, and after A leaves."""
    a = mysql.connector.connect(
        host="127.0.0.1",
        port=port_of(balancer),
        user="app",
        password="app",
        database="app",
        ssl_disabled=True,
        autocommit=True,
        use_pure=True,
    )
    try:
        for sql in ["USE other", "SET time_zone = '+03:00'", "SET @p = 5"]:
            cur = a.cursor(prepared=True)
            cur.execute(sql)
            cur.close()  # COM_STMT_CLOSE: the unit ends, the connection is free
        with connect(balancer) as b:
            assert one(b, "SELECT DATABASE()") == "app"
            assert one(b, "SELECT @@time_zone") != "+03:00"
            assert one(b, "SELECT @p") is None
        cur = a.cursor(prepared=True)
        cur.execute("SELECT DATABASE(), @@time_zone, @p")
        assert cur.fetchone() == ("other", "+03:00", 5)
        cur.close()
        cur = a.cursor(prepared=True)
        cur.execute("USE app")  # and back: the tracking follows both ways
        cur.close()
        cur = a.cursor(prepared=True)
        cur.execute("SELECT DATABASE()")
        assert cur.fetchone() == ("app",)
        cur.close()
        cur = a.cursor(prepared=True)
        cur.execute("USE other")
        cur.close()
    finally:
        a.close()  # leaves with `other` as its database
    with connect(balancer) as b:
        assert one(b, "SELECT DATABASE()") == "app"
        assert one(b, "SELECT @@time_zone") != "+03:00"


def test_mysql_connector_and_cli_through_transaction_pooling(
    balancer: BalancerThread, tmp_path: Path
) -> None:
    cnx = mysql.connector.connect(
        host="127.0.0.1",
        port=port_of(balancer),
        user="app",
        password="app",
        database="app",
        ssl_disabled=True,
    )
    try:
        cur = cnx.cursor()
        cur.execute("SET @c = 'connector'")
        cur.execute("SELECT @c, DATABASE()")
        assert cur.fetchone() == ("connector", "app")
        cur.close()
    finally:
        cnx.close()
    out = subprocess.run(
        [
            "mysql",
            "--no-defaults",
            "--skip-ssl",
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
            "SET @v = 7; SELECT @v * 6; USE other; SELECT DATABASE()",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert out.stdout.split() == ["42", "other"]


def test_a_client_that_leaves_mid_transaction_frees_the_connection(
    balancer: BalancerThread,
) -> None:
    a = connect(balancer)
    run(a, "START TRANSACTION")
    run(a, "SET @gone = 1")
    a.close()
    with connect(balancer) as b:
        assert one(b, "SELECT @gone") is None
        assert one(b, "SELECT @@in_transaction") == 0


def test_last_insert_id_follows_the_client_across_connections(balancer: BalancerThread) -> None:
    with connect(balancer) as a, connect(balancer) as b:
        run(a, "CREATE TABLE IF NOT EXISTS pool_ai (id INT AUTO_INCREMENT PRIMARY KEY, v INT)")
        run(a, "INSERT INTO pool_ai (v) VALUES (1)")
        a_id = a.insert_id()
        run(b, "INSERT INTO pool_ai (v) VALUES (2)")
        b_id = b.insert_id()
        assert b_id != a_id
        assert one(a, "SELECT LAST_INSERT_ID()") == a_id
        assert one(b, "SELECT LAST_INSERT_ID()") == b_id


def test_a_client_that_inserted_nothing_never_sees_another_clients_insert_id(
    balancer: BalancerThread,
) -> None:
    # pool_size = 1: the newcomer gets the very connection the inserter used.
    with connect(balancer) as inserter:
        run(
            inserter,
            "CREATE TABLE IF NOT EXISTS pool_ai (id INT AUTO_INCREMENT PRIMARY KEY, v INT)",
        )
        run(inserter, "INSERT INTO pool_ai (v) VALUES (3)")
        assert inserter.insert_id() > 0
        with connect(balancer) as newcomer:
            assert one(newcomer, "SELECT LAST_INSERT_ID()") == 0


@pytest.mark.parametrize("mode", ["session", "transaction"])
def test_found_rows_clients_get_the_rows_matched_as_a_direct_connection_gives(
    mariadb_cluster: MariaDbCluster, mode: str
) -> None:
    """CLIENT_FOUND_ROWS (Django, SQLAlchemy's MySQL dialects) makes an UPDATE report the rows
    it matched, not those it changed. Clients with and without it share one proxy and one
    pool_size = 1 cluster, in turns."""
    mariadb_cluster.sql(
        mariadb_cluster.primary,
        "CREATE TABLE IF NOT EXISTS found_rows_t (id INT PRIMARY KEY, v INT); "
        "REPLACE INTO found_rows_t VALUES (1, 1), (2, 1)",
    )
    statements = [
        "UPDATE found_rows_t SET v = 1",  # matches 2, changes none
        "UPDATE found_rows_t SET v = 1 WHERE id = 1",
        "INSERT INTO found_rows_t VALUES (1, 1) ON DUPLICATE KEY UPDATE v = 1",
        "UPDATE found_rows_t SET v = 2 WHERE id = 2",
        "UPDATE found_rows_t SET v = 1 WHERE id = 2",
    ]

    def outcomes(**kwargs: Any) -> list[int]:
        conn = pymysql.connect(**kwargs, autocommit=True)
        with conn, conn.cursor() as cur:
            return [cur.execute(sql) for sql in statements]

    direct = mariadb_cluster.connect_kwargs(mariadb_cluster.primary)
    flags = [0, CLIENT.FOUND_ROWS]
    want = {flag: outcomes(**direct, client_flag=flag) for flag in flags}
    assert want[0] != want[CLIENT.FOUND_ROWS]  # the test can fail
    config = pooling_config(mariadb_cluster).replace(
        'pool_mode = "transaction"', f'pool_mode = "{mode}"'
    )
    with BalancerThread(parse_config(config)) as thread:
        for _ in range(2):
            for flag in flags:
                got = outcomes(
                    host="127.0.0.1",
                    port=port_of(thread),
                    user="app",
                    password="app",
                    database="app",
                    client_flag=flag,
                )
                assert got == want[flag], flag


def test_change_user_under_transaction_pooling_resets_the_session_as_the_server_would(
    mariadb_cluster: MariaDbCluster,
) -> None:
    """COM_CHANGE_USER (mysql-connector's cmd_change_user) in the middle of a transaction, with
    a temporary table and a user variable: the new user's session starts clean, the
    transaction is rolled back, and the connection it held serves others (pool_size = 1)."""
    mariadb_cluster.sql(
        mariadb_cluster.primary,
        "SET SESSION sql_log_bin = 0; "
        "CREATE USER IF NOT EXISTS 'chg'@'127.0.0.1' IDENTIFIED BY 'chg'; "
        f"GRANT ALL PRIVILEGES ON `{mariadb_cluster.database}`.* TO 'chg'@'127.0.0.1'; "
        "CREATE TABLE IF NOT EXISTS app.chg_t (v INT)",
    )
    config = pooling_config(mariadb_cluster).replace(
        "[[clusters]]",
        '[[users]]\nname = "chg"\npassword = "chg"\nauth = "mysql_native_password"\n\n[[clusters]]',
    )
    with BalancerThread(parse_config(config)) as thread:
        conn = mysql.connector.connect(
            host="127.0.0.1",
            port=port_of(thread),
            user="app",
            password="app",
            database="app",
            use_pure=True,
            ssl_disabled=True,
        )
        try:
            cur = conn.cursor()
            for sql in (
                "SET @mine = 1",
                "CREATE TEMPORARY TABLE chg_tmp (v INT)",
                "START TRANSACTION",
                "INSERT INTO chg_t VALUES (1)",
            ):
                cur.execute(sql)
            conn.cmd_change_user(username="chg", password="chg", database="app")
            cur = conn.cursor()
            cur.execute("SELECT CURRENT_USER(), @mine, COUNT(*), @@autocommit FROM chg_t")
            user, mine, rows, autocommit = cur.fetchall()[0]
            assert str(user).startswith("chg@")
            # mysql-connector (autocommit=False) turns autocommit off again after the change,
            # as it does against the server directly; the SELECT opened a new transaction.
            assert (mine, rows, autocommit) == (None, 0, 0)
            with pytest.raises(mysql.connector.Error) as missing:
                cur.execute("SELECT * FROM chg_tmp")
            assert missing.value.errno == 1146
            conn.rollback()
            # The one pooled connection is free: another client gets it.
            with connect(thread) as other:
                assert one(other, "SELECT COUNT(*) FROM chg_t") == 0
            conn.cmd_change_user(username="app", password="app", database="app")
            cur = conn.cursor()
            cur.execute("SELECT CURRENT_USER()")
            assert str(cur.fetchall()[0][0]).startswith("app@")
            with pytest.raises(mysql.connector.Error) as refused:
                conn.cmd_change_user(username="app", password="wrong", database="app")
            assert refused.value.errno == 1045
        finally:
            conn.close()


def test_the_previous_statements_outcome_is_never_another_clients(
    balancer: BalancerThread,
) -> None:
    """pool_size = 1: a client's first question about "the previous statement" (ROW_COUNT(),
    FOUND_ROWS(), warnings) runs on the connection another client just used; it must not
    answer with that client's row counts and warnings (5 rows changed, 5 found, 2 warnings):
    the connection is reset first, so the answer is a fresh session's, whatever came before."""
    question = "SELECT ROW_COUNT(), FOUND_ROWS(), @@warning_count"
    answers = []
    with connect(balancer) as a:
        run(a, "CREATE TABLE IF NOT EXISTS pool_diag (v INT)")
        run(a, "DELETE FROM pool_diag")
        run(a, "INSERT INTO pool_diag VALUES (1), (2), (3), (4), (5)")
        for other in (
            "UPDATE pool_diag SET v = v + 1",
            "SELECT SQL_CALC_FOUND_ROWS v FROM pool_diag LIMIT 2",
            "SELECT CAST('x' AS INT), CAST('y' AS INT) FROM pool_diag LIMIT 1",
        ):
            run(a, other)
            with connect(balancer) as b, b.cursor() as cur:
                cur.execute(question)
                answers.append(cur.fetchall()[0])
    assert answers[0] == answers[1] == answers[2], answers
    row_count, found_rows, warnings = answers[0]
    assert (row_count, found_rows, warnings) != (5, 5, 2)
    assert row_count != 5
    assert found_rows != 5
    assert warnings != 2
    # The client's own previous statement in the same unit is still the one it asks about.
    with connect(balancer) as b:
        run(b, "START TRANSACTION")
        run(b, "UPDATE pool_diag SET v = v + 1")
        assert one(b, "SELECT ROW_COUNT()") == 5
        run(b, "COMMIT")
