"""Pool profiles under transaction pooling (docs/mysql.md, "Pool profiles"): common clients
pay nothing per unit of work for their statement mode or character set.

Counts, not timings: the server's own global counters (read on a direct connection, whose
reads count only as Com_show_status) say how many COM_RESET_CONNECTION (Com_admin_commands on
MariaDB), COM_SET_OPTION and SET statements (Com_set_option), COM_INIT_DB (Com_change_db) and
COM_STMT_PREPARE (Com_stmt_prepare) the proxy sent for a loop of units. pool_size = 1: every
client of a profile shares one server connection, so what one leaves behind the next sees.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from typing import Any

import mysql.connector
import pymysql
import pytest
from pymysql.constants import CLIENT, COMMAND

from dbbalancer.config.loader import parse_config
from dbbalancer.testing.balancer import BalancerThread
from dbbalancer.testing.mariadbcluster import MariaDbCluster

pytestmark = pytest.mark.timeout(120)

UNITS = 50
COUNTED = (
    "Com_admin_commands",
    "Com_set_option",
    "Com_change_db",
    "Com_stmt_prepare",
    "Com_stmt_execute",
    "Com_select",
)
ER_PARSE_ERROR = 1064


def config(cluster: MariaDbCluster, pool_mode: str) -> str:
    node = cluster.primary
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
pool_mode = "{pool_mode}"
pool_size = 1
query_wait_timeout = "30s"
health_check_interval = "5s"

[[clusters.servers]]
name = "primary"
address = "{node.address()}"
role = "primary"
"""


@pytest.fixture(scope="module")
def balancer(mariadb_cluster: MariaDbCluster) -> Iterator[BalancerThread]:
    mariadb_cluster.sql(
        mariadb_cluster.primary,
        "CREATE OR REPLACE SEQUENCE profile_seq NOCACHE",
    )
    with BalancerThread(parse_config(config(mariadb_cluster, "transaction"))) as thread:
        yield thread


@pytest.fixture(scope="module")
def direct(mariadb_cluster: MariaDbCluster) -> Iterator[Any]:
    conn = pymysql.connect(**mariadb_cluster.connect_kwargs(mariadb_cluster.primary))
    with conn:
        yield conn


def counters(direct: Any) -> dict[str, int]:
    with direct.cursor() as cur:
        cur.execute("SHOW GLOBAL STATUS WHERE Variable_name IN %s", (COUNTED,))
        return {name: int(value) for name, value in cur.fetchall()}


def since(direct: Any, before: dict[str, int]) -> dict[str, int]:
    after = counters(direct)
    return {name: after[name] - before[name] for name in COUNTED}


def connect(balancer: BalancerThread, **kwargs: Any) -> Any:
    address = balancer.app.mysql_address
    assert address is not None
    options: dict[str, Any] = {
        "host": address[0],
        "port": address[1],
        "user": "app",
        "password": "app",
        "database": "app",
        "autocommit": True,
        "connect_timeout": 10,
        "read_timeout": 60,
    }
    options.update(kwargs)
    return pymysql.connect(**options)


def connector(balancer: BalancerThread) -> Any:
    address = balancer.app.mysql_address
    assert address is not None
    return mysql.connector.connect(
        host=address[0],
        port=address[1],
        user="app",
        password="app",
        database="app",
        autocommit=True,
        ssl_disabled=True,
        use_pure=True,
        connection_timeout=60,
    )


def one(conn: Any, sql: str) -> Any:
    with conn.cursor() as cur:
        cur.execute(sql)
        return cur.fetchone()


def pool_names(balancer: BalancerThread) -> set[str]:
    def names() -> set[str]:
        service = balancer.app.mysql
        assert service is not None
        cluster = service.cluster("app")
        assert cluster is not None
        return {pool.key for pool in cluster.runtime.pools()}

    return balancer.call(names)


def set_option(conn: Any, multi: bool) -> None:
    """COM_SET_OPTION (PyMySQL has no call for it)."""
    conn._execute_command(COMMAND.COM_SET_OPTION, struct.pack("<H", 0 if multi else 1))
    conn._read_packet()


def test_pymysql_units_cost_no_reset_no_set_option_and_no_replay(
    balancer: BalancerThread, direct: Any
) -> None:
    with connect(balancer) as conn:  # PyMySQL: no CLIENT_MULTI_STATEMENTS, SET NAMES utf8mb4
        assert one(conn, "SELECT @@character_set_client, @@collation_connection") == (
            "utf8mb4",
            "utf8mb4_general_ci",
        )
        before = counters(direct)
        for _ in range(UNITS):
            assert one(conn, "SELECT 1") == (1,)
        spent = since(direct, before)
        with pytest.raises(pymysql.err.ProgrammingError) as refused:
            one(conn, "SELECT 1; SELECT 2")
        assert refused.value.args[0] == ER_PARSE_ERROR
    assert spent["Com_admin_commands"] == 0  # no COM_RESET_CONNECTION
    assert spent["Com_set_option"] == 0  # no COM_SET_OPTION, no SET NAMES replayed
    assert spent["Com_change_db"] == 0
    assert UNITS <= spent["Com_select"] <= UNITS + 2  # a health probe may run meanwhile
    assert "app/app+no_multi_statements@primary" in pool_names(balancer)


def test_mysql_connector_prepares_a_statement_once_for_all_its_units(
    balancer: BalancerThread, direct: Any
) -> None:
    before = counters(direct)
    sessions = 2
    for _ in range(sessions):
        cnx = connector(balancer)  # SET NAMES ... COLLATE ..., SET @@session.autocommit = ON
        try:
            cur = cnx.cursor(prepared=True)
            for i in range(UNITS // sessions):
                cur.execute("SELECT ? + 1", (i,))
                assert cur.fetchall() == [(i + 1,)]
            cur.close()
        finally:
            cnx.close()
    spent = since(direct, before)
    # Once per client session (a statement no client holds any more is closed), not per unit:
    # the connection is not reset between units, so it keeps the statement.
    assert spent["Com_stmt_prepare"] == sessions
    assert spent["Com_stmt_execute"] == UNITS
    assert spent["Com_admin_commands"] == 0  # the login's SET NAMES changed nothing
    assert spent["Com_change_db"] == 0


def test_a_client_collation_is_a_profile_and_survives_resets(
    balancer: BalancerThread, direct: Any, mariadb_cluster: MariaDbCluster
) -> None:
    wanted = ("latin1", "latin1", "latin1_swedish_ci")
    sql = "SELECT @@character_set_client, @@character_set_results, @@collation_connection"
    node = mariadb_cluster.primary
    with pymysql.connect(**mariadb_cluster.connect_kwargs(node), charset="latin1") as alone:
        assert one(alone, sql) == wanted  # what a direct connection has
    with connect(balancer, charset="latin1") as conn, connect(balancer, charset="latin1") as other:
        before = counters(direct)
        for _ in range(UNITS):
            assert one(conn, sql) == wanted
        spent = since(direct, before)
        one(other, "SET @x = 1")  # session state: the connection is reset when it goes back
        assert one(other, "SELECT @x") == (1,)
        assert one(conn, sql) == wanted
        assert one(conn, "SELECT @x") == (None,)
    assert spent["Com_set_option"] == 0
    assert spent["Com_admin_commands"] == 0
    assert "app/app+no_multi_statements,latin1_swedish_ci@primary" in pool_names(balancer)


def test_a_client_that_switches_multi_statements_on_keeps_them_and_others_do_not(
    balancer: BalancerThread,
) -> None:
    with connect(balancer) as switcher, connect(balancer) as plain:
        set_option(switcher, multi=True)
        for _ in range(3):  # each unit on a connection of the profile (switched for it)
            with switcher.cursor() as cur:
                cur.execute("SELECT 1; SELECT 2")
                assert cur.fetchall() == ((1,),)
                assert cur.nextset()
                assert cur.fetchall() == ((2,),)
            with pytest.raises(pymysql.err.ProgrammingError) as refused:
                one(plain, "SELECT 1; SELECT 2")
            assert refused.value.args[0] == ER_PARSE_ERROR
        set_option(switcher, multi=False)
        with pytest.raises(pymysql.err.ProgrammingError):
            one(switcher, "SELECT 1; SELECT 2")
    with connect(balancer, client_flag=CLIENT.MULTI_STATEMENTS) as multi, multi.cursor() as cur:
        cur.execute("SELECT 1; SELECT 2")
        assert cur.fetchall() == ((1,),)


def test_a_sequence_value_does_not_reach_the_next_client(balancer: BalancerThread) -> None:
    with connect(balancer) as first:
        assert one(first, "SELECT NEXTVAL(profile_seq)") is not None
        assert one(first, "SELECT PREVIOUS VALUE FOR profile_seq") is not None
    with connect(balancer) as second:
        assert one(second, "SELECT PREVIOUS VALUE FOR profile_seq") == (None,)


def test_session_pooling_restores_the_profile_s_statement_mode(
    mariadb_cluster: MariaDbCluster,
) -> None:
    with BalancerThread(parse_config(config(mariadb_cluster, "session"))) as session_pooling:
        with connect(session_pooling) as first:
            with pytest.raises(pymysql.err.ProgrammingError):
                one(first, "SELECT 1; SELECT 2")
            set_option(first, multi=True)
            with first.cursor() as cur:
                cur.execute("SELECT 1; SELECT 2")
        with connect(session_pooling) as second:  # the same server connection, restored
            with pytest.raises(pymysql.err.ProgrammingError) as refused:
                one(second, "SELECT 1; SELECT 2")
            assert refused.value.args[0] == ER_PARSE_ERROR
