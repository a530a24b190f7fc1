"""The MySQL/MariaDB probe (mysql.probe) against real MariaDB servers, the split-brain rule, and
a cluster built by compose.build_cluster whose health monitor follows a promotion."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import pytest
import uvloop

from dbbalancer.compose import build_cluster, reset_and_release
from dbbalancer.config import ClusterConfig, UserConfig
from dbbalancer.config.loader import parse_config
from dbbalancer.core.health import HealthState, ObservedRole, ProbeFailure, ProbeResult
from dbbalancer.core.monitor import HealthMonitor
from dbbalancer.core.routing import Target
from dbbalancer.core.topology import Server, ServerRole
from dbbalancer.mysql.backend import ServerConnection, connect_server
from dbbalancer.mysql.gtid import MariaDbGtidPos
from dbbalancer.mysql.probe import MyProber
from dbbalancer.testing.mariadbcluster import MariaDbCluster, MariaDbNode
from dbbalancer.testing.ports import LOOPBACK, free_port

from .conftest import MariaDbClusterFactory

T = TypeVar("T")
LoopFactory = Callable[[], asyncio.AbstractEventLoop]
LOOPS = pytest.mark.parametrize(
    "loop_factory", [asyncio.new_event_loop, uvloop.new_event_loop], ids=["asyncio", "uvloop"]
)
# Bounds on waiting for something that happens in milliseconds; they only stop a hung test.
WAIT = 30.0


def run(loop_factory: LoopFactory, main: Callable[[], Coroutine[Any, Any, T]]) -> T:
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        return runner.run(main())


def as_server(node: MariaDbNode, role: ServerRole = ServerRole.AUTO) -> Server:
    return Server(name=node.name, host=node.host, port=node.port, role=role)


def prober_for(cluster: MariaDbCluster, *, password: str | None = None) -> MyProber:
    return MyProber(
        user=cluster.user,
        password=cluster.password if password is None else password,
        database=cluster.database,
        connect_timeout=5.0,
    )


async def probe_all(prober: MyProber, servers: list[Server]) -> list[ProbeResult]:
    try:
        return [await prober(s) for s in servers]
    finally:
        await prober.close()


def probe_once(cluster: MariaDbCluster, node: MariaDbNode, **kwargs: Any) -> ProbeResult:
    return asyncio.run(probe_all(prober_for(cluster, **kwargs), [as_server(node)]))[0]


async def wait_for(predicate: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"still waiting for {what} after {WAIT:g}s")
        await asyncio.sleep(0.02)


def mariadb_position(result: ProbeResult) -> MariaDbGtidPos:
    assert isinstance(result.position, MariaDbGtidPos), result
    return result.position


def write_something(cluster: MariaDbCluster) -> None:
    cluster.sql(
        cluster.primary,
        "CREATE TABLE IF NOT EXISTS probe_writes (id int AUTO_INCREMENT PRIMARY KEY); "
        "INSERT INTO probe_writes VALUES ()",
    )


@LOOPS
def test_probe_reports_roles_positions_lag_and_load(
    mariadb_cluster: MariaDbCluster, loop_factory: LoopFactory
) -> None:
    write_something(mariadb_cluster)
    mariadb_cluster.wait_replicated()
    servers = [as_server(n) for n in mariadb_cluster.nodes]
    prober = prober_for(mariadb_cluster)
    primary, *replicas = run(loop_factory, lambda: probe_all(prober, servers))
    assert primary.ok, primary
    assert primary.role is ObservedRole.PRIMARY
    assert primary.epoch is None  # no timeline: see the split-brain tests
    assert primary.replay_delay is None
    assert primary.load is not None
    assert primary.load >= 0
    assert primary.latency is not None
    assert primary.latency > 0
    assert mariadb_position(primary).sequence(0)
    for replica in replicas:
        assert replica.ok, replica
        assert replica.role is ObservedRole.REPLICA
        assert replica.replay_delay is not None
        assert replica.replay_delay >= 0
        # Caught up (wait_replicated): a replica holds everything the primary wrote.
        assert mariadb_position(replica).covers(mariadb_position(primary))
    assert prober.server_ids == {n.name: n.server_id for n in mariadb_cluster.nodes}


def test_positions_advance_and_replicas_catch_up(mariadb_cluster: MariaDbCluster) -> None:
    before = mariadb_position(probe_once(mariadb_cluster, mariadb_cluster.primary))
    write_something(mariadb_cluster)
    after = mariadb_position(probe_once(mariadb_cluster, mariadb_cluster.primary))
    assert after.covers(before)
    assert not before.covers(after)
    mariadb_cluster.wait_replicated()
    for replica in mariadb_cluster.replicas:
        assert mariadb_position(probe_once(mariadb_cluster, replica)).covers(after)


@pytest.mark.parametrize("thread", ["SQL_THREAD", "IO_THREAD"])
def test_a_stopped_replica_thread_is_reported(mariadb_cluster: MariaDbCluster, thread: str) -> None:
    replica = mariadb_cluster.replicas[1]
    assert probe_once(mariadb_cluster, replica).ok
    mariadb_cluster.sql(replica, f"STOP SLAVE {thread}")
    try:
        stopped = probe_once(mariadb_cluster, replica)
        assert stopped == ProbeResult.failed(ProbeFailure.REPLICATION_STOPPED)
    finally:
        mariadb_cluster.sql(replica, "START SLAVE")
        mariadb_cluster.wait_connected(nodes=[replica])
    assert probe_once(mariadb_cluster, replica).ok


def test_login_failures_are_classified(mariadb_cluster: MariaDbCluster) -> None:
    refused = probe_once(mariadb_cluster, mariadb_cluster.primary, password="wrong")
    assert refused.failure is ProbeFailure.AUTH_FAILED
    closed = Server("gone", LOOPBACK, free_port(), ServerRole.AUTO)
    result = asyncio.run(probe_all(prober_for(mariadb_cluster), [closed]))[0]
    assert result.failure is ProbeFailure.REFUSED


def test_probe_keeps_one_connection_and_reopens_it_after_a_kill(
    mariadb_cluster: MariaDbCluster,
) -> None:
    primary = as_server(mariadb_cluster.primary)

    async def main() -> None:
        prober = prober_for(mariadb_cluster)
        try:
            assert (await prober(primary)).ok
            first = prober._connections[primary.name]
            assert (await prober(primary)).ok
            assert prober._connections[primary.name] is first
            await asyncio.to_thread(
                mariadb_cluster.sql,
                mariadb_cluster.primary,
                f"KILL CONNECTION {first.connection_id}",
            )
            await first.wait_closed()
            assert (await prober(primary)).ok
            assert prober._connections[primary.name] is not first
        finally:
            await prober.close()

    asyncio.run(main())


# -- split brain and promotion ------------------------------------------------------------------


def monitor_for(
    cluster: MariaDbCluster, prober: MyProber, roles: dict[str, ServerRole]
) -> HealthMonitor:
    servers = [as_server(n, roles.get(n.name, ServerRole.AUTO)) for n in cluster.nodes]
    return HealthMonitor("main", servers, prober, rise=1, fall=1)


def test_two_writable_servers_are_split_brain(
    mariadb_cluster_factory: MariaDbClusterFactory,
) -> None:
    cluster = mariadb_cluster_factory(replicas=2)
    primary, writable, detached = cluster.nodes
    cluster.sql(writable, "SET GLOBAL read_only = 0")
    # Read-only, but replicating from nobody: its data only gets staler.
    cluster.sql(detached, "STOP SLAVE; RESET SLAVE ALL")

    async def main() -> None:
        prober = prober_for(cluster)
        try:
            results = {n.name: await prober(as_server(n)) for n in cluster.nodes}
            assert results[primary.name].role is ObservedRole.PRIMARY
            assert results[writable.name].role is ObservedRole.PRIMARY
            assert results[detached.name].failure is ProbeFailure.REPLICATION_STOPPED

            # Auto roles: no epoch tells the claimants apart; neither gets writes, both fenced.
            auto = monitor_for(cluster, prober, {})
            for name, result in results.items():
                auto.record(name, result)
            assert auto.primary is None
            assert auto.election.fenced == (primary.name, writable.name)
            assert "split brain" in auto.election.reason
            statuses = {s.server.name: s for s in auto.status()}
            assert not statuses[writable.name].usable
            assert statuses[detached.name].state is HealthState.DOWN

            # Configured roles: the elected primary keeps its place; the configured replica's
            # claim is a failed probe (wrong role), not a rival.
            configured = monitor_for(
                cluster,
                prober,
                {primary.name: ServerRole.PRIMARY, writable.name: ServerRole.REPLICA},
            )
            configured.record(primary.name, results[primary.name])
            configured.record(writable.name, results[writable.name])
            assert configured.primary is not None
            assert configured.primary.name == primary.name
            assert configured.election.fenced == ()
            rejected = configured.server_status(writable.name)
            assert not rejected.usable
            assert rejected.last_transition is not None
            assert rejected.last_transition.failure is ProbeFailure.WRONG_ROLE
        finally:
            await prober.close()

    asyncio.run(main())


def mysql_config(cluster: MariaDbCluster) -> tuple[ClusterConfig, UserConfig, Any]:
    servers = "\n".join(
        f'[[clusters.servers]]\nname = "{n.name}"\naddress = "{n.address()}"\nrole = "auto"'
        for n in cluster.nodes
    )
    config = parse_config(
        f"""
[listen]
mysql = "127.0.0.1:0"

[[users]]
name = "{cluster.user}"
password = "{cluster.password}"

[[clusters]]
name = "main"
protocol = "mysql"
database = "{cluster.database}"
health_check_interval = "100ms"
health_check_timeout = "2s"
rise = 1
fall = 1

{servers}
"""
    )
    return config.clusters[0], config.users[0], config


def test_monitor_built_by_compose_follows_a_promotion(
    mariadb_cluster_factory: MariaDbClusterFactory,
) -> None:
    cluster = mariadb_cluster_factory(replicas=2)
    old, new, other = cluster.nodes
    cluster_config, user, config = mysql_config(cluster)
    probers: list[MyProber] = []

    async def connect(
        c: ClusterConfig, server: Server, u: UserConfig, _profile: str
    ) -> ServerConnection:
        return await connect_server(
            server,
            user=u.name,
            password=u.login_password,
            database=c.server_database,
            connect_timeout=5.0,
            max_payload=1 << 24,
        )

    def make_prober(c: ClusterConfig, u: UserConfig) -> MyProber:
        prober = MyProber(
            user=u.name,
            password=u.login_password,
            database=c.server_database,
            connect_timeout=c.health_check_timeout,
        )
        probers.append(prober)
        return prober

    async def main() -> None:
        runtime = build_cluster(config, cluster_config, connect=connect, make_prober=make_prober)
        monitor = runtime.monitor
        assert monitor is not None
        task = asyncio.create_task(monitor.run())
        try:
            assert await monitor.wait_first_round(WAIT)
            primary = await monitor.wait_primary(WAIT)
            assert primary is not None
            assert primary.name == old.name
            await wait_for(
                lambda: {s.name for s in runtime.eligible_replicas()} == {new.name, other.name},
                "both replicas to be eligible",
            )

            _, pool, conn = await runtime.checkout(user.name, Target.PRIMARY, wait_limit=5.0)
            await conn.query("CREATE TABLE IF NOT EXISTS promoted (a int)")
            await conn.query("SET @mine = 1")
            await reset_and_release(pool, conn)

            await asyncio.to_thread(cluster.stop_node, old)
            await asyncio.to_thread(cluster.promote, new)

            def promoted() -> bool:
                current = monitor.primary
                return current is not None and current.name == new.name

            await wait_for(promoted, f"{new.name} to be elected")
            await wait_for(
                lambda: monitor.server_status(old.name).state is HealthState.DOWN,
                f"{old.name} to be down",
            )
            await wait_for(
                lambda: [s.name for s in runtime.eligible_replicas()] == [other.name],
                f"{other.name} to replicate from {new.name}",
            )
            _, pool, conn = await runtime.checkout(user.name, Target.PRIMARY, wait_limit=5.0)
            assert conn.server.name == new.name
            await conn.query("INSERT INTO promoted VALUES (1)")
            await reset_and_release(pool, conn)
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            runtime.close()
            for prober in probers:
                await prober.close()

    asyncio.run(main())
