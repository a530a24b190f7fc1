"""core/ knows no protocol: its modules import no protocol, config, web or metrics package.

Arrows run protocols -> core <- admin/web (the style guide, "The shape"). The check reads each
module's imports with ast, including those under `if TYPE_CHECKING:` and inside functions, so
an import cannot hide from it.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src"
CORE = SRC / "dbbalancer" / "core"

# Packages core/ must not import (a module of one is refused as well).
FORBIDDEN = (
    # protocols
    "dbbalancer.postgres",
    "dbbalancer.mysql",
    # configuration: core takes plain values and its own types
    "dbbalancer.config",
    # the layers above core
    "dbbalancer.admin",
    "dbbalancer.web",
    "dbbalancer.app",
    "dbbalancer.cli",
    # web frameworks and servers
    "aiohttp",
    "starlette",
    "fastapi",
    "uvicorn",
    "flask",
    "jinja2",
    # metrics
    "prometheus_client",
    # no sockets in core: the protocol packages own the transports
    "socket",
    "ssl",
)


def module_name(path: Path) -> str:
    """The dotted name of a module under src/."""
    parts = path.relative_to(SRC).with_suffix("").parts
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def imported_modules(source: str, module: str, *, is_package: bool = False) -> set[str]:
    """Every module `source` (the text of `module`) imports, relative imports made absolute."""
    package = module if is_package else module.rpartition(".")[0]
    names: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                prefix = ".".join(base)
                target = f"{prefix}.{node.module}" if node.module else prefix
            else:
                assert node.module is not None
                target = node.module
            names.add(target)
            # `from dbbalancer import config` imports the config package itself.
            names.update(f"{target}.{alias.name}" for alias in node.names)
    return names


def forbidden(names: set[str]) -> list[str]:
    """The names among `names` that are, or are inside, a FORBIDDEN package."""
    return sorted(
        name for name in names for bad in FORBIDDEN if name == bad or name.startswith(bad + ".")
    )


def core_modules() -> list[Path]:
    return sorted(CORE.rglob("*.py"))


def test_core_has_modules() -> None:
    assert len(core_modules()) > 5


@pytest.mark.parametrize("path", core_modules(), ids=lambda p: p.name)
def test_core_module_imports_no_outer_layer(path: Path) -> None:
    names = imported_modules(
        path.read_text("utf-8"), module_name(path), is_package=path.name == "__init__.py"
    )
    assert not forbidden(names), f"{module_name(path)} imports {forbidden(names)}"


@pytest.mark.parametrize(
    "source",
    [
        "import dbbalancer.postgres.codec",
        "from dbbalancer.postgres import codec",
        "from dbbalancer import config",
        "from dbbalancer.config import PoolMode",
        "from ..config import PoolMode",
        "from .. import mysql",
        "import prometheus_client as prom",
        "from prometheus_client import Counter",
        "from dbbalancer.web.app import routes",
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from dbbalancer.config import X",
        "def f():\n    import socket",
    ],
)
def test_the_check_sees_forbidden_imports(source: str) -> None:
    assert forbidden(imported_modules(source, "dbbalancer.core.example"))


@pytest.mark.parametrize(
    "source",
    [
        "import asyncio",
        "from dbbalancer.core.pool import Pool",
        "from .topology import Server",
        "from . import health",
        "from dbbalancer.configure_me import nothing",  # a prefix of a name is not the package
    ],
)
def test_the_check_allows_core_and_the_standard_library(source: str) -> None:
    assert not forbidden(imported_modules(source, "dbbalancer.core.example"))
