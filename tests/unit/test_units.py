"""Durations, sizes, addresses and lag limits as written in dbbalancer.toml."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dbbalancer.config import Address, LagLimit
from dbbalancer.config.units import (
    DURATION_UNITS,
    UnitError,
    format_duration,
    format_size,
    parse_address,
    parse_duration,
    parse_lag_limit,
    parse_size,
)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("500ms", 0.5),
        ("1s", 1.0),
        ("1.5s", 1.5),
        ("2m", 120.0),
        ("1h", 3600.0),
        ("250us", 0.00025),
        ("1d", 86400.0),
        ("0", 0.0),
        ("0s", 0.0),
        (" 5 s ", 5.0),
        (".5s", 0.5),
    ],
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


def test_bare_number_duration_says_which_units_to_write() -> None:
    with pytest.raises(UnitError) as caught:
        parse_duration("5")
    assert caught.value.hint == "write '5s' or '500ms'"
    assert "'5' has no unit" in str(caught.value)


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("5 sec", "unknown unit 'sec'"),
        ("5M", "unknown unit 'M'"),
        ("-1s", "negative"),
        ("fast", "not a duration"),
        ("", "not a duration"),
        ("1..5s", "not a duration"),
    ],
)
def test_bad_durations(text: str, fragment: str) -> None:
    with pytest.raises(UnitError) as caught:
        parse_duration(text)
    assert isinstance(caught.value, ValueError)
    assert fragment in caught.value.message
    assert caught.value.hint


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("512B", 512),
        ("16kB", 16 * 1024),
        ("16KB", 16 * 1024),
        ("16KiB", 16 * 1024),
        ("16MB", 16 * 1024**2),
        ("16MiB", 16 * 1024**2),
        ("16mb", 16 * 1024**2),
        ("1GB", 1024**3),
        ("1GiB", 1024**3),
        ("1.5GB", 3 * 512 * 1024**2),
        ("4096", 4096),
        (4096, 4096),
        (0, 0),
    ],
)
def test_parse_size(text: str | int, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("16 parsecs", "unknown unit 'parsecs'"),
        ("16M", "unknown unit 'M'"),
        ("1.5B", "not a whole number of bytes"),
        ("-1kB", "negative"),
        (-1, "negative"),
        ("big", "not a size"),
    ],
)
def test_bad_sizes(text: str | int, fragment: str) -> None:
    with pytest.raises(UnitError) as caught:
        parse_size(text)
    assert fragment in caught.value.message
    assert caught.value.hint


@pytest.mark.parametrize(
    ("text", "address", "rendered"),
    [
        ("127.0.0.1:6432", Address("127.0.0.1", 6432), "127.0.0.1:6432"),
        ("localhost:6432", Address("localhost", 6432), "localhost:6432"),
        ("[::1]:6432", Address("::1", 6432), "[::1]:6432"),
        ("[0:0::1]:1", Address("::1", 1), "[::1]:1"),
        ("db-1.example.internal:65535", Address("db-1.example.internal", 65535), None),
    ],
)
def test_parse_address(text: str, address: Address, rendered: str | None) -> None:
    assert parse_address(text) == address
    assert str(address) == (rendered or text)


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("localhost", "no port"),
        (":6432", "no host"),
        ("::1:6432", "without brackets"),
        ("[::1]6432", "not an address"),
        ("[nope]:6432", "invalid IPv6"),
        ("host:port", "invalid port"),
        ("host:70000", "out of range"),
        ("host:0", "out of range"),
        ("bad host:1", "invalid host name"),
    ],
)
def test_bad_addresses(text: str, fragment: str) -> None:
    with pytest.raises(UnitError) as caught:
        parse_address(text)
    assert fragment in caught.value.message
    assert caught.value.hint


def test_ipv6_without_brackets_hint_shows_the_fix() -> None:
    with pytest.raises(UnitError) as caught:
        parse_address("::1:6432")
    assert caught.value.hint == "put the IPv6 address in brackets: '[::1]:6432'"


def test_port_zero_only_when_allowed() -> None:
    assert parse_address("127.0.0.1:0", allow_port_zero=True) == Address("127.0.0.1", 0)
    with pytest.raises(UnitError, match="1 to 65535"):
        parse_address("127.0.0.1:0")


@pytest.mark.parametrize(
    ("value", "limit"),
    [
        ("1s", LagLimit(max_seconds=1.0)),
        ("16MB", LagLimit(max_bytes=16 * 1024**2)),
        (0, LagLimit(max_seconds=0.0)),
        (["500ms", "1MB"], LagLimit(max_seconds=0.5, max_bytes=1024**2)),
        ([], LagLimit()),
    ],
)
def test_parse_lag_limit(value: str | int | list[str], limit: LagLimit) -> None:
    assert parse_lag_limit(value) == limit


@pytest.mark.parametrize(
    ("value", "fragment"),
    [(["1s", "2s"], "two durations"), (["1MB", "2MB"], "two sizes"), ("5", "no unit")],
)
def test_bad_lag_limits(value: str | list[str], fragment: str) -> None:
    with pytest.raises(UnitError, match=fragment):
        parse_lag_limit(value)


def test_lag_limit_renders_both_dimensions() -> None:
    assert str(LagLimit(max_seconds=1.5, max_bytes=16 * 1024**2)) == "1500ms and 16MB"
    assert str(LagLimit()) == "unlimited"


# --- round trips --------------------------------------------------------------------------


@given(st.integers(min_value=0, max_value=10**12), st.sampled_from(sorted(DURATION_UNITS)))
def test_duration_with_any_unit_is_exact(count: int, unit: str) -> None:
    expected = {"us": count / 10**6, "ms": count / 1000, "s": float(count)}.get(
        unit, float(count * int(DURATION_UNITS[unit]))
    )
    assert parse_duration(f"{count}{unit}") == expected


@given(st.floats(min_value=0, max_value=1e12, allow_nan=False, allow_infinity=False))
def test_format_duration_round_trips(seconds: float) -> None:
    assert parse_duration(format_duration(seconds)) == seconds


@given(st.integers(min_value=0, max_value=2**50))
def test_format_size_round_trips(size: int) -> None:
    text = format_size(size)
    assert parse_size(text) == size
    assert parse_size(text.lower()) == size


@given(
    st.integers(min_value=0, max_value=10**9),
    st.sampled_from([("B", 1), ("kB", 1024), ("KiB", 1024), ("MB", 1024**2), ("GiB", 1024**3)]),
)
def test_size_with_any_unit(count: int, unit: tuple[str, int]) -> None:
    suffix, multiplier = unit
    assert parse_size(f"{count}{suffix}") == count * multiplier


@given(
    st.one_of(
        st.ip_addresses(v=4).map(str),
        st.ip_addresses(v=6).map(str),
        st.from_regex(r"[a-z][a-z0-9-]{0,20}[a-z0-9](\.[a-z][a-z0-9]{0,10}){0,3}", fullmatch=True),
    ),
    st.integers(min_value=1, max_value=65535),
)
def test_address_round_trips(host: str, port: int) -> None:
    address = Address(host, port)
    assert parse_address(str(address)) == address
