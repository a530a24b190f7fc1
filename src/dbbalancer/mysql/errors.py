"""The balancer's error vocabulary (core/errors.py) in MySQL's words: errno and SQLSTATE.

Both directions, as complete tables (MySQL Server Error Message Reference and Client Error
Message Reference; MariaDB "MariaDB Error Codes"; the symbol follows each number):

* `ERRORS`: every `ErrorCode` the balancer reports -> the (errno, SQLSTATE) of the ERR packet it
  sends, chosen as MySQL itself, or MySQL Router in front of it, reports the same condition, so
  that drivers react as they would to the server (a "server gone" error makes a pool reconnect).
  Numbers from 2000 up are client errors (CR_*): a server never sends them, but MySQL Router
  does for a backend it cannot reach or lost, and drivers know them.
* `ERROR_CLASSES`: the errnos of server errors the balancer acts on -> their `ErrorClass`; any
  other errno is `ErrorClass.OTHER` and only relayed. MySQL and MariaDB share every number
  listed here (both keep the 1000-1999 range in step).
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Final

from dbbalancer.core.errors import ErrorClass, ErrorCode

__all__ = ["ERRORS", "ERROR_CLASSES", "class_of", "errno_of", "error_of", "sqlstate_of"]

ERRORS: Final[Mapping[ErrorCode, tuple[int, str]]] = MappingProxyType(
    {
        ErrorCode.PROTOCOL_VIOLATION: (1156, "08S01"),  # ER_NET_PACKETS_OUT_OF_ORDER
        # What a server sends when connect_timeout passes before the login ends.
        ErrorCode.LOGIN_TIMEOUT: (1043, "08S01"),  # ER_HANDSHAKE_ERROR "Bad handshake"
        # A client without CLIENT_PROTOCOL_41, or a plugin the peer does not speak.
        ErrorCode.UNSUPPORTED_PROTOCOL_VERSION: (1251, "08004"),  # ER_NOT_SUPPORTED_AUTH_MODE
        ErrorCode.UNSUPPORTED_SERVER_AUTHENTICATION: (1251, "08004"),  # as above
        ErrorCode.REPLICATION_REFUSED: (1235, "42000"),  # ER_NOT_SUPPORTED_YET
        ErrorCode.NO_USER_NAME: (1045, "28000"),  # ER_ACCESS_DENIED_ERROR
        ErrorCode.UNSUPPORTED_AUTHENTICATION_MECHANISM: (1251, "08004"),  # as above
        ErrorCode.AUTHENTICATION_FAILED: (1045, "28000"),  # ER_ACCESS_DENIED_ERROR
        ErrorCode.UNKNOWN_DATABASE: (1049, "42000"),  # ER_BAD_DB_ERROR
        ErrorCode.CLIENT_LIMIT: (1040, "08004"),  # ER_CON_COUNT_ERROR "Too many connections"
        ErrorCode.POOL_TIMEOUT: (1040, "08004"),  # as above
        # MySQL Router: "Can't connect to remote MySQL server" for an unreachable backend.
        ErrorCode.SERVER_UNAVAILABLE: (2003, "HY000"),  # CR_CONN_HOST_ERROR
        ErrorCode.SERVER_CONNECTION_LOST: (2013, "HY000"),  # CR_SERVER_LOST
        ErrorCode.TRANSACTION_IN_STATEMENT_MODE: (1235, "42000"),  # ER_NOT_SUPPORTED_YET
        ErrorCode.SESSION_STATE_REFUSED: (1235, "42000"),  # ER_NOT_SUPPORTED_YET
        ErrorCode.SEQUENCE_STATE_UNAVAILABLE: (1105, "HY000"),  # ER_UNKNOWN_ERROR
        # "Got timeout reading communication packets": what both servers report when a client
        # stays silent past a timeout (MySQL 8.0.24's ER_CLIENT_INTERACTION_TIMEOUT, 4031, is
        # another error in MariaDB).
        ErrorCode.IDLE_TRANSACTION_TIMEOUT: (1159, "08S01"),  # ER_NET_READ_INTERRUPTED
        ErrorCode.SHUTTING_DOWN: (1053, "08S01"),  # ER_SERVER_SHUTDOWN
        ErrorCode.INTERNAL_ERROR: (1105, "HY000"),  # ER_UNKNOWN_ERROR
    }
)

ERROR_CLASSES: Final[Mapping[int, ErrorClass]] = MappingProxyType(
    {
        # "The MySQL server is running with the --read-only option so it cannot execute this
        # statement" (also --super-read-only)
        1290: ErrorClass.READ_ONLY,  # ER_OPTION_PREVENTS_STATEMENT
        1792: ErrorClass.READ_ONLY,  # ER_CANT_EXECUTE_IN_READ_ONLY_TRANSACTION
        1053: ErrorClass.SHUTTING_DOWN,  # ER_SERVER_SHUTDOWN "Server shutdown in progress"
        1077: ErrorClass.SHUTTING_DOWN,  # ER_NORMAL_SHUTDOWN
        1078: ErrorClass.SHUTTING_DOWN,  # ER_GOT_SIGNAL "Got signal, aborting"
        1079: ErrorClass.SHUTTING_DOWN,  # ER_SHUTDOWN_COMPLETE
        2006: ErrorClass.SHUTTING_DOWN,  # CR_SERVER_GONE_ERROR "server has gone away"
        2013: ErrorClass.SHUTTING_DOWN,  # CR_SERVER_LOST "Lost connection ... during query"
        1040: ErrorClass.CANNOT_CONNECT_NOW,  # ER_CON_COUNT_ERROR "Too many connections"
        1203: ErrorClass.CANNOT_CONNECT_NOW,  # ER_TOO_MANY_USER_CONNECTIONS
        1129: ErrorClass.CANNOT_CONNECT_NOW,  # ER_HOST_IS_BLOCKED (too many connect errors)
        3032: ErrorClass.CANNOT_CONNECT_NOW,  # ER_SERVER_OFFLINE_MODE (MySQL offline_mode)
        1045: ErrorClass.AUTHENTICATION_FAILED,  # ER_ACCESS_DENIED_ERROR
        1044: ErrorClass.AUTHENTICATION_FAILED,  # ER_DBACCESS_DENIED_ERROR
        1698: ErrorClass.AUTHENTICATION_FAILED,  # ER_ACCESS_DENIED_NO_PASSWORD_ERROR
        1251: ErrorClass.AUTHENTICATION_FAILED,  # ER_NOT_SUPPORTED_AUTH_MODE
    }
)


def error_of(code: ErrorCode) -> tuple[int, str]:
    """The (errno, SQLSTATE) of an error the balancer reports."""
    return ERRORS[code]


def errno_of(code: ErrorCode) -> int:
    """The errno of an error the balancer reports."""
    return ERRORS[code][0]


def sqlstate_of(code: ErrorCode) -> str:
    """The SQLSTATE of an error the balancer reports."""
    return ERRORS[code][1]


def class_of(errno: int) -> ErrorClass:
    """What a server error with this errno means to the balancer (OTHER if nothing)."""
    return ERROR_CLASSES.get(errno, ErrorClass.OTHER)
