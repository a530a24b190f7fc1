"""A statement prepared while a transaction changed search_path is never shared with a client
whose search_path differs.

dbbalancer shares server-side prepared statements between clients whose settings parse a text
alike (prepared.server_statement_name). Inside a transaction a setting may differ from the
session's: SET LOCAL, set_config(..., true), or a SET not yet committed. A statement parsed
then names other tables; another client binding it would read them (a silent wrong answer).
One server connection (pool_size = 1) makes the second client get the very connection.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg.conninfo import make_conninfo

from dbbalancer.config import parse_config
from dbbalancer.testing.balancer import BalancerThread
from dbbalancer.testing.configs import cluster_config
from dbbalancer.testing.pgcluster import PgCluster

SCHEMAS = ("pc_a", "pc_b")


@pytest.fixture(scope="module")
def balancer(pg_cluster: PgCluster) -> Iterator[BalancerThread]:
    for schema in SCHEMAS:
        pg_cluster.sql(
            pg_cluster.primary,
            f"CREATE SCHEMA IF NOT EXISTS {schema}; "
            f"DROP TABLE IF EXISTS {schema}.pc_where; "
            f"CREATE TABLE {schema}.pc_where AS SELECT '{schema}'::text AS x; "
            f"GRANT USAGE ON SCHEMA {schema} TO PUBLIC; "
            f"GRANT SELECT ON {schema}.pc_where TO PUBLIC",
        )
    config = cluster_config(pg_cluster, mode="transaction", pool_size=1)
    balancer = BalancerThread(parse_config(config)).start()
    try:
        yield balancer
    finally:
        balancer.stop()


def connect(balancer: BalancerThread) -> psycopg.Connection[tuple[Any, ...]]:
    host, port = balancer.pg_address
    conninfo = make_conninfo(
        host=host,
        port=str(port),
        user="app",
        password="app",
        dbname="main",
        options="-c search_path=pc_a",
    )
    return psycopg.connect(conninfo, autocommit=True, prepare_threshold=0)


def where(conn: psycopg.Connection[tuple[Any, ...]]) -> object:
    row = conn.execute("SELECT x FROM pc_where").fetchone()
    assert row is not None
    return row[0]


@pytest.mark.parametrize(
    "change",
    [
        "SET LOCAL search_path TO pc_b",
        "SELECT set_config('search_path', 'pc_b', true)",
        "SET search_path TO pc_b",  # for the session, but only once the transaction commits
    ],
)
def test_a_statement_parsed_under_another_search_path_is_not_shared(
    balancer: BalancerThread, change: str
) -> None:
    with connect(balancer) as first, connect(balancer) as second:
        first.execute("BEGIN")
        first.execute(change)
        assert where(first) == "pc_b"
        first.execute("ROLLBACK")
        # The second client's search_path is pc_a: it must read pc_a's table.
        assert where(second) == "pc_a"
        assert where(first) == "pc_a"  # rolled back: the first client's is pc_a again


@pytest.mark.parametrize(
    "change",
    [
        "SET LOCAL DateStyle TO 'ISO, DMY'",
        "SELECT set_config('DateStyle', 'ISO, DMY', true)",
        "SET DateStyle TO 'ISO, DMY'",
    ],
)
def test_a_literal_folded_under_another_datestyle_is_not_shared(
    balancer: BalancerThread, change: str
) -> None:
    query = "SELECT '03/04/2024'::date::text"
    with connect(balancer) as first, connect(balancer) as second:
        first.execute("BEGIN")
        first.execute(change)
        assert first.execute(query).fetchone() == ("2024-04-03",)
        first.execute("ROLLBACK")
        assert second.execute(query).fetchone() == ("2024-03-04",)
        assert first.execute(query).fetchone() == ("2024-03-04",)


def test_a_statement_parsed_again_under_new_settings_keeps_the_old_name_clean(
    pg_cluster: PgCluster,
) -> None:
    """A client prepares a statement, changes DateStyle, and binds it on a connection that does
    not have it: it is parsed there under the new DateStyle, so it must get a name of the new
    settings. Under its old shared name, a client with the old DateStyle would be handed it.
    Two server connections; the first client's statement exists on only one of them."""
    config = cluster_config(pg_cluster, mode="transaction", pool_size=2)
    balancer = BalancerThread(parse_config(config)).start()
    query = "SELECT '07/08/2024'::date::text"
    try:
        with connect(balancer) as first, connect(balancer) as holder, connect(balancer) as third:
            first.execute(query)  # prepared under MDY on connection A (the pool's only one)
            holder.execute("BEGIN")
            holder.execute("SELECT 1")  # holds A: the pool hands out its warmest connection
            first.execute("SET DateStyle TO 'ISO, DMY'")
            # The first client's statement runs on the other connection: parsed again there,
            # under DMY (PostgreSQL would keep the MDY folding of its first parse: the limit
            # docs/postgres.md states).
            assert first.execute(query).fetchone() in {("2024-08-07",), ("2024-07-08",)}
            # A client with the default DateStyle, on that other connection (the holder still
            # holds the first), reads it as MDY.
            for _ in range(2):
                assert third.execute(query).fetchone() == ("2024-07-08",)
            holder.execute("COMMIT")
    finally:
        balancer.stop()
