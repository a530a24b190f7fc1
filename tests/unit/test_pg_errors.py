"""The error vocabulary (core.errors) and its PostgreSQL tables (postgres.errors)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from dbbalancer.core.errors import (
    PROBE_AT_ONCE,
    RETRY_ON_PRIMARY,
    SERVER_GOING_AWAY,
    ErrorClass,
    ErrorCode,
)
from dbbalancer.core.health import ProbeFailure
from dbbalancer.postgres.backend import ServerError
from dbbalancer.postgres.errors import ERROR_CLASSES, SQLSTATE, class_of, sqlstate_of
from dbbalancer.postgres.probe import probe_failure

POSTGRES = Path(__file__).resolve().parents[2] / "src" / "dbbalancer" / "postgres"
# Five characters of digits and upper-case letters (PostgreSQL, Appendix A).
WELL_FORMED = re.compile(r"[0-9A-Z]{5}")
# A quoted string that looks like a SQLSTATE: a class of two characters (a digit first, or one of
# PostgreSQL's lettered classes), then three more.
QUOTED_SQLSTATE = re.compile(r"""["'](?:[0-9][0-9A-Z]|XX|P0|F0|HV)[0-9A-Z]{3}["']""")

# What the balancer sent before the vocabulary existed: a client must see the same codes.
BEFORE = {
    ErrorCode.PROTOCOL_VIOLATION: "08P01",
    ErrorCode.LOGIN_TIMEOUT: "08P01",
    ErrorCode.UNSUPPORTED_PROTOCOL_VERSION: "0A000",
    ErrorCode.UNSUPPORTED_SERVER_AUTHENTICATION: "0A000",
    ErrorCode.REPLICATION_REFUSED: "0A000",
    ErrorCode.NO_USER_NAME: "28000",
    ErrorCode.UNSUPPORTED_AUTHENTICATION_MECHANISM: "28000",
    ErrorCode.AUTHENTICATION_FAILED: "28P01",
    ErrorCode.UNKNOWN_DATABASE: "3D000",
    ErrorCode.CLIENT_LIMIT: "53300",
    ErrorCode.POOL_TIMEOUT: "53300",
    ErrorCode.SERVER_UNAVAILABLE: "08006",
    ErrorCode.SERVER_CONNECTION_LOST: "08006",
    ErrorCode.TRANSACTION_IN_STATEMENT_MODE: "0A000",
    ErrorCode.SESSION_STATE_REFUSED: "0A000",
    ErrorCode.SEQUENCE_STATE_UNAVAILABLE: "55000",
    ErrorCode.IDLE_TRANSACTION_TIMEOUT: "25P03",
    ErrorCode.SHUTTING_DOWN: "57P01",
    ErrorCode.INTERNAL_ERROR: "XX000",
}


def test_every_error_code_has_a_sqlstate() -> None:
    missing = [code for code in ErrorCode if code not in SQLSTATE]
    assert not missing, f"no SQLSTATE for {missing}"
    assert set(SQLSTATE) == set(ErrorCode)


@pytest.mark.parametrize("code", list(ErrorCode))
def test_sqlstates_are_well_formed(code: ErrorCode) -> None:
    assert WELL_FORMED.fullmatch(sqlstate_of(code)), (code, sqlstate_of(code))


def test_sqlstates_are_those_clients_saw_before() -> None:
    assert dict(SQLSTATE) == BEFORE


def test_every_error_class_but_other_has_a_sqlstate() -> None:
    mapped = set(ERROR_CLASSES.values())
    assert mapped == set(ErrorClass) - {ErrorClass.OTHER}
    assert all(WELL_FORMED.fullmatch(sqlstate) for sqlstate in ERROR_CLASSES)


@pytest.mark.parametrize(
    ("sqlstate", "error_class"),
    [
        ("25006", ErrorClass.READ_ONLY),
        ("57P01", ErrorClass.SHUTTING_DOWN),
        ("57P02", ErrorClass.SHUTTING_DOWN),
        ("57P03", ErrorClass.CANNOT_CONNECT_NOW),
        ("28P01", ErrorClass.AUTHENTICATION_FAILED),
        ("28000", ErrorClass.AUTHENTICATION_FAILED),
        ("42P01", ErrorClass.OTHER),  # undefined_table: the request's problem
        ("", ErrorClass.OTHER),  # an ErrorResponse without a code
    ],
)
def test_server_sqlstates_fall_in_their_class(sqlstate: str, error_class: ErrorClass) -> None:
    assert class_of(sqlstate) is error_class


def test_decisions_key_on_the_classes_they_did_as_sqlstates() -> None:
    def sqlstates(classes: frozenset[ErrorClass]) -> set[str]:
        return {s for s, c in ERROR_CLASSES.items() if c in classes}

    assert sqlstates(PROBE_AT_ONCE) == {"25006", "57P01", "57P02", "57P03"}
    assert sqlstates(RETRY_ON_PRIMARY) == {"25006"}
    assert sqlstates(SERVER_GOING_AWAY) == {"57P01", "57P02", "57P03"}


@pytest.mark.parametrize(
    ("sqlstate", "failure"),
    [
        ("28P01", ProbeFailure.AUTH_FAILED),
        ("28000", ProbeFailure.AUTH_FAILED),
        ("57P01", ProbeFailure.SHUTTING_DOWN),
        ("57P02", ProbeFailure.SHUTTING_DOWN),
        ("57P03", ProbeFailure.SHUTTING_DOWN),
        ("25006", ProbeFailure.SERVER_ERROR),
        ("42P01", ProbeFailure.SERVER_ERROR),
    ],
)
def test_probe_failures_follow_the_error_class(sqlstate: str, failure: ProbeFailure) -> None:
    assert probe_failure(ServerError(sqlstate, "refused")) is failure


def test_no_sqlstate_literal_outside_the_table() -> None:
    """Every SQLSTATE the postgres package names comes from postgres/errors.py."""
    found = [
        f"{path.name}:{number}: {line.strip()}"
        for path in sorted(POSTGRES.glob("*.py"))
        if path.name != "errors.py"
        for number, line in enumerate(path.read_text("utf-8").splitlines(), 1)
        if QUOTED_SQLSTATE.search(line)
    ]
    assert not found, found
