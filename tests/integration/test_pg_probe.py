"""The PostgreSQL probe against real servers, and the health monitor following a real failover."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import pytest
import uvloop

from dbbalancer.core.health import ObservedRole, ProbeFailure, ProbeResult
from dbbalancer.core.monitor import HealthMonitor
from dbbalancer.core.topology import Server, ServerRole
from dbbalancer.postgres.auth import AuthenticationFailed
from dbbalancer.postgres.backend import ServerError, ServerUnavailable
from dbbalancer.postgres.codec import ProtocolError
from dbbalancer.postgres.framed import ConnectionClosed
from dbbalancer.postgres.lsn import Lsn
from dbbalancer.postgres.probe import PROBE_APPLICATION_NAME, PgProber, probe_failure
from dbbalancer.testing.pgcluster import PgCluster, PgNode
from dbbalancer.testing.ports import LOOPBACK, free_port

from .conftest import ClusterFactory

T = TypeVar("T")
LoopFactory = Callable[[], asyncio.AbstractEventLoop]

# Every probe test runs under both event loops the balancer may use.
LOOPS = pytest.mark.parametrize(
    "loop_factory", [asyncio.new_event_loop, uvloop.new_event_loop], ids=["asyncio", "uvloop"]
)


def run(loop_factory: LoopFactory, main: Callable[[], Coroutine[Any, Any, T]]) -> T:
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        return runner.run(main())


def as_server(node: PgNode, role: ServerRole = ServerRole.AUTO) -> Server:
    return Server(name=node.name, host=node.host, port=node.port, role=role)


def prober_for(cluster: PgCluster, *, password: str | None = None) -> PgProber:
    return PgProber(
        user=cluster.user,
        password=cluster.password if password is None else password,
        database=cluster.database,
        connect_timeout=5.0,
    )


async def probe_all(prober: PgProber, servers: list[Server]) -> list[ProbeResult]:
    try:
        return [await prober(s) for s in servers]
    finally:
        await prober.close()


@LOOPS
def test_probe_reports_roles_positions_and_timeline(
    pg_cluster: PgCluster, loop_factory: LoopFactory
) -> None:
    # Replicas first: a replica's replayed position can never pass a later primary position.
    servers = [as_server(n) for n in pg_cluster.replicas] + [as_server(pg_cluster.primary)]
    results = run(loop_factory, lambda: probe_all(prober_for(pg_cluster), servers))
    *replicas, primary = results
    assert primary.ok, primary
    assert primary.role is ObservedRole.PRIMARY
    assert primary.epoch == 1  # the timeline
    assert isinstance(primary.position, Lsn)
    assert primary.position > Lsn(0)
    assert primary.replay_delay is None
    assert primary.load is not None
    assert primary.load >= 0
    assert primary.latency is not None
    assert primary.latency > 0
    for replica in replicas:
        assert replica.ok, replica
        assert replica.role is ObservedRole.REPLICA
        assert replica.epoch == 1
        assert isinstance(replica.position, Lsn)
        assert Lsn(0) < replica.position <= primary.position
        assert replica.replay_delay is not None
        assert replica.replay_delay >= 0


@LOOPS
def test_wrong_password_is_auth_failed(pg_cluster: PgCluster, loop_factory: LoopFactory) -> None:
    prober = prober_for(pg_cluster, password="not-the-password")
    [result] = run(loop_factory, lambda: probe_all(prober, [as_server(pg_cluster.primary)]))
    assert result == ProbeResult.failed(ProbeFailure.AUTH_FAILED)


@LOOPS
def test_closed_port_is_refused(pg_cluster: PgCluster, loop_factory: LoopFactory) -> None:
    closed = Server(name="nowhere", host=LOOPBACK, port=free_port(), role=ServerRole.AUTO)
    [result] = run(loop_factory, lambda: probe_all(prober_for(pg_cluster), [closed]))
    assert result == ProbeResult.failed(ProbeFailure.REFUSED)


def probe_backends(cluster: PgCluster) -> list[int]:
    rows = cluster.sql(
        cluster.primary,
        "SELECT pid FROM pg_stat_activity "
        f"WHERE application_name = '{PROBE_APPLICATION_NAME}' ORDER BY pid",
    )
    return [int(pid) for (pid, *_rest) in rows if pid is not None]


def test_probe_keeps_one_connection_and_reopens_it_after_termination(
    pg_cluster: PgCluster,
) -> None:
    primary = as_server(pg_cluster.primary)

    async def main() -> None:
        prober = prober_for(pg_cluster)
        try:
            for _ in range(3):
                assert (await prober(primary)).ok
            [pid] = await asyncio.to_thread(probe_backends, pg_cluster)
            await asyncio.to_thread(
                pg_cluster.sql, pg_cluster.primary, f"SELECT pg_terminate_backend({pid}, 5000)"
            )
            # The server's FATAL goodbye is waiting on the idle connection: the prober opens a
            # new one instead of reporting the old one's death as the server's.
            result = await prober(primary)
            assert result.ok, result
            [new_pid] = await asyncio.to_thread(probe_backends, pg_cluster)
            assert new_pid != pid
        finally:
            await prober.close()

    run(uvloop.new_event_loop, main)


def test_monitor_follows_failover(pg_cluster_factory: ClusterFactory) -> None:
    cluster = pg_cluster_factory(replicas=1)
    old, new = cluster.primary, cluster.replicas[0]
    # Fixed roles: following the promotion of a configured replica is the harder path.
    servers = [as_server(old, ServerRole.PRIMARY), as_server(new, ServerRole.REPLICA)]

    async def main() -> HealthMonitor:
        prober = prober_for(cluster)
        monitor = HealthMonitor("failover", servers, prober, interval=0.2, timeout=2.0)
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.TaskGroup() as tasks:
                runner = tasks.create_task(monitor.run())
                try:
                    first = await monitor.wait_primary(10.0)
                    assert first is not None
                    assert first.name == old.name
                    await asyncio.to_thread(cluster.stop_node, old, "immediate")
                    await asyncio.to_thread(cluster.promote, new)
                    # How soon is in docs/postgres.md; here only a generous hang guard.
                    deadline = loop.time() + 30.0
                    while (elected := monitor.primary) is None or elected.name != new.name:
                        assert loop.time() < deadline, monitor.status()
                        await asyncio.sleep(0.005)
                    return monitor
                finally:
                    runner.cancel()
        finally:
            await prober.close()

    monitor = run(uvloop.new_event_loop, main)
    promoted = monitor.server_status(new.name)
    assert promoted.role is ObservedRole.PRIMARY
    assert promoted.epoch is not None
    assert promoted.epoch > 1  # promoted onto a new timeline
    assert not monitor.server_status(old.name).usable


def _wrapped(inner: BaseException | None, *, as_cause: bool) -> ServerUnavailable:
    """A ServerUnavailable shaped the way connect_server raises it."""
    outer = ServerUnavailable("cannot log in")
    if as_cause:
        outer.__cause__ = inner
    else:
        outer.__context__ = inner
        outer.__suppress_context__ = True
    return outer


# Pure (no server): the complete failure table, kept next to the probe's real-server tests.
@pytest.mark.parametrize(
    ("exc", "failure"),
    [
        (ServerError("28P01", "password authentication failed"), ProbeFailure.AUTH_FAILED),
        (ServerError("28000", "no pg_hba.conf entry"), ProbeFailure.AUTH_FAILED),
        (ServerError("57P01", "terminating connection"), ProbeFailure.SHUTTING_DOWN),
        (ServerError("57P02", "crash of another server process"), ProbeFailure.SHUTTING_DOWN),
        (ServerError("57P03", "the database system is shutting down"), ProbeFailure.SHUTTING_DOWN),
        (ServerError("42883", "function does not exist"), ProbeFailure.SERVER_ERROR),
        (AuthenticationFailed("SCRAM server signature mismatch"), ProbeFailure.AUTH_FAILED),
        (TimeoutError(), ProbeFailure.TIMEOUT),
        (ConnectionClosed("closed"), ProbeFailure.CONNECTION_LOST),
        (ConnectionResetError(), ProbeFailure.CONNECTION_LOST),
        (ProtocolError("bad frame"), ProbeFailure.SERVER_ERROR),
        (_wrapped(ConnectionRefusedError(), as_cause=True), ProbeFailure.REFUSED),
        (_wrapped(OSError("no route to host"), as_cause=True), ProbeFailure.REFUSED),
        (_wrapped(TimeoutError(), as_cause=False), ProbeFailure.TIMEOUT),
        (_wrapped(ConnectionClosed("closed"), as_cause=False), ProbeFailure.CONNECTION_LOST),
        (_wrapped(ProtocolError("bad"), as_cause=True), ProbeFailure.SERVER_ERROR),
        (_wrapped(None, as_cause=True), ProbeFailure.AUTH_FAILED),  # no password configured
    ],
)
def test_probe_failure_table(exc: BaseException, failure: ProbeFailure) -> None:
    assert probe_failure(exc) is failure
