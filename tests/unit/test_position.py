"""Replication positions: PostgreSQL's LSN, and the core with a position that cannot count bytes.

`GtidSet` below stands in for a MySQL GTID set: partially ordered (one set may contain another,
or neither), with no lag in bytes. The core must route read-your-writes and report lag with it
using nothing but `covers` and `bytes_behind`.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from dbbalancer.core.cluster import Cluster, ReplicaPolicy
from dbbalancer.core.health import (
    HealthState,
    ObservedRole,
    ProbeResult,
    ServerView,
    elect_primary,
)
from dbbalancer.core.monitor import HealthMonitor
from dbbalancer.core.pool import PooledConnection, PoolLimits
from dbbalancer.core.position import Position
from dbbalancer.core.topology import Server, ServerRole
from dbbalancer.postgres.lsn import Lsn

PRIMARY, REPLICA = ObservedRole.PRIMARY, ObservedRole.REPLICA
UP = HealthState.UP


@dataclass(frozen=True, slots=True)
class GtidSet:
    """Transactions applied, as a set: covers another set when it contains it."""

    done: frozenset[int]

    def covers(self, other: Position) -> bool:
        return isinstance(other, GtidSet) and self.done >= other.done

    def bytes_behind(self, other: Position) -> int | None:
        return None


def gtids(*done: int) -> GtidSet:
    return GtidSet(frozenset(done))


# -- Lsn ------------------------------------------------------------------------------------------


def test_lsn_covers_what_is_at_or_before_it() -> None:
    assert Lsn(100).covers(Lsn(100))
    assert Lsn(100).covers(Lsn(99))
    assert not Lsn(99).covers(Lsn(100))


def test_lsn_bytes_behind_never_negative() -> None:
    assert Lsn(3000).bytes_behind(Lsn(5000)) == 2000
    assert Lsn(5200).bytes_behind(Lsn(5000)) == 0


def test_lsn_against_another_kind_of_position() -> None:
    # Cannot tell: not covered (read-your-writes goes to the primary), no lag in bytes.
    assert not Lsn(10**12).covers(gtids(1))
    assert Lsn(0).bytes_behind(gtids(1)) is None


def test_lsn_is_an_ordered_hashable_value() -> None:
    assert Lsn(1) < Lsn(2) <= Lsn(2)
    assert Lsn(7) == Lsn(7)
    assert len({Lsn(7), Lsn(7), Lsn(8)}) == 2


def test_lsn_text_form_is_pg_lsn() -> None:
    assert str(Lsn(0)) == "0/0"
    assert str(Lsn(0x16_B374D848)) == "16/B374D848"


def test_lsn_refuses_negative() -> None:
    with pytest.raises(ValueError, match="never negative"):
        Lsn(-1)


# -- the core with a partially ordered position ------------------------------------------------


def server(name: str, role: ServerRole = ServerRole.AUTO) -> Server:
    return Server(name=name, host="127.0.0.1", port=3306, role=role)


async def _never(_server: Server) -> ProbeResult:
    raise AssertionError("the tests drive the monitor through record()")


def monitored_cluster(policy: ReplicaPolicy | None = None) -> Cluster[PooledConnection]:
    servers = [server("p"), server("r1"), server("r2"), server("r3")]

    async def connect(_server: Server, _user: str, _profile: str) -> PooledConnection:
        raise AssertionError("no connection is opened here")

    cluster: Cluster[PooledConnection] = Cluster(
        "c", servers, connect=connect, limits=lambda _user: PoolLimits(size=1), policy=policy
    )
    monitor = HealthMonitor("c", servers, _never, rise=1, clock=lambda: 0.0)
    cluster.monitor = monitor
    monitor.record("p", ProbeResult(ok=True, role=PRIMARY, position=gtids(1, 2, 3)))
    monitor.record("r1", ProbeResult(ok=True, role=REPLICA, position=gtids(1, 2, 3)))
    monitor.record("r2", ProbeResult(ok=True, role=REPLICA, position=gtids(1, 2)))
    # Holds a transaction the primary's last probe had not seen: neither covers the other.
    monitor.record("r3", ProbeResult(ok=True, role=REPLICA, position=gtids(1, 4)))
    return cluster


def test_lag_in_bytes_is_unknown_without_byte_positions() -> None:
    cluster = monitored_cluster()
    assert cluster.monitor is not None
    assert all(s.lag_bytes is None for s in cluster.monitor.status())
    assert cluster.monitor.server_status("r3").position == gtids(1, 4)


def test_read_your_writes_asks_covers() -> None:
    cluster = monitored_cluster()
    assert [s.name for s in cluster.eligible_replicas()] == ["r1", "r2", "r3"]
    assert [s.name for s in cluster.eligible_replicas(gtids(1, 2))] == ["r1", "r2"]
    assert [s.name for s in cluster.eligible_replicas(gtids(3))] == ["r1"]
    assert [s.name for s in cluster.eligible_replicas(gtids(4))] == ["r3"]
    assert cluster.eligible_replicas(gtids(5)) == []


def test_a_bytes_limit_is_not_met_when_bytes_cannot_be_counted() -> None:
    # max_replica_lag = "16MB" is a PostgreSQL option; a seconds limit is the neutral one.
    cluster = monitored_cluster(ReplicaPolicy(max_lag_bytes=1 << 24))
    assert cluster.eligible_replicas() == []


# -- election without an epoch -----------------------------------------------------------------


def test_without_epochs_the_only_writable_server_is_primary() -> None:
    election = elect_primary(
        [ServerView("a", UP, PRIMARY, None), ServerView("b", UP, REPLICA, None)]
    )
    assert (election.primary, election.fenced) == ("a", ())


def test_without_epochs_two_writable_servers_get_no_primary() -> None:
    # Nothing tells which one holds the real data: refuse writes, fence both.
    election = elect_primary(
        [ServerView("a", UP, PRIMARY, None), ServerView("b", UP, PRIMARY, None)]
    )
    assert (election.primary, election.fenced) == (None, ("a", "b"))
    assert "the epoch of a, b is unknown" in election.reason


def test_a_profile_keeps_one_users_connections_apart() -> None:
    cluster = monitored_cluster()
    p = cluster.servers[0]
    plain, found_rows = cluster.pool("u", p), cluster.pool("u", p, "found_rows")
    assert plain is not found_rows
    assert cluster.pool("u", p, "found_rows") is found_rows
    assert found_rows.key == "c/u+found_rows@p"
    assert len(cluster.pools()) == 2
