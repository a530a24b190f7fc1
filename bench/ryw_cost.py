"""Cost of read_your_writes = true per write transaction.

`python -m bench.ryw_cost`: a local primary with two replicas, dbbalancer in transaction pooling
with read/write splitting, and pgbench running single-row INSERTs (8 clients, 5 s), 3 rounds
each with read_your_writes off and on. Prints the median TPS and dbbalancer's own CPU
microseconds per transaction (utime + stime from /proc/PID/stat).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from statistics import median

from dbbalancer.testing.configs import cluster_config
from dbbalancer.testing.pgcluster import PgCluster
from dbbalancer.testing.ports import free_port

SCRIPT = (
    "\\set k random(1, 1000000000)\nINSERT INTO ryw_bench VALUES (:k) ON CONFLICT DO NOTHING;\n"
)
ROUNDS = 3


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().split(")")[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_once(cluster: PgCluster, work: Path, ryw: bool) -> tuple[float, float]:
    """(TPS, proxy CPU us per transaction) of one 5 s pgbench run."""
    port = free_port()
    config = work / "dbbalancer.toml"
    config.write_text(
        '[general]\nlog_level = "warning"\n'
        + cluster_config(
            cluster,
            listen=f"127.0.0.1:{port}",
            mode="transaction",
            split=True,
            extra=f"read_your_writes = {'true' if ryw else 'false'}",
        )
    )
    proc = subprocess.Popen([sys.executable, "-m", "dbbalancer", "run", "-c", str(config)])
    try:
        time.sleep(2)
        before = cpu_seconds(proc.pid)
        env = {**os.environ, "PGPASSWORD": cluster.password}
        result = subprocess.run(
            ["pgbench", "-f", str(work / "ryw.sql"), "-c", "8", "-j", "2", "-T", "5", "-n",
             "-h", "127.0.0.1", "-p", str(port), "-U", cluster.user, "main"],
            env=env, capture_output=True, text=True, check=True, timeout=60,
        )  # fmt: skip
        spent = cpu_seconds(proc.pid) - before
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(20)
    lines = result.stdout.splitlines()
    done = int(next(x for x in lines if "actually processed" in x).split(":")[1].split("/")[0])
    tps = float(next(x for x in lines if x.startswith("tps")).split("=")[1].split()[0])
    return tps, spent / done * 1e6


def main() -> int:
    """Run the comparison and print it."""
    with tempfile.TemporaryDirectory() as tmp, PgCluster(replicas=2) as cluster:
        work = Path(tmp)
        (work / "ryw.sql").write_text(SCRIPT)
        cluster.sql(
            cluster.primary,
            "CREATE TABLE ryw_bench (k int PRIMARY KEY); GRANT ALL ON ryw_bench TO app",
        )
        results: dict[bool, list[tuple[float, float]]] = {False: [], True: []}
        for _ in range(ROUNDS):
            for ryw in (False, True):
                results[ryw].append(run_once(cluster, work, ryw))
        for ryw, runs in results.items():
            tps = median(r[0] for r in runs)
            cpu = median(r[1] for r in runs)
            print(f"read_your_writes = {str(ryw).lower():5}: {tps:8.0f} TPS, {cpu:5.1f} us CPU/tx")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
