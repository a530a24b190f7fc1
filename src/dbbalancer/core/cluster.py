"""A cluster at run time: its servers and one pool per (user, server), whatever the protocol.

The protocol package supplies `connect(server, user)`, the coroutine that opens and logs in one
server connection; the cluster owns the pools, routes a session to a server, and runs the
janitor tick that expires idle connections and refills pools to min_pool_size.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

from dbbalancer.core.balance import Balancer, Candidate, LatencyTracker, Policy
from dbbalancer.core.monitor import HealthMonitor
from dbbalancer.core.pool import DropReason, Pool, PooledConnection, PoolLimits, PoolStats
from dbbalancer.core.position import Position
from dbbalancer.core.routing import RouteReason, Target
from dbbalancer.core.topology import Server, ServerRole

try:
    from mypy_extensions import mypyc_attr
except ImportError:  # run from source without the dev tools: the decorator is mypyc's alone

    def mypyc_attr(  # type: ignore[misc]
        *_args: object, **_kwargs: object
    ) -> Callable[[type], type]:
        """mypyc reads `@mypyc_attr` when it compiles; at run time it changes nothing."""
        return lambda cls: cls


log = logging.getLogger(__name__)

C = TypeVar("C", bound=PooledConnection)


class NoServerAvailable(Exception):
    """No server can take this session or statement; the message says why and what to do."""


@mypyc_attr(allow_interpreted_subclasses=True)
class ServerConnectError(Exception):
    """Opening a server connection failed (a protocol package raises a subclass of this).

    Compiled, `except ServerConnectError` checks for this class and its compiled subclasses
    only, unless interpreted subclasses are allowed: mysql/backend.py's ServerUnavailable is
    one (it is not compiled), and would otherwise come out as a TypeError."""


RETRY_PAUSE = 0.05
# Policies that look only at names and weights (round robin has its own ring below).
_STATIC_POLICIES = frozenset((Policy.RANDOM, Policy.WEIGHTED))


def _name(server: Server) -> str:
    return server.name


@dataclass(frozen=True, slots=True)
class ReplicaPolicy:
    """How reads are spread: the balancing policy, the lag limits and the fallback.

    `max_lag_seconds` is the neutral limit (the replica's replay delay). `max_lag_bytes` is a
    PostgreSQL option: it needs positions that measure bytes (`Position.bytes_behind`), and a
    replica whose lag in bytes is unknown does not meet it.
    """

    balance: Policy = Policy.ROUND_ROBIN
    max_lag_seconds: float | None = None
    max_lag_bytes: int | None = None
    fallback_to_primary: bool = True
    primary_wait: float = 5.0


@dataclass(frozen=True, slots=True)
class Choice:
    """A server picked for a unit of work, and why it is not the one asked for (if so)."""

    server: Server
    fallback: RouteReason | None = None


class Cluster(Generic[C]):
    """Servers of one logical database and the pools in front of them."""

    def __init__(
        self,
        name: str,
        servers: list[Server],
        *,
        connect: Callable[[Server, str, str], Awaitable[C]],
        limits: Callable[[str], PoolLimits],
        policy: ReplicaPolicy | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name = name
        self.servers = servers
        self.policy = policy or ReplicaPolicy()
        self.monitor: HealthMonitor | None = None
        self.balancer = Balancer(self.policy.balance)
        self.latency = LatencyTracker()
        self._eligible: list[Server] = []
        self._eligible_key: tuple[int, Position | None] | None = None
        self._static_candidates: dict[tuple[str, ...], list[Candidate]] = {}
        # Round robin: the last list of replicas ordered, and the same servers sorted by name.
        self._ring_source: list[Server] | None = None
        self._ring: list[Server] = []
        self._ring_keys: list[str] = []
        self._connect = connect
        self._limits = limits
        self._clock = clock
        # (user, profile, server name): a protocol may keep connections of one user apart by
        # a profile ("" by default), when what a client negotiated changes what servers answer.
        self._pools: dict[tuple[str, str, str], Pool[C]] = {}

    def primary(self) -> Server | None:
        """The server that takes writes now: elected by the monitor, else the configured one."""
        if self.monitor is not None:
            return self.monitor.primary
        for server in self.servers:
            if server.role is ServerRole.PRIMARY:
                return server
        return None

    async def wait_primary(self) -> Server:
        """The primary, waiting up to primary_wait_timeout while there is none (failover)."""
        server = self.primary()
        if server is None and self.monitor is not None:
            server = await self.monitor.wait_primary(self.policy.primary_wait)
        if server is None:
            raise NoServerAvailable(
                f"cluster {self.name} has no primary "
                f"(waited {self.policy.primary_wait:g}s, primary_wait_timeout); "
                "check the servers' health, or promote a replica"
            )
        return server

    def eligible_replicas(self, min_position: Position | None = None) -> list[Server]:
        """Replicas that may take reads now: healthy, within the lag limit, and (for
        read-your-writes) at a position that covers `min_position`.

        Cached between probe results: this runs for every unit of work routed to a replica.
        """
        if self.monitor is None:
            return [s for s in self.servers if s.role is ServerRole.REPLICA]
        key = (self.monitor.version, min_position)
        if self._eligible_key == key:
            return self._eligible
        self._eligible = self._eligible_now(min_position)
        self._eligible_key = key
        return self._eligible

    def _eligible_now(self, min_position: Position | None) -> list[Server]:
        assert self.monitor is not None
        out = []
        policy = self.policy
        for server in self.monitor.usable_replicas():
            status = self.monitor.server_status(server.name)
            if policy.max_lag_bytes is not None and (
                status.lag_bytes is None or status.lag_bytes > policy.max_lag_bytes
            ):
                continue
            if policy.max_lag_seconds is not None and (
                status.replay_delay is None or status.replay_delay > policy.max_lag_seconds
            ):
                continue
            if min_position is not None and (
                status.position is None or not status.position.covers(min_position)
            ):
                continue
            out.append(server)
        return out

    def order_replicas(self, replicas: list[Server]) -> list[Server]:
        """`replicas` in the balancing policy's order of preference."""
        if not replicas:
            return replicas
        if self.policy.balance is Policy.ROUND_ROBIN:
            # The hot path for every read: eligible_replicas() returns the same list until the
            # next probe result, so the sorted ring is built once per change, not per query.
            if replicas is not self._ring_source:
                self._ring = sorted({s.name: s for s in replicas}.values(), key=_name)
                self._ring_keys = [s.name for s in self._ring]
                self._ring_source = replicas
            ring = self._ring
            start = self.balancer.rotation_start(self._ring_keys)
            return ring[start:] + ring[:start] if start else list(ring)
        by_name = {s.name: s for s in replicas}
        if self.policy.balance in _STATIC_POLICIES:
            # Build the candidates once per set of names.
            names = tuple(by_name)
            static = self._static_candidates.get(names)
            if static is None:
                static = [Candidate(key=s.name, weight=s.weight) for s in replicas]
                self._static_candidates[names] = static
            return [by_name[c.key] for c in self.balancer.order(static)]
        candidates = []
        for server in replicas:
            status = self.monitor.server_status(server.name) if self.monitor else None
            candidates.append(
                Candidate(
                    key=server.name,
                    weight=server.weight,
                    connections=self.active_connections(server),
                    latency=self.latency.get(server.name),
                    load=status.load if status is not None else None,
                )
            )
        return [by_name[c.key] for c in self.balancer.order(candidates)]

    def try_checkout(
        self,
        user: str,
        target: Target,
        *,
        min_position: Position | None = None,
        exclude: frozenset[str] = frozenset(),
        profile: str = "",
    ) -> tuple[Choice, Pool[C], C] | list[Server]:
        """The fast path of `checkout`: an idle connection of the first choice, without waiting.

        Returns the checked-out connection, or the replicas in balancing order for `checkout`
        to use (so the balancer advances once per unit of work either way).
        """
        if target is Target.REPLICA:
            replicas = self.order_replicas(self.eligible_replicas(min_position))
            if exclude:
                replicas = [s for s in replicas if s.name not in exclude]
            if replicas:
                pool = self.pool(user, replicas[0], profile)
                conn = pool.try_acquire()
                if conn is not None:
                    return Choice(replicas[0]), pool, conn
            return replicas
        primary = self.primary()
        if primary is not None:
            pool = self.pool(user, primary, profile)
            conn = pool.try_acquire()
            if conn is not None:
                return Choice(primary), pool, conn
        return []

    async def checkout(
        self,
        user: str,
        target: Target,
        *,
        wait_limit: float,
        min_position: Position | None = None,
        exclude: frozenset[str] = frozenset(),
        order: list[Server] | None = None,
        profile: str = "",
    ) -> tuple[Choice, Pool[C], C]:
        """A server connection for a unit of work sent to `target`.

        Replicas are tried in the balancing order; one that cannot be reached is reported to the
        health monitor and the next is tried, then the primary (replica_fallback). For the
        primary, a failed connect is reported too and retried while a new primary may appear,
        up to primary_wait_timeout: that is failover buffering.
        """
        if target is Target.REPLICA:
            replicas = order
            if replicas is None:
                replicas = self.order_replicas(self.eligible_replicas(min_position))
            for server in replicas:
                if server.name in exclude:
                    continue
                pool = self.pool(user, server, profile)
                try:
                    return Choice(server), pool, await pool.acquire(wait_limit)
                except ServerConnectError as exc:
                    log.warning("cluster %s: replica %s: %s", self.name, server.name, exc)
                    self.report_failure(server)
            if not self.policy.fallback_to_primary:
                raise NoServerAvailable(
                    f"cluster {self.name}: no replica can take reads now "
                    '(replica_fallback = "error"); check replica health and lag'
                )
            reason = RouteReason.NO_REPLICA
            if min_position is not None and self.eligible_replicas():
                reason = RouteReason.OWN_WRITES
            choice, pool, conn = await self._checkout_primary(user, wait_limit, profile)
            return Choice(choice.server, reason), pool, conn
        return await self._checkout_primary(user, wait_limit, profile)

    async def _checkout_primary(
        self, user: str, wait_limit: float, profile: str
    ) -> tuple[Choice, Pool[C], C]:
        deadline = self._clock() + self.policy.primary_wait
        while True:
            server = await self.wait_primary()
            pool = self.pool(user, server, profile)
            try:
                return Choice(server), pool, await pool.acquire(wait_limit)
            except ServerConnectError as exc:
                self.report_failure(server)
                if self.monitor is None or self._clock() >= deadline:
                    raise
                log.warning("cluster %s: primary %s: %s; waiting", self.name, server.name, exc)
                await asyncio.sleep(RETRY_PAUSE)

    def poke(self, server: Server) -> None:
        """Live traffic saw a sign of trouble on `server`: probe it now, not at the next tick."""
        if self.monitor is not None:
            self.monitor.poke(server.name)

    def report_failure(self, server: Server) -> None:
        """A connection to `server` failed: probe it now and close its idle connections."""
        self.poke(server)
        for (_, _, name), pool in self._pools.items():
            if name == server.name:
                pool.drop_idle(DropReason.SERVER_DOWN)

    def active_connections(self, server: Server) -> int:
        """Server connections to `server` checked out now, over all users."""
        return sum(pool.active for (_, _, name), pool in self._pools.items() if name == server.name)

    def pool(self, user: str, server: Server, profile: str = "") -> Pool[C]:
        """The pool for (user, profile, server), created on first use."""
        key = (user, profile, server.name)
        pool = self._pools.get(key)
        if pool is None:

            async def factory() -> C:
                return await self._connect(server, user, profile)

            pool = Pool(
                f"{self.name}/{user}{'+' + profile if profile else ''}@{server.name}",
                factory,
                self._limits(user),
                clock=self._clock,
                on_drop=self._log_drop,
            )
            self._pools[key] = pool
        return pool

    def _log_drop(self, conn: C, reason: DropReason) -> None:
        log.debug("cluster %s: closed %r: %s", self.name, conn, reason.value)

    def pools(self) -> list[Pool[C]]:
        """Every pool that exists now."""
        return list(self._pools.values())

    def stats(self) -> list[PoolStats]:
        """Pool counts for the admin console and metrics."""
        return [pool.stats() for pool in self._pools.values()]

    async def maintain(self) -> None:
        """One janitor tick: expire idle connections, refill to min_pool_size."""
        for pool in list(self._pools.values()):
            pool.expire()
            if pool.missing():
                try:
                    await pool.fill()
                except Exception as exc:
                    log.warning("pool %s: cannot open a connection: %s", pool.key, exc)

    def close(self) -> None:
        """Close every pool (idle connections now, active ones on release)."""
        for pool in self._pools.values():
            pool.close()
