"""mysql/sessionstate.py: what a client's session holds under transaction pooling."""

from __future__ import annotations

import pytest

from dbbalancer.mysql.classify import Classifier
from dbbalancer.mysql.sessionstate import MySessionState, literal_of

CLASSIFIER = Classifier()


def fresh() -> MySessionState:
    return MySessionState(database="app")


def apply(state: MySessionState, sql: str, *, ok: bool = True) -> None:
    state.apply(CLASSIFIER.classify(sql), sql, ok=ok)


def test_a_fresh_session_is_clean_and_free() -> None:
    state = fresh()
    assert not state.dirty
    assert not state.pinned
    assert state.replay_sql() is None
    assert state.read_back_sql() is None


def test_settings_database_and_literal_variables_are_replayed() -> None:
    state = fresh()
    apply(state, "SET SESSION sql_mode = 'ANSI_QUOTES'")
    apply(state, "SET @x = 42, @s = 'hi'")
    apply(state, "USE other")
    replay = state.replay_sql()
    assert replay is not None
    assert "USE `other`" in replay
    assert "SESSION sql_mode = CONVERT(X'" in replay
    assert "@`x` = 42" in replay
    assert "@`s` = 'hi'" in replay
    assert state.dirty
    assert not state.pinned


def test_a_failed_statement_changes_nothing() -> None:
    state = fresh()
    apply(state, "USE nowhere", ok=False)
    apply(state, "SET @x = 1", ok=False)
    assert not state.dirty


def test_computed_variables_are_read_back() -> None:
    state = fresh()
    apply(state, "SELECT @b := 1 + 1, @a := CONCAT('x')")
    assert state.read_back_sql() == "SELECT @`a`, @`b`"
    state.learn_read_back([("a", "'x'"), ("b", "2")])
    assert state.read_back_sql() is None
    assert state.variables == {"a": "'x'", "b": "2"}


@pytest.mark.parametrize(
    ("pin", "unpin"),
    [
        ("CREATE TEMPORARY TABLE t (x INT)", "DROP TEMPORARY TABLE t"),
        ("SELECT GET_LOCK('l', 1)", "SELECT RELEASE_LOCK('l')"),
        ("SELECT GET_LOCK('l', 1)", "SELECT RELEASE_ALL_LOCKS()"),
        ("LOCK TABLES t READ", "UNLOCK TABLES"),
        ("PREPARE s FROM 'SELECT 1'", "DEALLOCATE PREPARE s"),
        ("SET TRANSACTION READ ONLY", "COMMIT"),
        ("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE", "ROLLBACK"),
    ],
)
def test_pins_end_when_their_state_is_gone(pin: str, unpin: str) -> None:
    state = fresh()
    apply(state, pin)
    assert state.pinned, state.pin_reasons()
    apply(state, unpin)
    assert not state.pinned, state.pin_reasons()


def test_set_transaction_for_the_next_transaction_pins_until_one_ends() -> None:
    """The server keeps it until a commit or rollback; a table-less read, a failed ROLLBACK,
    a new transaction or a rollback to a savepoint do not end it."""
    state = fresh()
    apply(state, "SET TRANSACTION READ ONLY")
    assert state.pin_reasons() == ["next_transaction"]
    for sql in ("SELECT 1", "START TRANSACTION", "SAVEPOINT s", "ROLLBACK TO SAVEPOINT s"):
        apply(state, sql)
    apply(state, "ROLLBACK", ok=False)
    assert state.pinned
    apply(state, "COMMIT")
    assert not state.pinned
    apply(state, "SET SESSION TRANSACTION READ ONLY")  # the session's: replayed, no pin
    assert not state.pinned


def test_nested_locks_and_two_temp_tables_need_every_release() -> None:
    state = fresh()
    apply(state, "SELECT GET_LOCK('l', 1)")
    apply(state, "SELECT GET_LOCK('l', 1)")
    apply(state, "SELECT RELEASE_LOCK('l')")
    assert state.pinned
    apply(state, "SELECT RELEASE_LOCK('l')")
    apply(state, "CREATE TEMPORARY TABLE a (x INT)")
    apply(state, "CREATE TEMPORARY TABLE IF NOT EXISTS `b` (x INT)")
    apply(state, "DROP TEMPORARY TABLE a")
    assert state.pin_reasons() == ["temp_table"]
    apply(state, "DROP TEMPORARY TABLE IF EXISTS b")
    assert not state.pinned


def test_binary_prepared_statements_pin_until_closed() -> None:
    state = fresh()
    state.prepared(1)
    state.prepared(2)
    state.closed(1)
    assert state.pin_reasons() == ["prepared_statement"]
    state.closed(2)
    assert not state.pinned


def test_reset_connection_keeps_only_the_database() -> None:
    state = fresh()
    apply(state, "USE other")
    apply(state, "SET @x = 1")
    apply(state, "CREATE TEMPORARY TABLE t (x INT)")
    state.reset()
    assert not state.pinned
    assert state.replay_sql() == "USE `other`"


@pytest.mark.parametrize(
    ("value", "column_type", "charset", "literal"),
    [
        (None, 8, 63, "NULL"),
        (b"42", 8, 63, "42"),
        (b"-1.50", 246, 63, "-1.50"),
        (b"0.25", 5, 63, "0.25e0"),
        (b"\x00\xff", 251, 63, "X'00ff'"),
        (b"it's", 251, 45, "CONVERT(X'69742773' USING utf8mb4)"),
    ],
)
def test_read_back_values_keep_their_type(
    value: bytes | None, column_type: int, charset: int, literal: str
) -> None:
    assert literal_of(value, column_type, charset) == literal


def test_autocommit_off_is_replayed_not_pinned() -> None:
    state = fresh()
    apply(state, "SET autocommit = 0")
    assert not state.pinned
    assert state.dirty
    replay = state.replay_sql()
    assert replay is not None
    assert replay.endswith("SET SESSION autocommit = 0")
    apply(state, "SET autocommit = 1")
    assert not state.dirty
    assert state.replay_sql() is None
