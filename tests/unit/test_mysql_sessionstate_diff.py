"""mysql/sessionstate.py: regressions found by tests/integration/test_mysql_differential.py."""

from __future__ import annotations

from dbbalancer.mysql.classify import Classifier
from dbbalancer.mysql.sessionstate import MySessionState

CLASSIFIER = Classifier()


def fresh() -> MySessionState:
    return MySessionState(database="app")


def apply(state: MySessionState, sql: str) -> None:
    state.apply(CLASSIFIER.classify(sql), sql, ok=True)


def test_a_binary_protocol_execute_counts_like_a_query() -> None:
    # mysql-connector's cursor(prepared=True): prepare, execute, close, for every statement.
    state = fresh()
    for n, sql in enumerate(["SET time_zone = '+05:30'", "SET @i = 42", "USE app2"], start=1):
        state.prepared(n, CLASSIFIER.classify(sql), sql)
        assert state.executed(n, ok=True) is not None
        state.closed(n)
    assert not state.pinned
    time_zone = "CONVERT(X'2b30353a3330' USING utf8mb4)"
    assert state.replay_sql() == f"USE `app2`; SET SESSION time_zone = {time_zone}; SET @`i` = 42"


def test_a_failed_execute_changes_nothing_and_a_parameter_is_not_replayed() -> None:
    state = fresh()
    state.prepared(1, CLASSIFIER.classify("SET @x = 1"), "SET @x = 1")
    state.executed(1, ok=False)
    assert not state.dirty
    state.prepared(2, CLASSIFIER.classify("SET @y = ?"), "SET @y = ?")
    state.executed(2, ok=True)
    assert state.read_back_sql() == "SELECT @`y`"


def test_session_transaction_characteristics_replay_on_mariadb_too() -> None:
    state = fresh()
    apply(state, "SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED, READ ONLY")
    assert state.replay_sql() == "SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED, READ ONLY"


def test_set_names_without_collate_drops_an_earlier_collation() -> None:
    state = fresh()
    apply(state, "SET NAMES utf8mb4 COLLATE utf8mb4_bin")
    apply(state, "SET NAMES utf8mb4")
    replay = state.replay_sql()
    assert replay is not None
    assert "collation_connection" not in replay


def test_a_string_whose_reading_depends_on_sql_mode_is_read_back() -> None:
    state = fresh()
    apply(state, "SET @p = 'a\\b', @q = \"dq\", @r = 'plain'")
    assert state.read_back_sql() == "SELECT @`p`, @`q`"
