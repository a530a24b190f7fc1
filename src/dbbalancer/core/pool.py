"""Server connection pools, protocol-agnostic.

A pool holds the server connections for one (cluster, user, server) key. Like PgBouncer, every
connection sits in exactly one collection that names its state (idle or active) and moves only
through the methods here, so the counts the admin console shows are collection sizes.

Waiting clients queue in FIFO order; a client that waits longer than its timeout gets a
`PoolTimeout` that names the pool. The pool never hands out a connection marked broken.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import enum
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar


class PooledConnection(Protocol):
    """What a pool needs from a server connection, whatever its wire protocol."""

    @property
    def broken(self) -> bool:
        """True once the connection must never be used again."""
        ...

    def close(self) -> None:
        """Close the connection now (idempotent)."""
        ...


C = TypeVar("C", bound=PooledConnection)


class PoolTimeout(Exception):
    """No server connection became free within the wait limit."""


class PoolClosed(Exception):
    """The pool is shutting down and hands out nothing more."""


class DropReason(enum.Enum):
    """Why a server connection left its pool; shown in logs and metrics."""

    BROKEN = "broken"
    CLIENT_GONE_MID_TRANSACTION = "client disconnected mid-transaction"
    RESET_FAILED = "reset failed"
    IDLE_TIMEOUT = "idle timeout"
    LIFETIME = "lifetime exceeded"
    POOL_CLOSED = "pool closed"
    SERVER_DOWN = "server down"


@dataclass(frozen=True, slots=True)
class PoolLimits:
    """Sizes and timeouts of one pool (seconds; 0 disables a timeout)."""

    size: int
    min_size: int = 0
    reserve_size: int = 0
    reserve_timeout: float = 5.0
    idle_timeout: float = 600.0
    lifetime: float = 3600.0


@dataclass(frozen=True, slots=True)
class PoolStats:
    """A snapshot of a pool's membership counts."""

    key: str
    idle: int
    active: int
    connecting: int
    waiting: int
    total_created: int
    total_dropped: int


def _wake(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


# A plain class rather than a dataclass: mypyc (setup.py) cannot compile a generic dataclass.
class _Entry(Generic[C]):
    __slots__ = ("conn", "created", "last_used")

    def __init__(self, conn: C, created: float, last_used: float) -> None:
        self.conn = conn
        self.created = created
        self.last_used = last_used


class Pool(Generic[C]):
    """A bounded pool of server connections created on demand by `factory`."""

    def __init__(
        self,
        key: str,
        factory: Callable[[], Awaitable[C]],
        limits: PoolLimits,
        *,
        clock: Callable[[], float] = time.monotonic,
        on_drop: Callable[[C, DropReason], None] | None = None,
    ) -> None:
        self.key = key
        self.limits = limits
        self._factory = factory
        self._clock = clock
        self._on_drop = on_drop
        self._idle: collections.deque[_Entry[C]] = collections.deque()
        self._active: dict[int, _Entry[C]] = {}
        self._connecting = 0
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()
        self._closed = False
        self.total_created = 0
        self.total_dropped = 0

    # -- state counts -------------------------------------------------------------------------

    @property
    def size(self) -> int:
        """Connections that exist or are being opened."""
        return len(self._idle) + len(self._active) + self._connecting

    @property
    def active(self) -> int:
        """Connections checked out now."""
        return len(self._active)

    def stats(self) -> PoolStats:
        """Counts for admin output and metrics."""
        return PoolStats(
            key=self.key,
            idle=len(self._idle),
            active=len(self._active),
            connecting=self._connecting,
            waiting=len(self._waiters),
            total_created=self.total_created,
            total_dropped=self.total_dropped,
        )

    # -- acquire / release ----------------------------------------------------------------------

    async def acquire(self, wait_limit: float) -> C:
        """Return an idle connection, open a new one within the limit, or wait in FIFO order.

        After `reserve_timeout` of waiting the pool may grow by `reserve_size` beyond `size`,
        as PgBouncer's reserve pool does. Raises PoolTimeout after `wait_limit` seconds (0 = wait
        forever) and re-raises the factory's error when opening a connection fails.
        """
        deadline = self._clock() + wait_limit if wait_limit > 0 else None
        reserve_at = self._clock() + self.limits.reserve_timeout
        woken = False  # a release or a drop woke this waiter: it is at the head of the line
        while True:
            if self._closed:
                raise PoolClosed(f"pool {self.key} is closed")
            conn = self._take_idle()
            if conn is not None:
                return conn
            limit = self.limits.size
            if self.limits.reserve_size and self._clock() >= reserve_at:
                limit += self.limits.reserve_size
            if self.size < limit and (woken or not self._waiters):
                # Room to open one. A woken waiter may open it even though others still wait
                # behind it: when a connection was dropped rather than released, nobody else
                # would, and the line would wait out its timeout with the pool empty.
                return await self._open()
            now = self._clock()
            if deadline is not None and now >= deadline:
                raise PoolTimeout(self._timeout_message(wait_limit))
            wait_for = None if deadline is None else deadline - now
            if self.limits.reserve_size and now < reserve_at:
                wait_for = reserve_at - now if wait_for is None else min(wait_for, reserve_at - now)
            loop = asyncio.get_running_loop()
            fut: asyncio.Future[None] = loop.create_future()
            self._waiters.append(fut)
            # A timer that wakes the waiter like a release would; the loop then finds the
            # deadline passed. Cheaper than asyncio.wait_for, which this runs for every unit of
            # work that finds the pool busy.
            timer = None if wait_for is None else loop.call_later(max(wait_for, 0.0), _wake, fut)
            try:
                await fut
                woken = True
            finally:
                if timer is not None:
                    timer.cancel()
                if not fut.done():
                    fut.cancel()
                with contextlib.suppress(ValueError):
                    self._waiters.remove(fut)
            # Woken (or the reserve became available, or time is up): a waiter that finds
            # nothing loops again; the head-of-line order is kept because new arrivals see
            # _waiters.

    def try_acquire(self) -> C | None:
        """An idle connection at once, or None (then use `acquire`). Never jumps the queue."""
        if self._closed or self._waiters:
            return None
        return self._take_idle()

    def _timeout_message(self, wait_limit: float) -> str:
        return (
            f"no server connection from pool {self.key} within {wait_limit:g}s "
            f"({len(self._active)} in use of pool_size {self.limits.size}); "
            "raise pool_size or query_wait_timeout, or shorten transactions"
        )

    def _take_idle(self) -> C | None:
        while self._idle:
            entry = self._idle.pop()  # LIFO: the warmest connection, and lets extras idle out
            if entry.conn.broken:
                self._drop_entry(entry, DropReason.BROKEN)
                continue
            entry.last_used = self._clock()
            self._active[id(entry.conn)] = entry
            return entry.conn
        return None

    async def _open(self) -> C:
        self._connecting += 1
        try:
            conn = await self._factory()
        except BaseException:
            self._connecting -= 1
            self._wake_one()
            raise
        self._connecting -= 1
        now = self._clock()
        self.total_created += 1
        if self._closed:
            conn.close()
            raise PoolClosed(f"pool {self.key} is closed")
        self._active[id(conn)] = _Entry(conn, now, now)
        return conn

    def take(self, conn: C) -> bool:
        """Check out `conn` itself if it is idle here (a client returning to the connection
        that holds its state); False if it is not."""
        if self._closed:
            return False
        for entry in self._idle:
            if entry.conn is conn:
                self._idle.remove(entry)
                if conn.broken:
                    self._drop_entry(entry, DropReason.BROKEN)
                    return False
                entry.last_used = self._clock()
                self._active[id(conn)] = entry
                return True
        return False

    def release(
        self,
        conn: C,
        *,
        reusable: bool = True,
        reason: DropReason | None = None,
        cold: bool = False,
    ) -> None:
        """Give a connection back; a broken or non-reusable one is closed and dropped.

        A `cold` connection goes to the far end of the idle list, so others are handed out
        before it (it holds state its last client may come back for)."""
        entry = self._active.pop(id(conn), None)
        if entry is None:
            conn.close()
            return
        if not reusable or conn.broken or self._closed:
            self._drop_entry(entry, reason or DropReason.BROKEN)
        else:
            now = self._clock()
            lifetime = self.limits.lifetime
            if lifetime and now - entry.created >= lifetime:
                self._drop_entry(entry, DropReason.LIFETIME)
            else:
                entry.last_used = now
                if cold:
                    self._idle.appendleft(entry)
                else:
                    self._idle.append(entry)
        self._wake_one()

    def _drop_entry(self, entry: _Entry[C], reason: DropReason) -> None:
        self.total_dropped += 1
        entry.conn.close()
        if self._on_drop is not None:
            self._on_drop(entry.conn, reason)

    def _wake_one(self) -> None:
        for fut in self._waiters:
            if not fut.done():
                fut.set_result(None)
                return

    # -- maintenance ----------------------------------------------------------------------------

    def expire(self) -> None:
        """Drop idle connections past server_idle_timeout or server_lifetime (one janitor tick)."""
        now = self._clock()
        keep: collections.deque[_Entry[C]] = collections.deque()
        for entry in self._idle:
            if entry.conn.broken:
                self._drop_entry(entry, DropReason.BROKEN)
            elif self.limits.lifetime and now - entry.created >= self.limits.lifetime:
                self._drop_entry(entry, DropReason.LIFETIME)
            elif (
                self.limits.idle_timeout
                and now - entry.last_used >= self.limits.idle_timeout
                and self.size > self.limits.min_size
            ):
                self._drop_entry(entry, DropReason.IDLE_TIMEOUT)
            else:
                keep.append(entry)
        self._idle = keep

    def missing(self) -> int:
        """How many connections the janitor should open to reach min_size."""
        return max(0, self.limits.min_size - self.size)

    async def fill(self) -> None:
        """Open connections up to min_size (errors propagate to the janitor, which logs them)."""
        while not self._closed and self.missing() > 0:
            conn = await self._open()
            self.release(conn)

    def drop_idle(self, reason: DropReason) -> None:
        """Close every idle connection (server down, reload, shutdown)."""
        while self._idle:
            self._drop_entry(self._idle.pop(), reason)

    def close(self) -> None:
        """Stop handing out connections; idle ones close now, active ones when released."""
        self._closed = True
        self.drop_idle(DropReason.POOL_CLOSED)
        for fut in self._waiters:
            if not fut.done():
                fut.set_result(None)
