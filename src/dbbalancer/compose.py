"""Protocol-neutral composition: what a protocol package implements, and the runtime built
around it from config (the composition root beside app.py; core/ itself knows no config).

A protocol package (postgres/, later mysql/) implements `ProtocolService`; the app starts one
service per protocol the config names and drives them all the same way (start, serve, one janitor
tick a second, drain, stop). The package supplies only what speaks its wire protocol: a `connect`
coroutine that opens and logs in one server connection, and a prober for health checks.
`build_cluster` turns a `[[clusters]]` table into the runtime around them: server identities,
pools with their limits, the balancing policy and the health monitor. Client limits, the reset of
a pooled connection between clients and the shutdown drain are here too, so every protocol keeps
them the same way.
"""

from __future__ import annotations

import asyncio
import logging
import time
import typing
from collections.abc import Awaitable, Callable, Collection, Coroutine
from typing import Any, TypeVar

from dbbalancer.config import ClusterConfig, Config, Protocol, ReplicaFallback, UserConfig
from dbbalancer.core.cluster import Cluster, ReplicaPolicy
from dbbalancer.core.monitor import HealthMonitor, Prober
from dbbalancer.core.pool import DropReason, Pool, PooledConnection, PoolLimits
from dbbalancer.core.topology import Server

__all__ = [
    "ClientLimits",
    "Connect",
    "DrainableSession",
    "MakeProber",
    "ProtocolService",
    "ResettableConnection",
    "ServiceFactory",
    "Spawn",
    "TooManyClients",
    "build_cluster",
    "drain_sessions",
    "pool_limits",
    "replica_policy",
    "reset_and_release",
    "servers_of",
]

log = logging.getLogger(__name__)

C = TypeVar("C", bound=PooledConnection)

# How long a pooled connection's reset may take before the connection is dropped instead.
RESET_TIMEOUT = 5.0
# How often a draining service looks for clients that became idle.
DRAIN_POLL = 0.05


class Spawn(typing.Protocol):
    """Runs a coroutine in the app's TaskGroup."""

    def __call__(self, coro: Coroutine[Any, Any, None], *, daemon: bool = False) -> None:
        """Start `coro`; a daemon runs until shutdown cancels it."""


class ProtocolService(typing.Protocol):
    """One protocol's listener, clusters and client sessions, as the app drives them.

    The app calls, in order: `start()` (health monitors up, first probes done), `serve()` on the
    protocol's [listen] address, `maintain()` once per janitor tick, and on shutdown `drain()`
    then `stop()`.
    """

    @property
    def protocol(self) -> Protocol:
        """The wire protocol served (the key in [listen] and a cluster's `protocol`)."""
        ...

    @property
    def title(self) -> str:
        """The protocol's name for people ("PostgreSQL"), used in log lines."""
        ...

    async def start(self) -> None:
        """Start the health monitors and wait briefly for their first round of probes."""
        ...

    async def serve(self, host: str, port: int) -> tuple[str, int]:
        """Listen for clients; return the address actually bound (port 0 picks one)."""
        ...

    async def maintain(self) -> None:
        """One janitor tick: pools of every cluster, and per-session timeouts."""
        ...

    async def drain(self, deadline: float) -> None:
        """Stop accepting clients, close them as they become idle, close the rest at
        `deadline` (time.monotonic()), then close the pools."""
        ...

    async def stop(self) -> None:
        """Release what is left after `drain` (the health probes' connections)."""
        ...


# -- client limits -------------------------------------------------------------------------------


class TooManyClients(Exception):
    """A client is over general.max_client_connections or its user's max_client_connections.

    The message names the setting; a protocol maps this to its own error (PostgreSQL SQLSTATE
    53300 too_many_connections; MySQL ER_CON_COUNT_ERROR / ER_TOO_MANY_USER_CONNECTIONS).
    """


class ClientLimits:
    """Counts logged-in clients, in total and per user, against the configured caps."""

    def __init__(self, max_clients: int) -> None:
        self.max_clients = max_clients
        self._total = 0
        self._by_user: dict[str, int] = {}

    def admit(self, user: UserConfig) -> None:
        """Count a logged-in client of `user`, or raise TooManyClients (and count nothing)."""
        if self._total >= self.max_clients:
            raise TooManyClients(
                f"too many client connections (general.max_client_connections = {self.max_clients})"
            )
        count = self._by_user.get(user.name, 0)
        if user.max_client_connections is not None and count >= user.max_client_connections:
            raise TooManyClients(
                f'too many connections for user "{user.name}" '
                f"(max_client_connections = {user.max_client_connections})"
            )
        self._total += 1
        self._by_user[user.name] = count + 1

    def leave(self, user: UserConfig) -> None:
        """Undo `admit`."""
        self._total -= 1
        self._by_user[user.name] -= 1

    @property
    def count(self) -> int:
        """Logged-in clients."""
        return self._total


#: Builds a protocol's service from the config and the limits shared by every protocol; the app
#: keeps a registry of these keyed by Protocol.
ServiceFactory = Callable[[Config, Spawn, ClientLimits], ProtocolService]


# -- pooled connections between clients ----------------------------------------------------------


class ResettableConnection(PooledConnection, typing.Protocol):
    """A pooled connection that can be made clean for its next client.

    PostgreSQL runs DISCARD ALL (PgBouncer's server_reset_query); MySQL will send
    COM_RESET_CONNECTION.
    """

    async def reset(self) -> None:
        """Drop the session state the last client left on the server (raises on failure)."""
        ...


R = TypeVar("R", bound=ResettableConnection)


async def reset_and_release(pool: Pool[R], conn: R) -> None:
    """Reset `conn`, then give it back to `pool`; drop it if the reset fails or takes longer than
    RESET_TIMEOUT."""
    try:
        async with asyncio.timeout(RESET_TIMEOUT):
            await conn.reset()
    except Exception as exc:
        log.info("%r: reset failed (%s); dropping it", conn, exc)
        pool.release(conn, reusable=False, reason=DropReason.RESET_FAILED)
        return
    pool.release(conn)


# -- shutdown ------------------------------------------------------------------------------------


class DrainableSession(typing.Protocol):
    """A client session as the shutdown drain sees it."""

    def is_idle(self) -> bool:
        """True between transactions (or before login), when closing loses nothing."""
        ...

    def shutdown(self) -> None:
        """Close this client because the balancer is stopping (with the protocol's error)."""
        ...


async def drain_sessions(
    sessions: Collection[DrainableSession],
    deadline: float,
    *,
    clock: Callable[[], float] = time.monotonic,
) -> None:
    """Close sessions as they become idle until none is left or `deadline`, then close the rest.

    `sessions` is the service's live collection: sessions leave it as they close.
    """
    while sessions and clock() < deadline:
        for session in list(sessions):
            if session.is_idle():
                session.shutdown()
        if not sessions:
            break
        await asyncio.sleep(DRAIN_POLL)
    for session in list(sessions):
        session.shutdown()


# -- clusters from config ------------------------------------------------------------------------

#: Opens and logs in one server connection of `cluster` for `user`, with the protocol's
#: connection `profile` ("" unless the protocol keeps some clients' connections apart).
Connect = Callable[[ClusterConfig, Server, UserConfig, str], Awaitable[C]]
#: A health prober for `cluster` that logs in as `user`.
MakeProber = Callable[[ClusterConfig, UserConfig], Prober]


def servers_of(cluster: ClusterConfig) -> list[Server]:
    """Server identities from the config."""
    return [
        Server(
            name=s.name or str(s.address),
            host=s.address.host,
            port=s.address.port,
            role=s.role,
            weight=float(s.weight),
        )
        for s in cluster.servers
    ]


def pool_limits(cluster: ClusterConfig) -> PoolLimits:
    """The limits of every pool of `cluster` (the same for every user today)."""
    return PoolLimits(
        size=cluster.pool_size,
        min_size=cluster.min_pool_size,
        reserve_size=cluster.reserve_pool_size,
        reserve_timeout=cluster.reserve_pool_timeout,
        idle_timeout=cluster.server_idle_timeout,
        lifetime=cluster.server_lifetime,
    )


def replica_policy(cluster: ClusterConfig) -> ReplicaPolicy:
    """How `cluster` spreads reads: balancing policy, lag limit, fallback, primary wait."""
    lag = cluster.max_replica_lag
    return ReplicaPolicy(
        balance=cluster.balance,
        max_lag_seconds=lag.max_seconds if lag is not None else None,
        max_lag_bytes=lag.max_bytes if lag is not None else None,
        fallback_to_primary=cluster.replica_fallback is ReplicaFallback.PRIMARY,
        primary_wait=cluster.primary_wait_timeout,
    )


def probe_user(config: Config, cluster: ClusterConfig) -> UserConfig | None:
    """The user whose credentials the health probes of `cluster` log in with: the first user
    whose `default_cluster` is it, else the first whose authentication method is of the
    cluster's protocol (a MySQL plugin for a MySQL cluster, a PostgreSQL method otherwise), else
    the first one listed."""
    users = config.users
    for user in users:
        if user.default_cluster == cluster.name:
            return user
    mysql = cluster.protocol is Protocol.MYSQL
    for user in users:
        if user.auth.is_mysql == mysql:
            return user
    return users[0] if users else None


def build_cluster(
    config: Config,
    cluster: ClusterConfig,
    *,
    connect: Connect[C],
    make_prober: MakeProber,
    epoch_name: str = "epoch",
    clock: Callable[[], float] = time.monotonic,
) -> Cluster[C]:
    """The runtime of one configured cluster: pools, balancer and (given a user to probe with)
    a health monitor.

    With min_pool_size set, every (user, server) pool exists from the start, so the janitor
    opens its connections before the first client asks.
    """
    users = {u.name: u for u in config.users}
    limits = pool_limits(cluster)

    async def open_connection(server: Server, user_name: str, profile: str) -> C:
        return await connect(cluster, server, users[user_name], profile)

    def limits_of(_user: str) -> PoolLimits:
        return limits

    runtime: Cluster[C] = Cluster(
        cluster.name,
        servers_of(cluster),
        connect=open_connection,
        limits=limits_of,
        policy=replica_policy(cluster),
        clock=clock,
    )
    prober_user = probe_user(config, cluster)
    if prober_user is not None:
        runtime.monitor = HealthMonitor(
            cluster.name,
            runtime.servers,
            make_prober(cluster, prober_user),
            interval=cluster.health_check_interval,
            timeout=cluster.health_check_timeout,
            rise=cluster.rise,
            fall=cluster.fall,
            on_latency=runtime.latency.observe,
            epoch_name=epoch_name,
        )
    if cluster.min_pool_size:
        for user in config.users:
            for server in runtime.servers:
                runtime.pool(user.name, server)
    return runtime


async def start_monitors(
    clusters: Collection[Cluster[Any]], spawn: Spawn, first_round_limit: float
) -> None:
    """Run the clusters' health monitors as daemons; wait (briefly) for their first round."""
    monitors = [c.monitor for c in clusters if c.monitor is not None]
    for monitor in monitors:
        spawn(_run_monitor(monitor), daemon=True)
    for monitor in monitors:
        await monitor.wait_first_round(first_round_limit)


async def _run_monitor(monitor: HealthMonitor) -> None:
    try:
        await monitor.run()
    except asyncio.CancelledError:
        raise
    except Exception:
        log.exception("health monitor of cluster %s stopped", monitor.cluster_name)
