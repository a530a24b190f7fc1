"""The local MariaDB cluster helper against real servers.

Checks what the MySQL tests, the demo and the benchmarks rely on: the ``app`` login over TCP,
GTID replicas that apply the primary's writes and refuse the application's own, a replica that
rejoins after a crash, ``MASTER_DELAY`` holding a replica back, promotion with the other
replica and the old primary following the new one, a stop that leaves no server behind, and
servers that stay away from the machine's own MariaDB (port 3306, /etc/mysql).
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pymysql
import pytest

from dbbalancer.testing.mariadbcluster import (
    RESERVED_PORTS,
    MariaDbCluster,
    MariaDbNode,
    gtid_pos_covers,
    parse_gtid_pos,
)

# Generous: replication on loopback takes milliseconds; the bound only stops a hung test.
REPLAY_WAIT = 15.0
ER_OPTION_PREVENTS_STATEMENT = 1290  # "--read-only option so it cannot execute this statement"
ER_ACCESS_DENIED_ERROR = 1045


def _connect(cluster: MariaDbCluster, node: MariaDbNode, **kwargs: object) -> pymysql.Connection:
    return pymysql.connect(**{**cluster.connect_kwargs(node), "autocommit": True, **kwargs})


def _insert_token(cluster: MariaDbCluster, node: MariaDbNode, table: str) -> str:
    token = uuid.uuid4().hex
    with _connect(cluster, node) as conn, conn.cursor() as cur:
        cur.execute(f"CREATE TABLE IF NOT EXISTS {table} (token varchar(64) PRIMARY KEY)")
        cur.execute(f"INSERT INTO {table} (token) VALUES (%s)", (token,))
    return token


def _has_token(cluster: MariaDbCluster, node: MariaDbNode, table: str, token: str) -> bool:
    # Read as the application user over TCP, the way the balancer's clients will.
    with _connect(cluster, node) as conn, conn.cursor() as cur:
        cur.execute(
            "SELECT COUNT(*) FROM information_schema.tables "
            "WHERE table_schema = DATABASE() AND table_name = %s",
            (table,),
        )
        row = cur.fetchone()
        if row is None or row[0] == 0:
            return False
        cur.execute(f"SELECT COUNT(*) FROM {table} WHERE token = %s", (token,))
        row = cur.fetchone()
        return row is not None and row[0] == 1


def _wait_token(cluster: MariaDbCluster, node: MariaDbNode, table: str, token: str) -> bool:
    deadline = time.monotonic() + REPLAY_WAIT
    while not _has_token(cluster, node, table, token):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)
    return True


def _cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def _processes_mentioning(text: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and any(text in arg for arg in _cmdline(int(entry.name))):
            found.append(int(entry.name))
    return found


def _foreign_servers(base_dir: Path) -> set[int]:
    """PIDs of MariaDB/MySQL servers that no test cluster started (e.g. the machine's own on
    3306). Other test clusters (another test run on the machine) come and go as they please."""
    pids = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        args = _cmdline(int(entry.name))
        ours = any(str(base_dir) in arg or MariaDbCluster._tempdir_prefix in arg for arg in args)
        if args and Path(args[0]).name in ("mariadbd", "mysqld") and not ours:
            pids.add(int(entry.name))
    return pids


def test_gtid_positions_parse_and_compare() -> None:
    assert parse_gtid_pos("") == {}
    assert parse_gtid_pos(None) == {}
    assert parse_gtid_pos("0-1-12,\n1-3-4") == {0: 12, 1: 4}
    assert gtid_pos_covers(parse_gtid_pos("0-2-12"), parse_gtid_pos("0-1-12"))
    assert not gtid_pos_covers(parse_gtid_pos("0-1-11"), parse_gtid_pos("0-1-12"))
    assert not gtid_pos_covers({}, parse_gtid_pos("1-1-1"))
    with pytest.raises(ValueError, match="not a GTID"):
        parse_gtid_pos("0-1")


def test_app_user_logs_in_over_tcp(mariadb_cluster: MariaDbCluster) -> None:
    primary = mariadb_cluster.primary
    with _connect(mariadb_cluster, primary) as conn, conn.cursor() as cur:
        cur.execute("SELECT CURRENT_USER(), DATABASE(), @@port")
        assert cur.fetchone() == ("app@127.0.0.1", "app", primary.port)
    with pytest.raises(pymysql.err.OperationalError) as refused:
        _connect(mariadb_cluster, primary, password="wrong")
    assert refused.value.args[0] == ER_ACCESS_DENIED_ERROR
    # install-db's password-less root@127.0.0.1 is gone: root is reachable on the socket only.
    with pytest.raises(pymysql.err.OperationalError):
        _connect(mariadb_cluster, primary, user="root", password="", database="mysql")
    admin = mariadb_cluster.connect_kwargs(
        primary,
        user=mariadb_cluster.superuser,
        password=mariadb_cluster.superuser_password,
        database="mysql",
    )
    with pymysql.connect(**admin) as conn, conn.cursor() as cur:
        cur.execute("SELECT @@server_id")
        assert cur.fetchone() == (primary.server_id,)
    assert mariadb_cluster.url(primary) == f"mysql://app:app@127.0.0.1:{primary.port}/app"
    assert mariadb_cluster.sql(primary, "SELECT NULL, '', 'a\tb'") == [(None, "", "a\tb")]
    assert mariadb_cluster.sql(primary, "SELECT 1 FROM DUAL WHERE FALSE") == []


def test_write_on_primary_is_read_on_every_replica(mariadb_cluster: MariaDbCluster) -> None:
    assert [n.name for n in mariadb_cluster.replicas] == ["replica1", "replica2"]
    token = _insert_token(mariadb_cluster, mariadb_cluster.primary, "replication_check")
    for replica in mariadb_cluster.replicas:
        assert _wait_token(mariadb_cluster, replica, "replication_check", token), replica.name
        status = mariadb_cluster.slave_status(replica)
        assert status["Master_Port"] == str(mariadb_cluster.primary.port)
        assert status["Using_Gtid"] == "Slave_Pos"
    mariadb_cluster.wait_replicated(timeout=REPLAY_WAIT)
    target = mariadb_cluster.gtid_binlog_pos(mariadb_cluster.primary)
    for replica in mariadb_cluster.replicas:
        assert gtid_pos_covers(mariadb_cluster.gtid_slave_pos(replica), target)


def test_replicas_are_read_only_for_the_app(mariadb_cluster: MariaDbCluster) -> None:
    _insert_token(mariadb_cluster, mariadb_cluster.primary, "read_only_check")
    mariadb_cluster.wait_replicated(timeout=REPLAY_WAIT)
    settings = "SELECT @@read_only, @@gtid_strict_mode, @@log_slave_updates, @@log_bin"
    assert mariadb_cluster.sql(mariadb_cluster.primary, settings) == [("0", "1", "1", "1")]
    for replica in mariadb_cluster.replicas:
        assert mariadb_cluster.sql(replica, settings) == [("1", "1", "1", "1")]
        with _connect(mariadb_cluster, replica) as conn, conn.cursor() as cur:
            with pytest.raises(pymysql.err.OperationalError) as refused:
                cur.execute("INSERT INTO read_only_check VALUES ('from the app')")
            assert refused.value.args[0] == ER_OPTION_PREVENTS_STATEMENT


def test_servers_stay_off_the_machines_own(mariadb_cluster: MariaDbCluster) -> None:
    base = mariadb_cluster.base_dir
    ports = {node.port for node in mariadb_cluster.nodes}
    assert len(ports) == len(mariadb_cluster.nodes)
    assert not ports & RESERVED_PORTS
    for node in mariadb_cluster.nodes:
        row = mariadb_cluster.sql(node, "SELECT @@port, @@bind_address, @@socket, @@datadir")
        assert row == [(str(node.port), "127.0.0.1", str(node.socket), f"{node.data_dir}{os.sep}")]
        assert str(node.socket).startswith(str(base))
        pid = mariadb_cluster.pid(node)
        assert pid is not None
        args = _cmdline(pid)
        # --no-defaults must come first: /etc/mysql/my.cnf is never read.
        assert args[1] == "--no-defaults"
        assert f"--port={node.port}" in args


def test_killed_replica_restarts_and_catches_up(mariadb_cluster: MariaDbCluster) -> None:
    replica = mariadb_cluster.replicas[0]
    pid = mariadb_cluster.pid(replica)
    assert pid is not None
    mariadb_cluster.kill(replica)
    assert not mariadb_cluster.is_running(replica)
    assert not _processes_mentioning(str(replica.node_dir))
    with pytest.raises(pymysql.err.OperationalError):
        _connect(mariadb_cluster, replica, connect_timeout=2)

    token = _insert_token(mariadb_cluster, mariadb_cluster.primary, "rejoin_check")
    mariadb_cluster.start_node(replica)
    assert mariadb_cluster.pid(replica) not in (None, pid)
    assert mariadb_cluster.sql(replica, "SELECT @@read_only") == [("1",)]
    assert _wait_token(mariadb_cluster, replica, "rejoin_check", token)

    mariadb_cluster.stop_node(replica)
    assert not mariadb_cluster.is_running(replica)
    mariadb_cluster.start_node(replica)
    mariadb_cluster.wait_replicated(timeout=REPLAY_WAIT)


def test_delayed_replica_is_behind_then_catches_up(
    mariadb_cluster_factory: Callable[..., MariaDbCluster],
) -> None:
    delay = 2
    cluster = mariadb_cluster_factory(replicas=2, delay={0: delay})
    delayed, prompt = cluster.replicas
    assert cluster.slave_status(delayed)["SQL_Delay"] == str(delay)
    assert cluster.slave_status(prompt)["SQL_Delay"] == "0"

    committed = time.monotonic()
    token = _insert_token(cluster, cluster.primary, "delay_check")
    cluster.wait_replicated(timeout=REPLAY_WAIT, nodes=[prompt])
    target = cluster.gtid_binlog_pos(cluster.primary)
    # The delayed replica has received the events (IO thread) but not applied them.
    deadline = time.monotonic() + REPLAY_WAIT
    while not gtid_pos_covers(parse_gtid_pos(cluster.slave_status(delayed)["Gtid_IO_Pos"]), target):
        assert time.monotonic() < deadline, "the delayed replica never received the events"
        time.sleep(0.05)
    behind = not _has_token(cluster, delayed, "delay_check", token)
    # Only meaningful while the delay cannot have elapsed; a stalled machine skips the check.
    if time.monotonic() - committed < delay - 1:
        assert behind
        assert not gtid_pos_covers(cluster.gtid_slave_pos(delayed), target)

    cluster.wait_replicated(timeout=delay + REPLAY_WAIT, nodes=[delayed])
    # Binlog timestamps have a one-second resolution, hence the slack.
    assert time.monotonic() - committed >= delay - 1.5
    assert _has_token(cluster, delayed, "delay_check", token)

    cluster.set_delay(delayed, 0)
    assert cluster.slave_status(delayed)["SQL_Delay"] == "0"
    token = _insert_token(cluster, cluster.primary, "delay_check")
    assert _wait_token(cluster, delayed, "delay_check", token)


def test_promote_with_catch_up_takes_what_only_another_replica_received(
    mariadb_cluster_factory: Callable[..., MariaDbCluster],
) -> None:
    """A killed primary may have sent its last events to one replica only: the promoted one
    must take them from that replica, or that replica diverges and cannot follow it."""
    cluster = mariadb_cluster_factory(replicas=2)
    old_primary = cluster.primary
    new_primary, other = cluster.replicas
    _insert_token(cluster, old_primary, "failover_check")
    cluster.wait_replicated(timeout=REPLAY_WAIT)
    cluster.sql(new_primary, "STOP SLAVE IO_THREAD")
    token = _insert_token(cluster, old_primary, "failover_check")
    cluster.wait_replicated(timeout=REPLAY_WAIT, nodes=[other])
    assert not _has_token(cluster, new_primary, "failover_check", token)

    cluster.kill(old_primary)
    cluster.promote(new_primary, catch_up=True)
    assert _has_token(cluster, new_primary, "failover_check", token)
    assert cluster.slave_status(new_primary) == {}
    after = _insert_token(cluster, new_primary, "failover_check")
    assert _wait_token(cluster, other, "failover_check", after)
    cluster.wait_replicated(timeout=REPLAY_WAIT)


def test_promote_follow_rejoin_and_stop_leave_nothing(
    mariadb_cluster_factory: Callable[..., MariaDbCluster],
) -> None:
    cluster = mariadb_cluster_factory(replicas=2)
    foreign_before = _foreign_servers(cluster.base_dir)
    old_primary = cluster.primary
    new_primary, other = cluster.replicas
    _insert_token(cluster, old_primary, "failover_check")
    cluster.wait_replicated(timeout=REPLAY_WAIT)

    # A failover: the primary crashes, a replica is promoted and becomes writable.
    cluster.kill(old_primary)
    cluster.promote(new_primary)
    assert cluster.primary == new_primary
    assert cluster.replicas == [other]
    assert cluster.sql(new_primary, "SELECT @@read_only") == [("0",)]
    assert cluster.slave_status(new_primary) == {}
    token = _insert_token(cluster, new_primary, "failover_check")

    # The other replica follows the new primary from its GTID position.
    assert cluster.slave_status(other)["Master_Port"] == str(new_primary.port)
    assert _wait_token(cluster, other, "failover_check", token)
    cluster.wait_replicated(timeout=REPLAY_WAIT)

    # The old primary comes back as a replica of the new one (MASTER_USE_GTID=current_pos).
    cluster.rejoin(old_primary)
    assert cluster.replicas == [other, old_primary]
    assert cluster.sql(old_primary, "SELECT @@read_only") == [("1",)]
    assert _wait_token(cluster, old_primary, "failover_check", token)
    token = _insert_token(cluster, new_primary, "failover_check")
    cluster.wait_replicated(timeout=REPLAY_WAIT)
    for replica in cluster.replicas:
        assert _has_token(cluster, replica, "failover_check", token), replica.name
    # A restart keeps following from where it was (current_pos for the old primary).
    cluster.stop_node(old_primary)
    token = _insert_token(cluster, new_primary, "failover_check")
    cluster.start_node(old_primary)
    assert cluster.slave_status(old_primary)["Using_Gtid"] == "Current_Pos"
    assert _wait_token(cluster, old_primary, "failover_check", token)

    # Nothing survives kill or stop: no process names the cluster's directory afterwards.
    cluster.kill(other)
    assert not _processes_mentioning(str(other.node_dir))
    pids = [cluster.pid(node) for node in cluster.nodes]
    base_dir = cluster.base_dir
    cluster.stop()
    assert all(pid is None or not Path(f"/proc/{pid}").exists() for pid in pids)
    assert not _processes_mentioning(str(base_dir))
    assert not base_dir.exists()
    cluster.stop()  # idempotent
    # Servers that are not ours (the machine's own on 3306, if any) were left alone.
    assert foreign_before <= _foreign_servers(base_dir)
