"""Real MySQL clients through the proxy's MySQL listener, in front of a real MariaDB cluster.

The `mysql` command-line client (MariaDB's), PyMySQL and mysql-connector-python log in,
query, prepare statements and misbehave; the MariaDB servers answer. Session pooling.
"""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Callable, Iterator
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


def balancer_config(cluster: MariaDbCluster, *, extra_cluster: str = "", users: str = "") -> str:
    """TOML for one MySQL cluster "app" in front of `cluster` (session pooling)."""
    servers = "\n".join(
        f'[[clusters.servers]]\nname = "{node.name}"\naddress = "{node.address()}"\n'
        f'role = "{"primary" if node == cluster.primary else "replica"}"\n'
        for node in cluster.nodes
    )
    return f"""
[listen]
mysql = "127.0.0.1:0"

[[users]]
name = "{cluster.user}"
password = "{cluster.password}"
auth = "mysql_native_password"

[[users]]
name = "sha2"
password = "{cluster.password}"
server_password = "{cluster.password}"
auth = "caching_sha2_password"
{users}
[[clusters]]
name = "app"
protocol = "mysql"
database = "{cluster.database}"
pool_mode = "session"
pool_size = 20
{extra_cluster}

{servers}
"""


@pytest.fixture(scope="module")
def balancer(mariadb_cluster: MariaDbCluster) -> Iterator[BalancerThread]:
    # The "sha2" user logs in to the servers as the cluster's user: same password, its own
    # name would need its own account. Give it one.
    mariadb_cluster.sql(
        mariadb_cluster.primary,
        # Room for the 20 MB statement and rows (MariaDB's default is 16 MB); set before the
        # proxy opens connections, which take the global value at login.
        "SET GLOBAL max_allowed_packet = 64 * 1024 * 1024; "
        "SET SESSION sql_log_bin = 0; "
        "CREATE DATABASE IF NOT EXISTS other; "
        "GRANT ALL PRIVILEGES ON other.* TO "
        f"'{mariadb_cluster.user}'@'127.0.0.1'; "
        "CREATE USER IF NOT EXISTS 'sha2'@'127.0.0.1' IDENTIFIED BY "
        f"'{mariadb_cluster.password}'; "
        f"GRANT ALL PRIVILEGES ON `{mariadb_cluster.database}`.* TO 'sha2'@'127.0.0.1'",
    )
    config = parse_config(balancer_config(mariadb_cluster))
    with BalancerThread(config) as thread:
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
    }
    options.update(kwargs)
    return pymysql.connect(**options)


def one(conn: pymysql.Connection[Any], sql: str) -> Any:
    with conn.cursor() as cur:
        cur.execute(sql)
        row = cur.fetchone()
        assert row is not None
        return row[0]


# -- login ----------------------------------------------------------------------------------------


def test_pymysql_logs_in_and_queries(
    balancer: BalancerThread, mariadb_cluster: MariaDbCluster
) -> None:
    with connect(balancer) as conn:
        assert one(conn, "SELECT 1 + 1") == 2
        assert one(conn, "SELECT @@port") == mariadb_cluster.primary.port
        assert one(conn, "SELECT DATABASE()") == "app"
        assert "dbbalancer" in conn.get_server_info()


def test_wrong_password_is_access_denied(balancer: BalancerThread) -> None:
    with pytest.raises(pymysql.err.OperationalError) as info:
        connect(balancer, password="wrong")
    assert info.value.args[0] == 1045
    assert "Access denied for user 'app'" in info.value.args[1]


def test_unknown_user_is_access_denied(balancer: BalancerThread) -> None:
    with pytest.raises(pymysql.err.OperationalError) as info:
        connect(balancer, user="nobody")
    assert info.value.args[0] == 1045
    assert "Access denied for user 'nobody'" in info.value.args[1]


def test_unknown_database_is_refused(balancer: BalancerThread) -> None:
    with pytest.raises(pymysql.err.OperationalError) as info:
        connect(balancer, database="nope")
    assert info.value.args[0] == 1049


def test_no_database_lands_on_the_only_cluster(balancer: BalancerThread) -> None:
    with connect(balancer, database=None) as conn:
        assert one(conn, "SELECT DATABASE()") == "app"


def test_caching_sha2_fast_path_after_auth_switch(balancer: BalancerThread) -> None:
    # PyMySQL starts with mysql_native_password (the greeting's plugin); the proxy switches it
    # to the user's caching_sha2_password, and the right password takes the fast path.
    with connect(balancer, user="sha2") as conn:
        assert one(conn, "SELECT CURRENT_USER()").startswith("sha2@")


def test_caching_sha2_wrong_password_goes_through_rsa(balancer: BalancerThread) -> None:
    # The fast path fails, the proxy asks for full authentication, PyMySQL asks for the public
    # key (0x02) and sends the password RSA-encrypted; the proxy decrypts it and refuses.
    with pytest.raises(pymysql.err.OperationalError) as info:
        connect(balancer, user="sha2", password="wrong")
    assert info.value.args[0] == 1045


def mysql_cli(
    balancer: BalancerThread, *args: str, password: str = "app", database: str = "app"
) -> subprocess.CompletedProcess[str]:
    """Run MariaDB's `mysql` client against the proxy (no option files, no TLS)."""
    command = ["mysql", "--no-defaults", "--skip-ssl", "-h", "127.0.0.1"]
    command += ["-P", str(port_of(balancer)), "-u", "app", f"-p{password}", database, *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)


def test_mysql_cli(balancer: BalancerThread, mariadb_cluster: MariaDbCluster) -> None:
    result = mysql_cli(balancer, "-N", "-e", "SELECT @@port; SELECT 'x' AS a UNION ALL SELECT 'y'")
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [str(mariadb_cluster.primary.port), "x", "y"]


def test_mysql_cli_wrong_password(balancer: BalancerThread) -> None:
    result = mysql_cli(balancer, "-e", "SELECT 1", password="nope")
    assert result.returncode != 0
    assert "1045" in result.stderr


# -- commands -------------------------------------------------------------------------------------


def test_errors_leave_the_session_usable(balancer: BalancerThread) -> None:
    with connect(balancer) as conn:
        with pytest.raises(pymysql.err.ProgrammingError) as info, conn.cursor() as cur:
            cur.execute("SELECT * FROM no_such_table")
        assert info.value.args[0] == 1146
        assert one(conn, "SELECT 'still here'") == "still here"


def test_multi_statements_and_result_sets(balancer: BalancerThread) -> None:
    with connect(balancer, client_flag=CLIENT.MULTI_STATEMENTS) as conn, conn.cursor() as cur:
        cur.execute("SELECT 1; SELECT 2, 3; DO 0; SELECT 'four'")
        sets = [tuple(cur.fetchall())]
        while cur.nextset():
            sets.append(tuple(cur.fetchall()))
        assert sets == [((1,),), ((2, 3),), (), (("four",),)]
        # An error in the middle ends the response: the statements after it do not run.
        cur.execute("SELECT 1; SELECT * FROM no_such_table; SELECT 3")
        assert cur.fetchall() == ((1,),)
        with pytest.raises(pymysql.err.ProgrammingError):
            cur.nextset()
        cur.execute("SELECT 5")
        assert cur.fetchall() == ((5,),)


def test_multi_statements_refused_when_the_client_did_not_ask(balancer: BalancerThread) -> None:
    with connect(balancer) as conn:  # PyMySQL leaves CLIENT_MULTI_STATEMENTS out by default
        with pytest.raises(pymysql.err.ProgrammingError) as info, conn.cursor() as cur:
            cur.execute("SELECT 1; SELECT 2")
        assert info.value.args[0] == 1064
        assert one(conn, "SELECT 6") == 6


def test_stored_procedure_with_several_result_sets(balancer: BalancerThread) -> None:
    with connect(balancer, autocommit=True) as conn, conn.cursor() as cur:
        cur.execute("DROP PROCEDURE IF EXISTS two_sets")
        cur.execute("CREATE PROCEDURE two_sets() BEGIN SELECT 1 AS a; SELECT 2 AS b; END")
        cur.execute("CALL two_sets()")
        assert cur.fetchall() == ((1,),)
        assert cur.nextset()
        assert cur.fetchall() == ((2,),)
        while cur.nextset():
            pass
        assert one(conn, "SELECT 7") == 7


def test_large_rows_and_a_20_mb_statement(balancer: BalancerThread) -> None:
    size = 20 * 1024 * 1024  # more than one 16 MB packet each way
    with connect(balancer, autocommit=True) as conn, conn.cursor() as cur:
        cur.execute(f"SELECT REPEAT('x', {size}), 'after'")
        row = cur.fetchone()
        assert row is not None
        assert len(row[0]) == size
        assert row[1] == "after"
        blob = "y" * size
        cur.execute("SELECT LENGTH(%s), 'tail'", (blob,))
        assert cur.fetchone() == (size, "tail")
        cur.execute("SELECT 8")
        assert cur.fetchone() == (8,)


def test_use_and_init_db_switch_the_database(balancer: BalancerThread) -> None:
    with connect(balancer) as conn:
        conn.select_db("other")  # COM_INIT_DB
        assert one(conn, "SELECT DATABASE()") == "other"
        with conn.cursor() as cur:
            cur.execute("USE app")
        assert one(conn, "SELECT DATABASE()") == "app"
        with conn.cursor() as cur:
            cur.execute("USE other")
        assert one(conn, "SELECT DATABASE()") == "other"


def test_the_next_client_does_not_inherit_the_database(
    balancer_one: BalancerThread,
) -> None:
    with connect(balancer_one, client_flag=CLIENT.MULTI_STATEMENTS) as conn:
        first = one(conn, "SELECT CONNECTION_ID()")
        with conn.cursor() as cur:
            cur.execute("USE other")
            cur.execute("SET @leftover = 1")
    wait_for(lambda: pool_counts(balancer_one) == (1, 0))
    with connect(balancer_one, client_flag=CLIENT.MULTI_STATEMENTS) as conn:
        assert one(conn, "SELECT CONNECTION_ID()") == first  # the same pooled connection
        assert one(conn, "SELECT DATABASE()") == "app"
        assert one(conn, "SELECT @leftover") is None


def test_prepared_statements_with_mysql_connector(
    balancer: BalancerThread, mariadb_cluster: MariaDbCluster
) -> None:
    conn = mysql.connector.connect(
        host="127.0.0.1",
        port=port_of(balancer),
        user="app",
        password="app",
        database="app",
        use_pure=True,
        ssl_disabled=True,
        collation="utf8mb4_general_ci",
    )
    try:
        cur = conn.cursor(prepared=True)
        cur.execute("SELECT ? + 1, ?, @@port", (41, "text"))
        assert cur.fetchall() == [(42, "text", mariadb_cluster.primary.port)]
        cur.execute("SELECT ? + 1, ?, @@port", (1, "again"))
        assert cur.fetchall() == [(2, "again", mariadb_cluster.primary.port)]
        cur.close()
        text = conn.cursor()
        text.execute("SELECT 'plain'")
        assert text.fetchall() == [("plain",)]
        text.close()
    finally:
        conn.close()


def test_change_user_with_mysql_connector(balancer: BalancerThread) -> None:
    conn = mysql.connector.connect(
        host="127.0.0.1",
        port=port_of(balancer),
        user="app",
        password="app",
        database="app",
        use_pure=True,
        ssl_disabled=True,
        collation="utf8mb4_general_ci",
    )
    try:
        cur = conn.cursor()
        cur.execute("SET @mine = 1")
        conn.cmd_change_user(username="sha2", password="app", database="app")
        cur = conn.cursor()
        cur.execute("SELECT CURRENT_USER(), @mine")
        user, mine = cur.fetchall()[0]
        assert str(user).startswith("sha2@")
        assert mine is None
        with pytest.raises(mysql.connector.Error) as info:
            conn.cmd_change_user(username="app", password="wrong", database="app")
        assert info.value.errno == 1045
    finally:
        conn.close()


def test_load_data_local_infile_is_refused(balancer: BalancerThread, tmp_path: Path) -> None:
    data = tmp_path / "rows.csv"
    data.write_text("1\n2\n")
    with connect(balancer, local_infile=True, autocommit=True) as conn, conn.cursor() as cur:
        cur.execute("CREATE TABLE IF NOT EXISTS infile_target (v INT)")
        with pytest.raises(pymysql.err.OperationalError) as info:
            cur.execute(f"LOAD DATA LOCAL INFILE '{data}' INTO TABLE infile_target")
        assert info.value.args[0] == 1148
        assert "local_infile" in info.value.args[1]
        cur.execute("SELECT COUNT(*) FROM infile_target")
        assert cur.fetchone() == (0,)


# -- misbehaving clients --------------------------------------------------------------------------


def raw_login_attempt(port: int, payload: bytes) -> bytes:
    """Read the greeting, send `payload` as is, return what the proxy answers before closing."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        greeting = read_packet(sock)
        assert greeting[0] == 0x0A
        sock.sendall(payload)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
        return answer


def read_packet(sock: socket.socket) -> bytes:
    header = b""
    while len(header) < 4:
        header += sock.recv(4 - len(header))
    length = int.from_bytes(header[:3], "little")
    body = b""
    while len(body) < length:
        body += sock.recv(length - len(body))
    return body


def test_garbage_and_a_16_mb_claim_before_login(balancer: BalancerThread) -> None:
    port = port_of(balancer)
    with connect(balancer) as bystander:
        garbage = raw_login_attempt(port, b"\x05\x00\x00\x01hello world, not mysql")
        assert garbage[4] == 0xFF  # an ERR packet, then the connection closed
        claim = raw_login_attempt(port, b"\xff\xff\xff\x01" + b"A" * 100)
        assert claim[4] == 0xFF
        assert b"exceeds" in claim
        assert one(bystander, "SELECT 'unaffected'") == "unaffected"


def test_a_silent_client_is_dropped_at_the_login_timeout(balancer_one: BalancerThread) -> None:
    with socket.create_connection(("127.0.0.1", port_of(balancer_one)), timeout=30) as sock:
        assert read_packet(sock)[0] == 0x0A  # the greeting; then say nothing
        answer = read_packet(sock)
        assert answer[0] == 0xFF
        assert int.from_bytes(answer[1:3], "little") == 1043
        assert sock.recv(1) == b""  # closed


def test_client_killed_mid_result(balancer_one: BalancerThread) -> None:
    # With multi-statements, as the mysql client below: the same pool profile and connection.
    with connect(balancer_one, client_flag=CLIENT.MULTI_STATEMENTS) as conn:
        server_id = one(conn, "SELECT CONNECTION_ID()")
    wait_for(lambda: pool_counts(balancer_one) == (1, 0))
    # The mysql client streams a big result (--quick) into a pipe nobody reads: it stops in
    # the middle, and is killed there.
    # utf8mb4: the client's own default here is utf8mb3, another pool profile.
    command = ["mysql", "--no-defaults", "--skip-ssl", "--quick", "-h", "127.0.0.1"]
    command += [
        "--default-character-set=utf8mb4",
        "-P",
        str(port_of(balancer_one)),
        "-u",
        "app",
        "-papp",
        "app",
        "-N",
        "-e",
    ]
    command += ["SELECT CONNECTION_ID(), REPEAT('z', 1000) FROM seq_1_to_1000000"]
    victim = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        assert victim.stdout is not None
        first = victim.stdout.readline().split()
        assert int(first[0]) == server_id  # the pooled connection is serving it
    finally:
        victim.kill()
        victim.wait()
        if victim.stdout is not None:
            victim.stdout.close()
    # Dropped, not pooled again: a connection mid-response is of no use to anyone.
    wait_for(
        lambda: pool_counts(balancer_one) == (0, 0), describe=lambda: pool_counts(balancer_one)
    )
    with connect(balancer_one) as conn:
        assert one(conn, "SELECT CONNECTION_ID()") != server_id
        assert one(conn, "SELECT 'fresh'") == "fresh"


# -- helpers --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def balancer_one(
    mariadb_cluster: MariaDbCluster, balancer: BalancerThread
) -> Iterator[BalancerThread]:
    """A proxy whose pool holds one connection, so the next client gets the last one's."""
    text = balancer_config(mariadb_cluster).replace("pool_size = 20", "pool_size = 1")
    text = '[general]\nclient_login_timeout = "1s"\n' + text
    with BalancerThread(parse_config(text)) as thread:
        yield thread


def pool_counts(balancer: BalancerThread, profile: str = "") -> tuple[int, int]:
    """(idle, active) server connections over the proxy's pools of pool profile `profile`
    (the default: clients with multi-statements and utf8mb4_general_ci; docs/mysql.md)."""

    def counts() -> tuple[int, int]:
        service = balancer.app.mysql
        assert service is not None
        stats = [
            p.stats()
            for c in service.clusters()
            for p in c.runtime.pools()
            if p.key.split("@")[0].partition("+")[2] == profile
        ]
        return sum(s.idle for s in stats), sum(s.active for s in stats)

    return balancer.call(counts)


def wait_for(
    condition: Callable[[], bool], attempts: int = 600, describe: Callable[[], object] = str
) -> None:
    """Poll `condition` (a state the proxy reaches on its own) up to `attempts` times."""
    for _ in range(attempts):
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError(f"the proxy did not reach the expected state: {describe()}")
