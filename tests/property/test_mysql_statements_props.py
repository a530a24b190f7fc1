"""Properties of one connection's statements (mysql/statements.py): whatever clients prepare,
use, hold and close, no server statement is ever lost track of (each is held, or closed
exactly once) and the statements nobody holds state on stay within the cap."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from dbbalancer.mysql.statements import (
    ClientStatement,
    ClientStatements,
    Context,
    ServerStatement,
    StatementRegistry,
)

CTX: Context = ("app", "", ())
TEXTS = [f"SELECT {i}".encode() for i in range(6)]

# (operation, text index, flag): prepare a client statement, run one (prepare here if missing),
# give one server state (owner) or take it back, close one.
operations = st.lists(
    st.tuples(
        st.sampled_from(["prepare", "run", "own", "disown", "close"]),
        st.integers(0, len(TEXTS) - 1),
    ),
    max_size=60,
)


class Conn:
    """Stands for a server connection."""


@settings(max_examples=300, deadline=None)
@given(ops=operations, capacity=st.integers(1, 4))
def test_no_server_statement_is_lost_and_the_cap_holds(
    ops: list[tuple[str, int]], capacity: int
) -> None:
    registry = StatementRegistry()
    conn = Conn()
    cache = registry.of(conn, capacity)
    client = ClientStatements(registry)
    statements: list[ClientStatement] = []
    next_server_id = 1
    closed: list[int] = []
    for op, index in ops:
        live = [s for s in statements if s.id in client.by_id]
        if op == "prepare":
            client.begin_prepare(TEXTS[index])
            made = client.prepared(0, 1)
            assert made is not None
            statements.append(made)
            continue
        if not live:
            continue
        statement = live[index % len(live)]
        if op == "run":
            key, entry = cache.find(CTX, statement)
            if entry is None:
                cache.add(key, ServerStatement(next_server_id, 0, 1))
                next_server_id += 1
            statement.key = key
        elif op == "own" and statement.key is not None:
            entry = cache.get(statement.key)
            if entry is not None:
                entry.owner = statement.token
                statement.long_data = True
        elif op == "disown" and statement.key is not None:
            entry = cache.get(statement.key)
            if entry is not None and entry.owner == statement.token:
                entry.owner = 0
            statement.long_data = False
        elif op == "close":
            client.close(statement.id, cache)
        closed += cache.take_closing()
        held = cache.server_ids()
        assert len(closed) == len(set(closed)), "a server statement closed twice"
        assert not set(held) & set(closed), "a closed statement is still held"
        assert sorted(held + closed) == list(range(1, next_server_id)), "a statement was lost"
        owned = sum(1 for s in live if s.holds_state)
        assert len(held) <= capacity + owned + 1
    client.forget_all(cache)
    closed += cache.take_closing()
    assert cache.server_ids() == []
    assert sorted(closed) == list(range(1, next_server_id))
