"""A real local PostgreSQL primary with streaming hot-standby replicas, for tests and the demo.

The cluster is built the way the PostgreSQL documentation describes streaming replication
(server administration, chapter "High Availability, Load Balancing, and Replication"): one
``initdb``, then ``pg_basebackup -R`` per standby with its own physical replication slot, then
each standby starts in hot-standby mode and streams WAL from the primary.

Every node lives in a private directory under one base directory: the data directory, the
server log (written through ``pg_ctl -l``) and the Unix socket, so the machine's own PostgreSQL
service (its sockets, its port, its configuration) is never touched.

How a node's files, programs and postmaster are handled (as an unprivileged account when we
are root; binaries from ``$DBBALANCER_PG_BINDIR``, Debian's layout, ``pg_config`` or ``PATH``)
is in :mod:`dbbalancer.testing.pgserver`.
"""

from __future__ import annotations

import time
from pathlib import Path

from dbbalancer.testing.pgserver import (
    _START_TIMEOUT,
    PgClusterError,
    PgNode,
    PgServers,
    _conninfo,
    _sql_ident,
    _sql_literal,
    find_pg_bindir,
    server_account,
)
from dbbalancer.testing.pgserver import BINDIR_ENV as BINDIR_ENV
from dbbalancer.testing.ports import LOOPBACK, free_ports
from dbbalancer.testing.servers import FALLBACK_SERVER_USER as FALLBACK_SERVER_USER
from dbbalancer.testing.servers import KEEP_ENV as KEEP_ENV
from dbbalancer.testing.servers import ServerAccount

__all__ = [
    "PgCluster",
    "PgClusterError",
    "PgNode",
    "ServerAccount",
    "find_pg_bindir",
    "server_account",
]


class PgCluster(PgServers):
    """A primary plus ``replicas`` streaming hot standbys on loopback, started from local binaries.

    Nodes are named ``primary``, ``replica1``, ``replica2``, ...; replica options are keyed by the
    0-based replica index. Every standby connects with ``application_name=<its name>`` and uses a
    physical replication slot of the same name, so ``pg_stat_replication`` and
    ``synchronous_standby_names`` refer to it by name.

    Use as a context manager, or call :meth:`start` and :meth:`stop`. An ``atexit`` hook stops a
    cluster the program forgot; a process killed without running ``atexit`` handlers (SIGKILL,
    ``os._exit``) leaves its servers running, but :meth:`stop` only ever signals the postmaster
    PIDs recorded for this cluster, never processes found by name.
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
        replica_apply_delay: dict[int, str] | None = None,
        synchronous_replica: int | None = None,
        max_connections: int = 300,
        extra_conf: dict[str, str] | None = None,
        keep: bool = False,
    ) -> None:
        if replicas < 0:
            raise ValueError(f"replicas must be >= 0, got {replicas}")
        delays = dict(replica_apply_delay or {})
        for index in delays:
            if not 0 <= index < replicas:
                raise ValueError(f"replica_apply_delay index {index} is not in 0..{replicas - 1}")
        if synchronous_replica is not None and not 0 <= synchronous_replica < replicas:
            raise ValueError(
                f"synchronous_replica {synchronous_replica} is not in 0..{replicas - 1}"
            )
        if user == superuser:
            raise ValueError("user and superuser must differ")
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
        self._node_delays = {f"replica{index + 1}": delay for index, delay in delays.items()}
        self._sync_index = synchronous_replica
        self._init_servers(max_connections, extra_conf or {})

    # ----------------------------------------------------------------- bookkeeping

    # ----------------------------------------------------------------- connection strings

    def dsn(
        self,
        node: PgNode,
        *,
        user: str | None = None,
        password: str | None = None,
        database: str | None = None,
    ) -> str:
        """A libpq keyword/value connection string (libpq "Connection Strings") over TCP."""
        return _conninfo(
            host=node.host,
            port=str(node.port),
            user=self.user if user is None else user,
            password=self.password if password is None else password,
            dbname=self.database if database is None else database,
        )

    def admin_dsn(self, node: PgNode) -> str:
        """A superuser connection string over TCP (SCRAM-SHA-256), to the ``postgres`` database."""
        return self.dsn(
            node, user=self.superuser, password=self.superuser_password, database="postgres"
        )

    # ----------------------------------------------------------------- lifecycle

    def start(self) -> PgCluster:
        """Create and start the primary and every standby; return once all stream.

        Follows the documented setup: ``initdb``; a SCRAM-SHA-256 login role owning the
        database plus a superuser; one ``pg_basebackup -R -C -S <slot>`` per standby; standbys
        start in hot-standby mode. Returns when ``pg_stat_replication`` shows every standby
        ``streaming`` and the login role can connect over TCP to every node.
        """
        return super().start()

    def _start_cluster(self) -> None:
        deadline = time.monotonic() + _START_TIMEOUT
        ports = free_ports(self._replica_count + 1)
        primary = self._make_node("primary", ports[0])
        self._primary_name = primary.name
        self._initdb(primary)
        self._write_base_conf(primary)
        self._write_hba(primary)
        self._write_node_conf(primary, apply_delay=None)
        primary = self._start_with_port_retry(primary)
        self._bootstrap_roles(primary)

        for index in range(self._replica_count):
            replica = self._make_node(f"replica{index + 1}", ports[index + 1])
            self._base_backup(replica)
            self._write_node_conf(replica, apply_delay=self._node_delays.get(replica.name))
            self._replica_names.append(replica.name)
        for name in list(self._replica_names):
            self._start_with_port_retry(self._nodes[name])

        self.wait_streaming(timeout=max(1.0, deadline - time.monotonic()))
        if self._sync_index is not None:
            self._make_synchronous(self.replicas[self._sync_index], deadline)
        for node in self.nodes:
            self._wait_login(node, deadline)

    def stop(self) -> None:
        """Stop every node still running and remove the base directory; safe to call twice.

        Each node gets a fast shutdown (``pg_ctl stop -m fast``), then immediate, then SIGKILL
        to its recorded postmaster PID. The base directory is kept when ``keep`` is set or
        ``$DBBALANCER_KEEP_CLUSTER=1``.
        """
        errors: list[str] = []
        running = [node for node in self.nodes if self.is_running(node)]
        self._stop_nodes(running, "fast", errors)
        self._stop_nodes([n for n in running if self.is_running(n)], "immediate", errors)
        for node in running:
            if self.is_running(node):
                self._kill_postmaster(node, errors)
        self._pids.clear()
        self._finish_stop(running, errors)

    def stop_node(self, node: PgNode, mode: str = "immediate") -> None:
        """Stop one node with ``pg_ctl stop -m <mode>`` (smart, fast or immediate)."""
        if mode not in ("smart", "fast", "immediate"):
            raise ValueError(f"unknown shutdown mode {mode!r}")
        if not self.is_running(node):
            return
        errors: list[str] = []
        self._stop_nodes([node], mode, errors)
        # pg_ctl returns once postmaster.pid is gone; the process itself may take a moment more
        # to exit (and its /proc entry then no longer names the data directory).
        deadline = time.monotonic() + 5
        while self.is_running(node) and time.monotonic() < deadline:
            time.sleep(0.02)
        if self.is_running(node):
            self._kill_postmaster(node, errors)
        if self.is_running(node):
            raise PgClusterError(f"could not stop {node.name}: {'; '.join(errors)}")

    def start_node(self, node: PgNode) -> None:
        """Start a stopped node again; a standby is back once it streams from the primary."""
        if self.is_running(node):
            return
        self._start_server(node)
        if node.name in self._replica_names and self.is_running(self.primary):
            self.wait_streaming()

    def promote(self, node: PgNode) -> None:
        """Promote a standby with ``pg_ctl promote -w`` and make it the primary.

        The old primary leaves both :attr:`primary` and :attr:`replicas` (it cannot rejoin
        without ``pg_rewind``; starting it again would make a second primary). Other running
        standbys are pointed at the new primary with ``ALTER SYSTEM SET primary_conninfo`` and a
        reload, and follow its new timeline (``recovery_target_timeline = 'latest'``); that only
        works if they did not receive WAL the new primary lacks, so stop the old primary first.
        """
        if node.name not in self._replica_names:
            raise PgClusterError(f"{node.name} is not a standby")
        if not self.is_running(node):
            raise PgClusterError(f"{node.name} is not running")
        self._pg_ctl(node, "promote", "-w", "-t", str(int(_START_TIMEOUT)))
        self._replica_names.remove(node.name)
        self._primary_name = node.name
        for standby in self.replicas:
            self.sql(
                node,
                "SELECT pg_create_physical_replication_slot(name) FROM (SELECT "
                f"{_sql_literal(standby.name)}::name AS name) s WHERE NOT EXISTS (SELECT "
                "FROM pg_replication_slots r WHERE r.slot_name = s.name)",
            )
            conninfo = self._primary_conninfo(standby)
            if self.is_running(standby):
                # primary_conninfo is reloadable since PostgreSQL 13: the walreceiver restarts.
                self.sql(standby, f"ALTER SYSTEM SET primary_conninfo = {_sql_literal(conninfo)}")
                self.sql(standby, "SELECT pg_reload_conf()")
            else:
                self._append_auto_conf(standby, {"primary_conninfo": conninfo})

    # ----------------------------------------------------------------- queries and waiting

    def wait_streaming(self, timeout: float = 30.0) -> None:
        """Wait until every running standby shows ``state = 'streaming'`` in the primary's
        ``pg_stat_replication`` under its application_name; raise with log tails on timeout."""

        def not_streaming() -> dict[str, str]:
            wanted = {n.name for n in self.replicas if self.is_running(n)}
            try:
                rows = self.sql(
                    self.primary, "SELECT application_name, state FROM pg_stat_replication"
                )
            except PgClusterError as exc:
                return dict.fromkeys(wanted, str(exc))
            streaming = {row[0] for row in rows if row[1] == "streaming"}
            return dict.fromkeys(wanted - streaming, f"pg_stat_replication: {rows}")

        self._wait_replicas(
            not_streaming,
            timeout,
            lambda missing: (
                f"standbys {sorted(missing)} not streaming after {timeout:.0f}s "
                f"({next(iter(missing.values()))})"
            ),
        )

    # ----------------------------------------------------------------- internals: setup

    def _make_node(self, name: str, port: int) -> PgNode:
        node_dir = self._make_node_dir(name)
        node = PgNode(name=name, host=LOOPBACK, port=port, data_dir=node_dir / "data")
        self._nodes[name] = node
        return node

    def _bootstrap_roles(self, primary: PgNode) -> None:
        # initdb made the superuser without a password; set it over the trusted local socket.
        statements = [
            f"ALTER ROLE {_sql_ident(self.superuser)} PASSWORD "
            f"{_sql_literal(self.superuser_password)}",
            f"CREATE ROLE {_sql_ident(self.user)} LOGIN PASSWORD {_sql_literal(self.password)}",
        ]
        for statement in statements:
            self._socket_sql(primary, statement)
        exists = self._socket_sql(
            primary, f"SELECT 1 FROM pg_database WHERE datname = {_sql_literal(self.database)}"
        )
        if exists.strip():
            self._socket_sql(
                primary,
                f"ALTER DATABASE {_sql_ident(self.database)} OWNER TO {_sql_ident(self.user)}",
            )
        else:
            self._socket_sql(
                primary,
                f"CREATE DATABASE {_sql_ident(self.database)} OWNER {_sql_ident(self.user)}",
            )

    def _base_backup(self, replica: PgNode) -> None:
        primary = self.primary
        conninfo = _conninfo(
            host=primary.host,
            port=str(primary.port),
            user=self.superuser,
            application_name=replica.name,
        )
        self._run_server_program(
            replica,
            [
                self._bin("pg_basebackup"),
                "-D",
                str(replica.data_dir),
                "-d",
                conninfo,
                "-X",
                "stream",
                "-c",
                "fast",
                "-R",
                "-C",
                "-S",
                replica.name,
                "--no-sync",
            ],
            what=f"pg_basebackup for {replica.name}",
            env={"PGPASSWORD": self.superuser_password},
            log_nodes=[primary],
        )
        # pg_basebackup -R already wrote a primary_conninfo; pin exactly the one we want
        # (password included, since the walreceiver has no PGPASSWORD).
        self._append_auto_conf(
            replica,
            {
                "primary_conninfo": self._primary_conninfo(replica),
                "primary_slot_name": replica.name,
            },
        )

    def _primary_conninfo(self, replica: PgNode) -> str:
        primary = self.primary
        return _conninfo(
            host=primary.host,
            port=str(primary.port),
            user=self.superuser,
            password=self.superuser_password,
            application_name=replica.name,
        )

    def _make_synchronous(self, replica: PgNode, deadline: float) -> None:
        # Set only now: with a synchronous standby named before it exists, every commit made
        # while bootstrapping roles would wait forever.
        self.sql(
            self.primary,
            f"ALTER SYSTEM SET synchronous_standby_names = {_sql_literal(replica.name)}",
        )
        self.sql(self.primary, "SELECT pg_reload_conf()")
        query = (
            "SELECT sync_state FROM pg_stat_replication "
            f"WHERE application_name = {_sql_literal(replica.name)}"
        )
        while self.sql(self.primary, query) != [("sync",)]:
            if time.monotonic() >= deadline:
                raise PgClusterError(
                    f"{replica.name} did not become the synchronous standby\n"
                    f"{self._log_tails([self.primary, replica])}"
                )
            time.sleep(0.05)

    # ----------------------------------------------------------------- internals: processes

    def _start_with_port_retry(self, node: PgNode) -> PgNode:
        def move(node: PgNode) -> PgNode:
            node = PgNode(node.name, node.host, free_ports(1)[0], node.data_dir)
            self._write_node_conf(node, apply_delay=self._node_delays.get(node.name))
            return node

        return self._retry_port_clash(node, self._start_server, move)
