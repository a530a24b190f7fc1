"""What the local test clusters (:mod:`.pgcluster`, :mod:`.mariadbcluster`) share.

Both build a primary plus replicas from local binaries, each node in a private directory under
one base directory, on loopback ports; both run the server programs as an unprivileged account
when this process is root, and both stop what they started from an ``atexit`` hook. The
database-specific parts (how a server starts, stops and replicates) stay in each cluster.
"""

from __future__ import annotations

import atexit
import contextlib
import grp
import os
import pwd
import shutil
import stat
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, ClassVar, Generic, Protocol, Self, TypeVar
from urllib.parse import quote

__all__ = [
    "FALLBACK_SERVER_USER",
    "KEEP_ENV",
    "ServerAccount",
    "ServerCluster",
    "ServerNode",
    "StartStopContext",
    "pid_alive",
    "run_as",
    "system_account",
    "untraversable_parent",
]

KEEP_ENV = "DBBALANCER_KEEP_CLUSTER"
FALLBACK_SERVER_USER = "dbbalancer"
_PORT_RETRIES = 3


class StartStopContext:
    """``with obj:`` calls ``obj.start()`` and, on the way out, ``obj.stop()``."""

    def start(self) -> Self:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


@dataclass(frozen=True)
class ServerAccount:
    """The unprivileged OS account that server programs run as when we are root."""

    name: str
    uid: int
    gid: int


def system_account(names: Sequence[str], error: type[Exception]) -> ServerAccount | None:
    """The account server programs must run as, or ``None`` to run them as ourselves.

    Only root needs one (PostgreSQL and MariaDB refuse to run as root): the first of ``names``
    that exists, else the system user ``dbbalancer``, created once with ``useradd --system``.
    Raises ``error`` when no account can be found or made.
    """
    if os.geteuid() != 0:
        return None
    for name in (*names, FALLBACK_SERVER_USER):
        with contextlib.suppress(KeyError):
            entry = pwd.getpwnam(name)
            return ServerAccount(name, entry.pw_uid, entry.pw_gid)
    useradd = shutil.which("useradd")
    if useradd is None:
        users = " or ".join(f"`{name}`" for name in names)
        raise error(
            f"running as root, no {users} user and no `useradd` to create the system user "
            f"`{FALLBACK_SERVER_USER}`: create an unprivileged user for the database servers"
        )
    result = subprocess.run(
        [useradd, "--system", "--user-group", "--no-create-home", FALLBACK_SERVER_USER],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    try:
        entry = pwd.getpwnam(FALLBACK_SERVER_USER)
    except KeyError:
        raise error(
            f"could not create system user {FALLBACK_SERVER_USER!r}: {result.stderr.strip()}"
        ) from None
    return ServerAccount(FALLBACK_SERVER_USER, entry.pw_uid, entry.pw_gid)


def run_as(account: ServerAccount | None) -> dict[str, Any]:
    """``subprocess`` keyword arguments that run a program as ``account`` (``None``: as us)."""
    if account is None:
        return {}
    return {"user": account.uid, "group": account.gid, "extra_groups": []}


def untraversable_parent(path: Path, account: ServerAccount) -> Path | None:
    """The first ancestor of ``path`` that ``account`` may not search, if any."""
    groups = {account.gid} | {g.gr_gid for g in grp.getgrall() if account.name in g.gr_mem}
    for parent in path.parents:
        info = parent.stat()
        if info.st_uid == account.uid:
            bit = stat.S_IXUSR
        elif info.st_gid in groups:
            bit = stat.S_IXGRP
        else:
            bit = stat.S_IXOTH
        if not info.st_mode & bit:
            return parent
    return None


def pid_alive(pid: int) -> bool:
    """Whether ``pid`` exists and is not a zombie waiting for a reaper."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        fields = Path(f"/proc/{pid}/stat").read_text(encoding="utf-8").rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return True
    return fields[0] != "Z"


@dataclass(frozen=True)
class ServerNode:
    """One server of a cluster: identity only, no runtime state."""

    name: str
    host: str
    port: int

    def address(self) -> str:
        """Return ``host:port``, the form dbbalancer's configuration uses for a server."""
        return f"{self.host}:{self.port}"


class _ClusterNode(Protocol):
    """What :class:`ServerCluster` needs of a node: a :class:`ServerNode` with directory and log."""

    @property
    def name(self) -> str: ...

    @property
    def host(self) -> str: ...

    @property
    def port(self) -> int: ...

    @property
    def node_dir(self) -> Path: ...

    @property
    def log_file(self) -> Path: ...

    def address(self) -> str: ...


NodeT = TypeVar("NodeT", bound=_ClusterNode)


class ServerCluster(StartStopContext, Generic[NodeT]):
    """Bookkeeping of a primary plus replicas, each node in its own directory under one base.

    Subclasses set :attr:`_error` and :attr:`_tempdir_prefix`, find their programs and account
    in :meth:`_find_programs`, build the cluster in :meth:`_start_cluster` and implement
    :meth:`stop` (calling :meth:`_finish_stop`) and :meth:`is_running`.
    """

    _error: ClassVar[type[RuntimeError]]
    _tempdir_prefix: ClassVar[str]
    _url_scheme: ClassVar[str]
    # How often the waits below ask again.
    _poll_interval: ClassVar[float] = 0.05

    def __init__(
        self,
        replicas: int,
        *,
        base_dir: Path | None,
        user: str,
        password: str,
        database: str,
        superuser: str,
        superuser_password: str,
        keep: bool,
    ) -> None:
        self._replica_count = replicas
        self._requested_base_dir = base_dir
        self.user = user
        self.password = password
        self.database = database
        self.superuser = superuser
        self.superuser_password = superuser_password
        self.keep = keep or os.environ.get(KEEP_ENV, "") not in ("", "0")

        self._account: ServerAccount | None = None
        self._base_dir: Path | None = None
        self._owns_base_dir = False
        self._nodes: dict[str, NodeT] = {}
        self._primary_name: str | None = None
        self._replica_names: list[str] = []
        self._atexit_registered = False

    # ----------------------------------------------------------------- bookkeeping

    @property
    def base_dir(self) -> Path:
        """The directory holding every node directory (valid once :meth:`start` ran)."""
        if self._base_dir is None:
            raise self._error("the cluster has not been started")
        return self._base_dir

    @property
    def primary(self) -> NodeT:
        """The node currently acting as primary (the promoted one after :meth:`promote`)."""
        if self._primary_name is None:
            raise self._error("the cluster has not been started")
        return self._nodes[self._primary_name]

    @property
    def replicas(self) -> list[NodeT]:
        """The current replicas, running or stopped, in the order they became replicas."""
        return [self._nodes[name] for name in self._replica_names]

    @property
    def nodes(self) -> list[NodeT]:
        """Every node ever created, in creation order (a demoted old primary included)."""
        return list(self._nodes.values())

    def node(self, name: str) -> NodeT:
        """Return the node called ``name`` (``primary``, ``replica1``, ...)."""
        try:
            return self._nodes[name]
        except KeyError:
            raise self._error(f"no node named {name!r}") from None

    def is_running(self, node: NodeT) -> bool:
        raise NotImplementedError

    def url(
        self,
        node: NodeT,
        *,
        user: str | None = None,
        password: str | None = None,
        database: str | None = None,
    ) -> str:
        """A ``<scheme>://user:password@host:port/database`` URL, the login user's by default."""
        return (
            f"{self._url_scheme}://{quote(self.user if user is None else user, safe='')}"
            f":{quote(self.password if password is None else password, safe='')}"
            f"@{node.host}:{node.port}"
            f"/{quote(self.database if database is None else database, safe='')}"
        )

    # ----------------------------------------------------------------- lifecycle

    def start(self) -> Self:
        """Create and start the primary and every replica; return once all replicate."""
        if self._primary_name is not None:
            raise self._error("the cluster is already started")
        self._find_programs()
        self._prepare_base_dir()
        self._register_atexit()
        try:
            self._start_cluster()
        except BaseException:
            self.stop()
            raise
        return self

    def _find_programs(self) -> None:
        """Locate the server programs and set ``self._account``."""
        raise NotImplementedError

    def _start_cluster(self) -> None:
        raise NotImplementedError

    def _finish_stop(self, running: Iterable[NodeT], errors: Sequence[str]) -> None:
        """The end of :meth:`stop`: drop the atexit hook, remove the files unless ``keep``,
        and raise if a node of ``running`` still runs."""
        if self._atexit_registered:
            atexit.unregister(self._atexit_stop)
            self._atexit_registered = False
        if self._base_dir is not None and not self.keep:
            self._remove_files()
        still = [node.name for node in running if self.is_running(node)]
        if still:
            raise self._error(f"could not stop {still}: {'; '.join(errors)}")

    # ----------------------------------------------------------------- waiting

    def _wait_replicas(
        self,
        problems: Callable[[], dict[str, str]],
        timeout: float,
        failure: Callable[[dict[str, str]], str],
    ) -> None:
        """Ask ``problems()`` ({node name: what is wrong}) until it is empty; after ``timeout``
        seconds raise ``failure(problems)`` with the log tails of the primary and those nodes."""
        deadline = time.monotonic() + timeout
        while True:
            found = problems()
            if not found:
                return
            if time.monotonic() >= deadline:
                involved = [self.primary, *(self._nodes[name] for name in sorted(found))]
                raise self._error(f"{failure(found)}\n{self._log_tails(involved)}")
            time.sleep(self._poll_interval)

    def _wait_login(self, node: NodeT, deadline: float) -> None:
        """Wait until the login user can connect to ``node`` over TCP (:meth:`_try_login`)."""
        while True:
            result = self._try_login(node)
            if result.returncode == 0:
                return
            if time.monotonic() >= deadline:
                raise self._error(
                    f"user {self.user!r} cannot log in to {node.name} ({node.address()}): "
                    f"{result.stderr.strip()}\n{self._log_tails([node])}"
                )
            time.sleep(self._poll_interval)

    def _try_login(self, node: NodeT) -> subprocess.CompletedProcess[str]:
        """Run the command-line client once as the login user against ``node`` over TCP."""
        raise NotImplementedError

    # ----------------------------------------------------------------- logs

    def log_tail(self, node: NodeT, lines: int = 50) -> str:
        """The last ``lines`` lines of ``node``'s server log ("" if it does not exist)."""
        try:
            text = node.log_file.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def log_tails(self, lines: int = 50) -> str:
        """Log tails of every node, each under a header naming the node."""
        return self._log_tails(self.nodes, lines)

    def _log_tails(self, nodes: Iterable[NodeT], lines: int = 50) -> str:
        parts = []
        for node in nodes:
            parts.append(f"----- {node.name} ({node.address()}) {node.log_file} -----")
            parts.append(self.log_tail(node, lines) or "(no log)")
        return "\n".join(parts)

    # ----------------------------------------------------------------- internals

    def _prepare_base_dir(self) -> None:
        if self._requested_base_dir is None:
            self._base_dir = Path(tempfile.mkdtemp(prefix=self._tempdir_prefix))
            self._owns_base_dir = True
        else:
            base = self._requested_base_dir.resolve()
            self._owns_base_dir = not base.exists()
            base.mkdir(parents=True, exist_ok=True)
            self._base_dir = base
        if self._account is not None:
            os.chown(self._base_dir, self._account.uid, self._account.gid)
            blocked = untraversable_parent(self._base_dir, self._account)
            if blocked is not None:
                raise self._error(
                    f"the server user {self._account.name!r} cannot traverse {blocked}: "
                    f"pick a base_dir whose parents are world-searchable (e.g. under /tmp)"
                )

    def _make_node_dir(self, name: str) -> Path:
        """Create the private directory of node ``name``, owned by the server account."""
        node_dir = self.base_dir / name
        if node_dir.exists():
            raise self._error(f"{node_dir} already exists; use an empty base_dir")
        node_dir.mkdir(mode=0o700)
        self._chown(node_dir)
        return node_dir

    def _chown(self, path: Path) -> None:
        if self._account is not None:
            os.lchown(path, self._account.uid, self._account.gid)

    def _env_as_account(self, env: dict[str, str]) -> dict[str, str]:
        """``env`` with ``HOME``, ``USER`` and ``LOGNAME`` of the server account, if any."""
        if self._account is not None:
            env["HOME"] = str(self.base_dir)
            env["USER"] = env["LOGNAME"] = self._account.name
        return env

    def _retry_port_clash(
        self, node: NodeT, attempt: Callable[[NodeT], None], move: Callable[[NodeT], NodeT]
    ) -> NodeT:
        """Run ``attempt(node)``; when it fails with "already in use" in the node's log, let
        ``move`` give the node a new port (and relaunch it if needed) and try again.

        Free ports are closed before the server binds them, so another process may grab one
        meanwhile; picking a new port beats failing the whole run.
        """
        for tries in range(_PORT_RETRIES):
            try:
                attempt(node)
                return node
            except self._error:
                if tries + 1 == _PORT_RETRIES or "already in use" not in self.log_tail(node):
                    raise
            node = move(node)
            self._nodes[node.name] = node
        raise AssertionError("unreachable")

    def _atexit_stop(self) -> None:
        with contextlib.suppress(Exception):
            self.stop()

    def _register_atexit(self) -> None:
        if not self._atexit_registered:
            atexit.register(self._atexit_stop)
            self._atexit_registered = True

    def _remove_files(self) -> None:
        assert self._base_dir is not None
        if self._owns_base_dir:
            shutil.rmtree(self._base_dir, ignore_errors=True)
        else:
            for node in self.nodes:
                shutil.rmtree(node.node_dir, ignore_errors=True)
