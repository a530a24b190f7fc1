"""Differential test: a MySQL client cannot tell dbbalancer (transaction pooling) from MariaDB.

Every session script (tests/data/mysql_session_scripts.toml, plus sessions generated from a
small grammar with a printed seed) runs on a brand-new connection twice: directly against the
primary, then through dbbalancer in transaction pooling with a small pool (POOL_SIZE), while
churn clients keep the pool busy and leave session state behind (variables, user variables,
temporary tables, locks, prepared statements, another database). For each statement we record
what a client sees: for each result its rows (as ``repr``, so Python types count), affected-row
count, insert id and warning count; or the errno of an error. Both recordings must be identical.

Matrix: a balancer without and one with read/write splitting plus read-your-writes; PyMySQL
(text protocol) and mysql-connector-python with ``cursor(prepared=True)`` (binary protocol;
a statement the server cannot prepare, errno 1295, or a multi-statement string runs through a
text cursor instead, and the outcome records which). The script data are reset on the primary
before each run, and the replicas must have replayed the reset before the script starts.

How to add a script: append a ``[[script]]`` to the TOML file (its header lists the keys and
the fixture objects). A script that shows a divergence not fixed yet says so in
``known_divergence`` (the test is then a strict xfail: it fails once the bug is fixed). Keep
statements deterministic and free of server identity
(``CONNECTION_ID()``, ``@@server_id``, ``@@port``, GTIDs): the run with splitting may read from
a replica. A divergence that docs/mysql.md lists as a limit is accepted only where the script
says so (``limit_at``), and only in the documented shape (see ``documented_limit``).

A failing random session prints its seed; keep such seeds in REGRESSION_SEEDS below, and
failing hand-written cases as scripts in the TOML file.
"""

from __future__ import annotations

import contextlib
import random
import threading
import time
import tomllib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import mysql.connector
import pymysql
import pytest
from pymysql.constants import CLIENT

from dbbalancer.config.loader import parse_config
from dbbalancer.testing.balancer import BalancerThread
from dbbalancer.testing.mariadbcluster import MariaDbCluster, gtid_pos_covers, parse_gtid_pos

pytestmark = pytest.mark.timeout(60)  # hang guard only; a run takes well under a second

SCRIPTS_PATH = Path(__file__).resolve().parents[1] / "data" / "mysql_session_scripts.toml"

POOL_SIZE = 2
CHURNERS = 4
CHURN_LEASE_SECONDS = 30.0  # churners stop by themselves this long after the last proxied run
CHURN_PAUSE = (0.005, 0.02)
READ_TIMEOUT = 20  # seconds; a statement still running then fails the run (hang guard only)
REPLAY_WAIT_SECONDS = 30.0
CLUSTER_NAME = "app"

# Random sessions (random_session(seed)) run in every balancer/client combination, and so do
# REGRESSION_SEEDS, seeds that once diverged. A seed names a session only for the grammar
# below: whoever changes GRAMMAR or random_session re-derives these from the failures.
RANDOM_SEEDS = range(201, 209)
REGRESSION_SEEDS: list[int] = []
BALANCERS = ["plain", "split"]
CLIENTS = ["pymysql", "prepared"]

ER_UNSUPPORTED_PS = 1295


# ----------------------------------------------------------------- scripts


@dataclass(frozen=True)
class Script:
    name: str
    sql: tuple[str, ...]
    note: str = ""
    multi_statements: bool = False
    limit_at: tuple[int, ...] = ()
    known_divergence: str = ""
    # A bug that shows only now and then (a race): the case may pass or fail; the reason
    # names the bug, which is open in issue #12. Not for anything that diverges every time.
    intermittent: str = ""


def load_scripts() -> list[Script]:
    with SCRIPTS_PATH.open("rb") as fh:
        data = tomllib.load(fh)
    scripts = [
        Script(
            name=entry["name"],
            sql=tuple(entry["sql"]),
            note=entry.get("note", ""),
            multi_statements=entry.get("multi_statements", False),
            limit_at=tuple(entry.get("limit_at", ())),
            known_divergence=entry.get("known_divergence", ""),
            intermittent=entry.get("intermittent", ""),
        )
        for entry in data["script"]
    ]
    names = [s.name for s in scripts]
    assert len(names) == len(set(names)), "script names must be unique"
    for script in scripts:
        assert all(0 <= i < len(script.sql) for i in script.limit_at), script.name
    return scripts


SCRIPTS = load_scripts()


# ----------------------------------------------------------------- outcomes

Rows = tuple[tuple[str, ...], ...]


@dataclass(frozen=True)
class Result:
    """One result of a statement: rows (None without a result set), affected rows, insert id,
    warning count."""

    rows: Rows | None
    affected: int
    insert_id: int | None
    warnings: int

    def show(self) -> str:
        rows = (
            ""
            if self.rows is None
            else " [" + ", ".join("(" + ", ".join(row) + ")" for row in self.rows) + "]"
        )
        extra = f" id={self.insert_id}" if self.insert_id else ""
        warn = f" warnings={self.warnings}" if self.warnings else ""
        return f"affected={self.affected}{extra}{warn}{rows}"


@dataclass(frozen=True)
class Outcome:
    """What the client saw for one statement; `message` is shown but never compared."""

    results: tuple[Result, ...] = ()
    errno: int | None = None
    mode: str = "text"  # "prepared" when the binary protocol ran it
    message: str = field(default="", compare=False)

    def show(self) -> str:
        prefix = "(prepared) " if self.mode == "prepared" else ""
        if self.errno is not None:
            return f"{prefix}ERROR {self.errno}: {self.message.strip()[:120]}"
        return prefix + " | ".join(r.show() for r in self.results)


NOT_RUN = Outcome(errno=-1, message="<not run: connection lost>")


def rows_of(rows: Sequence[Sequence[Any]]) -> Rows:
    return tuple(tuple(shown(value) for value in row) for row in rows)


def shown(value: Any) -> str:
    # mysql-connector hands text-protocol strings back as str and binary ones as bytes or
    # bytearray, the same on both sides; repr keeps the difference between all of them.
    if isinstance(value, bytearray):
        return f"bytearray({bytes(value)!r})"
    if isinstance(value, Decimal):
        return f"Decimal('{value}')"
    return repr(value)


def errno_of(exc: BaseException) -> int:
    errno = getattr(exc, "errno", None)
    if isinstance(errno, int) and errno > 0:
        return errno
    args = getattr(exc, "args", ())
    if args and isinstance(args[0], int):
        return int(args[0])
    return -2


# ----------------------------------------------------------------- drivers


def run_pymysql(address: tuple[str, int], statements: Sequence[str], multi: bool) -> list[Outcome]:
    outcomes: list[Outcome] = []
    conn = pymysql.connect(
        host=address[0],
        port=address[1],
        user="app",
        password="app",
        database="app",
        autocommit=True,
        connect_timeout=10,
        read_timeout=READ_TIMEOUT,
        client_flag=CLIENT.MULTI_STATEMENTS if multi else 0,
    )
    try:
        for statement in statements:
            if not conn.open or (outcomes and outcomes[-1].errno in (-1, 2006, 2013)):
                outcomes.append(NOT_RUN)
                continue
            cur = conn.cursor()
            try:
                results: list[Result] = []
                cur.execute(statement)
                while True:
                    rows = rows_of(cur.fetchall()) if cur.description is not None else None
                    result = cur._result
                    warnings = result.warning_count if result is not None else 0
                    results.append(Result(rows, cur.rowcount, cur.lastrowid or None, warnings))
                    if not cur.nextset():
                        break
                outcomes.append(Outcome(tuple(results)))
            except Exception as exc:  # a decode error counts too, the same on both sides
                outcomes.append(Outcome(errno=errno_of(exc), message=repr(exc)))
            finally:
                with contextlib.suppress(Exception):
                    cur.close()
    finally:
        with contextlib.suppress(Exception):
            conn.close()
    return outcomes


def _connector_results(cur: Any) -> list[Result]:
    results: list[Result] = []
    while True:
        rows = rows_of(cur.fetchall()) if cur.description is not None else None
        results.append(
            Result(rows, cur.rowcount, cur.lastrowid or None, int(cur.warning_count or 0))
        )
        if not cur.nextset():
            return results


def run_connector(
    address: tuple[str, int], statements: Sequence[str], multi: bool
) -> list[Outcome]:
    """mysql-connector-python, pure Python: each statement is prepared (binary protocol) on a
    cursor of its own, which closes the statement after it; statements the server cannot
    prepare (1295) and multi-statement strings run through a text cursor."""
    outcomes: list[Outcome] = []
    cnx = mysql.connector.connect(
        host=address[0],
        port=address[1],
        user="app",
        password="app",
        database="app",
        autocommit=True,
        ssl_disabled=True,
        use_pure=True,
        connection_timeout=READ_TIMEOUT,
    )
    try:
        for statement in statements:
            if not cnx.is_connected() or (outcomes and outcomes[-1].errno in (-1, 2006, 2013)):
                outcomes.append(NOT_RUN)
                continue
            text = multi and ";" in statement
            if not text:
                cur = cnx.cursor(prepared=True)
                try:
                    cur.execute(statement)
                    outcomes.append(Outcome(tuple(_connector_results(cur)), mode="prepared"))
                    continue
                except mysql.connector.Error as exc:
                    if errno_of(exc) != ER_UNSUPPORTED_PS:
                        outcomes.append(
                            Outcome(errno=errno_of(exc), mode="prepared", message=str(exc))
                        )
                        continue
                finally:
                    with contextlib.suppress(Exception):
                        cur.close()
            cur = cnx.cursor()
            try:
                cur.execute(statement)
                outcomes.append(Outcome(tuple(_connector_results(cur))))
            except Exception as exc:
                outcomes.append(Outcome(errno=errno_of(exc), message=repr(exc)))
            finally:
                with contextlib.suppress(Exception):
                    cur.close()
    finally:
        with contextlib.suppress(Exception):
            cnx.close()
    return outcomes


def run_client(
    client: str, address: tuple[str, int], statements: Sequence[str], multi: bool
) -> list[Outcome]:
    if client == "pymysql":
        return run_pymysql(address, statements, multi)
    return run_connector(address, statements, multi)


# ----------------------------------------------------------------- fixture objects

# Run once on the primary (replicated): the script objects in app and app2, the churn objects.
SETUP_SQL = [
    "CREATE TABLE IF NOT EXISTS items (id INT AUTO_INCREMENT PRIMARY KEY, v VARCHAR(20) NOT NULL)",
    "CREATE TABLE IF NOT EXISTS kv (k VARCHAR(10) PRIMARY KEY, n INT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS typed (i BIGINT, d DECIMAL(10,3), f DOUBLE, s VARCHAR(20), "
    "b VARBINARY(8), t DATETIME(3), j JSON)",
    "CREATE OR REPLACE SEQUENCE seq START WITH 1 NOCACHE",
    "CREATE TABLE IF NOT EXISTS where_am_i (x VARCHAR(10))",
    "CREATE TABLE IF NOT EXISTS churn_log (id INT AUTO_INCREMENT PRIMARY KEY, who INT)",
    "CREATE OR REPLACE SEQUENCE churn_seq NOCACHE",
    "CREATE DATABASE IF NOT EXISTS app2",
    "GRANT ALL PRIVILEGES ON app2.* TO 'app'@'127.0.0.1'",
    "CREATE TABLE IF NOT EXISTS app2.where_am_i (x VARCHAR(10))",
    "CREATE TABLE IF NOT EXISTS app2.items (id INT AUTO_INCREMENT PRIMARY KEY, v VARCHAR(20))",
]

RESET_SQL = [
    "TRUNCATE TABLE items",
    "INSERT INTO items (v) VALUES ('one'), ('two'), ('three')",
    "DELETE FROM kv",
    "INSERT INTO kv (k, n) VALUES ('a', 1), ('b', 2)",
    "DELETE FROM typed",
    "INSERT INTO typed VALUES (9007199254740993, 12.345, 0.1, 'héllo', X'00ff10', "
    "'2024-03-05 06:07:08.125', '{\"a\": [1, 2]}')",
    "ALTER SEQUENCE seq RESTART WITH 1",
    "DELETE FROM where_am_i",
    "INSERT INTO where_am_i VALUES ('app')",
    "DELETE FROM app2.where_am_i",
    "INSERT INTO app2.where_am_i VALUES ('app2')",
    "TRUNCATE TABLE app2.items",
]


class FixtureObjects:
    """Creates the objects the scripts use and resets them before every run."""

    def __init__(self, cluster: MariaDbCluster) -> None:
        self.cluster = cluster
        self._direct: dict[tuple[str, tuple[str, ...], bool], list[Outcome]] = {}
        cluster.sql(cluster.primary, "; ".join(SETUP_SQL))
        self.primary = pymysql.connect(**cluster.connect_kwargs(cluster.primary), autocommit=True)
        self.replicas = [
            pymysql.connect(**cluster.connect_kwargs(node), autocommit=True)
            for node in cluster.replicas
        ]

    @property
    def address(self) -> tuple[str, int]:
        return self.cluster.primary.host, self.cluster.primary.port

    def direct(self, client: str, statements: Sequence[str], multi: bool) -> list[Outcome]:
        """The direct recording, made once per module (it does not depend on the balancer)."""
        key = (client, tuple(statements), multi)
        if key not in self._direct:
            self.reset()
            self._direct[key] = run_client(client, self.address, statements, multi)
        return self._direct[key]

    def reset(self) -> None:
        """Reset the script data on the primary; return once both replicas replayed it."""
        with self.primary.cursor() as cur:
            for statement in RESET_SQL:
                cur.execute(statement)
            cur.execute("SELECT @@gtid_binlog_pos")
            row = cur.fetchone()
        assert row is not None
        want = parse_gtid_pos(row[0])
        deadline = time.monotonic() + REPLAY_WAIT_SECONDS
        for replica in self.replicas:
            while True:
                with replica.cursor() as cur:
                    cur.execute("SELECT @@gtid_slave_pos")
                    have = cur.fetchone()
                if have is not None and gtid_pos_covers(parse_gtid_pos(have[0]), want):
                    break
                assert time.monotonic() < deadline, f"a replica did not replay {want}"
                time.sleep(0.005)

    def close(self) -> None:
        for conn in [self.primary, *self.replicas]:
            with contextlib.suppress(Exception):
                conn.close()


# ----------------------------------------------------------------- churn clients
#
# Each action runs on one PyMySQL connection through the balancer and returns True when the
# churner should disconnect right after it (leaving its state behind for the pool to clean).
# They use the scripts' names for temporary tables, user variables and prepared statements, so
# a leak shows in the scripts; their locks and rows are their own, so they never block a script.

Churner = Callable[[Any, random.Random, int], bool]
# Sessions of churners with an even number ask for CLIENT_MULTI_STATEMENTS, as mysql-connector
# does, the others do not, as PyMySQL by default: each pool profile the scripts use is churned.


def _q(conn: Any, sql: str) -> list[tuple[Any, ...]]:
    with conn.cursor() as cur:
        cur.execute(sql)
        return list(cur.fetchall())


def _churn_settings(conn: Any, rng: random.Random, me: int) -> bool:
    _q(
        conn,
        rng.choice(
            ["SET sql_mode = 'ANSI_QUOTES'", "SET SESSION sql_mode = 'NO_BACKSLASH_ESCAPES'"]
        ),
    )
    _q(conn, rng.choice(["SET time_zone = '+09:00'", "SET @@time_zone = '-03:30'"]))
    _q(conn, "SET NAMES latin1")
    _q(conn, "SET SESSION group_concat_max_len = 7, @@div_precision_increment = 9")
    _q(conn, "SELECT NOW(), @@sql_mode")
    return rng.random() < 0.5


def _churn_user_vars(conn: Any, rng: random.Random, me: int) -> bool:
    _q(conn, "SET @a = 'churn', @x = 99, @n = 1.5, @b = X'ff'")
    _q(conn, "SELECT @y := 77, @s := 'churned'")
    return rng.random() < 0.5


def _churn_use(conn: Any, rng: random.Random, me: int) -> bool:
    _q(conn, "USE app2")
    _q(conn, "SELECT x FROM where_am_i")
    return True


def _churn_temp(conn: Any, rng: random.Random, me: int) -> bool:
    _q(
        conn,
        rng.choice(["CREATE TEMPORARY TABLE tt (x INT)", "CREATE TEMPORARY TABLE items (x INT)"]),
    )
    _q(conn, "CREATE TEMPORARY TABLE where_am_i (x VARCHAR(10))")
    _q(conn, "INSERT INTO where_am_i VALUES ('temp')")
    return True


def _churn_locks(conn: Any, rng: random.Random, me: int) -> bool:
    _q(conn, f"SELECT GET_LOCK('churn{me}', 0)")
    if rng.random() < 0.5:
        _q(conn, f"SELECT RELEASE_LOCK('churn{me}')")
        return False
    return True


def _churn_lock_tables(conn: Any, rng: random.Random, me: int) -> bool:
    _q(conn, "LOCK TABLES churn_log WRITE")
    _q(conn, f"INSERT INTO churn_log (who) VALUES ({me})")
    if rng.random() < 0.5:
        _q(conn, "UNLOCK TABLES")
        return False
    return True


def _churn_prepare(conn: Any, rng: random.Random, me: int) -> bool:
    _q(conn, "PREPARE p FROM 'SELECT ''churn'''")
    _q(conn, "PREPARE q FROM 'SELECT ? + 1000'")
    _q(conn, "EXECUTE p")
    return True


def _churn_autocommit(conn: Any, rng: random.Random, me: int) -> bool:
    _q(conn, "SET autocommit = 0")
    _q(conn, f"INSERT INTO churn_log (who) VALUES ({me})")
    _q(conn, "SELECT NEXTVAL(churn_seq)")
    if rng.random() < 0.5:
        _q(conn, rng.choice(["COMMIT", "ROLLBACK"]))
        _q(conn, "SET autocommit = 1")
        return False
    return True  # leave with a transaction open and autocommit off


def _churn_transaction(conn: Any, rng: random.Random, me: int) -> bool:
    _q(conn, rng.choice(["START TRANSACTION", "BEGIN", "START TRANSACTION READ ONLY"]))
    _q(conn, "SELECT COUNT(*) FROM churn_log")
    _q(conn, "SET @t = 'churn-tx'")
    _q(conn, "SAVEPOINT s1")
    _q(conn, rng.choice(["COMMIT", "ROLLBACK"]))
    return rng.random() < 0.3


def _churn_insert(conn: Any, rng: random.Random, me: int) -> bool:
    _q(conn, f"INSERT INTO churn_log (who) VALUES ({me})")
    _q(conn, "SELECT LAST_INSERT_ID(), ROW_COUNT()")
    return False


CHURN_ACTIONS: list[Churner] = [
    _churn_settings,
    _churn_user_vars,
    _churn_use,
    _churn_temp,
    _churn_locks,
    _churn_lock_tables,
    _churn_prepare,
    _churn_autocommit,
    _churn_transaction,
    _churn_insert,
]


class Churn:
    """CHURNERS PyMySQL clients looping on short sessions through the balancer.

    Every proxied run renews their lease; they stop by themselves CHURN_LEASE_SECONDS after the
    last renewal, or on `stop()`. Errors they meet are kept (any is state leaked from another
    client, or a stuck pool) and checked at the end.
    """

    def __init__(self) -> None:
        self.errors: list[str] = []
        self.units = 0
        self._address: tuple[str, int] | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._lease_until = 0.0
        self._threads: list[threading.Thread] = []
        self._active = threading.Event()
        self._active.set()

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        self._active.clear()
        try:
            yield
        finally:
            self._active.set()

    def renew(self, address: tuple[str, int]) -> None:
        self._lease_until = time.monotonic() + CHURN_LEASE_SECONDS
        if address == self._address and all(t.is_alive() for t in self._threads):
            return
        self.stop()
        self._address = address
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
        rng = random.Random(2000 + me)
        assert self._address is not None
        host, port = self._address
        while not stop.is_set() and time.monotonic() < self._lease_until:
            if not self._active.wait(1.0):
                continue
            action_name = "connect"
            try:
                conn = pymysql.connect(
                    host=host,
                    port=port,
                    user="app",
                    password="app",
                    database="app",
                    autocommit=True,
                    connect_timeout=10,
                    read_timeout=READ_TIMEOUT,
                    # Half of them with multi-statements: pool profiles keep connections of
                    # clients with and without them apart (docs/mysql.md), and each profile
                    # the scripts use (PyMySQL's; mysql-connector's, which asks for them)
                    # must be churned.
                    client_flag=CLIENT.MULTI_STATEMENTS if me % 2 == 0 else 0,
                )
                with conn:
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
                        self.errors.append(f"churner {me} {action_name}: {exc!r}")
            stop.wait(rng.uniform(*CHURN_PAUSE))


# ----------------------------------------------------------------- balancers


def balancer_config(cluster: MariaDbCluster, name: str) -> str:
    """One MySQL cluster "app" in transaction pooling; with "split" the replicas take reads."""
    split = name == "split"
    nodes = list(cluster.nodes) if split else [cluster.primary]
    servers = "\n".join(
        f'[[clusters.servers]]\nname = "{node.name}"\naddress = "{node.address()}"\n'
        f'role = "{"primary" if node == cluster.primary else "replica"}"\n'
        for node in nodes
    )
    extra = (
        'read_write_split = true\nmax_replica_lag = "1h"\nread_your_writes = true' if split else ""
    )
    return f"""
[general]
shutdown_timeout = "1s"

[listen]
mysql = "127.0.0.1:0"

[[users]]
name = "{cluster.user}"
password = "{cluster.password}"
auth = "mysql_native_password"

[[clusters]]
name = "{CLUSTER_NAME}"
protocol = "mysql"
database = "{cluster.database}"
pool_mode = "transaction"
pool_size = {POOL_SIZE}
query_wait_timeout = "10s"
health_check_interval = "200ms"
{extra}

{servers}
"""


class Target:
    """One balancer configuration under test, with its churn clients."""

    def __init__(self, name: str, cluster: MariaDbCluster) -> None:
        self.name = name
        self.cluster = cluster
        self.churn = Churn()
        self.balancer = BalancerThread(parse_config(balancer_config(cluster, name))).start()
        if name == "split":
            self._wait_replicas_eligible()

    def _wait_replicas_eligible(self) -> None:
        def eligible() -> int:
            service = self.balancer.app.mysql
            assert service is not None
            cluster = service.cluster(CLUSTER_NAME)
            assert cluster is not None
            return len(cluster.runtime.eligible_replicas())

        deadline = time.monotonic() + 15
        while self.balancer.call(eligible) < len(self.cluster.replicas):
            assert time.monotonic() < deadline, "replicas never became eligible"
            time.sleep(0.05)

    def address(self) -> tuple[str, int]:
        address = self.balancer.app.mysql_address
        assert address is not None
        return address

    def close(self) -> None:
        self.churn.stop()
        self.balancer.stop()


@pytest.fixture(scope="module")
def objects(mariadb_cluster: MariaDbCluster) -> Iterator[FixtureObjects]:
    fixture = FixtureObjects(mariadb_cluster)
    try:
        yield fixture
    finally:
        fixture.close()


@pytest.fixture(scope="module", params=BALANCERS)
def target(
    request: pytest.FixtureRequest, mariadb_cluster: MariaDbCluster, objects: FixtureObjects
) -> Iterator[Target]:
    target = Target(request.param, mariadb_cluster)
    try:
        yield target
    finally:
        target.close()


# ----------------------------------------------------------------- comparison


# docs/mysql.md: a write in a READ ONLY transaction that runs on a replica is refused by the
# replica's read_only (1290) instead of by the transaction (1792).
READ_ONLY_REFUSALS = frozenset({1290, 1792})


def documented_limit(direct: Outcome, proxied: Outcome) -> bool:
    """docs/mysql.md: ROW_COUNT(), FOUND_ROWS() and warnings of a statement that ran in an
    earlier unit of work are not carried over. Accepted (at a script's `limit_at` only) is an
    answer of the same shape: the same result sets with the same number of rows and columns;
    or one read-only refusal for another (READ_ONLY_REFUSALS)."""
    if direct.errno in READ_ONLY_REFUSALS and proxied.errno in READ_ONLY_REFUSALS:
        return direct.mode == proxied.mode
    if direct.errno is not None or proxied.errno is not None:
        return False
    if len(direct.results) != len(proxied.results):
        return False
    for d, p in zip(direct.results, proxied.results, strict=True):
        if (d.rows is None) != (p.rows is None):
            return False
        if (
            d.rows is not None
            and p.rows is not None
            and [len(r) for r in d.rows] != [len(r) for r in p.rows]
        ):
            return False
    return True


def compare(
    label: str,
    statements: Sequence[str],
    direct: Sequence[Outcome],
    proxied: Sequence[Outcome],
    limit_at: Sequence[int] = (),
) -> None:
    diverging = [
        i
        for i, (d, p) in enumerate(zip(direct, proxied, strict=True))
        if d != p and not (i in limit_at and documented_limit(d, p))
    ]
    if not diverging:
        return
    lines = [f"{label}: {len(diverging)} of {len(statements)} statements diverge"]
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
    statements: Sequence[str],
    client: str,
    label: str,
    multi: bool = False,
    limit_at: Sequence[int] = (),
) -> None:
    with target.churn.paused():
        direct = objects.direct(client, statements, multi)
    objects.reset()
    target.churn.renew(target.address())
    proxied = run_client(client, target.address(), statements, multi)
    compare(label, statements, direct, proxied, limit_at)


# ----------------------------------------------------------------- corpus scripts


@pytest.mark.parametrize("client", CLIENTS)
@pytest.mark.parametrize("script", SCRIPTS, ids=[s.name for s in SCRIPTS])
def test_script(
    request: pytest.FixtureRequest,
    target: Target,
    objects: FixtureObjects,
    script: Script,
    client: str,
) -> None:
    label = f"script {script.name!r} [{target.name}/{client}]"
    if script.note:
        label += f" ({script.note})"
    if script.known_divergence:
        request.applymarker(pytest.mark.xfail(reason=script.known_divergence, strict=True))
    elif script.intermittent and client == "prepared":
        request.applymarker(pytest.mark.xfail(reason=script.intermittent, strict=False))
    run_pair(target, objects, script.sql, client, label, script.multi_statements, script.limit_at)


def test_corpus_size() -> None:
    assert len(SCRIPTS) >= 50


# ----------------------------------------------------------------- generated sessions

SETTINGS = [
    "SET sql_mode = 'ANSI_QUOTES'",
    "SET SESSION sql_mode = 'NO_BACKSLASH_ESCAPES,STRICT_TRANS_TABLES'",
    "SET @@sql_mode = ''",
    "SET time_zone = '+05:30'",
    "SET @@session.time_zone = 'SYSTEM'",
    "SET NAMES latin1",
    "SET NAMES utf8mb4 COLLATE utf8mb4_bin",
    "SET SESSION div_precision_increment = 8",
    "SET group_concat_max_len = 5",
    "SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED",
]
READS = [
    "SELECT @@sql_mode, @@time_zone, @@character_set_client, @@collation_connection",
    "SELECT @@div_precision_increment, 1/3, @@group_concat_max_len",
    "SELECT @@tx_isolation",
    "SELECT GROUP_CONCAT(v ORDER BY id) FROM items",
    "SELECT DATABASE(), x FROM where_am_i",
    "SELECT CONVERT_TZ('2024-01-01 00:00:00', @@time_zone, '+00:00')",
    'SELECT \'a"b\', "q"',
    "SELECT id, v FROM items ORDER BY id",
    "SELECT k, n FROM kv ORDER BY k",
]
USER_VARS = [
    "SET @i = 42, @s = 'str', @n = NULL",
    "SET @d = 1.25 * 2, @f = 1e1 / 3",
    "SET @b = X'0001ff', @u = _latin1'caf\\xe9'",
    "SELECT @c := COUNT(*) FROM items",
    "SELECT v INTO @last FROM items ORDER BY id DESC LIMIT 1",
    "SET @i = @i + 1",
    "SELECT @i, @s, @n, @d, @f, @b, @c, @last",
    "SELECT @a, @x, @y, @t",
]
TRANSACTIONS = [
    "START TRANSACTION",
    "BEGIN",
    "START TRANSACTION READ ONLY",
    "COMMIT",
    "ROLLBACK",
    "SAVEPOINT s1",
    "ROLLBACK TO SAVEPOINT s1",
    "SET autocommit = 0",
    "SET autocommit = 1",
]
WRITES = [
    "INSERT INTO items (v) VALUES ('r')",
    "SELECT LAST_INSERT_ID()",
    "UPDATE kv SET n = n + 1 WHERE k = 'a'",
    "INSERT INTO kv VALUES ('a', 9)",
    "DELETE FROM items WHERE v = 'r'",
    "SELECT NEXTVAL(seq)",
    "SELECT n FROM kv WHERE k = 'b' FOR UPDATE",
]
STATE = [
    "CREATE TEMPORARY TABLE tt (x INT)",
    "INSERT INTO tt VALUES (1), (2)",
    "SELECT COUNT(*) FROM tt",
    "DROP TEMPORARY TABLE tt",
    "SELECT GET_LOCK('dl', 0)",
    "SELECT IS_FREE_LOCK('dl')",
    "SELECT RELEASE_LOCK('dl')",
    "PREPARE p FROM 'SELECT v FROM items WHERE id = ?'",
    "SET @pid = 2",
    "EXECUTE p USING @pid",
    "DEALLOCATE PREPARE p",
    "USE app2",
    "USE app",
    "LOCK TABLES items READ",
    "UNLOCK TABLES",
]

GRAMMAR: list[tuple[int, list[str]]] = [
    (5, SETTINGS),
    (6, READS),
    (5, USER_VARS),
    (5, TRANSACTIONS),
    (4, WRITES),
    (5, STATE),
]


def random_session(seed: int) -> list[str]:
    """A reproducible session of 5 to 16 statements from GRAMMAR, ending with reads of state."""
    rng = random.Random(seed)
    weights = [w for w, _ in GRAMMAR]
    statements = [
        rng.choice(rng.choices([c for _, c in GRAMMAR], weights)[0])
        for _ in range(rng.randint(5, 16))
    ]
    statements += [READS[0], "SELECT DATABASE(), x FROM where_am_i", USER_VARS[6]]
    return statements


@pytest.mark.parametrize("client", CLIENTS)
@pytest.mark.parametrize("seed", [*RANDOM_SEEDS, *REGRESSION_SEEDS])
def test_random_session(target: Target, objects: FixtureObjects, seed: int, client: str) -> None:
    statements = random_session(seed)
    label = f"random session seed={seed} [{target.name}/{client}] (random_session({seed}))"
    run_pair(target, objects, statements, client, label)


# ----------------------------------------------------------------- churn health (keep last)


def test_churn_clients_saw_no_errors(target: Target) -> None:
    """The churn clients run statements that always succeed on a clean session: an error means
    state from another client leaked onto their connection, or the pool got stuck."""
    assert target.churn.units > 0
    errors = target.churn.errors
    assert not errors, f"{len(errors)} churn errors, the first ones:\n" + "\n".join(errors[:15])
