"""What a MySQL unit of work costs the server besides its own statement, under transaction
pooling: the commands dbbalancer adds (COM_RESET_CONNECTION, COM_SET_OPTION, replays,
re-prepares) for common clients, counted with the server's own status counters, and the
proxy's CPU per unit.

    PYTHONPATH=src python -m bench.mysql_unit_overhead [--units 500]

Starts a private MariaDB server (no replicas) and dbbalancer as its own process
(``python -m dbbalancer run``, transaction pooling, pool_size 1), then for each client runs
``--units`` autocommit ``SELECT 1`` units on one connection and prints the difference of
``SHOW GLOBAL STATUS`` counters (read on a direct connection, whose own reads are subtracted)
and the proxy's CPU time per unit (procfs). Clients: PyMySQL (defaults: no
CLIENT_MULTI_STATEMENTS), mysql-connector-python (pure, text cursor; it sends SET NAMES after
logging in) and mysql-connector-python with a prepared cursor (one statement, executed
``--units`` times).
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import mysql.connector
import pymysql

from bench.measure import cpu_seconds
from bench.targets import spawn
from dbbalancer.testing.mariadbcluster import MariaDbCluster
from dbbalancer.testing.ports import LOOPBACK, free_port

# Com_set_option counts SET statements as well as COM_SET_OPTION.
COUNTERS = (
    "Com_select",
    "Com_set_option",
    "Com_change_db",
    "Com_stmt_prepare",
    "Com_stmt_execute",
    "Com_stmt_close",
    "Com_stmt_reset",
    "Com_reset_connection",  # MySQL; MariaDB counts it in Com_admin_commands
    "Com_admin_commands",  # COM_RESET_CONNECTION, COM_PING ...
    "Questions",
)
START_TIMEOUT = 30.0


def status(conn: Any) -> dict[str, int]:
    """The global counters of COUNTERS (missing ones are left out)."""
    with conn.cursor() as cur:
        cur.execute("SHOW GLOBAL STATUS")
        rows = cur.fetchall()
    return {name: int(value) for name, value in rows if name in COUNTERS}


def config_text(port: int, cluster: MariaDbCluster) -> str:
    node = cluster.primary
    return (
        '[general]\nlog_level = "warning"\n\n'
        f'[listen]\nmysql = "{LOOPBACK}:{port}"\n\n'
        f'[[users]]\nname = "{cluster.user}"\npassword = "{cluster.password}"\n'
        'auth = "mysql_native_password"\n\n'
        f'[[clusters]]\nname = "app"\nprotocol = "mysql"\ndatabase = "{cluster.database}"\n'
        'pool_mode = "transaction"\npool_size = 1\n\n'
        f'[[clusters.servers]]\nname = "primary"\naddress = "{node.address()}"\n'
        'role = "primary"\n'
    )


@contextlib.contextmanager
def proxy(cluster: MariaDbCluster, workdir: Path) -> Iterator[tuple[int, int]]:
    """dbbalancer as a process: yields (port, pid)."""
    port = free_port()
    config = workdir / "dbbalancer.toml"
    config.write_text(config_text(port, cluster), encoding="utf-8")
    process = spawn(
        [sys.executable, "-m", "dbbalancer", "run", "-c", str(config)], workdir / "proxy.log"
    )
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            try:
                pymysql.connect(
                    host=LOOPBACK, port=port, user="app", password="app", database="app"
                ).close()
                break
            except pymysql.err.OperationalError:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise RuntimeError("dbbalancer did not start") from None
                time.sleep(0.1)
        yield port, process.pid
    finally:
        process.terminate()
        try:
            process.wait(10)
        except Exception:
            process.kill()


def pymysql_loop(port: int, units: int) -> None:
    conn = pymysql.connect(
        host=LOOPBACK, port=port, user="app", password="app", database="app", autocommit=True
    )
    with conn, conn.cursor() as cur:
        for _ in range(units):
            cur.execute("SELECT 1")
            cur.fetchall()


def _connector(port: int) -> Any:
    return mysql.connector.connect(
        host=LOOPBACK,
        port=port,
        user="app",
        password="app",
        database="app",
        autocommit=True,
        ssl_disabled=True,
        use_pure=True,
    )


def connector_loop(port: int, units: int) -> None:
    cnx = _connector(port)
    try:
        cur = cnx.cursor()
        for _ in range(units):
            cur.execute("SELECT 1")
            cur.fetchall()
        cur.close()
    finally:
        cnx.close()


def connector_prepared_loop(port: int, units: int) -> None:
    cnx = _connector(port)
    try:
        cur = cnx.cursor(prepared=True)
        for _ in range(units):
            cur.execute("SELECT ?", (1,))
            cur.fetchall()
        cur.close()
    finally:
        cnx.close()


LOOPS: dict[str, Callable[[int, int], None]] = {
    "pymysql": pymysql_loop,
    "connector": connector_loop,
    "connector-prepared": connector_prepared_loop,
}


def measure(cluster: MariaDbCluster, port: int, pid: int, units: int) -> None:
    direct = pymysql.connect(**cluster.connect_kwargs(cluster.primary), autocommit=True)
    with direct:
        first = status(direct)
        second = status(direct)
        base = {k: second[k] - first[k] for k in first}  # what a read of the counters adds
        shown = [c for c in COUNTERS if c in first]
        header = "".join(f"{c.removeprefix('Com_'):>15}" for c in shown)
        print(f"{'client':<20}{header}{'proxy us/unit':>15}")
        for name, loop in LOOPS.items():
            loop(port, 5)  # warm: the pools exist, the connection is open
            before = status(direct)
            cpu_before = cpu_seconds([pid])
            loop(port, units)
            cpu = cpu_seconds([pid]) - cpu_before
            after = status(direct)
            diff = {k: after[k] - before[k] - base[k] for k in before}
            print(
                f"{name:<20}"
                + "".join(f"{diff[c]:>15}" for c in shown)
                + f"{cpu * 1e6 / units:>15.0f}"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--units", type=int, default=500)
    args = parser.parse_args()
    with (
        tempfile.TemporaryDirectory(prefix="dbb-unit-") as tmp,
        MariaDbCluster(replicas=0) as cluster,
        proxy(cluster, Path(tmp)) as (port, pid),
    ):
        measure(cluster, port, pid, args.units)


if __name__ == "__main__":
    main()
