"""The MySQL/MariaDB probe's pure parts: the statements per server, the answer's parsing and
the classification of failures."""

from __future__ import annotations

import pytest

from dbbalancer.core.health import ObservedRole, ProbeFailure, ProbeResult
from dbbalancer.mysql.backend import ConnectionClosed, ResultSet, ServerError, ServerUnavailable
from dbbalancer.mysql.codec import ProtocolError
from dbbalancer.mysql.gtid import MariaDbGtidPos, MySqlGtidSet
from dbbalancer.mysql.probe import (
    SHOW_REPLICA_STATUS,
    SHOW_SLAVE_STATUS,
    ProbeAnswerError,
    parse_probe,
    probe_failure,
    probe_query,
    server_id_of,
)

MARIADB = "5.5.5-10.11.6-MariaDB-0+deb12u1-log"
UUID = "3e11fa47-71ca-11e1-9e33-c80aa9429562"
Row = tuple[bytes | None, ...]


def variables(read_only: bytes, gtids: bytes = b"0-1-5", threads: bytes | None = b"3") -> ResultSet:
    return ResultSet(("ro", "id", "pos", "threads"), [(read_only, b"7", gtids, threads)])


def slave_status(io: bytes = b"Yes", sql: bytes = b"Yes", behind: bytes | None = b"2") -> ResultSet:
    columns = ("Slave_IO_State", "Slave_IO_Running", "Slave_SQL_Running", "Seconds_Behind_Master")
    return ResultSet(columns, [(b"Waiting", io, sql, behind)])


@pytest.mark.parametrize(
    ("version", "status"),
    [
        (MARIADB, SHOW_SLAVE_STATUS),
        ("8.0.21", SHOW_SLAVE_STATUS),
        ("8.0.22", SHOW_REPLICA_STATUS),
        ("8.4.0-commercial", SHOW_REPLICA_STATUS),
        ("5.7.44-log", SHOW_SLAVE_STATUS),
    ],
)
def test_probe_query_per_server(version: str, status: str) -> None:
    query = probe_query(version)
    assert query.endswith(f"; {status}")
    assert ("gtid_current_pos" in query) is ("MariaDB" in version)
    assert ("gtid_executed" in query) is ("MariaDB" not in version)
    assert ";" not in probe_query(version, with_status=False)


def test_primary() -> None:
    result = parse_probe([variables(b"0"), ResultSet((), [])], 0.01, mariadb=True)
    assert result == ProbeResult(
        ok=True,
        role=ObservedRole.PRIMARY,
        position=MariaDbGtidPos.parse("0-1-5"),
        load=2.0,  # without the probe's own thread
        latency=0.01,
    )


def test_replica_with_lag() -> None:
    result = parse_probe([variables(b"1"), slave_status()], 0.01, mariadb=True)
    assert result.ok
    assert result.role is ObservedRole.REPLICA
    assert result.replay_delay == 2.0


def test_mysql_position_and_replica_columns() -> None:
    status = ResultSet(
        ("Replica_IO_Running", "Replica_SQL_Running", "Seconds_Behind_Source"),
        [(b"Connecting", b"Yes", None)],
    )
    result = parse_probe(
        [variables(b"1", f"{UUID}:1-9".encode(), None), status], 0.01, mariadb=False
    )
    assert result.ok
    assert result.position == MySqlGtidSet.parse(f"{UUID}:1-9")
    assert result.replay_delay is None  # the IO thread reconnects: lag unknown
    assert result.load is None


@pytest.mark.parametrize(
    "status",
    [
        slave_status(sql=b"No"),
        slave_status(io=b"No"),
        slave_status(io=b"Yes", sql=b"No", behind=None),
        ResultSet(("Slave_IO_Running",), []),  # replicating from nobody
    ],
)
def test_replica_not_replicating_fails(status: ResultSet) -> None:
    result = parse_probe([variables(b"1"), status], 0.01, mariadb=True)
    assert result == ProbeResult.failed(ProbeFailure.REPLICATION_STOPPED)


def test_without_the_status_privilege_roles_still_come_through() -> None:
    result = parse_probe([variables(b"1")], 0.01, mariadb=True, with_status=False)
    assert result.ok
    assert result.role is ObservedRole.REPLICA
    assert result.replay_delay is None


@pytest.mark.parametrize(
    ("results", "message"),
    [
        ([variables(b"0")], "expected 2 result sets"),
        ([ResultSet(("a",), [(b"0",)]), slave_status()], "one row of 4 columns"),
        ([variables(b"2"), slave_status()], "read_only: not 0 or 1"),
        ([variables(b"0", b"garbage"), slave_status()], "position: 'garbage'"),
        ([variables(b"0", threads=b"many"), slave_status()], "not a number"),
        ([variables(b"1"), ResultSet(("x",), [(b"1",)])], "without thread or lag columns"),
        ([variables(b"1"), slave_status(behind=b"\xff")], "not ASCII"),
    ],
)
def test_malformed_answers(results: list[ResultSet], message: str) -> None:
    with pytest.raises(ProbeAnswerError, match=message):
        parse_probe(results, 0.01, mariadb=True)


def test_server_id() -> None:
    assert server_id_of([variables(b"0")]) == 7
    assert server_id_of([]) is None


def _wrapped(inner: BaseException) -> ServerUnavailable:
    try:
        raise ServerUnavailable("wrapped") from inner
    except ServerUnavailable as exc:
        return exc


@pytest.mark.parametrize(
    ("exc", "failure"),
    [
        (ServerError(1045, "28000", "Access denied"), ProbeFailure.AUTH_FAILED),
        (ServerError(1053, "08S01", "Server shutdown in progress"), ProbeFailure.SHUTTING_DOWN),
        (ServerError(1040, "08004", "Too many connections"), ProbeFailure.SHUTTING_DOWN),
        (ServerError(1146, "42S02", "no such table"), ProbeFailure.SERVER_ERROR),
        (ServerUnavailable("plugin client_ed25519"), ProbeFailure.AUTH_FAILED),
        (_wrapped(ConnectionRefusedError()), ProbeFailure.REFUSED),
        (_wrapped(ServerError(1040, None, "Too many")), ProbeFailure.SHUTTING_DOWN),
        (_wrapped(ProtocolError("bad greeting")), ProbeFailure.SERVER_ERROR),
        (TimeoutError(), ProbeFailure.TIMEOUT),
        (ConnectionClosed("closed"), ProbeFailure.CONNECTION_LOST),
        (ConnectionResetError(), ProbeFailure.CONNECTION_LOST),
        (OSError("no route"), ProbeFailure.REFUSED),
        (ProbeAnswerError("odd"), ProbeFailure.SERVER_ERROR),
    ],
)
def test_probe_failure_table(exc: BaseException, failure: ProbeFailure) -> None:
    assert probe_failure(exc) is failure
