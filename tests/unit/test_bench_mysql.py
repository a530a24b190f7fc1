"""The MySQL part of the macro benchmark: sysbench output, summaries, the report section,
splicing it into docs/benchmarks.md, and the issue-#12 refusal turned into "not available yet"."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

# bench/ is a top-level directory of the checkout, not part of the installed package: make it
# importable however pytest is started (`make test` puts only the compiled build on the path).
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bench.mysql_report import (
    BEGIN,
    END,
    NOT_YET,
    MysqlCase,
    MysqlMeta,
    MysqlRecord,
    MysqlTargetInfo,
    render_mysql_section,
    splice,
    summarize_mysql,
)
from bench.mysql_targets import (
    MYSQL_DEFAULT_TARGETS,
    MYSQL_TARGETS,
    TargetUnavailable,
    check_config,
    mysql_config_text,
)
from bench.sysbench import (
    SysbenchResult,
    SysbenchTables,
    SysbenchWorkload,
    parse_sysbench_output,
    sysbench_command,
)
from bench.targets import TargetError
from dbbalancer.config.loader import parse_config

# sysbench 1.0.20's summary of a real oltp_read_only run (16 queries per transaction).
SUMMARY = """\
sysbench 1.0.20 (using system LuaJIT 2.1.0-beta3)

Running the test with following options:
Number of threads: 16

Threads started!

SQL statistics:
    queries performed:
        read:                            22624
        write:                           0
        other:                           3232
        total:                           25856
    transactions:                        1616   (536.52 per sec.)
    queries:                             25856  (8584.32 per sec.)
    ignored errors:                      2      (0.66 per sec.)
    reconnects:                          1      (0.33 per sec.)

General statistics:
    total time:                          3.0108s
    total number of events:              1616

Latency (ms):
         min:                                    1.71
         avg:                                   29.72
         max:                                  121.35
         95th percentile:                       62.19
         sum:                                48029.27
"""


def test_parse_summary_reads_rates_errors_and_p95() -> None:
    result = parse_sysbench_output(SUMMARY, "", 0)
    assert result.ok
    assert (result.transactions, result.queries) == (1616, 25856)
    assert (result.tps, result.qps) == (536.52, 8584.32)
    assert (result.ignored_errors, result.reconnects, result.errors) == (2, 1, 3)
    assert result.p95_ms == 62.19


def test_parse_fatal_run_is_an_error_with_the_server_message() -> None:
    stderr = (
        "FATAL: unable to connect to MySQL server on host '127.0.0.1', port 1, aborting...\n"
        "FATAL: error 2002: Can't connect to server on '127.0.0.1' (115)\n"
    )
    result = parse_sysbench_output("sysbench 1.0.20\n", stderr, 1)
    assert not result.ok
    assert result.error is not None
    assert result.error.startswith("FATAL: unable to connect to MySQL server")


def test_parse_nonzero_exit_after_a_summary_is_still_an_error() -> None:
    result = parse_sysbench_output(SUMMARY, "", 1)
    assert not result.ok
    assert result.error == "sysbench exited with status 1"


def test_run_command_is_bounded_in_time() -> None:
    command = sysbench_command(
        "sysbench",
        test="oltp_point_select",
        host="127.0.0.1",
        port=4000,
        user="app",
        password="app",
        database="app",
        tables=SysbenchTables(4, 10000),
        threads=64,
        duration=4.6,
    )
    assert command[:2] == ["sysbench", "oltp_point_select"]
    assert command[-1] == "run"
    for option in ("--threads=64", "--time=5", "--events=0", "--mysql-port=4000", "--tables=4"):
        assert option in command
    with pytest.raises(ValueError, match="threads and a duration"):
        sysbench_command(
            "sysbench",
            test="oltp_point_select",
            host="h",
            port=1,
            user="u",
            password="p",
            database="d",
            tables=SysbenchTables(1, 1),
        )


POINT = MysqlCase(SysbenchWorkload("sysbench-point-select", "oltp_point_select"), 16)


def _result(
    tps: float | None, cpu: float | None = 10.0, error: str | None = None
) -> SysbenchResult:
    return SysbenchResult(
        command=[],
        tps=tps,
        qps=None if tps is None else tps * 2,
        transactions=0 if tps is None else int(tps),
        p95_ms=None if tps is None else 1.5,
        cpu_us_per_tx=cpu,
        error=error,
        ignored_errors=1,
    )


def test_summary_takes_medians_ratios_to_direct_and_counts_failed_runs() -> None:
    records = [
        MysqlRecord("mysql-direct", POINT, 1, _result(1000.0, cpu=None)),
        MysqlRecord("mysql-direct", POINT, 2, _result(3000.0, cpu=None)),
        MysqlRecord("mysql-haproxy", POINT, 1, _result(900.0, cpu=20.0)),
        MysqlRecord("mysql-haproxy", POINT, 2, _result(None, error="FATAL: lost")),
    ]
    summaries = summarize_mysql(records, ["mysql-direct", "mysql-haproxy"], [POINT])
    direct = summaries[(POINT.label, "mysql-direct")]
    haproxy = summaries[(POINT.label, "mysql-haproxy")]
    assert (direct.tps, direct.qps, direct.ratio_direct) == (2000.0, 4000.0, 1.0)
    assert haproxy.tps == 900.0
    assert haproxy.ratio_direct == pytest.approx(0.45)
    assert haproxy.cpu_us_per_tx == 20.0
    assert (haproxy.runs, haproxy.ok_runs) == (2, 1)
    # One ignored error per run plus one for the run that did not complete.
    assert haproxy.errors == 3
    assert haproxy.error == "FATAL: lost"


def _meta() -> MysqlMeta:
    return MysqlMeta(
        command="python -m bench.run --no-postgres",
        scope="reduced",
        started="today",
        wall_seconds=60.0,
        machine={"nproc": "2"},
        versions={"sysbench": "1.0.20"},
        settings={"rounds": "1"},
        sysbench_commands=["sysbench oltp_point_select ... run"],
    )


def test_section_reports_the_unavailable_target_instead_of_failing() -> None:
    targets = ["mysql-direct", "mysql-dbbalancer-transaction-rw"]
    records = [MysqlRecord("mysql-direct", POINT, 1, _result(1000.0, cpu=None))]
    infos = {
        "mysql-direct": MysqlTargetInfo("mysql-direct"),
        "mysql-dbbalancer-transaction-rw": MysqlTargetInfo(
            "mysql-dbbalancer-transaction-rw",
            start_error=f"{NOT_YET}: dbbalancer refuses clusters[0].pool_mode",
            unavailable=True,
        ),
    }
    text = render_mysql_section(
        _meta(), [POINT], targets, summarize_mysql(records, targets, [POINT]), infos
    )
    assert text.startswith(BEGIN)
    assert text.rstrip().endswith(END)
    assert "| mysql-direct | 1000 | 2000 | 1.00x | 1.50 | 1 | n/a | 1/1 |" in text
    row = [line for line in text.splitlines() if line.startswith("| mysql-dbbalancer-trans")]
    assert row[-1].endswith(f"| 0/0 | {NOT_YET} |")
    assert "failed" not in row[-1]
    assert "What HAProxy can and cannot split" in text


def test_splice_keeps_the_other_part() -> None:
    postgres_v1, postgres_v2 = "# Benchmarks\n\nPG one\n", "# Benchmarks\n\nPG two\n"
    mysql_v1 = f"{BEGIN}\n## MySQL\nM one\n{END}\n"
    mysql_v2 = f"{BEGIN}\n## MySQL\nM two\n{END}\n"
    both = splice(None, postgres_v1, mysql_v1)
    assert both == postgres_v1 + "\n" + mysql_v1
    # A PostgreSQL-only run keeps the MySQL section, a MySQL-only run the PostgreSQL report.
    assert splice(both, postgres_v2, None) == postgres_v2 + "\n" + mysql_v1
    assert splice(both, None, mysql_v2) == postgres_v1 + "\n" + mysql_v2
    # A document without a MySQL section (written before it existed) gains one at the end.
    assert splice(postgres_v1, None, mysql_v1) == both
    assert splice(None, None, mysql_v1) == "# Benchmarks\n\n" + mysql_v1
    assert splice(both, postgres_v2, mysql_v2).count(BEGIN) == 1


def _config(name: str) -> str:
    return mysql_config_text(
        MYSQL_TARGETS[name].spec,
        port=4000,
        user="app",
        password="app",
        database="app",
        servers=[
            ("primary", "127.0.0.1:40001", "primary"),
            ("replica1", "127.0.0.1:40002", "replica"),
            ("replica2", "127.0.0.1:40003", "replica"),
        ],
        session_pool_size=72,
    )


def test_session_target_config_is_valid() -> None:
    text = _config("mysql-dbbalancer-session")
    config = parse_config(text)
    check_config(text, "session.toml")
    (cluster,) = config.clusters
    assert cluster.protocol.value == "mysql"
    assert cluster.pool_size == 72
    assert len(cluster.servers) == 3


def test_transaction_rw_target_runs_or_is_not_available_yet() -> None:
    """Until issue #12 lands, validation refuses the target: that is "not available yet",
    never a failure; once validation accepts it, the target runs."""
    spec = MYSQL_TARGETS["mysql-dbbalancer-transaction-rw"].spec
    assert (spec.pool_mode, spec.read_write_split) == ("transaction", True)
    text = _config("mysql-dbbalancer-transaction-rw")
    refusal: TargetUnavailable | None = None
    try:
        check_config(text, "transaction-rw.toml")
    except TargetUnavailable as exc:
        refusal = exc
    if refusal is not None:
        assert str(refusal).startswith(NOT_YET)
        assert "read_write_split" in str(refusal)


def test_other_config_problems_are_failures_not_unavailability() -> None:
    text = _config("mysql-dbbalancer-session")
    broken = text.replace('pool_mode = "session"', 'pool_mode = "session"\npool_sise = 3')
    with pytest.raises(TargetError) as info:
        check_config(broken, "broken.toml")
    assert not isinstance(info.value, TargetUnavailable)
    assert "pool_sise" in str(info.value)


def test_default_targets_leave_out_the_replica_port() -> None:
    assert "mysql-haproxy-replicas" in MYSQL_TARGETS
    assert MYSQL_DEFAULT_TARGETS == [
        "mysql-direct",
        "mysql-haproxy",
        "mysql-dbbalancer-session",
        "mysql-dbbalancer-transaction-rw",
    ]
