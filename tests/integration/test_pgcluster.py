"""The local PostgreSQL cluster helper against real servers.

Checks the behaviour other tests rely on: SCRAM logins over TCP, hot standbys that replay the
primary's writes, standbys that rejoin after a restart, an apply delay that holds back replay,
a synchronous standby, promotion, and a stop that leaves no postmaster behind.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable

import psycopg
import pytest

from dbbalancer.testing.pgcluster import PgCluster, PgNode
from dbbalancer.testing.ports import free_ports

# Generous: replication on loopback takes milliseconds; the bound only stops a hung test.
REPLAY_WAIT = 15.0


def _visible(cluster: PgCluster, node: PgNode, table: str, token: str) -> bool:
    # The standby may not have replayed the CREATE TABLE yet either.
    if cluster.sql(node, f"SELECT to_regclass('{table}') IS NOT NULL") != [("t",)]:
        return False
    query = f"SELECT count(*) FROM {table} WHERE token = '{token}'"
    return cluster.sql(node, query) == [("1",)]


def _wait_visible(cluster: PgCluster, node: PgNode, table: str, token: str) -> bool:
    deadline = time.monotonic() + REPLAY_WAIT
    while not _visible(cluster, node, table, token):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)
    return True


def _insert_token(cluster: PgCluster, node: PgNode, table: str) -> str:
    token = uuid.uuid4().hex
    with psycopg.connect(cluster.dsn(node), autocommit=True) as conn:
        conn.execute(f"CREATE TABLE IF NOT EXISTS {table} (token text PRIMARY KEY)")
        conn.execute(f"INSERT INTO {table} (token) VALUES (%s)", (token,))
    return token


def test_free_ports_are_distinct() -> None:
    ports = free_ports(20)
    assert len(set(ports)) == 20
    assert all(0 < port < 65536 for port in ports)


def test_primary_accepts_scram_writes_over_tcp(pg_cluster: PgCluster) -> None:
    primary = pg_cluster.primary
    with psycopg.connect(pg_cluster.dsn(primary), autocommit=True) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS scram_writes (n int)")
        conn.execute("INSERT INTO scram_writes VALUES (1)")
        row = conn.execute("SELECT current_user, current_database(), inet_server_port()").fetchone()
    assert row == (pg_cluster.user, pg_cluster.database, primary.port)

    stored = pg_cluster.sql(
        primary, f"SELECT rolpassword FROM pg_authid WHERE rolname = '{pg_cluster.user}'"
    )
    assert stored[0][0] is not None
    assert stored[0][0].startswith("SCRAM-SHA-256$")
    # A wrong password must be refused: TCP logins are not "trust".
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(pg_cluster.dsn(primary, password="wrong"))


def test_connection_strings_and_superuser(pg_cluster: PgCluster) -> None:
    primary = pg_cluster.primary
    with psycopg.connect(pg_cluster.url(primary)) as conn:
        assert conn.execute("SELECT current_user").fetchone() == (pg_cluster.user,)
    with psycopg.connect(pg_cluster.admin_dsn(primary)) as conn:
        row = conn.execute("SELECT rolsuper FROM pg_roles WHERE rolname = current_user")
        assert row.fetchone() == (True,)
    assert primary.address() == f"127.0.0.1:{primary.port}"
    assert pg_cluster.sql(primary, "SELECT NULL::text, 'a|b', ''") == [(None, "a|b", "")]
    assert pg_cluster.sql(primary, "SELECT 1 WHERE false") == []


def test_replicas_are_hot_standbys_that_replay_writes(pg_cluster: PgCluster) -> None:
    assert [node.name for node in pg_cluster.replicas] == ["replica1", "replica2"]
    assert pg_cluster.sql(pg_cluster.primary, "SELECT pg_is_in_recovery()") == [("f",)]
    token = _insert_token(pg_cluster, pg_cluster.primary, "replay_check")
    for replica in pg_cluster.replicas:
        with psycopg.connect(pg_cluster.dsn(replica)) as conn:
            assert conn.execute("SELECT pg_is_in_recovery()").fetchone() == (True,)
        assert _wait_visible(pg_cluster, replica, "replay_check", token), replica.name

    rows = pg_cluster.sql(
        pg_cluster.primary,
        "SELECT application_name, state FROM pg_stat_replication ORDER BY 1",
    )
    assert rows == [("replica1", "streaming"), ("replica2", "streaming")]


def test_stopped_replica_rejoins_streaming(pg_cluster: PgCluster) -> None:
    replica = pg_cluster.replicas[0]
    pg_cluster.stop_node(replica)
    assert not pg_cluster.is_running(replica)
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(pg_cluster.dsn(replica), connect_timeout=2)

    token = _insert_token(pg_cluster, pg_cluster.primary, "rejoin_check")
    pg_cluster.start_node(replica)

    assert pg_cluster.is_running(replica)
    streaming = pg_cluster.sql(
        pg_cluster.primary,
        f"SELECT state FROM pg_stat_replication WHERE application_name = '{replica.name}'",
    )
    assert streaming == [("streaming",)]
    assert _wait_visible(pg_cluster, replica, "rejoin_check", token)


def test_delayed_synchronous_replica_holds_back_replay(
    pg_cluster_factory: Callable[..., PgCluster],
) -> None:
    # A synchronous standby has flushed the commit record before COMMIT returns; with a long
    # apply delay it cannot have replayed it, so the check needs no timing assumption.
    cluster = pg_cluster_factory(replicas=1, replica_apply_delay={0: "1h"}, synchronous_replica=0)
    primary, replica = cluster.primary, cluster.replicas[0]
    assert cluster.sql(primary, "SELECT application_name, sync_state FROM pg_stat_replication") == [
        ("replica1", "sync")
    ]
    assert cluster.sql(replica, "SHOW recovery_min_apply_delay") == [("1h",)]

    token = uuid.uuid4().hex
    with psycopg.connect(cluster.dsn(primary), autocommit=True) as conn:
        conn.execute("CREATE TABLE delayed (token text)")
        with conn.transaction():
            conn.execute("INSERT INTO delayed VALUES (%s)", (token,))
            lsn_row = conn.execute("SELECT pg_current_wal_insert_lsn()::text").fetchone()
    assert lsn_row is not None
    received = cluster.sql(replica, f"SELECT pg_last_wal_receive_lsn() >= '{lsn_row[0]}'::pg_lsn")
    assert received == [("t",)]
    # The CREATE TABLE commit is held back too, so the table itself is not there yet.
    assert cluster.sql(replica, "SELECT to_regclass('public.delayed') IS NULL") == [("t",)]

    pids = [cluster.postmaster_pid(node) for node in cluster.nodes]
    base_dir = cluster.base_dir
    cluster.stop()
    assert all(pid is not None for pid in pids)
    assert all(not _pid_exists(pid) for pid in pids if pid is not None)
    assert not base_dir.exists()
    cluster.stop()  # idempotent


def test_promote_makes_a_standby_primary(pg_cluster_factory: Callable[..., PgCluster]) -> None:
    cluster = pg_cluster_factory(replicas=2)
    old_primary = cluster.primary
    replica1, replica2 = cluster.replicas
    token = _insert_token(cluster, old_primary, "before_failover")
    for replica in (replica1, replica2):
        assert _wait_visible(cluster, replica, "before_failover", token)

    # Fast shutdown sends the final WAL to both standbys, so the survivor can follow the
    # promoted one onto its new timeline.
    cluster.stop_node(old_primary, mode="fast")
    cluster.promote(replica1)

    assert cluster.primary == replica1
    assert cluster.replicas == [replica2]
    assert old_primary in cluster.nodes
    assert cluster.sql(replica1, "SELECT pg_is_in_recovery()") == [("f",)]
    token = _insert_token(cluster, replica1, "after_failover")
    cluster.wait_streaming()
    assert _wait_visible(cluster, replica2, "after_failover", token)

    pids = [cluster.postmaster_pid(node) for node in cluster.nodes]
    cluster.stop()
    assert pids[0] is None  # the old primary was already stopped
    assert all(not _pid_exists(pid) for pid in pids if pid is not None)


def _pid_exists(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False
