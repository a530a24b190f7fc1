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
Unix socket, pid file). Every program runs with ``--no-defaults``, so ``/etc/mysql/my.cnf``
(which names the machine's own server, its socket and port 3306) is never read, and servers
listen on free loopback ports only. Ports 3306 and 5432 are never handed out.

MariaDB refuses to run as root without ``--user``; when this process runs as root, the server
programs run as the ``mysql`` system user when it exists, else as ``postgres`` or the system
user ``dbbalancer`` (:func:`dbbalancer.testing.servers.system_account`). Clients
(``mariadb``) keep running as the caller and reach ``root@localhost`` (no password, Unix socket
only) for administration.

Binaries are found in ``$DBBALANCER_MARIADB_BINDIR`` first, then ``PATH``, ``/usr/sbin`` and
``/usr/bin``. ``make setup`` installs them (``mariadb-server``, ``mariadb-client``).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dbbalancer.testing.ports import LOOPBACK, free_ports
from dbbalancer.testing.servers import KEEP_ENV as KEEP_ENV
from dbbalancer.testing.servers import (
    ServerAccount,
    ServerCluster,
    ServerNode,
    run_as,
    system_account,
)

__all__ = [
    "MariaDbBinaries",
    "MariaDbCluster",
    "MariaDbClusterError",
    "MariaDbNode",
    "find_mariadb_binaries",
    "parse_gtid_pos",
]

BINDIR_ENV = "DBBALANCER_MARIADB_BINDIR"
# Never hand out the machine's own MariaDB/MySQL and PostgreSQL ports.
RESERVED_PORTS = frozenset({3306, 5432})
_START_TIMEOUT = 60.0
_STOP_TIMEOUT = 30.0
_CLIENT_TIMEOUT = 30.0
_XSI_NIL = "{http://www.w3.org/2001/XMLSchema-instance}nil"
_REPL_USER = "dbb_repl"
_REPL_PASSWORD = "repl"


class MariaDbClusterError(RuntimeError):
    """The local MariaDB cluster could not be found, started, queried or stopped."""


@dataclass(frozen=True)
class MariaDbNode(ServerNode):
    """One MariaDB server of the cluster: identity only, no runtime state."""

    node_dir: Path
    server_id: int

    @property
    def data_dir(self) -> Path:
        return self.node_dir / "data"

    @property
    def socket(self) -> Path:
        """The server's Unix socket, used by :meth:`MariaDbCluster.sql` as ``root@localhost``."""
        return self.node_dir / "mariadbd.sock"

    @property
    def log_file(self) -> Path:
        """The server's error log (``--log-error``)."""
        return self.node_dir / "server.log"

    @property
    def pid_file(self) -> Path:
        return self.node_dir / "mariadbd.pid"


@dataclass(frozen=True)
class MariaDbBinaries:
    """Paths of the programs the cluster runs."""

    server: Path
    install_db: Path
    client: Path


def find_mariadb_binaries() -> MariaDbBinaries:
    """Locate ``mariadbd``, ``mariadb-install-db`` and the ``mariadb`` client.

    ``$DBBALANCER_MARIADB_BINDIR`` is searched first, then ``PATH``, ``/usr/sbin`` and
    ``/usr/bin`` (Debian puts ``mariadbd`` in ``/usr/sbin``, which a non-root ``PATH`` may lack).
    Raises :class:`MariaDbClusterError` telling the user to run ``make setup`` when one is missing.
    """
    dirs: list[str] = []
    env_dir = os.environ.get(BINDIR_ENV)
    if env_dir:
        dirs.append(env_dir)
    dirs.extend(os.environ.get("PATH", "").split(os.pathsep))
    dirs.extend(["/usr/sbin", "/usr/bin"])
    search = os.pathsep.join(d for d in dirs if d)

    def find(*names: str) -> Path | None:
        for name in names:
            found = shutil.which(name, path=search)
            if found is not None:
                return Path(found)
        return None

    server = find("mariadbd", "mysqld")
    install_db = find("mariadb-install-db", "mysql_install_db")
    client = find("mariadb", "mysql")
    if server is None or install_db is None or client is None:
        missing = [
            name
            for name, path in (
                ("mariadbd", server),
                ("mariadb-install-db", install_db),
                ("mariadb", client),
            )
            if path is None
        ]
        raise MariaDbClusterError(
            f"MariaDB programs not found: {', '.join(missing)} (looked in ${BINDIR_ENV}, PATH, "
            "/usr/sbin, /usr/bin). Run `make setup` (as root it installs mariadb-server and "
            f"mariadb-client) or set {BINDIR_ENV} to the directory that holds them."
        )
    return MariaDbBinaries(server=server, install_db=install_db, client=client)


def mariadb_account() -> ServerAccount | None:
    """The account server programs run as: ``None`` (ourselves) unless we are root.

    As root: the ``mysql`` system user when it exists, else ``postgres``, else the
    ``dbbalancer`` system user (created once), as for the PostgreSQL cluster.
    """
    return system_account(("mysql", "postgres"), MariaDbClusterError)


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


class MariaDbCluster(ServerCluster[MariaDbNode]):
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

    _error = MariaDbClusterError
    _url_scheme = "mysql"
    _tempdir_prefix = "dbbalancer-mariadb-"

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
        self._max_connections = max_connections
        self._extra_args = list(extra_args)
        self._bins: MariaDbBinaries | None = None
        self._procs: dict[str, subprocess.Popen[bytes]] = {}
        # MASTER_USE_GTID per replica: slave_pos, or current_pos for a rejoined old primary,
        # whose own writes are in its binlog but not in its gtid_slave_pos.
        self._gtid_modes: dict[str, str] = {}

    # ----------------------------------------------------------------- bookkeeping

    def pid(self, node: MariaDbNode) -> int | None:
        """The PID of ``node``'s ``mariadbd`` as started by us, or ``None`` if it is not running."""
        proc = self._procs.get(node.name)
        if proc is None or proc.poll() is not None:
            return None
        return proc.pid

    def is_running(self, node: MariaDbNode) -> bool:
        """Whether ``node``'s server process (started by us) is alive."""
        return self.pid(node) is not None

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

    def _find_programs(self) -> None:
        self._bins = find_mariadb_binaries()
        self._account = mariadb_account()

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

    def promote(self, node: MariaDbNode) -> float:
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
        """
        if node.name not in self._replica_names:
            raise MariaDbClusterError(f"{node.name} is not a replica")
        if not self.is_running(node):
            raise MariaDbClusterError(f"{node.name} is not running")
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

    def sql(
        self, node: MariaDbNode, query: str, *, database: str | None = None
    ) -> list[tuple[str | None, ...]]:
        """Run ``query`` as ``root@localhost`` over ``node``'s Unix socket; return rows as text.

        Uses the ``mariadb`` client (``--no-defaults --xml``), in ``database`` (by default the
        application database). NULL comes back as ``None``; several ``;``-separated statements
        may be given, and the rows of all result sets are returned in order. Raises
        :class:`MariaDbClusterError` with the client's stderr when a statement fails.
        """
        return [tuple(row.values()) for row in self.sql_dicts(node, query, database=database)]

    def sql_dicts(
        self, node: MariaDbNode, query: str, *, database: str | None = None
    ) -> list[dict[str, str | None]]:
        """Like :meth:`sql`, each row a ``{column: value}`` dict (e.g. ``SHOW SLAVE STATUS``)."""
        dbname = self.database if database is None else database
        result = self._client(
            node,
            ["-uroot", f"--socket={node.socket}", "--xml", f"--database={dbname}", "-e", query],
        )
        if result.returncode != 0:
            raise MariaDbClusterError(
                f"mariadb on {node.name} ({node.address()}) failed: {result.stderr.strip()}\n"
                f"query: {query}"
            )
        return _parse_xml_output(result.stdout)

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
        deadline = time.monotonic() + timeout
        while True:
            wanted = self.replicas if nodes is None else list(nodes)
            problems: dict[str, str] = {}
            for replica in wanted:
                if not self.is_running(replica):
                    continue
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
            if not problems:
                return
            if time.monotonic() >= deadline:
                involved = [self.primary, *(self._nodes[name] for name in sorted(problems))]
                raise MariaDbClusterError(
                    f"replicas not replicating after {timeout:.0f}s: {problems}\n"
                    f"{self._log_tails(involved)}"
                )
            time.sleep(0.05)

    def wait_replicated(
        self, timeout: float = 30.0, nodes: Iterable[MariaDbNode] | None = None
    ) -> None:
        """Wait until every running replica (or each of ``nodes``) has applied everything the
        primary has binlogged: its ``@@gtid_slave_pos`` covers the primary's
        ``@@gtid_binlog_pos`` in every domain. A delayed replica takes its ``MASTER_DELAY``."""
        deadline = time.monotonic() + timeout
        target = self.gtid_binlog_pos(self.primary)
        while True:
            wanted = self.replicas if nodes is None else list(nodes)
            behind: dict[str, str] = {}
            for replica in wanted:
                if not self.is_running(replica):
                    continue
                try:
                    have = self.gtid_slave_pos(replica)
                except MariaDbClusterError as exc:
                    behind[replica.name] = str(exc)
                    continue
                if not gtid_pos_covers(have, target):
                    behind[replica.name] = f"gtid_slave_pos {have}"
            if not behind:
                return
            if time.monotonic() >= deadline:
                details = {}
                for name in behind:
                    with contextlib.suppress(MariaDbClusterError):
                        status = self.slave_status(self._nodes[name])
                        details[name] = (
                            status.get("Last_IO_Error"),
                            status.get("Last_SQL_Error"),
                        )
                involved = [self.primary, *(self._nodes[name] for name in sorted(behind))]
                raise MariaDbClusterError(
                    f"replicas behind the primary's gtid_binlog_pos {target} after "
                    f"{timeout:.0f}s: {behind}; errors: {details}\n{self._log_tails(involved)}"
                )
            time.sleep(0.05)

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

    def _install_db(self, data_dir: Path) -> None:
        log = self.base_dir / "install-db.log"
        # Its own temporary directory, as for the servers: the bootstrap server's temporary
        # tables in a shared /tmp have been seen to vanish under it ("Error on delete of
        # '/tmp/#sql-temptable-...'") while other programs cleaned up there.
        tmpdir = self.base_dir / "install-tmp"
        tmpdir.mkdir(exist_ok=True)
        self._chown(tmpdir)
        args = [
            str(self._bin().install_db),
            "--no-defaults",
            f"--datadir={data_dir}",
            f"--tmpdir={tmpdir}",
            "--auth-root-authentication-method=normal",
            "--skip-test-db",
            "--skip-name-resolve",
            *self._innodb_args(),
        ]
        if self._bin().server.parent != Path("/usr/sbin"):
            # A server outside the standard layout (e.g. an unpacked tarball): install-db finds
            # mariadbd and its share files relative to the base directory.
            args.append(f"--basedir={self._bin().server.parent.parent}")
        try:
            result = subprocess.run(
                args,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                cwd=self.base_dir,
                env=self._env(),
                timeout=_START_TIMEOUT,
                check=False,
                **run_as(self._account),
            )
        except subprocess.TimeoutExpired as exc:
            raise MariaDbClusterError(f"mariadb-install-db timed out after {exc.timeout}s") from exc
        log.write_text(result.stdout + result.stderr, encoding="utf-8")
        if result.returncode != 0:
            tail = "\n".join((result.stdout + result.stderr).splitlines()[-30:])
            raise MariaDbClusterError(
                f"mariadb-install-db failed (exit {result.returncode}):\n{tail}"
            )
        shutil.rmtree(tmpdir, ignore_errors=True)

    def _copy_tree(self, source: Path, target: Path) -> None:
        shutil.copytree(source, target, symlinks=True)
        if self._account is not None:
            for root, dirs, files in os.walk(target):
                self._chown(Path(root))
                for name in [*dirs, *files]:
                    self._chown(Path(root) / name)

    def _innodb_args(self) -> list[str]:
        # Small log and buffer pool: quick install, start and copy; plenty for tests.
        return ["--innodb-log-file-size=8M", "--innodb-buffer-pool-size=32M"]

    def _server_args(self, node: MariaDbNode, *, read_only: bool = False) -> list[str]:
        args = [
            str(self._bin().server),
            "--no-defaults",
            f"--datadir={node.data_dir}",
            f"--port={node.port}",
            f"--bind-address={LOOPBACK}",
            f"--socket={node.socket}",
            f"--pid-file={node.pid_file}",
            f"--log-error={node.log_file}",
            f"--tmpdir={node.node_dir}",
            f"--secure-file-priv={node.node_dir}",
            f"--server-id={node.server_id}",
            "--log-bin=mariadb-bin",
            "--relay-log=relay-bin",
            "--log-slave-updates=1",
            "--gtid-strict-mode=1",
            "--binlog-format=ROW",
            "--skip-name-resolve",
            "--skip-slave-start",
            f"--report-host={LOOPBACK}",
            f"--report-port={node.port}",
            f"--max-connections={self._max_connections}",
            "--character-set-server=utf8mb4",
            "--collation-server=utf8mb4_general_ci",
            # Durability is not what these servers are for (like fsync=off for PostgreSQL).
            "--innodb-flush-log-at-trx-commit=2",
            "--sync-binlog=0",
            "--slave-net-timeout=10",
            *self._innodb_args(),
        ]
        if read_only or node.name in self._replica_names:
            args.append("--read-only=1")
        args.extend(self._extra_args)
        return args

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

    def _wait_login(self, node: MariaDbNode, deadline: float) -> None:
        while True:
            result = self._client(
                node,
                [
                    f"--host={node.host}",
                    f"--port={node.port}",
                    "--protocol=TCP",
                    f"--user={self.user}",
                    f"--database={self.database}",
                    "-e",
                    "SELECT 1",
                ],
                password=self.password,
            )
            if result.returncode == 0:
                return
            if time.monotonic() >= deadline:
                raise MariaDbClusterError(
                    f"user {self.user!r} cannot log in to {node.name} ({node.address()}): "
                    f"{result.stderr.strip()}\n{self._log_tails([node])}"
                )
            time.sleep(0.05)

    # ----------------------------------------------------------------- internals: processes

    def _bin(self) -> MariaDbBinaries:
        assert self._bins is not None, "find_mariadb_binaries() runs in start()"
        return self._bins

    def _env(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        # MYSQL_HOST, MYSQL_TCP_PORT, MYSQL_UNIX_PORT, MYSQL_PWD, ... would silently redirect our
        # programs, e.g. to the machine's own server.
        env = {k: v for k, v in os.environ.items() if not k.startswith(("MYSQL", "MARIADB"))}
        env["LC_ALL"] = "C"
        self._env_as_account(env)
        env.update(extra or {})
        return env

    def _launch(self, node: MariaDbNode, *, read_only: bool = False) -> None:
        # The log file is ours to create, so that errors before --log-error takes effect land
        # in it too.
        log = node.log_file.open("ab")
        self._chown(node.log_file)
        try:
            self._procs[node.name] = subprocess.Popen(
                self._server_args(node, read_only=read_only),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                cwd=node.node_dir,
                env=self._env(),
                # Own session: a Ctrl-C in the terminal reaches us, and we stop the servers.
                start_new_session=True,
                **run_as(self._account),
            )
        finally:
            log.close()

    def _wait_up(self, node: MariaDbNode, deadline: float) -> None:
        while True:
            proc = self._procs[node.name]
            if proc.poll() is not None:
                raise MariaDbClusterError(
                    f"mariadbd for {node.name} exited with {proc.returncode}\n"
                    f"{self._log_tails([node])}"
                )
            if node.socket.exists():
                result = self._client(
                    node,
                    ["-uroot", f"--socket={node.socket}", "-e", "SELECT 1"],
                )
                if result.returncode == 0:
                    return
            if time.monotonic() >= deadline:
                raise MariaDbClusterError(
                    f"{node.name} did not accept connections in time\n{self._log_tails([node])}"
                )
            time.sleep(0.03)

    def _wait_up_with_port_retry(
        self, node: MariaDbNode, deadline: float, *, read_only: bool = False
    ) -> MariaDbNode:
        def move(node: MariaDbNode) -> MariaDbNode:
            node = MariaDbNode(
                node.name, node.host, _pick_ports(1)[0], node.node_dir, node.server_id
            )
            self._launch(node, read_only=read_only)
            return node

        return self._retry_port_clash(node, lambda node: self._wait_up(node, deadline), move)

    def _signal(self, node: MariaDbNode, signum: signal.Signals) -> None:
        proc = self._procs.get(node.name)
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                # Our own child, not yet reaped: its PID cannot have been reused.
                os.kill(proc.pid, signum)

    def _reap(self, node: MariaDbNode, timeout: float, errors: list[str]) -> None:
        proc = self._procs.get(node.name)
        if proc is None:
            return
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            errors.append(f"{node.name}: no exit {timeout:.0f}s after a signal, SIGKILL")
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGKILL)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                errors.append(f"{node.name}: mariadbd {proc.pid} survived SIGKILL")

    def _client(
        self, node: MariaDbNode, args: Sequence[str], *, password: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        # --no-defaults first: /etc/mysql/my.cnf names the machine's own server socket. The
        # password travels in MYSQL_PWD so that it does not show in `ps`.
        extra = {} if password is None else {"MYSQL_PWD": password}
        try:
            return subprocess.run(
                [
                    str(self._bin().client),
                    "--no-defaults",
                    "--connect-timeout=5",
                    "--batch",
                    *args,
                ],
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                env=self._env(extra),
                timeout=_CLIENT_TIMEOUT,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise MariaDbClusterError(f"mariadb on {node.name} timed out: {list(args)}") from exc

    def _remove_files(self) -> None:
        super()._remove_files()
        assert self._base_dir is not None
        if not self._owns_base_dir:
            shutil.rmtree(self._base_dir / "template", ignore_errors=True)
            shutil.rmtree(self._base_dir / "install-tmp", ignore_errors=True)
            with contextlib.suppress(OSError):
                (self._base_dir / "install-db.log").unlink()


# --------------------------------------------------------------------- pure helpers


def _pick_ports(n: int) -> list[int]:
    """``n`` free loopback ports, never one of :data:`RESERVED_PORTS`."""
    while True:
        ports = free_ports(n)
        if not RESERVED_PORTS.intersection(ports):
            return ports


def _sql_literal(value: str) -> str:
    """A MariaDB string literal: backslashes and single quotes escaped."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _sql_ident(value: str) -> str:
    """A back-quoted MariaDB identifier."""
    return "`" + value.replace("`", "``") + "`"


def _parse_xml_output(output: str) -> list[dict[str, str | None]]:
    """Rows of ``mariadb --xml`` output: one XML document per result set, back to back.

    ``xsi:nil="true"`` marks NULL; an empty element is the empty string.
    """
    rows: list[dict[str, str | None]] = []
    for document in output.split('<?xml version="1.0"?>'):
        if not document.strip():
            continue
        try:
            resultset = ET.fromstring(document.strip())
        except ET.ParseError as exc:
            raise MariaDbClusterError(f"cannot parse mariadb --xml output: {exc}") from exc
        for row in resultset.iter("row"):
            rows.append(
                {
                    field.get("name", ""): None
                    if field.get(_XSI_NIL) == "true"
                    else (field.text or "")
                    for field in row.iter("field")
                }
            )
    return rows
