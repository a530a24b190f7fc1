"""Session state that pins a client to its server connection, one kind at a time, under contention.

Each pin kind (temp table, advisory lock, LISTEN, WITH HOLD cursor, SQL PREPARE, SET SESSION
AUTHORIZATION, LOAD) runs alone, through the simple protocol and through the extended protocol
(psycopg ``prepare_threshold=0``: every statement is a named Parse/Bind/Execute), and is checked
these ways:

* contention (``pool_size = 2``): while the client is pinned, a second client in an open
  transaction gets provably another server connection (its ``pg_backend_pid()`` differs), and
  the pinned client still finds its state on its own connection. The pool hands out its warmest
  idle connection (LIFO), so a pin that does not hold gives the second client the same backend;
* the unpin: after the releasing statement (DISCARD TEMP, pg_advisory_unlock_all(), UNLISTEN *,
  CLOSE ALL, DEALLOCATE ALL, RESET SESSION AUTHORIZATION, DISCARD ALL) the state is gone and the
  still-connected client lets go of its connection: a third client gets that very backend.
  Pin and unpin run twice, so that the extended protocol runs them the second time by Bind alone;
* a failed unpin (refused in an aborted transaction) releases nothing: the pin still holds;
* no leak (``pool_size = 1``): a pinned client disconnects while the next client waits for the
  only connection; the next client gets provably the same backend and finds nothing left over.

Every test starts its own balancer, so that what one test leaves behind on a pooled connection
cannot fail or pass another.

And with ``read_write_split = true``, a pinned client's later write succeeds (issue #10).

SET SESSION AUTHORIZATION needs a superuser session user and LOAD of a library outside
``$libdir/plugins`` needs a superuser; the cluster's ``app`` login is neither, so those two kinds
log in as ``pin_super`` (a superuser role this module creates) and switch to ``pin_target``; "back
to the login user" then means back to ``pin_super``.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import psycopg
import pytest

from dbbalancer.config import parse_config
from dbbalancer.testing.balancer import BalancerThread
from dbbalancer.testing.configs import cluster_config
from dbbalancer.testing.pgcluster import PgCluster

Conn = psycopg.Connection[tuple[Any, ...]]

SUPER = "pin_super"
TARGET = "pin_target"
HANG_GUARD = 20.0  # seconds; only ever reached when something is broken


@dataclass(frozen=True)
class PinCase:
    """One kind of session state: how to take it, see it, release it."""

    name: str
    pin: str
    unpin: str
    holds: Callable[[Conn, PgCluster], None]  # the state is there, on the pinned client
    elsewhere: Callable[[Conn], None] | None  # another backend does not see it
    user: str = "app"
    more: tuple[str, ...] = ()  # extra state taken in the leak check (not pins)


def one(conn: Conn, sql: str) -> Any:
    row = conn.execute(sql).fetchone()
    assert row is not None
    return row[0]


def backend_pid(conn: Conn) -> int:
    return int(one(conn, "SELECT pg_backend_pid()"))


# -- the pin kinds ------------------------------------------------------------------------------


def temp_holds(conn: Conn, cluster: PgCluster) -> None:
    assert one(conn, "SELECT count(*) FROM pin_tt") == 1


def temp_elsewhere(conn: Conn) -> None:
    assert one(conn, "SELECT to_regclass('pg_temp.pin_tt')") is None


def lock_holds(conn: Conn, cluster: PgCluster) -> None:
    held = one(
        conn,
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objid = 7001 "
        "AND pid = pg_backend_pid() AND granted",
    )
    assert held == 1


def lock_elsewhere(conn: Conn) -> None:
    # Advisory locks are re-entrant within one backend: only another backend is refused.
    assert one(conn, "SELECT pg_try_advisory_xact_lock(7001)") is False


def listen_holds(conn: Conn, cluster: PgCluster) -> None:
    assert one(conn, "SELECT array_agg(c) FROM pg_listening_channels() AS c") == ["pin_chan"]
    payload = uuid.uuid4().hex
    with psycopg.connect(cluster.dsn(cluster.primary), autocommit=True) as notifier:
        notifier.execute(f"NOTIFY pin_chan, '{payload}'")
    for note in conn.notifies(timeout=10):
        if note.channel == "pin_chan" and note.payload == payload:
            return
    pytest.fail("the NOTIFY did not reach the listening client")


def listen_elsewhere(conn: Conn) -> None:
    assert one(conn, "SELECT count(*) FROM pg_listening_channels()") == 0


def cursor_holds(conn: Conn, cluster: PgCluster) -> None:
    assert one(conn, "FETCH ABSOLUTE 2 FROM pin_cur") == 2


def cursor_elsewhere(conn: Conn) -> None:
    assert one(conn, "SELECT count(*) FROM pg_cursors WHERE name = 'pin_cur'") == 0


def prepare_holds(conn: Conn, cluster: PgCluster) -> None:
    assert one(conn, "EXECUTE pin_stmt(21)") == 42


def prepare_elsewhere(conn: Conn) -> None:
    assert one(conn, "SELECT count(*) FROM pg_prepared_statements WHERE from_sql") == 0


def auth_holds(conn: Conn, cluster: PgCluster) -> None:
    row = conn.execute("SELECT session_user::text, current_user::text").fetchone()
    assert row == (TARGET, TARGET)


def auth_elsewhere(conn: Conn) -> None:
    row = conn.execute("SELECT session_user::text, current_user::text").fetchone()
    assert row == (SUPER, SUPER)


def load_holds(conn: Conn, cluster: PgCluster) -> None:
    # The library's settings exist only in a backend that loaded it (or set them).
    assert one(conn, "SELECT current_setting('auto_explain.log_min_duration', true)") is not None


CASES = [
    PinCase(
        "temp_table", "CREATE TEMP TABLE pin_tt AS SELECT 1 AS x", "DISCARD TEMP",
        temp_holds, temp_elsewhere,
    ),
    PinCase(
        "advisory_lock", "SELECT pg_advisory_lock(7001)", "SELECT pg_advisory_unlock_all()",
        lock_holds, lock_elsewhere,
    ),
    PinCase("listen", "LISTEN pin_chan", "UNLISTEN *", listen_holds, listen_elsewhere),
    PinCase(
        "with_hold_cursor",
        "DECLARE pin_cur SCROLL CURSOR WITH HOLD FOR SELECT generate_series(1, 3)",
        "CLOSE ALL", cursor_holds, cursor_elsewhere,
    ),
    PinCase(
        "sql_prepare", "PREPARE pin_stmt(int) AS SELECT $1 * 2", "DEALLOCATE ALL",
        prepare_holds, prepare_elsewhere,
    ),
    PinCase(
        "session_authorization", f"SET SESSION AUTHORIZATION {TARGET}",
        "RESET SESSION AUTHORIZATION", auth_holds, auth_elsewhere, user=SUPER,
    ),
    # Another backend may have loaded auto_explain in an earlier test (a library stays loaded
    # for the backend's life), so there is no "elsewhere" check for LOAD.
    PinCase(
        "load", "LOAD 'auto_explain'", "DISCARD ALL", load_holds, None, user=SUPER,
        more=("SET auto_explain.log_min_duration = 0",),
    ),
]  # fmt: skip

PROTOCOLS = ["simple", "extended"]


def assert_clean(conn: Conn, user: str) -> None:
    """Nothing of any pin kind is left in this client's session."""
    temp = one(conn, "SELECT count(*) FROM pg_class WHERE relnamespace = pg_my_temp_schema()")
    assert temp == 0, "a temp table is left"
    locks = one(
        conn, "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()"
    )
    assert locks == 0, "an advisory lock is left"
    assert one(conn, "SELECT count(*) FROM pg_listening_channels()") == 0, "LISTEN is left"
    assert one(conn, "SELECT count(*) FROM pg_cursors WHERE name <> ''") == 0, "a cursor is left"
    prepared = one(conn, "SELECT count(*) FROM pg_prepared_statements WHERE from_sql")
    assert prepared == 0, "an SQL-level prepared statement is left"
    users = conn.execute("SELECT session_user::text, current_user::text").fetchone()
    assert users == (user, user)
    assert one(conn, "SHOW statement_timeout") == "0"
    explain = one(conn, "SELECT current_setting('auto_explain.log_min_duration', true)")
    assert explain in (None, "-1")


# -- fixtures -----------------------------------------------------------------------------------

_USERS = f"""
[[users]]
name = "{SUPER}"
password = "{SUPER}"
auth = "scram-sha-256"
"""


def _start(cluster: PgCluster, *, pool_size: int, split: bool = False) -> BalancerThread:
    text = cluster_config(
        cluster,
        mode="transaction",
        pool_size=pool_size,
        split=split,
        users=_USERS,
        extra=f'query_wait_timeout = "{HANG_GUARD:g}s"\n',
    )
    return BalancerThread(parse_config(text)).start()


@pytest.fixture(scope="module")
def pin_cluster(pg_cluster: PgCluster) -> PgCluster:
    """The session cluster with the roles and the table these tests need, on every node."""
    pg_cluster.sql(
        pg_cluster.primary,
        f"""DO $$ BEGIN
        IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{SUPER}') THEN
            CREATE ROLE {SUPER} LOGIN SUPERUSER PASSWORD '{SUPER}';
        END IF;
        IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{TARGET}') THEN
            CREATE ROLE {TARGET} NOLOGIN;
        END IF;
        END $$""",
    )
    pg_cluster.sql(pg_cluster.primary, "CREATE TABLE IF NOT EXISTS pin_writes (tag text, x int)")
    pg_cluster.sql(pg_cluster.primary, "GRANT ALL ON pin_writes TO PUBLIC")
    check = (
        f"SELECT count(*) FROM pg_roles WHERE rolname IN ('{SUPER}', '{TARGET}') "
        "AND to_regclass('public.pin_writes') IS NOT NULL"
    )
    deadline = time.monotonic() + HANG_GUARD
    for replica in pg_cluster.replicas:
        while pg_cluster.sql(replica, check) != [("2",)]:
            assert time.monotonic() < deadline, f"{replica.name} did not replay the roles"
            time.sleep(0.05)
    return pg_cluster


@pytest.fixture
def two(pin_cluster: PgCluster) -> Iterator[BalancerThread]:
    balancer = _start(pin_cluster, pool_size=2)
    try:
        yield balancer
    finally:
        balancer.stop()


@pytest.fixture
def single(pin_cluster: PgCluster) -> Iterator[BalancerThread]:
    balancer = _start(pin_cluster, pool_size=1)
    try:
        yield balancer
    finally:
        balancer.stop()


@pytest.fixture
def split(pin_cluster: PgCluster) -> Iterator[BalancerThread]:
    balancer = _start(pin_cluster, pool_size=2, split=True)
    try:
        yield balancer
    finally:
        balancer.stop()


def connect(
    balancer: BalancerThread, user: str, *, extended: bool = False, autocommit: bool = True
) -> Conn:
    """A client; `extended` prepares every statement (named Parse/Bind/Execute)."""
    host, port = balancer.pg_address
    return psycopg.connect(
        host=host,
        port=port,
        user=user,
        password=user,
        dbname="main",
        autocommit=autocommit,
        prepare_threshold=0 if extended else None,
        connect_timeout=int(HANG_GUARD),
    )


def waiting(balancer: BalancerThread, user: str) -> int:
    """Clients waiting for a connection of `user`'s pools."""

    def count() -> int:
        assert balancer.app.pg is not None
        cluster = balancer.app.pg.cluster("main")
        assert cluster is not None
        pools = cluster.runtime.pools()
        return sum(p.stats().waiting for p in pools if f"/{user}@" in p.key)

    return balancer.call(count)


def case_id(case: PinCase) -> str:
    return case.name


# -- tests --------------------------------------------------------------------------------------


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_pin_holds_under_contention_and_unpins(
    two: BalancerThread, pin_cluster: PgCluster, case: PinCase, protocol: str
) -> None:
    with connect(two, case.user, extended=protocol == "extended") as pinned:
        # Twice: the second time, the extended protocol runs the pinning and the unpinning
        # statement by Bind alone, on the names psycopg prepared the first time.
        for round_ in (1, 2):
            pinned.execute(case.pin)
            pid = backend_pid(pinned)
            case.holds(pinned, pin_cluster)
            with connect(two, case.user, autocommit=False) as other:
                # An open transaction holds the other client's connection from here on.
                assert backend_pid(other) != pid, f"round {round_}: the pinned connection moved"
                if case.elsewhere is not None:
                    case.elsewhere(other)
                assert backend_pid(pinned) == pid
                case.holds(pinned, pin_cluster)

                pinned.execute(case.unpin)
                assert_clean(pinned, case.user)
                # Unpinned, the client lets go of its connection: with the other one held, a
                # third client gets that very backend (a client still pinned would make it wait).
                with connect(two, case.user, autocommit=False) as third:
                    assert backend_pid(third) == pid, f"round {round_}: still pinned"
                    third.rollback()
                other.rollback()


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_failed_unpin_keeps_the_pin(
    two: BalancerThread, pin_cluster: PgCluster, case: PinCase, protocol: str
) -> None:
    """An unpinning statement the server refused (in an aborted transaction) releases nothing."""
    with connect(two, case.user, extended=protocol == "extended") as pinned:
        pinned.execute(case.pin)
        pid = backend_pid(pinned)
        pinned.execute("BEGIN")
        with pytest.raises(psycopg.errors.DivisionByZero):
            pinned.execute("SELECT 1 / 0")
        with pytest.raises(psycopg.errors.InFailedSqlTransaction):
            pinned.execute(case.unpin)
        # Not through psycopg: after a ROLLBACK, psycopg drops its prepared statements with a
        # DEALLOCATE ALL of its own, which would drop pin_stmt for real.
        assert pinned.pgconn.exec_(b"ROLLBACK").status == psycopg.pq.ExecStatus.COMMAND_OK
        with connect(two, case.user, autocommit=False) as other:
            assert backend_pid(other) != pid, "the pinned connection went to another client"
            assert backend_pid(pinned) == pid
            case.holds(pinned, pin_cluster)
            other.rollback()
        pinned.execute(case.unpin)
        assert_clean(pinned, case.user)


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_pinned_client_leaves_nothing_to_the_next(
    single: BalancerThread, pin_cluster: PgCluster, case: PinCase, protocol: str
) -> None:
    opened: list[Conn] = []

    def next_client() -> int:
        conn = connect(single, case.user)
        opened.append(conn)
        return backend_pid(conn)

    pinned = connect(single, case.user, extended=protocol == "extended")
    try:
        pinned.execute(case.pin)
        for sql in case.more:
            pinned.execute(sql)
        pinned.execute("SET statement_timeout = '4321ms'")
        pid = backend_pid(pinned)
        case.holds(pinned, pin_cluster)
        with ThreadPoolExecutor(1) as pool:
            future = pool.submit(next_client)
            try:
                deadline = time.monotonic() + HANG_GUARD
                while not future.done() and waiting(single, case.user) == 0:
                    assert time.monotonic() < deadline, "the next client neither ran nor waited"
                    time.sleep(0.02)
                assert not future.done(), "the next client got the connection of a pinned one"
                case.holds(pinned, pin_cluster)
            finally:
                pinned.close()  # still pinned: the connection is reset and goes to the waiter
            after_pid = future.result(timeout=HANG_GUARD)
        assert after_pid == pid, "the next client is not on the pinned client's connection"
        assert_clean(opened[0], case.user)
    finally:
        pinned.close()
        for conn in opened:
            conn.close()


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_pinned_client_writes_with_split(
    split: BalancerThread, pin_cluster: PgCluster, case: PinCase, protocol: str
) -> None:
    tag = f"{case.name}-{protocol}"
    with connect(split, case.user, extended=protocol == "extended") as conn:
        conn.execute(case.pin)
        case.holds(conn, pin_cluster)
        conn.execute(f"INSERT INTO pin_writes VALUES ('{tag}', 1)")
        case.holds(conn, pin_cluster)
        conn.execute(case.unpin)
        conn.execute(f"INSERT INTO pin_writes VALUES ('{tag}', 2)")
    rows = pin_cluster.sql(
        pin_cluster.primary, f"SELECT x FROM pin_writes WHERE tag = '{tag}' ORDER BY x"
    )
    assert rows == [("1",), ("2",)]


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_prepared_insert_executes_with_split(
    split: BalancerThread, pin_cluster: PgCluster, protocol: str
) -> None:
    """Issue #10: the PREPARE pinned the client to a replica and the EXECUTE failed (25006)."""
    tag = f"issue10-{protocol}"
    with connect(split, "app", extended=protocol == "extended") as conn:
        conn.execute(f"PREPARE ins(int) AS INSERT INTO pin_writes VALUES ('{tag}', $1)")
        conn.execute("EXECUTE ins(1)")
        conn.execute("DEALLOCATE ALL")
    rows = pin_cluster.sql(pin_cluster.primary, f"SELECT x FROM pin_writes WHERE tag = '{tag}'")
    assert rows == [("1",)]
