"""Health checks and failover against real servers: primary loss and promotion, replica loss,
rejoin, and split brain."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import psycopg
import pytest
from psycopg.conninfo import make_conninfo

from dbbalancer.config import parse_config
from dbbalancer.testing.balancer import BalancerThread
from dbbalancer.testing.configs import cluster_config
from dbbalancer.testing.pgcluster import PgCluster
from dbbalancer.testing.ports import free_port

ClusterFactory = Callable[..., PgCluster]


def start(cluster: PgCluster, *, extra: str = "") -> BalancerThread:
    text = cluster_config(
        cluster,
        mode="transaction",
        pool_size=30,
        split=True,
        roles="auto",
        extra='max_replica_lag = []\nprimary_wait_timeout = "10s"\n' + extra,
    )
    balancer = BalancerThread(parse_config(text)).start()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and (
        primary_name(balancer) is None or len(eligible(balancer)) < len(cluster.replicas)
    ):
        time.sleep(0.05)
    return balancer


def runtime(balancer: BalancerThread):  # type: ignore[no-untyped-def]
    assert balancer.app.pg is not None
    cluster = balancer.app.pg.cluster("main")
    assert cluster is not None
    return cluster.runtime


def primary_name(balancer: BalancerThread) -> str | None:
    def get() -> str | None:
        server = runtime(balancer).primary()
        return None if server is None else str(server.name)

    return balancer.call(get)


def eligible(balancer: BalancerThread) -> list[str]:
    return balancer.call(lambda: [s.name for s in runtime(balancer).eligible_replicas()])


def dsn(balancer: BalancerThread) -> str:
    host, port = balancer.pg_address
    return make_conninfo(host=host, port=str(port), user="app", password="app", dbname="main")


def test_primary_failover_with_synchronous_replica(pg_cluster_factory: ClusterFactory) -> None:
    cluster = pg_cluster_factory(replicas=2, synchronous_replica=0)
    cluster.sql(
        cluster.primary, "CREATE TABLE fo (id bigint PRIMARY KEY, by text); GRANT ALL ON fo TO app"
    )
    balancer = start(cluster)
    acknowledged: list[int] = []
    errors: list[str] = []
    stop = threading.Event()
    lock = threading.Lock()

    def client(worker: int) -> None:
        n = 0
        deadline = time.monotonic() + 60
        while not stop.is_set() and time.monotonic() < deadline:
            try:
                with psycopg.connect(dsn(balancer), autocommit=True, connect_timeout=5) as conn:
                    while not stop.is_set() and time.monotonic() < deadline:
                        key = worker * 1_000_000 + n
                        n += 1
                        conn.execute("INSERT INTO fo VALUES (%s, 'w')", (key,))
                        with lock:
                            acknowledged.append(key)
                        conn.execute("SELECT count(*) FROM fo WHERE id < 100")
            except psycopg.Error as exc:
                with lock:
                    errors.append(str(exc).splitlines()[0])
                time.sleep(0.05)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(20)]
    for t in threads:
        t.start()
    try:
        time.sleep(1.0)
        old, new = cluster.primary, cluster.replicas[0]
        cluster.stop_node(old, mode="immediate")
        cluster.promote(new)
        promoted_at = time.monotonic()
        # How long until a write succeeds through the balancer after the promotion.
        with psycopg.connect(dsn(balancer), autocommit=True) as conn:
            while True:
                try:
                    row = conn.execute(
                        "INSERT INTO fo VALUES (-1, 'probe') RETURNING inet_server_port()"
                    ).fetchone()
                    break
                except psycopg.Error:
                    assert time.monotonic() - promoted_at < 10, "writes did not resume in 10s"
                    time.sleep(0.01)
        resumed = time.monotonic() - promoted_at
        print(f"\nwrites resumed {resumed * 1000:.0f} ms after the promotion")
        assert row is not None
        assert int(str(row[0])) == new.port
        assert resumed < 10
        time.sleep(1.0)
    finally:
        stop.set()
        for t in threads:
            t.join(30)
        balancer.stop()
    assert acknowledged
    present = {int(str(r[0])) for r in cluster.sql(new, "SELECT id FROM fo WHERE id >= 0")}
    missing = [key for key in acknowledged if key not in present]
    assert missing == [], f"{len(missing)} acknowledged writes lost"


def test_replica_loss_under_read_load_and_rejoin(pg_cluster_factory: ClusterFactory) -> None:
    cluster = pg_cluster_factory(replicas=2)
    balancer = start(cluster)
    victim, survivor = cluster.replicas
    errors: list[tuple[float, str]] = []
    stop = threading.Event()
    lock = threading.Lock()

    def reader() -> None:
        deadline = time.monotonic() + 30
        with psycopg.connect(dsn(balancer), autocommit=True, prepare_threshold=None) as conn:
            while not stop.is_set() and time.monotonic() < deadline:
                started = time.monotonic()
                try:
                    conn.execute("SELECT inet_server_port()").fetchone()
                except psycopg.Error as exc:
                    with lock:
                        errors.append((started, str(exc).splitlines()[0]))

    threads = [threading.Thread(target=reader) for _ in range(8)]
    try:
        for t in threads:
            t.start()
        time.sleep(0.5)
        cluster.stop_node(victim, mode="immediate")
        died_at = time.monotonic()
        time.sleep(2.0)
        stop.set()
        for t in threads:
            t.join(30)
        late = [e for e in errors if e[0] > died_at]
        assert late == [], late[:5]
        with psycopg.connect(dsn(balancer), autocommit=True) as conn:
            ports = {
                int(str(conn.execute("SELECT inet_server_port()").fetchone()[0]))  # type: ignore[index]
                for _ in range(10)
            }
        assert ports == {survivor.port}
        # The replica comes back and rejoins the reads after `rise` good probes.
        cluster.start_node(victim)
        deadline = time.monotonic() + 15
        while victim.name not in eligible(balancer):
            assert time.monotonic() < deadline, "the restarted replica did not rejoin"
            time.sleep(0.1)
        with psycopg.connect(dsn(balancer), autocommit=True, prepare_threshold=None) as conn:
            ports = {
                int(str(conn.execute("SELECT inet_server_port()").fetchone()[0]))  # type: ignore[index]
                for _ in range(10)
            }
        assert victim.port in ports
    finally:
        stop.set()
        balancer.stop()


def test_split_brain_writes_go_to_the_higher_timeline(
    pg_cluster_factory: ClusterFactory,
) -> None:
    cluster = pg_cluster_factory(replicas=1)
    old, promoted = cluster.primary, cluster.replicas[0]
    balancer = start(cluster)
    try:
        cluster.promote(promoted)  # the old primary keeps running: two servers claim primary
        deadline = time.monotonic() + 10
        while primary_name(balancer) != promoted.name:
            assert time.monotonic() < deadline, "the higher timeline was not elected"
            time.sleep(0.05)
        with psycopg.connect(dsn(balancer), autocommit=True) as conn:
            for _ in range(5):
                row = conn.execute(
                    "CREATE TEMP SEQUENCE IF NOT EXISTS sb; "
                    "SELECT inet_server_port(), nextval('sb')"
                )
                result = None
                while True:
                    if row.description is not None:
                        result = row.fetchall()
                    if not row.nextset():
                        break
                assert result is not None
                assert int(str(result[0][0])) == promoted.port
        fenced = balancer.call(
            lambda: [s.server.name for s in runtime(balancer).monitor.status() if s.fenced]
        )
        assert fenced == [old.name]
    finally:
        balancer.stop()


@pytest.mark.parametrize("mode", ["session", "transaction"])
def test_no_primary_at_all_is_a_clear_error_not_an_internal_one(mode: str) -> None:
    """Every server down: after primary_wait_timeout the client is refused with a message naming
    the cluster and the setting (a compiled build once turned this into an internal error: see
    tests/unit/test_build.py)."""
    dead = [free_port() for _ in range(2)]
    servers = "".join(
        f'[[clusters.servers]]\nname = "s{i}"\naddress = "127.0.0.1:{port}"\nrole = "auto"\n\n'
        for i, port in enumerate(dead)
    )
    config = parse_config(
        '[listen]\npostgres = "127.0.0.1:0"\n\n'
        '[[users]]\nname = "app"\npassword = "app"\nauth = "scram-sha-256"\n\n'
        f'[[clusters]]\nname = "main"\ndatabase = "main"\npool_mode = "{mode}"\n'
        'primary_wait_timeout = "300ms"\n\n' + servers
    )
    balancer = BalancerThread(config).start()
    try:
        host, port = balancer.pg_address
        conninfo = f"host={host} port={port} user=app password=app dbname=main connect_timeout=10"
        with (
            pytest.raises(psycopg.OperationalError) as raised,
            psycopg.connect(conninfo, autocommit=True) as conn,
        ):
            conn.execute("SELECT 1")
        # libpq reports a login failure without its SQLSTATE: the text tells 08006 from XX000.
        message = str(raised.value)
        assert "FATAL:  cluster main has no primary" in message
        assert "primary_wait_timeout" in message
        assert "internal error" not in message
    finally:
        balancer.stop()
