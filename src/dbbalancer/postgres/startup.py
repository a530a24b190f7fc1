"""The start-up phase of a client connection: what `frontend.ClientSession` runs before it forwards.

Protocol sections "Start-up" and "Message Flow: Start-up": the StartupMessage's checks
(protocol version, ``_pq_.`` options, replication, user name), the password exchange
(SCRAM-SHA-256 or md5, or trust), the first server connection with the client's start-up
settings applied, and the welcome (AuthenticationOk, ParameterStatus, BackendKeyData,
ReadyForQuery). The session keeps its own state; these steps only talk to it.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from dbbalancer.config import AuthMethod, UserConfig
from dbbalancer.core.cluster import NoServerAvailable
from dbbalancer.core.errors import ErrorCode
from dbbalancer.core.pool import DropReason, Pool, PoolClosed, PoolTimeout
from dbbalancer.core.routing import Target
from dbbalancer.postgres import codec
from dbbalancer.postgres.auth import AuthenticationFailed, ScramServer, md5_verify
from dbbalancer.postgres.backend import ServerConnection, ServerError, ServerUnavailable
from dbbalancer.postgres.codec import ProtocolError
from dbbalancer.postgres.errors import sqlstate_of
from dbbalancer.postgres.params import sync_statement

if TYPE_CHECKING:
    from dbbalancer.postgres.frontend import ClientSession
    from dbbalancer.postgres.service import PgCluster

__all__ = [
    "Refused",
    "acquire",
    "apply_settings",
    "authenticate",
    "check_startup",
    "negotiation",
    "welcome",
]


class Refused(Exception):
    """A client request refused with a PostgreSQL error (sent as FATAL, then closed)."""

    def __init__(self, sqlstate: str, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.sqlstate = sqlstate
        self.message = message
        self.hint = hint


def negotiation(startup: codec.StartupMessage) -> bytes | None:
    """The NegotiateProtocolVersion to send first (3.0, the ``_pq_.`` options not understood)
    when the client asked for a newer minor version or for protocol options; else None."""
    unsupported = tuple(k for k in startup.parameters if k.startswith("_pq_."))
    if startup.protocol & 0xFFFF or unsupported:
        return codec.NegotiateProtocolVersion(codec.PROTOCOL_VERSION_3, unsupported).encode()
    return None


def check_startup(startup: codec.StartupMessage) -> None:
    """Refuse a replication connection or a StartupMessage without a user name."""
    if startup.parameters.get("replication", "false").lower() not in ("false", "off", "0", "no"):
        raise Refused(
            sqlstate_of(ErrorCode.REPLICATION_REFUSED),
            "dbbalancer does not proxy replication connections",
        )
    if not startup.user:
        raise Refused(
            sqlstate_of(ErrorCode.NO_USER_NAME),
            "no PostgreSQL user name specified in startup packet",
        )


async def authenticate(session: ClientSession, name: str, user: UserConfig | None) -> None:
    """Authenticate the client as `name`; an unknown user fails like a wrong password."""
    method = user.auth if user is not None else AuthMethod.SCRAM_SHA_256
    if method is AuthMethod.TRUST:
        return
    failed = Refused(
        sqlstate_of(ErrorCode.AUTHENTICATION_FAILED),
        f'password authentication failed for user "{name}"',
    )
    if method is AuthMethod.MD5:
        salt = os.urandom(4)
        session.write(codec.AuthenticationMD5Password(salt).encode())
        reply = codec.decode_frontend(await session.next_frame())
        if not isinstance(reply, codec.PasswordMessage):
            raise ProtocolError("expected a password message")
        if user is None or not md5_verify(user.password, name, salt, reply.password.rstrip(b"\0")):
            raise failed
        return
    verifier = session.service.scram_verifier(user)
    session.write(codec.AuthenticationSASL(("SCRAM-SHA-256",)).encode())
    initial = codec.decode_sasl_initial_response(await session.next_frame())
    if initial.mechanism != "SCRAM-SHA-256":
        raise Refused(
            sqlstate_of(ErrorCode.UNSUPPORTED_AUTHENTICATION_MECHANISM),
            f"SASL mechanism {initial.mechanism!r} is not supported; use SCRAM-SHA-256",
        )
    scram = ScramServer(verifier)
    try:
        server_first = scram.handle_client_first(initial.data or b"")
        session.write(codec.AuthenticationSASLContinue(server_first).encode())
        response = codec.decode_sasl_response(await session.next_frame())
        server_final = scram.handle_client_final(response.data)
    except AuthenticationFailed:
        raise failed from None
    if user is None:
        raise failed
    session.write(codec.AuthenticationSASLFinal(server_final).encode())


async def acquire(
    cluster: PgCluster, user: UserConfig
) -> tuple[ServerConnection, Pool[ServerConnection]]:
    """Check out a primary connection for the start-up; every failure becomes Refused."""
    try:
        _, pool, server = await cluster.runtime.checkout(
            user.name, Target.PRIMARY, wait_limit=cluster.config.query_wait_timeout
        )
        return server, pool
    except PoolTimeout as timeout:
        raise Refused(sqlstate_of(ErrorCode.POOL_TIMEOUT), str(timeout)) from None
    except (NoServerAvailable, ServerUnavailable, PoolClosed) as unavailable:
        raise Refused(sqlstate_of(ErrorCode.SERVER_UNAVAILABLE), str(unavailable)) from None
    except ServerError as refused:
        raise Refused(
            refused.sqlstate, f"server refused the pooled login: {refused.message}"
        ) from None


async def apply_settings(
    server: ServerConnection, pool: Pool[ServerConnection], settings: dict[str, str]
) -> None:
    """Give a checked-out connection the client's start-up settings, or drop it and refuse."""
    try:
        sql = sync_statement(server.applied, settings)
        if sql is not None:
            await server.simple_query(sql)
        server.applied = dict(settings)
    except ServerError as exc:
        # Part of the SETs may have run: the connection's state is unknown; drop it.
        pool.release(server, reusable=False, reason=DropReason.RESET_FAILED)
        raise Refused(
            exc.sqlstate, f"start-up parameter rejected by the server: {exc.message}"
        ) from None
    except BaseException:
        pool.release(server, reusable=False)
        raise


def welcome(parameters: dict[str, str], backend_key: tuple[int, int]) -> list[bytes]:
    """AuthenticationOk, the ParameterStatus messages, BackendKeyData and ReadyForQuery."""
    out = [codec.AuthenticationOk().encode()]
    out += [codec.ParameterStatus(k, v).encode() for k, v in parameters.items()]
    out.append(codec.BackendKeyData(*backend_key).encode())
    out.append(codec.ReadyForQuery(b"I").encode())
    return out
