"""Real MySQL clients through the proxy's MySQL listener, in front of a real MariaDB cluster.

The `mysql` command-line client (MariaDB's), PyMySQL and mysql-connector-python log in,
query, prepare statements and misbehave; the MariaDB servers answer. Session pooling.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from typing import Any

import pymysql
import pytest

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
        "SET SESSION sql_log_bin = 0; "
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
