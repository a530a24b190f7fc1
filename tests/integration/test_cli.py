"""The `dbbalancer` command: check, run (signals), demo, help."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psycopg
import pytest

from dbbalancer.testing.pgcluster import PgCluster
from dbbalancer.testing.ports import free_port

BIN = [sys.executable, "-m", "dbbalancer"]


def run_cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*BIN, *args], capture_output=True, text=True, timeout=timeout, check=False
    )


def test_help_everywhere() -> None:
    for args in ((), ("run",), ("check",), ("demo",)):
        result = run_cli(*args, "--help")
        assert result.returncode == 0, result.stderr
        assert "usage: dbbalancer" in result.stdout


def test_check_accepts_a_good_file_and_lists_every_error(tmp_path: Path) -> None:
    good = tmp_path / "good.toml"
    good.write_text(
        '[listen]\npostgres = "127.0.0.1:6432"\n'
        '[[users]]\nname = "app"\npassword = "s3cret-pw"\n'
        '[[clusters]]\nname = "main"\n'
        '[[clusters.servers]]\naddress = "127.0.0.1:15432"\nrole = "primary"\n'
    )
    result = run_cli("check", "-c", str(good))
    assert result.returncode == 0, result.stderr
    assert "main" in result.stdout
    assert "OK" in result.stdout
    assert "app" in result.stdout
    assert "s3cret-pw" not in result.stdout

    bad = tmp_path / "bad.toml"
    bad.write_text(
        '[listen]\npostgres = "127.0.0.1:6432"\n'
        '[[users]]\nname = "app"\npassword = "app"\nauth = "kerberos"\n'
        '[[clusters]]\nname = "main"\npool_sise = 3\n'
        '[[clusters.servers]]\naddress = "127.0.0.1:15432"\nrole = "master"\n'
    )
    result = run_cli("check", "-c", str(bad))
    assert result.returncode == 1
    assert "users[0].auth" in result.stderr
    assert "clusters[0].pool_sise" in result.stderr
    assert "pool_size" in result.stderr
    assert "clusters[0].servers[0].role" in result.stderr


def test_check_missing_file(tmp_path: Path) -> None:
    result = run_cli("check", "-c", str(tmp_path / "nope.toml"))
    assert result.returncode == 1
    assert "nope.toml" in result.stderr


def test_run_serves_reloads_and_stops_on_sigterm(pg_cluster: PgCluster, tmp_path: Path) -> None:
    port = free_port()
    config = tmp_path / "dbbalancer.toml"
    config.write_text(
        f'[listen]\npostgres = "127.0.0.1:{port}"\n'
        f'[[users]]\nname = "{pg_cluster.user}"\npassword = "{pg_cluster.password}"\n'
        f'[[clusters]]\nname = "main"\ndatabase = "{pg_cluster.database}"\n'
        f'[[clusters.servers]]\naddress = "{pg_cluster.primary.address()}"\nrole = "primary"\n'
    )
    proc = subprocess.Popen(
        [*BIN, "run", "-c", str(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        dsn = f"host=127.0.0.1 port={port} dbname=main user=app password={pg_cluster.password}"
        deadline = time.monotonic() + 20
        while True:
            try:
                with psycopg.connect(dsn, connect_timeout=2) as conn:
                    assert conn.execute("SELECT 1").fetchone() == (1,)
                break
            except psycopg.OperationalError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise
                time.sleep(0.1)
        # SIGHUP with a broken file: logged, never fatal.
        config.write_text(config.read_text() + "\nbogus = 1\n")
        proc.send_signal(signal.SIGHUP)
        time.sleep(0.5)
        assert proc.poll() is None
        with psycopg.connect(dsn) as conn:
            assert conn.execute("SELECT 2").fetchone() == (2,)
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 0, out
    assert "reload" in out
    assert "bogus" in out


@pytest.mark.timeout(180)
def test_demo_runs_once() -> None:
    result = run_cli("demo", "--once", "--port", "0", timeout=170)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "served by" in result.stdout
    assert "psql" in result.stdout
    assert "stopped" in result.stdout


def test_run_refuses_mysql_statement_pooling_clearly(tmp_path: Path) -> None:
    """MySQL clusters take session and transaction pooling; statement pooling is refused."""
    text = (
        '[listen]\nmysql = "127.0.0.1:6033"\n'
        '[[users]]\nname = "app"\npassword = "app"\n'
        '[[clusters]]\nname = "shop"\nprotocol = "mysql"\npool_mode = "{mode}"\n{extra}'
        '[[clusters.servers]]\naddress = "127.0.0.1:13306"\nrole = "primary"\n'
        '[[clusters.servers]]\naddress = "127.0.0.1:13307"\nrole = "replica"\n'
    )
    config = tmp_path / "mysql.toml"
    config.write_text(text.format(mode="statement", extra=""))
    result = run_cli("run", "-c", str(config), timeout=30)
    assert result.returncode != 0
    assert "clusters[0].pool_mode" in result.stderr
    assert "issue #12" in result.stderr
    config.write_text(text.format(mode="transaction", extra="read_write_split = true\n"))
    result = run_cli("check", "-c", str(config))
    assert result.returncode == 0, result.stderr
