"""Tests for the PostgreSQL statement classifier (dbbalancer.postgres.classify).

The corpus in tests/data/pg_statements.toml carries most routing rules; the tests below cover
what a corpus line cannot: volatility lookups, learned writes, the cache and its fingerprint, and
agreement between the token fast path and the parse-tree authority.
"""

from __future__ import annotations

import ast
from pathlib import Path
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
    UnpinEvent,
)
from dbbalancer.postgres.classify import (
    _PRIMARY_ONLY_FUNCS,
    _REPLICA_SAFE_VOLATILE,
    _SAFE_BUILTINS,
    Classifier,
    _combine,
    _Ctx,
    _fingerprint,
    _tokenize,
    classify,
)

CORPUS = load_corpus("pg_statements.toml")


# ---------------------------------------------------------------------------------------------
# Corpus
# ---------------------------------------------------------------------------------------------
def test_corpus_is_large_and_unique() -> None:
    sqls = [e["sql"] for e in CORPUS]
    assert len(sqls) >= 300
    assert len(set(sqls)) == len(sqls)


def _check_entry(c: Classification, e: dict[str, Any]) -> None:
    check_common_fields(c, e)
    if "settings" in e:
        expected = [SettingChange(s["name"], s.get("value"), s["local"]) for s in e["settings"]]
        assert [SettingChange(s.name, s.value, s.local) for s in c.settings] == expected


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


@pytest.mark.parametrize("entry", CORPUS, ids=corpus_id)
def test_fast_path_agrees_with_parse_tree(entry: dict[str, Any]) -> None:
    sql = entry["sql"]
    toks, _lead, error, _bs = _tokenize(sql)
    c = Classifier()
    fast = c._fast(toks) if toks and not error else None
    if fast is None:
        return  # the authority answered this one anyway
    tree = _combine(c._authority(sql, toks, False, _Ctx()))
    quick = _combine(fast)
    if tree.reason is Reason.PARSE_ERROR:
        return  # the fast path does not validate syntax (see test_fast_path_does_not_validate)
    assert (quick.kind, quick.reason, quick.read_only, quick.statements) == (
        tree.kind,
        tree.reason,
        tree.read_only,
        tree.statements,
    )
    assert (quick.pins, quick.unpins, quick.tx, quick.settings) == (
        tree.pins,
        tree.unpins,
        tree.tx,
        tree.settings,
    )
    # Special syntax (SUBSTRING, TRIM, EXTRACT...) shows up as pg_catalog calls in the tree only.
    assert set(quick.functions) <= set(tree.functions)


def test_fast_path_handles_the_hot_statements() -> None:
    c = Classifier()
    for sql in (
        "SELECT abalance FROM pgbench_accounts WHERE aid = 1;",
        "UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid = 1;",
        "INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES (1, 1, 1, 1, now());",
        "BEGIN;",
        "END;",
        "SELECT lower(name), count(*) FROM t GROUP BY 1",
    ):
        toks, _, error, _ = _tokenize(sql)
        assert not error
        assert c._fast(toks) is not None, sql


def test_fast_path_does_not_validate() -> None:
    """Decision: a malformed SELECT may be called a read; the standby rejects it as the primary
    would. Only the fast path's *structure* must be right."""
    assert classify("SELECT * FROM").kind is StatementKind.READ
    assert classify("SELECT * FROM; DELETE FROM t").kind is StatementKind.WRITE


# ---------------------------------------------------------------------------------------------
# Settings, pins, transaction control, hints
# ---------------------------------------------------------------------------------------------
def test_settings_of_multi_statement_string_are_concatenated() -> None:
    c = classify("SET a.x = 1; SET LOCAL b.y TO 'two'; RESET c.z")
    assert c.statements == 3
    assert c.settings == (
        SettingChange("a.x", "1", False),
        SettingChange("b.y", "two", True),
        SettingChange("c.z", None, False),
    )
    assert len(c.parts) == 3
    assert all(p.kind is StatementKind.SESSION for p in c.parts)


def test_reset_all_and_discard_all_reset_everything() -> None:
    assert classify("RESET ALL").settings == (SettingChange("all", None, False, reset_all=True),)
    discard = classify("DISCARD ALL")
    assert discard.settings[0].reset_all
    assert UnpinEvent.DISCARD_ALL in discard.unpins
    assert UnpinEvent.DEALLOCATE_ALL in discard.unpins


def test_set_config_local_flag_and_untrackable_arguments() -> None:
    assert classify("SELECT set_config('x.y', 'v', true)").settings == (
        SettingChange("x.y", "v", True),
    )
    assert classify("SELECT set_config('X.Y', 'v', 'off')").settings == (
        SettingChange("x.y", "v", False),
    )
    weird = classify("SELECT set_config('x.y', $1, false)")
    assert weird.settings == ()
    assert weird.pins == (PinReason.UNTRACKED_SETTING,)


def test_transaction_actions() -> None:
    assert classify("BEGIN").tx is TxAction.BEGIN
    assert classify("START TRANSACTION READ ONLY").tx_read_only is True
    assert classify("BEGIN READ WRITE").tx_read_only is False
    assert classify("END").tx is TxAction.COMMIT
    assert classify("ABORT").tx is TxAction.ROLLBACK
    sp = classify("SAVEPOINT before_update")
    assert (sp.tx, sp.target) == (TxAction.SAVEPOINT, "before_update")
    two_phase = classify("COMMIT PREPARED 'tx-42'")
    assert (two_phase.tx, two_phase.target, two_phase.read_only) == (
        TxAction.COMMIT_PREPARED,
        "tx-42",
        False,
    )
    # The last transaction-control statement of a string wins.
    assert classify("BEGIN; SELECT 1; COMMIT").tx is TxAction.COMMIT


def test_hint_never_makes_a_write_a_read() -> None:
    c = classify("/* dbbalancer:replica */ UPDATE t SET a = 1")
    assert c.hint is RouteHint.REPLICA
    assert c.kind is StatementKind.WRITE
    assert not c.read_only
    assert c.is_write


def test_hint_only_counts_in_leading_comments() -> None:
    assert classify("SELECT 1 -- dbbalancer:primary").hint is None
    assert classify("/* x */\n-- dbbalancer:primary\nSELECT 1").hint is RouteHint.PRIMARY


def test_primary_hint_on_a_read() -> None:
    c = classify("/* dbbalancer:primary */ SELECT * FROM t")
    assert (c.kind, c.reason, c.read_only, c.is_write) == (
        StatementKind.READ,
        Reason.HINT_PRIMARY,
        False,
        False,
    )


def test_prepare_reports_inner_statement() -> None:
    c = classify("PREPARE up (int) AS UPDATE t SET a = $1")
    assert c.prepared_name == "up"
    assert c.inner is not None
    assert c.inner.kind is StatementKind.WRITE
    r = classify("PREPARE rd AS SELECT lower(x) FROM t")
    assert r.inner is not None
    assert r.inner.read_only
    assert r.functions == ("lower",)


def test_with_hold_cursor_pins_and_close_unpins() -> None:
    d = classify("DECLARE cur CURSOR WITH HOLD FOR SELECT * FROM t")
    assert (d.pins, d.target) == ((PinReason.WITH_HOLD_CURSOR,), "cur")
    assert classify("CLOSE cur").unpins == (UnpinEvent.CLOSE_CURSOR,)


# ---------------------------------------------------------------------------------------------
# Functions and volatility
# ---------------------------------------------------------------------------------------------
def test_functions_are_reported_as_the_server_names_them() -> None:
    c = classify('SELECT Lower(x), "MyFunc"(1), App.Do_It(2), pg_catalog.upper(y) FROM t')
    assert c.functions == ("lower", "MyFunc", "app.do_it", "pg_catalog.upper")


def test_casts_aliases_and_special_syntax_are_not_calls() -> None:
    c = classify(
        "SELECT x::numeric(10,2), CAST(y AS varchar(3)), coalesce(a, b), "
        "count(*) OVER (ORDER BY a) FROM generate_series(1, 3) AS g(i), (SELECT 1) s(j)"
    )
    assert c.kind is StatementKind.READ
    assert c.functions == ("count", "generate_series")


def test_volatility_lookup_decides() -> None:
    seen: list[str] = []
    table = {"app.stable_fn": "s", "immut": "i", "vol": "v"}

    def lookup(name: str) -> str | None:
        seen.append(name)
        return table.get(name)

    c = Classifier(volatility=lookup)
    assert c.classify("SELECT app.stable_fn(1), immut(2)").kind is StatementKind.READ
    assert c.classify("SELECT vol()").reason is Reason.VOLATILE_FUNCTION
    assert c.classify("SELECT nobody_knows()").reason is Reason.UNKNOWN_FUNCTION
    # No answer from the lookup: the built-in allow-list applies.
    assert c.classify("SELECT lower('A')").kind is StatementKind.READ
    assert "app.stable_fn" in seen
    assert "lower" in seen


def test_lookup_cannot_override_special_functions() -> None:
    c = Classifier(volatility=lambda name: "i" if name == "nextval" else "v")
    assert c.classify("SELECT nextval('s')").reason is Reason.SEQUENCE_FUNCTION
    # pg_sleep is volatile in pg_proc but harmless on a standby.
    assert c.classify("SELECT pg_sleep(1)").kind is StatementKind.READ
    assert c.classify("SELECT lower('A')").reason is Reason.VOLATILE_FUNCTION


# What a hot standby refuses (tests/integration/test_pg_standby_functions.py asks a real one).
STANDBY_REFUSED_CALLS = (
    "txid_current()",
    "pg_current_xact_id()",
    "lo_create(0)",
    "lo_creat(-1)",
    "lo_import('/tmp/data.bin')",
    "lo_import('/tmp/data.bin', 0)",
    "lo_from_bytea(0, 'x'::bytea)",
    "pg_current_wal_lsn()",
    "pg_current_wal_insert_lsn()",
    "pg_current_wal_flush_lsn()",
    "pg_switch_wal()",
    "pg_create_restore_point('r')",
    "pg_walfile_name('0/0')",
    "pg_walfile_name_offset('0/0')",
    "pg_log_standby_snapshot()",
    "pg_logical_emit_message(false, 'p', 'x')",
    "pg_replication_origin_oid('o')",
    "pg_replication_origin_create('o')",
    "pg_replication_origin_session_setup('o')",
    "pg_replication_origin_xact_setup('0/0', now())",
)


def _both_paths(c: Classifier, sql: str) -> tuple[Classification, Classification]:
    toks, _lead, error, _bs = _tokenize(sql)
    fast = c._fast(toks)
    assert fast is not None, sql
    return _combine(fast), _combine(c._authority(sql, toks, error, _Ctx()))


@pytest.mark.parametrize("call", STANDBY_REFUSED_CALLS)
@pytest.mark.parametrize("volatility", [None, "i", "s", "v"])
def test_functions_a_standby_refuses_go_to_the_primary(call: str, volatility: str | None) -> None:
    """Whatever pg_proc says, unqualified or pg_catalog-qualified, fast path and parse tree."""
    c = Classifier(volatility=lambda name: volatility)
    for sql in (f"SELECT {call}", f"SELECT pg_catalog.{call}", f"SELECT a, {call} FROM t"):
        for result in (c.classify(sql), *_both_paths(c, sql)):
            assert (result.kind, result.reason, result.read_only) == (
                StatementKind.WRITE,
                Reason.PRIMARY_ONLY_FUNCTION,
                False,
            ), sql
    assert classify(f"SELECT myschema.{call}").reason is Reason.UNKNOWN_FUNCTION
    assert classify(f"INSERT INTO t VALUES ({call})").reason is Reason.DML


def test_primary_only_reason_and_its_rank() -> None:
    assert Reason.PRIMARY_ONLY_FUNCTION.value == "primary_only_function"
    c = Classifier(volatility=lambda name: "s")
    assert c.classify("SELECT txid_current(), nextval('s')").reason is Reason.SEQUENCE_FUNCTION
    assert c.classify("SELECT txid_current(), pg_notify('c', 'x')").reason is (
        Reason.PRIMARY_ONLY_FUNCTION
    )
    assert c.classify("SELECT txid_current() FOR UPDATE").reason is Reason.SELECT_FOR_LOCK
    assert classify("SELECT txid_current(), mystery()").reason is Reason.PRIMARY_ONLY_FUNCTION
    assert classify("/* dbbalancer:replica */ SELECT txid_current()").read_only is False


def test_explain_of_a_primary_only_function_goes_to_the_primary() -> None:
    """The planner folds pg_walfile_name('0/0') and a standby refuses it: no EXPLAIN there."""
    c = classify("EXPLAIN SELECT pg_walfile_name('0/0')")
    assert (c.kind, c.reason, c.read_only) == (
        StatementKind.WRITE,
        Reason.PRIMARY_ONLY_FUNCTION,
        False,
    )
    assert classify("EXPLAIN SELECT pg_catalog.txid_current()").read_only is False
    assert classify("EXPLAIN SELECT lower('a')").reason is Reason.EXPLAIN
    analyzed = classify("EXPLAIN ANALYZE SELECT txid_current()")
    assert analyzed.reason is Reason.EXPLAIN_ANALYZE_WRITE


def test_functions_a_standby_accepts_stay_reads() -> None:
    """A standby answers these (NULL, no xid assigned there): pg_proc's volatility decides."""
    c = Classifier(volatility=lambda name: "s")
    for sql in (
        "SELECT txid_current_if_assigned()",
        "SELECT pg_current_xact_id_if_assigned()",
        "SELECT pg_current_snapshot(), txid_current_snapshot()",
        "SELECT pg_last_wal_replay_lsn()",
    ):
        assert c.classify(sql).read_only, sql


def test_primary_only_functions_are_on_no_allow_list() -> None:
    assert not _PRIMARY_ONLY_FUNCS & (_SAFE_BUILTINS | _REPLICA_SAFE_VOLATILE)


def test_set_volatility_clears_function_dependent_cache_entries() -> None:
    c = Classifier()
    assert c.classify("SELECT report(1)").reason is Reason.UNKNOWN_FUNCTION
    assert c.classify("SELECT 1").kind is StatementKind.READ
    entries_before = c.cache_info()[0]
    c.set_volatility(lambda name: "s" if name == "report" else None)
    assert c.cache_info()[0] == entries_before - 1
    assert c.classify("SELECT report(1)").kind is StatementKind.READ
    assert c.classify("SELECT report(2)").kind is StatementKind.READ
    c.set_volatility(None)
    assert c.classify("SELECT report(3)").reason is Reason.UNKNOWN_FUNCTION


# ---------------------------------------------------------------------------------------------
# Learned writes
# ---------------------------------------------------------------------------------------------
def test_remember_write_applies_to_the_template() -> None:
    c = Classifier()
    assert c.classify("SELECT * FROM audit_view WHERE id = 1").kind is StatementKind.READ
    c.remember_write("SELECT * FROM audit_view WHERE id = 1")
    learned = c.classify("SELECT * FROM audit_view WHERE id = 1")
    assert (learned.kind, learned.reason, learned.read_only) == (
        StatementKind.WRITE,
        Reason.LEARNED_WRITE,
        False,
    )
    assert c.classify("SELECT * FROM audit_view WHERE id = 99").reason is Reason.LEARNED_WRITE
    assert c.classify("SELECT * FROM other_view WHERE id = 1").kind is StatementKind.READ
    assert Classifier().classify("SELECT * FROM audit_view WHERE id = 1").kind is (
        StatementKind.READ
    )


def test_remember_write_for_a_literal_sensitive_template() -> None:
    c = Classifier()
    assert c.classify("SELECT set_config('a.b', '1', false)").kind is StatementKind.SESSION
    assert c.classify("SELECT set_config('a.b', '2', false)").kind is StatementKind.SESSION
    c.remember_write("SELECT set_config('a.b', '3', false)")
    again = c.classify("SELECT set_config('a.b', '1', false)")
    assert again.reason is Reason.LEARNED_WRITE
    assert again.settings == (SettingChange("a.b", "1", False),)


def test_learned_writes_are_bounded() -> None:
    c = Classifier(cache_size=3)
    for i in range(10):
        c.remember_write(f"SELECT * FROM v{i}")
    assert c.cache_info()[1] == 3
    assert c.classify("SELECT * FROM v9").reason is Reason.LEARNED_WRITE
    assert c.classify("SELECT * FROM v0").kind is StatementKind.READ


# ---------------------------------------------------------------------------------------------
# Cache and fingerprint
# ---------------------------------------------------------------------------------------------
def test_literal_variants_share_one_cache_entry() -> None:
    c = Classifier()
    first = c.classify("SELECT abalance FROM pgbench_accounts WHERE aid = 1;")
    for aid in (2, 48213, 99999):
        assert c.classify(f"SELECT abalance FROM pgbench_accounts WHERE aid = {aid};") is first
    assert c.classify("SELECT * FROM t WHERE name = 'bob' /* trace=1 */") is c.classify(
        "SELECT * FROM t WHERE name = 'it''s' /* trace=2 */"
    )
    assert c.cache_info()[0] == 2


def test_repeated_text_is_served_from_the_cache() -> None:
    c = Classifier()
    first = c.classify("BEGIN")
    assert c.classify("BEGIN") is first


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("SET work_mem = 1", "SET work_mem = 2"),
        ("SET application_name = 'a'", "SET application_name = 'b'"),
        ("SELECT set_config('x.y', 'a', false)", "SELECT set_config('x.y', 'b', true)"),
        ("EXPLAIN (ANALYZE 0) DELETE FROM t", "EXPLAIN (ANALYZE 1) DELETE FROM t"),
        ("EXPLAIN (ANALYZE 'off') DELETE FROM t", "EXPLAIN (ANALYZE 'on') DELETE FROM t"),
        ("PREPARE TRANSACTION 'a'", "PREPARE TRANSACTION 'b'"),
        ("/* dbbalancer:replica */ SELECT 1", "/* dbbalancer:primary */ SELECT 1"),
        ("/* x */ SELECT 1", "/* dbbalancer:primary */ SELECT 1"),
        ("SELECT 'a\\'; DELETE FROM t; --'", "SELECT 'abc'"),
        ("SELECT 'abc'", "SELECT 'a\\'; DELETE FROM t; --'"),
        ("SELECT f1(1)", "SELECT f2(1)"),
        ('SELECT "f1"(1)', 'SELECT "f2"(1)'),
        ('SELECT "f 1"(1)', 'SELECT "f 2"(1)'),
        ('SELECT "f.1"(1), 2', 'SELECT "f.2"(1), 3'),
        ('SELECT a FROM "t 1', 'SELECT a FROM "t 2'),
        ("SELECT a1(2)", "SELECT a2(2)"),
        # Same text after a nested comment would collide if the comment were lexed flat.
        ("/* /* */ '*/ SELECT 1; --'", "/* /* */ '*/ DELETE FROM t; --'"),
        ("/* /* */ '*/ DELETE FROM t; --'", "/* /* */ '*/ SELECT 1; --'"),
        ("SELECT $$a$$; SELECT 1", "SELECT $$a$$; DELETE FROM t"),
        ("SELECT E'x', 1", "SELECT e'x', 1"),
    ],
)
def test_cache_never_conflates_different_classifications(a: str, b: str) -> None:
    shared = Classifier()
    got_a = shared.classify(a)
    got_b = shared.classify(b)
    assert got_a == Classifier().classify(a)
    assert got_b == Classifier().classify(b)


def test_fingerprint_drops_literals_and_comments_only() -> None:
    assert _fingerprint("SELECT 1 FROM t WHERE a = 'x'") == _fingerprint(
        "SELECT 22 FROM t WHERE a = 'it''s'"
    )
    assert _fingerprint("SELECT 1 /* a */") == _fingerprint("SELECT 2 /* bbb */")
    assert _fingerprint("SELECT t1.a") != _fingerprint("SELECT t2.a")
    assert _fingerprint('SELECT "1"') != _fingerprint('SELECT "2"')
    assert _fingerprint("SELECT a$1") != _fingerprint("SELECT a$2")
    assert _fingerprint("SELECT $1") != _fingerprint("SELECT $2")
    assert _fingerprint('SELECT "a 1"') != _fingerprint('SELECT "a 2"')
    # Both shapes of key are used: numbers and quoted identifiers only, or everything.
    light, full = _fingerprint("SELECT 1"), _fingerprint("SELECT '1'")
    assert isinstance(light, tuple)
    assert light[0] is None
    assert isinstance(full, tuple)
    assert full[0] == "SELECT "
    assert _fingerprint("SELECT 1") == _fingerprint("SELECT 2.5e3")
    assert _fingerprint('SELECT "x" + 1') == _fingerprint('SELECT "x" + 22')
    assert _fingerprint("SELECT a FROM t") == "SELECT a FROM t"


def test_lru_eviction_and_disabled_cache() -> None:
    c = Classifier(cache_size=2)
    c.classify("SELECT a FROM t")
    c.classify("SELECT b FROM t")
    c.classify("SELECT a FROM t")  # refresh
    c.classify("SELECT c FROM t")  # evicts b
    assert c.cache_info()[0] == 2
    off = Classifier(cache_size=0)
    assert off.classify("SELECT 1").kind is StatementKind.READ
    assert off.cache_info() == (0, 0)


def test_long_statements_are_classified_but_not_cached() -> None:
    c = Classifier(max_cached_length=100)
    sql = "INSERT INTO t VALUES " + ", ".join(f"({i})" for i in range(100))
    assert c.classify(sql).kind is StatementKind.WRITE
    assert c.cache_info()[0] == 0


# ---------------------------------------------------------------------------------------------
# Robustness
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "sql",
    [
        "SELECT 1\x00; DELETE FROM t",
        "SELECT " + "(" * 3000 + "1" + ")" * 3000,
        "SELECT " + "f(" * 3000 + "1" + ")" * 3000,
        "SELECT " + "-" * 5000,
        "'" * 1001,
        "$$" * 501,
        "/*" * 500,
        "\udcff",
        "SELECT 1" + " " * 100_000,
    ],
)
def test_never_raises(sql: str) -> None:
    c = classify(sql)
    assert isinstance(c, Classification)
    if "\x00" in sql:
        assert c.reason is Reason.PARSE_ERROR


def test_standard_conforming_strings_off_ambiguity() -> None:
    # With standard_conforming_strings=off the DELETE is a real statement.
    assert classify("SELECT 'x\\''; DELETE FROM t; -- '").reason is Reason.AMBIGUOUS_ESCAPE
    # A backslash that does not change the token boundaries is fine.
    assert classify("SELECT 'C:\\temp'").kind is StatementKind.READ


def test_module_level_classify_is_pure() -> None:
    assert classify("SELECT 1") == Classifier().classify("SELECT 1")
    assert classify("SELECT nextval('s')").reason is Reason.SEQUENCE_FUNCTION


def test_core_statement_module_imports_nothing_protocol_specific() -> None:
    import dbbalancer.core.statement as module

    # The source beside the module: __file__ is a .so when the module is compiled (setup.py).
    tree = ast.parse(Path(module.__file__ or "").with_name("statement.py").read_text("utf-8"))
    imported: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            imported.add(node.module or "")
    assert imported <= {"__future__", "enum", "dataclasses"}
