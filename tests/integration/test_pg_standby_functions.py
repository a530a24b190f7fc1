"""Which built-ins does a hot standby refuse?  Ask a real one, and hold the classifier to it.

Volatility does not tell what a standby accepts: ``txid_current()`` is STABLE in ``pg_proc`` yet a
standby refuses it (25006), ``pg_walfile_name()`` is IMMUTABLE and a standby refuses it too
(55000).  This test calls built-ins on a streaming replica of the local cluster and fails when the
classifier would send a call to a replica that the replica refuses with a recovery error, or when
a function listed as primary-only is accepted after all (the list went stale).  Run it against a
new PostgreSQL major version to keep ``_PRIMARY_ONLY_FUNCS`` true.

What is called, each call in its own autocommit statement with a short ``statement_timeout``:

* every ``pg_catalog`` function that is not VOLATILE (plain, aggregate or window), with a sample
  value of its argument types when they are simple (numbers, text, dates, JSON, ranges, LSNs,
  xids, reg* types, arrays of those; polymorphic arguments get integers), none when it needs no
  arguments;
* every overload of the names the classifier treats specially (``_SAFE_BUILTINS``,
  ``_REPLICA_SAFE_VOLATILE``, ``_PRIMARY_ONLY_FUNCS``, the sequence functions, ``pg_notify``),
  volatile or not, the same way;
* ``CURATED`` calls that need real arguments (a sequence, a large object source file, ordered-set
  aggregates, ``pg_sleep(0)``...).

Skipped: functions returning or taking ``internal`` or a handler/trigger type, ``cstring``
arguments (type I/O functions), polymorphic functions whose types cannot be resolved from integer
samples (``anyenum``...), and ``NEVER_CALL``: functions that act even on a standby and must not be
called by a test (promotion, replay control, signalling backends, configuration reload, log
rotation, statistics resets, replication slots, backups, files written on the server).  None of
them is on the classifier's allow-lists; volatile functions that are not on them always go to the
primary.  An error that is not a recovery error (bad sample value, missing privilege, wrong
syntax for an ordered-set aggregate) makes a call inconclusive, not a failure.
"""

from __future__ import annotations

import dataclasses
import re
import time

import psycopg
import pytest

from dbbalancer.postgres.classify import (
    _PRIMARY_ONLY_FUNCS,
    _REPLICA_SAFE_VOLATILE,
    _SAFE_BUILTINS,
    _SEQUENCE_FUNCS,
    Classifier,
    _combine,
    _Ctx,
    _tokenize,
)
from dbbalancer.postgres.volatility import VOLATILITY_QUERY, build_lookup
from dbbalancer.testing.pgcluster import PgCluster

# Never called by this test, even on a standby, because they act there: promotion and replay
# control, signalling backends, configuration reload and log rotation, statistics resets,
# replication slots, backups, files written on the server (lo_export, adminpack).
_NEVER_CALL_NAMES = """
    pg_promote pg_wal_replay_pause pg_wal_replay_resume pg_terminate_backend pg_cancel_backend
    pg_reload_conf pg_rotate_logfile pg_rotate_logfile_old pg_log_backend_memory_contexts
    pg_stat_reset pg_stat_reset_shared pg_stat_reset_single_table_counters
    pg_stat_reset_single_function_counters pg_stat_reset_slru pg_stat_reset_replication_slot
    pg_stat_reset_subscription_stats pg_stat_clear_snapshot pg_stat_force_next_flush
    pg_create_physical_replication_slot pg_create_logical_replication_slot
    pg_drop_replication_slot pg_replication_slot_advance pg_copy_physical_replication_slot
    pg_copy_logical_replication_slot pg_sync_replication_slots
    pg_backup_start pg_backup_stop pg_start_backup pg_stop_backup
    lo_export pg_file_write pg_file_rename pg_file_unlink pg_logdir_ls
"""
NEVER_CALL = frozenset(_NEVER_CALL_NAMES.split())

# name -> calls written by hand (they replace the generated calls of that name): functions whose
# sample arguments would be refused for another reason (a unit, an encoding, a privilege name, an
# existing object), ordered-set aggregates, and pg_sleep with no delay.
SEQUENCE = "dbb_standby_probe_seq"
CURATED: dict[str, tuple[str, ...]] = {
    "nextval": (f"nextval('{SEQUENCE}')",),
    "setval": (f"setval('{SEQUENCE}', 5)", f"setval('{SEQUENCE}', 5, true)"),
    "currval": (f"currval('{SEQUENCE}')",),
    "lo_create": ("lo_create(0)",),
    "lo_creat": ("lo_creat(-1)",),
    "lo_import": ("lo_import('PG_VERSION')", "lo_import('PG_VERSION', 0)"),
    "lo_from_bytea": ("lo_from_bytea(0, 'x'::bytea)",),
    "pg_notify": ("pg_notify('dbb_standby_probe', 'x')",),
    "pg_create_restore_point": ("pg_create_restore_point('dbb_standby_probe')",),
    "pg_logical_emit_message": ("pg_logical_emit_message(false, 'dbb', 'x')",),
    "pg_sleep": ("pg_sleep(0)",),
    "pg_sleep_for": ("pg_sleep_for('0 seconds')",),
    "pg_sleep_until": ("pg_sleep_until(now())",),
    "percentile_cont": ("percentile_cont(0.5) WITHIN GROUP (ORDER BY 1.0::float8)",),
    "percentile_disc": ("percentile_disc(0.5) WITHIN GROUP (ORDER BY 1)",),
    "mode": ("mode() WITHIN GROUP (ORDER BY 1)",),
    "rank": ("rank() OVER ()", "rank(1) WITHIN GROUP (ORDER BY 1)"),
    "dense_rank": ("dense_rank() OVER ()", "dense_rank(1) WITHIN GROUP (ORDER BY 1)"),
    "percent_rank": ("percent_rank() OVER ()", "percent_rank(1) WITHIN GROUP (ORDER BY 1)"),
    "cume_dist": ("cume_dist() OVER ()", "cume_dist(1) WITHIN GROUP (ORDER BY 1)"),
    "acos": ("acos(0.5)",),
    "acosd": ("acosd(0.5)",),
    "asin": ("asin(0.5)",),
    "asind": ("asind(0.5)",),
    "convert": ("convert('x'::bytea, 'UTF8', 'LATIN1')",),
    "convert_from": ("convert_from('x'::bytea, 'UTF8')",),
    "convert_to": ("convert_to('x', 'UTF8')",),
    "date_part": ("date_part('year', '2020-01-02'::date)",),
    "date_trunc": ("date_trunc('day', '2020-01-02 10:00+00'::timestamptz)",),
    "extract": ("extract('year', '2020-01-02'::date)",),
    "decode": ("decode('61', 'hex')",),
    "encode": ("encode('x'::bytea, 'hex')",),
    "get_byte": ("get_byte('x'::bytea, 0)",),
    "is_normalized": ("is_normalized('a', 'NFC')",),
    "normalize": ("normalize('a', 'NFC')",),
    "timezone": ("timezone('UTC', '2020-01-02 10:00+00'::timestamptz)",),
    "to_ascii": ("to_ascii('a', 'LATIN1')",),
    "to_date": ("to_date('2020-01-02', 'YYYY-MM-DD')",),
    "to_timestamp": ("to_timestamp('2020-01-02', 'YYYY-MM-DD')", "to_timestamp(0)"),
    "to_number": ("to_number('12', '99')",),
    "to_regoperator": ("to_regoperator('+(integer,integer)')",),
    "to_regprocedure": ("to_regprocedure('now()')",),
    "pg_size_bytes": ("pg_size_bytes('1 kB')",),
    "pg_collation_for": ("pg_collation_for('a'::text)",),
    "pg_get_serial_sequence": ("pg_get_serial_sequence('pg_class', 'oid')",),
    "pg_get_object_address": ("pg_get_object_address('table', '{pg_class}', '{}')",),
    "pg_tablespace_location": ("pg_tablespace_location(1663)",),
    "pg_has_role": ("pg_has_role('pg_monitor', 'member')",),
    "has_table_privilege": ("has_table_privilege('pg_class', 'select')",),
    "has_any_column_privilege": ("has_any_column_privilege('pg_class', 'select')",),
    "has_column_privilege": ("has_column_privilege('pg_class', 'oid', 'select')",),
    "has_schema_privilege": ("has_schema_privilege('pg_catalog', 'usage')",),
    "has_database_privilege": ("has_database_privilege(current_database(), 'connect')",),
    "has_function_privilege": ("has_function_privilege('now()', 'execute')",),
    "has_sequence_privilege": (f"has_sequence_privilege('{SEQUENCE}', 'usage')",),
    "has_language_privilege": ("has_language_privilege('sql', 'usage')",),
    "has_tablespace_privilege": ("has_tablespace_privilege('pg_default', 'create')",),
    "has_type_privilege": ("has_type_privilege('integer', 'usage')",),
    "json_array_elements": ("json_array_elements('[1]')",),
    "json_array_elements_text": ("json_array_elements_text('[1]')",),
    "json_array_length": ("json_array_length('[1]')",),
    "jsonb_array_elements": ("jsonb_array_elements('[1]')",),
    "jsonb_array_elements_text": ("jsonb_array_elements_text('[1]')",),
    "jsonb_array_length": ("jsonb_array_length('[1]')",),
    "jsonb_insert": ("jsonb_insert('[1]', '{0}', '2')",),
    "json_populate_record": ("json_populate_record(NULL::pg_namespace, '{}')",),
    "json_populate_recordset": ("json_populate_recordset(NULL::pg_namespace, '[]')",),
    "jsonb_populate_record": ("jsonb_populate_record(NULL::pg_namespace, '{}')",),
    "jsonb_populate_recordset": ("jsonb_populate_recordset(NULL::pg_namespace, '[]')",),
    "json_to_record": ("* FROM json_to_record('{\"a\": 1}') AS r(a int)",),
    "json_to_recordset": ("* FROM json_to_recordset('[{\"a\": 1}]') AS r(a int)",),
    "jsonb_to_record": ("* FROM jsonb_to_record('{\"a\": 1}') AS r(a int)",),
    "jsonb_to_recordset": ("* FROM jsonb_to_recordset('[{\"a\": 1}]') AS r(a int)",),
}

# Names on the classifier's lists that no call here can settle: they need server settings the
# test cluster does not have (track_commit_timestamp).
INCONCLUSIVE = frozenset({"pg_last_committed_xact"})

# Sample values by format_type() of the argument type.
SAMPLES: dict[str, str] = {
    "smallint": "1::smallint",
    "integer": "1",
    "bigint": "1::bigint",
    "real": "1.5::real",
    "double precision": "1.5::float8",
    "numeric": "1.5::numeric",
    "money": "1::money",
    "text": "'a'::text",
    "character varying": "'a'::varchar",
    "character": "'a'::bpchar",
    "name": "'a'::name",
    '"char"': "'a'::\"char\"",
    "boolean": "true",
    "bytea": "'x'::bytea",
    "bit": "'1'::bit",
    "bit varying": "'1'::varbit",
    "oid": "1259::oid",
    "regclass": "'pg_class'::regclass",
    "regtype": "'integer'::regtype",
    "regproc": "'now'::regproc",
    "regprocedure": "'now()'::regprocedure",
    "regoper": "'!~~'::regoper",
    "regoperator": "'+(integer,integer)'::regoperator",
    "regnamespace": "'pg_catalog'::regnamespace",
    "regrole": "'pg_monitor'::regrole",
    "regconfig": "'simple'::regconfig",
    "regdictionary": "'simple'::regdictionary",
    "regcollation": "'\"C\"'::regcollation",
    "date": "'2020-01-02'::date",
    "time without time zone": "'10:00'::time",
    "time with time zone": "'10:00+00'::timetz",
    "timestamp without time zone": "'2020-01-02 10:00'::timestamp",
    "timestamp with time zone": "'2020-01-02 10:00+00'::timestamptz",
    "interval": "'1 day'::interval",
    "json": "'{\"a\": [1]}'::json",
    "jsonb": "'{\"a\": [1]}'::jsonb",
    "jsonpath": "'$.a'::jsonpath",
    "xml": "'<a/>'::xml",
    "uuid": "'00000000-0000-0000-0000-000000000001'::uuid",
    "inet": "'10.0.0.1/8'::inet",
    "cidr": "'10.0.0.0/8'::cidr",
    "macaddr": "'08:00:2b:01:02:03'::macaddr",
    "macaddr8": "'08:00:2b:01:02:03:04:05'::macaddr8",
    "point": "'(1,1)'::point",
    "lseg": "'[(0,0),(1,1)]'::lseg",
    "line": "'{1,-1,0}'::line",
    "box": "'(1,1),(0,0)'::box",
    "path": "'[(0,0),(1,1)]'::path",
    "polygon": "'((0,0),(1,1),(1,0))'::polygon",
    "circle": "'<(0,0),1>'::circle",
    "tsvector": "'a'::tsvector",
    "tsquery": "'a'::tsquery",
    "pg_lsn": "'0/0'::pg_lsn",
    "xid": "'1'::xid",
    "xid8": "'1'::xid8",
    "cid": "'1'::cid",
    "tid": "'(0,1)'::tid",
    "pg_snapshot": "pg_current_snapshot()",
    "txid_snapshot": "txid_current_snapshot()",
    "int4range": "'[1,2)'::int4range",
    "int8range": "'[1,2)'::int8range",
    "numrange": "'[1,2)'::numrange",
    "daterange": "'[2020-01-01,2020-01-02)'::daterange",
    "tsrange": "'[2020-01-01,2020-01-02)'::tsrange",
    "tstzrange": "'[2020-01-01,2020-01-02)'::tstzrange",
    "int4multirange": "'{[1,2)}'::int4multirange",
    "integer[]": "'{1}'::integer[]",
    "bigint[]": "'{1}'::bigint[]",
    "text[]": "'{a}'::text[]",
    "name[]": "'{a}'::name[]",
    "double precision[]": "'{1}'::float8[]",
    "numeric[]": "'{1}'::numeric[]",
    "oid[]": "'{1259}'::oid[]",
    "regtype[]": "'{integer}'::regtype[]",
    "jsonb[]": "'{}'::jsonb[]",
    # Polymorphic arguments all resolve to integer (and its array, range and multirange).
    "anyelement": "1",
    "anynonarray": "1",
    "anycompatible": "1",
    "anycompatiblenonarray": "1",
    '"any"': "1",
    "anyarray": "'{1}'::integer[]",
    "anycompatiblearray": "'{1}'::integer[]",
    "anyrange": "'[1,2)'::int4range",
    "anycompatiblerange": "'[1,2)'::int4range",
    "anymultirange": "'{[1,2)}'::int4multirange",
    "anycompatiblemultirange": "'{[1,2)}'::int4multirange",
}

# Result types a callable function never has.
NOT_CALLABLE_RESULTS = frozenset(
    {
        "internal",
        "trigger",
        "event_trigger",
        "language_handler",
        "fdw_handler",
        "index_am_handler",
        "table_am_handler",
        "tsm_handler",
    }
)

CANDIDATES_QUERY = """
SELECT p.proname, p.prokind, p.provolatile, p.pronargs, p.pronargdefaults,
       format_type(p.prorettype, NULL),
       coalesce((SELECT array_agg(format_type(a.t, NULL) ORDER BY a.i)
                 FROM unnest(p.proargtypes) WITH ORDINALITY AS a(t, i)), '{}'),
       p.provariadic <> 0
FROM pg_catalog.pg_proc p
WHERE p.pronamespace = 'pg_catalog'::regnamespace
  AND p.prokind IN ('f', 'a', 'w')
  AND (p.provolatile <> 'v' OR p.proname = ANY (%s))
ORDER BY 1, 4
"""

TIMEOUT = "2s"
_SIMPLE_NAME = re.compile(r"[a-z_][a-z0-9_]*")


@dataclasses.dataclass(frozen=True)
class Outcome:
    name: str
    call: str  # the call expression, unqualified
    sqlstate: str | None  # None: the standby accepted the call
    message: str = ""
    explain: bool = False  # the statement was EXPLAIN SELECT call

    def statements(self) -> list[str]:
        """The statement as run (pg_catalog-qualified) and with the bare name."""
        prefix = "EXPLAIN SELECT " if self.explain else "SELECT "
        return list(dict.fromkeys((prefix + qualified(self.name, self.call), prefix + self.call)))

    @property
    def accepted(self) -> bool:
        return self.sqlstate is None

    @property
    def refused(self) -> bool:
        """Refused because the server is a standby (or its transactions are read-only)."""
        if self.sqlstate is None:
            return False
        text = self.message.lower()
        return (
            self.sqlstate == "25006"
            or "during recovery" in text
            or "recovery is in progress" in text
        )


def generated_calls(
    name: str,
    kind: str,
    nargs: int,
    ndefaults: int,
    result: str,
    argtypes: list[str],
    variadic: bool,
) -> list[str]:
    """Calls of one pg_proc row with sample arguments ([] if it cannot be called sensibly)."""
    if result in NOT_CALLABLE_RESULTS:
        return []
    samples: list[str] = []
    for index, argtype in enumerate(argtypes):
        sample = SAMPLES.get(argtype)
        if sample is None:
            if index >= nargs - ndefaults:
                break  # the rest have defaults
            return []
        if variadic and index == nargs - 1 and argtype != '"any"':
            sample = "VARIADIC " + sample
        samples.append(sample)
    call = f"{name}({', '.join(samples)})"
    return [call + " OVER ()" if kind == "w" else call]


def qualified(name: str, call: str) -> str:
    """``call`` with its first call of ``name`` written ``pg_catalog.name``."""
    return re.sub(rf"(?<![\w.]){re.escape(name)}\(", f"pg_catalog.{name}(", call, count=1)


def probe(dsn: str) -> tuple[list[Outcome], dict[str, str]]:
    """Call the candidates on the standby at ``dsn``; also return its volatility table."""
    special = sorted(
        _SAFE_BUILTINS
        | _REPLICA_SAFE_VOLATILE
        | _PRIMARY_ONLY_FUNCS
        | _SEQUENCE_FUNCS
        | {"pg_notify"}
        | CURATED.keys()
    )
    outcomes: list[Outcome] = []
    with psycopg.connect(dsn, autocommit=True, connect_timeout=10) as conn:
        assert conn.execute("SELECT pg_is_in_recovery()").fetchone() == (True,)
        conn.execute(f"SET statement_timeout = '{TIMEOUT}'")
        conn.execute("SET lock_timeout = '1s'")
        rows = conn.execute(CANDIDATES_QUERY, (special,)).fetchall()
        volatility_rows = conn.execute(VOLATILITY_QUERY).fetchall()
        calls: dict[str, str] = {}  # call -> name
        for name, kind, _volatility, nargs, ndefaults, result, argtypes, variadic in rows:
            if name in NEVER_CALL or name in CURATED or not _SIMPLE_NAME.fullmatch(name):
                continue
            for call in generated_calls(name, kind, nargs, ndefaults, result, argtypes, variadic):
                calls.setdefault(call, name)
        known = {row[0] for row in rows}
        for name, curated in CURATED.items():
            if name in known:
                for call in curated:
                    calls.setdefault(call, name)
        for call, name in calls.items():
            outcomes.append(run(conn, Outcome(name, call, None)))
        # EXPLAIN runs nothing, but the planner folds immutable calls with constant arguments.
        for outcome in [o for o in outcomes if o.refused]:
            outcomes.append(run(conn, Outcome(outcome.name, outcome.call, None, explain=True)))
    table = build_lookup([(str(s).lower(), str(n).lower(), str(v)) for s, n, v in volatility_rows])
    return outcomes, table


def run(conn: psycopg.Connection[tuple[object, ...]], outcome: Outcome) -> Outcome:
    """Run ``outcome``'s statement; return it with the server's answer."""
    try:
        conn.execute(outcome.statements()[0]).fetchall()
    except psycopg.Error as exc:
        message = exc.diag.message_primary or str(exc)
        return dataclasses.replace(outcome, sqlstate=exc.diag.sqlstate or "?", message=message)
    return outcome


def read_only_views(classifier: Classifier, sql: str) -> dict[str, bool]:
    """read_only as the classifier, its token fast path and its parse-tree authority see it."""
    views = {"classify": classifier.classify(sql).read_only}
    toks, _lead, error, _bs = _tokenize(sql)
    fast = classifier._fast(toks) if toks and not error else None
    if fast is not None:
        views["fast path"] = _combine(fast).read_only
    views["parse tree"] = _combine(classifier._authority(sql, toks, error, _Ctx())).read_only
    return views


def replica_views(outcome: Outcome, classifiers: dict[str, Classifier]) -> list[str]:
    """The views of the statement (bare and pg_catalog-qualified) that say read_only."""
    found = []
    for label, classifier in classifiers.items():
        for sql in outcome.statements():
            for view, read_only in read_only_views(classifier, sql).items():
                if read_only:
                    found.append(f"{sql} ({label}, {view})")
    return found


Probed = tuple[list[Outcome], dict[str, Classifier]]


@pytest.fixture(scope="module")
def probed(pg_cluster: PgCluster) -> Probed:
    """The outcomes on a standby, and classifiers without and with that server's pg_proc."""
    pg_cluster.sql(pg_cluster.primary, f"CREATE SEQUENCE IF NOT EXISTS {SEQUENCE}")
    replica = pg_cluster.replicas[0]
    deadline = time.monotonic() + 30
    query = f"SELECT to_regclass('{SEQUENCE}') IS NOT NULL"
    while pg_cluster.sql(replica, query) != [("t",)]:
        assert time.monotonic() < deadline, "the sequence never reached the standby"
        time.sleep(0.05)
    # As the superuser, so that privilege checks hide no recovery error.
    dsn = pg_cluster.dsn(replica, user=pg_cluster.superuser, password=pg_cluster.superuser_password)
    outcomes, table = probe(dsn)
    classifiers = {
        "no lookup": Classifier(cache_size=0),
        "pg_proc lookup": Classifier(cache_size=0, volatility=table.get),
    }
    return outcomes, classifiers


def _report(outcomes: list[Outcome]) -> str:
    return "\n".join(f"  {o.statements()[0]}: {o.sqlstate} {o.message}" for o in outcomes)


def test_what_the_standby_refuses_goes_to_the_primary(probed: Probed) -> None:
    outcomes, classifiers = probed
    refused = [o for o in outcomes if o.refused]
    # The probe reaches the functions of issue #13 and a standby still refuses them.
    names = {o.name for o in refused}
    assert {"txid_current", "pg_current_xact_id", "lo_create", "pg_current_wal_lsn"} <= names
    wrong = [view for o in refused for view in replica_views(o, classifiers)]
    assert not wrong, "refused by the standby but classified read_only:\n" + "\n".join(
        f"  {view}" for view in wrong
    )


def test_every_primary_only_function_is_refused_by_the_standby(probed: Probed) -> None:
    """The primary-only list holds nothing a standby accepts (where the probe could tell)."""
    outcomes = [o for o in probed[0] if not o.explain]
    accepted = [o for o in outcomes if o.name in _PRIMARY_ONLY_FUNCS and o.accepted]
    assert not accepted, "primary-only but accepted by the standby:\n" + _report(accepted)
    settled = {o.name for o in outcomes if o.name in _PRIMARY_ONLY_FUNCS and o.refused}
    tried = {o.name for o in outcomes if o.name in _PRIMARY_ONLY_FUNCS}
    unsettled = [o for o in outcomes if o.name in tried - settled]
    assert not unsettled, "primary-only functions no call settled:\n" + _report(unsettled)


def test_every_listed_function_was_probed(probed: Probed) -> None:
    """Each allow-listed built-in that exists got at least one conclusive call."""
    outcomes = [o for o in probed[0] if not o.explain]
    conclusive = {o.name for o in outcomes if o.accepted or o.refused}
    tried = {o.name for o in outcomes}
    listed = _SAFE_BUILTINS | _REPLICA_SAFE_VOLATILE | _PRIMARY_ONLY_FUNCS
    unsettled = [o for o in outcomes if o.name in (listed & tried) - conclusive - INCONCLUSIVE]
    assert not unsettled, "no conclusive call (add one to CURATED):\n" + _report(unsettled)
