"""The MySQL targets of the macro benchmark: direct, HAProxy and dbbalancer before MariaDB.

Each proxy runs as its own process on a free loopback port (CPU and memory from procfs), is
stopped by its PID, and must answer a real login with ``SELECT 1`` (PyMySQL) before the
benchmark uses it.

- HAProxy runs the classic MySQL setup in ``mode tcp``: one listener for writes that forwards
  to the primary, and one listener that balances over the replicas (``balance roundrobin``).
  HAProxy never reads the MySQL protocol, so it cannot split by statement: the application
  picks the port, and a read on the replica port may not see its own write yet. The
  ``mysql-haproxy`` target uses the primary listener (the path comparable to direct and to
  dbbalancer without splitting); ``mysql-haproxy-replicas`` the balanced one.
- dbbalancer runs ``python -m dbbalancer run -c FILE`` with a ``[listen] mysql`` address and a
  ``protocol = "mysql"`` cluster. Until issue #12 lands, its configuration validation refuses
  transaction pooling and read/write splitting for MySQL; such a target raises
  :class:`TargetUnavailable` ("not available yet (issue #12)") instead of failing, and runs as
  soon as validation accepts it.
"""

from __future__ import annotations

import resource
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from bench.mysql_report import NOT_YET
from bench.targets import (
    RunningTarget,
    TargetError,
    TargetSpec,
    find_program,
    spawn,
    wait_listening,
)
from dbbalancer.config.loader import ConfigError, parse_config
from dbbalancer.testing.mariadbcluster import MariaDbCluster
from dbbalancer.testing.ports import LOOPBACK, free_port

__all__ = [
    "MYSQL_DEFAULT_TARGETS",
    "MYSQL_TARGETS",
    "NOT_YET",
    "TargetUnavailable",
    "check_config",
    "dbbalancer_mysql_config",
    "mysql_config_text",
    "start_mysql_target",
]

MYSQL_TRANSACTION_POOL_SIZE = 20


class TargetUnavailable(TargetError):
    """dbbalancer refuses the target's configuration because the feature is not built yet."""


@dataclass(frozen=True)
class MysqlTarget:
    """A MySQL target: ``spec`` as for PostgreSQL, ``replicas`` for HAProxy's read listener."""

    spec: TargetSpec
    replicas: bool = False


MYSQL_TARGETS: dict[str, MysqlTarget] = {
    target.spec.name: target
    for target in (
        MysqlTarget(TargetSpec("mysql-direct", "direct")),
        MysqlTarget(TargetSpec("mysql-haproxy", "haproxy")),
        MysqlTarget(TargetSpec("mysql-haproxy-replicas", "haproxy"), replicas=True),
        MysqlTarget(TargetSpec("mysql-dbbalancer-session", "dbbalancer", "session")),
        MysqlTarget(
            TargetSpec(
                "mysql-dbbalancer-transaction-rw",
                "dbbalancer",
                "transaction",
                read_write_split=True,
            )
        ),
    )
}
# Reads from the replicas are not comparable with the primary-only paths: asked for by name.
MYSQL_DEFAULT_TARGETS = [name for name, target in MYSQL_TARGETS.items() if not target.replicas]


def start_mysql_target(
    target: MysqlTarget, cluster: MariaDbCluster, workdir: Path, *, session_pool_size: int
) -> RunningTarget:
    """Start ``target`` before ``cluster`` and check that it serves a login + ``SELECT 1``.

    Raises :class:`TargetUnavailable` when dbbalancer's validation refuses the configuration
    for a feature issue #12 has not delivered yet, :class:`TargetError` on any other failure.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    spec = target.spec
    if spec.kind == "direct":
        running = RunningTarget(spec, cluster.primary.host, cluster.primary.port)
    elif spec.kind == "haproxy":
        running = _start_haproxy(target, cluster, workdir)
    elif spec.kind == "dbbalancer":
        running = _start_dbbalancer(spec, cluster, workdir, session_pool_size)
    else:
        raise TargetError(f"unknown target kind {spec.kind!r}")
    try:
        deadline = wait_listening(running)
        _probe(running, cluster, deadline)
    except BaseException:
        running.stop()
        raise
    return running


def _start_haproxy(target: MysqlTarget, cluster: MariaDbCluster, workdir: Path) -> RunningTarget:
    program = find_program("haproxy")
    if program is None:
        raise TargetError("haproxy not installed (`make bench` installs it)")
    directory = workdir / target.spec.name
    directory.mkdir(exist_ok=True)
    write_port, read_port = free_port(), free_port()
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    maxconn = max(100, min(20000, (soft - 200) // 2))
    replicas = [
        f"    server {node.name} {node.host}:{node.port} maxconn {maxconn}"
        for node in cluster.replicas
    ]
    cfg = directory / "haproxy.cfg"
    cfg.write_text(
        "\n".join(
            [
                "global",
                f"    maxconn {maxconn}",
                "defaults",
                "    mode tcp",
                "    timeout connect 5s",
                "    timeout client 1h",
                "    timeout server 1h",
                "frontend mysql_write",
                f"    bind {LOOPBACK}:{write_port}",
                "    default_backend primary",
                "frontend mysql_read",
                f"    bind {LOOPBACK}:{read_port}",
                "    default_backend replicas",
                "backend primary",
                f"    server primary {cluster.primary.host}:{cluster.primary.port} "
                f"maxconn {maxconn}",
                "backend replicas",
                "    balance roundrobin",
                *replicas,
                "",
            ]
        ),
        encoding="utf-8",
    )
    log_file = directory / "haproxy.log"
    process = spawn([program, "-db", "-f", str(cfg)], log_file)
    port = read_port if target.replicas else write_port
    return RunningTarget(target.spec, LOOPBACK, port, process, log_file)


def dbbalancer_mysql_config(
    spec: TargetSpec, cluster: MariaDbCluster, port: int, session_pool_size: int
) -> str:
    """The TOML config of a MySQL dbbalancer target (docs/mysql.md, docs/configuration.md)."""
    servers = [
        (node.name, node.address(), "primary" if node == cluster.primary else "replica")
        for node in cluster.nodes
    ]
    return mysql_config_text(
        spec,
        port=port,
        user=cluster.user,
        password=cluster.password,
        database=cluster.database,
        servers=servers,
        session_pool_size=session_pool_size,
    )


def mysql_config_text(
    spec: TargetSpec,
    *,
    port: int,
    user: str,
    password: str,
    database: str,
    servers: Sequence[tuple[str, str, str]],
    session_pool_size: int,
) -> str:
    """The config text itself; ``servers`` are (name, address, role) triples."""
    session = spec.pool_mode == "session"
    pool_size = session_pool_size if session else MYSQL_TRANSACTION_POOL_SIZE
    tables = "".join(
        f'[[clusters.servers]]\nname = "{name}"\naddress = "{address}"\nrole = "{role}"\n\n'
        for name, address, role in servers
    )
    return (
        "[general]\n"
        'log_level = "warning"\n'
        "max_client_connections = 20000\n\n"
        "[listen]\n"
        f'mysql = "{LOOPBACK}:{port}"\n\n'
        "[[users]]\n"
        f'name = "{user}"\n'
        f'password = "{password}"\n'
        'auth = "mysql_native_password"\n\n'
        "[[clusters]]\n"
        f'name = "{database}"\n'
        'protocol = "mysql"\n'
        f'database = "{database}"\n'
        f'pool_mode = "{spec.pool_mode}"\n'
        f"pool_size = {pool_size}\n"
        f"read_write_split = {'true' if spec.read_write_split else 'false'}\n\n"
        f"{tables}"
    )


def check_config(text: str, source: str) -> None:
    """Apply the validation `dbbalancer run` applies, before starting the process.

    Raises :class:`TargetUnavailable` when every problem is a refusal naming issue #12 (a
    feature not built yet), :class:`TargetError` for any other problem.
    """
    try:
        parse_config(text, source)
    except ConfigError as exc:
        refused = [p for p in exc.problems if "issue #12" in p.message]
        if refused and len(refused) == len(exc.problems):
            why = "; ".join(f"{p.path}: {p.message}" for p in refused)
            raise TargetUnavailable(f"{NOT_YET}: dbbalancer refuses {why}") from None
        raise TargetError(str(exc).splitlines()[0]) from None


def _start_dbbalancer(
    spec: TargetSpec, cluster: MariaDbCluster, workdir: Path, session_pool_size: int
) -> RunningTarget:
    directory = workdir / spec.name
    directory.mkdir(exist_ok=True)
    port = free_port()
    text = dbbalancer_mysql_config(spec, cluster, port, session_pool_size)
    config = directory / "dbbalancer.toml"
    config.write_text(text, encoding="utf-8")
    check_config(text, config.name)
    log_file = directory / "dbbalancer.log"
    command = [sys.executable, "-m", "dbbalancer", "run", "-c", str(config)]
    process = spawn(command, log_file)
    session = spec.pool_mode == "session"
    pool = session_pool_size if session else MYSQL_TRANSACTION_POOL_SIZE
    return RunningTarget(spec, LOOPBACK, port, process, log_file, pool)


def _probe(target: RunningTarget, cluster: MariaDbCluster, deadline: float) -> None:
    import pymysql

    while True:
        try:
            conn = pymysql.connect(
                host=target.host,
                port=target.port,
                user=cluster.user,
                password=cluster.password,
                database=cluster.database,
                connect_timeout=5,
                read_timeout=10,
            )
            try:
                with conn.cursor() as cur:
                    cur.execute("SELECT 1")
                    cur.fetchone()
            finally:
                conn.close()
            return
        except pymysql.MySQLError as exc:
            # A proxy may listen before its pools reach the servers: retry client-side errors
            # (2000-2999) a while; a server's or the proxy's ERR (1000-1999) is final.
            code = exc.args[0] if exc.args and isinstance(exc.args[0], int) else 0
            final = 1000 <= code < 2000
            if final or time.monotonic() >= deadline or not target.alive():
                raise TargetError(f"{type(exc).__name__}: {exc}") from None
            time.sleep(0.2)
