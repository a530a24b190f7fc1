"""After an error in an extended-protocol pipeline the server skips every message up to the Sync.

A Parse that was skipped created no statement; dbbalancer's record of the server connection's
statements must not count it, or the next client that prepares the same text on that connection
has its Parse answered locally and its Bind fails ("prepared statement ... does not exist").
One server connection (pool_size = 1) makes sure the next client gets that very connection.
"""

from __future__ import annotations

from collections.abc import Iterator

import psycopg
import pytest
from psycopg.conninfo import make_conninfo

from dbbalancer.config import parse_config
from dbbalancer.testing.balancer import BalancerThread
from dbbalancer.testing.configs import cluster_config
from dbbalancer.testing.pgcluster import PgCluster


@pytest.fixture(scope="module")
def balancer(pg_cluster: PgCluster) -> Iterator[BalancerThread]:
    config = cluster_config(pg_cluster, mode="transaction", pool_size=1)
    balancer = BalancerThread(parse_config(config)).start()
    try:
        yield balancer
    finally:
        balancer.stop()


def connect(balancer: BalancerThread) -> psycopg.Connection[tuple[object, ...]]:
    host, port = balancer.pg_address
    conninfo = make_conninfo(host=host, port=str(port), user="app", password="app", dbname="main")
    return psycopg.connect(conninfo, autocommit=True, prepare_threshold=0)


def backend_pid(conn: psycopg.Connection[tuple[object, ...]]) -> object:
    row = conn.execute("SELECT pg_backend_pid()").fetchone()
    assert row is not None
    return row[0]


@pytest.mark.parametrize(("text", "tag"), [("SELECT 4242", "SELECT 1"), ("COMMIT", "COMMIT")])
def test_a_parse_skipped_after_an_error_is_not_counted(
    balancer: BalancerThread, text: str, tag: str
) -> None:
    with connect(balancer) as first:
        pid = backend_pid(first)
        with pytest.raises(psycopg.errors.DivisionByZero), first.pipeline():  # noqa: PT012
            first.execute("SELECT 1/0")
            first.execute(text)  # Parse, Bind, Execute: skipped by the server
    with connect(balancer) as second:
        assert backend_pid(second) == pid  # the same server connection
        cur = second.execute(text)
        assert cur.statusmessage == tag


def test_a_statement_parsed_again_after_a_failed_deallocate_all_is_not_counted(
    balancer: BalancerThread,
) -> None:
    """DEALLOCATE ALL in a transaction that then fails leaves dbbalancer in doubt: it closes what
    the DEALLOCATE would have dropped, which includes a statement parsed again after it. The
    record of the connection must not count that one either."""
    with connect(balancer) as first:
        pid = backend_pid(first)
        first.execute("SELECT 4343")
        first.execute("BEGIN")
        first.execute("DEALLOCATE ALL")
        first.execute("SELECT 4343")  # parsed again on the same connection
        with pytest.raises(psycopg.errors.DivisionByZero):
            first.execute("SELECT 1/0")
        first.execute("ROLLBACK")
    with connect(balancer) as second:
        assert backend_pid(second) == pid
        assert second.execute("SELECT 4343").fetchone() == (4343,)
