"""Micro benchmark of the MySQL/MariaDB statement classifier (``dbbalancer.mysql.classify``).

``python -m bench.mysql_classify_bench [--rounds N] [--number N]`` prints, in microseconds per
statement: ``cold`` (no cache: tokenize + analysis), ``cached exact`` (the same text again),
``cached new literal`` (the same template with literals never seen: tokenize + fingerprint
lookup) and ``tokenize`` alone.  Best of ``--rounds`` runs of ``--number`` calls; the timing
helpers are those of ``bench._classify_common``.
"""

from __future__ import annotations

import argparse

from bench._classify_common import Case, best_us, time_cache
from dbbalancer.mysql.classify import Classifier, _tokenize

CASES = (
    Case("sysbench point select", "SELECT c FROM sbtest1 WHERE id={}"),
    Case("sysbench range", "SELECT c FROM sbtest1 WHERE id BETWEEN {} AND {} ORDER BY c"),
    Case("sysbench update", "UPDATE sbtest1 SET k=k+1 WHERE id={}"),
    Case("sysbench insert", "INSERT INTO sbtest1 (id, k, c, pad) VALUES ({}, {}, 'c', 'pad')"),
    Case("BEGIN", "BEGIN"),
    Case(
        "ORM SELECT (backticks)",
        "SELECT `app_user`.`id`, `app_user`.`name` FROM `app_user` "
        "WHERE `app_user`.`id` = {} AND `app_user`.`active` LIMIT 21",
    ),
    Case("SELECT ... FOR UPDATE", "SELECT * FROM jobs WHERE id = {} FOR UPDATE SKIP LOCKED"),
    Case("SET (exact-cached)", "SET SESSION wait_timeout = {}"),
    Case("versioned comment", "SELECT /*!40001 SQL_NO_CACHE */ * FROM t WHERE id = {}"),
)


def run(number: int, rounds: int) -> list[tuple[str, ...]]:
    rows: list[tuple[str, ...]] = []
    for case in CASES:
        timed = time_cache(Classifier, case, number, rounds)
        tokenize = best_us(lambda s=timed.sql: _tokenize(s), number, rounds)  # type: ignore[misc]
        verdict = timed.verdict
        rows.append(
            (
                case.name,
                f"{verdict.kind.value}/{verdict.reason.value}",
                f"{timed.cold:.2f}",
                f"{timed.exact:.2f}",
                f"{timed.new_literal:.2f}",
                f"{tokenize:.2f}",
            )
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--number", type=int, default=2000)
    args = parser.parse_args()
    header = ("statement", "classification", "cold", "cached exact", "new literal", "tokenize")
    rows = [header, *run(args.number, args.rounds)]
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)))


if __name__ == "__main__":
    main()
