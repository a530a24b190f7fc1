"""The typed, frozen configuration model: what ``dbbalancer.toml`` means once parsed.

Every table is a pydantic model with ``extra="forbid"`` (an unknown key is an error, as in
PgDog) and ``frozen=True`` (nothing rewrites the config after loading). Durations are float
seconds, sizes int bytes, addresses :class:`Address` values; the TOML spellings are parsed by
the annotated types below.

Rules that involve more than one key live in each model's ``_problems()`` and are raised together
as one ``dbbalancer_invariants`` error carrying every :class:`ConfigProblem`, so the loader can
report all of them at once with their full key paths.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Annotated, Any, Self

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PlainValidator,
    ValidationInfo,
    WithJsonSchema,
    model_validator,
)
from pydantic_core import PydanticCustomError

from dbbalancer.config.units import (
    DURATION_HINT,
    Address,
    LagLimit,
    UnitError,
    parse_address,
    parse_duration,
    parse_lag_limit,
    parse_size,
)
from dbbalancer.core.balance import Policy
from dbbalancer.core.topology import ServerRole

__all__ = [
    "INVARIANTS_ERROR",
    "UNITS_REQUIRED",
    "VALUE_ERROR",
    "AuthMethod",
    "Balance",
    "ClusterConfig",
    "Config",
    "ConfigProblem",
    "GeneralConfig",
    "ListenConfig",
    "LogLevel",
    "PoolMode",
    "Protocol",
    "ReadOnlyTransactions",
    "ReplicaFallback",
    "Role",
    "Route",
    "ServerConfig",
    "SessionStatePolicy",
    "UserConfig",
    "describe",
    "file_problems_from_raw",
]

#: pydantic error type for a bad unit value; ``ctx`` holds ``message`` and ``hint``.
VALUE_ERROR = "dbbalancer_value"
#: pydantic error type for failed cross-field rules; ``ctx["problems"]`` holds ConfigProblems.
INVARIANTS_ERROR = "dbbalancer_invariants"
#: Validation-context key: set by the loader so bare numbers in TOML are rejected as ambiguous.
#: Python callers (tests, embedding code) may pass float seconds directly.
UNITS_REQUIRED = "units_required"


@dataclass(frozen=True)
class ConfigProblem:
    """One configuration error: the key path (``clusters[0].pool_size``), what is wrong, the fix."""

    path: str
    message: str
    hint: str

    def __str__(self) -> str:
        head = f"{self.path}: " if self.path else ""
        return f"{head}{self.message}; {self.hint}"


# --- enums: every choice the file accepts, spelled as in the file ---------------------------


class LogLevel(StrEnum):
    """``general.log_level``; the names of the standard ``logging`` levels, lower case."""

    DEBUG = "debug"
    INFO = "info"
    WARNING = "warning"
    ERROR = "error"


class Protocol(StrEnum):
    """The wire protocol a cluster's servers speak."""

    POSTGRES = "postgres"
    MYSQL = "mysql"


class PoolMode(StrEnum):
    """When a server connection goes back to the pool (PgBouncer's ``pool_mode`` semantics)."""

    SESSION = "session"
    TRANSACTION = "transaction"
    STATEMENT = "statement"


class AuthMethod(StrEnum):
    """How clients authenticate to dbbalancer: PostgreSQL ``pg_hba.conf`` method names and
    MySQL authentication plugin names.

    A PostgreSQL method used by a MySQL client means ``mysql_native_password`` (``trust``: no
    password check); a MySQL plugin used by a PostgreSQL client means SCRAM-SHA-256.
    """

    SCRAM_SHA_256 = "scram-sha-256"
    MD5 = "md5"
    TRUST = "trust"
    MYSQL_NATIVE_PASSWORD = "mysql_native_password"
    CACHING_SHA2_PASSWORD = "caching_sha2_password"

    @property
    def is_mysql(self) -> bool:
        """A MySQL authentication plugin."""
        return self in (AuthMethod.MYSQL_NATIVE_PASSWORD, AuthMethod.CACHING_SHA2_PASSWORD)


# A server's configured role (``auto``: learn it from health probes) and the read balancing
# policy are the core's own enums: the file spells their values, the runtime uses them as parsed.
Role = ServerRole
Balance = Policy


class ReplicaFallback(StrEnum):
    """What a read does when no replica is eligible: go to the primary, or fail."""

    PRIMARY = "primary"
    ERROR = "error"


class SessionStatePolicy(StrEnum):
    """What happens when a client sets session state (SET, PREPARE, temp tables) in a pooled mode:
    pin the server connection to the client, or reject the statement."""

    PIN = "pin"
    ERROR = "error"


class Route(StrEnum):
    """Where a user's reads go by default (``users.default_route``)."""

    AUTO = "auto"
    PRIMARY = "primary"
    REPLICA = "replica"


class ReadOnlyTransactions(StrEnum):
    """Where ``BEGIN READ ONLY`` / ``START TRANSACTION READ ONLY`` transactions go."""

    REPLICA = "replica"
    PRIMARY = "primary"


# --- annotated unit types -------------------------------------------------------------------


def _value_error(error: UnitError) -> PydanticCustomError:
    return PydanticCustomError(
        VALUE_ERROR, "{message}", {"message": error.message, "hint": error.hint}
    )


def _units_required(info: ValidationInfo) -> bool:
    return isinstance(info.context, dict) and bool(info.context.get(UNITS_REQUIRED))


def _duration_validator(*, positive: bool) -> Callable[[object, ValidationInfo], float]:
    def validate(value: object, info: ValidationInfo) -> float:
        try:
            if isinstance(value, str):
                seconds = parse_duration(value)
            elif isinstance(value, bool) or not isinstance(value, int | float):
                raise UnitError(f"{value!r} is not a duration", DURATION_HINT)
            elif value == 0 or not _units_required(info):
                seconds = float(value)
            else:
                raise UnitError(f"{value!r} has no unit", DURATION_HINT)
            if seconds < 0:
                raise UnitError(f"{value!r} is negative; durations cannot be", DURATION_HINT)
            if positive and seconds == 0:
                raise UnitError("must be more than 0", DURATION_HINT)
        except UnitError as error:
            raise _value_error(error) from None
        return seconds

    return validate


#: The smallest ``max_message_size`` that still fits a startup packet and ordinary queries.
MIN_MESSAGE_SIZE = 1024


def _validate_size(value: object) -> int:
    try:
        if isinstance(value, bool) or not isinstance(value, int | str):
            raise UnitError(f"{value!r} is not a size", "write '16MB' or a number of bytes")
        size = parse_size(value)
        if size < MIN_MESSAGE_SIZE:
            raise UnitError(
                f"{value!r} is too small for a protocol message",
                f"use at least {MIN_MESSAGE_SIZE} bytes; the default is '256MB'",
            )
    except UnitError as error:
        raise _value_error(error) from None
    return size


def _address_validator(*, allow_port_zero: bool) -> Callable[[object], Address]:
    def validate(value: object) -> Address:
        if isinstance(value, Address):
            return value
        try:
            if not isinstance(value, str):
                raise UnitError(f"{value!r} is not an address", 'write it as "host:port"')
            return parse_address(value, allow_port_zero=allow_port_zero)
        except UnitError as error:
            raise _value_error(error) from None

    return validate


def _validate_lag(value: object) -> LagLimit:
    if isinstance(value, LagLimit):
        return value
    try:
        if not isinstance(value, str | int | list | tuple):
            raise UnitError(f"{value!r} is not a lag limit", "write '1s' or '16MB'")
        return parse_lag_limit(value)
    except UnitError as error:
        raise _value_error(error) from None


_DURATION_SCHEMA = WithJsonSchema(
    {"anyOf": [{"type": "string", "examples": ["500ms", "5s", "2m"]}, {"const": 0}]}
)
#: Non-negative seconds; the file says "500ms", "5s", "2m" or 0.
Duration = Annotated[float, PlainValidator(_duration_validator(positive=False)), _DURATION_SCHEMA]
#: Like Duration, but 0 is not allowed (a timeout of 0 could never succeed).
PositiveDuration = Annotated[
    float, PlainValidator(_duration_validator(positive=True)), _DURATION_SCHEMA
]
#: A message size limit in bytes (>= 1kB); the file says "16MB" or a bare integer of bytes.
MessageSize = Annotated[
    int,
    PlainValidator(_validate_size),
    WithJsonSchema({"anyOf": [{"type": "string", "examples": ["16MB"]}, {"type": "integer"}]}),
]
_ADDRESS_SCHEMA = WithJsonSchema({"type": "string", "examples": ["127.0.0.1:6432", "[::1]:6432"]})
#: A server to connect to: port 1..65535.
ServerAddress = Annotated[
    Address, PlainValidator(_address_validator(allow_port_zero=False)), _ADDRESS_SCHEMA
]
#: An address to bind: port 0 lets the kernel pick a free port (used by tests).
ListenAddress = Annotated[
    Address, PlainValidator(_address_validator(allow_port_zero=True)), _ADDRESS_SCHEMA
]
Lag = Annotated[
    LagLimit,
    PlainValidator(_validate_lag),
    WithJsonSchema({"anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}]}),
]
Name = Annotated[str, Field(strict=True, min_length=1)]
Count = Annotated[int, Field(strict=True, ge=0)]
PositiveCount = Annotated[int, Field(strict=True, ge=1)]
Flag = Annotated[bool, Field(strict=True)]

_SCRAM_VERIFIER = re.compile(
    r"SCRAM-SHA-256\$(?P<iterations>[1-9][0-9]*):(?P<salt>[A-Za-z0-9+/]+=*)"
    r"\$(?P<stored_key>[A-Za-z0-9+/]+=*):(?P<server_key>[A-Za-z0-9+/]+=*)"
)
_MD5_HASH = re.compile(r"md5[0-9a-f]{32}")


def _invariants(problems: list[ConfigProblem]) -> PydanticCustomError:
    summary = "; ".join(str(problem) for problem in problems)
    return PydanticCustomError(
        INVARIANTS_ERROR, "{summary}", {"summary": summary, "problems": tuple(problems)}
    )


def _duplicates(values: Iterable[tuple[str, object]]) -> list[tuple[str, object]]:
    """(path, value) pairs whose value was already seen earlier: the second, third... use."""
    pairs = list(values)
    counts = Counter(value for _, value in pairs)
    seen: set[object] = set()
    repeats = []
    for path, value in pairs:
        if counts[value] > 1 and value in seen:
            repeats.append((path, value))
        seen.add(value)
    return repeats


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    def _problems(self) -> list[ConfigProblem]:
        return []

    @model_validator(mode="after")
    def _check_invariants(self) -> Self:
        problems = self._problems()
        if problems:
            raise _invariants(problems)
        return self


# --- tables ---------------------------------------------------------------------------------


class GeneralConfig(_Model):
    """``[general]``: process-wide limits and timeouts."""

    log_level: LogLevel = Field(LogLevel.INFO, description="debug | info | warning | error")
    max_client_connections: PositiveCount = Field(
        10000, description="global cap on client connections"
    )
    max_message_size: MessageSize = Field(
        256 * 1024**2,
        description="largest protocol message accepted from clients or servers",
    )
    shutdown_timeout: Duration = Field(
        30.0, description="on SIGTERM, wait this long for clients to finish"
    )
    server_connect_timeout: PositiveDuration = Field(
        5.0, description="time allowed to connect and log in to a server"
    )
    client_login_timeout: PositiveDuration = Field(
        60.0, description="a client that has not authenticated by then is dropped"
    )


class ListenConfig(_Model):
    """``[listen]``: where clients connect, one address per protocol."""

    postgres: ListenAddress | None = Field(None, description="PostgreSQL listener")
    mysql: ListenAddress | None = Field(None, description="MySQL listener")

    def address(self, protocol: Protocol) -> Address | None:
        """The listen address for ``protocol``, or None when that protocol is not served."""
        return self.postgres if protocol is Protocol.POSTGRES else self.mysql


class UserConfig(_Model):
    """``[[users]]``: a client login, how it authenticates, and how it logs in to servers."""

    name: Name = Field(description="user name clients log in with")
    password: str = Field(
        description="plaintext, a SCRAM-SHA-256 verifier, or an md5 hash",
    )
    auth: AuthMethod = Field(AuthMethod.SCRAM_SHA_256, description="client authentication method")
    server_password: str | None = Field(
        None, description="password used to log in to the servers; default: `password`"
    )
    pool_mode: PoolMode | None = Field(None, description="per-user override of the pool_mode")
    max_client_connections: PositiveCount | None = Field(None, description="per-user cap")
    default_route: Route = Field(Route.AUTO, description="where this user's reads go by default")
    default_cluster: Name | None = Field(
        None, description="cluster of a MySQL client that names no database"
    )

    @property
    def is_scram_verifier(self) -> bool:
        """The password is a ``SCRAM-SHA-256$<iter>:<salt>$<StoredKey>:<ServerKey>`` verifier
        (the format PostgreSQL stores in ``pg_authid``, RFC 5803)."""
        return _SCRAM_VERIFIER.fullmatch(self.password) is not None

    @property
    def is_md5_hash(self) -> bool:
        """The password is ``"md5" + md5(password + user)`` in hex, as ``pg_authid`` stores it."""
        return _MD5_HASH.fullmatch(self.password) is not None

    @property
    def is_plaintext_password(self) -> bool:
        """The password is the actual secret (neither a SCRAM verifier nor an md5 hash)."""
        return not (self.is_scram_verifier or self.is_md5_hash)

    @property
    def login_password(self) -> str:
        """The password dbbalancer sends to servers: ``server_password``, else the plaintext
        ``password`` (validation rejects a hashed password without ``server_password``)."""
        if self.server_password is not None:
            return self.server_password
        if not self.is_plaintext_password:
            # Only reachable through model_construct(), which skips validation.
            raise ValueError(f"user {self.name!r} has a hashed password and no server_password")
        return self.password

    def _problems(self) -> list[ConfigProblem]:
        problems = []
        password = self.password
        if password.startswith("SCRAM-SHA-256$") and not self.is_scram_verifier:
            problems.append(
                ConfigProblem(
                    "password",
                    "looks like a SCRAM-SHA-256 verifier but is malformed",
                    "copy the whole value from pg_authid.rolpassword: "
                    "SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>",
                )
            )
        if self.auth is AuthMethod.MD5 and self.is_scram_verifier:
            problems.append(
                ConfigProblem(
                    "password",
                    "auth 'md5' cannot use a SCRAM-SHA-256 verifier as password",
                    "give the plaintext password or a matching md5 hash, "
                    'or set auth = "scram-sha-256"',
                )
            )
        if self.auth is AuthMethod.SCRAM_SHA_256 and self.is_md5_hash:
            problems.append(
                ConfigProblem(
                    "password",
                    "auth 'scram-sha-256' cannot use an md5 hash as password",
                    "give the plaintext password or a matching SCRAM-SHA-256 verifier, "
                    'or set auth = "md5"',
                )
            )
        hashed = self.is_scram_verifier or self.is_md5_hash
        if self.auth.is_mysql and hashed:
            problems.append(
                ConfigProblem(
                    "password",
                    f"auth '{self.auth.value}' needs the plaintext password, not a PostgreSQL hash",
                    "give the plaintext password",
                )
            )
        if hashed and self.server_password is None:
            problems.append(
                ConfigProblem(
                    "server_password",
                    "is missing, and the password is a hash that cannot log in to servers",
                    "set server_password so dbbalancer can log in to the servers",
                )
            )
        server_password = self.server_password
        if server_password is not None and (
            _SCRAM_VERIFIER.fullmatch(server_password) or _MD5_HASH.fullmatch(server_password)
        ):
            problems.append(
                ConfigProblem(
                    "server_password",
                    "is a hash, but dbbalancer needs the plaintext to log in to servers",
                    "give the servers' plaintext password",
                )
            )
        return problems


class ServerConfig(_Model):
    """``[[clusters.servers]]``: one database server; its identity, not its runtime state."""

    address: ServerAddress = Field(description="host:port of the server")
    role: Role = Field(Role.AUTO, description="primary | replica | auto")
    weight: Count = Field(1, description='share of reads for balance = "weighted"')
    name: Name = Field(
        # Filled from the address by _default_name; only a missing address leaves it empty.
        "",
        description="label in logs and admin output; default: the address",
    )

    @model_validator(mode="before")
    @classmethod
    def _default_name(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("name") is None and "address" in data:
            raw = data["address"]
            try:
                label = str(raw if isinstance(raw, Address) else parse_address(raw))
            except (UnitError, TypeError):
                # The address error is reported on `address`; do not add a second one here.
                label = str(raw)
            data = {**data, "name": label}
        return data


class ClusterConfig(_Model):
    """``[[clusters]]``: a logical database clients connect to, served by a set of servers."""

    name: Name = Field(description="clients connect to this database name")
    protocol: Protocol = Field(Protocol.POSTGRES, description="postgres | mysql")
    database: Name | None = Field(None, description="database on the servers; default: name")
    pool_mode: PoolMode = Field(PoolMode.SESSION, description="session | transaction | statement")
    pool_size: PositiveCount = Field(20, description="server connections per server, per user")
    min_pool_size: Count = Field(0, description="server connections kept open per server, per user")
    reserve_pool_size: Count = Field(0, description="extra connections when clients wait too long")
    reserve_pool_timeout: Duration = Field(5.0, description="wait before using the reserve pool")
    query_wait_timeout: Duration = Field(120.0, description="max wait for a server connection")
    server_idle_timeout: Duration = Field(
        600.0, description="close server connections idle this long"
    )
    server_lifetime: Duration = Field(3600.0, description="close server connections this old")
    idle_transaction_timeout: Duration = Field(0.0, description="0 = disabled")
    max_prepared_statements: Count = Field(
        200, description="per server connection, LRU beyond (0 = disable protocol-level tracking)"
    )
    session_state: SessionStatePolicy = Field(SessionStatePolicy.PIN, description="pin | error")
    read_write_split: Flag = Field(False, description="send reads to replicas")
    balance: Balance = Field(Balance.ROUND_ROBIN, description="how reads spread over replicas")
    replica_fallback: ReplicaFallback = Field(
        ReplicaFallback.PRIMARY, description="when no replica is eligible"
    )
    max_replica_lag: Lag = Field(
        LagLimit(max_seconds=1.0), description="a duration, a size, or an array of both"
    )
    read_your_writes: Flag = Field(False, description="after a write, read from the primary")
    local_infile: Flag = Field(
        False, description="MySQL: allow LOAD DATA LOCAL INFILE (the client sends a file)"
    )
    read_only_transactions: ReadOnlyTransactions = Field(
        ReadOnlyTransactions.REPLICA, description="where BEGIN READ ONLY transactions go"
    )
    health_check_interval: PositiveDuration = Field(0.5, description="time between probes")
    health_check_timeout: PositiveDuration = Field(
        1.0, description="a probe slower than this fails"
    )
    rise: PositiveCount = Field(2, description="good probes to come back up")
    fall: PositiveCount = Field(3, description="failed probes to be marked down")
    primary_wait_timeout: Duration = Field(5.0, description="wait for a primary during failover")
    servers: tuple[ServerConfig, ...] = Field((), description="[[clusters.servers]] entries")

    @property
    def server_database(self) -> str:
        """The database name sent to the servers in the startup packet / handshake."""
        return self.database if self.database is not None else self.name

    def effective_pool_mode(self, user: UserConfig) -> PoolMode:
        """The pool mode for ``user`` in this cluster: the user's override, else the cluster's."""
        return user.pool_mode if user.pool_mode is not None else self.pool_mode

    def server(self, name: str) -> ServerConfig | None:
        """The server with this name, or None."""
        return next((server for server in self.servers if server.name == name), None)

    def _problems(self) -> list[ConfigProblem]:
        problems = []
        if not self.servers:
            problems.append(
                ConfigProblem(
                    "servers",
                    f"cluster {self.name!r} has no servers",
                    'add a [[clusters.servers]] entry with address = "host:port"',
                )
            )
        if self.min_pool_size > self.pool_size:
            problems.append(
                ConfigProblem(
                    "min_pool_size",
                    f"{self.min_pool_size} is larger than pool_size ({self.pool_size})",
                    f"use a value <= {self.pool_size}, or raise pool_size",
                )
            )
        repeated = _duplicates(
            (f"servers[{i}]", server.address) for i, server in enumerate(self.servers)
        )
        for path, address in repeated:
            problems.append(
                ConfigProblem(
                    f"{path}.address",
                    f"'{address}' is listed twice in this cluster",
                    "remove the duplicate server",
                )
            )
        # A repeated address repeats its default name too; report that server only once.
        reported = {path for path, _ in repeated}
        for path, name in _duplicates(
            (f"servers[{i}]", server.name) for i, server in enumerate(self.servers)
        ):
            if path not in reported:
                problems.append(
                    ConfigProblem(
                        f"{path}.name",
                        f"server name {name!r} is used twice",
                        "give each server its own name",
                    )
                )
        primaries = [i for i, server in enumerate(self.servers) if server.role is Role.PRIMARY]
        for i in primaries[1:]:
            problems.append(
                ConfigProblem(
                    f"servers[{i}].role",
                    f"a second primary (servers[{primaries[0]}] is already the primary)",
                    'mark one server role = "primary" and the others "replica" or "auto"',
                )
            )
        if self.protocol is Protocol.MYSQL and self.pool_mode is PoolMode.STATEMENT:
            problems.append(
                ConfigProblem(
                    "pool_mode",
                    "'statement' pooling is not available for MySQL clusters yet (issue #12)",
                    'use pool_mode = "transaction" or "session"',
                )
            )
        if (
            self.protocol is Protocol.MYSQL
            and self.read_write_split
            and self.pool_mode is PoolMode.SESSION
        ):
            problems.append(
                ConfigProblem(
                    "read_write_split",
                    "needs transaction pooling for MySQL clusters (issue #12); under session "
                    "pooling every statement goes to the primary",
                    'set pool_mode = "transaction", or remove read_write_split',
                )
            )
        if self.local_infile and self.protocol is not Protocol.MYSQL:
            problems.append(
                ConfigProblem(
                    "local_infile",
                    "is a MySQL setting, and this cluster is not a MySQL cluster",
                    "remove local_infile",
                )
            )
        if (
            self.balance is Balance.WEIGHTED
            and self.servers
            and all(server.weight == 0 for server in self.servers)
        ):
            problems.append(
                ConfigProblem(
                    "balance",
                    "'weighted' needs a server with weight > 0, but every weight is 0",
                    "give at least one server a positive weight",
                )
            )
        return problems


class Config(_Model):
    """The whole file: ``[general]``, ``[listen]``, ``[[users]]`` and ``[[clusters]]``."""

    general: GeneralConfig = Field(GeneralConfig(), description="[general] table")
    listen: ListenConfig = Field(ListenConfig(), description="[listen] table")
    users: tuple[UserConfig, ...] = Field((), description="[[users]] entries")
    clusters: tuple[ClusterConfig, ...] = Field((), description="[[clusters]] entries")

    def user(self, name: str) -> UserConfig | None:
        """The user with this name, or None."""
        return next((user for user in self.users if user.name == name), None)

    def cluster(self, name: str) -> ClusterConfig | None:
        """The cluster with this (client-facing database) name, or None."""
        return next((cluster for cluster in self.clusters if cluster.name == name), None)

    def _problems(self) -> list[ConfigProblem]:
        problems = _file_problems(
            has_clusters=bool(self.clusters),
            user_names=[user.name for user in self.users],
            clusters=[(cluster.name, cluster.protocol) for cluster in self.clusters],
            listening={protocol for protocol in Protocol if self.listen.address(protocol)},
        )
        mysql_clusters = sorted(c.name for c in self.clusters if c.protocol is Protocol.MYSQL)
        for i, user in enumerate(self.users):
            wanted = user.default_cluster
            if wanted is not None and wanted not in mysql_clusters:
                problems.append(
                    ConfigProblem(
                        f"users[{i}].default_cluster",
                        f"{wanted!r} is not a MySQL cluster of this file",
                        "name one of: " + (", ".join(mysql_clusters) or "(no MySQL cluster)"),
                    )
                )
        return problems


def _file_problems(
    *,
    has_clusters: bool,
    user_names: Sequence[str | None],
    clusters: Sequence[tuple[str | None, Protocol | None]],
    listening: Collection[Protocol],
) -> list[ConfigProblem]:
    """Rules across the whole file, over plain facts so the loader can apply them even when some
    table failed to validate (a None entry is one that could not be read)."""
    problems = []
    if not has_clusters:
        problems.append(
            ConfigProblem(
                "clusters",
                "no cluster is configured",
                "add a [[clusters]] table with a name and a [[clusters.servers]] entry",
            )
        )
    for path, name in _duplicates(
        (f"users[{i}].name", name) for i, name in enumerate(user_names) if name is not None
    ):
        problems.append(
            ConfigProblem(path, f"user {name!r} is defined twice", "keep one [[users]] entry")
        )
    for path, name in _duplicates(
        (f"clusters[{i}].name", name) for i, (name, _) in enumerate(clusters) if name is not None
    ):
        problems.append(
            ConfigProblem(
                path, f"cluster {name!r} is defined twice", "give each cluster its own name"
            )
        )
    for i, (name, protocol) in enumerate(clusters):
        if protocol is not None and protocol not in listening:
            label = f"cluster {name!r}" if name is not None else "this cluster"
            problems.append(
                ConfigProblem(
                    f"clusters[{i}].protocol",
                    f"{label} uses {protocol.value}, but [listen] has no {protocol.value} address",
                    f'add {protocol.value} = "127.0.0.1:{_DEFAULT_PORTS[protocol]}" under [listen]',
                )
            )
    return problems


def file_problems_from_raw(data: Mapping[str, Any]) -> list[ConfigProblem]:
    """The whole-file rules applied to raw TOML data, for when validation failed elsewhere.

    pydantic runs ``Config``'s own checks only once every table is valid; without this a typo in
    one cluster would hide a duplicate user name until the next run.
    """

    def entries(key: str) -> list[Any]:
        value = data.get(key, [])
        return value if isinstance(value, list) else []

    def text(entry: Any, key: str) -> str | None:
        value = entry.get(key) if isinstance(entry, dict) else None
        return value if isinstance(value, str) else None

    def protocol(entry: Any) -> Protocol | None:
        value = entry.get("protocol", Protocol.POSTGRES.value) if isinstance(entry, dict) else None
        return Protocol(value) if value in {p.value for p in Protocol} else None

    listen = data.get("listen", {})
    listening = (
        {p for p in Protocol if listen.get(p.value) is not None}
        if isinstance(listen, dict)
        else set(Protocol)  # an unreadable [listen] is reported already; do not pile on
    )
    raw_clusters = data.get("clusters", [])
    return _file_problems(
        has_clusters=not isinstance(raw_clusters, list) or bool(raw_clusters),
        user_names=[text(entry, "name") for entry in entries("users")],
        clusters=[(text(entry, "name"), protocol(entry)) for entry in entries("clusters")],
        listening=listening,
    )


_DEFAULT_PORTS = {Protocol.POSTGRES: 6432, Protocol.MYSQL: 6033}


def describe(config: Config) -> str:
    """A human summary for ``dbbalancer check``: listeners, users (auth method, never passwords),
    clusters with their pool mode, servers and roles."""
    lines = ["listen:"]
    for protocol in Protocol:
        address = config.listen.address(protocol)
        if address is not None:
            lines.append(f"  {protocol.value:<9} {address}")
    lines.append("users:" if config.users else "users: (none)")
    for user in config.users:
        details = [f"auth={user.auth.value}"]
        if user.pool_mode is not None:
            details.append(f"pool_mode={user.pool_mode.value}")
        if user.default_route is not Route.AUTO:
            details.append(f"default_route={user.default_route.value}")
        if user.max_client_connections is not None:
            details.append(f"max_client_connections={user.max_client_connections}")
        lines.append(f"  {user.name}  {' '.join(details)}")
    lines.append("clusters:")
    for cluster in config.clusters:
        details = [
            cluster.protocol.value,
            f"database={cluster.server_database}",
            f"pool_mode={cluster.pool_mode.value}",
            f"pool_size={cluster.pool_size}",
        ]
        if cluster.read_write_split:
            details += [f"read_write_split balance={cluster.balance.value}"]
            details.append(f"max_replica_lag={cluster.max_replica_lag}")
        lines.append(f"  {cluster.name}  {' '.join(details)}")
        for server in cluster.servers:
            label = str(server.address)
            if server.name != label:
                label = f"{server.name} ({label})"
            weight = f" weight={server.weight}" if cluster.balance is Balance.WEIGHTED else ""
            lines.append(f"    {label}  {server.role.value}{weight}")
    return "\n".join(lines)
