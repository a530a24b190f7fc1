"""The proxy's side of a MySQL client's login, sans-IO: greeting in, packets out, a verdict.

The proxy plays the server of "Connection Phase" (MySQL Source Code Documentation,
"Client/Server Protocol" > "Connection Lifecycle" > "Connection Phase"; MariaDB "Connection"):

1. :meth:`ClientLogin.greeting` is Protocol::HandshakeV10 with a fresh 20-byte nonce, the
   capabilities the proxy offers and ``mysql_native_password`` as the default plugin.
2. The client's Protocol::HandshakeResponse41 names the user, the database and the plugin its
   auth data was made with. If that is not the user's plugin the proxy sends an
   AuthSwitchRequest for it (same nonce) and reads the AuthSwitchResponse.
3. ``mysql_native_password``: one check ("Native Authentication"). ``caching_sha2_password``
   ("Caching_sha2_password information"): a matching fast-path scramble gets AuthMoreData 0x03
   and OK; anything else gets 0x04 "perform full authentication", and over plain TCP the client
   either sends 0x02 to ask for the RSA public key (answered with AuthMoreData holding the PEM)
   or the password RSA-OAEP-encrypted with it. A cleartext password over plain TCP is refused,
   as MySQL refuses it.

The proxy knows every password, so its "cache" of caching_sha2_password is always warm: a
client with the right password always takes the fast path, as it does on a MySQL server that
has seen the user since its start. MySQL moves to full authentication when the fast path fails
for whatever reason, and so does the proxy; it then refuses after decrypting a wrong password.

A wrong password, an unknown user (which runs the same exchange, so that user names cannot be
probed) and a refused request all end in ERR 1045 (28000) "Access denied for user ...", as
MySQL words it. Each step is a handler in the ``_HANDLERS`` table keyed by state; a packet in a
state without a handler is a protocol error.

COM_CHANGE_USER re-runs steps 2-3 inside the command phase (:meth:`ClientLogin.change_user`).
"""

from __future__ import annotations

import enum
import hmac
import logging
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from dbbalancer.config import AuthMethod, UserConfig
from dbbalancer.core.errors import ErrorCode
from dbbalancer.mysql import auth
from dbbalancer.mysql.codec import (
    CACHING_SHA2_PASSWORD,
    FAST_AUTH_SUCCESS,
    MYSQL_NATIVE_PASSWORD,
    PERFORM_FULL_AUTHENTICATION,
    AuthMoreData,
    AuthSwitchRequest,
    Capability,
    ComChangeUser,
    ErrPacket,
    HandshakeResponse41,
    HandshakeV10,
    OkPacket,
    ProtocolError,
    ServerStatus,
    SslRequest,
    decode_handshake_response,
)
from dbbalancer.mysql.errors import error_of
from dbbalancer.mysql.profile import DEFAULT_COLLATION, PoolProfile

__all__ = [
    "OFFERED_CAPABILITIES",
    "ClientLogin",
    "LoggedIn",
    "LoginState",
    "Reply",
    "RsaKeys",
    "pool_profile",
    "profile_capabilities",
]

log = logging.getLogger(__name__)

# What the proxy offers clients. Not offered, because pooled server connections share one
# capability set and these change what a packet means or looks like: DEPRECATE_EOF and
# SESSION_TRACK (result-set end and OK layout), INTERACTIVE (the server's idle timeout),
# IGNORE_SPACE (it adds IGNORE_SPACE to the session's sql_mode, which COM_RESET_CONNECTION
# drops: a client wanting it sets the sql_mode), compression and TLS (not implemented).
# FOUND_ROWS changes what the server answers (an UPDATE's affected rows are the rows matched,
# not changed) and survives a reset: a client that asks for it gets server connections of its
# own pool profile (mysql/profile.py). LOCAL_FILES is added when a cluster allows LOAD DATA
# LOCAL INFILE.
OFFERED_CAPABILITIES: Final = (
    Capability.LONG_PASSWORD
    | Capability.FOUND_ROWS
    | Capability.LONG_FLAG
    | Capability.CONNECT_WITH_DB
    | Capability.PROTOCOL_41
    | Capability.IGNORE_SIGPIPE
    | Capability.TRANSACTIONS
    | Capability.SECURE_CONNECTION
    | Capability.MULTI_STATEMENTS
    | Capability.MULTI_RESULTS
    | Capability.PS_MULTI_RESULTS
    | Capability.PLUGIN_AUTH
    | Capability.CONNECT_ATTRS
    | Capability.PLUGIN_AUTH_LENENC_CLIENT_DATA
)


def pool_profile(capabilities: int, charset: int = DEFAULT_COLLATION) -> str:
    """The pool profile (mysql/profile.py) of a client that negotiated `capabilities` with
    handshake collation `charset` ("" for the default one)."""
    return PoolProfile.of(capabilities, charset).name


def profile_capabilities(profile: str) -> Capability:
    """The flags pool profile `profile` adds to the pooled connections' base set (FOUND_ROWS);
    what it takes away and its collation are `PoolProfile.parse(profile)`'s."""
    return PoolProfile.parse(profile).capabilities(Capability(0))


# caching_sha2_password's one-byte client message asking for the server's RSA public key.
_REQUEST_PUBLIC_KEY: Final = b"\x02"
# utf8mb4_general_ci: what MariaDB greets with; the client answers with its own choice.
DEFAULT_CHARSET: Final = DEFAULT_COLLATION
_GREETING_STATUS: Final = int(ServerStatus.AUTOCOMMIT)
_PLUGINS: Final = frozenset({MYSQL_NATIVE_PASSWORD, CACHING_SHA2_PASSWORD})


class RsaKeys:
    """The RSA key pair of caching_sha2_password's full authentication, made once per process
    start (MySQL's ``caching_sha2_password_auto_generate_rsa_keys``)."""

    def __init__(self, bits: int = 2048) -> None:
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import rsa

        key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
        self.size = key.key_size // 8
        self.private_pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        self.public_pem = key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )


class LoginState(enum.Enum):
    """Where a login stands; the table of handlers is keyed by it."""

    GREETED = "greeted"  # the greeting is out; the HandshakeResponse41 is awaited
    SWITCHED = "switched"  # an AuthSwitchRequest is out; its response is awaited
    FULL_AUTH = "full_auth"  # 0x04 or the public key is out; key request or password awaited
    DONE = "done"  # accepted or refused: no more packets


@dataclass(frozen=True, slots=True)
class LoggedIn:
    """A login that succeeded."""

    user: UserConfig
    database: str | None
    capabilities: Capability
    charset: int
    attributes: tuple[tuple[str, str], ...]

    @property
    def profile(self) -> PoolProfile:
        """The pool profile of the client's server connections (mysql/profile.py)."""
        return PoolProfile.of(self.capabilities, self.charset)


@dataclass(frozen=True, slots=True)
class Reply:
    """What to send after a client packet (payloads, numbered on by the caller) and, once the
    login is over, its outcome: ``accepted`` (the last payload is the OK) or ``refused`` (the
    last payload is the ERR, and the connection closes)."""

    packets: tuple[bytes, ...] = ()
    accepted: LoggedIn | None = None
    refused: bool = False


@dataclass(slots=True)
class _Attempt:
    """The login being checked: who the client says it is and what it asked for."""

    name: str
    user: UserConfig | None
    database: str | None
    charset: int
    attributes: tuple[tuple[str, str], ...]
    plugin: str
    sent_password: bool = False


class ClientLogin:
    """One client's login (and later COM_CHANGE_USER) against the configured users."""

    def __init__(
        self,
        *,
        users: Callable[[str], UserConfig | None],
        rsa_keys: Callable[[], RsaKeys],
        server_version: str,
        connection_id: int,
        peer_host: str,
        offered: Capability = OFFERED_CAPABILITIES,
        nonce: bytes | None = None,
    ) -> None:
        self._users = users
        self._rsa_keys = rsa_keys
        self.server_version = server_version
        self.connection_id = connection_id
        self.peer_host = peer_host
        self.offered = offered
        self.nonce = nonce if nonce is not None else _fresh_nonce()
        self.state = LoginState.GREETED
        self.capabilities = Capability(0)
        self._attempt: _Attempt | None = None
        self.failure: str | None = None  # why the last login was refused (for the log)

    def greeting(self) -> bytes:
        """The HandshakeV10 payload (sequence id 0)."""
        return HandshakeV10(
            server_version=self.server_version,
            connection_id=self.connection_id,
            auth_plugin_data=self.nonce,
            capabilities=int(self.offered),
            charset=DEFAULT_CHARSET,
            status_flags=_GREETING_STATUS,
            auth_plugin_name=MYSQL_NATIVE_PASSWORD,
        ).encode()

    def receive(self, payload: bytes) -> Reply:
        """Handle one client packet of the login; ProtocolError for a malformed one."""
        handler = _HANDLERS.get(self.state)
        if handler is None:
            raise ProtocolError(f"unexpected packet in login state {self.state.value}")
        return handler(self, payload)

    def change_user(self, command: ComChangeUser) -> Reply:
        """Start a COM_CHANGE_USER re-authentication (the command phase's capabilities hold)."""
        self.state = LoginState.GREETED
        attempt = _Attempt(
            name=command.user,
            user=self._users(command.user),
            database=command.database or None,
            charset=command.charset if command.charset is not None else DEFAULT_CHARSET,
            attributes=command.connect_attrs or (),
            plugin=command.auth_plugin_name or MYSQL_NATIVE_PASSWORD,
        )
        return self._authenticate(attempt, command.auth_response)

    # -- handlers ------------------------------------------------------------------------------

    def _on_response(self, payload: bytes) -> Reply:
        response = decode_handshake_response(payload)
        if isinstance(response, SslRequest):
            return self._refuse(
                ErrorCode.UNSUPPORTED_PROTOCOL_VERSION,
                "dbbalancer does not offer TLS yet; connect without SSL "
                "(mysql --skip-ssl, ssl_disabled=True)",
            )
        self.capabilities = Capability(response.capabilities & self.offered)
        if not response.username:
            return self._refuse(
                ErrorCode.NO_USER_NAME, f"Access denied for user ''@'{self.peer_host}'"
            )
        attempt = _Attempt(
            name=response.username,
            user=self._users(response.username),
            database=_database_of(response),
            charset=response.charset,
            attributes=response.connect_attrs or (),
            plugin=_plugin_of(response),
        )
        return self._authenticate(attempt, response.auth_response)

    def _on_switch_response(self, payload: bytes) -> Reply:
        attempt = self._attempt
        assert attempt is not None
        return self._check(attempt, payload)

    def _on_full_auth(self, payload: bytes) -> Reply:
        attempt = self._attempt
        assert attempt is not None
        if payload == _REQUEST_PUBLIC_KEY:
            return Reply((AuthMoreData(self._rsa_keys().public_pem).encode(),))
        attempt.sent_password = bool(payload)
        keys = self._rsa_keys()
        if len(payload) != keys.size:
            self.failure = "the client sent its password without RSA over plain TCP"
            return self._deny(attempt)
        try:
            clear = auth.caching_sha2_decrypt_password(payload, self.nonce, keys.private_pem)
        except ValueError:
            self.failure = "the RSA-encrypted password did not decrypt"
            return self._deny(attempt)
        password = _password_of(attempt.user)
        if password is None or not hmac.compare_digest(clear.encode(), password.encode()):
            self.failure = _why_not(attempt.user) + " (full authentication)"
            return self._deny(attempt)
        return self._accept(attempt)

    # -- steps ---------------------------------------------------------------------------------

    def _authenticate(self, attempt: _Attempt, data: bytes) -> Reply:
        self._attempt = attempt
        wanted = _plugin_for(attempt.user)
        if attempt.user is None and attempt.plugin in _PLUGINS:
            # An unknown user fails the way a known one would with the plugin the client
            # chose: no switch that a client could tell apart.
            wanted = attempt.plugin
        if wanted is None:  # trust: no password check, whatever the client sent
            return self._accept(attempt)
        if attempt.plugin != wanted:
            attempt.plugin = wanted
            self.state = LoginState.SWITCHED
            return Reply((AuthSwitchRequest(wanted, self.nonce + b"\0").encode(),))
        return self._check(attempt, data)

    def _check(self, attempt: _Attempt, data: bytes) -> Reply:
        attempt.sent_password = bool(data)
        password = _password_of(attempt.user)
        if attempt.plugin == MYSQL_NATIVE_PASSWORD:
            stored = auth.native_password_hash(password) if password else b""
            if password is not None and auth.native_verify(data, self.nonce, stored):
                return self._accept(attempt)
            self.failure = _why_not(attempt.user)
            return self._deny(attempt)
        # caching_sha2_password
        if password is not None and not password and not data:
            return self._accept(attempt)
        stored = auth.caching_sha2_stored(password or secrets.token_hex(16))
        if password and auth.caching_sha2_verify(data, self.nonce, stored):
            return self._accept(attempt, AuthMoreData(FAST_AUTH_SUCCESS).encode())
        self.state = LoginState.FULL_AUTH
        return Reply((AuthMoreData(PERFORM_FULL_AUTHENTICATION).encode(),))

    def _accept(self, attempt: _Attempt, *before: bytes) -> Reply:
        user = attempt.user
        if user is None:
            self.failure = "unknown user"
            return self._deny(attempt)
        self.state = LoginState.DONE
        self.failure = None
        ok = OkPacket(status_flags=_GREETING_STATUS).encode(self.capabilities)
        done = LoggedIn(
            user, attempt.database, self.capabilities, attempt.charset, attempt.attributes
        )
        return Reply((*before, ok), accepted=done)

    def _deny(self, attempt: _Attempt) -> Reply:
        using = "YES" if attempt.sent_password else "NO"
        return self._refuse(
            ErrorCode.AUTHENTICATION_FAILED,
            f"Access denied for user '{attempt.name}'@'{self.peer_host}' (using password: {using})",
        )

    def _refuse(self, code: ErrorCode, message: str) -> Reply:
        self.state = LoginState.DONE
        errno, sqlstate = error_of(code)
        return Reply((ErrPacket(errno, sqlstate, message).encode(),), refused=True)


_HANDLERS: Final[dict[LoginState, Callable[[ClientLogin, bytes], Reply]]] = {
    LoginState.GREETED: ClientLogin._on_response,
    LoginState.SWITCHED: ClientLogin._on_switch_response,
    LoginState.FULL_AUTH: ClientLogin._on_full_auth,
}


def _fresh_nonce() -> bytes:
    """20 random bytes without NUL (the greeting ends the nonce with one) or '$'."""
    out = bytearray()
    while len(out) < auth.NONCE_LENGTH:
        b = secrets.randbelow(127) + 1
        if b != ord("$"):
            out.append(b)
    return bytes(out)


def _plugin_for(user: UserConfig | None) -> str | None:
    """The plugin a user's clients must authenticate with; None: no check (trust)."""
    if user is None:
        return MYSQL_NATIVE_PASSWORD
    if user.auth is AuthMethod.TRUST:
        return None
    if user.auth is AuthMethod.CACHING_SHA2_PASSWORD:
        return CACHING_SHA2_PASSWORD
    return MYSQL_NATIVE_PASSWORD


def _password_of(user: UserConfig | None) -> str | None:
    """The plaintext a client must know; None when there is none to check against."""
    if user is None or not user.is_plaintext_password:
        return None
    return user.password


def _why_not(user: UserConfig | None) -> str:
    """Why a login with these credentials failed, for the log (never for the client)."""
    if user is None:
        return "unknown user"
    if not user.is_plaintext_password:
        return "the configured password is a PostgreSQL hash; MySQL clients need the plaintext"
    return "wrong password"


def _plugin_of(response: HandshakeResponse41) -> str:
    """The plugin the client made its auth data with; without PLUGIN_AUTH a 4.1 client speaks
    mysql_native_password."""
    if response.capabilities & Capability.PLUGIN_AUTH and response.auth_plugin_name:
        return response.auth_plugin_name
    return MYSQL_NATIVE_PASSWORD


def _database_of(response: HandshakeResponse41) -> str | None:
    if response.capabilities & Capability.CONNECT_WITH_DB and response.database:
        return response.database
    return None
