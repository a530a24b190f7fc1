"""MySQL/MariaDB statement classifier: SQL text -> a neutral ``Classification``.

Decides whether a ``COM_QUERY`` string (or the text of ``COM_STMT_PREPARE``) may run on a
replica, and what session state it touches, for read/write splitting and transaction pooling.
Pure and sans-IO: text in, a value out; it never raises.  The rule is the PostgreSQL
classifier's: anything not known to be a plain read goes to the primary.

Design:

* **Lexing** follows the server's lexer (``sql/sql_lex.cc``): ``'...'`` and ``"..."`` strings
  with backslash escapes and doubled quotes, character-set introducers (``_utf8mb4'x'``,
  ``N'x'``, ``X'..'``, ``B'..'``), backtick identifiers, ``#`` comments, ``-- `` comments (only
  when a blank follows the dashes: ``1--1`` is arithmetic), ``/* */`` comments, numbers,
  identifiers that start with a digit (``1abc``), user variables (``@x``, ``@'x'``) and system
  variables (``@@session.x``).  Semicolons and keywords inside any of them never confuse it.
* **Executable comments**: the content of ``/*! ... */`` is SQL the server runs; the content of
  ``/*!50700 ... */`` (versioned) and ``/*M! ... */`` (MariaDB only) runs on some servers only.
  The text is classified once with that content and once without, and the more conservative
  answer wins.
* **Modes the proxy cannot see**: under ``NO_BACKSLASH_ESCAPES`` a backslash in a string is a
  plain character, and under ``ANSI_QUOTES`` ``"..."`` is an identifier without escapes.  If a
  string lexes differently under these modes the statement goes to the primary
  (``Reason.AMBIGUOUS_ESCAPE``).  A ``"..."`` token followed by ``(`` counts as a call of an
  unknown function.
* **One path, no parser library**: MySQL's routing decisions are lexical (the statement's
  leading keywords, locking clauses, ``INTO``, function names, assignments), so a careful
  tokenizer and per-statement keyword analysis decide everything.  A general SQL parser such
  as sqlglot was considered and not used: it is not the server's grammar (it accepts text the
  server rejects and turns many statements into an opaque command), it is pure Python and
  slower than the tokenizer, and it would add a dependency whose output changes between
  releases.  Whatever the analysis does not recognize is a write (``Reason.UNKNOWN``).
* **Cache**: an LRU keyed by the exact text (a lookup before any lexing), else by a fingerprint:
  the token sequence with string and number literal values dropped (strings holding a backslash
  stay whole), so ORM statements with new literals hit after one lexing pass.  A text without
  literals (``BEGIN``, a ``COM_STMT_PREPARE`` text with ``?`` placeholders) is its own key.
  When a classification *reads* a literal value (``SET x = 5``, ``PREPARE s FROM '...'``, an
  XA id, ``SELECT @x := 5``) the fingerprint is marked literal-sensitive and such strings are
  cached by exact text only.  ``bench/mysql_classify_bench.py`` measures the costs.

Decisions worth knowing:

* Unknown functions are writes: only built-in functions on the allow-list are read-safe.  Stored
  functions (``db.f()``, quoted names, anything not built in) go to the primary
  (``Reason.UNKNOWN_FUNCTION``).
* ``LAST_INSERT_ID()``, ``ROW_COUNT()``, ``FOUND_ROWS()``, ``@@identity``, ``@@warning_count``,
  ``SHOW WARNINGS`` and ``GET DIAGNOSTICS`` read the outcome of the session's previous
  statement: ``uses_last_result`` is set and the statement is not ``read_only`` (by itself it
  goes to the primary, where that statement most likely ran; the engine runs it on the
  connection that ran the previous statement).
* ``SET @x = ...`` and ``SELECT @x := ...`` report ``user_variables`` (a literal value, or None
  for a computed one that the pooler reads back); they do not pin.  ``SELECT ... INTO @x``
  still goes to the primary (``Reason.SELECT_INTO``), as ``INTO OUTFILE`` must.
* ``SET autocommit`` (any scope spelling but ``GLOBAL``) is reported as a setting and in
  ``autocommit``.  ``SET GLOBAL`` / ``PERSIST`` go to the primary.
* ``implicit_commit`` follows the server manual's list ("Statements That Cause an Implicit
  Commit"): DDL except on temporary tables, account statements, ``LOCK TABLES``,
  ``UNLOCK TABLES``, ``BEGIN`` / ``START TRANSACTION``, and the administrative statements.
  ``SET autocommit = 1`` commits only when autocommit was off: the tracker knows that, the
  classifier reports ``autocommit=True``.
* ``EXPLAIN`` does not run its statement, but the optimizer evaluates constant expressions, so
  an ``EXPLAIN`` of a statement calling a function that must run on the primary stays there.
* A ``/* dbbalancer:replica */`` hint never turns a write into a read; a
  ``/* dbbalancer:primary */`` hint makes any statement ``read_only=False``.  Hints are read
  from comments before the first token (``/* */``, ``#`` or ``-- ``).
"""

from __future__ import annotations

import dataclasses
import functools
import re
from collections import OrderedDict
from collections.abc import Callable
from typing import Final

from dbbalancer.core.classification import EMPTY as _EMPTY
from dbbalancer.core.classification import SENSITIVE as _SENSITIVE
from dbbalancer.core.classification import apply_hint as _apply_hint
from dbbalancer.core.classification import as_learned_write, learn_template, store_in_cache
from dbbalancer.core.classification import combine as _combine
from dbbalancer.core.classification import dedup as _dedup
from dbbalancer.core.classification import hint_of as _hint_of
from dbbalancer.core.statement import (
    Classification,
    PinReason,
    Reason,
    SettingChange,
    StatementKind,
    TxAction,
    UnpinEvent,
    UserVariable,
)

__all__ = ["Classifier", "classify"]

_READ: Final = StatementKind.READ
_WRITE: Final = StatementKind.WRITE
_SESSION: Final = StatementKind.SESSION
_TRANSACTION: Final = StatementKind.TRANSACTION

# --------------------------------------------------------------------------------------------
# Lexing.
# --------------------------------------------------------------------------------------------
_IDC = "A-Za-z0-9_$\\x80-\\U0010FFFF"
_S_BODY = r"[^'\\]*(?:(?:\\[\s\S]|'')[^'\\]*)*"  # '...' with backslash escapes
_D_BODY = r'[^"\\]*(?:(?:\\[\s\S]|"")[^"\\]*)*'
_S_PLAIN = r"[^']*(?:''[^']*)*"  # NO_BACKSLASH_ESCAPES
_D_PLAIN = r'[^"]*(?:""[^"]*)*'  # NO_BACKSLASH_ESCAPES, or an ANSI_QUOTES identifier
_BLANK = "[ \t\n\r\f\v]"
_PREFIX = r"(?:[nNxXbB]|_[A-Za-z0-9]+)?"


Token = tuple[str, str, str]
"""(kind, folded text, raw text).  Kinds: ``w`` word (folded lower-case), ``q`` backtick
identifier (folded = unquoted), ``dq`` double-quoted, ``s`` string, ``n`` number, ``uv`` user
variable (folded = lower-case name), ``sv`` system variable (folded = lower-case text after
``@@``), ``op`` operator, and the punctuation itself."""


class _Lexed:
    """Tokens of a text, its leading comments and what made it hard to read."""

    __slots__ = ("backslash", "conditional", "error", "lead", "toks", "toks_without")

    def __init__(self) -> None:
        self.toks: list[Token] = []
        # The tokens without the content of conditional executable comments (None if none).
        self.toks_without: list[Token] | None = None
        self.lead: list[str] = []
        self.error = False
        self.backslash = False
        self.conditional = False


def _unquote(raw: str, quote: str) -> str:
    return raw[1:-1].replace(quote + quote, quote)


def _alternatives(s_body: str, d_body: str, *, inside: bool) -> list[str]:
    """Token patterns in the order the lexer tries them (one capturing group for all)."""
    alts = [
        r"#[^\n\r]*|--(?=[ \t\n\r\f\v]|\Z)[^\n\r]*",  # line comments
        r"/\*[mM]?!(?:[0-9]{5}[0-9]?)?",  # executable comment opener
        r"/\*[\s\S]*?\*/",  # comment (the server does not nest them)
        r"/\*",  # unterminated comment
        rf"{_PREFIX}'{s_body}'",
        rf'"{d_body}"',  # a string, or an identifier under ANSI_QUOTES
        r"`[^`]*(?:``[^`]*)*`",
        _NUMBER,
        rf"[{_IDC}]+",  # identifiers may start with a digit (1abc)
        r"@@(?:`[^`]*`|[A-Za-z0-9_$.]+)",
        rf"@(?:'{s_body}'|\"{d_body}\"|`[^`]*(?:``[^`]*)*`|[A-Za-z0-9_$.]*)",
    ]
    if inside:
        alts.append(r"\*/")  # only inside an executable comment does "*/" end it
    alts += [
        r":=|<=>|->>|->|<<|>>|<=|>=|<>|!=|&&|\|\||[-+*/%=<>!&|^~?:]",
        r"[(),;.{}]",
        r"[\s\S]",  # an unterminated quote, a stray character: a lexing error
    ]
    return alts


_NUMBER = (
    r"(?:0[xX][0-9A-Fa-f]+|0[bB][01]+|[0-9]+(?:\.[0-9]*)?(?:[eE][+-]?[0-9]+)?"
    rf"|\.[0-9]+(?:[eE][+-]?[0-9]+)?)(?![{_IDC}])"
)
_NUMBER_RE: Final = re.compile(_NUMBER)


def _token_re(s_body: str, d_body: str, *, inside: bool) -> re.Pattern[str]:
    # Leading blanks are a group of each match (a blank before "(" matters, see _scan); "\Z"
    # ends trailing blanks in one empty match instead of one failed attempt per blank.
    alts = _alternatives(s_body, d_body, inside=inside)
    return re.compile(f"({_BLANK}*+)(" + "|".join(alts) + r"|\Z)")


_TOKEN_RE: Final = _token_re(_S_BODY, _D_BODY, inside=False)
_TOKEN_PLAIN_RE: Final = _token_re(_S_PLAIN, _D_PLAIN, inside=False)
_TOKEN_EXEC_RE: Final = _token_re(_S_BODY, _D_BODY, inside=True)
_TOKEN_EXEC_PLAIN_RE: Final = _token_re(_S_PLAIN, _D_PLAIN, inside=True)

# Token kind by first character; "?" kinds need a second look (_kind).
_FIRST: Final = {
    **{c: "w" for c in "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz_$"},
    **{c: "n?" for c in "0123456789"},
    **{c: c for c in "(),;{}"},
    **{c: "op" for c in "+%=<>!&|^~?:"},
    ".": ".?",
    "'": "s?",
    '"': "dq?",
    "`": "q?",
    "@": "@?",
    "#": "c",
    "-": "-?",
    "/": "/?",
    "*": "*?",
}


def _kind(tok: str) -> str:
    """Token kind: w s dq q n uv sv op c (comment) xo/xc (executable comment) x (error)."""
    c = tok[0]
    k = _FIRST.get(c)
    if k is None:
        return "w" if c >= "\x80" else "x"
    if k == "w":
        return "s" if tok[-1] == "'" else "w"  # N'..', X'..', _utf8mb4'..'
    if len(k) == 1 or k == "op":
        return k
    if k == "n?":
        return "n" if _NUMBER_RE.fullmatch(tok) else "w"
    if k == "s?" or k == "dq?" or k == "q?":
        return k[:-1] if len(tok) > 1 else "x"
    if k == "@?":
        return "sv" if tok[1:2] == "@" else "uv"
    if k == "-?":
        return "c" if tok[:2] == "--" else "op"
    if k == "/?":
        if tok[:2] != "/*":
            return "op"
        if tok == "/*":
            return "x"
        return "xo" if tok[2:3] == "!" or tok[3:4] == "!" else "c"
    if k == "*?":
        return "xc" if tok == "*/" else "op"
    return "n" if len(tok) > 1 else "."  # ".5" or "."


def _token(kind: str, raw: str, spaced: bool) -> Token:
    if kind == "w":
        return ("w", raw.lower(), raw)
    if kind == "q":
        return ("q", _unquote(raw, "`"), raw)
    if kind == "dq":
        return ("dq", _unescape(raw[1:-1], '"'), raw)
    if kind == "uv":
        name = raw[1:]
        if name[:1] in ("'", '"', "`"):
            name = _unescape(name[1:-1], name[0])
        return ("uv", name.lower(), raw)
    if kind == "sv":
        name = raw[2:]
        return ("sv", (_unquote(name, "`") if name[:1] == "`" else name).lower(), raw)
    if kind == "(":
        # "(" after a blank or a comment keeps it in the raw text: see _scan.
        return ("(", "(", " (" if spaced else "(")
    return (kind, raw, raw)


def _tokenize(sql: str, *, plain: bool = False) -> _Lexed:
    """Lex ``sql`` as the server does (``plain``: as NO_BACKSLASH_ESCAPES/ANSI_QUOTES would)."""
    out = _Lexed()
    if "/*!" in sql or "/*M!" in sql or "/*m!" in sql:
        return _tokenize_exec(sql, out, plain)
    toks = out.toks
    append = toks.append
    first = _FIRST
    gap = False  # a comment since the last token
    for blanks, raw in (_TOKEN_PLAIN_RE if plain else _TOKEN_RE).findall(sql):
        if not raw:
            continue  # end of text
        k = first.get(raw[0])
        # The common tokens first, without a call.
        if k == "w" and raw[-1] != "'":
            append(("w", raw.lower(), raw))
        elif k == "op" or k == "," or k == ")":
            append((k, raw, raw))
        else:
            kind = _kind(raw)
            if kind == "c":
                if not toks:
                    out.lead.append(raw)
                gap = True
                continue
            if kind == "x" or kind == "xc" or kind == "xo":
                out.error = True
                return out
            if (kind == "s" or kind == "dq") and "\\" in raw:
                out.backslash = True
            append(_token(kind, raw, gap or bool(blanks)))
        gap = False
    return out


def _tokenize_exec(sql: str, out: _Lexed, plain: bool) -> _Lexed:
    """Slow path for text with executable comments: a loop, since ``*/`` depends on state."""
    pat_out = _TOKEN_PLAIN_RE if plain else _TOKEN_RE
    pat_in = _TOKEN_EXEC_PLAIN_RE if plain else _TOKEN_EXEC_RE
    toks = out.toks
    without: list[Token] = []
    inside: str | None = None  # the opener of the executable comment we are in
    gap = False
    pos = 0
    n = len(sql)
    while pos < n:
        m = (pat_in if inside is not None else pat_out).match(sql, pos)
        if m is None or not m.group(2):
            break  # only blanks remain
        pos = m.end()
        raw = m.group(2)
        kind = _kind(raw)
        if kind == "c" or kind == "xo" or kind == "xc":
            gap = True
        if kind == "c":
            if not toks and inside is None:
                out.lead.append(raw)
            continue
        if kind == "xo":
            if inside is not None:
                out.error = True  # the server does not nest executable comments
                return out
            inside = raw
            if raw != "/*!":
                out.conditional = True
            continue
        if kind == "xc":
            inside = None
            continue
        if kind == "x":
            out.error = True
            return out
        if (kind == "s" or kind == "dq") and "\\" in raw:
            out.backslash = True
        tok = _token(kind, raw, gap or bool(m.group(1)))
        gap = False
        toks.append(tok)
        if inside is None or inside == "/*!":
            without.append(tok)
    if inside is not None:
        out.error = True
    if out.conditional:
        out.toks_without = without
    return out


def _unescape(body: str, quote: str) -> str:
    """The value of a string body with the server's backslash escapes (sql_lex.cc)."""
    if "\\" not in body:
        return body.replace(quote + quote, quote)
    out: list[str] = []
    i = 0
    n = len(body)
    while i < n:
        c = body[i]
        if c == "\\" and i + 1 < n:
            e = body[i + 1]
            out.append(_ESCAPES.get(e, e))
            i += 2
        elif c == quote and i + 1 < n and body[i + 1] == quote:
            out.append(quote)
            i += 2
        else:
            out.append(c)
            i += 1
    return "".join(out)


# \% and \_ keep their backslash (they are LIKE escapes).
_ESCAPES: Final = {
    "0": "\x00",
    "b": "\b",
    "n": "\n",
    "r": "\r",
    "t": "\t",
    "Z": "\x1a",
    "%": "\\%",
    "_": "\\_",
}


def _string_value(tok: Token) -> str | None:
    """Text of a string literal token; None for hex/bit literals and introducers."""
    raw = tok[2]
    if raw[0] == "'":
        return _unescape(raw[1:-1], "'")
    if raw[0] in "nN" and raw[1:2] == "'":
        return _unescape(raw[2:-1], "'")
    return None


# --------------------------------------------------------------------------------------------
# Keyword and function tables.
# --------------------------------------------------------------------------------------------
def _words(text: str) -> frozenset[str]:
    return frozenset(text.split())


# Reserved words (MySQL 8.4 and MariaDB 11): followed by "(" they are syntax or a built-in
# function, never a stored function (which would have to be quoted).
_RESERVED: Final = _words(
    """
    accessible add all alter analyze and as asc asensitive before between bigint binary blob
    both by call cascade case change char character check collate column condition constraint
    continue convert create cross cube cume_dist current_date current_time current_timestamp
    current_user cursor database databases day_hour day_microsecond day_minute day_second dec
    decimal declare default delayed delete dense_rank desc describe deterministic distinct
    distinctrow div double drop dual each else elseif empty enclosed escaped except exists exit
    explain false fetch first_value float float4 float8 for force foreign from fulltext
    function generated get grant group grouping groups having high_priority hour_microsecond
    hour_minute hour_second if ignore in index infile inner inout insensitive insert int int1
    int2 int3 int4 int8 integer intersect interval into io_after_gtids io_before_gtids is
    iterate join json_table key keys kill lag last_value lateral lead leading leave left like
    limit linear lines load localtime localtimestamp lock long longblob longtext loop
    low_priority master_bind master_ssl_verify_server_cert match maxvalue mediumblob mediumint
    mediumtext middleint minute_microsecond minute_second mod modifies natural not
    no_write_to_binlog nth_value ntile null numeric of on optimize optimizer_costs option
    optionally or order out outer outfile over partition percent_rank precision primary
    procedure purge range rank read reads read_write real recursive references regexp release
    rename repeat replace require resignal restrict return returning revoke right rlike row
    row_number rows schema schemas second_microsecond select sensitive separator set show
    signal smallint spatial specific sql sqlexception sqlstate sqlwarning sql_big_result
    sql_calc_found_rows sql_small_result ssl starting stored straight_join system table
    terminated then tinyblob tinyint tinytext to trailing trigger true undo union unique unlock
    unsigned update usage use using utc_date utc_time utc_timestamp values varbinary varchar
    varcharacter varying virtual when where while window with write xor year_month zerofill
    """
)
# Non-reserved words that are syntax when "(" follows: types with a length, column lists.
_SYNTAX_WORDS: Final = _words(
    """
    datetime time timestamp date year bit bool boolean enum json nchar nvarchar text signed
    columns nested path ordinality exists any some all array point linestring polygon against
    geometry multipoint multilinestring multipolygon geometrycollection
    """
)
_SEQUENCE_FUNCS: Final = _words("nextval lastval setval")
_LOCK_FUNCS: Final = _words("get_lock is_free_lock is_used_lock release_lock release_all_locks")
_LAST_RESULT_FUNCS: Final = _words("last_insert_id row_count found_rows")
_LAST_RESULT_VARS: Final = _words(
    "identity last_insert_id warning_count error_count session.identity session.last_insert_id"
    " session.warning_count session.error_count"
)
# Built in, with effects that belong on the primary whatever the statement around them is.
_PRIMARY_ONLY_FUNCS: Final = _words("load_file")
# Built-in functions that read nothing but their arguments or the server's state, or are
# harmless on a replica (sleep, rand, uuid, replica position waits).
_SAFE_BUILTINS: Final = _words(
    """
    abs acos adddate addtime aes_decrypt aes_encrypt any_value ascii asin atan atan2 avg
    benchmark bin bin_to_uuid bit_and bit_count bit_length bit_or bit_xor cast ceil ceiling
    char_length character_length charset chr coalesce coercibility collation compress concat
    concat_ws connection_id conv convert_tz cos cot count crc32 curdate current_role curtime
    date date_add date_format date_sub datediff day dayname dayofmonth dayofweek dayofyear
    decode degrees des_decrypt des_encrypt elt encode encrypt exp export_set extract
    extractvalue field find_in_set floor format format_bytes format_pico_time from_base64
    from_days from_unixtime geomcollection get_format greatest group_concat gtid_subset
    gtid_subtract hex hour ifnull inet6_aton inet6_ntoa inet_aton inet_ntoa instr is_ipv4
    is_ipv4_compat is_ipv4_mapped is_ipv6 is_uuid isnull json_array json_array_append
    json_array_insert json_arrayagg json_contains json_contains_path json_depth json_extract
    json_insert json_keys json_length json_merge json_merge_patch json_merge_preserve
    json_object json_objectagg json_overlaps json_pretty json_quote json_remove json_replace
    json_schema_valid json_schema_validation_report json_search json_set json_storage_free
    json_storage_size json_type json_unquote json_valid json_value json_detailed json_compact
    json_loose json_exists json_query json_equals json_normalize json_key_value
    last_day lcase least length ln log log10 log2 lower lpad ltrim make_set makedate maketime
    max md5 microsecond mid min minute month monthname name_const now nullif oct octet_length
    ord password period_add period_diff pi position pow power ps_current_thread_id
    ps_thread_id quarter quote radians rand random_bytes regexp_instr regexp_like
    regexp_replace regexp_substr reverse round rpad rtrim sec_to_time second session_user sha
    sha1 sha2 sign sin sleep soundex space sqrt statement_digest statement_digest_text std
    stddev stddev_pop stddev_samp str_to_date strcmp subdate substr substring substring_index
    subtime sum sysdate system_user tan time_format time_to_sec timediff timestampadd
    timestampdiff to_base64 to_days to_seconds trim truncate ucase uncompress
    uncompressed_length unhex unix_timestamp updatexml upper user uuid uuid_short
    uuid_to_bin validate_password_strength var_pop var_samp variance version week weekday
    weekofyear weight_string yearweek
    st_area st_asbinary st_asgeojson st_astext st_aswkb st_aswkt st_buffer st_centroid
    st_contains st_distance st_distance_sphere st_geomfromgeojson st_geomfromtext
    st_geomfromwkb st_intersects st_isvalid st_length st_numpoints st_pointfromtext st_srid
    st_within st_x st_y mbrcontains mbrwithin
    source_pos_wait master_pos_wait master_gtid_wait wait_for_executed_gtid_set
    wait_until_sql_thread_after_gtids
    sformat natural_sort_key to_char convert_tz add_months json_array_intersect
    json_object_filter_keys json_object_to_array sys_guid
    """
)
# Words after which the name before "(" is not a call: an alias, a type, an INSERT target.
_NOT_CALL_AFTER: Final = _words(
    "as into table join from update insert replace ignore low_priority high_priority delayed"
    " with recursive"
)
_DML_WORDS: Final = _words("insert update delete replace")
_ADMIN_COMMIT: Final = _words(
    "analyze optimize repair check cache flush reset purge change install uninstall binlog stop"
)
_ADMIN_NO_COMMIT: Final = _words("checksum kill shutdown restart clone import")
_DDL_WORDS: Final = _words("create alter drop rename truncate grant revoke")
_ROUTINE_WORDS: Final = _words("procedure function trigger event")
_COMPOUND_WORDS: Final = _words("if case loop while repeat for declare")

# Rank of write reasons inside one statement: the first wins.
_WRITE_RANK: Final = {
    r: i
    for i, r in enumerate(
        (
            Reason.DML,
            Reason.SELECT_INTO,
            Reason.SELECT_FOR_LOCK,
            Reason.SEQUENCE_FUNCTION,
            Reason.PRIMARY_ONLY_FUNCTION,
            Reason.ADVISORY_LOCK,
            Reason.UNKNOWN_FUNCTION,
        )
    )
}
_FUNCTION_WRITES: Final = frozenset(
    {
        Reason.SEQUENCE_FUNCTION,
        Reason.PRIMARY_ONLY_FUNCTION,
        Reason.ADVISORY_LOCK,
        Reason.UNKNOWN_FUNCTION,
    }
)

_PLAIN_READ: Final = Classification(_READ, Reason.PLAIN_SELECT, True)
_DML: Final = Classification(_WRITE, Reason.DML, False)
_DDL: Final = Classification(_WRITE, Reason.DDL, False, implicit_commit=True)
_UNKNOWN: Final = Classification(_WRITE, Reason.UNKNOWN, False)
_PARSE_ERROR: Final = Classification(_WRITE, Reason.PARSE_ERROR, False)

_MAX_CACHED_LENGTH: Final = 16_384

_ISOLATION: Final = {
    ("repeatable", "read"): "REPEATABLE-READ",
    ("read", "committed"): "READ-COMMITTED",
    ("read", "uncommitted"): "READ-UNCOMMITTED",
    ("serializable", ""): "SERIALIZABLE",
}
_TRUE_WORDS: Final = _words("1 on true")
_FALSE_WORDS: Final = _words("0 off false")


class _Ctx:
    """Per-classification scratch state: did the answer depend on a literal's value?"""

    __slots__ = ("sensitive",)

    def __init__(self) -> None:
        self.sensitive = False


# --------------------------------------------------------------------------------------------
# Statement splitting and results.
# --------------------------------------------------------------------------------------------
def _split(toks: list[Token]) -> list[list[Token]]:
    """Statements at top-level ``;``; a stored-program body keeps its inner semicolons."""
    out: list[list[Token]] = []
    start = 0
    depth = 0
    n = len(toks)
    i = 0
    while i < n:
        k = toks[i][0]
        if k == "(":
            depth += 1
        elif k == ")":
            depth = max(0, depth - 1)
        elif k == ";" and depth == 0:
            if i > start:
                st = toks[start:i]
                if _has_body(st):
                    out.append(toks[start:])
                    return out
                out.append(st)
            start = i + 1
        i += 1
    if start < n:
        out.append(toks[start:])
    return out


def _has_body(st: list[Token]) -> bool:
    """Does this statement open a compound body (CREATE PROCEDURE ... BEGIN, BEGIN NOT ATOMIC)?"""
    first = st[0][1]
    if first == "create":
        return any(t[0] == "w" and t[1] in _ROUTINE_WORDS for t in st[1:12])
    if first == "begin":
        return len(st) > 1 and st[1][1] == "not"
    return st[0][0] == "w" and first in _COMPOUND_WORDS


def _more_conservative(a: Classification, b: Classification) -> Classification:
    """``a`` (conditional comment content run) unless it is a read and ``b`` is not."""
    if a.read_only and not b.read_only:
        return b
    if a.read_only and a.kind is _READ and b.kind is not _READ:
        return b
    return a


class _Facts:
    """What a scan of an expression or query found."""

    __slots__ = (
        "dml",
        "functions",
        "into",
        "last_result",
        "lock",
        "pins",
        "reason",
        "unpins",
        "variables",
    )

    def __init__(self) -> None:
        self.functions: list[str] = []
        self.reason: Reason | None = None
        self.pins: list[PinReason] = []
        self.unpins: list[UnpinEvent] = []
        self.variables: list[UserVariable] = []
        self.last_result = False
        self.dml = False
        self.lock = False
        self.into = False

    def write(self, reason: Reason) -> None:
        if self.reason is None or _WRITE_RANK[reason] < _WRITE_RANK[self.reason]:
            self.reason = reason


def _is_literal(t: Token) -> bool:
    return t[0] == "s" or t[0] == "n" or (t[0] == "w" and t[1] in ("null", "true", "false"))


def _literal_sql(toks: list[Token]) -> str | None:
    """The literal a user variable is assigned, as SQL that replays it; None if computed."""
    if len(toks) == 1 and _is_literal(toks[0]):
        t = toks[0]
        return t[1].upper() if t[0] == "w" else t[2]
    if len(toks) == 2 and toks[0][1] in ("-", "+") and toks[1][0] == "n":
        return toks[0][1] + toks[1][2]
    return None


def _call_name(st: list[Token], i: int) -> str | None:
    """The function name if ``st[i] (`` is a call, else None (an alias list, a type...)."""
    j = i
    parts = [st[i][1]]
    while j >= 2 and st[j - 1][0] == "." and st[j - 2][0] in ("w", "q"):
        j -= 2
        parts.append(st[j][1])
    if j > 0:
        pk, pv = st[j - 1][0], st[j - 1][1]
        if pk == ")":
            return None  # (subquery) alias (cols)
        if pk == "w" and pv in _NOT_CALL_AFTER:
            return None  # AS alias (cols), INTO t (cols), WITH cte (cols)
    word = parts[0]
    if len(parts) == 1 and st[i][0] == "w" and (word in _RESERVED or word in _SYNTAX_WORDS):
        return None  # syntax (IN (...), CAST(... AS CHAR(10))) or a reserved-word built-in
    # WITH a (x) AS (...), b (y) AS (...): a column list of a common table expression.
    depth = 0
    for k in range(i + 1, len(st)):
        kk = st[k][0]
        if kk == "(":
            depth += 1
        elif kk == ")":
            depth -= 1
            if depth == 0:
                if k + 2 < len(st) and st[k + 1][1] == "as" and st[k + 2][0] == "(":
                    return None
                break
    return ".".join(reversed(parts))


def _scan(st: list[Token], facts: _Facts, ctx: _Ctx, *, query: bool) -> None:
    """Find calls, locking clauses, INTO, assignments and writes in ``st``."""
    n = len(st)
    for i in range(n):
        k, v, _raw = st[i]
        nxt = st[i + 1] if i + 1 < n else ("", "", "")
        if k == "w":
            if nxt[0] == "(":
                name = _call_name(st, i)
                if name is not None:
                    facts.functions.append(name)
                    if nxt[2] == " (" and name in _SAFE_BUILTINS:
                        # Without IGNORE_SPACE, "name (" calls a stored function of that
                        # name, not the built-in one.
                        facts.write(Reason.UNKNOWN_FUNCTION)
                continue
            if query:
                if (v == "for" and nxt[1] in ("update", "share")) or (
                    v == "lock" and nxt[1] == "in"
                ):
                    facts.lock = True
                elif v == "into":
                    facts.into = True
                    j = i + 1
                    while j < n and st[j][0] in ("uv", ","):
                        if st[j][0] == "uv":
                            facts.variables.append(UserVariable(st[j][1], None))
                        j += 1
                elif v in _DML_WORDS and not (v == "update" and st[i - 1][1] == "for"):
                    facts.dml = True
                elif v in ("next", "previous") and nxt[1] == "value":
                    facts.functions.append(v + " value for")
        elif k == "q" or k == "dq":
            if nxt[0] == "(":
                name = _call_name(st, i)
                if name is not None:
                    # A quoted name is never a built-in function: a stored function.
                    facts.functions.append(name)
                    facts.write(Reason.UNKNOWN_FUNCTION)
        elif k == "uv":
            if nxt[1] == ":=":
                end = i + 2
                depth = 0
                while end < n:
                    ek = st[end][0]
                    if ek == "(":
                        depth += 1
                    elif ek == ")":
                        if depth == 0:
                            break
                        depth -= 1
                    elif depth == 0 and (ek == "," or (ek == "w" and st[end][1] in _CLAUSE_END)):
                        break
                    end += 1
                value = _literal_sql(st[i + 2 : end])
                if value is not None:
                    ctx.sensitive = True
                facts.variables.append(UserVariable(v, value))
        elif k == "sv" and v in _LAST_RESULT_VARS:
            facts.last_result = True
    _resolve(facts)


_CLAUSE_END: Final = _words("from into where group having order limit union for lock window")


def _resolve(facts: _Facts) -> None:
    for name in _dedup(facts.functions):
        if name in _SAFE_BUILTINS:
            continue
        if name in _SEQUENCE_FUNCS or name.endswith(" value for"):
            facts.write(Reason.SEQUENCE_FUNCTION)
        elif name in _LAST_RESULT_FUNCS:
            facts.last_result = True
        elif name in _LOCK_FUNCS:
            facts.write(Reason.ADVISORY_LOCK)
            if name == "get_lock":
                facts.pins.append(PinReason.ADVISORY_LOCK)
            elif name == "release_lock":
                facts.unpins.append(UnpinEvent.ADVISORY_UNLOCK)
            elif name == "release_all_locks":
                facts.unpins.append(UnpinEvent.ADVISORY_UNLOCK_ALL)
        elif name in _PRIMARY_ONLY_FUNCS:
            facts.write(Reason.PRIMARY_ONLY_FUNCTION)
        else:
            facts.write(Reason.UNKNOWN_FUNCTION)
    facts.functions = list(_dedup(facts.functions))
    facts.pins = list(_dedup(facts.pins))
    facts.unpins = list(_dedup(facts.unpins))


def _from_facts(facts: _Facts, *, write_reason: Reason | None = None) -> Classification:
    """Classification of a query (``write_reason`` None) or of a DML statement."""
    if facts.dml:
        facts.write(Reason.DML)
    if facts.into:
        facts.write(Reason.SELECT_INTO)
    if facts.lock:
        facts.write(Reason.SELECT_FOR_LOCK)
    reason = write_reason or facts.reason
    variables = tuple(facts.variables)
    if reason is not None:
        kind, read_only = _WRITE, False
    elif facts.last_result:
        kind, reason, read_only = _READ, Reason.LAST_RESULT, False
    elif variables or facts.pins:
        kind, reason, read_only = _SESSION, Reason.SET, True
    else:
        if not facts.functions and not facts.unpins:
            return _PLAIN_READ
        kind, reason, read_only = _READ, Reason.PLAIN_SELECT, True
    return Classification(
        kind,
        reason,
        read_only,
        pins=tuple(facts.pins),
        unpins=tuple(facts.unpins),
        functions=tuple(facts.functions),
        user_variables=variables,
        uses_last_result=facts.last_result,
    )


def _name_of(t: Token) -> str:
    """An identifier as written (backticks removed, case kept: database names are
    case-sensitive on most servers)."""
    if t[0] == "q" or t[0] == "dq":
        return t[1]
    if t[0] == "s":
        return _string_value(t) or t[2]
    return t[2]


def _xid(st: list[Token], start: int) -> str | None:
    """The XA id as written (gtrid[, bqual[, formatID]]), literal text joined by commas."""
    parts: list[str] = []
    for t in st[start:]:
        if t[0] in ("s", "n", "dq", "w", "q"):
            if t[0] == "w" and t[1] in (
                "join",
                "resume",
                "one",
                "phase",
                "suspend",
                "for",
                "migrate",
            ):
                break
            parts.append(t[2])
        elif t[0] != ",":
            break
    return ",".join(parts) or None


# --------------------------------------------------------------------------------------------
# The classifier.
# --------------------------------------------------------------------------------------------
def _key(sql: str, lexed: _Lexed) -> object:
    """Cache key: the text itself when it holds no literal, else its tokens without literal
    values (two texts with one key lex alike but for literal values, and carry the same hint).

    Strings holding a backslash stay whole: how they lex depends on the server's SQL mode.
    Text with conditional executable comments, or that does not lex, keys by itself.
    """
    if lexed.error or lexed.toks_without is not None:
        return sql
    parts: list[str] = []
    literal = False
    for t in lexed.toks:
        k = t[0]
        if k == "n" or (k == "s" and "\\" not in t[2]):
            parts.append(k)
            literal = True
        else:
            parts.append(t[2])
    if not literal:
        return sql
    return (_hint_of(lexed.lead), *parts)


class Classifier:
    """Classifies MySQL/MariaDB SQL text, with an LRU cache keyed by the statement template.

    Statements longer than ``max_cached_length`` characters are classified but not cached.
    """

    __slots__ = ("_cache", "_cache_size", "_learned", "_max_cached_length")

    def __init__(
        self, *, cache_size: int = 10_000, max_cached_length: int = _MAX_CACHED_LENGTH
    ) -> None:
        self._cache: OrderedDict[object, Classification] = OrderedDict()
        self._cache_size = max(0, cache_size)
        self._learned: OrderedDict[object, None] = OrderedDict()
        self._max_cached_length = max_cached_length

    # ---- public API ------------------------------------------------------------------------
    def classify(self, sql: str) -> Classification:
        """Classify one ``COM_QUERY`` string (possibly several statements)."""
        cache = self._cache
        hit = cache.get(sql)
        if hit is not None:
            cache.move_to_end(sql)
            return hit
        try:
            lexed = _tokenize(sql)
            key = _key(sql, lexed)
        except Exception:
            return _PARSE_ERROR  # never raise into the proxy
        if len(sql) > self._max_cached_length or not self._cache_size:
            return self._classify_uncached(sql, lexed, key)[0]
        if key is not sql:
            hit = cache.get(key)
            if hit is not None and hit is not _SENSITIVE:
                cache.move_to_end(key)
                return hit
        result, sensitive = self._classify_uncached(sql, lexed, key)
        store_in_cache(cache, self._cache_size, sql, key, result, sensitive)
        return result

    def remember_write(self, sql: str) -> None:
        """A replica refused this statement (read-only): its template is a write from now on.

        Learned by fingerprint, so every literal variant follows; the cache is cleared (this is
        rare, and it also drops literal-sensitive variants cached by exact text).
        """
        try:
            key = _key(sql, _tokenize(sql))
        except Exception:
            return
        learn_template(self._learned, key, self._cache_size)
        self._cache.clear()

    def cache_info(self) -> tuple[int, int]:
        """(entries in the cache, learned write templates) for the admin console."""
        return len(self._cache), len(self._learned)

    # ---- pipeline ------------------------------------------------------------------------------
    def _classify_uncached(
        self, sql: str, lexed: _Lexed, key: object
    ) -> tuple[Classification, bool]:
        ctx = _Ctx()
        try:
            result = _classify_lexed(sql, lexed, ctx)
        except Exception:
            result = _PARSE_ERROR  # never raise into the proxy
        if key in self._learned:
            result = as_learned_write(result)
        return result, ctx.sensitive


# --------------------------------------------------------------------------------------------
# The analysis: pure functions of the lexed text (the Classifier above only caches them).
# --------------------------------------------------------------------------------------------
def _classify_lexed(sql: str, lexed: _Lexed, ctx: _Ctx) -> Classification:
    """Classify lexed text: escapes, executable comments, every statement, the hint."""
    hint = _hint_of(lexed.lead)
    if lexed.error:
        return _apply_hint(_PARSE_ERROR, hint)
    if lexed.backslash:
        plain = _tokenize(sql, plain=True)
        if plain.error or [t[2] for t in plain.toks] != [t[2] for t in lexed.toks]:
            return _apply_hint(Classification(_WRITE, Reason.AMBIGUOUS_ESCAPE, False), hint)
    if not lexed.toks:
        return _apply_hint(_EMPTY, hint)
    result = _classify_tokens(lexed.toks, ctx)
    if lexed.toks_without is not None:
        other = _classify_tokens(lexed.toks_without, ctx) if lexed.toks_without else _EMPTY
        result = _more_conservative(result, other)
    return _apply_hint(result, hint)


def _classify_tokens(toks: list[Token], ctx: _Ctx) -> Classification:
    return _combine([_statement(st, ctx) for st in _split(toks)])


# --------------------------------------------------------------------------------------------
# One statement: dispatch on its first keyword to a handler (the _HANDLERS table below).
# --------------------------------------------------------------------------------------------
def _statement(st: list[Token], ctx: _Ctx) -> Classification:
    kind, word = st[0][0], st[0][1]
    if kind == "(":
        return _stmt_query(st, ctx)
    if kind != "w":
        return _UNKNOWN
    handler = _HANDLERS.get(word)
    if handler is not None:
        return handler(st, ctx)
    if word in _DDL_WORDS:
        return _stmt_ddl(st, ctx)
    if word in _ADMIN_COMMIT:
        if word == "reset" and len(st) > 1 and st[1][1] == "persist":
            return Classification(_WRITE, Reason.MAINTENANCE, False)  # no implicit commit
        return Classification(_WRITE, Reason.MAINTENANCE, False, implicit_commit=True)
    if word in _ADMIN_NO_COMMIT:
        return Classification(_WRITE, Reason.MAINTENANCE, False)
    return _UNKNOWN


# ---- queries and DML -------------------------------------------------------------------
def _stmt_query(st: list[Token], ctx: _Ctx) -> Classification:
    facts = _Facts()
    _scan(st, facts, ctx, query=True)
    return _from_facts(facts)


def _stmt_do(st: list[Token], ctx: _Ctx) -> Classification:
    return _stmt_query(st[1:], ctx) if len(st) > 1 else _UNKNOWN


def _stmt_dml(st: list[Token], ctx: _Ctx) -> Classification:
    facts = _Facts()
    _scan(st, facts, ctx, query=False)
    if not (facts.functions or facts.variables or facts.last_result):
        return _DML
    return _from_facts(facts, write_reason=Reason.DML)


def _stmt_load(st: list[Token], ctx: _Ctx) -> Classification:
    if len(st) > 1 and st[1][1] == "index":
        return Classification(_WRITE, Reason.MAINTENANCE, False, implicit_commit=True)
    return _DML


def _stmt_with(st: list[Token], ctx: _Ctx) -> Classification:
    # WITH ... SELECT is a query; WITH ... UPDATE / DELETE shows up as DML in the scan.
    return _stmt_query(st, ctx)


# ---- transaction control ---------------------------------------------------------------
def _stmt_begin(st: list[Token], ctx: _Ctx) -> Classification:
    if len(st) == 1 or (len(st) == 2 and st[1][1] == "work"):
        return Classification(
            _TRANSACTION, Reason.TX_CONTROL, True, tx=TxAction.BEGIN, implicit_commit=True
        )
    return _UNKNOWN  # BEGIN NOT ATOMIC ... END (a MariaDB compound statement)


def _stmt_start(st: list[Token], ctx: _Ctx) -> Classification:
    if len(st) < 2 or st[1][1] != "transaction":
        return Classification(_WRITE, Reason.MAINTENANCE, False, implicit_commit=True)
    tx_read_only: bool | None = None
    words = [t[1] for t in st[2:]]
    for i, w in enumerate(words):
        if w == "read" and i + 1 < len(words):
            if words[i + 1] == "only":
                tx_read_only = True
            elif words[i + 1] == "write":
                tx_read_only = False
    return Classification(
        _TRANSACTION,
        Reason.TX_CONTROL,
        tx_read_only is not False,
        tx=TxAction.BEGIN,
        tx_read_only=tx_read_only,
        implicit_commit=True,
    )


def _stmt_commit(st: list[Token], ctx: _Ctx) -> Classification:
    words = [t[1] for t in st[1:]]
    chain = "chain" in words and not ("no" in words and words.index("no") < words.index("chain"))
    if st[0][1] == "rollback":
        if "to" in words:
            name = st[-1]
            return Classification(
                _TRANSACTION,
                Reason.TX_CONTROL,
                True,
                tx=TxAction.ROLLBACK_TO,
                target=_name_of(name),
            )
        action = TxAction.ROLLBACK_AND_CHAIN if chain else TxAction.ROLLBACK
    else:
        action = TxAction.COMMIT_AND_CHAIN if chain else TxAction.COMMIT
    return Classification(_TRANSACTION, Reason.TX_CONTROL, True, tx=action)


def _stmt_savepoint(st: list[Token], ctx: _Ctx) -> Classification:
    if len(st) != 2:
        return _UNKNOWN
    return Classification(
        _TRANSACTION, Reason.TX_CONTROL, True, tx=TxAction.SAVEPOINT, target=_name_of(st[1])
    )


def _stmt_release(st: list[Token], ctx: _Ctx) -> Classification:
    if len(st) != 3 or st[1][1] != "savepoint":
        return _UNKNOWN
    return Classification(
        _TRANSACTION, Reason.TX_CONTROL, True, tx=TxAction.RELEASE, target=_name_of(st[2])
    )


def _stmt_xa(st: list[Token], ctx: _Ctx) -> Classification:
    if len(st) < 2:
        return _UNKNOWN
    verb = st[1][1]
    if verb == "recover":
        return Classification(_READ, Reason.SHOW, False, target="xa recover")
    ctx.sensitive = True
    xid = _xid(st, 2)
    words = {t[1] for t in st[2:] if t[0] == "w"}
    if verb in ("start", "begin"):
        return Classification(
            _TRANSACTION,
            Reason.TX_CONTROL,
            False,
            tx=TxAction.BEGIN,
            pins=(PinReason.DISTRIBUTED_TRANSACTION,),
            target=xid,
        )
    if verb == "end":
        return Classification(
            _TRANSACTION, Reason.TX_CONTROL, False, tx=TxAction.END_BRANCH, target=xid
        )
    if verb == "prepare":
        return Classification(
            _TRANSACTION, Reason.TX_CONTROL, False, tx=TxAction.PREPARE_TRANSACTION, target=xid
        )
    if verb in ("commit", "rollback"):
        if verb == "commit":
            action = TxAction.COMMIT if "one" in words else TxAction.COMMIT_PREPARED
        else:
            action = TxAction.ROLLBACK_PREPARED
        return Classification(
            _TRANSACTION,
            Reason.TX_CONTROL,
            False,
            tx=action,
            unpins=(UnpinEvent.END_DISTRIBUTED_TRANSACTION,),
            target=xid,
        )
    return _UNKNOWN


# ---- locks -----------------------------------------------------------------------------
def _stmt_lock(st: list[Token], ctx: _Ctx) -> Classification:
    second = st[1][1] if len(st) > 1 else ""
    if second in ("tables", "table"):
        return Classification(
            _WRITE, Reason.LOCK_TABLE, False, pins=(PinReason.TABLE_LOCK,), implicit_commit=True
        )
    if second == "instance":
        return Classification(_WRITE, Reason.LOCK_TABLE, False, pins=(PinReason.TABLE_LOCK,))
    return _UNKNOWN


def _stmt_unlock(st: list[Token], ctx: _Ctx) -> Classification:
    second = st[1][1] if len(st) > 1 else ""
    if second in ("tables", "table") and len(st) == 2:
        return Classification(
            _SESSION,
            Reason.LOCK_TABLE,
            True,
            unpins=(UnpinEvent.TABLE_UNLOCK_ALL,),
            implicit_commit=True,
        )
    if second == "instance" and len(st) == 2:
        # The instance lock ends, but the one pin also covers table locks: keep it.
        return Classification(_SESSION, Reason.LOCK_TABLE, True)
    return _UNKNOWN


def _stmt_flush(st: list[Token], ctx: _Ctx) -> Classification:
    words = [t[1] for t in st]
    locks = ("read" in words and "lock" in words) or "export" in words
    return Classification(
        _WRITE,
        Reason.MAINTENANCE,
        False,
        pins=(PinReason.TABLE_LOCK,) if locks else (),
        implicit_commit=True,
    )


def _stmt_backup(st: list[Token], ctx: _Ctx) -> Classification:
    # MariaDB BACKUP STAGE / BACKUP LOCK: held by the session until BACKUP STAGE END.
    return Classification(_WRITE, Reason.LOCK_TABLE, False, pins=(PinReason.TABLE_LOCK,))


# ---- session state ---------------------------------------------------------------------
def _stmt_use(st: list[Token], ctx: _Ctx) -> Classification:
    if len(st) != 2 or st[1][0] not in ("w", "q", "dq"):
        return _UNKNOWN
    name = _name_of(st[1])
    return Classification(_SESSION, Reason.CHANGE_DATABASE, True, database=name, target=name)


def _stmt_prepare(st: list[Token], ctx: _Ctx) -> Classification:
    if len(st) != 4 or st[2][1] != "from":
        return _UNKNOWN
    name = _name_of(st[1]).lower()
    source = st[3]
    inner: Classification | None = None
    if source[0] == "s":
        text = _string_value(source)
        if text is not None:
            ctx.sensitive = True
            inner = _classify_lexed(text, _tokenize(text), ctx)
    return Classification(
        _SESSION,
        Reason.SQL_PREPARE,
        True,
        pins=(PinReason.SQL_PREPARE,),
        functions=inner.functions if inner else (),
        prepared_name=name,
        inner=inner,
    )


def _stmt_execute(st: list[Token], ctx: _Ctx) -> Classification:
    if len(st) < 2:
        return _UNKNOWN
    if st[1][1] == "immediate":  # MariaDB EXECUTE IMMEDIATE 'text'
        return Classification(StatementKind.UNKNOWN, Reason.SQL_EXECUTE, False)
    return Classification(
        StatementKind.UNKNOWN, Reason.SQL_EXECUTE, False, prepared_name=_name_of(st[1]).lower()
    )


def _stmt_deallocate(st: list[Token], ctx: _Ctx) -> Classification:
    if len(st) != 3 or st[1][1] != "prepare":
        return _UNKNOWN
    return Classification(
        _SESSION,
        Reason.SQL_DEALLOCATE,
        True,
        unpins=(UnpinEvent.DEALLOCATE,),
        prepared_name=_name_of(st[2]).lower(),
    )


def _stmt_handler(st: list[Token], ctx: _Ctx) -> Classification:
    verb = next((t[1] for t in st[2:] if t[0] == "w" and t[1] in _HANDLER_VERBS), None)
    if len(st) < 3 or verb is None:
        return _UNKNOWN
    table = _name_of(st[1])
    if verb == "open":
        return Classification(
            _SESSION, Reason.CURSOR, False, pins=(PinReason.OPEN_CURSOR,), target=table
        )
    if verb == "close":
        return Classification(
            _SESSION, Reason.CURSOR, True, unpins=(UnpinEvent.CLOSE_CURSOR,), target=table
        )
    # A table cursor reads where it was opened; the session is pinned there.
    return Classification(_READ, Reason.CURSOR, False, target=table)


# ---- SET ---------------------------------------------------------------------------------
def _stmt_set(st: list[Token], ctx: _Ctx) -> Classification:
    if len(st) < 2:
        return _UNKNOWN
    second = st[1][1]
    third = st[2][1] if len(st) > 2 else ""
    if second == "transaction" or (
        second in ("session", "local", "global") and third == "transaction"
    ):
        return _stmt_set_transaction(st, second, ctx)
    if second == "names" and st[1][0] == "w":
        return _stmt_set_names(st, ctx)
    if (second == "character" and third == "set") or (second == "charset" and st[1][0] == "w"):
        return _stmt_set_charset(st, ctx)
    if second == "password" or (second == "default" and third == "role"):
        return _DDL
    if second == "role" and st[1][0] == "w":
        return Classification(_SESSION, Reason.SET, True, pins=(PinReason.SESSION_AUTHORIZATION,))
    if second == "statement" and st[1][0] == "w":
        return _stmt_set_statement(st, ctx)
    if second == "resource" and third == "group":
        return Classification(_SESSION, Reason.SET, True, pins=(PinReason.UNTRACKED_SETTING,))
    return _stmt_set_assignments(st, ctx)


def _stmt_set_transaction(st: list[Token], scope: str, ctx: _Ctx) -> Classification:
    words = [t[1] for t in st]
    read_only: bool | None = None
    isolation: str | None = None
    for i, w in enumerate(words):
        if w == "read" and i + 1 < len(words) and words[i - 1] != "level":
            if words[i + 1] == "only":
                read_only = True
            elif words[i + 1] == "write":
                read_only = False
        elif w == "level" and i + 1 < len(words):
            pair = (words[i + 1], words[i + 2] if i + 2 < len(words) else "")
            isolation = _ISOLATION.get(pair) or _ISOLATION.get((pair[0], ""))
    if scope == "global":
        return Classification(_WRITE, Reason.SET, False)
    if scope in ("session", "local"):
        settings: list[SettingChange] = []
        if isolation is not None:
            settings.append(SettingChange("transaction_isolation", isolation, False))
        if read_only is not None:
            settings.append(
                SettingChange("transaction_read_only", "ON" if read_only else "OFF", False)
            )
        return Classification(_SESSION, Reason.SET, True, settings=tuple(settings))
    # For the next transaction only: the server holds it on its connection until a transaction
    # ends, and it cannot be read back to be replayed elsewhere, so the client stays there.
    return Classification(
        _TRANSACTION,
        Reason.TX_CONTROL,
        read_only is not False,
        tx=TxAction.SET_TRANSACTION,
        tx_read_only=read_only,
        pins=(PinReason.NEXT_TRANSACTION,),
    )


def _stmt_set_names(st: list[Token], ctx: _Ctx) -> Classification:
    if len(st) < 3:
        return _UNKNOWN
    ctx.sensitive = True
    charset = _charset_value(st[2])
    settings = [
        SettingChange("character_set_client", charset, False),
        SettingChange("character_set_connection", charset, False),
        SettingChange("character_set_results", charset, False),
    ]
    if len(st) == 5 and st[3][1] == "collate":
        settings.append(SettingChange("collation_connection", _charset_value(st[4]), False))
    elif len(st) != 3:
        return Classification(_SESSION, Reason.SET, True, pins=(PinReason.UNTRACKED_SETTING,))
    return Classification(_SESSION, Reason.SET, True, settings=tuple(settings))


def _stmt_set_charset(st: list[Token], ctx: _Ctx) -> Classification:
    ctx.sensitive = True
    value = st[-1]
    charset = _charset_value(value)
    # The connection character set becomes character_set_database, which only the server
    # knows: the change cannot be replayed as settings, so it pins.
    return Classification(
        _SESSION,
        Reason.SET,
        True,
        settings=(
            SettingChange("character_set_client", charset, False),
            SettingChange("character_set_results", charset, False),
        ),
        pins=(PinReason.UNTRACKED_SETTING,),
    )


def _stmt_set_statement(st: list[Token], ctx: _Ctx) -> Classification:
    # MariaDB SET STATEMENT var = value [, ...] FOR statement: the settings last for one
    # statement only, so only the inner statement matters (its values can be
    # expressions too).
    depth = 0
    for i in range(2, len(st)):
        k = st[i][0]
        if k == "(":
            depth += 1
        elif k == ")":
            depth -= 1
        elif depth == 0 and st[i][1] == "for" and k == "w" and i + 1 < len(st):
            facts = _Facts()
            _scan(st[2:i], facts, ctx, query=False)
            inner = _statement(st[i + 1 :], ctx)
            if facts.reason is not None or facts.pins:
                return dataclasses.replace(
                    _from_facts(facts, write_reason=facts.reason or Reason.SET), inner=inner
                )
            return dataclasses.replace(inner, inner=inner)
    return _UNKNOWN


def _stmt_set_assignments(st: list[Token], ctx: _Ctx) -> Classification:
    items: list[list[Token]] = []
    depth = 0
    start = 1
    for i in range(1, len(st)):
        k = st[i][0]
        if k == "(":
            depth += 1
        elif k == ")":
            depth -= 1
        elif k == "," and depth == 0:
            items.append(st[start:i])
            start = i + 1
    items.append(st[start:])
    scope = "session"
    settings: list[SettingChange] = []
    variables: list[UserVariable] = []
    pins: list[PinReason] = []
    facts = _Facts()
    autocommit: bool | None = None
    global_change = False
    for item in items:
        if item and item[0][0] == "w" and item[0][1] in _SCOPES:
            scope = item[0][1]
            item = item[1:]
        eq = next((j for j, t in enumerate(item) if t[0] == "op" and t[1] in ("=", ":=")), None)
        if not eq:
            return _UNKNOWN
        target, expr = item[:eq], item[eq + 1 :]
        if not expr:
            return _UNKNOWN
        _scan(expr, facts, ctx, query=True)
        if len(target) == 1 and target[0][0] == "uv":
            value = _literal_sql(expr)
            if value is not None:
                ctx.sensitive = True
            variables.append(UserVariable(target[0][1], value))
            continue
        name, item_scope = _system_name(target, scope)
        if name is None:
            return _UNKNOWN
        if item_scope in ("global", "persist", "persist_only"):
            global_change = True
            continue
        ctx.sensitive = True
        value, tracked = _setting_value(expr)
        if not tracked:
            pins.append(PinReason.UNTRACKED_SETTING)
            if name == "autocommit":
                autocommit = None
            continue
        settings.append(SettingChange(name, value, False))
        if name == "autocommit":
            if value is None:
                pins.append(PinReason.UNTRACKED_SETTING)  # DEFAULT: the global value
                autocommit = None
            elif value.lower() in _TRUE_WORDS:
                autocommit = True
            elif value.lower() in _FALSE_WORDS:
                autocommit = False
            else:
                autocommit = None
    if facts.dml:
        facts.write(Reason.DML)
    if facts.into:
        facts.write(Reason.SELECT_INTO)
    if facts.lock:
        facts.write(Reason.SELECT_FOR_LOCK)
    reason = facts.reason
    if global_change and reason is None:
        reason = Reason.SET
    all_pins = _dedup([*pins, *facts.pins])
    if reason is not None:
        kind, read_only = _WRITE, False
    elif facts.last_result:
        kind, reason, read_only = _SESSION, Reason.SET, False
    else:
        kind, reason, read_only = _SESSION, Reason.SET, True
    return Classification(
        kind,
        reason,
        read_only,
        settings=tuple(settings),
        pins=all_pins,
        unpins=tuple(facts.unpins),
        functions=tuple(facts.functions),
        user_variables=(*variables, *facts.variables),
        autocommit=autocommit,
        uses_last_result=facts.last_result,
    )


# ---- SHOW, EXPLAIN, DESCRIBE, ANALYZE --------------------------------------------------
def _stmt_show(st: list[Token], ctx: _Ctx) -> Classification:
    words = [t[1] for t in st[1:] if t[0] == "w"]
    first = words[0] if words else ""
    target = " ".join(words[:3])
    if first in ("warnings", "errors", "profile", "profiles") or (
        first == "count" and len(st) > 2 and st[-1][1] in ("warnings", "errors")
    ):
        return Classification(
            _READ, Reason.LAST_RESULT, False, target=target, uses_last_result=True
        )
    if (
        (first == "master" and words[1:2] in (["status"], ["logs"]))
        or (first == "binary" and words[1:2] in (["logs"], ["log"]))
        or first == "binlog"
    ):
        # The primary's binary log position: asked of the primary.
        return Classification(_READ, Reason.SHOW, False, target=target)
    return Classification(_READ, Reason.SHOW, True, target=target)


def _stmt_explain(st: list[Token], ctx: _Ctx) -> Classification:
    i = 1
    analyze = False
    n = len(st)
    while i < n:
        t = st[i]
        if t[0] == "w" and t[1] in ("extended", "partitions"):
            i += 1
        elif t[0] == "w" and t[1] == "analyze":
            analyze = True
            i += 1
        elif t[0] == "w" and t[1] == "format" and i + 2 < n and st[i + 1][1] == "=":
            i += 3
        else:
            break
    if i >= n:
        return _UNKNOWN
    head = st[i]
    if head[0] == "w" and head[1] == "for" and i + 1 < n and st[i + 1][1] == "connection":
        return Classification(_READ, Reason.EXPLAIN, True)
    if head[0] != "(" and not (head[0] == "w" and head[1] in _EXPLAINABLE):
        return Classification(_READ, Reason.EXPLAIN, True)  # DESCRIBE table [column]
    inner = _statement(st[i:], ctx)
    return _explained(inner, analyze)


def _stmt_analyze(st: list[Token], ctx: _Ctx) -> Classification:
    # MariaDB ANALYZE [FORMAT=JSON] statement runs it; ANALYZE TABLE is maintenance.
    i = 1
    if len(st) > 3 and st[1][1] == "format" and st[2][1] == "=":
        i = 4
    if i < len(st) and (st[i][0] == "(" or (st[i][1] in _EXPLAINABLE and st[i][1] != "table")):
        return _explained(_statement(st[i:], ctx), True)
    return Classification(_WRITE, Reason.MAINTENANCE, False, implicit_commit=True)


def _stmt_call(st: list[Token], ctx: _Ctx) -> Classification:
    parts: list[str] = []
    for t in st[1:]:
        if t[0] in ("w", "q"):
            parts.append(t[1])
        elif t[0] != ".":
            break
    name = ".".join(parts)
    return Classification(_WRITE, Reason.CALL_OR_DO, False, functions=(name,) if name else ())


def _stmt_get(st: list[Token], ctx: _Ctx) -> Classification:
    words = [t[1] for t in st[1:3]]
    if "diagnostics" in words:
        return Classification(_READ, Reason.LAST_RESULT, False, uses_last_result=True)
    return _UNKNOWN


def _stmt_help(st: list[Token], ctx: _Ctx) -> Classification:
    return Classification(_READ, Reason.SHOW, True, target="help")


# ---- DDL -------------------------------------------------------------------------------
def _stmt_ddl(st: list[Token], ctx: _Ctx) -> Classification:
    verb = st[0][1]
    head = [t[1] for t in st[1:6] if t[0] == "w"]
    before_table = head[: head.index("table")] if "table" in head else []
    if verb == "create" and "temporary" in before_table:
        return Classification(_WRITE, Reason.DDL, False, pins=(PinReason.TEMP_TABLE,))
    if verb == "drop" and head[:1] == ["temporary"]:
        i = 3  # DROP TEMPORARY TABLE [IF EXISTS] name
        if i + 1 < len(st) and st[i][1] == "if":
            i += 2
        target = _name_of(st[i]) if i < len(st) else None
        return Classification(
            _WRITE, Reason.DDL, False, unpins=(UnpinEvent.DROP_TEMP_TABLE,), target=target
        )
    if verb == "drop" and head[:1] == ["prepare"]:
        return _stmt_deallocate(st, ctx)
    return _DDL


def _explained(inner: Classification, analyze: bool) -> Classification:
    """EXPLAIN [ANALYZE] of ``inner``."""
    if inner.reason in _FUNCTION_WRITES:
        # The optimizer evaluates constant expressions and subqueries: keep it on the primary.
        return dataclasses.replace(inner, inner=inner)
    if not analyze or (inner.kind is _READ and inner.read_only):
        return Classification(_READ, Reason.EXPLAIN, True, functions=inner.functions, inner=inner)
    return Classification(
        _WRITE,
        Reason.EXPLAIN_ANALYZE_WRITE,
        False,
        pins=inner.pins,
        unpins=inner.unpins,
        functions=inner.functions,
        inner=inner,
    )


_HANDLER_VERBS: Final = _words("open read close")
_EXPLAINABLE: Final = _words("select insert update delete replace table with values")
_SCOPES: Final = _words("global session local persist persist_only")


def _system_name(target: list[Token], scope: str) -> tuple[str | None, str]:
    """(variable name, scope) of a SET target: ``x``, ``@@x``, ``@@session.x``, ``a.b``."""
    if len(target) == 1 and target[0][0] == "sv":
        name = target[0][1]
        head, dot, rest = name.partition(".")
        if dot and head in _SCOPES:
            return rest, head
        return name, "session"
    if target and all(t[0] in ("w", "q") or t[0] == "." for t in target):
        return "".join(t[1] for t in target), scope
    return None, scope


def _setting_value(expr: list[Token]) -> tuple[str | None, bool]:
    """(value the server stores, tracked) for a system variable; DEFAULT gives None."""
    if len(expr) == 1:
        t = expr[0]
        if t[0] == "w":
            return (None, True) if t[1] == "default" else (t[2], True)
        if t[0] == "n":
            return t[2], True
        if t[0] == "s":
            if "\\" in t[2]:
                return None, False  # depends on NO_BACKSLASH_ESCAPES
            value = _string_value(t)
            return value, value is not None
        if t[0] == "dq" and "\\" not in t[2]:
            return t[1], True
        return None, False
    if len(expr) == 2 and expr[0][1] == "-" and expr[1][0] == "n":
        return "-" + expr[1][2], True
    return None, False


def _charset_value(t: Token) -> str | None:
    if t[0] == "w" and t[1] == "default":
        return None
    if t[0] == "s":
        value = _string_value(t)
        return value.lower() if value is not None else t[2]
    return t[1].lower()


_Handler = Callable[[list[Token], _Ctx], Classification]
_HANDLERS: Final[dict[str, _Handler]] = {
    "select": _stmt_query,
    "values": _stmt_query,
    "table": _stmt_query,
    "with": _stmt_with,
    "do": _stmt_do,
    "insert": _stmt_dml,
    "update": _stmt_dml,
    "delete": _stmt_dml,
    "replace": _stmt_dml,
    "load": _stmt_load,
    "begin": _stmt_begin,
    "start": _stmt_start,
    "commit": _stmt_commit,
    "rollback": _stmt_commit,
    "savepoint": _stmt_savepoint,
    "release": _stmt_release,
    "xa": _stmt_xa,
    "lock": _stmt_lock,
    "unlock": _stmt_unlock,
    "flush": _stmt_flush,
    "backup": _stmt_backup,
    "use": _stmt_use,
    "prepare": _stmt_prepare,
    "execute": _stmt_execute,
    "deallocate": _stmt_deallocate,
    "handler": _stmt_handler,
    "set": _stmt_set,
    "show": _stmt_show,
    "explain": _stmt_explain,
    "describe": _stmt_explain,
    "desc": _stmt_explain,
    "analyze": _stmt_analyze,
    "call": _stmt_call,
    "get": _stmt_get,
    "help": _stmt_help,
}


@functools.cache
def _default_classifier() -> Classifier:
    # Pure: no learned writes, so sharing it leaks no state.
    return Classifier()


def classify(sql: str) -> Classification:
    """Classify ``sql`` with a shared default :class:`Classifier`."""
    return _default_classifier().classify(sql)
