"""A cluster at run time: its servers and one pool per (user, server), whatever the protocol.

The protocol package supplies `connect(server, user)`, the coroutine that opens and logs in one
server connection; the cluster owns the pools, routes a session to a server, and runs the
janitor tick that expires idle connections and refills pools to min_pool_size.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

from dbbalancer.core.pool import DropReason, Pool, PooledConnection, PoolLimits, PoolStats
from dbbalancer.core.topology import Server, ServerRole

log = logging.getLogger(__name__)

C = TypeVar("C", bound=PooledConnection)


class NoServerAvailable(Exception):
    """No server can take this session or statement; the message says why and what to do."""


class Cluster(Generic[C]):
    """Servers of one logical database and the pools in front of them."""

    def __init__(
        self,
        name: str,
        servers: list[Server],
        *,
        connect: Callable[[Server, str], Awaitable[C]],
        limits: Callable[[str], PoolLimits],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name = name
        self.servers = servers
        self._connect = connect
        self._limits = limits
        self._clock = clock
        self._pools: dict[tuple[str, str], Pool[C]] = {}

    def primary(self) -> Server:
        """The server that takes writes (configured role; failover following comes later)."""
        for server in self.servers:
            if server.role is ServerRole.PRIMARY:
                return server
        raise NoServerAvailable(
            f"cluster {self.name} has no server with role primary; "
            'set role = "primary" on the primary server'
        )

    def pool(self, user: str, server: Server) -> Pool[C]:
        """The pool for (user, server), created on first use."""
        key = (user, server.name)
        pool = self._pools.get(key)
        if pool is None:

            async def factory() -> C:
                return await self._connect(server, user)

            pool = Pool(
                f"{self.name}/{user}@{server.name}",
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
