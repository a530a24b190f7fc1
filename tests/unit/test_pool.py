"""Pool: waiting in FIFO order, the wait limit, the reserve pool (real event loop, tiny waits)."""

from __future__ import annotations

import asyncio

import pytest

from dbbalancer.core.pool import Pool, PoolLimits, PoolTimeout


class Conn:
    def __init__(self, n: int) -> None:
        self.n = n
        self.closed = False

    @property
    def broken(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True


def make_pool(limits: PoolLimits) -> Pool[Conn]:
    made = 0

    async def factory() -> Conn:
        nonlocal made
        made += 1
        return Conn(made)

    return Pool("test", factory, limits)


def test_waiters_are_served_in_arrival_order() -> None:
    async def main() -> list[int]:
        pool = make_pool(PoolLimits(size=1))
        held = await pool.acquire(1.0)
        served: list[int] = []

        async def wait(i: int) -> None:
            conn = await pool.acquire(5.0)
            served.append(i)
            pool.release(conn)

        tasks = [asyncio.create_task(wait(i)) for i in range(5)]
        await asyncio.sleep(0.01)
        assert pool.stats().waiting == 5
        assert pool.try_acquire() is None  # never jumps the queue
        pool.release(held)
        await asyncio.gather(*tasks)
        assert pool.stats().waiting == 0
        return served

    assert asyncio.run(main()) == [0, 1, 2, 3, 4]


def test_wait_limit_raises_pool_timeout_and_leaves_no_waiter() -> None:
    async def main() -> None:
        pool = make_pool(PoolLimits(size=1))
        await pool.acquire(1.0)
        with pytest.raises(PoolTimeout, match="pool test"):
            await pool.acquire(0.05)
        assert pool.stats().waiting == 0

    asyncio.run(main())


def test_a_connection_released_before_the_limit_is_taken() -> None:
    async def main() -> int:
        pool = make_pool(PoolLimits(size=1))
        held = await pool.acquire(1.0)
        asyncio.get_running_loop().call_later(0.02, pool.release, held)
        conn = await pool.acquire(5.0)
        return conn.n

    assert asyncio.run(main()) == 1


def test_reserve_pool_opens_after_reserve_timeout() -> None:
    async def main() -> tuple[int, int]:
        pool = make_pool(PoolLimits(size=1, reserve_size=1, reserve_timeout=0.05))
        await pool.acquire(1.0)
        extra = await pool.acquire(5.0)  # waits 50 ms, then the reserve lets the pool grow
        with pytest.raises(PoolTimeout):
            await pool.acquire(0.2)  # size + reserve reached: only waiting is left
        return extra.n, pool.size

    assert asyncio.run(main()) == (2, 2)


def test_cancelled_waiter_leaves_the_queue() -> None:
    async def main() -> None:
        pool = make_pool(PoolLimits(size=1))
        held = await pool.acquire(1.0)
        task = asyncio.create_task(pool.acquire(5.0))
        await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert pool.stats().waiting == 0
        pool.release(held)
        assert pool.try_acquire() is held

    asyncio.run(main())


def test_a_dropped_connection_lets_the_head_waiter_open_a_new_one() -> None:
    # Two clients wait on a full pool; the connection in use is dropped, not released. The
    # woken head of the line must open a replacement, although another waiter is behind it.
    async def main() -> list[int]:
        pool = make_pool(PoolLimits(size=1))
        held = await pool.acquire(1.0)
        served: list[int] = []

        async def wait(i: int) -> None:
            conn = await pool.acquire(2.0)
            served.append(i)
            pool.release(conn)

        tasks = [asyncio.create_task(wait(i)) for i in range(2)]
        await asyncio.sleep(0.01)
        pool.release(held, reusable=False)
        await asyncio.gather(*tasks)
        return served

    assert asyncio.run(main()) == [0, 1]


def test_take_checks_out_that_idle_connection_and_cold_ones_come_last() -> None:
    async def main() -> None:
        pool = make_pool(PoolLimits(size=3))
        a, b = await pool.acquire(1.0), await pool.acquire(1.0)
        pool.release(a, cold=True)
        pool.release(b)
        assert pool.try_acquire() is b  # the cold one stays for its client
        assert pool.take(a)
        assert not pool.take(a)  # no longer idle
        assert pool.stats().active == 2

    asyncio.run(main())
