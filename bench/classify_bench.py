"""Micro benchmark of the PostgreSQL statement classifier (``dbbalancer.postgres.classify``).

``python -m bench.classify_bench [--rounds N] [--number N]`` prints, in microseconds per
statement, for a set of representative statements:

* ``cold``: a cache miss (fingerprint + tokenizer fast path, or pglast for the rest);
* ``cached exact``: the same text again;
* ``cached new literal``: the same template with literals never seen before (``pgbench -M
  simple``): fingerprint + one dict lookup;
* reference costs of the parts: our tokenizer, our fingerprint, ``pglast.parser.parse_sql_json``
  (the authority's parser) and ``pglast.parse_sql`` (pglast's Python AST, which we do not use).

Every figure is the best of ``--rounds`` runs of ``--number`` calls, to cut noise from other
processes; the load average and the cost of an empty Python call are printed too, because the
absolute numbers only mean something next to them.  Targets: cached < 2 us, uncached pgbench
statements < 20 us.
"""

from __future__ import annotations

import argparse
import os
import platform
from dataclasses import dataclass

import pglast
from pglast.parser import parse_sql_json

from bench._classify_common import Case as _Case
from bench._classify_common import best_us, time_cache
from dbbalancer.postgres.classify import Classifier, _fingerprint, _tokenize


@dataclass(frozen=True)
class Case(_Case):
    """A statement template; ``pgbench`` ones are held to the uncached target as well."""

    pgbench: bool = False


CASES = (
    Case("pgbench SELECT", "SELECT abalance FROM pgbench_accounts WHERE aid = {};", True),
    Case(
        "pgbench UPDATE accounts",
        "UPDATE pgbench_accounts SET abalance = abalance + {} WHERE aid = {};",
        True,
    ),
    Case(
        "pgbench UPDATE tellers",
        "UPDATE pgbench_tellers SET tbalance = tbalance + {} WHERE tid = {};",
        True,
    ),
    Case(
        "pgbench INSERT history",
        "INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) "
        "VALUES ({}, {}, {}, {}, CURRENT_TIMESTAMP);",
        True,
    ),
    Case("BEGIN", "BEGIN;"),
    Case(
        "ORM SELECT (quoted idents)",
        'SELECT "app_user"."id", "app_user"."name" FROM "app_user" '
        'WHERE "app_user"."id" = {} AND "app_user"."active" LIMIT 21',
    ),
    Case(
        "SELECT + trace comment",
        "/* traceparent='00-{}-01' */ SELECT id, lower(name) FROM users WHERE id = {}",
    ),
    Case("SELECT ... FOR UPDATE", "SELECT * FROM jobs WHERE id = {} FOR UPDATE SKIP LOCKED"),
    Case(
        "analytic (pglast)",
        "SELECT a, count(*) FILTER (WHERE b > {}), sum(c) OVER (PARTITION BY a) "
        "FROM t GROUP BY ROLLUP (a)",
    ),
    Case("SET (pglast, exact-cached)", "SET statement_timeout = {}"),
)


def run(number: int, rounds: int) -> list[tuple[str, ...]]:
    rows: list[tuple[str, ...]] = []
    for case in CASES:
        timed = time_cache(Classifier, case, number, rounds)
        sql, cold, exact, new_literal = timed.sql, timed.cold, timed.exact, timed.new_literal
        tokenize = best_us(lambda s=sql: _tokenize(s), number, rounds)  # type: ignore[misc]
        fingerprint = best_us(lambda s=sql: _fingerprint(s), number, rounds)  # type: ignore[misc]
        pg_json = best_us(lambda s=sql: parse_sql_json(s), number, rounds)  # type: ignore[misc]
        pg_ast = best_us(lambda s=sql: pglast.parse_sql(s), max(1, number // 10), rounds)  # type: ignore[misc]
        verdict = timed.verdict
        ok = exact < 2 and (not case.pgbench or (cold < 20 and new_literal < 2))
        rows.append(
            (
                case.name,
                f"{verdict.kind.value}/{verdict.reason.value}",
                f"{cold:.2f}",
                f"{exact:.2f}",
                f"{new_literal:.2f}",
                f"{tokenize:.2f}",
                f"{fingerprint:.2f}",
                f"{pg_json:.2f}",
                f"{pg_ast:.2f}",
                "yes" if ok else "NO",
            )
        )
    return rows


def print_table(rows: list[tuple[str, ...]]) -> None:
    header = (
        "statement",
        "classification",
        "cold",
        "cached exact",
        "cached new literal",
        "tokenize",
        "fingerprint",
        "pglast json",
        "pglast AST",
        "targets met",
    )
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    line = "  ".join("-" * w for w in widths)
    print("  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)))
    print(line)
    for row in rows:
        cells = [
            c.ljust(w) if i < 2 else c.rjust(w)
            for i, (c, w) in enumerate(zip(row, widths, strict=True))
        ]
        print("  ".join(cells))


def main() -> None:
    """Entry point: ``python -m bench.classify_bench``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--number", type=int, default=2000, help="calls per round")
    parser.add_argument("--rounds", type=int, default=7, help="rounds; the best one counts")
    args = parser.parse_args()
    noop = best_us(lambda: None, args.number * 10, args.rounds)
    load = os.getloadavg()
    print(
        f"python {platform.python_version()} on {platform.machine()}, {os.cpu_count()} cpus, "
        f"load average {load[0]:.2f}, empty call {noop * 1000:.0f} ns; "
        f"pglast {pglast.__version__}"
    )
    print("microseconds per statement (best of rounds)\n")
    print_table(run(args.number, args.rounds))


if __name__ == "__main__":
    main()
