"""The statement mapping of binary-protocol clients (mysql/statements.py), sans-IO."""

from __future__ import annotations

import struct

from dbbalancer.mysql.codec import (
    ComStmtClose,
    ComStmtExecute,
    ComStmtFetch,
    ComStmtReset,
    ComStmtSendLongData,
    CursorType,
    ErrPacket,
    OkPacket,
    ServerStatus,
    StmtPrepareOk,
)
from dbbalancer.mysql.statements import (
    LAST_PREPARED,
    ClientStatement,
    ClientStatements,
    ConnectionStatements,
    Context,
    ServerStatement,
    StatementRegistry,
    Step,
    execute_payload,
    renumbered,
    statement_id,
)

CTX: Context = ("app", "", ())
OTHER_DB: Context = ("other", "", ())


class Conn:
    """Stands for a server connection (the registry keys weakly by it)."""


def _client(
    registry: StatementRegistry, text: bytes, params: int = 1
) -> tuple[ClientStatements, ClientStatement]:
    client = ClientStatements(registry)
    client.begin_prepare(text)
    statement = client.prepared(params, 1)
    assert statement is not None
    return client, statement


def _params(values: list[int], *, types: bool = True) -> bytes:
    n = len(values)
    head = bytes((n + 7) // 8) + (b"\x01" if types else b"\x00")
    kinds = bytes((8, 0)) * n if types else b""
    return head + kinds + b"".join(struct.pack("<q", v) for v in values)


# -- payloads -----------------------------------------------------------------------------------


def test_ids_are_rewritten_in_place() -> None:
    close = ComStmtClose(7).encode()
    assert statement_id(close) == 7
    assert statement_id(b"\x19\x01") == -1
    ok = StmtPrepareOk(statement_id=99, num_columns=1, num_params=2).encode()
    assert StmtPrepareOk.decode(renumbered(ok, 3)) == StmtPrepareOk(3, 1, 2)
    err = ErrPacket(1146, "42S02", "no such table").encode()
    assert renumbered(err, 3) == err


def test_execute_remembers_parameter_types_and_puts_them_back() -> None:
    statement = ClientStatement(1, 1, b"SELECT ?, ?", params=2, columns=2)
    with_types = ComStmtExecute(1, 0, 1, _params([4, 5])).encode()
    out = execute_payload(with_types, 40, statement)
    assert out == ComStmtExecute(40, 0, 1, _params([4, 5])).encode()
    assert statement.types == bytes((8, 0, 8, 0))
    without = ComStmtExecute(1, 0, 1, _params([6, 7], types=False)).encode()
    assert (
        execute_payload(without, 41, statement)
        == ComStmtExecute(41, 0, 1, _params([6, 7])).encode()
    )


def test_execute_without_parameters_or_known_types_passes_through() -> None:
    none = ClientStatement(1, 1, b"SELECT 1", params=0, columns=1)
    assert execute_payload(ComStmtExecute(1).encode(), 9, none) == ComStmtExecute(9).encode()
    fresh = ClientStatement(1, 1, b"SELECT ?", params=1, columns=1)
    without = ComStmtExecute(1, 0, 1, _params([1], types=False)).encode()
    assert (
        execute_payload(without, 9, fresh)
        == ComStmtExecute(9, 0, 1, _params([1], types=False)).encode()
    )
    short = ComStmtExecute(1).encode()  # no parameter block at all: the server refuses it
    assert execute_payload(short, 9, fresh) == ComStmtExecute(9).encode()


# -- one connection's statements ------------------------------------------------------------------


def test_the_least_recently_used_beyond_the_cap_are_closed() -> None:
    registry = StatementRegistry()
    cache = registry.of(Conn(), 2)
    statements = [_client(registry, f"SELECT {i}".encode())[1] for i in range(3)]
    for i, statement in enumerate(statements[:2]):
        key, entry = cache.find(CTX, statement)
        assert entry is None
        cache.add(key, ServerStatement(10 + i, 1, 1))
    cache.find(CTX, statements[0])  # used: statement 1 is now the least recently used
    key, _ = cache.find(CTX, statements[2])
    cache.add(key, ServerStatement(12, 1, 1))
    assert len(cache) == 2
    assert cache.take_closing() == [11]
    assert cache.server_ids() == [10, 12]
    assert cache.take_closing() == []


def test_a_statement_holding_state_is_never_evicted() -> None:
    registry = StatementRegistry()
    cache = registry.of(Conn(), 1)
    _, first = _client(registry, b"SELECT 1")
    _, second = _client(registry, b"SELECT 2")
    key, _ = cache.find(CTX, first)
    cache.add(key, ServerStatement(1, 1, 1, owner=first.token))
    key, _ = cache.find(CTX, second)
    cache.add(key, ServerStatement(2, 1, 1))
    assert cache.server_ids() == [1, 2]  # over the cap while the owned one is busy
    assert cache.take_closing() == []


def test_the_same_text_under_another_context_is_another_statement() -> None:
    registry = StatementRegistry()
    cache = registry.of(Conn(), 10)
    _, statement = _client(registry, b"SELECT * FROM t")
    key, _ = cache.find(CTX, statement)
    cache.add(key, ServerStatement(1, 0, 1))
    assert cache.find(CTX, statement)[1] is not None
    assert cache.find(OTHER_DB, statement)[1] is None


def test_a_second_prepare_of_a_text_keeps_the_first_statement() -> None:
    registry = StatementRegistry()
    cache = registry.of(Conn(), 10)
    _, statement = _client(registry, b"SELECT 1")
    key, _ = cache.find(CTX, statement)
    cache.add(key, ServerStatement(1, 1, 1))
    cache.add(key, ServerStatement(2, 1, 1))
    assert cache.server_ids() == [1]
    assert cache.take_closing() == [2]


def test_statements_nobody_uses_are_closed_on_every_connection() -> None:
    registry = StatementRegistry()
    conns = [Conn(), Conn()]
    caches = [registry.of(conn, 10) for conn in conns]
    a_client, a = _client(registry, b"SELECT ?")
    b_client, b = _client(registry, b"SELECT ?")
    for n, cache in enumerate(caches):
        key, _ = cache.find(CTX, a)
        cache.add(key, ServerStatement(n + 1, 1, 1))
    assert a_client.close(a.id, None) == []  # b still uses the text
    touched = b_client.close(b.id, None)
    assert sorted(id(c) for c in touched) == sorted(id(c) for c in caches)
    assert [cache.take_closing() for cache in caches] == [[1], [2]]
    assert all(len(cache) == 0 for cache in caches)


def test_a_statement_prepared_for_a_client_that_left_is_closed_at_once() -> None:
    registry = StatementRegistry()
    cache = registry.of(Conn(), 10)
    client, statement = _client(registry, b"SELECT 1")
    key, _ = cache.find(CTX, statement)
    client.forget_all(None)
    cache.add(key, ServerStatement(5, 1, 1))  # a hidden prepare that finished after the close
    assert len(cache) == 0
    assert cache.take_closing() == [5]


def test_a_reset_connection_has_nothing_left_to_close() -> None:
    registry = StatementRegistry()
    conn = Conn()
    cache = registry.of(conn, 10)
    client, statement = _client(registry, b"SELECT 1")
    key, _ = cache.find(CTX, statement)
    cache.add(key, ServerStatement(5, 1, 1))
    registry.forget_connection(conn)
    assert len(cache) == 0
    assert client.close(statement.id, None) == []
    assert cache.take_closing() == []


# -- plans --------------------------------------------------------------------------------------


def test_client_ids_count_from_one_and_minus_one_is_the_last_prepared() -> None:
    registry = StatementRegistry()
    client = ClientStatements(registry)
    assert client.begin_prepare(b"SELECT 1") == 1
    client.prepared(0, 1)
    assert client.begin_prepare(b"SELECT 2") == 2
    client.prepared(0, 1)
    assert statement_id(client.resolve(ComStmtExecute(LAST_PREPARED).encode())) == 2
    client.begin_prepare(b"SELEC")
    client.failed()
    unresolved = ComStmtExecute(LAST_PREPARED).encode()
    assert client.resolve(unresolved) == unresolved


def test_commands_that_need_no_server_are_answered() -> None:
    registry = StatementRegistry()
    client, statement = _client(registry, b"SELECT ?")
    unknown = client.plan(ComStmtExecute(9).encode(), None, CTX)
    assert unknown.step is Step.ANSWER
    assert isinstance(unknown.answer, ErrPacket)
    assert unknown.answer.errno == 1243
    assert client.plan(ComStmtClose(9).encode(), None, CTX).answer is None
    assert client.plan(ComStmtSendLongData(9, 0, b"x").encode(), None, CTX).answer is None
    reset = client.plan(ComStmtReset(statement.id).encode(), None, CTX)
    assert isinstance(reset.answer, OkPacket)
    fetch = client.plan(ComStmtFetch(statement.id, 1).encode(), None, CTX)
    assert isinstance(fetch.answer, ErrPacket)
    assert fetch.answer.errno == 1421
    close = client.plan(ComStmtClose(statement.id).encode(), None, CTX)
    assert close.step is Step.ANSWER
    assert close.statement is statement
    assert client.plan(ComStmtExecute(statement.id).encode(), None, CTX).step is Step.ROUTE


def test_an_execute_is_prepared_first_then_mapped() -> None:
    registry = StatementRegistry()
    cache = registry.of(Conn(), 10)
    client, statement = _client(registry, b"SELECT ?")
    execute = ComStmtExecute(statement.id, 0, 1, _params([3])).encode()
    first = client.plan(execute, cache, CTX)
    assert first.step is Step.PREPARE
    assert first.key is not None
    cache.add(first.key, ServerStatement(77, 1, 1))
    mapped = client.plan(execute, cache, CTX)
    assert mapped.step is Step.SEND
    assert mapped.payload == ComStmtExecute(77, 0, 1, _params([3])).encode()
    changed = ServerStatement(79, 2, 1)  # the table changed: another parameter count
    cache.remove(first.key)
    cache.add(first.key, changed)
    refused = client.plan(execute, cache, CTX)
    assert isinstance(refused.answer, ErrPacket)
    assert refused.answer.errno == 1615


def test_a_cursor_belongs_to_its_statement_until_it_ends() -> None:
    registry = StatementRegistry()
    cache = registry.of(Conn(), 10)
    client, statement = _client(registry, b"SELECT a FROM t")
    client.begin_prepare(b"SELECT a FROM t")
    twin = client.prepared(1, 1)
    assert twin is not None
    cursor = ComStmtExecute(statement.id, CursorType.READ_ONLY, 1, _params([1])).encode()
    plan = client.plan(cursor, cache, CTX)
    assert plan.key is not None
    cache.add(plan.key, ServerStatement(1, 1, 1))
    assert client.plan(cursor, cache, CTX).step is Step.SEND
    client.answered(cursor, cache, status=ServerStatus.CURSOR_EXISTS, errno=None)
    assert statement.cursor
    # The twin (same text) must not reuse the statement whose cursor is open.
    twin_run = client.plan(ComStmtExecute(twin.id, 0, 1, _params([1])).encode(), cache, CTX)
    assert twin_run.step is Step.PREPARE
    assert twin_run.key is not None
    assert twin_run.key[2] == twin.token
    fetch = ComStmtFetch(statement.id, 10).encode()
    assert client.plan(fetch, cache, CTX).payload == ComStmtFetch(1, 10).encode()
    client.answered(fetch, cache, status=0, errno=None)
    assert statement.cursor
    client.answered(fetch, cache, status=ServerStatus.LAST_ROW_SENT, errno=None)
    assert not statement.cursor
    assert (
        client.plan(ComStmtExecute(twin.id, 0, 1, _params([1])).encode(), cache, CTX).step
        is Step.SEND
    )  # shared again


def test_long_data_stays_with_its_statement_until_the_execute() -> None:
    registry = StatementRegistry()
    cache = registry.of(Conn(), 10)
    client, statement = _client(registry, b"SELECT ?")
    key, _ = cache.find(CTX, statement)
    cache.add(key, ServerStatement(4, 1, 1))
    chunk = ComStmtSendLongData(statement.id, 0, b"abc").encode()
    plan = client.plan(chunk, cache, CTX)
    assert plan.payload == ComStmtSendLongData(4, 0, b"abc").encode()
    assert statement.long_data
    assert cache.get(key) == ServerStatement(4, 1, 1, owner=statement.token)
    execute = ComStmtExecute(statement.id, 0, 1, _params([0])).encode()
    client.plan(execute, cache, CTX)
    client.answered(execute, cache, status=ServerStatus.AUTOCOMMIT, errno=None)
    assert not statement.long_data
    assert cache.get(key) == ServerStatement(4, 1, 1)


def test_closing_a_statement_with_server_state_closes_its_server_statement() -> None:
    registry = StatementRegistry()
    cache = registry.of(Conn(), 10)
    client, statement = _client(registry, b"SELECT ?")
    _, other = _client(registry, b"SELECT ?")  # another client keeps the text referenced
    key, _ = cache.find(CTX, statement)
    cache.add(key, ServerStatement(4, 1, 1))
    client.plan(ComStmtSendLongData(statement.id, 0, b"abc").encode(), cache, CTX)
    assert client.close(statement.id, cache) == [cache]
    assert cache.take_closing() == [4]  # its parameter data must not reach `other`
    assert cache.find(CTX, other)[1] is None


def test_a_statement_the_server_lost_is_prepared_again() -> None:
    registry = StatementRegistry()
    cache = registry.of(Conn(), 10)
    client, statement = _client(registry, b"SELECT ?")
    key, _ = cache.find(CTX, statement)
    cache.add(key, ServerStatement(4, 1, 1))
    execute = ComStmtExecute(statement.id, 0, 1, _params([0])).encode()
    client.plan(execute, cache, CTX)
    client.answered(execute, cache, status=0, errno=1243)
    assert len(cache) == 0
    assert cache.take_closing() == []
    assert client.plan(execute, cache, CTX).step is Step.PREPARE


def test_connection_statements_count_their_entries() -> None:
    registry = StatementRegistry()
    cache = ConnectionStatements(3, registry)
    assert len(cache) == 0
    assert cache.connection() is None


def test_connections_are_never_held_weakly() -> None:
    """A mypyc-compiled ServerConnection accepts weak references but does not clear them when
    it is freed, and the garbage collector later crashed on a dangling one (`make test` runs
    the compiled build): the registry keeps a connection's statements on the connection."""
    import gc

    from dbbalancer.core.topology import Server, ServerRole
    from dbbalancer.mysql.backend import ServerConnection

    registry = StatementRegistry()
    server = Server("p", "127.0.0.1", 1, ServerRole.PRIMARY)
    for _ in range(500):
        conn = ServerConnection(server, 1024)
        cache = registry.of(conn, 4)
        assert registry.known(conn) is cache
        assert cache.connection() is conn
        del conn, cache
    gc.collect()
    gc.collect()
