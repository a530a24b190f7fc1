"""One PostgreSQL server of a local test cluster: its files, its programs and its process.

:class:`PgServers` is the base of :class:`dbbalancer.testing.pgcluster.PgCluster`: it writes a
node's configuration (``postgresql.conf``, ``pg_hba.conf``, the per-node ``node.conf``), runs
``initdb``, ``pg_ctl`` and ``psql``, and starts, stops and kills postmasters, each by the PID
recorded when it started. The replication topology (standbys, promotion, waiting for
streaming) stays in the cluster.

PostgreSQL refuses to run as root. When this process runs as root, every server-side program
(``initdb``, ``pg_ctl``/``postgres``, ``pg_basebackup``) runs as an unprivileged account: the
``postgres`` system user when it exists, else a system user ``dbbalancer`` created once with
``useradd --system``. Clients (``psql``) keep running as the caller.

Binaries are found in this order: ``$DBBALANCER_PG_BINDIR``; the highest
``/usr/lib/postgresql/<version>/bin`` (Debian/Ubuntu layout) holding ``initdb``; ``pg_config
--bindir``; ``PATH``. ``make setup`` installs them.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from dbbalancer.testing.ports import LOOPBACK
from dbbalancer.testing.servers import (
    ServerAccount,
    ServerCluster,
    ServerNode,
    pid_alive,
    run_as,
    system_account,
)

__all__ = [
    "PgClusterError",
    "PgNode",
    "PgServers",
    "ServerAccount",
    "find_pg_bindir",
    "server_account",
]

BINDIR_ENV = "DBBALANCER_PG_BINDIR"
_DEBIAN_PG_ROOT = Path("/usr/lib/postgresql")
_SERVER_PROGRAMS = ("initdb", "pg_ctl", "postgres", "pg_basebackup")
_START_TIMEOUT = 60.0
_STOP_TIMEOUT = 30.0
_NULL_MARK = "\x1d<NULL>\x1d"
_FIELD_SEP = "\x1f"


class PgClusterError(RuntimeError):
    """The local cluster could not be found, started, queried or stopped."""


@dataclass(frozen=True)
class PgNode(ServerNode):
    """One PostgreSQL server of the cluster: identity only, no runtime state."""

    data_dir: Path

    @property
    def node_dir(self) -> Path:
        """The node's private directory: data directory, log file and Unix socket."""
        return self.data_dir.parent

    @property
    def log_file(self) -> Path:
        """The server log that ``pg_ctl -l`` appends to."""
        return self.node_dir / "server.log"


def find_pg_bindir() -> Path:
    """Locate the PostgreSQL server binaries (``initdb``, ``pg_ctl``, ``postgres``, ...).

    Order: ``$DBBALANCER_PG_BINDIR``, the highest ``/usr/lib/postgresql/*/bin`` with ``initdb``,
    ``pg_config --bindir``, then ``PATH``. Raises :class:`PgClusterError` telling the user to run
    ``make setup`` when none holds every server program.
    """
    candidates: list[Path] = []
    env_dir = os.environ.get(BINDIR_ENV)
    if env_dir:
        bindir = Path(env_dir)
        if not _has_server_programs(bindir):
            raise PgClusterError(
                f"${BINDIR_ENV}={env_dir} does not contain the PostgreSQL server programs "
                f"({', '.join(_SERVER_PROGRAMS)}); fix the variable or unset it"
            )
        return bindir
    if _DEBIAN_PG_ROOT.is_dir():
        versioned = [
            p / "bin" for p in _DEBIAN_PG_ROOT.iterdir() if (p / "bin" / "initdb").exists()
        ]
        candidates.extend(
            sorted(versioned, key=lambda p: _version_key(p.parent.name), reverse=True)
        )
    pg_config = shutil.which("pg_config")
    if pg_config is not None:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out = subprocess.run(
                [pg_config, "--bindir"], capture_output=True, text=True, timeout=10, check=True
            ).stdout.strip()
            if out:
                candidates.append(Path(out))
    initdb = shutil.which("initdb")
    if initdb is not None:
        candidates.append(Path(initdb).resolve().parent)
    for bindir in candidates:
        if _has_server_programs(bindir):
            return bindir
    raise PgClusterError(
        "PostgreSQL server binaries (initdb, pg_ctl, postgres, pg_basebackup) not found: "
        f"looked in ${BINDIR_ENV}, {_DEBIAN_PG_ROOT}/*/bin, `pg_config --bindir` and PATH. "
        "Run `make setup` (as root it installs postgresql-15) or set "
        f"{BINDIR_ENV} to the directory that holds initdb."
    )


def server_account() -> ServerAccount | None:
    """Return the account server programs must run as, or ``None`` to run them as ourselves.

    PostgreSQL's postmaster and initdb exit with "cannot be run as root" when the effective uid
    is 0, so as root we pick ``postgres`` or create the system user ``dbbalancer``.
    """
    return system_account(("postgres",), PgClusterError)


class PgServers(ServerCluster[PgNode]):
    """The servers of a :class:`~dbbalancer.testing.pgcluster.PgCluster`: configuration files,
    programs and postmaster processes, node by node."""

    _error = PgClusterError
    _url_scheme = "postgresql"
    _tempdir_prefix = "dbbalancer-pg-"
    _poll_interval = 0.1

    def _init_servers(self, max_connections: int, extra_conf: Mapping[str, str]) -> None:
        self._max_connections = max_connections
        self._extra_conf = dict(extra_conf)
        self._bindir: Path | None = None
        self._pids: dict[str, int] = {}

    # ----------------------------------------------------------------- bookkeeping

    def postmaster_pid(self, node: PgNode) -> int | None:
        """The PID recorded when ``node`` last started, or ``None`` if it is not running."""
        pid = self._pids.get(node.name)
        if pid is None or not pid_alive(pid):
            return None
        return pid

    def is_running(self, node: PgNode) -> bool:
        """Whether ``node``'s postmaster (as recorded by us) is alive."""
        return self.postmaster_pid(node) is not None

    # ----------------------------------------------------------------- queries

    def sql(
        self, node: PgNode, query: str, *, database: str | None = None
    ) -> list[tuple[str | None, ...]]:
        """Run ``query`` as the superuser with ``psql -X -A -t`` and return its rows as text.

        Connects over TCP to ``database``, by default the application database, so tables the
        login user created are visible. NULL comes back as ``None``. Raises
        :class:`PgClusterError` with psql's stderr when the query fails (``ON_ERROR_STOP``).
        """
        dbname = self.database if database is None else database
        result = self._psql(node, self.superuser, self.superuser_password, dbname, query)
        if result.returncode != 0:
            raise PgClusterError(
                f"psql on {node.name} ({node.address()}) failed: {result.stderr.strip()}\n"
                f"query: {query}"
            )
        return _parse_psql_output(result.stdout)

    # ----------------------------------------------------------------- internals: files

    def _initdb(self, node: PgNode) -> None:
        # Trust for the bootstrap only; _write_hba replaces pg_hba.conf before the first start.
        self._run_server_program(
            node,
            [
                self._bin("initdb"),
                "-D",
                str(node.data_dir),
                "-U",
                self.superuser,
                "-A",
                "trust",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
                "--no-instructions",
            ],
            what="initdb",
        )

    def _write_base_conf(self, node: PgNode) -> None:
        settings: dict[str, str] = {
            "listen_addresses": LOOPBACK,
            "wal_level": "replica",
            "hot_standby": "on",
            "max_wal_senders": "10",
            "max_replication_slots": "10",
            "wal_keep_size": "256MB",
            "fsync": "off",
            "full_page_writes": "off",
            "synchronous_commit": "on",
            "shared_buffers": "64MB",
            "max_connections": str(self._max_connections),
            "logging_collector": "off",
            "log_line_prefix": "%m [%p] %q%u@%d %a ",
            "password_encryption": "scram-sha-256",
            "hot_standby_feedback": "on",
            "wal_receiver_status_interval": "1s",
            "wal_sender_timeout": "10s",
            "wal_receiver_timeout": "10s",
            # A standby whose upstream vanished retries after this; the 5s default slows
            # restart and failover tests for no benefit on loopback.
            "wal_retrieve_retry_interval": "500ms",
        }
        settings.update(self._extra_conf)
        lines = [f"{key} = {_conf_quote(value)}" for key, value in settings.items()]
        # Per-node settings (port, socket directory, apply delay) live in node.conf, which
        # pg_basebackup copies too; each standby then overwrites its own copy.
        lines.append("include_if_exists = 'node.conf'")
        conf = node.data_dir / "postgresql.conf"
        with conf.open("a", encoding="utf-8") as handle:
            handle.write("\n# dbbalancer test cluster\n" + "\n".join(lines) + "\n")

    def _write_hba(self, node: PgNode) -> None:
        hba = "\n".join(
            [
                "# dbbalancer test cluster: the socket sits in a private directory",
                "local all all trust",
                "local replication all trust",
                f"host replication {_hba_quote(self.superuser)} {LOOPBACK}/32 scram-sha-256",
                f"host all all {LOOPBACK}/32 scram-sha-256",
                "",
            ]
        )
        (node.data_dir / "pg_hba.conf").write_text(hba, encoding="utf-8")

    def _write_node_conf(self, node: PgNode, *, apply_delay: str | None) -> None:
        settings = {
            "port": str(node.port),
            "unix_socket_directories": str(node.node_dir),
            "cluster_name": node.name,
        }
        if apply_delay is not None:
            settings["recovery_min_apply_delay"] = apply_delay
        text = "".join(f"{key} = {_conf_quote(value)}\n" for key, value in settings.items())
        path = node.data_dir / "node.conf"
        path.write_text(text, encoding="utf-8")
        self._chown(path)

    def _append_auto_conf(self, node: PgNode, settings: Mapping[str, str]) -> None:
        # The last occurrence of a setting in a file wins, and ALTER SYSTEM later rewrites the
        # file without duplicates.
        auto = node.data_dir / "postgresql.auto.conf"
        with auto.open("a", encoding="utf-8") as handle:
            for key, value in settings.items():
                handle.write(f"{key} = {_conf_quote(value)}\n")

    # ----------------------------------------------------------------- internals: processes

    def _find_programs(self) -> None:
        self._bindir = find_pg_bindir()
        self._account = server_account()

    def _bin(self, program: str) -> str:
        assert self._bindir is not None, "find_pg_bindir() runs in start()"
        return str(self._bindir / program)

    def _client_bin(self, program: str) -> str:
        assert self._bindir is not None, "find_pg_bindir() runs in start()"
        local = self._bindir / program
        if local.exists():
            return str(local)
        found = shutil.which(program)
        if found is None:
            raise PgClusterError(f"{program} not found in {self._bindir} or PATH")
        return found

    def _server_env(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        # Inherited PGHOST/PGPORT/PGDATA/... would silently redirect our programs, e.g. to the
        # machine's own server.
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env["PGCONNECT_TIMEOUT"] = "5"
        env["LC_ALL"] = "C"
        self._env_as_account(env)
        env.update(extra or {})
        return env

    def _run_server_program(
        self,
        node: PgNode,
        args: Sequence[str],
        *,
        what: str,
        env: Mapping[str, str] | None = None,
        log_nodes: Iterable[PgNode] = (),
        check: bool = True,
        timeout: float = _START_TIMEOUT,
    ) -> subprocess.CompletedProcess[str]:
        try:
            result = subprocess.run(
                list(args),
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                # The server user may not be able to enter our cwd (e.g. /root): postgres then
                # fails with "could not identify current directory".
                cwd=node.node_dir,
                env=self._server_env(env),
                timeout=timeout,
                check=False,
                **run_as(self._account),
            )
        except subprocess.TimeoutExpired as exc:
            raise PgClusterError(
                f"{what} timed out after {timeout:.0f}s\n{self._log_tails([node, *log_nodes])}"
            ) from exc
        if check and result.returncode != 0:
            raise PgClusterError(
                f"{what} failed (exit {result.returncode}): "
                f"{(result.stderr or result.stdout).strip()}\n"
                f"{self._log_tails([node, *log_nodes])}"
            )
        return result

    def _pg_ctl(
        self, node: PgNode, *args: str, check: bool = True, timeout: float = _START_TIMEOUT
    ) -> subprocess.CompletedProcess[str]:
        return self._run_server_program(
            node,
            [self._bin("pg_ctl"), "-D", str(node.data_dir), *args],
            what=f"pg_ctl {args[0]} on {node.name}",
            check=check,
            timeout=timeout + 10,
        )

    def _start_server(self, node: PgNode) -> None:
        self._pg_ctl(node, "start", "-w", "-t", str(int(_START_TIMEOUT)), "-l", str(node.log_file))
        pid = _read_postmaster_pid(node.data_dir)
        if pid is None:
            raise PgClusterError(f"{node.name} started but wrote no postmaster.pid")
        self._pids[node.name] = pid

    def _stop_nodes(self, nodes: Sequence[PgNode], mode: str, errors: list[str]) -> None:
        # Run the pg_ctl processes side by side: each waits for its own shutdown checkpoint.
        procs: list[tuple[PgNode, subprocess.Popen[str]]] = []
        for node in nodes:
            try:
                proc = self._popen_pg_ctl_stop(node, mode)
            except OSError as exc:
                errors.append(f"{node.name} ({mode}): {exc}")
                continue
            procs.append((node, proc))
        for node, proc in procs:
            try:
                output, _ = proc.communicate(timeout=_STOP_TIMEOUT + 10)
            except subprocess.TimeoutExpired:
                proc.kill()
                output, _ = proc.communicate()
            if proc.returncode != 0 and self.is_running(node):
                errors.append(f"{node.name} ({mode}): {output.strip()}")

    def _popen_pg_ctl_stop(self, node: PgNode, mode: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [
                self._bin("pg_ctl"),
                "-D",
                str(node.data_dir),
                "stop",
                "-m",
                mode,
                "-w",
                "-t",
                str(int(_STOP_TIMEOUT)),
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            cwd=node.node_dir if node.node_dir.exists() else None,
            env=self._server_env(),
            **run_as(self._account),
        )

    def _kill_postmaster(self, node: PgNode, errors: list[str]) -> None:
        pid = self._pids.get(node.name)
        if pid is None or not _is_our_postmaster(pid, node.data_dir):
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if pid_alive(pid):
            errors.append(f"{node.name}: postmaster {pid} survived SIGKILL")

    # ----------------------------------------------------------------- internals: clients

    def _psql(
        self, node: PgNode, user: str, password: str, database: str, query: str
    ) -> subprocess.CompletedProcess[str]:
        # The password travels in PGPASSWORD so that it does not show in `ps`.
        conninfo = _conninfo(host=node.host, port=str(node.port), user=user, dbname=database)
        args = [
            self._client_bin("psql"),
            "-X",
            "-A",
            "-t",
            "-q",
            "-0",
            "-F",
            _FIELD_SEP,
            "-v",
            "ON_ERROR_STOP=1",
            "-P",
            f"null={_NULL_MARK}",
            "-d",
            conninfo,
            "-c",
            query,
        ]
        env = self._server_env({"PGPASSWORD": password})
        try:
            return subprocess.run(
                args,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                env=env,
                timeout=_START_TIMEOUT,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise PgClusterError(f"psql on {node.name} timed out: {query}") from exc

    def _try_login(self, node: PgNode) -> subprocess.CompletedProcess[str]:
        return self._psql(node, self.user, self.password, self.database, "SELECT 1")

    def _socket_sql(self, node: PgNode, query: str) -> str:
        # Before passwords exist the only way in is the trusted Unix socket.
        result = subprocess.run(
            [
                self._client_bin("psql"),
                "-X",
                "-A",
                "-t",
                "-q",
                "-v",
                "ON_ERROR_STOP=1",
                "-h",
                str(node.node_dir),
                "-p",
                str(node.port),
                "-U",
                self.superuser,
                "-d",
                "postgres",
                "-c",
                query,
            ],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            env=self._server_env(),
            timeout=_START_TIMEOUT,
            check=False,
        )
        if result.returncode != 0:
            raise PgClusterError(
                f"bootstrap SQL on {node.name} failed: {result.stderr.strip()}\nquery: {query}"
            )
        return result.stdout


# --------------------------------------------------------------------- pure helpers


def _version_key(name: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", name)) or (-1,)


def _has_server_programs(bindir: Path) -> bool:
    return all(os.access(bindir / program, os.X_OK) for program in _SERVER_PROGRAMS)


def _conninfo_quote(value: str) -> str:
    """Quote a libpq keyword/value value: single quotes, backslash escapes (libpq 34.1.1)."""
    if value and re.fullmatch(r"[A-Za-z0-9_.\-/:@]+", value):
        return value
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _conninfo(**pairs: str) -> str:
    """A libpq keyword/value connection string from keyword arguments."""
    return " ".join(f"{key}={_conninfo_quote(value)}" for key, value in pairs.items())


def _conf_quote(value: str) -> str:
    """Quote a postgresql.conf string value: single quotes doubled (config "Parameter Names")."""
    return "'" + value.replace("'", "''") + "'"


def _hba_quote(value: str) -> str:
    """pg_hba.conf user field: double-quote so that names like ``all`` stay literal."""
    return '"' + value.replace('"', '""') + '"'


def _sql_literal(value: str) -> str:
    """A standard-conforming SQL string literal (standard_conforming_strings is on)."""
    return "'" + value.replace("'", "''") + "'"


def _sql_ident(value: str) -> str:
    """A quoted SQL identifier."""
    return '"' + value.replace('"', '""') + '"'


def _parse_psql_output(output: str) -> list[tuple[str | None, ...]]:
    """Split ``psql -A -t -0 -F <US>`` output: NUL ends each record, US separates fields.

    PostgreSQL text values never contain NUL, so records split unambiguously; a value holding
    the ASCII unit separator would be split, which no caller of this test helper needs.
    """
    records = output.split("\0")
    # psql ends unaligned output with a newline after the last record separator.
    if records and records[-1] in ("", "\n"):
        records.pop()
    return [
        tuple(None if field == _NULL_MARK else field for field in record.split(_FIELD_SEP))
        for record in records
    ]


def _read_postmaster_pid(data_dir: Path) -> int | None:
    """First line of ``postmaster.pid`` (see ``src/include/miscadmin.h`` LOCK_FILE_LINE_PID)."""
    try:
        first = (data_dir / "postmaster.pid").read_text(encoding="utf-8").splitlines()[0]
        return int(first.strip())
    except (OSError, ValueError, IndexError):
        return None


def _is_our_postmaster(pid: int, data_dir: Path) -> bool:
    """Guard against PID reuse: the process must be a postgres running on ``data_dir``."""
    if not pid_alive(pid):
        return False
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        # Without /proc we cannot check; the PID came from our own postmaster.pid.
        return True
    return os.fsencode(str(data_dir)) in cmdline
