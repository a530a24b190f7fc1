"""Differential test: a client cannot tell dbbalancer (transaction pooling) from PostgreSQL.

Every session script (tests/data/pg_session_scripts.toml, plus sessions generated from a small
grammar with a printed seed) runs on a brand-new connection twice: directly against the primary,
then through dbbalancer in transaction pooling with a small pool, while churn clients keep the
pool busy and leave session state behind. For each statement we record what a client sees:
the command tag and rows of each result, the SQLSTATE of an error, the notices (severity and
SQLSTATE) and the notifications. Both recordings must be identical.

Matrix: a balancer without and one with read/write splitting (plus read-your-writes); psycopg 3
with the simple protocol and with ``prepare_threshold=0`` (every statement parsed under a
driver-chosen name); a few scripts also through asyncpg and SQLAlchemy on asyncpg, which
prepare every statement. Fixture objects are recreated on the primary before each run, and both
replicas must have replayed them before the script starts, so both runs see the same data.

A failing random session prints its seed; keep such seeds in REGRESSION_SEEDS below.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import socket
import sys
import threading
import time
import tomllib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import psycopg
import pytest
from psycopg import sql as pgsql
from psycopg.conninfo import make_conninfo

from dbbalancer.config import parse_config
from dbbalancer.testing.balancer import BalancerThread
from dbbalancer.testing.configs import cluster_config
from dbbalancer.testing.pgcluster import PgCluster

pytestmark = pytest.mark.timeout(90)  # hang guard only; a run takes well under a second

SCRIPTS_PATH = Path(__file__).resolve().parents[1] / "data" / "pg_session_scripts.toml"

POOL_SIZE = 2
CHURNERS = 5
CHURN_LEASE_SECONDS = 30.0  # churners stop by themselves this long after the last proxied run
CHURN_PAUSE = (0.01, 0.03)  # seconds a churner pauses between units of work
STATEMENT_GUARD_SECONDS = 10.0  # a statement still running then is cancelled (hang guard only)
QUERY_WAIT_TIMEOUT = "5s"  # generous: pool waits take milliseconds unless the pool is stuck
REPLAY_WAIT_SECONDS = 30.0
CLUSTER_NAME = "main"

# Random sessions (random_session(seed)): RANDOM_SEEDS run in every balancer/client combination,
# and so do REGRESSION_SEEDS, seeds that once diverged. A seed names a session only for the
# grammar below: whoever changes GRAMMAR or random_session re-derives these from the failures.
RANDOM_SEEDS = range(101, 113)
REGRESSION_SEEDS: list[int] = [
    3,  # pg_current_xact_id() and NOTIFY sent to a replica under read/write split (25006)
    4,  # search_path of a churn client ('churn') seen by this one
    6,  # lastval() answered from another client's session instead of 55000
    7,  # search_path set with set_config() mangled: PREPARE then fails with 42P01
    10,  # lastval() answered from another client's session
    11,  # search_path lost (back to the default) after a checkout
    14,  # search_path of a churn client seen
    15,  # search_path list comes back quoted as one name ('"s2, s1"')
]
BALANCERS = ["plain", "split"]
CLIENTS = ["simple", "prepared"]

Rows = tuple[tuple[str, ...], ...]
Result = tuple[str | None, Rows | None]  # (command tag, rows or None when no row description)


# ----------------------------------------------------------------- scripts


@dataclass(frozen=True)
class Script:
    name: str
    sql: tuple[str, ...]
    note: str = ""
    drivers: tuple[str, ...] = ()


def load_scripts() -> list[Script]:
    with SCRIPTS_PATH.open("rb") as fh:
        data = tomllib.load(fh)
    scripts = [
        Script(
            name=entry["name"],
            sql=tuple(entry["sql"]),
            note=entry.get("note", ""),
            drivers=tuple(entry.get("drivers", ())),
        )
        for entry in data["script"]
    ]
    names = [s.name for s in scripts]
    assert len(names) == len(set(names)), "script names must be unique"
    return scripts


SCRIPTS = load_scripts()


# ----------------------------------------------------------------- outcomes


@dataclass(frozen=True)
class Outcome:
    """What the client saw for one statement; `message` is shown but never compared."""

    results: tuple[Result, ...] = ()
    sqlstate: str | None = None
    notices: tuple[str, ...] = ()
    notifies: tuple[tuple[str, str], ...] = ()
    message: str = field(default="", compare=False)

    def show(self) -> str:
        if self.sqlstate is not None and self.sqlstate.startswith("<"):
            text = self.sqlstate + (f" {self.message}" if self.message else "")
        elif self.sqlstate is not None:
            first_line = self.message.strip().splitlines()[0] if self.message.strip() else ""
            text = f"ERROR {self.sqlstate}: {first_line}"
        else:
            text = " | ".join(
                f"{tag or '-'} {show_rows(rows)}" if rows is not None else f"{tag or '-'}"
                for tag, rows in self.results
            )
        if self.notices:
            text += f"  notices={list(self.notices)}"
        if self.notifies:
            text += f"  notifies={list(self.notifies)}"
        return text


def show_rows(rows: Rows) -> str:
    return "[" + ", ".join("(" + ", ".join(row) + ")" for row in rows) + "]"


NOT_RUN = Outcome(sqlstate="<not run: connection lost or stuck>")
HANG_GUARD = "<hang guard cancelled it>"
STUCK_STATES = {HANG_GUARD, "53300"}  # 53300: no server connection within query_wait_timeout


def stuck(outcomes: Sequence[Outcome]) -> bool:
    """Whether the run already hung: the rest of it is skipped to keep the test bounded."""
    return bool(outcomes) and outcomes[-1].sqlstate in STUCK_STATES | {NOT_RUN.sqlstate}


def rows_of(rows: Sequence[Sequence[Any]]) -> Rows:
    """Rows as repr strings, so types and time zones count, not just equality."""
    return tuple(tuple(repr(value) for value in row) for row in rows)


def error_outcome(
    exc: BaseException, notices: list[str], notifies: list[tuple[str, str]]
) -> Outcome:
    sqlstate = getattr(exc, "sqlstate", None) or f"<{type(exc).__name__}>"
    return Outcome(
        sqlstate=sqlstate,
        notices=tuple(notices),
        notifies=tuple(notifies),
        message=str(exc),
    )


@contextlib.contextmanager
def hang_guard(
    cancel: Callable[[], None],
    describe: Callable[[], str] | None = None,
    abort: Callable[[], None] | None = None,
) -> Iterator[threading.Event]:
    """Cancel a statement that runs longer than STATEMENT_GUARD_SECONDS (never a timing check:
    every script statement returns in milliseconds unless something hangs). Before cancelling,
    `describe` reports what the balancer is doing (printed, so a stuck run explains itself);
    if the cancel does not end the statement either, `abort` cuts the client's socket."""
    fired = threading.Event()

    def fire() -> None:
        fired.set()
        if describe is not None:
            with contextlib.suppress(Exception):
                print(f"hang guard fired; the balancer:\n{describe()}", file=sys.stderr, flush=True)
        with contextlib.suppress(Exception):
            cancel()

    def last_resort() -> None:
        if abort is not None:
            with contextlib.suppress(Exception):
                abort()

    timer = threading.Timer(STATEMENT_GUARD_SECONDS, fire)
    timer.daemon = True
    timer.start()
    backstop = threading.Timer(2 * STATEMENT_GUARD_SECONDS, last_resort)
    backstop.daemon = True
    backstop.start()
    try:
        yield fired
    finally:
        timer.cancel()
        backstop.cancel()


def _cut_socket(conn: psycopg.Connection[Any]) -> None:
    """Shut a stuck connection's socket down, so the call blocked on it returns an error."""
    sock = socket.socket(fileno=os.dup(conn.fileno()))
    try:
        sock.shutdown(socket.SHUT_RDWR)
    finally:
        sock.close()


# ----------------------------------------------------------------- drivers


def run_psycopg(
    conninfo: str,
    statements: Sequence[str],
    client: str,
    describe: Callable[[], str] | None = None,
) -> list[Outcome]:
    threshold = 0 if client == "prepared" else None
    outcomes: list[Outcome] = []
    notices: list[str] = []
    notifies: list[tuple[str, str]] = []
    with psycopg.connect(
        conninfo, autocommit=True, prepare_threshold=threshold, connect_timeout=10
    ) as conn:
        conn.add_notice_handler(lambda d: notices.append(f"{d.severity_nonlocalized} {d.sqlstate}"))
        conn.add_notify_handler(lambda n: notifies.append((n.channel, n.payload)))
        for statement in statements:
            if conn.closed or conn.broken or stuck(outcomes):
                outcomes.append(NOT_RUN)
                continue
            notices.clear()
            notifies.clear()
            with hang_guard(conn.cancel_safe, describe, lambda: _cut_socket(conn)) as fired:
                try:
                    cur = conn.execute(statement)
                    results: list[Result] = []
                    while True:
                        rows = rows_of(cur.fetchall()) if cur.description is not None else None
                        results.append((cur.statusmessage, rows))
                        if not cur.nextset():
                            break
                    outcome = Outcome(tuple(results), None, tuple(notices), tuple(notifies))
                except Exception as exc:
                    outcome = error_outcome(exc, notices, notifies)
                if fired.is_set():
                    outcome = Outcome(sqlstate=HANG_GUARD, message=outcome.show())
            outcomes.append(outcome)
    return outcomes


async def run_asyncpg(dsn: dict[str, Any], statements: Sequence[str]) -> list[Outcome]:
    outcomes: list[Outcome] = []
    notices: list[str] = []
    conn = await asyncpg.connect(**dsn, timeout=10)
    try:
        conn.add_log_listener(
            lambda _c, m: notices.append(
                f"{getattr(m, 'severity_en', None) or m.severity} {m.sqlstate}"
            )
        )
        for statement in statements:
            if conn.is_closed() or stuck(outcomes):
                outcomes.append(NOT_RUN)
                continue
            notices.clear()
            try:
                stmt = await asyncio.wait_for(conn.prepare(statement), STATEMENT_GUARD_SECONDS)
                rows = await asyncio.wait_for(stmt.fetch(), STATEMENT_GUARD_SECONDS)
                shown = rows_of([tuple(r) for r in rows]) if stmt.get_attributes() else None
                outcomes.append(Outcome(((stmt.get_statusmsg(), shown),), None, tuple(notices)))
            except TimeoutError:
                outcomes.append(Outcome(sqlstate=HANG_GUARD))
            except Exception as exc:
                outcomes.append(error_outcome(exc, notices, []))
    finally:
        with contextlib.suppress(Exception):
            await conn.close(timeout=10)
    return outcomes


async def run_sqlalchemy(url: str, statements: Sequence[str]) -> list[Outcome]:
    """SQLAlchemy exposes no command tag: record rows and SQLSTATE.

    Imported here: its asyncio extension needs greenlet (the sqlalchemy[asyncio] extra), and a
    missing greenlet should fail these cases only, not the whole module.
    """
    from sqlalchemy.exc import DBAPIError
    from sqlalchemy.ext.asyncio import create_async_engine
    from sqlalchemy.pool import NullPool

    outcomes: list[Outcome] = []
    engine = create_async_engine(url, poolclass=NullPool, isolation_level="AUTOCOMMIT")
    try:
        async with engine.connect() as conn:
            for statement in statements:
                try:
                    result = await asyncio.wait_for(
                        conn.exec_driver_sql(statement), STATEMENT_GUARD_SECONDS
                    )
                    rows = (
                        rows_of([tuple(r) for r in result.fetchall()])
                        if result.returns_rows
                        else None
                    )
                    outcomes.append(Outcome(((None, rows),)))
                except DBAPIError as exc:
                    sqlstate = getattr(exc.orig, "sqlstate", None) or f"<{type(exc.orig).__name__}>"
                    outcomes.append(Outcome(sqlstate=sqlstate, message=str(exc.orig)))
    finally:
        await engine.dispose()
    return outcomes


# ----------------------------------------------------------------- fixture objects

MARKER_SCHEMAS = ["dt", "s1", "s2", "My Schema", "a,b", 'we"ird', "sp ace", "churn"]

SETUP_SQL = """
CREATE SCHEMA IF NOT EXISTS dt;
CREATE TABLE IF NOT EXISTS dt.items (id serial PRIMARY KEY, v text NOT NULL);
CREATE TABLE IF NOT EXISTS dt.kv (k text PRIMARY KEY, n int NOT NULL);
CREATE SEQUENCE IF NOT EXISTS dt.seq;
CREATE SCHEMA IF NOT EXISTS churn;
CREATE TABLE IF NOT EXISTS churn.log (id serial PRIMARY KEY, who int NOT NULL);
CREATE SEQUENCE IF NOT EXISTS churn.seq;
"""

RESET_SQL = """
DELETE FROM dt.items;
SELECT setval('dt.items_id_seq', 1, false);
INSERT INTO dt.items (v) VALUES ('one'), ('two'), ('three');
DELETE FROM dt.kv;
INSERT INTO dt.kv (k, n) VALUES ('a', 1), ('b', 2);
SELECT setval('dt.seq', 1, false);
"""


class FixtureObjects:
    """Creates the objects the scripts use and resets them before every run."""

    def __init__(self, cluster: PgCluster) -> None:
        self._direct: dict[tuple[str, tuple[str, ...]], list[Outcome]] = {}
        self.primary = psycopg.connect(cluster.dsn(cluster.primary), autocommit=True)
        self.replicas = [
            psycopg.connect(cluster.dsn(node), autocommit=True) for node in cluster.replicas
        ]
        self.primary.execute("SET lock_timeout = '10s'")
        self.primary.execute(SETUP_SQL)
        for schema in MARKER_SCHEMAS:
            table = pgsql.Identifier(schema, "where_am_i")
            self.primary.execute(
                pgsql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(pgsql.Identifier(schema))
            )
            self.primary.execute(pgsql.SQL("CREATE TABLE IF NOT EXISTS {} (x text)").format(table))
            self.primary.execute(pgsql.SQL("DELETE FROM {}").format(table))
            self.primary.execute(pgsql.SQL("INSERT INTO {} VALUES (%s)").format(table), (schema,))

    def direct(
        self, client: str, statements: Sequence[str], run: Callable[[], list[Outcome]]
    ) -> list[Outcome]:
        """The direct recording of `statements` with `client`, made once per module: it does
        not depend on the balancer, and the data are reset before it just the same."""
        key = (client, tuple(statements))
        if key not in self._direct:
            self.reset()
            self._direct[key] = run()
        return self._direct[key]

    def reset(self) -> None:
        """Recreate the script data on the primary; return once both replicas replayed it."""
        self.primary.execute(RESET_SQL)
        row = self.primary.execute("SELECT pg_current_wal_lsn()::text").fetchone()
        assert row is not None
        lsn = row[0]
        deadline = time.monotonic() + REPLAY_WAIT_SECONDS
        for replica in self.replicas:
            while True:
                done = replica.execute(
                    "SELECT pg_last_wal_replay_lsn() >= %s::pg_lsn", (lsn,)
                ).fetchone()
                if done is not None and done[0]:
                    break
                assert time.monotonic() < deadline, f"a replica did not replay {lsn}"
                time.sleep(0.002)

    def close(self) -> None:
        for conn in [self.primary, *self.replicas]:
            conn.close()


# ----------------------------------------------------------------- churn clients


def _churn_search_path(conn: psycopg.Connection[Any], rng: random.Random, me: int) -> bool:
    conn.execute(rng.choice(['SET search_path TO churn, "My Schema"', "SET search_path TO churn"]))
    conn.execute("SELECT x FROM where_am_i")
    return False


def _churn_settings(conn: psycopg.Connection[Any], rng: random.Random, me: int) -> bool:
    conn.execute(rng.choice(["SET DateStyle TO 'SQL, DMY'", "SET DateStyle TO 'German'"]))
    conn.execute(rng.choice(["SET TimeZone TO 'Pacific/Auckland'", "SET TIME ZONE 'Asia/Kolkata'"]))
    conn.execute("SET statement_timeout = '9s'")
    conn.execute("SET application_name = 'churner'")
    conn.execute("SET IntervalStyle = 'sql_standard'")
    conn.execute("SELECT set_config('dt.flag', 'churn', false)")
    conn.execute("SELECT now()::text")
    return False


def _churn_local_tx(conn: psycopg.Connection[Any], rng: random.Random, me: int) -> bool:
    conn.execute("BEGIN")
    conn.execute("SET LOCAL search_path TO churn")
    conn.execute("SELECT x FROM where_am_i")
    conn.execute("COMMIT")
    return False


def _churn_local_datestyle(conn: psycopg.Connection[Any], rng: random.Random, me: int) -> bool:
    # The scripts fold the same literal under their own DateStyle: a statement parsed here must
    # never be shared with them (nor may this one get theirs).
    conn.execute("BEGIN")
    conn.execute(rng.choice(["SET LOCAL DateStyle TO 'ISO, DMY'", "SET DateStyle TO 'ISO, DMY'"]))
    row = conn.execute("SELECT '05/03/2024'::date::text").fetchone()
    conn.execute(rng.choice(["COMMIT", "ROLLBACK"]))
    if row != ("2024-03-05",):
        raise AssertionError(f"'05/03/2024' under DMY read as {row}")
    return False


def _churn_set_in_tx(conn: psycopg.Connection[Any], rng: random.Random, me: int) -> bool:
    conn.execute("BEGIN")
    conn.execute("SET TimeZone TO 'America/Sao_Paulo'")
    conn.execute("SET search_path TO churn, s2")
    conn.execute("SELECT 1")
    conn.execute(rng.choice(["COMMIT", "ROLLBACK"]))
    return False


def _churn_sequences(conn: psycopg.Connection[Any], rng: random.Random, me: int) -> bool:
    conn.execute("INSERT INTO churn.log (who) VALUES (%s) RETURNING id", (me,))
    conn.execute("SELECT nextval('churn.seq')")
    return False


def _churn_reads(conn: psycopg.Connection[Any], rng: random.Random, me: int) -> bool:
    conn.execute("SELECT count(*) FROM churn.log")
    conn.execute("BEGIN")
    conn.execute("SELECT x FROM churn.where_am_i")
    conn.execute("COMMIT")
    return False


def _churn_cursor(conn: psycopg.Connection[Any], rng: random.Random, me: int) -> bool:
    conn.execute("BEGIN")
    conn.execute("DECLARE c CURSOR WITH HOLD FOR SELECT generate_series(1, 3)")
    conn.execute("COMMIT")
    conn.execute("DECLARE d CURSOR WITH HOLD FOR SELECT 1")
    conn.execute("FETCH 1 FROM c")
    return True  # disconnect with both cursors open


def _churn_temp(conn: psycopg.Connection[Any], rng: random.Random, me: int) -> bool:
    conn.execute(rng.choice(["CREATE TEMP TABLE tt (x int)", "CREATE TEMP TABLE items (x int)"]))
    conn.execute("CREATE TEMP TABLE tm (x int)")
    return True


def _churn_listen(conn: psycopg.Connection[Any], rng: random.Random, me: int) -> bool:
    conn.execute("LISTEN ch_a")
    conn.execute("LISTEN ch1")
    return True


def _churn_prepare(conn: psycopg.Connection[Any], rng: random.Random, me: int) -> bool:
    conn.execute("PREPARE q(int) AS SELECT $1")
    conn.execute("PREPARE ins(int) AS SELECT $1")
    conn.execute("PREPARE pr AS SELECT 'churn'")
    conn.execute("EXECUTE q(1)")
    return True


def _churn_advisory(conn: psycopg.Connection[Any], rng: random.Random, me: int) -> bool:
    conn.execute("SELECT pg_try_advisory_lock(%s)", (9000 + me,))
    return True


def _churn_discard(conn: psycopg.Connection[Any], rng: random.Random, me: int) -> bool:
    conn.execute("SET search_path TO churn")
    conn.execute("DISCARD ALL")
    return False


CHURN_ACTIONS: list[Callable[[psycopg.Connection[Any], random.Random, int], bool]] = [
    _churn_search_path,
    _churn_settings,
    _churn_local_tx,
    _churn_local_datestyle,
    _churn_set_in_tx,
    _churn_sequences,
    _churn_reads,
    _churn_cursor,
    _churn_temp,
    _churn_listen,
    _churn_prepare,
    _churn_advisory,
    _churn_discard,
]


class Churn:
    """CHURNERS clients looping on short transactions through the balancer.

    Half use the simple protocol and half prepare every statement; they set other settings,
    leave holdable cursors, temp tables, LISTENs and SQL-level prepared statements behind under
    the scripts' own names, and disconnect. Every proxied run renews their lease; they stop by
    themselves CHURN_LEASE_SECONDS after the last renewal, or on `stop()`. Errors they meet are
    kept (any is state leaked from another client, or a stuck pool) and checked at the end.
    """

    def __init__(self) -> None:
        self.errors: list[str] = []
        self.units = 0
        self._conninfo = ""
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._lease_until = 0.0
        self._threads: list[threading.Thread] = []
        self._active = threading.Event()
        self._active.set()

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """Hold the churners between units of work (used while recording direct runs, which
        need no churn and would only compete with it for the two CPUs)."""
        self._active.clear()
        try:
            yield
        finally:
            self._active.set()

    def renew(self, conninfo: str) -> None:
        """Keep the churners running for CHURN_LEASE_SECONDS more, (re)starting them if needed."""
        self._lease_until = time.monotonic() + CHURN_LEASE_SECONDS
        if conninfo == self._conninfo and all(t.is_alive() for t in self._threads):
            return
        self.stop()
        self._conninfo = conninfo
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._run, args=(i, self._stop), name=f"churn-{i}", daemon=True)
            for i in range(CHURNERS)
        ]
        started = self.units
        for thread in self._threads:
            thread.start()
        deadline = time.monotonic() + 10
        while self.units < started + CHURNERS and time.monotonic() < deadline:
            time.sleep(0.005)

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(30)

    def _run(self, me: int, stop: threading.Event) -> None:
        rng = random.Random(1000 + me)
        threshold = None if me % 2 == 0 else 0
        while not stop.is_set() and time.monotonic() < self._lease_until:
            if not self._active.wait(1.0):
                continue
            action_name = "connect"
            try:
                with psycopg.connect(
                    self._conninfo, autocommit=True, prepare_threshold=threshold, connect_timeout=10
                ) as conn:
                    for _ in range(rng.randint(1, 4)):
                        action = rng.choice(CHURN_ACTIONS)
                        action_name = action.__name__
                        leave = action(conn, rng, me)
                        with self._lock:
                            self.units += 1
                        if leave or stop.is_set():
                            break
                        stop.wait(rng.uniform(*CHURN_PAUSE))
            except Exception as exc:
                if stop.is_set():
                    return
                with self._lock:
                    if len(self.errors) < 50:
                        state = getattr(exc, "sqlstate", None)
                        self.errors.append(f"churner {me} {action_name}: {state} {exc}")
            stop.wait(rng.uniform(*CHURN_PAUSE))


# ----------------------------------------------------------------- balancers


def balancer_config(cluster: PgCluster, name: str) -> str:
    extra = f'query_wait_timeout = "{QUERY_WAIT_TIMEOUT}"\nhealth_check_interval = "200ms"\n'
    if name == "split":
        extra += "read_your_writes = true\n"
    config = cluster_config(
        cluster, mode="transaction", pool_size=POOL_SIZE, split=name == "split", extra=extra
    )
    return '[general]\nshutdown_timeout = "1s"\n' + config


class Target:
    """One balancer configuration under test, with its churn clients.

    A proxied run that hit the hang guard or waited out query_wait_timeout restarts the balancer,
    so one stuck pool costs one test, not all that follow.
    """

    def __init__(self, name: str, cluster: PgCluster) -> None:
        self.name = name
        self.cluster = cluster
        self.churn = Churn()
        self.restarts = 0
        self.balancer = self._start()

    def _start(self) -> BalancerThread:
        balancer = BalancerThread(parse_config(balancer_config(self.cluster, self.name))).start()
        if self.name == "split":
            wait_replicas_eligible(balancer, len(self.cluster.replicas))
        return balancer

    def conninfo(self) -> str:
        host, port = self.balancer.pg_address
        return make_conninfo(
            host=host, port=str(port), user="app", password="app", dbname=CLUSTER_NAME
        )

    def address(self) -> tuple[str, int]:
        return self.balancer.pg_address

    def before_run(self) -> None:
        self.churn.renew(self.conninfo())

    def after_run(self, outcomes: Sequence[Outcome]) -> str:
        """Restart a balancer that left a client stuck; return a note for the failure message."""
        if not any(o.sqlstate in STUCK_STATES for o in outcomes):
            return ""
        self.churn.stop()
        with contextlib.suppress(Exception):
            self.balancer.stop(timeout=10)
        self.balancer = self._start()
        self.restarts += 1
        return "  (a client was stuck: the balancer was restarted after this run)"

    def close(self) -> None:
        self.churn.stop()
        self.balancer.stop()


def wait_replicas_eligible(balancer: BalancerThread, count: int) -> None:
    def eligible() -> int:
        assert balancer.app.pg is not None
        runtime = balancer.app.pg.cluster(CLUSTER_NAME)
        assert runtime is not None
        return len(runtime.runtime.eligible_replicas())

    deadline = time.monotonic() + 15
    while balancer.call(eligible) < count and time.monotonic() < deadline:
        time.sleep(0.05)


@pytest.fixture(scope="module")
def objects(pg_cluster: PgCluster) -> Iterator[FixtureObjects]:
    fixture = FixtureObjects(pg_cluster)
    try:
        yield fixture
    finally:
        fixture.close()


@pytest.fixture(scope="module", params=BALANCERS)
def target(
    request: pytest.FixtureRequest, pg_cluster: PgCluster, objects: FixtureObjects
) -> Iterator[Target]:
    target = Target(request.param, pg_cluster)
    try:
        yield target
    finally:
        target.close()


# ----------------------------------------------------------------- comparison


# What transaction pooling answers instead of another client's sequence value when the
# connection holding the client's own was taken (docs/postgres.md, "Sequences"): an error, never
# a number. Accepted in place of the direct outcome for a statement reading currval()/lastval().
SEQUENCE_REFUSAL = "currval()/lastval() cannot be answered for this session"
INTERNAL_NAME = "dbb_"  # dbbalancer's own server-side statement names never reach a client


def documented_refusal(statement: str, proxied: Outcome) -> bool:
    lowered = statement.lower()
    return (
        proxied.sqlstate == "55000"
        and proxied.message.startswith(SEQUENCE_REFUSAL)
        and ("currval" in lowered or "lastval" in lowered)
    )


def compare(
    label: str,
    statements: Sequence[str],
    direct: Sequence[Outcome],
    proxied: Sequence[Outcome],
    note: str = "",
) -> None:
    leaked = [i for i, p in enumerate(proxied) if INTERNAL_NAME in p.message]
    assert not leaked, f"{label}: an internal statement name reached the client: " + "; ".join(
        f"[{i}] {statements[i]}: {proxied[i].message}" for i in leaked
    )
    diverging = []
    for i, (d, p) in enumerate(zip(direct, proxied, strict=True)):
        if d == p:
            continue
        if documented_refusal(statements[i], p):
            if d.sqlstate is None:
                break  # the session took another path from here on, as documented
            continue
        diverging.append(i)
    if not diverging:
        return
    lines = [f"{label}: {len(diverging)} of {len(statements)} statements diverge{note}"]
    for i in diverging[:6]:
        lines.append(f"  [{i}] {statements[i]}")
        lines.append(f"      direct:  {direct[i].show()}")
        lines.append(f"      proxied: {proxied[i].show()}")
    lines.append("  whole session ('!' diverges; the others show what both saw):")
    for i, statement in enumerate(statements):
        seen = "" if i in diverging else f"  ->  {direct[i].show()}"
        lines.append(f"   {'!' if i in diverging else ' '}{i:2} {statement}{seen}")
    pytest.fail("\n".join(lines), pytrace=False)


def run_pair(
    target: Target,
    objects: FixtureObjects,
    pg_cluster: PgCluster,
    statements: Sequence[str],
    client: str,
    label: str,
) -> None:
    with target.churn.paused():
        direct = objects.direct(
            client,
            statements,
            lambda: run_psycopg(pg_cluster.dsn(pg_cluster.primary), statements, client),
        )
    objects.reset()
    target.before_run()
    proxied = run_psycopg(target.conninfo(), statements, client, target.balancer.describe)
    note = target.after_run(proxied)
    compare(label, statements, direct, proxied, note)


# ----------------------------------------------------------------- corpus scripts


@pytest.mark.parametrize("client", CLIENTS)
@pytest.mark.parametrize("script", SCRIPTS, ids=[s.name for s in SCRIPTS])
def test_script(
    target: Target, objects: FixtureObjects, pg_cluster: PgCluster, script: Script, client: str
) -> None:
    label = f"script {script.name!r} [{target.name}/{client}]"
    if script.note:
        label += f" ({script.note})"
    run_pair(target, objects, pg_cluster, script.sql, client, label)


def test_corpus_size() -> None:
    assert len(SCRIPTS) >= 50


# ----------------------------------------------------------------- generated sessions

SEARCH_PATHS = [
    "s1",
    "s2, s1",
    "dt, public",
    '"My Schema", dt',
    '"a,b"',
    '"we""ird", s2',
    '"sp ace", "a,b"',
]
SETTING_VALUES = {
    "DateStyle": ["'ISO, DMY'", "'ISO, MDY'", "'SQL, DMY'", "'German'", "'Postgres, YMD'"],
    "TimeZone": ["'UTC'", "'Asia/Tokyo'", "'America/New_York'", "'Europe/Paris'"],
    "statement_timeout": ["'0'", "'30s'", "'5min'"],
    "application_name": ["'r1'", "'r 2'", "''"],
    "temp_tablespaces": ["''", "'pg_default'"],
}
SHOWN = ["search_path", *SETTING_VALUES]


def _gen_set(rng: random.Random) -> str:
    name = rng.choice([*SETTING_VALUES, "search_path", "search_path"])
    local = rng.random() < 0.2
    if name == "search_path":
        value = rng.choice(SEARCH_PATHS)
        if rng.random() < 0.3:
            flag = rng.choice(["false", "true"])
            return f"SELECT set_config('search_path', '{value}', {flag})"
    else:
        value = rng.choice(SETTING_VALUES[name])
    return f"SET {'LOCAL ' if local else ''}{name} TO {value}"


GRAMMAR: list[tuple[int, Callable[[random.Random], str]]] = [
    (8, _gen_set),
    (
        3,
        lambda r: r.choice(
            [
                "RESET search_path",
                "RESET ALL",
                "RESET TimeZone",
                "SET search_path TO DEFAULT",
                "RESET DateStyle",
            ]
        ),
    ),
    (6, lambda r: f"SHOW {r.choice(SHOWN)}"),
    (2, lambda r: f"SELECT current_setting('{r.choice(SHOWN)}')"),
    (4, lambda r: "SELECT x FROM where_am_i"),
    (2, lambda r: "SELECT '2024-03-05 06:07:08+00'::timestamptz::text, '03/04/2024'::date::text"),
    (
        6,
        lambda r: r.choice(
            [
                "BEGIN",
                "BEGIN",
                "COMMIT",
                "ROLLBACK",
                "SAVEPOINT s",
                "ROLLBACK TO SAVEPOINT s",
                "RELEASE SAVEPOINT s",
            ]
        ),
    ),
    (2, lambda r: "SELECT 1/0"),
    (
        2,
        lambda r: r.choice(
            [
                "PREPARE pr AS SELECT x FROM where_am_i",
                "PREPARE pw(text) AS INSERT INTO dt.items (v) VALUES ($1) RETURNING id",
            ]
        ),
    ),
    (3, lambda r: r.choice(["EXECUTE pr", "EXECUTE pw('g')", "DEALLOCATE pr", "DEALLOCATE ALL"])),
    (
        4,
        lambda r: r.choice(
            [
                "INSERT INTO dt.items (v) VALUES ('r') RETURNING id",
                "SELECT currval('dt.items_id_seq')",
                "SELECT lastval()",
                "SELECT nextval('dt.seq')",
                "SELECT currval('dt.seq')",
            ]
        ),
    ),
    (
        3,
        lambda r: r.choice(
            [
                "CREATE TEMP TABLE tt (x int)",
                "INSERT INTO tt VALUES (1)",
                "SELECT count(*) FROM tt",
                "DISCARD TEMP",
            ]
        ),
    ),
    (
        3,
        lambda r: r.choice(
            [
                "DECLARE c CURSOR WITH HOLD FOR SELECT id FROM dt.items ORDER BY id",
                "FETCH 1 FROM c",
                "CLOSE c",
                "CLOSE ALL",
                "DECLARE d CURSOR FOR SELECT 1",
                "FETCH 1 FROM d",
            ]
        ),
    ),
    (
        3,
        lambda r: r.choice(
            [
                "LISTEN ch1",
                "UNLISTEN ch1",
                "UNLISTEN *",
                "NOTIFY ch1, 'p'",
                "SELECT c FROM pg_listening_channels() c ORDER BY 1",
            ]
        ),
    ),
    (
        2,
        lambda r: r.choice(
            [
                "SELECT pg_try_advisory_lock(8001)",
                "SELECT pg_advisory_unlock(8001)",
                "SELECT pg_advisory_unlock_all()",
            ]
        ),
    ),
    (
        1,
        lambda r: r.choice(
            ["SELECT txid_current() IS NOT NULL", "SELECT pg_current_xact_id() IS NOT NULL"]
        ),
    ),
    (
        2,
        lambda r: r.choice(
            [
                "SELECT count(*) FROM dt.items",
                "SELECT k, n FROM dt.kv ORDER BY k",
                "UPDATE dt.kv SET n = n + 1 WHERE k = 'a'",
            ]
        ),
    ),
    (1, lambda r: "DISCARD ALL"),
    (
        2,
        lambda r: r.choice(
            [
                "SELECT name FROM pg_prepared_statements WHERE from_sql ORDER BY 1",
                "SELECT name FROM pg_cursors WHERE is_from_sql ORDER BY 1",
            ]
        ),
    ),
]


def random_session(seed: int) -> list[str]:
    """A reproducible session of 4 to 14 statements (one multi-statement string at times)."""
    rng = random.Random(seed)
    weights = [w for w, _ in GRAMMAR]
    makers = [m for _, m in GRAMMAR]

    def one() -> str:
        return rng.choices(makers, weights)[0](rng)

    statements = []
    for _ in range(rng.randint(4, 14)):
        statement = one()
        if rng.random() < 0.1:
            statement = f"{statement}; {one()}"
        statements.append(statement)
    if rng.random() < 0.5:
        statements += ["SHOW search_path", "SELECT x FROM where_am_i"]
    if rng.random() < 0.4:
        statements.append("DISCARD ALL")
    return statements


@pytest.mark.parametrize("client", CLIENTS)
@pytest.mark.parametrize("seed", [*RANDOM_SEEDS, *REGRESSION_SEEDS])
def test_random_session(
    target: Target, objects: FixtureObjects, pg_cluster: PgCluster, seed: int, client: str
) -> None:
    statements = random_session(seed)
    label = f"random session seed={seed} [{target.name}/{client}] (random_session({seed}))"
    run_pair(target, objects, pg_cluster, statements, client, label)


# ----------------------------------------------------------------- asyncpg and SQLAlchemy

DRIVER_CASES = [(driver, script) for script in SCRIPTS for driver in script.drivers]


@pytest.mark.parametrize(
    ("driver", "script"), DRIVER_CASES, ids=[f"{d}-{s.name}" for d, s in DRIVER_CASES]
)
def test_driver_script(
    target: Target, objects: FixtureObjects, pg_cluster: PgCluster, driver: str, script: Script
) -> None:
    primary = pg_cluster.primary
    direct_dsn: dict[str, Any] = {
        "host": primary.host,
        "port": primary.port,
        "user": "app",
        "password": "app",
        "database": pg_cluster.database,
    }

    async def run(d: dict[str, Any]) -> list[Outcome]:
        if driver == "asyncpg":
            return await run_asyncpg(d, script.sql)
        url = f"postgresql+asyncpg://app:app@{d['host']}:{d['port']}/{d['database']}"
        return await run_sqlalchemy(url, script.sql)

    with target.churn.paused():
        direct = objects.direct(driver, script.sql, lambda: asyncio.run(run(direct_dsn)))
    objects.reset()
    target.before_run()
    host, port = target.address()
    proxied_dsn = {**direct_dsn, "host": host, "port": port, "database": CLUSTER_NAME}
    proxied = asyncio.run(run(proxied_dsn))
    note = target.after_run(proxied)
    label = f"script {script.name!r} [{target.name}/{driver}]"
    compare(label, script.sql, direct, proxied, note)


# ----------------------------------------------------------------- churn health (keep last)


def test_churn_clients_saw_no_errors(target: Target) -> None:
    """The churn clients run statements that always succeed on a clean session: an error means
    state from another client (a script's cursor, temp table, ...) leaked onto their connection."""
    assert target.churn.units > 0
    errors = target.churn.errors
    assert not errors, f"{len(errors)} churn errors, the first ones:\n" + "\n".join(errors[:15])
