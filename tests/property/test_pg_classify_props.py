"""Property tests for the PostgreSQL statement classifier.

Invariants: classification never raises; appending a write to a read makes a write; comments
and whitespace around a statement change nothing; literal values never change a template's
routing; a cached answer equals a fresh one; the token fast path is never less conservative
than the parse tree.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from dbbalancer.core.statement import Classification, Reason, StatementKind
from dbbalancer.postgres.classify import Classifier, _combine, _Ctx, _tokenize, classify

# Pieces of SQL chosen to hit the lexer's and the fast path's corners.
_PIECES = [
    "SELECT",
    "select",
    "FROM",
    "t",
    "u",
    "WHERE",
    "a",
    "=",
    "(",
    ")",
    ",",
    ";",
    ".",
    "::",
    "int",
    "numeric(10,2)",
    "*",
    "+",
    "-",
    "/",
    "AS",
    "x(a)",
    "WITH",
    "AS (",
    "INSERT INTO t VALUES (1)",
    "UPDATE",
    "update",
    "DELETE",
    "delete",
    "MERGE",
    "FOR",
    "UPDATE",
    "SHARE",
    "NO",
    "KEY",
    "INTO",
    "TEMP",
    "VALUES",
    "TABLE",
    "nextval('s')",
    "lower(a)",
    "count(*)",
    "f(1)",
    '"Q"(1)',
    "pg_sleep(1)",
    "set_config('a.b', 'c', false)",
    "pg_advisory_lock(1)",
    "OVER (PARTITION BY a)",
    "FILTER (WHERE a)",
    "OPERATOR(pg_catalog.+)",
    "ANY",
    "IN",
    "1",
    "1.5e3",
    ".5",
    "0x1F",
    "'x'",
    "'it''s'",
    "E'a\\'b'",
    "'C:\\dir'",
    "$$;DELETE$$",
    "$t$ ' $t$",
    "$1",
    '"a;b"',
    '"update"',
    "/* c */",
    "/* /* n */ */",
    "-- c\n",
    "/* dbbalancer:replica */",
    "/* dbbalancer:primary */",
    "\n",
    "BEGIN",
    "COMMIT",
    "EXPLAIN",
    "ANALYZE",
    "LIMIT 1",
    "ORDER BY",
    "JOIN",
    "LEFT",
    "LATERAL",
    "cube",
    "materialized",
    "NOT",
    "RECURSIVE",
    "TABLESAMPLE",
    "bernoulli",
    "SET",
    "SHOW",
    "LISTEN",
    "COPY",
    "TO",
    "STDOUT",
]
_piece_lists = st.lists(st.sampled_from(_PIECES), min_size=1, max_size=14)
_sqlish = _piece_lists.map(" ".join)

# Mostly valid queries, so that the parse tree has something to say about them.
_targets = st.lists(
    st.sampled_from(
        [
            "a",
            "*",
            "t.update",
            '"update"',
            "lower(a)",
            "count(*)",
            "sum(a) OVER (ORDER BY a)",
            "nextval('s')",
            "f1(a)",
            "f2(a)",
            '"f1"(a)',
            "pg_catalog.upper(a)",
            "app.f(1)",
            "a::numeric(10,2)",
            "CAST(a AS varchar(3))",
            "coalesce(a, 1)",
            "pg_sleep(0)",
            "pg_advisory_lock(1)",
            "pg_advisory_unlock_all()",
            "1",
            "'x'",
            "$$;$$",
            "E'\\''",
            "(SELECT max(b) FROM u)",
            "EXISTS (SELECT 1 FROM u FOR UPDATE)",
            "a AS update",
        ]
    ),
    min_size=1,
    max_size=3,
).map(", ".join)
_froms = st.sampled_from(
    [
        "t",
        "t AS x(a)",
        "t x(a)",
        "generate_series(1, 3) AS g(a)",
        "(SELECT 1 AS a) s",
        "t JOIN u ON t.a = u.a",
        "t LEFT JOIN (SELECT a FROM u) v USING (a)",
        "my_srf() r",
        "my_srf() AS (a int)",
        "json_to_record('{}') AS (a int)",
        "t TABLESAMPLE bernoulli (5)",
        "ONLY t",
    ]
)
_wheres = st.sampled_from(
    [
        "",
        " WHERE a = 1",
        " WHERE a IN (SELECT b FROM u)",
        " WHERE a IN (SELECT b FROM u FOR SHARE)",
        " WHERE a = ANY (ARRAY[1, 2])",
        " WHERE update = 1",
        " WHERE a = f1(2)",
        " WHERE a > 0 GROUP BY a HAVING count(*) > 1",
    ]
)
_locks = st.sampled_from(
    [
        "",
        "",
        " FOR UPDATE",
        " FOR NO KEY UPDATE",
        " FOR SHARE",
        " FOR KEY SHARE SKIP LOCKED",
        " FOR UPDATE OF t NOWAIT",
        " FOR READ ONLY",
        " LIMIT 1",
        " ORDER BY 1 FETCH FIRST 1 ROW ONLY",
    ]
)
_selects = st.builds(
    lambda t, f, w, lk: f"SELECT {t} FROM {f}{w}{lk}", _targets, _froms, _wheres, _locks
)
_ctes = st.sampled_from(
    [
        "SELECT 1 AS a",
        "INSERT INTO t VALUES (1) RETURNING *",
        "UPDATE t SET a = 1 RETURNING *",
        "DELETE FROM t RETURNING *",
        "SELECT a FROM t FOR UPDATE",
        "WITH y AS (DELETE FROM t RETURNING *) SELECT * FROM y",
    ]
)
_queries = st.one_of(
    _selects,
    st.builds(lambda c, q: f"WITH x AS ({c}) {q}", _ctes, _selects),
    st.builds(lambda c: f"WITH x(a) AS MATERIALIZED ({c}) SELECT * FROM x", _ctes),
    st.builds(lambda c: f"WITH x AS ({c}) UPDATE t SET a = 1", _ctes),
    st.builds(lambda q: f"EXPLAIN {q}", _selects),
    st.builds(lambda q: f"EXPLAIN ANALYZE {q}", _selects),
    st.builds(lambda a, b: f"{a}; {b}", _selects, _selects),
    st.builds(lambda q: f"({q})", _selects),
)
_statements = st.one_of(
    _queries,
    _sqlish,
    _piece_lists.map(lambda ps: "SELECT " + " ".join(ps)),
    _piece_lists.map(lambda ps: "WITH x AS (" + " ".join(ps) + ") SELECT * FROM x"),
    st.text(max_size=60),
)
_comment_text = st.text(
    alphabet=st.characters(exclude_characters="\x00*/\n\r", codec="utf-8"),
    max_size=20,
).filter(lambda s: "dbbalancer" not in s.lower())


def _routing(c: Classification) -> tuple[object, ...]:
    return (c.kind, c.reason, c.read_only, c.statements, c.pins, c.unpins, c.tx, c.hint)


@settings(max_examples=400)
@given(st.one_of(st.text(), _statements))
def test_classify_never_raises(sql: str) -> None:
    c = classify(sql)
    assert isinstance(c, Classification)
    assert c.read_only is False or c.kind is not StatementKind.WRITE


@settings(max_examples=300)
@given(_statements)
def test_appending_a_write_to_a_read_makes_a_write(sql: str) -> None:
    if classify(sql).kind is not StatementKind.READ:
        return
    # The newline ends a trailing "--" comment, which would otherwise swallow the INSERT.
    c = classify(sql + "\n; INSERT INTO t VALUES (1)")
    assert c.kind is StatementKind.WRITE
    assert not c.read_only


@settings(max_examples=300)
@given(_statements, _comment_text, st.sampled_from(["block", "line"]), st.text(" \t\n", max_size=3))
def test_comments_and_whitespace_around_a_statement_change_nothing(
    sql: str, text: str, style: str, space: str
) -> None:
    comment = f"/*{text}*/" if style == "block" else f"--{text}\n"
    wrapped = f"{space}{comment}{space} {sql}\n{space}/*{text}*/{space}"
    assert _routing(Classifier().classify(wrapped)) == _routing(Classifier().classify(sql))


_TEMPLATES = [
    "SELECT abalance FROM pgbench_accounts WHERE aid = {n};",
    "UPDATE pgbench_accounts SET abalance = abalance + {n} WHERE aid = {n};",
    "INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) "
    "VALUES ({n}, {n}, {n}, {n}, CURRENT_TIMESTAMP);",
    "SELECT * FROM t WHERE name = {s} AND id IN ({n}, {n}) LIMIT {n}",
    "SELECT * FROM t WHERE a = {s} FOR UPDATE",
    "WITH x AS (INSERT INTO t VALUES ({s}) RETURNING *) SELECT * FROM x",
    "SELECT nextval({s}), lower({s})",
    "SELECT set_config({s}, {s}, false)",
    "SET application_name = {s}",
    "SET work_mem = {n}",
    "EXPLAIN (ANALYZE {b}) DELETE FROM t WHERE a = {n}",
    "EXPLAIN SELECT {s}",
    "/* dbbalancer:replica */ SELECT {s}; -- {c}\n",
    "SELECT {s} /* {c} */, {n} -- {c}\n",
    "COPY (SELECT {s}) TO STDOUT",
    "PREPARE TRANSACTION {s}",
    "DO {s}",
    "SELECT {s}; DELETE FROM t WHERE a = {s}",
]


def _string_literal(value: str, style: int) -> str:
    if style == 0:
        return "'" + value.replace("'", "''") + "'"
    if style == 1:
        return "E'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
    tag = "q"
    while f"${tag}" in value:  # then the first "$tag$" after the opener is the closer
        tag += "q"
    return f"${tag}${value}${tag}$"


_nul_free = st.text(
    alphabet=st.characters(exclude_characters="\x00", codec="utf-8"),
    max_size=12,
)
_literal_values = st.one_of(
    _nul_free.filter(lambda s: "\\" not in s),
    st.sampled_from(["*/", "/*", "--", ";", "'", "''", "$$", "$q$", "DELETE FROM t;", "1e5"]),
)


@st.composite
def _filled(draw: st.DrawFn, template: str) -> str:
    out = template
    while "{s}" in out:
        value = draw(_literal_values)
        out = out.replace("{s}", _string_literal(value, draw(st.integers(0, 2))), 1)
    while "{n}" in out:
        number = draw(st.one_of(st.integers(-(10**9), 10**9).map(str), st.sampled_from(["1.5"])))
        out = out.replace("{n}", number, 1)
    while "{b}" in out:
        out = out.replace("{b}", draw(st.sampled_from(["0", "1", "true", "false"])), 1)
    while "{c}" in out:
        out = out.replace("{c}", draw(_comment_text), 1)
    return out


@settings(max_examples=200)
@given(st.data())
def test_literal_values_do_not_change_a_template(data: st.DataObject) -> None:
    template = data.draw(st.sampled_from(_TEMPLATES))
    a = data.draw(_filled(template))
    b = data.draw(_filled(template))
    ca, cb = Classifier().classify(a), Classifier().classify(b)
    if "{b}" in template:  # EXPLAIN (ANALYZE x): the literal is the option's value
        return
    assert (ca.kind, ca.reason, ca.read_only, ca.statements) == (
        cb.kind,
        cb.reason,
        cb.read_only,
        cb.statements,
    )
    assert ca.kind is not StatementKind.READ or ca.reason is not Reason.PARSE_ERROR


def _bump_digits(sql: str) -> str:
    return sql.translate(str.maketrans("0123456789", "1234567890"))


@settings(max_examples=150)
@given(st.lists(st.one_of(_statements, st.sampled_from(_TEMPLATES).flatmap(_filled)), max_size=20))
def test_cached_answers_equal_fresh_answers(sqls: list[str]) -> None:
    # Variants that differ only in digits (in literals, identifiers, $n) stress the fingerprint.
    pool = [v for sql in sqls for v in (sql, _bump_digits(sql))]
    shared = Classifier(cache_size=16)
    for sql in pool + pool[::-1]:
        assert shared.classify(sql) == Classifier(cache_size=0).classify(sql)


@settings(max_examples=500)
@given(_statements)
def test_fast_path_is_never_less_conservative_than_the_parse_tree(sql: str) -> None:
    toks, _lead, error, _bs = _tokenize(sql)
    if error or not toks:
        return
    c = Classifier()
    fast = c._fast(toks)
    if fast is None:
        return
    quick = _combine(fast)
    tree = _combine(c._authority(sql, toks, False, _Ctx()))
    if tree.reason is Reason.PARSE_ERROR:
        return
    if quick.kind is StatementKind.READ:
        assert tree.kind is StatementKind.READ
        assert tree.read_only
    assert quick.statements == tree.statements
