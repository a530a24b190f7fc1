"""mypyc compilation of the proxy's hot-path modules; all package metadata is in pyproject.toml.

* A normal build (``pip install .``, a wheel) compiles the modules below with mypyc into one
  shared library (``dbbalancer__mypyc``) plus one small extension per module. A C compiler and
  the Python headers are needed.
* ``DBBALANCER_COMPILE=0``, or mypyc missing or of an untested version: a pure-Python build.

The development checkout stays pure Python (``make setup`` installs it editable with
``DBBALANCER_COMPILE=0``), so an edit takes effect at once. ``make compile`` builds the compiled
package into build/compiled, which ``make test`` and ``make bench`` put first on PYTHONPATH:
the suite runs against what ships. postgres/codec.py is not compiled: mypyc mistakes the
``ClassVar`` of its message dataclasses for fields (mypyc/mypyc#1122); mysql/codec.py keeps
such constants at module level and is compiled. A compiled class's instances must not be held
by weak references: they are not cleared when the object is freed (docs/performance.md).
"""

from __future__ import annotations

import os
import sys

from setuptools import setup

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "src"))
from dbbalancer import COMPILED_MODULES  # noqa: E402  (the package __init__ imports nothing heavy)

# As paths relative to this file, which is what mypycify takes.
COMPILED = ["src/" + name.replace(".", "/") + ".py" for name in COMPILED_MODULES]

# Type-check options for the compile, independent of [tool.mypy] (whose pydantic plugin need
# not be importable in an isolated build environment).  `make typecheck` remains the strict
# check; the compile only needs the types.  follow-imports=silent: modules that are not
# compiled (the pydantic config models, which need that plugin) are analysed for their types
# but their errors are not reported.
MYPY_OPTIONS = [
    "--config-file",
    os.devnull,
    "--python-version",
    "3.11",
    "--ignore-missing-imports",
    "--follow-imports=silent",
]

# The mypy releases this was tested with (mypyc's output and its known bugs change between
# releases); keep in step with [build-system] requires in pyproject.toml.
MYPY_RANGE = ((2, 4), (2, 5))

# setup.py commands that only produce metadata: no need to run mypyc for them.
_METADATA_ONLY = {"egg_info", "dist_info", "sdist", "clean", "--version", "--name"}


def _skip(reason: str) -> list[object]:
    print(f"setup.py: {reason}; building pure Python", file=sys.stderr)
    return []


def ext_modules() -> list[object]:
    if os.environ.get("DBBALANCER_COMPILE", "1") == "0":
        return []
    if len(sys.argv) > 1 and sys.argv[1] in _METADATA_ONLY:
        return []
    try:
        from mypy.version import __version__ as mypy_version
        from mypyc.build import mypycify
    except ImportError:
        return _skip("mypyc is not importable")
    version = tuple(int(part) for part in mypy_version.split("+")[0].split(".")[:2])
    if not MYPY_RANGE[0] <= version < MYPY_RANGE[1]:
        return _skip(f"mypy {mypy_version} is outside the tested range {MYPY_RANGE}")
    os.chdir(HERE)  # mypycify takes paths relative to the project root
    return list(mypycify([*MYPY_OPTIONS, *COMPILED], opt_level="3", group_name="dbbalancer"))


setup(ext_modules=ext_modules())
