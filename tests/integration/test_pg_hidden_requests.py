"""A client's next statement arrives while the balancer's own hidden requests are in flight.

At the end of a unit of work the balancer may ask the server something of its own before it lets
the connection go: the primary's WAL position after a write (read-your-writes) or, when in doubt,
the settings the server kept. A client that answers ReadyForQuery at once sends its next statement
while that hidden request is still running; the statement waits, and is sent on the same
connection when the client is pinned. That statement may itself change the session (release the
pin, set a setting): its effects count only once the server has answered it, never at the end of
the hidden request it waited behind.

Here every answer of the primary is held 0.2 s by a relay on loopback, so the hidden request is
always in flight when the next statement arrives (the race the differential test hit only now
and then under load). Each sequence must complete, and answer as PostgreSQL does.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg.conninfo import make_conninfo

from dbbalancer.config import parse_config
from dbbalancer.testing.balancer import BalancerThread
from dbbalancer.testing.configs import cluster_config
from dbbalancer.testing.delayproxy import DelayProxy
from dbbalancer.testing.pgcluster import PgCluster

HANG_GUARD = 20.0  # seconds; each statement takes well under one unless something is stuck

# (name, statements, what the last statement returns)
SEQUENCES = [
    (
        "lock_then_unlock_all",
        ["SELECT pg_advisory_lock(8101)", "SELECT pg_advisory_unlock_all()", "SELECT 1"],
        [(1,)],
    ),
    (
        "lock_twice_unlock_thrice",
        [
            "SELECT pg_advisory_lock(8102)",
            "SELECT pg_advisory_lock(8102)",
            "SELECT pg_advisory_unlock(8102)",
            "SELECT pg_advisory_unlock(8102)",
            "SELECT pg_advisory_unlock(8102)",
        ],
        [(False,)],
    ),
    (
        "prepare_then_deallocate_all",
        ["PREPARE hr1 AS SELECT 1", "DEALLOCATE ALL", "SELECT 2"],
        [(2,)],
    ),
    (
        "temp_table_then_discard",
        [
            "CREATE TEMP TABLE hr_t (i int)",
            "INSERT INTO hr_t VALUES (1)",
            "DISCARD TEMP",
            "SELECT 3",
        ],
        [(3,)],
    ),
    (
        "write_then_set",
        ["CREATE TEMP TABLE hr_s (i int)", "SET search_path = public, pg_temp", "SHOW search_path"],
        [("public, pg_temp",)],
    ),
]


@pytest.fixture(scope="module")
def balancer(pg_cluster: PgCluster) -> Iterator[BalancerThread]:
    primary = pg_cluster.primary
    with DelayProxy((primary.host, primary.port), delay=0.2) as relay:
        config = cluster_config(
            pg_cluster,
            mode="transaction",
            pool_size=4,
            split=True,
            addresses={primary.name: relay.address()},
            extra="read_your_writes = true\nmax_replica_lag = []\n",
        )
        balancer = BalancerThread(parse_config(config)).start()
        try:
            yield balancer
        finally:
            balancer.stop()


def run(balancer: BalancerThread, statements: list[str], prepare: bool) -> list[Any]:
    host, port = balancer.pg_address
    conninfo = make_conninfo(host=host, port=str(port), user="app", password="app", dbname="main")
    with psycopg.connect(
        conninfo, autocommit=True, prepare_threshold=0 if prepare else None
    ) as conn:
        rows: list[Any] = []
        for statement in statements:
            stuck: list[str] = []

            def cut(conn: Any = conn, stuck: list[str] = stuck) -> None:
                # Say what the balancer is doing, then free the client: shut its socket down.
                stuck.append(balancer.describe())
                sock = socket.socket(fileno=os.dup(conn.fileno()))
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()

            guard = threading.Timer(HANG_GUARD, cut)
            guard.start()
            try:
                cur = conn.execute(statement)
                rows = cur.fetchall() if cur.description is not None else []
            except psycopg.OperationalError:
                if not stuck:
                    raise
            finally:
                guard.cancel()
            if stuck:
                pytest.fail(
                    f"{statement!r} did not return within {HANG_GUARD:g} s; "
                    f"the balancer:\n{stuck[0]}"
                )
        return rows


@pytest.mark.parametrize("prepare", [False, True], ids=["simple", "prepared"])
@pytest.mark.parametrize(
    ("statements", "last"), [(s, r) for _, s, r in SEQUENCES], ids=[n for n, _, _ in SEQUENCES]
)
def test_statement_behind_a_hidden_request(
    balancer: BalancerThread, statements: list[str], last: list[Any], prepare: bool
) -> None:
    assert run(balancer, statements, prepare) == last


def test_a_client_leaving_during_the_position_query_leaves_nothing_to_the_next(
    pg_cluster: PgCluster,
) -> None:
    """A client writes and leaves at once, while the read-your-writes position query of its
    unit is still in flight (the relay holds the answer 0.2 s): the next client, on the same
    and only pooled connection, gets its own answers, never that query's."""
    primary = pg_cluster.primary
    with DelayProxy((primary.host, primary.port), delay=0.2) as relay:
        config = cluster_config(
            pg_cluster,
            mode="transaction",
            pool_size=1,
            split=True,
            addresses={primary.name: relay.address()},
            extra="read_your_writes = true\nmax_replica_lag = []\n",
        )
        with BalancerThread(parse_config(config)) as balancer:
            host, port = balancer.pg_address
            conninfo = make_conninfo(
                host=host, port=str(port), user="app", password="app", dbname="main"
            )
            with psycopg.connect(conninfo, autocommit=True) as conn:
                conn.execute("CREATE TABLE IF NOT EXISTS hr_quit (i int)")
            for i in range(3):
                quitter = psycopg.connect(conninfo, autocommit=True)
                quitter.execute("INSERT INTO hr_quit VALUES (%s)", (i,))
                quitter.close()
                with psycopg.connect(conninfo, autocommit=True) as conn:
                    conn.execute("SET statement_timeout = '20s'")
                    row = conn.execute("SELECT 1000 + %s::int", (i,)).fetchone()
                    assert row == (1000 + i,)
