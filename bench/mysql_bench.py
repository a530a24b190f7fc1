"""The MySQL part of the macro benchmark: sysbench through direct, HAProxy and dbbalancer.

It starts a local MariaDB primary with two GTID replicas (MariaDbCluster), prepares the sysbench
tables once on the primary and waits until the replicas applied them, starts every target, then
runs round after round, and within a round each case (workload x threads) through every target
in turn, as the PostgreSQL part does. A target that dbbalancer refuses because issue #12 has not
delivered its feature yet is reported "not available yet (issue #12)" and skipped. Every process
it starts is stopped by PID in a ``finally``.
"""

from __future__ import annotations

import datetime
import shlex
import shutil
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from bench.measure import descendants, machine_info, peak_rss_kb
from bench.mysql_report import (
    BASELINE,
    MysqlCase,
    MysqlMeta,
    MysqlRecord,
    MysqlTargetInfo,
    render_mysql_section,
    summarize_mysql,
)
from bench.mysql_targets import (
    MysqlTarget,
    TargetUnavailable,
    start_mysql_target,
)
from bench.report import render_chart
from bench.sysbench import (
    SysbenchResult,
    SysbenchTables,
    SysbenchWorkload,
    run_sysbench,
    sysbench_command,
)
from bench.targets import RunningTarget, TargetError, find_program
from dbbalancer import __version__, build_kind
from dbbalancer.testing.mariadbcluster import (
    MariaDbCluster,
    MariaDbClusterError,
    find_mariadb_binaries,
)

__all__ = ["MYSQL_WORKLOADS", "MysqlBench", "MysqlSettings"]

MYSQL_WORKLOADS: dict[str, SysbenchWorkload] = {
    w.name: w
    for w in (
        SysbenchWorkload("sysbench-point-select", "oltp_point_select"),
        SysbenchWorkload("sysbench-read-only", "oltp_read_only"),
    )
}
_PREPARE_TEST = "oltp_read_only"
_PREPARE_TIMEOUT = 600.0


@dataclass(frozen=True)
class MysqlSettings:
    """What to run: targets, cases, rounds, seconds per run and the tables."""

    targets: Sequence[MysqlTarget]
    cases: Sequence[MysqlCase]
    rounds: int
    duration: float
    tables: SysbenchTables

    @property
    def session_pool_size(self) -> int:
        """Session pooling holds a server connection per client: above every thread count."""
        most = max((case.threads for case in self.cases), default=1)
        return max(most + 8, 64)

    def max_connections(self) -> int:
        """MariaDB's ``max_connections``: every target's server connections at once, plus room."""
        most = max((case.threads for case in self.cases), default=1)
        proxies = sum(1 for t in self.targets if t.spec.kind != "direct")
        return max(300, 2 * most + proxies * self.session_pool_size + 60)


class MysqlBench:
    """One MySQL benchmark run: owns the MariaDB cluster and the target processes."""

    def __init__(self, settings: MysqlSettings) -> None:
        self.settings = settings
        sysbench = find_program("sysbench")
        if sysbench is None:
            raise SystemExit("bench.run: sysbench not found; run `bash scripts/bootstrap.sh bench`")
        self.sysbench: str = sysbench
        self.records: list[MysqlRecord] = []
        self.infos = {t.spec.name: MysqlTargetInfo(t.spec.name) for t in settings.targets}
        self.running: dict[str, RunningTarget] = {}
        self.command_lines: list[str] = []
        self.started = ""
        self.wall_seconds = 0.0

    def run(self) -> None:
        """Start the cluster and the targets, run every case, read peak RSS; stop everything."""
        self.started = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
        t0 = time.monotonic()
        workdir = Path(tempfile.mkdtemp(prefix="dbbalancer-bench-mysql-"))
        # The cluster makes its own base directory: the server account must traverse it.
        cluster = MariaDbCluster(replicas=2, max_connections=self.settings.max_connections())
        try:
            print("bench: starting the MariaDB cluster", flush=True)
            cluster.start()
            self._prepare(cluster)
            self._start_targets(cluster, workdir)
            self._benchmark(cluster)
            for name, target in self.running.items():
                if target.process is not None:
                    self.infos[name].peak_rss_kb = peak_rss_kb(
                        [d for pid in target.pids for d in descendants(pid)]
                    )
        finally:
            for target in self.running.values():
                target.stop()
            try:
                cluster.stop()
            finally:
                shutil.rmtree(workdir, ignore_errors=True)
                self.wall_seconds = time.monotonic() - t0

    def report(self, *, chart: Path, command: str, scope: str, notes: Sequence[str]) -> str:
        """Write the chart to ``chart`` and return the markdown section of this run."""
        settings = self.settings
        names = [t.spec.name for t in settings.targets]
        summaries = summarize_mysql(self.records, names, settings.cases)
        notes = list(notes)
        chart_name: str | None = chart.name
        try:
            render_chart(
                chart,
                settings.cases,
                [name for name in names if self.infos[name].start_error is None],
                summaries,
                baseline=BASELINE,
                title="MySQL bench chart",
            )
        except Exception as exc:  # a missing plotting backend must not lose the results
            notes.append(f"chart not written: {type(exc).__name__}: {exc}")
            chart_name = None
        versions = self.versions()
        versions["dbbalancer"] = f"{__version__}, {build_kind()}"
        meta = MysqlMeta(
            command=command,
            scope=scope,
            started=self.started,
            wall_seconds=self.wall_seconds,
            machine=machine_info("benchmark clients, proxies and MariaDB share these cores"),
            versions=versions,
            settings={
                "rounds": str(settings.rounds),
                "duration per run": f"{settings.duration:g} s",
                "sysbench tables": f"{settings.tables.tables} x {settings.tables.size} rows "
                "(prepared once on the primary, replicated before the runs)",
                "cluster": "MariaDB primary + 2 GTID replicas (MariaDbCluster)",
                "HAProxy": "mode tcp; a write listener to the primary and a read listener "
                "balanced (roundrobin) over the replicas",
                "dbbalancer": "separate process, protocol mysql, mysql_native_password; "
                f"session pool_size {settings.session_pool_size}, log_level warning",
            },
            sysbench_commands=self.command_lines,
            chart_name=chart_name,
            notes=notes,
        )
        return render_mysql_section(meta, settings.cases, names, summaries, self.infos)

    def _command(
        self,
        cluster: MariaDbCluster,
        port: int,
        test: str,
        *,
        threads: int | None = None,
        duration: float | None = None,
        action: str = "run",
    ) -> list[str]:
        return sysbench_command(
            self.sysbench,
            test=test,
            host=cluster.primary.host,
            port=port,
            user=cluster.user,
            password=cluster.password,
            database=cluster.database,
            tables=self.settings.tables,
            threads=threads,
            duration=duration,
            action=action,
        )

    def _prepare(self, cluster: MariaDbCluster) -> None:
        command = self._command(cluster, cluster.primary.port, _PREPARE_TEST, action="prepare")
        print(f"bench: {shlex.join(command)}", flush=True)
        done = subprocess.run(
            command, capture_output=True, text=True, timeout=_PREPARE_TIMEOUT, check=False
        )
        if done.returncode != 0:
            raise SystemExit(f"bench.run: sysbench prepare failed: {done.stdout}{done.stderr}")
        # Replica reads (HAProxy's read port, dbbalancer's split) must find the tables.
        cluster.wait_replicated(timeout=120)

    def _start_targets(self, cluster: MariaDbCluster, workdir: Path) -> None:
        for target in self.settings.targets:
            name = target.spec.name
            try:
                self.running[name] = start_mysql_target(
                    target,
                    cluster,
                    workdir,
                    session_pool_size=self.settings.session_pool_size,
                )
                print(f"bench: {name} ready", flush=True)
            except TargetUnavailable as exc:
                self.infos[name].start_error = str(exc).splitlines()[0]
                self.infos[name].unavailable = True
                print(f"bench: {name}: {exc}", flush=True)
            except (TargetError, OSError, subprocess.SubprocessError) as exc:
                self.infos[name].start_error = str(exc).splitlines()[0]
                print(f"bench: {name} failed to start: {exc}", flush=True)

    def _benchmark(self, cluster: MariaDbCluster) -> None:
        settings = self.settings
        total = settings.rounds * len(settings.cases) * len(self.running)
        done = 0
        for round_no in range(1, settings.rounds + 1):
            for case in settings.cases:
                for spec in settings.targets:
                    target = self.running.get(spec.spec.name)
                    if target is None:
                        continue
                    done += 1
                    result = self._run_one(target, case, cluster)
                    self.records.append(MysqlRecord(spec.spec.name, case, round_no, result))
                    shown = f"{result.tps:.0f} tps" if result.tps else f"error: {result.error}"
                    print(
                        f"bench: [{done}/{total}] round {round_no} {case.label} "
                        f"{spec.spec.name}: {shown}",
                        flush=True,
                    )

    def _run_one(
        self, target: RunningTarget, case: MysqlCase, cluster: MariaDbCluster
    ) -> SysbenchResult:
        command = self._command(
            cluster,
            target.port,
            case.workload.test,
            threads=case.threads,
            duration=self.settings.duration,
        )
        if not target.alive():
            return SysbenchResult(command, error=f"target exited: {target.failure()}")
        try:
            result = run_sysbench(command, duration=self.settings.duration, proxy_pids=target.pids)
        except (OSError, subprocess.SubprocessError, ValueError) as exc:
            return SysbenchResult(command, error=f"{type(exc).__name__}: {exc}")
        if not target.alive():
            result.error = result.error or f"target exited: {target.failure()}"
        # The report shows commands without this machine's ports.
        generic = shlex.join(["sysbench", *command[1:]]).replace(
            f"--mysql-port={target.port}", "--mysql-port=PORT"
        )
        if generic not in self.command_lines:
            self.command_lines.append(generic)
        return result

    def versions(self) -> dict[str, str]:
        """Versions of MariaDB, sysbench and HAProxy, as their programs print them."""
        versions: dict[str, str] = {}
        try:
            server = str(find_mariadb_binaries().server)
        except MariaDbClusterError:
            versions["MariaDB"] = "not installed"
        else:
            versions["MariaDB"] = _version([server, "--version"])
        for name, flag in (("sysbench", "--version"), ("haproxy", "-v")):
            program = find_program(name)
            versions[name] = "not installed" if program is None else _version([program, flag])
        return versions


def _version(command: list[str]) -> str:
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.SubprocessError) as exc:
        return f"unknown ({exc})"
    lines = [line.strip() for line in (done.stdout or done.stderr).splitlines() if line.strip()]
    return lines[0] if lines else "unknown"
