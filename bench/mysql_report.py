"""Summaries and the markdown section of the MySQL part of the macro benchmark.

The MySQL section sits at the end of ``docs/benchmarks.md`` between two HTML comments, so a run
of one part keeps the other part's results: :func:`splice` puts a freshly rendered PostgreSQL
report or MySQL section into the existing document. Everything here is pure.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from bench.sysbench import SysbenchResult, SysbenchWorkload

__all__ = [
    "BASELINE",
    "BEGIN",
    "END",
    "NOT_YET",
    "MysqlCase",
    "MysqlMeta",
    "MysqlRecord",
    "MysqlSummary",
    "MysqlTargetInfo",
    "render_mysql_section",
    "splice",
    "summarize_mysql",
]

BEGIN = "<!-- bench.run: MySQL section begin -->"
END = "<!-- bench.run: MySQL section end -->"
BASELINE = "mysql-direct"
NOT_YET = "not available yet (issue #12)"


@dataclass(frozen=True)
class MysqlCase:
    """A sysbench workload at a thread count (one connection per thread): one table."""

    workload: SysbenchWorkload
    threads: int

    @property
    def label(self) -> str:
        """``<workload> c<threads>``, named like the PostgreSQL cases (clients = threads)."""
        return f"{self.workload.name} c{self.threads}"


@dataclass(frozen=True)
class MysqlRecord:
    """One sysbench run of one target for one case in one round."""

    target: str
    case: MysqlCase
    round: int
    result: SysbenchResult


@dataclass
class MysqlSummary:
    """One target on one case over all rounds: medians, and errors summed."""

    target: str
    case: MysqlCase
    runs: int = 0
    ok_runs: int = 0
    tps: float | None = None
    qps: float | None = None
    ratio_direct: float | None = None
    p95_ms: float | None = None
    errors: int = 0
    cpu_us_per_tx: float | None = None
    error: str | None = None


@dataclass
class MysqlTargetInfo:
    """A target's start outcome and its peak RSS; ``unavailable`` for a feature not built yet."""

    name: str
    start_error: str | None = None
    unavailable: bool = False
    peak_rss_kb: int | None = None


@dataclass
class MysqlMeta:
    """How, where and with what the MySQL part ran."""

    command: str
    scope: str
    started: str
    wall_seconds: float
    machine: dict[str, str]
    versions: dict[str, str]
    settings: dict[str, str]
    sysbench_commands: list[str]
    chart_name: str | None = None
    notes: list[str] = field(default_factory=list)


def _median(values: Iterable[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def summarize_mysql(
    records: Sequence[MysqlRecord], targets: Sequence[str], cases: Sequence[MysqlCase]
) -> dict[tuple[str, str], MysqlSummary]:
    """Median TPS, QPS, p95 and CPU per transaction per (case label, target); errors summed.

    ``errors`` counts sysbench's ignored errors and reconnects over all rounds, plus one per
    run that did not complete.
    """
    out: dict[tuple[str, str], MysqlSummary] = {}
    for case in cases:
        for target in targets:
            runs = [r.result for r in records if r.target == target and r.case == case]
            ok = [r for r in runs if r.ok]
            summary = MysqlSummary(target, case, runs=len(runs), ok_runs=len(ok))
            summary.tps = _median(r.tps for r in ok)
            summary.qps = _median(r.qps for r in ok)
            summary.p95_ms = _median(r.p95_ms for r in ok)
            summary.cpu_us_per_tx = _median(r.cpu_us_per_tx for r in ok)
            summary.errors = sum(r.errors for r in runs) + (len(runs) - len(ok))
            failures = [r.error for r in runs if r.error]
            summary.error = failures[0] if failures else None
            out[(case.label, target)] = summary
        base = out.get((case.label, BASELINE))
        for target in targets:
            summary = out[(case.label, target)]
            if summary.tps is not None and base is not None and base.tps:
                summary.ratio_direct = summary.tps / base.tps
    return out


def _num(value: float | None, fmt: str) -> str:
    return "n/a" if value is None else format(value, fmt)


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _mb(kb: int | None) -> str:
    return "n/a" if kb is None else f"{kb / 1024:.1f}"


def render_mysql_section(
    meta: MysqlMeta,
    cases: Sequence[MysqlCase],
    targets: Sequence[str],
    summaries: Mapping[tuple[str, str], MysqlSummary],
    infos: Mapping[str, MysqlTargetInfo],
) -> str:
    """The MySQL section of ``docs/benchmarks.md``, between :data:`BEGIN` and :data:`END`."""
    out = [
        BEGIN,
        "## MySQL",
        "",
        "sysbench through each target in turn, interleaved per round, against a local MariaDB",
        "primary with two GTID replicas (`dbbalancer.testing.mariadbcluster`). Generated by",
        "`bench/run.py`; do not edit by hand. A run of only the PostgreSQL part keeps this",
        "section as it is.",
        "",
        f"- Run: {meta.scope}",
        f"- Started: {meta.started}, wall time {meta.wall_seconds / 60:.1f} min",
        "- Command:",
        "",
        "```",
        meta.command,
        "```",
        "",
        "### MySQL machine, versions and settings",
        "",
    ]
    out += [f"- {key}: {value}" for key, value in meta.machine.items()]
    out += [f"- {key}: {value}" for key, value in meta.versions.items()]
    out += [f"- {key}: {value}" for key, value in meta.settings.items()]
    out += [
        "",
        "sysbench command lines, the same for every target (PORT is the target's port):",
        "",
        "```",
        *meta.sysbench_commands,
        "```",
        "",
        "### What HAProxy can and cannot split",
        "",
        "HAProxy forwards TCP (`mode tcp`) and never reads the MySQL protocol. The classic setup",
        "is one listener per role: a write port to the primary and a read port balanced over the",
        "replicas. The application chooses the port for each connection, so HAProxy cannot",
        "send one statement to a replica and the next to the primary, keep a transaction on one",
        "server, or make a read see the client's own write (the replicas replicate",
        "asynchronously); it balances connections, not statements, and holds one server",
        "connection per client. `mysql-haproxy` uses the write port: the path comparable to",
        "direct and to dbbalancer without splitting. `mysql-haproxy-replicas` (not run by",
        "default) uses the read port.",
        "",
    ]
    if meta.chart_name is not None:
        out += [
            f"![MySQL bench chart: TPS ratio to {BASELINE} and proxy CPU per transaction]"
            f"({meta.chart_name})",
            "",
        ]
    out += [
        "### MySQL target status",
        "",
        "| target | status | peak RSS MB |",
        "| --- | --- | ---: |",
    ]
    for target in targets:
        info = infos.get(target) or MysqlTargetInfo(target)
        status = "ran"
        if info.start_error is not None:
            prefix = "" if info.unavailable else "failed: "
            status = prefix + info.start_error
        shown = "n/a" if target == BASELINE else _mb(info.peak_rss_kb)
        out.append(f"| {target} | {_cell(status)} | {shown} |")
    out += [
        "",
        "### MySQL results",
        "",
        "TPS and QPS are medians over rounds, `vs direct` the ratio of medians. p95 is",
        "sysbench's own 95th percentile (read off its logarithmic latency histogram, so",
        "approximate), median over rounds. `errors` sums sysbench's ignored errors and",
        "reconnects over all rounds, plus one per run that did not complete. CPU is the proxy",
        "process tree's user+system time during the run divided by the transactions it served.",
        "",
    ]
    for case in cases:
        out += [
            f"#### {case.label}",
            "",
            "| target | TPS | QPS | vs direct | p95 ms | errors | proxy CPU us/tx | runs ok "
            "| note |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
        ]
        for target in targets:
            info = infos.get(target) or MysqlTargetInfo(target)
            s = summaries.get((case.label, target))
            if info.start_error is not None:
                note = NOT_YET if info.unavailable else "failed to start"
                out.append(
                    f"| {target} | n/a | n/a | n/a | n/a | n/a | n/a | 0/0 | {_cell(note)} |"
                )
                continue
            if s is None:
                continue
            ratio = "n/a" if s.ratio_direct is None else f"{s.ratio_direct:.2f}x"
            note = f"failed: {s.error}" if s.error else ""
            out.append(
                f"| {target} | {_num(s.tps, '.0f')} | {_num(s.qps, '.0f')} | {ratio} | "
                f"{_num(s.p95_ms, '.2f')} | {s.errors} | {_num(s.cpu_us_per_tx, '.0f')} | "
                f"{s.ok_runs}/{s.runs} | {_cell(note)} |"
            )
        out.append("")
    if meta.notes:
        out += ["### MySQL notes", ""]
        out += [f"- {note}" for note in meta.notes]
        out.append("")
    out.append(END)
    return "\n".join(out) + "\n"


def splice(existing: str | None, postgres: str | None, mysql: str | None) -> str:
    """The new document: each part freshly rendered, or else kept from ``existing``.

    The PostgreSQL report is everything outside the MySQL markers; the MySQL section is the
    marked block, always placed at the end.
    """
    old_pg, old_mysql = _split(existing or "")
    pg = postgres if postgres is not None else (old_pg or "# Benchmarks\n")
    section = mysql if mysql is not None else old_mysql
    pg = pg.rstrip("\n") + "\n"
    if not section:
        return pg
    return pg + "\n" + section.rstrip("\n") + "\n"


def _split(text: str) -> tuple[str, str]:
    begin = text.find(BEGIN)
    end = text.find(END, begin + 1) if begin >= 0 else -1
    if begin < 0 or end < 0:
        return text, ""
    end += len(END)
    outside = text[:begin].rstrip("\n") + "\n" + text[end:].lstrip("\n")
    return outside.rstrip("\n") + "\n", text[begin:end] + "\n"
