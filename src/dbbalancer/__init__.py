"""dbbalancer: one endpoint in front of a database primary and its replicas."""

from __future__ import annotations

import importlib
import importlib.machinery

__version__ = "0.1.0"

# The modules setup.py compiles with mypyc (docs/benchmarks.md, "Compiled build").
COMPILED_MODULES = (
    "dbbalancer.postgres.stream",
    "dbbalancer.postgres.responses",
    "dbbalancer.postgres.framed",
    "dbbalancer.postgres.engine",
    "dbbalancer.postgres.rewrite",
    "dbbalancer.postgres.checkout",
    "dbbalancer.postgres.settle",
    "dbbalancer.postgres.sequencing",
    "dbbalancer.postgres.backend",
    "dbbalancer.postgres.frontend",
    "dbbalancer.postgres.startup",
    "dbbalancer.postgres.params",
    "dbbalancer.postgres.prepared",
    "dbbalancer.postgres.classify",
    "dbbalancer.postgres.sessionstate",
    "dbbalancer.postgres.sequences",
    "dbbalancer.postgres.errors",
    "dbbalancer.postgres.lsn",
    "dbbalancer.core.pool",
    "dbbalancer.core.cluster",
    "dbbalancer.core.balance",
    "dbbalancer.core.routing",
    "dbbalancer.core.statement",
    "dbbalancer.core.classification",
    "dbbalancer.core.errors",
    "dbbalancer.core.position",
    "dbbalancer.core.unitofwork",
    "dbbalancer.mysql.codec",
    "dbbalancer.mysql.backend",
    "dbbalancer.mysql.startup",
    "dbbalancer.mysql.frontend",
    "dbbalancer.mysql.errors",
    "dbbalancer.mysql.engine",
    "dbbalancer.mysql.checkout",
    "dbbalancer.mysql.sessionstate",
)


def compiled_modules() -> list[str]:
    """Those of COMPILED_MODULES that were imported from a compiled extension, not from source."""
    suffixes = tuple(importlib.machinery.EXTENSION_SUFFIXES)
    return [
        name
        for name in COMPILED_MODULES
        if (importlib.import_module(name).__file__ or "").endswith(suffixes)
    ]


def build_kind() -> str:
    """ "compiled" (mypyc), "pure Python", or "partly compiled" (a broken build)."""
    count = len(compiled_modules())
    if count == len(COMPILED_MODULES):
        return "compiled"
    return "pure Python" if count == 0 else "partly compiled"
