"""Settings replay text (params.py) and the session-state ledger (sessionstate.py)."""

from __future__ import annotations

import pytest

from dbbalancer.core.routing import RouteReason, Target, decide
from dbbalancer.core.statement import PinReason
from dbbalancer.postgres.classify import classify
from dbbalancer.postgres.params import parse_options, set_statements, sync_statement
from dbbalancer.postgres.sessionstate import SessionState, read_back_query


def test_list_values_are_replayed_as_one_string_through_set_config() -> None:
    # `SET search_path TO 'a, b'` would name ONE schema "a, b": the stored string must reach
    # the server as a string that it parses as a list again.
    sql = set_statements({"search_path": 'app_schema, "My Schema"'})
    assert sql == (
        "SELECT pg_catalog.set_config('search_path', 'app_schema, \"My Schema\"', false)"
    )


@pytest.mark.parametrize(
    ("value", "literal"),
    [
        ("plain", "'plain'"),
        ("it's", "'it''s'"),
        ("back\\slash", "E'back\\\\slash'"),
        ("", "''"),
    ],
)
def test_values_of_every_shape_become_one_literal(value: str, literal: str) -> None:
    assert set_statements({"application_name": value}) == (
        f"SELECT pg_catalog.set_config('application_name', {literal}, false)"
    )


def test_settings_are_set_left_to_right_in_one_select() -> None:
    sql = set_statements({"a.x": "1", "DateStyle": "ISO, DMY"})
    assert sql == (
        "SELECT pg_catalog.set_config('a.x', '1', false), "
        "pg_catalog.set_config('DateStyle', 'ISO, DMY', false)"
    )


def test_a_name_that_is_not_an_identifier_is_refused() -> None:
    with pytest.raises(ValueError, match="invalid parameter name"):
        set_statements({"x'); DROP TABLE t; --": "1"})


def test_sync_resets_what_the_client_no_longer_has_and_sets_what_changed() -> None:
    assert sync_statement({"a": "1"}, {"a": "1"}) is None
    assert sync_statement({"a": "1", "b": "2"}, {"b": "3"}) == (
        "RESET \"a\"; SELECT pg_catalog.set_config('b', '3', false)"
    )


def test_options_follow_libpq_escaping() -> None:
    assert parse_options(r"-c search_path=a,b --work-mem=64MB -c x=has\ space") == {
        "search_path": "a,b",
        "work_mem": "64MB",
        "x": "has space",
    }


def test_read_back_asks_each_setting_and_tolerates_unknown_ones() -> None:
    assert read_back_query(["search_path", "a.b"]) == (
        "SELECT pg_catalog.current_setting('search_path', true), "
        "pg_catalog.current_setting('a.b', true)"
    )


def test_settings_count_only_after_a_clean_unit() -> None:
    state = SessionState({"application_name": "app"})
    state.record(classify("SET search_path = app_schema, public"))
    assert state.settings == {"application_name": "app"}  # not before the server confirmed it
    assert state.settle(doubt=False) is None
    assert state.settings["search_path"] == "app_schema, public"
    state.record(classify("RESET ALL"))
    state.settle(doubt=False)
    assert state.settings == {"application_name": "app"}


def test_in_doubt_the_touched_settings_are_read_back() -> None:
    state = SessionState({})
    state.record(classify("SET search_path = a"))
    state.record(classify("ROLLBACK TO SAVEPOINT s"))
    assert state.in_doubt(errors=0)
    names = state.settle(doubt=True)
    assert names == ["search_path"]
    state.learn(names, ['"$user", public'])
    assert state.settings == {"search_path": '"$user", public'}
    assert not state.unsettled


def test_unpins_count_only_after_a_clean_unit() -> None:
    state = SessionState({})
    state.record(classify("DECLARE c CURSOR WITH HOLD FOR SELECT 1"))
    assert PinReason.WITH_HOLD_CURSOR in state.pins
    state.settle(doubt=False)
    state.record(classify("CLOSE ALL"))
    state.settle(doubt=True)  # the CLOSE ALL may not have run: the pin stays
    assert PinReason.WITH_HOLD_CURSOR in state.pins
    state.record(classify("CLOSE ALL"))
    state.settle(doubt=False)
    assert not state.pins
    assert state.pinned_since_release  # so the connection is reset before it is pooled


@pytest.mark.parametrize(
    "sql",
    [
        "PREPARE ins(int) AS INSERT INTO t VALUES ($1)",
        "PREPARE r AS SELECT 1",
        "DECLARE c CURSOR WITH HOLD FOR SELECT 1",
        "CREATE TEMP TABLE tt (x int)",
        "/* replica */ DECLARE c CURSOR WITH HOLD FOR SELECT 1",
        "LOAD 'auto_explain'",
    ],
)
def test_what_pins_goes_to_the_primary(sql: str) -> None:
    decision = decide(classify(sql), split=True)
    assert decision.target is Target.PRIMARY
    assert decision.reason in (RouteReason.SESSION_STATE, RouteReason.WRITE)
