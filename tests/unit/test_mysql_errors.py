"""The error vocabulary (core.errors) and its MySQL tables (mysql.errors)."""

from __future__ import annotations

import re

import pytest

from dbbalancer.core.errors import (
    PROBE_AT_ONCE,
    RETRY_ON_PRIMARY,
    SERVER_GOING_AWAY,
    ErrorClass,
    ErrorCode,
)
from dbbalancer.mysql.codec import ErrPacket
from dbbalancer.mysql.errors import (
    ERROR_CLASSES,
    ERRORS,
    class_of,
    errno_of,
    error_of,
    sqlstate_of,
)

# Five characters of digits and upper-case letters.
WELL_FORMED = re.compile(r"[0-9A-Z]{5}")


def test_every_error_code_has_an_errno_and_sqlstate() -> None:
    missing = [code for code in ErrorCode if code not in ERRORS]
    assert not missing, f"no MySQL error for {missing}"
    assert set(ERRORS) == set(ErrorCode)


@pytest.mark.parametrize("code", list(ErrorCode))
def test_errors_are_well_formed_and_encodable(code: ErrorCode) -> None:
    errno, sqlstate = error_of(code)
    assert (errno_of(code), sqlstate_of(code)) == (errno, sqlstate)
    assert WELL_FORMED.fullmatch(sqlstate)
    # Server errors are 1000-1999 and 3000+; client errors (CR_*) 2000-2999; all fit in u16.
    assert 1000 <= errno < 0x10000
    packet = ErrPacket(errno, sqlstate, "message")
    assert ErrPacket.decode(packet.encode()) == packet


def test_every_error_class_but_other_has_an_errno() -> None:
    assert set(ERROR_CLASSES.values()) == set(ErrorClass) - {ErrorClass.OTHER}


@pytest.mark.parametrize(
    ("errno", "error_class"),
    [
        (1290, ErrorClass.READ_ONLY),  # ER_OPTION_PREVENTS_STATEMENT (--read-only)
        (1792, ErrorClass.READ_ONLY),  # ER_CANT_EXECUTE_IN_READ_ONLY_TRANSACTION
        (1053, ErrorClass.SHUTTING_DOWN),  # ER_SERVER_SHUTDOWN
        (1077, ErrorClass.SHUTTING_DOWN),  # ER_NORMAL_SHUTDOWN
        (2013, ErrorClass.SHUTTING_DOWN),  # CR_SERVER_LOST
        (2006, ErrorClass.SHUTTING_DOWN),  # CR_SERVER_GONE_ERROR
        (1040, ErrorClass.CANNOT_CONNECT_NOW),  # too many connections
        (1045, ErrorClass.AUTHENTICATION_FAILED),  # access denied
        (1054, ErrorClass.OTHER),  # unknown column: the request's problem
        (1146, ErrorClass.OTHER),  # no such table
        (1213, ErrorClass.OTHER),  # deadlock
    ],
)
def test_server_errnos_fall_in_their_class(errno: int, error_class: ErrorClass) -> None:
    assert class_of(errno) is error_class


def test_decisions_key_on_the_expected_errnos() -> None:
    def errnos(classes: frozenset[ErrorClass]) -> set[int]:
        return {e for e, c in ERROR_CLASSES.items() if c in classes}

    assert errnos(RETRY_ON_PRIMARY) == {1290, 1792}
    assert {1290, 1792, 1053, 1077, 2013} <= errnos(PROBE_AT_ONCE)
    assert not errnos(SERVER_GOING_AWAY) & errnos(RETRY_ON_PRIMARY)


def test_errors_a_client_must_see_as_connection_trouble() -> None:
    # Drivers reconnect on these; a refusal of the request itself must not look like them.
    assert error_of(ErrorCode.SERVER_CONNECTION_LOST) == (2013, "HY000")
    assert error_of(ErrorCode.SERVER_UNAVAILABLE) == (2003, "HY000")
    assert error_of(ErrorCode.SHUTTING_DOWN) == (1053, "08S01")
    assert error_of(ErrorCode.AUTHENTICATION_FAILED) == (1045, "28000")
    assert error_of(ErrorCode.UNKNOWN_DATABASE) == (1049, "42000")
