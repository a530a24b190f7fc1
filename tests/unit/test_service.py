"""compose.py: clusters built from config, client limits, reset between clients, the drain."""

from __future__ import annotations

import ast
import asyncio
from pathlib import Path

import pytest

from dbbalancer.compose import (
    ClientLimits,
    TooManyClients,
    build_cluster,
    drain_sessions,
    reset_and_release,
)
from dbbalancer.config import ClusterConfig, Config, UserConfig, parse_config
from dbbalancer.core.balance import Policy
from dbbalancer.core.health import ProbeResult
from dbbalancer.core.monitor import Prober
from dbbalancer.core.pool import Pool, PoolLimits
from dbbalancer.core.topology import Server, ServerRole

CONFIG = """
[listen]
postgres = "127.0.0.1:6432"

[[users]]
name = "app"
password = "secret"
max_client_connections = 2

[[users]]
name = "report"
password = "secret"

[[clusters]]
name = "main"
database = "shop"
min_pool_size = 1
pool_size = 4
balance = "weighted"
max_replica_lag = "2s"
replica_fallback = "error"

[[clusters.servers]]
address = "127.0.0.1:15432"
role = "primary"
name = "pg1"

[[clusters.servers]]
address = "127.0.0.1:15433"
role = "replica"
weight = 3
"""


class Conn:
    def __init__(self, server: Server, user: str, fail_reset: bool = False) -> None:
        self.server = server
        self.user = user
        self.closed = False
        self.resets = 0
        self.fail_reset = fail_reset

    @property
    def broken(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    async def reset(self) -> None:
        self.resets += 1
        if self.fail_reset:
            raise RuntimeError("reset refused")


def config() -> Config:
    return parse_config(CONFIG)


def test_build_cluster_from_config() -> None:
    cfg = config()
    probed_as: list[tuple[str, str]] = []

    async def connect(
        cluster: ClusterConfig, server: Server, user: UserConfig, _profile: str
    ) -> Conn:
        return Conn(server, f"{user.name}@{cluster.server_database}")

    def make_prober(cluster: ClusterConfig, user: UserConfig) -> Prober:
        probed_as.append((cluster.name, user.name))

        async def probe(server: Server) -> ProbeResult:
            return ProbeResult(ok=False)

        return probe

    runtime = build_cluster(cfg, cfg.clusters[0], connect=connect, make_prober=make_prober)
    assert [(s.name, s.role, s.weight) for s in runtime.servers] == [
        ("pg1", ServerRole.PRIMARY, 1.0),
        ("127.0.0.1:15433", ServerRole.REPLICA, 3.0),
    ]
    assert runtime.policy.balance is Policy.WEIGHTED
    assert runtime.policy.max_lag_seconds == 2.0
    assert not runtime.policy.fallback_to_primary
    assert runtime.monitor is not None
    assert probed_as == [("main", "app")]  # the first user probes
    # min_pool_size: every (user, server) pool exists from the start, for the janitor to fill.
    assert sorted(p.key for p in runtime.pools()) == [
        "main/app@127.0.0.1:15433",
        "main/app@pg1",
        "main/report@127.0.0.1:15433",
        "main/report@pg1",
    ]
    assert {(p.limits.size, p.limits.min_size) for p in runtime.pools()} == {(4, 1)}

    async def opened() -> Conn:
        pool = runtime.pool("report", runtime.servers[0])
        return await pool.acquire(1.0)

    conn = asyncio.run(opened())
    assert (conn.server.name, conn.user) == ("pg1", "report@shop")


def test_client_limits_total_and_per_user() -> None:
    cfg = config()
    app, report = cfg.users
    limits = ClientLimits(3)
    limits.admit(app)
    limits.admit(app)
    with pytest.raises(TooManyClients, match=r'user "app" \(max_client_connections = 2\)'):
        limits.admit(app)
    limits.admit(report)
    with pytest.raises(TooManyClients, match=r"general.max_client_connections = 3"):
        limits.admit(report)
    assert limits.count == 3
    limits.leave(app)
    limits.admit(app)
    assert limits.count == 3


def make_pool(**conn_kw: bool) -> Pool[Conn]:
    async def factory() -> Conn:
        return Conn(Server("s", "127.0.0.1", 1, ServerRole.PRIMARY), "u", **conn_kw)

    return Pool("test", factory, PoolLimits(size=1))


def test_reset_and_release_keeps_a_clean_connection() -> None:
    async def main() -> None:
        pool = make_pool()
        conn = await pool.acquire(1.0)
        await reset_and_release(pool, conn)
        assert (conn.resets, conn.closed, pool.stats().idle) == (1, False, 1)

    asyncio.run(main())


def test_reset_and_release_drops_a_connection_whose_reset_fails() -> None:
    async def main() -> None:
        pool = make_pool(fail_reset=True)
        conn = await pool.acquire(1.0)
        await reset_and_release(pool, conn)
        assert (conn.closed, pool.stats().idle, pool.total_dropped) == (True, 0, 1)

    asyncio.run(main())


class Session:
    def __init__(self, live: set[Session], busy_for: int) -> None:
        self.live = live
        self.busy_for = busy_for  # drain polls before this session becomes idle
        self.closed_idle: bool | None = None
        live.add(self)

    def is_idle(self) -> bool:
        self.busy_for -= 1
        return self.busy_for < 0

    def shutdown(self) -> None:
        self.closed_idle = self.busy_for < 0
        self.live.discard(self)


def test_drain_closes_idle_sessions_first_and_the_rest_at_the_deadline() -> None:
    polls = [0.0]

    def clock() -> float:  # one tick per drain poll
        polls[0] += 1.0
        return polls[0]

    async def main() -> tuple[Session, Session]:
        live: set[Session] = set()
        quick, stuck = Session(live, 1), Session(live, 10**6)
        await drain_sessions(live, 4.0, clock=clock)
        assert not live
        return quick, stuck

    quick, stuck = asyncio.run(main())
    assert quick.closed_idle is True
    assert stuck.closed_idle is False


def test_core_imports_no_protocol_package() -> None:
    core = Path(__file__).parents[2] / "src" / "dbbalancer" / "core"
    for path in core.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                assert not node.module.startswith(("dbbalancer.postgres", "dbbalancer.mysql")), (
                    f"{path.name} imports {node.module}"
                )
