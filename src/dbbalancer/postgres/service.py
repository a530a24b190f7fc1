"""The PostgreSQL side of the balancer: listener, clusters, users and cancel keys.

The app builds it from its registry (a compose.ProtocolService); the protocol-neutral runtime
of each cluster (pools, balancer, health monitor) comes from compose.build_cluster, given this
module's connect coroutine and prober. What stays here speaks PostgreSQL: SCRAM verifiers, cancel
keys, function volatility and the idle-in-transaction check. There is one service per balancer
instance: no module-level state, so two balancers can run in one process (the tests do).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from dataclasses import dataclass, field

from dbbalancer.compose import (
    ClientLimits,
    Spawn,
    TooManyClients,
    build_cluster,
    drain_sessions,
    probe_user,
    servers_of,
    start_monitors,
)
from dbbalancer.config import ClusterConfig, Config, GeneralConfig, Protocol, UserConfig
from dbbalancer.core.cluster import Cluster
from dbbalancer.core.errors import ErrorCode
from dbbalancer.core.topology import Server
from dbbalancer.postgres.auth import ScramVerifier, is_scram_verifier
from dbbalancer.postgres.backend import ServerConnection, connect_server, send_cancel
from dbbalancer.postgres.classify import Classifier
from dbbalancer.postgres.errors import sqlstate_of
from dbbalancer.postgres.frontend import ClientSession
from dbbalancer.postgres.prepared import StatementCache
from dbbalancer.postgres.probe import PgProber
from dbbalancer.postgres.startup import Refused
from dbbalancer.postgres.volatility import VolatilityLoader

__all__ = ["PgCluster", "PostgresService", "Spawn", "servers_of"]

log = logging.getLogger(__name__)


@dataclass(slots=True)
class PgCluster:
    """A configured PostgreSQL cluster and its runtime."""

    config: ClusterConfig
    runtime: Cluster[ServerConnection]
    # Server-side statements some server connection parsed successfully: a client's Parse+Sync
    # of one of these is answered without a server (see Engine._answer_locally).
    known_statements: StatementCache = field(default_factory=lambda: StatementCache(10_000))


class PostgresService:
    """Everything the PostgreSQL listener needs, built from one Config (a ProtocolService)."""

    protocol = Protocol.POSTGRES
    title = "PostgreSQL"

    def __init__(self, config: Config, spawn: Spawn, limits: ClientLimits | None = None) -> None:
        self.config = config
        self.settings: GeneralConfig = config.general
        self.spawn = spawn
        self.limits = limits or ClientLimits(config.general.max_client_connections)
        self._users = {u.name: u for u in config.users}
        self._verifiers: dict[str, ScramVerifier] = {}
        self._decoy: ScramVerifier | None = None
        self._clusters: dict[str, PgCluster] = {}
        self._classifiers: dict[str, Classifier] = {}
        self._probers: list[PgProber] = []
        self._volatility: dict[str, VolatilityLoader] = {}
        for cluster in config.clusters:
            if cluster.protocol is Protocol.POSTGRES:
                runtime: Cluster[ServerConnection] = build_cluster(
                    config,
                    cluster,
                    connect=self._connect,
                    make_prober=self._make_prober,
                    epoch_name="timeline",
                )
                self._clusters[cluster.name] = PgCluster(cluster, runtime)
                classifier = self._classifiers.setdefault(cluster.name, Classifier())
                self._add_volatility_loader(cluster, runtime, classifier)
        self._cancel: dict[tuple[int, int], ClientSession] = {}
        self.server: asyncio.Server | None = None
        self.sessions: set[ClientSession] = set()
        # (cluster, user, start-up settings) -> the ParameterStatus values a client was sent.
        self.welcome: dict[tuple[str, str, tuple[tuple[str, str], ...]], dict[str, str]] = {}

    async def _connect(
        self, cluster: ClusterConfig, server: Server, user: UserConfig, _profile: str
    ) -> ServerConnection:
        """Open and log in one server connection (compose.Connect; PostgreSQL clients all share
        one profile)."""
        conn = await connect_server(
            server,
            user=user.name,
            password=user.login_password,
            database=cluster.server_database,
            connect_timeout=self.settings.server_connect_timeout,
            max_length=self.settings.max_message_size,
        )
        conn.statements.capacity = cluster.max_prepared_statements
        return conn

    def _make_prober(self, cluster: ClusterConfig, user: UserConfig) -> PgProber:
        """The health prober of `cluster` (compose.MakeProber); closed by `stop()`."""
        prober = PgProber(
            user=user.name,
            password=user.login_password,
            database=cluster.server_database,
            connect_timeout=min(self.settings.server_connect_timeout, cluster.health_check_timeout),
        )
        self._probers.append(prober)
        return prober

    def _add_volatility_loader(
        self, cluster: ClusterConfig, runtime: Cluster[ServerConnection], classifier: Classifier
    ) -> None:
        """Learn function volatility from the primary, logging in as the probes do."""
        user = probe_user(self.config, cluster)
        if user is None:
            return
        self._volatility[cluster.name] = VolatilityLoader(
            classifier,
            runtime.primary,
            user=user.name,
            password=user.login_password,
            database=cluster.server_database,
            connect_timeout=self.settings.server_connect_timeout,
        )

    def classifier(self, cluster: str) -> Classifier:
        """The statement classifier of `cluster` (cache and learnt volatility per cluster)."""
        return self._classifiers[cluster]

    # -- lookups for sessions -------------------------------------------------------------------

    def user(self, name: str) -> UserConfig | None:
        """The configured user called `name`."""
        return self._users.get(name)

    def cluster(self, name: str) -> PgCluster | None:
        """The PostgreSQL cluster clients reach with database name `name`."""
        return self._clusters.get(name)

    def cluster_names(self) -> list[str]:
        """Names clients may connect to."""
        return sorted(self._clusters)

    def clusters(self) -> list[PgCluster]:
        """Every PostgreSQL cluster."""
        return list(self._clusters.values())

    def scram_verifier(self, user: UserConfig | None) -> ScramVerifier:
        """The user's SCRAM verifier, derived once from a plaintext password and cached.

        For an unknown user a throw-away verifier is returned, so the exchange runs to the end and
        fails like a wrong password (no user enumeration, as PostgreSQL does).
        """
        if user is None:
            if self._decoy is None:
                self._decoy = ScramVerifier.from_password(secrets.token_hex(16))
            return self._decoy
        verifier = self._verifiers.get(user.name)
        if verifier is None:
            if is_scram_verifier(user.password):
                verifier = ScramVerifier.parse(user.password)
            else:
                verifier = ScramVerifier.from_password(user.password)
            self._verifiers[user.name] = verifier
        return verifier

    # -- client limits --------------------------------------------------------------------------

    def client_connected(self, session: ClientSession) -> None:
        """Count a logged-in client, refusing it over max_client_connections (SQLSTATE 53300)."""
        user = session.user
        assert user is not None
        try:
            self.limits.admit(user)
        except TooManyClients as exc:
            raise Refused(sqlstate_of(ErrorCode.CLIENT_LIMIT), str(exc)) from None

    def client_disconnected(self, session: ClientSession) -> None:
        """Undo `client_connected`."""
        user = session.user
        assert user is not None
        self.limits.leave(user)

    @property
    def client_count(self) -> int:
        """Logged-in clients."""
        return self.limits.count

    # -- cancel requests ------------------------------------------------------------------------

    def register_cancel(self, session: ClientSession) -> None:
        """Make the session's BackendKeyData reachable by a CancelRequest."""
        self._cancel[session.backend_key] = session

    def unregister_cancel(self, session: ClientSession) -> None:
        """Forget the session's key."""
        if self._cancel.get(session.backend_key) is session:
            del self._cancel[session.backend_key]

    async def cancel(self, process_id: int, secret_key: int) -> None:
        """Relay a CancelRequest to the server running that client's query, if any."""
        session = self._cancel.get((process_id, secret_key))
        if session is None:
            log.info("cancel request with an unknown key ignored")
            return
        server = session.cancel_target()
        if server is None or server.backend_key is None:
            return
        await send_cancel(server.server, *server.backend_key, self.settings.server_connect_timeout)

    # -- lifecycle (compose.ProtocolService) ------------------------------------------------

    async def start(self, first_round_limit: float = 2.0) -> None:
        """Start the health monitors and wait (briefly) for their first round of probes; then
        the function volatility loaders, likewise."""
        await start_monitors(
            [c.runtime for c in self._clusters.values()], self.spawn, first_round_limit
        )
        for loader in self._volatility.values():
            self.spawn(_run_loader(loader), daemon=True)
        for loader in self._volatility.values():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(first_round_limit):
                    await loader.loaded.wait()

    def poke_volatility(self, cluster: str) -> None:
        """DDL ran on `cluster`: reload function volatility soon."""
        loader = self._volatility.get(cluster)
        if loader is not None:
            loader.poke()

    async def serve(self, host: str, port: int) -> tuple[str, int]:
        """Listen for clients."""
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(
            lambda: ClientSession(self), host, port, reuse_address=True, backlog=1024
        )
        sockname = self.server.sockets[0].getsockname()
        return (sockname[0], sockname[1])

    async def maintain(self) -> None:
        """One janitor tick: pools of every cluster, and idle_transaction_timeout."""
        now = time.monotonic()
        for session in list(self.sessions):
            engine = session.engine
            cluster = session.cluster
            if engine is None or cluster is None:
                continue
            limit = cluster.config.idle_transaction_timeout
            if limit and engine.idle_in_transaction(now, limit):
                log.info("%r: idle in transaction for over %gs; closing it", session, limit)
                session.fatal(
                    sqlstate_of(ErrorCode.IDLE_TRANSACTION_TIMEOUT),
                    "terminating connection due to idle-in-transaction timeout "
                    f"(idle_transaction_timeout = {limit:g}s)",
                )
        for cluster in self._clusters.values():
            await cluster.runtime.maintain()

    async def drain(self, deadline: float) -> None:
        """Shutdown: stop listening, close clients between transactions (SQLSTATE 57P01, as
        PostgreSQL does) until `deadline`, then every client; then close the pools."""
        if self.server is not None:
            self.server.close()
        await drain_sessions(self.sessions, deadline)
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


async def _run_loader(loader: VolatilityLoader) -> None:
    try:
        await loader.run()
    except asyncio.CancelledError:
        raise
    except Exception:
        log.exception("function volatility loader stopped")
