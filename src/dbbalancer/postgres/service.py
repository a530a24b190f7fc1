"""The PostgreSQL side of the balancer: listener, clusters, users and cancel keys.

Owned by the app (the composition root); it turns the typed config into runtime objects and hands
client sessions what they need. There is one service per balancer instance: no module-level state,
so two balancers can run in one process (the tests do).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
import typing
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any

from dbbalancer.config import (
    ClusterConfig,
    Config,
    GeneralConfig,
    Protocol,
    ReplicaFallback,
    UserConfig,
)
from dbbalancer.core.balance import Policy
from dbbalancer.core.cluster import Cluster, ReplicaPolicy
from dbbalancer.core.errors import ErrorCode
from dbbalancer.core.monitor import HealthMonitor
from dbbalancer.core.pool import PoolLimits
from dbbalancer.core.topology import Server, ServerRole
from dbbalancer.postgres.auth import ScramVerifier, is_scram_verifier
from dbbalancer.postgres.backend import ServerConnection, connect_server, send_cancel
from dbbalancer.postgres.classify import Classifier
from dbbalancer.postgres.errors import sqlstate_of
from dbbalancer.postgres.frontend import ClientSession, Refused
from dbbalancer.postgres.prepared import StatementCache
from dbbalancer.postgres.probe import PgProber
from dbbalancer.postgres.volatility import VolatilityLoader

log = logging.getLogger(__name__)


class Spawn(typing.Protocol):
    """Runs a coroutine in the app's TaskGroup."""

    def __call__(self, coro: Coroutine[Any, Any, None], *, daemon: bool = False) -> None:
        """Start `coro`; a daemon runs until shutdown cancels it."""


@dataclass(slots=True)
class PgCluster:
    """A configured PostgreSQL cluster and its runtime."""

    config: ClusterConfig
    runtime: Cluster[ServerConnection]
    # Server-side statements some server connection parsed successfully: a client's Parse+Sync
    # of one of these is answered without a server (see Engine._answer_locally).
    known_statements: StatementCache = field(default_factory=lambda: StatementCache(10_000))


def servers_of(cluster: ClusterConfig) -> list[Server]:
    """Server identities from the config."""
    return [
        Server(
            name=s.name or str(s.address),
            host=s.address.host,
            port=s.address.port,
            role=ServerRole(s.role.value),
            weight=float(s.weight),
        )
        for s in cluster.servers
    ]


class PostgresService:
    """Everything the PostgreSQL listener needs, built from one Config."""

    def __init__(self, config: Config, spawn: Spawn) -> None:
        self.config = config
        self.settings: GeneralConfig = config.general
        self.spawn = spawn
        self._users = {u.name: u for u in config.users}
        self._verifiers: dict[str, ScramVerifier] = {}
        self._decoy: ScramVerifier | None = None
        self._clusters: dict[str, PgCluster] = {}
        self._classifiers: dict[str, Classifier] = {}
        self._probers: list[PgProber] = []
        self._volatility: dict[str, VolatilityLoader] = {}
        for cluster in config.clusters:
            if cluster.protocol is Protocol.POSTGRES:
                runtime = self._make_runtime(cluster)
                self._clusters[cluster.name] = PgCluster(cluster, runtime)
                if cluster.min_pool_size:
                    # The janitor opens min_pool_size connections in every pool from the start.
                    for user in config.users:
                        for server in runtime.servers:
                            runtime.pool(user.name, server)
                self._classifiers.setdefault(cluster.name, Classifier())
        self._cancel: dict[tuple[int, int], ClientSession] = {}
        self._clients_total = 0
        self._clients_by_user: dict[str, int] = {}
        self.server: asyncio.Server | None = None
        self.sessions: set[ClientSession] = set()
        # (cluster, user, start-up settings) -> the ParameterStatus values a client was sent.
        self.welcome: dict[tuple[str, str, tuple[tuple[str, str], ...]], dict[str, str]] = {}

    def _make_runtime(self, cluster: ClusterConfig) -> Cluster[ServerConnection]:
        general = self.config.general

        async def connect(server: Server, user_name: str) -> ServerConnection:
            user = self._users[user_name]
            conn = await connect_server(
                server,
                user=user.name,
                password=user.login_password,
                database=cluster.server_database,
                connect_timeout=general.server_connect_timeout,
                max_length=general.max_message_size,
            )
            conn.statements.capacity = cluster.max_prepared_statements
            return conn

        def limits(_user: str) -> PoolLimits:
            return PoolLimits(
                size=cluster.pool_size,
                min_size=cluster.min_pool_size,
                reserve_size=cluster.reserve_pool_size,
                reserve_timeout=cluster.reserve_pool_timeout,
                idle_timeout=cluster.server_idle_timeout,
                lifetime=cluster.server_lifetime,
            )

        lag = cluster.max_replica_lag
        policy = ReplicaPolicy(
            balance=Policy(cluster.balance.value),
            max_lag_seconds=lag.max_seconds if lag is not None else None,
            max_lag_bytes=lag.max_bytes if lag is not None else None,
            fallback_to_primary=cluster.replica_fallback is ReplicaFallback.PRIMARY,
            primary_wait=cluster.primary_wait_timeout,
        )
        runtime = Cluster(
            cluster.name, servers_of(cluster), connect=connect, limits=limits, policy=policy
        )
        prober_user = self._probe_user()
        if prober_user is not None:
            prober = PgProber(
                user=prober_user.name,
                password=prober_user.login_password,
                database=cluster.server_database,
                connect_timeout=min(general.server_connect_timeout, cluster.health_check_timeout),
            )
            self._probers.append(prober)
            self._volatility[cluster.name] = VolatilityLoader(
                self._classifiers.setdefault(cluster.name, Classifier()),
                runtime.primary,
                user=prober_user.name,
                password=prober_user.login_password,
                database=cluster.server_database,
                connect_timeout=general.server_connect_timeout,
            )
            runtime.monitor = HealthMonitor(
                cluster.name,
                runtime.servers,
                prober,
                interval=cluster.health_check_interval,
                timeout=cluster.health_check_timeout,
                rise=cluster.rise,
                fall=cluster.fall,
                on_latency=runtime.latency.observe,
            )
        return runtime

    def _probe_user(self) -> UserConfig | None:
        """The user whose credentials the health probes log in with (the first one listed)."""
        return self.config.users[0] if self.config.users else None

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
        if self._clients_total >= self.settings.max_client_connections:
            raise Refused(
                sqlstate_of(ErrorCode.CLIENT_LIMIT),
                "too many client connections "
                f"(general.max_client_connections = {self.settings.max_client_connections})",
            )
        count = self._clients_by_user.get(user.name, 0)
        if user.max_client_connections is not None and count >= user.max_client_connections:
            raise Refused(
                sqlstate_of(ErrorCode.CLIENT_LIMIT),
                f'too many connections for user "{user.name}" '
                f"(max_client_connections = {user.max_client_connections})",
            )
        self._clients_total += 1
        self._clients_by_user[user.name] = count + 1

    def client_disconnected(self, session: ClientSession) -> None:
        """Undo `client_connected`."""
        user = session.user
        assert user is not None
        self._clients_total -= 1
        self._clients_by_user[user.name] -= 1

    @property
    def client_count(self) -> int:
        """Logged-in clients."""
        return self._clients_total

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

    # -- lifecycle ------------------------------------------------------------------------------

    async def start_monitors(self, first_round_limit: float = 2.0) -> None:
        """Start the health monitors and wait (briefly) for their first round of probes."""
        monitors = [c.runtime.monitor for c in self._clusters.values() if c.runtime.monitor]
        for monitor in monitors:
            self.spawn(_run_monitor(monitor), daemon=True)
        for monitor in monitors:
            await monitor.wait_first_round(first_round_limit)
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

    async def start(self, host: str, port: int) -> asyncio.Server:
        """Listen for clients."""
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(
            lambda: ClientSession(self), host, port, reuse_address=True, backlog=1024
        )
        return self.server

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

    def close_idle_sessions(self) -> None:
        """Shutdown: close every client between transactions (SQLSTATE 57P01, as PostgreSQL)."""
        for session in list(self.sessions):
            if session.is_idle():
                session.shutdown()

    def close_all_sessions(self) -> None:
        """Shutdown timeout reached: close every client now."""
        for session in list(self.sessions):
            session.shutdown()

    def close(self) -> None:
        """Stop listening and close the pools."""
        if self.server is not None:
            self.server.close()
        for cluster in self._clusters.values():
            cluster.runtime.close()

    async def close_probes(self) -> None:
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


async def _run_monitor(monitor: HealthMonitor) -> None:
    try:
        await monitor.run()
    except asyncio.CancelledError:
        raise
    except Exception:
        log.exception("health monitor of cluster %s stopped", monitor.cluster_name)
