"""PostgreSQL statement classifier: SQL text -> :class:`~dbbalancer.core.statement.Classification`.

Decides whether a simple-query string (protocol message ``Query``, or the text of a ``Parse``)
may run on a hot standby, and what session state it touches, for read/write splitting and for
transaction pooling.  Pure and sans-IO: text in, a value out; it never raises.

Design (measured, see ``bench/classify_bench.py``):

* **Lexing** follows the PostgreSQL lexer (``src/backend/parser/scan.l``): ``'...'`` strings
  with doubled quotes, ``E'...'`` strings with backslash escapes, dollar quoting
  (``$tag$...$tag$``), ``"..."`` identifiers, ``--`` and nested ``/* */`` comments, numbers
  (including PostgreSQL 16 hex/octal/binary and ``_`` separators) and ``$n`` parameters.
  Semicolons and keywords inside any of them never confuse the classifier.
* **Fast path**: one compiled regular expression tokenizes the text (no per-character Python
  loop) and a small token-level analysis handles the hot statements: ``SELECT`` / ``VALUES`` /
  ``TABLE`` / ``WITH`` reads, ``INSERT`` / ``UPDATE`` / ``DELETE`` / ``MERGE`` / ``TRUNCATE`` and
  bare ``BEGIN`` / ``COMMIT`` / ``ROLLBACK``.  It only answers when it is sure; whenever a token
  could mean two things (a column called ``update``, a keyword followed by ``(``, ``INTO``,
  ``set_config``...) it hands the string to the authority.  Its answers may be more
  conservative than the authority's, never less (a property test checks this).
* **Authority**: pglast (libpg_query, the real PostgreSQL grammar) parses everything else to a
  JSON parse tree (``parse_sql_json``; building pglast's Python AST is ~15x slower and not
  needed).  Every statement type is handled from the tree.  A string the parser rejects is
  routed to the primary (``Reason.PARSE_ERROR``).
* **Cache**: an LRU keyed by a fingerprint computed with a single ``re.split`` whose pattern
  starts with a character class, so the regex engine skips plain text in C (text without
  quotes, dollar signs or comments uses a smaller pattern for numbers and quoted identifiers
  only; the exact text is looked up first, so literal-free texts such as ``Parse`` statements
  with ``$n`` parameters cost one dict lookup).  The fingerprint
  drops the contents of string/number literals and of comments (so ``pgbench -M simple`` and
  ORM trace comments hit the cache) but keeps everything else verbatim: quoted identifiers,
  comments that mention ``dbbalancer`` (routing hints), standard strings containing a backslash
  (see below) and, from any unterminated quote or nested comment on, the rest of the text.  Two
  strings with the same fingerprint therefore lex to the same tokens except for literal values.
  When a classification *reads* a literal value (``SET x = 5``, ``set_config('a', 'b', false)``,
  ``EXPLAIN (ANALYZE 0)``, a two-phase GID...) the fingerprint is marked literal-sensitive and
  such strings are cached by their exact text instead.

Costs (``python -m bench.classify_bench``; Python 3.11, 2-CPU x86_64, load average < 1; best of
7 rounds, microseconds per statement):

=============================  =====  ===========  ==================  ====================
statement                      cold   cached text  cached new literal  pglast json / AST
=============================  =====  ===========  ==================  ====================
pgbench SELECT (fast path)       8.4         1.0          1.0            2.8 / 47
pgbench UPDATE accounts         10.9         1.4          1.4            3.4 / 56
pgbench INSERT history          15.8         2.2          2.2            4.1 / 65
BEGIN                            4.6         0.1          0.1            0.8 /  9
ORM SELECT, 6 quoted idents     19.3         3.9          3.9            4.5 / 69
analytic SELECT (authority)     79           1.3          1.3            5.7 / 96
=============================  =====  ===========  ==================  ====================

The parser itself is cheap (``parse_sql_json`` 1-6 us); the authority's cost is ``json.loads``
plus walking the tree in Python, hence the token fast path for the hot statements.  Cached
lookups cost the fingerprint, about 0.1-0.3 us per literal or quoted identifier.

Decisions worth knowing:

* Unknown functions are writes: a function is read-safe only if the volatility lookup (from
  ``pg_proc``) says immutable/stable, or, without an answer from the lookup, it is on the
  built-in allow-list of immutable/stable catalog functions.  A few functions are volatile in
  ``pg_proc`` but harmless on a standby and are always reads: ``pg_sleep*`` (health checks use
  it), ``random``, ``gen_random_uuid``, ``clock_timestamp``, ``timeofday`` and the recovery
  functions (``pg_is_in_recovery``, ``pg_last_wal_replay_lsn``...).  The other way round, a
  standby refuses some functions that are not volatile (``txid_current`` is STABLE,
  ``pg_walfile_name`` IMMUTABLE) along with the WAL position and large-object creation functions;
  these always go to the primary (``Reason.PRIMARY_ONLY_FUNCTION``), whatever the lookup says.
* Writes hidden behind operators, views, triggers-on-select rules or type input functions are not
  visible in the text; when a standby refuses such a statement (SQLSTATE 25006) the proxy calls
  :meth:`Classifier.remember_write` and that statement template is a write from then on.
* A ``/* dbbalancer:replica */`` hint never turns a write into a read: the classifier knows the
  statement must run on the primary, and the hint only chooses between servers for reads.  A
  ``/* dbbalancer:primary */`` hint makes any statement ``read_only=False``.
* ``standard_conforming_strings = off`` servers read backslashes in ``'...'`` as escapes.  If a
  string lexes differently under the two settings the classification is a write
  (``Reason.AMBIGUOUS_ESCAPE``); otherwise the standard reading is used.
* ``BEGIN ISOLATION LEVEL SERIALIZABLE`` and ``BEGIN READ WRITE`` are not ``read_only`` (a
  standby rejects both).  ``COPY ... TO`` a server file or program goes to the primary
  (``Reason.COPY_TO_SERVER``): the file belongs on the host the user expects.
* A temporary object created ``ON COMMIT DROP`` does not pin: it cannot outlive its transaction.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import re
from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import Any, Final

from pglast import keywords as _pg_keywords
from pglast.parser import parse_sql_json

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
)

__all__ = ["Classifier", "VolatilityLookup", "classify"]

VolatilityLookup = Callable[[str], str | None]
"""``lookup(function_name) -> 'i' | 's' | 'v' | None`` (``pg_proc.provolatile``; None = unknown)."""

_READ: Final = StatementKind.READ
_WRITE: Final = StatementKind.WRITE
_SESSION: Final = StatementKind.SESSION
_TRANSACTION: Final = StatementKind.TRANSACTION

# --------------------------------------------------------------------------------------------
# Lexical building blocks shared by the tokenizer and the fingerprint, so both see the same
# token boundaries (scan.l: ident_start / ident_cont / dolq_start / dolq_cont).
# --------------------------------------------------------------------------------------------
_IDC = "A-Za-z0-9_$\\x80-\\U0010FFFF"
_IDS = "A-Za-z_\\x80-\\U0010FFFF"
_DOLQ = "A-Za-z0-9_\\x80-\\U0010FFFF"
_BLOCK_BODY = r"(?:[^*/]|\*(?!/)|/(?!\*))"  # one character of comment text, never a nested "/*"
_BLOCK_TEXT = r"[^*/]*(?:(?:\*(?!/)|/(?!\*))[^*/]*)*"  # _BLOCK_BODY*, unrolled
# String bodies as unrolled loops ("normal* (special normal*)*"): same language, fewer steps.
_E_BODY = r"[^'\\]*(?:(?:''|\\[\s\S])[^'\\]*)*"
_STD_BODY = r"[^']*(?:''[^']*)*"
_Q_BODY = r'[^"]*(?:""[^"]*)*'
_NUM_TAIL = (
    r"(?:(?<=0)(?:[xX][0-9A-Fa-f_]+|[oO][0-7_]+|[bB][01_]+)"
    r"|[0-9_]*(?:\.[0-9_]*)?(?:[eE][+-]?[0-9]+)?)"
)
_DOT_NUM_TAIL = r"[0-9][0-9_]*(?:[eE][+-]?[0-9]+)?"
_NOT_E = rf"(?:(?<![eE]')|(?<=[{_IDC}][eE]'))"  # the quote does not open an E'' string

# One alternative per token type.  The last one catches a single character no token starts with
# (an unterminated quote or comment, a stray "$" or backslash) and the tokenizer reports it as a
# lexing error; punctuation it returns is recognized by its first character like any token.
_TOKEN_ALTERNATIVES = (
    rf"[eE](?<![{_IDC}][eE])'{_E_BODY}'",
    rf"[{_IDS}][{_IDC}]*",
    r"::|[(),;\[\]:]",
    rf"[0-9](?<![{_IDC}][0-9]){_NUM_TAIL}|\.{_DOT_NUM_TAIL}",
    r"(?:[+*<>=~!@#%^&|`?]|-(?!-)|/(?!\*))+",
    "'" + _STD_BODY + "'",
    rf'"{_Q_BODY}"',
    r"--[^\n\r]*",
    rf"/\*{_BLOCK_TEXT}\*/",
    rf"\$(?<![{_IDC}]\$)(?P<tag>(?:[{_IDS}][{_DOLQ}]*)?)\$[\s\S]*?\$(?P=tag)\$",
    r"\$[0-9]+",
    r"/\*|[^ \t\n\r\f\v]",
)
# Leading whitespace is part of each match, so the engine never tries every alternative at
# every blank; "\Z" lets trailing blanks end in one (empty) match instead of one failed, O(n)
# attempt per blank.
_TOKEN_RE: Final = re.compile("[ \t\n\r\f\v]*+(" + "|".join(_TOKEN_ALTERNATIVES) + r"|\Z)")
# Same tokens as a standard_conforming_strings=off server sees them.
_TOKEN_SCS_OFF_RE: Final = re.compile(
    "[ \t\n\r\f\v]*+("
    + "|".join(
        "'" + _E_BODY + "'" if a == "'" + _STD_BODY + "'" else a for a in _TOKEN_ALTERNATIVES
    )
    + r"|\Z)"
)
_PUNCT: Final = frozenset("(),;[]")
# Token kind by first character (anything else, i.e. non-ASCII, starts an identifier).
_FIRST_CHAR: Final = {
    **{c: "w" for c in "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz_"},
    **{c: "nu" for c in "0123456789"},
    **{c: c for c in "(),;[]."},
    **{c: "op" for c in "+*<>=~!@#%^&|`?"},
    ":": ":",
    "'": "ss",
    '"': "q",
    "$": "$",
    "-": "-",
    "/": "/",
}

# The fingerprint pattern starts with a character class: re's search loop then skips plain text
# in C.  Groups: qid/bs/tag/lh/bh keep text, lit/cm mark a dropped literal/comment, and
# bopen/open/dopen keep everything after an unterminated (or nested) construct verbatim.
_KEY_RE: Final = re.compile(
    r"""[-'"$0-9./](?:"""
    rf'(?<=")(?P<qid>{_Q_BODY})"'
    rf"|(?<='){_NOT_E}(?P<bs>[^'\\]*(?:''[^'\\]*)*\\{_STD_BODY})'"
    rf"|(?<=\$)(?<![{_IDC}]\$)(?P<tag>(?:[{_IDS}][{_DOLQ}]*)?)\$[\s\S]*?\$(?P=tag)\$"
    rf"|(?:(?<=[eE]')(?<![{_IDC}][eE]'){_E_BODY}'"
    rf"|(?<='){_NOT_E}[^'\\]*(?:''[^'\\]*)*'"
    rf"|(?<=[0-9])(?<![{_IDC}][0-9]){_NUM_TAIL}"
    rf"|(?<=\.){_DOT_NUM_TAIL})(?P<lit>)"
    r"|(?<=-)-(?P<lh>[^\n\r]*(?i:dbbalancer)[^\n\r]*)"
    rf"|(?<=/)\*(?P<bh>{_BLOCK_BODY}*?(?i:dbbalancer){_BLOCK_TEXT})\*/"
    rf"|(?:(?<=-)-[^\n\r]*|(?<=/)\*{_BLOCK_TEXT}\*/)(?P<cm>)"
    r"|(?<=/)\*(?P<bopen>[\s\S]*)"
    r"""|(?<=['"])(?P<open>[\s\S]*)"""
    rf"|(?<=\$)(?<![{_IDC}]\$)(?:[{_IDS}][{_DOLQ}]*)?\$(?P<dopen>[\s\S]*)"
    r")"
)

# Cheaper fingerprint for text without strings, dollar quotes or comments (pgbench -M simple,
# ORMs that quote every identifier): only numbers and quoted identifiers to lex.
_LIGHT_KEY_RE: Final = re.compile(
    rf'["0-9.](?:(?<=")(?P<qid>{_Q_BODY}"?)'
    rf"|(?<=[0-9])(?<![{_IDC}][0-9]){_NUM_TAIL}|(?<=\.){_DOT_NUM_TAIL})"
)


Token = tuple[str, str]
"""(kind, text): kind is ``w`` (word, lower-cased), ``q`` (quoted identifier, unquoted),
``es``/``ss``/``ds`` (strings), ``nu``, ``pa``, ``op``, or the punctuation itself."""

# --------------------------------------------------------------------------------------------
# Keyword and function tables.
# --------------------------------------------------------------------------------------------
_RESERVED: Final = frozenset(_pg_keywords.RESERVED_KEYWORDS)
_COL_NAME: Final = frozenset(_pg_keywords.COL_NAME_KEYWORDS)
_TYPE_FUNC: Final = frozenset(_pg_keywords.TYPE_FUNC_NAME_KEYWORDS)
_UNRESERVED: Final = frozenset(_pg_keywords.UNRESERVED_KEYWORDS)
_ALL_KEYWORDS: Final = _RESERVED | _COL_NAME | _TYPE_FUNC | _UNRESERVED
# Unqualified reserved and column-name keywords followed by "(" are special syntax (COALESCE,
# SUBSTRING, ROW, VALUES, EXISTS, IN, type names with modifiers...), never a call of a user
# function (gram.y: func_name is type_function_name or a qualified name).
_SYNTAX_WORDS: Final = _RESERVED | _COL_NAME
# Keywords by which the name that follows is not a call: a type, a column alias list, a
# tablesample method, an INSERT target with its column list.
_NOT_CALL_AFTER: Final = frozenset({"as", "tablesample", "into"})


def _words(text: str) -> frozenset[str]:
    return frozenset(text.split())


_SEQUENCE_FUNCS: Final = frozenset({"nextval", "setval", "currval", "lastval"})
_ADVISORY_SESSION: Final = frozenset(
    {
        "pg_advisory_lock",
        "pg_advisory_lock_shared",
        "pg_try_advisory_lock",
        "pg_try_advisory_lock_shared",
    }
)
_ADVISORY_XACT: Final = frozenset(
    {
        "pg_advisory_xact_lock",
        "pg_advisory_xact_lock_shared",
        "pg_try_advisory_xact_lock",
        "pg_try_advisory_xact_lock_shared",
    }
)
_ADVISORY_UNLOCK: Final = frozenset({"pg_advisory_unlock", "pg_advisory_unlock_shared"})

# A hot standby refuses these whatever pg_proc says of their volatility (txid_current is STABLE,
# pg_walfile_name IMMUTABLE): they assign a transaction ID or an OID, need the WAL insert
# position or timeline, or touch replication origins.  Always the primary, before any lookup.
# tests/integration/test_pg_standby_functions.py calls them on a real standby to keep this true.
_PRIMARY_ONLY_FUNCS: Final = _words(
    """
    txid_current pg_current_xact_id
    lo_create lo_creat lo_import lo_from_bytea
    pg_current_wal_lsn pg_current_wal_insert_lsn pg_current_wal_flush_lsn pg_switch_wal
    pg_create_restore_point pg_walfile_name pg_walfile_name_offset pg_log_standby_snapshot
    pg_logical_emit_message
    pg_replication_origin_oid pg_replication_origin_create pg_replication_origin_drop
    pg_replication_origin_advance pg_replication_origin_session_setup
    pg_replication_origin_session_reset pg_replication_origin_session_is_setup
    pg_replication_origin_session_progress pg_replication_origin_xact_setup
    pg_replication_origin_xact_reset
    """
)

# Volatile in pg_proc, but safe (and useful) on a hot standby.
_REPLICA_SAFE_VOLATILE: Final = _words(
    """
    pg_sleep pg_sleep_for pg_sleep_until random random_normal gen_random_uuid uuidv4 uuidv7
    clock_timestamp timeofday pg_is_in_recovery pg_last_wal_replay_lsn pg_last_wal_receive_lsn
    pg_last_xact_replay_timestamp pg_is_wal_replay_paused pg_get_wal_replay_pause_state
    """
)

# Immutable or stable catalog functions (and aggregates / window functions) used when the
# volatility lookup has no answer.  Unqualified or pg_catalog-qualified names only.
_SAFE_BUILTINS: Final = _words(
    """
    count sum avg min max array_agg string_agg bool_and bool_or every bit_and bit_or bit_xor
    json_agg jsonb_agg json_object_agg jsonb_object_agg json_agg_strict jsonb_agg_strict
    stddev stddev_pop stddev_samp variance var_pop var_samp corr covar_pop covar_samp
    regr_avgx regr_avgy regr_count regr_intercept regr_r2 regr_slope regr_sxx regr_sxy regr_syy
    percentile_cont percentile_disc mode rank dense_rank percent_rank cume_dist any_value
    range_agg range_intersect_agg xmlagg row_number ntile lag lead first_value last_value
    nth_value grouping
    lower upper initcap length char_length character_length octet_length bit_length substr
    substring replace reverse left right lpad rpad ltrim rtrim btrim split_part strpos position
    concat concat_ws format md5 sha224 sha256 sha384 sha512 encode decode to_hex to_bin to_oct
    ascii chr repeat quote_ident quote_literal quote_nullable regexp_replace regexp_match
    regexp_matches regexp_split_to_array regexp_split_to_table regexp_like regexp_count
    regexp_instr regexp_substr starts_with translate overlay string_to_array array_to_string
    string_to_table unistr normalize is_normalized casefold similar_to_escape similar_escape
    like_escape convert convert_from convert_to to_ascii get_byte get_bit crc32 crc32c
    abs ceil ceiling floor round trunc sign sqrt cbrt power pow exp ln log log10 mod div pi
    degrees radians sin cos tan cot asin acos atan atan2 sind cosd tand asind acosd atand sinh
    cosh tanh width_bucket gcd lcm factorial scale min_scale trim_scale numeric int2 int4 int8
    float4 float8 text bool
    now transaction_timestamp statement_timestamp current_date current_time date_trunc date_part
    extract age make_date make_time make_timestamp make_timestamptz make_interval to_char
    to_date to_timestamp to_number justify_days justify_hours justify_interval isfinite
    date_bin timezone date_add date_subtract overlaps
    json_build_object jsonb_build_object json_build_array jsonb_build_array to_json to_jsonb
    row_to_json array_to_json json_object jsonb_object json_extract_path jsonb_extract_path
    json_extract_path_text jsonb_extract_path_text jsonb_set jsonb_set_lax jsonb_insert
    jsonb_pretty jsonb_typeof json_typeof jsonb_array_length json_array_length jsonb_each
    json_each jsonb_each_text json_each_text jsonb_object_keys json_object_keys
    jsonb_array_elements json_array_elements jsonb_array_elements_text json_array_elements_text
    jsonb_strip_nulls json_strip_nulls jsonb_path_query jsonb_path_exists jsonb_path_match
    jsonb_path_query_array jsonb_path_query_first json_populate_record jsonb_populate_record
    json_populate_recordset jsonb_populate_recordset jsonb_to_record json_to_record
    jsonb_to_recordset json_to_recordset
    array_length array_upper array_lower array_dims array_ndims cardinality unnest array_append
    array_prepend array_cat array_position array_positions array_remove array_replace
    generate_series generate_subscripts array_fill trim_array array_reverse array_sort
    lower_inc upper_inc lower_inf upper_inf isempty range_merge int4range int8range numrange
    tsrange tstzrange daterange
    to_tsvector to_tsquery plainto_tsquery phraseto_tsquery websearch_to_tsquery ts_rank
    ts_rank_cd ts_headline setweight
    host hostmask masklen netmask network broadcast family abbrev inet_merge inet_same_family
    version current_setting current_database current_catalog current_schema current_schemas
    current_user session_user current_role user inet_server_addr inet_server_port
    inet_client_addr inet_client_port pg_backend_pid pg_postmaster_start_time pg_conf_load_time
    pg_current_snapshot pg_snapshot_xmin pg_snapshot_xmax pg_snapshot_xip txid_current_snapshot
    txid_snapshot_xmin txid_snapshot_xmax pg_wal_lsn_diff pg_size_pretty pg_size_bytes
    pg_relation_size pg_total_relation_size pg_table_size pg_indexes_size pg_database_size
    pg_tablespace_size pg_column_size pg_column_compression pg_relation_filenode
    pg_relation_filepath pg_typeof format_type pg_get_userbyid pg_get_viewdef pg_get_indexdef
    pg_get_constraintdef pg_get_expr pg_get_functiondef pg_get_function_arguments
    pg_get_function_identity_arguments pg_get_function_result pg_get_triggerdef pg_get_ruledef
    pg_get_serial_sequence pg_get_statisticsobjdef pg_get_partkeydef pg_get_keywords
    pg_table_is_visible pg_type_is_visible pg_function_is_visible pg_opclass_is_visible
    pg_operator_is_visible pg_collation_is_visible pg_conversion_is_visible
    has_table_privilege has_schema_privilege has_database_privilege has_column_privilege
    has_any_column_privilege has_function_privilege has_sequence_privilege
    has_tablespace_privilege has_type_privilege has_language_privilege pg_has_role
    obj_description col_description shobj_description pg_encoding_to_char pg_char_to_encoding
    pg_client_encoding pg_my_temp_schema pg_is_other_temp_schema pg_jit_available
    pg_tablespace_location pg_partition_tree pg_partition_root pg_partition_ancestors
    pg_options_to_table pg_describe_object pg_identify_object pg_identify_object_as_address
    pg_listening_channels pg_notification_queue_usage pg_trigger_depth pg_blocking_pids
    pg_safe_snapshot_blocking_pids pg_collation_for pg_input_is_valid pg_input_error_info
    to_regclass to_regtype to_regproc to_regprocedure to_regnamespace to_regrole to_regoper
    to_regoperator to_regcollation to_regtypemod pg_xact_commit_timestamp pg_last_committed_xact
    pg_stat_get_activity pg_stat_get_backend_pid pg_get_backend_memory_contexts
    pg_settings_get_flags pg_get_object_address pg_index_column_has_property
    pg_index_has_property pg_indexam_has_property age mxid_age txid_visible_in_snapshot
    pg_visible_in_snapshot pg_xact_status txid_status pg_control_checkpoint pg_control_system
    pg_control_init pg_control_recovery pg_current_logfile pg_get_wal_resource_managers
    xmlexists xml_is_well_formed xml_is_well_formed_document xml_is_well_formed_content xpath
    xpath_exists xmlcomment xmltext num_nulls num_nonnulls merge_action
    """
)
# Keyword-spelled names the fast path may treat as plain calls (version(), left(), format()...).
_KNOWN_FUNCS: Final = (
    _SAFE_BUILTINS
    | _REPLICA_SAFE_VOLATILE
    | _SEQUENCE_FUNCS
    | _PRIMARY_ONLY_FUNCS
    | _ADVISORY_SESSION
    | _ADVISORY_XACT
    | _ADVISORY_UNLOCK
    | {"pg_advisory_unlock_all", "pg_notify", "set_config"}
)

# Settings whose list values PostgreSQL stores with quote_identifier() (GUC_LIST_QUOTE).
_LIST_QUOTE_SETTINGS: Final = frozenset(
    {
        "search_path",
        "temp_tablespaces",
        "session_preload_libraries",
        "shared_preload_libraries",
        "local_preload_libraries",
    }
)
_SIMPLE_IDENT_RE: Final = re.compile(r"[a-z_][a-z0-9_$]*")

_CURSOR_OPT_HOLD: Final = 0x0020  # parsenodes.h

# Rank of write reasons inside one statement: the first wins.
_WRITE_RANK: Final = {
    r: i
    for i, r in enumerate(
        (
            Reason.WRITING_CTE,
            Reason.SELECT_INTO,
            Reason.SELECT_FOR_LOCK,
            Reason.SEQUENCE_FUNCTION,
            Reason.PRIMARY_ONLY_FUNCTION,
            Reason.ADVISORY_LOCK,
            Reason.LISTEN_NOTIFY,
            Reason.VOLATILE_FUNCTION,
            Reason.UNKNOWN_FUNCTION,
        )
    )
}

_PLAIN_READ: Final = Classification(_READ, Reason.PLAIN_SELECT, True)
# Shared by every plain SELECT the fast path classifies: a read with no session effects, which
# the engine can skip by identity on the hot path.
PLAIN_READ: Final = _PLAIN_READ
_DML: Final = Classification(_WRITE, Reason.DML, False)
_PARSE_ERROR: Final = Classification(_WRITE, Reason.PARSE_ERROR, False)

_TX_WORDS: Final = {
    "begin": TxAction.BEGIN,
    "commit": TxAction.COMMIT,
    "end": TxAction.COMMIT,
    "rollback": TxAction.ROLLBACK,
    "abort": TxAction.ROLLBACK,
}
_TX_KINDS: Final = {
    "TRANS_STMT_BEGIN": TxAction.BEGIN,
    "TRANS_STMT_START": TxAction.BEGIN,
    "TRANS_STMT_COMMIT": TxAction.COMMIT,
    "TRANS_STMT_ROLLBACK": TxAction.ROLLBACK,
    "TRANS_STMT_SAVEPOINT": TxAction.SAVEPOINT,
    "TRANS_STMT_RELEASE": TxAction.RELEASE,
    "TRANS_STMT_ROLLBACK_TO": TxAction.ROLLBACK_TO,
    "TRANS_STMT_PREPARE": TxAction.PREPARE_TRANSACTION,
    "TRANS_STMT_COMMIT_PREPARED": TxAction.COMMIT_PREPARED,
    "TRANS_STMT_ROLLBACK_PREPARED": TxAction.ROLLBACK_PREPARED,
}
_TWO_PHASE: Final = frozenset(
    {TxAction.PREPARE_TRANSACTION, TxAction.COMMIT_PREPARED, TxAction.ROLLBACK_PREPARED}
)
_DISCARD_UNPINS: Final = {
    "DISCARD_ALL": (
        UnpinEvent.DISCARD_ALL,
        UnpinEvent.DISCARD_TEMP,
        UnpinEvent.DISCARD_PLANS,
        UnpinEvent.DISCARD_SEQUENCES,
        UnpinEvent.UNLISTEN_ALL,
        UnpinEvent.ADVISORY_UNLOCK_ALL,
        UnpinEvent.CLOSE_ALL_CURSORS,
        UnpinEvent.DEALLOCATE_ALL,
        UnpinEvent.RESET_SESSION_AUTHORIZATION,
    ),
    "DISCARD_TEMP": (UnpinEvent.DISCARD_TEMP,),
    "DISCARD_PLANS": (UnpinEvent.DISCARD_PLANS,),
    "DISCARD_SEQUENCES": (UnpinEvent.DISCARD_SEQUENCES,),
}
_MAINTENANCE_STMTS: Final = frozenset(
    {"VacuumStmt", "ClusterStmt", "ReindexStmt", "CheckPointStmt", "RefreshMatViewStmt"}
)
_DML_STMTS: Final = frozenset({"InsertStmt", "UpdateStmt", "DeleteStmt", "MergeStmt"})
_DML_WORDS: Final = frozenset({"insert", "update", "delete", "merge"})
_LOCK_WORDS: Final = frozenset({"update", "share"})

_MAX_CACHED_LENGTH: Final = 16_384


class _Ambiguous(Exception):
    """The fast path cannot decide; the parse tree must."""


class _Ctx:
    """Per-classification scratch state: did the answer depend on a literal's value?"""

    __slots__ = ("sensitive",)

    def __init__(self) -> None:
        self.sensitive = False


# --------------------------------------------------------------------------------------------
# Lexing helpers.
# --------------------------------------------------------------------------------------------
def _tokenize(sql: str) -> tuple[list[Token], list[str], bool, bool]:
    """Return (tokens, leading comments, lexing error, a '...' string holds a backslash)."""
    toks: list[Token] = []
    append = toks.append
    lead: list[str] = []
    backslash = False
    first = _FIRST_CHAR
    for t, _tag in _TOKEN_RE.findall(sql):
        if not t:
            continue  # end of text
        c = t[0]
        k = first.get(c, "w" if c >= "\x80" else "x")
        if k == "w":
            if len(t) > 1 and t[1] == "'":
                append(("es", t))
            else:
                append(("w", t.lower()))
        elif k == "op" or k == "nu" or k in _PUNCT:
            append((k, t))
        elif k == "ss":
            if len(t) < 2:
                return toks, lead, True, backslash
            backslash = backslash or "\\" in t
            append((k, t))
        elif k == "q":
            if len(t) < 2:
                return toks, lead, True, backslash
            append(("q", t[1:-1].replace('""', '"')))
        elif k == "-" or k == "/":
            if t == "/*":
                return toks, lead, True, backslash
            if t[:2] == "--" or t[:2] == "/*":
                if not toks:
                    lead.append(t)
            else:
                append(("op", t))
        elif k == ".":
            append(("nu", t) if len(t) > 1 else (".", t))
        elif k == ":":
            append((t, t))
        elif k == "$" and len(t) > 1:
            append(("pa" if "0" <= t[1] <= "9" else "ds", t))
        else:
            return toks, lead, True, backslash
    return toks, lead, False, backslash


def _scs_ambiguous(sql: str) -> bool:
    """True if the text lexes differently with standard_conforming_strings off."""
    return _TOKEN_RE.findall(sql) != _TOKEN_SCS_OFF_RE.findall(sql)


def _fingerprint(sql: str) -> object:
    """Cache key: ``sql`` itself when there is nothing to normalize, else a normalized form.

    Two shapes that never equal each other or raw text: a tuple starting with None (text with
    only numbers and quoted identifiers to normalize) and a tuple starting with text.
    """
    if "'" in sql or "$" in sql or "--" in sql or "/*" in sql:
        parts = _KEY_RE.split(sql)
        return sql if len(parts) == 1 else tuple(parts)
    parts = _LIGHT_KEY_RE.split(sql)
    return sql if len(parts) == 1 else (None, *parts)


def _quote_ident(name: str) -> str:
    """PostgreSQL quote_identifier(): quote unless a plain lower-case non-keyword."""
    if _SIMPLE_IDENT_RE.fullmatch(name) and name not in _RESERVED | _COL_NAME | _TYPE_FUNC:
        return name
    return '"' + name.replace('"', '""') + '"'


def _base_name(name: str) -> str | None:
    """Catalog name of a function written unqualified or pg_catalog-qualified, else None."""
    if "." not in name:
        return name
    schema, _, base = name.partition(".")
    return base if schema == "pg_catalog" and "." not in base else None


# --------------------------------------------------------------------------------------------
# Results.
# --------------------------------------------------------------------------------------------
class _Calls:
    """Function calls of one statement, resolved to a write reason, pins and settings."""

    __slots__ = ("functions", "pins", "reason", "settings", "unpins")

    def __init__(self) -> None:
        self.functions: list[str] = []
        self.reason: Reason | None = None
        self.pins: list[PinReason] = []
        self.unpins: list[UnpinEvent] = []
        self.settings: list[SettingChange] = []

    def write(self, reason: Reason) -> None:
        if self.reason is None or _WRITE_RANK[reason] < _WRITE_RANK[self.reason]:
            self.reason = reason


# --------------------------------------------------------------------------------------------
# Parse-tree helpers (pglast JSON: {"NodeType": {fields}}; default-valued fields are omitted).
# --------------------------------------------------------------------------------------------
class _TreeFacts:
    __slots__ = ("calls", "dml", "into", "lock")

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []
        self.dml = False
        self.lock = False
        self.into: dict[str, Any] | None = None


def _walk(obj: Any, facts: _TreeFacts) -> None:
    if type(obj) is dict:
        for k, v in obj.items():
            if k == "FuncCall":
                facts.calls.append(v)
            elif k in _DML_STMTS:
                facts.dml = True
            elif k == "lockingClause":
                facts.lock = True
            elif k == "intoClause":
                facts.into = v
            if type(v) is dict or type(v) is list:
                _walk(v, facts)
    elif type(obj) is list:
        for v in obj:
            if type(v) is dict or type(v) is list:
                _walk(v, facts)


def _names(items: list[dict[str, Any]] | None) -> str:
    return ".".join(i.get("String", {}).get("sval", "") for i in items or ())


def _const(node: Any, ctx: _Ctx) -> tuple[bool, str | None]:
    """(is a constant, its text) for an A_Const, possibly under type casts."""
    ctx.sensitive = True
    while type(node) is dict and "TypeCast" in node:
        node = node["TypeCast"].get("arg")
    c = node.get("A_Const") if type(node) is dict else None
    if c is None:
        return False, None
    if c.get("isnull"):
        return True, None
    if "sval" in c:
        return True, str(c["sval"].get("sval", ""))
    if "ival" in c:
        return True, str(c["ival"].get("ival", 0))
    if "fval" in c:
        return True, str(c["fval"].get("fval", "0"))
    if "boolval" in c:
        return True, "true" if c["boolval"].get("boolval") else "false"
    if "bsval" in c:
        return True, str(c["bsval"].get("bsval", ""))
    return False, None


def _bool_text(text: str | None) -> bool | None:
    """PostgreSQL parse_bool(): prefixes of true/false/yes/no, on/off, 1/0; else None."""
    if text is None:
        return None
    t = text.strip().lower()
    if not t:
        return None
    if "true".startswith(t) or "yes".startswith(t) or t in ("on", "1"):
        return True
    if "false".startswith(t) or "no".startswith(t) or t in ("of", "off", "0"):
        return False
    return None


def _defelem_bool(arg: Any, ctx: _Ctx) -> bool:
    """defGetBoolean(): no argument means true; anything unclear counts as true."""
    if arg is None:
        return True
    ctx.sensitive = True
    if "Integer" in arg:
        return bool(arg["Integer"].get("ival", 0) != 0)
    if "Boolean" in arg:
        return bool(arg["Boolean"].get("boolval", False))
    if "String" in arg:
        return str(arg["String"].get("sval", "")).lower() not in ("false", "off")
    _, text = _const(arg, ctx)
    return _bool_text(text) is not False


def _temp_pin(rel: dict[str, Any] | None, on_commit: str | None = None) -> tuple[PinReason, ...]:
    if not rel or on_commit == "ONCOMMIT_DROP":
        return ()
    if rel.get("relpersistence") == "t" or rel.get("schemaname") == "pg_temp":
        return (PinReason.TEMP_TABLE,)
    return ()


# --------------------------------------------------------------------------------------------
# Function resolution: what calling these functions means for routing.
# --------------------------------------------------------------------------------------------
def _resolve(names: list[str], lookup: VolatilityLookup | None, ctx: _Ctx | None) -> _Calls:
    """Resolve called functions: built-in rules first, then ``pg_proc.provolatile``.

    ``ctx`` is None on the token fast path, which defers ``set_config`` to the parse tree.
    """
    calls = _Calls()
    for name in names:
        calls.functions.append(name)
        base = _base_name(name)
        if base is not None:
            if base in _SEQUENCE_FUNCS:
                calls.write(Reason.SEQUENCE_FUNCTION)
                continue
            if base in _PRIMARY_ONLY_FUNCS:
                calls.write(Reason.PRIMARY_ONLY_FUNCTION)
                continue
            if base in _ADVISORY_SESSION:
                calls.write(Reason.ADVISORY_LOCK)
                calls.pins.append(PinReason.ADVISORY_LOCK)
                continue
            if base in _ADVISORY_XACT:
                calls.write(Reason.ADVISORY_LOCK)
                continue
            if base in _ADVISORY_UNLOCK:
                calls.write(Reason.ADVISORY_LOCK)
                calls.unpins.append(UnpinEvent.ADVISORY_UNLOCK)
                continue
            if base == "pg_advisory_unlock_all":
                calls.write(Reason.ADVISORY_LOCK)
                calls.unpins.append(UnpinEvent.ADVISORY_UNLOCK_ALL)
                continue
            if base == "pg_notify":
                calls.write(Reason.LISTEN_NOTIFY)
                continue
            if base == "set_config":
                if ctx is None:
                    raise _Ambiguous
                continue  # the caller extracts the setting from the arguments
            if base in _REPLICA_SAFE_VOLATILE:
                continue
        volatility = lookup(name) if lookup is not None else None
        if volatility == "i" or volatility == "s":
            continue
        if volatility == "v":
            calls.write(Reason.VOLATILE_FUNCTION)
        elif base is None or base not in _SAFE_BUILTINS:
            calls.write(Reason.UNKNOWN_FUNCTION)
    calls.functions = list(_dedup(calls.functions))
    calls.pins = list(_dedup(calls.pins))
    calls.unpins = list(_dedup(calls.unpins))
    return calls


# --------------------------------------------------------------------------------------------
# The classifier.
# --------------------------------------------------------------------------------------------
class Classifier:
    """Classifies SQL text. Holds an LRU cache keyed by the literal-normalized statement text.

    ``volatility(name)`` returns ``pg_proc.provolatile`` (``'i'``, ``'s'``, ``'v'``) or None when
    unknown; the proxy learns it from the primary's catalog.  Names are passed as the server
    resolves them (unquoted parts lower-cased, ``schema.name`` when written qualified).
    Statements longer than ``max_cached_length`` characters are classified but not cached.
    """

    __slots__ = ("_cache", "_cache_size", "_learned", "_lookup", "_max_cached_length")

    def __init__(
        self,
        *,
        cache_size: int = 10_000,
        volatility: VolatilityLookup | None = None,
        max_cached_length: int = _MAX_CACHED_LENGTH,
    ) -> None:
        self._cache: OrderedDict[object, Classification] = OrderedDict()
        self._cache_size = max(0, cache_size)
        self._lookup = volatility
        self._learned: OrderedDict[object, None] = OrderedDict()
        self._max_cached_length = max_cached_length

    # ---- public API ------------------------------------------------------------------------
    def classify(self, sql: str) -> Classification:
        """Classify one simple-query string (PostgreSQL protocol ``Query`` message text)."""
        cache = self._cache
        hit = cache.get(sql)
        if hit is not None:
            cache.move_to_end(sql)
            return hit
        if "\x00" in sql:
            return _PARSE_ERROR  # a PostgreSQL query string cannot hold NUL
        key = _fingerprint(sql)
        if len(sql) > self._max_cached_length or not self._cache_size:
            return self._classify_uncached(sql, key)[0]
        if key is not sql:
            hit = cache.get(key)
            if hit is not None:
                cache.move_to_end(key)
                if hit is not _SENSITIVE:
                    return hit
        result, sensitive = self._classify_uncached(sql, key)
        store_in_cache(cache, self._cache_size, sql, key, result, sensitive)
        return result

    def set_volatility(self, lookup: VolatilityLookup | None) -> None:
        """Swap the volatility lookup; forget cached results that depended on functions."""
        self._lookup = lookup
        stale = [k for k, v in self._cache.items() if v.functions]
        for k in stale:
            del self._cache[k]

    def remember_write(self, sql: str) -> None:
        """A standby refused this statement (SQLSTATE 25006): classify its template as WRITE.

        Learned by fingerprint, so every literal variant of the statement follows.  The cache is
        cleared: this is rare and it also drops literal-sensitive variants cached by exact text.
        """
        key = _fingerprint(sql)
        learn_template(self._learned, key, self._cache_size)
        self._cache.clear()

    def cache_info(self) -> tuple[int, int]:
        """(entries in the cache, learned write templates) for the admin console."""
        return len(self._cache), len(self._learned)

    # ---- pipeline ------------------------------------------------------------------------------
    def _classify_uncached(self, sql: str, key: object) -> tuple[Classification, bool]:
        ctx = _Ctx()
        try:
            result = self._classify_text(sql, ctx)
        except Exception:
            # Never raise into the proxy: anything unexpected goes to the primary.
            result = _PARSE_ERROR
        if key in self._learned:
            result = as_learned_write(result)
        return result, ctx.sensitive

    def _classify_text(self, sql: str, ctx: _Ctx) -> Classification:
        if "\x00" in sql:
            return _PARSE_ERROR
        toks, lead, error, backslash = _tokenize(sql)
        hint = _hint_of(lead)
        if backslash and not error and _scs_ambiguous(sql):
            return _apply_hint(Classification(_WRITE, Reason.AMBIGUOUS_ESCAPE, False), hint)
        parts: list[Classification] | None = None
        if not error:
            if not toks:
                return _apply_hint(_EMPTY, hint)
            parts = self._fast(toks)
        if parts is None:
            parts = self._authority(sql, toks, error, ctx)
        return _apply_hint(_combine(parts), hint)

    # ---- fast path -------------------------------------------------------------------------------
    def _fast(self, toks: list[Token]) -> list[Classification] | None:
        """Token-level classification of hot statements, or None to defer to the parse tree."""
        statements: list[list[Token]] = []
        depth = 0
        start = 0
        for i, t in enumerate(toks):
            k = t[0]
            if k == "(":
                depth += 1
            elif k == ")":
                depth -= 1
                if depth < 0:
                    return None
            elif k == ";":
                if depth:
                    return None
                if i > start:
                    statements.append(toks[start:i])
                start = i + 1
        if depth:
            return None
        if start < len(toks):
            statements.append(toks[start:])
        parts: list[Classification] = []
        try:
            for st in statements:
                c = self._fast_statement(st)
                if c is None:
                    return None
                parts.append(c)
        except _Ambiguous:
            return None
        return parts

    def _fast_statement(self, st: list[Token]) -> Classification | None:
        kind, word = st[0]
        if kind == "w":
            if word in ("select", "values", "table", "with"):
                return self._fast_query(st)
            if word in _DML_WORDS or word == "truncate":
                return self._fast_dml(st)
            action = _TX_WORDS.get(word)
            if action is not None and (
                len(st) == 1 or (len(st) == 2 and st[1] in (("w", "work"), ("w", "transaction")))
            ):
                return Classification(_TRANSACTION, Reason.TX_CONTROL, True, tx=action)
            return None
        if kind == "(":
            return self._fast_query(st)
        return None

    def _fast_query(self, st: list[Token]) -> Classification:
        n = len(st)
        is_with = st[0] == ("w", "with")
        lock = writing_cte = False
        names: list[str] = []
        parens: dict[int, int] | None = None
        depth = 0
        for i in range(n):
            k, v = st[i]
            if k == "(":
                depth += 1
                continue
            if k == ")":
                depth -= 1
                continue
            if k == "w":
                if v in _DML_WORDS:
                    prev = st[i - 1]
                    if v == "update" and (
                        prev == ("w", "for") or (prev == ("w", "key") and st[i - 2] == ("w", "no"))
                    ):
                        continue  # FOR [NO KEY] UPDATE: counted at FOR
                    if prev[0] == "(":
                        writing_cte = True
                        continue
                    if is_with and depth == 0 and prev[0] == ")":
                        return _DML  # WITH ... INSERT / UPDATE / DELETE / MERGE
                    raise _Ambiguous  # e.g. a column called "update"
                if v == "for":
                    nxt = st[i + 1] if i + 1 < n else ("", "")
                    nxt2 = st[i + 2] if i + 2 < n else ("", "")
                    if (
                        (nxt[0] == "w" and nxt[1] in _LOCK_WORDS)
                        or (nxt == ("w", "no") and nxt2 == ("w", "key"))
                        or (nxt == ("w", "key") and nxt2 == ("w", "share"))
                    ):
                        lock = True
                    continue
                if v == "into":
                    raise _Ambiguous  # SELECT INTO: the tree says whether it is TEMP
            if (k == "w" or k == "q") and i + 1 < n and st[i + 1][0] == "(":
                if parens is None:
                    parens = _match_parens(st)
                name = _call_name(st, i, parens, strict=True)
                if name is not None:
                    names.append(name)
        if not names and not lock and not writing_cte:
            return _PLAIN_READ
        calls = _resolve(names, self._lookup, None)
        if lock:
            calls.write(Reason.SELECT_FOR_LOCK)
        if writing_cte:
            calls.write(Reason.WRITING_CTE)
        if calls.reason is not None:
            return Classification(
                _WRITE,
                calls.reason,
                False,
                pins=tuple(calls.pins),
                unpins=tuple(calls.unpins),
                functions=tuple(calls.functions),
            )
        return Classification(_READ, Reason.PLAIN_SELECT, True, functions=tuple(calls.functions))

    def _fast_dml(self, st: list[Token]) -> Classification:
        names: list[str] = []
        parens: dict[int, int] | None = None
        n = len(st)
        for i in range(n):
            k = st[i][0]
            if (k == "w" or k == "q") and i + 1 < n and st[i + 1][0] == "(":
                if parens is None:
                    parens = _match_parens(st)
                name = _call_name(st, i, parens, strict=False)
                if name is not None:
                    names.append(name)
        if not names:
            return _DML
        calls = _resolve(names, self._lookup, None)
        return Classification(
            _WRITE,
            Reason.DML,
            False,
            pins=tuple(calls.pins),
            unpins=tuple(calls.unpins),
            functions=tuple(calls.functions),
        )

    # ---- authority: the PostgreSQL grammar via pglast --------------------------------------------
    def _authority(
        self, sql: str, toks: list[Token], lex_error: bool, ctx: _Ctx
    ) -> list[Classification]:
        try:
            tree = json.loads(parse_sql_json(sql))
        except Exception:
            count = 1 if lex_error else max(1, _count_statements(toks))
            return [
                _PARSE_ERROR if count == 1 else dataclasses.replace(_PARSE_ERROR, statements=count)
            ]
        statements = _TreeClassifier(self._lookup)
        return [statements.node(raw.get("stmt", {}), ctx) for raw in tree.get("stmts", ())]


class _TreeClassifier:
    """The authority: classification of pglast's parse tree, one handler per statement node."""

    __slots__ = ("lookup",)

    def __init__(self, lookup: VolatilityLookup | None) -> None:
        self.lookup = lookup

    def node(self, node: dict[str, Any], ctx: _Ctx) -> Classification:
        """Classify one statement node (``{"SelectStmt": {...}}``) by its handler."""
        if not node:
            return _EMPTY
        ((ntype, body),) = node.items()
        handler = _HANDLERS.get(ntype)
        if handler is not None:
            return handler(self, body, ctx)
        if ntype in _MAINTENANCE_STMTS:
            return Classification(_WRITE, Reason.MAINTENANCE, False)
        if ntype.endswith("Stmt"):
            return Classification(_WRITE, Reason.DDL, False)
        return Classification(_WRITE, Reason.UNKNOWN, False)

    def _tree_calls(self, facts: _TreeFacts, ctx: _Ctx) -> _Calls:
        names = [_names(c.get("funcname")) for c in facts.calls]
        calls = _resolve(names, self.lookup, ctx)
        for body, name in zip(facts.calls, names, strict=True):
            if _base_name(name) == "set_config":
                change = _set_config(body, ctx)
                if change is None:
                    calls.pins.append(PinReason.UNTRACKED_SETTING)
                else:
                    calls.settings.append(change)
        calls.pins = list(_dedup(calls.pins))
        return calls

    def _query(self, node: dict[str, Any], ctx: _Ctx) -> Classification:
        """SELECT (and the body of EXPLAIN / DECLARE / PREPARE / COPY): walk the whole tree."""
        facts = _TreeFacts()
        _walk(node, facts)
        calls = self._tree_calls(facts, ctx)
        pins = calls.pins
        if facts.dml:
            calls.write(Reason.WRITING_CTE)
        if facts.into is not None:
            calls.write(Reason.SELECT_INTO)
            pins = [*_temp_pin(facts.into.get("rel"), facts.into.get("onCommit")), *pins]
        if facts.lock:
            calls.write(Reason.SELECT_FOR_LOCK)
        settings = tuple(calls.settings)
        if calls.reason is not None:
            kind, reason, read_only = _WRITE, calls.reason, False
        elif settings or pins:
            kind, reason, read_only = _SESSION, Reason.SET, True
        else:
            kind, reason, read_only = _READ, Reason.PLAIN_SELECT, True
        return Classification(
            kind,
            reason,
            read_only,
            settings=settings,
            pins=tuple(pins),
            unpins=tuple(calls.unpins),
            functions=tuple(calls.functions),
        )

    def _stmt_query(self, body: dict[str, Any], ctx: _Ctx) -> Classification:
        return self._query({"SelectStmt": body}, ctx)

    def _stmt_dml(self, body: dict[str, Any], ctx: _Ctx) -> Classification:
        facts = _TreeFacts()
        _walk(body, facts)
        if not facts.calls:
            return _DML
        calls = self._tree_calls(facts, ctx)
        return Classification(
            _WRITE,
            Reason.DML,
            False,
            settings=tuple(calls.settings),
            pins=tuple(calls.pins),
            unpins=tuple(calls.unpins),
            functions=tuple(calls.functions),
        )

    def _stmt_truncate(self, body: dict[str, Any], ctx: _Ctx) -> Classification:
        return _DML

    def _stmt_explain(self, body: dict[str, Any], ctx: _Ctx) -> Classification:
        inner = self.node(body.get("query", {}), ctx)
        analyze = False
        for opt in body.get("options", ()):
            d = opt.get("DefElem", {})
            if d.get("defname") in ("analyze", "analyse"):
                analyze = _defelem_bool(d.get("arg"), ctx)
        if not analyze and any(_base_name(f) in _PRIMARY_ONLY_FUNCS for f in inner.functions):
            # The planner folds immutable calls with constant arguments: a standby refuses
            # EXPLAIN SELECT pg_walfile_name('0/0') without running anything.
            return Classification(
                _WRITE, Reason.PRIMARY_ONLY_FUNCTION, False, functions=inner.functions, inner=inner
            )
        if not analyze or (inner.kind is _READ and inner.read_only):
            return Classification(
                _READ, Reason.EXPLAIN, True, functions=inner.functions, inner=inner
            )
        return Classification(
            _WRITE,
            Reason.EXPLAIN_ANALYZE_WRITE,
            False,
            settings=inner.settings,
            pins=inner.pins,
            unpins=inner.unpins,
            functions=inner.functions,
            inner=inner,
        )

    def _stmt_copy(self, body: dict[str, Any], ctx: _Ctx) -> Classification:
        if body.get("is_from"):
            return Classification(_WRITE, Reason.COPY_FROM, False)
        inner = self.node(body["query"], ctx) if "query" in body else None
        functions = inner.functions if inner else ()
        if inner is not None and not (inner.kind is _READ and inner.read_only):
            return dataclasses.replace(inner, inner=inner)
        if "filename" in body or body.get("is_program"):
            return Classification(
                _WRITE, Reason.COPY_TO_SERVER, False, functions=functions, inner=inner
            )
        return Classification(_READ, Reason.COPY_TO, True, functions=functions, inner=inner)

    def _stmt_transaction(self, body: dict[str, Any], ctx: _Ctx) -> Classification:
        action = _TX_KINDS.get(body.get("kind", ""))
        if action is None:
            return Classification(_WRITE, Reason.UNKNOWN, False)
        tx_read_only, serializable = _tx_options(body.get("options", ()), ctx)
        target = body.get("savepoint_name")
        if "gid" in body:
            ctx.sensitive = True
            target = body["gid"]
        read_only = action not in _TWO_PHASE and tx_read_only is not False and not serializable
        return Classification(
            _TRANSACTION,
            Reason.TX_CONTROL,
            read_only,
            tx=action,
            tx_read_only=tx_read_only,
            target=target,
        )

    def _stmt_set(self, body: dict[str, Any], ctx: _Ctx) -> Classification:
        kind = body.get("kind", "")
        name = str(body.get("name", "")).lower()
        local = bool(body.get("is_local", False))
        args: list[Any] = body.get("args", [])
        if kind == "VAR_SET_MULTI":
            if name.startswith("transaction"):
                tx_read_only, serializable = _tx_options(args, ctx)
                return Classification(
                    _TRANSACTION,
                    Reason.TX_CONTROL,
                    tx_read_only is not False and not serializable,
                    tx=TxAction.SET_TRANSACTION,
                    tx_read_only=tx_read_only,
                )
            if name == "session characteristics":
                return _session_set(_characteristics(args, ctx), ())
            return _session_set((), (PinReason.UNTRACKED_SETTING,))
        if kind == "VAR_RESET_ALL":
            return _session_set((SettingChange("all", None, False, reset_all=True),), ())
        if kind in ("VAR_RESET", "VAR_SET_DEFAULT"):
            unpins = (
                (UnpinEvent.RESET_SESSION_AUTHORIZATION,) if name == "session_authorization" else ()
            )
            return _session_set((SettingChange(name, None, local),), (), unpins)
        if kind == "VAR_SET_VALUE":
            value = _setting_value(name, args, ctx)
            if value is None:
                return _session_set((), (PinReason.UNTRACKED_SETTING,))
            pins = (PinReason.SESSION_AUTHORIZATION,) if name == "session_authorization" else ()
            return _session_set((SettingChange(name, value, local),), pins)
        return _session_set((), (PinReason.UNTRACKED_SETTING,))

    def _stmt_show(self, body: dict[str, Any], ctx: _Ctx) -> Classification:
        return Classification(_READ, Reason.SHOW, True, target=str(body.get("name", "")).lower())

    def _stmt_discard(self, body: dict[str, Any], ctx: _Ctx) -> Classification:
        target = body.get("target", "DISCARD_ALL")
        settings = (
            (SettingChange("all", None, False, reset_all=True),) if target == "DISCARD_ALL" else ()
        )
        return Classification(
            _SESSION,
            Reason.DISCARD,
            True,
            settings=settings,
            unpins=_DISCARD_UNPINS.get(target, ()),
        )

    def _stmt_load(self, body: dict[str, Any], ctx: _Ctx) -> Classification:
        ctx.sensitive = True
        return Classification(
            _SESSION, Reason.LOAD, True, pins=(PinReason.LOAD,), target=body.get("filename")
        )

    def _stmt_listen(self, body: dict[str, Any], ctx: _Ctx) -> Classification:
        return Classification(
            _SESSION,
            Reason.LISTEN_NOTIFY,
            False,
            pins=(PinReason.LISTEN,),
            target=body.get("conditionname"),
        )

    def _stmt_unlisten(self, body: dict[str, Any], ctx: _Ctx) -> Classification:
        channel = body.get("conditionname")
        unpin = UnpinEvent.UNLISTEN if channel else UnpinEvent.UNLISTEN_ALL
        return Classification(_SESSION, Reason.LISTEN_NOTIFY, True, unpins=(unpin,), target=channel)

    def _stmt_notify(self, body: dict[str, Any], ctx: _Ctx) -> Classification:
        return Classification(_WRITE, Reason.LISTEN_NOTIFY, False, target=body.get("conditionname"))

    def _stmt_declare(self, body: dict[str, Any], ctx: _Ctx) -> Classification:
        inner = self.node(body.get("query", {}), ctx)
        hold = bool(int(body.get("options", 0)) & _CURSOR_OPT_HOLD)
        pins = (PinReason.WITH_HOLD_CURSOR, *inner.pins) if hold else inner.pins
        if inner.kind is _READ and inner.read_only:
            kind, reason, read_only = (
                _READ,
                (Reason.WITH_HOLD_CURSOR if hold else Reason.CURSOR),
                True,
            )
        else:
            kind, reason, read_only = _WRITE, inner.reason, False
        return Classification(
            kind,
            reason,
            read_only,
            settings=inner.settings,
            pins=_dedup(pins),
            unpins=inner.unpins,
            functions=inner.functions,
            target=body.get("portalname"),
            inner=inner,
        )

    def _stmt_fetch(self, body: dict[str, Any], ctx: _Ctx) -> Classification:
        return Classification(_READ, Reason.CURSOR, True, target=body.get("portalname"))

    def _stmt_close(self, body: dict[str, Any], ctx: _Ctx) -> Classification:
        name = body.get("portalname")
        unpin = UnpinEvent.CLOSE_CURSOR if name else UnpinEvent.CLOSE_ALL_CURSORS
        return Classification(_SESSION, Reason.CURSOR, True, unpins=(unpin,), target=name)

    def _stmt_prepare(self, body: dict[str, Any], ctx: _Ctx) -> Classification:
        inner = self.node(body.get("query", {}), ctx)
        return Classification(
            _SESSION,
            Reason.SQL_PREPARE,
            True,
            pins=(PinReason.SQL_PREPARE,),
            functions=inner.functions,
            prepared_name=body.get("name"),
            inner=inner,
        )

    def _stmt_execute(self, body: dict[str, Any], ctx: _Ctx) -> Classification:
        return Classification(
            StatementKind.UNKNOWN, Reason.SQL_EXECUTE, False, prepared_name=body.get("name")
        )

    def _stmt_deallocate(self, body: dict[str, Any], ctx: _Ctx) -> Classification:
        name = body.get("name")
        unpin = (
            UnpinEvent.DEALLOCATE_ALL if body.get("isall") or not name else UnpinEvent.DEALLOCATE
        )
        return Classification(
            _SESSION, Reason.SQL_DEALLOCATE, True, unpins=(unpin,), prepared_name=name
        )

    def _stmt_lock(self, body: dict[str, Any], ctx: _Ctx) -> Classification:
        return Classification(_WRITE, Reason.LOCK_TABLE, False)

    def _stmt_call(self, body: dict[str, Any], ctx: _Ctx) -> Classification:
        name = _names(body.get("funccall", {}).get("funcname"))
        return Classification(_WRITE, Reason.CALL_OR_DO, False, functions=(name,) if name else ())

    def _stmt_do(self, body: dict[str, Any], ctx: _Ctx) -> Classification:
        return Classification(_WRITE, Reason.CALL_OR_DO, False)

    def _stmt_constraints(self, body: dict[str, Any], ctx: _Ctx) -> Classification:
        return Classification(_TRANSACTION, Reason.TX_CONTROL, True, tx=TxAction.SET_CONSTRAINTS)

    def _stmt_create(self, body: dict[str, Any], ctx: _Ctx) -> Classification:
        pins = _temp_pin(body.get("relation"), body.get("oncommit"))
        return Classification(_WRITE, Reason.DDL, False, pins=pins)

    def _stmt_create_as(self, body: dict[str, Any], ctx: _Ctx) -> Classification:
        into = body.get("into", {})
        pins = _temp_pin(into.get("rel"), into.get("onCommit"))
        return Classification(_WRITE, Reason.DDL, False, pins=pins)

    def _stmt_view(self, body: dict[str, Any], ctx: _Ctx) -> Classification:
        return Classification(_WRITE, Reason.DDL, False, pins=_temp_pin(body.get("view")))

    def _stmt_sequence(self, body: dict[str, Any], ctx: _Ctx) -> Classification:
        return Classification(_WRITE, Reason.DDL, False, pins=_temp_pin(body.get("sequence")))

    def _stmt_function(self, body: dict[str, Any], ctx: _Ctx) -> Classification:
        names = body.get("funcname") or []
        temp = _names(names[:1]) == "pg_temp" and len(names) > 1
        return Classification(
            _WRITE, Reason.DDL, False, pins=(PinReason.TEMP_TABLE,) if temp else ()
        )


_Handler = Callable[[_TreeClassifier, dict[str, Any], _Ctx], Classification]
_HANDLERS: Final[dict[str, _Handler]] = {
    "SelectStmt": _TreeClassifier._stmt_query,
    "InsertStmt": _TreeClassifier._stmt_dml,
    "UpdateStmt": _TreeClassifier._stmt_dml,
    "DeleteStmt": _TreeClassifier._stmt_dml,
    "MergeStmt": _TreeClassifier._stmt_dml,
    "TruncateStmt": _TreeClassifier._stmt_truncate,
    "ExplainStmt": _TreeClassifier._stmt_explain,
    "CopyStmt": _TreeClassifier._stmt_copy,
    "TransactionStmt": _TreeClassifier._stmt_transaction,
    "VariableSetStmt": _TreeClassifier._stmt_set,
    "VariableShowStmt": _TreeClassifier._stmt_show,
    "DiscardStmt": _TreeClassifier._stmt_discard,
    "LoadStmt": _TreeClassifier._stmt_load,
    "ListenStmt": _TreeClassifier._stmt_listen,
    "UnlistenStmt": _TreeClassifier._stmt_unlisten,
    "NotifyStmt": _TreeClassifier._stmt_notify,
    "DeclareCursorStmt": _TreeClassifier._stmt_declare,
    "FetchStmt": _TreeClassifier._stmt_fetch,
    "ClosePortalStmt": _TreeClassifier._stmt_close,
    "PrepareStmt": _TreeClassifier._stmt_prepare,
    "ExecuteStmt": _TreeClassifier._stmt_execute,
    "DeallocateStmt": _TreeClassifier._stmt_deallocate,
    "LockStmt": _TreeClassifier._stmt_lock,
    "CallStmt": _TreeClassifier._stmt_call,
    "DoStmt": _TreeClassifier._stmt_do,
    "ConstraintsSetStmt": _TreeClassifier._stmt_constraints,
    "CreateStmt": _TreeClassifier._stmt_create,
    "CreateTableAsStmt": _TreeClassifier._stmt_create_as,
    "ViewStmt": _TreeClassifier._stmt_view,
    "CreateSeqStmt": _TreeClassifier._stmt_sequence,
    "CreateFunctionStmt": _TreeClassifier._stmt_function,
}


# --------------------------------------------------------------------------------------------
# Helpers used by the handlers and the fast path.
# --------------------------------------------------------------------------------------------
def _session_set(
    settings: tuple[SettingChange, ...],
    pins: tuple[PinReason, ...],
    unpins: tuple[UnpinEvent, ...] = (),
) -> Classification:
    return Classification(_SESSION, Reason.SET, True, settings=settings, pins=pins, unpins=unpins)


def _tx_options(options: Iterable[Any], ctx: _Ctx) -> tuple[bool | None, bool]:
    """(transaction_read_only, isolation is serializable) from BEGIN / SET TRANSACTION modes."""
    read_only: bool | None = None
    serializable = False
    for opt in options:
        d = opt.get("DefElem", {}) if type(opt) is dict else {}
        name = d.get("defname")
        if name == "transaction_read_only":
            _, text = _const(d.get("arg"), ctx)
            read_only = text not in (None, "0")
        elif name == "transaction_isolation":
            _, text = _const(d.get("arg"), ctx)
            serializable = serializable or text == "serializable"
    return read_only, serializable


def _characteristics(args: Iterable[Any], ctx: _Ctx) -> tuple[SettingChange, ...]:
    """SET SESSION CHARACTERISTICS AS TRANSACTION ... -> default_transaction_* settings."""
    out: list[SettingChange] = []
    for opt in args:
        d = opt.get("DefElem", {}) if type(opt) is dict else {}
        name = str(d.get("defname", ""))
        _, text = _const(d.get("arg"), ctx)
        if name in ("transaction_read_only", "transaction_deferrable"):
            text = "off" if text in (None, "0") else "on"
        if name:
            out.append(SettingChange("default_" + name, text, False))
    return tuple(out)


def _setting_value(name: str, args: list[Any], ctx: _Ctx) -> str | None:
    """The value string PostgreSQL stores for SET name = args (flatten_set_variable_args)."""
    values: list[str] = []
    for arg in args:
        is_const, text = _const(arg, ctx)
        if not is_const or text is None or (type(arg) is dict and "TypeCast" in arg):
            return None
        values.append(text)
    if not values:
        return None
    if name in _LIST_QUOTE_SETTINGS:
        return ", ".join(_quote_ident(v) for v in values)
    return ", ".join(values)


def _set_config(body: dict[str, Any], ctx: _Ctx) -> SettingChange | None:
    """set_config(name, value, is_local) with constant arguments, else None (untrackable)."""
    args = body.get("args") or []
    if len(args) != 3:
        return None
    ok_name, name = _const(args[0], ctx)
    ok_value, value = _const(args[1], ctx)
    ok_local, local_text = _const(args[2], ctx)
    local = _bool_text(local_text)
    if not (ok_name and ok_value and ok_local) or name is None or value is None or local is None:
        return None
    return SettingChange(name.lower(), value, local)


def _match_parens(st: list[Token]) -> dict[int, int]:
    """Map every "(" index to its ")" index and back (the fast path has checked balance)."""
    match: dict[int, int] = {}
    stack: list[int] = []
    for i, t in enumerate(st):
        if t[0] == "(":
            stack.append(i)
        elif t[0] == ")" and stack:
            j = stack.pop()
            match[j] = i
            match[i] = j
    return match


def _call_name(st: list[Token], i: int, parens: dict[int, int], *, strict: bool) -> str | None:
    """Function name if ``st[i] (`` is a call, None if it is not.

    Raises _Ambiguous (strict) when only the grammar can tell, e.g. an unreserved keyword such as
    ``cube (`` or ``materialized (``; with ``strict=False`` (statements that write anyway) such a
    name is just not reported.
    """
    j = i
    parts = [st[i][1]]
    while j >= 2 and st[j - 1][0] == "." and st[j - 2][0] in ("w", "q"):
        j -= 2
        parts.append(st[j][1])
    if j > 0:
        pk, pv = st[j - 1]
        if pk == "::" or pk == "q":
            return None  # type modifier, or a column alias list after a quoted alias
        if pk == "w" and (pv in _NOT_CALL_AFTER or pv not in _ALL_KEYWORDS):
            return None  # AS alias(cols), TABLESAMPLE method(...), INTO t(cols), alias(cols)
        if pk == ")":
            opener = parens.get(j - 1, 0)
            if not (opener > 0 and st[opener - 1] == ("w", "operator")):
                return None  # (subquery) alias(cols)
    close = parens.get(i + 1)
    if close is not None and close + 2 < len(st) and st[close + 1] == ("w", "as"):
        after = st[close + 2]
        if after[0] == "(" or after in (("w", "materialized"), ("w", "not")):
            if j > 0 and st[j - 1] in (("w", "with"), ("w", "recursive")):
                return None  # WITH [RECURSIVE] name(cols) AS (...)
            if strict:
                # ", name(cols) AS (" in a WITH list, or "FROM f(x) AS (a int, ...)": a call
                # with a column definition list.  Only the grammar knows which.
                raise _Ambiguous
    if len(parts) == 1 and st[i][0] == "w":
        word = parts[0]
        if word in _SYNTAX_WORDS:
            return None
        if word in _ALL_KEYWORDS and word not in _KNOWN_FUNCS:
            if strict:
                raise _Ambiguous
            return None
    return ".".join(reversed(parts))


def _count_statements(toks: list[Token]) -> int:
    count = 0
    pending = False
    for k, _ in toks:
        if k == ";":
            count += pending
            pending = False
        else:
            pending = True
    return count + pending


@functools.cache
def _default_classifier() -> Classifier:
    # Pure: no volatility lookup and no learned writes, so sharing it leaks no state.
    return Classifier()


def classify(sql: str) -> Classification:
    """Classify ``sql`` with a shared default :class:`Classifier` (no volatility lookup).

    The default instance's cache only memoizes a pure function; use your own
    :class:`Classifier` for ``set_volatility`` / ``remember_write``.
    """
    return _default_classifier().classify(sql)
