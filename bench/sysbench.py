"""sysbench runs for the MySQL part of the macro benchmark: command lines, output, proxy CPU.

sysbench 1.0 prints a summary after each run ("SQL statistics" / "General statistics" /
"Latency (ms)"): transactions and queries with their rates per second, ``ignored errors`` (the
errors listed in ``--mysql-ignore-errors``, after which the transaction is retried) and
``reconnects``, then the latency percentile asked for with ``--percentile`` (95 by default),
which sysbench reads off its own logarithmic latency histogram, so it is approximate. An error
that is not ignored stops the run with a ``FATAL:`` line and a non-zero exit status.

Proxy CPU per transaction is measured as for pgbench (:mod:`bench.measure`): the proxy process
tree's user+system time over the run, divided by the transactions it served.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from bench.measure import cpu_seconds, descendants

__all__ = [
    "SysbenchResult",
    "SysbenchTables",
    "SysbenchWorkload",
    "parse_sysbench_output",
    "run_sysbench",
    "sysbench_command",
]

_RUN_GRACE = 60.0


@dataclass(frozen=True)
class SysbenchWorkload:
    """One sysbench workload: ``test`` is the bundled Lua script (``oltp_point_select``, ...)."""

    name: str
    test: str


@dataclass(frozen=True)
class SysbenchTables:
    """The tables every workload reads: ``sbtest1`` .. ``sbtest<tables>``, ``size`` rows each."""

    tables: int
    size: int


@dataclass
class SysbenchResult:
    """The outcome of one sysbench run; ``error`` is set when it did not complete."""

    command: list[str]
    tps: float | None = None
    qps: float | None = None
    transactions: int = 0
    queries: int = 0
    ignored_errors: int = 0
    reconnects: int = 0
    p95_ms: float | None = None
    cpu_us_per_tx: float | None = None
    elapsed_s: float = 0.0
    error: str | None = None
    stderr_tail: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Whether the run completed (sysbench exited 0 and printed its summary)."""
        return self.error is None and self.tps is not None

    @property
    def errors(self) -> int:
        """Errors sysbench met but survived: ignored errors plus reconnects."""
        return self.ignored_errors + self.reconnects


def sysbench_command(
    sysbench: str,
    *,
    test: str,
    host: str,
    port: int,
    user: str,
    password: str,
    database: str,
    tables: SysbenchTables,
    threads: int | None = None,
    duration: float | None = None,
    action: str = "run",
) -> list[str]:
    """The sysbench command line for ``action`` (``prepare`` or ``run``) of ``test``.

    ``run`` needs ``threads`` and ``duration`` (``--time``, whole seconds); ``--events=0`` lets
    time alone end the run, ``--report-interval=0`` keeps only the final summary.
    """
    command = [
        sysbench,
        test,
        "--db-driver=mysql",
        f"--mysql-host={host}",
        f"--mysql-port={port}",
        f"--mysql-user={user}",
        f"--mysql-password={password}",
        f"--mysql-db={database}",
        f"--tables={tables.tables}",
        f"--table-size={tables.size}",
    ]
    if action == "run":
        if threads is None or duration is None:
            raise ValueError("a sysbench run needs threads and a duration")
        command += [
            f"--threads={threads}",
            f"--time={max(1, round(duration))}",
            "--events=0",
            "--report-interval=0",
            "--percentile=95",
        ]
    command.append(action)
    return command


_RATE = r"\s+(\d+)\s+\(([0-9.]+) per sec\.\)"
_TRANSACTIONS = re.compile(r"^\s*transactions:" + _RATE, re.MULTILINE)
_QUERIES = re.compile(r"^\s*queries:" + _RATE, re.MULTILINE)
_IGNORED = re.compile(r"^\s*ignored errors:\s+(\d+)", re.MULTILINE)
_RECONNECTS = re.compile(r"^\s*reconnects:\s+(\d+)", re.MULTILINE)
_P95 = re.compile(r"^\s*95th percentile:\s+([0-9.]+)", re.MULTILINE)


def parse_sysbench_output(stdout: str, stderr: str, returncode: int) -> SysbenchResult:
    """Parse sysbench's summary; a non-zero exit or a missing summary makes an error result.

    The error is the first ``FATAL``/``error`` line of either stream (sysbench prints the
    server's message there, e.g. ``FATAL: unable to connect to MySQL server ...``).
    """
    result = SysbenchResult(command=[])
    transactions = _TRANSACTIONS.search(stdout)
    queries = _QUERIES.search(stdout)
    if transactions:
        result.transactions = int(transactions.group(1))
    if queries:
        result.queries = int(queries.group(1))
    ignored = _IGNORED.search(stdout)
    reconnects = _RECONNECTS.search(stdout)
    result.ignored_errors = int(ignored.group(1)) if ignored else 0
    result.reconnects = int(reconnects.group(1)) if reconnects else 0
    lines = [line.strip() for line in (stdout + "\n" + stderr).splitlines() if line.strip()]
    result.stderr_tail = [line.strip() for line in stderr.splitlines() if line.strip()][-5:]
    if returncode != 0 or transactions is None or queries is None:
        errors = [line for line in lines if "fatal" in line.lower() or "error" in line.lower()]
        errors = [line for line in errors if not line.startswith("ignored errors:")]
        tail = result.stderr_tail or [f"sysbench exited with status {returncode}"]
        result.error = (errors or tail)[0]
        return result
    result.tps = float(transactions.group(2))
    result.qps = float(queries.group(2))
    p95 = _P95.search(stdout)
    result.p95_ms = float(p95.group(1)) if p95 else None
    return result


def run_sysbench(
    command: list[str],
    *,
    duration: float,
    proxy_pids: Sequence[int],
) -> SysbenchResult:
    """Run sysbench once, bounded by ``duration`` plus a grace period, and measure the proxy.

    The proxy's CPU (``proxy_pids`` and their descendants) is sampled right before and after
    the run; CPU per transaction divides it by the transactions sysbench completed.
    """
    tree_before = [d for pid in proxy_pids for d in descendants(pid)]
    cpu_before = cpu_seconds(tree_before)
    started = time.monotonic()
    proc = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        stdout, stderr = proc.communicate(timeout=duration + _RUN_GRACE)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGKILL)
        stdout, stderr = proc.communicate()
        stderr += f"\nerror: sysbench did not finish within {duration + _RUN_GRACE:.0f}s"
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
    result = parse_sysbench_output(stdout, stderr, returncode)
    result.command = command
    result.elapsed_s = elapsed
    if proxy_pids and result.transactions > 0:
        result.cpu_us_per_tx = (cpu_after - cpu_before) * 1e6 / result.transactions
    return result
