"""Health checks and failover of the MySQL side, against real MariaDB servers (session pooling).

Each test that kills, promotes or restarts servers starts its own primary with two GTID
replicas (`mariadb_cluster_factory`); the others share one cluster started by this module.
Every server is configured `role = "auto"`: the probes decide who the primary is. Clients are
PyMySQL in threads, reconnecting after an error, as an application's pool would.

How fast a failover is followed is measured here and written to docs/mysql.md; the tests assert
only what must hold on any machine, with generous hang guards, never a time limit.
"""

from __future__ import annotations

import collections
import json
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pymysql
import pytest

from dbbalancer.config.loader import parse_config
from dbbalancer.core.health import HealthState
from dbbalancer.testing.balancer import BalancerThread
from dbbalancer.testing.mariadbcluster import MariaDbCluster

pytestmark = pytest.mark.timeout(300)

MariaDbClusterFactory = Callable[..., MariaDbCluster]

# What a client may see through the proxy while the primary is lost and a replica promoted
# (docs/mysql.md): its session's server connection is lost (2013, sent by the proxy, or the
# client's own "server has gone away" / "lost connection" when the socket closes under it), or
# no primary can be reached at login (2003). Never a read-only refusal (1290, 1792): that would
# be a write sent to a server that is not the primary.
CONNECTION_ERRORS = frozenset({2003, 2006, 2013})
READ_ONLY_ERRORS = frozenset({1290, 1792})


def balancer_config(
    cluster: MariaDbCluster,
    *,
    pool_size: int = 20,
    general: str = "",
    extra: str = "",
    user_extra: str = "",
) -> str:
    """TOML for one MySQL cluster "app" in front of `cluster`, every server `role = "auto"`."""
    servers = "\n".join(
        f'[[clusters.servers]]\nname = "{node.name}"\naddress = "{node.address()}"\nrole = "auto"\n'
        for node in cluster.nodes
    )
    return f"""
[general]
{general}

[listen]
mysql = "127.0.0.1:0"

[[users]]
name = "{cluster.user}"
password = "{cluster.password}"
auth = "mysql_native_password"
{user_extra}

[[clusters]]
name = "app"
protocol = "mysql"
database = "{cluster.database}"
pool_mode = "session"
pool_size = {pool_size}
health_check_interval = "200ms"
health_check_timeout = "1s"
primary_wait_timeout = "10s"
{extra}

{servers}
"""


def start(cluster: MariaDbCluster, **kwargs: Any) -> BalancerThread:
    """A balancer in front of `cluster`, once it has elected the primary and seen every replica
    up."""
    balancer = BalancerThread(parse_config(balancer_config(cluster, **kwargs))).start()
    wanted = {node.name for node in cluster.replicas}
    wait_until(
        lambda: (
            primary_name(balancer) == cluster.primary.name and set(eligible(balancer)) == wanted
        ),
        "the primary to be elected and the replicas to be up",
        describe=lambda: states(balancer),
    )
    return balancer


def mysql_service(balancer: BalancerThread) -> Any:
    service = balancer.app.mysql
    assert service is not None
    return service


def runtime(balancer: BalancerThread) -> Any:
    cluster = mysql_service(balancer).cluster("app")
    assert cluster is not None
    return cluster.runtime


def primary_name(balancer: BalancerThread) -> str | None:
    def get() -> str | None:
        server = runtime(balancer).primary()
        return None if server is None else str(server.name)

    return balancer.call(get)


def eligible(balancer: BalancerThread) -> list[str]:
    return balancer.call(lambda: [s.name for s in runtime(balancer).eligible_replicas()])


def states(balancer: BalancerThread) -> dict[str, tuple[HealthState, bool]]:
    """Every server's (health state, fenced)."""
    return balancer.call(
        lambda: {s.server.name: (s.state, s.fenced) for s in runtime(balancer).monitor.status()}
    )


def connect(balancer: BalancerThread, **kwargs: Any) -> pymysql.Connection[Any]:
    address = balancer.app.mysql_address
    assert address is not None
    options: dict[str, Any] = {
        "host": "127.0.0.1",
        "port": address[1],
        "user": "app",
        "password": "app",
        "database": "app",
        "connect_timeout": 30,
        "read_timeout": 30,
        "write_timeout": 30,
        "autocommit": True,
    }
    options.update(kwargs)
    return pymysql.connect(**options)


def one(conn: pymysql.Connection[Any], sql: str, args: Any = None) -> Any:
    with conn.cursor() as cur:
        cur.execute(sql, args)
        row = cur.fetchone()
        return None if row is None else row[0]


def errno_of(exc: pymysql.MySQLError) -> int:
    return int(exc.args[0]) if exc.args and isinstance(exc.args[0], int) else -1


def wait_until(
    condition: Callable[[], bool],
    what: str,
    *,
    timeout: float = 30.0,
    describe: Callable[[], object] = lambda: "",
) -> None:
    """Poll `condition` (a state the proxy or the servers reach on their own); a hang guard."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out waiting for {what}: {describe()}")
        time.sleep(0.01)


def join_threads(threads: list[threading.Thread], timeout: float = 60.0) -> None:
    """Join `threads`, all within one `timeout` (a hang guard, not a time limit)."""
    deadline = time.monotonic() + timeout
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    alive = [t.name for t in threads if t.is_alive()]
    assert alive == [], f"threads still running: {alive}"


class Writers:
    """Client threads that insert rows in a loop through the proxy, reconnecting after any
    error; every acknowledged write and every error is recorded with its monotonic time."""

    def __init__(self, balancer: BalancerThread, count: int) -> None:
        self.balancer = balancer
        self.stop = threading.Event()
        self.lock = threading.Lock()
        # (sent at, acknowledged at, key, @@port of the server that took it)
        self.acks: list[tuple[float, float, int, int]] = []
        # (failed at, errno, message)
        self.errors: list[tuple[float, int, str]] = []
        self.threads = [
            threading.Thread(target=self._run, args=(i,), name=f"writer{i}") for i in range(count)
        ]

    def __enter__(self) -> Writers:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        join_threads(self.threads)

    def _run(self, worker: int) -> None:
        n = 0
        deadline = time.monotonic() + 120  # hang guard
        while not self.stop.is_set() and time.monotonic() < deadline:
            try:
                with connect(self.balancer) as conn, conn.cursor() as cur:
                    while not self.stop.is_set() and time.monotonic() < deadline:
                        key = worker * 1_000_000 + n
                        n += 1
                        sent = time.monotonic()
                        cur.execute("INSERT INTO fo VALUES (%s, @@port)", (key,))
                        cur.execute("SELECT @@port")
                        row = cur.fetchone()
                        assert row is not None
                        with self.lock:
                            self.acks.append((sent, time.monotonic(), key, int(row[0])))
            except pymysql.MySQLError as exc:
                if self.stop.is_set():
                    return
                with self.lock:
                    self.errors.append((time.monotonic(), errno_of(exc), str(exc)))
                time.sleep(0.005)

    def sent_after(self, moment: float) -> list[tuple[float, float, int, int]]:
        """Acknowledged writes sent after `moment`."""
        with self.lock:
            return [a for a in self.acks if a[0] > moment]

    def per_worker_after(self, moment: float, port: int) -> collections.Counter[int]:
        """Acknowledged writes sent after `moment` to `port`, per worker."""
        return collections.Counter(
            key // 1_000_000 for _, _, key, p in self.sent_after(moment) if p == port
        )


# -- 1. external promotion ------------------------------------------------------------------------


class PrimaryWatch:
    """A thread that notes when the proxy first elects `name` its primary (monotonic time)."""

    def __init__(self, balancer: BalancerThread, name: str) -> None:
        self.elected_at: float | None = None
        self._stop = threading.Event()

        def run() -> None:
            deadline = time.monotonic() + 60  # hang guard
            while not self._stop.is_set() and time.monotonic() < deadline:
                if primary_name(balancer) == name:
                    self.elected_at = time.monotonic()
                    return
                time.sleep(0.002)

        self._thread = threading.Thread(target=run, name="primary-watch")

    def __enter__(self) -> PrimaryWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        join_threads([self._thread])


@pytest.mark.parametrize("when", ["at_once", "after_down"])
def test_writes_resume_on_a_replica_promoted_after_the_primary_dies(
    mariadb_cluster_factory: MariaDbClusterFactory, when: str
) -> None:
    """`at_once`: the replica is promoted as soon as the primary is dead, so the proxy must
    confirm the old primary down (`fall` failed probes) and find the new one at the same time;
    `after_down`: promoted once the proxy has marked the old primary down, as a failover tool
    that waits for its own checks would."""
    cluster = mariadb_cluster_factory(replicas=2)
    old, new, other = cluster.nodes
    cluster.sql(old, "CREATE TABLE fo (id BIGINT PRIMARY KEY, port INT)")
    cluster.wait_replicated()
    balancer = start(cluster)
    workers = 8
    try:
        with Writers(balancer, workers) as writers, PrimaryWatch(balancer, new.name) as watch:
            wait_until(lambda: len(writers.sent_after(0)) >= 200, "writes on the old primary")
            cluster.kill(old)
            killed_at = time.monotonic()
            if when == "after_down":
                wait_until(
                    lambda: states(balancer)[old.name][0] is HealthState.DOWN,
                    f"{old.name} to be marked down",
                    describe=lambda: states(balancer),
                )
            promote_began = time.monotonic()
            promoted_at = cluster.promote(new, catch_up=True)
            # Every worker writes on the new primary again (how soon: docs/mysql.md; here only
            # a generous hang guard).
            wait_until(
                lambda: all(
                    writers.per_worker_after(killed_at, new.port)[w] >= 3 for w in range(workers)
                ),
                "every writer to write on the promoted server",
                describe=lambda: (writers.per_worker_after(killed_at, new.port), states(balancer)),
            )
        acks = writers.sent_after(killed_at)
        first = min(acked for _, acked, _, port in acks if port == new.port)
        elected = watch.elected_at
        assert elected is not None
        print(
            f"\nfailover ({when}): the promoted server was writable {promoted_at - killed_at:.3f}"
            f" s after the kill ({promoted_at - promote_began:.3f} s after promote() began); "
            f"elected {elected - promoted_at:.3f} s and first write acknowledged "
            f"{first - promoted_at:.3f} s after it was writable"
        )
        assert first - promoted_at < 10.0, "writes did not resume within 10 s"
        # Nothing reached a server that was not the primary: no write was refused as
        # read-only, and every write sent after the kill landed on the new primary.
        refused = [e for e in writers.errors if e[1] in READ_ONLY_ERRORS]
        assert refused == [], refused[:5]
        unexpected = [e for e in writers.errors if e[1] not in CONNECTION_ERRORS]
        assert unexpected == [], unexpected[:5]
        assert {port for _, _, _, port in acks} == {new.port}
        # The writes on the new primary are there, and replicate to the other replica, which
        # the cluster helper pointed at it.
        present = {int(str(r[0])) for r in cluster.sql(new, "SELECT id FROM fo")}
        assert {key for _, _, key, _ in acks} <= present
        cluster.wait_replicated(nodes=[other])
        wait_until(
            lambda: primary_name(balancer) == new.name and eligible(balancer) == [other.name],
            f"{other.name} to be an eligible replica of {new.name}",
            describe=lambda: states(balancer),
        )
    finally:
        balancer.stop()


# -- 2. replica death -----------------------------------------------------------------------------


def test_a_dead_replica_is_marked_down_and_primary_clients_carry_on(
    mariadb_cluster_factory: MariaDbClusterFactory,
) -> None:
    cluster = mariadb_cluster_factory(replicas=2)
    victim, survivor = cluster.replicas
    cluster.sql(cluster.primary, "CREATE TABLE fo (id BIGINT PRIMARY KEY, port INT)")
    balancer = start(cluster)
    try:
        with Writers(balancer, 8) as writers:
            wait_until(lambda: len(writers.sent_after(0)) >= 100, "writes on the primary")
            cluster.kill(victim)
            killed_at = time.monotonic()
            wait_until(
                lambda: states(balancer)[victim.name][0] is HealthState.DOWN,
                f"{victim.name} to be marked down",
                describe=lambda: states(balancer),
            )
            down_at = time.monotonic()
            assert eligible(balancer) == [survivor.name]
            wait_until(lambda: len(writers.sent_after(down_at)) >= 100, "writes after it")
        print(f"\nreplica death: {victim.name} marked down {down_at - killed_at:.3f} s after kill")
        assert writers.errors == []
        assert primary_name(balancer) == cluster.primary.name
        # Back again: it rejoins after `rise` good probes.
        cluster.start_node(victim)
        wait_until(
            lambda: sorted(eligible(balancer)) == sorted([victim.name, survivor.name]),
            f"{victim.name} to be up again",
            describe=lambda: states(balancer),
        )
    finally:
        balancer.stop()


# -- 3. an old primary that comes back ------------------------------------------------------------


def test_an_old_primary_back_read_only_is_not_used_and_back_writable_is_fenced(
    mariadb_cluster_factory: MariaDbClusterFactory,
) -> None:
    cluster = mariadb_cluster_factory(replicas=2)
    old, new, _ = cluster.nodes
    cluster.sql(old, "CREATE TABLE fo (id BIGINT PRIMARY KEY, port INT)")
    cluster.wait_replicated()
    balancer = start(cluster)
    try:
        cluster.kill(old)
        cluster.promote(new)
        wait_until(lambda: primary_name(balancer) == new.name, f"{new.name} to be elected")

        # The demoted old primary starts read-only, replicating from nobody: never a primary
        # (its probes fail with "replication stopped"), and writes stay on the new one.
        cluster.start_node(old, read_only=True)
        wait_until(
            lambda: states(balancer)[old.name][0] is HealthState.DOWN,
            f"{old.name} to be seen and refused",
            describe=lambda: states(balancer),
        )
        with connect(balancer) as conn:
            for key in range(20):
                one(conn, "INSERT INTO fo VALUES (%s, @@port)", (key,))
                assert one(conn, "SELECT @@port") == new.port
        assert primary_name(balancer) == new.name
        assert old.name not in eligible(balancer)

        # Writable again: two servers claim the primary role and nothing tells which one is
        # right (no timeline): both are fenced and new clients are refused, never sent to one.
        cluster.sql(old, "SET GLOBAL read_only = 0")
        wait_until(
            lambda: primary_name(balancer) is None and states(balancer)[old.name][1],
            "split brain to be detected",
            describe=lambda: states(balancer),
        )
        assert states(balancer)[new.name][1]
        # Read-only again: the new primary is elected at once (it never went down).
        cluster.sql(old, "SET GLOBAL read_only = 1")
        wait_until(lambda: primary_name(balancer) == new.name, f"{new.name} to be re-elected")
        with connect(balancer) as conn:
            assert one(conn, "SELECT @@port") == new.port
    finally:
        balancer.stop()


# -- 4. many clients, limits ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def shared_cluster() -> Iterator[MariaDbCluster]:
    """This module's own cluster for the tests that do not change its topology."""
    with MariaDbCluster(replicas=2) as cluster:
        yield cluster


def pool_stats(balancer: BalancerThread) -> list[Any]:
    return balancer.call(lambda: runtime(balancer).stats())


# The clients run in a process of their own: 500 PyMySQL threads in the balancer's process
# would compete with its event loop for the GIL, and the figures would measure that.
CLIENTS_SCRIPT = r"""
import json, sys, threading, time
import pymysql

port, clients, primary_port = (int(a) for a in sys.argv[1:4])
barrier = threading.Barrier(clients)
lock = threading.Lock()
errors, server_ids, spans = [], set(), []

def client(i):
    try:
        barrier.wait(timeout=60)
        began = time.monotonic()
        conn = pymysql.connect(host="127.0.0.1", port=port, user="app", password="app",
                               database="app", connect_timeout=120, read_timeout=120)
        logged_in = time.monotonic()
        with conn, conn.cursor() as cur:
            cur.execute("SELECT %s + 1", (i,))
            assert cur.fetchone()[0] == i + 1
            cur.execute("SELECT CONNECTION_ID(), @@port")
            server_id, at = cur.fetchone()
            assert at == primary_port, at
            cur.execute("SELECT seq FROM seq_1_to_100")
            assert len(cur.fetchall()) == 100
        with lock:
            server_ids.add(server_id)
            spans.append((logged_in - began, time.monotonic() - began))
    except Exception as exc:
        with lock:
            errors.append(repr(exc))

threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
started = time.monotonic()
for t in threads:
    t.start()
for t in threads:
    t.join()
print(json.dumps({"elapsed": time.monotonic() - started, "errors": errors,
                  "server_ids": sorted(server_ids), "spans": spans}))
"""


def test_500_concurrent_clients_share_20_server_connections(
    shared_cluster: MariaDbCluster,
) -> None:
    """Session pooling holds a server connection for a client's whole session: 500 clients
    that arrive at once through a pool of 20 wait their turn at login (the pool's queue, in
    order of arrival) and are all served, on 20 server connections at most."""
    clients = 500
    balancer = start(shared_cluster, pool_size=20)
    try:
        address = balancer.app.mysql_address
        assert address is not None
        done = subprocess.run(
            [
                sys.executable,
                "-c",
                CLIENTS_SCRIPT,
                str(address[1]),
                str(clients),
                str(shared_cluster.primary.port),
            ],
            capture_output=True,
            text=True,
            timeout=240,
            check=False,
        )
        assert done.returncode == 0, done.stderr[-3000:]
        result = json.loads(done.stdout)
        assert result["errors"] == [], result["errors"][:5]
        assert len(result["spans"]) == clients
        server_ids = result["server_ids"]
        assert len(server_ids) <= 20, f"{len(server_ids)} server connections for a pool of 20"
        # The clients' pool profile (PyMySQL's: no multi-statements, docs/mysql.md); the
        # default profile's pool holds the connection the proxy learned the version from.
        created = [s.total_created for s in pool_stats(balancer) if "+no_multi" in s.key]
        assert sum(created) <= 20
        waits = sorted(login for login, _ in result["spans"])
        print(
            f"\n{clients} clients through pool_size 20: {result['elapsed']:.2f} s in all, "
            f"{len(server_ids)} server connections; wait for login p50 "
            f"{waits[len(waits) // 2]:.3f} s, p99 {waits[len(waits) * 99 // 100]:.3f} s, "
            f"max {waits[-1]:.3f} s"
        )
    finally:
        balancer.stop()


@pytest.mark.parametrize("where", ["general", "user"])
def test_max_client_connections_refuses_the_next_client_clearly(
    shared_cluster: MariaDbCluster, where: str
) -> None:
    limit = "max_client_connections = 10"
    balancer = start(
        shared_cluster,
        general=limit if where == "general" else "",
        user_extra=limit if where == "user" else "",
    )
    held: list[pymysql.Connection[Any]] = []
    try:
        held.extend(connect(balancer) for _ in range(10))
        with pytest.raises(pymysql.err.OperationalError) as refused:
            connect(balancer)
        assert refused.value.args[0] == 1040
        message = refused.value.args[1]
        assert "Too many connections" in message
        assert "max_client_connections = 10" in message
        if where == "user":
            assert 'user "app"' in message
        # The ten are untouched; one leaves, and the next client gets in.
        assert [one(conn, "SELECT 1") for conn in held] == [1] * 10
        held.pop().close()
        wait_until(
            lambda: balancer.call(lambda: mysql_service(balancer).limits.count) == 9, "a leave"
        )
        with connect(balancer) as conn:
            assert one(conn, "SELECT 'in'") == "in"
    finally:
        for conn in held:
            conn.close()
        balancer.stop()


def test_a_client_beyond_the_pool_waits_then_gets_a_pool_timeout(
    shared_cluster: MariaDbCluster,
) -> None:
    """Session pooling: the pool's size is the number of concurrent sessions; the next client
    waits for one to end (up to query_wait_timeout) and is refused with a message that names
    the pool and what to change."""
    balancer = start(shared_cluster, pool_size=2, extra='query_wait_timeout = "500ms"')
    held = [connect(balancer) for _ in range(2)]
    try:
        with pytest.raises(pymysql.err.OperationalError) as refused:
            connect(balancer)
        assert refused.value.args[0] == 1040
        message = refused.value.args[1]
        assert "app/app+no_multi_statements@primary" in message  # PyMySQL's pool profile
        assert "pool_size 2" in message
        assert "query_wait_timeout" in message
        # A client that arrives while a session ends gets its connection.
        waiting = threading.Thread(target=lambda: connect(balancer).close())
        waiting.start()
        wait_until(
            lambda: sum(s.waiting for s in pool_stats(balancer)) == 1,
            "the third client to wait",
            describe=lambda: pool_stats(balancer),
        )
        held.pop().close()
        join_threads([waiting])
    finally:
        for conn in held:
            conn.close()
        balancer.stop()


# -- 5. misbehaving clients after login -----------------------------------------------------------


def read_until_closed(sock: socket.socket) -> bytes:
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


@pytest.mark.parametrize(
    ("name", "garbage", "expect"),
    [
        ("16 MB claim", b"\xff\xff\xff\x00" + b"A" * 100, b"exceeds the limit"),
        ("empty command", b"\x00\x00\x00\x00", b"empty command packet"),
        ("garbage", b"\x05\x00\x00\x01hello world, not mysql", b"out of order"),
    ],
)
def test_garbage_after_login_gets_an_error_and_a_closed_socket(
    shared_cluster: MariaDbCluster, name: str, garbage: bytes, expect: bytes
) -> None:
    balancer = start(shared_cluster, general='max_message_size = "8MB"')
    try:
        with connect(balancer) as bystander, connect(balancer) as victim:
            # A bystander with a statement in flight while the victim misbehaves.
            in_flight: list[Any] = []
            sleeper = threading.Thread(
                target=lambda: in_flight.append(one(bystander, "SELECT SLEEP(0.5), 'ok'"))
            )
            sleeper.start()
            assert one(victim, "SELECT 1") == 1
            sock = victim._sock
            assert sock is not None
            sock.settimeout(10)  # a hang guard: the answer comes at once or never
            sock.sendall(garbage)
            answer = read_until_closed(sock)
            print(f"\n{name}: {answer!r}")
            assert answer[4] == 0xFF, answer  # an ERR packet, then the connection closed
            assert expect in answer
            join_threads([sleeper])
            assert in_flight == [0]
            assert one(bystander, "SELECT 'unaffected'") == "unaffected"
        with connect(balancer) as conn:
            assert one(conn, "SELECT 'fresh'") == "fresh"
    finally:
        balancer.stop()
