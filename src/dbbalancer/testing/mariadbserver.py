"""One MariaDB server of a local test cluster: its files, its programs and its process.

:class:`MariaDbServers` is the base of
:class:`dbbalancer.testing.mariadbcluster.MariaDbCluster`: it runs ``mariadb-install-db``
once into a template data directory that every node copies, launches each ``mariadbd`` as a
child of this process (stopped and killed by that child's PID only), and runs SQL through the
``mariadb`` client as ``root@localhost`` on a node's Unix socket. The replication topology
(``CHANGE MASTER TO``, promotion, waiting for replicas) stays in the cluster.

Every program runs with ``--no-defaults``, so ``/etc/mysql/my.cnf`` (which names the machine's
own server, its socket and port 3306) is never read, and servers listen on free loopback ports
only. Ports 3306 and 5432 are never handed out.

MariaDB refuses to run as root without ``--user``; when this process runs as root, the server
programs run as the ``mysql`` system user when it exists, else as ``postgres`` or the system
user ``dbbalancer`` (:func:`dbbalancer.testing.servers.system_account`). Clients
(``mariadb``) keep running as the caller.

Binaries are found in ``$DBBALANCER_MARIADB_BINDIR`` first, then ``PATH``, ``/usr/sbin`` and
``/usr/bin``. ``make setup`` installs them (``mariadb-server``, ``mariadb-client``).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
import xml.etree.ElementTree as ET
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from dbbalancer.testing.ports import LOOPBACK, free_ports
from dbbalancer.testing.servers import (
    ServerAccount,
    ServerCluster,
    ServerNode,
    run_as,
    system_account,
)

__all__ = [
    "RESERVED_PORTS",
    "MariaDbBinaries",
    "MariaDbClusterError",
    "MariaDbNode",
    "MariaDbServers",
    "find_mariadb_binaries",
    "mariadb_account",
]

BINDIR_ENV = "DBBALANCER_MARIADB_BINDIR"
# Never hand out the machine's own MariaDB/MySQL and PostgreSQL ports.
RESERVED_PORTS = frozenset({3306, 5432})
_START_TIMEOUT = 60.0
_STOP_TIMEOUT = 30.0
_CLIENT_TIMEOUT = 30.0
_XSI_NIL = "{http://www.w3.org/2001/XMLSchema-instance}nil"


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


class MariaDbServers(ServerCluster[MariaDbNode]):
    """The servers of a :class:`~dbbalancer.testing.mariadbcluster.MariaDbCluster`: data
    directories, ``mariadbd`` processes and SQL through the ``mariadb`` client, node by node."""

    _error = MariaDbClusterError
    _url_scheme = "mysql"
    _tempdir_prefix = "dbbalancer-mariadb-"

    def _init_servers(self, max_connections: int, extra_args: Sequence[str]) -> None:
        self._max_connections = max_connections
        self._extra_args = list(extra_args)
        self._bins: MariaDbBinaries | None = None
        self._procs: dict[str, subprocess.Popen[bytes]] = {}

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

    # ----------------------------------------------------------------- queries

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

    # ----------------------------------------------------------------- internals: files

    def _find_programs(self) -> None:
        self._bins = find_mariadb_binaries()
        self._account = mariadb_account()

    def _install_db(self, data_dir: Path) -> None:
        log = self.base_dir / "install-db.log"
        args = [
            str(self._bin().install_db),
            "--no-defaults",
            f"--datadir={data_dir}",
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

    def _server_args(self, node: MariaDbNode) -> list[str]:
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
        if node.name in self._replica_names:
            args.append("--read-only=1")
        args.extend(self._extra_args)
        return args

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

    def _launch(self, node: MariaDbNode) -> None:
        # The log file is ours to create, so that errors before --log-error takes effect land
        # in it too.
        log = node.log_file.open("ab")
        self._chown(node.log_file)
        try:
            self._procs[node.name] = subprocess.Popen(
                self._server_args(node),
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

    def _wait_up_with_port_retry(self, node: MariaDbNode, deadline: float) -> MariaDbNode:
        def move(node: MariaDbNode) -> MariaDbNode:
            node = MariaDbNode(
                node.name, node.host, _pick_ports(1)[0], node.node_dir, node.server_id
            )
            self._launch(node)
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

    def _try_login(self, node: MariaDbNode) -> subprocess.CompletedProcess[str]:
        return self._client(
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

    def _remove_files(self) -> None:
        super()._remove_files()
        assert self._base_dir is not None
        if not self._owns_base_dir:
            shutil.rmtree(self._base_dir / "template", ignore_errors=True)
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
