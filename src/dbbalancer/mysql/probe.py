"""MySQL/MariaDB health probe: role, replication position, replica threads and lag, load.

One dedicated connection per server, opened with `connect_server` and re-opened after any
failure; each probe is one COM_QUERY round trip of two statements (multi-statements):

1. ``SELECT @@read_only, @@server_id, <position>, <load>``: ``read_only = 0`` is the primary
   role, ``1`` a replica (``super_read_only`` implies ``read_only``). The position is MariaDB's
   ``@@gtid_current_pos`` (`MariaDbGtidPos`) or MySQL's ``@@gtid_executed`` (`MySqlGtidSet`),
   told apart by the greeting's version string. The load is MariaDB's ``Threads_running``
   (``information_schema.GLOBAL_STATUS``) without the probe's own thread; None on MySQL.
2. ``SHOW SLAVE STATUS`` (MariaDB, MySQL before 8.0.22) or ``SHOW REPLICA STATUS``: a
   read-only server must be replicating. ``Slave_SQL_Running`` (``Replica_SQL_Running``) other
   than ``Yes``, ``Slave_IO_Running`` ``No``, or no replication configured at all make the probe
   fail with `ProbeFailure.REPLICATION_STOPPED`: such a server's data only gets staler. An IO
   thread that is ``Connecting`` (the primary is down or failing over) still serves reads, with
   an unknown lag. ``Seconds_Behind_Master`` (``Seconds_Behind_Source``) is the replay delay.
   Without the privilege to read it (ER_SPECIFIC_ACCESS_DENIED_ERROR; MariaDB needs
   ``SLAVE MONITOR``, MySQL ``REPLICATION CLIENT``) the probe logs a warning once and goes on
   with the first statement alone: roles and positions, no lag and no stopped-thread check.

Election: MySQL and MariaDB have no timeline, so probes report no epoch and
`core.health.elect_primary` applies its rule for protocols without one: exactly one writable
server is the primary; two or more writable servers (split brain) are all fenced and writes are
refused until one of them is made read-only, stopped or banned. Configured roles still help:
a server configured ``replica`` that turns writable while another is the elected primary fails
its probes with WRONG_ROLE (`core.monitor.vet_role`) and is no claimant at all.

Whatever goes wrong comes back as a failed `ProbeResult` (see `probe_failure`): the health
monitor's contract is that a prober never raises.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from decimal import Decimal, InvalidOperation

from dbbalancer.core.health import (
    ObservedRole,
    ProbeFailure,
    ProbeResult,
    failure_of_server_error,
    failure_of_transport,
)
from dbbalancer.core.position import Position
from dbbalancer.core.topology import Server
from dbbalancer.mysql.backend import (
    ConnectionClosed,
    ResultSet,
    ServerConnection,
    ServerError,
    ServerUnavailable,
    connect_server,
)
from dbbalancer.mysql.codec import ProtocolError
from dbbalancer.mysql.errors import class_of
from dbbalancer.mysql.gtid import MariaDbGtidPos, MySqlGtidSet

__all__ = [
    "SHOW_REPLICA_STATUS",
    "SHOW_SLAVE_STATUS",
    "MyProber",
    "ProbeAnswerError",
    "parse_probe",
    "probe_failure",
    "probe_query",
    "server_id_of",
]

log = logging.getLogger(__name__)

ER_SPECIFIC_ACCESS_DENIED_ERROR = 1227
_MARIADB_VARIABLES = (
    "SELECT @@read_only, @@server_id, @@gtid_current_pos, "
    "(SELECT VARIABLE_VALUE FROM information_schema.GLOBAL_STATUS "
    "WHERE VARIABLE_NAME = 'THREADS_RUNNING')"
)
_MYSQL_VARIABLES = "SELECT @@read_only, @@server_id, @@gtid_executed, NULL"
SHOW_SLAVE_STATUS = "SHOW SLAVE STATUS"
SHOW_REPLICA_STATUS = "SHOW REPLICA STATUS"  # MySQL 8.0.22+; SHOW SLAVE STATUS is deprecated
_VERSION = re.compile(r"(\d+)\.(\d+)\.(\d+)")


class ProbeAnswerError(Exception):
    """The probe's answer did not have the expected shape."""


def probe_query(server_version: str, *, with_status: bool = True) -> str:
    """The probe's statements for a server announcing `server_version`."""
    mariadb = "mariadb" in server_version.lower()
    variables = _MARIADB_VARIABLES if mariadb else _MYSQL_VARIABLES
    if not with_status:
        return variables
    status = SHOW_SLAVE_STATUS
    match = _VERSION.search(server_version)
    if not mariadb and match is not None:
        version = tuple(int(part) for part in match.groups())
        if version >= (8, 0, 22):
            status = SHOW_REPLICA_STATUS
    return f"{variables}; {status}"


def probe_failure(exc: BaseException) -> ProbeFailure:
    """Classify why a probe failed, from what `connect_server` or a query raised.

    `ServerUnavailable` wraps the underlying error as its cause (OSError, ProtocolError, a
    refusal) or context (timeout, connection closed during login); one raised without either
    is a login the proxy cannot do (an authentication plugin it does not speak).
    """
    if isinstance(exc, ServerUnavailable):
        inner = exc.__cause__ or exc.__context__
        return ProbeFailure.AUTH_FAILED if inner is None else probe_failure(inner)
    if isinstance(exc, ServerError):
        return failure_of_server_error(class_of(exc.errno))
    return failure_of_transport(exc, ConnectionClosed)


def _text(value: bytes | None, column: str) -> str | None:
    if value is None:
        return None
    try:
        return value.decode("ascii")
    except UnicodeDecodeError:
        raise ProbeAnswerError(f"{column}: not ASCII: {value!r}") from None


def _number(value: bytes | None, column: str) -> Decimal | None:
    text = _text(value, column)
    if text is None or text == "":
        return None
    try:
        number = Decimal(text)
    except InvalidOperation:
        raise ProbeAnswerError(f"{column}: not a number: {text!r}") from None
    if not number.is_finite():
        raise ProbeAnswerError(f"{column}: not a finite number: {text!r}")
    return number


def _position(value: bytes | None, mariadb: bool) -> Position:
    text = _text(value, "position") or ""
    try:
        return MariaDbGtidPos.parse(text) if mariadb else MySqlGtidSet.parse(text)
    except ValueError as bad:
        raise ProbeAnswerError(f"position: {bad}") from None


def _replica_state(status: ResultSet | None) -> tuple[bool, float | None, str]:
    """(replicating, replay delay, why not) from SHOW SLAVE/REPLICA STATUS; None: unknown."""
    if status is None:
        return True, None, ""
    if not status.rows:
        return False, None, "read-only and replicating from nobody"
    row = status.rows[0]
    io_at = status.column("Slave_IO_Running", "Replica_IO_Running")
    sql_at = status.column("Slave_SQL_Running", "Replica_SQL_Running")
    delay_at = status.column("Seconds_Behind_Master", "Seconds_Behind_Source")
    if io_at is None or sql_at is None or delay_at is None:
        raise ProbeAnswerError(f"replication status without thread or lag columns: {status}")
    io, sql = _text(row[io_at], "io_running"), _text(row[sql_at], "sql_running")
    if sql != "Yes" or io == "No":
        return False, None, f"replication threads IO={io} SQL={sql}"
    delay = _number(row[delay_at], "seconds_behind")
    return True, None if delay is None else max(0.0, float(delay)), ""


def parse_probe(
    results: list[ResultSet], latency: float, *, mariadb: bool, with_status: bool = True
) -> ProbeResult:
    """Turn the answer to `probe_query` into a result (role, position, lag, load)."""
    if len(results) != (2 if with_status else 1):
        raise ProbeAnswerError(f"expected {2 if with_status else 1} result sets: {results}")
    variables = results[0]
    if len(variables.rows) != 1 or len(variables.rows[0]) != 4:
        raise ProbeAnswerError(f"expected one row of 4 columns, got {variables.rows}")
    read_only, _server_id, gtids, threads_running = variables.rows[0]
    flag = _text(read_only, "read_only")
    if flag not in ("0", "1"):
        raise ProbeAnswerError(f"read_only: not 0 or 1: {flag!r}")
    position = _position(gtids, mariadb)
    threads = _number(threads_running, "threads_running")
    load = None if threads is None else max(0.0, float(threads) - 1)
    if flag == "0":
        return ProbeResult(
            ok=True, role=ObservedRole.PRIMARY, position=position, load=load, latency=latency
        )
    replicating, delay, why = _replica_state(results[1] if with_status else None)
    if not replicating:
        log.debug("probe: %s", why)
        return ProbeResult.failed(ProbeFailure.REPLICATION_STOPPED)
    return ProbeResult(
        ok=True,
        role=ObservedRole.REPLICA,
        position=position,
        replay_delay=delay,
        load=load,
        latency=latency,
    )


def server_id_of(results: list[ResultSet]) -> int | None:
    """@@server_id from the probe's answer (None if it is not there)."""
    try:
        number = _number(results[0].rows[0][1], "server_id")
    except (IndexError, ProbeAnswerError):
        return None
    return None if number is None else int(number)


class MyProber:
    """A dedicated probe connection per server (re-opened after any failure), one round trip
    per probe. Callable as a `core.monitor.Prober`.

    `connect_timeout` bounds the login and, separately, the probe query, so that the prober
    returns even when used without the monitor's own timeout. `server_ids` keeps each server's
    last @@server_id; two servers with the same one are logged (replication between them
    cannot work).
    """

    def __init__(
        self,
        *,
        user: str,
        password: str | None,
        database: str | None,
        connect_timeout: float,
        max_payload: int = 1 << 20,
    ) -> None:
        self._user = user
        self._password = password
        self._database = database
        self._connect_timeout = connect_timeout
        self._max_payload = max_payload
        self._connections: dict[str, ServerConnection] = {}
        # The monitor probes each server from one task; the lock keeps a second caller from
        # interleaving its query with the first on the shared connection.
        self._locks: dict[str, asyncio.Lock] = {}
        # Servers whose replication status the probe user may not read (warned once).
        self._no_status: set[str] = set()
        self.server_ids: dict[str, int] = {}

    async def __call__(self, server: Server) -> ProbeResult:
        """Probe `server` once; never raises (cancellation excepted)."""
        lock = self._locks.setdefault(server.name, asyncio.Lock())
        async with lock:
            try:
                return await self._probe(server)
            except BaseException as exc:
                # Cancelled mid-query (the monitor's timeout) or failed: the connection's state
                # is unknown either way, and the next probe starts from a new one.
                self._discard(server.name)
                if not isinstance(exc, Exception):
                    raise
                failure = probe_failure(exc)
                log.debug(
                    "probe of %s (%s) failed: %s: %s",
                    server.name,
                    server.address,
                    failure.value,
                    exc,
                )
                if isinstance(exc, ProbeAnswerError | ProtocolError):
                    log.warning("probe of %s (%s): %s", server.name, server.address, exc)
                return ProbeResult.failed(failure)

    async def _probe(self, server: Server) -> ProbeResult:
        conn = await self._connection(server)
        with_status = server.name not in self._no_status
        started = time.perf_counter()
        try:
            async with asyncio.timeout(self._connect_timeout):
                results = await conn.query_sets(
                    probe_query(conn.server_version, with_status=with_status)
                )
        except ServerError as refused:
            if not with_status or refused.errno != ER_SPECIFIC_ACCESS_DENIED_ERROR:
                raise
            log.warning(
                "probe of %s (%s): the probe user may not read the replication status (%s); "
                "probing roles and positions only, without lag or stopped-replica checks",
                server.name,
                server.address,
                refused.message,
            )
            self._no_status.add(server.name)
            return await self._probe(server)
        latency = time.perf_counter() - started
        self._note_server_id(server, server_id_of(results))
        return parse_probe(results, latency, mariadb=conn.is_mariadb, with_status=with_status)

    def _note_server_id(self, server: Server, server_id: int | None) -> None:
        if server_id is None:
            return
        self.server_ids[server.name] = server_id
        twins = [n for n, i in self.server_ids.items() if i == server_id and n != server.name]
        if twins:
            log.warning(
                "servers %s and %s both have server_id %d: replication between them fails",
                server.name,
                ", ".join(twins),
                server_id,
            )

    async def _connection(self, server: Server) -> ServerConnection:
        conn = self._connections.get(server.name)
        if conn is not None and conn.broken:
            # Closed while idle (KILL, wait_timeout, a restart; the server's goodbye is in
            # conn.unsolicited): only a new connection says what the server is now.
            for packet in conn.unsolicited:
                log.debug("probe connection to %s closed: %r", server.name, packet.payload[:80])
            self._discard(server.name)
            conn = None
        if conn is None:
            conn = await connect_server(
                server,
                user=self._user,
                password=self._password,
                database=self._database,
                connect_timeout=self._connect_timeout,
                max_payload=self._max_payload,
            )
            self._connections[server.name] = conn
        return conn

    def _discard(self, name: str) -> None:
        conn = self._connections.pop(name, None)
        if conn is not None:
            conn.abort()

    async def close(self) -> None:
        """Close every probe connection with COM_QUIT, so that servers do not count aborted
        connections."""
        connections = list(self._connections.values())
        self._connections.clear()
        for conn in connections:
            conn.close()
        for conn in connections:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._connect_timeout):
                    await conn.wait_closed()
