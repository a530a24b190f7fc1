"""Health checks and failover against real servers: primary loss and promotion, replica loss,
rejoin, and split brain."""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable

import psycopg
import pytest
from psycopg.conninfo import make_conninfo

from dbbalancer.config import parse_config
from dbbalancer.testing.balancer import BalancerThread
from dbbalancer.testing.configs import cluster_config
from dbbalancer.testing.pgcluster import PgCluster, PgNode
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


# What a client may see while the primary is lost and a replica promoted (docs/postgres.md): a
# statement in flight on the dead primary fails with a clean 08006 "server connection ... was
# lost", and its next statement works; a statement the server ends as it shuts down fails with
# its shutdown SQLSTATE (57P01/57P02). A server connection refused at login while a server goes
# down (57P03 "the database system is shutting down") never reaches the client: the read moves
# to another replica, the write waits for the primary. Anything else (a closed client
# connection, "no primary" after primary_wait_timeout, ...) is an error of the test.
SHUTDOWN_SQLSTATES = frozenset({"57P01", "57P02"})


def retryable(sqlstate: str | None, message: str) -> bool:
    """An error the failover is documented to cause, after which the next statement works."""
    if sqlstate == "08006":
        return message.startswith("server connection to ") and "was lost" in message
    return sqlstate in SHUTDOWN_SQLSTATES


def test_primary_failover_with_synchronous_replica(pg_cluster_factory: ClusterFactory) -> None:
    cluster = pg_cluster_factory(replicas=2, synchronous_replica=0)
    cluster.sql(
        cluster.primary, "CREATE TABLE fo (id bigint PRIMARY KEY, by text); GRANT ALL ON fo TO app"
    )
    balancer = start(cluster)
    workers = 20
    acknowledged: list[int] = []
    # Per worker: writes begun after the switch and acknowledged.
    after_switch: collections.Counter[int] = collections.Counter()
    errors: list[tuple[int, str | None, str]] = []
    switched = threading.Event()
    stop = threading.Event()
    lock = threading.Lock()

    def client(worker: int) -> None:
        n = 0
        deadline = time.monotonic() + 60  # hang guard
        while not stop.is_set() and time.monotonic() < deadline:
            try:
                with psycopg.connect(dsn(balancer), autocommit=True, connect_timeout=5) as conn:
                    while not stop.is_set() and time.monotonic() < deadline:
                        key = worker * 1_000_000 + n
                        n += 1
                        began_after = switched.is_set()
                        conn.execute("INSERT INTO fo VALUES (%s, 'w')", (key,))
                        with lock:
                            acknowledged.append(key)
                            if began_after:
                                after_switch[worker] += 1
                        conn.execute("SELECT count(*) FROM fo WHERE id < 100")
            except psycopg.Error as exc:
                if stop.is_set():
                    return
                with lock:
                    errors.append((worker, exc.sqlstate, str(exc).splitlines()[0]))
                time.sleep(0.05)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(workers)]
    for t in threads:
        t.start()
    try:
        time.sleep(1.0)
        old, new = cluster.primary, cluster.replicas[0]
        cluster.stop_node(old, mode="immediate")
        cluster.promote(new)
        # A write through the balancer succeeds on the new primary (how soon is in
        # docs/postgres.md; here only a generous hang guard).
        deadline = time.monotonic() + 30
        with psycopg.connect(dsn(balancer), autocommit=True) as conn:
            while True:
                try:
                    row = conn.execute(
                        "INSERT INTO fo VALUES (-1, 'probe') RETURNING inet_server_port()"
                    ).fetchone()
                    break
                except psycopg.Error:
                    assert time.monotonic() < deadline, "writes did not resume"
                    time.sleep(0.01)
        assert row is not None
        assert int(str(row[0])) == new.port
        switched.set()
        # Every worker goes on writing after the switch, on its old connection or a new one.
        deadline = time.monotonic() + 30
        while True:
            with lock:
                behind = [w for w in range(workers) if after_switch[w] < 3]
            if not behind:
                break
            assert time.monotonic() < deadline, f"workers {behind} wrote nothing after the switch"
            time.sleep(0.05)
    finally:
        stop.set()
        join_threads(threads)
        balancer.stop()  # also frees a worker stuck on a statement that never ends
        join_threads(threads)
    unexpected = [e for e in errors if not retryable(e[1], e[2])]
    assert unexpected == [], unexpected[:5]
    present = {int(str(r[0])) for r in cluster.sql(new, "SELECT id FROM fo WHERE id >= 0")}
    missing = [key for key in acknowledged if key not in present]
    assert missing == [], f"{len(missing)} acknowledged writes lost"


def test_replica_loss_under_read_load_and_rejoin(pg_cluster_factory: ClusterFactory) -> None:
    cluster = pg_cluster_factory(replicas=2)
    cluster.sql(cluster.primary, "CREATE TABLE held (id int); GRANT SELECT ON held TO app")
    balancer = start(cluster)
    victim, survivor = cluster.replicas
    for node in cluster.replicas:
        wait_for(cluster, node, "SELECT to_regclass('held') IS NOT NULL")
    # Reads that are in flight with no row sent yet: the primary takes an ACCESS EXCLUSIVE lock
    # on `held`, the standbys replay it, and `SELECT ... FROM held` waits there for the lock
    # before it has even produced its RowDescription.
    admin = cluster.dsn(
        cluster.primary, user=cluster.superuser, password=cluster.superuser_password
    )
    locker = psycopg.connect(admin)
    locker.execute("LOCK TABLE held IN ACCESS EXCLUSIVE MODE")
    # A commit elsewhere flushes the WAL, the lock's record included, to the standbys.
    cluster.sql(cluster.primary, "SELECT pg_current_xact_id()")
    held_lock = (
        "SELECT count(*) > 0 FROM pg_locks WHERE locktype = 'relation' "
        "AND relation = 'held'::regclass AND mode = 'AccessExclusiveLock' AND granted"
    )
    for node in cluster.replicas:
        wait_for(cluster, node, held_lock)
    blocked_sql = "SELECT inet_server_port(), count(*) FROM held"
    waiting = (
        "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
        f"AND query = '{blocked_sql}'"
    )
    results: list[int] = []
    failed: list[str] = []  # blocked reads
    errors: list[tuple[float, str | None, str]] = []  # the read load: (began, sqlstate, text)
    stop = threading.Event()
    lock = threading.Lock()

    def blocked_reader() -> None:
        try:
            with psycopg.connect(dsn(balancer), autocommit=True, prepare_threshold=None) as conn:
                row = conn.execute(blocked_sql).fetchone()
                assert row is not None
                with lock:
                    results.append(int(str(row[0])))
        except psycopg.Error as exc:
            with lock:
                failed.append(f"{exc.sqlstate}: {str(exc).splitlines()[0]}")

    def reader() -> None:
        deadline = time.monotonic() + 30  # hang guard
        with psycopg.connect(dsn(balancer), autocommit=True, prepare_threshold=None) as conn:
            while not stop.is_set() and time.monotonic() < deadline:
                started = time.monotonic()
                try:
                    conn.execute("SELECT inet_server_port()").fetchone()
                except psycopg.Error as exc:
                    with lock:
                        errors.append((started, exc.sqlstate, str(exc).splitlines()[0]))

    blocked = [threading.Thread(target=blocked_reader) for _ in range(6)]
    threads = [threading.Thread(target=reader) for _ in range(4)]
    try:
        for t in blocked:
            t.start()
        # Round robin puts three blocked reads on each replica; then the read load starts.
        wait_for(cluster, victim, f"SELECT ({waiting}) = 3")
        wait_for(cluster, survivor, f"SELECT ({waiting}) = 3")
        for t in threads:
            t.start()
        time.sleep(0.2)
        cluster.stop_node(victim, mode="immediate")
        died_at = time.monotonic()
        # The three reads that were waiting on the victim are retried on the survivor.
        deadline = time.monotonic() + 15
        while cluster.sql(survivor, waiting) != [("6",)]:
            with lock:
                assert failed == [], f"reads in flight on the lost replica failed: {failed}"
            assert time.monotonic() < deadline, "the lost replica's reads were not retried"
            time.sleep(0.05)
        locker.rollback()
        join_threads(blocked)
        time.sleep(0.5)
        stop.set()
        join_threads(threads)
        assert failed == []
        assert results == [survivor.port] * 6
        # Of the read load, a read whose rows were on the way may fail, cleanly (08006), or be
        # ended by the shutdown (57P01/57P02); one refused at login moves on; nothing fails once
        # the replica is gone.
        unexpected = [e for e in errors if e[0] > died_at or not retryable(e[1], e[2])]
        assert unexpected == [], unexpected[:5]
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
        locker.close()
        join_threads(blocked + threads)
        balancer.stop()


def join_threads(threads: list[threading.Thread], timeout: float = 30.0) -> None:
    """Join `threads`, all within one `timeout` (a hang guard, not a time limit)."""
    deadline = time.monotonic() + timeout
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))


def wait_for(cluster: PgCluster, node: PgNode, check: str, timeout: float = 15.0) -> None:
    """Wait until the boolean query `check` is true on `node` (run as the superuser)."""
    deadline = time.monotonic() + timeout
    while cluster.sql(node, check) != [("t",)]:
        assert time.monotonic() < deadline, f"{node.name}: never true: {check}"
        time.sleep(0.05)


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
