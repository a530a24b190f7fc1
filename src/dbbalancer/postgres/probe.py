"""PostgreSQL health probe: role, timeline, replication position, replay delay and load.

One dedicated connection per server, opened with `connect_server` and re-opened after any
failure; each probe is one simple-protocol round trip (protocol section "Simple Query") running
`PROBE_QUERY`. The functions it reads are documented in the PostgreSQL manual, "System
Administration Functions" (recovery information and control, backup control) and "The Cumulative
Statistics System" (pg_stat_activity, pg_stat_wal_receiver).

Whatever goes wrong comes back as a failed `ProbeResult` with a `ProbeFailure` (see
`probe_failure`): the health monitor's contract is that a prober never raises.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from decimal import Decimal, InvalidOperation

from dbbalancer.core.health import (
    ObservedRole,
    ProbeFailure,
    ProbeResult,
    failure_of_server_error,
    failure_of_transport,
)
from dbbalancer.core.topology import Server
from dbbalancer.postgres import codec
from dbbalancer.postgres.auth import AuthenticationFailed
from dbbalancer.postgres.backend import (
    ServerConnection,
    ServerError,
    ServerUnavailable,
    connect_server,
)
from dbbalancer.postgres.codec import ProtocolError
from dbbalancer.postgres.errors import class_of
from dbbalancer.postgres.framed import ConnectionClosed
from dbbalancer.postgres.lsn import Lsn

__all__ = ["PROBE_APPLICATION_NAME", "PROBE_QUERY", "PgProber", "parse_probe", "probe_failure"]

log = logging.getLogger(__name__)

PROBE_APPLICATION_NAME = "dbbalancer-probe"

# pg_is_in_recovery() is read once, in the FROM clause, so that every column describes the same
# side of a promotion that may complete while the query runs. CASE evaluates only the chosen
# branch, which matters: pg_current_wal_lsn() and pg_walfile_name() raise during recovery.
PROBE_QUERY = """\
SELECT
  -- 0 in_recovery: true on a standby (hot standby), false on a primary
  r.in_recovery,
  -- 1 position, bytes since 0/0: written WAL on a primary, replayed WAL on a standby
  (CASE WHEN r.in_recovery THEN pg_last_wal_replay_lsn() ELSE pg_current_wal_lsn() END)
    - '0/0'::pg_lsn,
  -- 2 timeline: a primary's current one is the first 8 hex digits of its WAL file name, which
  --   is the new timeline as soon as a promotion ends; a standby's is the one its WAL receiver
  --   streams (visible with pg_read_all_stats), else the one of its last restartpoint
  CASE WHEN r.in_recovery
    THEN coalesce((SELECT received_tli FROM pg_stat_wal_receiver),
                  (SELECT timeline_id FROM pg_control_checkpoint()))::bigint
    ELSE ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::bigint
  END,
  -- 3 replay delay, seconds (standby only): 0 when everything received is replayed, else the
  --   age of the last replayed transaction (NULL before any was replayed)
  CASE WHEN r.in_recovery THEN
    CASE WHEN pg_last_wal_receive_lsn() = pg_last_wal_replay_lsn() THEN 0::float8
      ELSE extract(epoch FROM now() - pg_last_xact_replay_timestamp())::float8 END
  END,
  -- 4 load: other client backends running a statement; without pg_read_all_stats only the
  --   probe user's own sessions show their state, so only those are counted
  (SELECT count(*) FROM pg_stat_activity
    WHERE state = 'active' AND backend_type = 'client backend' AND pid <> pg_backend_pid())
FROM (SELECT pg_is_in_recovery() AS in_recovery) AS r"""


class ProbeAnswerError(Exception):
    """The probe query's answer did not have the expected shape."""


def probe_failure(exc: BaseException) -> ProbeFailure:
    """Classify why a probe failed, from the exception `connect_server`/`simple_query` raised.

    `ServerUnavailable` wraps the underlying error as its cause (OSError, ProtocolError) or its
    context (timeout, connection closed during login); one raised without either is a login
    problem the server itself reported (no password configured, no common SASL mechanism).
    """
    if isinstance(exc, ServerUnavailable):
        inner = exc.__cause__ or exc.__context__
        return ProbeFailure.AUTH_FAILED if inner is None else probe_failure(inner)
    if isinstance(exc, ServerError):
        return failure_of_server_error(class_of(exc.sqlstate))
    if isinstance(exc, AuthenticationFailed):
        return ProbeFailure.AUTH_FAILED
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
    if text is None:
        return None
    try:
        number = Decimal(text)
    except InvalidOperation:
        raise ProbeAnswerError(f"{column}: not a number: {text!r}") from None
    if not number.is_finite():
        raise ProbeAnswerError(f"{column}: not a finite number: {text!r}")
    return number


def parse_probe(messages: list[codec.BackendMessage], latency: float) -> ProbeResult:
    """Turn the answer to `PROBE_QUERY` (the messages before ReadyForQuery) into a result."""
    rows = [m for m in messages if isinstance(m, codec.DataRow)]
    if len(rows) != 1:
        raise ProbeAnswerError(f"expected one row, got {len(rows)}")
    values = rows[0].values
    if len(values) != 5:
        raise ProbeAnswerError(f"expected 5 columns, got {len(values)}")
    in_recovery = _text(values[0], "in_recovery")
    if in_recovery not in ("t", "f"):
        raise ProbeAnswerError(f"in_recovery: not a boolean: {in_recovery!r}")
    position = _number(values[1], "position")
    timeline = _number(values[2], "timeline")
    delay = _number(values[3], "replay_delay")
    load = _number(values[4], "load")
    return ProbeResult(
        ok=True,
        role=ObservedRole.REPLICA if in_recovery == "t" else ObservedRole.PRIMARY,
        # The timeline is PostgreSQL's epoch: a promotion starts a higher one (elect_primary).
        epoch=None if timeline is None else int(timeline),
        position=None if position is None else Lsn(int(position)),
        # A standby's clock may run behind the primary's, making the age negative.
        replay_delay=None if delay is None else max(0.0, float(delay)),
        load=None if load is None else float(load),
        latency=latency,
    )


class PgProber:
    """A dedicated probe connection per server (re-opened after any failure), one round trip
    per probe. Callable as a `core.monitor.Prober`.

    `connect_timeout` bounds the login and, separately, the probe query, so that the prober
    returns even when used without the monitor's own timeout.
    """

    def __init__(
        self,
        *,
        user: str,
        password: str | None,
        database: str,
        connect_timeout: float,
        max_length: int = 1 << 20,
    ) -> None:
        self._user = user
        self._password = password
        self._database = database
        self._connect_timeout = connect_timeout
        self._max_length = max_length
        self._connections: dict[str, ServerConnection] = {}
        # The monitor probes each server from one task; the lock keeps a second caller from
        # interleaving its query with the first on the shared connection.
        self._locks: dict[str, asyncio.Lock] = {}

    async def __call__(self, server: Server) -> ProbeResult:
        """Probe `server` once; never raises (cancellation excepted)."""
        lock = self._locks.setdefault(server.name, asyncio.Lock())
        async with lock:
            try:
                conn = await self._connection(server)
                started = time.perf_counter()
                async with asyncio.timeout(self._connect_timeout):
                    messages = await conn.simple_query(PROBE_QUERY)
                return parse_probe(messages, time.perf_counter() - started)
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

    async def _connection(self, server: Server) -> ServerConnection:
        conn = self._connections.get(server.name)
        if conn is not None and (conn.broken or self._closed_by_server(conn)):
            # Closed while idle: pg_terminate_backend() on the probe's session, a restart, an
            # idle_session_timeout. Only a new connection says what the server is now (a server
            # that is shutting down refuses it with 57P03 or does not accept it at all).
            self._discard(server.name)
            conn = None
        if conn is None:
            conn = await connect_server(
                server,
                user=self._user,
                password=self._password,
                database=self._database,
                parameters={"application_name": PROBE_APPLICATION_NAME},
                connect_timeout=self._connect_timeout,
                max_length=self._max_length,
            )
            self._connections[server.name] = conn
        return conn

    @staticmethod
    def _closed_by_server(conn: ServerConnection) -> bool:
        closing = False
        for frame in conn.take_queued():
            # Between probes a server only speaks to say goodbye (a FATAL ErrorResponse, e.g.
            # 57P01 admin_shutdown) or to report a ParameterStatus change or a notice.
            msg = codec.decode_backend(frame)
            if isinstance(msg, codec.ErrorResponse):
                log.debug(
                    "probe connection to %s closed by the server: %s (SQLSTATE %s)",
                    conn.server.name,
                    msg.message,
                    msg.sqlstate,
                )
                closing = True
        return closing

    def _discard(self, name: str) -> None:
        conn = self._connections.pop(name, None)
        if conn is not None:
            conn.abort()

    async def close(self) -> None:
        """Close every probe connection with a Terminate message (protocol section
        "Termination"), so that servers do not log an unexpected EOF."""
        connections = list(self._connections.values())
        self._connections.clear()
        for conn in connections:
            conn.write(codec.Terminate().encode())
            conn.close()
        for conn in connections:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._connect_timeout):
                    await conn.wait_closed()
