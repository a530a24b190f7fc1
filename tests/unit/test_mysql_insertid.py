"""mysql/insertid.py: what a command does with LAST_INSERT_ID(), and what a server connection
holds after it."""

from __future__ import annotations

import pytest

from dbbalancer.mysql.classify import Classifier
from dbbalancer.mysql.codec import CommandByte
from dbbalancer.mysql.insertid import (
    FRESH,
    Holder,
    IdUse,
    after,
    command_use,
    holds,
    restore_sql,
    statement_use,
)

CLASSIFIER = Classifier()


@pytest.mark.parametrize(
    ("sql", "use"),
    [
        ("SELECT LAST_INSERT_ID()", IdUse.READS),
        ("select last_insert_id ( ) + 1", IdUse.READS),
        ("SELECT @@identity", IdUse.READS),
        ("SELECT @@session.last_insert_id", IdUse.READS),
        ("SELECT LAST_INSERT_ID(), ROW_COUNT()", IdUse.READS),
        ("INSERT INTO t (v) VALUES (LAST_INSERT_ID())", IdUse.READS),
        ("SELECT 1; SELECT LAST_INSERT_ID()", IdUse.READS),
        ("CALL p()", IdUse.READS),
        ("EXECUTE s", IdUse.READS),
        ("SELECT LAST_INSERT_ID(77)", IdUse.SETS_UNSEEN),
        ("DO LAST_INSERT_ID(5)", IdUse.SETS_UNSEEN),
        ("SET @x = LAST_INSERT_ID(3)", IdUse.SETS_UNSEEN),
        ("UPDATE kv SET n = LAST_INSERT_ID(n + 5)", IdUse.SETS_UNSEEN),
        ("INSERT INTO t (v) VALUES (1); DO 0", IdUse.SETS_UNSEEN),
        (
            "INSERT INTO t (v) VALUES (1); SELECT LAST_INSERT_ID(); UPDATE k SET n = 0",
            IdUse.SETS_UNSEEN,
        ),
        ("INSERT INTO t (v) VALUES (1)", IdUse.MAY_SET),
        ("SELECT 1", IdUse.NONE),
        ("SELECT 1; SELECT 2", IdUse.NONE),
        ("SELECT ROW_COUNT()", IdUse.NONE),
        ("SHOW WARNINGS", IdUse.NONE),
        ("SELECT @@warning_count", IdUse.NONE),
        ("SET @x = 1", IdUse.NONE),
        ("START TRANSACTION READ ONLY", IdUse.NONE),
    ],
)
def test_what_a_statement_does_with_the_id(sql: str, use: IdUse) -> None:
    assert statement_use(CLASSIFIER.classify(sql), sql) is use
    assert statement_use(CLASSIFIER.classify(sql), b"\x03" + sql.encode()) is use


def test_an_unknown_statement_counts_as_a_reader() -> None:
    assert statement_use(None, "") is IdUse.READS


def test_commands() -> None:
    query = b"\x03SELECT LAST_INSERT_ID()"
    assert command_use(query, CLASSIFIER.classify(query[1:].decode()), {}) is IdUse.READS
    text = "SELECT LAST_INSERT_ID(9)"
    statements = {7: (CLASSIFIER.classify(text), text), 8: None}
    execute = bytes((CommandByte.STMT_EXECUTE,))
    assert command_use(execute + (7).to_bytes(4, "little") + b"\x00", None, statements) is (
        IdUse.SETS_UNSEEN
    )
    # Unclassified or unknown statement ids: the connection gets the client's id first.
    assert command_use(execute + (8).to_bytes(4, "little"), None, statements) is IdUse.READS
    assert command_use(execute + (9).to_bytes(4, "little"), None, statements) is IdUse.READS
    assert command_use(bytes((CommandByte.RESET_CONNECTION,)), None, {}) is IdUse.RESETS
    prepare = bytes((CommandByte.STMT_PREPARE,)) + b"SELECT LAST_INSERT_ID()"
    assert command_use(prepare, CLASSIFIER.classify("SELECT 1"), statements) is IdUse.NONE
    assert command_use(bytes((CommandByte.PING,)), None, {}) is IdUse.NONE


def test_holds() -> None:
    me, other = object(), object()
    assert holds(FRESH, me, 0)
    assert not holds(FRESH, me, 5)
    assert holds((None, 5), me, 5)
    assert holds((me, 5), me, 5)
    assert not holds((other, 5), me, 5)  # the same number, another client's: it may differ
    assert not holds((me, 4), me, 5)  # the client's id changed on another connection
    assert not holds(None, me, 0)


def test_after() -> None:
    me, other = object(), object()
    foreign: Holder = (other, 7)

    def step(
        holder: Holder, use: IdUse, *, value: int = 3, inserted: int = 0, held: bool = False
    ) -> Holder:
        return after(holder, use, owner=me, value=value, inserted=inserted, held=held, ok=ok)

    ok = True
    # An insert's OK packet carries the id: it is the client's now.
    assert step(foreign, IdUse.MAY_SET, inserted=3) == (me, 3)
    # A write without an id on another client's id: set or not, nobody knows.
    assert step(foreign, IdUse.MAY_SET) is None
    assert step(foreign, IdUse.NONE) == foreign
    # Whatever a client runs on a connection that held its id, it holds the client's.
    assert step((None, 3), IdUse.SETS_UNSEEN, held=True) == (me, 3)
    assert step((None, 3), IdUse.NONE, held=True) == (me, 3)
    assert step(foreign, IdUse.RESETS, value=0) == FRESH
    ok = False
    assert step(foreign, IdUse.RESETS) == foreign


def test_restore_sql() -> None:
    assert restore_sql(0) == "DO LAST_INSERT_ID(0)"
    assert restore_sql(12345678901) == "DO LAST_INSERT_ID(12345678901)"


def test_the_previous_statement_is_another_clients_until_the_client_runs_one() -> None:
    from dbbalancer.mysql.classify import Classifier
    from dbbalancer.mysql.insertid import ClientInsertId

    classify = Classifier().classify
    ids, other = ClientInsertId(), ClientInsertId()
    question = classify("SELECT ROW_COUNT(), FOUND_ROWS()")
    setting, read = classify("SET NAMES utf8mb4"), classify("SELECT v FROM t")
    query, prepare = b"\x03", b"\x16"
    # A session setting or a prepare leave the outcome as it was: another client's.
    assert ids.user_after(query, setting, other) is other
    assert ids.user_after(prepare, read, other) is other
    assert ids.user_after(query, read, other) is ids
    ids.inherited = True
    assert not ids.asks_inherited(query, setting, False)
    assert not ids.asks_inherited(prepare, read, False)
    assert ids.asks_inherited(query, question, False)
    # Not in a transaction of its own, and not once it ran a statement of its own there.
    ids.inherited = True
    assert not ids.asks_inherited(query, question, True)
    ids.inherited = True
    assert not ids.asks_inherited(query, read, False)
    assert not ids.asks_inherited(query, question, False)
