"""`dbbalancer demo`: local primaries and replicas, the balancer in front, and a workload.

Starts real PostgreSQL servers (a primary and two streaming replicas, dbbalancer.testing.pgcluster)
and, when MariaDB is installed, a MariaDB primary and two GTID replicas
(dbbalancer.testing.mariadbcluster); writes one config file serving both protocols, runs the
balancer in this process, prints the connection strings to paste into psql and mysql, runs a short
workload through each and prints which server served each kind of statement. Ctrl-C stops
everything and leaves nothing running.
"""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dbbalancer.config import load_config
from dbbalancer.testing.balancer import BalancerThread
from dbbalancer.testing.mariadbcluster import MariaDbCluster, MariaDbClusterError
from dbbalancer.testing.pgcluster import PgCluster

if TYPE_CHECKING:
    import psycopg

CONFIG_TEMPLATE = """\
# Written by `dbbalancer demo`. Run it yourself with: dbbalancer run -c {path}
[listen]
postgres = "127.0.0.1:{port}"
{mysql_listen}
[[users]]
name = "{user}"
password = "{password}"
auth = "scram-sha-256"

[[clusters]]
name = "{database}"
protocol = "postgres"
database = "{database}"
pool_mode = "transaction"
pool_size = 20
read_write_split = true
read_your_writes = true

{servers}
{mysql}"""

MYSQL_TEMPLATE = """
[[users]]
name = "{user}"
password = "{password}"
auth = "mysql_native_password"

[[clusters]]
name = "{database}"
protocol = "mysql"
database = "{database}"
pool_mode = "transaction"
pool_size = 20
read_write_split = true
read_your_writes = true

{servers}
"""

SERVER_TEMPLATE = """\
[[clusters.servers]]
name = "{name}"
address = "{address}"
role = "{role}"
"""

WRITES: list[tuple[str, str]] = [
    ("create table", "CREATE TABLE IF NOT EXISTS demo_items (id serial PRIMARY KEY, name text)"),
    ("insert", "INSERT INTO demo_items (name) VALUES ('apple'), ('pear')"),
    ("select right after", "SELECT count(*) FROM demo_items"),
]
READS: list[tuple[str, str]] = [
    ("select", "SELECT count(*) FROM demo_items"),
    ("select again", "SELECT name FROM demo_items ORDER BY id LIMIT 1"),
    ("select lower()", "SELECT lower(name) FROM demo_items LIMIT 1"),
    ("select for update", "SELECT id FROM demo_items WHERE id = 1 FOR UPDATE"),
    ("select nextval()", "SELECT nextval('demo_items_id_seq')"),
    ("update", "UPDATE demo_items SET name = upper(name) WHERE id = 1"),
    ("select after update", "SELECT name FROM demo_items WHERE id = 1"),
]
MYSQL_WRITES: list[tuple[str, str]] = [
    (
        "create table",
        "CREATE TABLE IF NOT EXISTS demo_items (id int AUTO_INCREMENT PRIMARY KEY, "
        "name varchar(20))",
    ),
    ("insert", "INSERT INTO demo_items (name) VALUES ('apple'), ('pear')"),
    ("select right after", "SELECT count(*) FROM demo_items"),
]
MYSQL_READS: list[tuple[str, str]] = [
    ("select", "SELECT count(*) FROM demo_items"),
    ("select again", "SELECT name FROM demo_items ORDER BY id LIMIT 1"),
    ("select for update", "SELECT id FROM demo_items WHERE id = 1 FOR UPDATE"),
    ("update", "UPDATE demo_items SET name = upper(name) WHERE id = 1"),
    ("select after update", "SELECT name FROM demo_items WHERE id = 1"),
    ("set autocommit=0", "SET autocommit = 0"),
    ("select (autocommit=0)", "SELECT count(*) FROM demo_items"),
    ("commit", "COMMIT"),
]
# Read-your-writes keeps a read that follows this session's write on the primary until a replica
# has replayed the write; after this pause the replicas have, and reads spread over them.
CATCH_UP = 1.5


def write_config(
    cluster: PgCluster,
    port: int,
    path: Path,
    mysql: MariaDbCluster | None = None,
    mysql_port: int = 0,
) -> Path:
    """Write the demo's config file and return its path."""
    servers = "\n".join(
        SERVER_TEMPLATE.format(
            name=node.name,
            address=node.address(),
            role="primary" if node == cluster.primary else "replica",
        )
        for node in cluster.nodes
    )
    path.write_text(
        CONFIG_TEMPLATE.format(
            path=path,
            port=port,
            user=cluster.user,
            password=cluster.password,
            database=cluster.database,
            servers=servers,
            mysql_listen=f'mysql = "127.0.0.1:{mysql_port}"\n' if mysql is not None else "",
            mysql=write_mysql_config(mysql) if mysql is not None else "",
        )
    )
    return path


def write_mysql_config(cluster: MariaDbCluster) -> str:
    """The MySQL part of the demo's config file."""
    servers = "\n".join(
        SERVER_TEMPLATE.format(
            name=node.name,
            address=node.address(),
            role="primary" if node == cluster.primary else "replica",
        )
        for node in cluster.nodes
    )
    return MYSQL_TEMPLATE.format(
        user=cluster.user,
        password=cluster.password,
        database=cluster.database,
        servers=servers,
    )


def run_mysql_workload(address: tuple[str, int], cluster: MariaDbCluster) -> list[tuple[str, str]]:
    """The MySQL statements through the balancer; (statement, server name) pairs. Each runs
    with `SELECT @@port` in one multi-statement string, so that both share a server."""
    import pymysql  # type: ignore[import-untyped]  # a dev dependency: `make demo` installs it
    from pymysql.constants import CLIENT  # type: ignore[import-untyped]

    names = {node.port: node.name for node in cluster.nodes}
    served: list[tuple[str, str]] = []
    conn = pymysql.connect(
        host=address[0],
        port=address[1],
        user=cluster.user,
        password=cluster.password,
        database=cluster.database,
        client_flag=CLIENT.MULTI_STATEMENTS,
        autocommit=True,
    )
    with contextlib.closing(conn):

        def run(kind: str, sql: str) -> None:
            with conn.cursor() as cur:
                cur.execute(f"{sql}; SELECT @@port")
                rows: Any = ()
                while True:
                    if cur.description is not None:
                        rows = cur.fetchall()
                    if not cur.nextset():
                        break
            port = int(rows[0][0]) if rows else -1
            served.append((kind, names.get(port, f"port {port}")))

        for kind, sql in MYSQL_WRITES:
            run(kind, sql)
        time.sleep(CATCH_UP)
        for kind, sql in MYSQL_READS:
            run(kind, sql)
    return served


def served_by(conn: psycopg.Connection[tuple[object, ...]], sql: str) -> int:
    """Run `sql` and `SELECT inet_server_port()` as one string (so they share a server)."""
    with conn.cursor() as cur:
        cur.execute(f"{sql}; SELECT inet_server_port()")
        rows: list[tuple[object, ...]] = []
        while True:
            if cur.description is not None:
                rows = cur.fetchall()
            if not cur.nextset():
                break
    return int(str(rows[0][0])) if rows else -1


def run_workload(dsn: str, port_names: dict[int, str]) -> list[tuple[str, str]]:
    """Run the demo statements through the balancer; return (statement, server name) pairs."""
    import psycopg  # a dev dependency: `make demo` installs it

    served: list[tuple[str, str]] = []
    with psycopg.connect(dsn, autocommit=True) as conn:
        for kind, sql in WRITES:
            port = served_by(conn, sql)
            served.append((kind, port_names.get(port, f"port {port}")))
        time.sleep(CATCH_UP)
        for kind, sql in READS:
            port = served_by(conn, sql)
            served.append((kind, port_names.get(port, f"port {port}")))
    return served


def run_demo(*, port: int = 6432, mysql_port: int = 6033, once: bool = False) -> int:
    """Run the demo; returns the process exit code."""
    print("dbbalancer demo: starting a PostgreSQL primary and 2 streaming replicas ...", flush=True)
    with contextlib.ExitStack() as stack:
        cluster = stack.enter_context(PgCluster(replicas=2))
        mysql: MariaDbCluster | None = None
        print("dbbalancer demo: starting a MariaDB primary and 2 GTID replicas ...", flush=True)
        try:
            mysql = stack.enter_context(
                MariaDbCluster(replicas=2, user="shop", password="shop", database="shop")
            )
        except MariaDbClusterError as exc:
            print(f"dbbalancer demo: no MySQL part ({exc})", flush=True)
        config_path = write_config(
            cluster, port, cluster.base_dir / "dbbalancer.toml", mysql, mysql_port
        )
        config = load_config(config_path)
        balancer = BalancerThread(config, config_path=config_path)
        try:
            balancer.start()
        except RuntimeError as exc:
            print(f"dbbalancer demo: {exc}", flush=True)
            return 1
        stack.callback(balancer.stop)
        host, bound_port = balancer.pg_address
        dsn = (
            f"host={host} port={bound_port} dbname={cluster.database} "
            f"user={cluster.user} password={cluster.password}"
        )
        for node in cluster.nodes:
            print(f"  {node.name:<9} {node.address()}")
        print(f"  balancer  {host}:{bound_port}   (config: {config_path})")
        print(f'\nConnect with:  psql "{dsn}"\n', flush=True)
        port_names = {node.port: node.name for node in cluster.nodes}
        served = run_workload(dsn, port_names)
        print(f"{'statement':<22} served by")
        for kind, name in served:
            print(f"{kind:<22} {name}")
        print(
            "\nWrites, locking reads and sequence calls go to the primary; plain reads are "
            "spread over the replicas,\nexcept right after this session's own write "
            "(read_your_writes), until a replica has replayed it."
        )
        my_address = balancer.app.mysql_address
        if mysql is not None and my_address is not None:
            my_host, my_port = my_address
            print("\nMySQL (MariaDB):")
            for my_node in mysql.nodes:
                print(f"  {my_node.name:<9} {my_node.address()}")
            print(f"  balancer  {my_host}:{my_port}")
            print(
                f"\nConnect with:  mysql -h {my_host} -P {my_port} -u {mysql.user} "
                f"-p{mysql.password} {mysql.database}\n",
                flush=True,
            )
            print(f"{'statement':<22} served by")
            for kind, name in run_mysql_workload(my_address, mysql):
                print(f"{kind:<22} {name}")
            print(
                "\nThe same rules for MySQL; with autocommit = 0 every statement stays on the "
                "primary until COMMIT."
            )
        if not once:
            print("\nThe balancer keeps running; press Ctrl-C to stop everything.", flush=True)
            stop = threading.Event()
            signal.signal(signal.SIGINT, lambda *_: stop.set())
            signal.signal(signal.SIGTERM, lambda *_: stop.set())
            while not stop.wait(0.5):
                pass
    print("dbbalancer demo: stopped the balancer and the servers.", flush=True)
    return 0
