"""The compiled build (setup.py, mypyc) is what `make test` runs against."""

from __future__ import annotations

import ast
import importlib
import os
from pathlib import Path

import pytest

import dbbalancer

ROOT = Path(__file__).resolve().parents[2]


def test_every_module_to_compile_exists_in_the_source() -> None:
    for name in dbbalancer.COMPILED_MODULES:
        assert (ROOT / "src" / (name.replace(".", "/") + ".py")).is_file(), name
        importlib.import_module(name)


@pytest.mark.skipif(
    os.environ.get("DBBALANCER_EXPECT_COMPILED") != "1",
    reason="only `make test` (DBBALANCER_EXPECT_COMPILED=1) runs against the compiled build",
)
def test_make_test_runs_the_compiled_modules() -> None:
    missing = set(dbbalancer.COMPILED_MODULES) - set(dbbalancer.compiled_modules())
    assert not missing, f"imported from source, not compiled: {sorted(missing)}"
    assert dbbalancer.build_kind() == "compiled"


def test_compiled_modules_never_reuse_an_exception_name_for_another_type() -> None:
    """`except A as exc: ... except B as exc:` in one function: mypyc gives `exc` one type (A)
    and the compiled code raises TypeError when a B arrives; interpreted Python never notices."""
    clashes = []
    for name in dbbalancer.COMPILED_MODULES:
        path = ROOT / "src" / (name.replace(".", "/") + ".py")
        tree = ast.parse(path.read_text("utf-8"))
        for function in ast.walk(tree):
            if not isinstance(function, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            types: dict[str, set[str]] = {}
            for node in ast.walk(function):
                if isinstance(node, ast.ExceptHandler) and node.name and node.type is not None:
                    types.setdefault(node.name, set()).add(ast.unparse(node.type))
            clashes += [
                f"{name}.{function.name}: {var} as {sorted(kinds)}"
                for var, kinds in types.items()
                if len(kinds) > 1
            ]
    assert not clashes, clashes
