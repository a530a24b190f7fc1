"""Property tests for PostgreSQL's position (postgres.lsn.Lsn) against plain integer maths.

The core only asks `covers` and `bytes_behind`; for LSNs both must say exactly what the integer
comparisons and subtraction they replaced said, so that routing does not change.
"""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from dbbalancer.postgres.lsn import Lsn

offsets = st.integers(0, 2**64 - 1)


@given(offsets, offsets)
def test_lsn_matches_integer_maths(a: int, b: int) -> None:
    assert Lsn(a).covers(Lsn(b)) is (a >= b)
    assert Lsn(a).bytes_behind(Lsn(b)) == max(0, b - a)
    assert (Lsn(a).bytes_behind(Lsn(b)) == 0) is Lsn(a).covers(Lsn(b))
    assert (Lsn(a) < Lsn(b)) is (a < b)


@given(offsets, offsets, offsets)
def test_lsn_covers_is_transitive(a: int, b: int, c: int) -> None:
    if Lsn(a).covers(Lsn(b)) and Lsn(b).covers(Lsn(c)):
        assert Lsn(a).covers(Lsn(c))
