"""The things the macro benchmark drives pgbench through: direct, PgBouncer, HAProxy, dbbalancer.

Every proxy runs as its own process on a free loopback port, so its CPU and memory can be read
from procfs, and is stopped by its PID (SIGTERM, then SIGKILL). A target that cannot start, or
that does not answer a real login with ``SELECT 1``, raises :class:`TargetError` carrying the
first meaningful line of its error, and the harness reports it as failed.

- PgBouncer refuses to run as root ("PgBouncer should not run as root"), so as root it runs as
  the ``postgres`` system user (or the account PgCluster's servers use), with its files in a
  directory that user owns. It pools in transaction mode with a plaintext ``auth_file``, which
  lets it answer SCRAM-SHA-256 itself and log in to PostgreSQL with SCRAM.
- HAProxy forwards TCP (``mode tcp``) to the primary: one server connection per client.
- dbbalancer runs ``python -m dbbalancer run -c FILE`` from the current interpreter.
"""

from __future__ import annotations

import contextlib
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from dbbalancer.testing.pgcluster import PgCluster, server_account
from dbbalancer.testing.ports import LOOPBACK, free_port

__all__ = [
    "ALL_TARGETS",
    "PGBOUNCER_POOL_SIZE",
    "RunningTarget",
    "TargetError",
    "TargetSpec",
    "find_program",
    "spawn",
    "start_target",
    "wait_listening",
]

PGBOUNCER_POOL_SIZE = 20
TRANSACTION_POOL_SIZE = 20
_START_TIMEOUT = 20.0
_STOP_TIMEOUT = 10.0


class TargetError(RuntimeError):
    """A target could not be started or does not serve queries."""


@dataclass(frozen=True)
class TargetSpec:
    """How to reach the primary: ``kind`` is direct, pgbouncer, haproxy or dbbalancer."""

    name: str
    kind: str
    pool_mode: str | None = None
    read_write_split: bool = False
    # dbbalancer from the source tree, without the compiled build that `make bench` puts on
    # PYTHONPATH: what compiling with mypyc (setup.py) buys.
    pure: bool = False


ALL_TARGETS: dict[str, TargetSpec] = {
    spec.name: spec
    for spec in (
        TargetSpec("direct", "direct"),
        TargetSpec("pgbouncer", "pgbouncer", "transaction"),
        TargetSpec("haproxy", "haproxy"),
        TargetSpec("dbbalancer-session", "dbbalancer", "session"),
        TargetSpec("dbbalancer-session-rw", "dbbalancer", "session", read_write_split=True),
        TargetSpec("dbbalancer-transaction", "dbbalancer", "transaction"),
        TargetSpec("dbbalancer-transaction-rw", "dbbalancer", "transaction", read_write_split=True),
        TargetSpec(
            "dbbalancer-transaction-rw-pure",
            "dbbalancer",
            "transaction",
            read_write_split=True,
            pure=True,
        ),
    )
}
# What `make bench` runs unless told otherwise; the pure-Python variant is asked for by name.
DEFAULT_TARGETS = [name for name, spec in ALL_TARGETS.items() if not spec.pure]


@dataclass
class RunningTarget:
    """A started target: where clients connect and which process (if any) is the proxy."""

    spec: TargetSpec
    host: str
    port: int
    process: subprocess.Popen[bytes] | None = None
    log_file: Path | None = None
    pool_size: int | None = None

    @property
    def pids(self) -> list[int]:
        """The proxy's root PID (descendants are added when measuring); empty for direct."""
        return [] if self.process is None else [self.process.pid]

    def alive(self) -> bool:
        """Whether the proxy process still runs (always true for direct)."""
        return self.process is None or self.process.poll() is None

    def failure(self) -> str:
        """The first error line of the proxy's log, for a report after it died."""
        return _first_error(self.log_file) or "the proxy process exited"

    def stop(self) -> None:
        """SIGTERM the proxy by PID, then SIGKILL after a grace period; idempotent."""
        proc = self.process
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(_STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGKILL)
            proc.wait()


def find_program(name: str) -> str | None:
    """A program on PATH or in the sbin directories Debian installs daemons into."""
    found = shutil.which(name)
    if found is not None:
        return found
    for directory in ("/usr/sbin", "/usr/local/sbin", "/sbin"):
        candidate = Path(directory) / name
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return None


def start_target(
    spec: TargetSpec, cluster: PgCluster, workdir: Path, *, session_pool_size: int
) -> RunningTarget:
    """Start ``spec`` in front of ``cluster`` and check it serves a real login + ``SELECT 1``.

    ``session_pool_size`` is the server-connection cap for dbbalancer's session pooling: it
    holds one server connection per client, so the cap must cover the largest client count.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    primary = cluster.primary
    if spec.kind == "direct":
        target = RunningTarget(spec, primary.host, primary.port)
    elif spec.kind == "pgbouncer":
        target = _start_pgbouncer(spec, cluster, workdir)
    elif spec.kind == "haproxy":
        target = _start_haproxy(spec, cluster, workdir)
    elif spec.kind == "dbbalancer":
        target = _start_dbbalancer(spec, cluster, workdir, session_pool_size)
    else:
        raise TargetError(f"unknown target kind {spec.kind!r}")
    try:
        _wait_ready(target, cluster)
    except BaseException:
        target.stop()
        raise
    return target


def spawn(
    command: list[str],
    log_file: Path,
    *,
    account_uid: int | None = None,
    gid: int | None = None,
    env: dict[str, str] | None = None,
) -> subprocess.Popen[bytes]:
    """Start ``command`` in its own session with stdout and stderr appended to ``log_file``."""
    with log_file.open("ab") as log:
        return subprocess.Popen(
            command,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            # Own session: a Ctrl-C reaches only the harness, which then stops us in order.
            start_new_session=True,
            user=account_uid,
            group=gid,
            extra_groups=[] if account_uid is not None else None,
        )


def _start_pgbouncer(spec: TargetSpec, cluster: PgCluster, workdir: Path) -> RunningTarget:
    program = find_program("pgbouncer")
    if program is None:
        raise TargetError("pgbouncer not installed (`make bench` installs it)")
    account = server_account()
    directory = workdir / "pgbouncer"
    directory.mkdir(exist_ok=True)
    port = free_port()
    primary = cluster.primary
    userlist = directory / "userlist.txt"
    userlist.write_text(f'"{cluster.user}" "{cluster.password}"\n', encoding="utf-8")
    log_file = directory / "pgbouncer.log"
    ini = directory / "pgbouncer.ini"
    ini.write_text(
        "\n".join(
            [
                "[databases]",
                f"{cluster.database} = host={primary.host} port={primary.port} "
                f"dbname={cluster.database}",
                "",
                "[pgbouncer]",
                f"listen_addr = {LOOPBACK}",
                f"listen_port = {port}",
                "unix_socket_dir =",
                "auth_type = scram-sha-256",
                f"auth_file = {userlist}",
                f"pool_mode = {spec.pool_mode}",
                f"default_pool_size = {PGBOUNCER_POOL_SIZE}",
                "max_client_conn = 10000",
                f"logfile = {log_file}",
                "log_connections = 0",
                "log_disconnections = 0",
                "ignore_startup_parameters = extra_float_digits",
                "",
            ]
        ),
        encoding="utf-8",
    )
    uid = gid = None
    if account is not None:
        for path in (directory, userlist, ini):
            os.chown(path, account.uid, account.gid)
        log_file.touch()
        os.chown(log_file, account.uid, account.gid)
        uid, gid = account.uid, account.gid
        _make_traversable(directory, workdir)
    process = spawn([program, str(ini)], directory / "stdout.log", account_uid=uid, gid=gid)
    return RunningTarget(spec, LOOPBACK, port, process, log_file, PGBOUNCER_POOL_SIZE)


def _make_traversable(directory: Path, workdir: Path) -> None:
    """Let an unprivileged user reach ``directory`` through the harness's own work directory.

    Only directories the harness created are changed: mkdtemp makes them 0700, and searching
    them (not listing) is all PgBouncer needs to open its files.
    """
    for parent in directory.parents:
        if not parent.is_relative_to(workdir):
            break
        parent.chmod(parent.stat().st_mode | 0o011)


def _start_haproxy(spec: TargetSpec, cluster: PgCluster, workdir: Path) -> RunningTarget:
    program = find_program("haproxy")
    if program is None:
        raise TargetError("haproxy not installed (`make bench` installs it)")
    directory = workdir / "haproxy"
    directory.mkdir(exist_ok=True)
    port = free_port()
    primary = cluster.primary
    cfg = directory / "haproxy.cfg"
    # HAProxy needs two descriptors per connection plus spares and refuses to start when
    # maxconn does not fit the open-file limit it inherits.
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    maxconn = max(100, min(20000, (soft - 200) // 2))
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
                "frontend pg",
                f"    bind {LOOPBACK}:{port}",
                "    default_backend primary",
                "backend primary",
                f"    server primary {primary.host}:{primary.port} maxconn {maxconn}",
                "",
            ]
        ),
        encoding="utf-8",
    )
    log_file = directory / "haproxy.log"
    process = spawn([program, "-db", "-f", str(cfg)], log_file)
    return RunningTarget(spec, LOOPBACK, port, process, log_file)


def dbbalancer_config(
    spec: TargetSpec, cluster: PgCluster, port: int, session_pool_size: int
) -> str:
    """The TOML config for a dbbalancer target (docs/configuration.md)."""
    pool_size = TRANSACTION_POOL_SIZE if spec.pool_mode != "session" else session_pool_size
    servers = "".join(
        f'[[clusters.servers]]\nname = "{node.name}"\naddress = "{node.address()}"\n'
        f'role = "{"primary" if node == cluster.primary else "replica"}"\n\n'
        for node in [cluster.primary, *cluster.replicas]
    )
    return (
        "[general]\n"
        'log_level = "warning"\n'
        "max_client_connections = 20000\n\n"
        "[listen]\n"
        f'postgres = "{LOOPBACK}:{port}"\n\n'
        "[[users]]\n"
        f'name = "{cluster.user}"\n'
        f'password = "{cluster.password}"\n'
        'auth = "scram-sha-256"\n\n'
        "[[clusters]]\n"
        f'name = "{cluster.database}"\n'
        f'database = "{cluster.database}"\n'
        f'pool_mode = "{spec.pool_mode}"\n'
        f"pool_size = {pool_size}\n"
        f"read_write_split = {'true' if spec.read_write_split else 'false'}\n\n"
        f"{servers}"
    )


def _start_dbbalancer(
    spec: TargetSpec, cluster: PgCluster, workdir: Path, session_pool_size: int
) -> RunningTarget:
    directory = workdir / spec.name
    directory.mkdir(exist_ok=True)
    port = free_port()
    config = directory / "dbbalancer.toml"
    config.write_text(dbbalancer_config(spec, cluster, port, session_pool_size), encoding="utf-8")
    log_file = directory / "dbbalancer.log"
    command = [sys.executable, "-m", "dbbalancer", "run", "-c", str(config)]
    env = None
    if spec.pure:
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        env["DBBALANCER_COMPILE"] = "0"
    process = spawn(command, log_file, env=env)
    pool = TRANSACTION_POOL_SIZE if spec.pool_mode != "session" else session_pool_size
    return RunningTarget(spec, LOOPBACK, port, process, log_file, pool)


def _wait_ready(target: RunningTarget, cluster: PgCluster) -> None:
    deadline = wait_listening(target)
    _probe(target, cluster, deadline)


def wait_listening(target: RunningTarget) -> float:
    """Wait until ``target`` accepts TCP connections; return the deadline for further checks.

    Raises :class:`TargetError` with the proxy's first log error when it exits first, or when
    it does not listen within the start timeout.
    """
    deadline = time.monotonic() + _START_TIMEOUT
    while True:
        if not target.alive():
            raise TargetError(target.failure())
        try:
            with socket.create_connection((target.host, target.port), timeout=1.0):
                break
        except OSError as exc:
            if time.monotonic() >= deadline:
                raise TargetError(
                    f"not listening on {target.host}:{target.port} after "
                    f"{_START_TIMEOUT:.0f}s: {exc}"
                ) from None
            time.sleep(0.1)
    return deadline


def _probe(target: RunningTarget, cluster: PgCluster, deadline: float) -> None:
    import psycopg

    while True:
        try:
            with psycopg.connect(
                host=target.host,
                port=target.port,
                user=cluster.user,
                password=cluster.password,
                dbname=cluster.database,
                connect_timeout=5,
                sslmode="disable",
            ) as conn:
                conn.execute("SELECT 1").fetchone()
            return
        except psycopg.Error as exc:
            message = _error_line(str(exc))
            # A proxy may listen before its pools can reach the servers: retry a while.
            if time.monotonic() >= deadline or not target.alive():
                raise TargetError(message) from None
            if "FATAL" in str(exc) or "ERROR" in str(exc):
                raise TargetError(message) from None
            time.sleep(0.2)


def _error_line(text: str) -> str:
    """The server's message (from ``FATAL:``/``ERROR:`` on) rather than libpq's preamble."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    for line in lines:
        for marker in ("FATAL:", "ERROR:"):
            if marker in line:
                return " ".join(line[line.index(marker) :].split())
    return lines[0] if lines else "unknown error"


def _first_error(log_file: Path | None) -> str | None:
    if log_file is None:
        return None
    try:
        lines = log_file.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return None
    for line in lines:
        lowered = line.lower()
        if "error" in lowered or "fatal" in lowered or "alert" in lowered:
            return line.strip()
    tail = [line.strip() for line in lines if line.strip()]
    return tail[-1] if tail else None
