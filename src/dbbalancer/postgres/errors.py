"""The balancer's error vocabulary (core/errors.py) in PostgreSQL's words: SQLSTATE.

Both directions, as complete tables (PostgreSQL documentation, Appendix A "PostgreSQL Error
Codes"; the condition name follows each code):

* `SQLSTATE`: every `ErrorCode` the balancer reports -> the SQLSTATE its ErrorResponse carries,
  chosen as PostgreSQL itself reports the same condition, so that clients and drivers react as
  they would to the server.
* `ERROR_CLASSES`: the SQLSTATEs of server errors that the balancer acts on -> their
  `ErrorClass`; any other SQLSTATE is `ErrorClass.OTHER` and only relayed.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Final

from dbbalancer.core.errors import ErrorClass, ErrorCode

SQLSTATE: Final[Mapping[ErrorCode, str]] = MappingProxyType(
    {
        ErrorCode.PROTOCOL_VIOLATION: "08P01",  # protocol_violation
        # PostgreSQL: "canceling authentication due to timeout" (authentication_timeout)
        ErrorCode.LOGIN_TIMEOUT: "08P01",  # protocol_violation
        ErrorCode.UNSUPPORTED_PROTOCOL_VERSION: "0A000",  # feature_not_supported
        ErrorCode.UNSUPPORTED_SERVER_AUTHENTICATION: "0A000",  # feature_not_supported
        ErrorCode.REPLICATION_REFUSED: "0A000",  # feature_not_supported
        ErrorCode.NO_USER_NAME: "28000",  # invalid_authorization_specification
        ErrorCode.UNSUPPORTED_AUTHENTICATION_MECHANISM: "28000",  # as above
        ErrorCode.AUTHENTICATION_FAILED: "28P01",  # invalid_password
        ErrorCode.UNKNOWN_DATABASE: "3D000",  # invalid_catalog_name
        ErrorCode.CLIENT_LIMIT: "53300",  # too_many_connections
        ErrorCode.POOL_TIMEOUT: "53300",  # too_many_connections
        ErrorCode.SERVER_UNAVAILABLE: "08006",  # connection_failure
        ErrorCode.SERVER_CONNECTION_LOST: "08006",  # connection_failure
        ErrorCode.TRANSACTION_IN_STATEMENT_MODE: "0A000",  # feature_not_supported
        ErrorCode.SESSION_STATE_REFUSED: "0A000",  # feature_not_supported
        ErrorCode.SEQUENCE_STATE_UNAVAILABLE: "55000",  # object_not_in_prerequisite_state
        ErrorCode.IDLE_TRANSACTION_TIMEOUT: "25P03",  # idle_in_transaction_session_timeout
        ErrorCode.SHUTTING_DOWN: "57P01",  # admin_shutdown
        ErrorCode.INTERNAL_ERROR: "XX000",  # internal_error
    }
)

ERROR_CLASSES: Final[Mapping[str, ErrorClass]] = MappingProxyType(
    {
        "25006": ErrorClass.READ_ONLY,  # read_only_sql_transaction
        "57P01": ErrorClass.SHUTTING_DOWN,  # admin_shutdown
        "57P02": ErrorClass.SHUTTING_DOWN,  # crash_shutdown
        # cannot_connect_now: starting up, shutting down, in recovery without hot standby
        "57P03": ErrorClass.CANNOT_CONNECT_NOW,
        "28P01": ErrorClass.AUTHENTICATION_FAILED,  # invalid_password
        "28000": ErrorClass.AUTHENTICATION_FAILED,  # invalid_authorization_specification
    }
)


def sqlstate_of(code: ErrorCode) -> str:
    """The SQLSTATE of an error the balancer reports."""
    return SQLSTATE[code]


def class_of(sqlstate: str) -> ErrorClass:
    """What a server error with this SQLSTATE means to the balancer (OTHER if nothing)."""
    return ERROR_CLASSES.get(sqlstate, ErrorClass.OTHER)
