"""The balancer's error vocabulary, in no protocol's words.

Two enums:

* `ErrorCode`: the errors the balancer itself reports to a client (a refusal, a timeout, a lost
  server connection). Each protocol package maps every member to its wire form through a
  complete table (PostgreSQL: SQLSTATE, in postgres/errors.py; MySQL: errno and SQLSTATE), and a
  test checks that no member is missing.
* `ErrorClass`: what an error a *server* reported means to the balancer. A protocol package
  maps its server codes to a class; the decisions below (probe the server at once, re-run a
  read on the primary, count a refused login as the server being unreachable) key on the class,
  never on a protocol's code, so that they read the same for every protocol.
"""

from __future__ import annotations

import enum
from typing import Final


class ErrorCode(enum.Enum):
    """An error the balancer reports on its own (not one it relays from a server)."""

    # The client broke the protocol: a malformed, oversized or out-of-order message.
    PROTOCOL_VIOLATION = "protocol_violation"
    # The client did not finish logging in within client_login_timeout.
    LOGIN_TIMEOUT = "login_timeout"
    # The client asked for a protocol version the balancer does not speak.
    UNSUPPORTED_PROTOCOL_VERSION = "unsupported_protocol_version"
    # A server asked for an authentication method the balancer does not speak.
    UNSUPPORTED_SERVER_AUTHENTICATION = "unsupported_server_authentication"
    # The client asked for a replication connection, which the balancer does not proxy.
    REPLICATION_REFUSED = "replication_refused"
    # The client's login named no user.
    NO_USER_NAME = "no_user_name"
    # The client offered an authentication mechanism the balancer does not accept.
    UNSUPPORTED_AUTHENTICATION_MECHANISM = "unsupported_authentication_mechanism"
    # Wrong password, or a user the balancer does not know (reported the same way).
    AUTHENTICATION_FAILED = "authentication_failed"
    # The client asked for a database (cluster) the balancer does not serve.
    UNKNOWN_DATABASE = "unknown_database"
    # Over max_client_connections, in total or for the user.
    CLIENT_LIMIT = "client_limit"
    # A full pool gave no server connection within query_wait_timeout.
    POOL_TIMEOUT = "pool_timeout"
    # No server can take the request: no primary (within primary_wait_timeout), no replica
    # with replica_fallback = "error", the server cannot be reached, or its pool is closed.
    SERVER_UNAVAILABLE = "server_unavailable"
    # The server connection serving the client broke.
    SERVER_CONNECTION_LOST = "server_connection_lost"
    # Feature refused: a transaction in statement pooling.
    TRANSACTION_IN_STATEMENT_MODE = "transaction_in_statement_mode"
    # Feature refused: a statement keeping session state where the cluster's policy refuses it.
    SESSION_STATE_REFUSED = "session_state_refused"
    # currval()/lastval() cannot be answered: the connection that ran the session's last
    # nextval() has served another client since (transaction pooling).
    SEQUENCE_STATE_UNAVAILABLE = "sequence_state_unavailable"
    # The client stayed idle in a transaction past idle_transaction_timeout.
    IDLE_TRANSACTION_TIMEOUT = "idle_transaction_timeout"
    # The balancer is shutting down.
    SHUTTING_DOWN = "shutting_down"
    # A bug in the balancer; its log has the traceback.
    INTERNAL_ERROR = "internal_error"


class ErrorClass(enum.Enum):
    """What an error reported by a server means to the balancer."""

    # The server refused a write because it is read-only (a replica, or a demoted primary).
    READ_ONLY = "read_only"
    # The server is shutting down, or ended the session in a crash shutdown.
    SHUTTING_DOWN = "shutting_down"
    # The server cannot take connections now (starting up, shutting down, in recovery).
    CANNOT_CONNECT_NOW = "cannot_connect_now"
    # The server refused the login's credentials.
    AUTHENTICATION_FAILED = "authentication_failed"
    # Anything else: the request, not the server, is the problem; relayed as it is.
    OTHER = "other"


# After such an error on live traffic the server is probed at once rather than at the next
# tick: a read-only error from the primary means it was demoted, the others that it is going.
PROBE_AT_ONCE: Final = frozenset(
    (ErrorClass.READ_ONLY, ErrorClass.SHUTTING_DOWN, ErrorClass.CANNOT_CONNECT_NOW)
)
# A read refused with such an error, before any row reached the client, is re-run on the
# primary.
RETRY_ON_PRIMARY: Final = frozenset((ErrorClass.READ_ONLY,))
# A login refused with such an error says the server, not the request, is the problem: the
# server counts as unreachable (reads move to another replica, writes wait for a primary).
SERVER_GOING_AWAY: Final = frozenset((ErrorClass.SHUTTING_DOWN, ErrorClass.CANNOT_CONNECT_NOW))
