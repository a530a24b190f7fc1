"""Fixtures that start real PostgreSQL and MariaDB clusters for the integration tests.

Every test under this directory gets the ``integration`` marker, so ``pytest -m "not
integration"`` runs the fast suite alone. Missing server binaries make the fixtures fail with
the hint to run ``make setup``: a CI job must never skip these tests silently. A failing test's
report carries the server log tails of every cluster it used, the way PgBouncer's test suite
prints the server logs on failure.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Generator, Iterator
from pathlib import Path
from typing import Any

import pytest

from dbbalancer.testing.mariadbcluster import MariaDbCluster
from dbbalancer.testing.pgcluster import PgCluster

_HERE = Path(__file__).parent
AnyCluster = PgCluster | MariaDbCluster
_CLUSTERS = pytest.StashKey[list[AnyCluster]]()

ClusterFactory = Callable[..., PgCluster]
MariaDbClusterFactory = Callable[..., MariaDbCluster]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark every test collected from this directory as ``integration``."""
    for item in items:
        if item.path.is_relative_to(_HERE):
            item.add_marker(pytest.mark.integration)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Attach the server log tails of the test's clusters to a failed test's report."""
    report = yield
    if report.failed:
        stashed: list[AnyCluster] = item.stash.get(_CLUSTERS, [])
        clusters = list(stashed)
        funcargs: dict[str, Any] = getattr(item, "funcargs", {})
        clusters.extend(v for v in funcargs.values() if isinstance(v, PgCluster | MariaDbCluster))
        for index, cluster in enumerate(dict.fromkeys(clusters)):
            try:
                tails = cluster.log_tails()
            except Exception as exc:  # the cluster may not have started at all
                tails = f"(no logs: {exc})"
            kind = "PostgreSQL" if isinstance(cluster, PgCluster) else "MariaDB"
            report.sections.append((f"{kind} logs (cluster {index})", tails))
    return report


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[PgCluster]:
    """A started primary with two streaming hot standbys, shared by the whole session."""
    cluster = PgCluster(replicas=2)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def pg_cluster_factory(request: pytest.FixtureRequest) -> Iterator[ClusterFactory]:
    """Start private clusters for tests that change topology; all are stopped at teardown."""
    started = request.node.stash.setdefault(_CLUSTERS, [])
    with contextlib.ExitStack() as stack:

        def make(**kwargs: Any) -> PgCluster:
            cluster = PgCluster(**kwargs)
            started.append(cluster)
            stack.callback(cluster.stop)
            return cluster.start()

        yield make


@pytest.fixture(scope="session")
def mariadb_cluster() -> Iterator[MariaDbCluster]:
    """A started MariaDB primary with two GTID replicas, shared by the whole session."""
    cluster = MariaDbCluster(replicas=2)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def mariadb_cluster_factory(request: pytest.FixtureRequest) -> Iterator[MariaDbClusterFactory]:
    """Start private MariaDB clusters for tests that change topology or delays; all are
    stopped at teardown."""
    started = request.node.stash.setdefault(_CLUSTERS, [])
    with contextlib.ExitStack() as stack:

        def make(**kwargs: Any) -> MariaDbCluster:
            cluster = MariaDbCluster(**kwargs)
            started.append(cluster)
            stack.callback(cluster.stop)
            return cluster.start()

        yield make
