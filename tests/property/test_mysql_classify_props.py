"""Property tests for the MySQL/MariaDB statement classifier.

Invariants: classification never raises; a multi-statement string with any write goes to the
primary; comments and blanks around a statement change nothing; routing hints only ever make
an answer more conservative (primary) or pick among reads (replica); literal values never change
a template's routing; a cached answer equals a fresh one; hiding a write in a conditional
comment never makes it a read.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from dbbalancer.core.statement import Classification, RouteHint, StatementKind
from dbbalancer.mysql.classify import Classifier, _classify_lexed, _Ctx, _tokenize, classify

# Pieces chosen to hit the lexer's and the analysis' corners.
_PIECES = [
    "SELECT",
    "select",
    "FROM",
    "t",
    "`t`",
    "`a``b`",
    "WHERE",
    "a",
    "=",
    "(",
    ")",
    ",",
    ";",
    ".",
    "*",
    "+",
    "-",
    "--",
    "-- ",
    "/",
    "#",
    "\n",
    "/*",
    "*/",
    "/*!",
    "/*!50700",
    "/*M!",
    "/* c */",
    "AS",
    "INTO",
    "@x",
    "@@session.x",
    "@'q'",
    ":=",
    "FOR",
    "UPDATE",
    "SHARE",
    "LOCK",
    "IN",
    "MODE",
    "NEXT",
    "VALUE",
    "INSERT",
    "DELETE",
    "REPLACE",
    "SET",
    "autocommit",
    "NAMES",
    "GLOBAL",
    "USE",
    "PREPARE",
    "EXECUTE",
    "XA",
    "START",
    "TRANSACTION",
    "READ",
    "ONLY",
    "BEGIN",
    "COMMIT",
    "WITH",
    "EXPLAIN",
    "ANALYZE",
    "SHOW",
    "CALL",
    "HANDLER",
    "count(*)",
    "count (*)",
    "f(1)",
    "GET_LOCK('a', 1)",
    "NEXTVAL(s)",
    "LAST_INSERT_ID()",
    "1",
    "0x1F",
    "1e5",
    "1abc",
    "'x'",
    "'it''s'",
    "'a\\'b'",
    '"d"',
    '"a\\"b"',
    "_utf8mb4'x'",
    "N'x'",
    "\\",
    "?",
    "\x00",
    "dbbalancer:primary",
    "/* dbbalancer:replica */",
]

_READS = [
    "SELECT 1",
    "SELECT a FROM t WHERE b = 'x'",
    "SELECT COUNT(*) FROM t",
    "SHOW TABLES",
    "SELECT @@version",
    "(SELECT 1)",
    "TABLE t",
    "DO 1",
    "DESCRIBE t",
    "EXPLAIN SELECT * FROM t",
    "WITH c AS (SELECT 1) SELECT * FROM c",
]
_WRITES = [
    "INSERT INTO t VALUES (1)",
    "insert t values (1)",
    "UPDATE t SET a = 1",
    "DELETE FROM t",
    "REPLACE INTO t VALUES (1)",
    "LOAD DATA INFILE 'f' INTO TABLE t",
    "CREATE TABLE u (a INT)",
    "DROP TABLE t",
    "ALTER TABLE t ADD b INT",
    "TRUNCATE t",
    "RENAME TABLE a TO b",
    "GRANT ALL ON *.* TO u",
    "CALL p()",
    "LOCK TABLES t WRITE",
    "SELECT * FROM t FOR UPDATE",
    "SELECT a INTO @x FROM t",
    "SELECT NEXTVAL(s)",
    "SELECT GET_LOCK('a', 1)",
    "SELECT f(1)",
    "SET GLOBAL x = 1",
    "WITH c AS (SELECT 1) DELETE FROM t",
    "FLUSH TABLES",
    "OPTIMIZE TABLE t",
]
_DECORATIONS = ["", " ", "\n", "\t", "/* c */", "-- c\n", "# c\n", "/*+ hint */ "]

_texts = st.lists(st.sampled_from(_PIECES), max_size=14).map(" ".join)
_glued = st.lists(st.sampled_from(_PIECES), max_size=14).map("".join)


def _route(c: Classification) -> tuple[StatementKind, bool]:
    return c.kind, c.read_only


@settings(max_examples=400)
@given(st.one_of(st.text(max_size=60), _texts, _glued))
def test_never_raises(sql: str) -> None:
    c = Classifier().classify(sql)
    assert isinstance(c, Classification)
    # Whatever it is, it is never both a write and replica-safe.
    assert not (c.kind is StatementKind.WRITE and c.read_only)


@given(
    st.lists(st.sampled_from(_READS), max_size=3),
    st.sampled_from(_WRITES),
    st.lists(st.sampled_from(_READS), max_size=3),
    st.sampled_from(_DECORATIONS),
)
def test_any_write_in_a_multi_statement_goes_to_the_primary(
    before: list[str], write: str, after: list[str], decoration: str
) -> None:
    sql = (";" + decoration).join([*before, write, *after])
    c = classify(sql)
    assert not c.read_only
    assert c.kind is not StatementKind.READ or c.statements == 1


@given(st.lists(st.sampled_from(_READS), min_size=1, max_size=4), st.sampled_from(_DECORATIONS))
def test_reads_together_stay_reads(reads: list[str], decoration: str) -> None:
    c = classify((";" + decoration).join(reads))
    assert c.kind is StatementKind.READ
    assert c.read_only


@given(st.sampled_from(_READS + _WRITES), st.sampled_from(_DECORATIONS), st.booleans())
def test_comments_and_blanks_change_nothing(sql: str, decoration: str, semicolon: bool) -> None:
    plain = classify(sql)
    decorated = classify(decoration + sql + (";" if semicolon else "") + " " + decoration)
    assert (decorated.kind, decorated.reason, decorated.read_only) == (
        plain.kind,
        plain.reason,
        plain.read_only,
    )


@given(st.one_of(st.sampled_from(_READS + _WRITES), _texts))
def test_primary_hint_always_goes_to_the_primary(sql: str) -> None:
    c = classify("/* dbbalancer:primary */ " + sql)
    assert not c.read_only
    assert c.hint is RouteHint.PRIMARY


@given(st.one_of(st.sampled_from(_READS + _WRITES), _texts), st.sampled_from(["/* ", "-- ", "# "]))
def test_replica_hint_never_turns_anything_into_a_read(sql: str, opener: str) -> None:
    closer = " */" if opener == "/* " else "\n"
    plain = classify(sql)
    hinted = classify(opener + "dbbalancer:replica" + closer + sql)
    assert hinted.kind is plain.kind
    assert not (hinted.read_only and not plain.read_only)
    if hinted.hint is RouteHint.REPLICA and plain.hint is None:
        assert hinted.read_only is plain.read_only


@given(st.sampled_from(_WRITES), st.sampled_from(["/*!99999 ", "/*M! ", "/*M!100000 ", "/*!"]))
def test_a_write_in_a_conditional_comment_is_never_a_read(write: str, opener: str) -> None:
    assert not classify("SELECT 1; " + opener + write + " */").read_only
    assert not classify(opener + write + " */").read_only


_TEMPLATES = [
    "SELECT * FROM t WHERE id = {n} AND name = {s}",
    "UPDATE t SET a = {s} WHERE id = {n}",
    "SELECT * FROM t WHERE id = {n} FOR UPDATE",
    "SELECT GET_LOCK({s}, {n})",
    "SET @x = {n}",
    "SET autocommit = {n}",
    "SELECT @y := {s}",
    "INSERT INTO t VALUES ({n}, {s}), ({n}, {s})",
    "PREPARE p FROM {s}",
    "XA START {s}",
    "SELECT {s} LIKE {s}",
]


@given(
    st.sampled_from(_TEMPLATES),
    st.lists(st.integers(0, 10**12), min_size=2, max_size=2),
    st.lists(st.text(st.characters(blacklist_characters="'\\\x00"), max_size=8), min_size=2),
)
def test_literal_values_never_change_a_templates_routing(
    template: str, numbers: list[int], strings: list[str]
) -> None:
    a = template.replace("{n}", str(numbers[0])).replace("{s}", f"'{strings[0]}'")
    b = template.replace("{n}", str(numbers[1])).replace("{s}", f"'{strings[1]}'")
    ca, cb = classify(a), classify(b)
    if template.startswith("PREPARE"):
        return  # the prepared text is the statement: its literal is what it runs
    assert _route(ca) == _route(cb)
    assert ca.reason is cb.reason
    assert ca.pins == cb.pins


@settings(max_examples=300)
@given(st.lists(st.one_of(_texts, st.sampled_from(_READS + _WRITES)), min_size=1, max_size=6))
def test_cached_answers_equal_fresh_ones(texts: list[str]) -> None:
    shared = Classifier(cache_size=4)
    for sql in texts + texts:
        assert shared.classify(sql) == Classifier(cache_size=0).classify(sql)


@settings(max_examples=400)
@given(st.one_of(_texts, _glued, st.text(max_size=40)))
def test_the_analysis_itself_never_raises(sql: str) -> None:
    """The classifier maps an internal error to PARSE_ERROR; make sure that never happens."""
    _classify_lexed(sql, _tokenize(sql), _Ctx())
