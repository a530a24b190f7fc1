"""The boundary scanners used on the session-pooling fast path."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dbbalancer.postgres import codec
from dbbalancer.postgres.codec import ProtocolError
from dbbalancer.postgres.stream import BoundaryScanner, FrontendScanner

CLIENT_MESSAGES = [
    codec.Query("SELECT 1").encode(),
    codec.Parse("s", "SELECT $1", (23,)).encode(),
    codec.Bind("", "s", (), (b"1",), ()).encode(),
    codec.Execute("", 0).encode(),
    codec.Sync().encode(),
    codec.CopyData(b"x" * 300).encode(),
]


def split_points(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    chunks, last = [], 0
    for p in [*points, len(data)]:
        chunks.append(data[last:p])
        last = p
    return [c for c in chunks if c]


@given(
    picks=st.lists(st.integers(0, len(CLIENT_MESSAGES) - 1), min_size=1, max_size=12),
    cuts=st.lists(st.integers(0, 10_000), max_size=8),
)
def test_frontend_scanner_counts_whatever_the_chunking(picks: list[int], cuts: list[int]) -> None:
    stream = b"".join(CLIENT_MESSAGES[i] for i in picks)
    scanner = FrontendScanner(1 << 20)
    for chunk in split_points(stream, cuts):
        assert scanner.feed(chunk) is None
    expected = sum(1 for i in picks if CLIENT_MESSAGES[i][:1] in (b"Q", b"S"))
    assert scanner.expected == expected
    assert scanner.at_boundary
    last_kind = next(
        (CLIENT_MESSAGES[i][:1] for i in reversed(picks) if CLIENT_MESSAGES[i][:1] != b"d"), b""
    )
    assert scanner.unsynced == (last_kind in (b"P", b"B", b"E"))


@given(cut=st.integers(1, 30))
def test_frontend_scanner_finds_terminate(cut: int) -> None:
    query = codec.Query("SELECT 1").encode()
    stream = query + codec.Terminate().encode()
    scanner = FrontendScanner(1 << 20)
    first, second = stream[:cut], stream[cut:]
    at = scanner.feed(first)
    if at is None:
        at = scanner.feed(second)
        assert at == len(query) - len(first)
    else:
        assert at == len(query)


def test_frontend_scanner_refuses_huge_lengths() -> None:
    with pytest.raises(ProtocolError, match="length"):
        FrontendScanner(1 << 20).feed(b"Q\x7f\xff\xff\xffSELECT")


@given(cuts=st.lists(st.integers(0, 1000), max_size=6))
def test_boundary_scanner_sees_every_ready(cuts: list[int]) -> None:
    ready = [codec.ReadyForQuery(s).encode() for s in (b"I", b"T", b"E")]
    rows = codec.DataRow((b"a" * 50, None)).encode()
    stream = rows + ready[0] + rows + rows + ready[1] + ready[2]
    scanner = BoundaryScanner(1 << 20)
    total = sum(scanner.feed(chunk) for chunk in split_points(stream, cuts))
    assert total == 3
    assert scanner.last_status == b"E"
    assert scanner.at_boundary
