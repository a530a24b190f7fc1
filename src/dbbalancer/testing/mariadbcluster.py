"""A real local MariaDB primary with GTID replicas, for tests, the demo and the benchmarks.

The cluster follows MariaDB's documented GTID replication setup ("Global Transaction ID" and
"CHANGE MASTER TO" in the MariaDB Server documentation): every server has its own
``--server-id``, writes a binary log (``--log-bin``, ``--log-slave-updates``) and runs with
``--gtid-strict-mode``; each replica runs ``CHANGE MASTER TO ... MASTER_USE_GTID=slave_pos`` and
``read_only=1``.

Start-up is kept short: ``mariadb-install-db`` runs once into a template data directory, which
is copied for every node; all servers then start side by side. Accounts and the application
database are created on every node with ``sql_log_bin=0``, so the GTID state starts empty
everywhere and a delayed replica has nothing to catch up on at start.

Every node lives in a private directory under one base directory (data directory, error log,
Unix socket, pid file). How a node's server is installed, launched, stopped and queried (never
reading ``/etc/mysql/my.cnf``, never on ports 3306 or 5432, as an unprivileged account when we
are root) is in :mod:`dbbalancer.testing.mariadbserver`.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from dbbalancer.testing.mariadbserver import (
    _START_TIMEOUT,
    _STOP_TIMEOUT,
    MariaDbBinaries,
    MariaDbClusterError,
    MariaDbNode,
    MariaDbServers,
    _pick_ports,
    _sql_ident,
    _sql_literal,
    find_mariadb_binaries,
)
from dbbalancer.testing.mariadbserver import BINDIR_ENV as BINDIR_ENV
from dbbalancer.testing.mariadbserver import RESERVED_PORTS as RESERVED_PORTS
from dbbalancer.testing.mariadbserver import mariadb_account as mariadb_account
from dbbalancer.testing.ports import LOOPBACK
from dbbalancer.testing.servers import KEEP_ENV as KEEP_ENV

__all__ = [
    "MariaDbBinaries",
    "MariaDbCluster",
    "MariaDbClusterError",
    "MariaDbNode",
    "find_mariadb_binaries",
    "parse_gtid_pos",
]

_REPL_USER = "dbb_repl"
_REPL_PASSWORD = "repl"


def parse_gtid_pos(text: str | None) -> dict[int, int]:
    """Parse a MariaDB GTID position (``domain-server-seq`` list) into ``{domain: seq}``.

    ``@@gtid_binlog_pos`` and ``@@gtid_slave_pos`` hold at most one GTID per replication domain;
    the server id is dropped, since in strict mode one domain is one ordered stream whatever
    server wrote each event.
    """
    pos: dict[int, int] = {}
    for part in (text or "").replace("\n", "").split(","):
        part = part.strip()
        if not part:
            continue
        match = re.fullmatch(r"(\d+)-(\d+)-(\d+)", part)
        if match is None:
            raise ValueError(f"not a GTID: {part!r}")
        domain, seq = int(match[1]), int(match[3])
        pos[domain] = max(seq, pos.get(domain, 0))
    return pos


def gtid_pos_covers(have: Mapping[int, int], want: Mapping[int, int]) -> bool:
    """Whether position ``have`` includes every transaction of ``want`` (domain by domain)."""
    return all(have.get(domain, 0) >= seq for domain, seq in want.items())


class MariaDbCluster(MariaDbServers):
    """A MariaDB primary plus ``replicas`` GTID replicas on loopback, from local binaries.

    Nodes are named ``primary``, ``replica1``, ``replica2``, ...; server ids are 1, 2, 3, ...;
    ``delay`` maps a 0-based replica index to its ``MASTER_DELAY`` in seconds. Accounts on every
    node: ``user``/``password`` (default ``app``/``app``) owning the database ``database``, with
    ``SLAVE MONITOR`` and ``BINLOG MONITOR`` so that it may probe replication state; a superuser
    ``superuser``/``superuser_password`` over TCP; ``root@localhost`` without password on the
    Unix socket only.

    Use as a context manager, or call :meth:`start` and :meth:`stop`. The servers are children
    of this process; an ``atexit`` hook stops a cluster the program forgot, and :meth:`stop` only
    ever signals the PIDs of the servers this object started, never processes found by name.
    """

    def __init__(
        self,
        replicas: int = 2,
        *,
        base_dir: Path | None = None,
        user: str = "app",
        password: str = "app",
        database: str = "app",
        superuser: str = "dbb_admin",
        superuser_password: str = "admin",
        delay: Mapping[int, int] | None = None,
        max_connections: int = 300,
        extra_args: Sequence[str] = (),
        keep: bool = False,
    ) -> None:
        if replicas < 0:
            raise ValueError(f"replicas must be >= 0, got {replicas}")
        delays = dict(delay or {})
        for index, seconds in delays.items():
            if not 0 <= index < replicas:
                raise ValueError(f"delay index {index} is not in 0..{replicas - 1}")
            if seconds < 0:
                raise ValueError(f"delay for replica {index} must be >= 0, got {seconds}")
        if len({user, superuser, "root", _REPL_USER}) != 4:
            raise ValueError(f"user and superuser must differ from each other, root, {_REPL_USER}")
        super().__init__(
            replicas,
            base_dir=base_dir,
            user=user,
            password=password,
            database=database,
            superuser=superuser,
            superuser_password=superuser_password,
            keep=keep,
        )
        self._delays = {f"replica{index + 1}": int(s) for index, s in delays.items()}
        self._init_servers(max_connections, extra_args)
        # MASTER_USE_GTID per replica: slave_pos, or current_pos for a rejoined old primary,
        # whose own writes are in its binlog but not in its gtid_slave_pos.
        self._gtid_modes: dict[str, str] = {}

    # ----------------------------------------------------------------- bookkeeping

    def delay(self, node: MariaDbNode) -> int:
        """``node``'s ``MASTER_DELAY`` in seconds (0 for none)."""
        return self._delays.get(node.name, 0)

    # ----------------------------------------------------------------- connection parameters

    def connect_kwargs(
        self,
        node: MariaDbNode,
        *,
        user: str | None = None,
        password: str | None = None,
        database: str | None = None,
    ) -> dict[str, Any]:
        """Keyword arguments for ``pymysql.connect`` (TCP, the login user by default)."""
        return {
            "host": node.host,
            "port": node.port,
            "user": self.user if user is None else user,
            "password": self.password if password is None else password,
            "database": self.database if database is None else database,
        }

    # ----------------------------------------------------------------- lifecycle

    def start(self) -> MariaDbCluster:
        """Create and start the primary and every replica; return once all replicate.

        Returns when every replica's IO and SQL threads run and the login user can connect
        over TCP to every node.
        """
        return super().start()

    def _start_cluster(self) -> None:
        deadline = time.monotonic() + _START_TIMEOUT
        template = self.base_dir / "template"
        self._install_db(template)
        ports = _pick_ports(self._replica_count + 1)
        names = ["primary", *(f"replica{i + 1}" for i in range(self._replica_count))]
        for server_id, (name, port) in enumerate(zip(names, ports, strict=True), start=1):
            node = self._make_node(name, port, server_id)
            self._copy_tree(template, node.data_dir)
        shutil.rmtree(template, ignore_errors=True)
        self._primary_name = "primary"
        self._replica_names = names[1:]

        # Launch every server first, then wait: they start side by side.
        for node in self.nodes:
            self._launch(node)
        for name in names:
            node = self._wait_up_with_port_retry(self._nodes[name], deadline)
            self._bootstrap_accounts(node)
        for replica in self.replicas:
            self._follow(replica, self.primary)
        self.wait_connected(timeout=max(1.0, deadline - time.monotonic()))
        for node in self.nodes:
            self._wait_login(node, deadline)

    def stop(self) -> None:
        """Stop every running node and remove the base directory; safe to call twice.

        Each server gets SIGTERM (a clean shutdown), then SIGKILL after ``30 s``. The base
        directory is kept when ``keep`` is set or ``$DBBALANCER_KEEP_CLUSTER=1``.
        """
        errors: list[str] = []
        running = [node for node in self.nodes if self.is_running(node)]
        for node in running:
            self._signal(node, signal.SIGTERM)
        deadline = time.monotonic() + _STOP_TIMEOUT
        for node in running:
            self._reap(node, max(0.1, deadline - time.monotonic()), errors)
        self._finish_stop(running, errors)

    def stop_node(self, node: MariaDbNode, *, timeout: float = _STOP_TIMEOUT) -> None:
        """Shut ``node`` down cleanly (SIGTERM), with SIGKILL if it takes over ``timeout``."""
        if not self.is_running(node):
            return
        errors: list[str] = []
        self._signal(node, signal.SIGTERM)
        self._reap(node, timeout, errors)
        if self.is_running(node):
            raise MariaDbClusterError(f"could not stop {node.name}: {'; '.join(errors)}")

    def kill(self, node: MariaDbNode) -> None:
        """SIGKILL ``node``'s server by its PID (a crash: InnoDB recovers on the next start)."""
        if not self.is_running(node):
            return
        errors: list[str] = []
        self._signal(node, signal.SIGKILL)
        self._reap(node, 10.0, errors)
        if self.is_running(node):
            raise MariaDbClusterError(f"could not kill {node.name}: {'; '.join(errors)}")

    def start_node(
        self, node: MariaDbNode, *, timeout: float = _START_TIMEOUT, read_only: bool = False
    ) -> None:
        """Start a stopped or killed node again.

        A replica starts with ``read_only=1`` and follows the current primary again from its
        ``gtid_slave_pos`` (``CHANGE MASTER TO``, so a replica stopped across a promotion
        follows the new primary); it returns once the replica's IO and SQL threads run (when
        the primary is running). A node outside the topology (an old primary that was not
        rejoined) starts writable, as a second primary, unless ``read_only`` is set: then it
        starts with ``--read-only=1`` and replicates from nobody (a demoted old primary that an
        operator started again); use :meth:`rejoin` to make it a replica.
        """
        if self.is_running(node):
            return
        deadline = time.monotonic() + timeout
        self._launch(node, read_only=read_only)
        node = self._wait_up_with_port_retry(node, deadline, read_only=read_only)
        if node.name in self._replica_names:
            self._follow(node, self.primary)
            if self.is_running(self.primary):
                self.wait_connected(timeout=max(1.0, deadline - time.monotonic()), nodes=[node])

    def promote(self, node: MariaDbNode, *, catch_up: bool = False) -> float:
        """Make replica ``node`` the primary: ``STOP SLAVE; RESET SLAVE ALL; read_only=0``.

        Returns the monotonic time at which that statement returned (``node`` was writable
        then), before the other replicas are pointed at it: the moment a failover is measured
        from.

        Events the replica received but had not applied yet (e.g. held back by ``MASTER_DELAY``)
        are discarded with its relay log, as in a real failover; call :meth:`wait_replicated`
        first for a loss-free switch-over. The old primary leaves :attr:`primary` (rejoin it
        with :meth:`rejoin`, or leave it stopped). Every other running replica is pointed at
        the new primary (``CHANGE MASTER TO ... MASTER_USE_GTID=slave_pos``); it follows only if
        it has nothing the new primary lacks (``gtid_strict_mode`` stops it otherwise), and its
        ``MASTER_DELAY`` is kept. A stopped replica follows the new primary when started. The
        old primary is not stopped: kill or stop it first, or two nodes accept writes.

        ``catch_up=True`` does what a failover tool does once the old primary is dead (MHA,
        MaxScale's failover): every running replica first applies what it had received, and
        ``node`` then takes from the most advanced of them what it lacks, so that the others
        can follow it (a killed primary may have sent its last events to one replica only).
        """
        if node.name not in self._replica_names:
            raise MariaDbClusterError(f"{node.name} is not a replica")
        if not self.is_running(node):
            raise MariaDbClusterError(f"{node.name} is not running")
        if catch_up:
            _catch_up(self, node, [r for r in self.replicas if r != node and self.is_running(r)])
        self.sql(node, "STOP SLAVE; RESET SLAVE ALL; SET GLOBAL read_only = 0")
        writable_at = time.monotonic()
        self._replica_names.remove(node.name)
        self._primary_name = node.name
        for replica in self.replicas:
            if self.is_running(replica):
                self._follow(replica, node)
        return writable_at

    def rejoin(self, node: MariaDbNode) -> None:
        """Make a former primary (or any node outside the topology) a replica of the primary.

        Uses ``MASTER_USE_GTID=current_pos``, which counts the node's own binlogged writes, so
        an old primary resumes after its last transaction; that works only if the new primary
        has all of them (no lost writes). Starts the node when it is stopped.
        """
        if node.name == self._primary_name or node.name in self._replica_names:
            raise MariaDbClusterError(f"{node.name} is already part of the topology")
        self._replica_names.append(node.name)
        self._gtid_modes[node.name] = "current_pos"
        if not self.is_running(node):
            self._launch(node)
            node = self._wait_up_with_port_retry(node, time.monotonic() + _START_TIMEOUT)
        self._follow(node, self.primary)
        self.wait_connected(nodes=[node])

    def set_delay(self, node: MariaDbNode, seconds: int) -> None:
        """Change replica ``node``'s ``MASTER_DELAY`` (0 removes it); the node must run."""
        if node.name not in self._replica_names:
            raise MariaDbClusterError(f"{node.name} is not a replica")
        if seconds < 0:
            raise ValueError(f"delay must be >= 0, got {seconds}")
        self._delays[node.name] = int(seconds)
        self.sql(node, f"STOP SLAVE; CHANGE MASTER TO MASTER_DELAY = {int(seconds)}; START SLAVE")

    # ----------------------------------------------------------------- queries and waiting

    def slave_status(self, node: MariaDbNode) -> dict[str, str | None]:
        """``SHOW SLAVE STATUS`` of ``node`` as a dict ({} when it replicates from nobody)."""
        rows = self.sql_dicts(node, "SHOW SLAVE STATUS")
        return rows[0] if rows else {}

    def gtid_binlog_pos(self, node: MariaDbNode) -> dict[int, int]:
        """``@@gtid_binlog_pos`` of ``node`` as ``{domain: seq}``."""
        return parse_gtid_pos(self.sql(node, "SELECT @@gtid_binlog_pos")[0][0])

    def gtid_slave_pos(self, node: MariaDbNode) -> dict[int, int]:
        """``@@gtid_slave_pos`` of ``node`` as ``{domain: seq}``."""
        return parse_gtid_pos(self.sql(node, "SELECT @@gtid_slave_pos")[0][0])

    def wait_connected(
        self, timeout: float = 30.0, nodes: Iterable[MariaDbNode] | None = None
    ) -> None:
        """Wait until every running replica (or each of ``nodes``) has its IO and SQL threads
        running (``Slave_IO_Running = Yes``, ``Slave_SQL_Running = Yes``); raise with log tails
        and the replication errors on timeout."""

        def not_replicating() -> dict[str, str]:
            problems: dict[str, str] = {}
            for replica in self._running(nodes):
                try:
                    status = self.slave_status(replica)
                except MariaDbClusterError as exc:
                    problems[replica.name] = str(exc)
                    continue
                io, sql = status.get("Slave_IO_Running"), status.get("Slave_SQL_Running")
                if io != "Yes" or sql != "Yes":
                    problems[replica.name] = (
                        f"IO={io} SQL={sql} io_error={status.get('Last_IO_Error')!r} "
                        f"sql_error={status.get('Last_SQL_Error')!r}"
                    )
            return problems

        self._wait_replicas(
            not_replicating,
            timeout,
            lambda problems: f"replicas not replicating after {timeout:.0f}s: {problems}",
        )

    def wait_replicated(
        self, timeout: float = 30.0, nodes: Iterable[MariaDbNode] | None = None
    ) -> None:
        """Wait until every running replica (or each of ``nodes``) has applied everything the
        primary has binlogged: its ``@@gtid_slave_pos`` covers the primary's
        ``@@gtid_binlog_pos`` in every domain. A delayed replica takes its ``MASTER_DELAY``."""
        target = self.gtid_binlog_pos(self.primary)

        def behind() -> dict[str, str]:
            late: dict[str, str] = {}
            for replica in self._running(nodes):
                try:
                    have = self.gtid_slave_pos(replica)
                except MariaDbClusterError as exc:
                    late[replica.name] = str(exc)
                    continue
                if not gtid_pos_covers(have, target):
                    late[replica.name] = f"gtid_slave_pos {have}"
            return late

        def failure(late: dict[str, str]) -> str:
            details = {}
            for name in late:
                with contextlib.suppress(MariaDbClusterError):
                    status = self.slave_status(self._nodes[name])
                    details[name] = (status.get("Last_IO_Error"), status.get("Last_SQL_Error"))
            return (
                f"replicas behind the primary's gtid_binlog_pos {target} after "
                f"{timeout:.0f}s: {late}; errors: {details}"
            )

        self._wait_replicas(behind, timeout, failure)

    def _running(self, nodes: Iterable[MariaDbNode] | None) -> list[MariaDbNode]:
        """The running ones of ``nodes`` (by default the replicas)."""
        wanted = self.replicas if nodes is None else list(nodes)
        return [node for node in wanted if self.is_running(node)]

    # ----------------------------------------------------------------- internals: setup

    def _make_node(self, name: str, port: int, server_id: int) -> MariaDbNode:
        node_dir = self._make_node_dir(name)
        node = MariaDbNode(name, LOOPBACK, port, node_dir, server_id)
        if len(os.fsencode(str(node.socket))) >= 104:
            raise MariaDbClusterError(
                f"socket path {node.socket} is too long; use a short base_dir"
            )
        self._nodes[name] = node
        return node

    def _bootstrap_accounts(self, node: MariaDbNode) -> None:
        # Not binlogged: every node gets the same accounts locally and the GTID state stays
        # empty. install-db made root@<hostname>, root@127.0.0.1 and root@::1 without a
        # password; only root@localhost (the socket) stays.
        rows = self.sql(
            node,
            "SELECT Host FROM mysql.user WHERE User = 'root' AND Host <> 'localhost'",
            database="mysql",
        )
        drops = [f"DROP USER 'root'@{_sql_literal(str(row[0]))}" for row in rows]
        user, admin, db = _sql_literal(self.user), _sql_literal(self.superuser), self.database
        statements = [
            "SET SESSION sql_log_bin = 0",
            *drops,
            f"CREATE USER {admin}@'{LOOPBACK}' IDENTIFIED BY "
            f"{_sql_literal(self.superuser_password)}",
            f"GRANT ALL PRIVILEGES ON *.* TO {admin}@'{LOOPBACK}' WITH GRANT OPTION",
            f"CREATE USER {user}@'{LOOPBACK}' IDENTIFIED BY {_sql_literal(self.password)}",
            f"CREATE DATABASE IF NOT EXISTS {_sql_ident(db)}",
            f"GRANT ALL PRIVILEGES ON {_sql_ident(db)}.* TO {user}@'{LOOPBACK}'",
            f"GRANT SLAVE MONITOR, BINLOG MONITOR ON *.* TO {user}@'{LOOPBACK}'",
            f"CREATE USER '{_REPL_USER}'@'{LOOPBACK}' IDENTIFIED BY '{_REPL_PASSWORD}'",
            f"GRANT REPLICATION SLAVE ON *.* TO '{_REPL_USER}'@'{LOOPBACK}'",
        ]
        self.sql(node, "; ".join(statements), database="mysql")

    def _follow(self, replica: MariaDbNode, primary: MariaDbNode) -> None:
        gtid_mode = self._gtid_modes.get(replica.name, "slave_pos")
        change = (
            f"CHANGE MASTER TO MASTER_HOST = '{primary.host}', MASTER_PORT = {primary.port}, "
            f"MASTER_USER = '{_REPL_USER}', MASTER_PASSWORD = '{_REPL_PASSWORD}', "
            f"MASTER_USE_GTID = {gtid_mode}, MASTER_CONNECT_RETRY = 1, "
            f"MASTER_DELAY = {self.delay(replica)}"
        )
        self.sql(
            replica,
            f"STOP SLAVE; SET GLOBAL read_only = 1; {change}; START SLAVE",
            database="mysql",
        )

    # ----------------------------------------------------------------- internals: processes


def _applied(cluster: MariaDbCluster, replica: MariaDbNode, deadline: float) -> dict[int, int]:
    """Wait until ``replica`` has applied every event it received (``Gtid_IO_Pos``); return its
    ``@@gtid_slave_pos``."""
    received = parse_gtid_pos(cluster.slave_status(replica).get("Gtid_IO_Pos"))
    while True:
        have = cluster.gtid_slave_pos(replica)
        if gtid_pos_covers(have, received):
            return have
        if time.monotonic() >= deadline:
            raise MariaDbClusterError(
                f"{replica.name} did not apply its relay log: at {have}, received {received}"
            )
        time.sleep(0.01)


def _catch_up(cluster: MariaDbCluster, node: MariaDbNode, others: list[MariaDbNode]) -> None:
    """Bring ``node`` up to the most advanced of ``others`` (see ``promote(catch_up=True)``)."""
    deadline = time.monotonic() + 30.0
    have = _applied(cluster, node, deadline)
    for other in others:
        ahead = _applied(cluster, other, deadline)
        if gtid_pos_covers(have, ahead):
            continue
        cluster._follow(node, other)
        while not gtid_pos_covers(have := cluster.gtid_slave_pos(node), ahead):
            if time.monotonic() >= deadline:
                raise MariaDbClusterError(
                    f"{node.name} did not catch up from {other.name}: at {have}, wants {ahead}"
                )
            time.sleep(0.01)
