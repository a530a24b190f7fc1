"""The MySQL/MariaDB side of the balancer: listener, clusters, users (a compose.ProtocolService).

The app builds it from its registry; each cluster's protocol-neutral runtime (pools, balancer,
health monitor) comes from compose.build_cluster, given this module's connect coroutine and the
prober of mysql/probe.py. What stays here speaks MySQL: the capability set pooled server
connections share, the RSA key pair of caching_sha2_password, the server version clients are
greeted with and what each pool profile's connections start with. There is no module-level
state, so two balancers can run in one process.

Pooled server connections share one capability set (SERVER_CAPABILITIES): the ones the proxy
offers clients (login.OFFERED_CAPABILITIES), so that every response a server sends is one the
client can read as it is, plus LOCAL_FILES, so that the proxy, not the server, decides about
LOAD DATA LOCAL INFILE. FOUND_ROWS, CLIENT_MULTI_STATEMENTS and the handshake's collation are
the client's own: connections are pooled apart by them (a pool profile, mysql/profile.py) and
log in with them, and a client gets those of its own profile.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Final

from dbbalancer.compose import (
    RESET_TIMEOUT,
    ClientLimits,
    Spawn,
    TooManyClients,
    build_cluster,
    drain_sessions,
    probe_user,
    reset_and_release,
    start_monitors,
)
from dbbalancer.config import AuthMethod, ClusterConfig, Config, GeneralConfig, Protocol, UserConfig
from dbbalancer.core.cluster import Cluster
from dbbalancer.core.errors import ErrorCode
from dbbalancer.core.pool import DropReason, Pool
from dbbalancer.core.routing import Target
from dbbalancer.core.topology import Server
from dbbalancer.mysql.backend import ServerConnection, ServerError, connect_server
from dbbalancer.mysql.classify import Classifier
from dbbalancer.mysql.codec import Capability
from dbbalancer.mysql.frontend import ClientSession, Refused
from dbbalancer.mysql.login import OFFERED_CAPABILITIES, ClientLogin, RsaKeys
from dbbalancer.mysql.probe import MyProber
from dbbalancer.mysql.profile import ConnectionDefaults, PoolProfile, ProfileDefaults
from dbbalancer.mysql.statements import StatementRegistry

__all__ = ["SERVER_CAPABILITIES", "MySqlCluster", "MySqlService"]

log = logging.getLogger(__name__)

SERVER_CAPABILITIES: Final = (
    OFFERED_CAPABILITIES & ~Capability.FOUND_ROWS
) | Capability.LOCAL_FILES
# Greeted with until a server connection tells the real version.
DEFAULT_SERVER_VERSION: Final = "5.5.5-10.11.0-MariaDB"
VERSION_SUFFIX: Final = "-dbbalancer"


class MySqlCluster:
    """A configured MySQL cluster and its runtime."""

    __slots__ = ("config", "runtime")

    def __init__(self, config: ClusterConfig, runtime: Cluster[ServerConnection]) -> None:
        self.config = config
        self.runtime = runtime


class MySqlService:
    """Everything the MySQL listener needs, built from one Config (a ProtocolService)."""

    protocol = Protocol.MYSQL
    title = "MySQL"

    def __init__(self, config: Config, spawn: Spawn, limits: ClientLimits | None = None) -> None:
        self.config = config
        self.settings: GeneralConfig = config.general
        self.spawn = spawn
        self.limits = limits or ClientLimits(config.general.max_client_connections)
        self._users = {u.name: u for u in config.users}
        self._clusters: dict[str, MySqlCluster] = {}
        self._probers: list[MyProber] = []
        for cluster in config.clusters:
            if cluster.protocol is Protocol.MYSQL:
                runtime: Cluster[ServerConnection] = build_cluster(
                    config, cluster, connect=self._connect, make_prober=self._make_prober
                )
                self._clusters[cluster.name] = MySqlCluster(cluster, runtime)
        self.offered = OFFERED_CAPABILITIES
        if any(c.config.local_infile for c in self._clusters.values()):
            self.offered |= Capability.LOCAL_FILES
        self._rsa: RsaKeys | None = None
        self.server_version = DEFAULT_SERVER_VERSION + VERSION_SUFFIX
        self._version_learned = False
        self.server: asyncio.Server | None = None
        self.sessions: set[ClientSession] = set()
        self.classifier = Classifier()
        # Binary-protocol statements of every connection (mysql/statements.py).
        self.statements = StatementRegistry()
        # What the connections of each pool start with: (cluster, user, profile) -> defaults.
        self._defaults: dict[tuple[str, str, str], ProfileDefaults] = {}

    # -- server connections ---------------------------------------------------------------------

    async def _connect(
        self, cluster: ClusterConfig, server: Server, user: UserConfig, profile: str
    ) -> ServerConnection:
        """Open and log in one pooled server connection (compose.Connect) with the flags and
        collation of its pool `profile` (mysql/profile.py), and learn its character-set
        variables for the pool's `ProfileDefaults`."""
        wanted = PoolProfile.parse(profile)
        timeout = self.settings.server_connect_timeout
        conn = await connect_server(
            server,
            user=user.name,
            password=user.login_password,
            database=cluster.server_database,
            connect_timeout=timeout,
            max_payload=self.settings.max_message_size,
            capabilities=wanted.capabilities(SERVER_CAPABILITIES),
            charset=wanted.collation,
        )
        found: ConnectionDefaults | None = None
        try:
            async with asyncio.timeout(timeout):
                rows = await conn.query(ConnectionDefaults.query(wanted.charset))
            found = ConnectionDefaults.from_row(rows[0]) if rows else None
        except ServerError as refused:
            log.info("%r: cannot read its character set (%s)", conn, refused.message)
        except BaseException:
            conn.close()
            raise
        self.profile_defaults(cluster.name, user.name, profile).learn(found)
        return conn

    def profile_defaults(self, cluster: str, user: str, profile: str) -> ProfileDefaults:
        """What the connections of `user`'s pools of `profile` in `cluster` start with."""
        key = (cluster, user, profile)
        found = self._defaults.get(key)
        if found is None:
            found = self._defaults[key] = ProfileDefaults()
        return found

    def _make_prober(self, cluster: ClusterConfig, user: UserConfig) -> MyProber:
        """The health prober of `cluster` (compose.MakeProber); closed by `stop()`."""
        prober = MyProber(
            user=user.name,
            password=user.login_password,
            database=cluster.server_database,
            connect_timeout=min(self.settings.server_connect_timeout, cluster.health_check_timeout),
        )
        self._probers.append(prober)
        return prober

    def learn_version(self, conn: ServerConnection) -> None:
        """Greet later clients with the version of the servers (and a suffix naming the
        proxy), the way MariaDB keeps its "5.5.5-" prefix for old clients."""
        if not self._version_learned and conn.server_version:
            self.server_version = conn.server_version + VERSION_SUFFIX
            self._version_learned = True

    async def give_back(
        self, pool: Pool[ServerConnection], conn: ServerConnection, restore: list[bytes]
    ) -> None:
        """Undo what the last client changed that a reset keeps (multi-statements option,
        current database), then reset the connection and pool it (compose.reset_and_release);
        drop it if any step fails."""
        self.statements.forget_connection(conn)  # a reset drops the server's statements
        try:
            async with asyncio.timeout(RESET_TIMEOUT):
                for command in restore:
                    await conn.roundtrip(command)
        except Exception as exc:
            log.info("%r: restoring the session failed (%s); dropping it", conn, exc)
            pool.release(conn, reusable=False, reason=DropReason.RESET_FAILED)
            return
        await reset_and_release(pool, conn)

    # -- lookups for sessions -------------------------------------------------------------------

    def new_login(self, connection_id: int, peer_host: str) -> ClientLogin:
        """The login exchange of a new client."""
        return ClientLogin(
            users=self._users.get,
            rsa_keys=self.rsa_keys,
            server_version=self.server_version,
            connection_id=connection_id,
            peer_host=peer_host,
            offered=self.offered,
        )

    def rsa_keys(self) -> RsaKeys:
        """The RSA key pair of caching_sha2_password (made at start when a user needs it)."""
        if self._rsa is None:
            self._rsa = RsaKeys()
        return self._rsa

    def cluster_for(self, user: UserConfig, database: str | None) -> MySqlCluster:
        """The cluster a client reaches with `database` (or none): raises Refused."""
        if database is None:
            name = user.default_cluster
            if name is None and len(self._clusters) == 1:
                name = next(iter(self._clusters))
            if name is None:
                raise Refused(
                    ErrorCode.UNKNOWN_DATABASE,
                    "No database selected: name one of "
                    + ", ".join(sorted(self._clusters))
                    + f" (or give user '{user.name}' a default_cluster)",
                )
            database = name
        cluster = self._clusters.get(database)
        if cluster is None:
            raise Refused(
                ErrorCode.UNKNOWN_DATABASE,
                f"Unknown database '{database}': dbbalancer serves "
                + ", ".join(sorted(self._clusters)),
            )
        return cluster

    def admit(self, user: UserConfig) -> None:
        """Count a logged-in client; Refused (ER_CON_COUNT_ERROR) over a limit."""
        try:
            self.limits.admit(user)
        except TooManyClients as exc:
            raise Refused(ErrorCode.CLIENT_LIMIT, f"Too many connections: {exc}") from None

    def clusters(self) -> list[MySqlCluster]:
        """Every MySQL cluster."""
        return list(self._clusters.values())

    def cluster(self, name: str) -> MySqlCluster | None:
        """The MySQL cluster clients reach with database name `name`."""
        return self._clusters.get(name)

    # -- lifecycle (compose.ProtocolService) ----------------------------------------------------

    async def start(self, first_round_limit: float = 2.0) -> None:
        """Start the health monitors and wait (briefly) for their first round; make the RSA
        keys if a user authenticates with caching_sha2_password; learn the servers' version
        from one primary connection."""
        await start_monitors(
            [c.runtime for c in self._clusters.values()], self.spawn, first_round_limit
        )
        if any(u.auth is AuthMethod.CACHING_SHA2_PASSWORD for u in self.config.users):
            self.rsa_keys()
        await self._learn_version(first_round_limit)

    async def _learn_version(self, limit: float) -> None:
        for cluster in self._clusters.values():
            user = probe_user(self.config, cluster.config)
            if user is None:
                return
            try:
                async with asyncio.timeout(limit):
                    _, pool, conn = await cluster.runtime.checkout(
                        user.name, Target.PRIMARY, wait_limit=limit
                    )
            except Exception as exc:
                log.info(
                    "cluster %s: no primary connection at start (%s)", cluster.config.name, exc
                )
                continue
            self.learn_version(conn)
            pool.release(conn)
            return

    async def serve(self, host: str, port: int) -> tuple[str, int]:
        """Listen for clients."""
        loop = asyncio.get_running_loop()
        factory: Callable[[], ClientSession] = lambda: ClientSession(self)  # noqa: E731
        self.server = await loop.create_server(
            factory, host, port, reuse_address=True, backlog=1024
        )
        sockname = self.server.sockets[0].getsockname()
        return (sockname[0], sockname[1])

    async def maintain(self) -> None:
        """One janitor tick: the pools of every cluster."""
        for cluster in self._clusters.values():
            await cluster.runtime.maintain()

    async def drain(self, deadline: float) -> None:
        """Shutdown: stop listening, close clients between transactions (ER_SERVER_SHUTDOWN)
        until `deadline`, then every client; then close the pools."""
        if self.server is not None:
            self.server.close()
        await drain_sessions(self.sessions, deadline, clock=time.monotonic)
        self.close()

    def close(self) -> None:
        """Stop listening and close the pools."""
        if self.server is not None:
            self.server.close()
        for cluster in self._clusters.values():
            cluster.runtime.close()

    async def stop(self) -> None:
        """Close the health probes' connections."""
        for prober in self._probers:
            await prober.close()
