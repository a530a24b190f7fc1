"""The compiled build (setup.py, mypyc) is what `make test` runs against."""

from __future__ import annotations

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
