"""Macro benchmark: pgbench through direct, PgBouncer, HAProxy and dbbalancer, side by side,
then sysbench through direct, HAProxy and dbbalancer in front of MariaDB.

``python -m bench.run [--quick] [--rounds N] [--duration S] [--clients 16,128]
[--mysql-threads 16,64] [--targets ...] [--workloads ...] [--no-postgres | --no-mysql]
[--out docs/benchmarks.md]`` (``make bench`` runs it with the defaults). The MySQL part
(:mod:`bench.mysql_bench`) runs when a ``mysql-*`` target and a ``sysbench-*`` workload are
selected; it writes its own section at the end of the report, and a run of only one part keeps
the other part's results already in ``--out``.

It starts a local primary with two streaming replicas (PgCluster), loads it once with
``pgbench -i``, starts every target, then runs round after round, and within a round each case
(workload x client count) through every target in turn, so drift on a shared machine spreads over
all targets instead of landing on one. Finally it reads each proxy's peak RSS, opens idle clients
against the pooling proxies, and writes the markdown report and its PNG chart. Every process it
starts is stopped by PID in a ``finally``, on errors and on Ctrl-C/SIGTERM too.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import resource
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from types import FrameType

from bench.measure import (
    PgbenchResult,
    Workload,
    descendants,
    machine_info,
    measure_idle_clients,
    peak_rss_kb,
    pgbench_command,
    run_pgbench,
)
from bench.mysql_bench import MYSQL_WORKLOADS, MysqlBench, MysqlSettings
from bench.mysql_report import MysqlCase, splice
from bench.mysql_targets import MYSQL_DEFAULT_TARGETS, MYSQL_TARGETS
from bench.report import (
    Case,
    ReportMeta,
    RunRecord,
    TargetInfo,
    evaluate_goals,
    render_chart,
    render_markdown,
    summarize,
)
from bench.sysbench import SysbenchTables
from bench.targets import (
    ALL_TARGETS,
    DEFAULT_TARGETS,
    RunningTarget,
    TargetError,
    find_program,
    start_target,
)
from dbbalancer import __version__, build_kind
from dbbalancer.testing.pgcluster import PgCluster, PgClusterError, find_pg_bindir

WORKLOADS: dict[str, Workload] = {
    w.name: w
    for w in (
        Workload("select-simple", select=True, protocol="simple"),
        Workload("select-extended", select=True, protocol="extended"),
        Workload("select-prepared", select=True, protocol="prepared"),
        Workload("tpcb-simple", select=False, protocol="simple"),
        Workload("tpcb-extended", select=False, protocol="extended"),
        Workload("tpcb-prepared", select=False, protocol="prepared"),
        Workload("storm", select=True, protocol="simple", connect=True),
    )
}

DEFAULT_ROUNDS = 3
DEFAULT_DURATION = 10.0
DEFAULT_CLIENTS = (16, 128)
DEFAULT_MYSQL_THREADS = (16, 64)
DEFAULT_MYSQL_TABLES = 4
DEFAULT_MYSQL_TABLE_SIZE = 10000
DEFAULT_IDLE_CLIENTS = 5000
DEFAULT_SCALE = 10
QUICK_ROUNDS = 1
QUICK_DURATION = 3.0
QUICK_IDLE_CLIENTS = 1000
STORM_CLIENTS = 16
_WANTED_NOFILE = 65536
_REPO = Path(__file__).resolve().parent.parent


def _csv(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench.run",
        description="pgbench through direct, PgBouncer, HAProxy and dbbalancer, and sysbench "
        "through direct, HAProxy and dbbalancer before MariaDB; writes a report.",
    )
    all_targets = [*ALL_TARGETS, *MYSQL_TARGETS]
    all_workloads = [*WORKLOADS, *MYSQL_WORKLOADS]
    parser.add_argument("--quick", action="store_true", help="short run: 1 round of 3 s")
    parser.add_argument("--rounds", type=int, help=f"rounds (default {DEFAULT_ROUNDS})")
    parser.add_argument("--duration", type=float, help=f"seconds per run ({DEFAULT_DURATION})")
    parser.add_argument(
        "--clients",
        default=",".join(map(str, DEFAULT_CLIENTS)),
        help="comma-separated client counts for the non-storm workloads",
    )
    parser.add_argument(
        "--mysql-threads",
        default=",".join(map(str, DEFAULT_MYSQL_THREADS)),
        help="comma-separated sysbench thread counts (one connection each) for MySQL",
    )
    parser.add_argument(
        "--targets",
        default=",".join([*DEFAULT_TARGETS, *MYSQL_DEFAULT_TARGETS]),
        help=f"any of {','.join(all_targets)}",
    )
    parser.add_argument(
        "--workloads", default=",".join(all_workloads), help=f"any of {','.join(all_workloads)}"
    )
    parser.add_argument(
        "--postgres",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="run the PostgreSQL part (pgbench) of the selected targets and workloads",
    )
    parser.add_argument(
        "--mysql",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="run the MySQL part (sysbench, mysql-* targets) of the selection",
    )
    parser.add_argument(
        "--mysql-tables", type=int, default=DEFAULT_MYSQL_TABLES, help="sysbench --tables"
    )
    parser.add_argument(
        "--mysql-table-size",
        type=int,
        default=DEFAULT_MYSQL_TABLE_SIZE,
        help="sysbench --table-size (rows per table)",
    )
    parser.add_argument(
        "--idle-clients", type=int, help=f"idle clients per pooling proxy ({DEFAULT_IDLE_CLIENTS})"
    )
    parser.add_argument("--scale", type=int, default=DEFAULT_SCALE, help="pgbench -i -s")
    parser.add_argument("--out", type=Path, default=Path("docs/benchmarks.md"))
    parser.add_argument("--json", type=Path, help="also write the raw results as JSON here")
    parser.add_argument(
        "--note", action="append", default=[], help="a note to print in the report (repeatable)"
    )
    parser.add_argument(
        "--no-micro", action="store_true", help="skip the classifier micro-benchmark"
    )
    return parser


def _raise_nofile() -> int:
    """Raise our open-file limit; proxies started later inherit it (``ulimit -n``)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < _WANTED_NOFILE:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (_WANTED_NOFILE, _WANTED_NOFILE))
            return _WANTED_NOFILE
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        return hard
    return soft


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def _first_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[0] if lines else text


class Bench:
    """One benchmark run: settings in, report out; owns the cluster and the target processes."""

    def __init__(self, args: argparse.Namespace, argv: Sequence[str]) -> None:
        self.args = args
        self.argv = list(argv)
        self.rounds: int = args.rounds or (QUICK_ROUNDS if args.quick else DEFAULT_ROUNDS)
        self.duration: float = args.duration or (QUICK_DURATION if args.quick else DEFAULT_DURATION)
        self.idle_clients: int = (
            args.idle_clients
            if args.idle_clients is not None
            else (QUICK_IDLE_CLIENTS if args.quick else DEFAULT_IDLE_CLIENTS)
        )
        self.clients = [int(c) for c in _csv(args.clients)]
        threads = [int(t) for t in _csv(args.mysql_threads)]
        targets, workloads = _csv(args.targets), _csv(args.workloads)
        unknown = [t for t in targets if t not in ALL_TARGETS and t not in MYSQL_TARGETS]
        unknown += [w for w in workloads if w not in WORKLOADS and w not in MYSQL_WORKLOADS]
        if unknown or not self.clients or min(self.clients) < 1 or min(threads, default=0) < 1:
            raise SystemExit(f"bench.run: unknown targets/workloads or bad clients: {unknown}")
        self.targets = [ALL_TARGETS[t] for t in targets if t in ALL_TARGETS]
        self.cases = [
            Case(WORKLOADS[w], STORM_CLIENTS if WORKLOADS[w].connect else c)
            for w in workloads
            if w in WORKLOADS
            for c in (self.clients[:1] if WORKLOADS[w].connect else self.clients)
        ]
        if not args.postgres:
            self.targets, self.cases = [], []
        self.postgres = bool(self.targets and self.cases)
        self.mysql = _mysql_settings(args, targets, workloads, threads, self.rounds, self.duration)
        if not self.postgres and self.mysql is None:
            raise SystemExit("bench.run: nothing to run (no target with a workload of its kind)")
        max_clients = max(case.clients for case in self.cases) if self.cases else 1
        # Session pooling holds a server connection per client: cap above every client count.
        self.session_pool_size = max(max_clients + 8, 64)
        self.pgbench = self._find_pgbench() if self.postgres else "pgbench"
        self.records: list[RunRecord] = []
        self.infos: dict[str, TargetInfo] = {t.name: TargetInfo(t.name) for t in self.targets}
        self.running: dict[str, RunningTarget] = {}
        self.notes: list[str] = list(args.note)
        self.micro: str | None = None
        self.nofile = 0
        self.pgbench_lines: list[str] = []
        self.started = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
        self.t0 = time.monotonic()

    @staticmethod
    def _find_pgbench() -> str:
        with contextlib.suppress(PgClusterError):
            candidate = find_pg_bindir() / "pgbench"
            if candidate.exists():
                return str(candidate)
        found = shutil.which("pgbench")
        if found is None:
            raise SystemExit("bench.run: pgbench not found; run `make setup`")
        return found

    def _max_connections(self) -> int:
        max_clients = max(case.clients for case in self.cases) if self.cases else 1
        kinds = [t.kind for t in self.targets]
        session = sum(1 for t in self.targets if t.pool_mode == "session")
        transaction = sum(1 for t in self.targets if t.kind != "direct") - session
        total = 2 * max_clients + self.session_pool_size * session + 25 * transaction + 60
        if "haproxy" in kinds:
            total += max_clients
        return max(400, total)

    # ----------------------------------------------------------------- main flow

    def run(self) -> int:
        """Benchmark each part, then write the report; processes are stopped whatever happens."""
        self.nofile = _raise_nofile()
        postgres = self._run_postgres() if self.postgres else None
        mysql = self._run_mysql(self.mysql) if self.mysql is not None else None
        out: Path = self.args.out
        out.parent.mkdir(parents=True, exist_ok=True)
        existing = out.read_text(encoding="utf-8") if out.exists() else None
        out.write_text(splice(existing, postgres, mysql), encoding="utf-8")
        print(f"bench: wrote {out}", flush=True)
        return 0

    def _run_postgres(self) -> str:
        """The PostgreSQL part: pgbench through every target; returns its markdown."""
        workdir = Path(tempfile.mkdtemp(prefix="dbbalancer-bench-"))
        cluster = PgCluster(replicas=2, max_connections=self._max_connections())
        try:
            print(f"bench: starting the cluster in {workdir}", flush=True)
            cluster.start()
            self._load(cluster)
            self._start_targets(cluster, workdir)
            self._benchmark(cluster, workdir)
            self._memory(cluster)
            if not self.args.no_micro:
                self.micro = self._micro_benchmark()
            versions = self._versions()
        finally:
            for target in self.running.values():
                target.stop()
            try:
                cluster.stop()
            finally:
                shutil.rmtree(workdir, ignore_errors=True)
        return self._write(versions)

    def _run_mysql(self, settings: MysqlSettings) -> str:
        """The MySQL part: sysbench through every MySQL target; returns its markdown section."""
        bench = MysqlBench(settings)
        bench.run()
        out: Path = self.args.out
        return bench.report(
            chart=out.with_name(out.stem + "-mysql.png"),
            command=shlex.join(["python", "-m", "bench.run", *_public_argv(self.argv)]),
            scope=_mysql_scope(settings),
            notes=list(self.args.note),
        )

    def _env(self, cluster: PgCluster) -> dict[str, str]:
        env = dict(os.environ)
        env["PGPASSWORD"] = cluster.password
        env.pop("PGSERVICE", None)
        return env

    def _load(self, cluster: PgCluster) -> None:
        primary = cluster.primary
        command = [
            self.pgbench,
            "-i",
            "-q",
            "-s",
            str(self.args.scale),
            "-h",
            primary.host,
            "-p",
            str(primary.port),
            "-U",
            cluster.user,
            cluster.database,
        ]
        print(f"bench: {shlex.join(command)}", flush=True)
        done = subprocess.run(
            command,
            env=self._env(cluster),
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        if done.returncode != 0:
            raise SystemExit(f"bench.run: pgbench -i failed: {done.stderr.strip()}")
        self._wait_replay(cluster)

    @staticmethod
    def _wait_replay(cluster: PgCluster, timeout: float = 120.0) -> None:
        """Wait until every replica replayed the loaded data, so replica reads see it."""
        lsn = cluster.sql(cluster.primary, "SELECT pg_current_wal_lsn()")[0][0]
        deadline = time.monotonic() + timeout
        for replica in cluster.replicas:
            while True:
                row = cluster.sql(replica, f"SELECT pg_last_wal_replay_lsn() >= '{lsn}'::pg_lsn")
                if row and row[0][0] == "t":
                    break
                if time.monotonic() >= deadline:
                    raise SystemExit(f"bench.run: {replica.name} did not replay up to {lsn}")
                time.sleep(0.2)

    def _start_targets(self, cluster: PgCluster, workdir: Path) -> None:
        for spec in self.targets:
            try:
                self.running[spec.name] = start_target(
                    spec, cluster, workdir, session_pool_size=self.session_pool_size
                )
                print(f"bench: {spec.name} ready", flush=True)
            except (TargetError, OSError, subprocess.SubprocessError) as exc:
                self.infos[spec.name].start_error = _first_line(str(exc))
                print(f"bench: {spec.name} failed to start: {exc}", flush=True)

    def _benchmark(self, cluster: PgCluster, workdir: Path) -> None:
        env = self._env(cluster)
        total = self.rounds * len(self.cases) * len(self.running)
        done = 0
        for round_no in range(1, self.rounds + 1):
            for case in self.cases:
                for spec in self.targets:
                    target = self.running.get(spec.name)
                    if target is None:
                        continue
                    done += 1
                    result = self._run_one(target, case, cluster, env, workdir)
                    self.records.append(RunRecord(spec.name, case, round_no, result))
                    shown = f"{result.tps:.0f} tps" if result.tps else f"error: {result.error}"
                    print(
                        f"bench: [{done}/{total}] round {round_no} {case.label} "
                        f"{spec.name}: {shown}",
                        flush=True,
                    )

    def _run_one(
        self,
        target: RunningTarget,
        case: Case,
        cluster: PgCluster,
        env: dict[str, str],
        workdir: Path,
    ) -> PgbenchResult:
        log_dir = workdir / "logs" / f"{target.spec.name}-{case.label.replace(' ', '-')}"
        log_dir.mkdir(parents=True, exist_ok=True)
        command = pgbench_command(
            self.pgbench,
            host=target.host,
            port=target.port,
            user=cluster.user,
            database=cluster.database,
            workload=case.workload,
            clients=case.clients,
            duration=self.duration,
            log_prefix=log_dir / "tx",
        )
        if not target.alive():
            return PgbenchResult(command, error=f"target exited: {target.failure()}")
        try:
            result = run_pgbench(
                command,
                env=env,
                duration=self.duration,
                log_dir=log_dir,
                proxy_pids=target.pids,
            )
        except (OSError, subprocess.SubprocessError, ValueError) as exc:
            return PgbenchResult(command, error=f"{type(exc).__name__}: {exc}")
        if not target.alive():
            result.error = result.error or f"target exited: {target.failure()}"
        # The report shows commands without this machine's paths.
        generic = (
            shlex.join(["pgbench", *command[1:]])
            .replace(str(log_dir), "LOGDIR")
            .replace(f"-p {target.port}", "-p PORT")
        )
        if generic not in self.pgbench_lines:
            self.pgbench_lines.append(generic)
        return result

    def _memory(self, cluster: PgCluster) -> None:
        for name, target in self.running.items():
            if target.process is not None:
                self.infos[name].peak_rss_kb = peak_rss_kb(
                    [d for pid in target.pids for d in descendants(pid)]
                )
        if self.idle_clients <= 0:
            return
        for name, target in self.running.items():
            info = self.infos[name]
            spec = target.spec
            if spec.kind == "direct":
                continue
            if spec.kind == "haproxy" or (
                spec.pool_mode == "session" and self.idle_clients > (target.pool_size or 0)
            ):
                info.idle_note = (
                    "n/a: one server connection per client, "
                    f"{self.idle_clients} idle clients would exceed the server's max_connections"
                )
                continue
            if not target.alive():
                info.idle_note = f"target exited: {target.failure()}"
                continue
            print(f"bench: {self.idle_clients} idle clients on {name}", flush=True)
            info.idle = measure_idle_clients(
                host=target.host,
                port=target.port,
                user=cluster.user,
                password=cluster.password,
                database=cluster.database,
                clients=self.idle_clients,
                pids=target.pids,
            )

    def _micro_benchmark(self) -> str | None:
        script = _REPO / "bench" / "classify_bench.py"
        if not script.exists():
            return None
        print("bench: classifier micro-benchmark", flush=True)
        try:
            done = subprocess.run(
                [sys.executable, "-m", "bench.classify_bench"],
                cwd=_REPO,
                capture_output=True,
                text=True,
                timeout=600,
                check=False,
            )
        except subprocess.TimeoutExpired:
            return "(timed out after 600 s)"
        if done.returncode != 0:
            return f"(exited with {done.returncode})\n{done.stdout}{done.stderr}"
        return done.stdout

    # ----------------------------------------------------------------- report

    def _versions(self) -> dict[str, str]:
        versions: dict[str, str] = {}
        with contextlib.suppress(PgClusterError):
            versions["PostgreSQL"] = _version([str(find_pg_bindir() / "postgres"), "--version"])
        versions["pgbench"] = _version([self.pgbench, "--version"])
        for name, flag in (("pgbouncer", "--version"), ("haproxy", "-v")):
            program = find_program(name)
            versions[name] = "not installed" if program is None else _version([program, flag])
        versions["Python"] = platform.python_version()
        kind = build_kind()
        versions["dbbalancer"] = f"{__version__}, {kind}" + (
            " (mypyc, setup.py; the -pure target runs the source tree)"
            if kind == "compiled"
            else ""
        )
        return versions

    def _scope(self) -> str:
        full = (
            self.rounds >= DEFAULT_ROUNDS
            and self.duration >= DEFAULT_DURATION
            and sorted(self.clients) == sorted(DEFAULT_CLIENTS)
            and {t.name for t in self.targets} >= set(DEFAULT_TARGETS)
            and {c.workload.name for c in self.cases} == set(WORKLOADS)
            and self.idle_clients >= DEFAULT_IDLE_CLIENTS
        )
        detail = (
            f"{self.rounds} round(s) x {self.duration:g} s per run, clients "
            f"{','.join(map(str, self.clients))}, {len(self.targets)} target(s), "
            f"{len(self.cases)} case(s), {self.idle_clients} idle clients"
        )
        if full:
            return f"full (`make bench` defaults): {detail}"
        return f"reduced (not the full `make bench`): {detail}"

    def _write(self, versions: dict[str, str]) -> str:
        """Write the chart and the JSON (``--json``); return the PostgreSQL report's markdown."""
        names = [t.name for t in self.targets]
        summaries = summarize(self.records, names, self.cases)
        goals = evaluate_goals(summaries, self.cases, self.infos)
        out: Path = self.args.out
        out.parent.mkdir(parents=True, exist_ok=True)
        chart = out.with_suffix(".png")
        chart_name: str | None = chart.name
        try:
            render_chart(chart, self.cases, names, summaries)
        except Exception as exc:  # a missing plotting backend must not lose the results
            self.notes.append(f"chart not written: {type(exc).__name__}: {exc}")
            chart_name = None
        meta = ReportMeta(
            command=shlex.join(["python", "-m", "bench.run", *_public_argv(self.argv)]),
            scope=self._scope(),
            machine=machine_info("benchmark clients, proxies and PostgreSQL share these cores"),
            versions=versions,
            pgbench_commands=self.pgbench_lines,
            settings={
                "rounds": str(self.rounds),
                "duration per run": f"{self.duration:g} s",
                "pgbench scale": str(self.args.scale),
                "cluster": "1 primary + 2 streaming replicas (PgCluster), fsync off",
                "PgBouncer": "pool_mode transaction, default_pool_size 20, "
                "max_client_conn 10000, auth_type scram-sha-256",
                "HAProxy": "mode tcp, one backend server (the primary)",
                "dbbalancer": "separate process, transaction pool_size 20, session pool_size "
                f"{self.session_pool_size}, log_level warning",
                "open files limit (harness and proxies)": str(self.nofile),
            },
            started=self.started,
            wall_seconds=time.monotonic() - self.t0,
            micro_benchmark=self.micro,
            notes=self.notes,
        )
        if chart_name:
            print(f"bench: wrote {chart}", flush=True)
        if self.args.json is not None:
            payload = {
                "summaries": [{**asdict(s), "case": s.case.label} for s in summaries.values()],
                "targets": {name: asdict(info) for name, info in self.infos.items()},
                "goals": [asdict(goal) for goal in goals],
            }
            self.args.json.write_text(json.dumps(payload, indent=2), encoding="utf-8")
        return render_markdown(meta, self.cases, names, summaries, self.infos, goals, chart_name)


def _mysql_settings(
    args: argparse.Namespace,
    targets: Sequence[str],
    workloads: Sequence[str],
    threads: Sequence[int],
    rounds: int,
    duration: float,
) -> MysqlSettings | None:
    """The MySQL part of the selection, or ``None`` when it has no target or no workload."""
    chosen = [MYSQL_TARGETS[t] for t in targets if t in MYSQL_TARGETS]
    cases = [
        MysqlCase(MYSQL_WORKLOADS[w], n) for w in workloads if w in MYSQL_WORKLOADS for n in threads
    ]
    if not args.mysql or not chosen or not cases:
        return None
    tables = SysbenchTables(args.mysql_tables, args.mysql_table_size)
    return MysqlSettings(chosen, cases, rounds, duration, tables)


def _mysql_scope(settings: MysqlSettings) -> str:
    full = (
        settings.rounds >= DEFAULT_ROUNDS
        and settings.duration >= DEFAULT_DURATION
        and sorted({c.threads for c in settings.cases}) == sorted(DEFAULT_MYSQL_THREADS)
        and {t.spec.name for t in settings.targets} >= set(MYSQL_DEFAULT_TARGETS)
        and {c.workload.name for c in settings.cases} == set(MYSQL_WORKLOADS)
    )
    threads = sorted({c.threads for c in settings.cases})
    detail = (
        f"{settings.rounds} round(s) x {settings.duration:g} s per run, threads "
        f"{','.join(map(str, threads))}, {len(settings.targets)} target(s), "
        f"{len(settings.cases)} case(s)"
    )
    if full:
        return f"full (`make bench` defaults): {detail}"
    return f"reduced (not the full `make bench`): {detail}"


def _version(command: list[str]) -> str:
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.SubprocessError) as exc:
        return f"unknown ({exc})"
    return _first_line(done.stdout or done.stderr)


def _public_argv(argv: Sequence[str]) -> list[str]:
    """The command line as the report shows it: without output paths of this machine."""
    out: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
            continue
        if arg in ("--json", "--out"):
            skip = True
            continue
        if arg.startswith(("--json=", "--out=")):
            continue
        out.append(arg)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m bench.run``; returns the exit status (130 on Ctrl-C)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parser().parse_args(argv)
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        return Bench(args, argv).run()
    except KeyboardInterrupt:
        print("bench: interrupted; every started process was stopped", file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    raise SystemExit(main())
