"""Read/write splitting against a real primary and two streaming replicas."""

from __future__ import annotations

import collections
import time
from collections.abc import Iterator

import psycopg
import pytest
from psycopg.conninfo import make_conninfo

from dbbalancer.config import parse_config
from dbbalancer.testing.balancer import BalancerThread
from dbbalancer.testing.configs import cluster_config
from dbbalancer.testing.pgcluster import PgCluster


def config_text(
    cluster: PgCluster, *, mode: str = "transaction", extra: str = "", weights: str = ""
) -> str:
    names = [n.name for n in cluster.replicas]
    weight_of = dict(zip(names, map(int, weights.split(",")), strict=False)) if weights else {}
    return cluster_config(
        cluster,
        mode=mode,
        pool_size=8,
        split=True,
        weights=weight_of,
        extra='health_check_interval = "200ms"\n' + extra,
    )


def start(cluster: PgCluster, **kwargs: str) -> BalancerThread:
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


def test_read_only_refusal_is_retried_on_the_primary(
    split: BalancerThread, pg_cluster: PgCluster
) -> None:
    # Mislabelled as IMMUTABLE: the catalog says read, but nextval() writes.
    pg_cluster.sql(
        pg_cluster.primary,
        "CREATE OR REPLACE FUNCTION rw_liar() RETURNS bigint LANGUAGE plpgsql IMMUTABLE "
        "AS $$ BEGIN RETURN nextval('rw_seq'); END $$",
    )
    pg_cluster.wait_streaming()
    deadline = time.monotonic() + 10
    with psycopg.connect(dsn(split), autocommit=True) as conn:
        # Wait until the catalog reload has seen the function (DDL from outside the balancer).
        while True:
            port = port_of(conn, "/* probe */ SELECT inet_server_port(), lower('rw_liar')")
            assert port
            try:
                row = conn.execute("SELECT inet_server_port(), rw_liar()").fetchone()
            except psycopg.Error as exc:  # pragma: no cover - shown if the retry is broken
                pytest.fail(f"the read-only refusal reached the client: {exc}")
            assert row is not None
            assert int(str(row[0])) == pg_cluster.primary.port
            if time.monotonic() > deadline:
                break
            if split.call(lambda: _learnt(split, "rw_liar")):
                break
            time.sleep(0.2)
        # Learnt as a write: it now goes straight to the primary.
        row = conn.execute("SELECT inet_server_port(), rw_liar()").fetchone()
        assert row is not None
        assert int(str(row[0])) == pg_cluster.primary.port


def _learnt(balancer: BalancerThread, function: str) -> bool:
    assert balancer.app.pg is not None
    classifier = balancer.app.pg.classifier("main")
    return classifier.classify(f"SELECT 1, {function}()").read_only is False


@pytest.mark.parametrize(
    ("policy", "weights"),
    [
        ("round_robin", ""),
        ("weighted", "3,1"),
        ("random", ""),
        ("least_connections", ""),
        ("least_latency", ""),
        ("least_load", ""),
    ],
)
def test_balancing_policies(pg_cluster: PgCluster, policy: str, weights: str) -> None:
    # No lag limit: a replica that replays a little late must not skew the counts.
    extra = f'balance = "{policy}"\nmax_replica_lag = []'
    balancer = start(pg_cluster, extra=extra, weights=weights)
    try:
        # prepare_threshold=None: psycopg's automatic Parse+Sync would be a unit of its own.
        with psycopg.connect(dsn(balancer), autocommit=True, prepare_threshold=None) as conn:
            counts = collections.Counter(
                port_of(conn, "SELECT inet_server_port()") for _ in range(40)
            )
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


def test_lagging_replica_is_skipped_and_read_your_writes(pg_cluster_factory: object) -> None:
    from collections.abc import Callable

    assert callable(pg_cluster_factory)
    make: Callable[..., PgCluster] = pg_cluster_factory
    cluster = make(replicas=2, replica_apply_delay={1: "3s"})
    delayed = cluster.replicas[1]
    cluster.sql(cluster.primary, "CREATE TABLE ryw (id int PRIMARY KEY); GRANT ALL ON ryw TO app")
    time.sleep(3.5)  # let the delayed replica replay the table
    balancer = start(cluster, extra='max_replica_lag = "500ms"\nread_your_writes = true')
    try:
        with psycopg.connect(dsn(balancer), autocommit=True) as conn:
            conn.execute("INSERT INTO ryw VALUES (0)")
            time.sleep(1.0)  # two probe rounds: the delayed replica now shows its lag
            ports = [port_of(conn, "SELECT inet_server_port()") for _ in range(20)]
            assert delayed.port not in ports
            # Read-your-writes: every insert is visible to the next read, whatever the lag.
            for i in range(1, 201):
                conn.execute("INSERT INTO ryw VALUES (%s)", (i,))
                row = conn.execute("SELECT count(*) FROM ryw WHERE id = %s", (i,)).fetchone()
                assert row == (1,), f"iteration {i}: own write not visible"
    finally:
        balancer.stop()


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
