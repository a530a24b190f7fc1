"""`dbbalancer demo`: a local primary and two replicas, the balancer in front, and a workload.

Starts real PostgreSQL servers from the installed binaries (see dbbalancer.testing.pgcluster),
writes a config file next to them, runs the balancer in this process, prints the connection string
to paste into psql, runs a short workload through the balancer and prints which server served each
kind of statement. Ctrl-C stops everything and leaves nothing running.
"""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

from dbbalancer.config import load_config
from dbbalancer.testing.balancer import BalancerThread
from dbbalancer.testing.pgcluster import PgCluster

if TYPE_CHECKING:
    import psycopg

CONFIG_TEMPLATE = """\
# Written by `dbbalancer demo`. Run it yourself with: dbbalancer run -c {path}
[listen]
postgres = "127.0.0.1:{port}"

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
# Read-your-writes keeps a read that follows this session's write on the primary until a replica
# has replayed the write; after this pause the replicas have, and reads spread over them.
CATCH_UP = 1.5


def write_config(cluster: PgCluster, port: int, path: Path) -> Path:
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
        )
    )
    return path


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


def run_demo(*, port: int = 6432, once: bool = False) -> int:
    """Run the demo; returns the process exit code."""
    print("dbbalancer demo: starting a PostgreSQL primary and 2 streaming replicas ...", flush=True)
    with PgCluster(replicas=2) as cluster:
        config_path = write_config(cluster, port, cluster.base_dir / "dbbalancer.toml")
        config = load_config(config_path)
        balancer = BalancerThread(config, config_path=config_path)
        try:
            balancer.start()
        except RuntimeError as exc:
            print(f"dbbalancer demo: {exc}", flush=True)
            return 1
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
        try:
            served = run_workload(dsn, port_names)
            print(f"{'statement':<22} served by")
            for kind, name in served:
                print(f"{kind:<22} {name}")
            print(
                "\nWrites, locking reads and sequence calls go to the primary; plain reads are "
                "spread over the replicas,\nexcept right after this session's own write "
                "(read_your_writes), until a replica has replayed it."
            )
            if not once:
                print("\nThe balancer keeps running; press Ctrl-C to stop everything.", flush=True)
                stop = threading.Event()
                signal.signal(signal.SIGINT, lambda *_: stop.set())
                signal.signal(signal.SIGTERM, lambda *_: stop.set())
                while not stop.wait(0.5):
                    pass
        finally:
            balancer.stop()
        print("dbbalancer demo: stopped the balancer and the servers.", flush=True)
    return 0
