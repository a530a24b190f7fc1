"""Tests for the MySQL/MariaDB statement classifier (dbbalancer.mysql.classify).

The corpus in tests/data/mysql_statements.toml carries the routing rules; the tests below cover
what a corpus line cannot: the cache and its fingerprint, learned writes, the lexer's corners
and the tables behind the decisions.
"""

from __future__ import annotations

from typing import Any

import pytest
from _corpus import check_common_fields, corpus_id, load_corpus

from dbbalancer.core.statement import (
    Classification,
    PinReason,
    Reason,
    RouteHint,
    SettingChange,
    StatementKind,
    TxAction,
    UserVariable,
)
from dbbalancer.mysql.classify import (
    _LAST_RESULT_FUNCS,
    _LOCK_FUNCS,
    _PRIMARY_ONLY_FUNCS,
    _RESERVED,
    _SAFE_BUILTINS,
    _SEQUENCE_FUNCS,
    Classifier,
    _tokenize,
    classify,
)

CORPUS = load_corpus("mysql_statements.toml")


# ---------------------------------------------------------------------------------------------
# Corpus
# ---------------------------------------------------------------------------------------------
def test_corpus_is_large_and_unique() -> None:
    sqls = [e["sql"] for e in CORPUS]
    assert len(sqls) >= 200
    assert len(set(sqls)) == len(sqls)


def _check_entry(c: Classification, e: dict[str, Any]) -> None:
    check_common_fields(c, e)
    if "settings" in e:
        expected = [SettingChange(s["name"], s.get("value"), False) for s in e["settings"]]
        assert list(c.settings) == expected
    if "user_variables" in e:
        assert list(c.user_variables) == [
            UserVariable(v["name"], v.get("value")) for v in e["user_variables"]
        ]
    if "implicit_commit" in e:
        assert c.implicit_commit is e["implicit_commit"]
    # These three change where later statements run: absent means "not set".
    assert c.database == e.get("database")
    assert c.autocommit == e.get("autocommit")
    assert c.uses_last_result is e.get("uses_last_result", False)


@pytest.mark.parametrize("entry", CORPUS, ids=corpus_id)
def test_corpus_entry(entry: dict[str, Any]) -> None:
    _check_entry(Classifier().classify(entry["sql"]), entry)


def test_corpus_through_one_shared_cache_twice() -> None:
    """Cached answers (by fingerprint or exact text) equal fresh ones, in any order."""
    shared = Classifier(cache_size=10_000)
    for _ in range(2):
        for entry in CORPUS:
            _check_entry(shared.classify(entry["sql"]), entry)
    for entry in reversed(CORPUS):
        _check_entry(shared.classify(entry["sql"]), entry)


def test_corpus_without_a_cache() -> None:
    uncached = Classifier(cache_size=0)
    for entry in CORPUS:
        _check_entry(uncached.classify(entry["sql"]), entry)


# ---------------------------------------------------------------------------------------------
# The routing rules, one by one
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "sql",
    [
        "SELECT * FROM t FOR UPDATE",
        "SELECT * FROM t LOCK IN SHARE MODE",
        "SELECT * FROM t FOR SHARE",
        "SELECT a INTO @x FROM t",
        "SELECT NEXTVAL(s)",
        "SELECT NEXT VALUE FOR s",
        "SELECT GET_LOCK('a', 1)",
        "SELECT RELEASE_LOCK('a')",
        "SELECT IS_FREE_LOCK('a')",
        "SELECT f(1)",
        "CALL p()",
        "SELECT 1; INSERT INTO t VALUES (1)",
    ],
)
def test_goes_to_the_primary(sql: str) -> None:
    assert not classify(sql).read_only


def test_read_only_transaction_may_go_to_a_replica() -> None:
    c = classify("START TRANSACTION READ ONLY")
    assert (c.tx, c.tx_read_only, c.read_only) == (TxAction.BEGIN, True, True)


def test_autocommit_spellings_are_reported_distinctly() -> None:
    for sql in ("SET autocommit = 0", "SET @@autocommit=0", "SET SESSION autocommit = OFF"):
        assert classify(sql).autocommit is False
    for sql in ("SET autocommit = 1", "SET @@session.autocommit = ON", "SET LOCAL autocommit=1"):
        assert classify(sql).autocommit is True
    assert classify("SET sql_mode = ''").autocommit is None


def test_user_variables_do_not_pin() -> None:
    for sql in ("SET @x = 1", "SELECT @x := a FROM t", "SET @n = (SELECT COUNT(*) FROM t)"):
        c = classify(sql)
        assert c.user_variables
        assert not c.pins


# ---------------------------------------------------------------------------------------------
# Lexer
# ---------------------------------------------------------------------------------------------
def _words(sql: str) -> list[str]:
    return [t[1] for t in _tokenize(sql).toks]


def test_dash_dash_needs_a_blank_to_start_a_comment() -> None:
    assert _words("SELECT 1--1") == ["select", "1", "-", "-", "1"]
    assert _words("SELECT 1 -- 1") == ["select", "1"]
    assert _words("SELECT 1 --\t1") == ["select", "1"]
    assert _words("SELECT 1 --") == ["select", "1"]


def test_strings_with_escapes_and_doubled_quotes() -> None:
    assert [t[0] for t in _tokenize("SELECT 'a\\'b', 'c''d', \"e\\\"f\"").toks] == [
        "w",
        "s",
        ",",
        "s",
        ",",
        "dq",
    ]


def test_backticks_and_variables() -> None:
    toks = _tokenize("SELECT `a``b`, @`x y`, @'z', @@SESSION.sql_mode, @v.w").toks
    assert [(t[0], t[1]) for t in toks if t[0] != ","] == [
        ("w", "select"),
        ("q", "a`b"),
        ("uv", "x y"),
        ("uv", "z"),
        ("sv", "session.sql_mode"),
        ("uv", "v.w"),
    ]


def test_executable_comment_content_is_sql() -> None:
    lexed = _tokenize("SELECT /*!40001 SQL_NO_CACHE */ a /*! , b */ FROM t")
    assert [t[1] for t in lexed.toks] == ["select", "sql_no_cache", "a", ",", "b", "from", "t"]
    assert lexed.toks_without is not None
    assert [t[1] for t in lexed.toks_without] == ["select", "a", ",", "b", "from", "t"]


def test_star_slash_outside_an_executable_comment_is_not_special() -> None:
    assert classify("SELECT 2*/*x*/3").reason is Reason.PLAIN_SELECT
    assert classify("SELECT /*!2*/*3").reason is Reason.PLAIN_SELECT


def test_unconditional_executable_comment_is_not_conditional() -> None:
    assert _tokenize("SELECT /*! 1 */").toks_without is None


def test_conditional_content_without_it_is_also_considered() -> None:
    # Without the conditional content the text is a write: the write wins either way.
    assert classify("/*!99999 SELECT 1, */ DELETE FROM t").reason is not Reason.PLAIN_SELECT
    assert not classify("/*!99999 SELECT 1, */ DELETE FROM t").read_only


def test_ambiguous_backslash_only_when_the_token_boundaries_move() -> None:
    assert classify("SELECT 'a\\nb'").reason is Reason.PLAIN_SELECT
    assert classify("SELECT 'a\\'' , 1").reason is Reason.AMBIGUOUS_ESCAPE


# ---------------------------------------------------------------------------------------------
# Cache and learned writes
# ---------------------------------------------------------------------------------------------
def test_new_literals_hit_the_fingerprint() -> None:
    c = Classifier()
    c.classify("SELECT * FROM t WHERE id = 1 AND name = 'a'")
    c.classify("SELECT * FROM t WHERE id = 2 AND name = 'b'")
    assert c.cache_info() == (1, 0)


def test_literal_sensitive_statements_are_cached_by_text() -> None:
    c = Classifier()
    assert c.classify("SET autocommit = 0").autocommit is False
    assert c.classify("SET autocommit = 1").autocommit is True
    assert c.classify("SET autocommit = 0").autocommit is False
    assert c.classify("SET @x = 1").user_variables == (UserVariable("x", "1"),)
    assert c.classify("SET @x = 2").user_variables == (UserVariable("x", "2"),)
    assert c.classify("PREPARE s FROM 'SELECT 1'").inner is not None
    inner = c.classify("PREPARE s FROM 'DELETE FROM t'").inner
    assert inner is not None
    assert inner.reason is Reason.DML


def test_identifier_case_is_part_of_the_key() -> None:
    c = Classifier()
    assert c.classify("USE Shop").database == "Shop"
    assert c.classify("USE shop").database == "shop"


def test_hint_is_part_of_the_key() -> None:
    c = Classifier()
    assert c.classify("/* dbbalancer:primary */ SELECT 1").hint is RouteHint.PRIMARY
    assert c.classify("/* dbbalancer:replica */ SELECT 1").hint is RouteHint.REPLICA
    assert c.classify("SELECT 1").hint is None


def test_cache_is_bounded() -> None:
    c = Classifier(cache_size=3)
    for i in range(10):
        c.classify(f"SELECT a{i} FROM t")
    assert c.cache_info()[0] <= 3


def test_long_statements_are_not_cached() -> None:
    c = Classifier(max_cached_length=10)
    c.classify("SELECT * FROM a_long_table")
    assert c.cache_info() == (0, 0)


def test_remember_write_covers_every_literal_variant() -> None:
    c = Classifier()
    assert c.classify("SELECT * FROM v WHERE id = 1").read_only
    c.remember_write("SELECT * FROM v WHERE id = 1")
    learned = c.classify("SELECT * FROM v WHERE id = 2")
    assert (learned.kind, learned.reason, learned.read_only) == (
        StatementKind.WRITE,
        Reason.LEARNED_WRITE,
        False,
    )
    assert c.classify("SELECT * FROM w WHERE id = 1").read_only
    assert c.cache_info()[1] == 1


# ---------------------------------------------------------------------------------------------
# Tables
# ---------------------------------------------------------------------------------------------
def test_function_tables_do_not_overlap() -> None:
    special = _SEQUENCE_FUNCS | _LOCK_FUNCS | _LAST_RESULT_FUNCS | _PRIMARY_ONLY_FUNCS
    assert not special & _SAFE_BUILTINS
    assert not special & _RESERVED


def test_multi_statement_parts_and_pins() -> None:
    c = classify("SELECT GET_LOCK('a', 1); LOCK TABLES t WRITE; USE d")
    assert c.statements == 3
    assert c.pins == (PinReason.ADVISORY_LOCK, PinReason.TABLE_LOCK)
    assert c.implicit_commit
    assert c.database == "d"
    assert [p.kind for p in c.parts] == [
        StatementKind.WRITE,
        StatementKind.WRITE,
        StatementKind.SESSION,
    ]


def test_prepare_reports_the_inner_statement() -> None:
    c = classify("PREPARE s FROM 'SELECT * FROM t WHERE id = ? FOR UPDATE'")
    assert c.inner is not None
    assert c.inner.reason is Reason.SELECT_FOR_LOCK
    assert c.pins == (PinReason.SQL_PREPARE,)


def test_nul_and_odd_text_never_raise() -> None:
    for sql in ("\x00", "SELECT '\x00'", "\\", "@", "@@", "/*!", "*/", "`", "SET", "XA", "SHOW"):
        c = classify(sql)
        assert isinstance(c, Classification)
