"""Measurements for the macro benchmark: pgbench runs, proxy CPU and memory, idle clients.

CPU and memory come from procfs (proc(5)): ``/proc/PID/stat`` fields 14-17 (utime, stime,
cutime, cstime, in clock ticks) and ``/proc/PID/status`` ``VmRSS`` / ``VmHWM``. A proxy is
measured as its process plus every descendant, because HAProxy and PgBouncer may fork and a
Python proxy may spawn helpers; threads are already included in a process's ``stat`` line.

pgbench results come from its summary output and from its per-transaction logs (``-l``, pgbench
documentation "Per-Transaction Logging": ``client_id transaction_no time script_no time_epoch
time_us [schedule_lag]``, where ``time`` is the latency in microseconds, or ``failed`` /
``skipped``). Exact percentiles are computed from those logs, not estimated.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import platform
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "IdleResult",
    "PgbenchResult",
    "Workload",
    "cpu_seconds",
    "descendants",
    "machine_info",
    "measure_idle_clients",
    "parse_latency_lines",
    "parse_pgbench_summary",
    "peak_rss_kb",
    "percentile",
    "pgbench_command",
    "rss_kb",
    "run_pgbench",
]

_CLK_TCK = os.sysconf("SC_CLK_TCK")
_RUN_GRACE = 60.0


@dataclass(frozen=True)
class Workload:
    """One pgbench workload: a built-in script, a query protocol and whether to reconnect.

    ``select`` is pgbench's ``-S`` (select-only) script, otherwise the default TPC-B-like one;
    ``protocol`` is the ``-M`` value (simple, extended, prepared); ``connect`` is ``-C``, a new
    connection per transaction (the connection storm).
    """

    name: str
    select: bool
    protocol: str
    connect: bool = False


@dataclass
class PgbenchResult:
    """The outcome of one pgbench run; ``error`` is set when the run did not complete."""

    command: list[str]
    tps: float | None = None
    transactions: int = 0
    failed: int = 0
    aborted_clients: int = 0
    p50_ms: float | None = None
    p99_ms: float | None = None
    connect_ms: float | None = None
    cpu_us_per_tx: float | None = None
    elapsed_s: float = 0.0
    error: str | None = None
    stderr_tail: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Whether the run completed without pgbench aborting."""
        return self.error is None and self.tps is not None


@dataclass
class IdleResult:
    """RSS of a proxy before and after ``clients`` authenticated idle connections."""

    clients: int
    connected: int = 0
    rss_before_kb: int | None = None
    rss_after_kb: int | None = None
    error: str | None = None

    @property
    def per_client_bytes(self) -> float | None:
        """Resident memory added per connected idle client."""
        if self.rss_before_kb is None or self.rss_after_kb is None or self.connected == 0:
            return None
        return (self.rss_after_kb - self.rss_before_kb) * 1024 / self.connected


# --------------------------------------------------------------------------------- procfs


def _stat_fields(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text(encoding="ascii", errors="replace")
    except OSError:
        return None
    # The command name (field 2) is in parentheses and may hold spaces or ')'.
    close = raw.rfind(")")
    if close < 0:
        return None
    return [raw[: raw.find(" ")], "comm", *raw[close + 2 :].split()]


def descendants(pid: int) -> list[int]:
    """``pid`` and every live descendant, found through the ppid field of each ``stat`` line."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        fields = _stat_fields(int(entry.name))
        if fields is None or len(fields) < 4:
            continue
        children.setdefault(int(fields[3]), []).append(int(entry.name))
    found: list[int] = []
    todo = [pid]
    while todo:
        current = todo.pop()
        if current in found:
            continue
        found.append(current)
        todo.extend(children.get(current, []))
    return [p for p in found if Path(f"/proc/{p}").exists()]


def cpu_seconds(pids: Iterable[int]) -> float:
    """User + system CPU of the processes (all their threads) and their reaped children."""
    ticks = 0
    for pid in pids:
        fields = _stat_fields(pid)
        if fields is None or len(fields) < 17:
            continue
        ticks += sum(int(fields[i]) for i in (13, 14, 15, 16))
    return ticks / _CLK_TCK


def _status_kb(pid: int, key: str) -> int | None:
    try:
        text = Path(f"/proc/{pid}/status").read_text(encoding="ascii", errors="replace")
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return None


def rss_kb(pids: Iterable[int]) -> int | None:
    """Current resident set size (``VmRSS``) summed over the processes, in KiB."""
    values = [v for v in (_status_kb(p, "VmRSS") for p in pids) if v is not None]
    return sum(values) if values else None


def peak_rss_kb(pids: Iterable[int]) -> int | None:
    """Peak resident set size (``VmHWM``) summed over the processes, in KiB."""
    values = [v for v in (_status_kb(p, "VmHWM") for p in pids) if v is not None]
    return sum(values) if values else None


def machine_info(note: str) -> dict[str, str]:
    """CPU count and model, memory and kernel of this machine, for a report; ``note`` last."""
    model = "unknown"
    memory = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("MemTotal:"):
                memory = f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
    return {
        "nproc": str(os.cpu_count()),
        "CPU": model,
        "memory": memory,
        "kernel": platform.release(),
        "note": note,
    }


# --------------------------------------------------------------------------------- pgbench


def pgbench_command(
    pgbench: str,
    *,
    host: str,
    port: int,
    user: str,
    database: str,
    workload: Workload,
    clients: int,
    duration: float,
    log_prefix: Path | None,
) -> list[str]:
    """The pgbench command line for one run (``-n``: no vacuum, proxies may not allow it)."""
    command = [
        pgbench,
        "-h",
        host,
        "-p",
        str(port),
        "-U",
        user,
        "-n",
        "-M",
        workload.protocol,
        "-c",
        str(clients),
        "-j",
        str(max(1, min(2, clients))),
        "-T",
        str(max(1, math.ceil(duration))),
    ]
    if workload.select:
        command.append("-S")
    if workload.connect:
        command.append("-C")
    if log_prefix is not None:
        command += ["-l", f"--log-prefix={log_prefix}"]
    command.append(database)
    return command


_TPS = re.compile(r"^tps = ([0-9.]+)", re.MULTILINE)
_PROCESSED = re.compile(r"^number of transactions actually processed: (\d+)", re.MULTILINE)
_FAILED = re.compile(r"^number of failed transactions: (\d+)", re.MULTILINE)
_CONNECT = re.compile(r"^average connection time = ([0-9.]+) ms", re.MULTILINE)
_ABORTED = re.compile(r"client \d+ aborted|aborted in command", re.IGNORECASE)


def parse_pgbench_summary(stdout: str, stderr: str, returncode: int) -> PgbenchResult:
    """Parse pgbench's summary; a non-zero exit or missing ``tps`` line makes an error result.

    pgbench exits with status 2 when a client aborted ("Run was aborted; the above results are
    incomplete"), so such a run is reported with the first error line, not as a TPS figure.
    """
    result = PgbenchResult(command=[])
    tps = _TPS.search(stdout)
    processed = _PROCESSED.search(stdout)
    failed = _FAILED.search(stdout)
    result.transactions = int(processed.group(1)) if processed else 0
    result.failed = int(failed.group(1)) if failed else 0
    connect = _CONNECT.search(stdout)
    result.connect_ms = float(connect.group(1)) if connect else None
    lines = [line for line in stderr.splitlines() if line.strip()]
    result.aborted_clients = sum(1 for line in lines if _ABORTED.search(line))
    result.stderr_tail = lines[-5:]
    if returncode != 0 or tps is None:
        errors = [line for line in lines if "error" in line.lower() or "fatal" in line.lower()]
        first = (errors or lines or [f"pgbench exited with status {returncode}"])[0]
        result.error = first.strip()
        return result
    result.tps = float(tps.group(1))
    return result


def parse_latency_lines(lines: Iterable[str]) -> list[int]:
    """Latencies in microseconds from pgbench per-transaction log lines (failed ones skipped)."""
    values: list[int] = []
    for line in lines:
        parts = line.split()
        if len(parts) >= 3 and parts[2].isdigit():
            values.append(int(parts[2]))
    return values


def percentile(sorted_values: Sequence[int], q: float) -> float | None:
    """Nearest-rank percentile ``q`` (0-100) of an ascending sequence; ``None`` when empty."""
    if not sorted_values:
        return None
    rank = max(1, math.ceil(q / 100 * len(sorted_values)))
    return float(sorted_values[min(rank, len(sorted_values)) - 1])


def _read_latencies(log_dir: Path) -> list[int]:
    values: list[int] = []
    for path in sorted(log_dir.iterdir()):
        with path.open(encoding="ascii", errors="replace") as handle:
            values.extend(parse_latency_lines(handle))
    return values


def run_pgbench(
    command: list[str],
    *,
    env: Mapping[str, str],
    duration: float,
    log_dir: Path | None,
    proxy_pids: Sequence[int],
) -> PgbenchResult:
    """Run pgbench once, bounded by ``duration`` plus a grace period, and measure the proxy.

    The proxy's CPU (``proxy_pids`` and their descendants) is sampled right before and after
    the run; CPU per transaction counts both completed and failed transactions.
    """
    tree_before = [d for pid in proxy_pids for d in descendants(pid)]
    cpu_before = cpu_seconds(tree_before)
    started = time.monotonic()
    proc = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=dict(env),
        start_new_session=True,
    )
    try:
        stdout, stderr = proc.communicate(timeout=duration + _RUN_GRACE)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGKILL)
        stdout, stderr = proc.communicate()
        stderr += f"\nerror: pgbench did not finish within {duration + _RUN_GRACE:.0f}s"
        returncode = -9
    except BaseException:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        raise
    else:
        returncode = proc.returncode
    elapsed = time.monotonic() - started
    tree_after = [d for pid in proxy_pids for d in descendants(pid)]
    cpu_after = cpu_seconds(set(tree_before) | set(tree_after))
    result = parse_pgbench_summary(stdout, stderr, returncode)
    result.command = command
    result.elapsed_s = elapsed
    if proxy_pids:
        done = result.transactions + result.failed
        if done > 0:
            result.cpu_us_per_tx = (cpu_after - cpu_before) * 1e6 / done
    if log_dir is not None and log_dir.is_dir():
        latencies = _read_latencies(log_dir)
        latencies.sort()
        result.p50_ms = _ms(percentile(latencies, 50))
        result.p99_ms = _ms(percentile(latencies, 99))
        shutil.rmtree(log_dir, ignore_errors=True)
    return result


def _ms(value: float | None) -> float | None:
    return None if value is None else value / 1000.0


# --------------------------------------------------------------------------------- idle clients


async def _hold_idle(
    host: str,
    port: int,
    user: str,
    password: str,
    database: str,
    clients: int,
    pids: Sequence[int],
    result: IdleResult,
    settle: float,
) -> None:
    import asyncpg

    gate = asyncio.Semaphore(64)
    connections: list[asyncpg.Connection] = []
    errors: list[str] = []

    async def one() -> None:
        async with gate:
            try:
                conn = await asyncpg.connect(
                    host=host,
                    port=port,
                    user=user,
                    password=password,
                    database=database,
                    timeout=30,
                    ssl=False,
                )
            except (TimeoutError, OSError, asyncpg.PostgresError) as exc:
                errors.append(f"{type(exc).__name__}: {exc}")
            else:
                connections.append(conn)

    try:
        await asyncio.gather(*(one() for _ in range(clients)))
        # Let the proxy finish per-connection bookkeeping before sampling RSS.
        await asyncio.sleep(settle)
        result.connected = len(connections)
        result.rss_after_kb = rss_kb([d for pid in pids for d in descendants(pid)])
        if errors:
            result.error = f"{len(errors)} of {clients} logins failed: {errors[0].splitlines()[0]}"
    finally:
        for conn in connections:
            conn.terminate()


def measure_idle_clients(
    *,
    host: str,
    port: int,
    user: str,
    password: str,
    database: str,
    clients: int,
    pids: Sequence[int],
    timeout: float = 300.0,
    settle: float = 1.0,
) -> IdleResult:
    """Open ``clients`` authenticated connections (full startup + SCRAM), hold them idle, and
    report the proxy's RSS before and after; every connection is closed before returning."""
    result = IdleResult(clients=clients)
    result.rss_before_kb = rss_kb([d for pid in pids for d in descendants(pid)])
    try:
        asyncio.run(
            asyncio.wait_for(
                _hold_idle(host, port, user, password, database, clients, pids, result, settle),
                timeout,
            )
        )
    except TimeoutError:
        result.error = f"timed out after {timeout:.0f}s with {result.connected} clients"
    return result
