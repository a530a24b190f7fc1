"""dbbalancer logging in to MariaDB servers as a user ``IDENTIFIED VIA ed25519`` (issue #12).

Every node of the shared cluster loads the auth_ed25519 plugin (INSTALL SONAME, kept out of
the binlog: each node installs its own); the user is created on the primary and replicated,
so that connections to the replicas log in with client_ed25519 too.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from typing import Any

import pymysql
import pytest

from dbbalancer.config.loader import parse_config
from dbbalancer.core.topology import Server, ServerRole
from dbbalancer.mysql import auth as mysql_auth
from dbbalancer.mysql.backend import ServerConnection, ServerError, connect_server
from dbbalancer.testing.balancer import BalancerThread
from dbbalancer.testing.mariadbcluster import MariaDbCluster, MariaDbNode

pytestmark = pytest.mark.timeout(180)

USER = "edu"
PASSWORD = "secret"
WRONG_USER = "edwrong"  # a configured user whose server_password is not the server's


@pytest.fixture(scope="module")
def ed25519_user(mariadb_cluster: MariaDbCluster) -> Iterator[str]:
    cluster = mariadb_cluster
    for node in cluster.nodes:
        installed = cluster.sql(
            node, "SELECT COUNT(*) FROM information_schema.PLUGINS WHERE PLUGIN_NAME = 'ed25519'"
        )
        if installed == [("0",)]:
            cluster.sql(node, "SET SESSION sql_log_bin = 0; INSTALL SONAME 'auth_ed25519'")
    accounts = "; ".join(
        f"CREATE USER '{name}'@'127.0.0.1' IDENTIFIED VIA ed25519 USING PASSWORD('{PASSWORD}'); "
        f"GRANT ALL PRIVILEGES ON `{cluster.database}`.* TO '{name}'@'127.0.0.1'; "
        f"GRANT SLAVE MONITOR, BINLOG MONITOR ON *.* TO '{name}'@'127.0.0.1'"
        for name in (USER, WRONG_USER)
    )
    cluster.sql(cluster.primary, accounts)
    cluster.wait_replicated()
    try:
        yield USER
    finally:
        cluster.sql(cluster.primary, f"DROP USER '{USER}'@'127.0.0.1', '{WRONG_USER}'@'127.0.0.1'")
        cluster.wait_replicated()


def as_server(node: MariaDbNode) -> Server:
    return Server(name=node.name, host=node.host, port=node.port, role=ServerRole.AUTO)


async def login(node: MariaDbNode, password: str, database: str | None) -> ServerConnection:
    return await connect_server(
        as_server(node),
        user=USER,
        password=password,
        database=database,
        connect_timeout=10.0,
        max_payload=1 << 20,
    )


def test_the_server_stores_the_public_key_dbbalancer_derives(
    mariadb_cluster: MariaDbCluster, ed25519_user: str
) -> None:
    for node in mariadb_cluster.nodes:
        stored = mariadb_cluster.sql(
            node,
            "SELECT JSON_VALUE(Priv, '$.plugin'), JSON_VALUE(Priv, '$.authentication_string') "
            f"FROM mysql.global_priv WHERE User = '{ed25519_user}' AND Host = '127.0.0.1'",
        )
        assert stored == [("ed25519", mysql_auth.ed25519_public_key(PASSWORD))], node.name


def test_connect_server_logs_in_with_ed25519(
    mariadb_cluster: MariaDbCluster, ed25519_user: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    signed: list[bytes] = []
    real = mysql_auth.ed25519_scramble

    def spy(password: str, nonce: bytes) -> bytes:
        signed.append(nonce)
        return real(password, nonce)

    monkeypatch.setattr(mysql_auth, "ed25519_scramble", spy)

    async def main() -> None:
        for node in mariadb_cluster.nodes:
            for _ in range(5):  # a fresh random scramble each time
                conn = await login(node, PASSWORD, mariadb_cluster.database)
                try:
                    rows = await conn.query("SELECT CURRENT_USER(), DATABASE(), @@port")
                    assert rows == [
                        (
                            f"{ed25519_user}@127.0.0.1".encode(),
                            mariadb_cluster.database.encode(),
                            str(node.port).encode(),
                        )
                    ]
                finally:
                    conn.close()
                    await conn.wait_closed()

    asyncio.run(main())
    assert len(signed) == 5 * len(mariadb_cluster.nodes)
    assert all(len(nonce) == mysql_auth.ED25519_NONCE_LENGTH for nonce in signed)
    assert len(set(signed)) == len(signed)


def test_a_wrong_password_names_the_server_and_the_plugin(
    mariadb_cluster: MariaDbCluster, ed25519_user: str
) -> None:
    async def main() -> None:
        with pytest.raises(ServerError) as refused:
            await login(mariadb_cluster.primary, "wrong", None)
        assert refused.value.errno == 1045
        assert refused.value.message.startswith(
            f"server {mariadb_cluster.primary.name} refused the login as '{ed25519_user}' "
            "with client_ed25519: Access denied"
        )

    asyncio.run(main())


# -- through the proxy --------------------------------------------------------------------------


def proxy_config(cluster: MariaDbCluster) -> str:
    servers = "\n".join(
        f'[[clusters.servers]]\nname = "{node.name}"\naddress = "{node.address()}"\n'
        f'role = "{"primary" if node == cluster.primary else "replica"}"\n'
        for node in cluster.nodes
    )
    return f"""
[listen]
mysql = "127.0.0.1:0"

[[users]]
name = "{USER}"
password = "{PASSWORD}"
auth = "mysql_native_password"

[[users]]
name = "{WRONG_USER}"
password = "{PASSWORD}"
server_password = "not-{PASSWORD}"
auth = "mysql_native_password"

[[clusters]]
name = "app"
protocol = "mysql"
database = "{cluster.database}"
pool_mode = "transaction"
pool_size = 4
query_wait_timeout = "30s"
read_write_split = true
max_replica_lag = "1h"

{servers}
"""


@pytest.fixture(scope="module")
def balancer(mariadb_cluster: MariaDbCluster, ed25519_user: str) -> Iterator[BalancerThread]:
    with BalancerThread(parse_config(proxy_config(mariadb_cluster))) as thread:
        yield thread


def connect(balancer: BalancerThread, user: str = USER) -> pymysql.Connection[Any]:
    address = balancer.app.mysql_address
    assert address is not None
    return pymysql.connect(
        host=address[0],
        port=address[1],
        user=user,
        password=PASSWORD,
        database="app",
        connect_timeout=10,
        read_timeout=60,
        autocommit=True,
    )


def one(conn: pymysql.Connection[Any], sql: str, *args: Any) -> Any:
    with conn.cursor() as cur:
        cur.execute(sql, args or None)
        row = cur.fetchone()
        assert row is not None
        return row[0]


def test_queries_through_the_proxy_log_in_to_every_server_with_ed25519(
    balancer: BalancerThread, mariadb_cluster: MariaDbCluster, ed25519_user: str
) -> None:
    primary = mariadb_cluster.primary
    replicas = {node.port for node in mariadb_cluster.nodes if node != primary}
    with connect(balancer) as conn:
        assert one(conn, "SELECT CURRENT_USER()") == f"{ed25519_user}@127.0.0.1"
        with conn.cursor() as cur:
            cur.execute("CREATE TABLE IF NOT EXISTS ed_t (id INT PRIMARY KEY, v VARCHAR(10))")
            cur.execute("REPLACE INTO ed_t VALUES (1, 'signed')")
        assert one(conn, "SELECT v FROM ed_t WHERE id = 1 FOR UPDATE") == "signed"
        assert one(conn, "SELECT @@port FOR UPDATE") == primary.port
        mariadb_cluster.wait_replicated()
        # Plain reads go to the replicas: the proxy logged in to them as the ed25519 user too.
        ports = {one(conn, "SELECT @@port") for _ in range(10)}
        assert ports <= replicas
        assert ports
        assert one(conn, "SELECT v FROM ed_t WHERE id = %s", 1) == "signed"


def test_a_wrong_server_password_reaches_the_client_with_server_and_plugin(
    balancer: BalancerThread, mariadb_cluster: MariaDbCluster
) -> None:
    names = "|".join(node.name for node in mariadb_cluster.nodes)
    with (
        pytest.raises(pymysql.err.MySQLError) as refused,
        connect(balancer, user=WRONG_USER) as conn,
    ):
        one(conn, "SELECT @@port FOR UPDATE")
    assert re.search(
        rf"server ({names}) refused the login as '{WRONG_USER}' with client_ed25519: "
        "Access denied",
        str(refused.value),
    ), refused.value
