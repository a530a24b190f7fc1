"""Property tests for GTID positions (mysql.gtid): text round trips, and `covers` against the
sets of transactions the positions stand for."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from dbbalancer.mysql.gtid import MariaDbGtidPos, MySqlGtidSet

# A few domains and UUIDs, small numbers: collisions (the interesting cases) stay likely.
UUIDS = [
    "3e11fa47-71ca-11e1-9e33-c80aa9429562",
    "3e11fa47-71ca-11e1-9e33-c80aa9429563",
    "00000000-0000-0000-0000-000000000001",
]
TAGS = ["", "", "batch", "x_1"]

mariadb_positions = st.dictionaries(
    st.integers(0, 3), st.tuples(st.integers(0, 3), st.integers(0, 12)), max_size=4
).map(lambda d: MariaDbGtidPos.parse(",".join(f"{k}-{s}-{n}" for k, (s, n) in d.items())))

# A MySQL GTID set as the transactions it holds: (uuid, tag, id) triples.
transactions = st.frozensets(
    st.tuples(st.sampled_from(UUIDS), st.sampled_from(TAGS), st.integers(1, 20)), max_size=30
)


def text_of(held: frozenset[tuple[str, str, int]]) -> str:
    """Each transaction as its own element, in any order: the parser must merge them."""
    return ",".join(f"{u}:{t}:{n}" if t else f"{u}:{n}" for u, t, n in sorted(held))


def expand(gtids: MySqlGtidSet) -> frozenset[tuple[str, str, int]]:
    return frozenset(
        (uuid, tag, n)
        for (uuid, tag), intervals in gtids.sources
        for a, b in intervals
        for n in range(a, b + 1)
    )


def expand_mariadb(pos: MariaDbGtidPos) -> frozenset[tuple[int, int]]:
    # In strict mode a domain's stream is ordered: sequence n means 1..n were applied.
    return frozenset((d, n) for d, _, seq in pos.gtids for n in range(1, seq + 1))


@given(mariadb_positions)
def test_mariadb_round_trip(pos: MariaDbGtidPos) -> None:
    assert MariaDbGtidPos.parse(str(pos)) == pos


@given(mariadb_positions, mariadb_positions)
def test_mariadb_covers_agrees_with_inclusion(a: MariaDbGtidPos, b: MariaDbGtidPos) -> None:
    domains_ok = {d for d, _, _ in b.gtids} <= {d for d, _, _ in a.gtids}
    assert a.covers(b) is (domains_ok and expand_mariadb(b) <= expand_mariadb(a))
    assert a.covers(a)


@given(mariadb_positions, mariadb_positions, mariadb_positions)
def test_mariadb_covers_is_transitive(
    a: MariaDbGtidPos, b: MariaDbGtidPos, c: MariaDbGtidPos
) -> None:
    if a.covers(b) and b.covers(c):
        assert a.covers(c)


@given(transactions)
def test_mysql_round_trip_and_normal_form(held: frozenset[tuple[str, str, int]]) -> None:
    gtids = MySqlGtidSet.parse(text_of(held))
    assert expand(gtids) == held
    assert MySqlGtidSet.parse(str(gtids)) == gtids
    assert str(MySqlGtidSet.parse(str(gtids))) == str(gtids)


@given(transactions, transactions)
def test_mysql_covers_is_set_inclusion(
    a: frozenset[tuple[str, str, int]], b: frozenset[tuple[str, str, int]]
) -> None:
    sa, sb = MySqlGtidSet.parse(text_of(a)), MySqlGtidSet.parse(text_of(b))
    assert sa.covers(sb) is (b <= a)
    assert sa.covers(sa)
    union = MySqlGtidSet.parse(text_of(a | b))
    assert union.covers(sa)
    assert union.covers(sb)


@given(transactions, transactions, transactions)
def test_mysql_covers_is_transitive(
    x: frozenset[tuple[str, str, int]],
    y: frozenset[tuple[str, str, int]],
    z: frozenset[tuple[str, str, int]],
) -> None:
    # Nested by construction, so the premise holds; then a random triple as well.
    sa, sb, sc = (MySqlGtidSet.parse(text_of(s)) for s in (x | y | z, y | z, z))
    assert sa.covers(sb)
    assert sb.covers(sc)
    assert sa.covers(sc)
    sx, sy, sz = (MySqlGtidSet.parse(text_of(s)) for s in (x, y, z))
    if sx.covers(sy) and sy.covers(sz):
        assert sx.covers(sz)
