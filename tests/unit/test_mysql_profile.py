"""mysql/profile.py: pool profiles, and the settings that leave a pooled connection as it
logged in (with mysql/sessionstate.py, which asks)."""

from __future__ import annotations

import dataclasses
import itertools

import pytest

from dbbalancer.mysql.classify import Classifier
from dbbalancer.mysql.codec import Capability
from dbbalancer.mysql.profile import (
    COLLATIONS,
    DEFAULT_COLLATION,
    ConnectionDefaults,
    PoolProfile,
    ProfileDefaults,
)
from dbbalancer.mysql.sessionstate import MySessionState

CLASSIFIER = Classifier()
BASE = Capability.PROTOCOL_41 | Capability.MULTI_STATEMENTS | Capability.MULTI_RESULTS
# What MariaDB 10.11 reports right after a login with utf8mb4_general_ci (45) and with
# utf8mb4_bin (46); `SET NAMES utf8mb4` gives utf8mb4_general_ci on it.
GENERAL = ConnectionDefaults(*["utf8mb4"] * 3, "utf8mb4_general_ci", "utf8mb4_general_ci", True)
BIN = ConnectionDefaults(*["utf8mb4"] * 3, "utf8mb4_bin", "utf8mb4_general_ci", True)


def known(found: ConnectionDefaults) -> ProfileDefaults:
    defaults = ProfileDefaults()
    defaults.learn(found)
    return defaults


def session(found: ConnectionDefaults | None = GENERAL, **kwargs: bool) -> MySessionState:
    return MySessionState(
        database="app", defaults=known(found) if found is not None else None, **kwargs
    )


def apply(state: MySessionState, sql: str) -> bool:
    """Apply `sql` as the server accepted it; True when it needs no reset (`settles`)."""
    c = CLASSIFIER.classify(sql)
    state.apply(c, sql, ok=True)
    return state.settles(c)


# -- profiles -------------------------------------------------------------------------------


def test_the_default_profile_is_the_empty_name() -> None:
    assert PoolProfile.of(int(BASE)) == PoolProfile()
    assert PoolProfile().name == ""
    assert PoolProfile.of(int(BASE), 255).name == ""  # MySQL 8's default: utf8mb4_general_ci


def test_profile_names_say_what_differs() -> None:
    pymysql = PoolProfile.of(int(Capability.PROTOCOL_41 | Capability.MULTI_RESULTS), 45)
    assert pymysql.name == "no_multi_statements"
    django = PoolProfile.of(int(BASE | Capability.FOUND_ROWS), 46)
    assert django.name == "found_rows,utf8mb4_bin"
    assert PoolProfile.of(int(BASE), 8).name == "latin1_swedish_ci"
    assert PoolProfile.of(int(BASE), 99).collation == DEFAULT_COLLATION  # unknown: the default


def test_every_profile_round_trips_through_its_name_and_there_are_32() -> None:
    profiles = {
        PoolProfile.of(int(BASE & ~drop | add), collation)
        for collation in [*COLLATIONS, 7, 99]
        for drop, add in itertools.product(
            (Capability(0), Capability.MULTI_STATEMENTS), (Capability(0), Capability.FOUND_ROWS)
        )
    }
    assert len(profiles) == 32
    for profile in profiles:
        assert PoolProfile.parse(profile.name) == profile
    with pytest.raises(ValueError, match="unknown MySQL pool profile part"):
        PoolProfile.parse("found_rows,utf8mb4_0900_ai_ci")


def test_profile_capabilities_add_found_rows_and_take_multi_statements_away() -> None:
    base = BASE | Capability.LOCAL_FILES
    assert PoolProfile().capabilities(base) == base
    assert PoolProfile(found_rows=True).capabilities(base) == base | Capability.FOUND_ROWS
    assert PoolProfile(multi_statements=False).capabilities(base) == (
        base & ~Capability.MULTI_STATEMENTS
    )


def test_defaults_of_a_pool_are_forgotten_for_good_when_connections_disagree() -> None:
    defaults = ProfileDefaults()
    assert defaults.charset is None
    defaults.learn(GENERAL)
    defaults.learn(GENERAL)
    assert defaults.charset == GENERAL
    defaults.learn(BIN)
    assert defaults.charset is None
    defaults.learn(GENERAL)
    assert defaults.charset is None
    unread = ProfileDefaults()
    unread.learn(None)
    unread.learn(GENERAL)
    assert unread.charset is None


def test_defaults_are_read_from_a_row() -> None:
    row = (b"utf8mb4", b"utf8mb4", b"utf8mb4", b"utf8mb4_bin", b"utf8mb4_general_ci", b"1")
    assert ConnectionDefaults.from_row(row) == BIN
    assert ConnectionDefaults.from_row((*row[:4], None, b"1")) is None
    assert ConnectionDefaults.from_row(row[:5]) is None
    assert "CONVERT('' USING latin1)" in ConnectionDefaults.query("latin1")


# -- settings equal to the connection's own -------------------------------------------------


@pytest.mark.parametrize(
    "sql",
    [
        "SET NAMES utf8mb4",  # PyMySQL after its login
        "SET NAMES 'utf8mb4' COLLATE 'utf8mb4_general_ci'",  # mysql-connector
        "SET NAMES UTF8MB4 COLLATE UTF8MB4_GENERAL_CI",
        "SET character_set_client = utf8mb4",
        "SET SESSION collation_connection = 'utf8mb4_general_ci'",
    ],
)
def test_a_set_names_the_connection_already_has_is_no_change(sql: str) -> None:
    state = session()
    assert apply(state, sql)
    assert not state.dirty
    assert state.replay_statements() == []


@pytest.mark.parametrize(
    "sql",
    [
        "SET NAMES latin1",
        "SET NAMES utf8mb4 COLLATE utf8mb4_bin",
        "SET NAMES utf8",  # utf8mb3 (or an alias the proxy does not resolve): a change
        "SET character_set_results = latin1",
        "SET collation_connection = utf8mb4_unicode_ci",
        "SET NAMES DEFAULT",  # the server's default, which may differ from the login's
    ],
)
def test_other_character_sets_are_changes(sql: str) -> None:
    state = session()
    assert not apply(state, sql)
    if "DEFAULT" not in sql:
        assert state.dirty
        assert state.replay_statements()


def test_set_names_without_collate_on_a_connection_with_another_collation_is_a_change() -> None:
    state = session(BIN)
    assert not apply(state, "SET NAMES utf8mb4")  # gives utf8mb4_general_ci, not _bin
    assert state.dirty
    assert apply(state, "SET NAMES utf8mb4 COLLATE utf8mb4_bin")  # back as it logged in
    assert not state.dirty


def test_unknown_defaults_make_every_setting_a_change() -> None:
    state = session(None)
    assert not apply(state, "SET NAMES utf8mb4")
    assert state.dirty
    replay = state.replay_sql()
    assert replay is not None
    assert "character_set_client" in replay


def test_other_settings_are_replayed_without_the_unchanged_character_set() -> None:
    state = session()
    assert apply(state, "SET NAMES utf8mb4")
    assert not apply(state, "SET time_zone = '+01:00'")
    (replay,) = state.replay_statements()
    assert "time_zone" in replay
    assert "character_set" not in replay
    assert list(state.changed_settings()) == ["time_zone"]


def test_a_set_names_with_other_effects_needs_a_reset() -> None:
    state = session()
    assert not apply(state, "SET NAMES utf8mb4; SET @x = 1")  # a multi-statement string
    state = session()
    assert not apply(state, "SET character_set_client = utf8mb4, sql_mode = ''")


def test_back_to_the_connection_s_character_set_is_clean_again() -> None:
    state = session()
    assert not apply(state, "SET NAMES latin1")
    assert apply(state, "SET NAMES utf8mb4")
    assert not state.dirty


# -- statement mode -------------------------------------------------------------------------


def test_multi_statements_are_relative_to_the_profile() -> None:
    pymysql = session(multi_statements=False)
    assert pymysql.multi_statements_off
    assert not pymysql.dirty
    assert pymysql.multi_statements_switch() is None
    pymysql.multi_statements_off = False  # COM_SET_OPTION(ON)
    assert pymysql.dirty
    assert pymysql.multi_statements_switch() is True
    other = session()
    other.multi_statements_off = True  # COM_SET_OPTION(OFF)
    assert other.dirty
    assert other.multi_statements_switch() is False


@pytest.mark.parametrize(
    ("sql", "settles"),
    [
        ("SET @@session.autocommit = ON", True),  # mysql-connector's autocommit=True
        ("SET autocommit = 1", True),
        ("SET autocommit = 0", False),
    ],
)
def test_autocommit_on_where_connections_start_with_it_on_is_no_change(
    sql: str, settles: bool
) -> None:
    assert apply(session(), sql) is settles
    off = dataclasses.replace(GENERAL, autocommit=False)
    assert not apply(session(off), sql)
