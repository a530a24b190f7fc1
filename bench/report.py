"""Summaries, goal checks, the markdown report and the PNG chart of the macro benchmark.

Everything here is pure except :func:`render_chart`, which writes a PNG with matplotlib's Agg
backend (no display needed). Medians over rounds damp the noise of interleaved runs on a small
shared machine; ratios are taken between medians.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from bench.measure import IdleResult, PgbenchResult, Workload

__all__ = [
    "Case",
    "ChartBar",
    "ChartCase",
    "Goal",
    "ReportMeta",
    "RunRecord",
    "Summary",
    "TargetInfo",
    "evaluate_goals",
    "render_chart",
    "render_markdown",
    "summarize",
]

IDLE_GOAL_CLIENTS = 5000
IDLE_GOAL_MB = 100.0
HEADLINE = "dbbalancer-transaction-rw"


@dataclass(frozen=True)
class Case:
    """A workload at a client count: one table of the report."""

    workload: Workload
    clients: int

    @property
    def label(self) -> str:
        """``<workload> c<clients>``, the key used in tables, the chart and goals."""
        return f"{self.workload.name} c{self.clients}"


@dataclass(frozen=True)
class RunRecord:
    """One pgbench run of one target for one case in one round."""

    target: str
    case: Case
    round: int
    result: PgbenchResult


@dataclass
class Summary:
    """One target on one case, over all rounds."""

    target: str
    case: Case
    runs: int = 0
    ok_runs: int = 0
    tps: float | None = None
    ratio_direct: float | None = None
    ratio_pgbouncer: float | None = None
    p50_ms: float | None = None
    p99_ms: float | None = None
    connect_ms: float | None = None
    failed: int = 0
    aborted_clients: int = 0
    cpu_us_per_tx: float | None = None
    error: str | None = None


@dataclass
class TargetInfo:
    """A target's start outcome, its peak RSS and its idle-client measurement."""

    name: str
    start_error: str | None = None
    peak_rss_kb: int | None = None
    idle: IdleResult | None = None
    idle_note: str | None = None


@dataclass(frozen=True)
class Goal:
    """One of the issue's targets: ``passed`` is ``None`` when it could not be measured."""

    name: str
    passed: bool | None
    detail: str


@dataclass
class ReportMeta:
    """How, where and with what the benchmark ran."""

    command: str
    scope: str
    machine: dict[str, str]
    versions: dict[str, str]
    pgbench_commands: list[str]
    settings: dict[str, str]
    started: str
    wall_seconds: float
    micro_benchmark: str | None = None
    notes: list[str] = field(default_factory=list)


def _median(values: Iterable[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def summarize(
    records: Sequence[RunRecord], targets: Sequence[str], cases: Sequence[Case]
) -> dict[tuple[str, str], Summary]:
    """Median TPS, latency percentiles and CPU per transaction per (case label, target)."""
    out: dict[tuple[str, str], Summary] = {}
    for case in cases:
        for target in targets:
            runs = [r.result for r in records if r.target == target and r.case == case]
            ok = [r for r in runs if r.ok]
            summary = Summary(target, case, runs=len(runs), ok_runs=len(ok))
            summary.tps = _median(r.tps for r in ok)
            summary.p50_ms = _median(r.p50_ms for r in ok)
            summary.p99_ms = _median(r.p99_ms for r in ok)
            summary.connect_ms = _median(r.connect_ms for r in ok)
            summary.cpu_us_per_tx = _median(r.cpu_us_per_tx for r in ok)
            summary.failed = sum(r.failed for r in runs)
            summary.aborted_clients = sum(r.aborted_clients for r in runs)
            errors = [r.error for r in runs if r.error]
            summary.error = errors[0] if errors else None
            out[(case.label, target)] = summary
        for target in targets:
            summary = out[(case.label, target)]
            summary.ratio_direct = _ratio(summary.tps, out.get((case.label, "direct")))
            summary.ratio_pgbouncer = _ratio(summary.tps, out.get((case.label, "pgbouncer")))
    return out


def _ratio(tps: float | None, base: Summary | None) -> float | None:
    if tps is None or base is None or not base.tps:
        return None
    return tps / base.tps


# --------------------------------------------------------------------------------- goals


def evaluate_goals(
    summaries: Mapping[tuple[str, str], Summary],
    cases: Sequence[Case],
    infos: Mapping[str, TargetInfo],
) -> list[Goal]:
    """Check the issue's targets against the measured medians (``None``: not measured)."""
    goals: list[Goal] = []
    by_name = {case.label: case for case in cases}

    def missing(*pairs: Summary | None) -> str:
        for summary in pairs:
            if summary is not None:
                info = infos.get(summary.target)
                if info is not None and info.start_error:
                    return f"{summary.target} failed to start: {info.start_error}"
        return _missing(*pairs)

    def get(case_name: str, clients: int, target: str) -> Summary | None:
        case = by_name.get(f"{case_name} c{clients}")
        return None if case is None else summaries.get((case.label, target))

    for workload in ("select-simple", "select-extended"):
        for clients in (16, 128):
            ours = get(workload, clients, HEADLINE)
            theirs = get(workload, clients, "pgbouncer")
            name = (
                f"{HEADLINE}, {workload} at {clients} clients: CPU/tx <= PgBouncer "
                "and TPS >= PgBouncer"
            )
            if not _has_tps(ours) or not _has_tps(theirs):
                goals.append(Goal(name, None, missing(ours, theirs)))
                continue
            assert ours is not None
            assert theirs is not None
            cpu = _ratio_of(ours.cpu_us_per_tx, theirs.cpu_us_per_tx)
            tps = ours.ratio_pgbouncer
            passed = cpu is not None and tps is not None and cpu <= 1.0 and tps >= 1.0
            goals.append(Goal(name, passed, f"CPU/tx ratio {_x(cpu)}, TPS ratio {_x(tps)}"))

    for target in ("dbbalancer-transaction", HEADLINE):
        for workload in ("select-prepared", "tpcb-prepared"):
            for clients in (16, 128):
                ours = get(workload, clients, target)
                name = f"{target}, {workload} at {clients} clients: 0 errors, >= 0.9x direct"
                if ours is None or ours.runs == 0:
                    goals.append(Goal(name, None, missing(ours)))
                    continue
                errors = ours.failed + ours.aborted_clients + (ours.runs - ours.ok_runs)
                ratio = ours.ratio_direct
                passed = errors == 0 and ratio is not None and ratio >= 0.9
                detail = f"errors {errors}, TPS ratio to direct {_x(ratio)}"
                if ours.error:
                    detail += f" ({ours.error})"
                goals.append(Goal(name, passed, detail))

    ours = get("storm", 16, HEADLINE)
    theirs = get("storm", 16, "pgbouncer")
    name = f"{HEADLINE}, connection storm (-C -S, 16 clients): TPS >= PgBouncer"
    if not _has_tps(ours) or not _has_tps(theirs):
        goals.append(Goal(name, None, missing(ours, theirs)))
    else:
        assert ours is not None
        ratio = ours.ratio_pgbouncer
        goals.append(Goal(name, ratio is not None and ratio >= 1.0, f"TPS ratio {_x(ratio)}"))

    for case in cases:
        ours = summaries.get((case.label, "dbbalancer-session"))
        theirs = summaries.get((case.label, "haproxy"))
        if ours is None or theirs is None:
            continue
        name = f"dbbalancer-session, {case.label}: CPU/tx <= HAProxy"
        cpu = _ratio_of(ours.cpu_us_per_tx, theirs.cpu_us_per_tx)
        if cpu is None:
            goals.append(Goal(name, None, missing(ours, theirs)))
        else:
            goals.append(
                Goal(
                    name,
                    cpu <= 1.0,
                    f"{ours.cpu_us_per_tx:.0f} vs {theirs.cpu_us_per_tx:.0f} us/tx "
                    f"(ratio {_x(cpu)})",
                )
            )

    for target in ("dbbalancer-transaction-rw", "dbbalancer-transaction"):
        info = infos.get(target)
        name = f"{target}: {IDLE_GOAL_CLIENTS} idle clients in < {IDLE_GOAL_MB:.0f} MB RSS"
        if info is None:
            continue
        idle = info.idle
        if idle is None or idle.rss_after_kb is None:
            why = info.start_error or info.idle_note or "not measured"
            goals.append(Goal(name, None, why))
            continue
        total_mb = idle.rss_after_kb / 1024
        enough = idle.connected >= IDLE_GOAL_CLIENTS
        passed = enough and total_mb < IDLE_GOAL_MB
        detail = f"{idle.connected} clients connected, {total_mb:.1f} MB RSS"
        if not enough:
            detail += f" (only {idle.connected} of {IDLE_GOAL_CLIENTS} measured)"
        goals.append(Goal(name, passed if enough else None, detail))
    return goals


def _has_tps(summary: Summary | None) -> bool:
    return summary is not None and summary.tps is not None


def _missing(*summaries: Summary | None) -> str:
    for summary in summaries:
        if summary is None:
            return "not run"
        if summary.tps is None:
            return f"{summary.target}: {summary.error or 'no result'}"
        if summary.cpu_us_per_tx is None:
            return f"{summary.target}: no CPU measurement"
    return "not measured"


def _ratio_of(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0:
        return None
    return a / b


def _x(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}x"


def _num(value: float | None, fmt: str) -> str:
    return "n/a" if value is None else format(value, fmt)


# --------------------------------------------------------------------------------- markdown


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render_markdown(
    meta: ReportMeta,
    cases: Sequence[Case],
    targets: Sequence[str],
    summaries: Mapping[tuple[str, str], Summary],
    infos: Mapping[str, TargetInfo],
    goals: Sequence[Goal],
    chart_name: str | None,
) -> str:
    """The full ``docs/benchmarks.md`` text."""
    out: list[str] = ["# Benchmarks", ""]
    out += [
        "Macro benchmark: pgbench through each target in turn, interleaved per round, against a",
        "local primary with two streaming replicas. Generated by `bench/run.py`; do not edit by",
        "hand.",
        "",
        f"- Run: {meta.scope}",
        f"- Started: {meta.started}, wall time {meta.wall_seconds / 60:.1f} min",
        "- Command:",
        "",
        "```",
        meta.command,
        "```",
        "",
        "## Machine",
        "",
    ]
    out += [f"- {key}: {value}" for key, value in meta.machine.items()]
    out += ["", "## Versions", ""]
    out += [f"- {key}: {value}" for key, value in meta.versions.items()]
    out += ["", "## Settings", ""]
    out += [f"- {key}: {value}" for key, value in meta.settings.items()]
    out += [
        "",
        "## Commands",
        "",
        "Full run: `make bench` (= `make compile`, `bash scripts/bootstrap.sh bench`, then",
        "`PYTHONPATH=build/compiled .venv/bin/python -m bench.run`: dbbalancer runs the",
        "mypyc-compiled build, as installed from a wheel). pgbench command lines, the same for",
        "every target",
        "(PGPASSWORD in the environment; PORT is the target's port, LOGDIR a temporary",
        "directory per run):",
        "",
        "```",
        *meta.pgbench_commands,
        "```",
        "",
    ]
    out += _goals_section(goals)
    if chart_name is not None:
        out += [
            "## Chart",
            "",
            f"![bench results chart: TPS ratio to direct and proxy CPU per transaction]"
            f"({chart_name})",
            "",
        ]
    out += _targets_section(targets, infos)
    out += ["## Results", ""]
    out += [
        "TPS is the median over rounds; ratios are between medians. p50/p99 are exact",
        "percentiles of pgbench's per-transaction log (median over rounds). `failed` counts",
        "failed transactions plus aborted clients over all rounds. CPU is the proxy process",
        "tree's user+system time during the run divided by the transactions it served.",
        "With `-C` (storm) the logged latency excludes the reconnection, which pgbench reports",
        "separately as the average connection time (in the note column).",
        "",
    ]
    for case in cases:
        out += [f"### {case.label}", ""]
        out += [
            "| target | TPS | vs direct | vs PgBouncer | p50 ms | p99 ms | failed | "
            "proxy CPU us/tx | runs ok | note |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
        ]
        for target in targets:
            s = summaries.get((case.label, target))
            if s is None:
                continue
            info = infos.get(target)
            note = ""
            if info is not None and info.start_error:
                note = "failed to start (see Target status)"
            elif s.error:
                note = f"failed: {s.error}"
            elif s.connect_ms is not None:
                note = f"average connection time {s.connect_ms:.2f} ms"
            out.append(
                f"| {target} | {_num(s.tps, '.0f')} | {_x(s.ratio_direct)} | "
                f"{_x(s.ratio_pgbouncer)} | {_num(s.p50_ms, '.2f')} | {_num(s.p99_ms, '.2f')} | "
                f"{s.failed + s.aborted_clients} | {_num(s.cpu_us_per_tx, '.0f')} | "
                f"{s.ok_runs}/{s.runs} | {_cell(note)} |"
            )
        out.append("")
    out += _memory_section(targets, infos)
    if meta.micro_benchmark is not None:
        out += [
            "## Classifier micro-benchmark",
            "",
            "Output of `python -m bench.classify_bench`:",
            "",
            "```",
            meta.micro_benchmark.rstrip(),
            "```",
            "",
        ]
    if meta.notes:
        out += ["## Notes", ""]
        out += [f"- {note}" for note in meta.notes]
        out.append("")
    return "\n".join(out)


def _goals_section(goals: Sequence[Goal]) -> list[str]:
    out = ["## Targets", ""]
    if not goals:
        return [*out, "No issue targets apply to the targets and workloads of this run.", ""]
    passed = sum(1 for g in goals if g.passed)
    failed = sum(1 for g in goals if g.passed is False)
    unknown = sum(1 for g in goals if g.passed is None)
    out += [
        f"{passed} passed, {failed} failed, {unknown} not measured.",
        "",
        "| goal | result | measured |",
        "| --- | --- | --- |",
    ]
    for goal in goals:
        verdict = {True: "pass", False: "FAIL", None: "not measured"}[goal.passed]
        out.append(f"| {_cell(goal.name)} | {verdict} | {_cell(goal.detail)} |")
    out.append("")
    return out


def _targets_section(targets: Sequence[str], infos: Mapping[str, TargetInfo]) -> list[str]:
    out = ["## Target status", "", "| target | status |", "| --- | --- |"]
    for target in targets:
        info = infos.get(target)
        status = "ran" if info is None or info.start_error is None else info.start_error
        if info is not None and info.start_error is not None:
            status = f"failed/unsupported: {info.start_error}"
        out.append(f"| {target} | {_cell(status)} |")
    out.append("")
    return out


def _memory_section(targets: Sequence[str], infos: Mapping[str, TargetInfo]) -> list[str]:
    out = [
        "## Memory",
        "",
        "Peak RSS is the proxy's `VmHWM` after the pgbench runs (before the idle test). The idle",
        "test opens authenticated connections (startup + SCRAM-SHA-256 via asyncpg), holds them",
        "idle and reads the proxy's `VmRSS` before and after.",
        "",
        "| target | peak RSS MB | idle clients | RSS before MB | RSS after MB | "
        "per idle client KB | note |",
        "| --- | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for target in targets:
        info = infos.get(target)
        if info is None or target == "direct":
            continue
        idle = info.idle
        note = info.idle_note or (idle.error if idle else None) or ""
        if info.start_error:
            note = "failed to start (see Target status)"
        per_client = None if idle is None else idle.per_client_bytes
        out.append(
            f"| {target} | {_mb(info.peak_rss_kb)} | "
            f"{'n/a' if idle is None else idle.connected} | "
            f"{_mb(None if idle is None else idle.rss_before_kb)} | "
            f"{_mb(None if idle is None else idle.rss_after_kb)} | "
            f"{_num(None if per_client is None else per_client / 1024, '.1f')} | {_cell(note)} |"
        )
    out.append("")
    return out


def _mb(kb: int | None) -> str:
    return "n/a" if kb is None else f"{kb / 1024:.1f}"


# --------------------------------------------------------------------------------- chart


class ChartCase(Protocol):
    """A case as the chart sees it: a label on the x axis."""

    @property
    def label(self) -> str: ...


class ChartBar(Protocol):
    """A target on a case as the chart sees it: its TPS ratio and CPU per transaction."""

    @property
    def ratio_direct(self) -> float | None: ...

    @property
    def cpu_us_per_tx(self) -> float | None: ...


def render_chart(
    path: Path,
    cases: Sequence[ChartCase],
    targets: Sequence[str],
    summaries: Mapping[tuple[str, str], ChartBar],
    *,
    baseline: str = "direct",
    title: str = "bench results chart",
) -> None:
    """Grouped bars: TPS ratio to ``baseline`` (top) and proxy CPU us/transaction (bottom)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [case.label for case in cases]
    shown = [t for t in targets if any(summaries.get((c, t)) for c in labels)]
    width = 0.8 / max(1, len(shown))
    # Fixed colours per target: the CPU panel skips the baseline, and must not shift the palette.
    palette = plt.get_cmap("tab10")
    colours = {target: palette(index % 10) for index, target in enumerate(targets)}
    fig, (top, bottom) = plt.subplots(
        2, 1, figsize=(max(8.0, 1.1 * len(labels) + 3), 9), constrained_layout=True
    )
    positions = list(range(len(labels)))
    for index, target in enumerate(shown):
        offsets = [p - 0.4 + width * (index + 0.5) for p in positions]
        ratios = [_zero(summaries.get((c, target)), "ratio_direct") for c in labels]
        cpu = [_zero(summaries.get((c, target)), "cpu_us_per_tx") for c in labels]
        top.bar(offsets, ratios, width, label=target, color=colours[target])
        if target != baseline:
            bottom.bar(offsets, cpu, width, label=target, color=colours[target])
    top.axhline(1.0, color="black", linewidth=0.8)
    top.set_ylabel(f"TPS / {baseline} TPS")
    top.set_title(f"{title}: TPS ratio to {baseline} (median over rounds)")
    bottom.set_ylabel("proxy CPU us / transaction (log scale)")
    # Reconnecting clients cost 100x a query (SCRAM per login): only a log scale shows both.
    bottom.set_yscale("log")
    bottom.set_title("proxy CPU per transaction (lower is better)")
    for axis in (top, bottom):
        axis.set_xticks(positions)
        axis.set_xticklabels(labels, rotation=30, ha="right")
        axis.grid(axis="y", alpha=0.3)
    top.legend(fontsize="small", ncols=min(4, max(1, len(shown))))
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _zero(summary: ChartBar | None, attribute: str) -> float:
    if summary is None:
        return 0.0
    value = getattr(summary, attribute)
    return float(value) if value is not None else 0.0
