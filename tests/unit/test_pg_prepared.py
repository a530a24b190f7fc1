"""Statement renaming for transaction pooling, and the per-connection statement cache."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dbbalancer.postgres import codec
from dbbalancer.postgres.codec import ProtocolError, parse_frame
from dbbalancer.postgres.prepared import (
    StatementCache,
    bind_statement,
    close_statement,
    make_parse,
    parse_fields,
    rename_target,
    server_statement_name,
    target_name,
    with_name,
)

names = st.text(
    alphabet=st.characters(blacklist_characters="\0", blacklist_categories=("Cs",)), max_size=20
)


@given(name=names, query=names, types=st.lists(st.integers(0, 2**32 - 1), max_size=4))
def test_parse_fields_round_trip(name: str, query: str, types: list[int]) -> None:
    frame = parse_frame(codec.Parse(name, query, tuple(types)).encode())
    got_name, got_query, rest = parse_fields(frame)
    assert (got_name, got_query) == (name, query)
    rebuilt = parse_frame(make_parse("dbb_x", got_query, rest))
    assert codec.decode_frontend(rebuilt) == codec.Parse("dbb_x", query, tuple(types))


@given(portal=names, statement=names, new=names)
def test_bind_rename_keeps_everything_else(portal: str, statement: str, new: str) -> None:
    original = codec.Bind(portal, statement, (1, 0), (b"\x00\x01", None), (1,))
    frame = parse_frame(original.encode())
    start, end = bind_statement(frame)
    assert frame.data[start:end].decode() == statement
    renamed = codec.decode_frontend(parse_frame(with_name(frame, start, end, new)))
    assert renamed == codec.Bind(portal, new, (1, 0), (b"\x00\x01", None), (1,))


@pytest.mark.parametrize("message", [codec.Describe(b"S", "s1"), codec.Close(b"S", "s1")])
def test_describe_and_close_rename(message: codec.Describe | codec.Close) -> None:
    frame = parse_frame(message.encode())
    assert target_name(frame) == (b"S", "s1")
    renamed = codec.decode_frontend(parse_frame(rename_target(frame, "dbb_1")))
    assert renamed == type(message)(b"S", "dbb_1")


def test_malformed_messages_raise_protocol_error() -> None:
    with pytest.raises(ProtocolError):
        parse_fields(codec.Frame(b"P", b"P\x00\x00\x00\x07ab"))
    with pytest.raises(ProtocolError):
        bind_statement(codec.Frame(b"B", b"B\x00\x00\x00\x06a"))
    with pytest.raises(ProtocolError):
        target_name(codec.Frame(b"D", b"D\x00\x00\x00\x04"))


def test_server_name_depends_on_text_and_types() -> None:
    a = server_statement_name("SELECT $1", b"\x00\x00")
    assert a == server_statement_name("SELECT $1", b"\x00\x00")
    assert a != server_statement_name("SELECT $1 ", b"\x00\x00")
    assert a != server_statement_name("SELECT $1", b"\x00\x01\x00\x00\x00\x17")
    assert a.startswith("dbb_")


def test_cache_evicts_least_recently_used() -> None:
    cache = StatementCache(2)
    assert cache.add("a") == []
    assert cache.add("b") == []
    assert cache.touch("a")
    assert cache.add("c") == ["b"]
    assert "a" in cache
    assert "c" in cache
    assert "b" not in cache
    cache.discard("a")
    assert len(cache) == 1
    assert not cache.touch("a")


def test_cache_keeps_a_statement_whose_close_did_not_run() -> None:
    cache = StatementCache(2)
    cache.add("a")
    cache.add("b")
    assert cache.add("c") == ["a"]
    cache.keep("a")  # its Close was skipped: it is still on the server, and goes first next time
    assert "a" in cache
    assert cache.add("d") == ["a", "b"]


def test_close_statement_message() -> None:
    assert codec.decode_frontend(parse_frame(close_statement("dbb_1"))) == codec.Close(
        b"S", "dbb_1"
    )
