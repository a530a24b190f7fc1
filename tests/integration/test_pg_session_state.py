"""Session state under transaction pooling, compared with a direct connection: settings replayed
after the connection changed hands, and currval()/lastval() never answered from another client's
sequence state (issues #10 and #13)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import psycopg
import pytest
from psycopg.conninfo import make_conninfo

from dbbalancer.config import parse_config
from dbbalancer.testing.balancer import BalancerThread
from dbbalancer.testing.configs import cluster_config
from dbbalancer.testing.pgcluster import PgCluster

SETUP = """
DROP SCHEMA IF EXISTS ss_app CASCADE;
DROP SCHEMA IF EXISTS "Odd, ""q"" x" CASCADE;
CREATE SCHEMA ss_app AUTHORIZATION app;
CREATE SCHEMA "Odd, ""q"" x" AUTHORIZATION app;
CREATE TABLE ss_app.only_here (x int);
ALTER TABLE ss_app.only_here OWNER TO app;
DROP TABLE IF EXISTS ss_ids;
CREATE TABLE ss_ids (id serial PRIMARY KEY, v int);
ALTER TABLE ss_ids OWNER TO app;
"""

# Each SET, then what SHOW must print: whatever a direct connection prints after the same SET.
SETTINGS = [
    ("search_path", "SET search_path = ss_app, public"),
    ("search_path", 'SET search_path TO "Odd, ""q"" x", ss_app'),
    ("search_path", "SET search_path = 'ss_app, public'"),
    ("search_path", "SELECT set_config('search_path', 'ss_app, public', false)"),
    ("DateStyle", "SET DateStyle = ISO, DMY"),
    ("DateStyle", "SET datestyle TO 'SQL, MDY'"),
    ("TimeZone", "SET TIME ZONE 'Europe/Paris'"),
    ("temp_tablespaces", "SET temp_tablespaces = pg_default, pg_default"),
    ("application_name", "SET application_name = 'it''s \\ here'"),
    ("statement_timeout", "SET statement_timeout = '2min'"),
    ("search_path", "SET search_path = DEFAULT"),
]


@pytest.fixture(scope="module")
def prepared(pg_cluster: PgCluster) -> PgCluster:
    pg_cluster.sql(pg_cluster.primary, SETUP)
    pg_cluster.wait_streaming()
    return pg_cluster


def start(cluster: PgCluster, *, pool_size: int, split: bool) -> BalancerThread:
    text = cluster_config(
        cluster,
        mode="transaction",
        pool_size=pool_size,
        split=split,
        extra='query_wait_timeout = "30s"\nread_your_writes = true',
    )
    return BalancerThread(parse_config(text)).start()


@pytest.fixture(scope="module", params=[False, True], ids=["no-split", "split"])
def one_conn(prepared: PgCluster, request: pytest.FixtureRequest) -> Iterator[BalancerThread]:
    """pool_size = 1: two clients provably share one primary connection."""
    balancer = start(prepared, pool_size=1, split=bool(request.param))
    try:
        yield balancer
    finally:
        balancer.stop()


def dsn(balancer: BalancerThread, **extra: str) -> str:
    host, port = balancer.pg_address
    return make_conninfo(
        host=host, port=str(port), user="app", password="app", dbname="main", **extra
    )


def direct_dsn(cluster: PgCluster, **extra: str) -> str:
    return make_conninfo(cluster.dsn(cluster.primary), **extra)


def show(conn: psycopg.Connection, name: str) -> str:
    row = conn.execute(f"SELECT current_setting('{name}')").fetchone()
    assert row is not None
    return str(row[0])


def _resolves(conn: psycopg.Connection) -> bool:
    row = conn.execute("SELECT to_regclass('only_here') IS NOT NULL").fetchone()
    return bool(row and row[0])


def pid(conn: psycopg.Connection) -> int:
    row = conn.execute("/* dbbalancer: primary */ SELECT pg_backend_pid()").fetchone()
    assert row is not None
    return int(row[0])


@pytest.mark.parametrize(("name", "statement"), SETTINGS)
def test_a_setting_survives_the_connection_changing_hands(
    prepared: PgCluster, one_conn: BalancerThread, name: str, statement: str
) -> None:
    with psycopg.connect(direct_dsn(prepared), autocommit=True) as direct:
        direct.execute(statement)
        want = show(direct, name)
        resolves = _resolves(direct)
    with (
        psycopg.connect(dsn(one_conn), autocommit=True) as a,
        psycopg.connect(dsn(one_conn, options="-c DateStyle=German"), autocommit=True) as b,
    ):
        a.execute(statement)
        backend = pid(a)
        # b takes the only connection and changes it to its own settings ...
        b.execute("SET search_path = public; SET TimeZone = 'UTC'; SET statement_timeout = 0")
        assert pid(b) == backend
        # ... so a only sees its own session again if its settings are replayed exactly.
        assert show(a, name) == want
        assert pid(a) == backend
        assert _resolves(a) == resolves  # and names resolve as they do directly


def test_a_list_valued_startup_option_is_replayed_as_the_server_parses_it(
    prepared: PgCluster, one_conn: BalancerThread
) -> None:
    options = "-c search_path=ss_app,public"
    with psycopg.connect(direct_dsn(prepared, options=options), autocommit=True) as direct:
        want = show(direct, "search_path")
    with (
        psycopg.connect(dsn(one_conn, options=options), autocommit=True) as a,
        psycopg.connect(dsn(one_conn), autocommit=True) as b,
    ):
        b.execute("SET search_path = public")
        assert show(a, "search_path") == want
        a.execute("SELECT count(*) FROM only_here")


def test_a_setting_kept_past_a_savepoint_rollback_is_what_the_server_kept(
    prepared: PgCluster, one_conn: BalancerThread
) -> None:
    script = [
        "BEGIN",
        "SET search_path = ss_app, public",
        "SAVEPOINT s",
        "SET DateStyle = 'SQL, DMY'",
        "ROLLBACK TO SAVEPOINT s",
        "COMMIT",
    ]
    with psycopg.connect(direct_dsn(prepared), autocommit=True) as direct:
        for sql in script:
            direct.execute(sql)
        want = (show(direct, "search_path"), show(direct, "DateStyle"))
    with (
        psycopg.connect(dsn(one_conn), autocommit=True) as a,
        psycopg.connect(dsn(one_conn), autocommit=True) as b,
    ):
        for sql in script:
            a.execute(sql)
        b.execute("SET search_path = public; SET DateStyle = 'ISO, MDY'")
        assert (show(a, "search_path"), show(a, "DateStyle")) == want


def test_currval_after_another_clients_nextval_is_refused_not_answered(
    prepared: PgCluster, one_conn: BalancerThread
) -> None:
    with (
        psycopg.connect(dsn(one_conn), autocommit=True) as a,
        psycopg.connect(dsn(one_conn), autocommit=True) as b,
    ):
        a.execute("INSERT INTO ss_ids (v) VALUES (1)")
        b.execute("INSERT INTO ss_ids (v) VALUES (2)")  # same connection: its sequence now b's
        for sql in ("SELECT currval('ss_ids_id_seq')", "SELECT lastval()"):
            with pytest.raises(psycopg.errors.ObjectNotInPrerequisiteState) as caught:
                a.execute(sql)
            assert "RETURNING" in (caught.value.diag.message_hint or "")
        # Its own sequence state is still its own.
        row = b.execute("SELECT currval('ss_ids_id_seq') = max(id) FROM ss_ids").fetchone()
        assert row == (True,)


def test_currval_before_any_nextval_fails_as_on_a_direct_connection(
    prepared: PgCluster, one_conn: BalancerThread
) -> None:
    with psycopg.connect(dsn(one_conn), autocommit=True) as other:
        other.execute("INSERT INTO ss_ids (v) VALUES (3)")  # leaves its state on the connection
    with (
        psycopg.connect(direct_dsn(prepared), autocommit=True) as direct,
        pytest.raises(psycopg.Error) as want,
    ):
        direct.execute("SELECT lastval()")
    with (
        psycopg.connect(dsn(one_conn), autocommit=True) as fresh,
        pytest.raises(psycopg.Error) as got,
    ):
        fresh.execute("SELECT lastval()")
    assert got.value.sqlstate == want.value.sqlstate == "55000"
    assert str(got.value) == str(want.value)


@pytest.mark.parametrize("prepare_threshold", [None, 0], ids=["simple", "extended"])
def test_currval_is_the_clients_own_id_while_others_insert(
    prepared: PgCluster, prepare_threshold: int | None
) -> None:
    # More connections than clients, as a pool is sized: the client's own connection is then
    # usually still untouched when it asks (a saturated pool gives it away, and it is refused).
    balancer = start(prepared, pool_size=8, split=True)
    stop = threading.Event()
    errors: list[BaseException] = []

    def insert_forever(value: int) -> None:
        deadline = time.monotonic() + 60
        try:
            with psycopg.connect(dsn(balancer), autocommit=True) as conn:
                while not stop.is_set() and time.monotonic() < deadline:
                    conn.execute("INSERT INTO ss_ids (v) VALUES (%s)", (value,))
        except BaseException as exc:  # pragma: no cover - shown below
            errors.append(exc)

    workers = [threading.Thread(target=insert_forever, args=(100 + i,)) for i in range(5)]
    for worker in workers:
        worker.start()
    answered = refused = 0
    try:
        with psycopg.connect(
            dsn(balancer), autocommit=True, prepare_threshold=prepare_threshold
        ) as conn:
            for _ in range(20):
                row = conn.execute("INSERT INTO ss_ids (v) VALUES (7) RETURNING id").fetchone()
                assert row is not None
                own = row[0]
                for sql in ("SELECT currval('ss_ids_id_seq')", "SELECT lastval()"):
                    try:
                        got = conn.execute(sql).fetchone()
                    except psycopg.errors.ObjectNotInPrerequisiteState:
                        refused += 1
                        continue
                    assert got == (own,), f"{sql} answered another client's id"
                    answered += 1
    finally:
        stop.set()
        for worker in workers:
            worker.join(30)
        balancer.stop()
    assert not errors
    # Refusing is allowed; but the client goes back to its own connection while nobody else
    # has used it, so most answers are real ones.
    assert answered > refused


def test_a_refusal_inside_a_transaction_aborts_it_as_the_real_error_would(
    prepared: PgCluster, one_conn: BalancerThread
) -> None:
    with (
        psycopg.connect(dsn(one_conn), autocommit=True) as a,
        psycopg.connect(dsn(one_conn), autocommit=True) as b,
    ):
        a.execute("INSERT INTO ss_ids (v) VALUES (1)")
        b.execute("INSERT INTO ss_ids (v) VALUES (2)")
        a.execute("BEGIN")
        with pytest.raises(psycopg.errors.ObjectNotInPrerequisiteState):
            a.execute("SELECT currval('ss_ids_id_seq')")
        with pytest.raises(psycopg.errors.InFailedSqlTransaction):
            a.execute("SELECT 1")
        a.execute("ROLLBACK")
        assert a.execute("SELECT 1").fetchone() == (1,)


@pytest.mark.parametrize("prepare_threshold", [None, 0], ids=["simple", "extended"])
def test_a_first_write_on_a_used_connection_does_not_inherit_its_sequence_state(
    prepared: PgCluster, one_conn: BalancerThread, prepare_threshold: int | None
) -> None:
    with psycopg.connect(dsn(one_conn), autocommit=True) as other:
        other.execute("INSERT INTO ss_ids (v) VALUES (3)")  # leaves lastval() on the connection
    with psycopg.connect(
        dsn(one_conn), autocommit=True, prepare_threshold=prepare_threshold
    ) as fresh:
        fresh.execute("UPDATE ss_ids SET v = v WHERE false")  # a write that calls no nextval()
        with pytest.raises(psycopg.errors.ObjectNotInPrerequisiteState) as caught:
            fresh.execute("SELECT lastval()")
        # What a new session says, not the other client's id.
        assert "not yet defined" in str(caught.value)
