"""Read/write splitting against a real primary and two streaming replicas."""

from __future__ import annotations

import collections
import contextlib
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg.conninfo import make_conninfo

from dbbalancer.config import parse_config
from dbbalancer.testing.balancer import BalancerThread
from dbbalancer.testing.configs import cluster_config
from dbbalancer.testing.delayproxy import DelayProxy
from dbbalancer.testing.pgcluster import PgCluster, PgNode


def config_text(
    cluster: PgCluster,
    *,
    mode: str = "transaction",
    extra: str = "",
    weights: str = "",
    addresses: dict[str, str] | None = None,
) -> str:
    names = [n.name for n in cluster.replicas]
    weight_of = dict(zip(names, map(int, weights.split(",")), strict=False)) if weights else {}
    return cluster_config(
        cluster,
        mode=mode,
        pool_size=8,
        split=True,
        weights=weight_of,
        addresses=addresses,
        extra='health_check_interval = "200ms"\n' + extra,
    )


def start(cluster: PgCluster, **kwargs: Any) -> BalancerThread:
    """A balancer whose health monitor already sees every running replica as eligible."""
    balancer = BalancerThread(parse_config(config_text(cluster, **kwargs))).start()
    deadline = time.monotonic() + 10
    while len(split_replicas(balancer)) < len(cluster.replicas) and time.monotonic() < deadline:
        time.sleep(0.05)
    return balancer


def dsn(balancer: BalancerThread) -> str:
    host, port = balancer.pg_address
    return make_conninfo(host=host, port=str(port), user="app", password="app", dbname="main")


@pytest.fixture(scope="module")
def split(pg_cluster: PgCluster) -> Iterator[BalancerThread]:
    pg_cluster.sql(
        pg_cluster.primary,
        "CREATE TABLE IF NOT EXISTS rw (id serial PRIMARY KEY, v int); "
        "CREATE SEQUENCE IF NOT EXISTS rw_seq; "
        "CREATE OR REPLACE FUNCTION rw_writer() RETURNS int LANGUAGE sql VOLATILE "
        "AS 'INSERT INTO rw (v) VALUES (1) RETURNING 1'; "
        "CREATE OR REPLACE PROCEDURE rw_proc() LANGUAGE sql AS 'INSERT INTO rw (v) VALUES (2)'; "
        "INSERT INTO rw (v) SELECT 0 WHERE NOT EXISTS (SELECT FROM rw); "
        "GRANT ALL ON ALL TABLES IN SCHEMA public TO app; "
        "GRANT ALL ON ALL SEQUENCES IN SCHEMA public TO app",
    )
    pg_cluster.wait_streaming()
    balancer = start(pg_cluster)
    try:
        yield balancer
    finally:
        balancer.stop()


def port_of(conn: psycopg.Connection[tuple[object, ...]], sql: str) -> int:
    """Run `sql` (whose first column is inet_server_port()) and return the port that ran it."""
    cur = conn.execute(sql)
    rows: list[tuple[object, ...]] = []
    while True:
        if cur.description is not None:
            rows = cur.fetchall()
        if not cur.nextset():
            break
    assert rows, f"no rows from {sql!r}"
    return int(str(rows[0][0]))


def test_autocommit_reads_go_to_replicas(split: BalancerThread, pg_cluster: PgCluster) -> None:
    replicas = {node.port for node in pg_cluster.replicas}
    with psycopg.connect(dsn(split), autocommit=True) as conn:
        ports = [port_of(conn, "SELECT inet_server_port()") for _ in range(20)]
        ports += [port_of(conn, "SELECT inet_server_port(), lower('X') FROM (VALUES (1)) v")
                  for _ in range(4)]  # fmt: skip
    assert set(ports) <= replicas
    assert set(ports) == replicas  # round robin reaches both


TRICKY = [
    "SELECT inet_server_port() FROM rw FOR UPDATE",
    "SELECT inet_server_port() FROM rw FOR NO KEY UPDATE",
    "SELECT inet_server_port() FROM rw FOR SHARE",
    "SELECT inet_server_port() FROM rw FOR KEY SHARE",
    "WITH w AS (INSERT INTO rw (v) VALUES (3) RETURNING v) SELECT inet_server_port() FROM w",
    "WITH a AS (SELECT 1), b AS (DELETE FROM rw WHERE false RETURNING 1) "
    "SELECT inet_server_port() FROM a",
    "SELECT inet_server_port(), nextval('rw_seq')",
    "SELECT inet_server_port(), setval('rw_seq', 10)",
    "SELECT inet_server_port(), pg_advisory_xact_lock(7)",
    "SELECT inet_server_port(), rw_writer()",
    "/* leading comment */ -- and another\n  SELECT inet_server_port() FROM rw FOR UPDATE",
    "SELECT inet_server_port() FROM rw WHERE v::text <> $$;INSERT$$ FOR UPDATE",
    "SELECT 1; INSERT INTO rw (v) VALUES (4); SELECT inet_server_port()",
    "DO $$ BEGIN PERFORM 1; END $$; SELECT inet_server_port()",
    "CALL rw_proc(); SELECT inet_server_port()",
    "EXPLAIN ANALYZE INSERT INTO rw (v) VALUES (5); SELECT inet_server_port()",
    "NOTIFY rw_channel; SELECT inet_server_port()",
    "/* dbbalancer:primary */ SELECT inet_server_port()",
]


@pytest.mark.parametrize("sql", TRICKY)
def test_tricky_reads_go_to_the_primary(
    split: BalancerThread, pg_cluster: PgCluster, sql: str
) -> None:
    with psycopg.connect(dsn(split), autocommit=True) as conn:
        assert port_of(conn, sql) == pg_cluster.primary.port


def test_transactions_go_to_the_primary_and_read_only_ones_to_a_replica(
    split: BalancerThread, pg_cluster: PgCluster
) -> None:
    replicas = {node.port for node in pg_cluster.replicas}
    with psycopg.connect(dsn(split)) as conn:
        ports = {port_of(conn, "SELECT inet_server_port()") for _ in range(3)}
        conn.commit()
        assert ports == {pg_cluster.primary.port}
        conn.read_only = True
        ports = {port_of(conn, "SELECT inet_server_port()") for _ in range(3)}
        conn.commit()
        assert len(ports) == 1
        assert ports <= replicas
    with psycopg.connect(dsn(split), autocommit=True) as conn:
        with conn.transaction():
            conn.execute("LOCK TABLE rw IN SHARE MODE")
            assert port_of(conn, "SELECT inet_server_port()") == pg_cluster.primary.port
        with conn.cursor() as cur, cur.copy("COPY rw (v) FROM STDIN") as copy:
            copy.write_row((6,))
        copied = conn.execute("SELECT count(*) FROM rw WHERE v = 6").fetchone()
        assert copied is not None


def test_replica_hint_and_immutable_functions(split: BalancerThread, pg_cluster: PgCluster) -> None:
    replicas = {node.port for node in pg_cluster.replicas}
    with psycopg.connect(dsn(split), autocommit=True) as conn:
        assert port_of(conn, "/* dbbalancer:replica */ SELECT inet_server_port()") in replicas
        assert port_of(conn, "SELECT inet_server_port(), upper('a'), abs(-1)") in replicas
        # A replica hint never moves a write.
        hinted = "/* dbbalancer:replica */ SELECT inet_server_port(), nextval('rw_seq')"
        assert port_of(conn, hinted) == pg_cluster.primary.port


# When the replica refuses: an IMMUTABLE function with constant arguments is run by the planner,
# before the RowDescription goes out; a STABLE one runs in the executor, after it.
REFUSED_WHILE = {"planning": "IMMUTABLE", "executing": "STABLE"}


@pytest.mark.parametrize("protocol", ["simple", "extended", "prepared"])
@pytest.mark.parametrize("refused", sorted(REFUSED_WHILE))
def test_read_only_refusal_is_retried_on_the_primary(
    split: BalancerThread, pg_cluster: PgCluster, refused: str, protocol: str
) -> None:
    # Mislabelled on purpose: the catalog says read, but nextval() writes. The function logs
    # where it ran, so the server logs show which servers saw each attempt.
    name = f"rw_liar_{refused}_{protocol}"
    pg_cluster.sql(
        pg_cluster.primary,
        f"CREATE SEQUENCE {name}_seq; GRANT ALL ON SEQUENCE {name}_seq TO app; "
        f"CREATE FUNCTION {name}(tag text) RETURNS bigint LANGUAGE plpgsql "
        f"{REFUSED_WHILE[refused]} AS $$ BEGIN "
        "RAISE LOG 'rw_liar % ran on port %', tag, inet_server_port(); "
        f"RETURN nextval('{name}_seq'); END $$",
    )
    wait_replayed(pg_cluster, f"SELECT to_regproc('{name}') IS NOT NULL")
    # DDL from outside the balancer: have it reload function volatility, and wait until the
    # call classifies as a read (else the test would not reach a replica at all).
    assert split.app.pg is not None
    service = split.app.pg
    split.call(lambda: service.poke_volatility("main"))
    classifier = service.classifier("main")
    deadline = time.monotonic() + 10
    while not split.call(lambda: classifier.classify(f"SELECT 1, {name}('x')").read_only):
        assert time.monotonic() < deadline, f"{name} was never classified as a read"
        time.sleep(0.05)

    def call(conn: psycopg.Connection[tuple[object, ...]], tag: str) -> tuple[int, int]:
        if protocol == "simple":  # no parameters: psycopg sends a simple Query
            cur = conn.execute(f"SELECT inet_server_port(), {name}('{tag}')")
        else:
            cur = conn.execute(f"SELECT inet_server_port(), {name}(%s)", (tag,))
        row = cur.fetchone()
        assert row is not None
        return int(str(row[0])), int(str(row[1]))

    def ran_on(tag: str) -> set[int]:
        found = set()
        for node in pg_cluster.nodes:
            text = node.log_file.read_text(encoding="utf-8", errors="replace")
            if f"rw_liar {tag} ran on port {node.port}" in text:
                found.add(node.port)
        return found

    replicas = {node.port for node in pg_cluster.replicas}
    primary = pg_cluster.primary.port
    # prepared: psycopg prepares (named Parse) on the first execution; extended: unnamed.
    threshold = 0 if protocol == "prepared" else None
    with psycopg.connect(dsn(split), autocommit=True, prepare_threshold=threshold) as conn:
        first = f"a{uuid.uuid4().hex[:12]}"
        try:
            port, value = call(conn, first)
        except psycopg.Error as exc:
            pytest.fail(f"the read-only refusal reached the client: {exc!r}")
        assert port == primary
        assert value == 1  # one nextval, on the primary
        attempts = ran_on(first)
        assert attempts & replicas, "the first attempt never reached a replica"
        assert attempts == {primary} | (attempts & replicas)
        assert len(attempts & replicas) == 1, "retried on another replica"
        # Learnt as a write: the next call goes straight to the primary.
        second = f"b{uuid.uuid4().hex[:12]}"
        assert call(conn, second) == (primary, 2)
        assert ran_on(second) == {primary}


def wait_replayed(cluster: PgCluster, check: str, timeout: float = 15.0) -> None:
    """Wait until the boolean query `check` is true on every replica (DDL replayed)."""
    deadline = time.monotonic() + timeout
    for node in cluster.replicas:
        while cluster.sql(node, check) != [("t",)]:
            assert time.monotonic() < deadline, f"{node.name} did not replay: {check}"
            time.sleep(0.05)


@pytest.mark.parametrize(
    ("policy", "weights"), [("round_robin", ""), ("weighted", "3,1"), ("random", "")]
)
def test_static_balancing_policies(pg_cluster: PgCluster, policy: str, weights: str) -> None:
    # No lag limit: a replica that replays a little late must not skew the counts.
    extra = f'balance = "{policy}"\nmax_replica_lag = []'
    balancer = start(pg_cluster, extra=extra, weights=weights)
    try:
        counts = read_ports(balancer, 40)
    finally:
        balancer.stop()
    first, second = (node.port for node in pg_cluster.replicas)
    assert set(counts) <= {first, second}
    assert sum(counts.values()) == 40
    if policy == "round_robin":
        assert counts[first] == counts[second] == 20
    elif policy == "weighted":
        assert counts[first] == 30
        assert counts[second] == 10
    elif policy == "random":
        assert counts[first] > 0
        assert counts[second] > 0


def read_ports(balancer: BalancerThread, n: int) -> collections.Counter[int]:
    """Run `n` autocommit reads one after the other; count the ports that answered."""
    # prepare_threshold=None: psycopg's automatic Parse+Sync would be a unit of its own.
    with psycopg.connect(dsn(balancer), autocommit=True, prepare_threshold=None) as conn:
        return collections.Counter(port_of(conn, "SELECT inet_server_port()") for _ in range(n))


def runtime_of(balancer: BalancerThread):  # type: ignore[no-untyped-def]
    assert balancer.app.pg is not None
    cluster = balancer.app.pg.cluster("main")
    assert cluster is not None
    return cluster.runtime


def test_least_connections_avoids_the_replica_with_busy_connections(
    pg_cluster: PgCluster,
) -> None:
    busy, idle = pg_cluster.replicas
    balancer = start(pg_cluster, extra='balance = "least_connections"\nmax_replica_lag = []')
    monitor = runtime_of(balancer).monitor
    held: list[psycopg.Connection[tuple[object, ...]]] = []
    try:
        # Three read-only transactions left open on `busy` hold three of its connections (the
        # other replica is banned meanwhile so that they all land there).
        balancer.call(lambda: monitor.ban(idle.name))
        for _ in range(3):
            conn = psycopg.connect(dsn(balancer), prepare_threshold=None)
            held.append(conn)
            conn.read_only = True
            assert port_of(conn, "SELECT inet_server_port()") == busy.port
        balancer.call(lambda: monitor.unban(idle.name))
        deadline = time.monotonic() + 10
        while idle.name not in split_replicas(balancer):
            assert time.monotonic() < deadline, "the unbanned replica did not come back"
            time.sleep(0.05)
        counts = read_ports(balancer, 20)
    finally:
        for conn in held:
            conn.close()
        balancer.stop()
    assert counts == {idle.port: 20}


def test_least_latency_avoids_the_slow_replica(pg_cluster: PgCluster) -> None:
    slow, fast = pg_cluster.replicas
    # Every answer from `slow` is held 50 ms by a relay on loopback: probes and queries alike.
    with DelayProxy((slow.host, slow.port), delay=0.05) as relay:
        balancer = start(
            pg_cluster,
            extra='balance = "least_latency"\nmax_replica_lag = []',
            addresses={slow.name: relay.address()},
        )
        try:
            read_ports(balancer, 10)  # measure both
            counts = read_ports(balancer, 30)
        finally:
            balancer.stop()
    assert set(counts) <= {slow.port, fast.port}
    # Round robin would send it 15 of the 30.
    assert counts[slow.port] <= 3, counts


def test_least_load_avoids_the_busy_replica(pg_cluster: PgCluster) -> None:
    busy, idle = pg_cluster.replicas
    balancer = start(pg_cluster, extra='balance = "least_load"\nmax_replica_lag = []')
    monitor = runtime_of(balancer).monitor
    sleepers = [psycopg.connect(pg_cluster.dsn(busy), autocommit=True) for _ in range(3)]
    threads: list[threading.Thread] = []
    try:
        # Three statements running on `busy`, outside the balancer: the probe counts them.
        for conn in sleepers:
            thread = threading.Thread(target=_sleep_until_cancelled, args=(conn,))
            thread.start()
            threads.append(thread)
        deadline = time.monotonic() + 10
        while (balancer.call(lambda: monitor.server_status(busy.name).load) or 0) < 3:
            assert time.monotonic() < deadline, "the probe never saw the busy replica's load"
            time.sleep(0.05)
        counts = read_ports(balancer, 20)
    finally:
        for conn in sleepers:
            conn.cancel_safe()
        for thread in threads:
            thread.join(15)
        for conn in sleepers:
            conn.close()
        balancer.stop()
    assert counts == {idle.port: 20}


def _sleep_until_cancelled(conn: psycopg.Connection[tuple[object, ...]]) -> None:
    with contextlib.suppress(psycopg.errors.QueryCanceled):
        conn.execute("SELECT pg_sleep(30)")


def test_replica_fallback_error_and_primary(pg_cluster_factory: object) -> None:
    from collections.abc import Callable

    assert callable(pg_cluster_factory)
    make: Callable[..., PgCluster] = pg_cluster_factory
    cluster = make(replicas=1)
    for fallback, expect_error in (("primary", False), ("error", True)):
        balancer = start(cluster, extra=f'replica_fallback = "{fallback}"')
        try:
            cluster.stop_node(cluster.replicas[0], mode="immediate")
            deadline = time.monotonic() + 10
            while split_replicas(balancer) and time.monotonic() < deadline:
                time.sleep(0.05)
            with psycopg.connect(dsn(balancer), autocommit=True) as conn:
                if expect_error:
                    with pytest.raises(psycopg.OperationalError, match="no replica"):
                        conn.execute("SELECT inet_server_port()")
                else:
                    assert port_of(conn, "SELECT inet_server_port()") == cluster.primary.port
        finally:
            balancer.stop()
            cluster.start_node(cluster.replicas[0])


def split_replicas(balancer: BalancerThread) -> list[str]:
    def names() -> list[str]:
        assert balancer.app.pg is not None
        runtime = balancer.app.pg.cluster("main")
        assert runtime is not None
        return [s.name for s in runtime.runtime.eligible_replicas()]

    return balancer.call(names)


@pytest.fixture(scope="module")
def delayed() -> Iterator[PgCluster]:
    """A primary and one replica that applies every commit 2 s late, with a table `ryw`."""
    cluster = PgCluster(replicas=1, replica_apply_delay={0: "2s"})
    try:
        cluster.start()
        cluster.sql(
            cluster.primary, "CREATE TABLE ryw (id int PRIMARY KEY); GRANT ALL ON ryw TO app"
        )
        wait_replayed(cluster, "SELECT to_regclass('ryw') IS NOT NULL")
        yield cluster
    finally:
        cluster.stop()


def test_lagging_replica_is_skipped(delayed: PgCluster) -> None:
    replica = delayed.replicas[0]
    balancer = start(delayed, extra='max_replica_lag = "500ms"')
    try:
        with psycopg.connect(dsn(balancer), autocommit=True) as conn:
            assert port_of(conn, "SELECT inet_server_port()") == replica.port
            conn.execute("INSERT INTO ryw VALUES (-1)")
            # The probes see the replica fall behind by more than the limit.
            deadline = time.monotonic() + 10
            while split_replicas(balancer):
                assert time.monotonic() < deadline, "the lagging replica stayed eligible"
                time.sleep(0.05)
            ports = {port_of(conn, "SELECT inet_server_port()") for _ in range(10)}
            assert ports == {delayed.primary.port}
    finally:
        balancer.stop()


@pytest.mark.parametrize("ryw", [True, False])
def test_read_your_writes_with_a_delayed_replica(delayed: PgCluster, ryw: bool) -> None:
    """No lag limit: the replica that replays 2 s late stays eligible for reads, so only
    read-your-writes keeps a client's read after its own write off that replica."""
    replica = delayed.replicas[0]
    setting = "true" if ryw else "false"
    balancer = start(delayed, extra=f"max_replica_lag = []\nread_your_writes = {setting}")
    base = 1000 if ryw else 2000
    stale: list[int] = []
    try:
        with psycopg.connect(dsn(balancer), autocommit=True, prepare_threshold=None) as conn:
            # Before any write, reads go to the delayed replica.
            assert port_of(conn, "SELECT inet_server_port()") == replica.port
            for i in range(base, base + (40 if ryw else 10)):
                conn.execute("INSERT INTO ryw VALUES (%s)", (i,))
                row = conn.execute("SELECT count(*) FROM ryw WHERE id = %s", (i,)).fetchone()
                if row != (1,):
                    stale.append(i)
                    if not ryw:
                        break
                # The delayed replica is eligible all along: nothing but read-your-writes
                # stands between the read and stale data.
                assert split_replicas(balancer) == [replica.name]
    finally:
        balancer.stop()
    if ryw:
        assert stale == [], f"own writes not visible: {stale[:5]}"
    else:
        # Without it the same reads do see stale data: the test above is not vacuous.
        assert stale, "the delayed replica never served a stale read"


def test_cancel_stops_pg_sleep_on_a_replica(split: BalancerThread, pg_cluster: PgCluster) -> None:
    tag = f"c{uuid.uuid4().hex[:12]}"
    with psycopg.connect(dsn(split), autocommit=True) as conn:
        outcome: list[BaseException | None] = []
        sleeper = threading.Thread(
            target=_run, args=(conn, f"SELECT pg_sleep(20) /* {tag} */", outcome)
        )
        sleeper.start()
        try:
            node, _ = running(pg_cluster, tag)
            assert node in pg_cluster.replicas
            conn.cancel_safe()
        finally:
            sleeper.join(15)  # hang guard
        assert not sleeper.is_alive(), "pg_sleep was not cancelled"
        assert isinstance(outcome[0], psycopg.errors.QueryCanceled), outcome
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_cancel_from_an_idle_client_never_hits_another_clients_statement(
    pg_cluster: PgCluster,
) -> None:
    """Transaction pooling with splitting: two clients take turns on one replica connection;
    a cancel from the one with nothing running must not stop the other's statement there."""
    target, other = pg_cluster.replicas
    text = config_text(pg_cluster, extra="max_replica_lag = []").replace(
        "pool_size = 8", "pool_size = 1"
    )
    balancer = BalancerThread(parse_config(text)).start()
    monitor = runtime_of(balancer).monitor
    tag = f"i{uuid.uuid4().hex[:12]}"
    try:
        balancer.call(lambda: monitor.ban(other.name))  # every read to `target`'s connection
        with (
            psycopg.connect(dsn(balancer), autocommit=True) as idle,
            psycopg.connect(dsn(balancer), autocommit=True) as busy,
        ):
            row = idle.execute("SELECT pg_backend_pid(), inet_server_port()").fetchone()
            assert row is not None
            idle_pid, port = int(str(row[0])), int(str(row[1]))
            assert port == target.port
            outcome: list[BaseException | None] = []
            sleeper = threading.Thread(
                target=_run, args=(busy, f"SELECT pg_sleep(20) /* {tag} */", outcome)
            )
            sleeper.start()
            try:
                node, pid = running(pg_cluster, tag)
                # The busy client runs on the very backend the idle client used last.
                assert (node, pid) == (target, idle_pid)
                idle.cancel_safe()  # returns once the balancer has handled the request
                time.sleep(0.5)
                assert sleeper.is_alive()
                assert running(pg_cluster, tag) == (target, pid), "the other statement stopped"
                busy.cancel_safe()
            finally:
                sleeper.join(15)  # hang guard
            assert not sleeper.is_alive()
            assert isinstance(outcome[0], psycopg.errors.QueryCanceled), outcome
            assert idle.execute("SELECT 1").fetchone() == (1,)
    finally:
        balancer.stop()


def _run(
    conn: psycopg.Connection[tuple[object, ...]], sql: str, outcome: list[BaseException | None]
) -> None:
    try:
        conn.execute(sql)
    except BaseException as exc:
        outcome.append(exc)
    else:
        outcome.append(None)


def running(cluster: PgCluster, tag: str, timeout: float = 10.0) -> tuple[PgNode, int]:
    """The node and backend pid running the statement that contains `tag` (waits for it)."""
    deadline = time.monotonic() + timeout
    while True:
        for node in cluster.nodes:
            rows = cluster.sql(
                node,
                "SELECT pid FROM pg_stat_activity WHERE state = 'active' "
                f"AND pid <> pg_backend_pid() AND query LIKE '%{tag}%'",
            )
            if rows:
                return node, int(str(rows[0][0]))
        assert time.monotonic() < deadline, f"no server runs the statement {tag}"
        time.sleep(0.05)


def test_pipeline_with_a_write_after_a_read_runs_on_the_primary(
    split: BalancerThread, pg_cluster: PgCluster
) -> None:
    with psycopg.connect(dsn(split), autocommit=True) as conn:
        for _ in range(5):
            with conn.pipeline():
                read = conn.execute("SELECT inet_server_port(), %s::int", (1,))
                conn.execute("INSERT INTO rw (v) VALUES (%s)", (7,))
                write_port = conn.execute(
                    "SELECT inet_server_port() FROM rw FOR UPDATE LIMIT %s", (1,)
                )
            assert read.fetchone() is not None
            row = write_port.fetchone()
            assert row is not None
            assert int(str(row[0])) == pg_cluster.primary.port
        # executemany pipelines Parse/Bind/Execute for every row before one Sync.
        with conn.cursor() as cur:
            cur.executemany("INSERT INTO rw (v) VALUES (%s)", [(8,), (9,), (10,)])


def test_session_pooling_with_split_reports_a_lost_session_connection(
    pg_cluster: PgCluster,
) -> None:
    balancer = start(pg_cluster, mode="session")
    try:
        conn = psycopg.connect(dsn(balancer), autocommit=True)
        # Reads go to replicas; the session's own primary connection sits idle meanwhile.
        on_primary = "SELECT pg_backend_pid(), pg_advisory_xact_lock(99)"
        pid_row = conn.execute(on_primary).fetchone()
        assert pid_row is not None
        assert port_of(conn, "SELECT inet_server_port()") != pg_cluster.primary.port
        pg_cluster.sql(pg_cluster.primary, f"SELECT pg_terminate_backend({pid_row[0]})")
        time.sleep(0.3)
        with pytest.raises(psycopg.OperationalError):
            conn.execute(on_primary)
        conn.close()
        with psycopg.connect(dsn(balancer), autocommit=True) as fresh:
            assert port_of(fresh, "SELECT inet_server_port(), pg_advisory_xact_lock(99)") == (
                pg_cluster.primary.port
            )
    finally:
        balancer.stop()
